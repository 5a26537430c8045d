// Linux (glibc) only: compiled out elsewhere and under ASYNC_FSYNC_PORTABLE (see docs/design.md, "The portable
// backend").
#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
import SystemPackage

/// A backend on glibc POSIX aio: `aio_fsync(3)` with `O_SYNC` / `O_DSYNC`, completions found by
/// one thread waiting in `aio_suspend(3)` and read with `aio_error(3)` / `aio_return(3)`.
///
/// glibc runs each sync on one of its helper threads, so it works wherever glibc does, on every
/// kernel and file system. No thread is created per request and no signal is used. Requests of
/// one descriptor share syncs: at most one sync per descriptor is handed to glibc at a time (glibc
/// would run them one after another anyway), and requests that arrive meanwhile are served
/// together by the next one, which starts after each of them arrived. Two descriptors of one open
/// file description (`dup(2)`, inherited) never have a sync in glibc at once either (glibc queues
/// by descriptor number, so it would run them together).
///
/// At most `capacity` syncs are handed to glibc at once; more wait in a queue, in order.
///
/// Every POSIX aio backend of the process shares one completion thread, which holds one of glibc's
/// helper threads for its doorbell; so hundreds of backends work although glibc has 20 helpers.
///
/// On a memory file system (tmpfs, ramfs) fsync does nothing but return 0, so by default the
/// sync is a direct `fsync(2)` / `fdatasync(2)` on the caller's thread; see
/// `inlineMemoryFileSystems`.
public final class PosixAIOBackend: AsyncSyncBackend, CustomStringConvertible {
    public var kind: BackendKind { .posix }
    let engine: AIOEngine<PosixAIODriver>
    /// The inline path for memory file systems, or nil when switched off.
    let inline: InlineSync?
    /// The durability failures seen through either path.
    let ledger: FailureLedger
    let capacity: Int

    /// Creates a backend with its own completion thread.
    ///
    /// - Parameters:
    ///   - capacity: The number of requests handed to glibc at once, from 1 to 65 536. The default
    ///     is 256.
    ///   - stickyFailures: Whether a durability failure of a file makes every later sync of that
    ///     file through this backend fail at once with ``AsyncSyncError/Code/earlierFailure``,
    ///     until ``clearFailure(of:)``. The default is `true`. With `false`, only the in-flight
    ///     rule remains: a sync of the file that was in flight when the failure was recorded still
    ///     fails (``AsyncSyncError/Code/concurrentFailure``); later ones run.
    ///   - inlineMemoryFileSystems: Whether a descriptor on a memory file system (tmpfs, ramfs:
    ///     no backing store, fsync returns 0 at once) is synced with a direct `fsync(2)` /
    ///     `fdatasync(2)` on the caller's thread instead of a round trip through glibc's helper
    ///     threads. Costs one `fstatfs(2)` per request on every file system (see
    ///     docs/selection.md). The default is `true`; ``AsyncSync/makeBackend(environment:directory:)`` passes `false`
    ///     when `ASYNC_FSYNC_INLINE=off`.
    /// - Throws: ``AsyncSyncError`` with code ``AsyncSyncError/Code/invalidConfiguration`` when
    ///   `capacity` is outside 1...65536 (nothing is made); with code
    ///   ``AsyncSyncError/Code/backendUnavailable`` when the shared completion thread, its eventfd
    ///   or its doorbell request cannot be created.
    public convenience init(capacity: Int = 256, stickyFailures: Bool = true, inlineMemoryFileSystems: Bool = true) throws {
        try self.init(capacity: capacity, stickyFailures: stickyFailures,
                      inlineMemoryFileSystems: inlineMemoryFileSystems, system: .live)
    }

    /// The backend on a given system-call table. The inline path is off unless asked for, so that
    /// tests injecting faults on tmpfs files reach the POSIX aio path.
    init(capacity: Int, stickyFailures: Bool = true, inlineMemoryFileSystems: Bool = false,
         system: SystemCalls, ledgerObserver: (@Sendable (FailureLedger.Event) -> Void)? = nil) throws(AsyncSyncError) {
        try BackendCapacity.validate(capacity, backend: .posix)  // before anything is made
        let ledger = FailureLedger(kind: .posix, sticky: stickyFailures, system: system, observer: ledgerObserver)
        // As many write slots as sync slots (``AIOEngine``).
        engine = try AIOEngine(driver: PosixAIODriver(slotCount: 2 * capacity, system: system), syncSlots: capacity,
                               system: system, ledger: ledger)
        inline = inlineMemoryFileSystems ? InlineSync(system: system, ledger: ledger) : nil
        self.ledger = ledger
        self.capacity = capacity
    }

    deinit {
        engine.beginShutdown()
    }

    /// Syncs `fd` through glibc's POSIX aio (or inline on a memory file system).
    ///
    /// - Parameters:
    ///   - fd: An open descriptor; it must stay open until this call returns.
    ///   - mode: ``SyncMode/fsync`` (`O_SYNC`) or ``SyncMode/fdatasync`` (`O_DSYNC`).
    /// - Throws: See ``AsyncSyncBackend/sync(_:mode:)``. A closed descriptor (`EBADF`) is refused by
    ///   `aio_fsync(3)`; a pipe or socket (`EINVAL`) and every other errno arrive with the completion.
    ///
    /// Uses `aio_fsync(3)`, `aio_suspend(3)`, `aio_error(3)` and `aio_return(3)`; `fstatfs(2)` when
    /// the inline path is on.
    public func sync(_ fd: FileDescriptor, mode: SyncMode) async throws {
        guard Observers.isActive else { return try await syncUnobserved(fd, mode: mode) }
        try await Observers.timed(.sync(.posix, mode)) { try await syncUnobserved(fd, mode: mode) }
    }

    private func syncUnobserved(_ fd: FileDescriptor, mode: SyncMode) async throws {
        // With writes of the descriptor not complete, the engine holds the sync until they are.
        let look = engine.look(at: fd)
        if !look.writesPending, let inline, inline.applies(to: fd) {
            try inline.sync(fd, mode: mode, backend: .posix, refusal: engine.refusalError(mode, fd))
            return
        }
        try await engine.sync(fd, mode: mode, arrival: ledger.stamp(), look: look)
    }

    /// Writes all of `buffer` to `fd` at `offset` with `aio_write(3)`, continued after a short
    /// write; see ``AsyncSyncBackend/write(_:from:at:)``. A later ``sync(_:mode:)`` of `fd` covers it.
    ///
    /// - Parameters:
    ///   - fd: An open descriptor of a regular file, open for writing; it must stay open until this
    ///     call returns.
    ///   - buffer: The bytes; valid and unchanged until this call returns.
    ///   - offset: Where the first byte goes (`>= 0`).
    /// - Throws: See ``AsyncSyncBackend/write(_:from:at:)``.
    public func write(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws {
        guard Observers.isActive else { return try await engine.write(fd, from: buffer, at: offset, kind: .plain) }
        try await Observers.timed(.write(.posix, durable: false, bytes: buffer.count)) {
            try await engine.write(fd, from: buffer, at: offset, kind: .plain)
        }
    }

    /// Writes all of `buffer` to `fd` at `offset` with `aio_write(3)`, then makes it durable with
    /// `aio_fsync(O_DSYNC, …)`, shared with the descriptor's concurrent durable writes and syncs;
    /// see ``AsyncSyncBackend/durableWrite(_:from:at:)``.
    ///
    /// - Parameters:
    ///   - fd: An open descriptor of a regular file, open for writing; it must stay open until this
    ///     call returns.
    ///   - buffer: The bytes; valid and unchanged until this call returns.
    ///   - offset: Where the first byte goes (`>= 0`).
    /// - Throws: See ``AsyncSyncBackend/durableWrite(_:from:at:)``.
    public func durableWrite(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws {
        guard Observers.isActive else { return try await durableWriteUnobserved(fd, from: buffer, at: offset) }
        try await Observers.timed(.write(.posix, durable: true, bytes: buffer.count)) {
            try await durableWriteUnobserved(fd, from: buffer, at: offset)
        }
    }

    /// ``durableWrite(_:from:at:)`` without its observer event: its parts go to the engine and the
    /// inline path directly, never through ``write(_:from:at:)`` or ``sync(_:mode:)``, so the call
    /// is one event.
    private func durableWriteUnobserved(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws {
        if let inline, inline.applies(to: fd) {
            // A memory file system: the write, then the inline sync (its data has no disk to reach).
            let arrival = ledger.stamp()
            // The write keeps the engine's drain waiting until its sync part has its answer.
            try await engine.write(fd, from: buffer, at: offset, kind: .plain, arrival: arrival, holdsTransit: true)
            try await engine.syncAfterWrite(fd, arrival: arrival) {
                try inline.sync(fd, mode: .fdatasync, backend: .posix, refusal: $0, arrival: arrival)
            }
            return
        }
        try await engine.write(fd, from: buffer, at: offset, kind: .thenSync)
    }

    @discardableResult
    public func clearFailure(of fd: FileDescriptor) throws -> Bool {
        try engine.clearFailure(of: fd)
    }

    public func shutdown() async {
        await engine.shutdown()
    }

    /// A task executor that runs tasks on the completion thread of POSIX aio backends; see
    /// ``LibaioBackend/taskExecutor``.
    public var taskExecutor: any TaskExecutor { engine.hub }

    /// ``taskExecutor``.
    public var preferredTaskExecutor: (any TaskExecutor)? { engine.hub }

    /// A serial executor on the same completion thread, for an actor; see
    /// ``LibaioBackend/serialExecutor``.
    public var serialExecutor: any SerialExecutor { engine.hub.serialExecutor }

    /// ``serialExecutor``.
    public var preferredSerialExecutor: (any SerialExecutor)? { engine.hub.serialExecutor }

    /// Whether descriptors on memory file systems are synced inline.
    public var inlinesMemoryFileSystems: Bool { inline != nil }

    /// For example `posix backend (glibc POSIX aio, capacity 256; tmpfs/ramfs synced inline)`.
    public var description: String {
        "posix backend (glibc POSIX aio, capacity \(capacity)"
            + (inline != nil ? "; tmpfs/ramfs synced inline)" : "; no inline path)")
    }
}

extension PosixAIOBackend: WriteTracking {
    func hasIncompleteWrites(_ fd: FileDescriptor) -> Bool { engine.hasIncompleteWrites(fd) }
}

extension PosixAIOBackend: FailureLedgerProviding {
    var failureLedger: FailureLedger? { ledger }
}
#endif  // os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
