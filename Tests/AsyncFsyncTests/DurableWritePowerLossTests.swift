#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
import CAsyncFsync
import Foundation
import SystemPackage
import Testing

@testable import AsyncFsync

import Glibc

/// A deliberately wrong durable write: it acknowledges at the write's completion and never makes
/// the data durable (a plain write, no sync, no `RWF_DSYNC`). The power-loss check must report
/// every acknowledgement it gives. Certain rather than left to timing: in a run through it nothing
/// ever syncs the file, so no acknowledged record can be durable by accident.
final class AcknowledgeAtWriteCompletion: AsyncSyncBackend {
    let wrapped: any AsyncSyncBackend
    var kind: BackendKind { wrapped.kind }

    init(wrapping backend: any AsyncSyncBackend) { wrapped = backend }

    func sync(_ fd: FileDescriptor, mode: SyncMode) async throws { try await wrapped.sync(fd, mode: mode) }

    func write(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws {
        try await wrapped.write(fd, from: buffer, at: offset)
    }

    func durableWrite(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws {
        try await wrapped.write(fd, from: buffer, at: offset)  // the bug: acknowledged once written
    }

    func shutdown() async { await wrapped.shutdown() }
}

extension AsyncFsyncTests {
    /// Power loss for durable writes (issue 17), simulated by the fault file system: many writers
    /// make records durable with `durableWrite` in one file; each acknowledged record must be in
    /// the file's durable image the moment it is acknowledged, and in crash images taken during
    /// the run and at its end. Buffered and `O_DIRECT` files, both AIO backends.
    @Suite struct DurableWritePowerLoss {
        init() { GlibcAIOUnderSanitizer.configure }

        enum Layer: String, CaseIterable, CustomTestStringConvertible {
            case engine, acknowledgeAtWriteCompletion
            var testDescription: String { rawValue }
        }

        static let record = 4096
        static let writers = 8
        static let perWriter = 12
        static var records: Int { writers * perWriter }

        /// Record `index`: its number in the first bytes, then a non-zero fill of its own.
        static func contents(_ index: Int) -> [UInt8] {
            var bytes = [UInt8](repeating: UInt8(truncatingIfNeeded: index % 251 + 1), count: record)
            let label = Array("record \(index);".utf8)
            bytes.replaceSubrange(0..<label.count, with: label)
            return bytes
        }

        /// `count` bytes at `offset` of the durable content of `name` (shorter where the durable file
        /// ends earlier). Opening the durable view copies the file's durable content; no sync is sent.
        static func durableRange(_ fs: FaultFS, _ name: String, offset: Int, count: Int) -> [UInt8] {
            let raw = Glibc.open(fs.mountPoint.appending(".faultfs-durable").appending(name).string, O_RDONLY)
            guard raw >= 0 else { return [] }
            defer { Glibc.close(raw) }
            var bytes = [UInt8](repeating: 0, count: count)
            let read = bytes.withUnsafeMutableBytes { Glibc.pread(raw, $0.baseAddress, count, off_t(offset)) }
            return read > 0 ? Array(bytes.prefix(read)) : []
        }

        struct Outcome {
            var acknowledged = 0
            /// Records not in the durable image when their durable write returned.
            var notDurableAtAcknowledgement: [Int] = []
            /// Records acknowledged before the crash taken in the middle and missing from its image.
            var lostInCrash: [Int] = []
            /// Acknowledged records missing from the final crash image.
            var lostAtEnd: [Int] = []
            var status: [String: String] = [:]
        }

        /// The first half of the records overwrite a preallocated, durable part of the file, the
        /// second half extend it: on the page-cache mount the kernel runs an extending `O_DIRECT`
        /// write of kernel AIO synchronously (and sends FUSE an fsync after an `RWF_DSYNC` one), an
        /// overwrite asynchronously (no fsync: only the request's `O_DSYNC` flag says it is durable).
        static func run(kind: BackendKind, path: FaultPath, layer: Layer) async throws -> Outcome {
            let fs = try FaultFS(powerLoss: true, directIO: path.directIOMount)
            let name = "log"
            let fd = try path.open(fs, name)
            defer { try? fd.close() }
            // The name and the preallocated half are durable before the run.
            #expect(ftruncate(fd.rawValue, off_t(records / 2 * record)) == 0)
            #expect(Glibc.fsync(fd.rawValue) == 0)
            let directory = try FileDescriptor.open(fs.mountPoint, .readOnly, options: .directory)
            #expect(Glibc.fsync(directory.rawValue) == 0)
            try directory.close()
            try fs.control("reset")

            let backend = try makeBackend(kind)
            let api: any AsyncSyncBackend = layer == .engine ? backend : AcknowledgeAtWriteCompletion(wrapping: backend)
            let acknowledged = Locked<[Int]>([])
            let notDurable = Locked<[Int]>([])
            let lostInCrash = Locked<[Int]?>(nil)
            let fsBox = Unchecked(fs)
            // Record i goes to slot order[i]: the writers' records interleave through the file.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for writer in 0..<writers {
                    group.addTask {
                        for step in 0..<perWriter {
                            let index = step * writers + writer
                            let buffer = PageBuffer(contents(index))
                            try await api.durableWrite(fd, from: buffer.raw, at: Int64(index * record))
                            let durable = durableRange(fsBox.value, name, offset: index * record, count: record)
                            if durable != contents(index) { notDurable.withLock { $0.append(index) } }
                            let count = acknowledged.withLock { $0.append(index); return $0.count }
                            if count == records / 2 {
                                // A crash in the middle (no sleep: when half are acknowledged):
                                // everything acknowledged before it is in its image.
                                let before = acknowledged.withLock { $0 }
                                let image = try fsBox.value.crashImage()
                                let survived = backingLike(image.appending(name).string)
                                lostInCrash.withLock { $0 = before.filter { !survived.holds($0) } }
                            }
                        }
                    }
                }
                try await group.waitForAll()
            }
            var outcome = Outcome()
            outcome.acknowledged = acknowledged.withLock { $0.count }
            outcome.notDurableAtAcknowledgement = notDurable.withLock { $0 }.sorted()
            outcome.lostInCrash = lostInCrash.withLock { $0 } ?? Array(0..<records)
            let image = try fs.crashImage()
            let survived = backingLike(image.appending(name).string)
            outcome.lostAtEnd = acknowledged.withLock { $0 }.filter { !survived.holds($0) }.sorted()
            outcome.status = try fs.status()
            #expect(outstanding(backend) == 0)
            await api.shutdown()
            return outcome
        }

        /// A file's bytes, asked whether record `index` is at its place.
        struct FileImage {
            var bytes: [UInt8]
            func holds(_ index: Int) -> Bool {
                let start = index * record
                return bytes.count >= start + record && Array(bytes[start..<start + record]) == contents(index)
            }
        }

        static func backingLike(_ path: String) -> FileImage {
            FileImage(bytes: (try? Array(Data(contentsOf: URL(fileURLWithPath: path)))) ?? [])
        }

        struct Case: CustomTestStringConvertible, Sendable {
            var path: FaultPath
            var layer: Layer
            var testDescription: String { "\(path.testDescription), \(layer.rawValue)" }
        }

        static let cases = [FaultPath.pageCacheBuffered, .pageCacheDirect, .directMountDirect].flatMap { path in
            Layer.allCases.map { Case(path: path, layer: $0) }
        }

        @Test("every acknowledged durable write is durable at its acknowledgement and survives a crash in the middle and at the end (8 concurrent writers, one file); a durable write that acknowledges at write completion is caught every time",
              arguments: BackendKind.aio, cases)
        func acknowledgedMeansDurable(kind: BackendKind, case run: Case) async throws {
            let (path, layer) = (run.path, run.layer)
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3 (scripts/install-deps test)") else { return }
            let outcome = try await Self.run(kind: kind, path: path, layer: layer)
            let context = "\(kind), \(path.testDescription), \(layer)"
            #expect(outcome.acknowledged == Self.records, "\(context)")
            let status = outcome.status
            switch layer {
            case .engine:
                #expect(outcome.notDurableAtAcknowledgement.isEmpty,
                        "acknowledged before they were durable (\(context)): \(outcome.notDurableAtAcknowledgement)")
                #expect(outcome.lostInCrash.isEmpty, "lost in the crash in the middle (\(context)): \(outcome.lostInCrash)")
                #expect(outcome.lostAtEnd.isEmpty, "lost in the final crash (\(context)): \(outcome.lostAtEnd)")
                if path.isOneRequest(kind) {
                    // One RWF_DSYNC request per record: every write reached FUSE carrying O_DSYNC,
                    // and the overwrites came with no FUSE fsync at all.
                    #expect(status["dsync_writes"] == "\(Self.records)", "\(context): \(status)")
                    #expect(Int(status["fdatasync"] ?? "") ?? -1 < Self.records, "\(context): \(status)")
                } else {
                    #expect(status["dsync_writes"] == "0", "\(context): \(status)")
                    #expect((Int(status["fdatasync"] ?? "") ?? 0) >= 1, "\(context): \(status)")
                }
            case .acknowledgeAtWriteCompletion:
                // Certain: nothing synced the file during the run, so every acknowledgement is caught.
                #expect(outcome.notDurableAtAcknowledgement == Array(0..<Self.records),
                        "the check must report every record acknowledged at write completion (\(context)): \(outcome.notDurableAtAcknowledgement)")
                #expect(outcome.lostAtEnd.count == Self.records, "\(context)")
                #expect(status["snapshots"] == "0" && status["dsync_writes"] == "0" && status["fdatasync"] == "0",
                        "\(context): \(status)")
            }
        }
    }
}
#endif
