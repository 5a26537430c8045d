#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
import CAsyncFsync
import Foundation
import SystemPackage
import Testing

@testable import AsyncFsync

import Glibc

/// Kernel AIO with its writes held: `IOCB_CMD_PWRITE` iocbs are kept (reported accepted) while
/// the gate is closed and handed to the kernel when the test lets them go; every submission and
/// reaped completion is logged by opcode, in order.
final class HeldWrites: Sendable {
    struct State {
        var holding = true
        var held: [(context: aio_context_t, iocb: UnsafeMutablePointer<iocb>)] = []
        /// "submit write", "submit fdsync", "submit fsync", "reap write", "reap fdsync" …, in order.
        var log: [String] = []
        var writeFlags: [Int32] = []
    }
    let state = Locked(State())

    static func name(_ opcode: UInt16) -> String {
        switch opcode {
        case 1: "write"
        case 2: "fsync"
        case 3: "fdsync"
        default: "op\(opcode)"
        }
    }

    var system: SystemCalls {
        var system = SystemCalls.live
        system.ioSubmit = { [self] context, count, iocbs in
            for index in 0..<count {
                let control = iocbs[index]!
                let opcode = control.pointee.aio_lio_opcode
                let hold = state.withLock { state -> Bool in
                    if opcode == 1 { state.writeFlags.append(Int32(bitPattern: UInt32(control.pointee.aio_rw_flags))) }
                    if opcode == 1, state.holding {
                        state.held.append((context, control))
                        state.log.append("hold write")
                        return true
                    }
                    state.log.append("submit \(Self.name(opcode))")
                    return false
                }
                if hold { continue }
                var one: UnsafeMutablePointer<iocb>? = control
                switch SystemCalls.live.ioSubmit(context, 1, &one) {
                case .success(1): continue
                case .success: return .success(index)
                case .failure(let errno): return index == 0 ? .failure(errno) : .success(index)
                }
            }
            return .success(count)
        }
        system.reapCompletions = { [self] context, events, max in
            let result = SystemCalls.live.reapCompletions(context, events, max)
            if case .success(let count) = result, count > 0 {
                state.withLock { state in
                    for index in 0..<count {
                        let control = UnsafePointer<iocb>(bitPattern: UInt(events[index].obj))!
                        state.log.append("reap \(Self.name(control.pointee.aio_lio_opcode))")
                    }
                }
            }
            return result
        }
        return system
    }

    var heldCount: Int { state.withLock { $0.held.count } }
    var log: [String] { state.withLock { $0.log } }

    /// Hands the first `count` held writes to the kernel (all when nil); with `stopHolding`, later
    /// writes go straight through.
    func release(_ count: Int? = nil, stopHolding: Bool = false) {
        let released = state.withLock { state -> [(context: aio_context_t, iocb: UnsafeMutablePointer<iocb>)] in
            if stopHolding { state.holding = false }
            let taken = Array(state.held.prefix(count ?? state.held.count))
            state.held.removeFirst(taken.count)
            for _ in taken { state.log.append("submit write") }
            return taken
        }
        for (context, control) in released {
            var one: UnsafeMutablePointer<iocb>? = control
            _ = SystemCalls.live.ioSubmit(context, 1, &one)
        }
    }
}

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
            let recorder = HeldWrites()
            recorder.release(stopHolding: true)
            let backend = try LibaioBackend(capacity: 8, system: recorder.system)
            let directory = try ScratchDirectory.onDisk()
            let path = directory.path.appending("direct").string
            let raw = Glibc.open(path, O_RDWR | O_CREAT | casyncfsync_O_DIRECT, 0o600)
            guard TestEnvironment.require(raw >= 0, "O_DIRECT is refused on \(directory.path) (errno \(errno))") else { return }
            let fd = FileDescriptor(rawValue: raw)
            defer { try? fd.close() }
            let alignment = try DirectIOAlignment.of(fd)
            var buffer = try AlignedBuffer(byteCount: 4 * alignment.offsetAlignment, for: alignment)
            buffer.withUnsafeMutableBytes { $0.initializeMemory(as: UInt8.self, repeating: 0x5a) }
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
            let recorder = HeldWrites()
            let backend = try LibaioBackend(capacity: 8, system: recorder.system)
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            let first = Task { try await backend.write(fd, [UInt8](repeating: 1, count: 4096), at: 0) }
            #expect(await eventually(30) { recorder.heldCount == 1 }, "the first write reached the kernel's door")
            let sync = Task { try await backend.fdatasync(fd) }
            #expect(await eventually(30) { writeCounts(backend).heldSyncs == 1 }, "the sync is held for the write")
            let later = Task { try await backend.write(fd, [UInt8](repeating: 2, count: 4096), at: 4096) }
            #expect(await eventually(30) { recorder.heldCount == 2 }, "a write after the sync reached the door")
            #expect(!recorder.log.contains("submit fdsync"), "no sync submitted while its write is in flight")
            recorder.release(1)  // the first write only: the sync goes on, the later write is still held
            try await first.value
            try await sync.value
            let log = recorder.log
            let reaped = try #require(log.firstIndex(of: "reap write"))
            let synced = try #require(log.firstIndex(of: "submit fdsync"))
            #expect(reaped < synced, "the sync was submitted after the write's completion: \(log)")
            #expect(recorder.heldCount == 1, "the write accepted after the sync did not hold it")
            recorder.release(stopHolding: true)
            try await later.value
            #expect(try contents(fd, count: 8192) == [UInt8](repeating: 1, count: 4096) + [UInt8](repeating: 2, count: 4096))
            await backend.shutdown()
        }

        @Test("a write waiting for a slot is cancelled before it reaches the system; a held sync is cancelled too")
        func cancellation() async throws {
            let recorder = HeldWrites()
            let backend = try LibaioBackend(capacity: 1, system: recorder.system)
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            let first = Task { try await backend.write(fd, [UInt8](repeating: 1, count: 4096), at: 0) }
            #expect(await eventually(30) { recorder.heldCount == 1 })
            let second = Task { try await backend.write(fd, [UInt8](repeating: 2, count: 4096), at: 4096) }
            #expect(await eventually(30) { writeCounts(backend).incompleteWrites == 2 })
            let sync = Task { try await backend.fdatasync(fd) }
            #expect(await eventually(30) { writeCounts(backend).heldSyncs == 1 })
            second.cancel()
            sync.cancel()
            #expect(await caughtError { try await second.value } is CancellationError)
            #expect(await caughtError { try await sync.value } is CancellationError)
            recorder.release(stopHolding: true)
            try await first.value
            #expect(recorder.log.filter { $0 == "submit write" || $0 == "hold write" }.count == 2, "only the first write reached the system: \(recorder.log)")
            #expect(try contents(fd, count: 8192) == [UInt8](repeating: 1, count: 4096))
            #expect(writeCounts(backend) == (0, 0))
            await backend.shutdown()
        }

        @Test("shutdown waits for a write in flight, which succeeds; later writes are refused with shutDown")
        func shutdownDrainsWrites() async throws {
            let recorder = HeldWrites()
            let backend = try LibaioBackend(capacity: 2, system: recorder.system)
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            let write = Task { try await backend.durableWrite(fd, [UInt8](repeating: 7, count: 4096), at: 0) }
            #expect(await eventually(30) { recorder.heldCount == 1 })
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
            recorder.release(stopHolding: true)
            try await write.value  // its sync too, after the shutdown began
            await shutdown.value
            #expect(try contents(fd, count: 4096) == [UInt8](repeating: 7, count: 4096))
        }

        @Test("bad input: a negative offset is refused before anything is submitted; an empty write succeeds",
              arguments: BackendKind.aio)
        func badInput(kind: BackendKind) async throws {
            let backend = try makeBackend(kind)
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            let error = await caughtError { try await backend.write(fd, [UInt8](repeating: 1, count: 10), at: -1) }
            #expect((error as? AsyncSyncError)?.errno == .invalidArgument)
            #expect((error as? AsyncSyncError)?.step == .request)
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
