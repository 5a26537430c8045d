import CAsyncFsync
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// glibc POSIX aio: one `aiocb` per slot with `SIGEV_NONE`; the completion thread sleeps in
/// `aio_suspend(3)` on the submitted requests plus a doorbell, then reads each result with
/// `aio_error(3)` and `aio_return(3)`.
///
/// `aio_suspend(3)` watches only the requests it was given, so a request submitted while the
/// thread sleeps must wake it: the doorbell is an `aio_read(3)` of an eventfd that glibc keeps
/// pending until ``wake()`` writes to the eventfd. No thread is created per request (as
/// `SIGEV_THREAD` would) and no signal is used (as `SIGEV_SIGNAL` would). See docs/design.md.
final class PosixAIODriver: AIODriver, @unchecked Sendable {
    static var kind: BackendKind { .posix }
    static var submitCall: String { "aio_fsync" }
    static var completionCall: String { "aio_error" }
    static var waitsOnList: Bool { true }
    /// How long the thread sleeps while the doorbell cannot be armed (glibc out of resources).
    static var unarmedTimeout: timespec { timespec(tv_sec: 0, tv_nsec: 10_000_000) }
    /// How long the thread sleeps on requests in flight before it rings its own doorbell.
    ///
    /// The doorbell's read occupies one of glibc's helper threads. If the host limited glibc to a
    /// single helper (`aio_init(3)`), a request submitted while the completion thread was awake
    /// would wait behind that read forever; ringing releases the helper to glibc's run list. With
    /// glibc's default pool this only costs one doorbell cycle per slow period.
    static var starvationTimeout: timespec { timespec(tv_sec: 0, tv_nsec: 200_000_000) }

    let slotCount: Int
    private let system: SystemCalls
    private let controlBlocks: UnsafeMutablePointer<aiocb>
    private let modes: UnsafeMutablePointer<SyncMode>
    /// The list given to aio_suspend; completion thread only.
    private let list: UnsafeMutablePointer<UnsafePointer<aiocb>?>
    private let doorbell: UnsafeMutablePointer<aiocb>
    private let doorbellBuffer: UnsafeMutablePointer<UInt64>
    private let doorbellDescriptor: CInt
    /// Whether the doorbell read is pending in glibc; completion thread only.
    private var doorbellArmed = false

    init(slotCount: Int, system: SystemCalls) throws(AsyncSyncError) {
        precondition(slotCount > 0, "a backend needs at least one slot")
        self.slotCount = slotCount
        self.system = system
        switch system.eventfd() {
        case .success(let fd): doorbellDescriptor = fd
        case .failure(let errno):
            throw .setup(backend: .posix, errno: errno, systemCall: "eventfd")
        }
        controlBlocks = .allocate(capacity: slotCount)
        controlBlocks.initialize(repeating: aiocb(), count: slotCount)
        modes = .allocate(capacity: slotCount)
        modes.initialize(repeating: .fsync, count: slotCount)
        list = .allocate(capacity: slotCount + 1)
        list.initialize(repeating: nil, count: slotCount + 1)
        doorbell = .allocate(capacity: 1)
        doorbell.initialize(to: aiocb())
        doorbellBuffer = .allocate(capacity: 1)
        doorbellBuffer.initialize(to: 0)
        armDoorbell()
        if !doorbellArmed {
            let errno = Errno.resourceTemporarilyUnavailable
            release()
            throw .setup(backend: .posix, errno: errno, systemCall: "aio_read",
                         message: "glibc cannot queue a request (out of threads or memory)")
        }
    }

    func prepare(slot: Int32, descriptor: FileDescriptor, mode: SyncMode) {
        casyncfsync_aiocb_prep(controlBlocks + Int(slot), descriptor.rawValue)
        modes[Int(slot)] = mode
    }

    func submit(_ slots: UnsafeBufferPointer<Int32>) -> SubmitOutcome {
        for (index, slot) in slots.enumerated() {
            if case .failure(let errno) = system.aioFsync(modes[Int(slot)], controlBlocks + Int(slot)) {
                return SubmitOutcome(accepted: index, error: errno)
            }
        }
        return SubmitOutcome(accepted: slots.count, error: nil)
    }

    func waitForCompletions(active: [Int32], blocking: Bool, into completions: inout [Completion]) -> WaitOutcome {
        if blocking { suspend(active: active) }
        for slot in active {
            let control = controlBlocks + Int(slot)
            switch system.aioError(control) {
            case .inProgress:
                continue
            case .succeeded:
                _ = system.aioReturn(control)
                completions.append(Completion(slot: slot, result: .success(())))
            case .failed(let errno):
                _ = system.aioReturn(control)
                completions.append(Completion(slot: slot, result: .failure(errno)))
            }
        }
        if doorbellArmed, system.aioError(doorbell) != .inProgress {
            _ = system.aioReturn(doorbell)
            doorbellArmed = false
        }
        if !doorbellArmed { armDoorbell() }
        return .progressed
    }

    /// Waits in `aio_suspend(3)` for one of `active` or the doorbell.
    private func suspend(active: [Int32]) {
        var count: CInt = 0
        for slot in active {
            list[Int(count)] = UnsafePointer(controlBlocks + Int(slot))
            count += 1
        }
        if doorbellArmed {
            list[Int(count)] = UnsafePointer(doorbell)
            count += 1
            // EINTR only means: look again.
            if active.isEmpty {
                _ = system.aioSuspend(list, count, nil)
            } else {
                var timeout = Self.starvationTimeout
                if case .failure(.resourceTemporarilyUnavailable) = system.aioSuspend(list, count, &timeout) {
                    wake()
                }
            }
        } else {
            var timeout = Self.unarmedTimeout
            _ = system.aioSuspend(list, count, &timeout)
        }
    }

    private func armDoorbell() {
        casyncfsync_aiocb_prep_read(doorbell, doorbellDescriptor, doorbellBuffer, MemoryLayout<UInt64>.size)
        doorbellArmed = (try? system.aioRead(doorbell).get()) != nil
    }

    func wake() {
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { system.write(doorbellDescriptor, $0.baseAddress!, $0.count) }
    }

    func release() {
        if doorbellArmed {
            // glibc's helper thread is blocked reading the eventfd: let the read finish before
            // the eventfd and the aiocb go away.
            wake()
            var pointer: UnsafePointer<aiocb>? = UnsafePointer(doorbell)
            while system.aioError(doorbell) == .inProgress {
                _ = system.aioSuspend(&pointer, 1, nil)
            }
            _ = system.aioReturn(doorbell)
            doorbellArmed = false
        }
        _ = system.close(doorbellDescriptor)
        controlBlocks.deallocate()
        modes.deallocate()
        list.deallocate()
        doorbell.deallocate()
        doorbellBuffer.deallocate()
    }
}
