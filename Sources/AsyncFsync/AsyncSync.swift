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

    /// Creates the backend chosen by `ASYNC_FSYNC_BACKEND` in this process's environment.
    ///
    /// - Returns: A ready backend; call ``AsyncSyncBackend/shutdown()`` when done with it.
    /// - Throws: ``AsyncSyncError`` with code ``AsyncSyncError/Code/invalidConfiguration`` for an
    ///   unknown value, or ``AsyncSyncError/Code/backendUnavailable`` when the forced backend (or,
    ///   with `auto`, every backend) cannot work here; the message carries the probes' reasons.
    public static func makeBackend() throws -> any AsyncSyncBackend {
        var environment: [String: String] = [:]
        environment[environmentVariable] = system_getenv(environmentVariable)
        return try makeBackend(environment: environment)
    }

    /// Creates the backend chosen by `environment[ASYNC_FSYNC_BACKEND]`.
    ///
    /// - Parameter environment: The environment to read ``environmentVariable`` from.
    /// - Returns: A ready backend.
    /// - Throws: See ``makeBackend()``.
    public static func makeBackend(environment: [String: String]) throws -> any AsyncSyncBackend {
        let choice = try BackendChoice(environmentValue: environment[environmentVariable])
        return try makeBackend(choice, prober: Prober())
    }

    static func makeBackend(_ choice: BackendChoice, prober: Prober) throws -> any AsyncSyncBackend {
        let directory = defaultProbeDirectory
        switch choice {
        case .forced(let kind):
            let probe = prober.probe(kind, in: directory)
            guard probe.isUsable else { throw forcedUnavailable(kind, probe) }
            return try create(kind, system: prober.system)
        case .auto:
            var reasons: [String] = []
            for kind in BackendKind.allCases {
                let probe = prober.probe(kind, in: directory)
                guard probe.isUsable else {
                    reasons.append(probe.description)
                    continue
                }
                do {
                    return try create(kind, system: prober.system)
                } catch {
                    reasons.append("\(kind): \(error)")
                }
            }
            throw AsyncSyncError(
                code: .backendUnavailable, errno: nil, operation: .setup, step: .setup, backend: nil,
                message: "no backend works here: " + reasons.joined(separator: "; "))
        }
    }

    private static func forcedUnavailable(_ kind: BackendKind, _ probe: BackendProbe) -> AsyncSyncError {
        let failure = probe.failure
        return AsyncSyncError(
            code: .backendUnavailable, errno: failure?.errno, operation: .setup, step: failure?.step ?? .setup,
            backend: kind, systemCall: failure?.systemCall,
            message: "\(environmentVariable)=\(kind.rawValue) forces a backend that cannot work here: \(probe)")
    }

    static func create(_ kind: BackendKind, system: SystemCalls) throws(AsyncSyncError) -> any AsyncSyncBackend {
        switch kind {
        case .libaio: try LibaioBackend(capacity: 256, system: system)
        case .posix: try PosixAIOBackend(capacity: 256, system: system)
        }
    }

    /// Probes every backend with a real sync of a scratch file in the temporary directory
    /// (`$TMPDIR`, else `/tmp`).
    ///
    /// - Returns: One ``BackendProbe`` per ``BackendKind``, in the order of `BackendKind.allCases`.
    public static func probe() -> [BackendProbe] {
        probe(directory: defaultProbeDirectory)
    }

    /// Probes every backend with a real sync of a scratch file in `directory`, so that the file
    /// system the data will live on is the one asked.
    ///
    /// - Parameter directory: A writable directory; the scratch file is removed at once.
    /// - Returns: One ``BackendProbe`` per ``BackendKind``.
    public static func probe(directory: FilePath) -> [BackendProbe] {
        let prober = Prober()
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
