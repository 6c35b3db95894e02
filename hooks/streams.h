/* The program's streams, which libckpt orders its copies after (fences) and
 * holds still while it swaps a mapping (gates). Lock held unless said. */
#ifndef CKPT_STREAMS_H
#define CKPT_STREAMS_H
#include <stdbool.h>
#include <stdint.h>

#include "cu.h"

#define CKPT_MAX_STREAMS 8
void ckpt_note_stream(CUstream s, int device);
/* Makes `copy` wait for the work enqueued so far on every known stream of `device`. */
CUresult ckpt_fence(CUstream copy, int device);
struct ckpt_gate {
  int n;
  unsigned slot;
  uint32_t seq;
  volatile uint32_t *reached[CKPT_MAX_STREAMS]; /* each stream writes seq here on arrival */
};
/* The device's context current. 1: every program stream of the device is
 * held; 0: no gate (unavailable: swaps rely on the policy's order); -1: a
 * stream could not be held (logged): nothing may be swapped. */
int ckpt_gate_close(int device, struct ckpt_gate *g);
bool ckpt_gate_reached(struct ckpt_gate *g);
void ckpt_gate_wait(struct ckpt_gate *g); /* lock NOT held */
void ckpt_gate_open(struct ckpt_gate *g);
/* cuEventQuery; an error other than NOT_READY is counted and warned once. */
CUresult ckpt_event_query(CUevent e);
/* At exit: fence events and the gate page; false (nothing done) when a gate
 * is still closed. */
bool ckpt_streams_release(void);
#endif
