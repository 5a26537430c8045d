import Foundation
import Synchronization
import SystemPackage
import Testing

@testable import AsyncFsync

extension AsyncFsyncTests {
    /// ``PortableState`` on its own: each event and the action it returns, without threads.
    @Suite struct PortableStateMachine {
        typealias State = PortableState<String, String>

        /// A state with `threads` threads counted as started.
        func started(_ threads: Int) -> State {
            var state = State()
            for _ in 0..<threads { state.threadStarting() }
            return state
        }

        func taken(_ next: State.Next) -> String? {
            if case .run(_, let job) = next { return job }
            return nil
        }

        /// The next request a thread takes, with its ticket.
        func take(_ state: inout State) -> (ticket: State.Ticket, job: String)? {
            if case .run(let ticket, let job) = state.next() { return (ticket, job) }
            return nil
        }

        /// Submits a sync of descriptor 3 (the queue's old tests).
        @discardableResult
        func submitSync(_ state: inout State, _ id: Int, _ job: String, descriptor: CInt = 3) -> State.Submit {
            state.submit(id: UInt64(id), descriptor: descriptor, kind: .sync, job)
        }

        @Test("requests run in arrival order, each taken once; an idle thread waits")
        func fifo() {
            var state = started(2)
            for (id, job) in ["a", "b", "c"].enumerated() {
                guard case .queued = submitSync(&state, id, job) else { Issue.record("refused"); return }
            }
            let a = take(&state)
            let b = take(&state)
            #expect(a?.job == "a" && b?.job == "b")
            #expect(state.busyThreads == 2)
            #expect(state.finished(a!.ticket) == 0)
            let c = take(&state)
            #expect(c?.job == "c")
            _ = state.finished(b!.ticket)
            _ = state.finished(c!.ticket)
            guard case .wait = state.next() else { Issue.record("an idle thread must wait while running"); return }
            #expect(state.queuedCount == 0 && state.busyThreads == 0)
        }

        @Test("a queued request that is cancelled leaves the queue and is never run; a taken one is not given back")
        func cancellation() {
            var state = started(1)
            submitSync(&state, 1, "running")
            submitSync(&state, 2, "queued")
            submitSync(&state, 3, "later")
            let running = take(&state)
            #expect(running?.job == "running")
            #expect(state.cancel(1) == nil, "a request a thread took runs to its result")
            #expect(state.cancel(2)?.job == "queued")
            #expect(state.cancel(2) == nil, "given back once")
            #expect(state.cancel(99) == nil)
            _ = state.finished(running!.ticket)
            #expect(taken(state.next()) == "later")
        }

        @Test("shutdown: new requests are refused, queued ones still run, the waiters are returned once by the last thread to leave")
        func drain() {
            var state = started(2)
            submitSync(&state, 1, "a")
            submitSync(&state, 2, "b")
            let a = take(&state)
            #expect(a?.job == "a")
            guard case .wait(wakeAll: true) = state.shutdown("first") else { Issue.record("wake every thread"); return }
            guard case .wait(wakeAll: false) = state.shutdown("second") else { Issue.record("one wake-up is enough"); return }
            #expect(!state.isAccepting)
            guard case .refused("c") = submitSync(&state, 3, "c") else { Issue.record("accepted after shutdown"); return }
            guard case .refused("w") = state.submit(id: 4, descriptor: 3, kind: .write, "w") else { Issue.record("a write accepted after shutdown"); return }
            // The second thread takes what is queued, then leaves; the busy one leaves after it.
            let b = take(&state)
            #expect(b?.job == "b")
            _ = state.finished(b!.ticket)
            guard case .exit(.none) = state.next() else { Issue.record("the first thread to leave returns no waiter"); return }
            _ = state.finished(a!.ticket)
            guard case .exit(.stopped(let waiters)) = state.next() else { Issue.record("the last one stops"); return }
            #expect(waiters == ["first", "second"])
            #expect(state.lifecycle == .stopped && state.liveThreads == 0)
            guard case .done("third") = state.shutdown("third") else { Issue.record("after the stop, at once"); return }
        }

        @Test("a thread leaves only once the queue is empty, even when the shutdown came before it was free")
        func drainBeforeExit() {
            var state = started(1)
            for id in 1...3 { submitSync(&state, id, "\(id)") }
            _ = state.shutdown(nil)
            var ran: [String] = []
            while case .run(let ticket, let job) = state.next() {
                ran.append(job)
                _ = state.finished(ticket)
            }
            #expect(ran == ["1", "2", "3"])
            #expect(state.lifecycle == .stopped)
        }

        @Test("threads that could not start: a shutdown with none live is done at once; the last failed start ends a drain")
        func failedStarts() {
            var state = State()
            state.threadStarting()
            guard case .none = state.threadDidNotStart() else { Issue.record("running: nothing to stop"); return }
            guard case .done("w") = state.shutdown("w") else { Issue.record("no thread to wait for"); return }

            // One thread is in its loop, a second is being started when the shutdown comes.
            var draining = started(2)
            #expect(taken(draining.next()) == nil)  // the first one waits
            guard case .wait(wakeAll: true) = draining.shutdown("w") else { Issue.record("a drain"); return }
            guard case .exit(.none) = draining.next() else { Issue.record("the waiting thread leaves"); return }
            guard case .stopped(let waiters) = draining.threadDidNotStart() else { Issue.record("the failed start is the last"); return }
            #expect(waiters == ["w"])
            #expect(draining.lifecycle == .stopped)
        }

        // MARK: Writes and the sync that covers them

        @Test("a sync asked for while writes of its descriptor are in flight is held until they complete, in any order; other descriptors are not held")
        func syncWaitsForEarlierWrites() {
            var state = started(4)
            guard case .queued = state.submit(id: 1, descriptor: 3, kind: .write, "w1"),
                  case .queued = state.submit(id: 2, descriptor: 3, kind: .write, "w2") else { Issue.record("writes are queued"); return }
            let w1 = take(&state)!
            guard case .held = state.submit(id: 3, descriptor: 3, kind: .sync, "s") else { Issue.record("the sync must be held"); return }
            guard case .queued = state.submit(id: 4, descriptor: 4, kind: .sync, "other") else { Issue.record("another descriptor is not held"); return }
            #expect(state.isHeld(3) && state.heldCount == 1)
            let w2 = take(&state)!
            #expect(take(&state)?.job == "other")
            guard case .wait = state.next() else { Issue.record("the held sync is not run"); return }
            #expect(state.finished(w2.ticket) == 0, "w1 still runs: the sync stays held")
            guard case .wait = state.next() else { Issue.record("still held after w2"); return }
            #expect(state.finished(w1.ticket) == 1, "the last earlier write releases it: wake one thread")
            #expect(!state.isHeld(3) && state.pendingWriteCount(of: 3) == 0)
            let sync = take(&state)
            #expect(sync?.job == "s" && sync?.ticket.work == .sync)
        }

        @Test("writes accepted after a sync never hold it: a stream of later writes cannot starve it")
        func laterWritesDoNotHold() {
            var state = started(2)
            _ = state.submit(id: 1, descriptor: 3, kind: .write, "w1")
            let w1 = take(&state)!
            guard case .held = state.submit(id: 2, descriptor: 3, kind: .sync, "s") else { Issue.record("held by w1"); return }
            // Later writes keep arriving and running.
            for id in 3...6 { _ = state.submit(id: UInt64(id), descriptor: 3, kind: .write, "w\(id)") }
            let w3 = take(&state)!
            #expect(w3.job == "w3")
            #expect(state.finished(w1.ticket) == 1, "w1 was the only write before the sync")
            #expect(state.pendingWriteCount(of: 3) == 4)
            // Released behind the writes queued before its release, ahead of any later one.
            var order: [String] = []
            _ = state.submit(id: 7, descriptor: 3, kind: .write, "w7")
            while let next = take(&state) {
                order.append(next.job)
                _ = state.finished(next.ticket)
            }
            #expect(order == ["w4", "w5", "w6", "s", "w7"])
            _ = state.finished(w3.ticket)
        }

        @Test("with nothing in flight a sync is queued at once; a sync after a completed write is not held")
        func syncWithoutPendingWrites() {
            var state = started(1)
            _ = state.submit(id: 1, descriptor: 3, kind: .write, "w")
            let w = take(&state)!
            _ = state.finished(w.ticket)
            guard case .queued = state.submit(id: 2, descriptor: 3, kind: .sync, "s") else { Issue.record("nothing to wait for"); return }
            #expect(state.heldCount == 0)
        }

        @Test("a cancelled queued write releases the syncs it held; a held sync can be cancelled; a durable write's sync part cannot")
        func cancellingWrites() {
            var state = started(1)
            _ = state.submit(id: 1, descriptor: 3, kind: .write, "w1")
            _ = state.submit(id: 2, descriptor: 3, kind: .sync, "s1")
            _ = state.submit(id: 3, descriptor: 3, kind: .sync, "s2")
            #expect(state.heldCount == 2)
            let cancelled = state.cancel(1)
            #expect(cancelled?.job == "w1" && cancelled?.wake == 2, "nothing of w1 was written: both syncs are free")
            #expect(state.pendingWriteCount(of: 3) == 0 && state.heldCount == 0)
            #expect(state.cancel(3)?.job == "s2", "a queued sync is given back")

            _ = state.submit(id: 4, descriptor: 3, kind: .write, "w4")
            _ = state.submit(id: 5, descriptor: 3, kind: .sync, "s5")
            let held = state.cancel(5)
            #expect(held?.job == "s5" && held?.wake == 0 && state.heldCount == 0, "a held sync is given back")

            // A durable write whose sync part is held: its write ran, so it is never given back.
            var durable = started(2)
            _ = durable.submit(id: 10, descriptor: 3, kind: .write, "w")
            _ = durable.submit(id: 11, descriptor: 3, kind: .durableWrite, "d")
            let w = take(&durable)!
            let d = take(&durable)!
            guard case .held(wake: 0) = durable.durableWriteWritten(d.ticket, job: d.job, succeeded: true) else {
                Issue.record("its sync part waits for w"); return
            }
            #expect(durable.isHeld(11) && durable.cancel(11) == nil)
            #expect(durable.finished(w.ticket) == 1)
            #expect(durable.cancel(11) == nil, "queued again, still not given back")
            let sync = take(&durable)
            #expect(sync?.job == "d" && sync?.ticket.work == .durableSync)
        }

        @Test("a durable write: the thread runs its sync after its write; held while an earlier write runs; a failed write ends it without a sync")
        func durableWrites() {
            var state = started(2)
            _ = state.submit(id: 1, descriptor: 3, kind: .durableWrite, "d1")
            let d1 = take(&state)!
            #expect(d1.ticket.work == .durableWrite)
            guard case .held = state.submit(id: 2, descriptor: 3, kind: .sync, "s") else { Issue.record("the write part holds a later sync"); return }
            guard case .sync(let sync, wake: 1) = state.durableWriteWritten(d1.ticket, job: d1.job, succeeded: true) else {
                Issue.record("nothing earlier: sync now, and the later sync is released"); return
            }
            #expect(sync.work == .durableSync && sync.id == 1 && state.busyThreads == 1)
            #expect(state.finished(sync) == 0 && state.busyThreads == 0)
            _ = take(&state).map { _ = state.finished($0.ticket) }

            // A write accepted before the durable write still runs: the sync part waits for it.
            _ = state.submit(id: 3, descriptor: 3, kind: .write, "w")
            _ = state.submit(id: 4, descriptor: 3, kind: .durableWrite, "d2")
            let w = take(&state)!
            let d2 = take(&state)!
            guard case .held(wake: 0) = state.durableWriteWritten(d2.ticket, job: d2.job, succeeded: true) else { Issue.record("held"); return }
            #expect(state.busyThreads == 1, "the thread is free while the sync part waits")
            #expect(state.finished(w.ticket) == 1)
            let part = take(&state)
            #expect(part?.job == "d2" && part?.ticket.work == .durableSync)
            _ = state.finished(part!.ticket)

            // A failed write part: done, nothing held, no sync.
            _ = state.submit(id: 5, descriptor: 3, kind: .durableWrite, "d3")
            let d3 = take(&state)!
            guard case .done(wake: 0) = state.durableWriteWritten(d3.ticket, job: d3.job, succeeded: false) else { Issue.record("done"); return }
            #expect(state.busyThreads == 0 && state.pendingWriteCount(of: 3) == 0 && state.queuedCount == 0)
        }

        @Test("shutdown drains writes and held syncs: the threads leave only after the released sync ran")
        func drainWithWrites() {
            var state = started(2)
            _ = state.submit(id: 1, descriptor: 3, kind: .write, "w")
            _ = state.submit(id: 2, descriptor: 3, kind: .sync, "s")
            let w = take(&state)!
            guard case .wait(wakeAll: true) = state.shutdown("waiter") else { Issue.record("a drain"); return }
            guard case .exit(.none) = state.next() else { Issue.record("the idle thread leaves: the busy one will run the sync"); return }
            #expect(state.finished(w.ticket) == 1)
            let s = take(&state)
            #expect(s?.job == "s")
            _ = state.finished(s!.ticket)
            guard case .exit(.stopped(let waiters)) = state.next() else { Issue.record("then the last thread stops"); return }
            #expect(waiters == ["waiter"])
        }
    }

    /// ``PortableBackend`` on real threads; the generic suites (BackendTests, SemanticsTests,
    /// GroupCommitTests, FaultFSTests, …) run against it too.
    @Suite struct Portable {
        init() { GlibcAIOUnderSanitizer.configure }

        /// Names of this process's threads that are the portable backend's.
        static func syncThreads() -> Int {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
            return tasks.filter {
                ((try? String(contentsOfFile: "/proc/self/task/\($0)/comm", encoding: .utf8)) ?? "").hasPrefix("asyncfsync-sync")
            }.count
        }

        @Test("a thread count out of 1…256 is an invalid configuration", arguments: [0, -1, 257, Int.max])
        func invalidThreads(threads: Int) {
            #expect {
                _ = try PortableBackend(threads: threads)
            } throws: { error in
                let error = error as? AsyncSyncError
                return error?.code == .invalidConfiguration && error?.backend == .portable
                    && error?.description.contains("\(threads)") == true
            }
        }

        @Test("a thread that cannot start fails the backend with pthread_create's errno; the started ones leave")
        func threadCannotStart() async throws {
            let baseline = Self.syncThreads()
            let starts = Atomic<Int>(0)
            var system = SystemCalls.live
            system.startThread = { name, body in
                if starts.add(1, ordering: .relaxed).newValue == 3 { return .failure(.resourceTemporarilyUnavailable) }
                return SystemCalls.live.startThread(name, body)
            }
            #expect {
                _ = try PortableBackend(threads: 4, system: system)
            } throws: { error in
                let error = error as? AsyncSyncError
                return error?.code == .backendUnavailable && error?.errno == .resourceTemporarilyUnavailable
                    && error?.systemCall == "pthread_create" && error?.backend == .portable
            }
            try await waitUntil { Self.syncThreads() <= baseline }  // threads of earlier tests may end meanwhile
        }

        @Test("each request is served by a sync of its own that started after it arrived, even on one descriptor")
        func ownSync() async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data")
            defer { try? fd.close() }
            let recorder = SyscallRecorder()
            let backend = try PortableBackend(threads: 2, system: recorder.system)
            recorder.closeGate()
            let first = Task { try await backend.fdatasync(fd) }
            try await waitUntil { recorder.submitted == 1 }
            let second = Task { try await backend.fdatasync(fd) }  // arrives while the first sync runs
            try await waitUntil { recorder.submitted == 2 }
            recorder.openGate()
            try await first.value
            try await second.value
            #expect(recorder.submitted == 2)
            await backend.shutdown()
        }

        @Test("a request cancelled while queued throws CancellationError and never reaches the system")
        func cancelledWhileQueued() async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data")
            defer { try? fd.close() }
            let recorder = SyscallRecorder()
            let backend = try PortableBackend(threads: 1, system: recorder.system)
            recorder.closeGate()
            let running = Task { try await backend.fsync(fd) }
            try await waitUntil { recorder.submitted == 1 }
            let queued = Task { try await backend.fsync(fd) }
            try await waitUntil { backend.pool.queuedCount == 1 }
            queued.cancel()
            #expect(await caughtError { try await queued.value } is CancellationError)
            recorder.openGate()
            try await running.value  // the running one reports the system's result
            #expect(recorder.submitted == 1)
            await backend.shutdown()
        }

        @Test("shutdown refuses new requests, lets the queued ones run, and returns once every thread has left its loop")
        func shutdownDrains() async throws {
            let baseline = Self.syncThreads()
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data")
            defer { try? fd.close() }
            let recorder = SyscallRecorder()
            let backend = try PortableBackend(threads: 2, system: recorder.system)
            recorder.closeGate()
            let requests = (0..<5).map { index in Task { try await backend.sync(fd, mode: index.isMultiple(of: 2) ? .fsync : .fdatasync) } }
            try await waitUntil { recorder.submitted == 2 && backend.pool.queuedCount == 3 }
            let shutdown = Task { await backend.shutdown() }
            try await waitUntil { !backend.pool.isAccepting }
            let late = await caughtError { try await backend.fdatasync(fd) } as? AsyncSyncError
            #expect(late?.code == .shutDown && late?.backend == .portable && late?.descriptor == fd)
            recorder.openGate()
            for request in requests { try await request.value }
            await shutdown.value
            #expect(recorder.submitted == 5)
            #expect(backend.pool.summary.hasSuffix("live threads 0, stopped"), "\(backend.pool.summary)")
            // The detached threads end right after leaving their loop (they touch nothing more).
            try await waitUntil { Self.syncThreads() <= baseline }  // threads of earlier tests may end meanwhile
            await backend.shutdown()  // twice is harmless
        }

        @Test("a failed sync is recorded before its caller resumes: the next request of the file is refused at once")
        func failureRecordedFirst() async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data")
            defer { try? fd.close() }
            let recorder = SyscallRecorder()
            let backend = try PortableBackend(threads: 1, system: recorder.system)
            recorder.injectAtCompletion([.ioError])
            let failure = await caughtError { try await backend.fsync(fd) } as? AsyncSyncError
            #expect(failure?.code == .system && failure?.errno == .ioError && failure?.step == .completion)
            #expect(failure?.systemCall == durableSyncCallName(.fsync) && failure?.backend == .portable)
            let refused = await caughtError { try await backend.fdatasync(fd) } as? AsyncSyncError
            #expect(refused?.code == .earlierFailure && refused?.errno == .ioError)
            #expect(recorder.submitted == 1)
            #expect(try backend.clearFailure(of: fd))
            try await backend.fdatasync(fd)
            await backend.shutdown()
        }

        @Test("a backend dropped without shutdown lets its threads leave")
        func dropped() async throws {
            let baseline = Self.syncThreads()
            let pool: PortableThreadPool  // the threads' state, without the backend
            do {
                let backend = try PortableBackend(threads: 3)
                pool = backend.pool
                let directory = try ScratchDirectory.onDisk()
                let fd = try directory.file("data")
                try await backend.fdatasync(fd)
                try fd.close()
            }
            try await waitUntil { pool.summary.hasSuffix("live threads 0, stopped") }
            try await waitUntil { Self.syncThreads() <= baseline }  // threads of earlier tests may end meanwhile
        }

        @Test("ASYNC_FSYNC_BACKEND=portable forces it; it is described")
        func forced() async throws {
            let backend = try await AsyncSync.makeBackend(environment: [AsyncSync.environmentVariable: "portable"])
            #expect(backend.kind == .portable)
            #expect("\(backend)".hasPrefix("portable backend (4 threads"))
            await backend.shutdown()
        }

        @Test("Configuration(backend: .portable) makes it, with its default threads whatever the capacity; blocking form too")
        func configured() async throws {
            let directory = try ScratchDirectory.onDisk()
            let configuration = AsyncSync.Configuration(backend: .portable, capacity: 64, probeDirectory: directory.path)
            let backend = try await AsyncSync.makeBackend(configuration)
            #expect((backend as? PortableBackend)?.threadCount == PortableBackend.defaultThreads)
            await backend.shutdown()
            let blocking = try AsyncSync.makeBackendBlocking(configuration)
            #expect(blocking.kind == .portable)
            await blocking.shutdown()
        }

        /// An actor that syncs through a backend, on the executor ``ActorExecutor`` gives it.
        actor Store {
            let backend: any AsyncSyncBackend
            let executor: ActorExecutor
            nonisolated var unownedExecutor: UnownedSerialExecutor { executor.unownedExecutor }
            var appended = 0
            init(backend: any AsyncSyncBackend) {
                self.backend = backend
                executor = ActorExecutor(preferring: backend)
            }
            func append(_ fd: FileDescriptor) async throws {
                try await backend.fdatasync(fd)
                preconditionIsolated()  // back on the actor's own executor after the sync
                appended += 1
            }
        }

        @Test("ActorExecutor: with the portable backend (no serial executor) an actor has an executor of its own and stays serial")
        func actorExecutor() async throws {
            let backend = try makeBackend(.portable)
            #expect(backend.preferredSerialExecutor == nil && backend.preferredTaskExecutor == nil)
            let store = Store(backend: backend)
            #expect(!store.executor.isBackendExecutor)
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("actor")
            defer { try? fd.close() }
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                for _ in 0..<16 { tasks.addTask { try await store.append(fd) } }
                try await tasks.waitForAll()
            }
            #expect(await store.appended == 16)
            await backend.shutdown()
        }
    }
}
