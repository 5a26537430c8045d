// The C floor of the benchmark: what a C program reaches with each method on this machine.
#ifndef CFLOOR_H
#define CFLOOR_H

#include <stdint.h>

enum cfloor_method { CFLOOR_BLOCKING = 0, CFLOOR_LIBAIO = 1, CFLOOR_POSIX = 2 };

/// A point of a measurement: CLOCK_MONOTONIC, process CPU time and context switches (getrusage).
struct cfloor_snapshot {
    uint64_t ns;
    uint64_t cpu_us;
    long context_switches;
};

/// The measured window of a run: from just before the first request to just after the last
/// completion. Setting up and tearing down (io_setup, io_destroy, a backend's thread) is outside it.
struct cfloor_window {
    struct cfloor_snapshot begin;
    struct cfloor_snapshot end;
};

/// Takes a snapshot; the Swift methods use the same function, so every method is timed alike.
void cfloor_take_snapshot(struct cfloor_snapshot *snapshot);

/// Runs `method` for `seconds` with `depth` requests in flight; request slot i uses fds[i % nfds].
/// With `write4k`, each request first pwrites 4 KiB (synchronously), then syncs. Latencies of
/// completed requests (submit → completion, in nanoseconds) go to `latencies` (up to `capacity`).
/// `window` gets the snapshots around the request loop. Returns the number of completed syncs, or
/// -errno.
long cfloor_run(int method, int datasync, int write4k, int depth, const int *fds, int nfds,
                double seconds, struct cfloor_window *window, uint64_t *latencies, long capacity, long *recorded);

/// The runtime floor's completion thread: a pthread that completes every request at once, with no
/// system call. `cfloor_completer_submit` queues an item under a mutex and signals a condition
/// variable when the thread sleeps; the thread takes everything queued and calls `resume(context,
/// item)` for each, outside the lock; `resume` may submit more items (they go to the next batch).
/// `capacity` is the initial size of the queue; it grows when needed.
typedef void (*cfloor_resume_fn)(void *context, long item);
struct cfloor_completer;
struct cfloor_completer *cfloor_completer_start(long capacity, cfloor_resume_fn resume, void *context);
void cfloor_completer_submit(struct cfloor_completer *completer, long item);
/// Ends the thread after it has resumed everything queued, joins it and frees the completer.
void cfloor_completer_stop(struct cfloor_completer *completer);

#endif
