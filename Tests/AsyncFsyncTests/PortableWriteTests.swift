import Foundation
import Synchronization
import SystemPackage
import Testing

@testable import AsyncFsync

/// The live system-call table with the portable backend's `pwrite(2)` and sync observed: a log of
/// their starts and ends, gates that hold the write at a given offset until released, a cap on
/// each call's count (short writes), injected `EINTR`, and sync errnos for chosen descriptors.
final class WriteProbe: Sendable {
    struct State {
        var log: [String] = []
        var heldOffsets: Set<Int64> = []
        var startedOffsets: [Int64] = []
        var pwriteCalls = 0
        var syncCalls = 0
        /// At most this many bytes per `pwrite(2)` call.
        var chunk: Int?
        /// Answer the next calls with EINTR (nothing written).
        var interruptions = 0
        /// Answer the next call with 0 bytes written.
        var zeroWrites = 0
        /// The next sync of a descriptor fails with this errno (once).
        var syncErrnos: [CInt: Errno] = [:]
    }

    let state = Locked(State())

    func hold(_ offset: Int64) { state.withLock { _ = $0.heldOffsets.insert(offset) } }
    func release(_ offset: Int64) { state.withLock { _ = $0.heldOffsets.remove(offset) } }
    func started(_ offset: Int64) -> Bool { state.withLock { $0.startedOffsets.contains(offset) } }
    var log: [String] { state.withLock { $0.log } }
    var pwriteCalls: Int { state.withLock { $0.pwriteCalls } }
    var syncCalls: Int { state.withLock { $0.syncCalls } }

    var system: SystemCalls {
        var system = SystemCalls.live
        system.pwrite = { [self] fd, buffer, count, offset in
            let answer = state.withLock { state -> Result<Int, Errno>? in
                state.pwriteCalls += 1
                state.startedOffsets.append(offset)
                if state.interruptions > 0 {
                    state.interruptions -= 1
                    return .failure(.interrupted)
                }
                if state.zeroWrites > 0 {
                    state.zeroWrites -= 1
                    return .success(0)
                }
                return nil
            }
            if let answer { return answer }
            // A gate, not a timing: the write waits here until the test releases its offset.
            while state.withLock({ $0.heldOffsets.contains(offset) }) { usleep(500) }
            let capped = min(count, state.withLock { $0.chunk } ?? count)
            let result = SystemCalls.live.pwrite(fd, buffer, capped, offset)
            state.withLock { $0.log.append("write @\(offset) ends") }
            return result
        }
        system.durableSync = { [self] mode, fd in
            let injected = state.withLock { state -> Errno? in
                state.syncCalls += 1
                state.log.append("sync fd\(fd) starts")
                return state.syncErrnos.removeValue(forKey: fd)
            }
            let result = injected.map { .failure($0) } ?? SystemCalls.live.durableSync(mode, fd)
            state.withLock { $0.log.append("sync fd\(fd) ends") }
            return result
        }
        return system
    }
}

extension AsyncFsyncTests {
    /// ``PortableBackend/write(_:from:at:)`` and ``PortableBackend/durableWrite(_:from:at:)`` on
    /// real files and real threads; the order of syncs and writes held with gates in the
    /// system-call table (no sleeps, no timing).
    @Suite struct PortableWrites {
        /// The bytes of the file at `path`.
        static func contents(_ path: FilePath) throws -> [UInt8] {
            [UInt8](try Data(contentsOf: URL(fileURLWithPath: path.string)))
        }

        static func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

        /// Writes `bytes` through the backend from memory that stays valid until the call returns.
        static func write(_ backend: any AsyncSyncBackend, _ fd: FileDescriptor, _ bytes: [UInt8], at offset: Int64, durable: Bool = false) async throws {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 16)
            defer { buffer.deallocate() }
            buffer.copyBytes(from: bytes)
            if durable {
                try await backend.durableWrite(fd, from: UnsafeRawBufferPointer(buffer), at: offset)
            } else {
                try await backend.write(fd, from: UnsafeRawBufferPointer(buffer), at: offset)
            }
        }

        static func write(_ backend: any AsyncSyncBackend, _ fd: FileDescriptor, _ text: String, at offset: Int64, durable: Bool = false) async throws {
            try await write(backend, fd, bytes(text), at: offset, durable: durable)
        }

        /// A new empty file in `directory`, opened read-write.
        static func emptyFile(_ directory: ScratchDirectory, _ name: String = "data") throws -> FileDescriptor {
            try directory.file(name, contents: "")
        }

        @Test("write and durableWrite put every byte at its offset, on the disk and on tmpfs", arguments: ["disk", "tmpfs"])
        func writesAtOffsets(where place: String) async throws {
            let directory = try place == "disk" ? ScratchDirectory.onDisk() : ScratchDirectory.onTmpfs()
            let fd = try Self.emptyFile(directory)
            defer { try? fd.close() }
            let backend = try PortableBackend(threads: 2)
            try await Self.write(backend, fd, "hello", at: 0)
            try await Self.write(backend, fd, "world", at: 10)
            try await Self.write(backend, fd, "durable", at: 5, durable: true)
            try await Self.write(backend, fd, [], at: 100)  // nothing to write
            #expect(try Self.contents(directory.path.appending("data")) == Self.bytes("hellodurablerld"))
            await backend.shutdown()
        }

        @Test("a short count is continued from where it stopped, and EINTR is made again, until every byte is written")
        func shortWritesContinued() async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try Self.emptyFile(directory)
            defer { try? fd.close() }
            let probe = WriteProbe()
            probe.state.withLock { $0.chunk = 7; $0.interruptions = 2 }
            let backend = try PortableBackend(threads: 1, system: probe.system)
            let data = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            try await Self.write(backend, fd, data, at: 3)
            #expect(try Self.contents(directory.path.appending("data")) == [0, 0, 0] + data)
            #expect(probe.pwriteCalls == 2 + (1000 + 6) / 7, "two interrupted calls, then 7 bytes a call")
            probe.state.withLock { $0.interruptions = 3 }  // in the middle of a durable write too
            try await Self.write(backend, fd, data, at: 1003, durable: true)
            #expect(try Self.contents(directory.path.appending("data")) == [0, 0, 0] + data + data)
            #expect(probe.syncCalls == 1)
            await backend.shutdown()
        }

        @Test("a pwrite(2) that writes nothing without an error fails the write (EIO) instead of looping; so do 17 EINTR in a row")
        func noProgress() async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try Self.emptyFile(directory)
            defer { try? fd.close() }
            let probe = WriteProbe()
            let backend = try PortableBackend(threads: 1, system: probe.system)
            probe.state.withLock { $0.zeroWrites = 1 }
            let zero = await caughtError { try await Self.write(backend, fd, "abc", at: 0) } as? AsyncSyncError
            #expect(zero?.code == .system && zero?.errno == .ioError && zero?.operation == .write && zero?.step == .completion)
            #expect(zero?.systemCall == "pwrite" && zero?.message.contains("0 bytes") == true, "\(String(describing: zero))")
            probe.state.withLock { $0.interruptions = PortableThreadPool.maximumInterruptedRetries + 1 }
            let interrupted = await caughtError { try await Self.write(backend, fd, "abc", at: 0) } as? AsyncSyncError
            #expect(interrupted?.errno == .interrupted && interrupted?.operation == .write)
            #expect(interrupted?.isDurabilityFailure == false)
            await backend.shutdown()
        }

        @Test("a negative offset, or one whose end overflows, is EINVAL at the request; nothing reaches the system")
        func invalidOffsets() async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try Self.emptyFile(directory)
            defer { try? fd.close() }
            let probe = WriteProbe()
            let backend = try PortableBackend(threads: 1, system: probe.system)
            for (offset, durable) in [(Int64(-1), false), (-4096, true), (Int64.max - 1, false), (Int64.max, true)] {
                let error = await caughtError {
                    try await Self.write(backend, fd, "abc", at: offset, durable: durable)
                } as? AsyncSyncError
                #expect(error?.code == .system && error?.errno == .invalidArgument && error?.step == .request, "\(offset)")
                #expect(error?.operation == (durable ? .durableWrite : .write) && error?.backend == .portable && error?.descriptor == fd)
            }
            #expect(probe.pwriteCalls == 0 && probe.syncCalls == 0)
            await backend.shutdown()
        }

        @Test("a sync waits for the writes of its descriptor accepted before it, even with idle threads, and starts only once they have ended")
        func syncCoversEarlierWrites() async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try Self.emptyFile(directory)
            let other = try Self.emptyFile(directory, "other")
            defer { try? fd.close(); try? other.close() }
            let probe = WriteProbe()
            let backend = try PortableBackend(threads: 4, system: probe.system)
            probe.hold(0)
            let first = Task { try await Self.write(backend, fd, "first", at: 0) }
            try await waitUntil { probe.started(0) }
            let sync = Task { try await backend.fdatasync(fd) }
            try await waitUntil { backend.pool.heldCount == 1 }
            // Another descriptor's sync is not held by this write; it runs on an idle thread.
            try await backend.fsync(other)
            #expect(probe.syncCalls == 1 && backend.pool.heldCount == 1, "the sync of fd did not start while its earlier write runs")
            probe.release(0)
            try await first.value
            try await sync.value
            let log = probe.log
            let written = log.firstIndex(of: "write @0 ends")
            let synced = log.firstIndex(of: "sync fd\(fd.rawValue) starts")
            #expect(written != nil && synced != nil && written! < synced!, "\(log)")
            await backend.shutdown()
        }

        @Test("through GroupCommit: a write goes to the portable backend, and the group's sync still waits for it")
        func throughGroupCommit() async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try Self.emptyFile(directory)
            defer { try? fd.close() }
            let probe = WriteProbe()
            let backend = try PortableBackend(threads: 2, system: probe.system)
            let group = GroupCommit(wrapping: backend)
            probe.hold(0)
            let write = Task { try await Self.write(group, fd, "group", at: 0) }
            try await waitUntil { probe.started(0) }
            let sync = Task { try await group.fdatasync(fd) }
            try await waitUntil { backend.pool.heldCount == 1 }
            #expect(probe.syncCalls == 0)
            probe.release(0)
            try await write.value
            try await sync.value
            #expect(probe.log == ["write @0 ends", "sync fd\(fd.rawValue) starts", "sync fd\(fd.rawValue) ends"], "\(probe.log)")
            await group.shutdown()
            await backend.shutdown()
        }

        @Test("writes accepted after a sync never hold it: it completes while a later write is still held")
        func laterWritesDoNotHoldTheSync() async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try Self.emptyFile(directory)
            defer { try? fd.close() }
            let probe = WriteProbe()
            let backend = try PortableBackend(threads: 3, system: probe.system)
            probe.hold(0)
            probe.hold(100)
            let earlier = Task { try await Self.write(backend, fd, "earlier", at: 0) }
            try await waitUntil { probe.started(0) }
            let sync = Task { try await backend.fdatasync(fd) }
            try await waitUntil { backend.pool.heldCount == 1 }
            let later = Task { try await Self.write(backend, fd, "later", at: 100) }
            try await waitUntil { probe.started(100) }
            probe.release(0)
            try await earlier.value
            try await sync.value  // returns although the later write is still held
            #expect(probe.started(100) && !probe.log.contains("write @100 ends"))
            probe.release(100)
            try await later.value
            await backend.shutdown()
        }

        @Test("a durable write's sync starts after its write and after the earlier writes of its descriptor")
        func durableWriteOrder() async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try Self.emptyFile(directory)
            defer { try? fd.close() }
            let probe = WriteProbe()
            let backend = try PortableBackend(threads: 2, system: probe.system)
            probe.hold(0)
            let earlier = Task { try await Self.write(backend, fd, "earlier", at: 0) }
            try await waitUntil { probe.started(0) }
            let durable = Task { try await Self.write(backend, fd, "durable", at: 10, durable: true) }
            try await waitUntil { probe.log.contains("write @10 ends") && backend.pool.heldCount == 1 }
            #expect(probe.syncCalls == 0, "its sync part waits for the earlier write")
            probe.release(0)
            try await earlier.value
            try await durable.value
            let log = probe.log
            #expect(log == ["write @10 ends", "write @0 ends", "sync fd\(fd.rawValue) starts", "sync fd\(fd.rawValue) ends"], "\(log)")
            await backend.shutdown()
        }

        @Test("a failed sync part of a durable write is a durability failure: fdatasync's error, recorded, sticky; later durable writes write nothing, plain writes go on")
        func durableWriteSyncFails() async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try Self.emptyFile(directory)
            defer { try? fd.close() }
            let probe = WriteProbe()
            let backend = try PortableBackend(threads: 1, system: probe.system)
            probe.state.withLock { $0.syncErrnos[fd.rawValue] = .ioError }
            let failure = await caughtError { try await Self.write(backend, fd, "lost", at: 0, durable: true) } as? AsyncSyncError
            #expect(failure.map { $0.code == .system && $0.errno == .ioError && $0.operation == .fdatasync && $0.step == .completion } == true,
                    "\(String(describing: failure))")
            #expect(failure?.isDurabilityFailure == true && failure?.systemCall == durableSyncCallName(.fdatasync))
            #expect(backend.ledger.refusedFiles == 1)
            let sync = await caughtError { try await backend.fsync(fd) } as? AsyncSyncError
            #expect(sync?.code == .earlierFailure && sync?.errno == .ioError)
            let calls = probe.pwriteCalls
            let refused = await caughtError { try await Self.write(backend, fd, "again", at: 0, durable: true) } as? AsyncSyncError
            #expect(refused?.code == .earlierFailure && refused?.isDurabilityFailure == true && refused?.step == .request)
            #expect(probe.pwriteCalls == calls, "a refused durable write writes nothing")
            try await Self.write(backend, fd, "plain", at: 0)  // not a durability request
            #expect(try backend.clearFailure(of: fd))
            try await Self.write(backend, fd, "again", at: 0, durable: true)
            await backend.shutdown()
        }

        @Test("in-flight rule: a durable write whose file fails a sync during its flight is not acknowledged, although its own sync succeeds")
        func durableWriteInFlightRule() async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try Self.emptyFile(directory)
            let second = try FileDescriptor.open(directory.path.appending("data"), .readWrite)  // the same file, another open
            defer { try? fd.close(); try? second.close() }
            let probe = WriteProbe()
            let backend = try PortableBackend(threads: 2, system: probe.system)
            probe.hold(0)
            let durable = Task { try await Self.write(backend, fd, "in flight", at: 0, durable: true) }
            try await waitUntil { probe.started(0) }
            probe.state.withLock { $0.syncErrnos[second.rawValue] = .ioError }
            let failed = await caughtError { try await backend.fdatasync(second) } as? AsyncSyncError
            #expect(failed?.errno == .ioError && failed?.isDurabilityFailure == true)
            probe.release(0)
            let error = await caughtError { try await durable.value } as? AsyncSyncError
            #expect(error?.code == .concurrentFailure && error?.errno == .ioError && error?.operation == .fdatasync, "\(String(describing: error))")
            #expect(error?.isDurabilityFailure == true)
            #expect(probe.syncCalls == 2, "its own sync ran and succeeded")
            await backend.shutdown()
        }

        @Test("cancellation: a queued write or held sync throws CancellationError and writes nothing; a write a thread took completes")
        func cancellation() async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try Self.emptyFile(directory)
            defer { try? fd.close() }
            let probe = WriteProbe()
            let backend = try PortableBackend(threads: 1, system: probe.system)
            probe.hold(0)
            let running = Task { try await Self.write(backend, fd, "running", at: 0) }
            try await waitUntil { probe.started(0) }
            let queued = Task { try await Self.write(backend, fd, "queued", at: 20) }
            let queuedDurable = Task { try await Self.write(backend, fd, "durable", at: 40, durable: true) }
            try await waitUntil { backend.pool.queuedCount == 2 }
            let held = Task { try await backend.fdatasync(fd) }
            try await waitUntil { backend.pool.heldCount == 1 }
            queued.cancel()
            queuedDurable.cancel()
            held.cancel()
            running.cancel()  // taken already: it completes
            #expect(await caughtError { try await queued.value } is CancellationError)
            #expect(await caughtError { try await queuedDurable.value } is CancellationError)
            #expect(await caughtError { try await held.value } is CancellationError)
            #expect(backend.pool.pendingWriteCount(of: fd) == 1 && backend.pool.queuedCount == 0 && backend.pool.heldCount == 0)
            probe.release(0)
            try await running.value
            #expect(try Self.contents(directory.path.appending("data")) == Self.bytes("running"))
            #expect(probe.pwriteCalls == 1 && probe.syncCalls == 0)
            await backend.shutdown()
        }

        @Test("shutdown with writes in flight: new writes are refused (shutDown), accepted writes, durable writes and held syncs complete, then it returns")
        func shutdownWithWritesInFlight() async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try Self.emptyFile(directory)
            defer { try? fd.close() }
            let probe = WriteProbe()
            let backend = try PortableBackend(threads: 2, system: probe.system)
            probe.hold(0)
            let first = Task { try await Self.write(backend, fd, "aaaa", at: 0) }
            try await waitUntil { probe.started(0) }
            let sync = Task { try await backend.fdatasync(fd) }
            try await waitUntil { backend.pool.heldCount == 1 }
            probe.hold(4)
            let second = Task { try await Self.write(backend, fd, "bbbb", at: 4) }
            // The second write takes the other thread first (tasks start in no set order: a durable
            // write that ran first would leave nothing queued).
            try await waitUntil { probe.started(4) }
            let durable = Task { try await Self.write(backend, fd, "cccc", at: 8, durable: true) }
            try await waitUntil { backend.pool.queuedCount == 1 }
            let shutdown = Task { await backend.shutdown() }
            try await waitUntil { !backend.pool.isAccepting }
            let late = await caughtError { try await Self.write(backend, fd, "x", at: 0) } as? AsyncSyncError
            #expect(late?.code == .shutDown && late?.operation == .write && late?.backend == .portable && late?.descriptor == fd)
            let lateDurable = await caughtError { try await Self.write(backend, fd, "x", at: 0, durable: true) } as? AsyncSyncError
            #expect(lateDurable?.code == .shutDown && lateDurable?.operation == .durableWrite)
            probe.release(0)
            probe.release(4)
            try await first.value
            try await sync.value
            try await second.value
            try await durable.value
            await shutdown.value
            #expect(try Self.contents(directory.path.appending("data")) == Self.bytes("aaaabbbbcccc"))
            #expect(backend.pool.summary.hasSuffix("live threads 0, stopped"), "\(backend.pool.summary)")
        }

        #if os(Linux)
        // MARK: On the fault file system (real kernel)

        @Test("faultfs short_write: each pwrite(2) the kernel returns short is continued; the whole buffer reaches the file", arguments: [false, true])
        func shortWriteOnFaultFS(durable: Bool) async throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3") else { return }
            let fs = try FaultFS(directIO: true)  // a short reply reaches pwrite(2) as a short count
            try fs.injectWriteFault(.atMost(1000))
            let fd = try FileDescriptor.open(fs.mountPoint.appending("wal"), .readWrite, options: [.create], permissions: [.ownerReadWrite])
            defer { try? fd.close() }
            let backend = try PortableBackend(threads: 2)
            let data = (0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }
            try await Self.write(backend, fd, data, at: 0, durable: durable)
            #expect(try fs.counter("short_writes") == 8, "8192 bytes at most 1000 a call: 8 short calls, then 192")
            #expect(try Self.contents(fs.backing.appending("wal")) == data)
            await backend.shutdown()
        }

        @Test("faultfs EIO and ENOSPC at write: that write (or durable write) fails with its own errno, nothing recorded; later syncs and writes succeed",
              arguments: [Errno.ioError, .noSpace])
        func writeErrorOnFaultFS(errno: Errno) async throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3") else { return }
            let fs = try FaultFS()
            let fd = try FileDescriptor.open(fs.mountPoint.appending("data"), .readWrite, options: [.create], permissions: [.ownerReadWrite])
            defer { try? fd.close() }
            let backend = try PortableBackend(threads: 2)
            try fs.injectWriteFault(.errno(errno), count: 2)
            for durable in [false, true] {
                let error = await caughtError {
                    try await Self.write(backend, fd, "refused", at: 0, durable: durable)
                } as? AsyncSyncError
                #expect(error.map { $0.code == .system && $0.errno == errno && $0.operation == .write && $0.step == .completion } == true,
                        "\(String(describing: error))")
                #expect(error?.systemCall == "pwrite" && error?.backend == .portable && error?.descriptor == fd)
                #expect(error?.isDurabilityFailure == false)
            }
            #expect(try fs.counter("failed_writes") == 2)
            #expect(backend.ledger.refusedFiles == 0, "a write error is not a lost writeback")
            try await backend.fdatasync(fd)  // not poisoned
            try await Self.write(backend, fd, "accepted", at: 0, durable: true)
            #expect(try Self.contents(fs.backing.appending("data")) == Self.bytes("accepted"))
            await backend.shutdown()
        }

        @Test("power-loss mode: a write is durable only after a sync asked for after it; a durable write is durable when it returns")
        func powerLoss() async throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3") else { return }
            let fs = try FaultFS(powerLoss: true)
            let fd = try FileDescriptor.open(fs.mountPoint.appending("log"), .readWrite, options: [.create], permissions: [.ownerReadWrite])
            defer { try? fd.close() }
            let backend = try PortableBackend(threads: 2)
            try await Self.write(backend, fd, "one", at: 0)
            #expect(try fs.durableContents(of: "log").isEmpty, "written, not synced")
            try await backend.fdatasync(fd)
            #expect(try fs.durableContents(of: "log") == Self.bytes("one"))
            try await Self.write(backend, fd, "two", at: 3, durable: true)
            #expect(try fs.durableContents(of: "log") == Self.bytes("onetwo"))
            await backend.shutdown()
        }
        #endif
    }
}
