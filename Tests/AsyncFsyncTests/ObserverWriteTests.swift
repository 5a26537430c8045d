import Synchronization
import SystemPackage
import Testing

@testable import AsyncFsync

#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
import CAsyncFsync
#endif

/// Keeps every write event, every sync call and every durability failure recorded (issue 17's
/// observer events for writes).
final class WriteObserver: AsyncSyncObserver {
    struct Write: Equatable, CustomStringConvertible {
        var backend: BackendKind
        var durable: Bool
        var bytes: Int
        var errno: Errno?
        var failed: Bool
        var description: String { "\(backend) \(durable ? "durableWrite" : "write") \(bytes) B \(failed ? "failed \(errno.map { "\($0)" } ?? "-")" : "ok")" }
    }
    private struct State {
        var writes: [Write] = []
        var syncCalls = 0
        var systemSyncRequests = 0
        var recorded: [(BackendKind, CInt, Errno)] = []
    }
    private let state = Locked(State())

    func writeCompleted(backend: BackendKind, durable: Bool, bytes: Int, duration: Duration, error: (any Error)?) {
        let write = Write(backend: backend, durable: durable, bytes: bytes, errno: (error as? AsyncSyncError)?.errno,
                          failed: error != nil)
        state.withLock { $0.writes.append(write) }
    }
    func syncCompleted(backend: BackendKind, mode: SyncMode, duration: Duration, error: (any Error)?) {
        state.withLock { $0.syncCalls += 1 }
    }
    func systemSyncCompleted(backend: BackendKind, mode: SyncMode, requests: Int, errno: Errno?) {
        state.withLock { $0.systemSyncRequests += requests }
    }
    func durabilityFailureRecorded(backend: BackendKind, descriptor: FileDescriptor, errno: Errno, sticky: Bool) {
        state.withLock { $0.recorded.append((backend, descriptor.rawValue, errno)) }
    }

    /// The write events so far, emptied.
    func takeWrites() -> [Write] { state.withLock { state in defer { state.writes = [] }; return state.writes } }
    var syncCalls: Int { state.withLock { $0.syncCalls } }
    var systemSyncRequests: Int { state.withLock { $0.systemSyncRequests } }
    func recorded(_ fd: FileDescriptor) -> [Errno] { state.withLock { $0.recorded.filter { $0.1 == fd.rawValue }.map(\.2) } }

    /// Runs `body` with this observer added.
    func observing<T>(_ body: () async throws -> T) async throws -> T {
        let registration = AsyncSync.addObserver(self)
        defer { AsyncSync.removeObserver(registration) }
        return try await body()
    }
}

extension AsyncFsyncTests {
    /// ``AsyncSyncObserver/writeCompleted(backend:durable:bytes:duration:error:)``: one event per
    /// call of `write`/`durableWrite` on a backend, whatever form or wrapper it came through.
    @Suite struct ObserverWrites {
        init() { GlibcAIOUnderSanitizer.configure }

        static func ok(_ kind: BackendKind, durable: Bool, _ bytes: Int) -> WriteObserver.Write {
            WriteObserver.Write(backend: kind, durable: durable, bytes: bytes, errno: nil, failed: false)
        }

        @Test("each write and durable write call is one event with its backend, durable flag and requested bytes; the [UInt8] and AlignedBuffer forms once, not twice; a durable write is no sync call",
              arguments: BackendKind.tested)
        func oneEventPerCall(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onDisk()
            let backend = try makeBackend(kind)
            let fd = try directory.file("observed-writes")
            defer { try? fd.close() }
            let observer = WriteObserver()
            let bytes = try AlignedBuffer(byteCount: 112, alignment: 16)  // the raw form: its bytes, borrowed
            try await observer.observing {
                try await backend.write(fd, from: bytes.unsafeBytes, at: 0)
                #expect(observer.takeWrites() == [Self.ok(kind, durable: false, 112)])
                try await backend.durableWrite(fd, from: bytes.unsafeBytes, at: 100)
                #expect(observer.takeWrites() == [Self.ok(kind, durable: true, 112)])
                try await backend.write(fd, [UInt8](repeating: 0x62, count: 30), at: 0)
                #expect(observer.takeWrites() == [Self.ok(kind, durable: false, 30)], "the [UInt8] form is reported by the call it forwards to, once")
                try await backend.durableWrite(fd, [UInt8](repeating: 0x63, count: 31), at: 0)
                #expect(observer.takeWrites() == [Self.ok(kind, durable: true, 31)])
                let aligned = try AlignedBuffer(byteCount: 4096, alignment: 4096)
                try await backend.write(fd, aligned, at: 0)
                try await backend.durableWrite(fd, aligned, at: 0)
                #expect(observer.takeWrites() == [Self.ok(kind, durable: false, 4096), Self.ok(kind, durable: true, 4096)])
                let empty = [UInt8]()
                try await backend.write(fd, empty, at: 0)
                #expect(observer.takeWrites() == [Self.ok(kind, durable: false, 0)], "an empty write is still a call")
                #expect(observer.syncCalls == 0, "a durable write's sync part is not a sync call")
                #expect(observer.systemSyncRequests == 3, "the sync part of each of the three durable writes (buffered) is a request a system sync covered, on every backend")
                try await backend.fdatasync(fd)
                #expect(observer.syncCalls == 1)
                #expect(observer.takeWrites().isEmpty, "a sync is no write event")
            }
            await backend.shutdown()
        }

        @Test("a failing write is one event with its error: a read-only descriptor (EBADF), a negative offset (EINVAL), for writes and durable writes; nothing recorded",
              arguments: BackendKind.tested)
        func failingWrites(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onDisk()
            let backend = try makeBackend(kind)
            let fd = try directory.file("failing-writes")
            defer { try? fd.close() }
            let readOnly = try FileDescriptor.open(directory.path.appending("failing-writes"), .readOnly)
            defer { try? readOnly.close() }
            let observer = WriteObserver()
            try await observer.observing {
                for durable in [false, true] {
                    let bytes = [UInt8](repeating: 0x61, count: 10)
                    let badDescriptor = await caughtError {
                        if durable { try await backend.durableWrite(readOnly, bytes, at: 0) } else { try await backend.write(readOnly, bytes, at: 0) }
                    } as? AsyncSyncError
                    #expect(badDescriptor?.errno == .badFileDescriptor)
                    #expect(observer.takeWrites() == [WriteObserver.Write(backend: kind, durable: durable, bytes: 10, errno: .badFileDescriptor, failed: true)])
                    let badOffset = await caughtError {
                        if durable { try await backend.durableWrite(fd, bytes, at: -1) } else { try await backend.write(fd, bytes, at: -1) }
                    } as? AsyncSyncError
                    #expect(badOffset?.errno == .invalidArgument)
                    #expect(observer.takeWrites() == [WriteObserver.Write(backend: kind, durable: durable, bytes: 10, errno: .invalidArgument, failed: true)])
                }
                #expect(observer.recorded(readOnly).isEmpty && observer.recorded(fd).isEmpty, "a failed write is no durability failure")
                #expect(observer.syncCalls == 0)
            }
            await backend.shutdown()
        }

        @Test("GroupCommit, AsyncFile and AsyncSync.shared forward a write to the backend, which reports it once",
              arguments: BackendKind.tested)
        func forwardedOnce(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onDisk()
            let backend = try makeBackend(kind)
            let group = GroupCommit(wrapping: backend)
            let fd = try directory.file("forwarded")
            defer { try? fd.close() }
            let observer = WriteObserver()
            try await observer.observing {
                try await group.write(fd, [UInt8](repeating: 0x61, count: 11), at: 0)
                try await group.durableWrite(fd, [UInt8](repeating: 0x62, count: 12), at: 0)
                #expect(observer.takeWrites() == [Self.ok(kind, durable: false, 11), Self.ok(kind, durable: true, 12)])

                let file = try AsyncFile.open(directory.path.appending("owned"), options: [.create], backend: group)
                try await file.write(contentsOf: [UInt8](repeating: 0x63, count: 13), at: 0)
                try await file.durableWrite(contentsOf: [UInt8](repeating: 0x64, count: 14), at: 0)
                try await file.close()
                #expect(observer.takeWrites() == [Self.ok(kind, durable: false, 13), Self.ok(kind, durable: true, 14)])
            }
            await group.shutdown()

            // The shared backend: whichever kind it made, one event per call.
            try await observer.observing {
                try await AsyncSync.shared.write(fd, [UInt8](repeating: 0x65, count: 15), at: 0)
                try await AsyncSync.shared.durableWrite(fd, [UInt8](repeating: 0x66, count: 16), at: 0)
                let shared = AsyncSync.shared.kind
                #expect(observer.takeWrites() == [Self.ok(shared, durable: false, 15), Self.ok(shared, durable: true, 16)])
            }
        }

        /// Set to fail the next sync completion.
        final class Trigger: Sendable {
            let armed = Atomic<Bool>(false)
            func arm() { armed.store(true, ordering: .relaxed) }
            func fire() -> Bool { armed.compareExchange(expected: true, desired: false, ordering: .relaxed).exchanged }
        }

        #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
        /// `system` whose next `IOCB_CMD_FDSYNC` completion after `trigger` was armed fails with
        /// `EIO` (a durable write's write part still succeeds).
        static func failingFDSYNC(_ system: SystemCalls, when trigger: Trigger) -> SystemCalls {
            var system = system
            let reap = system.reapCompletions
            system.reapCompletions = { context, events, maximum in
                let result = reap(context, events, maximum)
                guard case .success(let count) = result else { return result }
                for index in 0..<count {
                    guard let control = UnsafePointer<iocb>(bitPattern: UInt(events[index].obj)),
                          Int(control.pointee.aio_lio_opcode) == IOCB_CMD_FDSYNC, trigger.fire()
                    else { continue }
                    events[index].res = -Int64(Errno.ioError.rawValue)
                }
                return result
            }
            return system
        }
        #endif

        @Test("a durable write whose sync part fails with EIO: one write event with the error, one durability failure recorded (sticky), told to observers once",
              arguments: BackendKind.tested)
        func durabilityFailureRecordedOnce(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onDisk()
            let recorder = SyscallRecorder()
            let failNextSync = Trigger()
            #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
            let system = kind == .libaio ? Self.failingFDSYNC(recorder.system, when: failNextSync) : recorder.system
            #else
            let system = recorder.system
            #endif
            let backend = try makeBackend(kind, system: system)
            let fd = try directory.file("durability")
            defer { try? fd.close() }
            let observer = WriteObserver()
            try await observer.observing {
                // POSIX aio and the portable backend: the recorder fails the next sync only (never a write).
                if kind == .libaio { failNextSync.arm() } else { recorder.injectAtCompletion([.ioError]) }
                let error = await caughtError { try await backend.durableWrite(fd, [UInt8](repeating: 0x61, count: 64), at: 0) } as? AsyncSyncError
                #expect(error?.errno == .ioError && error?.isDurabilityFailure == true, "\(String(describing: error))")
                #expect(observer.takeWrites() == [WriteObserver.Write(backend: kind, durable: true, bytes: 64, errno: .ioError, failed: true)])
                #expect(observer.recorded(fd) == [.ioError], "recorded once")
                #expect(observer.syncCalls == 0)
                let cleared = try backend.clearFailure(of: fd)
                #expect(cleared, "sticky")
            }
            await backend.shutdown()
        }
    }
}
