/* Shared helpers of the core's unit tests.
 *
 * Criterion runs every test in its own fork()ed process, and the core reads
 * its CKPT_* parameters once (first libckpt call), so each test sets the
 * variables it depends on with ut_env_*() BEFORE its first libckpt call
 * (typically from a `.init` function). */
#ifndef CKPT_UNIT_HELPERS_H
#define CKPT_UNIT_HELPERS_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* By path: tests/simdev, also on the include path, has an internal.h too. */
#include "../../hooks/arena.h"
#include "../../hooks/check.h"
#include "../../hooks/engine.h"
#include "../../hooks/observe.h"
#include "../../hooks/params.h"
#include "../../hooks/policy.h"
#include "../../hooks/region.h"
#include "../../hooks/state.h" /* core.h, ckpt.h, cu.h */
#include "../../hooks/store.h"
#include "../../hooks/streams.h"
#include "../../hooks/vmm.h"
#include "../../hooks/log.h"
#include "simdev.h"

#define UT_MiB ((size_t)1 << 20)

/* Unsets every CKPT_* variable of the table (an outer environment must not
 * leak into a test), then sets CKPT_DEBUG=WARN like tests/meson.build does. */
static inline void ut_env_reset(void) {
  for (int id = 0; id < CKPT_P__COUNT; id++) {
    const struct ckpt_param_info *row = ckpt_param_info((ckpt_param_id)id);
    if (row) unsetenv(row->name);
  }
  setenv("CKPT_DEBUG", "WARN", 1);
  /* The slow streams of these tests delay every operation by up to 150 ms,
   * a gate's own arrival too: past the 100 ms default the gates would time
   * out (and roll back) instead of showing the ordering they test. */
  setenv("CKPT_GATE_TIMEOUT", "2000", 1);
}

static inline void ut_env(const char *name, const char *value) {
  cr_assert_eq(setenv(name, value, 1), 0, "setenv %s", name);
}

/* A current context on device 0 of the simulator (its primary context). */
static inline CUcontext ut_context(void) {
  CUcontext ctx = NULL;
  cr_assert_eq(cuInit(0), CUDA_SUCCESS);
  cr_assert_eq(cuDevicePrimaryCtxRetain(&ctx, 0), CUDA_SUCCESS);
  cr_assert_not_null(ctx);
  cr_assert_eq(cuCtxSetCurrent(ctx), CUDA_SUCCESS);
  return ctx;
}

static inline struct ckpt_stats ut_stats(void) {
  struct ckpt_stats s;
  memset(&s, 0xff, sizeof s);
  cr_assert_eq(ckpt_stats_get(&s, sizeof s), 0);
  cr_assert_eq(s.size, sizeof s);
  return s;
}

/* Residency of a tagged pointer (fails the test when it is not tagged). */
static inline int ut_residency(CUdeviceptr p) {
  int region = -1, res = -1;
  cr_assert_eq(ckpt_query((uintptr_t)p, &region, &res), 0, "pointer %#llx not tagged", (unsigned long long)p);
  return res;
}

/* A tagged allocation through the core's allocation hook, on the legacy stream. */
static inline CUdeviceptr ut_alloc(size_t bytes) {
  CUdeviceptr p = 0;
  CUresult rc = CUDA_ERROR_UNKNOWN;
  cr_assert(ckpt_alloc(&p, bytes, NULL, &rc), "ckpt_alloc(%zu) was not served", bytes);
  cr_assert_eq(rc, CUDA_SUCCESS);
  cr_assert_neq(p, 0);
  return p;
}

/* Frees a tagged allocation with cuMemFree semantics (completes at once). */
static inline void ut_free(CUdeviceptr p) {
  CUresult rc = CUDA_ERROR_UNKNOWN;
  cr_assert(ckpt_free(p, NULL, true, &rc), "ckpt_free(%#llx) did not know the pointer", (unsigned long long)p);
  cr_assert_eq(rc, CUDA_SUCCESS);
}

/* Simulated device pointers are host addresses: fill and check directly. */
static inline uint64_t ut_word(uint64_t seed, size_t i) {
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + i;
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ull;
  return x ^ (x >> 29);
}

static inline void ut_fill(CUdeviceptr p, size_t bytes, uint64_t seed) {
  uint64_t *w = (uint64_t *)(uintptr_t)p;
  for (size_t i = 0; i < bytes / sizeof *w; i++) w[i] = ut_word(seed, i);
}

/* Index of the first wrong word, or (size_t)-1 when all are intact. */
static inline size_t ut_first_bad(CUdeviceptr p, size_t bytes, uint64_t seed) {
  const volatile uint64_t *w = (const volatile uint64_t *)(uintptr_t)p;
  for (size_t i = 0; i < bytes / sizeof *w; i++)
    if (w[i] != ut_word(seed, i)) return i;
  return (size_t)-1;
}

#define ut_assert_intact(p, bytes, seed)                                                     \
  do {                                                                                       \
    size_t bad_ = ut_first_bad((p), (bytes), (seed));                                        \
    cr_assert_eq(bad_, (size_t)-1, "data of %#llx differs at word %zu", (unsigned long long)(p), bad_); \
  } while (0)

/* ---- log capture ----------------------------------------------------------- */

static FILE *ut_capture_file;
static char ut_captured[16384];

static inline void ut_capture_start(void) {
  ut_capture_file = tmpfile();
  cr_assert_not_null(ut_capture_file);
  ckpt_log_set_fd(fileno(ut_capture_file));
}

/* Stops capturing; returns the captured text (also in ut_captured). */
static inline const char *ut_capture_end(void) {
  ckpt_log_set_fd(-1);
  ssize_t n = pread(fileno(ut_capture_file), ut_captured, sizeof ut_captured - 1, 0);
  ut_captured[n < 0 ? 0 : n] = '\0';
  fclose(ut_capture_file);
  ut_capture_file = NULL;
  return ut_captured;
}

#endif
