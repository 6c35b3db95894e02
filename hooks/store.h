/* The backing-store interface: "put these bytes somewhere, give them back".
 *
 * The copies (copy.c) move a survivor's bytes into a store when it is
 * offloaded and out of it when it is restored; the store decides where the
 * bytes live. Implemented today by the host pool (pinned host memory,
 * host_pool.c). Peer partitioning is a second implementation: put keeps this
 * rank's 1/P slice (on the device or in host memory), get all-gathers the
 * slices into dst on the copy stream, and `handle` is 0 (the VA is not
 * remapped onto the store: it stays reserved, unmapped, until the restore).
 *
 * Every function runs with the core lock held, on the survivor's context.
 * None creates memory on the caller's thread (growing a store is slow: the
 * host pool grows on its own thread); put returns a *pending* held instead,
 * which the engine completes with resume before it swaps anything. */
#ifndef CKPT_STORE_H
#define CKPT_STORE_H
#include <stdbool.h>
#include <stddef.h>

#include "cu.h"

struct ckpt_store;

/* The bytes of one allocation, held by a store. */
struct ckpt_held {
  const struct ckpt_store *store;
  CUdeviceptr va;                      /* where the store's copy engine sees them (logs) */
  CUmemGenericAllocationHandle handle; /* memory the allocation's VA can be remapped onto, 0 if none */
  bool pending;                        /* the room is being made: no copy enqueued yet (resume) */
};

/* Why put returned NULL. */
struct ckpt_store_fail {
  CUresult rc;  /* the driver's (or CUDA_ERROR_OUT_OF_MEMORY) */
  bool capped;  /* the store's own limit (CKPT_HOST_MAX_BYTES), not the driver */
  bool copy;    /* room was found, the copy could not be enqueued (logged) */
};

struct ckpt_store {
  const char *name;
  /* Enqueues the copy of `bytes` at device VA src (an allocation of `size`
   * mapped bytes on `device`) into the store on `stream`; NULL with *fail. */
  struct ckpt_held *(*put)(int device, size_t size, CUdeviceptr src, size_t bytes, CUstream stream,
                           struct ckpt_store_fail *fail);
  /* A pending held: enqueues put's copy once the room is there. CUDA_SUCCESS
   * (no longer pending), CUDA_ERROR_NOT_READY (still being made), or the
   * failure with *fail (h is gone, as after drop). */
  CUresult (*resume)(struct ckpt_held *h, CUdeviceptr src, size_t bytes, CUstream stream,
                     struct ckpt_store_fail *fail);
  /* Enqueues the copy of the held bytes into device VA dst on `stream` (a
   * failure is logged by the store). */
  CUresult (*get)(struct ckpt_held *h, CUdeviceptr dst, size_t bytes, CUstream stream);
  /* The bytes are no longer needed (or, pending, never will be): the room
   * goes back to the store. */
  void (*drop)(struct ckpt_held *h);
  /* Gives idle room back to the driver (ckpt_release_cached, exit), once
   * the room being made is made. */
  void (*release_idle)(void);
};

static inline void ckpt_held_drop(struct ckpt_held *h) { h->store->drop(h); }

/* host_pool.c */
extern const struct ckpt_store ckpt_host_store;
#endif
