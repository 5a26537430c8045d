import ArgumentParser
import AsyncFsync
import NIOCore
import NIOPosix
import _NIOFileSystem
import CFloor
import Dispatch
import Foundation
import Histogram
import Synchronization
import SystemPackage

/// One measured cell: a workload, an in-flight depth and a file layout.
struct Cell: Hashable, Codable, CustomStringConvertible {
    var mode: String          // "fsync" or "fdatasync"
    var write4k: Bool
    var depth: Int            // requests in flight; writer tasks in a wal-actor cell
    var ownFiles: Bool
    /// The wal-actor workload: `depth` writers append to one log actor (see WAL.swift).
    var wal = false
    /// The durable-write workload: `depth` writers, each a 4 KiB durable write per op (DurableWrite.swift).
    var durable = false

    var description: String {
        if wal { return "wal-actor, \(depth) writer\(depth == 1 ? "" : "s")" }
        if durable { return "durable-write 4 KiB, depth \(depth)" + (depth > 1 ? (ownFiles ? ", own files" : ", one file") : "") }
        return "\(write4k ? "pwrite 4 KiB + " : "")\(mode) (clean file)".replacingOccurrences(of: " (clean file)", with: write4k ? "" : " clean")
            + ", depth \(depth)" + (depth > 1 ? (ownFiles ? ", own files" : ", one file") : "")
    }
}

/// What a method measured in a cell, summed over rounds.
struct Measurement: Codable {
    var method: String
    var cell: Cell
    var ops = 0
    var seconds = 0.0
    var cpuSeconds = 0.0
    var clones = 0
    var contextSwitches = 0
    var syncs = 0
    var latency = Histogram<UInt64>(numberOfSignificantValueDigits: .three)
    /// Why the method failed in this cell (durable-write cells: reported as an error row, not run again).
    var error: String?

    var opsPerSecond: Double { seconds > 0 ? Double(ops) / seconds : 0 }
    func percentile(_ p: Double) -> Double { Double(latency.valueAtPercentile(p)) / 1000 }
    var meanMicros: Double { latency.mean / 1000 }
    var cpuMicrosPerOp: Double { ops > 0 ? cpuSeconds * 1e6 / Double(ops) : 0 }
    var clonesPerOp: Double { ops > 0 ? Double(clones) / Double(ops) : 0 }
    /// Voluntary and involuntary context switches of this process's threads per op (getrusage).
    var contextSwitchesPerOp: Double { ops > 0 ? Double(contextSwitches) / Double(ops) : 0 }
    /// Syncs that reached the kernel per acknowledged request (group commit only; 0 = not counted).
    var syncsPerOp: Double { ops > 0 ? Double(syncs) / Double(ops) : 0 }

    enum CodingKeys: String, CodingKey { case method, cell, ops, seconds, cpuSeconds, clones }
    init(method: String, cell: Cell) { self.method = method; self.cell = cell }
    init(from decoder: any Decoder) throws { fatalError("not decoded") }
    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(method, forKey: .method)
        try c.encode(cell, forKey: .cell)
        try c.encode(ops, forKey: .ops)
        try c.encode(seconds, forKey: .seconds)
        try c.encode(cpuSeconds, forKey: .cpuSeconds)
        try c.encode(clones, forKey: .clones)
    }
}

enum Method: String, CaseIterable {
    case cBlocking = "c-blocking", cLibaio = "c-libaio", cPosix = "c-posix"
    case runtimeFloor = "runtime-floor", runtimeFloorExecutor = "runtime-floor-executor"
    case blocking, libaio, posix, auto
    case libaioExecutor = "libaio-executor", posixExecutor = "posix-executor"
    case taskBlocking = "task-blocking", dispatch
    case nioThreadPool = "nio-threadpool", nioFileSystem = "nio-fs"
    case groupCommit = "group-commit"
    // The wal-actor workload (WAL.swift): one actor owns the log; its append syncs with …
    case walBlocking = "wal-blocking", walBackend = "wal-backend", walGroupCommit = "wal-group-commit"
    case walSerialExecutor = "wal-serial-executor", walSerialGroupCommit = "wal-serial-group-commit"
    case walSerialWriters = "wal-serial-writers"
    // The durable-write workload (DurableWrite.swift) also runs c-libaio, task-blocking,
    // nio-threadpool and posix, each as a 4 KiB durable write (`durableSummary`).
    case cThreads = "c-threads", cDirectDsync = "c-direct-dsync", threads
    case buffered, direct, directExecutor = "direct-executor", writeThenSync = "write-then-sync"
    case bufferedExecutor = "buffered-executor"

    var summary: String {
        switch self {
        case .cBlocking: "C: fsync(2) in a loop (QD1)"
        case .cLibaio: "C: libaio io_submit of all ready + io_getevents(min 1)"
        case .cPosix: "C: aio_fsync + aio_suspend + aio_error"
        case .blocking: "Swift: fsync(2) on dedicated threads, one per request slot"
        case .libaio: "this library, LibaioBackend (inline path off), one task per slot"
        case .posix: "this library, PosixAIOBackend (inline path off), one task per slot"
        case .auto: "this library, AsyncSync.makeBackend() (tmpfs/ramfs synced inline)"
        case .libaioExecutor: "this library, LibaioBackend; the tasks prefer backend.taskExecutor (run on its completion thread)"
        case .posixExecutor: "this library, PosixAIOBackend; the tasks prefer backend.taskExecutor"
        case .taskBlocking: "Swift today: the blocking call inside a Task (parks a cooperative thread)"
        case .dispatch: "Swift today: DispatchQueue.global().async { fsync } + continuation"
        case .nioThreadPool: "Swift today: SwiftNIO NIOThreadPool.singleton.runIfActive { fsync } (\(NIOSingletons.blockingPoolThreadCountSuggestion) threads)"
        case .nioFileSystem: "Swift today: SwiftNIO NIOFileSystem ReadWriteFileHandle.synchronize() (same pool)"
        case .groupCommit: "this library, GroupCommit over AsyncSync.makeBackend() (syncs shared per file; compare with auto)"
        case .runtimeFloor: "Swift runtime floor: the same task loop, each request completed at once by a C thread (mutex + condvar, no syscall)"
        case .walBlocking: "wal-actor: the log actor calls fdatasync(2) itself (blocks its thread; no reentrancy)"
        case .walBackend: "wal-actor: the log actor awaits backend.sync (AsyncSync.makeBackend())"
        case .walGroupCommit: "wal-actor: the log actor awaits GroupCommit(wrapping: AsyncSync.makeBackend())"
        case .walSerialExecutor: "wal-actor: the log actor runs on backend.preferredSerialExecutor (the completion thread) and awaits backend.sync"
        case .walSerialGroupCommit: "wal-actor: the log actor on backend.preferredSerialExecutor, syncing through GroupCommit"
        case .walSerialWriters: "wal-actor: as wal-serial-executor, and the writer tasks prefer backend.preferredTaskExecutor (all on the completion thread)"
        case .runtimeFloorExecutor: "Swift runtime floor of the *-executor methods: the tasks prefer that C thread as their task executor"
        case .cThreads, .cDirectDsync, .threads, .buffered, .bufferedExecutor, .direct, .directExecutor, .writeThenSync: durableSummary
        }
    }

    /// The C method this one is compared with.
    var floor: Method {
        switch self {
        case .posix, .cPosix, .posixExecutor: .cPosix
        case .blocking, .cBlocking, .taskBlocking, .dispatch, .nioThreadPool, .nioFileSystem: .cBlocking
        default: .cLibaio
        }
    }

    /// The methods whose cost is this library's: their overhead above the runtime floor is reported.
    var isLibrary: Bool {
        switch self {
        case .libaio, .posix, .auto, .libaioExecutor, .posixExecutor, .groupCommit: true
        default: false
        }
    }

    /// A method of the wal-actor workload (its cells only).
    var isWAL: Bool {
        switch self {
        case .walBlocking, .walBackend, .walGroupCommit, .walSerialExecutor, .walSerialGroupCommit, .walSerialWriters: true
        default: false
        }
    }

    /// The runtime floor this library method is compared with.
    var runtimeFloor: Method {
        switch self {
        case .libaioExecutor, .posixExecutor, .bufferedExecutor, .directExecutor: .runtimeFloorExecutor
        default: .runtimeFloor
        }
    }

    /// A durable-write method whose cost is this library's: its CPU per op above the runtime
    /// floor is reported.
    var isDurableLibrary: Bool {
        switch self {
        case .buffered, .bufferedExecutor, .direct, .directExecutor, .writeThenSync, .posix: true
        default: false
        }
    }
}

enum Workload: String, CaseIterable {
    case sync, walActor = "wal-actor", durableWrite = "durable-write", all
}

/// The workloads of a run: `--workload sync,durable-write`; `all` is every one.
struct Workloads: ExpressibleByArgument {
    var selected: Set<Workload>

    init(_ selected: Set<Workload>) { self.selected = selected }

    init?(argument: String) {
        var selected: Set<Workload> = []
        for name in argument.split(separator: ",") {
            guard let workload = Workload(rawValue: name.trimmingCharacters(in: .whitespaces)) else { return nil }
            if workload == .all { selected.formUnion([.sync, .walActor, .durableWrite]) } else { selected.insert(workload) }
        }
        guard !selected.isEmpty else { return nil }
        self.selected = selected
    }

    var defaultValueDescription: String { Workload.allCases.filter { selected.contains($0) }.map(\.rawValue).joined(separator: ",") }
    static var allValueStrings: [String] { Workload.allCases.map(\.rawValue) }

    func contains(_ workload: Workload) -> Bool { selected.contains(workload) }
}

@main
struct AsyncFsyncBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "asyncfsync-bench",
        abstract: "Compares the backends of swift-async-fsync with a C floor, blocking calls and common Swift offloads.")

    @Option(help: "Directory for the scratch files (default: a scratch directory under the current directory, removed afterwards).")
    var dir: String?

    @Option(parsing: .upToNextOption, help: "In-flight depths.")
    var depths: [Int] = [1, 16, 64, 256]

    @Option(help: "Seconds per method and cell in each round.")
    var seconds: Double = 0.4

    @Option(help: "Rounds; methods are interleaved in every round so drift cancels.")
    var rounds: Int = 2

    @Option(help: "Comma-separated methods to run (default: all): \(Method.allCases.map(\.rawValue).joined(separator: ","))")
    var filter: String?

    @Option(help: "Comma-separated parts of cell names to run (default: all), e.g. \"depth 16,own files\"; a cell runs when its name contains every one of them.")
    var cells: String?

    @Option(help: "A cell by its exact name as the report prints it, e.g. \"fsync clean, depth 16, own files\" (repeatable; applies together with --cells).")
    var cell: [String] = []

    @Flag(help: "Print the names of the cells the other options select, one per line, and exit.")
    var listCells = false

    @Flag(help: "A short run: depths 1, 16 and 256, 0.3 s, one round (the sync workload alone: under a minute; durable-write cells keep --durable-seconds when given).")
    var quick = false

    @Option(help: "Delay window of the group-commit method, in microseconds (GroupCommit's delay).")
    var groupDelayUs: Int = 0

    @Option(help: "Also write every figure as JSON to this file.")
    var json: String?

    @Flag(help: "Every workload: fsync and fdatasync, each of a clean file and after a 4 KiB pwrite (default: fsync of a clean file, 4 KiB pwrite + fdatasync).")
    var allWorkloads = false

    @Option(help: "Workloads, comma-separated: sync (the default: N tasks, each syncing in a loop), wal-actor (N writers appending to one log actor, each append a \(walRecordSize)-byte pwrite at the end + fdatasync), durable-write (N writers, each op one 4 KiB write made durable, at every --depths value, one file and own files) or all (all three; before durable-write existed, all was sync,wal-actor). scripts/bench without --workload, --filter, --cells or --cell runs sync,durable-write.")
    var workload = Workloads([.sync])

    @Option(help: "Seconds per method and cell in each round for the durable-write cells (default: --seconds).")
    var durableSeconds: Double?

    @Option(parsing: .upToNextOption, help: "Writer tasks of the wal-actor workload.")
    var writers: [Int] = [1, 16, 64]

    @Option(help: "Also write a plot of ops/s against depth per method as SVG to this file.")
    var svg: String?

    mutating func run() async throws {
        if quick { depths = [1, 16, 256]; seconds = 0.3; rounds = 1 }
        let methods = try selectedMethods()

        var cells: [Cell] = []
        let wanted = self.cells?.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        let workloads = !workload.contains(.sync) ? [] : allWorkloads
            ? [("fsync", false), ("fdatasync", false), ("fsync", true), ("fdatasync", true)]
            : [("fsync", false), ("fdatasync", true)]
        for (mode, write) in workloads {
            for depth in depths {
                cells.append(Cell(mode: mode, write4k: write, depth: depth, ownFiles: false))
                if depth > 1 { cells.append(Cell(mode: mode, write4k: write, depth: depth, ownFiles: true)) }
            }
        }
        if workload.contains(.walActor) {
            for count in writers { cells.append(Cell(mode: "fdatasync", write4k: false, depth: count, ownFiles: false, wal: true)) }
        }
        if workload.contains(.durableWrite) {
            for depth in depths {
                cells.append(Cell(mode: "fdatasync", write4k: true, depth: depth, ownFiles: false, durable: true))
                if depth > 1 { cells.append(Cell(mode: "fdatasync", write4k: true, depth: depth, ownFiles: true, durable: true)) }
            }
        }
        // Cells none of the selected methods applies to are left out (e.g. --filter of sync methods only).
        cells = cells.filter { cell in methods.contains { applies($0, to: cell) } }
        if let wanted {
            cells = cells.filter { cell in wanted.allSatisfy { cell.description.contains($0) } }
            guard !cells.isEmpty else { throw ValidationError("--cells \(self.cells ?? "") matches no cell") }
        }
        if !cell.isEmpty {
            for name in cell where !cells.contains(where: { $0.description == name }) {
                throw ValidationError("--cell \(name) is no cell of this run; --list-cells prints them")
            }
            cells = cells.filter { cell.contains($0.description) }
        }
        if listCells {
            for cell in cells { print(cell) }
            return
        }
        let (directory, remove) = try scratchDirectory()
        defer { if remove { try? FileManager.default.removeItem(atPath: directory) } }
        let probes = await AsyncSync.probe(directory: FilePath(directory))
        let isTerminal = isatty(STDERR_FILENO) != 0
        var results: [String: Measurement] = [:]
        let total = rounds * cells.reduce(0) { count, cell in count + methods.filter { applies($0, to: cell) }.count }
        var done = 0
        for round in 1...rounds {
            for cell in cells {
                let files = try Files(directory: directory, count: cell.wal || cell.durable ? 0 : cell.ownFiles ? cell.depth : 1)
                defer { files.close() }
                // Durable-write cells: files preallocated (written and synced) once per cell and
                // round, before any method runs, so every method overwrites the same blocks.
                let durableFiles = cell.durable ? try DurableFiles(directory: directory, cell: cell) : nil
                defer { durableFiles?.close() }
                for method in orderedMethods(methods, for: cell) where applies(method, to: cell) {
                    done += 1
                    let line = "round \(round)/\(rounds) [\(done)/\(total)] \(method.rawValue) · \(cell)"
                    FileHandle.standardError.write(Data((isTerminal ? "\r\u{1B}[K" + line : line + "\n").utf8))
                    let key = "\(method.rawValue)|\(cell)"
                    var measurement = results[key] ?? Measurement(method: method.rawValue, cell: cell)
                    if cell.wal {
                        try await measureWAL(method, cell: cell, directory: directory, into: &measurement)
                    } else if let durableFiles {
                        // A failing method is an error row, not the end of the run; it is not run again.
                        if measurement.error == nil {
                            do {
                                try await measureDurable(method, cell: cell, files: durableFiles, into: &measurement)
                            } catch {
                                measurement.error = describe(error)
                            }
                        }
                    } else {
                        try await measure(method, cell: cell, files: files, into: &measurement)
                    }
                    results[key] = measurement
                }
            }
        }
        if isTerminal { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
        report(results, cells: cells, methods: methods, directory: directory, probes: probes)
        if let json { try writeJSON(results, cells: cells, probes: probes, to: json) }
        let plotted = cells.filter { !$0.wal && !$0.durable }
        if let svg, !plotted.isEmpty {
            try writeSVG(results, cells: plotted, methods: methods.filter { method in plotted.contains { applies(method, to: $0) } },
                         directory: directory, to: svg)
        }
        let failed = cells.flatMap { cell in
            orderedMethods(methods, for: cell).compactMap { method in
                results["\(method.rawValue)|\(cell)"].flatMap { m in m.error.map { "\(method.rawValue) · \(cell): \($0)" } }
            }
        }
        if !failed.isEmpty {
            FileHandle.standardError.write(Data(("asyncfsync-bench: \(failed.count) method×cell\(failed.count == 1 ? "" : "s") failed (ERROR rows in the report):\n"
                + failed.map { "  \($0)\n" }.joined()).utf8))
            throw ExitCode(1)
        }
    }

    func selectedMethods() throws -> [Method] {
        guard let filter else { return Method.allCases }
        return try filter.split(separator: ",").map { name in
            guard let method = Method(rawValue: String(name)) else {
                throw ValidationError("unknown method \(name); known: \(Method.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return method
        }
    }

    func applies(_ method: Method, to cell: Cell) -> Bool {
        if cell.wal || method.isWAL { return cell.wal && method.isWAL }
        if cell.durable { return Method.durableMethods.contains(method) }
        if Method.durableOnly.contains(method) { return false }
        return method != .cBlocking || cell.depth == 1
    }

    /// The order in which a cell's methods run (interleaved in every round) and are printed.
    func orderedMethods(_ methods: [Method], for cell: Cell) -> [Method] {
        cell.durable ? Method.durableMethods.filter(methods.contains) : methods
    }

    func scratchDirectory() throws -> (String, Bool) {
        if let dir { return (dir, false) }
        let path = FileManager.default.currentDirectoryPath + "/asyncfsync-bench-scratch-\(getpid())"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return (path, true)
    }

    func measure(_ method: Method, cell: Cell, files: Files, into m: inout Measurement) async throws {
        let mode: SyncMode = cell.mode == "fsync" ? .fsync : .fdatasync
        // NIOFileSystem syncs through its own handles: opened (on its pool) before the clock starts.
        var handles: [ReadWriteFileHandle] = []
        if method == .nioFileSystem {
            for path in files.paths {
                handles.append(try await FileSystem.shared.openFile(
                    forReadingAndWritingAt: FilePath(path), options: .modifyFile(createIfNecessary: false)))
            }
        }
        // Only the request loop is timed (`Loop.window`): creating and shutting down a backend,
        // io_setup and io_destroy (which waits for an RCU grace period: 28-43 ms here) are not part
        // of a sync's cost, and the C floor is timed the same way.
        let clonesBefore = systemClones()
        var loop = Loop()
        switch method {
        case .cBlocking, .cLibaio, .cPosix:
            let cMethod: Int32 = method == .cBlocking ? 0 : method == .cLibaio ? 1 : 2
            let capacity = 2_000_000
            let samples = UnsafeMutablePointer<UInt64>.allocate(capacity: capacity)
            defer { samples.deallocate() }
            var recorded = 0
            let raw = files.descriptors.map(\.rawValue)
            let result = raw.withUnsafeBufferPointer {
                cfloor_run(cMethod, mode == .fdatasync ? 1 : 0, cell.write4k ? 1 : 0, Int32(cell.depth),
                           $0.baseAddress, Int32($0.count), seconds, &loop.window, samples, capacity, &recorded)
            }
            guard result >= 0 else { throw Errno(rawValue: Int32(-result)) }
            loop.ops = result
            loop.samples = [Array(UnsafeBufferPointer(start: samples, count: recorded))]
        case .blocking:
            loop = runThreads(depth: cell.depth, cell: cell, files: files, mode: mode)
        case .libaio, .posix, .auto:
            let backend: any AsyncSyncBackend = switch method {
            // The mechanisms themselves, compared with their C floors; `auto` is what a user gets,
            // including the inline path on tmpfs/ramfs (docs/selection.md).
            case .libaio: try LibaioBackend(inlineMemoryFileSystems: false)
            case .posix: try PosixAIOBackend(inlineMemoryFileSystems: false)
            default: try await AsyncSync.makeBackend()
            }
            loop = try await runTasks(cell: cell, files: files) { fd, _ in try await backend.sync(fd, mode: mode) }
            await backend.shutdown()
        case .libaioExecutor, .posixExecutor:
            let libaio = method == .libaioExecutor ? try LibaioBackend(inlineMemoryFileSystems: false) : nil
            let posix = method == .posixExecutor ? try PosixAIOBackend(inlineMemoryFileSystems: false) : nil
            let backend: any AsyncSyncBackend = libaio ?? posix!
            let executor = libaio?.taskExecutor ?? posix!.taskExecutor
            loop = try await runTasks(cell: cell, files: files, executor: executor) { fd, _ in
                try await backend.sync(fd, mode: mode)
            }
            await backend.shutdown()
        case .groupCommit:
            let counting = CountingBackend(try await AsyncSync.makeBackend())
            let group = GroupCommit(wrapping: counting, delay: .microseconds(groupDelayUs))
            loop = try await runTasks(cell: cell, files: files) { fd, _ in try await group.sync(fd, mode: mode) }
            await group.shutdown()
            m.syncs += counting.count.withLock { $0 }
        case .runtimeFloor, .runtimeFloorExecutor:
            let floor = try RuntimeFloor(depth: cell.depth)
            loop = try await runTasks(cell: cell, files: files, executor: method == .runtimeFloorExecutor ? floor : nil) { _, slot in
                await floor.complete(slot: slot)
            }
            floor.stop()
        case .taskBlocking:
            loop = try await runTasks(cell: cell, files: files) { fd, _ in try blockingSync(fd, mode) }
        case .dispatch:
            loop = try await runTasks(cell: cell, files: files) { fd, _ in
                try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                    DispatchQueue.global().async {
                        continuation.resume(with: Result { try blockingSync(fd, mode) })
                    }
                }
            }
        case .nioThreadPool:
            loop = try await runTasks(cell: cell, files: files) { fd, _ in
                try await NIOThreadPool.singleton.runIfActive { try blockingSync(fd, mode) }
            }
        case .nioFileSystem:
            let byDescriptor = Dictionary(uniqueKeysWithValues: zip(files.descriptors.map(\.rawValue), handles))
            loop = try await runTasks(cell: cell, files: files) { fd, _ in
                // NIOFileSystem has fsync only (no fdatasync): both workloads use synchronize().
                try await byDescriptor[fd.rawValue]!.synchronize()
            }
        case .walBlocking, .walBackend, .walGroupCommit, .walSerialExecutor, .walSerialGroupCommit, .walSerialWriters:
            preconditionFailure("\(method) runs in wal-actor cells only (measureWAL)")
        case .cThreads, .cDirectDsync, .threads, .buffered, .bufferedExecutor, .direct, .directExecutor, .writeThenSync:
            preconditionFailure("\(method) runs in durable-write cells only (measureDurable)")
        }
        for handle in handles { try? await handle.close() }
        m.add(loop)
        m.clones += systemClones() - clonesBefore
    }

    /// Keeps `cell.depth` requests in flight, one task per slot, until the deadline: each request is
    /// the 4 KiB write of write cells, then `sync(fd, slot)`.
    func runTasks(
        cell: Cell, files: Files, executor: (any TaskExecutor)? = nil,
        _ sync: @escaping @Sendable (_ fd: FileDescriptor, _ slot: Int) async throws -> Void
    ) async throws -> Loop {
        let write4k = cell.write4k
        let descriptors = files.descriptors
        return try await runSlots(cell.depth, executor: executor) { slot, sequence in
            let fd = descriptors[slot % descriptors.count]
            if write4k { try writeBlock(fd, sequence: sequence * 64 + slot) }
            try await sync(fd, slot)
        }
    }

    /// Runs `slots` tasks on the cooperative pool (or preferring `executor`), each calling
    /// `request(slot, its sequence number)` in a loop until the deadline (`seconds`, default
    /// `--seconds`) and timing each call. Each task keeps its latencies in a plain array (one
    /// histogram per task would cost far more than a sync at depth 256); they are recorded into one
    /// histogram after the window closes.
    func runSlots(
        _ slots: Int, seconds: Double? = nil, executor: (any TaskExecutor)? = nil,
        _ request: @escaping @Sendable (_ slot: Int, _ sequence: Int) async throws -> Void
    ) async throws -> Loop {
        var loop = Loop()
        cfloor_take_snapshot(&loop.window.begin)
        let deadline = loop.window.begin.ns + UInt64((seconds ?? self.seconds) * 1e9)
        loop.samples = try await withThrowingTaskGroup(of: [UInt64].self) { group in
            for slot in 0..<slots {
                group.addTask(executorPreference: executor) {
                    var samples: [UInt64] = []
                    samples.reserveCapacity(1024)
                    while monotonicNanoseconds() < deadline {
                        let begin = monotonicNanoseconds()
                        try await request(slot, samples.count)
                        samples.append(monotonicNanoseconds() - begin)
                    }
                    return samples
                }
            }
            var all: [[UInt64]] = []
            for try await samples in group { all.append(samples) }
            return all
        }
        cfloor_take_snapshot(&loop.window.end)
        loop.ops = loop.samples.reduce(0) { $0 + $1.count }
        return loop
    }

    /// Keeps `depth` blocking syncs in flight, one dedicated thread per slot, until the deadline.
    /// The threads are started before the window opens and wait for it.
    func runThreads(depth: Int, cell: Cell, files: Files, mode: SyncMode) -> Loop {
        let results = ResultBox()
        let finished = DispatchSemaphore(value: 0)
        let go = DispatchSemaphore(value: 0)
        let deadline = Mutex<UInt64>(0)
        let ready = DispatchSemaphore(value: 0)
        for slot in 0..<depth {
            let fd = files.descriptors[slot % files.descriptors.count]
            let write4k = cell.write4k
            let thread = Thread {
                ready.signal()
                go.wait()
                let deadline = deadline.withLock { $0 }
                var samples: [UInt64] = []
                samples.reserveCapacity(1024)
                while monotonicNanoseconds() < deadline {
                    let begin = monotonicNanoseconds()
                    if write4k { try? writeBlock(fd, sequence: samples.count * 64 + slot) }
                    try? blockingSync(fd, mode)
                    samples.append(monotonicNanoseconds() - begin)
                }
                results.add(samples)
                finished.signal()
            }
            thread.start()
        }
        for _ in 0..<depth { ready.wait() }
        var loop = Loop()
        cfloor_take_snapshot(&loop.window.begin)
        deadline.withLock { $0 = loop.window.begin.ns + UInt64(seconds * 1e9) }
        for _ in 0..<depth { go.signal() }
        for _ in 0..<depth { finished.wait() }
        cfloor_take_snapshot(&loop.window.end)
        loop.samples = results.value
        loop.ops = loop.samples.reduce(0) { $0 + $1.count }
        return loop
    }
}

/// What a request loop did: its window (snapshots just before the first request and just after
/// the last completion), the requests it completed and their latencies (nanoseconds).
struct Loop {
    var ops = 0
    var window = cfloor_window()
    var samples: [[UInt64]] = []
}

extension Measurement {
    mutating func add(_ loop: Loop) {
        let begin = loop.window.begin, end = loop.window.end
        ops += loop.ops
        seconds += Double(end.ns - begin.ns) / 1e9
        cpuSeconds += Double(end.cpu_us - begin.cpu_us) / 1e6
        contextSwitches += end.context_switches - begin.context_switches
        for list in loop.samples { for sample in list { _ = latency.record(sample) } }
    }
}

/// The runtime floor: what Swift's runtime costs any completion-driven backend here, with no I/O.
///
/// A request stores its task's continuation in the slot of its task and hands the slot number to
/// a dedicated pthread (C, `cfloor_completer_*`: a queue under a mutex, a condition variable
/// signalled only when the thread sleeps); the thread takes everything queued and resumes each
/// continuation (`handle`), which puts the task back on the cooperative pool. The same hand-offs
/// as a backend's completion thread — suspend, cross-thread queue, wake-up, resume, hop to a pool
/// thread — without a system call or any work of its own.
///
/// It is also a task executor on that thread (`runtime-floor-executor`, the floor of the
/// `*-executor` methods): jobs go to the same queue, tagged, and the thread runs them, so a task
/// resumed there goes on there.
final class RuntimeFloor: TaskExecutor, @unchecked Sendable {
    private typealias Slot = UnsafeContinuation<Void, Never>?
    private let slots: UnsafeMutablePointer<Slot>
    private var completer: OpaquePointer?

    init(depth: Int) throws {
        precondition(MemoryLayout<UnownedJob>.size == MemoryLayout<Int>.size)
        slots = .allocate(capacity: depth)
        slots.initialize(repeating: nil, count: depth)
        let handle: @convention(c) (UnsafeMutableRawPointer?, Int) -> Void = { context, item in
            Unmanaged<RuntimeFloor>.fromOpaque(context!).takeUnretainedValue().handle(item)
        }
        completer = cfloor_completer_start(depth, handle, Unmanaged.passUnretained(self).toOpaque())
        guard completer != nil else {
            slots.deallocate()
            throw Errno(rawValue: ENOMEM)
        }
    }

    /// On the completer thread. Items: a slot number × 2 (resume that slot's task), or a job's
    /// address + 1 (run it here; jobs are aligned).
    private func handle(_ item: Int) {
        if item & 1 == 1 {
            unsafeBitCast(item & ~1, to: UnownedJob.self).runSynchronously(on: asUnownedTaskExecutor())
        } else {
            let slot = slots + item >> 1
            let continuation = slot.pointee!
            slot.pointee = nil
            continuation.resume()
        }
    }

    /// Suspends the task until the completer thread resumes it. The slot is the caller's own: one
    /// request per slot at a time. (The mutex of the queue orders the store before the load.)
    func complete(slot: Int) async {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            slots[slot] = continuation
            cfloor_completer_submit(completer, slot << 1)
        }
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let address = unsafeBitCast(UnownedJob(job), to: Int.self)
        precondition(address & 1 == 0)
        cfloor_completer_submit(completer, address | 1)
    }

    /// Joins the thread; call once, when no request is in flight and no task prefers it.
    func stop() {
        cfloor_completer_stop(completer)
        completer = nil
        slots.deallocate()
    }
}

/// Counts the syncs that reach the wrapped backend.
final class CountingBackend: AsyncSyncBackend {
    let wrapped: any AsyncSyncBackend
    let count = Mutex(0)
    var kind: BackendKind { wrapped.kind }
    init(_ wrapped: any AsyncSyncBackend) { self.wrapped = wrapped }
    func sync(_ fd: FileDescriptor, mode: SyncMode) async throws {
        count.withLock { $0 += 1 }
        try await wrapped.sync(fd, mode: mode)
    }
    func shutdown() async { await wrapped.shutdown() }
}

final class ResultBox: @unchecked Sendable {
    private let lock = NSLock()
    private var samples: [[UInt64]] = []
    func add(_ samples: [UInt64]) {
        lock.lock(); defer { lock.unlock() }
        self.samples.append(samples)
    }
    var value: [[UInt64]] {
        lock.lock(); defer { lock.unlock() }
        return samples
    }
}

/// The scratch files of a cell.
struct Files {
    var descriptors: [FileDescriptor]
    var paths: [String]

    init(directory: String, count: Int) throws {
        paths = (0..<count).map { "\(directory)/bench-\($0)" }
        descriptors = try paths.map { path in
            let fd = try FileDescriptor.open(FilePath(path), .readWrite, options: [.create, .truncate], permissions: [.ownerReadWrite])
            try fd.writeAll([UInt8](repeating: 0x5a, count: blocksPerFile * 4096))
            _ = fsync(fd.rawValue)
            return fd
        }
    }

    func close() {
        for fd in descriptors { try? fd.close() }
        for path in paths { unlink(path) }
    }
}

let block = [UInt8](repeating: 0x5a, count: 4096)
/// Each scratch file holds 64 blocks (256 KiB); the 4 KiB writes overwrite them in turn, so no write
/// extends a file (the C floor does the same).
let blocksPerFile = 64

func writeBlock(_ fd: FileDescriptor, sequence: Int) throws {
    _ = try block.withUnsafeBytes { try fd.write(toAbsoluteOffset: Int64(sequence % blocksPerFile) * 4096, $0) }
}

func blockingSync(_ fd: FileDescriptor, _ mode: SyncMode) throws {
    let result = mode == .fsync ? fsync(fd.rawValue) : fdatasync(fd.rawValue)
    if result != 0 { throw Errno(rawValue: errno) }
}

/// Processes and threads created on the whole machine so far (`processes` in /proc/stat).
func systemClones() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
          let line = text.split(separator: "\n").first(where: { $0.hasPrefix("processes ") }) else { return 0 }
    return Int(line.split(separator: " ")[1]) ?? 0
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `cfloor_take_snapshot` and of the C floor's latencies.
@inline(__always)
func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
}
