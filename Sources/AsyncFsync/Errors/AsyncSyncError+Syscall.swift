import CAsyncFsync
import SystemPackage

// Factories for the errors the backends and the selection make, one per situation, so that every
// backend words the same fault the same way.
extension AsyncSyncError {
    /// A sync request failed with `errno`, reported by `systemCall` at `step`.
    static func sync(
        _ mode: SyncMode,
        errno: Errno,
        step: Step,
        backend: BackendKind,
        descriptor: FileDescriptor,
        systemCall: String
    ) -> AsyncSyncError {
        AsyncSyncError(
            code: .system, errno: errno, operation: .sync(mode), step: step, backend: backend,
            descriptor: descriptor, systemCall: systemCall,
            message: errno == .badFileDescriptor ? hint(forBadDescriptor: descriptor) : hint(for: errno))
    }

    /// A sync of a file whose earlier sync failed with `errno`.
    static func earlierFailure(
        _ mode: SyncMode, errno: Errno, backend: BackendKind, descriptor: FileDescriptor
    ) -> AsyncSyncError {
        AsyncSyncError(
            code: .earlierFailure, errno: errno, operation: .sync(mode), step: .request, backend: backend,
            descriptor: descriptor,
            message: "data written before that failure may be lost; clearFailure(of:) after rewriting it")
    }

    /// A sync the system reported successful while a durability failure of its file was recorded.
    static func concurrentFailure(
        _ mode: SyncMode, errno: Errno, backend: BackendKind, descriptor: FileDescriptor
    ) -> AsyncSyncError {
        AsyncSyncError(
            code: .concurrentFailure, errno: errno, operation: .sync(mode), step: .completion, backend: backend,
            descriptor: descriptor,
            message: "the kernel reports a lost writeback to one sync only; data written before this sync may be lost")
    }

    /// A request arrived after ``AsyncSyncBackend/shutdown()``.
    static func shutDown(
        _ mode: SyncMode, backend: BackendKind, descriptor: FileDescriptor
    ) -> AsyncSyncError {
        AsyncSyncError(
            code: .shutDown, errno: nil, operation: .sync(mode), step: .request, backend: backend,
            descriptor: descriptor)
    }

    /// A write asked of a backend that cannot write (the protocol's default).
    static func writesUnsupported(
        _ backend: BackendKind, operation: Operation, descriptor: FileDescriptor
    ) -> AsyncSyncError {
        AsyncSyncError(
            code: .backendUnavailable, errno: .notSupported, operation: operation, step: .request, backend: backend,
            descriptor: descriptor, message: "this backend does not write; use LibaioBackend, PosixAIOBackend or PortableBackend")
    }

    /// Creating a backend's resources failed.
    static func setup(
        backend: BackendKind, errno: Errno, systemCall: String, message: String = ""
    ) -> AsyncSyncError {
        AsyncSyncError(
            code: .backendUnavailable, errno: errno, operation: .setup, step: .setup, backend: backend,
            systemCall: systemCall, message: message.isEmpty ? hint(for: errno) : message)
    }

    /// The advice for an `EBADF` from a sync of `descriptor`. `fsync(2)`, `io_submit(2)` and glibc's
    /// helper answer `EBADF` both for a number that is not open and for an `O_PATH` descriptor (it
    /// allows no I/O); `fcntl(2)` `F_GETFL` tells them apart as the message is made.
    static func hint(forBadDescriptor descriptor: FileDescriptor) -> String {
        switch system_fcntl_getfl(descriptor.rawValue) {
        case .failure:
            "the descriptor is not open (it must stay open until the sync returns)"
        case .success(let flags) where flags & casyncfsync_O_PATH != 0:
            "the descriptor was opened with O_PATH, which allows no sync; open the file for reading or writing"
        case .success:
            "the descriptor was not open when the sync was handed to the system (it must stay open until the sync returns)"
        }
    }

    /// Short advice for the errnos a person is likely to meet.
    static func hint(for errno: Errno) -> String {
        switch errno {
        case .badFileDescriptor:
            "the descriptor is not open, or was opened without read or write access (O_PATH); it must stay open until the sync returns"
        case .invalidArgument: "the descriptor does not support sync (a pipe, socket or special file?)"
        case .ioError, .noSpace, .diskQuotaExceeded, .readOnlyFileSystem, .permissionDenied, .notPermitted:
            "data written since the last successful sync may be lost; do not trust a retry"
        default: ""
        }
    }
}

extension Errno {
    /// The C name of the errno (`"EIO"`), or `"errno N"` for one the table does not know.
    var symbolicName: String { knownSymbolicName ?? "errno \(rawValue)" }

    /// The C name of the errno, or `nil` for one this table does not know.
    var knownSymbolicName: String? {
        switch rawValue {
        case 1: "EPERM"
        case 2: "ENOENT"
        case 4: "EINTR"
        case 5: "EIO"
        case 6: "ENXIO"
        case 9: "EBADF"
        case 11: "EAGAIN"
        case 12: "ENOMEM"
        case 13: "EACCES"
        case 14: "EFAULT"
        case 16: "EBUSY"
        case 19: "ENODEV"
        case 20: "ENOTDIR"
        case 21: "EISDIR"
        case 22: "EINVAL"
        case 23: "ENFILE"
        case 24: "EMFILE"
        case 27: "EFBIG"
        case 28: "ENOSPC"
        case 29: "ESPIPE"
        case 30: "EROFS"
        case 38: "ENOSYS"
        case 75: "EOVERFLOW"
        case 95: "EOPNOTSUPP"
        case 103: "ECONNABORTED"
        case 107: "ENOTCONN"
        case 108: "ESHUTDOWN"
        case 110: "ETIMEDOUT"
        case 116: "ESTALE"
        case 121: "EREMOTEIO"
        case 122: "EDQUOT"
        case 125: "ECANCELED"
        default: nil
        }
    }
}
