/* Every exported ckpt_* function (include/ckpt.h) but the RNG ones (their
 * half is api_rng.c). Each starts with the one prologue (API_ENTER, api.h),
 * checks its arguments, takes the core lock, and calls the registry, the
 * policy or the engine; the observers are told afterwards, without the lock
 * where observe.h says so. */
#include <string.h>

#include "api.h"
#include "arena.h"
#include "check.h"
#include "engine.h"
#include "observe.h"
#include "params.h"
#include "peer.h"
#include "policy.h"
#include "region.h"
#include "rng.h"
#include "state.h"
#include "store.h"
#include "streams.h"
#include "submit.h"

/* Samples device usage from the driver (torch's pool counters do not see our
 * mappings). Cheap; at region close always, at region open when tracing. */
static void sample_device(void) {
  if (!ckpt_g.tagging) return;
  LOCK();
  ckpt_observe_mem(true);
  UNLOCK();
}

CKPT_API const char *ckpt_mode(void) {
  ckpt_init();
  /* A failed peer group left this rank offloading to the host. */
  if ((ckpt_g.mode == CKPT_MODE_PEER || ckpt_g.mode == CKPT_MODE_PEER_HOST) && ckpt_peer_failed()) return "host";
  return ckpt_mode_name(ckpt_g.mode);
}

/* ---- regions -------------------------------------------------------------- */

CKPT_API int ckpt_region_begin(const char *name) {
  API_ENTER();
  struct region *r = ckpt_region_new(name);
  if (!r) return CKPT_ENOMEM;
  LOCK();
  if (ckpt_policy_region_opening()) ckpt_trace(CKPT_T_STEP, 0, NULL, 0, 0, 0);
  ckpt_region_push(r);
  rng_region_opened(r->id); /* records the cuRAND generators' states */
  ckpt_g.stats.regions_opened++;
  r->ns = ckpt_name_stats(r->name);
  if (r->ns) r->ns->regions++;
  int id = r->id;
  CKPT_TRACE("region %d '%s' open", id, r->name);
  ckpt_trace(CKPT_T_REGION_OPEN, id, r->name, 0, 0, 0);
  if (ckpt_g.tagging) ckpt_observe_mem(false);
  char copy[sizeof r->name];
  memcpy(copy, r->name, sizeof copy);
  UNLOCK();
  ckpt_profile_begin(id, copy);
  return id;
}

CKPT_API int ckpt_region_end(void) {
  API_ENTER();
  LOCK();
  struct region *r = ckpt_region_pop();
  if (!r) {
    UNLOCK();
    CKPT_WARN_ONCE("ckpt_region_end() with no open region: ignored (unbalanced begin/end or NVTX push/pop)");
    return CKPT_ESTATE;
  }
  ckpt_g.stats.regions_closed++;
  int id = r->id;
  rng_region_closed(id);
  IN_LIB_BEGIN();
  ckpt_policy_region_closed(r);
  ckpt_reap();
  IN_LIB_END();
  ckpt_region_retire_maybe(r);
  ckpt_trace(CKPT_T_REGION_CLOSE, id, NULL, 0, 0, 0);
  ckpt_publish();
  UNLOCK();
  ckpt_profile_end(id);
  sample_device();
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
  API_ENTER();
  LOCK();
  ckpt_policy_step();
  ckpt_trace(CKPT_T_STEP, 0, NULL, 0, 0, 0);
  IN_LIB_BEGIN();
  ckpt_reap();
  IN_LIB_END();
  UNLOCK();
  return 0;
}

/* ---- offload, prefetch, restore ------------------------------------------ */

/* A region's tree top, or NULL (lock held). */
static struct region *tree_of(int id) {
  struct region *r = ckpt_region_find(id);
  return r ? r->top : NULL;
}

/* Runs verb on the tree of region id (or of the allocation holding dptr,
 * when by_ptr), lock held, in-lib; the tree's top id in *top_id (0: none). */
static int on_tree(int (*verb)(struct region *), int id, uintptr_t dptr, bool by_ptr, int *top_id) {
  IN_LIB_BEGIN();
  LOCK();
  struct region *top = NULL;
  if (by_ptr) {
    struct talloc *t = ckpt_live_find((CUdeviceptr)dptr);
    top = t && t->region ? t->region->top : NULL;
  } else {
    top = tree_of(id);
  }
  int rc = top ? verb(top) : CKPT_ENOENT;
  *top_id = top ? top->id : 0; /* read before unlocking: the tree may retire */
  UNLOCK();
  IN_LIB_END();
  return rc;
}

static int offload_closed(struct region *top) {
  return top->state == R_OPEN ? CKPT_ESTATE : ckpt_policy_offload(top);
}

CKPT_API int ckpt_offload(int id) {
  API_ENTER();
  int top_id;
  return on_tree(offload_closed, id, 0, false, &top_id);
}

CKPT_API int ckpt_prefetch(int id) {
  API_ENTER();
  int top_id;
  return on_tree(ckpt_policy_prefetch, id, 0, false, &top_id);
}

CKPT_API int ckpt_restore(int id) {
  API_ENTER();
  int top_id;
  int rc = on_tree(ckpt_policy_restore, id, 0, false, &top_id);
  if (top_id) ckpt_profile_restore(top_id);
  return rc;
}

CKPT_API int ckpt_restore_ptr(uintptr_t dptr) {
  API_ENTER();
  int top_id;
  int rc = on_tree(ckpt_policy_restore, 0, dptr, true, &top_id);
  if (top_id) ckpt_profile_restore(top_id);
  return rc;
}

CKPT_API int ckpt_wait(int id) {
  API_ENTER();
  LOCK();
  struct region *top = tree_of(id);
  int rc = CKPT_ENOENT;
  if (top) {
    rc = ckpt_engine_wait_settled(top, false, true) ? 0 : CKPT_ETIMEDOUT;
    ckpt_region_retire_maybe(top);
  }
  UNLOCK();
  return rc;
}

/* ---- streams, memory, stats, profiling ----------------------------------- */

CKPT_API int ckpt_set_stream(uintptr_t cu_stream) {
  ckpt_init();
  ckpt_profile_set_stream(cu_stream);
  if (!ckpt_g.tagging) return 0;
  CUdevice dev;
  if (DRV(cuCtxGetDevice, &dev) != CUDA_SUCCESS) return CKPT_EDRIVER;
  LOCK();
  ckpt_note_stream(cu_stream ? (CUstream)cu_stream : CU_STREAM_LEGACY, dev);
  UNLOCK();
  return 0;
}

CKPT_API int ckpt_release_cached(void) {
  API_ENTER();
  IN_LIB_BEGIN();
  LOCK();
  ckpt_reap();
  size_t n = ckpt_cache_trim((size_t)-1);
  ckpt_peer_dev_store.release_idle();
  ckpt_peer_host_store.release_idle(); /* its idle slabs' blocks go back to the host pool */
  ckpt_host_store.release_idle();      /* idle pinned blocks too */
  UNLOCK();
  IN_LIB_END();
  return n > 0x7fffffff ? 0x7fffffff : (int)n;
}

CKPT_API int ckpt_stats_get(struct ckpt_stats *out, size_t size) {
  if (!out || size < sizeof(uint64_t)) return CKPT_EINVAL;
  ckpt_init();
  struct ckpt_stats s;
  LOCK();
  ckpt_stats_snapshot(&s);
  UNLOCK();
  if (size > sizeof s) size = sizeof s;
  memcpy(out, &s, size);
  if (size >= sizeof s.size) out->size = size;
  return 0;
}

CKPT_API int ckpt_profile_set(int profile, int synchronize) {
  API_ENTER();
  ckpt_profile_init(profile != 0, synchronize != 0);
  return 0;
}

/* ---- peer group, pinning -------------------------------------------------- */

CKPT_API int ckpt_peer_unique_id(char *out, size_t len) {
  API_ENTER();
  IN_LIB_BEGIN();
  int rc = ckpt_peer_group_unique_id(out, len);
  IN_LIB_END();
  return rc;
}

/* Not under the core lock: the join waits for the other ranks. */
CKPT_API int ckpt_peer_init(const char *id, size_t len, int size, int rank) {
  API_ENTER();
  if (!ckpt_g.tagging) return CKPT_EDISABLED;
  IN_LIB_BEGIN();
  int rc = ckpt_peer_group_init(id, len, size, rank);
  IN_LIB_END();
  return rc;
}

CKPT_API int ckpt_pin(uintptr_t ptr) {
  API_ENTER();
  IN_LIB_BEGIN();
  LOCK();
  struct talloc *t = ckpt_live_find((CUdeviceptr)ptr);
  int rc = CKPT_ENOENT;
  if (t) {
    t->keep = true; /* the policy never offloads a kept allocation */
    rc = 0;
    if (t->state != CKPT_DEVICE && t->region) {
      struct region *top = t->region->top;
      rc = ckpt_policy_restore(top);
      ckpt_engine_wait_settled(top, false, false);
    }
  }
  UNLOCK();
  IN_LIB_END();
  return rc;
}
