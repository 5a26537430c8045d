import CAsyncFsync
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif canImport(Musl)
import Musl
#endif

// The only file that calls C. Each `system_<cname>` wrapper keeps the C arguments and turns the
// C error convention into `Result<_, Errno>` with one of the three helpers below, reading errno
// right after the call on the same thread. Backends never call these directly: they go through a
// `SystemCalls` table, which tests replace to inject faults and count calls.

// MARK: The three C error conventions

/// glibc: `-1` and errno set.
@inline(__always)
func valueOrErrno<I: FixedWidthInteger>(_ result: I) -> Result<I, Errno> {
    result == -1 ? .failure(Errno(rawValue: casyncfsync_errno())) : .success(result)
}

/// libaio and `io_event.res`: the value, or `-errno` returned with errno untouched.
@inline(__always)
func valueOrNegatedErrno<I: FixedWidthInteger>(_ result: I) -> Result<I, Errno> {
    result < 0 ? .failure(Errno(rawValue: CInt(truncatingIfNeeded: 0 &- result))) : .success(result)
}

#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
/// `aio_error(3)`: the errno itself as the return value; `0` = success, `EINPROGRESS` = not yet.
@inline(__always)
func errnoFromReturnValue(_ result: CInt) -> AIOStatus {
    switch result {
    case 0: .succeeded
    case casyncfsync_EINPROGRESS: .inProgress
    case -1: .failed(Errno(rawValue: casyncfsync_errno()))  // EINVAL: not a known request
    default: .failed(Errno(rawValue: result))
    }
}

/// What `aio_error(3)` says of a request.
enum AIOStatus: Equatable {
    case inProgress
    case succeeded
    case failed(Errno)
}

// MARK: Kernel AIO (raw syscalls, libaio's convention)

func system_io_setup(_ nrEvents: CUnsignedInt, _ context: UnsafeMutablePointer<aio_context_t>) -> Result<Void, Errno> {
    valueOrNegatedErrno(casyncfsync_io_setup(nrEvents, context)).map { _ in }
}

func system_io_destroy(_ context: aio_context_t) -> Result<Void, Errno> {
    valueOrNegatedErrno(casyncfsync_io_destroy(context)).map { _ in }
}

func system_io_submit(
    _ context: aio_context_t, _ count: Int, _ iocbs: UnsafeMutablePointer<UnsafeMutablePointer<iocb>?>
) -> Result<Int, Errno> {
    valueOrNegatedErrno(casyncfsync_io_submit(context, count, iocbs))
}

func system_io_getevents(
    _ context: aio_context_t, _ minCount: Int, _ maxCount: Int,
    _ events: UnsafeMutablePointer<io_event>, _ timeout: UnsafeMutablePointer<timespec>?
) -> Result<Int, Errno> {
    valueOrNegatedErrno(casyncfsync_io_getevents(context, minCount, maxCount, events, timeout))
}

/// Takes the completions the kernel has posted to the context's ring, without waiting: from the
/// ring in user space when its layout is known (no system call), else `io_getevents(2)` with
/// `min_nr` 0 and a zero timeout.
func system_reap_completions(
    _ context: aio_context_t, _ events: UnsafeMutablePointer<io_event>, _ maxCount: Int
) -> Result<Int, Errno> {
    let reaped = casyncfsync_ring_reap(context, events, maxCount)
    if reaped >= 0 { return .success(reaped) }
    var zero = timespec(tv_sec: 0, tv_nsec: 0)
    return system_io_getevents(context, 0, maxCount, events, &zero)
}

// MARK: glibc POSIX aio

func system_aio_fsync(_ mode: SyncMode, _ control: UnsafeMutablePointer<aiocb>) -> Result<Void, Errno> {
    valueOrErrno(casyncfsync_aio_fsync(mode == .fdatasync ? 1 : 0, control)).map { _ in }
}

func system_aio_read(_ control: UnsafeMutablePointer<aiocb>) -> Result<Void, Errno> {
    valueOrErrno(casyncfsync_aio_read(control)).map { _ in }
}

func system_aio_write(_ control: UnsafeMutablePointer<aiocb>) -> Result<Void, Errno> {
    valueOrErrno(casyncfsync_aio_write(control)).map { _ in }
}

func system_aio_error(_ control: UnsafePointer<aiocb>) -> AIOStatus {
    errnoFromReturnValue(casyncfsync_aio_error(control))
}

func system_aio_return(_ control: UnsafeMutablePointer<aiocb>) -> Result<Int, Errno> {
    valueOrErrno(casyncfsync_aio_return(control))
}

func system_aio_suspend(
    _ list: UnsafePointer<UnsafePointer<aiocb>?>, _ count: CInt, _ timeout: UnsafePointer<timespec>?
) -> Result<Void, Errno> {
    valueOrErrno(casyncfsync_aio_suspend(list, count, timeout)).map { _ in }
}

#endif  // os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE: kernel AIO and glibc POSIX aio

// MARK: Plain file and descriptor calls

func system_fsync(_ fd: CInt) -> Result<Void, Errno> {
    valueOrErrno(fsync(fd)).map { _ in }
}

/// `fdatasync(2)` where the C library has it; `fsync(2)` on Darwin, whose SDK does not declare it.
func system_fdatasync(_ fd: CInt) -> Result<Void, Errno> {
    #if canImport(Darwin)
    valueOrErrno(fsync(fd)).map { _ in }
    #else
    valueOrErrno(fdatasync(fd)).map { _ in }
    #endif
}

/// The sync of the portable backend's threads: on Darwin `fcntl(F_FULLFSYNC)` for both modes (a
/// plain `fsync(2)` there leaves the data in the drive's cache, and Darwin has no `fdatasync`),
/// with `fsync(2)` when the file system refuses it (`ENOTSUP`, `EINVAL`: not every file system
/// implements it); elsewhere `fsync(2)` or `fdatasync(2)`.
func system_durable_sync(_ mode: SyncMode, _ fd: CInt) -> Result<Void, Errno> {
    #if canImport(Darwin)
    switch valueOrErrno(casyncfsync_full_fsync(fd)) {
    case .success: return .success(())
    case .failure(.notSupported), .failure(.invalidArgument): return system_fsync(fd)
    case .failure(let errno): return .failure(errno)
    }
    #else
    return system_sync_now(mode, fd)
    #endif
}

/// The C function ``system_durable_sync(_:_:)`` calls for `mode`, for error reports.
func durableSyncCallName(_ mode: SyncMode) -> String {
    #if canImport(Darwin)
    "fcntl(F_FULLFSYNC)"
    #else
    mode == .fsync ? "fsync" : "fdatasync"
    #endif
}

#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
/// `eventfd(0, EFD_CLOEXEC)`.
func system_eventfd() -> Result<CInt, Errno> {
    valueOrErrno(casyncfsync_eventfd())
}

/// `read(2)` of an eventfd: blocks until its counter is non-zero, returns and resets it.
func system_eventfd_read(_ fd: CInt) -> Result<UInt64, Errno> {
    var value: UInt64 = 0
    return valueOrErrno(casyncfsync_eventfd_read(fd, &value)).map { _ in value }
}

/// `memfd_create(name, MFD_CLOEXEC)`.
func system_memfd_create(_ name: String) -> Result<CInt, Errno> {
    valueOrErrno(casyncfsync_memfd(name))
}
#endif

func system_write(_ fd: CInt, _ buffer: UnsafeRawPointer, _ count: Int) -> Result<Int, Errno> {
    valueOrErrno(write(fd, buffer, count))
}

/// `pwrite(2)`: at most `count` bytes from `buffer` at `offset`; the count written (possibly
/// short) or the errno.
func system_pwrite(_ fd: CInt, _ buffer: UnsafeRawPointer, _ count: Int, _ offset: Int64) -> Result<Int, Errno> {
    valueOrErrno(pwrite(fd, buffer, count, off_t(offset)))
}

func system_close(_ fd: CInt) -> Result<Void, Errno> {
    valueOrErrno(close(fd)).map { _ in }
}

/// `open(2)` of `path` with `flags` and, for a file it creates, `mode`: a new descriptor (the lowest
/// free number). `EINTR` is returned as is; the caller decides whether to retry.
func system_open(_ path: FilePath, _ flags: CInt, _ mode: CUnsignedInt) -> Result<CInt, Errno> {
    path.withPlatformString { valueOrErrno(open($0, flags, mode_t(mode))) }
}

/// `fcntl(fd, F_DUPFD_CLOEXEC, minimum)`: a new descriptor of the same open file, close-on-exec,
/// at the lowest free number not below `minimum`.
func system_fcntl_dupfd_cloexec(_ fd: CInt, _ minimum: CInt) -> Result<CInt, Errno> {
    valueOrErrno(fcntl(fd, casyncfsync_F_DUPFD_CLOEXEC, minimum))
}

/// `fcntl(fd, F_GETFL)`: the descriptor's access mode and status flags.
func system_fcntl_getfl(_ fd: CInt) -> Result<CInt, Errno> {
    valueOrErrno(fcntl(fd, F_GETFL))
}

/// `getrlimit(RLIMIT_NOFILE)`'s soft limit: one more than the highest descriptor number the process
/// may open.
func system_getrlimit_nofile() -> Result<UInt64, Errno> {
    var limit = rlimit()
    #if canImport(Glibc)
    let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
    #else
    let resource = CInt(RLIMIT_NOFILE)  // a plain macro in Darwin and musl
    #endif
    return valueOrErrno(getrlimit(resource, &limit)).map { _ in UInt64(limit.rlim_cur) }
}

// MARK: The table the backends call through

/// The system calls a backend makes, as replaceable functions.
///
/// ``live`` calls the `system_<cname>` wrappers above. Tests build a table that wraps ``live`` to
/// count calls or to answer with an injected errno at a chosen step.
///
/// ``id`` is 0 for ``live`` and changes whenever an entry is replaced: backends on the live table
/// share one ``CompletionHub`` per kind, a backend on a test's table gets one of its own.
struct SystemCalls: Sendable {
    /// 0 for ``live``; a new number for every table changed since.
    private(set) var id: UInt64 = 0

    private static let ids = Atomic<UInt64>(1)

    private mutating func renew() {
        id = Self.ids.wrappingAdd(1, ordering: .relaxed).oldValue
    }

    #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
    var ioSetup: @Sendable (CUnsignedInt, UnsafeMutablePointer<aio_context_t>) -> Result<Void, Errno> { didSet { renew() } }
    var ioDestroy: @Sendable (aio_context_t) -> Result<Void, Errno> { didSet { renew() } }
    var ioSubmit: @Sendable (aio_context_t, Int, UnsafeMutablePointer<UnsafeMutablePointer<iocb>?>) -> Result<Int, Errno> { didSet { renew() } }
    var ioGetevents: @Sendable (aio_context_t, Int, Int, UnsafeMutablePointer<io_event>, UnsafeMutablePointer<timespec>?) -> Result<Int, Errno> { didSet { renew() } }
    /// The completions posted so far, without waiting (``system_reap_completions(_:_:_:)``).
    var reapCompletions: @Sendable (aio_context_t, UnsafeMutablePointer<io_event>, Int) -> Result<Int, Errno> { didSet { renew() } }
    var aioFsync: @Sendable (SyncMode, UnsafeMutablePointer<aiocb>) -> Result<Void, Errno> { didSet { renew() } }
    var aioRead: @Sendable (UnsafeMutablePointer<aiocb>) -> Result<Void, Errno> { didSet { renew() } }
    var aioWrite: @Sendable (UnsafeMutablePointer<aiocb>) -> Result<Void, Errno> { didSet { renew() } }
    var aioError: @Sendable (UnsafePointer<aiocb>) -> AIOStatus { didSet { renew() } }
    var aioReturn: @Sendable (UnsafeMutablePointer<aiocb>) -> Result<Int, Errno> { didSet { renew() } }
    var aioSuspend: @Sendable (UnsafePointer<UnsafePointer<aiocb>?>, CInt, UnsafePointer<timespec>?) -> Result<Void, Errno> { didSet { renew() } }
    /// An eventfd above the library's descriptor floor (``LibraryDescriptors``).
    var eventfd: @Sendable () -> Result<CInt, Errno> { didSet { renew() } }
    var eventfdRead: @Sendable (CInt) -> Result<UInt64, Errno> { didSet { renew() } }
    /// A memfd above the library's descriptor floor (``LibraryDescriptors``).
    var memfdCreate: @Sendable (String) -> Result<CInt, Errno> { didSet { renew() } }
    #endif
    var write: @Sendable (CInt, UnsafeRawPointer, Int) -> Result<Int, Errno> { didSet { renew() } }
    /// `fcntl(fd, F_GETFL)`: whether a descriptor is `O_DIRECT` (a durable write picks its path by it).
    var statusFlags: @Sendable (CInt) -> Result<CInt, Errno> { didSet { renew() } }
    var close: @Sendable (CInt) -> Result<Void, Errno> { didSet { renew() } }
    /// `open(2)` (``system_open(_:_:_:)``): the descriptors an ``AsyncFile`` owns, and the
    /// directories it syncs.
    var openFile: @Sendable (FilePath, CInt, CUnsignedInt) -> Result<CInt, Errno> { didSet { renew() } }
    var fileIdentity: @Sendable (CInt) -> Result<FileIdentity, Errno> { didSet { renew() } }
    /// Starts a detached thread with every signal blocked (``system_start_thread(name:_:)``).
    var startThread: @Sendable (String, @escaping @Sendable () -> Void) -> Result<Void, Errno> { didSet { renew() } }
    /// `fstatfs(2)`'s `f_type` (the file system's magic number): the inline path for memory file
    /// systems and the probe cache.
    var fileSystemType: @Sendable (CInt) -> Result<Int, Errno> { didSet { renew() } }
    /// `statx(2)` of the inode and type only: device, inode and the kind of file.
    var fileStatus: @Sendable (CInt) -> Result<FileStatus, Errno> { didSet { renew() } }
    /// Told when a driver allocates or frees the memory of its control blocks (a no-op for
    /// ``live``; tests flag a system call on freed control blocks).
    var noteMemory: @Sendable (MemoryEvent, UnsafeRawPointer, Int) -> Void { didSet { renew() } }
    /// A blocking `fsync(2)` or `fdatasync(2)`: the inline path for memory file systems.
    var syncNow: @Sendable (SyncMode, CInt) -> Result<Void, Errno> { didSet { renew() } }
    /// The blocking sync a ``PortableBackend`` thread makes (``system_durable_sync(_:_:)``:
    /// `fcntl(F_FULLFSYNC)` on Darwin, `fsync(2)` / `fdatasync(2)` elsewhere).
    var durableSync: @Sendable (SyncMode, CInt) -> Result<Void, Errno> { didSet { renew() } }
    /// The blocking `pwrite(2)` a ``PortableBackend`` thread makes (``system_pwrite(_:_:_:_:)``):
    /// one call, which may write less than asked.
    var pwrite: @Sendable (CInt, UnsafeRawPointer, Int, Int64) -> Result<Int, Errno> { didSet { renew() } }
    #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
    /// `kcmp(2)` with `KCMP_FILE` on two descriptors of this process: whether they share one open
    /// file description (``system_kcmp_file(_:_:)``). Only the Linux engine shares syncs.
    var kcmpFile: @Sendable (CInt, CInt) -> Result<Bool, Errno> { didSet { renew() } }
    #endif
    /// `statx(2)` with `STATX_DIOALIGN`: the `O_DIRECT` alignments of a file where the kernel
    /// reports them, and its block size (``system_dio_alignment(_:)``).
    var directIOAlignment: @Sendable (CInt) -> Result<DirectIOReport, Errno> { didSet { renew() } }

    #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
    /// The real system.
    static let live = SystemCalls(
        id: 0,
        ioSetup: system_io_setup,
        ioDestroy: system_io_destroy,
        ioSubmit: system_io_submit,
        ioGetevents: system_io_getevents,
        reapCompletions: system_reap_completions,
        aioFsync: system_aio_fsync,
        aioRead: system_aio_read,
        aioWrite: system_aio_write,
        aioError: system_aio_error,
        aioReturn: system_aio_return,
        aioSuspend: system_aio_suspend,
        eventfd: { system_eventfd().map(LibraryDescriptors.movedAboveFloor) },
        eventfdRead: system_eventfd_read,
        memfdCreate: { system_memfd_create($0).map(LibraryDescriptors.movedAboveFloor) },
        write: system_write,
        statusFlags: system_fcntl_getfl,
        close: system_close,
        openFile: system_open,
        fileIdentity: system_fstat_identity,
        startThread: { name, body in system_start_thread(name: name, body) },
        fileSystemType: system_fstatfs_type,
        fileStatus: system_fstat_status,
        noteMemory: { _, _, _ in },
        syncNow: system_sync_now,
        durableSync: system_durable_sync,
        pwrite: system_pwrite,
        kcmpFile: system_kcmp_file,
        directIOAlignment: system_dio_alignment
    )
    #else
    /// The real system.
    static let live = SystemCalls(
        id: 0,
        write: system_write,
        statusFlags: system_fcntl_getfl,
        close: system_close,
        openFile: system_open,
        fileIdentity: system_fstat_identity,
        startThread: { name, body in system_start_thread(name: name, body) },
        fileSystemType: system_fstatfs_type,
        fileStatus: system_fstat_status,
        noteMemory: { _, _, _ in },
        syncNow: system_sync_now,
        durableSync: system_durable_sync,
        pwrite: system_pwrite,
        directIOAlignment: system_dio_alignment
    )
    #endif
}

/// What ``SystemCalls/noteMemory`` is told.
enum MemoryEvent: Sendable {
    case allocated, freed
}

// MARK: Threads

private final class ThreadBody {
    let name: String
    let body: @Sendable () -> Void
    init(name: String, body: @escaping @Sendable () -> Void) {
        self.name = name
        self.body = body
    }
}

/// Starts a detached thread that blocks every signal, so the host's signals are never delivered
/// to it. `pthread_create(3)` returns the errno itself.
func system_start_thread(name: String, _ body: @escaping @Sendable () -> Void) -> Result<Void, Errno> {
    var attributes = pthread_attr_t()
    pthread_attr_init(&attributes)
    defer { pthread_attr_destroy(&attributes) }
    pthread_attr_setdetachstate(&attributes, CInt(PTHREAD_CREATE_DETACHED))

    var all = sigset_t()
    var previous = sigset_t()
    sigfillset(&all)
    pthread_sigmask(SIG_SETMASK, &all, &previous)  // inherited by the new thread
    defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }

    let context = Unmanaged.passRetained(ThreadBody(name: name, body: body)).toOpaque()
    // pthread_t: an integer in glibc, a pointer (imported as optional) in Darwin and musl; the
    // start routine's argument is non-optional in Darwin only.
    #if canImport(Glibc)
    var thread = pthread_t()
    #else
    var thread: pthread_t? = nil
    #endif
    #if canImport(Darwin)
    let result = pthread_create(&thread, &attributes, { raw in
        let box = Unmanaged<ThreadBody>.fromOpaque(raw).takeRetainedValue()
        casyncfsync_set_thread_name(box.name)
        box.body()
        return nil
    }, context)
    #else
    let result = pthread_create(&thread, &attributes, { raw in
        let box = Unmanaged<ThreadBody>.fromOpaque(raw!).takeRetainedValue()
        casyncfsync_set_thread_name(box.name)
        box.body()
        return nil
    }, context)
    #endif
    guard result == 0 else {
        Unmanaged<ThreadBody>.fromOpaque(context).release()
        return .failure(Errno(rawValue: result))
    }
    return .success(())
}

/// The calling thread's `pthread_self()` as a number (never 0 for a running thread): an integer in
/// glibc, a pointer in Darwin and musl.
func system_thread_id() -> UInt {
    #if canImport(Glibc)
    UInt(pthread_self())
    #else
    UInt(bitPattern: pthread_self())
    #endif
}

// MARK: File identity

/// A file's identity: device and inode, the same for every descriptor of the file.
struct FileIdentity: Hashable, Sendable {
    var device: UInt64
    var inode: UInt64
}

func system_fstat_identity(_ fd: CInt) -> Result<FileIdentity, Errno> {
    system_fstat_status(fd).map { FileIdentity(device: $0.device, inode: $0.inode) }
}

// MARK: Scratch files (probing)

func system_unlink(_ path: String) -> Result<Void, Errno> {
    valueOrErrno(unlink(path)).map { _ in }
}

/// The current working directory (`getcwd(3)`), or `nil` when it cannot be named (removed, too
/// long).
func system_getcwd() -> String? {
    guard let pointer = getcwd(nil, 0) else { return nil }
    defer { free(pointer) }
    return String(cString: pointer)
}

func system_getenv(_ name: String) -> String? {
    getenv(name).map { String(cString: $0) }
}

func system_getpid() -> CInt { getpid() }

/// Monotonic clock, for measuring how long a probe took.
func system_monotonic_now() -> Duration {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return .seconds(now.tv_sec) + .nanoseconds(now.tv_nsec)
}

// MARK: File system type and file status (selection, probing, inline path)

/// `fstatfs(2)`: the file system's magic number (`f_type`), e.g. `0x01021994` for tmpfs.
func system_fstatfs_type(_ fd: CInt) -> Result<Int, Errno> {
    var type = 0
    return valueOrErrno(casyncfsync_fstatfs_type(fd, &type)).map { _ in type }
}

/// What `statx(2)` says of a descriptor (device, inode, type), asked without the timestamps.
struct FileStatus: Hashable, Sendable {
    /// The `S_IFMT` bits of `st_mode`.
    enum FileType: Hashable, Sendable {
        case regular, directory, other
    }
    var device: UInt64
    var inode: UInt64
    var type: FileType

    var identity: FileIdentity { FileIdentity(device: device, inode: inode) }
    var isRegularFile: Bool { type == .regular }
    /// A regular file or a directory: the kinds of file whose fsync makes data durable.
    var isFileOrDirectory: Bool { type != .other }
}

func system_fstat_status(_ fd: CInt) -> Result<FileStatus, Errno> {
    var device: UInt64 = 0
    var inode: UInt64 = 0
    var mode: CUnsignedInt = 0
    return valueOrErrno(casyncfsync_file_status(fd, &device, &inode, &mode)).map { _ in
        let type: FileStatus.FileType = switch mode {
        case 0o100000: .regular  // S_IFREG
        case 0o040000: .directory  // S_IFDIR
        default: .other
        }
        return FileStatus(device: device, inode: inode, type: type)
    }
}

/// `fsync(2)` or `fdatasync(2)`, blocking the calling thread.
func system_sync_now(_ mode: SyncMode, _ fd: CInt) -> Result<Void, Errno> {
    mode == .fsync ? system_fsync(fd) : system_fdatasync(fd)
}

// MARK: Open file descriptions

#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
/// `kcmp(getpid(), getpid(), KCMP_FILE, fd1, fd2)`: `true` when both descriptors refer to one open
/// file description (`dup(2)`, inherited, passed over a socket), `false` when they refer to two
/// (also two `open(2)`s of one file). Fails with ENOSYS where the kernel has no kcmp, EPERM where a
/// seccomp filter or policy denies it, EBADF for a closed descriptor.
func system_kcmp_file(_ fd1: CInt, _ fd2: CInt) -> Result<Bool, Errno> {
    valueOrErrno(casyncfsync_kcmp_file(fd1, fd2)).map { $0 == 0 }
}
#endif

// MARK: Direct I/O (O_DIRECT alignment, aligned memory)

/// What `statx(2)` with `STATX_DIOALIGN` says of a file (``DirectIOAlignment`` applies the rule).
struct DirectIOReport: Hashable, Sendable {
    /// Whether the kernel and the file system reported the alignments (`STATX_DIOALIGN` in
    /// `stx_mask`; Linux 6.1+, and only file systems that implement it).
    var reported: Bool
    /// `stx_dio_mem_align` (0 when not reported, or when the file does not support `O_DIRECT`).
    var memoryAlignment: UInt32
    /// `stx_dio_offset_align` (0 likewise).
    var offsetAlignment: UInt32
    /// `stx_blksize` (`st_blksize` where `statx(2)` is missing).
    var blockSize: UInt32
}

/// `statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN)`; `fstat(2)`'s block size where statx is missing.
func system_dio_alignment(_ fd: CInt) -> Result<DirectIOReport, Errno> {
    var reported: CInt = 0
    var memory: UInt32 = 0
    var offset: UInt32 = 0
    var blockSize: UInt32 = 0
    return valueOrErrno(casyncfsync_dio_alignment(fd, &reported, &memory, &offset, &blockSize)).map { _ in
        DirectIOReport(reported: reported != 0, memoryAlignment: memory, offsetAlignment: offset, blockSize: blockSize)
    }
}

/// `posix_memalign(3)` (which returns the errno itself): `byteCount` bytes at an address that is a
/// multiple of `alignment` (a power of two; raised to the pointer size, the least it accepts).
func system_aligned_allocate(_ byteCount: Int, _ alignment: Int) -> Result<UnsafeMutableRawPointer, Errno> {
    var memory: UnsafeMutableRawPointer?
    let result = posix_memalign(&memory, max(alignment, MemoryLayout<UnsafeRawPointer>.size), byteCount)
    guard result == 0, let memory else { return .failure(Errno(rawValue: result == 0 ? ENOMEM : result)) }
    return .success(memory)
}

/// `free(3)` of memory from ``system_aligned_allocate(_:_:)``.
func system_aligned_free(_ memory: UnsafeMutableRawPointer) {
    free(memory)
}

// MARK: Sleeping and yielding (no table entry: nothing to inject)

func system_sleep(_ duration: timespec) {
    var request = duration
    var left = timespec()
    while nanosleep(&request, &left) != 0 && casyncfsync_errno() == EINTR { request = left }
}

func system_yield() {
    sched_yield()
}
