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

/// The durable-write workload (durable.c): one 4 KiB write made durable (fdatasync semantics) per
/// op. CFLOOR_DURABLE_THREADS: `depth` pthreads, each pwrite(2) + fdatasync(2).
/// CFLOOR_DURABLE_LIBAIO: one thread, kernel AIO by raw system calls; each writer's op is a
/// blocking buffered pwrite(2), then IOCB_CMD_FDSYNC; `depth` syncs in flight.
/// CFLOOR_DURABLE_DIRECT_DSYNC: one thread; each op is one IOCB_CMD_PWRITE with aio_rw_flags =
/// RWF_DSYNC from an aligned buffer (the descriptors must be open with O_DIRECT); `depth` in flight.
enum cfloor_durable_method { CFLOOR_DURABLE_THREADS = 0, CFLOOR_DURABLE_LIBAIO = 1, CFLOOR_DURABLE_DIRECT_DSYNC = 2 };

/// The size of a durable write, and the alignment of its offsets and buffers.
#define CFLOOR_DURABLE_BLOCK 4096

/// O_DIRECT (which Swift's Glibc module does not export: it needs _GNU_SOURCE).
int cfloor_o_direct(void);

/// Where writer `writer`'s `sequence`-th write goes: with one shared file, each writer cycles over
/// its own `region_blocks` blocks (writer w: blocks w × region_blocks …); with own files, over the
/// first `region_blocks` blocks of its file. The Swift methods call this too, so every method
/// writes the same offsets.
int64_t cfloor_durable_offset(int writer, long sequence, int shared_file, int region_blocks);

/// Runs a durable-write method for `seconds` with `depth` writers; writer i writes to
/// fds[i % nfds] (nfds is 1 — one shared file — or depth). Latencies (write start → durable, in
/// nanoseconds) go to `latencies` (up to `capacity`), `window` gets the snapshots around the
/// request loop. Returns the number of durable writes completed, or -errno of the first failure.
long cfloor_durable_run(int method, int depth, const int *fds, int nfds, int region_blocks, double seconds,
                        struct cfloor_window *window, uint64_t *latencies, long capacity, long *recorded);

#endif
