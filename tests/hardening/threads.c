/* Concurrency: many threads allocate, free, open and close regions, query
 * pointers, offload, prefetch, restore and wait at once, each on its own
 * stream, while the engine moves data (CKPT_KEEP_LAST=1 offloads on every
 * close). Checked: no deadlock (a watchdog fails the test), no data
 * corruption (stream-ordered checks of every tensor), no lost update (the
 * stats counters equal what the threads did, exactly), nothing left behind.
 *
 *   threads [NTHREADS [ITERATIONS [SEED]]]    defaults 6, 300, time-based
 *
 * Regions are process-wide: a thread's allocation is tagged into whatever
 * region is innermost at that moment, possibly another thread's, and a
 * thread's region_end closes the innermost region. That is the API's
 * contract; what must hold is that every count adds up. */
#include "hard.h"

static CUcontext ctx;
static int iterations = 300;
static uint64_t base_seed;
static int forward_threads = 2;

struct worker {
  int id;
  pthread_t th;
  CUstream s;
  uint64_t rng;
  /* what this thread did, summed and compared with the stats at the end */
  long allocs, tagged, hooked, begins;
  long queries, offloads, restores;
};

/* Sizes below, at and above the 2 MiB granularity; small, so the run is quick. */
static size_t random_size(uint64_t *r) {
  switch (hard_rnd(r) % 8) {
  case 0: return 2 * MiB - 1;
  case 1: return 2 * MiB + 1;
  case 2: return 1 + hard_rnd(r) % (3 * MiB);
  default: return 4096 * (1 + hard_rnd(r) % 32);
  }
}

#define LIVE_MAX 48

static void alloc_one(struct worker *w, struct tensor *live, int *nlive) {
  if (*nlive == LIVE_MAX) return;
  struct tensor *t = &live[(*nlive)++];
  hard_alloc(t, random_size(&w->rng), hard_rnd(&w->rng), w->s);
  w->allocs++;
  w->hooked++;
  if (t->region > 0) w->tagged++;
}

static void check_and_free(struct worker *w, struct tensor *live, int *nlive, int i) {
  hard_launch(w->s, hard_check_kernel, &live[i], 0);
  CU(cuMemFreeAsync(live[i].p, w->s));
  w->hooked++;
  live[i] = live[--*nlive];
}

/* A training step as the framework's main thread runs it: forward through
 * a few regions, each offloaded as soon as it closes, then backward in
 * reverse: restore, check, free. */
static void forward_backward(struct worker *w) {
  enum { NREG = 4, PER = 2 };
  struct tensor t[NREG][PER];
  int ids[NREG];
  for (int r = 0; r < NREG; r++) {
    ids[r] = ck.region_begin("layer");
    CHECK(ids[r] > 0, "region_begin -> %d", ids[r]);
    w->begins++;
    for (int k = 0; k < PER; k++) {
      hard_alloc(&t[r][k], random_size(&w->rng), hard_rnd(&w->rng), w->s);
      w->allocs++, w->hooked++;
      if (t[r][k].region > 0) w->tagged++;
    }
    int e = ck.region_end();
    CHECK(e > 0, "region_end -> %d (an unmatched end: the region stack lost an entry)", e);
    /* ESTATE: another thread's region encloses ours and is still open. */
    int rc = ck.offload(ids[r]);
    CHECK(rc == 0 || rc == CKPT_ESTATE || rc == CKPT_ENOENT, "offload -> %d", rc);
    w->offloads++;
  }
  /* Half the steps let the offloads finish (restores then really copy back);
   * the others restore while they are in flight (restores cancel them). */
  bool settle = hard_rnd(&w->rng) % 2;
  for (int r = 0; settle && r < NREG; r++) CHECK(ck.wait(ids[r]) <= 0);
  for (int r = NREG - 1; r >= 0; r--) {
    int rc = (r & 1) ? ck.restore(ids[r]) : ck.restore_ptr(t[r][0].p + 5);
    CHECK(rc == 0 || rc == CKPT_ENOENT, "restore -> %d", rc);
    w->restores++;
    for (int k = 0; k < PER; k++) {
      hard_launch(w->s, hard_check_kernel, &t[r][k], 0);
      CU(cuMemFreeAsync(t[r][k].p, w->s));
      w->hooked++;
    }
  }
  if (hard_rnd(&w->rng) % 4 == 0) CHECK(ck.step() == 0);
}

static void *worker_main(void *arg) {
  struct worker *w = arg;
  CU(cuCtxSetCurrent(ctx));
  CU(cuStreamCreate(&w->s, CU_STREAM_NON_BLOCKING));
  CHECK(ck.set_stream((uintptr_t)w->s) == 0);
  struct tensor live[LIVE_MAX];
  int nlive = 0;
  for (int it = 0; it < iterations; it++) {
    if (w->id < forward_threads) {
      if (it % 4 == 0) forward_backward(w);
      else if (hard_rnd(&w->rng) % 2) CHECK(ck.wait(1 + (int)(hard_rnd(&w->rng) % 64)) <= 0);
      continue;
    }
    /* The other threads (backward, data loading, side streams) allocate,
     * free, query, offload and restore, inside whatever region is open. */
    unsigned op = (unsigned)(hard_rnd(&w->rng) % 10);
    int i = nlive ? (int)(hard_rnd(&w->rng) % (uint64_t)nlive) : -1;
    switch (op) {
    case 0: case 1: case 2:
      alloc_one(w, live, &nlive);
      break;
    case 3: { /* query an interior pointer */
      if (i < 0) break;
      int rid = -1, res = -1;
      int rc = ck.query(live[i].p + live[i].n / 2, &rid, &res);
      w->queries++;
      if (live[i].region > 0) {
        CHECK(rc == 0, "query of a live tagged tensor -> %d", rc);
        CHECK(res >= CKPT_DEVICE && res <= CKPT_RESTORING, "residency %d", res);
        CHECK(rid > 0, "region id %d", rid);
      } else {
        CHECK(rc == CKPT_ENOENT && res == CKPT_UNTAGGED, "query of an untagged tensor -> %d (residency %d)", rc,
              res);
      }
      break;
    }
    case 4: { /* offload now */
      if (i < 0 || live[i].region <= 0) break;
      int rc = ck.offload(live[i].region);
      CHECK(rc == 0 || rc == CKPT_ENOENT || rc == CKPT_ESTATE, "offload -> %d", rc);
      w->offloads++;
      break;
    }
    case 5: { /* restore one way or another */
      if (i < 0 || live[i].region <= 0) break;
      int rc, how = (int)(hard_rnd(&w->rng) % 3);
      if (how == 0) rc = ck.restore(live[i].region);
      else if (how == 1) rc = ck.restore_ptr(live[i].p + 1);
      else {
        rc = ck.prefetch(live[i].region);
        if (rc == 0) rc = ck.wait(live[i].region);
      }
      CHECK(rc == 0 || rc == CKPT_ENOENT, "restore (way %d) -> %d", how, rc);
      w->restores++;
      break;
    }
    case 6: case 7: case 8:
      if (i >= 0) check_and_free(w, live, &nlive, i);
      break;
    default: { /* stats while everything moves */
      struct ckpt_stats s;
      CHECK(ck.stats_get(&s, sizeof s) == 0);
      CHECK(s.regions_closed <= s.regions_opened);
      break;
    }
    }
  }
  while (nlive) check_and_free(w, live, &nlive, nlive - 1);
  CU(cuStreamSynchronize(w->s));
  return NULL;
}

int main(int argc, char **argv) {
  int nthreads = argc > 1 ? atoi(argv[1]) : 6;
  if (argc > 2) iterations = atoi(argv[2]);
  base_seed = argc > 3 ? strtoull(argv[3], NULL, 0) : (uint64_t)time(NULL) ^ (uint64_t)getpid() << 16;
  CHECK(nthreads >= 1 && nthreads <= 64 && iterations >= 1, "usage: threads [NTHREADS [ITERATIONS [SEED]]]");
  printf("threads: %d threads x %d iterations, seed %llu\n", nthreads, iterations, (unsigned long long)base_seed);
  fflush(stdout);
  watchdog_start("threads", (unsigned)(getenv("HARD_TIMEOUT") ? atoi(getenv("HARD_TIMEOUT")) : 240));
  ck_load();
  ctx = ctx_setup();
  struct worker *w = calloc((size_t)nthreads, sizeof *w);
  for (int i = 0; i < nthreads; i++) {
    w[i].id = i;
    w[i].rng = base_seed * 2654435761u + (uint64_t)i * 0x9E3779B97F4A7C15ull + 1;
    CHECK(pthread_create(&w[i].th, NULL, worker_main, &w[i]) == 0);
  }
  long allocs = 0, tagged = 0, hooked = 0, begins = 0, ops = 0;
  for (int i = 0; i < nthreads; i++) {
    CHECK(pthread_join(w[i].th, NULL) == 0);
    allocs += w[i].allocs, tagged += w[i].tagged, hooked += w[i].hooked, begins += w[i].begins;
    ops += w[i].queries + w[i].offloads + w[i].restores;
  }
  CU(cuCtxSynchronize());
  CHECK(ck.step() == 0); /* reaps every free whose stream is past it */
  struct ckpt_stats s = ck_stats();
  printf("threads: %ld allocations (%ld tagged), %ld regions, %ld queries/offloads/restores; "
         "engine: %llu offloads, %llu restores\n",
         allocs, tagged, begins, ops, (unsigned long long)s.offloads, (unsigned long long)s.restores);
  CHECK(kernel_errors == 0, "%ld stream-ordered checks failed", (long)kernel_errors);
  CHECK(!simdev_faulted(), "a stream touched unmapped memory (a swap was not gated)");
  /* No lost update: every counter is exactly what the threads did. */
  CHECK(s.regions_opened == (uint64_t)begins, "regions_opened %llu, threads opened %ld",
        (unsigned long long)s.regions_opened, begins);
  CHECK(s.regions_closed == (uint64_t)begins, "regions_closed %llu, threads closed %ld",
        (unsigned long long)s.regions_closed, begins);
  CHECK(s.tagged_allocs == (uint64_t)tagged, "tagged_allocs %llu, threads saw %ld tagged",
        (unsigned long long)s.tagged_allocs, tagged);
  CHECK(s.untagged_allocs == (uint64_t)(allocs - tagged), "untagged_allocs %llu, threads saw %ld untagged",
        (unsigned long long)s.untagged_allocs, allocs - tagged);
  CHECK(s.hooked_calls == (uint64_t)hooked, "hooked_calls %llu, threads made %ld hooked calls",
        (unsigned long long)s.hooked_calls, hooked);
  CHECK(s.tagged_allocs_live == 0 && s.tagged_bytes_live == 0, "live after all frees: %llu allocs, %llu bytes",
        (unsigned long long)s.tagged_allocs_live, (unsigned long long)s.tagged_bytes_live);
  CHECK(s.host_bytes_in_use == 0, "host bytes in use after all frees: %llu", (unsigned long long)s.host_bytes_in_use);
  CHECK(s.device_bytes_released == 0, "device bytes released after all frees: %llu",
        (unsigned long long)s.device_bytes_released);
  CHECK(s.driver_errors == 0, "%llu driver errors", (unsigned long long)s.driver_errors);
  CHECK(s.offloads > 0 && s.restores > 0, "nothing moved: the test tested nothing");
  printf("threads: ok\n");
  free(w);
  return 0;
}
