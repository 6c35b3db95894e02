/* The stream engine: each stream owns a worker thread that runs its operations
 * in order, later than the call that queued them, so a missing wait shows up
 * as wrong data. Ordering across streams is expressed as dependencies on
 * earlier operations (event records, the legacy stream's implicit barriers).
 *
 * Hardware work queues. A context has CUDA_DEVICE_MAX_CONNECTIONS (default 8,
 * 1..32) in-order queues ("connections" from the host to the device, one pool
 * per context: CUDA programming guide, environment variables; MPS guide,
 * CUDA_DEVICE_MAX_CONNECTIONS). Streams are assigned to them round-robin as
 * they are created, so with more streams than queues streams share one.
 * Everything submitted to a queue is dispatched in submission order, whatever
 * its stream: the queue's head is dispatched once its stream's earlier work
 * has finished and its dependencies (event waits, the legacy stream's implicit
 * barriers) are met. An operation that blocks (a wait on a memory value, a
 * batch holding one, a host function or stream callback, which the device
 * runs as a wait for the host) holds the head until it completes. So, as on
 * the GPU, a blocked wait on stream A blocks every later operation of every
 * stream that shares A's queue ("false dependencies"; Megatron-LM and
 * Transformer Engine run with 1 connection, where everything shares one).
 * Copies and sets leave the queue as they start and run concurrently.
 *
 * Which queue: the real driver creates the legacy (NULL) stream with the
 * context, before any stream the program creates, so it takes queue 0 and the
 * round-robin starts at 1; the simulator creates it on first use but keeps
 * that assignment. Per-thread default streams are created on a thread's first
 * use and take the next queue in turn, like any created stream.
 *
 * One lock guards all queues and operation states; a single condition
 * variable announces every completed operation. Simple beats fast here. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "simdev_internal.h"

static pthread_mutex_t sched = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t progress = PTHREAD_COND_INITIALIZER;
static struct sd_stream *streams; /* every stream whose worker has not exited */
static unsigned live_workers;
static unsigned long long next_stream_id = 1;
static unsigned generation; /* bumped by simdev_shutdown: per-thread stream slots go stale */

static _Atomic unsigned long long copy_bytes_per_s; /* 0: copies take no extra time */
static pthread_once_t rate_once = PTHREAD_ONCE_INIT;

/* Each thread's default streams (one per context it used), cached per thread
 * and retired when the thread exits. Heap-allocated: the library's TLS block
 * is static (fault.c) and must stay small. */
struct per_thread_slot {
    struct sd_ctx *ctx;
    struct sd_stream *s;
    unsigned gen;
};
static __thread struct per_thread_slot *per_thread;
static __thread unsigned per_thread_n;
static pthread_key_t per_thread_key;
static pthread_once_t per_thread_once = PTHREAD_ONCE_INIT;

void sd_sched_lock(void)
{
    pthread_mutex_lock(&sched);
}

void sd_sched_unlock(void)
{
    pthread_mutex_unlock(&sched);
}

/* ---- operations ---- */

struct sd_op *sd_op_new(enum sd_op_kind kind)
{
    struct sd_op *op = calloc(1, sizeof *op);
    if (op) {
        op->kind = kind;
        op->refs = 1;
    }
    return op;
}

void sd_op_ref(struct sd_op *op)
{
    op->refs++;
}

static void drop_deps(struct sd_op *op)
{
    for (unsigned i = 0; i < op->ndeps; i++)
        sd_op_unref(op->deps[i]);
    op->ndeps = 0;
}

void sd_op_unref(struct sd_op *op)
{
    if (--op->refs > 0)
        return;
    drop_deps(op);
    free(op->deps);
    if (op->kind == SD_OP_BATCH)
        free(op->u.batch.items);
    free(op);
}

void sd_op_release(struct sd_op *op)
{
    pthread_mutex_lock(&sched);
    sd_op_unref(op);
    pthread_mutex_unlock(&sched);
}

bool sd_op_add_dep(struct sd_op *op, struct sd_op *dep)
{
    if (op->ndeps == op->capdeps) {
        unsigned cap = op->capdeps ? op->capdeps * 2 : 4;
        struct sd_op **deps = realloc(op->deps, cap * sizeof *deps);
        if (!deps)
            return false;
        op->deps = deps;
        op->capdeps = cap;
    }
    op->deps[op->ndeps++] = dep;
    sd_op_ref(dep);
    return true;
}

void sd_op_wait(struct sd_op *op)
{
    pthread_mutex_lock(&sched);
    while (!op->done)
        pthread_cond_wait(&progress, &sched);
    pthread_mutex_unlock(&sched);
}

static bool deps_done(const struct sd_op *op)
{
    for (unsigned i = 0; i < op->ndeps; i++)
        if (!op->deps[i]->done)
            return false;
    return true;
}

static bool pending(const struct sd_op *op)
{
    return op && !op->done;
}

/* ---- hardware queues (under the sched lock) ---- */

/* Operations the device executes as a wait at the head of the queue. */
static bool holds_queue(const struct sd_op *op)
{
    switch (op->kind) {
    case SD_OP_WAIT_VALUE:
    case SD_OP_HOSTFN:
    case SD_OP_CALLBACK:
        return true;
    case SD_OP_BATCH:
        for (unsigned i = 0; i < op->u.batch.count; i++)
            if (op->u.batch.items[i].kind == SD_OP_WAIT_VALUE)
                return true;
        return false;
    default:
        return false;
    }
}

static void hwq_push(struct sd_hwq *q, struct sd_op *op)
{
    op->qnext = NULL;
    if (q->tail)
        q->tail->qnext = op;
    else
        q->head = op;
    q->tail = op;
}

/* The head leaves the queue: the next operation (any stream's) may go. */
static void hwq_pop(struct sd_hwq *q, struct sd_op *op)
{
    q->head = op->qnext;
    if (!q->head)
        q->tail = NULL;
    op->qnext = NULL;
    pthread_cond_broadcast(&progress);
}

/* ---- running operations on a worker ---- */

static void copy_rate_init(void)
{
    sd_init();
    atomic_store(&copy_bytes_per_s, (unsigned long long)(sd_cfg.copy_gbps * 1e9));
}

struct exec_args {
    struct sd_op *op;
    CUresult status;
};

static void exec_op(void *arg)
{
    struct exec_args *a = arg;
    struct sd_op *op = a->op;
    switch (op->kind) {
    case SD_OP_COPY:
        memmove(op->u.copy.dst, op->u.copy.src, op->u.copy.n);
        break;
    case SD_OP_SET:
        if (op->u.set.elem == 1) {
            memset(op->u.set.dst, (int)op->u.set.value, op->u.set.count);
        } else if (op->u.set.elem == 2) {
            uint16_t *p = op->u.set.dst;
            for (size_t i = 0; i < op->u.set.count; i++)
                p[i] = (uint16_t)op->u.set.value;
        } else {
            uint32_t *p = op->u.set.dst;
            for (size_t i = 0; i < op->u.set.count; i++)
                p[i] = op->u.set.value;
        }
        break;
    case SD_OP_HOSTFN:
        op->u.hostfn.fn(op->u.hostfn.data);
        break;
    case SD_OP_CALLBACK:
        op->u.callback.fn(op->u.callback.handle, a->status, op->u.callback.data);
        break;
    default:
        break;
    }
}

const char *sd_op_name(enum sd_op_kind kind)
{
    switch (kind) {
    case SD_OP_COPY: return "copy";
    case SD_OP_SET: return "memset";
    case SD_OP_HOSTFN: return "host function";
    case SD_OP_CALLBACK: return "stream callback";
    case SD_OP_NOP: return "wait";
    case SD_OP_RECORD: return "event record";
    case SD_OP_FREE: return "stream-ordered free";
    case SD_OP_WAIT_VALUE: return "wait on a memory value";
    case SD_OP_WRITE_VALUE: return "memory value write";
    case SD_OP_BATCH: return "batch of memory operations";
    default: return "operation";
    }
}

static void trace_op(const struct sd_stream *s, const struct sd_op *op)
{
    switch (op->kind) {
    case SD_OP_COPY:
        sd_log("stream %llu: copy %p <- %p, %zu bytes", s->id, op->u.copy.dst, op->u.copy.src, op->u.copy.n);
        break;
    case SD_OP_SET:
        sd_log("stream %llu: memset %p, %zu x %u bytes", s->id, op->u.set.dst, op->u.set.count, op->u.set.elem);
        break;
    case SD_OP_HOSTFN:
        sd_log("stream %llu: host function %p(%p)", s->id, (void *)(uintptr_t)op->u.hostfn.fn, op->u.hostfn.data);
        break;
    case SD_OP_FREE:
        sd_log("stream %llu: free %#lx", s->id, (unsigned long)op->u.free.block->base);
        break;
    case SD_OP_WAIT_VALUE:
    case SD_OP_WRITE_VALUE:
        sd_log("stream %llu: %s %p, value %#llx, flags %#x", s->id, sd_op_name(op->kind), op->u.value.addr,
               (unsigned long long)op->u.value.value, op->u.value.flags);
        break;
    default:
        sd_log("stream %llu: %s after %u dependencies", s->id, sd_op_name(op->kind), op->ndeps);
        break;
    }
}

/* The device's access to what a copy or set touches (see sd_device_may_touch). */
static bool access_ok(const struct sd_stream *s, const struct sd_op *op, const void **where)
{
    int dev = s->ctx->dev;
    if (op->kind == SD_OP_COPY) {
        int sdev = op->u.copy.src_dev >= 0 ? op->u.copy.src_dev : dev;
        int ddev = op->u.copy.dst_dev >= 0 ? op->u.copy.dst_dev : dev;
        return sd_device_may_touch(sdev, op->u.copy.src, op->u.copy.n, false, where) &&
               sd_device_may_touch(ddev, op->u.copy.dst, op->u.copy.n, true, where);
    }
    if (op->kind == SD_OP_SET)
        return sd_device_may_touch(dev, op->u.set.dst, op->u.set.count * op->u.set.elem, true, where);
    return true;
}

static void run_op(struct sd_stream *s, struct sd_op *op)
{
    if (sd_cfg.debug >= 2)
        trace_op(s, op);
    unsigned delay = atomic_load(&s->delay_us);
    if (delay && op->kind != SD_OP_NOP)
        sd_sleep_ns(delay * 1000ull);

    CUresult sticky = (CUresult)atomic_load(&s->ctx->sticky);
    switch (op->kind) {
    case SD_OP_FREE:
        sd_pool_free_done(op->u.free.block);
        return;
    case SD_OP_WAIT_VALUE:
    case SD_OP_WRITE_VALUE:
        if (!sticky)
            sd_memop_run(s, op);
        return;
    case SD_OP_BATCH:
        for (unsigned i = 0; i < op->u.batch.count && !atomic_load(&s->ctx->sticky); i++)
            sd_memop_run(s, &op->u.batch.items[i]);
        return;
    case SD_OP_COPY:
    case SD_OP_SET:
    case SD_OP_HOSTFN:
        if (sticky)
            return; /* a faulted context runs no more work */
        if (op->kind == SD_OP_COPY) /* the link: one channel per direction (link.c) */
            sd_link_transfer(op->u.copy.dst, op->u.copy.src, op->u.copy.n, atomic_load(&copy_bytes_per_s));
        if (op->kind != SD_OP_HOSTFN) {
            const void *where = NULL;
            if (!access_ok(s, op, &where)) {
                sd_fault_record(s->ctx, (void *)where, sd_op_name(op->kind), s->id);
                return;
            }
        }
        /* fall through */
    case SD_OP_CALLBACK: {
        struct exec_args a = {op, sticky};
        void *addr = NULL;
        if (!sd_guarded(exec_op, &a, &addr))
            sd_fault_record(s->ctx, addr, sd_op_name(op->kind), s->id);
        return;
    }
    default:
        return;
    }
}

static void *worker_main(void *arg)
{
    struct sd_stream *s = arg;
    pthread_mutex_lock(&sched);
    for (;;) {
        while (!s->head && !s->dying)
            pthread_cond_wait(&s->work, &sched);
        struct sd_op *op = s->head;
        if (!op)
            break; /* dying and drained */
        /* Dispatched from the head of the hardware queue only (see the top). */
        while (s->hwq->head != op || !deps_done(op))
            pthread_cond_wait(&progress, &sched);
        bool holds = holds_queue(op);
        if (!holds)
            hwq_pop(s->hwq, op);
        pthread_mutex_unlock(&sched);

        run_op(s, op);

        pthread_mutex_lock(&sched);
        if (holds)
            hwq_pop(s->hwq, op);
        s->head = op->next;
        if (!s->head)
            s->tail = NULL;
        op->done_ns = sd_now_ns();
        op->done = true;
        drop_deps(op);
        sd_op_unref(op); /* the queue's reference */
        pthread_cond_broadcast(&progress);
    }

    if (s->prev)
        s->prev->next = s->next;
    else
        streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    if (s->last)
        sd_op_unref(s->last);
    live_workers--;
    pthread_cond_broadcast(&progress);
    pthread_mutex_unlock(&sched);

    sd_log("stream %llu finished", s->id);
    pthread_cond_destroy(&s->work);
    free(s);
    return NULL;
}

/* Starts a stream and its worker; under the sched lock. */
static CUresult stream_start(struct sd_ctx *ctx, enum sd_stream_kind kind, unsigned flags, int priority,
                             struct sd_stream **out)
{
    pthread_once(&rate_once, copy_rate_init);
    struct sd_stream *s = calloc(1, sizeof *s);
    if (!s)
        return CUDA_ERROR_OUT_OF_MEMORY;
    s->kind = kind;
    s->ctx = ctx;
    s->flags = flags;
    s->priority = priority;
    if (!ctx->hwq) {
        ctx->hwq = calloc(sd_cfg.max_connections, sizeof *ctx->hwq);
        if (!ctx->hwq) {
            free(s);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        for (unsigned i = 0; i < sd_cfg.max_connections; i++)
            ctx->hwq[i].index = i;
        ctx->hwq_next = 1 % sd_cfg.max_connections; /* queue 0 is the legacy stream's */
    }
    if (kind == SD_STREAM_LEGACY) {
        s->hwq = &ctx->hwq[0];
    } else {
        s->hwq = &ctx->hwq[ctx->hwq_next];
        ctx->hwq_next = (ctx->hwq_next + 1) % sd_cfg.max_connections;
    }
    s->id = next_stream_id++;
    atomic_store(&s->delay_us, sd_cfg.stream_delay_us);
    pthread_cond_init(&s->work, NULL);

    /* Workers take no asynchronous signals meant for the program's threads;
     * they inherit this mask from the creating thread. */
    sigset_t all, old;
    sigfillset(&all);
    sigdelset(&all, SIGSEGV);
    sigdelset(&all, SIGBUS);
    sigdelset(&all, SIGILL);
    sigdelset(&all, SIGFPE);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t tid;
    int err = pthread_create(&tid, &attr, worker_main, s);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        pthread_cond_destroy(&s->work);
        free(s);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }

    s->next = streams;
    if (streams)
        streams->prev = s;
    streams = s;
    live_workers++;
    *out = s;
    sd_log("stream %llu started (%s, flags %#x, context %llu, hardware queue %u)", s->id,
           kind == SD_STREAM_LEGACY ? "legacy" : kind == SD_STREAM_PER_THREAD ? "per-thread" : "user", flags,
           ctx->id, s->hwq->index);
    return CUDA_SUCCESS;
}

/* The worker finishes what is queued, then exits and frees the stream. */
static void retire(struct sd_stream *s)
{
    if (s->dying)
        return;
    s->dying = true;
    if (s->kind == SD_STREAM_LEGACY && s->ctx->legacy == s)
        s->ctx->legacy = NULL;
    pthread_cond_signal(&s->work);
}

/* ---- resolving stream handles ---- */

static void per_thread_exit(void *slots)
{
    pthread_mutex_lock(&sched);
    for (unsigned i = 0; i < per_thread_n; i++)
        if (per_thread[i].gen == generation)
            retire(per_thread[i].s);
    pthread_mutex_unlock(&sched);
    free(slots);
    per_thread = NULL;
    per_thread_n = 0;
}

static void per_thread_key_init(void)
{
    pthread_key_create(&per_thread_key, per_thread_exit);
}

static CUresult per_thread_stream(struct sd_ctx *ctx, struct sd_stream **out)
{
    pthread_once(&per_thread_once, per_thread_key_init);
    pthread_mutex_lock(&sched);
    for (unsigned i = 0; i < per_thread_n; i++)
        if (per_thread[i].gen == generation && per_thread[i].ctx == ctx) {
            *out = per_thread[i].s;
            pthread_mutex_unlock(&sched);
            return CUDA_SUCCESS;
        }
    unsigned n = 0;
    for (unsigned i = 0; i < per_thread_n; i++)
        if (per_thread[i].gen == generation) /* others were retired by simdev_shutdown */
            per_thread[n++] = per_thread[i];
    per_thread_n = n;
    struct per_thread_slot *slots = realloc(per_thread, (n + 1) * sizeof *slots);
    CUresult rc = slots ? stream_start(ctx, SD_STREAM_PER_THREAD, 0, 0, out) : CUDA_ERROR_OUT_OF_MEMORY;
    if (slots) {
        per_thread = slots;
        pthread_setspecific(per_thread_key, slots); /* the exit hook retires them */
    }
    if (rc == CUDA_SUCCESS)
        per_thread[per_thread_n++] = (struct per_thread_slot){ctx, *out, generation};
    pthread_mutex_unlock(&sched);
    return rc;
}

static CUresult legacy_stream(struct sd_ctx *ctx, struct sd_stream **out)
{
    CUresult rc = CUDA_SUCCESS;
    pthread_mutex_lock(&sched);
    if (!ctx->legacy)
        rc = stream_start(ctx, SD_STREAM_LEGACY, 0, 0, &ctx->legacy);
    *out = ctx->legacy;
    pthread_mutex_unlock(&sched);
    return rc;
}

static struct sd_stream *find_user_stream(CUstream handle)
{
    for (struct sd_stream *s = streams; s; s = s->next)
        if (s == (struct sd_stream *)handle)
            return s->kind == SD_STREAM_USER && !s->dying ? s : NULL;
    return NULL;
}

CUresult sd_stream_get(CUstream handle, bool per_thread_default, struct sd_stream **out)
{
    sd_init();
    if (!handle)
        handle = per_thread_default ? CU_STREAM_PER_THREAD : CU_STREAM_LEGACY;
    if (handle == CU_STREAM_LEGACY || handle == CU_STREAM_PER_THREAD) {
        /* The default streams are the current context's: none, no stream. */
        struct sd_ctx *ctx = sd_ctx_current();
        if (!ctx)
            return CUDA_ERROR_INVALID_CONTEXT;
        return handle == CU_STREAM_LEGACY ? legacy_stream(ctx, out) : per_thread_stream(ctx, out);
    }
    pthread_mutex_lock(&sched);
    struct sd_stream *s = find_user_stream(handle);
    pthread_mutex_unlock(&sched);
    if (!s)
        return CUDA_ERROR_INVALID_HANDLE;
    *out = s;
    return CUDA_SUCCESS;
}

/* ---- submitting and waiting ---- */

static bool blocking(const struct sd_stream *s)
{
    return !(s->flags & CU_STREAM_NON_BLOCKING);
}

/* The legacy stream's implicit synchronization: its work waits for all earlier
 * work of blocking streams of its context, and their work waits for its. */
static bool add_implicit_deps(struct sd_stream *s, struct sd_op *op)
{
    if (s->kind == SD_STREAM_LEGACY) {
        for (struct sd_stream *t = streams; t; t = t->next)
            if (t != s && t->ctx == s->ctx && blocking(t) && pending(t->last))
                if (!sd_op_add_dep(op, t->last))
                    return false;
    } else if (blocking(s)) {
        struct sd_stream *legacy = s->ctx->legacy;
        if (legacy && pending(legacy->last))
            return sd_op_add_dep(op, legacy->last);
    }
    return true;
}

CUresult sd_submit(struct sd_stream *s, struct sd_op *op, struct sd_op **keep)
{
    pthread_mutex_lock(&sched);
    if (s->cap && !s->dying) {
        /* Capturing: recorded into the graph, not run (see capture.c). */
        if (keep)
            sd_op_ref(op);
        CUresult rc = sd_capture_record(s->cap, s, op);
        if (keep)
            *keep = rc == CUDA_SUCCESS ? op : NULL;
        if (keep && rc != CUDA_SUCCESS)
            sd_op_unref(op);
        pthread_mutex_unlock(&sched);
        return rc;
    }
    if (s->dying || !add_implicit_deps(s, op)) {
        CUresult rc = s->dying ? CUDA_ERROR_INVALID_HANDLE : CUDA_ERROR_OUT_OF_MEMORY;
        sd_op_unref(op);
        pthread_mutex_unlock(&sched);
        return rc;
    }
    if (s->kind == SD_STREAM_LEGACY) {
        CUresult rc = sd_capture_legacy_check(s);
        if (rc != CUDA_SUCCESS) {
            sd_op_unref(op);
            pthread_mutex_unlock(&sched);
            return rc;
        }
    }
    op->next = NULL;
    if (s->tail)
        s->tail->next = op;
    else
        s->head = op;
    s->tail = op;
    hwq_push(s->hwq, op);
    if (s->last)
        sd_op_unref(s->last);
    s->last = op;
    sd_op_ref(op); /* held as s->last */
    if (keep) {
        sd_op_ref(op);
        *keep = op;
    }
    pthread_cond_signal(&s->work);
    pthread_mutex_unlock(&sched);
    return CUDA_SUCCESS;
}

CUresult sd_sticky(struct sd_ctx *ctx)
{
    return (CUresult)atomic_load(&ctx->sticky);
}

CUresult sd_submit_wait(struct sd_stream *s, struct sd_op *op)
{
    struct sd_op *keep;
    CUresult rc = sd_submit(s, op, &keep);
    if (rc != CUDA_SUCCESS)
        return rc;
    sd_op_wait(keep);
    sd_op_release(keep);
    return sd_sticky(s->ctx);
}

/* Waits for the work queued so far on every stream that `match` selects. */
static void wait_streams(bool (*match)(const struct sd_stream *, const void *), const void *arg)
{
    pthread_mutex_lock(&sched);
    size_t n = 0;
    for (struct sd_stream *s = streams; s; s = s->next)
        n += match(s, arg) && pending(s->last);
    struct sd_op **ops = n ? malloc(n * sizeof *ops) : NULL;
    if (ops) {
        size_t i = 0;
        for (struct sd_stream *s = streams; s && i < n; s = s->next)
            if (match(s, arg) && pending(s->last)) {
                ops[i++] = s->last;
                sd_op_ref(s->last);
            }
        for (size_t j = 0; j < i; j++) {
            while (!ops[j]->done)
                pthread_cond_wait(&progress, &sched);
            sd_op_unref(ops[j]);
        }
        free(ops);
    } else if (n) {
        /* Out of memory for the snapshot: wait until everything matching is idle. */
        for (struct sd_stream *s = streams; s;) {
            if (match(s, arg) && pending(s->last)) {
                pthread_cond_wait(&progress, &sched);
                s = streams;
            } else {
                s = s->next;
            }
        }
    }
    pthread_mutex_unlock(&sched);
}

static bool in_ctx(const struct sd_stream *s, const void *ctx)
{
    return s->ctx == ctx;
}

static bool on_device(const struct sd_stream *s, const void *dev)
{
    return s->ctx->dev == *(const int *)dev;
}

CUresult sd_ctx_sync(struct sd_ctx *ctx)
{
    wait_streams(in_ctx, ctx);
    return sd_sticky(ctx);
}

void sd_device_sync(int dev)
{
    wait_streams(on_device, &dev);
}

void sd_ctx_retire_streams(struct sd_ctx *ctx)
{
    /* Other threads' default streams stay with them until they exit. */
    pthread_mutex_lock(&sched);
    for (struct sd_stream *s = streams; s; s = s->next)
        if (s->ctx == ctx && s->kind != SD_STREAM_PER_THREAD)
            retire(s);
    pthread_mutex_unlock(&sched);
}

void sd_streams_leave_capture(struct sd_capture *cap)
{
    for (struct sd_stream *s = streams; s; s = s->next)
        if (s->cap == cap) {
            s->cap = NULL;
            s->cap_last = s->cap_joined = 0;
        }
}

bool sd_capture_unjoined(struct sd_capture *cap, const struct sd_stream *origin)
{
    for (struct sd_stream *s = streams; s; s = s->next)
        if (s->cap == cap && s != origin && s->cap_last > s->cap_joined)
            return true;
    return false;
}

/* The legacy stream synchronizes implicitly with every blocking stream of
 * its context; with one of them capturing, that dependency cannot be
 * captured: "CUDA_ERROR_STREAM_CAPTURE_IMPLICIT: ... a disallowed implicit
 * dependency on a current capture sequence from cudaStreamLegacy" (cuda.h),
 * and the capture is invalidated. */
CUresult sd_capture_legacy_check(struct sd_stream *legacy)
{
    CUresult rc = CUDA_SUCCESS;
    for (struct sd_stream *t = streams; t; t = t->next)
        if (t->cap && t->ctx == legacy->ctx && blocking(t)) {
            sd_capture_invalidate(t->cap);
            rc = CUDA_ERROR_STREAM_CAPTURE_IMPLICIT;
        }
    return rc;
}

bool sd_capture_legacy_blocked(struct sd_stream *legacy)
{
    for (struct sd_stream *t = streams; t; t = t->next)
        if (t->cap && t->ctx == legacy->ctx && blocking(t))
            return true;
    return false;
}

struct sd_capture *sd_stream_capture(struct sd_stream *s)
{
    pthread_mutex_lock(&sched);
    struct sd_capture *cap = s->cap;
    pthread_mutex_unlock(&sched);
    return cap;
}

/* Synchronizing or querying a capturing stream is not permitted: the capture
 * is invalidated (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED). */
static CUresult not_capturing(struct sd_stream *s)
{
    pthread_mutex_lock(&sched);
    struct sd_capture *cap = s->cap;
    if (cap)
        sd_capture_invalidate(cap);
    pthread_mutex_unlock(&sched);
    return cap ? CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED : CUDA_SUCCESS;
}

/* ---- stream entry points ---- */

static CUresult stream_create(CUstream *phStream, unsigned flags, int priority)
{
    if (!phStream || (flags & ~(unsigned)CU_STREAM_NON_BLOCKING))
        return CUDA_ERROR_INVALID_VALUE;
    if (priority > SD_PRIORITY_LEAST)
        priority = SD_PRIORITY_LEAST;
    if (priority < SD_PRIORITY_GREATEST)
        priority = SD_PRIORITY_GREATEST;
    struct sd_stream *s;
    struct sd_ctx *ctx = sd_ctx_current();
    if (!ctx)
        return CUDA_ERROR_INVALID_CONTEXT;
    pthread_mutex_lock(&sched);
    CUresult rc = stream_start(ctx, SD_STREAM_USER, flags, priority, &s);
    pthread_mutex_unlock(&sched);
    if (rc == CUDA_SUCCESS)
        *phStream = (CUstream)s;
    return rc;
}

CUresult cuStreamCreate(CUstream *phStream, unsigned int Flags)
{
    SD_ENTER(cuStreamCreate);
    return stream_create(phStream, Flags, 0);
}

CUresult cuStreamCreateWithPriority(CUstream *phStream, unsigned int flags, int priority)
{
    SD_ENTER(cuStreamCreateWithPriority);
    return stream_create(phStream, flags, priority);
}

static CUresult stream_destroy(CUstream handle)
{
    pthread_mutex_lock(&sched);
    struct sd_stream *s = handle ? find_user_stream(handle) : NULL;
    if (s)
        retire(s);
    pthread_mutex_unlock(&sched);
    return s ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult cuStreamDestroy(CUstream hStream)
{
    SD_ENTER(cuStreamDestroy);
    return stream_destroy(hStream);
}

CUresult cuStreamDestroy_v2(CUstream hStream)
{
    SD_ENTER(cuStreamDestroy_v2);
    return stream_destroy(hStream);
}

static CUresult stream_sync(CUstream handle, bool per_thread_default)
{
    struct sd_stream *s;
    CUresult rc = sd_stream_get(handle, per_thread_default, &s);
    if (rc == CUDA_SUCCESS)
        rc = not_capturing(s);
    if (rc == CUDA_SUCCESS)
        rc = sd_capture_unsafe_call();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (s->kind == SD_STREAM_LEGACY) {
        /* A barrier op on the legacy stream also covers the blocking streams' work. */
        struct sd_op *op = sd_op_new(SD_OP_NOP);
        return op ? sd_submit_wait(s, op) : CUDA_ERROR_OUT_OF_MEMORY;
    }
    pthread_mutex_lock(&sched);
    struct sd_op *last = pending(s->last) ? s->last : NULL;
    if (last)
        sd_op_ref(last);
    while (last && !last->done)
        pthread_cond_wait(&progress, &sched);
    if (last)
        sd_op_unref(last);
    pthread_mutex_unlock(&sched);
    return sd_sticky(s->ctx);
}

CUresult cuStreamSynchronize(CUstream hStream)
{
    SD_ENTER(cuStreamSynchronize);
    return stream_sync(hStream, false);
}

CUresult cuStreamSynchronize_ptsz(CUstream hStream)
{
    SD_ENTER(cuStreamSynchronize_ptsz);
    return stream_sync(hStream, true);
}

static CUresult stream_query(CUstream handle, bool per_thread_default)
{
    struct sd_stream *s;
    CUresult rc = sd_stream_get(handle, per_thread_default, &s);
    if (rc == CUDA_SUCCESS)
        rc = not_capturing(s);
    if (rc == CUDA_SUCCESS)
        rc = sd_capture_unsafe_call();
    if (rc != CUDA_SUCCESS)
        return rc;
    rc = sd_sticky(s->ctx);
    if (rc != CUDA_SUCCESS)
        return rc;
    pthread_mutex_lock(&sched);
    bool busy = pending(s->last);
    if (s->kind == SD_STREAM_LEGACY)
        for (struct sd_stream *t = streams; t && !busy; t = t->next)
            busy = t->ctx == s->ctx && blocking(t) && pending(t->last);
    pthread_mutex_unlock(&sched);
    return busy ? CUDA_ERROR_NOT_READY : CUDA_SUCCESS;
}

CUresult cuStreamQuery(CUstream hStream)
{
    SD_ENTER(cuStreamQuery);
    return stream_query(hStream, false);
}

CUresult cuStreamQuery_ptsz(CUstream hStream)
{
    SD_ENTER(cuStreamQuery_ptsz);
    return stream_query(hStream, true);
}

#define STREAM_GETTER(fn, per_thread_default, T, out, expr)          \
    CUresult fn(CUstream hStream, T *out)                            \
    {                                                                \
        SD_ENTER(fn);                                                \
        struct sd_stream *s;                                         \
        if (!out)                                                    \
            return CUDA_ERROR_INVALID_VALUE;                         \
        CUresult rc = sd_stream_get(hStream, per_thread_default, &s); \
        if (rc == CUDA_SUCCESS)                                      \
            *out = (expr);                                           \
        return rc;                                                   \
    }

STREAM_GETTER(cuStreamGetFlags, false, unsigned int, flags, s->flags)
STREAM_GETTER(cuStreamGetFlags_ptsz, true, unsigned int, flags, s->flags)
STREAM_GETTER(cuStreamGetPriority, false, int, priority, s->priority)
STREAM_GETTER(cuStreamGetPriority_ptsz, true, int, priority, s->priority)
STREAM_GETTER(cuStreamGetCtx, false, CUcontext, pctx, (CUcontext)s->ctx)
STREAM_GETTER(cuStreamGetCtx_ptsz, true, CUcontext, pctx, (CUcontext)s->ctx)
STREAM_GETTER(cuStreamGetId, false, unsigned long long, streamId, s->id)
STREAM_GETTER(cuStreamGetId_ptsz, true, unsigned long long, streamId, s->id)
STREAM_GETTER(cuStreamGetDevice, false, CUdevice, device, s->ctx->dev)
STREAM_GETTER(cuStreamGetDevice_ptsz, true, CUdevice, device, s->ctx->dev)

static CUresult stream_get_ctx_v2(CUstream handle, bool per_thread_default, CUcontext *pCtx, CUgreenCtx *pGreenCtx)
{
    struct sd_stream *s;
    if (!pCtx && !pGreenCtx)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = sd_stream_get(handle, per_thread_default, &s);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (pCtx)
        *pCtx = (CUcontext)s->ctx;
    if (pGreenCtx)
        *pGreenCtx = NULL;
    return CUDA_SUCCESS;
}

CUresult cuStreamGetCtx_v2(CUstream hStream, CUcontext *pCtx, CUgreenCtx *pGreenCtx)
{
    SD_ENTER(cuStreamGetCtx_v2);
    return stream_get_ctx_v2(hStream, false, pCtx, pGreenCtx);
}

CUresult cuStreamGetCtx_v2_ptsz(CUstream hStream, CUcontext *pCtx, CUgreenCtx *pGreenCtx)
{
    SD_ENTER(cuStreamGetCtx_v2_ptsz);
    return stream_get_ctx_v2(hStream, true, pCtx, pGreenCtx);
}

/* Resolves the stream and refuses work once its context has faulted. */
static CUresult stream_for_work(CUstream handle, bool per_thread_default, struct sd_stream **s)
{
    CUresult rc = sd_stream_get(handle, per_thread_default, s);
    return rc != CUDA_SUCCESS ? rc : sd_sticky((*s)->ctx);
}

static CUresult host_func(CUstream handle, bool per_thread_default, CUhostFn fn, void *data)
{
    if (!fn)
        return CUDA_ERROR_INVALID_VALUE;
    struct sd_stream *s;
    CUresult rc = stream_for_work(handle, per_thread_default, &s);
    if (rc != CUDA_SUCCESS)
        return rc;
    struct sd_op *op = sd_op_new(SD_OP_HOSTFN);
    if (!op)
        return CUDA_ERROR_OUT_OF_MEMORY;
    op->u.hostfn.fn = fn;
    op->u.hostfn.data = data;
    return sd_submit(s, op, NULL);
}

CUresult cuLaunchHostFunc(CUstream hStream, CUhostFn fn, void *userData)
{
    SD_ENTER(cuLaunchHostFunc);
    return host_func(hStream, false, fn, userData);
}

CUresult cuLaunchHostFunc_ptsz(CUstream hStream, CUhostFn fn, void *userData)
{
    SD_ENTER(cuLaunchHostFunc_ptsz);
    return host_func(hStream, true, fn, userData);
}

static CUresult add_callback(CUstream handle, bool per_thread_default, CUstreamCallback fn, void *data,
                             unsigned flags)
{
    if (!fn || flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    struct sd_stream *s;
    CUresult rc = sd_stream_get(handle, per_thread_default, &s);
    if (rc != CUDA_SUCCESS)
        return rc;
    struct sd_op *op = sd_op_new(SD_OP_CALLBACK);
    if (!op)
        return CUDA_ERROR_OUT_OF_MEMORY;
    op->u.callback.fn = fn;
    op->u.callback.handle = handle;
    op->u.callback.data = data;
    return sd_submit(s, op, NULL);
}

CUresult cuStreamAddCallback(CUstream hStream, CUstreamCallback callback, void *userData, unsigned int flags)
{
    SD_ENTER(cuStreamAddCallback);
    return add_callback(hStream, false, callback, userData, flags);
}

CUresult cuStreamAddCallback_ptsz(CUstream hStream, CUstreamCallback callback, void *userData, unsigned int flags)
{
    SD_ENTER(cuStreamAddCallback_ptsz);
    return add_callback(hStream, true, callback, userData, flags);
}

/* ---- test control ---- */

int simdev_stream_set_delay_us(simdev_stream_t stream, unsigned us)
{
    struct sd_stream *s;
    if (sd_stream_get((CUstream)stream, false, &s) != CUDA_SUCCESS)
        return -1;
    atomic_store(&s->delay_us, us);
    return 0;
}

void simdev_set_copy_gbps(double gbps)
{
    pthread_once(&rate_once, copy_rate_init);
    atomic_store(&copy_bytes_per_s, gbps > 0 ? (unsigned long long)(gbps * 1e9) : 0);
}

void simdev_shutdown(void)
{
    pthread_mutex_lock(&sched);
    generation++;
    for (struct sd_stream *s = streams; s; s = s->next)
        retire(s);
    atomic_store(&sd_abandon_waits, true); /* a word nobody will write must not hang the shutdown */
    while (live_workers > 0)
        pthread_cond_wait(&progress, &sched);
    atomic_store(&sd_abandon_waits, false);
    pthread_mutex_unlock(&sched);
}
