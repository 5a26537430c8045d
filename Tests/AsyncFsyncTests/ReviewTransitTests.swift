#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
import Foundation
import SystemPackage
import Testing

@testable import AsyncFsync

import Glibc

extension AsyncFsyncTests {
    /// Review of ab0b6af (a durable write whose sync part is made on another path holds the
    /// engine's transit until that sync part has its answer).
    @Suite struct ReviewTransit {
        init() { GlibcAIOUnderSanitizer.configure }

        /// The inline path of `LibaioBackend.durableWriteUnobserved` (tmpfs): with an earlier
        /// kernel AIO write of the descriptor in flight, `AIOEngine.syncAfterWrite` sends the sync
        /// part through the libaio engine (held, then submitted). The libaio engine hands an
        /// `EINVAL` at submit off (`handsOffInvalid`: `EngineState.refused(handOff: true)` keeps
        /// the request in its transit until the owner calls `endTransit()`), but on this path no
        /// caller catches it (`fallbackSyncAfterWrite` and `syncUnobserved` do): the handed-off
        /// transit is never ended, so `shutdown()` never returns, and the durable write fails with
        /// `EINVAL` although the file system is served (a plain sync of the same descriptor in the
        /// same state is handed to POSIX aio). Kernel AIO refuses every fsync with `EINVAL` on a
        /// kernel older than 4.18, which the library supports through its fallback; the door
        /// emulates it.
        @Test("inline path: a durable write's held sync part refused by kernel AIO (EINVAL) is served, and its handed-off transit ended: the shutdown ends")
        func inlineDurableWriteHeldSyncRefusedByKernelAIO() async throws {
            let door = Door()
            var system = door.system
            let doorSubmit = system.ioSubmit
            // The durable write's own write (at 4096) passes the door; the earlier one (at 0) is held.
            system.ioSubmit = { context, count, iocbs in
                if count == 1, let control = iocbs[0], control.pointee.aio_lio_opcode == 1, control.pointee.aio_offset == 4096 {
                    return submitOne(context, control, at: 0) ?? .success(1)
                }
                return doorSubmit(context, count, iocbs)
            }
            let backend = try LibaioBackend(capacity: 4, inlineMemoryFileSystems: true, system: system)
            let directory = try ScratchDirectory.onTmpfs()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            try #require(backend.inline?.applies(to: fd) == true, "the file is on a memory file system")
            door.refuseSyncs(of: fd)  // kernel AIO without fsync (a kernel older than 4.18)
            let page = [UInt8](repeating: 0x11, count: 4096)
            let write = Watched { try await backend.write(fd, page, at: 0) }
            try #require(await eventually(30) { door.heldWriteCount == 1 }, "the earlier write is in flight")
            let durable = Watched { try await backend.durableWrite(fd, page, at: 4096) }
            try #require(await eventually(30) { writeCounts(backend).heldSyncs == 1 },
                         "the durable write's sync part is held for the earlier write: \(door.log)")
            door.releaseWrites()
            #expect(await eventually(30) { durable.isDone && write.isDone })
            #expect(write.succeeded)
            #expect(door.log.contains("EINVAL fdsync"), "kernel AIO refused the sync part: \(door.log)")
            #expect(durable.succeeded, "written, its sync part refused by kernel AIO and not served: \(String(describing: durable.error))")
            let shutdown = Watched { await backend.shutdown() }
            #expect(await eventually(30) { shutdown.isDone },
                    "the shutdown waits for a transit nobody ends: \(backend.engine.stateSummary)")
        }

        /// Outside ab0b6af, found on the way (present since the inline and fallback paths of a
        /// durable write go through `engine.write(kind: .plain)`): docs/errors.md says a durable
        /// write of a file with a recorded durability failure fails with `.earlierFailure`
        /// "without reaching the file system" (`EngineWriteFaults/durableWriteWhoseSyncFails`
        /// checks it on the engine's path: `AIOEngine.write` admits a non-plain write through the
        /// ledger before anything else). A `.plain` write is not admitted, so on the inline path
        /// (tmpfs) and the POSIX-fallback path the data is written first and only the sync part
        /// meets the sticky rule.
        @Test("a durable write of a file with a recorded failure is refused before its data is written, on every path of both AIO backends",
              arguments: ["engine", "inline", "fallback", "posix-inline"])
        func stickyDurableWriteWritesNothing(path: String) async throws {
            let door = Door()
            door.releaseWrites()  // writes go straight through
            // One backend per case: a POSIX backend on `.live` beside the fallback's on the door's
            // table would make two POSIX completion hubs, and under TSan glibc has one helper
            // thread (Support.swift), which one idle hub's doorbell read holds for good.
            let backend: any AsyncSyncBackend
            let ledger: FailureLedger
            var libaio: LibaioBackend?
            if path == "posix-inline" {
                let posix = try PosixAIOBackend(capacity: 4, inlineMemoryFileSystems: true, system: .live)
                (backend, ledger) = (posix, posix.ledger)
            } else {
                let made = try LibaioBackend(capacity: 4, inlineMemoryFileSystems: path == "inline", system: door.system)
                (backend, ledger, libaio) = (made, made.ledger, made)
            }
            let directory = try path.hasSuffix("inline") ? ScratchDirectory.onTmpfs() : ScratchDirectory.onDisk()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            if path == "fallback" {
                door.refuseSyncs(of: fd)  // this file system has no AIO fsync
                try await backend.fdatasync(fd)
                try #require(libaio?.posixFileSystems.isEmpty == false, "the file system is served by POSIX aio now")
            }
            ledger.record(fd, errno: .ioError)  // an earlier durability failure of the file
            let page = [UInt8](repeating: 0x11, count: 4096)
            let error = await caughtError { try await backend.durableWrite(fd, page, at: 0) } as? AsyncSyncError
            #expect(error?.code == .earlierFailure && error?.errno == .ioError, "\(path): \(String(describing: error))")
            #expect(try contents(fd, count: 4096).isEmpty, "\(path): refused, yet its data was written: \(door.log)")
            await backend.shutdown()
        }
    }
}
#endif
