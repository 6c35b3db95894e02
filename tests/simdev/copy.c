/* Copies and sets. Every one is an operation on a stream's worker; the
 * synchronous calls are legacy-stream work (per-thread stream work for the
 * _ptds names) followed by a wait, as in the driver. Address spaces are
 * unified, so direction only names the call. */
#include "simdev_internal.h"

#define ADDR(p) ((void *)(uintptr_t)(p))

static CUresult copy_on(void *dst, const void *src, size_t n, CUstream stream, bool per_thread_default, bool sync,
                        int dst_dev, int src_dev)
{
    struct sd_stream *s;
    CUresult rc = sync ? sd_capture_unsafe_call() : CUDA_SUCCESS; /* synchronous copies */
    if (rc == CUDA_SUCCESS)
        rc = sd_stream_get(sync ? NULL : stream, per_thread_default, &s);
    if (rc == CUDA_SUCCESS)
        rc = sd_sticky(s->ctx);
    if (rc != CUDA_SUCCESS || n == 0)
        return rc;
    if (!dst || !src)
        return CUDA_ERROR_INVALID_VALUE;
    struct sd_op *op = sd_op_new(SD_OP_COPY);
    if (!op)
        return CUDA_ERROR_OUT_OF_MEMORY;
    op->u.copy.dst = dst;
    op->u.copy.src = src;
    op->u.copy.n = n;
    op->u.copy.dst_dev = dst_dev;
    op->u.copy.src_dev = src_dev;
    return sync ? sd_submit_wait(s, op) : sd_submit(s, op, NULL);
}

/* A copy runs on its stream's device, which needs access to both ends. */
static CUresult copy(void *dst, const void *src, size_t n, CUstream stream, bool per_thread_default, bool sync)
{
    return copy_on(dst, src, n, stream, per_thread_default, sync, -1, -1);
}

static CUresult set(void *dst, uint32_t value, unsigned elem, size_t count, CUstream stream,
                    bool per_thread_default, bool sync)
{
    struct sd_stream *s;
    CUresult rc = sync ? sd_capture_unsafe_call() : CUDA_SUCCESS; /* synchronous sets */
    if (rc == CUDA_SUCCESS)
        rc = sd_stream_get(sync ? NULL : stream, per_thread_default, &s);
    if (rc == CUDA_SUCCESS)
        rc = sd_sticky(s->ctx);
    if (rc != CUDA_SUCCESS || count == 0)
        return rc;
    if (!dst || (uintptr_t)dst % elem)
        return CUDA_ERROR_INVALID_VALUE;
    struct sd_op *op = sd_op_new(SD_OP_SET);
    if (!op)
        return CUDA_ERROR_OUT_OF_MEMORY;
    op->u.set.dst = dst;
    op->u.set.value = value;
    op->u.set.elem = elem;
    op->u.set.count = count;
    return sync ? sd_submit_wait(s, op) : sd_submit(s, op, NULL);
}

/* ---- copies ---- */

#define COPY_SYNC(fn, per_thread, DstT, SrcT)                                  \
    CUresult fn(DstT dst, SrcT src, size_t ByteCount)                          \
    {                                                                          \
        SD_ENTER(fn);                                                          \
        return copy(ADDR(dst), ADDR(src), ByteCount, NULL, per_thread, true);  \
    }

#define COPY_ASYNC(fn, per_thread, DstT, SrcT)                                    \
    CUresult fn(DstT dst, SrcT src, size_t ByteCount, CUstream hStream)           \
    {                                                                             \
        SD_ENTER(fn);                                                             \
        return copy(ADDR(dst), ADDR(src), ByteCount, hStream, per_thread, false); \
    }

COPY_SYNC(cuMemcpy, false, CUdeviceptr, CUdeviceptr)
COPY_SYNC(cuMemcpy_ptds, true, CUdeviceptr, CUdeviceptr)
COPY_SYNC(cuMemcpyHtoD_v2, false, CUdeviceptr, const void *)
COPY_SYNC(cuMemcpyHtoD_v2_ptds, true, CUdeviceptr, const void *)
COPY_SYNC(cuMemcpyDtoH_v2, false, void *, CUdeviceptr)
COPY_SYNC(cuMemcpyDtoH_v2_ptds, true, void *, CUdeviceptr)
COPY_SYNC(cuMemcpyDtoD_v2, false, CUdeviceptr, CUdeviceptr)
COPY_SYNC(cuMemcpyDtoD_v2_ptds, true, CUdeviceptr, CUdeviceptr)

COPY_ASYNC(cuMemcpyAsync, false, CUdeviceptr, CUdeviceptr)
COPY_ASYNC(cuMemcpyAsync_ptsz, true, CUdeviceptr, CUdeviceptr)
COPY_ASYNC(cuMemcpyHtoDAsync_v2, false, CUdeviceptr, const void *)
COPY_ASYNC(cuMemcpyHtoDAsync_v2_ptsz, true, CUdeviceptr, const void *)
COPY_ASYNC(cuMemcpyDtoHAsync_v2, false, void *, CUdeviceptr)
COPY_ASYNC(cuMemcpyDtoHAsync_v2_ptsz, true, void *, CUdeviceptr)
COPY_ASYNC(cuMemcpyDtoDAsync_v2, false, CUdeviceptr, CUdeviceptr)
COPY_ASYNC(cuMemcpyDtoDAsync_v2_ptsz, true, CUdeviceptr, CUdeviceptr)

/* Peer copies: all devices share the host's address space. Each end is
 * accessed by the device of its own context (cuMemcpyPeer needs no peer
 * access), so each end is checked against that device. */
static CUresult peer_contexts_valid(CUcontext dst, CUcontext src)
{
    return sd_ctx_valid((struct sd_ctx *)dst) && sd_ctx_valid((struct sd_ctx *)src) ? CUDA_SUCCESS
                                                                                     : CUDA_ERROR_INVALID_CONTEXT;
}

#define PEER_DEV(c) (((struct sd_ctx *)(c))->dev)

CUresult cuMemcpyPeer(CUdeviceptr dstDevice, CUcontext dstContext, CUdeviceptr srcDevice, CUcontext srcContext,
                      size_t ByteCount)
{
    SD_ENTER(cuMemcpyPeer);
    CUresult rc = peer_contexts_valid(dstContext, srcContext);
    return rc ? rc : copy_on(ADDR(dstDevice), ADDR(srcDevice), ByteCount, NULL, false, true,
                             PEER_DEV(dstContext), PEER_DEV(srcContext));
}

CUresult cuMemcpyPeer_ptds(CUdeviceptr dstDevice, CUcontext dstContext, CUdeviceptr srcDevice, CUcontext srcContext,
                           size_t ByteCount)
{
    SD_ENTER(cuMemcpyPeer_ptds);
    CUresult rc = peer_contexts_valid(dstContext, srcContext);
    return rc ? rc : copy_on(ADDR(dstDevice), ADDR(srcDevice), ByteCount, NULL, true, true,
                             PEER_DEV(dstContext), PEER_DEV(srcContext));
}

CUresult cuMemcpyPeerAsync(CUdeviceptr dstDevice, CUcontext dstContext, CUdeviceptr srcDevice,
                           CUcontext srcContext, size_t ByteCount, CUstream hStream)
{
    SD_ENTER(cuMemcpyPeerAsync);
    CUresult rc = peer_contexts_valid(dstContext, srcContext);
    return rc ? rc : copy_on(ADDR(dstDevice), ADDR(srcDevice), ByteCount, hStream, false, false,
                             PEER_DEV(dstContext), PEER_DEV(srcContext));
}

CUresult cuMemcpyPeerAsync_ptsz(CUdeviceptr dstDevice, CUcontext dstContext, CUdeviceptr srcDevice,
                                CUcontext srcContext, size_t ByteCount, CUstream hStream)
{
    SD_ENTER(cuMemcpyPeerAsync_ptsz);
    CUresult rc = peer_contexts_valid(dstContext, srcContext);
    return rc ? rc : copy_on(ADDR(dstDevice), ADDR(srcDevice), ByteCount, hStream, true, false,
                             PEER_DEV(dstContext), PEER_DEV(srcContext));
}

/* ---- sets ---- */

#define SET_SYNC(fn, per_thread, T, elem)                                  \
    CUresult fn(CUdeviceptr dstDevice, T value, size_t N)                  \
    {                                                                      \
        SD_ENTER(fn);                                                      \
        return set(ADDR(dstDevice), value, elem, N, NULL, per_thread, true); \
    }

#define SET_ASYNC(fn, per_thread, T, elem)                                       \
    CUresult fn(CUdeviceptr dstDevice, T value, size_t N, CUstream hStream)      \
    {                                                                            \
        SD_ENTER(fn);                                                            \
        return set(ADDR(dstDevice), value, elem, N, hStream, per_thread, false); \
    }

SET_SYNC(cuMemsetD8_v2, false, unsigned char, 1)
SET_SYNC(cuMemsetD8_v2_ptds, true, unsigned char, 1)
SET_SYNC(cuMemsetD16_v2, false, unsigned short, 2)
SET_SYNC(cuMemsetD16_v2_ptds, true, unsigned short, 2)
SET_SYNC(cuMemsetD32_v2, false, unsigned int, 4)
SET_SYNC(cuMemsetD32_v2_ptds, true, unsigned int, 4)

SET_ASYNC(cuMemsetD8Async, false, unsigned char, 1)
SET_ASYNC(cuMemsetD8Async_ptsz, true, unsigned char, 1)
SET_ASYNC(cuMemsetD16Async, false, unsigned short, 2)
SET_ASYNC(cuMemsetD16Async_ptsz, true, unsigned short, 2)
SET_ASYNC(cuMemsetD32Async, false, unsigned int, 4)
SET_ASYNC(cuMemsetD32Async_ptsz, true, unsigned int, 4)
