#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif canImport(Musl)
import Musl
#endif

/// A write-ahead log: records appended to segment files in one directory, each acknowledged only
/// once it is durable, and read back after a crash.
///
/// ```swift
/// let log = try await WriteAheadLog.open(directory: "/var/lib/db/wal") { record in
///     try apply(record.payload)                 // what survived the last run, in order
/// }
/// let lsn = try await log.append(Array("set x=1".utf8))   // durable when it returns
/// try await log.close()
/// ```
///
/// Durability rules (why each sync is where it is):
/// - An append reserves its frame's place at the end of the current segment inside the actor (so
///   records never interleave), writes it there without blocking a thread (``AsyncFile``, through
///   the backend), waits until every record before it in the segment is written, and then awaits
///   an `fdatasync` of the segment that started after those writes. Through `GroupCommit` (the
///   default), concurrent appends share that sync. In ``WriteMode/direct`` one block-aligned
///   durable write at a time covers every frame reserved since the previous one.
/// - A full segment is synced before the next one is created, so a segment that has a successor
///   is complete and recovery treats damage there as corruption rather than a torn write.
/// - A new segment is created with `O_CREAT | O_EXCL`, and the directory is fsynced before any
///   record is written to it: a record acknowledged in a segment whose name could still vanish in
///   a power loss would be lost with it.
/// - Opening the log truncates a torn tail of the last segment, syncs that segment and the
///   directory: the recovered records are durable when ``open(directory:options:replay:)``
///   returns, and new records start on a clean boundary.
/// - A failed write or sync fails its append and poisons the log: every later append fails with
///   ``WriteAheadLogError/Code/poisoned``. A sync is never retried: the kernel reports a lost
///   writeback once, and the retry's success would acknowledge lost data.
public actor WriteAheadLog {
    /// The directory holding the segments.
    public nonisolated let directory: FilePath
    /// The settings the log was opened with.
    public nonisolated let options: WriteAheadLogOptions
    /// What ``open(directory:options:replay:)`` found.
    public nonisolated let recovery: Recovery

    /// What recovery found when the log was opened.
    public struct Recovery: Sendable {
        /// Segments read.
        public var segments = 0
        /// Records replayed.
        public var records = 0
        /// Bytes cut from the end of the last segment: a torn or damaged tail.
        public var truncatedBytes = 0
        /// The LSN the next append gets.
        public var nextLSN = LSN(rawValue: 1)
    }

    /// Counters of one open log.
    public struct Statistics: Sendable {
        /// Appends acknowledged.
        public var appends = 0
        /// Data syncs the log asked for: one per append, plus one per rotation and at close. With
        /// group commit, concurrent requests share syncs, so the system runs fewer.
        public var dataSyncRequests = 0
        /// Directory syncs: two at open (the log's directory and its parent), one per rotation.
        public var directorySyncs = 0
        /// Segments started by rotation.
        public var rotations = 0
    }

    private let durability: Durability
    private let directoryFile: AsyncFile
    private var current: Segment
    /// The closes of full segments: each waits for the appends still awaiting its sync.
    private var retiring: [Task<Void, any Error>] = []
    private var nextLSN: UInt64
    /// The first write or sync failure: the log is poisoned.
    private var failure: (any Error)?
    private var closing: Task<Void, any Error>?
    private var rotation: Task<Void, Never>?
    private var appendsInFlight = 0
    private var idleWaiters: [CheckedContinuation<Void, Never>] = []
    private var stats = Statistics()

    private init(directory: FilePath, options: WriteAheadLogOptions, directoryFile: AsyncFile,
                 current: Segment, recovery: Recovery, directorySyncs: Int) {
        self.directory = directory
        self.options = options
        self.durability = options.durability
        self.directoryFile = directoryFile
        self.current = current
        self.nextLSN = recovery.nextLSN.rawValue
        self.recovery = recovery
        self.stats.directorySyncs = directorySyncs
    }

    /// Opens the log in `directory` (creating the directory if needed), replays its records in
    /// order, and makes it ready for appends.
    ///
    /// Segments are read in LSN order. Replay stops at the first record of the last segment that is
    /// torn or damaged (a partial header or payload, a bad checksum, a wrong magic or sequence
    /// number); that tail is truncated and the segment synced, so the next append starts on a
    /// clean boundary. Damage in any other segment is an error: the log syncs a segment before it
    /// starts the next one, so only the last can have a torn tail.
    ///
    /// Recovery reads the segments with blocking `pread(2)` on the caller's executor.
    ///
    /// - Parameters:
    ///   - directory: The log's directory, created if it does not exist. Its parent is fsynced, so
    ///     that its name is durable too.
    ///   - options: Segment size, record size limit, durability. Default: ``WriteAheadLogOptions/init(segmentSize:maxRecordSize:durability:)``.
    ///   - replay: Called with every recovered record, in LSN order, before this returns. An error
    ///     it throws ends the open (and is thrown from it).
    /// - Returns: The open log; ``recovery`` says what was found.
    /// - Throws: ``WriteAheadLogError/Code/corrupt`` for damage recovery must not guess about;
    ///   `Errno` of a failed `mkdir`, `open`, `read` or `ftruncate`; `AsyncSyncError` of a failed
    ///   sync; what `replay` throws.
    nonisolated(nonsending)
    public static func open(
        directory: FilePath, options: WriteAheadLogOptions = WriteAheadLogOptions(),
        replay: (LogRecord) throws -> Void = { _ in }
    ) async throws -> WriteAheadLog {
        let durability = options.durability
        let backend = durability.fileBackend
        if options.writeMode == .direct, case .blocking = durability.storage {
            throw WriteAheadLogError(code: .invalidOptions, message: "the direct write mode needs the group-commit durability", underlying: nil)
        }
        if mkdir(directory.string, 0o755) != 0, errno != EEXIST { throw Errno(rawValue: errno) }
        // The directory's name lives in its parent. Synced at every open, not only when this call
        // made the directory: an earlier open may have made it and stopped before its sync.
        var parent = directory.removingLastComponent()
        if parent.isEmpty { parent = "." }
        let parentFile = try AsyncFile.open(parent, options: [.readOnly], backend: backend)
        try await durability.sync(parentFile, mode: .fsync)
        try await parentFile.close()
        var directorySyncs = 1
        let directoryFile = try AsyncFile.open(directory, options: [.readOnly], backend: backend)

        var recovery = Recovery()
        var last: Segment?
        let segments = try Segment.list(in: directory)
        var next: UInt64 = segments.first?.firstLSN ?? 1
        for (index, (firstLSN, name)) in segments.enumerated() {
            let isLast = index == segments.count - 1
            guard firstLSN == next else {
                throw WriteAheadLogError(code: .corrupt, message: "\(name) starts at record \(firstLSN), but the segment before it ends before record \(next)", underlying: nil)
            }
            let path = directory.appending(name)
            let bytes = try Segment.readAll(path)
            var offset = 0
            scan: while true {
                switch Frame.decode(bytes, at: offset, lsn: next) {
                case .record(let payload, let end):
                    try replay(LogRecord(lsn: LSN(rawValue: next), payload: Array(bytes[payload])))
                    next += 1
                    recovery.records += 1
                    offset = end
                case .end:
                    break scan
                case .invalid where bytes[offset...].allSatisfy({ $0 == 0 }) && (!isLast || options.writeMode == .direct):
                    // The zeros after the last record of an O_DIRECT write's last block: padding.
                    break scan
                case .invalid(let reason):
                    guard isLast else {
                        throw WriteAheadLogError(code: .corrupt, message: "\(name) is damaged at offset \(offset) (\(reason)), and it is not the last segment", underlying: nil)
                    }
                    recovery.truncatedBytes = bytes.count - offset
                    break scan
                }
            }
            recovery.segments += 1
            if isLast {
                let file = try AsyncFile.open(path, options: options.writeMode == .direct ? [.direct] : [], backend: backend)
                if recovery.truncatedBytes > 0 { try file.withDescriptor { try $0.resize(to: Int64(offset)) } }
                // The replayed records, and the truncation, are durable before anyone acts on them.
                try await durability.sync(file, mode: .fdatasync)
                last = Segment(file, size: offset, contents: bytes)
            }
        }
        recovery.nextLSN = LSN(rawValue: next)
        let current: Segment
        if let last {
            current = last
        } else {
            current = Segment(try Self.create(directory.appending(Segment.name(firstLSN: next)), options), size: 0)
        }
        // The segments' names (a new first segment, or one whose rotation was cut short) are
        // durable before any record in them is acknowledged.
        try await durability.sync(directoryFile, mode: .fsync)
        directorySyncs += 1
        return WriteAheadLog(directory: directory, options: options, directoryFile: directoryFile,
                             current: current, recovery: recovery, directorySyncs: directorySyncs)
    }

    /// Appends one record and returns once it is durable.
    ///
    /// The frame is written at the end of the current segment (a new segment is started first
    /// when this one would grow past ``WriteAheadLogOptions/segmentSize``), then an `fdatasync` of
    /// the segment that started after the write must succeed. With group commit, appends of
    /// concurrent tasks share that sync.
    ///
    /// A record whose append threw may still be recovered after a restart (its bytes may have
    /// reached the disk); one whose append returned always is.
    ///
    /// - Parameter payload: The record's bytes, at most ``WriteAheadLogOptions/maxRecordSize``.
    /// - Returns: The record's LSN: one more than the previous record's.
    /// - Throws: The `AsyncSyncError` (or `Errno`) of a failed sync or write, which poisons the
    ///   log; then ``WriteAheadLogError/Code/poisoned`` for every later append;
    ///   ``WriteAheadLogError/Code/closed`` after ``close()``;
    ///   ``WriteAheadLogError/Code/recordTooLarge``; `CancellationError` when the task was
    ///   cancelled before its write or sync was handed to the system (the record stays in the log,
    ///   unacknowledged: a buffered write cancelled that early is made with a blocking `pwrite(2)`,
    ///   a direct one by the next durable write, so no hole is left before later records).
    public func append(_ payload: [UInt8]) async throws -> LSN {
        guard payload.count <= min(options.maxRecordSize, Int(UInt32.max)) else {
            throw WriteAheadLogError(code: .recordTooLarge, message: "a record of \(payload.count) bytes is above the limit of \(options.maxRecordSize)", underlying: nil)
        }
        let frameSize = Frame.headerSize + payload.count
        while true {
            try ensureUsable()
            if let rotation {
                await rotation.value
                continue
            }
            if current.size > 0, current.size + frameSize > options.segmentSize {
                rotation = Task { await self.rotate() }
                continue
            }
            break
        }
        // No suspension from here until the frame has its place: records never interleave.
        let lsn = nextLSN
        let segment = current
        let frame = Frame.encode(lsn: lsn, payload: payload)
        let offset = segment.size
        nextLSN += 1
        segment.size += frame.count
        appendsInFlight += 1
        segment.users += 1
        defer {
            segment.userEnded()
            appendEnded()
        }
        stats.dataSyncRequests += 1
        switch options.writeMode {
        case .buffered: try await writeAndSync(frame, at: offset, in: segment)
        case .direct:
            segment.tail += frame
            try await flush(segment, through: offset + frame.count)
        }
        // A failure seen meanwhile may concern data written before this record: do not
        // acknowledge a record that recovery could cut off behind a lost one.
        if let failure { throw WriteAheadLogError.poisoned(failure) }
        stats.appends += 1
        return LSN(rawValue: lsn)
    }

    /// Buffered mode: writes the frame at its offset, waits for the writes of the records before
    /// it, then syncs the segment (a sync that starts after all of them are written).
    private func writeAndSync(_ frame: [UInt8], at offset: Int, in segment: Segment) async throws {
        segment.unwritten.insert(offset)
        do {
            do {
                try await durability.write(frame, at: offset, to: segment.file)
            } catch is CancellationError {
                // Cancelled before the write was handed to the system: write it anyway (blocking),
                // so that no hole is left in front of the records after it; the append is not
                // acknowledged.
                _ = try segment.file.withDescriptor { try $0.writeAll(toAbsoluteOffset: Int64(offset), frame) }
                segment.unwritten.remove(offset)
                segment.writesProgressed()
                throw CancellationError()
            }
            segment.unwritten.remove(offset)
            segment.writesProgressed()
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            segment.unwritten.remove(offset)
            segment.writesProgressed()
            poison(error)  // part of the frame may be in the file: recovery will cut it
            throw error
        }
        try await waitForWrites(in: segment, before: offset + frame.count)
        do {
            if !options.unsafeSkipDataSync { try await durability.sync(segment.file, mode: .fdatasync) }
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            poison(error)
            throw error
        }
    }

    /// Waits until every write of a record that starts before `end` in `segment` has completed;
    /// throws the poison if one of them failed (this record would follow a hole).
    private func waitForWrites(in segment: Segment, before end: Int) async throws {
        while segment.unwritten.contains(where: { $0 < end }) {
            await withCheckedContinuation { segment.writeWaiters.append($0) }
        }
        if let failure { throw WriteAheadLogError.poisoned(failure) }
    }

    /// O_DIRECT mode: returns once the segment is durable up to `end`. The append that finds no
    /// durable write in flight makes one of everything reserved so far, from the block holding the
    /// durable end; the others wait for it, and go on or lead the next.
    private func flush(_ segment: Segment, through end: Int) async throws {
        while segment.durableEnd < end {
            if let failure { throw WriteAheadLogError.poisoned(failure) }
            if segment.flushing {
                await withCheckedContinuation { segment.flushWaiters.append($0) }
                continue
            }
            segment.flushing = true
            let target = segment.size
            let start = segment.tailStart
            let padded = (segment.tail.count + segment.block - 1) / segment.block * segment.block
            do {
                let alignment = segment.memoryAlignment
                var buffer = try AlignedBuffer(byteCount: (padded + alignment - 1) / alignment * alignment, alignment: alignment)
                buffer.withUnsafeMutableBytes { $0.copyBytes(from: segment.tail) }  // the rest stays zero
                if options.unsafeSkipDataSync {
                    try await segment.file.write(buffer, count: padded, at: Int64(start))
                } else {
                    try await segment.file.durableWrite(buffer, count: padded, at: Int64(start))
                }
            } catch is CancellationError {
                // This append's task was cancelled before its write was handed to the system:
                // nothing was written; the next flush (another append's, a rotation's or close's)
                // writes these frames.
                segment.flushing = false
                segment.flushEnded()
                throw CancellationError()
            } catch {
                segment.flushing = false
                segment.flushEnded()
                poison(error)
                throw error
            }
            segment.durableEnd = target
            let nextStart = target / segment.block * segment.block
            segment.tail.removeFirst(nextStart - start)
            segment.tailStart = nextStart
            segment.flushing = false
            segment.flushEnded()
        }
    }

    /// Creates a segment file (`O_CREAT | O_EXCL`, `O_DIRECT` in the direct mode).
    private static func create(_ path: FilePath, _ options: WriteAheadLogOptions) throws -> AsyncFile {
        try AsyncFile.open(path, options: options.writeMode == .direct ? [.create, .exclusive, .direct] : [.create, .exclusive],
                           permissions: [.ownerReadWrite, .groupRead, .otherRead], backend: options.durability.fileBackend)
    }

    /// Closes the full segment and starts the next (the one rotation; appends wait for it).
    private func rotate() async {
        defer { rotation = nil }
        let old = current
        do {
            stats.dataSyncRequests += 1
            switch options.writeMode {
            case .buffered:
                try await waitForWrites(in: old, before: .max)
                try await durability.sync(old.file, mode: .fdatasync)
            case .direct:
                // Durable writes covered every record already; the sync also covers the file's
                // size and holds where a file system does not honour RWF_DSYNC on every write.
                try await flush(old, through: old.size)
                try await durability.sync(old.file, mode: .fdatasync)
            }
            await options.rotationHook?(.oldSegmentSynced)
            current = Segment(try Self.create(directory.appending(Segment.name(firstLSN: nextLSN)), options), size: 0)
            stats.rotations += 1
            // Closed once no append uses it any more: one may not have asked for its sync yet
            // (close() then waits for the operations in flight).
            retiring.append(Task { try await self.retire(old) })
            await options.rotationHook?(.newSegmentCreated)
            if !options.unsafeSkipDirectorySync {
                stats.directorySyncs += 1
                try await durability.sync(directoryFile, mode: .fsync)
            }
            await options.rotationHook?(.directorySynced)
        } catch {
            poison(error)
        }
    }

    /// Closes a segment's file once no append uses it.
    private func retire(_ segment: Segment) async throws {
        while segment.users > 0 {
            await withCheckedContinuation { segment.unusedWaiters.append($0) }
        }
        try await segment.file.close()
    }

    private func appendEnded() {
        appendsInFlight -= 1
        if appendsInFlight == 0 {
            let waiters = idleWaiters
            idleWaiters = []
            for waiter in waiters { waiter.resume() }
        }
    }

    private func poison(_ error: any Error) {
        if failure == nil { failure = error }
    }

    private func ensureUsable() throws {
        if closing != nil { throw WriteAheadLogError.closed }
        if let failure { throw WriteAheadLogError.poisoned(failure) }
    }

    /// Counters since the log was opened.
    public var statistics: Statistics { stats }

    /// The LSN the next append will get.
    public var nextRecord: LSN { LSN(rawValue: nextLSN) }

    /// Refuses new appends, waits for the appends in flight, syncs the current segment and closes
    /// every descriptor. Calling it again waits for the first call and returns its result.
    ///
    /// - Throws: The error of the final sync (the log is then poisoned, and closed anyway).
    public func close() async throws {
        if let closing { return try await closing.value }
        let task = Task { try await self.closeNow() }
        closing = task
        try await task.value
    }

    private func closeNow() async throws {
        if let rotation { await rotation.value }
        while appendsInFlight > 0 {
            await withCheckedContinuation { idleWaiters.append($0) }
        }
        var finalError: (any Error)?
        if failure == nil {
            stats.dataSyncRequests += 1
            do {
                // Frames of cancelled appends may wait for a durable write still (direct mode).
                if options.writeMode == .direct { try await flush(current, through: current.size) }
                try await durability.sync(current.file, mode: .fdatasync)
            } catch {
                poison(error)
                finalError = error
            }
        }
        // Every descriptor is closed, whatever failed.
        _ = try? await current.file.close()
        for task in retiring { _ = try? await task.value }
        retiring = []
        _ = try? await directoryFile.close()
        if let finalError { throw finalError }
    }
}
