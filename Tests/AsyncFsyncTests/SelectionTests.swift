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
                _ = try AsyncSync.makeBackendBlocking(environment: [AsyncSync.environmentVariable: value])
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

        @Test("Configuration(environment:) reads the backend, the inline path and the capacity")
        func configurationFromEnvironment() throws {
            let configuration = try AsyncSync.Configuration(environment: [
                AsyncSync.environmentVariable: " posix ", AsyncSync.inlineEnvironmentVariable: "off",
                AsyncSync.Configuration.capacityEnvironmentVariable: "32",
            ])
            #expect(configuration == AsyncSync.Configuration(backend: .posix, capacity: 32, inlineMemoryFileSystems: false))
            #expect(try AsyncSync.Configuration(environment: [:]) == AsyncSync.Configuration())
            #expect(try AsyncSync.Configuration(environment: [AsyncSync.environmentVariable: "auto"]).backend == nil)
            #expect(try AsyncSync.Configuration(environment: [AsyncSync.environmentVariable: "Portable"]).backend == .portable)
            #expect("\(AsyncSync.Configuration())".hasPrefix("backend auto, capacity 256, sticky failures"))
        }

        @Test("a bad value in the environment is found at start-up, naming the variable, the value and the valid ones",
              arguments: [
                (AsyncSync.environmentVariable, "io_uring", "auto, libaio, posix, portable"),
                (AsyncSync.inlineEnvironmentVariable, "maybe", "on, off"),
                (AsyncSync.Configuration.capacityEnvironmentVariable, "0", "1…65536"),
                (AsyncSync.Configuration.capacityEnvironmentVariable, "65537", "1…65536"),
                (AsyncSync.Configuration.capacityEnvironmentVariable, "many", "1…65536"),
              ])
        func configurationRejects(variable: String, value: String, valid: String) {
            #expect {
                _ = try AsyncSync.Configuration(environment: [variable: value])
            } throws: { error in
                guard let error = error as? AsyncSyncError else { return false }
                return error.code == .invalidConfiguration && error.description.contains("\(variable)=\"\(value)\"")
                    && error.description.contains(valid)
            }
        }

        @Test("a capacity out of range is an invalid configuration, not a crash", arguments: [0, -1, 65_537, 1 << 33])
        func configurationCapacity(capacity: Int) async {
            let configuration = AsyncSync.Configuration(capacity: capacity)
            let thrown = await caughtError { _ = try await AsyncSync.makeBackend(configuration) } as? AsyncSyncError
            #expect(thrown?.code == .invalidConfiguration)
            #expect(thrown?.description.contains("capacity \(capacity)") == true)
            #expect(throws: AsyncSyncError.self) { _ = try AsyncSync.makeBackendBlocking(configuration) }
        }

        @Test("makeBackend(configuration) makes the forced kind with its capacity and sticky setting",
              arguments: BackendKind.tested)
        func configurationHonoured(kind: BackendKind) async throws {
            let directory = try ScratchDirectory.onDisk()
            let configuration = AsyncSync.Configuration(backend: kind, capacity: 8, stickyFailures: false,
                                                        probeDirectory: directory.path)
            let backend = try await AsyncSync.makeBackend(configuration)
            #expect(backend.kind == kind)
            if kind == .portable {
                // No AIO context to size: its threads stay its own setting.
                #expect((backend as? PortableBackend)?.threadCount == PortableBackend.defaultThreads)
            } else {
                #expect("\(backend)".contains("capacity 8"))
            }
            #expect((backend as? any FailureLedgerProviding)?.failureLedger?.sticky == false)
            await backend.shutdown()
            let blocking = try AsyncSync.makeBackendBlocking(configuration)
            #expect(blocking.kind == kind)
            await blocking.shutdown()
        }

        @Test("BackendKind and the Step types are extensible: raw values round-trip, unknown names give nil")
        func extensibleKinds() {
            #expect(BackendKind.allCases == [.libaio, .posix, .portable])
            for kind in BackendKind.allCases { #expect(BackendKind(rawValue: kind.rawValue) == kind) }
            #expect(BackendKind(rawValue: "io_uring") == nil)
            for name in ["setup", "submit", "completion", "timeout"] {
                #expect(BackendProbe.Step(rawValue: name)?.rawValue == name)
            }
            for name in ["setup", "submit", "completion", "request"] {
                #expect(AsyncSyncError.Step(rawValue: name)?.description == name)
            }
            #expect(AsyncSyncError.Step(rawValue: "timeout") == nil)
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
            let probes = AsyncSync.probeBlocking()
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
