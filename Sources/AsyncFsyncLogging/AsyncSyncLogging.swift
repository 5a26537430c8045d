#if Logging
// Built with the package trait Logging only (its dependency swift-log is resolved only then).
import AsyncFsync
import Logging

/// An ``AsyncFsync/AsyncSyncObserver`` that logs the library's decisions and failures with swift-log.
///
/// Install it once, when the process sets up logging:
///
/// ```swift
/// LoggingSystem.bootstrap(StreamLogHandler.standardError)
/// AsyncSyncLogging.bootstrap(logger: Logger(label: "asyncfsync"))
/// ```
///
/// What it logs, and at which level:
///
/// | Event | Level | Metadata |
/// |---|---|---|
/// | ``AsyncFsync/AsyncSync/makeBackend(environment:directory:)`` chose a backend | `info` | `backend`, `choice`, `probes` (one ``AsyncFsync/BackendProbe`` description each) |
/// | a file system refused by kernel AIO is served through POSIX aio | `notice` | `device`, `errno`, `error` |
/// | a durability failure was recorded for a file | `error` | `backend`, `descriptor`, `errno`, `sticky` |
/// | a recorded failure was cleared | `notice` | `backend`, `descriptor` |
/// | a sync failed (only with ``syncFailureLevel`` set) | ``syncFailureLevel`` | `backend`, `mode`, `code`, `errno`, `descriptor`, `duration`, `error` |
///
/// The `errno` value is the errno's C name (`EIO`, from ``AsyncFsync/AsyncSyncError/symbolicName(of:)``)
/// and `code` the code's token (`shut_down`, ``AsyncFsync/AsyncSyncError/Code/name``; `cancelled`
/// for a `CancellationError`): the same values `AsyncFsyncMetrics` gives its labels, so that a log
/// line and a metric of one failure match. Successful syncs, the syncs the system ran and
/// ``AsyncFsync/GroupCommit`` batches are not logged (use `AsyncFsyncMetrics` for those).
public struct AsyncSyncLogging: AsyncSyncObserver {
    /// The logger every message goes to; its `logLevel` filters them as usual.
    public var logger: Logger

    /// The level of a message for every failed sync call, or `nil` (the default) to log none.
    ///
    /// A failure of a sync is the caller's to handle; most applications log it there. Set this to
    /// `.debug` to trace them all, or `.warning` when nothing else logs them. Calls that threw
    /// `CancellationError` are logged at `.debug` at most.
    public var syncFailureLevel: Logger.Level?

    /// Creates the observer; add it with ``AsyncFsync/AsyncSync/addObserver(_:)`` (or use
    /// ``bootstrap(logger:syncFailureLevel:)``, which does both).
    ///
    /// - Parameters:
    ///   - logger: Where the messages go.
    ///   - syncFailureLevel: The level for each failed sync, or `nil` (the default) for none.
    public init(logger: Logger, syncFailureLevel: Logger.Level? = nil) {
        self.logger = logger
        self.syncFailureLevel = syncFailureLevel
    }

    /// Creates the observer and adds it for the life of the process
    /// (``AsyncFsync/AsyncSync/addObserver(_:)``). Call it once.
    ///
    /// - Parameters:
    ///   - logger: Where the messages go.
    ///   - syncFailureLevel: The level for each failed sync, or `nil` (the default) for none.
    /// - Returns: The installed observer.
    @discardableResult
    public static func bootstrap(logger: Logger, syncFailureLevel: Logger.Level? = nil) -> AsyncSyncLogging {
        let observer = AsyncSyncLogging(logger: logger, syncFailureLevel: syncFailureLevel)
        AsyncSync.addObserver(observer)
        return observer
    }

    /// Logs the selection and every probe behind it at `info`.
    public func backendSelected(_ kind: BackendKind, choice: String, probes: [BackendProbe]) {
        logger.info(
            "asyncfsync selected the \(kind) backend (\(choice))",
            metadata: [
                "backend": "\(kind)",
                "choice": "\(choice)",
                "probes": .array(probes.map { .string($0.description) }),
            ])
    }

    /// Logs at `notice` that a file system is served through POSIX aio from now on.
    public func fileSystemServedByPOSIX(device: String, refusal: AsyncSyncError) {
        var metadata: Logger.Metadata = ["device": "\(device)", "error": "\(refusal)"]
        if let errno = refusal.errnoName { metadata["errno"] = "\(errno)" }
        logger.notice(
            "kernel AIO refused a sync on the file system \(device); its syncs go through POSIX aio from now on",
            metadata: metadata)
    }

    /// Logs the recorded durability failure at `error`.
    public func durabilityFailureRecorded(backend: BackendKind, descriptor: FileDescriptor, errno: Errno, sticky: Bool) {
        let consequence = sticky ? "; its later syncs are refused until the failure is cleared" : ""
        logger.error(
            "durability failure recorded for the file of fd \(descriptor.rawValue): \(errno) (\(AsyncSyncError.symbolicName(of: errno))); data written before it may be lost\(consequence)",
            metadata: [
                "backend": "\(backend)",
                "descriptor": "\(descriptor.rawValue)",
                "errno": "\(AsyncSyncError.symbolicName(of: errno))",
                "sticky": "\(sticky)",
            ])
    }

    /// Logs the cleared failure at `notice`.
    public func durabilityFailureCleared(backend: BackendKind, descriptor: FileDescriptor) {
        logger.notice(
            "durability failure cleared for the file of fd \(descriptor.rawValue); its syncs run again",
            metadata: ["backend": "\(backend)", "descriptor": "\(descriptor.rawValue)"])
    }

    /// Logs a failed sync at ``syncFailureLevel`` (nothing when it is `nil` or the sync succeeded).
    public func syncCompleted(backend: BackendKind, mode: SyncMode, duration: Duration, error: (any Error)?) {
        guard let error, var level = syncFailureLevel else { return }
        if error is CancellationError, level > .debug { level = .debug }
        // Nothing is built for a message the logger's level filters out.
        guard logger.logLevel <= level else { return }
        var metadata: Logger.Metadata = [
            "backend": "\(backend)",
            "mode": "\(mode)",
            "duration": "\(duration)",
            "error": "\(error)",
        ]
        switch error {
        case let error as AsyncSyncError:
            metadata["code"] = "\(error.code.name)"
            if let errno = error.errnoName { metadata["errno"] = "\(errno)" }
            if let descriptor = error.descriptor { metadata["descriptor"] = "\(descriptor.rawValue)" }
        case is CancellationError:
            metadata["code"] = "cancelled"
        default:
            break
        }
        logger.log(level: level, "\(mode) failed on the \(backend) backend: \(error)", metadata: metadata)
    }
}

#endif
