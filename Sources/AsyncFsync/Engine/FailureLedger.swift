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

    /// What a test observer is told: every failure recorded, every success acknowledged.
    enum Event: Sendable {
        case recorded(Key, generation: UInt64)
        /// A success given to a request on `descriptor` stamped `arrival`, judged at `generation`
        /// (its file's identity, when the judgement needed it).
        case acknowledged(descriptor: CInt, FileIdentity?, arrival: UInt64, generation: UInt64)
    }

    let kind: BackendKind
    let sticky: Bool
    let system: SystemCalls
    private let generation = Atomic<UInt64>(0)
    /// `state.refusing.count`, readable without the lock.
    private let refusingCount = Atomic<Int>(0)
    private let state = Locked(State())
    /// Told of each record and acknowledgement (tests).
    private let observer: (@Sendable (Event) -> Void)?

    init(kind: BackendKind, sticky: Bool, system: SystemCalls, observer: (@Sendable (Event) -> Void)? = nil) {
        self.kind = kind
        self.sticky = sticky
        self.system = system
        self.observer = observer
    }

    /// The current generation: what a request arriving now compares with when it is resumed.
    @inline(__always)
    func stamp() -> UInt64 {
        generation.load(ordering: .acquiring)
    }

    enum Refusal {
        /// An earlier durability failure of the file, with its errno.
        case earlierFailure(Errno)
        /// Some file has failed and `statx(2)` cannot say whether this is it: the request may go
        /// on, stamped 0, so that its success is judged against every failure ever recorded once
        /// its file can be identified (or against any failure, if it still cannot): fail closed.
        case unverified
    }

    /// Whether a request for `descriptor` that arrives now must be refused (sticky rule). A closed
    /// descriptor (`EBADF` from `statx(2)`) goes on and gets its own error from the system.
    @inline(__always)
    func refusal(for descriptor: FileDescriptor) -> Refusal? {
        guard sticky, refusingCount.load(ordering: .acquiring) > 0 else { return nil }
        // A failure recorded against this descriptor number (its file could not be identified).
        if let errno = state.withLock({ $0.refusing[.unidentified(descriptor.rawValue)] }) { return .earlierFailure(errno) }
        switch system.fileIdentity(descriptor.rawValue) {
        case .success(let identity):
            return state.withLock { $0.refusing[.file(identity)] }.map { .earlierFailure($0) }
        case .failure(.badFileDescriptor):
            return nil
        case .failure:
            return .unverified
        }
    }

    /// The arrival stamp of a request, after the sticky check: the error to refuse it with, or the
    /// stamp (`stamp`, taken before the check; 0 when its file could not be identified).
    @inline(__always)
    func admit(_ descriptor: FileDescriptor, stamp: UInt64, mode: SyncMode, backend: BackendKind) -> Result<UInt64, AsyncSyncError> {
        switch refusal(for: descriptor) {
        case nil: .success(stamp)
        case .unverified: .success(0)
        case .earlierFailure(let errno):
            .failure(AsyncSyncError.earlierFailure(mode, errno: errno, backend: backend, descriptor: descriptor))
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
        observer?(.recorded(key, generation: recorded))
        Observers.forEach { $0.durabilityFailureRecorded(backend: kind, descriptor: descriptor, errno: errno, sticky: sticky) }
    }

    /// Judges a success the system reported for a request stamped `arrival`: the errno of a
    /// durability failure of its file recorded since, if any (then the request must fail with
    /// ``AsyncSyncError/Code/concurrentFailure``). `identity` is asked for only when some failure
    /// was recorded since `arrival` (nil: the file cannot be identified, so any failure counts), so
    /// that a batch of requests on one descriptor costs at most one `statx(2)`.
    @inline(__always)
    func judgeSuccess(arrival: UInt64, descriptor: FileDescriptor, identity: () -> FileIdentity?) -> Errno? {
        let now = generation.load(ordering: .acquiring)
        guard now != arrival else {
            observer?(.acknowledged(descriptor: descriptor.rawValue, nil, arrival: arrival, generation: now))
            return nil
        }
        let file = identity()
        let (errno, judged) = state.withLock { state -> (Errno?, UInt64) in
            let judged = generation.load(ordering: .relaxed)
            for (key, entry) in state.recorded where entry.generation > arrival {
                switch key {
                case .unidentified: return (entry.errno, judged)  // it may have been this file: fail closed
                case .file(let recorded) where file == nil || recorded == file: return (entry.errno, judged)
                case .file: continue
                }
            }
            return (nil, judged)
        }
        if errno == nil { observer?(.acknowledged(descriptor: descriptor.rawValue, file, arrival: arrival, generation: judged)) }
        return errno
    }

    /// ``judgeSuccess(arrival:identity:)`` for one descriptor.
    @inline(__always)
    func judgeSuccess(arrival: UInt64, descriptor: FileDescriptor) -> Errno? {
        judgeSuccess(arrival: arrival, descriptor: descriptor) { Self.identify(descriptor, system: system) }
    }

    static func identify(_ descriptor: FileDescriptor, system: SystemCalls) -> FileIdentity? {
        try? system.fileIdentity(descriptor.rawValue).get()
    }

    /// Stops refusing requests for `descriptor`'s file (and its number, when a failure could not
    /// be identified); returns whether they were refused. Requests in flight since before the
    /// failure still fail.
    func clear(_ descriptor: FileDescriptor) throws(Errno) -> Bool {
        let identity = try system.fileIdentity(descriptor.rawValue).get()
        let cleared = state.withLock { state in
            let file = state.refusing.removeValue(forKey: .file(identity)) != nil
            let number = state.refusing.removeValue(forKey: .unidentified(descriptor.rawValue)) != nil
            refusingCount.store(state.refusing.count, ordering: .releasing)
            return file || number
        }
        if cleared { Observers.forEach { $0.durabilityFailureCleared(backend: kind, descriptor: descriptor) } }
        return cleared
    }

    /// Files whose new requests are refused (tests).
    var refusedFiles: Int { refusingCount.load(ordering: .acquiring) }
}

/// A backend whose durability failures are kept in a ``FailureLedger``, so that a layer above it
/// (``GroupCommit``) can apply the in-flight rule from its own requests' arrival.
protocol FailureLedgerProviding: Sendable {
    var failureLedger: FailureLedger? { get }
}
