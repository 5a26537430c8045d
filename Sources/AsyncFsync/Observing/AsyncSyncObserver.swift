import Synchronization
import SystemPackage

/// Told what the library decides and what its syncs cost, for logs and metrics.
///
/// The library never prints. An observer added with ``AsyncSync/addObserver(_:)`` receives the
/// selection of a backend and its reasons, each file system that kernel AIO cannot sync and that is
/// served through POSIX aio, each durability failure recorded (and each cleared), every sync call's
/// duration and outcome, every write and durable write call's size, duration and outcome, every
/// sync the system ran and how many calls it served, and the size of every batch ``GroupCommit``
/// syncs. ``AsyncSync/removeObserver(_:)`` removes it. The integrations
/// `AsyncFsyncLogging` (swift-log) and `AsyncFsyncMetrics` (swift-metrics) are such observers.
///
/// With no observer the library pays one relaxed atomic load per sync or write. Every method has an empty
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
    ///
    /// One per request, not per sync the system ran: requests of one descriptor share a sync, so
    /// count ``systemSyncCompleted(backend:mode:requests:errno:)`` for those.
    func syncCompleted(backend: BackendKind, mode: SyncMode, duration: Duration, error: (any Error)?)

    /// A call of ``AsyncSyncBackend/write(_:from:at:)`` (`durable` false) or
    /// ``AsyncSyncBackend/durableWrite(_:from:at:)`` (`durable` true) on one of this library's
    /// backends ended after `duration`, with `error` (nil: success).
    ///
    /// One per call, whatever it took: not per system call, not per continuation of a short write,
    /// and a durable write is one event (its sync part is no ``syncCompleted(backend:mode:duration:error:)``).
    /// The `[UInt8]` and ``AlignedBuffer`` forms, ``AsyncFile``, ``GroupCommit`` and
    /// ``AsyncSync/shared`` forward to that call, which reports it once. A call refused before it
    /// reaches the backend (by ``AsyncFile`` or a ``GroupCommit`` that is shutting down) has no
    /// event, as for syncs. A durability failure of a durable write is also told, once, by
    /// ``durabilityFailureRecorded(backend:descriptor:errno:sticky:)``.
    ///
    /// - Parameters:
    ///   - backend: The kind of the backend that ran the write.
    ///   - durable: Whether it was a durable write.
    ///   - bytes: The count asked for (the buffer's size), also when the write failed part-way.
    ///   - duration: From the call to its end.
    ///   - error: What the call threw; `nil` when it succeeded.
    func writeCompleted(backend: BackendKind, durable: Bool, bytes: Int, duration: Duration, error: (any Error)?)

    /// A sync the system ran (one `IOCB_CMD_FSYNC`/`IOCB_CMD_FDSYNC` reaped, one `aio_fsync(3)`
    /// completed, one direct `fsync(2)`/`fdatasync(2)` of the inline path, one blocking sync of a
    /// ``PortableBackend`` thread, always for one request) ended, covering `requests` requests:
    /// calls of ``AsyncSyncBackend/sync(_:mode:)`` and sync parts of
    /// ``AsyncSyncBackend/durableWrite(_:from:at:)`` calls (a buffered file's `fdatasync`, which
    /// the engines share with the descriptor's syncs; not an `RWF_DSYNC` write, which is no sync).
    ///
    /// `errno` is the errno it completed with (`nil`: success; each request may still fail by the
    /// in-flight rule). A sync interrupted with `EINTR` and submitted again is told once, when it
    /// ends. Calls refused before reaching the system (a closed descriptor at submission, an earlier
    /// failure, shutdown) have no such event. The ratio of these events to
    /// ``syncCompleted(backend:mode:duration:error:)`` is the sharing the engine achieved.
    func systemSyncCompleted(backend: BackendKind, mode: SyncMode, requests: Int, errno: Errno?)

    /// ``GroupCommit`` ran one sync for `size` requests.
    func groupCommitBatch(size: Int, mode: SyncMode)
}

extension AsyncSyncObserver {
    public func backendSelected(_ kind: BackendKind, choice: String, probes: [BackendProbe]) {}
    public func fileSystemServedByPOSIX(device: String, refusal: AsyncSyncError) {}
    public func durabilityFailureRecorded(backend: BackendKind, descriptor: FileDescriptor, errno: Errno, sticky: Bool) {}
    public func durabilityFailureCleared(backend: BackendKind, descriptor: FileDescriptor) {}
    public func syncCompleted(backend: BackendKind, mode: SyncMode, duration: Duration, error: (any Error)?) {}
    public func writeCompleted(backend: BackendKind, durable: Bool, bytes: Int, duration: Duration, error: (any Error)?) {}
    public func systemSyncCompleted(backend: BackendKind, mode: SyncMode, requests: Int, errno: Errno?) {}
    public func groupCommitBatch(size: Int, mode: SyncMode) {}
}

extension AsyncSync {
    /// Adds `observer`; every backend reports to it from then on, until it is removed.
    ///
    /// Call it early (when the process sets up logging and metrics). Several observers are told in
    /// the order they were added.
    ///
    /// - Parameter observer: The observer; it is kept until removed.
    /// - Returns: The registration, for ``removeObserver(_:)``.
    @discardableResult
    public static func addObserver(_ observer: some AsyncSyncObserver) -> ObserverRegistration {
        Observers.add(observer)
    }

    /// Removes an observer added with ``addObserver(_:)``; safe from any thread, at any time.
    ///
    /// No notification starts for it after this returns; one already under way on another thread
    /// (a sync completing at the same moment) may still reach it.
    ///
    /// - Parameter registration: What ``addObserver(_:)`` returned.
    /// - Returns: Whether it was still registered (`false` when removed before).
    @discardableResult
    public static func removeObserver(_ registration: ObserverRegistration) -> Bool {
        Observers.remove(registration)
    }

    /// An observer's registration, returned by ``AsyncSync/addObserver(_:)``.
    public struct ObserverRegistration: Sendable, Hashable {
        let id: UInt64
    }
}

/// The process's observers (``AsyncSync/addObserver(_:)``).
enum Observers {
    private struct Entry {
        var id: UInt64
        var observer: any AsyncSyncObserver
    }
    private struct Registry {
        var entries: [Entry] = []
        /// The observers as notifications read them, rebuilt at each change.
        var observers: [any AsyncSyncObserver] = []
        var nextID: UInt64 = 0
    }
    private static let registry = Locked(Registry())
    private static let count = Atomic<Int>(0)

    static func add(_ observer: some AsyncSyncObserver) -> AsyncSync.ObserverRegistration {
        registry.withLock { registry in
            registry.nextID += 1
            registry.entries.append(Entry(id: registry.nextID, observer: observer))
            registry.observers = registry.entries.map(\.observer)
            count.store(registry.entries.count, ordering: .releasing)
            return AsyncSync.ObserverRegistration(id: registry.nextID)
        }
    }

    static func remove(_ registration: AsyncSync.ObserverRegistration) -> Bool {
        registry.withLock { registry in
            guard let index = registry.entries.firstIndex(where: { $0.id == registration.id }) else { return false }
            registry.entries.remove(at: index)
            registry.observers = registry.entries.map(\.observer)
            count.store(registry.entries.count, ordering: .releasing)
            return true
        }
    }

    /// Whether any observer is installed: one relaxed load on the hot path.
    @inline(__always)
    static var isActive: Bool { count.load(ordering: .relaxed) > 0 }

    static func forEach(_ body: (any AsyncSyncObserver) -> Void) {
        guard isActive else { return }
        for observer in registry.withLock({ $0.observers }) { body(observer) }
    }

    /// A call whose end ``timed(_:_:)`` reports.
    enum Call {
        /// ``AsyncSyncBackend/sync(_:mode:)``.
        case sync(BackendKind, SyncMode)
        /// ``AsyncSyncBackend/write(_:from:at:)`` or ``AsyncSyncBackend/durableWrite(_:from:at:)``
        /// of `bytes` bytes.
        case write(BackendKind, durable: Bool, bytes: Int)

        func report(to observer: any AsyncSyncObserver, duration: Duration, error: (any Error)?) {
            switch self {
            case .sync(let backend, let mode):
                observer.syncCompleted(backend: backend, mode: mode, duration: duration, error: error)
            case .write(let backend, let durable, let bytes):
                observer.writeCompleted(backend: backend, durable: durable, bytes: bytes, duration: duration, error: error)
            }
        }
    }

    /// Runs one call and reports its duration and outcome, once. Callers check ``isActive``
    /// first, so that with no observer nothing is timed.
    static func timed(_ call: Call, _ body: () async throws -> Void) async throws {
        let clock = ContinuousClock()
        let start = clock.now
        do {
            try await body()
            let duration = clock.now - start
            forEach { call.report(to: $0, duration: duration, error: nil) }
        } catch {
            let duration = clock.now - start
            forEach { call.report(to: $0, duration: duration, error: error) }
            throw error
        }
    }
}
