/* The offload policy (policy.h). */
#include <stdlib.h>

#include "arena.h"
#include "copy.h"
#include "engine.h"
#include "log.h"
#include "params.h"
#include "policy.h"
#include "region.h"
#include "state.h"

static int keep_last, prefetch;
static bool auto_offload;
static struct region **cycle; /* closed top-level regions of this forward pass */
static int ncycle, cap_cycle;
static int offload_cursor;    /* cycle entries before it are offloaded */
static bool cycle_restored;   /* a restore happened: the next top-level region starts a new cycle */

void ckpt_policy_init(void) {
  keep_last = (int)ckpt_param_int(CKPT_P_KEEP_LAST);
  prefetch = (int)ckpt_param_int(CKPT_P_PREFETCH);
  auto_offload = ckpt_param_int(CKPT_P_OFFLOAD) == CKPT_OFFLOAD_AUTO;
}

/* ---- region trees --------------------------------------------------------- */

/* Survivors of a region tree matching `want` (CKPT_HOST: any offloaded,
 * host-backed or peer slices), at most `max`. */
static int collect(struct region *r, int want, struct talloc **out, int n, int max) {
  for (struct talloc *t = r->allocs; t; t = t->rnext)
    if ((t->state == want || (want == CKPT_HOST && t->state == CKPT_PEER)) && !t->busy &&
        !(want == CKPT_DEVICE && t->keep)) {
      if (out && n < max) out[n] = t;
      n++;
    }
  for (struct region *k = r->kids; k; k = k->sibling) n = collect(k, want, out, n, max);
  return n;
}

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
    int r = ckpt_engine_submit(kind, top, items, m);
    if (r < 0) rc = r;
    items += m;
    n -= m;
  }
  free(base);
  return rc;
}

static void cancel_offload(struct region *r) {
  for (struct talloc *t = r->allocs; t; t = t->rnext)
    if (t->state == CKPT_OFFLOADING) t->cancel = true;
  for (struct region *k = r->kids; k; k = k->sibling) cancel_offload(k);
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

/* ---- the verbs ------------------------------------------------------------ */

int ckpt_policy_offload(struct region *top) {
  top->offloaded = true;
  if (ckpt_g.mode == CKPT_MODE_NONE || !ckpt_g.tagging || ckpt_g.host_off || ckpt_g.exiting) return 0;
  return tree_job(JOB_TO_HOST, top);
}

static int prefetch_tree(struct region *top) {
  cycle_restored = true;
  if (!ckpt_g.tagging || ckpt_g.exiting) return 0; /* host-backed data stays valid */
  /* Peer modes: every rank must restore the same items, so an offload in
   * flight is finished, not cancelled on whichever rank it had not finished. */
  if (ckpt_g.mode == CKPT_MODE_PEER || ckpt_g.mode == CKPT_MODE_PEER_HOST) ckpt_engine_wait_settled(top, true);
  cancel_offload(top);
  return tree_job(JOB_TO_DEVICE, top);
}

/* Restoring region k prefetches the CKPT_PREFETCH regions closed before it,
 * so that their copies overlap backward's compute. */
int ckpt_policy_prefetch(struct region *top) {
  int rc = prefetch_tree(top);
  int pos = top->cycle_pos;
  for (int i = 1; pos >= 0 && i <= prefetch && pos - i >= 0; i++) {
    int r = prefetch_tree(cycle[pos - i]);
    if (r < 0 && rc == 0) rc = r;
  }
  return rc;
}

/* Restore = prefetch, then hold the program's streams at a gate placed now,
 * before any work the caller enqueues next: that work runs after the swap
 * and reads device memory, and the host never waits. Without gates (an old
 * driver), the host waits for the swap instead. */
int ckpt_policy_restore(struct region *top) {
  int rc = ckpt_policy_prefetch(top);
  if (ckpt_engine_gate_restores(top)) ckpt_engine_wait_settled(top, true);
  return rc;
}

/* ---- the cycle ------------------------------------------------------------ */

/* A survivor still alive when its cycle ends is not an activation but
 * something persistent that happened to be allocated inside a region (a
 * cuBLAS workspace, an optimizer state created lazily): bring it back and
 * never offload it again, or every later step would read it over the link. */
static void cycle_end(struct region *top) {
  if (tree_live(top) > 0) {
    mark_keep(top);
    if (ckpt_g.tagging && !ckpt_g.exiting) tree_job(JOB_TO_DEVICE, top);
  }
}

void ckpt_policy_step(void) {
  int n = ncycle;
  ncycle = 0;
  offload_cursor = 0;
  cycle_restored = false;
  for (int i = 0; i < n; i++) {
    struct region *r = cycle[i];
    cycle_end(r);
    r->cycle_pos = -1;
    ckpt_region_retire_maybe(r);
  }
}

bool ckpt_policy_region_opening(void) {
  if (ckpt_g.open || !cycle_restored) return false;
  ckpt_policy_step();
  return true;
}

/* Without ckpt_step() or a restore (NVTX-only use, inference) the cycle would
 * grow for ever: drop the entries that hold nothing (closed regions never gain
 * survivors, so there is nothing left to offload or prefetch for them). */
static void cycle_compact(void) {
  int k = 0, cursor = offload_cursor;
  for (int i = 0; i < ncycle; i++) {
    struct region *r = cycle[i];
    if (ckpt_region_tree_idle(r)) {
      if (i < offload_cursor) cursor--;
      r->cycle_pos = -1;
      ckpt_region_retire_maybe(r);
      continue;
    }
    r->cycle_pos = k;
    cycle[k++] = r;
  }
  ncycle = k;
  offload_cursor = cursor;
}

static int cycle_push(struct region *r) {
  if (ncycle == cap_cycle && ncycle >= 1024) cycle_compact();
  if (ncycle == cap_cycle) {
    int cap = cap_cycle ? 2 * cap_cycle : 64;
    struct region **c = realloc(cycle, (size_t)cap * sizeof *c);
    if (!c) return CKPT_ENOMEM;
    cycle = c;
    cap_cycle = cap;
  }
  r->cycle_pos = ncycle;
  cycle[ncycle++] = r;
  return 0;
}

void ckpt_policy_region_closed(struct region *r) {
  if (r->parent) return;
  if (cycle_push(r) < 0) CKPT_WARN_ONCE("out of memory growing the region cycle");
  if (!auto_offload || ckpt_g.mode == CKPT_MODE_NONE) return;
  /* Everything before the cursor has been offloaded: each close costs O(1). */
  for (; offload_cursor <= r->cycle_pos - keep_last; offload_cursor++) {
    struct region *c = cycle[offload_cursor];
    if (!c->offloaded) ckpt_policy_offload(c);
  }
}
