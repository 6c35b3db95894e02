/* The program's streams, which libckpt orders its copies after (fences) and
 * holds still while it swaps a mapping (gates). Every stream the process
 * creates is known (the stream hooks), plus the legacy stream of each device
 * and those tagged memory was allocated on or declared with ckpt_set_stream.
 * Lock held unless said. */
#ifndef CKPT_STREAMS_H
#define CKPT_STREAMS_H
#include <stdbool.h>
#include <stdint.h>

#include "cu.h"

void ckpt_note_stream(CUstream s, int device);
/* Makes `copy` wait for the work enqueued so far on every known stream of `device`. */
CUresult ckpt_fence(CUstream copy, int device);
struct ckpt_gate {
  int n;
  unsigned slot;
  uint32_t seq;
  volatile uint32_t **reached; /* per held stream: its arrival word (>= seq: arrived) */
  bool *idle;                  /* per held stream: nothing queued at the cut (cuStreamQuery), or NULL */
};
enum { CKPT_GATE_FAILED = -1, CKPT_GATE_DEFERRED = -2, CKPT_GATE_TIMEOUT = -3, CKPT_GATE_NONE = -4 };
/* The device's context current. 1: every program stream of the device is
 * held; < 0: no stream is held and nothing may be swapped: a stream could
 * not be held (FAILED), a capture is active on the device (DEFERRED), the
 * submission lock stayed taken past CKPT_GATE_TIMEOUT (TIMEOUT), or there is
 * no gate to close (NONE: the driver cannot give the gate page, or every slot
 * is in use). Never 0 any more: a swap without a gate can fault the context. */
int ckpt_gate_close(int device, struct ckpt_gate *g);
bool ckpt_gate_reached(struct ckpt_gate *g);
/* Lock NOT held. Waits for every arrival; false when one did not come in
 * time (counted by ckpt_gate_timed_out): at most `bounds` x
 * CKPT_GATE_TIMEOUT, and, when `held` (the gate still closed), at most
 * CKPT_GATE_TIMEOUT after the first stream that had work queued at the cut
 * and arrived later than CKPT_GATE_GRACE_S after the wait began (README,
 * "Gates"). */
#define CKPT_GATE_GRACE_S 0.001
bool ckpt_gate_wait(struct ckpt_gate *g, int bounds, bool held);
void ckpt_gate_timed_out(void);
/* Opens the gate: release (the held streams go on; the arrival words can
 * still be awaited) + forget. */
void ckpt_gate_open(struct ckpt_gate *g);
void ckpt_gate_release(struct ckpt_gate *g);
void ckpt_gate_forget(struct ckpt_gate *g);
/* cuEventQuery; an error other than NOT_READY is counted and warned once. */
CUresult ckpt_event_query(CUevent e);
/* At exit: fence events and the gate page; false (nothing done) when a gate
 * is still closed. */
bool ckpt_streams_release(void);

/* The stream hooks (lock NOT held): a stream created / about to be destroyed,
 * and the fence record taken just before a capture begins on a stream (its
 * work from before the capture, which fences of that stream use while it
 * captures). */
void ckpt_stream_created(CUstream s);
void ckpt_stream_destroying(CUstream s);
void ckpt_stream_capture_begins(CUstream s, bool ptsz);
#endif
