/// An error of the log itself. Errors of the system calls it makes (`AsyncSyncError` of a failed
/// sync, `Errno` of a failed write) are thrown as they are to the append that met them.
public struct WriteAheadLogError: Error, Sendable, CustomStringConvertible {
    /// The kinds of failure of the log itself.
    public enum Code: Sendable, Equatable {
        /// An earlier write or sync failed: the log accepts no more appends, because it cannot
        /// know which of its records are durable. Reopen it to recover what is.
        case poisoned
        /// ``WriteAheadLog/close()`` was called.
        case closed
        /// A segment other than the last is damaged, or the segments do not follow each other.
        /// The log never leaves a segment behind before it is durable, so this is not a torn
        /// write but damage, and recovery does not guess.
        case corrupt
        /// The payload is larger than ``WriteAheadLogOptions/maxRecordSize``.
        case recordTooLarge
        /// Options that do not go together (``WriteMode/direct`` with the blocking durability).
        case invalidOptions
    }

    /// What went wrong; branch on this.
    public let code: Code
    /// A sentence for a person: what was found, and where.
    public let message: String
    /// For ``Code/poisoned``: the failure that poisoned the log.
    public let underlying: (any Error)?

    public var description: String {
        underlying.map { "\(message): \($0)" } ?? message
    }

    static func poisoned(_ cause: any Error) -> WriteAheadLogError {
        WriteAheadLogError(code: .poisoned, message: "the log failed earlier and accepts no more appends", underlying: cause)
    }

    static let closed = WriteAheadLogError(code: .closed, message: "the log is closed", underlying: nil)
}
