/* The peer stores (peer.h, store.h): this rank's slice of each survivor.
 *
 * Slice layout: for an allocation of `bytes` and P ranks, base = bytes/P
 * rounded down to ALIGN; rank r keeps bytes [r*base, (r+1)*base) and the
 * tail [P*base, bytes) (fewer than P*ALIGN bytes), which every rank keeps, so
 * no size has to divide by P and nothing is gathered past the allocation's
 * end (padding to P*ceil(bytes/P) could run past the mapping). Restore copies
 * the slice and the tail into place and all-gathers P*base bytes in place.
 *
 * Slices live in slabs: VMM mappings of device memory (peer) or of pinned
 * host memory (peer+host), sub-allocated by bumping, ALIGN-aligned; a slab
 * whose slices are all dropped starts again from 0. Room for a whole offload
 * job is made at once (job_begin), so a job wastes less than one granule.
 * Device slabs are given back when they empty, host slabs are kept (they
 * are slow to create). A host slab is a block of the host pool, made on the
 * pool's grower thread (store.h: nothing is created on the caller's thread):
 * a put into a slab still being made returns a pending held with its room
 * reserved, and resume copies the slice once the slab is there. The ranks'
 * descriptors are exchanged when the job starts (job_end), pending or not,
 * so each job is agreed on exactly once and in job order on every rank. A
 * slab the grower fails to make leaves its survivors on this rank's device;
 * the next restore of that region then disagrees and ends the group (said). CKPT_CONTIGUOUS=1 keeps every slab, and with
 * CKPT_NUMBER_CHECKPOINTS=N the first job makes one slab for N such jobs
 * (DeepSpeed's contiguous_memory_optimization): after warm-up no put
 * creates memory (stats: store_allocs, contiguous_bytes, allocs_avoided).
 *
 * The offloaded VA is left reserved and unmapped (handle 0): no memory on
 * this rank holds its data, and a stray touch faults rather than reading
 * something that looks like data. Lock held throughout. */
#include <stdio.h>
#include <stdlib.h>

#include "arena.h"
#include "check.h"
#include "copy.h"
#include "params.h"
#include "peer.h"
#include "state.h"
#include "store.h"
#include "vmm.h"

#define ALIGN 256

struct slab {
  CUdeviceptr va;
  size_t size, used;
  CUmemGenericAllocationHandle h; /* device slabs */
  struct ckpt_held *block;        /* host slabs: the host pool's block, NULL once failed */
  int device, live;
  bool pending;      /* host: the block is still being made (va 0) */
  bool failed;       /* host: the grower could not make it (rc); takes no more slices */
  CUresult rc;
  bool kept;         /* never given back when it empties (host, contiguous) */
  bool contiguous;   /* CKPT_CONTIGUOUS's buffer */
  uint64_t job;      /* the job that created it */
  struct slab *next;
};

struct peer_held {
  struct ckpt_held held; /* held.va: the slice in its slab */
  struct slab *slab;
  size_t base, tail, len, off; /* off: the slice's place in its slab */
  struct peer_held *next_free;
};

struct where {
  enum ckpt_vmm_location loc;
  const struct ckpt_store *store;
  struct slab *slabs;
  bool contiguous_made;
};
static struct where dev_w = {CKPT_VMM_DEVICE, &ckpt_peer_dev_store, NULL, false};
static struct where host_w = {CKPT_VMM_HOST, &ckpt_peer_host_store, NULL, false};
static struct peer_held *free_held; /* recycled records: no malloc after warm-up */
static uint64_t job_no;

static size_t round_up(size_t n, size_t g) { return (n + g - 1) / g * g; }

static void split(size_t bytes, size_t *base, size_t *tail) {
  size_t p = (size_t)ckpt_peer_size();
  *base = bytes / p / ALIGN * ALIGN;
  *tail = bytes - *base * p;
}

static size_t slice_len(size_t bytes) {
  size_t base, tail;
  split(bytes, &base, &tail);
  return round_up(base + tail, ALIGN);
}

static size_t slab_gran(int device, enum ckpt_vmm_location loc) {
  size_t d = ckpt_vmm_granularity(device, CKPT_VMM_DEVICE), h = ckpt_vmm_granularity(device, loc);
  return d > h ? d : h;
}

static struct slab *slab_new(struct where *w, int device, size_t need, bool contiguous, struct ckpt_store_fail *f) {
  struct slab *s = calloc(1, sizeof *s);
  if (!s) {
    f->rc = CUDA_ERROR_OUT_OF_MEMORY;
    return NULL;
  }
  s->size = round_up(need, slab_gran(device, w->loc));
  s->device = device;
  CUresult r;
  if (w->loc == CKPT_VMM_HOST) {
    if (!(s->block = ckpt_host_block_get(device, s->size, f))) { /* counted in store_allocs when new */
      free(s);
      return NULL;
    }
    s->pending = s->block->pending;
    s->va = s->pending ? 0 : s->block->va;
  } else {
    if ((r = ckpt_device_handle(device, s->size, &s->h)) != CUDA_SUCCESS) goto fail;
    if ((r = ckpt_vmm_reserve(s->size, slab_gran(device, w->loc), &s->va)) != CUDA_SUCCESS) goto fail_h;
    if ((r = ckpt_vmm_map(s->va, s->size, s->h, CKPT_DEV_BIT(device))) != CUDA_SUCCESS) goto fail_va;
    ckpt_g.stats.store_allocs++;
  }
  s->contiguous = contiguous;
  s->kept = contiguous || w->loc == CKPT_VMM_HOST || ckpt_param_int(CKPT_P_CONTIGUOUS);
  s->job = job_no;
  s->next = w->slabs;
  w->slabs = s;
  ckpt_g.stats.peer_slab_bytes += s->size;
  if (s->kept && ckpt_param_int(CKPT_P_CONTIGUOUS)) ckpt_g.stats.contiguous_bytes += s->size;
  return s;
fail_va:
  ckpt_vmm_free_va(s->va, s->size);
fail_h:
  ckpt_vmm_release(s->h);
fail:
  free(s);
  f->rc = r;
  return NULL;
}

static void slab_destroy(struct where *w, struct slab *s) {
  for (struct slab **pp = &w->slabs; *pp; pp = &(*pp)->next)
    if (*pp == s) {
      *pp = s->next;
      break;
    }
  if (s->block) ckpt_host_block_drop(s->block); /* back to the host pool (made or not) */
  else if (!s->failed) ckpt_vmm_teardown(s->va, s->size, s->h, CKPT_VMM_UNMAP | CKPT_VMM_RELEASE | CKPT_VMM_FREE_VA, true);
  ckpt_g.stats.peer_slab_bytes -= s->size;
  if (s->kept && ckpt_param_int(CKPT_P_CONTIGUOUS)) ckpt_g.stats.contiguous_bytes -= s->size;
  free(s);
}

static struct slab *slab_fit(struct where *w, int device, size_t len) {
  for (struct slab *s = w->slabs; s; s = s->next)
    if (s->device == device && !s->failed && s->size - s->used >= len) return s;
  return NULL;
}

/* 1: s is made (va mapped); 0: its block is still being made; -1: it failed. */
static int slab_ready(struct slab *s, CUresult *rc) {
  *rc = s->rc;
  if (s->failed) return -1;
  if (!s->pending) return 1;
  int st = ckpt_host_block_state(s->block, rc);
  if (st > 0) {
    s->pending = false;
    s->va = s->block->va;
  } else if (st < 0) {
    s->block = NULL; /* freed by the pool */
    s->failed = true;
    s->rc = *rc;
  }
  return st;
}

/* Enqueues the copy of this rank's slice and the tail of src into ph's place. */
static CUresult copy_slice(struct peer_held *ph, CUdeviceptr src, CUstream stream) {
  CUdeviceptr dst = ph->slab->va + ph->off;
  size_t r = (size_t)ckpt_peer_rank(), p = (size_t)ckpt_peer_size();
  CUresult rc = CUDA_SUCCESS;
  if (ph->base) rc = DRV(cuMemcpyDtoDAsync_v2, dst, src + r * ph->base, ph->base, stream);
  if (rc == CUDA_SUCCESS && ph->tail) rc = DRV(cuMemcpyDtoDAsync_v2, dst + ph->base, src + p * ph->base, ph->tail, stream);
  if (rc != CUDA_SUCCESS) CU_FAILED(cuMemcpyDtoDAsync_v2, rc);
  ph->held.va = dst;
  return rc;
}

/* ---- the store ------------------------------------------------------------ */

static void begin(struct where *w, int device, const size_t *bytes, int n) {
  job_no++;
  size_t need = 0;
  for (int i = 0; i < n; i++) need += slice_len(bytes[i]);
  if (!need || slab_fit(w, device, need)) return;
  struct ckpt_store_fail f;
  int64_t nck = ckpt_param_int(CKPT_P_NUMBER_CHECKPOINTS);
  if (ckpt_param_int(CKPT_P_CONTIGUOUS) && nck > 0 && !w->contiguous_made) {
    if (slab_new(w, device, need * (size_t)nck, true, &f)) {
      w->contiguous_made = true;
      return;
    }
    CKPT_WARN_ONCE("cannot create the contiguous slice buffer (%llu bytes for CKPT_NUMBER_CHECKPOINTS=%lld): %s; "
                   "slices get buffers of their own", (unsigned long long)(need * (size_t)nck), (long long)nck,
                   ckpt_cu_name(f.rc));
  }
  slab_new(w, device, need, false, &f); /* put says it when there is no room */
}

static struct ckpt_held *put(struct where *w, int device, CUdeviceptr src, size_t bytes, CUstream stream,
                             struct ckpt_store_fail *fail) {
  *fail = (struct ckpt_store_fail){.rc = CUDA_SUCCESS};
  struct peer_held *ph = free_held;
  if (ph) free_held = ph->next_free;
  else if (!(ph = calloc(1, sizeof *ph))) {
    fail->rc = CUDA_ERROR_OUT_OF_MEMORY;
    return NULL;
  }
  *ph = (struct peer_held){.held = {.store = w->store}};
  split(bytes, &ph->base, &ph->tail);
  ph->len = slice_len(bytes);
  struct slab *s = slab_fit(w, device, ph->len);
  if (!s && !(s = slab_new(w, device, ph->len, false, fail))) goto fail;
  if (s->contiguous && s->job != job_no) ckpt_g.stats.allocs_avoided++;
  ph->slab = s;
  ph->off = s->used;
  CUresult rc;
  int st = slab_ready(s, &rc);
  if (st < 0) {
    fail->rc = rc;
    goto fail;
  }
  if (st == 0) {
    ph->held.pending = true; /* its room is reserved; resume copies the slice */
  } else if ((rc = copy_slice(ph, src, stream)) != CUDA_SUCCESS) {
    *fail = (struct ckpt_store_fail){.rc = rc, .copy = true};
    goto fail;
  }
  s->used += ph->len;
  s->live++;
  ckpt_g.stats.peer_bytes_in_use += ph->len;
  return &ph->held;
fail:
  ph->next_free = free_held;
  free_held = ph;
  return NULL;
}

static CUresult get(struct ckpt_held *h, CUdeviceptr dst, size_t bytes, CUstream stream) {
  (void)bytes;
  struct peer_held *ph = (struct peer_held *)h;
  if (!ckpt_peer_active()) return CUDA_ERROR_NOT_READY; /* the other slices are gone (copy.c says it) */
  size_t r = (size_t)ckpt_peer_rank(), p = (size_t)ckpt_peer_size();
  CUresult rc = CUDA_SUCCESS;
  if (ph->base) rc = DRV(cuMemcpyDtoDAsync_v2, dst + r * ph->base, h->va, ph->base, stream);
  if (rc == CUDA_SUCCESS && ph->tail) rc = DRV(cuMemcpyDtoDAsync_v2, dst + p * ph->base, h->va + ph->base, ph->tail, stream);
  if (rc != CUDA_SUCCESS) CU_FAILED(cuMemcpyDtoDAsync_v2, rc);
  return rc;
}

static void drop(struct where *w, struct ckpt_held *h) {
  struct peer_held *ph = (struct peer_held *)h;
  struct slab *s = ph->slab;
  ckpt_g.stats.peer_bytes_in_use -= ph->len;
  if (--s->live == 0) {
    s->used = 0;
    if (!s->kept || s->failed) slab_destroy(w, s);
  }
  ph->next_free = free_held;
  free_held = ph;
}

/* A pending put (its host slab was being made): copies the slice once the
 * slab is there. A failed slab drops h (the engine forgets it). */
static CUresult resume(struct where *w, struct ckpt_held *h, CUdeviceptr src, CUstream stream,
                       struct ckpt_store_fail *fail) {
  struct peer_held *ph = (struct peer_held *)h;
  *fail = (struct ckpt_store_fail){.rc = CUDA_SUCCESS};
  CUresult rc;
  int st = slab_ready(ph->slab, &rc);
  if (st == 0) return CUDA_ERROR_NOT_READY;
  if (st > 0 && (rc = copy_slice(ph, src, stream)) == CUDA_SUCCESS) {
    h->pending = false;
    return CUDA_SUCCESS;
  }
  *fail = (struct ckpt_store_fail){.rc = rc, .copy = st > 0};
  drop(w, h);
  return rc;
}

static void release_idle(struct where *w) {
  for (struct slab *s = w->slabs, *next; s; s = next) {
    next = s->next;
    if (s->live == 0) slab_destroy(w, s);
  }
  w->contiguous_made = false;
}

static uint64_t fnv(uint64_t h, uint64_t v) {
  for (int i = 0; i < 8; i++) h = (h ^ ((v >> (8 * i)) & 0xff)) * 0x100000001b3ull;
  return h;
}

static CUresult job_end(const struct ckpt_store_job *job, CUstream stream, void **token) {
  struct ckpt_peer_desc d = {.kind = (uint32_t)job->kind, .region = job->region, .n = (uint32_t)job->n};
  snprintf(d.name, sizeof d.name, "%s", job->name ? job->name : "");
  d.sizes_hash = 0xcbf29ce484222325ull;
  for (int i = 0; i < job->n; i++) {
    d.bytes += job->items[i].bytes;
    d.sizes_hash = fnv(d.sizes_hash, job->items[i].bytes);
  }
  int slot;
  CUresult r = ckpt_peer_exchange(&d, stream, &slot);
  if (r != CUDA_SUCCESS) return r;
  *token = (void *)(intptr_t)(slot + 1);
  if (job->kind != JOB_TO_DEVICE) return CUDA_SUCCESS;
  /* The slices were copied into place by get: gather the rest in place. */
  if ((r = ckpt_peer_group_start()) != CUDA_SUCCESS) return r;
  for (int i = 0; i < job->n && r == CUDA_SUCCESS; i++) {
    struct peer_held *ph = (struct peer_held *)job->items[i].held;
    if (ph->base) r = ckpt_peer_allgather(job->items[i].dst, ph->base, stream);
  }
  CUresult e = ckpt_peer_group_end();
  return r != CUDA_SUCCESS ? r : e;
}

static CUresult job_verdict(void *token, int kind, CUresult copy_rc) {
  int slot = (int)(intptr_t)token - 1;
  /* After a failed job only the descriptors that arrived are compared: a
   * disagreement is then the cause, and is said as such. */
  bool agreed = ckpt_peer_agreed(slot, copy_rc != CUDA_SUCCESS);
  if (!agreed) {
    ckpt_g.stats.peer_mismatches++;
    if (kind != JOB_TO_HOST) {
      /* Gathered with ranks out of step: the bytes are garbage, and the
       * order of later collectives cannot be trusted either. */
      ckpt_peer_fail("ranks disagree at a restore (different regions, sizes or order)");
    } else if (copy_rc == CUDA_SUCCESS) {
      CKPT_WARN("the offload is rolled back on every rank (its survivors stay on the device)");
    }
  }
  if (copy_rc != CUDA_SUCCESS) return copy_rc;
  return agreed ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

static bool lost(const struct ckpt_held *h) {
  (void)h;
  return !ckpt_peer_active();
}

#define STORE(W, NAME, NAME_STR)                                                                                       \
  static struct ckpt_held *put_##W(int device, size_t size, CUdeviceptr src, size_t bytes, CUstream stream,      \
                                   struct ckpt_store_fail *fail) {                                             \
    (void)size;                                                                                                \
    return put(&W, device, src, bytes, stream, fail);                                                          \
  }                                                                                                            \
  static void drop_##W(struct ckpt_held *h) { drop(&W, h); }                                                   \
  static CUresult resume_##W(struct ckpt_held *h, CUdeviceptr src, size_t bytes, CUstream stream,              \
                             struct ckpt_store_fail *fail) {                                                   \
    (void)bytes;                                                                                               \
    return resume(&W, h, src, stream, fail);                                                                   \
  }                                                                                                            \
  static void release_##W(void) { release_idle(&W); }                                                          \
  static void begin_##W(int device, const size_t *bytes, int n) { begin(&W, device, bytes, n); }               \
  const struct ckpt_store NAME = {                                                                             \
      .name = NAME_STR,                                                                                        \
      .put = put_##W,                                                                                          \
      .resume = resume_##W,                                                                                    \
      .get = get,                                                                                              \
      .drop = drop_##W,                                                                                        \
      .release_idle = release_##W,                                                                             \
      .job_begin = begin_##W,                                                                                  \
      .job_end = job_end,                                                                                      \
      .job_wait = ckpt_peer_wait,                                                                              \
      .job_verdict = job_verdict,                                                                              \
      .lost = lost,                                                                                            \
  };
STORE(dev_w, ckpt_peer_dev_store, "peer")
STORE(host_w, ckpt_peer_host_store, "peer+host")
