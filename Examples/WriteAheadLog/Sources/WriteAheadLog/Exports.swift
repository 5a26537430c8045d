// A user of the log configures its durability with AsyncFsync's types (`AsyncSync.shared`,
// `AsyncSyncBackend`, `FilePath`), so they come with it.
@_exported import AsyncFsync
