#if Metrics
// Built with the package trait Metrics only (its dependency swift-metrics is resolved only then).
import AsyncFsync
import CoreMetrics
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif canImport(Musl)
import Musl
#endif

/// An ``AsyncFsync/AsyncSyncObserver`` that records what the library's syncs and writes cost and how
/// they end, with swift-metrics.
///
/// Install it once, after `MetricsSystem.bootstrap(_:)`:
///
/// ```swift
/// MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
/// AsyncSyncMetrics.bootstrap()                 // labels start with "asyncfsync_"
/// ```
///
/// The metrics (with the default ``labelPrefix`` `asyncfsync`):
///
/// | Label | Kind | Dimensions | Recorded |
/// |---|---|---|---|
/// | `asyncfsync_sync_duration` | `Timer` (ns) | `backend`, `mode` | every sync call's duration, success or not |
/// | `asyncfsync_syncs` | `Counter` | `backend`, `mode` | every sync call (a request) |
/// | `asyncfsync_system_syncs` | `Counter` | `backend`, `mode` | every sync the system ran; requests of one descriptor share one, so `system_syncs / syncs` is the syncs per request |
/// | `asyncfsync_sync_failures` | `Counter` | `backend`, `mode`, `code`, `errno` | every sync call that threw |
/// | `asyncfsync_write_duration` | `Timer` (ns) | `backend`, `kind` | every write and durable write call's duration, success or not |
/// | `asyncfsync_writes` | `Counter` | `backend`, `kind` | every write and durable write call |
/// | `asyncfsync_write_bytes` | `Counter` | `backend`, `kind` | the bytes each call asked to write (its buffer's size), success or not |
/// | `asyncfsync_write_failures` | `Counter` | `backend`, `kind`, `code`, `errno` | every write and durable write call that threw |
/// | `asyncfsync_posix_fallbacks` | `Counter` | `device` | a file system kernel AIO refused, served through POSIX aio from then on |
/// | `asyncfsync_durability_failures` | `Counter` | `backend`, `errno` | a durability failure recorded for a file |
/// | `asyncfsync_durability_failures_cleared` | `Counter` | `backend` | a recorded failure cleared |
/// | `asyncfsync_group_commit_batch_size` | `Recorder` (histogram) | `mode` | requests covered by each ``AsyncFsync/GroupCommit`` sync |
/// | `asyncfsync_backend_selections` | `Counter` | `backend` | each backend made by ``AsyncFsync/AsyncSync/makeBackend(environment:directory:)`` |
///
/// `backend` is ``AsyncFsync/BackendKind``'s raw value (`libaio`, `posix`, `portable`), `mode`
/// `fsync` or `fdatasync`, `kind` `write` (``AsyncFsync/AsyncSyncBackend/write(_:from:at:)``) or
/// `durable_write` (``AsyncFsync/AsyncSyncBackend/durableWrite(_:from:at:)``). For a failure, `code` is ``AsyncFsync/AsyncSyncError/Code/name``
/// (`system`, `earlier_failure`, `concurrent_failure`, `shut_down`, …), `cancelled` for a
/// `CancellationError` and `other` for any other error; `errno` is
/// ``AsyncFsync/AsyncSyncError/symbolicName(of:)`` (`EIO`, `ENOSPC`, `EBADF`, …; `errno_<n>` for
/// one without a name) or `none`. `AsyncFsyncLogging` names them the same way in its metadata.
/// These dimensions have a small, fixed set of values.
///
/// The per-call metrics (the timer and the request counter for each backend and mode, the write
/// timer and the write and byte counters for each backend and kind, the batch size recorder for
/// each mode) are made once, when the observer is made; a failure's counter is made at its first
/// occurrence and kept in a lock-protected table. A successful sync or write costs two array
/// lookups and the factory's timer and counter updates; run `integrations-observer-cost` to
/// see the figure on a host.
public final class AsyncSyncMetrics: AsyncSyncObserver {
    /// The start of every label: `<labelPrefix>_sync_duration`, …
    public let labelPrefix: String

    private let factory: any MetricsFactory
    /// Indexed by ``slot(_:_:)``: backend kind × mode.
    private let durations: [Timer]
    private let requests: [Counter]
    private let systemSyncs: [Counter]
    /// Indexed by ``writeSlot(_:durable:)``: backend kind × write kind.
    private let writeDurations: [Timer]
    private let writes: [Counter]
    private let writeBytes: [Counter]
    /// Each kind's index in the per-sync arrays.
    private let kindIndex: [BackendKind: Int]
    /// Indexed by mode (0 fsync, 1 fdatasync).
    private let batchSizes: [Recorder]
    private let failures = Mutex<[FailureKey: Counter]>([:])

    /// What a failure's counter is kept under: cheap to hash (no strings), named only when its
    /// counter is made.
    private struct FailureKey: Hashable {
        enum Kind: Hashable {
            case library(AsyncSyncError.Code)
            case cancelled
            case other
        }
        /// What failed: a sync in its mode, or a write (durable or not).
        enum Call: Hashable {
            case sync(SyncMode)
            case write(durable: Bool)
        }
        var backend: BackendKind
        var call: Call
        var kind: Kind
        var errno: Errno?
    }

    private static let modes: [SyncMode] = [.fsync, .fdatasync]
    /// The `kind` dimension of the write metrics, indexed by ``writeKindIndex(durable:)``.
    private static let writeKinds = ["write", "durable_write"]

    /// Creates the observer and its per-sync metrics; add it with ``AsyncFsync/AsyncSync/addObserver(_:)``
    /// (or use ``bootstrap(labelPrefix:factory:)``, which does both).
    ///
    /// - Parameters:
    ///   - labelPrefix: The start of every label, followed by `_`. Default `asyncfsync`.
    ///   - factory: The metrics factory; the default is `MetricsSystem.factory` as it is *now*, so
    ///     bootstrap the metrics system first. Pass a factory of your own (for example
    ///     MetricsTestKit's `TestMetrics`) to keep these metrics out of the global system.
    public init(labelPrefix: String = "asyncfsync", factory: any MetricsFactory = MetricsSystem.factory) {
        self.labelPrefix = labelPrefix
        self.factory = factory
        var durations: [Timer] = []
        var requests: [Counter] = []
        var systemSyncs: [Counter] = []
        for kind in BackendKind.allCases {
            for mode in Self.modes {
                let dimensions = [("backend", kind.rawValue), ("mode", mode.description)]
                durations.append(Timer(label: "\(labelPrefix)_sync_duration", dimensions: dimensions, factory: factory))
                requests.append(Counter(label: "\(labelPrefix)_syncs", dimensions: dimensions, factory: factory))
                systemSyncs.append(Counter(label: "\(labelPrefix)_system_syncs", dimensions: dimensions, factory: factory))
            }
        }
        var writeDurations: [Timer] = []
        var writes: [Counter] = []
        var writeBytes: [Counter] = []
        for kind in BackendKind.allCases {
            for writeKind in Self.writeKinds {
                let dimensions = [("backend", kind.rawValue), ("kind", writeKind)]
                writeDurations.append(Timer(label: "\(labelPrefix)_write_duration", dimensions: dimensions, factory: factory))
                writes.append(Counter(label: "\(labelPrefix)_writes", dimensions: dimensions, factory: factory))
                writeBytes.append(Counter(label: "\(labelPrefix)_write_bytes", dimensions: dimensions, factory: factory))
            }
        }
        self.writeDurations = writeDurations
        self.writes = writes
        self.writeBytes = writeBytes
        self.durations = durations
        self.requests = requests
        self.systemSyncs = systemSyncs
        self.kindIndex = Dictionary(uniqueKeysWithValues: BackendKind.allCases.enumerated().map { ($1, $0) })
        self.batchSizes = Self.modes.map { mode in
            Recorder(
                label: "\(labelPrefix)_group_commit_batch_size", dimensions: [("mode", mode.description)],
                aggregate: true, factory: factory)
        }
    }

    /// Creates the observer and adds it for the life of the process
    /// (``AsyncFsync/AsyncSync/addObserver(_:)``). Call it once, after `MetricsSystem.bootstrap(_:)`.
    ///
    /// - Parameters:
    ///   - labelPrefix: The start of every label. Default `asyncfsync`.
    ///   - factory: The metrics factory; default `MetricsSystem.factory`.
    /// - Returns: The installed observer.
    @discardableResult
    public static func bootstrap(
        labelPrefix: String = "asyncfsync", factory: any MetricsFactory = MetricsSystem.factory
    ) -> AsyncSyncMetrics {
        let observer = AsyncSyncMetrics(labelPrefix: labelPrefix, factory: factory)
        AsyncSync.addObserver(observer)
        return observer
    }

    @inline(__always)
    private func slot(_ kind: BackendKind, _ mode: SyncMode) -> Int {
        (kindIndex[kind] ?? 0) * 2 + Self.modeIndex(mode)
    }

    @inline(__always)
    private func writeSlot(_ kind: BackendKind, durable: Bool) -> Int {
        (kindIndex[kind] ?? 0) * 2 + Self.writeKindIndex(durable: durable)
    }

    @inline(__always)
    private static func writeKindIndex(durable: Bool) -> Int { durable ? 1 : 0 }

    @inline(__always)
    private static func modeIndex(_ mode: SyncMode) -> Int {
        switch mode {
        case .fsync: 0
        case .fdatasync: 1
        }
    }

    /// Records the duration in `<prefix>_sync_duration`, counts the call in `<prefix>_syncs` and,
    /// when `error` is not `nil`, in `<prefix>_sync_failures`.
    public func syncCompleted(backend: BackendKind, mode: SyncMode, duration: Duration, error: (any Error)?) {
        let slot = slot(backend, mode)
        durations[slot].recordNanoseconds(Self.nanoseconds(duration))
        requests[slot].increment()
        guard let error else { return }
        failureCounter(Self.failureKey(error, backend: backend, call: .sync(mode))).increment()
    }

    /// Records the duration in `<prefix>_write_duration`, counts the call in `<prefix>_writes` and
    /// its requested size in `<prefix>_write_bytes`, and, when `error` is not `nil`, counts it in
    /// `<prefix>_write_failures`.
    public func writeCompleted(backend: BackendKind, durable: Bool, bytes: Int, duration: Duration, error: (any Error)?) {
        let slot = writeSlot(backend, durable: durable)
        writeDurations[slot].recordNanoseconds(Self.nanoseconds(duration))
        writes[slot].increment()
        writeBytes[slot].increment(by: Int64(bytes))
        guard let error else { return }
        failureCounter(Self.failureKey(error, backend: backend, call: .write(durable: durable))).increment()
    }

    private static func failureKey(_ error: any Error, backend: BackendKind, call: FailureKey.Call) -> FailureKey {
        switch error {
        case let error as AsyncSyncError:
            FailureKey(backend: backend, call: call, kind: .library(error.code), errno: error.errno)
        case is CancellationError:
            FailureKey(backend: backend, call: call, kind: .cancelled, errno: nil)
        default:
            FailureKey(backend: backend, call: call, kind: .other, errno: nil)
        }
    }

    /// Counts the sync in `<prefix>_system_syncs`.
    public func systemSyncCompleted(backend: BackendKind, mode: SyncMode, requests: Int, errno: Errno?) {
        systemSyncs[slot(backend, mode)].increment()
    }

    /// Counts the file system in `<prefix>_posix_fallbacks`.
    public func fileSystemServedByPOSIX(device: String, refusal: AsyncSyncError) {
        Counter(label: "\(labelPrefix)_posix_fallbacks", dimensions: [("device", device)], factory: factory).increment()
    }

    /// Counts the failure in `<prefix>_durability_failures`.
    public func durabilityFailureRecorded(backend: BackendKind, descriptor: FileDescriptor, errno: Errno, sticky: Bool) {
        Counter(
            label: "\(labelPrefix)_durability_failures",
            dimensions: [("backend", backend.rawValue), ("errno", AsyncSyncError.symbolicName(of: errno))], factory: factory
        ).increment()
    }

    /// Counts the clearing in `<prefix>_durability_failures_cleared`.
    public func durabilityFailureCleared(backend: BackendKind, descriptor: FileDescriptor) {
        Counter(
            label: "\(labelPrefix)_durability_failures_cleared", dimensions: [("backend", backend.rawValue)],
            factory: factory
        ).increment()
    }

    /// Records the batch size in `<prefix>_group_commit_batch_size`.
    public func groupCommitBatch(size: Int, mode: SyncMode) {
        batchSizes[Self.modeIndex(mode)].record(size)
    }

    /// Counts the selection in `<prefix>_backend_selections`.
    public func backendSelected(_ kind: BackendKind, choice: String, probes: [BackendProbe]) {
        Counter(label: "\(labelPrefix)_backend_selections", dimensions: [("backend", kind.rawValue)], factory: factory)
            .increment()
    }

    private func failureCounter(_ key: FailureKey) -> Counter {
        failures.withLock { table in
            if let counter = table[key] { return counter }
            let code: String
            switch key.kind {
            case .library(let libraryCode): code = libraryCode.name
            case .cancelled: code = "cancelled"
            case .other: code = "other"
            }
            let errno = ("errno", key.errno.map(AsyncSyncError.symbolicName(of:)) ?? "none")
            let counter = switch key.call {
            case .sync(let mode):
                Counter(
                    label: "\(labelPrefix)_sync_failures",
                    dimensions: [("backend", key.backend.rawValue), ("mode", mode.description), ("code", code), errno],
                    factory: factory)
            case .write(let durable):
                Counter(
                    label: "\(labelPrefix)_write_failures",
                    dimensions: [
                        ("backend", key.backend.rawValue), ("kind", Self.writeKinds[Self.writeKindIndex(durable: durable)]),
                        ("code", code), errno,
                    ],
                    factory: factory)
            }
            table[key] = counter
            return counter
        }
    }

    @inline(__always)
    private static func nanoseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}

#endif
