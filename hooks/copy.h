/* The copies and the swaps of one job: a job's items are copied into a
 * backing store (offload) or out of it into fresh device memory (restore) on
 * the device's copy stream of its direction; once the copies are complete the engine applies
 * the job: each item's VA is remapped onto the memory now holding its data.
 * Copy first, swap after: at every instant the VA is mapped onto memory that
 * holds the data, so a reader that never asked for a restore reads correct
 * bytes. All under the core lock, in the items' context. */
#ifndef CKPT_COPY_H
#define CKPT_COPY_H
#include <stdbool.h>
#include <stdint.h>

#include "cu.h"
#include "streams.h"

struct region;
struct talloc;
struct ckpt_store;
struct ckpt_verify;

enum { JOB_TO_HOST, JOB_TO_DEVICE };

/* The engine's unit of work: the items of one region tree on one device. */
struct job {
  int kind, device;
  uint64_t bytes;
  uint64_t copied;          /* bytes whose copies were enqueued (not pending, not given back) */
  struct ckpt_gate gate;
  bool gated;               /* gate closed (by the engine or a restore) */
  bool gate_failed;         /* a stream could not be held: the job must not swap */
  bool restore_gate;        /* closed by a restore: a consumer waits at it */
  bool late;                /* copies were enqueued by ckpt_copies_resume: `done` re-recorded */
  struct job *gate_owner;   /* the job whose gate covers this one, or NULL */
  CUcontext ctx;
  CUevent start, done;
  struct region *top;
  const struct ckpt_store *hooks; /* the store whose job hooks run for this job, or NULL */
  void *token;                    /* its job_end's, until the verdict */
  struct ckpt_verify *verify;     /* CKPT_VERIFY staging, or NULL */
  int n;
  struct job *next;
  struct talloc *items[];
};

/* Enqueues the copies of `items` (those on j's device) into j; 1 when the job
 * must be pushed, 0 when there is nothing to do, < 0 on error (items rolled
 * back, *out_r the driver's code). */
int ckpt_copies_start(struct job *j, struct talloc **items, int n, CUresult *out_r);
/* Engine thread, lock held, before it waits for j's copies and before any
 * gate is closed for j: completes the items whose store room was still
 * being made at the start (a pending held, store.h) and is there now, and
 * records j->done again after their copies. True when none is pending any
 * more; false: the engine waits (releasing the lock, gates open) and calls
 * it again. Items still pending when j is applied stay on the device. Late
 * copies run on the offload copy stream behind the copies (and fences) of jobs
 * submitted after j: the engine never applies a `late` job before its
 * `done` has completed (it is not "complete because an older job is"). */
bool ckpt_copies_resume(struct job *j);
/* Whether applying j would swap anything (offloads of cancelled or freed
 * items are only rolled back: no gate needed for them). */
bool ckpt_copies_swap(const struct job *j);
/* The copies are complete (copy_rc CUDA_SUCCESS) or failed / not to be
 * swapped (anything else): swap or roll back every item. A swap whose map
 * fails maps the other copy back (a NOT_READY is retried first).
 *
 * The contract the engine must honour: false means an item's VA could be
 * mapped onto neither copy of its data (said loudly, with the VA, the
 * region and where the data is; counted in driver_errors). Its VA is
 * unmapped, so the gate that holds the program's streams must NOT open yet:
 * the engine calls ckpt_copies_repair on the batch first, and opens the gate
 * only after it returns. Stranded items stay busy (owned by their job) until
 * then. Without a gate (a driver lacking stream memory operations) the same
 * retries apply; nothing holds the streams then. */
bool ckpt_copies_apply(struct job *j, CUresult copy_rc);
/* Lock held; releases it between tries (every 10 ms): maps the stranded items
 * of jobs[0..n) again (either copy), and returns once none is left. */
void ckpt_copies_repair(struct job **jobs, int n);
/* After ckpt_copies_apply: the job's CKPT_T_*_END trace record with the
 * bytes actually swapped (and a *_ROLLBACK record for items that were not). */
void ckpt_copies_trace_end(const struct job *j, uint64_t copy_ns);
/* Lock NOT held: waits for j's copies (bounded when a store's collectives
 * are in them); the code is the copies'. */
CUresult ckpt_copies_wait(struct job *j);
/* Waits for the device's copy streams (both directions). */
CUresult ckpt_copy_stream_sync(int device);
/* At exit, no job left: destroys the copy streams. */
void ckpt_copy_streams_release(void);
#endif
