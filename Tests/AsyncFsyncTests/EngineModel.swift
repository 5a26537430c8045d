import CTestSupport
import Foundation
import SystemPackage
import Testing

@testable import AsyncFsync

/// ``AIOEngine`` as a model: its machine (``EngineState``, the real code) driven the way
/// `AIOEngine.swift` drives it, with every thread's next step taken in any order.
///
/// The actors: each request's task (arrive; take the file's identity and arrive again; be
/// cancelled through its handler), the holder of the submitter role (take batches; identify the
/// slots and ask which share an open file description; hear `kcmp(2)`'s answer; submit, and meet
/// every outcome of `io_submit(2)`: all accepted, or the first k accepted and then `EAGAIN`,
/// `EBADF`, or `EINVAL` handed to the POSIX fallback), the kernel (each submitted sync ends with 0,
/// `EIO` or `EINTR`), the completion thread (reap the ended syncs in one round, record failures
/// before resuming anyone, resubmit after `EINTR`, then submit what is ready; a completion source
/// that breaks), the fallback answering a request in transit, `shutdown()`, and the release of the
/// driver.
///
/// Invariants: every request ends exactly once; a success comes only from a sync submitted after
/// the request joined its batch, and only when no failure of its file was recorded since it
/// arrived; two syncs of one open file description are never in the kernel together; the driver
/// is released once, after the drain, and nothing is submitted after; no state is stuck (requests
/// outstanding, nothing in flight, and nobody left to act).
///
/// A configuration may give requests other kinds (``Config/kinds``): one that waits without a
/// cancellation handler (its task kept by the machine, cancelled) and the sync part of a durable
/// write (no handler, not cancellable: `AIOEngine.sync(cancellable: false)`, whose task is
/// cancelled too). Invariant: the sync part of a durable write never ends cancelled, whatever
/// the requests batched with it (review-nocancel).
struct EngineModel: CheckedModel {
    /// How a request waits (``Config/kinds``).
    enum Kind: Hashable {
        /// With a cancellation handler (`.cancel` events).
        case handled
        /// Without a handler, `checksCancellation`: its (cancelled) task is kept by the machine.
        case handlerless
        /// The sync part of a durable write: no handler, `checksCancellation` false, its task
        /// cancelled; it arrives with `isCancelled: false`, as `AIOEngine.arrive` passes it.
        case syncPart
    }

    struct Config: Hashable, CustomStringConvertible {
        /// Per request, its descriptor.
        var descriptors: [CInt]
        /// Per descriptor, its open file description (two numbers of one: a `dup`).
        var sharing: [CInt: Int]
        var slots: Int
        /// POSIX aio: the completion thread watches submitted control blocks only.
        var waitsOnList: Bool
        /// `EINVAL` at submission goes to the POSIX fallback (a libaio backend).
        var handsOffInvalid: Bool
        /// `EINTR` completions allowed in one run (each is resubmitted).
        var interruptions: Int
        /// Events off the happy path allowed in one run: a refusal at submission, a completion
        /// with `EIO` or `EINTR`, a cancellation, a broken source. Every combination of that many
        /// is explored, in every order.
        var faults: Int
        /// Per request, how it waits; empty: every request has a handler.
        var kinds: [Kind] = []

        var description: String {
            (kinds.isEmpty ? "" : "kinds \(kinds), ") + "\(faults) faults, descriptors \(descriptors), open file descriptions \(sharing.sorted { $0.key < $1.key }.map { "\($0.key)→\($0.value)" }), "
                + "\(slots) slots, \(waitsOnList ? "POSIX" : "libaio")\(handsOffInvalid ? " with fallback" : "")"
        }
    }

    enum Status: Hashable {
        case notArrived
        /// Told to take its file's identity; arrives again.
        case identifying
        case inEngine
        /// Refused with `EINVAL` and handed to the POSIX fallback.
        case inTransit
        case done(String)
    }

    struct PreparedKey: Hashable {
        var slot: Int32
        var descriptor: CInt
        var ticket: UInt64
        var needsIdentityCheck: Bool
        var checksDescription: Bool
        var prepared: EngineState.Prepared {
            var value = EngineState.Prepared(slot: slot, descriptor: descriptor, mode: .fdatasync, needsIdentityCheck: needsIdentityCheck)
            value.checksDescription = checksDescription
            value.ticket = ticket
            return value
        }
        init(_ prepared: EngineState.Prepared) {
            slot = prepared.slot
            descriptor = prepared.descriptor
            ticket = prepared.ticket
            needsIdentityCheck = prepared.needsIdentityCheck
            checksDescription = prepared.checksDescription
        }
    }

    struct Pair: Hashable {
        var index: Int
        var peerSlot: Int32
        var peerTicket: UInt64
        var peerDescriptor: CInt
    }

    enum Submitter: Hashable {
        case none
        /// Holds the role; takes batches next.
        case taking
        /// Took batches while other slots were in use; asked which share an open file description.
        case describing([PreparedKey], [Pair])
        /// Submits these slots next.
        case submitting([Int32])
    }

    enum Outcome: Hashable, CustomStringConvertible {
        case accepted
        case refused(after: Int, Errno)
        var description: String {
            switch self {
            case .accepted: "all accepted"
            case .refused(let after, let errno): "\(after) accepted, then \(errno)"
            }
        }
    }

    enum Event: CustomStringConvertible {
        case arrive(Int, cancelled: Bool)
        case arriveAgain(Int)
        case cancel(Int)
        case take
        case describe
        case submit(Outcome)
        case resubmit(Outcome)
        case kernelEnds(Int32, Errno?)
        case reap
        case submitReady
        case breakSource
        case endTransit(Int)
        case shutdown
        case releaseDriver

        var description: String {
            switch self {
            case .arrive(let r, let cancelled): "r\(r) arrives\(cancelled ? " cancelled" : "")"
            case .arriveAgain(let r): "r\(r) arrives with its identity"
            case .cancel(let r): "r\(r) cancelled"
            case .take: "submitter takes batches"
            case .describe: "submitter hears kcmp"
            case .submit(let outcome): "submit: \(outcome)"
            case .resubmit(let outcome): "hub resubmits: \(outcome)"
            case .kernelEnds(let slot, let errno): "slot \(slot) ends with \(errno.map { "\($0)" } ?? "0")"
            case .reap: "hub reaps"
            case .submitReady: "hub submits what is ready"
            case .breakSource: "completion source breaks"
            case .endTransit(let r): "fallback answers r\(r)"
            case .shutdown: "shutdown()"
            case .releaseDriver: "hub releases the driver"
            }
        }
    }

    let config: Config
    let continuations: [UnsafeContinuation<Void, any Error>]
    /// The cancelled task of the requests without a handler (``Kind``); alive while the model runs.
    let task: UnsafeCurrentTask?
    var machine: EngineState
    var fingerprint: String
    var status: [Status]
    var cancelRequested: [Bool]
    var failedSinceArrival: [Bool]
    /// Per request, the ledger's generation when its `sync` was called (carried through its second
    /// arrival, as `AIOEngine.arrive` keeps one `Waiter`).
    var stamps: [UInt64]
    var submitter = Submitter.none
    var resubmissions: [Int32] = []
    var inKernel: [Int32: CInt] = [:]
    var posted: [Int32: Errno?] = [:]
    /// Per slot: the requests of its batch when its sync was last accepted.
    var covered: [Int32: Set<Int>] = [:]
    var hubOwesSubmit = false
    var sourceBreaks = false
    var interruptionsLeft: Int
    var faultsLeft: Int
    var generation: UInt64 = 0
    /// The ledger: per open file's identity (the description's file; numbers of one file share it).
    var failure: [Int: UInt64] = [:]
    var shutdownCalled = false
    var releaseAsked = false
    var released = false

    init(_ config: Config, continuations: [UnsafeContinuation<Void, any Error>], task: UnsafeCurrentTask? = nil) {
        precondition(config.kinds.allSatisfy { $0 == .handled } || task?.isCancelled == true, "requests without a handler need a cancelled task")
        self.config = config
        self.continuations = continuations
        self.task = task
        machine = EngineState(slotCount: config.slots)
        fingerprint = machine.fingerprint
        status = Array(repeating: .notArrived, count: config.descriptors.count)
        cancelRequested = Array(repeating: false, count: config.descriptors.count)
        failedSinceArrival = Array(repeating: false, count: config.descriptors.count)
        stamps = Array(repeating: 0, count: config.descriptors.count)
        interruptionsLeft = config.interruptions
        faultsLeft = config.faults
    }

    static func == (a: EngineModel, b: EngineModel) -> Bool {
        a.fingerprint == b.fingerprint && a.status == b.status && a.cancelRequested == b.cancelRequested
            && a.failedSinceArrival == b.failedSinceArrival && a.stamps == b.stamps && a.submitter == b.submitter && a.resubmissions == b.resubmissions
            && a.inKernel == b.inKernel && a.posted == b.posted && a.covered == b.covered && a.hubOwesSubmit == b.hubOwesSubmit
            && a.sourceBreaks == b.sourceBreaks && a.interruptionsLeft == b.interruptionsLeft && a.faultsLeft == b.faultsLeft && a.generation == b.generation
            && a.failure == b.failure && a.shutdownCalled == b.shutdownCalled && a.releaseAsked == b.releaseAsked
            && a.released == b.released && a.config == b.config
    }

    func hash(into hasher: inout Hasher) {
        hasher.combine(fingerprint)
        hasher.combine(status)
        hasher.combine(submitter)
        hasher.combine(inKernel)
        hasher.combine(posted)
        hasher.combine(generation)
    }

    /// Files: every number of one open file description names one file; others are files of their own.
    func file(of fd: CInt) -> Int { config.sharing[fd] ?? Int(fd) }
    func identity(of fd: CInt) -> FileIdentity { FileIdentity(device: 7, inode: UInt64(file(of: fd))) }

    private func outcomes(_ count: Int) -> [Outcome] {
        var outcomes: [Outcome] = [.accepted]
        guard faultsLeft > 0 else { return outcomes }
        for after in 0..<count {
            outcomes.append(.refused(after: after, .resourceTemporarilyUnavailable))
            outcomes.append(.refused(after: after, .badFileDescriptor))
            if config.handsOffInvalid { outcomes.append(.refused(after: after, .invalidArgument)) }
        }
        return outcomes
    }

    func events() -> [Event] {
        var events: [Event] = []
        for r in status.indices {
            switch status[r] {
            case .notArrived:
                events.append(.arrive(r, cancelled: false))
                if r == 0, faultsLeft > 0 { events.append(.arrive(r, cancelled: true)) }
            case .identifying: events.append(.arriveAgain(r))
            case .inEngine where !cancelRequested[r] && faultsLeft > 0 && kind(r) == .handled: events.append(.cancel(r))
            case .inTransit: events.append(.endTransit(r))
            default: break
            }
        }
        switch submitter {
        case .none: break
        case .taking: events.append(.take)
        case .describing: events.append(.describe)
        case .submitting(let slots): events += outcomes(slots.count).map { .submit($0) }
        }
        if !resubmissions.isEmpty {
            events += outcomes(resubmissions.count).map { .resubmit($0) }
        } else {
            if !posted.isEmpty || (sourceBreaks && machine.reapsCompletions) { events.append(.reap) }
            if hubOwesSubmit { events.append(.submitReady) }
        }
        for (slot, _) in inKernel.sorted(by: { $0.key < $1.key }) {
            events.append(.kernelEnds(slot, nil))
            if faultsLeft > 0 { events.append(.kernelEnds(slot, .ioError)) }
            if interruptionsLeft > 0, faultsLeft > 0 { events.append(.kernelEnds(slot, .interrupted)) }
        }
        if !sourceBreaks, faultsLeft > 0 { events.append(.breakSource) }
        if !shutdownCalled { events.append(.shutdown) }
        if releaseAsked && !released { events.append(.releaseDriver) }
        return events
    }

    func kind(_ r: Int) -> Kind { r < config.kinds.count ? config.kinds[r] : .handled }

    private func waiter(_ r: Int, identityTaken: Bool) -> Waiter {
        let fd = config.descriptors[r]
        var waiter = Waiter(id: UInt64(r), descriptor: FileDescriptor(rawValue: fd), mode: .fdatasync, continuation: continuations[r],
                            arrival: stamps[r], identity: identityTaken ? identity(of: fd) : nil, identityTaken: identityTaken)
        waiter.checksCancellation = kind(r) == .handlerless
        return waiter
    }

    mutating func apply(_ event: Event, violations: inout [String]) {
        defer { fingerprint = machine.fingerprint }
        switch event {
        case .arrive(_, cancelled: true), .cancel, .breakSource, .kernelEnds(_, _?),
             .submit(.refused), .resubmit(.refused):
            faultsLeft -= 1
        default: break
        }
        switch event {
        case .arrive(let r, let cancelled):
            stamps[r] = generation
            arrive(r, machine.arrive(waiter(r, identityTaken: false), isCancelled: cancelled && kind(r) != .syncPart,
                                     onCompletionThread: false, task: task), violations: &violations)
        case .arriveAgain(let r):
            arrive(r, machine.arrive(waiter(r, identityTaken: true), isCancelled: false, onCompletionThread: false, task: task),
                   violations: &violations)
        case .cancel(let r):
            cancelRequested[r] = true
            let (removed, release) = machine.cancel(id: UInt64(r), descriptor: config.descriptors[r])
            if let removed { end(Int(removed.id), "cancelled", violations: &violations) }
            released(release, violations: &violations)
        case .take:
            var prepared: [EngineState.Prepared] = []
            var cancelled: [Waiter] = []
            let release = machine.takeBatches(into: &prepared, cancelled: &cancelled)
            if prepared.isEmpty { submitter = .none }  // the role is given up
            for waiter in cancelled { end(Int(waiter.id), "cancelled", violations: &violations) }
            released(release, violations: &violations)
            if releaseAsked, !prepared.isEmpty { violations.append("batches taken after the release") }
            if prepared.isEmpty {
                submitter = .none
            } else if prepared.contains(where: \.checksDescription) {
                // First and second holds of the lock (AIOEngine.checkDescriptions): identify the
                // slots, drop closed-and-reused descriptors (none here), list the candidates.
                var refs: [EngineState.SlotRef] = []
                machine.unidentifiedSlots(into: &refs)
                for ref in refs { machine.identified(ref, as: identity(of: ref.descriptor)) }
                var pairs: [Pair] = []
                var keys: [PreparedKey] = []
                for (index, item) in prepared.enumerated() {
                    var mismatched: [Waiter] = []
                    if item.needsIdentityCheck,
                       machine.dropMismatched(slot: item.slot, current: machine.identity(of: item.ref), into: &mismatched) {
                        keys.append(PreparedKey(item))
                        continue
                    }
                    keys.append(PreparedKey(item))
                    guard item.checksDescription else { continue }
                    var peers: [EngineState.SlotRef] = []
                    machine.sharingCandidates(of: item.ref, into: &peers)
                    for peer in peers { pairs.append(Pair(index: index, peerSlot: peer.slot, peerTicket: peer.ticket, peerDescriptor: peer.descriptor)) }
                }
                submitter = .describing(keys, pairs)
            } else {
                var slots: [Int32] = []
                for item in prepared {
                    var mismatched: [Waiter] = []
                    if item.needsIdentityCheck, machine.dropMismatched(slot: item.slot, current: identity(of: item.descriptor), into: &mismatched) { continue }
                    slots.append(item.slot)
                }
                submitter = slots.isEmpty ? .taking : .submitting(slots)
            }
        case .describe:
            guard case .describing(let keys, let pairs) = submitter else { preconditionFailure() }
            // kcmp's answers (outside the lock), then the third hold of the lock.
            var slots: [Int32] = []
            for (index, key) in keys.enumerated() {
                let peers = pairs.filter { $0.index == index && file(of: $0.peerDescriptor) == file(of: key.descriptor)
                    && config.sharing[$0.peerDescriptor] != nil && config.sharing[$0.peerDescriptor] == config.sharing[key.descriptor] }
                    .map { EngineState.SlotRef(slot: $0.peerSlot, ticket: $0.peerTicket, descriptor: $0.peerDescriptor) }
                if key.checksDescription || key.needsIdentityCheck {
                    guard machine.described(key.prepared.ref, sharesDescriptionWith: peers) == .submit else { continue }
                }
                slots.append(key.slot)
            }
            submitter = slots.isEmpty ? .taking : .submitting(slots)
        case .submit(let outcome):
            guard case .submitting(let slots) = submitter else { preconditionFailure() }
            submitter = .taking
            if let rest = submit(slots, outcome, violations: &violations) { submitter = .submitting(rest) }
        case .resubmit(let outcome):
            let slots = resubmissions
            resubmissions = []
            if let rest = submit(slots, outcome, violations: &violations) { resubmissions = rest }
        case .kernelEnds(let slot, let errno):
            inKernel[slot] = nil
            posted[slot] = errno
            if errno == .interrupted { interruptionsLeft -= 1 }
        case .reap:
            reap(violations: &violations)
        case .submitReady:
            hubOwesSubmit = false
            if machine.takeSubmitterRole() {
                if submitter != .none { violations.append("two holders of the submitter role") }
                submitter = .taking
            }
        case .breakSource:
            sourceBreaks = true
        case .endTransit(let r):
            end(r, "answered by the fallback", from: .inTransit, violations: &violations)
            released(machine.endTransit(), violations: &violations)
        case .shutdown:
            shutdownCalled = true
            released(machine.beginShutdown(), violations: &violations)
        case .releaseDriver:
            machine.released()
            released = true
        }
    }

    private mutating func arrive(_ r: Int, _ arrival: EngineState.Arrival, violations: inout [String]) {
        switch arrival {
        case .refused(let refusal):
            status[r] = .done("refused: \(refusal)")
            if kind(r) == .syncPart, refusal == .cancelled {
                violations.append("r\(r), the sync part of a durable write (not cancellable), was refused as cancelled")
            }
        case .needsIdentity:
            if status[r] == .identifying { violations.append("r\(r) asked for its identity twice") }
            status[r] = .identifying
        case .queued: status[r] = .inEngine
        case .submit:
            status[r] = .inEngine
            if submitter != .none { violations.append("r\(r) took the submitter role while it is held") }
            submitter = .taking
        }
    }

    /// Returns the slots still to submit (after a refusal of one, the rest are handed to the
    /// driver again).
    private mutating func submit(_ slots: [Int32], _ outcome: Outcome, violations: inout [String]) -> [Int32]? {
        let accepted: Int
        switch outcome {
        case .accepted: accepted = slots.count
        case .refused(let after, _): accepted = after
        }
        let acceptedSlots = Array(slots.prefix(accepted))
        if releaseAsked, !acceptedSlots.isEmpty { violations.append("a sync submitted after the release") }
        for slot in acceptedSlots {
            let ids = machine.waiterIDs(inSlot: slot)
            guard !ids.isEmpty else { continue }  // revoked by a broken source: its outcome is ignored
            let fd = config.descriptors[Int(ids[0])]
            if let ofd = config.sharing[fd],
               inKernel.contains(where: { $0.key != slot && config.sharing[$0.value] == ofd }) {
                violations.append("two syncs of open file description \(ofd) in the kernel at once")
            }
            inKernel[slot] = fd
            covered[slot] = Set(ids.map { Int($0) })
        }
        if config.waitsOnList { acceptedSlots.withUnsafeBufferPointer { machine.submitted($0) } }
        guard case .refused(let after, let errno) = outcome else { return nil }
        var failed: [Waiter] = []
        if errno == .resourceTemporarilyUnavailable {
            let release = Array(slots[after...]).withUnsafeBufferPointer { machine.exhausted($0, into: &failed) }
            for waiter in failed { end(Int(waiter.id), "EAGAIN", violations: &violations) }
            released(release, violations: &violations)
            return nil
        }
        let handOff = config.handsOffInvalid && errno == .invalidArgument
        let release = machine.refused(slot: slots[after], handOff: handOff, into: &failed)
        for waiter in failed {
            if handOff {
                end(Int(waiter.id), nil, violations: &violations)
                status[Int(waiter.id)] = .inTransit
            } else {
                end(Int(waiter.id), "\(errno)", violations: &violations)
            }
        }
        released(release, violations: &violations)
        let rest = Array(slots[(after + 1)...])
        return rest.isEmpty ? nil : rest
    }

    private mutating func reap(violations: inout [String]) {
        var finished: [(slot: Int32, waiters: [Waiter], errno: Errno?)] = []
        var retries: [Int32] = []
        for (slot, errno) in posted.sorted(by: { $0.key < $1.key }) {
            var done: [Waiter] = []
            switch machine.completed(slot: slot, result: errno.map { .failure($0) } ?? .success(()), into: &done) {
            case .finished: finished.append((slot, done, errno))
            case .retry: retries.append(slot)
            case .unknown: break
            }
        }
        posted = [:]
        let release: EngineState.Release
        if sourceBreaks, machine.reapsCompletions {
            var failed: [Waiter] = []
            release = machine.broken(.invalidArgument, into: &failed)
            finished.append((-1, failed, .invalidArgument))
            retries = []  // AIOEngine.reapCompletions: the broken batches are not resubmitted
        } else {
            release = machine.afterCompletions()
        }
        // Every failure of the round is recorded before anyone of it is resumed.
        for (_, waiters, errno) in finished where errno == .ioError && !waiters.isEmpty {
            generation += 1
            let failedFile = file(of: waiters[0].descriptor.rawValue)
            failure[failedFile] = generation
            for r in status.indices where file(of: config.descriptors[r]) == failedFile {
                switch status[r] {
                case .identifying, .inEngine, .inTransit: failedSinceArrival[r] = true
                default: break
                }
            }
        }
        for (slot, waiters, errno) in finished {
            for waiter in waiters {
                let r = Int(waiter.id)
                guard errno == nil else {
                    end(r, errno == .ioError ? "EIO" : "broken", violations: &violations)
                    continue
                }
                if let failed = failure[file(of: waiter.descriptor.rawValue)], failed > waiter.arrival {
                    end(r, "concurrentFailure", violations: &violations)
                    continue
                }
                if covered[slot]?.contains(r) != true { violations.append("r\(r) acknowledged by a sync submitted before it joined the batch") }
                if failedSinceArrival[r] { violations.append("r\(r) acknowledged although a failure of its file was recorded since it arrived") }
                end(r, "success", violations: &violations)
            }
        }
        for (slot, _, _) in finished { covered[slot] = nil }
        resubmissions = retries
        hubOwesSubmit = true
        released(release, violations: &violations)
    }

    private mutating func end(_ r: Int, _ outcome: String?, from expected: Status = .inEngine, violations: inout [String]) {
        guard status[r] == expected else {
            violations.append("r\(r) ended (\(outcome ?? "handed to the fallback")) while \(status[r])")
            return
        }
        if let outcome { status[r] = .done(outcome) }
        if kind(r) == .syncPart, outcome == "cancelled" {
            violations.append("r\(r), the sync part of a durable write (not cancellable), ended with CancellationError")
        }
    }

    private mutating func released(_ release: EngineState.Release, violations: inout [String]) {
        guard release == .release else { return }
        if releaseAsked { violations.append("the release was asked for twice") }
        releaseAsked = true
        if machine.outstanding != 0 || machine.inTransit != 0 { violations.append("released with requests outstanding") }
        if submitter != .none { violations.append("released while the submitter role is held") }
    }

    func check(violations: inout [String]) {
        let someoneActs = !inKernel.isEmpty || !posted.isEmpty || submitter != .none || !resubmissions.isEmpty || hubOwesSubmit
            || (sourceBreaks && machine.reapsCompletions)
        if machine.outstanding > 0, !someoneActs {
            violations.append("stuck: \(machine.outstanding) requests outstanding, nothing in flight, nobody to act (\(machine.summary))")
        }
    }

    func checkFinal(violations: inout [String]) {
        for r in status.indices {
            if case .done = status[r] { continue }
            violations.append("nothing can happen, yet r\(r) is \(status[r])")
        }
        if shutdownCalled, !released { violations.append("nothing can happen, yet the driver was not released after shutdown()") }
    }
}

/// `ASYNC_FSYNC_MODEL_STATES` overrides the bound on states per configuration.
let engineStateBound = Int(ProcessInfo.processInfo.environment["ASYNC_FSYNC_MODEL_STATES"] ?? "") ?? 3_000_000

extension AsyncFsyncTests.ModelChecks {
    @Test("engine: every order of 3 requests over 2 descriptors (one a dup), 2 slots: arrivals, identity, cancellation, submission outcomes, completions 0/EIO/EINTR, a broken source, shutdown, release")
    func engine() async throws {
        let parked = Parked()
        let continuations = try await parked.make(3)
        // One event off the happy path in every order (about 75 000 states, about a minute in a
        // debug build); none under a sanitizer, which runs the same code 5–10 times slower.
        // `ASYNC_FSYNC_MODEL_FAULTS=2` explores every pair (a longer run, see docs/design.md).
        let underSanitizer = testsupport_tsan_loaded() != 0 || ProcessInfo.processInfo.environment["ASAN_OPTIONS"] != nil
        let faults = Int(ProcessInfo.processInfo.environment["ASYNC_FSYNC_MODEL_FAULTS"] ?? "") ?? (underSanitizer ? 0 : 1)
        // Kernel AIO (with the POSIX fallback) and POSIX, each with a descriptor and its dup: one open
        // file description under two numbers, and a request of its own on each number.
        let configs: [EngineModel.Config] = [
            .init(descriptors: [5, 6, 6], sharing: [5: 1, 6: 1], slots: 2, waitsOnList: false, handsOffInvalid: true,
                  interruptions: 1, faults: faults),
            .init(descriptors: [5, 5, 6], sharing: [5: 1, 6: 1], slots: 2, waitsOnList: true, handsOffInvalid: false,
                  interruptions: 1, faults: faults),
        ]
        var total = 0
        for config in configs {
            let started = ContinuousClock.now
            let result = modelCheck(EngineModel(config, continuations: continuations), maxStates: engineStateBound)
            total += result.states
            print("model check, engine, \(config): \(result.states) states, \(result.transitions) transitions, \(ContinuousClock.now - started)")
            #expect(!result.truncated, "\(config): the bound was not reached")
            #expect(result.violations.isEmpty, Comment(rawValue: "\(config):\n" + result.violations.joined(separator: "\n")))
        }
        print("model check, engine: \(total) states in \(configs.count) configurations, no violation")
        await parked.finish()
    }
}

extension AsyncFsyncTests.ModelChecks {
    @Test("engine, requests without a cancellation handler: one whose task is kept (cancelled) and the sync part of a durable write (not cancellable, its task cancelled) on one descriptor and a dup; the sync part never ends cancelled")
    func engineRequestsWithoutHandler() async throws {
        let parked = Parked()
        let continuations = try await parked.make(3)
        let underSanitizer = testsupport_tsan_loaded() != 0 || ProcessInfo.processInfo.environment["ASAN_OPTIONS"] != nil
        // Two faults (a cancellation and an EAGAIN, say) in every order: still small.
        let faults = Int(ProcessInfo.processInfo.environment["ASYNC_FSYNC_MODEL_FAULTS"] ?? "") ?? (underSanitizer ? 0 : 2)
        let configs: [EngineModel.Config] = [
            .init(descriptors: [5, 5, 6], sharing: [5: 1, 6: 1], slots: 2, waitsOnList: false, handsOffInvalid: true,
                  interruptions: 1, faults: faults, kinds: [.handlerless, .syncPart, .handled]),
            .init(descriptors: [5, 5, 6], sharing: [5: 1, 6: 1], slots: 2, waitsOnList: true, handsOffInvalid: false,
                  interruptions: 1, faults: faults, kinds: [.syncPart, .handlerless, .handled]),
        ]
        for config in configs {
            // The kept tasks are this child task's: cancelled, and alive while the model runs.
            let started = ContinuousClock.now
            let (states, transitions, truncated, violations) = await Task {
                withUnsafeCurrentTask { $0?.cancel() }
                return withUnsafeCurrentTask { task in
                    let result = modelCheck(EngineModel(config, continuations: continuations, task: task), maxStates: engineStateBound)
                    return (result.states, result.transitions, result.truncated, result.violations)
                }
            }.value
            print("model check, engine, \(config): \(states) states, \(transitions) transitions, \(ContinuousClock.now - started)")
            #expect(!truncated, "\(config): the bound was not reached")
            #expect(violations.isEmpty, Comment(rawValue: "\(config):\n" + violations.joined(separator: "\n")))
        }
        await parked.finish()
    }
}
