// An actor that runs on its backend's serial executor when the backend has one (it then goes on
// right where its syncs complete), and on an ordinary actor's default executor otherwise.
// snippet.hide
// Compiled by `swift build` (a snippet); nothing here runs in CI.
import AsyncFsync

// snippet.show
/// An actor with nothing in it: it only lends its default executor.
actor DefaultExecutor {}

actor WriteAheadLog {
    let backend: any AsyncSyncBackend
    private let serialExecutor: (any SerialExecutor)?
    private let fallback = DefaultExecutor()

    nonisolated var unownedExecutor: UnownedSerialExecutor {
        serialExecutor?.asUnownedSerialExecutor() ?? fallback.unownedExecutor
    }

    init(backend: any AsyncSyncBackend) {         // AsyncSync.shared, makeBackend's, any other
        self.backend = GroupCommit(wrapping: backend)
        self.serialExecutor = backend.preferredSerialExecutor   // nil: the backend has none
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
