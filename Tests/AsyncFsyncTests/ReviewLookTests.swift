#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
import Foundation
import SystemPackage
import Testing

@testable import AsyncFsync

import Glibc

extension AsyncFsyncTests {
    /// Review of d4351c4 (one look under the engine's lock routes a sync).
    @Suite struct ReviewLook {
        init() { GlibcAIOUnderSanitizer.configure }

        /// Holds the first `fstatfs(2)` after ``arm()`` until ``open()``.
        final class StatfsGate: Sendable {
            let state = Locked((armed: false, entered: false))
            let door = DispatchSemaphore(value: 0)

            func arm() { state.withLock { $0.armed = true } }
            var entered: Bool { state.withLock { $0.entered } }
            func open() { door.signal() }

            func pass() {
                let holds = state.withLock { state -> Bool in
                    guard state.armed else { return false }
                    state.armed = false
                    state.entered = true
                    return true
                }
                if holds { door.wait() }
            }
        }

        @Test("a sync routed by a look taken before a write was accepted, then held for that write, can still be cancelled")
        func staleLookHeldSyncIsCancelled() async throws {
            let door = Door()
            let gate = StatfsGate()
            var system = door.system
            let live = system.fileSystemType
            system.fileSystemType = { fd in
                gate.pass()
                return live(fd)
            }
            // The inline path on: its fstatfs(2) comes after the backend's look and before the engine.
            let backend = try LibaioBackend(capacity: 8, inlineMemoryFileSystems: true, system: system)
            let directory = try ScratchDirectory.onDisk()
            let fd = try directory.file("data", contents: "")
            defer { try? fd.close() }
            gate.arm()
            // It looks: no writes, the engine idle (handed over at once, so no cancellation handler).
            let sync = Task { try await backend.fdatasync(fd) }
            #expect(await eventually(30) { gate.entered }, "the sync looked and is in fstatfs(2)")
            // A write accepted now, before the sync reaches the engine: the sync is held for it.
            let write = Task { try await backend.write(fd, [UInt8](repeating: 1, count: 4096), at: 0) }
            #expect(await eventually(30) { door.heldWriteCount == 1 }, "the write reached the kernel's door")
            gate.open()
            #expect(await eventually(30) { writeCounts(backend).heldSyncs == 1 }, "the sync is held for the write")
            sync.cancel()
            door.releaseWrites()
            try await write.value
            #expect(await caughtError { try await sync.value } is CancellationError,
                    "the held sync's cancellation is not lost: \(door.log)")
            #expect(writeCounts(backend) == (0, 0))
            await backend.shutdown()
        }
    }
}
#endif
