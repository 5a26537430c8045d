// The Linux backends' engine, hub, executors, probes and inline path: compiled out under
// ASYNC_FSYNC_PORTABLE (and off Linux), where the portable backend is the only one.
#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
import CAsyncFsync
import Foundation
import SystemPackage
import Testing

@testable import AsyncFsync

extension AsyncFsyncTests {
    /// The inline path for memory file systems, the EINVAL → POSIX aio fallback inside the libaio
    /// backend, and the per-file-system probe cache.
    @Suite struct Probing {
        init() { GlibcAIOUnderSanitizer.configure }

        // MARK: ASYNC_FSYNC_INLINE

        @Test("ASYNC_FSYNC_INLINE parsing", arguments: [
            (nil, true), ("", true), ("on", true), (" ON\t", true), ("1", true), ("true", true), ("yes", true),
            ("off", false), (" Off ", false), ("0", false), ("FALSE", false), ("no", false),
        ] as [(String?, Bool)])
        func inlineParsing(value: String?, expected: Bool) throws {
            #expect(try AsyncSync.inlineSetting(value) == expected)
        }

        @Test("an unknown ASYNC_FSYNC_INLINE value is an error naming it", arguments: ["maybe", "o n", "2"])
        func inlineUnknown(value: String) {
            #expect {
                _ = try AsyncSync.makeBackendBlocking(environment: [AsyncSync.inlineEnvironmentVariable: value])
            } throws: { error in
                guard let error = error as? AsyncSyncError else { return false }
                return error.code == .invalidConfiguration && error.description.contains("\"\(value)\"")
                    && error.description.contains("on, off")
            }
        }

        @Test("makeBackend(): the inline path is on by default and off with ASYNC_FSYNC_INLINE=off",
              arguments: BackendKind.aio)
        func inlineSwitch(kind: BackendKind) async throws {
            for (value, expected) in [(nil, true), ("off", false)] as [(String?, Bool)] {
                var environment = [AsyncSync.environmentVariable: kind.rawValue]
                environment[AsyncSync.inlineEnvironmentVariable] = value
                let backend = try await AsyncSync.makeBackend(environment: environment)
                let inlines = switch backend {
                case let backend as LibaioBackend: backend.inlinesMemoryFileSystems
                case let backend as PosixAIOBackend: backend.inlinesMemoryFileSystems
                default: !expected
                }
                #expect(inlines == expected)
                #expect("\(backend)".contains(expected ? "synced inline" : "no inline path"))
                await backend.shutdown()
            }
        }

        // MARK: The inline path

        @Test("tmpfs: synced inline with fsync(2)/fdatasync(2); nothing reaches AIO; errors still reported",
              arguments: BackendKind.aio)
        func inlineOnTmpfs(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            guard TestEnvironment.require(directory.fileSystemMagic == FileSystemMagic.tmpfs, "/dev/shm is not tmpfs") else { return }
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, inline: true, system: recorder.system)
            let fd = try directory.file("inline")
            defer { try? fd.close() }

            try await backend.fsync(fd)
            try await backend.fdatasync(fd)
            #expect(recorder.inlineSyncs == 2)
            #expect(recorder.submitCalls == 0)

            // A closed descriptor: fstatfs(2) refuses it, so it takes the asynchronous path and gets
            // the same EBADF as without the inline path.
            let closed = try directory.file("closed")
            try closed.close()
            let error = await caughtError { try await backend.fsync(closed) } as? AsyncSyncError
            #expect(error?.errno == .badFileDescriptor)
            #expect(error?.backend == kind)

            await backend.shutdown()
            let late = await caughtError { try await backend.fsync(fd) } as? AsyncSyncError
            #expect(late?.code == .shutDown)
            #expect(recorder.inlineSyncs == 2)
        }

        @Test("a cancelled task gets CancellationError from the inline path too", arguments: BackendKind.aio)
        func inlineCancelled(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, inline: true, system: recorder.system)
            let fd = try directory.file("inline")
            defer { try? fd.close() }
            let task = Task {
                withUnsafeCurrentTask { $0?.cancel() }
                try await backend.fsync(fd)
            }
            await #expect(throws: CancellationError.self) { try await task.value }
            #expect(recorder.inlineSyncs == 0)
            await backend.shutdown()
        }

        @Test("the inline path never applies to a disk file system", arguments: BackendKind.aio)
        func neverInlineOnDisk(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onDisk()
            let magic = directory.fileSystemMagic ?? 0
            guard TestEnvironment.require(!FileSystemType.isMemoryFileSystem(magic),
                                          "the current directory is on a memory file system") else { return }
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, inline: true, system: recorder.system)
            let files = try (0..<4).map { try directory.file("disk-\($0)") }
            defer { for fd in files { try? fd.close() } }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<32 {
                    group.addTask { try await backend.sync(files[index % files.count], mode: index.isMultiple(of: 2) ? .fsync : .fdatasync) }
                }
                try await group.waitForAll()
            }
            #expect(recorder.inlineSyncs == 0)
            #expect(recorder.submitted >= 4 && recorder.submitted <= 32, "every sync went to the system (shared per descriptor)")
            await backend.shutdown()
        }

        @Test("with the inline path off, tmpfs goes through AIO", arguments: BackendKind.aio)
        func inlineOff(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, inline: false, system: recorder.system)
            let fd = try directory.file("async")
            defer { try? fd.close() }
            try await backend.fsync(fd)
            #expect(recorder.inlineSyncs == 0)
            #expect(recorder.submitted == 1)
            await backend.shutdown()
        }

        // MARK: EINVAL at io_submit → POSIX aio for that file system

        @Test("kernel AIO refuses a regular file's sync with EINVAL: POSIX aio serves it and the file system is remembered")
        func einvalFallback() async throws {
            let disk = try ScratchDirectory.onDisk()
            let recorder = SyscallRecorder()
            let backend = try LibaioBackend(capacity: 8, system: recorder.system)
            let fd = try disk.file("refused")
            defer { try? fd.close() }
            let device = try #require(try? system_fstat_status(fd.rawValue).get().device)

            recorder.injectAtSubmit([.invalidArgument])
            try await backend.fsync(fd)
            #expect(recorder.ioSubmitCalls == 1)
            #expect(recorder.aioFsyncCalls == 1)
            #expect(backend.posixFileSystems == [device])
            #expect(backend.description.contains("served by POSIX aio"))

            // Later requests for that file system go to POSIX aio at once.
            let other = try disk.file("same-fs")
            defer { try? other.close() }
            try await backend.fdatasync(other)
            #expect(recorder.ioSubmitCalls == 1)
            #expect(recorder.aioFsyncCalls == 2)

            // Another file system still goes to kernel AIO.
            let tmpfs = try ScratchDirectory.onTmpfs()
            let elsewhere = try tmpfs.file("other-fs")
            defer { try? elsewhere.close() }
            if (try? system_fstat_status(elsewhere.rawValue).get().device) != device {
                try await backend.fsync(elsewhere)
                #expect(recorder.ioSubmitCalls == 2)
                #expect(recorder.aioFsyncCalls == 2)
            }

            await backend.shutdown()
            let late = await caughtError { try await backend.fsync(fd) } as? AsyncSyncError
            #expect(late?.code == .shutDown)
        }

        @Test("a failure of a sync served by the fallback reaches the caller, sticks, and can be cleared")
        func fallbackFailure() async throws {
            let disk = try ScratchDirectory.onDisk()
            let recorder = SyscallRecorder()
            let backend = try LibaioBackend(capacity: 8, system: recorder.system)
            let fd = try disk.file("fails")
            defer { try? fd.close() }

            recorder.injectAtSubmit([.invalidArgument])
            recorder.injectAtCompletion([.ioError])
            let error = await caughtError { try await backend.fsync(fd) } as? AsyncSyncError
            #expect(error?.code == .system)
            #expect(error?.errno == .ioError)
            #expect(error?.isDurabilityFailure == true)
            #expect(error?.descriptor == fd)

            let sticky = await caughtError { try await backend.fsync(fd) } as? AsyncSyncError
            #expect(sticky?.code == .earlierFailure)
            #expect(try backend.clearFailure(of: fd))
            try await backend.fsync(fd)
            await backend.shutdown()
        }

        @Test("a pipe gets EINVAL from the libaio backend as from posix: no fallback for what is not a regular file")
        func pipeStillEinval() async throws {
            let libaio = try LibaioBackend(capacity: 4, system: .live)
            let posix = try PosixAIOBackend(capacity: 4, system: .live)
            let (reader, writer) = try FileDescriptor.pipe()
            defer {
                try? reader.close()
                try? writer.close()
            }
            for backend in [libaio, posix] as [any AsyncSyncBackend] {
                let error = await caughtError { try await backend.fsync(writer) } as? AsyncSyncError
                #expect(error?.errno == .invalidArgument, "\(backend.kind)")
                #expect(error?.backend == backend.kind)
            }
            #expect(libaio.posixFileSystems.isEmpty)
            await libaio.shutdown()
            await posix.shutdown()
        }

        // MARK: The probe

        @Test("probe results are cached per file system; failures that describe the host are not")
        func probeCache() throws {
            let cache = ProbeCache()
            let prober = Prober(system: .live, cache: cache)
            let disk = try ScratchDirectory.onDisk()
            let first = prober.probe(.libaio, in: disk.path)
            let second = prober.probe(.libaio, in: disk.path)
            #expect(first.isUsable && !first.isCached)
            #expect(second.isUsable && second.isCached)
            #expect(second.duration == first.duration)
            #expect("\(second)".contains("cached"))
            #expect(cache.count == 1)

            let tmpfs = try ScratchDirectory.onTmpfs()
            #expect(!prober.probe(.libaio, in: tmpfs.path).isCached)
            #expect(!prober.probe(.posix, in: disk.path).isCached)
            #expect(cache.count == 3)

            var denied = SystemCalls.live
            denied.ioSetup = { _, _ in .failure(.noFunction) }
            let deniedProber = Prober(system: denied, cache: ProbeCache())
            for _ in 0..<2 {
                let probe = deniedProber.probe(.libaio, in: disk.path)
                #expect(!probe.isUsable && !probe.isCached)
            }
            #expect(deniedProber.cache?.count == 0)
        }

        @Test("the probe names the file system, the inline path and its cost")
        func probeReport() throws {
            let tmpfs = try ScratchDirectory.onTmpfs()
            let disk = try ScratchDirectory.onDisk()
            for kind in BackendKind.aio {
                let memory = Prober(system: .live).probe(kind, in: tmpfs.path)
                #expect(memory.fileSystem == "tmpfs")
                #expect(memory.isMemoryFileSystem && memory.inlineSync)
                #expect("\(memory)".contains("made inline"))
                #expect("\(memory)".contains("probe took"))
                #expect(memory.duration > .zero)

                let off = Prober(system: .live, inlineMemoryFileSystems: false).probe(kind, in: tmpfs.path)
                #expect(!off.inlineSync)

                let onDisk = Prober(system: .live).probe(kind, in: disk.path)
                #expect(!onDisk.isMemoryFileSystem && !onDisk.inlineSync)
                #expect(onDisk.fileSystem == FileSystemType.name(disk.fileSystemMagic ?? -1))
            }
        }

        @Test("no file can be made in the directory: the mechanism is probed on a memfd and the report says so",
              arguments: BackendKind.aio)
        func probeOnMemfd(kind: BackendKind) {
            let probe = Prober(system: .live).probe(kind, in: "/nonexistent-asyncfsync-directory")
            #expect(probe.isUsable)
            #expect(probe.note?.contains("probed on a memfd") == true)
            #expect(probe.note?.contains("ENOENT") == true)
            #expect(probe.note?.contains("does not exist") == true, "a missing directory is reported as missing")
            #expect(!probe.description.contains(": usable"), "only the mechanism was probed: \(probe)")
            #expect(probe.description.contains("not probed on the data's file system"), "\(probe)")
            #expect(!probe.isCached)
        }

        /// One injected fault at one step of a probe, and what the probe must say.
        struct ProbeFault: Sendable, CustomTestStringConvertible {
            var kind: BackendKind
            var step: BackendProbe.Step
            var errno: Errno?
            var verdict: BackendProbe.Verdict
            var testDescription: String { "\(kind) \(step) \(errno?.symbolicName ?? "no completion") → \(verdict)" }

            func system() -> SystemCalls {
                var system = SystemCalls.live
                let errno = errno ?? .ioError
                switch (kind, step) {
                case (.libaio, .setup): system.ioSetup = { _, _ in .failure(errno) }
                case (.libaio, .submit): system.ioSubmit = { _, _, _ in .failure(errno) }
                case (.libaio, .completion):
                    system.ioGetevents = { context, minimum, maximum, events, timeout in
                        let result = SystemCalls.live.ioGetevents(context, minimum, maximum, events, timeout)
                        if case .success(let count) = result, count > 0 { events[0].res = -Int64(errno.rawValue) }
                        return result
                    }
                case (.libaio, .timeout): system.ioGetevents = { _, _, _, _, _ in .success(0) }
                case (.posix, .submit): system.aioFsync = { _, _ in .failure(errno) }
                case (.posix, .completion):
                    system.aioError = { control in
                        let status = SystemCalls.live.aioError(control)
                        return status == .inProgress ? status : .failed(errno)
                    }
                case (.posix, .timeout):
                    // "In progress" for 300 ms (the probe waits 50), then the truth: the clean-up
                    // thread must still end.
                    let start = ContinuousClock.now
                    system.aioError = { control in
                        ContinuousClock.now - start < .milliseconds(300) ? .inProgress : SystemCalls.live.aioError(control)
                    }
                    system.aioSuspend = { _, _, _ in .failure(.resourceTemporarilyUnavailable) }
                case (.posix, .setup), (.portable, _): break
                default: Issue.record("no fault for \(kind) at \(step)")
                }
                return system
            }
        }

        static let probeFaults: [ProbeFault] = [
            .init(kind: .libaio, step: .setup, errno: .noFunction, verdict: .unsupported),
            .init(kind: .libaio, step: .setup, errno: .notPermitted, verdict: .unsupported),
            .init(kind: .libaio, step: .setup, errno: .resourceTemporarilyUnavailable, verdict: .unsupported),
            .init(kind: .libaio, step: .setup, errno: .noMemory, verdict: .unavailable),
            .init(kind: .libaio, step: .submit, errno: .noFunction, verdict: .unsupported),
            .init(kind: .libaio, step: .submit, errno: .notPermitted, verdict: .unsupported),
            .init(kind: .libaio, step: .submit, errno: .invalidArgument, verdict: .unsupported),
            .init(kind: .libaio, step: .submit, errno: .badFileDescriptor, verdict: .unavailable),
            .init(kind: .libaio, step: .completion, errno: .ioError, verdict: .syncFailed),
            .init(kind: .libaio, step: .completion, errno: .noSpace, verdict: .syncFailed),
            .init(kind: .libaio, step: .timeout, errno: nil, verdict: .syncFailed),
            .init(kind: .posix, step: .submit, errno: .noFunction, verdict: .unsupported),
            .init(kind: .posix, step: .submit, errno: .invalidArgument, verdict: .unsupported),
            .init(kind: .posix, step: .submit, errno: .resourceTemporarilyUnavailable, verdict: .unavailable),
            .init(kind: .posix, step: .completion, errno: .ioError, verdict: .syncFailed),
            .init(kind: .posix, step: .timeout, errno: nil, verdict: .syncFailed),
        ]

        @Test("each injected fault at each probe step is reported with its step, errno and verdict",
              arguments: probeFaults)
        func probeFaultTable(fault: ProbeFault) async throws {
            let threads = Resources.threadCount()
            let probe = await Prober(system: fault.system(), timeout: .milliseconds(50)).probe(fault.kind, in: "/tmp")
            #expect(!probe.isUsable)
            #expect(probe.failedStep == fault.step)
            #expect(probe.errno == fault.errno)
            #expect(probe.verdict == fault.verdict)
            #expect(probe.isSupported == (fault.verdict == .syncFailed))
            #expect(probe.description.contains("unusable at \(fault.step)"))
            if let errno = fault.errno {
                #expect(probe.description.contains(errno.symbolicName))
            } else {
                #expect(probe.description.contains("no completion within 50"))
            }
            // Clean-up threads (io_destroy, a stuck sync's waiter) end.
            #expect(await Resources.settle(Resources.threadCount, atMost: threads) <= threads)
        }

        @Test("a sync that fails at completion in the probe is the file system's answer: no fallback")
        func completionFailureIsNoReasonToFallBack() async throws {
            let recorder = SyscallRecorder()
            recorder.injectAtCompletion([.ioError])
            let prober = Prober(system: recorder.system)
            let probe = await prober.probe(.libaio, in: "/tmp")
            #expect(!probe.isUsable && probe.isSupported)
            #expect(probe.failedStep == .completion)
            #expect(probe.errno == .ioError)

            recorder.injectAtCompletion([.ioError])
            let backend = try AsyncSync.makeBackend(.auto, prober: prober)
            #expect(backend.kind == .libaio)
            await backend.shutdown()
        }

        @Test("a setup failure that does not mean \"unsupported\" (ENOMEM) is reported, not a reason to fall back")
        func unavailableIsReported() {
            var system = SystemCalls.live
            system.ioSetup = { _, _ in .failure(.noMemory) }
            let prober = Prober(system: system)
            #expect {
                _ = try AsyncSync.makeBackend(.auto, prober: prober)
            } throws: { error in
                guard let error = error as? AsyncSyncError else { return false }
                return error.code == .backendUnavailable && error.errno == .noMemory && error.backend == .libaio
            }
        }
    }
}
#endif  // os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
