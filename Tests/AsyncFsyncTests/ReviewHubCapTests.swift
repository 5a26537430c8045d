import CAsyncFsync
import CTestSupport
import Foundation
import SystemPackage
import Testing

@testable import AsyncFsync

#if canImport(Glibc)
import Glibc
#endif

// An adversarial review of 3abbdff: the POSIX hub gives aio_suspend(3) at most
// `CompletionHub.maxWatched` control blocks; with more in flight it waits at most
// `CompletionHub.cappedTimeout`, reaps every engine's completions at each turn, and rings its own
// doorbell once `CompletionHub.cappedRoundsPerStarvation` capped rounds timed out. A test named
// "checked:" pins a rule that held on 3abbdff and had no test.
//
// More than 4 096 writes are held in flight by the `SystemCalls` table (a fake that never reaches
// glibc); every other request is glibc's. The table's aio_suspend(3) replaces the fake control
// blocks by NULL (glibc skips those) and calls glibc's with the hub's own timeout, so the hub's
// waits, its doorbell and the real requests are glibc's. Nothing is timed: the tests count calls,
// and every wait is bounded (`eventually(30)`). One backend, one table per test, shut down at its end.

#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
extension AsyncFsyncTests {
    @Suite struct ReviewHubCap {
        init() { GlibcAIOUnderSanitizer.configure }

        /// Writes to one descriptor that the table accepts without glibc, in flight until
        /// ``release()``; and a record of the hub's aio_suspend(3) calls and doorbell rings.
        final class Fake: @unchecked Sendable {  // state under `lock`
            private let lock = NSLock()
            private var accepted: Set<Int> = []
            private var released = false
            /// Fake writes done before ``release()``.
            private var releasedControls: Set<Int> = []
            private var eventfds: Set<CInt> = []
            /// A model of glibc's single helper held by the doorbell's read: a sync on one of
            /// these descriptors runs once an eventfd was written after it was queued.
            private var modelFiles: Set<CInt> = []
            private var modelSyncs: [Int: Int] = [:]  // control block: eventfd writes when queued
            private(set) var modelSyncsQueued = 0
            // Records.
            private(set) var suspendsWhileHeld = 0
            private(set) var untimedWhileHeld = 0
            private(set) var largestList: CInt = 0
            private(set) var timeoutsSeen: Set<Int> = []
            private var recordingTimeouts = false
            /// The list lengths of those turns.
            private(set) var listsSeen: Set<CInt> = []
            func recordTimeouts() { lock.withLock { recordingTimeouts = true } }
            private(set) var fakeStatusReads = 0
            /// Capped rounds that timed out since the last write to an eventfd; the longest run.
            private var timedOutRun = 0
            private(set) var longestTimedOutRun = 0
            private(set) var eventfdWrites = 0

            func accept(_ control: UnsafeMutablePointer<aiocb>) -> Result<Void, Errno> {
                lock.withLock { _ = accepted.insert(Int(bitPattern: control)) }
                return .success(())
            }
            func isFake(_ control: UnsafePointer<aiocb>) -> Bool {
                lock.withLock { accepted.contains(Int(bitPattern: control)) || modelSyncs[Int(bitPattern: control)] != nil }
            }
            func modelSingleHelper(for files: [CInt]) { lock.withLock { modelFiles = Set(files) } }
            /// A sync the model takes (`nil`: glibc's).
            func queueSync(_ control: UnsafeMutablePointer<aiocb>) -> Result<Void, Errno>? {
                lock.withLock {
                    guard modelFiles.contains(control.pointee.aio_fildes) else { return nil }
                    modelSyncs[Int(bitPattern: control)] = eventfdWrites
                    modelSyncsQueued += 1
                    return .success(())
                }
            }
            func status(_ control: UnsafePointer<aiocb>) -> AIOStatus? {
                lock.withLock {
                    if let queuedAt = modelSyncs[Int(bitPattern: control)] {
                        return eventfdWrites > queuedAt ? .succeeded : .inProgress
                    }
                    guard accepted.contains(Int(bitPattern: control)) else { return nil }
                    fakeStatusReads += 1
                    return released || releasedControls.contains(Int(bitPattern: control)) ? .succeeded : .inProgress
                }
            }
            func result(_ control: UnsafeMutablePointer<aiocb>) -> Result<Int, Errno>? {
                lock.withLock {
                    if modelSyncs.removeValue(forKey: Int(bitPattern: control)) != nil { return .success(0) }
                    releasedControls.remove(Int(bitPattern: control))
                    return accepted.remove(Int(bitPattern: control)) != nil ? .success(Int(control.pointee.aio_nbytes)) : nil
                }
            }
            func madeEventfd(_ fd: CInt) { lock.withLock { _ = eventfds.insert(fd) } }
            /// Writes to the eventfd from the hub's own thread: its own rings (starvation, or the
            /// guard against fruitless returns), never a wake-up.
            private(set) var hubRings = 0
            func wrote(_ fd: CInt) {
                let onHub = casyncfsync_thread_marker() != nil
                lock.withLock {
                    guard eventfds.contains(fd) else { return }
                    if onHub { hubRings += 1 }
                    eventfdWrites += 1
                    timedOutRun = 0
                }
            }
            /// Before a call: whether fake writes are held (the call is then recorded).
            func beforeSuspend(_ count: CInt, _ timeout: UnsafePointer<timespec>?) -> Bool {
                lock.withLock {
                    let held = !released && accepted.count > releasedControls.count
                    guard held else { return false }
                    suspendsWhileHeld += 1
                    largestList = max(largestList, count)
                    if let timeout {
                        // The timeouts of the turns after every write was submitted.
                        if recordingTimeouts { listsSeen.insert(count) }
                        if recordingTimeouts { timeoutsSeen.insert(Int(timeout.pointee.tv_sec) * 1_000_000_000 + Int(timeout.pointee.tv_nsec)) }
                    } else if recordingTimeouts {
                        // Only once every write was submitted: before, a write the table accepted
                        // whose slot the engine has not marked submitted yet is no request the hub
                        // can watch, and an untimed wait then is the rule (its submitter rings).
                        untimedWhileHeld += 1
                    }
                    return true
                }
            }
            func afterHeldSuspend(timedOut: Bool) {
                lock.withLock {
                    if timedOut {
                        timedOutRun += 1
                        longestTimedOutRun = max(longestTimedOutRun, timedOutRun)
                    }
                }
            }
            func release() { lock.withLock { released = true } }
            /// Completes every fake write but `keeping` of them.
            func release(allBut keeping: Int) {
                lock.withLock { releasedControls = Set(accepted.dropFirst(keeping)) }
            }
            var inFlight: Int { lock.withLock { released ? 0 : accepted.count - releasedControls.count } }
            func read<T>(_ body: (Fake) -> T) -> T { lock.withLock { body(self) } }
        }

        /// The live table, with `fake`'s writes to `target` and the record of the hub's waits.
        static func system(_ fake: Fake, target: CInt) -> SystemCalls {
            var system = SystemCalls.live
            system.eventfd = {
                let made = SystemCalls.live.eventfd()
                if case .success(let fd) = made { fake.madeEventfd(fd) }
                return made
            }
            system.write = { fd, buffer, count in
                let wrote = SystemCalls.live.write(fd, buffer, count)
                fake.wrote(fd)
                return wrote
            }
            system.aioWrite = { control in
                control.pointee.aio_fildes == target ? fake.accept(control) : SystemCalls.live.aioWrite(control)
            }
            system.aioFsync = { mode, control in fake.queueSync(control) ?? SystemCalls.live.aioFsync(mode, control) }
            system.aioError = { control in fake.status(control) ?? SystemCalls.live.aioError(control) }
            system.aioReturn = { control in fake.result(control) ?? SystemCalls.live.aioReturn(control) }
            system.aioSuspend = { list, count, timeout in
                guard fake.beforeSuspend(count, timeout) else { return SystemCalls.live.aioSuspend(list, count, timeout) }
                // glibc never saw the fake control blocks: it is given NULL in their place.
                var glibcs = (0..<Int(count)).map { index -> UnsafePointer<aiocb>? in
                    guard let control = list[index], !fake.isFake(control) else { return nil }
                    return control
                }
                // An untimed wait with requests in flight is recorded above; it must not hang the test.
                var bounded = timespec(tv_sec: 0, tv_nsec: 1_000_000)
                let timed: UnsafeMutablePointer<timespec>? = timeout.map { UnsafeMutablePointer(mutating: $0) }
                let suspended = SystemCalls.live.aioSuspend(&glibcs, count, timed ?? withUnsafeMutablePointer(to: &bounded) { $0 })
                if case .failure(.resourceTemporarilyUnavailable) = suspended { fake.afterHeldSuspend(timedOut: true) }
                return suspended
            }
            return system
        }

        // checked: with more requests in flight than it watches, the hub never waits without a
        // timeout (the `doorbellArmed && watching == 0` branch), always gives a timeout of
        // `cappedTimeout`, gives at most `maxWatched` + 1 control blocks, and does not loop without
        // waiting: each of its turns reads every fake request's status once, and each turn ends
        // in an aio_suspend(3) call (so the reads are at most one round of them per call, plus the
        // turns that did work).
        @Test("checked: a capped POSIX hub always waits with the short timeout, never untimed, and reads each request's status once per wait")
        func cappedHubWaitsBounded() async throws {
            let scratch = try ScratchDirectory.onTmpfs()
            let fd = try scratch.file("data", contents: "")
            defer { try? fd.close() }
            let fake = Fake()
            let system = Self.system(fake, target: fd.rawValue)
            let count = CompletionHub.maxWatched + 64
            let backend = try PosixAIOBackend(capacity: count + 8, inlineMemoryFileSystems: false, system: system)
            let page = [UInt8](repeating: 0x44, count: 512)
            let writes = (0..<count).map { index in Watched { try await backend.write(fd, page, at: Int64(index) * 512) } }
            #expect(await eventually(30) { fake.inFlight == count }, "\(fake.inFlight) of \(count) writes in flight")
            // Settle: from here on every request is submitted; count a stretch of turns.
            let settled = fake.read { $0.suspendsWhileHeld }
            #expect(await eventually(30) { fake.read { $0.suspendsWhileHeld } > settled + 50 }, "the hub keeps waiting")
            fake.recordTimeouts()
            let (suspends0, reads0) = fake.read { ($0.suspendsWhileHeld, $0.fakeStatusReads) }
            #expect(await eventually(30) { fake.read { $0.suspendsWhileHeld } >= suspends0 + 300 }, "300 more turns")
            let (suspends1, reads1) = fake.read { ($0.suspendsWhileHeld, $0.fakeStatusReads) }
            let turns = suspends1 - suspends0
            // A turn between two waits reads every fake request's status once (reapCompletions).
            #expect(reads1 - reads0 <= (turns + 2) * count,
                    "\(reads1 - reads0) status reads in \(turns) waits of \(count) requests: the hub loops without waiting")
            let (untimed, largest, timeouts) = fake.read { ($0.untimedWhileHeld, $0.largestList, $0.timeoutsSeen) }
            #expect(untimed == 0, "\(untimed) aio_suspend(3) calls without a timeout with \(count) requests in flight")
            #expect(largest <= CInt(CompletionHub.maxWatched + 1), "aio_suspend(3) given \(largest) control blocks")
            let capped = Int(CompletionHub.cappedTimeout.tv_nsec)
            #expect(timeouts == [capped], "timeouts given with the list capped: \(timeouts.sorted()) ns")
            fake.release()
            #expect(await eventually(30) { writes.allSatisfy(\.isDone) }, "every write completes")
            #expect(writes.filter(\.succeeded).count == count)
            await backend.shutdown()
        }

        // checked: once the cap ends with requests still in flight, the hub waits with the
        // starvation timeout again (not the capped one, and never untimed), on every one of them.
        @Test("checked: when fewer than maxWatched requests remain in flight, the hub goes back to the starvation timeout and watches all of them")
        func capEndsWithRequestsInFlight() async throws {
            let scratch = try ScratchDirectory.onTmpfs()
            let fd = try scratch.file("data", contents: "")
            defer { try? fd.close() }
            let fake = Fake()
            let system = Self.system(fake, target: fd.rawValue)
            let count = CompletionHub.maxWatched + 64
            let kept = 100
            let backend = try PosixAIOBackend(capacity: count + 8, inlineMemoryFileSystems: false, system: system)
            let page = [UInt8](repeating: 0x46, count: 512)
            let writes = (0..<count).map { index in Watched { try await backend.write(fd, page, at: Int64(index) * 512) } }
            #expect(await eventually(30) { fake.inFlight == count }, "\(fake.inFlight) of \(count) writes in flight")
            let before = fake.read { $0.suspendsWhileHeld }
            #expect(await eventually(30) { fake.read { $0.suspendsWhileHeld } > before + 2 }, "the hub waits with the list capped")
            fake.release(allBut: kept)
            #expect(await eventually(30) { writes.filter(\.isDone).count == count - kept }, "\(writes.filter(\.isDone).count) writes done")
            fake.recordTimeouts()
            let recorded = fake.read { $0.suspendsWhileHeld }
            #expect(await eventually(30) { fake.read { $0.suspendsWhileHeld } >= recorded + 2 }, "the hub waits again")
            let (untimed, timeouts, largest) = fake.read { ($0.untimedWhileHeld, $0.timeoutsSeen, $0.largestList) }
            #expect(untimed == 0, "\(untimed) aio_suspend(3) calls without a timeout with requests in flight")
            let starvation = Int(CompletionHub.starvationTimeout.tv_nsec)
            #expect(timeouts == [starvation], "timeouts given once the cap ended: \(timeouts.sorted()) ns")
            #expect(largest <= CInt(CompletionHub.maxWatched + 1))
            let lists = fake.read { $0.listsSeen }
            #expect(lists == [CInt(kept + 1)], "list lengths once the cap ended: \(lists.sorted()) (\(kept) in flight and the doorbell)")
            #expect(fake.inFlight == kept)
            fake.release()
            #expect(await eventually(30) { writes.allSatisfy(\.isDone) }, "every write completes")
            #expect(writes.filter(\.succeeded).count == count)
            await backend.shutdown()
        }

        // checked: the starvation rule with the list capped, whatever glibc's helper count: glibc's
        // single helper held by the doorbell's read is modelled in the table (a sync on the
        // modelled file runs once the eventfd was written after the sync was queued). The syncs
        // are requested one after the other by a task on the hub's own thread, so each is
        // submitted while the hub is awake (no wake-up rings the doorbell): each one completes
        // only through the hub's own ring, which comes within `cappedRoundsPerStarvation`
        // timed-out turns.
        @Test("checked: with the list capped, a sync submitted while the hub is awake and queued behind the doorbell's read (modelled single helper) completes through the hub's own ring within cappedRoundsPerStarvation timed-out turns")
        func cappedModelledSingleHelper() async throws {
            let scratch = try ScratchDirectory.onTmpfs()
            let fd = try scratch.file("data", contents: "")
            let file = try scratch.file("synced")
            defer {
                try? fd.close()
                try? file.close()
            }
            let fake = Fake()
            let system = Self.system(fake, target: fd.rawValue)
            let count = CompletionHub.maxWatched + 64
            let backend = try PosixAIOBackend(capacity: count + 8, inlineMemoryFileSystems: false, system: system)
            let page = [UInt8](repeating: 0x47, count: 512)
            let writes = (0..<count).map { index in Watched { try await backend.write(fd, page, at: Int64(index) * 512) } }
            #expect(await eventually(30) { fake.inFlight == count }, "\(fake.inFlight) of \(count) writes in flight")
            fake.modelSingleHelper(for: [file.rawValue])
            let rounds = 3
            let ringsBefore = fake.read { $0.hubRings }
            let executor = backend.taskExecutor
            let syncs = Watched {
                try await withTaskExecutorPreference(executor) {
                    for _ in 0..<rounds { try await backend.sync(file, mode: .fdatasync) }
                }
            }
            #expect(await eventually(30) { syncs.isDone }, "\(fake.read { $0.modelSyncsQueued }) of \(rounds) syncs queued; the last one never ran")
            #expect(syncs.succeeded, "\(String(describing: syncs.error))")
            let (queued, rings, longest) = fake.read { ($0.modelSyncsQueued, $0.hubRings - ringsBefore, $0.longestTimedOutRun) }
            #expect(queued == rounds)
            #expect(rings >= rounds - 1, "\(rings) rings of the hub's own for \(rounds) syncs queued behind the doorbell")
            #expect(longest <= CompletionHub.cappedRoundsPerStarvation,
                    "\(longest) capped turns timed out in a row without a doorbell ring")
            #expect(fake.inFlight == count, "the writes were held throughout")
            fake.release()
            #expect(await eventually(30) { writes.allSatisfy(\.isDone) }, "every write completes")
            #expect(writes.filter(\.succeeded).count == count)
            await backend.shutdown()
        }

        // checked: the single-helper starvation rule holds with a capped list. With one glibc
        // helper, the doorbell's read holds it and a sync queued behind it runs only once the hub
        // rings its own doorbell; capped, the hub rings after at most `cappedRoundsPerStarvation`
        // timed-out turns (counted, not timed), and the syncs complete while the capped writes are
        // still in flight.
        //
        // glibc's aio_init(3) sets the number of helpers only before the process's first aio
        // request; run alone (`--filter ReviewHubCap`) or under TSan, the helper is single.
        @Test("checked: with one glibc helper and the list capped, syncs queued behind the doorbell's read complete; the hub rings within cappedRoundsPerStarvation timed-out turns")
        func cappedSingleHelperStarvation() async throws {
            let scratch = try ScratchDirectory.onTmpfs()
            let fd = try scratch.file("data", contents: "")
            let files = try (0..<4).map { try scratch.file("f\($0)") }
            defer {
                try? fd.close()
                for file in files { try? file.close() }
            }
            testsupport_aio_init(1, 64)
            defer { testsupport_aio_init(GlibcAIOUnderSanitizer.defaultThreads, 64) }
            let fake = Fake()
            let system = Self.system(fake, target: fd.rawValue)
            let count = CompletionHub.maxWatched + 64
            let backend = try PosixAIOBackend(capacity: count + 64, inlineMemoryFileSystems: false, system: system)
            let page = [UInt8](repeating: 0x45, count: 512)
            let writes = (0..<count).map { index in Watched { try await backend.write(fd, page, at: Int64(index) * 512) } }
            #expect(await eventually(30) { fake.inFlight == count }, "\(fake.inFlight) of \(count) writes in flight")
            for round in 0..<3 {
                let syncs = files.map { file in Watched { try await backend.sync(file, mode: .fdatasync) } }
                #expect(await eventually(30) { syncs.allSatisfy(\.isDone) },
                        "round \(round): \(syncs.filter(\.isDone).count) of \(syncs.count) syncs done with \(fake.inFlight) writes held")
                let succeeded = syncs.filter(\.succeeded).count
                #expect(succeeded == syncs.count, "round \(round): \(succeeded) of \(syncs.count) syncs succeeded")
            }
            #expect(fake.inFlight == count, "the writes were held throughout")
            let longest = fake.read { $0.longestTimedOutRun }
            if longest == 0 {
                print("note: the syncs never waited behind the doorbell's read: glibc has more than one helper here (aio_init(3) came after the process's first request)")
            }
            #expect(longest <= CompletionHub.cappedRoundsPerStarvation,
                    "\(longest) capped turns timed out in a row without a doorbell ring")
            fake.release()
            #expect(await eventually(30) { writes.allSatisfy(\.isDone) }, "every write completes")
            #expect(writes.filter(\.succeeded).count == count)
            await backend.shutdown()
        }
    }
}
#endif  // os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
