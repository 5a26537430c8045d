import SystemPackage

/// What probing found out about one backend on this host.
///
/// A probe makes a real sync: it creates a scratch file in a directory (removed at once), hands one
/// `fdatasync` of it to the backend's mechanism (`io_setup(2)` of one event, `IOCB_CMD_FDSYNC`
/// through `io_submit(2)`, `io_getevents(2)` with a timeout, `io_destroy(2)`; or one
/// `aio_fsync(3)` with `O_DSYNC` waited for with `aio_suspend(3)` and a timeout). A backend is
/// usable when that sync completed successfully. Results are cached per file system (see
/// ``AsyncSync/probe(directory:)``); docs/selection.md lists the steps and their cost.
///
/// ```
/// libaio: usable (ext4 in /tmp; probe took 0.21 ms)
/// libaio: unusable at setup: io_setup failed with ENOSYS (kernel AIO absent or denied by seccomp) (ext4 in /tmp; probe took 0.01 ms)
/// ```
public struct BackendProbe: Sendable, Hashable, CustomStringConvertible {
    /// The step of a probe that failed.
    ///
    /// New steps may be added in a later version; switch over it with a `default` case.
    public struct Step: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
        private enum Base: String, Sendable { case setup, submit, completion, timeout }
        private var base: Base
        private init(_ base: Base) { self.base = base }

        /// Making the resources: the scratch file, `io_setup(2)`.
        public static let setup = Step(.setup)
        /// Handing the sync to the system: `io_submit(2)`, `aio_fsync(3)`.
        public static let submit = Step(.submit)
        /// The sync's result: the errno in `io_event.res` or from `aio_error(3)`, or a failure of
        /// the call waiting for it.
        public static let completion = Step(.completion)
        /// No completion within the probe's timeout (a stuck file system?).
        public static let timeout = Step(.timeout)

        /// The step named `rawValue` (`"setup"`, `"submit"`, `"completion"`, `"timeout"`), or `nil`.
        ///
        /// - Parameter rawValue: A step's name.
        public init?(rawValue: String) {
            guard let base = Base(rawValue: rawValue) else { return nil }
            self.base = base
        }

        /// The step's name.
        public var rawValue: String { base.rawValue }

        /// The step's name, its raw value.
        public var description: String { rawValue }
    }

    /// The backend probed.
    public var kind: BackendKind
    /// Why the backend is not usable, or `nil` when it is. ``AsyncSyncError/errno`` is the errno
    /// (nil for a timeout) and ``AsyncSyncError/systemCall`` the C function.
    public var failure: AsyncSyncError?
    /// The step that failed, or `nil` when the backend is usable.
    public var failedStep: Step?
    /// The directory whose file system was probed.
    public var directory: FilePath
    /// The probed file system's type, such as `ext4` or `tmpfs` (from `statfs(2)`), or `memfd`
    /// when no scratch file could be made in ``directory`` (see ``note``).
    public var fileSystem: String
    /// Whether the file system keeps its data in memory only (tmpfs, ramfs): its fsync does
    /// nothing but return 0.
    public var isMemoryFileSystem: Bool
    /// Whether backends made by ``AsyncSync/makeBackend(environment:directory:)`` sync files on this file system inline
    /// (a direct `fsync(2)` on the caller's thread): on a memory file system unless
    /// `ASYNC_FSYNC_INLINE=off`.
    public var inlineSync: Bool
    /// How long the probe took (wall time), measured when it ran.
    public var duration: Duration
    /// Whether this result was found in the per-file-system cache instead of being measured now.
    public var isCached: Bool
    /// Something a person should know about how the probe was made, for example
    /// `cannot create a scratch file in /ro (EROFS); the mechanism was probed on a memfd` or
    /// `/data does not exist or is not a directory (ENOENT): the data's file system was not probed; …`.
    /// The ``description`` of such a probe says "mechanism works, not probed on the data's file
    /// system" rather than "usable".
    public var note: String?
    /// How the selection treats the outcome.
    var verdict: Verdict

    /// How a probe's outcome counts for the selection.
    enum Verdict: Hashable, Sendable {
        /// The sync completed successfully.
        case usable
        /// The mechanism is not supported here (ENOSYS, EPERM, EAGAIN at `io_setup`; ENOSYS,
        /// EPERM, EINVAL at submission of a sync of a regular file): `auto` tries the next backend.
        case unsupported
        /// Setup or submission failed for another reason (ENOMEM, EMFILE, …): not a reason to fall
        /// back; the selection reports it.
        case unavailable
        /// The mechanism took the sync; the sync failed or did not complete in time. That is the
        /// file system's answer, not the backend's, so the selection does not fall back.
        case syncFailed
    }

    /// Whether the backend completed a real sync here.
    public var isUsable: Bool { failure == nil }

    /// Whether the backend's mechanism works here: it completed the sync, or it took the sync and
    /// the file system answered with an error or not in time (the file system's failure, which
    /// another backend would meet too).
    public var isSupported: Bool { verdict == .usable || verdict == .syncFailed }

    /// The errno of the failed step, if any.
    public var errno: Errno? { failure?.errno }

    /// Why the backend is not usable, for example
    /// `io_setup failed with EAGAIN (/proc/sys/fs/aio-max-nr exhausted: aio-nr 65536 of 65536)`;
    /// `nil` when it is usable.
    public var reason: String? { failure?.probeReason }

    /// One line: the kind, usable or the failed step and its reason, the file system, and the cost.
    public var description: String {
        var text = "\(kind): "
        if let reason {
            text += "unusable at \(failedStep ?? .setup): \(reason)"
        } else if fileSystem == "memfd" {
            // Not the data's file system: only the mechanism is known to work.
            text += "mechanism works, not probed on the data's file system"
        } else {
            text += "usable"
        }
        var details: [String] = []
        if let note {
            details.append(note)
        } else {
            details.append("\(fileSystem) in \(directory)")
        }
        if inlineSync {
            details.append("syncs of files on \(fileSystem) are made inline with fsync(2)/fdatasync(2)")
        }
        details.append("probe took \(Self.milliseconds(duration)) ms" + (isCached ? ", cached" : ""))
        return text + " (" + details.joined(separator: "; ") + ")"
    }

    static func milliseconds(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        let micros = seconds * 1_000_000 + attoseconds / 1_000_000_000_000
        return "\(micros / 1000).\(String(micros % 1000 / 10).leftPadded(to: 2))"
    }
}

extension AsyncSyncError {
    /// The failure as a probe reports it: `io_setup failed with ENOSYS (hint)`, or the message
    /// alone when there is no errno (a timeout).
    var probeReason: String {
        guard let errno else { return message.isEmpty ? "\(systemCall ?? step.rawValue) failed" : message }
        var text = "\(systemCall ?? step.rawValue) failed with \(errno.symbolicName)"
        if !message.isEmpty { text += " (\(message))" }
        return text
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

extension BackendProbe {
    /// A probe that failed before it could look at the file system (no thread to run on, no
    /// answer in time).
    static func unusable(
        _ kind: BackendKind, in directory: FilePath, errno: Errno?, step: Step, call: String?, message: String
    ) -> BackendProbe {
        BackendProbe(
            kind: kind,
            failure: AsyncSyncError(
                code: .backendUnavailable, errno: errno, operation: .probe,
                step: step == .timeout ? .completion : AsyncSyncError.Step(rawValue: step.rawValue) ?? .setup,
                backend: kind, systemCall: call, message: message),
            failedStep: step, directory: directory, fileSystem: "unknown", isMemoryFileSystem: false,
            inlineSync: false, duration: .zero, isCached: false, note: nil,
            verdict: step == .timeout ? .syncFailed : .unavailable)
    }
}
