/// The ways this library hands a sync to the system.
///
/// The raw values are the spellings accepted by the `ASYNC_FSYNC_BACKEND` environment variable
/// (see ``AsyncSync/makeBackend(environment:directory:)-uycg``).
public enum BackendKind: String, CaseIterable, Sendable, Hashable, CustomStringConvertible {
    /// Linux kernel AIO: `io_submit(2)` with `IOCB_CMD_FSYNC` / `IOCB_CMD_FDSYNC`, completions
    /// reaped with `io_getevents(2)`. See `LibaioBackend` (Linux only).
    case libaio
    /// glibc POSIX aio: `aio_fsync(3)` with `O_SYNC` / `O_DSYNC`, completions read with
    /// `aio_error(3)` and `aio_return(3)`. See `PosixAIOBackend` (Linux only).
    case posix
    /// A blocking sync on one of a few dedicated threads (`fcntl(F_FULLFSYNC)` on Darwin): every
    /// platform, and what the selection gives off Linux. See ``PortableBackend``.
    case portable

    /// The kind's name, as `ASYNC_FSYNC_BACKEND` spells it.
    public var description: String { rawValue }
}

extension BackendKind {
    /// The kinds `auto` tries, in order: kernel AIO then POSIX aio on Linux with glibc (the portable
    /// backend only when forced), the portable backend elsewhere (macOS, musl) and under
    /// `ASYNC_FSYNC_PORTABLE`.
    static var automaticOrder: [BackendKind] {
        #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
        [.libaio, .posix]
        #else
        [.portable]
        #endif
    }

    /// The kinds this build can make, in the order probes are reported.
    static var availableHere: [BackendKind] {
        #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
        [.libaio, .posix, .portable]
        #else
        [.portable]
        #endif
    }

    /// Which path this build took, for messages.
    static var buildDescription: String {
        #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
        "Linux"
        #elseif os(Linux) && ASYNC_FSYNC_PORTABLE
        "Linux with ASYNC_FSYNC_PORTABLE"
        #elseif os(Linux)
        "Linux without glibc"
        #else
        "not Linux"
        #endif
    }
}
