/* Device memory samples (CKPT_T_MEM) and the exit summary line.
 *
 * "Without libckpt", here and in ckpt-stats' plot, is the device memory in
 * use at a sample plus the device bytes libckpt had released by offloading
 * at that moment (whole granules): what the device would have held had those
 * survivors stayed. The summary's peaks are the largest of each over the
 * same samples, so both numbers come from one set of instants. */
#include <stdio.h>

#include "driver.h"
#include "log.h"
#include "observers.h"
#include "params.h"
#include "state.h"

static uint64_t peak_used, peak_without; /* under the core lock */
static int nsamples;

void ckpt_observe_mem(bool always) {
  if (!always && !ckpt_trace_enabled()) return;
  size_t f = 0, t = 0;
  if (DRV(cuMemGetInfo_v2, &f, &t) != CUDA_SUCCESS) return;
  ckpt_note_mem_info(f, t);
  struct ckpt_stats s;
  ckpt_stats_snapshot(&s);
  uint64_t used = t > f ? t - f : 0, without = used + s.device_bytes_released;
  if (used > peak_used) peak_used = used;
  if (without > peak_without) peak_without = without;
  nsamples++;
  ckpt_trace(CKPT_T_MEM, 0, NULL, s.device_bytes_released, 0, used);
}

/* "512 MiB" / "40 GiB" / "1.5 GiB": GiB from 4 GiB up, as ckpt-stats does. */
static void size_text(char *out, size_t cap, uint64_t n, bool gib) {
  double v = (double)n / (gib ? 1073741824.0 : 1048576.0);
  double frac = v - (double)(uint64_t)(v + 0.5);
  bool whole = (frac < 0.05 && frac > -0.05) || v >= 100;
  snprintf(out, cap, whole ? "%.0f %s" : "%.1f %s", v, gib ? "GiB" : "MiB");
}

/* The saving in words: "device peak 512 MiB → 256 MiB (−50%), stall 0.012 s". */
static void saving_text(char *out, size_t cap, const struct ckpt_stats *s) {
  if (!nsamples) {
    snprintf(out, cap, "device peak not sampled, stall %.3f s", s->stall_seconds_total);
    return;
  }
  bool gib = peak_without >= 4ull << 30;
  char before[32], after[32], pct[32] = "no saving";
  size_text(before, sizeof before, peak_without, gib);
  size_text(after, sizeof after, peak_used, gib);
  if (peak_without > peak_used)
    snprintf(pct, sizeof pct, "\xe2\x88\x92%.0f%%", 100.0 * (double)(peak_without - peak_used) / (double)peak_without);
  snprintf(out, cap, "device peak %s \xe2\x86\x92 %s (%s), stall %.3f s", before, after, pct, s->stall_seconds_total);
}

const char *ckpt_observe_mode = "none"; /* set by ckpt_observe_init (observe_run.c) */

void ckpt_observe_summary(void) {
  if (!ckpt_param_int(CKPT_P_STATS_AT_EXIT)) return;
  struct ckpt_stats s;
  LOCK();
  ckpt_stats_snapshot(&s);
  char saving[160];
  saving_text(saving, sizeof saving, &s);
  UNLOCK();
  if (s.hooked_calls + s.regions_opened == 0) return; /* libckpt was never asked anything */
  if (s.tagged_allocs + s.untagged_allocs == 0 && s.device_used_peak == 0) {
    ckpt_log_print("summary: no CUDA device was used (regions=%llu): nothing to offload",
                   (unsigned long long)s.regions_opened);
    return;
  }
  ckpt_log_print("summary: %s; mode=%s regions=%llu tagged=%llu offloaded=%.1f MiB restored=%.1f MiB "
                 "device released peak=%.1f MiB copy=%.3f s stall=%.3f s pool-full=%llu restore-oom=%llu "
                 "driver-errors=%llu peer-mismatches=%llu peer-lost=%llu verify-failures=%llu",
                 saving, ckpt_observe_mode, (unsigned long long)s.regions_opened,
                 (unsigned long long)s.tagged_allocs, (double)s.offloaded_bytes_total / 1048576.0,
                 (double)s.restored_bytes_total / 1048576.0, (double)s.device_bytes_released_peak / 1048576.0,
                 s.copy_seconds_total, s.stall_seconds_total, (unsigned long long)s.host_pool_exhausted,
                 (unsigned long long)s.restore_oom, (unsigned long long)s.driver_errors,
                 (unsigned long long)s.peer_mismatches, (unsigned long long)s.peer_lost,
                 (unsigned long long)s.verify_failures);
}
