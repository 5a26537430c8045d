// faultfs: a passthrough FUSE file system whose fsync handler injects errnos, for tests.
//
//   faultfs BACKING_DIR MOUNTPOINT [-f] [-o auto_unmount,...]
//
// Control: the virtual file /.faultfs at the mount root. Write one line of key=value words:
//   errno=EIO|ENOSPC|EDQUOT|EROFS|EPERM|ENOMEM|ENOTCONN|EINTR|EACCES|<number>|0
//   op=fsync|fdatasync|both     which requests the fault applies to (default both)
//   count=N                     fail only the next N matching requests (-1: every one)
//   match=SUBSTRING             fail only paths containing SUBSTRING (empty: all)
//   delay_ms=N                  sleep before answering every fsync/fdatasync
//   reset                       everything back to defaults, counters to zero
// Read it for one line: fsync=N fdatasync=N injected=N errno=N op=... count=N match=... delay_ms=N
//   inflight=N max_inflight=N   (fsync handlers running now / the most at once since the reset)
//   write_errno=N failed_writes=N
// Control also takes write_errno=EIO (writes of file data fail; 0 = none). Mount option
// --writeback-cache makes the kernel cache writes and send them at writeback.
// ENOSYS and errnos >= 512 are refused: the kernel would treat the first as "fsync not needed"
// forever and hang callers on the second.
#define FUSE_USE_VERSION 31
#define _GNU_SOURCE

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <fuse_lowlevel.h>  // fuse_parse_cmdline
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define CONTROL_PATH "/.faultfs"

static char backing[PATH_MAX];

static struct {
    pthread_mutex_t lock;
    int error;            // 0: no fault
    int ops;              // bit 1: fsync, bit 2: fdatasync
    long count;           // -1: unlimited
    char match[256];
    long delay_ms;
    long fsyncs, fdatasyncs, injected;
    long inflight, max_inflight;  // fsync handlers running now, and the most at once
    int write_error;              // 0: writes of file data succeed
    long failed_writes;
} state = {PTHREAD_MUTEX_INITIALIZER, 0, 3, -1, "", 0, 0, 0, 0, 0, 0, 0, 0};

// --writeback-cache: the kernel caches writes and sends them at writeback (during fsync).
static int writeback_cache = 0;

static void reset_state(void) {
    state.error = 0;
    state.ops = 3;
    state.count = -1;
    state.match[0] = 0;
    state.delay_ms = 0;
    state.fsyncs = state.fdatasyncs = state.injected = 0;
    state.max_inflight = state.inflight;
    state.write_error = 0;
    state.failed_writes = 0;
}

// With --writeback-cache the kernel reads pages of files opened write-only (to fill partial
// pages) and applies O_APPEND itself, writing back at explicit offsets: open the backing file
// read-write and without O_APPEND (as libfuse's passthrough example does), or those reads fail
// with EBADF and the writebacks land at the end of the file.
static int backing_flags(int flags) {
    if (!writeback_cache) return flags;
    if ((flags & O_ACCMODE) == O_WRONLY) flags = (flags & ~O_ACCMODE) | O_RDWR;
    return flags & ~O_APPEND;
}

static void full_path(char out[PATH_MAX], const char *path) {
    snprintf(out, PATH_MAX, "%s%s", backing, path);
}

static int is_control(const char *path) { return strcmp(path, CONTROL_PATH) == 0; }

static const struct { const char *name; int value; } errno_names[] = {
    {"EIO", EIO}, {"ENOSPC", ENOSPC}, {"EDQUOT", EDQUOT}, {"EROFS", EROFS}, {"EPERM", EPERM},
    {"ENOMEM", ENOMEM}, {"ENOTCONN", ENOTCONN}, {"EINTR", EINTR}, {"EACCES", EACCES},
};

static int parse_errno(const char *text) {
    for (size_t i = 0; i < sizeof errno_names / sizeof errno_names[0]; i++)
        if (strcmp(text, errno_names[i].name) == 0) return errno_names[i].value;
    char *end;
    long value = strtol(text, &end, 10);
    return (*text && !*end) ? (int)value : -1;
}

// Applies one control line; returns 0 or -EINVAL.
static int apply_control(char *line) {
    int result = 0;
    pthread_mutex_lock(&state.lock);
    for (char *save = NULL, *word = strtok_r(line, " \t\r\n", &save); word; word = strtok_r(NULL, " \t\r\n", &save)) {
        char *value = strchr(word, '=');
        if (strcmp(word, "reset") == 0) { reset_state(); continue; }
        if (!value) { result = -EINVAL; continue; }
        *value++ = 0;
        if (strcmp(word, "errno") == 0) {
            int e = parse_errno(value);
            if (e < 0 || e == ENOSYS || e >= 512) result = -EINVAL; else state.error = e;
        } else if (strcmp(word, "op") == 0) {
            if (strcmp(value, "fsync") == 0) state.ops = 1;
            else if (strcmp(value, "fdatasync") == 0) state.ops = 2;
            else if (strcmp(value, "both") == 0) state.ops = 3;
            else result = -EINVAL;
        } else if (strcmp(word, "count") == 0) {
            state.count = strtol(value, NULL, 10);
        } else if (strcmp(word, "match") == 0) {
            snprintf(state.match, sizeof state.match, "%s", value);
        } else if (strcmp(word, "delay_ms") == 0) {
            state.delay_ms = strtol(value, NULL, 10);
        } else if (strcmp(word, "write_errno") == 0) {
            int e = parse_errno(value);
            if (e < 0 || e >= 512) result = -EINVAL; else state.write_error = e;
        } else {
            result = -EINVAL;
        }
    }
    pthread_mutex_unlock(&state.lock);
    return result;
}

static int status_line(char *out, size_t size) {
    pthread_mutex_lock(&state.lock);
    int n = snprintf(out, size,
                     "fsync=%ld fdatasync=%ld injected=%ld errno=%d op=%s count=%ld match=%s delay_ms=%ld"
                     " inflight=%ld max_inflight=%ld write_errno=%d failed_writes=%ld\n",
                     state.fsyncs, state.fdatasyncs, state.injected, state.error,
                     state.ops == 1 ? "fsync" : state.ops == 2 ? "fdatasync" : "both",
                     state.count, state.match, state.delay_ms, state.inflight, state.max_inflight,
                     state.write_error, state.failed_writes);
    pthread_mutex_unlock(&state.lock);
    return n;
}

static int fs_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
    (void)fi;
    if (is_control(path)) {
        memset(st, 0, sizeof *st);
        st->st_mode = S_IFREG | 0666;
        st->st_nlink = 1;
        return 0;
    }
    char real[PATH_MAX];
    full_path(real, path);
    return lstat(real, st) == 0 ? 0 : -errno;
}

static int fs_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t offset,
                      struct fuse_file_info *fi, enum fuse_readdir_flags flags) {
    (void)offset; (void)fi; (void)flags;
    char real[PATH_MAX];
    full_path(real, path);
    DIR *dir = opendir(real);
    if (!dir) return -errno;
    for (struct dirent *entry; (entry = readdir(dir));) fill(buf, entry->d_name, NULL, 0, 0);
    closedir(dir);
    return 0;
}

static int fs_mkdir(const char *path, mode_t mode) {
    char real[PATH_MAX]; full_path(real, path);
    return mkdir(real, mode) == 0 ? 0 : -errno;
}

static int fs_unlink(const char *path) {
    char real[PATH_MAX]; full_path(real, path);
    return unlink(real) == 0 ? 0 : -errno;
}

static int fs_rmdir(const char *path) {
    char real[PATH_MAX]; full_path(real, path);
    return rmdir(real) == 0 ? 0 : -errno;
}

static int fs_rename(const char *from, const char *to, unsigned int flags) {
    if (flags) return -EINVAL;
    char a[PATH_MAX], b[PATH_MAX];
    full_path(a, from); full_path(b, to);
    return rename(a, b) == 0 ? 0 : -errno;
}

static int fs_chmod(const char *path, mode_t mode, struct fuse_file_info *fi) {
    (void)fi;
    char real[PATH_MAX]; full_path(real, path);
    return chmod(real, mode) == 0 ? 0 : -errno;
}

static int fs_truncate(const char *path, off_t size, struct fuse_file_info *fi) {
    if (is_control(path)) return 0;
    if (fi) return ftruncate((int)fi->fh, size) == 0 ? 0 : -errno;
    char real[PATH_MAX]; full_path(real, path);
    return truncate(real, size) == 0 ? 0 : -errno;
}

static int fs_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi) {
    (void)fi;
    if (is_control(path)) return 0;
    char real[PATH_MAX]; full_path(real, path);
    return utimensat(AT_FDCWD, real, tv, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : -errno;
}

static int fs_create(const char *path, mode_t mode, struct fuse_file_info *fi) {
    char real[PATH_MAX]; full_path(real, path);
    int fd = open(real, backing_flags(fi->flags), mode);
    if (fd < 0) return -errno;
    fi->fh = (uint64_t)fd;
    return 0;
}

static int fs_open(const char *path, struct fuse_file_info *fi) {
    if (is_control(path)) {
        fi->direct_io = 1;  // never cache the counters
        fi->fh = (uint64_t)-1;
        return 0;
    }
    char real[PATH_MAX]; full_path(real, path);
    int fd = open(real, backing_flags(fi->flags));
    if (fd < 0) return -errno;
    fi->fh = (uint64_t)fd;
    return 0;
}

static int fs_read(const char *path, char *buf, size_t size, off_t offset, struct fuse_file_info *fi) {
    if (is_control(path)) {
        char line[512];
        int n = status_line(line, sizeof line);
        if (offset >= n) return 0;
        size_t count = (size_t)(n - offset) < size ? (size_t)(n - offset) : size;
        memcpy(buf, line + offset, count);
        return (int)count;
    }
    ssize_t n = pread((int)fi->fh, buf, size, offset);
    return n < 0 ? -errno : (int)n;
}

static int fs_write(const char *path, const char *buf, size_t size, off_t offset, struct fuse_file_info *fi) {
    if (is_control(path)) {
        char line[512];
        size_t count = size < sizeof line - 1 ? size : sizeof line - 1;
        memcpy(line, buf, count);
        line[count] = 0;
        int result = apply_control(line);
        return result < 0 ? result : (int)size;
    }
    pthread_mutex_lock(&state.lock);
    int injected = state.write_error;
    if (injected) state.failed_writes++;
    pthread_mutex_unlock(&state.lock);
    if (injected) return -injected;
    ssize_t n = pwrite((int)fi->fh, buf, size, offset);
    return n < 0 ? -errno : (int)n;
}

static int fs_statfs(const char *path, struct statvfs *st) {
    (void)path;
    return statvfs(backing, st) == 0 ? 0 : -errno;
}

static int fs_flush(const char *path, struct fuse_file_info *fi) {
    (void)path;
    if (fi->fh == (uint64_t)-1) return 0;
    int copy = dup((int)fi->fh);  // close(dup) reports what close would
    if (copy < 0) return -errno;
    return close(copy) == 0 ? 0 : -errno;
}

static int fs_release(const char *path, struct fuse_file_info *fi) {
    (void)path;
    if (fi->fh != (uint64_t)-1) close((int)fi->fh);
    return 0;
}

static int fs_fsync(const char *path, int datasync, struct fuse_file_info *fi) {
    int injected = 0;
    long delay;
    pthread_mutex_lock(&state.lock);
    if (datasync) state.fdatasyncs++; else state.fsyncs++;
    int applies = state.error != 0 && (state.ops & (datasync ? 2 : 1)) && state.count != 0
        && (state.match[0] == 0 || strstr(path, state.match) != NULL);
    if (applies) {
        injected = state.error;
        state.injected++;
        if (state.count > 0) state.count--;
    }
    delay = state.delay_ms;
    if (++state.inflight > state.max_inflight) state.max_inflight = state.inflight;
    pthread_mutex_unlock(&state.lock);

    if (delay > 0) {
        struct timespec pause = {delay / 1000, (delay % 1000) * 1000000L};
        while (nanosleep(&pause, &pause) != 0 && errno == EINTR) {}
    }
    int rc = 0;
    if (injected) {
        rc = -injected;
    } else if (fi->fh != (uint64_t)-1) {
        rc = (datasync ? fdatasync((int)fi->fh) : fsync((int)fi->fh)) == 0 ? 0 : -errno;
    }
    pthread_mutex_lock(&state.lock);
    state.inflight--;
    pthread_mutex_unlock(&state.lock);
    return rc;
}

static int fs_fsyncdir(const char *path, int datasync, struct fuse_file_info *fi) {
    (void)fi;
    char real[PATH_MAX]; full_path(real, path);
    int fd = open(real, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -errno;
    int rc = datasync ? fdatasync(fd) : fsync(fd);
    int saved = errno;
    close(fd);
    return rc == 0 ? 0 : -saved;
}

static void *fs_init(struct fuse_conn_info *conn, struct fuse_config *cfg) {
    if (writeback_cache) conn->want |= FUSE_CAP_WRITEBACK_CACHE;
    cfg->use_ino = 1;
    cfg->entry_timeout = cfg->attr_timeout = cfg->negative_timeout = 0;
    return NULL;
}

static const struct fuse_operations operations = {
    .init = fs_init,
    .getattr = fs_getattr,
    .readdir = fs_readdir,
    .mkdir = fs_mkdir,
    .unlink = fs_unlink,
    .rmdir = fs_rmdir,
    .rename = fs_rename,
    .chmod = fs_chmod,
    .truncate = fs_truncate,
    .utimens = fs_utimens,
    .create = fs_create,
    .open = fs_open,
    .read = fs_read,
    .write = fs_write,
    .statfs = fs_statfs,
    .flush = fs_flush,
    .release = fs_release,
    .fsync = fs_fsync,
    .fsyncdir = fs_fsyncdir,
};

// libfuse 3.12–3.14's fuse_main() ignores -o max_threads and caps the handler threads at 10,
// which would serialise a test's concurrent delayed syncs beyond 10. So the daemon runs its own
// multithreaded loop with a cap of 128 (fuse_loop_mt_312 is exported since 3.12 but declared only
// for FUSE_USE_VERSION >= 312).
#if FUSE_VERSION >= FUSE_MAKE_VERSION(3, 12)
int fuse_loop_mt_312(struct fuse *f, struct fuse_loop_config *config);
#endif

static int run_loop(struct fuse *fuse, const struct fuse_cmdline_opts *options) {
    if (options->singlethread) return fuse_loop(fuse);
#if FUSE_VERSION >= FUSE_MAKE_VERSION(3, 12)
    struct fuse_loop_config *config = fuse_loop_cfg_create();
    if (config == NULL) return -1;
    fuse_loop_cfg_set_clone_fd(config, (unsigned int)options->clone_fd);
    fuse_loop_cfg_set_max_threads(config, 128);
    int rc = fuse_loop_mt_312(fuse, config);
    fuse_loop_cfg_destroy(config);
    return rc;
#else
    return fuse_loop_mt(fuse, options->clone_fd);  // no thread cap before 3.12
#endif
}

int main(int argc, char *argv[]) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s BACKING_DIR MOUNTPOINT [fuse options]\n", argv[0]);
        return 2;
    }
    if (!realpath(argv[1], backing)) {
        perror(argv[1]);
        return 2;
    }
    argv[1] = argv[0];  // libfuse sees: faultfs MOUNTPOINT [options]
    int kept = 2;
    for (int i = 2; i < argc; i++) {  // our own flag, not libfuse's
        if (strcmp(argv[i], "--writeback-cache") == 0) writeback_cache = 1; else argv[kept++] = argv[i];
    }
    argc = kept;
    struct fuse_args args = FUSE_ARGS_INIT(argc - 1, argv + 1);
    struct fuse_cmdline_opts options;
    memset(&options, 0, sizeof options);
    if (fuse_parse_cmdline(&args, &options) != 0 || options.mountpoint == NULL) {
        fprintf(stderr, "usage: %s BACKING_DIR MOUNTPOINT [fuse options]\n", argv[0]);
        return 2;
    }
    int rc = 1;
    struct fuse *fuse = fuse_new(&args, &operations, sizeof operations, NULL);
    if (fuse != NULL && fuse_mount(fuse, options.mountpoint) == 0) {
        if (fuse_daemonize(options.foreground) == 0 && fuse_set_signal_handlers(fuse_get_session(fuse)) == 0) {
            rc = run_loop(fuse, &options) == 0 ? 0 : 1;
            fuse_remove_signal_handlers(fuse_get_session(fuse));
        }
        fuse_unmount(fuse);
    }
    if (fuse != NULL) fuse_destroy(fuse);
    free(options.mountpoint);
    fuse_opt_free_args(&args);
    return rc;
}
