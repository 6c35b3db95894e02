/* Virtual memory management. A reservation is PROT_NONE address space; a
 * physical allocation is a memfd of its size; cuMemMap maps the memfd over
 * the reservation (still inaccessible) and cuMemSetAccess opens it. Physical
 * memory is closed and un-accounted once its handle is released and no
 * mapping uses it, as with the driver. Everything here is under sd_mem_lock. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "simdev_internal.h"

#define HOST_SLOT SD_MAX_DEVICES /* access[] index of host access */

struct sd_phys {
    unsigned long long id; /* the CUmemGenericAllocationHandle */
    int fd;
    size_t size;
    int loc;
    CUmemAllocationProp prop;
    unsigned long handle_refs; /* cuMemCreate and cuMemRetainAllocationHandle, less cuMemRelease */
    unsigned long maps;
};

struct sd_mapping {
    uintptr_t base;
    size_t size;
    struct sd_phys *phys;
    struct sd_region *resv;
    unsigned long long access[SD_MAX_DEVICES + 1]; /* CUmemAccess_flags per device, then host */
};

static struct sd_rmap handles;  /* id -> sd_phys */
static struct sd_rmap mappings; /* address -> sd_mapping */
static unsigned long long next_handle = 1;
static pthread_once_t fd_limit_once = PTHREAD_ONCE_INIT;

/* Timing only: a GPU's physical memory exists once cuMemCreate returns, so
 * the first write into a fresh allocation costs the device nothing. A memfd's
 * pages are made at first touch (~1.5 ms per 4 MiB, in whichever stream
 * worker touches them first): every set or copy into fresh memory was slower
 * than into reused memory, which charged the device for libckpt's releases.
 * So device-located memory up to 64 MiB is allocated here, on the caller's
 * thread, as the driver does it in cuMemCreate (tests create GiBs they never
 * touch: those stay lazy). A failure only leaves the pages to first touch;
 * no access rule changes. */
static void populate_fd(int fd, size_t size, int loc)
{
    if (loc != SD_LOC_HOST && size <= (64u << 20))
        (void)fallocate(fd, 0, 0, (off_t)size);
}

static struct sd_phys *phys_lookup(CUmemGenericAllocationHandle handle)
{
    struct sd_phys *p = sd_rmap_find(&handles, (uintptr_t)handle);
    return p && p->id == handle ? p : NULL;
}

/* A handle is usable while it has not been released (mappings alone keep only the memory). */
static struct sd_phys *live_handle(CUmemGenericAllocationHandle handle)
{
    struct sd_phys *p = phys_lookup(handle);
    return p && p->handle_refs > 0 ? p : NULL;
}

static void phys_maybe_free(struct sd_phys *p)
{
    if (p->handle_refs > 0 || p->maps > 0)
        return;
    sd_rmap_remove(&handles, (uintptr_t)p->id);
    close(p->fd);
    sd_account_sub(p->loc, p->size);
    sd_log("physical allocation %llu (%zu bytes) returned", p->id, p->size);
    free(p);
}

static CUresult location_of(const CUmemLocation *l, int *loc)
{
    switch (l->type) {
    case CU_MEM_LOCATION_TYPE_DEVICE:
        if (!sd_dev_valid(l->id))
            return CUDA_ERROR_INVALID_DEVICE;
        *loc = l->id;
        return CUDA_SUCCESS;
    case CU_MEM_LOCATION_TYPE_HOST: /* the id is ignored (cuMemCreate) */
    case CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT:
        *loc = SD_LOC_HOST;
        return CUDA_SUCCESS;
    case CU_MEM_LOCATION_TYPE_HOST_NUMA:
        /* "id must specify the NUMA ID of the CPU. On systems where NUMA is
         * not available ... must be set to 0" (cuMemCreate): ids are checked. */
        if (l->id < 0 || l->id >= sd_cfg.host_numa_nodes)
            return CUDA_ERROR_INVALID_VALUE;
        *loc = SD_LOC_HOST;
        return CUDA_SUCCESS;
    default:
        return CUDA_ERROR_INVALID_VALUE;
    }
}

/* cuMemCreate's rules on the properties beyond the location (cuda.h,
 * cuMemCreate): HOST_NUMA_CURRENT is refused; "HOST allocations are not IPC
 * capable and requestedHandleTypes must be 0, any other value will result in
 * CUDA_ERROR_INVALID_VALUE". */
static CUresult create_location(const CUmemAllocationProp *prop, int *loc)
{
    if (prop->location.type == CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT)
        return CUDA_ERROR_INVALID_VALUE;
    if (prop->location.type == CU_MEM_LOCATION_TYPE_HOST && prop->requestedHandleTypes != 0)
        return CUDA_ERROR_INVALID_VALUE;
    return location_of(&prop->location, loc);
}

/* Each location type has its own granularity (cuMemGetAllocationGranularity
 * takes the properties): device memory sd_cfg.granularity, host memory
 * sd_cfg.host_granularity. */
static size_t granularity_of(int loc)
{
    return loc == SD_LOC_HOST ? sd_cfg.host_granularity : sd_cfg.granularity;
}

static bool aligned_to(uintptr_t v, size_t g)
{
    return (v & (g - 1)) == 0;
}

static bool aligned(uintptr_t v)
{
    return (v & (sd_cfg.granularity - 1)) == 0;
}

/* The mappings that exactly tile [ptr, ptr + size): index of the first and
 * count, or false when the range is not made of whole, adjacent mappings. */
static bool whole_mappings(uintptr_t ptr, size_t size, size_t *first, size_t *count)
{
    size_t i = sd_rmap_lower(&mappings, ptr);
    uintptr_t at = ptr, end = ptr + size;
    size_t n = 0;
    if (size == 0 || end < ptr)
        return false;
    while (at < end && i + n < mappings.n && mappings.v[i + n].base == at) {
        at += mappings.v[i + n].size;
        n++;
    }
    if (at != end)
        return false;
    *first = i;
    *count = n;
    return true;
}

bool sd_vmm_range(uintptr_t addr, uintptr_t *base, size_t *size, int *loc)
{
    struct sd_mapping *m = sd_rmap_find(&mappings, addr);
    if (!m)
        return false;
    *base = m->base;
    *size = m->size;
    if (loc)
        *loc = m->phys->loc;
    return true;
}

CUresult cuMemGetAllocationGranularity(size_t *granularity, const CUmemAllocationProp *prop,
                                       CUmemAllocationGranularity_flags option)
{
    SD_ENTER(cuMemGetAllocationGranularity);
    int loc;
    if (!granularity || !prop ||
        (option != CU_MEM_ALLOC_GRANULARITY_MINIMUM && option != CU_MEM_ALLOC_GRANULARITY_RECOMMENDED))
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = location_of(&prop->location, &loc);
    if (rc != CUDA_SUCCESS)
        return rc;
    *granularity = granularity_of(loc);
    return CUDA_SUCCESS;
}

/* ---- reservations ---- */

static void *reserve_at(uintptr_t hint, size_t size)
{
    void *p = mmap((void *)hint, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE,
                   -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    if ((uintptr_t)p != hint) { /* a kernel without MAP_FIXED_NOREPLACE took it as a hint */
        munmap(p, size);
        return NULL;
    }
    return p;
}

static void *reserve_aligned(size_t size, size_t align)
{
    size_t span = size + align;
    if (span < size)
        return NULL;
    char *p = mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    uintptr_t start = sd_round_up((uintptr_t)p, align);
    size_t head = start - (uintptr_t)p, tail = span - head - size;
    if (head)
        munmap(p, head);
    if (tail)
        munmap((char *)start + size, tail);
    return (void *)start;
}

CUresult cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment, CUdeviceptr addr,
                             unsigned long long flags)
{
    SD_ENTER(cuMemAddressReserve);
    if (!ptr || size == 0 || size % sd_page || flags || (alignment & (alignment - 1)))
        return CUDA_ERROR_INVALID_VALUE;
    /* Granularity alignment at least, so that any granule of it can be mapped. */
    size_t align = alignment > sd_cfg.granularity ? alignment : sd_cfg.granularity;
    void *p = NULL;
    if (addr && addr % align == 0)
        p = reserve_at((uintptr_t)addr, size);
    if (!p)
        p = reserve_aligned(size, align);
    if (!p)
        return CUDA_ERROR_OUT_OF_MEMORY;

    struct sd_region *r = calloc(1, sizeof *r);
    pthread_mutex_lock(&sd_mem_lock);
    bool ok = r && sd_rmap_insert(&sd_regions, (uintptr_t)p, size, r);
    pthread_mutex_unlock(&sd_mem_lock);
    if (!ok) {
        free(r);
        munmap(p, size);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *r = (struct sd_region){.kind = SD_REGION_RESERVED, .base = (uintptr_t)p, .len = size, .size = size,
                            .loc = SD_LOC_NONE};
    *ptr = (CUdeviceptr)(uintptr_t)p;
    sd_log("reserved %zu bytes at %p", size, p);
    return CUDA_SUCCESS;
}

CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size)
{
    SD_ENTER(cuMemAddressFree);
    pthread_mutex_lock(&sd_mem_lock);
    struct sd_region *r = sd_rmap_find(&sd_regions, (uintptr_t)ptr);
    bool ok = r && r->kind == SD_REGION_RESERVED && r->base == ptr && r->len == size && r->nmaps == 0;
    if (ok) {
        sd_rmap_remove(&sd_regions, r->base);
        munmap((void *)r->base, r->len);
        free(r);
    }
    pthread_mutex_unlock(&sd_mem_lock);
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* ---- physical allocations ---- */

/* One descriptor per physical allocation: let a test hold thousands. */
static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size, const CUmemAllocationProp *prop,
                     unsigned long long flags)
{
    SD_ENTER(cuMemCreate);
    int loc;
    if (!handle || !prop || flags || size == 0 || prop->type != CU_MEM_ALLOCATION_TYPE_PINNED)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = create_location(prop, &loc);
    if (rc != CUDA_SUCCESS)
        return rc;
    /* "size must be a multiple of the value given via cuMemGetAllocationGranularity" for these properties. */
    if (!aligned_to(size, granularity_of(loc)))
        return CUDA_ERROR_INVALID_VALUE;
    pthread_once(&fd_limit_once, raise_fd_limit);

    struct sd_phys *p = calloc(1, sizeof *p);
    if (!p)
        return CUDA_ERROR_OUT_OF_MEMORY;
    pthread_mutex_lock(&sd_mem_lock);
    rc = sd_account_add(loc, size);
    pthread_mutex_unlock(&sd_mem_lock);
    if (rc != CUDA_SUCCESS) {
        free(p);
        return rc;
    }
    int fd = memfd_create("simdev-vmm", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)size) != 0) {
        if (fd >= 0)
            close(fd);
        pthread_mutex_lock(&sd_mem_lock);
        sd_account_sub(loc, size);
        pthread_mutex_unlock(&sd_mem_lock);
        free(p);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    populate_fd(fd, size, loc);
    *p = (struct sd_phys){.fd = fd, .size = size, .loc = loc, .prop = *prop, .handle_refs = 1};

    pthread_mutex_lock(&sd_mem_lock);
    p->id = next_handle++;
    bool ok = sd_rmap_insert(&handles, (uintptr_t)p->id, 1, p);
    if (!ok)
        sd_account_sub(loc, size);
    pthread_mutex_unlock(&sd_mem_lock);
    if (!ok) {
        close(fd);
        free(p);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *handle = p->id;
    sd_log("cuMemCreate %zu bytes (%s %d) -> handle %llu", size, loc == SD_LOC_HOST ? "host" : "device",
           loc == SD_LOC_HOST ? prop->location.id : loc, p->id);
    return CUDA_SUCCESS;
}

CUresult cuMemRelease(CUmemGenericAllocationHandle handle)
{
    SD_ENTER(cuMemRelease);
    pthread_mutex_lock(&sd_mem_lock);
    struct sd_phys *p = live_handle(handle);
    if (p) {
        p->handle_refs--;
        phys_maybe_free(p);
    }
    pthread_mutex_unlock(&sd_mem_lock);
    return p ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemGetAllocationPropertiesFromHandle(CUmemAllocationProp *prop, CUmemGenericAllocationHandle handle)
{
    SD_ENTER(cuMemGetAllocationPropertiesFromHandle);
    if (!prop)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&sd_mem_lock);
    struct sd_phys *p = live_handle(handle);
    if (p)
        *prop = p->prop;
    pthread_mutex_unlock(&sd_mem_lock);
    return p ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *handle, void *addr)
{
    SD_ENTER(cuMemRetainAllocationHandle);
    if (!handle)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&sd_mem_lock);
    struct sd_mapping *m = sd_rmap_find(&mappings, (uintptr_t)addr);
    if (m) {
        m->phys->handle_refs++;
        *handle = m->phys->id;
    }
    pthread_mutex_unlock(&sd_mem_lock);
    return m ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* ---- mapping ---- */

/* cuda.h, cuMemMap: offset "Note: currently must be zero"; refused otherwise.
 * ptr and size are multiples of the handle's own granularity (a host-located
 * handle's may differ from the device's). */
CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                  unsigned long long flags)
{
    SD_ENTER(cuMemMap);
    if (flags || size == 0 || offset != 0 || !aligned(ptr) || !aligned(size))
        return CUDA_ERROR_INVALID_VALUE;
    uintptr_t base = (uintptr_t)ptr;
    CUresult rc = CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&sd_mem_lock);
    struct sd_phys *p = live_handle(handle);
    if (p && (!aligned_to(base, granularity_of(p->loc)) || !aligned_to(size, granularity_of(p->loc))))
        p = NULL;
    struct sd_region *resv = sd_rmap_find(&sd_regions, base);
    size_t i = sd_rmap_lower(&mappings, base);
    bool free_range = i >= mappings.n || mappings.v[i].base >= base + size;
    struct sd_mapping *m = NULL;
    if (p && offset <= p->size && size <= p->size - offset && resv && resv->kind == SD_REGION_RESERVED &&
        base + size <= resv->base + resv->len && free_range) {
        m = calloc(1, sizeof *m);
        if (!m) {
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        } else if (mmap((void *)base, size, PROT_NONE, MAP_SHARED | MAP_FIXED, p->fd, (off_t)offset) ==
                   MAP_FAILED) {
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        } else if (!sd_rmap_insert(&mappings, base, size, m)) {
            mmap((void *)base, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        } else {
            *m = (struct sd_mapping){.base = base, .size = size, .phys = p, .resv = resv};
            p->maps++;
            resv->nmaps++;
            rc = CUDA_SUCCESS;
        }
        if (rc != CUDA_SUCCESS) {
            free(m);
            m = NULL;
        }
    }
    pthread_mutex_unlock(&sd_mem_lock);
    if (rc == CUDA_SUCCESS)
        sd_log("mapped handle %llu at %#lx (%zu bytes)", handle, (unsigned long)base, size);
    return rc;
}

CUresult cuMemUnmap(CUdeviceptr ptr, size_t size)
{
    SD_ENTER(cuMemUnmap);
    size_t first, n;
    pthread_mutex_lock(&sd_mem_lock);
    bool ok = whole_mappings((uintptr_t)ptr, size, &first, &n);
    for (size_t k = 0; ok && k < n; k++) {
        struct sd_mapping *m = sd_rmap_remove(&mappings, mappings.v[first].base);
        /* Back to reserved, inaccessible address space. */
        mmap((void *)m->base, m->size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
        m->resv->nmaps--;
        m->phys->maps--;
        phys_maybe_free(m->phys);
        free(m);
    }
    pthread_mutex_unlock(&sd_mem_lock);
    if (ok)
        sd_log("unmapped %#llx (%zu bytes)", ptr, size);
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

static int prot_of(const struct sd_mapping *m)
{
    unsigned long long any = 0;
    for (int i = 0; i <= HOST_SLOT; i++)
        any |= m->access[i];
    if ((any & CU_MEM_ACCESS_FLAGS_PROT_READWRITE) == CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
        return PROT_READ | PROT_WRITE;
    return any & CU_MEM_ACCESS_FLAGS_PROT_READ ? PROT_READ : PROT_NONE;
}

static int access_slot(const CUmemLocation *l)
{
    int loc;
    if (l->type == CU_MEM_LOCATION_TYPE_HOST_NUMA) /* "the id is ignored" (cuMemSetAccess) */
        return HOST_SLOT;
    if (location_of(l, &loc) != CUDA_SUCCESS)
        return -1;
    return loc == SD_LOC_HOST ? HOST_SLOT : loc;
}

CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc, size_t count)
{
    SD_ENTER(cuMemSetAccess);
    if (!desc || count == 0)
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t d = 0; d < count; d++) {
        CUmemAccess_flags f = desc[d].flags;
        if (access_slot(&desc[d].location) < 0 ||
            (f != CU_MEM_ACCESS_FLAGS_PROT_NONE && f != CU_MEM_ACCESS_FLAGS_PROT_READ &&
             f != CU_MEM_ACCESS_FLAGS_PROT_READWRITE))
            return CUDA_ERROR_INVALID_VALUE;
    }
    size_t first, n;
    pthread_mutex_lock(&sd_mem_lock);
    bool ok = whole_mappings((uintptr_t)ptr, size, &first, &n);
    /* "Users cannot specify CU_MEM_LOCATION_TYPE_HOST_NUMA accessibility for
     * allocations created on with other location types" (cuMemSetAccess). */
    for (size_t k = 0; ok && k < n; k++)
        for (size_t d = 0; d < count; d++)
            if (desc[d].location.type == CU_MEM_LOCATION_TYPE_HOST_NUMA &&
                ((struct sd_mapping *)mappings.v[first + k].obj)->phys->loc != SD_LOC_HOST)
                ok = false;
    for (size_t k = 0; ok && k < n; k++) {
        struct sd_mapping *m = mappings.v[first + k].obj;
        for (size_t d = 0; d < count; d++)
            m->access[access_slot(&desc[d].location)] = desc[d].flags;
        ok = mprotect((void *)m->base, m->size, prot_of(m)) == 0;
    }
    pthread_mutex_unlock(&sd_mem_lock);
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemGetAccess(unsigned long long *flags, const CUmemLocation *location, CUdeviceptr ptr)
{
    SD_ENTER(cuMemGetAccess);
    int slot = location ? access_slot(location) : -1;
    if (!flags || slot < 0)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&sd_mem_lock);
    struct sd_mapping *m = sd_rmap_find(&mappings, (uintptr_t)ptr);
    if (m)
        *flags = m->access[slot];
    pthread_mutex_unlock(&sd_mem_lock);
    return m ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* ---- per-device access ---- */

/* Access is per mapping and per device: the page protection opens a mapping
 * when any location has access, so what a device's stream may touch is
 * checked here, before the operation runs. cuMemSetAccess: "set the access
 * flags for each location"; a device without them faults, also through a
 * copy issued on its streams (the copy engine is the device's). The
 * programming guide (Virtual Memory Management, access control) says
 * cuCtxEnablePeerAccess does not cover these mappings. */
bool sd_device_may_touch(int dev, const void *addr, size_t n, bool write, const void **where)
{
    uintptr_t at = (uintptr_t)addr, end = at + n;
    unsigned long long need = write ? CU_MEM_ACCESS_FLAGS_PROT_READWRITE : CU_MEM_ACCESS_FLAGS_PROT_READ;
    bool ok = true;
    if (n == 0 || dev < 0 || dev >= SD_MAX_DEVICES)
        return true;
    pthread_mutex_lock(&sd_mem_lock);
    /* VMM mappings overlapping the range. */
    for (size_t i = sd_rmap_lower(&mappings, at); ok && i < mappings.n && mappings.v[i].base < end; i++) {
        struct sd_mapping *m = mappings.v[i].obj;
        if ((m->access[dev] & need) != need) {
            ok = false;
            *where = (const void *)(m->base > at ? m->base : at);
        }
    }
    /* Stream-ordered pool blocks overlapping it. */
    for (size_t i = sd_rmap_lower(&sd_regions, at); ok && i < sd_regions.n && sd_regions.v[i].base < end; i++) {
        struct sd_region *r = sd_regions.v[i].obj;
        if (r->kind == SD_REGION_POOL && r->pool && !sd_pool_grants(r->pool, dev, write)) {
            ok = false;
            *where = (const void *)(r->base > at ? r->base : at);
        }
    }
    pthread_mutex_unlock(&sd_mem_lock);
    return ok;
}

bool sd_device_visible(int dev, uintptr_t addr, size_t n)
{
    bool ok = false;
    pthread_mutex_lock(&sd_mem_lock);
    struct sd_region *r = sd_rmap_find(&sd_regions, addr);
    if (r && addr + n <= r->base + r->len) {
        switch (r->kind) {
        case SD_REGION_CLASSIC:
            ok = true;
            break;
        case SD_REGION_POOL:
            ok = r->state != SD_BLOCK_CACHED && sd_pool_grants(r->pool, dev, true);
            break;
        case SD_REGION_PINNED:
            ok = (r->flags & CU_MEMHOSTALLOC_DEVICEMAP) != 0;
            break;
        case SD_REGION_RESERVED: {
            struct sd_mapping *m = sd_rmap_find(&mappings, addr);
            ok = m && addr + n <= m->base + m->size && dev >= 0 && dev < SD_MAX_DEVICES &&
                 (m->access[dev] & CU_MEM_ACCESS_FLAGS_PROT_READ);
            break;
        }
        }
    }
    pthread_mutex_unlock(&sd_mem_lock);
    return ok;
}
