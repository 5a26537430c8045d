#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
import CAsyncFsync
import Foundation
import SystemPackage
import Testing

@testable import AsyncFsync

import Glibc

/// How a test reaches a file of the fault file system: through the page cache (the default mount)
/// or `FOPEN_DIRECT_IO` (`--direct-io`), opened buffered or `O_DIRECT`. A durable write on
/// `LibaioBackend` is one `RWF_DSYNC` write exactly when the file is `O_DIRECT`.
struct FaultPath: CustomTestStringConvertible, Sendable {
    var directIOMount: Bool
    var oDirect: Bool
    var testDescription: String { "\(directIOMount ? "--direct-io" : "page-cache") mount, \(oDirect ? "O_DIRECT" : "buffered")" }

    static let pageCacheBuffered = FaultPath(directIOMount: false, oDirect: false)
    static let pageCacheDirect = FaultPath(directIOMount: false, oDirect: true)
    static let directMountBuffered = FaultPath(directIOMount: true, oDirect: false)
    static let directMountDirect = FaultPath(directIOMount: true, oDirect: true)
    static let all = [pageCacheBuffered, pageCacheDirect, directMountBuffered, directMountDirect]

    /// Whether `backend.durableWrite` is one `RWF_DSYNC` write here (kernel AIO on `O_DIRECT`).
    func isOneRequest(_ kind: BackendKind) -> Bool { kind == .libaio && oDirect }

    /// Opens `name` on the mount, created empty, read-write, `O_DIRECT` when asked.
    func open(_ fs: FaultFS, _ name: String) throws -> FileDescriptor {
        let raw = Glibc.open(fs.mountPoint.appending(name).string, O_RDWR | O_CREAT | (oDirect ? casyncfsync_O_DIRECT : 0), 0o600)
        guard raw >= 0 else { throw Errno(rawValue: errno) }
        return FileDescriptor(rawValue: raw)
    }
}

/// A page-aligned buffer of `count` bytes of `byte` (usable on `O_DIRECT` descriptors).
final class PageBuffer: @unchecked Sendable {  // immutable after init
    let bytes: UnsafeMutableRawBufferPointer
    init(count: Int, byte: UInt8) {
        bytes = .allocate(byteCount: count, alignment: 4096)
        bytes.initializeMemory(as: UInt8.self, repeating: byte)
    }
    init(_ contents: [UInt8]) {
        bytes = .allocate(byteCount: contents.count, alignment: 4096)
        contents.withUnsafeBytes { bytes.copyMemory(from: $0) }
    }
    var raw: UnsafeRawBufferPointer { UnsafeRawBufferPointer(bytes) }
    deinit { bytes.deallocate() }
}

/// The bytes of the backing file of `name` (what reached the file system).
func backingContents(_ fs: FaultFS, _ name: String) -> [UInt8] {
    (try? Array(Data(contentsOf: URL(fileURLWithPath: fs.backing.appending(name).string)))) ?? []
}

extension AsyncFsyncTests {
    /// The engines' writes and durable writes (issue 17) against write faults of a real file
    /// system (FUSE, the fault file system) through the real kernel, on both AIO backends: EIO and
    /// ENOSPC at write, short writes, and a failed sync after a durable write.
    @Suite struct EngineWriteFaults {
        init() { GlibcAIOUnderSanitizer.configure }

        static let size = 8192

        /// The checks every failed write shares: `.system`, the errno, the operation, the caller's
        /// descriptor, at completion (the kernel and glibc learn of the file system's answer there).
        static func expectWriteFailure(
            _ error: (any Error)?, errno: Errno, operation: AsyncSyncError.Operation, durability: Bool,
            kind: BackendKind, fd: FileDescriptor, _ context: String, sourceLocation: SourceLocation = #_sourceLocation
        ) {
            guard let failure = error as? AsyncSyncError else {
                Issue.record("expected \(errno) (\(context)), got \(String(describing: error))", sourceLocation: sourceLocation)
                return
            }
            #expect(failure.code == .system, "\(context): \(failure)", sourceLocation: sourceLocation)
            #expect(failure.errno == errno, "\(context): \(failure)", sourceLocation: sourceLocation)
            #expect(failure.operation == operation, "\(context): \(failure)", sourceLocation: sourceLocation)
            #expect(failure.step == .completion, "\(context): \(failure)", sourceLocation: sourceLocation)
            #expect(failure.backend == kind && failure.descriptor == fd, "\(context): \(failure)", sourceLocation: sourceLocation)
            #expect(failure.isDurabilityFailure == durability, "\(context): \(failure)", sourceLocation: sourceLocation)
        }

        @Test("EIO and ENOSPC at write fail that write only (.write, not a durability failure, nothing recorded): a later write and sync of the file succeed",
              arguments: BackendKind.aio, [Errno.ioError, .noSpace])
        func errnoAtWrite(kind: BackendKind, errno: Errno) async throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3 (scripts/install-deps test)") else { return }
            for directIOMount in [false, true] {
                let fs = try FaultFS(directIO: directIOMount)
                let backend = try makeBackend(kind)
                for path in FaultPath.all where path.directIOMount == directIOMount {
                    let name = "plain-\(path.oDirect)"
                    let fd = try path.open(fs, name)
                    defer { try? fd.close() }
                    try fs.injectWriteFault(.errno(errno), count: 1, matching: name)
                    let failed = PageBuffer(count: Self.size, byte: 0x41)
                    let error = await caughtError { try await backend.write(fd, from: failed.raw, at: 0) }
                    Self.expectWriteFailure(error, errno: errno, operation: .write, durability: false, kind: kind, fd: fd,
                                            "\(kind), \(path.testDescription)")
                    #expect(try fs.counter("failed_writes") == 1)
                    #expect(backingContents(fs, name).isEmpty, "nothing reached the file")
                    #expect(try !backend.clearFailure(of: fd), "a failed write records nothing against the file")
                    // The fault is spent: the file works as before, its syncs are not poisoned.
                    let good = PageBuffer(count: Self.size, byte: 0x42)
                    try await backend.write(fd, from: good.raw, at: 0)
                    try await backend.fdatasync(fd)
                    #expect(backingContents(fs, name) == [UInt8](repeating: 0x42, count: Self.size))
                    try fs.control("reset")
                }
                #expect(outstanding(backend) == 0)
                await backend.shutdown()
            }
        }

        @Test("a durable write whose write fails gets the write's errno: .write on a buffered file (the sync never runs); one RWF_DSYNC request (libaio, O_DIRECT) is .durableWrite, EIO a durability failure and sticky, ENOSPC not",
              arguments: BackendKind.aio, [Errno.ioError, .noSpace])
        func durableWriteWhoseWriteFails(kind: BackendKind, errno: Errno) async throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3") else { return }
            for directIOMount in [false, true] {
                let fs = try FaultFS(directIO: directIOMount)
                let backend = try makeBackend(kind)
                for path in FaultPath.all where path.directIOMount == directIOMount {
                    let name = "durable-\(path.oDirect)"
                    let fd = try path.open(fs, name)
                    defer { try? fd.close() }
                    try fs.control("reset")
                    try fs.injectWriteFault(.errno(errno), count: 1, matching: name)
                    let failed = PageBuffer(count: Self.size, byte: 0x41)
                    let error = await caughtError { try await backend.durableWrite(fd, from: failed.raw, at: 0) }
                    let context = "\(kind), \(path.testDescription)"
                    let oneRequest = path.isOneRequest(kind)
                    // The kernel cannot tell a failed RWF_DSYNC write's write part from its sync
                    // part: its EIO counts as lost data; ENOSPC/EDQUOT/EFBIG do not.
                    let durability = oneRequest && errno == .ioError
                    Self.expectWriteFailure(error, errno: errno, operation: oneRequest ? .durableWrite : .write,
                                            durability: durability, kind: kind, fd: fd, context)
                    #expect(try fs.counter("fdatasync") == 0, "no sync after a failed write: \(context)")
                    #expect(backingContents(fs, name).isEmpty)
                    let good = PageBuffer(count: Self.size, byte: 0x42)
                    if durability {
                        let again = await caughtError { try await backend.durableWrite(fd, from: good.raw, at: 0) } as? AsyncSyncError
                        #expect(again?.code == .earlierFailure && again?.errno == .ioError, "sticky: \(context)")
                        #expect(try backend.clearFailure(of: fd))
                    } else {
                        #expect(try !backend.clearFailure(of: fd), "nothing recorded: \(context)")
                    }
                    try await backend.durableWrite(fd, from: good.raw, at: 0)
                    #expect(backingContents(fs, name) == [UInt8](repeating: 0x42, count: Self.size), "\(context)")
                }
                #expect(outstanding(backend) == 0)
                await backend.shutdown()
            }
        }

        /// Where the kernel hands a short reply of the file system to the caller as a short count:
        /// a blocking `pwrite(2)` (glibc's helper threads) on every path but `O_DIRECT` on a
        /// page-cache mount; kernel AIO on a buffered file of a page-cache mount only. Its
        /// asynchronous direct path (an `O_DIRECT` file, or any file of a `--direct-io` mount)
        /// turns a short reply into EIO (``shortReplyBecomesEIO``).
        struct ShortCase: CustomTestStringConvertible, Sendable {
            var kind: BackendKind
            var path: FaultPath
            var testDescription: String { "\(kind), \(path.testDescription)" }
        }

        static let continued = [
            ShortCase(kind: .libaio, path: .pageCacheBuffered), ShortCase(kind: .posix, path: .pageCacheBuffered),
            ShortCase(kind: .posix, path: .directMountBuffered), ShortCase(kind: .posix, path: .directMountDirect),
        ].filter { BackendKind.aio.contains($0.kind) }

        static let turnedIntoEIO = [
            ShortCase(kind: .libaio, path: .pageCacheDirect), ShortCase(kind: .libaio, path: .directMountBuffered),
            ShortCase(kind: .libaio, path: .directMountDirect), ShortCase(kind: .posix, path: .pageCacheDirect),
        ].filter { BackendKind.aio.contains($0.kind) }

        @Test("a short write (short_write=half, atMost(n)) is continued to the whole buffer, for writes and durable writes; the file system saw more than one write",
              arguments: continued)
        func shortWriteIsContinued(_ run: ShortCase) async throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3") else { return }
            let (kind, path) = (run.kind, run.path)
            let fs = try FaultFS(directIO: path.directIOMount)
            let backend = try makeBackend(kind)
            let size = 64 * 1024
            let data = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 / 4096) }
            let buffer = PageBuffer(data)
            for durable in [false, true] {
                // half, three times: 32 KiB, 16 KiB, 8 KiB written short, then the last 8 KiB whole
                // (unlimited halving would end in a reply of 0 bytes for 1 byte: a stall, EIO).
                // atMost(10 000), every write: how the kernel cuts the rest into requests is its
                // own business (on the page cache it sends the partial page first).
                for (fault, exact) in [(FaultFS.WriteFault.half, true), (.atMost(10_000), false)] {
                    let name = "short-\(durable)-\(exact)"
                    let fd = try path.open(fs, name)
                    defer { try? fd.close() }
                    try fs.control("reset")
                    try fs.injectWriteFault(fault, count: exact ? 3 : nil)
                    if durable {
                        try await backend.durableWrite(fd, from: buffer.raw, at: 0)
                    } else {
                        try await backend.write(fd, from: buffer.raw, at: 0)
                    }
                    let context = "\(run.testDescription), durable \(durable), \(fault)"
                    #expect(backingContents(fs, name) == data, "every byte reached the file: \(context)")
                    let status = try fs.status()
                    let (writes, shorts) = (Int(status["writes"] ?? "") ?? -1, Int(status["short_writes"] ?? "") ?? -1)
                    if exact {
                        #expect(shorts == 3 && writes == 4, "continued from where each stopped: \(context): \(status)")
                    } else {
                        #expect(shorts >= 1 && writes > shorts, "continued from where each stopped: \(context): \(status)")
                    }
                    if durable {
                        #expect(try fs.counter("fdatasync") == 1, "then synced once: \(context)")
                    }
                }
            }
            #expect(outstanding(backend) == 0)
            await backend.shutdown()
        }

        @Test("where the kernel turns a short reply into EIO (its asynchronous direct path; O_DIRECT on a page-cache mount) the write fails with EIO (.write, not a durability failure, nothing recorded): a short write that cannot continue",
              arguments: turnedIntoEIO)
        func shortReplyBecomesEIO(_ run: ShortCase) async throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3") else { return }
            let (kind, path) = (run.kind, run.path)
            let fs = try FaultFS(directIO: path.directIOMount)
            let backend = try makeBackend(kind)
            let fd = try path.open(fs, "short")
            defer { try? fd.close() }
            try fs.injectWriteFault(.half, count: 1)
            let buffer = PageBuffer(count: Self.size, byte: 0x43)
            let error = await caughtError { try await backend.write(fd, from: buffer.raw, at: 0) }
            Self.expectWriteFailure(error, errno: .ioError, operation: .write, durability: false, kind: kind, fd: fd, run.testDescription)
            #expect((error as? AsyncSyncError)?.message.contains("reported no error") == false,
                    "the system did report EIO: not a stall (\(String(describing: error)))")
            #expect(try fs.counter("short_writes") == 1)
            #expect(try !backend.clearFailure(of: fd))
            try await backend.write(fd, from: buffer.raw, at: 0)
            try await backend.fdatasync(fd)
            #expect(backingContents(fs, "short") == [UInt8](repeating: 0x43, count: Self.size))
            await backend.shutdown()
        }

        @Test("a write completion of 0 bytes with bytes left is a stall: EIO whose message names the bytes still missing")
        func stallNamesTheRemainingBytes() async throws {
            // The first completion of the write says half was written, the second 0 (the kernel
            // wrote them all; the test rewrites what it reports).
            let completions = Locked(0)
            var system = SystemCalls.live
            system.reapCompletions = { context, events, maximum in
                let result = SystemCalls.live.reapCompletions(context, events, maximum)
                if case .success(let count) = result {
                    for index in 0..<count {
                        let control = UnsafePointer<iocb>(bitPattern: UInt(events[index].obj))!
                        guard control.pointee.aio_lio_opcode == 1 else { continue }
                        let seen = completions.withLock { $0 += 1; return $0 }
                        events[index].res = seen == 1 ? 4096 : 0
                    }
                }
                return result
            }
            let backend = try LibaioBackend(capacity: 4, system: system)
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            let error = await caughtError { try await backend.write(fd, [UInt8](repeating: 1, count: 8192), at: 0) } as? AsyncSyncError
            #expect(error?.code == .system && error?.errno == .ioError && error?.operation == .write, "\(String(describing: error))")
            #expect(error?.message == "the system wrote 0 of the remaining 4096 bytes and reported no error", "\(String(describing: error))")
            #expect(completions.withLock { $0 } == 2)
            await backend.shutdown()
        }

        @Test("a durable write whose sync part fails (EIO at the file's fdatasync, or at the O_DSYNC write's own sync) is a durability failure; later syncs and durable writes of the file fail with earlierFailure until clearFailure",
              arguments: BackendKind.aio, FaultPath.all)
        func durableWriteWhoseSyncFails(kind: BackendKind, path: FaultPath) async throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3") else { return }
            let fs = try FaultFS(directIO: path.directIOMount)
            let backend = try makeBackend(kind)
            let fd = try path.open(fs, "wal")
            defer { try? fd.close() }
            let context = "\(kind), \(path.testDescription)"
            // A file of two pages, durable: the failing write overwrites the first (with O_DIRECT on
            // kernel AIO, the asynchronous path on which the kernel sends no FUSE fsync).
            let first = PageBuffer(count: Self.size, byte: 0x30)
            try await backend.durableWrite(fd, from: first.raw, at: 0)

            try fs.control("reset errno=EIO op=fdatasync count=1")
            let lost = PageBuffer(count: 4096, byte: 0x31)
            let error = await caughtError { try await backend.durableWrite(fd, from: lost.raw, at: 0) }
            let oneRequest = path.isOneRequest(kind)
            Self.expectWriteFailure(error, errno: .ioError, operation: oneRequest ? .durableWrite : .fdatasync,
                                    durability: true, kind: kind, fd: fd, context)
            #expect(try fs.counter("injected") == 1, "\(context)")
            #expect(try fs.counter(oneRequest ? "dsync_writes" : "fdatasync") == 1, "the sync part reached the file system: \(context)")
            #expect(backingContents(fs, "wal").prefix(4096) == [UInt8](repeating: 0x31, count: 4096)[...],
                    "the write part succeeded: \(context)")

            // Sticky: the file system would succeed now; the backend refuses without asking it.
            let before = try fs.status()
            let sync = await caughtError { try await backend.fdatasync(fd) } as? AsyncSyncError
            #expect(sync?.code == .earlierFailure && sync?.errno == .ioError && sync?.isDurabilityFailure == true,
                    "\(context): \(String(describing: sync))")
            let again = PageBuffer(count: 4096, byte: 0x32)
            let durable = await caughtError { try await backend.durableWrite(fd, from: again.raw, at: 4096) } as? AsyncSyncError
            #expect(durable?.code == .earlierFailure && durable?.errno == .ioError, "\(context): \(String(describing: durable))")
            let after = try fs.status()
            #expect(after["fdatasync"] == before["fdatasync"] && after["writes"] == before["writes"],
                    "refused before reaching the file system: \(context)")

            // The caller wrote the data again and says so.
            #expect(try backend.clearFailure(of: fd))
            try await backend.durableWrite(fd, from: lost.raw, at: 0)
            try await backend.fdatasync(fd)
            #expect(outstanding(backend) == 0)
            await backend.shutdown()
        }
    }
}
#endif
