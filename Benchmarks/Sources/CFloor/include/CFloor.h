// The C floor of the benchmark: what a C program reaches with each method on this machine.
#ifndef CFLOOR_H
#define CFLOOR_H

#include <stdint.h>

enum cfloor_method { CFLOOR_BLOCKING = 0, CFLOOR_LIBAIO = 1, CFLOOR_POSIX = 2 };

/// Runs `method` for `seconds` with `depth` requests in flight; request slot i uses fds[i % nfds].
/// With `write4k`, each request first pwrites 4 KiB (synchronously), then syncs. Latencies of
/// completed requests (submit → completion, in nanoseconds) go to `latencies` (up to `capacity`).
/// Returns the number of completed syncs, or -errno.
long cfloor_run(int method, int datasync, int write4k, int depth, const int *fds, int nfds,
                double seconds, uint64_t *latencies, long capacity, long *recorded);

#endif
