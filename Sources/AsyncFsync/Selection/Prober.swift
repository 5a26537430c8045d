import CAsyncFsync
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif canImport(Musl)
import Musl
#endif

/// Runs one real sync through a backend's mechanism, with a timeout, and cleans up after it.
///
/// Steps (libaio): the directory's file system (`open`, `statx(2)`, `statfs(2)`), a scratch file,
/// `io_setup(1)`, one `IOCB_CMD_FDSYNC` through `io_submit(2)`, `io_getevents(2)` with the timeout,
/// `io_destroy(2)`, close. (posix): the same first two, one `aio_fsync(O_DSYNC)`, `aio_suspend(3)`
/// until it completes or the timeout passes, `aio_return(3)`, close. The scratch file is unlinked
/// right after it is created.
///
/// Every step is bounded: the probe runs on a thread of its own and the caller waits at most
/// ``timeout`` plus ``fileSystemTimeout`` for it. A probe stuck in the kernel (a file system that
/// does not answer `open(2)`) is reported at its step and left to finish on its thread, which then
/// frees what it holds. The cleanup (`io_destroy(2)` waits for an RCU grace period, ~30 ms here,
/// ten times the probe itself; freeing a stuck sync's resources waits for the sync) runs on the
/// probe's thread after the caller has its answer, never on the caller's.
struct Prober: Sendable {
    var system: SystemCalls
    var timeout: Duration
    /// Where results are kept per file system; `nil` probes every time (tests inject faults).
    var cache: ProbeCache?
    /// Whether backends made with this selection sync memory file systems inline (for the report).
    var inlineMemoryFileSystems: Bool

    /// How long identifying the directory's file system and making the scratch file may take.
    var fileSystemTimeout: Duration

    init(system: SystemCalls = .live, timeout: Duration = .seconds(2), fileSystemTimeout: Duration = .seconds(1),
         cache: ProbeCache? = nil, inlineMemoryFileSystems: Bool = true) {
        self.system = system
        self.timeout = timeout
        self.fileSystemTimeout = fileSystemTimeout
        self.cache = cache
        self.inlineMemoryFileSystems = inlineMemoryFileSystems
    }

    /// The real system with the process-wide cache.
    static func live(inlineMemoryFileSystems: Bool = true) -> Prober {
        Prober(system: .live, cache: .shared, inlineMemoryFileSystems: inlineMemoryFileSystems)
    }

    // MARK: Bounded runs

    /// What a probe's thread was doing, for a report when it does not finish in time.
    final class Progress: @unchecked Sendable {
        private let step = Locked("identifying the file system")
        func enter(_ name: String) { step.withLock { $0 = name } }
        var current: String { step.withLock { $0 } }
    }

    /// Probes `kind` on a thread of its own and waits at most ``timeout`` + ``fileSystemTimeout``,
    /// blocking the caller (for `main()` and other synchronous code).
    func probe(_ kind: BackendKind, in directory: FilePath) -> BackendProbe {
        let (result, progress, start) = startBounded(kind, in: directory)
        guard let result else { return probeInline(kind, in: directory) }
        return result.wait(timeout: timeout + fileSystemTimeout)
            ?? stuck(kind, in: directory, progress: progress, since: start)
    }

    /// Probes `kind` on a thread of its own and waits at most ``timeout`` + ``fileSystemTimeout``
    /// without blocking a thread of the caller.
    func probe(_ kind: BackendKind, in directory: FilePath) async -> BackendProbe {
        let (result, progress, start) = startBounded(kind, in: directory)
        guard let result else {
            return BackendProbe.unusable(kind, in: directory, errno: .resourceTemporarilyUnavailable, step: .setup,
                                         call: "pthread_create", message: "cannot start a thread to probe on")
        }
        return await result.value(timeout: timeout + fileSystemTimeout)
            ?? stuck(kind, in: directory, progress: progress, since: start)
    }

    private func startBounded(_ kind: BackendKind, in directory: FilePath) -> (OneShot<BackendProbe>?, Progress, Duration) {
        let result = OneShot<BackendProbe>()
        let progress = Progress()
        let start = system_monotonic_now()
        let started = system.startThread("asyncfsync-probe") { [self] in
            var cleanups: [@Sendable () -> Void] = []
            let probe = probeBody(kind, in: directory, progress: progress, cleanups: &cleanups)
            result.fulfill(probe)
            // The caller has its answer: what remains to free is freed here.
            for cleanup in cleanups { cleanup() }
        }
        if case .failure = started { return (nil, progress, start) }
        return (result, progress, start)
    }

    /// No thread for the probe: it runs here, and its cleanup is deferred.
    private func probeInline(_ kind: BackendKind, in directory: FilePath) -> BackendProbe {
        var cleanups: [@Sendable () -> Void] = []
        let probe = probeBody(kind, in: directory, progress: Progress(), cleanups: &cleanups)
        for cleanup in cleanups { DeferredWork.run(cleanup, system: system) }
        return probe
    }

    private func stuck(_ kind: BackendKind, in directory: FilePath, progress: Progress, since start: Duration) -> BackendProbe {
        var probe = BackendProbe.unusable(
            kind, in: directory, errno: nil, step: .timeout, call: nil,
            message: "no answer within \(BackendProbe.milliseconds(timeout + fileSystemTimeout)) ms while \(progress.current) "
                + "(a stuck file system?); the probe goes on in the background and frees what it holds when it ends")
        probe.verdict = .syncFailed
        probe.duration = system_monotonic_now() - start
        return probe
    }

    // MARK: The probe

    private func probeBody(
        _ kind: BackendKind, in directory: FilePath, progress: Progress, cleanups: inout [@Sendable () -> Void]
    ) -> BackendProbe {
        let start = system_monotonic_now()
        progress.enter("identifying the file system of \(directory)")
        let fileSystem = identify(directory)
        let key = fileSystem.map { ProbeCache.Key(device: $0.device, fileSystemType: $0.type, kind: kind) }
        if let cache, let key, var cached = cache.lookup(key) {
            cached.isCached = true
            cached.directory = directory  // the same file system, asked through this directory
            cached.inlineSync = cached.isMemoryFileSystem && inlineMemoryFileSystems
            return cached
        }

        var probe = BackendProbe(
            kind: kind, failure: nil, failedStep: nil, directory: directory,
            fileSystem: fileSystem.map { FileSystemType.name($0.type) } ?? "unknown",
            isMemoryFileSystem: fileSystem.map { FileSystemType.isMemoryFileSystem($0.type) } ?? false,
            inlineSync: false, duration: .zero, isCached: false, note: nil, verdict: .usable)
        var usedDirectory = false
        let outcome: Outcome
        progress.enter("creating a scratch file in \(directory)")
        switch makeScratchFile(in: directory) {
        case .file(let fd):
            usedDirectory = true
            progress.enter("syncing a scratch file through \(kind)")
            outcome = probeMechanism(kind, fd, cleanups: &cleanups)
        case .memfd(let fd, let why):
            probe.note = "\(why); the mechanism was probed on a memfd"
            probe.fileSystem = "memfd"
            probe.isMemoryFileSystem = false
            progress.enter("syncing a memfd through \(kind)")
            outcome = probeMechanism(kind, fd, cleanups: &cleanups)
        case .failed(let errno, let why):
            outcome = Outcome(errno: errno, step: .setup, call: "open", message: why, verdict: .unavailable)
        }
        if let step = outcome.step {
            probe.failedStep = step
            probe.verdict = outcome.verdict
            probe.failure = AsyncSyncError(
                code: .backendUnavailable, errno: outcome.errno, operation: .probe,
                step: step == .timeout ? .completion : AsyncSyncError.Step(rawValue: step.rawValue) ?? .setup,
                backend: kind, systemCall: outcome.call, message: outcome.message)
        }
        probe.inlineSync = probe.isMemoryFileSystem && inlineMemoryFileSystems
        probe.duration = system_monotonic_now() - start
        // Only what describes the file system is kept: a completed sync, or EINVAL at submission
        // (no AIO fsync there). Other failures describe the process or the host (seccomp,
        // aio-max-nr, no scratch file) or may pass (an I/O error, a stuck sync): probed again.
        if let cache, let key, usedDirectory, outcome.isFileSystemFact {
            cache.store(probe, for: key)
        }
        return probe
    }

    // MARK: Outcome

    /// A probe's result before it becomes a ``BackendProbe``.
    struct Outcome {
        var errno: Errno?
        var step: BackendProbe.Step?
        var call: String?
        var message: String
        var verdict: BackendProbe.Verdict

        static let usable = Outcome(errno: nil, step: nil, call: nil, message: "", verdict: .usable)

        /// Whether the outcome is a property of the file system, worth caching for it.
        var isFileSystemFact: Bool {
            step == nil || (step == .submit && errno == .invalidArgument)
        }
    }

    /// Whether an errno at setup or submission means "this mechanism is not supported here".
    static func verdict(setupErrno errno: Errno) -> BackendProbe.Verdict {
        switch errno {
        case .noFunction, .notPermitted, .resourceTemporarilyUnavailable: .unsupported
        default: .unavailable
        }
    }

    /// Submission of a sync of a regular file (the scratch file always is one).
    static func verdict(submitErrno errno: Errno) -> BackendProbe.Verdict {
        switch errno {
        case .noFunction, .notPermitted, .invalidArgument: .unsupported
        default: .unavailable
        }
    }

    // MARK: File system and scratch file

    private struct FileSystemID {
        var device: UInt64
        var type: Int
    }

    /// The directory's `st_dev` and `statfs(2)` type; nil when it cannot be opened.
    private func identify(_ directory: FilePath) -> FileSystemID? {
        guard let opened = try? FileDescriptor.open(directory, .readOnly, options: [.directory, .closeOnExec]) else {
            return nil
        }
        // The probe may run while the caller's requests are in flight: out of the numbers they reuse.
        let fd = FileDescriptor(rawValue: LibraryDescriptors.movedAboveFloor(opened.rawValue))
        defer { try? fd.close() }
        guard case .success(let status) = system.fileStatus(fd.rawValue),
              case .success(let type) = system.fileSystemType(fd.rawValue) else { return nil }
        return FileSystemID(device: status.device, type: type)
    }

    private enum Scratch {
        case file(FileDescriptor)
        /// No scratch file could be made in the directory (read-only, no permission, no such
        /// directory): the mechanism is probed on a memfd instead, so that a read-only `/tmp`
        /// does not make every backend look unusable.
        case memfd(FileDescriptor, why: String)
        case failed(Errno?, why: String)
    }

    /// An unlinked file holding one byte, so the sync has something to write.
    private func makeScratchFile(in directory: FilePath) -> Scratch {
        let name = ".asyncfsync-probe-\(system_getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let path = directory.appending(name)
        let why: String
        do {
            let opened = try FileDescriptor.open(path, .readWrite, options: [.create, .exclusiveCreate, .closeOnExec],
                                                 permissions: [.ownerReadWrite])
            let fd = FileDescriptor(rawValue: LibraryDescriptors.movedAboveFloor(opened.rawValue))
            _ = system_unlink(path.string)
            do {
                _ = try fd.writeAll([0x2a])
                return .file(fd)
            } catch {
                try? fd.close()
                why = "cannot write a scratch file in \(directory) (\(Self.name(of: error)))"
            }
        } catch let errno as Errno where errno == .noSuchFileOrDirectory || errno == .notDirectory {
            why = "\(directory) does not exist or is not a directory (\(errno.symbolicName)): "
                + "the data's file system was not probed"
        } catch {
            why = "cannot create a scratch file in \(directory) (\(Self.name(of: error)))"
        }
        #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
        switch system.memfdCreate("asyncfsync-probe") {
        case .success(let raw):
            let fd = FileDescriptor(rawValue: raw)
            if (try? fd.writeAll([0x2a])) != nil { return .memfd(fd, why: why) }
            try? fd.close()
            return .failed(nil, why: why + "; a memfd cannot be written either")
        case .failure(let errno):
            return .failed(errno, why: why + "; memfd_create failed too")
        }
        #else
        return .failed(nil, why: why)  // no memfd off Linux
        #endif
    }

    private static func name(of error: any Error) -> String {
        (error as? Errno)?.symbolicName ?? "\(error)"
    }

    /// Hands one sync of `fd` (which it then owns) to `kind`'s mechanism.
    private func probeMechanism(_ kind: BackendKind, _ fd: FileDescriptor, cleanups: inout [@Sendable () -> Void]) -> Outcome {
        switch kind {
        case .portable:
            return probePortable(fd)
        #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
        case .libaio:
            return probeLibaio(fd, cleanups: &cleanups)
        case .posix:
            return probePosix(fd, cleanups: &cleanups)
        #else
        case .libaio, .posix:
            try? fd.close()
            return Outcome(errno: .noFunction, step: .setup, call: nil,
                           message: "\(kind) exists on Linux only (this build: \(BackendKind.buildDescription))",
                           verdict: .unsupported)
        #endif
        default:
            try? fd.close()
            return Outcome(errno: .noFunction, step: .setup, call: nil,
                           message: "this version cannot probe a \(kind) backend", verdict: .unsupported)
        }
    }

    // MARK: Portable

    /// The portable backend's sync, made on this (the probe's own) thread: the mechanism is a
    /// blocking call on a thread, so a completed sync is all there is to find out.
    private func probePortable(_ fd: FileDescriptor) -> Outcome {
        defer { try? fd.close() }
        if case .failure(let errno) = system.durableSync(.fdatasync, fd.rawValue) {
            return Outcome(errno: errno, step: .completion, call: durableSyncCallName(.fdatasync),
                           message: "the sync of the scratch file failed: the file system's error", verdict: .syncFailed)
        }
        return .usable
    }

    private var timeoutMessage: String {
        "no completion within \(BackendProbe.milliseconds(timeout)) ms (a stuck file system?)"
    }

    #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
    // MARK: Kernel AIO


    private func probeLibaio(_ fd: FileDescriptor, cleanups: inout [@Sendable () -> Void]) -> Outcome {
        var context = aio_context_t()
        if case .failure(let errno) = system.ioSetup(1, &context) {
            try? fd.close()
            return Outcome(errno: errno, step: .setup, call: "io_setup", message: LibaioDriver.setupHint(errno),
                           verdict: Self.verdict(setupErrno: errno))
        }
        let control = UnsafeMutablePointer<iocb>.allocate(capacity: 1)
        casyncfsync_prep_sync(control, fd.rawValue, 1, 1, -1)
        var pointer: UnsafeMutablePointer<iocb>? = control
        let owned = Unchecked(control)
        let cleanUp: @Sendable () -> Void = { [system, context] in
            _ = system.ioDestroy(context)  // waits for a request still in flight
            try? fd.close()
            owned.value.deallocate()
        }
        // io_destroy(2) waits for an RCU grace period (~30 ms here, far more than the probe) and
        // for a request still in flight: it runs after the caller has the probe's answer.
        var cleanedUp = false
        func cleanUpLater() {
            precondition(!cleanedUp)
            cleanedUp = true
            cleanups.append(cleanUp)
        }
        switch system.ioSubmit(context, 1, &pointer) {
        case .success(1): break
        case .success:
            cleanUpLater()
            return Outcome(errno: .resourceTemporarilyUnavailable, step: .submit, call: "io_submit",
                           message: "io_submit took no request", verdict: .unavailable)
        case .failure(let errno):
            cleanUpLater()
            return Outcome(errno: errno, step: .submit, call: "io_submit", message: Self.submitHint(errno),
                           verdict: Self.verdict(submitErrno: errno))
        }
        var event = io_event()
        let start = system_monotonic_now()
        while true {
            let left = timeout - (system_monotonic_now() - start)
            var deadline = left > .zero ? Self.spec(left) : timespec(tv_sec: 0, tv_nsec: 0)
            switch system.ioGetevents(context, 1, 1, &event, &deadline) {
            case .success(1):
                cleanUpLater()
                if case .failure(let errno) = valueOrNegatedErrno(event.res) {
                    return Outcome(errno: errno, step: .completion, call: "io_getevents",
                                   message: "the sync of the scratch file failed: the file system's error",
                                   verdict: .syncFailed)
                }
                return .usable
            case .failure(.interrupted):
                if left > .zero { continue }  // a signal for this thread: wait for the rest of the time
                fallthrough
            case .success:
                // The kernel still owns the iocb and the descriptor: free them once it is done.
                cleanUpLater()
                return Outcome(errno: nil, step: .timeout, call: "io_getevents", message: timeoutMessage,
                               verdict: .syncFailed)
            case .failure(let errno):
                cleanUpLater()
                let denied = errno == .noFunction || errno == .notPermitted
                return Outcome(errno: errno, step: .completion, call: "io_getevents",
                               message: denied ? "waiting for kernel AIO completions is denied (seccomp?)" : "",
                               verdict: denied ? .unsupported : .unavailable)
            }
        }
    }

    private static func spec(_ duration: Duration) -> timespec {
        let (seconds, attoseconds) = duration.components
        return timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
    }

    static func submitHint(_ errno: Errno) -> String {
        switch errno {
        case .invalidArgument: "IOCB_CMD_FDSYNC rejected: kernel older than 4.18 or a file system without AIO fsync"
        case .noFunction: "io_submit absent or denied by seccomp"
        case .notPermitted: "io_submit denied by seccomp or a security policy"
        default: ""
        }
    }

    // MARK: POSIX aio

    private func probePosix(_ fd: FileDescriptor, cleanups: inout [@Sendable () -> Void]) -> Outcome {
        let control = UnsafeMutablePointer<aiocb>.allocate(capacity: 1)
        casyncfsync_aiocb_prep(control, fd.rawValue)
        if case .failure(let errno) = system.aioFsync(.fdatasync, control) {
            try? fd.close()
            control.deallocate()
            let hint = errno == .resourceTemporarilyUnavailable ? "glibc cannot queue a request (out of threads or memory)" : ""
            return Outcome(errno: errno, step: .submit, call: "aio_fsync", message: hint,
                           verdict: Self.verdict(submitErrno: errno))
        }
        var list: UnsafePointer<aiocb>? = UnsafePointer(control)
        let start = system_monotonic_now()
        while system.aioError(control) == .inProgress {
            let left = timeout - (system_monotonic_now() - start)
            guard left > .zero else { break }
            var deadline = Self.spec(left)
            _ = system.aioSuspend(&list, 1, &deadline)  // EINTR, EAGAIN (timeout): look again
        }
        let status = system.aioError(control)
        if status == .inProgress {
            // glibc still owns the aiocb: free it only once the sync has finished.
            let owned = Unchecked(control)
            let waitAndFree: @Sendable () -> Void = { [system] in
                let control = owned.value
                var list: UnsafePointer<aiocb>? = UnsafePointer(control)
                while system.aioError(control) == .inProgress { _ = system.aioSuspend(&list, 1, nil) }
                _ = system.aioReturn(control)
                try? fd.close()
                control.deallocate()
            }
            cleanups.append(waitAndFree)
            return Outcome(errno: nil, step: .timeout, call: "aio_suspend", message: timeoutMessage,
                           verdict: .syncFailed)
        }
        _ = system.aioReturn(control)
        try? fd.close()
        control.deallocate()
        if case .failed(let errno) = status {
            return Outcome(errno: errno, step: .completion, call: "aio_error",
                           message: "the sync of the scratch file failed: the file system's error",
                           verdict: .syncFailed)
        }
        return .usable
    }
    #endif  // os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
}

/// The system-wide kernel AIO event limit (`/proc/sys/fs/aio-max-nr`) and use (`aio-nr`).
enum AIOLimits {
    /// For example `/proc/sys/fs/aio-max-nr exhausted: aio-nr 65530 of 65536`.
    static func exhaustedDescription() -> String {
        guard let used = read("/proc/sys/fs/aio-nr"), let limit = read("/proc/sys/fs/aio-max-nr") else {
            return "the system-wide AIO event limit is used up (/proc/sys/fs/aio-max-nr)"
        }
        return "/proc/sys/fs/aio-max-nr exhausted: aio-nr \(used) of \(limit)"
    }

    static func read(_ path: FilePath) -> Int? {
        guard let opened = try? FileDescriptor.open(path, .readOnly, options: .closeOnExec) else { return nil }
        let fd = FileDescriptor(rawValue: LibraryDescriptors.movedAboveFloor(opened.rawValue))
        defer { try? fd.close() }
        var buffer = [UInt8](repeating: 0, count: 32)
        guard let count = try? buffer.withUnsafeMutableBytes({ try fd.read(into: $0) }) else { return nil }
        let text = String(decoding: buffer[..<count], as: UTF8.self)
        return Int(text.filter { !$0.isWhitespace })
    }
}

/// A value handed to another thread whose owner guarantees exclusive use.
struct Unchecked<Value>: @unchecked Sendable {
    var value: Value
    init(_ value: Value) { self.value = value }
}
