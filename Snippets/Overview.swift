// The whole idea: write, then await the sync.
// snippet.hide
// Compiled by `swift build` (a snippet); nothing here runs in CI.
let record: [UInt8] = Array("record\n".utf8)
// snippet.show
import AsyncFsync
// snippet.hide
let fd = try FileDescriptor.open("data.log", .writeOnly, options: [.create, .append],
                                 permissions: [.ownerReadWrite])
// snippet.show

try fd.writeAll(record)
try await AsyncSync.shared.fdatasync(fd)      // durable when this returns
// snippet.hide
try fd.close()
