#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
import CAsyncFsync
import Foundation
import SystemPackage
import Testing

@testable import AsyncFsync

import Glibc

extension AsyncFsyncTests {
    /// Adversarial review of the write half of the engine (issue 17, commits 7fc0c77 and f22312e).
    /// Each test marked `FINDING n` failed on main at f22312e.
    @Suite struct Review17 {
        init() { GlibcAIOUnderSanitizer.configure }

        static let page = [UInt8](repeating: 0x11, count: 4096)

        // FINDING 1: an EAGAIN at io_submit leaves WriteState.blockedOnResources set with no write
        // in flight (the last write slot is vacated by a failure, not by a completion): the write
        // put back waits for a completion that never comes; shutdown() never returns.
        @Test("FINDING 1: two writes meeting EAGAIN at once (a continuation on the hub, a new write elsewhere): neither hangs")
        func eagainWithNothingLeftInFlight() async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            let gate = DispatchSemaphore(value: 0)
            let continuationAtDoor = Flag()
            let newWriteRefused = Flag()
            let shortened = Flag()
            let offsets = Locked<[UInt64: Int64]>([:])  // aio_data (slot) → offset, noted at submission
            var system = SystemCalls.live
            system.ioSubmit = { context, count, iocbs in
                for index in 0..<count {
                    let control = iocbs[index]!
                    if control.pointee.aio_lio_opcode == 1 {
                        let offset = control.pointee.aio_offset
                        offsets.withLock { $0[control.pointee.aio_data] = offset }
                        if offset == 1024, !continuationAtDoor.isRaised {
                            // The rest of the short write, submitted again by the hub's thread:
                            // held here until the other write met its EAGAIN, then EAGAIN too.
                            continuationAtDoor.raise()
                            _ = gate.wait(timeout: .now() + 20)
                            return index == 0 ? .failure(.resourceTemporarilyUnavailable) : .success(index)
                        }
                        if offset == 8192, !newWriteRefused.isRaised {
                            newWriteRefused.raise()
                            return index == 0 ? .failure(.resourceTemporarilyUnavailable) : .success(index)
                        }
                    }
                    if let stop = submitOne(context, control, at: index) { return stop }
                }
                return .success(count)
            }
            system.reapCompletions = { context, events, maximum in
                let result = SystemCalls.live.reapCompletions(context, events, maximum)
                guard case .success(let count) = result else { return result }
                for index in 0..<count where !shortened.isRaised && events[index].res == 4096 {
                    if offsets.withLock({ $0[events[index].data] }) == 0 {
                        shortened.raise()
                        events[index].res = 1024  // a short write: 1024 of 4096
                    }
                }
                return result
            }
            let backend = try LibaioBackend(capacity: 2, system: system)
            let first = Watched { try await backend.write(fd, Self.page, at: 0) }
            try #require(await eventually(30) { continuationAtDoor.isRaised }, "the continuation of the short write reached io_submit")
            let second = Watched { try await backend.write(fd, Self.page, at: 8192) }
            try #require(await eventually(30) { newWriteRefused.isRaised })
            gate.signal()
            let bothEnded = await eventually(30) { first.isDone && second.isDone }
            #expect(bothEnded, """
                a write hangs after EAGAIN with nothing in flight: first \(String(describing: first.outcome)), \
                second \(String(describing: second.outcome)), writes \(writeCounts(backend))
                """)
            guard bothEnded else { return }  // shutdown() would hang too: the write is still in transit
            #expect(writeCounts(backend) == (0, 0))
            #expect(await finishes(within: .seconds(10)) { await backend.shutdown() })
        }

        @Test("FINDING 1 (WriteState alone): after two EAGAINs leave no write in a slot, the write put back can be submitted")
        func writeStateUnblocksWithNothingInFlight() async throws {
            let parked = Parked()
            let continuation = try await parked.make(1)[0]
            func request(_ id: UInt64) -> WriteRequest {
                WriteRequest(id: id, descriptor: FileDescriptor(rawValue: 5), buffer: UnsafeRawPointer(bitPattern: 0x1000)!,
                             count: 2, offset: 0, kind: .plain, continuation: continuation, arrival: 0)
            }
            var machine = WriteState(slotCount: 2)
            var prepared: [WriteState.Prepared] = []
            var ended: [WriteRequest] = []
            var released: [Waiter] = []
            // B is submitted and completes short: the hub's thread submits its rest again (no role).
            let arrivedB = machine.arrive(request(1), onCompletionThread: false)
            let tookB = machine.takeWrites(into: &prepared)
            #expect(arrivedB == .submit && tookB)
            let slotB = prepared[0].slot
            prepared.removeAll()
            let tookMore = machine.takeWrites(into: &prepared)  // the role is given up
            #expect(!tookMore)
            guard case .retry = machine.completed(slot: slotB, result: .success(1), done: &ended, released: &released) else {
                Issue.record("a short write is continued")
                return
            }
            // A arrives elsewhere, takes the other slot and meets EAGAIN while B's rest is in a slot.
            let arrivedA = machine.arrive(request(2), onCompletionThread: false)
            let tookA = machine.takeWrites(into: &prepared)
            #expect(arrivedA == .submit && tookA)
            let slotA = prepared[0].slot
            prepared.removeAll()
            [slotA].withUnsafeBufferPointer { machine.exhausted($0, into: &ended, released: &released) }
            #expect(ended.isEmpty, "A waits: B is in a slot")
            let tookAgain = machine.takeWrites(into: &prepared)
            #expect(!tookAgain)
            // B's rest meets EAGAIN too, with no other write in a slot: it fails.
            [slotB].withUnsafeBufferPointer { machine.exhausted($0, into: &ended, released: &released) }
            #expect(ended.map(\.id) == [1])
            #expect(machine.slotsInUse == 0)
            // No write is in flight: no completion will come. A must be submittable.
            let canSubmit = machine.takeSubmitterRole()
            #expect(canSubmit, "stuck: \(machine.fingerprint)")
            await parked.finish()
        }

        // FINDING 2: sync slots and write slots share one kernel AIO context, but each state
        // machine decides from its own slots alone whether anything is in flight at an EAGAIN: a
        // sync meeting EAGAIN while only writes fill the context fails with EAGAIN (the backend
        // promises requests never fail because the context is full), and a write likewise while
        // only syncs are in flight. Nor would a completion of the other kind unblock it.
        @Test("FINDING 2a: a sync that meets EAGAIN while a write is in flight waits for a completion instead of failing")
        func syncEagainWhileWritesInFlight() async throws {
            let door = Door()
            let backend = try LibaioBackend(capacity: 1, system: door.system)
            let directory = try ScratchDirectory.onDisk()
            let data = try directory.file("data", contents: "")
            let other = try directory.file("other")
            defer { try? data.close(); try? other.close() }
            let write = Watched { try await backend.write(data, Self.page, at: 0) }
            try #require(await eventually(30) { door.heldWriteCount == 1 }, "the write is in flight (held at the kernel's door)")
            door.eagain(opcode: 3)
            let sync = Watched { try await backend.fdatasync(other) }
            #expect(await eventually(30) { door.eagainAnswered == 1 && (sync.isDone || waiting(backend) == 1) })
            #expect(!sync.isDone, "the sync failed at EAGAIN although a write of the same context was in flight: \(String(describing: sync.error))")
            door.releaseWrites()
            #expect(await eventually(30) { sync.isDone && write.isDone }, "\(engineSummary(backend)) \(door.log)")
            #expect(write.succeeded)
            #expect(sync.succeeded, "\(String(describing: sync.error))")
            await backend.shutdown()
        }

        @Test("FINDING 2b: a write that meets EAGAIN while a sync is in flight waits for a completion instead of failing")
        func writeEagainWhileSyncsInFlight() async throws {
            let door = Door()
            door.releaseWrites(stopHolding: true)
            let backend = try LibaioBackend(capacity: 1, system: door.system)
            let directory = try ScratchDirectory.onDisk()
            let data = try directory.file("data", contents: "")
            let other = try directory.file("other")
            defer { try? data.close(); try? other.close() }
            door.holdSyncs(1)
            let sync = Watched { try await backend.fdatasync(other) }
            try #require(await eventually(30) { door.heldSyncCount == 1 }, "the sync is in flight (held at the kernel's door)")
            door.eagain(opcode: 1)
            let write = Watched { try await backend.write(data, Self.page, at: 0) }
            try #require(await eventually(30) { door.eagainAnswered == 1 })
            // No state of the engine tells a write put back apart from one about to fail: a bound.
            // A correct engine never ends the write while the sync is held, so only main can fail.
            _ = await eventually(3) { write.isDone }
            #expect(!write.isDone, "the write failed at EAGAIN although a sync of the same context was in flight: \(String(describing: write.error))")
            door.releaseSyncs()
            #expect(await eventually(30) { sync.isDone && write.isDone }, "\(engineSummary(backend)) \(door.log)")
            #expect(sync.succeeded)
            #expect(write.succeeded, "\(String(describing: write.error))")
            await backend.shutdown()
        }

        // FINDING 3: a broken completion source answers the writes in flight at once, while the
        // kernel may still read their buffers (an O_DIRECT write DMAs from the caller's memory until
        // it completes; io_destroy(2) waits for that): the caller frees or reuses the buffer.
        @Test("FINDING 3: after a broken completion source, a write in flight is answered only once the kernel is done with its buffer")
        func brokenSourceAnswersWriteStillInKernel() async throws {
            let door = Door()
            var system = door.system
            let broken = Flag()
            let answered = Flag()
            system.reapCompletions = { context, events, maximum in
                broken.isRaised ? .failure(.invalidArgument) : SystemCalls.live.reapCompletions(context, events, maximum)
            }
            system.ioDestroy = { context in
                // io_destroy(2) waits for every request of the context in flight: the held write
                // reaches the kernel first. (Waits, bounded, for the write's task to look first.)
                _ = blockingEventually(3) { answered.isRaised }
                door.releaseWrites()
                return SystemCalls.live.ioDestroy(context)
            }
            let backend = try LibaioBackend(capacity: 2, system: system)
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            // The buffer outlives the test's use of the engine (the kernel may read it late).
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
            buffer.initializeMemory(as: UInt8.self, repeating: 0x22)
            defer { buffer.deallocate() }
            let bytes = Unchecked(UnsafeRawBufferPointer(buffer))
            let heldAtAnswer = Locked<Int?>(nil)
            let write = Watched {
                let error = await caughtError { try await backend.write(fd, from: bytes.value, at: 0) }
                heldAtAnswer.withLock { $0 = door.heldWriteCount }
                answered.raise()
                if let error { throw error }
            }
            try #require(await eventually(30) { door.heldWriteCount == 1 }, "the write is in flight")
            broken.raise()
            kick(backend.engine.hub)
            #expect(await eventually(30) { write.isDone })
            #expect(heldAtAnswer.withLock { $0 } == 0, "the write was answered (\(String(describing: write.error))) while the kernel still held it")
            await backend.shutdown()
            door.releaseWrites()
        }

        @Test("FINDING 3b: after a broken completion source, a write its submitter is handing to io_submit is answered only after that call returned")
        func brokenSourceAnswersWriteBeingSubmitted() async throws {
            let firstGate = DispatchSemaphore(value: 0)
            let secondGate = DispatchSemaphore(value: 0)
            let firstAtDoor = Flag()
            let secondAtDoor = Flag()
            let secondReturned = Flag()
            let broken = Flag()
            let writeSubmissions = Counter()
            var system = SystemCalls.live
            system.ioSubmit = { context, count, iocbs in
                guard iocbs[0]!.pointee.aio_lio_opcode == 1 else { return SystemCalls.live.ioSubmit(context, count, iocbs) }
                switch writeSubmissions.next() {
                case 1:
                    // The role holder's first submission waits until the second write is queued
                    // behind it; the holder then takes that one in its next round.
                    firstAtDoor.raise()
                    _ = firstGate.wait(timeout: .now() + 20)
                    return SystemCalls.live.ioSubmit(context, count, iocbs)
                case 2:
                    secondAtDoor.raise()
                    _ = secondGate.wait(timeout: .now() + 20)  // the submitter is inside io_submit(2)
                    defer { secondReturned.raise() }
                    return SystemCalls.live.ioSubmit(context, count, iocbs)
                default:
                    return SystemCalls.live.ioSubmit(context, count, iocbs)
                }
            }
            system.reapCompletions = { context, events, maximum in
                broken.isRaised ? .failure(.invalidArgument) : SystemCalls.live.reapCompletions(context, events, maximum)
            }
            let backend = try LibaioBackend(capacity: 2, system: system)
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 4096)
            buffer.initializeMemory(as: UInt8.self, repeating: 0x33)
            defer { buffer.deallocate() }
            let first = Unchecked(UnsafeRawBufferPointer(rebasing: buffer[..<4096]))
            let second = Unchecked(UnsafeRawBufferPointer(rebasing: buffer[4096...]))
            let answeredInsideSubmit = Locked<Bool?>(nil)
            let one = Watched { try await backend.write(fd, from: first.value, at: 0) }
            try #require(await eventually(30) { firstAtDoor.isRaised })
            let two = Watched {
                let error = await caughtError { try await backend.write(fd, from: second.value, at: 4096) }
                answeredInsideSubmit.withLock { $0 = !secondReturned.isRaised }
                if let error { throw error }
            }
            try #require(await eventually(30) { writeCounts(backend).incompleteWrites == 2 }, "the second write waits for the role holder")
            firstGate.signal()
            try #require(await eventually(30) { secondAtDoor.isRaised }, "the role holder is inside io_submit with the second write")
            broken.raise()
            kick(backend.engine.hub)
            _ = await eventually(5) { two.isDone }  // a bound: a correct engine answers only after the call
            secondGate.signal()
            #expect(await eventually(30) { one.isDone && two.isDone })
            #expect(answeredInsideSubmit.withLock { $0 } == false,
                    "the write was answered (\(String(describing: two.error))) while its io_submit(2) had not returned: the kernel reads its buffer afterwards")
            #expect(await finishes(within: .seconds(30)) { await backend.shutdown() })
        }

        // FINDING 4: LibaioBackend sends the syncs of a file system without AIO fsync (and of
        // tmpfs, inline) straight to POSIX aio / fsync(2), past the engine's write rule: such a
        // sync returns while a write of its descriptor accepted before it is still in flight in
        // kernel AIO (the seeds' contract, issue 17 item 2).
        @Test("FINDING 4: a sync through the POSIX fallback covers the kernel AIO writes of its descriptor accepted before it")
        func fallbackSyncCoversEarlierWrites() async throws {
            let door = Door()
            let backend = try LibaioBackend(capacity: 4, system: door.system)
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            door.refuseSyncs(of: fd)  // this file system has no AIO fsync
            try await backend.fdatasync(fd)
            try #require(!backend.posixFileSystems.isEmpty, "the file system is served by POSIX aio now")
            let write = Watched { try await backend.write(fd, Self.page, at: 0) }
            try #require(await eventually(30) { door.heldWriteCount == 1 }, "the write is in flight")
            let sync = Watched { try await backend.fdatasync(fd) }
            #expect(await eventually(30) { sync.isDone || writeCounts(backend).heldSyncs == 1 })
            #expect(!sync.isDone, "the sync returned (\(String(describing: sync.outcome))) while a write accepted before it was in flight")
            door.releaseWrites()
            #expect(await eventually(30) { sync.isDone && write.isDone })
            #expect(write.succeeded && sync.succeeded)
            await backend.shutdown()
        }

        // FINDING 5: GroupCommit forwards writes to the wrapped backend but serves a file's batch
        // with one sync through its first member's descriptor; the engine holds a sync only for
        // the writes of its own descriptor number, so a sync of fd2 answered by a batch synced
        // through fd1 does not cover fd2's write in flight (GroupCommit.write's doc promises it).
        @Test("FINDING 5: GroupCommit: a sync covers the writes of its own descriptor accepted before it, also when its batch syncs through another descriptor of the file")
        func groupCommitSyncCoversWritesOfItsDescriptor() async throws {
            let door = Door()
            let base = try LibaioBackend(capacity: 4, system: door.system)
            let group = GroupCommit(wrapping: base, system: door.system)
            let directory = try ScratchDirectory.onDisk()
            let fd1 = try directory.file("data", contents: "")
            let fd2 = try FileDescriptor.open(directory.path.appending("data"), .readWrite)
            defer { try? fd1.close(); try? fd2.close() }
            door.holdSyncs(1)
            let running = Watched { try await group.fdatasync(fd1) }  // leads a batch; its sync is held
            try #require(await eventually(30) { door.heldSyncCount == 1 })
            let next = Watched { try await group.fdatasync(fd1) }  // the next batch's first member
            try #require(await eventually(30) { group.queuedCount == 1 })
            let write = Watched { try await group.write(fd2, Self.page, at: 0) }
            try #require(await eventually(30) { door.heldWriteCount == 1 }, "the write on fd2 is in flight")
            // Joins the next batch, led through fd1 — or, with its write in flight, goes to the wrapped
            // backend, whose sync of fd2 is held until that write completes (the fix).
            let sync = Watched { try await group.fdatasync(fd2) }
            try #require(await eventually(30) { group.queuedCount == 2 || writeCounts(base).heldSyncs == 1 })
            door.releaseSyncs()
            #expect(await eventually(30) { sync.isDone || writeCounts(base).heldSyncs == 1 })
            #expect(!sync.isDone, "the sync of fd2 returned (\(String(describing: sync.outcome))) while its write was in flight")
            door.releaseWrites()
            #expect(await eventually(30) { running.isDone && next.isDone && sync.isDone && write.isDone })
            #expect(running.succeeded && next.succeeded && sync.succeeded && write.succeeded)
            await group.shutdown()
        }

        // FINDING 6: a durable write accepted before a shutdown began completes on the engine's
        // path (its sync is admitted), but on the inline path (tmpfs) and the POSIX-fallback path
        // its sync part is refused with shutDown after its write went through.
        @Test("FINDING 6: a durable write accepted before shutdown() completes on the inline path as on the engine's path")
        func durableWriteAcceptedBeforeShutdownInline() async throws {
            let door = Door()
            let backend = try LibaioBackend(capacity: 2, inlineMemoryFileSystems: true, system: door.system)
            let directory = try ScratchDirectory.onTmpfs()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            let write = Watched { try await backend.durableWrite(fd, Self.page, at: 0) }
            try #require(await eventually(30) { door.heldWriteCount == 1 })
            let shutdown = Watched { await backend.shutdown() }
            try #require(await eventually(30) { !isAcceptingRequests(backend) })
            door.releaseWrites()
            #expect(await eventually(30) { write.isDone && shutdown.isDone })
            #expect(write.succeeded, "accepted before the shutdown, written, then refused: \(String(describing: write.error))")
            #expect(try contents(fd, count: 4097) == Self.page)
        }

        // MARK: Areas that held (no finding): kept as regression tests

        @Test("held: a durable write fails when a durability failure of its file is recorded during its flight (buffered and O_DIRECT)",
              arguments: [false, true])
        func durableWriteInFlightRule(direct: Bool) async throws {
            let door = Door()
            let backend = try LibaioBackend(capacity: 4, system: door.system)
            let directory = try ScratchDirectory.onDisk()
            let path = directory.path.appending("data").string
            let raw = Glibc.open(path, O_RDWR | O_CREAT | (direct ? casyncfsync_O_DIRECT : 0), 0o600)
            guard TestEnvironment.require(raw >= 0, "open(O_DIRECT) refused on \(directory.path) (errno \(errno))") else { return }
            let fd = FileDescriptor(rawValue: raw)
            let other = try FileDescriptor.open(FilePath(path), .readWrite)  // another descriptor of the file
            defer { try? fd.close(); try? other.close() }
            let alignment = try DirectIOAlignment.of(fd)
            var buffer = try AlignedBuffer(byteCount: alignment.offsetAlignment, for: alignment)
            buffer.withUnsafeMutableBytes { _ = $0.initializeMemory(as: UInt8.self, repeating: 0x44) }
            let bytes = Unchecked(buffer.withUnsafeBytes { $0 })
            let write = Watched { try await backend.durableWrite(fd, from: bytes.value, at: 0) }
            try #require(await eventually(30) { door.heldWriteCount == 1 }, "the durable write is in flight")
            door.failSyncs(of: other, with: .ioError)
            let failed = await caughtError { try await backend.fdatasync(other) } as? AsyncSyncError
            #expect(failed?.errno == .ioError, "\(String(describing: failed))")
            door.releaseWrites()
            #expect(await eventually(30) { write.isDone })
            let error = write.error as? AsyncSyncError
            #expect(error?.isDurabilityFailure == true && error?.errno == .ioError,
                    "acknowledged although a failure of its file was recorded during its flight: \(String(describing: write.outcome))")
            await backend.shutdown()
            withExtendedLifetime(buffer) {}
        }

        @Test("held: a sync that waits for a write is admitted after a shutdown began, and both succeed")
        func heldSyncAdmittedDuringShutdown() async throws {
            let door = Door()
            let backend = try LibaioBackend(capacity: 2, system: door.system)
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            let write = Watched { try await backend.write(fd, Self.page, at: 0) }
            try #require(await eventually(30) { door.heldWriteCount == 1 })
            let sync = Watched { try await backend.fdatasync(fd) }
            try #require(await eventually(30) { writeCounts(backend).heldSyncs == 1 })
            let shutdown = Watched { await backend.shutdown() }
            try #require(await eventually(30) { !isAcceptingRequests(backend) })
            door.releaseWrites()
            #expect(await eventually(30) { write.isDone && sync.isDone && shutdown.isDone })
            #expect(write.succeeded && sync.succeeded, "\(String(describing: write.outcome)) \(String(describing: sync.outcome))")
        }

        @Test("held: POSIX aio: a short aio_return count is continued, an EINTR resubmitted, in the same write slot; a sync waits for it")
        func posixShortWriteAndInterruption() async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            let offsets = Locked<[Int64]>([])
            let shortened = Flag()
            let interrupted = Flag()
            var system = SystemCalls.live
            system.aioWrite = { control in
                offsets.withLock { $0.append(Int64(control.pointee.aio_offset)) }
                return SystemCalls.live.aioWrite(control)
            }
            system.aioError = { control in
                let status = SystemCalls.live.aioError(control)
                // The second submission (the rest of the short write) is reported interrupted once.
                if status == .succeeded, control.pointee.aio_nbytes == 3072, !interrupted.isRaised {
                    interrupted.raise()
                    return .failed(.interrupted)
                }
                return status
            }
            system.aioReturn = { control in
                let result = SystemCalls.live.aioReturn(control)
                if case .success(4096) = result, control.pointee.aio_nbytes == 4096, !shortened.isRaised {
                    shortened.raise()
                    return .success(1024)
                }
                return result
            }
            let backend = try PosixAIOBackend(capacity: 1, system: system)
            var bytes = [UInt8](repeating: 0, count: 4096)
            for index in bytes.indices { bytes[index] = UInt8(truncatingIfNeeded: index / 16) }
            try await backend.write(fd, bytes, at: 0)
            try await backend.fdatasync(fd)
            #expect(shortened.isRaised && interrupted.isRaised)
            #expect(offsets.withLock { $0 } == [0, 1024, 1024], "the rest from byte 1024, then the same again after EINTR")
            #expect(try contents(fd, count: 4097) == bytes)
            #expect(writeCounts(backend) == (0, 0))
            await backend.shutdown()
        }

        // FINDING 7: GroupCommit refuses syncs once its shutdown() began, but forwards writes and
        // durable writes to the wrapped backend until that one is shut down.
        @Test("FINDING 7: GroupCommit refuses writes and durable writes with shutDown once its shutdown() began, as it refuses syncs")
        func groupCommitRefusesWritesAfterShutdown() async throws {
            let door = Door()
            door.releaseWrites(stopHolding: true)
            let base = try LibaioBackend(capacity: 2, system: door.system)
            let group = GroupCommit(wrapping: base, system: door.system)
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            door.holdSyncs(1)
            let running = Watched { try await group.fdatasync(fd) }  // the group's drain waits for it
            try #require(await eventually(30) { door.heldSyncCount == 1 })
            let shutdown = Watched { await group.shutdown() }
            try #require(await eventually(30) { group.isShuttingDown })
            let sync = await caughtError { try await group.fdatasync(fd) } as? AsyncSyncError
            let write = await caughtError { try await group.write(fd, Self.page, at: 0) } as? AsyncSyncError
            // Not awaited before the running sync is let go: on main its sync part waits behind it.
            let durable = Watched { try await group.durableWrite(fd, Self.page, at: 4096) }
            #expect(sync?.code == .shutDown)
            #expect(write?.code == .shutDown, "a write after shutdown(): \(String(describing: write))")
            door.releaseSyncs()
            #expect(await eventually(30) { running.isDone && shutdown.isDone && durable.isDone })
            #expect((durable.error as? AsyncSyncError)?.code == .shutDown, "a durable write after shutdown(): \(String(describing: durable.outcome))")
        }
    }
}
#endif
