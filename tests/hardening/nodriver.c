/* No CUDA driver at all: this program is not linked against libcuda, runs
 * with an LD_LIBRARY_PATH that has none, and calls libckpt's API and its
 * exported driver entry points through dlsym, as a framework would. Every
 * call must return (an error where one is due), nothing may crash; badenv.sh
 * checks that at most one line is printed. */
#define _GNU_SOURCE
#define __CUDA_API_VERSION_INTERNAL 1
#include <cuda.h>
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "ckpt.h"

#define FAIL(...) do { fprintf(stderr, "FAIL nodriver: " __VA_ARGS__); fputc('\n', stderr); exit(1); } while (0)

static void *sym(const char *name) {
  void *p = dlsym(RTLD_DEFAULT, name);
  if (!p) FAIL("libckpt not preloaded: no %s", name);
  return p;
}

int main(void) {
  if (dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD) || dlopen("libcuda.so.1", RTLD_NOW))
    FAIL("a libcuda.so.1 is reachable: this test needs an environment without a driver");
  int (*begin)(const char *) = sym("ckpt_region_begin");
  int (*end)(void) = sym("ckpt_region_end");
  int (*query)(uintptr_t, int *, int *) = sym("ckpt_query");
  int (*offload)(int) = sym("ckpt_offload");
  int (*prefetch)(int) = sym("ckpt_prefetch");
  int (*restore)(int) = sym("ckpt_restore");
  int (*restore_ptr)(uintptr_t) = sym("ckpt_restore_ptr");
  int (*wait)(int) = sym("ckpt_wait");
  int (*step)(void) = sym("ckpt_step");
  int (*set_stream)(uintptr_t) = sym("ckpt_set_stream");
  int (*release_cached)(void) = sym("ckpt_release_cached");
  int (*stats_get)(struct ckpt_stats *, size_t) = sym("ckpt_stats_get");
  const char *(*mode)(void) = sym("ckpt_mode");
  CUresult (*mem_alloc)(CUdeviceptr *, size_t) = sym("cuMemAlloc_v2");
  CUresult (*mem_alloc_async)(CUdeviceptr *, size_t, CUstream) = sym("cuMemAllocAsync");
  CUresult (*mem_free)(CUdeviceptr) = sym("cuMemFree_v2");
  CUresult (*mem_get_info)(size_t *, size_t *) = sym("cuMemGetInfo_v2");
  CUresult (*get_proc)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *) =
      sym("cuGetProcAddress_v2");

  if (!mode()) FAIL("ckpt_mode() returned NULL");
  int id = begin("layer");
  if (id <= 0 && id != CKPT_EDISABLED) FAIL("ckpt_region_begin -> %d", id);
  CUdeviceptr p = 0;
  CUresult r = mem_alloc(&p, 8 << 20);
  if (r == CUDA_SUCCESS) FAIL("cuMemAlloc_v2 succeeded without a driver");
  r = mem_alloc_async(&p, 8 << 20, NULL);
  if (r == CUDA_SUCCESS) FAIL("cuMemAllocAsync succeeded without a driver");
  if (mem_free(0x1000) == CUDA_SUCCESS) FAIL("cuMemFree_v2 succeeded without a driver");
  size_t f = 0, t = 0;
  if (mem_get_info(&f, &t) == CUDA_SUCCESS) FAIL("cuMemGetInfo_v2 succeeded without a driver");
  void *fn = NULL;
  if (get_proc("cuMemAlloc", &fn, 12000, 0, NULL) == CUDA_SUCCESS && fn) FAIL("cuGetProcAddress_v2 found a function");
  if (id > 0 && end() != id) FAIL("ckpt_region_end");
  int res = -1, rid = -1;
  if (query(0x1000, &rid, &res) != CKPT_ENOENT) FAIL("ckpt_query of nothing");
  if (id > 0) {
    int rc;
    if ((rc = offload(id)) > 0) FAIL("ckpt_offload -> %d", rc);
    if ((rc = prefetch(id)) > 0) FAIL("ckpt_prefetch -> %d", rc);
    if ((rc = restore(id)) > 0) FAIL("ckpt_restore -> %d", rc);
    if ((rc = wait(id)) > 0) FAIL("ckpt_wait -> %d", rc);
  }
  if (restore_ptr(0x1000) != CKPT_ENOENT) FAIL("ckpt_restore_ptr of nothing");
  if (step() > 0) FAIL("ckpt_step");
  if (set_stream(0) > 0) FAIL("ckpt_set_stream");
  if (release_cached() < 0 && release_cached() != CKPT_EDISABLED) FAIL("ckpt_release_cached");
  struct ckpt_stats st;
  if (stats_get(&st, sizeof st) != 0) FAIL("ckpt_stats_get");
  if (st.tagged_allocs != 0) FAIL("tagged %llu allocations without a driver", (unsigned long long)st.tagged_allocs);
  return 0;
}
