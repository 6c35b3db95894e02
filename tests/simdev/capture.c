/* Stream capture and graphs, as strict as the driver documents them.
 *
 * cuStreamBeginCapture(_v2) puts a stream in capture mode: work submitted to
 * it is recorded into a graph, not run (CUDA programming guide, "CUDA Graphs"
 * / "Stream Capture"). A stream that waits on an event recorded in a
 * capturing stream joins that capture (cross-stream dependencies); joined
 * streams leave it when the origin stream ends it.
 *
 * Potentially unsafe calls (those that synchronize or query: cuStreamQuery,
 * cuStreamSynchronize, cuEventQuery, cuEventSynchronize, cuCtxSynchronize,
 * synchronous copies and sets, cuMemAlloc/cuMemFree and pinned host
 * allocation, which synchronize implicitly) follow CUstreamCaptureMode as
 * cuda.h and cudaStreamBeginCapture's documentation give it:
 *  - GLOBAL (the default): "If the local thread has an ongoing capture sequence
 *    that was not initiated with CU_STREAM_CAPTURE_MODE_RELAXED ..., or if any
 *    other thread has a concurrent capture sequence initiated with
 *    CU_STREAM_CAPTURE_MODE_GLOBAL, this thread is prohibited from potentially
 *    unsafe API calls."
 *  - THREAD_LOCAL: only the thread's own non-relaxed captures prohibit them.
 *  - RELAXED: "the local thread is not prohibited" (cuda.h, CUstreamCaptureMode),
 *    but "still prohibited from API calls which necessarily conflict with
 *    stream capture, for example, attempting cuEventQuery on an event that was
 *    last recorded inside a capture sequence": CUDA_ERROR_CAPTURED_EVENT, in
 *    any mode, until the event is recorded again outside a capture.
 * The thread's mode is the one cuThreadExchangeStreamCaptureMode set (GLOBAL
 * until then). A prohibited call returns CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
 * and the capture it conflicts with is invalidated: cuStreamEndCapture then
 * returns CUDA_ERROR_STREAM_CAPTURE_INVALIDATED and no graph (the failure
 * PyTorch reports as "operation not permitted when stream is capturing" /
 * "capture invalidated" when another thread calls cudaEventQuery during a
 * global-mode capture; hence its use of thread-local or relaxed modes; the
 * same rule, mode by mode, is what ROCm fixed in HIP for PyTorch's watchdog
 * threads: ROCm/rocm-systems#3176, ROCm/hip#3876).
 *
 * Graphs replay their recorded operations in capture order on the launch
 * stream (one linear chain: the simulator does not run forked branches of a
 * graph concurrently). cuMemAllocAsync in a capture is a graph allocation
 * node: the address is fixed when it is captured and stays the same at every
 * launch; a cuMemFreeAsync of it in the capture is a free node, and the
 * memory returns to its pool when the graph is destroyed. A free node must
 * name a graph allocation (cuMemFreeAsync: "during stream capture, this
 * function results in the creation of a free node and must therefore be
 * passed the address of a graph allocation"; cuGraphAddMemFreeNode returns
 * CUDA_ERROR_INVALID_VALUE for "an address that was not returned by an
 * allocation node"): a cuMemFreeAsync in a capture of memory allocated
 * outside one fails with CUDA_ERROR_INVALID_VALUE, frees nothing, and the
 * capture is invalidated (as a failed captured call does). */
#include <stdlib.h>
#include <string.h>

#include "simdev_internal.h"

struct sd_graph {
    struct sd_op **ops;
    size_t n, cap;
    struct sd_region **freed; /* blocks whose free node is in the graph */
    size_t nfreed;
    int execs; /* live instantiations */
    bool destroyed;
};

struct sd_capture {
    unsigned long long id;
    CUstreamCaptureMode mode;
    bool invalid;
    pthread_t thread; /* that began it */
    struct sd_stream *origin;
    struct sd_graph *graph;
    struct sd_capture *next; /* active captures */
};

struct sd_exec {
    struct sd_graph *graph;
};

/* Under the sched lock. */
static struct sd_capture *active;
static unsigned long long next_capture_id = 1;
static struct sd_rmap graphs, execs; /* live handles */

static __thread CUstreamCaptureMode thread_mode = CU_STREAM_CAPTURE_MODE_GLOBAL;

bool sd_capture_unjoined(struct sd_capture *cap, const struct sd_stream *origin); /* stream.c */

CUresult sd_capture_record(struct sd_capture *cap, struct sd_stream *s, struct sd_op *op)
{
    if (cap->invalid) {
        sd_op_unref(op);
        return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    }
    struct sd_graph *g = cap->graph;
    if (g->n == g->cap) {
        size_t c = g->cap ? g->cap * 2 : 16;
        struct sd_op **v = realloc(g->ops, c * sizeof *v);
        if (!v) {
            sd_op_unref(op);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        g->ops = v;
        g->cap = c;
    }
    op->cap = cap;
    op->captured = true;
    op->cap_stream = s;
    op->cap_index = g->n + 1;
    s->cap_last = op->cap_index;
    g->ops[g->n++] = op; /* the creator's reference */
    return CUDA_SUCCESS;
}

void sd_capture_invalidate(struct sd_capture *cap)
{
    if (!cap->invalid)
        sd_log("capture %llu invalidated", cap->id);
    cap->invalid = true;
}

CUresult sd_capture_unsafe_call(void)
{
    if (thread_mode == CU_STREAM_CAPTURE_MODE_RELAXED)
        return CUDA_SUCCESS;
    CUresult rc = CUDA_SUCCESS;
    pthread_t me = pthread_self();
    sd_sched_lock();
    for (struct sd_capture *c = active; c; c = c->next) {
        bool mine = pthread_equal(c->thread, me);
        bool prohibits = mine ? c->mode != CU_STREAM_CAPTURE_MODE_RELAXED
                              : thread_mode == CU_STREAM_CAPTURE_MODE_GLOBAL && c->mode == CU_STREAM_CAPTURE_MODE_GLOBAL;
        if (prohibits) {
            sd_capture_invalidate(c);
            rc = CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
        }
    }
    sd_sched_unlock();
    return rc;
}

CUresult sd_capture_join(struct sd_stream *s, struct sd_op *mark)
{
    struct sd_capture *cap = mark->cap;
    /* The recording stream's work up to the mark is joined into s. */
    if (mark->cap_stream && mark->cap_stream != s && mark->cap_stream->cap == cap &&
        mark->cap_stream->cap_joined < mark->cap_index)
        mark->cap_stream->cap_joined = mark->cap_index;
    if (s->cap == cap)
        return CUDA_SUCCESS;
    if (s->cap) /* two captures may not be merged */
        return CUDA_ERROR_STREAM_CAPTURE_ISOLATION;
    if (s->kind == SD_STREAM_LEGACY)
        return CUDA_ERROR_STREAM_CAPTURE_IMPLICIT;
    s->cap = cap;
    return CUDA_SUCCESS;
}

void sd_capture_note_free(struct sd_capture *cap, struct sd_region *block)
{
    sd_sched_lock();
    struct sd_graph *g = cap->graph;
    struct sd_region **v = realloc(g->freed, (g->nfreed + 1) * sizeof *v);
    if (v) {
        g->freed = v;
        g->freed[g->nfreed++] = block;
    }
    sd_sched_unlock();
}

void sd_capture_fail(struct sd_capture *cap)
{
    sd_sched_lock();
    sd_capture_invalidate(cap);
    sd_sched_unlock();
}

/* ---- capture entry points ---- */

static CUresult begin(CUstream handle, bool per_thread_default, CUstreamCaptureMode mode)
{
    if (mode != CU_STREAM_CAPTURE_MODE_GLOBAL && mode != CU_STREAM_CAPTURE_MODE_THREAD_LOCAL &&
        mode != CU_STREAM_CAPTURE_MODE_RELAXED)
        return CUDA_ERROR_INVALID_VALUE;
    struct sd_stream *s;
    CUresult rc = sd_stream_get(handle, per_thread_default, &s);
    if (rc != CUDA_SUCCESS)
        return rc;
    /* The legacy stream cannot be captured (it synchronizes implicitly). */
    if (s->kind == SD_STREAM_LEGACY)
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    struct sd_capture *cap = calloc(1, sizeof *cap);
    struct sd_graph *g = calloc(1, sizeof *g);
    if (!cap || !g) {
        free(cap);
        free(g);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    sd_sched_lock();
    if (s->cap) {
        sd_sched_unlock();
        free(cap);
        free(g);
        return CUDA_ERROR_ILLEGAL_STATE;
    }
    cap->id = next_capture_id++;
    cap->mode = mode;
    cap->thread = pthread_self();
    cap->origin = s;
    cap->graph = g;
    cap->next = active;
    active = cap;
    s->cap = cap;
    sd_sched_unlock();
    sd_log("stream %llu: capture %llu begins (mode %d)", s->id, cap->id, (int)mode);
    return CUDA_SUCCESS;
}

/* The pre-10.1 entry point takes no mode: global. */
CUresult cuStreamBeginCapture(CUstream hStream)
{
    SD_ENTER(cuStreamBeginCapture);
    return begin(hStream, false, CU_STREAM_CAPTURE_MODE_GLOBAL);
}

CUresult cuStreamBeginCapture_ptsz(CUstream hStream)
{
    SD_ENTER(cuStreamBeginCapture_ptsz);
    return begin(hStream, true, CU_STREAM_CAPTURE_MODE_GLOBAL);
}

CUresult cuStreamBeginCapture_v2(CUstream hStream, CUstreamCaptureMode mode)
{
    SD_ENTER(cuStreamBeginCapture_v2);
    return begin(hStream, false, mode);
}

CUresult cuStreamBeginCapture_v2_ptsz(CUstream hStream, CUstreamCaptureMode mode)
{
    SD_ENTER(cuStreamBeginCapture_v2_ptsz);
    return begin(hStream, true, mode);
}

static void graph_free(struct sd_graph *g)
{
    for (size_t i = 0; i < g->n; i++)
        sd_op_unref(g->ops[i]);
    free(g->ops);
    sd_sched_unlock();
    for (size_t i = 0; i < g->nfreed; i++)
        sd_pool_free_done(g->freed[i]); /* takes sd_mem_lock */
    sd_sched_lock();
    free(g->freed);
    free(g);
}

static CUresult end(CUstream handle, bool per_thread_default, CUgraph *phGraph)
{
    if (!phGraph)
        return CUDA_ERROR_INVALID_VALUE;
    struct sd_stream *s;
    CUresult rc = sd_stream_get(handle, per_thread_default, &s);
    if (rc != CUDA_SUCCESS)
        return rc;
    sd_sched_lock();
    struct sd_capture *cap = s->cap;
    if (!cap) {
        sd_sched_unlock();
        return CUDA_ERROR_ILLEGAL_STATE;
    }
    if (cap->origin != s) {
        sd_sched_unlock();
        return CUDA_ERROR_STREAM_CAPTURE_UNMATCHED;
    }
    /* Non-relaxed captures end on the thread that began them (cuStreamBeginCapture). */
    if (cap->mode != CU_STREAM_CAPTURE_MODE_RELAXED && !pthread_equal(cap->thread, pthread_self())) {
        sd_sched_unlock();
        return CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD;
    }
    /* "CUDA_ERROR_STREAM_CAPTURE_UNJOINED: the capture sequence contains a
     * fork that was not joined to the primary stream" (cuda.h): every stream
     * that joined must have its last captured work waited on again (an event
     * recorded after it and waited on by another stream of the capture). The
     * capture is ended and invalid. */
    bool unjoined = !cap->invalid && sd_capture_unjoined(cap, s);
    if (unjoined)
        sd_capture_invalidate(cap);
    for (struct sd_capture **p = &active; *p; p = &(*p)->next)
        if (*p == cap) {
            *p = cap->next;
            break;
        }
    sd_streams_leave_capture(cap);
    struct sd_graph *g = cap->graph;
    /* Recorded work never runs as such: an event recorded in the capture
     * reads as complete from now on, and no later wait joins this capture. */
    for (size_t i = 0; i < g->n; i++) {
        g->ops[i]->cap = NULL;
        g->ops[i]->done = true;
    }
    bool invalid = cap->invalid;
    rc = CUDA_SUCCESS;
    if (invalid) {
        graph_free(g);
        *phGraph = NULL;
        rc = unjoined ? CUDA_ERROR_STREAM_CAPTURE_UNJOINED : CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    } else if (!sd_rmap_insert(&graphs, (uintptr_t)g, 1, g)) {
        graph_free(g);
        rc = CUDA_ERROR_OUT_OF_MEMORY;
    } else {
        *phGraph = (CUgraph)g;
    }
    /* The capture record itself stays allocated (small; ops no longer point to it). */
    sd_sched_unlock();
    sd_log("stream %llu: capture %llu ends%s", s->id, cap->id, invalid ? ", invalidated" : "");
    return rc;
}

CUresult cuStreamEndCapture(CUstream hStream, CUgraph *phGraph)
{
    SD_ENTER(cuStreamEndCapture);
    return end(hStream, false, phGraph);
}

CUresult cuStreamEndCapture_ptsz(CUstream hStream, CUgraph *phGraph)
{
    SD_ENTER(cuStreamEndCapture_ptsz);
    return end(hStream, true, phGraph);
}

static CUresult status_of(CUstream handle, bool per_thread_default, CUstreamCaptureStatus *st, cuuint64_t *id)
{
    struct sd_stream *s;
    CUresult rc = sd_stream_get(handle, per_thread_default, &s);
    if (rc != CUDA_SUCCESS)
        return rc;
    sd_sched_lock();
    /* cuStreamIsCapturing / cuStreamGetCaptureInfo: on the legacy stream while
     * a blocking stream of its context captures, CUDA_ERROR_STREAM_CAPTURE_IMPLICIT
     * ("the blocking stream capture is not invalidated"). */
    if (s->kind == SD_STREAM_LEGACY && sd_capture_legacy_blocked(s)) {
        sd_sched_unlock();
        return CUDA_ERROR_STREAM_CAPTURE_IMPLICIT;
    }
    struct sd_capture *cap = s->cap;
    *st = !cap ? CU_STREAM_CAPTURE_STATUS_NONE
               : cap->invalid ? CU_STREAM_CAPTURE_STATUS_INVALIDATED : CU_STREAM_CAPTURE_STATUS_ACTIVE;
    if (id && cap)
        *id = cap->id;
    sd_sched_unlock();
    return CUDA_SUCCESS;
}

CUresult cuStreamIsCapturing(CUstream hStream, CUstreamCaptureStatus *captureStatus)
{
    SD_ENTER(cuStreamIsCapturing);
    return captureStatus ? status_of(hStream, false, captureStatus, NULL) : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuStreamIsCapturing_ptsz(CUstream hStream, CUstreamCaptureStatus *captureStatus)
{
    SD_ENTER(cuStreamIsCapturing_ptsz);
    return captureStatus ? status_of(hStream, true, captureStatus, NULL) : CUDA_ERROR_INVALID_VALUE;
}

/* CUDA 13's cuda.h maps cuStreamGetCaptureInfo to _v3. Dependencies are not
 * modelled: none are reported. */
static CUresult capture_info(CUstream hStream, bool per_thread_default, CUstreamCaptureStatus *st, cuuint64_t *id,
                             CUgraph *graph, const CUgraphNode **deps, const CUgraphEdgeData **edges, size_t *ndeps)
{
    if (!st)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = status_of(hStream, per_thread_default, st, id);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (graph)
        *graph = NULL;
    if (deps)
        *deps = NULL;
    if (edges)
        *edges = NULL;
    if (ndeps)
        *ndeps = 0;
    return CUDA_SUCCESS;
}

CUresult cuStreamGetCaptureInfo_v3(CUstream hStream, CUstreamCaptureStatus *captureStatus_out, cuuint64_t *id_out,
                                   CUgraph *graph_out, const CUgraphNode **dependencies_out,
                                   const CUgraphEdgeData **edgeData_out, size_t *numDependencies_out)
{
    SD_ENTER(cuStreamGetCaptureInfo_v3);
    return capture_info(hStream, false, captureStatus_out, id_out, graph_out, dependencies_out, edgeData_out,
                        numDependencies_out);
}

CUresult cuStreamGetCaptureInfo_v3_ptsz(CUstream hStream, CUstreamCaptureStatus *captureStatus_out,
                                        cuuint64_t *id_out, CUgraph *graph_out,
                                        const CUgraphNode **dependencies_out,
                                        const CUgraphEdgeData **edgeData_out, size_t *numDependencies_out)
{
    SD_ENTER(cuStreamGetCaptureInfo_v3_ptsz);
    return capture_info(hStream, true, captureStatus_out, id_out, graph_out, dependencies_out, edgeData_out,
                        numDependencies_out);
}

CUresult cuThreadExchangeStreamCaptureMode(CUstreamCaptureMode *mode)
{
    SD_ENTER(cuThreadExchangeStreamCaptureMode);
    if (!mode || (*mode != CU_STREAM_CAPTURE_MODE_GLOBAL && *mode != CU_STREAM_CAPTURE_MODE_THREAD_LOCAL &&
                  *mode != CU_STREAM_CAPTURE_MODE_RELAXED))
        return CUDA_ERROR_INVALID_VALUE;
    CUstreamCaptureMode old = thread_mode;
    thread_mode = *mode;
    *mode = old;
    return CUDA_SUCCESS;
}

/* ---- graphs ---- */

static struct sd_graph *graph_lookup(CUgraph h)
{
    struct sd_graph *g = sd_rmap_find(&graphs, (uintptr_t)h);
    return g == (struct sd_graph *)h && !g->destroyed ? g : NULL;
}

CUresult cuGraphInstantiateWithFlags(CUgraphExec *phGraphExec, CUgraph hGraph, unsigned long long flags)
{
    SD_ENTER(cuGraphInstantiateWithFlags);
    if (!phGraphExec || (flags & ~(unsigned long long)(CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH |
                                                        CUDA_GRAPH_INSTANTIATE_FLAG_USE_NODE_PRIORITY)))
        return CUDA_ERROR_INVALID_VALUE;
    struct sd_exec *x = calloc(1, sizeof *x);
    if (!x)
        return CUDA_ERROR_OUT_OF_MEMORY;
    sd_sched_lock();
    struct sd_graph *g = graph_lookup(hGraph);
    bool ok = g && sd_rmap_insert(&execs, (uintptr_t)x, 1, x);
    if (ok) {
        x->graph = g;
        g->execs++;
    }
    sd_sched_unlock();
    if (!ok) {
        free(x);
        return g ? CUDA_ERROR_OUT_OF_MEMORY : CUDA_ERROR_INVALID_VALUE;
    }
    *phGraphExec = (CUgraphExec)x;
    return CUDA_SUCCESS;
}

/* A fresh operation doing what a recorded one did (cross-stream waits and
 * event records inside the graph become plain ordering: the chain is linear). */
static struct sd_op *clone_op(const struct sd_op *o)
{
    enum sd_op_kind k = o->kind == SD_OP_RECORD || o->kind == SD_OP_FREE ? SD_OP_NOP : o->kind;
    struct sd_op *c = sd_op_new(k);
    if (!c)
        return NULL;
    if (k != SD_OP_NOP)
        c->u = o->u;
    if (k == SD_OP_BATCH) {
        c->u.batch.items = malloc(o->u.batch.count * sizeof *c->u.batch.items);
        if (!c->u.batch.items) {
            free(c);
            return NULL;
        }
        memcpy(c->u.batch.items, o->u.batch.items, o->u.batch.count * sizeof *c->u.batch.items);
    }
    return c;
}

static CUresult launch(CUgraphExec hGraphExec, CUstream hStream, bool per_thread_default)
{
    struct sd_stream *s;
    CUresult rc = sd_stream_get(hStream, per_thread_default, &s);
    if (rc == CUDA_SUCCESS)
        rc = sd_sticky(s->ctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    sd_sched_lock();
    struct sd_exec *x = sd_rmap_find(&execs, (uintptr_t)hGraphExec);
    if (x != (struct sd_exec *)hGraphExec)
        x = NULL;
    size_t n = x ? x->graph->n : 0;
    struct sd_op **clones = n ? calloc(n, sizeof *clones) : NULL;
    bool ok = x && (n == 0 || clones);
    for (size_t i = 0; ok && i < n; i++)
        ok = (clones[i] = clone_op(x->graph->ops[i])) != NULL;
    sd_sched_unlock();
    if (!x) {
        free(clones);
        return CUDA_ERROR_INVALID_VALUE;
    }
    rc = ok ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
    for (size_t i = 0; i < n; i++) {
        if (!clones[i])
            continue;
        if (rc == CUDA_SUCCESS)
            rc = sd_submit(s, clones[i], NULL);
        else
            sd_op_release(clones[i]);
    }
    free(clones);
    return rc;
}

CUresult cuGraphLaunch(CUgraphExec hGraphExec, CUstream hStream)
{
    SD_ENTER(cuGraphLaunch);
    return launch(hGraphExec, hStream, false);
}

CUresult cuGraphLaunch_ptsz(CUgraphExec hGraphExec, CUstream hStream)
{
    SD_ENTER(cuGraphLaunch_ptsz);
    return launch(hGraphExec, hStream, true);
}

static void graph_maybe_free(struct sd_graph *g)
{
    if (g->destroyed && g->execs == 0)
        graph_free(g);
}

CUresult cuGraphExecDestroy(CUgraphExec hGraphExec)
{
    SD_ENTER(cuGraphExecDestroy);
    sd_sched_lock();
    struct sd_exec *x = sd_rmap_find(&execs, (uintptr_t)hGraphExec);
    bool ok = x == (struct sd_exec *)hGraphExec && x;
    if (ok) {
        sd_rmap_remove(&execs, (uintptr_t)x);
        x->graph->execs--;
        graph_maybe_free(x->graph);
        free(x);
    }
    sd_sched_unlock();
    return ok ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* Launches already queued keep their own copies of the work. */
CUresult cuGraphDestroy(CUgraph hGraph)
{
    SD_ENTER(cuGraphDestroy);
    sd_sched_lock();
    struct sd_graph *g = graph_lookup(hGraph);
    if (g) {
        sd_rmap_remove(&graphs, (uintptr_t)g);
        g->destroyed = true;
        graph_maybe_free(g);
    }
    sd_sched_unlock();
    return g ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
