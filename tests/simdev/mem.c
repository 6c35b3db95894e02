/* Memory accounting per device and for host-located VMM memory, the registry
 * of mapped address ranges, classic cuMemAlloc memory and pinned host memory. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <sys/mman.h>

#include "simdev_internal.h"

pthread_mutex_t sd_mem_lock = PTHREAD_MUTEX_INITIALIZER;
struct sd_rmap sd_regions;

static size_t dev_used[SD_MAX_DEVICES], dev_cap[SD_MAX_DEVICES];
static size_t host_used, host_cap;
static pthread_once_t caps_once = PTHREAD_ONCE_INIT;

static void caps_init(void)
{
    sd_init();
    for (int d = 0; d < SD_MAX_DEVICES; d++)
        dev_cap[d] = sd_cfg.device_bytes;
    host_cap = sd_cfg.host_bytes;
}

CUresult sd_account_add(int loc, size_t bytes)
{
    pthread_once(&caps_once, caps_init);
    size_t *used = loc == SD_LOC_HOST ? &host_used : loc >= 0 ? &dev_used[loc] : NULL;
    size_t cap = loc == SD_LOC_HOST ? host_cap : loc >= 0 ? dev_cap[loc] : 0;
    if (!used)
        return CUDA_SUCCESS;
    if (bytes > cap || *used > cap - bytes) {
        sd_log("out of memory: %zu bytes asked, %zu of %zu used (%s %d)", bytes, *used, cap,
               loc == SD_LOC_HOST ? "host" : "device", loc);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *used += bytes;
    return CUDA_SUCCESS;
}

void sd_account_sub(int loc, size_t bytes)
{
    if (loc == SD_LOC_HOST)
        host_used -= bytes;
    else if (loc >= 0)
        dev_used[loc] -= bytes;
}

size_t sd_device_capacity(int dev)
{
    pthread_once(&caps_once, caps_init);
    pthread_mutex_lock(&sd_mem_lock);
    size_t cap = dev >= 0 && dev < SD_MAX_DEVICES ? dev_cap[dev] : 0;
    pthread_mutex_unlock(&sd_mem_lock);
    return cap;
}

static void *map_anon(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

CUresult sd_region_create(enum sd_region_kind kind, size_t size, int loc, struct sd_region **out)
{
    size_t len = sd_round_up(size, sd_page);
    if (len < size)
        return CUDA_ERROR_OUT_OF_MEMORY;
    struct sd_region *r = calloc(1, sizeof *r);
    if (!r)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult rc = sd_account_add(loc, len);
    if (rc != CUDA_SUCCESS) {
        free(r);
        return rc;
    }
    void *p = map_anon(len);
    if (!p || !sd_rmap_insert(&sd_regions, (uintptr_t)p, len, r)) {
        if (p)
            munmap(p, len);
        sd_account_sub(loc, len);
        free(r);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *r = (struct sd_region){.kind = kind, .base = (uintptr_t)p, .len = len, .size = size, .loc = loc};
    *out = r;
    return CUDA_SUCCESS;
}

void sd_region_drop(struct sd_region *r)
{
    sd_rmap_remove(&sd_regions, r->base);
    munmap((void *)r->base, r->len);
    sd_account_sub(r->loc, r->len);
    free(r);
}

/* The current context's device, or -1 without one (CUDA_ERROR_INVALID_CONTEXT). */
static int current_device(void)
{
    struct sd_ctx *ctx = sd_ctx_current();
    return ctx ? ctx->dev : -1;
}

/* ---- classic device memory ---- */

CUresult cuMemGetInfo_v2(size_t *free, size_t *total)
{
    SD_ENTER(cuMemGetInfo_v2);
    if (!free || !total)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_once(&caps_once, caps_init);
    int dev = current_device();
    if (dev < 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    pthread_mutex_lock(&sd_mem_lock);
    *total = dev_cap[dev];
    *free = dev_used[dev] < dev_cap[dev] ? dev_cap[dev] - dev_used[dev] : 0;
    pthread_mutex_unlock(&sd_mem_lock);
    return CUDA_SUCCESS;
}

CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    SD_ENTER(cuMemAlloc_v2);
    if (!dptr || bytesize == 0)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult unsafe = sd_capture_unsafe_call();
    if (unsafe != CUDA_SUCCESS)
        return unsafe;
    int dev = current_device();
    if (dev < 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    struct sd_region *r;
    pthread_mutex_lock(&sd_mem_lock);
    CUresult rc = sd_region_create(SD_REGION_CLASSIC, bytesize, dev, &r);
    pthread_mutex_unlock(&sd_mem_lock);
    if (rc != CUDA_SUCCESS)
        return rc;
    *dptr = (CUdeviceptr)r->base;
    sd_log("cuMemAlloc %zu bytes at %#lx on device %d", bytesize, (unsigned long)r->base, dev);
    return CUDA_SUCCESS;
}

/* Frees a region of `kind` starting at p after the implicit synchronization
 * the driver performs for these calls (so in-flight work never faults on it). */
static CUresult free_region(uintptr_t p, enum sd_region_kind kind)
{
    pthread_mutex_lock(&sd_mem_lock);
    struct sd_region *r = sd_rmap_find(&sd_regions, p);
    bool ok = r && r->kind == kind && r->base == p;
    int loc = ok ? r->loc : 0;
    pthread_mutex_unlock(&sd_mem_lock);
    if (!ok)
        return CUDA_ERROR_INVALID_VALUE;

    if (loc >= 0) {
        sd_device_sync(loc);
    } else {
        for (int d = 0; d < sd_cfg.ndev; d++)
            sd_device_sync(d);
    }

    pthread_mutex_lock(&sd_mem_lock);
    r = sd_rmap_find(&sd_regions, p);
    ok = r && r->kind == kind && r->base == p; /* a racing free of the same pointer loses */
    if (ok)
        sd_region_drop(r);
    pthread_mutex_unlock(&sd_mem_lock);
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    SD_ENTER(cuMemFree_v2);
    if (dptr == 0)
        return CUDA_SUCCESS;
    CUresult unsafe = sd_capture_unsafe_call(); /* an implicit synchronization */
    if (unsafe != CUDA_SUCCESS)
        return unsafe;
    sd_log("cuMemFree %#llx", dptr);
    return free_region((uintptr_t)dptr, SD_REGION_CLASSIC);
}

CUresult cuMemGetAddressRange_v2(CUdeviceptr *pbase, size_t *psize, CUdeviceptr dptr)
{
    SD_ENTER(cuMemGetAddressRange_v2);
    uintptr_t base = 0;
    size_t size = 0;
    bool found = false;
    pthread_mutex_lock(&sd_mem_lock);
    struct sd_region *r = sd_rmap_find(&sd_regions, (uintptr_t)dptr);
    if (r && r->kind == SD_REGION_RESERVED) {
        found = sd_vmm_range((uintptr_t)dptr, &base, &size, NULL);
    } else if (r && (uintptr_t)dptr < r->base + r->size &&
               !(r->kind == SD_REGION_POOL && r->state == SD_BLOCK_CACHED)) {
        found = true;
        base = r->base;
        size = r->size;
    }
    pthread_mutex_unlock(&sd_mem_lock);
    if (!found)
        return CUDA_ERROR_NOT_FOUND;
    if (pbase)
        *pbase = (CUdeviceptr)base;
    if (psize)
        *psize = size;
    return CUDA_SUCCESS;
}

CUresult cuPointerGetAttribute(void *data, CUpointer_attribute attribute, CUdeviceptr ptr)
{
    SD_ENTER(cuPointerGetAttribute);
    if (!data)
        return CUDA_ERROR_INVALID_VALUE;
    uintptr_t base = 0;
    size_t size = 0;
    int loc = 0;
    bool found = false, host = false;
    CUmemoryPool pool = NULL;
    pthread_mutex_lock(&sd_mem_lock);
    struct sd_region *r = sd_rmap_find(&sd_regions, (uintptr_t)ptr);
    if (r && r->kind == SD_REGION_RESERVED) {
        found = sd_vmm_range((uintptr_t)ptr, &base, &size, &loc);
        if (found && loc == SD_LOC_HOST)
            loc = 0;
    } else if (r && !(r->kind == SD_REGION_POOL && r->state == SD_BLOCK_CACHED)) {
        found = true;
        base = r->base;
        size = r->size;
        host = r->kind == SD_REGION_PINNED;
        loc = host ? 0 : r->loc;
        pool = (CUmemoryPool)r->pool;
    }
    pthread_mutex_unlock(&sd_mem_lock);
    if (!found)
        return CUDA_ERROR_INVALID_VALUE;

    switch (attribute) {
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
        *(unsigned int *)data = host ? CU_MEMORYTYPE_HOST : CU_MEMORYTYPE_DEVICE;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_DEVICE_POINTER:
        *(CUdeviceptr *)data = ptr;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_HOST_POINTER:
        if (!host)
            return CUDA_ERROR_INVALID_VALUE;
        *(void **)data = (void *)(uintptr_t)ptr;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
        *(int *)data = loc;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR:
        *(CUdeviceptr *)data = (CUdeviceptr)base;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
        *(size_t *)data = size;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE:
        *(CUmemoryPool *)data = pool;
        return CUDA_SUCCESS;
    default:
        return CUDA_ERROR_INVALID_VALUE;
    }
}

/* ---- pinned host memory: mapped memory like the rest, never accounted ---- */

static CUresult host_alloc(void **pp, size_t bytesize, unsigned flags)
{
    const unsigned known = CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP | CU_MEMHOSTALLOC_WRITECOMBINED;
    if (!pp || bytesize == 0 || (flags & ~known))
        return CUDA_ERROR_INVALID_VALUE;
    if (current_device() < 0)
        return CUDA_ERROR_INVALID_CONTEXT; /* pinned memory belongs to a context */
    CUresult unsafe = sd_capture_unsafe_call();
    if (unsafe != CUDA_SUCCESS)
        return unsafe;
    struct sd_region *r;
    pthread_mutex_lock(&sd_mem_lock);
    CUresult rc = sd_region_create(SD_REGION_PINNED, bytesize, SD_LOC_NONE, &r);
    if (rc == CUDA_SUCCESS)
        r->flags = flags;
    pthread_mutex_unlock(&sd_mem_lock);
    if (rc == CUDA_SUCCESS)
        *pp = (void *)r->base;
    return rc;
}

CUresult cuMemAllocHost_v2(void **pp, size_t bytesize)
{
    SD_ENTER(cuMemAllocHost_v2);
    return host_alloc(pp, bytesize, 0);
}

CUresult cuMemHostAlloc(void **pp, size_t bytesize, unsigned int Flags)
{
    SD_ENTER(cuMemHostAlloc);
    return host_alloc(pp, bytesize, Flags);
}

CUresult cuMemFreeHost(void *p)
{
    SD_ENTER(cuMemFreeHost);
    if (!p)
        return CUDA_SUCCESS;
    CUresult unsafe = sd_capture_unsafe_call();
    if (unsafe != CUDA_SUCCESS)
        return unsafe;
    return free_region((uintptr_t)p, SD_REGION_PINNED);
}

CUresult cuMemHostGetDevicePointer_v2(CUdeviceptr *pdptr, void *p, unsigned int Flags)
{
    SD_ENTER(cuMemHostGetDevicePointer_v2);
    if (!pdptr || !p || Flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    /* "will fail if the CU_MEMHOSTALLOC_DEVICEMAP flag was not specified at
     * the time the memory was allocated" (cuMemHostGetDevicePointer). */
    pthread_mutex_lock(&sd_mem_lock);
    struct sd_region *r = sd_rmap_find(&sd_regions, (uintptr_t)p);
    bool ok = r && r->kind == SD_REGION_PINNED && (r->flags & CU_MEMHOSTALLOC_DEVICEMAP);
    pthread_mutex_unlock(&sd_mem_lock);
    if (!ok)
        return CUDA_ERROR_INVALID_VALUE;
    *pdptr = (CUdeviceptr)(uintptr_t)p; /* unified addressing: the same address */
    return CUDA_SUCCESS;
}

CUresult cuMemHostGetFlags(unsigned int *pFlags, void *p)
{
    SD_ENTER(cuMemHostGetFlags);
    if (!pFlags || !p)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&sd_mem_lock);
    struct sd_region *r = sd_rmap_find(&sd_regions, (uintptr_t)p);
    bool ok = r && r->kind == SD_REGION_PINNED;
    if (ok)
        *pFlags = r->flags;
    pthread_mutex_unlock(&sd_mem_lock);
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* Registration changes nothing a simulated device could see. */
CUresult cuMemHostRegister(void *p, size_t bytesize, unsigned int Flags)
{
    SD_ENTER(cuMemHostRegister);
    (void)Flags;
    return p && bytesize ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemHostRegister_v2(void *p, size_t bytesize, unsigned int Flags)
{
    SD_ENTER(cuMemHostRegister_v2);
    (void)Flags;
    return p && bytesize ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemHostUnregister(void *p)
{
    SD_ENTER(cuMemHostUnregister);
    return p ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* ---- test control ---- */

void simdev_set_device_capacity(int dev, size_t bytes)
{
    pthread_once(&caps_once, caps_init);
    if (dev < 0 || dev >= SD_MAX_DEVICES)
        return;
    pthread_mutex_lock(&sd_mem_lock);
    dev_cap[dev] = bytes;
    pthread_mutex_unlock(&sd_mem_lock);
}

void simdev_set_host_capacity(size_t bytes)
{
    pthread_once(&caps_once, caps_init);
    pthread_mutex_lock(&sd_mem_lock);
    host_cap = bytes;
    pthread_mutex_unlock(&sd_mem_lock);
}

size_t simdev_device_used(int dev)
{
    if (dev < 0 || dev >= SD_MAX_DEVICES)
        return 0;
    pthread_mutex_lock(&sd_mem_lock);
    size_t used = dev_used[dev];
    pthread_mutex_unlock(&sd_mem_lock);
    return used;
}

size_t simdev_host_used(void)
{
    pthread_mutex_lock(&sd_mem_lock);
    size_t used = host_used;
    pthread_mutex_unlock(&sd_mem_lock);
    return used;
}
