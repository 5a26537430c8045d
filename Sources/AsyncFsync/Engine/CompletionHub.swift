// Linux (glibc) only: compiled out elsewhere and under ASYNC_FSYNC_PORTABLE (see docs/design.md, "The portable
// backend").
#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
import CAsyncFsync
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// What a ``CompletionHub`` needs of an engine. Every method is called on the hub's thread only.
protocol HubClient: AnyObject, Sendable {
    /// Takes the completions the system has posted and resumes their waiters; returns whether any
    /// were found. Must not block.
    func reapCompletions() -> Bool
    /// Submits the ready batches, unless another thread holds the submitter role.
    func submitReady()
    /// Frees the driver (nothing is outstanding any more), then calls `done` with the engine's
    /// `shutdown()` callers, possibly on another thread.
    func releaseDriver(then done: @escaping @Sendable ([UnsafeContinuation<Void, Never>]) -> Void)
    /// POSIX aio: appends the control blocks whose completion is awaited.
    func appendWatched(to list: inout [UnsafePointer<aiocb>?])
}

/// The one thread per backend kind that waits for completions, for every engine of that kind in
/// the process, and runs the tasks that prefer it as their executor.
///
/// - **Kernel AIO**: every request carries `IOCB_FLAG_RESFD` with the hub's eventfd, so one
///   blocking `read(2)` of the eventfd waits for the completions of every engine's context; the
///   hub then takes them from each context's ring in user space. A wake-up is a `write(2)` to the
///   same eventfd.
/// - **POSIX aio**: `aio_suspend(3)` on the control blocks of every engine plus one doorbell, an
///   `aio_read(3)` of the eventfd. One doorbell per process, so the hub holds one of glibc's
///   helper threads however many POSIX backends exist (glibc has 20 by default; a doorbell per
///   backend deadlocked the 21st backend).
///
/// Backends made with the live system table share the hub of their kind; a backend made with a
/// test's table gets a hub of its own (the table's ``SystemCalls/id``). The hub ends when its last
/// engine is released and is made again for the next backend.
///
/// Wake-ups follow one rule: whoever needs the thread to wake while it is parked sets
/// `wakePending` under the lock and counts itself in `wakersInFlight` until its `write(2)` returns;
/// the thread frees the eventfd only once no waker is in flight, so no write ever reaches a closed
/// (or reused) descriptor.
final class CompletionHub: TaskExecutor, @unchecked Sendable {
    enum Job {
        case task(UnownedJob)
        case serial(UnownedJob)
    }

    private struct State {
        var clients: [ObjectIdentifier: any HubClient] = [:]
        var clientsChanged = false
        var jobs: [Job] = []
        /// Engines to release, asked for by other threads.
        var releases: [any HubClient] = []
        /// Drivers being freed (``HubClient/releaseDriver(then:)`` has not called back yet).
        var releasesInProgress = 0
        /// `shutdown()` callers of the last engine: resumed once the hub's own resources are
        /// freed too, or, if another engine registered meanwhile, at once.
        var finalWaiters: [UnsafeContinuation<Void, Never>] = []
        var parked = false
        var wakePending = false
        var wakersInFlight = 0
        /// No more registrations, jobs go elsewhere: the thread is ending.
        var finishing = false
        /// Made at first use and kept: an actor holds its executor unowned.
        var serialExecutor: HubSerialExecutor?
    }

    let kind: BackendKind
    let system: SystemCalls
    private let state = Locked(State())
    private let eventDescriptor: CInt
    /// POSIX: the doorbell read and its buffer (hub thread only).
    private let doorbell: UnsafeMutablePointer<aiocb>?
    private let doorbellBuffer: UnsafeMutablePointer<UInt64>?
    @exclusivity(unchecked) private nonisolated(unsafe) var doorbellArmed = false
    /// Touched by the hub thread only: engines to submit for after the jobs, engines to release.
    @exclusivity(unchecked) private nonisolated(unsafe) var deferredSubmits: [any HubClient] = []
    @exclusivity(unchecked) private nonisolated(unsafe) var deferredReleases: [any HubClient] = []

    /// How long the POSIX hub sleeps while its doorbell cannot be armed (glibc out of resources).
    static var unarmedTimeout: timespec { timespec(tv_sec: 0, tv_nsec: 10_000_000) }
    /// How long the POSIX hub sleeps on requests in flight before it rings its own doorbell: the
    /// doorbell's read occupies one of glibc's helpers, and with a single helper (`aio_init(3)`)
    /// a request submitted while the hub was awake would wait behind it forever.
    static var starvationTimeout: timespec { timespec(tv_sec: 0, tv_nsec: 200_000_000) }
    /// The most control blocks one `aio_suspend(3)` is given. glibc puts two arrays of the list's
    /// length on the calling thread's stack (about 48 bytes an entry): the hub's engines together
    /// may have 2 × 65 536 requests in flight each, which would overflow the thread's stack. With
    /// more in flight the hub watches this many and looks again every ``cappedTimeout``; each look
    /// reaps every engine's completions (``HubClient/reapCompletions()`` reads every submitted
    /// request's status), watched or not.
    static let maxWatched = 4096
    /// How long the POSIX hub waits when it watches only ``maxWatched`` of its requests.
    static var cappedTimeout: timespec { timespec(tv_sec: 0, tv_nsec: 1_000_000) }
    /// Rounds of ``cappedTimeout`` after which the hub frees glibc's helper from the doorbell's
    /// read, as one ``starvationTimeout`` would (200 × 1 ms); sooner when the rounds, which scan
    /// every request in flight, have taken ``starvationTimeout`` already.
    static let cappedRoundsPerStarvation = 200

    // MARK: The hubs of the process

    private struct RegistryKey: Hashable {
        var kind: BackendKind
        var system: UInt64
    }

    private static let registry = Locked<[RegistryKey: CompletionHub]>([:])

    /// Registers `client` with the running hub of `kind` for `system`, starting one if needed.
    static func register(_ client: some HubClient, kind: BackendKind, system: SystemCalls) throws(AsyncSyncError) -> CompletionHub {
        let key = RegistryKey(kind: kind, system: system.id)
        let made = registry.withLock { hubs -> Result<CompletionHub, AsyncSyncError> in
            if let hub = hubs[key], hub.add(client) { return .success(hub) }
            do throws(AsyncSyncError) {
                let hub = try CompletionHub(kind: kind, system: system, first: client)
                hubs[key] = hub
                return .success(hub)
            } catch {
                return .failure(error)
            }
        }
        return try made.get()
    }

    /// Starts the thread with `first` registered, so that it never sees an empty hub at its start.
    private init(kind: BackendKind, system: SystemCalls, first: some HubClient) throws(AsyncSyncError) {
        self.kind = kind
        self.system = system
        switch system.eventfd() {
        case .success(let fd): eventDescriptor = fd
        case .failure(let errno): throw .setup(backend: kind, errno: errno, systemCall: "eventfd")
        }
        if kind == .posix {
            let control = UnsafeMutablePointer<aiocb>.allocate(capacity: 1)
            control.initialize(to: aiocb())
            let buffer = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
            buffer.initialize(to: 0)
            doorbell = control
            doorbellBuffer = buffer
        } else {
            doorbell = nil
            doorbellBuffer = nil
        }
        if kind == .posix {
            armDoorbell()
            guard doorbellArmed else {
                freeResources()
                throw .setup(backend: kind, errno: .resourceTemporarilyUnavailable, systemCall: "aio_read",
                             message: "glibc cannot queue a request (out of threads or memory)")
            }
        }
        _ = add(first)
        let name = "asyncfsync-\(kind.rawValue)"
        if case .failure(let errno) = system.startThread(name, { [self] in self.run() }) {
            releaseDoorbell()
            freeResources()
            throw .setup(backend: kind, errno: errno, systemCall: "pthread_create",
                         message: "cannot start the completion thread")
        }
    }

    /// Adds a client unless the hub is ending.
    private func add(_ client: some HubClient) -> Bool {
        state.withLock { state in
            guard !state.finishing else { return false }
            state.clients[ObjectIdentifier(client)] = client
            state.clientsChanged = true
            return true
        }
    }

    /// The eventfd that kernel AIO requests signal (`IOCB_FLAG_RESFD`).
    var completionDescriptor: CInt { eventDescriptor }

    /// Whether the caller runs on this hub's thread.
    @inline(__always)
    var isCurrent: Bool {
        casyncfsync_thread_marker() == Unmanaged.passUnretained(self).toOpaque()
    }

    // MARK: Requests from engines

    /// `client` was submitted to while its completion is awaited on a list (POSIX): the thread
    /// must look at the list again.
    func listChanged() {
        wakeIfParked()
    }

    /// `client` has ready batches that a task running on this thread queued: submit them after
    /// the jobs (hub thread only).
    func deferSubmission(_ client: any HubClient) {
        if !deferredSubmits.contains(where: { $0 === client }) { deferredSubmits.append(client) }
    }

    /// `client`'s drain has ended: free its driver on the hub thread.
    func requestRelease(_ client: any HubClient) {
        if isCurrent {
            deferredReleases.append(client)
            return
        }
        let wake = state.withLock { state -> Bool in
            state.releases.append(client)
            return claimWake(&state)
        }
        if wake { ringDoorbell() }
    }

    // MARK: Executors

    /// Runs `job` on the hub's thread; after the hub has ended, on the global concurrent executor.
    func enqueue(_ job: consuming ExecutorJob) {
        enqueue(.task(UnownedJob(job)))
    }

    /// The serial executor on this thread (one per hub). A hub that made one is kept for the life
    /// of the process (it is small, and an actor may still hold its executor unowned after the
    /// last backend is gone; its jobs then run on the executor's lane).
    var serialExecutor: HubSerialExecutor {
        state.withLock { state in
            if let executor = state.serialExecutor { return executor }
            let executor = HubSerialExecutor(hub: self)
            state.serialExecutor = executor
            Self.keptForSerialExecutors.withLock { $0.append(self) }
            return executor
        }
    }

    /// Hubs whose serial executor was handed out (see ``serialExecutor``).
    private static let keptForSerialExecutors = Locked<[CompletionHub]>([])

    fileprivate func enqueue(_ job: Job) {
        enum Action { case queued, wake, forward }
        let onHub = isCurrent
        let action = state.withLock { state -> Action in
            if state.finishing { return .forward }
            state.jobs.append(job)
            return !onHub && claimWake(&state) ? .wake : .queued
        }
        switch action {
        case .queued: break
        case .wake: ringDoorbell()
        case .forward: forward(job)
        }
    }

    /// After the hub has ended: task jobs go to the global concurrent executor, serial jobs to
    /// the serial executor's lane (every serial job enqueued from then on goes there too, in order,
    /// because the hub had no job left when it ended).
    private func forward(_ job: Job) {
        switch job {
        case .task(let job): globalConcurrentExecutor.enqueue(ExecutorJob(job))
        case .serial(let job):
            let executor = serialExecutor
            executor.lane.enqueue(job, for: executor)
        }
    }

    // MARK: Wake-ups

    /// Under the lock: whether the caller must wake the parked thread; if so it is counted as a
    /// waker in flight and must call ``ringDoorbell()``.
    private func claimWake(_ state: inout State) -> Bool {
        guard state.parked, !state.wakePending, !state.finishing else { return false }
        state.wakePending = true
        state.wakersInFlight += 1
        return true
    }

    private func wakeIfParked() {
        if state.withLock({ claimWake(&$0) }) { ringDoorbell() }
    }

    /// Writes to the eventfd (a claimed wake-up), then stops counting as a waker.
    private func ringDoorbell() {
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { system.write(eventDescriptor, $0.baseAddress!, $0.count) }
        state.withLock { $0.wakersInFlight -= 1 }
    }

    // MARK: The thread

    private func run() {
        casyncfsync_set_thread_marker(Unmanaged.passUnretained(self).toOpaque())
        var clients: [any HubClient] = []
        var jobs: [Job] = []
        var releases: [any HubClient] = []
        var reaped: [any HubClient] = []
        var submits: [any HubClient] = []
        let taskExecutor = asUnownedTaskExecutor()

        while true {
            // Completions first: the tasks they resume may run here next.
            for client in clients where client.reapCompletions() { reaped.append(client) }

            enum Step { case work, park, finish }
            var resumeNow: [UnsafeContinuation<Void, Never>] = []
            let step = state.withLock { state -> Step in
                swap(&jobs, &state.jobs)
                releases.append(contentsOf: state.releases)
                state.releases.removeAll(keepingCapacity: true)
                // A client added since the reap above may have completions already (the eventfd
                // read that woke this thread consumed their signal): reap before parking.
                let newClients = state.clientsChanged
                if state.clientsChanged {
                    clients = Array(state.clients.values)
                    state.clientsChanged = false
                }
                if !state.clients.isEmpty, !state.finalWaiters.isEmpty {
                    swap(&resumeNow, &state.finalWaiters)  // a new engine keeps the hub: no reason to wait
                }
                if state.clients.isEmpty, state.releasesInProgress == 0, releases.isEmpty, deferredReleases.isEmpty {
                    // The last engine is gone. Jobs still queued (a task that keeps running here)
                    // go elsewhere and do not hold the end up; serial jobs reach their lane under
                    // this lock, before any job enqueued after `finishing`, so their order holds.
                    state.finishing = true
                    if let serial = state.serialExecutor {
                        for case .serial(let job) in jobs { serial.lane.enqueue(job, for: serial) }
                    }
                    return .finish
                }
                let idle = jobs.isEmpty && releases.isEmpty && reaped.isEmpty
                    && deferredReleases.isEmpty && deferredSubmits.isEmpty && !newClients
                if idle {
                    state.parked = true
                    state.wakePending = false
                    return .park
                }
                return .work
            }

            for waiter in resumeNow { waiter.resume() }
            switch step {
            case .park:
                wait(clients)
                state.withLock { $0.parked = false }
            case .work:
                immediateReturns = 0  // progress: the run of fruitless wake-ups (suspendOnList) ends
                for job in jobs {
                    switch job {
                    case .task(let job): job.runSynchronously(on: taskExecutor)
                    case .serial(let job): job.runSynchronously(on: serialExecutor.asUnownedSerialExecutor())
                    }
                }
                jobs.removeAll(keepingCapacity: true)
                // The requests of every task resumed or run in this round go out together.
                for client in reaped where !deferredSubmits.contains(where: { $0 === client }) {
                    deferredSubmits.append(client)
                }
                reaped.removeAll(keepingCapacity: true)
                swap(&submits, &deferredSubmits)  // both keep their storage: nothing allocated
                for client in submits { client.submitReady() }
                submits.removeAll(keepingCapacity: true)
                releases.append(contentsOf: deferredReleases)
                deferredReleases.removeAll(keepingCapacity: true)
                for client in releases {
                    clients.removeAll { $0 === client }  // never reaped again
                    state.withLock { state in
                        state.clients[ObjectIdentifier(client)] = nil
                        state.clientsChanged = true
                        state.releasesInProgress += 1
                    }
                    client.releaseDriver(then: { [self] waiters in self.driverReleased(waiters) })
                }
                releases.removeAll(keepingCapacity: true)
            case .finish:
                for case .task(let job) in jobs { globalConcurrentExecutor.enqueue(ExecutorJob(job)) }
                finish()
                return
            }
        }
    }

    /// A client's driver has been freed: its `shutdown()` callers go on, unless it was the last
    /// client, whose callers wait until the hub has freed its own resources.
    private func driverReleased(_ waiters: [UnsafeContinuation<Void, Never>]) {
        let (resume, wake) = state.withLock { state -> (Bool, Bool) in
            state.releasesInProgress -= 1
            guard state.clients.isEmpty, state.releasesInProgress == 0 else { return (true, false) }
            state.finalWaiters += waiters
            return (false, claimWake(&state))
        }
        if resume { for waiter in waiters { waiter.resume() } }
        if wake { ringDoorbell() }
    }

    /// Blocks until a completion or a wake-up.
    private func wait(_ clients: [any HubClient]) {
        switch kind {
        case .libaio:
            // Every completion and every wake-up adds to the counter; a read takes them all.
            _ = system.eventfdRead(eventDescriptor)
        case .posix, .portable:  // no hub is made for .portable (it has no completion thread)
            suspendOnList(clients)
        default:
            preconditionFailure("no completion hub is made for \(kind) backends")
        }
    }

    @exclusivity(unchecked) private nonisolated(unsafe) var watchList: [UnsafePointer<aiocb>?] = []
    /// Rounds in a row in which `aio_suspend(3)` returned without a timeout (hub thread only).
    @exclusivity(unchecked) private nonisolated(unsafe) var immediateReturns = 0
    /// Rounds in a row that timed out with the list capped at ``maxWatched`` (hub thread only).
    @exclusivity(unchecked) private nonisolated(unsafe) var cappedTimeouts = 0
    /// When the first of those rounds timed out (hub thread only).
    @exclusivity(unchecked) private nonisolated(unsafe) var cappedSince: ContinuousClock.Instant?

    /// POSIX: `aio_suspend(3)` on every engine's submitted control blocks plus the doorbell.
    private func suspendOnList(_ clients: [any HubClient]) {
        watchList.removeAll(keepingCapacity: true)
        for client in clients { client.appendWatched(to: &watchList) }
        // Too many in flight for one aio_suspend(3): watch the first ones, look again soon.
        let capped = watchList.count > Self.maxWatched
        if capped { watchList.removeSubrange(Self.maxWatched...) } else { (cappedTimeouts, cappedSince) = (0, nil) }
        let watching = watchList.count
        if doorbellArmed {
            watchList.append(UnsafePointer(doorbell!))
        }
        if watchList.isEmpty {
            system_sleep(Self.unarmedTimeout)  // nothing to wait on: look again soon
        } else if doorbellArmed && watching == 0 {
            _ = system.aioSuspend(watchList, CInt(watchList.count), nil)
        } else if doorbellArmed {
            var timeout = capped ? Self.cappedTimeout : Self.starvationTimeout
            let suspended = system.aioSuspend(watchList, CInt(watchList.count), &timeout)
            if case .failure(.resourceTemporarilyUnavailable) = suspended {
                // Timed out with requests in flight: free glibc's helper from the doorbell's read
                // (capped: once the short rounds add up to a starvation timeout).
                // A round that scans many requests lasts longer than its timeout: the starvation
                // timeout is also measured, so the ring comes after 200 ms at most.
                var ring = !capped
                if capped {
                    cappedTimeouts += 1
                    let now = ContinuousClock.now
                    let since = cappedSince ?? now
                    cappedSince = since
                    ring = cappedTimeouts >= Self.cappedRoundsPerStarvation
                        || since.duration(to: now) >= .nanoseconds(Int64(Self.starvationTimeout.tv_nsec))
                }
                if ring {
                    (cappedTimeouts, cappedSince) = (0, nil)
                    var one: UInt64 = 1
                    _ = withUnsafeBytes(of: &one) { system.write(eventDescriptor, $0.baseAddress!, $0.count) }
                }
                immediateReturns = 0
            } else if case .success = suspended {
                // A watched request that reads as done while its engine's look finds nothing to take
                // (a test's table holding a completion back) makes aio_suspend(3) return at once,
                // round after round, and the timeout above never comes: after a run of such rounds,
                // free the helper as a timeout would and pause for a millisecond, so the thread
                // neither spins nor starves a request queued behind the doorbell's read.
                immediateReturns += 1
                if immediateReturns >= 64 {
                    immediateReturns = 0
                    var one: UInt64 = 1
                    _ = withUnsafeBytes(of: &one) { system.write(eventDescriptor, $0.baseAddress!, $0.count) }
                    system_sleep(timespec(tv_sec: 0, tv_nsec: 1_000_000))
                }
            }
        } else {
            var timeout = capped ? Self.cappedTimeout : Self.unarmedTimeout
            _ = system.aioSuspend(watchList, CInt(watchList.count), &timeout)
        }
        // The doorbell rang (or was never armed): take its read and arm it again.
        if doorbellArmed, system.aioError(doorbell!) != .inProgress {
            _ = system.aioReturn(doorbell!)
            doorbellArmed = false
        }
        if !doorbellArmed { armDoorbell() }
    }

    private func armDoorbell() {
        guard let doorbell, let doorbellBuffer else { return }
        casyncfsync_aiocb_prep_read(doorbell, eventDescriptor, doorbellBuffer, MemoryLayout<UInt64>.size)
        doorbellArmed = (try? system.aioRead(doorbell).get()) != nil
    }

    /// Lets a pending doorbell read finish, so that glibc no longer uses the eventfd or the aiocb.
    private func releaseDoorbell() {
        guard doorbellArmed, let doorbell else { return }
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { system.write(eventDescriptor, $0.baseAddress!, $0.count) }
        var pointer: UnsafePointer<aiocb>? = UnsafePointer(doorbell)
        while system.aioError(doorbell) == .inProgress {
            _ = system.aioSuspend(&pointer, 1, nil)
        }
        _ = system.aioReturn(doorbell)
        doorbellArmed = false
    }

    private func freeResources() {
        _ = system.close(eventDescriptor)
        doorbell?.deallocate()
        doorbellBuffer?.deallocate()
    }

    /// The last engine is gone: jobs go elsewhere, and once no waker is in flight the eventfd and
    /// the doorbell are freed.
    private func finish() {
        Self.registry.withLock { hubs in
            let key = RegistryKey(kind: kind, system: system.id)
            if hubs[key] === self { hubs[key] = nil }
        }
        // The thread decided to end with no job queued, under the lock that sets `finishing`: every
        // job from then on is forwarded by enqueue, so nothing is left here and no order is lost.
        while state.withLock({ $0.wakersInFlight }) > 0 { system_yield() }
        releaseDoorbell()
        freeResources()
        let waiters = state.withLock { state -> [UnsafeContinuation<Void, Never>] in
            defer { state.finalWaiters = [] }
            return state.finalWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    // MARK: Introspection for tests

    /// Whether a hub of `kind` for `system` is registered (it is removed as it ends).
    static func isRunning(kind: BackendKind, system: SystemCalls) -> Bool {
        registry.withLock { $0[RegistryKey(kind: kind, system: system.id)] != nil }
    }

    /// Engines registered (tests).
    var clientCount: Int { state.withLock { $0.clients.count } }
}

/// The serial executor on a hub's thread: an actor whose `unownedExecutor` is this runs on the
/// thread where syncs complete, so it goes on after each sync without a hop. After the hub has
/// ended, the actor's jobs run one at a time on a thread of their own (``SerialLane``): a serial
/// executor never runs two jobs at once.
final class HubSerialExecutor: SerialExecutor, @unchecked Sendable {
    let hub: CompletionHub
    let lane = SerialLane()

    init(hub: CompletionHub) {
        self.hub = hub
    }

    func enqueue(_ job: consuming ExecutorJob) {
        hub.enqueue(.serial(UnownedJob(job)))
    }

    func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(ordinary: self)
    }

    func checkIsolated() {
        precondition(hub.isCurrent || lane.isCurrent, "not on the backend's completion thread")
    }
}

/// Runs the jobs of a serial executor one at a time on a short-lived thread of its own, once the
/// hub it belonged to has ended.
final class SerialLane: @unchecked Sendable {
    private struct State {
        var jobs: [UnownedJob] = []
        var running = false
    }
    private let state = Locked(State())

    @inline(__always)
    var isCurrent: Bool {
        casyncfsync_thread_marker() == Unmanaged.passUnretained(self).toOpaque()
    }

    func enqueue(_ job: UnownedJob, for executor: HubSerialExecutor) {
        let start = state.withLock { state -> Bool in
            state.jobs.append(job)
            guard !state.running else { return false }
            state.running = true
            return true
        }
        guard start else { return }
        if case .failure = system_start_thread(name: "asyncfsync-lane", { [self] in self.drain(executor) }) {
            drain(executor)  // no thread: run them here, still one at a time (the role is held)
        }
    }

    private func drain(_ executor: HubSerialExecutor) {
        let previous = casyncfsync_thread_marker()
        casyncfsync_set_thread_marker(Unmanaged.passUnretained(self).toOpaque())
        defer { casyncfsync_set_thread_marker(previous) }
        let serial = executor.asUnownedSerialExecutor()
        while true {
            let jobs = state.withLock { state -> [UnownedJob] in
                defer { state.jobs.removeAll() }
                if state.jobs.isEmpty { state.running = false }
                return state.jobs
            }
            if jobs.isEmpty { return }
            for job in jobs { job.runSynchronously(on: serial) }
        }
    }
}
#endif  // os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
