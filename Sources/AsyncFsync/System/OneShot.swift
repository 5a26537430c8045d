#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif canImport(Musl)
import Musl
#endif

/// A value delivered once by one thread and awaited, with a deadline, by another: synchronously
/// (a condition variable) or asynchronously (a continuation, without blocking a thread).
///
/// Used to bound work that may block for ever in the kernel (a probe on a stuck file system): the
/// work runs on a thread of its own, and the caller stops waiting at the deadline.
final class OneShot<Value: Sendable>: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>
    private var value: Value?
    /// The async waiters, each under an id of its own (several tasks may wait for one value).
    private var continuations: [UInt64: UnsafeContinuation<Value?, Never>] = [:]
    private var nextWaiter: UInt64 = 0
    /// Deadline threads still waiting (``deadline(_:)``), and those whose task was cancelled.
    private var runningDeadlines: Set<UInt64> = []
    private var cancelledDeadlines: Set<UInt64> = []

    init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        condition = .allocate(capacity: 1)
        condition.initialize(to: pthread_cond_t())
        #if canImport(Darwin)
        pthread_cond_init(condition, nil)  // Darwin: timed waits take a relative time (below)
        #else
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
        #endif
    }

    deinit {
        pthread_cond_destroy(condition)
        condition.deallocate()
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Delivers the value; later calls are ignored.
    func fulfill(_ newValue: Value) {
        pthread_mutex_lock(mutex)
        guard value == nil else {
            pthread_mutex_unlock(mutex)
            return
        }
        value = newValue
        let waiting = continuations
        continuations = [:]
        pthread_cond_broadcast(condition)
        pthread_mutex_unlock(mutex)
        for (_, continuation) in waiting { continuation.resume(returning: newValue) }
    }

    /// Blocks until the value arrives or `timeout` has passed; nil on timeout.
    func wait(timeout: Duration) -> Value? {
        let deadline = Self.deadline(after: timeout)
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while value == nil {
            if !waitOnce(until: deadline) { break }
        }
        return value
    }

    /// The monotonic clock's now (``system_monotonic_now()``, `CLOCK_MONOTONIC`) plus `timeout`.
    private static func deadline(after timeout: Duration) -> Duration {
        system_monotonic_now() + timeout
    }

    /// One wait on the condition variable, the mutex held, until a wake-up or `deadline` (a time of
    /// ``system_monotonic_now()``); false once the deadline has passed.
    private func waitOnce(until deadline: Duration) -> Bool {
        #if canImport(Darwin)
        // Darwin's condition variables have no monotonic clock: a relative wait, measured against
        // the monotonic clock at each wake-up.
        let left = deadline - system_monotonic_now()
        guard left > .zero else { return false }
        let (seconds, attoseconds) = left.components
        var relative = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
        return pthread_cond_timedwait_relative_np(condition, mutex, &relative) != ETIMEDOUT
        #else
        // The condition variable runs on CLOCK_MONOTONIC (init), the clock of the deadline.
        let (seconds, attoseconds) = deadline.components
        var absolute = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
        return pthread_cond_timedwait(condition, mutex, &absolute) != ETIMEDOUT
        #endif
    }

    /// Waits without blocking a thread until the value arrives or `timeout` has passed; nil on
    /// timeout.
    func value(timeout: Duration) async -> Value? {
        await withTaskGroup(of: Value?.self) { group in
            group.addTask { await self.awaitValue() }
            group.addTask {
                await self.deadline(timeout)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            if let first { return first }
            // The deadline passed; the value may still have arrived just now.
            return await group.next() ?? nil
        }
    }

    /// Returns once the value has arrived, `timeout` has passed, or the task is cancelled.
    ///
    /// The deadline is kept by a short-lived thread blocked on the condition variable, not by a
    /// timed `Task.sleep`: the runtime's first timer makes libdispatch open its timerfds then, at
    /// the lowest free numbers, which may be one a caller has just closed. The library's first use
    /// opens no descriptor below its floor, directly or through the runtime (docs/design.md). A
    /// cancellation wakes the thread. With no thread to start, `Task.sleep` keeps the deadline.
    private func deadline(_ timeout: Duration) async {
        pthread_mutex_lock(mutex)
        nextWaiter += 1
        let id = nextWaiter
        runningDeadlines.insert(id)
        pthread_mutex_unlock(mutex)
        let started = await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Bool, Never>) in
                let result = system_start_thread(name: "asyncfsync-timer") { [self] in
                    waitForDeadline(id, timeout: timeout)
                    continuation.resume(returning: true)
                }
                if case .failure = result {
                    pthread_mutex_lock(mutex)
                    runningDeadlines.remove(id)
                    pthread_mutex_unlock(mutex)
                    continuation.resume(returning: false)
                }
            }
        } onCancel: {
            pthread_mutex_lock(mutex)
            if runningDeadlines.contains(id) { cancelledDeadlines.insert(id) }
            pthread_cond_broadcast(condition)
            pthread_mutex_unlock(mutex)
        }
        if !started { try? await Task.sleep(for: timeout) }
    }

    /// The deadline thread's wait: until the value arrives, `timeout` passes, or deadline `id` is
    /// cancelled.
    private func waitForDeadline(_ id: UInt64, timeout: Duration) {
        let deadline = Self.deadline(after: timeout)
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while value == nil, !cancelledDeadlines.contains(id) {
            if !waitOnce(until: deadline) { break }
        }
        runningDeadlines.remove(id)
        cancelledDeadlines.remove(id)
    }

    /// Waits without blocking a thread, and without a deadline, until the value arrives; nil when
    /// the waiting task is cancelled first. Starts no thread: a caller that would wait for ever
    /// anyway (the shared backend's creation) has no use for a deadline.
    func value() async -> Value? {
        await awaitValue()
    }

    /// The value, or nil when the waiting task is cancelled first.
    private func awaitValue() async -> Value? {
        pthread_mutex_lock(mutex)
        nextWaiter += 1
        let id = nextWaiter
        pthread_mutex_unlock(mutex)
        return await withTaskCancellationHandler {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Value?, Never>) in
                pthread_mutex_lock(mutex)
                if let value {
                    pthread_mutex_unlock(mutex)
                    continuation.resume(returning: value)
                    return
                }
                // The handler may have run before this (it found no continuation): checked under
                // the same lock.
                if Task.isCancelled {
                    pthread_mutex_unlock(mutex)
                    continuation.resume(returning: nil)
                    return
                }
                continuations[id] = continuation
                pthread_mutex_unlock(mutex)
            }
        } onCancel: {
            pthread_mutex_lock(mutex)
            let waiting = continuations.removeValue(forKey: id)
            pthread_mutex_unlock(mutex)
            waiting?.resume(returning: nil)
        }
    }
}

/// Work that must not hold up its caller (freeing a probe's AIO context waits for an RCU grace
/// period, and for a stuck sync): it runs on a short-lived thread. When no thread can be started
/// (a pids or thread limit), it is kept and runs with the next deferred work that gets one, so the
/// caller never runs it inline.
enum DeferredWork {
    private static let pending = Locked<[@Sendable () -> Void]>([])

    static func run(_ work: @escaping @Sendable () -> Void, system: SystemCalls) {
        let batch = pending.withLock { pending -> [@Sendable () -> Void] in
            defer { pending = [] }
            return pending + [work]
        }
        if case .failure = system.startThread("asyncfsync-free", { for work in batch { work() } }) {
            pending.withLock { $0 = batch + $0 }
        }
    }

    /// Work kept because no thread could be started (tests).
    static var pendingCount: Int { pending.withLock { $0.count } }
}
