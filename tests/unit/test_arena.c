/* The VMM arena: which allocations are served, their mappings, the mapping
 * cache, releasing it, and falling back to the driver when the arena cannot
 * serve. The core's hooks (core.h) are called directly, on the simulator. */
#include "unit_helpers.h"

/* No policy offloads here: these tests look at the arena alone. */
static void arena_env(void) {
  ut_env_reset();
  ut_env("CKPT_MODE", "host");
  ut_env("CKPT_MIN_BYTES", "1M");
  ut_env("CKPT_OFFLOAD", "manual");
  /* Sizes below follow the device's 2 MiB granules: host-located memory as
   * on an H200 (2 MiB too); strict_host_granularity checks simdev's 4 MiB. */
  ut_env("SIMDEV_HOST_GRANULARITY", "2M");
}

static size_t baseline; /* device bytes in use before the test allocates */

static void arena_setup(void) {
  arena_env();
  ckpt_init();
  cr_assert(ckpt_tagging());
  ut_context();
  baseline = simdev_device_used(0);
}

Test(arena, nothing_served_outside_a_region, .init = arena_setup) {
  CUdeviceptr p = 0;
  CUresult rc = CUDA_ERROR_UNKNOWN;
  cr_assert_not(ckpt_alloc(&p, 8 * UT_MiB, NULL, &rc));
  cr_assert_eq(p, 0, "a refused allocation leaves *dptr alone");
  cr_assert_eq(rc, CUDA_ERROR_UNKNOWN, "and *rc");
  /* Nor after the region closed. */
  int id = ckpt_region_begin("r");
  cr_assert_eq(ckpt_region_end(), id);
  cr_assert_not(ckpt_alloc(&p, 8 * UT_MiB, NULL, &rc));
  cr_assert_eq(simdev_device_used(0), baseline);
  struct ckpt_stats s = ut_stats();
  cr_assert_eq(s.tagged_allocs, 0);
}

Test(arena, nothing_served_below_min_bytes, .init = arena_setup) {
  int id = ckpt_region_begin("r");
  CUdeviceptr p = 0;
  CUresult rc = CUDA_ERROR_UNKNOWN;
  cr_assert_not(ckpt_alloc(&p, UT_MiB - 1, NULL, &rc));
  cr_assert_not(ckpt_alloc(&p, 4096, NULL, &rc));
  cr_assert_not(ckpt_alloc(&p, 0, NULL, &rc));
  cr_assert_eq(p, 0);
  /* Exactly CKPT_MIN_BYTES is served. */
  cr_assert(ckpt_alloc(&p, UT_MiB, NULL, &rc));
  cr_assert_eq(rc, CUDA_SUCCESS);
  cr_assert_eq(ckpt_region_end(), id);
  struct ckpt_stats s = ut_stats();
  cr_assert_eq(s.tagged_allocs, 1);
  ut_free(p);
}

Test(arena, nothing_served_without_a_context) {
  arena_env();
  ckpt_init();
  cr_assert_eq(cuInit(0), CUDA_SUCCESS);
  int id = ckpt_region_begin("r");
  CUdeviceptr p = 0;
  CUresult rc = CUDA_ERROR_UNKNOWN;
  cr_assert_not(ckpt_alloc(&p, 8 * UT_MiB, NULL, &rc), "no current context: the driver reports it");
  cr_assert_eq(ckpt_region_end(), id);
}

Test(arena, served_inside_a_region, .init = arena_setup) {
  const size_t req = 3 * UT_MiB + 100;
  int id = ckpt_region_begin("r");
  CUdeviceptr p = ut_alloc(req);
  size_t g = ckpt_granularity(0);
  cr_assert_eq(g, 2 * UT_MiB, "the simulator's default granularity");
  cr_assert_eq(p % g, 0, "%#llx is not granularity-aligned", (unsigned long long)p);
  /* Mapped (rounded up to the granularity) device memory, writable. */
  cr_assert_eq(simdev_device_used(0), baseline + 4 * UT_MiB);
  ut_fill(p, req, 1);
  ut_assert_intact(p, req, 1);

  int region = 0, res = 0;
  cr_assert_eq(ckpt_query((uintptr_t)p, &region, &res), 0);
  cr_assert_eq(region, id);
  cr_assert_eq(res, CKPT_DEVICE);
  /* Interior pointers are found; one past the requested size is not, though
   * it is still inside the mapping. */
  region = 0;
  cr_assert_eq(ckpt_query((uintptr_t)p + 1, &region, NULL), 0);
  cr_assert_eq(region, id);
  cr_assert_eq(ckpt_query((uintptr_t)p + req / 2, NULL, NULL), 0);
  cr_assert_eq(ckpt_query((uintptr_t)p + req - 1, &region, &res), 0);
  cr_assert_eq(res, CKPT_DEVICE);
  res = 42;
  cr_assert_eq(ckpt_query((uintptr_t)p + req, NULL, &res), CKPT_ENOENT);
  cr_assert_eq(res, CKPT_UNTAGGED);
  cr_assert_eq(ckpt_query((uintptr_t)p - 1, NULL, NULL), CKPT_ENOENT);

  struct ckpt_stats s = ut_stats();
  cr_assert_eq(s.tagged_allocs, 1);
  cr_assert_eq(s.tagged_allocs_live, 1);
  cr_assert_eq(s.tagged_bytes_live, req);
  cr_assert_eq(ckpt_region_end(), id);
  /* Survivors stay tagged with their region after it closes. */
  region = 0;
  cr_assert_eq(ckpt_query((uintptr_t)p, &region, &res), 0);
  cr_assert_eq(region, id);
  cr_assert_eq(res, CKPT_DEVICE);

  ut_free(p);
  cr_assert_eq(ckpt_query((uintptr_t)p, NULL, NULL), CKPT_ENOENT, "freed: no longer tagged");
  s = ut_stats();
  cr_assert_eq(s.tagged_allocs, 1);
  cr_assert_eq(s.tagged_allocs_live, 0);
  cr_assert_eq(s.tagged_bytes_live, 0);
}

Test(arena, nested_region_tags_with_innermost, .init = arena_setup) {
  int a = ckpt_region_begin("outer");
  CUdeviceptr pa = ut_alloc(2 * UT_MiB);
  int b = ckpt_region_begin("inner");
  CUdeviceptr pb = ut_alloc(2 * UT_MiB);
  cr_assert_eq(ckpt_region_end(), b);
  CUdeviceptr pa2 = ut_alloc(2 * UT_MiB);
  cr_assert_eq(ckpt_region_end(), a);
  int r = 0;
  cr_assert_eq(ckpt_query((uintptr_t)pa, &r, NULL), 0);
  cr_assert_eq(r, a);
  cr_assert_eq(ckpt_query((uintptr_t)pb, &r, NULL), 0);
  cr_assert_eq(r, b);
  cr_assert_eq(ckpt_query((uintptr_t)pa2, &r, NULL), 0);
  cr_assert_eq(r, a);
  cr_assert(pa != pb && pb != pa2 && pa != pa2);
  ut_free(pa);
  ut_free(pb);
  ut_free(pa2);
}

Test(arena, distinct_allocations_do_not_overlap, .init = arena_setup) {
  enum { N = 8 };
  CUdeviceptr p[N];
  int id = ckpt_region_begin("r");
  for (int i = 0; i < N; i++) {
    p[i] = ut_alloc((size_t)(i + 1) * UT_MiB);
    ut_fill(p[i], (size_t)(i + 1) * UT_MiB, (uint64_t)i + 10);
  }
  cr_assert_eq(ckpt_region_end(), id);
  for (int i = 0; i < N; i++) {
    ut_assert_intact(p[i], (size_t)(i + 1) * UT_MiB, (uint64_t)i + 10);
    for (int j = 0; j < N; j++)
      if (i != j)
        cr_assert(p[i] + (size_t)(i + 1) * UT_MiB <= p[j] || p[j] + (size_t)(j + 1) * UT_MiB <= p[i],
                  "allocations %d and %d overlap", i, j);
  }
  for (int i = 0; i < N; i++) ut_free(p[i]);
  cr_assert_eq(ut_stats().tagged_allocs_live, 0);
}

Test(arena, free_of_unknown_pointer, .init = arena_setup) {
  CUresult rc = CUDA_ERROR_UNKNOWN;
  int local;
  cr_assert_not(ckpt_free(0, NULL, false, &rc));
  cr_assert_not(ckpt_free((CUdeviceptr)(uintptr_t)&local, NULL, true, &rc));
  cr_assert_eq(rc, CUDA_ERROR_UNKNOWN, "*rc untouched when the pointer is not ours");

  int id = ckpt_region_begin("r");
  CUdeviceptr p = ut_alloc(4 * UT_MiB);
  cr_assert_eq(ckpt_region_end(), id);
  /* An interior pointer is not an allocation the program could free. */
  cr_assert_not(ckpt_free(p + 4096, NULL, true, &rc));
  cr_assert_eq(ut_residency(p), CKPT_DEVICE, "a bad free leaves the allocation alone");
  /* An untagged allocation of the driver is not ours either. */
  CUdeviceptr classic = 0;
  cr_assert_eq(cuMemAlloc_v2(&classic, 4 * UT_MiB), CUDA_SUCCESS);
  cr_assert_not(ckpt_free(classic, NULL, true, &rc));
  cr_assert_eq(cuMemFree_v2(classic), CUDA_SUCCESS);
  ut_free(p);
  /* A second free of the same pointer is not ours any more. */
  cr_assert_not(ckpt_free(p, NULL, true, &rc));
}

Test(arena, maybe_ours, .init = arena_setup) {
  int local;
  cr_assert_not(ckpt_maybe_ours((CUdeviceptr)(uintptr_t)&local), "nothing reserved yet");
  cr_assert_not(ckpt_maybe_ours(0));
  int id = ckpt_region_begin("r");
  CUdeviceptr p = ut_alloc(3 * UT_MiB);
  cr_assert_eq(ckpt_region_end(), id);
  cr_assert(ckpt_maybe_ours(p));
  cr_assert(ckpt_maybe_ours(p + 3 * UT_MiB - 1));
  cr_assert(ckpt_maybe_ours(p + 4 * UT_MiB - 1), "the whole reservation");
  cr_assert_not(ckpt_maybe_ours(0));
  cr_assert_not(ckpt_maybe_ours(~(CUdeviceptr)0));
  ut_free(p);
}

Test(arena, mapping_cache_reuses_after_completed_free, .init = arena_setup) {
  int id = ckpt_region_begin("step 1");
  CUdeviceptr p = ut_alloc(6 * UT_MiB);
  cr_assert_eq(ckpt_region_end(), id);
  ut_free(p); /* cuMemFree semantics: complete at once */
  struct ckpt_stats s = ut_stats();
  cr_assert_eq(s.mapping_cache_bytes, 6 * UT_MiB);
  cr_assert_eq(s.mapping_cache_hits, 0);
  cr_assert_eq(simdev_device_used(0), baseline + 6 * UT_MiB, "the cache keeps the device memory");

  simdev_reset_calls();
  id = ckpt_region_begin("step 2");
  CUdeviceptr q = ut_alloc(6 * UT_MiB - 12345); /* same size class once rounded */
  cr_assert_eq(ckpt_region_end(), id);
  cr_assert_eq(simdev_calls("cuMemCreate"), 0, "served from the cache");
  cr_assert_eq(simdev_calls("cuMemAddressReserve"), 0);
  cr_assert_eq(simdev_calls("cuMemMap"), 0);
  cr_assert_eq(q, p, "the cached mapping is handed out again");
  s = ut_stats();
  cr_assert_eq(s.mapping_cache_hits, 1);
  cr_assert_eq(s.mapping_cache_bytes, 0);
  cr_assert_eq(s.tagged_bytes_live, 6 * UT_MiB - 12345);
  int r = 0;
  cr_assert_eq(ckpt_query((uintptr_t)q, &r, NULL), 0);
  cr_assert_eq(r, id, "re-tagged with the new region");
  ut_fill(q, 6 * UT_MiB - 12345, 3);
  ut_assert_intact(q, 6 * UT_MiB - 12345, 3);

  /* A different size is not served from it. */
  ut_free(q);
  simdev_reset_calls();
  id = ckpt_region_begin("step 3");
  CUdeviceptr other = ut_alloc(8 * UT_MiB);
  cr_assert_eq(ckpt_region_end(), id);
  cr_assert_eq(simdev_calls("cuMemCreate"), 1);
  cr_assert_neq(other, q);
  ut_free(other);
}

Test(arena, mapping_cache_after_stream_ordered_free, .init = arena_setup) {
  int id = ckpt_region_begin("r");
  CUdeviceptr p = ut_alloc(4 * UT_MiB);
  CUresult rc = CUDA_ERROR_UNKNOWN;
  cr_assert(ckpt_free(p, NULL, false, &rc), "stream-ordered free");
  cr_assert_eq(rc, CUDA_SUCCESS);
  cr_assert_eq(ckpt_query((uintptr_t)p, NULL, NULL), CKPT_ENOENT);
  cr_assert_eq(cuCtxSynchronize(), CUDA_SUCCESS); /* the stream is past the free */
  simdev_reset_calls();
  CUdeviceptr q = ut_alloc(4 * UT_MiB);
  cr_assert_eq(simdev_calls("cuMemCreate"), 0);
  cr_assert_eq(q, p);
  cr_assert_eq(ut_stats().mapping_cache_hits, 1);
  cr_assert_eq(ckpt_region_end(), id);
  ut_free(q);
}

Test(arena, release_cached_returns_device_memory, .init = arena_setup) {
  int id = ckpt_region_begin("r");
  CUdeviceptr a = ut_alloc(4 * UT_MiB);
  CUdeviceptr b = ut_alloc(7 * UT_MiB); /* 8 MiB mapped */
  cr_assert_eq(ckpt_region_end(), id);
  cr_assert_eq(simdev_device_used(0), baseline + 12 * UT_MiB);
  ut_free(a);
  ut_free(b);
  cr_assert_eq(simdev_device_used(0), baseline + 12 * UT_MiB, "cached, not released");
  cr_assert_eq(ut_stats().mapping_cache_bytes, 12 * UT_MiB);
  cr_assert_eq(ckpt_release_cached(), (int)(12 * UT_MiB));
  cr_assert_eq(simdev_device_used(0), baseline);
  cr_assert_eq(ut_stats().mapping_cache_bytes, 0);
  cr_assert_eq(ckpt_release_cached(), 0, "nothing left");
  /* The released address ranges are not ours any more. */
  cr_assert_eq(ckpt_query((uintptr_t)a, NULL, NULL), CKPT_ENOENT);
  /* Live allocations are not released. */
  id = ckpt_region_begin("r2");
  CUdeviceptr c = ut_alloc(4 * UT_MiB);
  cr_assert_eq(ckpt_region_end(), id);
  cr_assert_eq(ckpt_release_cached(), 0);
  cr_assert_eq(simdev_device_used(0), baseline + 4 * UT_MiB);
  ut_fill(c, 4 * UT_MiB, 5);
  ut_assert_intact(c, 4 * UT_MiB, 5);
  ut_free(c);
  cr_assert_eq(ckpt_release_cached(), (int)(4 * UT_MiB));
  cr_assert_eq(simdev_device_used(0), baseline);
}

Test(arena, release_cached_waits_for_pending_frees, .init = arena_setup) {
  int id = ckpt_region_begin("r");
  CUdeviceptr p = ut_alloc(4 * UT_MiB);
  cr_assert_eq(ckpt_region_end(), id);
  CUresult rc;
  cr_assert(ckpt_free(p, NULL, false, &rc));
  cr_assert_eq(cuCtxSynchronize(), CUDA_SUCCESS);
  /* The free has completed on the stream: releasing takes it too. */
  cr_assert_eq(ckpt_release_cached(), (int)(4 * UT_MiB));
  cr_assert_eq(simdev_device_used(0), baseline);
}

Test(arena, oom_falls_back_to_the_driver, .init = arena_setup) {
  simdev_set_device_capacity(0, baseline + UT_MiB);
  int id = ckpt_region_begin("r");
  CUdeviceptr p = 0;
  CUresult rc = CUDA_ERROR_UNKNOWN;
  ut_capture_start();
  bool served = ckpt_alloc(&p, 8 * UT_MiB, NULL, &rc);
  const char *log = ut_capture_end();
  cr_assert_not(served, "no device memory: the driver reports it");
  cr_assert_eq(p, 0);
  cr_assert_not_null(strstr(log, "CUDA_ERROR_OUT_OF_MEMORY"), "log: %s", log);
  /* Nothing leaked: no memory, every reserved range given back. */
  cr_assert_eq(simdev_device_used(0), baseline);
  cr_assert_eq(simdev_calls("cuMemAddressReserve"), simdev_calls("cuMemAddressFree"));
  struct ckpt_stats s = ut_stats();
  cr_assert_eq(s.tagged_allocs, 0);
  cr_assert_eq(s.tagged_allocs_live, 0);
  /* With memory back, the next one is served. */
  simdev_set_device_capacity(0, (size_t)16 << 30);
  CUdeviceptr q = ut_alloc(8 * UT_MiB);
  cr_assert_eq(ckpt_region_end(), id);
  ut_fill(q, 8 * UT_MiB, 9);
  ut_assert_intact(q, 8 * UT_MiB, 9);
  ut_free(q);
}

Test(arena, oom_trims_the_mapping_cache_first, .init = arena_setup) {
  int id = ckpt_region_begin("r");
  CUdeviceptr a = ut_alloc(8 * UT_MiB);
  ut_free(a);
  cr_assert_eq(ut_stats().mapping_cache_bytes, 8 * UT_MiB);
  /* Room for nothing beyond the cached mapping. */
  simdev_set_device_capacity(0, baseline + 8 * UT_MiB);
  CUdeviceptr b = ut_alloc(6 * UT_MiB); /* another size: needs a new handle */
  cr_assert_neq(b, a);
  cr_assert_eq(ut_stats().mapping_cache_bytes, 0, "the cache was trimmed to make room");
  cr_assert_eq(simdev_device_used(0), baseline + 6 * UT_MiB);
  cr_assert_eq(ckpt_region_end(), id);
  ut_free(b);
}

Test(arena, injected_failure_passes_through, .init = arena_setup) {
  int id = ckpt_region_begin("r");
  CUdeviceptr p = 0;
  CUresult rc = CUDA_ERROR_UNKNOWN;
  /* Every cuMemCreate fails with CUDA_ERROR_OUT_OF_MEMORY (2). */
  cr_assert_eq(simdev_fail("cuMemCreate", 0, 2), 0);
  ut_capture_start();
  cr_assert_not(ckpt_alloc(&p, 8 * UT_MiB, NULL, &rc));
  cr_assert_not(ckpt_alloc(&p, 8 * UT_MiB, NULL, &rc), "and again, without crashing");
  ut_capture_end();
  cr_assert_eq(p, 0);
  cr_assert_eq(simdev_calls("cuMemAddressReserve"), simdev_calls("cuMemAddressFree"));
  simdev_fail_clear();
  CUdeviceptr q = ut_alloc(8 * UT_MiB);
  cr_assert_eq(ckpt_region_end(), id);
  ut_free(q);
}

Test(arena, injected_error_other_than_oom_passes_through, .init = arena_setup) {
  int id = ckpt_region_begin("r");
  CUdeviceptr p = 0;
  CUresult rc = CUDA_ERROR_UNKNOWN;
  /* The next cuMemCreate only fails with CUDA_ERROR_INVALID_VALUE (1): no retry. */
  cr_assert_eq(simdev_fail("cuMemCreate", 1, CUDA_ERROR_INVALID_VALUE), 0);
  simdev_reset_calls();
  ut_capture_start();
  bool served = ckpt_alloc(&p, 8 * UT_MiB, NULL, &rc);
  ut_capture_end();
  cr_assert_not(served);
  cr_assert_eq(simdev_calls("cuMemCreate"), 1);
  cr_assert_eq(simdev_calls("cuMemAddressReserve"), simdev_calls("cuMemAddressFree"));
  cr_assert_eq(simdev_device_used(0), baseline);
  /* The rule is spent: the next allocation is served. */
  CUdeviceptr q = ut_alloc(8 * UT_MiB);
  cr_assert_eq(ckpt_region_end(), id);
  ut_free(q);
}

/* One transient out-of-memory is retried after trimming (DESIGN: "trim the
 * pool and retry before calling it out-of-memory"), so it is served. */
Test(arena, injected_transient_oom_is_retried, .init = arena_setup) {
  int id = ckpt_region_begin("r");
  cr_assert_eq(simdev_fail("cuMemCreate", 1, 2), 0);
  simdev_reset_calls();
  CUdeviceptr p = ut_alloc(8 * UT_MiB);
  cr_assert_eq(simdev_calls("cuMemCreate"), 2, "failed once, retried once");
  cr_assert_eq(simdev_calls("cuMemPoolTrimTo"), 1, "the stream-ordered pool was trimmed");
  cr_assert_eq(ckpt_region_end(), id);
  ut_fill(p, 8 * UT_MiB, 4);
  ut_assert_intact(p, 8 * UT_MiB, 4);
  ut_free(p);
}

Test(arena, injected_map_failure_passes_through, .init = arena_setup) {
  int id = ckpt_region_begin("r");
  CUdeviceptr p = 0;
  CUresult rc = CUDA_ERROR_UNKNOWN;
  cr_assert_eq(simdev_fail("cuMemMap", 1, CUDA_ERROR_INVALID_VALUE), 0);
  ut_capture_start();
  cr_assert_not(ckpt_alloc(&p, 4 * UT_MiB, NULL, &rc));
  ut_capture_end();
  /* The handle made for it was released, its range given back. */
  cr_assert_eq(simdev_device_used(0), baseline);
  cr_assert_eq(simdev_calls("cuMemAddressReserve"), simdev_calls("cuMemAddressFree"));
  cr_assert_eq(simdev_calls("cuMemCreate"), simdev_calls("cuMemRelease"));
  cr_assert_eq(ckpt_region_end(), id);
}

/* "Device pointers must stay unique": a mapping freed in stream order on a
 * stream that has not reached the free yet is not handed to another stream;
 * the same stream may take it at once (stream order protects it). */
Test(arena, stream_ordered_free_keeps_pointers_unique, .init = arena_setup, .timeout = 30) {
  CUstream s = NULL;
  cr_assert_eq(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  cr_assert_eq(simdev_stream_set_delay_us(s, 150000), 0);
  int id = ckpt_region_begin("r");
  CUdeviceptr p = 0;
  CUresult rc = CUDA_ERROR_UNKNOWN;
  cr_assert(ckpt_alloc(&p, 4 * UT_MiB, s, &rc));
  /* Work of the first owner still queued on s when it frees. */
  cr_assert_eq(cuMemsetD32Async(p, 0xdeadbeefu, 4 * UT_MiB / 4, s), CUDA_SUCCESS);
  cr_assert(ckpt_free(p, s, false, &rc));
  cr_assert_eq(rc, CUDA_SUCCESS);

  /* Another stream: must get other memory. */
  CUdeviceptr q = 0;
  cr_assert(ckpt_alloc(&q, 4 * UT_MiB, NULL, &rc));
  cr_assert_neq(q, p, "reused a mapping whose free the stream has not reached");
  cr_assert(q + 4 * UT_MiB <= p || p + 4 * UT_MiB <= q);
  cr_assert_eq(ut_stats().mapping_cache_hits, 0);

  /* The same stream: may take it at once. */
  CUdeviceptr r = 0;
  cr_assert(ckpt_alloc(&r, 4 * UT_MiB, s, &rc));
  cr_assert_eq(r, p, "same-stream reuse of a pending free");
  cr_assert_eq(ut_stats().mapping_cache_hits, 1);
  cr_assert_eq(cuStreamSynchronize(s), CUDA_SUCCESS);
  const uint32_t *w = (const uint32_t *)(uintptr_t)r;
  cr_assert_eq(w[0], 0xdeadbeefu);
  cr_assert_eq(w[4 * UT_MiB / 4 - 1], 0xdeadbeefu);
  cr_assert_eq(ckpt_region_end(), id);
  cr_assert(ckpt_free(r, s, false, &rc));
  cr_assert(ckpt_free(q, NULL, false, &rc));
  cr_assert_eq(cuCtxSynchronize(), CUDA_SUCCESS);
  /* Once the streams are past the frees both mappings are cached. */
  cr_assert_eq(ckpt_release_cached(), (int)(8 * UT_MiB));
  cr_assert_eq(simdev_device_used(0), baseline);
  cr_assert_not(simdev_faulted());
}

Test(arena, pending_free_reaches_the_cache_when_the_stream_does, .init = arena_setup, .timeout = 30) {
  CUstream s = NULL;
  cr_assert_eq(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
  cr_assert_eq(simdev_stream_set_delay_us(s, 100000), 0);
  int id = ckpt_region_begin("r");
  CUdeviceptr p = 0;
  CUresult rc;
  cr_assert(ckpt_alloc(&p, 4 * UT_MiB, s, &rc));
  cr_assert_eq(cuMemsetD32Async(p, 1, 16, s), CUDA_SUCCESS);
  cr_assert(ckpt_free(p, s, false, &rc));
  cr_assert_eq(ckpt_release_cached(), 0, "still pending: nothing to release yet");
  cr_assert_eq(simdev_device_used(0), baseline + 4 * UT_MiB);
  cr_assert_eq(cuStreamSynchronize(s), CUDA_SUCCESS);
  CUdeviceptr q = ut_alloc(4 * UT_MiB); /* legacy stream: reuse allowed now */
  cr_assert_eq(q, p);
  cr_assert_eq(ckpt_region_end(), id);
  ut_free(q);
}

Test(arena, huge_request_passes_through, .init = arena_setup) {
  int id = ckpt_region_begin("r");
  CUdeviceptr p = 0;
  CUresult rc = CUDA_ERROR_UNKNOWN;
  ut_capture_start();
  bool a = ckpt_alloc(&p, (size_t)-1, NULL, &rc);
  bool b = ckpt_alloc(&p, (size_t)1 << 50, NULL, &rc);
  ut_capture_end();
  cr_assert_not(a);
  cr_assert_not(b);
  cr_assert_eq(p, 0);
  cr_assert_eq(simdev_device_used(0), baseline);
  cr_assert_eq(ckpt_region_end(), id);
}

/* The live index answers interior look-ups right while allocations come and go. */
Test(arena, live_index_under_churn, .init = arena_setup) {
  enum { N = 24 };
  CUdeviceptr p[N] = {0};
  size_t sz[N];
  int id = ckpt_region_begin("r");
  for (int round = 0; round < 3; round++) {
    for (int i = 0; i < N; i++)
      if (!p[i]) {
        sz[i] = UT_MiB + (size_t)((i * 7 + round * 3) % 5) * UT_MiB + (size_t)i * 4096;
        p[i] = ut_alloc(sz[i]);
      }
    for (int i = 0; i < N; i++) {
      int r = 0;
      cr_assert_eq(ckpt_query((uintptr_t)p[i], &r, NULL), 0);
      cr_assert_eq(ckpt_query((uintptr_t)p[i] + sz[i] - 1, NULL, NULL), 0);
      cr_assert_eq(ckpt_query((uintptr_t)p[i] + sz[i] / 3, NULL, NULL), 0);
      cr_assert(ckpt_maybe_ours(p[i]));
    }
    /* Free every other one (a different half each round). */
    for (int i = round % 2; i < N; i += 2) {
      ut_free(p[i]);
      cr_assert_eq(ckpt_query((uintptr_t)p[i], NULL, NULL), CKPT_ENOENT);
      p[i] = 0;
    }
    for (int i = 0; i < N; i++)
      if (p[i]) cr_assert_eq(ckpt_query((uintptr_t)p[i] + sz[i] - 1, NULL, NULL), 0, "round %d #%d", round, i);
  }
  cr_assert_eq(ckpt_region_end(), id);
  for (int i = 0; i < N; i++)
    if (p[i]) ut_free(p[i]);
  struct ckpt_stats s = ut_stats();
  cr_assert_eq(s.tagged_allocs_live, 0);
  cr_assert_eq(s.tagged_bytes_live, 0);
}

struct churn_arg {
  int thread;
  int failures;
};

static void *churn(void *argp) {
  struct churn_arg *arg = argp;
  CUcontext ctx = NULL;
  if (cuDevicePrimaryCtxRetain(&ctx, 0) != CUDA_SUCCESS || cuCtxSetCurrent(ctx) != CUDA_SUCCESS) {
    arg->failures++;
    return NULL;
  }
  for (int i = 0; i < 40; i++) {
    size_t bytes = (size_t)(1 + (i + arg->thread) % 3) * UT_MiB;
    CUdeviceptr p = 0;
    CUresult rc = CUDA_ERROR_UNKNOWN;
    if (!ckpt_alloc(&p, bytes, NULL, &rc) || rc != CUDA_SUCCESS) {
      arg->failures++;
      continue;
    }
    uint64_t seed = (uint64_t)arg->thread * 1000 + (uint64_t)i;
    ut_fill(p, bytes, seed);
    int res = -1;
    if (ckpt_query((uintptr_t)p + bytes - 1, NULL, &res) != 0 || res != CKPT_DEVICE) arg->failures++;
    if (ut_first_bad(p, bytes, seed) != (size_t)-1) arg->failures++;
    if (!ckpt_free(p, NULL, (i % 2) == 0, &rc) || rc != CUDA_SUCCESS) arg->failures++;
  }
  return NULL;
}

Test(arena, threads_allocate_and_free_concurrently, .init = arena_setup, .timeout = 60) {
  enum { T = 4 };
  pthread_t th[T];
  struct churn_arg args[T];
  int id = ckpt_region_begin("shared");
  for (int i = 0; i < T; i++) {
    args[i] = (struct churn_arg){.thread = i};
    cr_assert_eq(pthread_create(&th[i], NULL, churn, &args[i]), 0);
  }
  for (int i = 0; i < T; i++) {
    pthread_join(th[i], NULL);
    cr_assert_eq(args[i].failures, 0, "thread %d", i);
  }
  cr_assert_eq(ckpt_region_end(), id);
  cr_assert_eq(cuCtxSynchronize(), CUDA_SUCCESS);
  struct ckpt_stats s = ut_stats();
  cr_assert_eq(s.tagged_allocs, T * 40);
  cr_assert_eq(s.tagged_allocs_live, 0);
  cr_assert_eq(s.tagged_bytes_live, 0);
  ckpt_release_cached();
  cr_assert_eq(simdev_device_used(0), baseline);
}

/* The same, with more variables set by the caller first. */
static void setup_after_env(void) {
  ckpt_init();
  cr_assert(ckpt_tagging());
  ut_context();
  baseline = simdev_device_used(0);
}

static void cache_cap_4m(void) {
  arena_env();
  ut_env("CKPT_CACHE_MAX_BYTES", "4M");
  setup_after_env();
}

static void cache_cap_0(void) {
  arena_env();
  ut_env("CKPT_CACHE_MAX_BYTES", "0");
  setup_after_env();
}

static void default_params(void) {
  ut_env_reset();
  setup_after_env();
}

static void small_granularity(void) {
  arena_env();
  ut_env("SIMDEV_GRANULARITY", "64K"); /* read by the simulator on its first call */
  ut_env("SIMDEV_HOST_GRANULARITY", "64K");
  setup_after_env();
}

static void strict_host_granularity(void) {
  arena_env();
  unsetenv("SIMDEV_HOST_GRANULARITY"); /* simdev's strict default: 4 MiB against the device's 2 MiB */
  setup_after_env();
}

/* A tagged VA may be backed by host memory: sizes and alignment follow the
 * larger of the two locations' granularities, and the offload works. */
Test(arena, tagged_sizes_follow_the_host_granularity_too, .init = strict_host_granularity) {
  cr_assert_eq(ckpt_granularity(0), 4 * UT_MiB);
  int id = ckpt_region_begin("r");
  CUdeviceptr p = ut_alloc(2 * UT_MiB + 1);
  cr_assert_eq(ckpt_region_end(), id);
  cr_assert_eq(p % (4 * UT_MiB), 0);
  cr_assert_eq(simdev_device_used(0), baseline + 4 * UT_MiB);
  memset((void *)p, 0x3c, 2 * UT_MiB + 1);
  cr_assert_eq(ckpt_offload(id), 0);
  cr_assert_eq(ckpt_wait(id), 0);
  int res = -1;
  cr_assert_eq(ckpt_query((uintptr_t)p, NULL, &res), 0);
  cr_assert_eq(res, CKPT_HOST);
  cr_assert_eq(((unsigned char *)p)[2 * UT_MiB], 0x3c, "host-backed, same bytes");
  cr_assert_eq(ckpt_restore(id), 0);
  cr_assert_eq(ckpt_wait(id), 0);
  cr_assert_eq(((unsigned char *)p)[0], 0x3c);
  ut_free(p);
}

Test(arena, cache_is_capped, .init = cache_cap_4m) {
  int id = ckpt_region_begin("r");
  CUdeviceptr p[3];
  for (int i = 0; i < 3; i++) p[i] = ut_alloc(4 * UT_MiB);
  cr_assert_eq(ckpt_region_end(), id);
  for (int i = 0; i < 3; i++) ut_free(p[i]);
  struct ckpt_stats s = ut_stats();
  cr_assert_leq(s.mapping_cache_bytes, 4 * UT_MiB, "CKPT_CACHE_MAX_BYTES=4M");
  cr_assert_eq(s.mapping_cache_bytes, 4 * UT_MiB, "up to the cap is kept");
  cr_assert_eq(simdev_device_used(0), baseline + 4 * UT_MiB);
}

Test(arena, cache_cap_0_releases_at_once, .init = cache_cap_0) {
  int id = ckpt_region_begin("r");
  CUdeviceptr p = ut_alloc(4 * UT_MiB);
  cr_assert_eq(ckpt_region_end(), id);
  ut_free(p);
  cr_assert_eq(ut_stats().mapping_cache_bytes, 0);
  cr_assert_eq(simdev_device_used(0), baseline);
}

Test(arena, default_min_bytes_is_4m, .init = default_params) {
  int id = ckpt_region_begin("r");
  CUdeviceptr p = 0;
  CUresult rc;
  cr_assert_not(ckpt_alloc(&p, 4 * UT_MiB - 1, NULL, &rc));
  CUdeviceptr q = ut_alloc(4 * UT_MiB);
  cr_assert_eq(ckpt_region_end(), id);
  ut_free(q);
}

Test(arena, granularity_comes_from_the_driver, .init = small_granularity) {
  cr_assert_eq(ckpt_granularity(0), 64 * 1024);
  int id = ckpt_region_begin("r");
  CUdeviceptr p = ut_alloc(UT_MiB + 1);
  cr_assert_eq(ckpt_region_end(), id);
  cr_assert_eq(p % (64 * 1024), 0);
  cr_assert_eq(simdev_device_used(0), baseline + UT_MiB + 64 * 1024, "rounded up to 64 KiB, not 2 MiB");
  cr_assert_eq(ckpt_query((uintptr_t)p + UT_MiB, NULL, NULL), 0);
  cr_assert_eq(ckpt_query((uintptr_t)p + UT_MiB + 1, NULL, NULL), CKPT_ENOENT);
  ut_free(p);
}
