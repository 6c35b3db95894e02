/* The program's streams. The driver does not say which streams a framework
 * computes on, so libckpt remembers those it allocated tagged memory on (and
 * the one declared with ckpt_set_stream):
 * - fences order libckpt's copies after all work enqueued on them so far
 *   (producers' writes and consumers' reads);
 * - gates hold them still while a survivor's VA is swapped between device and
 *   host memory: unmap+map is not atomic, and a kernel touching the VA in
 *   between would fault the context. A gate is a wait on a host word
 *   (cuStreamWaitValue32) preceded by an event: once every event has
 *   completed, nothing enqueued before the gate runs, nothing after it can
 *   start until the word is written. */
#include "internal.h"

static struct {
  CUstream s;
  int device;
  CUevent fence;
} streams[CKPT_MAX_STREAMS];
static int nstreams;
static unsigned evict;

/* Gate words: one pinned page, a slot per open gate, so opening one gate
 * never releases another (waits compare with >=). */
#define GATE_SLOTS 256
static volatile uint32_t *gate_words;
static CUdeviceptr gate_dwords;
static uint32_t gate_seq;
static bool slot_busy[GATE_SLOTS];
static int gates_ok = -1; /* unknown, 0 unavailable, 1 available */

static void drop(int i) {
  DRV(cuEventDestroy_v2, streams[i].fence);
  streams[i] = streams[--nstreams];
}

void ckpt_note_stream(CUstream s, int device) {
  for (int i = 0; i < nstreams; i++)
    if (streams[i].s == s && streams[i].device == device) return;
  CUevent f;
  if (DRV(cuEventCreate, &f, CU_EVENT_DISABLE_TIMING) != CUDA_SUCCESS) return;
  if (nstreams == CKPT_MAX_STREAMS) drop((int)(evict++ % CKPT_MAX_STREAMS));
  streams[nstreams].s = s;
  streams[nstreams].device = device;
  streams[nstreams].fence = f;
  nstreams++;
}

CKPT_API int ckpt_set_stream(uintptr_t cu_stream) {
  ckpt_init();
  if (!ckpt_g.tagging) return 0;
  CUdevice dev;
  if (DRV(cuCtxGetDevice, &dev) != CUDA_SUCCESS) return CKPT_EDRIVER;
  LOCK();
  ckpt_note_stream(cu_stream ? (CUstream)cu_stream : CU_STREAM_LEGACY, dev);
  UNLOCK();
  return 0;
}

void ckpt_fence(CUstream copy, int device) {
  for (int i = 0; i < nstreams;) {
    if (streams[i].device != device) {
      i++;
      continue;
    }
    CUresult r = DRV(cuEventRecord, streams[i].fence, streams[i].s);
    if (r == CUDA_SUCCESS) r = DRV(cuStreamWaitEvent, copy, streams[i].fence, 0);
    if (r != CUDA_SUCCESS) {
      /* Most likely the program destroyed that stream: forget it. */
      CKPT_INFO("stream %p no longer usable (%s): forgotten", (void *)streams[i].s, ckpt_cu_name(r));
      drop(i);
      continue;
    }
    i++;
  }
}

static bool gates_available(void) {
  if (gates_ok >= 0) return gates_ok;
  void *host = NULL;
  CUresult r = DRV(cuMemHostAlloc, &host, GATE_SLOTS * sizeof(uint32_t),
                   CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP);
  if (r == CUDA_SUCCESS) r = DRV(cuMemHostGetDevicePointer_v2, &gate_dwords, host, 0);
  if (r == CUDA_SUCCESS && !ckpt_drv.cuStreamWaitValue32_v2) r = CUDA_ERROR_NOT_FOUND;
  gates_ok = r == CUDA_SUCCESS;
  if (gates_ok) {
    gate_words = host;
    for (int i = 0; i < GATE_SLOTS; i++) gate_words[i] = 0;
  } else {
    CKPT_WARN("stream gates unavailable (%s): swaps rely on the policy's ordering alone", ckpt_cu_name(r));
  }
  return gates_ok;
}

bool ckpt_gate_close(int device, struct ckpt_gate *g) {
  g->n = 0;
  if (!gates_available()) return false;
  int slot = -1;
  for (int i = 0; i < GATE_SLOTS && slot < 0; i++)
    if (!slot_busy[(gate_seq + 1 + (unsigned)i) % GATE_SLOTS]) slot = (int)((gate_seq + 1 + (unsigned)i) % GATE_SLOTS);
  if (slot < 0) {
    CKPT_WARN_ONCE("all %d stream gates are in use: a swap proceeds ungated", GATE_SLOTS);
    return false;
  }
  slot_busy[slot] = true;
  g->slot = (unsigned)slot;
  g->seq = ++gate_seq;
  int gated[CKPT_MAX_STREAMS];
  /* Every "reached" event first, then the waits: the legacy stream implicitly
   * waits for the blocking streams' earlier work, so an event recorded on it
   * after another stream's wait would wait for the gate itself. Each gate has
   * its own events: two gates may be closed on one stream at once. */
  for (int i = 0; i < nstreams; i++) {
    /* Another thread's default stream cannot be named from here. */
    if (streams[i].device != device || streams[i].s == CU_STREAM_PER_THREAD) continue;
    CUevent ev;
    CUresult r = DRV(cuEventCreate, &ev, CU_EVENT_DISABLE_TIMING | CU_EVENT_BLOCKING_SYNC);
    if (r == CUDA_SUCCESS) {
      r = DRV(cuEventRecord, ev, streams[i].s);
      if (r != CUDA_SUCCESS) DRV(cuEventDestroy_v2, ev);
    }
    if (r != CUDA_SUCCESS) {
      CU_FAILED(cuEventRecord, r);
      continue;
    }
    gated[g->n] = i;
    g->reached[g->n++] = ev;
  }
  CUdeviceptr word = gate_dwords + g->slot * sizeof(uint32_t);
  for (int k = 0; k < g->n; k++) {
    CUresult r = DRV(cuStreamWaitValue32_v2, streams[gated[k]].s, word, g->seq, CU_STREAM_WAIT_VALUE_GEQ);
    if (r != CUDA_SUCCESS) CU_FAILED(cuStreamWaitValue32_v2, r); /* that stream is not held */
  }
  return true;
}

bool ckpt_gate_reached(struct ckpt_gate *g) {
  for (int i = 0; i < g->n; i++)
    if (DRV(cuEventQuery, g->reached[i]) != CUDA_SUCCESS) return false;
  return true;
}

void ckpt_gate_wait(struct ckpt_gate *g) {
  for (int i = 0; i < g->n; i++) {
    CUresult r = DRV(cuEventSynchronize, g->reached[i]);
    if (r != CUDA_SUCCESS) CU_FAILED(cuEventSynchronize, r);
  }
}

void ckpt_gate_open(struct ckpt_gate *g) {
  __atomic_store_n(&gate_words[g->slot], g->seq, __ATOMIC_RELEASE);
  slot_busy[g->slot] = false;
  for (int i = 0; i < g->n; i++) DRV(cuEventDestroy_v2, g->reached[i]);
  g->n = 0;
}
