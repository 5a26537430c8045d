import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif canImport(Musl)
import Musl
#endif

/// A backend for every platform: each sync is a blocking call on one of a few threads of its own,
/// so no thread of the cooperative pool waits.
///
/// It is what ``AsyncSync/shared`` and ``AsyncSync/makeBackend(_:)`` give off Linux (macOS, and any
/// system without kernel AIO), and what `ASYNC_FSYNC_BACKEND=portable` (or
/// ``AsyncSync/Configuration/backend`` ``BackendKind/portable``) forces on Linux. The sync is `fcntl(F_FULLFSYNC)` on Darwin for both modes (a plain `fsync(2)`
/// there leaves the data in the drive's cache; Darwin has no `fdatasync`), or `fsync(2)` when the
/// file system refuses it with `ENOTSUP` or `EINVAL`; elsewhere `fsync(2)` or `fdatasync(2)`.
///
/// Requests wait in one queue, in arrival order, and each runs its own sync on the next free
/// thread: at most `threads` syncs run at once, and a request is only ever acknowledged by a sync
/// that started after it arrived. The rules are those of every backend (``AsyncSyncBackend``): the
/// same errors (code, errno, operation, backend, descriptor), sticky durability failures per file
/// until ``clearFailure(of:)``, the in-flight rule (a success is reported only if no durability
/// failure of the file was recorded during the request's flight), `CancellationError` for a
/// request cancelled while still queued, and a shutdown that lets the queue drain and waits for
/// every thread to leave its loop. It works under ``GroupCommit``.
///
/// It has no completion thread to offer: ``preferredTaskExecutor`` and
/// ``preferredSerialExecutor`` are `nil`, and a task resumes on its own executor.
public final class PortableBackend: AsyncSyncBackend, CustomStringConvertible {
    /// The number of threads ``AsyncSync/makeBackend(_:)`` and ``AsyncSync/shared`` use: 4 (the
    /// configuration's capacity sizes an AIO context and does not change it).
    public static let defaultThreads = 4

    /// The largest number of threads accepted: 256.
    public static let maximumThreads = 256

    public var kind: BackendKind { .portable }

    let pool: PortableThreadPool
    let ledger: FailureLedger

    /// The number of threads that run syncs.
    public let threadCount: Int

    /// Creates a backend with `threads` threads of its own.
    ///
    /// - Parameters:
    ///   - threads: How many syncs may run at once, each on a thread of its own; from 1 to
    ///     ``maximumThreads``. The default is ``defaultThreads``.
    ///   - stickyFailures: Whether a durability failure of a file makes every later sync of that
    ///     file through this backend fail at once with ``AsyncSyncError/Code/earlierFailure``,
    ///     until ``clearFailure(of:)``. The default is `true`; with `false` only the in-flight
    ///     rule remains.
    /// - Throws: ``AsyncSyncError`` with code ``AsyncSyncError/Code/invalidConfiguration`` for a
    ///   thread count out of range, or ``AsyncSyncError/Code/backendUnavailable`` when a thread
    ///   cannot be started (`pthread_create(3)`'s errno).
    public convenience init(threads: Int = PortableBackend.defaultThreads, stickyFailures: Bool = true) throws {
        try self.init(threads: threads, stickyFailures: stickyFailures, system: .live)
    }

    /// The backend on a given system-call table (tests).
    init(threads: Int, stickyFailures: Bool = true, system: SystemCalls,
         ledgerObserver: (@Sendable (FailureLedger.Event) -> Void)? = nil) throws(AsyncSyncError) {
        guard (1...Self.maximumThreads).contains(threads) else {
            throw AsyncSyncError(
                code: .invalidConfiguration, errno: nil, operation: .setup, step: .request, backend: .portable,
                message: "threads: \(threads) is out of range; a portable backend takes 1 to \(Self.maximumThreads)")
        }
        let ledger = FailureLedger(kind: .portable, sticky: stickyFailures, system: system, observer: ledgerObserver)
        pool = try PortableThreadPool(threads: threads, system: system, ledger: ledger)
        self.ledger = ledger
        threadCount = threads
    }

    deinit {
        pool.beginShutdown()
    }

    /// Syncs `fd` on one of the backend's threads.
    ///
    /// - Parameters:
    ///   - fd: An open descriptor; it must stay open until this call returns.
    ///   - mode: ``SyncMode/fsync`` or ``SyncMode/fdatasync``.
    /// - Throws: See ``AsyncSyncBackend/sync(_:mode:)``; the error's ``AsyncSyncError/systemCall``
    ///   is `fcntl(F_FULLFSYNC)` on Darwin, `fsync` or `fdatasync` elsewhere.
    ///
    /// Uses `fcntl(F_FULLFSYNC)` (Darwin), `fsync(2)` or `fdatasync(2)`, and `statx(2)` or
    /// `fstat(2)` once a durability failure has been recorded.
    public func sync(_ fd: FileDescriptor, mode: SyncMode) async throws {
        guard Observers.isActive else { return try await pool.sync(fd, mode: mode) }
        try await Observers.timed(.portable, mode) { try await pool.sync(fd, mode: mode) }
    }

    @discardableResult
    public func clearFailure(of fd: FileDescriptor) throws -> Bool {
        do {
            return try ledger.clear(fd)
        } catch {
            throw AsyncSyncError(
                code: .system, errno: error, operation: .setup, step: .request, backend: .portable,
                descriptor: fd, systemCall: "fstat", message: "cannot identify the file")
        }
    }

    /// Refuses new requests, lets the queued ones run, and returns once every thread has left its
    /// loop (the threads are detached: each ends right after, touching nothing of the backend).
    public func shutdown() async {
        await pool.shutdown()
    }

    /// For example `portable backend (4 threads, fdatasync(2) / fsync(2))`.
    public var description: String {
        #if canImport(Darwin)
        "portable backend (\(threadCount) threads, fcntl(F_FULLFSYNC))"
        #else
        "portable backend (\(threadCount) threads, fdatasync(2) / fsync(2))"
        #endif
    }
}

extension PortableBackend: FailureLedgerProviding {
    var failureLedger: FailureLedger? { ledger }
}

/// The threads, the queue (``PortableState``) and the lock of a ``PortableBackend``. The threads
/// hold it, not the backend, so that dropping the last reference to the backend starts a drain.
final class PortableThreadPool: @unchecked Sendable {  // state is touched under `mutex` only
    struct Job {
        var descriptor: FileDescriptor
        var mode: SyncMode
        /// ``FailureLedger/stamp()`` at arrival, after the sticky check.
        var arrival: UInt64
        var continuation: UnsafeContinuation<Void, any Error>
    }

    /// A sync that reports `EINTR` did not run to its end: it is made again, at most this often in
    /// a row (the threads block every signal, so it is not expected).
    static let maximumInterruptedRetries = 16

    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>
    private var state = PortableState<Job, UnsafeContinuation<Void, Never>>()
    private let ids = Atomic<UInt64>(1)
    let system: SystemCalls
    let ledger: FailureLedger

    init(threads: Int, system: SystemCalls, ledger: FailureLedger) throws(AsyncSyncError) {
        self.system = system
        self.ledger = ledger
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        condition = .allocate(capacity: 1)
        condition.initialize(to: pthread_cond_t())
        pthread_cond_init(condition, nil)
        for index in 0..<threads {
            locked { $0.threadStarting() }
            let started = system.startThread("asyncfsync-sync-\(index)") { [self] in run() }
            if case .failure(let errno) = started {
                _ = locked { $0.threadDidNotStart() }
                beginShutdown()  // the threads started so far leave
                throw AsyncSyncError.setup(
                    backend: .portable, errno: errno, systemCall: "pthread_create",
                    message: "cannot start thread \(index + 1) of \(threads)")
            }
        }
    }

    deinit {
        pthread_cond_destroy(condition)
        condition.deallocate()
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inline(__always)
    private func locked<Result>(_ body: (inout PortableState<Job, UnsafeContinuation<Void, Never>>) -> Result) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return body(&state)
    }

    // MARK: Requests

    func sync(_ fd: FileDescriptor, mode: SyncMode) async throws {
        let stamp = ledger.stamp()
        try Task.checkCancellation()
        guard locked({ $0.isAccepting }) else { throw AsyncSyncError.shutDown(mode, backend: .portable, descriptor: fd) }
        let arrival = try ledger.admit(fd, stamp: stamp, mode: mode, backend: .portable).get()
        let id = ids.wrappingAdd(1, ordering: .relaxed).oldValue
        try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, any Error>) in
                let job = Job(descriptor: fd, mode: mode, arrival: arrival, continuation: continuation)
                pthread_mutex_lock(mutex)
                // The handler may have run before this and found nothing to take: checked under
                // the same lock, so a cancellation is seen either here or by the handler.
                if Task.isCancelled {
                    pthread_mutex_unlock(mutex)
                    continuation.resume(throwing: CancellationError())
                    return
                }
                switch state.submit(id: id, job) {
                case .queued:
                    pthread_cond_signal(condition)
                    pthread_mutex_unlock(mutex)
                case .refused(let job):
                    pthread_mutex_unlock(mutex)
                    job.continuation.resume(throwing: AsyncSyncError.shutDown(mode, backend: .portable, descriptor: fd))
                }
            }
        } onCancel: {
            let job = locked { $0.cancel(id) }
            job?.continuation.resume(throwing: CancellationError())
        }
    }

    // MARK: Threads

    /// A thread's loop: takes requests until the backend drains and the queue is empty.
    private func run() {
        pthread_mutex_lock(mutex)
        while true {
            switch state.next() {
            case .wait:
                pthread_cond_wait(condition, mutex)
            case .run(_, let job):
                pthread_mutex_unlock(mutex)
                let outcome = perform(job)
                // Counted as running until just before its caller resumes, not after.
                pthread_mutex_lock(mutex)
                state.finished()
                pthread_mutex_unlock(mutex)
                switch outcome {
                case .success: job.continuation.resume()
                case .failure(let error): job.continuation.resume(throwing: error)
                }
                pthread_mutex_lock(mutex)
            case .exit(let exit):
                pthread_mutex_unlock(mutex)
                if case .stopped(let waiters) = exit {
                    for waiter in waiters { waiter.resume() }
                }
                return
            }
        }
    }

    /// One request's own sync and its outcome; a durability failure is recorded here, before its
    /// caller is resumed.
    private func perform(_ job: Job) -> Result<Void, AsyncSyncError> {
        let fd = job.descriptor
        var result = system.durableSync(job.mode, fd.rawValue)
        var retries = 0
        while case .failure(.interrupted) = result, retries < Self.maximumInterruptedRetries {
            retries += 1
            result = system.durableSync(job.mode, fd.rawValue)
        }
        if Observers.isActive {  // one sync the system ran, for this request alone; EINTR retries told once
            let errno: Errno? = if case .failure(let errno) = result { errno } else { nil }
            Observers.forEach { $0.systemSyncCompleted(backend: .portable, mode: job.mode, requests: 1, errno: errno) }
        }
        switch result {
        case .failure(let errno):
            if AsyncSyncError.isDurabilityErrno(errno) { ledger.record(fd, errno: errno) }
            return .failure(AsyncSyncError.sync(
                job.mode, errno: errno, step: .completion, backend: .portable, descriptor: fd,
                systemCall: durableSyncCallName(job.mode)))
        case .success:
            if let errno = ledger.judgeSuccess(arrival: job.arrival, descriptor: fd) {
                return .failure(AsyncSyncError.concurrentFailure(job.mode, errno: errno, backend: .portable, descriptor: fd))
            }
            return .success(())
        }
    }

    // MARK: Shutdown

    /// Refuses new requests and waits until the queue has drained and every thread has left.
    func shutdown() async {
        await withUnsafeContinuation { (waiter: UnsafeContinuation<Void, Never>) in
            pthread_mutex_lock(mutex)
            let action = state.shutdown(waiter)
            if case .wait(wakeAll: true) = action { pthread_cond_broadcast(condition) }
            pthread_mutex_unlock(mutex)
            if case .done(let waiter) = action { waiter?.resume() }
        }
    }

    /// Starts the shutdown without waiting (`deinit` of the backend, a failed start).
    func beginShutdown() {
        pthread_mutex_lock(mutex)
        let action = state.shutdown(nil)
        if case .wait(wakeAll: true) = action { pthread_cond_broadcast(condition) }
        pthread_mutex_unlock(mutex)
    }

    /// Requests queued and threads busy and live, in one line (tests).
    var summary: String {
        locked { "queued \($0.queuedCount), busy \($0.busyThreads), live threads \($0.liveThreads), \($0.lifecycle)" }
    }

    var queuedCount: Int { locked { $0.queuedCount } }
    /// Requests accepted and not yet completed: queued or running (tests).
    var outstandingCount: Int { locked { $0.queuedCount + $0.busyThreads } }
    var isAccepting: Bool { locked { $0.isAccepting } }
}
