/* What the preload's wrappers ask of the core. The wrappers stay policy-free:
 * they normalise arguments, ask here whether an allocation is libckpt's, and
 * otherwise call the real driver. */
#ifndef CKPT_CORE_H
#define CKPT_CORE_H
#include <stdbool.h>
#include <stddef.h>
#include "cu.h"

/* The one export attribute: the hooked names, InitializeInjectionNvtx2 and
 * ckpt_* are the only symbols libckpt.so exports (-fvisibility=hidden). */
#define CKPT_API __attribute__((visibility("default")))

/* Set while libckpt's own code runs on this thread: hooks then pass straight
 * to the real driver. */
extern __thread int ckpt_in_lib;

/* Params, log and driver, once; cheap after the first call. */
void ckpt_init(void);
/* Whether tagging is on (mode != none, a driver, not a forked child). */
bool ckpt_tagging(void);

/* true: the allocation was served as a tagged mapping, *rc says how it went.
 * false: not libckpt's business, call the real driver. */
bool ckpt_alloc(CUdeviceptr *dptr, size_t bytes, CUstream stream, CUresult *rc);
/* true when dptr was a tagged allocation (freed in stream order). `sync`:
 * cuMemFree semantics (the device is synchronised first). */
bool ckpt_free(CUdeviceptr dptr, CUstream stream, bool sync, CUresult *rc);
/* After the driver's out-of-memory on a pass-through allocation: trims the
 * mapping cache; true when something was released (worth a retry). */
bool ckpt_release_for_oom(void);
/* Cheap test, no lock: could dptr be one of ours at all? */
bool ckpt_maybe_ours(CUdeviceptr dptr);

/* Counters the wrappers feed. */
void ckpt_count_hooked(void);
void ckpt_count_untagged(void);
void ckpt_note_mem_info(size_t free_bytes, size_t total_bytes);

/* Called by the constructor; must stay tiny. */
void ckpt_preload_env(const char *self_path);
#endif
