#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
import Foundation
import SystemPackage
import Testing

@testable import AsyncFsync

import Glibc

extension AsyncFsyncTests {
    /// Review of eb3be56 (a held sync without a cancellation handler keeps its task).
    @Suite struct ReviewHeld {
        init() { GlibcAIOUnderSanitizer.configure }

        /// The part of eb3be56 that `ReviewLook` does not reach: the task handed on to the sync
        /// machine when the held sync is released (`AIOEngine.handOver`, `task: task`). Released
        /// while its descriptor's sync runs, the request waits for the next batch, without a
        /// handler: only that task tells the machine of a cancellation that comes now.
        @Test("a handlerless sync released from WriteState into a waiting batch can still be cancelled there")
        func releasedHeldSyncIsCancelledWhileWaiting() async throws {
            let door = Door()
            let gate = ReviewLook.StatfsGate()
            var system = door.system
            let live = system.fileSystemType
            system.fileSystemType = { fd in
                gate.pass()
                return live(fd)
            }
            let backend = try LibaioBackend(capacity: 8, inlineMemoryFileSystems: true, system: system)
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            gate.arm()
            // s looks: no writes, the engine idle (handed over at once: no cancellation handler).
            let sync = Task { try await backend.fdatasync(fd) }
            #expect(await eventually(30) { gate.entered }, "s looked and is in fstatfs(2)")
            // Another sync of the descriptor, held by the kernel's door: the descriptor is busy.
            door.holdSyncs(1)
            let running = Task { try await backend.fdatasync(fd) }
            #expect(await eventually(30) { door.heldSyncCount == 1 }, "the other sync is in the system")
            // A write accepted before s reaches the engine: s is held for it, its task kept.
            let write = Task { try await backend.write(fd, [UInt8](repeating: 1, count: 4096), at: 0) }
            #expect(await eventually(30) { door.heldWriteCount == 1 }, "the write reached the kernel's door")
            gate.open()
            #expect(await eventually(30) { writeCounts(backend).heldSyncs == 1 }, "s is held for the write")
            // The write completes: s, not cancelled yet, goes on to the sync machine and waits
            // there for the descriptor's next batch (the other sync still runs).
            door.releaseWrites()
            try await write.value
            #expect(writeCounts(backend) == (0, 0))
            #expect(backend.engine.waitingCount == 1, "s waits in the sync machine: \(backend.engine.stateSummary)")
            sync.cancel()
            door.releaseSyncs()
            try await running.value
            #expect(await caughtError { try await sync.value } is CancellationError,
                    "s's cancellation while it waited in the sync machine is not lost: \(door.log)")
            #expect(door.log.filter { $0 == "submit fdsync" }.count == 1,
                    "only the other sync reached the system (s never did): \(door.log)")
            await backend.shutdown()
        }

        /// `EngineState.arrive(admitted: true)` with the kept task during a drain: a held sync
        /// accepted before the shutdown is not refused by it; cancelled meanwhile, it ends with
        /// `CancellationError` (as one with a handler would, by `cancelHeld`), and the drain ends.
        @Test("a handlerless sync held when a shutdown begins: served if not cancelled, CancellationError if cancelled; the shutdown ends", arguments: [false, true])
        func heldSyncDuringShutdown(cancelled: Bool) async throws {
            let door = Door()
            let gate = ReviewLook.StatfsGate()
            var system = door.system
            let live = system.fileSystemType
            system.fileSystemType = { fd in
                gate.pass()
                return live(fd)
            }
            let backend = try LibaioBackend(capacity: 8, inlineMemoryFileSystems: true, system: system)
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            gate.arm()
            let sync = Task { try await backend.fdatasync(fd) }
            #expect(await eventually(30) { gate.entered }, "s looked and is in fstatfs(2)")
            let write = Task { try await backend.write(fd, [UInt8](repeating: 1, count: 4096), at: 0) }
            #expect(await eventually(30) { door.heldWriteCount == 1 }, "the write reached the kernel's door")
            gate.open()
            #expect(await eventually(30) { writeCounts(backend).heldSyncs == 1 }, "s is held for the write")
            let shutdown = Task { await backend.shutdown() }
            #expect(await eventually(30) { !backend.engine.isAcceptingRequests }, "the shutdown began")
            if cancelled { sync.cancel() }
            door.releaseWrites()
            try await write.value
            let error = await caughtError { try await sync.value }
            if cancelled {
                #expect(error is CancellationError, "\(String(describing: error)): \(door.log)")
                #expect(!door.log.contains { $0.hasSuffix("fdsync") }, "s never reached the system: \(door.log)")
            } else {
                #expect(error == nil, "accepted before the shutdown, s is served: \(String(describing: error))")
            }
            await shutdown.value
            #expect(writeCounts(backend) == (0, 0))
        }

        /// Outside eb3be56, found on the way (present since the engine's writes): the sync part of
        /// a durable write on a file system served by the POSIX fallback goes to POSIX aio directly
        /// (`LibaioBackend.durableWriteUnobserved`, `fallback.serves(fd)`), past the engine's write
        /// rule, while the inline path's sync part goes through `AIOEngine.syncAfterWrite` and a
        /// plain sync through the engine (Review17 FINDING 4). So it returns while a kernel AIO
        /// write of its descriptor accepted before it is still in flight (docs/design.md: "no sync
        /// (nor durable write's sync part) starts while a write of its descriptor accepted before
        /// it is incomplete"; `syncAfterWrite`: it "covers the descriptor's other writes accepted
        /// before it").
        @Test("a durable write through the POSIX fallback: its sync part covers the kernel AIO writes of its descriptor accepted before it")
        func fallbackDurableWriteCoversEarlierWrites() async throws {
            let door = Door()
            var system = door.system
            let doorSubmit = system.ioSubmit
            // The durable write's own write (at 4096) passes the door; the earlier one (at 0) is held.
            system.ioSubmit = { context, count, iocbs in
                if count == 1, let control = iocbs[0], control.pointee.aio_lio_opcode == 1, control.pointee.aio_offset == 4096 {
                    return submitOne(context, control, at: 0) ?? .success(1)
                }
                return doorSubmit(context, count, iocbs)
            }
            let backend = try LibaioBackend(capacity: 4, inlineMemoryFileSystems: false, system: system)
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            door.refuseSyncs(of: fd)  // this file system has no AIO fsync
            try await backend.fdatasync(fd)
            try #require(!backend.posixFileSystems.isEmpty, "the file system is served by POSIX aio now")
            let page = [UInt8](repeating: 0x11, count: 4096)
            let write = Watched { try await backend.write(fd, page, at: 0) }
            try #require(await eventually(30) { door.heldWriteCount == 1 }, "the earlier write is in flight")
            let durable = Watched { try await backend.durableWrite(fd, page, at: 4096) }
            #expect(await eventually(30) { durable.isDone || writeCounts(backend).heldSyncs == 1 })
            #expect(!durable.isDone,
                    "the durable write returned (\(String(describing: durable.outcome))) while a write accepted before it was in flight: \(door.log)")
            door.releaseWrites()
            #expect(await eventually(30) { durable.isDone && write.isDone })
            #expect(write.succeeded)
            await backend.shutdown()
        }

        /// A task executor whose jobs wait while it is shut (each job runs on a thread of its own).
        final class GatedExecutor: TaskExecutor, @unchecked Sendable {
            private let lock = NSLock()
            private var shut = false
            private var waiting: [UnownedJob] = []

            func enqueue(_ job: consuming ExecutorJob) {
                let job = UnownedJob(job)
                lock.lock()
                if shut {
                    waiting.append(job)
                    lock.unlock()
                    return
                }
                lock.unlock()
                run(job)
            }

            private func run(_ job: UnownedJob) {
                let executor = Unchecked(self)
                let job = Unchecked(job)
                Thread { job.value.runSynchronously(on: executor.value.asUnownedTaskExecutor()) }.start()
            }

            func close() { lock.withLock { shut = true } }
            var hasWaiting: Bool { lock.withLock { !waiting.isEmpty } }
            func open() {
                let jobs = lock.withLock { () -> [UnownedJob] in
                    shut = false
                    defer { waiting = [] }
                    return waiting
                }
                for job in jobs { run(job) }
            }
        }

        /// Outside eb3be56, found on the way: Review17 FINDING 6 on the POSIX-fallback path (its
        /// test covers the inline path only). A durable write accepted before `shutdown()` whose
        /// task went on after the shutdown closed the fallback got `shutDown` for its sync part
        /// (`PosixFallback.sync(refused: nil)`: "guard refused != nil else throw shutDown"), after
        /// its data was written. The durable write's task is held on an executor of the test's
        /// between its write's answer and its sync part: the interleaving a loaded machine can
        /// give.
        @Test("FINDING 6 on the POSIX fallback: a durable write accepted before shutdown() has its sync part served")
        func fallbackDurableWriteAcceptedBeforeShutdown() async throws {
            let door = Door()
            let backend = try LibaioBackend(capacity: 4, inlineMemoryFileSystems: false, system: door.system)
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            door.refuseSyncs(of: fd)  // this file system has no AIO fsync
            try await backend.fdatasync(fd)
            try #require(!backend.posixFileSystems.isEmpty, "the file system is served by POSIX aio now")
            let executor = GatedExecutor()
            let page = [UInt8](repeating: 0x11, count: 4096)
            let durable = Watched { try await withTaskExecutorPreference(executor) { try await backend.durableWrite(fd, page, at: 0) } }
            try #require(await eventually(30) { door.heldWriteCount == 1 }, "the durable write's write is in flight")
            executor.close()
            let shutdown = Watched { await backend.shutdown() }
            try #require(await eventually(30) { !isAcceptingRequests(backend) })
            door.releaseWrites()
            #expect(await eventually(30) { executor.hasWaiting }, "the durable write's task was resumed after its write")
            // Fixed: the write holds the engine's drain until its sync part has its answer, so the
            // shutdown cannot end (nor close the fallback) while the task waits (deterministic).
            try await Task.sleep(for: .milliseconds(50))
            #expect(!shutdown.isDone, "the shutdown ended before the durable write's sync part had its answer")
            executor.open()
            #expect(await eventually(30) { durable.isDone && shutdown.isDone })
            #expect(durable.succeeded, "accepted before the shutdown, written, then refused: \(String(describing: durable.error))")
        }
    }
}
#endif
