import SystemPackage
import Testing

@testable import AsyncFsync

extension AsyncFsyncTests {
    @Suite struct Selection {
        init() { GlibcAIOUnderSanitizer.configure }

        @Test("ASYNC_FSYNC_BACKEND parsing", arguments: [
            (nil, BackendChoice.auto), ("", .auto), ("auto", .auto), ("  AUTO ", .auto),
            ("libaio", .forced(.libaio)), (" LibAIO\t", .forced(.libaio)),
            ("posix", .forced(.posix)), ("POSIX", .forced(.posix)), (" Portable ", .forced(.portable)),
        ] as [(String?, BackendChoice)])
        func parsing(value: String?, expected: BackendChoice) throws {
            #expect(try BackendChoice(environmentValue: value) == expected)
        }

        @Test("an unknown value is an error naming the value and the valid ones",
              arguments: ["io_uring", "lib aio", "posix,libaio", "1"])
        func unknownValue(value: String) {
            #expect {
                _ = try AsyncSync.makeBackend(environment: [AsyncSync.environmentVariable: value])
            } throws: { error in
                guard let error = error as? AsyncSyncError else { return false }
                return error.code == .invalidConfiguration && error.backend == nil
                    && error.description.contains("\"\(value)\"") && error.description.contains("auto, libaio, posix, portable")
            }
        }

        @Test("a forced backend is that backend", arguments: BackendKind.tested)
        func forced(kind: BackendKind) async throws {
            let backend = try await AsyncSync.makeBackend(environment: [AsyncSync.environmentVariable: kind.rawValue])
            #expect(backend.kind == kind)
            await backend.shutdown()
        }

        #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
        @Test("auto prefers libaio where it works")
        func autoPrefersLibaio() async throws {
            let backend = try await AsyncSync.makeBackend(environment: [:])
            #expect(backend.kind == .libaio)
            await backend.shutdown()
        }

        static let setupErrnos: [Errno] = [.noFunction, .notPermitted, .resourceTemporarilyUnavailable]

        @Test("kernel AIO denied at io_setup: auto falls back to posix, forced libaio fails with the reason",
              arguments: setupErrnos)
        func libaioDenied(errno: Errno) async throws {
            var system = SystemCalls.live
            system.ioSetup = { _, _ in .failure(errno) }
            let prober = Prober(system: system)

            let backend = try AsyncSync.makeBackend(.auto, prober: prober)
            #expect(backend.kind == .posix)
            await backend.shutdown()

            #expect {
                _ = try AsyncSync.makeBackend(.forced(.libaio), prober: prober)
            } throws: { error in
                guard let error = error as? AsyncSyncError else { return false }
                return error.code == .backendUnavailable && error.backend == .libaio && error.errno == errno
                    && error.systemCall == "io_setup" && error.description.contains("io_setup failed with \(errno.symbolicName)")
            }
        }

        @Test("IOCB_CMD_FDSYNC refused at submit: the probe says so")
        func fdsyncRefused() {
            var system = SystemCalls.live
            system.ioSubmit = { _, _, _ in .failure(.invalidArgument) }
            let probe = Prober(system: system).probe(.libaio, in: "/tmp")
            #expect(!probe.isUsable)
            #expect(probe.failure?.step == .submit)
            #expect(probe.description.contains("io_submit failed with EINVAL"))
            #expect(probe.description.contains("4.18"))
        }

        @Test("a probe that never completes ends as a timeout instead of hanging")
        func probeTimeout() {
            var system = SystemCalls.live
            system.ioGetevents = { _, _, _, _, _ in .success(0) }  // io_getevents timed out
            let probe = Prober(system: system, timeout: .milliseconds(50)).probe(.libaio, in: "/tmp")
            #expect(!probe.isUsable)
            #expect(probe.failure?.errno == nil)
            #expect(probe.description.contains("no completion within"))
        }

        #else
        @Test("off Linux (ASYNC_FSYNC_PORTABLE), auto gives the portable backend; libaio and posix fail with ENOSYS")
        func autoIsPortable() async throws {
            let backend = try await AsyncSync.makeBackend(environment: [:])
            #expect(backend.kind == .portable)
            await backend.shutdown()
            for kind in [BackendKind.libaio, .posix] {
                let error = await caughtError {
                    _ = try await AsyncSync.makeBackend(environment: [AsyncSync.environmentVariable: kind.rawValue])
                } as? AsyncSyncError
                #expect(error?.code == .backendUnavailable && error?.errno == .noFunction && error?.backend == kind,
                        "\(String(describing: error))")
            }
        }
        #endif

        @Test("probe() reports every backend this build has, usable here, with its cost")
        func probeReportsEveryBackend() {
            let probes = AsyncSync.probe()
            #expect(probes.map(\.kind) == BackendKind.availableHere)
            for probe in probes {
                #expect(probe.isUsable, "\(probe)")
                #expect(probe.duration > .zero)
                #expect(probe.description.hasPrefix("\(probe.kind): usable ("))
                #expect(probe.description.contains("probe took "))
            }
        }
    }
}
