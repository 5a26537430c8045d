#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif canImport(Musl)
import Musl
#endif

/// One segment file: `segment-<first LSN, 16 hex digits>.wal` in the log's directory, its records
/// back to back from offset 0. Only the log's actor touches it.
///
/// Its ``AsyncFile`` owns the descriptor; its `close()` waits only for operations already admitted,
/// so the log counts the appends that use the segment (``users``) and closes a retired one only
/// when none is left: an append may not have asked for its sync yet.
final class Segment {
    let file: AsyncFile
    /// Where the next record goes: the end of the last record reserved.
    var size: Int

    // Buffered mode: writes run concurrently, each at its reserved offset.

    /// The offsets of records reserved whose write has not completed yet.
    var unwritten: Set<Int> = []
    /// Appends waiting for the writes before their own end to complete.
    var writeWaiters: [CheckedContinuation<Void, Never>] = []

    // O_DIRECT mode: one block-aligned durable write at a time covers every frame reserved since
    // the previous one, starting at the block that holds the end of the durable part (that
    // partial block is written again, with the new frames after the old bytes).

    /// The offset alignment of the file's O_DIRECT transfers (1 in buffered mode).
    let block: Int
    /// The alignment of the memory a transfer is made from.
    let memoryAlignment: Int
    /// The file offset of `tail[0]`: a multiple of `block`.
    var tailStart: Int
    /// The bytes from `tailStart` to `size`: the partial block already in the file, then the
    /// frames not yet written.
    var tail: [UInt8]
    /// Everything before this offset is durable.
    var durableEnd: Int
    /// A durable write of the tail is in flight.
    var flushing = false
    /// Appends waiting for the flush in flight.
    var flushWaiters: [CheckedContinuation<Void, Never>] = []

    /// A segment of `file` whose records end at `size`; `contents` are the file's bytes (recovery),
    /// from which an O_DIRECT segment takes its partial last block.
    init(_ file: AsyncFile, size: Int, contents: [UInt8] = []) {
        self.file = file
        self.size = size
        block = file.directIOAlignment?.offsetAlignment ?? 1
        memoryAlignment = file.directIOAlignment.map { max($0.memoryAlignment, $0.offsetAlignment) } ?? 1
        tailStart = size / block * block
        tail = Array(contents[min(tailStart, contents.count)..<min(size, contents.count)])
        durableEnd = size
    }

    /// Appends that took their place in this segment and have not ended: a retired segment's file
    /// is closed only once none is left (an append may still have its sync to make, and a file
    /// whose `close()` began admits no new operation).
    var users = 0
    var unusedWaiters: [CheckedContinuation<Void, Never>] = []

    func userEnded() {
        users -= 1
        guard users == 0 else { return }
        let waiters = unusedWaiters
        unusedWaiters = []
        for waiter in waiters { waiter.resume() }
    }

    /// Resumes the appends waiting for writes (each checks again what it waits for).
    func writesProgressed() {
        let waiters = writeWaiters
        writeWaiters = []
        for waiter in waiters { waiter.resume() }
    }

    /// Resumes the appends waiting for the flush in flight.
    func flushEnded() {
        let waiters = flushWaiters
        flushWaiters = []
        for waiter in waiters { waiter.resume() }
    }

    static let prefix = "segment-"
    static let suffix = ".wal"

    /// The file name of the segment whose first record is `firstLSN`; names sort in LSN order.
    static func name(firstLSN: UInt64) -> String {
        let hex = String(firstLSN, radix: 16)
        return prefix + String(repeating: "0", count: 16 - hex.count) + hex + suffix
    }

    /// The first LSN of a segment's file name; nil for any other name.
    static func firstLSN(ofName name: String) -> UInt64? {
        guard name.count == prefix.count + 16 + suffix.count, name.hasPrefix(prefix), name.hasSuffix(suffix) else { return nil }
        return UInt64(name.dropFirst(prefix.count).dropLast(suffix.count), radix: 16)
    }

    /// The segments in `directory`, in LSN order.
    static func list(in directory: FilePath) throws -> [(firstLSN: UInt64, name: String)] {
        guard let stream = opendir(directory.string) else { throw Errno(rawValue: errno) }
        defer { closedir(stream) }
        var found: [(firstLSN: UInt64, name: String)] = []
        while true {
            errno = 0
            guard let entry = readdir(stream) else {
                if errno != 0 { throw Errno(rawValue: errno) }
                break
            }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if let first = firstLSN(ofName: name) { found.append((first, name)) }
        }
        return found.sorted { $0.firstLSN < $1.firstLSN }
    }

    /// The whole content of the file at `path` (read through the page cache, on a descriptor of
    /// its own).
    static func readAll(_ path: FilePath) throws -> [UInt8] {
        let fd = try FileDescriptor.open(path, .readOnly)
        defer { try? fd.close() }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = try chunk.withUnsafeMutableBytes { try fd.read(fromAbsoluteOffset: Int64(bytes.count), into: $0) }
            if count == 0 { return bytes }
            bytes += chunk[..<count]
        }
    }
}
