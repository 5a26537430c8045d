// faultfs: a passthrough FUSE file system whose fsync handler injects errnos, for tests.
//
//   faultfs BACKING_DIR MOUNTPOINT [--writeback-cache] [--direct-io] [--power-loss] [-f] [-o auto_unmount,...]
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
//   write_errno=N failed_writes=N short_write=N write_count=N write_match=... writes=N short_writes=N
//   dsync_writes=N              (writes whose request carried O_DSYNC: see fs_write)
// Write faults: write_errno=EIO (writes of file data fail; 0 = none), short_write=half|N (a write
// writes and reports only its first half / first N bytes; 0 = off; write_errno wins), for the
// next write_count=N writes (-1: all) of paths containing write_match=SUBSTRING. Mount option
// --writeback-cache makes the kernel cache writes and send them at writeback.
// Power-loss mode (--power-loss, or power_loss=1 / power_loss=0): see "Power-loss mode" below;
// crash=/ABS/DIR writes the durable state there, /.faultfs-durable/PATH reads one file's durable
// content, and the status line gains power_loss=N snapshots=N dir_snapshots=N.
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
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define CONTROL_PATH "/.faultfs"
#define DURABLE_PREFIX "/.faultfs-durable"

static char backing[PATH_MAX];
static char mount_real[PATH_MAX];  // the mount point's real path, so crash= never writes into it

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
    long short_write;             // 0: off; > 0: write at most this many bytes; -1: half of each
    long write_count;             // write faults left (-1: unlimited)
    char write_match[256];        // write faults only for paths containing this (empty: all)
    long writes, short_writes;    // writes of file data seen; those made short
    long dsync_writes;            // writes whose request carried O_DSYNC (RWF_DSYNC, an O_DSYNC open)
} state = {PTHREAD_MUTEX_INITIALIZER, 0, 3, -1, "", 0, 0, 0, 0, 0, 0, 0, 0, 0, -1, "", 0, 0, 0};

// --writeback-cache: the kernel caches writes and sends them at writeback (during fsync).
static int writeback_cache = 0;
// --direct-io: every open file is FOPEN_DIRECT_IO (the mount's files bypass the page cache, as
// with libfuse's direct_io option, which this libfuse's option parser does not take).
static int direct_io = 0;

static void pl_reset_counters(void);

static void reset_state(void) {
    pl_reset_counters();
    state.error = 0;
    state.ops = 3;
    state.count = -1;
    state.match[0] = 0;
    state.delay_ms = 0;
    state.fsyncs = state.fdatasyncs = state.injected = 0;
    state.max_inflight = state.inflight;
    state.write_error = 0;
    state.failed_writes = 0;
    state.short_write = 0;
    state.write_count = -1;
    state.write_match[0] = 0;
    state.writes = state.short_writes = 0;
    state.dsync_writes = 0;
}

// With --writeback-cache the kernel reads pages of files opened write-only (to fill partial
// pages) and applies O_APPEND itself, writing back at explicit offsets: open the backing file
// read-write and without O_APPEND (as libfuse's passthrough example does), or those reads fail
// with EBADF and the writebacks land at the end of the file.
//
// O_DIRECT is never passed on: it governs the caller's path through the kernel (the FUSE
// request is made without the page cache), not the daemon's own I/O, and the buffers libfuse
// hands the write handler are not aligned, so a backing O_DIRECT write would fail with EINVAL.
static int backing_flags(int flags) {
    flags &= ~O_DIRECT;
    if (!writeback_cache) return flags;
    if ((flags & O_ACCMODE) == O_WRONLY) flags = (flags & ~O_ACCMODE) | O_RDWR;
    return flags & ~O_APPEND;
}

static void full_path(char out[PATH_MAX], const char *path) {
    snprintf(out, PATH_MAX, "%s%s", backing, path);
}

static int is_control(const char *path) { return strcmp(path, CONTROL_PATH) == 0; }

// /.faultfs-durable and everything below it: the read-only durable view of power-loss mode.
static int is_durable_view(const char *path) {
    size_t n = sizeof DURABLE_PREFIX - 1;
    return strncmp(path, DURABLE_PREFIX, n) == 0 && (path[n] == 0 || path[n] == '/');
}

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

// ---- Power-loss mode ------------------------------------------------------------------------
//
// The daemon keeps, beside the backing tree (which always holds the current state), a model of
// what a disk would still hold after a power cut, under these rules:
// - Switching the mode on (--power-loss, power_loss=1) makes the whole backing tree durable as
//   it is then (and forgets any earlier model).
// - File data becomes durable only by a successful fsync/fdatasync of that file: the handler
//   copies the file's content when it starts, before the injected delay, and installs the copy
//   when the sync succeeds. A sync that gets an injected errno (or whose real sync fails) takes
//   none. Data that reaches the file system while a sync is held is therefore not covered by it:
//   the pessimistic but valid reading of POSIX, under which a group-commit library that lets a
//   request join a sync already in flight loses that request's write at the crash.
// - Directory entries (create, mkdir, rename, unlink, rmdir) become durable only by fsync of the
//   directory (strict POSIX; ext4 and most journalling file systems give more): a fsyncdir
//   copies the directory's listing at its start and installs it on success. A file's own fsync
//   makes no name durable, not even its own.
// - Inodes are tracked by record (own ids): create and mkdir bind a fresh record to the new
//   inode number, so a number reused after an unlink never inherits the dead inode's history.
//   Records are never freed while the model lives, since durable listings may still name them.
// - crash=DIR materialises the durable state: the tree reachable from the root through durable
//   listings, each file with its last durable content (empty if never synced since created).
// The model is kept in memory; each snapshot copies the whole file (cost O(file size) per sync).
// Locking: pl.lock guards all of it; it is taken after state.lock, never before.

#define PL_BUCKETS 4096

struct pl_entry { char *name; uint64_t id; };

struct pl_record {
    uint64_t id;                  // index in pl.records
    int bound;                    // bound to (dev, ino): the inode is alive under that number
    dev_t dev;
    ino_t ino;
    int is_dir;
    mode_t mode;                  // permission bits for the crash image
    unsigned long taken;          // sequence number of the last snapshot started
    unsigned long installed;      // ... and of the one durable now (an older one never replaces it)
    char *data;                   // files: the durable content
    size_t size;
    struct pl_entry *entries;     // directories: the durable listing
    size_t count;
    struct pl_record *next;       // hash chain of bound records
};

static struct {
    pthread_mutex_t lock;
    int enabled;
    unsigned long generation;     // bumped whenever the model is dropped; pending snapshots check it
    struct pl_record **records;
    size_t count, capacity;
    struct pl_record *buckets[PL_BUCKETS];
    uint64_t root;
    long snapshots, dir_snapshots;
} pl = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void pl_reset_counters(void) {
    pthread_mutex_lock(&pl.lock);
    pl.snapshots = pl.dir_snapshots = 0;
    pthread_mutex_unlock(&pl.lock);
}

static size_t pl_bucket(dev_t dev, ino_t ino) {
    return (size_t)(((uint64_t)ino * 0x9E3779B97F4A7C15ull) ^ (uint64_t)dev) % PL_BUCKETS;
}

static struct pl_record *pl_find(dev_t dev, ino_t ino) {
    for (struct pl_record *r = pl.buckets[pl_bucket(dev, ino)]; r; r = r->next)
        if (r->ino == ino && r->dev == dev) return r;
    return NULL;
}

// A fresh record bound to (dev, ino); a record bound to that number before belonged to a dead
// inode and is unbound (durable listings keep naming it).
static struct pl_record *pl_bind_new(dev_t dev, ino_t ino, int is_dir, mode_t mode) {
    struct pl_record **link = &pl.buckets[pl_bucket(dev, ino)];
    for (struct pl_record **old = link; *old; old = &(*old)->next) {
        if ((*old)->ino == ino && (*old)->dev == dev) {
            struct pl_record *dead = *old;
            *old = dead->next;
            dead->next = NULL;
            dead->bound = 0;
            break;
        }
    }
    if (pl.count == pl.capacity) {
        size_t capacity = pl.capacity ? pl.capacity * 2 : 256;
        struct pl_record **grown = realloc(pl.records, capacity * sizeof *grown);
        if (!grown) return NULL;
        pl.records = grown;
        pl.capacity = capacity;
    }
    struct pl_record *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->id = pl.count;
    r->bound = 1;
    r->dev = dev;
    r->ino = ino;
    r->is_dir = is_dir;
    r->mode = mode & 07777;
    r->next = *link;
    *link = r;
    pl.records[pl.count++] = r;
    return r;
}

// The record of a live inode; one met for the first time (made in the backing directory behind
// the daemon's back) gets a fresh record: a file that was never synced.
static struct pl_record *pl_record_of(const struct stat *st) {
    struct pl_record *r = pl_find(st->st_dev, st->st_ino);
    if (r && r->is_dir == (S_ISDIR(st->st_mode) != 0)) return r;
    return pl_bind_new(st->st_dev, st->st_ino, S_ISDIR(st->st_mode), st->st_mode);
}

static void pl_free_entries(struct pl_entry *entries, size_t count) {
    for (size_t i = 0; i < count; i++) free(entries[i].name);
    free(entries);
}

static void pl_drop_model(void) {
    for (size_t i = 0; i < pl.count; i++) {
        free(pl.records[i]->data);
        pl_free_entries(pl.records[i]->entries, pl.records[i]->count);
        free(pl.records[i]);
    }
    free(pl.records);
    pl.records = NULL;
    pl.count = pl.capacity = 0;
    memset(pl.buckets, 0, sizeof pl.buckets);
    pl.enabled = 0;
    pl.generation++;
    pl.snapshots = pl.dir_snapshots = 0;
}

// The whole content of the file open as fd, from offset 0, in a malloc'd buffer.
static int read_whole(int fd, char **data, size_t *size) {
    struct stat st;
    if (fstat(fd, &st) != 0) return -errno;
    size_t capacity = (size_t)(st.st_size > 0 ? st.st_size : 0) + 4096, used = 0;
    char *buffer = malloc(capacity);
    if (!buffer) return -ENOMEM;
    for (;;) {
        if (used == capacity) {
            char *grown = realloc(buffer, capacity *= 2);
            if (!grown) { free(buffer); return -ENOMEM; }
            buffer = grown;
        }
        ssize_t n = pread(fd, buffer + used, capacity - used, (off_t)used);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) { int saved = errno; free(buffer); return -saved; }
        if (n == 0) break;
        used += (size_t)n;
    }
    *data = buffer;
    *size = used;
    return 0;
}

static int write_whole(int fd, const char *data, size_t size) {
    for (size_t done = 0; done < size;) {
        ssize_t n = write(fd, data + done, size - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -errno;
        done += (size_t)n;
    }
    return 0;
}

// The content of a file the mount has open as fd (which may be write-only or O_DIRECT).
static int snapshot_content(int fd, char **data, size_t *size) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0) return -errno;
    if ((flags & O_ACCMODE) != O_WRONLY && !(flags & O_DIRECT)) return read_whole(fd, data, size);
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    int reader = open(link, O_RDONLY | O_CLOEXEC);  // works for an unlinked file too
    if (reader < 0) return -errno;
    int rc = read_whole(reader, data, size);
    close(reader);
    return rc;
}

struct pl_seen { char *name; struct stat st; };

static void free_seen(struct pl_seen *seen, size_t count) {
    for (size_t i = 0; i < count; i++) free(seen[i].name);
    free(seen);
}

// The entries of a backing directory that can be durable: files and directories, without "."
// and "..", and without libfuse's .fuse_hidden* names (an unlinked file still open).
static int list_directory(const char *real, struct pl_seen **out, size_t *count) {
    DIR *dir = opendir(real);
    if (!dir) return -errno;
    struct pl_seen *seen = NULL;
    size_t used = 0, capacity = 0;
    int rc = 0;
    for (struct dirent *entry; rc == 0 && (entry = readdir(dir));) {
        const char *name = entry->d_name;
        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0 || strncmp(name, ".fuse_hidden", 12) == 0) continue;
        struct stat st;
        if (fstatat(dirfd(dir), name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            if (errno == ENOENT) continue;  // removed meanwhile
            rc = -errno;
            break;
        }
        if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) continue;
        if (used == capacity) {
            capacity = capacity ? capacity * 2 : 16;
            struct pl_seen *grown = realloc(seen, capacity * sizeof *grown);
            if (!grown) { rc = -ENOMEM; break; }
            seen = grown;
        }
        seen[used].name = strdup(name);
        if (!seen[used].name) { rc = -ENOMEM; break; }
        seen[used++].st = st;
    }
    closedir(dir);
    if (rc != 0) { free_seen(seen, used); return rc; }
    *out = seen;
    *count = used;
    return 0;
}

// Makes what is at `real` durable as it is, with everything below it (pl.lock held).
static int pl_adopt(const char *real, const struct stat *st, uint64_t *id) {
    struct pl_record *r = pl_find(st->st_dev, st->st_ino);
    if (r && !r->is_dir) { *id = r->id; return 0; }  // a second hard link to a file adopted already
    r = pl_bind_new(st->st_dev, st->st_ino, S_ISDIR(st->st_mode) != 0, st->st_mode);
    if (!r) return -ENOMEM;
    *id = r->id;
    r->installed = r->taken = 1;
    if (!r->is_dir) {
        int fd = open(real, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) return -errno;
        int rc = read_whole(fd, &r->data, &r->size);
        close(fd);
        return rc;
    }
    struct pl_seen *seen;
    size_t count;
    int rc = list_directory(real, &seen, &count);
    if (rc != 0) return rc;
    r->entries = calloc(count ? count : 1, sizeof *r->entries);
    if (!r->entries) { free_seen(seen, count); return -ENOMEM; }
    for (size_t i = 0; i < count; i++) {
        char child[PATH_MAX];
        if (snprintf(child, sizeof child, "%s/%s", real, seen[i].name) >= (int)sizeof child) rc = -ENAMETOOLONG;
        uint64_t child_id = 0;
        if (rc == 0) rc = pl_adopt(child, &seen[i].st, &child_id);
        if (rc != 0) {
            for (size_t j = i; j < count; j++) free(seen[j].name);
            free(seen);
            return rc;
        }
        r->entries[r->count++] = (struct pl_entry){seen[i].name, child_id};
    }
    free(seen);  // the names now belong to r->entries
    return 0;
}

// Switches the mode on with the backing tree as the durable state (pl.lock held).
static int pl_start(void) {
    pl_drop_model();
    struct stat st;
    if (lstat(backing, &st) != 0) return -errno;
    uint64_t root;
    int rc = pl_adopt(backing, &st, &root);
    if (rc != 0) { pl_drop_model(); return rc; }
    pl.root = root;
    pl.enabled = 1;
    return 0;
}

// power_loss=1: on (again), the current tree durable; power_loss=0: off, the model dropped.
static int pl_switch(const char *value) {
    if (strcmp(value, "1") != 0 && strcmp(value, "0") != 0) return -EINVAL;
    pthread_mutex_lock(&pl.lock);
    int rc = 0;
    if (value[0] == '1') rc = pl_start(); else pl_drop_model();
    pthread_mutex_unlock(&pl.lock);
    return rc;
}

// A snapshot taken at the start of a sync handler, installed if the sync succeeds.
struct pl_pending {
    int active;
    unsigned long generation, sequence;
    uint64_t id;
    mode_t mode;
    char *data;                   // a file's content
    size_t size;
    struct pl_entry *entries;     // a directory's listing
    size_t count;
};

// Takes the record's next sequence number for a snapshot of the inode `st` (pl.lock held).
static int pl_begin(struct pl_pending *pending, const struct stat *st) {
    struct pl_record *r = pl_record_of(st);
    if (!r) return -ENOMEM;
    pending->generation = pl.generation;
    pending->id = r->id;
    pending->sequence = ++r->taken;
    pending->mode = st->st_mode & 07777;
    pending->active = 1;
    return 0;
}

// A fsync/fdatasync of the file open as fd starts: its content now (or nothing when the mode is off).
static int pl_begin_file(struct pl_pending *pending, int fd) {
    memset(pending, 0, sizeof *pending);
    struct stat st;
    int rc = 0;
    pthread_mutex_lock(&pl.lock);
    if (pl.enabled) rc = fstat(fd, &st) == 0 ? pl_begin(pending, &st) : -errno;
    pthread_mutex_unlock(&pl.lock);
    if (rc == 0 && pending->active) rc = snapshot_content(fd, &pending->data, &pending->size);
    if (rc != 0) pending->active = 0;
    return rc;
}

// A fsyncdir starts: the directory's listing now, names mapped to records at once (a create
// holds pl.lock from open to binding, so a name seen here maps to the new inode's record).
static int pl_begin_dir(struct pl_pending *pending, const char *real) {
    memset(pending, 0, sizeof *pending);
    pthread_mutex_lock(&pl.lock);
    int enabled = pl.enabled;
    pthread_mutex_unlock(&pl.lock);
    if (!enabled) return 0;
    struct stat st;
    if (lstat(real, &st) != 0) return -errno;
    struct pl_seen *seen;
    size_t count;
    int rc = list_directory(real, &seen, &count);
    if (rc != 0) return rc;
    struct pl_entry *entries = calloc(count ? count : 1, sizeof *entries);
    if (!entries) { free_seen(seen, count); return -ENOMEM; }
    pthread_mutex_lock(&pl.lock);
    if (pl.enabled) rc = pl_begin(pending, &st);
    for (size_t i = 0; rc == 0 && pending->active && i < count; i++) {
        struct pl_record *child = pl_record_of(&seen[i].st);
        if (!child) { rc = -ENOMEM; break; }
        entries[i] = (struct pl_entry){seen[i].name, child->id};
        seen[i].name = NULL;
        pending->count = i + 1;
    }
    pthread_mutex_unlock(&pl.lock);
    free_seen(seen, count);
    pending->entries = entries;
    if (rc != 0) {
        pl_free_entries(pending->entries, pending->count);
        memset(pending, 0, sizeof *pending);
    }
    return rc;
}

// The sync ended: a success installs the snapshot unless a newer one is durable already.
static void pl_end(struct pl_pending *pending, int succeeded) {
    if (pending->active) {
        pthread_mutex_lock(&pl.lock);
        if (succeeded && pl.enabled && pl.generation == pending->generation) {
            struct pl_record *r = pl.records[pending->id];
            if (r->is_dir) pl.dir_snapshots++; else pl.snapshots++;
            if (pending->sequence > r->installed) {
                r->installed = pending->sequence;
                r->mode = pending->mode;
                char *data = r->data;
                struct pl_entry *entries = r->entries;
                size_t count = r->count;
                r->data = pending->data;
                r->size = pending->size;
                r->entries = pending->entries;
                r->count = pending->count;
                pending->data = data;
                pending->entries = entries;
                pending->count = count;
            }
        }
        pthread_mutex_unlock(&pl.lock);
    }
    free(pending->data);
    pl_free_entries(pending->entries, pending->count);
    memset(pending, 0, sizeof *pending);
}

// Writes the durable listing of `dir` into the host directory dirfd, recursively (pl.lock held).
static int pl_materialize(const struct pl_record *dir, int dirfd, unsigned char *visited) {
    for (size_t i = 0; i < dir->count; i++) {
        const struct pl_record *child = pl.records[dir->entries[i].id];
        const char *name = dir->entries[i].name;
        int rc = 0;
        if (child->is_dir) {
            if (visited[child->id]) continue;  // reachable twice (moved without both fsyncdirs): once
            visited[child->id] = 1;
            if (mkdirat(dirfd, name, child->mode) != 0) return -errno;
            int sub = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub < 0) return -errno;
            rc = pl_materialize(child, sub, visited);
            close(sub);
        } else {
            int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, child->mode);
            if (fd < 0) return -errno;
            rc = write_whole(fd, child->data, child->size);
            close(fd);
        }
        if (rc != 0) return rc;
    }
    return 0;
}

// crash=DIR: the durable state into the host directory DIR (made if missing; must be empty and
// outside the mount), before the control write returns.
static int pl_crash(const char *target) {
    size_t n = strlen(mount_real);
    if (target[0] != '/' || (n && strncmp(target, mount_real, n) == 0 && (target[n] == 0 || target[n] == '/')))
        return -EINVAL;
    if (mkdir(target, 0755) != 0 && errno != EEXIST) return -errno;
    char real[PATH_MAX];
    if (!realpath(target, real)) return -errno;
    if (n && strncmp(real, mount_real, n) == 0 && (real[n] == 0 || real[n] == '/')) return -EINVAL;
    int dirfd = open(real, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) return -errno;
    int rc = 0;
    DIR *listing = fdopendir(dup(dirfd));
    if (!listing) rc = -errno;
    for (struct dirent *entry; rc == 0 && (entry = readdir(listing));)
        if (strcmp(entry->d_name, ".") != 0 && strcmp(entry->d_name, "..") != 0) rc = -ENOTEMPTY;
    if (listing) closedir(listing);
    if (rc == 0) {
        pthread_mutex_lock(&pl.lock);
        unsigned char *visited = pl.enabled ? calloc(pl.count, 1) : NULL;
        if (!pl.enabled) rc = -EINVAL;
        else if (!visited) rc = -ENOMEM;
        else {
            visited[pl.root] = 1;
            rc = pl_materialize(pl.records[pl.root], dirfd, visited);
        }
        pthread_mutex_unlock(&pl.lock);
        free(visited);
    }
    close(dirfd);
    return rc;
}

// create/mkdir with the mode on: the new inode gets a fresh record before anyone can see its
// name (pl.lock held). Opening an existing file with O_CREAT makes no new inode, hence O_EXCL.
static int pl_open_new(const char *real, int flags, mode_t mode) {
    int fd = open(real, flags | O_CREAT | O_EXCL, mode);
    if (fd < 0) {
        if (errno == EEXIST && !(flags & O_EXCL)) return open(real, flags & ~O_CREAT);
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) == 0) pl_bind_new(st.st_dev, st.st_ino, 0, st.st_mode);
    return fd;
}

// The durable view: /.faultfs-durable/PATH is the durable content of the inode now at PATH.
struct pl_view { size_t size; char data[]; };

static int view_getattr(const char *path, struct stat *st) {
    const char *rel = path + sizeof DURABLE_PREFIX - 1;
    if (*rel == 0) {
        memset(st, 0, sizeof *st);
        st->st_mode = S_IFDIR | 0555;
        st->st_nlink = 2;
        return 0;
    }
    char real[PATH_MAX];
    snprintf(real, sizeof real, "%s%s", backing, rel);
    if (lstat(real, st) != 0) return -errno;
    int rc = 0;
    pthread_mutex_lock(&pl.lock);
    if (!pl.enabled) {
        rc = -ENOENT;
    } else if (S_ISDIR(st->st_mode)) {
        st->st_mode = S_IFDIR | 0555;
    } else if (S_ISREG(st->st_mode)) {
        const struct pl_record *r = pl_find(st->st_dev, st->st_ino);
        st->st_size = r && !r->is_dir ? (off_t)r->size : 0;
        st->st_blocks = (st->st_size + 511) / 512;
        st->st_mode = S_IFREG | 0444;
    } else {
        rc = -ENOENT;
    }
    pthread_mutex_unlock(&pl.lock);
    return rc;
}

static int view_open(const char *path, struct fuse_file_info *fi) {
    if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) return -EROFS;
    struct stat st;
    int rc = view_getattr(path, &st);
    if (rc != 0) return rc;
    if (!S_ISREG(st.st_mode)) return -EISDIR;
    pthread_mutex_lock(&pl.lock);
    const struct pl_record *r = pl.enabled ? pl_find(st.st_dev, st.st_ino) : NULL;
    size_t size = r && !r->is_dir ? r->size : 0;
    struct pl_view *view = malloc(sizeof *view + size);
    if (view) {
        view->size = size;
        if (size) memcpy(view->data, r->data, size);
    }
    pthread_mutex_unlock(&pl.lock);
    if (!view) return -ENOMEM;
    fi->fh = (uint64_t)(uintptr_t)view;
    fi->direct_io = 1;
    return 0;
}

static int view_read(char *buf, size_t size, off_t offset, const struct fuse_file_info *fi) {
    const struct pl_view *view = (const struct pl_view *)(uintptr_t)fi->fh;
    if (offset < 0 || (size_t)offset >= view->size) return 0;
    size_t count = view->size - (size_t)offset < size ? view->size - (size_t)offset : size;
    memcpy(buf, view->data + offset, count);
    return (int)count;
}

// Applies one control line; returns 0 or -errno (-EINVAL for an unknown word). The fault words of
// one line take effect together; power_loss= and crash= run without state.lock (a crash image
// can take a while and fsync handlers need that lock to start).
static int apply_control(char *line) {
    int result = 0, locked = 0;
    for (char *save = NULL, *word = strtok_r(line, " \t\r\n", &save); word; word = strtok_r(NULL, " \t\r\n", &save)) {
        char *value = strchr(word, '=');
        if (value && (strncmp(word, "power_loss=", 11) == 0 || strncmp(word, "crash=", 6) == 0)) {
            if (locked) { pthread_mutex_unlock(&state.lock); locked = 0; }
            *value++ = 0;
            int rc = word[0] == 'c' ? pl_crash(value) : pl_switch(value);
            if (rc < 0) result = rc;
            continue;
        }
        if (!locked) { pthread_mutex_lock(&state.lock); locked = 1; }
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
        } else if (strcmp(word, "short_write") == 0) {
            char *end;
            long n = strtol(value, &end, 10);
            if (strcmp(value, "half") == 0) state.short_write = -1;
            else if (*value && !*end && n >= 0) state.short_write = n;
            else result = -EINVAL;
        } else if (strcmp(word, "write_count") == 0) {
            state.write_count = strtol(value, NULL, 10);
        } else if (strcmp(word, "write_match") == 0) {
            snprintf(state.write_match, sizeof state.write_match, "%s", value);
        } else {
            result = -EINVAL;
        }
    }
    if (locked) pthread_mutex_unlock(&state.lock);
    return result;
}

static int status_line(char *out, size_t size) {
    pthread_mutex_lock(&state.lock);
    pthread_mutex_lock(&pl.lock);
    int n = snprintf(out, size,
                     "fsync=%ld fdatasync=%ld injected=%ld errno=%d op=%s count=%ld match=%s delay_ms=%ld"
                     " inflight=%ld max_inflight=%ld write_errno=%d failed_writes=%ld"
                     " short_write=%ld write_count=%ld write_match=%s writes=%ld short_writes=%ld"
                     " dsync_writes=%ld power_loss=%d snapshots=%ld dir_snapshots=%ld\n",
                     state.fsyncs, state.fdatasyncs, state.injected, state.error,
                     state.ops == 1 ? "fsync" : state.ops == 2 ? "fdatasync" : "both",
                     state.count, state.match, state.delay_ms, state.inflight, state.max_inflight,
                     state.write_error, state.failed_writes, state.short_write, state.write_count,
                     state.write_match, state.writes, state.short_writes, state.dsync_writes,
                     pl.enabled, pl.snapshots, pl.dir_snapshots);
    pthread_mutex_unlock(&pl.lock);
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
    if (is_durable_view(path)) return view_getattr(path, st);
    char real[PATH_MAX];
    full_path(real, path);
    return lstat(real, st) == 0 ? 0 : -errno;
}

static int fs_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t offset,
                      struct fuse_file_info *fi, enum fuse_readdir_flags flags) {
    (void)offset; (void)fi; (void)flags;
    char real[PATH_MAX];
    if (is_durable_view(path)) {  // the names now at that path; their content is the durable one
        struct stat st;
        int rc = view_getattr(path, &st);
        pthread_mutex_lock(&pl.lock);
        if (rc == 0 && !pl.enabled) rc = -ENOENT;
        pthread_mutex_unlock(&pl.lock);
        if (rc != 0) return rc;
        path += sizeof DURABLE_PREFIX - 1;
    }
    full_path(real, path);
    DIR *dir = opendir(real);
    if (!dir) return -errno;
    for (struct dirent *entry; (entry = readdir(dir));) fill(buf, entry->d_name, NULL, 0, 0);
    closedir(dir);
    return 0;
}

static int fs_mkdir(const char *path, mode_t mode) {
    if (is_durable_view(path)) return -EROFS;
    char real[PATH_MAX]; full_path(real, path);
    pthread_mutex_lock(&pl.lock);  // see pl_open_new
    int rc = mkdir(real, mode) == 0 ? 0 : -errno;
    struct stat st;
    if (rc == 0 && pl.enabled && lstat(real, &st) == 0) pl_bind_new(st.st_dev, st.st_ino, 1, st.st_mode);
    pthread_mutex_unlock(&pl.lock);
    return rc;
}

static int fs_unlink(const char *path) {
    if (is_durable_view(path)) return -EROFS;
    char real[PATH_MAX]; full_path(real, path);
    return unlink(real) == 0 ? 0 : -errno;
}

static int fs_rmdir(const char *path) {
    if (is_durable_view(path)) return -EROFS;
    char real[PATH_MAX]; full_path(real, path);
    return rmdir(real) == 0 ? 0 : -errno;
}

static int fs_rename(const char *from, const char *to, unsigned int flags) {
    if (flags) return -EINVAL;
    if (is_durable_view(from) || is_durable_view(to)) return -EROFS;
    char a[PATH_MAX], b[PATH_MAX];
    full_path(a, from); full_path(b, to);
    return rename(a, b) == 0 ? 0 : -errno;
}

static int fs_chmod(const char *path, mode_t mode, struct fuse_file_info *fi) {
    (void)fi;
    if (is_durable_view(path)) return -EROFS;
    char real[PATH_MAX]; full_path(real, path);
    return chmod(real, mode) == 0 ? 0 : -errno;
}

static int fs_truncate(const char *path, off_t size, struct fuse_file_info *fi) {
    if (is_control(path)) return 0;
    if (is_durable_view(path)) return -EROFS;
    if (fi) return ftruncate((int)fi->fh, size) == 0 ? 0 : -errno;
    char real[PATH_MAX]; full_path(real, path);
    return truncate(real, size) == 0 ? 0 : -errno;
}

static int fs_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi) {
    (void)fi;
    if (is_control(path)) return 0;
    if (is_durable_view(path)) return -EROFS;
    char real[PATH_MAX]; full_path(real, path);
    return utimensat(AT_FDCWD, real, tv, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : -errno;
}

static int fs_create(const char *path, mode_t mode, struct fuse_file_info *fi) {
    if (is_durable_view(path)) return -EROFS;
    char real[PATH_MAX]; full_path(real, path);
    pthread_mutex_lock(&pl.lock);
    int flags = backing_flags(fi->flags);
    int fd = pl.enabled ? pl_open_new(real, flags, mode) : open(real, flags, mode);
    int saved = errno;
    pthread_mutex_unlock(&pl.lock);
    if (fd < 0) return -saved;
    fi->fh = (uint64_t)fd;
    if (direct_io) fi->direct_io = 1;
    return 0;
}

static int fs_open(const char *path, struct fuse_file_info *fi) {
    if (is_control(path)) {
        fi->direct_io = 1;  // never cache the counters
        fi->fh = (uint64_t)-1;
        return 0;
    }
    if (is_durable_view(path)) return view_open(path, fi);
    char real[PATH_MAX]; full_path(real, path);
    int fd = open(real, backing_flags(fi->flags));
    if (fd < 0) return -errno;
    fi->fh = (uint64_t)fd;
    if (direct_io) fi->direct_io = 1;
    return 0;
}

static int fs_read(const char *path, char *buf, size_t size, off_t offset, struct fuse_file_info *fi) {
    if (is_control(path)) {
        char line[1024];
        int n = status_line(line, sizeof line);
        if (offset >= n) return 0;
        size_t count = (size_t)(n - offset) < size ? (size_t)(n - offset) : size;
        memcpy(buf, line + offset, count);
        return (int)count;
    }
    if (is_durable_view(path)) return view_read(buf, size, offset, fi);
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
    if (is_durable_view(path)) return -EROFS;
    // A write fault (write_errno, else short_write) applies to the next write_count writes whose
    // path contains write_match; an errno is answered without writing, a short write writes the
    // first bytes and reports only those.
    pthread_mutex_lock(&state.lock);
    state.writes++;
    int injected = 0;
    size_t allowed = size;
    int applies = (state.write_error != 0 || state.short_write != 0) && state.write_count != 0
        && (state.write_match[0] == 0 || (path && strstr(path, state.write_match) != NULL));
    if (applies && state.write_error) {
        injected = state.write_error;
        state.failed_writes++;
    } else if (applies) {
        allowed = state.short_write < 0 ? size / 2 : (size_t)state.short_write;
        if (allowed < size) state.short_writes++; else { allowed = size; applies = 0; }  // not short: no fault
    }
    if (applies && state.write_count > 0) state.write_count--;
    // A write that carries O_DSYNC (the kernel sets it in the request's flags for RWF_DSYNC and for
    // files opened O_DSYNC/O_SYNC) is durable when it returns: it counts as the write followed by
    // an fdatasync (fsync for O_SYNC) of the file. The kernel sends no FUSE fsync after an
    // asynchronous O_DIRECT write (kernel AIO), so the request's flag is the only sign of it. The
    // sync's fault (errno=, op=, count=, match=) applies to that part: the bytes are written and
    // the errno is answered, with no snapshot; otherwise the file's content after the write is
    // durable (power-loss mode).
    int dsync = (fi->flags & O_DSYNC) != 0;
    int sync_bit = (fi->flags & O_SYNC) == O_SYNC ? 1 : 2;
    int sync_injected = 0;
    if (dsync && !injected) {
        state.dsync_writes++;
        if (state.error != 0 && (state.ops & sync_bit) && state.count != 0
            && (state.match[0] == 0 || strstr(path, state.match) != NULL)) {
            sync_injected = state.error;
            state.injected++;
            if (state.count > 0) state.count--;
        }
    }
    pthread_mutex_unlock(&state.lock);
    if (injected) return -injected;
    ssize_t n = pwrite((int)fi->fh, buf, allowed, offset);
    if (n < 0) return -errno;
    if (dsync && sync_injected) return -sync_injected;
    if (dsync) {
        struct pl_pending pending;
        int rc = pl_begin_file(&pending, (int)fi->fh);
        if (rc == 0) rc = fdatasync((int)fi->fh) == 0 ? 0 : -errno;
        pl_end(&pending, rc == 0);
        if (rc != 0) return rc;
    }
    return (int)n;
}

static int fs_statfs(const char *path, struct statvfs *st) {
    (void)path;
    return statvfs(backing, st) == 0 ? 0 : -errno;
}

static int fs_flush(const char *path, struct fuse_file_info *fi) {
    if (fi->fh == (uint64_t)-1 || is_durable_view(path)) return 0;
    int copy = dup((int)fi->fh);  // close(dup) reports what close would
    if (copy < 0) return -errno;
    return close(copy) == 0 ? 0 : -errno;
}

static int fs_release(const char *path, struct fuse_file_info *fi) {
    if (is_durable_view(path)) free((void *)(uintptr_t)fi->fh);
    else if (fi->fh != (uint64_t)-1) close((int)fi->fh);
    return 0;
}

static int fs_fsync(const char *path, int datasync, struct fuse_file_info *fi) {
    if (is_durable_view(path)) return 0;
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

    // Power-loss mode: the content now, before the delay, is what this sync can make durable.
    struct pl_pending pending;
    memset(&pending, 0, sizeof pending);
    int rc = !injected && fi->fh != (uint64_t)-1 ? pl_begin_file(&pending, (int)fi->fh) : 0;
    if (delay > 0) {
        struct timespec pause = {delay / 1000, (delay % 1000) * 1000000L};
        while (nanosleep(&pause, &pause) != 0 && errno == EINTR) {}
    }
    if (injected) {
        rc = -injected;
    } else if (rc == 0 && fi->fh != (uint64_t)-1) {
        rc = (datasync ? fdatasync((int)fi->fh) : fsync((int)fi->fh)) == 0 ? 0 : -errno;
    }
    pl_end(&pending, rc == 0);
    pthread_mutex_lock(&state.lock);
    state.inflight--;
    pthread_mutex_unlock(&state.lock);
    return rc;
}

static int fs_fsyncdir(const char *path, int datasync, struct fuse_file_info *fi) {
    (void)fi;
    if (is_durable_view(path)) return 0;
    char real[PATH_MAX]; full_path(real, path);
    struct pl_pending pending;  // power-loss mode: the listing now is what this sync makes durable
    int rc = pl_begin_dir(&pending, real);
    if (rc != 0) return rc;
    int fd = open(real, O_RDONLY | O_DIRECTORY);
    if (fd < 0) rc = -errno;
    else if ((datasync ? fdatasync(fd) : fsync(fd)) != 0) rc = -errno;
    if (fd >= 0) close(fd);
    pl_end(&pending, rc == 0);
    return rc;
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
    // posix_spawn passes the parent thread's signal mask on, and Swift's concurrency threads
    // block SIGTERM: unblock what libfuse's handlers end the loop on, or a daemon whose mount is
    // still busy (a file left open) would ignore Process.terminate() forever.
    sigset_t termination;
    sigemptyset(&termination);
    sigaddset(&termination, SIGTERM);
    sigaddset(&termination, SIGINT);
    sigaddset(&termination, SIGHUP);
    pthread_sigmask(SIG_UNBLOCK, &termination, NULL);
    if (argc < 3) {
        fprintf(stderr, "usage: %s BACKING_DIR MOUNTPOINT [fuse options]\n", argv[0]);
        return 2;
    }
    if (!realpath(argv[1], backing)) {
        perror(argv[1]);
        return 2;
    }
    argv[1] = argv[0];  // libfuse sees: faultfs MOUNTPOINT [options]
    int kept = 2, power_loss = 0;
    for (int i = 2; i < argc; i++) {  // our own flags, not libfuse's
        if (strcmp(argv[i], "--writeback-cache") == 0) writeback_cache = 1;
        else if (strcmp(argv[i], "--power-loss") == 0) power_loss = 1;
        else if (strcmp(argv[i], "--direct-io") == 0) direct_io = 1;
        else argv[kept++] = argv[i];
    }
    argc = kept;
    struct fuse_args args = FUSE_ARGS_INIT(argc - 1, argv + 1);
    struct fuse_cmdline_opts options;
    memset(&options, 0, sizeof options);
    if (fuse_parse_cmdline(&args, &options) != 0 || options.mountpoint == NULL) {
        fprintf(stderr, "usage: %s BACKING_DIR MOUNTPOINT [fuse options]\n", argv[0]);
        return 2;
    }
    if (!realpath(options.mountpoint, mount_real)) mount_real[0] = 0;
    if (power_loss && pl_switch("1") != 0) {
        fprintf(stderr, "%s: cannot take the backing tree as the durable state\n", argv[0]);
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
