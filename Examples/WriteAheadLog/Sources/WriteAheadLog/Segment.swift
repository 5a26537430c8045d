#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#elseif canImport(Musl)
import Musl
#endif

/// A descriptor closed exactly once: by ``close()`` or, if nobody did, when its owner goes.
final class OwnedDescriptor {
    let fd: FileDescriptor
    private(set) var isClosed = false

    init(_ fd: FileDescriptor) { self.fd = fd }

    func close() {
        guard !isClosed else { return }
        isClosed = true
        try? fd.close()
    }

    deinit { close() }
}

/// One segment file: `segment-<first LSN, 16 hex digits>.wal` in the log's directory, its records
/// back to back from offset 0. Only the log's actor touches it.
final class Segment {
    let file: OwnedDescriptor
    /// Where the next record goes: the end of the last record written.
    var size: Int
    /// Appends that wrote here and wait for their sync (the descriptor must stay open for them).
    var syncsInFlight = 0

    var fd: FileDescriptor { file.fd }

    init(_ file: OwnedDescriptor, size: Int) {
        self.file = file
        self.size = size
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

    /// The whole content of the file open as `fd`.
    static func readAll(_ fd: FileDescriptor) throws -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = try chunk.withUnsafeMutableBytes { try fd.read(fromAbsoluteOffset: Int64(bytes.count), into: $0) }
            if count == 0 { return bytes }
            bytes += chunk[..<count]
        }
    }
}
