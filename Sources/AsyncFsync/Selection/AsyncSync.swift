import SystemPackage

/// Entry points: choose and create a backend, and see what works on this host.
public enum AsyncSync {
    /// The environment variable that chooses the backend: `ASYNC_FSYNC_BACKEND`.
    ///
    /// Values: `auto` (the default, also when unset or empty) probes and prefers ``BackendKind/libaio``,
    /// then ``BackendKind/posix`` on Linux, and gives ``BackendKind/portable`` on other systems
    /// (and in a build with `ASYNC_FSYNC_PORTABLE`); `libaio`, `posix` or `portable` force that
    /// backend, and creating it fails with the probe's reason when it cannot work here (never a
    /// silent fallback; `libaio` and `posix` off Linux fail with `ENOSYS`). On Linux `auto`
    /// never picks `portable`: it is there to be forced, for a comparison or a file system the
    /// AIO paths handle badly. Surrounding
    /// spaces are ignored and letter case does not matter; any other value is an error naming the
    /// value and the valid ones.
    public static let environmentVariable = "ASYNC_FSYNC_BACKEND"

    /// The environment variable that switches the inline path for memory file systems:
    /// `ASYNC_FSYNC_INLINE`.
    ///
    /// Values: `on` (the default, also when unset or empty) or `off`; `1`/`0`, `true`/`false` and
    /// `yes`/`no` are accepted too, surrounding spaces are ignored and letter case does not
    /// matter. Any other value is an error. With `on`, backends made by ``makeBackend(_:)`` sync a
    /// descriptor on tmpfs or ramfs with a direct `fsync(2)` / `fdatasync(2)`: such a file system
    /// has no backing store and its fsync returns at once (Linux's AIO backends; the portable
    /// backend has no inline path). See `LibaioBackend.init(capacity:stickyFailures:inlineMemoryFileSystems:)`.
    public static let inlineEnvironmentVariable = "ASYNC_FSYNC_INLINE"

    /// Creates the backend `configuration` chooses, without blocking a thread of the cooperative
    /// pool: the probes run on threads of their own, each bounded in time.
    ///
    /// With `auto` (``Configuration/backend`` `nil`), each backend is probed in order
    /// (``BackendKind/libaio``, then ``BackendKind/posix`` on Linux with glibc;
    /// ``BackendKind/portable`` alone elsewhere) with a real sync of a scratch file in
    /// ``Configuration/probeDirectory``, and the first whose mechanism works is made. The next one
    /// is tried only when the probe's failure means "not supported here": `ENOSYS`, `EPERM` or
    /// `EAGAIN` (aio-max-nr used up) at setup, `ENOSYS`, `EPERM` or `EINVAL` at the submission of a
    /// sync of a regular file. A sync that was accepted and then failed is the file system's
    /// answer, not the backend's: it is no reason to fall back. Probe results are cached per file
    /// system, so this is cheap after the first call.
    ///
    /// - Parameter configuration: The backend, its capacity and settings, and where to probe.
    /// - Returns: A ready backend; call ``AsyncSyncBackend/shutdown()`` when done with it. Its
    ///   ``AsyncSyncBackend/kind`` says which one was chosen, and its `description` how it is set up.
    /// - Throws: ``AsyncSyncError`` with code ``AsyncSyncError/Code/invalidConfiguration`` for a
    ///   capacity out of ``Configuration/capacityRange``, or
    ///   ``AsyncSyncError/Code/backendUnavailable`` when the chosen backend (or, with `auto`,
    ///   every backend) cannot work here; the message carries the probes' reasons.
    ///   `CancellationError` when the task is cancelled before the probes answered (nothing is made).
    public static func makeBackend(_ configuration: Configuration) async throws -> any AsyncSyncBackend {
        try configuration.validate()
        let (choice, prober, directory) = selection(configuration)
        var probes: [BackendKind: BackendProbe] = [:]
        let kinds: [BackendKind] = if case .forced(let kind) = choice { [kind] } else { BackendKind.automaticOrder }
        for kind in kinds {
            probes[kind] = await prober.probe(kind, in: directory)
        }
        // A cancelled caller's probes were not waited for (each reads "no answer", which would be
        // false): nothing is chosen on them.
        try Task.checkCancellation()
        return try makeBackend(choice, prober: prober, directory: directory, configuration: configuration) { kind, _ in
            probes[kind]!
        }
    }

    /// Creates the backend `configuration` chooses, blocking the calling thread while it probes
    /// (for `main()` before any task runs, and other synchronous code).
    ///
    /// It blocks at most about 3 s per backend kind on a file system that does not answer,
    /// 0.4–1.5 ms normally. Its name says so, so that code that can `await` does not pick it by
    /// accident: from async code, use ``makeBackend(_:)``.
    ///
    /// - Parameter configuration: The backend, its capacity and settings, and where to probe.
    /// - Returns: A ready backend; call ``AsyncSyncBackend/shutdown()`` when done with it.
    /// - Throws: See ``makeBackend(_:)``.
    public static func makeBackendBlocking(_ configuration: Configuration) throws(AsyncSyncError) -> any AsyncSyncBackend {
        try configuration.validate()
        let (choice, prober, directory) = selection(configuration)
        return try makeBackend(choice, prober: prober, directory: directory, configuration: configuration) { kind, directory in
            prober.probe(kind, in: directory)
        }
    }

    /// Creates the backend the environment chooses (`ASYNC_FSYNC_BACKEND`, `ASYNC_FSYNC_INLINE`,
    /// `ASYNC_FSYNC_CAPACITY`), probing the file system of `directory`, without blocking a thread of
    /// the cooperative pool.
    ///
    /// The same as ``makeBackend(_:)`` with ``Configuration/init(environment:)`` and
    /// ``Configuration/probeDirectory`` set to `directory`.
    ///
    /// - Parameters:
    ///   - environment: Where to read the variables; `nil` (the default) reads this process's
    ///     environment.
    ///   - directory: A directory on the file system the data will live on (the probe makes and
    ///     removes a scratch file there); `nil` (the default) probes the temporary directory
    ///     (`$TMPDIR`, else `/tmp`).
    /// - Returns: A ready backend; call ``AsyncSyncBackend/shutdown()`` when done with it.
    /// - Throws: ``AsyncSyncError`` with code ``AsyncSyncError/Code/invalidConfiguration`` for an
    ///   unknown value, or ``AsyncSyncError/Code/backendUnavailable`` as ``makeBackend(_:)``.
    public static func makeBackend(
        environment: [String: String]? = nil, directory: FilePath? = nil
    ) async throws -> any AsyncSyncBackend {
        var configuration = try Configuration(environment: environment)
        configuration.probeDirectory = directory
        return try await makeBackend(configuration)
    }

    /// Creates the backend the environment chooses, probing the file system of `directory`,
    /// blocking the calling thread while it probes; from async code, use
    /// ``makeBackend(environment:directory:)``.
    ///
    /// - Parameters:
    ///   - environment: Where to read the variables; `nil` (the default) reads this process's
    ///     environment.
    ///   - directory: A directory on the file system the data will live on; `nil` (the default)
    ///     probes the temporary directory.
    /// - Returns: A ready backend; call ``AsyncSyncBackend/shutdown()`` when done with it.
    /// - Throws: See ``makeBackend(environment:directory:)``.
    public static func makeBackendBlocking(
        environment: [String: String]? = nil, directory: FilePath? = nil
    ) throws(AsyncSyncError) -> any AsyncSyncBackend {
        var configuration = try Configuration(environment: environment)
        configuration.probeDirectory = directory
        return try makeBackendBlocking(configuration)
    }

    /// The parsed choice, a prober for it, and the directory to probe.
    private static func selection(_ configuration: Configuration) -> (BackendChoice, Prober, FilePath) {
        (configuration.choice, .live(inlineMemoryFileSystems: configuration.inlineMemoryFileSystems),
         configuration.probeDirectory ?? defaultProbeDirectory)
    }

    static func makeBackend(_ choice: BackendChoice, prober: Prober) throws -> any AsyncSyncBackend {
        try makeBackend(choice, prober: prober, directory: defaultProbeDirectory, configuration: Configuration()) { kind, directory in
            prober.probe(kind, in: directory)
        }
    }

    static func makeBackend(
        _ choice: BackendChoice, prober: Prober, directory: FilePath, configuration: Configuration,
        probe: (BackendKind, FilePath) -> BackendProbe
    ) throws(AsyncSyncError) -> any AsyncSyncBackend {
        var probes: [BackendProbe] = []
        let backend = try choose(choice, prober: prober, directory: directory, configuration: configuration) { kind, directory in
            let result = probe(kind, directory)
            probes.append(result)
            return result
        }
        let chosen = "\(environmentVariable)=\(choice)"
        let kind = backend.kind
        announceSelection { Observers.forEach { $0.backendSelected(kind, choice: chosen, probes: probes) } }
        return backend
    }

    /// Where the announcements of a selection go while ``shared`` is being made: they run once the
    /// made backend is published, so that an observer asking ``shared`` (its kind, its executors)
    /// gets the backend made, not an answer for a backend that does not exist yet.
    final class DeferredAnnouncements: @unchecked Sendable {  // used by the one creating thread
        var pending: [() -> Void] = []
    }

    @TaskLocal static var deferredAnnouncements: DeferredAnnouncements?

    /// Tells the observers of a selection now, or, while ``shared`` is being made, once it is
    /// published.
    static func announceSelection(_ announce: @escaping () -> Void) {
        if let deferred = deferredAnnouncements {
            deferred.pending.append(announce)
        } else {
            announce()
        }
    }

    private static func choose(
        _ choice: BackendChoice, prober: Prober, directory: FilePath, configuration: Configuration,
        probe: (BackendKind, FilePath) -> BackendProbe
    ) throws(AsyncSyncError) -> any AsyncSyncBackend {
        switch choice {
        case .forced(let kind):
            let probe = probe(kind, directory)
            guard probe.isSupported else { throw forcedUnavailable(kind, probe) }
            do {
                return try create(kind, prober: prober, configuration: configuration)
            } catch {
                throw forcedUnavailable(kind, error)
            }
        case .auto:
            var reasons: [String] = []
            for kind in BackendKind.automaticOrder {
                let probe = probe(kind, directory)
                switch probe.verdict {
                case .unsupported:
                    reasons.append(probe.description)
                    continue
                case .unavailable:
                    throw AsyncSyncError(
                        code: .backendUnavailable, errno: probe.errno, operation: .setup,
                        step: probe.failure?.step ?? .setup, backend: kind, systemCall: probe.failure?.systemCall,
                        message: "probing \(kind) failed for a reason that is not \"unsupported here\", so no "
                            + "other backend is tried: \(probe)")
                case .usable, .syncFailed:
                    switch Result(catching: { () throws(AsyncSyncError) in try create(kind, prober: prober, configuration: configuration) }) {
                    case .success(let backend):
                        return backend
                    case .failure(let error) where isUnsupported(error):
                        // io_setup of the full context can still meet aio-max-nr after the probe's
                        // one-event context fitted.
                        reasons.append("\(kind): \(error)")
                    case .failure(let error):
                        throw error
                    }
                }
            }
            throw AsyncSyncError(
                code: .backendUnavailable, errno: nil, operation: .setup, step: .setup, backend: nil,
                message: "no backend works here: " + reasons.joined(separator: "; "))
        }
    }

    /// Whether a backend's creation failed because its mechanism is not supported here.
    private static func isUnsupported(_ error: AsyncSyncError) -> Bool {
        guard error.code == .backendUnavailable, let errno = error.errno else { return false }
        return Prober.verdict(setupErrno: errno) == .unsupported
    }

    private static func forcedUnavailable(_ kind: BackendKind, _ probe: BackendProbe) -> AsyncSyncError {
        let failure = probe.failure
        return AsyncSyncError(
            code: .backendUnavailable, errno: failure?.errno, operation: .setup, step: failure?.step ?? .setup,
            backend: kind, systemCall: failure?.systemCall,
            message: "\(environmentVariable)=\(kind.rawValue) forces a backend that cannot work here: \(probe)")
    }

    private static func forcedUnavailable(_ kind: BackendKind, _ error: AsyncSyncError) -> AsyncSyncError {
        var error = error
        error.message = "\(environmentVariable)=\(kind.rawValue) forces a backend that cannot be created here"
            + (error.message.isEmpty ? "" : ": " + error.message)
        return error
    }

    static func create(
        _ kind: BackendKind, prober: Prober, configuration: Configuration = Configuration()
    ) throws(AsyncSyncError) -> any AsyncSyncBackend {
        let sticky = configuration.stickyFailures
        switch kind {
        case .portable:
            // Its threads are its own setting (PortableBackend.defaultThreads): the capacity sizes an
            // AIO context, and that many blocked threads would be a waste.
            return try PortableBackend(threads: PortableBackend.defaultThreads, stickyFailures: sticky,
                                       system: prober.system)
        #if os(Linux) && canImport(Glibc) && !ASYNC_FSYNC_PORTABLE
        case .libaio:
            return try LibaioBackend(capacity: configuration.capacity, stickyFailures: sticky,
                                     inlineMemoryFileSystems: prober.inlineMemoryFileSystems, system: prober.system)
        case .posix:
            return try PosixAIOBackend(capacity: configuration.capacity, stickyFailures: sticky,
                                       inlineMemoryFileSystems: prober.inlineMemoryFileSystems, system: prober.system)
        #else
        case .libaio, .posix:
            throw AsyncSyncError(
                code: .backendUnavailable, errno: .noFunction, operation: .setup, step: .setup, backend: kind,
                message: "\(kind) exists on Linux only (this build: \(BackendKind.buildDescription))")
        #endif
        default:
            throw AsyncSyncError(code: .backendUnavailable, errno: nil, operation: .setup, step: .setup, backend: kind,
                                 message: "this version cannot make a \(kind) backend")
        }
    }

    /// Parses `ASYNC_FSYNC_INLINE`.
    static func inlineSetting(_ value: String?) throws(AsyncSyncError) -> Bool {
        switch (value ?? "").trimmingSpaces.lowercased() {
        case "", "on", "1", "true", "yes": return true
        case "off", "0", "false", "no": return false
        default:
            throw AsyncSyncError(
                code: .invalidConfiguration, errno: nil, operation: .setup, step: .request, backend: nil,
                message: "\(inlineEnvironmentVariable)=\"\(value ?? "")\" is not a setting; valid values: on, off")
        }
    }

    /// Probes every backend with a real sync of a scratch file in `directory`, so that the file
    /// system the data will live on is the one asked.
    ///
    /// Results are cached per file system (its `st_dev` and `statfs(2)` type) for the life of the
    /// process; a cached result says so (``BackendProbe/isCached``) and keeps the duration measured
    /// when it ran. Failures at setup (seccomp, aio-max-nr) describe the host rather than the file
    /// system and are probed again each time. Each probe is bounded in time: a file system that
    /// does not answer gives a probe failed at step ``BackendProbe/Step/timeout`` after about 3 s.
    /// The probes run on threads of their own; this waits for them without blocking a thread of
    /// the cooperative pool.
    ///
    /// - Parameter directory: A writable directory; the scratch file is removed at once. When no
    ///   file can be made there, the mechanism is probed on a memfd and the report says so. `nil`
    ///   (the default) probes the temporary directory (`$TMPDIR`, else `/tmp`).
    /// - Returns: One ``BackendProbe`` per ``BackendKind`` this build can make, in the order of
    ///   `BackendKind.allCases`: all three on Linux, ``BackendKind/portable`` alone elsewhere.
    public static func probe(directory: FilePath? = nil) async -> [BackendProbe] {
        let prober = probeSettings()
        var probes: [BackendProbe] = []
        for kind in BackendKind.availableHere { probes.append(await prober.probe(kind, in: directory ?? defaultProbeDirectory)) }
        return probes
    }

    /// Probes every backend in `directory` as ``probe(directory:)`` does, blocking the calling
    /// thread meanwhile (for `main()` and other synchronous code).
    ///
    /// - Parameter directory: A writable directory; `nil` probes the temporary directory.
    /// - Returns: One ``BackendProbe`` per ``BackendKind`` this build can make, in the order of
    ///   `BackendKind.allCases`: all three on Linux, ``BackendKind/portable`` alone elsewhere.
    public static func probeBlocking(directory: FilePath? = nil) -> [BackendProbe] {
        let prober = probeSettings()
        return BackendKind.availableHere.map { prober.probe($0, in: directory ?? defaultProbeDirectory) }
    }

    private static func probeSettings() -> Prober {
        let inline = (try? inlineSetting(system_getenv(inlineEnvironmentVariable))) ?? true
        return Prober.live(inlineMemoryFileSystems: inline)
    }

    static var defaultProbeDirectory: FilePath {
        if let tmp = system_getenv("TMPDIR"), !tmp.isEmpty { return FilePath(tmp) }
        return "/tmp"
    }
}

/// The parsed value of `ASYNC_FSYNC_BACKEND`.
enum BackendChoice: Equatable, CustomStringConvertible {
    case auto
    case forced(BackendKind)

    var description: String {
        switch self {
        case .auto: "auto"
        case .forced(let kind): kind.rawValue
        }
    }

    init(environmentValue: String?) throws(AsyncSyncError) {
        let trimmed = (environmentValue ?? "").trimmingSpaces.lowercased()
        if trimmed.isEmpty || trimmed == "auto" {
            self = .auto
        } else if let kind = BackendKind(rawValue: trimmed) {
            self = .forced(kind)
        } else {
            let valid = (["auto"] + BackendKind.allCases.map(\.rawValue)).joined(separator: ", ")
            throw AsyncSyncError(
                code: .invalidConfiguration, errno: nil, operation: .setup, step: .request, backend: nil,
                message: "\(AsyncSync.environmentVariable)=\"\(environmentValue ?? "")\" is not a backend; valid values: \(valid)")
        }
    }
}

extension String {
    var trimmingSpaces: String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else { return "" }
        return String(self[first...last])
    }
}
