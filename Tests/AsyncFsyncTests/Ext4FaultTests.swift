import CTestSupport
import Foundation
import SystemPackage
import Testing

@testable import AsyncFsync

/// Runs a command; returns its exit status and output.
@discardableResult
func runCommand(_ arguments: [String], environment: [String: String]? = nil) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    if let environment { process.environment = environment }
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

struct CommandFailed: Error, CustomStringConvertible {
    var command: String
    var output: String
    var description: String { "`\(command)` failed: \(output)" }
}

/// A small ext4 file system on a loop device, unmounted and removed when released.
///
/// `thin`: the image is a sparse file on an 8 MiB tmpfs, so writeback of more than that fails
/// with ENOSPC although ext4 itself has room ("thin provisioning").
final class LoopExt4 {
    let base: FilePath
    let mountPoint: FilePath
    private var mounts: [FilePath] = []

    static var canRun: Bool {
        getuid() == 0 && FileManager.default.fileExists(atPath: "/dev/loop-control")
            && ((try? runCommand(["which", "mkfs.ext4"]).status) == 0)
    }

    init(thin: Bool) throws {
        base = FilePath("/tmp").appending("asyncfsync-ext4-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        mountPoint = base.appending("mnt")
        let backing = base.appending("backing")
        try FileManager.default.createDirectory(atPath: mountPoint.string, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: backing.string, withIntermediateDirectories: true)
        if thin {
            try check(["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", backing.string])
            mounts.append(backing)
        }
        let image = backing.appending("ext4.img").string
        try check(["truncate", "-s", "64M", image])
        try check(["mkfs.ext4", "-q", "-F", image])
        try check(["mount", "-o", thin ? "loop,noinit_itable" : "loop", image, mountPoint.string])
        mounts.insert(mountPoint, at: 0)
    }

    private func check(_ arguments: [String]) throws {
        let (status, output) = try runCommand(arguments)
        if status != 0 { throw CommandFailed(command: arguments.joined(separator: " "), output: output) }
    }

    deinit {
        for mount in mounts { _ = try? runCommand(["umount", "-l", mount.string]) }
        try? FileManager.default.removeItem(atPath: base.string)
    }

    func open(_ name: String, writing bytes: Int = 4096) throws -> FileDescriptor {
        let fd = try FileDescriptor.open(mountPoint.appending(name), .readWrite, options: [.create, .truncate],
                                         permissions: [.ownerReadWrite])
        let chunk = [UInt8](repeating: 0x5a, count: 1 << 20)
        var left = bytes
        while left > 0 {
            let count = min(left, chunk.count)
            _ = try chunk.withUnsafeBytes { try fd.writeAll(UnsafeRawBufferPointer(rebasing: $0[..<count])) }
            left -= count
        }
        return fd
    }
}

extension AsyncFsyncTests {
    /// Real kernel faults on loop-mounted ext4 (root and loop devices needed; CI has both).
    @Suite struct Ext4Faults {
        init() { GlibcAIOUnderSanitizer.configure }

        @Test("EXT4_IOC_SHUTDOWN: every sync of descriptors opened before fails with EIO, the same on every backend")
        func shutdownGivesEIO() async throws {
            guard TestEnvironment.require(LoopExt4.canRun, "needs root, /dev/loop-control and mkfs.ext4") else { return }
            let ext4 = try LoopExt4(thin: false)
            var descriptors: [BackendKind: [SyncMode: FileDescriptor]] = [:]
            for kind in BackendKind.tested {
                for mode in [SyncMode.fsync, .fdatasync] {
                    descriptors[kind, default: [:]][mode] = try ext4.open("\(kind)-\(mode)")
                }
            }
            defer { for fd in descriptors.values.flatMap(\.values) { try? fd.close() } }
            let directory = try FileDescriptor.open(ext4.mountPoint, .readOnly, options: .directory)
            defer { try? directory.close() }
            #expect(testsupport_ext4_shutdown(directory.rawValue) == 0)

            var errors: [AsyncSyncError] = []
            for kind in BackendKind.tested {
                let backend = try makeBackend(kind)
                for mode in [SyncMode.fsync, .fdatasync] {
                    let fd = descriptors[kind]![mode]!
                    let failure = try #require(await caughtError { try await backend.sync(fd, mode: mode) } as? AsyncSyncError)
                    #expect(failure.code == .system)
                    #expect(failure.errno == .ioError)
                    #expect(failure.operation == .sync(mode))
                    #expect(failure.step == .completion)
                    #expect(failure.backend == kind)
                    #expect(failure.descriptor == fd)
                    #expect(failure.isDurabilityFailure)
                    errors.append(failure)
                }
                await backend.shutdown()
            }
            // Every backend, the same per mode (fsync at even positions, fdatasync at odd ones).
            for (index, error) in errors.enumerated() {
                #expect(error.errno == errors[index % 2].errno && error.operation == errors[index % 2].operation)
            }
        }

        @Test("thin provisioning: lost writeback fails with ENOSPC once in the kernel, and stays failed here",
              arguments: BackendKind.tested)
        func thinProvisioningENOSPC(kind: BackendKind) async throws {
            guard TestEnvironment.require(LoopExt4.canRun, "needs root, /dev/loop-control and mkfs.ext4") else { return }
            for sticky in [true, false] {
                let ext4 = try LoopExt4(thin: true)
                let fd = try ext4.open("wal", writing: 16 << 20)  // twice what the tmpfs under the image holds
                defer { try? fd.close() }
                let backend = try makeBackend(kind, stickyFailures: sticky)
                let first = try #require(await caughtError { try await backend.fdatasync(fd) } as? AsyncSyncError)
                #expect(first.code == .system)
                #expect(first.errno == .noSpace)
                #expect(first.step == .completion)
                #expect(first.isDurabilityFailure)

                let second = await caughtError { try await backend.fdatasync(fd) } as? AsyncSyncError
                if sticky {
                    // The kernel would now say OK although the data is gone: we keep saying no.
                    #expect(second?.code == .earlierFailure)
                    #expect(second?.errno == .noSpace)
                } else {
                    // Without the rule the second sync runs for real and reports what the kernel
                    // says now: "success" where ext4's journal survived (FAULTS.md), EIO where it
                    // failed too (seen here). Either way it is the kernel's fresh answer.
                    #expect(second == nil || (second?.code == .system && second?.errno != .noSpace))
                }
                await backend.shutdown()
            }
        }
    }
}
