/* The region registry (region.h). */
#include <stdio.h>
#include <stdlib.h>

#include "arena.h"
#include "region.h"
#include "rng.h"
#include "state.h"

#define NBUCKETS 1024
static struct region *buckets[NBUCKETS];
static int next_id;

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

struct region *ckpt_region_new(const char *name) {
  struct region *r = calloc(1, sizeof *r);
  if (!r) return NULL;
  snprintf(r->name, sizeof r->name, "%s", name ? name : "");
  r->cycle_pos = -1;
  return r;
}

void ckpt_region_push(struct region *r) {
  r->id = ++next_id;
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
}

struct region *ckpt_region_pop(void) {
  struct region *r = ckpt_g.open;
  if (!r) return NULL;
  __atomic_store_n(&ckpt_g.open, r->parent, __ATOMIC_RELAXED);
  r->state = R_CLOSED;
  return r;
}

bool ckpt_region_tree_idle(struct region *r) {
  if (r->state == R_OPEN || r->live || r->jobs || r->waiters) return false;
  for (struct region *k = r->kids; k; k = k->sibling)
    if (!ckpt_region_tree_idle(k)) return false;
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
  rng_region_retired(r->id); /* can no longer be recomputed: drop its RNG record */
  free(r);
}

void ckpt_region_retire_maybe(struct region *r) {
  r = r->top;
  if (r->cycle_pos >= 0 || !ckpt_region_tree_idle(r)) return;
  tree_free(r);
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
