import Foundation
import SystemPackage
import Testing

@testable import AsyncFsync
@testable import WriteAheadLog

extension AsyncFsyncTests {
    /// Review of 6171cc3 (a retired segment's file is closed only once no append uses it).
    @Suite struct ReviewWAL {
        init() { GlibcAIOUnderSanitizer.configure }

        /// A task executor that runs each job on a thread of its own. Once armed, it keeps the
        /// next job of a task (not an actor's processing job, which a task with this preference
        /// can bring here too) until ``release()``.
        final class HoldingExecutor: TaskExecutor, @unchecked Sendable {
            private let lock = NSLock()
            private var armed = false
            private var held: UnownedJob?
            private var unknown: [String] = []

            /// Whether a job is a task's: its description reads "ExecutorJob(id: <task id>)", a
            /// default actor's processing job's (no task) "ExecutorJob(id: nil)". The runtime has
            /// no public way to tell them apart (`ExecutorJob.kind` is SPI), so the format is
            /// checked: a description of another form is kept, and the test fails on it instead
            /// of holding the wrong job.
            static func isTaskJob(_ description: String) -> Bool? {
                guard description.hasPrefix("ExecutorJob(id: "), description.hasSuffix(")") else { return nil }
                let id = description.dropFirst("ExecutorJob(id: ".count).dropLast()
                if id == "nil" { return false }
                return !id.isEmpty && id.allSatisfy(\.isNumber) ? true : nil
            }

            /// Descriptions this executor could not classify (expected empty).
            var unknownDescriptions: [String] { lock.withLock { unknown } }

            func enqueue(_ job: consuming ExecutorJob) {
                let description = job.description
                let isTask = Self.isTaskJob(description)
                let job = UnownedJob(job)
                let hold = lock.withLock { () -> Bool in
                    if isTask == nil { unknown.append(description) }
                    guard armed, isTask == true else { return false }
                    armed = false
                    held = job
                    return true
                }
                if !hold { run(job) }
            }

            private func run(_ job: UnownedJob) {
                let executor = Unchecked(self)
                let job = Unchecked(job)
                Thread { job.value.runSynchronously(on: executor.value.asUnownedTaskExecutor()) }.start()
            }

            func arm() { lock.withLock { armed = true } }
            var isHolding: Bool { lock.withLock { held != nil } }
            func release() {
                let job = lock.withLock { () -> UnownedJob? in
                    armed = false
                    defer { held = nil }
                    return held
                }
                if let job { run(job) }
            }
        }

        /// Forwards to a backend; arms the executor when the write it was told of has returned.
        final class ArmingBackend: AsyncSyncBackend {
            let wrapped: any AsyncSyncBackend
            let executor: HoldingExecutor
            private let armOnNextWrite = Locked(false)
            var kind: BackendKind { wrapped.kind }

            init(wrapping backend: any AsyncSyncBackend, executor: HoldingExecutor) {
                wrapped = backend
                self.executor = executor
            }

            func armAfterNextWrite() { armOnNextWrite.withLock { $0 = true } }

            func sync(_ fd: FileDescriptor, mode: SyncMode) async throws {
                try await wrapped.sync(fd, mode: mode)
            }

            func write(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws {
                try await wrapped.write(fd, from: buffer, at: offset)
                if armOnNextWrite.withLock({ armed in defer { armed = false }; return armed }) { executor.arm() }
            }

            func durableWrite(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws {
                try await wrapped.durableWrite(fd, from: buffer, at: offset)
            }

            func clearFailure(of fd: FileDescriptor) throws -> Bool { try wrapped.clearFailure(of: fd) }
            func shutdown() async { await wrapped.shutdown() }
        }

        /// Descriptors of this process open on the file at `path`.
        static func descriptors(of path: FilePath) -> Int {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
            return names.filter { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\($0)")) == path.string }.count
        }

        /// CI's failure of "16 concurrent writers" (buffered), made deterministic: an append whose
        /// write is done is held between its write and its sync (its task's next job, the hop into
        /// `AsyncFile.sync`, waits on the test's executor) while another append rotates the
        /// segment. Before 6171cc3 the rotation's `Task { file.close() }` closed the full segment
        /// under it, and its sync failed with `EBADF` ("no operation is admitted once close()
        /// began"), poisoning the log.
        @Test("an append held between its write and its sync while a rotation retires its segment gets its sync; the segment closes after it")
        func appendHeldAcrossRotation() async throws {
            let scratch = try ScratchDirectory.onDisk()
            let directory = scratch.path.appending("wal")
            let executor = HoldingExecutor()
            let backend = ArmingBackend(wrapping: AsyncSync.shared, executor: executor)
            let options = WriteAheadLogOptions(segmentSize: 4096, durability: .groupCommit(backend))
            let log = try await WriteAheadLog.open(directory: directory, options: options)
            let first = directory.appending(Segment.name(firstLSN: 1))
            defer { executor.release() }

            // A: its write done, its task waits on the executor before its sync is asked for.
            let small = WriteAheadLogSuite.payload(0, 0)
            backend.armAfterNextWrite()
            let held = Watched { try await withTaskExecutorPreference(executor) { try await log.append(small) } }
            try #require(await eventually(30) { executor.isHolding || held.isDone }, "A reached its sync")
            try #require(executor.unknownDescriptions.isEmpty,
                         "the test tells a task's job from an actor's by ExecutorJob.description, whose form changed: \(executor.unknownDescriptions)")
            try #require(!held.isDone, "A was held: \(String(describing: held.outcome))")

            // B does not fit: it rotates the segment (A's write is done, so the rotation's wait
            // for the segment's writes passes) and is acknowledged in the next segment.
            let large = [UInt8](repeating: 0x42, count: 4096)
            let rotating = Watched { try await log.append(large) }
            try #require(await eventually(30) { rotating.isDone }, "B returned")
            #expect(rotating.succeeded, "B: \(String(describing: rotating.outcome))")
            #expect(await log.statistics.rotations == 1)
            // Before the fix, the retired segment's close is a task of its own: give it its turns
            // (a bounded number: after the fix the descriptor stays open until A ends).
            var turns = 0
            while turns < 2000, Self.descriptors(of: first) > 0 {
                await Task.yield()
                turns += 1
            }
            #expect(Self.descriptors(of: first) == 1, "the full segment is still open while A has its sync to make")

            executor.release()
            try #require(await eventually(30) { held.isDone }, "A returned")
            #expect(held.outcome.map { (try? $0.get()) == LSN(rawValue: 1) } == true, "A: \(String(describing: held.outcome))")
            try await log.close()
            #expect(Self.descriptors(of: first) == 0)
            #expect(WriteAheadLogSuite.descriptorsOpen(under: directory).isEmpty)
            #expect(executor.unknownDescriptions.isEmpty, "jobs of an unknown description: \(executor.unknownDescriptions)")

            var replayed: [LogRecord] = []
            let again = try await WriteAheadLog.open(directory: directory, options: options) { replayed.append($0) }
            try await again.close()
            #expect(replayed.map(\.payload) == [small, large])
        }
    }
}
