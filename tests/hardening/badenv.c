/* The program badenv.sh runs in hostile environments. It prints nothing
 * itself unless something is wrong (then "FAIL ..." and exit 1), so that
 * every line on its stderr is libckpt's.
 *
 *   badenv work          a training-like round trip: regions, tagged
 *                        allocations, offload, restore, every byte checked.
 *                        Whatever libckpt could not set up (log file, trace,
 *                        stats segment) must not change the data.
 *   badenv passthrough   the driver cannot do what tagging needs (VMM,
 *                        reservations): allocations inside regions go to the
 *                        driver untagged, bytes intact.
 *   badenv nohost        no host-located memory: survivors stay on the device,
 *                        bytes intact. */
#include "hard.h"

static CUstream s;

static void round_trip(int steps, int expect) {
  for (int step = 0; step < steps; step++) {
    enum { NREG = 3, PER = 2 };
    struct tensor t[NREG][PER];
    int id[NREG];
    for (int r = 0; r < NREG; r++) {
      id[r] = ck.region_begin("layer");
      CHECK(id[r] > 0, "region_begin -> %d", id[r]);
      for (int k = 0; k < PER; k++) hard_alloc(&t[r][k], (size_t)(2 + k) * MiB + 17, (uint64_t)(step * 100 + r * 10 + k), s);
      CHECK(ck.region_end() == id[r]);
    }
    for (int r = 0; r < NREG - 1; r++) CHECK(ck.wait(id[r]) == 0);
    for (int r = 0; r < NREG; r++)
      for (int k = 0; k < PER; k++) {
        int res = residency(t[r][k].p);
        if (expect == CKPT_UNTAGGED) CHECK(res == CKPT_UNTAGGED, "tagged although the driver cannot (residency %d)", res);
        else if (expect == CKPT_DEVICE) CHECK(res == CKPT_DEVICE, "residency %d, expected on the device", res);
        else if (r < NREG - 1) CHECK(res == CKPT_HOST, "region %d not offloaded (residency %d)", r, res);
        hard_launch(s, hard_check_kernel, &t[r][k], 0); /* read where it is */
      }
    for (int r = NREG - 1; r >= 0; r--) {
      int rc = ck.restore(id[r]);
      CHECK(rc == 0 || rc == CKPT_ENOENT, "restore -> %d", rc);
      for (int k = 0; k < PER; k++) {
        hard_launch(s, hard_check_kernel, &t[r][k], 0);
        CU(cuMemFreeAsync(t[r][k].p, s));
      }
    }
    CU(cuStreamSynchronize(s));
    CHECK(ck.step() == 0);
  }
  CHECK(kernel_errors == 0, "%ld tensors corrupted", (long)kernel_errors);
  CHECK(!simdev_faulted(), "a stream touched unmapped memory");
}

int main(int argc, char **argv) {
  CHECK(argc == 2, "usage: badenv work|passthrough|nohost");
  watchdog_start("badenv", 60);
  ck_load();
  ctx_setup();
  CU(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  CHECK(ck.set_stream((uintptr_t)s) == 0);
  struct ckpt_stats st;
  if (!strcmp(argv[1], "work")) {
    round_trip(3, CKPT_HOST);
    st = ck_stats();
    CHECK(st.offloads > 0 && st.restores > 0, "nothing moved");
  } else if (!strcmp(argv[1], "passthrough")) {
    round_trip(3, CKPT_UNTAGGED);
    st = ck_stats();
    CHECK(st.tagged_allocs == 0, "%llu tagged", (unsigned long long)st.tagged_allocs);
    CHECK(st.untagged_allocs >= 18, "%llu untagged allocations, expected 18", (unsigned long long)st.untagged_allocs);
  } else if (!strcmp(argv[1], "nohost")) {
    round_trip(3, CKPT_DEVICE);
    st = ck_stats();
    CHECK(st.offloads == 0, "%llu offloads without host memory", (unsigned long long)st.offloads);
    CHECK(st.tagged_allocs >= 18, "%llu tagged", (unsigned long long)st.tagged_allocs);
  } else {
    CHECK(0, "unknown mode %s", argv[1]);
  }
  return 0;
}
