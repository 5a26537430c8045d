import CAsyncFsync
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Runs one real sync through a backend's mechanism, with a timeout, and cleans up after it.
struct Prober {
    var system: SystemCalls = .live
    var timeout: Duration = .seconds(2)

    func probe(_ kind: BackendKind, in directory: FilePath) -> BackendProbe {
        let start = system_monotonic_now()
        let failure: AsyncSyncError?
        switch makeScratchFile(in: directory, kind: kind) {
        case .failure(let error):
            failure = error
        case .success(let fd):
            switch kind {
            case .libaio: failure = probeLibaio(fd)
            case .posix: failure = probePosix(fd)
            }
        }
        return BackendProbe(kind: kind, failure: failure, directory: directory,
                            duration: system_monotonic_now() - start)
    }

    private func error(
        _ kind: BackendKind, _ errno: Errno?, step: AsyncSyncError.Step, call: String, message: String = "",
        descriptor: FileDescriptor? = nil
    ) -> AsyncSyncError {
        AsyncSyncError(code: .backendUnavailable, errno: errno, operation: .probe, step: step, backend: kind,
                       descriptor: descriptor, systemCall: call, message: message)
    }

    /// An unlinked file holding one byte, so the sync has something to write.
    private func makeScratchFile(in directory: FilePath, kind: BackendKind) -> Result<FileDescriptor, AsyncSyncError> {
        let name = ".asyncfsync-probe-\(system_getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let path = directory.appending(name)
        do {
            let fd = try FileDescriptor.open(path, .readWrite, options: [.create, .exclusiveCreate, .closeOnExec],
                                             permissions: [.ownerReadWrite])
            _ = system_unlink(path.string)
            do {
                _ = try fd.writeAll([0x2a])
            } catch {
                try? fd.close()
                throw error
            }
            return .success(fd)
        } catch let errno as Errno {
            return .failure(self.error(kind, errno, step: .setup, call: "open",
                                       message: "cannot create a scratch file in \(directory)"))
        } catch {
            return .failure(self.error(kind, nil, step: .setup, call: "open", message: "\(error)"))
        }
    }

    private var timeoutSpec: timespec {
        let (seconds, attoseconds) = timeout.components
        return timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
    }

    private var timeoutMessage: String {
        "no completion within \(BackendProbe.milliseconds(timeout)) ms (a stuck file system?)"
    }

    private func probeLibaio(_ fd: FileDescriptor) -> AsyncSyncError? {
        var context = aio_context_t()
        if case .failure(let errno) = system.ioSetup(1, &context) {
            try? fd.close()
            return error(.libaio, errno, step: .setup, call: "io_setup", message: LibaioDriver.setupHint(errno))
        }
        let control = UnsafeMutablePointer<iocb>.allocate(capacity: 1)
        casyncfsync_prep_sync(control, fd.rawValue, 1, 1)
        var pointer: UnsafeMutablePointer<iocb>? = control
        let owned = Unchecked(control)
        let cleanUp: @Sendable () -> Void = { [system, context] in
            _ = system.ioDestroy(context)  // waits for a request still in flight
            try? fd.close()
            owned.value.deallocate()
        }
        switch system.ioSubmit(context, 1, &pointer) {
        case .success(1): break
        case .success:
            cleanUp()
            return error(.libaio, .resourceTemporarilyUnavailable, step: .submit, call: "io_submit")
        case .failure(let errno):
            cleanUp()
            let hint = errno == .invalidArgument
                ? "IOCB_CMD_FDSYNC refused: kernel older than 4.18 or a file system without AIO fsync"
                : LibaioDriver.setupHint(errno)
            return error(.libaio, errno, step: .submit, call: "io_submit", message: hint)
        }
        var event = io_event()
        var deadline = timeoutSpec
        var result: AsyncSyncError?
        switch system.ioGetevents(context, 1, 1, &event, &deadline) {
        case .success(1):
            if case .failure(let errno) = valueOrNegatedErrno(event.res) {
                result = error(.libaio, errno, step: .completion, call: "io_getevents", descriptor: fd)
            }
        case .success:
            result = error(.libaio, nil, step: .completion, call: "io_getevents", message: timeoutMessage)
            _ = system_start_thread(name: "asyncfsync-probe", cleanUp)
            return result
        case .failure(let errno):
            result = error(.libaio, errno, step: .completion, call: "io_getevents")
        }
        cleanUp()
        return result
    }

    private func probePosix(_ fd: FileDescriptor) -> AsyncSyncError? {
        let control = UnsafeMutablePointer<aiocb>.allocate(capacity: 1)
        casyncfsync_aiocb_prep(control, fd.rawValue)
        if case .failure(let errno) = system.aioFsync(.fdatasync, control) {
            try? fd.close()
            control.deallocate()
            return error(.posix, errno, step: .submit, call: "aio_fsync")
        }
        var list: UnsafePointer<aiocb>? = UnsafePointer(control)
        var deadline = timeoutSpec
        let start = system_monotonic_now()
        while system.aioError(control) == .inProgress, system_monotonic_now() - start < timeout {
            _ = system.aioSuspend(&list, 1, &deadline)
        }
        let status = system.aioError(control)
        if status == .inProgress {
            // glibc still owns the aiocb: free it only once the sync has finished.
            let owned = Unchecked(control)
            _ = system_start_thread(name: "asyncfsync-probe") { [system] in
                let control = owned.value
                var list: UnsafePointer<aiocb>? = UnsafePointer(control)
                while system.aioError(control) == .inProgress { _ = system.aioSuspend(&list, 1, nil) }
                _ = system.aioReturn(control)
                try? fd.close()
                control.deallocate()
            }
            return error(.posix, nil, step: .completion, call: "aio_suspend", message: timeoutMessage)
        }
        _ = system.aioReturn(control)
        try? fd.close()
        control.deallocate()
        if case .failed(let errno) = status {
            return error(.posix, errno, step: .completion, call: "aio_error", descriptor: fd)
        }
        return nil
    }
}

/// A value handed to another thread whose owner guarantees exclusive use.
struct Unchecked<Value>: @unchecked Sendable {
    var value: Value
    init(_ value: Value) { self.value = value }
}
