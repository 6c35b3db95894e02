/* CKPT_BUDGET (issue 14 item 3) under LD_PRELOAD on the simulated device.
 * `budget MODE`, an L-layer forward and backward, one region per layer, a
 * 4 MiB survivor each, compute as stream work that sleeps, bit-exact checks:
 *   bytes      CKPT_BUDGET=12M: after every close (offloads awaited) the
 *              survivors on the device hold at most 12 MiB, and 12 MiB of
 *              them stay there (the budget keeps, not only offloads)
 *   hide       CKPT_BUDGET=auto, copies ~1/7 of the compute: once measured,
 *              every region keep-last does not cover is offloaded
 *   link       CKPT_BUDGET=auto, copies ~3x the compute: some regions are
 *              offloaded, some kept on the device, and the stats say why
 * The decisions of auto follow from the measured ratios (7x and 3x on either
 * side of what hides), not from how fast this machine is. */
#include <stdbool.h>
#include <unistd.h>

#include "harness.h"

enum { L = 8, STEPS = 3 };
#define ACT (4 * MiB)

static CUstream compute;
static _Atomic long errors;

struct act {
  CUdeviceptr p;
  uint64_t seed;
};

static void CUDA_CB fill_fn(void *arg) {
  struct act *a = arg;
  pattern_fill((void *)a->p, ACT, a->seed);
}
static void CUDA_CB check_fn(void *arg) {
  struct act *a = arg;
  size_t bad = pattern_check((void *)a->p, ACT, a->seed);
  if (bad) {
    fprintf(stderr, "check: %#llx differs at byte %zu (residency %d)\n", (unsigned long long)a->p, bad - 1,
            residency(a->p));
    errors++;
  }
}
static void CUDA_CB sleep_fn(void *arg) { usleep((unsigned)(uintptr_t)arg); }

static size_t on_device(struct act *a, int n) {
  size_t b = 0;
  for (int i = 0; i < n; i++) b += residency(a[i].p) == CKPT_DEVICE ? ACT : 0;
  return b;
}

/* One step; returns how many survivors were on the host (or going there)
 * when the forward ended. `after_close` runs after each close. */
static int step(int s, unsigned compute_us, void (*after_close)(struct act *, int *, int)) {
  static struct act a[L];
  int id[L];
  for (int r = 0; r < L; r++) {
    id[r] = ck.region_begin("layer");
    CHECK(id[r] > 0);
    CU(cuLaunchHostFunc(compute, sleep_fn, (void *)(uintptr_t)compute_us));
    a[r].seed = (uint64_t)(s * L + r + 1);
    CU(cuMemAllocAsync(&a[r].p, ACT, compute));
    CU(cuLaunchHostFunc(compute, fill_fn, &a[r]));
    CHECK(ck.region_end() == id[r]);
    if (after_close) after_close(a, id, r + 1);
  }
  /* The offloads complete before backward, so that each is measured (a
   * restore would cancel one still waiting for host room). */
  for (int r = 0; r < L; r++) CHECK(ck.wait(id[r]) == 0);
  int moved = 0;
  for (int r = 0; r < L; r++) {
    int res = residency(a[r].p);
    moved += res == CKPT_HOST;
  }
  for (int r = L - 1; r >= 0; r--) {
    CHECK(ck.restore(id[r]) == 0);
    CU(cuLaunchHostFunc(compute, check_fn, &a[r]));
    CU(cuLaunchHostFunc(compute, sleep_fn, (void *)(uintptr_t)compute_us));
    CU(cuMemFreeAsync(a[r].p, compute));
  }
  CU(cuStreamSynchronize(compute));
  CHECK(errors == 0, "%ld checks failed", (long)errors);
  CHECK(ck.step() == 0);
  return moved;
}

static void bytes_hold(struct act *a, int *id, int n) {
  for (int r = 0; r < n; r++) CHECK(ck.wait(id[r]) == 0);
  size_t dev = on_device(a, n);
  CHECK(dev <= 12 * MiB, "%d regions closed: %zu MiB of survivors on the device, budget 12 MiB", n, dev / MiB);
  size_t want = (size_t)n * ACT < 12 * MiB ? (size_t)n * ACT : 12 * MiB;
  CHECK(dev == want, "%d regions closed: %zu MiB on the device, %zu MiB fit the budget", n, dev / MiB, want / MiB);
  struct ckpt_stats st = ck_stats();
  CHECK(st.budget_survivor_bytes <= 12 * MiB);
}

static void bytes(void) {
  for (int s = 0; s < STEPS; s++) {
    int moved = step(s, 1000, bytes_hold);
    CHECK(moved == L - 3, "step %d: %d offloaded, %d expected", s, moved, L - 3);
  }
  struct ckpt_stats st = ck_stats();
  CHECK(st.budget_mode == CKPT_BUDGET_BYTES && st.budget_bytes == 12 * MiB);
  CHECK(st.budget_why == CKPT_BUDGET_WHY_OVER, "why %llu", (unsigned long long)st.budget_why);
  printf("budget bytes: 12 MiB held, %llu MiB offloaded\n", (unsigned long long)(st.offloaded_bytes_total / MiB));
}

static void automatic(bool hide) {
  /* Copies of 4 MiB: 4.2 ms at 1 GB/s, 30 ms at 0.14 GB/s; compute 30 / 10 ms. */
  simdev_set_copy_gbps(hide ? 1.0 : 0.14);
  unsigned us = hide ? 30000 : 10000;
  int moved = 0;
  for (int s = 0; s < STEPS; s++) {
    moved = step(s, us, NULL);
    struct ckpt_stats st = ck_stats();
    printf("step %d: %d of %d offloaded, why %llu, d2h %.3f GB/s, h2d %.3f GB/s, copy/compute %.2f\n", s, moved, L,
           (unsigned long long)st.budget_why, st.budget_d2h_gbps, st.budget_h2d_gbps, st.budget_copy_ratio);
  }
  simdev_set_copy_gbps(0);
  struct ckpt_stats st = ck_stats();
  CHECK(st.budget_mode == CKPT_BUDGET_AUTO);
  CHECK(st.budget_d2h_gbps > 0 && st.budget_h2d_gbps > 0, "the link was not measured");
  if (hide) {
    CHECK(moved == L - 1, "copies hide: %d of %d offloaded in the last step", moved, L - 1);
    CHECK(st.budget_why == CKPT_BUDGET_WHY_HIDDEN, "why %llu", (unsigned long long)st.budget_why);
  } else {
    CHECK(moved > 0 && moved < L - 1, "link-bound: %d of %d offloaded in the last step", moved, L - 1);
    CHECK(st.budget_kept_regions > 0 && st.budget_copy_ratio > 1);
  }
}

int main(int argc, char **argv) {
  CHECK(argc == 2, "usage: budget bytes|hide|link");
  ck_load();
  ctx_setup();
  CU(cuStreamCreate(&compute, CU_STREAM_NON_BLOCKING));
  CHECK(ck.set_stream((uintptr_t)compute) == 0);
  if (!strcmp(argv[1], "bytes")) bytes();
  else if (!strcmp(argv[1], "hide")) automatic(true);
  else if (!strcmp(argv[1], "link")) automatic(false);
  else CHECK(0, "unknown mode %s", argv[1]);
  CHECK(!simdev_faulted(), "a stream touched unmapped memory");
  printf("budget %s: ok\n", argv[1]);
  return 0;
}
