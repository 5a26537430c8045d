import CTestSupport
import Foundation
import Synchronization
import SystemPackage
import Testing

@testable import AsyncFsync

extension AsyncFsyncTests {
    /// Exactly once, cancellation, shutdown, resources, and the errno paths (through the
    /// injectable syscall table).
    @Suite struct Semantics {
        init() { GlibcAIOUnderSanitizer.configure }

        static let kinds = BackendKind.tested

        @Test("a task cancelled before the call ends with CancellationError and submits nothing", arguments: kinds)
        func cancelledBeforeCall(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, system: recorder.system)
            let fd = try directory.file("data")
            defer { try? fd.close() }
            let task = Task {
                withUnsafeCurrentTask { $0?.cancel() }
                try await backend.fsync(fd)
            }
            await #expect(throws: CancellationError.self) { try await task.value }
            await backend.shutdown()
            #expect(recorder.submitCalls == 0)
        }

        @Test("a request cancelled while queued ends with CancellationError and is never submitted", arguments: kinds)
        func cancelledWhileQueued(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, capacity: 1, system: recorder.system)
            let fd = try directory.file("data")
            defer { try? fd.close() }

            recorder.closeGate()  // the first request's completion is held back: its slot stays taken
            let first = Task { try await backend.fsync(fd) }
            while recorder.submitted < 1 { try await Task.sleep(for: .milliseconds(1)) }
            let second = Task { try await backend.fdatasync(fd) }
            while outstanding(backend) < 2 { try await Task.sleep(for: .milliseconds(1)) }
            second.cancel()
            await #expect(throws: CancellationError.self) { try await second.value }
            recorder.openGate()
            try await first.value
            await backend.shutdown()
            #expect(recorder.submitted == 1, "the cancelled request never reached the system")
        }

        @Test("a request cancelled after submission still reports the system's result", arguments: kinds)
        func cancelledAfterSubmit(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, system: recorder.system)
            let fd = try directory.file("data")
            defer { try? fd.close() }
            recorder.closeGate()
            recorder.injectAtCompletion([.ioError])
            let task = Task { try await backend.fdatasync(fd) }
            while recorder.submitted < 1 { try await Task.sleep(for: .milliseconds(1)) }
            task.cancel()
            recorder.openGate()
            let failure = await caughtError { try await task.value }
            #expect((failure as? AsyncSyncError)?.errno == .ioError, "the durability failure is delivered, not replaced by cancellation")
            await backend.shutdown()
        }

        @Test("shutdown: in-flight and queued requests complete, new ones are refused, twice is harmless", arguments: kinds)
        func shutdownWithRequestsInFlight(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onDisk()
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, capacity: 8, system: recorder.system)
            let files = try (0..<16).map { try directory.file("data-\($0)") }
            defer { for fd in files { try? fd.close() } }

            recorder.closeGate()
            // 16 files, 4 requests each: 8 syncs in the system, 8 files waiting for a slot, and
            // requests waiting for their descriptor's next sync.
            let accepted = (0..<64).map { index in Task { try await backend.fdatasync(files[index % 16]) } }
            try await waitUntil { outstanding(backend) == 64 }
            let shutdown = Task { await backend.shutdown() }
            try await waitUntil { !isAcceptingRequests(backend) }
            let refused = await caughtError { try await backend.fsync(files[0]) } as? AsyncSyncError
            #expect(refused?.code == .shutDown)
            #expect(refused?.errno == nil)
            recorder.openGate()
            for task in accepted { try await task.value }  // every accepted request succeeded
            await shutdown.value
            await backend.shutdown()  // harmless
            #expect(recorder.submitted >= 16 && recorder.submitted <= 64)
            let late = await caughtError { try await backend.fsync(files[0]) } as? AsyncSyncError
            #expect(late?.code == .shutDown)
        }

        @Test("AIO contexts, threads and descriptors return to their baseline after shutdown", arguments: kinds)
        func resourcesReturnToBaseline(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data")
            defer { try? fd.close() }
            // Let helper threads of earlier tests retire first.
            let threadsBefore = await Resources.settle({ Resources.threadCount() }, atMost: 0)
            // Probes of earlier tests destroy their contexts on short-lived threads.
            let aioBefore = await Resources.settle(Resources.aioContexts, atMost: 0)
            let descriptorsBefore = Resources.openDescriptorCount()

            for _ in 0..<3 {
                let backend = try makeBackend(kind, capacity: 128)
                if kind == .libaio { #expect(Resources.aioContexts() > aioBefore) }
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for _ in 0..<500 { group.addTask { try await backend.fsync(fd) } }
                    try await group.waitForAll()
                }
                await backend.shutdown()
                #expect(Resources.aioContexts() == aioBefore, "the AIO context is destroyed by shutdown")
            }
            #expect(Resources.openDescriptorCount() <= descriptorsBefore, "no descriptor leaked")
            let threadsAfter = await Resources.settle({ Resources.threadCount() }, atMost: threadsBefore)
            #expect(threadsAfter <= threadsBefore, "the completion thread and glibc's helpers are gone")
        }

        @Test("a backend dropped without shutdown releases its resources", arguments: kinds)
        func releasedOnDeinit(kind: BackendKind) async throws {
            try await Task.sleep(for: .milliseconds(1))  // the runtime opens its timer descriptors on first use
            let aioBefore = await Resources.settle(Resources.aioContexts, atMost: 0)
            let descriptorsBefore = Resources.openDescriptorCount()
            do {
                let backend = try makeBackend(kind)
                _ = backend.kind
            }
            let aioAfter = await Resources.settle(Resources.aioContexts, atMost: aioBefore)
            #expect(aioAfter == aioBefore)
            let descriptorsAfter = await Resources.settle({ Resources.openDescriptorCount() }, atMost: descriptorsBefore)
            #expect(descriptorsAfter == descriptorsBefore, "\(Resources.openDescriptors())")
        }

        static let completionErrnos: [Errno] = [.ioError, .noSpace, .diskQuotaExceeded, .readOnlyFileSystem, .notPermitted, .socketNotConnected]

        @Test("an errno at completion becomes the same error on every backend, reported once, never retried",
              arguments: completionErrnos)
        func errnoAtCompletion(errno: Errno) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let fd = try directory.file("data")
            defer { try? fd.close() }
            var seen: [AsyncSyncError] = []
            for kind in BackendKind.tested {
                for mode in [SyncMode.fsync, .fdatasync] {
                    let recorder = SyscallRecorder()
                    let backend = try makeBackend(kind, system: recorder.system)
                    recorder.injectAtCompletion([errno])
                    let failure = try #require(await caughtError { try await backend.sync(fd, mode: mode) } as? AsyncSyncError)
                    expectDurabilityFailureAtCompletion(failure, errno: errno, mode: mode, backend: kind, descriptor: fd)
                    #expect(recorder.submitted == 1, "a failed sync is never retried")
                    // The failure is sticky: the next sync of the file is refused without running.
                    let again = try #require(await caughtError { try await backend.sync(fd, mode: mode) } as? AsyncSyncError)
                    #expect(again.code == .earlierFailure)
                    #expect(again.errno == errno)
                    #expect(again.isDurabilityFailure)
                    #expect(recorder.submitted == 1)
                    #expect(try backend.clearFailure(of: fd))
                    try await backend.sync(fd, mode: mode)
                    #expect(recorder.submitted == 2)
                    await backend.shutdown()
                    if mode == .fdatasync { seen.append(failure) }
                }
            }
            #expect(seen.count == BackendKind.tested.count)
            for other in seen.dropFirst() {
                #expect(seen[0].code == other.code && seen[0].errno == other.errno && seen[0].operation == other.operation)
            }
        }

        @Test("a durability failure is sticky per file (any descriptor), until cleared", arguments: kinds)
        func stickyPerFile(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onDisk()
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, system: recorder.system)
            let wal = try directory.file("wal")
            let other = try directory.file("other")
            defer { try? wal.close(); try? other.close() }
            recorder.injectAtCompletion([.ioError])
            await #expect(throws: AsyncSyncError.self) { try await backend.fdatasync(wal) }

            // Another descriptor of the same file: still refused, with the original errno.
            let walAgain = try FileDescriptor.open(directory.path.appending("wal"), .readWrite)
            defer { try? walAgain.close() }
            let refused = try #require(await caughtError { try await backend.fsync(walAgain) } as? AsyncSyncError)
            #expect(refused.code == .earlierFailure)
            #expect(refused.errno == .ioError)
            #expect(refused.step == .request)
            #expect(refused.operation == .fsync)
            #expect(refused.description.contains("an earlier sync of this file failed"))
            // Other files are not affected.
            try await backend.fdatasync(other)
            #expect(recorder.submitted == 2)

            #expect(try backend.clearFailure(of: walAgain))
            #expect(try !backend.clearFailure(of: walAgain))
            try await backend.fdatasync(wal)
            await backend.shutdown()
        }

        @Test("sticky failures can be turned off; submit-time errors are never sticky", arguments: kinds)
        func stickyOff(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, stickyFailures: false, system: recorder.system)
            let fd = try directory.file("data")
            defer { try? fd.close() }
            recorder.injectAtCompletion([.noSpace])
            await #expect(throws: AsyncSyncError.self) { try await backend.fdatasync(fd) }
            try await backend.fdatasync(fd)
            await backend.shutdown()

            let sticky = try makeBackend(kind)
            let pipe = try FileDescriptor.pipe()
            defer { try? pipe.readEnd.close(); try? pipe.writeEnd.close() }
            for _ in 0..<2 {
                let failure = await caughtError { try await sticky.fsync(pipe.writeEnd) } as? AsyncSyncError
                #expect(failure?.code == .system, "EINVAL is the descriptor's, not a lost write: not sticky")
            }
            await sticky.shutdown()
        }

        @Test("EINTR at completion is submitted again (kernel AIO, the portable backend; glibc retries it itself)",
              arguments: BackendKind.tested.filter { $0 != .posix })
        func interruptedIsRetried(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let fd = try directory.file("data")
            defer { try? fd.close() }
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, system: recorder.system)
            recorder.injectAtCompletion([.interrupted, .interrupted])
            try await backend.fdatasync(fd)
            #expect(recorder.submitted == 3)
            // Endless EINTR is reported after the retry limit instead of spinning forever.
            let limit = Int(EngineState.maximumInterruptedRetries)
            recorder.injectAtCompletion(Array(repeating: .interrupted, count: limit + 1))
            let failure = await caughtError { try await backend.fdatasync(fd) } as? AsyncSyncError
            #expect(failure?.errno == .interrupted)
            #expect(recorder.submitted == 3 + limit + 1)
            await backend.shutdown()
        }

        #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE  // submission to the kernel or glibc
        @Test("EAGAIN at submit makes the request wait for a completion (backpressure)", arguments: BackendKind.aio)
        func eagainAtSubmitWaits(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let fd = try directory.file("data")
            let other = try directory.file("other")
            defer { try? fd.close(); try? other.close() }
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, system: recorder.system)
            recorder.closeGate()
            let first = Task { try await backend.fsync(fd) }
            try await waitUntil { recorder.submitted == 1 }
            recorder.injectAtSubmit([.resourceTemporarilyUnavailable])
            let second = Task { try await backend.fsync(other) }
            try await waitUntil { recorder.submitCalls == 2 }
            try await Task.sleep(for: .milliseconds(20))
            #expect(outstanding(backend) == 2, "the refused request waits in the queue")
            #expect(recorder.submitCalls == 2, "and is not submitted again until a completion frees resources")
            recorder.openGate()
            try await first.value
            try await second.value
            #expect(recorder.submitted == 2)
            await backend.shutdown()
        }

        @Test("EAGAIN at submit with nothing in flight fails instead of waiting forever", arguments: BackendKind.aio)
        func eagainWithNothingInFlight(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let fd = try directory.file("data")
            defer { try? fd.close() }
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, system: recorder.system)
            recorder.injectAtSubmit([.resourceTemporarilyUnavailable])
            let failure = await caughtError { try await backend.fsync(fd) } as? AsyncSyncError
            #expect(failure?.errno == .resourceTemporarilyUnavailable)
            #expect(failure?.step == .submit)
            #expect(failure?.isDurabilityFailure == false)
            try await backend.fsync(fd)
            await backend.shutdown()
        }
        #endif

        #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
        @Test("a short io_submit count: the refused iocb gets its own errno, the others run")
        func shortSubmitCount() async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let good = try directory.file("good")
            defer { try? good.close() }
            let recorder = SyscallRecorder()
            let backend = try makeBackend(.libaio, system: recorder.system)
            let closed = try directory.file("closed")  // after the backend, so its number is not reused by it
            try closed.close()
            // Queue a batch while the submitter is busy, so good and bad requests share io_submit calls.
            let results = await withTaskGroup(of: Errno?.self) { group in
                for index in 0..<200 {
                    group.addTask {
                        let fd = index % 3 == 0 ? closed : good
                        return (await caughtError { try await backend.fsync(fd) } as? AsyncSyncError)?.errno
                    }
                }
                return await group.reduce(into: [Errno?]()) { $0.append($1) }
            }
            #expect(results.filter { $0 == .badFileDescriptor }.count == 67)
            #expect(results.filter { $0 == nil }.count == 133)
            await backend.shutdown()
        }

        @Test("POSIX aio keeps working when the host limits glibc to one helper thread")
        func singleGlibcHelper() async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let files = try (0..<4).map { try directory.file("f\($0)") }
            defer { for fd in files { try? fd.close() } }
            testsupport_aio_init(1, 64)
            defer { testsupport_aio_init(GlibcAIOUnderSanitizer.defaultThreads, 64) }
            let backend = try makeBackend(.posix)
            // The doorbell's read holds the only helper; every request must still complete.
            for round in 0..<10 {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for fd in files { group.addTask { try await backend.sync(fd, mode: round.isMultiple(of: 2) ? .fsync : .fdatasync) } }
                    try await group.waitForAll()
                }
            }
            await backend.shutdown()
        }

        @Test("io_setup failures make LibaioBackend unavailable with the reason")
        func setupFailure() throws {
            for errno in [Errno.resourceTemporarilyUnavailable, .noFunction, .notPermitted] {
                var system = SystemCalls.live
                system.ioSetup = { _, _ in .failure(errno) }
                #expect {
                    _ = try LibaioBackend(capacity: 4, system: system)
                } throws: { error in
                    guard let error = error as? AsyncSyncError else { return false }
                    return error.code == .backendUnavailable && error.errno == errno && error.step == .setup
                        && error.systemCall == "io_setup" && error.backend == .libaio
                }
            }
        }
        #endif  // os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
    }
}
