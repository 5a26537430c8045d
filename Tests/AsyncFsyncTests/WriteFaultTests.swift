#if os(Linux)
import CAsyncFsync
import Foundation
import SystemPackage
import Testing

@testable import AsyncFsync

#if canImport(Glibc)
import Glibc
#endif

extension AsyncFsyncTests {
    /// The fault file system's write faults reach a blocking `pwrite(2)` through the real kernel:
    /// what the asynchronous writes of issue 17 will be tested with. Which mount gives which result
    /// is documented in Tests/FaultFileSystem/README.md ("Write faults").
    @Suite struct WriteFaults {
        /// How the test opens and mounts: the page cache (the default mount) or FOPEN_DIRECT_IO
        /// (`--direct-io`), and the file with or without `O_DIRECT`.
        struct Path: CustomStringConvertible, Sendable {
            var directIOMount: Bool
            var oDirect: Bool
            var description: String { "\(directIOMount ? "--direct-io" : "page cache") mount, \(oDirect ? "O_DIRECT" : "buffered")" }
        }

        static let paths = [
            Path(directIOMount: false, oDirect: false), Path(directIOMount: false, oDirect: true),
            Path(directIOMount: true, oDirect: false), Path(directIOMount: true, oDirect: true),
        ]

        static let size = 8192

        /// Opens `name` on the mount (created empty) and writes `size` bytes of `byte` at offset 0
        /// with one blocking `pwrite(2)` from a page-aligned buffer: the count, or the errno.
        static func pwriteOnce(_ fs: FaultFS, _ name: String, oDirect: Bool, byte: UInt8 = 0x61) throws -> Result<Int, Errno> {
            let flags = O_RDWR | O_CREAT | (oDirect ? casyncfsync_O_DIRECT : 0)
            let fd = Glibc.open(fs.mountPoint.appending(name).string, flags, 0o600)
            guard fd >= 0 else { throw Errno(rawValue: errno) }
            defer { Glibc.close(fd) }
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
            defer { buffer.deallocate() }
            buffer.initializeMemory(as: UInt8.self, repeating: byte, count: size)
            let written = Glibc.pwrite(fd, buffer, size, 0)
            return written < 0 ? .failure(Errno(rawValue: errno)) : .success(written)
        }

        static func backingSize(_ fs: FaultFS, _ name: String) -> Int {
            var info = stat()
            return stat(fs.backing.appending(name).string, &info) == 0 ? Int(info.st_size) : -1
        }

        @Test("EIO and ENOSPC at write reach pwrite(2) as -1 and that errno, nothing written",
              arguments: paths, [Errno.ioError, .noSpace])
        func errnoAtWrite(path: Path, errno: Errno) throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3") else { return }
            let fs = try FaultFS(directIO: path.directIOMount)
            try fs.injectWriteFault(.errno(errno))
            #expect(try Self.pwriteOnce(fs, "data", oDirect: path.oDirect) == .failure(errno), "\(path)")
            #expect(try fs.counter("failed_writes") == 1)
            #expect(Self.backingSize(fs, "data") == 0)
            try fs.clearWriteFaults()
            #expect(try Self.pwriteOnce(fs, "data", oDirect: path.oDirect) == .success(Self.size), "switched off")
        }

        @Test("a short reply from the write handler is a short pwrite(2) count, except O_DIRECT on a page-cache mount (EIO)",
              arguments: paths)
        func shortWrite(path: Path) throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3") else { return }
            let fs = try FaultFS(directIO: path.directIOMount)
            try fs.injectWriteFault(.half)
            let result = try Self.pwriteOnce(fs, "half", oDirect: path.oDirect)
            #expect(try fs.counter("short_writes") == 1)
            if path.oDirect && !path.directIOMount {
                // The kernel's O_DIRECT path of a FUSE file without FOPEN_DIRECT_IO turns a short
                // reply into EIO (and undoes the extension of the file).
                #expect(result == .failure(.ioError), "\(path)")
            } else {
                #expect(result == .success(Self.size / 2), "\(path)")
                #expect(Self.backingSize(fs, "half") == Self.size / 2)
            }
            try fs.injectWriteFault(.atMost(1000))
            let capped = try Self.pwriteOnce(fs, "capped", oDirect: path.oDirect)
            #expect(capped == (path.oDirect && !path.directIOMount ? .failure(.ioError) : .success(1000)), "\(path)")
        }

        @Test("write_count: only the next N writes fail; write_match: only paths containing it")
        func countAndMatch() throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3") else { return }
            let fs = try FaultFS(directIO: true)
            try fs.injectWriteFault(.errno(.noSpace), count: 2)
            #expect(try Self.pwriteOnce(fs, "a", oDirect: false) == .failure(.noSpace))
            #expect(try Self.pwriteOnce(fs, "a", oDirect: true) == .failure(.noSpace))
            #expect(try Self.pwriteOnce(fs, "a", oDirect: false) == .success(Self.size), "the count is spent")
            #expect(try fs.counter("write_count") == 0)

            try fs.injectWriteFault(.half, count: 1, matching: "wal")
            #expect(try Self.pwriteOnce(fs, "data", oDirect: false) == .success(Self.size), "not matching")
            #expect(try Self.pwriteOnce(fs, "wal-1", oDirect: false) == .success(Self.size / 2))
            #expect(try Self.pwriteOnce(fs, "wal-1", oDirect: false) == .success(Self.size), "the count is spent")
            #expect(try fs.counter("short_writes") == 1)
            #expect(try fs.counter("failed_writes") == 2)
        }

        @Test("--writeback-cache: a short reply at writeback is lost silently (pwrite and fsync succeed); errnos reach fsync")
        func writebackCache() throws {
            guard TestEnvironment.require(FaultFS.canRun, "needs root, /dev/fuse and libfuse3") else { return }
            let fs = try FaultFS(writebackCache: true)
            try fs.injectWriteFault(.half)
            let fd = try FileDescriptor.open(fs.mountPoint.appending("cached"), .readWrite, options: [.create],
                                             permissions: [.ownerReadWrite])
            defer { try? fd.close() }
            #expect(try fd.writeAll(toAbsoluteOffset: 0, [UInt8](repeating: 0x62, count: Self.size)) == Self.size)
            #expect(fsync(fd.rawValue) == 0, "the kernel does not report a short writeback")
            #expect(try fs.counter("short_writes") >= 1)
            #expect(Self.backingSize(fs, "cached") < Self.size, "half of the data never reached the file system")

            try fs.injectWriteFault(.errno(.noSpace))
            _ = try fd.writeAll(toAbsoluteOffset: 0, [UInt8](repeating: 0x63, count: Self.size))
            #expect(fsync(fd.rawValue) == -1 && Errno(rawValue: Glibc.errno) == .noSpace)
        }
    }
}
#endif  // os(Linux)
