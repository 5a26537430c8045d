/// What a sync makes durable.
public enum SyncMode: Sendable, Hashable, CustomStringConvertible {
    /// Data and all metadata, like `fsync(2)`.
    case fsync
    /// Data and the metadata needed to read it back (for example the size, not the
    /// modification time), like `fdatasync(2)`.
    case fdatasync

    /// The name of the operation: `"fsync"` or `"fdatasync"`.
    public var description: String {
        switch self {
        case .fsync: "fsync"
        case .fdatasync: "fdatasync"
        }
    }
}
