#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif canImport(Musl)
import Musl
#endif

/// How the log makes its records durable.
public struct Durability: Sendable, CustomStringConvertible {
    enum Storage: Sendable {
        case groupCommit(GroupCommit)
        case blocking
    }
    let storage: Storage

    /// Syncs through `GroupCommit` over `backend`: an append awaits an `fdatasync` that no thread
    /// waits for, and concurrent appends share syncs (many writers, few syncs). The default.
    ///
    /// - Parameters:
    ///   - backend: The backend that runs the syncs; a `GroupCommit` is used as it is, any other
    ///     backend is wrapped in one. The log never shuts it down. Default: `AsyncSync.shared`.
    ///   - delay: `GroupCommit`'s `delay` (how long a batch's leader waits for more requests);
    ///     ignored when `backend` is a `GroupCommit` already. Default: zero.
    public static func groupCommit(_ backend: any AsyncSyncBackend = AsyncSync.shared, delay: Duration = .zero) -> Durability {
        if let group = backend as? GroupCommit { return Durability(storage: .groupCommit(group)) }
        return Durability(storage: .groupCommit(GroupCommit(wrapping: backend, delay: delay)))
    }

    /// A blocking `fdatasync(2)` (and `fsync(2)` of the directory) inside the log's actor, for
    /// comparison: every append has a sync of its own, one at a time, and the thread of the
    /// cooperative pool that runs the actor waits for the disk meanwhile.
    ///
    /// The syncs are serialized by the actor on purpose: two concurrent syncs of one descriptor
    /// could split one writeback error into an `EIO` and a `0`, and the `0` would acknowledge a
    /// record written after lost data.
    public static let blockingFdatasync = Durability(storage: .blocking)

    public var description: String {
        switch storage {
        case .groupCommit(let group): "group commit over \(group.wrapped.kind)"
        case .blocking: "blocking fdatasync(2)"
        }
    }

    /// The backend the log's files (``AsyncFile``) send their writes and syncs to: the
    /// `GroupCommit`; for the blocking form, `AsyncSync.shared`, which its files only name in
    /// errors (their I/O is blocking calls on the descriptor).
    var fileBackend: any AsyncSyncBackend {
        switch storage {
        case .groupCommit(let group): group
        case .blocking: AsyncSync.shared
        }
    }

    /// Makes the data (`.fdatasync`) or data and metadata (`.fsync`) of `file` durable. The
    /// blocking form blocks the caller's executor (the log's actor, `nonisolated(nonsending)`); the
    /// group-commit form suspends there and the sync runs elsewhere.
    nonisolated(nonsending)
    func sync(_ file: AsyncFile, mode: SyncMode) async throws {
        switch storage {
        case .groupCommit:
            try await file.sync(mode)
        case .blocking:
            try file.withDescriptor { fd in
                #if canImport(Darwin)
                let result = fcntl(fd.rawValue, F_FULLFSYNC)  // Darwin's fsync leaves data in the drive's cache
                #else
                let result = mode == .fsync ? fsync(fd.rawValue) : fdatasync(fd.rawValue)
                #endif
                if result != 0 { throw Errno(rawValue: errno) }
            }
        }
    }

    /// Writes `bytes` at `offset` of a buffered `file`. The group-commit form writes through the
    /// backend (no thread blocks); a backend that does not write (`backendUnavailable`, a backend
    /// of one's own written before writes existed) gets a blocking `pwrite(2)` instead, as does the
    /// blocking form.
    nonisolated(nonsending)
    func write(_ bytes: [UInt8], at offset: Int, to file: AsyncFile) async throws {
        if case .groupCommit = storage {
            do {
                return try await file.write(contentsOf: bytes, at: Int64(offset))
            } catch let error as AsyncSyncError where error.code == .backendUnavailable && error.operation == .write {
                // falls through to the blocking write
            }
        }
        _ = try file.withDescriptor { try $0.writeAll(toAbsoluteOffset: Int64(offset), bytes) }
    }
}

/// How the log writes its segments.
public enum WriteMode: Sendable, Hashable {
    /// Through the page cache: each record is written at its offset as soon as it is appended
    /// (concurrent appends write concurrently), then an `fdatasync` makes it durable. The default.
    case buffered
    /// `O_DIRECT`: records are packed as in buffered mode, and the log writes them with one
    /// block-aligned durable write at a time (`RWF_DSYNC` on kernel AIO), which covers every
    /// record appended since the previous one; the last, partial block is written again with the
    /// records that follow it. Needs the group-commit durability and a file system with `O_DIRECT`.
    case direct
}

/// Settings of a ``WriteAheadLog``.
public struct WriteAheadLogOptions: Sendable {
    /// A segment that would grow past this size with the next record is closed and a new one is
    /// started (a record larger than this gets a segment of its own). Default: 16 MiB.
    public var segmentSize: Int
    /// The largest payload ``WriteAheadLog/append(_:)`` accepts. Default: 1 MiB (the frame's
    /// length field allows up to 4 GiB - 1).
    public var maxRecordSize: Int
    /// How records are made durable. Default: ``Durability/groupCommit(_:delay:)`` over
    /// `AsyncSync.shared`.
    public var durability: Durability
    /// How segments are written. Default: ``WriteMode/buffered``.
    public var writeMode: WriteMode

    /// Tests only: skip the directory sync after a new segment's creation, so that the segment's
    /// name (and every record acknowledged in it) can vanish in a power loss. Wrong on purpose.
    var unsafeSkipDirectorySync = false
    /// Tests only: acknowledge appends without their data sync (rotations still sync). Wrong on
    /// purpose.
    var unsafeSkipDataSync = false
    /// Tests only: called at each step of a rotation, inside the log's actor.
    var rotationHook: (@Sendable (RotationStep) async -> Void)?

    public init(segmentSize: Int = 16 << 20, maxRecordSize: Int = 1 << 20, durability: Durability = .groupCommit(),
                writeMode: WriteMode = .buffered) {
        self.segmentSize = segmentSize
        self.maxRecordSize = maxRecordSize
        self.durability = durability
        self.writeMode = writeMode
    }
}

/// The steps of a segment rotation, for tests (``WriteAheadLogOptions/rotationHook``).
enum RotationStep: Sendable {
    /// The full segment's last sync succeeded: every record in it is durable.
    case oldSegmentSynced
    /// The new segment exists, its name not yet durable; nothing has been written to it.
    case newSegmentCreated
    /// The directory sync made the new segment's name durable; appends go on there.
    case directorySynced
}
