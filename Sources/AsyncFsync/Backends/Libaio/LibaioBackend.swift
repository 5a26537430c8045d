// Linux (glibc) only: compiled out elsewhere and under ASYNC_FSYNC_PORTABLE (see docs/design.md, "The portable
// backend").
#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
import CAsyncFsync
import SystemPackage

/// A backend on Linux kernel AIO: `IOCB_CMD_FSYNC` / `IOCB_CMD_FDSYNC` submitted with
/// `io_submit(2)`, completions reaped by one thread blocked in `io_getevents(2)`.
///
/// The kernel runs each sync on a workqueue, so requests on the same file or on many files run
/// concurrently and no thread of the caller's waits. Generic kernel support exists since
/// Linux 4.18; some file systems answer `EINVAL`. The library makes the system calls itself
/// and does not need `libaio.so`.
///
/// Requests of one descriptor share syncs: at most one sync per descriptor is in the kernel at a
/// time, and a request that arrives while one runs waits for the next, which starts when the
/// running one ends and serves every request that joined it. A request is never served by a sync
/// that started before it arrived, and the kernel, which reports a failed writeback only once per
/// open file description, never sees two syncs of one open file description at once, also through
/// two descriptors (`dup(2)`, inherited): the engine tells them apart with `kcmp(2)`.
///
/// At most `capacity` syncs are in the kernel at once; more wait in a queue, in order, until one
/// completes (backpressure); they never fail because the context is full.
///
/// Every backend of the process made with the same kind shares one completion thread (see
/// ``taskExecutor``); each has its own AIO context of `capacity` events.
///
/// Two kinds of file are not synced through kernel AIO:
/// - On a memory file system (tmpfs, ramfs) fsync does nothing but return 0, so by default the
///   sync is a direct `fsync(2)` / `fdatasync(2)` on the caller's thread (~0.2 µs instead of a
///   7–18 µs round trip); see `inlineMemoryFileSystems`.
/// - When `io_submit(2)` refuses a sync of a regular file with `EINVAL` (a kernel older than 4.18
///   or a file system without AIO fsync), that request is served through POSIX aio and the file
///   system is remembered, so later requests for it go to POSIX aio at once. One backend thus
///   works across file systems of both kinds. A pipe or socket still gets `EINVAL`.
public final class LibaioBackend: AsyncSyncBackend, CustomStringConvertible {
    public var kind: BackendKind { .libaio }
    let engine: AIOEngine<LibaioDriver>
    /// The inline path for memory file systems, or nil when switched off.
    let inline: InlineSync?
    /// POSIX aio for file systems without AIO fsync.
    let fallback: PosixFallback
    /// The durability failures seen through any of the three paths.
    let ledger: FailureLedger
    let capacity: Int

    /// Creates a backend with its own AIO context and completion thread.
    ///
    /// - Parameters:
    ///   - capacity: The number of syncs in the kernel at once, and as many writes (the AIO
    ///   context holds both: `2 × capacity` events, at most 65 536, counted against
    ///   `/proc/sys/fs/aio-max-nr`), from 1 to 65 536. The default is 256.
    ///   - stickyFailures: Whether a durability failure of a file makes every later sync of that
    ///     file through this backend fail at once with ``AsyncSyncError/Code/earlierFailure``,
    ///     until ``clearFailure(of:)``. The default is `true`. With `false`, only the in-flight
    ///     rule remains: a sync of the file that was in flight when the failure was recorded still
    ///     fails (``AsyncSyncError/Code/concurrentFailure``); later ones run.
    ///   - inlineMemoryFileSystems: Whether a descriptor on a memory file system (tmpfs, ramfs:
    ///     no backing store, fsync returns 0 at once) is synced with a direct `fsync(2)` /
    ///     `fdatasync(2)` on the caller's thread instead of a round trip through the kernel's
    ///     workqueue. Costs one `fstatfs(2)` per request on every file system (see
    ///     docs/selection.md). The default is `true`; ``AsyncSync/makeBackend(environment:directory:)`` passes `false`
    ///     when `ASYNC_FSYNC_INLINE=off`.
    /// - Throws: ``AsyncSyncError`` with code ``AsyncSyncError/Code/invalidConfiguration`` when
    ///   `capacity` is outside 1...65536 (nothing is made); with code
    ///   ``AsyncSyncError/Code/backendUnavailable`` when `io_setup(2)` fails (`EAGAIN`: aio-max-nr
    ///   used up; `ENOSYS`/`EPERM`: kernel AIO absent or denied) or the thread cannot be started.
    ///
    /// Uses `io_setup(2)`.
    public convenience init(capacity: Int = 256, stickyFailures: Bool = true, inlineMemoryFileSystems: Bool = true) throws {
        try self.init(capacity: capacity, stickyFailures: stickyFailures,
                      inlineMemoryFileSystems: inlineMemoryFileSystems, system: .live)
    }

    /// The backend on a given system-call table. The inline path is off unless asked for, so that
    /// tests injecting faults on tmpfs files reach the kernel AIO path.
    init(capacity: Int, stickyFailures: Bool = true, inlineMemoryFileSystems: Bool = false,
         system: SystemCalls, ledgerObserver: (@Sendable (FailureLedger.Event) -> Void)? = nil) throws(AsyncSyncError) {
        try BackendCapacity.validate(capacity, backend: .libaio)  // before anything is made
        let ledger = FailureLedger(kind: .libaio, sticky: stickyFailures, system: system, observer: ledgerObserver)
        // As many write slots as sync slots (``AIOEngine``).
        engine = try AIOEngine(driver: LibaioDriver(slotCount: 2 * capacity, system: system), syncSlots: capacity,
                               system: system, ledger: ledger, handsOffInvalid: true)
        inline = inlineMemoryFileSystems ? InlineSync(system: system, ledger: ledger) : nil
        fallback = PosixFallback(system: system, capacity: capacity, ledger: ledger)
        self.ledger = ledger
        self.capacity = capacity
    }

    deinit {
        engine.beginShutdown()
        fallback.beginShutdown()
    }

    /// Syncs `fd` through kernel AIO (or inline, or through POSIX aio; see the type's overview).
    ///
    /// - Parameters:
    ///   - fd: An open descriptor; it must stay open until this call returns.
    ///   - mode: ``SyncMode/fsync`` or ``SyncMode/fdatasync``.
    /// - Throws: See ``AsyncSyncBackend/sync(_:mode:)``. A closed descriptor (`EBADF`) and a pipe or
    ///   socket (`EINVAL`) are refused by `io_submit(2)`; other errnos arrive with the completion.
    ///
    /// Uses `io_submit(2)` and `io_getevents(2)`; `fstatfs(2)` when the inline path is on.
    public func sync(_ fd: FileDescriptor, mode: SyncMode) async throws {
        guard Observers.isActive else { return try await syncUnobserved(fd, mode: mode) }
        try await Observers.timed(.sync(.libaio, mode)) { try await syncUnobserved(fd, mode: mode) }
    }

    private func syncUnobserved(_ fd: FileDescriptor, mode: SyncMode) async throws {
        // A descriptor with kernel AIO writes not complete yet goes through the engine, whose sync
        // is held until they are (a sync covers the writes accepted before it); on a file system
        // without AIO fsync the engine's refusal (EINVAL) then hands it to POSIX aio as usual.
        let look = engine.look(at: fd)
        if !look.writesPending, let inline, inline.applies(to: fd) {
            try inline.sync(fd, mode: mode, backend: .libaio, refusal: engine.refusalError(mode, fd))
            return
        }
        let arrival = ledger.stamp()
        if !look.writesPending, fallback.serves(fd) {
            // The engine's reason (shut down, or its broken source's errno) holds for every path.
            if let refusal = engine.refusalError(mode, fd) { throw refusal }
            try await fallback.sync(fd, mode: mode, arrival: arrival, refused: nil)
            return
        }
        do {
            try await engine.sync(fd, mode: mode, arrival: arrival, look: look)
        } catch let error as AsyncSyncError where error.code == .system && error.errno == .invalidArgument && error.step == .submit {
            // The engine still counts this request (a shutdown waits for it) until it has its answer.
            defer { engine.endTransit() }
            guard fallback.takesOver(after: error, for: fd) else { throw error }
            // The same request, so the same arrival: a failure recorded since still counts.
            try await fallback.sync(fd, mode: mode, arrival: arrival, refused: error)
        }
    }

    /// Writes all of `buffer` to `fd` at `offset` with one `IOCB_CMD_PWRITE`, continued after a
    /// short write; see ``AsyncSyncBackend/write(_:from:at:)``. On a buffered file the kernel
    /// copies the data inside `io_submit(2)`; on an `O_DIRECT` file the write is asynchronous. A
    /// later ``sync(_:mode:)`` of `fd` covers it (the sync waits for it).
    ///
    /// - Parameters:
    ///   - fd: An open descriptor of a regular file, open for writing; it must stay open until this
    ///     call returns.
    ///   - buffer: The bytes; valid and unchanged until this call returns.
    ///   - offset: Where the first byte goes (`>= 0`).
    /// - Throws: See ``AsyncSyncBackend/write(_:from:at:)``.
    public func write(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws {
        guard Observers.isActive else { return try await engine.write(fd, from: buffer, at: offset, kind: .plain) }
        try await Observers.timed(.write(.libaio, durable: false, bytes: buffer.count)) {
            try await engine.write(fd, from: buffer, at: offset, kind: .plain)
        }
    }

    /// Writes all of `buffer` to `fd` at `offset` and makes it durable; see
    /// ``AsyncSyncBackend/durableWrite(_:from:at:)``.
    ///
    /// On an `O_DIRECT` descriptor (`fcntl(2)` `F_GETFL`) it is one `IOCB_CMD_PWRITE` with
    /// `RWF_DSYNC`. On a buffered file it is the write, then an `IOCB_CMD_FDSYNC` that starts after
    /// the write completed and is shared with the descriptor's concurrent durable writes and syncs.
    /// On a memory file system (with the inline path) and on a file system without AIO fsync, the
    /// sync part takes the same path as ``sync(_:mode:)``.
    ///
    /// - Parameters:
    ///   - fd: An open descriptor of a regular file, open for writing; it must stay open until this
    ///     call returns.
    ///   - buffer: The bytes; valid and unchanged until this call returns.
    ///   - offset: Where the first byte goes (`>= 0`).
    /// - Throws: See ``AsyncSyncBackend/durableWrite(_:from:at:)``.
    public func durableWrite(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws {
        guard Observers.isActive else { return try await durableWriteUnobserved(fd, from: buffer, at: offset) }
        try await Observers.timed(.write(.libaio, durable: true, bytes: buffer.count)) {
            try await durableWriteUnobserved(fd, from: buffer, at: offset)
        }
    }

    /// ``durableWrite(_:from:at:)`` without its observer event: its parts go to the engine, the
    /// inline path and the fallback directly, never through ``write(_:from:at:)`` or
    /// ``sync(_:mode:)``, so the call is one event.
    private func durableWriteUnobserved(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws {
        let arrival = ledger.stamp()
        if let inline, inline.applies(to: fd) {
            // The write keeps the engine's drain waiting until its sync part has its answer.
            try await engine.write(fd, from: buffer, at: offset, kind: .plain, arrival: arrival, holdsTransit: true)
            // Accepted before any shutdown that began meanwhile: only a broken source refuses its sync.
            try await syncPartAfterWrite(fd, arrival: arrival) {
                try inline.sync(fd, mode: .fdatasync, backend: .libaio, refusal: $0, arrival: arrival)
            }
            return
        }
        if fallback.serves(fd) {
            try await engine.write(fd, from: buffer, at: offset, kind: .plain, arrival: arrival, holdsTransit: true)
            try await syncPartAfterWrite(fd, arrival: arrival) { refusal in
                if let refusal { throw refusal }
                try await fallback.sync(fd, mode: .fdatasync, arrival: arrival, accepted: true, refused: nil, cancellable: false)
            }
            return
        }
        let direct = (try? engine.system.statusFlags(fd.rawValue).get()).map { $0 & casyncfsync_O_DIRECT != 0 } ?? false
        do {
            try await engine.write(fd, from: buffer, at: offset, kind: direct ? .dsync : .thenSync, arrival: arrival)
        } catch let error as AsyncSyncError
            where error.operation.isSync && error.code == .system && error.errno == .invalidArgument && error.step == .submit {
            // The sync after the write was refused (a file system without AIO fsync): the engine
            // still counts it until it has its answer, from POSIX aio, with the same arrival.
            defer { engine.endTransit() }
            guard fallback.takesOver(after: error, for: fd) else { throw error }
            try await fallback.sync(fd, mode: .fdatasync, arrival: arrival, refused: error, cancellable: false)
        }
    }

    /// The sync part of a durable write whose write the engine made with `holdsTransit` and whose
    /// sync `direct` makes on another path (inline, POSIX aio), accepted before any shutdown that
    /// began since (``AIOEngine/syncAfterWrite(_:arrival:_:)``). With earlier writes of the
    /// descriptor incomplete, the engine holds it until they completed and then submits it to
    /// kernel AIO; a refusal there (`EINVAL`: no AIO fsync, e.g. a kernel older than 4.18) is
    /// handed off with its transit kept, and served through POSIX aio, as a sync is.
    private func syncPartAfterWrite(_ fd: FileDescriptor, arrival: UInt64,
                                    _ direct: (AsyncSyncError?) async throws -> Void) async throws {
        do {
            try await engine.syncAfterWrite(fd, arrival: arrival, direct)
        } catch let error as AsyncSyncError
            where error.backend == .libaio && error.code == .system && error.errno == .invalidArgument && error.step == .submit {
            // Refused by kernel AIO after it was held: the engine still counts it until it has its
            // answer, from POSIX aio, with the same arrival.
            defer { engine.endTransit() }
            guard fallback.takesOver(after: error, for: fd) else { throw error }
            try await fallback.sync(fd, mode: .fdatasync, arrival: arrival, refused: error, cancellable: false)
        }
    }

    @discardableResult
    public func clearFailure(of fd: FileDescriptor) throws -> Bool {
        try engine.clearFailure(of: fd)
    }

    public func shutdown() async {
        await engine.shutdown()
        await fallback.shutdown()
    }

    /// A task executor that runs tasks on the completion thread of kernel AIO backends.
    ///
    /// A task that prefers it — `withTaskExecutorPreference(backend.taskExecutor) { … }` or
    /// `Task(executorPreference: backend.taskExecutor) { … }` — goes on right there when its sync
    /// completes, instead of being handed to a thread of the cooperative pool: one thread wake-up
    /// per sync instead of two, which is most of the latency this library adds over a C loop
    /// (docs/performance.md). The syncs of every task resumed together are submitted together.
    /// Like an event loop it is a single thread, shared by every `LibaioBackend` of the process:
    /// code running on it must not block, or completions wait behind it. Once the last backend
    /// of the kind is shut down, tasks still preferring it run on the global concurrent executor;
    /// no job is dropped.
    public var taskExecutor: any TaskExecutor { engine.hub }

    /// ``taskExecutor``.
    public var preferredTaskExecutor: (any TaskExecutor)? { engine.hub }

    /// A serial executor on the same completion thread, for an actor that syncs through this
    /// backend: with `nonisolated var unownedExecutor: UnownedSerialExecutor {
    /// backend.serialExecutor.asUnownedSerialExecutor() }` the actor goes on after each sync right
    /// where it completed, without a hop. The actor's code must not block. Once the last backend
    /// of the kind is shut down, the actor's jobs run one at a time on a thread of their own.
    public var serialExecutor: any SerialExecutor { engine.hub.serialExecutor }

    /// ``serialExecutor``.
    public var preferredSerialExecutor: (any SerialExecutor)? { engine.hub.serialExecutor }

    /// Whether descriptors on memory file systems are synced inline.
    public var inlinesMemoryFileSystems: Bool { inline != nil }

    /// The `st_dev` of the file systems whose syncs go to POSIX aio because kernel AIO refused them.
    var posixFileSystems: [UInt64] { fallback.devices }

    /// For example `libaio backend (kernel AIO, capacity 256; tmpfs/ramfs synced inline)`.
    public var description: String {
        var text = "libaio backend (kernel AIO, capacity \(capacity)"
        text += inline != nil ? "; tmpfs/ramfs synced inline" : "; no inline path"
        let devices = fallback.devices
        if !devices.isEmpty {
            let names = devices.map(PosixFallback.deviceName)
            text += "; file systems without AIO fsync, served by POSIX aio: dev " + names.joined(separator: ", ")
        }
        return text + ")"
    }
}

extension LibaioBackend: WriteTracking {
    func hasIncompleteWrites(_ fd: FileDescriptor) -> Bool { engine.hasIncompleteWrites(fd) }
}

extension LibaioBackend: FailureLedgerProviding {
    var failureLedger: FailureLedger? { ledger }
}
#endif  // os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
