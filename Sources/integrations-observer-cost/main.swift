// What the observers cost per sync and per write event, with no metrics backend and no log handler bootstrapped
// (swift-metrics' default factory is NOOPMetricsHandler; swift-log's default handler prints, so the
// logger here gets SwiftLogNoOpLogHandler). It calls each observer's syncCompleted, groupCommitBatch
// and writeCompleted directly in a tight loop and prints nanoseconds per call. It prints figures only; nothing here asserts a time.
//
// Usage: swift run -c release --traits Logging,Metrics integrations-observer-cost [calls]   (default 1 000 000)
// Without both traits it only says so (the observers are not built then).
#if Logging && Metrics
import AsyncFsync
import AsyncFsyncLogging
import AsyncFsyncMetrics
import CoreMetrics
import Logging

let calls = CommandLine.arguments.dropFirst().first.flatMap { Int($0) } ?? 1_000_000
let failure = AsyncSyncError(
    code: .system, errno: .ioError, operation: .fdatasync, step: .completion, backend: .libaio,
    descriptor: FileDescriptor(rawValue: 7), systemCall: "io_getevents")

/// Runs `body` `calls` times and returns nanoseconds per call.
@inline(never)
func measure(_ body: (Int) -> Void) -> Double {
    let clock = ContinuousClock()
    // Warm-up: first use of each metric and lazy globals.
    for index in 0..<min(calls, 10_000) { body(index) }
    let start = clock.now
    for index in 0..<calls { body(index) }
    let elapsed = clock.now - start
    let (seconds, attoseconds) = elapsed.components
    let nanoseconds = Double(seconds) * 1e9 + Double(attoseconds) / 1e9
    return nanoseconds / Double(calls)
}

func report(_ name: String, _ nanosecondsPerCall: Double) {
    let rounded = (nanosecondsPerCall * 10).rounded() / 10
    print("\(name): \(rounded) ns/call")
}

let metrics = AsyncSyncMetrics()  // MetricsSystem.factory: NOOPMetricsHandler, nothing bootstrapped
let logging = AsyncSyncLogging(logger: Logger(label: "asyncfsync", factory: { _ in SwiftLogNoOpLogHandler() }))
let loggingFailures = AsyncSyncLogging(
    logger: Logger(label: "asyncfsync", factory: { _ in SwiftLogNoOpLogHandler() }), syncFailureLevel: .warning,
    writeFailureLevel: .warning)
let writeFailure = AsyncSyncError(
    code: .system, errno: .noSpace, operation: .write, step: .completion, backend: .libaio,
    descriptor: FileDescriptor(rawValue: 7), systemCall: "io_getevents")
let duration = Duration.microseconds(250)
let modes: [SyncMode] = [.fsync, .fdatasync]

print("observer cost per event call, \(calls) calls each, no metrics or log backend bootstrapped")
print("metrics factory: \(type(of: MetricsSystem.factory))")
report("baseline (empty loop body through the same closure)", measure { _ in })
report("AsyncSyncMetrics, success", measure { index in
    metrics.syncCompleted(backend: .libaio, mode: modes[index & 1], duration: duration, error: nil)
})
report("AsyncSyncMetrics, failure (EIO)", measure { index in
    metrics.syncCompleted(backend: .libaio, mode: modes[index & 1], duration: duration, error: failure)
})
report("AsyncSyncMetrics, GroupCommit batch", measure { index in
    metrics.groupCommitBatch(size: index & 15, mode: modes[index & 1])
})
report("AsyncSyncLogging, success", measure { index in
    logging.syncCompleted(backend: .libaio, mode: modes[index & 1], duration: duration, error: nil)
})
report("AsyncSyncLogging (syncFailureLevel .warning, no-op handler), failure", measure { index in
    loggingFailures.syncCompleted(backend: .libaio, mode: modes[index & 1], duration: duration, error: failure)
})
report("AsyncSyncMetrics, write or durable write, success", measure { index in
    metrics.writeCompleted(backend: .libaio, durable: index & 1 == 0, bytes: 4096, duration: duration, error: nil)
})
report("AsyncSyncMetrics, write or durable write, failure (ENOSPC)", measure { index in
    metrics.writeCompleted(backend: .libaio, durable: index & 1 == 0, bytes: 4096, duration: duration, error: writeFailure)
})
report("AsyncSyncLogging, write or durable write, success", measure { index in
    logging.writeCompleted(backend: .libaio, durable: index & 1 == 0, bytes: 4096, duration: duration, error: nil)
})
report("AsyncSyncLogging (writeFailureLevel .warning, no-op handler), write failure", measure { index in
    loggingFailures.writeCompleted(backend: .libaio, durable: index & 1 == 0, bytes: 4096, duration: duration, error: writeFailure)
})
#else
print("integrations-observer-cost measures the observers of the traits Logging and Metrics: build with --traits Logging,Metrics")
#endif
