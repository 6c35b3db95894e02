/* The program's streams. The driver does not say which streams a framework
 * computes on, so libckpt remembers those it allocated tagged memory on (and
 * the one declared with ckpt_set_stream):
 * - fences order libckpt's copies after all work enqueued on them so far
 *   (producers' writes and consumers' reads);
 * - gates hold them still while a survivor's VA is swapped between device and
 *   host memory: unmap+map is not atomic, and a kernel touching the VA in
 *   between would fault the context. A gate is one cuStreamBatchMemOp per
 *   stream: write "arrived" to a pinned word, then wait for the gate word.
 *   Both in ONE stream operation, so no kernel the program launches from
 *   another thread meanwhile can fall between them: once every stream has
 *   arrived, nothing enqueued before the gate is running and nothing after it
 *   can start until the engine writes the gate word. */
#include <stddef.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "state.h"
#include "streams.h"

static struct {
  CUstream s;
  int device;
  bool blocking; /* synchronises with the legacy stream (not CU_STREAM_NON_BLOCKING) */
  CUevent fence;
} streams[CKPT_MAX_STREAMS];
static int nstreams;
static unsigned evict;

/* Gate words, pinned and mapped for the device: per slot (one per open gate,
 * so opening one gate never releases another: waits compare with >=) the
 * gate word and one "arrived" word per stream. */
#define GATE_SLOTS 256
struct gate_slot {
  uint32_t open;
  uint32_t arrived[CKPT_MAX_STREAMS];
};
static volatile struct gate_slot *slots;
static CUdeviceptr slots_dptr;
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
  /* The legacy and per-thread default streams, and streams created without
   * CU_STREAM_NON_BLOCKING, all order with the legacy stream. */
  unsigned flags = 0;
  bool blocking = s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD ||
                  (DRV(cuStreamGetFlags, s, &flags) == CUDA_SUCCESS && !(flags & CU_STREAM_NON_BLOCKING));
  streams[nstreams].blocking = blocking;
  streams[nstreams].s = s;
  streams[nstreams].device = device;
  streams[nstreams].fence = f;
  nstreams++;
}

/* A copy that cannot be ordered after a stream could read stale bytes: any
 * failure fails the fence, and the caller copies nothing. A stream the
 * program destroyed is forgotten (the next fence goes without it). */
CUresult ckpt_fence(CUstream copy, int device) {
  CUresult rc = CUDA_SUCCESS;
  for (int i = 0; i < nstreams;) {
    if (streams[i].device != device) {
      i++;
      continue;
    }
    CUresult r = DRV(cuEventRecord, streams[i].fence, streams[i].s);
    if (r == CUDA_SUCCESS) r = DRV(cuStreamWaitEvent, copy, streams[i].fence, 0);
    if (r != CUDA_SUCCESS) {
      CU_FAILED(fence, r);
      rc = r;
      if (r == CUDA_ERROR_INVALID_HANDLE || r == CUDA_ERROR_CONTEXT_IS_DESTROYED) {
        drop(i);
        continue;
      }
    }
    i++;
  }
  return rc;
}

static bool gates_available(void) {
  if (gates_ok >= 0) return gates_ok;
  void *host = NULL;
  CUresult r = DRV(cuMemHostAlloc, &host, GATE_SLOTS * sizeof(struct gate_slot),
                   CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP);
  if (r == CUDA_SUCCESS) r = DRV(cuMemHostGetDevicePointer_v2, &slots_dptr, host, 0);
  if (r == CUDA_SUCCESS && !ckpt_drv.cuStreamBatchMemOp_v2) r = CUDA_ERROR_NOT_FOUND;
  gates_ok = r == CUDA_SUCCESS;
  if (gates_ok) {
    slots = host;
    memset(host, 0, GATE_SLOTS * sizeof(struct gate_slot));
  } else {
    CKPT_WARN("stream gates unavailable (%s): swaps rely on the policy's ordering alone", ckpt_cu_name(r));
  }
  return gates_ok;
}

static bool arrived(const struct ckpt_gate *g, int i) {
  return (int32_t)(__atomic_load_n(g->reached[i], __ATOMIC_ACQUIRE) - g->seq) >= 0;
}

/* One batch on `s`: write "arrived", then wait for the gate word. */
static CUresult hold(struct ckpt_gate *g, CUstream s, CUdeviceptr base) {
  CUstreamBatchMemOpParams ops[2];
  memset(ops, 0, sizeof ops);
  ops[0].writeValue.operation = CU_STREAM_MEM_OP_WRITE_VALUE_32;
  ops[0].writeValue.address = base + offsetof(struct gate_slot, arrived) + (CUdeviceptr)g->n * sizeof(uint32_t);
  ops[0].writeValue.value = g->seq;
  ops[1].waitValue.operation = CU_STREAM_MEM_OP_WAIT_VALUE_32;
  ops[1].waitValue.address = base + offsetof(struct gate_slot, open);
  ops[1].waitValue.value = g->seq;
  ops[1].waitValue.flags = CU_STREAM_WAIT_VALUE_GEQ;
  CUresult r = DRV(cuStreamBatchMemOp_v2, s, 2, ops, 0);
  if (r != CUDA_SUCCESS) {
    CU_FAILED(cuStreamBatchMemOp_v2, r); /* that stream is not held */
    return r;
  }
  g->reached[g->n] = &slots[g->slot].arrived[g->n];
  g->n++;
  return CUDA_SUCCESS;
}

/* Holding the legacy stream holds every blocking stream too (each orders
 * with it both ways), and it must be the only hold among them: a hold on a
 * blocking stream and one on the legacy stream would each wait for the
 * other's wait. Non-blocking streams get a hold each. */
int ckpt_gate_close(int device, struct ckpt_gate *g) {
  g->n = 0;
  if (!gates_available()) return 0;
  int slot = -1;
  for (unsigned i = 0; i < GATE_SLOTS && slot < 0; i++)
    if (!slot_busy[(gate_seq + 1 + i) % GATE_SLOTS]) slot = (int)((gate_seq + 1 + i) % GATE_SLOTS);
  if (slot < 0) {
    CKPT_WARN_ONCE("all %d stream gates are in use: a swap proceeds ungated", GATE_SLOTS);
    return 0;
  }
  slot_busy[slot] = true;
  g->slot = (unsigned)slot;
  g->seq = ++gate_seq;
  CUdeviceptr base = slots_dptr + (CUdeviceptr)slot * sizeof(struct gate_slot);
  bool legacy = false;
  CUresult r = CUDA_SUCCESS;
  for (int i = 0; i < nstreams && r == CUDA_SUCCESS; i++) {
    if (streams[i].device != device) continue;
    if (streams[i].blocking) legacy = true;
    else r = hold(g, streams[i].s, base);
  }
  if (legacy && r == CUDA_SUCCESS) r = hold(g, CU_STREAM_LEGACY, base);
  if (r != CUDA_SUCCESS) {
    /* A stream we could not hold may touch the VA at any time: no swap may
     * happen under this gate. Let the held ones go. */
    ckpt_gate_open(g);
    return -1;
  }
  return 1;
}

bool ckpt_streams_release(void) {
  for (unsigned i = 0; i < GATE_SLOTS; i++)
    if (slot_busy[i]) return false; /* a stream may still wait on the page */
  while (nstreams) drop(nstreams - 1);
  if (gates_ok == 1) DRV(cuMemFreeHost, (void *)slots);
  slots = NULL;
  gates_ok = 0; /* never again in this process */
  return true;
}

CUresult ckpt_event_query(CUevent e) {
  CUresult r = DRV(cuEventQuery, e);
  if (r != CUDA_SUCCESS && r != CUDA_ERROR_NOT_READY) {
    CU_ERROR_ONCE("cuEventQuery failed (%s): treated as not complete yet", ckpt_cu_name(r));
  }
  return r;
}

bool ckpt_gate_reached(struct ckpt_gate *g) {
  for (int i = 0; i < g->n; i++)
    if (!arrived(g, i)) return false;
  return true;
}

void ckpt_gate_wait(struct ckpt_gate *g) {
  struct timespec ts = {0, 0};
  double t0 = ckpt_now();
  bool warned = false;
  for (unsigned spin = 0; !ckpt_gate_reached(g); spin++) {
    ts.tv_nsec = spin < 8 ? 10000L << spin : 1000000L; /* 10 us doubling to 1 ms */
    nanosleep(&ts, NULL);
    if (!warned && ckpt_now() - t0 > 30) {
      CKPT_WARN("a stream has not reached libckpt's gate after 30 s (is it blocked on the host?)");
      warned = true;
    }
  }
}

void ckpt_gate_open(struct ckpt_gate *g) {
  __atomic_store_n(&slots[g->slot].open, g->seq, __ATOMIC_RELEASE);
  slot_busy[g->slot] = false;
  g->n = 0;
}
