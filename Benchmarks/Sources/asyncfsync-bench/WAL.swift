import AsyncFsync
import CFloor
import Foundation
import SystemPackage

// The wal-actor workload: a write-ahead log owned by an actor, as a Swift server would write one.
// `append` writes a small record at the log's end with pwrite(2), then makes it durable with
// fdatasync; N writer tasks call it concurrently, each awaiting its own append. What differs
// between the methods is only how the actor syncs:
//
// - wal-blocking: fdatasync(2) inside the actor. It blocks the thread running the actor, so the
//   actor is never re-entered: appends are serialized, one sync each.
// - wal-backend: `await backend.sync` (AsyncSync.makeBackend()). The actor is free while the sync
//   runs: other writers' appends write their records and submit their syncs meanwhile.
// - wal-group-commit: the same through `GroupCommit(wrapping:)`: concurrent syncs of the log share
//   one sync, and each append is acknowledged only by a sync that started after its write.
// - wal-serial-executor: the actor of wal-backend on the backend's serial executor (its completion
//   thread); wal-serial-group-commit: that actor syncing through GroupCommit; wal-serial-writers:
//   that actor, and the writer tasks prefer the backend's task executor (the same thread), so that
//   calling the actor and returning from it are no hop either.

/// Bytes per record: a small log record (a header and a short payload).
let walRecordSize = 128
let walRecord = [UInt8](repeating: 0x5a, count: walRecordSize)

/// How a log actor makes its appends durable.
enum WALSync: Sendable {
    case blocking
    case backend(any AsyncSyncBackend)
}

/// A log actor: one file, appended at its end. Each actor kind (its executor is the only
/// difference) conforms; `append` is written once, in the extension.
protocol WriteAheadLog: Actor {
    var descriptor: FileDescriptor { get }
    var sync: WALSync { get }
    /// Where the next record goes.
    var end: Int64 { get set }
    /// Syncs this actor asked for (one per append; GroupCommit's shared syncs are counted behind it).
    var syncCalls: Int { get set }
}

extension WriteAheadLog {
    /// Writes `record` at the end of the log, then returns once it is durable.
    func append(_ record: [UInt8]) async throws {
        let offset = end
        end += Int64(record.count)  // reserved before the await: the next append goes after it
        let written = try record.withUnsafeBytes { try descriptor.write(toAbsoluteOffset: offset, $0) }
        guard written == record.count else { throw Errno.ioError }
        syncCalls += 1
        switch sync {
        case .blocking:
            if fdatasync(descriptor.rawValue) != 0 { throw Errno(rawValue: errno) }
        case .backend(let backend):
            try await backend.sync(descriptor, mode: .fdatasync)
        }
    }
}

/// The log actor on Swift's default actor executor (it runs on the cooperative pool).
actor WAL: WriteAheadLog {
    let descriptor: FileDescriptor
    let sync: WALSync
    var end: Int64 = 0
    var syncCalls = 0

    init(descriptor: FileDescriptor, sync: WALSync) {
        self.descriptor = descriptor
        self.sync = sync
    }
}

#if !NO_SERIAL_EXECUTOR
/// The log actor on the backend's serial executor (`preferredSerialExecutor`): it runs on the
/// backend's completion thread, so an append resumed by its sync's completion goes on there
/// without a hop, and the syncs of all appends resumed together are submitted together.
actor WALOnBackendExecutor: WriteAheadLog {
    let descriptor: FileDescriptor
    let sync: WALSync
    let executor: any SerialExecutor
    var end: Int64 = 0
    var syncCalls = 0

    init(descriptor: FileDescriptor, backend: any AsyncSyncBackend, executor: any SerialExecutor) {
        self.descriptor = descriptor
        self.sync = .backend(backend)
        self.executor = executor
    }

    nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }
}
#endif

extension AsyncFsyncBench {
    /// One wal-actor method in one cell: `cell.depth` writers append to a fresh log (created and
    /// made durable before the window; the backend is created before it and shut down after).
    func measureWAL(_ method: Method, cell: Cell, directory: String, into m: inout Measurement) async throws {
        let path = "\(directory)/wal-\(getpid())"
        let descriptor = try FileDescriptor.open(
            FilePath(path), .readWrite, options: [.create, .truncate], permissions: [.ownerReadWrite])
        defer {
            try? descriptor.close()
            unlink(path)
        }
        _ = fsync(descriptor.rawValue)
        let directoryDescriptor = open(directory, O_RDONLY | O_DIRECTORY)
        if directoryDescriptor >= 0 { _ = fsync(directoryDescriptor); close(directoryDescriptor) }

        var counting: CountingBackend?
        var writersExecutor: (any TaskExecutor)? = nil
        let log: any WriteAheadLog
        switch method {
        case .walBlocking:
            log = WAL(descriptor: descriptor, sync: .blocking)
        case .walBackend:
            log = WAL(descriptor: descriptor, sync: .backend(try await AsyncSync.makeBackend()))
        case .walGroupCommit:
            counting = CountingBackend(try await AsyncSync.makeBackend())
            log = WAL(descriptor: descriptor, sync: .backend(GroupCommit(wrapping: counting!)))
        #if !NO_SERIAL_EXECUTOR
        case .walSerialExecutor:
            let backend = try await AsyncSync.makeBackend()
            log = WALOnBackendExecutor(descriptor: descriptor, backend: backend, executor: backend.preferredSerialExecutor!)
        case .walSerialGroupCommit:
            let backend = try await AsyncSync.makeBackend()
            counting = CountingBackend(backend)
            log = WALOnBackendExecutor(descriptor: descriptor, backend: GroupCommit(wrapping: counting!),
                                       executor: backend.preferredSerialExecutor!)
        case .walSerialWriters:
            let backend = try await AsyncSync.makeBackend()
            log = WALOnBackendExecutor(descriptor: descriptor, backend: backend, executor: backend.preferredSerialExecutor!)
            writersExecutor = backend.preferredTaskExecutor
        #endif
        default:
            preconditionFailure("\(method) is not a wal-actor method")
        }
        let clonesBefore = systemClones()
        let loop = try await runSlots(cell.depth, executor: writersExecutor) { _, _ in try await log.append(walRecord) }
        m.clones += systemClones() - clonesBefore
        if case .backend(let backend) = await log.sync { await backend.shutdown() }
        m.add(loop)
        // Syncs that reached the kernel: behind GroupCommit, counted by the backend it wraps.
        let syncCalls = await log.syncCalls
        m.syncs += counting?.count.withLock { $0 } ?? syncCalls
    }
}
