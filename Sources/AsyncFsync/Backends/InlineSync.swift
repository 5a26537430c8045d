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

/// The inline path: a sync of a descriptor on a memory file system (tmpfs, ramfs) is a direct
/// `fsync(2)` / `fdatasync(2)` on the caller's thread.
///
/// Such a file system has no backing store: its fsync returns 0 at once (~0.2 µs here), while a
/// round trip through kernel AIO or glibc costs 7–18 µs. The check is one `fstatfs(2)` per request
/// (~0.4–0.5 µs, measured in docs/selection.md), never cached by descriptor number: a number can
/// be closed and reused for a disk file, and the inline path must never block a thread on a disk
/// file system's sync.
struct InlineSync: Sendable {
    let system: SystemCalls

    /// Whether `fd` is on a memory file system. A descriptor `fstatfs(2)` refuses (EBADF) is not:
    /// it takes the asynchronous path, which reports the error the same way as before.
    @inline(__always)
    func applies(to fd: FileDescriptor) -> Bool {
        guard case .success(let magic) = system.fileSystemType(fd.rawValue) else { return false }
        return FileSystemType.isMemoryFileSystem(magic)
    }

    /// Syncs `fd` on the calling thread, after the same checks a queued request gets: cancellation
    /// (nothing reaches the system) and shutdown.
    func sync(
        _ fd: FileDescriptor, mode: SyncMode, backend: BackendKind, isAcceptingRequests: Bool
    ) throws {
        try Task.checkCancellation()
        guard isAcceptingRequests else {
            throw AsyncSyncError.shutDown(mode, backend: backend, descriptor: fd)
        }
        try Self.blockingSync(fd, mode: mode, backend: backend, system: system)
    }

    /// `fsync(2)` / `fdatasync(2)` now; an errno becomes the usual ``AsyncSyncError`` (code
    /// `.system`, step `.completion`, the C function as `systemCall`).
    static func blockingSync(
        _ fd: FileDescriptor, mode: SyncMode, backend: BackendKind, system: SystemCalls
    ) throws(AsyncSyncError) {
        if case .failure(let errno) = system.syncNow(mode, fd.rawValue) {
            throw AsyncSyncError.sync(
                mode, errno: errno, step: .completion, backend: backend, descriptor: fd,
                systemCall: mode == .fsync ? "fsync" : "fdatasync")
        }
    }
}
