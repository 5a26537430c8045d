import Foundation
import Synchronization
import SystemPackage
import Testing

@testable import AsyncFsync
@testable import WriteAheadLog

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif canImport(Musl)
import Musl
#endif

/// The live system-call table with gates on the portable backend's blocking calls: the next sync
/// of one descriptor, and every `pwrite(2)` while writes are held. A gate, not a timing: a call
/// waits in it until the test opens it.
final class PortableGates: Sendable {
    struct State {
        var holdNextSyncOf: CInt?
        var syncHeld = false
        var syncStarts: [CInt] = []
        var holdWrites = false
        var writeStarted = false
        var writeEnded = false
    }

    let state = Locked(State())

    func holdNextSync(of fd: FileDescriptor) { state.withLock { $0.holdNextSyncOf = fd.rawValue } }
    func releaseSync() { state.withLock { $0.syncHeld = false } }
    func holdWrites() { state.withLock { $0.holdWrites = true } }
    func releaseWrites() { state.withLock { $0.holdWrites = false } }
    var syncHeld: Bool { state.withLock { $0.syncHeld } }
    var writeStarted: Bool { state.withLock { $0.writeStarted } }
    var writeEnded: Bool { state.withLock { $0.writeEnded } }
    var syncStarts: [CInt] { state.withLock { $0.syncStarts } }

    var system: SystemCalls {
        var system = SystemCalls.live
        system.durableSync = { [self] mode, fd in
            let hold = state.withLock { state -> Bool in
                state.syncStarts.append(fd)
                guard state.holdNextSyncOf == fd else { return false }
                state.holdNextSyncOf = nil
                state.syncHeld = true
                return true
            }
            if hold { while state.withLock({ $0.syncHeld }) { usleep(500) } }
            return SystemCalls.live.durableSync(mode, fd)
        }
        system.pwrite = { [self] fd, buffer, count, offset in
            state.withLock { $0.writeStarted = true }
            while state.withLock({ $0.holdWrites }) { usleep(500) }
            let result = SystemCalls.live.pwrite(fd, buffer, count, offset)
            state.withLock { $0.writeEnded = true }
            return result
        }
        return system
    }
}

/// Forwards to a backend; its durable write number `target` (1-based) waits until the test lets it
/// go, then fails with `EIO` as an `RWF_DSYNC` write does, after writing part of its buffer for
/// real: nothing, its first block, or its second block (a torn write: sectors written whole,
/// others not).
final class FailingDurableWrite: AsyncSyncBackend {
    enum Torn: String, CaseIterable, CustomTestStringConvertible, Sendable {
        case nothing, firstBlock, secondBlock
        var testDescription: String { rawValue }
    }

    let wrapped: any AsyncSyncBackend
    let target: Int
    let torn: Torn
    let block: Int
    private let count = Counter()
    let arrived = Flag()
    let release = Flag()
    var kind: BackendKind { wrapped.kind }

    init(wrapping backend: any AsyncSyncBackend, target: Int, torn: Torn, block: Int) {
        wrapped = backend
        self.target = target
        self.torn = torn
        self.block = block
    }

    func sync(_ fd: FileDescriptor, mode: SyncMode) async throws { try await wrapped.sync(fd, mode: mode) }
    func write(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws {
        try await wrapped.write(fd, from: buffer, at: offset)
    }

    func durableWrite(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws {
        guard count.next() == target else { return try await wrapped.durableWrite(fd, from: buffer, at: offset) }
        arrived.raise()
        // A gate the test opens (polled: no timing is asserted).
        while !release.isRaised { try? await Task.sleep(for: .milliseconds(1)) }
        switch torn {
        case .nothing: break
        case .firstBlock:
            try await wrapped.write(fd, from: UnsafeRawBufferPointer(rebasing: buffer[..<block]), at: offset)
        case .secondBlock:
            precondition(buffer.count >= 2 * block, "the failing write spans two blocks")
            try await wrapped.write(fd, from: UnsafeRawBufferPointer(rebasing: buffer[block..<(2 * block)]), at: offset + Int64(block))
        }
        throw AsyncSyncError(code: .system, errno: .ioError, operation: .durableWrite, step: .completion, backend: kind,
                             descriptor: fd, systemCall: "io_getevents", message: "injected by the test")
    }

    func clearFailure(of fd: FileDescriptor) throws -> Bool { try wrapped.clearFailure(of: fd) }
    func shutdown() async { await wrapped.shutdown() }
}

extension AsyncFsyncTests {
    /// An adversarial review of durable writes through `GroupCommit` (its use of the wrapped
    /// backend's write tracking) and of the reference write-ahead log's `O_DIRECT` mode. Each
    /// FINDING test failed on a8ef9e0; "checked:" tests pin a rule that had no test.
    @Suite struct ReviewGroup {
        init() { GlibcAIOUnderSanitizer.configure }

        // FINDING 1: GroupCommit asks the wrapped backend whether the request's descriptor has
        // writes in flight (`WriteTracking`), because it may sync the file through another
        // descriptor, whose sync does not wait for them. Only the two engine backends (and the
        // shared backend over one of them) answer; PortableBackend, whose syncs wait for the writes
        // of their descriptor just as the engines' do, does not conform, so GroupCommit takes "no
        // writes" for every descriptor. A sync of descriptor B then joins a batch synced through
        // descriptor A and is acknowledged while a write through B accepted before it is still
        // running: the acknowledged sync did not cover that write.
        @Test("FINDING 1: GroupCommit over PortableBackend: a sync is not acknowledged, through another descriptor's sync, before a write through its own descriptor accepted before it has completed")
        func portableWritesAreTracked() async throws {
            let gates = PortableGates()
            let system = gates.system
            let backend = try PortableBackend(threads: 4, system: system)
            let group = GroupCommit(wrapping: backend, system: system)
            let directory = try ScratchDirectory.onDisk()
            let a = try directory.file("data", contents: "")
            let b = try FileDescriptor.open(directory.path.appending("data"), .readWrite)
            defer { try? a.close(); try? b.close() }
            let bytes = OwnedBytes(Array("record through b".utf8))
            defer { bytes.free() }

            // A batch of the file syncs through a (held), so that the next batch gathers.
            gates.holdNextSync(of: a)
            let first = Watched { try await group.sync(a, mode: .fdatasync) }
            try #require(await eventually(30) { gates.syncHeld }, "the first batch's sync runs (held)")
            let second = Watched { try await group.sync(a, mode: .fdatasync) }
            try #require(await eventually(30) { group.queuedCount == 1 }, "the second request waits for the next batch; it will lead it")
            // A write through b, accepted and running (held in pwrite), then a sync of b.
            gates.holdWrites()
            let write = Watched { try await group.write(b, from: bytes.bytes, at: 0) }
            try #require(await eventually(30) { gates.writeStarted })
            let own = Watched { () async throws -> Bool in
                try await group.sync(b, mode: .fdatasync)
                return gates.writeEnded  // whether the write it must cover had completed
            }
            // Either it joined the next batch (behind a's request), or it went to the backend,
            // which holds it until the write completed.
            try #require(await eventually(30) { group.queuedCount == 2 || backend.pool.heldCount == 1 })
            gates.releaseSync()
            #expect(await eventually(30) { second.isDone && (own.isDone || backend.pool.heldCount == 1) })
            #expect(!own.isDone, "the sync of b was acknowledged (\(String(describing: own.outcome))) by a's sync while b's write accepted before it still ran (syncs: \(gates.syncStarts))")

            gates.releaseWrites()
            #expect(await eventually(30) { first.isDone && second.isDone && write.isDone && own.isDone })
            #expect(first.succeeded && second.succeeded && write.succeeded)
            if case .success(let covered) = own.outcome {
                #expect(covered, "acknowledged before the write it covers completed")
            } else {
                Issue.record("the sync of b failed: \(String(describing: own.error))")
            }
            await group.shutdown()
        }

        // checked: the write-ahead log's O_DIRECT mode when the durable write that rewrites the
        // last partial block fails (EIO), also torn: the append that led it gets the error, the
        // appends whose frames it carried (waiting for it) are not acknowledged, every later append
        // is refused (.poisoned), close makes no further write, and a reopened log replays every
        // acknowledged record and, after them, only intact records in LSN order (never a torn one,
        // never one beyond a gap); appends then go on from the recovered end.
        @Test("checked: WAL direct mode: a failed (torn) rewrite of the last partial block fails its appends and poisons the log; replay surfaces no torn record",
              arguments: FailingDurableWrite.Torn.allCases)
        func walDirectFailedRewrite(torn: FailingDurableWrite.Torn) async throws {
            let scratch = try ScratchDirectory.onDisk()
            let directory = scratch.path.appending("wal")
            let portable = try PortableBackend(threads: 2)
            // The block size the log will use: the file system's O_DIRECT offset alignment.
            let probe = try AsyncFile.open(scratch.path.appending("probe"), options: [.create, .direct], backend: portable)
            let block = probe.directIOAlignment?.offsetAlignment ?? 4096
            try await probe.close()
            let failing = FailingDurableWrite(wrapping: portable, target: 2, torn: torn, block: block)
            let options = WriteAheadLogOptions(segmentSize: 1 << 20, durability: .groupCommit(failing), writeMode: .direct)
            let payload: @Sendable (Int) -> [UInt8] = { index in [UInt8](repeating: UInt8(65 + index), count: block * 3 / 4) }

            let log = try await WriteAheadLog.open(directory: directory, options: options)
            let first = try await log.append(payload(0))  // durable write 1: block 0, padded
            #expect(first.rawValue == 1)
            // Durable write 2 (the record 2, spanning blocks 0 and 1) is held; records 3 and 4 join
            // the tail meanwhile and wait for it.
            let leader = Watched { try await log.append(payload(1)) }
            try #require(await eventually(30) { failing.arrived.isRaised })
            let second = Watched { try await log.append(payload(2)) }
            let third = Watched { try await log.append(payload(3)) }
            var reserved = false
            for _ in 0..<30_000 where !reserved {
                reserved = await log.nextRecord.rawValue == 5
                if !reserved { try await Task.sleep(for: .milliseconds(1)) }
            }
            try #require(reserved, "records 3 and 4 took their places behind the held durable write")
            failing.release.raise()
            #expect(await eventually(30) { leader.isDone && second.isDone && third.isDone })
            #expect((leader.error as? AsyncSyncError)?.errno == .ioError, "\(String(describing: leader.outcome))")
            #expect(!second.succeeded && !third.succeeded, "an append whose frame the failed write carried was acknowledged: \(String(describing: second.outcome)) \(String(describing: third.outcome))")
            let later = await caughtError { _ = try await log.append(payload(4)) } as? WriteAheadLogError
            #expect(later?.code == .poisoned, "\(String(describing: later))")
            try await log.close()
            // The torn part really is in the file (the recovery below must cut it).
            let segment = try Segment.readAll(directory.appending(Segment.name(firstLSN: 1)))
            let recordEnd = Frame.headerSize + payload(0).count
            switch torn {
            case .nothing: #expect(segment.count == block && segment[recordEnd...].allSatisfy { $0 == 0 })
            case .firstBlock: #expect(segment.count >= block && segment[recordEnd..<block].contains { $0 != 0 })
            case .secondBlock: #expect(segment.count == 2 * block && segment[block...].contains { $0 != 0 } && segment[recordEnd..<block].allSatisfy { $0 == 0 })
            }

            var replayed: [LogRecord] = []
            let fresh = try PortableBackend(threads: 2)
            let reopened = try await WriteAheadLog.open(
                directory: directory, options: WriteAheadLogOptions(segmentSize: 1 << 20, durability: .groupCommit(fresh), writeMode: .direct)
            ) { replayed.append($0) }
            #expect(replayed.first?.lsn.rawValue == 1 && replayed.first?.payload == payload(0), "the acknowledged record is replayed")
            for (index, record) in replayed.enumerated() {
                #expect(record.lsn.rawValue == UInt64(index + 1) && record.payload == payload(index),
                        "replayed record \(record.lsn.rawValue) is not the intact record appended there")
            }
            #expect(replayed.count <= 2, "only a record the failed write carried whole could be replayed (torn \(torn)): \(replayed.map(\.lsn.rawValue))")
            let next = try await reopened.append(payload(replayed.count))
            #expect(next.rawValue == UInt64(replayed.count + 1))
            try await reopened.close()
            var again: [LogRecord] = []
            let third2 = try await WriteAheadLog.open(
                directory: directory, options: WriteAheadLogOptions(segmentSize: 1 << 20, durability: .groupCommit(fresh), writeMode: .direct)
            ) { again.append($0) }
            #expect(again.map(\.lsn.rawValue) == Array(1...UInt64(replayed.count + 1)))
            #expect(again.last?.payload == payload(replayed.count))
            try await third2.close()
            await fresh.shutdown()
            await portable.shutdown()
        }

        #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
        @Test("FINDING 1b: a GroupCommit wrapped in a GroupCommit: the outer group learns of the writes in flight in the backend under the inner one")
        func nestedGroupTellsOfWrites() async throws {
            let door = Door()
            let backend = try LibaioBackend(capacity: 4, system: door.system)
            let inner = GroupCommit(wrapping: backend, system: door.system)
            let outer = GroupCommit(wrapping: inner, system: door.system)
            let directory = try ScratchDirectory.onDisk()
            let a = try directory.file("data", contents: "")
            let b = try FileDescriptor.open(directory.path.appending("data"), .readWrite)
            defer { try? a.close(); try? b.close() }
            let bytes = OwnedBytes(Array("record through b".utf8))
            defer { bytes.free() }

            door.holdSyncs(1)
            let first = Watched { try await outer.sync(a, mode: .fdatasync) }
            try #require(await eventually(30) { door.heldSyncCount == 1 }, "the first batch's sync is in flight (held)")
            let second = Watched { try await outer.sync(a, mode: .fdatasync) }
            try #require(await eventually(30) { outer.queuedCount == 1 })
            let write = Watched { try await outer.write(b, from: bytes.bytes, at: 0) }
            try #require(await eventually(30) { door.heldWriteCount == 1 }, "b's write is in flight (held)")
            let own = Watched { try await outer.sync(b, mode: .fdatasync) }
            try #require(await eventually(30) { outer.queuedCount == 2 || writeCounts(backend).heldSyncs == 1 })
            door.releaseSyncs()
            #expect(await eventually(30) { second.isDone && (own.isDone || writeCounts(backend).heldSyncs == 1) })
            #expect(!own.isDone, "the sync of b was acknowledged (\(String(describing: own.outcome))) through a's sync while b's write accepted before it was in flight")
            door.releaseWrites()
            #expect(await eventually(30) { first.isDone && second.isDone && write.isDone && own.isDone }, "\(door.log)")
            #expect(first.succeeded && second.succeeded && write.succeeded && own.succeeded)
            await outer.shutdown()
        }

        // FINDING 2: a durable write on a memory file system (the inline path, on by default in
        // both engine backends' public initializers and in AsyncSync's backends) makes its write
        // through the engine, then its sync part inline (`InlineSync.sync`), which begins with
        // `Task.checkCancellation()`. A task cancelled after the write was handed to the system
        // therefore gets `CancellationError`, which the API documents as "cancelled before the
        // write was handed to the system (nothing was written)", while its bytes are in the file.
        // A caller that trusts that (re-queues the record, reuses the offset, or counts the
        // record as absent at recovery) duplicates or misreads it. The engine's own path (the sync
        // part of a `thenSync` durable write) and the portable backend never abandon the sync part
        // once the write was taken (docs/errors.md, portable table). The same check is met on the
        // inline path's engine detour (`syncAfterWrite` with writes pending: `AIOEngine.sync`'s
        // `checkCancellation`) and on the POSIX fallback path.
        @Test("FINDING 2: a durable write on tmpfs (inline sync part) cancelled after its write was handed to the system does not throw CancellationError: its bytes are in the file")
        func cancelledAfterHandOverOnMemoryFileSystem() async throws {
            let door = Door()
            let backend = try LibaioBackend(capacity: 4, inlineMemoryFileSystems: true, system: door.system)
            let group = GroupCommit(wrapping: backend, system: door.system)
            let directory = try ScratchDirectory.onTmpfs()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            let record = Array("a record".utf8)
            let bytes = OwnedBytes(record)
            defer { bytes.free() }

            let durable = Watched { try await group.durableWrite(fd, from: bytes.bytes, at: 0) }
            try #require(await eventually(30) { door.heldWriteCount == 1 }, "io_submit(2) accepted the write (held at the kernel's door)")
            durable.task.cancel()
            door.releaseWrites()
            #expect(await eventually(30) { durable.isDone }, "\(door.log)")
            let contents = [UInt8](try Data(contentsOf: URL(fileURLWithPath: directory.path.appending("data").string)))
            #expect(contents == record, "the write reached the file")
            #expect(!(durable.error is CancellationError), "CancellationError (\"nothing was written\") for a durable write whose bytes are in the file")
            #expect(durable.succeeded, "\(String(describing: durable.error))")
            await group.shutdown()
        }

        @Test("FINDING 2b: the same with another write of the descriptor in flight (the sync part detours through the engine, which holds it): no CancellationError, and it covers that write")
        func cancelledAfterHandOverWithWritesPending() async throws {
            let door = Door()
            let backend = try LibaioBackend(capacity: 4, inlineMemoryFileSystems: true, system: door.system)
            let group = GroupCommit(wrapping: backend, system: door.system)
            let directory = try ScratchDirectory.onTmpfs()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            let record = OwnedBytes(Array("a record".utf8))
            let other = OwnedBytes(Array("another".utf8))
            defer { record.free(); other.free() }

            let durable = Watched { try await group.durableWrite(fd, from: record.bytes, at: 0) }
            try #require(await eventually(30) { door.heldWriteCount == 1 }, "the durable write's write is in flight")
            let write = Watched { try await group.write(fd, from: other.bytes, at: 100) }
            try #require(await eventually(30) { door.heldWriteCount == 2 }, "a later write of the descriptor is in flight")
            durable.task.cancel()
            door.releaseWrites(1, stopHolding: false)  // the durable write's write completes first
            #expect(await eventually(30) { durable.isDone || backend.engine.writeCounts.heldSyncs == 1 }, "\(door.log)")
            #expect(!(durable.error is CancellationError), "CancellationError for a durable write whose bytes are in the file")
            door.releaseWrites()
            #expect(await eventually(30) { durable.isDone && write.isDone }, "\(door.log)")
            #expect(write.succeeded)
            #expect(durable.succeeded, "\(String(describing: durable.error))")
            await group.shutdown()
        }

        @Test("FINDING 2c: the same on a file system without AIO fsync (the sync part served by the POSIX fallback after kernel AIO refused it): no CancellationError")
        func cancelledAfterHandOverThroughFallback() async throws {
            let door = Door()
            let backend = try LibaioBackend(capacity: 4, system: door.system)
            let group = GroupCommit(wrapping: backend, system: door.system)
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            door.refuseSyncs(of: fd)  // this file system has no AIO fsync
            let record = Array("a record".utf8)
            let bytes = OwnedBytes(record)
            defer { bytes.free() }

            let durable = Watched { try await group.durableWrite(fd, from: bytes.bytes, at: 0) }
            try #require(await eventually(30) { door.heldWriteCount == 1 }, "io_submit(2) accepted the write (held at the kernel's door)")
            durable.task.cancel()
            door.releaseWrites()
            #expect(await eventually(30) { durable.isDone }, "\(door.log)")
            #expect(door.log.contains("EINVAL fdsync"), "kernel AIO refused the sync part: \(door.log)")
            let contents = [UInt8](try Data(contentsOf: URL(fileURLWithPath: directory.path.appending("data").string)))
            #expect(contents == record, "the write reached the file")
            #expect(!(durable.error is CancellationError), "CancellationError for a durable write whose bytes are in the file")
            #expect(durable.succeeded, "\(String(describing: durable.error))")
            await group.shutdown()
        }
        #endif
    }
}
