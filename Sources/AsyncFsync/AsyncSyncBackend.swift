import SystemPackage

/// A way to make a file's data durable without blocking a thread.
///
/// A backend hands `fsync(2)` or `fdatasync(2)` of a descriptor to the kernel (or to glibc) and
/// resumes the awaiting task when the sync has completed. Get one from
/// ``AsyncSync/makeBackend(environment:directory:)``, or create ``LibaioBackend`` or ``PosixAIOBackend`` directly.
///
/// ## Rules every implementation follows
/// - Every call of ``sync(_:mode:)`` returns or throws exactly once, under any load, on
///   cancellation and on shutdown.
/// - A failed sync is reported with an ``AsyncSyncError`` carrying its errno; it is never retried
///   and then reported as success. A durability failure is sticky per file: later syncs of that
///   file fail at once with ``AsyncSyncError/Code/earlierFailure`` until ``clearFailure(of:)``. The one exception is `EINTR` reported at completion (the sync
///   did not run to its end), which is submitted again, at most
///   16 times in a row.
/// - The same fault gives an error with the same ``AsyncSyncError/code``,
///   ``AsyncSyncError/errno`` and ``AsyncSyncError/operation`` on every backend.
/// - A sync that succeeded started after the call was made.
/// - Cancellation: a request cancelled before it was handed to the system throws
///   `CancellationError` and nothing is submitted; once handed over, the call waits for the
///   system's result and reports it, because a durability result is never thrown away.
/// - After ``shutdown()`` new calls throw ``AsyncSyncError/Code/shutDown``; calls already accepted
///   complete normally.
///
/// The descriptor must stay open until the call returns; the caller's `await` guarantees that as
/// long as the descriptor is not closed by another task meanwhile. See the DocC article
/// "Implementing a backend" for the tests an implementation must pass.
public protocol AsyncSyncBackend: Sendable {
    /// Which kind of backend this is.
    var kind: BackendKind { get }

    /// Makes the data (and, for ``SyncMode/fsync``, the metadata) of `fd` durable.
    ///
    /// - Parameters:
    ///   - fd: An open descriptor of a regular file or directory. It must stay open until this
    ///     call returns.
    ///   - mode: ``SyncMode/fsync`` or ``SyncMode/fdatasync``.
    /// - Throws: ``AsyncSyncError`` with code ``AsyncSyncError/Code/system`` and the errno
    ///   (`EIO`, `ENOSPC`, `EDQUOT`, `EROFS`, `EBADF` for a closed descriptor, `EINVAL` for a pipe or
    ///   socket, …), or ``AsyncSyncError/Code/shutDown`` after ``shutdown()``; `CancellationError`
    ///   when the task was cancelled before the request was handed to the system.
    func sync(_ fd: FileDescriptor, mode: SyncMode) async throws

    /// Writes all of `buffer` to `fd` at `offset` without blocking a thread.
    ///
    /// The write is handed to the system (`IOCB_CMD_PWRITE` on ``LibaioBackend``, `aio_write(3)` on
    /// ``PosixAIOBackend``, `pwrite(2)` on a thread of ``PortableBackend``). A short write is continued until the whole buffer is written or the
    /// system reports an error. On a buffered file the data reaches the page cache, not the disk:
    /// a later ``sync(_:mode:)`` of the same descriptor makes it durable. That sync covers every
    /// write this backend accepted for the descriptor before the sync was asked for, including
    /// writes still in flight (it waits for them); writes accepted after it are not waited for.
    ///
    /// - Parameters:
    ///   - fd: An open descriptor of a regular file, open for writing. It must stay open until this
    ///     call returns. On an `O_DIRECT` descriptor, `buffer`'s address and count and `offset`
    ///     must be multiples of the file's ``DirectIOAlignment`` (use ``AlignedBuffer``).
    ///   - buffer: The bytes to write. The memory must stay valid and unchanged until this call
    ///     returns: once handed to the system the write is never abandoned, not even when the task
    ///     is cancelled.
    ///   - offset: Where in the file the first byte goes (`>= 0`).
    /// - Throws: ``AsyncSyncError`` with operation ``AsyncSyncError/Operation/write`` and the errno
    ///   (`ENOSPC`, `EDQUOT`, `EFBIG`, `EIO`, `EBADF`, `EINVAL` for a misaligned `O_DIRECT` request,
    ///   …); ``AsyncSyncError/Code/shutDown`` after ``shutdown()``; `CancellationError` when the task
    ///   was cancelled before the write was handed to the system. A failed write is not a durability
    ///   failure: nothing of it is recorded against later syncs of the file (docs/errors.md).
    func write(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws

    /// Writes all of `buffer` to `fd` at `offset` and makes the written data durable, like a write
    /// followed by `fdatasync(2)`, without blocking a thread.
    ///
    /// It returns only once the data is durable, through a sync that started after the write
    /// completed. On an `O_DIRECT` descriptor, ``LibaioBackend`` submits one `IOCB_CMD_PWRITE` with
    /// `RWF_DSYNC`; on a buffered file the write is followed by an `fdatasync` shared by the file's
    /// concurrent durable writes and syncs; ``PosixAIOBackend`` uses `aio_write(3)` then
    /// `aio_fsync(O_DSYNC, …)`.
    ///
    /// - Parameters:
    ///   - fd: As for ``write(_:from:at:)``.
    ///   - buffer: As for ``write(_:from:at:)``.
    ///   - offset: As for ``write(_:from:at:)``.
    /// - Throws: A failure of the write part as for ``write(_:from:at:)``; a failure of its
    ///   durability with operation ``AsyncSyncError/Operation/durableWrite`` (one `RWF_DSYNC` write)
    ///   or ``AsyncSyncError/Operation/fdatasync`` (the sync after a buffered write). Such a failure
    ///   is sticky like a failed sync (``AsyncSyncError/isDurabilityFailure``).
    func durableWrite(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws

    /// Forgets an earlier durability failure of the file `fd` refers to, so that its syncs run again.
    ///
    /// After a sync of a file failed with a durability error (``AsyncSyncError/isDurabilityFailure``),
    /// every later sync of the same file (any descriptor of it) fails at once with
    /// ``AsyncSyncError/Code/earlierFailure``: the kernel reports a failed writeback only once, and
    /// the next `fsync(2)` may succeed although the data is gone. Call this after the data written
    /// before the failure has been written again (or given up).
    ///
    /// - Parameter fd: Any open descriptor of the file.
    /// - Returns: Whether a failure was recorded for the file.
    /// - Throws: ``AsyncSyncError`` when the file cannot be identified (`statx(2)` failed).
    @discardableResult
    func clearFailure(of fd: FileDescriptor) throws -> Bool

    /// Stops accepting requests, waits for the accepted ones to complete, then releases the
    /// backend's resources (AIO context, thread, descriptors). Calling it again is harmless.
    func shutdown() async

    /// A task executor on which tasks that sync through this backend go on right where their
    /// syncs complete, without a hop to another thread; `nil` when the backend has none.
    ///
    /// ``LibaioBackend`` and ``PosixAIOBackend`` return their completion thread (see
    /// ``LibaioBackend/taskExecutor``); ``GroupCommit`` returns its wrapped backend's. Use it with
    /// `withTaskExecutorPreference(backend.preferredTaskExecutor) { … }` — a `nil` preference
    /// changes nothing, so the same code works with any backend. Code running there must not block.
    var preferredTaskExecutor: (any TaskExecutor)? { get }

    /// A serial executor on the same thread as ``preferredTaskExecutor``, for an actor that syncs
    /// through this backend; `nil` when the backend has none.
    ///
    /// An actor whose `unownedExecutor` is this goes on right where its syncs complete.
    /// ``ActorExecutor`` gives an actor this executor when there is one, and an executor of the
    /// actor's own otherwise:
    ///
    /// ```swift
    /// actor DefaultExecutor {}                  // lends its default executor
    ///
    /// actor WriteAheadLog {
    ///     let backend: any AsyncSyncBackend
    ///     let executor: ActorExecutor
    ///     nonisolated var unownedExecutor: UnownedSerialExecutor { executor.unownedExecutor }
    ///     init(backend: any AsyncSyncBackend) {
    ///         self.backend = backend
    ///         self.executor = ActorExecutor(preferring: backend)
    ///     }
    /// }
    /// ```
    ///
    /// Code running there must not block.
    var preferredSerialExecutor: (any SerialExecutor)? { get }
}

/// A backend whose syncs wait for the writes it accepted before them (``GroupCommit`` asks it
/// whether a descriptor has such writes, since it may sync a file through another descriptor).
protocol WriteTracking: Sendable {
    /// Whether writes this backend accepted for `fd` are not complete yet.
    func hasIncompleteWrites(_ fd: FileDescriptor) -> Bool
}

/// A heap copy of some bytes whose address does not move while a write awaits.
struct OwnedBytes: @unchecked Sendable {
    let bytes: UnsafeRawBufferPointer

    init(_ source: [UInt8]) {
        let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: max(source.count, 1), alignment: 16)
        source.withUnsafeBytes { memory.copyMemory(from: $0) }
        bytes = UnsafeRawBufferPointer(rebasing: memory[..<source.count])
    }

    func free() {
        bytes.baseAddress.map { UnsafeMutableRawPointer(mutating: $0).deallocate() }
    }
}

extension AsyncSyncBackend {
    /// The default: no executor of its own.
    public var preferredTaskExecutor: (any TaskExecutor)? { nil }

    /// The default: no serial executor of its own.
    public var preferredSerialExecutor: (any SerialExecutor)? { nil }

    /// The default for backends that keep no failures: there is nothing to forget.
    @discardableResult
    public func clearFailure(of fd: FileDescriptor) throws -> Bool { false }

    /// The default for backends that cannot write: throws
    /// ``AsyncSyncError/Code/backendUnavailable``.
    ///
    /// - Parameters:
    ///   - fd: The descriptor.
    ///   - buffer: The bytes.
    ///   - offset: The offset.
    /// - Throws: Always ``AsyncSyncError/Code/backendUnavailable``.
    public func write(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws {
        throw AsyncSyncError.writesUnsupported(kind, operation: .write, descriptor: fd)
    }

    /// The default for backends that cannot write: throws
    /// ``AsyncSyncError/Code/backendUnavailable``.
    ///
    /// - Parameters:
    ///   - fd: The descriptor.
    ///   - buffer: The bytes.
    ///   - offset: The offset.
    /// - Throws: Always ``AsyncSyncError/Code/backendUnavailable``.
    public func durableWrite(_ fd: FileDescriptor, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws {
        throw AsyncSyncError.writesUnsupported(kind, operation: .durableWrite, descriptor: fd)
    }

    /// Writes `bytes` to `fd` at `offset` (a copy of them: the array may change meanwhile); see
    /// ``write(_:from:at:)``.
    ///
    /// - Parameters:
    ///   - fd: An open descriptor of a regular file, open for writing (not `O_DIRECT`: use an
    ///     ``AlignedBuffer``); it must stay open until this call returns.
    ///   - bytes: The bytes to write.
    ///   - offset: Where the first byte goes (`>= 0`).
    /// - Throws: See ``write(_:from:at:)``.
    public func write(_ fd: FileDescriptor, _ bytes: [UInt8], at offset: Int64) async throws {
        let copy = OwnedBytes(bytes)
        defer { copy.free() }
        try await write(fd, from: copy.bytes, at: offset)
    }

    /// Writes `bytes` to `fd` at `offset` and makes them durable (a copy of them: the array may
    /// change meanwhile); see ``durableWrite(_:from:at:)``.
    ///
    /// - Parameters:
    ///   - fd: An open descriptor of a regular file, open for writing (not `O_DIRECT`: use an
    ///     ``AlignedBuffer``); it must stay open until this call returns.
    ///   - bytes: The bytes to write.
    ///   - offset: Where the first byte goes (`>= 0`).
    /// - Throws: See ``durableWrite(_:from:at:)``.
    public func durableWrite(_ fd: FileDescriptor, _ bytes: [UInt8], at offset: Int64) async throws {
        let copy = OwnedBytes(bytes)
        defer { copy.free() }
        try await durableWrite(fd, from: copy.bytes, at: offset)
    }

    /// Writes the whole of `buffer` to `fd` at `offset`; see ``write(_:from:at:)``. The buffer is
    /// borrowed for the call, so its memory stays valid until the write has completed.
    ///
    /// - Parameters:
    ///   - fd: An open descriptor of a regular file, open for writing; it must stay open until this
    ///     call returns. On an `O_DIRECT` descriptor `offset` must be a multiple of the file's
    ///     ``DirectIOAlignment``.
    ///   - buffer: The bytes to write.
    ///   - offset: Where the first byte goes (`>= 0`).
    /// - Throws: See ``write(_:from:at:)``.
    public func write(_ fd: FileDescriptor, _ buffer: borrowing AlignedBuffer, at offset: Int64) async throws {
        try await write(fd, from: buffer.unsafeBytes, at: offset)
    }

    /// Writes the whole of `buffer` to `fd` at `offset` and makes it durable; see
    /// ``durableWrite(_:from:at:)``. The buffer is borrowed for the call.
    ///
    /// - Parameters:
    ///   - fd: As for ``write(_:_:at:)-(_,AlignedBuffer,_)``.
    ///   - buffer: The bytes to write.
    ///   - offset: Where the first byte goes (`>= 0`).
    /// - Throws: See ``durableWrite(_:from:at:)``.
    public func durableWrite(_ fd: FileDescriptor, _ buffer: borrowing AlignedBuffer, at offset: Int64) async throws {
        try await durableWrite(fd, from: buffer.unsafeBytes, at: offset)
    }

    /// Makes the data and metadata of `fd` durable, like `fsync(2)`.
    ///
    /// - Parameter fd: An open descriptor; it must stay open until this call returns.
    /// - Throws: See ``AsyncSyncBackend/sync(_:mode:)``.
    public func fsync(_ fd: FileDescriptor) async throws {
        try await sync(fd, mode: .fsync)
    }

    /// Makes the data of `fd` durable, like `fdatasync(2)`.
    ///
    /// - Parameter fd: An open descriptor; it must stay open until this call returns.
    /// - Throws: See ``AsyncSyncBackend/sync(_:mode:)``.
    public func fdatasync(_ fd: FileDescriptor) async throws {
        try await sync(fd, mode: .fdatasync)
    }
}
