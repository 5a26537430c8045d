// The Linux backends' engine, hub, executors, probes and inline path: compiled out under
// ASYNC_FSYNC_PORTABLE (and off Linux), where the portable backend is the only one.
#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
import CAsyncFsync
import CTestSupport
import Foundation
import Synchronization
import SystemPackage
import Testing

@testable import AsyncFsync

/// The common clock of a schedule: every event the checks order is stamped from it.
final class ScheduleClock: Sendable {
    private let value = Atomic<UInt64>(0)
    func tick() -> UInt64 { value.add(1, ordering: .sequentiallyConsistent).newValue }
}

/// One randomized fault schedule's parameters, all drawn from its seed.
struct Schedule: CustomStringConvertible {
    var seed: UInt64
    var kind: BackendKind
    var groupCommit: Bool
    var sticky: Bool
    var capacity: Int
    var files: Int
    var requests: Int
    var cancelPercent: Int
    /// After how many requests were started `shutdown()` is called (nil: at the end).
    var shutdownAfter: Int?
    var faultPercent: Int
    var delayPercent: Int

    init(seed: UInt64) {
        self.seed = seed
        var rng = SplitMix64(state: seed)
        kind = Bool.random(using: &rng) ? .libaio : .posix
        groupCommit = Int.random(in: 0..<4, using: &rng) == 0
        sticky = Int.random(in: 0..<4, using: &rng) != 0
        capacity = Int.random(in: 1...4, using: &rng)
        files = Int.random(in: 1...3, using: &rng)
        requests = Int.random(in: 1...24, using: &rng)
        cancelPercent = [0, 10, 30].randomElement(using: &rng)!
        shutdownAfter = Bool.random(using: &rng) ? Int.random(in: 0...requests, using: &rng) : nil
        faultPercent = [0, 5, 15, 30].randomElement(using: &rng)!
        delayPercent = [0, 20, 50].randomElement(using: &rng)!
    }

    var description: String {
        "seed \(seed): \(kind)\(groupCommit ? " + GroupCommit" : ""), sticky \(sticky), capacity \(capacity), "
            + "\(files) files, \(requests) requests, cancel \(cancelPercent)%, shutdown after "
            + "\(shutdownAfter.map(String.init) ?? "the end"), faults \(faultPercent)%, delays \(delayPercent)%"
    }
}

/// The system-call table of one schedule: random delays, EAGAIN/EBADF/EPERM at submission,
/// EINTR/EIO/ENOSPC at completion, an occasional `statx(2)` failure; it records every release (a
/// closed descriptor, a destroyed context, freed control blocks) and flags a later use, and logs
/// each injected durability failure on the schedule's common clock.
final class Chaos: @unchecked Sendable {
    struct Injected {
        var file: FileIdentity
        var descriptor: CInt
        var at: UInt64
    }
    struct State {
        var rng: SplitMix64
        var closed: Set<CInt> = []
        var destroyed: Set<aio_context_t> = []
        var live: [(start: UInt, end: UInt)] = []
        var violations: [String] = []
        var injected: [Injected] = []
        /// Made and not yet freed by this schedule's backends.
        var openEventfds = 0
        var liveContexts = 0
        var runningThreads = 0
    }
    let state: Locked<State>
    let clock: ScheduleClock
    let faultPercent: Int
    let delayPercent: Int
    let kind: BackendKind

    init(schedule: Schedule, clock: ScheduleClock) {
        state = Locked(State(rng: SplitMix64(state: schedule.seed ^ 0x5EED)))
        self.clock = clock
        faultPercent = schedule.faultPercent
        delayPercent = schedule.delayPercent
        kind = schedule.kind
    }

    private func roll(_ percent: Int) -> Bool {
        percent > 0 && state.withLock { Int.random(in: 0..<100, using: &$0.rng) < percent }
    }

    private func pick<T>(_ values: [T]) -> T {
        state.withLock { values.randomElement(using: &$0.rng)! }
    }

    private func maybeDelay() {
        if roll(delayPercent) { usleep(UInt32(state.withLock { Int.random(in: 1...150, using: &$0.rng) })) }
    }

    private func flag(_ text: String) {
        state.withLock { $0.violations.append(text) }
    }

    private func checkLive(_ pointer: UnsafeRawPointer, _ what: String) {
        let address = UInt(bitPattern: pointer)
        let ok = state.withLock { state in state.live.contains { $0.start <= address && address < $0.end } }
        if !ok { flag("\(what) on control blocks that were freed (or never allocated)") }
    }

    private func identity(_ fd: CInt) -> FileIdentity? {
        try? SystemCalls.live.fileIdentity(fd).get()
    }

    private func noteInjected(_ fd: CInt) {
        guard let file = identity(fd) else { return }
        let at = clock.tick()
        state.withLock { $0.injected.append(Injected(file: file, descriptor: fd, at: at)) }
    }

    var violations: [String] { state.withLock { $0.violations } }
    var injected: [Injected] { state.withLock { $0.injected } }
    /// What this schedule's backends made and have not freed: eventfds, AIO contexts, threads.
    var leftovers: (eventfds: Int, contexts: Int, threads: Int) {
        state.withLock { ($0.openEventfds, $0.liveContexts, $0.runningThreads) }
    }

    func system() -> SystemCalls {
        let live = SystemCalls.live
        var system = live
        system.ioSetup = { [self] count, context in
            let result = live.ioSetup(count, context)
            if case .success = result {
                state.withLock {
                    _ = $0.destroyed.remove(context.pointee)
                    $0.liveContexts += 1
                }
            }
            return result
        }
        system.ioDestroy = { [self] context in
            state.withLock {
                _ = $0.destroyed.insert(context)
                $0.liveContexts -= 1
            }
            return live.ioDestroy(context)
        }
        system.startThread = { [self] name, body in
            state.withLock { $0.runningThreads += 1 }
            let result = live.startThread(name) { [self] in
                body()
                state.withLock { $0.runningThreads -= 1 }
            }
            if case .failure = result { state.withLock { $0.runningThreads -= 1 } }
            return result
        }
        system.ioSubmit = { [self] context, count, iocbs in
            maybeDelay()
            if state.withLock({ $0.destroyed.contains(context) }) { flag("io_submit to a destroyed context") }
            for index in 0..<count { if let iocb = iocbs[index] { checkLive(iocb, "io_submit") } }
            if roll(faultPercent) {
                return .failure(pick([.resourceTemporarilyUnavailable, .resourceTemporarilyUnavailable, .badFileDescriptor, .notPermitted]))
            }
            return live.ioSubmit(context, count, iocbs)
        }
        system.reapCompletions = { [self] context, events, maximum in
            maybeDelay()
            if state.withLock({ $0.destroyed.contains(context) }) { flag("reaping a destroyed context") }
            let result = live.reapCompletions(context, events, maximum)
            guard case .success(let count) = result else { return result }
            for index in 0..<count where roll(faultPercent) {
                let errno: Errno = pick([.interrupted, .ioError, .ioError, .noSpace])
                events[index].res = -Int64(errno.rawValue)
                if errno != .interrupted, let control = UnsafePointer<iocb>(bitPattern: UInt(events[index].obj)) {
                    noteInjected(CInt(bitPattern: control.pointee.aio_fildes))
                }
            }
            return result
        }
        system.aioFsync = { [self] mode, control in
            maybeDelay()
            checkLive(control, "aio_fsync")
            if roll(faultPercent) {
                return .failure(pick([.resourceTemporarilyUnavailable, .badFileDescriptor, .notPermitted]))
            }
            return live.aioFsync(mode, control)
        }
        system.aioError = { [self] control in
            let status = live.aioError(control)
            guard control.pointee.aio_buf == nil else { return status }  // the hub's doorbell read
            checkLive(control, "aio_error")
            guard status != .inProgress, roll(faultPercent) else { return status }
            let errno: Errno = pick([.interrupted, .ioError, .noSpace])
            if errno != .interrupted { noteInjected(control.pointee.aio_fildes) }
            return .failed(errno)
        }
        system.aioReturn = { [self] control in
            if control.pointee.aio_buf == nil { checkLive(control, "aio_return") }
            return live.aioReturn(control)
        }
        system.aioSuspend = { [self] list, count, timeout in
            maybeDelay()
            return live.aioSuspend(list, count, timeout)
        }
        system.write = { [self] fd, buffer, count in
            maybeDelay()
            if state.withLock({ $0.closed.contains(fd) }) { flag("write to fd \(fd) after it was closed") }
            return live.write(fd, buffer, count)
        }
        system.close = { [self] fd in
            state.withLock {
                _ = $0.closed.insert(fd)
                $0.openEventfds -= 1
            }
            return live.close(fd)
        }
        system.eventfd = { [self] in
            let result = live.eventfd()
            if case .success(let fd) = result {
                state.withLock {
                    _ = $0.closed.remove(fd)
                    $0.openEventfds += 1
                }
            }
            return result
        }
        system.fileIdentity = { [self] fd in
            roll(faultPercent / 5) ? .failure(.noMemory) : live.fileIdentity(fd)
        }
        // GroupCommit groups only off memory file systems: the schedule's tmpfs files pass for ext4.
        system.fileSystemType = { fd in live.fileSystemType(fd).map { _ in 0xEF53 } }
        system.noteMemory = { [self] event, pointer, size in
            let start = UInt(bitPattern: pointer)
            state.withLock { state in
                switch event {
                case .allocated: state.live.append((start, start + UInt(size)))
                case .freed: state.live.removeAll { $0.start == start }
                }
            }
        }
        return system
    }
}

/// What the ledger told, on the schedule's clock.
final class LedgerLog: @unchecked Sendable {
    struct Record { var key: FailureLedger.Key; var generation: UInt64; var at: UInt64 }
    struct Ack { var descriptor: CInt; var identity: FileIdentity?; var arrival: UInt64; var generation: UInt64; var at: UInt64 }
    let records = Locked<[Record]>([])
    let acks = Locked<[Ack]>([])
    let clock: ScheduleClock

    init(clock: ScheduleClock) { self.clock = clock }

    func note(_ event: FailureLedger.Event) {
        let at = clock.tick()
        switch event {
        case .recorded(let key, let generation):
            records.withLock { $0.append(Record(key: key, generation: generation, at: at)) }
        case .acknowledged(let descriptor, let identity, let arrival, let generation):
            acks.withLock { $0.append(Ack(descriptor: descriptor, identity: identity, arrival: arrival, generation: generation, at: at)) }
        }
    }
}

/// One request of a schedule and what became of it.
struct Outcome {
    var index: Int
    var file: Int
    var calledAt: UInt64
    var doneAt: UInt64
    var error: (any Error)?
}

/// Runs one schedule and returns the rules it broke (empty: none).
func runSchedule(_ schedule: Schedule, directory: ScratchDirectory) async -> [String] {
    let clock = ScheduleClock()
    let chaos = Chaos(schedule: schedule, clock: clock)
    let log = LedgerLog(clock: clock)
    let system = chaos.system()
    var problems: [String] = []

    // Files; with two or more, the last one is a second descriptor of the first file: another open
    // file description (odd seeds), or a dup(2) sharing the first one's (even seeds; issue 16.7).
    var descriptors: [FileDescriptor] = []
    var identities: [FileIdentity] = []
    do {
        for index in 0..<schedule.files {
            let fd = index > 0 && index == schedule.files - 1
                ? (schedule.seed % 2 == 0 ? try descriptors[0].duplicate()
                    : try FileDescriptor.open(directory.path.appending("s\(schedule.seed)-f0"), .readWrite))
                : try directory.file("s\(schedule.seed)-f\(index)")
            descriptors.append(fd)
            identities.append(try SystemCalls.live.fileIdentity(fd.rawValue).get())
        }
    } catch {
        return ["setup: \(error)"]
    }
    defer { for fd in descriptors { try? fd.close() } }

    let base: any AsyncSyncBackend
    do {
        base = try makeBackend(schedule.kind, capacity: schedule.capacity, stickyFailures: schedule.sticky,
                               system: system, observer: { log.note($0) })
    } catch {
        return []  // the backend could not be made (an injected failure); nothing to check
    }
    let api: any AsyncSyncBackend = schedule.groupCommit ? GroupCommit(wrapping: base, system: system) : base

    var rng = SplitMix64(state: schedule.seed ^ 0xC0FFEE)
    let outcomes = Locked<[Outcome]>([])
    var tasks: [Task<Void, Never>] = []
    var shutdown: Task<Void, Never>?
    for index in 0..<schedule.requests {
        if schedule.shutdownAfter == index { shutdown = Task { await api.shutdown() } }
        let file = Int.random(in: 0..<descriptors.count, using: &rng)
        let fd = descriptors[file]
        let mode: SyncMode = Bool.random(using: &rng) ? .fsync : .fdatasync
        let task = Task {
            let calledAt = clock.tick()
            let error = await caughtError { try await api.sync(fd, mode: mode) }
            let doneAt = clock.tick()
            outcomes.withLock { $0.append(Outcome(index: index, file: file, calledAt: calledAt, doneAt: doneAt, error: error)) }
        }
        tasks.append(task)
        if Int.random(in: 0..<100, using: &rng) < schedule.cancelPercent {
            let yields = Int.random(in: 0...3, using: &rng)
            Task {
                for _ in 0..<yields { await Task.yield() }
                task.cancel()
            }
        }
        if Int.random(in: 0..<4, using: &rng) == 0 { await Task.yield() }
    }
    let allTasks = tasks
    let completed = await finishes(within: .seconds(10)) { for task in allTasks { await task.value } }
    if !completed {
        problems.append("requests never completed: \(schedule.requests - outcomes.withLock { $0.count }) of \(schedule.requests); engine: \(engineSummary(api))")
        return problems
    }
    let early = shutdown
    let shutDown = await finishes(within: .seconds(10)) {
        await early?.value
        await api.shutdown()
    }
    if !shutDown {
        problems.append("shutdown() did not return; engine: \(engineSummary(api))")
        return problems
    }

    // Every request completed exactly once, with an allowed outcome.
    let results = outcomes.withLock { $0 }
    if results.count != schedule.requests || Set(results.map(\.index)).count != schedule.requests {
        problems.append("\(results.count) outcomes for \(schedule.requests) requests")
    }
    for outcome in results {
        switch outcome.error {
        case nil, is CancellationError, is AsyncSyncError: break
        case let other?: problems.append("request \(outcome.index): unexpected error \(other)")
        }
    }

    // The in-flight rule as the ledger judged it: no success over a failure of its file recorded
    // since the request arrived.
    let records = log.records.withLock { $0 }
    for ack in log.acks.withLock({ $0 }) where ack.generation != ack.arrival {
        for record in records where record.generation > ack.arrival && record.generation <= ack.generation {
            switch record.key {
            case .unidentified:
                problems.append("a success judged after an unidentified failure (generation \(record.generation))")
            case .file(let file) where ack.identity == nil || ack.identity == file:
                problems.append("a success of \(file) acknowledged over its failure at generation \(record.generation)")
            case .file: break
            }
        }
    }
    // A failure is recorded before any success of its file that comes after the completion that
    // reported it (the same batch of completions included). Checked where every success is given
    // on the completion thread, in order with the reaping: the plain engine (GroupCommit gives its
    // members' results on their leader's task).
    let identityOf = Dictionary(uniqueKeysWithValues: zip(descriptors.map(\.rawValue), identities))
    let acks = log.acks.withLock { $0 }
    for failure in chaos.injected where !schedule.groupCommit {
        // statx(2) may have failed when it was recorded: then it is recorded against the number.
        let keys: Set<FailureLedger.Key> = [.file(failure.file), .unidentified(failure.descriptor)]
        let recordedAt = records.first { $0.at > failure.at && keys.contains($0.key) }?.at ?? .max
        for ack in acks where ack.at > failure.at && ack.at < recordedAt && identityOf[ack.descriptor] == failure.file {
            problems.append("a success of a file acknowledged after its failure was reaped and before it was recorded")
        }
    }
    // Sticky: a request that arrives after a recorded failure of its file is refused.
    if schedule.sticky {
        for outcome in results where outcome.error == nil {
            // A failure recorded against a descriptor number (statx failed) refuses that number only.
            let keys: Set<FailureLedger.Key> = [.file(identities[outcome.file]), .unidentified(descriptors[outcome.file].rawValue)]
            if let record = records.first(where: { keys.contains($0.key) }), record.at < outcome.calledAt {
                problems.append("request \(outcome.index) arrived after its file's failure and succeeded")
            }
        }
    }
    problems += chaos.violations

    // Nothing left behind: the schedule's completion thread, its eventfd, every AIO context and
    // every short-lived thread are gone once shutdown() has returned (threads may take a moment to
    // end after their last action).
    let deadline = ContinuousClock.now + .seconds(2)
    while chaos.leftovers != (0, 0, 0), ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(1)) }
    let left = chaos.leftovers
    if left != (0, 0, 0) { problems.append("left behind: \(left.eventfds) eventfds, \(left.contexts) AIO contexts, \(left.threads) threads") }
    return problems
}

extension AsyncFsyncTests {
    /// Thousands of random fault schedules against both backends and GroupCommit, within a time
    /// budget. `ASYNC_FSYNC_SCHEDULE_SECONDS` sets the budget (default 30 s, 10 s under
    /// ThreadSanitizer); `ASYNC_FSYNC_SEED` replays a run (each schedule's seed is printed with its
    /// failure, and `ASYNC_FSYNC_SEED=<that seed> ASYNC_FSYNC_SCHEDULES=1` replays that one).
    @Suite struct FaultSchedules {
        init() { GlibcAIOUnderSanitizer.configure }

        @Test("random fault schedules: exactly once, no acknowledgement over a recorded failure, nothing touched after release, nothing left behind")
        func randomSchedules() async throws {
            let environment = ProcessInfo.processInfo.environment
            let tsan = testsupport_tsan_loaded() != 0
            let budget = Double(environment["ASYNC_FSYNC_SCHEDULE_SECONDS"] ?? "") ?? (tsan ? 10 : 30)
            let limit = Int(environment["ASYNC_FSYNC_SCHEDULES"] ?? "") ?? .max
            let first = UInt64(environment["ASYNC_FSYNC_SEED"] ?? "") ?? UInt64.random(in: 0..<(1 << 48))
            print("fault schedules: seed \(first), budget \(budget) s")
            let directory = try ScratchDirectory.onTmpfs()
            // The runtime opens descriptors of its own at first use (timers): warm it up first.
            _ = await finishes(within: .milliseconds(1)) {}
            try await Task.sleep(for: .milliseconds(5))
            let contextsBefore = Resources.aioContexts()
            let descriptorsBefore = Resources.libraryDescriptorCount()
            let deadline = Date().addingTimeInterval(budget)
            var ran = 0
            var failed = 0
            var kinds: [String: Int] = [:]
            // Four schedules at a time: each waits ~30 ms for io_destroy(2) at its shutdown.
            let parallel = limit == .max ? 4 : 1
            // At least `minimum` schedules run whatever the machine's speed (the budget only adds
            // more): a count of runs is never asserted against a clock (a sanitizer on a loaded
            // 2-core machine ran 92 in 10 s once).
            let minimum = min(limit, 100)
            while ran < limit, Date() < deadline || ran < minimum, failed < 5 {
                let schedules = (0..<min(parallel, limit - ran)).map { Schedule(seed: first &+ UInt64(ran + $0)) }
                if environment["ASYNC_FSYNC_SCHEDULE_TRACE"] != nil {
                    for schedule in schedules { FileHandle.standardError.write(Data("\(schedule)\n".utf8)) }
                }
                let results = await withTaskGroup(of: (Schedule, [String]).self) { group in
                    for schedule in schedules {
                        group.addTask { (schedule, await runSchedule(schedule, directory: directory)) }
                    }
                    return await group.reduce(into: [(Schedule, [String])]()) { $0.append($1) }
                }
                for (schedule, problems) in results {
                    ran += 1
                    kinds["\(schedule.kind)\(schedule.groupCommit ? "+group" : "")", default: 0] += 1
                    if !problems.isEmpty {
                        failed += 1
                        Issue.record("schedule \(schedule): \(problems.joined(separator: "; "))")
                    }
                }
            }
            // The whole run left nothing in the process either.
            #expect(await Resources.settle(within: 3, Resources.aioContexts, atMost: contextsBefore) <= contextsBefore)
            #expect(await Resources.settle(within: 3, { Resources.libraryDescriptorCount() }, atMost: descriptorsBefore) <= descriptorsBefore)
            print("fault schedules: \(ran) run (\(kinds.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))), \(failed) failed; first seed \(first)")
            #expect(ran >= minimum || failed >= 5, "every schedule of the minimum ran")
        }
    }
}
#endif  // os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
