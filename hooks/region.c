/* Regions: a process-wide stack of open regions, ids, the cycle (closed
 * top-level regions of the current forward pass, in close order). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define NBUCKETS 1024
static struct region *buckets[NBUCKETS];

struct region *ckpt_region_find(int id) {
  if (id <= 0) return NULL;
  for (struct region *r = buckets[id % NBUCKETS]; r; r = r->hnext)
    if (r->id == id) return r;
  return NULL;
}

static void hash_remove(struct region *r) {
  struct region **pp = &buckets[r->id % NBUCKETS];
  while (*pp && *pp != r) pp = &(*pp)->hnext;
  if (*pp) *pp = r->hnext;
}

/* A tree (top-level region and its nested ones) is freed when nothing refers
 * to it any more: all closed, out of the cycle, no survivors, no jobs. */
static bool tree_idle(struct region *r) {
  if (r->state == R_OPEN || r->live || r->jobs || r->waiters) return false;
  for (struct region *k = r->kids; k; k = k->sibling)
    if (!tree_idle(k)) return false;
  return true;
}

static void tree_free(struct region *r) {
  struct region *k = r->kids;
  while (k) {
    struct region *n = k->sibling;
    tree_free(k);
    k = n;
  }
  hash_remove(r);
  free(r);
}

void ckpt_region_retire_maybe(struct region *r) {
  r = r->top;
  if (r->cycle_pos >= 0 || !tree_idle(r)) return;
  tree_free(r);
}

void ckpt_cycle_reset(void) {
  int n = ckpt_g.ncycle;
  ckpt_g.ncycle = 0;
  ckpt_g.offload_cursor = 0;
  ckpt_g.cycle_restored = false;
  for (int i = 0; i < n; i++) {
    struct region *r = ckpt_g.cycle[i];
    ckpt_policy_cycle_end(r);
    r->cycle_pos = -1;
    ckpt_region_retire_maybe(r);
  }
}

/* Without ckpt_step() or a restore (NVTX-only use, inference) the cycle would
 * grow for ever: drop the entries that hold nothing (closed regions never gain
 * survivors, so there is nothing left to offload or prefetch for them). */
static void cycle_compact(void) {
  int k = 0, cursor = ckpt_g.offload_cursor;
  for (int i = 0; i < ckpt_g.ncycle; i++) {
    struct region *r = ckpt_g.cycle[i];
    if (tree_idle(r)) {
      if (i < ckpt_g.offload_cursor) cursor--;
      r->cycle_pos = -1;
      ckpt_region_retire_maybe(r);
      continue;
    }
    r->cycle_pos = k;
    ckpt_g.cycle[k++] = r;
  }
  ckpt_g.ncycle = k;
  ckpt_g.offload_cursor = cursor;
}

static int cycle_push(struct region *r) {
  if (ckpt_g.ncycle == ckpt_g.cap_cycle && ckpt_g.ncycle >= 1024) cycle_compact();
  if (ckpt_g.ncycle == ckpt_g.cap_cycle) {
    int cap = ckpt_g.cap_cycle ? 2 * ckpt_g.cap_cycle : 64;
    struct region **c = realloc(ckpt_g.cycle, (size_t)cap * sizeof *c);
    if (!c) return CKPT_ENOMEM;
    ckpt_g.cycle = c;
    ckpt_g.cap_cycle = cap;
  }
  r->cycle_pos = ckpt_g.ncycle;
  ckpt_g.cycle[ckpt_g.ncycle++] = r;
  return 0;
}

void ckpt_region_attach(struct region *r, struct talloc *t) {
  t->region = r;
  t->rnext = r->allocs;
  r->allocs = t;
  r->live++;
}

void ckpt_region_detach(struct talloc *t) {
  struct region *r = t->region;
  if (!r) return;
  struct talloc **pp = &r->allocs;
  while (*pp && *pp != t) pp = &(*pp)->rnext;
  if (*pp) *pp = t->rnext;
  t->rnext = NULL;
  t->region = NULL;
  r->live--;
  ckpt_region_retire_maybe(r);
}

CKPT_API int ckpt_region_begin(const char *name) {
  ckpt_init();
  if (ckpt_g.forked) return CKPT_EDISABLED;
  struct region *r = calloc(1, sizeof *r);
  if (!r) return CKPT_ENOMEM;
  snprintf(r->name, sizeof r->name, "%s", name ? name : "");
  r->cycle_pos = -1;
  LOCK();
  /* Backward has restored something and a new top-level region opens: this
   * is the next forward pass. */
  if (!ckpt_g.open && ckpt_g.cycle_restored) {
    ckpt_cycle_reset();
    ckpt_trace(CKPT_T_STEP, 0, NULL, 0, 0, 0);
  }
  r->id = ++ckpt_g.next_region_id;
  r->state = R_OPEN;
  r->parent = ckpt_g.open;
  r->top = r->parent ? r->parent->top : r;
  if (r->parent) {
    r->sibling = r->parent->kids;
    r->parent->kids = r;
  }
  r->hnext = buckets[r->id % NBUCKETS];
  buckets[r->id % NBUCKETS] = r;
  __atomic_store_n(&ckpt_g.open, r, __ATOMIC_RELAXED); /* read lock-free by ckpt_alloc */
  ckpt_g.stats.regions_opened++;
  r->ns = ckpt_name_stats(r->name);
  if (r->ns) r->ns->regions++;
  int id = r->id;
  CKPT_TRACE("region %d '%s' open", id, r->name);
  ckpt_trace(CKPT_T_REGION_OPEN, id, r->name, 0, 0, 0);
  char copy[sizeof r->name];
  memcpy(copy, r->name, sizeof copy);
  UNLOCK();
  ckpt_profile_begin(id, copy);
  return id;
}

CKPT_API int ckpt_region_end(void) {
  ckpt_init();
  if (ckpt_g.forked) return CKPT_EDISABLED;
  LOCK();
  struct region *r = ckpt_g.open;
  if (!r) {
    UNLOCK();
    CKPT_WARN_ONCE("ckpt_region_end() with no open region: ignored (unbalanced begin/end or NVTX push/pop)");
    return CKPT_ESTATE;
  }
  __atomic_store_n(&ckpt_g.open, r->parent, __ATOMIC_RELAXED);
  r->state = R_CLOSED;
  ckpt_g.stats.regions_closed++;
  int id = r->id;
  if (!r->parent && cycle_push(r) < 0) CKPT_WARN_ONCE("out of memory growing the region cycle");
  IN_LIB_BEGIN();
  if (!r->parent) ckpt_policy_region_closed(r);
  ckpt_reap();
  IN_LIB_END();
  ckpt_region_retire_maybe(r);
  ckpt_trace(CKPT_T_REGION_CLOSE, id, NULL, 0, 0, 0);
  ckpt_publish();
  UNLOCK();
  ckpt_profile_end(id);
  ckpt_stats_sample_device();
  CKPT_TRACE("region %d closed", id);
  return id;
}

CKPT_API int ckpt_query(uintptr_t dptr, int *region_id, int *residency) {
  ckpt_init();
  LOCK();
  struct talloc *t = ckpt_live_find((CUdeviceptr)dptr);
  int rc = CKPT_ENOENT;
  if (t) {
    if (region_id) *region_id = t->region ? t->region->id : 0;
    if (residency) *residency = t->state;
    rc = 0;
  }
  UNLOCK();
  if (rc && residency) *residency = CKPT_UNTAGGED;
  return rc;
}

CKPT_API int ckpt_step(void) {
  ckpt_init();
  if (ckpt_g.forked) return CKPT_EDISABLED;
  LOCK();
  ckpt_cycle_reset();
  ckpt_trace(CKPT_T_STEP, 0, NULL, 0, 0, 0);
  IN_LIB_BEGIN();
  ckpt_reap();
  IN_LIB_END();
  UNLOCK();
  return 0;
}
