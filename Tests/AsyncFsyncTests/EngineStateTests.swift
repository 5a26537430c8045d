import Foundation
import SystemPackage
import Testing

@testable import AsyncFsync

/// Continuations of tasks that wait until the test resumes them: a state machine keeps them but
/// never resumes one, so its transitions can be tested without threads or system calls.
final class Parked: @unchecked Sendable {
    private let continuations = Locked<[UnsafeContinuation<Void, any Error>]>([])
    private var tasks: [Task<Void, Never>] = []

    func make(_ count: Int) async throws -> [UnsafeContinuation<Void, any Error>] {
        let before = continuations.withLock { $0.count }
        for _ in 0..<count {
            tasks.append(Task {
                _ = try? await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, any Error>) in
                    self.continuations.withLock { $0.append(continuation) }
                }
            })
        }
        try await waitUntil { continuations.withLock { $0.count } == before + count }
        return continuations.withLock { Array($0[before...]) }
    }

    func finish() async {
        for continuation in continuations.withLock({ $0 }) { continuation.resume() }
        for task in tasks { await task.value }
    }
}

extension AsyncFsyncTests {
    /// The engine's state machine on its own: each event and the action it returns.
    @Suite struct EngineStateMachine {
        func waiter(_ id: UInt64, fd: CInt, _ continuation: UnsafeContinuation<Void, any Error>, identity: Bool = false) -> Waiter {
            Waiter(id: id, descriptor: FileDescriptor(rawValue: fd), mode: .fdatasync, continuation: continuation,
                   arrival: 0, identity: identity ? FileIdentity(device: 1, inode: UInt64(fd)) : nil, identityTaken: identity)
        }

        @Test("a request for a descriptor whose sync runs joins the next batch; it needs the file's identity first")
        func perDescriptorBatches() async throws {
            let parked = Parked()
            let c = try await parked.make(3)
            var state = EngineState(slotCount: 4)
            let result1 = state.arrive(waiter(1, fd: 7, c[0]), isCancelled: false, onCompletionThread: false)
            #expect(result1 == .submit)
            var prepared: [EngineState.Prepared] = []
            var noneCancelled: [Waiter] = []
            let result2 = state.takeBatches(into: &prepared, cancelled: &noneCancelled)
            #expect(result2 == .none)
            #expect(prepared.map(\.slot).count == 1)
            var none: [EngineState.Prepared] = []
            _ = state.takeBatches(into: &none)  // nothing more: the role is given up
            let result3 = state.arrive(waiter(2, fd: 7, c[1]), isCancelled: false, onCompletionThread: false)
            #expect(result3 == .needsIdentity)
            let result4 = state.arrive(waiter(2, fd: 7, c[1], identity: true), isCancelled: false, onCompletionThread: false)
            #expect(result4 == .queued)
            let result5 = state.arrive(waiter(3, fd: 7, c[2], identity: true), isCancelled: false, onCompletionThread: false)
            #expect(result5 == .queued)
            #expect(state.waitingCount == 2)
            var done: [Waiter] = []
            let result6 = state.completed(slot: prepared[0].slot, result: .success(()), into: &done)
            #expect(result6 == .finished)
            #expect(done.map(\.id) == [1])
            // The next batch is ready: one sync for both waiters.
            let result7 = state.takeSubmitterRole()
            #expect(result7)
            prepared.removeAll()
            _ = state.takeBatches(into: &prepared)
            #expect(prepared.count == 1 && prepared[0].needsIdentityCheck)
            done.removeAll()
            _ = state.completed(slot: prepared[0].slot, result: .success(()), into: &done)
            #expect(done.map(\.id) == [2, 3])
            prepared.removeAll()
            let result8 = state.takeBatches(into: &prepared)
            #expect(result8 == .none)
            #expect(!state.submitting && state.outstanding == 0)
            await parked.finish()
        }

        @Test("EAGAIN with another sync in flight blocks submission until a completion; with nothing left in flight it unblocks (found by the fault schedules)")
        func exhaustedThenNothingInFlight() async throws {
            let parked = Parked()
            let c = try await parked.make(2)
            var state = EngineState(slotCount: 4)
            _ = state.arrive(waiter(1, fd: 7, c[0]), isCancelled: false, onCompletionThread: false)
            _ = state.arrive(waiter(2, fd: 8, c[1]), isCancelled: false, onCompletionThread: false)
            var prepared: [EngineState.Prepared] = []
            _ = state.takeBatches(into: &prepared)
            #expect(prepared.count == 2)
            let (first, second) = (prepared[0].slot, prepared[1].slot)
            var failed: [Waiter] = []
            [second].withUnsafeBufferPointer { _ = state.exhausted($0, into: &failed) }
            #expect(failed.isEmpty && state.blockedOnResources, "another sync is in flight: wait for it")
            // The other sync is refused (a resubmission after EINTR, say): nothing is in flight any
            // more, so no completion would ever unblock the queue.
            _ = state.refused(slot: first, into: &failed)
            #expect(failed.map(\.id) == [1])
            #expect(!state.blockedOnResources)
            prepared.removeAll()
            _ = state.takeBatches(into: &prepared)
            #expect(prepared.count == 1, "the requeued batch is submitted again")
            failed.removeAll()
            _ = state.refused(slot: prepared[0].slot, into: &failed)
            await parked.finish()
        }

        @Test("a drain ends on the event that completes its last request, with or without the submitter role (found by the fault schedules)")
        func drainEndsOnRefusalWithoutRole() async throws {
            let parked = Parked()
            let c = try await parked.make(1)
            var state = EngineState(slotCount: 2)
            _ = state.arrive(waiter(1, fd: 7, c[0]), isCancelled: false, onCompletionThread: false)
            var prepared: [EngineState.Prepared] = []
            _ = state.takeBatches(into: &prepared)
            prepared.removeAll()
            #expect(state.takeBatches(into: &prepared) == .none)  // the role is given up
            let result9 = state.beginShutdown()
            #expect(result9 == .none)
            var done: [Waiter] = []
            let result10 = state.completed(slot: 0, result: .failure(.interrupted), into: &done)
            #expect(result10 == .retry)
            // The resubmission (no role held) is refused: that ends the drain.
            let result11 = state.refused(slot: 0, into: &done)
            #expect(result11 == .release)
            #expect(state.lifecycle == .releasing)
            state.released()
            let result12 = state.arrive(waiter(2, fd: 7, c[0]), isCancelled: false, onCompletionThread: false)
            #expect(result12 == .refused(.shutDown))
            await parked.finish()
        }

        @Test("a request that waits without a cancellation handler is checked for cancellation before its batch is submitted")
        func unhandledWaiterCancelled() async throws {
            let parked = Parked()
            let c = try await parked.make(3)
            var state = EngineState(slotCount: 4)
            _ = state.arrive(waiter(1, fd: 7, c[0]), isCancelled: false, onCompletionThread: false)
            var prepared: [EngineState.Prepared] = []
            _ = state.takeBatches(into: &prepared)
            // Two requests join fd 7's next batch without a handler; the first one's task is cancelled.
            final class Box: @unchecked Sendable { var state: EngineState; init(_ s: EngineState) { state = s } }
            let box = Box(state)
            var late = waiter(2, fd: 7, c[1], identity: true)
            late.checksCancellation = true
            let lateWaiter = Unchecked(late)
            // The task stays alive (suspended) while the state holds it, as a waiting request's does.
            let release = Locked<CheckedContinuation<Void, Never>?>(nil)
            let arrived = Locked(false)
            let lateTask = Task {
                withUnsafeCurrentTask { $0?.cancel() }
                withUnsafeCurrentTask { task in
                    _ = box.state.arrive(lateWaiter.value, isCancelled: false, onCompletionThread: false, task: task)
                }
                await withCheckedContinuation { continuation in
                    release.withLock { $0 = continuation }
                    arrived.withLock { $0 = true }
                }
            }
            try await waitUntil { arrived.withLock { $0 } }
            state = box.state
            defer {
                release.withLock { $0 }?.resume()
                _ = lateTask
            }
            var live = waiter(3, fd: 7, c[2], identity: true)
            live.checksCancellation = true
            withUnsafeCurrentTask { task in
                _ = state.arrive(live, isCancelled: false, onCompletionThread: false, task: task)
            }
            var done: [Waiter] = []
            _ = state.completed(slot: prepared[0].slot, result: .success(()), into: &done)
            prepared.removeAll()
            var cancelled: [Waiter] = []
            _ = state.takeBatches(into: &prepared, cancelled: &cancelled)
            #expect(cancelled.map(\.id) == [2], "the cancelled one is not submitted")
            #expect(prepared.count == 1, "the other one's sync is")
            #expect(state.outstanding == 1)
            await parked.finish()
        }

        @Test("a cancelled request leaves its batch; an emptied ready batch leaves the queue")
        func cancellation() async throws {
            let parked = Parked()
            let c = try await parked.make(2)
            var state = EngineState(slotCount: 1)
            _ = state.arrive(waiter(1, fd: 7, c[0]), isCancelled: false, onCompletionThread: false)
            var prepared: [EngineState.Prepared] = []
            _ = state.takeBatches(into: &prepared)
            // No slot left: the request for fd 8 waits in the ready queue.
            let result13 = state.arrive(waiter(2, fd: 8, c[1], identity: true), isCancelled: false, onCompletionThread: false)
            #expect(result13 == .queued)
            let (cancelled, release) = state.cancel(id: 2, descriptor: 8)
            #expect(cancelled?.id == 2 && release == .none)
            #expect(state.outstanding == 1 && state.waitingCount == 0)
            let result14 = state.cancel(id: 1, descriptor: 7).0
            #expect(result14 == nil, "a request in a slot is not cancelled")
            await parked.finish()
        }
    }
}

extension EngineState.Arrival: Equatable {
    public static func == (lhs: Self, rhs: Self) -> Bool {
        switch (lhs, rhs) {
        case (.needsIdentity, .needsIdentity), (.queued, .queued), (.submit, .submit): true
        case (.refused(.shutDown), .refused(.shutDown)), (.refused(.cancelled), .refused(.cancelled)): true
        case (.refused(.broken(let a)), .refused(.broken(let b))): a == b
        default: false
        }
    }
}

extension EngineState {
    /// ``takeBatches(into:cancelled:)`` where no waiter waits without a handler.
    mutating func takeBatches(into prepared: inout [Prepared]) -> Release {
        var cancelled: [Waiter] = []
        let release = takeBatches(into: &prepared, cancelled: &cancelled)
        precondition(cancelled.isEmpty)
        return release
    }
}
