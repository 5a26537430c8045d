import Synchronization
import SystemPackage

extension AsyncSync {
    /// The process-wide backend: made once, at its first use, from the environment's
    /// ``Configuration`` (``Configuration/init(environment:)``: `ASYNC_FSYNC_BACKEND`,
    /// `ASYNC_FSYNC_INLINE`, `ASYNC_FSYNC_CAPACITY`), safe to use from anywhere, and never shut down.
    ///
    /// ```swift
    /// try await AsyncSync.shared.fdatasync(fd)
    /// let log = GroupCommit(wrapping: AsyncSync.shared)   // shares syncs per file
    /// ```
    ///
    /// It is what most code should use: every backend of a kind shares one completion thread, but
    /// each holds its own AIO context (`capacity` events of the host's `aio-max-nr`, 65 536 by
    /// default) and its own record of durability failures. Make a backend of your own when you
    /// want your own capacity (backpressure) or your own sticky failures (a failed file of one
    /// store must not refuse another's), and shut it down when you are done.
    ///
    /// The backend behind it is made exactly once, on a thread of its own; every caller that comes
    /// while it is being made waits for that one. Syncs wait without blocking a thread. The
    /// synchronous members (``AsyncSyncBackend/kind``, ``AsyncSyncBackend/clearFailure(of:)``,
    /// ``AsyncSyncBackend/preferredTaskExecutor``, ``AsyncSyncBackend/preferredSerialExecutor``)
    /// block their caller until it is made, the first time (0.4–1.5 ms normally, about 3 s per kind
    /// at most on a file system that does not answer). Code that must not wait asks
    /// ``sharedIfMade``; async code can `await` ``sharedBackend()``.
    ///
    /// ``AsyncSyncBackend/shutdown()`` does nothing on it: other parts of the process use it too.
    /// When no backend can be made (a forced backend that cannot work here, an invalid setting),
    /// every sync and ``AsyncSyncBackend/clearFailure(of:)`` throws that error, the executors are
    /// `nil`, and ``AsyncSyncBackend/kind`` is the kind the configuration forced (else the last one
    /// `auto` tried); the first use decides, later calls do not probe again.
    public static let shared: any AsyncSyncBackend = sharedStorage

    static let sharedStorage = SharedBackend()

    /// The backend behind ``shared`` if it has been made, without waiting and without making it:
    /// `nil` before the first use, while it is being made, and when it could not be made.
    public static var sharedIfMade: (any AsyncSyncBackend)? { sharedStorage.ifMade }

    /// The backend behind ``shared``, made now if no caller has started making it, waited for
    /// without blocking a thread.
    ///
    /// - Returns: The made backend: its ``AsyncSyncBackend/kind`` and `description` say which it is.
    /// - Throws: The ``AsyncSyncError`` that made its creation fail, or `CancellationError` when the
    ///   task is cancelled while it waits (the creation goes on).
    public static func sharedBackend() async throws -> any AsyncSyncBackend {
        try await sharedStorage.backend()
    }
}

/// ``AsyncSync/shared``: the backend is made exactly once, at first use, on a thread of its own;
/// every caller that comes meanwhile, synchronous or async, waits for that one.
///
/// The creation runs on its own thread (the blocking selection: probes on threads of their own,
/// each bounded in time), never on the cooperative pool: a synchronous accessor that blocks a pool
/// thread while it waits can then never hold up the creation it waits for.
final class SharedBackend: AsyncSyncBackend, CustomStringConvertible {
    typealias Outcome = Result<any AsyncSyncBackend, AsyncSyncError>
    private enum State {
        case empty
        case making(OneShot<Outcome>)
        case made(Outcome)
    }
    private let state = Locked(State.empty)

    /// The made backend and its ledger, published once when `state` becomes `.made(.success)`:
    /// every sync and every GroupCommit request reads it with one acquiring load instead of
    /// taking the lock (and casting) each time.
    private final class Made: Sendable {
        let backend: any AsyncSyncBackend
        let ledger: FailureLedger?
        init(_ backend: any AsyncSyncBackend) {
            self.backend = backend
            self.ledger = (backend as? any FailureLedgerProviding)?.failureLedger
        }
    }
    private let made = Atomic<Unmanaged<Made>?>(nil)

    typealias Making = @Sendable () -> Outcome
    /// Makes the backend (blocking); called once.
    private let maker: Making
    /// How many callers are blocked waiting for the creation in progress (tests).
    let blockedWaiters = Atomic<Int>(0)
    /// The thread making the backend (``system_thread_id()``), 0 when none: a synchronous member called
    /// from it (an observer told of the selection) must not wait for itself.
    private let creator = Atomic<UInt>(0)

    /// The process's shared backend: the configuration from the environment.
    convenience init() {
        self.init(maker: Self.environmentMaker)
    }

    /// Makes the backend of the environment's configuration (blocking).
    static let environmentMaker: Making = {
        Result { () throws(AsyncSyncError) -> any AsyncSyncBackend in
            let configuration = try AsyncSync.Configuration(environment: nil)
            return try AsyncSync.makeBackendBlocking(configuration)
        }
    }

    /// A shared backend whose creation is `maker` (tests: count the backends made, hold one).
    init(maker: @escaping Making) { self.maker = maker }

    deinit { made.load(ordering: .acquiring)?.release() }

    /// The backend if it has been made, without waiting or making it.
    var ifMade: (any AsyncSyncBackend)? { made.load(ordering: .acquiring)?.takeUnretainedValue().backend }

    /// The outcome if the creation has ended, else the creation to wait for, started now if no
    /// caller has started it.
    private func outcomeOrCreation() -> Either {
        let step = state.withLock { state -> Either in
            switch state {
            case .made(let outcome): return .ready(outcome)
            case .making(let pending): return .wait(pending)
            case .empty:
                let pending = OneShot<Outcome>()
                state = .making(pending)
                return .start(pending)
            }
        }
        guard case .start(let pending) = step else { return step }
        let create: @Sendable () -> Void = { [self] in
            creator.store(system_thread_id(), ordering: .releasing)
            // The observers are told of the selection once the backend is published (below): one
            // that asks this shared backend for its kind or executors then gets the made one's.
            let announcements = AsyncSync.DeferredAnnouncements()
            let outcome = AsyncSync.$deferredAnnouncements.withValue(announcements) { maker() }
            state.withLock { state in
                state = .made(outcome)
                if case .success(let backend) = outcome {
                    made.store(Unmanaged.passRetained(Made(backend)), ordering: .releasing)
                }
            }
            creator.store(0, ordering: .releasing)
            for announce in announcements.pending { announce() }
            pending.fulfill(outcome)
        }
        // On a thread of its own: a cancelled first caller must not decide the process-wide backend,
        // and no waiter (which may block a thread of the cooperative pool) holds up the creation.
        // With no thread to be had (a pids limit) the first caller makes it; the others still wait.
        if case .failure = SystemCalls.live.startThread("asyncfsync-shared", create) { create() }
        return .wait(pending)
    }
    private enum Either { case ready(Outcome), wait(OneShot<Outcome>), start(OneShot<Outcome>) }

    /// The backend, waiting without blocking a thread for the one creation (started now if needed).
    func backend() async throws -> any AsyncSyncBackend {
        if let backend = ifMade { return backend }
        switch outcomeOrCreation() {
        case .ready(let outcome): return try outcome.get()
        case .wait(let pending), .start(let pending):
            // No deadline, so no thread per waiter: a caller waits for the one creation, each
            // probe of which is bounded in time. `nil` only when the task is cancelled.
            guard let outcome = await pending.value() else { throw CancellationError() }
            return try outcome.get()
        }
    }

    /// The outcome of the one creation (started now if needed), blocking the caller until it ends.
    func outcome() -> Outcome {
        if let backend = ifMade { return .success(backend) }
        switch outcomeOrCreation() {
        case .ready(let outcome): return outcome
        case .wait(let pending), .start(let pending):
            if creator.load(ordering: .acquiring) == system_thread_id() {
                return .failure(AsyncSyncError(
                    code: .backendUnavailable, errno: nil, operation: .setup, step: .setup, backend: nil,
                    message: "AsyncSync.shared was asked for from the thread making it (an observer told of the "
                        + "selection?): it is not made yet"))
            }
            blockedWaiters.add(1, ordering: .releasing)
            defer { blockedWaiters.subtract(1, ordering: .releasing) }
            while true {
                if let outcome = pending.wait(timeout: .seconds(3600)) { return outcome }
            }
        }
    }

    /// The made backend's kind; blocks until the backend is made. When none could be made, the
    /// kind the configuration forced, else the last kind `auto` tried (every sync throws then).
    var kind: BackendKind {
        switch outcome() {
        case .success(let backend): return backend.kind
        case .failure(let error): return error.backend ?? BackendKind.automaticOrder.last!  // posix on Linux, portable elsewhere
        }
    }

    func sync(_ fd: FileDescriptor, mode: SyncMode) async throws {
        try await backend().sync(fd, mode: mode)
    }

    func write(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws {
        try await backend().write(fd, from: buffer, at: offset)
    }

    func durableWrite(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws {
        try await backend().durableWrite(fd, from: buffer, at: offset)
    }

    /// Blocks until the backend is made; throws the creation's error when none could be made.
    @discardableResult
    func clearFailure(of fd: FileDescriptor) throws -> Bool {
        try outcome().get().clearFailure(of: fd)
    }

    /// Does nothing: the shared backend lives as long as the process.
    func shutdown() async {}

    var preferredTaskExecutor: (any TaskExecutor)? { try? outcome().get().preferredTaskExecutor }

    var preferredSerialExecutor: (any SerialExecutor)? { try? outcome().get().preferredSerialExecutor }

    var description: String {
        "shared " + (ifMade.map { "\($0)" } ?? "backend (not made yet)")
    }
}

extension AsyncSyncBackend {
    /// ``AsyncSyncBackend/fsync(_:)-(FileDescriptor)`` of a raw descriptor number (`FileHandle.fileDescriptor`, a
    /// descriptor from C), so that no `FileDescriptor` needs to be built.
    ///
    /// - Parameter fileDescriptor: An open descriptor; it must stay open until this call returns.
    /// - Throws: See ``AsyncSyncBackend/sync(_:mode:)``.
    public func fsync(_ fileDescriptor: CInt) async throws {
        try await sync(FileDescriptor(rawValue: fileDescriptor), mode: .fsync)
    }

    /// ``AsyncSyncBackend/fdatasync(_:)-(FileDescriptor)`` of a raw descriptor number.
    ///
    /// - Parameter fileDescriptor: An open descriptor; it must stay open until this call returns.
    /// - Throws: See ``AsyncSyncBackend/sync(_:mode:)``.
    public func fdatasync(_ fileDescriptor: CInt) async throws {
        try await sync(FileDescriptor(rawValue: fileDescriptor), mode: .fdatasync)
    }

    /// ``AsyncSyncBackend/sync(_:mode:)`` of a raw descriptor number.
    ///
    /// - Parameters:
    ///   - fileDescriptor: An open descriptor; it must stay open until this call returns.
    ///   - mode: ``SyncMode/fsync`` or ``SyncMode/fdatasync``.
    /// - Throws: See ``AsyncSyncBackend/sync(_:mode:)``.
    public func sync(_ fileDescriptor: CInt, mode: SyncMode) async throws {
        try await sync(FileDescriptor(rawValue: fileDescriptor), mode: mode)
    }
}

extension SharedBackend: FailureLedgerProviding {
    /// The made backend's ledger; nil until it is made (``GroupCommit`` looks again at each request).
    var failureLedger: FailureLedger? {
        made.load(ordering: .acquiring)?.takeUnretainedValue().ledger
    }
}
