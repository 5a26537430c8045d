import AsyncFsync
import CFloor
import Foundation
import NIOCore
import NIOPosix
import Synchronization
import SystemPackage

// The durable-write workload (issue 17): each op is one 4 KiB write made durable (fdatasync
// semantics), `depth` writers each keeping one op in flight, on one shared file (each writer
// cycling over its own 4 KiB blocks) and on own files (one per writer). The files are written
// and synced before the methods run, so every op overwrites allocated blocks, alike for every
// method. The C floor (durable.c) and every Swift method write the same offsets
// (`cfloor_durable_offset`).

/// Blocks each writer cycles over (64 KiB).
let durableRegionBlocks = 16
let durableBlockSize = Int(CFLOOR_DURABLE_BLOCK)

extension Method {
    /// The methods of the durable-write workload, in the order they run and are printed.
    static let durableMethods: [Method] = [
        .cThreads, .cLibaio, .cDirectDsync, .threads, .taskBlocking, .nioThreadPool,
        .buffered, .bufferedExecutor, .direct, .directExecutor, .writeThenSync, .posix,
        .runtimeFloor, .runtimeFloorExecutor,
    ]

    /// The methods of the durable-write workload only.
    static let durableOnly: Set<Method> = [
        .cThreads, .cDirectDsync, .threads, .buffered, .bufferedExecutor, .direct, .directExecutor, .writeThenSync,
    ]

    /// What the method does in a durable-write cell.
    var durableSummary: String {
        switch self {
        case .cThreads: "C: N pthreads, each pwrite(2) + fdatasync(2)"
        case .cLibaio: "C: one thread, kernel AIO (raw syscalls): buffered pwrite(2), then IOCB_CMD_FDSYNC; N in flight"
        case .cDirectDsync: "C: one thread, kernel AIO: O_DIRECT file, IOCB_CMD_PWRITE with RWF_DSYNC, aligned buffers; N in flight"
        case .threads: "Swift today: N dedicated threads, each blocking pwrite + fdatasync"
        case .taskBlocking: "Swift today: N tasks on the cooperative pool, each blocking pwrite + fdatasync"
        case .nioThreadPool: "Swift today: N tasks, pwrite + fdatasync inside NIOThreadPool.singleton.runIfActive (\(NIOSingletons.blockingPoolThreadCountSuggestion) threads)"
        case .buffered: "this library: LibaioBackend.durableWrite on a buffered file (N tasks)"
        case .direct: "this library: LibaioBackend.durableWrite on an O_DIRECT file, each task's own AlignedBuffer (N tasks)"
        case .directExecutor: "this library: as direct, the tasks prefer backend.preferredTaskExecutor (the completion thread)"
        case .bufferedExecutor: "this library: as buffered, the tasks prefer backend.preferredTaskExecutor (the completion thread)"
        case .runtimeFloor: "Swift runtime floor: the same N-task loop, each op completed at once by a C thread (no I/O)"
        case .runtimeFloorExecutor: "Swift runtime floor of the *-executor methods: as runtime-floor, the tasks prefer that C thread"
        case .writeThenSync: "this library, today's way: blocking pwrite, then LibaioBackend.fdatasync (N tasks)"
        case .posix: "this library: PosixAIOBackend.durableWrite on a buffered file (N tasks)"
        default: summary
        }
    }

    /// The C floor a durable-write method is compared with (×C).
    var durableFloor: Method {
        switch self {
        case .buffered, .bufferedExecutor, .writeThenSync, .posix: .cLibaio
        case .direct, .directExecutor: .cDirectDsync
        default: .cThreads
        }
    }
}

/// The preallocated files of a durable-write cell: one shared file of depth × 64 KiB, or one
/// 64 KiB file per writer; written with zeros and synced once, so every op is an overwrite.
struct DurableFiles {
    var descriptors: [FileDescriptor]
    var paths: [String]
    var shared: Bool

    init(directory: String, cell: Cell) throws {
        shared = !cell.ownFiles
        let count = shared ? 1 : cell.depth
        let size = (shared ? cell.depth : 1) * durableRegionBlocks * durableBlockSize
        paths = (0..<count).map { "\(directory)/durable-\($0)" }
        descriptors = []
        let zeros = [UInt8](repeating: 0, count: min(size, 1 << 20))
        for path in paths {
            let fd = try FileDescriptor.open(FilePath(path), .readWrite, options: [.create, .truncate], permissions: [.ownerReadWrite])
            descriptors.append(fd)
            var written = 0
            while written < size {
                let chunk = min(zeros.count, size - written)
                written += try zeros.withUnsafeBytes { try fd.write(toAbsoluteOffset: Int64(written), UnsafeRawBufferPointer(rebasing: $0[..<chunk])) }
            }
            guard fsync(fd.rawValue) == 0 else { let e = Errno(rawValue: errno); close(); throw e }
        }
    }

    /// The same files opened again with O_DIRECT (for c-direct-dsync, direct, direct-executor);
    /// the caller closes them.
    func openDirect() throws -> [FileDescriptor] {
        var opened: [FileDescriptor] = []
        do {
            for path in paths {
                let fd = open(path, O_RDWR | cfloor_o_direct() | O_CLOEXEC)
                guard fd >= 0 else { throw Errno(rawValue: errno) }
                opened.append(FileDescriptor(rawValue: fd))
            }
        } catch {
            for fd in opened { try? fd.close() }
            throw error
        }
        return opened
    }

    func close() {
        for fd in descriptors { try? fd.close() }
        for path in paths { unlink(path) }
    }

    /// Where writer `slot`'s `sequence`-th write goes (the C floor's rule).
    func offset(slot: Int, sequence: Int) -> Int64 {
        cfloor_durable_offset(Int32(slot), sequence, shared ? 1 : 0, Int32(durableRegionBlocks))
    }
}

/// One 4 KiB buffer per writer, aligned to 4 KiB, for the buffered methods. The writers' requests
/// await while the kernel reads their buffer: the memory lives as long as this object, which the
/// request closures capture.
final class SlotBuffers: @unchecked Sendable {  // unchecked: the bytes are written once, in init
    private let base: UnsafeMutableRawPointer

    init(slots: Int) {
        base = .allocate(byteCount: slots * durableBlockSize, alignment: durableBlockSize)
        base.initializeMemory(as: UInt8.self, repeating: 0x5a, count: slots * durableBlockSize)
    }

    deinit { base.deallocate() }

    func buffer(_ slot: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base + slot * durableBlockSize, count: durableBlockSize)
    }
}

#if !NO_DURABLE_WRITE
/// One writer's O_DIRECT buffer: an `AlignedBuffer` of 4 KiB with the file's alignment, lent to
/// `durableWrite(_:_:at:)` (the borrowing overload a user of `AlignedBuffer` calls) for each request.
final class DirectBuffer: Sendable {
    let buffer: AlignedBuffer

    init(_ alignment: DirectIOAlignment) throws {
        var buffer = try AlignedBuffer(byteCount: durableBlockSize, for: alignment)
        buffer.withUnsafeMutableBytes { _ = $0.initializeMemory(as: UInt8.self, repeating: 0x5a) }
        self.buffer = buffer
    }
}
#endif

/// A blocking 4 KiB pwrite(2); a short write is an error (EIO), as in the C floor.
func blockingWrite(_ fd: FileDescriptor, _ buffer: UnsafeRawBufferPointer, at offset: Int64) throws {
    let written = pwrite(fd.rawValue, buffer.baseAddress, buffer.count, off_t(offset))
    if written < 0 { throw Errno(rawValue: errno) }
    if written != buffer.count { throw Errno.ioError }
}

/// A blocking pwrite(2) + fdatasync(2): what Swift code does today.
func blockingDurableWrite(_ fd: FileDescriptor, _ buffer: UnsafeRawBufferPointer, at offset: Int64) throws {
    try blockingWrite(fd, buffer, at: offset)
    if fdatasync(fd.rawValue) != 0 { throw Errno(rawValue: errno) }
}

/// An error as one line of the report.
func describe(_ error: any Error) -> String {
    String(describing: error).replacingOccurrences(of: "\n", with: " ")
}

extension AsyncFsyncBench {
    var durableSecondsPerCell: Double { durableSeconds ?? seconds }

    func measureDurable(_ method: Method, cell: Cell, files: DurableFiles, into m: inout Measurement) async throws {
        let seconds = durableSecondsPerCell
        let depth = cell.depth
        let descriptors = files.descriptors
        // Like the other workloads, only the request loop is timed: backends, buffers and O_DIRECT
        // descriptors are made before the window opens and released after it closes.
        let clonesBefore = systemClones()
        var loop = Loop()
        switch method {
        case .cThreads, .cLibaio, .cDirectDsync:
            let direct = method == .cDirectDsync ? try files.openDirect() : []
            defer { for fd in direct { try? fd.close() } }
            let cMethod = method == .cThreads ? CFLOOR_DURABLE_THREADS : method == .cLibaio ? CFLOOR_DURABLE_LIBAIO : CFLOOR_DURABLE_DIRECT_DSYNC
            let capacity = 2_000_000
            let samples = UnsafeMutablePointer<UInt64>.allocate(capacity: capacity)
            defer { samples.deallocate() }
            var recorded = 0
            let raw = (direct.isEmpty ? descriptors : direct).map(\.rawValue)
            let result = raw.withUnsafeBufferPointer {
                cfloor_durable_run(Int32(cMethod.rawValue), Int32(depth), $0.baseAddress, Int32($0.count), Int32(durableRegionBlocks),
                                   seconds, &loop.window, samples, capacity, &recorded)
            }
            guard result >= 0 else { throw Errno(rawValue: Int32(-result)) }
            loop.ops = result
            loop.samples = [Array(UnsafeBufferPointer(start: samples, count: recorded))]
        case .threads:
            let buffers = SlotBuffers(slots: depth)
            loop = try runThreadSlots(depth, seconds: seconds) { slot, sequence in
                try blockingDurableWrite(descriptors[slot % descriptors.count], buffers.buffer(slot), at: files.offset(slot: slot, sequence: sequence))
            }
        case .taskBlocking:
            let buffers = SlotBuffers(slots: depth)
            loop = try await runSlots(depth, seconds: seconds) { slot, sequence in
                try blockingDurableWrite(descriptors[slot % descriptors.count], buffers.buffer(slot), at: files.offset(slot: slot, sequence: sequence))
            }
        case .nioThreadPool:
            let buffers = SlotBuffers(slots: depth)
            loop = try await runSlots(depth, seconds: seconds) { slot, sequence in
                try await NIOThreadPool.singleton.runIfActive {
                    try blockingDurableWrite(descriptors[slot % descriptors.count], buffers.buffer(slot), at: files.offset(slot: slot, sequence: sequence))
                }
            }
        case .runtimeFloor, .runtimeFloorExecutor:
            // What the runtime alone costs per op at this depth: the part of a library method's
            // CPU and latency no change inside the library can remove.
            let floor = try RuntimeFloor(depth: depth)
            loop = try await runSlots(depth, seconds: seconds, executor: method == .runtimeFloorExecutor ? floor : nil) { slot, _ in
                await floor.complete(slot: slot)
            }
            floor.stop()
        case .buffered, .bufferedExecutor, .posix, .writeThenSync:
            #if NO_DURABLE_WRITE
            if method != .writeThenSync { throw DurableWriteUnavailable() }
            #endif
            let buffers = SlotBuffers(slots: depth)
            let backend: any AsyncSyncBackend = method == .posix
                ? try PosixAIOBackend(inlineMemoryFileSystems: false)
                : try LibaioBackend(inlineMemoryFileSystems: false)
            let writeThenSync = method == .writeThenSync
            let executor = method == .bufferedExecutor ? backend.preferredTaskExecutor : nil
            loop = try await withShutdown(backend) {
                try await runSlots(depth, seconds: seconds, executor: executor) { slot, sequence in
                    let fd = descriptors[slot % descriptors.count]
                    let offset = files.offset(slot: slot, sequence: sequence)
                    if writeThenSync {
                        try blockingWrite(fd, buffers.buffer(slot), at: offset)
                        try await backend.fdatasync(fd)
                    } else {
                        #if !NO_DURABLE_WRITE
                        try await backend.durableWrite(fd, from: buffers.buffer(slot), at: offset)
                        #endif
                    }
                }
            }
        case .direct, .directExecutor:
            #if NO_DURABLE_WRITE
            throw DurableWriteUnavailable()
            #else
            let direct = try files.openDirect()
            defer { for fd in direct { try? fd.close() } }
            let alignment = try DirectIOAlignment.of(direct[0])
            // A misaligned request is refused here, with the alignment it needs, before the window.
            let buffers = try (0..<depth).map { slot in
                let buffer = try DirectBuffer(alignment)
                try alignment.validate(buffer.buffer, offset: files.offset(slot: slot, sequence: 0), descriptor: direct[slot % direct.count])
                return buffer
            }
            let backend = try LibaioBackend(inlineMemoryFileSystems: false)
            let executor = method == .directExecutor ? backend.preferredTaskExecutor : nil
            loop = try await withShutdown(backend) {
                try await runSlots(depth, seconds: seconds, executor: executor) { slot, sequence in
                    try await backend.durableWrite(direct[slot % direct.count], buffers[slot].buffer,
                                                   at: files.offset(slot: slot, sequence: sequence))
                }
            }
            #endif
        default:
            preconditionFailure("\(method) is not a durable-write method")
        }
        m.add(loop)
        m.clones += systemClones() - clonesBefore
    }

    /// Runs `body`, then shuts `backend` down, also when `body` throws.
    func withShutdown(_ backend: any AsyncSyncBackend, _ body: () async throws -> Loop) async throws -> Loop {
        do {
            let loop = try await body()
            await backend.shutdown()
            return loop
        } catch {
            await backend.shutdown()
            throw error
        }
    }

    /// Runs `slots` dedicated threads, each calling `request(slot, its sequence number)` in a loop
    /// until the deadline. The threads are started before the window opens and wait for it. The
    /// first error stops every thread and is thrown once all have ended.
    func runThreadSlots(
        _ slots: Int, seconds: Double, _ request: @escaping @Sendable (_ slot: Int, _ sequence: Int) throws -> Void
    ) throws -> Loop {
        let results = ResultBox()
        let failure = FirstFailure()
        let ready = DispatchSemaphore(value: 0)
        let go = DispatchSemaphore(value: 0)
        let finished = DispatchSemaphore(value: 0)
        let deadline = Mutex<UInt64>(0)
        for slot in 0..<slots {
            let thread = Thread {
                ready.signal()
                go.wait()
                let deadline = deadline.withLock { $0 }
                var samples: [UInt64] = []
                samples.reserveCapacity(1024)
                while monotonicNanoseconds() < deadline && !failure.isSet {
                    let begin = monotonicNanoseconds()
                    do {
                        try request(slot, samples.count)
                    } catch {
                        failure.set(error)
                        break
                    }
                    samples.append(monotonicNanoseconds() - begin)
                }
                results.add(samples)
                finished.signal()
            }
            thread.start()
        }
        for _ in 0..<slots { ready.wait() }
        var loop = Loop()
        cfloor_take_snapshot(&loop.window.begin)
        deadline.withLock { $0 = loop.window.begin.ns + UInt64(seconds * 1e9) }
        for _ in 0..<slots { go.signal() }
        for _ in 0..<slots { finished.wait() }
        cfloor_take_snapshot(&loop.window.end)
        if let error = failure.error { throw error }
        loop.samples = results.value
        loop.ops = loop.samples.reduce(0) { $0 + $1.count }
        return loop
    }
}

/// The first error of a set of threads; `isSet` is cheap enough to check before every request.
final class FirstFailure: Sendable {
    private let flag = Atomic<Bool>(false)
    private let first = Mutex<(any Error)?>(nil)

    var isSet: Bool { flag.load(ordering: .relaxed) }
    var error: (any Error)? { first.withLock { $0 } }

    func set(_ error: any Error) {
        first.withLock { if $0 == nil { $0 = error } }
        flag.store(true, ordering: .relaxed)
    }
}

/// A library built without durable writes (scripts/bench-compare against an older ref).
struct DurableWriteUnavailable: Error, CustomStringConvertible {
    var description: String { "this library has no durableWrite (built with NO_DURABLE_WRITE)" }
}
