// An observer logging the selection, fallbacks and durability failures with swift-log (trait
// Logging, product AsyncFsyncLogging).
// snippet.hide
// Compiled by `swift build --traits Logging` (a snippet); nothing here runs in CI.
#if Logging
let logger = Logger(label: "my-server")
// snippet.show
import AsyncFsyncLogging
import Logging

AsyncSyncLogging.bootstrap(logger: Logger(label: "asyncfsync"))
// every failed sync too, at a level of your choice (default: none):
AsyncSyncLogging.bootstrap(logger: logger, syncFailureLevel: .warning)
// and every failed write or durable write:
AsyncSyncLogging.bootstrap(logger: logger, syncFailureLevel: .warning, writeFailureLevel: .warning)
// snippet.hide
#endif
