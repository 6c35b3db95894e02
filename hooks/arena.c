/* The VMM arena: each tagged allocation is its own reserved VA range backed by
 * one device handle, so offload can swap its backing without moving it.
 * Freed mappings are cached by (device, size) so a repeated step makes no
 * driver calls; frees are honoured in stream order. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "arena.h"
#include "check.h"
#include "observe.h"
#include "params.h"
#include "region.h"
#include "state.h"
#include "store.h"
#include "streams.h"
#include "submit.h"
#include "vmm.h"

/* ---- live index: sorted by va, for interior-pointer look-ups ------------- */

static struct talloc **live;
static size_t nlive, cap_live;

static size_t min_bytes; /* CKPT_MIN_BYTES: smaller allocations pass through */

void ckpt_arena_init(size_t min) { min_bytes = min; }

static size_t live_lower_bound(CUdeviceptr p) {
  size_t lo = 0, hi = nlive;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (live[mid]->va <= p) lo = mid + 1;
    else hi = mid;
  }
  return lo; /* first element with va > p */
}

struct talloc *ckpt_live_find(CUdeviceptr p) {
  size_t i = live_lower_bound(p);
  if (i == 0) return NULL;
  struct talloc *t = live[i - 1];
  return p < t->va + t->req ? t : NULL;
}

static int live_insert(struct talloc *t) {
  if (nlive == cap_live) {
    size_t cap = cap_live ? 2 * cap_live : 256;
    struct talloc **n = realloc(live, cap * sizeof *n);
    if (!n) return CKPT_ENOMEM;
    live = n;
    cap_live = cap;
  }
  size_t i = live_lower_bound(t->va);
  memmove(&live[i + 1], &live[i], (nlive - i) * sizeof *live);
  live[i] = t;
  nlive++;
  return 0;
}

static void live_remove(struct talloc *t) {
  size_t i = live_lower_bound(t->va);
  if (i == 0 || live[i - 1] != t) return;
  memmove(&live[i - 1], &live[i], (nlive - i) * sizeof *live);
  nlive--;
}

/* The driver ran out of memory for an allocation libckpt passed through:
 * give back what the mapping cache holds so that the retry can succeed. */
bool ckpt_release_for_oom(void) {
  if (!ckpt_g.tagging || ckpt_in_lib) return false;
  IN_LIB_BEGIN();
  LOCK();
  ckpt_reap();
  size_t n = ckpt_cache_trim((size_t)-1);
  UNLOCK();
  IN_LIB_END();
  if (n) CKPT_INFO("driver out of memory: released %zu cached bytes and retried", n);
  return n > 0;
}


/* ---- device memory ------------------------------------------------------ */

size_t ckpt_granularity(int device) { return ckpt_vmm_granularity(device, CKPT_VMM_BOTH); }

/* Device memory, making room when the driver says it has none: first our own
 * cache, then the stream-ordered pool (torch keeps freed memory there). */
CUresult ckpt_device_handle(int device, size_t size, CUmemGenericAllocationHandle *out) {
  CUresult r = ckpt_vmm_create_device(device, size, out);
  if (r == CUDA_ERROR_OUT_OF_MEMORY && ckpt_cache_trim(size) > 0) r = ckpt_vmm_create_device(device, size, out);
  if (r == CUDA_ERROR_OUT_OF_MEMORY && ckpt_vmm_trim_pool(device) == CUDA_SUCCESS)
    r = ckpt_vmm_create_device(device, size, out);
  return r;
}

/* ---- mapping cache and stream-ordered frees ------------------------------ */

#define NCLASS 64
static struct talloc *cache[NCLASS]; /* T_CACHED, by size */
static struct talloc *pending;       /* freed, their stream not past the free yet */

static unsigned size_class(size_t size) { return (unsigned)((size >> 21) * 2654435761u) % NCLASS; }

static void talloc_destroy(struct talloc *t) {
  unsigned what = CKPT_VMM_FREE_VA | (t->dev ? CKPT_VMM_UNMAP | CKPT_VMM_RELEASE : 0);
  ckpt_vmm_teardown(t->va, t->size, t->dev, what, true);
  if (t->free_ev) DRV(cuEventDestroy_v2, t->free_ev);
  free(t);
}

static void cache_put(struct talloc *t) {
  if (ckpt_g.exiting) { /* released at exit: nothing is cached any more */
    talloc_destroy(t);
    return;
  }
  t->state = T_CACHED;
  t->next = cache[size_class(t->size)];
  cache[size_class(t->size)] = t;
  ckpt_g.stats.mapping_cache_bytes += t->size;
  size_t cap = (size_t)ckpt_param_int(CKPT_P_CACHE_MAX_BYTES);
  if (cap != (size_t)-1 && ckpt_g.stats.mapping_cache_bytes > cap)
    ckpt_cache_trim(ckpt_g.stats.mapping_cache_bytes - cap);
}

static struct talloc *cache_take(int device, size_t size) {
  for (struct talloc **pp = &cache[size_class(size)]; *pp; pp = &(*pp)->next) {
    struct talloc *t = *pp;
    if (t->device == device && t->size == size) {
      *pp = t->next;
      ckpt_g.stats.mapping_cache_bytes -= t->size;
      return t;
    }
  }
  return NULL;
}

/* A mapping freed on the same stream may be reused at once: stream order
 * already puts the new owner's work after the old owner's. */
static struct talloc *pending_take_same_stream(int device, size_t size, CUstream s) {
  if (s == CU_STREAM_PER_THREAD) return NULL; /* names a different stream on each thread */
  for (struct talloc **pp = &pending; *pp; pp = &(*pp)->next) {
    struct talloc *t = *pp;
    if (!t->busy && !t->free_deferred && t->state == CKPT_DEVICE && t->free_stream == s && t->device == device &&
        t->size == size) {
      *pp = t->next;
      return t;
    }
  }
  return NULL;
}

size_t ckpt_cache_trim(size_t want) {
  size_t freed = 0;
  for (int c = 0; c < NCLASS && freed < want; c++)
    while (cache[c] && freed < want) {
      struct talloc *t = cache[c];
      cache[c] = t->next;
      ckpt_g.stats.mapping_cache_bytes -= t->size;
      freed += t->size;
      talloc_destroy(t);
    }
  return freed;
}

/* The program's free has taken effect (its stream is past it). */
static void finish_free(struct talloc *t) {
  t->freed = false;
  /* A survivor that was offloaded gets no cache entry: keeping its restored
   * memory would hold on the device, through the next forward pass, exactly
   * what offloading freed. Temporaries are cached and reused every step. */
  if (t->state == CKPT_DEVICE && t->dev && !t->moved) {
    cache_put(t);
    return;
  }
  /* Host-backed (t->dev is 0): unmap the host block here, the pool keeps it. */
  if (t->held) { /* peer slices (no handle): the VA is not mapped */
    if (t->held->handle) ckpt_vmm_teardown(t->va, t->size, 0, CKPT_VMM_UNMAP, true);
    ckpt_g.stats.host_bytes_in_use -= t->size;
    ckpt_g.stats.device_bytes_released -= t->size;
    ckpt_held_drop(t->held);
    t->held = NULL;
  }
  talloc_destroy(t); /* unmaps and releases device memory still held */
}

/* A free on the legacy stream while a capture was active on the device: its
 * event is recorded once no capture is (a record on the legacy stream would
 * join a blocking stream's capture: CUDA_ERROR_STREAM_CAPTURE_IMPLICIT, the
 * capture invalidated). Recorded later than the free: the mapping only lives
 * longer. False while the event is not recorded: an unrecorded event reads
 * as complete. */
static bool record_deferred(struct talloc *t) {
  if (!t->free_deferred) return true;
  if (ckpt_captures_active(t->device)) return false;
  CUresult r = DRV(cuEventRecord, t->free_ev, t->free_stream);
  if (r != CUDA_SUCCESS) {
    CU_FAILED(cuEventRecord, r);
    t->busy = true; /* retired without reuse, as in ckpt_free */
    return false;
  }
  t->free_deferred = false;
  return true;
}

/* At exit a program stream may never pass a free (blocked on a wait-value
 * nobody writes, or still busy): the frees are waited for at most this long
 * in all, as the engine's stop is (engine.c). */
#define EXIT_WAIT_S 2.0

/* The free's event complete by `deadline` (polled; an error reads as not). */
static bool free_passed_by(struct talloc *t, double deadline) {
  struct timespec ts = {0, 0};
  for (unsigned spin = 0;; spin++) {
    CUresult r = ckpt_event_query(t->free_ev);
    if (r == CUDA_SUCCESS) return true;
    if (r != CUDA_ERROR_NOT_READY || ckpt_now() > deadline) return false;
    ts.tv_nsec = spin < 7 ? 10000L << spin : 1000000L; /* 10 us doubling to 1 ms */
    nanosleep(&ts, NULL);
  }
}

bool ckpt_arena_release_all(void) {
  double deadline = ckpt_now() + EXIT_WAIT_S;
  size_t late = 0, late_bytes = 0;
  char names[256] = "";
  for (struct talloc **pp = &pending; *pp;) {
    struct talloc *t = *pp;
    /* Once its stream is past the program's free, nothing touches it. */
    bool waitable = !t->busy && record_deferred(t);
    if (waitable && free_passed_by(t, deadline)) {
      *pp = t->next;
      finish_free(t);
      continue;
    }
    if (waitable) { /* the stream may still use it: left to the process's end */
      late++;
      late_bytes += t->size;
      size_t used = strlen(names);
      if (late <= 4)
        snprintf(names + used, sizeof names - used, "%s%#llx (%zu bytes, stream %p)", late > 1 ? ", " : "",
                 (unsigned long long)t->va, t->size, (void *)t->free_stream);
    }
    pp = &t->next;
  }
  if (late)
    CKPT_WARN("at exit: %zu freed tagged mapping(s), %zu bytes, not released: their stream did not pass the "
              "program's free within %.0f s (blocked or still running): %s%s",
              late, late_bytes, EXIT_WAIT_S, names, late > 4 ? ", ..." : "");
  ckpt_cache_trim((size_t)-1);
  return late == 0;
}

void ckpt_reap(void) {
  for (struct talloc **pp = &pending; *pp;) {
    struct talloc *t = *pp;
    if (!t->busy && record_deferred(t) && ckpt_event_query(t->free_ev) == CUDA_SUCCESS) {
      *pp = t->next;
      finish_free(t);
    } else {
      pp = &t->next;
    }
  }
}

/* ---- the hooks ------------------------------------------------------------ */

static CUstream norm_stream(CUstream s) { return s ? s : CU_STREAM_LEGACY; }

static CUresult talloc_create(int device, CUcontext ctx, size_t size, ckpt_devmask access, struct talloc **out) {
  struct talloc *t = calloc(1, sizeof *t);
  if (!t) return CUDA_ERROR_OUT_OF_MEMORY;
  t->device = device;
  t->ctx = ctx;
  t->size = size;
  t->access = access;
  CUresult r;
  unsigned undo = 0; /* what a failure undoes */
  CU_TRY_GOTO(ckpt_vmm_reserve(size, ckpt_granularity(device), &t->va), r, fail);
  undo = CKPT_VMM_FREE_VA;
  CU_TRY_GOTO(ckpt_device_handle(device, size, &t->dev), r, fail);
  undo |= CKPT_VMM_RELEASE;
  CU_TRY_GOTO(ckpt_vmm_map(t->va, size, t->dev, access), r, fail);
  undo |= CKPT_VMM_UNMAP;
  CU_TRY_GOTO(DRV(cuEventCreate, &t->free_ev, CU_EVENT_DISABLE_TIMING), r, fail);
  *out = t;
  return CUDA_SUCCESS;
fail:
  if (undo) ckpt_vmm_teardown(t->va, size, t->dev, undo, false);
  free(t);
  return r;
}

/* Under stream capture an allocation becomes a graph node whose address is
 * fixed across replays: not libckpt's to tag. Asked only on the would-be-tagged path. */
static bool captured(CUstream stream) {
  if (!ckpt_stream_capturing(stream)) return false;
  __atomic_add_fetch(&ckpt_g.hot.captured_allocs, 1, __ATOMIC_RELAXED);
  return true;
}

/* A cached mapping gets the access the pool grants now. */
static bool regrant(struct talloc *t, ckpt_devmask access) {
  CUresult r = ckpt_vmm_set_access(t->va, t->size, access, t->access & ~access);
  if (r != CUDA_SUCCESS) {
    CU_FAILED(cuMemSetAccess, r);
    return false;
  }
  t->access = access;
  return true;
}

bool ckpt_alloc(CUdeviceptr *dptr, size_t bytes, CUstream stream, CUresult *rc) {
  if (!ckpt_g.tagging || bytes < min_bytes || ckpt_in_lib) return false;
  if (__atomic_load_n(&ckpt_g.tag_off, __ATOMIC_RELAXED)) return false;
  if (!__atomic_load_n(&ckpt_g.open, __ATOMIC_RELAXED)) return false; /* re-checked under the lock */
  CUcontext ctx = NULL;
  CUdevice dev = 0;
  if (DRV(cuCtxGetCurrent, &ctx) != CUDA_SUCCESS || !ctx || DRV(cuCtxGetDevice, &dev) != CUDA_SUCCESS)
    return false; /* let the driver report the missing context */
  stream = norm_stream(stream);
  if (captured(stream)) return false;
  CKPT_RELAXED_SCOPE(); /* its event queries must not invalidate a global capture */
  IN_LIB_BEGIN();
  LOCK();
  struct region *r = ckpt_g.open;
  bool served = false;
  if (r) {
    ckpt_reap();
    size_t g = ckpt_granularity(dev);
    size_t size = (bytes + g - 1) / g * g;
    /* Peers the program's pool grants can touch the tensor too (DESIGN:
     * access is per mapping); asked at each tagged allocation, one query
     * per other device. */
    ckpt_devmask access = ckpt_vmm_pool_access(dev);
    struct talloc *t = cache_take(dev, size);
    bool cached = t != NULL;
    if (!t) t = pending_take_same_stream(dev, size, stream);
    if (t && t->access != access && !regrant(t, access)) { /* back where it was */
      if (cached) {
        cache_put(t);
      } else {
        t->next = pending;
        pending = t;
      }
      t = NULL;
    }
    if (t) {
      ckpt_g.stats.mapping_cache_hits++;
    } else {
      CUresult cr = talloc_create(dev, ctx, size, access, &t);
      if (cr != CUDA_SUCCESS) {
        t = NULL;
        if (ckpt_cu_unsupported(cr)) {
          /* An old driver, or one without VMM: never ask again. */
          __atomic_store_n(&ckpt_g.tag_off, true, __ATOMIC_RELAXED);
          CKPT_WARN_ONCE("this driver cannot create virtual memory (VMM) mappings (%s): libckpt is off, "
                         "every allocation passes through to the driver untagged",
                         ckpt_cu_name(cr));
        } else if (cr == CUDA_ERROR_OUT_OF_MEMORY) {
          CKPT_WARN_ONCE("out of device memory for a tagged mapping (%s): such allocations go to the driver untagged",
                         ckpt_cu_name(cr));
        } else {
          CU_ERROR_ONCE("could not create a tagged mapping (%s): such allocations go to the driver untagged",
                        ckpt_cu_name(cr));
        }
      }
    }
    if (t && live_insert(t) < 0) {
      cache_put(t);
      t = NULL;
    }
    if (t) {
      t->req = bytes;
      t->state = CKPT_DEVICE;
      t->freed = t->cancel = t->keep = t->moved = false;
      t->stream = stream;
      t->site = ckpt_callsite_capture();
      if (r->ns) {
        r->ns->tagged_allocs++;
        r->ns->tagged_bytes += bytes;
      }
      ckpt_region_attach(r, t);
      ckpt_note_stream(stream, dev);
      __atomic_store_n(&ckpt_gating, 1, __ATOMIC_RELAXED); /* submissions take the shared lock from now on */
      ckpt_g.stats.tagged_allocs++;
      ckpt_g.stats.tagged_allocs_live++;
      ckpt_g.stats.tagged_bytes_live += bytes;
      *dptr = t->va;
      *rc = CUDA_SUCCESS;
      served = true;
      CKPT_TRACE("tagged %#llx %zu bytes in region %d", (unsigned long long)t->va, bytes, r->id);
    }
  }
  UNLOCK();
  IN_LIB_END();
  return served;
}

static struct talloc *live_exact(CUdeviceptr p) {
  size_t i = live_lower_bound(p);
  struct talloc *t = i ? live[i - 1] : NULL;
  return t && t->va == p ? t : NULL;
}

/* Frees of tagged memory that a capture cannot take (lock held; a capture is
 * active somewhere). The program gets the driver's answer for the same free
 * of its own memory, but the capture is left valid and nothing is freed:
 * - cuMemFreeAsync on a capturing stream would be a graph free node, which
 *   must name a graph allocation (cuMemFreeAsync, cuGraphAddMemFreeNode:
 *   CUDA_ERROR_INVALID_VALUE); a tagged allocation never is one (allocations
 *   on a capturing stream are not tagged). Freeing it behind the graph's back
 *   would be a use after free at every replay;
 * - cuMemFree while a capture is active on the device would have to
 *   synchronize the device: a potentially unsafe call that invalidates a
 *   global-mode capture (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED). */
static bool capture_refuses(struct talloc *t, CUstream stream, bool sync, CUresult *rc) {
  /* (The legacy stream never captures; asked while a blocking stream does, the
   * driver answers CUDA_ERROR_STREAM_CAPTURE_IMPLICIT: deferred in ckpt_free.) */
  if (!sync && stream != CU_STREAM_LEGACY && ckpt_stream_capturing(stream)) {
    *rc = CUDA_ERROR_INVALID_VALUE;
    CKPT_WARN_ONCE("cuMemFreeAsync of tagged memory (%#llx) on a capturing stream: in a capture a free must "
                   "name a graph allocation, and tagged memory was allocated outside the capture; not freed "
                   "(CUDA_ERROR_INVALID_VALUE, the capture left valid): free it after cuStreamEndCapture",
                   (unsigned long long)t->va);
    return true;
  }
  if (sync && ckpt_captures_active(t->device) > 0) {
    *rc = CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    CKPT_WARN_ONCE("cuMemFree of tagged memory (%#llx) while a stream capture is active on its device: it would "
                   "synchronize the device, which invalidates the capture; not freed "
                   "(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, the capture left valid): free it after the capture, or "
                   "with cuMemFreeAsync on a stream that is not capturing", (unsigned long long)t->va);
    return true;
  }
  return false;
}

bool ckpt_free(CUdeviceptr dptr, CUstream stream, bool sync, CUresult *rc) {
  if (ckpt_g.forked) return false;
  stream = norm_stream(stream);
  IN_LIB_BEGIN();
  LOCK();
  struct talloc *t = live_exact(dptr);
  if (t && ckpt_captures_any() && capture_refuses(t, stream, sync, rc)) {
    UNLOCK();
    IN_LIB_END();
    return true; /* nothing freed: the allocation stays live and intact */
  }
  if (t && sync) {
    /* cuMemFree semantics: the device is idle afterwards. Never wait for the
     * device with the lock held: the engine may need it to open a gate.
     * Relaxed: a capture another thread begins meanwhile is not invalidated. */
    UNLOCK();
    {
      CKPT_RELAXED_SCOPE();
      *rc = DRV(cuCtxSynchronize);
    }
    LOCK();
    t = live_exact(dptr);
    if (t && *rc != CUDA_SUCCESS) {
      /* The device may still use it: freeing now could be a use after free. */
      CU_FAILED(cuCtxSynchronize, *rc);
      UNLOCK();
      IN_LIB_END();
      return true;
    }
  }
  if (!t) {
    UNLOCK();
    IN_LIB_END();
    return false;
  }
  live_remove(t);
  ckpt_g.stats.tagged_allocs_live--;
  ckpt_g.stats.tagged_bytes_live -= t->req;
  ckpt_region_detach(t);
  t->freed = true;
  if (!sync) {
    *rc = CUDA_SUCCESS;
    t->free_stream = stream;
    t->free_deferred = stream == CU_STREAM_LEGACY && ckpt_captures_active(t->device) > 0;
    CUresult r = t->free_deferred ? CUDA_SUCCESS : DRV(cuEventRecord, t->free_ev, stream);
    if (r != CUDA_SUCCESS) {
      /* Without an event nothing proves the stream is past the free: keep the
       * mapping out of reuse (an unrecorded event would read as complete). */
      CU_FAILED(cuEventRecord, r);
      t->busy = true;
      CKPT_WARN_ONCE("a tagged mapping is retired without reuse after a failed cuEventRecord");
    }
  } else {
    t->free_stream = CU_STREAM_LEGACY;
    if (!t->busy) {
      finish_free(t);
      t = NULL;
    }
  }
  if (t) {
    t->next = pending;
    pending = t;
  }
  UNLOCK();
  IN_LIB_END();
  return true;
}
