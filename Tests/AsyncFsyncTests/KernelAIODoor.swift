#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
import CAsyncFsync
import Foundation
import SystemPackage

@testable import AsyncFsync

import Glibc

/// Hands the iocb at `index` of a batch that a replaced `io_submit(2)` goes through one by one to
/// the kernel: `nil` when the kernel took it (go on with the batch), otherwise what the replaced
/// call returns (the count taken before it, or the errno when it was the first).
func submitOne(_ context: aio_context_t, _ control: UnsafeMutablePointer<iocb>, at index: Int) -> Result<Int, Errno>? {
    var one: UnsafeMutablePointer<iocb>? = control
    switch SystemCalls.live.ioSubmit(context, 1, &one) {
    case .success(1): return nil
    case .success: return .success(index)
    case .failure(let errno): return index == 0 ? .failure(errno) : .success(index)
    }
}

/// Kernel AIO behind a door the test keeps, through the `SystemCalls` table.
///
/// - Writes (`IOCB_CMD_PWRITE`) are held at the door while it holds writes (from the start), and
///   the next syncs when asked: `io_submit(2)` reports them accepted, and they reach the kernel
///   when the test lets them go.
/// - The next submissions of an opcode can be answered `EAGAIN`, the syncs of some descriptors
///   `EINVAL` (a file system without AIO fsync), and the sync completions of some descriptors
///   replaced by an errno.
/// - Every submission, hold, refusal and reaped completion is logged in order by opcode name
///   ("hold write", "submit write", "submit fdsync", "reap write", "EAGAIN fsync", …), and the
///   `aio_rw_flags` of every write is kept.
final class Door: Sendable {
    typealias Held = (context: aio_context_t, iocb: UnsafeMutablePointer<iocb>)
    struct State {
        var holdWrites = true
        /// The next sync iocbs to hold.
        var syncsToHold = 0
        var heldWrites: [Held] = []
        var heldSyncs: [Held] = []
        /// Per opcode (1 write, 2 fsync, 3 fdsync): how many of the next submissions meet `EAGAIN`.
        var eagain: [UInt16: Int] = [:]
        var eagainAnswered = 0
        /// Descriptors whose syncs `io_submit(2)` refuses with `EINVAL`.
        var refusedSyncs: Set<CInt> = []
        /// Descriptors whose sync completions are replaced by this errno.
        var failedSyncs: [CInt: Errno] = [:]
        var log: [String] = []
        /// The `aio_rw_flags` of every write that came to the door, in order.
        var writeFlags: [Int32] = []
    }
    let state = Locked(State())

    static func name(_ opcode: UInt16) -> String {
        switch opcode {
        case 1: "write"
        case 2: "fsync"
        case 3: "fdsync"
        default: "op\(opcode)"
        }
    }

    var system: SystemCalls {
        var system = SystemCalls.live
        system.ioSubmit = { [self] context, count, iocbs in
            for index in 0..<count {
                let control = iocbs[index]!
                let opcode = control.pointee.aio_lio_opcode
                let fd = CInt(bitPattern: control.pointee.aio_fildes)
                let name = Self.name(opcode)
                enum Verdict { case pass, hold, eagain, einval }
                let verdict = state.withLock { state -> Verdict in
                    if opcode == 1 { state.writeFlags.append(Int32(bitPattern: UInt32(control.pointee.aio_rw_flags))) }
                    if let left = state.eagain[opcode], left > 0 {
                        state.eagain[opcode] = left - 1
                        state.eagainAnswered += 1
                        state.log.append("EAGAIN \(name)")
                        return .eagain
                    }
                    if opcode != 1, state.refusedSyncs.contains(fd) {
                        state.log.append("EINVAL \(name)")
                        return .einval
                    }
                    if opcode == 1, state.holdWrites {
                        state.heldWrites.append((context, control))
                        state.log.append("hold write")
                        return .hold
                    }
                    if opcode != 1, state.syncsToHold > 0 {
                        state.syncsToHold -= 1
                        state.heldSyncs.append((context, control))
                        state.log.append("hold \(name)")
                        return .hold
                    }
                    state.log.append("submit \(name)")
                    return .pass
                }
                switch verdict {
                case .hold: continue
                case .eagain: return index == 0 ? .failure(.resourceTemporarilyUnavailable) : .success(index)
                case .einval: return index == 0 ? .failure(.invalidArgument) : .success(index)
                case .pass:
                    if let stop = submitOne(context, control, at: index) { return stop }
                }
            }
            return .success(count)
        }
        system.reapCompletions = { [self] context, events, maximum in
            let result = SystemCalls.live.reapCompletions(context, events, maximum)
            guard case .success(let count) = result else { return result }
            state.withLock { state in
                for index in 0..<count {
                    let control = UnsafePointer<iocb>(bitPattern: UInt(events[index].obj))!
                    let opcode = control.pointee.aio_lio_opcode
                    state.log.append("reap \(Self.name(opcode))")
                    let fd = CInt(bitPattern: control.pointee.aio_fildes)
                    guard opcode != 1, let errno = state.failedSyncs[fd] else { continue }
                    events[index].res = -Int64(errno.rawValue)
                    state.log.append("fail \(Self.name(opcode)) fd \(fd) with \(errno)")
                }
            }
            return result
        }
        return system
    }

    var heldWriteCount: Int { state.withLock { $0.heldWrites.count } }
    var heldSyncCount: Int { state.withLock { $0.heldSyncs.count } }
    var eagainAnswered: Int { state.withLock { $0.eagainAnswered } }
    var log: [String] { state.withLock { $0.log } }

    func eagain(opcode: UInt16, times: Int = 1) { state.withLock { $0.eagain[opcode, default: 0] += times } }
    func holdSyncs(_ count: Int) { state.withLock { $0.syncsToHold += count } }
    func refuseSyncs(of fd: FileDescriptor) { _ = state.withLock { $0.refusedSyncs.insert(fd.rawValue) } }
    func failSyncs(of fd: FileDescriptor, with errno: Errno) { state.withLock { $0.failedSyncs[fd.rawValue] = errno } }

    /// Hands the first `count` held writes to the kernel (all when nil); with `stopHolding`,
    /// later writes go straight through.
    func releaseWrites(_ count: Int? = nil, stopHolding: Bool = true) {
        let taken = state.withLock { state -> [Held] in
            if stopHolding { state.holdWrites = false }
            let taken = Array(state.heldWrites.prefix(count ?? state.heldWrites.count))
            state.heldWrites.removeFirst(taken.count)
            for _ in taken { state.log.append("submit write") }
            return taken
        }
        Self.submit(taken)
    }

    /// Hands the held syncs to the kernel.
    func releaseSyncs() {
        let taken = state.withLock { state -> [Held] in
            defer { state.heldSyncs.removeAll() }
            for held in state.heldSyncs { state.log.append("submit \(Self.name(held.iocb.pointee.aio_lio_opcode))") }
            return state.heldSyncs
        }
        Self.submit(taken)
    }

    private static func submit(_ held: [Held]) {
        for (context, control) in held {
            var one: UnsafeMutablePointer<iocb>? = control
            _ = SystemCalls.live.ioSubmit(context, 1, &one)
        }
    }
}
#endif
