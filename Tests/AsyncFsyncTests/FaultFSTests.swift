import CTestSupport
import Foundation
import SystemPackage
import Testing

@testable import AsyncFsync

/// A mounted instance of Tests/FaultFileSystem/faultfs: a passthrough FUSE file system whose
/// fsync handler answers with an injected errno. Unmounted and removed when released.
///
/// In power-loss mode it also models what a power cut would leave (Tests/FaultFileSystem/README.md):
/// file data is durable only through a successful fsync/fdatasync of the file, covering what
/// reached the file system before the sync did; names only through fsync of their directory.
final class FaultFS {
    let mountPoint: FilePath
    /// The directory the file system passes through to.
    let backing: FilePath
    private let base: FilePath
    private let daemon: Process
    private var mounted = true
    private var crashImages = 0

    static var canRun: Bool {
        getuid() == 0 && FileManager.default.fileExists(atPath: "/dev/fuse") && binary != nil
    }

    /// Builds the daemon once per test process.
    static let binary: String? = {
        let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("FaultFileSystem")
        // One directory per checkout (FNV-1a of the source path): checkouts whose faultfs.c differ
        // would otherwise rebuild one shared binary under each other's running tests.
        let checkout = source.path.utf8.reduce(UInt64(0xcbf2_9ce4_8422_2325)) { ($0 ^ UInt64($1)) &* 0x100_0000_01b3 }
        let out = "/tmp/asyncfsync-faultfs-\(getuid())-\(String(checkout, radix: 16))"
        guard let (status, output) = try? runCommand(["bash", source.appendingPathComponent("build.sh").path, out]),
              status == 0 else {
            print("⚠️  faultfs did not build")
            return nil
        }
        _ = output
        return out + "/faultfs"
    }()

    /// Mounts a new instance; `writebackCache` lets the kernel cache writes and send them to the
    /// file system only at writeback (during fsync); `powerLoss` starts it in power-loss mode,
    /// with the (empty) backing directory as the durable state.
    /// `directIO` makes every file the mount opens `FOPEN_DIRECT_IO` (no page cache, as libfuse's
    /// `direct_io` option would): a short reply to a write then reaches the caller's `pwrite(2)` as
    /// a short count, with or without `O_DIRECT` (Tests/FaultFileSystem/README.md, "Write faults").
    init(writebackCache: Bool = false, powerLoss: Bool = false, directIO: Bool = false) throws {
        base = FilePath("/tmp").appending("asyncfsync-fuse-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        mountPoint = base.appending("mnt")
        backing = base.appending("backing")
        try FileManager.default.createDirectory(atPath: mountPoint.string, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: backing.string, withIntermediateDirectories: true)
        daemon = Process()
        daemon.executableURL = URL(fileURLWithPath: Self.binary!)
        daemon.arguments = [backing.string, mountPoint.string, "-f", "-o", "auto_unmount"]
            + (writebackCache ? ["--writeback-cache"] : [])
            + (powerLoss ? ["--power-loss"] : [])
            + (directIO ? ["--direct-io"] : [])
        daemon.standardOutput = FileHandle.nullDevice
        daemon.standardError = FileHandle.nullDevice
        try daemon.run()
        let deadline = Date().addingTimeInterval(5)
        while testsupport_fs_magic(mountPoint.string) != FileSystemMagic.fuse {
            guard Date() < deadline, daemon.isRunning else { throw CommandFailed(command: "faultfs", output: "did not mount") }
            usleep(2_000)
        }
    }

    deinit {
        if mounted { _ = try? runCommand(["fusermount3", "-u", "-z", mountPoint.string]) }
        if daemon.isRunning { daemon.terminate() }
        daemon.waitUntilExit()
        try? FileManager.default.removeItem(atPath: base.string)
    }

    /// Writes one control line (see Tests/FaultFileSystem/faultfs.c).
    func control(_ line: String) throws {
        let fd = try FileDescriptor.open(mountPoint.appending(".faultfs"), .writeOnly)
        defer { try? fd.close() }
        try fd.writeAll(Array((line + "\n").utf8))
    }

    /// The daemon's counters and switches.
    func status() throws -> [String: String] {
        let fd = try FileDescriptor.open(mountPoint.appending(".faultfs"), .readOnly)
        defer { try? fd.close() }
        var buffer = [UInt8](repeating: 0, count: 1024)
        let count = try buffer.withUnsafeMutableBytes { try fd.read(into: $0) }
        let line = String(decoding: buffer[..<count], as: UTF8.self)
        return Dictionary(uniqueKeysWithValues: line.split(whereSeparator: \.isWhitespace).compactMap { word in
            let parts = word.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            return parts.count == 2 ? (String(parts[0]), String(parts[1])) : nil
        })
    }

    func counter(_ name: String) throws -> Int { Int(try status()[name] ?? "") ?? -1 }

    /// The fault the write handler injects: an errno answered without writing, or a short write
    /// that writes and reports only the first bytes.
    enum WriteFault {
        case errno(Errno)
        /// Half of each write (rounded down).
        case half
        /// At most this many bytes of each write.
        case atMost(Int)
    }

    /// Injects `fault` into the next `count` writes of file data (`nil`: every one) whose path
    /// contains `matching` (`nil`: all paths); earlier write faults are replaced.
    func injectWriteFault(_ fault: WriteFault, count: Int? = nil, matching: String? = nil) throws {
        let what = switch fault {
        case .errno(let errno): "write_errno=\(errno.rawValue) short_write=0"
        case .half: "write_errno=0 short_write=half"
        case .atMost(let bytes): "write_errno=0 short_write=\(bytes)"
        }
        try control("\(what) write_count=\(count ?? -1) write_match=\(matching ?? "")")
    }

    /// Switches the write faults off.
    func clearWriteFaults() throws {
        try control("write_errno=0 short_write=0 write_count=-1 write_match=")
    }

    /// Power-loss mode: writes what a power cut now would leave into a fresh directory and
    /// returns it (removed with the file system). The mount keeps working; call it again later
    /// for a later crash.
    /// - Throws: `Errno.invalidArgument` when the mode is off.
    func crashImage() throws -> FilePath {
        crashImages += 1
        let image = base.appending("crash-\(crashImages)")
        try control("crash=\(image.string)")
        return image
    }

    /// Power-loss mode: the durable content of the file now at `name` (relative to the mount),
    /// whether or not its name is durable yet: what its last successful fsync/fdatasync covered,
    /// empty if none since it was created. Sends no sync; cheap enough to check at every
    /// acknowledgement of a small log.
    func durableContents(of name: String) throws -> [UInt8] {
        let fd = try FileDescriptor.open(mountPoint.appending(".faultfs-durable").appending(name), .readOnly)
        defer { try? fd.close() }
        var contents: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = try chunk.withUnsafeMutableBytes { try fd.read(into: $0) }
            if count == 0 { return contents }
            contents += chunk[..<count]
        }
    }

    /// Detaches the mount lazily (`umount -l`): open files keep working until they are closed.
    func unmountLazily() throws {
        let (status, output) = try runCommand(["umount", "-l", mountPoint.string])
        if status != 0 { throw CommandFailed(command: "umount -l", output: output) }
        mounted = false
    }

    /// Stops the daemon (SIGSTOP): every request to the file system waits until ``continueDaemon()``.
    func stopDaemon() {
        kill(daemon.processIdentifier, SIGSTOP)
    }

    func continueDaemon() {
        kill(daemon.processIdentifier, SIGCONT)
    }

    /// Kills the daemon (SIGKILL) with files still open: their syncs fail with ENOTCONN.
    func killDaemon() {
        kill(daemon.processIdentifier, SIGKILL)
        daemon.waitUntilExit()
    }

    func open(_ name: String) throws -> FileDescriptor {
        let fd = try FileDescriptor.open(mountPoint.appending(name), .readWrite, options: [.create, .truncate],
                                         permissions: [.ownerReadWrite])
        try fd.writeAll(Array("record \(name)\n".utf8))
        return fd
    }
}

extension AsyncFsyncTests {
    /// Faults injected by a real file system (FUSE) through the real kernel, on both backends.
    @Suite struct FaultInjection {
        init() { GlibcAIOUnderSanitizer.configure }

        static let errnos: [Errno] = [.ioError, .noSpace, .diskQuotaExceeded, .readOnlyFileSystem, .notPermitted]

        @Test("an errno from the file system's fsync: the same AsyncSyncError on every backend, fsync and fdatasync",
              arguments: errnos)
        func errnoMatrix(errno: Errno) async throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3 (scripts/install-deps test)") else { return }
            let fs = try FaultFS()
            try fs.control("errno=\(errno.rawValue)")
            var seen: [SyncMode: [AsyncSyncError]] = [:]
            for kind in BackendKind.tested {
                let backend = try makeBackend(kind)
                for mode in [SyncMode.fsync, .fdatasync] {
                    let fd = try fs.open("\(kind)-\(mode)")
                    defer { try? fd.close() }
                    let failure = try #require(await caughtError { try await backend.sync(fd, mode: mode) } as? AsyncSyncError)
                    expectDurabilityFailureAtCompletion(failure, errno: errno, mode: mode, backend: kind, descriptor: fd)
                    seen[mode, default: []].append(failure)
                    // Sticky: the file system would fail again anyway; switch it off and check
                    // that the backend still refuses without asking it.
                    try fs.control("errno=0")
                    let before = try fs.counter(mode == .fsync ? "fsync" : "fdatasync")
                    let again = try #require(await caughtError { try await backend.sync(fd, mode: mode) } as? AsyncSyncError)
                    #expect(again.code == .earlierFailure && again.errno == errno)
                    #expect(try fs.counter(mode == .fsync ? "fsync" : "fdatasync") == before, "refused without a sync")
                    try fs.control("errno=\(errno.rawValue)")
                }
                await backend.shutdown()
            }
            for errors in seen.values {
                try #require(errors.count == BackendKind.tested.count)
                for other in errors.dropFirst() {
                    #expect(errors[0].code == other.code && errors[0].errno == other.errno
                            && errors[0].operation == other.operation)
                }
            }
        }

        @Test("the datasync flag reaches the file system: fdatasync arrives as datasync, fsync not",
              arguments: BackendKind.tested)
        func datasyncFlag(kind: BackendKind) async throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3") else { return }
            let fs = try FaultFS()
            let fd = try fs.open("data")
            defer { try? fd.close() }
            let backend = try makeBackend(kind)
            try fs.control("reset")
            try await backend.fdatasync(fd)
            #expect(try fs.counter("fdatasync") == 1)
            #expect(try fs.counter("fsync") == 0)
            try await backend.fsync(fd)
            try await backend.fsync(fd)
            #expect(try fs.counter("fdatasync") == 1)
            #expect(try fs.counter("fsync") == 2)
            await backend.shutdown()
        }

        @Test("asynchrony is real: 16 syncs held 300 ms each are in the file system at once, and other tasks run meanwhile",
              arguments: BackendKind.tested)
        func asynchrony(kind: BackendKind) async throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3") else { return }
            let fs = try FaultFS()
            let files = try (0..<16).map { try fs.open("f\($0)") }
            defer { for fd in files { try? fd.close() } }
            let backend = try makeBackend(kind)
            try fs.control("delay_ms=300")
            let ticks = Locked(0)
            let clock = ContinuousClock()
            let start = clock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                for fd in files { group.addTask { try await backend.fdatasync(fd) } }
                // A task that needs a thread of the cooperative pool while the syncs are held.
                group.addTask {
                    for _ in 0..<20 {
                        try await Task.sleep(for: .milliseconds(5))
                        ticks.withLock { $0 += 1 }
                    }
                }
                try await group.waitForAll()
            }
            let elapsed = clock.now - start
            #expect(try fs.counter("fdatasync") == 16)
            #expect(ticks.withLock { $0 } == 20)
            // Serial would be 16 × 300 ms = 4.8 s. Under ThreadSanitizer the tests give glibc one
            // helper thread, which serialises POSIX aio by construction: only libaio is checked there.
            if kind == .libaio || testsupport_tsan_loaded() == 0 {
                // All 16 were inside the file system's fsync handler at the same time (the daemon
                // runs up to 128 handler threads), so nothing serialised them on our side; the
                // portable backend runs as many at once as it has threads.
                #expect(try fs.counter("max_inflight") == (kind == .portable ? PortableBackend.defaultThreads : 16))
                #expect(elapsed < .milliseconds(2_400), "the syncs overlapped (took \(elapsed))")
            }
            await backend.shutdown()
        }

        @Test("fsyncgate: a failed writeback is reported once, the next fsync(2) says OK although the data is lost; the backend keeps failing the file",
              arguments: BackendKind.tested)
        func failedWritebackIsNotForgotten(kind: BackendKind) async throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3") else { return }
            let fs = try FaultFS(writebackCache: true)
            let fd = try fs.open("wal")
            defer { try? fd.close() }
            let backend = try makeBackend(kind)
            try await backend.fsync(fd)  // "record wal\n" is durable

            try fs.control("write_errno=EIO")
            _ = try fd.writeAll(toAbsoluteOffset: 0, Array("LOST".utf8))  // cached by the kernel: succeeds
            let first = await caughtError { try await backend.fdatasync(fd) } as? AsyncSyncError
            #expect(first?.code == .system && first?.errno == .ioError && first?.isDurabilityFailure == true,
                    "\(String(describing: first))")
            #expect(try fs.counter("failed_writes") >= 1, "the writeback reached the file system and failed")

            // The kernel has reported the error and forgotten it: a direct fsync(2) now succeeds,
            // although the write never reached the file system.
            #expect(fsync(fd.rawValue) == 0)
            let onDisk = try String(contentsOfFile: fs.backing.appending("wal").string, encoding: .utf8)
            #expect(onDisk.hasPrefix("record"), "the cached write is lost: \(onDisk)")

            // This library has not forgotten: the file's syncs keep failing until the caller says
            // it has written the data again.
            let second = await caughtError { try await backend.fdatasync(fd) } as? AsyncSyncError
            #expect(second?.code == .earlierFailure && second?.errno == .ioError, "\(String(describing: second))")
            try fs.control("write_errno=0")
            _ = try fd.writeAll(toAbsoluteOffset: 0, Array("LOST".utf8))  // written again
            #expect(try backend.clearFailure(of: fd))
            try await backend.fdatasync(fd)
            let rewritten = try String(contentsOfFile: fs.backing.appending("wal").string, encoding: .utf8)
            #expect(rewritten.hasPrefix("LOST"))
            await backend.shutdown()
        }

        @Test("the file system is unmounted lazily with syncs in flight: each completes exactly once",
              arguments: BackendKind.tested)
        func lazyUnmount(kind: BackendKind) async throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3") else { return }
            let fs = try FaultFS()
            let files = try (0..<8).map { try fs.open("f\($0)") }
            defer { for fd in files { try? fd.close() } }
            let backend = try makeBackend(kind)
            try fs.control("delay_ms=500")
            let inFlight = files.map { fd in Task { await caughtError { try await backend.fdatasync(fd) } } }
            while try fs.counter("fdatasync") < 1 { try await Task.sleep(for: .milliseconds(5)) }
            try fs.unmountLazily()
            // The daemon keeps serving the detached mount while descriptors are open, so every
            // sync ends normally, once.
            var completed = 0
            for task in inFlight {
                let failure = await task.value
                #expect(failure == nil, "\(String(describing: failure))")
                completed += 1
            }
            #expect(completed == 8)
            #expect(outstanding(backend) == 0)
            await backend.shutdown()
        }

        @Test("the daemon dies: requests in flight end once with ECONNABORTED or ENOTCONN, later syncs with ENOTCONN",
              arguments: BackendKind.tested)
        func daemonKilled(kind: BackendKind) async throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3") else { return }
            let fs = try FaultFS()
            let files = try (0..<8).map { try fs.open("f\($0)") }
            let later = try fs.open("later")
            defer { for fd in files + [later] { try? fd.close() } }
            let backend = try makeBackend(kind)
            try fs.control("delay_ms=2000")
            let inFlight = files.map { fd in Task { await caughtError { try await backend.fsync(fd) } } }
            while try fs.counter("fsync") < (kind == .libaio ? 8 : 1) { try await Task.sleep(for: .milliseconds(5)) }
            fs.killDaemon()
            var aborted = 0
            for task in inFlight {
                let failure = await task.value as? AsyncSyncError
                // The kernel aborts the FUSE requests the daemon held with ECONNABORTED; a request
                // glibc had not yet started (POSIX aio queues per helper thread) reaches the dead
                // mount afterwards and gets ENOTCONN. Either way: one error, exactly once.
                #expect(failure?.code == .system)
                #expect(failure?.errno == .connectionAbort || failure?.errno == .socketNotConnected)
                #expect(failure?.step == .completion)
                if failure?.errno == .connectionAbort { aborted += 1 }
            }
            #expect(aborted >= 1)
            if kind == .libaio { #expect(aborted == 8, "the kernel ran all eight at once") }
            let afterDeath = await caughtError { try await backend.fdatasync(later) } as? AsyncSyncError
            #expect(afterDeath?.errno == .socketNotConnected)
            #expect(afterDeath?.isDurabilityFailure == true)
            await backend.shutdown()
        }
    }
}
