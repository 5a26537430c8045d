import CAsyncFsync
import CTestSupport
import Foundation
import Synchronization
import SystemPackage
import Testing

@testable import AsyncFsync

/// Every test suite is nested in this one, so that tests run one at a time: several of them
/// compare process-wide counters (`/proc/sys/fs/aio-nr`, the number of threads) before and after.
@Suite(.serialized) struct AsyncFsyncTests {}

/// Under ThreadSanitizer, limits glibc's POSIX aio to one helper thread before any test runs.
/// Every suite's `init()` calls this (Swift Testing makes a suite instance per test).
///
/// glibc's aio helpers start further helpers with its internal `pthread_create`, which TSan does
/// not intercept; such a thread crashes inside TSan's allocator on its first `calloc`. With one
/// helper glibc never starts a helper from a helper (the backend's starvation guard keeps the
/// doorbell from holding that helper for long). Without TSan nothing changes.
///
/// That guard works for one POSIX completion hub, which is all a process has: hubs are made per
/// `SystemCalls` table, and the library uses `.live` only. A test that keeps POSIX backends (or
/// libaio's POSIX fallback) on two tables at once has two hubs; with one helper, the idle hub's
/// doorbell read can hold it while the other hub's requests wait behind it, for good (CI's TSan
/// step hung so in `ReviewTransit`). Such a test makes one table's backends at a time.
enum GlibcAIOUnderSanitizer {
    /// The helper limit tests restore after changing it: glibc's default (20), 1 under TSan.
    static var defaultThreads: CInt { testsupport_tsan_loaded() != 0 ? 1 : 20 }

    static let configure: Void = {
        if testsupport_tsan_loaded() != 0 {
            testsupport_aio_init(defaultThreads, 64)
            print("ThreadSanitizer detected: glibc POSIX aio limited to \(defaultThreads) helper threads (see Support.swift)")
        }
    }()
}

// MARK: Environment

enum TestEnvironment {
    static var isCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }

    /// Checks a precondition of a test. When it does not hold the test cannot run: that is a
    /// failure under `CI=true`, and a loud message elsewhere.
    static func require(_ condition: Bool, _ reason: String, sourceLocation: SourceLocation = #_sourceLocation) -> Bool {
        if condition { return true }
        if isCI {
            Issue.record("cannot run under CI=true: \(reason)", sourceLocation: sourceLocation)
        } else {
            print("⚠️  TEST NOT RUN: \(reason)")
        }
        return false
    }
}

/// File system magic numbers from statfs(2).
enum FileSystemMagic {
    static let tmpfs: Int = 0x0102_1994
    static let ext4: Int = 0xEF53
    static let fuse: Int = 0x6573_5546

    static func of(_ path: String) -> Int? {
        let magic = testsupport_fs_magic(path)
        return magic < 0 ? nil : magic
    }
}

/// A directory removed when the test ends.
final class ScratchDirectory: @unchecked Sendable {  // immutable after init
    let path: FilePath

    /// A directory on the disk of the working tree.
    static func onDisk() throws -> ScratchDirectory {
        try ScratchDirectory(parent: FileManager.default.currentDirectoryPath)
    }

    /// A directory on tmpfs (`/dev/shm`).
    static func onTmpfs() throws -> ScratchDirectory {
        try ScratchDirectory(parent: "/dev/shm")
    }

    init(parent: String) throws {
        let name = "scratch-asyncfsync-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let path = FilePath(parent).appending(name)
        try FileManager.default.createDirectory(atPath: path.string, withIntermediateDirectories: false)
        self.path = path
    }

    deinit {
        try? FileManager.default.removeItem(atPath: path.string)
    }

    /// Creates (or truncates) a file with `contents` and opens it.
    func file(_ name: String, contents: String = "record\n", access: FileDescriptor.AccessMode = .readWrite) throws -> FileDescriptor {
        let filePath = path.appending(name)
        let fd = try FileDescriptor.open(filePath, .readWrite, options: [.create, .truncate], permissions: [.ownerReadWrite])
        try fd.writeAll(Array(contents.utf8))
        guard access != .readWrite else { return fd }
        try fd.close()
        return try FileDescriptor.open(filePath, access)
    }

    var fileSystemMagic: Int? { FileSystemMagic.of(path.string) }
}

// MARK: Resources

enum Resources {

    /// Kernel AIO contexts of this process: each maps its ring as `/[aio]` (aio-nr is system-wide,
    /// so other processes on the host would disturb a count of it).
    static func aioContexts() -> Int {
        guard let handle = FileHandle(forReadingAtPath: "/proc/self/maps"),
              let data = try? handle.readToEnd() else { return -1 }
        try? handle.close()
        let maps = String(decoding: data, as: UTF8.self)
        return maps.split(separator: "\n").filter { $0.hasSuffix("/[aio] (deleted)") || $0.hasSuffix("/[aio]") }.count
    }

    static func threadCount() -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").count) ?? -1
    }

    static func openDescriptorCount() -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
    }

    /// Open eventfds: the kind of descriptor the library opens (one per completion thread); the
    /// runtime's own timers and epoll descriptors, opened at first use, are not counted.
    static func libraryDescriptorCount() -> Int {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        return names.filter {
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\($0)")) == "anon_inode:[eventfd]"
        }.count
    }

    /// What each open descriptor points at, for failure messages.
    static func openDescriptors() -> String {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        return names.sorted().map { name in
            "\(name)→\((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(name)")) ?? "?")"
        }.joined(separator: " ")
    }

    /// Waits until `value()` is at most `limit` (glibc's aio helpers linger for a second when idle).
    static func settle(within seconds: Double = 5, _ value: () -> Int, atMost limit: Int) async -> Int {
        let deadline = Date().addingTimeInterval(seconds)
        var current = value()
        while current > limit, Date() < deadline {
            try? await Task.sleep(for: .milliseconds(50))
            current = value()
        }
        return current
    }
}

// MARK: Backends

/// A backend on `system`; the inline path for memory file systems is off unless asked for, so that
/// tests on tmpfs reach the asynchronous path.
/// For ``BackendKind/portable``, `capacity` (the syncs in the system at once) is its thread count,
/// and the default 256 means ``PortableBackend/defaultThreads``; `inline` does not apply (no inline
/// path).
func makeBackend(
    _ kind: BackendKind, capacity: Int = 256, stickyFailures: Bool = true, inline: Bool = false,
    system: SystemCalls = .live, observer: (@Sendable (FailureLedger.Event) -> Void)? = nil
) throws -> any AsyncSyncBackend {
    switch kind {
    case .portable:
        return try PortableBackend(threads: capacity >= 256 ? PortableBackend.defaultThreads : capacity, stickyFailures: stickyFailures,
                                   system: system, ledgerObserver: observer)
    #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
    case .libaio:
        return try LibaioBackend(capacity: capacity, stickyFailures: stickyFailures, inlineMemoryFileSystems: inline,
                                 system: system, ledgerObserver: observer)
    case .posix:
        return try PosixAIOBackend(capacity: capacity, stickyFailures: stickyFailures, inlineMemoryFileSystems: inline,
                                   system: system, ledgerObserver: observer)
    #else
    case .libaio, .posix:
        throw AsyncSyncError(code: .backendUnavailable, errno: .noFunction, operation: .setup, step: .setup,
                             backend: kind, message: "not in this build")
    #endif
    default:
        throw AsyncSyncError(code: .backendUnavailable, errno: nil, operation: .setup, step: .setup, backend: kind,
                             message: "the tests make no \(kind) backend")
    }
}

extension BackendKind {
    /// What the backend-generic suites run against: every backend this build has (the portable
    /// one alone under `ASYNC_FSYNC_PORTABLE`).
    static var tested: [BackendKind] { availableHere }
    /// The Linux AIO backends (tests of their engine, hub, executors or inline path); empty under
    /// `ASYNC_FSYNC_PORTABLE`.
    static var aio: [BackendKind] { availableHere.filter { $0 != .portable } }
}

func outstanding(_ backend: any AsyncSyncBackend) -> Int {
    switch backend {
    #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
    case let backend as LibaioBackend: backend.engine.outstandingCount
    case let backend as PosixAIOBackend: backend.engine.outstandingCount
    #endif
    case let backend as PortableBackend: backend.pool.outstandingCount
    default: -1
    }
}

/// The engine's state in one line.
func engineSummary(_ backend: any AsyncSyncBackend) -> String {
    switch backend {
    #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
    case let backend as LibaioBackend: backend.engine.stateSummary
    case let backend as PosixAIOBackend: backend.engine.stateSummary
    #endif
    case let backend as PortableBackend: backend.pool.summary
    case let backend as GroupCommit: "group commit over " + engineSummary(backend.wrapped)
    default: "?"
    }
}

/// Requests waiting for their descriptor's next sync or for a slot (a thread, on the portable
/// backend).
func waiting(_ backend: any AsyncSyncBackend) -> Int {
    switch backend {
    #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
    case let backend as LibaioBackend: backend.engine.waitingCount
    case let backend as PosixAIOBackend: backend.engine.waitingCount
    #endif
    case let backend as PortableBackend: backend.pool.queuedCount
    default: -1
    }
}

func isAcceptingRequests(_ backend: any AsyncSyncBackend) -> Bool {
    switch backend {
    #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
    case let backend as LibaioBackend: backend.engine.isAcceptingRequests
    case let backend as PosixAIOBackend: backend.engine.isAcceptingRequests
    #endif
    case let backend as PortableBackend: backend.pool.isAccepting
    default: false
    }
}

/// Runs `body` and returns its error, or nil.
func caughtError(_ body: () async throws -> Void) async -> (any Error)? {
    do {
        try await body()
        return nil
    } catch {
        return error
    }
}

/// The error a failed sync must give on every backend: `.system`, the errno, the operation, step
/// `.completion`, the backend and the caller's descriptor, classified as a durability failure.
func expectDurabilityFailureAtCompletion(
    _ failure: AsyncSyncError, errno: Errno, mode: SyncMode, backend: BackendKind, descriptor: FileDescriptor,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    #expect(failure.code == .system, sourceLocation: sourceLocation)
    #expect(failure.errno == errno, sourceLocation: sourceLocation)
    #expect(failure.operation == .sync(mode), sourceLocation: sourceLocation)
    #expect(failure.step == .completion, sourceLocation: sourceLocation)
    #expect(failure.backend == backend, sourceLocation: sourceLocation)
    #expect(failure.descriptor == descriptor, sourceLocation: sourceLocation)
    #expect(failure.isDurabilityFailure, sourceLocation: sourceLocation)
}

// MARK: Syscall recording and fault injection

/// Wraps the live system calls: counts submissions, can hold completions back (a gate), and can
/// inject errnos at submit or completion.
final class SyscallRecorder: Sendable {
    struct State {
        var submitted = 0          // requests handed to the system (io_submit iocbs accepted, aio_fsync calls succeeded)
        var submitCalls = 0
        var completed = 0
        var maxOutstanding = 0
        var gateClosed = false
        var submitErrnos: [Errno] = []       // answered, one per submit call, before calling the system
        var completionErrnos: [Errno] = []   // replaces the result of the next completions
        var submittedModes: [SyncMode] = []
        var ioSubmitCalls = 0      // io_submit calls carrying requests
        var aioFsyncCalls = 0
        var inlineSyncs = 0        // direct fsync(2)/fdatasync(2) of the inline path
    }
    let state = Locked(State())
    private let gate = DispatchSemaphore(value: 0)

    var submitted: Int { state.withLock { $0.submitted } }
    var submitCalls: Int { state.withLock { $0.submitCalls } }
    var ioSubmitCalls: Int { state.withLock { $0.ioSubmitCalls } }
    var aioFsyncCalls: Int { state.withLock { $0.aioFsyncCalls } }
    var inlineSyncs: Int { state.withLock { $0.inlineSyncs } }

    func closeGate() { state.withLock { $0.gateClosed = true } }
    func openGate() {
        state.withLock { $0.gateClosed = false }
        gate.signal()
    }

    func injectAtSubmit(_ errnos: [Errno]) { state.withLock { $0.submitErrnos += errnos } }
    func injectAtCompletion(_ errnos: [Errno]) { state.withLock { $0.completionErrnos += errnos } }

    private func waitAtGate() {
        while state.withLock({ $0.gateClosed }) { _ = gate.wait(timeout: .now() + .milliseconds(20)) }
    }

    private func takeSubmitErrno() -> Errno? {
        state.withLock { $0.submitErrnos.isEmpty ? nil : $0.submitErrnos.removeFirst() }
    }

    private func noteSubmitted(_ count: Int, modes: [SyncMode]) {
        state.withLock {
            $0.submitted += count
            $0.submittedModes += modes
            $0.maxOutstanding = max($0.maxOutstanding, $0.submitted - $0.completed)
        }
    }

    private func noteCompleted(_ count: Int) {
        state.withLock { $0.completed += count }
    }

    private func replaceCompletion() -> Errno? {
        state.withLock { $0.completionErrnos.isEmpty ? nil : $0.completionErrnos.removeFirst() }
    }

    var system: SystemCalls {
        var system = SystemCalls.live
        // The portable backend's sync: a submission and a completion in one call. An errno
        // injected "at submit" fails the call before it reaches the system.
        system.durableSync = { [self] mode, fd in
            state.withLock { $0.submitCalls += 1 }
            if let errno = takeSubmitErrno() { return .failure(errno) }
            noteSubmitted(1, modes: [mode])
            var result = SystemCalls.live.durableSync(mode, fd)
            waitAtGate()
            if let errno = replaceCompletion() { result = .failure(errno) }
            noteCompleted(1)
            return result
        }
        #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
        system.ioSubmit = { [self] context, count, iocbs in
            state.withLock { $0.submitCalls += 1; $0.ioSubmitCalls += 1 }
            if let errno = takeSubmitErrno() { return .failure(errno) }
            let result = SystemCalls.live.ioSubmit(context, count, iocbs)
            if case .success(let accepted) = result {
                let requests = (0..<accepted).compactMap { iocbs[$0] }
                noteSubmitted(requests.count, modes: requests.map { Int($0.pointee.aio_lio_opcode) == IOCB_CMD_FDSYNC ? .fdatasync : .fsync })
            }
            return result
        }
        // The probe waits with io_getevents(2) on its own context.
        system.ioGetevents = { [self] context, minimum, maximum, events, timeout in
            let result = SystemCalls.live.ioGetevents(context, minimum, maximum, events, timeout)
            guard case .success(let count) = result, count > 0 else { return result }
            waitAtGate()
            for index in 0..<count {
                if let errno = replaceCompletion() { events[index].res = -Int64(errno.rawValue) }
            }
            noteCompleted(count)
            return result
        }
        system.reapCompletions = { [self] context, events, maximum in
            let result = SystemCalls.live.reapCompletions(context, events, maximum)
            guard case .success(let count) = result, count > 0 else { return result }
            waitAtGate()  // hold back what completed, not the look for it
            for index in 0..<count {
                if let errno = replaceCompletion() { events[index].res = -Int64(errno.rawValue) }
            }
            noteCompleted(count)
            return result
        }
        system.aioFsync = { [self] mode, control in
            state.withLock { $0.submitCalls += 1; $0.aioFsyncCalls += 1 }
            if let errno = takeSubmitErrno() { return .failure(errno) }
            let result = SystemCalls.live.aioFsync(mode, control)
            if case .success = result { noteSubmitted(1, modes: [mode]) }
            return result
        }
        system.aioSuspend = { [self] list, count, timeout in
            let result = SystemCalls.live.aioSuspend(list, count, timeout)
            waitAtGate()
            return result
        }
        system.aioError = { [self] control in
            let status = SystemCalls.live.aioError(control)
            // The doorbell is a read; requests are fsyncs (aio_lio_opcode stays 0 for aio_fsync in glibc).
            guard status != .inProgress, control.pointee.aio_buf == nil else { return status }
            waitAtGate()  // the completion thread may find it done without waiting in aio_suspend
            if waitingToReplace, let errno = replaceCompletion() { return .failed(errno) }
            return status
        }
        #endif
        system.syncNow = { [self] mode, fd in
            state.withLock { $0.inlineSyncs += 1 }
            return SystemCalls.live.syncNow(mode, fd)
        }
        #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
        system.aioReturn = { [self] control in
            if control.pointee.aio_buf == nil { noteCompleted(1) }
            return SystemCalls.live.aioReturn(control)
        }
        #endif
        return system
    }

    private var waitingToReplace: Bool { state.withLock { !$0.completionErrnos.isEmpty } }
}

// MARK: Helpers

/// Runs `body` and says whether it finished within `limit` (a hang detector: the body keeps running
/// in a task of its own if it does not).
func finishes(within limit: Duration, _ body: @escaping @Sendable () async -> Void) async -> Bool {
    let done = OneShot<Bool>()
    Task {
        await body()
        done.fulfill(true)
    }
    return await done.value(timeout: limit) ?? false
}

extension Array {
    func asyncMap<T>(_ transform: (Element) async -> T) async -> [T] {
        var result: [T] = []
        for element in self { result.append(await transform(element)) }
        return result
    }
}

/// A small, fast pseudo-random generator (SplitMix64): a schedule is replayed from its seed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

// MARK: Waiting for conditions (no timing in assertions: a bound only turns a hang into a failure)

/// Polls `condition` every millisecond for at most `seconds`; returns whether it held. Unlike
/// `waitUntil`, a defect that never lets it hold fails the test instead of hanging the run.
func eventually(_ seconds: Double = 30, _ condition: () -> Bool) async -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while !condition() {
        if Date() >= deadline { return false }
        try? await Task.sleep(for: .milliseconds(1))
    }
    return true
}

/// The same, for a thread that must not suspend (inside a system call of the table).
func blockingEventually(_ seconds: Double = 30, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while !condition() {
        if Date() >= deadline { return false }
        usleep(500)
    }
    return true
}

/// A task whose end can be polled without awaiting it (a hung request must not hang the test).
final class Watched<Value: Sendable>: Sendable {
    private let result = Locked<Result<Value, any Error>?>(nil)
    let task: Task<Void, Never>

    init(_ body: @escaping @Sendable () async throws -> Value) {
        let result = result
        task = Task {
            do {
                let value = try await body()
                result.withLock { $0 = .success(value) }
            } catch {
                result.withLock { $0 = .failure(error) }
            }
        }
    }

    var isDone: Bool { result.withLock { $0 != nil } }
    var outcome: Result<Value, any Error>? { result.withLock { $0 } }
    var error: (any Error)? {
        if case .failure(let error) = outcome { return error }
        return nil
    }
    var succeeded: Bool {
        if case .success = outcome { return true }
        return false
    }
}

/// A flag a system call of the table can wait for.
final class Flag: Sendable {
    private let raised = Atomic<Bool>(false)
    func raise() { raised.store(true, ordering: .releasing) }
    var isRaised: Bool { raised.load(ordering: .acquiring) }
}

/// A counter the table's closures bump.
final class Counter: Sendable {
    private let value = Atomic<Int>(0)
    /// Adds one; returns the new value.
    func next() -> Int { value.wrappingAdd(1, ordering: .relaxed).newValue }
    var current: Int { value.load(ordering: .relaxed) }
}
