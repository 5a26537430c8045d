// Many writers of one log share syncs; each acknowledgement covers the caller's write.
// snippet.hide
// Compiled by `swift build` (a snippet); nothing here runs in CI.
import AsyncFsync

let log = try FileDescriptor.open("wal.log", .writeOnly, options: [.create, .append],
                                  permissions: [.ownerReadWrite])
// snippet.show
let commits = GroupCommit(wrapping: AsyncSync.shared)

func append(_ record: [UInt8]) async throws {
    try log.writeAll(record)
    try await commits.fdatasync(log)
}
// snippet.hide
try await append(Array("record\n".utf8))
try log.close()
