import SystemPackage

/// A request waiting in an engine: one `sync` call.
struct Waiter {
    var id: UInt64
    var descriptor: FileDescriptor
    var mode: SyncMode
    var continuation: UnsafeContinuation<Void, any Error>
    /// ``FailureLedger/stamp()`` at arrival (the in-flight rule).
    var arrival: UInt64
    /// The file's identity, taken when the request could not be handed to the system at once; it
    /// is compared with the descriptor's file before the sync is submitted (a descriptor closed
    /// and reused meanwhile names another file). `nil` when `statx(2)` failed: then the system
    /// reports the descriptor's own error.
    var identity: FileIdentity?
    var identityTaken: Bool
    /// It has no cancellation handler (it looked as if it would be handed to the system at once):
    /// its task is kept aside (``EngineState``, by node) and looked at for a cancellation when its
    /// batch is taken into a slot after waiting, whether it waited from its arrival or was put
    /// back by an `EAGAIN`. (A plain flag: a task reference here would make every copy of a waiter
    /// a call into the runtime.)
    var checksCancellation = false
}

/// The requests of one descriptor that one sync will serve.
struct Batch {
    var descriptor: CInt = -1
    /// ``SyncMode/fsync`` if any waiter asked for it.
    var mode: SyncMode = .fdatasync
    var first: Int32 = -1
    var last: Int32 = -1
    var count = 0
    /// The slot it holds, or -1 while it waits.
    var slot: Int32 = -1
    /// Handed to the system, so that its completion may be looked for (POSIX aio, whose control
    /// blocks are only watched once `aio_fsync(3)` accepted them; kernel AIO reports completions
    /// of any slot in use, possibly before the submitter has returned from `io_submit(2)`).
    var submitted = false
    var interruptedRetries: UInt8 = 0
    /// Some waiter carries an identity to compare before submission.
    var needsIdentityCheck = false
    /// Some waiter has no cancellation handler (see ``Waiter/task``).
    var checksCancellation = false
    /// The slot whose sync of the same open file description it waits for (-1: none).
    var waitsForSlot: Int32 = -1
}

/// The state of one ``AIOEngine``: requests, per-descriptor batches, slots, the submitter role and
/// the engine's life. A plain value: every event is a method that changes it and says what the
/// caller must do next, outside the lock (resume continuations, submit, ask the completion thread
/// to release the driver). It makes no system call and touches no other object.
///
/// **Per-descriptor batching.** At most one sync per descriptor is in the system at a time. A
/// request for a descriptor whose sync is running joins the descriptor's *next* batch, which is
/// submitted when the running one completes and serves every request that joined it. So:
/// - a request is only ever served by a sync that started after it arrived;
/// - N concurrent requests on one descriptor need far fewer than N syncs.
///
/// **One sync per open file description.** Descriptor numbers are not open file descriptions:
/// `dup(2)`, inheritance or `SCM_RIGHTS` give one open file description several numbers, and the
/// kernel reports a writeback error once per open file description. A batch taken into a slot while
/// other slots are in use (``Prepared/checksDescription``) is compared with the slots taken before
/// it: the caller identifies the files (``unidentifiedSlots(into:)``, ``identified(_:as:)``), asks
/// `kcmp(2)` about the slots of the same file (``sharingCandidates(of:into:)``) and reports the
/// answer (``described(_:sharesDescriptionWith:)``). A batch that shares its open file description
/// with an earlier slot in use gives its slot back and waits, as its descriptor's next batch, until
/// that slot is free; so two syncs of one open file description never run at once, and the kernel
/// cannot report one writeback error to one of them and `0` to the other. A batch taken while no
/// other slot is in use has nothing to compare with: the hot path makes no system call for this.
///
/// **Life.** `accepting` → (`beginShutdown`) `draining`: new requests are refused, accepted ones
/// complete → `releasing`, once nothing is outstanding and nobody holds the submitter role: the
/// action ``Release/release`` is returned exactly once, and the completion thread frees the
/// driver → `released`.
struct EngineState {
    enum Lifecycle: Equatable {
        case accepting, draining, releasing, released
    }

    /// Returned by the events that may end a drain.
    enum Release: Equatable {
        case none
        /// Nothing is outstanding during a shutdown: the driver may be freed now (once).
        case release
    }

    let slotCount: Int
    private(set) var lifecycle = Lifecycle.accepting
    /// The errno of a broken completion source; every later request fails with it.
    private(set) var brokenErrno: Errno?

    /// The batch in each slot; -1 free; ``revoked`` when the completion source broke while a
    /// submitter held the slot (its outcome is ignored from then on).
    private var slotBatch: [Int32]
    private static var revoked: Int32 { -2 }
    private var freeSlots: [Int32]
    private var batches: [Batch] = []
    private var freeBatches: [Int32] = []
    private var waiters: [Waiter?] = []
    private var nextWaiter: [Int32] = []
    private var freeWaiters: [Int32] = []
    /// Per waiter node: the task of a waiter without a cancellation handler (nil otherwise).
    private var waiterTasks: [UnsafeCurrentTask?] = []
    /// Per descriptor: the batch in a slot and the batch that new requests join.
    private var descriptors = DescriptorTable()
    /// Batches without a running sync of their descriptor, waiting for a slot, in arrival order.
    private var ready = Int32Queue()
    /// Batches that wait for a slot whose sync shares their open file description
    /// (``Batch/waitsForSlot``); each is its descriptor's next batch, not in ``ready``.
    private var parked: [Int32] = []
    /// Per slot: when it was taken (in order; 0 while free), and its file once identified.
    private var slotTicket: [UInt64]
    private var slotIdentity: [SlotIdentity]
    private var nextTicket: UInt64 = 1

    enum SlotIdentity: Equatable {
        case unknown
        /// `nil`: `statx(2)` failed (compared with every slot, by `kcmp(2)`).
        case known(FileIdentity?)
    }

    /// `blockedOnResources` waits for a completion of the engine's writes (no sync was in flight).
    private var blockedElsewhere = false

    /// A completion of another kind of request of the same context (a write) freed resources.
    mutating func resourcesFreed() {
        blockedOnResources = false
        blockedElsewhere = false
    }

    /// A thread holds the submitter role.
    private(set) var submitting = false
    /// `EAGAIN` at submission: nothing is submitted until a completion frees resources.
    private(set) var blockedOnResources = false
    /// Requests in the engine (waiting or in a slot).
    private(set) var outstanding = 0
    /// Slots taken.
    private(set) var slotsInUse = 0
    /// Requests refused at submission that the backend hands to another path (a ``LibaioBackend``
    /// serves a file system without AIO fsync through POSIX aio): a drain waits for them too.
    private(set) var inTransit = 0

    init(slotCount: Int) {
        precondition(slotCount > 0)
        self.slotCount = slotCount
        slotBatch = Array(repeating: -1, count: slotCount)
        slotTicket = Array(repeating: 0, count: slotCount)
        slotIdentity = Array(repeating: .unknown, count: slotCount)
        freeSlots = (0..<Int32(slotCount)).reversed()
        batches.reserveCapacity(slotCount)
        waiters.reserveCapacity(slotCount)
        nextWaiter.reserveCapacity(slotCount)
    }

    // MARK: Arrival

    enum ArrivalRefusal: Equatable {
        case shutDown
        case broken(Errno)
        case cancelled
    }

    /// Why a request arriving now is refused, whichever path of the backend it takes (the engine,
    /// the inline path, the POSIX fallback): the broken source's errno, which outlives the drain
    /// and the release it started, else a shutdown; `nil` while requests are accepted.
    var refusal: ArrivalRefusal? {
        if let brokenErrno { return .broken(brokenErrno) }
        return lifecycle == .accepting ? nil : .shutDown
    }

    /// Whether the completion source is to be looked at. Not once it broke: every waiter had its
    /// answer then, so another look could find nothing to do; it is no progress, and the completion
    /// thread may park while the engine waits for a request in transit (``endTransit()`` ends the
    /// drain and asks for the release, which wakes it).
    var reapsCompletions: Bool { brokenErrno == nil }

    enum Arrival {
        case refused(ArrivalRefusal)
        /// The request will wait (for its descriptor's running sync, or for a slot): take the
        /// file's identity outside the lock and arrive again with it.
        case needsIdentity
        /// Joined a batch; someone else submits it.
        case queued
        /// Joined a batch that is ready, and the caller now holds the submitter role: call
        /// ``takeBatches(into:)`` until it returns nothing.
        case submit
    }

    /// A request arrives. `onCompletionThread`: the caller runs on this engine's completion
    /// thread, which submits after its jobs (so the requests of every task it resumed go to the
    /// system together): the caller never takes the submitter role.
    ///
    /// `admitted`: the request was accepted earlier and waited elsewhere (a sync held for the
    /// writes before it, or the sync of a durable write whose write completed): a shutdown begun
    /// meanwhile does not refuse it (a drain completes what was accepted); a broken source does.
    mutating func arrive(_ waiter: Waiter, isCancelled: Bool, onCompletionThread: Bool, task: UnsafeCurrentTask? = nil,
                         admitted: Bool = false) -> Arrival {
        if let refusal, !(admitted && refusal == .shutDown) { return .refused(refusal) }
        if isCancelled { return .refused(.cancelled) }
        let fd = waiter.descriptor.rawValue
        let entry = descriptors[fd] ?? (-1, -1)
        let batch: Int32
        if entry.next >= 0 {
            guard waiter.identityTaken else { return .needsIdentity }
            batch = entry.next
        } else {
            let waits = entry.running >= 0 || blockedOnResources || ready.count >= freeSlots.count
            if waits, !waiter.identityTaken { return .needsIdentity }
            batch = makeBatch(fd)
            descriptors[fd] = (entry.running, batch)
            if entry.running < 0 { ready.append(batch) }
        }
        let node = append(waiter, to: batch)
        if waiter.checksCancellation { waiterTasks[Int(node)] = task }
        outstanding += 1
        guard entry.running < 0, !submitting, !onCompletionThread else { return .queued }
        submitting = true
        return .submit
    }

    /// Whether a request for `fd` arriving now would be handed to the system at once (its
    /// descriptor is idle and a slot is free): then it needs no cancellation handler, whose
    /// installation costs more than the rest of the request's path in this library.
    func handsOverAtOnce(_ fd: CInt) -> Bool {
        lifecycle == .accepting && descriptors[fd] == nil && !blockedOnResources && ready.count < freeSlots.count
    }

    /// Takes the submitter role if it is free and there is something to submit (the completion
    /// thread after its jobs or a completion).
    mutating func takeSubmitterRole() -> Bool {
        guard !submitting, !blockedOnResources, !ready.isEmpty, !freeSlots.isEmpty else { return false }
        submitting = true
        return true
    }

    // MARK: Submission (holder of the submitter role)

    struct Prepared {
        var slot: Int32
        var descriptor: CInt
        var mode: SyncMode
        var needsIdentityCheck: Bool
        /// Other slots were in use when it was taken: it may share its open file description with
        /// one of them, so it is submitted only after ``described(_:sharesDescriptionWith:)``.
        var checksDescription = false
        /// When its slot was taken (``SlotRef/ticket``).
        var ticket: UInt64 = 0

        var ref: SlotRef { SlotRef(slot: slot, ticket: ticket, descriptor: descriptor) }
    }

    /// Moves ready batches into free slots and appends them to `prepared`; the caller prepares each
    /// control block under the same lock and submits them after it. With nothing to take, gives up
    /// the submitter role and returns what that means for a drain.
    mutating func takeBatches(into prepared: inout [Prepared], cancelled: inout [Waiter]) -> Release {
        precondition(submitting)
        while !blockedOnResources, let slot = freeSlots.last, let batch = ready.popFirst() {
            let fd = batches[Int(batch)].descriptor
            if batches[Int(batch)].checksCancellation, dropCancelled(batch, into: &cancelled) {
                descriptors[fd] = nil  // it was the descriptor's next batch, with nothing running
                freeBatch(batch)
                continue
            }
            freeSlots.removeLast()
            let checksDescription = slotsInUse > 0
            batches[Int(batch)].slot = slot
            slotBatch[Int(slot)] = batch
            slotTicket[Int(slot)] = nextTicket
            slotIdentity[Int(slot)] = .unknown
            nextTicket += 1
            slotsInUse += 1
            descriptors[fd] = (batch, -1)
            prepared.append(Prepared(slot: slot, descriptor: fd, mode: batches[Int(batch)].mode,
                                     needsIdentityCheck: batches[Int(batch)].needsIdentityCheck,
                                     checksDescription: checksDescription, ticket: slotTicket[Int(slot)]))
        }
        guard prepared.isEmpty else { return .none }
        submitting = false
        return drainCheck()
    }

    /// Removes the waiters of `batch` whose task was cancelled (they wait without a handler);
    /// returns whether the batch is empty now.
    private mutating func dropCancelled(_ batch: Int32, into cancelled: inout [Waiter]) -> Bool {
        var previous: Int32 = -1
        var index = batches[Int(batch)].first
        while index >= 0 {
            let next = nextWaiter[Int(index)]
            if let task = waiterTasks[Int(index)], task.isCancelled {
                cancelled.append(unlink(index, previous: previous, from: batch))
            } else {
                previous = index
            }
            index = next
        }
        if batches[Int(batch)].count > 0 { batches[Int(batch)].mode = strongestMode(of: batch) }
        batches[Int(batch)].checksCancellation = false  // looked at when it is handed over (again after an EAGAIN)
        return batches[Int(batch)].count == 0
    }

    /// Before submission: removes the waiters of `slot`'s batch whose file is not the one its
    /// descriptor names now (`current`; nil when it could not be identified), appending them to
    /// `mismatched` (they fail with `EBADF`). Returns whether the batch is now empty: then its
    /// slot has been freed and it must not be submitted.
    mutating func dropMismatched(slot: Int32, current: FileIdentity?, into mismatched: inout [Waiter]) -> Bool {
        let batch = slotBatch[Int(slot)]
        guard batch >= 0 else { return true }  // revoked: nothing to submit
        var previous: Int32 = -1
        var index = batches[Int(batch)].first
        while index >= 0 {
            let next = nextWaiter[Int(index)]
            if let identity = waiters[Int(index)]!.identity, identity != current {
                mismatched.append(unlink(index, previous: previous, from: batch))
            } else {
                previous = index
            }
            index = next
        }
        guard batches[Int(batch)].count == 0 else {
            batches[Int(batch)].mode = strongestMode(of: batch)
            return false
        }
        finishSlot(slot)
        return true
    }

    /// `slots` were handed to the system (only needed by a driver that watches submitted control
    /// blocks: a slot is freed only by its completion, which such a driver sees only after this).
    mutating func submitted(_ slots: UnsafeBufferPointer<Int32>) {
        for slot in slots where slotBatch[Int(slot)] >= 0 { batches[Int(slotBatch[Int(slot)])].submitted = true }
    }

    /// The system refused `slot`'s sync (EBADF, EINVAL, …): its waiters fail with that errno.
    /// Returns what that means for a drain (the holder of the submitter role finds out when it
    /// gives the role up; a resubmission after EINTR holds no role, so it is told here).
    /// With `handOff`, the waiters stay counted (``inTransit``) until ``endTransit()``.
    mutating func refused(slot: Int32, handOff: Bool = false, into failed: inout [Waiter]) -> Release {
        guard slotBatch[Int(slot)] >= 0 else { return drainCheck() }  // revoked
        let before = failed.count
        takeWaiters(of: slotBatch[Int(slot)], into: &failed)
        if handOff { inTransit += failed.count - before }
        finishSlot(slot)
        return drainCheck()
    }

    /// A request handed to another path at its refusal has its answer.
    mutating func endTransit() -> Release {
        endTransit(count: 1)
    }

    /// `count` requests counted by ``beginTransit()`` (or handed off at a refusal) have their
    /// answer, or have arrived in this machine.
    mutating func endTransit(count: Int) -> Release {
        precondition(inTransit >= count)
        inTransit -= count
        return drainCheck()
    }

    /// A request this machine does not hold is accepted by the engine (a write, a sync held for
    /// the writes before it, the write submitter role): a drain waits for it until
    /// ``endTransit(count:)``. The caller has checked ``refusal``.
    mutating func beginTransit() {
        inTransit += 1
    }

    /// The system is out of resources (`EAGAIN`) for `slots`. With other syncs in flight, their
    /// batches go back to the front of the ready queue and nothing is submitted until a
    /// completion; with none in flight no completion would come, so their waiters fail (appended
    /// to `failed`).
    ///
    /// `othersElsewhere`: the engine's writes are in flight in the same context (their completion
    /// frees resources too: ``resourcesFreed()``).
    mutating func exhausted(_ slots: UnsafeBufferPointer<Int32>, into failed: inout [Waiter], othersElsewhere: Bool = false) -> Release {
        let slots = slots.filter { slotBatch[Int($0)] >= 0 }  // not revoked
        let othersInFlight = slotsInUse > slots.count || othersElsewhere
        if othersElsewhere, slotsInUse == slots.count { blockedElsewhere = true }
        for slot in slots.reversed() {
            let batch = slotBatch[Int(slot)]
            if !othersInFlight {
                takeWaiters(of: batch, into: &failed)
                finishSlot(slot)
                continue
            }
            let fd = batches[Int(batch)].descriptor
            vacate(slot)
            batches[Int(batch)].slot = -1
            batches[Int(batch)].submitted = false
            let entry = descriptors[fd]!
            if entry.next >= 0 {
                // Requests that arrived while it was being submitted: nothing was submitted, so one
                // batch serves all of them, still only with a sync that starts after each arrived.
                merge(entry.next, into: batch)
            }
            descriptors[fd] = (-1, batch)
            ready.prepend(batch)
        }
        if othersInFlight {
            blockedOnResources = true
            // Every ready batch waits for a completion now, also those whose waiters have no
            // cancellation handler because they were about to be handed over: look at them again.
            ready.forEach { batches[Int($0)].checksCancellation = true }
        }
        return drainCheck()
    }

    // MARK: Completion (the completion thread)

    enum Completed {
        /// `EINTR`: the sync did not run to its end; submit the slot again.
        case retry
        /// The batch is done; its waiters were appended.
        case finished
        /// Not a slot in use (a stale or foreign event).
        case unknown
    }

    static var maximumInterruptedRetries: UInt8 { 16 }

    /// The system reported `slot`'s result. On `.finished` the batch's waiters are appended to
    /// `done`, the slot is free and the descriptor's next batch (if any) is ready.
    mutating func completed(slot: Int32, result: Result<Void, Errno>, into done: inout [Waiter]) -> Completed {
        guard slot >= 0, Int(slot) < slotCount else { return .unknown }
        let batch = slotBatch[Int(slot)]
        guard batch >= 0 else { return .unknown }
        if case .failure(.interrupted) = result,
           batches[Int(batch)].interruptedRetries < Self.maximumInterruptedRetries {
            batches[Int(batch)].interruptedRetries += 1
            batches[Int(batch)].submitted = false
            return .retry
        }
        takeWaiters(of: batch, into: &done)
        finishSlot(slot)
        resourcesFreed()
        return .finished
    }

    /// After a batch of completions: whether a drain has ended.
    mutating func afterCompletions() -> Release {
        drainCheck()
    }

    /// The completion source broke: every waiter fails with `errno`, later requests too, and the
    /// engine drains. Slots a submitter holds are revoked: whatever the system then says of them is
    /// ignored (their waiters have their answer).
    mutating func broken(_ errno: Errno, into failed: inout [Waiter]) -> Release {
        brokenErrno = errno
        if lifecycle == .accepting { lifecycle = .draining }
        for slot in 0..<Int32(slotCount) where slotBatch[Int(slot)] >= 0 {
            let batch = slotBatch[Int(slot)]
            takeWaiters(of: batch, into: &failed)
            freeBatch(batch)
            slotBatch[Int(slot)] = Self.revoked
            slotsInUse -= 1
        }
        for (_, entry) in descriptors.entries where entry.next >= 0 {
            takeWaiters(of: entry.next, into: &failed)
            freeBatch(entry.next)
        }
        descriptors.removeAll()
        ready.removeAll()
        parked.removeAll()
        blockedOnResources = false
        return drainCheck()
    }

    /// The slots handed to the system whose completion is awaited (the POSIX driver watches them).
    func submittedSlots(into list: inout [Int32]) {
        for slot in 0..<Int32(slotCount) where slotBatch[Int(slot)] >= 0 && batches[Int(slotBatch[Int(slot)])].submitted {
            list.append(slot)
        }
    }

    // MARK: One sync per open file description (the holder of the submitter role)

    /// A slot as it was taken: its `ticket` tells a later taking of the same slot apart.
    struct SlotRef: Equatable {
        var slot: Int32
        var ticket: UInt64
        var descriptor: CInt
    }

    /// Appends the slots in use whose file has not been identified yet (the ones just taken, and
    /// one taken while no other slot was in use): identify each (`statx(2)`, outside the lock) and
    /// report it with ``identified(_:as:)``.
    func unidentifiedSlots(into list: inout [SlotRef]) {
        for slot in 0..<Int32(slotCount) where slotBatch[Int(slot)] >= 0 && slotIdentity[Int(slot)] == .unknown {
            list.append(SlotRef(slot: slot, ticket: slotTicket[Int(slot)], descriptor: batches[Int(slotBatch[Int(slot)])].descriptor))
        }
    }

    /// The file of `ref`'s descriptor (`nil`: it could not be identified). Ignored if the slot was
    /// freed meanwhile.
    mutating func identified(_ ref: SlotRef, as identity: FileIdentity?) {
        guard isCurrent(ref) else { return }
        slotIdentity[Int(ref.slot)] = .known(identity)
    }

    /// The file ``identified(_:as:)`` recorded for `ref` (`nil` if none, or unknown).
    func identity(of ref: SlotRef) -> FileIdentity? {
        guard isCurrent(ref), case .known(let identity) = slotIdentity[Int(ref.slot)] else { return nil }
        return identity
    }

    /// Appends the slots in use, taken before `ref`, that may share its open file description: those
    /// of the same file, and every one when either file is unknown. Ask `kcmp(2)` about each (outside
    /// the lock) and report with ``described(_:sharesDescriptionWith:)``.
    func sharingCandidates(of ref: SlotRef, into list: inout [SlotRef]) {
        guard isCurrent(ref) else { return }
        let own = slotIdentity[Int(ref.slot)]
        for slot in 0..<Int32(slotCount) where slot != ref.slot && slotBatch[Int(slot)] >= 0 && slotTicket[Int(slot)] < ref.ticket {
            switch (own, slotIdentity[Int(slot)]) {
            case (.known(let a?), .known(let b?)) where a != b: continue
            default: break
            }
            list.append(SlotRef(slot: slot, ticket: slotTicket[Int(slot)], descriptor: batches[Int(slotBatch[Int(slot)])].descriptor))
        }
    }

    enum Description: Equatable {
        /// No earlier slot in use shares its open file description: submit it.
        case submit
        /// It shares one with a slot in use: its slot was given back, and it waits, as its
        /// descriptor's next batch, until that slot is free.
        case waits
        /// The slot is not `ref`'s any more (a broken completion source revoked it): nothing to submit.
        case gone
    }

    /// `peers` (from ``sharingCandidates(of:into:)``) share `ref`'s open file description (or
    /// `kcmp(2)` could not tell). The rule: a batch whose open file description has a sync in a slot
    /// waits until that slot is free.
    mutating func described(_ ref: SlotRef, sharesDescriptionWith peers: [SlotRef]) -> Description {
        guard isCurrent(ref) else { return .gone }
        guard let peer = peers.first(where: { isCurrent($0) && $0.ticket < ref.ticket }) else { return .submit }
        let batch = slotBatch[Int(ref.slot)]
        let fd = batches[Int(batch)].descriptor
        vacate(ref.slot)
        batches[Int(batch)].slot = -1
        batches[Int(batch)].submitted = false
        // Requests that arrived meanwhile joined the descriptor's next batch: nothing was submitted,
        // so one batch serves all of them, with a sync that starts after each arrived.
        if let next = descriptors[fd]?.next, next >= 0 { merge(next, into: batch) }
        descriptors[fd] = (-1, batch)
        batches[Int(batch)].waitsForSlot = peer.slot
        // Its waiters without a cancellation handler wait now: looked at when it is taken again.
        batches[Int(batch)].checksCancellation = true
        parked.append(batch)
        return .waits
    }

    private func isCurrent(_ ref: SlotRef) -> Bool {
        ref.slot >= 0 && Int(ref.slot) < slotCount && slotBatch[Int(ref.slot)] >= 0 && slotTicket[Int(ref.slot)] == ref.ticket
    }

    // MARK: Cancellation

    /// Removes the request `id` on `descriptor` if it still waits (its batch has no slot yet).
    mutating func cancel(id: UInt64, descriptor: CInt) -> (Waiter?, Release) {
        guard let entry = descriptors[descriptor], entry.next >= 0 else { return (nil, .none) }
        let batch = entry.next
        var previous: Int32 = -1
        var index = batches[Int(batch)].first
        while index >= 0, waiters[Int(index)]!.id != id {
            previous = index
            index = nextWaiter[Int(index)]
        }
        guard index >= 0 else { return (nil, .none) }
        let waiter = unlink(index, previous: previous, from: batch)
        if batches[Int(batch)].count == 0 {
            if entry.running < 0 {
                if batches[Int(batch)].waitsForSlot >= 0 {
                    parked.removeAll { $0 == batch }
                } else {
                    ready.remove(batch)
                }
                descriptors[descriptor] = nil
            } else {
                descriptors[descriptor] = (entry.running, -1)
            }
            freeBatch(batch)
        } else {
            batches[Int(batch)].mode = strongestMode(of: batch)
        }
        return (waiter, drainCheck())
    }

    // MARK: Shutdown

    /// Refuses new requests from now on; `.release` when nothing is outstanding.
    mutating func beginShutdown() -> Release {
        if lifecycle == .accepting { lifecycle = .draining }
        return drainCheck()
    }

    /// The completion thread freed the driver.
    mutating func released() {
        precondition(lifecycle == .releasing)
        lifecycle = .released
    }

    // MARK: Introspection

    /// Requests waiting for a batch of their descriptor or for a slot.
    var waitingCount: Int {
        var count = 0
        for (_, entry) in descriptors.entries where entry.next >= 0 { count += batches[Int(entry.next)].count }
        return count
    }

    /// The state in one line (tests and failure reports).
    var summary: String {
        var perDescriptor: [String] = []
        for (fd, entry) in descriptors.entries.sorted(by: { $0.0 < $1.0 }) {
            let running = entry.running >= 0 ? "running \(batches[Int(entry.running)].count) in slot \(batches[Int(entry.running)].slot)\(batches[Int(entry.running)].submitted ? " submitted" : "")" : "idle"
            let next = entry.next >= 0 ? ", next \(batches[Int(entry.next)].count)" : ""
            perDescriptor.append("fd \(fd): \(running)\(next)")
        }
        return "\(lifecycle), outstanding \(outstanding), in transit \(inTransit), slots in use \(slotsInUse)/\(slotCount), ready \(ready.count), "
            + (parked.isEmpty ? "" : "waiting for their open file description \(parked.count), ")
            + "submitting \(submitting), blocked \(blockedOnResources); " + perDescriptor.joined(separator: "; ")
    }

    /// The ids of the requests whose sync `slot` holds (the model checker notes them at each
    /// submission).
    func waiterIDs(inSlot slot: Int32) -> [UInt64] {
        let batch = slotBatch[Int(slot)]
        guard batch >= 0 else { return [] }
        var ids: [UInt64] = []
        var index = batches[Int(batch)].first
        while index >= 0 {
            ids.append(waiters[Int(index)]!.id)
            index = nextWaiter[Int(index)]
        }
        return ids
    }

    /// Everything the state holds, in one canonical line: the model checker's key for a state it
    /// has explored. Batches are written by their contents (not by their index in the pool), so
    /// two states that differ only in how the pools were reused are one state.
    var fingerprint: String {
        func text(_ batch: Int32) -> String {
            guard batch >= 0 else { return batch == Self.revoked ? "R" : "-" }
            let value = batches[Int(batch)]
            var ids = ""
            var index = value.first
            while index >= 0 {
                let waiter = waiters[Int(index)]!
                ids += "\(waiter.id)\(waiter.identityTaken ? "i" : "")\(waiter.checksCancellation ? "x" : ""),"
                index = nextWaiter[Int(index)]
            }
            return "[\(value.descriptor):\(ids)\(value.mode == .fsync ? "F" : "D")\(value.submitted ? "S" : "")"
                + "\(value.interruptedRetries)\(value.needsIdentityCheck ? "C" : "")\(value.checksCancellation ? "X" : "")]"
        }
        var line = "\(lifecycle) \(brokenErrno?.rawValue ?? 0) \(submitting) \(blockedOnResources) \(outstanding) \(inTransit) \(slotsInUse)|"
        line += slotBatch.map(text).joined(separator: ";") + "|" + freeSlots.map { String($0) }.joined(separator: ",") + "|"
        for (fd, entry) in descriptors.entries.sorted(by: { $0.0 < $1.0 }) {
            line += "\(fd)\(entry.running >= 0 ? "r" : "")\(text(entry.next));"
        }
        line += "|"
        ready.forEach { line += text($0) }
        return line
    }

    // MARK: Internals

    private mutating func drainCheck() -> Release {
        guard lifecycle == .draining, outstanding == 0, inTransit == 0, !submitting else { return .none }
        precondition(slotsInUse == 0 && ready.isEmpty)
        lifecycle = .releasing
        return .release
    }

    /// Marks `slot` free; the batches that waited for it (same open file description) are ready.
    private mutating func vacate(_ slot: Int32) {
        slotBatch[Int(slot)] = -1
        slotTicket[Int(slot)] = 0
        slotIdentity[Int(slot)] = .unknown
        freeSlots.append(slot)
        slotsInUse -= 1
        guard !parked.isEmpty else { return }
        parked.removeAll { batch in
            guard batches[Int(batch)].waitsForSlot == slot else { return false }
            batches[Int(batch)].waitsForSlot = -1
            ready.append(batch)
            return true
        }
    }

    /// Frees `slot` and its batch; makes the descriptor's next batch ready.
    private mutating func finishSlot(_ slot: Int32) {
        let batch = slotBatch[Int(slot)]
        let fd = batches[Int(batch)].descriptor
        vacate(slot)
        // Waiting for a completion makes sense only while something is in flight.
        if slotsInUse == 0, !blockedElsewhere { blockedOnResources = false }
        freeBatch(batch)
        let next = descriptors[fd]?.next ?? -1
        if next >= 0 {
            descriptors[fd] = (-1, next)
            ready.append(next)
        } else {
            descriptors[fd] = nil
        }
    }

    private mutating func makeBatch(_ fd: CInt) -> Int32 {
        let index: Int32
        if let free = freeBatches.popLast() {
            index = free
        } else {
            index = Int32(batches.count)
            batches.append(Batch())
        }
        batches[Int(index)] = Batch(descriptor: fd)
        return index
    }

    private mutating func freeBatch(_ batch: Int32) {
        batches[Int(batch)] = Batch()
        freeBatches.append(batch)
    }

    @discardableResult
    private mutating func append(_ waiter: Waiter, to batch: Int32) -> Int32 {
        let index: Int32
        if let free = freeWaiters.popLast() {
            index = free
            waiters[Int(index)] = waiter
            nextWaiter[Int(index)] = -1
        } else {
            index = Int32(waiters.count)
            waiters.append(waiter)
            nextWaiter.append(-1)
            waiterTasks.append(nil)
        }
        if batches[Int(batch)].last >= 0 {
            nextWaiter[Int(batches[Int(batch)].last)] = index
        } else {
            batches[Int(batch)].first = index
        }
        batches[Int(batch)].last = index
        batches[Int(batch)].count += 1
        if waiter.mode == .fsync { batches[Int(batch)].mode = .fsync }
        if waiter.identity != nil { batches[Int(batch)].needsIdentityCheck = true }
        // One that waits from its arrival (it took its file's identity) is looked at.
        if waiter.checksCancellation, waiter.identityTaken { batches[Int(batch)].checksCancellation = true }
        return index
    }

    /// Removes waiter `index` (whose predecessor is `previous`) from `batch` and frees its node.
    private mutating func unlink(_ index: Int32, previous: Int32, from batch: Int32) -> Waiter {
        let next = nextWaiter[Int(index)]
        if previous >= 0 { nextWaiter[Int(previous)] = next } else { batches[Int(batch)].first = next }
        if batches[Int(batch)].last == index { batches[Int(batch)].last = previous }
        batches[Int(batch)].count -= 1
        outstanding -= 1
        let waiter = waiters[Int(index)]!
        waiterTasks[Int(index)] = nil
        waiters[Int(index)] = nil
        freeWaiters.append(index)
        return waiter
    }

    private mutating func takeWaiters(of batch: Int32, into list: inout [Waiter]) {
        var index = batches[Int(batch)].first
        while index >= 0 {
            waiterTasks[Int(index)] = nil
            list.append(waiters[Int(index)]!)
            waiters[Int(index)] = nil
            freeWaiters.append(index)
            outstanding -= 1
            index = nextWaiter[Int(index)]
        }
        batches[Int(batch)].first = -1
        batches[Int(batch)].last = -1
        batches[Int(batch)].count = 0
    }

    /// Appends `source`'s waiters to `target` and frees `source`.
    private mutating func merge(_ source: Int32, into target: Int32) {
        var index = batches[Int(source)].first
        while index >= 0 {
            let next = nextWaiter[Int(index)]
            nextWaiter[Int(index)] = -1
            if batches[Int(target)].last >= 0 {
                nextWaiter[Int(batches[Int(target)].last)] = index
            } else {
                batches[Int(target)].first = index
            }
            batches[Int(target)].last = index
            batches[Int(target)].count += 1
            index = next
        }
        if batches[Int(source)].mode == .fsync { batches[Int(target)].mode = .fsync }
        if batches[Int(source)].needsIdentityCheck { batches[Int(target)].needsIdentityCheck = true }
        if batches[Int(source)].checksCancellation { batches[Int(target)].checksCancellation = true }
        freeBatch(source)
    }

    private func strongestMode(of batch: Int32) -> SyncMode {
        var index = batches[Int(batch)].first
        while index >= 0 {
            if waiters[Int(index)]!.mode == .fsync { return .fsync }
            index = nextWaiter[Int(index)]
        }
        return .fdatasync
    }
}

/// A FIFO of batch indexes with removal from the middle (cancellation) and push to the front
/// (EAGAIN). Reuses its storage: no allocation in steady state.
struct Int32Queue {
    private var storage: [Int32] = []
    private var head = 0

    var count: Int { storage.count - head }
    var isEmpty: Bool { head == storage.count }

    mutating func append(_ value: Int32) { storage.append(value) }

    mutating func prepend(_ value: Int32) {
        if head > 0 {
            head -= 1
            storage[head] = value
        } else {
            storage.insert(value, at: 0)
        }
    }

    mutating func popFirst() -> Int32? {
        guard head < storage.count else { return nil }
        let value = storage[head]
        head += 1
        if head == storage.count {
            storage.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= 1024, head * 2 >= storage.count {
            storage.removeFirst(head)
            head = 0
        }
        return value
    }

    mutating func remove(_ value: Int32) {
        guard let index = storage[head...].firstIndex(of: value) else { return }
        storage.remove(at: index)
        if head == storage.count {
            storage.removeAll(keepingCapacity: true)
            head = 0
        }
    }

    mutating func removeAll() {
        storage.removeAll(keepingCapacity: true)
        head = 0
    }

    func forEach(_ body: (Int32) -> Void) {
        for value in storage[head...] { body(value) }
    }
}

/// Per descriptor number: the batch in a slot and the batch new requests join (-1: none). Numbers
/// below 65 536 index an array that grows to the largest one used (no hashing on the hot path);
/// larger ones go to a dictionary.
struct DescriptorTable {
    typealias Entry = (running: Int32, next: Int32)
    static var directLimit: CInt { 65_536 }
    private var direct: [Entry] = []
    private var overflow: [CInt: Entry] = [:]

    subscript(fd: CInt) -> Entry? {
        @inline(__always) get {
            if fd >= 0, fd < Self.directLimit {
                guard Int(fd) < direct.count else { return nil }
                let entry = direct[Int(fd)]
                return entry.running < 0 && entry.next < 0 ? nil : entry
            }
            return overflow[fd]
        }
        @inline(__always) set {
            if fd >= 0, fd < Self.directLimit {
                if Int(fd) >= direct.count {
                    guard newValue != nil else { return }
                    let size = Swift.max(Int(fd) + 1, Swift.min(Int(Self.directLimit), Swift.max(64, direct.count * 2)))
                    direct.append(contentsOf: repeatElement(Entry(running: -1, next: -1), count: size - direct.count))
                }
                direct[Int(fd)] = newValue ?? (-1, -1)
            } else {
                overflow[fd] = newValue
            }
        }
    }

    /// Every descriptor with a batch (rare paths: a broken source, introspection).
    var entries: [(CInt, Entry)] {
        var all: [(CInt, Entry)] = []
        for (index, entry) in direct.enumerated() where entry.running >= 0 || entry.next >= 0 {
            all.append((CInt(index), entry))
        }
        for (fd, entry) in overflow { all.append((fd, entry)) }
        return all
    }

    mutating func removeAll() {
        for index in direct.indices { direct[index] = (-1, -1) }
        overflow.removeAll()
    }
}
