#if os(Linux)
import CAsyncFsync
import CTestSupport
import Foundation
import SystemPackage
import Testing

@testable import AsyncFsync

#if canImport(Glibc)
import Glibc
#endif

extension AsyncFsyncTests {
    /// The building blocks of `O_DIRECT` writes: an owned aligned buffer and a file's alignment.
    @Suite struct DirectIO {
        // MARK: AlignedBuffer

        @Test("an aligned buffer: its address is a multiple of the alignment, zero-filled, writable")
        func alignedBuffer() throws {
            for alignment in [1, 8, 512, 4096, 65536] {
                var buffer = try AlignedBuffer(byteCount: alignment * 3, alignment: alignment)
                #expect(buffer.byteCount == alignment * 3 && buffer.alignment == alignment)
                buffer.withUnsafeBytes { bytes in
                    #expect(UInt(bitPattern: bytes.baseAddress!) % UInt(alignment) == 0)
                    #expect(bytes.count == alignment * 3)
                    #expect(bytes.allSatisfy { $0 == 0 })
                }
                buffer.withUnsafeMutableBytes { $0[$0.count - 1] = 0x7f }
                #expect(buffer.withUnsafeBytes { $0.last } == 0x7f)
            }
        }

        @Test("bad input to an aligned buffer is an invalidConfiguration error naming the values, never a crash",
              arguments: [(4096, 0), (4096, 3), (4096, -512), (100, 512), (0, 512), (-4096, 4096), (4096 + 512, 4096)])
        func alignedBufferBadInput(byteCount: Int, alignment: Int) {
            let error = #expect(throws: AsyncSyncError.self) { _ = try AlignedBuffer(byteCount: byteCount, alignment: alignment) }
            #expect(error?.code == .invalidConfiguration && error?.errno == nil && error?.operation == .write)
            #expect(error?.message.contains("\(alignment)") == true && error?.message.contains("\(byteCount)") == true,
                    "\(String(describing: error))")
        }

        @Test("an allocation the system refuses is ENOMEM from posix_memalign, not a crash")
        func alignedBufferTooLarge() {
            // The sanitizers' allocators end the process on such a request instead of failing it.
            guard dlsym(UnsafeMutableRawPointer(bitPattern: 0), "__asan_init") == nil, testsupport_tsan_loaded() == 0 else { return }
            let error = #expect(throws: AsyncSyncError.self) { _ = try AlignedBuffer(byteCount: 1 << 60, alignment: 4096) }
            #expect(error?.code == .system && error?.errno == .noMemory && error?.systemCall == "posix_memalign")
        }

        @Test("a buffer for a file's alignment is aligned to the larger of its two alignments")
        func bufferForAlignment() throws {
            let alignment = try DirectIOAlignment(memoryAlignment: 512, offsetAlignment: 4096)
            let buffer = try AlignedBuffer(byteCount: 8192, for: alignment)
            #expect(buffer.alignment == 4096)
            #expect(throws: AsyncSyncError.self) { _ = try AlignedBuffer(byteCount: 512, for: alignment) }
            #expect(throws: AsyncSyncError.self) { _ = try DirectIOAlignment(memoryAlignment: 0, offsetAlignment: 512) }
            #expect(throws: AsyncSyncError.self) { _ = try DirectIOAlignment(memoryAlignment: 512, offsetAlignment: 1000) }
        }

        // MARK: The rule (SystemCalls table, no file system)

        static func alignment(for report: Result<DirectIOReport, Errno>) throws(AsyncSyncError) -> DirectIOAlignment {
            var system = SystemCalls.live
            system.directIOAlignment = { _ in report }
            return try DirectIOAlignment.of(FileDescriptor(rawValue: 7), system: system)
        }

        @Test("the rule: the kernel's values where reported, else 4096 raised to a power-of-two block size of at most 64 KiB")
        func rule() throws {
            let reported = try Self.alignment(for: .success(DirectIOReport(reported: true, memoryAlignment: 4, offsetAlignment: 512, blockSize: 4096)))
            #expect(reported.memoryAlignment == 4 && reported.offsetAlignment == 512 && reported.isReportedByKernel)
            for (block, expected) in [(0, 4096), (512, 4096), (4096, 4096), (16384, 16384), (65536, 65536),
                                      (1 << 20, 4096), (196_608, 4096), (12288, 4096)] {
                let fallback = try Self.alignment(for: .success(DirectIOReport(reported: false, memoryAlignment: 0, offsetAlignment: 0, blockSize: UInt32(block))))
                #expect(fallback.memoryAlignment == expected && fallback.offsetAlignment == expected && !fallback.isReportedByKernel,
                        "block size \(block)")
            }
        }

        @Test("a file without O_DIRECT (alignments of 0) and a failed statx are clear errors")
        func ruleErrors() {
            let unsupported = #expect(throws: AsyncSyncError.self) {
                _ = try Self.alignment(for: .success(DirectIOReport(reported: true, memoryAlignment: 0, offsetAlignment: 0, blockSize: 4096)))
            }
            #expect(unsupported?.code == .system && unsupported?.errno == .invalidArgument && unsupported?.systemCall == "statx")
            #expect(unsupported?.descriptor?.rawValue == 7 && unsupported?.message.contains("does not support O_DIRECT") == true)
            let failed = #expect(throws: AsyncSyncError.self) { _ = try Self.alignment(for: .failure(.badFileDescriptor)) }
            #expect(failed?.code == .system && failed?.errno == .badFileDescriptor && failed?.systemCall == "statx")
            let closed = #expect(throws: AsyncSyncError.self) { _ = try DirectIOAlignment.of(FileDescriptor(rawValue: -1)) }
            #expect(closed?.errno == .badFileDescriptor, "the live table")
        }

        @Test("validate refuses a misaligned address, offset or length with EINVAL naming the alignment")
        func validate() throws {
            let alignment = try DirectIOAlignment(memoryAlignment: 512, offsetAlignment: 4096)
            let buffer = try AlignedBuffer(byteCount: 8192, alignment: 4096)
            try alignment.validate(buffer, offset: 0)
            try alignment.validate(buffer, offset: 8192, count: 4096)
            let tooLong = #expect(throws: AsyncSyncError.self) { try alignment.validate(buffer, offset: 0, count: 12288) }
            #expect(tooLong?.errno == .invalidArgument && tooLong?.message.contains("larger than the buffer (8192 bytes)") == true)
            let base = buffer.withUnsafeBytes { $0.baseAddress! }
            try alignment.validate(address: base + 512, count: 4096, offset: 4096)
            for (address, count, offset, needle) in [(base + 256, 4096, Int64(0), "buffer address"),
                                                     (base, 4096, 512, "offset 512"), (base, 4096, -4096, "offset -4096"),
                                                     (base, 512, 0, "length 512"), (base, 0, 0, "length 0")] {
                let error = #expect(throws: AsyncSyncError.self) {
                    try alignment.validate(address: address, count: count, offset: offset, descriptor: FileDescriptor(rawValue: 9))
                }
                #expect(error?.code == .system && error?.errno == .invalidArgument && error?.step == .request)
                #expect(error?.operation == .write && error?.descriptor?.rawValue == 9)
                #expect(error?.message.contains(needle) == true && error?.message.contains("aligned to 512") == true
                        && error?.message.contains("4096 bytes") == true, "\(String(describing: error))")
            }
        }

        // MARK: Real file systems

        /// Opens `path` with O_DIRECT, learns its alignment, and checks that a buffer made for it
        /// goes through a real O_DIRECT `pwrite(2)` at an aligned offset, while what `validate`
        /// refuses the kernel refuses too where the kernel reported the alignment.
        static func exercise(_ path: FilePath, where place: String) throws {
            let fd = Glibc.open(path.string, O_RDWR | O_CREAT | casyncfsync_O_DIRECT, 0o600)
            if fd < 0 {
                // A file system without O_DIRECT (tmpfs before Linux 6.6) refuses the open.
                let refused = Errno(rawValue: errno)
                #expect(refused == .invalidArgument, "\(place): open(O_DIRECT) failed with \(refused)")
                print("ℹ️  \(place): open(O_DIRECT) refused with EINVAL")
                return
            }
            defer { Glibc.close(fd) }
            let descriptor = FileDescriptor(rawValue: fd)
            let alignment = try DirectIOAlignment.of(descriptor)
            print("ℹ️  \(place): O_DIRECT alignment \(alignment)")
            let offset = Int64(2 * alignment.offsetAlignment)
            var buffer = try AlignedBuffer(byteCount: max(2 * alignment.offsetAlignment, 8192), for: alignment)
            buffer.withUnsafeMutableBytes { bytes in
                for index in bytes.indices { bytes[index] = UInt8(truncatingIfNeeded: index &* 7 &+ 1) }
            }
            try alignment.validate(buffer, offset: offset, descriptor: descriptor)
            let written = buffer.withUnsafeBytes { Glibc.pwrite(fd, $0.baseAddress!, $0.count, off_t(offset)) }
            #expect(written == buffer.byteCount, "\(place): \(written < 0 ? "\(Errno(rawValue: errno))" : "\(written)")")
            // Read back through the page cache: the same bytes at that offset.
            let reader = try FileDescriptor.open(path, .readOnly)
            defer { try? reader.close() }
            var back = [UInt8](repeating: 0, count: buffer.byteCount)
            let read = try back.withUnsafeMutableBytes { try reader.read(fromAbsoluteOffset: offset, into: $0) }
            #expect(read == buffer.byteCount)
            #expect(buffer.withUnsafeBytes { Array($0) } == back, "\(place): read back")

            // Misaligned requests: validate refuses each; where the kernel reported the alignment,
            // the kernel refuses the same request with EINVAL (the rule is not stricter than it).
            let base = buffer.withUnsafeBytes { $0.baseAddress! }
            let count = alignment.offsetAlignment
            var cases: [(String, UnsafeRawPointer, Int, Int64)] = []
            // The kernel's memory check depends on the layout: Linux 6.18 takes a misaligned buffer
            // whose pieces per page are multiples of the logical block size (512 bytes inside one
            // page), so the misaligned transfer here spans a page boundary, as a real one would.
            let pageSpanning = (4096 + alignment.offsetAlignment - 1) / alignment.offsetAlignment * alignment.offsetAlignment
            if alignment.memoryAlignment > 1, alignment.memoryAlignment / 2 + pageSpanning <= buffer.byteCount {
                cases.append(("address", base + alignment.memoryAlignment / 2, pageSpanning, 0))
            }
            if alignment.offsetAlignment > 1 {
                cases.append(("offset", base, count, Int64(alignment.offsetAlignment / 2)))
                cases.append(("length", base, count / 2, 0))
            }
            for (what, address, length, at) in cases {
                #expect(throws: AsyncSyncError.self, "\(place): misaligned \(what)") {
                    try alignment.validate(address: address, count: length, offset: at, descriptor: descriptor)
                }
                let result = Glibc.pwrite(fd, address, length, off_t(at))
                let failure = result < 0 ? Errno(rawValue: errno) : nil
                if alignment.isReportedByKernel {
                    #expect(result == -1 && failure == .invalidArgument,
                            "\(place): the kernel refuses a misaligned \(what) too (got \(result), \(String(describing: failure)))")
                } else {
                    print("ℹ️  \(place): misaligned \(what) under the fallback rule: the kernel answered \(result) \(failure.map { "\($0)" } ?? "")")
                }
            }
        }

        @Test("on the disk of the working tree: the discovered alignment works for a real O_DIRECT pwrite; misaligned is refused")
        func onDisk() throws {
            let scratch = try ScratchDirectory.onDisk()
            try Self.exercise(scratch.path.appending("direct"), where: "disk (magic \(String(scratch.fileSystemMagic ?? -1, radix: 16)))")
        }

        @Test("on tmpfs: O_DIRECT is refused at open (before Linux 6.6) or works with the fallback alignment")
        func onTmpfs() throws {
            let scratch = try ScratchDirectory.onTmpfs()
            #expect(scratch.fileSystemMagic == FileSystemMagic.tmpfs)
            try Self.exercise(scratch.path.appending("direct"), where: "tmpfs")
        }

        @Test("on a loop-mounted ext4: the kernel reports the alignment, and it is exact")
        func onLoopExt4() throws {
            guard TestEnvironment.require(LoopExt4.canRun, "needs root, /dev/loop-control and mkfs.ext4") else { return }
            let ext4 = try LoopExt4(thin: false)
            let path = ext4.mountPoint.appending("direct")
            try Self.exercise(path, where: "loop ext4")
            let fd = try FileDescriptor.open(path, .readOnly)
            defer { try? fd.close() }
            #expect(try DirectIOAlignment.of(fd).isReportedByKernel, "ext4 reports STATX_DIOALIGN since Linux 6.1")
        }
    }
}
#endif  // os(Linux)
