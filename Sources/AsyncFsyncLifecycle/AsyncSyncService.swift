#if ServiceLifecycle
// Built with the package trait ServiceLifecycle only (its dependency swift-service-lifecycle is resolved only then).
import AsyncFsync
import ServiceLifecycle

/// A swift-service-lifecycle `Service` that owns an ``AsyncFsync/AsyncSyncBackend`` for the life
/// of a `ServiceGroup`.
///
/// Make it, hand ``backend`` to the code that syncs, and run it in the group:
///
/// ```swift
/// let syncService = try await AsyncSyncService(directory: "/var/lib/mydb")
/// let database = Database(syncingWith: syncService.backend)
/// let group = ServiceGroup(
///     services: [syncService, database],   // shut down in reverse order: database first
///     gracefulShutdownSignals: [.sigterm],
///     logger: logger
/// )
/// try await group.run()
/// ```
///
/// ``run()`` does nothing but wait until graceful shutdown is triggered (a signal, or
/// `ServiceGroup.triggerGracefulShutdown()`), then calls ``AsyncFsync/AsyncSyncBackend/shutdown()``
/// of the backend and returns once it has returned:
/// - from that moment on the backend accepts no request: a sync that arrives later throws
///   ``AsyncFsync/AsyncSyncError`` with code ``AsyncFsync/AsyncSyncError/Code/shutDown`` at once
///   (it never hangs);
/// - every sync accepted before it completes normally and its caller gets its real result
///   (success or the system's errno) exactly once;
/// - then the backend's resources (AIO context, completion thread, descriptors) are released.
///
/// A `ServiceGroup` shuts its services down in the reverse order of the list, so list the services
/// that sync through the backend *after* this one (they stop first, this one drains last).
///
/// Cancellation of ``run()`` (the group was cancelled, for example after
/// `maximumGracefulShutdownDuration`) ends it as fast as it safely can: it shuts the backend down the
/// same way — a sync already handed to the kernel cannot be abandoned, so the wait is for those
/// only, usually milliseconds — and then throws `CancellationError`.
///
/// The service owns its backend: do not hand it ``AsyncFsync/AsyncSync/shared`` (which is never shut
/// down, so the service would not release anything) or a backend that something else shuts down.
/// Run it once; a second ``run()`` waits for graceful shutdown again and finds the backend already
/// shut down.
public final class AsyncSyncService: Service, Sendable, CustomStringConvertible {
    /// The backend this service owns; pass it to the code that syncs. It is ready as soon as the
    /// service is made (before ``run()`` starts) and refuses requests once ``run()`` shut it down.
    public let backend: any AsyncSyncBackend

    /// Creates a service owning `backend`; ``run()`` shuts it down.
    ///
    /// - Parameter backend: A backend nothing else shuts down, for example
    ///   `GroupCommit(wrapping: try await AsyncSync.makeBackend(directory: dataDirectory))`.
    public init(backend: any AsyncSyncBackend) {
        self.backend = backend
    }

    /// Creates a service owning a backend made by
    /// ``AsyncFsync/AsyncSync/makeBackend(environment:directory:)`` (the async form: the probes do
    /// not block a thread of the cooperative pool).
    ///
    /// - Parameters:
    ///   - environment: Where to read `ASYNC_FSYNC_BACKEND` and `ASYNC_FSYNC_INLINE`; `nil` (the
    ///     default) reads this process's environment.
    ///   - directory: A directory on the file system the data will live on; `nil` probes the
    ///     temporary directory.
    /// - Throws: ``AsyncFsync/AsyncSyncError`` when no backend can work here (see
    ///   ``AsyncFsync/AsyncSync/makeBackend(environment:directory:)``).
    public convenience init(environment: [String: String]? = nil, directory: FilePath? = nil) async throws {
        self.init(backend: try await AsyncSync.makeBackend(environment: environment, directory: directory))
    }

    /// Waits for graceful shutdown, then shuts the backend down (no new requests; the accepted
    /// ones complete) and returns.
    ///
    /// - Throws: `CancellationError` when the task was cancelled instead; the backend is shut
    ///   down and drained before it is thrown, so nothing leaks and no accepted sync is lost.
    public func run() async throws {
        var cancelled = false
        do {
            try await gracefulShutdown()
        } catch {
            // gracefulShutdown() throws only CancellationError.
            cancelled = true
        }
        // The backend's shutdown waits for the syncs it accepted whatever the state of this task:
        // a request handed to the kernel must be reaped before its memory and the AIO context go.
        await backend.shutdown()
        if cancelled {
            throw CancellationError()
        }
    }

    /// `AsyncSyncService(` followed by the backend's description and `)`.
    public var description: String { "AsyncSyncService(\(backend))" }
}

#endif
