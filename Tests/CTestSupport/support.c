#if defined(__linux__)
#define _GNU_SOURCE
#endif
#include "CTestSupport.h"

#include <pthread.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#if defined(__linux__)
#include <aio.h>
#include <sys/vfs.h>
#else
#include <sys/param.h>
#include <sys/mount.h>
#endif

void testsupport_aio_init(int threads, int requests) {
#if defined(__GLIBC__)
    struct aioinit init;
    memset(&init, 0, sizeof init);
    init.aio_threads = threads;
    init.aio_num = requests;
    init.aio_idle_time = 1;
    aio_init(&init);
#else
    (void)threads;
    (void)requests;  // glibc's tuning; nothing to do elsewhere
#endif
}

int testsupport_tsan_loaded(void) { return dlsym(RTLD_DEFAULT, "__tsan_init") != NULL; }

#define EXT4_IOC_SHUTDOWN_REQUEST 0x8004587DUL  /* _IOR('X', 125, __u32) */
#define EXT4_GOING_FLAGS_NOLOGFLUSH 2

int testsupport_ext4_shutdown(int fd) {
#if defined(__linux__)
    uint32_t flags = EXT4_GOING_FLAGS_NOLOGFLUSH;
    return ioctl(fd, EXT4_IOC_SHUTDOWN_REQUEST, &flags) == 0 ? 0 : -errno;
#else
    (void)fd;
    return -ENOTSUP;
#endif
}

long testsupport_fs_magic(const char *path) {
    struct statfs info;
    return statfs(path, &info) == 0 ? (long)info.f_type : -errno;
}

int testsupport_thread_name(char *buffer, unsigned long size) {
    return pthread_getname_np(pthread_self(), buffer, size);
}
