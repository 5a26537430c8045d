import SystemPackage

extension AsyncSync {
    /// How ``AsyncSync/makeBackend(_:)`` chooses and sets up a backend.
    ///
    /// Fill it in code, or from the environment with ``init(environment:)``, which is also the way
    /// to check `ASYNC_FSYNC_BACKEND` at start-up rather than at the first sync:
    ///
    /// ```swift
    /// let configuration = try AsyncSync.Configuration(environment: nil)  // throws on a typo
    /// let backend = try await AsyncSync.makeBackend(configuration)
    /// ```
    ///
    /// ``AsyncSync/shared`` is made from the environment's configuration.
    public struct Configuration: Sendable, Hashable, CustomStringConvertible {
        /// The backend to make, or `nil` (the default) for `auto`: probe ``BackendKind/libaio`` then
        /// ``BackendKind/posix`` on Linux with glibc (``BackendKind/portable`` alone elsewhere) and
        /// make the first whose mechanism works here. A kind given here is made or the creation
        /// fails with the probe's reason: never a silent fallback. On Linux ``BackendKind/portable``
        /// is made only when given here (or by `ASYNC_FSYNC_BACKEND=portable`).
        public var backend: BackendKind?
        /// The number of syncs in the kernel at once (the size of the AIO context); more wait in
        /// order. Within ``capacityRange``. The default is 256. The portable backend has no AIO
        /// context: it runs ``PortableBackend/defaultThreads`` threads whatever the capacity (make
        /// a ``PortableBackend`` directly for another number).
        public var capacity: Int
        /// Whether a durability failure refuses the file's later syncs until
        /// ``AsyncSyncBackend/clearFailure(of:)`` (the default, `true`). See
        /// ``LibaioBackend/init(capacity:stickyFailures:inlineMemoryFileSystems:)``.
        public var stickyFailures: Bool
        /// Whether files on tmpfs or ramfs are synced with a direct `fsync(2)` on the caller's
        /// thread (the default, `true`): such a file system has no backing store.
        public var inlineMemoryFileSystems: Bool
        /// A directory on the file system the data will live on, where the probe makes and removes
        /// a scratch file; `nil` (the default) probes the temporary directory (`$TMPDIR`, else `/tmp`).
        public var probeDirectory: FilePath?

        /// The capacities a configuration accepts: 1 to 65 536, the host's default
        /// `/proc/sys/fs/aio-max-nr` (a larger AIO context could never be set up with it).
        public static let capacityRange: ClosedRange<Int> = 1...65_536

        /// The environment variable that sets ``capacity``: `ASYNC_FSYNC_CAPACITY`, a decimal
        /// number within ``capacityRange``; unset or empty keeps the default.
        public static let capacityEnvironmentVariable = "ASYNC_FSYNC_CAPACITY"

        /// A configuration given field by field; every default is the library's.
        ///
        /// - Parameters:
        ///   - backend: The kind to make, or `nil` for `auto`.
        ///   - capacity: Syncs in the kernel at once, within ``capacityRange``.
        ///   - stickyFailures: Whether a durability failure refuses later syncs of the file.
        ///   - inlineMemoryFileSystems: Whether tmpfs and ramfs files are synced inline.
        ///   - probeDirectory: Where to probe; `nil` for the temporary directory.
        public init(backend: BackendKind? = nil, capacity: Int = 256, stickyFailures: Bool = true,
                    inlineMemoryFileSystems: Bool = true, probeDirectory: FilePath? = nil) {
            self.backend = backend
            self.capacity = capacity
            self.stickyFailures = stickyFailures
            self.inlineMemoryFileSystems = inlineMemoryFileSystems
            self.probeDirectory = probeDirectory
        }

        /// The configuration the environment gives: ``AsyncSync/environmentVariable``
        /// (`ASYNC_FSYNC_BACKEND`), ``AsyncSync/inlineEnvironmentVariable`` (`ASYNC_FSYNC_INLINE`)
        /// and ``capacityEnvironmentVariable`` (`ASYNC_FSYNC_CAPACITY`); the other fields keep
        /// their defaults.
        ///
        /// Call it at start-up to learn of a bad value there rather than at the first sync.
        ///
        /// - Parameter environment: Where to read the variables; `nil` reads this process's
        ///   environment.
        /// - Throws: ``AsyncSyncError`` with code ``AsyncSyncError/Code/invalidConfiguration``
        ///   naming the variable, its value and the valid ones.
        public init(environment: [String: String]?) throws(AsyncSyncError) {
            let names = [AsyncSync.environmentVariable, AsyncSync.inlineEnvironmentVariable, Self.capacityEnvironmentVariable]
            let environment = environment ?? Dictionary(uniqueKeysWithValues: names.compactMap { name in
                system_getenv(name).map { (name, $0) }
            })
            self.init()
            if case .forced(let kind) = try BackendChoice(environmentValue: environment[AsyncSync.environmentVariable]) {
                backend = kind
            }
            inlineMemoryFileSystems = try AsyncSync.inlineSetting(environment[AsyncSync.inlineEnvironmentVariable])
            if let text = environment[Self.capacityEnvironmentVariable]?.trimmingSpaces, !text.isEmpty {
                guard let value = Int(text), Self.capacityRange.contains(value) else {
                    throw Self.invalid("\(Self.capacityEnvironmentVariable)=\"\(text)\" is not a capacity; "
                        + "valid values: \(Self.capacityRange.lowerBound)…\(Self.capacityRange.upperBound)")
                }
                capacity = value
            }
        }

        /// Checks the numeric fields.
        ///
        /// - Throws: ``AsyncSyncError`` with code ``AsyncSyncError/Code/invalidConfiguration``
        ///   naming the value and the valid range.
        public func validate() throws(AsyncSyncError) {
            guard Self.capacityRange.contains(capacity) else {
                throw Self.invalid("capacity \(capacity) is out of range; valid values: "
                    + "\(Self.capacityRange.lowerBound)…\(Self.capacityRange.upperBound)")
            }
        }

        /// For example `backend auto, capacity 256, sticky failures, inline tmpfs/ramfs, probing /tmp`.
        public var description: String {
            var parts = ["backend \(backend?.rawValue ?? "auto")", "capacity \(capacity)"]
            parts.append(stickyFailures ? "sticky failures" : "failures not sticky")
            parts.append(inlineMemoryFileSystems ? "inline tmpfs/ramfs" : "no inline path")
            parts.append("probing \(probeDirectory ?? AsyncSync.defaultProbeDirectory)")
            return parts.joined(separator: ", ")
        }

        var choice: BackendChoice { backend.map { .forced($0) } ?? .auto }

        private static func invalid(_ message: String) -> AsyncSyncError {
            AsyncSyncError(code: .invalidConfiguration, errno: nil, operation: .setup, step: .request, backend: nil,
                           message: message)
        }
    }
}
