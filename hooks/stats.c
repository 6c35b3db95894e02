/* Counters, exposed through ckpt_stats_get(). Updated under the core lock,
 * except ckpt_g.hot, which lock-free paths bump atomically. */
#include <string.h>
#include <time.h>

#include "internal.h"

double ckpt_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void ckpt_count_hooked(void) { __atomic_add_fetch(&ckpt_g.hot.hooked_calls, 1, __ATOMIC_RELAXED); }
void ckpt_count_untagged(void) { __atomic_add_fetch(&ckpt_g.hot.untagged_allocs, 1, __ATOMIC_RELAXED); }
void ckpt_note_driver_error(void) { __atomic_add_fetch(&ckpt_g.hot.driver_errors, 1, __ATOMIC_RELAXED); }

void ckpt_note_mem_info(size_t free_bytes, size_t total_bytes) {
  uint64_t used = total_bytes > free_bytes ? total_bytes - free_bytes : 0;
  __atomic_store_n(&ckpt_g.hot.device_used_now, used, __ATOMIC_RELAXED);
  uint64_t peak = __atomic_load_n(&ckpt_g.hot.device_used_peak, __ATOMIC_RELAXED);
  while (used > peak &&
         !__atomic_compare_exchange_n(&ckpt_g.hot.device_used_peak, &peak, used, true, __ATOMIC_RELAXED,
                                      __ATOMIC_RELAXED)) {
  }
}

/* Samples device usage from the driver (torch's pool counters do not see our
 * mappings). Cheap; called at region boundaries by the API. */
void ckpt_stats_sample_device(void) {
  size_t f = 0, t = 0;
  if (ckpt_g.tagging && DRV(cuMemGetInfo_v2, &f, &t) == CUDA_SUCCESS) {
    ckpt_note_mem_info(f, t);
    ckpt_trace(CKPT_T_MEM, 0, NULL, 0, 0, t - f);
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
#undef HOT
  out->size = sizeof *out;
}

CKPT_API int ckpt_stats_get(struct ckpt_stats *out, size_t size) {
  if (!out || size < sizeof(uint64_t)) return CKPT_EINVAL;
  ckpt_init();
  struct ckpt_stats s;
  LOCK();
  ckpt_stats_snapshot(&s);
  UNLOCK();
  if (size > sizeof s) size = sizeof s;
  memcpy(out, &s, size);
  if (size >= sizeof s.size) out->size = size;
  return 0;
}
