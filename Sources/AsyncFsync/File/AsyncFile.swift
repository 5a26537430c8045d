import CAsyncFsync
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif canImport(Musl)
import Musl
#endif

/// A file whose descriptor this handle owns: it writes, makes data durable and syncs directory
/// entries through a backend, and closes the descriptor only once nothing uses it any more.
///
/// A storage engine that awaits its syncs must keep each descriptor open until every operation on
/// it has returned, even when another task (a segment rotation) is done with the file meanwhile.
/// `AsyncFile` keeps that bookkeeping: every operation is admitted and counted while it runs;
/// ``close()`` stops admitting, waits for the operations in flight, and then closes the descriptor
/// exactly once. No descriptor is ever closed, or its number reused, under a request.
///
/// ```swift
/// let file = try AsyncFile.open("/var/lib/db/wal/segment-1", options: [.create, .exclusive])
/// try await file.syncDirectory()            // the new directory entry is durable
/// try await file.durableWrite(record, at: 0) // returns once the record is durable
/// try await file.close()                     // waits for operations still in flight
/// ```
///
/// ## Rules
/// - **Admission.** An operation (write, durable write, sync) is admitted only while the handle is
///   open. Once ``close()`` began, every new operation throws ``AsyncSyncError`` with code
///   ``AsyncSyncError/Code/system``, errno `EBADF`, the operation's ``AsyncSyncError/Operation`` and
///   a message saying the file was closed, whatever its arguments (a negative offset, a misaligned
///   `O_DIRECT` request, a ``Options/readOnly`` file); nothing reaches the system.
/// - **Close waits.** ``close()`` returns once the operations admitted before it have ended and the
///   descriptor is closed. Calling it again (also concurrently) waits for the same close; calling
///   it after the close returns at once.
/// - **Cancellation** does not stop a ``close()``: the descriptor is always closed, and the call
///   returns after that. Operations follow the backend's rule (cancelled before submission:
///   `CancellationError`; once submitted, the system's result).
/// - **deinit** closes the descriptor of a handle that was never closed. No operation can be in
///   flight then: each holds the handle.
/// - **`O_DIRECT`.** A file opened with ``Options/direct`` learns its ``directIOAlignment`` at
///   open; a misaligned write is refused with `EINVAL` naming the alignment before it is submitted.
///
/// See docs/design.md, "The file handle".
public final class AsyncFile: Sendable {
    /// How ``open(_:options:permissions:backend:)`` opens a file, written as a set:
    /// `[.create, .exclusive]`. The descriptor is always close-on-exec (`O_CLOEXEC`).
    public struct Options: Hashable, Sendable, ExpressibleByArrayLiteral {
        private var bits: UInt32

        private init(bits: UInt32) { self.bits = bits }

        /// The options listed (none for `[]`: open an existing file for reading and writing).
        ///
        /// - Parameter elements: The options.
        public init(arrayLiteral elements: Options...) {
            bits = elements.reduce(0) { $0 | $1.bits }
        }

        /// Whether every option of `other` is among these.
        ///
        /// - Parameter other: An option, or several.
        /// - Returns: `true` when all of `other` is set here.
        public func contains(_ other: Options) -> Bool { bits & other.bits == other.bits }

        /// Creates the file if it does not exist (`O_CREAT`), with the permissions given at open.
        public static let create = Options(bits: 1 << 0)
        /// With ``create``: fails with `EEXIST` if the file exists (`O_EXCL`).
        public static let exclusive = Options(bits: 1 << 1)
        /// Truncates an existing file to length 0 (`O_TRUNC`); not with ``readOnly``.
        public static let truncate = Options(bits: 1 << 2)
        /// Transfers bypass the page cache (`O_DIRECT`, Linux): writes must be aligned to the
        /// file's ``AsyncFile/directIOAlignment`` (use ``AlignedBuffer``).
        public static let direct = Options(bits: 1 << 3)
        /// Opens for reading only (`O_RDONLY`): the handle syncs but does not write. Without it the
        /// file is opened for reading and writing (`O_RDWR`).
        public static let readOnly = Options(bits: 1 << 4)
    }

    /// The path the file was opened at (a later rename does not change it).
    public let path: FilePath
    /// The options it was opened with.
    public let options: Options
    /// The alignment `O_DIRECT` writes of this file need, found at open (`statx(2)`
    /// `STATX_DIOALIGN`, else the fallback rule of ``DirectIOAlignment``); `nil` unless the file was
    /// opened with ``Options/direct``.
    public let directIOAlignment: DirectIOAlignment?
    /// The backend every write and sync of this file goes through.
    public let backend: any AsyncSyncBackend

    private let descriptor: FileDescriptor
    private let system: SystemCalls
    /// The directory that holds ``path``, made absolute at open: ``syncDirectory()`` syncs it even
    /// after the process changed its working directory.
    private let directory: FilePath
    private let state = Locked(AsyncFileState<UnsafeContinuation<CloseTurn, Never>>())

    /// What a waiting ``close()`` caller is resumed with.
    enum CloseTurn: Sendable {
        /// Close the descriptor now (the last operation ended).
        case close
        /// Another caller closed it, with this error, if any.
        case closed(AsyncSyncError?)
    }

    private init(
        descriptor: FileDescriptor, path: FilePath, options: Options, directIOAlignment: DirectIOAlignment?,
        backend: any AsyncSyncBackend, system: SystemCalls
    ) {
        self.descriptor = descriptor
        self.path = path
        self.directory = Self.directory(containing: path, relativeTo: path.isAbsolute ? nil : system_getcwd())
        self.options = options
        self.directIOAlignment = directIOAlignment
        self.backend = backend
        self.system = system
    }

    deinit {
        // No task holds the handle: nothing is in flight and no close() runs.
        if state.withLock({ $0.deinitialize() }) {
            _ = system.close(descriptor.rawValue)
        }
    }

    // MARK: Opening

    /// Opens (and, with ``Options/create``, creates) the file at `path`.
    ///
    /// `open(2)` runs on the calling thread, as `FileDescriptor.open` does; an `EINTR` from it is
    /// retried. For ``Options/direct`` the file's ``directIOAlignment`` is learned before this
    /// returns.
    ///
    /// - Parameters:
    ///   - path: The file's path.
    ///   - options: How to open it (``Options/create``, ``Options/exclusive``, ``Options/truncate``,
    ///     ``Options/direct``, ``Options/readOnly``).
    ///   - permissions: The permissions of a file ``Options/create`` creates (before the umask).
    ///   - backend: The backend its writes and syncs go through; ``AsyncSync/shared`` by default.
    /// - Returns: The open file; it owns the new descriptor.
    /// - Throws: ``AsyncSyncError`` with operation ``AsyncSyncError/Operation/open``: code
    ///   ``AsyncSyncError/Code/system`` with `open(2)`'s errno (`ENOENT`, `EEXIST` for
    ///   ``Options/exclusive``, `EACCES`, `EINVAL` where the file system refuses `O_DIRECT`, …) or
    ///   `statx(2)`'s (a file that ``Options/exclusive`` created is removed again then); code ``AsyncSyncError/Code/invalidConfiguration`` for options that do not go
    ///   together (``Options/exclusive`` without ``Options/create``, ``Options/truncate`` with
    ///   ``Options/readOnly``, ``Options/direct`` where the system has no `O_DIRECT`).
    public static func open(
        _ path: FilePath, options: Options, permissions: FilePermissions = [.ownerReadWrite],
        backend: any AsyncSyncBackend = AsyncSync.shared
    ) throws(AsyncSyncError) -> AsyncFile {
        try open(path, options: options, permissions: permissions, backend: backend, system: .live)
    }

    static func open(
        _ path: FilePath, options: Options, permissions: FilePermissions = [.ownerReadWrite],
        backend: any AsyncSyncBackend, system: SystemCalls
    ) throws(AsyncSyncError) -> AsyncFile {
        func invalid(_ message: String) -> AsyncSyncError {
            AsyncSyncError(code: .invalidConfiguration, errno: nil, operation: .open, step: .request, backend: backend.kind,
                           message: "cannot open \(path): \(message)")
        }
        if options.contains(.exclusive), !options.contains(.create) {
            throw invalid("the option exclusive needs create")
        }
        if options.contains(.truncate), options.contains(.readOnly) {
            throw invalid("the option truncate needs write access (not readOnly)")
        }
        if options.contains(.direct), casyncfsync_O_DIRECT == 0 {
            throw invalid("this system has no O_DIRECT")
        }
        var flags = O_CLOEXEC | (options.contains(.readOnly) ? O_RDONLY : O_RDWR)
        if options.contains(.create) { flags |= O_CREAT }
        if options.contains(.exclusive) { flags |= O_EXCL }
        if options.contains(.truncate) { flags |= O_TRUNC }
        if options.contains(.direct) { flags |= casyncfsync_O_DIRECT }

        let fd: CInt
        switch openRetryingInterrupts(path, flags, CUnsignedInt(permissions.rawValue), system: system) {
        case .success(let opened): fd = opened
        case .failure(let errno):
            throw AsyncSyncError(
                code: .system, errno: errno, operation: .open, step: .request, backend: backend.kind, systemCall: "open",
                message: "cannot open \(path)"
                    + (options.contains(.direct) && errno == .invalidArgument ? " (the file system refuses O_DIRECT)" : ""))
        }
        let descriptor = FileDescriptor(rawValue: fd)
        var alignment: DirectIOAlignment?
        if options.contains(.direct) {
            do {
                alignment = try DirectIOAlignment.of(descriptor, system: system)
            } catch {
                // A file this call created (exclusive) is removed again, so that the caller's retry
                // does not fail with EEXIST on a file nobody wrote (review-file).
                if options.contains(.exclusive) { _ = system_unlink(path.string) }
                _ = system.close(fd)
                var failure = error
                failure.operation = .open
                failure.backend = backend.kind
                failure.descriptor = nil
                failure.message = "cannot open \(path) for O_DIRECT: " + failure.message
                throw failure
            }
        }
        return AsyncFile(descriptor: descriptor, path: path, options: options, directIOAlignment: alignment,
                         backend: backend, system: system)
    }

    private static func openRetryingInterrupts(
        _ path: FilePath, _ flags: CInt, _ mode: CUnsignedInt, system: SystemCalls
    ) -> Result<CInt, Errno> {
        while true {
            let result = system.openFile(path, flags, mode)
            if case .failure(.interrupted) = result { continue }
            return result
        }
    }

    // MARK: Writes

    /// Writes all of `bytes` at `offset`, without blocking a thread (``AsyncSyncBackend/write(_:from:at:)``).
    ///
    /// On a buffered file the data reaches the page cache: a later ``sync(_:)`` (or ``fdatasync()``)
    /// makes it durable, and covers this write even while it is in flight.
    ///
    /// - Parameters:
    ///   - bytes: The bytes; they must stay valid and unchanged until this call returns (also when
    ///     the task is cancelled: a submitted write is never abandoned). On a ``Options/direct``
    ///     file, their address and count must be aligned to ``directIOAlignment``.
    ///   - offset: Where the first byte goes (`>= 0`; aligned on a ``Options/direct`` file).
    /// - Throws: ``AsyncSyncError`` with operation ``AsyncSyncError/Operation/write``: `EBADF` after
    ///   ``close()`` began or on a ``Options/readOnly`` file, `EINVAL` for a negative offset or a
    ///   misaligned ``Options/direct`` request (naming the alignment), before anything is
    ///   submitted; otherwise what ``AsyncSyncBackend/write(_:from:at:)`` throws.
    public func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) async throws {
        try check(bytes, offset: offset, operation: .write)
        try await admitted(.write) { fd in try await backend.write(fd, from: bytes, at: offset) }
    }

    /// Writes the first `count` bytes of `buffer` at `offset`, without blocking a thread.
    ///
    /// The buffer is borrowed until the call returns, so its bytes cannot change while the system
    /// reads them.
    ///
    /// - Parameters:
    ///   - buffer: The bytes; on a ``Options/direct`` file, made for ``directIOAlignment``
    ///     (``AlignedBuffer/init(byteCount:for:)``).
    ///   - count: How many bytes from the buffer's start; `nil` (the default) for all of it.
    ///   - offset: Where the first byte goes (`>= 0`; aligned on a ``Options/direct`` file).
    /// - Throws: As ``write(_:at:)``; also `EINVAL` when `count` is negative or larger than the
    ///   buffer.
    public func write(_ buffer: borrowing AlignedBuffer, count: Int? = nil, at offset: Int64) async throws {
        let bytes = try prefix(of: buffer, count: count, operation: .write)
        try await write(bytes, at: offset)
    }

    /// Writes `bytes` at `offset`, without blocking a thread. The bytes are copied first (into
    /// memory aligned for ``directIOAlignment`` on a ``Options/direct`` file), so the collection
    /// need not outlive the call.
    ///
    /// - Parameters:
    ///   - bytes: The bytes, for example an `[UInt8]`; on a ``Options/direct`` file their count must
    ///     be a multiple of the offset alignment.
    ///   - offset: Where the first byte goes (`>= 0`; aligned on a ``Options/direct`` file).
    /// - Throws: As ``write(_:at:)``; `ENOMEM` when the copy cannot be allocated.
    public func write(contentsOf bytes: some Collection<UInt8>, at offset: Int64) async throws {
        let copy = try copied(bytes, operation: .write)
        defer { system_aligned_free(copy.memory) }
        try await write(UnsafeRawBufferPointer(start: copy.memory, count: copy.count), at: offset)
    }

    // MARK: Durable writes

    /// Writes all of `bytes` at `offset` and makes them durable (like a write followed by
    /// `fdatasync(2)`), without blocking a thread (``AsyncSyncBackend/durableWrite(_:from:at:)``).
    ///
    /// It returns once the data is durable, through a sync that started after the write completed;
    /// on a ``Options/direct`` file ``LibaioBackend`` makes it one `RWF_DSYNC` write.
    ///
    /// - Parameters:
    ///   - bytes: As for ``write(_:at:)``.
    ///   - offset: As for ``write(_:at:)``.
    /// - Throws: As ``write(_:at:)``, with operation ``AsyncSyncError/Operation/durableWrite`` for the
    ///   refusals before submission; otherwise what ``AsyncSyncBackend/durableWrite(_:from:at:)``
    ///   throws (a failure of its durability is sticky, ``AsyncSyncError/isDurabilityFailure``).
    public func durableWrite(_ bytes: UnsafeRawBufferPointer, at offset: Int64) async throws {
        try check(bytes, offset: offset, operation: .durableWrite)
        try await admitted(.durableWrite) { fd in try await backend.durableWrite(fd, from: bytes, at: offset) }
    }

    /// Writes the first `count` bytes of `buffer` at `offset` and makes them durable.
    ///
    /// - Parameters:
    ///   - buffer: As for ``write(_:count:at:)``.
    ///   - count: As for ``write(_:count:at:)``.
    ///   - offset: As for ``write(_:at:)``.
    /// - Throws: As ``durableWrite(_:at:)``; also `EINVAL` when `count` is negative or larger than
    ///   the buffer.
    public func durableWrite(_ buffer: borrowing AlignedBuffer, count: Int? = nil, at offset: Int64) async throws {
        let bytes = try prefix(of: buffer, count: count, operation: .durableWrite)
        try await durableWrite(bytes, at: offset)
    }

    /// Writes `bytes` at `offset` and makes them durable; the bytes are copied first, as by
    /// ``write(contentsOf:at:)``.
    ///
    /// - Parameters:
    ///   - bytes: As for ``write(contentsOf:at:)``.
    ///   - offset: As for ``write(_:at:)``.
    /// - Throws: As ``durableWrite(_:at:)``; `ENOMEM` when the copy cannot be allocated.
    public func durableWrite(contentsOf bytes: some Collection<UInt8>, at offset: Int64) async throws {
        let copy = try copied(bytes, operation: .durableWrite)
        defer { system_aligned_free(copy.memory) }
        try await durableWrite(UnsafeRawBufferPointer(start: copy.memory, count: copy.count), at: offset)
    }

    // MARK: Syncs

    /// Makes the file's data (and, for ``SyncMode/fsync``, its metadata) durable
    /// (``AsyncSyncBackend/sync(_:mode:)``). It covers every write of this file the backend
    /// accepted before it was called, including writes still in flight.
    ///
    /// - Parameter mode: ``SyncMode/fsync`` or ``SyncMode/fdatasync``.
    /// - Throws: ``AsyncSyncError`` with `EBADF` after ``close()`` began; otherwise what
    ///   ``AsyncSyncBackend/sync(_:mode:)`` throws.
    public func sync(_ mode: SyncMode) async throws {
        try await admitted(.sync(mode)) { fd in try await backend.sync(fd, mode: mode) }
    }

    /// Makes the file's data and metadata durable, like `fsync(2)`.
    ///
    /// - Throws: As ``sync(_:)``.
    public func fsync() async throws {
        try await sync(.fsync)
    }

    /// Makes the file's data (and the metadata needed to read it, such as its size) durable, like
    /// `fdatasync(2)`.
    ///
    /// - Throws: As ``sync(_:)``.
    public func fdatasync() async throws {
        try await sync(.fdatasync)
    }

    /// Makes the entry of this file in its directory durable: an `fsync(2)` of the directory that
    /// holds ``path``, through ``backend``. Call it after creating the file (and after renaming it,
    /// with ``syncDirectory(containing:backend:)`` for the new path, and for the old one when the
    /// rename crossed directories).
    ///
    /// A relative ``path`` is resolved against the working directory at open, so a later
    /// `chdir(2)` does not change which directory this syncs. The directory is the one that holds
    /// the entry named by ``path``: for a path through a symbolic link, the link's directory.
    ///
    /// It opens the directory on its own descriptor, so it does not use the file's and works after
    /// ``close()`` too.
    ///
    /// - Throws: ``AsyncSyncError``: operation ``AsyncSyncError/Operation/open`` when the directory
    ///   cannot be opened, else what ``AsyncSyncBackend/sync(_:mode:)`` throws.
    public func syncDirectory() async throws {
        try await Self.syncDirectory(at: directory, backend: backend, system: system)
    }

    /// The directory that holds `path`, resolved against `workingDirectory` when it is relative
    /// (and `workingDirectory` could be named).
    static func directory(containing path: FilePath, relativeTo workingDirectory: String?) -> FilePath {
        var directory = path.removingLastComponent()
        if directory.isEmpty { directory = "." }
        guard !directory.isAbsolute, let workingDirectory else { return directory }
        return FilePath(workingDirectory).pushing(directory)  // not normalized: ".." after a link is the kernel's to resolve
    }

    /// Makes the directory entry of `path` durable: an `fsync(2)` of the directory that holds it.
    /// Call it after a create, a `rename(2)`, a link or an unlink in that directory.
    ///
    /// - Parameters:
    ///   - path: A path in the directory (`"a/b"` syncs `"a"`; a path of one component syncs the
    ///     current directory).
    ///   - backend: The backend the sync goes through; ``AsyncSync/shared`` by default.
    /// - Throws: As ``syncDirectory()``.
    public static func syncDirectory(
        containing path: FilePath, backend: any AsyncSyncBackend = AsyncSync.shared
    ) async throws {
        try await syncDirectory(containing: path, backend: backend, system: .live)
    }

    /// Makes the directory at `directory` durable (its entries, and its own metadata): an
    /// `fsync(2)` of it.
    ///
    /// - Parameters:
    ///   - directory: The directory's path.
    ///   - backend: The backend the sync goes through; ``AsyncSync/shared`` by default.
    /// - Throws: ``AsyncSyncError``: operation ``AsyncSyncError/Operation/open`` when the directory
    ///   cannot be opened (`ENOTDIR`, `ENOENT`, …), else what ``AsyncSyncBackend/sync(_:mode:)``
    ///   throws.
    public static func syncDirectory(
        at directory: FilePath, backend: any AsyncSyncBackend = AsyncSync.shared
    ) async throws {
        try await syncDirectory(at: directory, backend: backend, system: .live)
    }

    static func syncDirectory(containing path: FilePath, backend: any AsyncSyncBackend, system: SystemCalls) async throws {
        try await syncDirectory(at: directory(containing: path, relativeTo: nil), backend: backend, system: system)
    }

    static func syncDirectory(at directory: FilePath, backend: any AsyncSyncBackend, system: SystemCalls) async throws {
        let fd: CInt
        switch openRetryingInterrupts(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0, system: system) {
        case .success(let opened): fd = opened
        case .failure(let errno):
            throw AsyncSyncError(
                code: .system, errno: errno, operation: .open, step: .request, backend: backend.kind, systemCall: "open",
                message: "cannot open the directory \(directory) to sync it")
        }
        // Closed only once the sync returned: the await keeps the descriptor ours until then.
        defer { _ = system.close(fd) }
        try await backend.sync(FileDescriptor(rawValue: fd), mode: .fsync)
    }

    // MARK: The descriptor

    /// Calls `body` with the file's descriptor, for what this type does not offer (reads, `fstat`).
    /// The descriptor is counted in use while `body` runs, so ``close()`` waits for it.
    ///
    /// - Parameter body: Must not close the descriptor, nor keep it after it returns.
    /// - Returns: What `body` returns.
    /// - Throws: ``AsyncSyncError`` with `EBADF` (operation ``AsyncSyncError/Operation/open``)
    ///   after ``close()`` began; what `body` throws.
    public func withDescriptor<Result>(_ body: (FileDescriptor) throws -> Result) throws -> Result {
        try admit(.open)
        defer { end() }
        return try body(descriptor)
    }

    // MARK: Closing

    /// Stops admitting operations, waits for the ones in flight, then closes the descriptor.
    ///
    /// The descriptor is closed exactly once, by the first call, after the last operation admitted
    /// before it has ended. A second call, also a concurrent one, waits for that close and reports
    /// its result; a call after it returns at once. Cancelling the calling task does not stop it:
    /// the descriptor is always closed before it returns. `close(2)` is not retried on `EINTR`
    /// (Linux has closed the descriptor then).
    ///
    /// - Throws: ``AsyncSyncError`` with operation ``AsyncSyncError/Operation/close`` and the errno
    ///   of `close(2)` (`EIO` from a file system that reports a late write error at close; the
    ///   descriptor is closed all the same).
    public func close() async throws {
        let turn: CloseTurn = await withUnsafeContinuation { continuation in
            switch state.withLock({ $0.close(waiter: continuation) }) {
            case .closeNow: continuation.resume(returning: .close)
            case .alreadyClosed: continuation.resume(returning: .closed(nil))
            case .wait: break
            }
        }
        switch turn {
        case .close:
            var failure: AsyncSyncError?
            if case .failure(let errno) = system.close(descriptor.rawValue) {
                failure = AsyncSyncError(
                    code: .system, errno: errno, operation: .close, step: .completion, backend: backend.kind,
                    descriptor: descriptor, systemCall: "close", message: "the descriptor is closed all the same")
            }
            for waiter in state.withLock({ $0.descriptorClosed() }) {
                waiter.resume(returning: .closed(failure))
            }
            if let failure { throw failure }
        case .closed(let failure):
            if let failure { throw failure }
        }
    }

    // MARK: Internals

    /// Operations admitted and not ended (tests).
    var inFlightCount: Int { state.withLock { $0.inFlight } }

    /// Whether the descriptor is closed (tests).
    var isClosed: Bool { state.withLock { $0.lifecycle == .closed } }

    /// `close()` callers waiting (tests).
    var closeWaiterCount: Int { state.withLock { $0.closeWaiterCount } }

    /// The descriptor's number (tests).
    var descriptorForTesting: FileDescriptor { descriptor }

    /// Runs `body` with the descriptor as an admitted operation.
    private func admitted(
        _ operation: AsyncSyncError.Operation, _ body: (FileDescriptor) async throws -> Void
    ) async throws {
        try admit(operation)
        defer { end() }
        try await body(descriptor)
    }

    private func admit(_ operation: AsyncSyncError.Operation) throws(AsyncSyncError) {
        guard state.withLock({ $0.admit() }) else { throw closedError(operation) }
    }

    /// The refusal of every operation once ``close()`` began.
    private func closedError(_ operation: AsyncSyncError.Operation) -> AsyncSyncError {
        AsyncSyncError(
            code: .system, errno: .badFileDescriptor, operation: operation, step: .request, backend: backend.kind,
            descriptor: descriptor,
            message: "the file \(path) was closed (AsyncFile.close()); no operation is admitted once close() began")
    }

    /// The error of a request refused before its admission: once ``close()`` began it is refused
    /// as closed, whatever else is wrong with it; otherwise `error`. (Looked at only when a check
    /// fails, so a valid request takes no extra lock; admission refuses it if close() began since.)
    private func refusal(_ error: AsyncSyncError, _ operation: AsyncSyncError.Operation) -> AsyncSyncError {
        state.withLock { $0.admits } ? error : closedError(operation)
    }

    private func end() {
        if let closer = state.withLock({ $0.finish() }) {
            closer.resume(returning: .close)
        }
    }

    /// The refusals before submission: a read-only file, a negative offset, a misaligned
    /// `O_DIRECT` request.
    private func check(_ bytes: UnsafeRawBufferPointer, offset: Int64, operation: AsyncSyncError.Operation) throws(AsyncSyncError) {
        func refuse(_ errno: Errno, _ message: String) -> AsyncSyncError {
            refusal(AsyncSyncError(code: .system, errno: errno, operation: operation, step: .request, backend: backend.kind,
                                   descriptor: descriptor, message: message), operation)
        }
        if options.contains(.readOnly) {
            throw refuse(.badFileDescriptor, "the file \(path) was opened readOnly")
        }
        guard offset >= 0 else { throw refuse(.invalidArgument, "offset \(offset) is negative") }
        guard let alignment = directIOAlignment else { return }
        do {
            // An empty buffer may have no address; the alignment of its (empty) length fails anyway.
            try alignment.validate(address: bytes.baseAddress ?? UnsafeRawPointer(bitPattern: alignment.memoryAlignment)!,
                                   count: bytes.count, offset: offset, descriptor: descriptor)
        } catch {
            var failure = error
            failure.operation = operation
            failure.backend = backend.kind
            throw refusal(failure, operation)
        }
    }

    private func prefix(
        of buffer: borrowing AlignedBuffer, count: Int?, operation: AsyncSyncError.Operation
    ) throws(AsyncSyncError) -> UnsafeRawBufferPointer {
        let bytes = buffer.unsafeBytes
        guard let count else { return bytes }
        guard count >= 0, count <= bytes.count else {
            throw refusal(AsyncSyncError(
                code: .system, errno: .invalidArgument, operation: operation, step: .request, backend: backend.kind,
                descriptor: descriptor, message: "count \(count) is outside the buffer (\(bytes.count) bytes)"), operation)
        }
        return UnsafeRawBufferPointer(rebasing: bytes[..<count])
    }

    /// A copy of `bytes` in memory the caller owns (freed with ``system_aligned_free(_:)``), aligned
    /// for `O_DIRECT` on a direct file.
    private func copied(
        _ bytes: some Collection<UInt8>, operation: AsyncSyncError.Operation
    ) throws(AsyncSyncError) -> (memory: UnsafeMutableRawPointer, count: Int) {
        let count = bytes.count
        let alignment = directIOAlignment.map { max($0.memoryAlignment, $0.offsetAlignment) } ?? 16
        let memory: UnsafeMutableRawPointer
        switch system_aligned_allocate(max(count, 1), alignment) {
        case .success(let allocated): memory = allocated
        case .failure(let errno):
            throw refusal(AsyncSyncError(
                code: .system, errno: errno, operation: operation, step: .request, backend: backend.kind,
                descriptor: descriptor, systemCall: "posix_memalign", message: "cannot copy \(count) bytes to write"),
                operation)
        }
        UnsafeMutableRawBufferPointer(start: memory, count: count).copyBytes(from: bytes)
        return (memory, count)
    }
}
