import CAsyncFsync
import CTestSupport
import Foundation
import Synchronization
import SystemPackage
import Testing

@testable import AsyncFsync

/// A deliberately wrong coalescer: a request for a file whose sync is in flight joins that sync,
/// although the sync may have started before the request's data was written. The power-loss test
/// must catch it.
///
/// Its wrongness is made certain rather than left to timing: the sync a leader started is held
/// in flight, from the coalescer's point of view, until one request has joined it, even after the
/// system answered. So the next request of the file (one that wrote after that sync ended) is
/// acknowledged by it, every time: every second request.
final class JoinInFlightCoalescer: AsyncSyncBackend {
    let wrapped: any AsyncSyncBackend
    private let running = Locked<[CInt: Task<Void, any Error>]>([:])
    var kind: BackendKind { wrapped.kind }

    init(wrapping backend: any AsyncSyncBackend) { wrapped = backend }

    func sync(_ fd: FileDescriptor, mode: SyncMode) async throws {
        let task = running.withLock { running -> Task<Void, any Error> in
            // The bug: join whatever was started, and take it out only once it has been joined.
            if let task = running.removeValue(forKey: fd.rawValue) { return task }
            let task = Task { [wrapped] in try await wrapped.sync(fd, mode: .fsync) }
            running[fd.rawValue] = task
            return task
        }
        try await task.value
    }

    func shutdown() async { await wrapped.shutdown() }
}

extension AsyncFsyncTests {
    /// Power loss, simulated by the fault file system: at every fsync it keeps the file as it was
    /// when the sync reached it, and a crash keeps only that. Every acknowledged record must be in
    /// that durable image the moment it is acknowledged, and in a crash image taken at any moment.
    @Suite struct PowerLoss {
        init() { GlibcAIOUnderSanitizer.configure }

        enum Layer: String, CaseIterable, CustomTestStringConvertible {
            case plain, groupCommit, wrongCoalescer
            var testDescription: String { rawValue }
        }

        /// Holds completions back a little after the file system answered, so that a request can
        /// write and arrive while the coalescer still sees the sync as in flight (the window a wrong
        /// coalescer falls into).
        static func slowCompletions() -> SystemCalls {
            var system = SystemCalls.live
            system.durableSync = { mode, fd in
                let result = SystemCalls.live.durableSync(mode, fd)
                usleep(3_000)
                return result
            }
            #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
            system.reapCompletions = { context, events, maximum in
                let result = SystemCalls.live.reapCompletions(context, events, maximum)
                if case .success(let count) = result, count > 0 { usleep(3_000) }
                return result
            }
            system.aioError = { control in
                let status = SystemCalls.live.aioError(control)
                if status != .inProgress, control.pointee.aio_buf == nil { usleep(3_000) }
                return status
            }
            #endif
            return system
        }

        /// What one run of the power-loss check saw.
        struct Outcome {
            /// Requests the run made.
            var expected: Int
            /// Requests acknowledged.
            var acknowledged: Int
            /// Acknowledged records that were not in the durable image at their acknowledgement.
            var notDurableAtAcknowledgement: [String]
            /// Records acknowledged before the crash in the middle and missing from its image.
            var lostInCrash: [String]
            /// Acknowledged records missing from the final crash image.
            var lostAtEnd: [String]
            /// Snapshots the file system kept (successful fsyncs that reached it).
            var snapshots: Int
        }

        /// Writers append records to one log and sync after each; every acknowledged record must be
        /// durable at once and in a crash image taken meanwhile and at the end.
        ///
        /// The wrong coalescer runs with one writer: its joined sync always ended before the
        /// joiner's record was written, and no other writer's sync can make that record durable
        /// before the check reads the durable image, so every joined acknowledgement is caught.
        static func run(kind: BackendKind, layer: Layer) async throws -> Outcome {
            let fs = try FaultFS(powerLoss: true)
            let log = try FileDescriptor.open(fs.mountPoint.appending("log"), .readWrite,
                                              options: [.create, .append], permissions: [.ownerReadWrite])
            defer { try? log.close() }
            // The log's name must be durable too: sync the directory once.
            let directory = try FileDescriptor.open(fs.mountPoint, .readOnly, options: .directory)
            defer { try? directory.close() }
            _ = fsync(directory.rawValue)

            let backend = try makeBackend(kind, system: Self.slowCompletions())
            let api: any AsyncSyncBackend = switch layer {
            case .plain: backend
            case .groupCommit: GroupCommit(wrapping: backend)
            case .wrongCoalescer: JoinInFlightCoalescer(wrapping: backend)
            }
            let durablePath = fs.mountPoint.appending(".faultfs-durable").appending("log").string
            let acknowledged = Locked<[String]>([])
            let violations = Locked<[String]>([])
            let writers = layer == .wrongCoalescer ? 1 : 6
            let appends = 12
            let crashChecks = Locked<[String]>([])
            let fsBox = Unchecked(fs)

            try await withThrowingTaskGroup(of: Void.self) { group in
                for writer in 0..<writers {
                    group.addTask {
                        for index in 0..<appends {
                            let record = "w\(writer)-\(index);"
                            _ = try log.writeAll(Array(record.utf8))
                            try await api.fdatasync(log)
                            let durable = (try? String(contentsOfFile: durablePath, encoding: .utf8)) ?? ""
                            if !durable.contains(record) { violations.withLock { $0.append(record) } }
                            acknowledged.withLock { $0.append(record) }
                        }
                    }
                }
                // A crash in the middle: everything acknowledged before it is in its image.
                group.addTask {
                    try await Task.sleep(for: .milliseconds(30))
                    let before = acknowledged.withLock { $0 }
                    let image = try fsBox.value.crashImage()
                    let survived = (try? String(contentsOfFile: image.appending("log").string, encoding: .utf8)) ?? ""
                    for record in before where !survived.contains(record) { crashChecks.withLock { $0.append(record) } }
                }
                try await group.waitForAll()
            }
            let image = try fs.crashImage()
            let survived = (try? String(contentsOfFile: image.appending("log").string, encoding: .utf8)) ?? ""
            let lostAtEnd = acknowledged.withLock { $0 }.filter { !survived.contains($0) }
            await api.shutdown()
            return Outcome(
                expected: writers * appends, acknowledged: acknowledged.withLock { $0.count },
                notDurableAtAcknowledgement: violations.withLock { $0 }, lostInCrash: crashChecks.withLock { $0 },
                lostAtEnd: lostAtEnd, snapshots: try fs.counter("snapshots"))
        }

        @Test("every acknowledged record is durable when it is acknowledged and survives a crash at any moment; a coalescer that joins a sync in flight is caught",
              arguments: BackendKind.tested, Layer.allCases)
        func acknowledgedMeansDurable(kind: BackendKind, layer: Layer) async throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3 (scripts/install-deps test)") else { return }
            let outcome = try await Self.run(kind: kind, layer: layer)
            #expect(outcome.acknowledged == outcome.expected)
            let lost = outcome.notDurableAtAcknowledgement
            switch layer {
            case .plain, .groupCommit:
                #expect(lost.isEmpty, "acknowledged before they were durable: \(lost)")
                #expect(outcome.lostInCrash.isEmpty, "lost in a crash after their acknowledgement: \(outcome.lostInCrash)")
                #expect(outcome.lostAtEnd.isEmpty, "lost in the final crash: \(outcome.lostAtEnd)")
                #expect(outcome.snapshots > 0)
            case .wrongCoalescer:
                // Certain, not timing-dependent: every second request joins a sync that ended
                // before its record was written (see ``JoinInFlightCoalescer``).
                #expect(lost.count == outcome.expected / 2,
                        "the check must catch every acknowledgement the wrong coalescer gives through a joined sync: \(lost)")
            }
        }
    }
}
