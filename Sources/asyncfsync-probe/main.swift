// asyncfsync-probe: what would this process use here, and why?
//
// Prints one line per backend probe (a real fdatasync of a scratch file in DIR, default the
// temporary directory), then the backend that AsyncSync.makeBackendBlocking(directory:) makes from the environment
// (ASYNC_FSYNC_BACKEND, ASYNC_FSYNC_INLINE) and one fdatasync through it.
//
//   asyncfsync-probe [DIR]
//
// Output (one fact per line, stable prefixes so that scripts and the tests can read it):
//   probe: <BackendProbe description>
//   selected: <backend description, which starts with its kind>
//   synced: ok
//   error: <AsyncSyncError description>
//   libaio.so mapped: yes|no
// Exit status: 0 when a backend was made and synced a file, 1 when makeBackend() failed, 2 when
// the sync through the chosen backend failed, 64 for a usage error.
import AsyncFsync
import SystemPackage
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif canImport(Musl)
import Musl
#endif

let arguments = CommandLine.arguments.dropFirst()
if arguments.count > 1 || arguments.first == "-h" || arguments.first == "--help" {
    print("usage: asyncfsync-probe [DIR]")
    exit(64)
}
let directory: FilePath? = arguments.first.map { FilePath($0) }

// The blocking forms, on purpose: this tool must answer where no thread can be started (a pids
// limit), and an `await` of a nonisolated function needs a thread of the cooperative pool.
for probe in AsyncSync.probeBlocking(directory: directory) {
    print("probe: \(probe)")
}

/// Whether any shared object named libaio is mapped into this process.
func libaioMapped() -> Bool {
    guard let maps = try? FileDescriptor.open("/proc/self/maps", .readOnly) else { return false }
    defer { try? maps.close() }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while let count = try? buffer.withUnsafeMutableBytes({ try maps.read(into: $0) }), count > 0 {
        bytes += buffer[..<count]
    }
    return String(decoding: bytes, as: UTF8.self).contains("libaio.so")
}

let status: Int32
do {
    let backend = try AsyncSync.makeBackendBlocking(directory: directory)
    print("selected: \(backend)")
    let scratch = (directory ?? FilePath(".")).appending(".asyncfsync-probe-tool-\(getpid())")
    do {
        let fd = try FileDescriptor.open(scratch, .readWrite, options: [.create, .truncate, .closeOnExec],
                                         permissions: [.ownerReadWrite])
        defer {
            try? fd.close()
            _ = scratch.withPlatformString { unlink($0) }
        }
        _ = try fd.writeAll(Array("asyncfsync-probe\n".utf8))
        try await backend.fdatasync(fd)
        print("synced: ok")
        status = 0
    } catch {
        print("error: \(error)")
        status = 2
    }
    await backend.shutdown()
} catch {
    print("error: \(error)")
    status = 1
}
print("libaio.so mapped: \(libaioMapped() ? "yes" : "no")")
exit(status)
