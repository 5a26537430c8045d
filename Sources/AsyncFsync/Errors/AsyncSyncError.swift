import SystemPackage

/// The one error every backend throws.
///
/// A failure carries the errno the kernel or glibc reported (``errno``), what was being done
/// (``operation``), at which step the backend learned of it (``step``), the backend
/// (``backend``) and the descriptor (``descriptor``). The same fault gives the same
/// ``code``, ``errno`` and ``operation`` on either backend, although the backends see some
/// faults at different steps: kernel AIO refuses a closed descriptor at `io_submit(2)`, glibc at
/// `aio_fsync(3)`; kernel AIO refuses a pipe at `io_submit(2)` while glibc reports it at
/// completion. ``step`` and ``systemCall`` say where it was seen; compare errors by
/// ``code``, ``errno`` and ``operation``.
///
/// ```swift
/// do {
///     try await backend.fdatasync(fd)
/// } catch let error as AsyncSyncError where error.errno == .noSpace {
///     // the data written since the last successful sync may be gone
/// }
/// ```
public struct AsyncSyncError: Error, Sendable, Hashable {
    /// A machine-readable category of the failure.
    public var code: Code
    /// The errno reported by the system, or `nil` for failures that have none
    /// (``Code/invalidConfiguration``, ``Code/shutDown``, a probe that timed out).
    public var errno: Errno?
    /// What was being done.
    public var operation: Operation
    /// The step at which the backend learned of the failure.
    public var step: Step
    /// The backend that failed, or `nil` when no backend was involved (an invalid
    /// `ASYNC_FSYNC_BACKEND` value).
    public var backend: BackendKind?
    /// The descriptor that was being synced, if any.
    public var descriptor: FileDescriptor?
    /// The C function that reported the failure (`"io_submit"`, `"io_getevents"`,
    /// `"aio_fsync"`, `"aio_error"`, `"io_setup"`, …), if any.
    public var systemCall: String?
    /// Further detail for a person, without the parts already in the other fields.
    public var message: String

    /// Creates an error. Backends normally use the factories in `AsyncSyncError+Syscall.swift`.
    public init(
        code: Code,
        errno: Errno?,
        operation: Operation,
        step: Step,
        backend: BackendKind?,
        descriptor: FileDescriptor? = nil,
        systemCall: String? = nil,
        message: String = ""
    ) {
        self.code = code
        self.errno = errno
        self.operation = operation
        self.step = step
        self.backend = backend
        self.descriptor = descriptor
        self.systemCall = systemCall
        self.message = message
    }

    /// The C name of ``errno`` (`"EIO"`, `"EBADF"`; see ``symbolicName(of:)``), or `nil` when
    /// there is none.
    public var errnoName: String? { errno.map(Self.symbolicName(of:)) }

    /// The C name of `errno`, such as `"EIO"`, `"ENOSPC"` or `"EBADF"`, or `"errno_<n>"` for one
    /// this table does not name: one token, what logs and metrics name an errno by.
    ///
    /// - Parameter errno: Any errno.
    /// - Returns: Its symbolic name.
    public static func symbolicName(of errno: Errno) -> String {
        errno.knownSymbolicName ?? "errno_\(errno.rawValue)"
    }

    /// Whether the failure may mean that written data is lost.
    ///
    /// `true` for an errno with which a sync *completed* (step ``Step/completion``), other than the
    /// ones that only say the request could not be made (`EBADF`, `EINVAL`, `EAGAIN`, `ENOSYS`,
    /// `EINTR`, `ECANCELED`, `EOPNOTSUPP`): `EIO`, `ENOSPC`, `EDQUOT`, `EROFS`, `ENOTCONN` and the
    /// rest; and always for ``Code/earlierFailure`` and ``Code/concurrentFailure``. A failure at
    /// submission (``Step/submit``: `io_submit(2)` or `aio_fsync(3)` refused the request, for example
    /// `EPERM` under seccomp or `ENOMEM`) never is: nothing reached the file system. Data covered by
    /// a durability failure must be treated as lost: the kernel reports a failed writeback once and
    /// a later sync of the same file may succeed although the data is gone.
    ///
    /// A failed ``Operation/write`` never is (the data did not reach the file, and no writeback of
    /// earlier data was involved). A ``Operation/durableWrite`` that completed with an errno is,
    /// except for `ENOSPC`, `EDQUOT` and `EFBIG` (the blocks were refused before anything was
    /// written).
    public var isDurabilityFailure: Bool {
        guard let errno else { return false }
        if operation == .durableWrite {
            switch code {
            case .earlierFailure, .concurrentFailure: return true
            case .system: return step == .completion && Self.isDurableWriteDurabilityErrno(errno)
            default: return false
            }
        }
        guard operation.isSync else { return false }
        switch code {
        case .earlierFailure, .concurrentFailure: return true
        case .system: return step == .completion && Self.isDurabilityErrno(errno)
        default: return false
        }
    }

    /// Whether an `RWF_DSYNC` write that completed with `errno` may have lost data written before
    /// it: not when the file system refused to allocate the blocks (`ENOSPC`, `EDQUOT`, `EFBIG`),
    /// which happens before anything of the write reaches the file; otherwise as for a sync.
    static func isDurableWriteDurabilityErrno(_ errno: Errno) -> Bool {
        switch errno {
        case .noSpace, .diskQuotaExceeded, .fileTooLarge: false
        default: isDurabilityErrno(errno)
        }
    }

    /// Whether a sync that completed with `errno` may have lost data (the errno part of
    /// ``isDurabilityFailure``).
    static func isDurabilityErrno(_ errno: Errno) -> Bool {
        switch errno {
        case .badFileDescriptor, .invalidArgument, .resourceTemporarilyUnavailable,
            .noFunction, .interrupted, .canceled, .notSupported:
            false
        default:
            true
        }
    }
}

extension AsyncSyncError {
    /// A machine-readable category of an ``AsyncSyncError``.
    ///
    /// New codes may be added; switch over it with a `default` case.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: Hashable, Sendable {
            case system, earlierFailure, concurrentFailure, backendUnavailable, invalidConfiguration, shutDown
        }
        private var base: Base
        private init(_ base: Base) { self.base = base }

        /// The system reported an errno for the request; see ``AsyncSyncError/errno``.
        public static let system = Code(.system)
        /// An earlier sync of the same file failed with a durability error (see
        /// ``AsyncSyncError/isDurabilityFailure``), so this sync was refused without running:
        /// the kernel reports a failed writeback only once, and a sync that now succeeded would
        /// hide the loss. ``AsyncSyncError/errno`` is the earlier errno. Clear it with
        /// ``AsyncSyncBackend/clearFailure(of:)`` once the data has been rewritten.
        public static let earlierFailure = Code(.earlierFailure)
        /// The system reported this sync successful, but a durability failure of the same file was
        /// recorded while it was in flight (another sync of the file, through any descriptor, got
        /// `EIO`, `ENOSPC`, …). The kernel reports a failed writeback once per open file, so the
        /// success may cover lost data. ``AsyncSyncError/errno`` is the other sync's errno.
        public static let concurrentFailure = Code(.concurrentFailure)
        /// The backend cannot work on this host (setup failed, the probe failed, or the kind
        /// was forced but is not usable).
        public static let backendUnavailable = Code(.backendUnavailable)
        /// A configuration value (such as `ASYNC_FSYNC_BACKEND`) is not valid.
        public static let invalidConfiguration = Code(.invalidConfiguration)
        /// The backend was shut down; no new requests are accepted.
        public static let shutDown = Code(.shutDown)

        /// The code's name as one token (`"system"`, `"earlier_failure"`, `"concurrent_failure"`,
        /// `"backend_unavailable"`, `"invalid_configuration"`, `"shut_down"`): what logs and
        /// metrics name it by, so that a log line and a metric label of one failure agree.
        public var name: String {
            switch base {
            case .system: "system"
            case .earlierFailure: "earlier_failure"
            case .concurrentFailure: "concurrent_failure"
            case .backendUnavailable: "backend_unavailable"
            case .invalidConfiguration: "invalid_configuration"
            case .shutDown: "shut_down"
            }
        }

        /// The code's name in words, as in docs/errors.md (`"system"`, `"earlier failure"`, …).
        public var description: String {
            switch base {
            case .system: "system"
            case .earlierFailure: "earlier failure"
            case .concurrentFailure: "concurrent failure"
            case .backendUnavailable: "backend unavailable"
            case .invalidConfiguration: "invalid configuration"
            case .shutDown: "shut down"
            }
        }
    }

    /// What was being done when an ``AsyncSyncError`` happened.
    public struct Operation: Hashable, Sendable, CustomStringConvertible {
        private enum Base: Hashable, Sendable { case fsync, fdatasync, setup, probe, write, durableWrite, open, close }
        private var base: Base
        private init(_ base: Base) { self.base = base }

        /// A sync of data and metadata (``SyncMode/fsync``).
        public static let fsync = Operation(.fsync)
        /// A sync of data (``SyncMode/fdatasync``).
        public static let fdatasync = Operation(.fdatasync)
        /// Creating a backend (for example `io_setup(2)` or choosing a backend).
        public static let setup = Operation(.setup)
        /// Probing whether a backend works (see ``AsyncSync/probe(directory:)``).
        public static let probe = Operation(.probe)

        /// A write of a buffer to a file, and what is checked before one: an ``AlignedBuffer``'s
        /// allocation, a file's ``DirectIOAlignment`` and a request's alignment.
        public static let write = Operation(.write)

        /// A durable write whose durability is one system request (an `O_DIRECT` write with
        /// `RWF_DSYNC`): its failure at completion may be a failure of the write or of its sync.
        public static let durableWrite = Operation(.durableWrite)

        /// Opening a file (``AsyncFile/open(_:options:permissions:backend:)``, or the directory
        /// ``AsyncFile/syncDirectory(containing:backend:)`` syncs): `open(2)` and what is learned at open.
        public static let open = Operation(.open)

        /// Closing a file's descriptor (``AsyncFile/close()``): `close(2)`.
        public static let close = Operation(.close)

        /// The operation of a sync in `mode`.
        public static func sync(_ mode: SyncMode) -> Operation {
            mode == .fsync ? .fsync : .fdatasync
        }

        /// Whether this is ``fsync`` or ``fdatasync``.
        public var isSync: Bool { base == .fsync || base == .fdatasync }

        /// The operation's name: `"fsync"`, `"fdatasync"`, `"setup"`, `"probe"`, `"write"` or
        /// `"durable write"`.
        public var description: String {
            switch base {
            case .fsync: "fsync"
            case .fdatasync: "fdatasync"
            case .setup: "setup"
            case .probe: "probe"
            case .write: "write"
            case .durableWrite: "durable write"
            case .open: "open"
            case .close: "close"
            }
        }
    }

    /// The step of a request at which a backend learned of a failure.
    ///
    /// New steps may be added in a later version; switch over it with a `default` case.
    public struct Step: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Sendable { case setup, submit, completion, request }
        private var base: Base
        private init(_ base: Base) { self.base = base }

        /// Creating the backend or its resources (`io_setup(2)`, a thread, an eventfd).
        public static let setup = Step(.setup)
        /// Handing the request to the kernel or glibc (`io_submit(2)`, `aio_fsync(3)`).
        public static let submit = Step(.submit)
        /// The request's result (`io_getevents(2)`'s `res`, `aio_error(3)`).
        public static let completion = Step(.completion)
        /// Before anything reached the system (the backend was shut down, a bad setting).
        public static let request = Step(.request)

        /// The step named `rawValue` (`"setup"`, `"submit"`, `"completion"`, `"request"`), or `nil`.
        ///
        /// - Parameter rawValue: A step's name.
        public init?(rawValue: String) {
            guard let base = Base(rawValue: rawValue) else { return nil }
            self.base = base
        }

        /// The step's name (`"submit"`, …).
        public var rawValue: String { base.rawValue }

        /// The step's name, its raw value (`"submit"`, …).
        public var description: String { rawValue }
    }
}

extension AsyncSyncError: CustomStringConvertible, CustomDebugStringConvertible {
    /// One line a person can act on, for example
    /// `fdatasync of fd 7 failed on the libaio backend: Input/output error (EIO) at completion`.
    public var description: String {
        var text: String
        switch code {
        case .shutDown:
            text = "\(operation)\(descriptorPhrase) refused: the \(backendPhrase)backend was shut down"
        case .invalidConfiguration:
            text = "invalid configuration"
        case .backendUnavailable:
            text = "\(backendPhrase)backend unavailable"
        case .earlierFailure:
            text = "\(operation)\(descriptorPhrase) refused on the \(backendPhrase)backend: an earlier sync of this file failed"
        case .concurrentFailure:
            text = "\(operation)\(descriptorPhrase) failed on the \(backendPhrase)backend: a sync of this file in flight at the same time failed"
        default:
            text = "\(operation)\(descriptorPhrase) failed\(backend.map { " on the \($0) backend" } ?? "")"
        }
        if let errno {
            text += ": \(errno.description) (\(errno.symbolicName))"
            if let systemCall { text += " from \(systemCall)" }
            if code == .system { text += " at \(step)" }
        }
        if !message.isEmpty { text += errno == nil ? ": \(message)" : "; \(message)" }
        return text
    }

    /// The description followed by every field, for logs.
    public var debugDescription: String {
        var fields = ["code: \(code)", "operation: \(operation)", "step: \(step)"]
        if let errno { fields.append("errno: \(errno.symbolicName) (\(errno.rawValue))") }
        if let backend { fields.append("backend: \(backend)") }
        if let descriptor { fields.append("descriptor: \(descriptor.rawValue)") }
        if let systemCall { fields.append("systemCall: \(systemCall)") }
        return "AsyncSyncError(\(description); \(fields.joined(separator: ", ")))"
    }

    private var descriptorPhrase: String {
        descriptor.map { " of fd \($0.rawValue)" } ?? ""
    }

    private var backendPhrase: String {
        backend.map { "\($0) " } ?? ""
    }
}
