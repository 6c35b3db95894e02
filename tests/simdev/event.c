/* Events. A record queues an operation whose completion is the event's mark;
 * waits and queries look at the mark of the latest record. An event never
 * recorded is complete. Event state lives under the sched lock. */
#include <stdlib.h>

#include "simdev_internal.h"

struct sd_event {
    unsigned flags;
    struct sd_ctx *ctx;
    struct sd_op *mark; /* latest record, referenced; NULL before the first */
};

static struct sd_rmap events; /* the set of live handles */

static struct sd_event *lookup(CUevent handle)
{
    struct sd_event *e = sd_rmap_find(&events, (uintptr_t)handle);
    return e == (struct sd_event *)handle ? e : NULL;
}

CUresult cuEventCreate(CUevent *phEvent, unsigned int Flags)
{
    SD_ENTER(cuEventCreate);
    const unsigned known = CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING | CU_EVENT_INTERPROCESS;
    if (!phEvent || (Flags & ~known))
        return CUDA_ERROR_INVALID_VALUE;
    if ((Flags & CU_EVENT_INTERPROCESS) && !(Flags & CU_EVENT_DISABLE_TIMING))
        return CUDA_ERROR_INVALID_VALUE;
    struct sd_ctx *ctx = sd_ctx_current();
    if (!ctx)
        return CUDA_ERROR_INVALID_CONTEXT;
    struct sd_event *e = calloc(1, sizeof *e);
    if (!e)
        return CUDA_ERROR_OUT_OF_MEMORY;
    e->flags = Flags;
    e->ctx = ctx;
    sd_sched_lock();
    bool ok = sd_rmap_insert(&events, (uintptr_t)e, 1, e);
    sd_sched_unlock();
    if (!ok) {
        free(e);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *phEvent = (CUevent)e;
    return CUDA_SUCCESS;
}

static CUresult event_destroy(CUevent handle)
{
    sd_sched_lock();
    struct sd_event *e = lookup(handle);
    if (e) {
        sd_rmap_remove(&events, (uintptr_t)e);
        if (e->mark)
            sd_op_unref(e->mark); /* a pending record still completes; only the handle goes */
        free(e);
    }
    sd_sched_unlock();
    return e ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult cuEventDestroy(CUevent hEvent)
{
    SD_ENTER(cuEventDestroy);
    return event_destroy(hEvent);
}

CUresult cuEventDestroy_v2(CUevent hEvent)
{
    SD_ENTER(cuEventDestroy_v2);
    return event_destroy(hEvent);
}

static CUresult record(CUevent handle, CUstream stream, bool per_thread_default, unsigned flags)
{
    if (flags & ~(unsigned)CU_EVENT_RECORD_EXTERNAL)
        return CUDA_ERROR_INVALID_VALUE;
    sd_sched_lock();
    bool valid = lookup(handle) != NULL;
    sd_sched_unlock();
    if (!valid)
        return CUDA_ERROR_INVALID_HANDLE;

    struct sd_stream *s;
    CUresult rc = sd_stream_get(stream, per_thread_default, &s);
    if (rc == CUDA_SUCCESS)
        rc = sd_sticky(s->ctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    struct sd_op *op = sd_op_new(SD_OP_RECORD), *mark;
    if (!op)
        return CUDA_ERROR_OUT_OF_MEMORY;
    rc = sd_submit(s, op, &mark);
    if (rc != CUDA_SUCCESS)
        return rc;

    sd_sched_lock();
    struct sd_event *e = lookup(handle);
    if (e) {
        if (e->mark)
            sd_op_unref(e->mark);
        e->mark = mark;
    } else {
        sd_op_unref(mark); /* destroyed meanwhile */
    }
    sd_sched_unlock();
    return e ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult cuEventRecord(CUevent hEvent, CUstream hStream)
{
    SD_ENTER(cuEventRecord);
    return record(hEvent, hStream, false, 0);
}

CUresult cuEventRecord_ptsz(CUevent hEvent, CUstream hStream)
{
    SD_ENTER(cuEventRecord_ptsz);
    return record(hEvent, hStream, true, 0);
}

CUresult cuEventRecordWithFlags(CUevent hEvent, CUstream hStream, unsigned int flags)
{
    SD_ENTER(cuEventRecordWithFlags);
    return record(hEvent, hStream, false, flags);
}

CUresult cuEventRecordWithFlags_ptsz(CUevent hEvent, CUstream hStream, unsigned int flags)
{
    SD_ENTER(cuEventRecordWithFlags_ptsz);
    return record(hEvent, hStream, true, flags);
}

CUresult cuEventQuery(CUevent hEvent)
{
    SD_ENTER(cuEventQuery);
    CUresult unsafe = sd_capture_unsafe_call();
    if (unsafe != CUDA_SUCCESS)
        return unsafe;
    sd_sched_lock();
    struct sd_event *e = lookup(hEvent);
    CUresult rc = CUDA_ERROR_INVALID_HANDLE;
    if (e) {
        rc = sd_sticky(e->ctx);
        if (rc == CUDA_SUCCESS && e->mark && e->mark->captured)
            rc = CUDA_ERROR_CAPTURED_EVENT; /* last recorded inside a capture (see capture.c) */
        else if (rc == CUDA_SUCCESS && e->mark && !e->mark->done)
            rc = CUDA_ERROR_NOT_READY;
    }
    sd_sched_unlock();
    return rc;
}

CUresult cuEventSynchronize(CUevent hEvent)
{
    SD_ENTER(cuEventSynchronize);
    CUresult unsafe = sd_capture_unsafe_call();
    if (unsafe != CUDA_SUCCESS)
        return unsafe;
    sd_sched_lock();
    struct sd_event *e = lookup(hEvent);
    struct sd_op *mark = e ? e->mark : NULL;
    struct sd_ctx *ctx = e ? e->ctx : NULL;
    if (mark && mark->captured) {
        sd_sched_unlock();
        return CUDA_ERROR_CAPTURED_EVENT; /* last recorded inside a capture (see capture.c) */
    }
    if (mark)
        sd_op_ref(mark);
    sd_sched_unlock();
    if (!e)
        return CUDA_ERROR_INVALID_HANDLE;
    if (mark) {
        sd_op_wait(mark);
        sd_op_release(mark);
    }
    return sd_sticky(ctx);
}

static CUresult elapsed(float *ms, CUevent hStart, CUevent hEnd)
{
    if (!ms)
        return CUDA_ERROR_INVALID_VALUE;
    sd_sched_lock();
    struct sd_event *a = lookup(hStart), *b = lookup(hEnd);
    CUresult rc = CUDA_SUCCESS;
    if (!a || !b || ((a->flags | b->flags) & CU_EVENT_DISABLE_TIMING) || !a->mark || !b->mark)
        rc = CUDA_ERROR_INVALID_HANDLE;
    else if (!a->mark->done || !b->mark->done)
        rc = CUDA_ERROR_NOT_READY;
    else
        *ms = (float)(((double)b->mark->done_ns - (double)a->mark->done_ns) / 1e6);
    CUresult sticky = a ? sd_sticky(a->ctx) : CUDA_SUCCESS;
    sd_sched_unlock();
    return sticky != CUDA_SUCCESS ? sticky : rc;
}

CUresult cuEventElapsedTime(float *pMilliseconds, CUevent hStart, CUevent hEnd)
{
    SD_ENTER(cuEventElapsedTime);
    return elapsed(pMilliseconds, hStart, hEnd);
}

CUresult cuEventElapsedTime_v2(float *pMilliseconds, CUevent hStart, CUevent hEnd)
{
    SD_ENTER(cuEventElapsedTime_v2);
    return elapsed(pMilliseconds, hStart, hEnd);
}

/* The stream's later work waits for the event's latest record as of this call. */
static CUresult wait_event(CUstream stream, bool per_thread_default, CUevent handle, unsigned flags)
{
    if (flags & ~(unsigned)CU_EVENT_WAIT_EXTERNAL)
        return CUDA_ERROR_INVALID_VALUE;
    struct sd_stream *s;
    CUresult rc = sd_stream_get(stream, per_thread_default, &s);
    if (rc == CUDA_SUCCESS)
        rc = sd_sticky(s->ctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    struct sd_op *op = sd_op_new(SD_OP_NOP);
    if (!op)
        return CUDA_ERROR_OUT_OF_MEMORY;
    sd_sched_lock();
    struct sd_event *e = lookup(handle);
    if (e && e->mark && e->mark->cap) {
        /* Recorded in a capture: the waiting stream joins that capture
         * (programming guide, stream capture, "cross-stream dependencies"). */
        rc = sd_capture_join(s, e->mark);
        sd_sched_unlock();
        if (rc != CUDA_SUCCESS) {
            sd_op_release(op);
            return rc;
        }
        return sd_submit(s, op, NULL);
    }
    bool ok = e && (!e->mark || e->mark->done || sd_op_add_dep(op, e->mark));
    rc = !e ? CUDA_ERROR_INVALID_HANDLE : !ok ? CUDA_ERROR_OUT_OF_MEMORY : CUDA_SUCCESS;
    bool needed = op->ndeps > 0;
    if (rc != CUDA_SUCCESS || !needed)
        sd_op_unref(op);
    sd_sched_unlock();
    if (rc != CUDA_SUCCESS || !needed)
        return rc;
    return sd_submit(s, op, NULL);
}

CUresult cuStreamWaitEvent(CUstream hStream, CUevent hEvent, unsigned int Flags)
{
    SD_ENTER(cuStreamWaitEvent);
    return wait_event(hStream, false, hEvent, Flags);
}

CUresult cuStreamWaitEvent_ptsz(CUstream hStream, CUevent hEvent, unsigned int Flags)
{
    SD_ENTER(cuStreamWaitEvent_ptsz);
    return wait_event(hStream, true, hEvent, Flags);
}
