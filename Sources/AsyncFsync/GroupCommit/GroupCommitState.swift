import SystemPackage

/// The state of one ``GroupCommit``: per file, the batch whose sync is led now and the batch that
/// waits for it; and the group's life.
///
/// A plain value, like ``EngineState``: each event is one method that changes it and returns what
/// the caller must do outside the lock (resume these continuations, lead this batch, let these
/// `shutdown()` callers go on). It makes no system call, touches no other object and never
/// resumes a continuation itself, so every rule below is tested without threads
/// (`GroupCommitStateTests`) and explored exhaustively (`ModelCheckTests`).
///
/// The rules:
/// - **Start after arrival.** Per file at most one batch is led at a time. A request that
///   arrives while its file's batch syncs joins the file's *next* batch, whose sync starts only
///   after the running one ended; while the led batch is still gathering (the leader waits out
///   the group's delay, its sync has not started) a request joins that batch. So no request is
///   ever given the result of a sync that started before it arrived.
/// - **One arrival per request.** A request enters the machine once, under one lock, with its
///   arrival stamp and its continuation, and stays until it ends: there is no retry that could
///   take a second, later stamp (defect #16.1: a retry stamped after a failure was recorded let
///   a success over the lost data through the in-flight rule).
/// - **Leader hand-off.** When a batch's sync ended, its members are handed their result, and
///   the first member of the next batch becomes its leader: its continuation is resumed with
///   the order to lead, and the batch is led from then on by that task alone.
/// - **Cancellation** removes a request only while its batch's sync has not started (the next
///   batch, or a gathering batch it joined); a batch's leader is never removed by cancellation
///   (its task runs the sync that the others wait for).
/// - **Drain.** After ``beginShutdown(waiter:)`` new requests are refused; the `shutdown()`
///   callers go on when the last led batch has ended (its hand-off found nothing queued).
struct GroupCommitState<Continuation, ShutdownWaiter> {
    /// A request in a batch.
    struct Member {
        var id: UInt64
        var descriptor: FileDescriptor
        var mode: SyncMode
        /// The wrapped backend's ledger stamp at arrival (the in-flight rule), when it has a
        /// ledger; taken once, before the request entered the machine.
        var arrival: UInt64?
        /// `nil` for the batch's leader: its own task runs the sync and takes its own result.
        var continuation: Continuation?
    }

    struct FileEntry {
        /// The batch being led: its leader's member is the one without a continuation, until it
        /// has been dropped (its descriptor could not sync).
        var batch: [Member]
        /// The led batch's sync may have started: nobody joins it or leaves it any more.
        var syncing: Bool
        /// Requests that arrived while the led batch synced: the next batch.
        var next: [Member]
    }

    enum Lifecycle: Equatable {
        case accepting
        /// `shutdown()` was called: new requests are refused; led batches run to their end.
        case draining
    }

    /// Whether a led batch first gathers (the group's delay) before its sync starts.
    let gathers: Bool
    private(set) var lifecycle = Lifecycle.accepting
    private(set) var files: [FileIdentity: FileEntry] = [:]
    private var shutdownWaiters: [ShutdownWaiter] = []

    init(gathers: Bool) {
        self.gathers = gathers
    }

    // MARK: Arrival

    enum Arrival: Equatable {
        /// The file was idle: the caller leads a new batch of which it is the only member so far
        /// (``startSync(of:)`` after its delay, if the group gathers, then ``syncTarget(of:)``).
        case lead
        /// Queued; its continuation is resumed later with a result, or the order to lead.
        case queued
        /// Refused: the group is shutting down.
        case shutDown
        /// Refused: its task was cancelled before it entered the machine.
        case cancelled
    }

    /// A request for `file` arrives, with its continuation (kept unless the answer is ``Arrival/queued``;
    /// for any other answer the caller resumes it at once). `isCancelled` is read under the same
    /// lock as the cancellation handler's ``cancel(id:file:)``, which may have run before the
    /// request was queued and found nothing.
    mutating func arrive(_ member: Member, file: FileIdentity, isCancelled: Bool) -> Arrival {
        guard lifecycle == .accepting else { return .shutDown }
        if isCancelled { return .cancelled }
        guard var entry = files[file] else {
            var leader = member
            leader.continuation = nil
            files[file] = FileEntry(batch: [leader], syncing: !gathers, next: [])
            return .lead
        }
        if entry.syncing {
            entry.next.append(member)
        } else {
            entry.batch.append(member)
        }
        files[file] = entry
        return .queued
    }

    // MARK: Leading a batch (the leader's task)

    /// The leader's gathering ended (the group's delay): the batch's sync starts now, with every
    /// request that joined meanwhile.
    mutating func startSync(of file: FileIdentity) {
        files[file]?.syncing = true
    }

    /// What the led batch syncs next: its first member's descriptor, in the strongest mode any
    /// member asked for; `nil` when no member is left (each descriptor could not sync).
    /// `alone`: the member is the leader itself and the batch has nobody else, so the sync may
    /// run in the leader's own task (cancelling it concerns nobody else).
    func syncTarget(of file: FileIdentity) -> (member: Member, mode: SyncMode, alone: Bool)? {
        guard let entry = files[file], let first = entry.batch.first else { return nil }
        precondition(entry.syncing, "a batch's sync starts only after its gathering")
        let mode: SyncMode = entry.batch.contains { $0.mode == .fsync } ? .fsync : .fdatasync
        return (first, mode, entry.batch.count == 1 && first.continuation == nil)
    }

    /// The member `id` of the led batch leaves it with an error of its own (its descriptor was
    /// closed and reused, or cannot sync: `EBADF`, `EINVAL`); the batch goes on through another
    /// member's descriptor. Returns the member, for the caller to give it its error.
    mutating func drop(id: UInt64, from file: FileIdentity) -> Member? {
        guard let index = files[file]?.batch.firstIndex(where: { $0.id == id }) else { return nil }
        return files[file]!.batch.remove(at: index)
    }

    /// What a batch's end asks for.
    struct SyncEnded {
        /// The members of the batch that ended, to be given its result (the leader's own has no
        /// continuation; its task takes its result itself).
        var members: [Member]
        /// The next batch's leader: resume it with the order to lead (its member in the machine no
        /// longer has a continuation).
        var nextLeader: Continuation?
        /// The group drained with this: let these `shutdown()` callers go on.
        var drained: [ShutdownWaiter]
    }

    /// The led batch's sync ended (or no member of it could sync). Its members leave; the next
    /// batch, if any, is led by its first member from now on; else the file is idle.
    mutating func syncEnded(of file: FileIdentity) -> SyncEnded {
        guard let entry = files[file] else { return SyncEnded(members: [], nextLeader: nil, drained: []) }
        var ended = SyncEnded(members: entry.batch, nextLeader: nil, drained: [])
        if entry.next.isEmpty {
            files[file] = nil
            if lifecycle == .draining, files.isEmpty {
                ended.drained = shutdownWaiters
                shutdownWaiters = []
            }
        } else {
            var batch = entry.next
            ended.nextLeader = batch[0].continuation
            batch[0].continuation = nil
            files[file] = FileEntry(batch: batch, syncing: !gathers, next: [])
        }
        return ended
    }

    // MARK: Cancellation

    /// Removes request `id` of `file` if its batch's sync has not started (the next batch, or a
    /// gathering batch it joined and does not lead). Returns its continuation, to be resumed with
    /// `CancellationError`; `nil` when it is not removable (or already gone).
    mutating func cancel(id: UInt64, file: FileIdentity) -> Continuation? {
        guard var entry = files[file] else { return nil }
        if let index = entry.next.firstIndex(where: { $0.id == id }) {
            let member = entry.next.remove(at: index)
            files[file] = entry
            return member.continuation
        }
        if !entry.syncing, let index = entry.batch.firstIndex(where: { $0.id == id && $0.continuation != nil }) {
            let member = entry.batch.remove(at: index)
            files[file] = entry
            return member.continuation
        }
        return nil
    }

    // MARK: Shutdown

    /// Refuses new requests from now on. Returns `waiter` back when nothing is led (the caller
    /// goes on at once); otherwise keeps it until the last led batch ends.
    mutating func beginShutdown(waiter: ShutdownWaiter?) -> ShutdownWaiter? {
        lifecycle = .draining
        guard !files.isEmpty else { return waiter }
        if let waiter { shutdownWaiters.append(waiter) }
        return nil
    }

    // MARK: Introspection

    /// No batch is led.
    var isIdle: Bool { files.isEmpty }

    /// Requests waiting for a batch's sync to start (the next batches, and the members of
    /// gathering batches other than their leaders).
    var queuedCount: Int {
        files.values.reduce(0) { count, entry in
            count + entry.next.count + (entry.syncing ? 0 : entry.batch.count { $0.continuation != nil })
        }
    }
}

// The model checker (`ModelCheckTests`) keeps a set of the states it has explored.
extension GroupCommitState.Member: Equatable, Hashable where Continuation: Hashable, ShutdownWaiter: Hashable {}
extension GroupCommitState.FileEntry: Equatable, Hashable where Continuation: Hashable, ShutdownWaiter: Hashable {}
extension GroupCommitState: Equatable, Hashable where Continuation: Hashable, ShutdownWaiter: Hashable {}
