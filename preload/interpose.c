/* The interposition layer: exported driver symbols, the dlsym override and the
 * cuGetProcAddress wrappers. No policy: every decision is hooks/core's. */
#define _GNU_SOURCE
#include "../hooks/core.h"
#include "../hooks/driver.h"
#include "../hooks/streams.h"
#include "../hooks/submit.h"

#include <cudaTypedefs.h>

#include <curand.h>

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <string.h>

enum hook_id {
#define CKPT_HOOK(sym, base, ver, ptsz, lib) HOOK_##sym,
#define CKPT_SUBMIT(kind, sym, base, ver, ptsz, pfn, params, args) HOOK_##sym,
#include "hooked.def"
#undef CKPT_SUBMIT
#undef CKPT_HOOK
  HOOK__COUNT
};

/* How a row expands depends on its library. CUDA: a typed real-function
 * slot, filled from the driver table (or by cuGetProcAddress/dlsym answers).
 * CURAND: no slot here; hooks/rng.c resolves the real cuRAND itself and the
 * wrappers (preload/curand.c) call its hooks. */
enum hook_lib { LIB_CUDA, LIB_CURAND };
#define REAL_SLOT_CUDA(sym) __typeof__(sym) *sym;
#define REAL_SLOT_CURAND(sym)
#define REAL_REF_CUDA(sym) (void **)&real.sym
#define REAL_REF_CURAND(sym) NULL

/* The real driver's function behind each hooked driver symbol, typed. */
static struct {
#define CKPT_HOOK(sym, base, ver, ptsz, lib) REAL_SLOT_##lib(sym)
#define CKPT_SUBMIT(kind, sym, base, ver, ptsz, pfn, params, args) pfn sym;
#include "hooked.def"
#undef CKPT_SUBMIT
#undef CKPT_HOOK
} real;

/* The generated wrappers (below), declared for the table. */
#define CKPT_SUBMIT(kind, sym, base, ver, ptsz, pfn, params, args) CKPT_API CUresult CUDAAPI sym params;
#define CKPT_HOOK(sym, base, ver, ptsz, lib)
#include "hooked.def"
#undef CKPT_HOOK
#undef CKPT_SUBMIT

/* Our wrapper for each symbol, with what cuGetProcAddress needs to pick it. */
struct hook {
  const char *symbol, *base;
  int version, ptsz;
  enum hook_lib lib;
  void *wrapper;
  void **real_slot; /* NULL: resolved elsewhere (CURAND) */
};
static const struct hook hooks[HOOK__COUNT] = {
#define CKPT_HOOK(sym, base, ver, ptsz, lib) \
  [HOOK_##sym] = {#sym, #base, ver, ptsz, LIB_##lib, (void *)sym, REAL_REF_##lib(sym)},
#define CKPT_SUBMIT(kind, sym, base, ver, ptsz, pfn, params, args) CKPT_HOOK(sym, base, ver, ptsz, CUDA)
#include "hooked.def"
#undef CKPT_SUBMIT
#undef CKPT_HOOK
};

static pthread_once_t real_once = PTHREAD_ONCE_INIT;
static void resolve_real(void) {
  for (int i = 0; i < HOOK__COUNT; i++)
    if (hooks[i].lib == LIB_CUDA) *hooks[i].real_slot = ckpt_driver_sym(hooks[i].symbol);
}

/* First thing every wrapper does: lazy init, count, and the real pointer. */
#define ENTER(sym) \
  ckpt_init(); \
  pthread_once(&real_once, resolve_real); \
  if (!real.sym) return CUDA_ERROR_NOT_FOUND; \
  if (ckpt_in_lib) return CALL_REAL; \
  ckpt_count_hooked()

/* The per-thread variants name their default stream 0; make it explicit so
 * the core can record on it from the calling thread like any stream. */
static inline CUstream ptsz_stream(CUstream s) { return s ? s : CU_STREAM_PER_THREAD; }

static CUresult do_alloc(CUdeviceptr *dptr, size_t bytes, CUstream s,
                         CUresult (*realfn)(CUdeviceptr *, size_t, CUstream), int sync) {
  CUresult rc;
  if (dptr && ckpt_alloc(dptr, bytes, s, &rc)) return rc;
  ckpt_count_untagged();
  for (int attempt = 0;; attempt++) {
    rc = sync ? real.cuMemAlloc_v2(dptr, bytes) : realfn(dptr, bytes, s);
    if (rc != CUDA_ERROR_OUT_OF_MEMORY || attempt || !ckpt_release_for_oom()) return rc;
  }
}

static CUresult do_free(CUdeviceptr dptr, CUstream s, int sync,
                        CUresult (*realfn)(CUdeviceptr, CUstream)) {
  CUresult rc;
  if (ckpt_maybe_ours(dptr) && ckpt_free(dptr, s, sync, &rc)) return rc;
  if (sync) return real.cuMemFree_v2(dptr);
  return realfn(dptr, s);
}

#undef CALL_REAL
#define CALL_REAL real.cuMemAlloc_v2(dptr, bytesize)
CKPT_API CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize) {
  ENTER(cuMemAlloc_v2);
  return do_alloc(dptr, bytesize, CU_STREAM_LEGACY, NULL, 1);
}
#undef CALL_REAL
#define CALL_REAL real.cuMemFree_v2(dptr)
CKPT_API CUresult cuMemFree_v2(CUdeviceptr dptr) {
  ENTER(cuMemFree_v2);
  return do_free(dptr, CU_STREAM_LEGACY, 1, NULL);
}
#undef CALL_REAL
#define CALL_REAL real.cuMemAllocAsync(dptr, bytesize, hStream)
CKPT_API CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream) {
  ENTER(cuMemAllocAsync);
  return do_alloc(dptr, bytesize, hStream, real.cuMemAllocAsync, 0);
}
#undef CALL_REAL
#define CALL_REAL real.cuMemAllocAsync_ptsz(dptr, bytesize, hStream)
CKPT_API CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream hStream) {
  ENTER(cuMemAllocAsync_ptsz);
  return do_alloc(dptr, bytesize, ptsz_stream(hStream), real.cuMemAllocAsync_ptsz, 0);
}
#undef CALL_REAL
#define CALL_REAL real.cuMemFreeAsync(dptr, hStream)
CKPT_API CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream) {
  ENTER(cuMemFreeAsync);
  return do_free(dptr, hStream, 0, real.cuMemFreeAsync);
}
#undef CALL_REAL
#define CALL_REAL real.cuMemFreeAsync_ptsz(dptr, hStream)
CKPT_API CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream) {
  ENTER(cuMemFreeAsync_ptsz);
  return do_free(dptr, ptsz_stream(hStream), 0, real.cuMemFreeAsync_ptsz);
}
/* Allocations from an explicit pool keep the pool's properties (IPC export,
 * location): they are counted and passed through, never tagged. */
#undef CALL_REAL
#define CALL_REAL real.cuMemAllocFromPoolAsync(dptr, bytesize, pool, hStream)
CKPT_API CUresult cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool,
                                             CUstream hStream) {
  ENTER(cuMemAllocFromPoolAsync);
  ckpt_count_untagged();
  return CALL_REAL;
}
#undef CALL_REAL
#define CALL_REAL real.cuMemAllocFromPoolAsync_ptsz(dptr, bytesize, pool, hStream)
CKPT_API CUresult cuMemAllocFromPoolAsync_ptsz(CUdeviceptr *dptr, size_t bytesize,
                                                  CUmemoryPool pool, CUstream hStream) {
  ENTER(cuMemAllocFromPoolAsync_ptsz);
  ckpt_count_untagged();
  return CALL_REAL;
}
#undef CALL_REAL
#define CALL_REAL real.cuMemGetInfo_v2(free_bytes, total_bytes)
CKPT_API CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes) {
  ENTER(cuMemGetInfo_v2);
  CUresult rc = CALL_REAL;
  if (rc == CUDA_SUCCESS && free_bytes && total_bytes) ckpt_note_mem_info(*free_bytes, *total_bytes);
  return rc;
}

/* ---- streams, submissions and captures (hooked.def, CKPT_SUBMIT) ---------
 * Generated: the core is told what `kind` needs before (PRE, no lock), inside
 * the shared side of the submission lock (IN: after the real call, so that a
 * gate's exclusive side sees a consistent capture count) and after (POST).
 * Not counted in hooked_calls: a launch must cost no shared cache line. */
#define PRE_ENQ(ptsz, args)
#define IN_ENQ(ptsz, args)
#define POST_ENQ(ptsz, args)
#define PRE_CAPBEGIN(ptsz, args) ckpt_stream_capture_begins(first_arg args, ptsz)
#define IN_CAPBEGIN(ptsz, args) ckpt_capture_begun(first_arg args, ptsz, rc)
#define POST_CAPBEGIN(ptsz, args)
#define PRE_CAPEND(ptsz, args)
#define IN_CAPEND(ptsz, args) ckpt_capture_ended(first_arg args, ptsz)
#define POST_CAPEND(ptsz, args)
#define PRE_SCREATE(ptsz, args)
#define IN_SCREATE(ptsz, args)
#define POST_SCREATE(ptsz, args) \
  if (rc == CUDA_SUCCESS) ckpt_stream_created(*first_arg args)
#define PRE_SDESTROY(ptsz, args) ckpt_stream_destroying(first_arg args)
#define IN_SDESTROY(ptsz, args)
#define POST_SDESTROY(ptsz, args)
#define first_arg(a, ...) (a)

#undef CALL_REAL
#define CALL_REAL CUDA_ERROR_NOT_FOUND /* replaced per wrapper below */
#define CKPT_SUBMIT(kind, sym, base, ver, ptsz, pfn, params, args) \
  CKPT_API CUresult CUDAAPI sym params { \
    ckpt_init(); \
    pthread_once(&real_once, resolve_real); \
    if (!real.sym) return CUDA_ERROR_NOT_FOUND; \
    if (ckpt_in_lib) return real.sym args; \
    PRE_##kind(ptsz, args); \
    bool locked = ckpt_submit_enter(); \
    CUresult rc = real.sym args; \
    IN_##kind(ptsz, args); \
    ckpt_submit_leave(locked); \
    POST_##kind(ptsz, args); \
    return rc; \
  }
#define CKPT_HOOK(sym, base, ver, ptsz, lib)
#include "hooked.def"
#undef CKPT_HOOK
#undef CKPT_SUBMIT

/* ---- cuGetProcAddress: the CUDA runtime's way in ------------------------- */

/* The wrapper to hand out for a successful look-up of `name`, or NULL. Among
 * the entries for this name, take the stream variant the flags ask for and the
 * newest version the caller's cudaVersion admits — the driver's own rule. */
static void *redirect(const char *name, int version, cuuint64_t flags, void *real_fn) {
  int want_ptsz = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) != 0;
  const struct hook *best = NULL;
  for (int pass = 0; pass < 2 && !best; pass++) {
    for (int i = 0; i < HOOK__COUNT; i++) {
      const struct hook *h = &hooks[i];
      if (h->lib != LIB_CUDA || strcmp(h->base, name) != 0 || h->version > version) continue;
      if (pass == 0 && h->ptsz != want_ptsz) continue; /* pass 1: no such variant */
      if (!best || h->version > best->version) best = h;
    }
  }
  if (!best) return NULL;
  if (!*best->real_slot) *best->real_slot = real_fn;
  return best->wrapper;
}

/* A successful look-up of a hooked name hands out our wrapper. */
static CUresult redirected(CUresult rc, const char *symbol, void **pfn, int version, cuuint64_t flags) {
  if (rc == CUDA_SUCCESS && symbol && pfn && *pfn) {
    void *w = redirect(symbol, version, flags, *pfn);
    if (w) *pfn = w;
  }
  return rc;
}

#undef CALL_REAL
#define CALL_REAL real.cuGetProcAddress_v2(symbol, pfn, cudaVersion, flags, symbolStatus)
CKPT_API CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion,
                                         cuuint64_t flags, CUdriverProcAddressQueryResult *symbolStatus) {
  ENTER(cuGetProcAddress_v2);
  return redirected(CALL_REAL, symbol, pfn, cudaVersion, flags);
}
#undef CALL_REAL
#define CALL_REAL real.cuGetProcAddress(symbol, pfn, cudaVersion, flags)
CKPT_API CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags) {
  ENTER(cuGetProcAddress);
  return redirected(CALL_REAL, symbol, pfn, cudaVersion, flags);
}

/* ---- dlsym: dlopen("libcuda.so.1") + dlsym reaches us here --------------- */

/* dlsym(RTLD_NEXT) means "after the caller", and libc finds the caller from
 * its return address, which would now be us. Search the objects after the
 * real caller in load order ourselves, keeping a definition only when it is
 * that object's own. Not instrumented: see CKPT_NO_SANITIZE. */
CKPT_NO_SANITIZE static void *next_after(const void *caller, const char *name) {
  Dl_info info;
  struct link_map *lm = NULL;
  if (!dladdr1(caller, &info, (void **)&lm, RTLD_DL_LINKMAP) || !lm) return ckpt_real_dlsym(RTLD_NEXT, name);
  for (struct link_map *m = lm->l_next; m; m = m->l_next) {
    void *h = dlopen(m->l_name && m->l_name[0] ? m->l_name : NULL, RTLD_LAZY | RTLD_NOLOAD);
    if (!h) continue;
    void *p = ckpt_real_dlsym(h, name);
    dlclose(h);
    struct link_map *owner = NULL;
    if (p && dladdr1(p, &info, (void **)&owner, RTLD_DL_LINKMAP) && owner == m) return p;
  }
  return NULL;
}

/* Set once our constructor ran. Before that, the callers are other preloaded
 * runtimes initialising (ASan, TSan resolve their interceptors' real
 * functions with dlsym(RTLD_NEXT) from _dl_init): they cannot serve the
 * dlopen next_after needs yet, and nothing of ours is hooked yet, so libc's
 * dlsym answers, reached by a sibling call so that it still sees the
 * caller's return address (RTLD_NEXT keeps meaning "after the caller"). */
static int ctor_done;
void ckpt_preload_ctor_done(void) { __atomic_store_n(&ctor_done, 1, __ATOMIC_RELEASE); }

#if defined(__has_attribute)
#if __has_attribute(musttail)
#define CKPT_MUSTTAIL __attribute__((musttail))
#endif
#endif
#ifndef CKPT_MUSTTAIL
#define CKPT_MUSTTAIL /* gcc < 15: a sibling call at -O1 and above */
#ifndef __OPTIMIZE__
#warning "built without optimisation: dlsym(RTLD_NEXT) from a runtime preloaded before libckpt (ASan, TSan) resolves relative to libckpt"
#endif
#endif

CKPT_API CKPT_NO_SANITIZE void *dlsym(void *handle, const char *name) {
  if (handle == RTLD_NEXT && !__atomic_load_n(&ctor_done, __ATOMIC_ACQUIRE)) {
    void *(*real_fn)(void *, const char *) = ckpt_real_dlsym_fn();
    CKPT_MUSTTAIL return real_fn(handle, name);
  }
  void *p = handle == RTLD_NEXT ? next_after(__builtin_return_address(0), name) : ckpt_real_dlsym(handle, name);
  if (!p || name[0] != 'c' || name[1] != 'u') return p;
  for (int i = 0; i < HOOK__COUNT; i++)
    if (strcmp(hooks[i].symbol, name) == 0) {
      /* A driver the program loaded itself may differ from ours: keep its
       * function as the real one when we have none yet. (cuRAND: the rng
       * module resolves its own, from libcurand.so.10.) */
      if (hooks[i].real_slot && !*hooks[i].real_slot) *hooks[i].real_slot = p;
      return hooks[i].wrapper;
    }
  return p;
}
