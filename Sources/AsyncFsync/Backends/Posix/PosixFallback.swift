import Synchronization
import SystemPackage

/// The file systems on which kernel AIO refused a sync of a regular file (`EINVAL` at
/// `io_submit(2)`: a kernel older than 4.18, or a file system without AIO fsync), and the POSIX
/// aio backend that serves them for a ``LibaioBackend``.
///
/// The first refused request of a file system is served through POSIX aio and its `st_dev` is
/// remembered; later requests for that file system go to POSIX aio directly. Until a file system
/// has been remembered the hot path pays one relaxed atomic load; afterwards one `statx(2)` per
/// request. A pipe or socket also gets `EINVAL` from `io_submit(2)`, but it is not a regular file:
/// its error is reported as it is, the same as POSIX aio reports it.
final class PosixFallback: Sendable {
    private struct State {
        var devices: Set<UInt64> = []
        var backend: PosixAIOBackend?
        /// The libaio backend is shutting down: no POSIX backend is made any more.
        var closed = false
    }

    private let state = Locked(State())
    /// `state.devices.count`, readable without the lock.
    private let deviceCount = Atomic<Int>(0)
    private let system: SystemCalls
    private let capacity: Int
    private let stickyFailures: Bool

    init(system: SystemCalls, capacity: Int, stickyFailures: Bool) {
        self.system = system
        self.capacity = capacity
        self.stickyFailures = stickyFailures
    }

    /// Whether requests for `fd` go to POSIX aio because kernel AIO refused its file system.
    @inline(__always)
    func serves(_ fd: FileDescriptor) -> Bool {
        guard deviceCount.load(ordering: .acquiring) > 0,
              case .success(let status) = system.fileStatus(fd.rawValue) else { return false }
        return state.withLock { $0.devices.contains(status.device) }
    }

    /// Whether `error`, thrown by kernel AIO for `fd`, means its file system has no AIO fsync:
    /// `EINVAL` at submission for a regular file. Remembers the file system when it does.
    func takesOver(after error: AsyncSyncError, for fd: FileDescriptor) -> Bool {
        guard error.code == .system, error.errno == .invalidArgument, error.step == .submit,
              case .success(let status) = system.fileStatus(fd.rawValue), status.isRegularFile else { return false }
        state.withLock { state in
            if state.devices.insert(status.device).inserted {
                deviceCount.store(state.devices.count, ordering: .releasing)
            }
        }
        return true
    }

    /// Syncs `fd` through POSIX aio. `refused` is kernel AIO's answer when this request was first
    /// handed to kernel AIO (and so was accepted by the libaio backend before any shutdown).
    func sync(_ fd: FileDescriptor, mode: SyncMode, refused: AsyncSyncError?) async throws {
        let backend: PosixAIOBackend?
        switch posixBackend() {
        case .success(let value): backend = value
        case .failure(let setupError):
            guard var refused else { throw setupError }
            refused.message += "; serving it through POSIX aio failed too: \(setupError)"
            throw refused
        }
        guard let backend else {
            // The libaio backend is shutting down. A request it had already accepted still
            // completes: a blocking sync, once, on this thread.
            guard refused != nil else { throw AsyncSyncError.shutDown(mode, backend: .libaio, descriptor: fd) }
            try InlineSync.blockingSync(fd, mode: mode, backend: .posix, system: system)
            return
        }
        do {
            try await backend.engine.sync(fd, mode: mode)
        } catch let error as AsyncSyncError where error.code == .shutDown && refused != nil {
            try InlineSync.blockingSync(fd, mode: mode, backend: .posix, system: system)
        }
    }

    /// The POSIX backend, made at its first use; `nil` once closed.
    private func posixBackend() -> Result<PosixAIOBackend?, AsyncSyncError> {
        state.withLock { state in
            if state.closed { return .success(nil) }
            if let backend = state.backend { return .success(backend) }
            do throws(AsyncSyncError) {
                let backend = try PosixAIOBackend(
                    capacity: capacity, stickyFailures: stickyFailures, inlineMemoryFileSystems: false,
                    system: system)
                state.backend = backend
                return .success(backend)
            } catch {
                return .failure(error)
            }
        }
    }

    /// Forgets a durability failure recorded by the POSIX backend.
    func clearFailure(of fd: FileDescriptor) throws -> Bool {
        let backend = state.withLock { $0.backend }
        return try backend?.clearFailure(of: fd) ?? false
    }

    /// Makes no POSIX backend any more and shuts down the one made, if any.
    func shutdown() async {
        let backend = state.withLock { state -> PosixAIOBackend? in
            state.closed = true
            return state.backend
        }
        await backend?.shutdown()
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
