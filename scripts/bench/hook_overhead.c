/* What a hooked driver call costs the program: ns per cuMemAllocAsync +
 * cuMemFreeAsync pair, (1) below CKPT_MIN_BYTES (pass-through), (2) tagged
 * inside a region (served from the mapping cache), and ns per ckpt_query.
 * Run it plain and under LD_PRELOAD=libckpt.so (scripts/bench/hook-overhead
 * does both): the difference is libckpt's cost. Median of 7 rounds. */
#define _GNU_SOURCE
#define __CUDA_API_VERSION_INTERNAL 1
#include <cuda.h>
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CU(call)                                                     \
  do {                                                               \
    CUresult r_ = (call);                                            \
    if (r_ != CUDA_SUCCESS) {                                        \
      fprintf(stderr, "%s failed: %d\n", #call, (int)r_);            \
      exit(1);                                                       \
    }                                                                \
  } while (0)

static __typeof__(cuMemAllocAsync) *alloc_async;
static __typeof__(cuMemFreeAsync) *free_async;
static int (*region_begin)(const char *);
static int (*region_end)(void);
static int (*query)(uintptr_t, int *, int *);

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median_ns(void (*fn)(CUstream, int), CUstream s, int n) {
  double r[7];
  for (int k = 0; k < 7; k++) {
    double t0 = now_ns();
    fn(s, n);
    r[k] = (now_ns() - t0) / n;
  }
  qsort(r, 7, sizeof *r, cmp);
  return r[3];
}

static __typeof__(cuStreamSynchronize) *sync_stream;

static void small_pairs(CUstream s, int n) {
  for (int i = 0; i < n; i++) {
    CUdeviceptr p;
    CU(alloc_async(&p, 256, s));
    CU(free_async(p, s));
    if (i % 64 == 63) CU(sync_stream(s));
  }
}

/* A synchronisation every 64 pairs, in both runs: the simulated driver's
 * pool only reuses memory once its stream has passed the free. */
static void tagged_pairs(CUstream s, int n) {
  if (region_begin) region_begin("bench");
  for (int i = 0; i < n; i++) {
    CUdeviceptr p;
    CU(alloc_async(&p, 8 << 20, s));
    CU(free_async(p, s));
    if (i % 64 == 63) CU(sync_stream(s));
  }
  if (region_end) region_end();
}

/* Pass-through launches: one per iteration, a synchronisation every 64. The
 * simulated driver has no cuLaunchKernel: cuLaunchHostFunc goes through the
 * same generated submission wrapper (preload/hooked.def, CKPT_SUBMIT ENQ). */
static __typeof__(cuLaunchHostFunc) *launch_host_func;
static void CUDA_CB nop(void *arg) { (void)arg; }
static void launches(CUstream s, int n) {
  for (int i = 0; i < n; i++) {
    CU(launch_host_func(s, nop, NULL));
    if (i % 64 == 63) CU(sync_stream(s));
  }
}

static CUdeviceptr probe;
static void queries(CUstream s, int n) {
  (void)s;
  int rid, res;
  for (int i = 0; i < n; i++) query(probe + (uintptr_t)i % 4096, &rid, &res);
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 20000;
  void *h = dlopen("libcuda.so.1", RTLD_NOW);
  if (!h) return fprintf(stderr, "no driver: %s\n", dlerror()), 1;
  __typeof__(cuInit) *init = dlsym(h, "cuInit");
  __typeof__(cuDeviceGet) *dev_get = dlsym(h, "cuDeviceGet");
  __typeof__(cuDevicePrimaryCtxRetain) *retain = dlsym(h, "cuDevicePrimaryCtxRetain");
  __typeof__(cuCtxSetCurrent) *set_current = dlsym(h, "cuCtxSetCurrent");
  __typeof__(cuStreamCreate) *stream_create = dlsym(h, "cuStreamCreate");
  __typeof__(cuStreamSynchronize) *sync = dlsym(h, "cuStreamSynchronize");
  sync_stream = sync;
  alloc_async = dlsym(h, "cuMemAllocAsync");
  free_async = dlsym(h, "cuMemFreeAsync");
  launch_host_func = dlsym(h, "cuLaunchHostFunc");
  *(void **)&region_begin = dlsym(RTLD_DEFAULT, "ckpt_region_begin");
  *(void **)&region_end = dlsym(RTLD_DEFAULT, "ckpt_region_end");
  *(void **)&query = dlsym(RTLD_DEFAULT, "ckpt_query");
  CUdevice d;
  CUcontext ctx;
  CUstream s;
  CU(init(0));
  CU(dev_get(&d, 0));
  CU(retain(&ctx, d));
  CU(set_current(ctx));
  CU(stream_create(&s, CU_STREAM_NON_BLOCKING));
  small_pairs(s, 1000); /* warm up pools and caches */
  tagged_pairs(s, 1000);
  double small = median_ns(small_pairs, s, n);
  double tagged = median_ns(tagged_pairs, s, n);
  printf("%s: untagged alloc+free %.0f ns, 8 MiB %s alloc+free %.0f ns", region_begin ? "libckpt" : "plain", small,
         region_begin ? "tagged" : "", tagged);
  launches(s, 1000);
  printf(", launch %.0f ns", median_ns(launches, s, n));
  if (query) {
    if (region_begin) region_begin("probe");
    CU(alloc_async(&probe, 8 << 20, s));
    if (region_end) region_end();
    printf(", ckpt_query %.0f ns", median_ns(queries, s, n));
  }
  printf("\n");
  CU(sync(s));
  return 0;
}
