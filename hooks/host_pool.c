/* Pinned host memory for offloaded data, as host-located VMM handles so that
 * a survivor's own VA can be remapped onto them. Creating them is slow (~0.36 s
 * per GiB on an H200), so blocks are pooled by (device, size) and reused every
 * step; CKPT_HOST_MAX_BYTES caps the pool. */
#include <stdlib.h>

#include "internal.h"

static struct host_block *blocks;
static uint64_t pool_bytes;
static int location_type = -1; /* the host location type the driver accepted */

static CUresult create_handle(size_t size, CUmemGenericAllocationHandle *h) {
  static const int types[] = {CU_MEM_LOCATION_TYPE_HOST, CU_MEM_LOCATION_TYPE_HOST_NUMA};
  CUresult r = CUDA_ERROR_NOT_SUPPORTED;
  for (size_t i = 0; i < 2; i++) {
    if (location_type >= 0 && types[i] != location_type) continue;
    CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                .location = {.type = (CUmemLocationType)types[i], .id = 0}};
    r = DRV(cuMemCreate, h, size, &prop, 0);
    if (r == CUDA_SUCCESS) {
      if (location_type < 0) {
        location_type = types[i];
        CKPT_INFO("host pool uses %s memory", i == 0 ? "CU_MEM_LOCATION_TYPE_HOST" : "CU_MEM_LOCATION_TYPE_HOST_NUMA (node 0)");
      }
      return r;
    }
    if (r == CUDA_ERROR_OUT_OF_MEMORY) return r;
    /* A driver without HOST locations says so; anything else is an error. */
    if (i == 0 && !ckpt_cu_unsupported(r) && r != CUDA_ERROR_INVALID_VALUE) {
      CU_ERROR_ONCE("cuMemCreate of host memory failed (%s): trying CU_MEM_LOCATION_TYPE_HOST_NUMA",
                    ckpt_cu_name(r));
    }
  }
  return r;
}

static void block_destroy(struct host_block *b) {
  DRV(cuMemUnmap, b->va, b->size);
  DRV(cuMemRelease, b->handle);
  ckpt_va_put(b->va, b->size);
  pool_bytes -= b->size;
  ckpt_g.stats.host_pool_bytes = pool_bytes;
  free(b);
}

/* Frees idle blocks of other sizes until `need` more bytes fit under the cap. */
static bool make_room(uint64_t cap, size_t need) {
  for (struct host_block **pp = &blocks; *pp && pool_bytes + need > cap;) {
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

struct host_block *ckpt_host_get(int device, size_t size, CUresult *rc, bool *capped) {
  *rc = CUDA_SUCCESS;
  *capped = false;
  for (struct host_block *b = blocks; b; b = b->next)
    if (!b->in_use && b->device == device && b->size == size) {
      b->in_use = true;
      return b;
    }
  uint64_t cap = ckpt_param_host_max_bytes();
  if (pool_bytes + size > cap && !make_room(cap, size)) {
    *rc = CUDA_ERROR_OUT_OF_MEMORY;
    *capped = true;
    return NULL;
  }
  struct host_block *b = calloc(1, sizeof *b);
  if (!b) {
    *rc = CUDA_ERROR_OUT_OF_MEMORY;
    return NULL;
  }
  b->size = size;
  b->device = device;
  CUresult r;
  CU_TRY_GOTO(create_handle(size, &b->handle), r, fail);
  CU_TRY_GOTO(ckpt_va_get(size, ckpt_granularity(device), &b->va), r, fail_handle);
  CU_TRY_GOTO(ckpt_map(b->va, size, b->handle, device), r, fail_va);
  b->in_use = true;
  b->next = blocks;
  blocks = b;
  pool_bytes += size;
  ckpt_g.stats.host_pool_bytes = pool_bytes;
  return b;
fail_va:
  ckpt_va_put(b->va, size);
fail_handle:
  DRV(cuMemRelease, b->handle);
fail:
  free(b);
  *rc = r;
  return NULL;
}

void ckpt_host_put(struct host_block *b) { b->in_use = false; }

CUresult ckpt_host_map_at(struct host_block *b, CUdeviceptr va) {
  return ckpt_map(va, b->size, b->handle, b->device);
}

void ckpt_host_pool_release_all(void) {
  for (struct host_block **pp = &blocks; *pp;) {
    struct host_block *b = *pp;
    if (!b->in_use) {
      *pp = b->next;
      block_destroy(b);
    } else {
      pp = &b->next;
    }
  }
}
