// swift-tools-version: 6.1
// 6.1: package traits. The library product AsyncFsync depends on swift-system only; each optional
// integration is a product of its own whose dependency is used (and resolved) only when its trait
// is enabled. A consumer enables one on the package line:
//   .package(url: "…/swift-async-fsync", from: "0.1.0", traits: ["Logging"])
import PackageDescription

let package = Package(
    name: "swift-async-fsync",
    // macOS 15 / iOS 18: TaskExecutor (preferredTaskExecutor) and Synchronization's Atomic. Off
    // Linux the portable backend is used (docs/design.md, "The portable backend").
    platforms: [.macOS(.v15), .iOS(.v18), .tvOS(.v18), .watchOS(.v11), .visionOS(.v2)],
    products: [
        .library(name: "AsyncFsync", targets: ["AsyncFsync"]),
        .executable(name: "asyncfsync-demo", targets: ["asyncfsync-demo"]),
        .executable(name: "asyncfsync-probe", targets: ["asyncfsync-probe"]),
        // The integrations: each is empty unless its trait is enabled.
        /// An `AsyncSyncObserver` that logs selection, fallbacks and durability failures with swift-log (trait Logging).
        .library(name: "AsyncFsyncLogging", targets: ["AsyncFsyncLogging"]),
        /// An `AsyncSyncObserver` that records swift-metrics timers, counters and recorders (trait Metrics).
        .library(name: "AsyncFsyncMetrics", targets: ["AsyncFsyncMetrics"]),
        /// A `Service` owning a backend: shuts it down (draining accepted syncs) on graceful shutdown
        /// (trait ServiceLifecycle).
        .library(name: "AsyncFsyncLifecycle", targets: ["AsyncFsyncLifecycle"]),
        /// Syncing swift-nio file handles (`_NIOFileSystem`) through a backend (trait NIO).
        .library(name: "AsyncFsyncNIO", targets: ["AsyncFsyncNIO"]),
    ],
    traits: [
        .trait(name: "Logging", description: "The product AsyncFsyncLogging: an observer logging with swift-log."),
        .trait(name: "Metrics", description: "The product AsyncFsyncMetrics: an observer recording swift-metrics."),
        .trait(
            name: "ServiceLifecycle",
            description: "The product AsyncFsyncLifecycle: a swift-service-lifecycle Service that owns a backend."
        ),
        .trait(name: "NIO", description: "The product AsyncFsyncNIO: syncing swift-nio (NIOFileSystem) file handles."),
        .default(enabledTraits: []),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        // Used only by the integrations, each under its trait; a consumer without the trait does
        // not resolve them (scripts/test-integrations checks that).
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        // Thin C shims over <linux/aio_abi.h> (the kernel AIO syscalls, no libaio.so needed)
        // and glibc's <aio.h>. No logic lives here.
        .target(name: "CAsyncFsync"),
        .target(
            name: "AsyncFsync",
            dependencies: [
                "CAsyncFsync",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .executableTarget(name: "asyncfsync-demo", dependencies: ["AsyncFsync"]),
        // Prints the probes and the backend makeBackend() chooses here; the selection tests run it
        // as a child process under seccomp, a lowered aio-max-nr and a hidden libaio.so.
        .executableTarget(name: "asyncfsync-probe", dependencies: ["AsyncFsync"]),
        // A small self-checking workout for valgrind memcheck in CI (.ci/run).
        .executableTarget(name: "asyncfsync-stress", dependencies: ["AsyncFsync"]),
        // Test-only C helpers (aio_init, ext4 shutdown ioctl); never part of the library.
        .target(name: "CTestSupport", path: "Tests/CTestSupport"),
        // Examples/WriteAheadLog: a reference write-ahead log over GroupCommit, and its benchmark.
        // Targets of the root package so that `swift test` runs its tests; not a product.
        .target(name: "WriteAheadLog", dependencies: ["AsyncFsync"], path: "Examples/WriteAheadLog/Sources/WriteAheadLog"),
        .executableTarget(name: "asyncfsync-wal-bench", dependencies: ["WriteAheadLog"],
                          path: "Examples/WriteAheadLog/Sources/wal-bench"),
        // The integrations (Sources/AsyncFsync<Name>/): every source is inside `#if <Trait>`.
        .target(
            name: "AsyncFsyncLogging",
            dependencies: [
                "AsyncFsync",
                .product(name: "Logging", package: "swift-log", condition: .when(traits: ["Logging"])),
            ]
        ),
        .target(
            name: "AsyncFsyncMetrics",
            dependencies: [
                "AsyncFsync",
                .product(name: "CoreMetrics", package: "swift-metrics", condition: .when(traits: ["Metrics"])),
            ]
        ),
        .target(
            name: "AsyncFsyncLifecycle",
            dependencies: [
                "AsyncFsync",
                .product(
                    name: "ServiceLifecycle", package: "swift-service-lifecycle",
                    condition: .when(traits: ["ServiceLifecycle"])
                ),
            ]
        ),
        .target(
            name: "AsyncFsyncNIO",
            dependencies: [
                "AsyncFsync",
                .product(name: "_NIOFileSystem", package: "swift-nio", condition: .when(traits: ["NIO"])),
            ]
        ),
        // Prints what the Logging and Metrics observers cost per sync event (asserts nothing);
        // without both traits it only says so.
        .executableTarget(
            name: "integrations-observer-cost",
            dependencies: [
                "AsyncFsync",
                "AsyncFsyncLogging",
                "AsyncFsyncMetrics",
                .product(name: "Logging", package: "swift-log", condition: .when(traits: ["Logging"])),
                .product(name: "CoreMetrics", package: "swift-metrics", condition: .when(traits: ["Metrics"])),
            ]
        ),
        .testTarget(
            name: "AsyncFsyncTests",
            dependencies: [
                "AsyncFsync",
                "CTestSupport",
                "WriteAheadLog",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // The tests of the integrations: each file is inside `#if <Trait>`, so without traits the
        // target is empty (scripts/test-integrations runs it with all four).
        .testTarget(
            name: "IntegrationsTests",
            dependencies: [
                "AsyncFsync",
                "AsyncFsyncLogging",
                "AsyncFsyncMetrics",
                "AsyncFsyncLifecycle",
                "AsyncFsyncNIO",
                // ServiceLifecycle's tests log through a ServiceGroup's Logger.
                .product(name: "Logging", package: "swift-log", condition: .when(traits: ["Logging", "ServiceLifecycle"])),
                .product(name: "CoreMetrics", package: "swift-metrics", condition: .when(traits: ["Metrics"])),
                .product(name: "MetricsTestKit", package: "swift-metrics", condition: .when(traits: ["Metrics"])),
                .product(
                    name: "ServiceLifecycle", package: "swift-service-lifecycle",
                    condition: .when(traits: ["ServiceLifecycle"])
                ),
                .product(name: "NIOCore", package: "swift-nio", condition: .when(traits: ["NIO"])),
                .product(name: "_NIOFileSystem", package: "swift-nio", condition: .when(traits: ["NIO"])),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)

for target in package.targets where target.type != .system && !target.name.hasPrefix("C") {
    var settings = target.swiftSettings ?? []
    settings.append(.enableUpcomingFeature("ExistentialAny"))
    target.swiftSettings = settings
}
