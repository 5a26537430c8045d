import CAsyncFsync
import Foundation
import Synchronization
import SystemPackage
import Testing

@testable import AsyncFsync

#if canImport(Glibc)
import Glibc
#endif

extension AsyncFsyncTests {
    /// The defects of issue 16 that are not GroupCommit's: each test failed on the code before its
    /// fix (see the commit that added it).
    @Suite struct Issue16 {
        init() { GlibcAIOUnderSanitizer.configure }

        // MARK: 2. The completion thread parks after a broken completion source

        #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE  // the Linux engine's hub
        /// A request refused by kernel AIO with `EINVAL` is in transit to the POSIX fallback, whose
        /// `aio_fsync(3)` is held; meanwhile the completion source breaks (`EBADF` from the reap).
        /// The broken engine stays registered until the request in transit has its answer. The hub
        /// must park meanwhile: it reaps the broken engine's source once, and never again.
        @Test("#16.2 a broken completion source with a request in transit to the POSIX fallback: the completion thread parks, reaping the source once")
        func brokenSourceParks() async throws {
            let directory = try ScratchDirectory.onTmpfs()
            let fd = try directory.file("refused-by-kernel-aio")
            defer { try? fd.close() }
            let target = fd.rawValue
            let broken = Flag()
            let inFallback = Flag()
            let letFallbackRun = Flag()
            let reapsSinceBroken = Counter()
            let parksSinceBroken = Counter()
            var system = SystemCalls.live
            system.ioSubmit = { context, count, iocbs in
                descriptor(of: iocbs) == target ? .failure(.invalidArgument) : SystemCalls.live.ioSubmit(context, count, iocbs)
            }
            system.reapCompletions = { context, events, maximum in
                guard broken.isRaised else { return SystemCalls.live.reapCompletions(context, events, maximum) }
                _ = reapsSinceBroken.next()
                return .failure(.badFileDescriptor)
            }
            // The kernel AIO hub parks in one read(2) of its eventfd.
            system.eventfdRead = { fd in
                if broken.isRaised { _ = parksSinceBroken.next() }
                return SystemCalls.live.eventfdRead(fd)
            }
            system.aioFsync = { mode, control in
                if control.pointee.aio_fildes == target {
                    inFallback.raise()
                    _ = blockingEventually(20) { letFallbackRun.isRaised }  // the gate (bounded: no hang)
                }
                return SystemCalls.live.aioFsync(mode, control)
            }
            let backend = try LibaioBackend(capacity: 4, system: system)
            let hub: CompletionHub = backend.engine.hub
            let request = Watched { try await backend.fdatasync(fd) }
            try #require(await eventually(30) { inFallback.isRaised }, "the request reached the POSIX fallback")

            broken.raise()
            kick(hub)
            try #require(await eventually(30) { reapsSinceBroken.current >= 1 }, "the hub reaped the broken source")
            // Deterministic: a thread that parks makes no further call, however long it is watched.
            let parked = await eventually(30) { parksSinceBroken.current >= 1 }
            let reaps = reapsSinceBroken.current
            #expect(parked, "the completion thread must park while the broken engine waits for its request in transit")
            #expect(reaps == 1, "the broken source was reaped \(reaps) times; once is enough (every waiter had its answer)")
            #expect(!request.isDone, "the request in transit is still waiting for the fallback")

            letFallbackRun.raise()
            try #require(await eventually(30) { request.isDone })
            #expect(request.succeeded, "served by POSIX aio: \(String(describing: request.error))")
            // Its answer ended the drain: the hub woke and released the engine.
            #expect(await eventually(30) { hub.clientCount == 0 }, "the broken engine was released after its request in transit")
            await backend.shutdown()
        }
        #endif

        @Test("#16.2 state machine: once the source broke, the engine is not reaped again; the drain waits for a request in transit, endTransit releases once")
        func brokenStateWithRequestInTransit() async throws {
            let parked = Parked()
            let c = try await parked.make(2)
            var state = EngineState(slotCount: 2)
            #expect(state.reapsCompletions)
            let waiter = { (id: UInt64, fd: CInt, continuation: UnsafeContinuation<Void, any Error>) in
                Waiter(id: id, descriptor: FileDescriptor(rawValue: fd), mode: .fdatasync, continuation: continuation,
                       arrival: 0, identity: nil, identityTaken: false)
            }
            #expect(state.arrive(waiter(1, 5, c[0]), isCancelled: false, onCompletionThread: false) == .submit)
            var prepared: [EngineState.Prepared] = []
            #expect(state.takeBatches(into: &prepared) == .none)
            var failed: [Waiter] = []
            // Kernel AIO refused it with EINVAL: handed to the POSIX fallback, counted in transit.
            #expect(state.refused(slot: prepared[0].slot, handOff: true, into: &failed) == .none)
            prepared.removeAll()
            #expect(state.takeBatches(into: &prepared) == .none)
            #expect(state.inTransit == 1 && failed.count == 1)

            failed.removeAll()
            #expect(state.broken(.badFileDescriptor, into: &failed) == .none, "the request in transit holds the drain")
            #expect(!state.reapsCompletions, "a broken source is not looked at again: reaping it is no progress")
            #expect(state.refusal == .broken(.badFileDescriptor))
            #expect(state.arrive(waiter(2, 6, c[1]), isCancelled: false, onCompletionThread: false)
                    == .refused(.broken(.badFileDescriptor)))
            #expect(state.beginShutdown() == .none)
            #expect(state.refusal == .broken(.badFileDescriptor), "a shutdown after the break still reports the break")
            #expect(state.endTransit() == .release, "the fallback's answer ends the drain: the release, once")
            #expect(state.lifecycle == .releasing)
            await parked.finish()
        }

        // MARK: 4. The inline path and the POSIX fallback report the broken source

        #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
        /// After the completion source broke, every path of the backend refuses a request with the
        /// source's errno, as the engine does: the inline path (tmpfs) and the POSIX fallback path
        /// said "shut down".
        @Test("#16.4 after a broken completion source, the inline path (tmpfs) and the POSIX-fallback path report its errno, not a shutdown")
        func refusalAfterBrokenSource() async throws {
            let memory = try ScratchDirectory.onTmpfs()
            let disk = try ScratchDirectory.onDisk()
            let onTmpfs = try memory.file("inline")
            let viaFallback = try disk.file("served-by-posix")
            // Neither on tmpfs nor on the disk's file system (which the fallback now serves): a
            // request for it reaches the engine.
            let (viaKernelAIO, writeEnd) = try FileDescriptor.pipe()
            defer { try? onTmpfs.close(); try? viaFallback.close(); try? viaKernelAIO.close(); try? writeEnd.close() }
            let refusedFD = viaFallback.rawValue
            let broken = Flag()
            var system = SystemCalls.live
            system.ioSubmit = { context, count, iocbs in
                descriptor(of: iocbs) == refusedFD ? .failure(.invalidArgument) : SystemCalls.live.ioSubmit(context, count, iocbs)
            }
            system.reapCompletions = { context, events, maximum in
                broken.isRaised ? .failure(.invalidArgument) : SystemCalls.live.reapCompletions(context, events, maximum)
            }
            let backend = try LibaioBackend(capacity: 4, inlineMemoryFileSystems: true, system: system)
            try await backend.fdatasync(viaFallback)  // refused by kernel AIO: its file system goes to POSIX aio
            #expect(!backend.posixFileSystems.isEmpty)
            try await backend.fdatasync(onTmpfs)  // inline

            broken.raise()
            kick(backend.engine.hub)
            try #require(await eventually(30) { !backend.engine.isAcceptingRequests })

            let engineError = await caughtError { try await backend.fdatasync(viaKernelAIO) } as? AsyncSyncError
            let inlineError = await caughtError { try await backend.fdatasync(onTmpfs) } as? AsyncSyncError
            let fallbackError = await caughtError { try await backend.fdatasync(viaFallback) } as? AsyncSyncError
            #expect(engineError?.code == .system && engineError?.errno == .invalidArgument, "\(String(describing: engineError))")
            for (path, error) in [("inline", inlineError), ("POSIX fallback", fallbackError)] {
                #expect(error?.code == engineError?.code, "\(path): \(String(describing: error))")
                #expect(error?.errno == .invalidArgument, "\(path): \(String(describing: error))")
                #expect(error?.systemCall == engineError?.systemCall, "\(path): \(String(describing: error))")
            }
            await backend.shutdown()
            // A plain shutdown is still reported as one on every path.
            let after = try LibaioBackend(capacity: 4, inlineMemoryFileSystems: true, system: system)
            await after.shutdown()
            let shutDown = await caughtError { try await after.fdatasync(onTmpfs) } as? AsyncSyncError
            #expect(shutDown?.code == .shutDown)
        }
        #endif

        // MARK: 5. Bad numbers given to an initializer are errors, not crashes

        static let badCapacities = [0, -1, Int.min, 65_537, 1 << 33, Int.max]

        #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE  // the portable backend's thread count: Portable/invalidThreads
        @Test("#16.5 a capacity outside 1...65536 throws invalidConfiguration naming the value and the range, on both backends",
              arguments: BackendKind.aio, badCapacities)
        func badCapacity(kind: BackendKind, capacity: Int) throws {
            let error: AsyncSyncError? = switch kind {
            case .libaio: #expect(throws: AsyncSyncError.self) { _ = try LibaioBackend(capacity: capacity) }
            case .posix: #expect(throws: AsyncSyncError.self) { _ = try PosixAIOBackend(capacity: capacity) }
            default: nil
            }
            let failure = try #require(error)
            #expect(failure.code == .invalidConfiguration)
            #expect(failure.backend == kind)
            #expect(failure.errno == nil)
            #expect(failure.message.contains("\(capacity)"), "names the value: \(failure.message)")
            #expect(failure.message.contains("1...65536"), "names the valid range: \(failure.message)")
        }
        #endif

        @Test("#16.5 the bounds of the valid range are accepted", arguments: BackendKind.tested, [1, 65_536])
        func capacityBounds(kind: BackendKind, capacity: Int) async throws {
            let backend: any AsyncSyncBackend
            do {
                backend = try makeBackend(kind, capacity: capacity)
            } catch let error as AsyncSyncError where kind == .libaio && error.code == .backendUnavailable {
                // io_setup(2) may refuse 65 536 events where aio-max-nr is lower: the host's limit,
                // reported as such, not a bad configuration.
                #expect(error.errno == .resourceTemporarilyUnavailable && error.systemCall == "io_setup")
                return
            }
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data")
            defer { try? fd.close() }
            try await backend.fdatasync(fd)
            await backend.shutdown()
        }

        // MARK: 6. The library's descriptors stay out of the numbers open(2) reuses first

        /// A test table (its own completion thread, so its own eventfd, made now).
        static func freshTable() -> SystemCalls {
            var system = SystemCalls.live
            system.noteMemory = { _, _, _ in }
            return system
        }

        @Test("#16.6 a descriptor closed just before the first sync of a fresh backend gives EBADF: the backend's eventfd never takes its number",
              arguments: BackendKind.tested)
        func closedDescriptorIsNotTheLibrarys(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onDisk()
            let file = try directory.file("closed")
            let number = file.rawValue
            try file.close()
            let backend = try makeBackend(kind, system: Self.freshTable())
            let error = await caughtError { try await backend.fdatasync(file) } as? AsyncSyncError
            await backend.shutdown()
            #expect(error?.code == .system)
            #expect(error?.errno == .badFileDescriptor, "fd \(number): \(String(describing: error))")
        }

        #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE  // the completion threads' eventfds, memfd
        @Test("#16.6 the library's own descriptors are above the floor")
        func libraryDescriptorsAboveFloor() async throws {
            let floor = LibraryDescriptors.floor
            #expect(floor >= 3)
            for kind in BackendKind.aio {
                let backend = try makeBackend(kind, system: Self.freshTable())
                let descriptor = switch backend {
                case let backend as LibaioBackend: backend.engine.hub.completionDescriptor
                case let backend as PosixAIOBackend: backend.engine.hub.completionDescriptor
                default: CInt(-1)
                }
                #expect(descriptor >= floor, "\(kind): eventfd \(descriptor), floor \(floor)")
                await backend.shutdown()
            }
            let memfd = try SystemCalls.live.memfdCreate("asyncfsync-test").get()
            #expect(memfd >= floor)
            _ = SystemCalls.live.close(memfd)
        }
        #endif

        @Test("#16.6 AsyncSync.shared: a descriptor closed before the process's first sync gives EBADF (child process)")
        func closedDescriptorWithSharedBackend() async {
            await #expect(processExitsWith: .success) {
                // The test harness of this child arms a timer of its own early on, for which the
                // Swift runtime (libdispatch) opens a timerfd lazily: waited for (a condition, not a
                // time), so that what opens a descriptor after the close below is the library, or
                // the runtime on the library's behalf.
                _ = blockingEventually(30) { Resources.openDescriptors().contains("anon_inode:[timerfd]") }
                let directory = try ScratchDirectory.onDisk()
                let file = try directory.file("closed")
                try file.close()
                let error = await caughtError { try await AsyncSync.shared.fdatasync(file) } as? AsyncSyncError
                // exit(3) runs no deinit: the scratch directory is removed here, not left behind.
                try? FileManager.default.removeItem(atPath: directory.path.string)
                exit(error?.errno == .badFileDescriptor ? 0 : 3)
            }
        }

        #if os(Linux) && canImport(Glibc)  // O_PATH
        @Test("#16.6 an O_PATH descriptor is not reported as 'not open': it gets EBADF with a message naming O_PATH",
              arguments: BackendKind.tested)
        func pathOnlyDescriptor(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onDisk()
            let file = try directory.file("data")
            try file.close()
            let raw = Glibc.open(directory.path.appending("data").string, 0o10000000 | O_CLOEXEC)  // O_PATH
            try #require(raw >= 0)
            let pathOnly = FileDescriptor(rawValue: raw)
            defer { try? pathOnly.close() }
            let backend = try makeBackend(kind)
            let error = await caughtError { try await backend.fdatasync(pathOnly) } as? AsyncSyncError
            await backend.shutdown()
            #expect(error?.errno == .badFileDescriptor)
            let message = error?.message ?? ""
            #expect(message.contains("O_PATH"), "\(message)")
            #expect(!message.hasPrefix("the descriptor is not open"), "\(message)")
            // A descriptor that is not open keeps its message.
            #expect(AsyncSyncError.hint(forBadDescriptor: FileDescriptor(rawValue: 999_999)).hasPrefix("the descriptor is not open"))
        }
        #endif

        // MARK: 8. The power-loss harness catches the wrong coalescer every time

        @Test("#16.8 the power-loss check catches the coalescer that joins a sync in flight, every run, at every joined acknowledgement",
              arguments: BackendKind.tested)
        func wrongCoalescerAlwaysCaught(kind: BackendKind) async throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3 (scripts/install-deps test)") else { return }
            for run in 1...3 {
                let outcome = try await PowerLoss.run(kind: kind, layer: .wrongCoalescer)
                #expect(outcome.acknowledged == outcome.expected)
                // Every second request joins the sync the one before it led, which ended before
                // its record was written: each of them is caught.
                #expect(outcome.notDurableAtAcknowledgement.count == outcome.expected / 2,
                        "run \(run): caught \(outcome.notDurableAtAcknowledgement.count) of \(outcome.expected / 2)")
            }
        }
    }
}
