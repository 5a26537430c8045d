#if NIO
// Built with the package trait NIO only (its dependency swift-nio is resolved only then).
import AsyncFsync
import _NIOFileSystem

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif canImport(Musl)
import Musl
#endif

// How a NIO file handle is synced through a backend
//
// NIO's `withUnsafeDescriptor` lends the handle's descriptor to a synchronous closure only (run on
// NIO's blocking thread pool), while a backend's sync is awaited. So the closure duplicates the
// descriptor (`fcntl(F_DUPFD_CLOEXEC)`), the sync is awaited on the duplicate, and the duplicate is
// closed afterwards, whatever the outcome. The handle may then be closed by another task at any
// time without the sync touching a descriptor number that was reused meanwhile.
//
// A duplicate shares the handle's open file description: `fsync(2)` of it syncs the same inode, and
// the writeback errors it reports (Linux's errseq cursor is kept per open file description) are
// exactly the ones a sync through the handle itself would see. The backend's durability-failure
// ledger identifies files by device and inode, so failures recorded through a duplicate apply to
// the handle and to every other descriptor of the file.

extension FileHandleProtocol {
    /// Makes the data (and for ``AsyncFsync/SyncMode/fsync`` the metadata) written through this
    /// handle durable, through `backend` instead of NIO's blocking thread pool.
    ///
    /// ```swift
    /// try await FileSystem.shared.withFileHandle(forWritingAt: "wal", options: .newFile(replaceExisting: true)) { handle in
    ///     try await handle.write(contentsOf: record, toAbsoluteOffset: 0)
    ///     try await handle.synchronize(using: backend, mode: .fdatasync)
    /// }
    /// ```
    ///
    /// The sync runs on a duplicate of the handle's descriptor (`fcntl(F_DUPFD_CLOEXEC)`, made inside
    /// `withUnsafeDescriptor`, which costs one hop to NIO's thread pool), closed when the sync has
    /// ended. The duplicate shares the handle's open file description, so the sync covers the same
    /// file and reports the same writeback errors as `fsync(2)` of the handle's own descriptor. The
    /// handle stays open and usable; closing it while the sync runs does not disturb the sync.
    ///
    /// - Parameters:
    ///   - backend: The backend that runs the sync.
    ///   - mode: ``AsyncFsync/SyncMode/fsync`` or ``AsyncFsync/SyncMode/fdatasync``.
    /// - Throws:
    ///   - NIO's `FileSystemError` (code `.closed`) when the handle is closed: NIO refuses to lend
    ///     the descriptor, and nothing is synced.
    ///   - ``AsyncFsync/AsyncSyncError`` for the sync itself, as ``AsyncFsync/AsyncSyncBackend/sync(_:mode:)``
    ///     throws it, except that its ``AsyncFsync/AsyncSyncError/descriptor`` is the handle's
    ///     descriptor rather than the (closed) duplicate's.
    ///   - ``AsyncFsync/AsyncSyncError`` with code ``AsyncFsync/AsyncSyncError/Code/system``, step
    ///     ``AsyncFsync/AsyncSyncError/Step/request``, system call `fcntl` and the errno (for
    ///     example `EMFILE`) when the descriptor could not be duplicated; nothing is synced, and
    ///     this is never a durability failure.
    ///   - `CancellationError` as the backend throws it.
    public func synchronize(using backend: some AsyncSyncBackend, mode: SyncMode) async throws {
        let kind = backend.kind
        let (original, duplicate) = try await withUnsafeDescriptor { descriptor in
            (descriptor, try duplicateForSync(descriptor, mode: mode, backend: kind))
        }
        do {
            try await backend.sync(duplicate, mode: mode)
        } catch var error as AsyncSyncError {
            closeIgnoringErrors(duplicate)
            if error.descriptor == duplicate { error.descriptor = original }
            throw error
        } catch {
            closeIgnoringErrors(duplicate)
            throw error
        }
        closeIgnoringErrors(duplicate)
    }
}

/// A duplicate of `descriptor` with `FD_CLOEXEC`, numbered like any new descriptor.
private func duplicateForSync(
    _ descriptor: FileDescriptor, mode: SyncMode, backend: BackendKind
) throws -> FileDescriptor {
    while true {
        let duplicate = fcntl(descriptor.rawValue, F_DUPFD_CLOEXEC, 0)
        if duplicate >= 0 { return FileDescriptor(rawValue: duplicate) }
        let code = Errno(rawValue: errno)
        if code == .interrupted { continue }
        throw AsyncSyncError(
            code: .system, errno: code, operation: .sync(mode), step: .request, backend: backend,
            descriptor: descriptor, systemCall: "fcntl",
            message: "cannot duplicate the NIO file handle's descriptor (F_DUPFD_CLOEXEC) for the sync")
    }
}

/// Closes the duplicate. An error of `close(2)` is not reported: the sync's result has been
/// decided, and on Linux the descriptor is released even when `close` fails (never retried).
private func closeIgnoringErrors(_ descriptor: FileDescriptor) {
    try? descriptor.close()
}

extension AsyncSyncBackend {
    /// Makes the data and metadata written through a NIO file handle durable, like `fsync(2)`.
    ///
    /// The same as `handle.synchronize(using: self, mode: .fsync)`; see
    /// `FileHandleProtocol.synchronize(using:mode:)` for how the handle's descriptor is used and
    /// what is thrown.
    ///
    /// - Parameter handle: An open `ReadFileHandle`, `WriteFileHandle`, `ReadWriteFileHandle`,
    ///   `DirectoryFileHandle` or any other `FileHandleProtocol`.
    public func fsync(_ handle: some FileHandleProtocol) async throws {
        try await handle.synchronize(using: self, mode: .fsync)
    }

    /// Makes the data written through a NIO file handle durable, like `fdatasync(2)`.
    ///
    /// The same as `handle.synchronize(using: self, mode: .fdatasync)`.
    ///
    /// - Parameter handle: An open NIO file handle.
    public func fdatasync(_ handle: some FileHandleProtocol) async throws {
        try await handle.synchronize(using: self, mode: .fdatasync)
    }

    /// Syncs a NIO file handle in `mode`; the same as `handle.synchronize(using: self, mode: mode)`.
    ///
    /// - Parameters:
    ///   - handle: An open NIO file handle.
    ///   - mode: ``AsyncFsync/SyncMode/fsync`` or ``AsyncFsync/SyncMode/fdatasync``.
    public func sync(_ handle: some FileHandleProtocol, mode: SyncMode) async throws {
        try await handle.synchronize(using: self, mode: mode)
    }

    /// Forgets an earlier durability failure of the file a NIO handle refers to
    /// (``AsyncFsync/AsyncSyncBackend/clearFailure(of:)`` with the handle's descriptor).
    ///
    /// - Parameter handle: An open NIO file handle.
    /// - Returns: Whether a failure was recorded for the file.
    /// - Throws: NIO's `FileSystemError` when the handle is closed; ``AsyncFsync/AsyncSyncError``
    ///   when the file cannot be identified.
    @discardableResult
    public func clearFailure(of handle: some FileHandleProtocol) async throws -> Bool {
        try await handle.withUnsafeDescriptor { descriptor in
            try self.clearFailure(of: descriptor)
        }
    }
}

#endif
