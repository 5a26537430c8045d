/// The queue and the life of a ``PortableBackend``'s threads, as a plain value: each event returns
/// what the caller must do, so that the rules are tested without threads (PortableStateTests) and
/// explored exhaustively (PortableModel).
///
/// Rules:
/// - **Queue.** Requests run in arrival order, each on one thread with a sync of its own that
///   starts after it arrived (no sharing, so no request is acknowledged by an earlier sync).
/// - **A sync covers the writes accepted before it** (the seeds' contract, `io_fsync(3)`,
///   `aio_fsync(3)`). Every request gets a sequence number as it is accepted. A write (or the
///   write part of a durable write) is *pending* on its descriptor from its acceptance until its
///   thread reports it complete (``finished(_:)``, ``durableWriteWritten(_:job:succeeded:)``), or
///   until it leaves the queue cancelled (nothing of it was written). A sync accepted while writes
///   of its descriptor are pending is *held* (it waits for no thread and is not run) until every
///   pending write of its descriptor with a smaller sequence number has completed; it is then
///   released into the queue behind what is queued then. Writes accepted after the sync have larger
///   numbers and never hold it, so a stream of later writes cannot starve it.
/// - **Durable writes.** The write part runs like a write; then the same thread runs the sync part
///   at once, unless writes of the descriptor accepted before the durable write are still pending:
///   then the sync part is held like a sync accepted when the durable write was, and released into
///   the queue as ``Work/durableSync``. Either way it starts after the write part completed.
/// - **Cancellation.** A request still queued or held when its task is cancelled leaves the
///   machine and is given back (its caller throws `CancellationError`); a cancelled write releases
///   the syncs it held. Once a thread took a request, it runs and its result is reported; the sync
///   part of a durable write (its write part was taken) is never given back.
/// - **Life.** `running` → (``shutdown(_:)``) `draining`: new requests are refused, queued and
///   held ones still run; a thread that finds the queue empty while draining leaves its loop →
///   `stopped` when the last one has left: the shutdown's waiters are returned, once. (A held sync
///   waits for a pending write, which is queued or runs on a live thread; that thread releases the
///   sync and takes it from the queue before it may leave.)
///
/// `Job` is a queued request (its continuation, in the backend), `Waiter` a caller of shutdown.
struct PortableState<Job, Waiter> {
    enum Lifecycle: Equatable {
        case running, draining, stopped
    }

    /// What a request asks for.
    enum Kind: Hashable, Sendable {
        /// `fsync`/`fdatasync` of the descriptor, after the writes accepted before it.
        case sync
        /// A write of the descriptor.
        case write
        /// A write followed by a sync of the descriptor.
        case durableWrite
    }

    /// The part of a request a thread runs.
    enum Work: Hashable, Sendable {
        /// A sync request's sync; then ``finished(_:)``.
        case sync
        /// A write; then ``finished(_:)``.
        case write
        /// A durable write's write part; then ``durableWriteWritten(_:job:succeeded:)``.
        case durableWrite
        /// The sync part of a durable write whose sync was held; then ``finished(_:)``.
        case durableSync
    }

    /// What a thread is handed with a request, and hands back when it reports on it.
    struct Ticket: Hashable, Sendable {
        var id: UInt64
        /// Its place in the order of acceptance (of every descriptor).
        var sequence: UInt64
        var descriptor: CInt
        var work: Work
    }

    fileprivate struct Entry {
        var ticket: Ticket
        var job: Job
    }

    private(set) var lifecycle = Lifecycle.running
    /// Requests waiting for a thread, oldest first, from `head` on (taken ones are dropped in bulk).
    private var queue: [Entry] = []
    private var head = 0
    /// Per descriptor, the sequence numbers of its pending writes, ascending (no empty arrays).
    private var pendingWrites: [CInt: [UInt64]] = [:]
    /// Per descriptor, its held syncs, by ascending sequence number (no empty arrays).
    private var held: [CInt: [Entry]] = [:]
    private(set) var heldCount = 0
    private var nextSequence: UInt64 = 0
    /// Threads in their loop: counted from before they are started until they leave it.
    private(set) var liveThreads = 0
    /// Threads running a request now.
    private(set) var busyThreads = 0
    private var shutdownWaiters: [Waiter] = []

    /// Requests waiting for a thread (not the held syncs).
    var queuedCount: Int { queue.count - head }

    /// Writes of `descriptor` accepted and not yet complete (tests).
    func pendingWriteCount(of descriptor: CInt) -> Int { pendingWrites[descriptor]?.count ?? 0 }

    /// Whether request `id`'s sync is held for earlier writes (tests and the model).
    func isHeld(_ id: UInt64) -> Bool {
        held.values.contains { $0.contains { $0.ticket.id == id } }
    }

    /// Whether request `id` waits in the queue for a thread (the model).
    func isQueued(_ id: UInt64) -> Bool {
        queue[head...].contains { $0.ticket.id == id }
    }

    // MARK: Threads

    /// A thread is about to be started: it counts as live from now on.
    mutating func threadStarting() {
        liveThreads += 1
    }

    /// Returned when a thread leaves (or never entered) its loop.
    enum Exit {
        /// Other threads are still live.
        case none
        /// It was the last live thread of a shutdown: resume these waiters (once).
        case stopped([Waiter])
    }

    /// Starting the thread announced by ``threadStarting()`` failed.
    mutating func threadDidNotStart() -> Exit {
        leave()
    }

    /// What a thread does next.
    enum Next {
        /// Run this request's `ticket.work`, then report it as that work says.
        case run(Ticket, Job)
        /// Nothing to do: wait for a wake-up, then ask again.
        case wait
        /// Leave the loop (the backend is draining and the queue is empty).
        case exit(Exit)
    }

    /// Asked by a thread whenever it is free.
    mutating func next() -> Next {
        if head < queue.count {
            let entry = queue[head]
            head += 1
            if head == queue.count || head >= 64 && head * 2 >= queue.count {
                queue.removeFirst(head)
                head = 0
            }
            busyThreads += 1
            return .run(entry.ticket, entry.job)
        }
        guard lifecycle != .running else { return .wait }
        return .exit(leave())
    }

    /// A thread finished the ``Work/sync``, ``Work/write`` or ``Work/durableSync`` it took.
    /// Returns how many held syncs a completed write released into the queue: wake that many
    /// waiting threads (before resuming the request's caller).
    mutating func finished(_ ticket: Ticket) -> Int {
        precondition(busyThreads > 0, "finished(_:) without a request taken")
        precondition(ticket.work != .durableWrite, "a durable write's write part reports durableWriteWritten")
        busyThreads -= 1
        return ticket.work == .write ? writeCompleted(ticket) : 0
    }

    /// Returned by ``durableWriteWritten(_:job:succeeded:)``; `wake` as for ``finished(_:)``.
    enum AfterWrite {
        /// Run the sync part now on this thread (`ticket.work` is ``Work/durableSync``), then
        /// ``finished(_:)`` with this ticket.
        case sync(Ticket, wake: Int)
        /// The write failed: the request is over (resume its caller with the write's error).
        case done(wake: Int)
        /// The sync part waits for earlier writes of the descriptor; the machine keeps `job` and
        /// hands it to a thread later as ``Work/durableSync``. The thread must not touch it again.
        case held(wake: Int)
    }

    /// A thread finished the write part of a durable write (`ticket.work` ``Work/durableWrite``);
    /// `job` is the request, given back so that its sync part can be held.
    mutating func durableWriteWritten(_ ticket: Ticket, job: Job, succeeded: Bool) -> AfterWrite {
        precondition(busyThreads > 0, "durableWriteWritten(_:) without a request taken")
        precondition(ticket.work == .durableWrite, "only a durable write's write part")
        let wake = writeCompleted(ticket)
        guard succeeded else {
            busyThreads -= 1
            return .done(wake: wake)
        }
        var sync = ticket
        sync.work = .durableSync
        if let first = pendingWrites[ticket.descriptor]?.first, first < ticket.sequence {
            busyThreads -= 1
            hold(Entry(ticket: sync, job: job))
            return .held(wake: wake)
        }
        return .sync(sync, wake: wake)
    }

    /// The write `ticket` is complete (written, failed, or cancelled while queued): it no longer
    /// holds anything; the held syncs of its descriptor that no earlier write holds now are
    /// queued. Returns how many.
    private mutating func writeCompleted(_ ticket: Ticket) -> Int {
        let descriptor = ticket.descriptor
        guard var pending = pendingWrites[descriptor], let index = pending.firstIndex(of: ticket.sequence) else {
            preconditionFailure("a write completed that was not pending")
        }
        pending.remove(at: index)
        pendingWrites[descriptor] = pending.isEmpty ? nil : pending
        guard var waiting = held[descriptor] else { return 0 }
        let bound = pending.first ?? UInt64.max
        let released = waiting.prefix { $0.ticket.sequence < bound }.count
        guard released > 0 else { return 0 }
        queue.append(contentsOf: waiting[..<released])
        waiting.removeFirst(released)
        held[descriptor] = waiting.isEmpty ? nil : waiting
        heldCount -= released
        return released
    }

    /// Keeps a sync until the earlier writes of its descriptor have completed, in sequence order.
    private mutating func hold(_ entry: Entry) {
        var waiting = held[entry.ticket.descriptor] ?? []
        let index = waiting.firstIndex { $0.ticket.sequence > entry.ticket.sequence } ?? waiting.endIndex
        waiting.insert(entry, at: index)
        held[entry.ticket.descriptor] = waiting
        heldCount += 1
    }

    private mutating func leave() -> Exit {
        precondition(liveThreads > 0, "a thread left that was never counted")
        liveThreads -= 1
        guard liveThreads == 0, lifecycle != .running else { return .none }
        lifecycle = .stopped
        defer { shutdownWaiters = [] }
        return .stopped(shutdownWaiters)
    }

    // MARK: Requests

    /// Returned by ``submit(id:descriptor:kind:_:)``.
    enum Submit {
        /// Queued: wake a waiting thread.
        case queued
        /// A sync held for earlier writes of its descriptor: no thread to wake now.
        case held
        /// The backend is shutting down or stopped: refuse it (`AsyncSyncError.Code.shutDown`).
        case refused(Job)
    }

    /// A request arrived; `id` is unique for the backend (its cancellation names it).
    mutating func submit(id: UInt64, descriptor: CInt, kind: Kind, _ job: Job) -> Submit {
        guard lifecycle == .running else { return .refused(job) }
        let sequence = nextSequence
        nextSequence += 1
        switch kind {
        case .sync:
            let entry = Entry(ticket: Ticket(id: id, sequence: sequence, descriptor: descriptor, work: .sync), job: job)
            if pendingWrites[descriptor] != nil {  // each was accepted before this sync
                hold(entry)
                return .held
            }
            queue.append(entry)
        case .write, .durableWrite:
            pendingWrites[descriptor, default: []].append(sequence)
            let work: Work = kind == .write ? .write : .durableWrite
            queue.append(Entry(ticket: Ticket(id: id, sequence: sequence, descriptor: descriptor, work: work), job: job))
        }
        return .queued
    }

    /// Returned by ``cancel(_:)``.
    struct Cancelled {
        /// The request, which must now throw `CancellationError`.
        var job: Job
        /// Held syncs a cancelled write released: wake that many waiting threads.
        var wake: Int
    }

    /// The task of request `id` was cancelled: the request if it was still queued or held, nil if
    /// a thread took it already (or it was never queued).
    mutating func cancel(_ id: UInt64) -> Cancelled? {
        if let index = queue[head...].firstIndex(where: { $0.ticket.id == id && $0.ticket.work != .durableSync }) {
            let entry = queue.remove(at: index)
            let wake = entry.ticket.work == .sync ? 0 : writeCompleted(entry.ticket)
            return Cancelled(job: entry.job, wake: wake)
        }
        guard heldCount > 0 else { return nil }
        for (descriptor, var waiting) in held {
            guard let index = waiting.firstIndex(where: { $0.ticket.id == id && $0.ticket.work == .sync }) else { continue }
            let entry = waiting.remove(at: index)
            held[descriptor] = waiting.isEmpty ? nil : waiting
            heldCount -= 1
            return Cancelled(job: entry.job, wake: 0)
        }
        return nil
    }

    /// Whether new requests are accepted.
    var isAccepting: Bool { lifecycle == .running }

    // MARK: Shutdown

    /// Returned by ``shutdown(_:)``.
    enum Shutdown {
        /// Wait (the waiter is kept and returned by the last thread's exit); with `wakeAll`, wake
        /// every waiting thread so that it sees the drain.
        case wait(wakeAll: Bool)
        /// Everything has stopped already: the waiter returns at once.
        case done(Waiter?)
    }

    /// Stops accepting requests; `waiter` (nil: nobody waits, as in `deinit`) is resumed once the
    /// queue is empty and every thread has left its loop.
    mutating func shutdown(_ waiter: Waiter?) -> Shutdown {
        switch lifecycle {
        case .stopped:
            return .done(waiter)
        case .running where liveThreads == 0:
            lifecycle = .stopped
            return .done(waiter)
        case .running, .draining:
            let first = lifecycle == .running
            lifecycle = .draining
            if let waiter { shutdownWaiters.append(waiter) }
            return .wait(wakeAll: first)
        }
    }
}

// The model check (PortableModel) keeps states in a set: two states are the same when they would
// answer every event alike (the queue's taken prefix, dropped lazily, does not count).
extension PortableState.Entry: Equatable, Hashable where Job: Hashable, Waiter: Hashable {}

extension PortableState: Equatable, Hashable where Job: Hashable, Waiter: Hashable {
    static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.lifecycle == rhs.lifecycle && lhs.queue[lhs.head...].elementsEqual(rhs.queue[rhs.head...])
            && lhs.pendingWrites == rhs.pendingWrites && lhs.held == rhs.held && lhs.heldCount == rhs.heldCount
            && lhs.nextSequence == rhs.nextSequence && lhs.liveThreads == rhs.liveThreads
            && lhs.busyThreads == rhs.busyThreads && lhs.shutdownWaiters == rhs.shutdownWaiters
    }

    func hash(into hasher: inout Hasher) {
        hasher.combine(lifecycle)
        for entry in queue[head...] { hasher.combine(entry) }
        hasher.combine(pendingWrites)
        hasher.combine(held)
        hasher.combine(nextSequence)
        hasher.combine(liveThreads)
        hasher.combine(busyThreads)
        hasher.combine(shutdownWaiters)
    }
}
