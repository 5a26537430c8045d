// The Linux backends' engine, hub, executors, probes and inline path: compiled out under
// ASYNC_FSYNC_PORTABLE (and off Linux), where the portable backend is the only one.
#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
import CTestSupport
import Foundation
import Synchronization
import SystemPackage
import Testing

@testable import AsyncFsync

/// The name of the calling thread (`pthread_getname_np`).
func currentThreadName() -> String {
    var buffer = [CChar](repeating: 0, count: 32)
    _ = testsupport_thread_name(&buffer, UInt(buffer.count))
    return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// The completion thread's name as the kernel keeps it (15 characters).
func completionThreadName(_ kind: BackendKind) -> String {
    String("asyncfsync-\(kind.rawValue)".prefix(15))
}

/// The live system calls under an id of their own, so that a backend made with them gets a
/// completion thread that no other backend of the process shares (the live table's thread is
/// shared, for example with `AsyncSync.shared`, and outlives any one backend).
func liveWithOwnThread() -> SystemCalls {
    var system = SystemCalls.live
    let aioError = system.aioError
    system.aioError = aioError  // any change renews the id
    return system
}

func taskExecutor(of backend: any AsyncSyncBackend) -> any TaskExecutor {
    backend.preferredTaskExecutor ?? globalConcurrentExecutor
}

/// A backend with no executor of its own (a test double, or a backend someone wrote).
final class ExecutorlessBackend: AsyncSyncBackend {
    let kind = BackendKind.posix
    let synced = Atomic<Int>(0)
    func sync(_ fd: FileDescriptor, mode: SyncMode) async throws { synced.add(1, ordering: .relaxed) }
    func shutdown() async {}
}

/// An actor following the documented pattern: the backend's serial executor when it has one, an
/// executor of its own otherwise.
actor ExecutorPreferringStore {
    let backend: any AsyncSyncBackend
    let executor: ActorExecutor
    nonisolated var unownedExecutor: UnownedSerialExecutor { executor.unownedExecutor }
    var appended = 0

    init(backend: any AsyncSyncBackend) {
        self.backend = backend
        self.executor = ActorExecutor(preferring: backend)
    }

    /// Syncs, then reports the thread it went on on.
    func append(_ fd: FileDescriptor) async throws -> String {
        try await backend.fdatasync(fd)
        preconditionIsolated()  // the actor's executor is the one it runs on
        appended += 1
        return currentThreadName()
    }
}

extension AsyncFsyncTests {
    /// Each backend is also a task executor that runs tasks on its completion thread.
    @Suite struct Executor {
        init() { GlibcAIOUnderSanitizer.configure }

        @Test("a task preferring the backend's executor goes on on the completion thread after each sync",
              arguments: BackendKind.aio)
        func resumesOnCompletionThread(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data")
            defer { try? fd.close() }
            let backend = try makeBackend(kind)
            let threadName = completionThreadName(kind)
            try await withTaskExecutorPreference(taskExecutor(of: backend)) {
                for round in 0..<20 {
                    try fd.writeAll(Array("record \(round)\n".utf8))
                    try await backend.fdatasync(fd)
                    #expect(currentThreadName() == threadName)
                }
            }
            // Without the preference, tasks go on on the cooperative pool as before.
            try await backend.fsync(fd)
            #expect(currentThreadName() != threadName)
            await backend.shutdown()
        }

        @Test("makeBackend()'s backend and a GroupCommit over it offer the completion thread as preferredTaskExecutor",
              arguments: BackendKind.aio)
        func preferredThroughTheProtocol(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("wal")
            defer { try? fd.close() }
            let backend: any AsyncSyncBackend = try await AsyncSync.makeBackend(environment: [AsyncSync.environmentVariable: kind.rawValue])
            let group = GroupCommit(wrapping: backend)
            #expect(group.preferredTaskExecutor != nil)
            try await withTaskExecutorPreference(group.preferredTaskExecutor) {
                try await withThrowingTaskGroup(of: String.self) { tasks in
                    for _ in 0..<8 {
                        tasks.addTask {
                            try await group.fdatasync(fd)
                            return currentThreadName()
                        }
                    }
                    for try await name in tasks { #expect(name == completionThreadName(kind)) }
                }
            }
            await group.shutdown()
            #expect(ScriptedBackend().preferredTaskExecutor == nil, "a backend without an executor says nil")
        }

        @Test("ActorExecutor: an actor runs on the backend's serial executor when there is one",
              arguments: BackendKind.aio)
        func actorOnBackendExecutor(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("actor")
            defer { try? fd.close() }
            let backend = try makeBackend(kind)
            let store = ExecutorPreferringStore(backend: backend)
            #expect(store.executor.isBackendExecutor)
            try await withThrowingTaskGroup(of: String.self) { tasks in
                for _ in 0..<16 { tasks.addTask { try await store.append(fd) } }
                for try await thread in tasks { #expect(thread == completionThreadName(kind)) }
            }
            #expect(await store.appended == 16)
            await backend.shutdown()
        }

        @Test("ActorExecutor: with a backend without a serial executor, the actor has one of its own and stays serial")
        func actorOnOwnExecutor() async throws {
            let backend = ExecutorlessBackend()
            let store = ExecutorPreferringStore(backend: backend)
            #expect(!store.executor.isBackendExecutor)
            try await withThrowingTaskGroup(of: String.self) { tasks in
                for _ in 0..<64 { tasks.addTask { try await store.append(FileDescriptor(rawValue: 0)) } }
                for try await thread in tasks { #expect(!thread.hasPrefix("asyncfsync-")) }
            }
            #expect(await store.appended == 64)
            #expect(backend.synced.load(ordering: .relaxed) == 64)
        }

        @Test("many tasks on the executor and off it: every sync completes exactly once",
              arguments: BackendKind.aio)
        func manyTasks(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onDisk()
            let files = try (0..<4).map { try directory.file("f\($0)") }
            defer { for fd in files { try? fd.close() } }
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, capacity: 8, system: recorder.system)
            let executor = taskExecutor(of: backend)
            let done = Locked(0)
            let rounds = testsupport_tsan_loaded() != 0 ? 5 : 25
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<32 {
                    let fd = files[index % files.count]
                    let done = done
                    let preference: (any TaskExecutor)? = index.isMultiple(of: 2) ? executor : nil
                    group.addTask(executorPreference: preference) {
                        for _ in 0..<rounds {
                            try await backend.fsync(fd)
                            done.withLock { $0 += 1 }
                        }
                    }
                }
                try await group.waitForAll()
            }
            #expect(done.withLock { $0 } == 32 * rounds)
            // Requests of one descriptor share syncs (8 tasks per file).
            #expect(recorder.submitted >= rounds && recorder.submitted <= 32 * rounds)
            #expect(outstanding(backend) == 0)
            await backend.shutdown()
        }

        @Test("a task started elsewhere on the executor wakes the idle completion thread",
              arguments: BackendKind.aio)
        func startedFromOutside(kind: BackendKind) async throws {
            let backend = try makeBackend(kind)
            let executor = taskExecutor(of: backend)
            for _ in 0..<5 {
                try await Task.sleep(for: .milliseconds(5))  // let the completion thread park
                let name = await Task(executorPreference: executor) { currentThreadName() }.value
                #expect(name == completionThreadName(kind))
            }
            await backend.shutdown()
        }

        @Test("after shutdown, tasks preferring the executor run on the global executor and get shutDown",
              arguments: BackendKind.aio)
        func afterShutdown(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data")
            defer { try? fd.close() }
            let backend = try makeBackend(kind, system: liveWithOwnThread())
            let executor = taskExecutor(of: backend)
            await backend.shutdown()
            let (name, error) = await Task(executorPreference: executor) {
                let error = await caughtError { try await backend.fsync(fd) } as? AsyncSyncError
                return (currentThreadName(), error)
            }.value
            #expect(name != completionThreadName(kind))
            #expect(error?.code == .shutDown)
        }

        @Test("a task that keeps running on the executor does not hold up shutdown; it goes on elsewhere",
              arguments: BackendKind.aio)
        func busyTaskDuringShutdown(kind: BackendKind) async throws {
            let backend = try makeBackend(kind, system: liveWithOwnThread())
            let stop = Locked(false)
            let spinner = Task(executorPreference: taskExecutor(of: backend)) {
                var onCompletionThread = 0
                var elsewhere = 0
                while !stop.withLock({ $0 }) {
                    await Task.yield()
                    if currentThreadName() == completionThreadName(kind) { onCompletionThread += 1 } else { elsewhere += 1 }
                }
                return (onCompletionThread, elsewhere)
            }
            try await Task.sleep(for: .milliseconds(20))
            await backend.shutdown()  // returns although the spinner never stops yielding there
            try await Task.sleep(for: .milliseconds(20))
            stop.withLock { $0 = true }
            let (onCompletionThread, elsewhere) = await spinner.value
            #expect(onCompletionThread > 0)
            #expect(elsewhere > 0, "after shutdown the task ran on the global executor")
        }

        @Test("a task on the executor can shut the backend down (its own thread) without a deadlock",
              arguments: BackendKind.aio)
        func shutdownFromTheExecutor(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data")
            defer { try? fd.close() }
            let threadsBefore = Resources.threadCount()
            let backend = try makeBackend(kind, system: liveWithOwnThread())
            try await withTaskExecutorPreference(taskExecutor(of: backend)) {
                try await backend.fsync(fd)
                await backend.shutdown()
                #expect(currentThreadName() != completionThreadName(kind))
            }
            #expect(!isAcceptingRequests(backend))
            #expect(await Resources.settle(Resources.threadCount, atMost: threadsBefore) <= threadsBefore)
        }
    }
}
#endif  // os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
