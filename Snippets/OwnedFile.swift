// A file handle that owns its descriptor: writes, durable writes and syncs, and a close that waits
// for them. The README's second example.
// snippet.hide
// Compiled by `swift build` (a snippet); nothing here runs in CI.
import AsyncFsync

let header: [UInt8] = Array("header\n".utf8)
let frame: [UInt8] = Array("frame\n".utf8)
// snippet.show
let segment = try AsyncFile.open("segment-000001.log", options: [.create, .exclusive])
try await segment.syncDirectory()                            // the new name is durable
try await segment.durableWrite(contentsOf: header, at: 0)    // durable when it returns
try await segment.write(contentsOf: frame, at: 4096)         // no thread blocked
try await segment.fdatasync()                                // covers the write before it
try await segment.close()                                    // waits for operations in flight
