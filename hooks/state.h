/* The state every layer of the core shares, and the rules for touching it.
 *
 * Lock order (outermost first; never take an earlier one while holding a
 * later one):
 *   1. ckpt_g.lock      the core lock: regions, allocations, the cycle, jobs,
 *                       the host pool, streams and gates, ckpt_g.stats.
 *   2. observer locks   profile_mu, the trace's buf_mu/flush_mu, the observer
 *                       thread's mutex: taken inside the core lock (observe.h
 *                       says which observer calls run with it held).
 *   3. log              the log's own write lock, innermost.
 * The engine thread and API callers drop the core lock around every blocking
 * driver wait (events, gates, device synchronisation).
 *
 * In-lib guard: ckpt_in_lib is set while libckpt's own code runs on a thread,
 * so that driver calls it makes through hooked entry points pass straight to
 * the real driver (IN_LIB_BEGIN/END save and restore it).
 *
 * Fields used by one module only are that module's statics, not here. */
#ifndef CKPT_STATE_H
#define CKPT_STATE_H
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "../include/ckpt.h"
#include "core.h"

struct region;

struct ckpt_global {
  pthread_mutex_t lock;
  int mode;                /* enum ckpt_mode_value (params.h), decided once at init */
  bool tagging;            /* decided once at init */
  bool tag_off;            /* no new tagged allocation: driver lacks VMM, or exit began (atomic) */
  bool host_off;           /* the driver cannot create pinned host memory (lock) */
  bool forked;             /* we are a fork()ed child: hands off */
  bool exiting;            /* exit handler ran: no new offload or cache entry (lock) */
  struct region *open;     /* innermost open region: region.c writes it, ckpt_alloc reads it lock-free */
  struct ckpt_stats stats; /* under the lock; its hot fields below are not used */
  /* Counters the lock-free paths update atomically: kept apart from `stats`
   * so that a locked copy of it never reads them plainly. */
  struct {
    uint64_t hooked_calls, untagged_allocs, driver_errors, device_used_now, device_used_peak, captured_allocs;
  } hot;
};
extern struct ckpt_global ckpt_g;

#define LOCK() pthread_mutex_lock(&ckpt_g.lock)
#define UNLOCK() pthread_mutex_unlock(&ckpt_g.lock)

#define IN_LIB_BEGIN() int in_lib_saved_ = ckpt_in_lib; ckpt_in_lib = 1
#define IN_LIB_END() ckpt_in_lib = in_lib_saved_

/* A consistent copy of every counter (caller holds the lock): the one way
 * observers read the core's counters. */
void ckpt_stats_snapshot(struct ckpt_stats *out);
/* "none", "host", "peer", "peer+host". */
const char *ckpt_mode_name(int mode);
/* CLOCK_MONOTONIC in seconds. */
double ckpt_now(void);
#endif
