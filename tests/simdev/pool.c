/* Stream-ordered allocation and memory pools. The allocation happens at the
 * call; the free takes effect when the stream reaches it. A pool then keeps
 * freed blocks (still accounted as used device memory) while it holds no more
 * than its release threshold, and gives them back on cuMemPoolTrimTo: the
 * behaviour that makes a later cuMemCreate fail although nothing is in use. */
#include <stdlib.h>
#include <string.h>

#include "simdev_internal.h"

struct sd_pool {
    int loc; /* accounting location */
    CUmemPoolProps props;
    bool is_default;
    bool destroyed;
    uint64_t threshold;
    uint64_t used, used_high;         /* blocks handed out and not yet freed in stream order */
    uint64_t reserved, reserved_high; /* used + cached */
    int reuse[3];                     /* the REUSE_* attributes, stored only */
    CUmemAccess_flags access[SD_MAX_DEVICES]; /* cuMemPoolSetAccess; the owner device: read-write */
    struct sd_region *cached;
};

/* All under sd_mem_lock. */
static struct sd_rmap pools; /* live handles */
static struct sd_pool *default_pool[SD_MAX_DEVICES], *current_pool[SD_MAX_DEVICES];

static struct sd_pool *pool_new(const CUmemPoolProps *props, int loc)
{
    struct sd_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->props = *props;
    p->loc = loc;
    if (loc >= 0 && loc < SD_MAX_DEVICES)
        p->access[loc] = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    p->reuse[0] = p->reuse[1] = p->reuse[2] = 1;
    if (!sd_rmap_insert(&pools, (uintptr_t)p, 1, p)) {
        free(p);
        return NULL;
    }
    return p;
}

static struct sd_pool *device_default(int dev)
{
    if (!default_pool[dev]) {
        CUmemPoolProps props;
        memset(&props, 0, sizeof props);
        props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
        props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        props.location.id = dev;
        default_pool[dev] = pool_new(&props, dev);
        if (default_pool[dev])
            default_pool[dev]->is_default = true;
    }
    return default_pool[dev];
}

static struct sd_pool *device_current(int dev)
{
    return current_pool[dev] ? current_pool[dev] : device_default(dev);
}

static struct sd_pool *lookup(CUmemoryPool handle)
{
    struct sd_pool *p = sd_rmap_find(&pools, (uintptr_t)handle);
    return p == (struct sd_pool *)handle ? p : NULL;
}

static void release_cached(struct sd_pool *p, uint64_t keep)
{
    while (p->reserved > keep && p->cached) {
        struct sd_region *b = p->cached;
        p->cached = b->next_cached;
        p->reserved -= b->len;
        sd_region_drop(b);
    }
}

static void pool_free_if_unused(struct sd_pool *p)
{
    if (p->destroyed && p->used == 0) {
        release_cached(p, 0);
        free(p);
    }
}

static CUresult pool_alloc(struct sd_pool *p, size_t size, struct sd_region **out)
{
    size_t len = sd_round_up(size, sd_page);
    struct sd_region *b = NULL;
    /* Reuse a cached block of about the same size (its free has completed). */
    for (struct sd_region **link = &p->cached; *link; link = &(*link)->next_cached)
        if ((*link)->len >= len && (*link)->len / 2 <= len) {
            b = *link;
            *link = b->next_cached;
            b->next_cached = NULL;
            break;
        }
    if (!b) {
        CUresult rc = sd_region_create(SD_REGION_POOL, size, p->loc, &b);
        if (rc == CUDA_ERROR_OUT_OF_MEMORY && p->cached) {
            release_cached(p, 0); /* a pool gives back its own cache before failing */
            rc = sd_region_create(SD_REGION_POOL, size, p->loc, &b);
        }
        if (rc != CUDA_SUCCESS)
            return rc;
        b->pool = p;
        p->reserved += b->len;
        if (p->reserved > p->reserved_high)
            p->reserved_high = p->reserved;
    }
    b->size = size;
    b->state = SD_BLOCK_LIVE;
    p->used += b->len;
    if (p->used > p->used_high)
        p->used_high = p->used;
    *out = b;
    return CUDA_SUCCESS;
}

void sd_pool_free_done(struct sd_region *b)
{
    pthread_mutex_lock(&sd_mem_lock);
    struct sd_pool *p = b->pool;
    b->state = SD_BLOCK_CACHED;
    b->next_cached = p->cached;
    p->cached = b;
    p->used -= b->len;
    sd_log("stream-ordered free of %#lx (%zu bytes) done", (unsigned long)b->base, b->size);
    if (p->destroyed)
        pool_free_if_unused(p);
    else
        release_cached(p, p->threshold);
    pthread_mutex_unlock(&sd_mem_lock);
}

/* ---- allocation entry points ---- */

static CUresult alloc_async(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool, CUstream stream,
                            bool per_thread_default)
{
    if (!dptr || bytesize == 0)
        return CUDA_ERROR_INVALID_VALUE;
    struct sd_stream *s;
    CUresult rc = sd_stream_get(stream, per_thread_default, &s);
    if (rc == CUDA_SUCCESS)
        rc = sd_sticky(s->ctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    struct sd_region *b = NULL;
    pthread_mutex_lock(&sd_mem_lock);
    struct sd_pool *p = pool ? lookup(pool) : device_current(s->ctx->dev);
    rc = !p ? (pool ? CUDA_ERROR_INVALID_VALUE : CUDA_ERROR_OUT_OF_MEMORY) : pool_alloc(p, bytesize, &b);
    pthread_mutex_unlock(&sd_mem_lock);
    if (rc != CUDA_SUCCESS)
        return rc;
    /* On a capturing stream: a graph allocation node (only those may be freed
     * by a free node in a capture, see free_async). */
    struct sd_capture *cap = sd_stream_capture(s);
    pthread_mutex_lock(&sd_mem_lock);
    b->graph_alloc = cap != NULL;
    pthread_mutex_unlock(&sd_mem_lock);
    *dptr = (CUdeviceptr)b->base;
    sd_log("stream-ordered alloc of %zu bytes at %#lx on stream %llu", bytesize, (unsigned long)b->base, s->id);
    return CUDA_SUCCESS;
}

CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{
    SD_ENTER(cuMemAllocAsync);
    return alloc_async(dptr, bytesize, NULL, hStream, false);
}

CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{
    SD_ENTER(cuMemAllocAsync_ptsz);
    return alloc_async(dptr, bytesize, NULL, hStream, true);
}

CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool, CUstream hStream)
{
    SD_ENTER(cuMemAllocFromPoolAsync);
    return pool ? alloc_async(dptr, bytesize, pool, hStream, false) : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool, CUstream hStream)
{
    SD_ENTER(cuMemAllocFromPoolAsync_ptsz);
    return pool ? alloc_async(dptr, bytesize, pool, hStream, true) : CUDA_ERROR_INVALID_VALUE;
}

static CUresult free_async(CUdeviceptr dptr, CUstream stream, bool per_thread_default)
{
    struct sd_stream *s;
    CUresult rc = sd_stream_get(stream, per_thread_default, &s);
    if (rc == CUDA_SUCCESS)
        rc = sd_sticky(s->ctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    struct sd_op *op = sd_op_new(SD_OP_FREE);
    if (!op)
        return CUDA_ERROR_OUT_OF_MEMORY;

    struct sd_capture *cap = sd_stream_capture(s);
    pthread_mutex_lock(&sd_mem_lock);
    struct sd_region *b = sd_rmap_find(&sd_regions, (uintptr_t)dptr);
    bool ok = b && b->kind == SD_REGION_POOL && b->base == (uintptr_t)dptr && b->state == SD_BLOCK_LIVE;
    /* In a capture, a free node of memory no graph allocated (capture.c). */
    bool not_graph = ok && cap && !b->graph_alloc;
    ok = ok && !not_graph;
    if (ok)
        b->state = SD_BLOCK_FREEING; /* a second free is refused from now on */
    pthread_mutex_unlock(&sd_mem_lock);
    if (!ok) {
        sd_op_release(op);
        if (cap)
            sd_capture_fail(cap);
        return CUDA_ERROR_INVALID_VALUE;
    }

    op->u.free.block = b;
    if (cap) {
        /* A graph free node: the block stays the graph's (its address is the
         * same at every launch) and returns to the pool with the graph. */
        sd_capture_note_free(cap, b);
        sd_op_release(op);
        return CUDA_SUCCESS;
    }
    rc = sd_submit(s, op, NULL);
    if (rc != CUDA_SUCCESS) {
        pthread_mutex_lock(&sd_mem_lock);
        b->state = SD_BLOCK_LIVE;
        pthread_mutex_unlock(&sd_mem_lock);
    }
    return rc;
}

CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream)
{
    SD_ENTER(cuMemFreeAsync);
    return free_async(dptr, hStream, false);
}

CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream)
{
    SD_ENTER(cuMemFreeAsync_ptsz);
    return free_async(dptr, hStream, true);
}

/* ---- pools ---- */

static CUresult props_location(const CUmemPoolProps *props, int *loc)
{
    if (props->allocType != CU_MEM_ALLOCATION_TYPE_PINNED)
        return CUDA_ERROR_INVALID_VALUE;
    switch (props->location.type) {
    case CU_MEM_LOCATION_TYPE_DEVICE:
        if (!sd_dev_valid(props->location.id))
            return CUDA_ERROR_INVALID_DEVICE;
        *loc = props->location.id;
        return CUDA_SUCCESS;
    case CU_MEM_LOCATION_TYPE_HOST_NUMA:
        if (props->location.id < 0 || props->location.id >= sd_cfg.host_numa_nodes)
            return CUDA_ERROR_INVALID_VALUE; /* a host NUMA node id, checked */
        *loc = SD_LOC_HOST;
        return CUDA_SUCCESS;
    case CU_MEM_LOCATION_TYPE_HOST:
    case CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT:
        *loc = SD_LOC_HOST;
        return CUDA_SUCCESS;
    default:
        return CUDA_ERROR_INVALID_VALUE;
    }
}

CUresult cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *poolProps)
{
    SD_ENTER(cuMemPoolCreate);
    int loc;
    if (!pool || !poolProps)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = props_location(poolProps, &loc);
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&sd_mem_lock);
    struct sd_pool *p = pool_new(poolProps, loc);
    pthread_mutex_unlock(&sd_mem_lock);
    if (!p)
        return CUDA_ERROR_OUT_OF_MEMORY;
    *pool = (CUmemoryPool)p;
    return CUDA_SUCCESS;
}

/* Outstanding allocations keep a destroyed pool alive until their frees complete. */
CUresult cuMemPoolDestroy(CUmemoryPool pool)
{
    SD_ENTER(cuMemPoolDestroy);
    pthread_mutex_lock(&sd_mem_lock);
    struct sd_pool *p = lookup(pool);
    bool ok = p && !p->is_default;
    if (ok) {
        sd_rmap_remove(&pools, (uintptr_t)p);
        for (int d = 0; d < SD_MAX_DEVICES; d++)
            if (current_pool[d] == p)
                current_pool[d] = NULL;
        p->destroyed = true;
        release_cached(p, 0);
        pool_free_if_unused(p);
    }
    pthread_mutex_unlock(&sd_mem_lock);
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t minBytesToKeep)
{
    SD_ENTER(cuMemPoolTrimTo);
    pthread_mutex_lock(&sd_mem_lock);
    struct sd_pool *p = lookup(pool);
    if (p) {
        uint64_t before = p->reserved;
        release_cached(p, minBytesToKeep);
        sd_log("pool trimmed from %llu to %llu bytes", (unsigned long long)before,
               (unsigned long long)p->reserved);
    }
    pthread_mutex_unlock(&sd_mem_lock);
    return p ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemPoolSetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value)
{
    SD_ENTER(cuMemPoolSetAttribute);
    if (!value)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = CUDA_SUCCESS;
    pthread_mutex_lock(&sd_mem_lock);
    struct sd_pool *p = lookup(pool);
    if (!p) {
        rc = CUDA_ERROR_INVALID_VALUE;
    } else if (attr >= CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES &&
               attr <= CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES) {
        p->reuse[attr - CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES] = *(int *)value;
    } else if (attr == CU_MEMPOOL_ATTR_RELEASE_THRESHOLD) {
        p->threshold = *(cuuint64_t *)value;
    } else if (attr == CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH && *(cuuint64_t *)value == 0) {
        p->reserved_high = p->reserved;
    } else if (attr == CU_MEMPOOL_ATTR_USED_MEM_HIGH && *(cuuint64_t *)value == 0) {
        p->used_high = p->used;
    } else {
        rc = CUDA_ERROR_INVALID_VALUE;
    }
    pthread_mutex_unlock(&sd_mem_lock);
    return rc;
}

CUresult cuMemPoolGetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value)
{
    SD_ENTER(cuMemPoolGetAttribute);
    if (!value)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = CUDA_SUCCESS;
    pthread_mutex_lock(&sd_mem_lock);
    struct sd_pool *p = lookup(pool);
    if (!p) {
        rc = CUDA_ERROR_INVALID_VALUE;
    } else {
        switch (attr) {
        case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES:
        case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC:
        case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES:
            *(int *)value = p->reuse[attr - CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES];
            break;
        case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: *(cuuint64_t *)value = p->threshold; break;
        case CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT: *(cuuint64_t *)value = p->reserved; break;
        case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH: *(cuuint64_t *)value = p->reserved_high; break;
        case CU_MEMPOOL_ATTR_USED_MEM_CURRENT: *(cuuint64_t *)value = p->used; break;
        case CU_MEMPOOL_ATTR_USED_MEM_HIGH: *(cuuint64_t *)value = p->used_high; break;
        default: rc = CUDA_ERROR_INVALID_VALUE; break;
        }
    }
    pthread_mutex_unlock(&sd_mem_lock);
    return rc;
}

/* ---- access from other devices ---- */

/* A pool's memory is accessible from its own device; other devices get
 * access only through cuMemPoolSetAccess ("Controls visibility of pools
 * between devices", cuda.h), which applies to every block of the pool,
 * allocated before or after (CUDA programming guide, stream-ordered memory
 * allocator, "Device accessibility for multi-GPU support"). Host-located
 * pools grant no device until it is set. Under sd_mem_lock. */
bool sd_pool_grants(struct sd_pool *p, int dev, bool write)
{
    if (dev < 0 || dev >= SD_MAX_DEVICES)
        return false;
    CUmemAccess_flags need = write ? CU_MEM_ACCESS_FLAGS_PROT_READWRITE : CU_MEM_ACCESS_FLAGS_PROT_READ;
    return (p->access[dev] & need) == need;
}

CUresult cuMemPoolSetAccess(CUmemoryPool pool, const CUmemAccessDesc *map, size_t count)
{
    SD_ENTER(cuMemPoolSetAccess);
    if (!map || count == 0)
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < count; i++) {
        CUmemAccess_flags f = map[i].flags;
        if (map[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE || !sd_dev_valid(map[i].location.id) ||
            (f != CU_MEM_ACCESS_FLAGS_PROT_NONE && f != CU_MEM_ACCESS_FLAGS_PROT_READ &&
             f != CU_MEM_ACCESS_FLAGS_PROT_READWRITE))
            return CUDA_ERROR_INVALID_VALUE;
    }
    CUresult rc = CUDA_SUCCESS;
    pthread_mutex_lock(&sd_mem_lock);
    struct sd_pool *p = lookup(pool);
    if (!p)
        rc = CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; p && rc == CUDA_SUCCESS && i < count; i++)
        if (map[i].location.id == p->loc && map[i].flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
            rc = CUDA_ERROR_INVALID_VALUE; /* the owner's own access cannot be taken away */
    for (size_t i = 0; p && rc == CUDA_SUCCESS && i < count; i++)
        p->access[map[i].location.id] = map[i].flags;
    pthread_mutex_unlock(&sd_mem_lock);
    return rc;
}

CUresult cuMemPoolGetAccess(CUmemAccess_flags *flags, CUmemoryPool memPool, CUmemLocation *location)
{
    SD_ENTER(cuMemPoolGetAccess);
    if (!flags || !location || location->type != CU_MEM_LOCATION_TYPE_DEVICE)
        return CUDA_ERROR_INVALID_VALUE;
    if (!sd_dev_valid(location->id))
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&sd_mem_lock);
    struct sd_pool *p = lookup(memPool);
    if (p)
        *flags = p->access[location->id];
    pthread_mutex_unlock(&sd_mem_lock);
    return p ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* ---- device pools ---- */

CUresult cuDeviceGetDefaultMemPool(CUmemoryPool *pool_out, CUdevice dev)
{
    SD_ENTER(cuDeviceGetDefaultMemPool);
    if (!pool_out)
        return CUDA_ERROR_INVALID_VALUE;
    if (!sd_dev_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&sd_mem_lock);
    struct sd_pool *p = device_default(dev);
    pthread_mutex_unlock(&sd_mem_lock);
    *pool_out = (CUmemoryPool)p;
    return p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult cuDeviceGetMemPool(CUmemoryPool *pool, CUdevice dev)
{
    SD_ENTER(cuDeviceGetMemPool);
    if (!pool)
        return CUDA_ERROR_INVALID_VALUE;
    if (!sd_dev_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&sd_mem_lock);
    struct sd_pool *p = device_current(dev);
    pthread_mutex_unlock(&sd_mem_lock);
    *pool = (CUmemoryPool)p;
    return p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult cuDeviceSetMemPool(CUdevice dev, CUmemoryPool pool)
{
    SD_ENTER(cuDeviceSetMemPool);
    if (!sd_dev_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&sd_mem_lock);
    struct sd_pool *p = lookup(pool);
    bool ok = p && p->loc == dev;
    if (ok)
        current_pool[dev] = p;
    pthread_mutex_unlock(&sd_mem_lock);
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
