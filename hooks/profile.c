/* CKPT_PROFILE: forward and backward time per region name, measured with
 * device events (host clocks would measure the launch, not the work), and
 * CKPT_SYNC: cuCtxSynchronize at region boundaries (DeepSpeed's
 * synchronize_checkpoint_boundary).
 *
 * Forward of a region: events recorded at its begin and end. Backward of a
 * region: from the event recorded when it is restored to the one of the next
 * restore (backward runs regions in reverse; the last region restored in a
 * pass has no next restore and is not measured). Events are resolved without
 * blocking at the next boundary, once the device has passed them. Called
 * without the core lock; profile_mu guards this file's state. */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "state.h"
#include "observers.h"
#include "trace_format.h"

#define MAX_OPEN 64     /* nested open regions followed */
#define MAX_PENDING 512 /* measured intervals awaiting the device */
#define POOL 128        /* idle events kept for reuse */
#define RECENT 4096     /* region id -> name, for restores */

struct mark {
  CUevent ev;
  CUcontext ctx;
};
struct interval {
  int kind; /* CKPT_T_FWD or CKPT_T_BWD */
  int region;
  char name[48];
  struct mark a, b;
};

static bool profile_on, sync_on;
/* CKPT_BUDGET=auto measures forward and backward as CKPT_PROFILE does, for
 * the policy, without publishing them as the profile. */
static bool measure_on;
#define MEASURED 256 /* names whose compute time the policy can ask for */
static struct {           /* under the core lock */
  char name[48];
  uint64_t nfwd, nbwd;
  double fwd, bwd;       /* seconds, summed */
} measured[MEASURED];
static int nmeasured;
static __thread CUstream declared_stream; /* ckpt_set_stream; 0 = the legacy stream */
static pthread_mutex_t profile_mu = PTHREAD_MUTEX_INITIALIZER;
static struct interval open_fwd[MAX_OPEN];
static int nopen;
static struct interval pending[MAX_PENDING];
static int npending;
static struct mark last_restore; /* start of the backward of restore_region */
static int restore_region;
static char restore_name[48];
static struct mark pool[POOL];
static int npool;
static struct {
  int id;
  char name[48];
} recent[RECENT];

void ckpt_profile_init(bool profile, bool sync) {
  __atomic_store_n(&profile_on, profile, __ATOMIC_RELAXED);
  __atomic_store_n(&sync_on, sync, __ATOMIC_RELAXED);
}

void ckpt_profile_measure(void) { __atomic_store_n(&measure_on, true, __ATOMIC_RELAXED); }

static bool measuring(void) {
  return __atomic_load_n(&profile_on, __ATOMIC_RELAXED) || __atomic_load_n(&measure_on, __ATOMIC_RELAXED);
}

/* Core lock held. */
static void note_measured(const char *name, int kind, double seconds) {
  int i = 0;
  while (i < nmeasured && strcmp(measured[i].name, name)) i++;
  if (i == nmeasured) {
    if (nmeasured == MEASURED) return;
    snprintf(measured[nmeasured++].name, sizeof measured[0].name, "%s", name);
  }
  if (kind == CKPT_T_FWD) measured[i].nfwd++, measured[i].fwd += seconds;
  else measured[i].nbwd++, measured[i].bwd += seconds;
}

bool ckpt_profile_compute(const char *name, double *fwd, double *bwd) {
  for (int i = 0; i < nmeasured; i++)
    if (!strcmp(measured[i].name, name)) {
      if (!measured[i].nfwd) return false;
      *fwd = measured[i].fwd / (double)measured[i].nfwd;
      *bwd = measured[i].nbwd ? measured[i].bwd / (double)measured[i].nbwd : 0;
      return true;
    }
  return false;
}

void ckpt_profile_set_stream(uintptr_t stream) { declared_stream = (CUstream)stream; }

void ckpt_profile_forked(void) {
  profile_on = sync_on = measure_on = false; /* events and contexts are the parent's */
  pthread_mutex_init(&profile_mu, NULL);
}

static void synchronize(void) {
  CUcontext ctx = NULL;
  if (DRV(cuCtxGetCurrent, &ctx) == CUDA_SUCCESS && ctx) {
    CUresult r = DRV(cuCtxSynchronize);
    if (r != CUDA_SUCCESS) CU_FAILED(cuCtxSynchronize, r);
  }
}

/* An event recorded now on the declared stream (profile_mu held). */
static bool mark_now(struct mark *m) {
  CUcontext ctx = NULL;
  if (DRV(cuCtxGetCurrent, &ctx) != CUDA_SUCCESS || !ctx) return false; /* nothing runs here */
  m->ev = NULL;
  for (int i = npool - 1; i >= 0; i--)
    if (pool[i].ctx == ctx) {
      *m = pool[i];
      pool[i] = pool[--npool];
      break;
    }
  if (!m->ev && DRV(cuEventCreate, &m->ev, CU_EVENT_DEFAULT) != CUDA_SUCCESS) return false;
  m->ctx = ctx;
  if (DRV(cuEventRecord, m->ev, declared_stream) != CUDA_SUCCESS) {
    DRV(cuEventDestroy_v2, m->ev);
    return false;
  }
  return true;
}

static void mark_put(struct mark *m) {
  if (!m->ev) return;
  if (npool < POOL) pool[npool++] = *m;
  else DRV(cuEventDestroy_v2, m->ev);
  m->ev = NULL;
}

/* Resolves the intervals the device has passed into the names' counters.
 * profile_mu held on entry, released on exit; the core lock is taken inside
 * it (never the other way round: the core does not call in here locked). */
static void resolve_and_unlock(void) {
  static struct interval done[MAX_PENDING];
  static uint64_t ns[MAX_PENDING];
  int ndone = 0, k = 0;
  for (int i = 0; i < npending; i++) {
    struct interval *p = &pending[i];
    CUresult q = DRV(cuEventQuery, p->b.ev);
    if (q == CUDA_ERROR_NOT_READY) {
      pending[k++] = *p;
      continue;
    }
    float ms = 0;
    if (q == CUDA_SUCCESS && DRV(cuEventElapsedTime_v2, &ms, p->a.ev, p->b.ev) == CUDA_SUCCESS && ms >= 0) {
      ns[ndone] = (uint64_t)((double)ms * 1e6);
      done[ndone++] = *p;
    }
    mark_put(&p->a);
    mark_put(&p->b);
  }
  npending = k;
  bool publish = __atomic_load_n(&profile_on, __ATOMIC_RELAXED);
  if (ndone) {
    LOCK();
    for (int i = 0; i < ndone; i++) {
      note_measured(done[i].name, done[i].kind, (double)ns[i] * 1e-9);
      struct ckpt_name_stats *s = publish ? ckpt_name_stats(done[i].name) : NULL;
      if (s && done[i].kind == CKPT_T_FWD) s->fwd_seconds += (double)ns[i] * 1e-9;
      else if (s) s->bwd_seconds += (double)ns[i] * 1e-9;
    }
    UNLOCK();
    for (int i = 0; publish && i < ndone; i++) ckpt_trace(done[i].kind, done[i].region, NULL, 0, 0, ns[i]);
  }
  pthread_mutex_unlock(&profile_mu);
}

static void add_pending(int kind, int region, const char *name, struct mark *a, struct mark *b) {
  if (npending == MAX_PENDING) { /* the device is far behind: skip this one */
    mark_put(a);
    mark_put(b);
    return;
  }
  struct interval *p = &pending[npending++];
  p->kind = kind;
  p->region = region;
  snprintf(p->name, sizeof p->name, "%s", name);
  p->a = *a;
  p->b = *b;
  a->ev = b->ev = NULL;
}

void ckpt_profile_begin(int region, const char *name) {
  if (__atomic_load_n(&sync_on, __ATOMIC_RELAXED)) synchronize();
  if (!measuring() || region <= 0) return;
  pthread_mutex_lock(&profile_mu);
  recent[region % RECENT].id = region;
  snprintf(recent[region % RECENT].name, sizeof recent[0].name, "%s", name ? name : "");
  if (nopen == 0) mark_put(&last_restore); /* a new forward pass: the backward chain ended */
  if (nopen < MAX_OPEN) {
    struct interval *o = &open_fwd[nopen];
    o->region = region;
    snprintf(o->name, sizeof o->name, "%s", name ? name : "");
    o->b.ev = NULL;
    if (mark_now(&o->a)) nopen++;
  }
  resolve_and_unlock();
}

void ckpt_profile_end(int region) {
  if (__atomic_load_n(&sync_on, __ATOMIC_RELAXED)) synchronize();
  if (!measuring()) return;
  pthread_mutex_lock(&profile_mu);
  int i = nopen - 1;
  while (i >= 0 && open_fwd[i].region != region) i--;
  if (i >= 0) {
    struct interval o = open_fwd[i];
    for (int j = i + 1; j < nopen; j++) mark_put(&open_fwd[j].a); /* never closed: unbalanced */
    nopen = i;
    struct mark end;
    if (mark_now(&end)) add_pending(CKPT_T_FWD, region, o.name, &o.a, &end);
    else mark_put(&o.a);
  }
  resolve_and_unlock();
}

void ckpt_profile_restore(int region) {
  if (__atomic_load_n(&sync_on, __ATOMIC_RELAXED)) synchronize();
  if (!measuring()) return;
  pthread_mutex_lock(&profile_mu);
  struct mark now;
  if (mark_now(&now)) {
    if (last_restore.ev && last_restore.ctx == now.ctx) {
      struct mark end;
      if (mark_now(&end)) add_pending(CKPT_T_BWD, restore_region, restore_name, &last_restore, &end);
    }
    mark_put(&last_restore);
    last_restore = now;
    restore_region = region;
    bool known = recent[region % RECENT].id == region;
    snprintf(restore_name, sizeof restore_name, "%s", known ? recent[region % RECENT].name : "");
    if (!known) mark_put(&last_restore); /* no name to charge it to */
  }
  resolve_and_unlock();
}
