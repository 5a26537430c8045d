// Linux (glibc) only: compiled out elsewhere and under ASYNC_FSYNC_PORTABLE (see docs/design.md, "The portable
// backend").
#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
import CAsyncFsync
import SystemPackage

/// The result of one request, as a driver reports it.
struct Completion {
    var slot: Int32
    /// The system's result: for a write the number of bytes written, for a sync 0.
    var result: Result<Int, Errno>
}

/// What a driver's submission achieved: the first `accepted` slots were handed to the system;
/// when that is fewer than all, `error` is the errno refusing the next one.
struct SubmitOutcome {
    var accepted: Int
    var error: Errno?
}

/// What a driver's look for completions ended with.
enum ReapOutcome {
    var isBroken: Bool {
        if case .broken = self { return true }
        return false
    }

    /// Zero or more completions were appended.
    case progressed
    /// The completion source is broken (`io_getevents(2)` answered EINVAL, …): every request in
    /// flight fails with this errno and the engine shuts down.
    case broken(Errno)
}

/// The backend-specific part below an ``AIOEngine``: control blocks in stable memory, how they are
/// handed to the system and how their completions are found. Waiting for completions is the
/// ``CompletionHub``'s job.
///
/// The engine guarantees: ``prepare(slot:descriptor:mode:)`` runs under the engine's lock for a
/// slot that is not in flight; ``submit(_:)`` for prepared slots, possibly from two threads at once
/// with disjoint slots; ``reap(active:into:)``, ``controlBlock(_:)`` and ``release(then:)`` on the
/// hub's thread only, and ``release(then:)`` once, when nothing is in flight.
protocol AIODriver: AnyObject, Sendable {
    static var kind: BackendKind { get }
    /// The C function that hands a request to the system, for error reports.
    static var submitCall: String { get }
    /// The C function that hands a write to the system, for error reports.
    static var writeSubmitCall: String { get }
    /// The C function that reports a request's result, for error reports.
    static var completionCall: String { get }
    /// Whether completions are found by looking at each submitted control block (POSIX aio), so
    /// the hub must be told when the set of submitted slots changes.
    static var waitsOnList: Bool { get }

    /// The number of requests the driver can have in flight at once.
    var slotCount: Int { get }

    /// Called once, before any request: the hub whose thread will reap this driver.
    func attach(to hub: CompletionHub)
    func prepare(slot: Int32, descriptor: CInt, mode: SyncMode)
    /// Prepares `slot` as a write of `count` bytes at `buffer` to `offset`; `dsync`: the write
    /// completes once its data is durable (`RWF_DSYNC`; kernel AIO only).
    func prepareWrite(slot: Int32, descriptor: CInt, buffer: UnsafeRawPointer, count: Int, offset: Int64, dsync: Bool)
    func submit(_ slots: UnsafeBufferPointer<Int32>) -> SubmitOutcome
    /// Appends the completions the system has posted, without waiting. `active` lists the
    /// submitted slots when ``waitsOnList`` is true, and is empty otherwise.
    func reap(active: [Int32], into completions: inout [Completion]) -> ReapOutcome
    /// The control block of a slot, for `aio_suspend(3)` (POSIX aio only).
    func controlBlock(_ slot: Int32) -> UnsafePointer<aiocb>?
    /// Frees every resource, then calls `done` (possibly on another thread: `io_destroy(2)` waits
    /// for an RCU grace period, which must not hold up the hub).
    func release(then done: @escaping @Sendable () -> Void)
}
#endif  // os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE

/// The numbers of slots a backend may be made with.
///
/// 65 536 is the default of `/proc/sys/fs/aio-max-nr`, the most kernel AIO events the whole system
/// may hold, and keeps a POSIX backend's control blocks within about 11 MB. A value outside is
/// refused before anything is made: no slot means no request could ever run, and the number must
/// fit `io_setup(2)`'s `unsigned` and a sane allocation.
enum BackendCapacity {
    static var valid: ClosedRange<Int> { 1...65_536 }

    /// Throws ``AsyncSyncError/Code/invalidConfiguration`` naming `capacity` and the valid range
    /// when `capacity` is outside ``valid``.
    static func validate(_ capacity: Int, backend: BackendKind) throws(AsyncSyncError) {
        guard !valid.contains(capacity) else { return }
        throw AsyncSyncError(
            code: .invalidConfiguration, errno: nil, operation: .setup, step: .request, backend: backend,
            message: "capacity \(capacity) is outside the valid range \(valid.lowerBound)...\(valid.upperBound)")
    }
}
