import Foundation
import Synchronization
import SystemPackage
import Testing

@testable import AsyncFsync

/// The group-commit machine with plain values for continuations: each rule, one event at a time,
/// without threads.
typealias PlainGroupState = GroupCommitState<Int, Int>

extension AsyncFsyncTests {
    @Suite struct GroupCommitStateMachine {
        let fileA = FileIdentity(device: 1, inode: 10)
        let fileB = FileIdentity(device: 1, inode: 11)

        func member(_ id: UInt64, fd: CInt = 5, mode: SyncMode = .fdatasync, arrival: UInt64? = 0) -> PlainGroupState.Member {
            PlainGroupState.Member(id: id, descriptor: FileDescriptor(rawValue: fd), mode: mode, arrival: arrival,
                                   continuation: Int(id))
        }

        @Test("start after arrival: a request arriving while its file's batch syncs joins the next batch, never the running one")
        func startAfterArrival() {
            var state = PlainGroupState(gathers: false)
            #expect(state.arrive(member(1), file: fileA, isCancelled: false) == .lead)
            #expect(state.syncTarget(of: fileA)?.member.id == 1)
            #expect(state.arrive(member(2), file: fileA, isCancelled: false) == .queued)
            #expect(state.arrive(member(3), file: fileB, isCancelled: false) == .lead, "another file is independent")
            let ended = state.syncEnded(of: fileA)
            #expect(ended.members.map(\.id) == [1], "the running batch ends with its own members only")
            #expect(ended.nextLeader == 2, "the request that arrived meanwhile leads a sync of its own, started after")
            #expect(state.syncTarget(of: fileA)?.member.id == 2)
            #expect(state.syncTarget(of: fileA)?.member.continuation == nil, "the new leader's task takes its own result")
        }

        @Test("the arrival is carried: a request that waited through a failed sync leads the next with its first stamp (#16.1)")
        func arrivalCarried() {
            var state = PlainGroupState(gathers: false)
            _ = state.arrive(member(1, arrival: 7), file: fileA, isCancelled: false)
            _ = state.arrive(member(2, arrival: 7), file: fileA, isCancelled: false)
            // The leader's sync fails (recorded as generation 8 by the wrapped backend) and hands off.
            let ended = state.syncEnded(of: fileA)
            #expect(ended.nextLeader == 2)
            // No retry and no new stamp: the member that leads now is the same request, stamped 7,
            // so a success of its sync is judged against the failure recorded at 8.
            #expect(state.syncTarget(of: fileA)?.member.arrival == 7)
        }

        @Test("leader hand-off: every member of the ended batch gets its result; the next batch's first member leads it alone")
        func handOff() {
            var state = PlainGroupState(gathers: false)
            _ = state.arrive(member(1), file: fileA, isCancelled: false)
            for id in UInt64(2)...4 { _ = state.arrive(member(id, mode: id == 3 ? .fsync : .fdatasync), file: fileA, isCancelled: false) }
            #expect(state.queuedCount == 3)
            var ended = state.syncEnded(of: fileA)
            #expect(ended.members.map(\.id) == [1] && ended.nextLeader == 2)
            let target = state.syncTarget(of: fileA)
            #expect(target?.mode == .fsync, "the strongest mode any member asked for")
            #expect(target?.alone == false)
            ended = state.syncEnded(of: fileA)
            #expect(ended.members.map(\.id) == [2, 3, 4])
            #expect(ended.members.map(\.continuation) == [nil, 3, 4])
            #expect(ended.nextLeader == nil && state.isIdle)
        }

        @Test("a member whose descriptor cannot sync leaves the batch with its own error; the batch goes on through the next")
        func dropMember() {
            var state = PlainGroupState(gathers: false)
            _ = state.arrive(member(1), file: fileA, isCancelled: false)
            _ = state.arrive(member(2), file: fileA, isCancelled: false)
            _ = state.arrive(member(3), file: fileA, isCancelled: false)
            _ = state.syncEnded(of: fileA)
            #expect(state.drop(id: 2, from: fileA)?.continuation == nil, "the leader's own error goes to its task")
            #expect(state.syncTarget(of: fileA)?.member.id == 3)
            #expect(state.syncTarget(of: fileA)?.alone == false, "member 3 waits on a continuation: not the leader's task alone")
            #expect(state.drop(id: 3, from: fileA)?.continuation == 3)
            #expect(state.syncTarget(of: fileA) == nil)
            let ended = state.syncEnded(of: fileA)
            #expect(ended.members.isEmpty && state.isIdle)
        }

        @Test("the delay window: requests that arrive while the leader gathers join its batch; after its sync starts, the next")
        func delayWindow() {
            var state = PlainGroupState(gathers: true)
            #expect(state.arrive(member(1), file: fileA, isCancelled: false) == .lead)
            #expect(state.arrive(member(2), file: fileA, isCancelled: false) == .queued)
            #expect(state.queuedCount == 1)
            state.startSync(of: fileA)
            #expect(state.arrive(member(3), file: fileA, isCancelled: false) == .queued)
            let ended = state.syncEnded(of: fileA)
            #expect(ended.members.map(\.id) == [1, 2], "2 joined before the sync started")
            #expect(ended.nextLeader == 3)
            #expect(state.queuedCount == 0, "the new leader gathers; it is not counted as queued")
            #expect(state.arrive(member(4), file: fileA, isCancelled: false) == .queued, "it joins the gathering batch")
            state.startSync(of: fileA)
            #expect(state.syncEnded(of: fileA).members.map(\.id) == [3, 4])
        }

        @Test("cancellation removes a request whose batch's sync has not started, and nothing else")
        func cancellation() {
            var state = PlainGroupState(gathers: true)
            _ = state.arrive(member(1), file: fileA, isCancelled: false)
            _ = state.arrive(member(2), file: fileA, isCancelled: false)
            #expect(state.cancel(id: 1, file: fileA) == nil, "the leader runs the sync: not removable")
            #expect(state.cancel(id: 2, file: fileA) == 2, "gathering: its sync has not started")
            _ = state.arrive(member(3), file: fileA, isCancelled: false)
            state.startSync(of: fileA)
            #expect(state.cancel(id: 3, file: fileA) == nil, "its batch's sync started: it gets that sync's result")
            _ = state.arrive(member(4), file: fileA, isCancelled: false)
            #expect(state.cancel(id: 4, file: fileA) == 4, "the next batch has not started")
            #expect(state.cancel(id: 4, file: fileA) == nil, "once")
            #expect(state.arrive(member(5), file: fileA, isCancelled: true) == .cancelled,
                    "a handler that ran before the request was queued found nothing: the arrival sees it under the lock")
            #expect(state.syncEnded(of: fileA).members.map(\.id) == [1, 3])
            #expect(state.isIdle)
        }

        @Test("shutdown: new requests are refused; the callers go on when the last led batch has ended")
        func shutdownDrains() {
            var state = PlainGroupState(gathers: false)
            #expect(state.beginShutdown(waiter: 90) == 90, "nothing led: at once")
            var open = PlainGroupState(gathers: false)
            _ = open.arrive(member(1), file: fileA, isCancelled: false)
            _ = open.arrive(member(2), file: fileA, isCancelled: false)
            _ = open.arrive(member(3), file: fileB, isCancelled: false)
            #expect(open.beginShutdown(waiter: 91) == nil)
            #expect(open.beginShutdown(waiter: 92) == nil)
            #expect(open.arrive(member(4), file: fileA, isCancelled: false) == .shutDown)
            var ended = open.syncEnded(of: fileA)
            #expect(ended.nextLeader == 2 && ended.drained.isEmpty, "accepted requests still run")
            ended = open.syncEnded(of: fileB)
            #expect(ended.drained.isEmpty)
            ended = open.syncEnded(of: fileA)
            #expect(ended.drained == [91, 92] && open.isIdle)
        }
    }

    @Suite struct Issue16GroupCommit {
        /// A scripted backend with a failure ledger of its own (non-sticky): its first sync waits
        /// for the test and fails with `EIO`, recorded before the error is thrown, as this
        /// library's backends do; every later sync succeeds (the kernel reports a failed writeback
        /// once per open file).
        final class FailingOnceBackend: AsyncSyncBackend, FailureLedgerProviding {
            let scripted = ScriptedBackend()
            let ledger = FailureLedger(kind: .libaio, sticky: false, system: .live)
            var failureLedger: FailureLedger? { ledger }
            var kind: BackendKind { .libaio }

            init() {
                scripted.hold()
                scripted.fail(call: 0, with: .ioError)
                scripted.release(upTo: 0)
            }

            func sync(_ fd: FileDescriptor, mode: SyncMode) async throws {
                do {
                    try await scripted.sync(fd, mode: mode)
                } catch {
                    ledger.record(fd, errno: .ioError)
                    throw error
                }
            }

            func shutdown() async {}
        }

        static func spin(microseconds: Int) {
            let end = ContinuousClock.now + .microseconds(microseconds)
            while ContinuousClock.now < end {}
        }

        @Test("#16.1: a request that arrived before its file's sync failed is never acknowledged, whenever the hand-off falls (GroupCommit's retry took a new stamp)")
        func retryKeepsArrival() async throws {
            let directory = try ScratchDirectory.onDisk()
            let leaderFD = try directory.file("wal")
            defer { try? leaderFD.close() }
            let followerFD = try FileDescriptor.open(directory.path.appending("wal"), .readWrite)
            defer { try? followerFD.close() }
            let atIdentity = Atomic<Int>(0)
            let pause = Atomic<Int>(0)
            var system = SystemCalls.live
            system.fileIdentity = { fd in
                let identity = SystemCalls.live.fileIdentity(fd)
                if fd == followerFD.rawValue {
                    // The follower has its stamp; line it up with the leader's failing hand-off.
                    atIdentity.add(1, ordering: .releasing)
                    Issue16GroupCommit.spin(microseconds: pause.load(ordering: .relaxed))
                }
                return identity
            }
            var acknowledged = 0
            var rounds = 0
            var generator = SystemRandomNumberGenerator()
            for round in 0..<2_000 {
                rounds += 1
                let backend = FailingOnceBackend()
                let group = GroupCommit(wrapping: backend, system: system)
                let leader = Task { try await group.sync(leaderFD, mode: .fdatasync) }
                try await waitUntil { backend.scripted.calls == 1 }
                let seen = atIdentity.load(ordering: .acquiring)
                pause.store(Int.random(in: 0...40, using: &generator), ordering: .relaxed)
                let follower = Task { try await group.sync(followerFD, mode: .fdatasync) }
                let deadline = ContinuousClock.now + .seconds(30)
                while atIdentity.load(ordering: .acquiring) == seen {
                    guard ContinuousClock.now < deadline else { throw WaitTimedOut(timeout: .seconds(30)) }
                    await Task.yield()
                }
                Self.spin(microseconds: Int.random(in: 0...30, using: &generator))
                backend.scripted.release(upTo: 1_000)  // the leader's sync fails with EIO, recorded, and hands off
                _ = await caughtError { try await leader.value }
                let error = await caughtError { try await follower.value }
                if error == nil {
                    acknowledged += 1
                    Issue.record("round \(round): the follower was acknowledged over the failed sync it waited for")
                    break
                }
                let code = (error as? AsyncSyncError)?.code
                #expect(code == .concurrentFailure || code == .system, "got \(String(describing: error))")
                await group.shutdown()
            }
            #expect(acknowledged == 0, "acknowledged over lost data in \(acknowledged) of \(rounds) rounds")
        }
    }
}
