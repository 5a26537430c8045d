import SystemPackage

/// The result of one request, as a driver reports it.
struct Completion {
    var slot: Int32
    var result: Result<Void, Errno>
}

/// What a driver's submission achieved: the first `accepted` slots were handed to the system;
/// when that is fewer than all, `error` is the errno refusing the next one.
struct SubmitOutcome {
    var accepted: Int
    var error: Errno?
}

/// What a driver's wait for completions ended with.
enum WaitOutcome {
    /// Zero or more completions were appended; wait again.
    case progressed
    /// The completion source is broken (for example `io_getevents(2)` answered EINVAL): every
    /// request in flight fails with this errno and the backend shuts down.
    case broken(Errno)
}

/// The backend-specific part below an ``AIOEngine``: control blocks in stable memory, how they are
/// handed to the system, and how their completions are found.
///
/// The engine guarantees: ``prepare(slot:descriptor:mode:)`` is called under the engine's lock for
/// a slot that is not in flight; ``submit(_:)`` for prepared slots, possibly from two threads at
/// once with disjoint slots; ``waitForCompletions(active:into:)`` and ``release()`` only from the
/// completion thread; ``wake()`` from any thread.
protocol AIODriver: AnyObject, Sendable {
    static var kind: BackendKind { get }
    /// The C function that hands a request to the system, for error reports.
    static var submitCall: String { get }
    /// The C function that reports a request's result, for error reports.
    static var completionCall: String { get }
    /// Whether ``waitForCompletions(active:into:)`` needs the list of requests in flight, and so
    /// must be woken when a request is submitted while it sleeps.
    static var waitsOnList: Bool { get }

    /// The number of requests the driver can have in flight at once.
    var slotCount: Int { get }

    func prepare(slot: Int32, descriptor: FileDescriptor, mode: SyncMode)
    func submit(_ slots: UnsafeBufferPointer<Int32>) -> SubmitOutcome
    /// Blocks until at least one request completes, ``wake()`` is called, or a safety timeout
    /// passes; appends what completed. `active` lists the submitted, not yet completed slots when
    /// ``waitsOnList`` is true, and is empty otherwise.
    func waitForCompletions(active: [Int32], blocking: Bool, into completions: inout [Completion]) -> WaitOutcome
    /// Makes a sleeping ``waitForCompletions(active:into:)`` return soon.
    func wake()
    /// Frees every resource; nothing is in flight any more.
    func release()
}
