// Linux (glibc) only: compiled out elsewhere and under ASYNC_FSYNC_PORTABLE (see docs/design.md, "The portable
// backend").
#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
import CAsyncFsync
import Synchronization
import SystemPackage

/// The machinery both backends share: every request completes exactly once.
///
/// A request enters ``sync(_:mode:)``, joins its descriptor's next batch (``EngineState``), and is
/// resumed with the result of the one sync that serves the batch. Submission uses flat combining:
/// the thread that finds nobody submitting takes the submitter role and moves ready batches into
/// free slots, so requests that arrive meanwhile reach the system in one call. Completions are
/// reaped by the ``CompletionHub`` of the engine's kind, which also runs the tasks that prefer it
/// as their executor; their syncs are submitted together after they ran.
///
/// The engine's state is one ``EngineState`` under one lock. Each method here takes the lock,
/// lets the state machine decide, drops the lock, and then does what it said: resume
/// continuations, prepare and submit control blocks, hand the driver to the hub for release.
final class AIOEngine<Driver: AIODriver>: HubClient, @unchecked Sendable {
    private struct Shared {
        var machine: EngineState
        var writes: WriteState
        var shutdownWaiters: [UnsafeContinuation<Void, Never>] = []
        var releasedDriver = false
        /// Writes that were in the system when the completion source broke, with its errno: the
        /// system may still read their buffers, so they are answered once the driver is released
        /// (`io_destroy(2)` returns after every request of the context ended).
        var answeredAtRelease: [(WriteRequest, Errno)] = []
    }

    let driver: Driver
    /// Driver slots `0..<syncSlots` hold syncs (``EngineState``); the rest hold writes
    /// (``WriteState``), write slot `i` being driver slot `syncSlots + i`.
    let syncSlots: Int
    let system: SystemCalls
    let ledger: FailureLedger
    /// Set once in `init`, before any request.
    private(set) var hub: CompletionHub!
    private let shared: Locked<Shared>
    private let nextID = Atomic<UInt64>(1)

    /// Whether an `EINVAL` at submission is handed to the owner (``endTransit()`` when it is done
    /// with it) instead of ending the request here: a ``LibaioBackend`` serves such a file through
    /// POSIX aio, and a shutdown waits for it.
    let handsOffInvalid: Bool

    /// Used by the holder of the submitter role only.
    @exclusivity(unchecked) private var submitScratch: [EngineState.Prepared] = []
    @exclusivity(unchecked) private var submitSlots: [Int32] = []
    @exclusivity(unchecked) private var mismatchScratch: [Waiter] = []
    @exclusivity(unchecked) private var slotScratch: [EngineState.SlotRef] = []
    @exclusivity(unchecked) private var identityScratch: [FileIdentity?] = []
    @exclusivity(unchecked) private var pairScratch: [(index: Int, peer: EngineState.SlotRef, shares: Bool)] = []
    /// Used by the holder of the write submitter role only.
    @exclusivity(unchecked) private var writeScratch: [WriteState.Prepared] = []
    @exclusivity(unchecked) private var writeSlotScratch: [Int32] = []
    /// Used by the hub's thread only.
    @exclusivity(unchecked) private var completions: [Completion] = []
    @exclusivity(unchecked) private var writeRetries: [WriteState.Prepared] = []
    @exclusivity(unchecked) private var finished: [(range: Range<Int>, result: Result<Void, Errno>)] = []
    @exclusivity(unchecked) private var done: [Waiter] = []
    @exclusivity(unchecked) private var retries: [Int32] = []
    @exclusivity(unchecked) private var active: [Int32] = []
    /// The machine's ``EngineState/reapsCompletions`` as of the last reap (only a reap breaks the
    /// source, so the hub's thread knows it without the lock).
    @exclusivity(unchecked) private var reapsCompletions = true

    var kind: BackendKind { Driver.kind }

    /// Registers with the hub of the driver's kind (starting its thread if this is the first
    /// engine). If that fails, the driver is released here and the error thrown: nothing is freed
    /// twice, whatever runs `deinit` afterwards.
    init(driver: Driver, syncSlots: Int, system: SystemCalls, ledger: FailureLedger, handsOffInvalid: Bool = false) throws(AsyncSyncError) {
        precondition(syncSlots > 0 && driver.slotCount > syncSlots, "a driver has sync slots and write slots")
        self.handsOffInvalid = handsOffInvalid
        self.driver = driver
        self.syncSlots = syncSlots
        self.system = system
        self.ledger = ledger
        let slots = driver.slotCount
        shared = Locked(Shared(machine: EngineState(slotCount: syncSlots), writes: WriteState(slotCount: slots - syncSlots)))
        submitScratch.reserveCapacity(slots)
        submitSlots.reserveCapacity(slots)
        completions.reserveCapacity(slots)
        finished.reserveCapacity(slots)
        done.reserveCapacity(slots)
        retries.reserveCapacity(slots)
        active.reserveCapacity(Driver.waitsOnList ? slots : 0)
        do {
            let hub = try CompletionHub.register(self, kind: Driver.kind, system: system)
            driver.attach(to: hub)
            self.hub = hub
        } catch {
            shared.withLock { $0.releasedDriver = true }
            driver.release(then: {})
            throw error
        }
    }

    // MARK: Requests

    func sync(_ descriptor: FileDescriptor, mode: SyncMode) async throws {
        try await sync(descriptor, mode: mode, arrival: ledger.stamp())
    }

    /// ``sync(_:mode:)`` for a request that arrived at `arrival` (a request kernel AIO refused and
    /// the POSIX fallback now serves keeps its first stamp).
    ///
    /// `look`: what ``look(at:)`` found for this request a moment ago, when its backend looked
    /// already (to route it); otherwise the engine looks itself. It is a hint only: a request that
    /// turns out to wait after all still has its cancellation looked at before it is submitted.
    ///
    /// `admitted`: the request was accepted before any shutdown that began since (the sync part of
    /// a durable write whose write ``write(_:from:at:kind:arrival:holdsTransit:)`` holds the
    /// engine's transit): a shutdown does not refuse it, a broken source does.
    ///
    /// `cancellable`: false for the sync part of a durable write whose write was handed to the
    /// system already (its bytes may be in the file): its task's cancellation is not looked at,
    /// as for the sync part of a durable write the engine makes itself (review-group, finding 2).
    func sync(_ descriptor: FileDescriptor, mode: SyncMode, arrival: UInt64, look: SyncLook? = nil,
              admitted: Bool = false, cancellable: Bool = true) async throws {
        // Stamped before the sticky check: a failure recorded in between is caught by one of them.
        let arrival = try ledger.admit(descriptor, stamp: arrival, mode: mode, backend: Driver.kind).get()
        if cancellable { try Task.checkCancellation() }
        let id = nextID.wrappingAdd(1, ordering: .relaxed).oldValue
        // A request handed to the system at once cannot be cancelled any more, so it needs no
        // cancellation handler (installing one costs more than the rest of this library's path).
        // One that turns out to wait after all has its cancellation looked at before its batch
        // is submitted; one that will wait gets a handler and is cancelled at once.
        if !cancellable || (look ?? self.look(at: descriptor)).handsOverAtOnce {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, any Error>) in
                arrive(Waiter(id: id, descriptor: descriptor, mode: mode, continuation: continuation,
                              arrival: arrival, identity: nil, identityTaken: false), handled: false, admitted: admitted,
                       cancellable: cancellable)
            }
            return
        }
        try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, any Error>) in
                arrive(Waiter(id: id, descriptor: descriptor, mode: mode, continuation: continuation,
                              arrival: arrival, identity: nil, identityTaken: false), handled: true, admitted: admitted)
            }
        } onCancel: {
            cancel(id: id, descriptor: descriptor)
        }
    }

    /// `handled`: the request has a cancellation handler. `cancellable`: false for a request whose
    /// task's cancellation is never looked at (the sync part of a durable write).
    private func arrive(_ request: Waiter, handled: Bool, admitted: Bool, cancellable: Bool = true) {
        var waiter = request
        let onHub = hub.isCurrent
        // Without a handler, its task is kept: the request may end up waiting after all (its
        // descriptor or the slots taken meanwhile, or an EAGAIN puts its batch back).
        waiter.checksCancellation = !handled && cancellable
        // The cancellation handler may have run before the request was queued: checked under the lock.
        var arrival = withUnsafeCurrentTask { task in
            shared.withLock {
                Self.admit(waiter, into: &$0, isCancelled: cancellable && Task.isCancelled, onHub: onHub, task: task, admitted: admitted)
            }
        }
        if case .needsIdentity = arrival {
            // It will wait: take the file's identity, compared before its sync is submitted.
            waiter.identity = try? system.fileIdentity(waiter.descriptor.rawValue).get()
            waiter.identityTaken = true
            arrival = withUnsafeCurrentTask { task in
                shared.withLock {
                Self.admit(waiter, into: &$0, isCancelled: cancellable && Task.isCancelled, onHub: onHub, task: task, admitted: admitted)
            }
            }
        }
        switch arrival {
        case .refused(let refusal):
            waiter.continuation.resume(throwing: error(for: refusal, waiter.mode, waiter.descriptor))
        case .queued:
            if onHub { hub.deferSubmission(self) }
        case .submit:
            submitLoop()
        case .needsIdentity:
            preconditionFailure("identity asked for twice")
        }
    }

    /// A sync request arrives (under the lock): held while writes its descriptor accepted before
    /// it are incomplete (``WriteState``, counted in the sync machine's transit), else handed to
    /// the sync machine. A held request has taken its file's identity first, as one that waits
    /// in the sync machine does.
    private static func admit(_ waiter: Waiter, into shared: inout Shared, isCancelled: Bool, onHub: Bool,
                              task: UnsafeCurrentTask?, admitted: Bool) -> EngineState.Arrival {
        if shared.writes.holdsSyncs(of: waiter.descriptor.rawValue) {
            if let refusal = shared.machine.refusal, !(admitted && refusal == .shutDown) { return .refused(refusal) }
            if isCancelled { return .refused(.cancelled) }
            guard waiter.identityTaken else { return .needsIdentity }
            shared.machine.beginTransit()
            // Without a cancellation handler its task is kept, looked at when it is released.
            let proceeds = shared.writes.gate(waiter, task: waiter.checksCancellation ? task : nil)
            precondition(proceeds == nil, "held: its descriptor has incomplete writes")
            return .queued
        }
        return shared.machine.arrive(waiter, isCancelled: isCancelled, onCompletionThread: onHub, task: task,
                                     admitted: admitted)
    }

    /// What to do, outside the lock, after sync requests that waited for writes (or the syncs of
    /// durable writes) were handed to the sync machine.
    private struct HandOver {
        var refused: [(Waiter, EngineState.ArrivalRefusal)] = []
        var submit = false
        /// Some arrived and wait for the submitter: on the completion thread, ask for a submission.
        var queued = false
        var release = false

        mutating func note(_ release: EngineState.Release) {
            if release == .release { self.release = true }
        }
    }

    /// Under the lock: `released` (syncs whose earlier writes are complete, or the syncs of durable
    /// writes whose write completed) arrive in the sync machine, then their transit ends. Each was
    /// accepted already: a shutdown does not refuse it.
    private static func handOver(_ released: [Waiter], _ shared: inout Shared, onHub: Bool, into actions: inout HandOver) {
        for waiter in released {
            // A held sync without a cancellation handler: its cancellation is looked at now, and by
            // the sync machine (which keeps its task) until its batch is submitted.
            let task = shared.writes.takeTask(of: waiter)
            switch shared.machine.arrive(waiter, isCancelled: task?.isCancelled ?? false, onCompletionThread: onHub,
                                         task: task, admitted: true) {
            case .refused(let refusal): actions.refused.append((waiter, refusal))
            case .submit: actions.submit = true
            case .queued: actions.queued = true
            case .needsIdentity: preconditionFailure("a released sync has its identity")
            }
        }
        if !released.isEmpty { actions.note(shared.machine.endTransit(count: released.count)) }
    }

    /// Does what ``handOver(_:_:onHub:into:)`` said, outside the lock.
    private func perform(_ actions: HandOver, onHub: Bool) {
        for (waiter, refusal) in actions.refused {
            waiter.continuation.resume(throwing: error(for: refusal, waiter.mode, waiter.descriptor))
        }
        if actions.submit { submitLoop() }
        if actions.queued, onHub { hub.deferSubmission(self) }
        if actions.release { hub.requestRelease(self) }
    }

    private func error(for refusal: EngineState.ArrivalRefusal, _ mode: SyncMode, _ descriptor: FileDescriptor) -> any Error {
        switch refusal {
        case .cancelled: CancellationError()
        case .shutDown: AsyncSyncError.shutDown(mode, backend: Driver.kind, descriptor: descriptor)
        case .broken(let errno):
            AsyncSyncError.sync(mode, errno: errno, step: .completion, backend: Driver.kind,
                                descriptor: descriptor, systemCall: Driver.completionCall)
        }
    }

    /// The error a request for `descriptor` arriving now would be refused with (a shutdown, or the
    /// broken completion source's errno), or `nil` while requests are accepted. The backend's other
    /// paths (inline, POSIX fallback) refuse with the same error, so a request learns the same
    /// reason whichever path it takes.
    func refusalError(_ mode: SyncMode, _ descriptor: FileDescriptor) -> AsyncSyncError? {
        guard let refusal = shared.withLock({ $0.machine.refusal }) else { return nil }
        return error(for: refusal, mode, descriptor) as? AsyncSyncError
    }

    private func cancel(id: UInt64, descriptor: FileDescriptor) {
        let (waiter, release) = shared.withLock { shared -> (Waiter?, EngineState.Release) in
            if let held = shared.writes.cancelHeld(id: id, descriptor: descriptor.rawValue) {
                return (held, shared.machine.endTransit(count: 1))
            }
            return shared.machine.cancel(id: id, descriptor: descriptor.rawValue)
        }
        waiter?.continuation.resume(throwing: CancellationError())
        if release == .release { hub.requestRelease(self) }
    }

    // MARK: Submission

    /// Submits what is ready if nobody else holds the submitter role (the hub's thread after its
    /// jobs and completions).
    func submitReady() {
        if shared.withLock({ $0.machine.takeSubmitterRole() }) { submitLoop() }
        let writes = shared.withLock { shared -> Bool in
            guard shared.writes.takeSubmitterRole() else { return false }
            shared.machine.beginTransit()  // the role: a drain waits until it is given up
            return true
        }
        if writes { writeSubmitLoop() }
    }

    /// Moves ready batches into slots and submits them until nothing is ready or no slot is free;
    /// the caller holds the submitter role and gives it up here.
    private func submitLoop() {
        while true {
            // The scratch buffers belong to the role: once it is given up (nothing taken), another
            // thread may hold it and use them, so they are not looked at again here.
            // Waiters found cancelled (rare): an empty array allocates nothing.
            var cancelled: [Waiter] = []
            let (taken, release) = shared.withLock { shared -> (Bool, EngineState.Release) in
                submitScratch.removeAll(keepingCapacity: true)
                let release = shared.machine.takeBatches(into: &submitScratch, cancelled: &cancelled)
                for prepared in submitScratch {
                    driver.prepare(slot: prepared.slot, descriptor: prepared.descriptor, mode: prepared.mode)
                }
                return (!submitScratch.isEmpty, release)
            }
            for waiter in cancelled { waiter.continuation.resume(throwing: CancellationError()) }
            guard taken else {
                if release == .release { hub.requestRelease(self) }
                return
            }
            submitSlots.removeAll(keepingCapacity: true)
            if submitScratch.contains(where: \.checksDescription) {
                checkDescriptions()
            } else {
                for prepared in submitScratch {
                    if prepared.needsIdentityCheck, !checkIdentity(prepared) { continue }
                    submitSlots.append(prepared.slot)
                }
            }
            submitSlots.withUnsafeBufferPointer { submit($0) }
        }
    }

    /// A descriptor closed and reused while its requests waited names another file now: those
    /// requests fail with `EBADF` instead of being served by a sync of the other file. Returns
    /// whether the slot still has waiters to submit for.
    private func checkIdentity(_ prepared: EngineState.Prepared) -> Bool {
        let current = try? system.fileIdentity(prepared.descriptor).get()
        mismatchScratch.removeAll(keepingCapacity: true)
        let emptied = shared.withLock {
            $0.machine.dropMismatched(slot: prepared.slot, current: current, into: &mismatchScratch)
        }
        failMismatched(mismatchScratch)
        return !emptied
    }

    /// The waiters whose descriptor names another file now fail with `EBADF`.
    private func failMismatched(_ waiters: [Waiter]) {
        for waiter in waiters {
            waiter.continuation.resume(throwing: AsyncSyncError(
                code: .system, errno: .badFileDescriptor, operation: .sync(waiter.mode), step: .submit,
                backend: Driver.kind, descriptor: waiter.descriptor, systemCall: "statx",
                message: "the descriptor was closed and now names another file; keep it open until the sync returns"))
        }
    }

    /// `kcmp(2)` answered ENOSYS or EPERM once: from then on, two slots of one file are taken to
    /// share their open file description (one sync per file at a time).
    private let kcmpUnavailable = Atomic<Bool>(false)

    /// Slots were taken while others were in use: a batch that shares its open file description
    /// with an earlier slot in use waits for it instead of being submitted (``EngineState``, "one
    /// sync per open file description"). Appends the slots to submit to `submitSlots`. Also does
    /// ``checkIdentity(_:)``'s work, with the same `statx(2)`. Three short holds of the lock, the
    /// system calls between them.
    private func checkDescriptions() {
        slotScratch.removeAll(keepingCapacity: true)
        shared.withLock { $0.machine.unidentifiedSlots(into: &slotScratch) }
        identityScratch.removeAll(keepingCapacity: true)
        for ref in slotScratch { identityScratch.append(try? system.fileIdentity(ref.descriptor).get()) }
        mismatchScratch.removeAll(keepingCapacity: true)
        pairScratch.removeAll(keepingCapacity: true)
        shared.withLock { shared in
            for (ref, identity) in zip(slotScratch, identityScratch) { shared.machine.identified(ref, as: identity) }
            for (index, prepared) in submitScratch.enumerated() {
                if prepared.needsIdentityCheck {
                    let current = shared.machine.identity(of: prepared.ref)
                    // Emptied: its slot is free and it is not looked at again (not current).
                    if shared.machine.dropMismatched(slot: prepared.slot, current: current, into: &mismatchScratch) { continue }
                }
                guard prepared.checksDescription else { continue }
                slotScratch.removeAll(keepingCapacity: true)
                shared.machine.sharingCandidates(of: prepared.ref, into: &slotScratch)
                for peer in slotScratch { pairScratch.append((index, peer, true)) }
            }
        }
        failMismatched(mismatchScratch)
        // Outside the lock: which candidates share the open file description (or cannot be told apart).
        for pair in pairScratch.indices {
            pairScratch[pair].shares = sharesDescription(submitScratch[pairScratch[pair].index].descriptor,
                                                         pairScratch[pair].peer.descriptor)
        }
        shared.withLock { shared in
            var next = 0
            for (index, prepared) in submitScratch.enumerated() {
                slotScratch.removeAll(keepingCapacity: true)
                while next < pairScratch.count, pairScratch[next].index == index {
                    if pairScratch[next].shares { slotScratch.append(pairScratch[next].peer) }
                    next += 1
                }
                if prepared.checksDescription || prepared.needsIdentityCheck {
                    // Not submitted when dropped above (gone) or when it waits for its description.
                    guard shared.machine.described(prepared.ref, sharesDescriptionWith: slotScratch) == .submit else { continue }
                }
                submitSlots.append(prepared.slot)
            }
        }
    }

    /// Whether two descriptors may share one open file description: `kcmp(2)`'s answer; `true`
    /// when it cannot tell (fail safe: then the two syncs run one after the other).
    private func sharesDescription(_ fd: CInt, _ other: CInt) -> Bool {
        if kcmpUnavailable.load(ordering: .relaxed) { return true }
        switch system.kcmpFile(fd, other) {
        case .success(let same):
            return same
        case .failure(let errno):
            if errno == .noFunction || errno == .notPermitted || errno == .permissionDenied {
                kcmpUnavailable.store(true, ordering: .relaxed)
            }
            return true
        }
    }

    /// Hands prepared slots to the driver, handling short counts and refusals.
    private func submit(_ slots: UnsafeBufferPointer<Int32>) {
        var start = 0
        while start < slots.count {
            let rest = UnsafeBufferPointer(rebasing: slots[start...])
            let outcome = driver.submit(rest)
            if Driver.waitsOnList, outcome.accepted > 0 {
                let accepted = UnsafeBufferPointer(rebasing: rest[..<outcome.accepted])
                shared.withLock { $0.machine.submitted(accepted) }
                hub.listChanged()
            }
            start += outcome.accepted
            guard let errno = outcome.error, start < slots.count else { return }
            var failed: [Waiter] = []
            if errno == .resourceTemporarilyUnavailable {
                // Back to the queue until a completion frees resources (or fail: none in flight).
                let refused = UnsafeBufferPointer(rebasing: slots[start...])
                // Writes in flight in the same context free resources too when they complete.
                let release = shared.withLock {
                    $0.machine.exhausted(refused, into: &failed, othersElsewhere: $0.writes.slotsInUse > 0)
                }
                failAtSubmit(failed, errno: errno)
                if release == .release { hub.requestRelease(self) }
                return
            }
            // The system refused this request (EBADF, EINVAL, …): its own error, at submit.
            let slot = slots[start]
            let handOff = handsOffInvalid && errno == .invalidArgument
            let release = shared.withLock { $0.machine.refused(slot: slot, handOff: handOff, into: &failed) }
            failAtSubmit(failed, errno: errno)
            if release == .release { hub.requestRelease(self) }
            start += 1
        }
    }

    /// Nothing reached the disk: never a durability failure, never recorded.
    private func failAtSubmit(_ waiters: [Waiter], errno: Errno) {
        for waiter in waiters {
            waiter.continuation.resume(throwing: AsyncSyncError.sync(
                waiter.mode, errno: errno, step: .submit, backend: Driver.kind,
                descriptor: waiter.descriptor, systemCall: Driver.submitCall))
        }
    }

    // MARK: Writes

    /// Writes all of `buffer` to `descriptor` at `offset` (``WriteState``). `kind`: a plain write,
    /// a durable write in one request (`RWF_DSYNC`), or a durable write whose sync follows it.
    /// `arrival`: the stamp of a durable write (the in-flight rule), taken by the caller before
    /// anything else of the request. `holdsTransit`: when the write succeeds, the request still
    /// counts in the engine's transit (a shutdown's drain waits for it) until the caller calls
    /// ``endTransit()``, once, after the sync part it makes itself (``syncAfterWrite(_:arrival:_:)``);
    /// as the write of a durable write it meets the sticky rule first, as a non-plain `kind` does.
    func write(_ descriptor: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64, kind: WriteKind,
               arrival: UInt64? = nil, holdsTransit: Bool = false) async throws {
        // The kernel's EINVAL, before anything is queued (as the portable backend does).
        guard offset >= 0, !offset.addingReportingOverflow(Int64(buffer.count)).overflow else {
            throw AsyncSyncError(code: .system, errno: .invalidArgument, operation: kind == .plain ? .write : .durableWrite,
                                 step: .request, backend: Driver.kind, descriptor: descriptor,
                                 message: offset < 0 ? "the offset \(offset) is negative"
                                     : "offset \(offset) + \(buffer.count) bytes is past the largest file offset")
        }
        var stamp: UInt64 = 0
        if kind != .plain || holdsTransit {
            // Stamped before the sticky check, as a sync is. The write of a durable write whose sync
            // part is made elsewhere (`holdsTransit`) is refused here too: nothing of it is written.
            stamp = try ledger.admit(descriptor, stamp: arrival ?? ledger.stamp(), mode: .fdatasync, backend: Driver.kind).get()
        }
        try Task.checkCancellation()
        guard let base = buffer.baseAddress, buffer.count > 0 else {
            // Nothing to write: a durable write of nothing is a sync; a write of nothing is refused
            // as any request after a shutdown or a broken source is.
            if kind != .plain { return try await sync(descriptor, mode: .fdatasync, arrival: stamp) }
            let refusal = shared.withLock { shared -> EngineState.ArrivalRefusal? in
                if let refusal = shared.machine.refusal { return refusal }
                if holdsTransit { shared.machine.beginTransit() }  // as if written: the caller ends it
                return nil
            }
            if let refusal { throw refusalError(refusal, operation: .write, descriptor: descriptor) }
            return
        }
        let id = nextID.wrappingAdd(1, ordering: .relaxed).oldValue
        // As for a sync: a write that finds a free write slot is handed to the system at once and
        // cannot be cancelled any more, so it gets no cancellation handler (one that loses the slot
        // to a concurrent write meanwhile waits without one and is written: a cancellation is
        // honoured only where it can be told in time).
        if shared.withLock({ $0.writes.handsOverAtOnce }) {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, any Error>) in
                arriveWrite(WriteRequest(id: id, descriptor: descriptor, buffer: base, count: buffer.count, offset: offset,
                                         kind: kind, continuation: continuation, arrival: stamp, holdsTransit: holdsTransit))
            }
            return
        }
        try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, any Error>) in
                arriveWrite(WriteRequest(id: id, descriptor: descriptor, buffer: base, count: buffer.count, offset: offset,
                                         kind: kind, continuation: continuation, arrival: stamp, holdsTransit: holdsTransit))
            }
        } onCancel: {
            cancelWrite(id: id, descriptor: descriptor)
        }
    }

    private enum WriteArrivalOutcome { case refused(EngineState.ArrivalRefusal), queued, submit }

    private func arriveWrite(_ request: WriteRequest) {
        let onHub = hub.isCurrent
        let outcome = shared.withLock { shared -> WriteArrivalOutcome in
            if let refusal = shared.machine.refusal { return .refused(refusal) }
            if Task.isCancelled { return .refused(.cancelled) }
            shared.machine.beginTransit()
            switch shared.writes.arrive(request, onCompletionThread: onHub) {
            case .queued: return .queued
            case .submit:
                shared.machine.beginTransit()  // the role
                return .submit
            }
        }
        switch outcome {
        case .refused(let refusal):
            request.continuation.resume(throwing: writeError(for: refusal, request))
        case .queued:
            if onHub { hub.deferSubmission(self) }
        case .submit:
            writeSubmitLoop()
        }
    }

    /// A failure of the write itself is a write's (`.write`, never a durability failure), except
    /// for an `RWF_DSYNC` write, whose failure may be its durability's.
    private func operation(of request: WriteRequest) -> AsyncSyncError.Operation {
        request.kind == .dsync ? .durableWrite : .write
    }

    private func writeError(for refusal: EngineState.ArrivalRefusal, _ request: WriteRequest) -> any Error {
        refusalError(refusal, operation: request.kind == .plain ? .write : .durableWrite, descriptor: request.descriptor)
    }

    private func refusalError(_ refusal: EngineState.ArrivalRefusal, operation: AsyncSyncError.Operation,
                              descriptor: FileDescriptor) -> any Error {
        switch refusal {
        case .cancelled: CancellationError()
        case .shutDown:
            AsyncSyncError(code: .shutDown, errno: nil, operation: operation, step: .request,
                           backend: Driver.kind, descriptor: descriptor)
        case .broken(let errno):
            AsyncSyncError(code: .system, errno: errno, operation: operation, step: .completion, backend: Driver.kind,
                           descriptor: descriptor, systemCall: Driver.completionCall)
        }
    }

    private func writeError(_ request: WriteRequest, errno: Errno, step: AsyncSyncError.Step) -> AsyncSyncError {
        var message = ""
        if errno == .invalidArgument, step != .request,
           (try? system.statusFlags(request.descriptor.rawValue).get()).map({ $0 & casyncfsync_O_DIRECT != 0 }) == true {
            message = "on an O_DIRECT descriptor the buffer's address, its length and the offset must be multiples of the file's DirectIOAlignment"
        } else if errno == .badFileDescriptor {
            message = "the descriptor is not open for writing; keep it open until the write returns"
        }
        if request.written > 0 {
            // Part of it is in the file (a short write whose rest failed, also at its submission):
            // the caller must not take it for a write that wrote nothing.
            let written = "\(request.written) of \(request.count) bytes were written before it"
            message = message.isEmpty ? written : message + "; " + written
        }
        return AsyncSyncError(code: .system, errno: errno, operation: operation(of: request), step: step,
                              backend: Driver.kind, descriptor: request.descriptor,
                              systemCall: step == .submit ? Driver.writeSubmitCall : Driver.completionCall, message: message)
    }

    private func cancelWrite(id: UInt64, descriptor: FileDescriptor) {
        var released: [Waiter] = []
        var actions = HandOver()
        let request = shared.withLock { shared -> WriteRequest? in
            guard let request = shared.writes.cancel(id: id, descriptor: descriptor.rawValue, released: &released) else { return nil }
            Self.handOver(released, &shared, onHub: false, into: &actions)
            actions.note(shared.machine.endTransit(count: 1))
            return request
        }
        request?.continuation.resume(throwing: CancellationError())
        perform(actions, onHub: false)
    }

    /// Moves waiting writes into write slots and submits them; the caller holds the write
    /// submitter role (counted in the transit) and gives it up here.
    private func writeSubmitLoop() {
        while true {
            let taken = shared.withLock { shared -> (Bool, EngineState.Release) in
                writeScratch.removeAll(keepingCapacity: true)
                guard shared.writes.takeWrites(into: &writeScratch) else {
                    return (false, shared.machine.endTransit(count: 1))  // the role is given up
                }
                for prepared in writeScratch { prepareWrite(prepared) }
                return (true, .none)
            }
            guard taken.0 else {
                if taken.1 == .release { hub.requestRelease(self) }
                return
            }
            writeSlotScratch.removeAll(keepingCapacity: true)
            for prepared in writeScratch { writeSlotScratch.append(prepared.slot + Int32(syncSlots)) }
            writeSlotScratch.withUnsafeBufferPointer { submitWrites($0, onHub: hub.isCurrent) }
        }
    }

    private func prepareWrite(_ prepared: WriteState.Prepared) {
        driver.prepareWrite(slot: prepared.slot + Int32(syncSlots), descriptor: prepared.descriptor, buffer: prepared.buffer,
                            count: prepared.count, offset: prepared.offset, dsync: prepared.dsync)
    }

    /// Hands prepared write slots (driver numbering) to the driver, handling short counts and
    /// refusals. A refused write fails with its errno at submit; nothing of it reached the file.
    private func submitWrites(_ slots: UnsafeBufferPointer<Int32>, onHub: Bool) {
        let offset = Int32(syncSlots)
        var start = 0
        while start < slots.count {
            let rest = UnsafeBufferPointer(rebasing: slots[start...])
            let outcome = driver.submit(rest)
            if Driver.waitsOnList, outcome.accepted > 0 {
                let accepted = rest[..<outcome.accepted].map { $0 - offset }
                shared.withLock { shared in accepted.withUnsafeBufferPointer { shared.writes.submitted($0) } }
                hub.listChanged()
            }
            start += outcome.accepted
            guard let errno = outcome.error, start < slots.count else { return }
            var failed: [WriteRequest] = []
            var released: [Waiter] = []
            var actions = HandOver()
            let exhausted = errno == .resourceTemporarilyUnavailable
            shared.withLock { shared in
                if exhausted {
                    let local = slots[start...].map { $0 - offset }
                    let syncsInFlight = shared.machine.slotsInUse > 0
                    local.withUnsafeBufferPointer {
                        shared.writes.exhausted($0, into: &failed, released: &released, othersElsewhere: syncsInFlight)
                    }
                } else {
                    shared.writes.refused(slot: slots[start] - offset, into: &failed, released: &released)
                }
                Self.handOver(released, &shared, onHub: onHub, into: &actions)
                if !failed.isEmpty { actions.note(shared.machine.endTransit(count: failed.count)) }
            }
            for request in failed { request.continuation.resume(throwing: writeError(request, errno: errno, step: .submit)) }
            perform(actions, onHub: onHub)
            if exhausted { return }
            start += 1
        }
    }

    // MARK: Completion (the hub's thread)

    func reapCompletions() -> Bool {
        // A broken source is not looked at again: no progress, so the hub may park (liveness,
        // docs/design.md).
        guard reapsCompletions else { return false }
        if Driver.waitsOnList {
            active.removeAll(keepingCapacity: true)
            shared.withLock { shared in
                shared.machine.submittedSlots(into: &active)
                shared.writes.submittedSlots(into: &active, adding: Int32(syncSlots))
            }
            if active.isEmpty { return false }
        }
        completions.removeAll(keepingCapacity: true)
        let outcome = driver.reap(active: active, into: &completions)
        if completions.isEmpty, case .progressed = outcome { return false }

        done.removeAll(keepingCapacity: true)
        finished.removeAll(keepingCapacity: true)
        retries.removeAll(keepingCapacity: true)
        writeRetries.removeAll(keepingCapacity: true)
        var writesDone: [(WriteRequest, Result<Void, Errno>)] = []
        var handOver = HandOver()
        var systemSyncs = -1
        let firstWriteSlot = Int32(syncSlots)
        let release = shared.withLock { shared -> EngineState.Release in
            var released: [Waiter] = []
            var ended: [WriteRequest] = []
            for completion in completions {
                if completion.slot >= firstWriteSlot {
                    ended.removeAll(keepingCapacity: true)
                    shared.machine.resourcesFreed()  // one context: a write's completion frees room for syncs
                    switch shared.writes.completed(slot: completion.slot - firstWriteSlot, result: completion.result,
                                                   done: &ended, released: &released) {
                    case .retry(let prepared):
                        prepareWrite(prepared)
                        writeRetries.append(prepared)
                    case .finished(let result): writesDone.append((ended[0], result))
                    case .unknown: break
                    }
                    continue
                }
                let start = done.count
                let result = completion.result.map { _ in }
                shared.writes.resourcesFreed()  // and a sync's for writes
                switch shared.machine.completed(slot: completion.slot, result: result, into: &done) {
                case .finished: finished.append((start..<done.count, result))
                case .retry: retries.append(completion.slot)
                case .unknown: break
                }
            }
            // Writes that ended: a durable write whose sync follows becomes that sync request now,
            // after its write completed (held while writes accepted before it are incomplete);
            // every other one has its answer.
            var ending = 0
            writesDone.removeAll { request, result in
                guard request.kind == .thenSync, case .success = result else {
                    // A write whose caller makes its sync part elsewhere keeps its transit until then.
                    if request.holdsTransit, case .success = result { return false }
                    ending += 1
                    return false
                }
                let waiter = Waiter(id: request.id, descriptor: request.descriptor, mode: .fdatasync,
                                    continuation: request.continuation, arrival: request.arrival,
                                    identity: nil, identityTaken: true)
                // Its transit goes on with it: ended when it arrives in the sync machine.
                if let proceeds = shared.writes.gate(waiter) { released.append(proceeds) }
                return true
            }
            if ending > 0 { handOver.note(shared.machine.endTransit(count: ending)) }
            if case .broken(let errno) = outcome {
                var held: [Waiter] = []
                var failedWrites: [WriteRequest] = []
                var inSystem: [WriteRequest] = []
                shared.writes.broken(into: &failedWrites, inSystem: &inSystem, held: &held)
                for request in inSystem { shared.answeredAtRelease.append((request, errno)) }
                // Their transit ends now (the drain, and so the release that answers them, may go on).
                handOver.note(shared.machine.endTransit(count: inSystem.count))
                // Syncs released above have their answer below with the rest: the source is broken.
                held.append(contentsOf: released)
                released.removeAll()
                for request in failedWrites { writesDone.append((request, .failure(errno))) }
                handOver.note(shared.machine.endTransit(count: failedWrites.count + held.count))
                let start = done.count
                systemSyncs = finished.count  // the ones below did not run
                let release = shared.machine.broken(errno, into: &done)
                done.append(contentsOf: held)
                finished.append((start..<done.count, .failure(errno)))
                reapsCompletions = shared.machine.reapsCompletions
                // A sync interrupted (EINTR) in this round belonged to a batch the break just failed
                // and revoked: it is not submitted again (found by the model check: it reached the
                // system after the drain had asked for the driver's release).
                retries.removeAll(keepingCapacity: true)
                writeRetries.removeAll(keepingCapacity: true)
                return release
            }
            Self.handOver(released, &shared, onHub: true, into: &handOver)
            return shared.machine.afterCompletions()
        }

        // Every durability failure of this round is recorded before anyone of it is resumed, so a
        // success reaped together with a failure of its file is not acknowledged. (A batch is one
        // descriptor; the waiters failed by a broken source may be of several.)
        for (range, result) in finished where !range.isEmpty {
            guard case .failure(let errno) = result, Self.isDurabilityErrno(errno) else { continue }
            var previous: CInt = -1
            for waiter in done[range] where waiter.descriptor.rawValue != previous {
                previous = waiter.descriptor.rawValue
                ledger.record(waiter.descriptor, errno: errno)
            }
        }
        // A durable write in one request that failed may have lost its file's earlier data too.
        for (request, result) in writesDone where request.kind != .plain {
            guard case .failure(let errno) = result, AsyncSyncError.isDurableWriteDurabilityErrno(errno) else { continue }
            if request.kind == .dsync || outcome.isBroken { ledger.record(request.descriptor, errno: errno) }
        }
        if Observers.isActive { reportSystemSyncs(finished.prefix(systemSyncs < 0 ? finished.count : systemSyncs)) }
        for (range, result) in finished where !range.isEmpty {
            resume(done[range], with: result)
        }
        for (request, result) in writesDone { resume(request, with: result) }
        perform(handOver, onHub: true)
        if !retries.isEmpty {
            retries.withUnsafeBufferPointer { submit($0) }
        }
        if !writeRetries.isEmpty {
            let slots = writeRetries.map { $0.slot + firstWriteSlot }
            slots.withUnsafeBufferPointer { submitWrites($0, onHub: true) }
        }
        if release == .release { hub.requestRelease(self) }
        return true
    }

    /// Resumes a write that ended with `result` (a durable write's success is judged by the
    /// in-flight rule, as a sync's).
    private func resume(_ request: WriteRequest, with result: Result<Void, Errno>) {
        switch result {
        case .failure(let errno):
            var error = writeError(request, errno: errno, step: .completion)
            if request.stalled {
                error.message = "the system wrote 0 of the remaining \(request.count - request.written) bytes and reported no error"
            }
            request.continuation.resume(throwing: error)
        case .success:
            guard request.kind == .dsync else { return request.continuation.resume() }
            if let errno = ledger.judgeSuccess(arrival: request.arrival, descriptor: request.descriptor, identity: {
                FailureLedger.identify(request.descriptor, system: system)
            }) {
                request.continuation.resume(throwing: AsyncSyncError(
                    code: .concurrentFailure, errno: errno, operation: .durableWrite, step: .completion, backend: Driver.kind,
                    descriptor: request.descriptor,
                    message: "a durability failure of the file was recorded while this write was in flight; its data may be lost"))
            } else {
                request.continuation.resume()
            }
        }
    }

    /// Tells the observers of each sync the system ran that ended in this round and how many
    /// requests it served (a sync submitted again after `EINTR` is told once, when it ends).
    private func reportSystemSyncs(_ syncs: ArraySlice<(range: Range<Int>, result: Result<Void, Errno>)>) {
        for (range, result) in syncs where !range.isEmpty {
            let mode: SyncMode = done[range].contains { $0.mode == .fsync } ? .fsync : .fdatasync
            let errno: Errno? = if case .failure(let errno) = result { errno } else { nil }
            Observers.forEach {
                $0.systemSyncCompleted(backend: Driver.kind, mode: mode, requests: range.count, errno: errno)
            }
        }
    }

    /// Resumes the waiters of one batch (one descriptor) with its sync's result.
    private func resume(_ waiters: ArraySlice<Waiter>, with result: Result<Void, Errno>) {
        switch result {
        case .failure(let errno):
            for waiter in waiters {
                waiter.continuation.resume(throwing: AsyncSyncError.sync(
                    waiter.mode, errno: errno, step: .completion, backend: Driver.kind,
                    descriptor: waiter.descriptor, systemCall: Driver.completionCall))
            }
        case .success:
            // The in-flight rule: the file is identified once per batch, only if a failure was
            // recorded while one of them was in flight.
            var identity: FileIdentity?? = nil
            for waiter in waiters {
                let verdict = ledger.judgeSuccess(arrival: waiter.arrival, descriptor: waiter.descriptor) {
                    if identity == nil { identity = .some(FailureLedger.identify(waiter.descriptor, system: system)) }
                    return identity!
                }
                if let errno = verdict {
                    waiter.continuation.resume(throwing: AsyncSyncError.concurrentFailure(
                        waiter.mode, errno: errno, backend: Driver.kind, descriptor: waiter.descriptor))
                } else {
                    waiter.continuation.resume()
                }
            }
        }
    }

    /// Whether an errno a sync completed with may mean lost data (see
    /// ``AsyncSyncError/isDurabilityFailure``).
    static func isDurabilityErrno(_ errno: Errno) -> Bool {
        AsyncSyncError.isDurabilityErrno(errno)
    }

    func appendWatched(to list: inout [UnsafePointer<aiocb>?]) {
        shared.withLock { shared in
            active.removeAll(keepingCapacity: true)
            shared.machine.submittedSlots(into: &active)
            shared.writes.submittedSlots(into: &active, adding: Int32(syncSlots))
        }
        for slot in active { list.append(driver.controlBlock(slot)) }
    }

    func releaseDriver(then done: @escaping @Sendable ([UnsafeContinuation<Void, Never>]) -> Void) {
        let waiters = shared.withLock { shared -> [UnsafeContinuation<Void, Never>]? in
            guard !shared.releasedDriver else { return nil }
            shared.releasedDriver = true
            shared.machine.released()
            defer { shared.shutdownWaiters = [] }
            return shared.shutdownWaiters
        }
        guard let waiters else { return done([]) }
        let owned = Unchecked(waiters)
        let writes = Unchecked(shared.withLock { shared in
            defer { shared.answeredAtRelease = [] }
            return shared.answeredAtRelease
        })
        driver.release(then: { [self] in
            for (request, errno) in writes.value { resume(request, with: .failure(errno)) }
            done(owned.value)
        })
    }

    /// A request refused with `EINVAL` (see ``handsOffInvalid``) has its answer from elsewhere.
    func endTransit() {
        let release = shared.withLock { $0.machine.endTransit() }
        if release == .release { hub.requestRelease(self) }
    }

    // MARK: Sticky failures

    /// Forgets the failure of the file `descriptor` refers to; returns whether there was one.
    func clearFailure(of descriptor: FileDescriptor) throws(AsyncSyncError) -> Bool {
        do {
            return try ledger.clear(descriptor)
        } catch {
            throw AsyncSyncError(
                code: .system, errno: error, operation: .setup, step: .request, backend: Driver.kind,
                descriptor: descriptor, systemCall: "statx", message: "cannot identify the file")
        }
    }

    // MARK: Shutdown

    /// Refuses new requests, lets the accepted ones complete, then releases the driver's
    /// resources; returns when all of that is done.
    func shutdown() async {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            if !beginShutdown(waiter: continuation) { continuation.resume() }
        }
    }

    /// Starts the shutdown without waiting for it (`deinit` of the backends).
    func beginShutdown() {
        _ = beginShutdown(waiter: nil)
    }

    /// Returns false when the driver has already been released (the waiter is not kept).
    private func beginShutdown(waiter: UnsafeContinuation<Void, Never>?) -> Bool {
        let (kept, release) = shared.withLock { shared -> (Bool, EngineState.Release) in
            if shared.releasedDriver { return (false, .none) }
            if let waiter { shared.shutdownWaiters.append(waiter) }
            return (true, shared.machine.beginShutdown())
        }
        if release == .release { hub.requestRelease(self) }
        return kept
    }

    // MARK: Introspection for tests

    /// Whether new requests are accepted (no shutdown has begun).
    var isAcceptingRequests: Bool {
        shared.withLock { $0.machine.lifecycle == .accepting }
    }

    /// Requests waiting or in a slot.
    var outstandingCount: Int {
        shared.withLock { $0.machine.outstanding }
    }

    /// The state machine in one line (tests).
    var stateSummary: String {
        shared.withLock { $0.machine.summary }
    }

    /// Whether writes accepted for `fd` are not complete yet (``WriteTracking``).
    func hasIncompleteWrites(_ fd: FileDescriptor) -> Bool {
        look(at: fd).writesPending
    }

    /// What a sync of one descriptor finds in the engine, in one look under its lock.
    struct SyncLook {
        /// Writes accepted for the descriptor are not complete yet: its sync must go through the
        /// engine, which holds it until they are (a sync covers the writes accepted before it).
        var writesPending: Bool
        /// The engine would hand the sync to the system at once (it needs no cancellation handler).
        var handsOverAtOnce: Bool
    }

    /// One look for a backend that routes a sync of `fd` (inline, POSIX fallback, or the engine),
    /// passed on to ``sync(_:mode:arrival:look:)`` so that the engine need not look again.
    func look(at fd: FileDescriptor) -> SyncLook {
        shared.withLock {
            let pending = $0.writes.holdsSyncs(of: fd.rawValue)
            return SyncLook(writesPending: pending, handsOverAtOnce: !pending && $0.machine.handsOverAtOnce(fd.rawValue))
        }
    }

    /// The sync part of a durable write whose write the engine made with `holdsTransit` and whose
    /// sync is made on another path (the inline path, the POSIX fallback): it was accepted before
    /// any shutdown that began since, so only a broken completion source refuses it, and a
    /// shutdown's drain waits for it (the write's transit is ended here, once it has its answer).
    /// It covers the descriptor's other writes accepted before it: while any is incomplete it goes
    /// through the engine, which holds it. Otherwise `direct` runs it, with the refusal it must
    /// report (`nil`: none).
    func syncAfterWrite(_ fd: FileDescriptor, arrival: UInt64,
                        _ direct: (AsyncSyncError?) async throws -> Void) async throws {
        defer { endTransit() }
        let refusal = refusalError(.fdatasync, fd)
        let look = look(at: fd)
        if look.writesPending, refusal == nil || refusal?.code == .shutDown {
            try await sync(fd, mode: .fdatasync, arrival: arrival, look: look, admitted: true, cancellable: false)
            return
        }
        try await direct(refusal?.code == .shutDown ? nil : refusal)
    }

    /// Syncs held for the writes accepted before them, and writes not complete yet (tests).
    var writeCounts: (heldSyncs: Int, incompleteWrites: Int) {
        shared.withLock { ($0.writes.heldSyncCount, $0.writes.incompleteWriteCount) }
    }

    /// Writes waiting for a write slot, also again after `EAGAIN` (tests).
    var waitingWriteCount: Int {
        shared.withLock { $0.writes.waitingWriteCount }
    }

    /// Requests waiting for their descriptor's next sync or for a slot.
    var waitingCount: Int {
        shared.withLock { $0.machine.waitingCount }
    }
}
#endif  // os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
