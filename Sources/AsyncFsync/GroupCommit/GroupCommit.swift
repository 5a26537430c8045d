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

    private enum Outcome {
        case result(Result<Void, AsyncSyncError>)
        case other(any Error)
        /// Run the sync of this batch (the caller is its leader).
        case lead([Member])
        /// The file went idle before the request could queue: start over as a new request.
        case retry
    }

    /// A request of a batch. The leader's own request has no continuation: it is the running task.
    private struct Member {
        var id: UInt64
        var descriptor: FileDescriptor
        var mode: SyncMode
        /// The wrapped backend's ledger stamp at arrival (the in-flight rule), if it has a ledger.
        var arrival: UInt64?
        var continuation: UnsafeContinuation<Outcome, Never>?
    }

    private struct FileState {
        /// Requests that arrived while a sync of the file runs; they form the next batch.
        var next: [Member] = []
        /// While a batch's leader waits out ``GroupCommit/delay`` before its sync starts: the
        /// requests that join that batch (its sync has not started, so it may acknowledge them).
        var gathering: [Member]?
    }

    private struct State {
        /// Files with a sync running; absent = idle.
        var running: [FileIdentity: FileState] = [:]
        var nextID: UInt64 = 0
        var shuttingDown = false
        /// `shutdown()` callers waiting for the running batches to end.
        var shutdownWaiters: [UnsafeContinuation<Void, Never>] = []
    }

    private let state = Locked(State())
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
    /// How long each batch's leader waits before starting the shared sync, so that more requests
    /// can join (PostgreSQL's `commit_delay`). Zero (the default) starts at once.
    public let delay: Duration

    /// Wraps `backend`; its syncs are shared between concurrent requests of the same file.
    ///
    /// - Parameters:
    ///   - backend: The backend that runs the shared syncs; ``shutdown()`` shuts it down.
    ///   - delay: How long a batch's leader waits before starting the sync, so that requests
    ///     arriving meanwhile join the batch. It adds up to `delay` to every request's latency;
    ///     it pays off only when writers arrive faster than a sync completes. The default is zero.
    public convenience init(wrapping backend: any AsyncSyncBackend, delay: Duration = .zero) {
        self.init(wrapping: backend, delay: delay, system: .live)
    }

    init(wrapping backend: any AsyncSyncBackend, delay: Duration = .zero, system: SystemCalls) {
        self.wrapped = backend
        self.delay = delay
        self.system = system
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
            guard !isShuttingDown else { throw AsyncSyncError.shutDown(mode, backend: kind, descriptor: fd) }
            return try await wrapped.sync(fd, mode: mode)
        }
        // The wrapped backend's sticky rule for this request's own descriptor: its batch may be
        // synced through another descriptor, which the rule would not stop.
        // A ledger that does not exist yet (the shared backend, not made) has recorded nothing:
        // stamped 0, the request is judged against every failure it will record.
        let ledger = self.ledger
        let arrival = try ledger.map { try $0.admit(fd, stamp: $0.stamp(), mode: mode, backend: kind).get() }
            ?? (lateLedger == nil ? nil : 0)
        guard case .success(let file) = system.fileIdentity(fd.rawValue) else {
            // Not a file we can identify (closed descriptor…): the wrapped backend reports it.
            return try await wrapped.sync(fd, mode: mode)
        }

        enum Role { case leader(UInt64), follower(UInt64), refused }
        let role = state.withLock { state -> Role in
            if state.shuttingDown { return .refused }
            state.nextID += 1
            if state.running[file] == nil {
                state.running[file] = FileState()
                return .leader(state.nextID)
            }
            return .follower(state.nextID)
        }
        switch role {
        case .refused:
            throw AsyncSyncError.shutDown(mode, backend: kind, descriptor: fd)
        case .leader(let id):
            let me = Member(id: id, descriptor: fd, mode: mode, arrival: arrival, continuation: nil)
            try await lead(file, me, others: [], fresh: true)
        case .follower(let id):
            let outcome = await withTaskCancellationHandler {
                await withUnsafeContinuation { (continuation: UnsafeContinuation<Outcome, Never>) in
                    enum Queued { case queued, retry, cancelled }
                    let queued = state.withLock { state -> Queued in
                        guard state.running[file] != nil else { return .retry }
                        // The cancellation handler may have run before the request was queued
                        // (it found nothing to remove): checked under the same lock.
                        if Task.isCancelled { return .cancelled }
                        let member = Member(id: id, descriptor: fd, mode: mode, arrival: arrival, continuation: continuation)
                        if state.running[file]!.gathering != nil {
                            state.running[file]!.gathering!.append(member)
                        } else {
                            state.running[file]!.next.append(member)
                        }
                        return .queued
                    }
                    switch queued {
                    case .queued: break
                    // The running sync ended between the two locks: start over.
                    case .retry: continuation.resume(returning: .retry)
                    case .cancelled: continuation.resume(returning: .other(CancellationError()))
                    }
                }
            } onCancel: {
                let removed = state.withLock { state -> Member? in
                    if let index = state.running[file]?.next.firstIndex(where: { $0.id == id }) {
                        return state.running[file]!.next.remove(at: index)
                    }
                    if let index = state.running[file]?.gathering?.firstIndex(where: { $0.id == id }) {
                        return state.running[file]!.gathering!.remove(at: index)
                    }
                    return nil
                }
                removed?.continuation?.resume(returning: .other(CancellationError()))
            }
            switch outcome {
            case .result(let result): try result.get()
            case .other(let error): throw error
            case .retry: return try await sync(fd, mode: mode)
            case .lead(let others):
                let me = Member(id: id, descriptor: fd, mode: mode, arrival: arrival, continuation: nil)
                try await lead(file, me, others: others, fresh: false)
            }
        }
    }

    /// Runs the sync of a batch: waits out ``delay`` (requests arriving meanwhile join), syncs in
    /// the strongest mode asked for through a descriptor that still names the file, gives the
    /// result to every request of the batch, hands the file to the next batch, and returns this
    /// request's own result. `fresh`: `me` identified the file just now (an idle file's first
    /// request), so its descriptor needs no second look.
    private func lead(_ file: FileIdentity, _ me: Member, others: [Member], fresh: Bool) async throws {
        if fresh, others.isEmpty, delay == .zero {
            // The usual case: an idle file's first request, alone. Its own sync, in its own task.
            var mine: Result<Void, any Error>?
            deliver(await runSync(me.descriptor, mode: me.mode), to: me, mine: &mine, file: file)
            Observers.forEach { $0.groupCommitBatch(size: 1, mode: me.mode) }
            handOff(file)
            try mine?.get()
            return
        }
        var batch = [me] + others
        if delay > .zero {
            state.withLock { state in
                if state.running[file]!.gathering == nil { state.running[file]!.gathering = [] }
            }
            try? await Task.sleep(for: delay)  // cancelled: start at once, the others still need the sync
            batch += state.withLock { state -> [Member] in
                defer { state.running[file]!.gathering = nil }
                return state.running[file]!.gathering ?? []
            }
        }
        var mine: Result<Void, any Error>?
        var checkLeader = !fresh
        while let leader = batch.first {
            // A descriptor closed and reused while its request waited names another file: syncing
            // it would acknowledge the batch with another file's sync.
            if checkLeader, (try? system.fileIdentity(leader.descriptor.rawValue).get()) != file {
                let error = AsyncSyncError(
                    code: .system, errno: .badFileDescriptor, operation: .sync(leader.mode), step: .submit,
                    backend: kind, descriptor: leader.descriptor, systemCall: "statx",
                    message: "the descriptor was closed and now names another file; keep it open until the sync returns")
                deliver(.failure(error), to: leader, mine: &mine, file: file)
                batch.removeFirst()
                continue
            }
            checkLeader = true
            let batchMode: SyncMode = batch.contains { $0.mode == .fsync } ? .fsync : .fdatasync
            // With others in the batch, its sync must not be cancelled by this task: run it apart.
            let result = batch.count == 1 && leader.continuation == nil
                ? await runSync(leader.descriptor, mode: batchMode)
                : await Task { await self.runSync(leader.descriptor, mode: batchMode) }.value
            if case .failure(let error as AsyncSyncError) = result, Self.isDescriptorError(error) {
                // The leader's descriptor cannot sync (an O_PATH descriptor: EBADF): that error is
                // its own; the rest of the batch needs a sync through another descriptor.
                deliver(result, to: leader, mine: &mine, file: file)
                batch.removeFirst()
                continue
            }
            for member in batch { deliver(result, to: member, mine: &mine, file: file) }
            let size = batch.count
            Observers.forEach { $0.groupCommitBatch(size: size, mode: batchMode) }
            break
        }
        handOff(file)
        try mine?.get()
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

    /// The sync of `file` ended: the requests queued meanwhile become the next batch, led by its
    /// first request; with none, the file is idle again. The last batch to end during a
    /// shutdown lets the `shutdown()` callers go on.
    private func handOff(_ file: FileIdentity) {
        let (batch, waiters) = state.withLock { state -> ([Member], [UnsafeContinuation<Void, Never>]) in
            let batch = state.running[file]?.next ?? []
            if batch.isEmpty {
                state.running[file] = nil
            } else {
                state.running[file]!.next = []
            }
            guard state.running.isEmpty else { return (batch, []) }
            defer { state.shutdownWaiters = [] }
            return (batch, state.shutdownWaiters)
        }
        if let leader = batch.first {
            leader.continuation?.resume(returning: .lead(Array(batch.dropFirst())))
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Whether ``shutdown()`` has been called (for tests).
    var isShuttingDown: Bool { state.withLock { $0.shuttingDown } }

    /// Whether no sync of any file runs (for tests).
    var isIdle: Bool { state.withLock { $0.running.isEmpty } }

    /// Requests waiting for a batch (for tests).
    var queuedCount: Int {
        state.withLock { $0.running.values.reduce(0) { $0 + $1.next.count + ($1.gathering?.count ?? 0) } }
    }

    /// Forwards to the wrapped backend.
    @discardableResult
    public func clearFailure(of fd: FileDescriptor) throws -> Bool {
        try wrapped.clearFailure(of: fd)
    }

    /// The wrapped backend's executor: a batch's sync completes there, so its waiters go on there.
    public var preferredTaskExecutor: (any TaskExecutor)? { wrapped.preferredTaskExecutor }

    /// The wrapped backend's serial executor, for an actor that syncs through this group.
    public var preferredSerialExecutor: (any SerialExecutor)? { wrapped.preferredSerialExecutor }

    /// Refuses new requests, lets running batches finish, then shuts the wrapped backend down.
    /// Calling it again is harmless.
    public func shutdown() async {
        let mustWait = state.withLock { state -> Bool in
            state.shuttingDown = true
            return !state.running.isEmpty
        }
        if mustWait {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                let done = state.withLock { state -> Bool in
                    if state.running.isEmpty { return true }
                    state.shutdownWaiters.append(continuation)
                    return false
                }
                if done { continuation.resume() }
            }
        }
        await wrapped.shutdown()
    }
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
