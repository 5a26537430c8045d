import CAsyncFsync
import Foundation
import SystemPackage
import Testing

@testable import AsyncFsync

#if canImport(Glibc)
import Glibc
#endif

// An adversarial review of the file handle (`AsyncFile`) and of the POSIX backend's asynchronous
// write and durable write (aio_write, then aio_fsync(O_DSYNC); the inline path of memory file
// systems; the POSIX fallback of the libaio backend). A test named "FINDING n" fails on a8ef9e0 and
// names the rule it shows broken; a test named "checked:" pins a rule that held and had no test.
//
// Every request is held through the `SystemCalls` table (a flag a system call waits for), never by
// a sleep; every wait is bounded (`eventually(30)`, `blockingEventually(30)`). Under TSan glibc's
// POSIX aio has one helper thread: each test makes the backends of one table only, and shuts them
// down before it ends.

extension AsyncFsyncTests {
    @Suite struct ReviewFile {
        init() { GlibcAIOUnderSanitizer.configure }

        static let page = [UInt8](repeating: 0x5A, count: 4096)

        // MARK: AsyncFile: admission once close() began

        // FINDING 2 (minor; fixed): `AsyncFile` checks its arguments (a negative offset, a readOnly file, an
        // O_DIRECT misalignment) before it asks for admission, so once close() began such a request
        // is not refused as closed: it gets EINVAL "offset -1 is negative" or EBADF "opened readOnly".
        // The documented rule (AsyncFile "Admission", docs/design.md "The file handle", docs/errors.md
        // row "AsyncFile: any operation once close() began"): every operation once close() began
        // throws EBADF, step .request, the operation, and a message saying the file was closed.
        @Test("FINDING 2: once close() began, a write with a bad argument (negative offset, readOnly file) is refused as closed: EBADF \"was closed\"")
        func refusedAsClosedWhateverItsArguments() async throws {
            let scratch = try ScratchDirectory.onTmpfs()
            let log = DescriptorLog()
            let backend = HoldingBackend(log: log, holding: false)
            let file = try AsyncFile.open(scratch.path.appending("a"), options: [.create], backend: backend)
            try await file.close()
            let negative = await caughtError { try await file.write(contentsOf: Self.page, at: -1) } as? AsyncSyncError
            #expect(negative?.errno == .badFileDescriptor && negative?.message.contains("was closed") == true,
                    "a write at offset -1 after close(): \(String(describing: negative))")
            let negativeDurable = await caughtError { try await file.durableWrite(contentsOf: Self.page, at: -4096) } as? AsyncSyncError
            #expect(negativeDurable?.errno == .badFileDescriptor && negativeDurable?.operation == .durableWrite
                        && negativeDurable?.message.contains("was closed") == true,
                    "a durable write at offset -4096 after close(): \(String(describing: negativeDurable))")

            let readOnly = try AsyncFile.open(scratch.path.appending("a"), options: [.readOnly], backend: backend)
            try await readOnly.close()
            let write = await caughtError { try await readOnly.write(contentsOf: Self.page, at: 0) } as? AsyncSyncError
            #expect(write?.errno == .badFileDescriptor && write?.message.contains("was closed") == true,
                    "a write to a closed readOnly file: \(String(describing: write))")
            #expect(backend.requestCount == 0)
        }

        // MARK: AsyncFile.open: a refused O_DIRECT open leaves no file it created

        /// Noticed by the review (not a numbered finding): `open([.create, .exclusive, .direct])`
        /// refused after the file was created (the file system reports no `O_DIRECT` alignment)
        /// closed the descriptor but left the new, empty file, so the caller's retry failed with
        /// `EEXIST`. A file the call created is removed again; one that existed is kept.
        @Test("a refused O_DIRECT open removes the file its exclusive create made, and keeps a file that existed")
        func refusedDirectOpenLeavesNoFile() async throws {
            let scratch = try ScratchDirectory.onDisk()
            var system = SystemCalls.live
            system.directIOAlignment = { _ in .success(DirectIOReport(reported: true, memoryAlignment: 0, offsetAlignment: 0, blockSize: 4096)) }
            let created = scratch.path.appending("created")
            let refused = #expect(throws: AsyncSyncError.self) {
                _ = try AsyncFile.open(created, options: [.create, .exclusive, .direct], backend: AsyncSync.shared, system: system)
            }
            #expect(refused?.operation == .open && refused?.errno == .invalidArgument, "\(String(describing: refused))")
            #expect(!FileManager.default.fileExists(atPath: created.string), "the file the refused open created is still there")
            // A retry without O_DIRECT creates it: no EEXIST from the refused attempt.
            let file = try AsyncFile.open(created, options: [.create, .exclusive], backend: AsyncSync.shared)
            try await file.close()

            let existing = scratch.path.appending("existing")
            try scratch.file("existing", contents: "kept").close()
            #expect(throws: AsyncSyncError.self) {
                _ = try AsyncFile.open(existing, options: [.create, .direct], backend: AsyncSync.shared, system: system)
            }
            #expect(FileManager.default.fileExists(atPath: existing.string), "a file that existed before the open was removed")
        }

        // MARK: WriteState: a partly written write is not cancelled (FINDING 3, the state machine alone)

        @Test("FINDING 3 (WriteState alone): a write put back in line after part of it was written (its rest met EAGAIN) is not removed by its cancellation")
        func writeStateKeepsPartlyWrittenWrite() async throws {
            let parked = Parked()
            let continuation = try await parked.make(1)[0]
            func request(_ id: UInt64) -> WriteRequest {
                WriteRequest(id: id, descriptor: FileDescriptor(rawValue: 5), buffer: UnsafeRawPointer(bitPattern: 0x1000)!,
                             count: 4096, offset: Int64(id) * 4096, kind: .plain, continuation: continuation, arrival: 0)
            }
            var machine = WriteState(slotCount: 2)
            var prepared: [WriteState.Prepared] = []
            var ended: [WriteRequest] = []
            var released: [Waiter] = []
            _ = machine.arrive(request(1), onCompletionThread: false)
            _ = machine.arrive(request(2), onCompletionThread: true)
            let took = machine.takeWrites(into: &prepared)
            #expect(took && prepared.count == 2)
            let slots = prepared.map(\.slot)
            slots.withUnsafeBufferPointer { machine.submitted($0) }
            prepared.removeAll()
            _ = machine.takeWrites(into: &prepared)  // the role is given up
            // Write 1 completes short (1024 of 4096); its rest meets EAGAIN while write 2 is in flight.
            guard case .retry(let rest) = machine.completed(slot: slots[0], result: .success(1024), done: &ended, released: &released) else {
                Issue.record("a short write is continued")
                return
            }
            #expect(rest.offset == 4096 + 1024 && rest.count == 3072)
            [slots[0]].withUnsafeBufferPointer { machine.exhausted($0, into: &ended, released: &released) }
            #expect(ended.isEmpty, "put back: write 2 is in a slot")
            let cancelled = machine.cancel(id: 1, descriptor: 5, released: &released)
            #expect(cancelled == nil, "a write with \(cancelled?.written ?? 0) bytes written was cancelled")
            #expect(machine.incompleteWriteCount == 2, "\(machine.fingerprint)")
            // A write that wrote nothing is still cancelled while it waits.
            _ = machine.arrive(request(3), onCompletionThread: true)
            #expect(machine.cancel(id: 3, descriptor: 5, released: &released)?.id == 3)
            await parked.finish()
        }

        @Test("FINDING 2 (AsyncFileState alone): admits is true while open, false from the first close() on, also with operations in flight")
        func stateAdmitsUntilClose() {
            var state = AsyncFileState<Int>()
            #expect(state.admits)
            let admitted = state.admit()
            let start = state.close(waiter: 1)
            #expect(admitted && start == .wait)
            let late = state.admit()
            #expect(!state.admits && !late, "closing: nothing is admitted")
            let closer = state.finish()
            #expect(closer == 1 && !state.admits)
            let others = state.descriptorClosed()
            #expect(others.isEmpty && !state.admits)
        }

        // MARK: AsyncFile: checked rules without a test before

        @Test("checked: a close() that waits for an operation whose task is cancelled: the cancelled operation ends (CancellationError before submission), then the descriptor is closed once")
        func cancelledOperationLetsCloseGoOn() async throws {
            let scratch = try ScratchDirectory.onTmpfs()
            let log = DescriptorLog()
            let backend = HoldingBackend(log: log)
            let file = try AsyncFile.open(scratch.path.appending("a"), options: [.create], backend: backend, system: log.system())
            let fd = file.descriptorForTesting.rawValue
            let held = Watched { try await file.fdatasync() }
            try #require(await eventually(30) { backend.heldCount == 1 })
            let close = Watched { try await file.close() }
            try #require(await eventually(30) { file.closeWaiterCount == 1 })
            held.task.cancel()  // the holding backend ignores it: the operation stays in flight
            #expect(!close.isDone && log.closeCount == 0, "close() returned or closed under a request")
            backend.releaseAll()
            #expect(await eventually(30) { close.isDone && held.isDone })
            #expect(close.succeeded && held.succeeded)
            #expect(log.closedOnceAfterItsRequests(fd), "\(log.all)")
        }

        @Test("checked: a descriptor number reused after close() is never touched by the closed handle (operations, a second close, deinit)")
        func reusedNumberIsNotTouched() async throws {
            let scratch = try ScratchDirectory.onTmpfs()
            let log = DescriptorLog()
            let backend = HoldingBackend(log: log, holding: false)
            var first: AsyncFile? = try AsyncFile.open(scratch.path.appending("a"), options: [.create], backend: backend,
                                                       system: log.system())
            let fd = first!.descriptorForTesting.rawValue
            try await first!.close()
            // The number is free again: the next open gets it (the lowest free number).
            let second = try AsyncFile.open(scratch.path.appending("b"), options: [.create], backend: backend, system: log.system())
            try #require(second.descriptorForTesting.rawValue == fd, "the number was not reused; the test shows nothing")
            let refused = await caughtError { try await first!.fsync() } as? AsyncSyncError
            #expect(refused?.errno == .badFileDescriptor && refused?.message.contains("was closed") == true)
            try await first!.close()
            first = nil  // deinit
            #expect(log.closes(of: fd) == 1, "the closed handle closed the reused number: \(log.all)")
            #expect(backend.requestCount == 0, "a request of the closed handle reached the backend")
            try await second.fsync()
            try await second.close()
            #expect(log.closes(of: fd) == 2)
        }

        @Test("checked: syncDirectory() after close() opens the directory on a descriptor of its own and closes it after the sync returned")
        func directorySyncAfterClose() async throws {
            let scratch = try ScratchDirectory.onTmpfs()
            let log = DescriptorLog()
            let backend = HoldingBackend(log: log)
            let file = try AsyncFile.open(scratch.path.appending("a"), options: [.create], backend: backend, system: log.system())
            let fd = file.descriptorForTesting.rawValue
            try await file.close()
            let sync = Watched { try await file.syncDirectory() }
            try #require(await eventually(30) { backend.heldCount == 1 })
            let request = try #require(backend.requests.first)
            #expect(request.status?.type == .directory, "the sync is of the directory")
            let directoryFD = request.fd
            // The file's number is free after close(): the directory's descriptor may have it.
            let closesBefore = log.closes(of: directoryFD)
            #expect(closesBefore == (directoryFD == fd ? 1 : 0), "the directory's descriptor was closed under its sync")
            backend.releaseAll()
            #expect(await eventually(30) { sync.isDone })
            #expect(sync.succeeded)
            #expect(log.closes(of: directoryFD) == closesBefore + 1, "the directory's descriptor is closed once, after its sync")
            #expect(log.all.last == .closed(directoryFD))
        }
    }
}

#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
extension AsyncFsyncTests.ReviewFile {
    // MARK: The sync part of a durable write is never abandoned

    // FINDING 1: a durable write whose write has been handed to the system returns
    // CancellationError when its task is cancelled, without its sync part, if the sync part is
    // made anywhere but the engine's own hand-over (`WriteKind.thenSync`):
    //   - the inline path of a memory file system (PosixAIOBackend and LibaioBackend with
    //     inlineMemoryFileSystems, the public default): `InlineSync.sync` starts with
    //     `Task.checkCancellation()`;
    //   - the same path with earlier writes of the descriptor incomplete
    //     (`AIOEngine.syncAfterWrite` → `sync(…, admitted: true)`, which starts with
    //     `Task.checkCancellation()` and installs a cancellation handler);
    //   - the libaio backend's POSIX fallback (a file system without AIO fsync):
    //     `PosixFallback.sync(accepted: true)` → `AIOEngine.sync` → `Task.checkCancellation()`.
    // The bytes are in the file (in the page cache, not durable), but the caller is told
    // CancellationError, which the contract reserves for "cancelled before the request was handed
    // to the system; nothing is submitted" (AsyncSyncBackend, docs/errors.md "task cancelled after
    // the write was handed to the system: … the call never returns before the write ends", and for
    // the portable backend "its sync part is never abandoned"). The engine path of the same durable
    // write on a disk (`thenSync`) ignores the cancellation and returns the sync's result, so the
    // same program behaves differently on tmpfs and on a disk. A caller that takes CancellationError
    // for "not written" (retry elsewhere, reuse the offset) finds the record in the file.
    //
    // Fixed: the sync part of a durable write is not cancellable on any path:
    // `InlineSync.sync(cancellable: false)`, `AIOEngine.sync(cancellable: false)` (no
    // `Task.checkCancellation()`, no handler, no task kept, `isCancelled` false: as `handOver`
    // does for a `thenSync` write) from `syncAfterWrite`, and `PosixFallback.sync(cancellable:
    // false)` from the libaio backend's durable paths.

    @Test("FINDING 1: posix, inline path (tmpfs): a durable write cancelled while its aio_write is in the system still makes its sync and succeeds")
    func inlineDurableWriteIsNotAbandoned() async throws {
        let scratch = try ScratchDirectory.onTmpfs()
        guard TestEnvironment.require(scratch.fileSystemMagic == FileSystemMagic.tmpfs, "/dev/shm is not tmpfs") else { return }
        let fd = try scratch.file("data", contents: "")
        defer { try? fd.close() }
        let inWrite = Flag()
        let letGo = Flag()
        let inlineSyncs = Counter()
        var system = SystemCalls.live
        system.aioWrite = { control in
            // The submitting thread (the durable write's own) waits here: the write is being handed
            // to the system when the test cancels its task.
            inWrite.raise()
            _ = blockingEventually(30) { letGo.isRaised }
            return SystemCalls.live.aioWrite(control)
        }
        system.syncNow = { mode, fd in
            _ = inlineSyncs.next()
            return SystemCalls.live.syncNow(mode, fd)
        }
        let backend = try PosixAIOBackend(capacity: 4, inlineMemoryFileSystems: true, system: system)
        let durable = Watched { try await backend.durableWrite(fd, Self.page, at: 0) }
        let entered = await eventually(30) { inWrite.isRaised }
        durable.task.cancel()
        letGo.raise()
        #expect(entered, "the durable write never reached aio_write")
        #expect(await eventually(30) { durable.isDone })
        #expect(try contents(fd, count: 4097) == Self.page, "the write was handed to the system and is in the file")
        #expect(durable.succeeded, "a durable write whose write is in the file returned \(String(describing: durable.outcome))")
        #expect(inlineSyncs.current == 1, "its sync part (an inline fdatasync) ran \(inlineSyncs.current) times")
        await backend.shutdown()
    }

    @Test("FINDING 1: posix, inline path (tmpfs) with an earlier write incomplete: a cancelled durable write whose write is in the file waits for that write, syncs through POSIX aio and succeeds")
    func inlineDurableWriteHeldBehindAWriteIsNotAbandoned() async throws {
        let scratch = try ScratchDirectory.onTmpfs()
        guard TestEnvironment.require(scratch.fileSystemMagic == FileSystemMagic.tmpfs, "/dev/shm is not tmpfs") else { return }
        let fd = try scratch.file("data", contents: "")
        defer { try? fd.close() }
        let earlierDone = Flag()    // the completion of the plain write at 0
        let inWrite = Flag()        // the durable write's aio_write (at 4096) is being called
        let letGo = Flag()
        let aioFsyncs = Counter()
        var system = SystemCalls.live
        system.aioWrite = { control in
            if control.pointee.aio_fildes == fd.rawValue, control.pointee.aio_offset == 4096 {
                inWrite.raise()
                _ = blockingEventually(30) { letGo.isRaised }
            }
            return SystemCalls.live.aioWrite(control)
        }
        system.aioError = { control in
            let status = SystemCalls.live.aioError(control)
            guard control.pointee.aio_fildes == fd.rawValue, control.pointee.aio_offset == 0,
                  control.pointee.aio_nbytes == 4096, status != .inProgress, !earlierDone.isRaised else { return status }
            return .inProgress  // the earlier write stays incomplete until the test lets it end
        }
        system.aioFsync = { mode, control in
            if control.pointee.aio_fildes == fd.rawValue { _ = aioFsyncs.next() }
            return SystemCalls.live.aioFsync(mode, control)
        }
        let backend = try PosixAIOBackend(capacity: 4, inlineMemoryFileSystems: true, system: system)
        let earlier = Watched { try await backend.write(fd, [UInt8](repeating: 1, count: 4096), at: 0) }
        try #require(await eventually(30) { writeCounts(backend).incompleteWrites == 1 })
        let durable = Watched { try await backend.durableWrite(fd, Self.page, at: 4096) }
        let entered = await eventually(30) { inWrite.isRaised }
        durable.task.cancel()
        letGo.raise()
        #expect(entered, "the durable write never reached aio_write")
        // Its write completes; its sync part waits for the earlier write (held in the engine).
        let heldBehind = await eventually(30) { writeCounts(backend) == (1, 1) || durable.isDone }
        earlierDone.raise()
        #expect(heldBehind)
        #expect(await eventually(30) { durable.isDone && earlier.isDone })
        #expect(earlier.succeeded)
        #expect(try contents(fd, count: 8193).suffix(4096) == ArraySlice(Self.page), "the durable write's bytes are in the file")
        #expect(durable.succeeded, "a durable write whose write is in the file returned \(String(describing: durable.outcome))")
        #expect(aioFsyncs.current == 1, "its sync part (aio_fsync, behind the earlier write) was submitted \(aioFsyncs.current) times")
        await backend.shutdown()
    }

    @Test("FINDING 1: libaio, POSIX fallback (no AIO fsync): a durable write cancelled while its write is in the system still makes its sync and succeeds")
    func fallbackDurableWriteIsNotAbandoned() async throws {
        let directory = try ScratchDirectory.onDisk()
        let fd = try directory.file("data", contents: "")
        defer { try? fd.close() }
        let door = Door()
        door.refuseSyncs(of: fd)  // kernel AIO has no fsync for it: POSIX aio serves its syncs
        let aioFsyncs = Counter()
        var system = door.system
        system.aioFsync = { mode, control in
            _ = aioFsyncs.next()
            return SystemCalls.live.aioFsync(mode, control)
        }
        let backend = try LibaioBackend(capacity: 4, system: system)
        try await backend.fdatasync(fd)  // the file system is remembered: later syncs go to POSIX aio
        try #require(backend.posixFileSystems.count == 1 && aioFsyncs.current == 1)
        let durable = Watched { try await backend.durableWrite(fd, Self.page, at: 0) }
        let held = await eventually(30) { door.heldWriteCount == 1 }
        durable.task.cancel()
        door.releaseWrites()
        #expect(held, "the durable write's write never reached io_submit")
        #expect(await eventually(30) { durable.isDone })
        #expect(try contents(fd, count: 4097) == Self.page, "the write was handed to the system and is in the file")
        #expect(durable.succeeded, "a durable write whose write is in the file returned \(String(describing: durable.outcome))")
        #expect(aioFsyncs.current == 2, "its sync part (aio_fsync) was submitted \(aioFsyncs.current - 1) times")
        await backend.shutdown()
    }

    // FINDING 3: a write whose first part is in the file is cancelled. A write that waited for a
    // slot has a cancellation handler; once submitted, a short write's rest is submitted again from
    // the completion thread, and an `EAGAIN` there (other writes in flight) puts the request back
    // first in line (`WriteState.exhausted` → `ready.prepend`). `WriteState.cancel` then finds it
    // in the queue like a request never submitted, and the caller gets CancellationError although
    // the first bytes were handed to the system and are in the file. Same contract as FINDING 1
    // ("CancellationError: cancelled before the write was handed to the system"; "once handed to
    // the system the write is never abandoned"). Shared by both engine backends.
    //
    // Fixed: `WriteState.cancel(id:descriptor:released:)` leaves a request with `written > 0`
    // alone (it is finished as any submitted write is); `WriteModel` checks it.
    @Test("FINDING 3: posix: a write whose first part is in the file, put back after EAGAIN on its rest, is not cancelled: it is written whole")
    func partlyWrittenWriteIsNotCancelled() async throws {
        let scenario = try await PartlyWrittenWriteCancelled.start()
        defer { try? scenario.fd.close() }
        scenario.letFirstGo.raise()
        try await scenario.expectWrittenWhole()
        await scenario.backend.shutdown()
    }

    // MARK: The POSIX durable write: checked rules

    @Test("checked: posix: a durable write whose write completes while a sync of its descriptor is in flight is not acknowledged by that sync: it waits for the next aio_fsync")
    func durableWriteWaitsForALaterSync() async throws {
        let directory = try ScratchDirectory.onDisk()
        let fd = try directory.file("data", contents: "")
        defer { try? fd.close() }
        let firstSyncDone = Flag()
        let aioFsyncs = Counter()
        let aioWrites = Counter()
        var system = SystemCalls.live
        system.aioFsync = { mode, control in
            if control.pointee.aio_fildes == fd.rawValue { _ = aioFsyncs.next() }
            return SystemCalls.live.aioFsync(mode, control)
        }
        system.aioWrite = { control in
            if control.pointee.aio_fildes == fd.rawValue { _ = aioWrites.next() }
            return SystemCalls.live.aioWrite(control)
        }
        system.aioError = { control in
            let status = SystemCalls.live.aioError(control)
            // The first sync of the file (a sync's control block has no buffer) stays in flight.
            guard control.pointee.aio_fildes == fd.rawValue, control.pointee.aio_buf == nil, status != .inProgress,
                  !firstSyncDone.isRaised else { return status }
            return .inProgress
        }
        let backend = try PosixAIOBackend(capacity: 4, system: system)
        let sync = Watched { try await backend.fdatasync(fd) }
        try #require(await eventually(30) { aioFsyncs.current == 1 })
        let durable = Watched { try await backend.durableWrite(fd, Self.page, at: 0) }
        // Its write completes; its sync part waits for the descriptor's next sync.
        let waits = await eventually(30) { aioWrites.current == 1 && writeCounts(backend) == (0, 0) && waiting(backend) == 1 }
        #expect(waits, "\(engineSummary(backend))")
        #expect(!durable.isDone && aioFsyncs.current == 1, "acknowledged by a sync that started before its write completed")
        firstSyncDone.raise()
        #expect(await eventually(30) { sync.isDone && durable.isDone })
        #expect(sync.succeeded && durable.succeeded)
        #expect(aioFsyncs.current == 2, "its own aio_fsync after its write: \(aioFsyncs.current) in all")
        #expect(try contents(fd, count: 4097) == Self.page)
        await backend.shutdown()
    }

    @Test("checked: posix: a durable write whose aio_write fails (EIO) reports the write's failure (operation .write), makes no aio_fsync, records nothing; the file's next durable write succeeds")
    func durableWriteWhoseWriteFailsIsNotSticky() async throws {
        let directory = try ScratchDirectory.onDisk()
        let fd = try directory.file("data", contents: "")
        defer { try? fd.close() }
        let failed = Flag()
        let aioFsyncs = Counter()
        var system = SystemCalls.live
        system.aioFsync = { mode, control in
            if control.pointee.aio_fildes == fd.rawValue { _ = aioFsyncs.next() }
            return SystemCalls.live.aioFsync(mode, control)
        }
        system.aioError = { control in
            let status = SystemCalls.live.aioError(control)
            guard control.pointee.aio_fildes == fd.rawValue, control.pointee.aio_buf != nil, status == .succeeded,
                  !failed.isRaised else { return status }
            failed.raise()
            return .failed(.ioError)
        }
        let backend = try PosixAIOBackend(capacity: 4, system: system)
        let error = await caughtError { try await backend.durableWrite(fd, Self.page, at: 0) } as? AsyncSyncError
        #expect(error?.code == .system && error?.errno == .ioError && error?.operation == .write && error?.step == .completion,
                "\(String(describing: error))")
        #expect(error?.isDurabilityFailure == false)
        #expect(aioFsyncs.current == 0, "no sync part after a failed write")
        #expect(try backend.clearFailure(of: fd) == false, "nothing recorded against the file")
        try await backend.durableWrite(fd, Self.page, at: 0)
        #expect(aioFsyncs.current == 1)
        await backend.shutdown()
    }

    @Test("checked: posix: shutdown() between a durable write's aio_write and its sync: the sync part still runs (engine on a disk, inline on tmpfs), the write succeeds, shutdown() returns after it, later requests are refused")
    func shutdownBetweenWriteAndSync() async throws {
        for place in ["disk", "tmpfs"] {
            let scratch = try place == "disk" ? ScratchDirectory.onDisk() : ScratchDirectory.onTmpfs()
            if place == "tmpfs", !TestEnvironment.require(scratch.fileSystemMagic == FileSystemMagic.tmpfs, "/dev/shm is not tmpfs") {
                continue
            }
            let fd = try scratch.file("data", contents: "")
            defer { try? fd.close() }
            let inWrite = Flag()
            let letGo = Flag()
            let syncs = Counter()
            var system = SystemCalls.live
            system.aioWrite = { control in
                if control.pointee.aio_fildes == fd.rawValue {
                    inWrite.raise()
                    _ = blockingEventually(30) { letGo.isRaised }
                }
                return SystemCalls.live.aioWrite(control)
            }
            system.aioFsync = { mode, control in
                if control.pointee.aio_fildes == fd.rawValue { _ = syncs.next() }
                return SystemCalls.live.aioFsync(mode, control)
            }
            system.syncNow = { mode, descriptor in
                if descriptor == fd.rawValue { _ = syncs.next() }
                return SystemCalls.live.syncNow(mode, descriptor)
            }
            let backend = try PosixAIOBackend(capacity: 4, inlineMemoryFileSystems: place == "tmpfs", system: system)
            let durable = Watched { try await backend.durableWrite(fd, Self.page, at: 0) }
            let entered = await eventually(30) { inWrite.isRaised }
            let shutdown = Watched { await backend.shutdown() }
            let refusing = await eventually(30) { !isAcceptingRequests(backend) }
            let late = await caughtError { try await backend.fdatasync(fd) } as? AsyncSyncError
            #expect(entered && refusing, "\(place)")
            #expect(late?.code == .shutDown, "\(place): a sync after shutdown(): \(String(describing: late))")
            #expect(!shutdown.isDone, "\(place): shutdown() returned before the durable write it accepted")
            letGo.raise()
            #expect(await eventually(30) { durable.isDone && shutdown.isDone }, "\(place)")
            #expect(durable.succeeded, "\(place): \(String(describing: durable.outcome))")
            #expect(syncs.current == 1, "\(place): its sync part ran \(syncs.current) times")
            #expect(try contents(fd, count: 4097) == Self.page, "\(place)")
        }
    }
    // MARK: The POSIX hub's watch list (noticed by the review, not a numbered finding)

    /// Writes the table accepts without glibc: in flight until ``release()``, then done whole.
    final class FakeWrites: @unchecked Sendable {  // state under `lock`
        private let lock = NSLock()
        private var accepted: Set<Int> = []
        private var released = false
        private var largestSuspend: CInt = 0
        private var suspends = 0

        func accept(_ control: UnsafeMutablePointer<aiocb>) -> Result<Void, Errno> {
            lock.withLock { _ = accepted.insert(Int(bitPattern: control)) }
            return .success(())
        }
        func status(_ control: UnsafePointer<aiocb>) -> AIOStatus? {
            lock.withLock { accepted.contains(Int(bitPattern: control)) ? (released ? .succeeded : .inProgress) : nil }
        }
        func result(_ control: UnsafeMutablePointer<aiocb>) -> Result<Int, Errno>? {
            lock.withLock { accepted.remove(Int(bitPattern: control)) != nil ? .success(Int(control.pointee.aio_nbytes)) : nil }
        }
        /// Notes a call's list length; whether the fake writes are still held.
        func noteSuspend(_ count: CInt) -> Bool {
            lock.withLock {
                largestSuspend = max(largestSuspend, count)
                suspends += 1
                return !released && !accepted.isEmpty
            }
        }
        func release() { lock.withLock { released = true } }
        var inFlight: Int { lock.withLock { released ? 0 : accepted.count } }
        var largest: CInt { lock.withLock { largestSuspend } }
        var suspendCalls: Int { lock.withLock { suspends } }
    }

    /// glibc's `aio_suspend(3)` puts two arrays of the list's length on the calling thread's stack
    /// (about 48 bytes an entry): the hub passed every in-flight control block of every POSIX
    /// engine, so 2 × 65 536 requests per backend at the largest capacity, and more with several
    /// backends, would overflow the hub thread's 8 MiB stack. The hub now watches at most
    /// `CompletionHub.maxWatched` of them and looks again every millisecond; it still reaps every
    /// completion, watched or not. Before, it gave 4 297 control blocks to one call here.
    @Test("a POSIX hub with more requests in flight than it watches gives aio_suspend(3) at most CompletionHub.maxWatched of them (and its doorbell), and every request completes")
    func hubWatchListIsCapped() async throws {
        let scratch = try ScratchDirectory.onDisk()
        let fd = try scratch.file("data", contents: "")
        defer { try? fd.close() }
        let fake = FakeWrites()
        let target = fd.rawValue
        var system = SystemCalls.live
        system.aioWrite = { control in
            control.pointee.aio_fildes == target ? fake.accept(control) : SystemCalls.live.aioWrite(control)
        }
        system.aioError = { control in fake.status(control) ?? SystemCalls.live.aioError(control) }
        system.aioReturn = { control in fake.result(control) ?? SystemCalls.live.aioReturn(control) }
        system.aioSuspend = { list, count, timeout in
            if fake.noteSuspend(count) {
                // The fake requests are not glibc's: a round without glibc, a millisecond long.
                usleep(1000)
                return .failure(.resourceTemporarilyUnavailable)
            }
            return SystemCalls.live.aioSuspend(list, count, timeout)
        }
        let count = CompletionHub.maxWatched + 200
        let backend = try PosixAIOBackend(capacity: count + 8, inlineMemoryFileSystems: false, system: system)
        let page = [UInt8](repeating: 0x33, count: 512)
        let writes = (0..<count).map { index in Watched { try await backend.write(fd, page, at: Int64(index) * 512) } }
        #expect(await eventually(30) { fake.inFlight == count }, "\(fake.inFlight) of \(count) writes in flight")
        let callsBefore = fake.suspendCalls
        #expect(await eventually(30) { fake.suspendCalls > callsBefore + 2 }, "the hub waits again with all of them in flight")
        fake.release()
        #expect(await eventually(30) { writes.filter(\.isDone).count == count }, "every write completes, watched or not")
        let succeeded = writes.filter(\.succeeded).count
        #expect(succeeded == count, "\(succeeded) of \(count) writes succeeded")
        #expect(fake.largest <= CInt(CompletionHub.maxWatched + 1),
                "aio_suspend(3) was given \(fake.largest) control blocks for \(count) requests in flight")
        await backend.shutdown()
    }
    /// Noticed by the review (not a numbered finding): `syncDirectory()` opened the directory of
    /// ``AsyncFile/path`` as given, so after a `chdir(2)` a relative path named another directory
    /// (or none). The directory is now resolved at open.
    @Test("syncDirectory() of a file opened at a relative path syncs its directory after the process changed its working directory")
    func relativeDirectorySyncAfterChdir() async throws {
        let scratch = try ScratchDirectory.onDisk()
        let home = try #require(system_getcwd())
        let absolute = scratch.path.isAbsolute ? scratch.path : FilePath(home).pushing(scratch.path)
        try FileManager.default.createDirectory(atPath: absolute.appending("elsewhere").string, withIntermediateDirectories: false)
        try FileManager.default.createDirectory(atPath: absolute.appending("elsewhere/sub").string, withIntermediateDirectories: false)
        #expect(chdir(absolute.string) == 0)
        defer { _ = chdir(home) }
        let log = DescriptorLog()
        let backend = HoldingBackend(log: log, holding: false)
        // "sub/file" names elsewhere/sub/file only from `elsewhere`; from the scratch directory it
        // names a directory that does not exist, and after the chdir below, "sub" is elsewhere/sub.
        #expect(chdir("elsewhere") == 0)
        let file = try AsyncFile.open("sub/file", options: [.create], backend: backend, system: log.system())
        #expect(chdir(absolute.string) == 0)
        try FileManager.default.createDirectory(atPath: absolute.appending("sub").string, withIntermediateDirectories: false)
        try await file.syncDirectory()
        try await file.close()
        let directory = try FileDescriptor.open(absolute.appending("elsewhere/sub"), .readOnly)
        let expected = try system_fstat_status(directory.rawValue).get()
        try directory.close()
        let requests = backend.requests
        #expect(requests.count == 1 && requests.first?.status == expected,
                "the fsync went to the directory that held the file at open (elsewhere/sub), not ./sub: \(requests)")
    }
}
/// ReviewFile FINDING 3's scenario, shared by its test and ReviewCancel3's: three POSIX writes on
/// two write slots. The writes at 0 and 8192 take the slots; the write at 4096 waits for one, with
/// a cancellation handler. Once the write at 8192 completes, the write at 4096 is submitted and is
/// short (the system takes 1024 bytes), and its rest meets `EAGAIN` once and is put back in line.
/// Then its task is cancelled. The write at 0 stays in flight until `letFirstGo` is raised.
struct PartlyWrittenWriteCancelled {
    let directory: ScratchDirectory
    let fd: FileDescriptor
    let backend: PosixAIOBackend
    let first: Watched<Void>
    let second: Watched<Void>
    let third: Watched<Void>
    /// Lets the write at 0 complete.
    let letFirstGo: Flag
    let shortened: Flag
    let refusedRest: Flag
    /// Whether the rest was put back and the completion thread waited again before the cancel.
    let putBack: Bool

    /// Runs the scenario up to the cancellation of the write at 4096.
    static func start() async throws -> PartlyWrittenWriteCancelled {
        let directory = try ScratchDirectory.onDisk()
        let fd = try directory.file("data", contents: "")
        let letFirstGo = Flag()   // the completion of the write at 0
        let letThirdGo = Flag()   // the completion of the write at 8192
        let shortened = Flag()
        let refusedRest = Flag()
        let settled = Flag()
        let submissions = Counter()
        var system = SystemCalls.live
        system.aioWrite = { control in
            guard control.pointee.aio_fildes == fd.rawValue else { return SystemCalls.live.aioWrite(control) }
            _ = submissions.next()
            // The write at 4096 is short: the system takes its first 1024 bytes only.
            if control.pointee.aio_offset == 4096, control.pointee.aio_nbytes == 4096, !shortened.isRaised {
                shortened.raise()
                control.pointee.aio_nbytes = 1024
            }
            // The rest of the short write (from byte 4096 + 1024) meets EAGAIN once.
            if control.pointee.aio_offset == 5120, !refusedRest.isRaised {
                refusedRest.raise()
                return .failure(.resourceTemporarilyUnavailable)
            }
            return SystemCalls.live.aioWrite(control)
        }
        system.aioError = { control in
            let status = SystemCalls.live.aioError(control)
            guard control.pointee.aio_fildes == fd.rawValue, status != .inProgress else { return status }
            if control.pointee.aio_offset == 0, !letFirstGo.isRaised { return .inProgress }
            if control.pointee.aio_offset == 8192, !letThirdGo.isRaised { return .inProgress }
            return status
        }
        system.aioSuspend = { list, count, timeout in
            // The completion thread waits again only after it handled the EAGAIN of the rest.
            if refusedRest.isRaised { settled.raise() }
            return SystemCalls.live.aioSuspend(list, count, timeout)
        }
        let backend = try PosixAIOBackend(capacity: 2, system: system)  // two write slots
        let first = Watched { try await backend.write(fd, [UInt8](repeating: 1, count: 4096), at: 0) }
        try #require(await eventually(30) { submissions.current == 1 })
        let third = Watched { try await backend.write(fd, [UInt8](repeating: 3, count: 4096), at: 8192) }
        try #require(await eventually(30) { submissions.current == 2 })
        // Both write slots are taken: this one waits for a slot, with a cancellation handler.
        let second = Watched { try await backend.write(fd, [UInt8](repeating: 2, count: 4096), at: 4096) }
        try #require(await eventually(30) { writeCounts(backend).incompleteWrites == 3 })
        letThirdGo.raise()
        let putBack = await eventually(30) { shortened.isRaised && refusedRest.isRaised && settled.isRaised }
        second.task.cancel()
        return PartlyWrittenWriteCancelled(directory: directory, fd: fd, backend: backend, first: first, second: second,
                                           third: third, letFirstGo: letFirstGo, shortened: shortened,
                                           refusedRest: refusedRest, putBack: putBack)
    }

    /// The rule, once `letFirstGo` was raised: the cancelled write, 1024 bytes of which were in the
    /// file, is written whole and succeeds; so do the others; nothing is left in flight.
    func expectWrittenWhole() async throws {
        #expect(putBack, "the scenario did not happen: short \(shortened.isRaised), EAGAIN \(refusedRest.isRaised)")
        #expect(await eventually(30) { first.isDone && second.isDone && third.isDone })
        let bytes = try contents(fd, count: 12289)
        #expect(bytes.count == 12288 && bytes[4096..<5120].allSatisfy { $0 == 2 }, "the first 1024 bytes of the cancelled write are in the file")
        #expect(second.succeeded, "a write whose first 1024 bytes are in the file returned \(String(describing: second.outcome))")
        #expect(second.succeeded == bytes[5120..<8192].allSatisfy { $0 == 2 }, "written whole exactly when it succeeded")
        #expect(first.succeeded && third.succeeded)
        #expect(writeCounts(backend) == (0, 0))
    }
}
#endif
