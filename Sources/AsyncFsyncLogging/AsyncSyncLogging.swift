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
/// | a write or durable write failed (only with ``writeFailureLevel`` set) | ``writeFailureLevel`` | `backend`, `kind`, `bytes`, `code`, `errno`, `descriptor`, `duration`, `error` |
///
/// The `errno` value is the errno's C name (`EIO`, from ``AsyncFsync/AsyncSyncError/symbolicName(of:)``)
/// and `code` the code's token (`shut_down`, ``AsyncFsync/AsyncSyncError/Code/name``; `cancelled`
/// for a `CancellationError`): the same values `AsyncFsyncMetrics` gives its labels, so that a log
/// line and a metric of one failure match; `kind` is `write` or `durable_write`, as there. Successful
/// syncs and writes, the syncs the system ran and ``AsyncFsync/GroupCommit`` batches are not logged (use `AsyncFsyncMetrics` for those).
public struct AsyncSyncLogging: AsyncSyncObserver {
    /// The logger every message goes to; its `logLevel` filters them as usual.
    public var logger: Logger

    /// The level of a message for every failed sync call, or `nil` (the default) to log none.
    ///
    /// A failure of a sync is the caller's to handle; most applications log it there. Set this to
    /// `.debug` to trace them all, or `.warning` when nothing else logs them. Calls that threw
    /// `CancellationError` are logged at `.debug` at most.
    public var syncFailureLevel: Logger.Level?

    /// The level of a message for every failed write or durable write call, or `nil` (the
    /// default) to log none.
    ///
    /// As for ``syncFailureLevel``: the caller gets the error and usually logs it. Calls that threw
    /// `CancellationError` are logged at `.debug` at most. A durable write's durability failure is
    /// also logged at `error` as a recorded durability failure, whatever this level.
    public var writeFailureLevel: Logger.Level?

    /// Creates the observer; add it with ``AsyncFsync/AsyncSync/addObserver(_:)`` (or use
    /// ``bootstrap(logger:syncFailureLevel:writeFailureLevel:)``, which does both).
    ///
    /// - Parameters:
    ///   - logger: Where the messages go.
    ///   - syncFailureLevel: The level for each failed sync, or `nil` (the default) for none.
    ///   - writeFailureLevel: The level for each failed write or durable write, or `nil` (the
    ///     default) for none.
    public init(logger: Logger, syncFailureLevel: Logger.Level? = nil, writeFailureLevel: Logger.Level? = nil) {
        self.logger = logger
        self.syncFailureLevel = syncFailureLevel
        self.writeFailureLevel = writeFailureLevel
    }

    /// Creates the observer and adds it for the life of the process
    /// (``AsyncFsync/AsyncSync/addObserver(_:)``). Call it once.
    ///
    /// - Parameters:
    ///   - logger: Where the messages go.
    ///   - syncFailureLevel: The level for each failed sync, or `nil` (the default) for none.
    ///   - writeFailureLevel: The level for each failed write or durable write, or `nil` (the
    ///     default) for none.
    /// - Returns: The installed observer.
    @discardableResult
    public static func bootstrap(
        logger: Logger, syncFailureLevel: Logger.Level? = nil, writeFailureLevel: Logger.Level? = nil
    ) -> AsyncSyncLogging {
        let observer = AsyncSyncLogging(logger: logger, syncFailureLevel: syncFailureLevel, writeFailureLevel: writeFailureLevel)
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
        guard let error, let level = Self.level(syncFailureLevel, for: error), logger.logLevel <= level else { return }
        var metadata: Logger.Metadata = ["backend": "\(backend)", "mode": "\(mode)"]
        Self.describe(error, duration: duration, into: &metadata)
        logger.log(level: level, "\(mode) failed on the \(backend) backend: \(error)", metadata: metadata)
    }

    /// Logs a failed write or durable write at ``writeFailureLevel`` (nothing when it is `nil` or
    /// the write succeeded).
    public func writeCompleted(backend: BackendKind, durable: Bool, bytes: Int, duration: Duration, error: (any Error)?) {
        guard let error, let level = Self.level(writeFailureLevel, for: error), logger.logLevel <= level else { return }
        let kind = durable ? "durable_write" : "write"
        var metadata: Logger.Metadata = ["backend": "\(backend)", "kind": "\(kind)", "bytes": "\(bytes)"]
        Self.describe(error, duration: duration, into: &metadata)
        let what = durable ? "durable write" : "write"
        logger.log(level: level, "\(what) of \(bytes) bytes failed on the \(backend) backend: \(error)", metadata: metadata)
    }

    /// The level a failure is logged at: `configured`, at most `.debug` for a `CancellationError`
    /// (`nil`: not logged).
    private static func level(_ configured: Logger.Level?, for error: any Error) -> Logger.Level? {
        guard var level = configured else { return nil }
        if error is CancellationError, level > .debug { level = .debug }
        return level
    }

    /// The metadata every failure message has: `duration`, `error`, and `code`, `errno` and
    /// `descriptor` as the error tells them. Built only for a message the logger's level lets through.
    private static func describe(_ error: any Error, duration: Duration, into metadata: inout Logger.Metadata) {
        metadata["duration"] = "\(duration)"
        metadata["error"] = "\(error)"
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
    }
}

#endif
