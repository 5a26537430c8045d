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
///
/// On a memory file system (tmpfs, ramfs) fsync does nothing but return 0, so by default the
/// sync is a direct `fsync(2)` / `fdatasync(2)` on the caller's thread; see
/// `inlineMemoryFileSystems`.
public final class PosixAIOBackend: AsyncSyncBackend, CustomStringConvertible {
    public var kind: BackendKind { .posix }
    let engine: AIOEngine<PosixAIODriver>
    /// The inline path for memory file systems, or nil when switched off.
    let inline: InlineSync?
    let capacity: Int

    /// Creates a backend with its own completion thread.
    ///
    /// - Parameters:
    ///   - capacity: The number of requests handed to glibc at once. The default is 256.
    ///   - stickyFailures: Whether a durability failure of a file makes every later sync of that
    ///     file through this backend fail at once with ``AsyncSyncError/Code/earlierFailure``,
    ///     until ``clearFailure(of:)``. The default is `true`.
    ///   - inlineMemoryFileSystems: Whether a descriptor on a memory file system (tmpfs, ramfs:
    ///     no backing store, fsync returns 0 at once) is synced with a direct `fsync(2)` /
    ///     `fdatasync(2)` on the caller's thread instead of a round trip through glibc's helper
    ///     threads. Costs one `fstatfs(2)` per request on every file system (see
    ///     docs/selection.md). The default is `true`; ``AsyncSync/makeBackend()`` passes `false`
    ///     when `ASYNC_FSYNC_INLINE=off`.
    /// - Throws: ``AsyncSyncError`` with code ``AsyncSyncError/Code/backendUnavailable`` when the
    ///   eventfd, the doorbell request or the thread cannot be created.
    public convenience init(capacity: Int = 256, stickyFailures: Bool = true, inlineMemoryFileSystems: Bool = true) throws {
        try self.init(capacity: capacity, stickyFailures: stickyFailures,
                      inlineMemoryFileSystems: inlineMemoryFileSystems, system: .live)
    }

    /// The backend on a given system-call table. The inline path is off unless asked for, so that
    /// tests injecting faults on tmpfs files reach the POSIX aio path.
    init(capacity: Int, stickyFailures: Bool = true, inlineMemoryFileSystems: Bool = false,
         system: SystemCalls) throws(AsyncSyncError) {
        engine = try AIOEngine(driver: PosixAIODriver(slotCount: capacity, system: system), system: system,
                               stickyFailures: stickyFailures)
        inline = inlineMemoryFileSystems ? InlineSync(system: system) : nil
        self.capacity = capacity
    }

    deinit {
        engine.beginShutdown()
    }

    /// Syncs `fd` through glibc's POSIX aio (or inline on a memory file system).
    ///
    /// - Parameters:
    ///   - fd: An open descriptor; it must stay open until this call returns.
    ///   - mode: ``SyncMode/fsync`` (`O_SYNC`) or ``SyncMode/fdatasync`` (`O_DSYNC`).
    /// - Throws: See ``AsyncSyncBackend/sync(_:mode:)``. A closed descriptor (`EBADF`) is refused by
    ///   `aio_fsync(3)`; a pipe or socket (`EINVAL`) and every other errno arrive with the completion.
    ///
    /// Uses `aio_fsync(3)`, `aio_suspend(3)`, `aio_error(3)` and `aio_return(3)`; `fstatfs(2)` when
    /// the inline path is on.
    public func sync(_ fd: FileDescriptor, mode: SyncMode) async throws {
        if let inline, inline.applies(to: fd) {
            try inline.sync(fd, mode: mode, backend: .posix, isAcceptingRequests: engine.isAcceptingRequests)
            return
        }
        try await engine.sync(fd, mode: mode)
    }

    @discardableResult
    public func clearFailure(of fd: FileDescriptor) throws -> Bool {
        try engine.clearFailure(of: fd)
    }

    public func shutdown() async {
        await engine.shutdown()
    }

    /// A task executor that runs tasks on this backend's completion thread.
    ///
    /// A task that prefers it — `withTaskExecutorPreference(backend.taskExecutor) { … }` or
    /// `Task(executorPreference: backend.taskExecutor) { … }` — goes on right there when its sync
    /// completes, instead of being handed to a thread of the cooperative pool: one thread wake-up
    /// per sync instead of two, which is most of the latency this library adds over a C loop
    /// (docs/performance.md). Like an event loop it is a single thread: code running on it must not
    /// block, or completions wait behind it. After ``shutdown()`` the tasks still preferring it
    /// run on the global concurrent executor; no job is dropped.
    public var taskExecutor: any TaskExecutor { engine }

    /// ``taskExecutor``.
    public var preferredTaskExecutor: (any TaskExecutor)? { engine }

    /// Whether descriptors on memory file systems are synced inline.
    public var inlinesMemoryFileSystems: Bool { inline != nil }

    /// For example `posix backend (glibc POSIX aio, capacity 256; tmpfs/ramfs synced inline)`.
    public var description: String {
        "posix backend (glibc POSIX aio, capacity \(capacity)"
            + (inline != nil ? "; tmpfs/ramfs synced inline)" : "; no inline path)")
    }
}
