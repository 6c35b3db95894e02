/* Restores whose gates close in another order than their jobs were queued
 * (single-threaded, deterministic): prefetch(1), restore(2), restore(1).
 * The copy-back of region 1 is queued first, but region 2's gate is closed
 * first, so the program's stream stops at region 2's gate before it can reach
 * region 1's. The engine must open the gates in the order the streams reach
 * them; waiting for region 1's gate first never ends (a deadlock that hangs
 * training). Backward passes that do not restore in exact reverse order
 * (autograd graphs with branches, restore_ptr of an earlier tensor) do this.
 *
 * Run with CKPT_OFFLOAD=manual CKPT_PREFETCH=0. */
#include "hard.h"

int main(void) {
  watchdog_start("gate_order", getenv("HARD_TIMEOUT") ? (unsigned)atoi(getenv("HARD_TIMEOUT")) : 30);
  ck_load();
  ctx_setup();
  CUstream s;
  CU(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  CHECK(ck.set_stream((uintptr_t)s) == 0);
  enum { N = 3 };
  struct tensor t[N];
  int id[N];
  for (int r = 0; r < N; r++) {
    id[r] = ck.region_begin("layer");
    hard_alloc(&t[r], 8 * MiB + 3, 40 + (uint64_t)r, s);
    CHECK(ck.region_end() == id[r]);
  }
  for (int r = 0; r < N; r++) CHECK(ck.offload(id[r]) == 0);
  for (int r = 0; r < N; r++) CHECK(ck.wait(id[r]) == 0);
  for (int r = 0; r < N; r++) CHECK(residency(t[r].p) == CKPT_HOST, "region %d not offloaded", r);
  /* Copies of 8 MiB now take ~0.2 s: the jobs stay queued while we restore. */
  simdev_set_copy_gbps(0.05);
  CHECK(ck.prefetch(id[0]) == 0); /* job A: region 1, queued, no gate yet */
  CHECK(ck.restore(id[1]) == 0);  /* job B: region 2, queued after A; gate 1 closed on s */
  CHECK(ck.restore(id[0]) == 0);  /* gate 2 on A, behind gate 1 on s */
  for (int r = 0; r < N; r++) hard_launch(s, hard_check_kernel, &t[r], 0);
  CU(cuStreamSynchronize(s)); /* hangs if the engine waits for gate 2 before opening gate 1 */
  CHECK(ck.wait(id[0]) == 0 && ck.wait(id[1]) == 0);
  CHECK(residency(t[0].p) == CKPT_DEVICE && residency(t[1].p) == CKPT_DEVICE);
  CHECK(kernel_errors == 0);
  CHECK(!simdev_faulted());
  for (int r = 0; r < N; r++) CU(cuMemFreeAsync(t[r].p, s));
  CU(cuStreamSynchronize(s));
  printf("gate_order: ok\n");
  return 0;
}
