/* Shared by the integration programs: they run under LD_PRELOAD=libckpt.so on
 * the simulated driver, reach libckpt's API through dlsym (as a framework
 * would: they are not linked against it) and fail loudly with exit 1. */
#ifndef CKPT_HARNESS_H
#define CKPT_HARNESS_H
#define _GNU_SOURCE
#define __CUDA_API_VERSION_INTERNAL 1 /* every entry point under its real name */
#include <cuda.h>
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"
#include "simdev.h"

#include <stdarg.h>
static inline void ck_fail(const char *file, int line, const char *cond, const char *fmt, ...) {
  fprintf(stderr, "FAIL %s:%d: %s: ", file, line, cond);
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(1);
}
#define CHECK(cond, ...) \
  do { if (!(cond)) ck_fail(__FILE__, __LINE__, #cond, "" __VA_ARGS__); } while (0)

#define CU(call)                                                            \
  do {                                                                      \
    CUresult r_ = (call);                                                   \
    CHECK(r_ == CUDA_SUCCESS, "%s -> %d", #call, (int)r_);                  \
  } while (0)

/* libckpt's API as the preloaded library exports it. */
static struct {
  int (*region_begin)(const char *);
  int (*region_end)(void);
  int (*query)(uintptr_t, int *, int *);
  int (*offload)(int);
  int (*prefetch)(int);
  int (*restore)(int);
  int (*restore_ptr)(uintptr_t);
  int (*wait)(int);
  int (*step)(void);
  int (*set_stream)(uintptr_t);
  int (*stats_get)(struct ckpt_stats *, size_t);
  const char *(*mode)(void);
  int (*release_cached)(void);
} ck;

static void ck_load(void) {
#define LOAD(field, sym) \
  CHECK((*(void **)&ck.field = dlsym(RTLD_DEFAULT, #sym)) != NULL, "libckpt not preloaded: no %s", #sym)
  LOAD(region_begin, ckpt_region_begin);
  LOAD(region_end, ckpt_region_end);
  LOAD(query, ckpt_query);
  LOAD(offload, ckpt_offload);
  LOAD(prefetch, ckpt_prefetch);
  LOAD(restore, ckpt_restore);
  LOAD(restore_ptr, ckpt_restore_ptr);
  LOAD(wait, ckpt_wait);
  LOAD(step, ckpt_step);
  LOAD(set_stream, ckpt_set_stream);
  LOAD(stats_get, ckpt_stats_get);
  LOAD(mode, ckpt_mode);
  LOAD(release_cached, ckpt_release_cached);
#undef LOAD
}

static inline struct ckpt_stats ck_stats(void) {
  struct ckpt_stats s;
  CHECK(ck.stats_get(&s, sizeof s) == 0);
  return s;
}

static inline int residency(CUdeviceptr p) {
  int rid = 0, res = -1;
  if (ck.query((uintptr_t)p, &rid, &res) != 0) return CKPT_UNTAGGED;
  return res;
}

static inline int region_of(CUdeviceptr p) {
  int rid = 0, res = 0;
  return ck.query((uintptr_t)p, &rid, &res) == 0 ? rid : 0;
}

/* A context on device 0, current on this thread. */
static inline CUcontext ctx_setup(void) {
  CUcontext ctx;
  CUdevice dev;
  CU(cuInit(0));
  CU(cuDeviceGet(&dev, 0));
  CU(cuDevicePrimaryCtxRetain(&ctx, dev));
  CU(cuCtxSetCurrent(ctx));
  return ctx;
}

/* Deterministic fill and check (8 bytes per xorshift step, so that filling
 * gigabytes stays cheap), so a wrong byte anywhere is found. */
static inline uint64_t pattern_next(uint64_t *x) {
  *x ^= *x << 13, *x ^= *x >> 7, *x ^= *x << 17;
  return *x;
}
static inline void pattern_fill(void *p, size_t n, uint64_t seed) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1, w;
  unsigned char *b = p;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    w = pattern_next(&x);
    memcpy(b + i, &w, 8);
  }
  w = pattern_next(&x);
  memcpy(b + i, &w, n - i);
}
/* 0 when equal, else 1 + the offset of the first wrong byte. */
static inline size_t pattern_check(const void *p, size_t n, uint64_t seed) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1, w;
  const unsigned char *b = p;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    w = pattern_next(&x);
    if (memcmp(b + i, &w, 8) != 0) break;
  }
  if (i + 8 > n) {
    w = pattern_next(&x);
    if (memcmp(b + i, &w, n - i) == 0) return 0;
  }
  for (size_t k = 0; k < 8 && i + k < n; k++)
    if (b[i + k] != ((unsigned char *)&w)[k]) return i + k + 1;
  return i + 1;
}

#define MiB ((size_t)1 << 20)

/* The granule of a tagged allocation: the larger of the device's and the
 * host-located memory's granularities (its VA is backed by either). */
static inline size_t tagged_granule(void) {
  size_t g = 0, h = 0;
  CUmemAllocationProp p = {.type = CU_MEM_ALLOCATION_TYPE_PINNED, .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE}};
  cuMemGetAllocationGranularity(&g, &p, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
  p.location.type = CU_MEM_LOCATION_TYPE_HOST;
  cuMemGetAllocationGranularity(&h, &p, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
  return g > h ? g : h;
}
#endif
