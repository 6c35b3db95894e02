/* Peer partitioning: the peer group (peer_group.c: the group's state, the
 * agreement of the ranks, failure; below it peer_boot.c, the bounded
 * bootstrap, and peer_nccl.c, NCCL loaded at run time) and the peer stores
 * (peer_store.c: this rank's slices, in device or pooled host slabs).
 *
 * The group is one NCCL communicator of P ranks on one device. Every NCCL
 * call is enqueued on libckpt's copy stream. Peer state has its own mutex,
 * taken inside the core lock (never the other way round); the engine's
 * bounded wait runs without the core lock. */
#ifndef CKPT_PEER_H
#define CKPT_PEER_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cu.h"

/* ---- the group (peer_group.c) -------------------------------------------- */

/* A fresh NCCL unique id into out (len >= 128): for rank 0 to hand to the
 * others. 0 or a CKPT_E* code. */
int ckpt_peer_group_unique_id(void *out, size_t len);
/* Joins the group (P = size, this rank = rank) on the calling thread's
 * current device, bounded by CKPT_PEER_TIMEOUT_MS. 0 or a CKPT_E* code
 * (logged). Once per process. */
int ckpt_peer_group_init(const void *id, size_t len, int size, int rank);
/* Lock held, in the device's context. Whether the group can take work on
 * `device` now; bootstraps from CKPT_PEER_* the first time it is asked. */
bool ckpt_peer_ready(int device);
/* Whether a group exists and has not failed (any thread). */
bool ckpt_peer_active(void);
int ckpt_peer_size(void);
int ckpt_peer_rank(void);
/* The group failed (a collective's error, a timeout, ranks out of step):
 * aborts the communicator once, says `why` and that offloads now go to the
 * host store. Any thread. */
void ckpt_peer_fail(const char *why);
/* Whether the group has failed. */
bool ckpt_peer_failed(void);
/* Waits for `done`, polling the communicator's async error; past
 * CKPT_PEER_TIMEOUT_MS or on an error the group fails. Lock NOT held. The
 * event's code, or CUDA_ERROR_NOT_READY after a failure (reported). */
CUresult ckpt_peer_wait(CUevent done);

/* In-place all-gathers of `count` bytes per rank at buf (rank r's part at
 * buf + r*count), grouped between begin and end. */
CUresult ckpt_peer_group_start(void);
CUresult ckpt_peer_allgather(CUdeviceptr buf, size_t count, CUstream s);
CUresult ckpt_peer_group_end(void);

/* The descriptor every rank exchanges before a peer job (fixed size). */
struct ckpt_peer_desc {
  uint32_t magic, kind; /* kind: JOB_TO_HOST / JOB_TO_DEVICE */
  uint64_t seq;         /* the group's job number */
  int32_t region;       /* top region id */
  uint32_t n;           /* allocations */
  uint64_t bytes;       /* their bytes */
  uint64_t sizes_hash;  /* FNV-1a of the sizes in order */
  char name[24];        /* top region name (truncated) */
};
/* Fills seq, enqueues the all-gather of d on s; *slot for the check. */
CUresult ckpt_peer_exchange(struct ckpt_peer_desc *d, CUstream s, int *slot);
/* After the exchange completed: true when every rank sent what this one did;
 * otherwise logs both sides' values (the first rank that differs). Frees the
 * slot. `delivered_only` (the job failed): ranks whose descriptor did not
 * arrive are skipped, only a real disagreement is reported. */
bool ckpt_peer_agreed(int slot, bool delivered_only);

/* ---- the stores (peer_store.c) ------------------------------------------- */

struct ckpt_store;
extern const struct ckpt_store ckpt_peer_dev_store;  /* CKPT_MODE=peer */
extern const struct ckpt_store ckpt_peer_host_store; /* CKPT_MODE=peer+host */
#endif
