import CAsyncFsync
import CTestSupport
import Foundation
import Synchronization
import SystemPackage
import Testing

@testable import AsyncFsync

// The reliability review of the Linux engine (issue #11): its submission, hub, context and
// inline path. Compiled out under ASYNC_FSYNC_PORTABLE; PortableBackendTests covers that backend.
#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
/// Records descriptor closes and AIO context destruction, and flags every later use of them by a
/// system call of the backend (a write into a closed, possibly reused descriptor; a submission to a
/// destroyed context, whose control blocks are freed too).
final class ReleaseWatch: Sendable {
    struct State {
        var closed: Set<CInt> = []
        var destroyed: Set<aio_context_t> = []
        var violations: [String] = []
        var delays: [Duration] = []
    }
    let state = Locked(State())

    /// The first calls that wake a completion thread (write, io_submit) wait this long first.
    func delayWakes(_ delays: [Duration]) { state.withLock { $0.delays = delays } }

    private func takeDelay() -> Duration? {
        state.withLock { $0.delays.isEmpty ? nil : $0.delays.removeFirst() }
    }

    var violations: [String] { state.withLock { $0.violations } }

    func system(_ base: SystemCalls = .live) -> SystemCalls {
        var system = base
        system.close = { [self] fd in
            state.withLock { _ = $0.closed.insert(fd) }
            return base.close(fd)
        }
        system.eventfd = { [self] in
            let result = base.eventfd()
            if case .success(let fd) = result { state.withLock { _ = $0.closed.remove(fd) } }
            return result
        }
        system.write = { [self] fd, buffer, count in
            if let delay = takeDelay() { usleep(UInt32(delay.components.attoseconds / 1_000_000_000_000) + UInt32(delay.components.seconds) * 1_000_000) }
            state.withLock { if $0.closed.contains(fd) { $0.violations.append("write to fd \(fd) after it was closed") } }
            return base.write(fd, buffer, count)
        }
        system.ioDestroy = { [self] context in
            state.withLock { _ = $0.destroyed.insert(context) }
            return base.ioDestroy(context)
        }
        system.ioSetup = { [self] count, context in
            let result = base.ioSetup(count, context)
            if case .success = result { state.withLock { _ = $0.destroyed.remove(context.pointee) } }
            return result
        }
        system.ioSubmit = { [self] context, count, iocbs in
            // The old libaio driver woke its thread by submitting a private fsync (aio_data max).
            if count == 1, iocbs[0]?.pointee.aio_data == UInt64.max, let delay = takeDelay() {
                usleep(UInt32(delay.components.attoseconds / 1_000_000_000_000) + UInt32(delay.components.seconds) * 1_000_000)
            }
            state.withLock { if $0.destroyed.contains(context) { $0.violations.append("io_submit to a destroyed context") } }
            return base.ioSubmit(context, count, iocbs)
        }
        system.reapCompletions = { [self] context, events, maximum in
            state.withLock { if $0.destroyed.contains(context) { $0.violations.append("reaping a destroyed context") } }
            return base.reapCompletions(context, events, maximum)
        }
        return system
    }
}

extension AsyncFsyncTests {
    /// One regression test per defect of the reliability review (issue #11): each failed on the
    /// engine before the rewrite (except where its doc says otherwise) and passes now.
    @Suite struct Reliability {
        init() { GlibcAIOUnderSanitizer.configure }

        static let kinds = BackendKind.aio

        // MARK: 1. Two syncs in flight when a writeback fails

        @Test("#11.1 two syncs of one file in flight when its writeback fails: no caller is acknowledged over the lost data",
              arguments: kinds, [1, 2])
        func lostWritebackWithTwoSyncs(kind: BackendKind, descriptors: Int) async throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3 (scripts/install-deps test)") else { return }
            let fs = try FaultFS(writebackCache: true)
            let backend = try makeBackend(kind)
            let data = [UInt8](repeating: 0x41, count: 65_536)
            var rounds = 0
            for round in 0..<10 {
                let name = "wal-\(round)"
                let fd = try fs.open(name)
                let second = descriptors == 2 ? try FileDescriptor.open(fs.mountPoint.appending(name), .readWrite) : fd
                defer {
                    try? fd.close()
                    if descriptors == 2 { try? second.close() }
                }
                try await backend.fsync(fd)  // the first record is durable
                try fs.control("write_errno=EIO")
                _ = try fd.writeAll(toAbsoluteOffset: 0, data)  // cached by the kernel; its writeback fails
                async let first = caughtError { try await backend.fsync(fd) }
                async let other = caughtError { try await backend.fsync(second) }
                let (a, b) = await (first, other)
                try fs.control("write_errno=0")
                let onDisk = try Data(contentsOf: URL(fileURLWithPath: fs.backing.appending(name).string))
                guard !onDisk.starts(with: data) else { continue }  // the writeback happened to succeed
                rounds += 1
                for (caller, error) in [("first", a), ("second", b)] {
                    let failure = error as? AsyncSyncError
                    #expect(failure?.isDurabilityFailure == true,
                            "round \(round): the \(caller) caller was acknowledged over lost data (\(String(describing: error)))")
                }
            }
            #expect(rounds > 0, "the fault file system lost no write: the test proved nothing")
            await backend.shutdown()
        }

        @Test("#11.1 a success reaped in the same batch as a failure of its file is not acknowledged", arguments: kinds)
        func successReapedWithFailure(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let wal = try directory.file("wal")
            let walAgain = try FileDescriptor.open(directory.path.appending("wal"), .readWrite)  // a batch of its own
            let other = try directory.file("other")
            defer { try? wal.close(); try? walAgain.close(); try? other.close() }
            // The sync of `wal` fails with EIO; all three completions are reaped in one look.
            let failing = wal.rawValue
            // libaio: the control blocks of the three, noted where they are submitted (the
            // submitting thread wrote them; the completion side looks them up under the lock
            // instead of reading memory the kernel handed back, a hand-off ThreadSanitizer cannot
            // see). Their completion events are held back until all three have come, then handed
            // to the engine in one look.
            let controls = Locked<[UInt: CInt]>([:])
            let held = Locked<[io_event]>([])
            let ours: Set<CInt> = [wal.rawValue, walAgain.rawValue, other.rawValue]
            var system = SystemCalls.live
            system.ioSubmit = { context, count, list in
                controls.withLock { controls in
                    for index in 0..<count where ours.contains(CInt(list[index]!.pointee.aio_fildes)) {
                        controls[UInt(bitPattern: list[index])] = CInt(list[index]!.pointee.aio_fildes)
                    }
                }
                return SystemCalls.live.ioSubmit(context, count, list)
            }
            system.reapCompletions = { context, events, maximum in
                let result = SystemCalls.live.reapCompletions(context, events, maximum)
                guard case .success(let count) = result else { return result }
                return controls.withLock { controls in
                    held.withLock { held in
                        var kept = 0
                        for index in 0..<count {
                            if controls[UInt(events[index].obj)] != nil { held.append(events[index]) } else {
                                events[kept] = events[index]
                                kept += 1
                            }
                        }
                        guard held.count == ours.count, kept + held.count <= maximum else { return .success(kept) }
                        for var event in held {
                            if controls[UInt(event.obj)] == failing { event.res = -Int64(Errno.ioError.rawValue) }
                            events[kept] = event
                            kept += 1
                        }
                        held.removeAll()
                        controls.removeAll()
                        return .success(kept)
                    }
                }
            }
            // POSIX: aio_error reports each of the three as still running until a look of the
            // completion thread finds all three completed; the next look reaps them together.
            let completed = Locked<Set<CInt>>([])
            let released = Atomic<Bool>(false)
            system.aioError = { control in
                let status = SystemCalls.live.aioError(control)
                let fd = control.pointee.aio_fildes
                guard ours.contains(fd), status != .inProgress else { return status }
                if !released.load(ordering: .sequentiallyConsistent) {
                    let all = completed.withLock { completed in
                        completed.insert(fd)
                        return completed.count == ours.count
                    }
                    if all { released.store(true, ordering: .sequentiallyConsistent) }
                    return .inProgress  // also the call that saw the last one: the next look reaps all three
                }
                return status == .succeeded && fd == failing ? .failed(.ioError) : status
            }
            let backend = try makeBackend(kind, system: system)
            let tasks = [wal, walAgain, other].map { fd in Task { await caughtError { try await backend.fdatasync(fd) } } }
            let errors = await tasks.asyncMap { await $0.value as? AsyncSyncError }
            #expect(errors[0]?.code == .system && errors[0]?.errno == .ioError, "\(errors)")
            #expect(errors[1]?.code == .concurrentFailure && errors[1]?.errno == .ioError && errors[1]?.isDurabilityFailure == true,
                    "the other descriptor's success was reaped with the failure: \(errors)")
            #expect(errors[2] == nil, "another file is not affected: \(errors)")
            await backend.shutdown()
        }

        @Test("#11.1 without sticky failures the in-flight rule still holds; later syncs run", arguments: kinds)
        func inFlightRuleWithoutStickyFailures(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onDisk()
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, stickyFailures: false, system: recorder.system)
            let wal = try directory.file("wal")
            defer { try? wal.close() }
            recorder.closeGate()
            let first = Task { await caughtError { try await backend.fdatasync(wal) } }
            try await waitUntil { recorder.submitted == 1 }
            let second = Task { await caughtError { try await backend.fdatasync(wal) } }  // waits for the next sync
            try await waitUntil { waiting(backend) == 1 }
            recorder.injectAtCompletion([.ioError])
            recorder.openGate()
            #expect((await first.value as? AsyncSyncError)?.errno == .ioError)
            let overturned = await second.value as? AsyncSyncError
            #expect(overturned?.code == .concurrentFailure && overturned?.errno == .ioError,
                    "its own sync said OK after the failure; the kernel had reported the loss to the first")
            #expect(recorder.submitted == 2)
            try await backend.fdatasync(wal)  // arrived after the failure: not refused without the sticky rule
            await backend.shutdown()
        }

        // MARK: 2. EAGAIN while requests are in flight

        @Test("#11.2 EAGAIN at submit with a sync in flight: the request waits for a completion instead of retrying at once",
              arguments: kinds)
        func eagainWaitsForCompletion(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let a = try directory.file("a")
            let b = try directory.file("b")
            defer { try? a.close(); try? b.close() }
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, system: recorder.system)
            recorder.closeGate()
            let first = Task { try await backend.fsync(a) }
            try await waitUntil { recorder.submitted == 1 }
            recorder.injectAtSubmit(Array(repeating: .resourceTemporarilyUnavailable, count: 1_000_000))
            let second = Task { try await backend.fsync(b) }
            try await Task.sleep(for: .milliseconds(200))
            let calls = recorder.submitCalls
            #expect(calls <= 3, "\(calls) submissions while nothing could complete (a livelock or busy spin)")
            recorder.state.withLock { $0.submitErrnos = [] }  // the system has resources again
            recorder.openGate()
            try await first.value
            try await second.value
            await backend.shutdown()
        }

        // MARK: 3. Missed wake-ups at shutdown

        enum ShutdownCase: String, CaseIterable, CustomTestStringConvertible {
            /// The submission fails with EBADF (the request completes at submit, nothing in flight).
            case submitFails
            /// EAGAIN with nothing in flight (the request fails rather than wait for ever).
            case submitExhausted
            /// The submission succeeds; the request completes later.
            case submitSucceeds
            var testDescription: String { rawValue }
        }

        @Test("#11.3 shutdown begun while a request is being submitted returns once nothing is outstanding, however the request ended",
              arguments: kinds, ShutdownCase.allCases)
        func shutdownWakesTheCompletionThread(kind: BackendKind, scenario: ShutdownCase) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let fd = try directory.file("data")
            defer { try? fd.close() }
            let recorder = SyscallRecorder()
            var system = recorder.system
            let slowSubmit = Atomic<Bool>(false)
            let ioSubmit = system.ioSubmit, aioFsync = system.aioFsync
            system.ioSubmit = { context, count, iocbs in
                if slowSubmit.exchange(false, ordering: .relaxed) { usleep(150_000) }
                return ioSubmit(context, count, iocbs)
            }
            system.aioFsync = { mode, control in
                if slowSubmit.exchange(false, ordering: .relaxed) { usleep(150_000) }
                return aioFsync(mode, control)
            }
            let backend = try makeBackend(kind, system: system)
            try await backend.fsync(fd)
            try await Task.sleep(for: .milliseconds(20))  // the completion thread parks
            switch scenario {
            case .submitFails: recorder.injectAtSubmit([.badFileDescriptor])
            case .submitExhausted: recorder.injectAtSubmit([.resourceTemporarilyUnavailable])
            case .submitSucceeds: break
            }
            slowSubmit.store(true, ordering: .relaxed)
            let request = Task { await caughtError { try await backend.fsync(fd) } as? AsyncSyncError }
            try await Task.sleep(for: .milliseconds(50))  // inside the slow submission, holding the submitter role
            let returned = await finishes(within: .milliseconds(900)) { await backend.shutdown() }
            #expect(returned, "shutdown() had not returned 0.9 s after it was called (the submission takes 0.15 s)")
            let error = await request.value
            switch scenario {
            case .submitFails: #expect(error?.errno == .badFileDescriptor && error?.step == .submit)
            case .submitExhausted: #expect(error?.errno == .resourceTemporarilyUnavailable)
            case .submitSucceeds: #expect(error == nil)
            }
        }

        // MARK: 4. Wake-ups after the driver was released

        @Test("#11.4 a wake-up never writes to a closed eventfd or a destroyed context", arguments: kinds)
        func noWakeAfterRelease(kind: BackendKind) async throws {
            let watch = ReleaseWatch()
            let backend = try makeBackend(kind, system: watch.system())
            try await Task.sleep(for: .milliseconds(20))  // the completion thread parks
            // Two wake-ups in flight at once, the second much slower: a job from outside, then shutdown.
            watch.delayWakes([.milliseconds(50), .milliseconds(300)])
            let job = Task(executorPreference: taskExecutor(of: backend)) { currentThreadName() }
            let shutdown = Task { await backend.shutdown() }
            _ = await job.value
            await shutdown.value
            try await Task.sleep(for: .milliseconds(400))  // let a slow waker land, if there is one
            #expect(watch.violations.isEmpty, "\(watch.violations)")
        }

        // MARK: 5. The completion thread cannot start

        @Test("#11.5 a backend whose completion thread cannot start fails with the errno, and frees nothing twice",
              arguments: kinds)
        func threadCannotStart(kind: BackendKind) throws {
            var system = SystemCalls.live
            system.startThread = { _, _ in .failure(.resourceTemporarilyUnavailable) }
            for _ in 0..<3 {
                #expect {
                    _ = try makeBackend(kind, system: system)
                } throws: { error in
                    let error = error as? AsyncSyncError
                    return error?.code == .backendUnavailable && error?.errno == .resourceTemporarilyUnavailable
                        && error?.systemCall == "pthread_create"
                }
            }
        }

        @Test("#11.5 on a real kernel: in a pids cgroup with no room for a thread, creating a backend is an error, not a crash",
              arguments: ["libaio", "posix"])
        func pidsLimit(backend: String) throws {
            let cgroups = "/sys/fs/cgroup/pids"
            guard TestEnvironment.require(ProbeTool.path != nil, "asyncfsync-probe is not built next to the tests"),
                  TestEnvironment.require(getuid() == 0 && FileManager.default.fileExists(atPath: cgroups + "/cgroup.procs"),
                                          "needs root and the cgroup v1 pids controller at \(cgroups)"),
                  let tool = ProbeTool.path else { return }
            let group = "\(cgroups)/asyncfsync-test-\(getpid())"
            try FileManager.default.createDirectory(atPath: group, withIntermediateDirectories: false)
            defer { _ = rmdir(group) }
            try "1".write(toFile: group + "/pids.max", atomically: false, encoding: .utf8)
            let directory = try ScratchDirectory.onDisk()
            // The shell moves itself into the group, then becomes the tool (same pid): no thread fits.
            var environment = ProcessInfo.processInfo.environment
            environment[AsyncSync.environmentVariable] = backend
            let script = "echo $$ > \(group)/cgroup.procs && exec \(tool) \(directory.path.string)"
            let (status, output) = try runCommand(["sh", "-c", script], environment: environment)
            #expect(status == 1, "exit \(status) (a crash is > 128):\n\(output)")
            #expect(output.contains("pthread_create") || output.contains("EAGAIN"), "\(output)")
            #expect(!output.contains("double free"), "\(output)")
        }

        // MARK: 6. The inline path and device nodes

        @Test("#11.6 the inline path never applies to device nodes, although devtmpfs reports the tmpfs magic",
              arguments: kinds)
        func inlineNeverForDevices(kind: BackendKind) async throws {
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, inline: true, system: recorder.system)
            let null = try FileDescriptor.open("/dev/null", .writeOnly)
            defer { try? null.close() }
            #expect(FileSystemMagic.of("/dev/null") == FileSystemMagic.tmpfs)
            let error = await caughtError { try await backend.fsync(null) } as? AsyncSyncError
            #expect(error?.errno == .invalidArgument, "a device node goes the asynchronous way and gets its error there")
            #expect(recorder.inlineSyncs == 0, "fsync of a device ran on the caller's thread")
            // A regular file on tmpfs still takes the inline path.
            let directory = try ScratchDirectory.onTmpfs()
            let file = try directory.file("file")
            defer { try? file.close() }
            try await backend.fsync(file)
            #expect(recorder.inlineSyncs == 1)
            await backend.shutdown()
        }

        @Test("#11.6 GroupCommit shares the syncs of a device node like a file's")
        func groupCommitSharesDeviceSyncs() async throws {
            let scripted = ScriptedBackend()
            scripted.hold()
            let group = GroupCommit(wrapping: scripted)
            let device = try FileDescriptor.open("/dev/zero", .readOnly)
            defer { try? device.close() }
            let tasks = (0..<10).map { _ in Task { try await group.fsync(device) } }
            try await waitUntil(timeout: .seconds(2)) { scripted.calls == 1 && group.queuedCount == 9 }
            scripted.release(upTo: 2)
            for task in tasks { try await task.value }
            #expect(scripted.calls == 2)
            await group.shutdown()
        }

        // MARK: 7. GroupCommit and a cancellation before queueing

        @Test("#11.7 a follower cancelled after its first cancellation check but before it queues throws CancellationError")
        func groupCommitCancellationBeforeQueueing() async throws {
            // The window had no hook on the old code (it checked cancellation after identifying the
            // file); here the identification runs inside it and cancels the task there.
            let setup = try ScriptedGroup()
            defer { try? setup.fd.close() }
            let armed = Atomic<Bool>(false)
            var system = SystemCalls.live
            system.fileIdentity = { fd in
                if armed.exchange(false, ordering: .relaxed) { withUnsafeCurrentTask { $0?.cancel() } }
                return SystemCalls.live.fileIdentity(fd)
            }
            let group = GroupCommit(wrapping: setup.scripted, system: system)
            let fd = setup.fd
            let leader = Task { try await group.fdatasync(fd) }
            try await waitUntil { setup.scripted.calls == 1 }
            armed.store(true, ordering: .relaxed)
            let follower = Task { try await group.fdatasync(fd) }
            await #expect(throws: CancellationError.self) { try await follower.value }
            #expect(group.queuedCount == 0, "the cancelled request is not left in the queue")
            setup.scripted.release(upTo: 1)
            try await leader.value
            #expect(setup.scripted.calls == 1, "no sync for the cancelled request")
            await group.shutdown()
        }

        // MARK: 8. Directories through the POSIX fallback

        @Test("#11.8 a directory on a file system without AIO fsync is served through POSIX aio, first or after a file")
        func directoryThroughFallback() async throws {
            for directoryFirst in [true, false] {
                let directory = try ScratchDirectory.onDisk()
                var system = SystemCalls.live
                system.ioSubmit = { _, _, _ in .failure(.invalidArgument) }  // no AIO fsync on this file system
                let backend = try LibaioBackend(capacity: 16, system: system)
                let dir = try FileDescriptor.open(directory.path, .readOnly, options: .directory)
                let file = try directory.file("file")
                defer { try? dir.close(); try? file.close() }
                if directoryFirst {
                    try await backend.fsync(dir)
                    try await backend.fsync(file)
                } else {
                    try await backend.fsync(file)
                    try await backend.fsync(dir)
                }
                #expect(!backend.posixFileSystems.isEmpty)
                await backend.shutdown()
            }
        }

        // MARK: 9. The error model

        @Test("#11.9 a submit-time EPERM, EFAULT or ENOMEM is not a durability failure and is not sticky",
              arguments: kinds, [Errno.notPermitted, .badAddress, .noMemory])
        func submitErrorsAreNotSticky(kind: BackendKind, errno: Errno) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let fd = try directory.file("data")
            defer { try? fd.close() }
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, system: recorder.system)
            recorder.injectAtSubmit([errno])
            let error = try #require(await caughtError { try await backend.fsync(fd) } as? AsyncSyncError)
            #expect(error.code == .system && error.errno == errno && error.step == .submit)
            #expect(!error.isDurabilityFailure, "nothing reached the disk")
            try await backend.fsync(fd)  // runs, not refused
            #expect(recorder.submitted == 1)
            await backend.shutdown()
        }

        @Test("#11.9 a durability failure of a file statx cannot identify fails closed", arguments: kinds)
        func unidentifiedFailureFailsClosed(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let fd = try directory.file("data")
            defer { try? fd.close() }
            let recorder = SyscallRecorder()
            let statxFails = Atomic<Bool>(false)
            var system = recorder.system
            system.fileIdentity = { fd in
                statxFails.load(ordering: .relaxed) ? .failure(.noMemory) : SystemCalls.live.fileIdentity(fd)
            }
            let backend = try makeBackend(kind, system: system)
            statxFails.store(true, ordering: .relaxed)
            recorder.injectAtCompletion([.ioError])
            #expect((await caughtError { try await backend.fsync(fd) } as? AsyncSyncError)?.errno == .ioError)
            let refused = await caughtError { try await backend.fsync(fd) } as? AsyncSyncError
            #expect(refused?.code == .earlierFailure && refused?.errno == .ioError, "the record was not dropped")
            #expect(recorder.submitted == 1)
            statxFails.store(false, ordering: .relaxed)
            #expect(try backend.clearFailure(of: fd))
            try await backend.fsync(fd)
            await backend.shutdown()
        }

        @Test("#11.9 GroupCommit: a batch leader's own descriptor error (O_PATH: EBADF) is its own; the batch syncs through another descriptor")
        func groupCommitLeaderDescriptorError() async throws {
            let setup = try ScriptedGroup()
            defer { try? setup.fd.close() }
            let (scripted, group, fd) = (setup.scripted, setup.group, setup.fd)
            let path = setup.directory.path.appending("wal")
            let pathOnly = FileDescriptor(rawValue: path.withPlatformString { open($0, 0o10000000 | O_CLOEXEC) })  // O_PATH
            #expect(pathOnly.rawValue >= 0)
            let others = try (0..<3).map { _ in try FileDescriptor.open(path, .readWrite) }
            defer { try? pathOnly.close(); for fd in others { try? fd.close() } }
            let first = Task { try await group.fsync(fd) }
            try await waitUntil { scripted.calls == 1 }
            // The O_PATH request is the first of the next batch, so it leads it.
            let leader = Task { await caughtError { try await group.fsync(pathOnly) } as? AsyncSyncError }
            try await waitUntil { group.queuedCount == 1 }
            let followers = others.map { fd in Task { try await group.fsync(fd) } }
            try await waitUntil { group.queuedCount == 4 }
            scripted.fail(call: 1, with: .badFileDescriptor)
            scripted.release(upTo: 2)  // the first sync, then the O_PATH leader's
            try await first.value
            try await waitUntil { scripted.calls == 3 }  // the batch's sync, through a follower's descriptor
            scripted.release(upTo: 3)
            let leaderError = await leader.value
            #expect(leaderError?.errno == .badFileDescriptor && leaderError?.descriptor == pathOnly)
            for task in followers { try await task.value }
            #expect(scripted.calls == 3)
            await group.shutdown()
        }

        // MARK: 10. Creation and probing from async code

        @Test("#11.10 a probe on a file system that does not answer is bounded and blocks no thread of the pool",
              arguments: kinds)
        func boundedProbe(kind: BackendKind) async throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3") else { return }
            let fs = try FaultFS()
            let prober = Prober(system: .live, timeout: .milliseconds(300), fileSystemTimeout: .milliseconds(200))
            fs.stopDaemon()  // open(2) in the mount waits for the daemon
            let clock = ContinuousClock()
            let start = clock.now
            let ticks = Atomic<Int>(0)
            async let ticker: Void = {
                for _ in 0..<20 {
                    try? await Task.sleep(for: .milliseconds(10))
                    ticks.add(1, ordering: .relaxed)
                }
            }()
            // More probes than the pool has threads, all at once.
            let probes = await withTaskGroup(of: BackendProbe.self) { group in
                let mount = fs.mountPoint
                for _ in 0..<4 { group.addTask { await prober.probe(kind, in: mount) } }
                return await group.reduce(into: [BackendProbe]()) { $0.append($1) }
            }
            await ticker
            let elapsed = clock.now - start
            fs.continueDaemon()
            #expect(ticks.load(ordering: .relaxed) == 20, "the pool kept running")
            #expect(elapsed < .seconds(3), "bounded: \(elapsed)")
            for probe in probes {
                #expect(probe.failedStep == .timeout, "\(probe)")
                // Which step was stuck depends on what the kernel still had cached of the mount.
                #expect(probe.description.contains("while") || probe.description.contains("no completion within"), "\(probe)")
            }
        }

        @Test("#11.10 the async makeBackend(directory:) and probe(directory:) work on the data's file system")
        func asyncCreation() async throws {
            let directory = try ScratchDirectory.onDisk()
            let probes = await AsyncSync.probe(directory: directory.path)
            #expect(probes.count == BackendKind.tested.count)
            #expect(probes.allSatisfy { $0.directory == directory.path })
            for kind in BackendKind.tested {
                let backend = try await AsyncSync.makeBackend(
                    environment: [AsyncSync.environmentVariable: kind.rawValue], directory: directory.path)
                #expect(backend.kind == kind)
                let fd = try directory.file("f-\(kind)")
                defer { try? fd.close() }
                try await backend.fdatasync(fd)
                await backend.shutdown()
            }
        }

        // MARK: 11. Many backends in one process

        @Test("#11.11 more POSIX backends than glibc has helper threads, and hundreds of either kind")
        func manyBackends() async throws {
            let directory = try ScratchDirectory.onDisk()
            let threadsBefore = await Resources.settle(within: 2, Resources.threadCount, atMost: 0)
            for (kind, count) in [(BackendKind.posix, 40), (.posix, 300), (.libaio, 100)] {
                let backends: [any AsyncSyncBackend] = try (0..<count).map { _ -> any AsyncSyncBackend in
                    if kind == .posix { return try PosixAIOBackend(inlineMemoryFileSystems: false) }
                    return try LibaioBackend(capacity: 16, inlineMemoryFileSystems: false)
                }
                let files = try (0..<count).map { try directory.file("f-\(kind)-\(count)-\($0)") }
                defer { for fd in files { try? fd.close() } }
                let done = await finishes(within: .seconds(20)) {
                    await withTaskGroup(of: Void.self) { group in
                        for (backend, fd) in zip(backends, files) { group.addTask { try? await backend.fdatasync(fd) } }
                    }
                }
                #expect(done, "\(count) \(kind) backends: the syncs did not complete")
                // One completion thread per kind, however many backends.
                #expect(Resources.threadCount() <= threadsBefore + 24, "\(Resources.threadCount()) threads for \(count) backends")
                for backend in backends { await backend.shutdown() }
            }
        }

        // MARK: 12. A descriptor closed and reused while its request waits

        @Test("#11.12 a queued request whose descriptor was closed and reused fails with EBADF; the other file is not synced",
              arguments: kinds, [false, true])
        func reusedDescriptorWhileQueued(kind: BackendKind, sameDescriptor: Bool) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, capacity: 1, system: recorder.system)
            let first = try directory.file("first")
            defer { try? first.close() }
            recorder.closeGate()
            let running = Task { try await backend.fsync(first) }
            try await waitUntil { recorder.submitted == 1 }
            // The waiting request: on another file (it waits for the only slot), or on the same
            // descriptor (it waits for that descriptor's next sync).
            let victim = sameDescriptor ? first : try directory.file("victim")
            let waitingTask = Task { await caughtError { try await backend.fsync(victim) } as? AsyncSyncError }
            try await waitUntil { outstanding(backend) == 2 }
            try victim.close()
            let reused = try directory.file("unrelated")
            defer { try? reused.close() }
            try #require(reused.rawValue == victim.rawValue, "the number was not reused (another thread opened one)")
            recorder.openGate()
            if !sameDescriptor { try await running.value } else { _ = await caughtError { try await running.value } }
            let error = await waitingTask.value
            #expect(error?.errno == .badFileDescriptor, "\(String(describing: error))")
            #expect(recorder.submitted == 1, "no sync of the unrelated file was made for it")
            await backend.shutdown()
        }

        @Test("#11.12 GroupCommit: a waiter whose descriptor was closed and reused does not lead the batch over the other file")
        func reusedDescriptorInGroupCommit() async throws {
            let setup = try ScriptedGroup()
            defer { try? setup.fd.close() }
            let (scripted, group, fd) = (setup.scripted, setup.group, setup.fd)
            let leader = Task { try await group.fdatasync(fd) }
            try await waitUntil { scripted.calls == 1 }
            let victim = try FileDescriptor.open(setup.directory.path.appending("wal"), .readWrite)
            let follower = Task { await caughtError { try await group.fdatasync(victim) } as? AsyncSyncError }
            try await waitUntil { group.queuedCount == 1 }
            try victim.close()
            let reused = try setup.directory.file("unrelated")
            defer { try? reused.close() }
            try #require(reused.rawValue == victim.rawValue, "the number was not reused (another thread opened one)")
            scripted.release(upTo: 2)
            try await leader.value
            let error = await follower.value
            #expect(error?.errno == .badFileDescriptor, "\(String(describing: error))")
            #expect(scripted.calls == 1, "no sync through the reused number")
            await group.shutdown()
        }
    }
}
#endif  // os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
