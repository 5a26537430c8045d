// A small demo: prints what probing finds, then syncs a scratch file in the current directory
// with each backend and with the one ASYNC_FSYNC_BACKEND selects.
import AsyncFsync
import SystemPackage
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif canImport(Musl)
import Musl
#endif

let directory = FilePath(".")
print("Probes (a real fdatasync of a scratch file in the current directory):")
for probe in await AsyncSync.probe(directory: directory) {
    print("  \(probe)")
}

let path: FilePath = "asyncfsync-demo.scratch"
let fd = try FileDescriptor.open(path, .readWrite, options: [.create, .truncate], permissions: [.ownerReadWrite])

func run(_ backend: any AsyncSyncBackend, label: String) async {
    let clock = ContinuousClock()
    var synced = 0
    let start = clock.now
    do {
        for round in 0..<100 {
            _ = try fd.writeAll(Array("record \(round)\n".utf8))
            try await backend.fdatasync(fd)
            synced += 1
        }
        let elapsed = clock.now - start
        print("  \(label): 100 × (write + fdatasync) in \(elapsed), all durable")
    } catch {
        print("  \(label): failed after \(synced) syncs: \(error)")
    }
    await backend.shutdown()
}

print("Syncing \(path):")
// Off Linux (and under ASYNC_FSYNC_PORTABLE) libaio and posix say why they cannot be made.
for kind in BackendKind.allCases {
    do {
        let backend = try await AsyncSync.makeBackend(AsyncSync.Configuration(backend: kind, probeDirectory: directory))
        await run(backend, label: kind.rawValue)
    } catch {
        print("  \(kind): \(error)")
    }
}
do {
    let backend = try await AsyncSync.makeBackend()
    await run(backend, label: "makeBackend() chose \(backend.kind)")
} catch {
    print("  makeBackend(): \(error)")
}
try fd.close()
_ = path.withPlatformString { unlink($0) }
