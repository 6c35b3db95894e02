/* The shared state (state.h) and the counters' lock-free updates. At the
 * bottom of the core: it calls nothing of libckpt. */
#include <time.h>

#include "state.h"

__thread int ckpt_in_lib;
struct ckpt_global ckpt_g = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
};

const char *ckpt_mode_name(int mode) {
  static const char *const names[] = {"none", "host", "peer", "peer+host"};
  return mode >= 0 && mode < 4 ? names[mode] : "none";
}

double ckpt_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void ckpt_count_hooked(void) { __atomic_add_fetch(&ckpt_g.hot.hooked_calls, 1, __ATOMIC_RELAXED); }
void ckpt_count_untagged(void) { __atomic_add_fetch(&ckpt_g.hot.untagged_allocs, 1, __ATOMIC_RELAXED); }

void ckpt_note_mem_info(size_t free_bytes, size_t total_bytes) {
  uint64_t used = total_bytes > free_bytes ? total_bytes - free_bytes : 0;
  __atomic_store_n(&ckpt_g.hot.device_used_now, used, __ATOMIC_RELAXED);
  uint64_t peak = __atomic_load_n(&ckpt_g.hot.device_used_peak, __ATOMIC_RELAXED);
  while (used > peak &&
         !__atomic_compare_exchange_n(&ckpt_g.hot.device_used_peak, &peak, used, true, __ATOMIC_RELAXED,
                                      __ATOMIC_RELAXED)) {
  }
}

void ckpt_stats_snapshot(struct ckpt_stats *out) {
  *out = ckpt_g.stats;
#define HOT(f) out->f = __atomic_load_n(&ckpt_g.hot.f, __ATOMIC_RELAXED)
  HOT(hooked_calls);
  HOT(untagged_allocs);
  HOT(driver_errors);
  HOT(device_used_now);
  HOT(device_used_peak);
  HOT(captured_allocs);
#undef HOT
  out->size = sizeof *out;
}
