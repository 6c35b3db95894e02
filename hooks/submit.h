/* The submission lock and the capture count: what a gate's cut needs from
 * every thread that enqueues work. Base layer: calls only the driver table.
 *
 * While gating is possible (a tagging mode and at least one tagged
 * allocation made: ckpt_gating), every hooked entry point that enqueues work
 * on a stream runs inside the shared (reader) side of ckpt_submit_lock; a
 * gate takes the exclusive side only while it enqueues its two phases, so no
 * program submission falls between them (README, "Gates"). A thread-local
 * depth keeps nested hooked calls from locking twice. */
#ifndef CKPT_SUBMIT_H
#define CKPT_SUBMIT_H
#include <pthread.h>
#include <stdbool.h>

#include "cu.h"

extern int ckpt_gating; /* relaxed atomic: 0 until the first tagged allocation */
extern __thread int ckpt_submit_depth;
extern pthread_rwlock_t ckpt_submit_lock;

static inline bool ckpt_submit_enter(void) {
  if (!__atomic_load_n(&ckpt_gating, __ATOMIC_RELAXED) || ckpt_submit_depth) return false;
  ckpt_submit_depth = 1;
  pthread_rwlock_rdlock(&ckpt_submit_lock);
  return true;
}
static inline void ckpt_submit_leave(bool locked) {
  if (!locked) return;
  pthread_rwlock_unlock(&ckpt_submit_lock);
  ckpt_submit_depth = 0;
}
/* The exclusive side, waiting at most `timeout_s`: false when it timed out
 * (a thread holds the shared side across a blocking call). */
bool ckpt_submit_exclusive(double timeout_s);
void ckpt_submit_release(void);

/* Captures, counted per device (the hooks call these, the first one before
 * the real cuStreamBeginCapture, the others after, under the shared side). */
void ckpt_capture_begun(CUstream s, bool ptsz, CUresult rc);
void ckpt_capture_ended(CUstream s, bool ptsz);
int ckpt_captures_active(int device); /* exact under the exclusive side */
bool ckpt_captures_any(void);
/* Whether s is capturing now (cuStreamIsCapturing; an error counts as yes). */
bool ckpt_stream_capturing(CUstream s);

/* The calling thread's capture mode switched to relaxed for libckpt's own
 * driver calls while any capture is active; restored by the cleanup. */
typedef struct { int saved; } ckpt_relax_t;
ckpt_relax_t ckpt_relax_begin(void);
void ckpt_relax_end(ckpt_relax_t *r);
#define CKPT_RELAXED_SCOPE() \
  __attribute__((cleanup(ckpt_relax_end))) ckpt_relax_t ckpt_relax_ = ckpt_relax_begin()
#endif
