// Sync a write through the process-wide backend: no thread of the cooperative pool waits for the
// disk. The README's first example, and Getting started's "Sync a descriptor".
// snippet.hide
// Compiled by `swift build` so that the documentation cannot drift from the API; nothing here runs
// in CI.
import Foundation

let record: [UInt8] = Array("record\n".utf8)
let handle = FileHandle(forWritingAtPath: "/dev/null")!
// snippet.show
// snippet.readme
import AsyncFsync                                 // re-exports swift-system's FileDescriptor, Errno

let fd = try FileDescriptor.open("wal.log", .writeOnly, options: [.create],
                                 permissions: [.ownerReadWrite])
try await AsyncSync.shared.durableWrite(fd, record, at: 0)   // the write and its fdatasync, one await
try await AsyncSync.shared.write(fd, record, at: 7)          // a write, no thread blocked …
try await AsyncSync.shared.fdatasync(fd)          // … made durable: a sync covers the writes before it
try await AsyncSync.shared.fdatasync(handle.fileDescriptor)   // a raw Int32 works too
// snippet.end
// snippet.modes
try await AsyncSync.shared.fdatasync(fd)   // the data (and what is needed to read it back)
try await AsyncSync.shared.fsync(fd)       // data and all metadata
// snippet.end
// snippet.raw
try await AsyncSync.shared.fdatasync(handle.fileDescriptor)
// snippet.end
// snippet.hide
try fd.close()
