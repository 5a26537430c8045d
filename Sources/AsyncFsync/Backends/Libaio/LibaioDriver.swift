import CAsyncFsync
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Kernel AIO: one context, one `iocb` per slot, completions reaped by `io_getevents(2)`.
///
/// The completion thread sleeps in `io_getevents(2)` on the whole context, so a request submitted
/// while it sleeps needs no wake-up. To wake it for shutdown, ``wake()`` submits an
/// `IOCB_CMD_FSYNC` of a private memfd (always supported, instant) tagged ``wakeTag``.
final class LibaioDriver: AIODriver, @unchecked Sendable {
    static var kind: BackendKind { .libaio }
    static var submitCall: String { "io_submit" }
    static var completionCall: String { "io_getevents" }
    static var waitsOnList: Bool { false }

    /// `aio_data` of the wake-up request.
    static var wakeTag: UInt64 { .max }
    /// How long `io_getevents(2)` sleeps at most before the loop looks at its state again; a
    /// safety net only (a wake-up normally comes from ``wake()``).
    static var safetyTimeout: timespec { timespec(tv_sec: 1, tv_nsec: 0) }

    let slotCount: Int
    private let system: SystemCalls
    private let context: aio_context_t
    /// `slotCount` iocbs, then the wake-up iocb; stable until ``release()``.
    private let controlBlocks: UnsafeMutablePointer<iocb>
    private let events: UnsafeMutablePointer<io_event>
    private let eventCapacity: Int
    private let wakeDescriptor: CInt

    init(slotCount: Int, system: SystemCalls) throws(AsyncSyncError) {
        precondition(slotCount > 0, "a backend needs at least one slot")
        self.slotCount = slotCount
        self.system = system

        var context = aio_context_t()
        if case .failure(let errno) = system.ioSetup(CUnsignedInt(slotCount + 1), &context) {
            throw .setup(backend: .libaio, errno: errno, systemCall: "io_setup",
                         message: LibaioDriver.setupHint(errno))
        }
        let wake: CInt
        switch system.memfdCreate("asyncfsync-wake") {
        case .success(let fd): wake = fd
        case .failure(let errno):
            _ = system.ioDestroy(context)
            throw .setup(backend: .libaio, errno: errno, systemCall: "memfd_create")
        }
        self.context = context
        self.wakeDescriptor = wake
        self.controlBlocks = .allocate(capacity: slotCount + 1)
        self.controlBlocks.initialize(repeating: iocb(), count: slotCount + 1)
        self.eventCapacity = slotCount + 1
        self.events = .allocate(capacity: eventCapacity)
        self.events.initialize(repeating: io_event(), count: eventCapacity)
    }

    /// The reason for an `io_setup(2)` errno, in words a person can act on (used by the backend's
    /// setup error and by the probe).
    static func setupHint(_ errno: Errno) -> String {
        switch errno {
        case .resourceTemporarilyUnavailable: AIOLimits.exhaustedDescription()
        case .noFunction: "kernel AIO absent or denied by seccomp"
        case .notPermitted: "kernel AIO denied by seccomp or a security policy"
        default: ""
        }
    }

    func prepare(slot: Int32, descriptor: FileDescriptor, mode: SyncMode) {
        casyncfsync_prep_sync(controlBlocks + Int(slot), descriptor.rawValue, mode == .fdatasync ? 1 : 0, UInt64(slot))
    }

    func submit(_ slots: UnsafeBufferPointer<Int32>) -> SubmitOutcome {
        withUnsafeTemporaryAllocation(of: UnsafeMutablePointer<iocb>?.self, capacity: slots.count) { pointers in
            for (index, slot) in slots.enumerated() { pointers[index] = controlBlocks + Int(slot) }
            var accepted = 0
            while accepted < slots.count {
                // A short count means the iocb after the accepted ones was refused; submitting it
                // again at the head of the list makes io_submit report its errno.
                switch system.ioSubmit(context, slots.count - accepted, pointers.baseAddress! + accepted) {
                case .success(0): return SubmitOutcome(accepted: accepted, error: .resourceTemporarilyUnavailable)
                case .success(let count): accepted += count
                case .failure(let errno): return SubmitOutcome(accepted: accepted, error: errno)
                }
            }
            return SubmitOutcome(accepted: accepted, error: nil)
        }
    }

    func waitForCompletions(active: [Int32], blocking: Bool, into completions: inout [Completion]) -> WaitOutcome {
        // Not blocking: take what has completed (the completion thread has jobs to run).
        var timeout = blocking ? Self.safetyTimeout : timespec(tv_sec: 0, tv_nsec: 0)
        switch system.ioGetevents(context, blocking ? 1 : 0, eventCapacity, events, &timeout) {
        case .success(let count):
            for index in 0..<count {
                let event = events[index]
                guard event.data != Self.wakeTag else { continue }
                completions.append(Completion(
                    slot: Int32(truncatingIfNeeded: event.data),
                    result: valueOrNegatedErrno(event.res).map { _ in }))
            }
            return .progressed
        case .failure(.interrupted):
            return .progressed
        case .failure(let errno):
            return .broken(errno)
        }
    }

    func wake() {
        let wakeBlock = controlBlocks + slotCount
        casyncfsync_prep_sync(wakeBlock, wakeDescriptor, 0, Self.wakeTag)
        var pointer: UnsafeMutablePointer<iocb>? = wakeBlock
        // If this fails, the safety timeout of io_getevents ends the wait instead.
        _ = system.ioSubmit(context, 1, &pointer)
    }

    func release() {
        // io_destroy waits for requests still in flight (at most the wake-up fsync).
        _ = system.ioDestroy(context)
        _ = system.close(wakeDescriptor)
        controlBlocks.deallocate()
        events.deallocate()
    }
}
