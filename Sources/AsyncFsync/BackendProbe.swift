import SystemPackage

/// What probing found out about one backend on this host.
///
/// A probe makes a real sync: it creates a scratch file in a directory, hands one
/// `fdatasync` of it to the backend's mechanism (`IOCB_CMD_FDSYNC` through `io_submit(2)`, or
/// `aio_fsync(3)` with `O_DSYNC`), waits for the completion with a timeout and removes the file.
/// A backend is usable when that sync completed successfully.
public struct BackendProbe: Sendable, Hashable, CustomStringConvertible {
    /// The backend probed.
    public var kind: BackendKind
    /// Why the backend cannot be used, or `nil` when it can. Its ``AsyncSyncError/step`` says
    /// which step failed and ``AsyncSyncError/errno`` the errno (nil for a timeout).
    public var failure: AsyncSyncError?
    /// The directory whose file system was probed.
    public var directory: FilePath
    /// How long the probe took.
    public var duration: Duration

    /// Whether the backend completed a real sync here.
    public var isUsable: Bool { failure == nil }

    /// For example `libaio: usable (probe took 0.21 ms in /tmp)` or
    /// `libaio: unusable: io_setup failed with ENOSYS (kernel AIO absent or denied (seccomp))`.
    public var description: String {
        let took = "probe took \(Self.milliseconds(duration)) ms in \(directory)"
        guard let failure else { return "\(kind): usable (\(took))" }
        return "\(kind): unusable: \(failure.probeReason) (\(took))"
    }

    static func milliseconds(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        let micros = seconds * 1_000_000 + attoseconds / 1_000_000_000_000
        return "\(micros / 1000).\(String(micros % 1000 / 10).leftPadded(to: 2))"
    }
}

extension AsyncSyncError {
    /// The failure as a probe reports it: `io_setup failed with ENOSYS (hint)`.
    var probeReason: String {
        var text = "\(systemCall ?? step.rawValue) failed"
        if let errno { text += " with \(errno.symbolicName)" }
        if !message.isEmpty { text += " (\(message))" }
        return text
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
