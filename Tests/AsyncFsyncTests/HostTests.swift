// Kernel AIO on a real host (seccomp, aio-max-nr, libaio.so): compiled out under ASYNC_FSYNC_PORTABLE.
#if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
import Foundation
import SystemPackage
import Testing

@testable import AsyncFsync

/// `asyncfsync-probe`, run as a child process on a host changed for it: the executable sits next to
/// this test binary (SwiftPM builds every product of the package before it runs the tests).
enum ProbeTool {
    static var path: String? {
        guard let me = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") else { return nil }
        let tool = URL(fileURLWithPath: me).deletingLastPathComponent().appendingPathComponent("asyncfsync-probe").path
        return FileManager.default.isExecutableFile(atPath: tool) ? tool : nil
    }

    struct Run: CustomStringConvertible {
        var status: Int32
        var output: String
        func line(_ prefix: String) -> String? {
            output.split(separator: "\n").first { $0.hasPrefix(prefix) }.map(String.init)
        }
        var description: String { "exit \(status):\n\(output)" }
    }

    /// Runs `prefix + [tool, directory]` with `ASYNC_FSYNC_BACKEND=backend`.
    static func run(_ prefix: [String], backend: String, directory: FilePath) throws -> Run {
        var environment = ProcessInfo.processInfo.environment
        environment[AsyncSync.environmentVariable] = backend
        let (status, output) = try runCommand(prefix + [path ?? "asyncfsync-probe", directory.string], environment: environment)
        return Run(status: status, output: output)
    }
}

extension AsyncFsyncTests {
    /// End-to-end selection on a real kernel changed for a child process: system calls denied by
    /// seccomp, the system-wide AIO limit used up, libaio's shared library hidden.
    @Suite struct Host {
        init() { GlibcAIOUnderSanitizer.configure }

        static let seccompExec: String? = {
            let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
                .deletingLastPathComponent().appendingPathComponent("SeccompExec")
            let out = "/tmp/asyncfsync-seccomp-\(getuid())"
            guard let (status, output) = try? runCommand(["bash", source.appendingPathComponent("build.sh").path, out]),
                  status == 0 else {
                print("⚠️  seccomp-exec did not build")
                return nil
            }
            _ = output
            return out + "/seccomp-exec"
        }()

        @Test("seccomp denies a kernel AIO call: auto picks posix with the reason, forced libaio fails naming it",
              arguments: ["io_setup", "io_submit"], ["ENOSYS", "EPERM"])
        func seccompDenied(call: String, errno: String) throws {
            guard TestEnvironment.require(ProbeTool.path != nil, "asyncfsync-probe is not built next to the tests"),
                  TestEnvironment.require(Self.seccompExec != nil, "seccomp-exec did not build (libseccomp-dev missing?)"),
                  let seccompExec = Self.seccompExec else { return }
            let directory = try ScratchDirectory.onDisk()
            let prefix = [seccompExec, call, errno, "--"]

            let auto = try ProbeTool.run(prefix, backend: "auto", directory: directory.path)
            #expect(auto.status == 0, "\(auto)")
            #expect(auto.line("selected:")?.hasPrefix("selected: posix") == true, "\(auto)")
            #expect(auto.line("synced:") == "synced: ok", "\(auto)")
            let reason = "\(call) failed with \(errno)"
            #expect(auto.line("probe: libaio: unusable")?.contains(reason) == true, "\(auto)")

            let forced = try ProbeTool.run(prefix, backend: "libaio", directory: directory.path)
            #expect(forced.status == 1, "\(forced)")
            let error = forced.line("error:") ?? ""
            #expect(error.contains("ASYNC_FSYNC_BACKEND=libaio"), "\(forced)")
            #expect(error.contains(reason), "\(forced)")
            #expect(forced.line("selected:") == nil, "\(forced)")
        }

        @Test("aio-max-nr used up: auto picks posix with the reason, forced libaio fails naming it")
        func aioMaxNrExhausted() throws {
            guard TestEnvironment.require(ProbeTool.path != nil, "asyncfsync-probe is not built next to the tests"),
                  TestEnvironment.require(getuid() == 0, "lowering /proc/sys/fs/aio-max-nr needs root") else { return }
            let limitPath = "/proc/sys/fs/aio-max-nr"
            let original = try String(contentsOfFile: limitPath, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
            // 0 is below aio-nr + 1 whatever aio-nr is: contexts of earlier probes are destroyed on
            // short-lived threads, so aio-nr may still drop while the child runs.
            try "0".write(toFile: limitPath, atomically: false, encoding: .utf8)
            defer { try? original.write(toFile: limitPath, atomically: false, encoding: .utf8) }
            let directory = try ScratchDirectory.onDisk()

            let auto = try ProbeTool.run([], backend: "auto", directory: directory.path)
            #expect(auto.status == 0, "\(auto)")
            #expect(auto.line("selected:")?.hasPrefix("selected: posix") == true, "\(auto)")
            let probe = auto.line("probe: libaio:") ?? ""
            #expect(probe.contains("io_setup failed with EAGAIN"), "\(auto)")
            #expect(probe.contains("aio-max-nr exhausted: aio-nr"), "\(auto)")

            let forced = try ProbeTool.run([], backend: "libaio", directory: directory.path)
            #expect(forced.status == 1, "\(forced)")
            #expect(forced.line("error:")?.contains("EAGAIN") == true, "\(forced)")
            #expect(forced.line("error:")?.contains("aio-max-nr") == true, "\(forced)")

            try original.write(toFile: limitPath, atomically: false, encoding: .utf8)
            #expect(try String(contentsOfFile: limitPath, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) == original)
        }

        @Test("asyncfsync-probe names the selected backend once, and a missing directory as missing, not usable")
        func probeToolMessages() throws {
            guard TestEnvironment.require(ProbeTool.path != nil, "asyncfsync-probe is not built next to the tests") else { return }
            let directory = try ScratchDirectory.onDisk()
            let run = try ProbeTool.run([], backend: "auto", directory: directory.path)
            #expect(run.status == 0, "\(run)")
            let selected = run.line("selected:") ?? ""
            #expect(selected.hasPrefix("selected: libaio backend ("), "\(run)")
            let missing = try ProbeTool.run([], backend: "auto", directory: directory.path.appending("missing"))
            let probe = missing.line("probe: libaio:") ?? ""
            #expect(!probe.hasPrefix("probe: libaio: usable"), "\(missing)")
            #expect(probe.contains("does not exist"), "\(missing)")
            #expect(probe.contains("not probed on the data's file system"), "\(missing)")
        }

        @Test("libaio.so hidden: the library still loads and uses kernel AIO (it makes the syscalls itself)")
        func libaioLibraryHidden() throws {
            guard TestEnvironment.require(ProbeTool.path != nil, "asyncfsync-probe is not built next to the tests"),
                  TestEnvironment.require(getuid() == 0, "a private mount namespace needs root"),
                  TestEnvironment.require(FileManager.default.isExecutableFile(atPath: "/usr/bin/unshare"),
                                          "unshare (util-linux) missing") else { return }
            let directory = try ScratchDirectory.onDisk()
            // In a private mount namespace, /dev/null is bound over every libaio shared object, so
            // that neither the dynamic linker nor dlopen could load it; the script proves it did.
            let hide = """
                hidden=0
                for f in /lib/*/libaio.so* /usr/lib/*/libaio.so* /lib64/libaio.so* /usr/lib64/libaio.so*; do
                  [ -f "$f" ] && [ ! -L "$f" ] && mount --bind /dev/null "$f" && hidden=$((hidden+1))
                done
                for f in /lib/*/libaio.so* /usr/lib/*/libaio.so* /lib64/libaio.so* /usr/lib64/libaio.so*; do
                  [ -s "$f" ] && echo "still readable: $f"
                done
                echo "hidden: $hidden"
                exec "$@"
                """
            let run = try ProbeTool.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", hide, "sh"],
                                        backend: "auto", directory: directory.path)
            #expect(!run.output.contains("still readable"), "\(run)")
            #expect(run.line("hidden:") != nil, "\(run)")
            #expect(run.status == 0, "\(run)")
            #expect(run.line("probe: libaio:")?.hasPrefix("probe: libaio: usable") == true, "\(run)")
            #expect(run.line("selected:")?.hasPrefix("selected: libaio") == true, "\(run)")
            #expect(run.line("synced:") == "synced: ok", "\(run)")
            #expect(run.line("libaio.so mapped:") == "libaio.so mapped: no", "\(run)")
        }
    }
}
#endif  // os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
