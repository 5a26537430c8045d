import Foundation
import Synchronization
import SystemPackage
import Testing

@testable import AsyncFsync

#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
import CAsyncFsync
import Glibc
#endif

extension AsyncFsyncTests {
    /// An adversarial review of review-group's finding 2 (ade6ab7): the sync part of a durable write
    /// whose write was handed to the system is never abandoned for a cancellation
    /// (`cancellable: false` on the engine and the POSIX fallback, `InlineSync` with an arrival).
    /// Each FINDING test failed on ade6ab7; "checked:" tests pin a rule that had no test.
    @Suite struct ReviewNoCancel {
        init() { GlibcAIOUnderSanitizer.configure }

        func waiter(_ id: UInt64, fd: CInt, _ continuation: UnsafeContinuation<Void, any Error>, identity: Bool = false) -> Waiter {
            Waiter(id: id, descriptor: FileDescriptor(rawValue: fd), mode: .fdatasync, continuation: continuation,
                   arrival: 0, identity: identity ? FileIdentity(device: 1, inode: UInt64(fd)) : nil, identityTaken: identity)
        }

        func write(_ id: UInt64, fd: CInt, _ continuation: UnsafeContinuation<Void, any Error>) -> WriteRequest {
            WriteRequest(id: id, descriptor: FileDescriptor(rawValue: fd), buffer: UnsafeRawPointer(bitPattern: 0x1000)!,
                         count: 2, offset: 0, kind: .thenSync, continuation: continuation, arrival: 0)
        }

        // FINDING 1: `WriteState.cancel` removed a write found in the ready queue, read as "it
        // still waits for a slot, nothing of it was written". But a write comes back to the ready
        // queue after the system had it: the rest of a short write, or a write interrupted with
        // EINTR, is submitted again, and an EAGAIN for that resubmission (other writes in flight)
        // puts it back first in line. A cancellation then ended it with `CancellationError`,
        // which the API documents as "nothing was written", while part of its bytes were in the
        // file (for a durable write: bytes written, no sync, and a caller told they were not).
        @Test("FINDING 1 (state machine): the rest of a short write, back in the ready queue after an EAGAIN, is not cancelled")
        func shortWriteBackInLineIsNotCancelled() async throws {
            let parked = Parked()
            let c = try await parked.make(2)
            var state = WriteState(slotCount: 2)
            _ = state.arrive(write(1, fd: 5, c[0]), onCompletionThread: false)
            _ = state.arrive(write(2, fd: 6, c[1]), onCompletionThread: false)
            var prepared: [WriteState.Prepared] = []
            #expect(state.takeWrites(into: &prepared) && prepared.count == 2)
            prepared.map(\.slot).withUnsafeBufferPointer { state.submitted($0) }
            var done: [WriteRequest] = []
            var released: [Waiter] = []
            let first = prepared[0].slot
            guard case .retry = state.completed(slot: first, result: .success(1), done: &done, released: &released) else {
                Issue.record("a short write is continued")
                return
            }
            var failed: [WriteRequest] = []
            [first].withUnsafeBufferPointer { state.exhausted($0, into: &failed, released: &released) }
            #expect(failed.isEmpty && state.waitingWriteCount == 1, "the rest waits again, the other write is in flight")
            let cancelled = state.cancel(id: 1, descriptor: 5, released: &released)
            #expect(cancelled == nil, "a write with 1 of its 2 bytes in the file was cancelled (CancellationError: nothing written)")
            // Nor after EINTR (the system had it; it may have written part of it).
            let second = prepared[1].slot
            guard case .retry = state.completed(slot: second, result: .failure(.interrupted), done: &done, released: &released) else {
                Issue.record("an interrupted write is submitted again")
                return
            }
            [second].withUnsafeBufferPointer { state.exhausted($0, into: &failed, released: &released, othersElsewhere: true) }
            #expect(state.cancel(id: 2, descriptor: 6, released: &released) == nil,
                    "an interrupted write, back in line after EAGAIN, was cancelled")
            // One that never reached the system still is.
            let parkedLate = try await parked.make(1)
            _ = state.arrive(write(3, fd: 7, parkedLate[0]), onCompletionThread: false)
            #expect(state.cancel(id: 3, descriptor: 7, released: &released)?.id == 3, "a write waiting for its first slot is cancelled")
            await parked.finish()
        }

        @Test("checked (state machine): a durable write's sync part (no handler, not cancellable) in a batch with handlerless requests whose task is cancelled: they are dropped, it is submitted, also after an EAGAIN")
        func nonCancellableWaiterSurvivesCancelledBatchMembers() async throws {
            let parked = Parked()
            let c = try await parked.make(3)
            final class Box: @unchecked Sendable { var state = EngineState(slotCount: 4) }
            let box = Box()
            _ = box.state.arrive(waiter(1, fd: 7, c[0]), isCancelled: false, onCompletionThread: false)
            var prepared: [EngineState.Prepared] = []
            _ = box.state.takeBatches(into: &prepared)
            // In one cancelled task (as AIOEngine.arrive passes it): the sync part of a durable
            // write (checksCancellation false, isCancelled false) and a sync that waits without a
            // handler (checksCancellation true), both in fd 7's next batch.
            var syncPart = waiter(2, fd: 7, c[1], identity: true)
            syncPart.checksCancellation = false
            var plain = waiter(3, fd: 7, c[2], identity: true)
            plain.checksCancellation = true
            final class Pair: @unchecked Sendable { let a: Waiter; let b: Waiter; init(_ a: Waiter, _ b: Waiter) { self.a = a; self.b = b } }
            let pair = Pair(syncPart, plain)
            let release = Locked<CheckedContinuation<Void, Never>?>(nil)
            let task = Task {
                withUnsafeCurrentTask { $0?.cancel() }
                withUnsafeCurrentTask { task in
                    _ = box.state.arrive(pair.a, isCancelled: false, onCompletionThread: false, task: task)
                    _ = box.state.arrive(pair.b, isCancelled: false, onCompletionThread: false, task: task)
                }
                await withCheckedContinuation { continuation in release.withLock { $0 = continuation } }
            }
            try await waitUntil { release.withLock { $0 != nil } }
            defer { release.withLock { $0 }?.resume(); _ = task }
            var done: [Waiter] = []
            _ = box.state.completed(slot: prepared[0].slot, result: .success(()), into: &done)
            prepared.removeAll()
            var cancelled: [Waiter] = []
            _ = box.state.takeBatches(into: &prepared, cancelled: &cancelled)
            #expect(cancelled.map(\.id) == [3], "only the cancellable one is dropped")
            #expect(prepared.count == 1 && box.state.outstanding == 1, "the sync part is submitted")
            // An EAGAIN puts its batch back (another slot in flight: it waits instead of failing),
            // and every ready batch is looked at again when it is taken: the sync part is kept.
            _ = box.state.arrive(waiter(4, fd: 8, c[0], identity: true), isCancelled: false, onCompletionThread: false)
            var more: [EngineState.Prepared] = []
            _ = box.state.takeBatches(into: &more, cancelled: &cancelled)
            #expect(more.count == 1)
            var failed: [Waiter] = []
            _ = prepared.map(\.slot).withUnsafeBufferPointer { box.state.exhausted($0, into: &failed) }
            #expect(failed.isEmpty, "it waits for the other slot")
            _ = box.state.completed(slot: more[0].slot, result: .success(()), into: &done)
            cancelled.removeAll()
            var again: [EngineState.Prepared] = []
            _ = box.state.takeBatches(into: &again, cancelled: &cancelled)
            #expect(again.count == 1, "taken again after the EAGAIN")
            #expect(cancelled.isEmpty, "the sync part of a durable write was dropped for its task's cancellation")
            await parked.finish()
        }

        #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
        @Test("FINDING 1: a durable write that waited for a slot, was written short and met EAGAIN at its resubmission, cancelled then: no CancellationError, its bytes are in the file")
        func cancelledAfterShortWriteAndEAGAIN() async throws {
            let door = Door()
            let target = Locked<CInt>(-1)
            let shortened = Locked(false)
            var system = door.system
            let reap = system.reapCompletions
            // The durable write's first completion reports half its bytes (the kernel wrote them
            // all; the rest is written again, the same bytes), and its resubmission meets EAGAIN.
            system.reapCompletions = { context, events, maximum in
                let result = reap(context, events, maximum)
                guard case .success(let count) = result else { return result }
                for index in 0..<count {
                    let control = UnsafePointer<iocb>(bitPattern: UInt(events[index].obj))!
                    guard control.pointee.aio_lio_opcode == 1, events[index].res > 1,
                          CInt(bitPattern: control.pointee.aio_fildes) == target.withLock({ $0 }),
                          shortened.withLock({ done in defer { done = true }; return !done }) else { continue }
                    events[index].res /= 2
                    door.eagain(opcode: 1)
                }
                return result
            }
            let backend = try LibaioBackend(capacity: 2, system: system)
            let directory = try ScratchDirectory.onDisk()
            let other = try directory.file("other", contents: "")
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close(); try? other.close() }
            target.withLock { $0 = fd.rawValue }
            let filler = OwnedBytes(Array(repeating: UInt8(ascii: "f"), count: 16))
            let record = Array(repeating: UInt8(ascii: "r"), count: 64)
            let bytes = OwnedBytes(record)
            defer { filler.free(); bytes.free() }

            let first = Watched { try await backend.write(other, from: filler.bytes, at: 0) }
            let second = Watched { try await backend.write(other, from: filler.bytes, at: 100) }
            try #require(await eventually(30) { door.heldWriteCount == 2 }, "both write slots are taken")
            let durable = Watched { try await backend.durableWrite(fd, from: bytes.bytes, at: 0) }
            try #require(await eventually(30) { backend.engine.waitingWriteCount == 1 },
                         "the durable write waits for a slot (with a cancellation handler)")
            door.releaseWrites(1)  // the first write ends; the durable write takes its slot
            try #require(await eventually(30) { door.eagainAnswered == 1 && backend.engine.waitingWriteCount == 1 },
                         "the rest of the short write waits again after EAGAIN: \(door.log)")
            durable.task.cancel()
            door.releaseWrites()  // the second write ends: the rest is submitted again
            #expect(await eventually(30) { durable.isDone && first.isDone && second.isDone }, "\(door.log)")
            let contents = [UInt8](try Data(contentsOf: URL(fileURLWithPath: directory.path.appending("data").string)))
            #expect(contents == record, "the write reached the file")
            #expect(!(durable.error is CancellationError),
                    "CancellationError (\"nothing was written\") for a durable write whose bytes are in the file")
            #expect(durable.succeeded, "\(String(describing: durable.error))")
            await backend.shutdown()
        }

        @Test("checked: a cancelled durable write's sync part held for a later write of its descriptor (tmpfs, inline path's detour) survives a shutdown begun meanwhile: it succeeds and shutdown() returns")
        func heldSyncPartSurvivesShutdown() async throws {
            let door = Door()
            let backend = try LibaioBackend(capacity: 4, inlineMemoryFileSystems: true, system: door.system)
            let directory = try ScratchDirectory.onTmpfs()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            let record = OwnedBytes(Array("a record".utf8))
            let other = OwnedBytes(Array("another".utf8))
            defer { record.free(); other.free() }

            let durable = Watched { try await backend.durableWrite(fd, from: record.bytes, at: 0) }
            try #require(await eventually(30) { door.heldWriteCount == 1 })
            let write = Watched { try await backend.write(fd, from: other.bytes, at: 100) }
            try #require(await eventually(30) { door.heldWriteCount == 2 })
            durable.task.cancel()
            door.releaseWrites(1, stopHolding: false)
            try #require(await eventually(30) { backend.engine.writeCounts.heldSyncs == 1 }, "the sync part is held: \(door.log)")
            let stop = Watched { await backend.shutdown() }
            try #require(await eventually(30) { !backend.engine.isAcceptingRequests })
            #expect(!durable.isDone && !stop.isDone, "the drain waits for the held sync part")
            door.releaseWrites()
            #expect(await eventually(30) { durable.isDone && write.isDone && stop.isDone }, "\(door.log)")
            #expect(write.succeeded)
            #expect(durable.succeeded, "\(String(describing: durable.error))")
        }

        @Test("checked: an ordinary sync held for a write of its descriptor is still cancelled (CancellationError, never submitted)")
        func ordinarySyncStillCancellable() async throws {
            let door = Door()
            let backend = try LibaioBackend(capacity: 4, system: door.system)
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            let bytes = OwnedBytes(Array("bytes".utf8))
            defer { bytes.free() }
            let write = Watched { try await backend.write(fd, from: bytes.bytes, at: 0) }
            try #require(await eventually(30) { door.heldWriteCount == 1 })
            let sync = Watched { try await backend.sync(fd, mode: .fdatasync) }
            try #require(await eventually(30) { backend.engine.writeCounts.heldSyncs == 1 })
            sync.task.cancel()
            #expect(await eventually(30) { sync.isDone })
            #expect(sync.error is CancellationError, "\(String(describing: sync.error))")
            door.releaseWrites()
            #expect(await eventually(30) { write.isDone })
            #expect(write.succeeded)
            #expect(!door.log.contains { $0.hasSuffix("fdsync") }, "the cancelled sync was submitted: \(door.log)")
            await backend.shutdown()
        }
        #endif
    }
}
