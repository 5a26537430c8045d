/// The state of one ``AsyncFile``: which operations are admitted, how many are in flight, and the
/// close of its descriptor.
///
/// A plain value, like ``EngineState`` and ``GroupCommitState``: each event is one method that
/// changes it and returns what the caller must do outside the lock (close the descriptor, resume
/// these `close()` callers). It makes no system call and resumes no continuation itself, so every
/// rule below is tested without threads (`AsyncFileStateTests`) and explored exhaustively
/// (`ModelChecks`).
///
/// The rules:
/// - **Admission.** An operation (a write, a sync, a directory sync through the handle) is
///   admitted only while the handle is open, and counted in flight until it ends. Once `close()`
///   began nothing is admitted any more: the caller throws `EBADF` without touching the descriptor,
///   whatever its arguments (a request whose arguments are refused looks at ``admits`` first).
/// - **Close waits.** The descriptor is closed only when no admitted operation is in flight: a
///   `close()` that finds operations in flight waits; the operation that ends last hands the close
///   to the first waiting `close()` caller (``finish()``), whose task closes the descriptor.
/// - **Closed once.** Exactly one caller is ever told to close the descriptor: the first
///   `close()`, or `deinit` of a handle that was never closed (``deinitialize()``). Every other
///   `close()` waits for that close and takes its result, or returns at once after it.
/// - **Cancellation** plays no part: a `close()` runs to its end (its operations are not
///   cancellable once handed to the system either), so the descriptor is always closed.
struct AsyncFileState<CloseWaiter> {
    enum Lifecycle: Equatable {
        /// Operations are admitted.
        case open
        /// `close()` began: nothing is admitted; the descriptor stays open while operations are in
        /// flight.
        case closing
        /// A caller was told to close the descriptor and does so now.
        case closingDescriptor
        /// The descriptor is closed.
        case closed
    }

    private(set) var lifecycle = Lifecycle.open
    /// Admitted operations that have not ended.
    private(set) var inFlight = 0
    /// `close()` callers waiting: for the last operation (the first of them then closes), or for
    /// the caller that closes.
    private var closeWaiters: [CloseWaiter] = []

    init() {}

    // MARK: Operations

    /// An operation asks to use the descriptor. `true`: admitted, counted in flight until
    /// ``finish()``; `false`: refused, the handle is closing or closed.
    mutating func admit() -> Bool {
        guard lifecycle == .open else { return false }
        inFlight += 1
        return true
    }

    /// Whether ``admit()`` would admit an operation now: `false` once `close()` began. A request
    /// whose arguments are refused looks at it first, so that once `close()` began it is refused
    /// as closed, whatever is wrong with it besides.
    var admits: Bool { lifecycle == .open }

    /// An admitted operation ended (whatever its result). Returns the `close()` caller to resume
    /// with the order to close the descriptor, when it was the last operation a `close()` waited
    /// for.
    mutating func finish() -> CloseWaiter? {
        precondition(inFlight > 0, "finish() of an operation that was not admitted")
        inFlight -= 1
        guard lifecycle == .closing, inFlight == 0, !closeWaiters.isEmpty else { return nil }
        lifecycle = .closingDescriptor
        return closeWaiters.removeFirst()
    }

    // MARK: Close

    /// What a `close()` call does first.
    enum CloseStart: Equatable {
        /// Nothing is in flight: close the descriptor now, then ``descriptorClosed()``. The waiter
        /// was not kept.
        case closeNow
        /// Kept: its waiter is resumed later, with the order to close (``finish()``) or with the
        /// close's result (``descriptorClosed()``).
        case wait
        /// The descriptor is closed already: return at once. The waiter was not kept.
        case alreadyClosed
    }

    /// A `close()` call begins, with its waiter (kept only for ``CloseStart/wait``).
    mutating func close(waiter: CloseWaiter) -> CloseStart {
        switch lifecycle {
        case .open:
            if inFlight == 0 {
                lifecycle = .closingDescriptor
                return .closeNow
            }
            lifecycle = .closing
            closeWaiters.append(waiter)
            return .wait
        case .closing, .closingDescriptor:
            closeWaiters.append(waiter)
            return .wait
        case .closed:
            return .alreadyClosed
        }
    }

    /// The caller told to close (``CloseStart/closeNow``, a waiter resumed by ``finish()``, or
    /// ``deinitialize()``) has closed the descriptor. Returns the other `close()` callers, to be
    /// resumed with the close's result.
    mutating func descriptorClosed() -> [CloseWaiter] {
        precondition(lifecycle == .closingDescriptor, "descriptorClosed() without a close")
        lifecycle = .closed
        defer { closeWaiters = [] }
        return closeWaiters
    }

    /// The handle is being deinitialized (no task holds it: no operation and no `close()` can be
    /// running). Returns whether the descriptor must be closed now: it was never closed.
    mutating func deinitialize() -> Bool {
        precondition(inFlight == 0 && closeWaiters.isEmpty, "deinit while the handle is in use")
        guard lifecycle == .open else { return false }
        lifecycle = .closed
        return true
    }

    // MARK: Introspection

    /// `close()` callers waiting.
    var closeWaiterCount: Int { closeWaiters.count }
}

// The model checks keep states in a set.
extension AsyncFileState: Equatable, Hashable where CloseWaiter: Hashable {}
