/* The observer thread (flushes the trace, symbolises call sites: both too
 * slow for the hot path or the core lock) and start/stop of every observer. */
#define _GNU_SOURCE /* pthread_timedjoin_np */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "observers.h"
#include "params.h"
#include "state.h"

#define OBSERVER_PERIOD_MS 100

static pthread_t observer;
static bool observer_stop;

static void *observer_main(void *arg) {
  (void)arg;
  ckpt_in_lib = 1;
  pthread_mutex_lock(&ckpt_observer.mu);
  while (!observer_stop) {
    if (!__atomic_load_n(&ckpt_observer.kick, __ATOMIC_RELAXED)) {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      ts.tv_nsec += OBSERVER_PERIOD_MS * 1000000L;
      if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
      pthread_cond_timedwait(&ckpt_observer.cv, &ckpt_observer.mu, &ts);
    }
    __atomic_store_n(&ckpt_observer.kick, false, __ATOMIC_RELAXED);
    if (observer_stop) break;
    pthread_mutex_unlock(&ckpt_observer.mu);
    ckpt_trace_flush();
    if (ckpt_callsite_symbolize() > 0) { /* show the names now, not at the next region end */
      LOCK();
      ckpt_publish();
      UNLOCK();
    }
    pthread_mutex_lock(&ckpt_observer.mu);
  }
  pthread_mutex_unlock(&ckpt_observer.mu);
  return NULL;
}

static void observer_join(void) {
  if (!ckpt_observer.running) return;
  pthread_mutex_lock(&ckpt_observer.mu);
  observer_stop = true;
  pthread_cond_signal(&ckpt_observer.cv);
  pthread_mutex_unlock(&ckpt_observer.mu);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 2; /* it may wait for the core lock: never hang exit on it */
  if (pthread_timedjoin_np(observer, NULL, &ts) != 0) CKPT_WARN("observer thread did not stop within 2 s at exit");
  ckpt_observer.running = false;
}

/* ---- start and stop ------------------------------------------------------ */


void ckpt_observe_init(const char *mode) {
  ckpt_observe_mode = mode;
  const char *trace_path = ckpt_param_str(CKPT_P_TRACE);
  bool profile = ckpt_param_int(CKPT_P_PROFILE), sync = ckpt_param_int(CKPT_P_SYNC);
  bool tracing = trace_path[0] && ckpt_trace_open(trace_path);
  uint32_t stacks = ckpt_callsite_init(ckpt_param_int(CKPT_P_STACKS));
  ckpt_profile_init(profile, sync);
  if (ckpt_param_int(CKPT_P_STATS_SHM)) {
    uint32_t flags = (profile ? CKPT_SEG_PROFILE : 0) | (sync ? CKPT_SEG_SYNC : 0) | (tracing ? CKPT_SEG_TRACE : 0);
    ckpt_shm_create(mode, stacks, flags);
  }
  if ((tracing || stacks == CKPT_SEG_STACKS_ON) && pthread_create(&observer, NULL, observer_main, NULL) == 0)
    ckpt_observer.running = true;
}

/* At exit, engine stopped; other program threads may still call in. */
void ckpt_observe_exit(void) {
  observer_join();
  if (ckpt_trace_enabled()) {
    ckpt_callsite_report_trace();
    ckpt_trace_close();
  }
  LOCK();
  ckpt_shm_remove();
  UNLOCK();
  ckpt_observe_summary();
}

/* The child of a fork: the segment and the trace are the parent's, the
 * observer thread did not follow. Touch nothing of theirs, stop observing. */
void ckpt_observe_forked(void) {
  ckpt_observer.running = false;
  ckpt_shm_forked();
  ckpt_trace_forked();
  ckpt_callsite_forked();
  ckpt_profile_forked();
}
