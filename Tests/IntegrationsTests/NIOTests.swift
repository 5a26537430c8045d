#if NIO
// The tests of the trait NIO.
import AsyncFsync
import AsyncFsyncNIO
import Foundation
import NIOCore
import Testing
import _NIOFileSystem

/// The number of descriptors open in this process.
func openDescriptorCount() throws -> Int {
    try FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count
}

extension IntegrationsTests {
    @Suite struct NIO {
        @Test("fsync and fdatasync of a NIO ReadWriteFileHandle through a real backend; the handle stays usable")
        func syncHandle() async throws {
            let directory = try ScratchDirectory()
            let backend = try await makeBackend(for: directory)
            let path = directory.path.appending("nio-wal")
            let descriptorsBefore = try openDescriptorCount()
            let contents = try await FileSystem.shared.withFileHandle(
                forReadingAndWritingAt: path, options: .newFile(replaceExisting: true)
            ) { handle in
                try await handle.write(contentsOf: Array("one\n".utf8), toAbsoluteOffset: 0)
                try await handle.synchronize(using: backend, mode: .fsync)
                try await handle.write(contentsOf: Array("two\n".utf8), toAbsoluteOffset: 4)
                try await handle.synchronize(using: backend, mode: .fdatasync)
                try await handle.write(contentsOf: Array("three\n".utf8), toAbsoluteOffset: 8)
                try await backend.fsync(handle)
                try await backend.fdatasync(handle)
                try await backend.sync(handle, mode: .fdatasync)
                #expect(try await backend.clearFailure(of: handle) == false)
                // Still open and usable after the syncs: read back what was written.
                let buffer = try await handle.readToEnd(maximumSizeAllowed: .kilobytes(1))
                return String(buffer: buffer)
            }
            #expect(contents == "one\ntwo\nthree\n")
            // Every duplicate was closed (the handle too, by withFileHandle).
            #expect(try openDescriptorCount() == descriptorsBefore)
            await backend.shutdown()
        }

        @Test("A WriteFileHandle and a ReadFileHandle sync too (any FileHandleProtocol)")
        func otherHandles() async throws {
            let directory = try ScratchDirectory()
            let backend = try await makeBackend(for: directory)
            let path = directory.path.appending("nio-other")
            try await FileSystem.shared.withFileHandle(forWritingAt: path, options: .newFile(replaceExisting: true)) { handle in
                try await handle.write(contentsOf: Array("data".utf8), toAbsoluteOffset: 0)
                try await backend.fdatasync(handle)
            }
            try await FileSystem.shared.withFileHandle(forReadingAt: path) { handle in
                try await handle.synchronize(using: backend, mode: .fsync)
            }
            await backend.shutdown()
        }

        @Test("A closed handle: NIO's FileSystemError .closed, nothing synced, no descriptor leaked")
        func closedHandle() async throws {
            let directory = try ScratchDirectory()
            let backend = try await makeBackend(for: directory)
            let handle = try await FileSystem.shared.openFile(
                forWritingAt: directory.path.appending("nio-closed"), options: .newFile(replaceExisting: true))
            try await handle.close()
            let descriptorsBefore = try openDescriptorCount()
            do {
                try await handle.synchronize(using: backend, mode: .fdatasync)
                Issue.record("sync of a closed handle succeeded")
            } catch let error as FileSystemError {
                #expect(error.code == .closed)
            }
            do {
                try await backend.fsync(handle)
                Issue.record("sync of a closed handle succeeded")
            } catch let error as FileSystemError {
                #expect(error.code == .closed)
            }
            #expect(try openDescriptorCount() == descriptorsBefore)
            await backend.shutdown()
        }

        @Test("An error of the sync names the handle's descriptor, not the closed duplicate's")
        func errorNamesTheHandlesDescriptor() async throws {
            let directory = try ScratchDirectory()
            let backend = try await makeBackend(for: directory)
            await backend.shutdown()
            try await FileSystem.shared.withFileHandle(
                forReadingAndWritingAt: directory.path.appending("nio-error"), options: .newFile(replaceExisting: true)
            ) { handle in
                let own = try await handle.withUnsafeDescriptor { $0 }
                do {
                    try await handle.synchronize(using: backend, mode: .fsync)
                    Issue.record("sync through a shut-down backend succeeded")
                } catch let error as AsyncSyncError {
                    #expect(error.code == .shutDown)
                    #expect(error.descriptor == own)
                }
                // The handle is untouched by the failed sync.
                try await handle.write(contentsOf: Array("ok".utf8), toAbsoluteOffset: 0)
            }
        }
    }
}

#endif
