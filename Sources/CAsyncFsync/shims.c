#define _GNU_SOURCE
#include "CAsyncFsync.h"

#include <string.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <fcntl.h>
#include <errno.h>
#include <unistd.h>

int casyncfsync_errno(void) { return errno; }

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

void casyncfsync_prep_sync(struct iocb *cb, int fd, int datasync, uint64_t data) {
    memset(cb, 0, sizeof *cb);
    cb->aio_data = data;
    cb->aio_lio_opcode = datasync ? IOCB_CMD_FDSYNC : IOCB_CMD_FSYNC;
    cb->aio_fildes = (uint32_t)fd;
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
int casyncfsync_aio_error(const struct aiocb *cb) { return aio_error(cb); }
long casyncfsync_aio_return(struct aiocb *cb) { return (long)aio_return(cb); }

int casyncfsync_aio_suspend(const struct aiocb *const list[], int n, const struct timespec *timeout) {
    return aio_suspend(list, n, timeout);
}

int casyncfsync_aio_cancel(int fd, struct aiocb *cb) { return aio_cancel(fd, cb); }


int casyncfsync_eventfd(void) { return eventfd(0, EFD_CLOEXEC); }
int casyncfsync_memfd(const char *name) { return memfd_create(name, MFD_CLOEXEC); }

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
    pthread_setname_np(pthread_self(), shortName);
}

const int casyncfsync_EINPROGRESS = EINPROGRESS;
const int casyncfsync_AIO_NOTCANCELED = AIO_NOTCANCELED;

int casyncfsync_file_identity(int fd, uint64_t *device, uint64_t *inode, int *is_regular) {
    struct statx info;
    if (statx(fd, "", AT_EMPTY_PATH, STATX_TYPE | STATX_INO, &info) == 0) {
        *device = (uint64_t)makedev(info.stx_dev_major, info.stx_dev_minor);
        *inode = (uint64_t)info.stx_ino;
        *is_regular = S_ISREG(info.stx_mode);
        return 0;
    }
    if (errno != ENOSYS) return -1;
    struct stat fallback;
    if (fstat(fd, &fallback) != 0) return -1;
    *device = (uint64_t)fallback.st_dev;
    *inode = (uint64_t)fallback.st_ino;
    *is_regular = S_ISREG(fallback.st_mode);
    return 0;
}
