// The Linux backends' engine, hub, executors, probes and inline path: compiled out under
// ASYNC_FSYNC_PORTABLE (and off Linux), where the portable backend is the only one.
#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
import CAsyncFsync
import CTestSupport
import Foundation
import Synchronization
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

@testable import AsyncFsync

// MARK: Helpers of the review tests

/// Writes to a hub's eventfd: the kernel AIO hub wakes and reaps every engine.
func kick(_ hub: CompletionHub) {
    var one: UInt64 = 1
    _ = withUnsafeBytes(of: &one) { Glibc.write(hub.completionDescriptor, $0.baseAddress!, $0.count) }
}

/// A weak box for a reference the system-call table's closures need but that exists only after
/// the table has been handed to the backend's initializer (weak: no cycle through the table).
final class Later<Value: AnyObject>: @unchecked Sendable {
    private let lock = NSLock()
    private weak var stored: Value?
    func set(_ value: Value) { lock.withLock { stored = value } }
    var value: Value? { lock.withLock { stored } }
}

/// The descriptor the first kernel AIO control block of an `io_submit(2)` names.
func descriptor(of iocbs: UnsafeMutablePointer<UnsafeMutablePointer<iocb>?>) -> CInt {
    CInt(bitPattern: iocbs[0]!.pointee.aio_fildes)
}

/// An actor that follows the pattern the documentation of `serialExecutor` gives: the executor
/// is asked for each time, not kept.
actor DocumentedSerialActor {
    let backend: LibaioBackend
    init(backend: LibaioBackend) { self.backend = backend }
    nonisolated var unownedExecutor: UnownedSerialExecutor {
        backend.serialExecutor.asUnownedSerialExecutor()
    }
    func syncAndName(_ fd: FileDescriptor) async throws -> String {
        try await backend.fdatasync(fd)
        return currentThreadName()
    }
}

/// An observer (process-wide, like every observer) that, once armed, holds the next
/// `backendSelected` call until released: a backend's creation stays in progress meanwhile.
final class HoldingObserver: AsyncSyncObserver {
    private struct State { var armed = false; var holding = false; var released = false }
    private let state = Locked(State())

    /// A shared backend whose creation holds in ``holdHere()`` (when armed) before it selects.
    func holdingSharedBackend() -> SharedBackend {
        SharedBackend(maker: { [self] in
            holdHere()
            return SharedBackend.environmentMaker()
        })
    }

    static let shared: HoldingObserver = {
        let observer = HoldingObserver()
        AsyncSync.addObserver(observer)
        return observer
    }()

    func arm() { state.withLock { $0 = State(armed: true) } }
    func release() { state.withLock { $0.released = true } }
    var isHolding: Bool { state.withLock { $0.holding } }

    func backendSelected(_ kind: BackendKind, choice: String, probes: [BackendProbe]) {
        holdHere()
    }

    /// Holds the caller while armed, until released. The observers of the shared backend's
    /// selection are told only once it is made, so a test that holds its creation makes the
    /// shared backend with a maker that holds here first (``holdingSharedBackend()``).
    func holdHere() {
        let hold = state.withLock { state -> Bool in
            guard state.armed else { return false }
            state.armed = false
            state.holding = true
            return true
        }
        guard hold else { return }
        _ = blockingEventually(30) { state.withLock { $0.released } }
        state.withLock { $0.holding = false }
    }
}

/// CPU time the process has used (user + system), in seconds.
func processCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec)
        + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1_000_000
}

extension AsyncFsyncTests {
    /// Adversarial review of the engine rewrite (EngineState, AIOEngine, CompletionHub,
    /// FailureLedger, the drivers and the POSIX fallback). Tests named "FINDING" fail on the code
    /// they were written against (abddbff); each comment explains the interleaving it opens. The
    /// others cover edges that were checked and found sound.
    @Suite struct Review {
        init() { GlibcAIOUnderSanitizer.configure }

        // MARK: - CompletionHub

        // FINDING (a request never completes; libaio). The hub's loop reaps its *local* snapshot of
        // clients first and refreshes that snapshot from `state.clients` only afterwards, in the
        // locked decision step — which then parks without reaping the clients it just picked up
        // (`clientsChanged` does not count as work), and registration (`add`) does not wake it.
        //
        // Interleaving: backend 1 is idle, the kernel AIO hub is parked in `read(eventfd)`.
        // Backend 2 registers with the same hub (the live table: every LibaioBackend of the
        // process shares one hub). Its first sync completes: the kernel posts the event to backend
        // 2's ring and signals the eventfd. The hub wakes, reaps [backend 1] (stale snapshot:
        // nothing), refreshes the snapshot to [backend 1, backend 2], sees no work and parks again.
        // The eventfd counter was consumed by the read, so nothing wakes it: backend 2's request
        // waits until some unrelated completion or wake-up comes. The POSIX hub is not affected:
        // it builds its aio_suspend list from the refreshed snapshot, and the submitter rings.
        // Fix: reap the refreshed snapshot before parking (treat `clientsChanged` as work), or
        // take the snapshot before reaping.
        @Test("FINDING (libaio): the first sync of a backend that joined a parked hub completes",
              arguments: BackendKind.aio)
        func newClientOfParkedHub(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data")
            defer { try? fd.close() }
            // The live table, as in production (inline path off: the sync goes through the hub).
            let first = try makeBackend(kind, capacity: 4)
            try await first.fsync(fd)
            try await Task.sleep(for: .milliseconds(50))  // the hub parks
            let second = try makeBackend(kind, capacity: 4)
            let hub = try #require(second.preferredTaskExecutor as? CompletionHub)
            #expect(hub === first.preferredTaskExecutor as? CompletionHub, "both backends share the hub")
            let request = Watched { try await second.fsync(fd) }
            let completed = await eventually(30) { request.isDone }
            #expect(completed, "the first request of the backend that joined the parked hub never completed")
            if !completed, kind == .libaio { kick(hub) }  // any wake-up lets it complete
            #expect(await eventually { request.isDone })
            #expect(request.succeeded)
            await second.shutdown()
            await first.shutdown()
        }

        // MARK: - EINTR resubmission (the hub's own submissions)

        // FINDING (shutdown hangs). A sync that completes with EINTR is submitted again by the hub
        // thread (`reapCompletions` → `submit(retries)`), outside the submitter role. When that
        // resubmission is refused (EAGAIN with nothing else in flight, EBADF, …) the batch's
        // waiters fail and `outstanding` drops to 0, but neither `refused` nor `exhausted` runs the
        // drain check, and `afterCompletions()` ran before the resubmission, while the request was
        // still outstanding. `submitReady` afterwards finds nothing ready and does not take the
        // role, so `drainCheck` never runs again.
        //
        // Interleaving: one sync in flight; `shutdown()` begins (draining, 1 outstanding); the
        // sync completes with EINTR (afterCompletions: still 1 outstanding, no release); io_submit
        // refuses the resubmission; the request fails (0 outstanding); nobody asks for the release:
        // `shutdown()` never returns (a second `shutdown()` call ends it: `beginShutdown` runs the
        // drain check). Fix: run the drain check after the hub's resubmission (e.g. return a
        // Release from `refused`/`exhausted`, or call `afterCompletions()` after `submit(retries)`).
        @Test("FINDING: a drain ends when the resubmission of an interrupted sync is refused",
              arguments: [Errno.resourceTemporarilyUnavailable, .badFileDescriptor])
        func drainEndsAfterRefusedRetry(errno: Errno) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let fd = try directory.file("data")
            defer { try? fd.close() }
            let recorder = SyscallRecorder()
            let backend = try makeBackend(.libaio, system: recorder.system)
            recorder.closeGate()
            let request = Watched { try await backend.fsync(fd) }
            try #require(await eventually { recorder.submitted == 1 })
            recorder.injectAtCompletion([.interrupted])
            recorder.injectAtSubmit([errno])  // the next io_submit: the hub's resubmission
            let shutdown = Watched { await backend.shutdown() }
            try #require(await eventually { !isAcceptingRequests(backend) })
            recorder.openGate()
            #expect(await eventually { request.isDone })
            let failure = request.error as? AsyncSyncError
            #expect(failure?.errno == errno)
            #expect(failure?.step == .submit)
            let ended = await eventually(30) { shutdown.isDone }
            #expect(ended, "shutdown() never returned: no drain check after the refused resubmission")
            if !ended { await backend.shutdown() }  // its beginShutdown runs the drain check
            #expect(await eventually { shutdown.isDone })
        }

        // FINDING (a request never completes, and every later one queues behind it). `exhausted`
        // decides "others are in flight, wait for a completion" from `slotsInUse > refused.count`.
        // The hub's resubmission of an interrupted sync runs concurrently with the submitter role,
        // so slots the submitter has taken but not yet handed to the system count as "in flight".
        // If those are then refused (EBADF) or dropped (identity mismatch), no completion will come:
        // `blockedOnResources` stays set with a batch ready and nothing in the system, and
        // `takeBatches` takes nothing while it is set.
        //
        // Interleaving: A is in flight. B's request takes the submitter role and is inside
        // io_submit. A completes with EINTR; the hub resubmits A; io_submit says EAGAIN;
        // `exhausted([A])`: slotsInUse 2 > 1, so A goes back to the front of the queue and the
        // engine blocks on resources. B's io_submit fails with EBADF: B fails, its slot is freed.
        // Nothing is in the kernel; A waits forever. Fix: count only slots handed to the system
        // (a per-slot "submitted" flag also for kernel AIO, set before io_submit returns or
        // tolerated as a completion that may precede it), or re-check when a slot is freed without
        // a completion (`refused`, `dropMismatched`) and clear `blockedOnResources` when nothing
        // is in flight any more.
        @Test("FINDING: an interrupted sync whose resubmission gets EAGAIN while another thread submits still completes")
        func retryBackoffCountsUnsubmittedSlots() async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let a = try directory.file("a")
            let b = try directory.file("b")
            let c = try directory.file("c")
            defer { try? a.close(); try? b.close(); try? c.close() }
            let aSubmits = Counter()
            let reaps = Counter()
            let bEntered = Flag()
            let breakSource = Flag()
            let box = Later<LibaioBackend>()
            let aFD = a.rawValue
            let bFD = b.rawValue
            var system = SystemCalls.live
            system.ioSubmit = { context, count, iocbs in
                let fd = descriptor(of: iocbs)
                if fd == bFD {
                    bEntered.raise()
                    // Until the hub's resubmission of A has been refused and A's batch waits again.
                    _ = blockingEventually(30) { (box.value?.engine.waitingCount ?? 0) == 1 }
                    return .failure(.badFileDescriptor)
                }
                if fd == aFD, aSubmits.next() == 2 { return .failure(.resourceTemporarilyUnavailable) }
                return SystemCalls.live.ioSubmit(context, count, iocbs)
            }
            system.reapCompletions = { context, events, maximum in
                if breakSource.isRaised { return .failure(.invalidArgument) }
                let result = SystemCalls.live.reapCompletions(context, events, maximum)
                guard case .success(let count) = result, count > 0, reaps.next() == 1 else { return result }
                // A's completion: held until B's submitter is inside io_submit, then made EINTR.
                _ = blockingEventually(30) { bEntered.isRaised }
                events[0].res = -Int64(EINTR)
                return result
            }
            let backend = try LibaioBackend(capacity: 4, system: system)
            box.set(backend)
            let first = Watched { try await backend.fsync(a) }
            try #require(await eventually { aSubmits.current == 1 })
            let second = Watched { try await backend.fsync(b) }
            #expect(await eventually(30) { second.isDone })
            #expect((second.error as? AsyncSyncError)?.errno == .badFileDescriptor)
            let completed = await eventually(30) { first.isDone }
            #expect(completed, "A waits for a completion that cannot come: nothing is in the kernel")
            // A request of another file that arrives now queues behind the back-off as well.
            let third = Watched { try await backend.fsync(c) }
            let thirdCompleted = await eventually(30) { third.isDone }
            #expect(thirdCompleted, "a later request of another file is never submitted either")
            if !completed || !thirdCompleted {
                // Break the completion source: every waiter fails, the engine drains.
                breakSource.raise()
                kick(backend.engine.hub)
            }
            #expect(await eventually { first.isDone && third.isDone })
            await backend.shutdown()
        }

        // MARK: - The POSIX fallback and the in-flight rule

        /// A table on which kernel AIO refuses every sync of `fd` with EINVAL (a file system
        /// without AIO fsync, or a kernel older than 4.18), whose first io_submit waits until two
        /// requests are in the engine, and whose second `fileStatus(fd)` (the second request's
        /// `takesOver`) waits until `open` is raised.
        static func noAIOFsync(_ recorder: SyscallRecorder, fd: FileDescriptor, engine box: Later<LibaioBackend>, open: Flag) -> SystemCalls {
            let raw = fd.rawValue
            let submits = Counter()
            let statuses = Counter()
            var system = recorder.system
            system.ioSubmit = { context, count, iocbs in
                guard descriptor(of: iocbs) == raw else { return SystemCalls.live.ioSubmit(context, count, iocbs) }
                // Generous: under ThreadSanitizer on a loaded machine the second request can take
                // seconds to arrive, and the interleaving needs it in the engine by now. It
                // returns as soon as it is.
                if submits.next() == 1 { _ = blockingEventually(30) { (box.value?.engine.outstandingCount ?? 0) == 2 } }
                return .failure(.invalidArgument)
            }
            system.fileStatus = { descriptor in
                if descriptor == raw, statuses.next() == 2 { _ = blockingEventually(30) { open.isRaised } }
                return SystemCalls.live.fileStatus(descriptor)
            }
            return system
        }

        // FINDING (acknowledges a sync over a recorded durability failure; stickyFailures: false).
        // A request that kernel AIO refuses with EINVAL is served again through the POSIX fallback,
        // whose `AIOEngine.sync` takes a *new* arrival stamp. The in-flight rule then only covers
        // failures recorded after the second stamp: a failure of the same file recorded between the
        // request's call and its arrival at the POSIX engine is forgotten.
        //
        // Interleaving: R1 and R2 sync the same descriptor of a file on a file system without AIO
        // fsync. Both are refused by io_submit (EINVAL) and go to `takesOver`. R1 reaches POSIX aio
        // first; its sync fails with EIO (recorded, generation 1). R2 (slower between the
        // refusal and the POSIX engine: statx, the engine's creation, …) arrives at the POSIX engine
        // with stamp 1, its fsync returns 0 (the kernel reported the writeback error once, to R1),
        // `moved(since: 1)` is false: R2 succeeds although the failure of its file was recorded
        // while it was in flight. With sticky failures the POSIX engine's refusal check catches it
        // (earlierFailure). Fix: carry the first arrival stamp through the fallback (an `arrival:`
        // parameter of `AIOEngine.sync`, `InlineSync.blockingSync`).
        @Test("FINDING (stickyFailures: false): a request served through the POSIX fallback keeps its arrival for the in-flight rule",
              arguments: [false, true])
        func fallbackKeepsArrival(sticky: Bool) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let fd = try directory.file("data")
            defer { try? fd.close() }
            let recorder = SyscallRecorder()
            let box = Later<LibaioBackend>()
            let open = Flag()
            let backend = try LibaioBackend(capacity: 4, stickyFailures: sticky,
                                            system: Self.noAIOFsync(recorder, fd: fd, engine: box, open: open))
            box.set(backend)
            recorder.injectAtCompletion([.ioError])  // the first POSIX aio completion
            let requests = [Watched { try await backend.fdatasync(fd) }, Watched { try await backend.fdatasync(fd) }]
            let recorded = await eventually(30) { backend.ledger.stamp() != 0 }
            open.raise()
            try #require(recorded, "the first request's failure was recorded")
            try #require(await eventually(30) { requests.allSatisfy(\.isDone) })
            let errors = requests.map { $0.error as? AsyncSyncError }
            #expect(errors.contains { $0?.errno == .ioError && $0?.code == .system }, "one got the EIO")
            #expect(errors.allSatisfy { $0 != nil },
                    "both were in flight when the file's failure was recorded; neither may succeed: \(errors)")
            await backend.shutdown()
        }

        // FINDING (acknowledges a sync over a recorded durability failure, sticky failures on;
        // shutdown() returns before an accepted request). `LibaioBackend.shutdown()` waits for the
        // kernel AIO engine, then closes the fallback. A request refused by io_submit with EINVAL
        // has already been resumed by the engine, so the engine's drain does not wait for it; when
        // it reaches `PosixFallback.sync` after the fallback was closed, it runs
        // `InlineSync.blockingSync`, which neither checks the sticky failures nor keeps the
        // request's arrival: a new stamp, after the failure.
        //
        // Interleaving: as above, R1's POSIX sync fails with EIO (recorded, sticky). shutdown():
        // the kernel AIO engine has nothing outstanding (both were resumed with EINVAL), the
        // fallback closes and its POSIX engine drains; shutdown() returns. R2, accepted before the
        // shutdown, now reaches the fallback: closed, so a blocking fsync on the caller's thread,
        // returns 0, stamp taken after the failure: R2 succeeds. (It also runs after shutdown()
        // returned.) Fix: keep the arrival stamp (as above) and apply the sticky check on that path;
        // let the engine's drain cover the fallback hand-off (count the request as outstanding
        // until the fallback took it, or have shutdown() wait for requests in `takesOver`).
        @Test("FINDING: a request that reaches the closed fallback during shutdown is not acknowledged over a recorded failure")
        func fallbackAfterShutdownKeepsArrival() async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let fd = try directory.file("data")
            defer { try? fd.close() }
            let recorder = SyscallRecorder()
            let box = Later<LibaioBackend>()
            let open = Flag()
            let backend = try LibaioBackend(capacity: 4, stickyFailures: true,
                                            system: Self.noAIOFsync(recorder, fd: fd, engine: box, open: open))
            box.set(backend)
            recorder.injectAtCompletion([.ioError])
            let requests = [Watched { try await backend.fdatasync(fd) }, Watched { try await backend.fdatasync(fd) }]
            let recorded = await eventually(30) { backend.ledger.stamp() != 0 }
            let shutdown = Watched { await backend.shutdown() }
            let shutDownFirst = await eventually(5) { shutdown.isDone }  // a bound: a correct engine is still draining
            open.raise()
            try #require(recorded)
            try #require(await eventually(30) { requests.allSatisfy(\.isDone) && shutdown.isDone })
            let errors = requests.map { $0.error as? AsyncSyncError }
            #expect(errors.contains { $0?.errno == .ioError && $0?.code == .system }, "one got the EIO")
            #expect(errors.allSatisfy { $0 != nil },
                    "the second was in flight when the failure was recorded, with sticky failures on: \(errors)")
            #expect(!shutDownFirst, "shutdown() returned while a request it had accepted was still running")
        }

        // MARK: - The serial executor

        // FINDING (use after free / executor identity changes). `CompletionHub.serialExecutor`
        // keeps the `HubSerialExecutor` it hands out only weakly, and nothing else holds it (jobs
        // are `UnownedJob`s, `UnownedSerialExecutor` does not retain). With the pattern the
        // documentation of `LibaioBackend.serialExecutor` gives — `nonisolated var unownedExecutor:
        // UnownedSerialExecutor { backend.serialExecutor.asUnownedSerialExecutor() }` — the getter
        // makes a new executor, returns an unowned reference to it and releases it: the runtime
        // then enqueues the actor's jobs on a freed object (reads its `hub` field from freed
        // memory), and each access yields an executor of another identity, so two actors "on the
        // same serial executor" are not serialized with each other and the fallback lane is not
        // one lane. Fix: let the hub keep its serial executor strongly (it is one per hub; the hub
        // outlives the engines that hand it out), e.g. a `let` made in `init`.
        @Test("FINDING: the serial executor a backend hands out stays alive and keeps its identity",
              arguments: BackendKind.aio)
        func serialExecutorLifetime(kind: BackendKind) async throws {
            let backend = try makeBackend(kind)
            let hub = try #require(backend.preferredTaskExecutor as? CompletionHub)
            weak var handedOut: HubSerialExecutor?
            handedOut = hub.serialExecutor
            #expect(handedOut != nil, "nothing keeps the serial executor alive once the caller lets it go")
            await backend.shutdown()
        }

        // FINDING, the consequence: the documented actor pattern crashes (here: SIGSEGV in
        // `CompletionHub.enqueue` called from `HubSerialExecutor.enqueue` on the freed executor;
        // under `--sanitize=address` the child exits with AddressSanitizer's report, status 1;
        // under ThreadSanitizer, whose allocator quarantines freed blocks, it may survive).
        // Run in a child process (an exit test), so that the crash fails this test only.
        @Test("FINDING: an actor using the documented serial-executor pattern runs its syncs without crashing")
        func documentedActorPattern() async {
            await #expect(processExitsWith: .success) {
                let directory = try ScratchDirectory.onDisk()
                let fd = try directory.file("data")
                defer { try? fd.close() }
                let backend = try LibaioBackend(capacity: 8, system: .live)
                let actor = DocumentedSerialActor(backend: backend)
                for _ in 0..<50 {
                    let garbage = (0..<64).map { _ in [UInt8](repeating: 0xAB, count: 48) }  // reuse freed blocks
                    _ = garbage.count
                    let name = try await actor.syncAndName(fd)
                    if name != completionThreadName(.libaio) { exit(3) }
                }
                await backend.shutdown()
            }
        }

        // MARK: - A broken completion source

        // FINDING (crash; a waiter failed by `broken` while its slot is still being submitted).
        // `EngineState.broken` fails and frees every slot with a batch, including the slots the
        // submitter role holder has taken in `takeBatches` but not handed to the system yet. The
        // submitter goes on with slots that are no longer its own: `refused` / `exhausted` /
        // `dropMismatched` / `submitted` (POSIX) read `slotBatch[slot]` = -1 and index `batches[-1]`
        // (a trap); with a successful io_submit the sync runs for a request already reported failed
        // and the drain may release the context while it is in the kernel.
        //
        // Interleaving: B's request takes the submitter role, its slot is prepared, it is inside
        // io_submit. The hub is woken, its reap fails (io_getevents EINVAL: the context is gone):
        // `broken` fails B (outstanding 0) and frees B's slot. io_submit returns EBADF:
        // `refused(slot:)` → `takeWaiters(of: -1)` → index out of range. Fix: let `broken` leave
        // the slots held by the submitter alone (mark the engine broken and let the submitter fail
        // them when it comes back, or keep a per-slot "taken by submitter" state), and make
        // `refused`/`exhausted`/`dropMismatched` tolerate a slot that was taken away.
        // Seen: "Fatal error: Index out of range" in EngineState.takeWaiters(of:into:) ←
        // EngineState.refused(slot:into:) ← AIOEngine.submit(_:) ← submitLoop ← arrive (SIGILL).
        @Test("FINDING: a completion source that breaks while a sync is being submitted fails it once, without a crash")
        func brokenSourceWhileSubmitting() async {
            await #expect(processExitsWith: .success) {
                let directory = try ScratchDirectory.onTmpfs()
                let b = try directory.file("b")
                defer { try? b.close() }
                let bFD = b.rawValue
                let entered = Flag()
                let breakSource = Flag()
                let box = Later<LibaioBackend>()
                var system = SystemCalls.live
                system.ioSubmit = { context, count, iocbs in
                    guard descriptor(of: iocbs) == bFD else { return SystemCalls.live.ioSubmit(context, count, iocbs) }
                    entered.raise()
                    // Until the hub has failed the request (the engine has nothing outstanding).
                    _ = blockingEventually(3) { (box.value?.engine.outstandingCount ?? 1) == 0 }
                    return .failure(.badFileDescriptor)
                }
                system.reapCompletions = { context, events, maximum in
                    if breakSource.isRaised { return .failure(.invalidArgument) }
                    return SystemCalls.live.reapCompletions(context, events, maximum)
                }
                let backend = try LibaioBackend(capacity: 4, system: system)
                box.set(backend)
                let request = Watched { try await backend.fsync(b) }
                guard await eventually(30, { entered.isRaised }) else { exit(2) }
                breakSource.raise()
                kick(backend.engine.hub)
                guard await eventually(30, { request.isDone }) else { exit(4) }
                // Exactly one error reached the caller (the source's errno or the submit's).
                guard request.error is AsyncSyncError else { exit(5) }
                await backend.shutdown()
            }
        }

        // MARK: - Edges checked and found sound

        @Test("checked: the in-flight rule fails a success reaped after a failure of the same file (two descriptors)",
              arguments: BackendKind.aio)
        func inFlightRuleAcrossDescriptors(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let one = try directory.file("data")
            let two = try FileDescriptor.open(directory.path.appending("data"), .readWrite)
            defer { try? one.close(); try? two.close() }
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, stickyFailures: false, system: recorder.system)
            recorder.closeGate()
            recorder.injectAtCompletion([.ioError])  // whichever completion is reaped first
            let requests = [Watched { try await backend.fdatasync(one) }, Watched { try await backend.fdatasync(two) }]
            try #require(await eventually { recorder.submitted == 2 })
            recorder.openGate()
            try #require(await eventually(30) { requests.allSatisfy(\.isDone) })
            let codes = requests.compactMap { ($0.error as? AsyncSyncError)?.code }
            #expect(codes.sorted { "\($0)" < "\($1)" } == [.concurrentFailure, .system].sorted { "\($0)" < "\($1)" },
                    "one EIO, and the other success turned into concurrentFailure")
            try await backend.fdatasync(one)  // not sticky: later syncs run
            await backend.shutdown()
        }

        @Test("checked: a request that waited for its descriptor's running sync is not acknowledged over that sync's failure",
              arguments: BackendKind.aio)
        func inFlightRuleNextBatch(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let fd = try directory.file("data")
            defer { try? fd.close() }
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, stickyFailures: false, system: recorder.system)
            recorder.closeGate()
            recorder.injectAtCompletion([.ioError])
            let first = Watched { try await backend.fdatasync(fd) }
            try #require(await eventually { recorder.submitted == 1 })
            let second = Watched { try await backend.fdatasync(fd) }
            try #require(await eventually { waiting(backend) == 1 })
            recorder.openGate()
            try #require(await eventually(30) { first.isDone && second.isDone })
            #expect((first.error as? AsyncSyncError)?.errno == .ioError)
            #expect((second.error as? AsyncSyncError)?.code == .concurrentFailure)
            #expect(recorder.submitted == 2, "the second was served by its own sync, which started after it arrived")
            await backend.shutdown()
        }

        @Test("checked: a waiting request whose descriptor now names another file fails with EBADF and syncs nothing for it",
              arguments: BackendKind.aio)
        func reusedDescriptorWhileWaiting(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let fd = try directory.file("a")
            let other = try directory.file("b")
            defer { try? fd.close(); try? other.close() }
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, system: recorder.system)
            recorder.closeGate()
            let first = Watched { try await backend.fsync(fd) }
            try #require(await eventually { recorder.submitted == 1 })
            let second = Watched { try await backend.fdatasync(fd) }  // waits: its file's identity is taken
            try #require(await eventually { waiting(backend) == 1 })
            #expect(dup2(other.rawValue, fd.rawValue) == fd.rawValue)  // closed and reused meanwhile
            recorder.openGate()
            try #require(await eventually(30) { first.isDone && second.isDone })
            #expect(first.succeeded)
            let failure = second.error as? AsyncSyncError
            #expect(failure?.errno == .badFileDescriptor)
            #expect(failure?.step == .submit)
            #expect(recorder.submitted == 1, "nothing was submitted for the other file")
            await backend.shutdown()
        }

        @Test("checked: EAGAIN while others are in flight: requests that joined during the submission share the retried sync, a cancelled one is never submitted, a drain waits for them",
              arguments: BackendKind.aio)
        func eagainMergeCancelAndDrain(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let a = try directory.file("a")
            let b = try directory.file("b")
            defer { try? a.close(); try? b.close() }
            let recorder = SyscallRecorder()
            let box = Later<AnyObject>()
            let bFD = b.rawValue
            let bSubmits = Counter()
            var system = recorder.system
            let base = system
            let waitingCount: @Sendable () -> Int = {
                switch box.value {
                case let backend as LibaioBackend: backend.engine.waitingCount
                case let backend as PosixAIOBackend: backend.engine.waitingCount
                default: 0
                }
            }
            // B's first submission: wait until a request joined B's next batch, then EAGAIN.
            system.ioSubmit = { context, count, iocbs in
                if descriptor(of: iocbs) == bFD, bSubmits.next() == 1 {
                    _ = blockingEventually(30) { waitingCount() == 1 }
                    return .failure(.resourceTemporarilyUnavailable)
                }
                return base.ioSubmit(context, count, iocbs)
            }
            system.aioFsync = { mode, control in
                if control.pointee.aio_fildes == bFD, bSubmits.next() == 1 {
                    _ = blockingEventually(30) { waitingCount() == 1 }
                    return .failure(.resourceTemporarilyUnavailable)
                }
                return base.aioFsync(mode, control)
            }
            let backend = try makeBackend(kind, capacity: 4, system: system)
            box.set(backend as AnyObject)
            recorder.closeGate()
            let first = Watched { try await backend.fsync(a) }
            try #require(await eventually { recorder.submitted == 1 })
            let refused = Watched { try await backend.fsync(b) }
            // Only once B's submission is under way: started together, both would share that batch
            // and nothing would join it (the submitter then waits out its bound: a flaky test).
            try #require(await eventually { bSubmits.current == 1 })
            let joined = Watched { try await backend.fsync(b) }  // joins during the refused submission
            try #require(await eventually { bSubmits.current == 1 && outstanding(backend) == 3 && waiting(backend) == 2 },
                         "B's batch went back to the queue with the request that joined it")
            let cancelled = Watched { try await backend.fdatasync(b) }
            try #require(await eventually { waiting(backend) == 3 })
            cancelled.task.cancel()
            try #require(await eventually { cancelled.isDone })
            #expect(cancelled.error is CancellationError)
            let shutdown = Watched { await backend.shutdown() }
            try #require(await eventually { !isAcceptingRequests(backend) })
            try await Task.sleep(for: .milliseconds(20))
            #expect(!shutdown.isDone && !refused.isDone && !joined.isDone, "blocked until a completion frees resources")
            recorder.openGate()
            #expect(await eventually(30) { shutdown.isDone })
            #expect(first.succeeded && refused.succeeded && joined.succeeded)
            #expect(recorder.submitted == 2, "A, then one sync for both requests of B")
            #expect(recorder.state.withLock { $0.submittedModes }.last == .fsync)
        }

        @Test("checked: EINTR at completion with requests waiting for the descriptor: the retry runs alone, then one sync serves them")
        func interruptedWithWaiters() async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let fd = try directory.file("data")
            defer { try? fd.close() }
            let recorder = SyscallRecorder()
            let backend = try makeBackend(.libaio, system: recorder.system)
            recorder.closeGate()
            recorder.injectAtCompletion([.interrupted])
            let first = Watched { try await backend.fsync(fd) }
            try #require(await eventually { recorder.submitted == 1 })
            let rest = (0..<10).map { _ in Watched { try await backend.fdatasync(fd) } }
            try #require(await eventually { waiting(backend) == 10 })
            recorder.openGate()
            try #require(await eventually(30) { first.isDone && rest.allSatisfy(\.isDone) })
            #expect(first.succeeded && rest.allSatisfy(\.succeeded))
            #expect(recorder.submitted == 3, "the first, its retry, one sync for the ten")
            #expect(recorder.state.withLock { $0.maxOutstanding } == 1, "never two syncs of one descriptor at once")
            await backend.shutdown()
        }

        @Test("checked: cancellations under load on a one-slot backend: every request ends once, the drain ends",
              arguments: BackendKind.aio)
        func cancellationStorm(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let files = try (0..<3).map { try directory.file("f\($0)") }
            defer { for fd in files { try? fd.close() } }
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, capacity: 1, system: recorder.system)
            let ended = Counter()
            let tasks = (0..<300).map { index in
                Task {
                    defer { _ = ended.next() }
                    try await backend.sync(files[index % 3], mode: index.isMultiple(of: 2) ? .fsync : .fdatasync)
                }
            }
            for (index, task) in tasks.enumerated() where index % 3 != 0 {
                task.cancel()
                if index.isMultiple(of: 16) { await Task.yield() }
            }
            let allEnded = await eventually(30) { ended.current == 300 }
            #expect(allEnded, "\(ended.current) of 300 requests ended")
            for task in tasks {
                do { try await task.value } catch is CancellationError {} catch { Issue.record("\(error)") }
            }
            #expect(outstanding(backend) == 0)
            let shutdown = Watched { await backend.shutdown() }
            #expect(await eventually(30) { shutdown.isDone })
        }

        @Test("checked: wake-ups racing the hub's end never write to its closed eventfd", arguments: BackendKind.aio)
        func wakersNeverWriteAfterClose(kind: BackendKind) async throws {
            struct Descriptors { var closed: Set<CInt> = []; var lateWrites = 0; var writes = 0 }
            let descriptors = Locked(Descriptors())
            var system = SystemCalls.live
            system.eventfd = {
                let result = SystemCalls.live.eventfd()
                if case .success(let fd) = result { descriptors.withLock { _ = $0.closed.remove(fd) } }
                return result
            }
            system.close = { fd in
                descriptors.withLock { _ = $0.closed.insert(fd) }
                return SystemCalls.live.close(fd)
            }
            system.write = { fd, buffer, count in
                usleep(2_000)  // a slow waker: the hub reaches its end meanwhile
                descriptors.withLock { state in
                    state.writes += 1
                    if state.closed.contains(fd) { state.lateWrites += 1 }
                }
                return SystemCalls.live.write(fd, buffer, count)
            }
            for _ in 0..<5 {
                let backend = try makeBackend(kind, system: system)
                let executor = taskExecutor(of: backend)
                try await Task.sleep(for: .milliseconds(5))  // the hub parks
                let jobs = (0..<4).map { _ in Task.detached(executorPreference: executor) { currentThreadName() } }
                await backend.shutdown()
                for job in jobs { _ = await job.value }
            }
            let state = descriptors.withLock { $0 }
            #expect(state.writes > 0)
            #expect(state.lateWrites == 0, "a write reached a closed (or reused) eventfd")
        }

        // MARK: - Review 3 (853d39e, 122ac55, 98ce92e)

        // FINDING (a cancelled request is submitted; cancellation not looked at while it waits).
        // 853d39e: a request that looks as if it will be handed to the system at once
        // (`handsOverAtOnce`) gets no cancellation handler; one that "turns out to wait" is
        // marked (`checksCancellation`) only when its first `arrive` answers `.needsIdentity`.
        // But the first `arrive` also answers `.queued` while *another thread holds the submitter
        // role*: the batch is in the ready queue, unmarked, relying on that submitter to take it.
        // If the submitter's io_submit then gets EAGAIN with other syncs in flight, `exhausted`
        // puts the refused batch back in front and blocks submission until a completion: the
        // unmarked request now waits for a slot with no handler and no check. Cancelling its task
        // does nothing; when the completion comes its batch is submitted and the request reports
        // the sync's answer, where design.md promises `CancellationError` and "never submitted"
        // for a request cancelled while it waits for a slot (and the commit message promises that
        // a request that turns out to wait is checked before its batch is submitted).
        //
        // Interleaving (capacity 3): A in flight (completion held). X's request takes the role and
        // is inside io_submit. R arrives: descriptor idle, a slot free, nothing ready: no handler;
        // `arrive` → `.queued` (X's thread submits). X's io_submit → EAGAIN; A is in flight, so X
        // goes back in front and the engine blocks on resources; R sits in the ready queue. R's
        // task is cancelled: nothing happens. A completes; X and R are submitted; R succeeds.
        // Fix: pass the task to the first `arrive` as well and, for a request without a handler,
        // mark it (flag + task) whenever the answer is `.queued`, not only after `.needsIdentity`
        // (the executor path answers `.queued` for every request, so that costs a dictionary
        // insert there); or give `exhausted` what it needs to mark the waiters of the batches it
        // blocks (the waiting starts there).
        @Test("FINDING: a request without a handler that ends up waiting for a slot behind an EAGAIN is cancellable",
              arguments: BackendKind.aio)
        func unhandledRequestBlockedBehindEAGAIN(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let a = try directory.file("a")
            let x = try directory.file("x")
            let r = try directory.file("r")
            defer { try? a.close(); try? x.close(); try? r.close() }
            let recorder = SyscallRecorder()
            let box = Later<AnyObject>()
            let xFD = x.rawValue
            let xSubmits = Counter()
            @Sendable func outstandingNow() -> Int { (box.value as? any AsyncSyncBackend).map { outstanding($0) } ?? 0 }
            var system = recorder.system
            let recorded = recorder.system
            system.ioSubmit = { context, count, iocbs in
                if descriptor(of: iocbs) == xFD, xSubmits.next() == 1 {
                    // Until R is in the engine (queued behind this submitter), then: out of resources.
                    _ = blockingEventually(30) { outstandingNow() == 3 }
                    return .failure(.resourceTemporarilyUnavailable)
                }
                return recorded.ioSubmit(context, count, iocbs)
            }
            system.aioFsync = { mode, control in
                if control.pointee.aio_fildes == xFD, xSubmits.next() == 1 {
                    _ = blockingEventually(30) { outstandingNow() == 3 }
                    return .failure(.resourceTemporarilyUnavailable)
                }
                return recorded.aioFsync(mode, control)
            }
            let backend = try makeBackend(kind, capacity: 3, system: system)
            box.set(backend as AnyObject)
            recorder.closeGate()  // A's completion is held
            let first = Watched { try await backend.fsync(a) }
            try #require(await eventually { recorder.submitted == 1 })
            let refused = Watched { try await backend.fsync(x) }
            try #require(await eventually { xSubmits.current == 1 })
            let request = Watched { try await backend.fsync(r) }
            // X refused with EAGAIN and back in the queue, R behind it: both wait for A.
            try #require(await eventually { waiting(backend) == 2 })
            request.task.cancel()
            // Without a handler the cancellation is looked at when the batch is taken (as for every
            // request that waits without one), not at once.
            try await Task.sleep(for: .milliseconds(50))
            let submittedBefore = recorder.submitted
            recorder.openGate()
            #expect(await eventually(30) { first.isDone && refused.isDone && request.isDone })
            #expect(first.succeeded && refused.succeeded)
            #expect(request.error is CancellationError, "cancelled while waiting, it was submitted: \(String(describing: request.outcome))")
            try #require(await eventually { outstanding(backend) == 0 })
            #expect(recorder.submitted - submittedBefore == 1, "only X is submitted after the completion")
            await backend.shutdown()
        }

        // FINDING (a cancelled task spins at full speed; 98ce92e). `SharedBackend.backend()`: a
        // caller that finds the shared backend being made waits with
        // `while true { if let result = await pending.value(timeout: 3600 s) { … } }`. For a
        // cancelled task `OneShot.value(timeout:)` returns nil at once (its waiting child sees the
        // cancellation, its sleeping child throws), so the loop never suspends for long: the task
        // burns a core, creating two child tasks per turn, until the first creation ends — up to
        // about 3 s per probed kind on a file system that does not answer, for every cancelled
        // task that touched `AsyncSync.shared` meanwhile (a cancelled server's request handlers).
        //
        // Interleaving: task 1 makes the shared backend (held here in `backendSelected`, standing
        // for a slow probe); task 2 calls `backend()`, finds `.making`, is cancelled. Fix:
        // `try Task.checkCancellation()` after a nil from `value(timeout:)` (a cancelled caller
        // gets CancellationError, which the engine would throw for it anyway), and make the
        // backend in an unstructured task that every caller, the first included, waits for: a
        // cancelled first caller must not decide the process-wide backend either (its probes
        // return at once as "no answer within 3000 ms", and the backend is made unprobed).
        @Test("FINDING: a cancelled task waiting for AsyncSync.shared's first creation neither spins nor waits for it")
        func sharedBackendCancelledWaiterSpins() async throws {
            let observer = HoldingObserver.shared
            let shared = observer.holdingSharedBackend()
            observer.arm()
            let maker = Watched { try await shared.backend() }
            try #require(await eventually(30) { observer.isHolding }, "the first creation reached its selection")
            #expect("\(shared)".hasSuffix("(not made yet)"))
            let waiter = Watched { _ = try await shared.backend() }
            try await Task.sleep(for: .milliseconds(20))
            waiter.task.cancel()
            let cpuBefore = processCPUSeconds()
            try await Task.sleep(for: .milliseconds(500))
            let cpu = processCPUSeconds() - cpuBefore
            let ended = waiter.isDone
            observer.release()
            #expect(ended, "the cancelled waiter still waits for the first creation")
            #expect(cpu < 0.25, "the process used \(cpu) s of CPU in 0.5 s while one cancelled task waited")
            #expect(await eventually(30) { maker.isDone && waiter.isDone })
            if ended { #expect(waiter.error is CancellationError) }
            if case .success(let backend) = maker.outcome { await backend.shutdown() }
        }

        // FINDING (acknowledges a sync over a durability failure recorded during the request's
        // flight; 98ce92e). `GroupCommit` applies the in-flight rule (and the sticky rule for each
        // request's own descriptor) through the wrapped backend's ledger, which it finds at `init`
        // through `FailureLedgerProviding`. `SharedBackend` does not provide one (and is usually not
        // made yet when a `GroupCommit(wrapping: AsyncSync.shared)` is built, the pattern its
        // documentation gives), so a GroupCommit over the shared backend has no ledger: a
        // follower's success is never judged against the failures recorded since it arrived. Only
        // the wrapped backend's checks of the *leader's* request remain, and those start when the
        // batch's sync is requested: a failure recorded, then cleared (`clearFailure(of:)`, the
        // application handled it), before the next batch's sync starts is forgotten for every
        // request of that batch, although their data was written before the failure.
        //
        // Interleaving: S1 (the leader's sync) runs; F arrives and queues for the next batch; S1
        // fails with EIO (recorded); F leads the next batch and waits out `delay`; the
        // application clears the failure; S2 succeeds (the kernel reported the error once, to S1);
        // F is acknowledged. Over a backend of its own the same GroupCommit fails F with
        // `concurrentFailure`. Fix: make `SharedBackend` a `FailureLedgerProviding` that forwards
        // to the made backend's ledger, and have GroupCommit look the ledger up at each request
        // (for the shared backend: after `backend()`, so that a request arriving before the backend
        // exists is stamped against its ledger from the start; stamp 0 would also be right).
        @Test("FINDING: GroupCommit over AsyncSync.shared applies the in-flight rule to a follower",
              arguments: [true, false])
        func groupCommitOverSharedKeepsInFlightRule(shared: Bool) async throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3") else { return }
            let fs = try FaultFS()
            let fd = try fs.open("wal")
            defer { try? fd.close() }
            let wrapped: any AsyncSyncBackend = shared ? AsyncSync.shared : try await AsyncSync.makeBackend()
            try await wrapped.fdatasync(fd)  // made, and the file synced once
            let group = GroupCommit(wrapping: wrapped, delay: .milliseconds(300))
            try fs.control("reset")
            try fs.control("delay_ms=300")
            try fs.control("errno=EIO count=1")
            let leader = Watched { try await group.fdatasync(fd) }
            try #require(await eventually(30) { (try? fs.counter("fdatasync")) == 1 }, "S1 reached the file system")
            let follower = Watched { try await group.fdatasync(fd) }
            try #require(await eventually { group.queuedCount == 1 })
            try #require(await eventually(30) { leader.isDone })
            #expect((leader.error as? AsyncSyncError)?.errno == .ioError)
            // F now leads the next batch and waits out the delay; the failure is cleared meanwhile.
            #expect(try group.clearFailure(of: fd))
            try #require(await eventually(30) { follower.isDone })
            let failure = follower.error as? AsyncSyncError
            #expect(failure?.code == .concurrentFailure,
                    "F arrived before S1's EIO was recorded and was acknowledged by S2: \(String(describing: follower.outcome))")
            #expect(try fs.counter("fdatasync") == 2)
            await group.shutdown()
        }

        // FINDING (a caller of AsyncSync.shared never returns; 98ce92e). Concurrent first callers
        // of `SharedBackend.backend()` all wait on one `OneShot`, but `OneShot` keeps a single
        // continuation for its async waiter (`awaitValue` stores `self.continuation`): a second
        // waiter overwrites the first's, so `fulfill` resumes only the last one. The other's
        // `awaitValue` child is never resumed by anyone: not at the deadline (the group cancels it,
        // its handler finds no continuation), not by cancelling the caller, and `withTaskGroup`
        // waits for it: that `sync` hangs for ever. (A cancelled waiter's handler also takes
        // whichever continuation is stored, so it can end another task's wait with nil.)
        //
        // Interleaving: task 1 makes the shared backend (held in `backendSelected`); tasks 2 and 3
        // call `backend()` and wait; the backend is made: task 3 goes on, task 2 never does.
        // Fix: let `OneShot` keep a continuation per waiter (an id per `awaitValue`, its handler
        // removing only its own).
        @Test("FINDING: every concurrent first caller of AsyncSync.shared gets the backend when it is made")
        func sharedBackendConcurrentFirstUse() async throws {
            let observer = HoldingObserver.shared
            let shared = observer.holdingSharedBackend()
            observer.arm()
            let maker = Watched { try await shared.backend() }
            try #require(await eventually(30) { observer.isHolding }, "the first creation reached its selection")
            let waiters = (0..<2).map { _ in Watched { try await shared.backend() } }
            try await Task.sleep(for: .milliseconds(100))  // both wait
            observer.release()
            let ended = await eventually(30) { maker.isDone && waiters.allSatisfy(\.isDone) }
            #expect(ended, "\(waiters.filter { !$0.isDone }.count) of 2 waiters still wait for the backend that was made")
            #expect(maker.succeeded)
            if case .success(let backend) = maker.outcome { await backend.shutdown() }
        }

        // FINDING (the same, without a second submitter). A request handed over at once by its
        // own thread (`.submit`: it takes the submitter role itself) whose io_submit gets EAGAIN
        // while another sync is in flight goes back to the ready queue and waits for a completion,
        // without a handler and unmarked: cancelling it does nothing, and it is submitted later.
        @Test("FINDING: a request without a handler whose own submission gets EAGAIN is cancellable while it waits",
              arguments: BackendKind.aio)
        func unhandledRequestRefusedWithEAGAIN(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let a = try directory.file("a")
            let r = try directory.file("r")
            defer { try? a.close(); try? r.close() }
            let recorder = SyscallRecorder()
            let rFD = r.rawValue
            let rSubmits = Counter()
            var system = recorder.system
            let recorded = recorder.system
            system.ioSubmit = { context, count, iocbs in
                if descriptor(of: iocbs) == rFD, rSubmits.next() == 1 { return .failure(.resourceTemporarilyUnavailable) }
                return recorded.ioSubmit(context, count, iocbs)
            }
            system.aioFsync = { mode, control in
                if control.pointee.aio_fildes == rFD, rSubmits.next() == 1 { return .failure(.resourceTemporarilyUnavailable) }
                return recorded.aioFsync(mode, control)
            }
            let backend = try makeBackend(kind, capacity: 4, system: system)
            recorder.closeGate()  // A's completion is held
            let first = Watched { try await backend.fsync(a) }
            try #require(await eventually { recorder.submitted == 1 })
            let request = Watched { try await backend.fsync(r) }
            try #require(await eventually { rSubmits.current == 1 && waiting(backend) == 1 })
            request.task.cancel()
            // Without a handler the cancellation is looked at when the batch is taken (as for every
            // request that waits without one), not at once.
            try await Task.sleep(for: .milliseconds(50))
            recorder.openGate()
            #expect(await eventually(30) { first.isDone && request.isDone })
            #expect(first.succeeded)
            #expect(request.error is CancellationError, "cancelled while waiting, it was submitted: \(String(describing: request.outcome))")
            #expect(rSubmits.current == 1, "submitted again after its cancellation")
            try #require(await eventually { outstanding(backend) == 0 })
            await backend.shutdown()
        }

        // Checked (review 4): OneShot with several async waiters, a value set from another thread
        // racing each waiter's cancellation and its deadline, and waiters that arrive after the
        // value. Every waiter returns exactly once (a continuation resumed twice traps, one never
        // resumed hangs its task group): with the value, or nil when it was cancelled or its
        // deadline passed first; one neither cancelled nor timed out always gets the value.
        @Test("checked: OneShot waiters racing fulfil, cancellation and deadline all return once")
        func oneShotRaces() async throws {
            for round in 0..<300 {
                let shot = OneShot<Int>()
                let patient = (0..<3).map { _ in Watched { await shot.value(timeout: .seconds(60)) } }
                let cancelled = (0..<3).map { _ in Watched { await shot.value(timeout: .seconds(60)) } }
                let hasty = (0..<2).map { _ in Watched { await shot.value(timeout: .microseconds(Int64(round % 50))) } }
                if round % 3 == 0 { await Task.yield() }
                let fulfilled = Flag()
                Thread.detachNewThread {
                    if round % 2 == 0 { usleep(UInt32(round % 7) * 20) }
                    shot.fulfill(round)
                    fulfilled.raise()
                }
                for waiter in cancelled { waiter.task.cancel() }
                let late = Watched { await shot.value(timeout: .seconds(60)) }
                let all = patient + cancelled + hasty + [late]
                let ended = await eventually(30) { fulfilled.isRaised && all.allSatisfy(\.isDone) }
                try #require(ended, "round \(round): \(all.filter { !$0.isDone }.count) waiters never returned")
                for waiter in patient + [late] {
                    guard case .success(let value) = waiter.outcome else { Issue.record("round \(round): no outcome"); continue }
                    #expect(value == round, "round \(round): a waiter neither cancelled nor timed out got \(String(describing: value))")
                }
                for waiter in cancelled + hasty {
                    guard case .success(let value) = waiter.outcome else { Issue.record("round \(round): no outcome"); continue }
                    #expect(value == nil || value == round)
                }
            }
        }

        // Checked (review 4): GroupCommit over a shared backend that is not made yet when its
        // requests arrive. Both are stamped 0 (no ledger to stamp against); the ledger is looked
        // up again when each is judged, so the follower, which arrived before S1's EIO, is not
        // acknowledged by S2 after the failure was cleared.
        @Test("checked: GroupCommit requests that arrive before AsyncSync.shared is made are judged against its ledger")
        func groupCommitOverUnmadeShared() async throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3") else { return }
            let fs = try FaultFS()
            let fd = try fs.open("wal")
            defer { try? fd.close() }
            let observer = HoldingObserver.shared
            let shared = observer.holdingSharedBackend()
            let group = GroupCommit(wrapping: shared, delay: .milliseconds(300))
            try fs.control("reset")
            try fs.control("delay_ms=300")
            try fs.control("errno=EIO count=1")
            observer.arm()
            let leader = Watched { try await group.fdatasync(fd) }
            try #require(await eventually(30) { observer.isHolding }, "the shared backend's creation reached its selection")
            let follower = Watched { try await group.fdatasync(fd) }
            try #require(await eventually { group.queuedCount == 1 })
            #expect(shared.failureLedger == nil)
            observer.release()
            try #require(await eventually(30) { leader.isDone })
            #expect((leader.error as? AsyncSyncError)?.errno == .ioError)
            #expect(try group.clearFailure(of: fd))
            try #require(await eventually(30) { follower.isDone })
            #expect((follower.error as? AsyncSyncError)?.code == .concurrentFailure,
                    "F arrived before S1's EIO was recorded and was acknowledged by S2: \(String(describing: follower.outcome))")
            #expect(try fs.counter("fdatasync") == 2)
            await group.shutdown()
            await (try? shared.backend())?.shutdown()
        }

        // Checked (review 4): the kept tasks are indexed by waiter node, and nodes are reused. A
        // request without a handler whose task is cancelled completes; its node goes to a request
        // with a handler, whose batch is put back by an EAGAIN (so it is looked at again), merged
        // with a later batch holding another request without a handler. Only the latter, whose
        // own task is cancelled, is dropped: nothing of the first request's task is left on its node.
        @Test("checked: a reused waiter node does not carry the cancelled task of its former request")
        func reusedNodeForgetsTask() async throws {
            let parked = Parked()
            let c = try await parked.make(4)
            final class Box: @unchecked Sendable { var state = EngineState(slotCount: 2) }
            let box = Box()
            var first = Waiter(id: 1, descriptor: FileDescriptor(rawValue: 7), mode: .fdatasync, continuation: c[0],
                               arrival: 0, identity: nil, identityTaken: false)
            first.checksCancellation = true
            var joining = Waiter(id: 4, descriptor: FileDescriptor(rawValue: 8), mode: .fdatasync, continuation: c[3],
                                 arrival: 0, identity: FileIdentity(device: 1, inode: 8), identityTaken: true)
            joining.checksCancellation = true
            let requests = Unchecked((first, joining))
            let step = Locked(0)
            let go = Locked<CheckedContinuation<Void, Never>?>(nil)
            let finish = Locked<CheckedContinuation<Void, Never>?>(nil)
            // A cancelled task that stays suspended while the state may hold it.
            let cancelledTask = Task {
                withUnsafeCurrentTask { $0?.cancel() }
                withUnsafeCurrentTask { task in
                    let arrival1 = box.state.arrive(requests.value.0, isCancelled: false, onCompletionThread: false, task: task)
                    #expect(arrival1 == .submit)
                }
                await withCheckedContinuation { continuation in
                    go.withLock { $0 = continuation }
                    step.withLock { $0 = 1 }
                }
                withUnsafeCurrentTask { task in
                    let arrival2 = box.state.arrive(requests.value.1, isCancelled: false, onCompletionThread: false, task: task)
                    #expect(arrival2 == .queued)
                }
                await withCheckedContinuation { continuation in
                    finish.withLock { $0 = continuation }
                    step.withLock { $0 = 2 }
                }
            }
            try await waitUntil { step.withLock { $0 } == 1 }
            var prepared: [EngineState.Prepared] = []
            var cancelled: [Waiter] = []
            _ = box.state.takeBatches(into: &prepared, cancelled: &cancelled)
            #expect(prepared.count == 1 && cancelled.isEmpty, "handed over at once: not looked at")
            var none: [EngineState.Prepared] = []
            _ = box.state.takeBatches(into: &none, cancelled: &cancelled)
            var done: [Waiter] = []
            _ = box.state.completed(slot: prepared[0].slot, result: .success(()), into: &done)
            #expect(done.map(\.id) == [1])
            // Its node is reused by a request with a handler (fd 8), submitted with one for fd 9.
            let handled = Waiter(id: 2, descriptor: FileDescriptor(rawValue: 8), mode: .fdatasync, continuation: c[1],
                                 arrival: 0, identity: nil, identityTaken: false)
            let other = Waiter(id: 3, descriptor: FileDescriptor(rawValue: 9), mode: .fdatasync, continuation: c[2],
                               arrival: 0, identity: nil, identityTaken: false)
            let arrival3 = box.state.arrive(handled, isCancelled: false, onCompletionThread: false)
            #expect(arrival3 == .submit)
            let arrival4 = box.state.arrive(other, isCancelled: false, onCompletionThread: false)
            #expect(arrival4 == .queued)
            prepared.removeAll()
            _ = box.state.takeBatches(into: &prepared, cancelled: &cancelled)
            #expect(prepared.count == 2)
            // A request without a handler (the cancelled task) joins fd 8's next batch meanwhile.
            go.withLock { $0 }!.resume()
            try await waitUntil { step.withLock { $0 } == 2 }
            // fd 8's submission gets EAGAIN, fd 9's sync is in flight: back to the ready queue, merged.
            let slot8 = prepared.first { $0.descriptor == 8 }!.slot
            let slot9 = prepared.first { $0.descriptor == 9 }!.slot
            var failed: [Waiter] = []
            _ = [slot8].withUnsafeBufferPointer { box.state.exhausted($0, into: &failed) }
            #expect(failed.isEmpty)
            _ = box.state.takeBatches(into: &none, cancelled: &cancelled)  // blocked: the role is given up
            _ = box.state.completed(slot: slot9, result: .success(()), into: &done)
            let role = box.state.takeSubmitterRole()
            #expect(role)
            prepared.removeAll()
            _ = box.state.takeBatches(into: &prepared, cancelled: &cancelled)
            #expect(cancelled.map(\.id) == [4], "only the request whose own task was cancelled is dropped")
            #expect(prepared.count == 1 && prepared[0].descriptor == 8, "the handled request's sync is submitted")
            #expect(box.state.outstanding == 1)
            finish.withLock { $0 }!.resume()
            await cancelledTask.value
            await parked.finish()
        }

        // @@MORE@@
    }
}
#endif  // os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
