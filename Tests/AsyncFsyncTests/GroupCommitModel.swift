import SystemPackage
import Testing

@testable import AsyncFsync

/// ``GroupCommit`` as a model: its machine (``GroupCommitState``, the real code) driven the way
/// `GroupCommit.swift` drives it, with every request, leader task, wrapped sync and shutdown as an
/// actor whose next step may come in any order.
///
/// Each request is one task: it arrives (possibly already cancelled), waits, may be cancelled,
/// and is resumed with a result or the order to lead. A leader's task then gathers (if the group
/// has a delay), picks the member whose descriptor syncs, runs the wrapped sync (which ends with
/// 0, `EIO`, or `EBADF` for a descriptor that cannot sync), hands the result to the batch and the
/// file to the next batch's leader. The wrapped backend's ledger is modelled: an `EIO` is recorded
/// (the generation moves) before the sync returns, and a success is judged against it from the
/// arrival stamp the machine carried, as `GroupCommit.deliver` does.
///
/// Invariants: every request ends exactly once; a success comes only from a sync that started
/// after the request arrived, and only when no failure of its file was recorded since it arrived;
/// one leader per file; a request waits only while its file has a leader; `shutdown()` returns
/// only when no batch is led and every accepted request has ended.
struct GroupCommitModel: CheckedModel {
    typealias Machine = GroupCommitState<Int, Int>

    struct Config: Hashable, CustomStringConvertible {
        /// Per request, the file it syncs (0 or 1).
        var files: [Int]
        var gathers: Bool
        var sticky: Bool
        /// A request whose descriptor cannot sync (an `O_PATH` descriptor: `EBADF`).
        var badDescriptor: Int?

        var description: String {
            "files \(files), \(gathers ? "delay" : "no delay"), \(sticky ? "sticky" : "not sticky")"
                + (badDescriptor.map { ", request \($0)'s descriptor cannot sync" } ?? "")
        }
    }

    enum Status: Hashable {
        case notArrived, waiting, leading, done(String)
    }

    enum Phase: Hashable {
        /// Resumed with the order to lead; its task has not run yet.
        case resumed
        case gathering
        case ready
        /// The wrapped sync of `target`'s descriptor runs; `covered`: the requests that had
        /// arrived when it started.
        case syncing(target: Int, covered: Int)
    }

    struct Leader: Hashable {
        var request: Int
        var phase: Phase
    }

    enum Event: CustomStringConvertible {
        case arrive(Int, cancelled: Bool)
        case cancel(Int)
        case leaderStep(file: Int)
        case syncEnds(file: Int, errno: Errno?)
        case shutdown

        var description: String {
            switch self {
            case .arrive(let r, let cancelled): "r\(r) arrives\(cancelled ? " cancelled" : "")"
            case .cancel(let r): "r\(r) cancelled"
            case .leaderStep(let file): "leader of f\(file) steps"
            case .syncEnds(let file, let errno): "sync of f\(file) ends with \(errno.map { "\($0)" } ?? "0")"
            case .shutdown: "shutdown()"
            }
        }
    }

    let config: Config
    var machine: Machine
    var status: [Status]
    var cancelRequested: [Bool]
    /// The harness's own record: a failure of the request's file was recorded since it arrived.
    var failedSinceArrival: [Bool]
    /// Requests that entered the machine (a bit each).
    var arrived = 0
    var leaders: [Int: Leader] = [:]
    /// The wrapped backend's ledger: its generation and, per file, its latest failure's.
    var generation: UInt64 = 0
    var failure: [Int: UInt64] = [:]
    enum Shutdown: Hashable { case none, waiting, done }
    var shutdown = Shutdown.none

    init(_ config: Config) {
        self.config = config
        machine = Machine(gathers: config.gathers)
        status = Array(repeating: .notArrived, count: config.files.count)
        cancelRequested = Array(repeating: false, count: config.files.count)
        failedSinceArrival = Array(repeating: false, count: config.files.count)
    }

    static func identity(_ file: Int) -> FileIdentity { FileIdentity(device: 9, inode: UInt64(file)) }

    func events() -> [Event] {
        var events: [Event] = []
        for r in status.indices {
            switch status[r] {
            case .notArrived:
                events.append(.arrive(r, cancelled: false))
                events.append(.arrive(r, cancelled: true))
            case .waiting where !cancelRequested[r]:
                events.append(.cancel(r))
            default: break
            }
        }
        for (file, leader) in leaders.sorted(by: { $0.key < $1.key }) {
            switch leader.phase {
            case .syncing(let target, _):
                if target == config.badDescriptor {
                    events.append(.syncEnds(file: file, errno: .badFileDescriptor))
                } else {
                    events.append(.syncEnds(file: file, errno: nil))
                    events.append(.syncEnds(file: file, errno: .ioError))
                }
            default:
                events.append(.leaderStep(file: file))
            }
        }
        if shutdown == .none { events.append(.shutdown) }
        return events
    }

    mutating func apply(_ event: Event, violations: inout [String]) {
        switch event {
        case .arrive(let r, let cancelled):
            let file = config.files[r]
            if config.sticky, failure[file] != nil {
                status[r] = .done("earlierFailure")  // the wrapped backend's sticky rule, at admission
                return
            }
            let member = Machine.Member(id: UInt64(r), descriptor: FileDescriptor(rawValue: CInt(10 + r)), mode: .fdatasync,
                                        arrival: generation, continuation: r)
            switch machine.arrive(member, file: Self.identity(file), isCancelled: cancelled) {
            case .lead:
                if leaders[file] != nil { violations.append("r\(r) leads f\(file), which has a leader already") }
                leaders[file] = Leader(request: r, phase: .resumed)
                status[r] = .leading
                arrived |= 1 << r
            case .queued:
                status[r] = .waiting
                arrived |= 1 << r
            case .shutDown: status[r] = .done("shutDown")
            case .cancelled: status[r] = .done("cancelled")
            }
        case .cancel(let r):
            cancelRequested[r] = true
            if let continuation = machine.cancel(id: UInt64(r), file: Self.identity(config.files[r])) {
                resume(continuation, "cancelled", violations: &violations)
            }
        case .leaderStep(let file):
            var leader = leaders[file]!
            switch leader.phase {
            case .resumed:
                leader.phase = config.gathers ? .gathering : .ready
            case .gathering:
                machine.startSync(of: Self.identity(file))
                leader.phase = .ready
            case .ready:
                guard let target = machine.syncTarget(of: Self.identity(file)) else {
                    leaders[file] = nil
                    finish(machine.syncEnded(of: Self.identity(file)), file: file, violations: &violations)
                    return
                }
                leader.phase = .syncing(target: Int(target.member.id), covered: arrived)
            case .syncing:
                preconditionFailure("a sync ends by syncEnds")
            }
            leaders[file] = leader
        case .syncEnds(let file, let errno):
            guard case .syncing(let target, let covered) = leaders[file]!.phase else { preconditionFailure() }
            if errno == .ioError {
                generation += 1
                failure[file] = generation
                for r in status.indices where arrived & (1 << r) != 0 && config.files[r] == file {
                    if case .done = status[r] { continue }
                    failedSinceArrival[r] = true
                }
            }
            if errno == .badFileDescriptor {
                // The target's own error; the batch goes on through another member's descriptor.
                if let dropped = machine.drop(id: UInt64(target), from: Self.identity(file)) {
                    deliver(dropped, "EBADF", file: file, covered: covered, violations: &violations)
                }
                leaders[file]!.phase = .ready
                return
            }
            let ended = machine.syncEnded(of: Self.identity(file))
            leaders[file] = nil
            for member in ended.members {
                deliver(member, errno == nil ? "success" : "EIO", file: file, covered: covered, violations: &violations)
            }
            finish(ended, file: file, violations: &violations)
        case .shutdown:
            if machine.beginShutdown(waiter: 0) != nil {
                shutdown = .done
                checkShutdownDone(violations: &violations)
            } else {
                shutdown = .waiting
            }
        }
    }

    /// `GroupCommit.deliver`: the in-flight rule from the arrival the machine carried.
    private mutating func deliver(_ member: Machine.Member, _ outcome: String, file: Int, covered: Int, violations: inout [String]) {
        let r = Int(member.id)
        var outcome = outcome
        if outcome == "success", let arrival = member.arrival, let failed = failure[file], failed > arrival {
            outcome = "concurrentFailure"
        }
        if outcome == "success" {
            if covered & (1 << r) == 0 { violations.append("r\(r) acknowledged by a sync that started before it arrived") }
            if failedSinceArrival[r] { violations.append("r\(r) acknowledged although a failure of f\(file) was recorded since it arrived") }
        }
        if let continuation = member.continuation {
            if continuation != r { violations.append("r\(r)'s result went to r\(continuation)'s continuation") }
            resume(r, outcome, violations: &violations)
        } else {
            // The leader's own member: its task takes the result.
            guard case .leading = status[r] else {
                violations.append("r\(r) has no continuation but does not lead")
                return
            }
            status[r] = .done(outcome)
        }
    }

    private mutating func resume(_ r: Int, _ outcome: String, violations: inout [String]) {
        switch status[r] {
        case .waiting: status[r] = .done(outcome)
        case .done(let earlier): violations.append("r\(r) resumed twice (\(earlier), then \(outcome))")
        default: violations.append("r\(r) resumed while \(status[r])")
        }
    }

    private mutating func finish(_ ended: Machine.SyncEnded, file: Int, violations: inout [String]) {
        if let next = ended.nextLeader {
            guard case .waiting = status[next] else {
                violations.append("r\(next) told to lead while \(status[next])")
                return
            }
            if leaders[file] != nil { violations.append("f\(file) handed to r\(next) while it has a leader") }
            status[next] = .leading
            leaders[file] = Leader(request: next, phase: .resumed)
        }
        if !ended.drained.isEmpty {
            if shutdown != .waiting { violations.append("shutdown callers resumed while \(shutdown)") }
            shutdown = .done
            checkShutdownDone(violations: &violations)
        }
    }

    private func checkShutdownDone(violations: inout [String]) {
        if !machine.isIdle { violations.append("shutdown() returned while a batch is led") }
        for r in status.indices where arrived & (1 << r) != 0 {
            if case .done = status[r] { continue }
            violations.append("shutdown() returned while r\(r) is \(status[r])")
        }
    }

    func check(violations: inout [String]) {
        for r in status.indices {
            if case .waiting = status[r], leaders[config.files[r]] == nil {
                violations.append("r\(r) waits but f\(config.files[r]) has no leader to hand it a result (stuck)")
            }
        }
        for (file, leader) in leaders where config.files[leader.request] != file {
            violations.append("r\(leader.request) leads another file")
        }
    }

    func checkFinal(violations: inout [String]) {
        for r in status.indices {
            if case .done = status[r] { continue }
            violations.append("nothing can happen, yet r\(r) is \(status[r])")
        }
        if shutdown == .waiting { violations.append("nothing can happen, yet shutdown() waits") }
        if !machine.isIdle { violations.append("nothing can happen, yet a batch is led") }
    }
}

extension AsyncFsyncTests {
    /// Both state machines, explored exhaustively within a bound (`scripts/test` runs it; the
    /// number of states is printed).
    @Suite struct ModelChecks {
        @Test("GroupCommit: every order of 3 requests over 1–2 files (arrive, cancel, delay, EIO, a descriptor that cannot sync, shutdown), sticky or not")
        func groupCommit() {
            var configs: [GroupCommitModel.Config] = []
            for files in [[0, 0, 0], [0, 0, 1]] {
                for gathers in [false, true] {
                    for sticky in [false, true] {
                        for bad in [nil, 1] as [Int?] {
                            configs.append(.init(files: files, gathers: gathers, sticky: sticky, badDescriptor: bad))
                        }
                    }
                }
            }
            var total = 0
            for config in configs {
                let result = modelCheck(GroupCommitModel(config))
                total += result.states
                #expect(!result.truncated, "\(config): the bound was not reached")
                #expect(result.violations.isEmpty, Comment(rawValue: "\(config):\n" + result.violations.joined(separator: "\n")))
            }
            print("model check, GroupCommit: \(total) states in \(configs.count) configurations, no violation")
        }
    }
}
