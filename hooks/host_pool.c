/* The host store (store.h): pinned host memory for offloaded data, as
 * host-located VMM handles (on the GPU's host NUMA node, vmm.h) so that a
 * survivor's own VA can be remapped onto them. Creating them is slow (~0.36 s
 * per GiB on an H200), so blocks are pooled by (device, size) and reused
 * every step; CKPT_HOST_MAX_BYTES caps the pool.
 *
 * Growth never runs on the program's thread, under the core lock, or while
 * the program's streams are held: a put that finds no free block returns a
 * pending held and queues the block for the pool's grower thread, which
 * creates and maps it with no lock of libckpt's held; the engine completes
 * the put (resume) once the block is there, before it closes any gate for
 * that job. The block list and the grow queue have their own mutex (taken
 * after the core lock, never the other way round), so the grower never
 * needs the core lock. */
#include <pthread.h>
#include <stdlib.h>

#include "check.h"
#include "params.h"
#include "state.h"
#include "store.h"
#include "vmm.h"

struct host_block {
  struct ckpt_held held; /* held.va: the block's own mapping, the copy engine's view */
  size_t size;
  int device;
  CUcontext ctx;   /* where the grower creates it */
  bool in_use;
  bool ready;      /* created and mapped (else queued for the grower or being made) */
  bool abandoned;  /* dropped while pending: joins the pool as a free block when made */
  CUresult rc;     /* the grower's failure, for the resume */
  struct host_block *next, *gnext;
};

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t grow_cv = PTHREAD_COND_INITIALIZER; /* work for the grower / it went idle */
static struct host_block *blocks, *grow_head, **grow_tail = &grow_head;
static uint64_t pool_bytes; /* made and being made */
static bool grower_started, growing, grower_stop;
static pthread_t grower;

static void publish_bytes(void) { ckpt_g.stats.host_pool_bytes = pool_bytes; } /* core lock held */

static void unlink_block(struct host_block *b) {
  for (struct host_block **pp = &blocks; *pp; pp = &(*pp)->next)
    if (*pp == b) {
      *pp = b->next;
      break;
    }
  pool_bytes -= b->size;
}

/* pool_mu held. */
static void block_destroy(struct host_block *b) {
  ckpt_vmm_teardown(b->held.va, b->size, b->held.handle, CKPT_VMM_UNMAP | CKPT_VMM_RELEASE | CKPT_VMM_FREE_VA,
                    false);
  unlink_block(b);
  free(b);
}

/* pool_mu held. Frees idle blocks until `need` more bytes fit under `cap` (all, cap 0). */
static bool make_room(uint64_t cap, size_t need) {
  for (struct host_block *b = blocks, *next; b && (cap == 0 || pool_bytes + need > cap); b = next) {
    next = b->next;
    if (!b->in_use && b->ready) block_destroy(b);
  }
  return pool_bytes + need <= cap;
}

/* The grower: makes queued blocks, holding no lock of libckpt's meanwhile. */
static void *grower_main(void *arg) {
  (void)arg;
  ckpt_in_lib = 1;
  pthread_mutex_lock(&pool_mu);
  for (;;) {
    while (!grow_head && !grower_stop) pthread_cond_wait(&grow_cv, &pool_mu);
    if (!grow_head) break; /* stopped (host_release_idle) with nothing queued */
    struct host_block *b = grow_head;
    if (!(grow_head = b->gnext)) grow_tail = &grow_head;
    growing = true;
    pthread_mutex_unlock(&pool_mu);
    DRV(cuCtxSetCurrent, b->ctx);
    CUresult r;
    CU_TRY_GOTO(ckpt_vmm_create_host(b->device, b->size, &b->held.handle), r, done);
    CU_TRY_GOTO(ckpt_vmm_reserve(b->size, ckpt_vmm_granularity(b->device, CKPT_VMM_BOTH), &b->held.va), r, fail_handle);
    CU_TRY_GOTO(ckpt_vmm_map(b->held.va, b->size, b->held.handle, CKPT_DEV_BIT(b->device)), r, fail_va);
    goto done;
  fail_va:
    ckpt_vmm_free_va(b->held.va, b->size);
  fail_handle:
    ckpt_vmm_release(b->held.handle);
  done:
    pthread_mutex_lock(&pool_mu);
    growing = false;
    if (r == CUDA_SUCCESS) {
      b->ready = true;
      if (b->abandoned) b->in_use = false;
    } else if (b->abandoned) {
      unlink_block(b);
      free(b);
    } else {
      b->rc = r;
    }
    pthread_cond_broadcast(&grow_cv);
  }
  pthread_mutex_unlock(&pool_mu);
  return NULL;
}

/* pool_mu held. A free block, or a pending one queued for the grower; NULL
 * with *fail when the pool may not grow. */
static struct host_block *block_get(int device, size_t size, struct ckpt_store_fail *fail) {
  for (struct host_block *b = blocks; b; b = b->next)
    if (!b->in_use && b->ready && b->device == device && b->size == size) {
      b->in_use = true;
      /* A block abandoned while pending joined the pool still marked
       * pending: left so, every put of it waited for the engine's resume. */
      b->held.pending = false;
      return b;
    }
  uint64_t cap = ckpt_param_host_max_bytes();
  if (pool_bytes + size > cap && !make_room(cap, size)) {
    fail->rc = CUDA_ERROR_OUT_OF_MEMORY;
    fail->capped = true;
    return NULL;
  }
  if (grower_stop) { /* the grower is being stopped (host_release_idle): no growth now */
    fail->rc = CUDA_ERROR_OUT_OF_MEMORY;
    return NULL;
  }
  struct host_block *b = calloc(1, sizeof *b);
  if (!b || (!grower_started && pthread_create(&grower, NULL, grower_main, NULL) != 0)) {
    free(b);
    fail->rc = CUDA_ERROR_OUT_OF_MEMORY;
    return NULL;
  }
  grower_started = true;
  b->held.store = &ckpt_host_store;
  b->held.pending = true;
  b->size = size;
  b->device = device;
  DRV(cuCtxGetCurrent, &b->ctx);
  b->in_use = true;
  b->next = blocks;
  blocks = b;
  pool_bytes += size;
  ckpt_g.stats.store_allocs++; /* core lock held (put) */
  *grow_tail = b;
  grow_tail = &b->gnext;
  pthread_cond_broadcast(&grow_cv);
  return b;
}

static CUresult copy_in(struct host_block *b, CUdeviceptr src, size_t bytes, CUstream stream,
                        struct ckpt_store_fail *fail) {
  CUresult r = DRV(cuMemcpyDtoDAsync_v2, b->held.va, src, bytes, stream);
  if (r != CUDA_SUCCESS) {
    CU_FAILED(cuMemcpyDtoDAsync_v2, r);
    pthread_mutex_lock(&pool_mu);
    b->in_use = false;
    pthread_mutex_unlock(&pool_mu);
    *fail = (struct ckpt_store_fail){.rc = r, .copy = true};
  }
  return r;
}

static struct ckpt_held *host_put(int device, size_t size, CUdeviceptr src, size_t bytes, CUstream stream,
                                  struct ckpt_store_fail *fail) {
  *fail = (struct ckpt_store_fail){.rc = CUDA_SUCCESS};
  pthread_mutex_lock(&pool_mu);
  struct host_block *b = block_get(device, size, fail);
  publish_bytes();
  pthread_mutex_unlock(&pool_mu);
  if (!b) return NULL;
  if (b->held.pending) return &b->held; /* the engine resumes it once the grower made it */
  return copy_in(b, src, bytes, stream, fail) == CUDA_SUCCESS ? &b->held : NULL;
}

static CUresult host_resume(struct ckpt_held *h, CUdeviceptr src, size_t bytes, CUstream stream,
                            struct ckpt_store_fail *fail) {
  struct host_block *b = (struct host_block *)h;
  *fail = (struct ckpt_store_fail){.rc = CUDA_SUCCESS};
  pthread_mutex_lock(&pool_mu);
  bool ready = b->ready;
  CUresult rc = b->rc;
  if (!ready && rc != CUDA_SUCCESS) { /* the grower could not make it */
    unlink_block(b);
    free(b);
  }
  publish_bytes();
  pthread_mutex_unlock(&pool_mu);
  if (!ready) {
    if (rc == CUDA_SUCCESS) return CUDA_ERROR_NOT_READY;
    fail->rc = rc;
    return rc;
  }
  h->pending = false;
  return copy_in(b, src, bytes, stream, fail);
}

static CUresult host_get(struct ckpt_held *h, CUdeviceptr dst, size_t bytes, CUstream stream) {
  CUresult r = DRV(cuMemcpyDtoDAsync_v2, dst, h->va, bytes, stream);
  if (r != CUDA_SUCCESS) CU_FAILED(cuMemcpyDtoDAsync_v2, r);
  return r;
}

static void host_drop(struct ckpt_held *h) {
  struct host_block *b = (struct host_block *)h;
  pthread_mutex_lock(&pool_mu);
  if (b->ready) {
    b->in_use = false;
  } else if (b->rc != CUDA_SUCCESS) { /* failed, never resumed */
    unlink_block(b);
    free(b);
  } else {
    b->abandoned = true; /* the grower frees or pools it */
  }
  publish_bytes();
  pthread_mutex_unlock(&pool_mu);
}

/* ---- blocks for another store (store.h) ---------------------------------- */

struct ckpt_held *ckpt_host_block_get(int device, size_t size, struct ckpt_store_fail *fail) {
  *fail = (struct ckpt_store_fail){.rc = CUDA_SUCCESS};
  pthread_mutex_lock(&pool_mu);
  struct host_block *b = block_get(device, size, fail);
  publish_bytes();
  pthread_mutex_unlock(&pool_mu);
  return b ? &b->held : NULL;
}

int ckpt_host_block_state(struct ckpt_held *h, CUresult *rc) {
  struct host_block *b = (struct host_block *)h;
  pthread_mutex_lock(&pool_mu);
  bool ready = b->ready;
  *rc = b->rc;
  if (!ready && *rc != CUDA_SUCCESS) { /* the grower could not make it */
    unlink_block(b);
    free(b);
  }
  publish_bytes();
  pthread_mutex_unlock(&pool_mu);
  if (ready) {
    h->pending = false;
    return 1;
  }
  return *rc == CUDA_SUCCESS ? 0 : -1;
}

void ckpt_host_block_drop(struct ckpt_held *h) { host_drop(h); }

/* Waits for the grower to finish what it makes, stops it (a later block_get
 * starts it again; joined, so exit leaves no thread behind), then frees every
 * idle block. */
static void host_release_idle(void) {
  pthread_mutex_lock(&pool_mu);
  while (grow_head || growing) pthread_cond_wait(&grow_cv, &pool_mu);
  bool join = grower_started;
  grower_stop = true;
  pthread_cond_broadcast(&grow_cv);
  pthread_mutex_unlock(&pool_mu);
  if (join) pthread_join(grower, NULL);
  pthread_mutex_lock(&pool_mu);
  grower_started = grower_stop = false;
  make_room(0, 0);
  publish_bytes();
  pthread_mutex_unlock(&pool_mu);
}

const struct ckpt_store ckpt_host_store = {
    .name = "host",
    .put = host_put,
    .resume = host_resume,
    .get = host_get,
    .drop = host_drop,
    .release_idle = host_release_idle,
};
