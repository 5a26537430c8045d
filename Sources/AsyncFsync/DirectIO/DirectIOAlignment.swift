import SystemPackage

/// The alignment an `O_DIRECT` transfer of a file needs: of the buffer's address, and of the file
/// offset and the length.
///
/// ``of(_:)`` asks the kernel (`statx(2)` with `STATX_DIOALIGN`, Linux 6.1+). Where the kernel or
/// the file system does not say, it uses a safe rule instead (``isReportedByKernel`` is then
/// `false`): 4096 bytes, raised to the file's block size when that is a power of two of at most
/// 64 KiB. A block-based file system's block size is a multiple of its device's logical block
/// size, which is what the kernel checks; larger "block sizes" are the transfer sizes of network
/// file systems, whose `O_DIRECT` needs no alignment. See docs/design.md, "O_DIRECT alignment".
///
/// ``validate(address:count:offset:descriptor:)`` refuses a misaligned request before it reaches
/// the system, with `EINVAL` and the required alignment in the message.
public struct DirectIOAlignment: Hashable, Sendable, CustomStringConvertible {
    /// The alignment of a buffer's address, a power of two.
    public let memoryAlignment: Int
    /// The alignment of file offsets and lengths, a power of two.
    public let offsetAlignment: Int
    /// Whether the kernel reported these values (`STATX_DIOALIGN`); `false` when they come from
    /// the fallback rule.
    public let isReportedByKernel: Bool

    /// The alignment of the fallback rule when the file's block size says nothing better: 4096.
    public static let fallbackAlignment = 4096

    /// An alignment given by the caller.
    ///
    /// - Parameters:
    ///   - memoryAlignment: The alignment of buffer addresses, a power of two.
    ///   - offsetAlignment: The alignment of file offsets and lengths, a power of two.
    /// - Throws: ``AsyncSyncError`` with code ``AsyncSyncError/Code/invalidConfiguration`` naming
    ///   the value that is not a power of two.
    public init(memoryAlignment: Int, offsetAlignment: Int) throws(AsyncSyncError) {
        for (name, value) in [("memory", memoryAlignment), ("offset", offsetAlignment)]
        where value <= 0 || value & (value - 1) != 0 {
            throw AsyncSyncError(
                code: .invalidConfiguration, errno: nil, operation: .write, step: .request, backend: nil,
                message: "O_DIRECT \(name) alignment \(value) is not a power of two")
        }
        self.init(memory: memoryAlignment, offset: offsetAlignment, reported: false)
    }

    private init(memory: Int, offset: Int, reported: Bool) {
        memoryAlignment = memory
        offsetAlignment = offset
        isReportedByKernel = reported
    }

    /// The alignment `O_DIRECT` transfers of the open file `fd` need.
    ///
    /// The descriptor need not be open with `O_DIRECT`; nothing is read or written.
    ///
    /// - Parameter fd: An open descriptor of the file.
    /// - Returns: The kernel's answer where it gives one, else the fallback rule's.
    /// - Throws: ``AsyncSyncError`` with code ``AsyncSyncError/Code/system``: the errno of
    ///   `statx(2)` (`EBADF` for a descriptor that is not open), or `EINVAL` when the kernel
    ///   reports that the file does not support `O_DIRECT` (alignments of 0).
    public static func of(_ fd: FileDescriptor) throws(AsyncSyncError) -> DirectIOAlignment {
        try of(fd, system: .live)
    }

    static func of(_ fd: FileDescriptor, system: SystemCalls) throws(AsyncSyncError) -> DirectIOAlignment {
        switch system.directIOAlignment(fd.rawValue) {
        case .failure(let errno):
            throw AsyncSyncError(
                code: .system, errno: errno, operation: .write, step: .request, backend: nil, descriptor: fd,
                systemCall: "statx", message: "cannot learn the file's O_DIRECT alignment")
        case .success(let report):
            guard let alignment = from(report) else {
                throw AsyncSyncError(
                    code: .system, errno: .invalidArgument, operation: .write, step: .request, backend: nil,
                    descriptor: fd, systemCall: "statx",
                    message: "the file system does not support O_DIRECT on this file (STATX_DIOALIGN reports 0)")
            }
            return alignment
        }
    }

    /// The rule: the kernel's values where reported (`nil` when it reports that the file does not
    /// support `O_DIRECT`), otherwise 4096 raised to a power-of-two block size of at most 64 KiB.
    static func from(_ report: DirectIOReport) -> DirectIOAlignment? {
        if report.reported {
            let memory = Int(report.memoryAlignment)
            let offset = Int(report.offsetAlignment)
            guard memory > 0, offset > 0, memory & (memory - 1) == 0, offset & (offset - 1) == 0 else { return nil }
            return DirectIOAlignment(memory: memory, offset: offset, reported: true)
        }
        var alignment = fallbackAlignment
        #if os(Linux)
        let block = Int(report.blockSize)
        if block > alignment, block <= 64 * 1024, block & (block - 1) == 0 { alignment = block }
        #endif
        return DirectIOAlignment(memory: alignment, offset: alignment, reported: false)
    }

    /// Checks an `O_DIRECT` transfer before it is submitted.
    ///
    /// - Parameters:
    ///   - address: The start of the buffer.
    ///   - count: The number of bytes; a positive multiple of ``offsetAlignment``.
    ///   - offset: The file offset; a non-negative multiple of ``offsetAlignment``.
    ///   - descriptor: The file, named in the error.
    /// - Throws: ``AsyncSyncError`` with code ``AsyncSyncError/Code/system``, errno `EINVAL` (what
    ///   the kernel would answer), step ``AsyncSyncError/Step/request`` and a message naming the
    ///   misaligned value and the alignment it needs.
    public func validate(
        address: UnsafeRawPointer, count: Int, offset: Int64, descriptor: FileDescriptor? = nil
    ) throws(AsyncSyncError) {
        var problems: [String] = []
        let start = UInt(bitPattern: address)
        if start % UInt(memoryAlignment) != 0 {
            problems.append("buffer address 0x\(String(start, radix: 16)) is not a multiple of \(memoryAlignment)")
        }
        if offset < 0 || offset % Int64(offsetAlignment) != 0 {
            problems.append("offset \(offset) is not a multiple of \(offsetAlignment)")
        }
        if count <= 0 || count % offsetAlignment != 0 {
            problems.append("length \(count) is not a positive multiple of \(offsetAlignment)")
        }
        guard problems.isEmpty else {
            throw AsyncSyncError(
                code: .system, errno: .invalidArgument, operation: .write, step: .request, backend: nil,
                descriptor: descriptor,
                message: "O_DIRECT needs memory aligned to \(memoryAlignment) and offsets and lengths to "
                    + "\(offsetAlignment) bytes: " + problems.joined(separator: "; "))
        }
    }

    /// Checks an `O_DIRECT` transfer of (the start of) `buffer` before it is submitted.
    ///
    /// - Parameters:
    ///   - buffer: The buffer.
    ///   - offset: The file offset; a non-negative multiple of ``offsetAlignment``.
    ///   - count: The number of bytes from the buffer's start (`nil`: all of it); at most its size.
    ///   - descriptor: The file, named in the error.
    /// - Throws: As ``validate(address:count:offset:descriptor:)``; also `EINVAL` when `count` is
    ///   larger than the buffer.
    public func validate(
        _ buffer: borrowing AlignedBuffer, offset: Int64, count: Int? = nil, descriptor: FileDescriptor? = nil
    ) throws(AsyncSyncError) {
        let length = count ?? buffer.byteCount
        guard length <= buffer.byteCount else {
            throw AsyncSyncError(
                code: .system, errno: .invalidArgument, operation: .write, step: .request, backend: nil,
                descriptor: descriptor, message: "length \(length) is larger than the buffer (\(buffer.byteCount) bytes)")
        }
        try buffer.withUnsafeBytes { (bytes) throws(AsyncSyncError) in
            try validate(address: bytes.baseAddress!, count: length, offset: offset, descriptor: descriptor)
        }
    }

    /// `memory 512, offset 512 (statx)` or `… (fallback)`.
    public var description: String {
        "memory \(memoryAlignment), offset \(offsetAlignment) (\(isReportedByKernel ? "statx" : "fallback"))"
    }
}
