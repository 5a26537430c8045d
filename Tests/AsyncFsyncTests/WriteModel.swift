import CTestSupport
import Foundation
import SystemPackage
import Testing

@testable import AsyncFsync

/// ``WriteState`` (the real code) as a model, driven the way `AIOEngine` drives it: writes and
/// syncs arrive in any order on two descriptors, the holder of the write submitter role takes
/// writes into slots, each submission is accepted, refused (`EBADF`) or meets `EAGAIN`, and each
/// write completes in full, short (half its bytes), with `EINTR` or with `EIO`. Waiting writes and
/// held syncs may be cancelled, the completion source may break.
///
/// Invariants (the seeds' contract, `io_fsync(3)`):
/// - a sync goes on to the sync machine only once every write its descriptor accepted before the
///   sync arrived is complete (done, failed or cancelled before submission);
/// - a sync is never held by writes accepted after it: while it is held, some write accepted
///   before it is incomplete;
/// - every write ends exactly once, and succeeds only when all its bytes were written;
/// - a write is cancelled (`CancellationError`: nothing written) only if the system never had it:
///   not the rest of a short write nor a write interrupted with `EINTR`, waiting again after an
///   `EAGAIN` (review-nocancel, finding 1);
/// - the machine's `pending` counts the writes and held syncs without an answer;
/// - no stuck state: while a write waits, someone can act;
/// - a held sync without a cancellation handler (every odd-numbered sync here) has its task kept
///   while it is held and handed back exactly once when it is released (its cancellation is
///   looked at then); one with a handler has none, and a break forgets every task kept.
struct WriteModel: CheckedModel {
    struct Config: CustomStringConvertible {
        /// Per write, its descriptor.
        var writes: [CInt]
        /// Per sync, its descriptor.
        var syncs: [CInt]
        var slots: Int
        var faults: Int

        var description: String { "writes on \(writes), syncs on \(syncs), \(slots) slots, \(faults) faults" }
    }

    enum WriteStatus: Hashable { case notArrived, accepted, done(Bool) }
    enum SyncStatus: Hashable { case notArrived, held, released, cancelled, failed }

    enum Event: CustomStringConvertible {
        case arriveWrite(Int)
        case arriveSync(Int)
        case takeRole
        case take
        case submit(slot: Int32, outcome: Int)  // 0 accepted, 1 EAGAIN, 2 EBADF
        case complete(slot: Int32, outcome: Int)  // 0 full, 1 short, 2 EINTR, 3 EIO
        case cancelWrite(Int)
        case cancelSync(Int)
        case breakSource

        var description: String {
            switch self {
            case .arriveWrite(let w): "w\(w) arrives"
            case .arriveSync(let s): "s\(s) arrives"
            case .takeRole: "the completion thread takes the submitter role"
            case .take: "the submitter takes writes"
            case .submit(let slot, let outcome): "slot \(slot) submitted: \(["accepted", "EAGAIN", "EBADF"][outcome])"
            case .complete(let slot, let outcome): "slot \(slot) completes \(["in full", "short", "with EINTR", "with EIO"][outcome])"
            case .cancelWrite(let w): "w\(w) cancelled"
            case .cancelSync(let s): "s\(s) cancelled"
            case .breakSource: "the completion source breaks"
            }
        }
    }

    let config: Config
    let continuation: UnsafeContinuation<Void, any Error>
    /// The task kept for the syncs without a cancellation handler (the test's own).
    let task: UnsafeCurrentTask?
    var machine: WriteState
    var fingerprint: String
    var writes: [WriteStatus]
    var syncs: [SyncStatus]
    /// Per sync, the writes of its descriptor accepted and incomplete when it arrived.
    var before: [[Int]]
    var holdsRole = false
    /// Slots the holder of the submitter role took, not yet handed to the system.
    var toSubmit: [Int32] = []
    /// Slots whose write the completion thread submits again (the rest of a short write, after
    /// `EINTR`): its own submission, without the role, concurrent with the role holder's.
    var retrying: [Int32] = []
    /// Slots in the system.
    var inSystem: [Int32] = []
    var faultsLeft: Int
    var broken = false
    /// Bytes each write has written (of 2).
    var written: [Int]
    /// Per write, whether the system had it (a completion was reported for it).
    var reached: [Bool]

    static var buffer: UnsafeRawPointer { UnsafeRawPointer(bitPattern: 0x1000)! }

    init(_ config: Config, continuation: UnsafeContinuation<Void, any Error>, task: UnsafeCurrentTask?) {
        self.config = config
        self.continuation = continuation
        self.task = task
        machine = WriteState(slotCount: config.slots)
        fingerprint = machine.fingerprint
        writes = Array(repeating: .notArrived, count: config.writes.count)
        syncs = Array(repeating: .notArrived, count: config.syncs.count)
        before = Array(repeating: [], count: config.syncs.count)
        written = Array(repeating: 0, count: config.writes.count)
        reached = Array(repeating: false, count: config.writes.count)
        faultsLeft = config.faults
    }

    static func == (a: WriteModel, b: WriteModel) -> Bool {
        a.fingerprint == b.fingerprint && a.writes == b.writes && a.syncs == b.syncs && a.holdsRole == b.holdsRole
            && a.toSubmit == b.toSubmit && a.retrying == b.retrying && a.inSystem == b.inSystem && a.faultsLeft == b.faultsLeft && a.broken == b.broken
            && a.written == b.written && a.reached == b.reached && a.before == b.before
    }

    func hash(into hasher: inout Hasher) {
        hasher.combine(fingerprint)
        hasher.combine(writes)
        hasher.combine(syncs)
        hasher.combine(toSubmit)
        hasher.combine(retrying)
        hasher.combine(inSystem)
    }

    func events() -> [Event] {
        var list: [Event] = []
        for w in writes.indices where writes[w] == .notArrived && !broken { list.append(.arriveWrite(w)) }
        for s in syncs.indices where syncs[s] == .notArrived && !broken { list.append(.arriveSync(s)) }
        if !holdsRole, !broken, toSubmit.isEmpty, machine.takeSubmitterRole_wouldSucceed { list.append(.takeRole) }
        if holdsRole, toSubmit.isEmpty { list.append(.take) }
        for slot in toSubmit + retrying {
            list.append(.submit(slot: slot, outcome: 0))
            if faultsLeft > 0 {
                list.append(.submit(slot: slot, outcome: 1))
                list.append(.submit(slot: slot, outcome: 2))
            }
        }
        for slot in inSystem {
            list.append(.complete(slot: slot, outcome: 0))
            list.append(.complete(slot: slot, outcome: 1))
            if faultsLeft > 0 {
                list.append(.complete(slot: slot, outcome: 2))
                list.append(.complete(slot: slot, outcome: 3))
            }
        }
        for w in writes.indices where writes[w] == .accepted && faultsLeft > 0 { list.append(.cancelWrite(w)) }
        // Only a sync with a cancellation handler is cancelled while held (one without is looked
        // at when it is released).
        for s in syncs.indices where syncs[s] == .held && faultsLeft > 0 && !Self.handlerless(s) { list.append(.cancelSync(s)) }
        if faultsLeft > 0, !broken, writes.contains(.accepted) { list.append(.breakSource) }
        return list
    }

    private func request(_ w: Int) -> WriteRequest {
        WriteRequest(id: UInt64(w), descriptor: FileDescriptor(rawValue: config.writes[w]), buffer: Self.buffer, count: 2,
                     offset: 0, kind: .plain, continuation: continuation, arrival: 0)
    }

    private func waiter(_ s: Int) -> Waiter {
        Waiter(id: UInt64(100 + s), descriptor: FileDescriptor(rawValue: config.syncs[s]), mode: .fdatasync,
               continuation: continuation, arrival: 0, identity: nil, identityTaken: true)
    }

    /// Odd-numbered syncs have no cancellation handler.
    static func handlerless(_ s: Int) -> Bool { s % 2 == 1 }

    private mutating func release(_ released: [Waiter], violations: inout [String]) {
        for waiter in released {
            let s = Int(waiter.id) - 100
            let kept = machine.takeTask(of: waiter)
            if Self.handlerless(s) && syncs[s] == .held && kept == nil {
                violations.append("s\(s), without a cancellation handler, released without its task: its cancellation is lost")
            }
            if !Self.handlerless(s) && kept != nil { violations.append("s\(s) has a handler, yet a task was kept for it") }
            for w in before[s] where writes[w] == .accepted {
                violations.append("s\(s) released while w\(w), accepted before it, is incomplete")
            }
            if syncs[s] != .held { violations.append("s\(s) released twice or never held") }
            syncs[s] = .released
        }
    }

    private mutating func end(_ requests: [WriteRequest], success: Bool, violations: inout [String]) {
        for request in requests {
            let w = Int(request.id)
            if writes[w] != .accepted { violations.append("w\(w) ended twice") }
            if success, written[w] < 2 { violations.append("w\(w) succeeded with \(written[w]) of 2 bytes written") }
            writes[w] = .done(success)
        }
    }

    mutating func apply(_ event: Event, violations: inout [String]) {
        defer { fingerprint = machine.fingerprint }
        var released: [Waiter] = []
        var ended: [WriteRequest] = []
        switch event {
        case .arriveWrite(let w):
            writes[w] = .accepted
            if machine.arrive(request(w), onCompletionThread: false) == .submit { holdsRole = true }
        case .arriveSync(let s):
            before[s] = writes.indices.filter { writes[$0] == .accepted && config.writes[$0] == config.syncs[s] }
            if machine.gate(waiter(s), task: Self.handlerless(s) ? task : nil) != nil {
                syncs[s] = .released
                if !before[s].isEmpty { violations.append("s\(s) went on while writes accepted before it are incomplete: \(before[s])") }
            } else {
                syncs[s] = .held
            }
        case .takeRole:
            if machine.takeSubmitterRole() { holdsRole = true }
        case .take:
            var prepared: [WriteState.Prepared] = []
            if machine.takeWrites(into: &prepared) {
                toSubmit.append(contentsOf: prepared.map(\.slot))
            } else {
                holdsRole = false
            }
        case .submit(let slot, let outcome):
            // The submission the slot belongs to: the role holder's or the completion thread's.
            let isRetry = retrying.contains(slot)
            var list = isRetry ? retrying : toSubmit
            list.removeAll { $0 == slot }
            defer { if isRetry { retrying = list } else { toSubmit = list } }
            switch outcome {
            case 0:
                inSystem.append(slot)
                [slot].withUnsafeBufferPointer { machine.submitted($0) }
            case 1:
                // The engine hands the rest of its list over together: EAGAIN refuses all of them.
                faultsLeft -= 1
                let rest = [slot] + list
                list.removeAll()
                rest.withUnsafeBufferPointer { machine.exhausted($0, into: &ended, released: &released) }
                end(ended, success: false, violations: &violations)
            default:
                faultsLeft -= 1
                machine.refused(slot: slot, into: &ended, released: &released)
                end(ended, success: false, violations: &violations)
            }
        case .complete(let slot, let outcome):
            inSystem.removeAll { $0 == slot }
            let w = machine.requestID(inSlot: slot).map { Int($0) }
            let result: Result<Int, Errno>
            switch outcome {
            case 0: result = .success(2 - (w.map { written[$0] } ?? 0))
            case 1: result = .success(1)
            case 2: result = .failure(.interrupted)
            default: result = .failure(.ioError)
            }
            if outcome >= 2 { faultsLeft -= 1 }
            if let w { reached[w] = true }
            if let w, case .success(let bytes) = result { written[w] = min(2, written[w] + bytes) }
            switch machine.completed(slot: slot, result: result, done: &ended, released: &released) {
            case .retry: retrying.append(slot)
            case .finished(let result):
                if case .success = result { end(ended, success: true, violations: &violations) }
                else { end(ended, success: false, violations: &violations) }
            case .unknown: violations.append("slot \(slot) unknown at its completion")
            }
        case .cancelWrite(let w):
            faultsLeft -= 1
            if let request = machine.cancel(id: UInt64(w), descriptor: config.writes[w], released: &released) {
                if reached[w] {
                    violations.append("w\(w) cancelled (CancellationError: nothing written) after the system had it (\(written[w]) of 2 bytes written)")
                }
                end([request], success: false, violations: &violations)
            } else if !reached[w], !(0..<Int32(config.slots)).contains(where: { machine.requestID(inSlot: $0) == UInt64(w) }) {
                // The other half of the rule: a write that waits for a slot and the system never
                // had is removed by its cancellation (ReviewCancel3).
                violations.append("w\(w) waits for a slot and the system never had it, yet its cancellation left it")
            }
        case .cancelSync(let s):
            faultsLeft -= 1
            if machine.cancelHeld(id: UInt64(100 + s), descriptor: config.syncs[s]) != nil {
                syncs[s] = .cancelled
            } else {
                violations.append("s\(s) held but not found by its cancellation")
            }
        case .breakSource:
            faultsLeft -= 1
            broken = true
            var held: [Waiter] = []
            var inKernel: [WriteRequest] = []
            machine.broken(into: &ended, inSystem: &inKernel, held: &held)
            end(ended + inKernel, success: false, violations: &violations)  // the latter answered at the release
            for waiter in held {
                syncs[Int(waiter.id) - 100] = .failed
                if machine.takeTask(of: waiter) != nil { violations.append("s\(Int(waiter.id) - 100): its task is kept after the break answered it") }
            }
            toSubmit.removeAll()
            retrying.removeAll()
            inSystem.removeAll()
        }
        release(released, violations: &violations)
    }

    func check(violations: inout [String]) {
        for s in syncs.indices where syncs[s] == .held {
            if !before[s].contains(where: { writes[$0] == .accepted }) {
                violations.append("s\(s) held although every write accepted before it is complete")
            }
        }
        let pending = writes.filter { $0 == .accepted }.count + syncs.filter { $0 == .held }.count
        if machine.pending != pending { violations.append("pending \(machine.pending), but \(pending) without an answer") }
        let handlerlessHeld = syncs.indices.filter { syncs[$0] == .held && Self.handlerless($0) }.count
        if machine.heldTaskCount != handlerlessHeld {
            violations.append("\(machine.heldTaskCount) tasks kept for \(handlerlessHeld) held syncs without a handler")
        }
        if !broken, writes.contains(.accepted), !holdsRole, toSubmit.isEmpty, retrying.isEmpty, inSystem.isEmpty,
           !machine.takeSubmitterRole_wouldSucceed {
            violations.append("stuck: writes accepted, none in flight, nobody to submit (\(machine.fingerprint))")
        }
    }

    func checkFinal(violations: inout [String]) {
        for w in writes.indices where writes[w] == .accepted { violations.append("nothing can happen, yet w\(w) has no answer") }
        for s in syncs.indices where syncs[s] == .held { violations.append("nothing can happen, yet s\(s) is held") }
    }
}

extension WriteState {
    /// Whether ``takeSubmitterRole()`` would succeed now (the model's liveness check).
    var takeSubmitterRole_wouldSucceed: Bool {
        var copy = self
        return copy.takeSubmitterRole()
    }
}

extension AsyncFsyncTests.ModelChecks {
    @Test("writes: every order of writes and syncs over 2 descriptors, 2 slots: submission accepted/EAGAIN/EBADF, completions full/short/EINTR/EIO, cancellation, a broken source; a sync goes on only after the writes accepted before it")
    func writes() async throws {
        let parked = Parked()
        let continuations = try await parked.make(1)
        let underSanitizer = testsupport_tsan_loaded() != 0 || ProcessInfo.processInfo.environment["ASAN_OPTIONS"] != nil
        let faults = Int(ProcessInfo.processInfo.environment["ASYNC_FSYNC_MODEL_FAULTS"] ?? "") ?? (underSanitizer ? 0 : 1)
        let configs: [WriteModel.Config] = [
            .init(writes: [5, 5, 6], syncs: [5, 6], slots: 2, faults: faults),
            .init(writes: [5, 5], syncs: [5, 5], slots: 1, faults: faults),
            // Two faults: two EAGAINs, the completion thread's (a short write's rest) and the role
            // holder's, can leave no write in a slot (review of issue 17, FINDING 1).
            .init(writes: [5, 5], syncs: [5], slots: 2, faults: underSanitizer ? faults : 2),
            // Three faults: a short write's rest put back after EAGAIN, its cancellation, then a
            // break or a second EAGAIN (ReviewCancel3: a partly written write is answered once,
            // never as cancelled, and the sync held behind it is released once).
            .init(writes: [5, 5], syncs: [5], slots: 2, faults: underSanitizer ? faults : 3),
        ]
        var total = 0
        for config in configs {
            let task = withUnsafeCurrentTask { $0 }  // this test's task: alive while the model runs
            let result = modelCheck(WriteModel(config, continuation: continuations[0], task: task), maxStates: engineStateBound)
            total += result.states
            print("model check, writes, \(config): \(result.states) states, \(result.transitions) transitions")
            #expect(!result.truncated, "\(config): the bound was not reached")
            #expect(result.violations.isEmpty, Comment(rawValue: "\(config):\n" + result.violations.joined(separator: "\n")))
        }
        print("model check, writes: \(total) states in \(configs.count) configurations, no violation")
        await parked.finish()
    }
}
