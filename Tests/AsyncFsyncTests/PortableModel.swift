import CTestSupport
import Foundation
import SystemPackage
import Testing

@testable import AsyncFsync

/// ``PortableBackend`` as a model: its machine (``PortableState``, the real code) driven the way
/// `PortableBackend.swift` drives it, with every request's task, every thread and the shutdown as
/// actors whose next step may come in any order.
///
/// Each request (a sync, a write or a durable write of descriptor 0 or 1) arrives (is submitted;
/// a queued one signals the condition), and may be cancelled through its handler (a cancelled
/// write wakes as many threads as it released syncs). Each thread is awake (it asks ``next()``),
/// asleep on the condition (woken by a signal: one sleeper; a broadcast: all), busy with a piece
/// of work, or gone. A write part ends with success or an error (a failed durable write makes no
/// sync), reported with ``PortableState/finished(_:)`` or
/// ``PortableState/durableWriteWritten(_:job:succeeded:)``, whose released syncs wake threads as
/// the backend does; a sync ends. `shutdown()` broadcasts once.
///
/// Invariants: every request ends exactly once; a sync (a sync request's, or a durable write's
/// sync part) never starts while a write of its descriptor accepted before it is incomplete, and a
/// durable write's sync never before its own write; a sync still to start is held exactly when
/// such an earlier write is incomplete (so never by a write accepted after it), and is otherwise
/// queued for a thread; a request queued or held is given back to its cancellation, one a thread
/// took is not; a queued request always has an awake or busy thread to take it (no lost wake-up);
/// `shutdown()` returns only when every accepted request, writes included, has ended; and no
/// stuck state (nothing can happen while a request or the shutdown waits).
struct PortableModel: CheckedModel {
    typealias Machine = PortableState<Int, Int>
    typealias Kind = Machine.Kind

    struct Config: Hashable, CustomStringConvertible {
        /// Per request, what it asks for and its descriptor.
        var kinds: [Kind]
        var descriptors: [CInt]
        var threads: Int
        /// Whether write parts may fail (`ENOSPC`).
        var writeErrors: Bool

        var description: String {
            let requests = zip(kinds, descriptors).map { kind, fd in
                (kind == .sync ? "sync" : kind == .write ? "write" : "durable write") + " fd\(fd)"
            }
            return "\(requests.joined(separator: ", ")), \(threads) thread\(threads == 1 ? "" : "s")"
                + (writeErrors ? ", write errors" : "")
        }
    }

    enum Status: Hashable {
        case notArrived
        /// In the machine, not taken by a thread (queued, or a held sync).
        case inMachine
        /// A thread took it (for a durable write: its write part at least).
        case taken
        case done(String)
    }

    enum Thread: Hashable {
        case awake, asleep, gone
        case busy(Machine.Ticket, job: Int)
    }

    enum Event: CustomStringConvertible {
        case arrive(Int)
        case cancel(Int)
        case step(thread: Int)
        case writeEnds(thread: Int, ok: Bool)
        case syncEnds(thread: Int)
        case shutdown

        var description: String {
            switch self {
            case .arrive(let r): "r\(r) arrives"
            case .cancel(let r): "r\(r) cancelled"
            case .step(let t): "t\(t) asks for work"
            case .writeEnds(let t, let ok): "t\(t)'s write ends \(ok ? "ok" : "with ENOSPC")"
            case .syncEnds(let t): "t\(t)'s sync ends"
            case .shutdown: "shutdown()"
            }
        }
    }

    enum Shutdown: Hashable { case none, waiting, done }

    let config: Config
    var machine = Machine()
    var status: [Status]
    var cancelRequested: [Bool]
    /// The harness's own record: the order in which requests were accepted, and whether each
    /// write part is over (written, failed, or cancelled before a thread took it).
    var accepted: [Int?]
    var acceptances = 0
    var writeOver: [Bool]
    var writeSucceeded: [Bool]
    var syncStarted: [Bool]
    var threads: [Thread]
    var shutdown = Shutdown.none

    init(_ config: Config) {
        self.config = config
        let count = config.kinds.count
        status = Array(repeating: .notArrived, count: count)
        cancelRequested = Array(repeating: false, count: count)
        accepted = Array(repeating: nil, count: count)
        writeOver = Array(repeating: false, count: count)
        writeSucceeded = Array(repeating: false, count: count)
        syncStarted = Array(repeating: false, count: count)
        threads = Array(repeating: .awake, count: config.threads)
        for _ in 0..<config.threads { machine.threadStarting() }
    }

    func events() -> [Event] {
        var events: [Event] = []
        for r in status.indices {
            switch status[r] {
            case .notArrived: events.append(.arrive(r))
            case .inMachine, .taken: if !cancelRequested[r] { events.append(.cancel(r)) }
            case .done: break
            }
        }
        for t in threads.indices {
            switch threads[t] {
            case .awake: events.append(.step(thread: t))
            case .busy(let ticket, _):
                switch ticket.work {
                case .write, .durableWrite:
                    events.append(.writeEnds(thread: t, ok: true))
                    if config.writeErrors { events.append(.writeEnds(thread: t, ok: false)) }
                case .sync, .durableSync:
                    events.append(.syncEnds(thread: t))
                }
            case .asleep, .gone: break
            }
        }
        if shutdown == .none { events.append(.shutdown) }
        return events
    }

    /// `pthread_cond_signal` (`count` 1) or `pthread_cond_broadcast` (more): sleepers wake.
    private mutating func wake(_ count: Int) {
        guard count > 0 else { return }
        for t in threads.indices where threads[t] == .asleep {
            threads[t] = .awake
            if count == 1 { return }
        }
    }

    mutating func apply(_ event: Event, violations: inout [String]) {
        step(event, violations: &violations)
        // The threads are interchangeable: one order of them stands for all (fewer states).
        threads.sort { "\($0)" < "\($1)" }
    }

    private mutating func step(_ event: Event, violations: inout [String]) {
        switch event {
        case .arrive(let r):
            switch machine.submit(id: UInt64(r), descriptor: config.descriptors[r], kind: config.kinds[r], r) {
            case .queued:
                status[r] = .inMachine
                wake(1)
            case .held:
                status[r] = .inMachine
                if config.kinds[r] != .sync { violations.append("r\(r), a write, was held") }
            case .refused(let job):
                if job != r { violations.append("r\(r)'s refusal gave back r\(job)") }
                status[r] = .done("shutDown")
                return
            }
            accepted[r] = acceptances
            acceptances += 1
        case .cancel(let r):
            cancelRequested[r] = true
            let cancelled = machine.cancel(UInt64(r))
            switch (status[r], cancelled) {
            case (.inMachine, let cancelled?):
                if cancelled.job != r { violations.append("r\(r)'s cancellation gave back r\(cancelled.job)") }
                if config.kinds[r] != .sync { writeOver[r] = true }  // nothing of it was written
                status[r] = .done("cancelled")
                wake(cancelled.wake)
            case (.inMachine, nil):
                violations.append("r\(r) is queued or held, yet its cancellation found nothing")
            case (_, _?):
                violations.append("r\(r) was given back to its cancellation after a thread took it")
            default:
                break
            }
        case .step(let t):
            switch machine.next() {
            case .wait:
                threads[t] = .asleep
            case .exit(let exit):
                threads[t] = .gone
                if case .stopped(let waiters) = exit {
                    if shutdown != .waiting || waiters != [0] { violations.append("the last thread returned waiters \(waiters) while shutdown is \(shutdown)") }
                    shutdown = .done
                    checkShutdownDone(violations: &violations)
                }
            case .run(let ticket, let job):
                let r = Int(ticket.id)
                if job != r { violations.append("r\(r)'s ticket carries r\(job)") }
                threads[t] = .busy(ticket, job: job)
                switch ticket.work {
                case .durableSync:
                    if status[r] != .taken || !writeSucceeded[r] { violations.append("r\(r)'s sync part handed out while \(status[r])") }
                default:
                    if status[r] != .inMachine { violations.append("r\(r) taken while \(status[r])") }
                    status[r] = .taken
                }
                if ticket.work == .sync || ticket.work == .durableSync { syncStarts(r, violations: &violations) }
            }
        case .writeEnds(let t, let ok):
            guard case .busy(let ticket, let job) = threads[t] else { preconditionFailure() }
            let r = Int(ticket.id)
            writeOver[r] = true
            writeSucceeded[r] = ok
            threads[t] = .awake
            if ticket.work == .write {
                wake(machine.finished(ticket))
                resume(r, ok ? "written" : "ENOSPC", violations: &violations)
                return
            }
            switch machine.durableWriteWritten(ticket, job: job, succeeded: ok) {
            case .done(let count):
                wake(count)
                if ok { violations.append("r\(r)'s durable write ended after its write, without a sync") }
                resume(r, "ENOSPC", violations: &violations)
            case .held(let count):
                wake(count)
                if !ok { violations.append("r\(r)'s failed write holds a sync part") }
            case .sync(let sync, let count):
                wake(count)
                if !ok { violations.append("r\(r)'s failed write goes on to a sync") }
                if sync.id != ticket.id || sync.work != .durableSync { violations.append("r\(r)'s sync part has ticket \(sync)") }
                threads[t] = .busy(sync, job: job)
                syncStarts(r, violations: &violations)
            }
        case .syncEnds(let t):
            guard case .busy(let ticket, _) = threads[t] else { preconditionFailure() }
            threads[t] = .awake
            wake(machine.finished(ticket))
            resume(Int(ticket.id), "synced", violations: &violations)
        case .shutdown:
            switch machine.shutdown(0) {
            case .wait(let wakeAll):
                shutdown = .waiting
                if wakeAll { wake(Int.max) }
            case .done:
                shutdown = .done
                checkShutdownDone(violations: &violations)
            }
        }
    }

    /// The writes of `r`'s descriptor accepted before it whose write is not over.
    private func earlierWritesInFlight(_ r: Int) -> [Int] {
        guard let order = accepted[r] else { return [] }
        return status.indices.filter { w in
            w != r && config.kinds[w] != .sync && config.descriptors[w] == config.descriptors[r]
                && (accepted[w].map { $0 < order } ?? false) && !writeOver[w]
        }
    }

    private mutating func syncStarts(_ r: Int, violations: inout [String]) {
        if syncStarted[r] { violations.append("r\(r)'s sync started twice") }
        syncStarted[r] = true
        let earlier = earlierWritesInFlight(r)
        if !earlier.isEmpty { violations.append("r\(r)'s sync started while r\(earlier), accepted before it, is still writing") }
        if config.kinds[r] == .durableWrite, !(writeOver[r] && writeSucceeded[r]) {
            violations.append("r\(r)'s sync part started before its write succeeded")
        }
    }

    private mutating func resume(_ r: Int, _ outcome: String, violations: inout [String]) {
        switch status[r] {
        case .taken: status[r] = .done(outcome)
        case .done(let earlier): violations.append("r\(r) resumed twice (\(earlier), then \(outcome))")
        default: violations.append("r\(r) resumed while \(status[r])")
        }
    }

    private func checkShutdownDone(violations: inout [String]) {
        for r in status.indices where accepted[r] != nil {
            if case .done = status[r] { continue }
            violations.append("shutdown() returned while r\(r) is \(status[r])")
        }
        if machine.lifecycle != .stopped { violations.append("shutdown() returned while the machine is \(machine.lifecycle)") }
    }

    func check(violations: inout [String]) {
        for r in status.indices {
            // A sync still to start: a sync request in the machine, or a durable write whose write
            // succeeded and whose sync has not started.
            let waitsToSync = switch config.kinds[r] {
            case .sync: status[r] == .inMachine
            case .durableWrite: status[r] == .taken && writeOver[r] && writeSucceeded[r] && !syncStarted[r]
            case .write: false
            }
            guard waitsToSync else { continue }
            let earlier = earlierWritesInFlight(r)
            let held = machine.isHeld(UInt64(r))
            if held && earlier.isEmpty { violations.append("r\(r)'s sync is held although every write accepted before it is over") }
            if !held && !earlier.isEmpty { violations.append("r\(r)'s sync is not held although r\(earlier), accepted before it, is still writing") }
            if !held && !machine.isQueued(UInt64(r)) { violations.append("r\(r)'s sync is neither held nor queued") }
        }
        if machine.queuedCount > 0, !threads.contains(where: { if case .busy = $0 { true } else { $0 == .awake } }) {
            violations.append("\(machine.queuedCount) request(s) queued, yet every thread sleeps or is gone (lost wake-up)")
        }
    }

    func checkFinal(violations: inout [String]) {
        for r in status.indices {
            if case .done = status[r] { continue }
            violations.append("nothing can happen, yet r\(r) is \(status[r])")
        }
        if shutdown == .waiting { violations.append("nothing can happen, yet shutdown() waits") }
    }
}

extension AsyncFsyncTests.ModelChecks {
    @Test("portable backend: every order of 3 requests (syncs, writes, durable writes over 1–2 descriptors) on 1–3 threads: arrival, cancellation, write success or ENOSPC, sync, wake-ups, shutdown")
    func portable() {
        var configs: [PortableModel.Config] = []
        // Arrivals come in every order, so each mix stands for all its permutations.
        let mixes: [(kinds: [PortableModel.Kind], descriptors: [CInt], threads: [Int])] = [
            ([.write, .write, .sync], [0, 0, 0], [1, 2, 3]),
            ([.write, .durableWrite, .sync], [0, 0, 0], [1, 2, 3]),
            ([.durableWrite, .durableWrite, .sync], [0, 0, 0], [2, 3]),
            ([.write, .sync, .write], [0, 1, 0], [2]),
            ([.write, .durableWrite, .sync], [0, 0, 1], [2]),
        ]
        // Under a sanitizer (5–10 times slower) up to two threads.
        let underSanitizer = testsupport_tsan_loaded() != 0 || ProcessInfo.processInfo.environment["ASAN_OPTIONS"] != nil
        for mix in mixes {
            for threads in mix.threads where !underSanitizer || threads <= 2 {
                configs.append(.init(kinds: mix.kinds, descriptors: mix.descriptors, threads: threads, writeErrors: true))
            }
        }
        var total = 0
        for config in configs {
            let result = modelCheck(PortableModel(config))
            print("model check, portable, \(config): \(result.states) states")
            total += result.states
            #expect(!result.truncated, "\(config): the bound was not reached")
            #expect(result.violations.isEmpty, Comment(rawValue: "\(config):\n" + result.violations.joined(separator: "\n")))
        }
        print("model check, portable backend: \(total) states in \(configs.count) configurations, no violation")
    }
}
