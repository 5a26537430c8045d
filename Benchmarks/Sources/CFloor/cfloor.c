#define _GNU_SOURCE
#include "CFloor.h"

#include <aio.h>
#include <errno.h>
#include <fcntl.h>
#include <libaio.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>
#include <unistd.h>

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

void cfloor_take_snapshot(struct cfloor_snapshot *snapshot) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    snapshot->ns = now_ns();
    snapshot->cpu_us = (uint64_t)(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1000000ull
                       + (uint64_t)(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec);
    snapshot->context_switches = usage.ru_nvcsw + usage.ru_nivcsw;
}

static char block[4096];

static int write_block(int fd, long sequence) {
    return pwrite(fd, block, sizeof block, (off_t)(sequence % 64) * 4096  /* 64 blocks per file, as in Bench.swift */) == (ssize_t)sizeof block ? 0 : -errno;
}

static void record(uint64_t *latencies, long capacity, long *recorded, uint64_t value) {
    if (*recorded < capacity) latencies[(*recorded)++] = value;
}

static long run_blocking(int datasync, int write4k, int fd, double seconds, struct cfloor_window *window,
                         uint64_t *latencies, long capacity, long *recorded) {
    long ops = 0;
    cfloor_take_snapshot(&window->begin);
    uint64_t deadline = window->begin.ns + (uint64_t)(seconds * 1e9);
    while (now_ns() < deadline) {
        uint64_t start = now_ns();
        if (write4k && write_block(fd, ops) < 0) return -errno;
        if ((datasync ? fdatasync(fd) : fsync(fd)) != 0) return -errno;
        record(latencies, capacity, recorded, now_ns() - start);
        ops++;
    }
    cfloor_take_snapshot(&window->end);
    return ops;
}

static long run_libaio(int datasync, int write4k, int depth, const int *fds, int nfds, double seconds,
                       struct cfloor_window *window, uint64_t *latencies, long capacity, long *recorded) {
    io_context_t ctx = 0;
    int rc = io_setup(depth, &ctx);
    if (rc < 0) return rc;
    struct iocb *blocks = calloc((size_t)depth, sizeof *blocks);
    struct iocb **ready = calloc((size_t)depth, sizeof *ready);
    struct io_event *events = calloc((size_t)depth, sizeof *events);
    uint64_t *started = calloc((size_t)depth, sizeof *started);
    long ops = 0, issued = 0;
    int inflight = 0, nready = 0;
    for (int i = 0; i < depth; i++) ready[nready++] = &blocks[i];
    // The window is the request loop only: io_setup before it and io_destroy after it (which waits
    // for an RCU grace period, 28-43 ms here) are not part of a sync's cost.
    cfloor_take_snapshot(&window->begin);
    uint64_t deadline = window->begin.ns + (uint64_t)(seconds * 1e9);
    for (;;) {
        // Prepare and submit everything ready, in one io_submit.
        if (now_ns() < deadline) {
            for (int k = 0; k < nready; k++) {
                int slot = (int)(ready[k] - blocks);
                int fd = fds[slot % nfds];
                if (write4k && write_block(fd, issued) < 0) { ops = -errno; goto done; }
                if (datasync) io_prep_fdsync(ready[k], fd); else io_prep_fsync(ready[k], fd);
                started[slot] = now_ns();
                issued++;
            }
            int submitted = 0;
            while (submitted < nready) {
                rc = io_submit(ctx, nready - submitted, ready + submitted);
                if (rc <= 0) { ops = rc < 0 ? rc : -EAGAIN; goto done; }
                submitted += rc;
            }
            inflight += nready;
        }
        nready = 0;
        if (inflight == 0) break;
        rc = io_getevents(ctx, 1, depth, events, NULL);
        if (rc < 0) { if (rc == -EINTR) continue; ops = rc; goto done; }
        uint64_t now = now_ns();
        for (int i = 0; i < rc; i++) {
            if ((long)events[i].res < 0) { ops = (long)events[i].res; goto done; }
            int slot = (int)(events[i].obj - blocks);
            record(latencies, capacity, recorded, now - started[slot]);
            ready[nready++] = events[i].obj;
            ops++;
        }
        inflight -= rc;
    }
done:
    while (inflight > 0) {  // never leave requests behind
        rc = io_getevents(ctx, 1, depth, events, NULL);
        if (rc > 0) inflight -= rc; else if (rc != -EINTR) break;
    }
    cfloor_take_snapshot(&window->end);
    io_destroy(ctx);
    free(blocks); free(ready); free(events); free(started);
    return ops;
}

static long run_posix(int datasync, int write4k, int depth, const int *fds, int nfds, double seconds,
                      struct cfloor_window *window, uint64_t *latencies, long capacity, long *recorded) {
    struct aiocb *blocks = calloc((size_t)depth, sizeof *blocks);
    const struct aiocb **list = calloc((size_t)depth, sizeof *list);
    uint64_t *started = calloc((size_t)depth, sizeof *started);
    char *busy = calloc((size_t)depth, 1);
    long ops = 0, issued = 0;
    int inflight = 0;
    cfloor_take_snapshot(&window->begin);
    uint64_t deadline = window->begin.ns + (uint64_t)(seconds * 1e9);
    for (;;) {
        if (now_ns() < deadline) {
            for (int slot = 0; slot < depth; slot++) {
                if (busy[slot]) continue;
                int fd = fds[slot % nfds];
                if (write4k && write_block(fd, issued) < 0) { ops = -errno; goto done; }
                memset(&blocks[slot], 0, sizeof blocks[slot]);
                blocks[slot].aio_fildes = fd;
                blocks[slot].aio_sigevent.sigev_notify = SIGEV_NONE;
                started[slot] = now_ns();
                if (aio_fsync(datasync ? O_DSYNC : O_SYNC, &blocks[slot]) != 0) { ops = -errno; goto done; }
                busy[slot] = 1;
                inflight++;
                issued++;
            }
        }
        if (inflight == 0) break;
        int n = 0;
        for (int slot = 0; slot < depth; slot++) list[n++] = busy[slot] ? &blocks[slot] : NULL;
        aio_suspend(list, n, NULL);
        uint64_t now = now_ns();
        for (int slot = 0; slot < depth; slot++) {
            if (!busy[slot]) continue;
            int e = aio_error(&blocks[slot]);
            if (e == EINPROGRESS) continue;
            aio_return(&blocks[slot]);
            busy[slot] = 0;
            inflight--;
            if (e != 0) { ops = -e; goto done; }
            record(latencies, capacity, recorded, now - started[slot]);
            ops++;
        }
    }
done:
    for (int slot = 0; slot < depth; slot++) {
        if (!busy[slot]) continue;
        const struct aiocb *one[1] = {&blocks[slot]};
        while (aio_error(&blocks[slot]) == EINPROGRESS) aio_suspend(one, 1, NULL);
        aio_return(&blocks[slot]);
    }
    cfloor_take_snapshot(&window->end);
    free(blocks); free(list); free(started); free(busy);
    return ops;
}

long cfloor_run(int method, int datasync, int write4k, int depth, const int *fds, int nfds,
                double seconds, struct cfloor_window *window, uint64_t *latencies, long capacity, long *recorded) {
    *recorded = 0;
    memset(block, 0x5a, sizeof block);
    memset(window, 0, sizeof *window);
    switch (method) {
    case CFLOOR_BLOCKING: return run_blocking(datasync, write4k, fds[0], seconds, window, latencies, capacity, recorded);
    case CFLOOR_LIBAIO: return run_libaio(datasync, write4k, depth, fds, nfds, seconds, window, latencies, capacity, recorded);
    case CFLOOR_POSIX: return run_posix(datasync, write4k, depth, fds, nfds, seconds, window, latencies, capacity, recorded);
    default: return -EINVAL;
    }
}

// MARK: The runtime floor's completion thread

struct cfloor_completer {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    long *queue;       // items waiting for the thread
    long *batch;       // the thread's copy of them (same capacity)
    long count, capacity;
    int sleeping;      // the thread waits on `wake`
    int signalled;     // a signal is on its way (no second one needed)
    int stop;
    int grow_batch;    // `batch` must grow to `capacity`
    cfloor_resume_fn resume;
    void *context;
    pthread_t thread;
};

static void *completer_loop(void *argument) {
    struct cfloor_completer *c = argument;
    pthread_mutex_lock(&c->lock);
    for (;;) {
        while (c->count == 0 && !c->stop) {
            c->sleeping = 1;
            pthread_cond_wait(&c->wake, &c->lock);
            c->sleeping = 0;
            c->signalled = 0;
        }
        if (c->count == 0) break;  // stop, and nothing left
        long n = c->count;
        if (c->grow_batch) {
            long *batch = realloc(c->batch, (size_t)c->capacity * sizeof *batch);
            if (!batch) abort();
            c->batch = batch;
            c->grow_batch = 0;
        }
        memcpy(c->batch, c->queue, (size_t)n * sizeof *c->queue);
        c->count = 0;
        pthread_mutex_unlock(&c->lock);
        for (long i = 0; i < n; i++) c->resume(c->context, c->batch[i]);
        pthread_mutex_lock(&c->lock);
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

struct cfloor_completer *cfloor_completer_start(long capacity, cfloor_resume_fn resume, void *context) {
    struct cfloor_completer *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->queue = calloc((size_t)capacity, sizeof *c->queue);
    c->batch = calloc((size_t)capacity, sizeof *c->batch);
    c->capacity = capacity;
    c->resume = resume;
    c->context = context;
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->wake, NULL);
    if (!c->queue || !c->batch || pthread_create(&c->thread, NULL, completer_loop, c) != 0) {
        free(c->queue); free(c->batch); free(c);
        return NULL;
    }
    pthread_setname_np(c->thread, "cfloor-complete");
    return c;
}

void cfloor_completer_submit(struct cfloor_completer *c, long item) {
    pthread_mutex_lock(&c->lock);
    if (c->count == c->capacity) {  // more items than expected (executor jobs): grow both arrays
        long capacity = c->capacity * 2;
        long *queue = realloc(c->queue, (size_t)capacity * sizeof *queue);
        if (!queue) abort();
        c->queue = queue;
        c->capacity = capacity;
        c->grow_batch = 1;
    }
    c->queue[c->count++] = item;
    int signal = c->sleeping && !c->signalled;
    if (signal) c->signalled = 1;
    pthread_mutex_unlock(&c->lock);
    if (signal) pthread_cond_signal(&c->wake);
}

void cfloor_completer_stop(struct cfloor_completer *c) {
    pthread_mutex_lock(&c->lock);
    c->stop = 1;
    pthread_mutex_unlock(&c->lock);
    pthread_cond_signal(&c->wake);
    pthread_join(c->thread, NULL);
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->wake);
    free(c->queue); free(c->batch); free(c);
}
