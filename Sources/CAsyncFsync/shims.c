#if defined(__linux__)
#define _GNU_SOURCE
#endif
#include "CAsyncFsync.h"

#include <string.h>
#include <pthread.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <errno.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/vfs.h>
#include <sys/sysmacros.h>
#else
#include <sys/param.h>
#include <sys/mount.h>
#endif
#if CASYNCFSYNC_LINUX_AIO
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <linux/kcmp.h>
#endif

int casyncfsync_errno(void) { return errno; }

#if CASYNCFSYNC_LINUX_AIO

// syscall(2) returns -1 and sets errno; turn that into libaio's -errno.
static long negative_errno(long rc) { return rc < 0 ? -(long)errno : rc; }

long casyncfsync_io_setup(unsigned nr_events, aio_context_t *ctx) {
    return negative_errno(syscall(SYS_io_setup, nr_events, ctx));
}

long casyncfsync_io_destroy(aio_context_t ctx) {
    return negative_errno(syscall(SYS_io_destroy, ctx));
}

long casyncfsync_io_submit(aio_context_t ctx, long nr, struct iocb **iocbs) {
    return negative_errno(syscall(SYS_io_submit, ctx, nr, iocbs));
}

long casyncfsync_io_getevents(aio_context_t ctx, long min_nr, long nr,
                              struct io_event *events, struct timespec *timeout) {
    return negative_errno(syscall(SYS_io_getevents, ctx, min_nr, nr, events, timeout));
}

void casyncfsync_prep_sync(struct iocb *cb, int fd, int datasync, uint64_t data, int resfd) {
    memset(cb, 0, sizeof *cb);
    cb->aio_data = data;
    cb->aio_lio_opcode = datasync ? IOCB_CMD_FDSYNC : IOCB_CMD_FSYNC;
    cb->aio_fildes = (uint32_t)fd;
    if (resfd >= 0) {
        cb->aio_flags = IOCB_FLAG_RESFD;
        cb->aio_resfd = (uint32_t)resfd;
    }
}

void casyncfsync_prep_write(struct iocb *cb, int fd, const void *buf, uint64_t count, int64_t offset,
                            int dsync, uint64_t data, int resfd) {
    memset(cb, 0, sizeof *cb);
    cb->aio_data = data;
    cb->aio_lio_opcode = IOCB_CMD_PWRITE;
    cb->aio_fildes = (uint32_t)fd;
    cb->aio_buf = (uint64_t)(uintptr_t)buf;
    cb->aio_nbytes = count;
    cb->aio_offset = offset;
    cb->aio_rw_flags = dsync ? 0x00000002 /* RWF_DSYNC */ : 0;
    if (resfd >= 0) {
        cb->aio_flags = IOCB_FLAG_RESFD;
        cb->aio_resfd = (uint32_t)resfd;
    }
}

// The header the kernel keeps at the start of a context's ring (fs/aio.c, struct aio_ring).
struct ring_header {
    unsigned id, nr, head, tail, magic, compat_features, incompat_features, header_length;
};
#define RING_MAGIC 0xa10a10a1u

long casyncfsync_ring_reap(aio_context_t ctx, struct io_event *events, long max) {
    struct ring_header *ring = (struct ring_header *)(uintptr_t)ctx;
    if (ring == NULL || ring->magic != RING_MAGIC || ring->incompat_features != 0
        || ring->header_length < sizeof *ring || ring->nr == 0) {
        return -ENOSYS;
    }
    struct io_event *ring_events = (struct io_event *)((char *)ring + ring->header_length);
    unsigned nr = ring->nr;
    unsigned head = ring->head;  // this thread is the only consumer
    // The kernel writes the events, then (after a write barrier) the tail.
    unsigned tail = __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE);
    if (head >= nr || tail >= nr) return -ENOSYS;
    long count = 0;
    while (head != tail && count < max) {
        events[count++] = ring_events[head];
        if (++head >= nr) head = 0;
    }
    // The slots are free for the kernel once it sees the new head.
    __atomic_store_n(&ring->head, head, __ATOMIC_RELEASE);
    return count;
}

void casyncfsync_aiocb_prep(struct aiocb *cb, int fd) {
    memset(cb, 0, sizeof *cb);
    cb->aio_fildes = fd;
    cb->aio_sigevent.sigev_notify = SIGEV_NONE;
}

void casyncfsync_aiocb_prep_read(struct aiocb *cb, int fd, void *buf, size_t len) {
    casyncfsync_aiocb_prep(cb, fd);
    cb->aio_buf = buf;
    cb->aio_nbytes = len;
}

int casyncfsync_aio_fsync(int datasync, struct aiocb *cb) {
    return aio_fsync(datasync ? O_DSYNC : O_SYNC, cb);
}

int casyncfsync_aio_read(struct aiocb *cb) { return aio_read(cb); }

void casyncfsync_aiocb_prep_write(struct aiocb *cb, int fd, const void *buf, size_t len, int64_t offset) {
    casyncfsync_aiocb_prep(cb, fd);
    cb->aio_buf = (volatile void *)buf;
    cb->aio_nbytes = len;
    cb->aio_offset = offset;
}

int casyncfsync_aio_write(struct aiocb *cb) { return aio_write(cb); }
int casyncfsync_aio_error(const struct aiocb *cb) { return aio_error(cb); }
long casyncfsync_aio_return(struct aiocb *cb) { return (long)aio_return(cb); }

int casyncfsync_aio_suspend(const struct aiocb *const list[], int n, const struct timespec *timeout) {
    return aio_suspend(list, n, timeout);
}

int casyncfsync_aio_cancel(int fd, struct aiocb *cb) { return aio_cancel(fd, cb); }

const int casyncfsync_EINPROGRESS = EINPROGRESS;
const int casyncfsync_AIO_NOTCANCELED = AIO_NOTCANCELED;


int casyncfsync_eventfd(void) { return eventfd(0, EFD_CLOEXEC); }

int casyncfsync_eventfd_read(int fd, uint64_t *value) {
    ssize_t n = read(fd, value, sizeof *value);
    if (n == (ssize_t)sizeof *value) return 0;
    if (n >= 0) errno = EIO;
    return -1;
}

int casyncfsync_memfd(const char *name) { return memfd_create(name, MFD_CLOEXEC); }

int casyncfsync_kcmp_file(int fd1, int fd2) {
#ifdef SYS_kcmp
    pid_t self = getpid();  // not cached: a forked child must compare its own descriptors
    return (int)syscall(SYS_kcmp, self, self, KCMP_FILE, fd1, fd2);
#else
    errno = ENOSYS;
    return -1;
#endif
}
#endif  // CASYNCFSYNC_LINUX_AIO

// initial-exec: read without a __tls_get_addr call (the shim is linked into the program).
static __thread void *thread_marker __attribute__((tls_model("initial-exec")));
void casyncfsync_set_thread_marker(void *marker) { thread_marker = marker; }
void *casyncfsync_thread_marker(void) { return thread_marker; }

int casyncfsync_fstatfs_type(int fd, long *type) {
    struct statfs info;
    int rc = fstatfs(fd, &info);
    if (rc == 0) *type = (long)info.f_type;
    return rc;
}

void casyncfsync_set_thread_name(const char *name) {
    char shortName[16];
    strncpy(shortName, name, sizeof shortName - 1);
    shortName[sizeof shortName - 1] = 0;
#if defined(__APPLE__)
    pthread_setname_np(shortName);  // Darwin names the calling thread only
#else
    pthread_setname_np(pthread_self(), shortName);
#endif
}

#if defined(O_PATH)
const int casyncfsync_O_PATH = O_PATH;
#else
const int casyncfsync_O_PATH = 0;
#endif
const int casyncfsync_F_DUPFD_CLOEXEC = F_DUPFD_CLOEXEC;
#ifdef O_DIRECT
const int casyncfsync_O_DIRECT = O_DIRECT;
#else
const int casyncfsync_O_DIRECT = 0;  // Darwin: F_NOCACHE instead, out of scope
#endif

int casyncfsync_full_fsync(int fd) {
#if defined(F_FULLFSYNC)
    return fcntl(fd, F_FULLFSYNC);
#else
    (void)fd;
    errno = ENOTSUP;
    return -1;
#endif
}

int casyncfsync_file_status(int fd, uint64_t *device, uint64_t *inode, unsigned *type) {
#if defined(__linux__) && defined(STATX_INO)
    struct statx info;
    if (statx(fd, "", AT_EMPTY_PATH, STATX_TYPE | STATX_INO, &info) == 0) {
        *device = (uint64_t)makedev(info.stx_dev_major, info.stx_dev_minor);
        *inode = (uint64_t)info.stx_ino;
        *type = (unsigned)(info.stx_mode & S_IFMT);
        return 0;
    }
    if (errno != ENOSYS) return -1;
#endif
    struct stat fallback;
    if (fstat(fd, &fallback) != 0) return -1;
    *device = (uint64_t)fallback.st_dev;
    *inode = (uint64_t)fallback.st_ino;
    *type = (unsigned)(fallback.st_mode & S_IFMT);
    return 0;
}

// The direct I/O alignments of statx(2) (Linux 6.1+). glibc takes struct statx from the kernel's
// <linux/stat.h> when it is installed; without it (or with headers older than 6.1) the struct has
// no stx_dio_* fields, so the shim then declares the kernel's layout itself (a stable ABI: the
// struct only grows into its spare space).
#if defined(__linux__) && defined(STATX_INO)
#if defined(STATX_DIOALIGN) && !defined(CASYNCFSYNC_OWN_STATX)
typedef struct statx dio_statx;
#else
#ifndef STATX_DIOALIGN
#define STATX_DIOALIGN 0x00002000U
#endif
typedef struct {
    uint32_t stx_mask, stx_blksize;
    uint64_t stx_attributes;
    uint32_t stx_nlink, stx_uid, stx_gid;
    uint16_t stx_mode, spare0;
    uint64_t stx_ino, stx_size, stx_blocks, stx_attributes_mask;
    struct { int64_t sec; uint32_t nsec; int32_t reserved; } stx_times[4];
    uint32_t stx_rdev_major, stx_rdev_minor, stx_dev_major, stx_dev_minor;
    uint64_t stx_mnt_id;
    uint32_t stx_dio_mem_align, stx_dio_offset_align;
    uint64_t spare3[12];
} dio_statx;
_Static_assert(sizeof(dio_statx) == 0x100, "the kernel's struct statx is 256 bytes");
_Static_assert(__builtin_offsetof(dio_statx, stx_dio_mem_align) == 0x98, "stx_dio_mem_align at 0x98");
#endif
#endif

int casyncfsync_dio_alignment(int fd, int *reported, uint32_t *memory, uint32_t *offset, uint32_t *block_size) {
    *reported = 0;
    *memory = *offset = 0;
#if defined(__linux__) && defined(STATX_INO)
    dio_statx info;
    memset(&info, 0, sizeof info);
    if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, (struct statx *)&info) == 0) {
        *block_size = info.stx_blksize;
        if (info.stx_mask & STATX_DIOALIGN) {
            *reported = 1;
            *memory = info.stx_dio_mem_align;
            *offset = info.stx_dio_offset_align;
        }
        return 0;
    }
    if (errno != ENOSYS) return -1;
#endif
    struct stat fallback;
    if (fstat(fd, &fallback) != 0) return -1;
    *block_size = fallback.st_blksize > 0 ? (uint32_t)fallback.st_blksize : 0;
    return 0;
}
