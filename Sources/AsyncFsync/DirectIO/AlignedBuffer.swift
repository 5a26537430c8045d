import SystemPackage

/// Memory whose address is a multiple of a given alignment, owned by one value and freed once: the
/// buffer an `O_DIRECT` write needs.
///
/// `O_DIRECT` transfers go straight between the device and the caller's memory, so the kernel
/// requires the buffer's address to be aligned (see ``DirectIOAlignment``). An `AlignedBuffer`
/// allocates such memory, zero-filled, and frees it when the value ends.
///
/// The type is noncopyable: exactly one value owns the memory, so it is freed exactly once, and
/// no one can change the bytes while they are lent out (a borrow for a write excludes a mutation).
/// It is `Sendable` because ownership moves with the value: sending it to another task gives that
/// task the only access.
///
/// ```swift
/// let alignment = try DirectIOAlignment.of(fd)
/// var buffer = try AlignedBuffer(byteCount: 4096, for: alignment)
/// buffer.withUnsafeMutableBytes { bytes in bytes.copyBytes(from: frame) }
/// try alignment.validate(buffer, offset: 0)
/// ```
public struct AlignedBuffer: ~Copyable, @unchecked Sendable {  // unchecked: the memory is owned by this value alone
    /// The number of bytes, a multiple of ``alignment``.
    public let byteCount: Int
    /// The alignment of the buffer's address, a power of two.
    public let alignment: Int

    /// The buffer's bytes, for a call that borrows the buffer for as long as it uses them.
    var unsafeBytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: memory, count: byteCount) }
    private let memory: UnsafeMutableRawPointer

    /// Allocates `byteCount` zeroed bytes at an address that is a multiple of `alignment`.
    ///
    /// - Parameters:
    ///   - byteCount: The size; a positive multiple of `alignment`.
    ///   - alignment: A power of two, for example 512 or 4096.
    /// - Throws: ``AsyncSyncError`` with code ``AsyncSyncError/Code/invalidConfiguration`` (naming
    ///   both values) when `alignment` is not a power of two or `byteCount` is not a positive
    ///   multiple of it; with code ``AsyncSyncError/Code/system`` and `ENOMEM` when the memory
    ///   cannot be allocated.
    public init(byteCount: Int, alignment: Int) throws(AsyncSyncError) {
        guard alignment > 0, alignment & (alignment - 1) == 0 else {
            throw Self.invalid("alignment \(alignment) is not a power of two (byte count \(byteCount))")
        }
        guard byteCount > 0, byteCount % alignment == 0 else {
            throw Self.invalid("byte count \(byteCount) is not a positive multiple of the alignment \(alignment)")
        }
        switch system_aligned_allocate(byteCount, alignment) {
        case .success(let memory):
            memory.initializeMemory(as: UInt8.self, repeating: 0, count: byteCount)
            self.memory = memory
        case .failure(let errno):
            throw AsyncSyncError(
                code: .system, errno: errno, operation: .write, step: .request, backend: nil,
                systemCall: "posix_memalign",
                message: "cannot allocate \(byteCount) bytes aligned to \(alignment)")
        }
        self.byteCount = byteCount
        self.alignment = alignment
    }

    /// Allocates `byteCount` zeroed bytes for `O_DIRECT` transfers with `directIO`'s alignment.
    ///
    /// The buffer is aligned to the larger of the memory and the offset alignment, so that every
    /// part of it that starts at a multiple of the offset alignment is aligned in memory too.
    ///
    /// - Parameters:
    ///   - byteCount: The size; a positive multiple of both alignments.
    ///   - directIO: The file's alignment (``DirectIOAlignment/of(_:)``).
    /// - Throws: As ``init(byteCount:alignment:)``.
    public init(byteCount: Int, for directIO: DirectIOAlignment) throws(AsyncSyncError) {
        try self.init(byteCount: byteCount, alignment: max(directIO.memoryAlignment, directIO.offsetAlignment))
    }

    deinit {
        system_aligned_free(memory)
    }

    /// Calls `body` with the buffer's bytes, for reading.
    ///
    /// - Parameter body: A closure that must not keep the pointer after it returns.
    /// - Returns: What `body` returns.
    /// - Throws: What `body` throws.
    public func withUnsafeBytes<Result, Failure: Error>(
        _ body: (UnsafeRawBufferPointer) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        try body(UnsafeRawBufferPointer(start: memory, count: byteCount))
    }

    /// Calls `body` with the buffer's bytes, for writing.
    ///
    /// - Parameter body: A closure that must not keep the pointer after it returns.
    /// - Returns: What `body` returns.
    /// - Throws: What `body` throws.
    public mutating func withUnsafeMutableBytes<Result, Failure: Error>(
        _ body: (UnsafeMutableRawBufferPointer) throws(Failure) -> Result
    ) throws(Failure) -> Result {
        try body(UnsafeMutableRawBufferPointer(start: memory, count: byteCount))
    }

    private static func invalid(_ message: String) -> AsyncSyncError {
        AsyncSyncError(code: .invalidConfiguration, errno: nil, operation: .write, step: .request, backend: nil,
                       message: "aligned buffer: \(message)")
    }
}
