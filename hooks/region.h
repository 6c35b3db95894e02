/* The region registry: ids, the tree of nested regions, the open stack, and
 * each region's list of tagged allocations. What happens when a region opens
 * or closes is api.c's and policy.c's. All under the core lock. */
#ifndef CKPT_REGION_H
#define CKPT_REGION_H
#include <stdbool.h>

struct talloc;

enum { R_OPEN, R_CLOSED };

struct region {
  int id;
  char name[64];
  int state;
  struct region *parent;   /* enclosing region when opened (open stack) */
  struct region *top;      /* outermost enclosing region */
  struct region *kids, *sibling; /* nested regions, for offload with the top */
  struct talloc *allocs;   /* live tagged allocations (survivors once closed) */
  int live;
  int jobs;                /* engine jobs in flight */
  int waiters;             /* API calls waiting on this tree */
  bool offloaded;          /* offloaded in this cycle (policy does it once) */
  bool restored;           /* the program asked to restore it in this cycle */
  int carried;             /* implicit cycle turns it was carried over (policy.c) */
  int cycle_pos;           /* index in the policy's cycle (top-level only), -1 if none */
  struct region *hnext;    /* id hash chain */
  struct ckpt_name_stats *ns; /* counters of its name (NULL: table full) */
};

/* A new region named `name`, not registered yet (no lock needed); NULL when
 * out of memory. */
struct region *ckpt_region_new(const char *name);
/* Registers r (an id) and opens it inside the innermost open region. */
void ckpt_region_push(struct region *r);
/* Closes the innermost open region; NULL when none is open. */
struct region *ckpt_region_pop(void);
struct region *ckpt_region_find(int id);
/* Whether nothing refers to the tree any more: all closed, no survivors, no
 * jobs, no waiters (the cycle is not looked at). */
bool ckpt_region_tree_idle(struct region *r);
/* Frees r's tree when it is idle and out of the cycle. */
void ckpt_region_retire_maybe(struct region *r);
void ckpt_region_attach(struct region *r, struct talloc *t);
void ckpt_region_detach(struct talloc *t);
#endif
