#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
import CAsyncFsync
import Foundation
import SystemPackage
import Testing

@testable import AsyncFsync

import Glibc

func writeCounts(_ backend: any AsyncSyncBackend) -> (heldSyncs: Int, incompleteWrites: Int) {
    switch backend {
    case let backend as LibaioBackend: backend.engine.writeCounts
    case let backend as PosixAIOBackend: backend.engine.writeCounts
    default: (-1, -1)
    }
}

/// The bytes of a file, read with `pread(2)`.
func contents(_ fd: FileDescriptor, count: Int) throws -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count)
    let read = bytes.withUnsafeMutableBytes { Glibc.pread(fd.rawValue, $0.baseAddress, count, 0) }
    guard read >= 0 else { throw Errno(rawValue: errno) }
    return Array(bytes.prefix(read))
}

extension AsyncFsyncTests {
    /// Asynchronous writes and durable writes of the engines (issue 17): through real kernels and
    /// file systems, with kernel AIO's writes held where an order has to be shown.
    @Suite struct Writes {
        init() { GlibcAIOUnderSanitizer.configure }

        static let pieces = 16
        static let piece = 4096

        static func pattern(_ index: Int) -> [UInt8] {
            (0..<piece).map { UInt8(truncatingIfNeeded: index &* 31 &+ $0 / 64) }
        }

        @Test("concurrent writes then a sync, and concurrent durable writes, land every byte (disk and tmpfs)",
              arguments: BackendKind.aio, [false, true])
        func roundTrip(kind: BackendKind, tmpfs: Bool) async throws {
            let backend = try makeBackend(kind, capacity: 4)  // fewer slots than writes: some wait
            let directory = try tmpfs ? ScratchDirectory.onTmpfs() : ScratchDirectory.onDisk()
            for durable in [false, true] {
                let fd = try directory.file(durable ? "durable" : "plain", contents: "")
                defer { try? fd.close() }
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for index in 0..<Self.pieces {
                        group.addTask {
                            let bytes = Self.pattern(index)
                            if durable {
                                try await backend.durableWrite(fd, bytes, at: Int64(index * Self.piece))
                            } else {
                                try await backend.write(fd, bytes, at: Int64(index * Self.piece))
                            }
                        }
                    }
                    try await group.waitForAll()
                }
                if !durable { try await backend.fdatasync(fd) }
                let expected = (0..<Self.pieces).flatMap(Self.pattern)
                #expect(try contents(fd, count: expected.count + 1) == expected, "\(kind), durable \(durable)")
            }
            #expect(outstanding(backend) == 0)
            await backend.shutdown()
        }

        @Test("a durable write on an O_DIRECT file is one IOCB_CMD_PWRITE with RWF_DSYNC and no separate sync; on a buffered file a write then an IOCB_CMD_FDSYNC")
        func directIsOneRequest() async throws {
            let recorder = Door()
            recorder.releaseWrites()
            let backend = try LibaioBackend(capacity: 8, system: recorder.system)
            let directory = try ScratchDirectory.onDisk()
            let path = directory.path.appending("direct").string
            let raw = Glibc.open(path, O_RDWR | O_CREAT | casyncfsync_O_DIRECT, 0o600)
            guard TestEnvironment.require(raw >= 0, "O_DIRECT is refused on \(directory.path) (errno \(errno))") else { return }
            let fd = FileDescriptor(rawValue: raw)
            defer { try? fd.close() }
            let alignment = try DirectIOAlignment.of(fd)
            var buffer = try AlignedBuffer(byteCount: 4 * alignment.offsetAlignment, for: alignment)
            buffer.withUnsafeMutableBytes { _ = $0.initializeMemory(as: UInt8.self, repeating: 0x5a) }
            try await backend.durableWrite(fd, buffer, at: 0)
            #expect(recorder.log.filter { $0.hasPrefix("submit") } == ["submit write"])
            #expect(recorder.state.withLock { $0.writeFlags } == [2], "RWF_DSYNC is 2")
            let reader = try FileDescriptor.open(FilePath(path), .readOnly)  // O_DIRECT reads need aligned memory
            defer { try? reader.close() }
            #expect(try contents(reader, count: 4 * alignment.offsetAlignment) == [UInt8](repeating: 0x5a, count: 4 * alignment.offsetAlignment))

            let buffered = try directory.file("buffered", contents: "")
            defer { try? buffered.close() }
            try await backend.durableWrite(buffered, [UInt8](repeating: 1, count: 100), at: 0)
            #expect(Array(recorder.log.filter { $0.hasPrefix("submit") }.dropFirst()) == ["submit write", "submit fdsync"])
            #expect(recorder.state.withLock { $0.writeFlags.last } == 0)
            await backend.shutdown()
        }

        @Test("a sync waits for the writes accepted before it, in flight in the kernel, and not for a write accepted after it")
        func syncCoversEarlierWrites() async throws {
            let recorder = Door()
            let backend = try LibaioBackend(capacity: 8, system: recorder.system)
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            let first = Task { try await backend.write(fd, [UInt8](repeating: 1, count: 4096), at: 0) }
            #expect(await eventually(30) { recorder.heldWriteCount == 1 }, "the first write reached the kernel's door")
            let sync = Task { try await backend.fdatasync(fd) }
            #expect(await eventually(30) { writeCounts(backend).heldSyncs == 1 }, "the sync is held for the write")
            let later = Task { try await backend.write(fd, [UInt8](repeating: 2, count: 4096), at: 4096) }
            #expect(await eventually(30) { recorder.heldWriteCount == 2 }, "a write after the sync reached the door")
            #expect(!recorder.log.contains("submit fdsync"), "no sync submitted while its write is in flight")
            recorder.releaseWrites(1, stopHolding: false)  // the first write only: the sync goes on, the later write is still held
            try await first.value
            try await sync.value
            let log = recorder.log
            let reaped = try #require(log.firstIndex(of: "reap write"))
            let synced = try #require(log.firstIndex(of: "submit fdsync"))
            #expect(reaped < synced, "the sync was submitted after the write's completion: \(log)")
            #expect(recorder.heldWriteCount == 1, "the write accepted after the sync did not hold it")
            recorder.releaseWrites()
            try await later.value
            #expect(try contents(fd, count: 8192) == [UInt8](repeating: 1, count: 4096) + [UInt8](repeating: 2, count: 4096))
            await backend.shutdown()
        }

        @Test("a write waiting for a slot is cancelled before it reaches the system; a held sync is cancelled too")
        func cancellation() async throws {
            let recorder = Door()
            let backend = try LibaioBackend(capacity: 1, system: recorder.system)
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            let first = Task { try await backend.write(fd, [UInt8](repeating: 1, count: 4096), at: 0) }
            #expect(await eventually(30) { recorder.heldWriteCount == 1 })
            let second = Task { try await backend.write(fd, [UInt8](repeating: 2, count: 4096), at: 4096) }
            #expect(await eventually(30) { writeCounts(backend).incompleteWrites == 2 })
            let sync = Task { try await backend.fdatasync(fd) }
            #expect(await eventually(30) { writeCounts(backend).heldSyncs == 1 })
            second.cancel()
            sync.cancel()
            #expect(await caughtError { try await second.value } is CancellationError)
            #expect(await caughtError { try await sync.value } is CancellationError)
            recorder.releaseWrites()
            try await first.value
            #expect(recorder.log.filter { $0 == "submit write" || $0 == "hold write" }.count == 2, "only the first write reached the system: \(recorder.log)")
            #expect(try contents(fd, count: 8192) == [UInt8](repeating: 1, count: 4096))
            #expect(writeCounts(backend) == (0, 0))
            await backend.shutdown()
        }

        @Test("shutdown waits for a write in flight, which succeeds; later writes are refused with shutDown")
        func shutdownDrainsWrites() async throws {
            let recorder = Door()
            let backend = try LibaioBackend(capacity: 2, system: recorder.system)
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            let write = Task { try await backend.durableWrite(fd, [UInt8](repeating: 7, count: 4096), at: 0) }
            #expect(await eventually(30) { recorder.heldWriteCount == 1 })
            let finished = Flag()
            let shutdown = Task {
                await backend.shutdown()
                finished.raise()
            }
            #expect(await eventually(30) { !isAcceptingRequests(backend) })
            let refused = await caughtError { try await backend.write(fd, [UInt8](repeating: 8, count: 1), at: 0) }
            #expect((refused as? AsyncSyncError)?.code == .shutDown)
            #expect((refused as? AsyncSyncError)?.operation == .write)
            #expect(!finished.isRaised, "shutdown() waits for the write")
            recorder.releaseWrites()
            try await write.value  // its sync too, after the shutdown began
            await shutdown.value
            #expect(try contents(fd, count: 4096) == [UInt8](repeating: 7, count: 4096))
        }

        @Test("GroupCommit: a sync of a descriptor with a write in flight waits for it (the wrapped backend's rule); another descriptor of the file is not held by it")
        func groupCommitWaitsForWrites() async throws {
            let recorder = Door()
            let wrapped = try LibaioBackend(capacity: 8, system: recorder.system)
            let group = GroupCommit(wrapping: wrapped)
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            let other = try FileDescriptor.open(directory.path.appending("data"), .writeOnly)
            defer { try? other.close() }
            let write = Task { try await group.write(fd, [UInt8](repeating: 3, count: 4096), at: 0) }
            #expect(await eventually(30) { recorder.heldWriteCount == 1 })
            #expect(wrapped.hasIncompleteWrites(fd) && !wrapped.hasIncompleteWrites(other))
            let sync = Task { try await group.fdatasync(fd) }
            #expect(await eventually(30) { writeCounts(wrapped).heldSyncs == 1 }, "held in the wrapped backend")
            try await group.fdatasync(other)  // accepted no write: not held
            #expect(writeCounts(wrapped).heldSyncs == 1)
            recorder.releaseWrites()
            try await write.value
            try await sync.value
            let log = recorder.log
            let reaped = try #require(log.firstIndex(of: "reap write"))
            #expect(log[reaped...].contains("submit fdsync"), "a sync after the write's completion: \(log)")
            await group.shutdown()
        }

        @Test("bad input: a negative offset, or an end past the largest file offset, is refused before anything is submitted; an empty write succeeds",
              arguments: BackendKind.aio)
        func badInput(kind: BackendKind) async throws {
            let backend = try makeBackend(kind)
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            let error = await caughtError { try await backend.write(fd, [UInt8](repeating: 1, count: 10), at: -1) }
            #expect((error as? AsyncSyncError)?.errno == .invalidArgument)
            #expect((error as? AsyncSyncError)?.step == .request)
            // An end past the largest file offset: the kernel's EINVAL, at the request, as on the
            // portable backend (before, the engines submitted it and the kernel refused it there).
            for (offset, durable) in [(Int64.max - 1, false), (Int64.max - 9, true), (Int64.max, true)] {
                let page = [UInt8](repeating: 1, count: 10)
                let past = await caughtError {
                    if durable { try await backend.durableWrite(fd, page, at: offset) } else { try await backend.write(fd, page, at: offset) }
                } as? AsyncSyncError
                #expect(past?.errno == .invalidArgument && past?.step == .request
                            && past?.message.contains("past the largest file offset") == true,
                        "\(kind), offset \(offset), durable \(durable): \(String(describing: past))")
                #expect(past?.operation == (durable ? .durableWrite : .write))
            }
            try await backend.write(fd, from: UnsafeRawBufferPointer(start: nil, count: 0), at: 0)
            try await backend.durableWrite(fd, from: UnsafeRawBufferPointer(start: nil, count: 0), at: 0)
            let closed = await caughtError {
                try await backend.write(FileDescriptor(rawValue: 9_999), [UInt8](repeating: 1, count: 10), at: 0)
            }
            #expect((closed as? AsyncSyncError)?.errno == .badFileDescriptor, "\(String(describing: closed))")
            #expect((closed as? AsyncSyncError)?.isDurabilityFailure == false)
            await backend.shutdown()
        }
    }
}
#endif
