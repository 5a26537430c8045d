import Foundation
import Synchronization
import SystemPackage
import Testing

@testable import AsyncFsync

/// One observer for the whole test process (never removed): it records every event,
/// and a test looks at the ones of its own descriptors.
final class RecordingObserver: AsyncSyncObserver {
    enum Event: Equatable {
        case selected(BackendKind, String)
        case servedByPOSIX(String)
        case recorded(BackendKind, CInt, Errno, Bool)
        case cleared(BackendKind, CInt)
        case completed(BackendKind, SyncMode, failed: Bool)
        case batch(Int, SyncMode)
    }
    let events = Locked<[Event]>([])

    static let shared: RecordingObserver = {
        let observer = RecordingObserver()
        AsyncSync.addObserver(observer)
        return observer
    }()

    func backendSelected(_ kind: BackendKind, choice: String, probes: [BackendProbe]) {
        events.withLock { $0.append(.selected(kind, choice)) }
    }
    func fileSystemServedByPOSIX(device: String, refusal: AsyncSyncError) {
        events.withLock { $0.append(.servedByPOSIX(device)) }
    }
    func durabilityFailureRecorded(backend: BackendKind, descriptor: FileDescriptor, errno: Errno, sticky: Bool) {
        events.withLock { $0.append(.recorded(backend, descriptor.rawValue, errno, sticky)) }
    }
    func durabilityFailureCleared(backend: BackendKind, descriptor: FileDescriptor) {
        events.withLock { $0.append(.cleared(backend, descriptor.rawValue)) }
    }
    func syncCompleted(backend: BackendKind, mode: SyncMode, duration: Duration, error: (any Error)?) {
        events.withLock { $0.append(.completed(backend, mode, failed: error != nil)) }
    }
    func groupCommitBatch(size: Int, mode: SyncMode) {
        events.withLock { $0.append(.batch(size, mode)) }
    }

    func clear() { events.withLock { $0 = [] } }
    var recorded: [Event] { events.withLock { $0 } }
}

/// Counts, per backend kind, the sync calls that ended and the requests each system sync served.
final class CountingObserver: AsyncSyncObserver {
    private let state = Locked<[BackendKind: (requests: Int, syncs: [Int])]>([:])
    func syncCompleted(backend: BackendKind, mode: SyncMode, duration: Duration, error: (any Error)?) {
        state.withLock { $0[backend, default: (0, [])].requests += 1 }
    }
    func systemSyncCompleted(backend: BackendKind, mode: SyncMode, requests: Int, errno: Errno?) {
        state.withLock { $0[backend, default: (0, [])].syncs.append(requests) }
    }
    func counts(_ kind: BackendKind) -> (requests: Int, syncs: [Int]) {
        state.withLock { $0[kind] ?? (0, []) }
    }
}

extension AsyncFsyncTests {
    /// What a user of the library around it gets: the shared backend, raw descriptors, observers.
    @Suite struct Ecosystem {
        init() { GlibcAIOUnderSanitizer.configure }

        @Test("AsyncSync.shared: made at first use, honours the environment, needs no shutdown; GroupCommit over it")
        func sharedBackend() async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("shared")
            defer { try? fd.close() }
            try await AsyncSync.shared.fdatasync(fd)
            let made = try #require(AsyncSync.sharedIfMade)
            #expect(try await AsyncSync.sharedBackend().kind == made.kind)
            #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
            #expect(AsyncSync.shared.kind == .libaio || ProcessInfo.processInfo.environment[AsyncSync.environmentVariable] == "posix")
            #else
            #expect(AsyncSync.shared.kind == .portable)
            #endif
            #expect("\(AsyncSync.shared)".hasPrefix("shared "))
            await AsyncSync.shared.shutdown()  // does nothing
            try await AsyncSync.shared.fsync(fd)
            let group = GroupCommit(wrapping: AsyncSync.shared)
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                for _ in 0..<16 { tasks.addTask { try await group.fdatasync(fd) } }
                try await tasks.waitForAll()
            }
            await group.shutdown()  // shuts the wrapped backend down: the shared one stays
            try await AsyncSync.shared.fdatasync(fd)
            // The Linux backends have a completion thread to offer; the portable one has none.
            #expect((AsyncSync.shared.preferredTaskExecutor != nil) == (AsyncSync.shared.kind != .portable))
        }

        @Test("AsyncSync.shared is made exactly once: synchronous accessors called while the first async use makes it wait for that one")
        func sharedMadeOnce() async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("shared-once")
            defer { try? fd.close() }
            let calls = Counter()
            let entered = Flag()
            let release = Flag()
            let madeBackends = Locked<[any AsyncSyncBackend]>([])
            // The first creation is held until the accessors have run; later ones are not.
            let shared = SharedBackend(maker: {
                if calls.next() == 1 {
                    entered.raise()
                    while !release.isRaised { usleep(200) }
                }
                do {
                    let backend = try makeBackend(BackendKind.tested[0], capacity: 8)  // libaio; portable in its build
                    madeBackends.withLock { $0.append(backend) }
                    return .success(backend)
                } catch {
                    return .failure(error as? AsyncSyncError ?? AsyncSyncError(
                        code: .backendUnavailable, errno: nil, operation: .setup, step: .setup, backend: BackendKind.tested[0]))
                }
            })
            #expect(shared.ifMade == nil)
            let first = Task { try await shared.fdatasync(fd) }
            while !entered.isRaised { try await Task.sleep(for: .milliseconds(1)) }
            #expect(shared.ifMade == nil, "the non-blocking accessor does not guess while the backend is being made")

            // The synchronous accessors, each from a thread of its own (they may block).
            let returned = Counter()
            let accessors: [@Sendable () -> Void] = [
                { _ = shared.kind },
                { _ = try? shared.clearFailure(of: fd) },
                { _ = shared.preferredTaskExecutor },
                { _ = shared.preferredSerialExecutor },
            ]
            for accessor in accessors {
                Thread.detachNewThread {
                    accessor()
                    _ = returned.next()
                }
            }
            // Each accessor has either returned (having made a backend of its own) or is waiting
            // for the creation in progress.
            while returned.current + shared.blockedWaiters.load(ordering: .acquiring) < accessors.count {
                try await Task.sleep(for: .milliseconds(1))
            }
            release.raise()
            try await first.value
            while returned.current < accessors.count { try await Task.sleep(for: .milliseconds(1)) }
            #expect(calls.current == 1, "backends made: \(calls.current)")
            #expect(shared.ifMade != nil)
            for backend in madeBackends.withLock({ $0 }) { await backend.shutdown() }
        }

        @Test("a shared backend that cannot be made: every member says so, none guesses, none probes again")
        func sharedUnavailable() async throws {
            let calls = Counter()
            let failure = AsyncSyncError(code: .backendUnavailable, errno: .noFunction, operation: .setup, step: .setup,
                                         backend: .libaio, message: "forced and denied")
            let shared = SharedBackend(maker: {
                _ = calls.next()
                return .failure(failure)
            })
            #expect(throws: failure) { try shared.clearFailure(of: FileDescriptor(rawValue: 0)) }
            #expect(shared.kind == .libaio)
            #expect(shared.preferredTaskExecutor == nil && shared.preferredSerialExecutor == nil)
            #expect(shared.ifMade == nil)
            let thrown = await caughtError { try await shared.fdatasync(FileDescriptor(rawValue: 0)) }
            #expect(thrown as? AsyncSyncError == failure)
            #expect(calls.current == 1)
        }

        @Test("a synchronous member of the shared backend used by its own creation (an observer) does not wait for itself")
        func sharedReentrant() async throws {
            let inner = Locked<AsyncSyncError?>(nil)
            let box = Locked<SharedBackend?>(nil)
            let shared = SharedBackend(maker: {
                // What an observer's backendSelected would do on the creating thread.
                let me = box.withLock { $0 }!
                #expect(me.ifMade == nil)
                do { try me.clearFailure(of: FileDescriptor(rawValue: 0)) } catch let error as AsyncSyncError {
                    inner.withLock { $0 = error }
                } catch {}
                return .failure(AsyncSyncError(code: .backendUnavailable, errno: nil, operation: .setup, step: .setup,
                                               backend: .posix, message: "made for the test"))
            })
            box.withLock { $0 = shared }
            #expect(shared.kind == .posix)
            #expect(inner.withLock { $0 }?.message.contains("from the thread making it") == true)
        }

        @Test("a raw descriptor number (FileHandle.fileDescriptor, C) syncs without building a FileDescriptor")
        func rawDescriptor() async throws {
            let directory = try ScratchDirectory.onDisk()
            let path = directory.path.appending("raw").string
            _ = FileManager.default.createFile(atPath: path, contents: Data("record\n".utf8))
            let handle = try #require(FileHandle(forUpdatingAtPath: path))
            defer { try? handle.close() }
            let backend = try await AsyncSync.makeBackend(directory: directory.path)
            try await backend.fdatasync(handle.fileDescriptor)
            try await backend.fsync(handle.fileDescriptor)
            try await backend.sync(handle.fileDescriptor, mode: .fdatasync)
            let failure = await caughtError { try await backend.fsync(CInt(-1)) } as? AsyncSyncError
            #expect(failure?.errno == .badFileDescriptor)
            await backend.shutdown()
        }

        @Test("an observer hears the selection, durability failures recorded and cleared, every sync, GroupCommit's batches and POSIX fallbacks",
              arguments: BackendKind.tested)
        func observer(kind: BackendKind) async throws {
            let observer = RecordingObserver.shared
            observer.clear()
            let directory = try ScratchDirectory.onDisk()
            let made = try await AsyncSync.makeBackend(environment: [AsyncSync.environmentVariable: kind.rawValue],
                                                       directory: directory.path)
            #expect(observer.recorded.contains(.selected(kind, "\(AsyncSync.environmentVariable)=\(kind)")))
            await made.shutdown()

            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, system: recorder.system)
            let fd = try directory.file("observed")
            defer { try? fd.close() }
            observer.clear()
            try await backend.fdatasync(fd)
            recorder.injectAtCompletion([.ioError])
            _ = await caughtError { try await backend.fsync(fd) }
            #expect(try backend.clearFailure(of: fd))
            let events = observer.recorded
            #expect(events.contains(.completed(kind, .fdatasync, failed: false)))
            #expect(events.contains(.completed(kind, .fsync, failed: true)))
            #expect(events.contains(.recorded(kind, fd.rawValue, .ioError, true)))
            #expect(events.contains(.cleared(kind, fd.rawValue)))

            observer.clear()
            let group = GroupCommit(wrapping: backend)
            try await group.fdatasync(fd)
            #expect(observer.recorded.contains(.batch(1, .fdatasync)))
            await group.shutdown()

            #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
            if kind == .libaio {
                var system = SystemCalls.live
                system.ioSubmit = { _, _, _ in .failure(.invalidArgument) }  // a file system without AIO fsync
                let refusing = try LibaioBackend(capacity: 4, system: system)
                observer.clear()
                try await refusing.fdatasync(fd)
                #expect(observer.recorded.contains { if case .servedByPOSIX = $0 { true } else { false } })
                await refusing.shutdown()
            }
            #endif
        }

        #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
        @Test("an observer hears each sync the system ran and how many requests it served: fewer syncs than requests on one descriptor",
              arguments: BackendKind.aio)
        func systemSyncs(kind: BackendKind) async throws {
            let counter = CountingObserver()
            let registration = AsyncSync.addObserver(counter)
            defer { AsyncSync.removeObserver(registration) }
            let directory = try ScratchDirectory.onTmpfs()  // no inline path: makeBackend(_:) here keeps it off
            let recorder = SyscallRecorder()
            let backend = try makeBackend(kind, system: recorder.system)
            let fd = try directory.file("coalesced")
            defer { try? fd.close() }
            recorder.closeGate()  // the first sync's completion is held back: the others wait and share one
            let first = Task { try await backend.fdatasync(fd) }
            try await waitUntil { recorder.submitted == 1 }
            let rest = (0..<20).map { _ in Task { try await backend.fdatasync(fd) } }
            try await waitUntil { waiting(backend) == 20 }
            recorder.openGate()
            try await first.value
            for task in rest { try await task.value }
            await backend.shutdown()
            let (requests, syncs) = counter.counts(kind)
            #expect(requests == 21)
            #expect(syncs.sorted() == [1, 20], "one sync for the first, one shared by the 20 that waited")
            #expect(syncs.count < requests)
            #expect(syncs.reduce(0, +) == requests, "every request is covered by exactly one system sync")
        }

        @Test("the inline path reports each direct fsync as a system sync of one request")
        func systemSyncsInline() async throws {
            let counter = CountingObserver()
            let registration = AsyncSync.addObserver(counter)
            defer { AsyncSync.removeObserver(registration) }
            let directory = try ScratchDirectory.onTmpfs()
            let backend = try makeBackend(.libaio, inline: true)
            let fd = try directory.file("inline")
            defer { try? fd.close() }
            for _ in 0..<3 { try await backend.fsync(fd) }
            await backend.shutdown()
            let (requests, syncs) = counter.counts(.libaio)
            #expect(requests == 3 && syncs == [1, 1, 1])
        }
        #endif

        @Test("the portable backend reports each request's own sync as a system sync of one request")
        func systemSyncsPortable() async throws {
            let counter = CountingObserver()
            let registration = AsyncSync.addObserver(counter)
            defer { AsyncSync.removeObserver(registration) }
            let directory = try ScratchDirectory.onDisk()
            let backend = try makeBackend(.portable)
            let fd = try directory.file("own-syncs")
            defer { try? fd.close() }
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                for _ in 0..<6 { tasks.addTask { try await backend.fdatasync(fd) } }
                try await tasks.waitForAll()
            }
            await backend.shutdown()
            let (requests, syncs) = counter.counts(.portable)
            #expect(requests == 6 && syncs == [1, 1, 1, 1, 1, 1])
        }

        @Test("an observer can be removed, from any thread, while syncs run; a removed one hears nothing more")
        func observerRemoval() async throws {
            let directory = try ScratchDirectory.onDisk()
            let kind = BackendKind.tested[0]  // libaio; portable in its build
            let backend = try makeBackend(kind)
            let fd = try directory.file("removal")
            defer { try? fd.close() }
            let kept = CountingObserver()
            let keptRegistration = AsyncSync.addObserver(kept)
            defer { AsyncSync.removeObserver(keptRegistration) }
            // Observers added and removed by many tasks while syncs complete.
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                for _ in 0..<8 { tasks.addTask { for _ in 0..<8 { try await backend.fdatasync(fd) } } }
                for _ in 0..<8 {
                    tasks.addTask {
                        for _ in 0..<50 {
                            let registration = AsyncSync.addObserver(CountingObserver())
                            #expect(AsyncSync.removeObserver(registration))
                            #expect(!AsyncSync.removeObserver(registration), "removed once only")
                        }
                    }
                }
                try await tasks.waitForAll()
            }
            #expect(kept.counts(kind).requests == 64)

            let removed = CountingObserver()
            let registration = AsyncSync.addObserver(removed)
            try await backend.fdatasync(fd)
            #expect(AsyncSync.removeObserver(registration))
            try await backend.fdatasync(fd)
            #expect(removed.counts(kind).requests == 1, "nothing after removal")
            #expect(kept.counts(kind).requests == 66)
            await backend.shutdown()
        }

        @Test("one naming for logs and metrics: codes as tokens, errnos by their C names")
        func names() {
            let codes: [AsyncSyncError.Code] = [.system, .earlierFailure, .concurrentFailure, .backendUnavailable,
                                                .invalidConfiguration, .shutDown]
            #expect(codes.map(\.name) == ["system", "earlier_failure", "concurrent_failure", "backend_unavailable",
                                           "invalid_configuration", "shut_down"])
            #expect(AsyncSyncError.symbolicName(of: .badFileDescriptor) == "EBADF")
            #expect(AsyncSyncError.symbolicName(of: .ioError) == "EIO")
            #expect(AsyncSyncError.symbolicName(of: Errno(rawValue: 4242)) == "errno_4242")
            let error = AsyncSyncError.sync(.fsync, errno: .noSpace, step: .completion, backend: .libaio,
                                            descriptor: FileDescriptor(rawValue: 3), systemCall: "io_getevents")
            #expect(error.errnoName == "ENOSPC")
            #expect(error == AsyncSyncError.sync(.fsync, errno: .noSpace, step: .completion, backend: .libaio,
                                                 descriptor: FileDescriptor(rawValue: 3), systemCall: "io_getevents"),
                    "the same fault is the same error, wherever in the library it was made")
        }
    }
}
