import Synchronization
import SystemPackage

extension AsyncSync {
    /// The process-wide backend: made at its first use by ``makeBackend(environment:directory:)-uycg``
    /// (so it honours `ASYNC_FSYNC_BACKEND` and `ASYNC_FSYNC_INLINE`), safe to use from anywhere,
    /// and never shut down.
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
    /// ``AsyncSyncBackend/shutdown()`` does nothing on it: other parts of the process use it too.
    /// When no backend can be made (a forced backend that cannot work here, an invalid setting),
    /// every call throws that error; the first call decides, later calls do not probe again.
    public static let shared: any AsyncSyncBackend = SharedBackend()
}

/// ``AsyncSync/shared``: the backend is made once, at first use; concurrent first callers wait for
/// the same one.
final class SharedBackend: AsyncSyncBackend, CustomStringConvertible {
    private enum State {
        case empty
        case making(OneShot<Result<any AsyncSyncBackend, AsyncSyncError>>)
        case made(Result<any AsyncSyncBackend, AsyncSyncError>)
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

    typealias Making = @Sendable () -> Result<any AsyncSyncBackend, AsyncSyncError>
    /// Makes the backend; tests inject one that counts and holds.
    private let maker: Making?
    /// How many callers are blocked waiting for the creation in progress (tests).
    let blockedWaiters = Atomic<Int>(0)

    init() { maker = nil }

    /// A shared backend whose creation is `maker` (tests: count the backends made, hold one).
    init(maker: @escaping Making) { self.maker = maker }

    /// The backend if it has been made, without waiting or making it.
    var ifMade: (any AsyncSyncBackend)? { made.load(ordering: .acquiring)?.takeUnretainedValue().backend }

    deinit { made.load(ordering: .acquiring)?.release() }

    /// Sets `state` to `.made(result)` (under its lock; called once) and publishes a success.
    private static func settle(_ state: inout State, _ result: Result<any AsyncSyncBackend, AsyncSyncError>,
                               publishingIn made: borrowing Atomic<Unmanaged<Made>?>) {
        state = .made(result)
        if case .success(let backend) = result {
            made.store(Unmanaged.passRetained(Made(backend)), ordering: .releasing)
        }
    }

    /// The backend, made now if it has not been (the async probes: no thread of the pool blocks).
    func backend() async throws -> any AsyncSyncBackend {
        if let made = made.load(ordering: .acquiring) { return made.takeUnretainedValue().backend }
        enum Step { case ready(Result<any AsyncSyncBackend, AsyncSyncError>), wait(OneShot<Result<any AsyncSyncBackend, AsyncSyncError>>), make(OneShot<Result<any AsyncSyncBackend, AsyncSyncError>>) }
        let step = state.withLock { state -> Step in
            switch state {
            case .made(let result): return .ready(result)
            case .making(let pending): return .wait(pending)
            case .empty:
                let pending = OneShot<Result<any AsyncSyncBackend, AsyncSyncError>>()
                state = .making(pending)
                return .make(pending)
            }
        }
        switch step {
        case .ready(let result):
            return try result.get()
        case .wait(let pending):
            return try await wait(for: pending)
        case .make(let pending):
            // In a task of its own: a cancelled first caller must not decide the process-wide
            // backend (its probes would end at once, unanswered).
            Task.detached { [self] in
                let result: Result<any AsyncSyncBackend, AsyncSyncError>
                do {
                    if let maker { result = maker() } else { result = .success(try await AsyncSync.makeBackend()) }
                } catch let error as AsyncSyncError {
                    result = .failure(error)
                } catch {
                    result = .failure(AsyncSyncError(code: .backendUnavailable, errno: nil, operation: .setup, step: .setup,
                                                     backend: nil, message: "\(error)"))
                }
                state.withLock { Self.settle(&$0, result, publishingIn: made) }
                pending.fulfill(result)
            }
            return try await wait(for: pending)
        }
    }

    /// Waits for the backend being made; a cancelled caller throws `CancellationError` instead of
    /// waiting (`OneShot.value` returns at once for it, so looping would spin).
    private func wait(for pending: OneShot<Result<any AsyncSyncBackend, AsyncSyncError>>) async throws -> any AsyncSyncBackend {
        while true {
            if let result = await pending.value(timeout: .seconds(3600)) { return try result.get() }
            try Task.checkCancellation()
        }
    }

    /// The backend made from a synchronous context (it may probe, blocking for a moment).
    private func madeBackend() -> (any AsyncSyncBackend)? {
        if let made = made.load(ordering: .acquiring) { return made.takeUnretainedValue().backend }
        let settled = state.withLock { state -> Result<any AsyncSyncBackend, AsyncSyncError>? in
            if case .made(let result) = state { return result }
            return nil
        }
        if let settled { return try? settled.get() }
        let result = maker?() ?? Result { () throws(AsyncSyncError) -> any AsyncSyncBackend in
            do { return try AsyncSync.makeBackend() } catch let error as AsyncSyncError { throw error } catch {
                throw AsyncSyncError(code: .backendUnavailable, errno: nil, operation: .setup, step: .setup, backend: nil, message: "\(error)")
            }
        }
        let winner = state.withLock { state -> Result<any AsyncSyncBackend, AsyncSyncError>? in
            switch state {
            case .made(let existing): return existing
            case .empty:
                Self.settle(&state, result, publishingIn: made)
                return result
            case .making: return nil  // an async first use is making it; use this one meanwhile
            }
        }
        return try? (winner ?? result).get()
    }

    var kind: BackendKind { madeBackend()?.kind ?? .posix }

    func sync(_ fd: FileDescriptor, mode: SyncMode) async throws {
        try await backend().sync(fd, mode: mode)
    }

    @discardableResult
    func clearFailure(of fd: FileDescriptor) throws -> Bool {
        try madeBackend()?.clearFailure(of: fd) ?? false
    }

    /// Does nothing: the shared backend lives as long as the process.
    func shutdown() async {}

    var preferredTaskExecutor: (any TaskExecutor)? { madeBackend()?.preferredTaskExecutor }

    var preferredSerialExecutor: (any SerialExecutor)? { madeBackend()?.preferredSerialExecutor }

    var description: String {
        let backend = made.load(ordering: .acquiring)?.takeUnretainedValue().backend
        return "shared " + (backend.map { "\($0)" } ?? "backend (not made yet)")
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
