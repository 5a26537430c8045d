import CAsyncFsync
import Foundation
import SystemPackage
import Testing

@testable import AsyncFsync

#if canImport(Glibc)
import Glibc
#endif

// An adversarial review of two fixes of ReviewFile: FINDING 3 (`WriteState.cancel` leaves a partly
// written write alone) and FINDING 2 (`AsyncFile` refuses as closed whatever its arguments, once
// close() began). A test named "FINDING n" fails on c5ed478 and names the rule it shows broken; a
// test named "checked:" pins a rule that held.
//
// Every request is held through the `SystemCalls` table or a holding backend, never by a sleep;
// every wait is bounded (`eventually(30)`). Under TSan glibc's POSIX aio has one helper thread:
// each test makes the backends of one table only, and shuts them down before it ends.

extension AsyncFsyncTests {
    @Suite struct ReviewCancel3 {
        init() { GlibcAIOUnderSanitizer.configure }

        static let page = [UInt8](repeating: 0x5A, count: 4096)

        // MARK: AsyncFile admission racing close()

        @Test("checked: an operation admitted before close() keeps the close waiting; requests with bad arguments meanwhile are refused as closed and change no in-flight count; close() ends once the admitted one ended")
        func badArgumentsWhileCloseWaits() async throws {
            let scratch = try ScratchDirectory.onTmpfs()
            let log = DescriptorLog()
            let backend = HoldingBackend(log: log)
            let file = try AsyncFile.open(scratch.path.appending("a"), options: [.create], backend: backend, system: log.system())
            let fd = file.descriptorForTesting.rawValue
            let held = Watched { try await file.write(contentsOf: Self.page, at: 0) }
            try #require(await eventually(30) { backend.heldCount == 1 })
            #expect(file.inFlightCount == 1)
            let close = Watched { try await file.close() }
            try #require(await eventually(30) { file.closeWaiterCount == 1 })
            for offset: Int64 in [-1, 0] {
                let error = await caughtError { try await file.write(contentsOf: Self.page, at: offset) } as? AsyncSyncError
                #expect(error?.errno == .badFileDescriptor && error?.message.contains("was closed") == true,
                        "a write at \(offset) while close() waits: \(String(describing: error))")
            }
            let buffer = try AlignedBuffer(byteCount: 4096, alignment: 4096)
            let count = await caughtError { try await file.durableWrite(buffer, count: 8192, at: 0) } as? AsyncSyncError
            #expect(count?.errno == .badFileDescriptor && count?.operation == .durableWrite && count?.message.contains("was closed") == true,
                    "a durable write of a count past its buffer while close() waits: \(String(describing: count))")
            #expect(file.inFlightCount == 1, "the refused requests changed the in-flight count")
            #expect(!close.isDone && log.closeCount == 0, "close() returned or closed under the admitted write")
            backend.releaseAll()
            #expect(await eventually(30) { close.isDone && held.isDone })
            #expect(close.succeeded && held.succeeded)
            #expect(file.inFlightCount == 0 && file.isClosed)
            #expect(log.closedOnceAfterItsRequests(fd), "\(log.all)")
            #expect(backend.requestCount == 1)
        }

        @Test("checked: requests with bad arguments racing close(): each gets its argument's error or the closed error, none is admitted, close() closes once")
        func badArgumentsRacingClose() async throws {
            let scratch = try ScratchDirectory.onTmpfs()
            for round in 0..<20 {
                // One log per round: the descriptor number is reused by the next round's file.
                let log = DescriptorLog()
                let backend = HoldingBackend(log: log, holding: false)
                let file = try AsyncFile.open(scratch.path.appending("r\(round)"), options: [.create], backend: backend, system: log.system())
                let fd = file.descriptorForTesting.rawValue
                async let closed: Void = file.close()
                var errors: [AsyncSyncError?] = []
                for _ in 0..<8 {
                    errors.append(await caughtError { try await file.write(contentsOf: Self.page, at: -1) } as? AsyncSyncError)
                }
                try await closed
                for error in errors {
                    let closedError = error?.errno == .badFileDescriptor && error?.message.contains("was closed") == true
                    let argument = error?.errno == .invalidArgument && error?.message.contains("negative") == true
                    #expect(closedError || argument, "\(String(describing: error))")
                }
                // Once close() began, always the closed error.
                let after = await caughtError { try await file.write(contentsOf: Self.page, at: -1) } as? AsyncSyncError
                #expect(after?.message.contains("was closed") == true)
                #expect(file.inFlightCount == 0 && file.isClosed)
                #expect(log.closedOnceAfterItsRequests(fd), "\(log.all)")
                #expect(backend.requestCount == 0)
            }
        }
    }
}

#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
extension AsyncFsyncTests.ReviewCancel3 {
    // MARK: WriteState alone: a partly written write put back, then cancelled, then shutdown or break

    @Test("checked: WriteState: a partly written write put back after EAGAIN, whose cancellation found it (nil), is answered exactly once by a break (failed, not in the system) and the sync held behind it exactly once")
    func partlyWrittenCancelledThenBroken() async throws {
        let parked = Parked()
        let continuation = try await parked.make(1)[0]
        func request(_ id: UInt64) -> WriteRequest {
            WriteRequest(id: id, descriptor: FileDescriptor(rawValue: 5), buffer: UnsafeRawPointer(bitPattern: 0x1000)!,
                         count: 4096, offset: Int64(id) * 4096, kind: .plain, continuation: continuation, arrival: 0)
        }
        for ending in ["broken", "lastInFlightFails", "restSucceeds"] {
            var machine = WriteState(slotCount: 2)
            var prepared: [WriteState.Prepared] = []
            var ended: [WriteRequest] = []
            var released: [Waiter] = []
            _ = machine.arrive(request(1), onCompletionThread: false)
            _ = machine.arrive(request(2), onCompletionThread: true)
            _ = machine.takeWrites(into: &prepared)
            let slots = prepared.map(\.slot)
            slots.withUnsafeBufferPointer { machine.submitted($0) }
            prepared.removeAll()
            _ = machine.takeWrites(into: &prepared)
            guard case .retry = machine.completed(slot: slots[0], result: .success(1024), done: &ended, released: &released) else {
                Issue.record("a short write is continued")
                return
            }
            [slots[0]].withUnsafeBufferPointer { machine.exhausted($0, into: &ended, released: &released) }
            // A sync of the descriptor arrives: held behind both writes.
            let sync = Waiter(id: 9, descriptor: FileDescriptor(rawValue: 5), mode: .fdatasync, continuation: continuation,
                              arrival: 0, identity: nil, identityTaken: true)
            let proceeds = machine.gate(sync)
            #expect(proceeds == nil)
            let cancelled = machine.cancel(id: 1, descriptor: 5, released: &released)
            #expect(cancelled == nil)
            #expect(machine.pending == 3 && released.isEmpty, "\(machine.fingerprint)")
            switch ending {
            case "broken":
                var failed: [WriteRequest] = []
                var inSystem: [WriteRequest] = []
                var held: [Waiter] = []
                machine.broken(into: &failed, inSystem: &inSystem, held: &held)
                #expect(failed.map(\.id) == [1] && failed.first?.written == 1024, "the partly written write: failed once")
                #expect(inSystem.map(\.id) == [2])
                #expect(held.map(\.id) == [9] && released.isEmpty, "the sync: answered once, by the break")
            case "lastInFlightFails":
                // Write 2 fails: write 1 is submitted again by the completion's submitter, or, met
                // by EAGAIN with nothing in flight, fails; its sync is released once, after it.
                _ = machine.completed(slot: slots[1], result: .failure(.ioError), done: &ended, released: &released)
                let role = machine.takeSubmitterRole()
                #expect(released.isEmpty && role)
                var again: [WriteState.Prepared] = []
                let took = machine.takeWrites(into: &again)
                #expect(took && again.first?.offset == 4096 + 1024 && again.first?.count == 3072)
                var failed: [WriteRequest] = []
                again.map(\.slot).withUnsafeBufferPointer { machine.exhausted($0, into: &failed, released: &released) }
                #expect(failed.map(\.id) == [1] && failed.first?.written == 1024)
                #expect(released.map(\.id) == [9], "the sync held behind: released once")
            default:
                _ = machine.completed(slot: slots[1], result: .success(4096), done: &ended, released: &released)
                let role = machine.takeSubmitterRole()
                var again: [WriteState.Prepared] = []
                let took = machine.takeWrites(into: &again)
                #expect(role && took)
                again.map(\.slot).withUnsafeBufferPointer { machine.submitted($0) }
                let cancelled = machine.cancel(id: 1, descriptor: 5, released: &released)
                #expect(cancelled == nil, "in a slot: not cancelled")
                let result = machine.completed(slot: again[0].slot, result: .success(3072), done: &ended, released: &released)
                guard case .finished(.success) = result else { Issue.record("\(result)"); break }
                #expect(ended.map(\.id) == [2, 1] && released.map(\.id) == [9])
            }
            #expect(machine.pending == 0 && machine.incompleteWriteCount == 0 && machine.heldSyncCount == 0, "\(ending): \(machine.fingerprint)")
        }
        await parked.finish()
    }

    @Test("checked: posix: a partly written write put back after EAGAIN, cancelled, then shutdown(): not refused as never submitted, written whole, succeeds; shutdown() returns after it; a later write is refused")
    func partlyWrittenCancelledThenShutDown() async throws {
        let scenario = try await PartlyWrittenWriteCancelled.start()
        defer { try? scenario.fd.close() }
        let backend = scenario.backend
        // A shutdown now: the partly written write, whose cancellation left it, is no new request:
        // it is not refused, and the drain waits for it.
        let shutdown = Watched { await backend.shutdown() }
        try #require(await eventually(30) { !isAcceptingRequests(backend) })
        #expect(!shutdown.isDone && !scenario.second.isDone, "shutdown() returned, or the write ended, before the write in flight ended")
        let refused = await caughtError { try await backend.write(scenario.fd, [UInt8](repeating: 4, count: 16), at: 20000) } as? AsyncSyncError
        #expect(refused?.code == .shutDown)
        scenario.letFirstGo.raise()
        try await scenario.expectWrittenWhole()
        #expect(await eventually(30) { shutdown.isDone })
    }

    // MARK: The engine: a partly written write that fails when its rest is submitted

    // FINDING 1: a write part of which is in the file, whose rest is refused at submission
    // (`aio_write`/`io_submit`: EAGAIN with nothing in flight, EBADF of a descriptor closed between
    // the parts, ...), fails with step `.submit` and nothing that says bytes were written: the
    // documented meaning of an errno at submit is "nothing reached the file" (AIOEngine.submitWrites,
    // docs/errors.md rows "EAGAIN at submit" / "seccomp ... EPERM": "nothing reached the disk"),
    // and for EAGAIN the message is empty. The caller cannot tell it from a write never handed
    // over, although 1024 of its 4096 bytes are in the file (the portable backend says how many
    // bytes were written before its errno). A fix keeps the errno and the step (where the system
    // said it) and says in the message how many bytes were written before it.

    @Test("FINDING 1: posix: a write whose first 1024 bytes are in the file and whose rest meets EAGAIN with nothing in flight says it wrote 1024 of 4096 bytes")
    func partlyWrittenWriteRefusedAtSubmitSaysWhatWasWritten() async throws {
        let directory = try ScratchDirectory.onDisk()
        let fd = try directory.file("data", contents: "")
        defer { try? fd.close() }
        let shortened = Flag()
        let refusedRest = Flag()
        var system = SystemCalls.live
        system.aioWrite = { control in
            guard control.pointee.aio_fildes == fd.rawValue else { return SystemCalls.live.aioWrite(control) }
            if control.pointee.aio_offset == 0, control.pointee.aio_nbytes == 4096, !shortened.isRaised {
                shortened.raise()
                control.pointee.aio_nbytes = 1024
            }
            if control.pointee.aio_offset == 1024, !refusedRest.isRaised {
                refusedRest.raise()
                return .failure(.resourceTemporarilyUnavailable)
            }
            return SystemCalls.live.aioWrite(control)
        }
        let backend = try PosixAIOBackend(capacity: 2, system: system)
        let error = await caughtError { try await backend.write(fd, [UInt8](repeating: 1, count: 4096), at: 0) } as? AsyncSyncError
        #expect(shortened.isRaised && refusedRest.isRaised, "the scenario did not happen")
        let bytes = try contents(fd, count: 4097)
        #expect(bytes.count == 1024, "1024 bytes are in the file")
        #expect(error?.errno == .resourceTemporarilyUnavailable, "\(String(describing: error))")
        #expect(error?.message.contains("1024 of 4096 bytes were written") == true,
                "a write with 1024 bytes in the file failed at submit as if nothing was written: \(String(describing: error))")
        #expect(writeCounts(backend) == (0, 0))
        await backend.shutdown()
    }
}
#endif  // os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
