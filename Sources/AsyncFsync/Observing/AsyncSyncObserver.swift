import Synchronization
import SystemPackage

/// Told what the library decides and what its syncs cost, for logs and metrics.
///
/// The library never prints. An observer added with ``AsyncSync/addObserver(_:)`` receives the
/// selection of a backend and its reasons, each file system that kernel AIO cannot sync and that is
/// served through POSIX aio, each durability failure recorded (and each cleared), every sync's
/// duration and outcome, and the size of every batch ``GroupCommit`` syncs. The integrations
/// `AsyncFsyncLogging` (swift-log) and `AsyncFsyncMetrics` (swift-metrics) are such observers.
///
/// With no observer the library pays one relaxed atomic load per sync. Every method has an empty
/// default; an implementation must be cheap and must not block, since it is called on the path of
/// the syncs (on the completion thread for some).
public protocol AsyncSyncObserver: Sendable {
    /// ``AsyncSync/makeBackend(environment:directory:)`` chose `kind` after these probes (for
    /// `auto`, the kinds it tried; for a forced kind, its probe).
    func backendSelected(_ kind: BackendKind, choice: String, probes: [BackendProbe])

    /// Kernel AIO refused a sync on the file system with device `device` (`major:minor`) with
    /// `EINVAL`; from now on a ``LibaioBackend`` serves that file system through POSIX aio.
    func fileSystemServedByPOSIX(device: String, refusal: AsyncSyncError)

    /// A durability failure was recorded for the file of `descriptor` (the sticky rule then refuses
    /// its later syncs when `sticky`; the in-flight rule applies either way).
    func durabilityFailureRecorded(backend: BackendKind, descriptor: FileDescriptor, errno: Errno, sticky: Bool)

    /// ``AsyncSyncBackend/clearFailure(of:)`` stopped refusing the file of `descriptor`.
    func durabilityFailureCleared(backend: BackendKind, descriptor: FileDescriptor)

    /// A call of ``AsyncSyncBackend/sync(_:mode:)`` ended after `duration`, with `error` (nil: success).
    func syncCompleted(backend: BackendKind, mode: SyncMode, duration: Duration, error: (any Error)?)

    /// ``GroupCommit`` ran one sync for `size` requests.
    func groupCommitBatch(size: Int, mode: SyncMode)
}

extension AsyncSyncObserver {
    public func backendSelected(_ kind: BackendKind, choice: String, probes: [BackendProbe]) {}
    public func fileSystemServedByPOSIX(device: String, refusal: AsyncSyncError) {}
    public func durabilityFailureRecorded(backend: BackendKind, descriptor: FileDescriptor, errno: Errno, sticky: Bool) {}
    public func durabilityFailureCleared(backend: BackendKind, descriptor: FileDescriptor) {}
    public func syncCompleted(backend: BackendKind, mode: SyncMode, duration: Duration, error: (any Error)?) {}
    public func groupCommitBatch(size: Int, mode: SyncMode) {}
}

extension AsyncSync {
    /// Adds `observer` for the life of the process; every backend reports to it from then on.
    ///
    /// Call it once, early (when the process sets up logging and metrics); observers cannot be
    /// removed. Several observers are told in the order they were added.
    public static func addObserver(_ observer: some AsyncSyncObserver) {
        Observers.add(observer)
    }
}

/// The process's observers (``AsyncSync/addObserver(_:)``).
enum Observers {
    private static let list = Locked<[any AsyncSyncObserver]>([])
    private static let count = Atomic<Int>(0)

    static func add(_ observer: some AsyncSyncObserver) {
        list.withLock { list in
            list.append(observer)
            count.store(list.count, ordering: .releasing)
        }
    }

    /// Whether any observer is installed: one relaxed load on the hot path.
    @inline(__always)
    static var isActive: Bool { count.load(ordering: .relaxed) > 0 }

    static func forEach(_ body: (any AsyncSyncObserver) -> Void) {
        guard isActive else { return }
        for observer in list.withLock({ $0 }) { body(observer) }
    }

    /// Runs one sync and reports its duration and outcome.
    static func timed(
        _ backend: BackendKind, _ mode: SyncMode, _ body: () async throws -> Void
    ) async throws {
        let clock = ContinuousClock()
        let start = clock.now
        do {
            try await body()
            let duration = clock.now - start
            forEach { $0.syncCompleted(backend: backend, mode: mode, duration: duration, error: nil) }
        } catch {
            let duration = clock.now - start
            forEach { $0.syncCompleted(backend: backend, mode: mode, duration: duration, error: error) }
            throw error
        }
    }
}
