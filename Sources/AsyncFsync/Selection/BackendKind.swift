/// The two ways this library hands a sync to the kernel.
///
/// The raw values are the spellings accepted by the `ASYNC_FSYNC_BACKEND` environment variable
/// (see ``AsyncSync/makeBackend(environment:directory:)-uycg``).
public enum BackendKind: String, CaseIterable, Sendable, Hashable, CustomStringConvertible {
    /// Linux kernel AIO: `io_submit(2)` with `IOCB_CMD_FSYNC` / `IOCB_CMD_FDSYNC`, completions
    /// reaped with `io_getevents(2)`. See ``LibaioBackend``.
    case libaio
    /// glibc POSIX aio: `aio_fsync(3)` with `O_SYNC` / `O_DSYNC`, completions read with
    /// `aio_error(3)` and `aio_return(3)`. See ``PosixAIOBackend``.
    case posix

    /// The kind's name, as `ASYNC_FSYNC_BACKEND` spells it.
    public var description: String { rawValue }
}
