// An actor that runs on its backend's serial executor when the backend has one (it then goes on
// right where its syncs complete), and on a default actor's executor otherwise (ActorExecutor).
// snippet.hide
// Compiled by `swift build` (a snippet); nothing here runs in CI.
import AsyncFsync

// snippet.show
actor WriteAheadLog {
    let backend: any AsyncSyncBackend
    let executor: ActorExecutor
    nonisolated var unownedExecutor: UnownedSerialExecutor { executor.unownedExecutor }

    init(backend: any AsyncSyncBackend) {         // AsyncSync.shared, or one you made
        self.backend = GroupCommit(wrapping: backend)
        self.executor = ActorExecutor(preferring: backend)
    }
}
// snippet.hide

extension WriteAheadLog {
    func append(_ record: [UInt8], to fd: FileDescriptor) async throws {
        try fd.writeAll(record)
        try await backend.fdatasync(fd)
    }
}

let log = WriteAheadLog(backend: AsyncSync.shared)
let fd = try FileDescriptor.open("wal.log", .writeOnly, options: [.create, .append],
                                 permissions: [.ownerReadWrite])
try await log.append(Array("record\n".utf8), to: fd)
try fd.close()
