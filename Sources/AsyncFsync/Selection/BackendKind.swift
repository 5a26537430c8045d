/// The ways this library hands a sync to the system.
///
/// The raw values are the spellings accepted by the `ASYNC_FSYNC_BACKEND` environment variable
/// (see ``AsyncSync/Configuration/init(environment:)``).
///
/// New kinds may be added in a later version without breaking source: it is a struct with static
/// members, not an enum, so a `switch` over it needs a `default` case.
public struct BackendKind: RawRepresentable, CaseIterable, Sendable, Hashable, CustomStringConvertible {
    /// The known kinds, in the order ``allCases`` lists them. Adding a kind is a case here and a
    /// static member below (and, when `auto` may give it, a place in `automaticOrder`).
    private enum Base: String, CaseIterable, Sendable {
        case libaio, posix, portable
    }
    private var base: Base
    private init(_ base: Base) { self.base = base }

    /// Linux kernel AIO: `io_submit(2)` with `IOCB_CMD_FSYNC` / `IOCB_CMD_FDSYNC`, completions
    /// reaped with `io_getevents(2)`. See `LibaioBackend` (Linux with glibc only).
    public static let libaio = BackendKind(.libaio)
    /// glibc POSIX aio: `aio_fsync(3)` with `O_SYNC` / `O_DSYNC`, completions read with
    /// `aio_error(3)` and `aio_return(3)`. See `PosixAIOBackend` (Linux with glibc only).
    public static let posix = BackendKind(.posix)
    /// A blocking sync on one of a few dedicated threads (`fcntl(F_FULLFSYNC)` on Darwin): every
    /// platform, and what the selection gives off Linux. See ``PortableBackend``.
    public static let portable = BackendKind(.portable)

    /// Every kind this version knows: ``libaio``, ``posix``, ``portable``. `auto` probes kernel AIO
    /// then POSIX aio on Linux with glibc (the portable backend only when forced), and the portable
    /// backend alone elsewhere; making a kind this build cannot make (`libaio` or `posix` off
    /// Linux) fails with ``AsyncSyncError/Code/backendUnavailable`` and `ENOSYS`.
    public static var allCases: [BackendKind] { Base.allCases.map(BackendKind.init) }

    /// The kind `ASYNC_FSYNC_BACKEND` spells `rawValue`, or `nil` when this version knows none.
    ///
    /// - Parameter rawValue: A kind's name, such as `"libaio"`.
    public init?(rawValue: String) {
        guard let base = Base(rawValue: rawValue) else { return nil }
        self.base = base
    }

    /// The kind's name, as `ASYNC_FSYNC_BACKEND` spells it.
    public var rawValue: String { base.rawValue }

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
