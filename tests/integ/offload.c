/* Host offload under LD_PRELOAD on the simulated device: every path checked
 * bit-exact. `offload SUBTEST` runs one scenario (see main). "Kernels" are
 * host functions on streams (cuLaunchHostFunc) so they are ordered exactly
 * like device work: a missing wait shows up as wrong data. */
#include <pthread.h>
#include <stdbool.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

static CUstream compute;

struct tensor {
  CUdeviceptr p;
  size_t n;
  uint64_t seed;
  int region;
};

/* ---- stream-ordered kernels ---------------------------------------------- */

/* A snapshot of the tensor: the caller's struct may be reused before the
 * kernel runs, as a framework reuses its tensor objects. */
struct kernel_args {
  struct tensor t[1];
  unsigned sleep_us;
};
static _Atomic long kernel_errors;

/* The tensor a kernel is touching, for the report when the device faults. */
static struct tensor *_Atomic touching;
static _Atomic int touching_kind;

static void report_fault(void) {
  struct tensor *t = touching;
  if (simdev_faulted() && t)
    fprintf(stderr, "fault while %s tensor %#llx (%zu bytes, region %d), residency now %d\n",
            touching_kind ? "checking" : "filling", (unsigned long long)t->p, t->n, t->region, residency(t->p));
}


static void CUDA_CB fill_kernel(void *arg) {
  struct kernel_args *k = arg;
  touching = k->t;
  touching_kind = 0;
  if (k->sleep_us) usleep(k->sleep_us);
  pattern_fill((void *)k->t->p, k->t->n, k->t->seed);
  free(k);
}
static void CUDA_CB check_kernel(void *arg) {
  struct kernel_args *k = arg;
  touching = k->t;
  touching_kind = 1;
  if (k->sleep_us) usleep(k->sleep_us);
  size_t bad = pattern_check((void *)k->t->p, k->t->n, k->t->seed);
  if (bad) {
    fprintf(stderr, "check kernel: %#llx (%zu bytes, region %d, residency %d) differs at byte %zu\n",
            (unsigned long long)k->t->p, k->t->n, k->t->region, residency(k->t->p), bad - 1);
    kernel_errors++;
  }
  free(k);
}
static void launch(CUstream s, void (*fn)(void *), struct tensor *t, unsigned sleep_us) {
  struct kernel_args *k = malloc(sizeof *k);
  k->t[0] = *t;
  k->sleep_us = sleep_us;
  CU(cuLaunchHostFunc(s, fn, k));
}
static void CUDA_CB sleep_kernel(void *arg) { usleep((unsigned)(uintptr_t)arg); }

static void alloc_tensor(struct tensor *t, size_t n, uint64_t seed, CUstream s) {
  t->n = n;
  t->seed = seed;
  CU(cuMemAllocAsync(&t->p, n, s));
  CHECK(t->p % 4096 == 0);
  t->region = region_of(t->p);
  launch(s, fill_kernel, t, 0);
}

static void host_check(struct tensor *t, const char *what) {
  CU(cuStreamSynchronize(compute)); /* the fill kernel may still be queued */
  size_t bad = pattern_check((void *)t->p, t->n, t->seed);
  CHECK(bad == 0, "%s: tensor %#llx (%zu bytes, region %d) differs at byte %zu", what, (unsigned long long)t->p, t->n,
        t->region, bad - 1);
}

static uint64_t rng_state;
static uint64_t rnd(void) {
  rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
  return rng_state;
}

/* Sizes below, at and above the granularity, odd ones; mostly small, since
 * every byte is generated, copied twice and checked on a 2-core CPU. */
static size_t random_size(void) {
  const size_t g = 2 * MiB;
  switch (rnd() % 16) {
  case 0: return g - 1;
  case 1: return g;
  case 2: return g + 1;
  case 3: return 1 + rnd() % (3 * g);   /* anything up to 3 granules */
  case 4: return (1 + rnd() % 2) * g;   /* exact granules */
  case 5: case 6: case 7: case 8: case 9: return 4096 * (1 + rnd() % 64);
  default: return 1 + rnd() % 4096;     /* tiny, odd */
  }
}

/* ---- scenarios ------------------------------------------------------------ */

/* Randomized forward/backward cycles: at least 10,000 tensors, random region
 * counts, sizes, restore orders and ways (restore, restore_ptr, prefetch+wait,
 * manual offload, untouched consumers reading host-backed memory). */
static int roundtrip_tensors = 10000;
/* ROUNDTRIP_STREAMS=N (up to 16): tensors are produced on N program streams
 * besides compute and the legacy stream, and consumed on compute after a
 * cross-stream event wait (or on their producer's stream). */
#define MAX_PROG_STREAMS 16
static int nprog;
static CUstream prog[MAX_PROG_STREAMS];
static CUevent prog_ev[MAX_PROG_STREAMS];

static CUstream pick_stream(void) {
  if (nprog && rnd() % 2) return prog[rnd() % (unsigned)nprog];
  return (rnd() % 4) ? compute : 0;
}
/* compute waits for everything enqueued so far on the program streams. */
static void join_streams(void) {
  for (int i = 0; i < nprog; i++) {
    CU(cuEventRecord(prog_ev[i], prog[i]));
    CU(cuStreamWaitEvent(compute, prog_ev[i], 0));
  }
}

static void roundtrip(uint64_t seed) {
  rng_state = seed ? seed : 1;
  printf("roundtrip seed %llu\n", (unsigned long long)seed);
  int total = 0, steps = 0;
  struct tensor *ts = calloc(512, sizeof *ts);
  while (total < roundtrip_tensors) {
    int nreg = 1 + (int)(rnd() % 10), nt = 0;
    int ids[10], first[11];
    for (int r = 0; r < nreg; r++) {
      ids[r] = ck.region_begin("layer");
      CHECK(ids[r] > 0);
      first[r] = nt;
      int k = 1 + (int)(rnd() % 40);
      for (int i = 0; i < k && nt < 512; i++, nt++) {
        CUstream s = pick_stream();
        alloc_tensor(&ts[nt], random_size(), rnd(), s);
        CHECK(ts[nt].region == ids[r]);
      }
      /* Sometimes a temporary dies inside its region (not a survivor). */
      if (nt - first[r] > 1 && rnd() % 3 == 0) {
        nt--;
        join_streams();
        CU(cuMemFreeAsync(ts[nt].p, compute));
      }
      CHECK(ck.region_end() == ids[r]);
      if (rnd() % 5 == 0) CHECK(ck.offload(ids[r]) == 0); /* manual, on top of the policy */
    }
    first[nreg] = nt;
    join_streams(); /* the producers' fills before any consumer on compute */
    /* Some offloads finished, some in flight: a consumer that never restores
     * must read correct bytes whatever the state. */
    if (rnd() % 3 == 0) {
      int r = (int)(rnd() % nreg);
      for (int i = first[r]; i < first[r + 1]; i++) launch(compute, check_kernel, &ts[i], 0);
    }
    /* Backward: newest region first, restored one way or another. */
    for (int r = nreg - 1; r >= 0; r--) {
      switch (rnd() % 4) {
      case 0: CHECK(ck.restore(ids[r]) == 0); break;
      case 1: if (first[r + 1] > first[r]) CHECK(ck.restore_ptr(ts[first[r]].p + ts[first[r]].n / 2) == 0); break;
      case 2: CHECK(ck.prefetch(ids[r]) == 0); CHECK(ck.wait(ids[r]) == 0); break;
      default: break; /* read it where it is */
      }
      for (int i = first[r]; i < first[r + 1]; i++) launch(compute, check_kernel, &ts[i], 0);
      for (int i = first[r]; i < first[r + 1]; i++) CU(cuMemFreeAsync(ts[i].p, compute));
    }
    total += nt;
    steps++;
    if (rnd() % 2) ck.step();
  }
  CU(cuStreamSynchronize(compute));
  CU(cuCtxSynchronize());
  CHECK(kernel_errors == 0, "%ld checks failed", (long)kernel_errors);
  struct ckpt_stats st = ck_stats();
  printf("roundtrip: %d tensors, %d steps, offloaded %.1f MiB, restored %.1f MiB\n", total, steps,
         st.offloaded_bytes_total / 1048576.0, st.restored_bytes_total / 1048576.0);
  CHECK(st.offloaded_bytes_total > 0 && st.restored_bytes_total > 0);
  CHECK(st.tagged_allocs_live == 0);
  free(ts);
}

/* Reads and writes of an offloaded tensor without a restore both work, and
 * the written bytes are there after the restore. */
/* A copy that does not finish (the link held): ckpt_wait returns
 * CKPT_ETIMEDOUT at CKPT_WAIT_TIMEOUT (200 ms here) with a warning instead of
 * blocking for ever; the offload goes on and completes once the link moves. */
static void wait_bound(void) {
  struct tensor x;
  int a = ck.region_begin("a");
  alloc_tensor(&x, 6 * MiB, 77, compute);
  ck.region_end();
  CU(cuStreamSynchronize(compute));
  simdev_link_pause(0, 1);
  CHECK(ck.offload(a) == 0);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int rc = ck.wait(a);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double took = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
  CHECK(rc == CKPT_ETIMEDOUT, "ckpt_wait on a held copy: %d", rc);
  CHECK(took >= 0.15 && took < 10, "returned after %.3f s (bound 0.2 s)", took);
  CHECK(residency(x.p) == CKPT_OFFLOADING, "still in flight: residency %d", residency(x.p));
  simdev_link_pause(0, 0);
  CHECK(ck.wait(a) == 0);
  CHECK(residency(x.p) == CKPT_HOST, "residency %d", residency(x.p));
  CHECK(ck.restore(a) == 0);
  CHECK(ck.wait(a) == 0);
  host_check(&x, "after a timed-out wait");
  CU(cuMemFreeAsync(x.p, compute));
  CU(cuStreamSynchronize(compute));
  ck.step();
}

static void stray(void) {
  struct tensor x;
  int a = ck.region_begin("a");
  alloc_tensor(&x, 6 * MiB + 5, 42, compute);
  ck.region_end();
  int b = ck.region_begin("b");
  struct tensor y;
  alloc_tensor(&y, 4 * MiB, 43, compute);
  ck.region_end(); /* a is offloaded now (CKPT_KEEP_LAST=1) */
  CHECK(ck.wait(a) == 0);
  CHECK(residency(x.p) == CKPT_HOST, "residency %d", residency(x.p));
  host_check(&x, "stray host read");
  launch(compute, check_kernel, &x, 0); /* a device-side stray read */
  /* A stray write through the host-backed VA: memset on the stream. */
  CU(cuMemsetD8Async(x.p + 1000, 0x5a, 3000, compute));
  CU(cuStreamSynchronize(compute));
  CHECK(kernel_errors == 0);
  CHECK(ck.restore(a) == 0);
  CHECK(ck.wait(a) == 0); /* restore holds the streams, not the host */
  CHECK(residency(x.p) == CKPT_DEVICE);
  /* Expected: the pattern with the written bytes in it, nothing else changed. */
  unsigned char *ref = malloc(x.n);
  pattern_fill(ref, x.n, 42);
  memset(ref + 1000, 0x5a, 3000);
  CHECK(memcmp((void *)x.p, ref, x.n) == 0, "restored bytes differ from pattern + stray write");
  free(ref);
  CU(cuMemFreeAsync(x.p, compute));
  CU(cuMemFreeAsync(y.p, compute));
  CU(cuStreamSynchronize(compute));
  (void)b;
  ck.step();
}

/* The producer is still writing when the offload is decided: the copy must
 * be ordered after it and carry the final bytes. */
static void slow_producer(void) {
  CUstream prod;
  CU(cuStreamCreate(&prod, CU_STREAM_NON_BLOCKING));
  struct tensor x, y;
  int a = ck.region_begin("a");
  CU(cuMemAllocAsync(&x.p, 8 * MiB, prod));
  x.n = 8 * MiB;
  x.seed = 99;
  launch(prod, fill_kernel, &x, 300000); /* 0.3 s before the bytes land */
  ck.region_end();
  ck.region_begin("b");
  alloc_tensor(&y, 4 * MiB, 5, prod);
  ck.region_end();
  CHECK(residency(x.p) == CKPT_OFFLOADING || residency(x.p) == CKPT_HOST);
  CHECK(ck.wait(a) == 0);
  CHECK(residency(x.p) == CKPT_HOST);
  CHECK(ck.restore(a) == 0);
  CHECK(ck.wait(a) == 0); /* a host reader waits for the swap: restore holds only the streams */
  host_check(&x, "slow producer");
  CU(cuMemFreeAsync(x.p, prod));
  CU(cuMemFreeAsync(y.p, prod));
  CU(cuStreamSynchronize(prod));
  ck.step();
}

/* Compute slower than copies: when backward reaches region k-1 its restore
 * (prefetched while k computed) is already complete. */
static void prefetch_overlap(void) {
  enum { N = 6 };
  struct tensor x[N];
  int ids[N];
  for (int r = 0; r < N; r++) {
    ids[r] = ck.region_begin("layer");
    alloc_tensor(&x[r], 4 * MiB, 100 + (uint64_t)r, compute);
    ck.region_end();
  }
  for (int r = 0; r < N - 1; r++) CHECK(ck.wait(ids[r]) == 0);
  for (int r = 0; r < N - 1; r++) CHECK(residency(x[r].p) == CKPT_HOST);
  int ready = 0;
  for (int r = N - 1; r >= 0; r--) {
    if (r < N - 1 && residency(x[r].p) == CKPT_DEVICE) ready++;
    else if (r < N - 1) fprintf(stderr, "region %d: residency %d when its consumer arrived\n", r, residency(x[r].p));
    CHECK(ck.restore(ids[r]) == 0);
    launch(compute, check_kernel, &x[r], 0);
    CU(cuLaunchHostFunc(compute, sleep_kernel, (void *)(uintptr_t)300000)); /* 0.3 s of "backward" */
    CU(cuStreamSynchronize(compute));
    usleep(20000); /* the host's own work before the next layer's backward */
    CU(cuMemFreeAsync(x[r].p, compute));
  }
  CU(cuStreamSynchronize(compute));
  CHECK(kernel_errors == 0);
  /* The overlap itself is a matter of time: under a sanitizer (several times
   * slower, scripts/check-sanitizers sets SANITIZER_RUNTIME) only printed. */
  if (getenv("SANITIZER_RUNTIME")) {
    printf("prefetch overlap (not checked under a sanitizer): %d of %d restores ready, stalled %.3f s\n", ready,
           N - 1, ck_stats().stall_seconds_total);
  } else {
    CHECK(ready == N - 1, "only %d of %d restores were complete before their consumer", ready, N - 1);
    /* Consumers never waited at a restore's gate for long (copies were early). */
    CHECK(ck_stats().stall_seconds_total < 0.05 * N, "stalled %.3f s", ck_stats().stall_seconds_total);
  }
  ck.step();
}

static int count_in_file(const char *path, const char *needle) {
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  char line[1024];
  int n = 0;
  while (fgets(line, sizeof line, f)) n += strstr(line, needle) != NULL;
  fclose(f);
  return n;
}

/* CKPT_HOST_MAX_BYTES=8M: only two 4 MiB survivors fit; the others stay on
 * the device; nothing is lost; one warning. */
static void pool_exhaustion(const char *log) {
  struct tensor x[6];
  for (int step = 0; step < 3; step++) {
    int a = ck.region_begin("a");
    for (int i = 0; i < 6; i++) alloc_tensor(&x[i], 4 * MiB, (uint64_t)(7 * step + i), compute);
    ck.region_end();
    ck.region_begin("b");
    ck.region_end();
    CHECK(ck.wait(a) == 0);
    int host = 0;
    for (int i = 0; i < 6; i++) host += residency(x[i].p) == CKPT_HOST;
    CHECK(host == 2, "%d survivors offloaded, the pool holds 2", host);
    for (int i = 0; i < 6; i++) host_check(&x[i], "pool full");
    CHECK(ck.restore(a) == 0);
    CHECK(ck.wait(a) == 0); /* a host reader waits for the swap: restore holds only the streams */
    for (int i = 0; i < 6; i++) {
      host_check(&x[i], "after restore");
      CU(cuMemFreeAsync(x[i].p, compute));
    }
    CU(cuStreamSynchronize(compute));
    ck.step();
  }
  CHECK(ck_stats().host_pool_exhausted >= 12);
  CHECK(count_in_file(log, "host pool full") == 1, "warned %d times", count_in_file(log, "host pool full"));
}

/* Device memory runs out at restore time: the data stays host-backed and
 * correct, and the next restore brings it back. */
static void restore_oom(const char *log) {
  struct tensor x, y;
  int a = ck.region_begin("a");
  alloc_tensor(&x, 64 * MiB, 11, compute);
  ck.region_end();
  ck.region_begin("b");
  alloc_tensor(&y, 4 * MiB, 12, compute);
  ck.region_end();
  CHECK(ck.wait(a) == 0);
  CHECK(residency(x.p) == CKPT_HOST);
  ck.release_cached();
  simdev_set_device_capacity(0, simdev_device_used(0) + 16 * MiB);
  CHECK(ck.restore(a) == 0);
  CHECK(residency(x.p) == CKPT_HOST, "no room: stays host-backed");
  host_check(&x, "host-backed after failed restore");
  launch(compute, check_kernel, &x, 0);
  CU(cuStreamSynchronize(compute));
  CHECK(ck_stats().restore_oom >= 1);
  CHECK(ck.restore(a) == 0); /* still no room: second warning must not appear */
  simdev_set_device_capacity(0, (size_t)16 << 30);
  CHECK(ck.restore(a) == 0);
  CHECK(ck.wait(a) == 0);
  CHECK(residency(x.p) == CKPT_DEVICE);
  host_check(&x, "restored later");
  CHECK(kernel_errors == 0);
  CU(cuMemFreeAsync(x.p, compute));
  CU(cuMemFreeAsync(y.p, compute));
  CU(cuStreamSynchronize(compute));
  CHECK(count_in_file(log, "no device memory to restore into") == 1);
  ck.step();
}

/* Device usage drops by the survivors' mapped bytes after the offload, returns
 * to the baseline after the step, and nothing grows over 1,000 steps. The
 * tensors are small (each still maps a whole 2 MiB granule) so that 1,000
 * steps of fresh simulated memory stay quick. */
static void accounting(void) {
  size_t base = 0, host_base = 0;
  for (int step = 0; step < 1000; step++) {
    struct tensor x[3], y;
    int a = ck.region_begin("a");
    for (int i = 0; i < 3; i++) alloc_tensor(&x[i], 64 * 1024 + 1, (uint64_t)step * 3 + (uint64_t)i, compute);
    ck.region_end();
    ck.region_begin("b");
    alloc_tensor(&y, 4096, 1, compute);
    size_t before = simdev_device_used(0);
    ck.region_end(); /* offloads a */
    CHECK(ck.wait(a) == 0);
    size_t after = simdev_device_used(0);
    CHECK(before - after == 3 * tagged_granule(), "step %d: dropped %zd bytes", step, (ssize_t)(before - after));
    CHECK(ck_stats().device_bytes_released == 3 * tagged_granule());
    CHECK(ck.restore(a) == 0);
    CHECK(ck.wait(a) == 0); /* a host reader waits for the swap: restore holds only the streams */
    for (int i = 0; i < 3; i++) {
      if (step % 100 == 0) host_check(&x[i], "accounting");
      CU(cuMemFreeAsync(x[i].p, compute));
    }
    CU(cuMemFreeAsync(y.p, compute));
    CU(cuStreamSynchronize(compute));
    ck.step();
    if (step == 1) {
      base = simdev_device_used(0);
      host_base = simdev_host_used();
    } else if (step > 1) {
      CHECK(simdev_device_used(0) == base, "step %d: device %zu, baseline %zu", step, simdev_device_used(0), base);
      CHECK(simdev_host_used() == host_base, "step %d: host %zu, baseline %zu", step, simdev_host_used(), host_base);
    }
  }
  CHECK(ck_stats().device_bytes_released == 0);
  CHECK(ck_stats().host_bytes_in_use == 0);
}

/* SIMDEV_FAIL makes the first offload copy fail: logged, data kept on the device. */
static void copy_error(void) {
  struct tensor x, y;
  int a = ck.region_begin("a");
  alloc_tensor(&x, 4 * MiB, 3, compute);
  ck.region_end();
  ck.region_begin("b");
  alloc_tensor(&y, 4 * MiB, 4, compute);
  ck.region_end();
  CHECK(ck.wait(a) == 0);
  CHECK(residency(x.p) == CKPT_DEVICE, "a failed copy leaves the data on the device");
  CHECK(ck_stats().driver_errors >= 1);
  host_check(&x, "after failed copy");
  CHECK(ck.restore(a) == 0);
  CHECK(ck.wait(a) == 0); /* a host reader waits for the swap: restore holds only the streams */
  host_check(&x, "after restore");
  CU(cuMemFreeAsync(x.p, compute));
  CU(cuMemFreeAsync(y.p, compute));
  CU(cuStreamSynchronize(compute));
}

/* Duplex (issue 14 item 2): offloads of late regions and restores of early
 * ones in flight together, tensors produced on several streams
 * (ROUNDTRIP_STREAMS), bit-exact. CKPT_OFFLOAD=manual: the test decides what
 * moves when. The early regions are offloaded and awaited first, so each
 * restore follows its offload's copy and swap; the last late region comes
 * back while its offload may still be in flight (the cancel path).
 * Where the program's streams cannot share a hardware queue with the copy
 * streams (default connections, at most 4 streams; a shared queue orders the
 * restore's fence behind the offload, on a GPU too) the device-to-host
 * direction of the link is paused while the early regions are restored: they
 * must come back with every late offload still in flight (with one copy
 * stream they would wait behind them). Elsewhere the link is only slow and
 * the data checked. */
static bool all_on_device(struct tensor *t, int n) {
  for (int i = 0; i < n; i++)
    if (residency(t[i].p) != CKPT_DEVICE) return false;
  return true;
}

static void duplex(void) {
  enum { E = 4, L = 2, R = 3 };
  const char *conn = getenv("CUDA_DEVICE_MAX_CONNECTIONS");
  bool witness = (!conn || !*conn) && nprog <= 4;
  rng_state = 777;
  for (int round = 0; round < R; round++) {
    struct tensor et[E][8], lt[L][4];
    int en[E], eid[E], lid[L];
    simdev_set_copy_gbps(0); /* forward of the early regions: unthrottled */
    for (int r = 0; r < E; r++) {
      eid[r] = ck.region_begin("early");
      en[r] = 1 + (int)(rnd() % 8);
      for (int i = 0; i < en[r]; i++) alloc_tensor(&et[r][i], random_size(), rnd(), pick_stream());
      CHECK(ck.region_end() == eid[r]);
    }
    join_streams();
    for (int r = 0; r < E; r++) CHECK(ck.offload(eid[r]) == 0);
    for (int r = 0; r < E; r++) CHECK(ck.wait(eid[r]) == 0);
    simdev_set_copy_gbps(0.5);
    if (witness) simdev_link_pause(0, 1);
    for (int r = 0; r < L; r++) {
      lid[r] = ck.region_begin("late");
      alloc_tensor(&lt[r][0], 8 * MiB, rnd(), pick_stream());
      for (int i = 1; i < 4; i++) alloc_tensor(&lt[r][i], random_size(), rnd(), pick_stream());
      CHECK(ck.region_end() == lid[r]);
    }
    join_streams();
    for (int r = 0; r < L; r++) CHECK(ck.offload(lid[r]) == 0);
    /* Backward of the early regions while the late ones go out. */
    for (int r = E - 1; r >= 0; r--) {
      CHECK(ck.restore(eid[r]) == 0);
      for (int i = 0; i < en[r]; i++) launch(compute, check_kernel, &et[r][i], 0);
      if (witness) { /* bounded: 30 s */
        int ms = 0;
        while (!all_on_device(et[r], en[r]) && ms < 30000) usleep(1000), ms++;
        CHECK(all_on_device(et[r], en[r]), "round %d: early region %d not restored in 30 s while the offloads "
              "were held: restores wait behind offloads", round, r);
        for (int l = 0; l < L; l++)
          CHECK(residency(lt[l][0].p) == CKPT_OFFLOADING, "late region %d: residency %d", l, residency(lt[l][0].p));
      }
      for (int i = 0; i < en[r]; i++) CU(cuMemFreeAsync(et[r][i].p, compute));
    }
    if (witness) simdev_link_pause(0, 0);
    /* Then the late regions come back (the last one possibly mid-offload). */
    for (int r = L - 1; r >= 0; r--) {
      CHECK(ck.restore(lid[r]) == 0);
      for (int i = 0; i < 4; i++) launch(compute, check_kernel, &lt[r][i], 0);
      for (int i = 0; i < 4; i++) CU(cuMemFreeAsync(lt[r][i].p, compute));
    }
    CU(cuStreamSynchronize(compute));
    CHECK(kernel_errors == 0, "%ld checks failed", (long)kernel_errors);
    ck.step();
  }
  simdev_set_copy_gbps(0);
  CU(cuCtxSynchronize());
  struct ckpt_stats st = ck_stats();
  CHECK(st.offloaded_bytes_total > 0 && st.restored_bytes_total > 0);
  CHECK(st.tagged_allocs_live == 0);
  printf("duplex: %d rounds%s\n", R,
         witness ? ", early regions restored while the device-to-host link was held"
                 : " (the overlap is not checked: copy streams may share a hardware queue here)");
}

/* Exit while copies are in flight: a clean exit, quickly. */
static void exit_inflight(void) {
  simdev_set_copy_gbps(0.05); /* 64 MiB take over a second */
  struct tensor x, y;
  ck.region_begin("a");
  alloc_tensor(&x, 64 * MiB, 1, compute);
  ck.region_end();
  ck.region_begin("b");
  alloc_tensor(&y, 4 * MiB, 2, compute);
  ck.region_end();
  CHECK(residency(x.p) == CKPT_OFFLOADING);
  printf("offload: exit_inflight ok\n");
  exit(0);
}

int main(int argc, char **argv) {
  CHECK(argc >= 2, "usage: offload SUBTEST [arg]");
  atexit(report_fault);
  ck_load();
  ctx_setup();
  /* A blocking stream: ordered with the legacy stream 0, which the round trip
   * also allocates and fills on. */
  CU(cuStreamCreate(&compute, CU_STREAM_DEFAULT));
  CHECK(ck.set_stream((uintptr_t)compute) == 0);
  const char *t = argv[1];
  /* Log files from an earlier run would count twice (libckpt opens its log
   * lazily, at the first message, so removing it here is in time). */
  if (argc > 2 && (!strcmp(t, "pool_exhaustion") || !strcmp(t, "restore_oom"))) unlink(argv[2]);
  if (getenv("ROUNDTRIP_TENSORS")) roundtrip_tensors = atoi(getenv("ROUNDTRIP_TENSORS"));
  if (getenv("ROUNDTRIP_STREAMS")) nprog = atoi(getenv("ROUNDTRIP_STREAMS"));
  if (nprog > MAX_PROG_STREAMS) nprog = MAX_PROG_STREAMS;
  for (int i = 0; i < nprog; i++) { /* never named to libckpt: the stream hooks see them */
    CU(cuStreamCreate(&prog[i], i % 3 ? CU_STREAM_NON_BLOCKING : CU_STREAM_DEFAULT));
    CU(cuEventCreate(&prog_ev[i], CU_EVENT_DISABLE_TIMING));
  }
  if (!strcmp(t, "roundtrip")) {
    roundtrip(12345);
    uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 0) : (uint64_t)time(NULL) ^ (uint64_t)getpid();
    roundtrip(seed);
  } else if (!strcmp(t, "stray")) stray();
  else if (!strcmp(t, "wait_bound")) wait_bound();
  else if (!strcmp(t, "slow_producer")) slow_producer();
  else if (!strcmp(t, "prefetch")) prefetch_overlap();
  else if (!strcmp(t, "pool_exhaustion")) pool_exhaustion(argv[2]);
  else if (!strcmp(t, "restore_oom")) restore_oom(argv[2]);
  else if (!strcmp(t, "accounting")) accounting();
  else if (!strcmp(t, "copy_error")) copy_error();
  else if (!strcmp(t, "exit_inflight")) exit_inflight();
  else if (!strcmp(t, "duplex")) duplex();
  else CHECK(0, "unknown subtest %s", t);
  CHECK(!simdev_faulted(), "a stream touched unmapped memory");
  CHECK(kernel_errors == 0);
  printf("offload %s: ok\n", t);
  return 0;
}
