// Syncing a swift-nio file handle through a backend (trait NIO, product AsyncFsyncNIO).
// snippet.hide
// Compiled by `swift build --traits NIO` (a snippet); nothing here runs in CI.
#if NIO
import AsyncFsync

let backend = AsyncSync.shared
let record: [UInt8] = Array("record\n".utf8)
let offset: Int64 = 0
// snippet.show
import AsyncFsyncNIO
import NIOFileSystem

try await FileSystem.shared.withFileHandle(forReadingAndWritingAt: "wal", options: .newFile(replaceExisting: false)) { handle in
    try await handle.write(contentsOf: record, toAbsoluteOffset: offset)
    try await handle.synchronize(using: backend, mode: .fdatasync)   // or: try await backend.fdatasync(handle)
    try await backend.fsync(handle)                                   // data and metadata
}
// snippet.hide
#endif
