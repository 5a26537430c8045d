import SystemPackage

/// A way to make a file's data durable without blocking a thread.
///
/// A backend hands `fsync(2)` or `fdatasync(2)` of a descriptor to the kernel (or to glibc) and
/// resumes the awaiting task when the sync has completed. Get one from
/// ``AsyncSync/makeBackend(environment:directory:)``, or create ``LibaioBackend`` or ``PosixAIOBackend`` directly.
///
/// ## Rules every implementation follows
/// - Every call of ``sync(_:mode:)`` returns or throws exactly once, under any load, on
///   cancellation and on shutdown.
/// - A failed sync is reported with an ``AsyncSyncError`` carrying its errno; it is never retried
///   and then reported as success. A durability failure is sticky per file: later syncs of that
///   file fail at once with ``AsyncSyncError/Code/earlierFailure`` until ``clearFailure(of:)``. The one exception is `EINTR` reported at completion (the sync
///   did not run to its end), which is submitted again, at most
///   16 times in a row.
/// - The same fault gives an error with the same ``AsyncSyncError/code``,
///   ``AsyncSyncError/errno`` and ``AsyncSyncError/operation`` on every backend.
/// - A sync that succeeded started after the call was made.
/// - Cancellation: a request cancelled before it was handed to the system throws
///   `CancellationError` and nothing is submitted; once handed over, the call waits for the
///   system's result and reports it, because a durability result is never thrown away.
/// - After ``shutdown()`` new calls throw ``AsyncSyncError/Code/shutDown``; calls already accepted
///   complete normally.
///
/// The descriptor must stay open until the call returns; the caller's `await` guarantees that as
/// long as the descriptor is not closed by another task meanwhile. See the DocC article
/// "Implementing a backend" for the tests an implementation must pass.
public protocol AsyncSyncBackend: Sendable {
    /// Which kind of backend this is.
    var kind: BackendKind { get }

    /// Makes the data (and, for ``SyncMode/fsync``, the metadata) of `fd` durable.
    ///
    /// - Parameters:
    ///   - fd: An open descriptor of a regular file or directory. It must stay open until this
    ///     call returns.
    ///   - mode: ``SyncMode/fsync`` or ``SyncMode/fdatasync``.
    /// - Throws: ``AsyncSyncError`` with code ``AsyncSyncError/Code/system`` and the errno
    ///   (`EIO`, `ENOSPC`, `EDQUOT`, `EROFS`, `EBADF` for a closed descriptor, `EINVAL` for a pipe or
    ///   socket, …), or ``AsyncSyncError/Code/shutDown`` after ``shutdown()``; `CancellationError`
    ///   when the task was cancelled before the request was handed to the system.
    func sync(_ fd: FileDescriptor, mode: SyncMode) async throws

    /// Forgets an earlier durability failure of the file `fd` refers to, so that its syncs run again.
    ///
    /// After a sync of a file failed with a durability error (``AsyncSyncError/isDurabilityFailure``),
    /// every later sync of the same file (any descriptor of it) fails at once with
    /// ``AsyncSyncError/Code/earlierFailure``: the kernel reports a failed writeback only once, and
    /// the next `fsync(2)` may succeed although the data is gone. Call this after the data written
    /// before the failure has been written again (or given up).
    ///
    /// - Parameter fd: Any open descriptor of the file.
    /// - Returns: Whether a failure was recorded for the file.
    /// - Throws: ``AsyncSyncError`` when the file cannot be identified (`statx(2)` failed).
    @discardableResult
    func clearFailure(of fd: FileDescriptor) throws -> Bool

    /// Stops accepting requests, waits for the accepted ones to complete, then releases the
    /// backend's resources (AIO context, thread, descriptors). Calling it again is harmless.
    func shutdown() async

    /// A task executor on which tasks that sync through this backend go on right where their
    /// syncs complete, without a hop to another thread; `nil` when the backend has none.
    ///
    /// ``LibaioBackend`` and ``PosixAIOBackend`` return their completion thread (see
    /// ``LibaioBackend/taskExecutor``); ``GroupCommit`` returns its wrapped backend's. Use it with
    /// `withTaskExecutorPreference(backend.preferredTaskExecutor) { … }` — a `nil` preference
    /// changes nothing, so the same code works with any backend. Code running there must not block.
    var preferredTaskExecutor: (any TaskExecutor)? { get }

    /// A serial executor on the same thread as ``preferredTaskExecutor``, for an actor that syncs
    /// through this backend; `nil` when the backend has none.
    ///
    /// An actor whose `unownedExecutor` is this goes on right where its syncs complete.
    /// ``ActorExecutor`` gives an actor this executor when there is one, and an executor of the
    /// actor's own otherwise:
    ///
    /// ```swift
    /// actor DefaultExecutor {}                  // lends its default executor
    ///
    /// actor WriteAheadLog {
    ///     let backend: any AsyncSyncBackend
    ///     let executor: ActorExecutor
    ///     nonisolated var unownedExecutor: UnownedSerialExecutor { executor.unownedExecutor }
    ///     init(backend: any AsyncSyncBackend) {
    ///         self.backend = backend
    ///         self.executor = ActorExecutor(preferring: backend)
    ///     }
    /// }
    /// ```
    ///
    /// Code running there must not block.
    var preferredSerialExecutor: (any SerialExecutor)? { get }
}

extension AsyncSyncBackend {
    /// The default: no executor of its own.
    public var preferredTaskExecutor: (any TaskExecutor)? { nil }

    /// The default: no serial executor of its own.
    public var preferredSerialExecutor: (any SerialExecutor)? { nil }

    /// The default for backends that keep no failures: there is nothing to forget.
    @discardableResult
    public func clearFailure(of fd: FileDescriptor) throws -> Bool { false }

    /// Makes the data and metadata of `fd` durable, like `fsync(2)`.
    ///
    /// - Parameter fd: An open descriptor; it must stay open until this call returns.
    /// - Throws: See ``AsyncSyncBackend/sync(_:mode:)``.
    public func fsync(_ fd: FileDescriptor) async throws {
        try await sync(fd, mode: .fsync)
    }

    /// Makes the data of `fd` durable, like `fdatasync(2)`.
    ///
    /// - Parameter fd: An open descriptor; it must stay open until this call returns.
    /// - Throws: See ``AsyncSyncBackend/sync(_:mode:)``.
    public func fdatasync(_ fd: FileDescriptor) async throws {
        try await sync(fd, mode: .fdatasync)
    }
}
