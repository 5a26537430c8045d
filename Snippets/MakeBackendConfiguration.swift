// A backend made from a configuration: the environment's, checked at start-up, adjusted in code.
// snippet.hide
// Compiled by `swift build` (a snippet); nothing here runs in CI.
import AsyncFsync

func openConfiguredStore() async throws {
    // snippet.show
    var configuration = try AsyncSync.Configuration(environment: nil)  // invalidConfiguration on a typo
    configuration.probeDirectory = "/var/lib/mystore"
    configuration.capacity = 64
    let backend = try await AsyncSync.makeBackend(configuration)
    // snippet.hide
    await backend.shutdown()
}
