/* Between observe.c (name table, observer thread, start/stop) and the
 * observers it starts: the trace, the stats segment, call sites, profiling.
 * observe.h is what the core sees; this is what the observers see of each other. */
#ifndef CKPT_OBSERVERS_H
#define CKPT_OBSERVERS_H
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "observe.h"
#include "stats_segment.h"

/* observe.c */
int ckpt_name_table(const struct ckpt_name_stats **names); /* lock held; the count */
void ckpt_observer_wake(void); /* the observer thread runs soon (flush, symbolise) */
/* The observer thread's wake-up state (observe_run.c runs the thread). */
struct ckpt_observer {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool running, kick;
};
extern struct ckpt_observer ckpt_observer;

/* trace.c */
bool ckpt_trace_open(const char *path);
/* A record followed by `text` (NUL-padded) in as many records as it takes. */
void ckpt_trace_text(int kind, int id, uint64_t bytes, uint64_t value, const char *text);
void ckpt_trace_flush(void); /* observer thread, exit */
void ckpt_trace_close(void);
void ckpt_trace_forked(void);

/* shm.c */
bool ckpt_shm_create(const char *mode, uint32_t stacks, uint32_t flags);
void ckpt_shm_remove(void); /* lock held */
void ckpt_shm_forked(void);

/* callsite.c */
uint32_t ckpt_callsite_init(bool wanted); /* CKPT_SEG_STACKS_* */
/* Top call sites by offloaded bytes into out[0..max) (lock held); the count.
 * Frames not symbolised yet are left empty and queued for the observer. */
int ckpt_callsite_top(struct ckpt_seg_site *out, int max);
int ckpt_callsite_symbolize(void); /* observer thread: sites symbolised now */
void ckpt_callsite_report_trace(void); /* exit: the top sites into the trace */
void ckpt_callsite_forked(void);

/* observe_mem.c: the exit summary line (CKPT_STATS_AT_EXIT), after the
 * engine stopped; lock NOT held. */
void ckpt_observe_summary(void);
extern const char *ckpt_observe_mode; /* the mode's name, for the summary */

/* profile.c */
void ckpt_profile_forked(void);

#endif
