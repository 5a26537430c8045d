// asyncfsync-wal-bench: appends of small records to WriteAheadLog by 1, 16 and 64 writer tasks,
// with group commit over an AsyncFsync backend (writer tasks on the cooperative pool, and on the
// backend's executor) and with a blocking fdatasync(2) in the log's actor, interleaved per round; prints appends/s, syncs per append and latency percentiles, and
// the medians over the rounds.
//
//   swift build -c release --product asyncfsync-wal-bench
//   .build/release/asyncfsync-wal-bench [--seconds 3] [--rounds 3] [--writers 1,16,64] [--record-size 150]
//
// It writes in a scratch directory made in the current directory (scratch-wal-bench-PID), so the
// disk measured is the one you run it on; the directory is removed at the end.
import Foundation
import Synchronization
import WriteAheadLog

struct Settings {
    var seconds = 3.0
    var rounds = 3
    var writers = [1, 16, 64]
    var recordSize = 150

    init(_ arguments: [String]) {
        var rest = arguments.dropFirst()
        while let flag = rest.popFirst() {
            guard let value = rest.popFirst() else { Self.usage("\(flag) needs a value") }
            let number = Double(value)
            let counts = value.split(separator: ",").compactMap { Int($0) }
            switch flag {
            case "--seconds" where number.map { $0 > 0 } == true: seconds = number!
            case "--rounds" where Int(value).map { $0 > 0 } == true: rounds = Int(value)!
            case "--writers" where !counts.isEmpty && counts.count == value.split(separator: ",").count: writers = counts
            case "--record-size" where Int(value).map { $0 >= 0 } == true: recordSize = Int(value)!
            default: Self.usage("\(flag) \(value) is not an option this program takes")
            }
        }
    }

    static func usage(_ problem: String) -> Never {
        FileHandle.standardError.write(Data("""
            asyncfsync-wal-bench: \(problem)
            usage: asyncfsync-wal-bench [--seconds S] [--rounds N] [--writers 1,16,64] [--record-size BYTES]

            """.utf8))
        exit(2)
    }
}

/// Counts the data syncs the backend runs (what group commit shares), not the requests.
final class SyncCounter: AsyncSyncObserver {
    let dataSyncs = Atomic<Int>(0)
    func syncCompleted(backend: BackendKind, mode: SyncMode, duration: Duration, error: (any Error)?) {
        if mode == .fdatasync { dataSyncs.add(1, ordering: .relaxed) }
    }
}

enum Variant: String, CaseIterable {
    /// Group commit; the writer tasks on the cooperative pool.
    case groupCommit = "group commit"
    /// Group commit; the writer tasks prefer the backend's completion thread as their executor
    /// (the log's actor, a default actor, then runs there too): no hop to the pool after a sync.
    case groupCommitOnExecutor = "group commit, executor"
    /// A blocking fdatasync(2) inside the log's actor.
    case blocking = "blocking fdatasync"
}

struct Measurement {
    var appendsPerSecond: Double
    var syncsPerAppend: Double
    var p50: Double  // µs
    var p99: Double  // µs
}

func percentile(_ sorted: [Int64], _ fraction: Double) -> Double {
    guard !sorted.isEmpty else { return .nan }
    return Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * fraction))]) / 1000
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

func measure(_ variant: Variant, writers: Int, settings: Settings, backend: any AsyncSyncBackend,
             counter: SyncCounter, directory: FilePath) async throws -> Measurement {
    let durability: Durability = variant == .blocking ? .blockingFdatasync : .groupCommit(backend)
    let executor = variant == .groupCommitOnExecutor ? backend.preferredTaskExecutor : nil
    let log = try await WriteAheadLog.open(directory: directory, options: WriteAheadLogOptions(durability: durability))
    let payload = (0..<settings.recordSize).map { UInt8(truncatingIfNeeded: $0 &* 31) }
    let syncsBefore = counter.dataSyncs.load(ordering: .relaxed)
    let requestsBefore = await log.statistics.dataSyncRequests
    let clock = ContinuousClock()
    let start = clock.now
    let deadline = start + .milliseconds(Int(settings.seconds * 1000))
    let latencies = try await withThrowingTaskGroup(of: [Int64].self) { group in
        for _ in 0..<writers {
            group.addTask(executorPreference: executor) {
                var mine: [Int64] = []
                mine.reserveCapacity(1 << 14)
                while clock.now < deadline {
                    let begin = clock.now
                    _ = try await log.append(payload)
                    let (seconds, attoseconds) = (clock.now - begin).components
                    mine.append(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
                }
                return mine
            }
        }
        return try await group.reduce(into: [Int64]()) { $0 += $1 }.sorted()
    }
    let elapsed = clock.now - start
    let statistics = await log.statistics
    let syncs = variant == .blocking
        ? statistics.dataSyncRequests - requestsBefore  // each request is one fdatasync(2)
        : counter.dataSyncs.load(ordering: .relaxed) - syncsBefore
    try await log.close()
    try FileManager.default.removeItem(atPath: directory.string)
    let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    return Measurement(appendsPerSecond: Double(latencies.count) / seconds,
                       syncsPerAppend: Double(syncs) / Double(max(1, latencies.count)),
                       p50: percentile(latencies, 0.50), p99: percentile(latencies, 0.99))
}

/// The type of the file system `path` is on, from the longest matching mount point in /proc/mounts.
func fileSystemName(_ path: String) -> String {
    let mounts = (try? String(contentsOfFile: "/proc/mounts", encoding: .utf8)) ?? ""
    var best: (point: String, type: String) = ("", "?")
    for line in mounts.split(separator: "\n") {
        let fields = line.split(separator: " ")
        guard fields.count > 2 else { continue }
        let point = String(fields[1])
        let inside = path == point || path.hasPrefix(point.hasSuffix("/") ? point : point + "/")
        if inside, point.count >= best.point.count { best = (point, String(fields[2])) }
    }
    return best.type
}

let settings = Settings(CommandLine.arguments)
let counter = SyncCounter()
AsyncSync.addObserver(counter)
let scratch = FilePath(FileManager.default.currentDirectoryPath).appending("scratch-wal-bench-\(getpid())")
try FileManager.default.createDirectory(atPath: scratch.string, withIntermediateDirectories: false)
defer { try? FileManager.default.removeItem(atPath: scratch.string) }
let backend = try await AsyncSync.makeBackend(directory: scratch)  // probes the disk measured

var uts = utsname()
uname(&uts)
let kernel = withUnsafeBytes(of: uts.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
print("asyncfsync-wal-bench: \(settings.recordSize)-byte records, \(settings.seconds) s per run, \(settings.rounds) rounds, "
      + "writers \(settings.writers.map(String.init).joined(separator: ",")); \(fileSystemName(scratch.string)) at \(scratch), "
      + "kernel \(kernel), \(ProcessInfo.processInfo.activeProcessorCount) CPUs, backend \(backend.kind)")

var results: [String: [Measurement]] = [:]
func key(_ variant: Variant, _ writers: Int) -> String { "\(variant.rawValue)/\(writers)" }
for round in 0..<settings.rounds {
    for writers in settings.writers {
        // Interleaved: the order of the variants alternates per round, so a slow stretch of the
        // disk does not always fall on the same one.
        let order = round % 2 == 0 ? Variant.allCases : Variant.allCases.reversed()
        for variant in order {
            let directory = scratch.appending("round\(round)-\(writers)-\(Variant.allCases.firstIndex(of: variant)!)")
            let measurement = try await measure(variant, writers: writers, settings: settings, backend: backend,
                                                counter: counter, directory: directory)
            results[key(variant, writers), default: []].append(measurement)
            let name = variant.rawValue.padding(toLength: 22, withPad: " ", startingAt: 0)
            print("round \(round + 1)  \(name)" + String(format: " %3d writers  %9.0f appends/s  %.3f syncs/append  p50 %8.0f µs  p99 %8.0f µs",
                         writers, measurement.appendsPerSecond, measurement.syncsPerAppend, measurement.p50, measurement.p99))
        }
    }
}

print("\nMedians of \(settings.rounds) rounds:\n")
print("| writers | log | appends/s | syncs/append | p50 latency | p99 latency |")
print("|---:|---|---:|---:|---:|---:|")
for writers in settings.writers {
    for variant in Variant.allCases {
        let runs = results[key(variant, writers)] ?? []
        print("| \(writers) | \(variant.rawValue) | " + String(format: "%.0f | %.3f | %.0f µs | %.0f µs |",
                     median(runs.map(\.appendsPerSecond)), median(runs.map(\.syncsPerAppend)),
                     median(runs.map(\.p50)), median(runs.map(\.p99))))
    }
}
await backend.shutdown()
