import CTestSupport
import Foundation
import Synchronization
import SystemPackage
import Testing

@testable import AsyncFsync

extension AsyncFsyncTests {
    /// Many requests at once, with cancellations and a shutdown in the middle.
    @Suite struct Load {
        init() { GlibcAIOUnderSanitizer.configure }

        final class Counts: Sendable {
            let succeeded = Atomic<Int>(0)
            let cancelled = Atomic<Int>(0)
            let shutDown = Atomic<Int>(0)
            let other = Locked<[String]>([])
            let issued = Atomic<Int>(0)
            var total: Int {
                succeeded.load(ordering: .relaxed) + cancelled.load(ordering: .relaxed)
                    + shutDown.load(ordering: .relaxed) + other.withLock { $0.count }
            }
        }

        @Test("100 000 requests with 1 000 in flight, 10% cancelled at random, shutdown() in the middle: each ends once, nothing is left",
              arguments: BackendKind.tested)
        func heavyLoadWithShutdown(kind: BackendKind) async throws {
            let tsan = testsupport_tsan_loaded() != 0
            let requests = tsan ? 10_000 : 100_000
            let inFlight = tsan ? 200 : 1_000
            let directory = try ScratchDirectory.onTmpfs()
            let files = try (0..<100).map { try directory.file("load-\($0)") }
            defer { for fd in files { try? fd.close() } }
            try await Task.sleep(for: .milliseconds(1))
            let contextsBefore = await Resources.settle(within: 2, Resources.aioContexts, atMost: 0)
            let eventfdsBefore = Resources.libraryDescriptorCount()

            let backend = try makeBackend(kind, capacity: 256)
            let counts = Counts()
            let shutdownTask = Locked<Task<Void, Never>?>(nil)
            let perWorker = requests / inFlight
            await withTaskGroup(of: Void.self) { group in
                for worker in 0..<inFlight {
                    group.addTask {
                        var rng = SplitMix64(state: UInt64(worker) &* 0x9E37_79B9)
                        for index in 0..<perWorker {
                            let fd = files[(worker &+ index &* 7) % files.count]
                            let mode: SyncMode = index.isMultiple(of: 3) ? .fsync : .fdatasync
                            let request = Task { try await backend.sync(fd, mode: mode) }
                            if Int.random(in: 0..<10, using: &rng) == 0 {
                                if Bool.random(using: &rng) { await Task.yield() }
                                request.cancel()
                            }
                            if counts.issued.add(1, ordering: .relaxed).newValue == requests / 2 {
                                shutdownTask.withLock { $0 = Task { await backend.shutdown() } }
                            }
                            switch await request.result {
                            case .success: counts.succeeded.add(1, ordering: .relaxed)
                            case .failure(is CancellationError): counts.cancelled.add(1, ordering: .relaxed)
                            case .failure(let error as AsyncSyncError) where error.code == .shutDown:
                                counts.shutDown.add(1, ordering: .relaxed)
                            case .failure(let error): counts.other.withLock { $0.append("\(error)") }
                            }
                        }
                    }
                }
            }
            await shutdownTask.withLock { $0 }?.value
            await backend.shutdown()

            #expect(counts.total == requests, "every request ended exactly once")
            #expect(counts.other.withLock { $0 }.isEmpty, "\(counts.other.withLock { Array($0.prefix(5)) })")
            #expect(counts.succeeded.load(ordering: .relaxed) > 0)
            #expect(counts.cancelled.load(ordering: .relaxed) > 0)
            #expect(counts.shutDown.load(ordering: .relaxed) > 0)
            #expect(outstanding(backend) == 0)
            #expect(await Resources.settle(within: 3, Resources.aioContexts, atMost: contextsBefore) <= contextsBefore)
            #expect(await Resources.settle(within: 3, { Resources.libraryDescriptorCount() }, atMost: eventfdsBefore) <= eventfdsBefore)
            print("load \(kind): \(counts.succeeded.load(ordering: .relaxed)) succeeded, \(counts.cancelled.load(ordering: .relaxed)) cancelled, \(counts.shutDown.load(ordering: .relaxed)) refused after shutdown")
        }
    }
}
