/* The host pool's growth and placement (issue 11 B.6): host-located memory
 * is created on the pool's own thread, never on the program's (nor under
 * the core lock there), and the data stays exact through the offload that
 * waited for it; it goes on the device's host NUMA node. */
#include <pthread.h>

#include "unit_helpers.h"

static pthread_t program;
static _Atomic unsigned creates, creates_on_program;

static void on_host_create(void) {
  creates++;
  if (pthread_equal(pthread_self(), program)) creates_on_program++;
}

static void pool_setup(void) {
  ut_env_reset();
  ut_env("CKPT_MODE", "host");
  ut_env("CKPT_MIN_BYTES", "1M");
  ut_env("CKPT_OFFLOAD", "manual");
  ut_env("CKPT_PREFETCH", "0");
  ckpt_init();
  cr_assert(ckpt_tagging());
  ut_context();
  program = pthread_self();
  ckpt_vmm_host_create_hook = on_host_create;
}

Test(host_pool, grows_off_the_program_thread, .init = pool_setup, .timeout = 30) {
  enum { N = 4 };
  static const size_t sizes[N] = {UT_MiB + 1, 5 * UT_MiB, 5 * UT_MiB, 9 * UT_MiB + 3};
  for (int step = 0; step < 3; step++) {
    CUdeviceptr p[N];
    int a = ckpt_region_begin("a");
    for (int i = 0; i < N; i++) {
      p[i] = ut_alloc(sizes[i]);
      ut_fill(p[i], sizes[i], (uint64_t)(step * 10 + i));
    }
    cr_assert_eq(ckpt_region_end(), a);
    unsigned long c0 = simdev_calls("cuMemCreate");
    cr_assert_eq(ckpt_offload(a), 0);
    cr_assert_eq(ckpt_wait(a), 0);
    for (int i = 0; i < N; i++) {
      cr_assert_eq(ut_residency(p[i]), CKPT_HOST, "step %d: tensor %d offloaded once its block was made", step, i);
      ut_assert_intact(p[i], sizes[i], (uint64_t)(step * 10 + i));
    }
    if (step == 0) cr_assert_eq(simdev_calls("cuMemCreate") - c0, N, "one host block per survivor");
    else cr_assert_eq(simdev_calls("cuMemCreate"), c0, "step %d: the pool's blocks are reused", step);
    cr_assert_eq(ckpt_restore(a), 0);
    cr_assert_eq(ckpt_wait(a), 0);
    for (int i = 0; i < N; i++) {
      cr_assert_eq(ut_residency(p[i]), CKPT_DEVICE);
      ut_assert_intact(p[i], sizes[i], (uint64_t)(step * 10 + i));
      ut_free(p[i]);
    }
    ckpt_step();
  }
  cr_assert_eq(creates, N, "host creates seen by the hook");
  cr_assert_eq(creates_on_program, 0, "no host memory was created on the program's thread");
  cr_assert_str_eq(ckpt_vmm_host_placement(0), "HOST_NUMA node 0", "the device's host NUMA node");
}

/* Cancelled while its block is being made: the survivor stays on the device,
 * its block joins the pool, nothing leaks. */
Test(host_pool, restore_before_the_block_is_made, .init = pool_setup, .timeout = 30) {
  CUdeviceptr p;
  int a = ckpt_region_begin("a");
  p = ut_alloc(7 * UT_MiB);
  ut_fill(p, 7 * UT_MiB, 7);
  cr_assert_eq(ckpt_region_end(), a);
  cr_assert_eq(ckpt_offload(a), 0);
  cr_assert_eq(ckpt_restore(a), 0);
  cr_assert_eq(ckpt_wait(a), 0);
  cr_assert_eq(ut_residency(p), CKPT_DEVICE);
  ut_assert_intact(p, 7 * UT_MiB, 7);
  ut_free(p);
  cr_assert_geq(ckpt_release_cached(), 0);
  cr_assert_eq(ut_stats().host_pool_bytes, 0, "the block made meanwhile was released with the idle ones");
  cr_assert_eq(creates_on_program, 0);
}

/* A block given back while the grower is still making it (abandoned) joins
 * the pool once made. Taken again, it must not be pending: before 370a4c6 it
 * kept its pending flag, and every later offload into it waited for the
 * engine to resume it (in the overlap bench ~65 ms more per region and step). */
static void slow_host_create(void) {
  on_host_create();
  usleep(100000); /* the grower is inside cuMemCreate while the block is dropped */
}

Test(host_pool, block_abandoned_while_made_is_not_pending_when_reused, .init = pool_setup, .timeout = 30) {
  ckpt_vmm_host_create_hook = slow_host_create;
  struct ckpt_store_fail f;
  LOCK();
  struct ckpt_held *h = ckpt_host_block_get(0, 4 * UT_MiB, &f);
  cr_assert_not_null(h, "a block (pending) from an empty pool");
  cr_assert(h->pending, "queued for the grower");
  ckpt_host_block_drop(h); /* abandoned: the grower is still making it */
  UNLOCK();
  struct ckpt_held *again = NULL;
  for (int i = 0; i < 100 && !again; i++) { /* until the grower has made it and pooled it */
    usleep(20000);
    LOCK();
    uint64_t allocs = ckpt_g.stats.store_allocs;
    struct ckpt_held *g = ckpt_host_block_get(0, 4 * UT_MiB, &f);
    cr_assert_not_null(g);
    if (ckpt_g.stats.store_allocs == allocs) again = g; /* the pooled block, not a new one */
    else ckpt_host_block_drop(g);
    UNLOCK();
  }
  cr_assert_not_null(again, "the abandoned block joined the pool");
  cr_assert_not(again->pending, "a reused block is ready, not pending");
  CUresult rc;
  cr_assert_eq(ckpt_host_block_state(again, &rc), 1);
  LOCK();
  ckpt_host_block_drop(again);
  UNLOCK();
}
