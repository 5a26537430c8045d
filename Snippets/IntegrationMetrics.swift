// An observer recording swift-metrics (trait Metrics, product AsyncFsyncMetrics).
// snippet.hide
// Compiled by `swift build --traits Metrics` (a snippet); nothing here runs in CI.
#if Metrics
import AsyncFsync
import CoreMetrics

let myMetricsFactory = NOOPMetricsHandler.instance
// snippet.show
import AsyncFsyncMetrics
import CoreMetrics                                 // or Metrics, which re-exports it

MetricsSystem.bootstrap(myMetricsFactory)
AsyncSyncMetrics.bootstrap()                      // labels asyncfsync_*; or bootstrap(labelPrefix: "db_sync")
// or, without the global metrics system:
AsyncSync.addObserver(AsyncSyncMetrics(labelPrefix: "asyncfsync", factory: myMetricsFactory))
// snippet.hide
#endif
