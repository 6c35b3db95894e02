/* Regions: ids, nesting, errors, counters, the mode in effect.
 * Each test runs in its own process; parameters are set before the first call. */
#include <sys/wait.h>
#include <time.h>

#include "unit_helpers.h"

static void host_mode(void) {
  ut_env_reset();
  ut_env("CKPT_MODE", "host");
}

static void none_mode(void) {
  ut_env_reset();
  ut_env("CKPT_MODE", "none");
}

Test(region, ids_are_positive_and_increasing, .init = host_mode) {
  int prev = 0;
  for (int i = 0; i < 20; i++) {
    int id = ckpt_region_begin("r");
    cr_assert_gt(id, 0, "begin #%d returned %d", i, id);
    cr_assert_gt(id, prev, "ids must increase: %d after %d", id, prev);
    cr_assert_eq(ckpt_region_end(), id, "end closes the region just opened");
    prev = id;
  }
  /* A NULL name is accepted (it names nothing). */
  int id = ckpt_region_begin(NULL);
  cr_assert_gt(id, prev);
  cr_assert_eq(ckpt_region_end(), id);
}

Test(region, end_returns_innermost_id, .init = host_mode) {
  int a = ckpt_region_begin("outer");
  int b = ckpt_region_begin("middle");
  int c = ckpt_region_begin("inner");
  cr_assert(a > 0 && b > a && c > b, "ids %d %d %d", a, b, c);
  cr_assert_eq(ckpt_region_end(), c);
  /* After closing the innermost one a new region nests in `middle`. */
  int d = ckpt_region_begin("inner2");
  cr_assert_gt(d, c);
  cr_assert_eq(ckpt_region_end(), d);
  cr_assert_eq(ckpt_region_end(), b);
  cr_assert_eq(ckpt_region_end(), a);
  ut_capture_start(); /* the expected warning */
  cr_assert_eq(ckpt_region_end(), CKPT_ESTATE, "everything is closed now");
  ut_capture_end();
}

Test(region, end_without_open_region_is_estate, .init = host_mode) {
  ut_capture_start();
  int rc1 = ckpt_region_end();
  int rc2 = ckpt_region_end();
  const char *log = ut_capture_end();
  cr_assert_eq(rc1, CKPT_ESTATE);
  cr_assert_eq(rc2, CKPT_ESTATE);
  /* Warned once, not for every unbalanced call. */
  cr_assert_not_null(strstr(log, "no open region"), "log: %s", log);
  cr_assert_null(strstr(strstr(log, "no open region") + 1, "no open region"), "warned twice: %s", log);
  struct ckpt_stats s = ut_stats();
  cr_assert_eq(s.regions_closed, 0);
  /* The error leaves the region stack usable. */
  int id = ckpt_region_begin("after");
  cr_assert_gt(id, 0);
  cr_assert_eq(ckpt_region_end(), id);
}

Test(region, query_untagged_pointer, .init = host_mode) {
  int local = 0, region = 1234, res = 1234;
  static char heap_like[64];
  cr_assert_eq(ckpt_query((uintptr_t)&local, &region, &res), CKPT_ENOENT);
  cr_assert_eq(res, CKPT_UNTAGGED);
  res = 1234;
  cr_assert_eq(ckpt_query((uintptr_t)heap_like, NULL, &res), CKPT_ENOENT);
  cr_assert_eq(res, CKPT_UNTAGGED);
  res = 1234;
  cr_assert_eq(ckpt_query(0, NULL, &res), CKPT_ENOENT);
  cr_assert_eq(res, CKPT_UNTAGGED);
  /* Both out-parameters may be NULL. */
  cr_assert_eq(ckpt_query(0x1000, NULL, NULL), CKPT_ENOENT);
  /* Inside an open region an untagged pointer is still untagged. */
  int id = ckpt_region_begin("r");
  res = 1234;
  cr_assert_eq(ckpt_query((uintptr_t)&local, NULL, &res), CKPT_ENOENT);
  cr_assert_eq(res, CKPT_UNTAGGED);
  cr_assert_eq(ckpt_region_end(), id);
}

Test(region, opened_and_closed_counters, .init = host_mode) {
  struct ckpt_stats s0 = ut_stats();
  cr_assert_eq(s0.regions_opened, 0);
  cr_assert_eq(s0.regions_closed, 0);
  int a = ckpt_region_begin("a");
  int b = ckpt_region_begin("b");
  struct ckpt_stats s1 = ut_stats();
  cr_assert_eq(s1.regions_opened, 2);
  cr_assert_eq(s1.regions_closed, 0);
  cr_assert_eq(ckpt_region_end(), b);
  struct ckpt_stats s2 = ut_stats();
  cr_assert_eq(s2.regions_opened, 2);
  cr_assert_eq(s2.regions_closed, 1);
  cr_assert_eq(ckpt_region_end(), a);
  ut_capture_start();
  cr_assert_eq(ckpt_region_end(), CKPT_ESTATE);
  ut_capture_end();
  struct ckpt_stats s3 = ut_stats();
  cr_assert_eq(s3.regions_opened, 2);
  cr_assert_eq(s3.regions_closed, 2, "a failed end is not counted");
  cr_assert_eq(s3.tagged_allocs, 0);
}

Test(region, stats_get_arguments, .init = host_mode) {
  struct ckpt_stats s;
  cr_assert_eq(ckpt_stats_get(NULL, sizeof s), CKPT_EINVAL);
  cr_assert_eq(ckpt_stats_get(&s, 0), CKPT_EINVAL);
  cr_assert_eq(ckpt_stats_get(&s, sizeof(uint64_t) - 1), CKPT_EINVAL);
  int id = ckpt_region_begin("r");
  cr_assert_gt(id, 0);
  /* An older, shorter struct: only its prefix is written, `size` says how much. */
  uint64_t prefix[4];
  memset(prefix, 0xab, sizeof prefix);
  cr_assert_eq(ckpt_stats_get((struct ckpt_stats *)(void *)prefix, 3 * sizeof(uint64_t)), 0);
  cr_assert_eq(prefix[0], 3 * sizeof(uint64_t));
  cr_assert_eq(prefix[2], 1, "regions_opened is the third field");
  cr_assert_eq(prefix[3], 0xababababababababull, "wrote past the size given");
  cr_assert_eq(ckpt_region_end(), id);
}

Test(region, step_starts_a_new_cycle, .init = host_mode) {
  cr_assert_eq(ckpt_step(), 0, "a step with nothing recorded is fine");
  int a = ckpt_region_begin("layer");
  cr_assert_eq(ckpt_region_end(), a);
  /* A closed top-level region of this forward pass is known to the API
   * (nothing to offload: it has no survivors). */
  cr_assert_eq(ckpt_offload(a), 0);
  cr_assert_eq(ckpt_wait(a), 0);
  cr_assert_eq(ckpt_step(), 0);
  /* The new cycle dropped the old regions that hold nothing. */
  cr_assert_eq(ckpt_offload(a), CKPT_ENOENT);
  cr_assert_eq(ckpt_wait(a), CKPT_ENOENT);
  cr_assert_eq(ckpt_prefetch(a), CKPT_ENOENT);
  /* Ids keep increasing across steps. */
  int b = ckpt_region_begin("layer");
  cr_assert_gt(b, a);
  cr_assert_eq(ckpt_region_end(), b);
  cr_assert_eq(ckpt_step(), 0);
  struct ckpt_stats s = ut_stats();
  cr_assert_eq(s.regions_opened, 2);
  cr_assert_eq(s.regions_closed, 2);
}

Test(region, step_keeps_open_regions, .init = host_mode) {
  int a = ckpt_region_begin("open across a step");
  cr_assert_eq(ckpt_step(), 0);
  cr_assert_eq(ckpt_offload(a), CKPT_ESTATE, "still open: known, and refused");
  cr_assert_eq(ckpt_region_end(), a);
}

Test(region, mode_default_is_host) {
  ut_env_reset();
  cr_assert_str_eq(ckpt_mode(), "host");
  cr_assert(ckpt_tagging(), "host mode with the simulated driver tags");
}

Test(region, mode_host, .init = host_mode) {
  cr_assert_str_eq(ckpt_mode(), "host");
  cr_assert(ckpt_tagging());
}

Test(region, mode_none) {
  ut_env_reset();
  ut_env("CKPT_MODE", "NONE"); /* case-insensitive */
  cr_assert_str_eq(ckpt_mode(), "none");
  cr_assert_not(ckpt_tagging(), "mode none only counts");
}

/* The peer modes are real (issue 12): the mode is kept and tags; the group is
 * made at the first offload (tests/peer), so init says nothing. */
static void check_peer_mode(const char *value) {
  ut_env_reset();
  ut_env("CKPT_MODE", value);
  ut_capture_start();
  const char *mode = ckpt_mode();
  const char *log = ut_capture_end();
  cr_assert_str_eq(mode, value, "CKPT_MODE=%s", value);
  cr_assert(ckpt_tagging());
  cr_assert_str_eq(log, "", "init warned for CKPT_MODE=%s: '%s'", value, log);
}

Test(region, mode_peer) { check_peer_mode("peer"); }
Test(region, mode_peer_host) { check_peer_mode("peer+host"); }

Test(region, bad_mode_warns_and_uses_default) {
  ut_env_reset();
  ut_env("CKPT_MODE", "sideways");
  ut_capture_start();
  const char *mode = ckpt_mode();
  const char *log = ut_capture_end();
  cr_assert_str_eq(mode, "host");
  cr_assert_not_null(strstr(log, "CKPT_MODE"), "log: %s", log);
}

Test(region, bookkeeping_in_mode_none, .init = none_mode) {
  cr_assert_str_eq(ckpt_mode(), "none");
  int a = ckpt_region_begin("a");
  int b = ckpt_region_begin("b");
  cr_assert(a > 0 && b > a, "ids %d %d", a, b);
  int local;
  int res = 99;
  cr_assert_eq(ckpt_query((uintptr_t)&local, NULL, &res), CKPT_ENOENT);
  cr_assert_eq(res, CKPT_UNTAGGED);
  /* Nothing is tagged, even a large allocation inside a region. */
  CUdeviceptr p = 0;
  CUresult rc = CUDA_ERROR_UNKNOWN;
  cr_assert_not(ckpt_alloc(&p, 64 * UT_MiB, NULL, &rc));
  cr_assert_eq(p, 0);
  cr_assert_eq(ckpt_offload(b), CKPT_ESTATE);
  cr_assert_eq(ckpt_region_end(), b);
  cr_assert_eq(ckpt_region_end(), a);
  ut_capture_start();
  cr_assert_eq(ckpt_region_end(), CKPT_ESTATE);
  ut_capture_end();
  /* The API works on closed regions and does nothing. */
  cr_assert_eq(ckpt_offload(a), 0);
  cr_assert_eq(ckpt_restore(a), 0);
  cr_assert_eq(ckpt_wait(a), 0);
  cr_assert_eq(ckpt_step(), 0);
  cr_assert_eq(ckpt_release_cached(), 0);
  struct ckpt_stats s = ut_stats();
  cr_assert_eq(s.regions_opened, 2);
  cr_assert_eq(s.regions_closed, 2);
  cr_assert_eq(s.tagged_allocs, 0);
  cr_assert_eq(s.offloads, 0);
}

/* A fork()ed child shares none of the parent's streams or engine: hands off. */
Test(region, forked_child_is_pass_through, .init = host_mode) {
  int a = ckpt_region_begin("parent");
  cr_assert_gt(a, 0);
  pid_t pid = fork();
  cr_assert_neq(pid, -1);
  if (pid == 0) {
    int bad = 0;
    bad |= (ckpt_region_begin("child") != CKPT_EDISABLED) << 0;
    bad |= (ckpt_region_end() != CKPT_EDISABLED) << 1;
    bad |= (ckpt_tagging() != false) << 2;
    bad |= (ckpt_offload(a) != CKPT_EDISABLED) << 3;
    bad |= (ckpt_step() != CKPT_EDISABLED) << 4;
    CUdeviceptr p = 0;
    CUresult rc;
    bad |= ckpt_alloc(&p, 64 * UT_MiB, NULL, &rc) << 5;
    struct ckpt_stats s;
    bad |= (ckpt_stats_get(&s, sizeof s) != 0) << 6; /* still readable, no deadlock */
    _exit(bad);
  }
  int status = 0;
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  cr_assert(WIFEXITED(status), "child died");
  cr_assert_eq(WEXITSTATUS(status), 0, "child check bits %#x", WEXITSTATUS(status));
  /* The parent carries on. */
  cr_assert(ckpt_tagging());
  cr_assert_eq(ckpt_region_end(), a);
}

/* Without ckpt_step() and without restores (NVTX ranges only, inference,
 * eval loops) every top-level region stays in the cycle, so closing one must
 * not cost time proportional to all regions ever closed.
 * BUG (hooks/offload.c:399 ckpt_policy_region_closed, hooks/region.c:137
 * cycle_push): the policy loop scans the cycle from index 0 at every
 * top-level close (skipping already-offloaded regions one by one), and the
 * cycle, with every region in it, is only dropped by ckpt_step() or by a
 * top-level begin after a restore; so n closes cost O(n^2) and memory grows
 * without bound. Measured: 50k begin/end pairs 13 s, the next 50k 47 s.
 * This test fails until that is fixed; it stops after ~3 s. */
Test(region, many_regions_without_step_stay_cheap, .init = host_mode, .timeout = 60) {
  enum { N = 100000 };
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int done = 0;
  double elapsed = 0;
  for (; done < N; done++) {
    int id = ckpt_region_begin("ckpt:layer");
    if (id <= 0 || ckpt_region_end() != id) break;
    if ((done & 1023) == 0) {
      clock_gettime(CLOCK_MONOTONIC, &t1);
      elapsed = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
      if (elapsed > 3.0) break;
    }
  }
  cr_assert_eq(done, N, "only %d region open/close pairs in %.1f s (expected %d in well under 1 s)", done,
               elapsed, N);
  struct ckpt_stats s = ut_stats();
  cr_assert_eq(s.regions_closed, (uint64_t)N);
}
