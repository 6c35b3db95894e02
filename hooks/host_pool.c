/* The host store (store.h): pinned host memory for offloaded data, as
 * host-located VMM handles so that a survivor's own VA can be remapped onto
 * them. Creating them is slow (~0.36 s per GiB on an H200), so blocks are
 * pooled by (device, size) and reused every step; CKPT_HOST_MAX_BYTES caps
 * the pool. */
#include <stdlib.h>

#include "check.h"
#include "params.h"
#include "state.h"
#include "store.h"
#include "vmm.h"

struct host_block {
  struct ckpt_held held; /* held.va: the block's own mapping, the copy engine's view */
  size_t size;
  int device;
  bool in_use;
  struct host_block *next;
};

static struct host_block *blocks;
static uint64_t pool_bytes;

static void block_destroy(struct host_block *b) {
  ckpt_vmm_teardown(b->held.va, b->size, b->held.handle, CKPT_VMM_UNMAP | CKPT_VMM_RELEASE | CKPT_VMM_FREE_VA,
                    false);
  pool_bytes -= b->size;
  ckpt_g.stats.host_pool_bytes = pool_bytes;
  free(b);
}

/* Frees idle blocks until `need` more bytes fit under `cap` (all, cap 0). */
static bool make_room(uint64_t cap, size_t need) {
  for (struct host_block **pp = &blocks; *pp && (cap == 0 || pool_bytes + need > cap);) {
    struct host_block *b = *pp;
    if (!b->in_use) {
      *pp = b->next;
      block_destroy(b);
    } else {
      pp = &b->next;
    }
  }
  return pool_bytes + need <= cap;
}

static struct host_block *block_get(int device, size_t size, struct ckpt_store_fail *fail) {
  for (struct host_block *b = blocks; b; b = b->next)
    if (!b->in_use && b->device == device && b->size == size) {
      b->in_use = true;
      return b;
    }
  uint64_t cap = ckpt_param_host_max_bytes();
  if (pool_bytes + size > cap && !make_room(cap, size)) {
    fail->rc = CUDA_ERROR_OUT_OF_MEMORY;
    fail->capped = true;
    return NULL;
  }
  struct host_block *b = calloc(1, sizeof *b);
  if (!b) {
    fail->rc = CUDA_ERROR_OUT_OF_MEMORY;
    return NULL;
  }
  b->held.store = &ckpt_host_store;
  b->size = size;
  b->device = device;
  CUresult r;
  CU_TRY_GOTO(ckpt_vmm_create_host(device, size, &b->held.handle), r, fail);
  CU_TRY_GOTO(ckpt_vmm_reserve(size, ckpt_vmm_granularity(device, CKPT_VMM_DEVICE), &b->held.va), r, fail_handle);
  CU_TRY_GOTO(ckpt_vmm_map(b->held.va, size, b->held.handle, device), r, fail_va);
  b->in_use = true;
  b->next = blocks;
  blocks = b;
  pool_bytes += size;
  ckpt_g.stats.host_pool_bytes = pool_bytes;
  ckpt_g.stats.store_allocs++;
  return b;
fail_va:
  ckpt_vmm_free_va(b->held.va, size);
fail_handle:
  ckpt_vmm_release(b->held.handle);
fail:
  free(b);
  fail->rc = r;
  return NULL;
}

static struct ckpt_held *host_put(int device, size_t size, CUdeviceptr src, size_t bytes, CUstream stream,
                                  struct ckpt_store_fail *fail) {
  *fail = (struct ckpt_store_fail){.rc = CUDA_SUCCESS};
  struct host_block *b = block_get(device, size, fail);
  if (!b) return NULL;
  CUresult r = DRV(cuMemcpyDtoDAsync_v2, b->held.va, src, bytes, stream);
  if (r != CUDA_SUCCESS) {
    CU_FAILED(cuMemcpyDtoDAsync_v2, r);
    b->in_use = false;
    *fail = (struct ckpt_store_fail){.rc = r, .copy = true};
    return NULL;
  }
  return &b->held;
}

static CUresult host_get(struct ckpt_held *h, CUdeviceptr dst, size_t bytes, CUstream stream) {
  CUresult r = DRV(cuMemcpyDtoDAsync_v2, dst, h->va, bytes, stream);
  if (r != CUDA_SUCCESS) CU_FAILED(cuMemcpyDtoDAsync_v2, r);
  return r;
}

static void host_drop(struct ckpt_held *h) { ((struct host_block *)h)->in_use = false; }

static void host_release_idle(void) { make_room(0, 0); }

const struct ckpt_store ckpt_host_store = {
    .name = "host",
    .put = host_put,
    .get = host_get,
    .drop = host_drop,
    .release_idle = host_release_idle,
};
