import Foundation

/// A target of issue 17 checked in one durable-write cell. `met` is nil when a method it needs
/// did not run or failed in that cell; a miss carries its size.
struct DurableTarget {
    var cell: Cell
    var text: String
    var measured: String?
    var met: Bool?
    var note: String

    var line: String { "\(text): \(measured.map { "\($0) — " } ?? "")\(note)" }
}

extension AsyncFsyncBench {
    /// The figures of `method` in `cell`, or why there are none.
    private func figures(_ results: [String: Measurement], _ method: Method, _ cell: Cell) -> (Measurement?, String) {
        guard let m = results["\(method.rawValue)|\(cell)"] else { return (nil, "\(method.rawValue) not run") }
        if m.error != nil { return (nil, "\(method.rawValue) failed") }
        if m.ops == 0 { return (nil, "\(method.rawValue) completed no op") }
        return (m, "")
    }

    /// Checks `check(method's figures, floor's figures)` → (measured, met, size of a miss).
    private func target(
        _ results: [String: Measurement], _ cell: Cell, _ text: String, _ method: Method, _ floor: Method,
        _ check: (Measurement, Measurement) -> (measured: String, met: Bool, miss: String)
    ) -> DurableTarget {
        let (m, whyM) = figures(results, method, cell)
        let (f, whyF) = figures(results, floor, cell)
        guard let m, let f else {
            return DurableTarget(cell: cell, text: text, measured: nil, met: nil,
                                 note: "NOT MEASURED (" + [whyM, whyF].filter { !$0.isEmpty }.joined(separator: ", ") + ")")
        }
        let result = check(m, f)
        return DurableTarget(cell: cell, text: text, measured: result.measured, met: result.met,
                             note: result.met ? "met" : "MISSED by \(result.miss)")
    }

    private func ratio(_ results: [String: Measurement], _ cell: Cell, _ method: Method, atLeast bound: Double, of floor: Method) -> DurableTarget {
        target(results, cell, "\(method.rawValue) ≥ \(String(format: "%.1f", bound))× \(floor.rawValue)", method, floor) { m, f in
            let ratio = m.opsPerSecond / f.opsPerSecond
            return (String(format: "%.2f×", ratio), ratio >= bound, String(format: "%.2f×", bound - ratio))
        }
    }

    /// The targets of issue 17 that concern `cell` (none for most cells).
    func durableTargets(_ results: [String: Measurement], cell: Cell) -> [DurableTarget] {
        guard cell.durable else { return [] }
        var targets: [DurableTarget] = []
        if cell.depth == 64 && cell.ownFiles {
            targets.append(ratio(results, cell, .direct, atLeast: 1.0, of: .cThreads))
            targets.append(ratio(results, cell, .direct, atLeast: 0.9, of: .cDirectDsync))
            targets.append(target(results, cell, "direct CPU/op ≤ c-threads CPU/op", .direct, .cThreads) { m, f in
                (String(format: "%.1f µs against %.1f µs", m.cpuMicrosPerOp, f.cpuMicrosPerOp), m.cpuMicrosPerOp <= f.cpuMicrosPerOp,
                 String(format: "%.1f µs", m.cpuMicrosPerOp - f.cpuMicrosPerOp))
            })
        }
        if (16...256).contains(cell.depth) {
            targets.append(ratio(results, cell, .buffered, atLeast: 0.9, of: .cLibaio))
        }
        if !cell.ownFiles && (cell.depth == 16 || cell.depth == 64) {
            targets.append(ratio(results, cell, .buffered, atLeast: 2.0, of: .cThreads))
        }
        if cell.depth == 1 {
            targets.append(target(results, cell, "direct-executor mean ≤ c-direct-dsync mean + 20 µs", .directExecutor, .cDirectDsync) { m, f in
                (String(format: "%.1f µs against %.1f + 20 µs", m.meanMicros, f.meanMicros), m.meanMicros <= f.meanMicros + 20,
                 String(format: "%.1f µs", m.meanMicros - f.meanMicros - 20))
            })
        }
        return targets
    }

    /// The table of a durable-write cell, error rows included, then the targets that concern it.
    func reportDurable(_ results: [String: Measurement], cell: Cell, methods: [Method]) {
        print("method".padding(toLength: 23, withPad: " ", startingAt: 0)
              + ["ops/s", "mean", "p50", "p99", "p99.9", "CPU/op", "CPU−rt", "csw/op", "×c-threads", "×C"].map { $0.leftPad(10) }.joined()
              + "  C")
        let cThreads = figures(results, .cThreads, cell).0?.opsPerSecond ?? 0
        for method in orderedMethods(methods, for: cell) {
            guard let m = results["\(method.rawValue)|\(cell)"] else { continue }
            let name = method.rawValue.padding(toLength: 23, withPad: " ", startingAt: 0)
            if let error = m.error {
                print(name + "ERROR: " + error)
                continue
            }
            // The runtime floors do no I/O: no ratio to a C floor. A library method's CPU per op
            // above its runtime floor (CPU−rt) is what this library itself spends.
            let noIO = method == .runtimeFloor || method == .runtimeFloorExecutor
            let floor = noIO ? 0 : figures(results, method.durableFloor, cell).0?.opsPerSecond ?? 0
            let runtime = method.isDurableLibrary ? figures(results, method.runtimeFloor, cell).0 : nil
            let columns = [
                String(format: "%.0f", m.opsPerSecond),
                String(format: "%.1f", m.meanMicros),
                String(format: "%.1f", m.percentile(50)),
                String(format: "%.1f", m.percentile(99)),
                String(format: "%.1f", m.percentile(99.9)),
                String(format: "%.1f", m.cpuMicrosPerOp),
                runtime.map { String(format: "%+.1f", m.cpuMicrosPerOp - $0.cpuMicrosPerOp) } ?? "–",
                String(format: "%.2f", m.contextSwitchesPerOp),
                cThreads > 0 && !noIO ? String(format: "%.2f", m.opsPerSecond / cThreads) : "–",
                floor > 0 ? String(format: "%.2f", m.opsPerSecond / floor) : "–",
            ]
            print(name + columns.map { $0.leftPad(10) }.joined() + "  " + (noIO ? "–" : method.durableFloor.rawValue))
        }
        let targets = durableTargets(results, cell: cell)
        if !targets.isEmpty {
            print("targets of issue 17 in this cell:")
            for target in targets { print("  " + target.line) }
        }
    }

    /// Every target of the run's durable-write cells, met, missed (with its size) or not measured.
    func reportDurableTargets(_ results: [String: Measurement], cells: [Cell]) {
        let targets = cells.flatMap { durableTargets(results, cell: $0) }
        guard !targets.isEmpty else { return }
        let met = targets.filter { $0.met == true }.count
        let missed = targets.filter { $0.met == false }.count
        let unmeasured = targets.filter { $0.met == nil }.count
        print("")
        print("## durable-write targets (issue 17): \(met) met, \(missed) missed, \(unmeasured) not measured")
        for target in targets {
            print("  \(target.cell.description.replacingOccurrences(of: "durable-write 4 KiB, ", with: "")): \(target.line)")
        }
    }

    /// The JSON fields of a durable-write row beyond the common ones.
    func durableJSON(_ m: Measurement, results: [String: Measurement]) -> [String: Any] {
        var row: [String: Any] = ["workload": "durable-write"]
        if let error = m.error { row["error"] = error }
        guard let method = Method(rawValue: m.method) else { return row }
        if method == .runtimeFloor || method == .runtimeFloorExecutor { return row }  // no I/O, no C floor
        let floor = method.durableFloor
        row["cFloorMethod"] = floor.rawValue
        if m.error == nil, let f = figures(results, floor, m.cell).0 {
            row["ratioToCFloor"] = m.opsPerSecond / f.opsPerSecond
            row["cFloorCpuMicrosPerOp"] = f.cpuMicrosPerOp
            row["cFloorMeanMicros"] = f.meanMicros
        }
        if m.error == nil, let t = figures(results, .cThreads, m.cell).0 {
            row["ratioToCThreads"] = m.opsPerSecond / t.opsPerSecond
        }
        if m.error == nil, method.isDurableLibrary, let runtime = figures(results, method.runtimeFloor, m.cell).0 {
            row["runtimeFloorMethod"] = runtime.method
            row["runtimeFloorCpuMicrosPerOp"] = runtime.cpuMicrosPerOp
            row["cpuMicrosPerOpOverRuntimeFloor"] = m.cpuMicrosPerOp - runtime.cpuMicrosPerOp
        }
        return row
    }

    func durableTargetsJSON(_ results: [String: Measurement], cells: [Cell]) -> [[String: Any]] {
        cells.flatMap { durableTargets(results, cell: $0) }.map { target in
            var row: [String: Any] = [
                "cell": target.cell.description, "depth": target.cell.depth, "ownFiles": target.cell.ownFiles,
                "target": target.text, "note": target.note,
            ]
            row["met"] = target.met.map { $0 as Any } ?? NSNull()
            if let measured = target.measured { row["measured"] = measured }
            return row
        }
    }
}
