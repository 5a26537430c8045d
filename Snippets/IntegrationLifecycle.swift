// A swift-service-lifecycle Service that owns a backend and drains it at graceful shutdown
// (trait ServiceLifecycle, product AsyncFsyncLifecycle).
// snippet.hide
// Compiled by `swift build --traits ServiceLifecycle` (a snippet); nothing here runs in CI.
#if ServiceLifecycle
import AsyncFsync
import Logging

/// Stands for the application's store: a Service that syncs through the backend it is given.
struct Database: Service {
    let backend: any AsyncSyncBackend
    init(syncingWith backend: any AsyncSyncBackend) { self.backend = backend }
    func run() async throws { try await gracefulShutdown() }
}

let logger = Logger(label: "my-server")
// snippet.show
import AsyncFsyncLifecycle
import ServiceLifecycle

let syncService = try await AsyncSyncService(directory: "/var/lib/mydb")   // AsyncSync.makeBackend(directory:), async form
// or: AsyncSyncService(backend: GroupCommit(wrapping: try await AsyncSync.makeBackend(directory: dataDirectory)))
let database = Database(syncingWith: syncService.backend)

let group = ServiceGroup(
    services: [syncService, database],   // shut down in reverse order: the database first, then the syncs drain
    gracefulShutdownSignals: [.sigterm],
    logger: logger
)
try await group.run()
// snippet.hide
#endif
