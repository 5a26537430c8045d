/// The position of a record in the log: its sequence number, 1 for the first record ever
/// appended, one more for each record after it.
public struct LSN: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    /// The sequence number.
    public let rawValue: UInt64

    /// The LSN with sequence number `rawValue`.
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static func < (lhs: LSN, rhs: LSN) -> Bool { lhs.rawValue < rhs.rawValue }

    public var description: String { "LSN \(rawValue)" }
}

/// A record read back from the log by recovery.
public struct LogRecord: Sendable, Hashable {
    /// The record's position, as ``WriteAheadLog/append(_:)`` returned it.
    public let lsn: LSN
    /// The bytes given to ``WriteAheadLog/append(_:)``.
    public let payload: [UInt8]
}

/// The on-disk frame of one record, little endian:
///
/// ```
/// 0  magic   UInt32  "WAL1"
/// 4  length  UInt32  payload bytes
/// 8  lsn     UInt64  the record's sequence number
/// 16 crc     UInt32  CRC-32C of bytes 0..<16 and of the payload
/// 20 payload
/// ```
///
/// The magic and the sequence number let recovery tell a record from stale bytes that happen to
/// have a valid checksum (a frame of an earlier incarnation of the file); the checksum catches a
/// torn write (the header reached the disk, part of the payload did not).
enum Frame {
    static let magic: UInt32 = 0x314C_4157  // "WAL1" in file order
    static let headerSize = 20

    static func encode(lsn: UInt64, payload: [UInt8]) -> [UInt8] {
        var frame = [UInt8]()
        frame.reserveCapacity(headerSize + payload.count)
        append(magic, to: &frame)
        append(UInt32(payload.count), to: &frame)
        append(lsn, to: &frame)
        var crc = CRC32C.update(CRC32C.initial, frame)
        crc = CRC32C.finish(CRC32C.update(crc, payload))
        append(crc, to: &frame)
        frame += payload
        return frame
    }

    enum Decoded: Equatable {
        /// A whole, valid frame: its payload is `bytes[payload]`; the next frame starts at `next`.
        case record(payload: Range<Int>, next: Int)
        /// No bytes left: a clean end.
        case end
        /// Not a valid frame of record `lsn` at this offset: a torn write, stale bytes or damage.
        case invalid(String)
    }

    /// Decodes the frame at `offset` of `bytes`, which must be record `lsn`.
    ///
    /// A length is believed up to the end of `bytes` (the checksum then decides), never against
    /// the append limit: a log reopened with a smaller ``WriteAheadLogOptions/maxRecordSize``
    /// must not cut off a durable record.
    static func decode(_ bytes: [UInt8], at offset: Int, lsn: UInt64) -> Decoded {
        let remaining = bytes.count - offset
        if remaining == 0 { return .end }
        if remaining < headerSize { return .invalid("a partial header (\(remaining) of \(headerSize) bytes)") }
        let foundMagic: UInt32 = load(bytes, offset)
        guard foundMagic == magic else { return .invalid("no frame magic") }
        let length = Int(load(bytes, offset + 4) as UInt32)
        guard length <= remaining - headerSize else {
            return .invalid("a partial payload (\(remaining - headerSize) of \(length) bytes)")
        }
        let foundLSN: UInt64 = load(bytes, offset + 8)
        let storedCRC: UInt32 = load(bytes, offset + 16)
        let payload = (offset + headerSize)..<(offset + headerSize + length)
        var crc = CRC32C.update(CRC32C.initial, bytes[offset..<(offset + 16)])
        crc = CRC32C.finish(CRC32C.update(crc, bytes[payload]))
        guard crc == storedCRC else { return .invalid("a checksum mismatch") }
        guard foundLSN == lsn else { return .invalid("record \(foundLSN) where record \(lsn) belongs") }
        return .record(payload: payload, next: payload.upperBound)
    }

    private static func append<T: FixedWidthInteger>(_ value: T, to bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.littleEndian) { bytes += $0 }
    }

    private static func load<T: FixedWidthInteger>(_ bytes: [UInt8], _ offset: Int) -> T {
        var value: T = 0
        for index in (0..<MemoryLayout<T>.size).reversed() {
            value = value << 8 | T(bytes[offset + index])
        }
        return value
    }
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), one table lookup per byte.
enum CRC32C {
    static let initial: UInt32 = 0xFFFF_FFFF

    static let table: [UInt32] = (0..<256).map { index in
        var crc = UInt32(index)
        for _ in 0..<8 { crc = crc & 1 == 1 ? (crc >> 1) ^ 0x82F6_3B78 : crc >> 1 }
        return crc
    }

    static func update(_ crc: UInt32, _ bytes: some Sequence<UInt8>) -> UInt32 {
        var crc = crc
        table.withUnsafeBufferPointer { table in
            for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        }
        return crc
    }

    static func finish(_ crc: UInt32) -> UInt32 { crc ^ 0xFFFF_FFFF }

    /// The checksum of `bytes` in one call.
    static func checksum(_ bytes: some Sequence<UInt8>) -> UInt32 { finish(update(initial, bytes)) }
}
