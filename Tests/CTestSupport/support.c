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
#include <sys/socket.h>
#include <unistd.h>
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

// Darwin has neither flag; the descriptors then stay open across exec (a test helper only).
#if !defined(SOCK_CLOEXEC)
#define SOCK_CLOEXEC 0
#endif
#if !defined(MSG_CMSG_CLOEXEC)
#define MSG_CMSG_CLOEXEC 0
#endif

int testsupport_pass_descriptor(int fd) {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) return -errno;
    char byte = 0;
    struct iovec data = { .iov_base = &byte, .iov_len = 1 };
    union { char buffer[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
    memset(&control, 0, sizeof control);
    struct msghdr message = { .msg_iov = &data, .msg_iovlen = 1,
                              .msg_control = control.buffer, .msg_controllen = sizeof control.buffer };
    struct cmsghdr *header = CMSG_FIRSTHDR(&message);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(header), &fd, sizeof(int));
    int result = -1;
    if (sendmsg(pair[0], &message, 0) != 1) {
        result = -errno;
    } else {
        memset(&control, 0, sizeof control);
        message.msg_controllen = sizeof control.buffer;
        if (recvmsg(pair[1], &message, MSG_CMSG_CLOEXEC) != 1) {
            result = -errno;
        } else {
            header = CMSG_FIRSTHDR(&message);
            if (header == NULL || header->cmsg_type != SCM_RIGHTS) result = -EPROTO;
            else memcpy(&result, CMSG_DATA(header), sizeof(int));
        }
    }
    close(pair[0]);
    close(pair[1]);
    return result;
}
