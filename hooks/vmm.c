/* The VMM primitives (vmm.h). */
#include "vmm.h"

#include "check.h"
#include "core.h"

#define MAXDEV 64
#define DEFAULT_GRANULARITY ((size_t)2 << 20)

/* Bounds of every VA range ever reserved: ckpt_maybe_ours. */
static CUdeviceptr va_lo = ~(CUdeviceptr)0, va_hi;
static int host_location = -1; /* the host location type the driver accepted */

size_t ckpt_vmm_granularity(int device, enum ckpt_vmm_location location) {
  static size_t gran[2][MAXDEV];
  if (device < 0 || device >= MAXDEV) return DEFAULT_GRANULARITY;
  size_t *g = &gran[location == CKPT_VMM_HOST][device];
  if (!*g) {
    CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = device}};
    if (location == CKPT_VMM_HOST) {
      prop.location.type = host_location >= 0 ? (CUmemLocationType)host_location : CU_MEM_LOCATION_TYPE_HOST;
      prop.location.id = 0;
    }
    size_t v = 0;
    if (DRV(cuMemGetAllocationGranularity, &v, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM) != CUDA_SUCCESS || !v)
      v = DEFAULT_GRANULARITY;
    *g = v;
  }
  return *g;
}

CUresult ckpt_vmm_reserve(size_t size, size_t align, CUdeviceptr *va) {
  CUresult r = DRV(cuMemAddressReserve, va, size, align, 0, 0);
  if (r != CUDA_SUCCESS) {
    if (!ckpt_cu_unsupported(r)) CU_FAILED(cuMemAddressReserve, r); /* else the caller says it once */
    return r;
  }
  CUdeviceptr lo = *va, hi = *va + size;
  if (lo < va_lo) __atomic_store_n(&va_lo, lo, __ATOMIC_RELAXED);
  if (hi > va_hi) __atomic_store_n(&va_hi, hi, __ATOMIC_RELAXED);
  return CUDA_SUCCESS;
}

void ckpt_vmm_free_va(CUdeviceptr va, size_t size) {
  CUresult r = DRV(cuMemAddressFree, va, size);
  if (r != CUDA_SUCCESS) CU_FAILED(cuMemAddressFree, r);
}

/* core.h: the preload's first test on every free, lock-free. */
bool ckpt_maybe_ours(CUdeviceptr p) {
  return p >= __atomic_load_n(&va_lo, __ATOMIC_RELAXED) && p < __atomic_load_n(&va_hi, __ATOMIC_RELAXED);
}

CUresult ckpt_vmm_create_device(int device, size_t size, CUmemGenericAllocationHandle *out) {
  CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                              .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = device}};
  return DRV(cuMemCreate, out, size, &prop, 0);
}

CUresult ckpt_vmm_create_host(int device, size_t size, CUmemGenericAllocationHandle *out) {
  (void)device; /* HOST ignores the id; HOST_NUMA uses node 0 (see DESIGN: host placement) */
  static const int types[] = {CU_MEM_LOCATION_TYPE_HOST, CU_MEM_LOCATION_TYPE_HOST_NUMA};
  CUresult r = CUDA_ERROR_NOT_SUPPORTED;
  for (size_t i = 0; i < 2; i++) {
    if (host_location >= 0 && types[i] != host_location) continue;
    CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                .location = {.type = (CUmemLocationType)types[i], .id = 0}};
    r = DRV(cuMemCreate, out, size, &prop, 0);
    if (r == CUDA_SUCCESS) {
      if (host_location < 0) {
        host_location = types[i];
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

CUresult ckpt_vmm_trim_pool(int device) {
  CUmemoryPool pool;
  CUresult r = DRV(cuDeviceGetMemPool, &pool, device);
  return r == CUDA_SUCCESS ? DRV(cuMemPoolTrimTo, pool, 0) : r;
}

CUresult ckpt_vmm_map(CUdeviceptr va, size_t size, CUmemGenericAllocationHandle h, int device) {
  CU_CHECK(DRV(cuMemMap, va, size, 0, h, 0));
  CUmemAccessDesc acc = {.location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = device},
                         .flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
  CUresult r = DRV(cuMemSetAccess, va, size, &acc, 1);
  if (r != CUDA_SUCCESS) {
    CU_FAILED(cuMemSetAccess, r);
    DRV(cuMemUnmap, va, size);
  }
  return r;
}

CUresult ckpt_vmm_unmap(CUdeviceptr va, size_t size) { return DRV(cuMemUnmap, va, size); }
CUresult ckpt_vmm_release(CUmemGenericAllocationHandle h) { return DRV(cuMemRelease, h); }

void ckpt_vmm_teardown(CUdeviceptr va, size_t size, CUmemGenericAllocationHandle h, unsigned what, bool logged) {
  if (what & CKPT_VMM_UNMAP) {
    CUresult r = DRV(cuMemUnmap, va, size);
    if (r != CUDA_SUCCESS && logged) CU_FAILED(cuMemUnmap, r);
  }
  if (what & CKPT_VMM_RELEASE) {
    CUresult r = DRV(cuMemRelease, h);
    if (r != CUDA_SUCCESS && logged) CU_FAILED(cuMemRelease, r);
  }
  if (what & CKPT_VMM_FREE_VA) ckpt_vmm_free_va(va, size);
}

CUresult ckpt_vmm_remap(CUdeviceptr va, size_t size, int device, CUmemGenericAllocationHandle to,
                        CUmemGenericAllocationHandle back, bool *stranded) {
  *stranded = false;
  CUresult r = DRV(cuMemUnmap, va, size);
  if (r != CUDA_SUCCESS) {
    CU_FAILED(cuMemUnmap, r);
    return r;
  }
  r = ckpt_vmm_map(va, size, to, device);
  if (r != CUDA_SUCCESS && ckpt_vmm_map(va, size, back, device) != CUDA_SUCCESS) *stranded = true;
  return r;
}
