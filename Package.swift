// swift-tools-version: 6.0
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
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
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
        .testTarget(
            name: "AsyncFsyncTests",
            dependencies: [
                "AsyncFsync",
                "CTestSupport",
                "WriteAheadLog",
                .product(name: "SystemPackage", package: "swift-system"),
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
