/* Devices, contexts and the per-thread context stack. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "simdev_internal.h"

#define CTX_STACK 16 /* small: the TLS block is static (fault.c) */
#define DRIVER_VERSION 13000

static atomic_bool cu_initialized; /* cuInit was called */

static pthread_mutex_t ctx_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sd_ctx primaries[SD_MAX_DEVICES];
static int primary_refs[SD_MAX_DEVICES];
static struct sd_ctx *all_ctx; /* every context, primaries first; never freed (handles stay checkable) */
static unsigned long long next_ctx_id = 1;
static pthread_once_t primaries_once = PTHREAD_ONCE_INIT;

static __thread struct sd_ctx *ctx_stack[CTX_STACK];
static __thread int ctx_depth;

static void primaries_init(void)
{
    sd_init();
    struct sd_ctx **tail = &all_ctx;
    for (int d = 0; d < SD_MAX_DEVICES; d++) {
        primaries[d].dev = d;
        primaries[d].primary = true;
        primaries[d].id = next_ctx_id++;
        *tail = &primaries[d];
        tail = &primaries[d].next;
    }
}

bool sd_dev_valid(CUdevice dev)
{
    sd_init();
    return dev >= 0 && dev < sd_cfg.ndev;
}

/* The calling thread's current context, or NULL. The driver does not fall
 * back to a device's primary context: a call that needs the current context
 * returns CUDA_ERROR_INVALID_CONTEXT when the thread has none (the runtime
 * API makes the primary context current for its callers; driver API users
 * must cuCtxSetCurrent/cuCtxPushCurrent themselves). */
struct sd_ctx *sd_ctx_current(void)
{
    pthread_once(&primaries_once, primaries_init);
    if (ctx_depth > 0 && ctx_stack[ctx_depth - 1])
        return ctx_stack[ctx_depth - 1];
    return NULL;
}

bool sd_ctx_valid(struct sd_ctx *ctx)
{
    pthread_once(&primaries_once, primaries_init);
    bool ok = false;
    pthread_mutex_lock(&ctx_lock);
    for (struct sd_ctx *c = all_ctx; c; c = c->next)
        if (c == ctx) {
            ok = !c->destroyed && (!c->primary || c->dev < sd_cfg.ndev);
            break;
        }
    pthread_mutex_unlock(&ctx_lock);
    return ok;
}

void sd_ctx_foreach(void (*fn)(struct sd_ctx *, void *), void *arg)
{
    pthread_once(&primaries_once, primaries_init);
    pthread_mutex_lock(&ctx_lock);
    struct sd_ctx *first = all_ctx;
    pthread_mutex_unlock(&ctx_lock);
    /* Contexts are appended with a release store to a list that never
     * shrinks, so it can be walked without the lock. */
    for (struct sd_ctx *c = first; c; c = __atomic_load_n(&c->next, __ATOMIC_ACQUIRE))
        fn(c, arg);
}

static CUresult need_init(void)
{
    sd_init();
    pthread_once(&primaries_once, primaries_init);
    return atomic_load(&cu_initialized) ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
}

#define NEED_INIT()                      \
    do {                                 \
        CUresult need_ = need_init();    \
        if (need_ != CUDA_SUCCESS)       \
            return need_;                \
    } while (0)

/* ---- init and version ---- */

CUresult cuInit(unsigned int Flags)
{
    SD_ENTER(cuInit);
    if (Flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_once(&primaries_once, primaries_init);
    atomic_store(&cu_initialized, true);
    return CUDA_SUCCESS;
}

CUresult cuDriverGetVersion(int *driverVersion)
{
    SD_ENTER(cuDriverGetVersion);
    if (!driverVersion)
        return CUDA_ERROR_INVALID_VALUE;
    *driverVersion = DRIVER_VERSION;
    return CUDA_SUCCESS;
}

/* ---- devices ---- */

CUresult cuDeviceGet(CUdevice *device, int ordinal)
{
    SD_ENTER(cuDeviceGet);
    NEED_INIT();
    if (!device)
        return CUDA_ERROR_INVALID_VALUE;
    if (!sd_dev_valid(ordinal))
        return CUDA_ERROR_INVALID_DEVICE;
    *device = ordinal;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int *count)
{
    SD_ENTER(cuDeviceGetCount);
    NEED_INIT();
    if (!count)
        return CUDA_ERROR_INVALID_VALUE;
    *count = sd_cfg.ndev;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice dev)
{
    SD_ENTER(cuDeviceGetName);
    NEED_INIT();
    if (!name || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (!sd_dev_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    snprintf(name, (size_t)len, "simdev simulated GPU %d", dev);
    return CUDA_SUCCESS;
}

static CUresult fill_uuid(CUuuid *uuid, CUdevice dev)
{
    NEED_INIT();
    if (!uuid)
        return CUDA_ERROR_INVALID_VALUE;
    if (!sd_dev_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    static const char tag[] = "simdev-uuid-";
    memcpy(uuid->bytes, tag, 12);
    memset(uuid->bytes + 12, 0, 4);
    uuid->bytes[15] = (char)dev;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice dev)
{
    SD_ENTER(cuDeviceGetUuid);
    return fill_uuid(uuid, dev);
}

CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev)
{
    SD_ENTER(cuDeviceGetUuid_v2);
    return fill_uuid(uuid, dev);
}

CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev)
{
    SD_ENTER(cuDeviceTotalMem_v2);
    NEED_INIT();
    if (!bytes)
        return CUDA_ERROR_INVALID_VALUE;
    if (!sd_dev_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    *bytes = sd_device_capacity(dev);
    return CUDA_SUCCESS;
}

/* Values of an H100/H200-class device for what callers commonly ask; 0 otherwise. */
static int attribute(CUdevice_attribute a, CUdevice dev)
{
    switch (a) {
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: return 1024;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: return 1024;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: return 1024;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: return 64;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: return 2147483647;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: return 65535;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: return 65535;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: return 49152;
    case CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY: return 65536;
    case CU_DEVICE_ATTRIBUTE_WARP_SIZE: return 32;
    case CU_DEVICE_ATTRIBUTE_MAX_PITCH: return 2147483647;
    case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK: return 65536;
    case CU_DEVICE_ATTRIBUTE_CLOCK_RATE: return 1980000;
    case CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT: return 512;
    case CU_DEVICE_ATTRIBUTE_GPU_OVERLAP: return 1;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: return 132;
    case CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY: return 1;
    case CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS: return 1;
    case CU_DEVICE_ATTRIBUTE_PCI_BUS_ID: return 0x10 + dev;
    case CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE: return 2619000;
    case CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH: return 6144;
    case CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE: return 52428800;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR: return 2048;
    case CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT: return 2;
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: return 1;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: return 9;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: return 0;
    case CU_DEVICE_ATTRIBUTE_STREAM_PRIORITIES_SUPPORTED: return 1;
    case CU_DEVICE_ATTRIBUTE_GLOBAL_L1_CACHE_SUPPORTED: return 1;
    case CU_DEVICE_ATTRIBUTE_LOCAL_L1_CACHE_SUPPORTED: return 1;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR: return 233472;
    case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR: return 65536;
    case CU_DEVICE_ATTRIBUTE_MULTI_GPU_BOARD_GROUP_ID: return dev;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_PREEMPTION_SUPPORTED: return 1;
    case CU_DEVICE_ATTRIBUTE_CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM: return 1;
    case CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH: return 1;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: return 232448;
    case CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED: return 1;
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED: return 1;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR: return 32;
    case CU_DEVICE_ATTRIBUTE_MAX_PERSISTING_L2_CACHE_SIZE: return 32505856;
    case CU_DEVICE_ATTRIBUTE_MAX_ACCESS_POLICY_WINDOW_SIZE: return 134213632;
    case CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK: return 1024;
    case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: return 1;
    case CU_DEVICE_ATTRIBUTE_CLUSTER_LAUNCH: return 1;
    case CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS: return 1;
    case CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_WAIT_VALUE_NOR: return 1;
    case CU_DEVICE_ATTRIBUTE_MEM_SYNC_DOMAIN_COUNT: return 4;
    case CU_DEVICE_ATTRIBUTE_NUMA_ID: return -1;
    case CU_DEVICE_ATTRIBUTE_HOST_NUMA_ID: return 0;
    case CU_DEVICE_ATTRIBUTE_HOST_MEMORY_POOLS_SUPPORTED: return 1;
    case CU_DEVICE_ATTRIBUTE_HOST_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED: return 1;
    case CU_DEVICE_ATTRIBUTE_HOST_NUMA_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED: return 1;
    default: return 0;
    }
}

CUresult cuDeviceGetAttribute(int *pi, CUdevice_attribute attrib, CUdevice dev)
{
    SD_ENTER(cuDeviceGetAttribute);
    NEED_INIT();
    if (!pi)
        return CUDA_ERROR_INVALID_VALUE;
    if (!sd_dev_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    *pi = attribute(attrib, dev);
    return CUDA_SUCCESS;
}

CUresult cuDeviceCanAccessPeer(int *canAccessPeer, CUdevice dev, CUdevice peerDev)
{
    SD_ENTER(cuDeviceCanAccessPeer);
    NEED_INIT();
    if (!canAccessPeer)
        return CUDA_ERROR_INVALID_VALUE;
    if (!sd_dev_valid(dev) || !sd_dev_valid(peerDev))
        return CUDA_ERROR_INVALID_DEVICE;
    *canAccessPeer = dev != peerDev;
    return CUDA_SUCCESS;
}

/* ---- primary contexts ---- */

CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
{
    SD_ENTER(cuDevicePrimaryCtxRetain);
    NEED_INIT();
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    if (!sd_dev_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&ctx_lock);
    primary_refs[dev]++;
    pthread_mutex_unlock(&ctx_lock);
    *pctx = (CUcontext)&primaries[dev];
    return CUDA_SUCCESS;
}

static CUresult primary_release(CUdevice dev)
{
    NEED_INIT();
    if (!sd_dev_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    CUresult rc = CUDA_SUCCESS;
    pthread_mutex_lock(&ctx_lock);
    if (primary_refs[dev] > 0)
        primary_refs[dev]--;
    else
        rc = CUDA_ERROR_INVALID_CONTEXT;
    pthread_mutex_unlock(&ctx_lock);
    return rc;
}

CUresult cuDevicePrimaryCtxRelease(CUdevice dev)
{
    SD_ENTER(cuDevicePrimaryCtxRelease);
    return primary_release(dev);
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev)
{
    SD_ENTER(cuDevicePrimaryCtxRelease_v2);
    return primary_release(dev);
}

CUresult cuDevicePrimaryCtxGetState(CUdevice dev, unsigned int *flags, int *active)
{
    SD_ENTER(cuDevicePrimaryCtxGetState);
    NEED_INIT();
    if (!flags || !active)
        return CUDA_ERROR_INVALID_VALUE;
    if (!sd_dev_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&ctx_lock);
    *flags = primaries[dev].flags;
    *active = primary_refs[dev] > 0;
    pthread_mutex_unlock(&ctx_lock);
    return CUDA_SUCCESS;
}

static CUresult primary_set_flags(CUdevice dev, unsigned flags)
{
    NEED_INIT();
    if (!sd_dev_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    pthread_mutex_lock(&ctx_lock);
    primaries[dev].flags = flags;
    pthread_mutex_unlock(&ctx_lock);
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxSetFlags(CUdevice dev, unsigned int flags)
{
    SD_ENTER(cuDevicePrimaryCtxSetFlags);
    return primary_set_flags(dev, flags);
}

CUresult cuDevicePrimaryCtxSetFlags_v2(CUdevice dev, unsigned int flags)
{
    SD_ENTER(cuDevicePrimaryCtxSetFlags_v2);
    return primary_set_flags(dev, flags);
}

/* Memory is not reclaimed: a reset only finishes the work and drops the references. */
static CUresult primary_reset(CUdevice dev)
{
    NEED_INIT();
    if (!sd_dev_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    sd_ctx_sync(&primaries[dev]);
    pthread_mutex_lock(&ctx_lock);
    primary_refs[dev] = 0;
    pthread_mutex_unlock(&ctx_lock);
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxReset(CUdevice dev)
{
    SD_ENTER(cuDevicePrimaryCtxReset);
    return primary_reset(dev);
}

CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev)
{
    SD_ENTER(cuDevicePrimaryCtxReset_v2);
    return primary_reset(dev);
}

/* ---- created contexts ---- */

static CUresult push(struct sd_ctx *ctx)
{
    if (ctx_depth == CTX_STACK)
        return CUDA_ERROR_INVALID_VALUE;
    ctx_stack[ctx_depth++] = ctx;
    return CUDA_SUCCESS;
}

static CUresult ctx_create(CUcontext *pctx, unsigned flags, CUdevice dev)
{
    NEED_INIT();
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    if (!sd_dev_valid(dev))
        return CUDA_ERROR_INVALID_DEVICE;
    if (ctx_depth == CTX_STACK)
        return CUDA_ERROR_INVALID_VALUE;
    struct sd_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return CUDA_ERROR_OUT_OF_MEMORY;
    ctx->dev = dev;
    ctx->flags = flags;
    pthread_mutex_lock(&ctx_lock);
    ctx->id = next_ctx_id++;
    struct sd_ctx **tail = &all_ctx;
    while (*tail)
        tail = &(*tail)->next;
    __atomic_store_n(tail, ctx, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&ctx_lock);
    push(ctx);
    *pctx = (CUcontext)ctx;
    sd_log("context %llu created on device %d", ctx->id, dev);
    return CUDA_SUCCESS;
}

CUresult cuCtxCreate(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    SD_ENTER(cuCtxCreate);
    return ctx_create(pctx, flags, dev);
}

CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev)
{
    SD_ENTER(cuCtxCreate_v2);
    return ctx_create(pctx, flags, dev);
}

/* Execution-affinity and CIG parameters have nothing to act on here. */
CUresult cuCtxCreate_v3(CUcontext *pctx, CUexecAffinityParam *paramsArray, int numParams, unsigned int flags,
                        CUdevice dev)
{
    SD_ENTER(cuCtxCreate_v3);
    if (numParams < 0 || (numParams > 0 && !paramsArray))
        return CUDA_ERROR_INVALID_VALUE;
    return ctx_create(pctx, flags, dev);
}

CUresult cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *ctxCreateParams, unsigned int flags, CUdevice dev)
{
    SD_ENTER(cuCtxCreate_v4);
    (void)ctxCreateParams;
    return ctx_create(pctx, flags, dev);
}

static CUresult ctx_destroy(CUcontext handle)
{
    NEED_INIT();
    struct sd_ctx *ctx = (struct sd_ctx *)handle;
    if (!ctx)
        return CUDA_ERROR_INVALID_VALUE;
    if (!sd_ctx_valid(ctx) || ctx->primary)
        return CUDA_ERROR_INVALID_CONTEXT;
    sd_ctx_sync(ctx);
    sd_ctx_retire_streams(ctx);
    pthread_mutex_lock(&ctx_lock);
    ctx->destroyed = true;
    pthread_mutex_unlock(&ctx_lock);
    /* Only this thread's stack can be fixed up; other threads keep a dead handle, as with the driver. */
    int j = 0;
    for (int i = 0; i < ctx_depth; i++)
        if (ctx_stack[i] != ctx)
            ctx_stack[j++] = ctx_stack[i];
    ctx_depth = j;
    sd_log("context %llu destroyed", ctx->id);
    return CUDA_SUCCESS;
}

CUresult cuCtxDestroy(CUcontext ctx)
{
    SD_ENTER(cuCtxDestroy);
    return ctx_destroy(ctx);
}

CUresult cuCtxDestroy_v2(CUcontext ctx)
{
    SD_ENTER(cuCtxDestroy_v2);
    return ctx_destroy(ctx);
}

static CUresult ctx_push(CUcontext ctx)
{
    NEED_INIT();
    if (!ctx)
        return CUDA_ERROR_INVALID_VALUE;
    if (!sd_ctx_valid((struct sd_ctx *)ctx))
        return CUDA_ERROR_INVALID_CONTEXT;
    return push((struct sd_ctx *)ctx);
}

CUresult cuCtxPushCurrent(CUcontext ctx)
{
    SD_ENTER(cuCtxPushCurrent);
    return ctx_push(ctx);
}

CUresult cuCtxPushCurrent_v2(CUcontext ctx)
{
    SD_ENTER(cuCtxPushCurrent_v2);
    return ctx_push(ctx);
}

static CUresult ctx_pop(CUcontext *pctx)
{
    NEED_INIT();
    if (ctx_depth == 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    struct sd_ctx *ctx = ctx_stack[--ctx_depth];
    if (pctx)
        *pctx = (CUcontext)ctx;
    return CUDA_SUCCESS;
}

CUresult cuCtxPopCurrent(CUcontext *pctx)
{
    SD_ENTER(cuCtxPopCurrent);
    return ctx_pop(pctx);
}

CUresult cuCtxPopCurrent_v2(CUcontext *pctx)
{
    SD_ENTER(cuCtxPopCurrent_v2);
    return ctx_pop(pctx);
}

CUresult cuCtxSetCurrent(CUcontext ctx)
{
    SD_ENTER(cuCtxSetCurrent);
    NEED_INIT();
    if (!ctx) {
        if (ctx_depth > 0)
            ctx_depth--;
        return CUDA_SUCCESS;
    }
    if (!sd_ctx_valid((struct sd_ctx *)ctx))
        return CUDA_ERROR_INVALID_CONTEXT;
    if (ctx_depth == 0)
        return push((struct sd_ctx *)ctx);
    ctx_stack[ctx_depth - 1] = (struct sd_ctx *)ctx;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetCurrent(CUcontext *pctx)
{
    SD_ENTER(cuCtxGetCurrent);
    NEED_INIT();
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    *pctx = ctx_depth > 0 ? (CUcontext)ctx_stack[ctx_depth - 1] : NULL;
    return CUDA_SUCCESS;
}

/* A NULL handle means the current context; none is CUDA_ERROR_INVALID_CONTEXT. */
static CUresult ctx_or_current(CUcontext handle, struct sd_ctx **out)
{
    NEED_INIT();
    struct sd_ctx *ctx = handle ? (struct sd_ctx *)handle : sd_ctx_current();
    if (!ctx || !sd_ctx_valid(ctx))
        return CUDA_ERROR_INVALID_CONTEXT;
    *out = ctx;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetDevice(CUdevice *device)
{
    SD_ENTER(cuCtxGetDevice);
    struct sd_ctx *ctx;
    CUresult rc = ctx_or_current(NULL, &ctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!device)
        return CUDA_ERROR_INVALID_VALUE;
    *device = ctx->dev;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetDevice_v2(CUdevice *device, CUcontext handle)
{
    SD_ENTER(cuCtxGetDevice_v2);
    struct sd_ctx *ctx;
    CUresult rc = ctx_or_current(handle, &ctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!device)
        return CUDA_ERROR_INVALID_VALUE;
    *device = ctx->dev;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetFlags(unsigned int *flags)
{
    SD_ENTER(cuCtxGetFlags);
    struct sd_ctx *ctx;
    CUresult rc = ctx_or_current(NULL, &ctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!flags)
        return CUDA_ERROR_INVALID_VALUE;
    *flags = ctx->flags;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetId(CUcontext handle, unsigned long long *ctxId)
{
    SD_ENTER(cuCtxGetId);
    struct sd_ctx *ctx;
    CUresult rc = ctx_or_current(handle, &ctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!ctxId)
        return CUDA_ERROR_INVALID_VALUE;
    *ctxId = ctx->id;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetApiVersion(CUcontext handle, unsigned int *version)
{
    SD_ENTER(cuCtxGetApiVersion);
    struct sd_ctx *ctx;
    CUresult rc = ctx_or_current(handle, &ctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!version)
        return CUDA_ERROR_INVALID_VALUE;
    *version = 3020; /* what contexts created through the _v2 API report */
    return CUDA_SUCCESS;
}

CUresult cuCtxGetStreamPriorityRange(int *leastPriority, int *greatestPriority)
{
    SD_ENTER(cuCtxGetStreamPriorityRange);
    NEED_INIT();
    if (leastPriority)
        *leastPriority = SD_PRIORITY_LEAST;
    if (greatestPriority)
        *greatestPriority = SD_PRIORITY_GREATEST;
    return CUDA_SUCCESS;
}

CUresult cuCtxSynchronize(void)
{
    SD_ENTER(cuCtxSynchronize);
    struct sd_ctx *ctx;
    CUresult rc = ctx_or_current(NULL, &ctx);
    if (rc == CUDA_SUCCESS)
        rc = sd_capture_unsafe_call();
    return rc != CUDA_SUCCESS ? rc : sd_ctx_sync(ctx);
}

CUresult cuCtxSynchronize_v2(CUcontext handle)
{
    SD_ENTER(cuCtxSynchronize_v2);
    struct sd_ctx *ctx;
    CUresult rc = ctx_or_current(handle, &ctx);
    if (rc == CUDA_SUCCESS)
        rc = sd_capture_unsafe_call();
    return rc != CUDA_SUCCESS ? rc : sd_ctx_sync(ctx);
}
