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

        @Test("requests run in arrival order, each taken once; an idle thread waits")
        func fifo() {
            var state = started(2)
            for (id, job) in ["a", "b", "c"].enumerated() {
                guard case .queued = state.submit(id: UInt64(id), job) else { Issue.record("refused"); return }
            }
            #expect(taken(state.next()) == "a")
            #expect(taken(state.next()) == "b")
            #expect(state.busyThreads == 2)
            state.finished()
            #expect(taken(state.next()) == "c")
            state.finished()
            state.finished()
            guard case .wait = state.next() else { Issue.record("an idle thread must wait while running"); return }
            #expect(state.queuedCount == 0 && state.busyThreads == 0)
        }

        @Test("a queued request that is cancelled leaves the queue and is never run; a taken one is not given back")
        func cancellation() {
            var state = started(1)
            _ = state.submit(id: 1, "running")
            _ = state.submit(id: 2, "queued")
            _ = state.submit(id: 3, "later")
            #expect(taken(state.next()) == "running")
            #expect(state.cancel(1) == nil, "a request a thread took runs to its result")
            #expect(state.cancel(2) == "queued")
            #expect(state.cancel(2) == nil, "given back once")
            #expect(state.cancel(99) == nil)
            state.finished()
            #expect(taken(state.next()) == "later")
        }

        @Test("shutdown: new requests are refused, queued ones still run, the waiters are returned once by the last thread to leave")
        func drain() {
            var state = started(2)
            _ = state.submit(id: 1, "a")
            _ = state.submit(id: 2, "b")
            #expect(taken(state.next()) == "a")
            guard case .wait(wakeAll: true) = state.shutdown("first") else { Issue.record("wake every thread"); return }
            guard case .wait(wakeAll: false) = state.shutdown("second") else { Issue.record("one wake-up is enough"); return }
            #expect(!state.isAccepting)
            guard case .refused("c") = state.submit(id: 3, "c") else { Issue.record("accepted after shutdown"); return }
            // The second thread takes what is queued, then leaves; the busy one leaves after it.
            #expect(taken(state.next()) == "b")
            state.finished()
            guard case .exit(.none) = state.next() else { Issue.record("the first thread to leave returns no waiter"); return }
            state.finished()
            guard case .exit(.stopped(let waiters)) = state.next() else { Issue.record("the last one stops"); return }
            #expect(waiters == ["first", "second"])
            #expect(state.lifecycle == .stopped && state.liveThreads == 0)
            guard case .done("third") = state.shutdown("third") else { Issue.record("after the stop, at once"); return }
        }

        @Test("a thread leaves only once the queue is empty, even when the shutdown came before it was free")
        func drainBeforeExit() {
            var state = started(1)
            for id in 1...3 { _ = state.submit(id: UInt64(id), "\(id)") }
            _ = state.shutdown(nil)
            var ran: [String] = []
            while case .run(_, let job) = state.next() {
                ran.append(job)
                state.finished()
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
