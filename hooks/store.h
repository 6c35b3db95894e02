/* The backing-store interface: "put these bytes somewhere, give them back".
 *
 * The copies (copy.c) move a survivor's bytes into a store when it is
 * offloaded and out of it when it is restored; the store decides where the
 * bytes live. Implemented today by the host pool (pinned host memory,
 * host_pool.c). Peer partitioning is a second implementation: put keeps this
 * rank's 1/P slice (on the device or in host memory), get copies it into
 * place and the job hook all-gathers the slices into dst on the copy stream,
 * and `handle` is 0 (the VA is not remapped onto the store: it stays
 * reserved, unmapped, until the restore; peer_store.c).
 *
 * Every function runs with the core lock held, on the survivor's context.
 * None creates memory on the caller's thread (growing a store is slow: the
 * host pool grows on its own thread); put returns a *pending* held instead,
 * which the engine completes with resume before it swaps anything. */
#ifndef CKPT_STORE_H
#define CKPT_STORE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cu.h"

struct ckpt_store;

/* The bytes of one allocation, held by a store. */
struct ckpt_held {
  const struct ckpt_store *store;
  CUdeviceptr va;                      /* where the store's copy engine sees them (logs) */
  CUmemGenericAllocationHandle handle; /* memory the allocation's VA can be remapped onto, 0 if none */
  uint64_t sum;                        /* CKPT_VERIFY: checksum of the bytes at offload (copy.c) */
  bool summed;                         /* sum is set */
  bool lost_said;                      /* lost() was reported for it (copy.c) */
  bool pending;                        /* the room is being made: no copy enqueued yet (resume) */
};

/* A job's items as the job hooks see them: dst is the restore target. */
struct ckpt_store_item {
  struct ckpt_held *held;
  CUdeviceptr dst;
  size_t bytes;
};
struct ckpt_store_job {
  int kind, device, region, n; /* kind: JOB_TO_HOST / JOB_TO_DEVICE (copy.h) */
  const char *name;            /* the top region's */
  struct ckpt_store_item *items;
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
  /* Optional hooks, for a store whose ranks act together (NULL: none). */
  /* Before an offload job's puts: the bytes of its n survivors (room for all
   * of them at once). */
  void (*job_begin)(int device, const size_t *bytes, int n);
  /* After the job's puts or gets, on `stream`: the store's work for the whole
   * job (peer: the descriptor exchange, then the all-gathers); *token goes
   * to job_verdict. Not CUDA_SUCCESS: the job fails (rolled back). */
  CUresult (*job_end)(const struct ckpt_store_job *job, CUstream stream, void **token);
  /* Lock NOT held: waits for `done` (bounded: the store may abort its
   * collectives); the code the engine takes as the copies'. */
  CUresult (*job_wait)(CUevent done);
  /* The copies are complete (copy_rc): CUDA_SUCCESS when the job may be
   * swapped (the ranks agreed); anything else rolls it back. */
  CUresult (*job_verdict)(void *token, int kind, CUresult copy_rc);
  /* Whether h's bytes can never be given back (the peers' slices are gone). */
  bool (*lost)(const struct ckpt_held *h);
};

static inline void ckpt_held_drop(struct ckpt_held *h) { h->store->drop(h); }

/* host_pool.c */
extern const struct ckpt_store ckpt_host_store;
/* Pinned host memory for another store (the peer+host slabs): a block of the
 * pool, counted and capped with it and made on its grower thread like the
 * host store's own. NULL with *fail when the pool may not grow; else a held
 * whose va maps `size` bytes once made (pending until then). */
struct ckpt_held *ckpt_host_block_get(int device, size_t size, struct ckpt_store_fail *fail);
/* 1: made (h->va is mapped, h->pending cleared); 0: still being made; -1:
 * the grower failed (*rc), and h is freed. */
int ckpt_host_block_state(struct ckpt_held *h, CUresult *rc);
/* Gives the block back to the pool (made or still being made). */
void ckpt_host_block_drop(struct ckpt_held *h);
#endif
