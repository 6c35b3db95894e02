/* The VMM primitives (vmm.h). */
#include "vmm.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "core.h"

#define MAXDEV 64
#define DEFAULT_GRANULARITY ((size_t)2 << 20)
#define NOT_READY_TRIES 8 /* a map or access answering NOT_READY is retried this often */

/* Bounds of every VA range ever reserved: ckpt_maybe_ours. */
static CUdeviceptr va_lo = ~(CUdeviceptr)0, va_hi;
static pthread_mutex_t probe_lock = PTHREAD_MUTEX_INITIALIZER; /* granularities, host locations */

/* The host locations `device`'s host memory may be created at, in the order
 * tried; `cur` the one that worked last. */
struct host_loc {
  bool probed;
  int n, cur;
  CUmemLocation cand[3];
  size_t gran; /* the largest host granularity of the candidates */
  char said[48];
};
static struct host_loc hosts[MAXDEV];
void (*ckpt_vmm_host_create_hook)(void);

static size_t query_granularity(CUmemLocation loc) {
  CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED, .location = loc};
  size_t v = 0;
  if (DRV(cuMemGetAllocationGranularity, &v, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM) != CUDA_SUCCESS) return 0;
  return v;
}

static void describe(const CUmemLocation *l, char *buf, size_t n) {
  if (l->type == CU_MEM_LOCATION_TYPE_HOST_NUMA) snprintf(buf, n, "HOST_NUMA node %d", l->id);
  else snprintf(buf, n, "HOST");
}

/* probe_lock held. The device's host NUMA node first (DESIGN: host
 * placement; HOST ignores the id), then HOST, then node 0. A candidate the
 * granularity query refuses is not one (unless none answers). */
static struct host_loc *host_loc_locked(int device) {
  struct host_loc *h = &hosts[device];
  if (h->probed) return h;
  int numa = -1;
  if (DRV(cuDeviceGetAttribute, &numa, CU_DEVICE_ATTRIBUTE_HOST_NUMA_ID, device) != CUDA_SUCCESS) numa = -1;
  CUmemLocation all[3];
  int n = 0;
  if (numa >= 0) all[n++] = (CUmemLocation){.type = CU_MEM_LOCATION_TYPE_HOST_NUMA, .id = numa};
  all[n++] = (CUmemLocation){.type = CU_MEM_LOCATION_TYPE_HOST, .id = 0};
  if (numa != 0) all[n++] = (CUmemLocation){.type = CU_MEM_LOCATION_TYPE_HOST_NUMA, .id = 0};
  for (int i = 0; i < n; i++) {
    size_t g = query_granularity(all[i]);
    if (!g) continue;
    h->cand[h->n++] = all[i];
    if (g > h->gran) h->gran = g;
  }
  if (h->n == 0) { /* the driver does not say: try them all, creation decides */
    for (int i = 0; i < n; i++) h->cand[i] = all[i];
    h->n = n;
  }
  snprintf(h->said, sizeof h->said, "not probed yet");
  h->probed = true;
  return h;
}

size_t ckpt_vmm_granularity(int device, enum ckpt_vmm_location location) {
  static size_t gran[2][MAXDEV];
  if (device < 0 || device >= MAXDEV) return DEFAULT_GRANULARITY;
  if (location == CKPT_VMM_BOTH) {
    size_t d = ckpt_vmm_granularity(device, CKPT_VMM_DEVICE), h = ckpt_vmm_granularity(device, CKPT_VMM_HOST);
    return d > h ? d : h;
  }
  size_t *g = &gran[location == CKPT_VMM_HOST][device];
  size_t v = __atomic_load_n(g, __ATOMIC_ACQUIRE);
  if (v) return v;
  pthread_mutex_lock(&probe_lock);
  if (location == CKPT_VMM_HOST) {
    v = host_loc_locked(device)->gran;
    if (!v) v = ckpt_vmm_granularity(device, CKPT_VMM_DEVICE); /* no host memory here anyway */
  } else {
    v = query_granularity((CUmemLocation){.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = device});
    if (!v) v = DEFAULT_GRANULARITY;
  }
  __atomic_store_n(g, v, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&probe_lock);
  return v;
}

CUresult ckpt_vmm_reserve(size_t size, size_t align, CUdeviceptr *va) {
  CUresult r = DRV(cuMemAddressReserve, va, size, align, 0, 0);
  if (r != CUDA_SUCCESS) {
    if (!ckpt_cu_unsupported(r)) CU_FAILED(cuMemAddressReserve, r); /* else the caller says it once */
    return r;
  }
  /* The pool's grower reserves too, without the core lock: widen atomically. */
  CUdeviceptr lo = *va, hi = *va + size, cur = __atomic_load_n(&va_lo, __ATOMIC_RELAXED);
  while (lo < cur && !__atomic_compare_exchange_n(&va_lo, &cur, lo, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
  cur = __atomic_load_n(&va_hi, __ATOMIC_RELAXED);
  while (hi > cur && !__atomic_compare_exchange_n(&va_hi, &cur, hi, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
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
  if (device < 0 || device >= MAXDEV) return CUDA_ERROR_INVALID_DEVICE;
  pthread_mutex_lock(&probe_lock);
  struct host_loc *h = host_loc_locked(device);
  int cur = h->cur, n = h->n;
  CUmemLocation cand[3];
  for (int i = 0; i < n; i++) cand[i] = h->cand[i];
  pthread_mutex_unlock(&probe_lock);
  CUresult r = CUDA_ERROR_NOT_SUPPORTED;
  if (ckpt_vmm_host_create_hook) ckpt_vmm_host_create_hook();
  for (int i = cur; i < n; i++) {
    CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED, .location = cand[i]};
    r = DRV(cuMemCreate, out, size, &prop, 0);
    if (r == CUDA_SUCCESS) {
      pthread_mutex_lock(&probe_lock);
      bool first = h->cur != i || strcmp(h->said, "not probed yet") == 0;
      h->cur = i;
      describe(&cand[i], h->said, sizeof h->said);
      pthread_mutex_unlock(&probe_lock);
      if (first) CKPT_INFO("host pool of device %d: CU_MEM_LOCATION_TYPE_%s", device, h->said);
      return r;
    }
    if (r == CUDA_ERROR_OUT_OF_MEMORY) return r;
    /* A driver without this location says so; anything else is an error. */
    if (i + 1 < n && !ckpt_cu_unsupported(r) && r != CUDA_ERROR_INVALID_VALUE) {
      char d[48];
      describe(&cand[i], d, sizeof d);
      CU_ERROR_ONCE("cuMemCreate of host memory at %s failed (%s): trying the next host location", d,
                    ckpt_cu_name(r));
    }
  }
  return r;
}

const char *ckpt_vmm_host_placement(int device) {
  if (device < 0 || device >= MAXDEV || !hosts[device].probed) return "not probed yet";
  return hosts[device].said;
}

CUresult ckpt_vmm_trim_pool(int device) {
  CUmemoryPool pool;
  CUresult r = DRV(cuDeviceGetMemPool, &pool, device);
  return r == CUDA_SUCCESS ? DRV(cuMemPoolTrimTo, pool, 0) : r;
}

ckpt_devmask ckpt_vmm_pool_access(int device) {
  static int ndev; /* devices of the process, asked once */
  ckpt_devmask m = CKPT_DEV_BIT(device);
  int n = __atomic_load_n(&ndev, __ATOMIC_RELAXED);
  if (!n) {
    if (DRV(cuDeviceGetCount, &n) != CUDA_SUCCESS || n < 1) n = 1;
    __atomic_store_n(&ndev, n, __ATOMIC_RELAXED);
  }
  if (n == 1) return m;
  CUmemoryPool pool;
  if (DRV(cuDeviceGetMemPool, &pool, device) != CUDA_SUCCESS) return m;
  for (int d = 0; d < n && d < 64; d++) {
    if (d == device) continue;
    CUmemLocation loc = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = d};
    CUmemAccess_flags f = CU_MEM_ACCESS_FLAGS_PROT_NONE;
    if (DRV(cuMemPoolGetAccess, &f, pool, &loc) == CUDA_SUCCESS && f == CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
      m |= CKPT_DEV_BIT(d);
  }
  return m;
}

CUresult ckpt_vmm_set_access(CUdeviceptr va, size_t size, ckpt_devmask grant, ckpt_devmask revoke) {
  CUmemAccessDesc acc[64];
  size_t n = 0;
  for (int d = 0; d < 64; d++) {
    ckpt_devmask b = (ckpt_devmask)1 << d;
    if (!((grant | revoke) & b)) continue;
    acc[n++] = (CUmemAccessDesc){.location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = d},
                                 .flags = grant & b ? CU_MEM_ACCESS_FLAGS_PROT_READWRITE : CU_MEM_ACCESS_FLAGS_PROT_NONE};
  }
  return n ? DRV(cuMemSetAccess, va, size, acc, n) : CUDA_SUCCESS;
}

CUresult ckpt_vmm_map(CUdeviceptr va, size_t size, CUmemGenericAllocationHandle h, ckpt_devmask access) {
  CU_CHECK(DRV(cuMemMap, va, size, 0, h, 0));
  CUresult r = ckpt_vmm_set_access(va, size, access, 0);
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

static void pause_briefly(void) {
  struct timespec ts = {0, 50 * 1000};
  nanosleep(&ts, NULL);
}

/* ckpt_vmm_map, retrying NOT_READY (each failure logged by ckpt_vmm_map). */
static CUresult map_retrying(CUdeviceptr va, size_t size, CUmemGenericAllocationHandle h, ckpt_devmask access) {
  CUresult r;
  for (int i = 0; (r = ckpt_vmm_map(va, size, h, access)) == CUDA_ERROR_NOT_READY && i < NOT_READY_TRIES; i++)
    pause_briefly();
  return r;
}

enum ckpt_remap ckpt_vmm_map_either(CUdeviceptr va, size_t size, ckpt_devmask access,
                                    CUmemGenericAllocationHandle to, CUmemGenericAllocationHandle back,
                                    CUresult *rc) {
  *rc = map_retrying(va, size, to, access);
  if (*rc == CUDA_SUCCESS) return CKPT_REMAP_TO;
  if (back && map_retrying(va, size, back, access) == CUDA_SUCCESS) return CKPT_REMAP_BACK;
  return CKPT_REMAP_NONE;
}

enum ckpt_remap ckpt_vmm_remap(CUdeviceptr va, size_t size, ckpt_devmask access, CUmemGenericAllocationHandle to,
                               CUmemGenericAllocationHandle back, CUresult *rc) {
  CUresult r;
  for (int i = 0; (r = DRV(cuMemUnmap, va, size)) == CUDA_ERROR_NOT_READY && i < NOT_READY_TRIES; i++)
    pause_briefly();
  if (r != CUDA_SUCCESS) { /* still mapped onto `back`: nothing moved */
    CU_FAILED(cuMemUnmap, r);
    *rc = r;
    return CKPT_REMAP_BACK;
  }
  if (!to) { /* nothing to map (a peer slice): va stays unmapped, as asked */
    *rc = CUDA_SUCCESS;
    return CKPT_REMAP_TO;
  }
  return ckpt_vmm_map_either(va, size, access, to, back, rc);
}
