/// The queue and the life of a ``PortableBackend``'s threads, as a plain value: each event returns
/// what the caller must do, so that the rules are tested without threads (PortableStateTests).
///
/// Rules:
/// - **Queue.** Requests run in arrival order, each on one thread with a sync of its own that
///   starts after it arrived (no sharing, so no request is acknowledged by an earlier sync).
/// - **Cancellation.** A request still queued when its task is cancelled leaves the queue and is
///   given back (its caller throws `CancellationError`); once a thread took it, it runs and its
///   result is reported.
/// - **Life.** `running` → (``shutdown(_:)``) `draining`: new requests are refused, queued ones
///   still run; a thread that finds the queue empty while draining leaves its loop → `stopped`
///   when the last one has left: the shutdown's waiters are returned, once.
///
/// `Job` is a queued request (its continuation, in the backend), `Waiter` a caller of shutdown.
struct PortableState<Job, Waiter> {
    enum Lifecycle: Equatable {
        case running, draining, stopped
    }

    private(set) var lifecycle = Lifecycle.running
    /// Queued requests, oldest first, from `head` on (taken ones are dropped in bulk).
    private var queue: [(id: UInt64, job: Job)] = []
    private var head = 0
    /// Threads in their loop: counted from before they are started until they leave it.
    private(set) var liveThreads = 0
    /// Threads running a request now.
    private(set) var busyThreads = 0
    private var shutdownWaiters: [Waiter] = []

    /// Requests waiting for a thread.
    var queuedCount: Int { queue.count - head }

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
        /// Run this request's sync, then call ``finished()``.
        case run(id: UInt64, Job)
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
            return .run(id: entry.id, entry.job)
        }
        guard lifecycle != .running else { return .wait }
        return .exit(leave())
    }

    /// A thread finished the request it took with ``next()``.
    mutating func finished() {
        precondition(busyThreads > 0, "finished() without a request taken")
        busyThreads -= 1
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

    /// Returned by ``submit(id:_:)``.
    enum Submit {
        /// Queued: wake a waiting thread.
        case queued
        /// The backend is shutting down or stopped: refuse it (`AsyncSyncError.Code.shutDown`).
        case refused(Job)
    }

    /// A request arrived; `id` is unique for the backend (its cancellation names it).
    mutating func submit(id: UInt64, _ job: Job) -> Submit {
        guard lifecycle == .running else { return .refused(job) }
        queue.append((id, job))
        return .queued
    }

    /// The task of request `id` was cancelled: the request if it was still queued (it must now
    /// throw `CancellationError`), nil if a thread took it already (or it was never queued).
    mutating func cancel(_ id: UInt64) -> Job? {
        guard let index = queue[head...].firstIndex(where: { $0.id == id }) else { return nil }
        return queue.remove(at: index).job
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
