import SystemPackage

/// A backend on glibc POSIX aio: `aio_fsync(3)` with `O_SYNC` / `O_DSYNC`, completions found by
/// one thread waiting in `aio_suspend(3)` and read with `aio_error(3)` / `aio_return(3)`.
///
/// glibc runs each sync on one of its helper threads, so it works wherever glibc does, on every
/// kernel and file system. glibc serves one descriptor number with one helper at a time, so syncs
/// of the same descriptor run one after another. No thread is created per request and no signal
/// is used.
///
/// At most `capacity` requests are handed to glibc at once; more wait in a queue, in order.
public final class PosixAIOBackend: AsyncSyncBackend {
    public var kind: BackendKind { .posix }
    let engine: AIOEngine<PosixAIODriver>

    /// Creates a backend with its own completion thread.
    ///
    /// - Parameters:
    ///   - capacity: The number of requests handed to glibc at once. The default is 256.
    ///   - stickyFailures: Whether a durability failure of a file makes every later sync of that
    ///     file through this backend fail at once with ``AsyncSyncError/Code/earlierFailure``,
    ///     until ``clearFailure(of:)``. The default is `true`.
    /// - Throws: ``AsyncSyncError`` with code ``AsyncSyncError/Code/backendUnavailable`` when the
    ///   eventfd, the doorbell request or the thread cannot be created.
    public convenience init(capacity: Int = 256, stickyFailures: Bool = true) throws {
        try self.init(capacity: capacity, stickyFailures: stickyFailures, system: .live)
    }

    init(capacity: Int, stickyFailures: Bool = true, system: SystemCalls) throws(AsyncSyncError) {
        engine = try AIOEngine(driver: PosixAIODriver(slotCount: capacity, system: system), system: system,
                               stickyFailures: stickyFailures)
    }

    deinit {
        engine.beginShutdown()
    }

    /// Syncs `fd` through glibc's POSIX aio.
    ///
    /// - Parameters:
    ///   - fd: An open descriptor; it must stay open until this call returns.
    ///   - mode: ``SyncMode/fsync`` (`O_SYNC`) or ``SyncMode/fdatasync`` (`O_DSYNC`).
    /// - Throws: See ``AsyncSyncBackend/sync(_:mode:)``. A closed descriptor (`EBADF`) is refused by
    ///   `aio_fsync(3)`; a pipe or socket (`EINVAL`) and every other errno arrive with the completion.
    ///
    /// Uses `aio_fsync(3)`, `aio_suspend(3)`, `aio_error(3)` and `aio_return(3)`.
    public func sync(_ fd: FileDescriptor, mode: SyncMode) async throws {
        try await engine.sync(fd, mode: mode)
    }

    @discardableResult
    public func clearFailure(of fd: FileDescriptor) throws -> Bool {
        try engine.clearFailure(of: fd)
    }

    public func shutdown() async {
        await engine.shutdown()
    }
}
