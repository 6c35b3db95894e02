/* The offload policy: when to offload which region, keep-last, the prefetch
 * fan-out, persistent buffers, and the cycle (the closed top-level regions of
 * the current forward pass, in close order). Lock held. */
#ifndef CKPT_POLICY_H
#define CKPT_POLICY_H
#include <stdbool.h>

struct region;

/* Reads CKPT_KEEP_LAST, CKPT_PREFETCH, CKPT_OFFLOAD (init). */
void ckpt_policy_init(void);
/* A region is about to open: true when this starts a new cycle (a restore
 * happened and no region is open: the next forward pass). */
bool ckpt_policy_region_opening(void);
/* A region closed: a top-level one joins the cycle, and the regions keep-last
 * no longer covers are offloaded (CKPT_OFFLOAD=auto). */
void ckpt_policy_region_closed(struct region *r);
/* The C API's verbs, on a tree's top; 0 or a negative CKPT_E* code. */
int ckpt_policy_offload(struct region *top);
int ckpt_policy_prefetch(struct region *top); /* the top and CKPT_PREFETCH regions before it */
int ckpt_policy_restore(struct region *top);  /* prefetch, then gate the caller's next work */
/* Ends the cycle (ckpt_step): persistent survivors are brought back and kept. */
void ckpt_policy_step(void);
#endif
