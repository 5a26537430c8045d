import AsyncFsync
import Foundation

extension AsyncFsyncBench {
    func report(_ results: [String: Measurement], cells: [Cell], methods: [Method], directory: String, probes: [BackendProbe]) {
        let fsType = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)).map { _ in fileSystem(of: directory) } ?? "?"
        let durable = cells.filter(\.durable)
        print("asyncfsync-bench — \(directory) (\(fsType)), \(rounds) round(s) × \(seconds) s per method and cell"
              + (durable.isEmpty ? "" : " (durable-write cells: \(durableSecondsPerCell) s)"))
        for probe in probes { print("  probe \(probe)") }
        print("")
        let plain = methods.filter { method in cells.contains { !$0.durable && applies(method, to: $0) } }
        if !plain.isEmpty {
            print("Methods:")
            for method in plain { print("  \(method.rawValue.padding(toLength: 23, withPad: " ", startingAt: 0)) \(method.summary)") }
            print("")
        }
        if let first = durable.first {
            print("durable-write methods (each op: one 4 KiB write at the writer's own offset, durable as with fdatasync, before the next):")
            for method in orderedMethods(methods, for: first) {
                print("  \(method.rawValue.padding(toLength: 23, withPad: " ", startingAt: 0)) \(method.durableSummary)")
            }
            print("")
        }
        if cells.contains(where: { !$0.wal && !$0.durable }) {
            print("Columns: ops/s; latency µs (mean, p50, p99, p99.9); CPU µs per op (process);")
            print("clones/op = threads or processes created on the whole machine per op (/proc/stat); csw/op = context switches of this process per op (getrusage);")
            print("syncs/op = syncs that reached the kernel per acknowledged request (group commit);")
            print("×C = ops/s ÷ the matching C floor (libaio→c-libaio, posix→c-posix, blocking kinds→c-blocking); ×QD1 = ÷ c-blocking at depth 1.")
            print("+CPU, +mean = this library's methods over their runtime floor (runtime-floor; runtime-floor-executor for *-executor): the same task")
            print("  loop with each request completed at once by a C thread, no I/O. CPU µs per op minus the floor's; mean latency µs minus the floor's")
            print("  (it includes the I/O itself: compare with the C floor's mean).")
        }
        if cells.contains(where: \.wal) {
            print("wal-actor cells: appends/s; latency µs of an append (its pwrite + its sync); CPU µs per append; csw per append;")
            print("  ×blocking = appends/s ÷ wal-blocking's; syncs/append = syncs that reached the kernel per append (GroupCommit shares them).")
        }
        if !durable.isEmpty {
            print("durable-write cells: ops/s; latency µs of an op (write start → durable); CPU µs per op; csw per op; ×c-threads = ops/s ÷ c-threads';")
            print("  ×C = ÷ the matching C floor, named in column C (buffered, write-then-sync, posix → c-libaio; direct, direct-executor →")
            print("  c-direct-dsync; the others → c-threads). A method that failed is an ERROR row (not run again; the run exits with status 1).")
            print("  Files preallocated (written and synced) before the methods run; one file: each writer overwrites its own \(durableRegionBlocks) blocks.")
        }
        for cell in cells {
            print("")
            print("## \(cell)")
            if cell.wal {
                reportWAL(results, cell: cell, methods: methods)
                continue
            }
            if cell.durable {
                reportDurable(results, cell: cell, methods: methods)
                continue
            }
            print("method".padding(toLength: 23, withPad: " ", startingAt: 0)
                  + ["ops/s", "mean", "p50", "p99", "p99.9", "CPU/op", "clones/op", "csw/op", "×C", "+CPU", "+mean", "×QD1", "syncs/op"].map { $0.leftPad(9) }.joined())
            let qd1 = results["c-blocking|\(Cell(mode: cell.mode, write4k: cell.write4k, depth: 1, ownFiles: false))"]?.opsPerSecond ?? 0
            for method in methods {
                guard let m = results["\(method.rawValue)|\(cell)"] else { continue }
                var floor = results["\(method.floor.rawValue)|\(cell)"]?.opsPerSecond ?? 0
                let runtimeFloor = results["\(method.runtimeFloor.rawValue)|\(cell)"]
                if method.floor == .cBlocking && cell.depth > 1 { floor = 0 }
                if method == .runtimeFloor || method == .runtimeFloorExecutor { floor = 0 }  // no I/O: no C floor
                let columns = [
                    String(format: "%.0f", m.opsPerSecond),
                    String(format: "%.1f", m.meanMicros),
                    String(format: "%.1f", m.percentile(50)),
                    String(format: "%.1f", m.percentile(99)),
                    String(format: "%.1f", m.percentile(99.9)),
                    String(format: "%.1f", m.cpuMicrosPerOp),
                    String(format: "%.3f", m.clonesPerOp),
                    String(format: "%.2f", m.contextSwitchesPerOp),
                    floor > 0 ? String(format: "%.2f", m.opsPerSecond / floor) : "–",
                    method.isLibrary && runtimeFloor != nil ? String(format: "%+.1f", m.cpuMicrosPerOp - runtimeFloor!.cpuMicrosPerOp) : "–",
                    method.isLibrary && runtimeFloor != nil ? String(format: "%+.1f", m.meanMicros - runtimeFloor!.meanMicros) : "–",
                    qd1 > 0 ? String(format: "%.2f", m.opsPerSecond / qd1) : "–",
                    m.syncs > 0 ? String(format: "%.3f", m.syncsPerOp) : "–",
                ]
                print(method.rawValue.padding(toLength: 23, withPad: " ", startingAt: 0) + columns.map { $0.leftPad(9) }.joined())
            }
        }
        reportDurableTargets(results, cells: cells)
    }

    func reportWAL(_ results: [String: Measurement], cell: Cell, methods: [Method]) {
        print("method".padding(toLength: 23, withPad: " ", startingAt: 0)
              + ["appends/s", "mean", "p50", "p99", "p99.9", "CPU/op", "csw/op", "×blocking", "syncs/op"].map { $0.leftPad(10) }.joined())
        let blocking = results["\(Method.walBlocking.rawValue)|\(cell)"]?.opsPerSecond ?? 0
        for method in methods {
            guard let m = results["\(method.rawValue)|\(cell)"] else { continue }
            let columns = [
                String(format: "%.0f", m.opsPerSecond),
                String(format: "%.1f", m.meanMicros),
                String(format: "%.1f", m.percentile(50)),
                String(format: "%.1f", m.percentile(99)),
                String(format: "%.1f", m.percentile(99.9)),
                String(format: "%.1f", m.cpuMicrosPerOp),
                String(format: "%.2f", m.contextSwitchesPerOp),
                blocking > 0 ? String(format: "%.2f", m.opsPerSecond / blocking) : "–",
                String(format: "%.3f", m.syncsPerOp),
            ]
            print(method.rawValue.padding(toLength: 23, withPad: " ", startingAt: 0) + columns.map { $0.leftPad(10) }.joined())
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

    func writeJSON(_ results: [String: Measurement], cells: [Cell], probes: [BackendProbe], to path: String) throws {
        var rows: [[String: Any]] = []
        for m in results.values.sorted(by: { ($0.cell.description, $0.method) < ($1.cell.description, $1.method) }) {
            var row: [String: Any] = [
                "method": m.method, "workload": m.cell.wal ? "wal-actor" : "sync", "mode": m.cell.mode, "write4k": m.cell.write4k, "depth": m.cell.depth,
                "ownFiles": m.cell.ownFiles, "ops": m.ops, "seconds": m.seconds, "opsPerSecond": m.opsPerSecond,
                "meanMicros": m.meanMicros, "p50Micros": m.percentile(50), "p99Micros": m.percentile(99),
                "p999Micros": m.percentile(99.9), "cpuMicrosPerOp": m.cpuMicrosPerOp, "clonesPerOp": m.clonesPerOp, "contextSwitchesPerOp": m.contextSwitchesPerOp, "syncsPerOp": m.syncsPerOp,
            ]
            if m.cell.durable {
                row.merge(durableJSON(m, results: results)) { _, new in new }
                rows.append(row)
                continue
            }
            // This library's methods: against the C floor and above the runtime floor (Report).
            if let method = Method(rawValue: m.method), method.isLibrary {
                if let floor = results["\(method.floor.rawValue)|\(m.cell)"], floor.opsPerSecond > 0 {
                    row["cFloorMethod"] = floor.method
                    row["ratioToCFloor"] = m.opsPerSecond / floor.opsPerSecond
                    row["cFloorCpuMicrosPerOp"] = floor.cpuMicrosPerOp
                    row["cFloorMeanMicros"] = floor.meanMicros
                }
                if let runtime = results["\(method.runtimeFloor.rawValue)|\(m.cell)"] {
                    row["runtimeFloorMethod"] = runtime.method
                    row["runtimeFloorCpuMicrosPerOp"] = runtime.cpuMicrosPerOp
                    row["runtimeFloorMeanMicros"] = runtime.meanMicros
                    row["cpuMicrosPerOpOverRuntimeFloor"] = m.cpuMicrosPerOp - runtime.cpuMicrosPerOp
                    row["meanMicrosOverRuntimeFloor"] = m.meanMicros - runtime.meanMicros
                }
            }
            rows.append(row)
        }
        let document: [String: Any] = [
            "probes": probes.map(\.description), "rounds": rounds, "secondsPerCell": seconds, "results": rows,
            "durableWriteSecondsPerCell": durableSecondsPerCell, "durableWriteTargets": durableTargetsJSON(results, cells: cells),
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

// MARK: SVG

extension AsyncFsyncBench {
    /// One panel per workload (sync mode × clean or 4 KiB write): ops/s against in-flight depth, a
    /// line per method; solid for one shared file, dashed for one file per request slot.
    func writeSVG(_ results: [String: Measurement], cells: [Cell], methods: [Method], directory: String, to path: String) throws {
        let workloads = cells.reduce(into: [(String, Bool)]()) { list, cell in
            if !list.contains(where: { $0 == (cell.mode, cell.write4k) }) { list.append((cell.mode, cell.write4k)) }
        }
        let depths = Array(Set(cells.map(\.depth))).sorted()
        let colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                      "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#e7ba52", "#ad494a", "#a55194"]
        let panelWidth = 520.0, panelHeight = 340.0, left = 70.0, top = 60.0, legendWidth = 330.0
        let plotWidth = panelWidth - left - 20, plotHeight = panelHeight - 70
        let width = Double(workloads.count) * panelWidth + legendWidth
        let height = top + panelHeight + 20
        var svg = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" font-family="sans-serif" font-size="12">
            <rect width="100%" height="100%" fill="white"/>
            <text x="10" y="22" font-size="15" font-weight="bold">asyncfsync-bench: ops/s by in-flight depth — \(xml(directory)) (\(fileSystem(of: directory)))</text>
            <text x="10" y="42" fill="#555">solid: one shared file · dashed: one file per request slot · \(rounds) round(s) × \(seconds) s per method and cell</text>

            """
        for (index, workload) in workloads.enumerated() {
            let x0 = Double(index) * panelWidth + left, y0 = top + 20
            func key(_ method: Method, _ depth: Int, _ own: Bool) -> String {
                "\(method.rawValue)|\(Cell(mode: workload.0, write4k: workload.1, depth: depth, ownFiles: own && depth > 1))"
            }
            var peak = 1.0
            for method in methods { for depth in depths { for own in [false, true] {
                peak = max(peak, results[key(method, depth, own)]?.opsPerSecond ?? 0)
            } } }
            let scale = niceCeiling(peak)
            func px(_ depthIndex: Int) -> Double { x0 + (depths.count > 1 ? Double(depthIndex) / Double(depths.count - 1) * plotWidth : plotWidth / 2) }
            func py(_ ops: Double) -> Double { y0 + plotHeight - ops / scale * plotHeight }
            svg += "<text x=\"\(x0)\" y=\"\(y0 - 8)\" font-weight=\"bold\">\(workload.0)\(workload.1 ? " + 4 KiB pwrite" : ", clean file")</text>\n"
            for tick in 0...4 {
                let value = scale * Double(tick) / 4, y = py(value)
                svg += "<line x1=\"\(x0)\" y1=\"\(y)\" x2=\"\(x0 + plotWidth)\" y2=\"\(y)\" stroke=\"#ddd\"/>"
                svg += "<text x=\"\(x0 - 6)\" y=\"\(y + 4)\" text-anchor=\"end\">\(compact(value))</text>\n"
            }
            for (depthIndex, depth) in depths.enumerated() {
                svg += "<text x=\"\(px(depthIndex))\" y=\"\(y0 + plotHeight + 16)\" text-anchor=\"middle\">\(depth)</text>\n"
            }
            svg += "<text x=\"\(x0 + plotWidth / 2)\" y=\"\(y0 + plotHeight + 34)\" text-anchor=\"middle\">requests in flight</text>\n"
            svg += "<text x=\"\(x0 - 52)\" y=\"\(y0 + plotHeight / 2)\" transform=\"rotate(-90 \(x0 - 52) \(y0 + plotHeight / 2))\" text-anchor=\"middle\">ops/s</text>\n"
            for (methodIndex, method) in methods.enumerated() {
                let color = colors[methodIndex % colors.count]
                for own in [false, true] {
                    let points = depths.enumerated().compactMap { depthIndex, depth -> String? in
                        guard let ops = results[key(method, depth, own)]?.opsPerSecond else { return nil }
                        return "\(px(depthIndex)),\(py(ops))"
                    }
                    guard !points.isEmpty else { continue }
                    if points.count == 1 {
                        let xy = points[0].split(separator: ",")
                        svg += "<circle cx=\"\(xy[0])\" cy=\"\(xy[1])\" r=\"3\" fill=\"\(color)\"/>\n"
                    } else {
                        svg += "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\"\(own ? " stroke-dasharray=\"5,4\"" : "") points=\"\(points.joined(separator: " "))\"/>\n"
                    }
                }
            }
        }
        let legendX = Double(workloads.count) * panelWidth + 10
        for (methodIndex, method) in methods.enumerated() {
            let y = top + 30 + Double(methodIndex) * 20
            svg += "<line x1=\"\(legendX)\" y1=\"\(y - 4)\" x2=\"\(legendX + 24)\" y2=\"\(y - 4)\" stroke=\"\(colors[methodIndex % colors.count])\" stroke-width=\"3\"/>"
            svg += "<text x=\"\(legendX + 30)\" y=\"\(y)\">\(xml(method.rawValue))</text>\n"
        }
        svg += "</svg>\n"
        try svg.write(toFile: path, atomically: true, encoding: .utf8)
    }

    private func xml(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    /// 1, 2 or 5 × a power of ten at or above `value`.
    private func niceCeiling(_ value: Double) -> Double {
        let power = pow(10, floor(log10(value)))
        for step in [1.0, 2.0, 5.0, 10.0] where step * power >= value { return step * power }
        return 10 * power
    }

    private func compact(_ value: Double) -> String {
        value >= 1000 ? String(format: value.truncatingRemainder(dividingBy: 1000) == 0 ? "%.0fk" : "%.1fk", value / 1000) : String(format: "%.0f", value)
    }
}
