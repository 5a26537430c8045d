// C helpers for the tests only; the library never links this.
#ifndef C_TEST_SUPPORT_H
#define C_TEST_SUPPORT_H

/// aio_init with `threads` helper threads at most (glibc's process-wide tuning).
void testsupport_aio_init(int threads, int requests);
/// Whether the ThreadSanitizer runtime is loaded in this process.
int testsupport_tsan_loaded(void);
/// ioctl(fd, EXT4_IOC_SHUTDOWN, EXT4_GOING_FLAGS_NOLOGFLUSH): 0 or -errno.
int testsupport_ext4_shutdown(int fd);
/// statfs(path)->f_type, or -errno.
long testsupport_fs_magic(const char *path);
/// The calling thread's name (pthread_getname_np) into buffer; 0 or an errno.
int testsupport_thread_name(char *buffer, unsigned long size);
/// Sends `fd` over a UNIX socket pair (SCM_RIGHTS) and returns the descriptor received: a new
/// number for the same open file description, as a descriptor inherited from a parent is; -errno.
int testsupport_pass_descriptor(int fd);

#endif
