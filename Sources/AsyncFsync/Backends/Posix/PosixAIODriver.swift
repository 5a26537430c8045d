// Linux (glibc) only: compiled out elsewhere and under ASYNC_FSYNC_PORTABLE (see docs/design.md, "The portable
// backend").
#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
import CAsyncFsync
import SystemPackage

/// glibc POSIX aio: one `aiocb` per slot with `SIGEV_NONE`. The POSIX hub waits in
/// `aio_suspend(3)` on the submitted control blocks of every engine plus its one doorbell, then
/// each engine reads its results with `aio_error(3)` and `aio_return(3)`. No thread is created per
/// request (as `SIGEV_THREAD` would) and no signal is used (as `SIGEV_SIGNAL` would). See
/// docs/design.md.
final class PosixAIODriver: AIODriver, @unchecked Sendable {
    static var kind: BackendKind { .posix }
    static var submitCall: String { "aio_fsync" }
    static var writeSubmitCall: String { "aio_write" }
    static var completionCall: String { "aio_error" }
    static var waitsOnList: Bool { true }

    let slotCount: Int
    private let system: SystemCalls
    private let controlBlocks: UnsafeMutablePointer<aiocb>
    /// Per slot: the sync mode, or `nil` for a write.
    private let modes: UnsafeMutablePointer<SyncMode?>

    init(slotCount: Int, system: SystemCalls) {
        precondition(slotCount > 0, "a backend needs at least one slot")
        self.slotCount = slotCount
        self.system = system
        controlBlocks = .allocate(capacity: slotCount)
        controlBlocks.initialize(repeating: aiocb(), count: slotCount)
        modes = .allocate(capacity: slotCount)
        modes.initialize(repeating: .fsync, count: slotCount)
        system.noteMemory(.allocated, controlBlocks, MemoryLayout<aiocb>.stride * slotCount)
    }

    func attach(to hub: CompletionHub) {}

    func prepare(slot: Int32, descriptor: CInt, mode: SyncMode) {
        casyncfsync_aiocb_prep(controlBlocks + Int(slot), descriptor)
        modes[Int(slot)] = mode
    }

    func prepareWrite(slot: Int32, descriptor: CInt, buffer: UnsafeRawPointer, count: Int, offset: Int64, dsync: Bool) {
        precondition(!dsync, "POSIX aio has no RWF_DSYNC: a durable write is a write then a sync")
        casyncfsync_aiocb_prep_write(controlBlocks + Int(slot), descriptor, buffer, count, offset)
        modes[Int(slot)] = nil
    }

    func submit(_ slots: UnsafeBufferPointer<Int32>) -> SubmitOutcome {
        for (index, slot) in slots.enumerated() {
            let result = if let mode = modes[Int(slot)] {
                system.aioFsync(mode, controlBlocks + Int(slot))
            } else {
                system.aioWrite(controlBlocks + Int(slot))
            }
            if case .failure(let errno) = result {
                return SubmitOutcome(accepted: index, error: errno)
            }
        }
        return SubmitOutcome(accepted: slots.count, error: nil)
    }

    func reap(active: [Int32], into completions: inout [Completion]) -> ReapOutcome {
        for slot in active {
            let control = controlBlocks + Int(slot)
            switch system.aioError(control) {
            case .inProgress:
                continue
            case .succeeded:
                let bytes = (try? system.aioReturn(control).get()) ?? 0
                completions.append(Completion(slot: slot, result: .success(bytes)))
            case .failed(let errno):
                _ = system.aioReturn(control)
                completions.append(Completion(slot: slot, result: .failure(errno)))
            }
        }
        return .progressed
    }

    func controlBlock(_ slot: Int32) -> UnsafePointer<aiocb>? {
        UnsafePointer(controlBlocks + Int(slot))
    }

    func release(then done: @escaping @Sendable () -> Void) {
        system.noteMemory(.freed, controlBlocks, MemoryLayout<aiocb>.stride * slotCount)
        controlBlocks.deallocate()
        modes.deallocate()
        done()
    }
}
#endif  // os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
