import Synchronization
import SystemPackage

/// File system magic numbers (`statfs(2)`'s `f_type`) the selection and the probe report know.
enum FileSystemType {
    static let tmpfs = 0x0102_1994
    static let ramfs = 0x8584_58F6

    /// Whether the file system keeps its files in memory only, so that its fsync does nothing but
    /// return 0 (shmem and ramfs both use the kernel's `noop_fsync`).
    static func isMemoryFileSystem(_ magic: Int) -> Bool {
        magic == tmpfs || magic == ramfs
    }

    /// A readable name for a probe report: `ext4`, `tmpfs`, …, or the number in hex.
    static func name(_ magic: Int) -> String {
        switch magic {
        case tmpfs: "tmpfs"
        case ramfs: "ramfs"
        case 0xEF53: "ext4"
        case 0x5846_5342: "xfs"
        case 0x9123_683E: "btrfs"
        case 0xF2F5_2010: "f2fs"
        case 0x2FC1_2FC1: "zfs"
        case 0x6573_5546: "fuse"
        case 0x6969: "nfs"
        case 0x794C_7630: "overlay"
        case 0x0102_1997: "9p"
        case 0x9FA0: "proc"
        case 0x6265_6572: "sysfs"
        case 0x958458F6: "hugetlbfs"
        default: "0x" + String(magic, radix: 16)
        }
    }
}

/// The inline path: a sync of a regular file or directory on a memory file system (tmpfs, ramfs)
/// is a direct `fsync(2)` / `fdatasync(2)` on the caller's thread.
///
/// Such a file system has no backing store: its fsync returns 0 at once (~0.2 µs here), while a
/// round trip through kernel AIO or glibc costs 7–18 µs. Device nodes do not qualify although
/// devtmpfs reports the tmpfs magic: the fsync of `/dev/loop0` flushes a whole device and must not
/// block a thread of the cooperative pool.
///
/// The check is one `fstatfs(2)` (~0.5 µs), and one `statx(2)` more on a memory file system. A
/// positive answer is never remembered: a number can be closed and reused for a disk file, and the
/// inline path must never block a thread on a disk file system's sync. A negative answer is
/// remembered per descriptor number for the next 64 requests (``DescriptorHints``): a number reused
/// for a tmpfs file meanwhile takes the asynchronous path for a while, which is slower but right.
struct InlineSync: Sendable {
    let system: SystemCalls
    let ledger: FailureLedger
    let hints = DescriptorHints()

    /// Whether `fd` is a regular file or directory on a memory file system. A descriptor the
    /// checks refuse (EBADF) is not: it takes the asynchronous path, which reports the error.
    @inline(__always)
    func applies(to fd: FileDescriptor) -> Bool {
        Self.isOnMemoryFileSystem(fd, system: system, hints: hints)
    }

    /// ``isOnMemoryFileSystem(_:system:)`` with a negative answer remembered in `hints`.
    @inline(__always)
    static func isOnMemoryFileSystem(_ fd: FileDescriptor, system: SystemCalls, hints: DescriptorHints) -> Bool {
        if hints.isKnownNotInline(fd) { return false }
        let applies = isOnMemoryFileSystem(fd, system: system)
        if !applies { hints.noteNotInline(fd) }
        return applies
    }

    /// Whether `fd` is a regular file or directory on tmpfs or ramfs (one `fstatfs(2)`, and one
    /// `statx(2)` only on a memory file system).
    @inline(__always)
    static func isOnMemoryFileSystem(_ fd: FileDescriptor, system: SystemCalls) -> Bool {
        guard case .success(let magic) = system.fileSystemType(fd.rawValue),
              FileSystemType.isMemoryFileSystem(magic),
              case .success(let status) = system.fileStatus(fd.rawValue) else { return false }
        return status.isFileOrDirectory
    }

    /// Syncs `fd` on the calling thread, after the same checks a queued request gets: the sticky
    /// rule, cancellation (nothing reaches the system) and the engine's refusal; and with the
    /// in-flight rule applied to its result.
    ///
    /// - Parameter refusal: The error the backend's engine refuses requests with now
    ///   (``AIOEngine/refusalError(_:_:)``: a shutdown, or a broken completion source's errno), or
    ///   `nil`.
    /// - Parameter arrival: The request's stamp when it arrived earlier (the sync of a durable
    ///   write, stamped before its write); a new stamp otherwise. Such a sync part is never
    ///   abandoned for a cancellation: its write was handed to the system already, so
    ///   `CancellationError` ("nothing was written") would be untrue (review-group, finding 2).
    func sync(
        _ fd: FileDescriptor, mode: SyncMode, backend: BackendKind, refusal: AsyncSyncError?, arrival: UInt64? = nil
    ) throws {
        if arrival == nil { try Task.checkCancellation() }
        let arrival = arrival ?? ledger.stamp()
        if let refusal { throw refusal }
        try Self.checkedBlockingSync(fd, mode: mode, backend: backend, system: system, ledger: ledger, arrival: arrival)
    }

    /// `fsync(2)` / `fdatasync(2)` now, for a request stamped `arrival`, after the sticky check; an
    /// errno becomes the usual ``AsyncSyncError`` (code `.system`, step `.completion`, the C
    /// function as `systemCall`), recorded in `ledger` when it is a durability failure; a success
    /// is checked against the failures recorded since `arrival`.
    static func checkedBlockingSync(
        _ fd: FileDescriptor, mode: SyncMode, backend: BackendKind, system: SystemCalls, ledger: FailureLedger,
        arrival: UInt64
    ) throws(AsyncSyncError) {
        let arrival = try ledger.admit(fd, stamp: arrival, mode: mode, backend: backend).get()
        let result = system.syncNow(mode, fd.rawValue)
        if Observers.isActive {
            let errno: Errno? = if case .failure(let errno) = result { errno } else { nil }
            Observers.forEach { $0.systemSyncCompleted(backend: backend, mode: mode, requests: 1, errno: errno) }
        }
        if case .failure(let errno) = result {
            if AsyncSyncError.isDurabilityErrno(errno) { ledger.record(fd, errno: errno) }
            throw AsyncSyncError.sync(
                mode, errno: errno, step: .completion, backend: backend, descriptor: fd,
                systemCall: mode == .fsync ? "fsync" : "fdatasync")
        }
        if let errno = ledger.judgeSuccess(arrival: arrival, descriptor: fd) {
            throw AsyncSyncError.concurrentFailure(mode, errno: errno, backend: backend, descriptor: fd)
        }
    }
}

/// Per descriptor number, whether a recent check found it not to be on a memory file system, for
/// how many more requests that answer is taken on trust (a hint: relaxed atomics, no lock).
final class DescriptorHints: @unchecked Sendable {  // the counters are atomics
    static var capacity: Int { 4096 }
    static var trustedRequests: UInt8 { 64 }
    private let counters: UnsafeMutablePointer<Atomic<UInt8>>

    init() {
        counters = .allocate(capacity: Self.capacity)
        for index in 0..<Self.capacity { (counters + index).initialize(to: Atomic(0)) }
    }

    deinit {
        counters.deinitialize(count: Self.capacity)
        counters.deallocate()
    }

    /// Whether `fd` was found not inline recently; counts the request against the hint.
    @inline(__always)
    func isKnownNotInline(_ fd: FileDescriptor) -> Bool {
        let index = Int(fd.rawValue)
        guard index >= 0, index < Self.capacity else { return false }
        let left = counters[index].load(ordering: .relaxed)
        guard left > 0 else { return false }
        counters[index].store(left - 1, ordering: .relaxed)
        return true
    }

    @inline(__always)
    func noteNotInline(_ fd: FileDescriptor) {
        let index = Int(fd.rawValue)
        guard index >= 0, index < Self.capacity else { return }
        counters[index].store(Self.trustedRequests, ordering: .relaxed)
    }
}
