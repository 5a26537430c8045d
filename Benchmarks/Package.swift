// swift-tools-version: 6.1
// The benchmark of swift-async-fsync: a separate package, so its dependencies (argument parsing,
// HdrHistogram, the real libaio for the C floor) never reach the library product.
import Foundation
import PackageDescription

// scripts/bench-compare builds this bench against an older library too; one from before the
// serial executor gets ASYNC_FSYNC_BENCH_NO_SERIAL_EXECUTOR=1, and the methods that need it are left out.
// One from before durable writes (and their AlignedBuffer overload) gets ASYNC_FSYNC_BENCH_NO_DURABLE_WRITE=1: the durable-write
// methods of this library then report an error row.
let benchSettings: [SwiftSetting] = (ProcessInfo.processInfo.environment["ASYNC_FSYNC_BENCH_NO_SERIAL_EXECUTOR"] == "1"
    ? [.define("NO_SERIAL_EXECUTOR")] : [])
    + (ProcessInfo.processInfo.environment["ASYNC_FSYNC_BENCH_NO_DURABLE_WRITE"] == "1" ? [.define("NO_DURABLE_WRITE")] : [])

let package = Package(
    name: "asyncfsync-benchmarks",
    dependencies: [
        .package(name: "swift-async-fsync", path: ".."),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        // What Swift servers use today to get blocking file I/O off the event loops.
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        // Allocations and context switches per sync (Benchmarks/SyncAllocations).
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        // The C floor: the same loops written in C against libaio, glibc POSIX aio and fsync(2).
        .target(name: "CFloor", linkerSettings: [.linkedLibrary("aio")]),
        .executableTarget(
            name: "asyncfsync-bench",
            dependencies: [
                "CFloor",
                .product(name: "AsyncFsync", package: "swift-async-fsync"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "_NIOFileSystem", package: "swift-nio"),
            ],
            swiftSettings: benchSettings
        ),
        // One request loop with a synchronous main, for callgrind's instruction counts (scripts/bench-instructions).
        .executableTarget(
            name: "asyncfsync-loop",
            dependencies: ["CFloor", .product(name: "AsyncFsync", package: "swift-async-fsync")]
        ),
        // ordo-one package-benchmark: allocations, context switches, threads and syscalls per sync
        // for each backend. Run: swift package benchmark --target SyncAllocations
        .executableTarget(
            name: "SyncAllocations",
            dependencies: [
                .product(name: "AsyncFsync", package: "swift-async-fsync"),
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/SyncAllocations",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
