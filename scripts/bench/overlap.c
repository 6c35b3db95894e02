/* One configuration of the overlap benchmark (scripts/bench/overlap runs it
 * plain and under libckpt and prints the ratios). Simulated device only: the
 * time it measures is simulated time — a layer's compute is stream work that
 * sleeps for its duration (a host function), copies cross the simulated link
 * (SIMDEV_COPY_GBPS, one channel per direction) — so the figures mean the same
 * on any CPU, loaded or not.
 *
 *   bench_overlap MODE LAYERS MIB COMPUTE_MS STEPS   (COMPUTE_MS may be fractional)
 *
 * MODE train: an L-layer forward (one region per layer, each leaving one
 *   activation of MIB MiB for backward) and backward (layers in reverse, each
 *   restoring its input through ckpt_restore when libckpt is there; backward
 *   compute is twice the forward's). The policy is libckpt's (CKPT_OFFLOAD,
 *   CKPT_KEEP_LAST, CKPT_PREFETCH as set).
 * MODE duplex: two micro-batches A and B, 1F1B-like: forward A, then each
 *   forward layer of B interleaved with a backward layer of A, then backward B.
 *   Under libckpt the offloads of B (each asked for as its layer closes) and
 *   the restores of A (restore, then the prefetch of the next) are in flight
 *   together (CKPT_OFFLOAD=manual: the program asks for them), and the
 *   utilisation is measured over the interleaved phase.
 *
 * The host runs ahead of the device by at most AHEAD (2) layers, as a
 * framework does whose launches are bounded by the device's queue (it waits on
 * the event of the layer AHEAD back, never on the whole stream); without that
 * bound every allocation of a step would be made before the device ran any
 * of it, with or without libckpt. The stream-ordered pool keeps what is freed
 * (release threshold at the maximum, as torch sets it). A sampler thread reads
 * the simulated device's usage every 200 us for the peak. Every activation is checked (one word per 4 KiB) by
 * stream work before it is freed: a wrong word fails the run.
 * Prints one JSON object on stdout. BENCH_TRACE=1 prints every change of the
 * device usage the sampler sees (seconds, MiB) on stderr, and at the end when
 * each compute ran on the device and the gap before it (what the stream spent
 * on sets, gates and waits: the step ratio's cost, layer by layer). */
#define _GNU_SOURCE
#define __CUDA_API_VERSION_INTERNAL 1
#include <cuda.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "simdev.h"
#include "../../include/ckpt.h"

#define CU(call)                                                                    \
  do {                                                                              \
    CUresult r_ = (call);                                                           \
    if (r_ != CUDA_SUCCESS) {                                                       \
      fprintf(stderr, "bench_overlap: %s failed: %d\n", #call, (int)r_);            \
      exit(1);                                                                      \
    }                                                                               \
  } while (0)

static struct {
  int (*begin)(const char *);
  int (*end)(void);
  int (*restore)(int);
  int (*prefetch)(int);
  int (*offload)(int);
  int (*step)(void);
  int (*wait)(int);
  int (*stats)(struct ckpt_stats *, size_t);
  int (*set_stream)(uintptr_t);
} ck;

static CUstream s;
enum { AHEAD = 2, MAXL = 256 };
static CUevent evs[MAXL];
static int nev;

/* Bounds how far the host runs ahead: waits for the work of AHEAD layers back. */
static void pace(void) {
  CUevent *e = &evs[nev++ % MAXL];
  if (nev > AHEAD) CU(cuEventSynchronize(evs[(nev - 1 - AHEAD) % MAXL]));
  CU(cuEventRecord(*e, s));
}
static size_t words;
static _Atomic long bad;
static _Atomic size_t peak;
static _Atomic int sampling = 1;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void *sampler(void *arg) {
  (void)arg;
  while (atomic_load(&sampling)) {
    size_t u = simdev_device_used(0), p = atomic_load(&peak);
    static size_t last;
    if (getenv("BENCH_TRACE") && u != last) fprintf(stderr, "%.4f %zu\n", now(), (last = u) >> 20);
    while (u > p && !atomic_compare_exchange_weak(&peak, &p, u)) {}
    usleep(200);
  }
  return NULL;
}

/* BENCH_TRACE: when each compute began and ended on the device (the gaps
 * between them are what the stream spent elsewhere: sets, gates, waits). */
enum { MAXT = 4096 };
static double tr_t[MAXT][2];
static _Atomic int ntr;
static void CUDA_CB compute(void *us) {
  int i = atomic_fetch_add(&ntr, 1);
  if (i < MAXT) tr_t[i][0] = now();
  usleep((useconds_t)(uintptr_t)us);
  if (i < MAXT) tr_t[i][1] = now();
}

struct check { uint32_t *p; uint32_t want; };
static void CUDA_CB verify(void *arg) {
  struct check *c = arg;
  for (size_t i = 0; i < words; i += 1024) bad += c->p[i] != c->want;
  free(c);
}

struct layer { CUdeviceptr act; int id; uint32_t tag; };

static void fwd(struct layer *L, int l, uint32_t tag, unsigned us) {
  if (ck.begin) L[l].id = ck.begin("layer");
  CU(cuMemAllocAsync(&L[l].act, words * 4, s));
  CU(cuMemsetD32Async(L[l].act, tag, words, s));
  L[l].tag = tag;
  CU(cuLaunchHostFunc(s, compute, (void *)(uintptr_t)us));
  if (ck.end) ck.end();
  pace();
}

static void bwd(struct layer *L, int l, unsigned us, int restored) {
  if (ck.restore && !restored) ck.restore(L[l].id);
  CU(cuLaunchHostFunc(s, compute, (void *)(uintptr_t)(2 * us)));
  struct check *c = malloc(sizeof *c);
  *c = (struct check){(uint32_t *)L[l].act, L[l].tag};
  CU(cuLaunchHostFunc(s, verify, c));
  CU(cuMemFreeAsync(L[l].act, s));
  pace();
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: bench_overlap train|duplex LAYERS MIB COMPUTE_MS STEPS\n");
    return 2;
  }
  int duplex = !strcmp(argv[1], "duplex");
  int layers = atoi(argv[2]), steps = atoi(argv[5]);
  if (layers < 1 || layers > MAXL / 2) layers = 8;
  unsigned us = (unsigned)(atof(argv[4]) * 1000); /* compute per layer, forward */
  words = ((size_t)atoi(argv[3]) << 20) / 4;
  *(void **)&ck.begin = dlsym(RTLD_DEFAULT, "ckpt_region_begin");
  if (ck.begin) {
    *(void **)&ck.end = dlsym(RTLD_DEFAULT, "ckpt_region_end");
    *(void **)&ck.restore = dlsym(RTLD_DEFAULT, "ckpt_restore");
    *(void **)&ck.prefetch = dlsym(RTLD_DEFAULT, "ckpt_prefetch");
    *(void **)&ck.offload = dlsym(RTLD_DEFAULT, "ckpt_offload");
    *(void **)&ck.step = dlsym(RTLD_DEFAULT, "ckpt_step");
    *(void **)&ck.wait = dlsym(RTLD_DEFAULT, "ckpt_wait");
    *(void **)&ck.stats = dlsym(RTLD_DEFAULT, "ckpt_stats_get");
    *(void **)&ck.set_stream = dlsym(RTLD_DEFAULT, "ckpt_set_stream");
  }
  CUdevice dev;
  CUcontext ctx;
  CU(cuInit(0));
  CU(cuDeviceGet(&dev, 0));
  CU(cuDevicePrimaryCtxRetain(&ctx, dev));
  CU(cuCtxSetCurrent(ctx));
  CU(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  if (ck.set_stream) ck.set_stream((uintptr_t)s); /* as a framework declares its stream (CKPT_PROFILE, the budget) */
  for (int i = 0; i < MAXL; i++) CU(cuEventCreate(&evs[i], CU_EVENT_DISABLE_TIMING));
  CUmemoryPool pool;
  cuuint64_t keep = ~0ull;
  CU(cuDeviceGetDefaultMemPool(&pool, dev));
  CU(cuMemPoolSetAttribute(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &keep));
  struct layer *A = calloc((size_t)layers, sizeof *A), *B = calloc((size_t)layers, sizeof *B);
  size_t base = simdev_device_used(0);
  pthread_t th;
  pthread_create(&th, NULL, sampler, NULL);
  double best = 1e30, phase_best = 1e30, stall0 = 0, t_sum = 0;
  unsigned long long busy0[3], busy1[3], pbusy[2] = {0, 0};
  int measured = 0;
  /* The first step also creates the host pool, and CKPT_BUDGET=auto measures
   * the link and the compute in its first steps: steady state from step `warm`. */
  int warm = getenv("BENCH_WARM_STEPS") ? atoi(getenv("BENCH_WARM_STEPS")) : 1;
  if (warm < 1 || warm >= steps) warm = 1;
  for (int step = 0; step < steps; step++) {
    if (step == warm) {
      atomic_store(&peak, 0);
      struct ckpt_stats st;
      if (ck.stats && ck.stats(&st, sizeof st) == 0) stall0 = st.stall_seconds_total;
      simdev_link_stats(busy0, NULL);
    }
    double t0 = now();
    uint32_t tag = (uint32_t)step << 16;
    if (!duplex) {
      for (int l = 0; l < layers; l++) fwd(A, l, tag | (uint32_t)l, us);
      for (int l = layers - 1; l >= 0; l--) bwd(A, l, us, 0);
    } else {
      for (int l = 0; l < layers; l++) {
        fwd(A, l, tag | (uint32_t)l, us);
        if (ck.offload && l >= 1) ck.offload(A[l - 1].id);
      }
      if (ck.offload) ck.offload(A[layers - 1].id);
      CU(cuStreamSynchronize(s));
      if (ck.wait) /* A's offloads are done before the interleaved phase */
        for (int l = 0; l < layers; l++) ck.wait(A[l].id);
      unsigned long long b0[3], b1[3];
      simdev_link_stats(b0, NULL);
      double p0 = now();
      for (int k = 0; k < layers; k++) { /* forward B layer k, backward A layer L-1-k */
        fwd(B, k, tag | 0x8000u | (uint32_t)k, us);
        if (ck.offload) ck.offload(B[k].id); /* its copy starts once the layer has run */
        /* A's restore first, then the prefetch of the layer after it (its
         * fan-out, CKPT_PREFETCH, may have started it already). */
        int l = layers - 1 - k;
        if (ck.restore) ck.restore(A[l].id);
        if (ck.prefetch && l >= 1) ck.prefetch(A[l - 1].id);
        bwd(A, l, us, 1);
      }
      CU(cuStreamSynchronize(s));
      double pdt = now() - p0;
      simdev_link_stats(b1, NULL);
      if (step >= warm && pdt < phase_best) {
        phase_best = pdt;
        pbusy[0] = b1[0] - b0[0];
        pbusy[1] = b1[1] - b0[1];
      }
      for (int l = layers - 1; l >= 0; l--) bwd(B, l, us, 0);
    }
    CU(cuStreamSynchronize(s));
    if (ck.step) ck.step();
    double dt = now() - t0;
    if (step >= warm) {
      measured++;
      t_sum += dt;
      if (dt < best) best = dt;
    }
  }
  atomic_store(&sampling, 0);
  pthread_join(th, NULL);
  if (getenv("BENCH_TRACE"))
    for (int i = 1; i < atomic_load(&ntr) && i < MAXT; i++)
      fprintf(stderr, "compute %d: %.4f s, %.2f ms, gap before %.2f ms\n", i, tr_t[i][0],
              (tr_t[i][1] - tr_t[i][0]) * 1e3, (tr_t[i][0] - tr_t[i - 1][1]) * 1e3);
  simdev_link_stats(busy1, NULL);
  double stall = 0;
  struct ckpt_stats st = {0};
  if (ck.stats && ck.stats(&st, sizeof st) == 0) stall = (st.stall_seconds_total - stall0) / (measured ? measured : 1);
  double wall = t_sum > 0 ? t_sum : 1;
  double u_d2h = duplex ? pbusy[0] * 1e-9 / phase_best : (busy1[0] - busy0[0]) * 1e-9 / wall;
  double u_h2d = duplex ? pbusy[1] * 1e-9 / phase_best : (busy1[1] - busy0[1]) * 1e-9 / wall;
  size_t pk = atomic_load(&peak);
  char budget[256] = "";
  if (ck.stats && st.size >= offsetof(struct ckpt_stats, budget_copy_ratio) + sizeof st.budget_copy_ratio &&
      st.budget_mode != CKPT_BUDGET_OFF)
    snprintf(budget, sizeof budget,
             ", \"budget\": {\"why\": %llu, \"kept_regions\": %llu, \"copy_ratio\": %.3f, \"d2h_gbps\": %.3f, "
             "\"h2d_gbps\": %.3f}", (unsigned long long)st.budget_why, (unsigned long long)st.budget_kept_regions,
             st.budget_copy_ratio, st.budget_d2h_gbps, st.budget_h2d_gbps);
  printf("{\"libckpt\": %s, \"mode\": \"%s\", \"layers\": %d, \"step_s\": %.6f, \"peak_bytes\": %zu, "
         "\"stall_s\": %.6f, \"util_d2h\": %.4f, \"util_h2d\": %.4f, \"wrong_words\": %ld, \"warm_steps\": %d%s}\n",
         ck.begin ? "true" : "false", argv[1], layers, best, pk > base ? pk - base : 0, stall, u_d2h, u_h2d,
         atomic_load(&bad), warm, budget);
  return atomic_load(&bad) ? 1 : 0;
}
