#if Metrics
// The tests of the trait Metrics.
import AsyncFsync
import AsyncFsyncMetrics
import CoreMetrics
import MetricsTestKit
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif canImport(Musl)
import Musl
#endif

/// One metrics observer for the process (observers cannot be removed), recording into its own
/// TestMetrics factory: no MetricsSystem.bootstrap, which may happen once per process.
enum MetricsFixture {
    static let factory = TestMetrics()
    static let observer: AsyncSyncMetrics = AsyncSyncMetrics.bootstrap(labelPrefix: "test", factory: factory)

    static func timerCount(_ kind: BackendKind, _ mode: SyncMode) throws -> Int {
        try factory.expectTimer("test_sync_duration", [("backend", kind.rawValue), ("mode", "\(mode)")]).values.count
    }

    static func requests(_ kind: BackendKind, _ mode: SyncMode) throws -> Int64 {
        try factory.expectCounter("test_syncs", [("backend", kind.rawValue), ("mode", "\(mode)")]).totalValue
    }

    static func systemSyncs(_ kind: BackendKind, _ mode: SyncMode) throws -> Int64 {
        try factory.expectCounter("test_system_syncs", [("backend", kind.rawValue), ("mode", "\(mode)")]).totalValue
    }

    /// The total of a counter, 0 when it was not made yet.
    static func total(_ label: String, _ dimensions: [(String, String)]) -> Int64 {
        (try? factory.expectCounter(label, dimensions).totalValue) ?? 0
    }
}

extension IntegrationsTests {
    @Suite struct Metrics {
        init() { _ = MetricsFixture.observer }

        @Test("Real syncs: a duration and a request per call, per backend and mode; no failure counted")
        func realSyncs() async throws {
            let directory = try ScratchDirectory()
            let backend = try await makeBackend(for: directory)
            let fd = try directory.file("metrics")
            defer { try? fd.close() }
            let kind = backend.kind
            let before = (
                fsync: try MetricsFixture.timerCount(kind, .fsync), fdatasync: try MetricsFixture.timerCount(kind, .fdatasync),
                fsyncs: try MetricsFixture.requests(kind, .fsync), fdatasyncs: try MetricsFixture.requests(kind, .fdatasync))
            let systemBefore = (fsync: try MetricsFixture.systemSyncs(kind, .fsync), fdatasync: try MetricsFixture.systemSyncs(kind, .fdatasync))

            for _ in 0..<3 { try await backend.fdatasync(fd) }
            for _ in 0..<2 { try await backend.fsync(fd) }

            #expect(try MetricsFixture.timerCount(kind, .fdatasync) - before.fdatasync == 3)
            #expect(try MetricsFixture.timerCount(kind, .fsync) - before.fsync == 2)
            #expect(try MetricsFixture.requests(kind, .fdatasync) - before.fdatasyncs == 3)
            #expect(try MetricsFixture.requests(kind, .fsync) - before.fsyncs == 2)
            // One after the other, each call is a sync of its own in the system.
            #expect(try MetricsFixture.systemSyncs(kind, .fdatasync) - systemBefore.fdatasync == 3)
            #expect(try MetricsFixture.systemSyncs(kind, .fsync) - systemBefore.fsync == 2)
            let durations = try MetricsFixture.factory.expectTimer(
                "test_sync_duration", [("backend", kind.rawValue), ("mode", "fsync")]).values.suffix(2)
            #expect(durations.allSatisfy { $0 > 0 })
            let failures = MetricsFixture.factory.counters(label: "test_sync_failures")
                .filter { $0.dimensions.contains { $0 == ("errno", "EIO") } }
            #expect(failures.isEmpty)
            await backend.shutdown()
        }

        @Test("A sync the system ran for several requests counts once in system_syncs, each request in syncs")
        func systemSyncsCounted() throws {
            let observer = MetricsFixture.observer
            let before = (system: try MetricsFixture.systemSyncs(.posix, .fsync), requests: try MetricsFixture.requests(.posix, .fsync))
            observer.systemSyncCompleted(backend: .posix, mode: .fsync, requests: 3, errno: nil)
            for _ in 0..<3 { observer.syncCompleted(backend: .posix, mode: .fsync, duration: .microseconds(5), error: nil) }
            #expect(try MetricsFixture.systemSyncs(.posix, .fsync) - before.system == 1)
            #expect(try MetricsFixture.requests(.posix, .fsync) - before.requests == 3)
        }

        @Test("A failed sync (O_PATH descriptor: EBADF) is counted by backend, mode, code and errno")
        func failure() async throws {
            let directory = try ScratchDirectory()
            let backend = try await makeBackend(for: directory)
            let file = try directory.file("opath")
            try file.close()
            let oPath: CInt = 0o10_000_000  // O_PATH (Linux; Glibc's module leaves it out)
            let raw = open(directory.path.appending("opath").string, oPath | O_CLOEXEC)
            #expect(raw >= 0)
            let fd = FileDescriptor(rawValue: raw)
            defer { try? fd.close() }
            let dimensions = [("backend", backend.kind.rawValue), ("mode", "fdatasync"), ("code", "system"), ("errno", "EBADF")]
            let before = MetricsFixture.total("test_sync_failures", dimensions)
            let requestsBefore = try MetricsFixture.requests(backend.kind, .fdatasync)

            do {
                try await backend.fdatasync(fd)
                Issue.record("fdatasync of an O_PATH descriptor succeeded")
            } catch let error as AsyncSyncError {
                #expect(error.errno == .badFileDescriptor)
            }
            #expect(MetricsFixture.total("test_sync_failures", dimensions) - before == 1)
            #expect(try MetricsFixture.requests(backend.kind, .fdatasync) - requestsBefore == 1)
            await backend.shutdown()
        }

        @Test("After shutdown: counted as code shut_down, errno none")
        func shutDown() async throws {
            let directory = try ScratchDirectory()
            let backend = try await makeBackend(for: directory)
            await backend.shutdown()
            let fd = try directory.file("down")
            defer { try? fd.close() }
            let dimensions = [("backend", backend.kind.rawValue), ("mode", "fsync"), ("code", "shut_down"), ("errno", "none")]
            let before = MetricsFixture.total("test_sync_failures", dimensions)
            await #expect(throws: AsyncSyncError.self) { try await backend.fsync(fd) }
            #expect(MetricsFixture.total("test_sync_failures", dimensions) - before == 1)
        }

        @Test("GroupCommit batch sizes: one value per shared sync, the values add up to the requests")
        func groupCommitBatches() async throws {
            let directory = try ScratchDirectory()
            let backend = GroupCommit(wrapping: try await makeBackend(for: directory))
            let fd = try directory.file("batches")
            defer { try? fd.close() }
            let recorder = try MetricsFixture.factory.expectRecorder("test_group_commit_batch_size", [("mode", "fdatasync")])
            let before = recorder.values.count
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<16 { group.addTask { try await backend.fdatasync(fd) } }
                try await group.waitForAll()
            }
            let batches = recorder.values.dropFirst(before)
            #expect(!batches.isEmpty)
            #expect(batches.reduce(0, +) == 16)
            await backend.shutdown()
        }

        @Test("Fallbacks to POSIX, durability failures recorded and cleared, selections, other errors")
        func events() throws {
            let observer = MetricsFixture.observer
            let refusal = AsyncSyncError(
                code: .system, errno: .invalidArgument, operation: .fdatasync, step: .submit, backend: .libaio,
                systemCall: "io_submit")
            let fallbacks = MetricsFixture.total("test_posix_fallbacks", [("device", "0:99")])
            observer.fileSystemServedByPOSIX(device: "0:99", refusal: refusal)
            #expect(MetricsFixture.total("test_posix_fallbacks", [("device", "0:99")]) - fallbacks == 1)

            let recorded = MetricsFixture.total("test_durability_failures", [("backend", "posix"), ("errno", "ENOSPC")])
            observer.durabilityFailureRecorded(backend: .posix, descriptor: FileDescriptor(rawValue: 9), errno: .noSpace, sticky: true)
            observer.durabilityFailureRecorded(backend: .posix, descriptor: FileDescriptor(rawValue: 9), errno: .noSpace, sticky: false)
            #expect(MetricsFixture.total("test_durability_failures", [("backend", "posix"), ("errno", "ENOSPC")]) - recorded == 2)

            let cleared = MetricsFixture.total("test_durability_failures_cleared", [("backend", "posix")])
            observer.durabilityFailureCleared(backend: .posix, descriptor: FileDescriptor(rawValue: 9))
            #expect(MetricsFixture.total("test_durability_failures_cleared", [("backend", "posix")]) - cleared == 1)

            let cancelled = [("backend", "posix"), ("mode", "fsync"), ("code", "cancelled"), ("errno", "none")]
            let other = [("backend", "posix"), ("mode", "fsync"), ("code", "other"), ("errno", "none")]
            let earlier = [("backend", "posix"), ("mode", "fsync"), ("code", "earlier_failure"), ("errno", "EIO")]
            let counts = (MetricsFixture.total("test_sync_failures", cancelled), MetricsFixture.total("test_sync_failures", other),
                          MetricsFixture.total("test_sync_failures", earlier))
            struct Unrelated: Error {}
            observer.syncCompleted(backend: .posix, mode: .fsync, duration: .microseconds(3), error: CancellationError())
            observer.syncCompleted(backend: .posix, mode: .fsync, duration: .microseconds(3), error: Unrelated())
            observer.syncCompleted(
                backend: .posix, mode: .fsync, duration: .microseconds(3),
                error: AsyncSyncError(code: .earlierFailure, errno: .ioError, operation: .fsync, step: .request, backend: .posix))
            #expect(MetricsFixture.total("test_sync_failures", cancelled) - counts.0 == 1)
            #expect(MetricsFixture.total("test_sync_failures", other) - counts.1 == 1)
            #expect(MetricsFixture.total("test_sync_failures", earlier) - counts.2 == 1)
            let timer = try MetricsFixture.factory.expectTimer("test_sync_duration", [("backend", "posix"), ("mode", "fsync")])
            #expect(timer.values.suffix(3) == [3_000, 3_000, 3_000])
        }

        @Test("Real writes: a duration, a call and the requested bytes per call, per backend and kind; a failed write (read-only descriptor: EBADF) counted by kind, code and errno")
        func realWrites() async throws {
            let directory = try ScratchDirectory()
            let backend = try await makeBackend(for: directory)
            let fd = try directory.file("writes")
            defer { try? fd.close() }
            let kind = backend.kind
            func dimensions(_ writeKind: String) -> [(String, String)] { [("backend", kind.rawValue), ("kind", writeKind)] }
            func timerCount(_ writeKind: String) -> Int {
                (try? MetricsFixture.factory.expectTimer("test_write_duration", dimensions(writeKind)).values.count) ?? 0
            }
            let before = (
                writes: MetricsFixture.total("test_writes", dimensions("write")),
                durable: MetricsFixture.total("test_writes", dimensions("durable_write")),
                bytes: MetricsFixture.total("test_write_bytes", dimensions("write")),
                durableBytes: MetricsFixture.total("test_write_bytes", dimensions("durable_write")),
                timer: timerCount("write"), durableTimer: timerCount("durable_write"))

            try await backend.write(fd, [UInt8](repeating: 0x61, count: 100), at: 0)
            try await backend.write(fd, [UInt8](repeating: 0x62, count: 20), at: 100)
            try await backend.durableWrite(fd, [UInt8](repeating: 0x63, count: 4096), at: 0)

            #expect(MetricsFixture.total("test_writes", dimensions("write")) - before.writes == 2)
            #expect(MetricsFixture.total("test_writes", dimensions("durable_write")) - before.durable == 1)
            #expect(MetricsFixture.total("test_write_bytes", dimensions("write")) - before.bytes == 120)
            #expect(MetricsFixture.total("test_write_bytes", dimensions("durable_write")) - before.durableBytes == 4096)
            #expect(timerCount("write") - before.timer == 2)
            #expect(timerCount("durable_write") - before.durableTimer == 1)
            #expect(MetricsFixture.factory.counters(label: "test_write_failures").isEmpty)

            // A descriptor open for reading only: the write fails with EBADF, and is counted once.
            let readOnly = try FileDescriptor.open(directory.path.appending("writes"), .readOnly)
            defer { try? readOnly.close() }
            let failed = [("backend", kind.rawValue), ("kind", "write"), ("code", "system"), ("errno", "EBADF")]
            let failuresBefore = MetricsFixture.total("test_write_failures", failed)
            let writesBefore = MetricsFixture.total("test_writes", dimensions("write"))
            do {
                try await backend.write(readOnly, [UInt8](repeating: 0x64, count: 10), at: 0)
                Issue.record("a write through a read-only descriptor succeeded")
            } catch let error as AsyncSyncError {
                #expect(error.errno == .badFileDescriptor)
            }
            #expect(MetricsFixture.total("test_write_failures", failed) - failuresBefore == 1)
            #expect(MetricsFixture.total("test_writes", dimensions("write")) - writesBefore == 1)
            #expect(MetricsFixture.total("test_write_bytes", dimensions("write")) - before.bytes == 130, "the requested count, failed or not")
            await backend.shutdown()
        }

        @Test("Write failures through the observer: a durable write's durability failure, cancellation, another error")
        func writeEvents() throws {
            let observer = MetricsFixture.observer
            let eio = [("backend", "posix"), ("kind", "durable_write"), ("code", "system"), ("errno", "EIO")]
            let cancelled = [("backend", "posix"), ("kind", "write"), ("code", "cancelled"), ("errno", "none")]
            let other = [("backend", "posix"), ("kind", "durable_write"), ("code", "other"), ("errno", "none")]
            let counts = (MetricsFixture.total("test_write_failures", eio), MetricsFixture.total("test_write_failures", cancelled),
                          MetricsFixture.total("test_write_failures", other))
            struct Unrelated: Error {}
            observer.writeCompleted(
                backend: .posix, durable: true, bytes: 4096, duration: .microseconds(7),
                error: AsyncSyncError(code: .system, errno: .ioError, operation: .fdatasync, step: .completion, backend: .posix))
            observer.writeCompleted(backend: .posix, durable: false, bytes: 1, duration: .microseconds(7), error: CancellationError())
            observer.writeCompleted(backend: .posix, durable: true, bytes: 1, duration: .microseconds(7), error: Unrelated())
            #expect(MetricsFixture.total("test_write_failures", eio) - counts.0 == 1)
            #expect(MetricsFixture.total("test_write_failures", cancelled) - counts.1 == 1)
            #expect(MetricsFixture.total("test_write_failures", other) - counts.2 == 1)
            let timer = try MetricsFixture.factory.expectTimer("test_write_duration", [("backend", "posix"), ("kind", "durable_write")])
            #expect(timer.values.suffix(2) == [7_000, 7_000])
            // The sync metrics are not touched by writes.
            #expect(MetricsFixture.factory.counters(label: "test_sync_failures")
                .filter { $0.dimensions.contains { $0 == ("kind", "durable_write") } }.isEmpty)
        }

        @Test("A real selection is counted by backend")
        func selection() async throws {
            let directory = try ScratchDirectory()
            let backend = try await makeBackend(for: directory)
            // Counted synchronously inside makeBackend, so it is there now.
            #expect(MetricsFixture.total("test_backend_selections", [("backend", backend.kind.rawValue)]) >= 1)
            await backend.shutdown()
        }
    }
}

#endif
