import SystemPackage

/// How a write request of an engine ends.
enum WriteKind: Equatable {
    /// A plain write: done once every byte is written.
    case plain
    /// A durable write in one system request: an `O_DIRECT` write with `RWF_DSYNC` on kernel AIO.
    case dsync
    /// A durable write whose durability is a sync of its descriptor (buffered files, POSIX aio):
    /// once every byte is written it becomes a sync request, which starts after that.
    case thenSync
}

/// One write request waiting in an engine.
struct WriteRequest {
    var id: UInt64
    var descriptor: FileDescriptor
    var buffer: UnsafeRawPointer
    var count: Int
    var offset: Int64
    var kind: WriteKind
    var continuation: UnsafeContinuation<Void, any Error>
    /// ``FailureLedger/stamp()`` at arrival (the in-flight rule of a durable write).
    var arrival: UInt64
    /// Bytes written so far (a short write is continued from here).
    var written = 0
    /// The order in which the engine accepted it (``WriteState``, the sync rule).
    var sequence: UInt64 = 0
    var interruptedRetries: UInt8 = 0
    /// Ended by a completion of 0 bytes with bytes left and no errno (``WriteState/stalledErrno``),
    /// not by an errno of the system's.
    var stalled = false
    /// Once it succeeded, its transit goes on until its caller calls `AIOEngine.endTransit()`: the
    /// write of a durable write whose sync part the caller makes on another path (inline, POSIX
    /// fallback), which a shutdown's drain must wait for, as it waits for a `thenSync` write's.
    var holdsTransit = false
}

/// The writes of one engine and the rule that ties syncs to them: a plain value, like
/// ``EngineState``, whose events say what to do outside the lock. The engine keeps both under one
/// lock.
///
/// **Writes.** Each write takes a write slot of its own (writes are not merged); requests wait for
/// a free slot in arrival order. A short write is continued in the same slot from where it
/// stopped, and an `EINTR` at completion submits it again (at most 16 times in a row), so a write
/// is complete only once every byte is written or it failed.
///
/// **A sync covers the writes accepted before it (the seeds' contract).** `io_fsync(3)` forces
/// the requests "queued at the time of the function call"; kernel AIO does not order a sync after
/// the writes in flight on its descriptor, so the engine does: every accepted write gets a
/// sequence number, and a sync request that arrives while writes of its descriptor are incomplete
/// (waiting for a slot or in the system) is held here with the last number accepted for that
/// descriptor as its barrier. It is released to the sync machine (``EngineState``) once every write
/// up to its barrier is complete (done, failed or cancelled before submission). Writes accepted
/// after it do not hold it: a stream of later writes never delays a sync.
///
/// The rule is per descriptor number: a write through one descriptor of a file and a sync through
/// another are not ordered (a ``AsyncFile`` writes and syncs through one descriptor).
struct WriteState {
    let slotCount: Int

    private var requests: [WriteRequest?] = []
    private var freeRequests: [Int32] = []
    /// The request in each slot; -1 free; ``revoked`` after a broken completion source.
    private var slotRequest: [Int32]
    /// Handed to the system (POSIX aio watches only these).
    private var slotSubmitted: [Bool]
    private static var revoked: Int32 { -2 }
    private var freeSlots: [Int32]
    private var ready = Int32Queue()
    private var files: [CInt: FileWrites] = [:]
    /// The tasks of held syncs without a cancellation handler (by waiter id): such a sync looked
    /// as if it would be handed to the system at once, then found writes of its descriptor
    /// accepted meanwhile. Its cancellation is looked at when it is released (``takeTask(of:)``),
    /// and by the sync machine from then on, as for any request that waits without a handler.
    private var heldTasks: [UInt64: UnsafeCurrentTask] = [:]
    private var nextSequence: UInt64 = 0

    struct Gated {
        var barrier: UInt64
        var waiter: Waiter
    }

    /// Per descriptor: the writes not complete yet (ascending) and the syncs held for them.
    struct FileWrites {
        var lastSequence: UInt64 = 0
        var incomplete: [UInt64] = []
        var gated: [Gated] = []
    }

    /// A thread holds the write submitter role.
    private(set) var submitting = false
    /// `EAGAIN` at submission with writes in flight: nothing is submitted until one completes, or
    /// until no write is in a slot any more.
    private(set) var blockedOnResources = false
    private(set) var slotsInUse = 0
    /// `blockedOnResources` waits for a completion of the engine's syncs (no write was in flight).
    private var blockedElsewhere = false

    /// A completion of another kind of request of the same context (a sync) freed resources.
    mutating func resourcesFreed() {
        blockedOnResources = false
        blockedElsewhere = false
    }

    /// Writes and held syncs: each is counted in the engine's transit (``EngineState/beginTransit()``)
    /// until it has its answer or has been handed to the sync machine.
    private(set) var pending = 0

    init(slotCount: Int) {
        precondition(slotCount > 0)
        self.slotCount = slotCount
        slotRequest = Array(repeating: -1, count: slotCount)
        slotSubmitted = Array(repeating: false, count: slotCount)
        freeSlots = (0..<Int32(slotCount)).reversed()
    }

    // MARK: Arrival

    enum Arrival: Equatable {
        /// Someone else submits it.
        case queued
        /// The caller holds the write submitter role now: call ``takeWrites(into:)`` until it
        /// returns false.
        case submit
    }

    /// A write arrives (the caller has checked the engine accepts requests and counted it in the
    /// engine's transit). On the completion thread the caller never takes the submitter role.
    mutating func arrive(_ request: WriteRequest, onCompletionThread: Bool) -> Arrival {
        var request = request
        nextSequence += 1
        request.sequence = nextSequence
        let fd = request.descriptor.rawValue
        files[fd, default: FileWrites()].lastSequence = nextSequence
        files[fd]!.incomplete.append(nextSequence)
        ready.append(store(request))
        pending += 1
        guard !submitting, !onCompletionThread else { return .queued }
        submitting = true
        return .submit
    }

    /// Whether a sync of `fd` asked for now must wait for writes.
    func holdsSyncs(of fd: CInt) -> Bool {
        guard let file = files[fd] else { return false }
        return !file.incomplete.isEmpty
    }

    /// A sync request arrives: `nil` when it may go on to the sync machine now; otherwise it is
    /// held (and counted in ``pending``) until the writes of its descriptor accepted before it are
    /// complete, and ``released`` lists it then.
    /// `task`: the request's task when it has no cancellation handler (kept while it is held).
    mutating func gate(_ waiter: Waiter, task: UnsafeCurrentTask? = nil) -> Waiter? {
        let fd = waiter.descriptor.rawValue
        guard let barrier = files[fd].flatMap({ $0.incomplete.isEmpty ? nil : $0.lastSequence }) else { return waiter }
        files[fd]!.gated.append(Gated(barrier: barrier, waiter: waiter))  // in place: no copy of the arrays
        if let task { heldTasks[waiter.id] = task }
        pending += 1
        return nil
    }

    /// The task kept for a held sync without a cancellation handler, once it is released (`nil`
    /// for one with a handler): the caller looks at its cancellation and hands it on.
    mutating func takeTask(of waiter: Waiter) -> UnsafeCurrentTask? {
        heldTasks.isEmpty ? nil : heldTasks.removeValue(forKey: waiter.id)
    }

    /// Whether a write arriving now would be handed to the system at once (a write slot is free
    /// and nothing waits): then it needs no cancellation handler.
    var handsOverAtOnce: Bool { !blockedOnResources && ready.count < freeSlots.count }

    /// Takes the submitter role if it is free and a write can be submitted.
    mutating func takeSubmitterRole() -> Bool {
        guard !submitting, !blockedOnResources, !ready.isEmpty, !freeSlots.isEmpty else { return false }
        submitting = true
        return true
    }

    // MARK: Submission (holder of the write submitter role)

    struct Prepared: Equatable {
        var slot: Int32
        var descriptor: CInt
        var buffer: UnsafeRawPointer
        var count: Int
        var offset: Int64
        var dsync: Bool
    }

    private func prepared(_ slot: Int32) -> Prepared {
        let request = requests[Int(slotRequest[Int(slot)])]!
        return Prepared(slot: slot, descriptor: request.descriptor.rawValue, buffer: request.buffer + request.written,
                        count: request.count - request.written, offset: request.offset + Int64(request.written),
                        dsync: request.kind == .dsync)
    }

    /// Moves waiting writes into free slots and appends them to `prepared`. With nothing to take,
    /// gives up the submitter role and returns false.
    mutating func takeWrites(into prepared: inout [Prepared]) -> Bool {
        precondition(submitting)
        while !blockedOnResources, let slot = freeSlots.last, let index = ready.popFirst() {
            freeSlots.removeLast()
            slotRequest[Int(slot)] = index
            slotSubmitted[Int(slot)] = false
            slotsInUse += 1
            prepared.append(self.prepared(slot))
        }
        if prepared.isEmpty { submitting = false }
        return !prepared.isEmpty
    }

    /// `slots` were handed to the system.
    mutating func submitted(_ slots: UnsafeBufferPointer<Int32>) {
        for slot in slots where slotRequest[Int(slot)] >= 0 { slotSubmitted[Int(slot)] = true }
    }

    /// The write slots handed to the system whose completion is awaited.
    func submittedSlots(into list: inout [Int32], adding offset: Int32) {
        for slot in 0..<Int32(slotCount) where slotRequest[Int(slot)] >= 0 && slotSubmitted[Int(slot)] {
            list.append(slot + offset)
        }
    }

    /// The system refused `slot`'s write (EBADF, EINVAL, …): it fails with that errno (appended to
    /// `failed`); syncs it held are appended to `released`.
    mutating func refused(slot: Int32, into failed: inout [WriteRequest], released: inout [Waiter]) {
        guard slotRequest[Int(slot)] >= 0 else { return }  // revoked
        failed.append(finish(slot: slot, released: &released))
    }

    /// `EAGAIN` for `slots`: with other writes in flight they wait again, first in line, until a
    /// completion; with none in flight no completion would come, so they fail.
    ///
    /// `othersElsewhere`: the engine's syncs are in flight in the same context (their completion
    /// frees resources too: ``resourcesFreed()``).
    mutating func exhausted(_ slots: UnsafeBufferPointer<Int32>, into failed: inout [WriteRequest], released: inout [Waiter],
                            othersElsewhere: Bool = false) {
        let slots = slots.filter { slotRequest[Int($0)] >= 0 }
        let othersInFlight = slotsInUse > slots.count || othersElsewhere
        if othersElsewhere, slotsInUse == slots.count { blockedElsewhere = true }
        for slot in slots.reversed() {
            if !othersInFlight {
                failed.append(finish(slot: slot, released: &released))
                continue
            }
            let index = slotRequest[Int(slot)]
            vacate(slot)
            ready.prepend(index)
        }
        if othersInFlight { blockedOnResources = true }
    }

    // MARK: Completion

    enum Completed {
        /// Not done: submit the slot again with these parameters (the rest of a short write, or
        /// the same after `EINTR`).
        case retry(Prepared)
        /// Done with this result (the request is appended to `done`).
        case finished(Result<Void, Errno>)
        /// Not a write slot in use.
        case unknown
    }

    /// A zero-byte completion of a non-empty write: the system made no progress and said no errno.
    static var stalledErrno: Errno { .ioError }

    /// The system reported `slot`'s result: the number of bytes written, or an errno.
    mutating func completed(slot: Int32, result: Result<Int, Errno>, done: inout [WriteRequest], released: inout [Waiter]) -> Completed {
        guard slot >= 0, Int(slot) < slotCount, slotRequest[Int(slot)] >= 0 else { return .unknown }
        let index = Int(slotRequest[Int(slot)])
        resourcesFreed()
        switch result {
        case .success(let bytes) where bytes > 0 && requests[index]!.written + bytes < requests[index]!.count:
            requests[index]!.written += bytes
            requests[index]!.interruptedRetries = 0
            slotSubmitted[Int(slot)] = false
            return .retry(prepared(slot))
        case .failure(.interrupted) where requests[index]!.interruptedRetries < EngineState.maximumInterruptedRetries:
            requests[index]!.interruptedRetries += 1
            slotSubmitted[Int(slot)] = false
            return .retry(prepared(slot))
        case .success(let bytes):
            let complete = requests[index]!.written + bytes >= requests[index]!.count
            var request = finish(slot: slot, released: &released)
            request.stalled = !complete
            done.append(request)
            return .finished(complete ? .success(()) : .failure(Self.stalledErrno))
        case .failure(let errno):
            done.append(finish(slot: slot, released: &released))
            return .finished(.failure(errno))
        }
    }

    // MARK: Cancellation

    /// Removes write `id` of `descriptor` if it still waits for a slot and was never handed to
    /// the system. One that waits again after the system had it (the rest of a short write, or a
    /// write interrupted with `EINTR`, whose resubmission met `EAGAIN`) may have bytes in the file
    /// already: it is not removed (its caller gets the write's result, never `CancellationError`,
    /// which says nothing was written).
    mutating func cancel(id: UInt64, descriptor: CInt, released: inout [Waiter]) -> WriteRequest? {
        var found: Int32 = -1
        ready.forEach { index in
            if found < 0, let request = requests[Int(index)], request.id == id, request.descriptor.rawValue == descriptor,
               request.written == 0, request.interruptedRetries == 0 {
                found = index
            }
        }
        guard found >= 0 else { return nil }
        ready.remove(found)
        return remove(found, released: &released)
    }

    /// Removes the held sync `id` of `descriptor`.
    mutating func cancelHeld(id: UInt64, descriptor: CInt) -> Waiter? {
        guard let position = files[descriptor]?.gated.firstIndex(where: { $0.waiter.id == id }) else { return nil }
        let waiter = files[descriptor]!.gated.remove(at: position).waiter
        heldTasks[id] = nil
        pending -= 1
        return waiter
    }

    /// Whether a sync `id` of `descriptor` is held here.
    func holds(id: UInt64, descriptor: CInt) -> Bool {
        files[descriptor]?.gated.contains { $0.waiter.id == id } ?? false
    }

    // MARK: A broken completion source

    /// Every write and every held sync gets its answer from the caller (the source's errno); slots
    /// the system holds are revoked (whatever it says of them later is ignored).
    ///
    /// The writes in slots (the system may still read their buffers) go to `inSystem`: the engine
    /// answers them only once the system has let go of them (the driver's release: `io_destroy(2)`
    /// waits for every request of the context); the waiting ones to `failed`.
    mutating func broken(into failed: inout [WriteRequest], inSystem: inout [WriteRequest], held: inout [Waiter]) {
        for slot in 0..<Int32(slotCount) where slotRequest[Int(slot)] >= 0 {
            let index = slotRequest[Int(slot)]
            inSystem.append(requests[Int(index)]!)
            requests[Int(index)] = nil
            freeRequests.append(index)
            slotRequest[Int(slot)] = Self.revoked
            slotsInUse -= 1
        }
        while let index = ready.popFirst() {
            failed.append(requests[Int(index)]!)
            requests[Int(index)] = nil
            freeRequests.append(index)
        }
        for (_, file) in files { held.append(contentsOf: file.gated.map(\.waiter)) }
        files.removeAll()
        heldTasks.removeAll()  // every held sync is answered by the break (those released this round too)
        pending = 0
        blockedOnResources = false
    }

    // MARK: Introspection

    /// The state in one line (tests and the model checker's key: canonical, pool indexes left out).
    var fingerprint: String {
        func text(_ index: Int32) -> String {
            guard index >= 0 else { return index == Self.revoked ? "R" : "-" }
            let request = requests[Int(index)]!
            return "\(request.id):\(request.descriptor.rawValue):\(request.written)/\(request.count)#\(request.sequence)r\(request.interruptedRetries)"
        }
        var line = "w \(submitting) \(blockedOnResources) \(pending) \(slotsInUse)|"
        line += zip(slotRequest, slotSubmitted).map { text($0.0) + ($0.1 ? "S" : "") }.joined(separator: ";") + "|"
        ready.forEach { line += text($0) + "," }
        line += "|"
        for fd in files.keys.sorted() {
            let file = files[fd]!
            line += "\(fd):\(file.lastSequence):\(file.incomplete):" + file.gated.map { "\($0.waiter.id)<\($0.barrier)" }.joined(separator: ",") + ";"
        }
        return line
    }

    /// The sequence number the engine gave the write in `slot` (the model checker).
    func sequence(inSlot slot: Int32) -> UInt64? {
        guard slot >= 0, Int(slot) < slotCount, slotRequest[Int(slot)] >= 0 else { return nil }
        return requests[Int(slotRequest[Int(slot)])]!.sequence
    }

    /// Syncs held for the writes before them.
    var heldSyncCount: Int { files.values.reduce(0) { $0 + $1.gated.count } }

    /// Tasks kept for held syncs without a cancellation handler (the model check).
    var heldTaskCount: Int { heldTasks.count }

    /// Writes accepted and not complete yet.
    var incompleteWriteCount: Int { files.values.reduce(0) { $0 + $1.incomplete.count } }
    /// Writes waiting for a slot (tests).
    var waitingWriteCount: Int { ready.count }

    /// The id of the write in `slot`.
    func requestID(inSlot slot: Int32) -> UInt64? {
        guard slot >= 0, Int(slot) < slotCount, slotRequest[Int(slot)] >= 0 else { return nil }
        return requests[Int(slotRequest[Int(slot)])]!.id
    }

    /// The last sequence number accepted for `fd` (0: none yet).
    func lastSequence(of fd: CInt) -> UInt64 { files[fd]?.lastSequence ?? 0 }

    // MARK: Internals

    private mutating func store(_ request: WriteRequest) -> Int32 {
        if let index = freeRequests.popLast() {
            requests[Int(index)] = request
            return index
        }
        requests.append(request)
        return Int32(requests.count - 1)
    }

    private mutating func vacate(_ slot: Int32) {
        slotRequest[Int(slot)] = -1
        slotSubmitted[Int(slot)] = false
        freeSlots.append(slot)
        slotsInUse -= 1
        // Waiting for a completion makes sense only while a write is in a slot: the last one may
        // leave without one (refused, or failed at an EAGAIN of its own, e.g. a short write's rest
        // submitted by the completion thread), and then nothing would ever unblock the writes put
        // back (review of issue 17, FINDING 1).
        if slotsInUse == 0, !blockedElsewhere { blockedOnResources = false }
    }

    /// Frees `slot` and its request; returns the request.
    private mutating func finish(slot: Int32, released: inout [Waiter]) -> WriteRequest {
        let index = slotRequest[Int(slot)]
        vacate(slot)
        return remove(index, released: &released)
    }

    /// Frees request `index` and completes its sequence number: the syncs whose barrier every
    /// write now meets are appended to `released`.
    private mutating func remove(_ index: Int32, released: inout [Waiter]) -> WriteRequest {
        let request = requests[Int(index)]!
        requests[Int(index)] = nil
        freeRequests.append(index)
        pending -= 1
        let fd = request.descriptor.rawValue
        guard files[fd] != nil else { return request }
        // In place (the entry stays, with its storage: no allocation per write on a descriptor
        // written again; an entry per descriptor number ever written is the whole cost).
        files[fd]!.incomplete.removeAll { $0 == request.sequence }
        let oldest = files[fd]!.incomplete.first ?? .max
        if !files[fd]!.gated.isEmpty {
            var freed = 0
            files[fd]!.gated.removeAll { gated in
                guard gated.barrier < oldest else { return false }
                released.append(gated.waiter)
                freed += 1
                return true
            }
            pending -= freed
        }
        return request
    }
}
