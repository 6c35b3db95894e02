/* Gates under hostile streams, under LD_PRELOAD on the simulated device.
 * `gates SUBTEST [arg]`:
 *   unnamed         a stream created after the tensor and never named keeps
 *                   reading it through its offload and restore swaps, and
 *                   writing it between them
 *   capture MODE    (global|thread|relaxed) a capture inside a region, on a
 *                   program stream, while an earlier region's offload is in
 *                   flight: it succeeds and its graph replays right
 *   blocked         a stream blocked on the host (the program's own
 *                   wait-value): the gate times out, nothing hangs, data right
 *   late            a held stream with 300 ms of work queued ahead of the gate
 *                   (a framework's run-ahead) and an idle held stream that
 *                   arrives at once: the idle one does not start the arrival
 *                   bound (CKPT_GATE_TIMEOUT=100), so the swap happens
 *                   without a timeout (before 370a4c6 it timed out and rolled
 *                   back: the bench's gates did so every layer; with 370a4c6's
 *                   1 ms grace alone it still did on a loaded host, where the
 *                   idle arrival was seen late: idle is now cuStreamQuery's
 *                   word at the cut)
 *   capture_free    frees of tagged memory during a global-mode capture: on the
 *                   capturing stream (refused as the driver refuses a free node
 *                   of memory no graph allocated), cuMemFree from another thread
 *                   (refused: it would synchronize), on the legacy stream during
 *                   a blocking stream's capture (deferred): no capture
 *                   invalidated, nothing freed early, the graph replays right
 * "Kernels" are host functions on streams, ordered like device work. */
#include <pthread.h>
#include <unistd.h>

#include "harness.h"

static CUstream compute;
static _Atomic long errors;

struct kargs {
  CUdeviceptr p;
  size_t n;
  uint64_t seed;
  int write;
};
static void CUDA_CB touch_kernel(void *arg) {
  struct kargs *k = arg;
  if (k->write) pattern_fill((void *)k->p, k->n, k->seed); /* the same bytes again: a write that keeps them */
  else if (pattern_check((void *)k->p, k->n, k->seed)) errors++;
  usleep(200);
  free(k);
}
static void touch(CUstream s, CUdeviceptr p, size_t n, uint64_t seed, int write) {
  struct kargs *k = malloc(sizeof *k);
  *k = (struct kargs){p, n, seed, write};
  CU(cuLaunchHostFunc(s, touch_kernel, k));
}

static CUdeviceptr tensor(size_t n, uint64_t seed) {
  CUdeviceptr p;
  CU(cuMemAllocAsync(&p, n, compute));
  CU(cuStreamSynchronize(compute));
  pattern_fill((void *)p, n, seed);
  return p;
}

static void unnamed(void) {
  const size_t n = 6 * MiB;
  int a = ck.region_begin("a");
  CUdeviceptr x = tensor(n, 7);
  ck.region_end();
  CUstream side; /* created after the tensor, never named to libckpt */
  CU(cuStreamCreate(&side, CU_STREAM_NON_BLOCKING));
  /* Writes only where no copy of x is in flight: before the offload's fence
   * and while x is host-backed (kept, README). While a copy runs, a survivor
   * is read-only (a write then races the copy and may be lost: finding 10,
   * where TSan reported it for every word and the test ran past its bound). */
  for (int i = 0; i < 40; i++) touch(side, x, n, 7, i & 1);
  ck.region_begin("b");
  CUdeviceptr y = tensor(4 * MiB, 8);
  ck.region_end(); /* offloads a while the side stream reads x */
  for (int i = 0; i < 40; i++) touch(side, x, n, 7, 0);
  CHECK(ck.wait(a) == 0);
  CHECK(residency(x) == CKPT_HOST, "residency %d", residency(x));
  for (int i = 0; i < 40; i++) touch(side, x, n, 7, i & 1);
  CHECK(ck.restore(a) == 0); /* its copy is fenced after the writes above */
  for (int i = 0; i < 40; i++) touch(side, x, n, 7, 0);
  CHECK(ck.wait(a) == 0);
  CU(cuStreamSynchronize(side));
  CHECK(residency(x) == CKPT_DEVICE, "residency %d", residency(x));
  CHECK(pattern_check((void *)x, n, 7) == 0);
  struct ckpt_stats st = ck_stats();
  CHECK(st.offloads >= 1 && st.restores >= 1);
  CU(cuMemFreeAsync(x, compute));
  CU(cuMemFreeAsync(y, compute));
  CU(cuStreamDestroy_v2(side));
  CU(cuStreamSynchronize(compute));
}

static void capture(const char *mode_name) {
  CUstreamCaptureMode mode = !strcmp(mode_name, "global")   ? CU_STREAM_CAPTURE_MODE_GLOBAL
                             : !strcmp(mode_name, "thread") ? CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
                                                            : CU_STREAM_CAPTURE_MODE_RELAXED;
  simdev_set_copy_gbps(0.1); /* the offload of a stays in flight meanwhile */
  const size_t n = 16 * MiB, m = 8 * MiB;
  int a = ck.region_begin("a");
  CUdeviceptr x = tensor(n, 11);
  ck.region_end();
  ck.region_begin("b");
  CUdeviceptr y = tensor(4 * MiB, 12);
  ck.region_end(); /* a's offload starts */
  CHECK(residency(x) == CKPT_OFFLOADING, "residency %d", residency(x));
  CUdeviceptr out;
  CU(cuMemAlloc_v2(&out, m)); /* outside a region: untagged */
  CUstream prog;
  CU(cuStreamCreate(&prog, CU_STREAM_NON_BLOCKING));
  struct ckpt_stats before = ck_stats();
  int c = ck.region_begin("c");
  CU(cuStreamBeginCapture_v2(prog, mode));
  CUdeviceptr tmp;
  CU(cuMemAllocAsync(&tmp, m, prog)); /* a graph allocation node: not tagged */
  CHECK(residency(tmp) == CKPT_UNTAGGED);
  CU(cuMemsetD32Async(tmp, 0x1234abcdu, m / 4, prog));
  CU(cuMemcpyDtoDAsync_v2(out, tmp, m, prog));
  CU(cuMemFreeAsync(tmp, prog));
  usleep(50000); /* the engine works meanwhile: its queries must not invalidate the capture */
  CUgraph graph;
  CU(cuStreamEndCapture(prog, &graph));
  CHECK(ck.region_end() == c);
  CUgraphExec exec;
  CU(cuGraphInstantiateWithFlags(&exec, graph, 0));
  for (int i = 0; i < 3; i++) {
    CU(cuMemsetD8_v2(out, 0, m));
    CU(cuGraphLaunch(exec, prog));
    CU(cuStreamSynchronize(prog));
    const uint32_t *w = (const uint32_t *)out;
    for (size_t k = 0; k < m / 4; k += 4099) CHECK(w[k] == 0x1234abcdu, "replay %d word %zu: %#x", i, k, w[k]);
  }
  struct ckpt_stats st = ck_stats();
  CHECK(st.captured_allocs > before.captured_allocs, "captured_allocs %llu", (unsigned long long)st.captured_allocs);
  CHECK(ck.wait(a) == 0);
  CHECK(ck.restore(a) == 0);
  CHECK(ck.wait(a) == 0);
  CHECK(pattern_check((void *)x, n, 11) == 0);
  CU(cuGraphExecDestroy(exec));
  CU(cuGraphDestroy(graph));
  CU(cuMemFreeAsync(x, compute));
  CU(cuMemFreeAsync(y, compute));
  CU(cuMemFree_v2(out));
  CU(cuStreamSynchronize(compute));
  printf("capture %s: captured_allocs %llu, swaps deferred by capture %llu\n", mode_name,
         (unsigned long long)st.captured_allocs, (unsigned long long)st.swaps_deferred_capture);
}

static void blocked(void) {
  volatile uint32_t *word;
  CUdeviceptr dword;
  CU(cuMemHostAlloc((void **)&word, 4096, CU_MEMHOSTALLOC_DEVICEMAP | CU_MEMHOSTALLOC_PORTABLE));
  CU(cuMemHostGetDevicePointer_v2(&dword, (void *)word, 0));
  *word = 0;
  CUstream w;
  CU(cuStreamCreate(&w, CU_STREAM_NON_BLOCKING));
  const size_t n = 6 * MiB;
  int a = ck.region_begin("a");
  CUdeviceptr x = tensor(n, 21);
  ck.region_end();
  ck.region_begin("b");
  CUdeviceptr y = tensor(4 * MiB, 22);
  ck.region_end(); /* a's offload: its copy is fenced after w's work so far (none) */
  /* After the fence, before the gate: w is blocked on a word the host writes
   * later, so the gate cannot be reached by w. (Before the fence it would
   * hold the copy itself: the program's own wait, not libckpt's.) */
  CU(cuStreamWaitValue32_v2(w, dword, 1, CU_STREAM_WAIT_VALUE_GEQ));
  CHECK(ck.wait(a) == 0); /* returns: the gate timed out */
  struct ckpt_stats st = ck_stats();
  CHECK(st.gate_timeouts >= 1, "gate_timeouts %llu", (unsigned long long)st.gate_timeouts);
  CHECK(residency(x) == CKPT_DEVICE, "rolled back: residency %d", residency(x));
  CHECK(pattern_check((void *)x, n, 21) == 0);
  __atomic_store_n(word, 1, __ATOMIC_RELEASE); /* a stream waits on it */
  CU(cuStreamSynchronize(w));
  CHECK(ck.offload(a) == 0); /* retried: nothing blocks now */
  CHECK(ck.wait(a) == 0);
  CHECK(residency(x) == CKPT_HOST, "residency %d", residency(x));
  CHECK(ck.restore(a) == 0);
  CHECK(ck.wait(a) == 0);
  CHECK(pattern_check((void *)x, n, 21) == 0);
  CU(cuMemFreeAsync(x, compute));
  CU(cuMemFreeAsync(y, compute));
  CU(cuStreamSynchronize(compute));
  printf("blocked: gate_timeouts %llu\n", (unsigned long long)ck_stats().gate_timeouts);
}

static void CUDA_CB sleep_kernel(void *us) { usleep((useconds_t)(uintptr_t)us); }

static void late(void) {
  CUstream idle;
  CU(cuStreamCreate(&idle, CU_STREAM_NON_BLOCKING));
  CHECK(ck.set_stream((uintptr_t)idle) == 0); /* held by every gate, never busy */
  const size_t n = 6 * MiB;
  int a = ck.region_begin("a");
  CUdeviceptr x = tensor(n, 31);
  ck.region_end();
  simdev_link_pause(0, 1); /* a's copy waits (SIMDEV_COPY_GBPS set), so its gate comes after the work below */
  ck.region_begin("b");
  CUdeviceptr y = tensor(4 * MiB, 32);
  ck.region_end(); /* a's offload: fenced after compute's work so far */
  for (int i = 0; i < 6; i++) CU(cuLaunchHostFunc(compute, sleep_kernel, (void *)(uintptr_t)50000));
  simdev_link_pause(0, 0);
  CHECK(ck.wait(a) == 0);
  struct ckpt_stats st = ck_stats();
  CHECK(st.gate_timeouts == 0, "gate_timeouts %llu: the idle stream started the bound",
        (unsigned long long)st.gate_timeouts);
  CHECK(residency(x) == CKPT_HOST, "swapped: residency %d", residency(x));
  CHECK(ck.restore(a) == 0);
  CHECK(ck.wait(a) == 0);
  CHECK(pattern_check((void *)x, n, 31) == 0);
  CU(cuMemFreeAsync(x, compute));
  CU(cuMemFreeAsync(y, compute));
  CU(cuStreamSynchronize(compute));
  CU(cuStreamDestroy_v2(idle));
}

struct sync_free {
  CUcontext ctx;
  CUdeviceptr p;
  CUresult rc;
};
static void *sync_free_thread(void *arg) {
  struct sync_free *f = arg;
  CU(cuCtxSetCurrent(f->ctx));
  f->rc = cuMemFree_v2(f->p);
  return NULL;
}

static void capture_free(void) {
  const size_t n = 4 * MiB, m = 2 * MiB;
  int a = ck.region_begin("a");
  CUdeviceptr x = tensor(n, 31), y = tensor(n, 32), z = tensor(n, 33);
  ck.region_end();
  CHECK(residency(x) == CKPT_DEVICE && residency(y) == CKPT_DEVICE && residency(z) == CKPT_DEVICE);
  CUdeviceptr out;
  CU(cuMemAlloc_v2(&out, m)); /* outside a region: untagged */
  CUstream prog, blk;
  CU(cuStreamCreate(&prog, CU_STREAM_NON_BLOCKING));
  CU(cuStreamCreate(&blk, CU_STREAM_DEFAULT)); /* blocking: orders with the legacy stream */
  struct ckpt_stats before = ck_stats();
  CUcontext ctx;
  CU(cuCtxGetCurrent(&ctx));
  for (int round = 0; round < 2; round++) {
    CUstream cs = round == 0 ? prog : blk;
    CU(cuStreamBeginCapture_v2(cs, CU_STREAM_CAPTURE_MODE_GLOBAL));
    CUdeviceptr tmp;
    CU(cuMemAllocAsync(&tmp, m, cs)); /* a graph allocation: untagged */
    CU(cuMemsetD32Async(tmp, 0x5a5a0000u + (unsigned)round, m / 4, cs));
    CU(cuMemcpyDtoDAsync_v2(out, tmp, m, cs));
    CU(cuMemFreeAsync(tmp, cs)); /* a graph free node: the driver's */
    if (round == 0) {
      /* A free node of memory allocated before the capture: the driver's answer, nothing freed. */
      CHECK(cuMemFreeAsync(x, cs) == CUDA_ERROR_INVALID_VALUE);
      CHECK(residency(x) == CKPT_DEVICE, "x freed: residency %d", residency(x));
      /* cuMemFree from another thread would synchronize the device: refused. */
      struct sync_free f = {ctx, y, CUDA_SUCCESS};
      pthread_t th;
      CHECK(pthread_create(&th, NULL, sync_free_thread, &f) == 0);
      pthread_join(th, NULL);
      CHECK(f.rc == CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuMemFree during a capture -> %d", (int)f.rc);
      CHECK(residency(y) == CKPT_DEVICE, "y freed: residency %d", residency(y));
    } else {
      /* On the legacy stream while a blocking stream captures: accepted, its
       * stream-order record deferred past the capture (a record there would
       * join the capture and invalidate it). */
      CU(cuMemFreeAsync(z, NULL));
      CHECK(residency(z) == CKPT_UNTAGGED);
    }
    usleep(20000); /* the engine works meanwhile */
    CUgraph graph;
    CU(cuStreamEndCapture(cs, &graph)); /* not invalidated */
    CUgraphExec exec;
    CU(cuGraphInstantiateWithFlags(&exec, graph, 0));
    for (int i = 0; i < 3; i++) {
      CU(cuMemsetD8_v2(out, 0, m));
      CU(cuGraphLaunch(exec, cs));
      CU(cuStreamSynchronize(cs));
      const uint32_t *w = (const uint32_t *)out;
      for (size_t k = 0; k < m / 4; k += 4099)
        CHECK(w[k] == 0x5a5a0000u + (unsigned)round, "round %d replay %d word %zu: %#x", round, i, k, w[k]);
    }
    CU(cuGraphExecDestroy(exec));
    CU(cuGraphDestroy(graph));
  }
  CHECK(pattern_check((void *)x, n, 31) == 0);
  CHECK(pattern_check((void *)y, n, 32) == 0);
  /* z's deferred free completes once no capture is active: its mapping is
   * cached (reaped at region close), bounded. */
  CU(cuCtxSynchronize());
  for (int i = 0; i < 400 && ck_stats().mapping_cache_bytes < before.mapping_cache_bytes + n; i++) {
    ck.region_begin("reap");
    ck.region_end();
    usleep(5000);
  }
  CHECK(ck_stats().mapping_cache_bytes >= before.mapping_cache_bytes + n, "z's mapping not reclaimed: cache %llu",
        (unsigned long long)ck_stats().mapping_cache_bytes);
  /* Still the program's, and freed normally once no capture is active. */
  CHECK(ck.offload(a) == 0 && ck.wait(a) == 0);
  CHECK(residency(x) == CKPT_HOST, "residency %d", residency(x));
  CHECK(ck.restore(a) == 0 && ck.wait(a) == 0);
  CHECK(pattern_check((void *)x, n, 31) == 0 && pattern_check((void *)y, n, 32) == 0);
  CU(cuMemFreeAsync(x, compute));
  CU(cuMemFree_v2(y));
  CU(cuMemFree_v2(out));
  CU(cuStreamSynchronize(compute));
  CU(cuCtxSynchronize());
  struct ckpt_stats st = ck_stats();
  CHECK(st.tagged_allocs_live == before.tagged_allocs_live - 3, "tagged live %llu -> %llu",
        (unsigned long long)before.tagged_allocs_live, (unsigned long long)st.tagged_allocs_live);
  CU(cuStreamDestroy_v2(prog));
  CU(cuStreamDestroy_v2(blk));
  printf("capture_free: refused 2, deferred 1, graphs replayed\n");
}

int main(int argc, char **argv) {
  CHECK(argc >= 2, "usage: gates SUBTEST [arg]");
  ck_load();
  ctx_setup();
  CU(cuStreamCreate(&compute, CU_STREAM_NON_BLOCKING));
  const char *t = argv[1];
  if (!strcmp(t, "unnamed")) unnamed();
  else if (!strcmp(t, "capture")) capture(argc > 2 ? argv[2] : "global");
  else if (!strcmp(t, "blocked")) blocked();
  else if (!strcmp(t, "late")) late();
  else if (!strcmp(t, "capture_free")) capture_free();
  else CHECK(0, "unknown subtest %s", t);
  CU(cuCtxSynchronize());
  CHECK(!simdev_faulted(), "a stream touched unmapped memory");
  CHECK(errors == 0, "%ld kernel checks failed", (long)errors);
  printf("gates %s: ok\n", t);
  return 0;
}
