// A durability failure: the data written since the last successful sync may be lost.
// snippet.hide
// Compiled by `swift build` (a snippet); nothing here runs in CI.
import AsyncFsync

let fd = try FileDescriptor.open("data.log", .writeOnly, options: [.create, .append],
                                 permissions: [.ownerReadWrite])
// snippet.show
do {
    try await AsyncSync.shared.fdatasync(fd)
} catch let error as AsyncSyncError where error.isDurabilityFailure {
    // EIO, ENOSPC, …: the data may be lost. Never trust a retry; later syncs of this file
    // keep failing until clearFailure(of:).
}
// snippet.hide
try fd.close()
