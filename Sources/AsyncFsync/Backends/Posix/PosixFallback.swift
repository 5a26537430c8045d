// Linux (glibc) only: compiled out elsewhere and under ASYNC_FSYNC_PORTABLE (see docs/design.md, "The portable
// backend").
#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
import Synchronization
import SystemPackage

/// The file systems on which kernel AIO refused a sync (`EINVAL` at `io_submit(2)` for a regular
/// file or a directory: a kernel older than 4.18, or a file system without AIO fsync), and the
/// POSIX aio engine that serves them for a ``LibaioBackend``.
///
/// The first refused request of a file system is served through POSIX aio and its `st_dev` is
/// remembered; later requests for that file system, files and directories alike, go to POSIX aio
/// directly. Until a file system has been remembered the hot path pays one atomic load; afterwards
/// one `statx(2)` per request. A pipe or socket also gets `EINVAL` from `io_submit(2)`, but it is
/// neither a file nor a directory: its error is reported as it is, as POSIX aio reports it.
///
/// The POSIX engine shares the libaio backend's ``FailureLedger``: a failure through either path
/// refuses later syncs of the file on both, and fails the other path's requests in flight.
final class PosixFallback: Sendable {
    private struct State {
        var devices: Set<UInt64> = []
        var engine: AIOEngine<PosixAIODriver>?
        /// The libaio backend is shutting down: no POSIX engine is made any more.
        var closed = false
    }

    private let state = Locked(State())
    /// `state.devices.count`, readable without the lock.
    private let deviceCount = Atomic<Int>(0)
    private let system: SystemCalls
    private let capacity: Int
    private let ledger: FailureLedger

    init(system: SystemCalls, capacity: Int, ledger: FailureLedger) {
        self.system = system
        self.capacity = capacity
        self.ledger = ledger
    }

    /// Whether requests for `fd` go to POSIX aio because kernel AIO refused its file system.
    @inline(__always)
    func serves(_ fd: FileDescriptor) -> Bool {
        guard deviceCount.load(ordering: .acquiring) > 0,
              case .success(let status) = system.fileStatus(fd.rawValue) else { return false }
        return state.withLock { $0.devices.contains(status.device) }
    }

    /// Whether `error`, thrown by kernel AIO for `fd`, means its file system has no AIO fsync:
    /// `EINVAL` at submission for a regular file or a directory. Remembers the file system when it
    /// does.
    func takesOver(after error: AsyncSyncError, for fd: FileDescriptor) -> Bool {
        guard error.code == .system, error.errno == .invalidArgument, error.step == .submit,
              case .success(let status) = system.fileStatus(fd.rawValue), status.isFileOrDirectory else { return false }
        let new = state.withLock { state -> Bool in
            guard state.devices.insert(status.device).inserted else { return false }
            deviceCount.store(state.devices.count, ordering: .releasing)
            return true
        }
        if new { Observers.forEach { $0.fileSystemServedByPOSIX(device: Self.deviceName(status.device), refusal: error) } }
        return true
    }

    /// Syncs `fd` through POSIX aio, for a request stamped `arrival` when it reached the libaio
    /// backend. `refused` is kernel AIO's answer when this request was first handed to kernel AIO
    /// (and so was accepted by the libaio backend before any shutdown). `accepted`: the libaio
    /// backend accepted it before any shutdown otherwise (the sync part of a durable write).
    /// `cancellable`: false for the sync part of a durable write, whose write was handed to the
    /// system already: it is never abandoned for a cancellation (review-group, finding 2).
    func sync(_ fd: FileDescriptor, mode: SyncMode, arrival: UInt64, accepted: Bool = false,
              refused: AsyncSyncError?, cancellable: Bool = true) async throws {
        let accepted = accepted || refused != nil
        let engine: AIOEngine<PosixAIODriver>?
        switch posixEngine() {
        case .success(let value): engine = value
        case .failure(let setupError):
            guard var refused else { throw setupError }
            refused.message += "; serving it through POSIX aio failed too: \(setupError)"
            throw refused
        }
        guard let engine else {
            // The libaio backend is shutting down. A request it had already accepted still
            // completes: a blocking sync, once, on this thread.
            guard accepted else { throw AsyncSyncError.shutDown(mode, backend: .libaio, descriptor: fd) }
            try InlineSync.checkedBlockingSync(fd, mode: mode, backend: .posix, system: system, ledger: ledger, arrival: arrival)
            return
        }
        do {
            try await engine.sync(fd, mode: mode, arrival: arrival, cancellable: cancellable)
        } catch let error as AsyncSyncError where error.code == .shutDown && accepted {
            try InlineSync.checkedBlockingSync(fd, mode: mode, backend: .posix, system: system, ledger: ledger, arrival: arrival)
        }
    }

    /// The POSIX engine, made at its first use; `nil` once closed.
    private func posixEngine() -> Result<AIOEngine<PosixAIODriver>?, AsyncSyncError> {
        state.withLock { state in
            if state.closed { return .success(nil) }
            if let engine = state.engine { return .success(engine) }
            do throws(AsyncSyncError) {
                let engine = try AIOEngine(
                    driver: PosixAIODriver(slotCount: capacity + 1, system: system), syncSlots: capacity, system: system,
                    ledger: ledger)
                state.engine = engine
                return .success(engine)
            } catch {
                return .failure(error)
            }
        }
    }

    /// Makes no POSIX engine any more and shuts down the one made, if any.
    func shutdown() async {
        let engine = state.withLock { state -> AIOEngine<PosixAIODriver>? in
            state.closed = true
            return state.engine
        }
        await engine?.shutdown()
    }

    /// Starts the shutdown without waiting (`deinit` of the libaio backend).
    func beginShutdown() {
        let engine = state.withLock { state -> AIOEngine<PosixAIODriver>? in
            state.closed = true
            return state.engine
        }
        engine?.beginShutdown()
    }

    /// The remembered file systems' `st_dev`, in order.
    var devices: [UInt64] {
        state.withLock { $0.devices.sorted() }
    }

    /// `major:minor` of a `st_dev` (glibc's encoding), as `/proc/self/mountinfo` shows it.
    static func deviceName(_ device: UInt64) -> String {
        let major = (device >> 8) & 0xfff | (device >> 32) & 0xffff_f000
        let minor = device & 0xff | (device >> 12) & 0xffff_ff00
        return "\(major):\(minor)"
    }
}
#endif  // os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
