// asyncfsync-loop: one request loop for a fixed number of syncs, with a synchronous main, so that
// `valgrind --tool=callgrind` can count the instructions per sync (the bench's async main cannot run
// under valgrind). Instructions are stable where time is not: this is how the library's own share of
// a sync is measured on a noisy machine (scripts/bench-instructions).
//
//   asyncfsync-loop METHOD DEPTH COUNT DIR
//   METHOD: c-libaio | libaio | libaio-executor | posix | group-commit | runtime-floor
import AsyncFsync
import CFloor
import Dispatch
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

let arguments = CommandLine.arguments
guard arguments.count == 5, let depth = Int(arguments[2]), let count = Int(arguments[3]) else {
    print("usage: asyncfsync-loop METHOD DEPTH COUNT DIR")
    exit(64)
}
let method = arguments[1]
let directory = FilePath(arguments[4])
let paths = (0..<depth).map { directory.appending(".asyncfsync-loop-\(getpid())-\($0)") }
let files = paths.map {
    try! FileDescriptor.open($0, .readWrite, options: [.create, .truncate], permissions: [.ownerReadWrite])
}
defer {
    for fd in files { try? fd.close() }
    for path in paths { _ = path.withPlatformString { unlink($0) } }
}

/// `depth` tasks, each syncing its own file until `count` syncs were made in all.
func loop(_ sync: @escaping @Sendable (FileDescriptor) async throws -> Void, executor: (any TaskExecutor)?) async -> Int {
    let perTask = count / depth
    return await withTaskGroup(of: Int.self) { group in
        for slot in 0..<depth {
            let fd = files[slot]
            group.addTask(executorPreference: executor) {
                for _ in 0..<perTask { try? await sync(fd) }
                return perTask
            }
        }
        return await group.reduce(0, +)
    }
}

func run() async -> Int {
    switch method {
    case "c-libaio":
        var window = cfloor_window()
        var recorded = 0
        let raw = files.map(\.rawValue)
        // Until `count` syncs: the C loop runs for a time, so give it long enough and report its count.
        return raw.withUnsafeBufferPointer {
            cfloor_run(1, 0, 0, Int32(depth), $0.baseAddress, Int32($0.count), 0.5, &window, nil, 0, &recorded)
        }
    case "libaio", "libaio-executor", "posix", "group-commit":
        let base: any AsyncSyncBackend = method == "posix"
            ? try! PosixAIOBackend(inlineMemoryFileSystems: false)
            : try! LibaioBackend(inlineMemoryFileSystems: false)
        let backend: any AsyncSyncBackend = method == "group-commit" ? GroupCommit(wrapping: base) : base
        let executor = method == "libaio-executor" ? base.preferredTaskExecutor : nil
        let done = await loop({ try await backend.fsync($0) }, executor: executor)
        await backend.shutdown()
        return done
    default:
        print("unknown method \(method)")
        exit(64)
    }
}

let finished = DispatchSemaphore(value: 0)
nonisolated(unsafe) var completed = 0
Task.detached {
    completed = await run()
    finished.signal()
}
finished.wait()
print("\(method) depth \(depth): \(completed) syncs")
