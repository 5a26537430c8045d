import Foundation
import Synchronization
import SystemPackage
import Testing

@testable import AsyncFsync

extension AsyncFsyncTests {
    /// Adversarial review of main 62f039a (GroupCommit state machine, one sync per open file
    /// description, the shared backend made once, the library's descriptors above a floor,
    /// observers). Each "FINDING" failed on 62f039a.
    @Suite struct Review5 {
        /// A backend that behaves as this library's backends do for the in-flight rule: it stamps
        /// its own arrival when its `sync` is called and judges its success against that stamp
        /// in its non-sticky ledger. Its syncs succeed (the kernel reported the failed writeback
        /// once, to another request).
        final class JudgingBackend: AsyncSyncBackend, FailureLedgerProviding {
            let ledger = FailureLedger(kind: .libaio, sticky: false, system: .live)
            var failureLedger: FailureLedger? { ledger }
            var kind: BackendKind { .libaio }
            let calls = Atomic<Int>(0)

            func sync(_ fd: FileDescriptor, mode: SyncMode) async throws {
                calls.add(1, ordering: .relaxed)
                let arrival = ledger.stamp()
                if let errno = ledger.judgeSuccess(arrival: arrival, descriptor: fd) {
                    throw AsyncSyncError.concurrentFailure(mode, errno: errno, backend: kind, descriptor: fd)
                }
            }

            func shutdown() async {}
        }

        @Test("FINDING: GroupCommit drops the request's arrival stamp when statx(2) fails for its descriptor: a success over a failure recorded during its flight")
        func groupCommitUnidentifiedKeepsArrival() async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("wal")
            defer { try? fd.close() }
            let other = try FileDescriptor.open(directory.path.appending("wal"), .readWrite)
            defer { try? other.close() }
            let backend = JudgingBackend()
            let recorded = Atomic<Bool>(false)
            var system = SystemCalls.live
            system.fileIdentity = { descriptor in
                guard descriptor == fd.rawValue else { return SystemCalls.live.fileIdentity(descriptor) }
                // GroupCommit has stamped this request's arrival. Meanwhile another request's sync
                // of the same file fails with EIO and is recorded (as the wrapped backend does);
                // and statx of this descriptor fails (EIO, ESTALE on NFS, ENOMEM, a FUSE getattr).
                if !recorded.exchange(true, ordering: .acquiringAndReleasing) {
                    backend.ledger.record(other, errno: .ioError)
                }
                return .failure(.ioError)
            }
            let group = GroupCommit(wrapping: backend, system: system)
            let error = await caughtError { try await group.sync(fd, mode: .fdatasync) }
            let wasRecorded = recorded.load(ordering: .acquiring)
            let calls = backend.calls.load(ordering: .relaxed)
            #expect(wasRecorded)
            #expect(calls == 1)
            // The request arrived before the failure was recorded: its success must not stand.
            #expect((error as? AsyncSyncError)?.code == .concurrentFailure,
                    "acknowledged over a failure recorded during its flight: \(String(describing: error))")
            await group.shutdown()
        }

        @Test("FINDING: after GroupCommit.shutdown(), a request whose descriptor statx(2) cannot identify still syncs through the wrapped backend (AsyncSync.shared never refuses)")
        func groupCommitUnidentifiedAfterShutdown() async throws {
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("wal")
            defer { try? fd.close() }
            var system = SystemCalls.live
            system.fileIdentity = { descriptor in
                descriptor == fd.rawValue ? .failure(.ioError) : SystemCalls.live.fileIdentity(descriptor)
            }
            // A wrapped backend that, like AsyncSync.shared, goes on serving after shutdown().
            let backend = ScriptedBackend()
            let group = GroupCommit(wrapping: backend, system: system)
            await group.shutdown()
            let error = await caughtError { try await group.sync(fd, mode: .fdatasync) }
            #expect((error as? AsyncSyncError)?.code == .shutDown, "after shutdown(): \(String(describing: error))")
            #expect(backend.calls == 0)
        }

        @Test("FINDING: makeBackend() in a cancelled task does not probe: each probe is judged stuck at once (\"no answer within … a stuck file system?\") and a backend is chosen on that")
        func makeBackendCancelledIsNotAStuckProbe() async throws {
            let directory = try ScratchDirectory.onDisk()
            let seen = Locked<[BackendProbe]>([])
            final class Selected: AsyncSyncObserver, @unchecked Sendable {
                let seen: Locked<[BackendProbe]>
                init(_ seen: Locked<[BackendProbe]>) { self.seen = seen }
                func backendSelected(_ kind: BackendKind, choice: String, probes: [BackendProbe]) {
                    seen.withLock { $0 += probes }
                }
            }
            let registration = AsyncSync.addObserver(Selected(seen))
            defer { AsyncSync.removeObserver(registration) }
            var configuration = AsyncSync.Configuration()
            configuration.probeDirectory = directory.path
            let task = Task {
                withUnsafeCurrentTask { $0?.cancel() }
                return try await AsyncSync.makeBackend(configuration)
            }
            let outcome: Result<any AsyncSyncBackend, any Error>
            do { outcome = .success(try await task.value) } catch { outcome = .failure(error) }
            if case .success(let backend) = outcome { await backend.shutdown() }
            let stuck = seen.withLock { $0 }.filter { ($0.reason ?? "").contains("no answer within") }
            // A cancelled caller gets CancellationError; at the least, no probe is reported as a
            // stuck file system that was never asked.
            #expect(stuck.isEmpty, "probes judged stuck for a cancelled caller: \(stuck.map { $0.reason ?? "" })")
            #expect(throws: CancellationError.self) { try outcome.get() }
        }

        /// The threads of this process whose name starts with `prefix` (`/proc/self/task/*/comm`,
        /// names cut at 15 characters).
        static func threads(named prefix: String) -> Int {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
            return tasks.count { task in
                let comm = (try? String(contentsOfFile: "/proc/self/task/\(task)/comm", encoding: .utf8)) ?? ""
                return comm.hasPrefix(prefix)
            }
        }

        @Test("FINDING: every task that waits for AsyncSync.shared while it is being made starts a thread of its own (a 3600 s deadline it never needs)")
        func sharedWaitersStartNoThreads() async throws {
            let gate = OneShot<Void>()
            let shared = SharedBackend(maker: {
                _ = gate.wait(timeout: .seconds(60))  // the creation is held (a slow probe)
                return .success(ScriptedBackend())
            })
            let before = Self.threads(named: "asyncfsync-tim")
            let waiters = 16
            let tasks = (0..<waiters).map { _ in Task { _ = try await shared.backend() } }
            // On 62f039a each waiter's deadline thread appears within moments and stays until the
            // backend is made; without them, nothing ever appears: the wait is bounded for that case.
            let spiked = (try? await waitUntil(timeout: .seconds(5)) {
                Self.threads(named: "asyncfsync-tim") - before >= waiters / 2
            }) != nil
            let started = Self.threads(named: "asyncfsync-tim") - before
            gate.fulfill(())
            for task in tasks { try await task.value }
            #expect(!spiked, "\(started) threads started for \(waiters) tasks waiting for the shared backend")
        }

        @Test("FINDING: AsyncSync.shared's kind, asked for by an observer of its own creation, is a guess (the last kind), not the kind being made")
        func sharedKindFromCreatorIsNotAGuess() async throws {
            let inner = Locked<BackendKind?>(nil)
            let box = Locked<SharedBackend?>(nil)
            let shared = SharedBackend(maker: {
                // The selection announces itself as makeBackend does, and an observer's
                // backendSelected(_:choice:probes:) asks the shared backend which kind it is.
                AsyncSync.announceSelection {
                    let me = box.withLock { $0 }!
                    inner.withLock { $0 = me.kind }
                }
                return .success(ScriptedBackend())  // a libaio backend
            })
            box.withLock { $0 = shared }
            let made = try await shared.backend()
            #expect(made.kind == .libaio)
            // The accessor cannot wait for itself; it must not answer a kind that is not the one
            // made (it said "posix", BackendKind.allCases.last). An answer that says "not made yet"
            // needs a type that can say so (issue 16, defect 3: accessors must not guess).
            #expect(inner.withLock { $0 } == made.kind,
                    "the creator's observer was told \(String(describing: inner.withLock { $0 })), the backend made is \(made.kind)")
        }
    }
}
