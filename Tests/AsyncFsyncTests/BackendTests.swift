import Foundation
import SystemPackage
import Testing

@testable import AsyncFsync

extension AsyncFsyncTests {
    /// What every backend must do on real files, real kernels and real file systems.
    @Suite struct Backends {
        init() { GlibcAIOUnderSanitizer.configure }

        static let kinds = BackendKind.tested

        @Test("fsync and fdatasync of a file on the disk of the working tree", arguments: kinds)
        func syncOnDisk(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onDisk()
            #expect(directory.fileSystemMagic != FileSystemMagic.tmpfs, "the working tree must be on a disk file system")
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, system: recorder.system)
            let fd = try directory.file("data")
            defer { try? fd.close() }
            try await backend.fsync(fd)
            try fd.writeAll(Array("more\n".utf8))
            try await backend.fdatasync(fd)
            await backend.shutdown()
            #expect(backend.kind == kind)
            #expect(recorder.submitted == 2, "each sync is handed to the system once")
            #expect(recorder.state.withLock { $0.submittedModes } == [.fsync, .fdatasync])
        }

        @Test("fsync and fdatasync of a file on tmpfs", arguments: kinds)
        func syncOnTmpfs(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            guard TestEnvironment.require(directory.fileSystemMagic == FileSystemMagic.tmpfs, "/dev/shm is not tmpfs") else { return }
            let backend = try makeBackend(kind)
            let fd = try directory.file("data")
            defer { try? fd.close() }
            try await backend.fsync(fd)
            try await backend.fdatasync(fd)
            await backend.shutdown()
        }

        @Test("directories and read-only files sync fine", arguments: kinds)
        func directoryAndReadOnly(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onDisk()
            let backend = try makeBackend(kind)
            let readOnly = try directory.file("ro", access: .readOnly)
            defer { try? readOnly.close() }
            let dir = try FileDescriptor.open(directory.path, .readOnly, options: .directory)
            defer { try? dir.close() }
            try await backend.fsync(readOnly)
            try await backend.fdatasync(readOnly)
            try await backend.fsync(dir)
            try await backend.fdatasync(dir)
            await backend.shutdown()
        }

        @Test("10 000 concurrent requests on one file all succeed exactly once", arguments: kinds)
        func manyOnOneFile(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let backend = try makeBackend(kind)
            let fd = try directory.file("one")
            defer { try? fd.close() }
            let succeeded = try await withThrowingTaskGroup(of: Int.self) { group in
                for index in 0..<10_000 {
                    group.addTask {
                        try await backend.sync(fd, mode: index.isMultiple(of: 2) ? .fsync : .fdatasync)
                        return 1
                    }
                }
                return try await group.reduce(0, +)
            }
            #expect(succeeded == 10_000)
            #expect(outstanding(backend) == 0)
            await backend.shutdown()
        }

        @Test("10 000 concurrent requests on 100 files all succeed exactly once", arguments: kinds)
        func manyOnManyFiles(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onDisk()
            let backend = try makeBackend(kind)
            let files = try (0..<100).map { try directory.file("f\($0)") }
            defer { for fd in files { try? fd.close() } }
            let succeeded = try await withThrowingTaskGroup(of: Int.self) { group in
                for index in 0..<10_000 {
                    group.addTask {
                        try await backend.fdatasync(files[index % files.count])
                        return 1
                    }
                }
                return try await group.reduce(0, +)
            }
            #expect(succeeded == 10_000)
            #expect(outstanding(backend) == 0)
            await backend.shutdown()
        }

        @Test("a 4-slot backend under 1 000 concurrent requests on 64 files: backpressure, never failure", arguments: kinds)
        func backpressure(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, capacity: 4, system: recorder.system)
            let files = try (0..<64).map { try directory.file("small-\($0)") }
            defer { for fd in files { try? fd.close() } }
            let succeeded = try await withThrowingTaskGroup(of: Int.self) { group in
                for index in 0..<1_000 {
                    group.addTask {
                        try await backend.fsync(files[index % files.count])
                        return 1
                    }
                }
                return try await group.reduce(0, +)
            }
            await backend.shutdown()
            #expect(succeeded == 1_000)
            // Requests of one descriptor share syncs; every file got at least one.
            #expect(recorder.submitted >= 64 && recorder.submitted <= 1_000)
            #expect(recorder.state.withLock { $0.maxOutstanding } <= 4)
        }

        #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE  // the Linux engine's sharing per descriptor
        @Test("requests of one descriptor share syncs: one in the system at a time, each served by a sync that started after it",
              arguments: BackendKind.aio)  // the portable backend runs a sync per request (PortableBackendTests)
        func sharedPerDescriptor(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, system: recorder.system)
            let fd = try directory.file("shared")
            defer { try? fd.close() }
            recorder.closeGate()  // the first sync's completion is held back
            let first = Task { try await backend.fdatasync(fd) }
            try await waitUntil { recorder.submitted == 1 }
            let rest = (0..<99).map { index in
                Task { try await backend.sync(fd, mode: index == 50 ? .fsync : .fdatasync) }
            }
            try await waitUntil { waiting(backend) == 99 }
            #expect(recorder.submitted == 1, "nothing joins the sync already in the system")
            recorder.openGate()
            try await first.value
            for task in rest { try await task.value }
            #expect(recorder.submitted == 2, "the 99 that waited share the next sync")
            #expect(recorder.state.withLock { $0.submittedModes } == [.fdatasync, .fsync], "the strongest mode asked for")
            #expect(recorder.state.withLock { $0.maxOutstanding } == 1)
            await backend.shutdown()
        }
        #endif

        @Test("a closed descriptor fails with EBADF on every backend, before anything runs (the portable backend: its one step)",
              arguments: kinds)
        func closedDescriptor(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onDisk()
            let backend = try makeBackend(kind)
            let fd = try directory.file("closed")
            try fd.close()
            for mode in [SyncMode.fsync, .fdatasync] {
                let failure = await caughtError { try await backend.sync(fd, mode: mode) }
                let syncError = try #require(failure as? AsyncSyncError)
                #expect(syncError.code == .system)
                #expect(syncError.errno == .badFileDescriptor)
                #expect(syncError.operation == .sync(mode))
                // The portable backend's blocking call is submission and completion in one.
                #expect(syncError.step == (kind == .portable ? .completion : .submit))
                #expect(syncError.backend == kind)
                #expect(syncError.descriptor == fd)
                #expect(!syncError.isDurabilityFailure)
            }
            await backend.shutdown()
        }

        @Test("a pipe and a socket fail with EINVAL on every backend", arguments: kinds)
        func pipeAndSocket(kind: BackendKind) async throws {
            let backend = try makeBackend(kind)
            let pipe = try FileDescriptor.pipe()
            defer {
                try? pipe.readEnd.close()
                try? pipe.writeEnd.close()
            }
            var pair: [CInt] = [0, 0]
            #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
            let sockets = pair.map { FileDescriptor(rawValue: $0) }
            defer { for socket in sockets { try? socket.close() } }

            for fd in [pipe.readEnd, pipe.writeEnd, sockets[0]] {
                for mode in [SyncMode.fsync, .fdatasync] {
                    let failure = await caughtError { try await backend.sync(fd, mode: mode) }
                    let syncError = try #require(failure as? AsyncSyncError)
                    #expect(syncError.code == .system)
                    #expect(syncError.errno == .invalidArgument)
                    #expect(syncError.operation == .sync(mode))
                    #expect(syncError.descriptor == fd)
                    // Kernel AIO refuses at submit; glibc runs fsync(2) on its helper and reports it.
                    #expect(syncError.step == (kind == .libaio ? .submit : .completion))
                    #expect(!syncError.isDurabilityFailure)
                }
            }
            await backend.shutdown()
        }

        @Test("the same fault gives the same error on every backend")
        func sameFaultSameError() async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("closed")
            try fd.close()
            let pipe = try FileDescriptor.pipe()
            defer {
                try? pipe.readEnd.close()
                try? pipe.writeEnd.close()
            }
            for target in [fd, pipe.writeEnd] {
                var seen: [AsyncSyncError] = []
                for kind in BackendKind.tested {
                    let backend = try makeBackend(kind)
                    if let failure = await caughtError({ try await backend.fdatasync(target) }) as? AsyncSyncError {
                        seen.append(failure)
                    }
                    await backend.shutdown()
                }
                try #require(seen.count == BackendKind.tested.count)
                for other in seen.dropFirst() {
                    #expect(seen[0].code == other.code)
                    #expect(seen[0].errno == other.errno)
                    #expect(seen[0].operation == other.operation)
                    #expect(seen[0].descriptor == other.descriptor)
                }
                #expect(seen.map(\.backend) == BackendKind.tested)
            }
        }

        @Test("the error's description names operation, fd, backend, errno and step")
        func errorDescription() {
            let failure = AsyncSyncError.sync(
                .fdatasync, errno: .ioError, step: .completion, backend: .libaio,
                descriptor: FileDescriptor(rawValue: 7), systemCall: "io_getevents")
            #expect(failure.description.hasPrefix(
                "fdatasync of fd 7 failed on the libaio backend: Input/output error (EIO) from io_getevents at completion"))
            #expect(failure.isDurabilityFailure)
            #expect(failure.debugDescription.contains("descriptor: 7"))
            let shutDown = AsyncSyncError.shutDown(.fsync, backend: .posix, descriptor: FileDescriptor(rawValue: 3))
            #expect(shutDown.description == "fsync of fd 3 refused: the posix backend was shut down")
            #expect(shutDown.errno == nil)
        }
    }
}
