import SystemPackage

/// A backend on Linux kernel AIO: `IOCB_CMD_FSYNC` / `IOCB_CMD_FDSYNC` submitted with
/// `io_submit(2)`, completions reaped by one thread blocked in `io_getevents(2)`.
///
/// The kernel runs each sync on a workqueue, so requests on the same file or on many files run
/// concurrently and no thread of the caller's waits. Generic kernel support exists since
/// Linux 4.18; some file systems answer `EINVAL`. The library makes the system calls itself
/// and does not need `libaio.so`.
///
/// At most `capacity` requests are in the kernel at once; more wait in a queue, in order, until a
/// request completes (backpressure); they never fail because the context is full.
public final class LibaioBackend: AsyncSyncBackend {
    public var kind: BackendKind { .libaio }
    let engine: AIOEngine<LibaioDriver>

    /// Creates a backend with its own AIO context and completion thread.
    ///
    /// - Parameters:
    ///   - capacity: The number of requests in the kernel at once (the size of the AIO
    ///   context, counted against `/proc/sys/fs/aio-max-nr`). The default is 256.
    ///   - stickyFailures: Whether a durability failure of a file makes every later sync of that
    ///     file through this backend fail at once with ``AsyncSyncError/Code/earlierFailure``,
    ///     until ``clearFailure(of:)``. The default is `true`.
    /// - Throws: ``AsyncSyncError`` with code ``AsyncSyncError/Code/backendUnavailable`` when
    ///   `io_setup(2)` fails (`EAGAIN`: aio-max-nr used up; `ENOSYS`/`EPERM`: kernel AIO absent or
    ///   denied) or the thread cannot be started.
    ///
    /// Uses `io_setup(2)`.
    public convenience init(capacity: Int = 256, stickyFailures: Bool = true) throws {
        try self.init(capacity: capacity, stickyFailures: stickyFailures, system: .live)
    }

    init(capacity: Int, stickyFailures: Bool = true, system: SystemCalls) throws(AsyncSyncError) {
        engine = try AIOEngine(driver: LibaioDriver(slotCount: capacity, system: system), system: system,
                               stickyFailures: stickyFailures)
    }

    deinit {
        engine.beginShutdown()
    }

    /// Syncs `fd` through kernel AIO.
    ///
    /// - Parameters:
    ///   - fd: An open descriptor; it must stay open until this call returns.
    ///   - mode: ``SyncMode/fsync`` or ``SyncMode/fdatasync``.
    /// - Throws: See ``AsyncSyncBackend/sync(_:mode:)``. A closed descriptor (`EBADF`) and a pipe or
    ///   socket (`EINVAL`) are refused by `io_submit(2)`; other errnos arrive with the completion.
    ///
    /// Uses `io_submit(2)` and `io_getevents(2)`.
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
