// asyncfsync-stress: a small, self-checking workout of both backends and GroupCommit, for valgrind
// memcheck (CI runs it under `valgrind --error-exitcode=1`): concurrent syncs on several files,
// cancellations, tasks on the backends' executors, an actor on the serial executor, shutdown with
// requests in flight. Exits 1 when a request ended other than once, with success, a cancellation
// or a refusal after shutdown.
//
//   asyncfsync-stress [DIR] [REQUESTS]
#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
import AsyncFsync
import Dispatch
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

let arguments = Array(CommandLine.arguments.dropFirst())
let directory = FilePath(arguments.first ?? ".")
let requests = arguments.count > 1 ? Int(arguments[1]) ?? 400 : 400

actor Log {
    let backend: any AsyncSyncBackend
    let executor: any SerialExecutor
    let fd: FileDescriptor
    nonisolated var unownedExecutor: UnownedSerialExecutor { executor.asUnownedSerialExecutor() }

    init(backend: any AsyncSyncBackend, executor: any SerialExecutor, fd: FileDescriptor) {
        self.backend = backend
        self.executor = executor
        self.fd = fd
    }

    func append(_ record: String) async throws {
        _ = try fd.writeAll(Array(record.utf8))
        try await backend.fdatasync(fd)
    }
}

enum Outcome { case ok, cancelled, refused, failed(String) }

func classify(_ result: Result<Void, any Error>) -> Outcome {
    switch result {
    case .success: .ok
    case .failure(is CancellationError): .cancelled
    case .failure(let error as AsyncSyncError) where error.code == .shutDown: .refused
    case .failure(let error): .failed("\(error)")
    }
}

/// The workout; returns what went wrong.
func workout() async throws -> [String] {
    var failures: [String] = []
    let paths = (0..<4).map { directory.appending(".asyncfsync-stress-\(getpid())-\($0)") }
    let files = try paths.map {
        try FileDescriptor.open($0, .readWrite, options: [.create, .truncate], permissions: [.ownerReadWrite])
    }
    defer {
        for fd in files { try? fd.close() }
        for path in paths { _ = path.withPlatformString { unlink($0) } }
    }

    for kind in [BackendKind.libaio, .posix] {
        let base: any AsyncSyncBackend = kind == .libaio
            ? try LibaioBackend(capacity: 8, inlineMemoryFileSystems: false)
            : try PosixAIOBackend(capacity: 8, inlineMemoryFileSystems: false)
        for layer in ["plain", "group"] {
            let backend: any AsyncSyncBackend = layer == "plain" ? base : GroupCommit(wrapping: base)
            let log = Log(backend: backend, executor: base.preferredSerialExecutor!, fd: files[3])
            var outcomes: [Outcome] = []
            await withTaskGroup(of: Outcome.self) { group in
                for index in 0..<requests {
                    let fd = files[index % 3]
                    let preference: (any TaskExecutor)? = index.isMultiple(of: 3) ? backend.preferredTaskExecutor : nil
                    let task = Task(executorPreference: preference) {
                        if index.isMultiple(of: 5) { try await log.append("record \(index)\n") }
                        try await backend.sync(fd, mode: index.isMultiple(of: 2) ? .fsync : .fdatasync)
                    }
                    if index % 10 == 7 { task.cancel() }
                    group.addTask { classify(await task.result) }
                }
                for await outcome in group { outcomes.append(outcome) }
            }
            for case .failed(let error) in outcomes { failures.append("\(kind) \(layer): \(error)") }
            if outcomes.count != requests { failures.append("\(kind) \(layer): \(outcomes.count) outcomes for \(requests)") }
        }
        // A shutdown with requests in flight.
        let inFlight = (0..<64).map { index in Task { classify(await Task { try await base.sync(files[index % 3], mode: .fdatasync) }.result) } }
        await base.shutdown()
        for task in inFlight {
            if case .failed(let error) = await task.value { failures.append("\(kind) shutdown: \(error)") }
        }
    }

    return failures
}

// A synchronous main that waits for the work on a semaphore (valgrind cannot follow the
// dispatch_main() of an async main).
let finished = DispatchSemaphore(value: 0)
nonisolated(unsafe) var result: Result<[String], any Error> = .success([])
Task.detached {
    do { result = .success(try await workout()) } catch { result = .failure(error) }
    finished.signal()
}
finished.wait()
switch result {
case .success(let failures) where failures.isEmpty:
    print("asyncfsync-stress: \(requests) requests × 2 backends × 2 layers, every one ended once")
case .success(let failures):
    for failure in failures.prefix(20) { print("asyncfsync-stress: \(failure)") }
    exit(1)
case .failure(let error):
    print("asyncfsync-stress: \(error)")
    exit(1)
}
#else
print("asyncfsync-stress exercises the Linux backends (kernel AIO, POSIX aio); nothing to run in this build")
#endif
