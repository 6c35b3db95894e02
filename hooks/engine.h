/* The engine: the job queue, the engine thread that waits for each job's
 * copies and swaps them under a gate (batched), and its stop. Lock held
 * unless said. */
#ifndef CKPT_ENGINE_H
#define CKPT_ENGINE_H
#include <stdbool.h>

struct region;
struct talloc;

/* Lock held: the bytes and seconds the copies of each direction (JOB_TO_HOST,
 * JOB_TO_DEVICE) took in this run, from their events; false before any. */
bool ckpt_engine_link(int kind, double *bytes, double *seconds);

/* Starts the copies of `items` (all on one device) as one job of `kind`
 * (JOB_TO_HOST / JOB_TO_DEVICE, copy.h) for the tree `top` and queues it;
 * 0, or a negative CKPT_E* code. */
int ckpt_engine_submit(int kind, struct region *top, struct talloc **items, int n);
/* Closes a gate for every restore of `top` queued and not gated yet, so that
 * the work the caller enqueues next runs after the swap; true when one of
 * them could not be gated (the caller must wait for the swap instead). */
bool ckpt_engine_gate_restores(struct region *top);
/* Waits until no engine job is in flight for the tree (releases the lock
 * meanwhile); `count_stall`: the wait is a consumer's stall. Never silent: a
 * wait past 10 s warns, naming the region, and again at each `bound_s`
 * (CKPT_WAIT_TIMEOUT when 0). `give_up`: returns false at the bound instead
 * (the jobs go on); otherwise it waits on, since its caller may not go on
 * before the swap. */
bool ckpt_engine_wait_settled(struct region *top, bool count_stall, bool give_up);
/* Lock NOT held. Stops the engine thread; false when it could not be joined
 * (a copy may still run). */
bool ckpt_engine_stop(void);
/* At exit, engine stopped: the copy streams, when no job is left; false when
 * copies may still run into memory libckpt holds. */
bool ckpt_engine_release(void);
#endif
