import Synchronization
import SystemPackage

/// A backend that lets concurrent syncs of the same file share one sync, safely.
///
/// Wrap any ``AsyncSyncBackend``:
///
/// ```swift
/// let backend = GroupCommit(wrapping: try await AsyncSync.makeBackend())
/// ```
///
/// Per file (device and inode, so every descriptor of the file counts) at most one sync runs at a
/// time. A request that arrives while a sync of its file runs waits for the *next* sync, which
/// starts as soon as the running one ends and covers every request queued meanwhile. So a
/// request is never acknowledged by a sync that started before it arrived, and N concurrent
/// writers of one file need far fewer than N syncs.
///
/// - The shared sync is ``SyncMode/fsync`` if any request of the batch asked for it, otherwise
///   ``SyncMode/fdatasync``.
/// - Its result goes to every request of the batch: an error reaches all of them, each with its
///   own descriptor. The wrapped backend's sticky failures apply as usual.
/// - No thread and no timer: the first request for an idle file runs the sync itself (the
///   leader); when it ends, one request of the next batch runs that batch's sync. An optional
///   ``delay`` (default zero) makes each leader wait before its sync so that more requests join.
/// - Cancellation: a request cancelled while it waits for the next batch throws
///   `CancellationError`; once its batch's sync started it gets that sync's result.
/// - ``shutdown()`` refuses new requests, lets running batches finish, then shuts down the
///   wrapped backend.
public final class GroupCommit: AsyncSyncBackend {
    /// The backend that runs the shared syncs.
    public let wrapped: any AsyncSyncBackend

    public var kind: BackendKind { wrapped.kind }

    /// What a waiting request is resumed with.
    enum Outcome {
        case result(Result<Void, AsyncSyncError>)
        case other(any Error)
        /// Lead a batch of its file (the request is its first member). `fresh`: it leads from its
        /// arrival, having identified the file just now, so its descriptor needs no second look;
        /// a request that became a leader at a hand-off waited, and its descriptor may have been
        /// closed and reused meanwhile.
        case lead(fresh: Bool)
    }

    typealias State = GroupCommitState<UnsafeContinuation<Outcome, Never>, UnsafeContinuation<Void, Never>>
    typealias Member = State.Member

    private let state: Locked<State>
    private let nextID = Atomic<UInt64>(1)
    private let system: SystemCalls
    /// The wrapped backend's failure ledger, when it is one of this library's backends and has it
    /// already.
    private let fixedLedger: FailureLedger?
    /// A wrapped backend whose ledger exists only later (``AsyncSync/shared``, made at first use).
    private let lateLedger: (any FailureLedgerProviding)?
    /// The wrapped backend's failure ledger, if it has one (now).
    private var ledger: FailureLedger? { fixedLedger ?? lateLedger?.failureLedger }
    /// Descriptors recently found not to be on a memory file system.
    private let memoryHints = DescriptorHints()
    /// The wrapped backend as a ``WriteTracking`` (cast once, not per request).
    private let writeTracking: (any WriteTracking)?
    /// How long each batch's leader waits before starting the shared sync, so that more requests
    /// can join (PostgreSQL's `commit_delay`). Zero (the default) starts at once.
    public let delay: Duration

    /// Wraps `backend`; its syncs are shared between concurrent requests of the same file.
    ///
    /// - Parameters:
    ///   - backend: The backend that runs the shared syncs; ``shutdown()`` shuts it down.
    ///   - delay: How long a batch's leader waits before starting the sync, so that requests
    ///     arriving meanwhile join the batch. It adds up to `delay` to every request's latency;
    ///     it pays off only when writers arrive faster than a sync completes. The default is zero;
    ///     a negative delay counts as zero.
    public convenience init(wrapping backend: any AsyncSyncBackend, delay: Duration = .zero) {
        self.init(wrapping: backend, delay: delay, system: .live)
    }

    init(wrapping backend: any AsyncSyncBackend, delay: Duration = .zero, system: SystemCalls) {
        self.wrapped = backend
        self.delay = max(delay, .zero)
        self.system = system
        self.state = Locked(State(gathers: delay > .zero))
        self.writeTracking = backend as? any WriteTracking
        let provider = backend as? any FailureLedgerProviding
        self.fixedLedger = provider?.failureLedger
        self.lateLedger = fixedLedger == nil ? provider : nil
    }

    /// Syncs `fd`, sharing the sync with concurrent requests of the same file.
    ///
    /// On a memory file system (tmpfs, ramfs), whose fsync does nothing, nothing is shared: a
    /// regular file or directory there goes straight to the wrapped backend. (Device nodes, whose
    /// devtmpfs reports the same magic number, are shared like any file: their fsync flushes a
    /// device.)
    ///
    /// - Parameters:
    ///   - fd: An open descriptor; it must stay open until this call returns.
    ///   - mode: ``SyncMode/fsync`` or ``SyncMode/fdatasync``.
    /// - Throws: What the wrapped backend throws for the shared sync; its descriptor's own errors
    ///   (`EBADF`, `EINVAL`) only to the request whose descriptor it was;
    ///   ``AsyncSyncError/Code/shutDown`` after ``shutdown()``; `CancellationError` when cancelled
    ///   before its batch's sync started.
    public func sync(_ fd: FileDescriptor, mode: SyncMode) async throws {
        try Task.checkCancellation()
        // tmpfs and ramfs: fsync does nothing there, so sharing it saves nothing and the waiting
        // would cost more than the sync. Each request gets its own, from the wrapped backend.
        if InlineSync.isOnMemoryFileSystem(fd, system: system, hints: memoryHints) {
            guard state.withLock({ $0.lifecycle == .accepting }) else {
                throw AsyncSyncError.shutDown(mode, backend: kind, descriptor: fd)
            }
            return try await wrapped.sync(fd, mode: mode)
        }
        // The request's arrival, taken once: wherever the request goes from here (waiting, leading
        // a later batch) its success is judged against the failures recorded since this stamp.
        // The wrapped backend's sticky rule for this request's own descriptor: its batch may be
        // synced through another descriptor, which the rule would not stop.
        // A ledger that does not exist yet (the shared backend, not made) has recorded nothing:
        // stamped 0, the request is judged against every failure it will record.
        let ledger = self.ledger
        let arrival = try ledger.map { try $0.admit(fd, stamp: $0.stamp(), mode: mode, backend: kind).get() }
            ?? (lateLedger == nil ? nil : 0)
        // Writes through this descriptor still in the wrapped backend: a batch may be synced through
        // another descriptor of the file, whose sync would not wait for them. The request goes to
        // the wrapped backend, whose sync of this descriptor is held until they completed (the
        // seeds' contract); it still shares that sync with the descriptor's other requests.
        let writesPending = writeTracking?.hasIncompleteWrites(fd) ?? false
        guard !writesPending, case .success(let file) = system.fileIdentity(fd.rawValue) else {
            // Not a file we can identify (closed descriptor…): the wrapped backend reports it. The
            // wrapped backend stamps its own, later arrival: a success is judged once more against
            // this request's own (a failure recorded in between counts; unidentified: any counts).
            // Refused after shutdown(), as on every other path (AsyncSync.shared never refuses).
            guard state.withLock({ $0.lifecycle == .accepting }) else {
                throw AsyncSyncError.shutDown(mode, backend: kind, descriptor: fd)
            }
            try await wrapped.sync(fd, mode: mode)
            if let ledger = self.ledger, let arrival, let errno = ledger.judgeSuccess(arrival: arrival, descriptor: fd) {
                throw AsyncSyncError.concurrentFailure(mode, errno: errno, backend: kind, descriptor: fd)
            }
            return
        }
        let id = nextID.wrappingAdd(1, ordering: .relaxed).oldValue
        let outcome = await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Outcome, Never>) in
                let member = Member(id: id, descriptor: fd, mode: mode, arrival: arrival, continuation: continuation)
                // One lock: the request is queued, or leads, or is refused, with the state it saw.
                let arrived = state.withLock { $0.arrive(member, file: file, isCancelled: Task.isCancelled) }
                switch arrived {
                case .queued: break
                case .lead: continuation.resume(returning: .lead(fresh: true))
                case .shutDown: continuation.resume(returning: .result(.failure(.shutDown(mode, backend: kind, descriptor: fd))))
                case .cancelled: continuation.resume(returning: .other(CancellationError()))
                }
            }
        } onCancel: {
            state.withLock { $0.cancel(id: id, file: file) }?.resume(returning: .other(CancellationError()))
        }
        switch outcome {
        case .result(let result): try result.get()
        case .other(let error): throw error
        case .lead(let fresh): try await lead(file, fresh: fresh)
        }
    }

    /// Leads the batch of `file`: waits out ``delay`` (requests arriving meanwhile join), syncs in
    /// the strongest mode asked for through a descriptor that still names the file, gives the
    /// result to every member, hands the file to the next batch, and returns this request's own
    /// result. `fresh`: the leader identified the file just now, so its descriptor needs no
    /// second look.
    private func lead(_ file: FileIdentity, fresh: Bool) async throws {
        if delay > .zero {
            try? await Task.sleep(for: delay)  // cancelled: start at once, the others still need the sync
            state.withLock { $0.startSync(of: file) }
        }
        var mine: Result<Void, any Error>?
        var checkDescriptor = !fresh
        var synced: (size: Int, mode: SyncMode)?
        while let (member, mode, alone) = state.withLock({ $0.syncTarget(of: file) }) {
            // A descriptor closed and reused while its request waited names another file: syncing
            // it would acknowledge the batch with another file's sync.
            if checkDescriptor, (try? system.fileIdentity(member.descriptor.rawValue).get()) != file {
                let error = AsyncSyncError(
                    code: .system, errno: .badFileDescriptor, operation: .sync(member.mode), step: .submit,
                    backend: kind, descriptor: member.descriptor, systemCall: "statx",
                    message: "the descriptor was closed and now names another file; keep it open until the sync returns")
                if let dropped = state.withLock({ $0.drop(id: member.id, from: file) }) {
                    deliver(.failure(error), to: dropped, mine: &mine, file: file)
                }
                continue
            }
            checkDescriptor = true
            // With others in the batch, its sync must not be cancelled by this task: run it apart.
            let descriptor = member.descriptor
            let result = alone
                ? await runSync(descriptor, mode: mode)
                : await Task { await self.runSync(descriptor, mode: mode) }.value
            if case .failure(let error as AsyncSyncError) = result, Self.isDescriptorError(error) {
                // This descriptor cannot sync (an O_PATH descriptor: EBADF): that error is its
                // own; the rest of the batch needs a sync through another descriptor.
                if let dropped = state.withLock({ $0.drop(id: member.id, from: file) }) {
                    deliver(result, to: dropped, mine: &mine, file: file)
                }
                continue
            }
            let ended = state.withLock { $0.syncEnded(of: file) }
            for member in ended.members { deliver(result, to: member, mine: &mine, file: file) }
            synced = (ended.members.count, mode)
            finish(ended)
            break
        }
        if synced == nil {
            // No member's descriptor could sync: the batch ends without a sync.
            finish(state.withLock { $0.syncEnded(of: file) })
        } else if let (size, mode) = synced {
            Observers.forEach { $0.groupCommitBatch(size: size, mode: mode) }
        }
        try mine?.get()
    }

    /// After a batch's end: the next batch's leader goes on to lead it; a drained group lets its
    /// `shutdown()` callers go on.
    private func finish(_ ended: State.SyncEnded) {
        ended.nextLeader?.resume(returning: .lead(fresh: false))
        for waiter in ended.drained { waiter.resume() }
    }

    /// Gives `result` to `member` (the running task's own result goes to `mine`), after the
    /// in-flight rule: a success fails if a durability failure of the file was recorded in the
    /// wrapped backend since the member arrived.
    private func deliver(_ result: Result<Void, any Error>, to member: Member, mine: inout Result<Void, any Error>?, file: FileIdentity) {
        var result = result
        if case .success = result, let ledger, let arrival = member.arrival,
           let errno = ledger.judgeSuccess(arrival: arrival, descriptor: member.descriptor, identity: { file }) {
            result = .failure(AsyncSyncError.concurrentFailure(member.mode, errno: errno, backend: kind, descriptor: member.descriptor))
        }
        guard let continuation = member.continuation else {
            mine = result.map { _ in }.mapError { error in
                (error as? AsyncSyncError)?.replacingDescriptor(member.descriptor) ?? error
            }
            return
        }
        continuation.resume(returning: makeOutcome(result, for: member))
    }

    /// Errors that belong to the descriptor that was synced, not to the file: `EBADF` (closed,
    /// `O_PATH`, or opened without the access the sync needs) and `EINVAL`.
    private static func isDescriptorError(_ error: AsyncSyncError) -> Bool {
        error.code == .system && (error.errno == .badFileDescriptor || error.errno == .invalidArgument)
    }

    private func runSync(_ fd: FileDescriptor, mode: SyncMode) async -> Result<Void, any Error> {
        do {
            try await wrapped.sync(fd, mode: mode)
            return .success(())
        } catch {
            return .failure(error)
        }
    }

    private func makeOutcome(_ result: Result<Void, any Error>, for member: Member) -> Outcome {
        switch result {
        case .success: .result(.success(()))
        case .failure(let error as AsyncSyncError): .result(.failure(error.replacingDescriptor(member.descriptor)))
        case .failure(let error): .other(error)
        }
    }

    /// Whether ``shutdown()`` has been called (for tests).
    var isShuttingDown: Bool { state.withLock { $0.lifecycle == .draining } }

    /// Whether no sync of any file runs (for tests).
    var isIdle: Bool { state.withLock { $0.isIdle } }

    /// Requests waiting for a batch (for tests).
    var queuedCount: Int { state.withLock { $0.queuedCount } }

    /// Forwards to the wrapped backend.
    @discardableResult
    public func clearFailure(of fd: FileDescriptor) throws -> Bool {
        try wrapped.clearFailure(of: fd)
    }

    /// Writes through the wrapped backend (see ``AsyncSyncBackend/write(_:from:at:)``); a later
    /// ``sync(_:mode:)`` of the descriptor covers it, as the wrapped backend's syncs do.
    ///
    /// - Parameters:
    ///   - fd: An open descriptor of a regular file; it must stay open until this call returns.
    ///   - buffer: The bytes; valid and unchanged until this call returns.
    ///   - offset: Where the first byte goes.
    /// - Throws: As ``AsyncSyncBackend/write(_:from:at:)``; ``AsyncSyncError/Code/shutDown`` once
    ///   ``shutdown()`` has begun, as for a sync.
    public func write(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws {
        try refuseAfterShutdown(.write, fd)
        try await wrapped.write(fd, from: buffer, at: offset)
    }

    /// A durable write through the wrapped backend (see
    /// ``AsyncSyncBackend/durableWrite(_:from:at:)``), which already shares the `fdatasync` of a
    /// buffered file between the descriptor's concurrent durable writes and syncs.
    ///
    /// - Parameters:
    ///   - fd: An open descriptor of a regular file; it must stay open until this call returns.
    ///   - buffer: The bytes; valid and unchanged until this call returns.
    ///   - offset: Where the first byte goes.
    /// - Throws: As ``AsyncSyncBackend/durableWrite(_:from:at:)``; ``AsyncSyncError/Code/shutDown``
    ///   once ``shutdown()`` has begun, as for a sync.
    public func durableWrite(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws {
        try refuseAfterShutdown(.durableWrite, fd)
        try await wrapped.durableWrite(fd, from: buffer, at: offset)
    }

    /// A group whose ``shutdown()`` has begun refuses writes as it refuses syncs: the wrapped backend
    /// still accepts them until the group's running batches are done and it is shut down itself.
    private func refuseAfterShutdown(_ operation: AsyncSyncError.Operation, _ fd: FileDescriptor) throws(AsyncSyncError) {
        guard state.withLock({ $0.lifecycle == .accepting }) else {
            throw AsyncSyncError(code: .shutDown, errno: nil, operation: operation, step: .request, backend: kind, descriptor: fd)
        }
    }

    /// The wrapped backend's executor: a batch's sync completes there, so its waiters go on there.

    public var preferredTaskExecutor: (any TaskExecutor)? { wrapped.preferredTaskExecutor }

    /// The wrapped backend's serial executor, for an actor that syncs through this group.
    public var preferredSerialExecutor: (any SerialExecutor)? { wrapped.preferredSerialExecutor }

    /// Refuses new requests, lets running batches finish, then shuts the wrapped backend down.
    /// Calling it again is harmless.
    public func shutdown() async {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            state.withLock { $0.beginShutdown(waiter: continuation) }?.resume()
        }
        await wrapped.shutdown()
    }
}

/// A group wrapped in another group (or in a backend that asks) tells of its wrapped backend's
/// writes: they are the writes its syncs wait for.
extension GroupCommit: WriteTracking {
    func hasIncompleteWrites(_ fd: FileDescriptor) -> Bool { writeTracking?.hasIncompleteWrites(fd) ?? false }
}

extension GroupCommit: FailureLedgerProviding {
    var failureLedger: FailureLedger? { ledger }
}

extension AsyncSyncError {
    /// The same error, about another descriptor of the same file (a shared sync's result).
    func replacingDescriptor(_ descriptor: FileDescriptor) -> AsyncSyncError {
        var copy = self
        copy.descriptor = descriptor
        return copy
    }
}
