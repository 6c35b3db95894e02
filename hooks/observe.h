/* The side-car: what the core tells the observers, the trace (CKPT_TRACE),
 * the live stats segment (ckpt-stats), per-region-name counters, call sites
 * (CKPT_STACKS) and profiling (CKPT_PROFILE, CKPT_SYNC). The core calls them
 * only through this header, at region boundaries, at tagged allocations and
 * when the engine moves data; each is cheap. "lock held": the caller holds
 * the core lock; "lock NOT held": it must not (the call may take it or wait
 * for the device); unmarked: either. Observers read the core's counters only
 * through ckpt_stats_snapshot (state.h) and call nothing else of the core. */
#ifndef CKPT_OBSERVE_H
#define CKPT_OBSERVE_H
#include <stdbool.h>
#include <stdint.h>

struct region;

/* Per region name: what ckpt-stats shows per region. */
struct ckpt_name_stats {
  char name[48];
  uint64_t regions;          /* regions opened with this name */
  uint64_t tagged_allocs, tagged_bytes;
  uint64_t offloads, offloaded_bytes;
  uint64_t restores, restored_bytes;
  double copy_seconds;       /* copy stream time attributed to this name */
  double stall_seconds;      /* consumers waiting for its restores */
  double fwd_seconds, bwd_seconds; /* CKPT_PROFILE: device time, forward / backward */
};
/* The slot for this name (lock held); NULL when the table is full. */
struct ckpt_name_stats *ckpt_name_stats(const char *name);

/* Trace events (no-ops unless CKPT_TRACE is set). */
enum ckpt_trace_kind {
  CKPT_T_REGION_OPEN = 1, /* region, name */
  CKPT_T_REGION_CLOSE,    /* region */
  CKPT_T_OFFLOAD_START,   /* region (top), bytes, stream = copy stream */
  CKPT_T_OFFLOAD_END,     /* region, bytes swapped, stream = their device bytes, value = copy ns */
  CKPT_T_RESTORE_START,
  CKPT_T_RESTORE_END,
  CKPT_T_STALL,           /* region, value = ns the caller waited */
  CKPT_T_STEP,            /* a new cycle */
  CKPT_T_MEM,             /* value = device bytes used (cuMemGetInfo), bytes = released by libckpt */
  CKPT_T_OFFLOAD_ROLLBACK, /* region, bytes not swapped, value = items (before the END) */
  CKPT_T_RESTORE_ROLLBACK,
};
void ckpt_trace(int kind, int region, const char *name, uint64_t bytes, uintptr_t stream, uint64_t value);
bool ckpt_trace_enabled(void); /* CKPT_TRACE is on (a relaxed load) */

/* Device memory (cuMemGetInfo, driver loaded): a CKPT_T_MEM record, and the
 * peaks of the exit summary (used, and used + released by libckpt). At region
 * boundaries and after swaps; `always`: also when not tracing (region close:
 * the stats' device peak). Lock held. */
void ckpt_observe_mem(bool always);

/* The live stats segment: copy ckpt_g.stats and the name table (lock held). */
void ckpt_publish(void);

/* CKPT_STACKS: the call site of the allocation being tagged (lock held), 0
 * when unavailable; bytes offloaded from allocations made there. */
uint32_t ckpt_callsite_capture(void);
void ckpt_callsite_offloaded(uint32_t site, uint64_t bytes);

/* CKPT_PROFILE / CKPT_SYNC at region boundaries (lock NOT held). */
void ckpt_profile_begin(int region, const char *name);
void ckpt_profile_end(int region);
void ckpt_profile_restore(int region); /* backward reached this region */

/* CKPT_PROFILE / CKPT_SYNC on or off (init, and ckpt_profile_set). */
void ckpt_profile_init(bool profile, bool sync);
/* The stream the calling thread launches work on (ckpt_set_stream): the
 * profile's events are recorded there; 0 = the legacy stream. */
void ckpt_profile_set_stream(uintptr_t stream);

/* Start and stop (init / exit / fork child). */
/* `mode`: the mode's name, shown by ckpt-stats. */
void ckpt_observe_init(const char *mode);
void ckpt_observe_exit(void);
void ckpt_observe_forked(void);
#endif
