/* Peer modes under LD_PRELOAD on the simulated device and the simulated NCCL.
 *
 *   peer_test SCENARIO P [SEED]   the launcher: forks P ranks, each re-executes
 *                                 this program as `peer_test --rank ...` with
 *                                 CKPT_PEER_SIZE/RANK/ID_FILE and its own
 *                                 CKPT_DEBUG_FILE, kills them all past a time
 *                                 limit (a hang is a failure), then checks their
 *                                 exit statuses and logs.
 * Every rank runs the same program on the same data (tensor-parallel ranks
 * hold identical copies), so each restored byte can be checked exactly.
 * "Kernels" are host functions on the compute stream, ordered like device
 * work. CKPT_MODE (peer / peer+host) and the other knobs come from meson. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

static CUstream compute;
static _Atomic long kernel_errors;
static int P, R;
static uint64_t rng_state;
static int (*pin)(uintptr_t);

static uint64_t rnd(void) {
  rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
  return rng_state;
}

struct tensor {
  CUdeviceptr p;
  size_t n;
  uint64_t seed;
};

static void CUDA_CB fill_kernel(void *arg) {
  struct tensor *t = arg;
  pattern_fill((void *)t->p, t->n, t->seed);
  free(t);
}
static void CUDA_CB check_kernel(void *arg) {
  struct tensor *t = arg;
  size_t bad = pattern_check((void *)t->p, t->n, t->seed);
  if (bad) {
    fprintf(stderr, "rank %d: tensor %#llx (%zu bytes) differs at byte %zu\n", R, (unsigned long long)t->p, t->n,
            bad - 1);
    kernel_errors++;
  }
  free(t);
}
static void launch(void (*fn)(void *), const struct tensor *t) {
  struct tensor *k = malloc(sizeof *k);
  *k = *t;
  CU(cuLaunchHostFunc(compute, fn, k));
}
static void alloc(struct tensor *t, size_t n, uint64_t seed) {
  t->n = n;
  t->seed = seed;
  CU(cuMemAllocAsync(&t->p, n, compute));
  launch(fill_kernel, t);
}
static void check_free(struct tensor *t) {
  launch(check_kernel, t);
  CU(cuMemFreeAsync(t->p, compute));
}

/* Sizes divisible by P and not, around the granularity and tiny. */
static size_t random_size(void) {
  const size_t g = 2 * MiB;
  switch (rnd() % 8) {
  case 0: return g;
  case 1: return g - 1;
  case 2: return g + 1 + rnd() % 4096;
  case 3: return 1 + rnd() % (3 * g);
  case 4: return 12 * 4096 * (1 + rnd() % 16); /* divisible by 2, 3 and 4 */
  case 5: return 1 + rnd() % 700;              /* below P * 256: all tail */
  default: return 4096 * (1 + rnd() % 200) + rnd() % 3;
  }
}

static bool peer_mode(void) { return !strncmp(ck.mode(), "peer", 4); }

/* ---- scenarios (one rank) ------------------------------------------------- */

/* Randomized steps: regions of random survivors, offloaded by the policy
 * (auto, CKPT_KEEP_LAST=1) or by hand, restored newest first one way or
 * another, every byte checked after the restore. */
static void roundtrip(uint64_t seed) {
  rng_state = seed;
  struct tensor ts[64];
  long peer_seen = 0;
  for (int step = 0; step < 5; step++) {
    int nreg = 2 + (int)(rnd() % 4), ids[6], first[7], nt = 0;
    for (int r = 0; r < nreg; r++) {
      ids[r] = ck.region_begin("layer");
      first[r] = nt;
      int k = 1 + (int)(rnd() % 5);
      for (int i = 0; i < k; i++, nt++) alloc(&ts[nt], random_size(), rnd());
      CHECK(ck.region_end() == ids[r]);
      if (rnd() % 4 == 0) CHECK(ck.offload(ids[r]) == 0);
    }
    first[nreg] = nt;
    /* The policy offloaded every region but the last (a restore prefetches
     * the one before it, so look now). */
    for (int r = 0; r < nreg - 1; r++) {
      CHECK(ck.wait(ids[r]) == 0);
      int res = residency(ts[first[r]].p);
      CHECK(res == (peer_mode() ? CKPT_PEER : CKPT_HOST), "rank %d: region %d residency %d", R, ids[r], res);
      peer_seen += res == CKPT_PEER;
    }
    for (int r = nreg - 1; r >= 0; r--) {
      switch (rnd() % 3) {
      case 0: CHECK(ck.restore(ids[r]) == 0); break;
      case 1: CHECK(ck.restore_ptr(ts[first[r]].p + ts[first[r]].n / 2) == 0); break;
      default: CHECK(ck.prefetch(ids[r]) == 0); CHECK(ck.restore(ids[r]) == 0); break;
      }
      for (int i = first[r]; i < first[r + 1]; i++) check_free(&ts[i]);
    }
    CHECK(ck.step() == 0);
  }
  CU(cuStreamSynchronize(compute));
  struct ckpt_stats s = ck_stats();
  printf("rank %d: offloaded %.1f MiB, restored %.1f MiB, peer residencies seen %ld\n", R,
         s.offloaded_bytes_total / 1048576.0, s.restored_bytes_total / 1048576.0, peer_seen);
  CHECK(s.restores > 0 && s.offloads == s.restores, "offloads %llu restores %llu", (unsigned long long)s.offloads,
        (unsigned long long)s.restores);
  CHECK(!peer_mode() || peer_seen > 0);
  if (getenv("CKPT_VERIFY") && !strcmp(getenv("CKPT_VERIFY"), "1"))
    CHECK(s.verify_failures == 0 && s.verify_checked == s.restores, "verify: %llu failures, %llu of %llu checked",
          (unsigned long long)s.verify_failures, (unsigned long long)s.verify_checked,
          (unsigned long long)s.restores);
  CHECK(s.peer_bytes_in_use == 0 && s.tagged_allocs_live == 0);
  CHECK(s.peer_mismatches == 0 && s.peer_lost == 0);
}

/* One small region through the whole path: bootstraps the group. */
static void warm_up(void) {
  struct tensor t;
  int id = ck.region_begin("warm");
  alloc(&t, 3 * MiB + 17, 7);
  ck.region_end();
  CHECK(ck.offload(id) == 0);
  CHECK(ck.wait(id) == 0);
  CHECK(ck.restore(id) == 0);
  check_free(&t);
  CU(cuStreamSynchronize(compute));
}

/* What the arena maps for n bytes: granules of the larger of the device and
 * host granularities (simdev: 2 and 4 MiB), since a tagged VA may be backed
 * by either in turn. */
static size_t mapped(size_t n) { return (n + 4 * MiB - 1) / (4 * MiB) * (4 * MiB); }

/* Device memory after partition: drops by the survivors' mapped bytes less
 * this rank's slices (peer: about 1/P, within one granule) or all of them
 * (peer+host). */
static void memory(void) {
  warm_up();
  const size_t sizes[] = {6 * MiB + 12345, 4 * MiB, 2 * MiB - 3, 10 * MiB + 1, 777};
  enum { N = sizeof sizes / sizeof sizes[0] };
  struct tensor t[N];
  size_t req = 0, map = 0;
  int id = ck.region_begin("mem");
  for (int i = 0; i < N; i++) {
    alloc(&t[i], sizes[i], 100 + (uint64_t)i);
    req += sizes[i];
    map += mapped(sizes[i]);
  }
  ck.region_end();
  CU(cuStreamSynchronize(compute));
  size_t before = simdev_device_used(0);
  CHECK(ck.offload(id) == 0);
  CHECK(ck.wait(id) == 0);
  size_t after = simdev_device_used(0), drop = before - after;
  for (int i = 0; i < N; i++) CHECK(residency(t[i].p) == CKPT_PEER);
  struct ckpt_stats s = ck_stats();
  printf("rank %d of %d (%s): survivors %zu bytes (%zu mapped), device %zu -> %zu, drop %zu, slices %llu\n", R, P,
         ck.mode(), req, map, before, after, drop, (unsigned long long)s.peer_bytes_in_use);
  CHECK(after < before);
  if (!strcmp(ck.mode(), "peer+host")) {
    CHECK(drop == map, "peer+host: device drop %zu, survivors' mapped bytes %zu", drop, map);
  } else {
    size_t gran = 2 * MiB, want = req / (size_t)P * (size_t)(P - 1);
    CHECK(drop + gran >= want, "peer: device drop %zu, (P-1)/P of the survivors %zu", drop, want);
    CHECK(drop >= map - mapped(s.peer_bytes_in_use), "peer: drop %zu, mapped %zu, slices %llu", drop, map,
          (unsigned long long)s.peer_bytes_in_use);
    CHECK(s.peer_bytes_in_use <= req / (size_t)P + (size_t)N * (size_t)P * 512);
  }
  CHECK(ck.restore(id) == 0);
  for (int i = 0; i < N; i++) check_free(&t[i]);
  CU(cuStreamSynchronize(compute));
  CHECK(ck_stats().peer_bytes_in_use == 0);
}

/* The id never comes (rank 1 alone) or the peers never join (rank 0 alone):
 * a clear error within the bound, then host offload, data intact. */
static void timeout(void) {
  struct tensor t;
  int id = ck.region_begin("t");
  alloc(&t, 5 * MiB + 3, 11);
  ck.region_end();
  CHECK(ck.offload(id) == 0);
  CHECK(ck.wait(id) == 0);
  CHECK(residency(t.p) == CKPT_HOST, "residency %d", residency(t.p));
  CHECK(ck.restore(id) == 0);
  check_free(&t);
}

/* The ranks offload in different orders (rank 0: a then b; others: b then
 * a): each exchange disagrees, every rank rolls back, data stays on the
 * device; a matching offload afterwards works. */
static void mismatch(void) {
  warm_up();
  struct tensor a, b;
  int ia = ck.region_begin("a");
  alloc(&a, 4 * MiB + 1, 21);
  ck.region_end();
  int ib = ck.region_begin("b");
  alloc(&b, 3 * MiB, 22);
  ck.region_end();
  int order[2] = {ia, ib};
  if (R != 0) order[0] = ib, order[1] = ia;
  for (int i = 0; i < 2; i++) {
    CHECK(ck.offload(order[i]) == 0);
    CHECK(ck.wait(order[i]) == 0);
  }
  CHECK(residency(a.p) == CKPT_DEVICE && residency(b.p) == CKPT_DEVICE, "residency %d %d", residency(a.p),
        residency(b.p));
  CHECK(ck_stats().peer_mismatches == 2, "mismatches %llu", (unsigned long long)ck_stats().peer_mismatches);
  check_free(&a);
  check_free(&b);
  warm_up(); /* the group still works */
  CHECK(ck_stats().peer_lost == 0);
}

/* The ranks agree on the offloads but restore in different orders: the
 * descriptors say so on every rank (both sides' values), the group ends
 * within the bound, the allocations are reported lost, nobody hangs. */
static void mismatch_restore(void) {
  warm_up();
  struct tensor a, b;
  int ia = ck.region_begin("a");
  alloc(&a, 4 * MiB + 1, 21);
  ck.region_end();
  int ib = ck.region_begin("b");
  alloc(&b, 3 * MiB, 22);
  ck.region_end();
  CHECK(ck.offload(ia) == 0 && ck.offload(ib) == 0);
  CHECK(ck.wait(ia) == 0 && ck.wait(ib) == 0);
  CHECK(residency(a.p) == CKPT_PEER && residency(b.p) == CKPT_PEER);
  int order[2] = {ia, ib};
  if (R != 0) order[0] = ib, order[1] = ia;
  for (int i = 0; i < 2; i++) {
    CHECK(ck.prefetch(order[i]) == 0);
    CHECK(ck.wait(order[i]) == 0);
  }
  struct ckpt_stats s = ck_stats();
  CHECK(s.peer_mismatches >= 1 && s.peer_lost == 2, "mismatches %llu lost %llu",
        (unsigned long long)s.peer_mismatches, (unsigned long long)s.peer_lost);
  CU(cuMemFreeAsync(a.p, compute));
  CU(cuMemFreeAsync(b.p, compute));
}

/* Rank 1 has no device memory for its slices: its job starts nothing, yet
 * it still exchanges its (empty) descriptor, so every rank rolls back at
 * once instead of waiting for the timeout. */
static void oom_offload(void) {
  warm_up();
  struct tensor a;
  int id = ck.region_begin("oom");
  alloc(&a, 8 * MiB + 1, 91);
  ck.region_end();
  CU(cuStreamSynchronize(compute));
  if (R == 1) simdev_set_device_capacity(0, simdev_device_used(0));
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  CHECK(ck.offload(id) == 0 || R == 1);
  CHECK(ck.wait(id) == 0);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
  CHECK(residency(a.p) == CKPT_DEVICE, "rank %d: residency %d", R, residency(a.p));
  CHECK(ck_stats().peer_mismatches == 1, "rank %d: mismatches %llu", R, (unsigned long long)ck_stats().peer_mismatches);
  CHECK(ms < 2000, "rank %d: the rollback took %.0f ms (the timeout, not the exchange)", R, ms);
  if (R == 1) simdev_set_device_capacity(0, (size_t)-1);
  check_free(&a);
  warm_up(); /* the group still works */
}

/* Rank 1 has no device memory to restore into: it still exchanges its
 * (empty) descriptor, so the ranks see the disagreement at once; a restore
 * they disagree on ends the group, and the allocation is reported lost on
 * every rank (within the bound, no hang). */
static void oom_restore(void) {
  warm_up();
  struct tensor a;
  int id = ck.region_begin("oomr");
  alloc(&a, 6 * MiB + 1, 92);
  ck.region_end();
  CHECK(ck.offload(id) == 0);
  CHECK(ck.wait(id) == 0);
  CHECK(residency(a.p) == CKPT_PEER);
  if (R == 1) simdev_set_device_capacity(0, simdev_device_used(0));
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  ck.prefetch(id);
  CHECK(ck.wait(id) == 0);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  if (R == 1) simdev_set_device_capacity(0, (size_t)-1);
  ck.prefetch(id); /* the second try names it on the rank whose first never started */
  CHECK(ck.wait(id) == 0);
  double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
  struct ckpt_stats s = ck_stats();
  CHECK(s.peer_lost == 1 && s.peer_mismatches >= 1, "rank %d: lost %llu mismatches %llu", R,
        (unsigned long long)s.peer_lost, (unsigned long long)s.peer_mismatches);
  CHECK(ms < 2000, "rank %d: the failure took %.0f ms (the timeout, not the exchange)", R, ms);
  CHECK(residency(a.p) == CKPT_PEER);
  CU(cuMemFreeAsync(a.p, compute));
}

/* A rank dies in an all-gather of a restore (SIMNCCL_FAIL): the others fail
 * within the bound, name the lost allocations, and go on in host mode. */
static void dead(void) {
  warm_up(); /* all-gathers 1 (offload), 2 and 3 (restore) */
  struct tensor t[2];
  int id = ck.region_begin("doomed");
  alloc(&t[0], 4 * MiB + 5, 31);
  alloc(&t[1], 2 * MiB, 32);
  ck.region_end();
  CHECK(ck.offload(id) == 0); /* all-gather 4 */
  CHECK(ck.wait(id) == 0);
  CHECK(ck.restore(id) == 0); /* 5: descriptor, 6: data, where rank P-1 dies */
  CHECK(ck.wait(id) == 0);
  struct ckpt_stats s = ck_stats();
  CHECK(s.peer_lost == 2, "lost %llu", (unsigned long long)s.peer_lost);
  CHECK(!strcmp(ck.mode(), "host"), "mode after the failure: %s", ck.mode());
  for (int i = 0; i < 2; i++) CHECK(residency(t[i].p) == CKPT_PEER); /* not touched: it would fault */
  for (int i = 0; i < 2; i++) CU(cuMemFreeAsync(t[i].p, compute));
  /* Offloads go on, to the host. */
  struct tensor u;
  int iu = ck.region_begin("after");
  alloc(&u, 3 * MiB + 9, 33);
  ck.region_end();
  CHECK(ck.offload(iu) == 0);
  CHECK(ck.wait(iu) == 0);
  CHECK(residency(u.p) == CKPT_HOST, "residency %d", residency(u.p));
  CHECK(ck.restore(iu) == 0);
  check_free(&u);
}

/* CKPT_CONTIGUOUS with CKPT_NUMBER_CHECKPOINTS=4: after the first step, no
 * step creates backing memory. */
static void contiguous(void) {
  struct tensor t[4][2];
  uint64_t allocs_after_warmup = 0;
  for (int step = 0; step < 4; step++) {
    int ids[4];
    for (int r = 0; r < 4; r++) {
      ids[r] = ck.region_begin("blk");
      alloc(&t[r][0], 3 * MiB + 100, (uint64_t)(step * 10 + r));
      alloc(&t[r][1], 1 * MiB + 7, (uint64_t)(step * 10 + r + 100));
      ck.region_end();
      CHECK(ck.offload(ids[r]) == 0);
    }
    for (int r = 3; r >= 0; r--) {
      CHECK(ck.restore(ids[r]) == 0);
      check_free(&t[r][0]);
      check_free(&t[r][1]);
    }
    for (int r = 0; r < 4; r++) CHECK(ck.wait(ids[r]) == 0); /* the last swaps are done: the step is over */
    CHECK(ck.step() == 0);
    CU(cuStreamSynchronize(compute));
    struct ckpt_stats s = ck_stats();
    printf("rank %d step %d: host pool %llu, store allocations %llu, contiguous %llu bytes, avoided %llu\n", R, step,
           (unsigned long long)s.host_pool_bytes,
           (unsigned long long)s.store_allocs, (unsigned long long)s.contiguous_bytes,
           (unsigned long long)s.allocs_avoided);
    if (step == 0) allocs_after_warmup = s.store_allocs;
    else CHECK(s.store_allocs == allocs_after_warmup, "step %d made %llu store allocations", step,
               (unsigned long long)(s.store_allocs - allocs_after_warmup));
  }
  struct ckpt_stats s = ck_stats();
  CHECK(s.store_allocs >= 1);
  if (peer_mode()) CHECK(s.contiguous_bytes > 0 && s.allocs_avoided >= 3 * 4 * 2);
}

/* CKPT_VERIFY: rank 1's contribution to the second data all-gather of a
 * restore is corrupted in flight (SIMNCCL_FAIL): every rank's check names
 * that allocation; the other one verifies. */
static void verify(void) {
  struct tensor t[2];
  int id = ck.region_begin("v");
  alloc(&t[0], 4 * MiB + 3, 41);
  alloc(&t[1], 2 * MiB + 100, 42);
  ck.region_end();
  CHECK(ck.offload(id) == 0); /* all-gather 1 */
  CHECK(ck.restore(id) == 0); /* 2: descriptor, 3 and 4: data (4 corrupted) */
  CHECK(ck.wait(id) == 0);
  struct ckpt_stats s = ck_stats();
  CHECK(s.verify_failures == 1 && s.verify_checked == 1, "failures %llu checked %llu",
        (unsigned long long)s.verify_failures, (unsigned long long)s.verify_checked);
  /* Exactly one allocation came back wrong, and the log names it. */
  CU(cuStreamSynchronize(compute));
  int bad = -1;
  for (int i = 0; i < 2; i++)
    if (pattern_check((void *)t[i].p, t[i].n, t[i].seed)) {
      CHECK(bad < 0, "both allocations differ");
      bad = i;
    }
  CHECK(bad >= 0, "the corruption did not happen");
  char want[64], buf[1 << 14];
  snprintf(want, sizeof want, "tagged allocation %#llx", (unsigned long long)t[bad].p);
  FILE *f = fopen(getenv("CKPT_DEBUG_FILE"), "r");
  CHECK(f != NULL);
  buf[fread(buf, 1, sizeof buf - 1, f)] = 0;
  fclose(f);
  CHECK(strstr(buf, want) && strstr(buf, "CKPT_VERIFY: region"), "rank %d: the log does not name %s", R, want);
  printf("rank %d: corrupted allocation %#llx named\n", R, (unsigned long long)t[bad].p);
  for (int i = 0; i < 2; i++) CU(cuMemFreeAsync(t[i].p, compute));
}

/* CKPT_VERIFY in host mode: a stray write into an offloaded (host-backed)
 * allocation is caught at its restore; a clean one verifies. */
static void verify_host(void) {
  struct tensor t[2];
  int id = ck.region_begin("vh");
  alloc(&t[0], 4 * MiB + 3, 51);
  alloc(&t[1], 2 * MiB + 100, 52);
  ck.region_end();
  CHECK(ck.offload(id) == 0);
  CHECK(ck.wait(id) == 0);
  CHECK(residency(t[1].p) == CKPT_HOST);
  CU(cuMemsetD8Async(t[1].p + 5, 0xee, 1, compute));
  CU(cuStreamSynchronize(compute));
  CHECK(ck.restore(id) == 0);
  CHECK(ck.wait(id) == 0);
  struct ckpt_stats s = ck_stats();
  CHECK(s.verify_failures == 1 && s.verify_checked == 1, "failures %llu checked %llu",
        (unsigned long long)s.verify_failures, (unsigned long long)s.verify_checked);
  check_free(&t[0]);
  CU(cuMemFreeAsync(t[1].p, compute));
}

/* ckpt_pin: a pinned allocation is never offloaded. */
static void pinned(void) {
  warm_up();
  struct tensor a, b;
  int id = ck.region_begin("p");
  alloc(&a, 4 * MiB, 61);
  alloc(&b, 4 * MiB, 62);
  ck.region_end();
  CHECK(pin(a.p + 10) == 0);
  CHECK(ck.offload(id) == 0);
  CHECK(ck.wait(id) == 0);
  CHECK(residency(a.p) == CKPT_DEVICE && residency(b.p) != CKPT_DEVICE);
  CHECK(ck.restore(id) == 0);
  check_free(&a);
  check_free(&b);
}

/* The group from the C API, as a framework binding makes it: rank 0 asks for
 * the id, hands it over by its own means (here a file of the test's), every
 * rank joins; CKPT_PEER_* unset. */
struct no_ctx_call {
  int (*init)(const char *, size_t, int, int);
  const char *id;
  int rc;
};
static void *init_without_context(void *arg) {
  struct no_ctx_call *c = arg;
  c->rc = c->init(c->id, 128, P, R);
  return NULL;
}

static void api_bootstrap(void) {
  int (*uid)(char *, size_t);
  int (*init)(const char *, size_t, int, int);
  *(void **)&uid = dlsym(RTLD_DEFAULT, "ckpt_peer_unique_id");
  *(void **)&init = dlsym(RTLD_DEFAULT, "ckpt_peer_init");
  CHECK(uid && init);
  char id[128], path[300], tmp[320];
  snprintf(path, sizeof path, "%s", getenv("PEER_TEST_ID"));
  if (R == 0) {
    CHECK(uid(id, 16) == CKPT_EINVAL);
    CHECK(uid(id, sizeof id) == 0);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    CHECK(f && fwrite(id, 1, sizeof id, f) == sizeof id && fclose(f) == 0 && rename(tmp, path) == 0);
  } else {
    FILE *f = NULL;
    for (int i = 0; i < 1000 && !f; i++)
      if (!(f = fopen(path, "r"))) usleep(10000);
    CHECK(f && fread(id, 1, sizeof id, f) == sizeof id);
    fclose(f);
  }
  CHECK(init(id, sizeof id, P, P) == CKPT_EINVAL);
  /* From a thread without a current context: refused, and may be retried. */
  struct no_ctx_call c = {init, id, -99};
  pthread_t th;
  CHECK(pthread_create(&th, NULL, init_without_context, &c) == 0 && pthread_join(th, NULL) == 0);
  CHECK(c.rc == CKPT_ESTATE, "without a context: %d", c.rc);
  CHECK(init(id, sizeof id, P, R) == 0);
  CHECK(init(id, sizeof id, P, R) == CKPT_ESTATE); /* once */
  struct tensor t;
  int rid = ck.region_begin("api");
  alloc(&t, 5 * MiB + 1, 71);
  ck.region_end();
  CHECK(ck.offload(rid) == 0);
  CHECK(ck.wait(rid) == 0);
  CHECK(residency(t.p) == CKPT_PEER, "residency %d", residency(t.p));
  CHECK(ck.restore(rid) == 0);
  check_free(&t);
}

/* The restore does not block the host: rank 0 restores at once while the
 * others wait 600 ms before theirs, so its all-gather cannot complete
 * before then; rank 0's ckpt_restore returns before that, and its consumer
 * (queued on the stream right after) still reads correct bytes. */
static void async_restore(void) {
  warm_up();
  struct tensor t[2];
  int id = ck.region_begin("async");
  alloc(&t[0], 6 * MiB + 1, 81);
  alloc(&t[1], 2 * MiB, 82);
  ck.region_end();
  CHECK(ck.offload(id) == 0);
  CHECK(ck.wait(id) == 0);
  CHECK(residency(t[0].p) == CKPT_PEER);
  if (R != 0) usleep(600000);
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  CHECK(ck.restore(id) == 0);
  for (int i = 0; i < 2; i++) check_free(&t[i]);
  clock_gettime(CLOCK_MONOTONIC, &b);
  double ms = (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6;
  printf("rank %d: ckpt_restore + consumer enqueue took %.1f ms\n", R, ms);
  if (R == 0) CHECK(ms < 300, "rank 0's restore blocked the host for %.1f ms", ms);
  CU(cuStreamSynchronize(compute));
}

/* A failed map at a peer restore's swap. The offloaded VA is unmapped in
 * peer mode, so there is no other copy to map back: cuMemMap / cuMemSetAccess
 * failing on the swap (the restore's second map and access, after its
 * staging mapping's) is retried (NOT_READY) or strands the VA, said loudly,
 * and libckpt maps it again later; meanwhile the consumer queued right after
 * ckpt_restore stays held at the gate. It never reads an unmapped VA
 * (simdev_faulted) and reads exact bytes. */
static void remap_fault(void) {
  warm_up();
  static const struct {
    const char *call;
    unsigned first, count;
    int code;
  } cases[] = {
      {"cuMemMap", 2, 1, CUDA_ERROR_UNKNOWN},       {"cuMemMap", 2, 5, CUDA_ERROR_UNKNOWN},
      {"cuMemMap", 2, 3, CUDA_ERROR_NOT_READY},     {"cuMemSetAccess", 2, 1, CUDA_ERROR_UNKNOWN},
      {"cuMemSetAccess", 2, 5, CUDA_ERROR_UNKNOWN}, {"cuMemSetAccess", 2, 3, CUDA_ERROR_NOT_READY},
  };
  enum { NCASE = sizeof cases / sizeof cases[0] };
  struct tensor t;
  int id = ck.region_begin("fault");
  alloc(&t, 6 * MiB + 1, 91);
  ck.region_end();
  uint64_t errors0 = ck_stats().driver_errors;
  for (int i = 0; i < NCASE; i++) {
    CHECK(ck.offload(id) == 0);
    CHECK(ck.wait(id) == 0);
    CHECK(residency(t.p) == CKPT_PEER, "case %d: residency %d before the restore", i, residency(t.p));
    for (unsigned k = 0; k < cases[i].count; k++)
      CHECK(simdev_fail(cases[i].call, cases[i].first + k, cases[i].code) == 0);
    CHECK(ck.restore(id) == 0);
    launch(check_kernel, &t); /* held at the restore's gate until t's VA maps */
    CHECK(ck.wait(id) == 0);
    CU(cuStreamSynchronize(compute));
    simdev_fail_clear();
    CHECK(!simdev_faulted(), "case %d (%s x%u code %d): a held stream touched an unmapped VA", i, cases[i].call,
          cases[i].count, cases[i].code);
    CHECK(residency(t.p) == CKPT_DEVICE, "case %d: residency %d after the restore", i, residency(t.p));
    CHECK(kernel_errors == 0, "case %d: the consumer read wrong bytes", i);
  }
  struct ckpt_stats s = ck_stats();
  CHECK(s.driver_errors > errors0, "the failed maps were reported");
  CHECK(s.peer_mismatches == 0 && s.peer_lost == 0);
  printf("rank %d: %d restore map faults, driver errors %llu, data exact\n", R, NCASE,
         (unsigned long long)(s.driver_errors - errors0));
  check_free(&t);
}

/* Regions that grow step after step: every step needs slice room the
 * earlier ones did not make. Device slabs (peer) are made at the job's
 * start; host slabs (peer+host) are blocks of the host pool, made on its
 * grower thread while the puts into them are pending (completed by the
 * engine's resume before the swap). Every byte checked. */
static void grow(void) {
  warm_up();
  uint64_t allocs0 = ck_stats().store_allocs;
  for (int step = 0; step < 4; step++) {
    struct tensor t[3];
    int id = ck.region_begin("grow");
    for (int i = 0; i < 3; i++) alloc(&t[i], (size_t)(step + 1) * 3 * MiB + (size_t)i * 4097 + 5, 200 + step * 3 + i);
    ck.region_end();
    CHECK(ck.offload(id) == 0);
    CHECK(ck.wait(id) == 0);
    for (int i = 0; i < 3; i++) CHECK(residency(t[i].p) == CKPT_PEER, "step %d: residency %d", step, residency(t[i].p));
    CHECK(ck.restore(id) == 0);
    for (int i = 0; i < 3; i++) check_free(&t[i]);
    CHECK(ck.wait(id) == 0);
    CHECK(ck.step() == 0);
    CU(cuStreamSynchronize(compute));
  }
  struct ckpt_stats s = ck_stats();
  printf("rank %d (%s): store allocations %llu after warm-up, slabs %llu bytes, host pool %llu bytes\n", R,
         ck.mode(), (unsigned long long)(s.store_allocs - allocs0), (unsigned long long)s.peer_slab_bytes,
         (unsigned long long)s.host_pool_bytes);
  CHECK(s.store_allocs > allocs0, "growing regions made new slice buffers");
  if (!strcmp(ck.mode(), "peer+host"))
    CHECK(s.peer_slab_bytes > 0 && s.host_pool_bytes >= s.peer_slab_bytes, "host slabs %llu bytes, pool %llu",
          (unsigned long long)s.peer_slab_bytes, (unsigned long long)s.host_pool_bytes);
  else
    CHECK(s.host_pool_bytes == 0, "the host pool took %llu bytes", (unsigned long long)s.host_pool_bytes);
  CHECK(s.peer_bytes_in_use == 0 && s.peer_mismatches == 0 && s.peer_lost == 0);
}

/* peer+host: the host pool's grower fails to make a new slice slab (the
 * next cuMemCreate after the survivors exist, on every rank). Usually the
 * puts into it are pending and given up at the resume: the survivors stay on
 * the device on every rank, the ranks agree. If a rank's grower fails before
 * its first put, that put fails at once and the next survivor gets a new
 * slab: then the ranks may disagree on the job (rolled back on every rank,
 * a mismatch) or agree on the one survivor. Either way t[0] stays on the
 * device, nothing is lost, the bytes are exact; the next step offloads. */
static void grow_fail(void) {
  warm_up();
  for (int step = 0; step < 2; step++) {
    struct tensor t[2];
    int id = ck.region_begin("growfail");
    alloc(&t[0], 24 * MiB + 3, 300 + (uint64_t)step);
    alloc(&t[1], 8 * MiB, 310 + (uint64_t)step);
    ck.region_end();
    CU(cuStreamSynchronize(compute));
    if (step == 0) CHECK(simdev_fail("cuMemCreate", 1, CUDA_ERROR_OUT_OF_MEMORY) == 0);
    CHECK(ck.offload(id) == 0);
    CHECK(ck.wait(id) == 0);
    simdev_fail_clear();
    int want = step == 0 ? CKPT_DEVICE : CKPT_PEER;
    for (int i = 0; i < 2; i++)
      CHECK(residency(t[i].p) == want || (step == 0 && i == 1 && residency(t[i].p) == CKPT_PEER),
            "step %d: residency %d, expected %d", step, residency(t[i].p), want);
    CHECK(ck.restore(id) == 0);
    for (int i = 0; i < 2; i++) check_free(&t[i]);
    CHECK(ck.wait(id) == 0);
    CHECK(ck.step() == 0);
    CU(cuStreamSynchronize(compute));
  }
  struct ckpt_stats s = ck_stats();
  printf("rank %d: pool-full %llu, mismatches %llu\n", R, (unsigned long long)s.host_pool_exhausted,
         (unsigned long long)s.peer_mismatches);
  CHECK(s.host_pool_exhausted > 0, "the failed slab was counted");
  CHECK(s.peer_mismatches <= 1 && s.peer_lost == 0 && s.peer_bytes_in_use == 0);
}

static int run_rank(const char *scenario, uint64_t seed) {
  if (!strcmp(scenario, "api") || !strcmp(scenario, "unconfigured")) { /* before libckpt reads its parameters */
    unsetenv("CKPT_PEER_SIZE");
    unsetenv("CKPT_PEER_RANK");
    unsetenv("CKPT_PEER_ID_FILE");
  }
  ck_load();
  *(void **)&pin = dlsym(RTLD_DEFAULT, "ckpt_pin");
  CHECK(pin != NULL);
  ctx_setup();
  CU(cuStreamCreate(&compute, CU_STREAM_NON_BLOCKING));
  if (!strcmp(scenario, "roundtrip")) roundtrip(seed);
  else if (!strcmp(scenario, "memory")) memory();
  else if (!strcmp(scenario, "timeout_rank0") || !strcmp(scenario, "timeout_rank1") ||
           !strcmp(scenario, "unconfigured"))
    timeout(); /* host offload instead, data intact */
  else if (!strcmp(scenario, "mismatch")) mismatch();
  else if (!strcmp(scenario, "dead")) dead();
  else if (!strcmp(scenario, "oom_offload")) oom_offload();
  else if (!strcmp(scenario, "oom_restore")) oom_restore();
  else if (!strcmp(scenario, "mismatch_restore")) mismatch_restore();
  else if (!strcmp(scenario, "contiguous")) contiguous();
  else if (!strcmp(scenario, "verify")) verify();
  else if (!strcmp(scenario, "verify_host")) verify_host();
  else if (!strcmp(scenario, "pin")) pinned();
  else if (!strcmp(scenario, "api")) api_bootstrap();
  else if (!strcmp(scenario, "async")) async_restore();
  else if (!strcmp(scenario, "remap_fault")) remap_fault();
  else if (!strcmp(scenario, "grow")) grow();
  else if (!strcmp(scenario, "grow_fail")) grow_fail();
  else CHECK(0, "unknown scenario %s", scenario);
  CU(cuStreamSynchronize(compute));
  CU(cuCtxSynchronize());
  CHECK(!simdev_faulted(), "rank %d: a stream touched unmapped memory", R);
  CHECK(kernel_errors == 0, "rank %d: %ld checks failed", R, (long)kernel_errors);
  printf("rank %d: %s ok\n", R, scenario);
  return 0;
}

/* ---- the launcher ---------------------------------------------------------- */

static char dir[] = "/tmp/ckpt-peer-XXXXXX";

static bool log_has(int rank, const char *needle) {
  char path[256], buf[1 << 16];
  snprintf(path, sizeof path, "%s/rank%d.log", dir, rank);
  FILE *f = fopen(path, "r");
  if (!f) return false;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  return strstr(buf, needle) != NULL;
}

static void dump_logs(int nranks) {
  for (int r = 0; r < nranks; r++) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "echo '--- rank %d log'; cat %s/rank%d.log 2>/dev/null", r, dir, r);
    (void)!system(cmd);
  }
}

/* Starts ranks [lo, hi) of a group of p; returns their exit statuses (-1:
 * killed past the limit). */
static void start_ranks(const char *scenario, int p, int lo, int hi, const char *seed, int *status, double limit) {
  pid_t pids[16];
  char idfile[256];
  snprintf(idfile, sizeof idfile, "%s/id", dir);
  for (int r = lo; r < hi; r++) {
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
      char v[32], logp[256];
      snprintf(v, sizeof v, "%d", p);
      setenv("CKPT_PEER_SIZE", v, 1);
      snprintf(v, sizeof v, "%d", r);
      setenv("CKPT_PEER_RANK", v, 1);
      setenv("CKPT_PEER_ID_FILE", idfile, 1);
      char apiid[300];
      snprintf(apiid, sizeof apiid, "%s/apiid", dir);
      setenv("PEER_TEST_ID", apiid, 1);
      snprintf(logp, sizeof logp, "%s/rank%d.log", dir, r);
      setenv("CKPT_DEBUG_FILE", logp, 1);
      char ps[16], rs[16];
      snprintf(ps, sizeof ps, "%d", p);
      snprintf(rs, sizeof rs, "%d", r);
      execl("/proc/self/exe", "peer_test", "--rank", scenario, ps, rs, seed, (char *)NULL);
      _exit(127);
    }
    pids[r] = pid;
    status[r] = -2;
  }
  double t0 = time(NULL);
  for (int left = hi - lo; left > 0;) {
    for (int r = lo; r < hi; r++) {
      int st;
      if (status[r] != -2 || waitpid(pids[r], &st, WNOHANG) != pids[r]) continue;
      status[r] = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      left--;
    }
    if (left && time(NULL) - t0 > limit) {
      for (int r = lo; r < hi; r++)
        if (status[r] == -2) {
          kill(pids[r], SIGKILL);
          waitpid(pids[r], NULL, 0);
          status[r] = -1;
          fprintf(stderr, "rank %d of %s did not finish within %.0f s: killed (a hang)\n", r, scenario, limit);
        }
      break;
    }
    usleep(20000);
  }
}

static int launch_scenario(const char *scenario, int p, const char *seed) {
  CHECK(mkdtemp(dir) != NULL);
  int status[16] = {0};
  bool ok = true;
  double t0 = time(NULL);
  if (!strcmp(scenario, "timeout")) {
    start_ranks("timeout_rank1", p, 1, 2, seed, status, 30); /* no rank 0: no id */
    ok = status[1] == 0 && log_has(1, "no NCCL id from rank 0");
    /* No peers, and a simulated NCCL that waits for ever as real NCCL does:
     * libckpt's own bound ends the init. */
    setenv("SIMNCCL_TIMEOUT_MS", "0", 1);
    start_ranks("timeout_rank0", p, 0, 1, seed, status, 30);
    ok = ok && status[0] == 0 && log_has(0, "ncclCommInitRank did not complete within CKPT_PEER_TIMEOUT_MS");
  } else {
    start_ranks(scenario, p, 0, p, seed, status, 90);
    for (int r = 0; r < p; r++) {
      int want = !strcmp(scenario, "dead") && r == p - 1 ? 86 : 0; /* SIMNCCL_EXIT_STATUS */
      if (status[r] != want) {
        fprintf(stderr, "rank %d exited with %d, expected %d\n", r, status[r], want);
        ok = false;
      }
    }
    for (int r = 0; r < p && ok; r++) {
      if (!strcmp(scenario, "mismatch")) ok = log_has(r, "peer ranks disagree: rank") && log_has(r, "region");
      if (!strcmp(scenario, "mismatch_restore"))
        ok = log_has(r, "peer ranks disagree: rank") && log_has(r, "restore of region") &&
             log_has(r, "peer group failed") && log_has(r, "is LOST") &&
             log_has(r, " peer-lost=2 verify-failures=0") && log_has(r, "driver-errors=") && !log_has(r, "peer-mismatches=0");
      if (!strcmp(scenario, "dead") && r < p - 1) ok = log_has(r, "peer group failed") && log_has(r, "is LOST");
      if (!strcmp(scenario, "verify"))
        ok = log_has(r, "CKPT_VERIFY: region") && log_has(r, "'v'") &&
             log_has(r, " peer-mismatches=0 peer-lost=0 verify-failures=1"); /* the exit summary, fields at its end */
      if (!strcmp(scenario, "oom_restore")) ok = log_has(r, "peer ranks disagree") && log_has(r, "is LOST");
      if (!strcmp(scenario, "unconfigured")) ok = log_has(r, "needs a peer group");
      if (!strcmp(scenario, "verify_host")) ok = log_has(r, "CKPT_VERIFY: region") && log_has(r, "'vh'");
      if (!ok) fprintf(stderr, "rank %d's log lacks the expected report\n", r);
    }
  }
  printf("%s P=%d: %s in %.0f s\n", scenario, p, ok ? "ok" : "FAILED", time(NULL) - t0);
  if (!ok || getenv("PEER_TEST_LOGS")) dump_logs(p);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  (void)!system(cmd);
  return ok ? 0 : 1;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc >= 6 && !strcmp(argv[1], "--rank")) {
    P = atoi(argv[3]);
    R = atoi(argv[4]);
    return run_rank(argv[2], strtoull(argv[5], NULL, 0));
  }
  CHECK(argc >= 3, "usage: peer_test SCENARIO P [SEED]");
  char seed[32];
  snprintf(seed, sizeof seed, "%llu",
           argc > 3 ? strtoull(argv[3], NULL, 0) : (unsigned long long)time(NULL) * 2654435761ull % 1000003 + 1);
  printf("seed %s\n", seed);
  return launch_scenario(argv[1], atoi(argv[2]), seed);
}
