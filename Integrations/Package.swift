// swift-tools-version: 6.1
// Optional integrations of swift-async-fsync with the Swift server ecosystem: a separate package,
// so that swift-service-lifecycle, swift-metrics, swift-log and swift-nio never become
// dependencies of the library product AsyncFsync (which depends on swift-system only).
import PackageDescription

let package = Package(
    name: "asyncfsync-integrations",
    products: [
        /// A `Service` owning a backend: shuts it down (draining accepted syncs) on graceful shutdown.
        .library(name: "AsyncFsyncLifecycle", targets: ["AsyncFsyncLifecycle"]),
        /// An `AsyncSyncObserver` that records swift-metrics timers, counters and recorders.
        .library(name: "AsyncFsyncMetrics", targets: ["AsyncFsyncMetrics"]),
        /// An `AsyncSyncObserver` that logs selection, fallbacks and durability failures with swift-log.
        .library(name: "AsyncFsyncLogging", targets: ["AsyncFsyncLogging"]),
        /// Syncing swift-nio file handles (`_NIOFileSystem`) through a backend.
        .library(name: "AsyncFsyncNIO", targets: ["AsyncFsyncNIO"]),
    ],
    dependencies: [
        .package(name: "swift-async-fsync", path: ".."),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        .target(
            name: "AsyncFsyncLifecycle",
            dependencies: [
                .product(name: "AsyncFsync", package: "swift-async-fsync"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "AsyncFsyncMetrics",
            dependencies: [
                .product(name: "AsyncFsync", package: "swift-async-fsync"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ]
        ),
        .target(
            name: "AsyncFsyncLogging",
            dependencies: [
                .product(name: "AsyncFsync", package: "swift-async-fsync"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "AsyncFsyncNIO",
            dependencies: [
                .product(name: "AsyncFsync", package: "swift-async-fsync"),
                .product(name: "_NIOFileSystem", package: "swift-nio"),
            ]
        ),
        // Prints what the metrics observer costs per sync event (no timed assertion anywhere).
        .executableTarget(
            name: "integrations-observer-cost",
            dependencies: [
                "AsyncFsyncMetrics",
                "AsyncFsyncLogging",
                .product(name: "AsyncFsync", package: "swift-async-fsync"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "IntegrationsTests",
            dependencies: [
                "AsyncFsyncLifecycle",
                "AsyncFsyncMetrics",
                "AsyncFsyncLogging",
                "AsyncFsyncNIO",
                .product(name: "AsyncFsync", package: "swift-async-fsync"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "_NIOFileSystem", package: "swift-nio"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)

for target in package.targets {
    var settings = target.swiftSettings ?? []
    settings.append(.enableUpcomingFeature("ExistentialAny"))
    // Swift 6 language mode already checks concurrency completely; stated for clarity.
    settings.append(.enableUpcomingFeature("StrictConcurrency"))
    target.swiftSettings = settings
}
