#if Logging || Metrics || ServiceLifecycle || NIO
// What the tests of the traits share; the target is empty without a trait.
import AsyncFsync
import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif canImport(Musl)
import Musl
#endif

/// Every suite of this target, one at a time: observers are process-wide and cannot be removed,
/// so a test that counts what its observer saw must not share the process with other tests' syncs.
@Suite(.serialized) struct IntegrationsTests {}

/// A directory on disk (under this package's directory, not tmpfs /tmp), removed when the test ends.
final class ScratchDirectory: Sendable {
    let path: FilePath

    init(sourceFile: String = #filePath) throws {
        // <package>/Tests/IntegrationsTests/Support.swift → <package>
        let package = URL(fileURLWithPath: sourceFile).deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
        let name = "scratch-integrations-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let url = package.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: false)
        path = FilePath(url.path)
        try requireDisk(path)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: path.string)
    }

    /// Creates (or truncates) a file with `contents` and opens it read-write.
    func file(_ name: String, contents: String = "record\n") throws -> FileDescriptor {
        let fd = try FileDescriptor.open(
            path.appending(name), .readWrite, options: [.create, .truncate], permissions: [.ownerReadWrite])
        do {
            try fd.writeAll(Array(contents.utf8))
        } catch {
            try? fd.close()
            throw error
        }
        return fd
    }
}

/// Whether this runs under CI (`CI=true`), where a test that cannot run is a failure.
let isCI = ProcessInfo.processInfo.environment["CI"] == "true"

/// Records an issue when `path` is on a memory file system: the syncs of such a file are made
/// inline and never reach the backends this target tests. Under CI that fails the test; elsewhere
/// it is a loud warning and the test goes on (its assertions still hold, they just prove less).
func requireDisk(_ path: FilePath, sourceLocation: SourceLocation = #_sourceLocation) throws {
    // The library's probe names the file system (statfs(2)); its result is cached per file system.
    guard let probe = AsyncSync.probeBlocking(directory: path).first, probe.isMemoryFileSystem else { return }
    let reason = "\(path) is on \(probe.fileSystem), a memory file system; run the tests from a checkout on disk"
    if isCI {
        Issue.record("cannot run under CI=true: \(reason)", sourceLocation: sourceLocation)
    } else {
        print("warning: \(reason)")
    }
}

/// Makes a backend the way applications do (the async form of AsyncSync.makeBackend) for `directory`.
func makeBackend(for directory: ScratchDirectory) async throws -> any AsyncSyncBackend {
    try await AsyncSync.makeBackend(directory: directory.path)
}

#endif
