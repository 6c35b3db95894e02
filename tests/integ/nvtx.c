/* NVTX v3 ranges open regions through the injection libckpt registers
 * (NVTX_INJECTION64_PATH, set by the preload's constructor). */
#include <nvtx3/nvToolsExt.h>

#include "harness.h"

int main(void) {
  ck_load();
  ctx_setup();
  CUstream s;
  CU(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  struct ckpt_stats st0 = ck_stats();

  CHECK(nvtxRangePushA("ckpt_layer0") == 0);
  CUdeviceptr a;
  CU(cuMemAllocAsync(&a, 8 * MiB, s));
  CHECK(nvtxRangePushA("attention") == 1); /* not ours: passes through */
  CUdeviceptr b;
  CU(cuMemAllocAsync(&b, 8 * MiB, s));
  CHECK(nvtxRangePop() == 1);
  CHECK(nvtxRangePop() == 0);
  CUdeviceptr c;
  CU(cuMemAllocAsync(&c, 8 * MiB, s));

  int ra = region_of(a);
  CHECK(ra > 0, "allocation inside an NVTX ckpt range must be tagged");
  CHECK(region_of(b) == ra, "a foreign range inside does not open a region");
  CHECK(residency(c) == CKPT_UNTAGGED, "after the pop the region is closed");
  struct ckpt_stats st1 = ck_stats();
  CHECK(st1.regions_opened == st0.regions_opened + 1);
  CHECK(st1.regions_closed == st0.regions_closed + 1);

  /* Extended attributes and nesting of two ckpt ranges. */
  nvtxEventAttributes_t ev = {0};
  ev.version = NVTX_VERSION;
  ev.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
  ev.messageType = NVTX_MESSAGE_TYPE_ASCII;
  ev.message.ascii = "ckpt_outer";
  nvtxRangePushEx(&ev);
  nvtxRangePushA("ckpt_inner");
  CUdeviceptr d;
  CU(cuMemAllocAsync(&d, 8 * MiB, s));
  int inner = region_of(d);
  nvtxRangePop();
  nvtxRangePop();
  CHECK(inner > ra + 1, "inner region is the newest");
  CHECK(ck_stats().regions_opened == st0.regions_opened + 3);
  /* Domain ranges are handled as well. */
  nvtxDomainHandle_t dom = nvtxDomainCreateA("test");
  ev.message.ascii = "ckpt_dom";
  nvtxDomainRangePushEx(dom, &ev);
  CUdeviceptr e;
  CU(cuMemAllocAsync(&e, 8 * MiB, s));
  CHECK(region_of(e) > inner);
  nvtxDomainRangePop(dom);
  CHECK(ck_stats().regions_closed == st0.regions_closed + 4);

  CUdeviceptr all[] = {a, b, c, d, e};
  for (int i = 0; i < 5; i++) CU(cuMemFreeAsync(all[i], s));
  CU(cuStreamSynchronize(s));
  printf("nvtx: ok\n");
  return 0;
}
