import CTestSupport
import Foundation
import SystemPackage
import Testing

@testable import AsyncFsync

/// A backend whose syncs wait until the test releases them, and can fail chosen calls.
final class ScriptedBackend: AsyncSyncBackend {
    struct State {
        var modes: [SyncMode] = []
        var released = 0
        var holding = false
        var waiting: [(index: Int, continuation: CheckedContinuation<Void, Never>)] = []
        var failures: [Int: Errno] = [:]
        var shutDown = false
    }
    let state = Locked(State())
    var kind: BackendKind { .libaio }

    var calls: Int { state.withLock { $0.modes.count } }
    var modes: [SyncMode] { state.withLock { $0.modes } }

    func hold() { state.withLock { $0.holding = true } }

    /// Lets call number `index` (0-based) finish.
    func release(upTo count: Int) {
        let ready = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.released = max(state.released, count)
            let ready = state.waiting.filter { $0.index < state.released }.map(\.continuation)
            state.waiting.removeAll { $0.index < state.released }
            return ready
        }
        for continuation in ready { continuation.resume() }
    }

    func fail(call index: Int, with errno: Errno) { state.withLock { $0.failures[index] = errno } }

    func sync(_ fd: FileDescriptor, mode: SyncMode) async throws {
        let index = state.withLock { state -> Int in
            state.modes.append(mode)
            return state.modes.count - 1
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let wait = state.withLock { state -> Bool in
                guard state.holding, index >= state.released else { return false }
                state.waiting.append((index, continuation))
                return true
            }
            if !wait { continuation.resume() }
        }
        if let errno = state.withLock({ $0.failures[index] }) {
            throw AsyncSyncError.sync(mode, errno: errno, step: .completion, backend: .libaio, descriptor: fd, systemCall: "test")
        }
    }

    func shutdown() async { state.withLock { $0.shutDown = true } }
}

/// Wraps a backend and stamps when each sync starts and ends on a shared sequence.
final class StampingBackend: AsyncSyncBackend {
    let wrapped: any AsyncSyncBackend
    let sequence: Locked<Int>
    let syncs = Locked<[(start: Int, end: Int)]>([])
    var kind: BackendKind { wrapped.kind }

    init(_ wrapped: any AsyncSyncBackend, sequence: Locked<Int>) {
        self.wrapped = wrapped
        self.sequence = sequence
    }

    func tick() -> Int { sequence.withLock { $0 += 1; return $0 } }

    func sync(_ fd: FileDescriptor, mode: SyncMode) async throws {
        let start = tick()
        try await wrapped.sync(fd, mode: mode)
        let end = tick()
        syncs.withLock { $0.append((start, end)) }
    }

    func shutdown() async { await wrapped.shutdown() }
}

/// A file "wal" in a scratch directory on disk, a scripted backend (holding its syncs unless told
/// otherwise) and a GroupCommit over it: the setup of most group-commit tests.
struct ScriptedGroup {
    let directory: ScratchDirectory
    let fd: FileDescriptor
    let scripted = ScriptedBackend()
    let group: GroupCommit

    init(holding: Bool = true, delay: Duration = .zero) throws {
        directory = try ScratchDirectory.onDisk()
        fd = try directory.file("wal")
        if holding { scripted.hold() }
        group = GroupCommit(wrapping: scripted, delay: delay)
    }
}

struct WaitTimedOut: Error, CustomStringConvertible {
    var timeout: Duration
    var description: String { "the condition did not hold within \(timeout)" }
}

/// Waits until `condition` holds; throws ``WaitTimedOut`` after `timeout`, so that a test of a
/// hang fails instead of hanging.
func waitUntil(timeout: Duration = .seconds(60), _ condition: () -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        guard ContinuousClock.now < deadline else { throw WaitTimedOut(timeout: timeout) }
        try await Task.sleep(for: .milliseconds(1))
    }
}

extension AsyncFsyncTests {
    @Suite struct GroupCommitSuite {
        init() { GlibcAIOUnderSanitizer.configure }

        @Test("a request that arrives during a sync waits for the next sync, which starts after the first ends")
        func neverAnEarlierSync() async throws {
            let setup = try ScriptedGroup()
            defer { try? setup.fd.close() }
            let (fd, scripted, group) = (setup.fd, setup.scripted, setup.group)

            let first = Task { try await group.fdatasync(fd) }
            try await waitUntil { scripted.calls == 1 }
            let secondDone = Locked(false)
            let second = Task {
                try await group.fdatasync(fd)
                secondDone.withLock { $0 = true }
            }
            try await waitUntil { group.queuedCount == 1 }
            scripted.release(upTo: 1)  // the first sync ends
            try await first.value
            try await waitUntil { scripted.calls == 2 }  // a second sync reaches the backend…
            #expect(!secondDone.withLock { $0 }, "…and the second request waits for it")
            scripted.release(upTo: 2)
            try await second.value
            #expect(scripted.calls == 2)
            await group.shutdown()
        }

        @Test("N concurrent requests of one file need far fewer syncs than N")
        func coalesces() async throws {
            let setup = try ScriptedGroup()
            defer { try? setup.fd.close() }
            let (fd, scripted, group) = (setup.fd, setup.scripted, setup.group)
            let tasks = (0..<100).map { _ in Task { try await group.fdatasync(fd) } }
            try await waitUntil { scripted.calls == 1 && group.queuedCount == 99 }
            scripted.release(upTo: 2)
            for task in tasks { try await task.value }
            #expect(scripted.calls == 2, "one sync for the first request, one for the 99 that came during it")
            await group.shutdown()
        }

        @Test("on tmpfs nothing is shared: fsync does nothing there, so every request gets its own")
        func memoryFileSystemPassesThrough() async throws {
            let directory = try ScratchDirectory.onTmpfs()
            guard TestEnvironment.require(directory.fileSystemMagic == FileSystemMagic.tmpfs, "/dev/shm is not tmpfs") else { return }
            let fd = try directory.file("wal")
            defer { try? fd.close() }
            let scripted = ScriptedBackend()
            scripted.hold()
            let group = GroupCommit(wrapping: scripted)
            let tasks = (0..<16).map { _ in Task { try await group.fdatasync(fd) } }
            // All 16 reach the wrapped backend at once; none waits for another's sync.
            try await waitUntil { scripted.calls == 16 }
            #expect(group.queuedCount == 0 && group.isIdle)
            scripted.release(upTo: 16)
            for task in tasks { try await task.value }
            await group.shutdown()
            let late = await caughtError { try await group.fdatasync(fd) } as? AsyncSyncError
            #expect(late?.code == .shutDown)
        }

        @Test("a batch's error reaches every request of the batch, each with its own descriptor")
        func errorReachesEveryWaiter() async throws {
            let directory = try ScratchDirectory.onDisk()
            let first = try directory.file("wal")
            let others = try (0..<3).map { _ in try FileDescriptor.open(directory.path.appending("wal"), .readWrite) }
            defer { for fd in [first] + others { try? fd.close() } }
            let scripted = ScriptedBackend()
            scripted.hold()
            scripted.fail(call: 1, with: .ioError)
            let group = GroupCommit(wrapping: scripted)
            let leader = Task { try await group.fsync(first) }
            try await waitUntil { scripted.calls == 1 }
            let followers = others.map { fd in Task { await caughtError { try await group.fdatasync(fd) } } }
            try await waitUntil { group.queuedCount == 3 }
            scripted.release(upTo: 2)
            try await leader.value
            for (fd, task) in zip(others, followers) {
                let failure = try #require(await task.value as? AsyncSyncError)
                #expect(failure.errno == .ioError)
                #expect(failure.descriptor == fd)
            }
            #expect(scripted.calls == 2)
            await group.shutdown()
        }

        @Test("a batch uses fsync if any of its requests asked for fsync, else fdatasync")
        func batchMode() async throws {
            let setup = try ScriptedGroup()
            defer { try? setup.fd.close() }
            let (fd, scripted, group) = (setup.fd, setup.scripted, setup.group)
            let leader = Task { try await group.fdatasync(fd) }
            try await waitUntil { scripted.calls == 1 }
            let mixed = [Task { try await group.fdatasync(fd) }, Task { try await group.fsync(fd) }]
            try await waitUntil { group.queuedCount == 2 }
            scripted.release(upTo: 1)
            try await waitUntil { scripted.calls == 2 }
            let dataOnly = [Task { try await group.fdatasync(fd) }, Task { try await group.fdatasync(fd) }]
            try await waitUntil { group.queuedCount == 2 }
            scripted.release(upTo: 3)
            try await leader.value
            for task in mixed + dataOnly { try await task.value }
            #expect(scripted.modes == [.fdatasync, .fsync, .fdatasync])
            await group.shutdown()
        }

        @Test("a request cancelled while waiting for the next batch throws CancellationError and causes no sync")
        func cancelWhileWaiting() async throws {
            let setup = try ScriptedGroup()
            defer { try? setup.fd.close() }
            let (fd, scripted, group) = (setup.fd, setup.scripted, setup.group)
            let leader = Task { try await group.fsync(fd) }
            try await waitUntil { scripted.calls == 1 }
            let follower = Task { try await group.fsync(fd) }
            try await waitUntil { group.queuedCount == 1 }
            follower.cancel()
            await #expect(throws: CancellationError.self) { try await follower.value }
            scripted.release(upTo: 1)
            try await leader.value
            #expect(scripted.calls == 1)
            await group.shutdown()
        }

        @Test("with a delay window, requests arriving before the leader's sync starts join its batch")
        func delayWindow() async throws {
            let setup = try ScriptedGroup(holding: false, delay: .milliseconds(300))
            defer { try? setup.fd.close() }
            let (fd, scripted, group) = (setup.fd, setup.scripted, setup.group)
            let leader = Task { try await group.fdatasync(fd) }
            try await waitUntil { group.queuedCount == 0 && !(group.isIdle) }
            let joined = (0..<10).map { index in Task { try await group.sync(fd, mode: index == 3 ? .fsync : .fdatasync) } }
            try await leader.value
            for task in joined { try await task.value }
            // All eleven were acknowledged by one sync that started after they all arrived
            // (they were queued before the 300 ms window ended; the window is an upper bound
            // here only if the machine scheduled the ten tasks within it, so allow a second sync).
            #expect(scripted.calls <= 2)
            #expect(scripted.modes.contains(.fsync))
            await group.shutdown()
        }

        @Test("shutdown refuses new requests and shuts the wrapped backend down")
        func shutdown() async throws {
            let setup = try ScriptedGroup(holding: false)
            defer { try? setup.fd.close() }
            let (fd, scripted, group) = (setup.fd, setup.scripted, setup.group)
            try await group.fsync(fd)
            await group.shutdown()
            #expect(scripted.state.withLock { $0.shutDown })
            let refused = await caughtError { try await group.fsync(fd) } as? AsyncSyncError
            #expect(refused?.code == .shutDown)
            await group.shutdown()
        }

        @Test("shutdown during a running batch waits for it, refuses new requests, then shuts the wrapped backend down")
        func shutdownWhileRunning() async throws {
            let setup = try ScriptedGroup()
            defer { try? setup.fd.close() }
            let (fd, scripted, group) = (setup.fd, setup.scripted, setup.group)
            let leader = Task { try await group.fsync(fd) }
            try await waitUntil { scripted.calls == 1 }
            let follower = Task { try await group.fsync(fd) }
            try await waitUntil { group.queuedCount == 1 }
            let shutdown = Task { await group.shutdown() }
            try await waitUntil { group.isShuttingDown }
            let refused = await caughtError { try await group.fdatasync(fd) } as? AsyncSyncError
            #expect(refused?.code == .shutDown)
            #expect(!scripted.state.withLock { $0.shutDown }, "batches still run")
            scripted.release(upTo: 2)
            try await leader.value
            try await follower.value  // accepted before the shutdown: its batch still ran
            await shutdown.value
            #expect(scripted.calls == 2)
            #expect(scripted.state.withLock { $0.shutDown })
            await group.shutdown()
        }

        @Test("on the fault file system: 32 concurrent syncs held 200 ms reach it as two syncs, the second a fresh one",
              arguments: BackendKind.tested)
        func faultFileSystemCounters(kind: BackendKind) async throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3") else { return }
            let fs = try FaultFS()
            let fd = try fs.open("wal")
            defer { try? fd.close() }
            let group = GroupCommit(wrapping: try makeBackend(kind))
            try fs.control("reset")
            try fs.control("delay_ms=200")
            let first = Task { try await group.fdatasync(fd) }
            try await waitUntil { (try? fs.counter("fdatasync")) == 1 }
            let rest = (0..<31).map { index in Task { try await group.sync(fd, mode: index == 7 ? .fsync : .fdatasync) } }
            try await waitUntil { group.queuedCount == 31 }
            try await first.value
            for task in rest { try await task.value }
            #expect(try fs.counter("fdatasync") == 1, "the first request's own sync")
            #expect(try fs.counter("fsync") == 1, "one fresh sync for the 31 others, fsync because one asked for it")
            // An error from the file system reaches every request of the batch.
            try fs.control("errno=EIO count=2")
            let leader = Task { await caughtError { try await group.fdatasync(fd) } }
            try await waitUntil { (try? fs.counter("fdatasync")) == 2 }
            let followers = (0..<8).map { _ in Task { await caughtError { try await group.fdatasync(fd) } } }
            try await waitUntil { group.queuedCount == 8 }
            #expect((await leader.value as? AsyncSyncError)?.errno == .ioError)
            for task in followers {
                let failure = await task.value as? AsyncSyncError
                // The batch after the failed one: refused by the sticky rule, or failed by the fs.
                #expect(failure?.errno == .ioError, "\(String(describing: failure))")
            }
            await group.shutdown()
        }

        @Test("stress: 64 writers on one file; every acknowledged write was followed by a sync that started after it",
              arguments: BackendKind.tested)
        func stress(kind: BackendKind) async throws {
            for onDisk in [false, true] {
                let directory = onDisk ? try ScratchDirectory.onDisk() : try ScratchDirectory.onTmpfs()
                let fd = try directory.file("wal")
                defer { try? fd.close() }
                let sequence = Locked(0)
                let stamping = StampingBackend(try makeBackend(kind), sequence: sequence)
                let group = GroupCommit(wrapping: stamping)
                // ThreadSanitizer slows everything ~10× and the tests give glibc one helper there.
                let records = testsupport_tsan_loaded() != 0 ? 20 : (onDisk ? 300 : 1_000)
                let acknowledged = try await withThrowingTaskGroup(of: [(write: Int, ack: Int)].self) { tasks in
                    for writer in 0..<64 {
                        tasks.addTask {
                            var log: [(write: Int, ack: Int)] = []
                            for record in 0..<records {
                                let written = stamping.tick()
                                _ = try fd.writeAll(toAbsoluteOffset: Int64((writer * records + record) * 16),
                                                    Array("w\(writer)r\(record)".utf8.prefix(16)))
                                try await group.fdatasync(fd)
                                log.append((written, stamping.tick()))
                            }
                            return log
                        }
                    }
                    return try await tasks.reduce(into: []) { $0 += $1 }
                }
                await group.shutdown()
                let syncs = stamping.syncs.withLock { $0 }.sorted { $0.end < $1.end }
                #expect(acknowledged.count == 64 * records)
                // For each ack, some sync that ended before the ack must have started after the
                // write: the latest start among the syncs ended by then (a prefix maximum over the
                // syncs in order of their end) must be later than the write.
                var latestStart: [Int] = []
                for sync in syncs { latestStart.append(max(latestStart.last ?? 0, sync.start)) }
                var violations = 0
                for entry in acknowledged {
                    var low = 0, high = syncs.count  // syncs[..<low] ended before the ack
                    while low < high {
                        let middle = (low + high) / 2
                        if syncs[middle].end < entry.ack { low = middle + 1 } else { high = middle }
                    }
                    if low == 0 || latestStart[low - 1] <= entry.write { violations += 1 }
                }
                #expect(violations == 0)
                if onDisk {
                    #expect(syncs.count < acknowledged.count, "syncs were shared (\(syncs.count) for \(acknowledged.count))")
                } else {
                    // tmpfs: fsync does nothing there, so GroupCommit passes every request through.
                    #expect(syncs.count == acknowledged.count)
                }
            }
        }
    }
}
