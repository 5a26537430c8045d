import AsyncFsync
import Foundation

extension AsyncFsyncBench {
    func report(_ results: [String: Measurement], cells: [Cell], methods: [Method], directory: String, probes: [BackendProbe]) {
        let fsType = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)).map { _ in fileSystem(of: directory) } ?? "?"
        print("asyncfsync-bench — \(directory) (\(fsType)), \(rounds) round(s) × \(seconds) s per method and cell")
        for probe in probes { print("  probe \(probe)") }
        print("")
        print("Methods:")
        for method in methods { print("  \(method.rawValue.padding(toLength: 14, withPad: " ", startingAt: 0)) \(method.summary)") }
        print("")
        print("Columns: ops/s; latency µs (mean, p50, p99, p99.9); CPU µs per op (process);")
        print("clones/op = threads or processes created on the whole machine per op (/proc/stat);")
        print("syncs/op = syncs that reached the kernel per acknowledged request (group commit);")
        print("×C = ops/s ÷ the matching C floor (libaio→c-libaio, posix→c-posix, blocking kinds→c-blocking); ×QD1 = ÷ c-blocking at depth 1.")
        for cell in cells {
            print("")
            print("## \(cell)")
            print("method".padding(toLength: 15, withPad: " ", startingAt: 0)
                  + ["ops/s", "mean", "p50", "p99", "p99.9", "CPU/op", "clones/op", "×C", "×QD1", "syncs/op"].map { $0.leftPad(10) }.joined())
            let qd1 = results["c-blocking|\(Cell(mode: cell.mode, write4k: cell.write4k, depth: 1, ownFiles: false))"]?.opsPerSecond ?? 0
            for method in methods {
                guard let m = results["\(method.rawValue)|\(cell)"] else { continue }
                var floor = results["\(method.floor.rawValue)|\(cell)"]?.opsPerSecond ?? 0
                if method.floor == .cBlocking && cell.depth > 1 { floor = 0 }
                let columns = [
                    String(format: "%.0f", m.opsPerSecond),
                    String(format: "%.1f", m.meanMicros),
                    String(format: "%.1f", m.percentile(50)),
                    String(format: "%.1f", m.percentile(99)),
                    String(format: "%.1f", m.percentile(99.9)),
                    String(format: "%.1f", m.cpuMicrosPerOp),
                    String(format: "%.3f", m.clonesPerOp),
                    floor > 0 ? String(format: "%.2f", m.opsPerSecond / floor) : "–",
                    qd1 > 0 ? String(format: "%.2f", m.opsPerSecond / qd1) : "–",
                    m.syncs > 0 ? String(format: "%.3f", m.syncsPerOp) : "–",
                ]
                print(method.rawValue.padding(toLength: 15, withPad: " ", startingAt: 0) + columns.map { $0.leftPad(10) }.joined())
            }
        }
    }

    func fileSystem(of path: String) -> String {
        var best = ("", "?")
        let mounts = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? ""
        let real = (path as NSString).resolvingSymlinksInPath
        for line in mounts.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count > 2 else { continue }
            let point = String(fields[1])
            if (real == point || real.hasPrefix(point == "/" ? "/" : point + "/")) && point.count > best.0.count {
                best = (point, String(fields[2]))
            }
        }
        return best.1
    }

    func writeJSON(_ results: [String: Measurement], probes: [BackendProbe], to path: String) throws {
        var rows: [[String: Any]] = []
        for m in results.values.sorted(by: { ($0.cell.description, $0.method) < ($1.cell.description, $1.method) }) {
            rows.append([
                "method": m.method, "mode": m.cell.mode, "write4k": m.cell.write4k, "depth": m.cell.depth,
                "ownFiles": m.cell.ownFiles, "ops": m.ops, "seconds": m.seconds, "opsPerSecond": m.opsPerSecond,
                "meanMicros": m.meanMicros, "p50Micros": m.percentile(50), "p99Micros": m.percentile(99),
                "p999Micros": m.percentile(99.9), "cpuMicrosPerOp": m.cpuMicrosPerOp, "clonesPerOp": m.clonesPerOp, "syncsPerOp": m.syncsPerOp,
            ])
        }
        let document: [String: Any] = [
            "probes": probes.map(\.description), "rounds": rounds, "secondsPerCell": seconds, "results": rows,
        ]
        let data = try JSONSerialization.data(withJSONObject: document, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: URL(fileURLWithPath: path))
    }
}

extension String {
    func leftPad(_ width: Int) -> String {
        count >= width ? " " + self : String(repeating: " ", count: width - count) + self
    }
}
