// The C floor of the durable-write workload: one 4 KiB write made durable (fdatasync semantics)
// per op, `depth` writers. Kernel AIO through raw system calls (linux/aio_abi.h), as the library
// does it; a separate file because libaio.h (cfloor.c) defines the same structures.
#define _GNU_SOURCE
#include "CFloor.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef RWF_DSYNC
#define RWF_DSYNC 0x00000002
#endif

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

int cfloor_o_direct(void) { return O_DIRECT; }

int64_t cfloor_durable_offset(int writer, long sequence, int shared_file, int region_blocks) {
    long block = (shared_file ? (long)writer * region_blocks : 0) + sequence % region_blocks;
    return (int64_t)block * CFLOOR_DURABLE_BLOCK;
}

static void *aligned_blocks(int count) {
    void *memory = NULL;
    if (posix_memalign(&memory, CFLOOR_DURABLE_BLOCK, (size_t)count * CFLOOR_DURABLE_BLOCK) != 0) return NULL;
    memset(memory, 0x5a, (size_t)count * CFLOOR_DURABLE_BLOCK);
    return memory;
}

// MARK: c-threads: N pthreads, each pwrite(2) + fdatasync(2) in a loop

struct durable_threads {
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int ready, go;
    uint64_t deadline;
    int error;                 // the first -errno of any thread; all stop when set
    const int *fds;
    int nfds, depth, region_blocks;
    char *buffers;             // depth × 4 KiB
    uint64_t *latencies;       // depth × per_thread
    long per_thread;
    long *recorded;            // per thread
    long *ops;                 // per thread
};

struct durable_thread_arg {
    struct durable_threads *shared;
    int writer;
};

static void *durable_thread(void *argument) {
    struct durable_thread_arg *arg = argument;
    struct durable_threads *s = arg->shared;
    int writer = arg->writer;
    int fd = s->fds[writer % s->nfds];
    const char *buffer = s->buffers + (size_t)writer * CFLOOR_DURABLE_BLOCK;
    uint64_t *latencies = s->latencies + (size_t)writer * (size_t)s->per_thread;
    pthread_mutex_lock(&s->lock);
    s->ready++;
    pthread_cond_broadcast(&s->changed);
    while (!s->go) pthread_cond_wait(&s->changed, &s->lock);
    uint64_t deadline = s->deadline;
    pthread_mutex_unlock(&s->lock);
    long ops = 0, recorded = 0;
    while (now_ns() < deadline && !__atomic_load_n(&s->error, __ATOMIC_RELAXED)) {
        uint64_t start = now_ns();
        off_t offset = cfloor_durable_offset(writer, ops, s->nfds == 1, s->region_blocks);
        ssize_t written = pwrite(fd, buffer, CFLOOR_DURABLE_BLOCK, offset);
        int failure = written < 0 ? -errno : written != CFLOOR_DURABLE_BLOCK ? -EIO : 0;
        if (!failure && fdatasync(fd) != 0) failure = -errno;
        if (failure) {
            int none = 0;
            __atomic_compare_exchange_n(&s->error, &none, failure, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
            break;
        }
        if (recorded < s->per_thread) latencies[recorded++] = now_ns() - start;
        ops++;
    }
    s->ops[writer] = ops;
    s->recorded[writer] = recorded;
    return NULL;
}

static long run_durable_threads(int depth, const int *fds, int nfds, int region_blocks, double seconds,
                                struct cfloor_window *window, uint64_t *latencies, long capacity, long *recorded) {
    struct durable_threads s = {.fds = fds, .nfds = nfds, .depth = depth, .region_blocks = region_blocks};
    pthread_mutex_init(&s.lock, NULL);
    pthread_cond_init(&s.changed, NULL);
    s.per_thread = capacity / depth;
    s.buffers = aligned_blocks(depth);
    s.latencies = calloc((size_t)depth * (size_t)s.per_thread + 1, sizeof *s.latencies);
    s.recorded = calloc((size_t)depth, sizeof *s.recorded);
    s.ops = calloc((size_t)depth, sizeof *s.ops);
    pthread_t *threads = calloc((size_t)depth, sizeof *threads);
    struct durable_thread_arg *args = calloc((size_t)depth, sizeof *args);
    long result = 0;
    int started = 0;
    if (!s.buffers || !s.latencies || !s.recorded || !s.ops || !threads || !args) { result = -ENOMEM; goto done; }
    for (; started < depth; started++) {
        args[started] = (struct durable_thread_arg){.shared = &s, .writer = started};
        int rc = pthread_create(&threads[started], NULL, durable_thread, &args[started]);
        if (rc != 0) { result = -rc; break; }
    }
    // The threads wait for `go`; the window opens when all of them are ready.
    pthread_mutex_lock(&s.lock);
    while (s.ready < started) pthread_cond_wait(&s.changed, &s.lock);
    cfloor_take_snapshot(&window->begin);
    s.deadline = result < 0 ? 0 : window->begin.ns + (uint64_t)(seconds * 1e9);
    s.go = 1;
    pthread_cond_broadcast(&s.changed);
    pthread_mutex_unlock(&s.lock);
    for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
    cfloor_take_snapshot(&window->end);
    if (result < 0) goto done;
    if (s.error) { result = s.error; goto done; }
    for (int i = 0; i < depth; i++) {
        result += s.ops[i];
        for (long k = 0; k < s.recorded[i] && *recorded < capacity; k++) {
            latencies[(*recorded)++] = s.latencies[(size_t)i * (size_t)s.per_thread + (size_t)k];
        }
    }
done:
    pthread_mutex_destroy(&s.lock);
    pthread_cond_destroy(&s.changed);
    free(s.buffers); free(s.latencies); free(s.recorded); free(s.ops); free(threads); free(args);
    return result;
}

// MARK: c-libaio and c-direct-dsync: one thread keeping `depth` requests in flight

static long sys_io_setup(unsigned nr, aio_context_t *ctx) { return syscall(SYS_io_setup, nr, ctx) < 0 ? -errno : 0; }
static void sys_io_destroy(aio_context_t ctx) { syscall(SYS_io_destroy, ctx); }
static long sys_io_submit(aio_context_t ctx, long n, struct iocb **iocbs) {
    long rc = syscall(SYS_io_submit, ctx, n, iocbs);
    return rc < 0 ? -errno : rc;
}
static long sys_io_getevents(aio_context_t ctx, long min, long max, struct io_event *events) {
    long rc = syscall(SYS_io_getevents, ctx, min, max, events, NULL);
    return rc < 0 ? -errno : rc;
}

// direct = 0 (c-libaio): a blocking buffered pwrite(2), then IOCB_CMD_FDSYNC for it.
// direct = 1 (c-direct-dsync): IOCB_CMD_PWRITE with aio_rw_flags = RWF_DSYNC on an O_DIRECT file.
// A writer's next request is prepared when its previous one completes; everything prepared goes in
// one io_submit.
static long run_durable_aio(int direct, int depth, const int *fds, int nfds, int region_blocks, double seconds,
                            struct cfloor_window *window, uint64_t *latencies, long capacity, long *recorded) {
    aio_context_t ctx = 0;
    long rc = sys_io_setup((unsigned)depth, &ctx);
    if (rc < 0) return rc;
    struct iocb *blocks = calloc((size_t)depth, sizeof *blocks);
    struct iocb **ready = calloc((size_t)depth, sizeof *ready);
    struct io_event *events = calloc((size_t)depth, sizeof *events);
    uint64_t *started = calloc((size_t)depth, sizeof *started);
    long *sequence = calloc((size_t)depth, sizeof *sequence);
    char *buffers = aligned_blocks(depth);
    long ops = 0;
    int inflight = 0, nready = 0;
    if (!blocks || !ready || !events || !started || !sequence || !buffers) { ops = -ENOMEM; goto done; }
    for (int i = 0; i < depth; i++) ready[nready++] = &blocks[i];
    cfloor_take_snapshot(&window->begin);
    uint64_t deadline = window->begin.ns + (uint64_t)(seconds * 1e9);
    for (;;) {
        if (now_ns() < deadline) {
            for (int k = 0; k < nready; k++) {
                int writer = (int)(ready[k] - blocks);
                int fd = fds[writer % nfds];
                char *buffer = buffers + (size_t)writer * CFLOOR_DURABLE_BLOCK;
                off_t offset = cfloor_durable_offset(writer, sequence[writer]++, nfds == 1, region_blocks);
                struct iocb *iocb = ready[k];
                memset(iocb, 0, sizeof *iocb);
                iocb->aio_fildes = (uint32_t)fd;
                iocb->aio_data = (uint64_t)writer;
                started[writer] = now_ns();
                if (direct) {
                    iocb->aio_lio_opcode = IOCB_CMD_PWRITE;
                    iocb->aio_buf = (uint64_t)(uintptr_t)buffer;
                    iocb->aio_nbytes = CFLOOR_DURABLE_BLOCK;
                    iocb->aio_offset = offset;
                    iocb->aio_rw_flags = RWF_DSYNC;
                } else {
                    ssize_t written = pwrite(fd, buffer, CFLOOR_DURABLE_BLOCK, offset);
                    if (written != CFLOOR_DURABLE_BLOCK) { ops = written < 0 ? -errno : -EIO; goto done; }
                    iocb->aio_lio_opcode = IOCB_CMD_FDSYNC;
                }
            }
            int submitted = 0;
            while (submitted < nready) {
                rc = sys_io_submit(ctx, nready - submitted, ready + submitted);
                if (rc <= 0) { ops = rc < 0 ? rc : -EAGAIN; inflight += submitted; goto done; }
                submitted += (int)rc;
            }
            inflight += nready;
        }
        nready = 0;
        if (inflight == 0) break;
        rc = sys_io_getevents(ctx, 1, depth, events);
        if (rc < 0) { if (rc == -EINTR) continue; ops = rc; goto done; }
        uint64_t now = now_ns();
        for (long i = 0; i < rc; i++) {
            inflight--;
            int writer = (int)events[i].data;
            long res = (long)events[i].res;
            if (res < 0) { ops = res; goto done; }
            if (direct && res != CFLOOR_DURABLE_BLOCK) { ops = -EIO; goto done; }  // a short write: not expected here
            if (*recorded < capacity) latencies[(*recorded)++] = now - started[writer];
            ready[nready++] = &blocks[writer];
            ops++;
        }
    }
done:
    while (inflight > 0) {  // never leave requests behind
        rc = sys_io_getevents(ctx, 1, depth, events);
        if (rc > 0) inflight -= (int)rc; else if (rc != -EINTR) break;
    }
    cfloor_take_snapshot(&window->end);
    sys_io_destroy(ctx);
    free(blocks); free(ready); free(events); free(started); free(sequence); free(buffers);
    return ops;
}

long cfloor_durable_run(int method, int depth, const int *fds, int nfds, int region_blocks, double seconds,
                        struct cfloor_window *window, uint64_t *latencies, long capacity, long *recorded) {
    *recorded = 0;
    memset(window, 0, sizeof *window);
    if (depth < 1 || nfds < 1 || region_blocks < 1 || capacity < depth) return -EINVAL;
    switch (method) {
    case CFLOOR_DURABLE_THREADS:
        return run_durable_threads(depth, fds, nfds, region_blocks, seconds, window, latencies, capacity, recorded);
    case CFLOOR_DURABLE_LIBAIO:
        return run_durable_aio(0, depth, fds, nfds, region_blocks, seconds, window, latencies, capacity, recorded);
    case CFLOOR_DURABLE_DIRECT_DSYNC:
        return run_durable_aio(1, depth, fds, nfds, region_blocks, seconds, window, latencies, capacity, recorded);
    default:
        return -EINVAL;
    }
}
