import CAsyncFsync
import CTestSupport
import Foundation
import Synchronization
import SystemPackage
import Testing

@testable import AsyncFsync

// The engine's rule on real backends (kernel AIO and POSIX aio, kcmp(2)): Linux with glibc only.
// The state machine's tests below run in every build.
#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
/// Holds back the failing completion of one of a set of descriptors while a sync of another of them
/// is in the system, and until a success of theirs has been reaped in a round of its own: the order
/// in which the in-flight rule cannot help (the success is judged before the failure is recorded).
/// An order the kernel may produce: two syncs of one open file description complete on two
/// workers, and either event may reach the completion ring (or `aio_error(3)`) first.
///
/// Once armed, it also holds the first completion of the set on the completion thread until
/// ``bothArrived()``: the other request has been submitted, or waits in the engine.
final class CompletionHold: Sendable {
    struct State {
        var watched: Set<CInt> = []
        var armed = false
        var arrived = false
        /// Ours in the system: control block address → descriptor.
        var inFlight: [UInt: CInt] = [:]
        var submitted = 0
        /// libaio: failing events held back.
        var held: [io_event] = []
        /// POSIX: failing control blocks held back → the count of successes delivered when last held.
        var heldSeen: [UInt: Int] = [:]
        var deliveries = 0
        /// Failures held back at least once (the test proves something only then, on the old engine).
        var holds = 0
    }
    let state = Locked(State())

    func watch(_ fds: [CInt]) { state.withLock { $0 = State(watched: Set(fds), holds: $0.holds) } }
    /// From now on (counting submissions from zero).
    func arm() { state.withLock { $0.armed = true; $0.submitted = 0 } }
    func bothArrived() { state.withLock { $0.arrived = true } }
    func disarm() { state.withLock { $0.armed = false; $0.arrived = false } }
    var submitted: Int { state.withLock { $0.submitted } }
    var holds: Int { state.withLock { $0.holds } }

    /// On the completion thread: until the other request has arrived (bounded: a hang shows as a failure).
    private func awaitArrival() {
        let deadline = ContinuousClock.now + .seconds(10)
        while state.withLock({ $0.armed && !$0.arrived }), ContinuousClock.now < deadline { usleep(500) }
    }

    var system: SystemCalls {
        var system = SystemCalls.live
        system.ioSubmit = { [self] context, count, list in
            // Noted before the call: the completion may be reaped before io_submit returns.
            let ours = state.withLock { state -> [UInt] in
                var ours: [UInt] = []
                for index in 0..<count where state.watched.contains(CInt(list[index]!.pointee.aio_fildes)) {
                    let address = UInt(bitPattern: list[index])
                    state.inFlight[address] = CInt(list[index]!.pointee.aio_fildes)
                    ours.append(address)
                }
                return ours
            }
            let result = SystemCalls.live.ioSubmit(context, count, list)
            let accepted = (try? result.get()) ?? 0
            state.withLock { state in
                for index in 0..<count {
                    let address = UInt(bitPattern: list[index])
                    guard ours.contains(address) else { continue }
                    if index < accepted { state.submitted += 1 } else { state.inFlight[address] = nil }
                }
            }
            return result
        }
        system.reapCompletions = { [self] context, events, maximum in
            let result = SystemCalls.live.reapCompletions(context, events, maximum)
            guard case .success(let count) = result else { return result }
            if count > 0, state.withLock({ state in (0..<count).contains { state.inFlight[UInt(events[$0].obj)] != nil } }) {
                awaitArrival()
            }
            return state.withLock { state in
                var kept = 0
                var delivered = false
                for index in 0..<count {
                    let event = events[index]
                    let ours = state.inFlight.removeValue(forKey: UInt(event.obj)) != nil
                    if ours, state.armed, event.res < 0 {
                        state.held.append(event)
                        continue
                    }
                    if ours, event.res >= 0 { delivered = true }
                    events[kept] = event
                    kept += 1
                }
                // Released only in a later call than any success of ours, and with none in flight
                // (a completion, or the progress of this call, brings the next call).
                if !state.held.isEmpty {
                    if state.armed, !state.inFlight.isEmpty || delivered {
                        state.holds += 1
                    } else {
                        for event in state.held where kept < maximum {
                            events[kept] = event
                            kept += 1
                        }
                        state.held.removeAll()
                    }
                }
                return .success(kept)
            }
        }
        system.aioFsync = { [self] mode, control in
            let address = UInt(bitPattern: control)
            let ours = state.withLock { state in
                guard state.watched.contains(control.pointee.aio_fildes) else { return false }
                state.inFlight[address] = control.pointee.aio_fildes
                return true
            }
            let result = SystemCalls.live.aioFsync(mode, control)
            if ours {
                state.withLock { state in
                    if case .success = result { state.submitted += 1 } else { state.inFlight[address] = nil }
                }
            }
            return result
        }
        system.aioError = { [self] control in
            let status = SystemCalls.live.aioError(control)
            let address = UInt(bitPattern: control)
            guard status != .inProgress else { return status }
            let armed = state.withLock { state -> Bool in
                guard state.inFlight[address] != nil else { return false }
                if !state.armed { state.inFlight[address] = nil }
                return state.armed
            }
            guard armed else { return status }
            awaitArrival()
            return state.withLock { state in
                guard status != .succeeded else {
                    state.inFlight[address] = nil
                    state.deliveries += 1
                    return status
                }
                // Failed: held at its first look, while another of ours is in flight, and while a
                // success of ours was delivered since its last look (so never in the same round).
                let others = state.inFlight.keys.contains { $0 != address && state.heldSeen[$0] == nil }
                if others || state.heldSeen[address] != state.deliveries {
                    state.heldSeen[address] = state.deliveries
                    state.holds += 1
                    return .inProgress
                }
                state.heldSeen[address] = nil
                state.inFlight[address] = nil
                return status
            }
        }
        return system
    }
}

extension AsyncFsyncTests.Reliability {
    enum SecondDescriptor: String, CaseIterable, CustomTestStringConvertible {
        /// `dup(2)`.
        case dup
        /// Received over a UNIX socket (SCM_RIGHTS): a new number for the same open file
        /// description, as a descriptor inherited from a parent process is.
        case passed
        var testDescription: String { rawValue }

        func make(_ fd: FileDescriptor) throws -> FileDescriptor {
            switch self {
            case .dup: return try fd.duplicate()
            case .passed:
                let received = testsupport_pass_descriptor(fd.rawValue)
                guard received >= 0 else { throw Errno(rawValue: -received) }
                return FileDescriptor(rawValue: received)
            }
        }
    }

    @Test("#16.7 two descriptors of one open file description: a success is never acknowledged over the writeback failure the kernel reported to the other, even when it is reaped first",
          arguments: kinds, SecondDescriptor.allCases)
    func oneOpenFileDescriptionTwoNumbers(kind: BackendKind, second: SecondDescriptor) async throws {
        guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3 (scripts/install-deps test)") else { return }
        let fs = try FaultFS(writebackCache: true)
        let hold = CompletionHold()
        let backend = try makeBackend(kind, system: hold.system)
        let data = [UInt8](repeating: 0x41, count: 65_536)
        var rounds = 0
        for round in 0..<4 {
            let name = "log-\(round)"
            let fd = try fs.open(name)
            let other = try second.make(fd)
            defer { try? fd.close(); try? other.close() }
            hold.watch([fd.rawValue, other.rawValue])
            try await backend.fsync(fd)  // the first record is durable
            try fs.control("write_errno=EIO")
            _ = try fd.writeAll(toAbsoluteOffset: 0, data)  // cached by the kernel; its writeback fails
            hold.arm()
            let first = Task { await caughtError { try await backend.fsync(fd) } }
            let next = Task { await caughtError { try await backend.fsync(other) } }
            // Both requests reached the engine: both submitted (the old engine), or one waits.
            try await waitUntil { hold.submitted == 2 || waiting(backend) == 1 }
            hold.bothArrived()
            let (a, b) = (await first.value, await next.value)
            hold.disarm()
            try fs.control("write_errno=0")
            let onDisk = try Data(contentsOf: URL(fileURLWithPath: fs.backing.appending(name).string))
            guard !onDisk.starts(with: data) else { continue }  // the writeback happened to succeed
            rounds += 1
            for (caller, error) in [("first", a), ("second", b)] {
                let failure = error as? AsyncSyncError
                #expect(failure?.isDurabilityFailure == true,
                        "round \(round): the \(caller) caller was acknowledged over lost data (\(String(describing: error)))")
            }
        }
        #expect(rounds > 0, "the fault file system lost no write: the test proved nothing")
        await backend.shutdown()
    }

    @Test("#16.7 two opens of one file (two open file descriptions) still sync at once; kcmp(2) tells them apart",
          arguments: kinds)
    func twoOpenFileDescriptionsRunTogether(kind: BackendKind) async throws {
        let directory = try ScratchDirectory.onDisk()
        let recorder = SyscallRecorder()
        let kcmpCalls = Atomic<Int>(0)
        var system = recorder.system
        system.kcmpFile = { a, b in
            kcmpCalls.add(1, ordering: .relaxed)
            return SystemCalls.live.kcmpFile(a, b)
        }
        let backend = try makeBackend(kind, system: system)
        let fd = try directory.file("data")
        let again = try FileDescriptor.open(directory.path.appending("data"), .readWrite)
        defer { try? fd.close(); try? again.close() }
        recorder.closeGate()
        let first = Task { try await backend.fdatasync(fd) }
        try await waitUntil { recorder.submitted == 1 }
        let second = Task { try await backend.fdatasync(again) }
        try await waitUntil { recorder.submitted == 2 }
        #expect(kcmpCalls.load(ordering: .relaxed) >= 1, "the second open was compared with the first")
        recorder.openGate()
        try await first.value
        try await second.value
        await backend.shutdown()
    }

    enum KcmpAnswer: String, CaseIterable, CustomTestStringConvertible {
        case notPermitted, noFunction
        var errno: Errno { self == .notPermitted ? .notPermitted : .noFunction }
        var testDescription: String { rawValue }
    }

    @Test("#16.7 where kcmp(2) is denied (seccomp: EPERM) or missing (ENOSYS), syncs of one file run one at a time",
          arguments: kinds, KcmpAnswer.allCases)
    func withoutKcmpOneSyncPerFile(kind: BackendKind, answer: KcmpAnswer) async throws {
        let directory = try ScratchDirectory.onDisk()
        let recorder = SyscallRecorder()
        let kcmpCalls = Atomic<Int>(0)
        var system = recorder.system
        system.kcmpFile = { _, _ in
            kcmpCalls.add(1, ordering: .relaxed)
            return .failure(answer.errno)
        }
        let backend = try makeBackend(kind, system: system)
        let fd = try directory.file("data")
        let again = try FileDescriptor.open(directory.path.appending("data"), .readWrite)
        let other = try directory.file("other")
        defer { try? fd.close(); try? again.close(); try? other.close() }
        for round in 0..<2 {
            recorder.closeGate()
            let before = recorder.submitted
            let first = Task { try await backend.fdatasync(fd) }
            try await waitUntil { recorder.submitted == before + 1 }
            let second = Task { try await backend.fdatasync(again) }
            try await waitUntil { waiting(backend) == 1 }
            let unrelated = Task { try await backend.fdatasync(other) }  // another file is not held up
            try await waitUntil { recorder.submitted == before + 2 }
            #expect(waiting(backend) == 1, "round \(round): \(engineSummary(backend))")
            recorder.openGate()
            try await first.value
            try await second.value
            try await unrelated.value
            #expect(recorder.submitted == before + 3)
        }
        #expect(kcmpCalls.load(ordering: .relaxed) == 1, "asked once; then known to be unavailable")
        await backend.shutdown()
    }

    @Test("#16.7 a lone request on an idle descriptor makes no system call for the rule (no statx, no kcmp)", arguments: kinds)
    func hotPathMakesNoExtraCall(kind: BackendKind) async throws {
        let directory = try ScratchDirectory.onDisk()
        let calls = Atomic<Int>(0)
        var system = SystemCalls.live
        system.kcmpFile = { a, b in
            calls.add(1, ordering: .relaxed)
            return SystemCalls.live.kcmpFile(a, b)
        }
        system.fileIdentity = { fd in
            calls.add(1, ordering: .relaxed)
            return SystemCalls.live.fileIdentity(fd)
        }
        let backend = try makeBackend(kind, system: system)
        let fd = try directory.file("data")
        defer { try? fd.close() }
        for _ in 0..<20 { try await backend.fdatasync(fd) }
        #expect(calls.load(ordering: .relaxed) == 0)
        await backend.shutdown()
    }
}
#endif  // os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE

extension AsyncFsyncTests.EngineStateMachine {
    /// Takes what is ready (taking the submitter role if needed) and returns it.
    func take(_ state: inout EngineState) -> [EngineState.Prepared] {
        if !state.submitting, !state.takeSubmitterRole() { return [] }
        var prepared: [EngineState.Prepared] = []
        _ = state.takeBatches(into: &prepared)
        return prepared
    }

    /// Gives up the submitter role (nothing more to take).
    func giveUpRole(_ state: inout EngineState) {
        var none: [EngineState.Prepared] = []
        if state.submitting { _ = state.takeBatches(into: &none) }
        precondition(none.isEmpty)
    }

    /// Identifies every unidentified slot in use as `files[descriptor]`.
    func identify(_ state: inout EngineState, _ files: [CInt: UInt64]) -> [EngineState.SlotRef] {
        var refs: [EngineState.SlotRef] = []
        state.unidentifiedSlots(into: &refs)
        for ref in refs { state.identified(ref, as: files[ref.descriptor].map { FileIdentity(device: 1, inode: $0) }) }
        return refs
    }

    @Test("#16.7 a batch taken while a slot of the same open file description is in use waits for it; a lone batch is not checked")
    func oneSyncPerOpenFileDescription() async throws {
        let parked = Parked()
        let c = try await parked.make(3)
        var state = EngineState(slotCount: 4)
        // fd 5 alone: handed over at once, nothing to compare with.
        #expect(state.arrive(waiter(1, fd: 5, c[0]), isCancelled: false, onCompletionThread: false) == .submit)
        let first = take(&state)
        #expect(first.count == 1 && !first[0].checksDescription)
        giveUpRole(&state)
        // fd 6, a dup of 5, arrives while 5's sync runs: it looks idle, so it is taken, but checked.
        #expect(state.handsOverAtOnce(6))
        #expect(state.arrive(waiter(2, fd: 6, c[1]), isCancelled: false, onCompletionThread: false) == .submit)
        let second = take(&state)
        #expect(second.count == 1 && second[0].checksDescription)
        let refs = identify(&state, [5: 40, 6: 40])
        #expect(Set(refs.map(\.descriptor)) == [5, 6], "the slot handed over at once is identified now")
        var candidates: [EngineState.SlotRef] = []
        state.sharingCandidates(of: second[0].ref, into: &candidates)
        #expect(candidates == [first[0].ref])
        // kcmp(2): the same open file description.
        #expect(state.described(second[0].ref, sharesDescriptionWith: candidates) == .waits)
        giveUpRole(&state)
        #expect(state.slotsInUse == 1 && state.waitingCount == 1)
        #expect(!state.handsOverAtOnce(6), "its descriptor has a waiting batch")
        // A request on 6 arriving now joins the waiting batch: one sync serves both.
        #expect(state.arrive(waiter(3, fd: 6, c[2], identity: true), isCancelled: false, onCompletionThread: false) == .submit)
        #expect(take(&state).isEmpty, "nothing is ready: it waits for fd 5's sync")
        #expect(state.waitingCount == 2)
        var done: [Waiter] = []
        #expect(state.completed(slot: first[0].slot, result: .failure(.ioError), into: &done) == .finished)
        #expect(done.map(\.id) == [1])
        // The waiting batch is ready now, and is taken with nothing else in use.
        let third = take(&state)
        #expect(third.count == 1 && third[0].descriptor == 6 && !third[0].checksDescription && third[0].needsIdentityCheck)
        giveUpRole(&state)
        done.removeAll()
        _ = state.completed(slot: third[0].slot, result: .success(()), into: &done)
        #expect(done.map(\.id) == [2, 3])
        #expect(state.outstanding == 0 && state.slotsInUse == 0)
        await parked.finish()
    }

    @Test("#16.7 another open file description of the same file, or another file, is submitted at once")
    func otherDescriptionsAreSubmitted() async throws {
        let parked = Parked()
        let c = try await parked.make(3)
        var state = EngineState(slotCount: 4)
        _ = state.arrive(waiter(1, fd: 5, c[0]), isCancelled: false, onCompletionThread: false)
        let first = take(&state)
        giveUpRole(&state)
        _ = state.arrive(waiter(2, fd: 6, c[1]), isCancelled: false, onCompletionThread: false)
        _ = state.arrive(waiter(3, fd: 7, c[2]), isCancelled: false, onCompletionThread: false)
        let taken = take(&state)
        #expect(taken.count == 2 && taken.allSatisfy(\.checksDescription))
        _ = identify(&state, [5: 40, 6: 40, 7: 41])
        var sameFile: [EngineState.SlotRef] = []
        state.sharingCandidates(of: taken[0].ref, into: &sameFile)
        #expect(sameFile == [first[0].ref])
        var otherFile: [EngineState.SlotRef] = []
        state.sharingCandidates(of: taken[1].ref, into: &otherFile)
        #expect(otherFile.isEmpty, "another file is never compared")
        // kcmp(2): fd 6 is another open of the file.
        #expect(state.described(taken[0].ref, sharesDescriptionWith: []) == .submit)
        #expect(state.described(taken[1].ref, sharesDescriptionWith: []) == .submit)
        #expect(state.slotsInUse == 3 && state.waitingCount == 0)
        var done: [Waiter] = []
        for slot in [first[0].slot] + taken.map(\.slot) { _ = state.completed(slot: slot, result: .success(()), into: &done) }
        giveUpRole(&state)
        #expect(done.count == 3 && state.outstanding == 0)
        await parked.finish()
    }

    @Test("#16.7 of batches taken together, the later waits for the earlier; an unidentified file is compared with every slot")
    func takenTogetherAndUnidentified() async throws {
        let parked = Parked()
        let c = try await parked.make(3)
        var state = EngineState(slotCount: 4)
        _ = state.arrive(waiter(1, fd: 4, c[0]), isCancelled: false, onCompletionThread: false)
        _ = state.arrive(waiter(2, fd: 5, c[1]), isCancelled: false, onCompletionThread: false)
        _ = state.arrive(waiter(3, fd: 6, c[2]), isCancelled: false, onCompletionThread: false)
        let taken = take(&state)
        #expect(taken.map(\.checksDescription) == [false, true, true])
        // statx failed for fd 6: it may share anything's open file description.
        _ = identify(&state, [4: 30, 5: 40])
        var candidates: [EngineState.SlotRef] = []
        state.sharingCandidates(of: taken[1].ref, into: &candidates)
        #expect(candidates.isEmpty, "fd 5's file differs from fd 4's; fd 6 was taken after it")
        state.sharingCandidates(of: taken[2].ref, into: &candidates)
        #expect(candidates.map(\.descriptor) == [4, 5])
        #expect(state.described(taken[1].ref, sharesDescriptionWith: []) == .submit)
        // kcmp(2) could not tell (or said so) for fd 5: fd 6 waits for fd 5's slot.
        #expect(state.described(taken[2].ref, sharesDescriptionWith: [candidates[1]]) == .waits)
        giveUpRole(&state)
        var done: [Waiter] = []
        _ = state.completed(slot: taken[0].slot, result: .success(()), into: &done)
        #expect(take(&state).isEmpty, "fd 4's completion does not free it")
        giveUpRole(&state)
        _ = state.completed(slot: taken[1].slot, result: .success(()), into: &done)
        let last = take(&state)
        #expect(last.map(\.descriptor) == [6])
        giveUpRole(&state)
        _ = state.completed(slot: last[0].slot, result: .success(()), into: &done)
        #expect(done.map(\.id) == [1, 2, 3] && state.outstanding == 0)
        await parked.finish()
    }

    @Test("#16.7 a peer that completed before the verdict does not hold the batch; a revoked slot is not submitted")
    func staleVerdicts() async throws {
        let parked = Parked()
        let c = try await parked.make(3)
        var state = EngineState(slotCount: 4)
        _ = state.arrive(waiter(1, fd: 5, c[0]), isCancelled: false, onCompletionThread: false)
        let first = take(&state)
        giveUpRole(&state)
        _ = state.arrive(waiter(2, fd: 6, c[1]), isCancelled: false, onCompletionThread: false)
        let second = take(&state)
        _ = identify(&state, [5: 40, 6: 40])
        var candidates: [EngineState.SlotRef] = []
        state.sharingCandidates(of: second[0].ref, into: &candidates)
        // fd 5's sync completes while kcmp(2) runs (outside the lock).
        var done: [Waiter] = []
        _ = state.completed(slot: first[0].slot, result: .success(()), into: &done)
        #expect(state.described(second[0].ref, sharesDescriptionWith: candidates) == .submit)
        // A broken completion source revokes a slot between the check and the verdict.
        _ = state.arrive(waiter(3, fd: 7, c[2]), isCancelled: false, onCompletionThread: false)
        let third = take(&state)
        var failed: [Waiter] = []
        _ = state.broken(.badFileDescriptor, into: &failed)
        #expect(state.described(third[0].ref, sharesDescriptionWith: []) == .gone)
        #expect(Set(failed.map(\.id)) == [2, 3])
        giveUpRole(&state)
        await parked.finish()
    }

    @Test("#16.7 a batch waiting for its open file description: cancelled, or freed by a refusal or EAGAIN of the slot it waits for")
    func waitingBatchLeaves() async throws {
        let parked = Parked()
        let c = try await parked.make(3)
        var state = EngineState(slotCount: 4)
        func waitBehind(_ state: inout EngineState, id: UInt64, _ continuation: UnsafeContinuation<Void, any Error>) -> (EngineState.Prepared, EngineState.Prepared) {
            _ = state.arrive(waiter(id, fd: 5, continuation), isCancelled: false, onCompletionThread: false)
            let first = take(&state)[0]
            giveUpRole(&state)
            _ = state.arrive(waiter(id + 100, fd: 6, continuation), isCancelled: false, onCompletionThread: false)
            let second = take(&state)[0]
            _ = identify(&state, [5: 40, 6: 40])
            _ = state.described(second.ref, sharesDescriptionWith: [first.ref])
            giveUpRole(&state)
            return (first, second)
        }
        // Cancelled while it waits: gone from the engine, nothing left behind.
        var (first, _) = waitBehind(&state, id: 1, c[0])
        let (cancelled, _) = state.cancel(id: 101, descriptor: 6)
        #expect(cancelled?.id == 101 && state.waitingCount == 0)
        var done: [Waiter] = []
        _ = state.completed(slot: first.slot, result: .success(()), into: &done)
        #expect(take(&state).isEmpty)
        giveUpRole(&state)
        // The slot it waits for is refused at submission: it is ready at once.
        (first, _) = waitBehind(&state, id: 2, c[1])
        var failed: [Waiter] = []
        _ = state.refused(slot: first.slot, into: &failed)
        #expect(failed.map(\.id) == [2])
        var next = take(&state)
        #expect(next.map(\.descriptor) == [6])
        giveUpRole(&state)
        _ = state.completed(slot: next[0].slot, result: .success(()), into: &done)
        // EAGAIN for the slot it waits for, with another sync in flight: both wait for resources,
        // then the earlier is taken first and the later is checked against it again.
        _ = state.arrive(waiter(9, fd: 9, c[2]), isCancelled: false, onCompletionThread: false)
        let unrelated = take(&state)[0]
        giveUpRole(&state)
        _ = state.arrive(waiter(3, fd: 5, c[2]), isCancelled: false, onCompletionThread: false)
        first = take(&state)[0]
        _ = identify(&state, [5: 40, 6: 40, 9: 90])
        giveUpRole(&state)
        _ = state.arrive(waiter(103, fd: 6, c[2]), isCancelled: false, onCompletionThread: false)
        let second = take(&state)[0]
        _ = identify(&state, [5: 40, 6: 40, 9: 90])
        #expect(state.described(second.ref, sharesDescriptionWith: [first.ref]) == .waits)
        [first.slot].withUnsafeBufferPointer { _ = state.exhausted($0, into: &failed) }
        giveUpRole(&state)
        #expect(state.blockedOnResources && state.waitingCount == 2)
        _ = state.completed(slot: unrelated.slot, result: .success(()), into: &done)
        next = take(&state)
        #expect(next.map(\.descriptor) == [5, 6] && next.map(\.checksDescription) == [false, true])
        _ = identify(&state, [5: 40, 6: 40])
        #expect(state.described(next[1].ref, sharesDescriptionWith: [next[0].ref]) == .waits)
        giveUpRole(&state)
        _ = state.completed(slot: next[0].slot, result: .success(()), into: &done)
        next = take(&state)
        giveUpRole(&state)
        _ = state.completed(slot: next[0].slot, result: .success(()), into: &done)
        #expect(state.outstanding == 0 && state.slotsInUse == 0, "\(state.summary)")
        await parked.finish()
    }
}
