import SystemPackage

/// Entry points: choose and create a backend, and see what works on this host.
public enum AsyncSync {
    /// The environment variable that chooses the backend: `ASYNC_FSYNC_BACKEND`.
    ///
    /// Values: `auto` (the default, also when unset or empty) probes and prefers ``BackendKind/libaio``,
    /// then ``BackendKind/posix``; `libaio` or `posix` force that backend, and creating it fails
    /// with the probe's reason when it cannot work here (never a silent fallback). Surrounding
    /// spaces are ignored and letter case does not matter; any other value is an error naming the
    /// value and the valid ones.
    public static let environmentVariable = "ASYNC_FSYNC_BACKEND"

    /// The environment variable that switches the inline path for memory file systems:
    /// `ASYNC_FSYNC_INLINE`.
    ///
    /// Values: `on` (the default, also when unset or empty) or `off`; `1`/`0`, `true`/`false` and
    /// `yes`/`no` are accepted too, surrounding spaces are ignored and letter case does not
    /// matter. Any other value is an error. With `on`, backends made by ``makeBackend()`` sync a
    /// descriptor on tmpfs or ramfs with a direct `fsync(2)` / `fdatasync(2)`: such a file system
    /// has no backing store and its fsync returns at once. See
    /// ``LibaioBackend/init(capacity:stickyFailures:inlineMemoryFileSystems:)``.
    public static let inlineEnvironmentVariable = "ASYNC_FSYNC_INLINE"

    /// Creates the backend chosen by `ASYNC_FSYNC_BACKEND` (and `ASYNC_FSYNC_INLINE`) in this
    /// process's environment.
    ///
    /// With `auto`, each backend is probed in order (``BackendKind/libaio``, then
    /// ``BackendKind/posix``) with a real sync in the temporary directory, and the first whose
    /// mechanism works is made. The next one is tried only when the probe's failure means "not
    /// supported here": `ENOSYS`, `EPERM` or `EAGAIN` (aio-max-nr used up) at setup, `ENOSYS`,
    /// `EPERM` or `EINVAL` at the submission of a sync of a regular file. A sync that was accepted
    /// and then failed is the file system's answer, not the backend's: it is no reason to fall
    /// back. Probe results are cached per file system, so this is cheap after the first call.
    ///
    /// - Returns: A ready backend; call ``AsyncSyncBackend/shutdown()`` when done with it. Its
    ///   ``AsyncSyncBackend/kind`` says which one was chosen, and its `description` how it is set up.
    /// - Throws: ``AsyncSyncError`` with code ``AsyncSyncError/Code/invalidConfiguration`` for an
    ///   unknown value, or ``AsyncSyncError/Code/backendUnavailable`` when the forced backend (or,
    ///   with `auto`, every backend) cannot work here; the message carries the probes' reasons.
    public static func makeBackend() throws -> any AsyncSyncBackend {
        var environment: [String: String] = [:]
        environment[environmentVariable] = system_getenv(environmentVariable)
        environment[inlineEnvironmentVariable] = system_getenv(inlineEnvironmentVariable)
        return try makeBackend(environment: environment)
    }

    /// Creates the backend chosen by `environment[ASYNC_FSYNC_BACKEND]` and
    /// `environment[ASYNC_FSYNC_INLINE]`.
    ///
    /// - Parameter environment: The environment to read ``environmentVariable`` and
    ///   ``inlineEnvironmentVariable`` from.
    /// - Returns: A ready backend.
    /// - Throws: See ``makeBackend()``.
    public static func makeBackend(environment: [String: String]) throws -> any AsyncSyncBackend {
        let choice = try BackendChoice(environmentValue: environment[environmentVariable])
        let inline = try inlineSetting(environment[inlineEnvironmentVariable])
        return try makeBackend(choice, prober: .live(inlineMemoryFileSystems: inline))
    }

    static func makeBackend(_ choice: BackendChoice, prober: Prober) throws -> any AsyncSyncBackend {
        let directory = defaultProbeDirectory
        switch choice {
        case .forced(let kind):
            let probe = prober.probe(kind, in: directory)
            guard probe.isSupported else { throw forcedUnavailable(kind, probe) }
            do {
                return try create(kind, prober: prober)
            } catch {
                throw forcedUnavailable(kind, error)
            }
        case .auto:
            var reasons: [String] = []
            for kind in BackendKind.allCases {
                let probe = prober.probe(kind, in: directory)
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
                    switch Result(catching: { () throws(AsyncSyncError) in try create(kind, prober: prober) }) {
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

    static func create(_ kind: BackendKind, prober: Prober) throws(AsyncSyncError) -> any AsyncSyncBackend {
        let inline = prober.inlineMemoryFileSystems
        switch kind {
        case .libaio: return try LibaioBackend(capacity: 256, inlineMemoryFileSystems: inline, system: prober.system)
        case .posix: return try PosixAIOBackend(capacity: 256, inlineMemoryFileSystems: inline, system: prober.system)
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

    /// Probes every backend with a real sync of a scratch file in the temporary directory
    /// (`$TMPDIR`, else `/tmp`).
    ///
    /// Results are cached per file system (its `st_dev` and `statfs(2)` type) for the life of the
    /// process; a cached result says so (``BackendProbe/isCached``) and keeps the duration measured
    /// when it ran. Failures at setup (seccomp, aio-max-nr) describe the host rather than the file
    /// system and are probed again each time.
    ///
    /// - Returns: One ``BackendProbe`` per ``BackendKind``, in the order of `BackendKind.allCases`.
    public static func probe() -> [BackendProbe] {
        probe(directory: defaultProbeDirectory)
    }

    /// Probes every backend with a real sync of a scratch file in `directory`, so that the file
    /// system the data will live on is the one asked.
    ///
    /// - Parameter directory: A writable directory; the scratch file is removed at once. When no
    ///   file can be made there, the mechanism is probed on a memfd and the report says so.
    /// - Returns: One ``BackendProbe`` per ``BackendKind``.
    public static func probe(directory: FilePath) -> [BackendProbe] {
        let inline = (try? inlineSetting(system_getenv(inlineEnvironmentVariable))) ?? true
        let prober = Prober.live(inlineMemoryFileSystems: inline)
        return BackendKind.allCases.map { prober.probe($0, in: directory) }
    }

    static var defaultProbeDirectory: FilePath {
        if let tmp = system_getenv("TMPDIR"), !tmp.isEmpty { return FilePath(tmp) }
        return "/tmp"
    }
}

/// The parsed value of `ASYNC_FSYNC_BACKEND`.
enum BackendChoice: Equatable {
    case auto
    case forced(BackendKind)

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
    fileprivate var trimmingSpaces: String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else { return "" }
        return String(self[first...last])
    }
}
