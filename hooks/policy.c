/* The offload policy (policy.h). */
#include <stdlib.h>

#include "arena.h"
#include "copy.h"
#include "engine.h"
#include "log.h"
#include "observe.h"
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

/* CKPT_BUDGET. auto: a region's offload costs bytes / bandwidth of link time
 * each way; the compute of the regions that close (forward) and run backward
 * earns that time. A region is offloaded when the time earned and not yet
 * spent covers its copies in both directions, otherwise it stays on the
 * device: the link never carries more than the compute can hide. */
static int budget_mode;
static uint64_t budget_bytes;
static double credit[2];     /* seconds of link time earned, not yet spent, per direction */
static bool probe_sent;      /* auto: one offload sent to measure the link */
#define HEADROOM 0.8         /* of the compute: gates, fences and jitter take the rest */
#define CREDIT_REGIONS 8     /* time earned is kept for this many regions' compute at most */

void ckpt_policy_init(void) {
  keep_last = (int)ckpt_param_int(CKPT_P_KEEP_LAST);
  prefetch = (int)ckpt_param_int(CKPT_P_PREFETCH);
  auto_offload = ckpt_param_int(CKPT_P_OFFLOAD) == CKPT_OFFLOAD_AUTO;
  int64_t b = ckpt_param_int(CKPT_P_BUDGET);
  budget_mode = b == -1 ? CKPT_BUDGET_AUTO : b == -2 ? CKPT_BUDGET_OFF : CKPT_BUDGET_BYTES;
  budget_bytes = b >= 0 ? (uint64_t)b : 0;
  ckpt_g.stats.budget_mode = (uint64_t)budget_mode;
  ckpt_g.stats.budget_bytes = budget_bytes;
  if (budget_mode == CKPT_BUDGET_AUTO) ckpt_profile_measure();
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

/* Device bytes held by a tree's survivors (not the persistent ones). */
static uint64_t tree_device_bytes(const struct region *r) {
  uint64_t n = 0;
  for (const struct talloc *t = r->allocs; t; t = t->rnext)
    if (t->state == CKPT_DEVICE && !t->keep) n += t->size;
  for (const struct region *k = r->kids; k; k = k->sibling) n += tree_device_bytes(k);
  return n;
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
  if (ckpt_g.mode == CKPT_MODE_PEER || ckpt_g.mode == CKPT_MODE_PEER_HOST) ckpt_engine_wait_settled(top, true, false);
  cancel_offload(top);
  return tree_job(JOB_TO_DEVICE, top);
}

/* Restoring region k prefetches the CKPT_PREFETCH regions closed before it,
 * so that their copies overlap backward's compute. */
int ckpt_policy_prefetch(struct region *top) {
  int rc = prefetch_tree(top);
  int pos = top->cycle_pos;
  for (int i = 1, n = 0; pos >= 0 && n < prefetch && pos - i >= 0; i++) {
    /* Under a budget the regions it kept on the device need no copy: the
     * fan-out counts offloaded ones, so that a restore longer than one
     * region's backward starts early enough to hide. */
    if (budget_mode != CKPT_BUDGET_OFF && !cycle[pos - i]->offloaded) continue;
    int r = prefetch_tree(cycle[pos - i]);
    if (r < 0 && rc == 0) rc = r;
    n++;
  }
  return rc;
}

/* Restore = prefetch, then hold the program's streams at a gate placed now,
 * before any work the caller enqueues next: that work runs after the swap
 * and reads device memory, and the host never waits. Without gates (an old
 * driver), the host waits for the swap instead. */
int ckpt_policy_restore(struct region *top) {
  top->restored = true;
  int rc = ckpt_policy_prefetch(top);
  if (ckpt_engine_gate_restores(top)) ckpt_engine_wait_settled(top, true, false);
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

/* A turn the program did not mark (a region opening after a restore) is not
 * always the end of a forward pass: in a pipeline schedule (1F1B) forwards of
 * one micro-batch interleave with backwards of another, and the older
 * micro-batches' regions are still waiting for their backward. A region
 * whose restore the program never asked for is carried into the next cycle
 * (up to CARRY_MAX turns), not taken for persistent; a persistent buffer sits
 * in a region that backward did restore (the first region's cuBLAS
 * workspace), so it is still found at the first turn. */
#define CARRY_MAX 32

static bool carries(struct region *r) {
  return !r->restored && r->carried < CARRY_MAX && tree_live(r) > 0;
}

static void cycle_turn(bool implicit) {
  int n = ncycle, k = 0;
  ncycle = 0;
  offload_cursor = 0; /* carried regions not offloaded yet are decided again */
  cycle_restored = false;
  for (int i = 0; i < n; i++) {
    struct region *r = cycle[i];
    if (implicit && carries(r)) {
      r->carried++;
      r->cycle_pos = k;
      cycle[k++] = r;
      continue;
    }
    cycle_end(r);
    r->cycle_pos = -1;
    r->restored = false;
    r->carried = 0;
    ckpt_region_retire_maybe(r);
  }
  ncycle = k;
  ckpt_g.stats.regions_carried = (uint64_t)k;
  if (k) return; /* backwards still to come keep the link busy: credit stands */
  credit[0] = credit[1] = 0; /* the link is idle at the turn of the step: nothing carried over */
  probe_sent = false;
}

void ckpt_policy_step(void) { cycle_turn(false); }

bool ckpt_policy_region_opening(void) {
  if (ckpt_g.open || !cycle_restored) return false;
  cycle_turn(true);
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

/* ---- the budget ----------------------------------------------------------- */

static void budget_kept(uint64_t bytes, int why) {
  ckpt_g.stats.budget_why = (uint64_t)why;
  ckpt_g.stats.budget_kept_regions++;
  ckpt_g.stats.budget_kept_bytes += bytes;
}

/* The link bandwidth measured in this run, bytes per second; h2d as d2h
 * until a restore was measured (a PCIe or C2C link is symmetric). */
static bool link_rate(double rate[2]) {
  double b, sec;
  if (!ckpt_engine_link(JOB_TO_HOST, &b, &sec)) return false;
  rate[JOB_TO_HOST] = b / sec;
  rate[JOB_TO_DEVICE] = ckpt_engine_link(JOB_TO_DEVICE, &b, &sec) ? b / sec : rate[JOB_TO_HOST];
  return true;
}

/* auto: region r closed: its compute (the mean of its name's) earns link
 * time, forward for the offloads, backward for the restores. */
static void budget_earn(const struct region *r) {
  double fwd = 0, bwd = 0;
  if (!ckpt_profile_compute(r->name, &fwd, &bwd)) return;
  if (bwd <= 0) bwd = fwd; /* backward is no shorter than forward */
  double earn[2] = {HEADROOM * fwd, HEADROOM * bwd};
  for (int k = 0; k < 2; k++) {
    credit[k] += earn[k];
    if (credit[k] > CREDIT_REGIONS * earn[k]) credit[k] = CREDIT_REGIONS * earn[k];
  }
}

/* auto: offload c if the time earned covers its copies both ways (spent
 * then), else keep it on the device. */
static void budget_auto(struct region *c) {
  double rate[2], fwd = 0, bwd = 0;
  uint64_t bytes = tree_device_bytes(c);
  if (!bytes) return;
  bool timed = ckpt_profile_compute(c->name, &fwd, &bwd);
  if (!link_rate(rate) || !timed) {
    /* Not measured yet: one offload a step measures the link, the rest waits. */
    if (!probe_sent && !link_rate(rate)) {
      probe_sent = true;
      ckpt_g.stats.budget_why = CKPT_BUDGET_WHY_MEASURING;
      ckpt_policy_offload(c);
    } else {
      budget_kept(bytes, CKPT_BUDGET_WHY_MEASURING);
    }
    return;
  }
  double cost[2] = {(double)bytes / rate[0], (double)bytes / rate[1]};
  ckpt_g.stats.budget_copy_ratio = fwd > 0 ? cost[0] / fwd : 0;
  if (credit[0] >= cost[0] && credit[1] >= cost[1]) {
    credit[0] -= cost[0];
    credit[1] -= cost[1];
    ckpt_g.stats.budget_why = CKPT_BUDGET_WHY_HIDDEN;
    ckpt_policy_offload(c);
  } else {
    budget_kept(bytes, CKPT_BUDGET_WHY_LINK);
  }
}

/* bytes: offload the oldest survivors until those on the device fit. */
static void budget_fit(void) {
  uint64_t held = 0;
  for (int i = 0; i < ncycle; i++)
    if (!cycle[i]->offloaded) held += tree_device_bytes(cycle[i]);
  bool over = held > budget_bytes;
  for (int i = 0; i < ncycle && held > budget_bytes; i++) {
    struct region *c = cycle[i];
    if (c->offloaded) continue;
    uint64_t b = tree_device_bytes(c);
    ckpt_policy_offload(c);
    held -= b;
  }
  ckpt_g.stats.budget_survivor_bytes = held;
  if (over) ckpt_g.stats.budget_why = CKPT_BUDGET_WHY_OVER;
  else if (held) ckpt_g.stats.budget_why = CKPT_BUDGET_WHY_UNDER;
}

void ckpt_policy_region_closed(struct region *r) {
  if (r->parent) return;
  if (cycle_push(r) < 0) CKPT_WARN_ONCE("out of memory growing the region cycle");
  if (!auto_offload || ckpt_g.mode == CKPT_MODE_NONE) return;
  if (budget_mode == CKPT_BUDGET_BYTES) {
    budget_fit(); /* the byte budget decides, not keep-last */
    return;
  }
  if (budget_mode == CKPT_BUDGET_AUTO) budget_earn(r);
  /* Everything before the cursor has been decided: each close costs O(1). */
  for (; offload_cursor <= r->cycle_pos - keep_last; offload_cursor++) {
    struct region *c = cycle[offload_cursor];
    if (c->offloaded) continue;
    if (budget_mode == CKPT_BUDGET_AUTO) budget_auto(c);
    else ckpt_policy_offload(c);
  }
  if (budget_mode == CKPT_BUDGET_AUTO) {
    uint64_t held = 0;
    for (int i = 0; i < ncycle; i++)
      if (!cycle[i]->offloaded) held += tree_device_bytes(cycle[i]);
    ckpt_g.stats.budget_survivor_bytes = held;
  }
}
