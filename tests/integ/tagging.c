/* Regions and tagging under LD_PRELOAD on the simulated device (CKPT_MODE=none
 * would not tag: this runs with CKPT_MODE=host and CKPT_MIN_BYTES=4M). */
#include <unistd.h>

#include "harness.h"

static CUstream s;

static void thresholds_and_regions(void) {
  CUdeviceptr outside, small, big, inner_p;
  CU(cuMemAllocAsync(&outside, 8 * MiB, s));
  int outer = ck.region_begin("outer");
  CU(cuMemAllocAsync(&small, 4 * MiB - 1, s)); /* below CKPT_MIN_BYTES */
  CU(cuMemAllocAsync(&big, 4 * MiB, s));       /* at the threshold */
  int inner = ck.region_begin("inner");
  CHECK(inner > outer);
  CU(cuMemAllocAsync(&inner_p, 5 * MiB + 3, s));
  CHECK(ck.region_end() == inner);
  CHECK(ck.region_end() == outer);
  CHECK(ck.region_end() == CKPT_ESTATE, "closing with nothing open is an error, not a crash");

  CHECK(residency(outside) == CKPT_UNTAGGED);
  CHECK(residency(small) == CKPT_UNTAGGED);
  CHECK(region_of(big) == outer);
  CHECK(residency(big) == CKPT_DEVICE);
  CHECK(region_of(inner_p) == inner, "nested regions tag with the innermost");
  /* Interior pointers: any byte of the allocation, none past it. */
  CHECK(region_of(big + 1) == outer);
  CHECK(region_of(big + 4 * MiB - 1) == outer);
  CHECK(region_of(inner_p + 5 * MiB + 2) == inner);
  CHECK(residency(inner_p + 5 * MiB + 3) == CKPT_UNTAGGED || region_of(inner_p + 5 * MiB + 3) != inner);
  /* The memory is usable. */
  CU(cuMemsetD8Async(big, 0xab, 4 * MiB, s));
  CU(cuStreamSynchronize(s));
  CHECK(((unsigned char *)big)[4 * MiB - 1] == 0xab);
  CU(cuMemFreeAsync(outside, s));
  CU(cuMemFreeAsync(small, s));
  CU(cuMemFreeAsync(big, s));
  CU(cuMemFreeAsync(inner_p, s));
  CU(cuStreamSynchronize(s));
  ck.step();
}

/* 10,000 alloc/free cycles in regions: physical usage back to the start
 * once the cache is trimmed... and the steady state makes no driver calls. */
static void cycles(void) {
  ck.release_cached(); /* the previous scenario's mappings */
  size_t base = simdev_device_used(0);
  unsigned long creates0 = 0;
  srand(7);
  for (int step = 0; step < 100; step++) {
    if (step == 1) creates0 = simdev_calls("cuMemCreate");
    int id = ck.region_begin("cycle");
    CUdeviceptr p[100];
    for (int i = 0; i < 100; i++) CU(cuMemAllocAsync(&p[i], (size_t)(4 + i % 5) * MiB + (size_t)(i % 3), s));
    for (int i = 0; i < 100; i++) CHECK(region_of(p[i]) == id);
    CHECK(ck.region_end() == id);
    for (int i = 0; i < 100; i++) CU(cuMemFreeAsync(p[i], s));
    ck.step();
  }
  CU(cuStreamSynchronize(s));
  CHECK(simdev_calls("cuMemCreate") == creates0, "repeated steps must be served from the mapping cache (%lu -> %lu)",
        creates0, simdev_calls("cuMemCreate"));
  CHECK(ck_stats().mapping_cache_hits >= 9900);
  /* Everything is back: releasing the cache returns usage to the start. */
  size_t cached = simdev_device_used(0);
  CHECK(ck.release_cached() > 0);
  CHECK(simdev_device_used(0) == base, "usage %zu, started at %zu", simdev_device_used(0), base);
  CHECK(ck_stats().mapping_cache_bytes == 0);
  /* Memory in the cache is ours, not leaked: a capacity squeeze reclaims it. */
  for (int i = 0; i < 2; i++) {
    int id2 = ck.region_begin("refill");
    CUdeviceptr p[10];
    for (int j = 0; j < 10; j++) CU(cuMemAllocAsync(&p[j], 10 * MiB, s));
    ck.region_end();
    for (int j = 0; j < 10; j++) CU(cuMemFreeAsync(p[j], s));
    CU(cuStreamSynchronize(s));
    (void)id2;
  }
  size_t used = simdev_device_used(0);
  CHECK(used >= base + 100 * MiB);
  size_t cap = simdev_device_used(0) + 64 * MiB;
  simdev_set_device_capacity(0, cap);
  int id = ck.region_begin("squeeze");
  CUdeviceptr big;
  CU(cuMemAllocAsync(&big, 100 * MiB, s)); /* only fits if the cache gives memory back */
  CHECK(region_of(big) == id);
  ck.region_end();
  CU(cuMemFreeAsync(big, s));
  CU(cuStreamSynchronize(s));
  simdev_set_device_capacity(0, (size_t)16 << 30);
  printf("cycles: base %zu, cached %zu then %zu\n", base, cached, used);
}

/* A stream-ordered free is not reused by another stream before its own stream
 * has passed the free point. */
static void stream_order(void) {
  CUstream slow, other;
  CU(cuStreamCreate(&slow, CU_STREAM_NON_BLOCKING));
  CU(cuStreamCreate(&other, CU_STREAM_NON_BLOCKING));
  int id = ck.region_begin("order");
  CUdeviceptr a;
  CU(cuMemAllocAsync(&a, 8 * MiB, slow));
  CHECK(simdev_stream_set_delay_us(slow, 200000) == 0);
  CU(cuMemsetD8Async(a, 0x11, 8 * MiB, slow)); /* still pending when freed */
  CU(cuMemFreeAsync(a, slow));
  CUdeviceptr b;
  CU(cuMemAllocAsync(&b, 8 * MiB, other));
  CHECK(b != a, "reused %#llx before its stream passed the free", (unsigned long long)a);
  /* The same stream may reuse at once: its order protects the old work. */
  CUdeviceptr c;
  CU(cuMemAllocAsync(&c, 8 * MiB, slow));
  CHECK(region_of(c) == id);
  ck.region_end();
  CU(cuMemFreeAsync(b, other));
  CU(cuMemFreeAsync(c, slow));
  CU(cuStreamSynchronize(slow));
  CU(cuStreamSynchronize(other));
  simdev_stream_set_delay_us(slow, 0);
  ck.step();
}

int main(void) {
  ck_load();
  ctx_setup();
  CHECK(strcmp(ck.mode(), "host") == 0);
  CU(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  thresholds_and_regions();
  cycles();
  stream_order();
  CHECK(!simdev_faulted());
  printf("tagging: ok\n");
  return 0;
}
