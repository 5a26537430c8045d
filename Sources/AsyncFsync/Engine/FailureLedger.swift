import Synchronization
import SystemPackage

/// The durability failures a backend has seen, per file, each with the generation at which it was
/// recorded.
///
/// Two rules rest on it:
/// - **In flight** (always): a request succeeds only if no durability failure of its file was
///   recorded between its arrival and the moment it is resumed. The kernel reports a failed
///   writeback once per open file description, so of two syncs of a file in flight together one
///   may get `EIO` and the other `0` over the same lost data. A request stamps
///   ``stamp()`` when it arrives; where it is resumed with success, ``verdict(arrival:descriptor:)``
///   turns the success into ``AsyncSyncError/Code/concurrentFailure`` when a failure of its file
///   was recorded since. Every path of a backend (kernel AIO, the POSIX fallback, the inline path)
///   records into and checks against the same ledger.
/// - **Sticky** (`sticky: true`, the default): a request that *arrives* after a durability failure
///   of its file is refused at once with ``AsyncSyncError/Code/earlierFailure`` until
///   ``clear(_:)``.
///
/// The hot path costs two relaxed-acquire atomic loads; a file is identified (`statx(2)`) only
/// when some failure exists (sticky check) or the generation moved during the request's flight.
///
/// A failure whose file cannot be identified (`statx(2)` itself failed) is recorded against the
/// descriptor number and fails closed: every request in flight at that moment fails, and, when
/// sticky, every later request on that descriptor number is refused until cleared.
final class FailureLedger: Sendable {
    enum Key: Hashable, Sendable {
        case file(FileIdentity)
        /// A failure of a file `statx(2)` could not identify.
        case unidentified(CInt)
    }

    private struct State {
        /// Failures that refuse new requests (sticky rule): the errno of the first failure since
        /// the last clear.
        var refusing: [Key: Errno] = [:]
        /// Every failure ever recorded, with the generation and errno of the latest: what the
        /// in-flight rule checks. Clearing does not remove it, so that a request still in flight
        /// from before the failure is not acknowledged after a clear. One entry per failed file.
        var recorded: [Key: (errno: Errno, generation: UInt64)] = [:]
    }

    let sticky: Bool
    let system: SystemCalls
    private let generation = Atomic<UInt64>(0)
    /// `state.refusing.count`, readable without the lock.
    private let refusingCount = Atomic<Int>(0)
    private let state = Locked(State())
    /// Called after each record, with the key and the new generation (tests).
    private let observer: (@Sendable (Key, UInt64) -> Void)?

    init(sticky: Bool, system: SystemCalls, observer: (@Sendable (Key, UInt64) -> Void)? = nil) {
        self.sticky = sticky
        self.system = system
        self.observer = observer
    }

    /// The current generation: what a request arriving now compares with when it is resumed.
    @inline(__always)
    func stamp() -> UInt64 {
        generation.load(ordering: .acquiring)
    }

    /// Whether a request for `descriptor` that arrives now must be refused (sticky rule), with the
    /// errno of the earlier failure. A descriptor that cannot be identified is not refused here: it
    /// goes on and gets its own error from the system.
    @inline(__always)
    func refusal(for descriptor: FileDescriptor) -> Errno? {
        guard sticky, refusingCount.load(ordering: .acquiring) > 0 else { return nil }
        let identity = Self.identify(descriptor, system: system)
        return state.withLock { state in
            if let identity, let errno = state.refusing[.file(identity)] { return errno }
            return state.refusing[.unidentified(descriptor.rawValue)]
        }
    }

    /// Records a durability failure of the file `descriptor` refers to. Call it before the caller
    /// that got the failure (or anyone else in the same batch of completions) is resumed, so that
    /// everything resumed afterwards sees it.
    func record(_ descriptor: FileDescriptor, errno: Errno) {
        let key: Key = switch system.fileIdentity(descriptor.rawValue) {
        case .success(let identity): .file(identity)
        case .failure: .unidentified(descriptor.rawValue)
        }
        let recorded = state.withLock { state -> UInt64 in
            let next = generation.load(ordering: .relaxed) &+ 1
            state.recorded[key] = (errno, next)
            if sticky, state.refusing[key] == nil {
                state.refusing[key] = errno
                refusingCount.store(state.refusing.count, ordering: .releasing)
            }
            generation.store(next, ordering: .releasing)
            return next
        }
        observer?(key, recorded)
    }

    /// Whether a failure was recorded since `arrival`; only then can a verdict be other than nil.
    @inline(__always)
    func moved(since arrival: UInt64) -> Bool {
        generation.load(ordering: .acquiring) != arrival
    }

    /// The errno of a durability failure of `descriptor`'s file recorded after `arrival`, if any:
    /// a request stamped `arrival` that the system reported successful must fail with it.
    @inline(__always)
    func verdict(arrival: UInt64, descriptor: FileDescriptor) -> Errno? {
        guard moved(since: arrival) else { return nil }
        return verdict(arrival: arrival, identity: Self.identify(descriptor, system: system))
    }

    /// The verdict for a file already identified (`nil`: it could not be, so any failure recorded
    /// since `arrival` counts), so that a batch of requests on one descriptor costs one `statx(2)`.
    func verdict(arrival: UInt64, identity: FileIdentity?) -> Errno? {
        state.withLock { state in
            for (key, entry) in state.recorded where entry.generation > arrival {
                switch key {
                case .unidentified: return entry.errno  // it may have been this file: fail closed
                case .file(let file) where identity == nil || file == identity: return entry.errno
                case .file: continue
                }
            }
            return nil
        }
    }

    static func identify(_ descriptor: FileDescriptor, system: SystemCalls) -> FileIdentity? {
        try? system.fileIdentity(descriptor.rawValue).get()
    }

    /// Stops refusing requests for `descriptor`'s file (and its number, when a failure could not
    /// be identified); returns whether they were refused. Requests in flight since before the
    /// failure still fail.
    func clear(_ descriptor: FileDescriptor) throws(Errno) -> Bool {
        let identity = try system.fileIdentity(descriptor.rawValue).get()
        return state.withLock { state in
            let file = state.refusing.removeValue(forKey: .file(identity)) != nil
            let number = state.refusing.removeValue(forKey: .unidentified(descriptor.rawValue)) != nil
            refusingCount.store(state.refusing.count, ordering: .releasing)
            return file || number
        }
    }

    /// Files whose new requests are refused (tests).
    var refusedFiles: Int { refusingCount.load(ordering: .acquiring) }
}

/// A backend whose durability failures are kept in a ``FailureLedger``, so that a layer above it
/// (``GroupCommit``) can apply the in-flight rule from its own requests' arrival.
protocol FailureLedgerProviding {
    var failureLedger: FailureLedger? { get }
}
