/* Fault injection: one driver call that libckpt makes fails, and the data
 * must survive bit-exact.
 *
 *   faults CALL NTH [CODE]   after setup, the NTH call of the driver entry
 *                            point CALL (counted from then on) returns CODE
 *                            (default CUDA_ERROR_OUT_OF_MEMORY); NTH 0 fails
 *                            nothing. Then a small training run: 2 steps x 4
 *                            regions x 2 tensors, offloaded by the policy,
 *                            read where they are (host-backed), restored in
 *                            reverse one way or another, every byte checked by
 *                            stream-ordered kernels and by the host.
 *
 * Prints one line: "faults CALL NTH: calls=<calls of CALL during the run>
 * reached=<0|1> driver_errors=<n> ...". Exit status: 0 data intact, 1 data
 * lost or corrupted, 2 a stream touched unmapped memory (a swap without a
 * gate), 3 hang (watchdog). faults.sh walks every call and NTH. */
#include "hard.h"

static CUstream s;

int main(int argc, char **argv) {
  CHECK(argc >= 3, "usage: faults CALL NTH [CODE]");
  const char *call = argv[1];
  unsigned long nth = strtoul(argv[2], NULL, 10);
  int code = argc > 3 ? atoi(argv[3]) : CUDA_ERROR_OUT_OF_MEMORY;
  watchdog_start("faults", getenv("HARD_TIMEOUT") ? (unsigned)atoi(getenv("HARD_TIMEOUT")) : 30);
  ck_load();
  ctx_setup();
  CU(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  CHECK(ck.set_stream((uintptr_t)s) == 0);
  unsigned long calls0 = simdev_calls(call);
  if (nth) CHECK(simdev_fail(call, nth, code) == 0, "simdev does not know %s", call);

  enum { STEPS = 2, NREG = 4, PER = 2 };
  long host_bad = 0;
  for (int step = 0; step < STEPS; step++) {
    struct tensor t[NREG][PER];
    int id[NREG];
    for (int r = 0; r < NREG; r++) {
      id[r] = ck.region_begin("layer");
      CHECK(id[r] > 0);
      for (int k = 0; k < PER; k++)
        hard_alloc(&t[r][k], k ? 2 * MiB : 3 * MiB + 17, (uint64_t)(1000 * step + 10 * r + k), s);
      CHECK(ck.region_end() == id[r]);
    }
    /* A consumer that never restores reads them where they are. */
    for (int k = 0; k < PER; k++) hard_launch(s, hard_check_kernel, &t[0][k], 0);
    for (int r = NREG - 1; r >= 0; r--) {
      int rc;
      switch (r % 3) {
      case 0: rc = ck.restore(id[r]); break;
      case 1: rc = ck.restore_ptr(t[r][1].p + 100); break;
      default:
        rc = ck.prefetch(id[r]);
        if (rc == 0) rc = ck.wait(id[r]);
        break;
      }
      /* An error code is allowed (the failure may be the restore's own);
       * the bytes must be right whatever it returned. */
      (void)rc;
      for (int k = 0; k < PER; k++) hard_launch(s, hard_check_kernel, &t[r][k], 0);
      CHECK(ck.wait(id[r]) <= 0);
      CU(cuStreamSynchronize(s));
      for (int k = 0; k < PER; k++) { /* and the host reads them too */
        size_t bad = pattern_check((void *)t[r][k].p, t[r][k].n, t[r][k].seed);
        if (bad) {
          fprintf(stderr, "DATA: host read of region %d tensor %d (residency %d) differs at byte %zu\n", r, k,
                  residency(t[r][k].p), bad - 1);
          host_bad++;
        }
      }
      for (int k = 0; k < PER; k++) CU(cuMemFreeAsync(t[r][k].p, s));
    }
    CU(cuStreamSynchronize(s));
    CHECK(ck.step() == 0);
  }
  ck.release_cached();
  CU(cuCtxSynchronize());
  unsigned long calls = simdev_calls(call) - calls0;
  struct ckpt_stats st = ck_stats();
  printf("faults %s %lu: calls=%lu reached=%d driver_errors=%llu offloads=%llu restores=%llu restore_oom=%llu "
         "pool_exhausted=%llu\n",
         call, nth, calls, nth && calls >= nth, (unsigned long long)st.driver_errors, (unsigned long long)st.offloads,
         (unsigned long long)st.restores, (unsigned long long)st.restore_oom,
         (unsigned long long)st.host_pool_exhausted);
  fflush(stdout);
  if (simdev_faulted()) {
    fprintf(stderr, "FAULT: a stream touched unmapped memory\n");
    return 2;
  }
  if (kernel_errors || host_bad) {
    fprintf(stderr, "DATA LOST: %ld stream-ordered and %ld host checks failed\n", (long)kernel_errors, host_bad);
    return 1;
  }
  return 0;
}
