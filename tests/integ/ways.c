/* The three ways a program reaches the driver all land in libckpt's hooks:
 * (a) linked symbols, (b) dlopen + dlsym, (c) cuGetProcAddress(_v2), each
 * with its per-thread-stream (_ptsz) variant. Run under LD_PRELOAD. */
#include "harness.h"

typedef CUresult (*alloc_async_fn)(CUdeviceptr *, size_t, CUstream);
typedef CUresult (*free_async_fn)(CUdeviceptr, CUstream);

/* Allocates inside a region through `alloc`, checks it was hooked (the hook
 * counter moved) and tagged, frees it through `fre`. */
static void exercise(const char *way, alloc_async_fn alloc, free_async_fn fre, CUstream s) {
  struct ckpt_stats before = ck_stats();
  int id = ck.region_begin(way);
  CHECK(id > 0);
  CUdeviceptr p = 0;
  CU(alloc(&p, 8 * MiB, s));
  CHECK(ck.region_end() == id);
  struct ckpt_stats after = ck_stats();
  CHECK(after.hooked_calls > before.hooked_calls, "%s: not hooked", way);
  CHECK(region_of(p) == id, "%s: not tagged", way);
  CU(fre(p, s));
  CU(cuStreamSynchronize(s));
  CHECK(residency(p) == CKPT_UNTAGGED, "%s: still tagged after free", way);
}

int main(void) {
  ck_load();
  ctx_setup();
  CUstream s;
  CU(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));

  /* (a) linked: the program's own references resolve to the preload. */
  exercise("linked", cuMemAllocAsync, cuMemFreeAsync, s);
  exercise("linked_ptsz", cuMemAllocAsync_ptsz, cuMemFreeAsync_ptsz, s);

  /* (b) dlopen + dlsym, as the CUDA runtime and ctypes do. */
  void *h = dlopen("libcuda.so.1", RTLD_NOW);
  CHECK(h != NULL, "%s", dlerror());
  alloc_async_fn a = (alloc_async_fn)dlsym(h, "cuMemAllocAsync");
  free_async_fn f = (free_async_fn)dlsym(h, "cuMemFreeAsync");
  CHECK(a && f);
  exercise("dlsym", a, f, s);
  a = (alloc_async_fn)dlsym(h, "cuMemAllocAsync_ptsz");
  f = (free_async_fn)dlsym(h, "cuMemFreeAsync_ptsz");
  CHECK(a && f);
  exercise("dlsym_ptsz", a, f, 0); /* stream 0 = this thread's default stream */
  /* A symbol we do not hook comes back untouched (the driver's own). */
  void *real_sync = dlsym(h, "cuStreamSynchronize");
  CHECK(real_sync != NULL);

  /* (c) cuGetProcAddress_v2 found through dlsym, then ~everything through it. */
  typedef CUresult (*gpa_v2_fn)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);
  gpa_v2_fn gpa = (gpa_v2_fn)dlsym(h, "cuGetProcAddress_v2");
  CHECK(gpa != NULL);
  CUdriverProcAddressQueryResult st = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
  void *pa = NULL, *pf = NULL;
  CU(gpa("cuMemAllocAsync", &pa, 13000, CU_GET_PROC_ADDRESS_DEFAULT, &st));
  CHECK(st == CU_GET_PROC_ADDRESS_SUCCESS);
  CU(gpa("cuMemFreeAsync", &pf, 13000, CU_GET_PROC_ADDRESS_DEFAULT, &st));
  CHECK(pa == dlsym(RTLD_DEFAULT, "cuMemAllocAsync"), "look-up must give our wrapper");
  exercise("procaddr", (alloc_async_fn)pa, (free_async_fn)pf, s);
  void *pa_ptsz = NULL, *pf_ptsz = NULL;
  CU(gpa("cuMemAllocAsync", &pa_ptsz, 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &st));
  CU(gpa("cuMemFreeAsync", &pf_ptsz, 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &st));
  CHECK(pa_ptsz != pa, "per-thread look-up must give the _ptsz variant");
  CHECK(pa_ptsz == dlsym(RTLD_DEFAULT, "cuMemAllocAsync_ptsz"), "per-thread look-up must give our _ptsz wrapper");
  exercise("procaddr_ptsz", (alloc_async_fn)pa_ptsz, (free_async_fn)pf_ptsz, 0);

  /* cuGetProcAddress asked for itself returns the wrapper, so later look-ups stay hooked. */
  void *self = NULL;
  CU(gpa("cuGetProcAddress", &self, 13000, 0, &st));
  CHECK(self == (void *)gpa, "cuGetProcAddress must return our cuGetProcAddress_v2");
  void *old = NULL;
  CU(gpa("cuGetProcAddress", &old, 11030, 0, &st));
  CHECK(old == dlsym(RTLD_DEFAULT, "cuGetProcAddress"), "pre-12.0 callers get the 4-argument wrapper");
  typedef CUresult (*gpa_fn)(const char *, void **, int, cuuint64_t);
  void *pa_old = NULL;
  CU(((gpa_fn)old)("cuMemAllocAsync", &pa_old, 11030, 0));
  CHECK(pa_old == pa);

  /* Versioned names: cuMemAlloc from 3.2 on is cuMemAlloc_v2, our wrapper. */
  void *malloc_v2 = NULL;
  CU(gpa("cuMemAlloc", &malloc_v2, 13000, 0, &st));
  CHECK(malloc_v2 == dlsym(RTLD_DEFAULT, "cuMemAlloc_v2"));
  void *meminfo = NULL;
  CU(gpa("cuMemGetInfo", &meminfo, 13000, 0, &st));
  CHECK(meminfo == dlsym(RTLD_DEFAULT, "cuMemGetInfo_v2"));
  /* An unknown name is the driver's answer, passed through. */
  void *none = NULL;
  CHECK(gpa("cuNoSuchFunction", &none, 13000, 0, &st) != CUDA_SUCCESS);
  CHECK(st == CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);

  /* Synchronous path and allocations from an explicit pool (passed through). */
  int id = ck.region_begin("sync");
  CUdeviceptr p;
  CU(cuMemAlloc_v2(&p, 8 * MiB));
  CHECK(region_of(p) == id);
  CUmemoryPool pool;
  CU(cuDeviceGetDefaultMemPool(&pool, 0));
  CUdeviceptr q;
  CU(cuMemAllocFromPoolAsync(&q, 8 * MiB, pool, s));
  CHECK(residency(q) == CKPT_UNTAGGED, "pool allocations keep the pool's properties: not tagged");
  ck.region_end();
  CU(cuMemFree_v2(p));
  CU(cuMemFreeAsync(q, s));
  CU(cuStreamSynchronize(s));

  /* cuMemGetInfo goes through the hook and feeds the stats. */
  size_t fr, tot;
  CU(cuMemGetInfo_v2(&fr, &tot));
  CHECK(ck_stats().device_used_now == tot - fr);

  /* Streams are known whichever way they are created and forgotten when
   * destroyed; submissions through each way reach the submission wrappers. */
  typedef CUresult (*create_fn)(CUstream *, unsigned);
  typedef CUresult (*destroy_fn)(CUstream);
  void *pcreate = NULL, *pdestroy = NULL, *plaunch = NULL;
  CU(gpa("cuStreamCreate", &pcreate, 13000, 0, &st));
  CHECK(pcreate == dlsym(RTLD_DEFAULT, "cuStreamCreate"), "cuStreamCreate look-up must give our wrapper");
  CU(gpa("cuStreamDestroy", &pdestroy, 13000, 0, &st));
  CHECK(pdestroy == dlsym(RTLD_DEFAULT, "cuStreamDestroy_v2"), "cuStreamDestroy look-up must give _v2's wrapper");
  CU(gpa("cuLaunchHostFunc", &plaunch, 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &st));
  CHECK(plaunch == dlsym(RTLD_DEFAULT, "cuLaunchHostFunc_ptsz"), "per-thread look-up must give our _ptsz wrapper");
  void *pwait = NULL;
  CU(gpa("cuStreamWaitValue32", &pwait, 12000, 0, &st));
  CHECK(pwait == dlsym(RTLD_DEFAULT, "cuStreamWaitValue32_v2"), "newest version the caller admits");
  CU(gpa("cuStreamWaitValue32", &pwait, 10000, 0, &st));
  CHECK(pwait == dlsym(RTLD_DEFAULT, "cuStreamWaitValue32"), "older callers get the older entry point");
  uint64_t known = ck_stats().streams_known;
  CUstream s1, s2, s3;
  CU(((create_fn)pcreate)(&s1, CU_STREAM_NON_BLOCKING));
  CU(((create_fn)dlsym(h, "cuStreamCreate"))(&s2, CU_STREAM_NON_BLOCKING));
  CU(cuStreamCreateWithPriority(&s3, CU_STREAM_NON_BLOCKING, 0));
  CHECK(ck_stats().streams_known == known + 3, "streams known %llu, expected %llu",
        (unsigned long long)ck_stats().streams_known, (unsigned long long)known + 3);
  CU(((destroy_fn)pdestroy)(s1));
  CU(((destroy_fn)dlsym(h, "cuStreamDestroy_v2"))(s2));
  CU(cuStreamDestroy_v2(s3));
  CHECK(ck_stats().streams_known == known, "destroyed streams are forgotten");
  dlclose(h);

  /* dlsym(RTLD_NEXT) from the program: relative to the program, not libckpt. */
  CHECK(dlsym(RTLD_NEXT, "puts") == dlsym(RTLD_DEFAULT, "puts"));
  CHECK(dlsym(RTLD_NEXT, "ckpt_no_such_symbol") == NULL);
  printf("ways: ok\n");
  return 0;
}
