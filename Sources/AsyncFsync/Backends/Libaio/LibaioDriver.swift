// Linux (glibc) only: compiled out elsewhere and under ASYNC_FSYNC_PORTABLE (see docs/design.md, "The portable
// backend").
#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
import CAsyncFsync
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Kernel AIO: one context per engine, one `iocb` per slot.
///
/// Every iocb carries `IOCB_FLAG_RESFD` with the hub's eventfd, so the hub's one blocking `read(2)`
/// waits for the completions of every context of the process. The hub then takes the completions
/// from the context's ring in user space (``system_reap_completions(_:_:_:)``; `io_getevents(2)`
/// with a zero timeout where the ring's layout is unknown).
final class LibaioDriver: AIODriver, @unchecked Sendable {
    static var kind: BackendKind { .libaio }
    static var submitCall: String { "io_submit" }
    static var writeSubmitCall: String { "io_submit" }
    static var completionCall: String { "io_getevents" }
    static var waitsOnList: Bool { false }

    let slotCount: Int
    private let system: SystemCalls
    private let context: aio_context_t
    /// `slotCount` iocbs; stable until ``release(then:)``.
    private let controlBlocks: UnsafeMutablePointer<iocb>
    /// Reaped events; the hub's thread only.
    private let events: UnsafeMutablePointer<io_event>
    /// The hub's eventfd, set by ``attach(to:)`` before any request.
    private var completionDescriptor: CInt = -1

    init(slotCount: Int, system: SystemCalls) throws(AsyncSyncError) {
        precondition(slotCount > 0, "a backend needs at least one slot")
        self.slotCount = slotCount
        self.system = system
        var context = aio_context_t()
        // The ring holds every slot up to the system's default limit (aio-max-nr, 65 536); beyond
        // it, io_submit(2) answers EAGAIN and the engine waits for a completion.
        if case .failure(let errno) = system.ioSetup(CUnsignedInt(min(slotCount, 65_536)), &context) {
            throw .setup(backend: .libaio, errno: errno, systemCall: "io_setup",
                         message: LibaioDriver.setupHint(errno))
        }
        self.context = context
        controlBlocks = .allocate(capacity: slotCount)
        controlBlocks.initialize(repeating: iocb(), count: slotCount)
        events = .allocate(capacity: slotCount)
        events.initialize(repeating: io_event(), count: slotCount)
        system.noteMemory(.allocated, controlBlocks, MemoryLayout<iocb>.stride * slotCount)
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

    func attach(to hub: CompletionHub) {
        completionDescriptor = hub.completionDescriptor
    }

    func prepare(slot: Int32, descriptor: CInt, mode: SyncMode) {
        casyncfsync_prep_sync(controlBlocks + Int(slot), descriptor, mode == .fdatasync ? 1 : 0, UInt64(slot),
                              completionDescriptor)
    }

    func prepareWrite(slot: Int32, descriptor: CInt, buffer: UnsafeRawPointer, count: Int, offset: Int64, dsync: Bool) {
        casyncfsync_prep_write(controlBlocks + Int(slot), descriptor, buffer, UInt64(count), offset, dsync ? 1 : 0,
                               UInt64(slot), completionDescriptor)
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

    func reap(active: [Int32], into completions: inout [Completion]) -> ReapOutcome {
        switch system.reapCompletions(context, events, slotCount) {
        case .success(let count):
            for index in 0..<count {
                let event = events[index]
                completions.append(Completion(
                    slot: Int32(truncatingIfNeeded: event.data),
                    result: valueOrNegatedErrno(event.res).map { Int($0) }))
            }
            return .progressed
        case .failure(.interrupted):
            return .progressed
        case .failure(let errno):
            return .broken(errno)
        }
    }

    func controlBlock(_ slot: Int32) -> UnsafePointer<aiocb>? { nil }

    func release(then done: @escaping @Sendable () -> Void) {
        // io_destroy(2) waits for an RCU grace period (~30 ms here): on a short-lived thread, so
        // the hub goes on serving other engines meanwhile.
        let owned = Unchecked((controlBlocks, events))
        let cleanUp: @Sendable () -> Void = { [system, context, slotCount] in
            _ = system.ioDestroy(context)
            system.noteMemory(.freed, owned.value.0, MemoryLayout<iocb>.stride * slotCount)
            owned.value.0.deallocate()
            owned.value.1.deallocate()
            done()
        }
        if case .failure = system.startThread("asyncfsync-free", cleanUp) { cleanUp() }
    }
}
#endif  // os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
