import Synchronization
import SystemPackage

/// The machinery both backends share: every request completes exactly once.
///
/// A request enters ``sync(_:mode:)``, waits in a FIFO queue when every slot is taken
/// (backpressure), is prepared in a free slot and handed to the driver, and is resumed by the
/// completion thread with the driver's result. Submission uses flat combining: the task that finds
/// nobody submitting drains the queue, so requests that arrive meanwhile go to the system in one
/// batch. Cancellation removes a request only while it is queued; once submitted, the system's
/// result is delivered, because a durability result is never thrown away.
final class AIOEngine<Driver: AIODriver>: TaskExecutor, Sendable {
    /// Consecutive `EINTR` results of one request before the `EINTR` is reported.
    static var maximumInterruptedRetries: UInt8 { 16 }

    private struct State {
        var requests: [PendingSync?]
        var interruptedRetries: [UInt8]
        var submitted: [Bool]
        var freeSlots: [Int32]
        var queue = RequestQueue()
        /// Requests holding a slot (prepared, submitted or being retried).
        var inFlight = 0
        /// A thread holds the submitter role (and `submitBuffer`).
        var submitting = false
        /// The completion thread is about to wait or waiting.
        var parked = false
        var wakeRequested = false
        var shuttingDown = false
        /// The completion thread released the driver and is ending.
        var finished = false
        var shutdownWaiters: [UnsafeContinuation<Void, Never>] = []
        /// Set when the completion source broke; every later request fails with it.
        var brokenErrno: Errno?
        /// Files whose sync failed with a durability error, and that errno (sticky failures).
        var failedFiles: [FileIdentity: Errno] = [:]
        /// Jobs of tasks that prefer this engine as their task executor, to run on the completion
        /// thread (see ``enqueue(_:)``).
        var jobs: [UnownedJob] = []
        /// The completion thread has ended: jobs go to the global concurrent executor.
        var executorClosed = false
    }

    let driver: Driver
    let system: SystemCalls
    /// Whether a durability failure makes later syncs of the same file fail (see
    /// ``AsyncSyncError/Code/earlierFailure``).
    let stickyFailures: Bool
    private let state: Locked<State>
    private let nextID = Atomic<UInt64>(1)
    /// `state.failedFiles.count`, readable without the lock: the hot path looks up the file only
    /// when some file has failed.
    private let failedFileCount = Atomic<Int>(0)
    /// Slot numbers of the batch being submitted; used only by the holder of the submitter role.
    private nonisolated(unsafe) let submitBuffer: UnsafeMutableBufferPointer<Int32>

    var kind: BackendKind { Driver.kind }

    /// Starts the completion thread.
    init(driver: Driver, system: SystemCalls, stickyFailures: Bool) throws(AsyncSyncError) {
        self.driver = driver
        self.system = system
        self.stickyFailures = stickyFailures
        let slots = driver.slotCount
        self.state = Locked(
            State(
                requests: Array(repeating: nil, count: slots),
                interruptedRetries: Array(repeating: 0, count: slots),
                submitted: Array(repeating: false, count: slots),
                freeSlots: (0..<Int32(slots)).reversed()))
        self.submitBuffer = .allocate(capacity: slots)
        let name = "asyncfsync-\(Driver.kind.rawValue)"
        if case .failure(let errno) = system_start_thread(name: name, { [self] in self.runCompletionLoop() }) {
            driver.release()
            submitBuffer.deallocate()
            throw .setup(backend: Driver.kind, errno: errno, systemCall: "pthread_create",
                         message: "cannot start the completion thread")
        }
    }

    deinit {
        submitBuffer.deallocate()
    }

    // MARK: Requests

    func sync(_ descriptor: FileDescriptor, mode: SyncMode) async throws {
        try Task.checkCancellation()
        let id = nextID.wrappingAdd(1, ordering: .relaxed).oldValue
        try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, any Error>) in
                enqueue(PendingSync(id: id, descriptor: descriptor, mode: mode, continuation: continuation))
            }
        } onCancel: {
            let cancelled = state.withLock { $0.queue.remove(id: id) }
            cancelled?.continuation.resume(throwing: CancellationError())
        }
    }

    private enum JobAction {
        case queued, wake, forward
    }

    private enum EnqueueAction {
        case refuse(any Error)
        case queued
        case drain
    }

    private func enqueue(_ request: PendingSync) {
        // Only after some file failed: which file is this? (A descriptor that statx refuses
        // goes on and gets its own error from the system.)
        let identity = failedFileCount.load(ordering: .acquiring) > 0
            ? try? system.fileIdentity(request.descriptor.rawValue).get() : nil
        let action = state.withLock { state -> EnqueueAction in
            if let identity, let errno = state.failedFiles[identity] {
                return .refuse(AsyncSyncError.earlierFailure(
                    request.mode, errno: errno, backend: Driver.kind, descriptor: request.descriptor))
            }
            if let errno = state.brokenErrno {
                return .refuse(AsyncSyncError.sync(
                    request.mode, errno: errno, step: .completion, backend: Driver.kind,
                    descriptor: request.descriptor, systemCall: Driver.completionCall))
            }
            if state.shuttingDown {
                return .refuse(AsyncSyncError.shutDown(request.mode, backend: Driver.kind, descriptor: request.descriptor))
            }
            // The cancellation handler may have run before the request was queued.
            if Task.isCancelled { return .refuse(CancellationError()) }
            state.queue.append(request)
            if state.submitting { return .queued }
            state.submitting = true
            return .drain
        }
        switch action {
        case .refuse(let error): request.continuation.resume(throwing: error)
        case .queued: break
        case .drain: drainQueue()
        }
    }

    /// Moves queued requests into free slots and submits them, until the queue is empty or every
    /// slot is taken. The caller holds the submitter role; this gives it up.
    private func drainQueue() {
        while true {
            let count = state.withLock { state -> Int in
                var count = 0
                while !state.freeSlots.isEmpty, let request = state.queue.popFirst() {
                    let slot = state.freeSlots.removeLast()
                    state.requests[Int(slot)] = request
                    state.interruptedRetries[Int(slot)] = 0
                    state.inFlight += 1
                    driver.prepare(slot: slot, descriptor: request.descriptor, mode: request.mode)
                    submitBuffer[count] = slot
                    count += 1
                }
                if count == 0 { state.submitting = false }
                return count
            }
            if count == 0 { return }
            submit(UnsafeBufferPointer(rebasing: submitBuffer[..<count]))
        }
    }

    /// Hands prepared slots to the driver, handling short counts and refusals.
    private func submit(_ slots: UnsafeBufferPointer<Int32>) {
        var start = 0
        while start < slots.count {
            let rest = UnsafeBufferPointer(rebasing: slots[start...])
            let outcome = driver.submit(rest)
            if outcome.accepted > 0 {
                markSubmitted(UnsafeBufferPointer(rebasing: rest[..<outcome.accepted]))
            }
            start += outcome.accepted
            guard let errno = outcome.error, start < slots.count else { return }
            if errno == .resourceTemporarilyUnavailable {
                requeue(UnsafeBufferPointer(rebasing: slots[start...]), errno: errno)
                return
            }
            // The system refused this request (EBADF, EINVAL, …): its own error, at submit.
            complete(slot: slots[start], with: .failure(errno), step: .submit, call: Driver.submitCall)
            start += 1
        }
    }

    private func markSubmitted(_ slots: UnsafeBufferPointer<Int32>) {
        guard Driver.waitsOnList else { return }
        let wake = state.withLock { state -> Bool in
            for slot in slots { state.submitted[Int(slot)] = true }
            guard state.parked, !state.wakeRequested else { return false }
            state.wakeRequested = true
            return true
        }
        if wake { driver.wake() }
    }

    /// The system is out of resources (EAGAIN): the requests wait at the front of the queue for a
    /// completion to free resources. With nothing in flight no completion will come, so they fail
    /// with EAGAIN rather than wait forever.
    private func requeue(_ slots: UnsafeBufferPointer<Int32>, errno: Errno) {
        let failed = state.withLock { state -> [PendingSync] in
            var requests: [PendingSync] = []
            for slot in slots {
                if let request = state.requests[Int(slot)] { requests.append(request) }
                release(slot: slot, in: &state)
            }
            if state.inFlight > 0 {
                state.queue.prepend(requests)
                return []
            }
            return requests
        }
        for request in failed {
            request.continuation.resume(throwing: AsyncSyncError.sync(
                request.mode, errno: errno, step: .submit, backend: Driver.kind,
                descriptor: request.descriptor, systemCall: Driver.submitCall))
        }
    }

    private func release(slot: Int32, in state: inout State) {
        state.requests[Int(slot)] = nil
        state.submitted[Int(slot)] = false
        state.freeSlots.append(slot)
        state.inFlight -= 1
    }

    private func complete(slot: Int32, with result: Result<Void, Errno>, step: AsyncSyncError.Step, call: String) {
        let request = state.withLock { state -> PendingSync? in
            let request = state.requests[Int(slot)]
            release(slot: slot, in: &state)
            return request
        }
        guard let request else { return }
        resume(request, with: result, step: step, call: call)
    }

    private func resume(_ request: PendingSync, with result: Result<Void, Errno>, step: AsyncSyncError.Step, call: String) {
        switch result {
        case .success:
            request.continuation.resume()
        case .failure(let errno):
            let error = AsyncSyncError.sync(
                request.mode, errno: errno, step: step, backend: Driver.kind,
                descriptor: request.descriptor, systemCall: call)
            // Recorded before the caller hears of it, so every sync it makes afterwards is refused.
            if stickyFailures, error.isDurabilityFailure { recordFailure(of: request.descriptor, errno: errno) }
            request.continuation.resume(throwing: error)
        }
    }

    // MARK: Sticky failures

    private func recordFailure(of descriptor: FileDescriptor, errno: Errno) {
        // The descriptor is still open: its caller is waiting for this very result.
        guard case .success(let identity) = system.fileIdentity(descriptor.rawValue) else { return }
        state.withLock { state in
            if state.failedFiles[identity] == nil { state.failedFiles[identity] = errno }
            failedFileCount.store(state.failedFiles.count, ordering: .releasing)
        }
    }

    /// Forgets the failure of the file `descriptor` refers to; returns whether there was one.
    func clearFailure(of descriptor: FileDescriptor) throws(AsyncSyncError) -> Bool {
        let identity: FileIdentity
        switch system.fileIdentity(descriptor.rawValue) {
        case .success(let value): identity = value
        case .failure(let errno):
            throw AsyncSyncError(
                code: .system, errno: errno, operation: .setup, step: .request, backend: Driver.kind,
                descriptor: descriptor, systemCall: "statx", message: "cannot identify the file")
        }
        return state.withLock { state in
            defer { failedFileCount.store(state.failedFiles.count, ordering: .releasing) }
            return state.failedFiles.removeValue(forKey: identity) != nil
        }
    }

    // MARK: Completion thread

    private func runCompletionLoop() {
        var completions: [Completion] = []
        var ready: [(PendingSync, Result<Void, Errno>)] = []
        var retry: [Int32] = []
        var active: [Int32] = []
        let slots = driver.slotCount
        completions.reserveCapacity(slots)
        ready.reserveCapacity(slots)
        retry.reserveCapacity(slots)
        active.reserveCapacity(Driver.waitsOnList ? slots : 0)

        var jobs: [UnownedJob] = []
        let executor = asUnownedTaskExecutor()

        while true {
            var holdsSubmitterRole = false
            let keepRunning = state.withLock { state -> Bool in
                if state.shuttingDown, state.inFlight == 0, state.queue.isEmpty, !state.submitting {
                    // Jobs still queued (tasks that keep running on this executor) go elsewhere.
                    state.executorClosed = true
                    swap(&jobs, &state.jobs)
                    return false
                }
                if Driver.waitsOnList {
                    active.removeAll(keepingCapacity: true)
                    for slot in 0..<slots where state.submitted[slot] { active.append(Int32(slot)) }
                }
                swap(&jobs, &state.jobs)
                // With jobs to run, look for completions without waiting; else park.
                state.parked = jobs.isEmpty
                state.wakeRequested = false
                // While the jobs run, this thread holds the submitter role: the requests they make
                // are queued and go to the system together afterwards, in one batch.
                if !jobs.isEmpty, !state.submitting {
                    state.submitting = true
                    holdsSubmitterRole = true
                }
                return true
            }
            guard keepRunning else {
                for job in jobs { globalConcurrentExecutor.enqueue(ExecutorJob(job)) }
                break
            }

            // Tasks that prefer this engine as their executor run here, like on an event loop: a
            // task resumed by a completion goes on without waking another thread.
            let blocking = jobs.isEmpty
            for job in jobs { job.runSynchronously(on: executor) }
            jobs.removeAll(keepingCapacity: true)
            if holdsSubmitterRole { drainQueue() }

            completions.removeAll(keepingCapacity: true)
            let outcome = driver.waitForCompletions(active: active, blocking: blocking, into: &completions)

            var drain = false
            let broken = state.withLock { state -> [PendingSync] in
                state.parked = false
                for completion in completions {
                    let slot = Int(completion.slot)
                    guard let request = state.requests[slot] else { continue }
                    if case .failure(.interrupted) = completion.result,
                        state.interruptedRetries[slot] < Self.maximumInterruptedRetries
                    {
                        // EINTR at completion: the sync did not run to its end; run it again.
                        state.interruptedRetries[slot] += 1
                        state.submitted[slot] = false
                        retry.append(completion.slot)
                        continue
                    }
                    release(slot: completion.slot, in: &state)
                    ready.append((request, completion.result))
                }
                var broken: [PendingSync] = []
                if case .broken(let errno) = outcome {
                    // Nothing will complete any more: fail everything, accept nothing new.
                    state.brokenErrno = errno
                    state.shuttingDown = true
                    for slot in 0..<slots {
                        if let request = state.requests[slot] {
                            broken.append(request)
                            release(slot: Int32(slot), in: &state)
                        }
                    }
                    broken.append(contentsOf: state.queue.removeAll())
                }
                if !state.queue.isEmpty, !state.submitting, !state.freeSlots.isEmpty {
                    state.submitting = true
                    drain = true
                }
                return broken
            }

            for (request, result) in ready {
                resume(request, with: result, step: .completion, call: Driver.completionCall)
            }
            ready.removeAll(keepingCapacity: true)
            if case .broken(let errno) = outcome {
                for request in broken {
                    resume(request, with: .failure(errno), step: .completion, call: Driver.completionCall)
                }
            }
            if !retry.isEmpty {
                retry.withUnsafeBufferPointer { submit($0) }
                retry.removeAll(keepingCapacity: true)
            }
            if drain { drainQueue() }
        }

        driver.release()
        let waiters = state.withLock { state -> [UnsafeContinuation<Void, Never>] in
            state.finished = true
            defer { state.shutdownWaiters = [] }
            return state.shutdownWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    // MARK: Task executor

    /// Runs `job` on the completion thread: tasks that prefer this engine as their task executor
    /// (`withTaskExecutorPreference`) go on there when a sync completes, without a hop to another
    /// thread. Once the completion thread has ended, jobs go to the global concurrent executor, so
    /// none is ever dropped.
    func enqueue(_ job: consuming ExecutorJob) {
        let unowned = UnownedJob(job)
        let action = state.withLock { state -> JobAction in
            if state.executorClosed { return .forward }
            state.jobs.append(unowned)
            guard state.parked, !state.wakeRequested else { return .queued }
            state.wakeRequested = true
            return .wake
        }
        switch action {
        case .queued: break
        case .wake: driver.wake()
        case .forward: globalConcurrentExecutor.enqueue(ExecutorJob(unowned))
        }
    }

    // MARK: Shutdown

    /// Refuses new requests, lets the accepted ones complete, then releases the driver's
    /// resources and ends the completion thread; returns when all of that is done.
    func shutdown() async {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            if !beginShutdown(waiter: continuation) { continuation.resume() }
        }
    }

    /// Starts the shutdown without waiting for it (used by `deinit` of the backends).
    func beginShutdown() {
        _ = beginShutdown(waiter: nil)
    }

    /// Returns false when the shutdown has already finished (the waiter is not kept).
    private func beginShutdown(waiter: UnsafeContinuation<Void, Never>?) -> Bool {
        let (running, first) = state.withLock { state -> (Bool, Bool) in
            if state.finished { return (false, false) }
            if let waiter { state.shutdownWaiters.append(waiter) }
            defer { state.shuttingDown = true }
            return (true, !state.shuttingDown)
        }
        if first { driver.wake() }
        return running
    }

    // MARK: Introspection for tests

    /// Whether new requests are accepted (no shutdown has begun).
    var isAcceptingRequests: Bool {
        state.withLock { !$0.shuttingDown }
    }

    /// Requests that hold a slot or wait in the queue.
    var outstandingCount: Int {
        state.withLock { $0.inFlight + $0.queue.count }
    }
}
