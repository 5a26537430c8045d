// A backend of your own, probed on the file system where your data lives.
// snippet.hide
// Compiled by `swift build` (a snippet); nothing here runs in CI.
import AsyncFsync

func openStore() async throws {
    // snippet.show
    let backend = try await AsyncSync.makeBackend(directory: "/var/lib/mystore")
    // snippet.hide
    await backend.shutdown()
}
