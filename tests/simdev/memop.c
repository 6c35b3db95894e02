/* Stream memory operations: the address must be visible to the stream's
 * device (cuStreamWaitValue32: memory from cuMemAlloc, a mapping the device
 * may access, or mapped pinned host memory whose device pointer comes from
 * cuMemHostGetDevicePointer); anything else is refused at the call.
 * cuStreamWaitValue32/64 blocks a stream until a
 * word in memory satisfies a condition (libckpt holds streams still with it
 * while it swaps a VA); cuStreamWriteValue32/64 writes one in stream order.
 * The worker polls the word, backing off up to a millisecond. */
#include <stdlib.h>

#include "simdev_internal.h"

atomic_bool sd_abandon_waits;

struct word_access {
    struct sd_op *op;
    uint64_t seen;
};

static void load_word(void *arg)
{
    struct word_access *a = arg;
    if (a->op->u.value.width == 4)
        a->seen = __atomic_load_n((uint32_t *)a->op->u.value.addr, __ATOMIC_ACQUIRE);
    else
        a->seen = __atomic_load_n((uint64_t *)a->op->u.value.addr, __ATOMIC_ACQUIRE);
}

static void store_word(void *arg)
{
    struct word_access *a = arg;
    if (a->op->u.value.width == 4)
        __atomic_store_n((uint32_t *)a->op->u.value.addr, (uint32_t)a->op->u.value.value, __ATOMIC_RELEASE);
    else
        __atomic_store_n((uint64_t *)a->op->u.value.addr, a->op->u.value.value, __ATOMIC_RELEASE);
}

static bool condition_met(const struct sd_op *op, uint64_t seen)
{
    uint64_t value = op->u.value.value;
    bool narrow = op->u.value.width == 4;
    uint64_t mask = narrow ? 0xffffffffull : ~0ull;
    switch (op->u.value.flags & ~(unsigned)CU_STREAM_WAIT_VALUE_FLUSH) {
    case CU_STREAM_WAIT_VALUE_GEQ: /* wrap-around aware, as documented */
        return narrow ? (int32_t)((uint32_t)seen - (uint32_t)value) >= 0 : (int64_t)(seen - value) >= 0;
    case CU_STREAM_WAIT_VALUE_EQ:
        return ((seen ^ value) & mask) == 0;
    case CU_STREAM_WAIT_VALUE_AND:
        return (seen & value & mask) != 0;
    default: /* CU_STREAM_WAIT_VALUE_NOR */
        return (~(seen | value) & mask) != 0;
    }
}

void sd_memop_run(struct sd_stream *s, struct sd_op *op)
{
    struct word_access a = {op, 0};
    void *addr = NULL;
    const void *where = NULL;
    if (!sd_device_may_touch(s->ctx->dev, op->u.value.addr, op->u.value.width, op->kind == SD_OP_WRITE_VALUE,
                             &where)) {
        sd_fault_record(s->ctx, (void *)where, sd_op_name(op->kind), s->id);
        return;
    }
    if (op->kind == SD_OP_WRITE_VALUE) {
        if (!sd_guarded(store_word, &a, &addr))
            sd_fault_record(s->ctx, addr, sd_op_name(op->kind), s->id);
        return;
    }
    for (unsigned i = 0;; i++) {
        if (!sd_guarded(load_word, &a, &addr)) {
            sd_fault_record(s->ctx, addr, sd_op_name(op->kind), s->id);
            return;
        }
        if (condition_met(op, a.seen) || atomic_load(&sd_abandon_waits) || atomic_load(&s->ctx->sticky))
            return;
        sd_sleep_ns(1000ull * (i < 7 ? 10u << i : 1000u));
    }
}

static CUresult enqueue(CUstream stream, bool per_thread_default, enum sd_op_kind kind, CUdeviceptr addr,
                        uint64_t value, unsigned width, unsigned flags)
{
    unsigned known = kind == SD_OP_WAIT_VALUE ? (unsigned)CU_STREAM_WAIT_VALUE_FLUSH | 3u
                                              : (unsigned)CU_STREAM_WRITE_VALUE_NO_MEMORY_BARRIER;
    if (!addr || addr % width || (flags & ~known))
        return CUDA_ERROR_INVALID_VALUE;
    struct sd_stream *s;
    CUresult rc = sd_stream_get(stream, per_thread_default, &s);
    if (rc == CUDA_SUCCESS)
        rc = sd_sticky(s->ctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!sd_device_visible(s->ctx->dev, (uintptr_t)addr, width))
        return CUDA_ERROR_INVALID_VALUE;
    struct sd_op *op = sd_op_new(kind);
    if (!op)
        return CUDA_ERROR_OUT_OF_MEMORY;
    op->u.value.addr = (void *)(uintptr_t)addr;
    op->u.value.value = value;
    op->u.value.width = width;
    op->u.value.flags = flags;
    return sd_submit(s, op, NULL);
}

#define MEMOP(fn, per_thread, kind, T, width)                                          \
    CUresult fn(CUstream stream, CUdeviceptr addr, T value, unsigned int flags)        \
    {                                                                                  \
        SD_ENTER(fn);                                                                  \
        return enqueue(stream, per_thread, kind, addr, value, width, flags);           \
    }

MEMOP(cuStreamWaitValue32, false, SD_OP_WAIT_VALUE, cuuint32_t, 4)
MEMOP(cuStreamWaitValue32_ptsz, true, SD_OP_WAIT_VALUE, cuuint32_t, 4)
MEMOP(cuStreamWaitValue32_v2, false, SD_OP_WAIT_VALUE, cuuint32_t, 4)
MEMOP(cuStreamWaitValue32_v2_ptsz, true, SD_OP_WAIT_VALUE, cuuint32_t, 4)
MEMOP(cuStreamWaitValue64, false, SD_OP_WAIT_VALUE, cuuint64_t, 8)
MEMOP(cuStreamWaitValue64_ptsz, true, SD_OP_WAIT_VALUE, cuuint64_t, 8)
MEMOP(cuStreamWaitValue64_v2, false, SD_OP_WAIT_VALUE, cuuint64_t, 8)
MEMOP(cuStreamWaitValue64_v2_ptsz, true, SD_OP_WAIT_VALUE, cuuint64_t, 8)
MEMOP(cuStreamWriteValue32, false, SD_OP_WRITE_VALUE, cuuint32_t, 4)
MEMOP(cuStreamWriteValue32_ptsz, true, SD_OP_WRITE_VALUE, cuuint32_t, 4)
MEMOP(cuStreamWriteValue32_v2, false, SD_OP_WRITE_VALUE, cuuint32_t, 4)
MEMOP(cuStreamWriteValue32_v2_ptsz, true, SD_OP_WRITE_VALUE, cuuint32_t, 4)
MEMOP(cuStreamWriteValue64, false, SD_OP_WRITE_VALUE, cuuint64_t, 8)
MEMOP(cuStreamWriteValue64_ptsz, true, SD_OP_WRITE_VALUE, cuuint64_t, 8)
MEMOP(cuStreamWriteValue64_v2, false, SD_OP_WRITE_VALUE, cuuint64_t, 8)
MEMOP(cuStreamWriteValue64_v2_ptsz, true, SD_OP_WRITE_VALUE, cuuint64_t, 8)

/* cuStreamBatchMemOp: the operations run in order as ONE stream operation,
 * so no other work can be enqueued between them (libckpt's gates rely on a
 * write directly followed by a wait). */
static CUresult batch(CUstream stream, bool per_thread_default, unsigned count, CUstreamBatchMemOpParams *params,
                      unsigned flags)
{
    if (!count || !params || flags)
        return CUDA_ERROR_INVALID_VALUE;
    struct sd_op *items = calloc(count, sizeof *items);
    if (!items)
        return CUDA_ERROR_OUT_OF_MEMORY;
    for (unsigned i = 0; i < count; i++) {
        CUstreamBatchMemOpParams *p = &params[i];
        struct sd_op *it = &items[i];
        switch (p->operation) {
        case CU_STREAM_MEM_OP_WAIT_VALUE_32:
        case CU_STREAM_MEM_OP_WAIT_VALUE_64:
            it->kind = SD_OP_WAIT_VALUE;
            it->u.value.width = p->operation == CU_STREAM_MEM_OP_WAIT_VALUE_32 ? 4 : 8;
            it->u.value.addr = (void *)(uintptr_t)p->waitValue.address;
            it->u.value.value = it->u.value.width == 4 ? p->waitValue.value : p->waitValue.value64;
            it->u.value.flags = p->waitValue.flags;
            break;
        case CU_STREAM_MEM_OP_WRITE_VALUE_32:
        case CU_STREAM_MEM_OP_WRITE_VALUE_64:
            it->kind = SD_OP_WRITE_VALUE;
            it->u.value.width = p->operation == CU_STREAM_MEM_OP_WRITE_VALUE_32 ? 4 : 8;
            it->u.value.addr = (void *)(uintptr_t)p->writeValue.address;
            it->u.value.value = it->u.value.width == 4 ? p->writeValue.value : p->writeValue.value64;
            it->u.value.flags = p->writeValue.flags;
            break;
        default:
            free(items);
            return CUDA_ERROR_NOT_SUPPORTED;
        }
        if (!it->u.value.addr || (uintptr_t)it->u.value.addr % it->u.value.width) {
            free(items);
            return CUDA_ERROR_INVALID_VALUE;
        }
    }
    struct sd_stream *s;
    CUresult rc = sd_stream_get(stream, per_thread_default, &s);
    if (rc == CUDA_SUCCESS)
        rc = sd_sticky(s->ctx);
    for (unsigned i = 0; rc == CUDA_SUCCESS && i < count; i++)
        if (!sd_device_visible(s->ctx->dev, (uintptr_t)items[i].u.value.addr, items[i].u.value.width))
            rc = CUDA_ERROR_INVALID_VALUE;
    struct sd_op *op = rc == CUDA_SUCCESS ? sd_op_new(SD_OP_BATCH) : NULL;
    if (!op) {
        free(items);
        return rc != CUDA_SUCCESS ? rc : CUDA_ERROR_OUT_OF_MEMORY;
    }
    op->u.batch.items = items;
    op->u.batch.count = count;
    return sd_submit(s, op, NULL);
}

CUresult cuStreamBatchMemOp_v2(CUstream stream, unsigned int count, CUstreamBatchMemOpParams *paramArray,
                               unsigned int flags)
{
    SD_ENTER(cuStreamBatchMemOp_v2);
    return batch(stream, false, count, paramArray, flags);
}

CUresult cuStreamBatchMemOp_v2_ptsz(CUstream stream, unsigned int count, CUstreamBatchMemOpParams *paramArray,
                                    unsigned int flags)
{
    SD_ENTER(cuStreamBatchMemOp_v2_ptsz);
    return batch(stream, true, count, paramArray, flags);
}
