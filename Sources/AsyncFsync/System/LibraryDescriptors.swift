/// Where the library keeps the descriptors it opens itself: the completion threads' eventfds, and
/// the directory, scratch file or memfd of a probe.
///
/// `open(2)` and its kin return the lowest free number, so a descriptor the library opens lazily
/// would often take the number a caller has just closed; a sync of that closed number would then
/// act on the library's eventfd (`EINVAL`) or scratch file (success) instead of failing with
/// `EBADF`. Each such descriptor is therefore moved at once to the lowest free number at or above
/// ``floor`` (`fcntl(2)` `F_DUPFD_CLOEXEC`, then the original is closed), out of the range that
/// new descriptors take first. The library never acts on a descriptor of its own for a caller,
/// and a caller's closed descriptor gives `EBADF`.
enum LibraryDescriptors {
    /// The floor when the descriptor limit allows it.
    static var preferredFloor: CInt { 1024 }

    /// 1024, or half the soft `RLIMIT_NOFILE` when that is below 2048 (the common soft limit of
    /// 1024 gives 512), so that the floor leaves room for the caller's descriptors below it and the
    /// library's above it. Read at each use: a process may raise its limit.
    static var floor: CInt {
        guard case .success(let limit) = system_getrlimit_nofile() else { return preferredFloor }
        return CInt(clamping: min(UInt64(preferredFloor), limit / 2))
    }

    /// `fd`, just opened by the library, moved to the lowest free number at or above ``floor``
    /// (the original is closed). When no number there is free (the limit is low or reached), `fd`
    /// stays where it is: the library still works, without this protection.
    static func movedAboveFloor(_ fd: CInt) -> CInt {
        let floor = floor
        guard fd >= 0, fd < floor else { return fd }
        guard case .success(let moved) = system_fcntl_dupfd_cloexec(fd, floor) else { return fd }
        _ = system_close(fd)
        return moved
    }
}
