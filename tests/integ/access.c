/* Peer access through offload and restore (issue 11 B.4): device 0's
 * stream-ordered pool grants device 1 (cuMemPoolSetAccess), so a tagged
 * mapping must grant it too, at allocation, once offloaded (the host
 * mapping) and after restore. A copy issued on a device-1 stream reads and
 * writes the tagged tensor at each stage: bit-exact, no fault.
 *   integ_access granted   the pool grants device 1: no fault, right bytes
 *   integ_access denied    it does not: the first device-1 copy faults (the
 *                          simulated device checks access per mapping)
 * Run with SIMDEV_DEVICES=2, CKPT_OFFLOAD=manual. */
#include <stdbool.h>

#include "harness.h"

#define N (6 * MiB + 4096)

static CUcontext ctx0, ctx1;
static CUstream s1;
static CUdeviceptr q; /* device-1 memory */
static unsigned char *buf;

/* On device 1: reads p (checks `seed`), then writes `next` into it. */
static CUresult peer_round(CUdeviceptr p, uint64_t seed, uint64_t next) {
  CU(cuCtxSetCurrent(ctx1));
  CU(cuMemcpyDtoDAsync_v2(q, p, N, s1));
  CUresult r = cuStreamSynchronize(s1);
  if (r != CUDA_SUCCESS) return r;
  CHECK(pattern_check((void *)q, N, seed) == 0, "device 1 read wrong bytes (seed %llu)", (unsigned long long)seed);
  pattern_fill((void *)q, N, next);
  CU(cuMemcpyDtoDAsync_v2(p, q, N, s1));
  r = cuStreamSynchronize(s1);
  if (r != CUDA_SUCCESS) return r;
  CHECK(pattern_check((void *)p, N, next) == 0, "device 1's write is not at p");
  CU(cuCtxSetCurrent(ctx0));
  return CUDA_SUCCESS;
}

int main(int argc, char **argv) {
  CHECK(argc == 2 && (!strcmp(argv[1], "granted") || !strcmp(argv[1], "denied")), "usage: integ_access granted|denied");
  bool granted = !strcmp(argv[1], "granted");
  ck_load();
  CU(cuInit(0));
  int ndev = 0;
  CU(cuDeviceGetCount(&ndev));
  CHECK(ndev == 2, "run with SIMDEV_DEVICES=2 (%d devices)", ndev);
  CU(cuDevicePrimaryCtxRetain(&ctx1, 1));
  CU(cuCtxSetCurrent(ctx1));
  CU(cuStreamCreate(&s1, CU_STREAM_NON_BLOCKING));
  CU(cuMemAlloc_v2(&q, N));
  CU(cuDevicePrimaryCtxRetain(&ctx0, 0));
  CU(cuCtxSetCurrent(ctx0));
  if (granted) {
    CUmemoryPool pool;
    CU(cuDeviceGetMemPool(&pool, 0));
    CUmemAccessDesc d = {.location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 1},
                         .flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    CU(cuMemPoolSetAccess(pool, &d, 1));
  }
  CUstream s0;
  CU(cuStreamCreate(&s0, CU_STREAM_NON_BLOCKING));
  CHECK(ck.set_stream((uintptr_t)s0) == 0);
  buf = malloc(N);
  CHECK(buf != NULL);

  int a = ck.region_begin("a");
  CUdeviceptr p;
  CU(cuMemAllocAsync(&p, N, s0));
  CU(cuStreamSynchronize(s0));
  pattern_fill((void *)p, N, 1);
  ck.region_end();
  CHECK(residency(p) == CKPT_DEVICE, "tagged (residency %d)", residency(p));

  CUresult r = peer_round(p, 1, 2);
  if (!granted) {
    CHECK(r != CUDA_SUCCESS && simdev_faulted(), "without the pool's grant device 1 must fault (%d)", (int)r);
    printf("integ_access denied: device 1 faulted as expected (%d)\n", (int)r);
    return 0;
  }
  CHECK(r == CUDA_SUCCESS, "at allocation: %d", (int)r);

  CHECK(ck.offload(a) == 0 && ck.wait(a) == 0);
  CHECK(residency(p) == CKPT_HOST, "offloaded (residency %d)", residency(p));
  CHECK(peer_round(p, 2, 3) == CUDA_SUCCESS, "offloaded: device 1 lost access");

  CHECK(ck.restore(a) == 0 && ck.wait(a) == 0);
  CHECK(residency(p) == CKPT_DEVICE, "restored (residency %d)", residency(p));
  CHECK(peer_round(p, 3, 4) == CUDA_SUCCESS, "restored: device 1 lost access");

  /* A second life from the mapping cache keeps the grant as well. */
  CU(cuMemFreeAsync(p, s0));
  CU(cuStreamSynchronize(s0));
  ck.step();
  a = ck.region_begin("a");
  CUdeviceptr p2;
  CU(cuMemAllocAsync(&p2, N, s0));
  CU(cuStreamSynchronize(s0));
  pattern_fill((void *)p2, N, 5);
  ck.region_end();
  CHECK(peer_round(p2, 5, 6) == CUDA_SUCCESS, "a second tagged allocation");
  CHECK(ck.offload(a) == 0 && ck.wait(a) == 0);
  CHECK(peer_round(p2, 6, 7) == CUDA_SUCCESS);
  CHECK(ck.restore(a) == 0 && ck.wait(a) == 0);
  CHECK(peer_round(p2, 7, 8) == CUDA_SUCCESS);
  CHECK(!simdev_faulted(), "no fault");
  CU(cuMemFreeAsync(p2, s0));
  CU(cuStreamSynchronize(s0));
  printf("integ_access granted: device 1 read and wrote the tensor at allocation, offloaded and restored\n");
  return 0;
}
