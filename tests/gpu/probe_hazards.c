/* GPU probes of issue 11 against the real driver (or, in gpu-check's CPU dry
 * run, the simulated one), under LD_PRELOAD=libckpt.so; built by
 * tests/gpu/check_hazards.py with cc alone (no Criterion, no simdev.h).
 *   probe_hazards gate MIB ROUNDS    legacy + 2 non-blocking streams read a tagged
 *                                    buffer, a cross-stream event wait between the
 *                                    holds, ROUNDS offload+restore swaps
 *   probe_hazards swap MIB SWAPS     2 streams sweep a tagged buffer while SWAPS gated
 *                                    swaps run; then the probe's own timing of unmap,
 *                                    map, set-access and release with 2 streams held
 * "Kernels" are device-to-device copies (copy-engine work, no module to load):
 * they read the tagged buffer, so survivors stay read-only (libckpt's contract).
 * Every wait is bounded: a watchdog (alarm) ends a hang with exit 3.
 * Prints one line "PROBE {json}" with the figures; exit 0 = every check passed. */
#define _GNU_SOURCE
#include <cuda.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ckpt.h"

#define MiB ((size_t)1 << 20)

static void die(const char *what, int line, int code) {
  fprintf(stderr, "probe_hazards: FAIL line %d: %s (%d)\n", line, what, code);
  exit(1);
}
#define CU(call)                                        \
  do {                                                  \
    CUresult r_ = (call);                               \
    if (r_ != CUDA_SUCCESS) die(#call, __LINE__, r_);   \
  } while (0)
#define CHECK(cond) \
  do { if (!(cond)) die(#cond, __LINE__, 0); } while (0)

static struct {
  int (*region_begin)(const char *);
  int (*region_end)(void);
  int (*offload)(int);
  int (*restore)(int);
  int (*wait)(int);
  int (*query)(uintptr_t, int *, int *);
  int (*stats_get)(struct ckpt_stats *, size_t);
} ck;

static void load(void) {
#define LOAD(f, s) \
  if (!(*(void **)&ck.f = dlsym(RTLD_DEFAULT, #s))) die("libckpt not preloaded: no " #s, __LINE__, 0)
  LOAD(region_begin, ckpt_region_begin);
  LOAD(region_end, ckpt_region_end);
  LOAD(offload, ckpt_offload);
  LOAD(restore, ckpt_restore);
  LOAD(wait, ckpt_wait);
  LOAD(query, ckpt_query);
  LOAD(stats_get, ckpt_stats_get);
#undef LOAD
}

static struct ckpt_stats stats(void) {
  struct ckpt_stats s;
  memset(&s, 0, sizeof s);
  CHECK(ck.stats_get(&s, sizeof s) == 0);
  return s;
}
static int residency(CUdeviceptr p) {
  int rid = 0, res = -1;
  return ck.query((uintptr_t)p, &rid, &res) == 0 ? res : CKPT_UNTAGGED;
}
static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}
static void on_alarm(int sig) {
  (void)sig;
  static const char msg[] = "probe_hazards: FAIL watchdog: the probe hung (a gate that never opened?)\n";
  if (write(2, msg, sizeof msg - 1) < 0) _exit(3);
  _exit(3);
}

/* A word pattern that differs by seed and position. */
static void fill(uint32_t *w, size_t words, uint32_t seed) {
  for (size_t i = 0; i < words; i++) w[i] = (uint32_t)(i * 2654435761u) ^ seed;
}
static size_t mismatches(const uint32_t *w, size_t words, uint32_t seed) {
  size_t bad = 0;
  for (size_t i = 0; i < words; i++) bad += w[i] != ((uint32_t)(i * 2654435761u) ^ seed);
  return bad;
}

static CUcontext ctx;
static CUstream s1, s2;
static uint32_t *host;
static size_t bytes;

static void setup(size_t mib) {
  CUdevice dev;
  CU(cuInit(0));
  CU(cuDeviceGet(&dev, 0));
  CU(cuDevicePrimaryCtxRetain(&ctx, dev));
  CU(cuCtxSetCurrent(ctx));
  CU(cuStreamCreate(&s1, CU_STREAM_NON_BLOCKING));
  CU(cuStreamCreate(&s2, CU_STREAM_NON_BLOCKING));
  bytes = mib * MiB;
  CU(cuMemHostAlloc((void **)&host, bytes, 0));
}

/* Region a: the tagged buffer x (filled), region b: a small one (its close
 * is what an automatic policy would offload a after). */
static int tagged(CUdeviceptr *x, CUdeviceptr *y, uint32_t seed) {
  int a = ck.region_begin("probe_a");
  CU(cuMemAlloc(x, bytes));
  ck.region_end();
  ck.region_begin("probe_b");
  CU(cuMemAlloc(y, 2 * MiB));
  ck.region_end();
  CHECK(residency(*x) == CKPT_DEVICE);
  fill(host, bytes / 4, seed);
  CU(cuMemcpyHtoD(*x, host, bytes));
  return a;
}

static size_t check_copy(CUdeviceptr scratch, uint32_t seed) {
  memset(host, 0, bytes);
  CU(cuMemcpyDtoH(host, scratch, bytes));
  return mismatches(host, bytes / 4, seed);
}

static void swap_once(int a, int to_host) {
  CHECK((to_host ? ck.offload(a) : ck.restore(a)) == 0);
  CHECK(ck.wait(a) == 0);
}

static void print_stats(const char *probe, struct ckpt_stats *b, struct ckpt_stats *e, double seconds,
                        const char *extra) {
  printf("PROBE {\"probe\": \"%s\", \"connections\": \"%s\", \"offloads\": %llu, \"restores\": %llu, "
         "\"gate_timeouts\": %llu, \"driver_errors\": %llu, \"streams_known\": %llu, \"seconds\": %.3f%s}\n",
         probe, getenv("CUDA_DEVICE_MAX_CONNECTIONS") ? getenv("CUDA_DEVICE_MAX_CONNECTIONS") : "unset",
         (unsigned long long)(e->offloads - b->offloads), (unsigned long long)(e->restores - b->restores),
         (unsigned long long)(e->gate_timeouts - b->gate_timeouts),
         (unsigned long long)(e->driver_errors - b->driver_errors), (unsigned long long)e->streams_known, seconds,
         extra ? extra : "");
}

/* Probe a. Each round: the three streams read x, s2 waits on an event of s1
 * (the cross-stream wait), offload + wait, the same again, restore + wait;
 * then the three copies are checked. Every swap must have been made (no gate
 * timeout, no rollback). */
static int gate(size_t mib, int rounds) {
  setup(mib);
  CUdeviceptr x, y, scratch[3];
  const uint32_t seed = 0x5eed0001u;
  int a = tagged(&x, &y, seed);
  for (int k = 0; k < 3; k++) CU(cuMemAlloc(&scratch[k], bytes)); /* outside a region: untagged */
  CUstream st[3] = {CU_STREAM_LEGACY, s1, s2};
  CUevent ev;
  CU(cuEventCreate(&ev, CU_EVENT_DISABLE_TIMING));
  struct ckpt_stats b = stats();
  double t0 = now();
  size_t bad = 0;
  for (int r = 0; r < rounds; r++) {
    for (int half = 0; half < 2; half++) {
      for (int k = 0; k < 3; k++) CU(cuMemcpyDtoDAsync(scratch[k], x, bytes, st[k]));
      CU(cuEventRecord(ev, s1));
      CU(cuStreamWaitEvent(s2, ev, 0));
      CU(cuMemcpyDtoDAsync(scratch[2], x, bytes, s2)); /* ordered after s1's read */
      swap_once(a, half == 0);
      CHECK(residency(x) == (half == 0 ? CKPT_HOST : CKPT_DEVICE));
    }
    CU(cuCtxSynchronize());
    for (int k = 0; k < 3; k++) bad += check_copy(scratch[k], seed);
  }
  double secs = now() - t0;
  struct ckpt_stats e = stats();
  char extra[128];
  snprintf(extra, sizeof extra, ", \"rounds\": %d, \"mib\": %zu, \"bad_words\": %zu", rounds, mib, bad);
  print_stats("gate", &b, &e, secs, extra);
  CHECK(bad == 0);
  CHECK(e.gate_timeouts == b.gate_timeouts);
  CHECK(e.offloads - b.offloads >= (uint64_t)rounds && e.restores - b.restores >= (uint64_t)rounds);
  CU(cuMemFree(x));
  CU(cuMemFree(y));
  for (int k = 0; k < 3; k++) CU(cuMemFree(scratch[k]));
  return 0;
}

static int cmp_double(const void *p, const void *q) {
  double a = *(const double *)p, b = *(const double *)q;
  return (a > b) - (a < b);
}
static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return v[n / 2];
}

/* The probe's own measurement of the remap calls libckpt's swap makes, with
 * s1 and s2 held by a wait on a host-mapped word (as libckpt's gate holds
 * them): unmap of the old backing, map of a new one, set-access, release of
 * the old handle. libckpt keeps no per-call timing; this is the driver's cost. */
static void remap_timing(int reps, char *out, size_t outn) {
  CUdevice dev;
  CU(cuCtxGetDevice(&dev));
  CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                              .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = dev}};
  size_t g = 0;
  CU(cuMemGetAllocationGranularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
  size_t n = (bytes + g - 1) / g * g;
  CUdeviceptr va;
  CU(cuMemAddressReserve(&va, n, 0, 0, 0));
  CUmemAccessDesc acc = {.location = prop.location, .flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
  CUmemGenericAllocationHandle h;
  CU(cuMemCreate(&h, n, &prop, 0));
  CU(cuMemMap(va, n, 0, h, 0));
  CU(cuMemSetAccess(va, n, &acc, 1));
  volatile uint32_t *word;
  CUdeviceptr dword;
  CU(cuMemHostAlloc((void **)&word, 4096, CU_MEMHOSTALLOC_DEVICEMAP | CU_MEMHOSTALLOC_PORTABLE));
  CU(cuMemHostGetDevicePointer(&dword, (void *)word, 0));
  double *t[4];
  for (int k = 0; k < 4; k++) t[k] = calloc((size_t)reps, sizeof(double));
  for (int i = 0; i < reps; i++) {
    *word = 0;
    CU(cuStreamWaitValue32(s1, dword, 1, CU_STREAM_WAIT_VALUE_GEQ));
    CU(cuStreamWaitValue32(s2, dword, 1, CU_STREAM_WAIT_VALUE_GEQ));
    CUmemGenericAllocationHandle fresh;
    CU(cuMemCreate(&fresh, n, &prop, 0)); /* outside the timed window: libckpt creates before the gate */
    double c0 = now();
    CU(cuMemUnmap(va, n));
    double c1 = now();
    CU(cuMemMap(va, n, 0, fresh, 0));
    double c2 = now();
    CU(cuMemSetAccess(va, n, &acc, 1));
    double c3 = now();
    CU(cuMemRelease(h));
    double c4 = now();
    h = fresh;
    __atomic_store_n(word, 1, __ATOMIC_RELEASE);
    t[0][i] = c1 - c0, t[1][i] = c2 - c1, t[2][i] = c3 - c2, t[3][i] = c4 - c3;
    CU(cuStreamSynchronize(s1));
    CU(cuStreamSynchronize(s2));
  }
  snprintf(out, outn,
           ", \"remap_reps\": %d, \"remap_mib\": %zu, \"unmap_us\": %.1f, \"map_us\": %.1f, \"set_access_us\": %.1f, "
           "\"release_us\": %.1f",
           reps, n / MiB, median(t[0], reps) * 1e6, median(t[1], reps) * 1e6, median(t[2], reps) * 1e6,
           median(t[3], reps) * 1e6);
  for (int k = 0; k < 4; k++) free(t[k]);
  CU(cuMemUnmap(va, n));
  CU(cuMemRelease(h));
  CU(cuMemAddressFree(va, n));
  CU(cuMemFreeHost((void *)word));
}

/* Probe b. Each swap is preceded by two sweeps (reads of all of x) on each of
 * s1 and s2; every 50 swaps the sweeps' copies are checked. */
static int swap(size_t mib, int swaps) {
  setup(mib);
  CUdeviceptr x, y, sc[2];
  const uint32_t seed = 0x5eed0002u;
  int a = tagged(&x, &y, seed);
  CU(cuMemAlloc(&sc[0], bytes));
  CU(cuMemAlloc(&sc[1], bytes));
  struct ckpt_stats b = stats();
  double t0 = now(), swap_s = 0;
  size_t bad = 0;
  int checks = 0;
  for (int i = 0; i < swaps; i++) {
    for (int k = 0; k < 2; k++) {
      CU(cuMemcpyDtoDAsync(sc[0], x, bytes, s1));
      CU(cuMemcpyDtoDAsync(sc[1], x, bytes, s2));
    }
    double c = now();
    swap_once(a, i % 2 == 0);
    swap_s += now() - c;
    if (i % 50 == 49 || i == swaps - 1) {
      CU(cuCtxSynchronize());
      bad += check_copy(sc[0], seed) + check_copy(sc[1], seed);
      checks += 2;
    }
  }
  if (residency(x) != CKPT_DEVICE) swap_once(a, 0);
  CU(cuCtxSynchronize());
  CU(cuMemcpyDtoH(host, x, bytes));
  bad += mismatches(host, bytes / 4, seed);
  double secs = now() - t0;
  struct ckpt_stats e = stats();
  char extra[512];
  int n = snprintf(extra, sizeof extra, ", \"swaps\": %d, \"mib\": %zu, \"bad_words\": %zu, \"checks\": %d, "
                   "\"swap_wall_ms_mean\": %.3f", swaps, mib, bad, checks, swap_s / swaps * 1e3);
  remap_timing(swaps < 100 ? swaps : 100, extra + n, sizeof extra - (size_t)n);
  print_stats("swap", &b, &e, secs, extra);
  CHECK(bad == 0);
  CHECK(e.gate_timeouts == b.gate_timeouts);
  CHECK(e.offloads - b.offloads + e.restores - b.restores >= (uint64_t)swaps);
  CU(cuMemFree(x));
  CU(cuMemFree(y));
  CU(cuMemFree(sc[0]));
  CU(cuMemFree(sc[1]));
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: probe_hazards gate|swap MIB COUNT\n");
    return 2;
  }
  signal(SIGALRM, on_alarm);
  alarm(getenv("PROBE_WATCHDOG_S") ? (unsigned)atoi(getenv("PROBE_WATCHDOG_S")) : 60);
  load();
  size_t mib = (size_t)atol(argv[2]);
  int count = atoi(argv[3]);
  int rc = !strcmp(argv[1], "gate") ? gate(mib, count) : !strcmp(argv[1], "swap") ? swap(mib, count) : 2;
  if (rc == 0) {
    CU(cuCtxSynchronize());
    printf("probe_hazards %s: ok\n", argv[1]);
  }
  return rc;
}
