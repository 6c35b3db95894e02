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
  CUevent fence, gate;
} streams[CKPT_MAX_STREAMS];
static int nstreams;
static unsigned evict;

static volatile uint32_t *gate_word; /* pinned, mapped for the device */
static CUdeviceptr gate_dptr;
static uint32_t gate_seq;
static int gates_ok = -1; /* unknown, 0 unavailable, 1 available */
static bool gate_closed;  /* the engine may be waiting on the gate events */

static void drop(int i) {
  DRV(cuEventDestroy_v2, streams[i].fence);
  if (!gate_closed) DRV(cuEventDestroy_v2, streams[i].gate); /* else: one event leaks, rather than a use after free */
  streams[i] = streams[--nstreams];
}

void ckpt_note_stream(CUstream s, int device) {
  for (int i = 0; i < nstreams; i++)
    if (streams[i].s == s && streams[i].device == device) return;
  CUevent f, g;
  if (DRV(cuEventCreate, &f, CU_EVENT_DISABLE_TIMING) != CUDA_SUCCESS) return;
  if (DRV(cuEventCreate, &g, CU_EVENT_DISABLE_TIMING | CU_EVENT_BLOCKING_SYNC) != CUDA_SUCCESS) {
    DRV(cuEventDestroy_v2, f);
    return;
  }
  if (nstreams == CKPT_MAX_STREAMS) drop((int)(evict++ % CKPT_MAX_STREAMS));
  streams[nstreams].s = s;
  streams[nstreams].device = device;
  streams[nstreams].fence = f;
  streams[nstreams].gate = g;
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
  CUresult r = DRV(cuMemHostAlloc, &host, sizeof(uint32_t), CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP);
  if (r == CUDA_SUCCESS) r = DRV(cuMemHostGetDevicePointer_v2, &gate_dptr, host, 0);
  if (r == CUDA_SUCCESS && !ckpt_drv.cuStreamWaitValue32_v2) r = CUDA_ERROR_NOT_FOUND;
  gates_ok = r == CUDA_SUCCESS;
  if (gates_ok) {
    gate_word = host;
    *gate_word = gate_seq;
  } else {
    CKPT_WARN("stream gates unavailable (%s): swaps rely on the policy's ordering alone", ckpt_cu_name(r));
  }
  return gates_ok;
}

bool ckpt_gate_close(int device, struct ckpt_gate *g) {
  g->n = 0;
  if (!gates_available()) return false;
  g->seq = ++gate_seq;
  gate_closed = true;
  for (int i = 0; i < nstreams; i++) {
    /* Another thread's default stream cannot be named from here. */
    if (streams[i].device != device || streams[i].s == CU_STREAM_PER_THREAD) continue;
    CUresult r = DRV(cuEventRecord, streams[i].gate, streams[i].s);
    if (r == CUDA_SUCCESS)
      r = DRV(cuStreamWaitValue32_v2, streams[i].s, gate_dptr, g->seq, CU_STREAM_WAIT_VALUE_GEQ);
    if (r != CUDA_SUCCESS) {
      CU_FAILED(cuStreamWaitValue32_v2, r);
      continue;
    }
    g->reached[g->n++] = streams[i].gate;
  }
  return true;
}

void ckpt_gate_wait(struct ckpt_gate *g) {
  for (int i = 0; i < g->n; i++) {
    CUresult r = DRV(cuEventSynchronize, g->reached[i]);
    if (r != CUDA_SUCCESS) CU_FAILED(cuEventSynchronize, r);
  }
}

void ckpt_gate_open(struct ckpt_gate *g) {
  gate_closed = false;
  if (!gate_word) return;
  __atomic_store_n(gate_word, g->seq, __ATOMIC_RELEASE);
}
