#define _GNU_SOURCE /* pthread_timedjoin_np */
/* The offload engine (CKPT_MODE=host).
 *
 * Offload: copy each survivor to a pooled host block on the device's copy
 * stream, ordered after the program's streams (fence events); once the copy
 * is complete, the engine thread swaps the survivor's VA onto the host block
 * and releases its device memory. Restore: copy host -> fresh device memory
 * mapped at a staging VA, then swap the survivor's VA onto it. Copy first,
 * swap after: at every instant the VA is mapped onto memory holding the data,
 * so a reader that never asked for a restore still reads correct bytes. */
#include <errno.h>
#include <stdlib.h>
#include <time.h>

#include "internal.h"

/* ---- per-device resources and the program's streams --------------------- */

#define MAXDEV 64
static struct devres {
  CUcontext ctx;
  CUstream copy;
} devs[MAXDEV];

static CUresult devres_get(int device, CUcontext ctx, struct devres **out) {
  struct devres *d = &devs[device];
  if (!d->copy) {
    /* Non-blocking: the copy stream must not serialise with the legacy stream. */
    CU_CHECK(DRV(cuStreamCreate, &d->copy, CU_STREAM_NON_BLOCKING));
    d->ctx = ctx;
  }
  *out = d;
  return CUDA_SUCCESS;
}

/* ---- jobs for the engine thread ------------------------------------------ */

enum { JOB_TO_HOST, JOB_TO_DEVICE };
struct job {
  int kind, device;
  uint64_t bytes;
  struct ckpt_gate gate;
  bool gated;               /* gate closed (by the engine or a restore) */
  bool gate_failed;         /* a stream could not be held: the job must not swap */
  bool restore_gate;        /* closed by a restore: a consumer waits at it */
  struct job *gate_owner;   /* the job whose gate covers this one, or NULL */
  CUcontext ctx;
  CUevent start, done;
  struct region *top;
  int n;
  struct job *next;
  struct talloc *items[];
};

static struct job *queue_head, *queue_tail;
static pthread_cond_t queue_cv = PTHREAD_COND_INITIALIZER;
static pthread_t engine;
static bool engine_started, engine_stop;

static void apply(struct job *j, CUresult copy_rc);
static void wait_settled(struct region *top, bool count_stall);

static void job_done(struct job *j) {
  j->top->jobs--;
  ckpt_region_retire_maybe(j->top);
  DRV(cuEventDestroy_v2, j->start);
  DRV(cuEventDestroy_v2, j->done);
  free(j);
}

/* Whether applying the job would swap anything (offloads of cancelled or
 * freed items are only rolled back: no gate needed for them; restores swap
 * every item, see to_device). Must agree with to_host/to_device. */
static bool job_swaps(const struct job *j) {
  if (j->kind == JOB_TO_DEVICE) return j->n > 0;
  for (int i = 0; i < j->n; i++)
    if (!j->items[i]->cancel && !j->items[i]->freed) return true;
  return false;
}

/* Holds the program's streams of j's device at a gate (lock held). */
static void gate_job(struct job *j) {
  CUcontext saved = NULL;
  DRV(cuCtxGetCurrent, &saved);
  if (saved != j->ctx) DRV(cuCtxSetCurrent, j->ctx);
  int g = ckpt_gate_close(j->device, &j->gate);
  j->gated = g > 0;
  j->gate_failed = g < 0;
  j->gate_owner = j;
  if (saved != j->ctx) DRV(cuCtxSetCurrent, saved);
}

/* The job of `device` holding the gate closed first (a restore's), or NULL.
 * Gates on one stream are reached in the order they were closed, which is not
 * queue order (prefetch(1), restore(2), restore(1)): go by the sequence. */
static struct job *first_gated(int device) {
  struct job *first = NULL;
  for (struct job *q = queue_head; q; q = q->next)
    if (q->device == device && q->gate_owner == q && q->gated &&
        (!first || (int32_t)(q->gate.seq - first->gate.seq) < 0))
      first = q;
  return first;
}

static void queue_remove(struct job *j) {
  struct job **pp = &queue_head, *prev = NULL;
  while (*pp && *pp != j) prev = *pp, pp = &(*pp)->next;
  if (!*pp) return;
  *pp = j->next;
  if (queue_tail == j) queue_tail = prev;
}

/* The engine. Gates on one stream open in the order they were closed, so the
 * engine never closes a gate behind one that is still closed: when a restore
 * has closed one, everything of that device queued before it is swapped under
 * that gate. Otherwise the oldest job's copies are awaited and it, with the
 * later jobs whose copies are complete, is swapped under a gate of its own.
 * Jobs stay queued until done so that a restore can find them. Lock held. */
#define BATCH 64
static void engine_round(void) {
  int device = queue_head->device;
  struct job *target = NULL, *g;
  CUresult rc_target = CUDA_SUCCESS;
  do { /* until no restore closed a gate while we waited */
    g = first_gated(device);
    target = g ? g : queue_head;
    UNLOCK();
    DRV(cuCtxSetCurrent, target->ctx);
    rc_target = DRV(cuEventSynchronize, target->done);
    /* An error here says nothing about the copies: wait for the copy stream
     * before anything rolls back (and frees) memory they may still touch. */
    if (rc_target != CUDA_SUCCESS) {
      CU_ERROR_ONCE("waiting for a copy's completion event failed (%s): waiting for libckpt's copy stream instead",
                    ckpt_cu_name(rc_target));
      if (DRV(cuStreamSynchronize, devs[target->device].copy) == CUDA_SUCCESS) rc_target = CUDA_SUCCESS;
    }
    LOCK();
  } while (first_gated(device) != g && first_gated(device) != NULL && !g);
  struct job *batch[BATCH];
  CUresult rc[BATCH];
  int n = 0;
  bool past_target = false;
  for (struct job *q = queue_head; q && n < BATCH; q = q->next) {
    if (q->device != device) continue;
    if (past_target && (q->gate_owner || ckpt_event_query(q->done) != CUDA_SUCCESS)) break;
    /* Jobs before the target completed their copies before it (one copy stream). */
    rc[n] = q == target ? rc_target : ckpt_event_query(q->done);
    batch[n++] = q;
    if (q == target) past_target = true;
  }
  bool swaps = false;
  for (int i = 0; i < n; i++) swaps |= rc[i] == CUDA_SUCCESS && job_swaps(batch[i]);
  if (!target->gate_owner && swaps) gate_job(target);
  if (target->gate_failed && swaps) {
    /* Roll the batch back (its copies are complete): offloads keep their
     * data on the device, restores leave it host-backed (retried later). */
    CKPT_WARN_ONCE("a stream could not be held at libckpt's gate: swaps are skipped (offloaded data stays "
                   "on the device, restored data host-backed) until it can");
    for (int i = 0; i < n; i++)
      if (rc[i] == CUDA_SUCCESS) rc[i] = CUDA_ERROR_NOT_READY;
  }
  /* Jobs queued before the target may hold gates closed after its: they are
   * swapped now, under the target's gate, and their gates opened with it. */
  struct job *also_open[BATCH];
  int nopen = 0;
  for (int i = 0; i < n; i++) {
    if (batch[i] != target && batch[i]->gate_owner == batch[i] && batch[i]->gated) also_open[nopen++] = batch[i];
    batch[i]->gate_owner = target; /* a restore must not gate them again */
  }
  double stall_from = 0;
  if (target->gated) {
    bool early = ckpt_gate_reached(&target->gate);
    stall_from = ckpt_now();
    if (!early) {
      UNLOCK();
      ckpt_gate_wait(&target->gate);
      LOCK();
      stall_from = ckpt_now();
    }
  }
  for (int i = 0; i < n; i++) {
    struct job *b = batch[i];
    float ms = 0;
    if (rc[i] != CUDA_SUCCESS || DRV(cuEventElapsedTime_v2, &ms, b->start, b->done) != CUDA_SUCCESS) ms = 0;
    ckpt_g.stats.copy_seconds_total += ms / 1000.0;
    if (b->top->ns) b->top->ns->copy_seconds += ms / 1000.0;
    apply(b, rc[i]);
    ckpt_trace(b->kind == JOB_TO_HOST ? CKPT_T_OFFLOAD_END : CKPT_T_RESTORE_END, b->top->id, NULL, b->bytes, 0,
               (uint64_t)(ms * 1e6));
  }
  for (int i = 0; i < nopen; i++) ckpt_gate_open(&also_open[i]->gate);
  if (target->gated) {
    ckpt_gate_open(&target->gate);
    /* A consumer held at a restore's gate waited from (at the latest) the
     * moment both the copies and the gate were reached until now. */
    if (target->restore_gate) {
      double dt = ckpt_now() - stall_from;
      ckpt_g.stats.stall_seconds_total += dt;
      if (target->top->ns) target->top->ns->stall_seconds += dt;
      ckpt_trace(CKPT_T_STALL, target->top->id, NULL, 0, 0, (uint64_t)(dt * 1e9));
    }
  }
  for (int i = 0; i < n; i++) {
    queue_remove(batch[i]);
    job_done(batch[i]);
  }
  ckpt_reap();
  ckpt_publish();
  pthread_cond_broadcast(&ckpt_g.changed);
}

static void *engine_main(void *arg) {
  (void)arg;
  ckpt_in_lib = 1;
  LOCK();
  for (;;) {
    while (!queue_head && !engine_stop) pthread_cond_wait(&queue_cv, &ckpt_g.lock);
    if (engine_stop) break;
    engine_round();
  }
  UNLOCK();
  return NULL;
}

bool ckpt_engine_stop(void) {
  LOCK();
  bool started = engine_started;
  engine_stop = true;
  pthread_cond_broadcast(&queue_cv);
  UNLOCK();
  if (!started) return true;
  /* An engine blocked on a copy that never finishes must not hang exit. */
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += 2;
  if (pthread_timedjoin_np(engine, NULL, &ts) != 0) {
    CKPT_WARN("engine did not stop within 2 s at exit");
    pthread_detach(engine); /* exit goes on; the copy it waits for dies with the process */
    return false;
  }
  return true;
}

bool ckpt_offload_release(void) {
  if (queue_head) return false; /* copies may still run into memory it holds */
  for (int i = 0; i < MAXDEV; i++)
    if (devs[i].copy) {
      DRV(cuStreamDestroy_v2, devs[i].copy);
      devs[i].copy = NULL;
    }
  return true;
}

static int push_job(struct job *j) {
  if (!engine_started) {
    if (pthread_create(&engine, NULL, engine_main, NULL) != 0) return CKPT_ENOMEM;
    engine_started = true;
  }
  j->next = NULL;
  if (queue_tail) queue_tail->next = j;
  else queue_head = j;
  queue_tail = j;
  j->top->jobs++;
  pthread_cond_signal(&queue_cv);
  return 0;
}

/* Survivors of a region tree matching `want`, at most `max`. */
static int collect(struct region *r, int want, struct talloc **out, int n, int max) {
  for (struct talloc *t = r->allocs; t; t = t->rnext)
    if (t->state == want && !t->busy && !(want == CKPT_DEVICE && t->keep)) {
      if (out && n < max) out[n] = t;
      n++;
    }
  for (struct region *k = r->kids; k; k = k->sibling) n = collect(k, want, out, n, max);
  return n;
}

/* Starts the copies of one job (all items on the same device), pushes it. */
static int start_copies(int kind, struct job *j, struct talloc **items, int n, CUresult *out_r);

static int start_job(int kind, struct region *top, struct talloc **items, int n) {
  if (!n) return 0;
  struct talloc *first = items[0];
  CUresult r = CUDA_SUCCESS;
  struct job *j = calloc(1, sizeof *j + (size_t)n * sizeof *items);
  if (!j) return CKPT_ENOMEM;
  j->kind = kind;
  j->device = first->device;
  j->ctx = first->ctx;
  j->top = top;
  /* Streams, events and the legacy stream are per context: act in the
   * survivors' context, whatever the caller's current one is. */
  CUcontext saved = NULL;
  DRV(cuCtxGetCurrent, &saved);
  if (saved != first->ctx) DRV(cuCtxSetCurrent, first->ctx);
  int rc = start_copies(kind, j, items, n, &r);
  if (saved != first->ctx) DRV(cuCtxSetCurrent, saved);
  if (rc <= 0) {
    free(j);
    return rc;
  }
  return push_job(j);
}

/* Enqueues the copies of job j; 1 when the job must be pushed, 0 when there
 * is nothing to do, < 0 on error (items rolled back). */
static int start_copies(int kind, struct job *j, struct talloc **items, int n, CUresult *out_r) {
  struct talloc *first = items[0];
  struct devres *d;
  CUresult r;
  CU_CHECK_GOTO(devres_get(first->device, first->ctx, &d), r, fail);
  CU_CHECK_GOTO(DRV(cuEventCreate, &j->start, CU_EVENT_DEFAULT), r, fail);
  CU_CHECK_GOTO(DRV(cuEventCreate, &j->done, CU_EVENT_BLOCKING_SYNC), r, fail_start);
  CU_CHECK_GOTO(ckpt_fence(d->copy, first->device), r, fail_start_done);
  r = DRV(cuEventRecord, j->start, d->copy);
  if (r != CUDA_SUCCESS) { /* only the copy's timing is lost */
    CU_ERROR_ONCE("cuEventRecord of a copy's start failed (%s): its copy time is not counted", ckpt_cu_name(r));
  }
  for (int i = 0; i < n; i++) {
    struct talloc *t = items[i];
    if (t->device != first->device) continue; /* another device's job takes it */
    if (kind == JOB_TO_HOST) {
      CUresult hr;
      bool capped;
      struct host_block *b = ckpt_host_get(t->device, t->size, &hr, &capped);
      if (!b) {
        ckpt_g.stats.host_pool_exhausted++;
        if (capped) {
          CKPT_WARN_ONCE("host pool full (CKPT_HOST_MAX_BYTES=%llu): survivors stay on the device",
                         (unsigned long long)ckpt_param_host_max_bytes());
        } else if (ckpt_cu_unsupported(hr)) {
          ckpt_g.host_off = true; /* the driver cannot: never ask again (offload_tree) */
          CKPT_WARN_ONCE("this driver cannot create pinned host memory for offload (%s): host offload is off, "
                         "activations stay on the device",
                         ckpt_cu_name(hr));
          break; /* the rest of this job's survivors stay on the device too */
        } else {
          if (hr != CUDA_ERROR_OUT_OF_MEMORY) ckpt_note_driver_error(); /* out of memory is no driver error */
          CKPT_WARN_ONCE("cannot create pinned host memory (%s): survivors stay on the device until it can",
                         ckpt_cu_name(hr));
        }
        continue;
      }
      r = DRV(cuMemcpyDtoDAsync_v2, b->va, t->va, t->req, d->copy);
      if (r != CUDA_SUCCESS) {
        CU_FAILED(cuMemcpyDtoDAsync_v2, r);
        ckpt_host_put(b);
        continue;
      }
      t->host = b;
      t->state = CKPT_OFFLOADING;
    } else {
      CUmemGenericAllocationHandle h;
      r = ckpt_device_handle(t->device, t->size, &h);
      if (r != CUDA_SUCCESS) {
        ckpt_g.stats.restore_oom++;
        CKPT_WARN_ONCE("no device memory to restore into (%s): data stays host-backed (correct, slower); retried "
                       "at the next restore", ckpt_cu_name(r));
        continue;
      }
      CUdeviceptr va;
      if (ckpt_va_get(t->size, ckpt_granularity(t->device), &va) != CUDA_SUCCESS) {
        DRV(cuMemRelease, h);
        continue;
      }
      if (ckpt_map(va, t->size, h, t->device) != CUDA_SUCCESS) {
        ckpt_va_put(va, t->size);
        DRV(cuMemRelease, h);
        continue;
      }
      r = DRV(cuMemcpyDtoDAsync_v2, va, t->host->va, t->req, d->copy);
      if (r != CUDA_SUCCESS) {
        CU_FAILED(cuMemcpyDtoDAsync_v2, r);
        DRV(cuMemUnmap, va, t->size);
        ckpt_va_put(va, t->size);
        DRV(cuMemRelease, h);
        continue;
      }
      t->fresh = h;
      t->fresh_va = va;
      t->state = CKPT_RESTORING;
    }
    t->busy = true;
    j->bytes += t->req;
    j->items[j->n++] = t;
  }
  CU_CHECK_GOTO(DRV(cuEventRecord, j->done, d->copy), r, fail_items);
  if (j->n == 0) goto fail_items;
  ckpt_trace(kind == JOB_TO_HOST ? CKPT_T_OFFLOAD_START : CKPT_T_RESTORE_START, j->top->id, NULL, j->bytes,
             (uintptr_t)d->copy, 0);
  return 1;
fail_items:
  /* No job: roll every item back to where its data is valid, once the copies
   * already enqueued can no longer touch the memory being dropped. */
  if (j->n) DRV(cuStreamSynchronize, d->copy);
  apply(j, j->n ? r : CUDA_ERROR_NOT_READY);
fail_start_done:
  DRV(cuEventDestroy_v2, j->done);
fail_start:
  DRV(cuEventDestroy_v2, j->start);
fail:
  *out_r = r;
  return j->n ? CKPT_EDRIVER : 0;
}

/* ---- the swaps, on the engine thread, under the lock --------------------- */

static void to_host(struct talloc *t, CUresult copy_rc) {
  CUresult r = copy_rc;
  if (r == CUDA_SUCCESS && !t->cancel && !t->freed) {
    r = DRV(cuMemUnmap, t->va, t->size);
    if (r == CUDA_SUCCESS) {
      r = ckpt_host_map_at(t->host, t->va);
      if (r != CUDA_SUCCESS && ckpt_map(t->va, t->size, t->dev, t->device) != CUDA_SUCCESS)
        CKPT_WARN("cannot map %#llx back after a failed swap: its data is in host block %#llx",
                  (unsigned long long)t->va, (unsigned long long)t->host->va);
    } else {
      CU_FAILED(cuMemUnmap, r);
    }
    if (r == CUDA_SUCCESS) {
      DRV(cuMemRelease, t->dev);
      t->dev = 0;
      t->state = CKPT_HOST;
      t->moved = true;
      ckpt_g.stats.offloads++;
      ckpt_g.stats.offloaded_bytes_total += t->req;
      if (t->region && t->region->ns) {
        t->region->ns->offloads++;
        t->region->ns->offloaded_bytes += t->req;
      }
      ckpt_callsite_offloaded(t->site, t->req);
      ckpt_g.stats.host_bytes_in_use += t->size;
      ckpt_g.stats.device_bytes_released += t->size;
      if (ckpt_g.stats.device_bytes_released > ckpt_g.stats.device_bytes_released_peak)
        ckpt_g.stats.device_bytes_released_peak = ckpt_g.stats.device_bytes_released;
      return;
    }
  }
  if (copy_rc != CUDA_SUCCESS && copy_rc != CUDA_ERROR_NOT_READY) {
    ckpt_note_driver_error();
    CKPT_WARN("offload copy of %#llx failed (%s): data kept on the device", (unsigned long long)t->va,
              ckpt_cu_name(copy_rc));
  }
  /* Not swapped: the device copy is the valid one. */
  ckpt_host_put(t->host);
  t->host = NULL;
  t->state = CKPT_DEVICE;
}

static void drop_fresh(struct talloc *t) {
  DRV(cuMemUnmap, t->fresh_va, t->size);
  ckpt_va_put(t->fresh_va, t->size);
  DRV(cuMemRelease, t->fresh);
  t->fresh = 0;
  t->fresh_va = 0;
}

/* A survivor freed while its restore is in flight is swapped all the same:
 * the free is stream-ordered, and the work queued before it (behind the
 * restore's gate, typically) is exactly the consumer that wants device memory. */
static void to_device(struct talloc *t, CUresult copy_rc) {
  CUresult r = copy_rc;
  if (r == CUDA_SUCCESS) {
    r = DRV(cuMemUnmap, t->va, t->size);
    if (r == CUDA_SUCCESS) {
      r = ckpt_map(t->va, t->size, t->fresh, t->device);
      if (r != CUDA_SUCCESS && ckpt_host_map_at(t->host, t->va) != CUDA_SUCCESS)
        CKPT_WARN("cannot map %#llx back after a failed swap: its data is in host block %#llx",
                  (unsigned long long)t->va, (unsigned long long)t->host->va);
    } else {
      CU_FAILED(cuMemUnmap, r);
    }
    if (r == CUDA_SUCCESS) {
      DRV(cuMemUnmap, t->fresh_va, t->size);
      ckpt_va_put(t->fresh_va, t->size);
      t->dev = t->fresh;
      t->fresh = 0;
      t->fresh_va = 0;
      ckpt_host_put(t->host);
      t->host = NULL;
      t->state = CKPT_DEVICE;
      ckpt_g.stats.restores++;
      ckpt_g.stats.restored_bytes_total += t->req;
      if (t->region && t->region->ns) {
        t->region->ns->restores++;
        t->region->ns->restored_bytes += t->req;
      }
      ckpt_g.stats.host_bytes_in_use -= t->size;
      ckpt_g.stats.device_bytes_released -= t->size;
      return;
    }
  }
  if (copy_rc != CUDA_SUCCESS && copy_rc != CUDA_ERROR_NOT_READY) {
    ckpt_note_driver_error();
    CKPT_WARN("restore copy of %#llx failed (%s): data stays host-backed", (unsigned long long)t->va,
              ckpt_cu_name(copy_rc));
  }
  drop_fresh(t);
  t->state = CKPT_HOST;
}

static void apply(struct job *j, CUresult copy_rc) {
  for (int i = 0; i < j->n; i++) {
    struct talloc *t = j->items[i];
    t->busy = false;
    if (j->kind == JOB_TO_HOST) to_host(t, copy_rc);
    else to_device(t, copy_rc);
    t->cancel = false;
  }
}

/* ---- policy and the C API ------------------------------------------------- */

static int tree_job(int kind, struct region *top) {
  int want = kind == JOB_TO_HOST ? CKPT_DEVICE : CKPT_HOST;
  int n = collect(top, want, NULL, 0, 0);
  if (!n) return 0;
  struct talloc **base = malloc((size_t)n * sizeof *base), **items = base;
  if (!base) return CKPT_ENOMEM;
  collect(top, want, items, 0, n);
  int rc = 0;
  /* One job per device the survivors live on: take the first item's device,
   * move its items to the front, start them, repeat with the rest. */
  while (n > 0) {
    int dev = items[0]->device, m = 0;
    for (int i = 0; i < n; i++)
      if (items[i]->device == dev) {
        struct talloc *x = items[m];
        items[m++] = items[i];
        items[i] = x;
      }
    int r = start_job(kind, top, items, m);
    if (r < 0) rc = r;
    items += m;
    n -= m;
  }
  free(base);
  return rc;
}

static int offload_tree(struct region *top) {
  top->offloaded = true;
  if (ckpt_g.mode == MODE_NONE || !ckpt_g.tagging || ckpt_g.host_off || ckpt_g.exiting) return 0;
  return tree_job(JOB_TO_HOST, top);
}

static void cancel_offload(struct region *r) {
  for (struct talloc *t = r->allocs; t; t = t->rnext)
    if (t->state == CKPT_OFFLOADING) t->cancel = true;
  for (struct region *k = r->kids; k; k = k->sibling) cancel_offload(k);
}

static int prefetch_tree(struct region *top) {
  ckpt_g.cycle_restored = true;
  if (!ckpt_g.tagging || ckpt_g.exiting) return 0; /* host-backed data stays valid */
  cancel_offload(top);
  return tree_job(JOB_TO_DEVICE, top);
}

void ckpt_policy_region_closed(struct region *r) {
  if (!ckpt_g.auto_offload || ckpt_g.mode == MODE_NONE) return;
  /* Everything before the cursor has been offloaded: each close costs O(1). */
  for (; ckpt_g.offload_cursor <= r->cycle_pos - ckpt_g.keep_last; ckpt_g.offload_cursor++) {
    struct region *c = ckpt_g.cycle[ckpt_g.offload_cursor];
    if (!c->offloaded) offload_tree(c);
  }
}

static int tree_live(struct region *r) {
  int n = r->live;
  for (struct region *k = r->kids; k; k = k->sibling) n += tree_live(k);
  return n;
}

static void mark_keep(struct region *r) {
  for (struct talloc *t = r->allocs; t; t = t->rnext) t->keep = true;
  for (struct region *k = r->kids; k; k = k->sibling) mark_keep(k);
}

/* A survivor still alive when its cycle ends is not an activation but
 * something persistent that happened to be allocated inside a region (a
 * cuBLAS workspace, an optimizer state created lazily): bring it back and
 * never offload it again, or every later step would read it over the link. */
void ckpt_policy_cycle_end(struct region *top) {
  if (tree_live(top) > 0) {
    mark_keep(top);
    if (ckpt_g.tagging && !ckpt_g.exiting) tree_job(JOB_TO_DEVICE, top);
  }
}

static bool tree_settled(struct region *r) {
  for (struct talloc *t = r->allocs; t; t = t->rnext)
    if (t->busy) return false;
  for (struct region *k = r->kids; k; k = k->sibling)
    if (!tree_settled(k)) return false;
  return true;
}

/* Looks a region up for the API; the tree's top, or NULL. */
static struct region *api_region(int id) {
  struct region *r = ckpt_region_find(id);
  return r ? r->top : NULL;
}

CKPT_API int ckpt_offload(int id) {
  ckpt_init();
  if (ckpt_g.forked) return CKPT_EDISABLED;
  IN_LIB_BEGIN();
  LOCK();
  struct region *top = api_region(id);
  int rc = !top ? CKPT_ENOENT : top->state == R_OPEN ? CKPT_ESTATE : offload_tree(top);
  UNLOCK();
  IN_LIB_END();
  return rc;
}

static int prefetch_locked(struct region *top) {
  int rc = prefetch_tree(top);
  int pos = top->cycle_pos;
  for (int i = 1; pos >= 0 && i <= ckpt_g.prefetch && pos - i >= 0; i++) {
    int r = prefetch_tree(ckpt_g.cycle[pos - i]);
    if (r < 0 && rc == 0) rc = r;
  }
  return rc;
}

CKPT_API int ckpt_prefetch(int id) {
  ckpt_init();
  if (ckpt_g.forked) return CKPT_EDISABLED;
  IN_LIB_BEGIN();
  LOCK();
  struct region *top = api_region(id);
  int rc = top ? prefetch_locked(top) : CKPT_ENOENT;
  UNLOCK();
  IN_LIB_END();
  return rc;
}

/* Waits (lock held) until no engine job is in flight for the tree. */
static void wait_settled(struct region *top, bool count_stall) {
  if (tree_settled(top) && top->jobs == 0) return;
  double t0 = ckpt_now();
  top->waiters++; /* keeps the tree alive while the lock is released */
  while (!(tree_settled(top) && top->jobs == 0)) pthread_cond_wait(&ckpt_g.changed, &ckpt_g.lock);
  top->waiters--;
  if (count_stall) {
    double dt = ckpt_now() - t0;
    ckpt_g.stats.stall_seconds_total += dt;
    if (top->ns) top->ns->stall_seconds += dt;
    ckpt_trace(CKPT_T_STALL, top->id, NULL, 0, 0, (uint64_t)(dt * 1e9));
  }
}

/* Restore = prefetch, then hold the program's streams at a gate placed now,
 * before any work the caller enqueues next: that work runs after the swap
 * and reads device memory, and the host never waits. */
static int restore_locked(struct region *top) {
  int rc = prefetch_locked(top);
  bool ungated = false;
  for (struct job *q = queue_head; q; q = q->next)
    if (q->top == top && q->kind == JOB_TO_DEVICE && !q->gate_owner) {
      gate_job(q);
      q->restore_gate = q->gated;
      ungated |= !q->gated;
    }
  /* Without gates (an old driver), the host waits for the swap instead, so
   * the work it enqueues next still runs after it. */
  if (ungated) wait_settled(top, true);
  return rc;
}

CKPT_API int ckpt_restore(int id) {
  ckpt_init();
  if (ckpt_g.forked) return CKPT_EDISABLED;
  IN_LIB_BEGIN();
  LOCK();
  struct region *top = api_region(id);
  int rc = top ? restore_locked(top) : CKPT_ENOENT;
  int top_id = top ? top->id : 0;
  UNLOCK();
  IN_LIB_END();
  if (top_id) ckpt_profile_restore(top_id);
  return rc;
}

CKPT_API int ckpt_restore_ptr(uintptr_t dptr) {
  ckpt_init();
  if (ckpt_g.forked) return CKPT_EDISABLED;
  IN_LIB_BEGIN();
  LOCK();
  struct talloc *t = ckpt_live_find((CUdeviceptr)dptr);
  struct region *top = t && t->region ? t->region->top : NULL;
  int rc = top ? restore_locked(top) : CKPT_ENOENT;
  int top_id = top ? top->id : 0; /* read before unlocking: the tree may retire */
  UNLOCK();
  IN_LIB_END();
  if (top_id) ckpt_profile_restore(top_id);
  return rc;
}

CKPT_API int ckpt_wait(int id) {
  ckpt_init();
  if (ckpt_g.forked) return CKPT_EDISABLED;
  LOCK();
  struct region *top = api_region(id);
  int rc = CKPT_ENOENT;
  if (top) {
    wait_settled(top, false);
    ckpt_region_retire_maybe(top);
    rc = 0;
  }
  UNLOCK();
  return rc;
}
