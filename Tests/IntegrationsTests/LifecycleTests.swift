#if ServiceLifecycle
// The tests of the trait ServiceLifecycle.
import AsyncFsync
import AsyncFsyncLifecycle
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif canImport(Musl)
import Musl
#endif

/// A backend passing every call to a real one and keeping the outcome of each call, to check that
/// each returned exactly once and to know which were in flight at a given moment.
final class TrackingBackend: AsyncSyncBackend, Sendable {
    enum Outcome: Sendable, Equatable {
        case success
        case shutDown
        case other(String)
    }

    private struct State {
        var nextID = 0
        var started: [Int: ContinuousClock.Instant] = [:]
        var ended: [Int: Outcome] = [:]
        var endedTwice: [Int] = []
        var shutdownsStarted = 0
        var shutdownsEnded = 0
    }

    let wrapped: any AsyncSyncBackend
    private let state = Mutex(State())

    init(wrapping wrapped: any AsyncSyncBackend) { self.wrapped = wrapped }

    var kind: BackendKind { wrapped.kind }

    func sync(_ fd: FileDescriptor, mode: SyncMode) async throws {
        let id = state.withLock { state in
            defer { state.nextID += 1 }
            state.started[state.nextID] = .now
            return state.nextID
        }
        do {
            try await wrapped.sync(fd, mode: mode)
            end(id, .success)
        } catch let error as AsyncSyncError where error.code == .shutDown {
            end(id, .shutDown)
            throw error
        } catch {
            end(id, .other("\(error)"))
            throw error
        }
    }

    private func end(_ id: Int, _ outcome: Outcome) {
        state.withLock { state in
            if state.ended[id] != nil { state.endedTwice.append(id) }
            state.ended[id] = outcome
        }
    }

    func shutdown() async {
        state.withLock { $0.shutdownsStarted += 1 }
        await wrapped.shutdown()
        state.withLock { $0.shutdownsEnded += 1 }
    }

    /// The calls that started at least `age` ago and have not returned.
    func inFlight(olderThan age: Duration) -> Set<Int> {
        let now = ContinuousClock.now
        return state.withLock { state in
            Set(state.started.filter { state.ended[$0.key] == nil && now - $0.value >= age }.keys)
        }
    }

    var started: Int { state.withLock { $0.started.count } }
    var outcomes: [Int: Outcome] { state.withLock { $0.ended } }
    var endedTwice: [Int] { state.withLock { $0.endedTwice } }
    var shutdowns: (started: Int, ended: Int) { state.withLock { ($0.shutdownsStarted, $0.shutdownsEnded) } }
}

/// A service that says when the group has started its services (so its signal handlers are in
/// place) and then waits for graceful shutdown.
struct StartedSignal: Service {
    let started: AsyncStream<Void>.Continuation
    func run() async throws {
        started.yield()
        started.finish()
        try? await gracefulShutdown()
    }
}

/// Writers that sync their own files in a loop until a sync throws; each returns how many syncs succeeded
/// and the error that ended it.
struct SyncLoops {
    let tasks: [Task<(successes: Int, end: (any Error)?), Never>]
    let counter: SendableBox<Mutex<[Int]>>

    /// The fewest successful syncs of any loop so far.
    var fewestSuccesses: Int { counter.value.withLock { $0.min() ?? 0 } }

    static func start(count: Int, backend: any AsyncSyncBackend, directory: ScratchDirectory) throws -> (SyncLoops, [FileDescriptor]) {
        let block = [UInt8](repeating: 0x5a, count: 256 * 1024)
        var descriptors: [FileDescriptor] = []
        var tasks: [Task<(successes: Int, end: (any Error)?), Never>] = []
        let counter = SendableBox(Mutex([Int](repeating: 0, count: count)))
        for index in 0..<count {
            let fd = try directory.file("loop-\(index)")
            descriptors.append(fd)
            tasks.append(Task {
                var done = 0
                while true {
                    do {
                        _ = try fd.writeAll(toAbsoluteOffset: 0, block)
                        try await backend.sync(fd, mode: index.isMultiple(of: 2) ? .fdatasync : .fsync)
                        done += 1
                        counter.value.withLock { $0[index] += 1 }
                    } catch {
                        return (done, error)
                    }
                }
            })
        }
        return (SyncLoops(tasks: tasks, counter: counter), descriptors)
    }
}

/// A Mutex is not copyable; this shares one between tasks.
final class SendableBox<Value: ~Copyable & Sendable>: Sendable {
    let value: Value
    init(_ value: consuming Value) { self.value = value }
}

func noOpLogger() -> Logger {
    Logger(label: "asyncfsync-tests", factory: { _ in SwiftLogNoOpLogHandler() })
}

/// Polls `condition` every millisecond for at most `limit`; returns whether it became true.
func eventually(within limit: Duration = .seconds(20), _ condition: () -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + limit
    while !condition() {
        if ContinuousClock.now >= deadline { return false }
        try await Task.sleep(for: .microseconds(200))
    }
    return true
}

extension IntegrationsTests {
    @Suite struct Lifecycle {
        /// Starts loops, waits until they run and until some sync has been in flight a while, and
        /// returns the calls in flight then.
        private func startLoops(
            _ tracking: TrackingBackend, _ directory: ScratchDirectory, count: Int
        ) async throws -> (SyncLoops, [FileDescriptor], Set<Int>) {
            let (loops, descriptors) = try SyncLoops.start(count: count, backend: tracking, directory: directory)
            #expect(try await eventually { loops.fewestSuccesses >= 1 })
            // A call started half a millisecond ago has been accepted by the backend (acceptance is
            // the synchronous start of its sync call), so shutdown must let it complete.
            var inFlight: Set<Int> = []
            #expect(try await eventually {
                inFlight = tracking.inFlight(olderThan: .microseconds(500))
                return !inFlight.isEmpty
            })
            return (loops, descriptors, inFlight)
        }

        private func checkOutcomes(
            _ tracking: TrackingBackend, _ loops: SyncLoops, inFlight: Set<Int>
        ) async throws {
            for task in loops.tasks {
                let (successes, end) = await task.value
                #expect(successes >= 1)
                // Every loop ends on the first refused sync, so a request made after shutdown got
                // the shutDown error instead of hanging.
                #expect((end as? AsyncSyncError)?.code == .shutDown, "loop ended with \(String(describing: end))")
            }
            let outcomes = tracking.outcomes
            #expect(outcomes.count == tracking.started, "every call returned")
            #expect(tracking.endedTwice.isEmpty, "no call returned twice")
            for id in inFlight {
                #expect(outcomes[id] == .success, "call \(id), in flight at shutdown, completed")
            }
            #expect(outcomes.values.allSatisfy { $0 == .success || $0 == .shutDown })
            #expect(tracking.shutdowns == (1, 1))
        }

        @Test("SIGTERM to a real ServiceGroup: in-flight syncs complete once, later ones get shutDown, run() returns")
        func gracefulShutdownOnSIGTERM() async throws {
            let directory = try ScratchDirectory()
            let tracking = TrackingBackend(wrapping: try await makeBackend(for: directory))
            let service = AsyncSyncService(backend: tracking)
            let (startedStream, started) = AsyncStream.makeStream(of: Void.self)
            let group = ServiceGroup(
                configuration: ServiceGroupConfiguration(
                    services: [.init(service: service), .init(service: StartedSignal(started: started))],
                    gracefulShutdownSignals: [.sigterm],
                    logger: noOpLogger()))
            let groupRun = Task {
                try await group.run()
            }
            for await _ in startedStream { break }

            let (loops, descriptors, inFlight) = try await startLoops(tracking, directory, count: 4)
            defer { for fd in descriptors { try? fd.close() } }
            #expect(kill(getpid(), SIGTERM) == 0)

            // The group returns once every service's run() has returned.
            try await groupRun.value
            try await checkOutcomes(tracking, loops, inFlight: inFlight)
            do {
                try await service.backend.fdatasync(descriptors[0])
                Issue.record("a sync after shutdown succeeded")
            } catch let error as AsyncSyncError {
                #expect(error.code == .shutDown)
            }
        }

        @Test("Cancelling run(): shuts the backend down, in-flight syncs complete once, then CancellationError")
        func cancellation() async throws {
            let directory = try ScratchDirectory()
            let tracking = TrackingBackend(wrapping: try await makeBackend(for: directory))
            let service = AsyncSyncService(backend: tracking)
            let run = Task { try await service.run() }

            let (loops, descriptors, inFlight) = try await startLoops(tracking, directory, count: 4)
            defer { for fd in descriptors { try? fd.close() } }
            run.cancel()
            let result = await run.result
            #expect(throws: CancellationError.self) { try result.get() }
            try await checkOutcomes(tracking, loops, inFlight: inFlight)
            do {
                try await service.backend.fsync(descriptors[0])
                Issue.record("a sync after shutdown succeeded")
            } catch let error as AsyncSyncError {
                #expect(error.code == .shutDown)
            }
        }

        @Test("AsyncSyncService(directory:) makes its backend; triggerGracefulShutdown shuts it down")
        func madeByTheService() async throws {
            let directory = try ScratchDirectory()
            let service = try await AsyncSyncService(directory: directory.path)
            let fd = try directory.file("made")
            defer { try? fd.close() }
            try await service.backend.fdatasync(fd)
            let group = ServiceGroup(services: [service], logger: noOpLogger())
            let groupRun = Task { try await group.run() }
            // Let the group start the service before asking it to stop (both orders must work).
            try await Task.sleep(for: .milliseconds(10))
            await group.triggerGracefulShutdown()
            try await groupRun.value
            do {
                try await service.backend.fsync(fd)
                Issue.record("a sync after shutdown succeeded")
            } catch let error as AsyncSyncError {
                #expect(error.code == .shutDown)
            }
        }
    }
}

#endif
