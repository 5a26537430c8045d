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
/// It writes too: ``write(_:from:at:)`` is a `pwrite(2)` on one of its threads (continued after a
/// short count), and ``durableWrite(_:from:at:)`` that write followed by a sync of its own. A
/// ``sync(_:mode:)`` of a descriptor covers every write this backend accepted for that descriptor
/// before the sync was asked for: the sync waits, on no thread, until those writes have completed;
/// writes accepted after it are not waited for.
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
    /// The sync covers every ``write(_:from:at:)`` and ``durableWrite(_:from:at:)`` this backend
    /// accepted for `fd` before this call, including writes still in flight: it starts only once
    /// they have completed (it waits on no thread meanwhile). Writes accepted after this call are
    /// not waited for.
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
        try await Observers.timed(.sync(.portable, mode)) { try await pool.sync(fd, mode: mode) }
    }

    /// Writes all of `buffer` to `fd` at `offset` with `pwrite(2)` on one of the backend's threads.
    ///
    /// A short count is continued from where it stopped, and `EINTR` is made again; the write is
    /// complete only once the whole buffer is written. A later ``sync(_:mode:)`` of the same
    /// descriptor waits for this write to complete before its sync starts (a sync covers every
    /// write accepted for its descriptor before it was asked for); a sync asked for before this
    /// write was accepted does not wait for it.
    ///
    /// - Parameters:
    ///   - fd: An open descriptor of a regular file, open for writing. It must stay open until this
    ///     call returns. The ordering with syncs is per descriptor number: a sync through another
    ///     descriptor of the same file does not wait for this write.
    ///   - buffer: The bytes to write; valid and unchanged until this call returns.
    ///   - offset: Where in the file the first byte goes (`>= 0`).
    /// - Throws: ``AsyncSyncError`` with operation ``AsyncSyncError/Operation/write``: code
    ///   ``AsyncSyncError/Code/system``, step ``AsyncSyncError/Step/completion``, `systemCall`
    ///   `pwrite` and the errno (`ENOSPC`, `EDQUOT`, `EFBIG`, `EIO`, `EBADF`, …; `EIO` for a call
    ///   that wrote nothing), the message saying how many bytes were written before the failure;
    ///   `EINVAL` at step ``AsyncSyncError/Step/request`` for a negative offset or one whose end
    ///   overflows; ``AsyncSyncError/Code/shutDown`` after ``shutdown()``; `CancellationError` when
    ///   the task was cancelled before a thread took the write (nothing was written). A failed
    ///   write is not a durability failure and is not recorded against later syncs of the file.
    public func write(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws {
        guard Observers.isActive else { return try await pool.write(fd, buffer, at: offset, durable: false) }
        try await Observers.timed(.write(.portable, durable: false, bytes: buffer.count)) {
            try await pool.write(fd, buffer, at: offset, durable: false)
        }
    }

    /// Writes all of `buffer` to `fd` at `offset`, then makes the file's data durable with a sync
    /// of its own (`fdatasync(2)`; `fcntl(F_FULLFSYNC)` on Darwin), on the backend's threads.
    ///
    /// The write part is ``write(_:from:at:)``. The sync part starts after the write part completed
    /// and after every write this backend accepted for the descriptor before this durable write,
    /// as a ``sync(_:mode:)`` asked for at this call would. It returns only once that sync succeeded and
    /// no durability failure of the file was recorded since this call arrived.
    ///
    /// - Parameters:
    ///   - fd: As for ``write(_:from:at:)``.
    ///   - buffer: As for ``write(_:from:at:)``.
    ///   - offset: As for ``write(_:from:at:)``.
    /// - Throws: A failure of the write part as for ``write(_:from:at:)`` (operation
    ///   ``AsyncSyncError/Operation/write``; no sync is made, nothing is recorded). A failure of the
    ///   sync part as a failed ``sync(_:mode:)`` in ``SyncMode/fdatasync`` reports it (operation
    ///   ``AsyncSyncError/Operation/fdatasync``, a durability failure, sticky);
    ///   ``AsyncSyncError/Code/earlierFailure`` (nothing is written) after a durability failure of
    ///   the file until ``clearFailure(of:)``; ``AsyncSyncError/Code/concurrentFailure`` when a
    ///   failure of the file was recorded during its flight; ``AsyncSyncError/Code/shutDown``
    ///   (operation ``AsyncSyncError/Operation/durableWrite``) after ``shutdown()``;
    ///   `CancellationError` when the task was cancelled before a thread took it.
    public func durableWrite(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws {
        guard Observers.isActive else { return try await pool.write(fd, buffer, at: offset, durable: true) }
        try await Observers.timed(.write(.portable, durable: true, bytes: buffer.count)) {
            try await pool.write(fd, buffer, at: offset, durable: true)
        }
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

/// Its syncs wait for the writes accepted before them on their descriptor, as the engines' do, so
/// ``GroupCommit`` must know of those writes: it may serve a request's batch through another
/// descriptor of the file, whose sync would not wait for them (review-group, finding 1).
extension PortableBackend: WriteTracking {
    func hasIncompleteWrites(_ fd: FileDescriptor) -> Bool { pool.pendingWriteCount(of: fd) > 0 }
}

/// The threads, the queue (``PortableState``) and the lock of a ``PortableBackend``. The threads
/// hold it, not the backend, so that dropping the last reference to the backend starts a drain.
final class PortableThreadPool: @unchecked Sendable {  // state is touched under `mutex` only
    struct Job {
        enum Request {
            case sync(SyncMode)
            /// The caller's bytes, valid until its call returns (it waits for the request).
            case write(UnsafeRawBufferPointer, offset: Int64)
            case durableWrite(UnsafeRawBufferPointer, offset: Int64)
        }

        var descriptor: FileDescriptor
        var request: Request
        /// ``FailureLedger/stamp()`` at arrival, after the sticky check (syncs and durable writes).
        var arrival: UInt64
        var continuation: UnsafeContinuation<Void, any Error>
    }

    typealias State = PortableState<Job, UnsafeContinuation<Void, Never>>

    /// A sync that reports `EINTR` did not run to its end: it is made again, at most this often in
    /// a row (the threads block every signal, so it is not expected). The same bound applies to a
    /// `pwrite(2)` interrupted before it wrote anything.
    static let maximumInterruptedRetries = 16

    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>
    private var state = State()
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
    private func locked<Result>(_ body: (inout State) -> Result) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return body(&state)
    }

    /// Wakes `count` waiting threads for the requests just queued (under the lock).
    @inline(__always)
    private func wake(_ count: Int) {
        if count == 1 {
            pthread_cond_signal(condition)
        } else if count > 1 {
            pthread_cond_broadcast(condition)
        }
    }

    // MARK: Requests

    func sync(_ fd: FileDescriptor, mode: SyncMode) async throws {
        let stamp = ledger.stamp()
        try Task.checkCancellation()
        guard locked({ $0.isAccepting }) else { throw AsyncSyncError.shutDown(mode, backend: .portable, descriptor: fd) }
        let arrival = try ledger.admit(fd, stamp: stamp, mode: mode, backend: .portable).get()
        try await enqueue(Job.Request.sync(mode), kind: .sync, fd, arrival: arrival) {
            AsyncSyncError.shutDown(mode, backend: .portable, descriptor: fd)
        }
    }

    /// A write (`durable: false`) or a durable write of all of `buffer` at `offset`.
    func write(_ fd: FileDescriptor, _ buffer: UnsafeRawBufferPointer, at offset: Int64, durable: Bool) async throws {
        let operation: AsyncSyncError.Operation = durable ? .durableWrite : .write
        if let invalid = AsyncSyncError.portableWriteRange(offset: offset, count: buffer.count, operation: operation, descriptor: fd) {
            throw invalid
        }
        let stamp = durable ? ledger.stamp() : 0
        try Task.checkCancellation()
        let refusal = { AsyncSyncError.portableWriteShutDown(operation, descriptor: fd) }
        guard locked({ $0.isAccepting }) else { throw refusal() }
        if durable {
            // Its sync part is a durability request: refused after a sticky failure of the file,
            // and judged by the in-flight rule from this arrival.
            let arrival = try ledger.admit(fd, stamp: stamp, mode: .fdatasync, backend: .portable).get()
            try await enqueue(.durableWrite(buffer, offset: offset), kind: .durableWrite, fd, arrival: arrival, refused: refusal)
        } else {
            try await enqueue(.write(buffer, offset: offset), kind: .write, fd, arrival: 0, refused: refusal)
        }
    }

    private func enqueue(
        _ request: Job.Request, kind: State.Kind, _ fd: FileDescriptor, arrival: UInt64,
        refused: @escaping () -> AsyncSyncError
    ) async throws {
        let id = ids.wrappingAdd(1, ordering: .relaxed).oldValue
        try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, any Error>) in
                let job = Job(descriptor: fd, request: request, arrival: arrival, continuation: continuation)
                pthread_mutex_lock(mutex)
                // The handler may have run before this and found nothing to take: checked under
                // the same lock, so a cancellation is seen either here or by the handler.
                if Task.isCancelled {
                    pthread_mutex_unlock(mutex)
                    continuation.resume(throwing: CancellationError())
                    return
                }
                switch state.submit(id: id, descriptor: fd.rawValue, kind: kind, job) {
                case .queued:
                    pthread_cond_signal(condition)
                    pthread_mutex_unlock(mutex)
                case .held:
                    pthread_mutex_unlock(mutex)
                case .refused(let job):
                    pthread_mutex_unlock(mutex)
                    job.continuation.resume(throwing: refused())
                }
            }
        } onCancel: {
            pthread_mutex_lock(mutex)
            let cancelled = state.cancel(id)
            if let cancelled { wake(cancelled.wake) }
            pthread_mutex_unlock(mutex)
            cancelled?.job.continuation.resume(throwing: CancellationError())
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
            case .run(let ticket, let job):
                pthread_mutex_unlock(mutex)
                var ticket = ticket
                let outcome: Result<Void, AsyncSyncError>
                switch job.request {
                case .sync(let mode):
                    outcome = performSync(job, mode: mode)
                case .write(let buffer, let offset):
                    outcome = performWrite(job.descriptor, buffer, at: offset)
                case .durableWrite(let buffer, let offset) where ticket.work == .durableWrite:
                    let written = performWrite(job.descriptor, buffer, at: offset)
                    pthread_mutex_lock(mutex)
                    let after = state.durableWriteWritten(ticket, job: job, succeeded: (try? written.get()) != nil)
                    switch after {
                    case .done(let count):
                        wake(count)
                        pthread_mutex_unlock(mutex)
                        if case .failure(let error) = written { job.continuation.resume(throwing: error) }
                        pthread_mutex_lock(mutex)
                        continue
                    case .held(let count):
                        wake(count)  // the job is the machine's now
                        continue
                    case .sync(let sync, let count):
                        wake(count)
                        pthread_mutex_unlock(mutex)
                        ticket = sync
                        outcome = performSync(job, mode: .fdatasync)
                    }
                case .durableWrite:  // its sync part, held and released
                    outcome = performSync(job, mode: .fdatasync)
                }
                // Counted as running until just before its caller resumes, not after.
                pthread_mutex_lock(mutex)
                wake(state.finished(ticket))
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

    /// One request's own sync (a sync, or a durable write's sync part in `.fdatasync`) and its
    /// outcome; a durability failure is recorded here, before its caller is resumed.
    private func performSync(_ job: Job, mode: SyncMode) -> Result<Void, AsyncSyncError> {
        let fd = job.descriptor
        var result = system.durableSync(mode, fd.rawValue)
        var retries = 0
        while case .failure(.interrupted) = result, retries < Self.maximumInterruptedRetries {
            retries += 1
            result = system.durableSync(mode, fd.rawValue)
        }
        if Observers.isActive {  // one sync the system ran, for this request alone (a sync, or a durable write's sync part); EINTR retries told once
            let errno: Errno? = if case .failure(let errno) = result { errno } else { nil }
            Observers.forEach { $0.systemSyncCompleted(backend: .portable, mode: mode, requests: 1, errno: errno) }
        }
        switch result {
        case .failure(let errno):
            if AsyncSyncError.isDurabilityErrno(errno) { ledger.record(fd, errno: errno) }
            return .failure(AsyncSyncError.sync(
                mode, errno: errno, step: .completion, backend: .portable, descriptor: fd,
                systemCall: durableSyncCallName(mode)))
        case .success:
            if let errno = ledger.judgeSuccess(arrival: job.arrival, descriptor: fd) {
                return .failure(AsyncSyncError.concurrentFailure(mode, errno: errno, backend: .portable, descriptor: fd))
            }
            return .success(())
        }
    }

    /// Writes all of `buffer` at `offset` with `pwrite(2)`: a short count is continued from where
    /// it stopped, `EINTR` (nothing written) is retried up to ``maximumInterruptedRetries`` times
    /// in a row; any other errno, or a call that writes nothing, fails the write. Nothing is
    /// recorded in the ledger: a failed write is not a lost writeback.
    private func performWrite(_ fd: FileDescriptor, _ buffer: UnsafeRawBufferPointer, at offset: Int64) -> Result<Void, AsyncSyncError> {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return .success(()) }
        var written = 0
        var retries = 0
        while written < buffer.count {
            switch system.pwrite(fd.rawValue, base + written, buffer.count - written, offset + Int64(written)) {
            case .success(let count) where count > 0:
                written += min(count, buffer.count - written)
                retries = 0
            case .success:
                return .failure(.portableWriteFailed(nil, written: written, of: buffer.count, descriptor: fd))
            case .failure(.interrupted) where retries < Self.maximumInterruptedRetries:
                retries += 1
            case .failure(let errno):
                return .failure(.portableWriteFailed(errno, written: written, of: buffer.count, descriptor: fd))
            }
        }
        return .success(())
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

    /// Requests queued, held and threads busy and live, in one line (tests).
    var summary: String {
        locked { "queued \($0.queuedCount), held \($0.heldCount), busy \($0.busyThreads), live threads \($0.liveThreads), \($0.lifecycle)" }
    }

    var queuedCount: Int { locked { $0.queuedCount } }
    /// Syncs held for earlier writes of their descriptor (tests).
    var heldCount: Int { locked { $0.heldCount } }
    /// Writes of `fd` accepted and not yet complete (``WriteTracking``, tests).
    func pendingWriteCount(of fd: FileDescriptor) -> Int { locked { $0.pendingWriteCount(of: fd.rawValue) } }
    /// Requests accepted and not yet completed: queued, held or running (tests).
    var outstandingCount: Int { locked { $0.queuedCount + $0.heldCount + $0.busyThreads } }
    var isAccepting: Bool { locked { $0.isAccepting } }
}

// The write errors of the portable backend (the engines word theirs in their own files; same
// code, errno, operation and step for the same fault).
extension AsyncSyncError {
    /// A write's own failure at completion: `errno` from `pwrite(2)` (nil: a call that wrote
    /// nothing without an error, reported as `EIO`), after `written` of `count` bytes.
    static func portableWriteFailed(_ errno: Errno?, written: Int, of count: Int, descriptor: FileDescriptor) -> AsyncSyncError {
        let progress = written > 0 ? "\(written) of \(count) bytes were written before it; " : "nothing of it was written; "
        let advice = switch errno {
        case nil: "pwrite(2) wrote 0 bytes without an error"
        case .noSpace?, .diskQuotaExceeded?, .fileTooLarge?: "the file system refused the blocks; earlier data is not affected"
        case .badFileDescriptor?: "the descriptor is not open for writing (it must stay open until the write returns)"
        default: "a failed write is not a lost writeback: later syncs of the file are not refused"
        }
        return AsyncSyncError(
            code: .system, errno: errno ?? .ioError, operation: .write, step: .completion, backend: .portable,
            descriptor: descriptor, systemCall: "pwrite", message: progress + advice)
    }

    /// A write or durable write whose offset is negative, or whose end is past `Int64.max`: the
    /// kernel's `EINVAL`, before anything is queued.
    static func portableWriteRange(offset: Int64, count: Int, operation: Operation, descriptor: FileDescriptor) -> AsyncSyncError? {
        if offset >= 0, !offset.addingReportingOverflow(Int64(count)).overflow { return nil }
        return AsyncSyncError(
            code: .system, errno: .invalidArgument, operation: operation, step: .request, backend: .portable,
            descriptor: descriptor,
            message: offset < 0 ? "offset \(offset) is negative" : "offset \(offset) + \(count) bytes is past the largest file offset")
    }

    /// A write or durable write after ``AsyncSyncBackend/shutdown()``.
    static func portableWriteShutDown(_ operation: Operation, descriptor: FileDescriptor) -> AsyncSyncError {
        AsyncSyncError(code: .shutDown, errno: nil, operation: operation, step: .request, backend: .portable, descriptor: descriptor)
    }
}
