/// The serial executor for an actor that syncs through a backend: the backend's own serial
/// executor when it has one, else an executor of the actor's own, as a default actor's.
///
/// An actor whose `unownedExecutor` is the backend's serial executor goes on right where its syncs
/// complete, without a hop; with a backend that has none (a backend of your own, a test double),
/// the same actor must still work. Keep one of these in the actor and return its
/// ``unownedExecutor``:
///
/// ```swift
/// actor Store {
///     let backend: any AsyncSyncBackend
///     let executor: ActorExecutor
///     nonisolated var unownedExecutor: UnownedSerialExecutor { executor.unownedExecutor }
///
///     init(backend: any AsyncSyncBackend) {
///         self.backend = backend
///         self.executor = ActorExecutor(preferring: backend)
///     }
/// }
/// ```
///
/// Without a backend executor it lends the actor the default executor of a private actor made for
/// it alone (an actor may share another actor's executor; here no other code uses it), so the
/// actor behaves as a default actor does. On a backend's executor, the actor's code runs on the
/// completion thread: it must not block (no blocking file I/O, no waiting on locks held across
/// I/O), or every completion waits for it.
public struct ActorExecutor: Sendable {
    /// A default actor whose executor is lent when the backend has none.
    private actor Lender {}

    private enum Source: Sendable {
        case backend(any SerialExecutor)
        case own(Lender)
    }
    private let source: Source

    /// The backend's ``AsyncSyncBackend/preferredSerialExecutor`` if it has one, else an executor
    /// of this value's own.
    ///
    /// - Parameter backend: The backend the actor syncs through. For ``AsyncSync/shared`` this
    ///   waits, the first time, until the shared backend is made.
    public init(preferring backend: any AsyncSyncBackend) {
        if let executor = backend.preferredSerialExecutor {
            source = .backend(executor)
        } else {
            source = .own(Lender())
        }
    }

    /// An executor of this value's own, like a default actor's, whatever the backend.
    public init() {
        source = .own(Lender())
    }

    /// The executor to return from the actor's `unownedExecutor`.
    public var unownedExecutor: UnownedSerialExecutor {
        switch source {
        case .backend(let executor): executor.asUnownedSerialExecutor()
        case .own(let lender): lender.unownedExecutor
        }
    }

    /// Whether the actor runs on the backend's executor (`false`: on an executor of its own).
    public var isBackendExecutor: Bool {
        if case .backend = source { return true }
        return false
    }
}
