// Thin C shims for AsyncFsync. Every function here is one system call or one glibc call with
// its arguments unchanged; Sources/AsyncFsync/Internal/Syscalls.swift is the only caller.
//
// Kernel AIO is reached through the raw syscalls of <linux/aio_abi.h> instead of libaio.so,
// so the library loads on hosts without libaio (see docs/design.md). The io_* shims keep
// libaio's convention: they return -errno on failure and leave errno alone.
#ifndef C_ASYNC_FSYNC_H
#define C_ASYNC_FSYNC_H

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

// The Linux-only part (kernel AIO, glibc's POSIX aio, eventfd, memfd) is compiled only on Linux
// with glibc and without ASYNC_FSYNC_PORTABLE (the Swift side: `os(Linux) && canImport(Glibc) &&
// !ASYNC_FSYNC_PORTABLE`). With that condition (`-Xcc -DASYNC_FSYNC_PORTABLE`) a Linux build sees
// exactly what macOS or musl sees: the portable part below. (__GLIBC__ comes with the headers above.)
#if defined(__linux__) && defined(__GLIBC__) && !defined(ASYNC_FSYNC_PORTABLE)
#define CASYNCFSYNC_LINUX_AIO 1
#endif

#if CASYNCFSYNC_LINUX_AIO
#include <aio.h>
#include <linux/aio_abi.h>
#endif

/// errno of the calling thread, read right after a glibc call.
int casyncfsync_errno(void);

#if CASYNCFSYNC_LINUX_AIO

// MARK: Kernel AIO (libaio convention: result or -errno)
long casyncfsync_io_setup(unsigned nr_events, aio_context_t *ctx);
long casyncfsync_io_destroy(aio_context_t ctx);
long casyncfsync_io_submit(aio_context_t ctx, long nr, struct iocb **iocbs);
long casyncfsync_io_getevents(aio_context_t ctx, long min_nr, long nr,
                              struct io_event *events, struct timespec *timeout);

/// Prepares `cb` like libaio's io_prep_fsync / io_prep_fdsync: IOCB_CMD_FSYNC when
/// `datasync` is 0, IOCB_CMD_FDSYNC otherwise. Clears every other field. With `resfd` >= 0 the
/// kernel also adds 1 to that eventfd when the request completes (IOCB_FLAG_RESFD).
void casyncfsync_prep_sync(struct iocb *cb, int fd, int datasync, uint64_t data, int resfd);

/// Prepares `cb` as an IOCB_CMD_PWRITE of `count` bytes at `buf` to `offset`, like libaio's
/// io_prep_pwrite; `dsync` sets `aio_rw_flags = RWF_DSYNC` (the write completes once its data is
/// durable). Clears every other field; `resfd` as for casyncfsync_prep_sync.
void casyncfsync_prep_write(struct iocb *cb, int fd, const void *buf, uint64_t count, int64_t offset,
                            int dsync, uint64_t data, int resfd);

/// Takes up to `max` completions from the context's ring in user space (the ring the kernel maps at
/// the context's address), as io_getevents(2) would, without a system call. Returns the number
/// taken, or -ENOSYS when the ring's header is not one this code knows (then use io_getevents).
/// Only one thread may reap a context, and never together with io_getevents(2) on it.
long casyncfsync_ring_reap(aio_context_t ctx, struct io_event *events, long max);

// MARK: glibc POSIX aio (aio_fsync/aio_suspend: -1 + errno; aio_error: the errno itself)
/// Clears `cb` and sets aio_fildes and SIGEV_NONE notification.
void casyncfsync_aiocb_prep(struct aiocb *cb, int fd);
/// Clears `cb` and prepares a one-byte-buffer read (used as the completion thread's doorbell).
void casyncfsync_aiocb_prep_read(struct aiocb *cb, int fd, void *buf, size_t len);
int casyncfsync_aio_fsync(int datasync, struct aiocb *cb);
int casyncfsync_aio_read(struct aiocb *cb);
/// Clears `cb` and prepares a write of `len` bytes at `buf` to `offset` (SIGEV_NONE).
void casyncfsync_aiocb_prep_write(struct aiocb *cb, int fd, const void *buf, size_t len, int64_t offset);
int casyncfsync_aio_write(struct aiocb *cb);
int casyncfsync_aio_error(const struct aiocb *cb);
long casyncfsync_aio_return(struct aiocb *cb);
int casyncfsync_aio_suspend(const struct aiocb *const list[], int n, const struct timespec *timeout);
int casyncfsync_aio_cancel(int fd, struct aiocb *cb);


// MARK: Descriptors (Linux only; glibc convention: -1 and errno)
/// eventfd(initial 0, EFD_CLOEXEC), blocking reads.
int casyncfsync_eventfd(void);
/// read(2) of an eventfd's 8-byte counter into *value; 0 or -1 and errno.
int casyncfsync_eventfd_read(int fd, uint64_t *value);
/// memfd_create(name, MFD_CLOEXEC).
int casyncfsync_memfd(const char *name);


/// kcmp(2) of two descriptors of this process with KCMP_FILE: 0 when both refer to one open file
/// description (one `struct file`), 1 or 2 when they do not (the kernel's order of the two), -1 and
/// errno on failure (ENOSYS: no kcmp in this kernel; EPERM: a seccomp filter or policy; EBADF).
/// Only the Linux engine shares syncs per open file description, so only it asks.
int casyncfsync_kcmp_file(int fd1, int fd2);

// MARK: Constants Swift does not import from macros (Linux part)
extern const int casyncfsync_EINPROGRESS;
extern const int casyncfsync_AIO_NOTCANCELED;
#endif  // CASYNCFSYNC_LINUX_AIO

/// statx(2) of fd asking STATX_DIOALIGN (Linux 6.1+): where the kernel and the file system report
/// it (*reported = 1), the memory and file-offset alignments O_DIRECT needs on this file (both 0:
/// the file does not support O_DIRECT); always the file's block size (stx_blksize). Where statx is
/// missing (ENOSYS) or on other systems, fstat(2)'s st_blksize and *reported = 0. 0 or -1 and errno.
int casyncfsync_dio_alignment(int fd, int *reported, uint32_t *memory, uint32_t *offset, uint32_t *block_size);

// MARK: Every platform (-1 and errno)
/// fstatfs(fd)->f_type into *type; 0 or -1 and errno (Linux: the file system's magic number;
/// elsewhere the system's own numbering).
int casyncfsync_fstatfs_type(int fd, long *type);

/// The file's device (st_dev encoding), inode and type (the S_IFMT bits of st_mode); 0 or -1 and
/// errno. On Linux asks statx(2) for the inode and type only: a stat(2) that reads the timestamps marks them
/// as queried (multigrain timestamps, Linux 6.13+), so the next write dirties the inode and the
/// next fdatasync commits the journal (+40-60 µs per sync on ext4, measured). Falls back to
/// fstat(2) where statx is missing (ENOSYS), and uses fstat(2) on other systems.
int casyncfsync_file_status(int fd, uint64_t *device, uint64_t *inode, unsigned *type);

/// The completion thread a thread is (or NULL): a thread-local marker its loop sets once.
void casyncfsync_set_thread_marker(void *marker);
void *casyncfsync_thread_marker(void);
/// pthread_setname_np(pthread_self(), name); name is cut to 15 bytes.
void casyncfsync_set_thread_name(const char *name);

/// fcntl(fd, F_FULLFSYNC) on Darwin (the sync that also flushes the drive's cache); -1 and
/// ENOTSUP elsewhere. 0 or -1 and errno.
int casyncfsync_full_fsync(int fd);

// MARK: Constants Swift does not import from macros (every platform)
/// O_PATH where the system has it (Linux), 0 elsewhere (no descriptor has the flag).
extern const int casyncfsync_O_PATH;
extern const int casyncfsync_F_DUPFD_CLOEXEC;
/// O_DIRECT (needs _GNU_SOURCE, so Swift does not see it; its value differs between architectures);
/// 0 where the system has none.
extern const int casyncfsync_O_DIRECT;

#endif
