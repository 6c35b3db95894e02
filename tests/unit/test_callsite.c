/* CKPT_STACKS call sites (dedup, ranking, symbols off the hot path) and the
 * driver-error context (a backtrace once per call site). */
#include "unit_helpers.h"
#include "../../hooks/observers.h"

static void setup(void) {
  ut_env_reset();
  ut_env("CKPT_MODE", "host");
  ut_env("CKPT_STATS_SHM", "0");
  ut_env("CKPT_MIN_BYTES", "1M");
}

static void stacks(void) {
  setup();
  ut_env("CKPT_STACKS", "1");
}

/* Not inlined, no tail call: each keeps its own frame. */
#define KEEP_FRAME() __asm__ volatile("" ::: "memory")
__attribute__((noinline)) CUdeviceptr unit_alloc_big(void) {
  CUdeviceptr p = ut_alloc(4 * UT_MiB);
  KEEP_FRAME();
  return p;
}
__attribute__((noinline)) CUdeviceptr unit_alloc_small(void) {
  CUdeviceptr p = ut_alloc(2 * UT_MiB);
  KEEP_FRAME();
  return p;
}

static struct ckpt_seg_site top[CKPT_SEG_MAX_SITES];
static int top_sites(void) {
  LOCK();
  int n = ckpt_callsite_top(top, CKPT_SEG_MAX_SITES);
  UNLOCK();
  return n;
}

static bool names(const struct ckpt_seg_site *s, const char *fn) {
  for (uint32_t f = 0; f < s->nframes; f++)
    if (strstr(s->frame[f], fn)) return true;
  return false;
}

#ifdef CKPT_HAVE_LIBUNWIND
Test(callsite, sites_are_deduplicated_ranked_and_named, .init = stacks) {
  ut_context();
  int id = ckpt_region_begin("r");
  CUdeviceptr p[5];
#pragma GCC unroll 1
  for (int i = 0; i < 3; i++) p[i] = unit_alloc_small(); /* one call site */
  p[3] = unit_alloc_big();
  p[4] = unit_alloc_big();
  ckpt_region_end();
  /* The loop's three calls are one site; the two lines calling
   * unit_alloc_big are two (their stacks differ below it). */
  int n = top_sites();
  cr_assert_eq(n, 3);
  cr_assert_eq(top[0].allocs, 3, "nothing offloaded yet: ranked by allocations");
  cr_assert(top[1].allocs == 1 && top[2].allocs == 1);
  (void)id;
  LOCK();
  ckpt_callsite_offloaded(top[1].id, 100);
  UNLOCK();
  cr_assert_eq(top_sites(), 3);
  cr_assert_eq(top[0].offloaded_bytes, 100, "ranked by offloaded bytes");
  /* Naming happens off the hot path (the observer thread, every 100 ms, or
   * here): whether the thread got there first is timing, so only the result
   * is checked. */
  ckpt_callsite_symbolize();
  top_sites();
  cr_assert(names(&top[0], "unit_alloc_big"), "frame 0: %s", top[0].frame[0]);
  cr_assert(names(&top[1], "unit_alloc_small") || names(&top[2], "unit_alloc_small"));
  for (int i = 0; i < 5; i++) ut_free(p[i]);
}
#else
Test(callsite, unavailable_without_libunwind, .init = stacks) {
  ut_capture_start();
  ckpt_init();
  const char *log = ut_capture_end();
  cr_assert_not_null(strstr(log, "built without libunwind: call sites unavailable"), "log: %s", log);
  cr_assert_eq(ckpt_callsite_capture(), 0);
}
#endif

Test(callsite, off_by_default, .init = setup) {
  ut_context();
  ckpt_region_begin("r");
  CUdeviceptr p = unit_alloc_small();
  ckpt_region_end();
  cr_assert_eq(top_sites(), 0);
  cr_assert_eq(ckpt_callsite_capture(), 0);
  ut_free(p);
}

__attribute__((noinline)) void unit_failing_call_a(void) { ckpt_crash_context("cuMemMap(va, size)", 2); }
__attribute__((noinline)) void unit_failing_call_b(void) { ckpt_crash_context("cuMemCreate(&h, size)", 2); }

Test(callsite, crash_context_once_per_call_site, .init = setup) {
  ckpt_init();
  ut_capture_start();
  for (int i = 0; i < 3; i++) unit_failing_call_a();
  unit_failing_call_b();
  const char *log = ut_capture_end();
  const char *first = strstr(log, "driver error context: cuMemMap(va, size) returned");
  cr_assert_not_null(first, "log: %s", log);
  cr_assert_null(strstr(first + strlen("driver error context: cuMemMap"), "cuMemMap(va, size) returned"), "logged twice: %s", log);
  cr_assert_not_null(strstr(log, "cuMemCreate(&h, size) returned"), "log: %s", log);
  cr_assert_not_null(strstr(log, "crash_context_once_per_call_site"), "no backtrace naming the caller: %s", log);
}
