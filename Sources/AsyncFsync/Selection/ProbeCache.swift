/// Probe results per file system and backend, so that a process pays for a probe once per file
/// system.
///
/// A file system is identified by the `st_dev` of the probed directory and its `statfs(2)` type:
/// a device number of an unmounted file system can be given to another one, and the type makes a
/// stale entry for a different kind of file system impossible. Results that describe the process
/// or the host rather than the file system (a failure at setup: `io_setup(2)`, the scratch file)
/// are not kept: they are cheap to find out again and may change (aio-max-nr frees up).
final class ProbeCache: Sendable {
    struct Key: Hashable, Sendable {
        var device: UInt64
        var fileSystemType: Int
        var kind: BackendKind
    }

    /// The cache behind ``AsyncSync/probe(directory:)`` and ``AsyncSync/makeBackend(environment:directory:)``.
    static let shared = ProbeCache()

    private let entries = Locked<[Key: BackendProbe]>([:])

    func lookup(_ key: Key) -> BackendProbe? {
        entries.withLock { $0[key] }
    }

    func store(_ probe: BackendProbe, for key: Key) {
        entries.withLock { $0[key] = probe }
    }

    func removeAll() {
        entries.withLock { $0.removeAll() }
    }

    var count: Int {
        entries.withLock { $0.count }
    }
}
