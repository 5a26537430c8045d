// The swift-system types of this library's API, so that a user of AsyncFsync does not need to add
// swift-system to their own package to name them (`FileDescriptor(rawValue:)`, `Errno.ioError`,
// `FilePath("/var/lib/db")`).
@_exported import struct SystemPackage.Errno
@_exported import struct SystemPackage.FileDescriptor
@_exported import struct SystemPackage.FilePath
