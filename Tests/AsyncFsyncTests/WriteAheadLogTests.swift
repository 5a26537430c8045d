import Foundation
import SystemPackage
import Testing

@testable import AsyncFsync
@testable import WriteAheadLog

/// Forwards to a backend and counts the syncs it runs (the syncs GroupCommit shares).
final class CountingBackend: AsyncSyncBackend {
    let wrapped: any AsyncSyncBackend
    let counts = Locked<[SyncMode: Int]>([:])
    var kind: BackendKind { wrapped.kind }

    init(wrapping backend: any AsyncSyncBackend) { wrapped = backend }

    func sync(_ fd: FileDescriptor, mode: SyncMode) async throws {
        counts.withLock { $0[mode, default: 0] += 1 }
        try await wrapped.sync(fd, mode: mode)
    }

    /// Durable writes (the direct mode's: each one a write and its durability).
    let durableWrites = Locked(0)

    func write(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws {
        try await wrapped.write(fd, from: buffer, at: offset)
    }

    func durableWrite(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws {
        durableWrites.withLock { $0 += 1 }
        try await wrapped.durableWrite(fd, from: buffer, at: offset)
    }

    func clearFailure(of fd: FileDescriptor) throws -> Bool { try wrapped.clearFailure(of: fd) }
    func shutdown() async { await wrapped.shutdown() }
}

extension WriteMode: CustomTestStringConvertible {
    public var testDescription: String { self == .buffered ? "buffered" : "direct" }
}

extension AsyncFsyncTests {
    /// Examples/WriteAheadLog: appends acknowledged only when durable, rotation, recovery of a torn
    /// tail, poisoning after a failed sync, and power loss at any moment (also during rotation).
    @Suite struct WriteAheadLogSuite {
        init() { GlibcAIOUnderSanitizer.configure }

        /// The payload of writer `writer`'s record `index`: a key, then filler derived from both,
        /// 10 to 150 bytes, so that a recovered record can be checked byte for byte.
        static func payload(_ writer: Int, _ index: Int) -> [UInt8] {
            let key = Array("w\(writer)-\(index):".utf8)
            let size = 10 + (writer * 131 + index * 37) % 140
            return key + (0..<max(0, size - key.count)).map { UInt8(truncatingIfNeeded: writer &* 7 &+ index &* 13 &+ $0) }
        }

        /// The (writer, index) of a payload made by ``payload(_:_:)``; nil if it is not one.
        static func key(of payload: [UInt8]) -> (writer: Int, index: Int)? {
            guard let colon = payload.firstIndex(of: UInt8(ascii: ":")), payload.first == UInt8(ascii: "w") else { return nil }
            let parts = String(decoding: payload[1..<colon], as: UTF8.self).split(separator: "-")
            guard parts.count == 2, let writer = Int(parts[0]), let index = Int(parts[1]),
                  Self.payload(writer, index) == payload else { return nil }
            return (writer, index)
        }

        /// Opens the log in `directory` and collects what it replays.
        static func open(_ directory: FilePath, _ options: WriteAheadLogOptions) async throws -> (WriteAheadLog, [LogRecord]) {
            var records: [LogRecord] = []
            let log = try await WriteAheadLog.open(directory: directory, options: options) { records.append($0) }
            return (log, records)
        }

        static func segmentNames(_ directory: FilePath) throws -> [String] {
            try FileManager.default.contentsOfDirectory(atPath: directory.string).filter { $0.hasSuffix(".wal") }.sorted()
        }

        /// Descriptors of this process open on something under `directory`.
        static func descriptorsOpen(under directory: FilePath) -> [String] {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
            return names.compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\($0)") }
                .filter { $0.hasPrefix(directory.string) }
        }

        @Test("frames: CRC-32C of the check string, a frame decodes to its payload, any flipped byte or cut makes it invalid")
        func frames() {
            #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
            let payload = Self.payload(3, 5)
            let frame = Frame.encode(lsn: 42, payload: payload)
            #expect(Frame.decode(frame, at: 0, lsn: 42)
                    == .record(payload: Frame.headerSize..<frame.count, next: frame.count))
            #expect(Frame.decode(frame, at: frame.count, lsn: 43) == .end)
            #expect(Frame.decode(frame, at: 0, lsn: 41) != .record(payload: Frame.headerSize..<frame.count, next: frame.count))
            for index in frame.indices {
                var damaged = frame
                damaged[index] ^= 0x20
                guard case .invalid = Frame.decode(damaged, at: 0, lsn: 42) else {
                    Issue.record("a flipped byte at \(index) went unnoticed")
                    continue
                }
            }
            for cut in 1..<frame.count {
                guard case .invalid = Frame.decode(Array(frame[..<cut]), at: 0, lsn: 42) else {
                    Issue.record("a frame cut after \(cut) bytes went unnoticed")
                    continue
                }
            }
        }

        @Test("round trip: records appended across many segments are replayed in order after reopening, twice; close leaves no descriptor open",
              arguments: [WriteMode.buffered, .direct])
        func roundTrip(mode: WriteMode) async throws {
            let scratch = try ScratchDirectory.onDisk()
            let directory = scratch.path.appending("wal")
            let options = WriteAheadLogOptions(segmentSize: 2048, durability: .groupCommit(AsyncSync.shared), writeMode: mode)
            var expected: [[UInt8]] = []

            let (log, none) = try await Self.open(directory, options)
            #expect(none.isEmpty && log.recovery.segments == 0)
            for index in 0..<200 {
                let payload = Self.payload(0, index)
                let lsn = try await log.append(payload)
                #expect(lsn == LSN(rawValue: UInt64(expected.count + 1)))
                expected.append(payload)
            }
            let statistics = await log.statistics
            #expect(statistics.appends == 200)
            #expect(statistics.rotations >= 5, "\(statistics)")
            try await log.close()
            #expect(Self.descriptorsOpen(under: directory).isEmpty, "\(Self.descriptorsOpen(under: directory))")
            await #expect(throws: WriteAheadLogError.self) { try await log.append([1]) }

            let (again, replayed) = try await Self.open(directory, options)
            #expect(replayed.map(\.payload) == expected)
            #expect(replayed.map(\.lsn.rawValue) == Array(1...200))
            #expect(again.recovery.segments == statistics.rotations + 1)
            #expect(try Self.segmentNames(directory).count == statistics.rotations + 1)
            #expect(again.recovery.truncatedBytes == 0)
            #expect(again.recovery.nextLSN == LSN(rawValue: 201))
            #expect(await again.nextRecord == LSN(rawValue: 201))
            for index in 200..<250 {
                expected.append(Self.payload(0, index))
                #expect(try await again.append(expected.last!) == LSN(rawValue: UInt64(index + 1)))
            }
            try await again.close()
            try await again.close()  // harmless

            let (third, all) = try await Self.open(directory, options)
            #expect(all.map(\.payload) == expected)
            try await third.close()
            #expect(Self.descriptorsOpen(under: directory).isEmpty)
        }

        @Test("16 concurrent writers: every record replayed exactly once, in each writer's order, with the LSN its append returned; syncs are shared",
              arguments: [WriteMode.buffered, .direct])
        func concurrentWriters(mode: WriteMode) async throws {
            let scratch = try ScratchDirectory.onDisk()
            let directory = scratch.path.appending("wal")
            let counting = CountingBackend(wrapping: AsyncSync.shared)
            let options = WriteAheadLogOptions(segmentSize: 4096, durability: .groupCommit(counting), writeMode: mode)
            let (log, _) = try await Self.open(directory, options)
            let writers = 16, appends = 60
            let returned = try await withThrowingTaskGroup(of: [(Int, Int, LSN)].self) { group in
                for writer in 0..<writers {
                    group.addTask {
                        var mine: [(Int, Int, LSN)] = []
                        for index in 0..<appends { mine.append((writer, index, try await log.append(Self.payload(writer, index)))) }
                        return mine
                    }
                }
                return try await group.reduce(into: []) { $0 += $1 }
            }
            let statistics = await log.statistics
            try await log.close()
            #expect(Set(returned.map(\.2)).count == writers * appends, "every append got its own LSN")
            let dataSyncs = counting.counts.withLock { $0[.fdatasync] ?? 0 } + counting.durableWrites.withLock { $0 }
            #expect(dataSyncs < writers * appends, "concurrent appends share syncs (durable writes in the direct mode): \(dataSyncs) for \(writers * appends) appends")
            #expect(statistics.rotations > 3)

            let (again, replayed) = try await Self.open(directory, options)
            try await again.close()
            #expect(replayed.count == writers * appends)
            var lastIndex = [Int: Int]()
            var lsnOf = [String: LSN]()
            for record in replayed {
                guard let (writer, index) = Self.key(of: record.payload) else {
                    Issue.record("a replayed record is not one that was written: \(record.lsn)")
                    continue
                }
                #expect(index == (lastIndex[writer] ?? -1) + 1, "writer \(writer): record \(index) after \(lastIndex[writer] ?? -1)")
                lastIndex[writer] = index
                lsnOf["\(writer)-\(index)"] = record.lsn
            }
            for (writer, index, lsn) in returned where lsnOf["\(writer)-\(index)"] != lsn {
                Issue.record("w\(writer)-\(index) was acknowledged as \(lsn), replayed as \(String(describing: lsnOf["\(writer)-\(index)"]))")
            }
        }

        enum Tear: String, CaseIterable, CustomTestStringConvertible {
            case partialHeader, partialPayload, badChecksum, garbage, staleRecord
            var testDescription: String { rawValue }

            /// Bytes as a crash could leave them after the last good record (`next`: its LSN).
            func bytes(next: UInt64) -> [UInt8] {
                let frame = Frame.encode(lsn: next, payload: Array("a record that did not make it".utf8))
                switch self {
                case .partialHeader: return Array(frame[..<11])
                case .partialPayload: return Array(frame[..<(frame.count - 5)])
                case .badChecksum:
                    var damaged = frame
                    damaged[damaged.count - 1] ^= 0xFF
                    return damaged
                case .garbage: return [UInt8](repeating: 0, count: 300)
                case .staleRecord: return Frame.encode(lsn: next - 3, payload: Array("an old record".utf8))
                }
            }
        }

        @Test("torn tail: the good records are replayed, the tail is truncated, appends go on on a clean boundary",
              arguments: Tear.allCases)
        func tornTail(tear: Tear) async throws {
            let scratch = try ScratchDirectory.onDisk()
            let directory = scratch.path.appending("wal")
            let options = WriteAheadLogOptions(segmentSize: 1024, durability: .groupCommit(AsyncSync.shared))
            let (log, _) = try await Self.open(directory, options)
            for index in 0..<30 { _ = try await log.append(Self.payload(1, index)) }
            try await log.close()

            let last = directory.appending(try #require(Self.segmentNames(directory).last))
            let goodSize = try #require(FileManager.default.attributesOfItem(atPath: last.string)[.size] as? Int)
            let junk = tear.bytes(next: 31)
            let file = try FileDescriptor.open(last, .writeOnly, options: .append)
            try file.writeAll(junk)
            try file.close()

            let (again, replayed) = try await Self.open(directory, options)
            #expect(replayed.map(\.payload) == (0..<30).map { Self.payload(1, $0) })
            #expect(again.recovery.truncatedBytes == junk.count)
            #expect(try FileManager.default.attributesOfItem(atPath: last.string)[.size] as? Int == goodSize)
            for index in 30..<40 { #expect(try await again.append(Self.payload(1, index)) == LSN(rawValue: UInt64(index + 1))) }
            try await again.close()

            let (third, all) = try await Self.open(directory, options)
            #expect(all.map(\.payload) == (0..<40).map { Self.payload(1, $0) })
            #expect(third.recovery.truncatedBytes == 0)
            try await third.close()
        }

        @Test("a cancelled append leaves no hole: its record is written anyway, unacknowledged; later appends are acknowledged and all are recovered",
              arguments: [WriteMode.buffered, .direct])
        func cancelledAppend(mode: WriteMode) async throws {
            let scratch = try ScratchDirectory.onDisk()
            let directory = scratch.path.appending("wal")
            let options = WriteAheadLogOptions(segmentSize: 1 << 20, durability: .groupCommit(AsyncSync.shared), writeMode: mode)
            let (log, _) = try await Self.open(directory, options)
            #expect(try await log.append(Self.payload(0, 0)) == LSN(rawValue: 1))
            let cancelled = Task {
                withUnsafeCurrentTask { $0?.cancel() }  // cancelled before its write reaches the backend
                return try await log.append(Self.payload(0, 1))
            }
            let outcome = await cancelled.result
            #expect(throws: CancellationError.self, "\(mode)") { try outcome.get() }
            #expect(try await log.append(Self.payload(0, 2)) == LSN(rawValue: 3), "\(mode): the log is not poisoned")
            try await log.close()
            let (again, replayed) = try await Self.open(directory, options)
            try await again.close()
            #expect(replayed.map(\.payload) == (0..<3).map { Self.payload(0, $0) }, "\(mode): the cancelled record is in the log")
        }

        @Test("record size: a payload above the limit is refused without poisoning the log; a log reopened with a smaller limit keeps its larger records")
        func recordSizeLimit() async throws {
            let scratch = try ScratchDirectory.onDisk()
            let directory = scratch.path.appending("wal")
            let (log, _) = try await Self.open(directory, WriteAheadLogOptions(segmentSize: 4096, maxRecordSize: 10_000))
            let big = [UInt8](repeating: 7, count: 10_000)
            let error = await #expect(throws: WriteAheadLogError.self) { _ = try await log.append(big + [0]) }
            #expect(error?.code == .recordTooLarge)
            #expect(try await log.append(big) == LSN(rawValue: 1), "a segment of its own, larger than the segment size")
            #expect(try await log.append([1, 2, 3]) == LSN(rawValue: 2))
            try await log.close()
            let (again, records) = try await Self.open(directory, WriteAheadLogOptions(maxRecordSize: 100))
            #expect(records.map(\.payload) == [big, [1, 2, 3]])
            #expect(again.recovery.truncatedBytes == 0)
            try await again.close()
        }

        @Test("damage in a segment that is not the last is corruption: open refuses instead of dropping the segments after it")
        func damageBeforeTheLastSegment() async throws {
            let scratch = try ScratchDirectory.onDisk()
            let directory = scratch.path.appending("wal")
            let options = WriteAheadLogOptions(segmentSize: 512, durability: .groupCommit(AsyncSync.shared))
            let (log, _) = try await Self.open(directory, options)
            for index in 0..<30 { _ = try await log.append(Self.payload(2, index)) }
            try await log.close()
            let first = directory.appending(try #require(Self.segmentNames(directory).first))
            let file = try FileDescriptor.open(first, .readWrite)
            try file.writeAll(toAbsoluteOffset: 25, [0xFF])
            try file.close()
            let error = await #expect(throws: WriteAheadLogError.self) { _ = try await Self.open(directory, options) }
            #expect(error?.code == .corrupt, "\(String(describing: error))")
            #expect(Self.descriptorsOpen(under: directory).isEmpty)
        }

        @Test("a failed sync fails its append and poisons the log; nothing after it is acknowledged, close still closes",
              arguments: BackendKind.tested)
        func failedSyncPoisons(kind: BackendKind) async throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3 (scripts/install-deps test)") else { return }
            let fs = try FaultFS()
            let backend = try makeBackend(kind)
            let directory = fs.mountPoint.appending("wal")
            let (log, _) = try await Self.open(directory, WriteAheadLogOptions(durability: .groupCommit(backend)))
            _ = try await log.append(Self.payload(0, 0))
            try fs.control("errno=EIO op=fdatasync count=1")
            // Concurrent appends: those in the failed sync get its error, later ones the poison.
            let outcomes = await withTaskGroup(of: (any Error)?.self) { group in
                for index in 1...8 { group.addTask { await caughtError { _ = try await log.append(Self.payload(0, index)) } } }
                return await group.reduce(into: []) { $0.append($1) }
            }
            #expect(outcomes.allSatisfy { $0 != nil }, "no append is acknowledged once a sync failed: \(outcomes)")
            #expect(outcomes.contains { ($0 as? AsyncSyncError)?.isDurabilityFailure == true }, "\(outcomes)")
            let later = await caughtError { _ = try await log.append(Self.payload(0, 9)) } as? WriteAheadLogError
            #expect(later?.code == .poisoned)
            #expect((later?.underlying as? AsyncSyncError)?.errno == .ioError, "\(String(describing: later))")
            // The fault is injected once: a retried sync would have succeeded and acknowledged an append.
            #expect(try fs.counter("injected") == 1, "the fault reached the file system")
            try await log.close()
            #expect(Self.descriptorsOpen(under: directory).isEmpty)
            await backend.shutdown()

            let fresh = try makeBackend(kind)
            let (reopened, replayed) = try await Self.open(directory, WriteAheadLogOptions(durability: .groupCommit(fresh)))
            #expect(replayed.first?.payload == Self.payload(0, 0))
            #expect(replayed.allSatisfy { Self.key(of: $0.payload) != nil })
            _ = try await reopened.append(Self.payload(1, 0))
            try await reopened.close()
            await fresh.shutdown()
        }

        enum Variant: String, CaseIterable, CustomTestStringConvertible {
            case correct, unsafeSkipDirectorySync, unsafeSkipDataSync
            var testDescription: String { rawValue }
        }

        /// The backends, variants and write modes of the power-loss test: each correct log on every
        /// backend, each wrong log once, on one backend, per mode.
        static var powerLossCases: [(BackendKind, Variant, WriteMode)] {
            #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
            [(.libaio, .correct, .buffered), (.posix, .correct, .buffered), (.portable, .correct, .buffered),
             (.libaio, .unsafeSkipDirectorySync, .buffered), (.posix, .unsafeSkipDataSync, .buffered),
             (.libaio, .correct, .direct), (.posix, .correct, .direct), (.portable, .correct, .direct),
             (.posix, .unsafeSkipDirectorySync, .direct), (.libaio, .unsafeSkipDataSync, .direct)]
            #else
            [(.portable, .correct, .buffered), (.portable, .unsafeSkipDirectorySync, .buffered), (.portable, .unsafeSkipDataSync, .buffered),
             (.portable, .correct, .direct)]
            #endif
        }

        /// Power-loss mode: whether record `lsn` with `payload` is in the durable content of its
        /// segment (what the segment's last successful sync covered; names are not looked at).
        static func isDurable(_ lsn: LSN, _ payload: [UInt8], in fs: FaultFS, directory: String) throws -> Bool {
            let segments = try Segment.list(in: fs.mountPoint.appending(directory))
            guard let segment = segments.last(where: { $0.firstLSN <= lsn.rawValue }) else { return false }
            let durable = try fs.durableContents(of: directory + "/" + segment.name)
            var offset = 0
            var next = segment.firstLSN
            while case .record(let range, let end) = Frame.decode(durable, at: offset, lsn: next) {
                if next == lsn.rawValue { return Array(durable[range]) == payload }
                offset = end
                next += 1
            }
            return false
        }

        /// Concurrent writers on a log with tiny segments on the power-loss file system. Each
        /// acknowledged record must be in its segment's durable content at its acknowledgement;
        /// crash images are taken at random moments and inside rotations (right after the new
        /// segment's creation, before the directory sync; right after the full segment's sync),
        /// and each is recovered as a log: every record acknowledged before the image was taken
        /// must be recovered from it, intact and exactly once. Two deliberately wrong logs must be
        /// caught: one that skips the directory sync after a rotation, one that acknowledges
        /// appends without their data sync.
        @Test("power loss at any moment, also during rotation: every acknowledged record is durable and recovered; wrong logs are caught",
              arguments: powerLossCases)
        func powerLoss(kind: BackendKind, variant: Variant, mode: WriteMode) async throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3 (scripts/install-deps test)") else { return }
            let fs = try FaultFS(powerLoss: true)
            let fsBox = Unchecked(fs)
            let backend = try makeBackend(kind)
            let directory = fs.mountPoint.appending("wal")

            let acknowledged = Locked<Set<String>>([])
            let crashes = Locked<[Crash]>([])
            // One crash at a time (FaultFS numbers its images); the acknowledged set is read
            // before the image is taken.
            let crash: @Sendable (String) -> Void = { when in
                let failure = crashes.withLock { crashes -> (any Error)? in
                    let before = acknowledged.withLock { $0 }
                    do {
                        crashes.append(Crash(image: try fsBox.value.crashImage(), acknowledged: before, when: when))
                        return nil
                    } catch {
                        return error
                    }
                }
                if let failure { Issue.record("crash image \(when): \(failure)") }
            }
            let rotations = Locked(0)
            var options = WriteAheadLogOptions(segmentSize: 600, durability: .groupCommit(backend), writeMode: mode)
            options.unsafeSkipDirectorySync = variant == .unsafeSkipDirectorySync
            options.unsafeSkipDataSync = variant == .unsafeSkipDataSync
            let notDurableAtAcknowledgement = Locked<[String]>([])
            options.rotationHook = { step in
                let count = rotations.withLock { count -> Int in
                    if step == .newSegmentCreated { count += 1 }
                    return count
                }
                // Every third rotation, between the creation and the directory sync; every
                // fifth, right after the full segment's sync.
                if step == .newSegmentCreated, count % 3 == 1 { crash("in rotation \(count), before the directory sync") }
                if step == .oldSegmentSynced, count % 5 == 2 { crash("in rotation \(count + 1), after the full segment's sync") }
            }

            // libaio's direct mode rewrites the last partial block with RWF_DSYNC: FUSE sends no
            // fsync for it, and the fault file system takes the write's O_DSYNC flag as its sync
            // (see AsyncFiles/durableRewriteOnFuse).
            try await powerLossRun(fs: fs, fsBox: fsBox, backend: backend, directory: directory, variant: variant, options: options,
                                   acknowledged: acknowledged, crashes: crashes, crash: crash, rotations: rotations,
                                   notDurableAtAcknowledgement: notDurableAtAcknowledgement)
            await backend.shutdown()
        }

        struct Crash { var image: FilePath; var acknowledged: Set<String>; var when: String }

        func powerLossRun(
            fs: FaultFS, fsBox: Unchecked<FaultFS>, backend: any AsyncSyncBackend, directory: FilePath, variant: Variant,
            options: WriteAheadLogOptions, acknowledged: Locked<Set<String>>, crashes: Locked<[Crash]>,
            crash: @escaping @Sendable (String) -> Void, rotations: Locked<Int>, notDurableAtAcknowledgement: Locked<[String]>
        ) async throws {
            let (log, _) = try await Self.open(directory, options)
            let writers = 6, appends = 30
            try await withThrowingTaskGroup(of: Void.self) { group in
                for writer in 0..<writers {
                    group.addTask {
                        for index in 0..<appends {
                            let lsn = try await log.append(Self.payload(writer, index))
                            if try !Self.isDurable(lsn, Self.payload(writer, index), in: fsBox.value, directory: "wal") {
                                notDurableAtAcknowledgement.withLock { $0.append("w\(writer)-\(index)") }
                            }
                            acknowledged.withLock { _ = $0.insert("\(writer)-\(index)") }
                        }
                    }
                }
                group.addTask {
                    for moment in 0..<6 {
                        try await Task.sleep(for: .milliseconds(Int.random(in: 2...25)))
                        crash("at random moment \(moment)")
                    }
                }
                try await group.waitForAll()
            }
            crash("after the last append")
            try await log.close()
            #expect(rotations.withLock { $0 } >= 10)

            var lostSomewhere: [String] = []
            for crash in crashes.withLock({ $0 }) {
                // The image is a plain directory on the host; recovering it needs no backend under test.
                let (recovered, records) = try await Self.open(crash.image.appending("wal"),
                                                               WriteAheadLogOptions(durability: .blockingFdatasync))
                try await recovered.close()
                var seen = Set<String>()
                var lastIndex = [Int: Int]()
                for record in records {
                    guard let (writer, index) = Self.key(of: record.payload) else {
                        Issue.record("\(crash.when): recovered a record that was never written (\(record.lsn))")
                        continue
                    }
                    #expect(seen.insert("\(writer)-\(index)").inserted, "\(crash.when): w\(writer)-\(index) twice")
                    #expect(index == (lastIndex[writer] ?? -1) + 1, "\(crash.when): w\(writer)-\(index) out of order")
                    lastIndex[writer] = index
                }
                let lost = crash.acknowledged.subtracting(seen)
                if !lost.isEmpty { lostSomewhere.append("\(crash.when): \(lost.count) of \(crash.acknowledged.count) lost") }
            }
            #expect(crashes.withLock { $0.count } >= 10)
            let notDurable = notDurableAtAcknowledgement.withLock { $0 }
            switch variant {
            case .correct:
                #expect(notDurable.isEmpty, "acknowledged before they were durable: \(notDurable)")
                #expect(lostSomewhere.isEmpty, "acknowledged records lost in a crash: \(lostSomewhere)")
                #expect(acknowledged.withLock { $0.count } == writers * appends)
            case .unsafeSkipDirectorySync:
                #expect(!lostSomewhere.isEmpty, "the check must catch a log that acknowledges records in a segment whose name is not durable")
            case .unsafeSkipDataSync:
                #expect(!notDurable.isEmpty, "the check must catch a log that acknowledges records before their sync")
            }
        }
    }
}
