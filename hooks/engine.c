#define _GNU_SOURCE /* pthread_timedjoin_np */
/* The engine (engine.h). Gates on one stream open in the order they were
 * closed, so the engine never closes a gate behind one that is still closed:
 * when a restore has closed one, everything of that device queued before it
 * is swapped under that gate. Otherwise the oldest job's copies are awaited
 * and it, with the later jobs whose copies are complete, is swapped under a
 * gate of its own. Jobs stay queued until done so that a restore can find them. */
#include <errno.h>
#include <stdlib.h>
#include <time.h>

#include "arena.h"
#include "check.h"
#include "copy.h"
#include "engine.h"
#include "log.h"
#include "observe.h"
#include "params.h"
#include "region.h"
#include "state.h"
#include "streams.h"

static struct job *queue_head, *queue_tail;
static pthread_cond_t queue_cv = PTHREAD_COND_INITIALIZER;
static pthread_cond_t settled_cv = PTHREAD_COND_INITIALIZER; /* a job finished (ckpt_engine_wait_settled) */
static pthread_t engine;
static double link_bytes[2], link_seconds[2]; /* per direction, lock held (ckpt_engine_link) */
static bool engine_started, engine_stop;

static void job_done(struct job *j) {
  j->top->jobs--;
  ckpt_region_retire_maybe(j->top);
  DRV(cuEventDestroy_v2, j->start);
  DRV(cuEventDestroy_v2, j->done);
  free(j);
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

static void roll_back(CUresult *rc, int n) {
  for (int i = 0; i < n; i++)
    if (rc[i] == CUDA_SUCCESS) rc[i] = CUDA_ERROR_NOT_READY;
}

/* Waits (lock released) for every arrival at target's gate. A held stream
 * that does not arrive within CKPT_GATE_TIMEOUT of the first arrival of a
 * stream that was busy at the cut (or within AHEAD x the bound while only
 * idle ones have arrived: the program's run-ahead, nothing stalls) is busy
 * with long work from before the cut or blocked on the host: the batch's
 * gates open at once (no stream stays held, so nothing the host waits for is
 * stuck behind them), then the late arrivals are awaited with nothing held,
 * and a new gate is closed; after RETRIES, or when the late arrivals do not
 * come within LATE x the bound (blocked), false: the caller rolls the batch
 * back. */
#define RETRIES 3
#define AHEAD 10
#define LATE 20
static bool await_gate(struct job *target, struct job **also_open, int *nopen) {
  for (int attempt = 0;; attempt++) {
    UNLOCK();
    bool reached = ckpt_gate_wait(&target->gate, AHEAD, true);
    LOCK();
    if (reached) return true;
    CKPT_INFO("gate %u: a held stream did not arrive within CKPT_GATE_TIMEOUT", target->gate.seq);
    ckpt_gate_timed_out();
    for (int i = 0; i < *nopen; i++) ckpt_gate_open(&also_open[i]->gate);
    *nopen = 0;
    ckpt_gate_release(&target->gate); /* open; its arrival words still watched */
    UNLOCK();
    bool late = ckpt_gate_wait(&target->gate, LATE, false);
    LOCK();
    ckpt_gate_forget(&target->gate);
    target->gated = false;
    if (!late || attempt + 1 == RETRIES) return false;
    CUcontext saved = NULL;
    DRV(cuCtxGetCurrent, &saved);
    if (saved != target->ctx) DRV(cuCtxSetCurrent, target->ctx);
    int g = ckpt_gate_close(target->device, &target->gate);
    if (saved != target->ctx) DRV(cuCtxSetCurrent, saved);
    target->gated = g > 0;
    if (g < 0) return false;
  }
}

/* One round of the engine (see the top of the file). Lock held. */
#define BATCH 64
static void engine_round(void) {
  int device = queue_head->device;
  struct job *target = NULL, *g;
  CUresult rc_target = CUDA_SUCCESS;
  for (;;) { /* until no restore closed a gate while we waited */
    g = first_gated(device);
    target = g ? g : queue_head;
    /* Host room still being made (copy.h): wait for it with no gate closed. */
    while (!g && !engine_stop && !ckpt_copies_resume(target)) {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      ts.tv_nsec += 1000000;
      if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
      pthread_cond_timedwait(&queue_cv, &ckpt_g.lock, &ts);
      if ((g = first_gated(device))) target = g;
    }
    /* Ungated, the head may be an offload on the other copy stream while a
     * restore's gate closes behind it: poll, so that the consumer held at
     * that gate waits for its own copies only (duplex), not for the head's. */
    if (!g) {
      DRV(cuCtxSetCurrent, target->ctx);
      long wait_us = 20;
      while (!engine_stop && ckpt_event_query(target->done) == CUDA_ERROR_NOT_READY && !first_gated(device)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += wait_us * 1000;
        if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
        pthread_cond_timedwait(&queue_cv, &ckpt_g.lock, &ts); /* ckpt_engine_gate_restores signals */
        if (wait_us < 1000) wait_us *= 2;
      }
      if (first_gated(device)) continue;
    }
    UNLOCK();
    DRV(cuCtxSetCurrent, target->ctx);
    rc_target = ckpt_copies_wait(target);
    /* An error here says nothing about the copies: wait for the copy streams
     * before anything rolls back (and frees) memory they may still touch.
     * NOT_READY: a store's bounded wait gave up (said, and waited for). */
    if (rc_target != CUDA_SUCCESS && rc_target != CUDA_ERROR_NOT_READY) {
      CU_ERROR_ONCE("waiting for a copy's completion event failed (%s): waiting for libckpt's copy streams instead",
                    ckpt_cu_name(rc_target));
      if (ckpt_copy_stream_sync(target->device) == CUDA_SUCCESS) rc_target = CUDA_SUCCESS;
    }
    LOCK();
    if (g || !first_gated(device)) break;
  }
  struct job *batch[BATCH];
  CUresult rc[BATCH];
  int n = 0;
  bool past_target = false;
  for (struct job *q = queue_head; q && n < BATCH; q = q->next) {
    if (q->device != device) continue;
    if (past_target && (q->gate_owner || !ckpt_copies_resume(q) || ckpt_event_query(q->done) != CUDA_SUCCESS))
      break;
    /* A job before the target may still be copying: late copies (copy.h) run
     * behind later jobs', and the other direction has its own copy stream.
     * It waits its turn (rolling it back would free memory its copies touch),
     * and so does one whose host room is still being made (its copies start
     * once the room is there, instead of the offload being given up). */
    if (!past_target && q != target && (!ckpt_copies_resume(q) || ckpt_event_query(q->done) != CUDA_SUCCESS))
      continue;
    rc[n] = q == target ? rc_target : ckpt_event_query(q->done);
    batch[n++] = q;
    if (q == target) past_target = true;
  }
  bool copied[BATCH]; /* the copies completed, whether or not they are swapped below */
  for (int i = 0; i < n; i++) copied[i] = rc[i] == CUDA_SUCCESS;
  bool swaps = false;
  for (int i = 0; i < n; i++) swaps |= rc[i] == CUDA_SUCCESS && ckpt_copies_swap(batch[i]);
  if (!target->gate_owner && swaps) gate_job(target);
  /* No gate (a stream could not be held, a capture is active, the
   * submission lock timed out; streams.c counts and says which): roll the
   * batch back (its copies are complete): offloads keep their data on the
   * device, restores leave it host-backed (retried later). */
  if (target->gate_failed && swaps) roll_back(rc, n);
  /* Jobs queued before the target may hold gates closed after its: they are
   * swapped now, under the target's gate, and their gates opened with it. */
  struct job *also_open[BATCH];
  int nopen = 0;
  for (int i = 0; i < n; i++) {
    if (batch[i] != target && batch[i]->gate_owner == batch[i] && batch[i]->gated) also_open[nopen++] = batch[i];
    batch[i]->gate_owner = target; /* a restore must not gate them again */
  }
  double stall_from = 0;
  bool stranded = false;
  if (target->gated) {
    bool reached = ckpt_gate_reached(&target->gate) || await_gate(target, also_open, &nopen);
    stall_from = ckpt_now();
    if (!reached) roll_back(rc, n); /* pre-cut work may still run: nothing is swapped */
    /* Reaching the cut takes as long as the program runs ahead of the
     * device, and later jobs' copies completed meanwhile: they are swapped
     * under this gate too (a swap needs complete copies and every stream
     * held, not a cut after the job began), or the swaps fall behind the
     * regions by one gate per run-ahead. */
    struct job *q = n ? batch[n - 1]->next : NULL;
    for (; reached && q && n < BATCH; q = q->next) {
      if (q->device != device) continue;
      if (q->gate_owner || !ckpt_copies_resume(q) || ckpt_event_query(q->done) != CUDA_SUCCESS) break;
      rc[n] = CUDA_SUCCESS;
      copied[n] = true;
      q->gate_owner = target;
      batch[n++] = q;
    }
  }
  for (int i = 0; i < n; i++) {
    struct job *b = batch[i];
    float ms = 0;
    if (!copied[i] || DRV(cuEventElapsedTime_v2, &ms, b->start, b->done) != CUDA_SUCCESS) ms = 0;
    /* The link's rate: copies that ran from start to done (late ones also
     * waited for their room, after `start`), swapped or not. */
    if (ms > 0 && b->copied && !b->late) {
      link_bytes[b->kind] += (double)b->copied;
      link_seconds[b->kind] += ms / 1000.0;
      double gbps = link_bytes[b->kind] / link_seconds[b->kind] / 1e9;
      *(b->kind == JOB_TO_HOST ? &ckpt_g.stats.budget_d2h_gbps : &ckpt_g.stats.budget_h2d_gbps) = gbps;
    }
    if (rc[i] == CUDA_SUCCESS) { /* the time of the copies that are swapped (or meant to be) */
      ckpt_g.stats.copy_seconds_total += ms / 1000.0;
      if (b->top->ns) b->top->ns->copy_seconds += ms / 1000.0;
    }
    stranded |= !ckpt_copies_apply(b, rc[i]);
    ckpt_copies_trace_end(b, (uint64_t)(ms * 1e6)); /* what was swapped, not what was copied */
  }
  if (stranded) ckpt_copies_repair(batch, n); /* a VA maps nothing: the gate stays closed (copy.h) */
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
  if (swaps) ckpt_observe_mem(false); /* device memory after the swaps (tracing) */
  for (int i = 0; i < n; i++) {
    queue_remove(batch[i]);
    job_done(batch[i]);
  }
  ckpt_reap();
  ckpt_publish();
  pthread_cond_broadcast(&settled_cv);
}

static void *engine_main(void *arg) {
  (void)arg;
  ckpt_in_lib = 1;
  /* Its event queries and synchronisations must never invalidate a program's
   * global-mode capture: relaxed mode on this thread for good. */
  CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_RELAXED;
  DRV(cuThreadExchangeStreamCaptureMode, &mode);
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

bool ckpt_engine_release(void) {
  if (queue_head) return false; /* copies may still run into memory it holds */
  ckpt_copy_streams_release();
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

int ckpt_engine_submit(int kind, struct region *top, struct talloc **items, int n) {
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
  int rc = ckpt_copies_start(j, items, n, &r);
  if (saved != first->ctx) DRV(cuCtxSetCurrent, saved);
  if (rc <= 0) {
    free(j);
    return rc;
  }
  return push_job(j);
}

static bool tree_settled(struct region *r) {
  for (struct talloc *t = r->allocs; t; t = t->rnext)
    if (t->busy) return false;
  for (struct region *k = r->kids; k; k = k->sibling)
    if (!tree_settled(k)) return false;
  return true;
}

#define WAIT_WARN_S 10.0 /* a wait on copies this long is said, whatever the bound */

/* Waits (lock held) until no engine job is in flight for the tree. */
bool ckpt_engine_wait_settled(struct region *top, bool count_stall, bool give_up) {
  if (tree_settled(top) && top->jobs == 0) return true;
  double t0 = ckpt_now(), bound = (double)ckpt_param_int(CKPT_P_WAIT_TIMEOUT) / 1000.0;
  double every = bound > WAIT_WARN_S ? bound : WAIT_WARN_S; /* waits that cannot give up: said this often */
  double say = give_up && bound < WAIT_WARN_S ? bound : WAIT_WARN_S;
  bool settled = true;
  top->waiters++; /* keeps the tree alive while the lock is released */
  while (!(tree_settled(top) && top->jobs == 0)) {
    double left = t0 + say - ckpt_now();
    if (left <= 0) {
      bool out = give_up && ckpt_now() - t0 >= bound;
      CKPT_WARN("waited %.1f s for the copies and swaps of region %d (%s, %d jobs in flight): a program stream "
                "blocked on the host, a stuck copy or a device fault holds them%s", ckpt_now() - t0, top->id,
                top->name, top->jobs, out ? "; ckpt_wait returns CKPT_ETIMEDOUT (CKPT_WAIT_TIMEOUT), they go on"
                                          : "; still waiting (the caller cannot go on before the swap)");
      if (out) {
        settled = false;
        break;
      }
      say = give_up && say < bound ? bound : say + every;
      continue;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double at = (double)ts.tv_sec + ts.tv_nsec * 1e-9 + (left < 0.5 ? left : 0.5);
    ts.tv_sec = (time_t)at;
    ts.tv_nsec = (long)((at - (double)ts.tv_sec) * 1e9);
    pthread_cond_timedwait(&settled_cv, &ckpt_g.lock, &ts);
  }
  top->waiters--;
  if (count_stall) {
    double dt = ckpt_now() - t0;
    ckpt_g.stats.stall_seconds_total += dt;
    if (top->ns) top->ns->stall_seconds += dt;
    ckpt_trace(CKPT_T_STALL, top->id, NULL, 0, 0, (uint64_t)(dt * 1e9));
  }
  return settled;
}

bool ckpt_engine_gate_restores(struct region *top) {
  bool ungated = false;
  for (struct job *q = queue_head; q; q = q->next)
    if (q->top == top && q->kind == JOB_TO_DEVICE && !q->gate_owner) {
      gate_job(q);
      q->restore_gate = q->gated;
      ungated |= !q->gated;
    }
  pthread_cond_signal(&queue_cv); /* an engine polling another job's copies serves this gate first */
  return ungated;
}

bool ckpt_engine_link(int kind, double *bytes, double *seconds) {
  *bytes = link_bytes[kind];
  *seconds = link_seconds[kind];
  return link_seconds[kind] > 0 && link_bytes[kind] > 0;
}
