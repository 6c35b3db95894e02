/* Tests of the simulated driver itself. Criterion runs each test in its own
 * process, so every test starts from a fresh, unconfigured simulator and may
 * set SIMDEV_* variables before its first driver call. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* Name the exported entry points exactly: plain, _v2 and _ptsz/_ptds. */
#define __CUDA_API_VERSION_INTERNAL 1
#include <cuda.h>

#include "simdev.h"

#define MiB (1024ull * 1024)
#define GiB (1024ull * MiB)
#define GRAN (2 * MiB)

#define CK(call) cr_assert_eq((call), CUDA_SUCCESS, "%s failed", #call)
#define CK_ERR(call, err) cr_assert_eq((call), (err), "%s: expected %s", #call, #err)

/* cuInit and the primary context of device 0 made current, as the CUDA
 * runtime does for its callers: without a current context the driver
 * refuses what needs one (CUDA_ERROR_INVALID_CONTEXT). */
static void use_primary(int dev)
{
    CUcontext ctx;
    CK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CK(cuCtxSetCurrent(ctx));
}

static void init(void)
{
    CK(cuInit(0));
    use_primary(0);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static CUmemAllocationProp prop_at(CUmemLocationType type, int id)
{
    CUmemAllocationProp p;
    memset(&p, 0, sizeof p);
    p.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    p.location.type = type;
    p.location.id = id;
    return p;
}

static CUmemAccessDesc rw_on(int dev)
{
    CUmemAccessDesc d;
    memset(&d, 0, sizeof d);
    d.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    d.location.id = dev;
    d.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    return d;
}

/* Physical memory of `size` at `type`, mapped read-write over `va`. */
static CUmemGenericAllocationHandle map_rw(CUdeviceptr va, size_t size, CUmemLocationType type)
{
    CUmemAllocationProp prop = prop_at(type, 0);
    CUmemGenericAllocationHandle h;
    CUmemAccessDesc rw = rw_on(0);
    CK(cuMemCreate(&h, size, &prop, 0));
    CK(cuMemMap(va, size, 0, h, 0));
    CK(cuMemSetAccess(va, size, &rw, 1));
    return h;
}

/* The host-location granularity these tests run with
 * (4 MiB, simdev's default; a test that needs another sets SIMDEV_HOST_GRANULARITY). */
#define HOST_GRAN (4 * MiB)

/* Aligned for either location's memory. */
static CUdeviceptr reserve(size_t size)
{
    CUdeviceptr va;
    CK(cuMemAddressReserve(&va, size, HOST_GRAN, 0, 0));
    return va;
}

/* Whether [p, p + n) is still mapped at all (mincore fails with ENOMEM when not). */
static bool mapped(CUdeviceptr p, size_t n)
{
    unsigned char vec[64];
    return mincore((void *)p, n < 64 * 4096 ? n : 64 * 4096, vec) == 0;
}

static int open_fds(void)
{
    int n = 0;
    for (int fd = 0; fd < 4096; fd++)
        n += fcntl(fd, F_GETFD) != -1;
    return n;
}

static void sleep_ms_fn(void *ms)
{
    struct timespec ts = {0, (long)(uintptr_t)ms * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- devices, contexts, errors ---- */

Test(device, needs_init_then_reports_a_device)
{
    CUdevice dev;
    int n = 0, v = 0, major = 0, unknown = 7;
    char name[64];
    size_t total = 0;
    CK_ERR(cuDeviceGet(&dev, 0), CUDA_ERROR_NOT_INITIALIZED);
    CK(cuDriverGetVersion(&v));
    cr_assert_eq(v, 13000);
    init();
    CK(cuDeviceGetCount(&n));
    cr_assert_eq(n, 1);
    CK(cuDeviceGet(&dev, 0));
    CK_ERR(cuDeviceGet(&dev, 1), CUDA_ERROR_INVALID_DEVICE);
    CK(cuDeviceGetName(name, sizeof name, 0));
    cr_assert(strlen(name) > 0);
    CK(cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, 0));
    cr_assert_eq(major, 9);
    CK(cuDeviceGetAttribute(&unknown, CU_DEVICE_ATTRIBUTE_TCC_DRIVER, 0));
    cr_assert_eq(unknown, 0);
    CK(cuDeviceTotalMem_v2(&total, 0));
    cr_assert_eq(total, 16 * GiB);
}

Test(device, contexts_are_per_thread_with_a_stack)
{
    setenv("SIMDEV_DEVICES", "2", 1);
    CK(cuInit(0));
    CUcontext cur = (CUcontext)1, p0, p1, created, popped;
    CUdevice dev = -1;
    CK(cuCtxGetCurrent(&cur));
    cr_assert_null(cur);
    CK(cuDevicePrimaryCtxRetain(&p0, 0));
    CK(cuDevicePrimaryCtxRetain(&p1, 1));
    cr_assert_neq(p0, p1);
    CK(cuCtxSetCurrent(p1));
    CK(cuCtxGetDevice(&dev));
    cr_assert_eq(dev, 1);
    CK(cuCtxCreate_v2(&created, 0, 0));
    CK(cuCtxGetCurrent(&cur));
    cr_assert_eq(cur, created);
    CK(cuCtxPopCurrent_v2(&popped));
    cr_assert_eq(popped, created);
    CK(cuCtxGetCurrent(&cur));
    cr_assert_eq(cur, p1);
    CK(cuCtxPushCurrent_v2(created));
    CK(cuCtxSynchronize());
    CK(cuCtxDestroy_v2(created));
    CK(cuCtxGetCurrent(&cur));
    cr_assert_eq(cur, p1);
    CK_ERR(cuCtxDestroy_v2(p0), CUDA_ERROR_INVALID_CONTEXT);
    CK(cuDevicePrimaryCtxRelease_v2(1));
    CK(cuDevicePrimaryCtxRelease_v2(0));
}

Test(device, error_strings)
{
    const char *s = NULL;
    CK(cuGetErrorName(CUDA_ERROR_OUT_OF_MEMORY, &s));
    cr_assert_str_eq(s, "CUDA_ERROR_OUT_OF_MEMORY");
    CK(cuGetErrorString(CUDA_ERROR_ILLEGAL_ADDRESS, &s));
    cr_assert_str_eq(s, "an illegal memory access was encountered");
    CK_ERR(cuGetErrorName((CUresult)123456, &s), CUDA_ERROR_INVALID_VALUE);
}

/* ---- classic and pinned memory ---- */

Test(memory, classic_alloc_is_accounted_and_really_freed)
{
    init();
    CUdeviceptr p, base;
    size_t free0, total, free1, size;
    CK(cuMemGetInfo_v2(&free0, &total));
    cr_assert_eq(total, 16 * GiB);
    CK(cuMemAlloc_v2(&p, 3 * MiB));
    cr_assert_eq(simdev_device_used(0), 3 * MiB);
    CK(cuMemGetInfo_v2(&free1, &total));
    cr_assert_eq(free0 - free1, 3 * MiB);
    memset((void *)p, 0x5a, 3 * MiB); /* device pointers are host addresses */
    CK(cuMemGetAddressRange_v2(&base, &size, p + 12345));
    cr_assert_eq(base, p);
    cr_assert_eq(size, 3 * MiB);
    CK(cuMemFree_v2(p));
    cr_assert_eq(simdev_device_used(0), 0);
    cr_assert_not(mapped(p, 3 * MiB), "freed memory must really be unmapped");
    CK_ERR(cuMemFree_v2(p), CUDA_ERROR_INVALID_VALUE);
    CK_ERR(cuMemGetAddressRange_v2(&base, &size, p), CUDA_ERROR_NOT_FOUND);
    CK_ERR(cuMemAlloc_v2(&p, 0), CUDA_ERROR_INVALID_VALUE);
}

Test(memory, pinned_host_memory_is_not_device_memory)
{
    init();
    void *a, *b;
    unsigned flags = 0;
    CK(cuMemAllocHost_v2(&a, 8 * MiB));
    CK(cuMemHostAlloc(&b, 1 * MiB, CU_MEMHOSTALLOC_PORTABLE));
    memset(a, 1, 8 * MiB);
    CK(cuMemHostGetFlags(&flags, b));
    cr_assert_eq(flags, CU_MEMHOSTALLOC_PORTABLE);
    cr_assert_eq(simdev_device_used(0), 0);
    cr_assert_eq(simdev_host_used(), 0);
    CK(cuMemHostRegister_v2(&flags, sizeof flags, 0));
    CK(cuMemHostUnregister(&flags));
    CK(cuMemFreeHost(a));
    CK(cuMemFreeHost(b));
}

Test(memory, capacity_limits_give_out_of_memory)
{
    setenv("SIMDEV_DEVICE_BYTES", "64M", 1);
    init();
    CUdeviceptr a, b;
    size_t free, total;
    CK(cuMemGetInfo_v2(&free, &total));
    cr_assert_eq(total, 64 * MiB);
    CK(cuMemAlloc_v2(&a, 48 * MiB));
    CK_ERR(cuMemAlloc_v2(&b, 32 * MiB), CUDA_ERROR_OUT_OF_MEMORY);

    CUmemAllocationProp dev = prop_at(CU_MEM_LOCATION_TYPE_DEVICE, 0);
    CUmemAllocationProp host = prop_at(CU_MEM_LOCATION_TYPE_HOST, 0);
    CUmemGenericAllocationHandle h1, h2;
    CK_ERR(cuMemCreate(&h1, 32 * MiB, &dev, 0), CUDA_ERROR_OUT_OF_MEMORY);
    simdev_set_device_capacity(0, 128 * MiB); /* raised at run time */
    CK(cuMemCreate(&h1, 32 * MiB, &dev, 0));
    CK(cuMemGetInfo_v2(&free, &total));
    cr_assert_eq(total, 128 * MiB);
    cr_assert_eq(free, 128 * MiB - 80 * MiB);

    simdev_set_host_capacity(4 * MiB);
    CK_ERR(cuMemCreate(&h2, 8 * MiB, &host, 0), CUDA_ERROR_OUT_OF_MEMORY);
    CK(cuMemCreate(&h2, 4 * MiB, &host, 0));
    CK(cuMemRelease(h2));
    CK(cuMemRelease(h1));
    CK(cuMemFree_v2(a));
    cr_assert_eq(simdev_device_used(0), 0);
}

/* ---- VMM ---- */

Test(vmm, granularity_and_property_queries)
{
    init();
    size_t g = 0;
    CUmemAllocationProp prop = prop_at(CU_MEM_LOCATION_TYPE_DEVICE, 0), got;
    CK(cuMemGetAllocationGranularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    cr_assert_eq(g, GRAN);
    CUdeviceptr va = reserve(4 * GRAN);
    cr_assert_eq(va % GRAN, 0);
    CUmemGenericAllocationHandle h = map_rw(va + GRAN, 2 * GRAN, CU_MEM_LOCATION_TYPE_DEVICE), h2;
    CK(cuMemGetAllocationPropertiesFromHandle(&got, h));
    cr_assert_eq(got.location.type, CU_MEM_LOCATION_TYPE_DEVICE);
    unsigned long long flags = 0;
    CK(cuMemGetAccess(&flags, &prop.location, va + GRAN + 100));
    cr_assert_eq(flags, CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
    CK(cuMemRetainAllocationHandle(&h2, (void *)(va + 2 * GRAN + 5)));
    cr_assert_eq(h2, h);
    CK(cuMemRelease(h2));
    CUdeviceptr base;
    size_t size;
    CK(cuMemGetAddressRange_v2(&base, &size, va + GRAN + 7));
    cr_assert_eq(base, va + GRAN);
    cr_assert_eq(size, 2 * GRAN);
    CK(cuMemUnmap(va + GRAN, 2 * GRAN));
    CK(cuMemRelease(h));
    CK(cuMemAddressFree(va, 4 * GRAN));
}

Test(vmm, unmap_and_release_really_return_memory)
{
    init();
    const size_t size = 8 * GRAN;
    CUdeviceptr va = reserve(size);
    int fds = open_fds();
    CUmemGenericAllocationHandle h = map_rw(va, size, CU_MEM_LOCATION_TYPE_DEVICE);
    cr_assert_eq(open_fds(), fds + 1);
    cr_assert_eq(simdev_device_used(0), size);
    memset((void *)va, 0xab, size);

    /* Released while mapped: the mapping keeps the memory. */
    CK(cuMemRelease(h));
    cr_assert_eq(simdev_device_used(0), size);
    cr_assert_eq(((unsigned char *)va)[size - 1], 0xab);
    CK_ERR(cuMemRelease(h), CUDA_ERROR_INVALID_VALUE);

    /* Unmapped and released: gone (the backing file is closed). */
    CK(cuMemUnmap(va, size));
    cr_assert_eq(simdev_device_used(0), 0);
    cr_assert_eq(open_fds(), fds);

    /* Fresh memory at the same address reads as zeros, not as the old data. */
    h = map_rw(va, size, CU_MEM_LOCATION_TYPE_DEVICE);
    cr_assert_eq(((unsigned char *)va)[0], 0);
    cr_assert_eq(((unsigned char *)va)[size - 1], 0);
    CK(cuMemUnmap(va, size));
    cr_assert_eq(simdev_device_used(0), size); /* handle still held */
    CK(cuMemRelease(h));
    cr_assert_eq(simdev_device_used(0), 0);
    CK(cuMemAddressFree(va, size));
}

Test(vmm, data_survives_a_remap_onto_other_memory)
{
    init();
    const size_t size = 2 * GRAN;
    CUdeviceptr va = reserve(size);
    CUmemGenericAllocationHandle dev = map_rw(va, size, CU_MEM_LOCATION_TYPE_DEVICE);
    memset((void *)va, 0x3c, size);
    cr_assert_eq(simdev_device_used(0), size);

    /* Offload: copy to host-located memory, remap the same address onto it
     * (size is a multiple of both granularities, va aligned to both). */
    cr_assert_eq(va % HOST_GRAN, 0, "reserve() aligns to the host granularity");
    CUdeviceptr tmp = reserve(size);
    CUmemGenericAllocationHandle host = map_rw(tmp, size, CU_MEM_LOCATION_TYPE_HOST);
    CK(cuMemcpyDtoD_v2(tmp, va, size));
    CK(cuMemUnmap(tmp, size));
    CK(cuMemUnmap(va, size));
    CK(cuMemRelease(dev));
    CUmemAccessDesc rw = rw_on(0);
    CK(cuMemMap(va, size, 0, host, 0));
    CK(cuMemSetAccess(va, size, &rw, 1));
    cr_assert_eq(simdev_device_used(0), 0);
    cr_assert_eq(simdev_host_used(), size);
    cr_assert_eq(((unsigned char *)va)[size / 2], 0x3c);

    CK(cuMemUnmap(va, size));
    CK(cuMemRelease(host));
    cr_assert_eq(simdev_host_used(), 0);
    CK(cuMemAddressFree(va, size));
    CK(cuMemAddressFree(tmp, size));
}

Test(vmm, device_and_host_locations_are_accounted_apart)
{
    init();
    CUmemAllocationProp dev = prop_at(CU_MEM_LOCATION_TYPE_DEVICE, 0);
    CUmemAllocationProp host = prop_at(CU_MEM_LOCATION_TYPE_HOST, 0);
    CUmemAllocationProp numa = prop_at(CU_MEM_LOCATION_TYPE_HOST_NUMA, 0);
    CUmemGenericAllocationHandle a, b, c;
    size_t free, total;
    CK(cuMemCreate(&a, 4 * GRAN, &dev, 0));
    CK(cuMemCreate(&b, 2 * HOST_GRAN, &host, 0));
    CK(cuMemCreate(&c, 1 * HOST_GRAN, &numa, 0));
    cr_assert_eq(simdev_device_used(0), 4 * GRAN);
    cr_assert_eq(simdev_host_used(), 3 * HOST_GRAN);
    CK(cuMemGetInfo_v2(&free, &total));
    cr_assert_eq(total - free, 4 * GRAN);
    CK(cuMemRelease(a));
    CK(cuMemRelease(b));
    CK(cuMemRelease(c));
    cr_assert_eq(simdev_device_used(0), 0);
    cr_assert_eq(simdev_host_used(), 0);
}

Test(vmm, bad_calls_are_refused)
{
    init();
    CUmemAllocationProp prop = prop_at(CU_MEM_LOCATION_TYPE_DEVICE, 0);
    CUmemGenericAllocationHandle h, h2;
    CUdeviceptr va = reserve(4 * GRAN), other = reserve(GRAN);
    CK_ERR(cuMemCreate(&h, GRAN + 4096, &prop, 0), CUDA_ERROR_INVALID_VALUE);
    CK(cuMemCreate(&h, 2 * GRAN, &prop, 0));
    CK(cuMemCreate(&h2, 2 * GRAN, &prop, 0));
    CK_ERR(cuMemMap(va + 4096, 2 * GRAN, 0, h, 0), CUDA_ERROR_INVALID_VALUE);   /* unaligned address */
    CK_ERR(cuMemMap(va, GRAN + 4096, 0, h, 0), CUDA_ERROR_INVALID_VALUE);       /* unaligned size */
    CK_ERR(cuMemMap(va, 4 * GRAN, 0, h, 0), CUDA_ERROR_INVALID_VALUE);          /* larger than the handle */
    CK_ERR(cuMemMap(va + 3 * GRAN, 2 * GRAN, 0, h, 0), CUDA_ERROR_INVALID_VALUE); /* past the reservation */
    CK_ERR(cuMemMap(va + 4 * GRAN + 16 * GRAN, 2 * GRAN, 0, h, 0), CUDA_ERROR_INVALID_VALUE); /* not reserved */
    CK(cuMemMap(va, 2 * GRAN, 0, h, 0));
    CK_ERR(cuMemMap(va + GRAN, 2 * GRAN, 0, h2, 0), CUDA_ERROR_INVALID_VALUE); /* over a mapping */
    CK_ERR(cuMemUnmap(va + 2 * GRAN, GRAN), CUDA_ERROR_INVALID_VALUE);          /* not mapped */
    CK_ERR(cuMemUnmap(va, GRAN), CUDA_ERROR_INVALID_VALUE);                     /* part of a mapping */
    CK_ERR(cuMemAddressFree(va, 4 * GRAN), CUDA_ERROR_INVALID_VALUE);          /* still mapped */
    CK_ERR(cuMemAddressFree(other, 2 * GRAN), CUDA_ERROR_INVALID_VALUE);       /* wrong size */
    CK(cuMemMap(va + 2 * GRAN, 2 * GRAN, 0, h2, 0));
    CUmemAccessDesc rw = rw_on(0);
    CK(cuMemSetAccess(va, 4 * GRAN, &rw, 1)); /* one call over two adjacent mappings */
    ((char *)va)[4 * GRAN - 1] = 1;
    CK(cuMemUnmap(va, 4 * GRAN));
    CK(cuMemRelease(h));
    CK(cuMemRelease(h2));
    CK_ERR(cuMemRelease(h), CUDA_ERROR_INVALID_VALUE);
    CK(cuMemAddressFree(va, 4 * GRAN));
    CK(cuMemAddressFree(other, GRAN));
}

/* ---- stream-ordered allocation ---- */

Test(pool, retains_freed_memory_up_to_its_threshold_until_trimmed)
{
    setenv("SIMDEV_DEVICE_BYTES", "256M", 1);
    init();
    CUmemoryPool pool, current;
    CK(cuDeviceGetDefaultMemPool(&pool, 0));
    CK(cuDeviceGetMemPool(&current, 0));
    cr_assert_eq(pool, current);
    cuuint64_t max = UINT64_MAX, v = 0;
    CK(cuMemPoolSetAttribute(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &max)); /* what torch does */

    CUdeviceptr p;
    CK(cuMemAllocAsync(&p, 192 * MiB, NULL));
    CK(cuMemFreeAsync(p, NULL));
    CK(cuStreamSynchronize(NULL));
    CK(cuMemPoolGetAttribute(pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT, &v));
    cr_assert_eq(v, 0);
    CK(cuMemPoolGetAttribute(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT, &v));
    cr_assert_eq(v, 192 * MiB);
    cr_assert_eq(simdev_device_used(0), 192 * MiB); /* cached memory still shows as used */

    /* The pitfall: nothing is in use, yet cuMemCreate cannot get the memory. */
    CUmemAllocationProp prop = prop_at(CU_MEM_LOCATION_TYPE_DEVICE, 0);
    CUmemGenericAllocationHandle h;
    CK_ERR(cuMemCreate(&h, 128 * MiB, &prop, 0), CUDA_ERROR_OUT_OF_MEMORY);
    CK(cuMemPoolTrimTo(pool, 0));
    cr_assert_eq(simdev_device_used(0), 0);
    cr_assert_not(mapped(p, 192 * MiB), "trimmed memory must really be unmapped");
    CK(cuMemCreate(&h, 128 * MiB, &prop, 0));
    CK(cuMemRelease(h));

    /* The cache is reused by the next allocation of that size. */
    CUdeviceptr q, r;
    CK(cuMemAllocAsync(&q, 64 * MiB, NULL));
    CK(cuMemFreeAsync(q, NULL));
    CK(cuStreamSynchronize(NULL));
    CK(cuMemAllocAsync(&r, 64 * MiB, NULL));
    cr_assert_eq(r, q);
    cr_assert_eq(simdev_device_used(0), 64 * MiB);
    CK(cuMemFreeAsync(r, NULL));
    CK_ERR(cuMemFreeAsync(r, NULL), CUDA_ERROR_INVALID_VALUE); /* double free */
    CK(cuStreamSynchronize(NULL));
}

Test(pool, default_threshold_releases_at_free_time)
{
    init();
    CUmemoryPool pool;
    CUdeviceptr p;
    cuuint64_t v = 1;
    CK(cuDeviceGetDefaultMemPool(&pool, 0));
    CK(cuMemPoolGetAttribute(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &v));
    cr_assert_eq(v, 0);
    CK(cuMemAllocAsync_ptsz(&p, 10 * MiB, NULL));
    cr_assert_eq(simdev_device_used(0), 10 * MiB);
    CK(cuMemFreeAsync_ptsz(p, NULL));
    CK(cuStreamSynchronize_ptsz(NULL));
    cr_assert_eq(simdev_device_used(0), 0);
}

Test(pool, free_takes_effect_in_stream_order)
{
    init();
    CUstream s;
    CUdeviceptr p;
    cuuint64_t used = 0;
    CUmemoryPool pool;
    CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CK(cuDeviceGetDefaultMemPool(&pool, 0));
    CK(cuMemAllocAsync(&p, 4 * MiB, s));
    cr_assert_eq(simdev_stream_set_delay_us(s, 100000), 0);
    CK(cuMemsetD8Async(p, 7, 4 * MiB, s)); /* the stream still uses p when the free is queued */
    CK(cuMemFreeAsync(p, s));
    CK(cuMemPoolGetAttribute(pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT, &used));
    cr_assert_eq(used, 4 * MiB);
    cr_assert_eq(simdev_device_used(0), 4 * MiB);
    CK_ERR(cuStreamQuery(s), CUDA_ERROR_NOT_READY);
    CK(cuStreamSynchronize(s));
    CK(cuMemPoolGetAttribute(pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT, &used));
    cr_assert_eq(used, 0);
    cr_assert_eq(simdev_device_used(0), 0);
    cr_assert_eq(simdev_faulted(), 0);
    CK(cuStreamDestroy_v2(s));
}

Test(pool, created_pools_and_device_pool_selection)
{
    init();
    CUmemPoolProps props;
    memset(&props, 0, sizeof props);
    props.allocType = CU_MEM_ALLOCATION_TYPE_PINNED;
    props.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    props.location.id = 0;
    CUmemoryPool mine, current, def;
    CUdeviceptr p;
    CK(cuMemPoolCreate(&mine, &props));
    CK(cuDeviceSetMemPool(0, mine));
    CK(cuDeviceGetMemPool(&current, 0));
    cr_assert_eq(current, mine);
    CK(cuMemAllocFromPoolAsync(&p, MiB, mine, NULL));
    CK(cuMemPoolDestroy(mine)); /* outstanding allocation: freed once its free completes */
    CK(cuDeviceGetMemPool(&current, 0));
    CK(cuDeviceGetDefaultMemPool(&def, 0));
    cr_assert_eq(current, def);
    CK(cuMemFreeAsync(p, NULL));
    CK(cuCtxSynchronize());
    cr_assert_eq(simdev_device_used(0), 0);
    CK_ERR(cuMemPoolDestroy(def), CUDA_ERROR_INVALID_VALUE);

    props.location.type = CU_MEM_LOCATION_TYPE_HOST;
    CK(cuMemPoolCreate(&mine, &props));
    CK(cuMemAllocFromPoolAsync(&p, MiB, mine, NULL));
    cr_assert_eq(simdev_host_used(), MiB);
    cr_assert_eq(simdev_device_used(0), 0);
    CK(cuMemFreeAsync(p, NULL));
    CK(cuStreamSynchronize(NULL));
    CK(cuMemPoolDestroy(mine));
    cr_assert_eq(simdev_host_used(), 0);
}

/* ---- streams and events ---- */

Test(stream, work_runs_later_and_in_order)
{
    init();
    CUstream s;
    CK(cuStreamCreate(&s, 0));
    uint32_t *buf;
    CK(cuMemAllocHost_v2((void **)&buf, 4 * 1024));
    simdev_stream_set_delay_us(s, 50000);
    CK(cuMemsetD32Async((CUdeviceptr)buf, 1, 1024, s));
    CK(cuMemsetD32Async((CUdeviceptr)buf, 2, 512, s));
    cr_assert_eq(buf[0], 0, "the work must not run in the caller");
    CK_ERR(cuStreamQuery(s), CUDA_ERROR_NOT_READY);
    CK(cuStreamSynchronize(s));
    CK(cuStreamQuery(s));
    cr_assert_eq(buf[0], 2);
    cr_assert_eq(buf[1023], 1);
    unsigned flags = 9;
    CK(cuStreamGetFlags(s, &flags));
    cr_assert_eq(flags, 0);
    CUcontext ctx;
    CK(cuStreamGetCtx(s, &ctx));
    cr_assert_not_null(ctx);
    CK(cuStreamDestroy_v2(s));
    CK_ERR(cuStreamSynchronize(s), CUDA_ERROR_INVALID_HANDLE);
    CK(cuMemFreeHost(buf));
}

static void add_one(void *p)
{
    (*(int *)p)++;
}

Test(stream, destroy_lets_queued_work_finish)
{
    init();
    CUstream s;
    int count = 0;
    CK(cuStreamCreateWithPriority(&s, CU_STREAM_NON_BLOCKING, -3));
    int prio = 0;
    CK(cuStreamGetPriority(s, &prio));
    cr_assert_eq(prio, -3);
    CUevent e;
    CK(cuEventCreate(&e, 0));
    CK(cuLaunchHostFunc(s, sleep_ms_fn, (void *)(uintptr_t)30));
    CK(cuLaunchHostFunc(s, add_one, &count));
    CK(cuEventRecord(e, s));
    CK(cuStreamDestroy_v2(s));
    CK(cuEventSynchronize(e));
    cr_assert_eq(count, 1);
    CK(cuEventDestroy_v2(e));
}

Test(event, query_synchronize_and_elapsed_time)
{
    init();
    CUstream s;
    CUevent never, a, b, untimed;
    float ms = 0;
    CK(cuStreamCreate(&s, 0));
    CK(cuEventCreate(&never, 0));
    CK(cuEventCreate(&a, 0));
    CK(cuEventCreate(&b, CU_EVENT_BLOCKING_SYNC));
    CK(cuEventCreate(&untimed, CU_EVENT_DISABLE_TIMING));
    CK(cuEventQuery(never)); /* never recorded: complete */
    CK_ERR(cuEventElapsedTime_v2(&ms, never, a), CUDA_ERROR_INVALID_HANDLE);

    CK(cuEventRecord(a, s));
    CK(cuLaunchHostFunc(s, sleep_ms_fn, (void *)(uintptr_t)40));
    CK(cuEventRecordWithFlags(b, s, 0));
    CK(cuEventRecord(untimed, s));
    CK_ERR(cuEventQuery(b), CUDA_ERROR_NOT_READY);
    CK_ERR(cuEventElapsedTime_v2(&ms, a, b), CUDA_ERROR_NOT_READY);
    CK(cuEventSynchronize(b));
    CK(cuEventQuery(b));
    CK(cuEventElapsedTime_v2(&ms, a, b));
    cr_assert_geq(ms, 35.0f, "elapsed %f ms", ms);
    cr_assert_lt(ms, 5000.0f);
    CK(cuEventElapsedTime(&ms, a, b));
    CK(cuEventSynchronize(untimed));
    CK_ERR(cuEventElapsedTime_v2(&ms, a, untimed), CUDA_ERROR_INVALID_HANDLE);

    CK(cuEventDestroy_v2(never));
    CK(cuEventDestroy_v2(a));
    CK(cuEventDestroy_v2(b));
    CK(cuEventDestroy_v2(untimed));
    CK_ERR(cuEventQuery(a), CUDA_ERROR_INVALID_HANDLE);
    CK(cuStreamDestroy_v2(s));
}

/* A slow producer writes a buffer; the consumer copies it out. */
static void producer_consumer(bool wait, uint32_t *out)
{
    CUstream producer, consumer;
    CUevent done;
    uint32_t *src, *dst;
    CK(cuStreamCreate(&producer, CU_STREAM_NON_BLOCKING));
    CK(cuStreamCreate(&consumer, CU_STREAM_NON_BLOCKING));
    CK(cuEventCreate(&done, CU_EVENT_DISABLE_TIMING));
    CK(cuMemAlloc_v2((CUdeviceptr *)&src, 4096));
    CK(cuMemAllocHost_v2((void **)&dst, 4096));
    memset(src, 0, 4096);
    memset(dst, 0, 4096);
    simdev_stream_set_delay_us(producer, 200000);
    CK(cuMemsetD32Async((CUdeviceptr)src, 7, 1024, producer));
    CK(cuEventRecord(done, producer));
    if (wait)
        CK(cuStreamWaitEvent(consumer, done, 0));
    CK(cuMemcpyDtoHAsync_v2(dst, (CUdeviceptr)src, 4096, consumer));
    CK(cuStreamSynchronize(consumer));
    *out = dst[1023];
    CK(cuStreamSynchronize(producer));
    CK(cuEventDestroy_v2(done));
    CK(cuStreamDestroy_v2(producer));
    CK(cuStreamDestroy_v2(consumer));
    CK(cuMemFreeHost(dst));
    CK(cuMemFree_v2((CUdeviceptr)src));
}

Test(event, stream_wait_event_orders_across_streams)
{
    init();
    uint32_t v = 0;
    producer_consumer(true, &v);
    cr_assert_eq(v, 7);
}

Test(event, a_missing_wait_shows_up_as_wrong_data)
{
    init();
    uint32_t v = 1;
    producer_consumer(false, &v);
    cr_assert_eq(v, 0, "the consumer must have read before the slow producer wrote");
}

/* ---- the legacy stream's implicit synchronization ---- */

Test(legacy, waits_for_blocking_streams_but_not_non_blocking_ones)
{
    init();
    CUstream blocking, nonblocking;
    uint32_t *a, *b, *out;
    CK(cuStreamCreate(&blocking, CU_STREAM_DEFAULT));
    CK(cuStreamCreate(&nonblocking, CU_STREAM_NON_BLOCKING));
    CK(cuMemAllocHost_v2((void **)&a, 4096));
    CK(cuMemAllocHost_v2((void **)&b, 4096));
    CK(cuMemAllocHost_v2((void **)&out, 8));
    memset(a, 0, 4096);
    memset(b, 0, 4096);
    simdev_stream_set_delay_us(blocking, 100000);
    simdev_stream_set_delay_us(nonblocking, 400000); /* still asleep when the legacy copies run */
    CK(cuMemsetD32Async((CUdeviceptr)a, 1, 1024, blocking));
    CK(cuMemsetD32Async((CUdeviceptr)b, 2, 1024, nonblocking));
    /* Legacy-stream work: waits for `blocking`, not for `nonblocking`. */
    CK(cuMemcpyAsync((CUdeviceptr)&out[0], (CUdeviceptr)&a[5], 4, NULL));
    CK(cuMemcpyAsync((CUdeviceptr)&out[1], (CUdeviceptr)&b[5], 4, CU_STREAM_LEGACY));
    CK(cuStreamSynchronize(NULL));
    cr_assert_eq(out[0], 1);
    cr_assert_eq(out[1], 0);
    CK(cuCtxSynchronize());
    cr_assert_eq(b[5], 2);
    CK(cuStreamDestroy_v2(blocking));
    CK(cuStreamDestroy_v2(nonblocking));
}

Test(legacy, blocking_streams_wait_for_legacy_work)
{
    init();
    CUstream blocking, nonblocking;
    uint32_t *a, *out;
    CK(cuStreamCreate(&blocking, 0));
    CK(cuStreamCreate(&nonblocking, CU_STREAM_NON_BLOCKING));
    CK(cuMemAllocHost_v2((void **)&a, 4096));
    CK(cuMemAllocHost_v2((void **)&out, 8));
    memset(a, 0, 4096);
    memset(out, 0, 8);
    simdev_stream_set_delay_us(NULL, 150000);
    CK(cuMemsetD32Async((CUdeviceptr)a, 3, 1024, NULL));
    CK(cuMemcpyAsync((CUdeviceptr)&out[0], (CUdeviceptr)&a[9], 4, blocking));
    CK(cuMemcpyAsync((CUdeviceptr)&out[1], (CUdeviceptr)&a[9], 4, nonblocking));
    CK(cuStreamSynchronize(blocking));
    CK(cuStreamSynchronize(nonblocking));
    cr_assert_eq(out[0], 3);
    cr_assert_eq(out[1], 0);
    CK(cuStreamDestroy_v2(blocking));
    CK(cuStreamDestroy_v2(nonblocking));
}

Test(legacy, synchronous_copies_wait_for_blocking_streams)
{
    init();
    CUstream s;
    uint32_t *a, v = 0;
    CK(cuStreamCreate(&s, 0));
    CK(cuMemAlloc_v2((CUdeviceptr *)&a, 4096));
    memset(a, 0, 4096);
    simdev_stream_set_delay_us(s, 100000);
    CK(cuMemsetD32Async((CUdeviceptr)a, 5, 1024, s));
    CK(cuMemcpyDtoH_v2(&v, (CUdeviceptr)&a[100], 4));
    cr_assert_eq(v, 5);
    CK(cuMemsetD8_v2((CUdeviceptr)a, 9, 4));
    CK(cuMemcpy((CUdeviceptr)&v, (CUdeviceptr)a, 4));
    cr_assert_eq(v, 0x09090909u);
    CK(cuStreamDestroy_v2(s));
    CK(cuMemFree_v2((CUdeviceptr)a));
}

static void *per_thread_id(void *out)
{
    use_primary(0); /* contexts are current per thread */
    CK(cuStreamGetId(CU_STREAM_PER_THREAD, out));
    CK(cuStreamSynchronize_ptsz(NULL));
    return NULL;
}

Test(legacy, per_thread_default_streams_are_distinct)
{
    init();
    unsigned long long legacy = 0, mine = 0, again = 0, other = 0;
    CK(cuStreamGetId(NULL, &legacy));
    CK(cuStreamGetId(CU_STREAM_PER_THREAD, &mine));
    CK(cuStreamGetId_ptsz(NULL, &again));
    cr_assert_neq(legacy, mine);
    cr_assert_eq(mine, again);
    pthread_t t;
    pthread_create(&t, NULL, per_thread_id, &other);
    pthread_join(t, NULL);
    cr_assert_neq(other, mine);
    cr_assert_neq(other, legacy);
    uint32_t *a;
    CK(cuMemAllocHost_v2((void **)&a, 16));
    CK(cuMemsetD32Async_ptsz((CUdeviceptr)a, 4, 4, NULL));
    CK(cuStreamSynchronize(CU_STREAM_PER_THREAD));
    cr_assert_eq(a[3], 4);
}

Test(stream, wait_value_holds_a_stream_until_the_word_is_written)
{
    init();
    CUstream s, other;
    uint32_t *word, *data;
    CUdeviceptr dword;
    CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CK(cuStreamCreate(&other, CU_STREAM_NON_BLOCKING));
    CK(cuMemHostAlloc((void **)&word, 64, CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP));
    CK(cuMemHostGetDevicePointer_v2(&dword, word, 0));
    CK(cuMemAllocHost_v2((void **)&data, 64));
    memset(data, 0, 64);
    *word = 0;
    CK(cuStreamWaitValue32_v2(s, dword, 2, CU_STREAM_WAIT_VALUE_GEQ));
    CK(cuMemsetD32Async((CUdeviceptr)data, 5, 4, s));
    usleep(30000);
    CK_ERR(cuStreamQuery(s), CUDA_ERROR_NOT_READY);
    cr_assert_eq(data[0], 0);
    *word = 1;
    usleep(30000);
    CK_ERR(cuStreamQuery(s), CUDA_ERROR_NOT_READY);
    /* Another stream opens the gate in its own order. */
    CK(cuStreamWriteValue32_v2(other, dword, 2, 0));
    CK(cuStreamSynchronize(s));
    cr_assert_eq(data[3], 5);

    uint64_t *wide = (uint64_t *)(word + 2);
    *wide = 0;
    CK(cuStreamWaitValue64_v2(s, (CUdeviceptr)wide, 0x100000000ull, CU_STREAM_WAIT_VALUE_AND));
    CK(cuStreamWriteValue64_v2(other, (CUdeviceptr)wide, 0x100000000ull, 0));
    CK(cuStreamSynchronize(s));
    CK(cuStreamWaitValue32_v2(s, dword, 7, CU_STREAM_WAIT_VALUE_EQ));
    CK(cuStreamWriteValue32_v2(other, dword, 7, 0));
    CK(cuStreamSynchronize(s));
    CK(cuStreamWaitValue32_v2(s, dword, 0xfffffff0u, CU_STREAM_WAIT_VALUE_NOR)); /* ~(7 | v) != 0 */
    CK(cuStreamSynchronize(s));
    CK_ERR(cuStreamWaitValue32_v2(s, dword + 1, 1, 0), CUDA_ERROR_INVALID_VALUE); /* misaligned */

    /* A word nobody writes does not keep simdev_shutdown waiting. */
    CK(cuStreamWaitValue32_v2(s, dword, 100, CU_STREAM_WAIT_VALUE_EQ));
    simdev_shutdown();
}

/* ---- hardware work queues (CUDA_DEVICE_MAX_CONNECTIONS) ---- */

/* A pinned, device-mapped word for stream memory operations. */
static uint32_t *gate_word(CUdeviceptr *dword)
{
    uint32_t *word;
    CK(cuMemHostAlloc((void **)&word, 64, CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP));
    CK(cuMemHostGetDevicePointer_v2(dword, word, 0));
    memset(word, 0, 64);
    return word;
}

/* With one connection every stream shares one in-order queue: work on B
 * enqueued after a blocked wait on A does not run until A's wait is released. */
Test(hwq, one_connection_a_blocked_wait_blocks_every_stream)
{
    setenv("CUDA_DEVICE_MAX_CONNECTIONS", "1", 1);
    init();
    CUstream a, b;
    CUdeviceptr dword;
    uint32_t *word = gate_word(&dword);
    uint32_t *data;
    CK(cuMemAllocHost_v2((void **)&data, 64));
    memset(data, 0, 64);
    CK(cuStreamCreate(&a, CU_STREAM_NON_BLOCKING));
    CK(cuStreamCreate(&b, CU_STREAM_NON_BLOCKING));
    CK(cuMemsetD32Async((CUdeviceptr)data, 1, 1, b)); /* before the wait: runs */
    CK(cuStreamSynchronize(b));
    CK(cuStreamWaitValue32_v2(a, dword, 1, CU_STREAM_WAIT_VALUE_GEQ));
    CK(cuMemsetD32Async((CUdeviceptr)(data + 1), 2, 1, b));
    usleep(30000);
    cr_assert_eq(data[0], 1);
    cr_assert_eq(data[1], 0, "B ran past A's blocked wait in the shared queue");
    CK_ERR(cuStreamQuery(b), CUDA_ERROR_NOT_READY);
    *word = 1; /* released from the host */
    CK(cuStreamSynchronize(b));
    cr_assert_eq(data[1], 2);
    CK(cuStreamSynchronize(a));
}

/* A gate written the naive way (arrive then wait, one stream after another)
 * deadlocks under one connection: the second stream's arrival sits behind
 * the first stream's wait. */
Test(hwq, one_connection_second_arrival_waits_behind_first_wait)
{
    setenv("CUDA_DEVICE_MAX_CONNECTIONS", "1", 1);
    init();
    CUstream a, b;
    CUdeviceptr dword;
    uint32_t *word = gate_word(&dword);
    CK(cuStreamCreate(&a, CU_STREAM_NON_BLOCKING));
    CK(cuStreamCreate(&b, CU_STREAM_NON_BLOCKING));
    CUstreamBatchMemOpParams p[2];
    for (int i = 0; i < 2; i++) {
        CUstream s = i ? b : a;
        memset(p, 0, sizeof p);
        p[0].writeValue.operation = CU_STREAM_MEM_OP_WRITE_VALUE_32;
        p[0].writeValue.address = dword + 4 + 4 * (unsigned)i; /* "arrived" */
        p[0].writeValue.value = 1;
        p[1].waitValue.operation = CU_STREAM_MEM_OP_WAIT_VALUE_32;
        p[1].waitValue.address = dword; /* the gate */
        p[1].waitValue.value = 1;
        p[1].waitValue.flags = CU_STREAM_WAIT_VALUE_GEQ;
        CK(cuStreamBatchMemOp_v2(s, 2, p, 0));
    }
    usleep(30000);
    cr_assert_eq(__atomic_load_n(&word[1], __ATOMIC_ACQUIRE), 1);
    cr_assert_eq(__atomic_load_n(&word[2], __ATOMIC_ACQUIRE), 0, "B arrived past A's held batch");
    word[0] = 1;
    CK(cuStreamSynchronize(b));
    cr_assert_eq(word[2], 1);
}

/* Round-robin at creation: the legacy stream has queue 0, created streams
 * take 1, 2, ... wrapping. With 2 connections the 1st and 3rd created stream
 * share queue 1; the 2nd shares queue 0 with the legacy stream. */
Test(hwq, streams_are_assigned_round_robin)
{
    setenv("CUDA_DEVICE_MAX_CONNECTIONS", "2", 1);
    init();
    CUstream s1, s2, s3;
    CUdeviceptr dword;
    uint32_t *word = gate_word(&dword);
    uint32_t *data;
    CK(cuMemAllocHost_v2((void **)&data, 64));
    memset(data, 0, 64);
    CK(cuStreamCreate(&s1, CU_STREAM_NON_BLOCKING));
    CK(cuStreamCreate(&s2, CU_STREAM_NON_BLOCKING));
    CK(cuStreamCreate(&s3, CU_STREAM_NON_BLOCKING));
    CK(cuStreamWaitValue32_v2(s1, dword, 1, CU_STREAM_WAIT_VALUE_GEQ));
    CK(cuMemsetD32Async((CUdeviceptr)data, 2, 1, s2));
    CK(cuMemsetD32Async((CUdeviceptr)(data + 1), 3, 1, s3));
    CK(cuStreamSynchronize(s2)); /* another queue: not blocked */
    cr_assert_eq(data[0], 2);
    CK(cuMemsetD32Async((CUdeviceptr)(data + 2), 4, 1, NULL)); /* legacy, queue 0, non-blocking streams: free */
    CK(cuStreamSynchronize(NULL));
    usleep(20000);
    cr_assert_eq(data[1], 0, "s3 shares s1's queue and must wait");
    *word = 1;
    CK(cuStreamSynchronize(s3));
    cr_assert_eq(data[1], 3);
}

static void wait_word_fn(void *word)
{
    while (!__atomic_load_n((uint32_t *)word, __ATOMIC_ACQUIRE))
        usleep(1000);
}

/* A host function and a wait on an event not yet complete block their queue too. */
Test(hwq, host_functions_and_event_waits_block_the_queue)
{
    setenv("CUDA_DEVICE_MAX_CONNECTIONS", "1", 1);
    init();
    CUstream a, b, c;
    CUevent ev;
    uint32_t flag = 0, *data;
    CK(cuMemAllocHost_v2((void **)&data, 64));
    memset(data, 0, 64);
    CK(cuStreamCreate(&a, CU_STREAM_NON_BLOCKING));
    CK(cuStreamCreate(&b, CU_STREAM_NON_BLOCKING));
    CK(cuStreamCreate(&c, CU_STREAM_NON_BLOCKING));
    CK(cuLaunchHostFunc(a, wait_word_fn, &flag));
    CK(cuMemsetD32Async((CUdeviceptr)data, 1, 1, b));
    usleep(20000);
    cr_assert_eq(data[0], 0, "B ran while A's host function held the queue");
    __atomic_store_n(&flag, 1, __ATOMIC_RELEASE);
    CK(cuStreamSynchronize(b));
    cr_assert_eq(data[0], 1);

    /* c waits on an event that a's later work records; b's work is behind c's wait. */
    flag = 0;
    CK(cuEventCreate(&ev, CU_EVENT_DISABLE_TIMING));
    CK(cuLaunchHostFunc(a, wait_word_fn, &flag));
    CK(cuEventRecord(ev, a));
    CK(cuStreamWaitEvent(c, ev, 0));
    CK(cuMemsetD32Async((CUdeviceptr)(data + 1), 2, 1, b));
    usleep(20000);
    cr_assert_eq(data[1], 0);
    __atomic_store_n(&flag, 1, __ATOMIC_RELEASE);
    CK(cuStreamSynchronize(b));
    cr_assert_eq(data[1], 2);
    CK(cuCtxSynchronize());
}

/* The default is 8 connections: eight created streams (queues 1..7, 0) do
 * not block each other; a ninth shares the first one's queue. */
Test(hwq, default_is_eight_connections)
{
    unsetenv("CUDA_DEVICE_MAX_CONNECTIONS");
    init();
    CUstream s[9];
    CUdeviceptr dword;
    uint32_t *word = gate_word(&dword);
    uint32_t *data;
    CK(cuMemAllocHost_v2((void **)&data, 64));
    memset(data, 0, 64);
    for (int i = 0; i < 9; i++)
        CK(cuStreamCreate(&s[i], CU_STREAM_NON_BLOCKING));
    CK(cuStreamWaitValue32_v2(s[0], dword, 1, CU_STREAM_WAIT_VALUE_GEQ));
    for (int i = 1; i < 9; i++)
        CK(cuMemsetD32Async((CUdeviceptr)(data + i), (unsigned)i, 1, s[i]));
    for (int i = 1; i < 8; i++) {
        CK(cuStreamSynchronize(s[i]));
        cr_assert_eq(data[i], (uint32_t)i);
    }
    usleep(20000);
    cr_assert_eq(data[8], 0, "the ninth stream shares the first one's queue");
    *word = 1;
    CK(cuStreamSynchronize(s[8]));
    cr_assert_eq(data[8], 8);
}

/* ---- memory strictness ---- */

/* cuda.h, cuMemMap: offset "Note: currently must be zero". */
Test(strict, map_offset_must_be_zero)
{
    init();
    CUdeviceptr va = reserve(2 * GRAN);
    CUmemAllocationProp prop = prop_at(CU_MEM_LOCATION_TYPE_DEVICE, 0);
    CUmemGenericAllocationHandle h;
    CK(cuMemCreate(&h, 2 * GRAN, &prop, 0));
    CK_ERR(cuMemMap(va, GRAN, GRAN, h, 0), CUDA_ERROR_INVALID_VALUE);
    CK(cuMemMap(va, 2 * GRAN, 0, h, 0));
    CK(cuMemUnmap(va, 2 * GRAN));
    CK(cuMemRelease(h));
    CK(cuMemAddressFree(va, 2 * GRAN));
}

/* Each location type has its own granularity (cuMemGetAllocationGranularity
 * takes the properties); simdev's host one is 4 MiB by default so code that
 * assumes the device's is caught: sizes and mapped addresses must follow it. */
Test(strict, host_locations_have_their_own_granularity)
{
    setenv("SIMDEV_HOST_GRANULARITY", "4M", 1);
    init();
    size_t gd = 0, gh = 0, gn = 0;
    CUmemAllocationProp dev = prop_at(CU_MEM_LOCATION_TYPE_DEVICE, 0);
    CUmemAllocationProp host = prop_at(CU_MEM_LOCATION_TYPE_HOST, 0);
    CUmemAllocationProp numa = prop_at(CU_MEM_LOCATION_TYPE_HOST_NUMA, 0);
    CK(cuMemGetAllocationGranularity(&gd, &dev, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    CK(cuMemGetAllocationGranularity(&gh, &host, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    CK(cuMemGetAllocationGranularity(&gn, &numa, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED));
    cr_assert_eq(gd, GRAN);
    cr_assert_eq(gh, HOST_GRAN);
    cr_assert_eq(gn, HOST_GRAN);
    CUmemGenericAllocationHandle h;
    CK_ERR(cuMemCreate(&h, GRAN, &host, 0), CUDA_ERROR_INVALID_VALUE); /* a device granule */
    CK(cuMemCreate(&h, HOST_GRAN, &host, 0));
    /* A VA aligned only to the device granularity cannot take it. */
    CUdeviceptr va;
    CK(cuMemAddressReserve(&va, 3 * HOST_GRAN, HOST_GRAN, 0, 0));
    CK_ERR(cuMemMap(va + GRAN, HOST_GRAN, 0, h, 0), CUDA_ERROR_INVALID_VALUE);
    CK(cuMemMap(va + HOST_GRAN, HOST_GRAN, 0, h, 0));
    CK(cuMemUnmap(va + HOST_GRAN, HOST_GRAN));
    CK(cuMemRelease(h));
    CK(cuMemAddressFree(va, 3 * HOST_GRAN));
}

Test(strict, host_granularity_is_configurable)
{
    setenv("SIMDEV_HOST_GRANULARITY", "8M", 1);
    init();
    size_t gh = 0;
    CUmemAllocationProp host = prop_at(CU_MEM_LOCATION_TYPE_HOST, 0);
    CK(cuMemGetAllocationGranularity(&gh, &host, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    cr_assert_eq(gh, 8 * MiB);
}

/* Unset, the host granularity is 4 MiB whatever the device's: strict. */
Test(strict, unset_host_granularity_is_strict)
{
    unsetenv("SIMDEV_HOST_GRANULARITY");
    setenv("SIMDEV_GRANULARITY", "64K", 1);
    init();
    size_t gh = 0;
    CUmemAllocationProp host = prop_at(CU_MEM_LOCATION_TYPE_HOST, 0);
    CK(cuMemGetAllocationGranularity(&gh, &host, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    cr_assert_eq(gh, 4 * MiB);
}

/* cuMemCreate: HOST_NUMA ids must name a host NUMA node (0 without NUMA);
 * HOST_NUMA_CURRENT is refused; HOST allocations "are not IPC capable and
 * requestedHandleTypes must be 0". */
Test(strict, host_numa_ids_and_handle_types_are_checked)
{
    setenv("SIMDEV_HOST_NUMA_NODES", "2", 1);
    init();
    CUmemGenericAllocationHandle h;
    CUmemAllocationProp p = prop_at(CU_MEM_LOCATION_TYPE_HOST_NUMA, 1);
    CK(cuMemCreate(&h, HOST_GRAN, &p, 0));
    CK(cuMemRelease(h));
    p = prop_at(CU_MEM_LOCATION_TYPE_HOST_NUMA, 2);
    CK_ERR(cuMemCreate(&h, HOST_GRAN, &p, 0), CUDA_ERROR_INVALID_VALUE);
    p = prop_at(CU_MEM_LOCATION_TYPE_HOST_NUMA, -1);
    CK_ERR(cuMemCreate(&h, HOST_GRAN, &p, 0), CUDA_ERROR_INVALID_VALUE);
    p = prop_at(CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT, 0);
    CK_ERR(cuMemCreate(&h, HOST_GRAN, &p, 0), CUDA_ERROR_INVALID_VALUE);
    p = prop_at(CU_MEM_LOCATION_TYPE_HOST, 12345); /* the id is ignored for HOST */
    CK(cuMemCreate(&h, HOST_GRAN, &p, 0));
    CK(cuMemRelease(h));
    p.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    CK_ERR(cuMemCreate(&h, HOST_GRAN, &p, 0), CUDA_ERROR_INVALID_VALUE);
    /* HOST_NUMA access cannot be given to device-located memory (cuMemSetAccess). */
    CUdeviceptr va = reserve(GRAN);
    CUmemAllocationProp d = prop_at(CU_MEM_LOCATION_TYPE_DEVICE, 0);
    CK(cuMemCreate(&h, GRAN, &d, 0));
    CK(cuMemMap(va, GRAN, 0, h, 0));
    CUmemAccessDesc acc;
    memset(&acc, 0, sizeof acc);
    acc.location.type = CU_MEM_LOCATION_TYPE_HOST_NUMA;
    acc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    CK_ERR(cuMemSetAccess(va, GRAN, &acc, 1), CUDA_ERROR_INVALID_VALUE);
    CK(cuMemUnmap(va, GRAN));
    CK(cuMemRelease(h));
}

/* Access is per mapping and per device: device 1 was not granted access with
 * cuMemSetAccess, so a copy on one of its streams faults, although device 0
 * (and the host process) can touch the memory. */
Test(strict, a_device_without_access_faults_even_through_a_copy, .init = cr_redirect_stderr)
{
    setenv("SIMDEV_DEVICES", "2", 1);
    init();
    CUdeviceptr va = reserve(GRAN);
    CUmemGenericAllocationHandle h = map_rw(va, GRAN, CU_MEM_LOCATION_TYPE_DEVICE); /* device 0 only */
    void *host;
    CK(cuMemAllocHost_v2(&host, 4096));
    CUcontext c1;
    CUstream s0, s1;
    CK(cuStreamCreate(&s0, CU_STREAM_NON_BLOCKING));
    CK(cuMemcpyDtoHAsync_v2(host, va, 4096, s0));
    CK(cuStreamSynchronize(s0));
    CK(cuDevicePrimaryCtxRetain(&c1, 1));
    CK(cuCtxPushCurrent_v2(c1));
    CK(cuStreamCreate(&s1, CU_STREAM_NON_BLOCKING));
    CK(cuMemcpyDtoHAsync_v2(host, va, 4096, s1));
    CK_ERR(cuStreamSynchronize(s1), CUDA_ERROR_ILLEGAL_ADDRESS);
    cr_assert(simdev_faulted());
    simdev_clear_fault();
    /* Granted, it works. */
    CUmemAccessDesc both[2] = {rw_on(0), rw_on(1)};
    CK(cuMemSetAccess(va, GRAN, both, 2));
    CK(cuMemsetD32Async(va, 7, 4, s1));
    CK(cuStreamSynchronize(s1));
    cr_assert_eq(*(uint32_t *)va, 7);
    /* Read-only for device 1: its writes fault. */
    CUmemAccessDesc ro = rw_on(1);
    ro.flags = CU_MEM_ACCESS_FLAGS_PROT_READ;
    CK(cuMemSetAccess(va, GRAN, &ro, 1));
    CK(cuMemcpyDtoHAsync_v2(host, va, 4096, s1));
    CK(cuStreamSynchronize(s1));
    CK(cuMemsetD32Async(va, 8, 4, s1));
    CK_ERR(cuStreamSynchronize(s1), CUDA_ERROR_ILLEGAL_ADDRESS);
    simdev_clear_fault();
    CK(cuMemUnmap(va, GRAN));
    CK(cuMemRelease(h));
}

/* A stream-ordered pool's memory is its device's; a peer needs
 * cuMemPoolSetAccess (which cuMemPoolGetAccess reports). */
Test(strict, pool_memory_needs_pool_access_from_a_peer, .init = cr_redirect_stderr)
{
    setenv("SIMDEV_DEVICES", "2", 1);
    init();
    CUmemoryPool pool;
    CUmemAccess_flags f;
    CUmemLocation l1 = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 1}, l0 = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 0};
    CK(cuDeviceGetDefaultMemPool(&pool, 0));
    CK(cuMemPoolGetAccess(&f, pool, &l0));
    cr_assert_eq(f, CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
    CK(cuMemPoolGetAccess(&f, pool, &l1));
    cr_assert_eq(f, CU_MEM_ACCESS_FLAGS_PROT_NONE);
    CUstream s0, s1;
    CUdeviceptr p;
    CK(cuStreamCreate(&s0, CU_STREAM_NON_BLOCKING));
    CK(cuMemAllocAsync(&p, 4096, s0));
    CK(cuStreamSynchronize(s0));
    CUcontext c1;
    CK(cuDevicePrimaryCtxRetain(&c1, 1));
    CK(cuCtxPushCurrent_v2(c1));
    CK(cuStreamCreate(&s1, CU_STREAM_NON_BLOCKING));
    CK(cuMemsetD32Async(p, 1, 4, s1));
    CK_ERR(cuStreamSynchronize(s1), CUDA_ERROR_ILLEGAL_ADDRESS);
    simdev_clear_fault();
    CUmemAccessDesc d = rw_on(1);
    CK(cuMemPoolSetAccess(pool, &d, 1));
    CK(cuMemPoolGetAccess(&f, pool, &l1));
    cr_assert_eq(f, CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
    CK(cuMemsetD32Async(p, 2, 4, s1));
    CK(cuStreamSynchronize(s1));
    cr_assert_eq(*(uint32_t *)p, 2);
    CUmemAccessDesc none = rw_on(0);
    none.flags = CU_MEM_ACCESS_FLAGS_PROT_NONE;
    CK_ERR(cuMemPoolSetAccess(pool, &none, 1), CUDA_ERROR_INVALID_VALUE); /* the owner keeps access */
    CK(cuMemFreeAsync(p, s1));
    CK(cuStreamSynchronize(s1));
}

/* cuMemHostGetDevicePointer "will fail if the CU_MEMHOSTALLOC_DEVICEMAP flag
 * was not specified"; stream memory operations need a device-visible address. */
Test(strict, device_pointers_of_host_memory_need_devicemap)
{
    init();
    void *plain, *mapped_mem, *heap = malloc(64);
    CUdeviceptr d;
    CUstream s;
    CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CK(cuMemAllocHost_v2(&plain, 64));
    CK(cuMemHostAlloc(&mapped_mem, 64, CU_MEMHOSTALLOC_PORTABLE));
    CK_ERR(cuMemHostGetDevicePointer_v2(&d, plain, 0), CUDA_ERROR_INVALID_VALUE);
    CK_ERR(cuMemHostGetDevicePointer_v2(&d, mapped_mem, 0), CUDA_ERROR_INVALID_VALUE);
    CK_ERR(cuMemHostGetDevicePointer_v2(&d, heap, 0), CUDA_ERROR_INVALID_VALUE);
    CK_ERR(cuStreamWriteValue32_v2(s, (CUdeviceptr)plain, 1, 0), CUDA_ERROR_INVALID_VALUE);
    CK_ERR(cuStreamWaitValue32_v2(s, (CUdeviceptr)heap, 0, CU_STREAM_WAIT_VALUE_GEQ), CUDA_ERROR_INVALID_VALUE);
    CUstreamBatchMemOpParams op;
    memset(&op, 0, sizeof op);
    op.writeValue.operation = CU_STREAM_MEM_OP_WRITE_VALUE_32;
    op.writeValue.address = (CUdeviceptr)plain;
    CK_ERR(cuStreamBatchMemOp_v2(s, 1, &op, 0), CUDA_ERROR_INVALID_VALUE);
    CK(cuMemFreeHost(mapped_mem));
    CK(cuMemHostAlloc(&mapped_mem, 64, CU_MEMHOSTALLOC_DEVICEMAP));
    CK(cuMemHostGetDevicePointer_v2(&d, (char *)mapped_mem + 8, 0));
    CK(cuStreamWriteValue32_v2(s, d, 5, 0));
    CUdeviceptr dev;
    CK(cuMemAlloc_v2(&dev, 64));
    CK(cuStreamWriteValue32_v2(s, dev, 6, 0)); /* device memory is visible */
    CK(cuStreamSynchronize(s));
    cr_assert_eq(((uint32_t *)mapped_mem)[2], 5);
    cr_assert_eq(*(uint32_t *)dev, 6);
    free(heap);
}

/* No fallback to device 0: with no current context, what needs one returns
 * CUDA_ERROR_INVALID_CONTEXT (cuCtxGetDevice, cuMemAlloc, cuStreamCreate, the
 * default streams, ...), in any thread that has not made one current. */
static void *no_context_calls(void *unused)
{
    (void)unused;
    CUdevice dev;
    CUdeviceptr p;
    CUstream s;
    CUevent e;
    size_t free, total;
    void *host;
    CK_ERR(cuCtxGetDevice(&dev), CUDA_ERROR_INVALID_CONTEXT);
    CK_ERR(cuCtxSynchronize(), CUDA_ERROR_INVALID_CONTEXT);
    CK_ERR(cuMemAlloc_v2(&p, 4096), CUDA_ERROR_INVALID_CONTEXT);
    CK_ERR(cuMemGetInfo_v2(&free, &total), CUDA_ERROR_INVALID_CONTEXT);
    CK_ERR(cuMemAllocHost_v2(&host, 4096), CUDA_ERROR_INVALID_CONTEXT);
    CK_ERR(cuStreamCreate(&s, 0), CUDA_ERROR_INVALID_CONTEXT);
    CK_ERR(cuEventCreate(&e, 0), CUDA_ERROR_INVALID_CONTEXT);
    CK_ERR(cuStreamSynchronize(NULL), CUDA_ERROR_INVALID_CONTEXT);
    CK_ERR(cuStreamQuery_ptsz(NULL), CUDA_ERROR_INVALID_CONTEXT);
    CK_ERR(cuMemAllocAsync(&p, 4096, NULL), CUDA_ERROR_INVALID_CONTEXT);
    return NULL;
}

Test(strict, no_current_context_is_invalid_context)
{
    CK(cuInit(0));
    no_context_calls(NULL);
    use_primary(0);
    CUdeviceptr p;
    CK(cuMemAlloc_v2(&p, 4096)); /* this thread now has one; another thread still has none */
    pthread_t t;
    pthread_create(&t, NULL, no_context_calls, NULL);
    pthread_join(t, NULL);
    CK(cuMemFree_v2(p));
}

/* ---- stream capture and graphs ---- */

static CUgraphExec end_and_instantiate(CUstream s)
{
    CUgraph g;
    CUgraphExec x;
    CK(cuStreamEndCapture(s, &g));
    CK(cuGraphInstantiateWithFlags(&x, g, 0));
    CK(cuGraphDestroy(g)); /* the instantiation keeps what it needs */
    return x;
}

/* Work enqueued on a capturing stream is recorded, not run; the graph runs it
 * at every launch. */
Test(capture, work_is_recorded_not_run_and_replays)
{
    init();
    CUstream s;
    uint32_t *a;
    CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CK(cuMemAllocHost_v2((void **)&a, 64));
    memset(a, 0, 64);
    CUstreamCaptureStatus st;
    CK(cuStreamIsCapturing(s, &st));
    cr_assert_eq(st, CU_STREAM_CAPTURE_STATUS_NONE);
    CK(cuStreamBeginCapture_v2(s, CU_STREAM_CAPTURE_MODE_GLOBAL));
    CK_ERR(cuStreamBeginCapture_v2(s, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_ERROR_ILLEGAL_STATE);
    cuuint64_t id = 0;
    CK(cuStreamGetCaptureInfo_v3(s, &st, &id, NULL, NULL, NULL, NULL));
    cr_assert_eq(st, CU_STREAM_CAPTURE_STATUS_ACTIVE);
    cr_assert_neq(id, 0);
    CK(cuMemsetD32Async((CUdeviceptr)a, 9, 1, s));
    CK(cuLaunchHostFunc(s, add_one, &a[1]));
    usleep(20000);
    cr_assert_eq(a[0], 0, "captured work ran");
    CUgraphExec x = end_and_instantiate(s);
    CK(cuStreamIsCapturing(s, &st));
    cr_assert_eq(st, CU_STREAM_CAPTURE_STATUS_NONE);
    cr_assert_eq(a[1], 0);
    for (int i = 0; i < 3; i++)
        CK(cuGraphLaunch(x, s));
    CK(cuStreamSynchronize(s));
    cr_assert_eq(a[0], 9);
    cr_assert_eq(a[1], 3);
    CK(cuGraphExecDestroy(x));
    CK_ERR(cuStreamBeginCapture_v2(NULL, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
}

static void *query_event(void *ev)
{
    use_primary(0);
    return (void *)(uintptr_t)cuEventQuery((CUevent)ev);
}

static void *relaxed_query_event(void *ev)
{
    use_primary(0);
    CUstreamCaptureMode m = CU_STREAM_CAPTURE_MODE_RELAXED;
    CK(cuThreadExchangeStreamCaptureMode(&m));
    cr_assert_eq(m, CU_STREAM_CAPTURE_MODE_GLOBAL);
    return (void *)(uintptr_t)cuEventQuery((CUevent)ev);
}

static CUresult query_from_thread(void *(*fn)(void *), CUevent ev)
{
    pthread_t t;
    void *ret;
    pthread_create(&t, NULL, fn, ev);
    pthread_join(t, &ret);
    return (CUresult)(uintptr_t)ret;
}

/* Global mode: an unsafe call (cuEventQuery) from ANY thread not in relaxed
 * mode fails with CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and invalidates the
 * capture; cuStreamEndCapture then returns CUDA_ERROR_STREAM_CAPTURE_INVALIDATED. */
Test(capture, global_mode_unsafe_call_from_another_thread_invalidates)
{
    init();
    CUstream s;
    CUevent ev;
    CUgraph g;
    uint32_t *a;
    CK(cuMemAllocHost_v2((void **)&a, 64));
    CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CK(cuEventCreate(&ev, CU_EVENT_DISABLE_TIMING));
    CK(cuStreamBeginCapture_v2(s, CU_STREAM_CAPTURE_MODE_GLOBAL));
    cr_assert_eq(query_from_thread(relaxed_query_event, ev), CUDA_SUCCESS, "relaxed threads may query");
    cr_assert_eq(query_from_thread(query_event, ev), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    CUstreamCaptureStatus st;
    CK(cuStreamIsCapturing(s, &st));
    cr_assert_eq(st, CU_STREAM_CAPTURE_STATUS_INVALIDATED);
    CK_ERR(cuMemsetD32Async((CUdeviceptr)a, 0, 1, s), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    CK_ERR(cuStreamEndCapture(s, &g), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    cr_assert_null(g);
    /* The same calls are fine once no capture is active. */
    cr_assert_eq(query_from_thread(query_event, ev), CUDA_SUCCESS);
}

/* The capturing thread's own unsafe calls fail in global and thread-local
 * mode: cuStreamSynchronize/Query of the capturing stream, cuCtxSynchronize,
 * synchronous copies, cuMemAlloc, cuEventSynchronize. */
Test(capture, own_unsafe_calls_invalidate_in_global_and_thread_local_mode)
{
    init();
    CUstream s;
    CUgraph g;
    CUevent ev;
    void *h;
    CUdeviceptr d;
    CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CK(cuEventCreate(&ev, CU_EVENT_DISABLE_TIMING));
    CK(cuMemAllocHost_v2(&h, 64));
    CK(cuMemAlloc_v2(&d, 64));
    CUstreamCaptureMode modes[2] = {CU_STREAM_CAPTURE_MODE_GLOBAL, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL};
    for (int m = 0; m < 2; m++) {
        for (int call = 0; call < 7; call++) {
            CK(cuStreamBeginCapture_v2(s, modes[m]));
            CUresult rc = call == 0   ? cuStreamSynchronize(s)
                          : call == 1 ? cuStreamQuery(s)
                          : call == 2 ? cuCtxSynchronize()
                          : call == 3 ? cuMemcpyHtoD_v2(d, h, 64)
                          : call == 4 ? cuMemAlloc_v2(&d, 64)
                          : call == 5 ? cuEventSynchronize(ev)
                                      : cuEventQuery(ev);
            cr_assert_eq(rc, CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "mode %d call %d: %d", m, call, rc);
            CK_ERR(cuStreamEndCapture(s, &g), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
        }
    }
}

/* Thread-local mode: other threads' unsafe calls are ignored. Relaxed
 * captures prohibit nothing (but a capturing stream still cannot be synced). */
Test(capture, thread_local_and_relaxed_modes)
{
    init();
    CUstream s;
    CUevent ev;
    CUgraph g;
    CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CK(cuEventCreate(&ev, CU_EVENT_DISABLE_TIMING));
    CK(cuStreamBeginCapture_v2(s, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
    cr_assert_eq(query_from_thread(query_event, ev), CUDA_SUCCESS);
    CK(cuStreamEndCapture(s, &g));
    CK(cuGraphDestroy(g));
    CK(cuStreamBeginCapture_v2(s, CU_STREAM_CAPTURE_MODE_RELAXED));
    CK(cuEventQuery(ev));
    cr_assert_eq(query_from_thread(query_event, ev), CUDA_SUCCESS);
    CK_ERR(cuStreamSynchronize(s), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    CK_ERR(cuStreamEndCapture(s, &g), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
}

/* Capture follows event record/wait across streams: a stream that waits on
 * an event recorded in a capturing stream joins the capture, and its work is
 * recorded into the same graph; the origin ends it for all. */
Test(capture, follows_events_across_streams)
{
    init();
    CUstream a, b;
    CUevent fork, join;
    uint32_t *x;
    CK(cuStreamCreate(&a, CU_STREAM_NON_BLOCKING));
    CK(cuStreamCreate(&b, CU_STREAM_NON_BLOCKING));
    CK(cuEventCreate(&fork, CU_EVENT_DISABLE_TIMING));
    CK(cuEventCreate(&join, CU_EVENT_DISABLE_TIMING));
    CK(cuMemAllocHost_v2((void **)&x, 64));
    memset(x, 0, 64);
    CK(cuStreamBeginCapture_v2(a, CU_STREAM_CAPTURE_MODE_GLOBAL));
    CK(cuMemsetD32Async((CUdeviceptr)x, 1, 1, a));
    CK(cuEventRecord(fork, a));
    CK(cuStreamWaitEvent(b, fork, 0));
    CUstreamCaptureStatus st;
    CK(cuStreamIsCapturing(b, &st));
    cr_assert_eq(st, CU_STREAM_CAPTURE_STATUS_ACTIVE, "b joined the capture");
    CK(cuMemsetD32Async((CUdeviceptr)(x + 1), 2, 1, b));
    CK(cuEventRecord(join, b));
    CK(cuStreamWaitEvent(a, join, 0));
    CUgraph g;
    CK_ERR(cuStreamEndCapture(b, &g), CUDA_ERROR_STREAM_CAPTURE_UNMATCHED);
    CUgraphExec ex = end_and_instantiate(a);
    CK(cuStreamIsCapturing(b, &st));
    cr_assert_eq(st, CU_STREAM_CAPTURE_STATUS_NONE);
    usleep(10000);
    cr_assert_eq(x[1], 0);
    CK(cuGraphLaunch(ex, a));
    CK(cuStreamSynchronize(a));
    cr_assert_eq(x[0], 1);
    cr_assert_eq(x[1], 2);
    CK(cuGraphExecDestroy(ex));
    /* An event last recorded inside a capture cannot be queried, in any mode,
     * until recorded again outside one (CUDA_ERROR_CAPTURED_EVENT). */
    CUstreamCaptureMode m = CU_STREAM_CAPTURE_MODE_RELAXED;
    CK(cuThreadExchangeStreamCaptureMode(&m));
    CK_ERR(cuEventQuery(join), CUDA_ERROR_CAPTURED_EVENT);
    CK_ERR(cuEventSynchronize(fork), CUDA_ERROR_CAPTURED_EVENT);
    CK(cuEventRecord(join, a));
    CK(cuEventSynchronize(join));
    CK(cuEventQuery(join));
}

/* A forked stream whose last work was not joined back: UNJOINED. The legacy
 * stream used while a blocking stream captures: STREAM_CAPTURE_IMPLICIT, and
 * the capture is invalidated. */
Test(capture, unjoined_forks_and_implicit_legacy_dependencies_fail)
{
    init();
    CUstream a, b, blk;
    CUevent fork;
    CUgraph g;
    uint32_t *x;
    CK(cuStreamCreate(&a, CU_STREAM_NON_BLOCKING));
    CK(cuStreamCreate(&b, CU_STREAM_NON_BLOCKING));
    CK(cuStreamCreate(&blk, 0));
    CK(cuEventCreate(&fork, CU_EVENT_DISABLE_TIMING));
    CK(cuMemAllocHost_v2((void **)&x, 64));
    CK(cuStreamBeginCapture_v2(a, CU_STREAM_CAPTURE_MODE_GLOBAL));
    CK(cuEventRecord(fork, a));
    CK(cuStreamWaitEvent(b, fork, 0));
    CK(cuMemsetD32Async((CUdeviceptr)x, 1, 1, b)); /* never joined back into a */
    CK_ERR(cuStreamEndCapture(a, &g), CUDA_ERROR_STREAM_CAPTURE_UNJOINED);
    CUstreamCaptureStatus st;
    CK(cuStreamIsCapturing(b, &st));
    cr_assert_eq(st, CU_STREAM_CAPTURE_STATUS_NONE);

    CK(cuStreamBeginCapture_v2(blk, CU_STREAM_CAPTURE_MODE_RELAXED));
    CK_ERR(cuMemsetD32Async((CUdeviceptr)x, 1, 1, NULL), CUDA_ERROR_STREAM_CAPTURE_IMPLICIT);
    CK_ERR(cuStreamEndCapture(blk, &g), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    CK(cuMemsetD32Async((CUdeviceptr)x, 1, 1, NULL)); /* fine again */
    CK(cuStreamSynchronize(NULL));
}

/* cuMemAllocAsync/cuMemFreeAsync in a capture are graph allocation and free
 * nodes: the address is fixed at capture and the same at every launch; the
 * memory goes back to the pool with the graph. */
Test(capture, stream_ordered_allocations_become_graph_nodes)
{
    init();
    CUstream s;
    CUdeviceptr p;
    uint32_t *out;
    CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CK(cuMemAllocHost_v2((void **)&out, 64));
    CK(cuStreamBeginCapture_v2(s, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
    CK(cuMemAllocAsync(&p, 4096, s));
    CK(cuMemsetD32Async(p, 5, 1024, s));
    CK(cuMemcpyDtoHAsync_v2(out, p, 64, s));
    CK(cuMemFreeAsync(p, s));
    CUgraph g;
    CUgraphExec x;
    CK(cuStreamEndCapture(s, &g));
    CK(cuGraphInstantiateWithFlags(&x, g, 0));
    for (int i = 0; i < 3; i++) {
        memset(out, 0, 64);
        CK(cuGraphLaunch(x, s));
        CK(cuStreamSynchronize(s));
        cr_assert_eq(out[15], 5);
        CUdeviceptr base;
        CK(cuPointerGetAttribute(&base, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, p)); /* still the graph's */
        cr_assert_eq(base, p);
    }
    CK(cuGraphExecDestroy(x));
    CK(cuGraphDestroy(g));
    CUdeviceptr base;
    CK_ERR(cuPointerGetAttribute(&base, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, p), CUDA_ERROR_INVALID_VALUE);
}

/* A free node must name a graph allocation: freeing memory allocated before
 * the capture fails, frees nothing and invalidates the capture (capture.c). */
Test(capture, free_node_of_memory_not_allocated_by_a_graph_fails)
{
    init();
    CUstream s;
    CUdeviceptr before, inside;
    CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CK(cuMemAllocAsync(&before, 4096, s));
    CK(cuStreamSynchronize(s));
    CK(cuStreamBeginCapture_v2(s, CU_STREAM_CAPTURE_MODE_RELAXED));
    CK(cuMemAllocAsync(&inside, 4096, s));
    CK(cuMemFreeAsync(inside, s)); /* a graph allocation: fine */
    CK_ERR(cuMemFreeAsync(before, s), CUDA_ERROR_INVALID_VALUE);
    CUgraph g = NULL;
    CK_ERR(cuStreamEndCapture(s, &g), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
    cr_assert_null(g);
    /* Not freed: still a live block, freed once outside the capture. */
    CUdeviceptr base;
    CK(cuPointerGetAttribute(&base, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, before));
    cr_assert_eq(base, before);
    CK(cuMemsetD32Async(before, 7, 1024, s));
    CK(cuMemFreeAsync(before, s));
    CK(cuStreamSynchronize(s));
    CK(cuStreamDestroy_v2(s));
}

/* cuStreamIsCapturing on the legacy stream while a blocking stream captures:
 * CUDA_ERROR_STREAM_CAPTURE_IMPLICIT, the capture not invalidated; while only
 * a non-blocking stream captures: not capturing. */
Test(capture, legacy_stream_status_during_a_blocking_capture)
{
    init();
    CUstream blk, nb;
    CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_ACTIVE;
    CK(cuStreamCreate(&blk, CU_STREAM_DEFAULT));
    CK(cuStreamCreate(&nb, CU_STREAM_NON_BLOCKING));
    CK(cuStreamBeginCapture_v2(nb, CU_STREAM_CAPTURE_MODE_RELAXED));
    CK(cuStreamIsCapturing(CU_STREAM_LEGACY, &st));
    cr_assert_eq(st, CU_STREAM_CAPTURE_STATUS_NONE);
    CUgraph g;
    CK(cuStreamEndCapture(nb, &g));
    CK(cuGraphDestroy(g));
    CK(cuStreamBeginCapture_v2(blk, CU_STREAM_CAPTURE_MODE_RELAXED));
    CK_ERR(cuStreamIsCapturing(CU_STREAM_LEGACY, &st), CUDA_ERROR_STREAM_CAPTURE_IMPLICIT);
    CK_ERR(cuStreamIsCapturing(NULL, &st), CUDA_ERROR_STREAM_CAPTURE_IMPLICIT);
    CK(cuStreamIsCapturing(blk, &st));
    cr_assert_eq(st, CU_STREAM_CAPTURE_STATUS_ACTIVE);
    CK(cuStreamEndCapture(blk, &g)); /* not invalidated */
    CK(cuGraphDestroy(g));
    CK(cuStreamIsCapturing(CU_STREAM_LEGACY, &st));
    cr_assert_eq(st, CU_STREAM_CAPTURE_STATUS_NONE);
    CK(cuStreamDestroy_v2(blk));
    CK(cuStreamDestroy_v2(nb));
}

/* ---- slowness knobs ---- */

Test(knobs, copy_rate_delays_copies)
{
    init();
    void *a, *b;
    CK(cuMemAllocHost_v2(&a, MiB));
    CK(cuMemAlloc_v2((CUdeviceptr *)&b, MiB));
    simdev_set_copy_gbps(0.01); /* 10 MB/s: 1 MiB takes ~105 ms */
    double t0 = now_ms();
    CK(cuMemcpyHtoDAsync_v2((CUdeviceptr)b, a, MiB, NULL));
    CK_ERR(cuStreamQuery(NULL), CUDA_ERROR_NOT_READY);
    CK(cuStreamSynchronize(NULL));
    cr_assert_geq(now_ms() - t0, 95.0);
    simdev_set_copy_gbps(0);
    t0 = now_ms();
    CK(cuMemcpyDtoH_v2(a, (CUdeviceptr)b, MiB));
    cr_assert_lt(now_ms() - t0, 95.0);
}

/* The link (link.c): one channel per direction. Two device-to-host copies
 * share theirs (together at least twice one's time: the aggregate never beats
 * the rate), while a device-to-host and a host-to-device copy each get a
 * channel (the busy accounting shows both channels used at once). */
Test(knobs, copy_link_has_one_channel_per_direction)
{
    init();
    enum { N = MiB };
    void *h1, *h2;
    CUdeviceptr d1, d2;
    CUstream s1, s2;
    CK(cuMemAllocHost_v2(&h1, N));
    CK(cuMemAllocHost_v2(&h2, N));
    CK(cuMemAlloc_v2(&d1, N));
    CK(cuMemAlloc_v2(&d2, N));
    CK(cuStreamCreate(&s1, CU_STREAM_NON_BLOCKING));
    CK(cuStreamCreate(&s2, CU_STREAM_NON_BLOCKING));
    unsigned long long busy0[3], bytes0[3], busy1[3], bytes1[3];
    simdev_link_stats(busy0, bytes0);
    simdev_set_copy_gbps(0.02); /* 20 MB/s: 1 MiB takes ~52 ms */
    double t0 = now_ms();
    CK(cuMemcpyDtoHAsync_v2(h1, d1, N, s1));
    CK(cuMemcpyDtoHAsync_v2(h2, d2, N, s2));
    CK(cuStreamSynchronize(s1));
    CK(cuStreamSynchronize(s2));
    double same = now_ms() - t0;
    cr_assert_geq(same, 2 * 52.0 * 0.95, "two device-to-host copies overlapped on one channel: %.1f ms", same);
    CK(cuMemcpyDtoHAsync_v2(h1, d1, N, s1));
    CK(cuMemcpyHtoDAsync_v2(d2, h2, N, s2));
    CK(cuStreamSynchronize(s1));
    CK(cuStreamSynchronize(s2));
    CK(cuMemcpyDtoDAsync_v2(d2, d1, N, s1)); /* crosses no link */
    CK(cuStreamSynchronize(s1));
    simdev_set_copy_gbps(0);
    simdev_link_stats(busy1, bytes1);
    cr_assert_eq(bytes1[0] - bytes0[0], 3ull * N, "device-to-host bytes");
    cr_assert_eq(bytes1[1] - bytes0[1], 1ull * N, "host-to-device bytes");
    cr_assert_eq(bytes1[2] - bytes0[2], 1ull * N, "device-to-device bytes");
    cr_assert_geq(busy1[1] - busy0[1], 50000000ull, "the host-to-device channel was used");
    CK(cuStreamDestroy_v2(s1));
    CK(cuStreamDestroy_v2(s2));
    CK(cuMemFreeHost(h1));
    CK(cuMemFreeHost(h2));
    CK(cuMemFree_v2(d1));
    CK(cuMemFree_v2(d2));
}

/* simdev_link_pause: a paused direction holds its copies (deterministic
 * saturation); the other direction runs on; lifting the pause lets them go. */
Test(knobs, link_pause_holds_one_direction)
{
    init();
    enum { N = 64 * 1024 };
    void *h1, *h2;
    CUdeviceptr d1, d2;
    CUstream s1, s2;
    CK(cuMemAllocHost_v2(&h1, N));
    CK(cuMemAllocHost_v2(&h2, N));
    CK(cuMemAlloc_v2(&d1, N));
    CK(cuMemAlloc_v2(&d2, N));
    CK(cuStreamCreate(&s1, CU_STREAM_NON_BLOCKING));
    CK(cuStreamCreate(&s2, CU_STREAM_NON_BLOCKING));
    simdev_set_copy_gbps(1);
    simdev_link_pause(0, 1);
    CK(cuMemcpyDtoHAsync_v2(h1, d1, N, s1));
    CK(cuMemcpyHtoDAsync_v2(d2, h2, N, s2));
    CK(cuStreamSynchronize(s2)); /* host-to-device is not held */
    CK_ERR(cuStreamQuery(s1), CUDA_ERROR_NOT_READY);
    simdev_link_pause(0, 0);
    CK(cuStreamSynchronize(s1));
    simdev_set_copy_gbps(0);
    CK(cuStreamDestroy_v2(s1));
    CK(cuStreamDestroy_v2(s2));
    CK(cuMemFreeHost(h1));
    CK(cuMemFreeHost(h2));
    CK(cuMemFree_v2(d1));
    CK(cuMemFree_v2(d2));
}

Test(knobs, stream_delay_from_the_environment)
{
    setenv("SIMDEV_STREAM_DELAY_US", "60000", 1);
    init();
    double t0 = now_ms();
    int count = 0;
    CK(cuLaunchHostFunc(NULL, add_one, &count));
    CK(cuStreamSynchronize(NULL));
    cr_assert_geq(now_ms() - t0, 55.0);
    cr_assert_eq(count, 1);
}

/* ---- faults ---- */

Test(fault, touching_inaccessible_memory_sets_a_sticky_error, .init = cr_redirect_stderr)
{
    init();
    CUdeviceptr va = reserve(GRAN);
    CUmemAllocationProp prop = prop_at(CU_MEM_LOCATION_TYPE_DEVICE, 0);
    CUmemGenericAllocationHandle h;
    CK(cuMemCreate(&h, GRAN, &prop, 0));
    CK(cuMemMap(va, GRAN, 0, h, 0)); /* mapped, but no cuMemSetAccess: PROT_NONE */
    CUstream s;
    CK(cuStreamCreate(&s, 0));
    CK(cuMemsetD8Async(va, 1, 64, s));
    CK_ERR(cuStreamSynchronize(s), CUDA_ERROR_ILLEGAL_ADDRESS);
    cr_assert_eq(simdev_faulted(), 1);

    char line[256] = "";
    cr_assert_not_null(fgets(line, sizeof line, cr_get_redirected_stderr()));
    cr_assert(strncmp(line, "simdev: illegal address", 23) == 0, "got: %s", line);

    /* Sticky: every later stream or sync call reports it. */
    CUevent e;
    CK(cuEventCreate(&e, 0));
    CK_ERR(cuEventRecord(e, s), CUDA_ERROR_ILLEGAL_ADDRESS);
    CK_ERR(cuStreamQuery(s), CUDA_ERROR_ILLEGAL_ADDRESS);
    CK_ERR(cuCtxSynchronize(), CUDA_ERROR_ILLEGAL_ADDRESS);
    CK_ERR(cuMemsetD8_v2(va, 1, 1), CUDA_ERROR_ILLEGAL_ADDRESS);
    CK_ERR(cuLaunchHostFunc(s, add_one, NULL), CUDA_ERROR_ILLEGAL_ADDRESS);

    simdev_clear_fault();
    cr_assert_eq(simdev_faulted(), 0);
    CUmemAccessDesc rw = rw_on(0);
    CK(cuMemSetAccess(va, GRAN, &rw, 1));
    CK(cuMemsetD8Async(va, 1, 64, s));
    CK(cuStreamSynchronize(s));
    cr_assert_eq(((char *)va)[63], 1);
    CK(cuMemUnmap(va, GRAN));
    CK(cuMemRelease(h));
    CK(cuEventDestroy_v2(e));
}

static void touch(void *p)
{
    *(volatile char *)p = 1;
}

Test(fault, a_host_function_fault_is_caught_too, .init = cr_redirect_stderr)
{
    init();
    CUdeviceptr va = reserve(GRAN);
    CK(cuLaunchHostFunc(NULL, touch, (void *)va)); /* reserved, never mapped */
    CK_ERR(cuStreamSynchronize(NULL), CUDA_ERROR_ILLEGAL_ADDRESS);
    cr_assert_eq(simdev_faulted(), 1);
}

/* AddressSanitizer handles that fault itself (and exits rather than dying of it). */
#ifdef __SANITIZE_ADDRESS__
#define UNDER_ASAN 1
#else
#define UNDER_ASAN 0
#endif

Test(fault, faults_outside_workers_still_kill, .signal = SIGSEGV, .disabled = UNDER_ASAN)
{
    init();
    CUdeviceptr va = reserve(GRAN);
    int count = 0;
    CK(cuLaunchHostFunc(NULL, add_one, &count)); /* installs the handler */
    CK(cuStreamSynchronize(NULL));
    touch((void *)va);
}

/* ---- cuGetProcAddress ---- */

Test(procaddr, resolves_base_names_by_version_and_stream_flavour)
{
    void *fn = NULL;
    CUdriverProcAddressQueryResult st = (CUdriverProcAddressQueryResult)-1;

    CK(cuGetProcAddress_v2("cuMemAlloc", &fn, 13000, CU_GET_PROC_ADDRESS_DEFAULT, &st));
    cr_assert_eq(fn, (void *)&cuMemAlloc_v2);
    cr_assert_eq(st, CU_GET_PROC_ADDRESS_SUCCESS);

    CK(cuGetProcAddress_v2("cuMemAllocAsync", &fn, 12000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &st));
    cr_assert_eq(fn, (void *)&cuMemAllocAsync_ptsz);
    CK(cuGetProcAddress_v2("cuMemAllocAsync", &fn, 12000, CU_GET_PROC_ADDRESS_LEGACY_STREAM, &st));
    cr_assert_eq(fn, (void *)&cuMemAllocAsync);
    CK(cuGetProcAddress_v2("cuMemcpyHtoD", &fn, 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &st));
    cr_assert_eq(fn, (void *)&cuMemcpyHtoD_v2_ptds);
    /* No per-thread variant: the plain one. */
    CK(cuGetProcAddress_v2("cuMemCreate", &fn, 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &st));
    cr_assert_eq(fn, (void *)&cuMemCreate);

    CK(cuGetProcAddress_v2("cuGetProcAddress", &fn, 13000, 0, &st));
    cr_assert_eq(fn, (void *)&cuGetProcAddress_v2);
    CK(cuGetProcAddress_v2("cuGetProcAddress", &fn, 11030, 0, &st));
    cr_assert_eq(fn, (void *)&cuGetProcAddress);
    CK(cuGetProcAddress_v2("cuEventElapsedTime", &fn, 12000, 0, &st));
    cr_assert_eq(fn, (void *)&cuEventElapsedTime);
    CK(cuGetProcAddress_v2("cuEventElapsedTime", &fn, 12080, 0, &st));
    cr_assert_eq(fn, (void *)&cuEventElapsedTime_v2);
    CK(cuGetProcAddress_v2("cuStreamDestroy", &fn, 12000, 0, &st));
    cr_assert_eq(fn, (void *)&cuStreamDestroy_v2);
    CK(cuGetProcAddress_v2("cuDevicePrimaryCtxRelease", &fn, 11000, 0, &st));
    cr_assert_eq(fn, (void *)&cuDevicePrimaryCtxRelease_v2);
    CK(cuGetProcAddress_v2("cuDevicePrimaryCtxRelease", &fn, 10020, 0, &st));
    cr_assert_eq(fn, (void *)&cuDevicePrimaryCtxRelease);

    CK_ERR(cuGetProcAddress_v2("cuMemAllocAsync", &fn, 11000, 0, &st), CUDA_ERROR_NOT_FOUND);
    cr_assert_eq(st, CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);
    cr_assert_null(fn);
    CK_ERR(cuGetProcAddress_v2("cuNoSuchThing", &fn, 13000, 0, &st), CUDA_ERROR_NOT_FOUND);
    cr_assert_eq(st, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
    CK_ERR(cuGetProcAddress_v2("cuMemAlloc_v2", &fn, 13000, 0, &st), CUDA_ERROR_NOT_FOUND);
    cr_assert_eq(st, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
    CK_ERR(cuGetProcAddress_v2("cuLaunchKernel", &fn, 13000, 0, &st), CUDA_ERROR_NOT_FOUND);

    CK(cuGetProcAddress("cuStreamSynchronize", &fn, 13000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM));
    cr_assert_eq(fn, (void *)&cuStreamSynchronize_ptsz);
    CK(cuGetProcAddress_v2("cuStreamWaitValue32", &fn, 12000, 0, &st));
    cr_assert_eq(fn, (void *)&cuStreamWaitValue32_v2);
    CK(cuGetProcAddress_v2("cuStreamWaitValue32", &fn, 11000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &st));
    cr_assert_eq(fn, (void *)&cuStreamWaitValue32_ptsz);
}

Test(procaddr, resolved_functions_work)
{
    void *fn;
    CK(cuGetProcAddress_v2("cuInit", &fn, 13000, 0, NULL));
    CK(((CUresult(*)(unsigned))fn)(0));
    use_primary(0);
    CK(cuGetProcAddress_v2("cuMemAlloc", &fn, 13000, 0, NULL));
    CUdeviceptr p;
    CK(((CUresult(*)(CUdeviceptr *, size_t))fn)(&p, MiB));
    cr_assert_eq(simdev_device_used(0), MiB);
    cr_assert_eq(simdev_calls("cuMemAlloc_v2"), 1);
}

/* ---- call counts and fault injection ---- */

Test(calls, are_counted_per_exported_name)
{
    init();
    CUdeviceptr p[3];
    for (int i = 0; i < 3; i++)
        CK(cuMemAlloc_v2(&p[i], 4096));
    CK(cuMemAllocAsync_ptsz(&p[0], 4096, NULL));
    cr_assert_eq(simdev_calls("cuMemAlloc_v2"), 3);
    cr_assert_eq(simdev_calls("cuMemAllocAsync_ptsz"), 1);
    cr_assert_eq(simdev_calls("cuMemAllocAsync"), 0);
    cr_assert_eq(simdev_calls("cuInit"), 1);
    cr_assert_eq(simdev_calls("cuNoSuchThing"), 0);
    simdev_reset_calls();
    cr_assert_eq(simdev_calls("cuMemAlloc_v2"), 0);
    CK(cuMemFree_v2(p[1]));
    cr_assert_eq(simdev_calls("cuMemFree_v2"), 1);
}

Test(calls, failures_injected_from_the_environment)
{
    setenv("SIMDEV_FAIL", "cuMemCreate:3,cuStreamCreate:*:CUDA_ERROR_INVALID_VALUE,cuMemAlloc_v2:2:700", 1);
    init();
    CUmemAllocationProp prop = prop_at(CU_MEM_LOCATION_TYPE_DEVICE, 0);
    CUmemGenericAllocationHandle h[4];
    CK(cuMemCreate(&h[0], GRAN, &prop, 0));
    CK(cuMemCreate(&h[1], GRAN, &prop, 0));
    CK_ERR(cuMemCreate(&h[2], GRAN, &prop, 0), CUDA_ERROR_OUT_OF_MEMORY);
    CK(cuMemCreate(&h[3], GRAN, &prop, 0));
    cr_assert_eq(simdev_device_used(0), 3 * GRAN, "an injected failure does nothing");
    cr_assert_eq(simdev_calls("cuMemCreate"), 4);
    CUstream s;
    CK_ERR(cuStreamCreate(&s, 0), CUDA_ERROR_INVALID_VALUE);
    CK_ERR(cuStreamCreate(&s, 0), CUDA_ERROR_INVALID_VALUE);
    CUdeviceptr p;
    CK(cuMemAlloc_v2(&p, 4096));
    CK_ERR(cuMemAlloc_v2(&p, 4096), CUDA_ERROR_ILLEGAL_ADDRESS);
    CK(cuMemAlloc_v2(&p, 4096));
    simdev_fail_clear();
    CK(cuStreamCreate(&s, 0));
}

Test(calls, failures_injected_at_run_time)
{
    init();
    CUdeviceptr va;
    cr_assert_eq(simdev_fail("cuMemAddressReserve", 2, CUDA_ERROR_OUT_OF_MEMORY), 0);
    cr_assert_eq(simdev_fail("cuNoSuchThing", 1, 1), -1);
    CK(cuMemAddressReserve(&va, GRAN, 0, 0, 0));
    CK_ERR(cuMemAddressReserve(&va, GRAN, 0, 0, 0), CUDA_ERROR_OUT_OF_MEMORY);
    CK(cuMemAddressReserve(&va, GRAN, 0, 0, 0));
    cr_assert_eq(simdev_fail("cuMemMap", 0, CUDA_ERROR_NOT_PERMITTED), 0);
    CK_ERR(cuMemMap(va, GRAN, 0, 1, 0), CUDA_ERROR_NOT_PERMITTED);
    CK_ERR(cuMemMap(va, GRAN, 0, 1, 0), CUDA_ERROR_NOT_PERMITTED);
    simdev_fail_clear();
    CK_ERR(cuMemMap(va, GRAN, 0, 12345, 0), CUDA_ERROR_INVALID_VALUE); /* back to real checks */
}

/* ---- several threads and devices ---- */

static void *vmm_churn(void *arg)
{
    (void)arg;
    CUstream s;
    use_primary(0);
    CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    for (int i = 0; i < 50; i++) {
        CUdeviceptr va = reserve(2 * GRAN), p;
        CUmemGenericAllocationHandle h = map_rw(va, 2 * GRAN, CU_MEM_LOCATION_TYPE_DEVICE);
        CK(cuMemsetD32Async(va, (unsigned)i, 2 * GRAN / 4, s));
        CK(cuMemAllocAsync(&p, 64 * 1024, s));
        CK(cuMemcpyAsync(p, va, 64 * 1024, s));
        CK(cuMemFreeAsync(p, s));
        CK(cuStreamSynchronize(s));
        cr_assert_eq(((uint32_t *)va)[1000], (uint32_t)i);
        CK(cuMemUnmap(va, 2 * GRAN));
        CK(cuMemRelease(h));
        CK(cuMemAddressFree(va, 2 * GRAN));
    }
    CK(cuStreamDestroy_v2(s));
    return NULL;
}

Test(threads, concurrent_use_leaves_nothing_behind)
{
    init();
    pthread_t t[6];
    for (int i = 0; i < 6; i++)
        pthread_create(&t[i], NULL, vmm_churn, NULL);
    for (int i = 0; i < 6; i++)
        pthread_join(t[i], NULL);
    CK(cuCtxSynchronize());
    cr_assert_eq(simdev_device_used(0), 0);
    cr_assert_eq(simdev_faulted(), 0);
    simdev_shutdown();
    int count = 0; /* streams come back after a shutdown */
    CK(cuLaunchHostFunc(NULL, add_one, &count));
    CK(cuStreamSynchronize(NULL));
    cr_assert_eq(count, 1);
}

Test(threads, memory_goes_to_the_current_contexts_device)
{
    setenv("SIMDEV_DEVICES", "2", 1);
    init();
    CUcontext ctx1;
    CUdeviceptr a, b;
    CK(cuDevicePrimaryCtxRetain(&ctx1, 1));
    CK(cuCtxSetCurrent(ctx1));
    CK(cuMemAlloc_v2(&a, MiB));
    CK(cuMemAllocAsync(&b, 2 * MiB, NULL));
    cr_assert_eq(simdev_device_used(0), 0);
    cr_assert_eq(simdev_device_used(1), 3 * MiB);
    CUmemoryPool p0, p1;
    CK(cuDeviceGetDefaultMemPool(&p0, 0));
    CK(cuDeviceGetDefaultMemPool(&p1, 1));
    cr_assert_neq(p0, p1);
    CUdevice dev;
    CK(cuStreamGetDevice(NULL, &dev));
    cr_assert_eq(dev, 1);
    CK(cuMemFreeAsync(b, NULL));
    CK(cuMemFree_v2(a));
    cr_assert_eq(simdev_device_used(1), 0);
}
