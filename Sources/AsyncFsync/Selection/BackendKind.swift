/// The ways this library hands a sync to the kernel.
///
/// The raw values are the spellings accepted by the `ASYNC_FSYNC_BACKEND` environment variable
/// (see ``AsyncSync/Configuration/init(environment:)``).
///
/// New kinds may be added in a later version without breaking source: it is a struct with static
/// members, not an enum, so a `switch` over it needs a `default` case.
public struct BackendKind: RawRepresentable, CaseIterable, Sendable, Hashable, CustomStringConvertible {
    /// The known kinds, in the order `auto` probes them. Adding a kind is a case here and a
    /// static member below.
    private enum Base: String, CaseIterable, Sendable {
        case libaio, posix
    }
    private var base: Base
    private init(_ base: Base) { self.base = base }

    /// Linux kernel AIO: `io_submit(2)` with `IOCB_CMD_FSYNC` / `IOCB_CMD_FDSYNC`, completions
    /// reaped with `io_getevents(2)`. See ``LibaioBackend``.
    public static let libaio = BackendKind(.libaio)
    /// glibc POSIX aio: `aio_fsync(3)` with `O_SYNC` / `O_DSYNC`, completions read with
    /// `aio_error(3)` and `aio_return(3)`. See ``PosixAIOBackend``.
    public static let posix = BackendKind(.posix)

    /// Every kind this version knows, in the order `auto` probes them.
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
