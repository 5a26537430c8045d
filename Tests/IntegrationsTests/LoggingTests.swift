#if Logging
// The tests of the trait Logging.
import AsyncFsync
import AsyncFsyncLogging
import Logging
import Synchronization
import Testing

/// A LogHandler that keeps every message, shared by the loggers made from it.
struct CapturingLogHandler: LogHandler {
    struct Entry: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: Logger.Metadata
    }

    final class Store: Sendable {
        let entries = Mutex<[Entry]>([])
        var all: [Entry] { entries.withLock { $0 } }
        func clear() { entries.withLock { $0 = [] } }
    }

    let store: Store
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let entry = Entry(
            level: event.level, message: "\(event.message)",
            metadata: metadata.merging(event.metadata ?? [:]) { $1 })
        store.entries.withLock { $0.append(entry) }
    }
}

/// One logging observer for the process (observers cannot be removed), logging into a store.
enum LoggingFixture {
    static let store = CapturingLogHandler.Store()
    static let observer = AsyncSyncLogging.bootstrap(
        logger: Logger(label: "asyncfsync-tests", factory: { _ in CapturingLogHandler(store: store) }),
        syncFailureLevel: .warning, writeFailureLevel: .warning)

    /// The entries logged while `body` ran.
    static func captured(_ body: () async throws -> Void) async rethrows -> [CapturingLogHandler.Entry] {
        _ = observer
        let before = store.all.count
        try await body()
        return Array(store.all.dropFirst(before))
    }
}

extension IntegrationsTests {
    @Suite struct Logging {
        @Test("A real selection: one info message naming the backend and the choice, with every probe")
        func selection() async throws {
            let directory = try ScratchDirectory()
            var kind: BackendKind?
            let entries = try await LoggingFixture.captured {
                let backend = try await makeBackend(for: directory)
                kind = backend.kind
                await backend.shutdown()
            }
            let selections = entries.filter { $0.message.contains("selected the") }
            try #require(selections.count == 1, "\(entries.map(\.message))")
            let entry = selections[0]
            #expect(entry.level == .info)
            #expect(entry.metadata["backend"] == .string(kind!.rawValue))
            #expect(entry.message.contains("ASYNC_FSYNC_BACKEND="))
            guard case .array(let probes)? = entry.metadata["probes"] else {
                Issue.record("no probes in \(entry.metadata)")
                return
            }
            #expect(!probes.isEmpty)
            // The chosen backend's probe says it is usable, on the directory probed.
            #expect(probes.contains { "\($0)".hasPrefix("\(kind!): usable") && "\($0)".contains(directory.path.string) })
        }

        @Test("A failed sync is logged at the chosen level with backend, errno and descriptor")
        func syncFailure() async throws {
            let directory = try ScratchDirectory()
            let backend = try await makeBackend(for: directory)
            await backend.shutdown()
            let fd = try directory.file("down")
            defer { try? fd.close() }
            let entries = await LoggingFixture.captured {
                _ = try? await backend.fdatasync(fd)
            }
            let failures = entries.filter { $0.message.contains("fdatasync failed") }
            try #require(failures.count == 1, "\(entries.map(\.message))")
            #expect(failures[0].level == .warning)
            #expect(failures[0].metadata["code"] == "shut_down")
            #expect(failures[0].metadata["backend"] == .string(backend.kind.rawValue))

            // Through the observer directly: an errno and a descriptor; cancellation at debug.
            let more = LoggingFixture.observer
            let direct = await LoggingFixture.captured {
                more.syncCompleted(
                    backend: .libaio, mode: .fsync, duration: .microseconds(40),
                    error: AsyncSyncError(
                        code: .system, errno: .ioError, operation: .fsync, step: .completion, backend: .libaio,
                        descriptor: FileDescriptor(rawValue: 12), systemCall: "io_getevents"))
                more.syncCompleted(backend: .libaio, mode: .fsync, duration: .microseconds(1), error: CancellationError())
                more.syncCompleted(backend: .libaio, mode: .fsync, duration: .microseconds(1), error: nil)
            }
            try #require(direct.count == 2, "\(direct.map(\.message))")
            #expect(direct[0].level == .warning)
            #expect(direct[0].metadata["errno"] == "EIO")
            #expect(direct[0].metadata["descriptor"] == "12")
            #expect(direct[0].message.contains("EIO"))
            #expect(direct[1].level == .debug)
            #expect(direct[1].metadata["code"] == "cancelled")
        }

        @Test("A failed write is logged once at the chosen level with backend, kind, bytes, errno and descriptor; a successful one not at all")
        func writeFailure() async throws {
            let directory = try ScratchDirectory()
            let backend = try await makeBackend(for: directory)
            let fd = try directory.file("written")
            defer { try? fd.close() }
            let readOnly = try FileDescriptor.open(directory.path.appending("written"), .readOnly)
            defer { try? readOnly.close() }
            let entries = await LoggingFixture.captured {
                try? await backend.write(fd, [UInt8](repeating: 0x61, count: 10), at: 0)
                try? await backend.durableWrite(fd, [UInt8](repeating: 0x62, count: 10), at: 0)
                _ = try? await backend.write(readOnly, [UInt8](repeating: 0x63, count: 10), at: 0)
            }
            try #require(entries.count == 1, "\(entries.map(\.message))")
            let entry = entries[0]
            #expect(entry.level == .warning)
            #expect(entry.message.contains("write of 10 bytes failed"))
            #expect(entry.metadata["backend"] == .string(backend.kind.rawValue))
            #expect(entry.metadata["kind"] == "write")
            #expect(entry.metadata["bytes"] == "10")
            #expect(entry.metadata["code"] == "system")
            #expect(entry.metadata["errno"] == "EBADF")
            #expect(entry.metadata["descriptor"] == .string("\(readOnly.rawValue)"))
            await backend.shutdown()

            // Through the observer directly: a durable write, then a cancelled write at debug.
            let observer = LoggingFixture.observer
            let direct = await LoggingFixture.captured {
                observer.writeCompleted(
                    backend: .libaio, durable: true, bytes: 4096, duration: .microseconds(40),
                    error: AsyncSyncError(
                        code: .system, errno: .noSpace, operation: .durableWrite, step: .completion, backend: .libaio,
                        descriptor: FileDescriptor(rawValue: 12), systemCall: "io_getevents"))
                observer.writeCompleted(backend: .libaio, durable: false, bytes: 1, duration: .microseconds(1), error: CancellationError())
                observer.writeCompleted(backend: .libaio, durable: true, bytes: 1, duration: .microseconds(1), error: nil)
            }
            try #require(direct.count == 2, "\(direct.map(\.message))")
            #expect(direct[0].level == .warning)
            #expect(direct[0].message.contains("durable write of 4096 bytes failed"))
            #expect(direct[0].metadata["kind"] == "durable_write")
            #expect(direct[0].metadata["errno"] == "ENOSPC")
            #expect(direct[0].metadata["descriptor"] == "12")
            #expect(direct[1].level == .debug)
            #expect(direct[1].metadata["code"] == "cancelled")
        }

        @Test("Without writeFailureLevel a failed write is not logged")
        func writeFailureNotLogged() async throws {
            let store = CapturingLogHandler.Store()
            let quiet = AsyncSyncLogging(
                logger: Logger(label: "quiet", factory: { _ in CapturingLogHandler(store: store) }), syncFailureLevel: .warning)
            quiet.writeCompleted(backend: .posix, durable: false, bytes: 1, duration: .microseconds(1),
                                 error: AsyncSyncError(code: .shutDown, errno: nil, operation: .write, step: .request, backend: .posix))
            #expect(store.all.isEmpty)
        }

        @Test("Fallback to POSIX at notice; durability failure recorded at error, cleared at notice")
        func events() async throws {
            let observer = LoggingFixture.observer
            let entries = await LoggingFixture.captured {
                observer.fileSystemServedByPOSIX(
                    device: "0:42",
                    refusal: AsyncSyncError(
                        code: .system, errno: .invalidArgument, operation: .fdatasync, step: .submit, backend: .libaio,
                        descriptor: FileDescriptor(rawValue: 8), systemCall: "io_submit"))
                observer.durabilityFailureRecorded(
                    backend: .libaio, descriptor: FileDescriptor(rawValue: 8), errno: .ioError, sticky: true)
                observer.durabilityFailureCleared(backend: .libaio, descriptor: FileDescriptor(rawValue: 8))
                observer.groupCommitBatch(size: 3, mode: .fsync)
            }
            try #require(entries.count == 3, "\(entries.map(\.message))")
            #expect(entries[0].level == .notice)
            #expect(entries[0].metadata["device"] == "0:42")
            #expect(entries[0].metadata["errno"] == "EINVAL")
            #expect(entries[0].message.contains("POSIX aio"))
            #expect(entries[1].level == .error)
            #expect(entries[1].metadata["backend"] == "libaio")
            #expect(entries[1].metadata["descriptor"] == "8")
            #expect(entries[1].metadata["errno"] == "EIO")
            #expect(entries[1].metadata["sticky"] == "true")
            #expect(entries[1].message.contains("refused until the failure is cleared"))
            #expect(entries[2].level == .notice)
            #expect(entries[2].metadata["descriptor"] == "8")
            #expect(entries[2].message.contains("cleared"))
        }
    }
}

#endif
