import CAsyncFsync
import Foundation
import SystemPackage
import Testing

@testable import AsyncFsync

#if canImport(Glibc)
import Glibc
#endif

// MARK: Test doubles

/// What the tests record, in order, across the backend and the system calls: the end of each
/// request (with whether its descriptor was still open, on the same file, when it ended) and each
/// `close(2)` of a descriptor.
final class DescriptorLog: Sendable {
    enum Entry: Equatable, Sendable {
        case requestStarted(CInt)
        case requestEnded(CInt, stillOpen: Bool)
        case closed(CInt)
    }
    let entries = Locked<[Entry]>([])

    func append(_ entry: Entry) { entries.withLock { $0.append(entry) } }
    var all: [Entry] { entries.withLock { $0 } }

    func closes(of fd: CInt) -> Int { all.filter { $0 == .closed(fd) }.count }
    var closeCount: Int { all.filter { if case .closed = $0 { true } else { false } }.count }

    /// Every request of `fd` ended, with its descriptor open, before `fd` was closed (exactly once).
    func closedOnceAfterItsRequests(_ fd: CInt) -> Bool {
        let entries = all
        guard entries.filter({ $0 == .closed(fd) }).count == 1, let close = entries.firstIndex(of: .closed(fd)) else { return false }
        for (index, entry) in entries.enumerated() {
            switch entry {
            case .requestStarted(fd): if index > close { return false }
            case .requestEnded(fd, let open): if index > close || !open { return false }
            default: break
            }
        }
        return true
    }

    /// A table whose `close` records the descriptors it closes (and closes them), and whose `openFile`
    /// can answer `EINTR` to the next calls.
    func system(interruptOpens: Int = 0) -> SystemCalls {
        var system = SystemCalls.live
        let interrupts = Locked(interruptOpens)
        system.close = { [self] fd in
            append(.closed(fd))
            return SystemCalls.live.close(fd)
        }
        system.openFile = { path, flags, mode in
            let interrupt = interrupts.withLock { left -> Bool in
                guard left > 0 else { return false }
                left -= 1
                return true
            }
            return interrupt ? .failure(.interrupted) : SystemCalls.live.openFile(path, flags, mode)
        }
        return system
    }
}

/// A backend whose requests (syncs, writes) can be held until released, recording each request's
/// start and end in a ``DescriptorLog`` with whether its descriptor was still open on the same file
/// when it ended. Writes copy nothing (they are only counted).
final class HoldingBackend: AsyncSyncBackend {
    struct Request: Sendable {
        var fd: CInt
        var operation: AsyncSyncError.Operation
        var count: Int
        /// What the descriptor referred to when the request started.
        var status: FileStatus?
    }
    struct State {
        var requests: [Request] = []
        var holding = false
        var waiting: [CheckedContinuation<Void, Never>] = []
        var ended = 0
    }
    let state = Locked(State())
    let log: DescriptorLog
    var kind: BackendKind { .libaio }

    init(log: DescriptorLog, holding: Bool = true) {
        self.log = log
        state.withLock { $0.holding = holding }
    }

    var requests: [Request] { state.withLock { $0.requests } }
    var requestCount: Int { state.withLock { $0.requests.count } }
    var heldCount: Int { state.withLock { $0.waiting.count } }
    var endedCount: Int { state.withLock { $0.ended } }

    /// Lets every held request and every later one go on.
    func releaseAll() {
        let waiting = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.holding = false
            defer { state.waiting = [] }
            return state.waiting
        }
        for continuation in waiting { continuation.resume() }
    }

    private func run(_ fd: FileDescriptor, _ operation: AsyncSyncError.Operation, count: Int) async {
        let status = try? system_fstat_status(fd.rawValue).get()
        let identity = status?.identity
        state.withLock { $0.requests.append(Request(fd: fd.rawValue, operation: operation, count: count, status: status)) }
        log.append(.requestStarted(fd.rawValue))
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let wait = state.withLock { state -> Bool in
                guard state.holding else { return false }
                state.waiting.append(continuation)
                return true
            }
            if !wait { continuation.resume() }
        }
        let stillOpen = identity != nil && (try? system_fstat_identity(fd.rawValue).get()) == identity
        log.append(.requestEnded(fd.rawValue, stillOpen: stillOpen))
        state.withLock { $0.ended += 1 }
    }

    func sync(_ fd: FileDescriptor, mode: SyncMode) async throws {
        await run(fd, .sync(mode), count: 0)
    }

    func write(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws {
        await run(fd, .write, count: buffer.count)
    }

    func durableWrite(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws {
        await run(fd, .durableWrite, count: buffer.count)
    }

    func shutdown() async {}
}

/// An actor that appends to segment files and rotates them while its callers await their syncs: the
/// pattern of a write-ahead log, with the handle keeping each old descriptor open until its syncs
/// have returned.
actor RotatingSegments {
    let directory: FilePath
    let backend: any AsyncSyncBackend
    let system: SystemCalls
    private(set) var current: AsyncFile
    private(set) var segment = 0
    private(set) var retired: [AsyncFile] = []

    init(directory: FilePath, backend: any AsyncSyncBackend, system: SystemCalls) throws {
        self.directory = directory
        self.backend = backend
        self.system = system
        current = try AsyncFile.open(directory.appending("segment-0"), options: [.create, .exclusive], backend: backend, system: system)
    }

    /// Syncs the current segment; the actor is free while the sync is awaited.
    func sync() async throws -> CInt {
        let file = current
        try await file.fdatasync()
        return file.descriptorForTesting.rawValue
    }

    /// Starts a new segment and closes the old one (waiting for its syncs still in flight).
    func rotate() async throws {
        let old = current
        segment += 1
        current = try AsyncFile.open(directory.appending("segment-\(segment)"), options: [.create, .exclusive],
                                     backend: backend, system: system)
        retired.append(old)
        try await old.close()
    }

    func closeCurrent() async throws {
        try await current.close()
    }
}

// MARK: Tests

extension AsyncFsyncTests {
    /// ``AsyncFileState``: the rules of a file handle, without threads.
    @Suite struct AsyncFileStateMachine {
        typealias Machine = AsyncFileState<String>

        @Test("open: operations are admitted and counted; a close with nothing in flight closes at once, once")
        func closeWhenIdle() {
            var machine = Machine()
            #expect([machine.admit(), machine.admit()] == [true, true])
            #expect(machine.inFlight == 2)
            #expect([machine.finish(), machine.finish()] == [nil, nil])
            var start = machine.close(waiter: "a")
            #expect(start == .closeNow)
            #expect(machine.lifecycle == .closingDescriptor)
            var admitted = machine.admit()
            #expect(!admitted, "nothing is admitted while the descriptor is being closed")
            start = machine.close(waiter: "b")
            #expect(start == .wait, "a second close() waits for the first")
            let resumed = machine.descriptorClosed()
            #expect(resumed == ["b"])
            #expect(machine.lifecycle == .closed)
            admitted = machine.admit()
            #expect(!admitted)
            start = machine.close(waiter: "c")
            #expect(start == .alreadyClosed)
            let closes = machine.deinitialize()
            #expect(!closes, "deinit does not close a closed descriptor again")
        }

        @Test("close with operations in flight: refuses new ones, waits, and the last to end hands the close to the first close() caller")
        func closeWaitsForOperations() {
            var machine = Machine()
            #expect([machine.admit(), machine.admit()] == [true, true])
            var start = machine.close(waiter: "first")
            #expect(start == .wait)
            #expect(machine.lifecycle == .closing)
            let admitted = machine.admit()
            #expect(!admitted, "nothing is admitted once close() began")
            #expect(machine.inFlight == 2)
            start = machine.close(waiter: "second")
            #expect(start == .wait)
            var closer = machine.finish()
            #expect(closer == nil, "one operation is still in flight")
            #expect(machine.closeWaiterCount == 2)
            closer = machine.finish()
            #expect(closer == "first", "the last operation to end hands the close to the first caller")
            #expect(machine.lifecycle == .closingDescriptor)
            start = machine.close(waiter: "third")
            #expect(start == .wait)
            let resumed = machine.descriptorClosed()
            #expect(resumed == ["second", "third"])
            #expect(machine.closeWaiterCount == 0)
        }

        @Test("deinit closes a descriptor that was never closed, and only that one")
        func deinitCloses() {
            var open = Machine()
            _ = open.admit()
            _ = open.finish()
            let closes = open.deinitialize()
            #expect(closes)
            #expect(open.lifecycle == .closed)
            var never = Machine()
            let neverCloses = never.deinitialize()
            #expect(neverCloses)
        }
    }

    /// ``AsyncFile`` on real files, with ``HoldingBackend`` for the close rules and the real
    /// backends for syncs.
    @Suite struct AsyncFiles {
        init() { GlibcAIOUnderSanitizer.configure }

        static func places() throws -> [(String, ScratchDirectory)] {
            [("tmpfs", try .onTmpfs()), ("disk", try .onDisk())]
        }

        static func mode(of path: FilePath) -> mode_t {
            var status = stat()
            return stat(path.string, &status) == 0 ? status.st_mode & 0o7777 : 0
        }

        // MARK: Opening

        @Test("open: create, exclusive (EEXIST), missing (ENOENT), truncate, permissions, close-on-exec; bad option pairs are refused")
        func opening() async throws {
            let log = DescriptorLog()
            let backend = HoldingBackend(log: log, holding: false)
            for (place, scratch) in try Self.places() {
                let path = scratch.path.appending("file")
                let file = try AsyncFile.open(path, options: [.create, .exclusive], permissions: [.ownerReadWrite, .groupRead],
                                              backend: backend)
                let previousMask = umask(0)
                umask(previousMask)
                #expect(Self.mode(of: path) == 0o640 & ~previousMask, "\(place): the permissions given")
                #expect(try file.withDescriptor { fd in fcntl(fd.rawValue, F_GETFD) } & FD_CLOEXEC != 0, "\(place): O_CLOEXEC")
                #expect(try file.withDescriptor { fd in fcntl(fd.rawValue, F_GETFL) } & O_ACCMODE == O_RDWR)
                try await file.close()

                let exists = #expect(throws: AsyncSyncError.self) {
                    try AsyncFile.open(path, options: [.create, .exclusive], backend: backend)
                }
                #expect(exists?.code == .system && exists?.errno == .fileExists && exists?.operation == .open, "\(place)")
                #expect(exists?.systemCall == "open" && exists?.message.contains(path.string) == true)
                let missing = #expect(throws: AsyncSyncError.self) {
                    try AsyncFile.open(scratch.path.appending("missing"), options: [], backend: backend)
                }
                #expect(missing?.errno == .noSuchFileOrDirectory && missing?.operation == .open)

                try Data("old contents".utf8).write(to: URL(fileURLWithPath: path.string))
                let truncated = try AsyncFile.open(path, options: [.truncate], backend: backend)
                #expect(try FileManager.default.attributesOfItem(atPath: path.string)[.size] as? Int == 0, "\(place): truncated")
                try await truncated.close()
                let reader = try AsyncFile.open(path, options: [.readOnly], backend: backend)
                #expect(try reader.withDescriptor { fd in fcntl(fd.rawValue, F_GETFL) } & O_ACCMODE == O_RDONLY)
                try await reader.close()
            }
            for (options, needle) in [([.exclusive], "exclusive needs create"), ([.truncate, .readOnly], "truncate needs write access")]
                as [(AsyncFile.Options, String)] {
                let error = #expect(throws: AsyncSyncError.self) {
                    try AsyncFile.open("/nonexistent/x", options: options, backend: backend)
                }
                #expect(error?.code == .invalidConfiguration && error?.operation == .open && error?.message.contains(needle) == true)
            }
            #expect(log.closeCount == 0, "the test's backend closes nothing")
        }

        @Test("open and close go through the SystemCalls table: EINTR from open(2) is retried; close(2) is called once; deinit closes an unclosed handle")
        func throughTheTable() async throws {
            let scratch = try ScratchDirectory.onTmpfs()
            let log = DescriptorLog()
            let backend = HoldingBackend(log: log, holding: false)
            let system = log.system(interruptOpens: 2)
            let file = try AsyncFile.open(scratch.path.appending("a"), options: [.create], backend: backend, system: system)
            let fd = file.descriptorForTesting.rawValue
            try await file.fdatasync()
            try await file.close()
            try await file.close()  // harmless
            #expect(log.closes(of: fd) == 1)
            #expect(log.closedOnceAfterItsRequests(fd))

            var unclosed: AsyncFile? = try AsyncFile.open(scratch.path.appending("b"), options: [.create], backend: backend, system: system)
            let second = unclosed!.descriptorForTesting.rawValue
            try await unclosed!.fsync()
            let closesBefore = log.closes(of: second)  // the number may be the first file's, reused
            unclosed = nil
            #expect(log.closes(of: second) == closesBefore + 1, "deinit closed the descriptor of a handle never closed")
            #expect(log.all.last == .closed(second))
        }

        // MARK: After close

        @Test("every operation after close() throws EBADF naming the operation and saying the file was closed; nothing reaches the backend")
        func afterClose() async throws {
            let scratch = try ScratchDirectory.onTmpfs()
            let log = DescriptorLog()
            let backend = HoldingBackend(log: log, holding: false)
            let file = try AsyncFile.open(scratch.path.appending("a"), options: [.create], backend: backend)
            try await file.close()
            let bytes = [UInt8](repeating: 1, count: 512)
            var buffer = try AlignedBuffer(byteCount: 512, alignment: 512)
            buffer.withUnsafeMutableBytes { $0[0] = 1 }
            let attempts: [(AsyncSyncError.Operation, () async throws -> Void)] = [
                (.fsync, { try await file.fsync() }),
                (.fdatasync, { try await file.fdatasync() }),
                (.fsync, { try await file.sync(.fsync) }),
                (.write, { try await file.write(contentsOf: bytes, at: 0) }),
                (.durableWrite, { try await file.durableWrite(contentsOf: bytes, at: 0) }),
                (.write, { try await file.write(UnsafeRawBufferPointer(start: nil, count: 0), at: 0) }),
            ]
            for (operation, attempt) in attempts {
                let error = await caughtError(attempt) as? AsyncSyncError
                #expect(error?.code == .system && error?.errno == .badFileDescriptor && error?.operation == operation)
                #expect(error?.step == .request && error?.message.contains("was closed") == true, "\(String(describing: error))")
            }
            let aligned = await caughtError { try await file.write(buffer, at: 0) } as? AsyncSyncError
            #expect(aligned?.errno == .badFileDescriptor && aligned?.operation == .write)
            let durable = await caughtError { try await file.durableWrite(buffer, at: 0) } as? AsyncSyncError
            #expect(durable?.errno == .badFileDescriptor && durable?.operation == .durableWrite)
            #expect(throws: AsyncSyncError.self) { try file.withDescriptor { _ in } }
            #expect(backend.requestCount == 0)
        }

        // MARK: Close waits

        @Test("close() while operations wait: refuses new ones, waits for every admitted one, then closes once; a second close() waits too")
        func closeWaitsForOperations() async throws {
            let scratch = try ScratchDirectory.onTmpfs()
            let log = DescriptorLog()
            let backend = HoldingBackend(log: log)
            let file = try AsyncFile.open(scratch.path.appending("a"), options: [.create], backend: backend, system: log.system())
            let fd = file.descriptorForTesting.rawValue
            let bytes = [UInt8](repeating: 7, count: 100)
            let operations = [
                Watched { try await file.fdatasync() },
                Watched { try await file.fsync() },
                Watched { try await file.write(contentsOf: bytes, at: 0) },
                Watched { try await file.durableWrite(contentsOf: bytes, at: 100) },
            ]
            try await waitUntil { backend.heldCount == 4 }
            let firstClose = Watched { try await file.close() }
            try await waitUntil { file.closeWaiterCount == 1 }
            let secondClose = Watched { try await file.close() }
            try await waitUntil { file.closeWaiterCount == 2 }
            let late = await caughtError { try await file.fdatasync() } as? AsyncSyncError
            #expect(late?.errno == .badFileDescriptor && late?.message.contains("was closed") == true,
                    "nothing is admitted once close() began")
            #expect(log.closeCount == 0 && !firstClose.isDone && !secondClose.isDone, "the descriptor stays open under held requests")
            #expect(file.inFlightCount == 4)

            backend.releaseAll()
            for operation in operations { _ = await operation.task.value }
            _ = await firstClose.task.value
            _ = await secondClose.task.value
            #expect(operations.allSatisfy { $0.succeeded }, "\(operations.map { String(describing: $0.outcome) })")
            #expect(firstClose.succeeded && secondClose.succeeded)
            #expect(log.closedOnceAfterItsRequests(fd), "\(log.all)")
            #expect(backend.requests.map(\.count).sorted() == [0, 0, 100, 100])
        }

        @Test("a cancelled close() still closes: it returns only after the held operations ended and the descriptor is closed")
        func cancelledClose() async throws {
            let scratch = try ScratchDirectory.onTmpfs()
            let log = DescriptorLog()
            let backend = HoldingBackend(log: log)
            let file = try AsyncFile.open(scratch.path.appending("a"), options: [.create], backend: backend, system: log.system())
            let fd = file.descriptorForTesting.rawValue
            let sync = Watched { try await file.fdatasync() }
            try await waitUntil { backend.heldCount == 1 }
            let close = Watched { try await file.close() }
            try await waitUntil { file.closeWaiterCount == 1 }
            close.task.cancel()
            // A cancelled close neither returns nor closes while the sync is held.
            #expect(!close.isDone && log.closeCount == 0)
            backend.releaseAll()
            _ = await close.task.value
            _ = await sync.task.value
            #expect(close.succeeded, "close() ignores cancellation: \(String(describing: close.error))")
            #expect(sync.succeeded)
            #expect(log.closedOnceAfterItsRequests(fd), "\(log.all)")
        }

        @Test("many tasks sync, write and close one handle at once (real backends): each operation ends once, with success or EBADF, and the descriptor is closed once after all")
        func concurrency() async throws {
            for kind in BackendKind.tested {
                let scratch = try ScratchDirectory.onDisk()
                let log = DescriptorLog()
                let backend = try makeBackend(kind)
                let file = try AsyncFile.open(scratch.path.appending("a"), options: [.create], backend: backend, system: log.system())
                let fd = file.descriptorForTesting.rawValue
                let outcomes = Locked<[String]>([])
                await withTaskGroup(of: Void.self) { group in
                    for index in 0..<64 {
                        group.addTask {
                            do {
                                if index == 40 {
                                    try await file.close()
                                    outcomes.withLock { $0.append("closed") }
                                    return
                                }
                                try await file.sync(index % 2 == 0 ? .fdatasync : .fsync)
                                outcomes.withLock { $0.append("ok") }
                            } catch let error as AsyncSyncError where error.errno == .badFileDescriptor && error.message.contains("was closed") {
                                outcomes.withLock { $0.append("refused") }
                            } catch {
                                outcomes.withLock { $0.append("\(error)") }
                            }
                        }
                    }
                }
                try await file.close()
                let all = outcomes.withLock { $0 }
                #expect(all.count == 64 && all.allSatisfy { ["ok", "refused", "closed"].contains($0) }, "\(kind): \(all)")
                #expect(log.closes(of: fd) == 1, "\(kind)")
                #expect(file.inFlightCount == 0 && file.isClosed)
                await backend.shutdown()
            }
        }

        // MARK: Rotation

        @Test("an actor rotating segment files while tasks await their syncs: every sync is answered, each old descriptor closed once, after its syncs")
        func rotation() async throws {
            let scratch = try ScratchDirectory.onTmpfs()
            let log = DescriptorLog()
            let backend = HoldingBackend(log: log)
            let segments = try RotatingSegments(directory: scratch.path, backend: backend, system: log.system())
            var syncs: [Watched<CInt>] = []
            var rotations: [Watched<Void>] = []
            for round in 0..<3 {
                for _ in 0..<4 { syncs.append(Watched { try await segments.sync() }) }
                try await waitUntil { backend.heldCount == 4 * (round + 1) }
                rotations.append(Watched { try await segments.rotate() })
                // The actor is free while the old segment's close waits: the next round's syncs get in.
                var rotated = false
                for _ in 0..<10_000 where !rotated {
                    rotated = await segments.segment == round + 1
                    if !rotated { try await Task.sleep(for: .milliseconds(1)) }
                }
                #expect(rotated, "the actor opened segment \(round + 1)")
            }
            let retired = await segments.retired
            // Each old segment's close() waits (or, were the rule broken, has closed it already).
            _ = await eventually(30) { retired.allSatisfy { $0.closeWaiterCount == 1 } || log.closeCount > 0 }
            #expect(log.closeCount == 0, "no old segment is closed while its syncs are held")
            #expect(rotations.allSatisfy { !$0.isDone })

            backend.releaseAll()
            for sync in syncs { _ = await sync.task.value }
            for rotation in rotations { _ = await rotation.task.value }
            #expect(syncs.allSatisfy { $0.succeeded } && rotations.allSatisfy { $0.succeeded })
            let descriptors = retired.map { $0.descriptorForTesting.rawValue }
            for fd in descriptors {
                #expect(log.closedOnceAfterItsRequests(fd), "fd \(fd): \(log.all)")
            }
            // Each sync answered on the segment it was asked of: four per retired segment.
            let answered = syncs.compactMap { if case .success(let fd) = $0.outcome { fd } else { nil } }
            #expect(answered.count == 12)
            try await segments.closeCurrent()
            #expect(log.closeCount == 4)
        }

        // MARK: Directory syncs

        @Test("syncDirectory: an fsync of the directory holding the file (its own descriptor, closed after); the static forms; a file is not a directory")
        func directorySync() async throws {
            for (place, scratch) in try Self.places() {
                let log = DescriptorLog()
                let backend = HoldingBackend(log: log, holding: false)
                let system = log.system()
                let path = scratch.path.appending("file")
                let file = try AsyncFile.open(path, options: [.create], backend: backend, system: system)
                try await file.syncDirectory()
                try await file.close()
                try await file.syncDirectory()  // works after close: it does not use the file's descriptor
                let directory = try FileDescriptor.open(scratch.path, .readOnly)
                let expected = try system_fstat_status(directory.rawValue).get()
                try directory.close()
                let requests = backend.requests
                #expect(requests.count == 2 && requests.allSatisfy { $0.operation == .fsync && $0.status == expected },
                        "\(place): an fsync of the scratch directory: \(requests)")
                let fileFD = file.descriptorForTesting.rawValue
                let (first, second) = (requests[0].fd, requests[1].fd)
                #expect(log.all == [.requestStarted(first), .requestEnded(first, stillOpen: true), .closed(first), .closed(fileFD),
                                    .requestStarted(second), .requestEnded(second, stillOpen: true), .closed(second)],
                        "\(place): each directory descriptor is closed right after its sync: \(log.all)")

                // The real backends sync the directory (its inode is the scratch directory's).
                for kind in BackendKind.tested {
                    let real = try makeBackend(kind)
                    try await AsyncFile.syncDirectory(containing: path, backend: real, system: system)
                    try await AsyncFile.syncDirectory(at: scratch.path, backend: real, system: system)
                    let notDirectory = await caughtError { try await AsyncFile.syncDirectory(at: path, backend: real) } as? AsyncSyncError
                    #expect(notDirectory?.errno == .notDirectory && notDirectory?.operation == .open, "\(place), \(kind)")
                    #expect(notDirectory?.message.contains("cannot open the directory") == true)
                    await real.shutdown()
                }
            }
            // A path of one component: the current directory.
            let log = DescriptorLog()
            let backend = HoldingBackend(log: log, holding: false)
            try await AsyncFile.syncDirectory(containing: "relative-name", backend: backend)
            #expect(backend.requestCount == 1)
        }

        // MARK: O_DIRECT

        /// Opens a direct file at `path` (or says the file system refuses `O_DIRECT`), checks its
        /// alignment, and that misaligned writes are refused with EINVAL naming the alignment before
        /// anything reaches the backend.
        static func exerciseDirect(_ path: FilePath, where place: String) async throws {
            let log = DescriptorLog()
            let backend = HoldingBackend(log: log, holding: false)
            let file: AsyncFile
            switch Result(catching: { try AsyncFile.open(path, options: [.create, .direct], backend: backend) }) {
            case .success(let opened): file = opened
            case .failure(let error):
                let failure = error as? AsyncSyncError
                #expect(failure?.errno == .invalidArgument, "\(place): \(error)")
                #expect(failure?.operation == .open && failure?.message.contains("O_DIRECT") == true, "\(place): \(error)")
                print("ℹ️  \(place): open(O_DIRECT) refused: \(error)")
                return
            }
            let alignment = try #require(file.directIOAlignment, "\(place): a direct file knows its alignment")
            let fresh = try file.withDescriptor { try DirectIOAlignment.of($0) }
            #expect(alignment == fresh, "\(place): the alignment found at open is the file's")
            #expect(try file.withDescriptor { fd in fcntl(fd.rawValue, F_GETFL) } & casyncfsync_O_DIRECT != 0)
            print("ℹ️  \(place): AsyncFile O_DIRECT alignment \(alignment)")

            let block = alignment.offsetAlignment
            var buffer = try AlignedBuffer(byteCount: 4 * max(block, 4096), for: alignment)
            buffer.withUnsafeMutableBytes { $0[0] = 1 }
            try await file.write(buffer, at: 0)
            try await file.durableWrite(buffer, count: block, at: Int64(block))
            try await file.write(contentsOf: [UInt8](repeating: 3, count: block), at: Int64(2 * block))  // copied into aligned memory
            #expect(backend.requestCount == 3)

            var refused: [(String, AsyncSyncError.Operation, AsyncSyncError?)] = []
            refused.append(("offset", .write, await caughtError { try await file.write(buffer, at: Int64(block / 2)) } as? AsyncSyncError))
            refused.append(("length", .durableWrite,
                            await caughtError { try await file.durableWrite(buffer, count: block / 2, at: 0) } as? AsyncSyncError))
            refused.append(("length", .write,
                            await caughtError { try await file.write(contentsOf: [UInt8](repeating: 1, count: block + 1), at: 0) } as? AsyncSyncError))
            if alignment.memoryAlignment > 1 {
                let address = buffer.unsafeBytes.baseAddress! + alignment.memoryAlignment / 2
                refused.append(("buffer address", .write, await caughtError {
                    try await file.write(UnsafeRawBufferPointer(start: address, count: block), at: 0)
                } as? AsyncSyncError))
            }
            for (what, operation, error) in refused {
                #expect(error?.code == .system && error?.errno == .invalidArgument && error?.step == .request, "\(place): \(what)")
                #expect(error?.operation == operation && error?.backend == backend.kind, "\(place): \(what)")
                #expect(error?.message.contains(what) == true && error?.message.contains("aligned to \(alignment.memoryAlignment)") == true,
                        "\(place): \(String(describing: error))")
            }
            let beyond = await caughtError { try await file.write(buffer, count: buffer.byteCount + block, at: 0) } as? AsyncSyncError
            #expect(beyond?.errno == .invalidArgument && beyond?.message.contains("outside the buffer") == true)
            #expect(backend.requestCount == 3, "\(place): no misaligned request reached the backend")
            try await file.close()
        }

        @Test("O_DIRECT on the disk: the alignment is found at open; misaligned writes are refused with EINVAL naming it, before submission")
        func directOnDisk() async throws {
            let scratch = try ScratchDirectory.onDisk()
            try await Self.exerciseDirect(scratch.path.appending("direct"), where: "disk")
        }

        @Test("O_DIRECT on tmpfs: refused at open with a clear EINVAL (before Linux 6.6), or the fallback alignment")
        func directOnTmpfs() async throws {
            let scratch = try ScratchDirectory.onTmpfs()
            try await Self.exerciseDirect(scratch.path.appending("direct"), where: "tmpfs")
        }

        @Test("O_DIRECT on a loop-mounted ext4: the kernel's alignment")
        func directOnLoopExt4() async throws {
            guard TestEnvironment.require(LoopExt4.canRun, "needs root, /dev/loop-control and mkfs.ext4") else { return }
            let ext4 = try LoopExt4(thin: false)
            try await Self.exerciseDirect(ext4.mountPoint.appending("direct"), where: "loop ext4")
        }

        // MARK: Writes through the real backends

        /// The backends whose writes the tests exercise: every tested backend that writes in this
        /// build (one that does not is reported as a test that cannot run).
        static func writingBackends() async throws -> [(BackendKind, any AsyncSyncBackend)] {
            let scratch = try ScratchDirectory.onTmpfs()
            var result: [(BackendKind, any AsyncSyncBackend)] = []
            for kind in BackendKind.tested {
                let backend = try makeBackend(kind)
                let probe = try AsyncFile.open(scratch.path.appending("probe-\(kind)"), options: [.create], backend: backend)
                let error = await caughtError { try await probe.write(contentsOf: [1], at: 0) } as? AsyncSyncError
                try await probe.close()
                if error?.code == .backendUnavailable {
                    _ = TestEnvironment.require(false, "the \(kind) backend does not write in this build")
                    await backend.shutdown()
                    continue
                }
                result.append((kind, backend))
            }
            return result
        }

        static func read(_ file: AsyncFile, count: Int, at offset: Int64) throws -> [UInt8] {
            try file.withDescriptor { fd in
                var bytes = [UInt8](repeating: 0, count: count)
                let read = try bytes.withUnsafeMutableBytes { try fd.read(fromAbsoluteOffset: offset, into: $0) }
                return Array(bytes[..<read])
            }
        }

        @Test("buffered writes and durable writes through each backend (tmpfs, disk): the bytes land where asked, concurrent writers included")
        func bufferedWrites() async throws {
            for (kind, backend) in try await Self.writingBackends() {
                for (place, scratch) in try Self.places() {
                    let file = try AsyncFile.open(scratch.path.appending("buffered"), options: [.create, .exclusive], backend: backend)
                    try await file.syncDirectory()
                    let first = [UInt8](repeating: 0xA1, count: 1000)
                    try await file.write(contentsOf: first, at: 0)
                    let second = [UInt8](repeating: 0xB2, count: 3000)
                    try await file.durableWrite(contentsOf: second, at: 1000)
                    var aligned = try AlignedBuffer(byteCount: 4096, alignment: 4096)
                    aligned.withUnsafeMutableBytes { $0.copyBytes(from: [UInt8](repeating: 0xC3, count: 4096)) }
                    try await file.write(aligned, count: 100, at: 4000)
                    try await file.durableWrite(aligned, at: 8192)
                    // 32 tasks write 512-byte records at their own offsets, then one sync covers them.
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        for index in 0..<32 {
                            group.addTask {
                                try await file.write(contentsOf: [UInt8](repeating: UInt8(index), count: 512), at: Int64(16384 + 512 * index))
                            }
                        }
                        try await group.waitForAll()
                    }
                    try await file.fdatasync()
                    #expect(try Self.read(file, count: 1000, at: 0) == first, "\(kind), \(place)")
                    #expect(try Self.read(file, count: 3000, at: 1000) == second, "\(kind), \(place)")
                    #expect(try Self.read(file, count: 100, at: 4000) == [UInt8](repeating: 0xC3, count: 100), "\(kind), \(place)")
                    #expect(try Self.read(file, count: 4096, at: 8192) == [UInt8](repeating: 0xC3, count: 4096), "\(kind), \(place)")
                    for index in 0..<32 {
                        #expect(try Self.read(file, count: 512, at: Int64(16384 + 512 * index)) == [UInt8](repeating: UInt8(index), count: 512),
                                "\(kind), \(place): record \(index)")
                    }
                    try await file.close()
                }
                await backend.shutdown()
            }
        }

        @Test("O_DIRECT writes and durable writes through each backend (disk, loop ext4): aligned buffers and copies land where asked")
        func directWrites() async throws {
            var places: [(String, FilePath, AnyObject)] = []
            let disk = try ScratchDirectory.onDisk()
            places.append(("disk", disk.path, disk))
            if TestEnvironment.require(LoopExt4.canRun, "needs root, /dev/loop-control and mkfs.ext4") {
                let ext4 = try LoopExt4(thin: false)
                places.append(("loop ext4", ext4.mountPoint, ext4))
            }
            for (kind, backend) in try await Self.writingBackends() {
                for (place, directory, _) in places {
                    let file = try AsyncFile.open(directory.appending("direct-\(kind)"), options: [.create, .direct], backend: backend)
                    let alignment = try #require(file.directIOAlignment)
                    let block = alignment.offsetAlignment
                    var buffer = try AlignedBuffer(byteCount: 4 * max(block, 4096), for: alignment)
                    buffer.withUnsafeMutableBytes { bytes in
                        for index in bytes.indices { bytes[index] = UInt8(truncatingIfNeeded: index &* 13 &+ 5) }
                    }
                    let expected = buffer.withUnsafeBytes { Array($0) }
                    try await file.write(buffer, at: 0)
                    try await file.durableWrite(buffer, count: block, at: Int64(buffer.byteCount))
                    let copy = [UInt8](repeating: 0x7E, count: 2 * block)
                    try await file.durableWrite(contentsOf: copy, at: Int64(buffer.byteCount + block))
                    try await file.fdatasync()
                    try await file.close()
                    // Read back through the page cache (an O_DIRECT read would need aligned memory).
                    let reader = try AsyncFile.open(directory.appending("direct-\(kind)"), options: [.readOnly], backend: backend)
                    #expect(try Self.read(reader, count: buffer.byteCount, at: 0) == expected, "\(kind), \(place)")
                    #expect(try Self.read(reader, count: block, at: Int64(buffer.byteCount)) == Array(expected[..<block]), "\(kind), \(place)")
                    #expect(try Self.read(reader, count: 2 * block, at: Int64(buffer.byteCount + block)) == copy, "\(kind), \(place)")
                    try await reader.close()
                }
                await backend.shutdown()
            }
        }

        @Test("close() while real writes are in flight (each backend): every write ends once, written or refused as closed; the descriptor is closed once, after them")
        func closeUnderRealWrites() async throws {
            for (kind, backend) in try await Self.writingBackends() {
                let scratch = try ScratchDirectory.onDisk()
                let log = DescriptorLog()
                let file = try AsyncFile.open(scratch.path.appending("a"), options: [.create], backend: backend, system: log.system())
                let fd = file.descriptorForTesting.rawValue
                let written = Locked<[Int]>([])
                let refused = Locked(0)
                let others = Locked<[String]>([])
                await withTaskGroup(of: Void.self) { group in
                    for index in 0..<48 {
                        group.addTask {
                            if index == 24 {
                                do { try await file.close() } catch { others.withLock { $0.append("close: \(error)") } }
                                return
                            }
                            do {
                                if index % 3 == 0 {
                                    try await file.durableWrite(contentsOf: [UInt8](repeating: UInt8(index), count: 4096), at: Int64(4096 * index))
                                } else {
                                    try await file.write(contentsOf: [UInt8](repeating: UInt8(index), count: 4096), at: Int64(4096 * index))
                                }
                                written.withLock { $0.append(index) }
                            } catch let error as AsyncSyncError where error.errno == .badFileDescriptor && error.message.contains("was closed") {
                                refused.withLock { $0 += 1 }
                            } catch {
                                others.withLock { $0.append("\(index): \(error)") }
                            }
                        }
                    }
                }
                try await file.close()
                #expect(others.withLock { $0 }.isEmpty, "\(kind): \(others.withLock { $0 })")
                #expect(written.withLock { $0.count } + refused.withLock { $0 } == 47, "\(kind)")
                #expect(log.closes(of: fd) == 1 && file.inFlightCount == 0, "\(kind)")
                let reader = try FileDescriptor.open(scratch.path.appending("a"), .readOnly)
                defer { try? reader.close() }
                for index in written.withLock({ $0 }) {
                    var bytes = [UInt8](repeating: 0, count: 4096)
                    _ = try bytes.withUnsafeMutableBytes { try reader.read(fromAbsoluteOffset: Int64(4096 * index), into: $0) }
                    #expect(bytes == [UInt8](repeating: UInt8(index), count: 4096), "\(kind): write \(index)")
                }
                await backend.shutdown()
            }
        }

        #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE  // the engines only: no case under the portable build
        /// Found while porting the write-ahead log's direct mode: on FUSE (Linux 6.18), a kernel-AIO
        /// `O_DIRECT` write with `RWF_DSYNC` that does not extend the file sends no fsync request to
        /// the file system; the write request itself carries `O_DSYNC`, which is the file system's
        /// one sign that the write must be durable when it completes (a real file system makes it
        /// durable with FUA or a cache flush). The fault file system now honours that flag (a write
        /// carrying `O_DSYNC` is the write then an fdatasync in its power-loss model), so the
        /// rewrite is in the image when the durable write returns, on both backends.
        @Test("a durable write that rewrites a block of an O_DIRECT file on FUSE is in the power-loss image when it returns (each engine backend)",
              arguments: BackendKind.aio)
        func durableRewriteOnFuse(kind: BackendKind) async throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3 (scripts/install-deps test)") else { return }
            let fs = try FaultFS(powerLoss: true)
            let backend = try makeBackend(kind)
            let file = try AsyncFile.open(fs.mountPoint.appending("f"), options: [.create, .direct], backend: backend)
            let block = try #require(file.directIOAlignment).offsetAlignment
            try await file.durableWrite(contentsOf: [UInt8](repeating: 1, count: 2 * block), at: 0)  // extends the file
            #expect(try fs.durableContents(of: "f") == [UInt8](repeating: 1, count: 2 * block), "\(kind): an extending durable write")
            try await file.durableWrite(contentsOf: [UInt8](repeating: 2, count: block), at: Int64(block))  // does not
            let durable = try fs.durableContents(of: "f")
            #expect(durable.count == 2 * block && durable[block...].allSatisfy { $0 == 2 },
                    "\(kind): a non-extending durable write is durable when it returns")
            try await file.close()
            await backend.shutdown()
        }
        #endif

        @Test("a readOnly file refuses writes with EBADF before submission, and syncs")
        func readOnly() async throws {
            let scratch = try ScratchDirectory.onTmpfs()
            let log = DescriptorLog()
            let backend = HoldingBackend(log: log, holding: false)
            _ = try scratch.file("a")
            let file = try AsyncFile.open(scratch.path.appending("a"), options: [.readOnly], backend: backend)
            let error = await caughtError { try await file.write(contentsOf: [1, 2, 3], at: 0) } as? AsyncSyncError
            #expect(error?.errno == .badFileDescriptor && error?.message.contains("readOnly") == true)
            let negative = await caughtError { try await file.sync(.fsync) }
            #expect(negative == nil)
            #expect(backend.requests.map(\.operation) == [.fsync])
            try await file.close()
        }
    }
}
