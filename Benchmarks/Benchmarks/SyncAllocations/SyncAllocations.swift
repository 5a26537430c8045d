// Allocations, context switches and time per sync for each backend, measured by ordo-one's
// package-benchmark (`swift package benchmark --target SyncAllocations` in Benchmarks/).
//
// Each measured iteration is 1,000 syncs (scalingFactor .kilo), so the figures read "per sync".
// The file lives on tmpfs and the backends' inline path is off, so every sync makes the full
// asynchronous round trip (submission, kernel or glibc, completion thread, resumption) without
// waiting for a disk: what is counted is this library's own work. The blocking fsync(2) loop is
// the baseline (it allocates nothing).
import AsyncFsync
import Benchmark
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// One scratch file and one backend of each kind, made once for the whole run.
final class Fixture: Sendable {
    let fd: FileDescriptor
    let libaio: LibaioBackend
    let posix: PosixAIOBackend

    init() {
        let path = FilePath("/dev/shm/asyncfsync-allocations-\(getpid())")
        fd = try! FileDescriptor.open(path, .readWrite, options: [.create, .truncate], permissions: [.ownerReadWrite])
        _ = path.withPlatformString { unlink($0) }
        _ = try! fd.writeAll([UInt8](repeating: 0x5a, count: 4096))
        libaio = try! LibaioBackend(inlineMemoryFileSystems: false)
        posix = try! PosixAIOBackend(inlineMemoryFileSystems: false)
    }

    func backend(_ kind: BackendKind) -> any AsyncSyncBackend {
        kind == .libaio ? libaio : posix
    }

    func executor(_ kind: BackendKind) -> any TaskExecutor {
        kind == .libaio ? libaio.taskExecutor : posix.taskExecutor
    }
}

let fixture = Fixture()

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .throughput, .mallocCountTotal, .contextSwitches, .threads, .syscalls],
        scalingFactor: .kilo,
        maxDuration: .seconds(3),
        maxIterations: 200
    )

    // The measured loops run inside one detached task on the global concurrent executor, as a
    // server's tasks do: the harness runs async bodies on an executor of its own, and every hop
    // back to it costs an allocation that is not the library's (the control below shows it).

    Benchmark("control: await Task.yield(), harness executor") { benchmark in
        for _ in benchmark.scaledIterations {
            await Task.yield()
        }
    }

    Benchmark("control: await Task.yield(), depth 1") { benchmark in
        let count = benchmark.scaledIterations.count
        await Task.detached {
            for _ in 0..<count { await Task.yield() }
        }.value
    }

    Benchmark("blocking fdatasync(2), depth 1") { benchmark in
        for _ in benchmark.scaledIterations {
            blackHole(fdatasync(fixture.fd.rawValue))
        }
    }

    for kind in BackendKind.allCases {
        for (depth, onExecutor) in [(1, false), (1, true), (16, false), (16, true)] {
            let name = "\(kind) fdatasync, depth \(depth)" + (onExecutor ? ", tasks on backend.taskExecutor" : "")
            Benchmark(name) { benchmark in
                try await syncs(benchmark.scaledIterations.count, kind: kind, depth: depth,
                                executor: onExecutor ? fixture.executor(kind) : nil)
            }
        }
    }
}

/// `total` fdatasyncs through the backend of `kind`, `depth` tasks keeping them in flight, inside
/// a detached task (so the harness's executor is out of the way), on `executor` if given.
func syncs(_ total: Int, kind: BackendKind, depth: Int, executor: (any TaskExecutor)?) async throws {
    let backend = fixture.backend(kind)
    try await Task.detached {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for task in 0..<depth {
                let share = total / depth + (task < total % depth ? 1 : 0)
                group.addTask(executorPreference: executor) {
                    for _ in 0..<share { try await backend.fdatasync(fixture.fd) }
                }
            }
            try await group.waitForAll()
        }
    }.value
}
