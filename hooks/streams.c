/* The program's streams (streams.h).
 * - Fences order libckpt's copies after all work enqueued on them so far
 *   (producers' writes and consumers' reads).
 * - Gates hold them still while a survivor's VA is swapped between device and
 *   host memory: unmap+map is not atomic, and a kernel touching the VA in
 *   between would fault the context. A gate is a cut in submission order
 *   (README, "Gates"): under the exclusive side of the submission lock, phase
 *   1 enqueues on every held stream a write of "arrived", phase 2 on every
 *   held stream a wait for the gate word. No program submission falls between
 *   the phases and every arrival precedes every wait in every hardware queue,
 *   so the arrivals come however the streams share queues, unless pre-cut
 *   work is blocked on the host: that wait is bounded (CKPT_GATE_TIMEOUT). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "params.h"
#include "state.h"
#include "streams.h"
#include "submit.h"

struct stream {
  CUstream s;
  int device;
  bool blocking; /* synchronises with the legacy stream (not CU_STREAM_NON_BLOCKING) */
  CUevent fence;
  unsigned word; /* its arrival word */
};
static struct stream *streams;
static int nstreams, cap_streams;

/* Pinned, device-mapped words: the gate words (one per slot, so opening one
 * gate never releases another: waits compare with >=) and one arrival word
 * per known stream (a stream passes gates in seq order, so its word only
 * grows), in chunks allocated as streams appear. */
#define GATE_SLOTS 256
#define CHUNK 1024
#define MAX_CHUNKS 256
static volatile uint32_t *slots;
static CUdeviceptr slots_dptr;
static volatile uint32_t *chunk[MAX_CHUNKS];
static CUdeviceptr chunk_dptr[MAX_CHUNKS];
static unsigned nwords, *free_words, nfree, cap_free;
static uint32_t gate_seq;
static bool slot_busy[GATE_SLOTS];
static int gates_ok = -1; /* unknown, 0 unavailable, 1 available */

static CUresult pinned(size_t bytes, volatile uint32_t **host, CUdeviceptr *dptr) {
  void *h = NULL;
  CUresult r = DRV(cuMemHostAlloc, &h, bytes, CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP);
  if (r == CUDA_SUCCESS) r = DRV(cuMemHostGetDevicePointer_v2, dptr, h, 0);
  if (r != CUDA_SUCCESS) {
    if (h) DRV(cuMemFreeHost, h);
    return r;
  }
  memset(h, 0, bytes);
  *host = h;
  return CUDA_SUCCESS;
}

static bool gates_available(void) {
  if (gates_ok >= 0) return gates_ok;
  CUresult r = pinned(GATE_SLOTS * sizeof(uint32_t), &slots, &slots_dptr);
  if (r == CUDA_SUCCESS && !ckpt_drv.cuStreamBatchMemOp_v2) r = CUDA_ERROR_NOT_FOUND;
  gates_ok = r == CUDA_SUCCESS;
  if (!gates_ok)
    CKPT_WARN("stream gates unavailable (%s): a swap cannot be made safe against the program's kernels, so none is "
              "made: survivors stay on the device (no memory saved)", ckpt_cu_name(r));
  return gates_ok;
}

/* Freed words are reused oldest first: a late arrival of a forgotten stream
 * could only make a gate wait (bounded), never open one early. */
static bool word_new(unsigned *out) {
  if (nfree > 64) {
    *out = free_words[0];
    memmove(free_words, free_words + 1, --nfree * sizeof *free_words);
    return true;
  }
  if (nwords % CHUNK == 0) {
    unsigned c = nwords / CHUNK;
    if (c == MAX_CHUNKS || pinned(CHUNK * sizeof(uint32_t), &chunk[c], &chunk_dptr[c]) != CUDA_SUCCESS) return false;
  }
  *out = nwords++;
  return true;
}
static volatile uint32_t *word_host(unsigned w) { return &chunk[w / CHUNK][w % CHUNK]; }
static CUdeviceptr word_dptr(unsigned w) { return chunk_dptr[w / CHUNK] + (w % CHUNK) * sizeof(uint32_t); }

static void drop(int i) {
  DRV(cuEventDestroy_v2, streams[i].fence);
  if (nfree == cap_free) {
    unsigned cap = cap_free ? 2 * cap_free : 64, *n = realloc(free_words, cap * sizeof *n);
    if (n) free_words = n, cap_free = cap;
  }
  if (nfree < cap_free) free_words[nfree++] = streams[i].word; /* else: the word leaks */
  streams[i] = streams[--nstreams];
  ckpt_g.stats.streams_known = (uint64_t)nstreams;
}

static int find(CUstream s, int device) {
  for (int i = 0; i < nstreams; i++)
    if (streams[i].s == s && (device < 0 || streams[i].device == device)) return i;
  return -1;
}

static void note(CUstream s, int device) {
  if (find(s, device) >= 0) return;
  if (nstreams == cap_streams) {
    int cap = cap_streams ? 2 * cap_streams : 16;
    struct stream *n = realloc(streams, (size_t)cap * sizeof *n);
    if (!n) return;
    streams = n;
    cap_streams = cap;
  }
  struct stream *e = &streams[nstreams];
  e->word = 0;
  if (gates_available() && !word_new(&e->word)) return;
  if (DRV(cuEventCreate, &e->fence, CU_EVENT_DISABLE_TIMING) != CUDA_SUCCESS) return;
  /* The legacy and per-thread default streams, and streams created without
   * CU_STREAM_NON_BLOCKING, all order with the legacy stream. */
  unsigned flags = 0;
  e->blocking = s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD ||
                (DRV(cuStreamGetFlags, s, &flags) == CUDA_SUCCESS && !(flags & CU_STREAM_NON_BLOCKING));
  e->s = s;
  e->device = device;
  nstreams++;
  ckpt_g.stats.streams_known = (uint64_t)nstreams;
}

/* The device's legacy stream is always known: it is what holds the blocking ones. */
void ckpt_note_stream(CUstream s, int device) {
  note(CU_STREAM_LEGACY, device);
  if (s != CU_STREAM_LEGACY) note(s, device);
}

static bool current_device(int *dev) {
  CUdevice d;
  if (DRV(cuCtxGetDevice, &d) != CUDA_SUCCESS) return false;
  *dev = d;
  return true;
}

void ckpt_stream_created(CUstream s) {
  int dev;
  if (!ckpt_g.tagging || ckpt_g.forked || !s || !current_device(&dev)) return;
  IN_LIB_BEGIN();
  LOCK();
  ckpt_note_stream(s, dev);
  UNLOCK();
  IN_LIB_END();
}

void ckpt_stream_destroying(CUstream s) {
  if (!ckpt_g.tagging || ckpt_g.forked || !s) return;
  LOCK();
  for (int i; (i = find(s, -1)) >= 0;) drop(i);
  UNLOCK();
}

void ckpt_stream_capture_begins(CUstream s, bool ptsz) {
  if (!ckpt_g.tagging || ckpt_g.forked) return;
  if (!s) s = ptsz ? CU_STREAM_PER_THREAD : CU_STREAM_LEGACY;
  LOCK();
  int i = find(s, -1);
  if (i >= 0 && DRV(cuEventRecord, streams[i].fence, s) != CUDA_SUCCESS) ckpt_note_driver_error();
  UNLOCK();
}

/* A copy that cannot be ordered after a stream could read stale bytes: any
 * failure fails the fence, and the caller copies nothing. While a capture is
 * active on the device, a capturing stream (and the legacy stream, which a
 * record would implicitly join to a capture of a blocking stream) is not
 * touched: the copy waits for its last record instead, which for the stream
 * that began the capture is the one taken just before (its pre-capture work). */
CUresult ckpt_fence(CUstream copy, int device) {
  CUresult rc = CUDA_SUCCESS;
  bool capturing = ckpt_captures_active(device) > 0;
  for (int i = 0; i < nstreams;) {
    struct stream *e = &streams[i];
    if (e->device != device) {
      i++;
      continue;
    }
    CUresult r = CUDA_SUCCESS;
    if (!capturing || (e->s != CU_STREAM_LEGACY && !ckpt_stream_capturing(e->s))) r = DRV(cuEventRecord, e->fence, e->s);
    if (r == CUDA_SUCCESS) r = DRV(cuStreamWaitEvent, copy, e->fence, 0);
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

static CUresult memop(CUstream s, bool wait, CUdeviceptr addr, uint32_t value) {
  CUstreamBatchMemOpParams op;
  memset(&op, 0, sizeof op);
  if (wait) {
    op.waitValue.operation = CU_STREAM_MEM_OP_WAIT_VALUE_32;
    op.waitValue.address = addr;
    op.waitValue.value = value;
    op.waitValue.flags = CU_STREAM_WAIT_VALUE_GEQ;
  } else {
    op.writeValue.operation = CU_STREAM_MEM_OP_WRITE_VALUE_32;
    op.writeValue.address = addr;
    op.writeValue.value = value;
  }
  CUresult r = DRV(cuStreamBatchMemOp_v2, s, 1, &op, 0);
  if (r != CUDA_SUCCESS) CU_FAILED(cuStreamBatchMemOp_v2, r);
  return r;
}

static double gate_timeout(void) { return (double)ckpt_param_int(CKPT_P_GATE_TIMEOUT) / 1000.0; }

static int refuse(struct ckpt_gate *g, int why) {
  free(g->reached);
  g->reached = NULL;
  free(g->idle);
  g->idle = NULL;
  g->n = 0;
  if (why == CKPT_GATE_DEFERRED) {
    ckpt_g.stats.swaps_deferred_capture++;
    CKPT_INFO("a stream capture is active on the device: swaps wait (rolled back, retried later)");
  } else if (why == CKPT_GATE_NONE) {
    /* said where it was decided (gates_available, the slot search) */
  } else if (why == CKPT_GATE_TIMEOUT) {
    CKPT_INFO("the submission lock stayed taken past CKPT_GATE_TIMEOUT: no gate");
    ckpt_gate_timed_out();
  } else {
    CKPT_WARN_ONCE("a stream could not be held at libckpt's gate: swaps are skipped (offloaded data stays "
                   "on the device, restored data host-backed) until it can");
  }
  return why;
}

/* Held: the legacy stream (which holds every blocking stream too: each
 * orders with it both ways; a hold on a blocking stream besides it would wait
 * for the legacy stream's wait) and every non-blocking stream. */
int ckpt_gate_close(int device, struct ckpt_gate *g) {
  g->n = 0;
  g->reached = NULL;
  g->idle = NULL;
  /* No gate, no swap: an unheld kernel touching the VA between unmap and map
   * faults the context (hard-faults found it ungated under load). */
  if (!gates_available()) return refuse(g, CKPT_GATE_NONE);
  if (ckpt_captures_active(device)) return refuse(g, CKPT_GATE_DEFERRED);
  int slot = -1;
  for (unsigned i = 0; i < GATE_SLOTS && slot < 0; i++)
    if (!slot_busy[(gate_seq + 1 + i) % GATE_SLOTS]) slot = (int)((gate_seq + 1 + i) % GATE_SLOTS);
  if (slot < 0) {
    CKPT_WARN_ONCE("all %d stream gates are in use: swaps wait for one (rolled back, retried later)", GATE_SLOTS);
    return refuse(g, CKPT_GATE_NONE);
  }
  int *held = malloc((size_t)(nstreams + 1) * sizeof *held), nheld = 0;
  g->reached = malloc((size_t)(nstreams + 1) * sizeof *g->reached);
  if (!held || !g->reached) {
    free(held);
    return refuse(g, CKPT_GATE_FAILED);
  }
  for (int i = 0; i < nstreams; i++)
    if (streams[i].device == device && (streams[i].s == CU_STREAM_LEGACY || !streams[i].blocking)) held[nheld++] = i;
  if (!ckpt_submit_exclusive(gate_timeout())) {
    free(held);
    return refuse(g, CKPT_GATE_TIMEOUT);
  }
  /* Re-checked here: a capture begins under the shared side only. */
  if (ckpt_captures_active(device)) {
    ckpt_submit_release();
    free(held);
    return refuse(g, CKPT_GATE_DEFERRED);
  }
  g->slot = (unsigned)slot;
  g->seq = ++gate_seq;
  /* Which held streams have nothing queued: with submissions excluded, their
   * next work is the hold, so they arrive at once and stall nothing. Known
   * from the stream, not from how soon the arrival is seen (a loaded host
   * sees an idle stream's arrival late). No memory: all taken as busy. */
  if ((g->idle = malloc((size_t)(nheld + 1) * sizeof *g->idle)))
    for (int k = 0; k < nheld; k++) g->idle[k] = DRV(cuStreamQuery, streams[held[k]].s) == CUDA_SUCCESS;
  CUresult r = CUDA_SUCCESS;
  for (int k = 0; k < nheld && r == CUDA_SUCCESS; k++) /* phase 1: every arrival */
    r = memop(streams[held[k]].s, false, word_dptr(streams[held[k]].word), g->seq);
  int waits = 0;
  for (; waits < nheld && r == CUDA_SUCCESS; waits++) /* phase 2: every wait */
    r = memop(streams[held[waits]].s, true, slots_dptr + (CUdeviceptr)slot * sizeof(uint32_t), g->seq);
  ckpt_submit_release();
  for (int k = 0; k < nheld; k++) g->reached[g->n++] = word_host(streams[held[k]].word);
  free(held);
  slot_busy[slot] = true;
  if (r != CUDA_SUCCESS) {
    /* A stream we could not hold may touch the VA at any time: no swap may
     * happen under this gate. Let the held ones go. */
    ckpt_gate_open(g);
    return refuse(g, CKPT_GATE_FAILED);
  }
  return 1;
}

bool ckpt_streams_release(void) {
  for (unsigned i = 0; i < GATE_SLOTS; i++)
    if (slot_busy[i]) return false; /* a stream may still wait on the page */
  while (nstreams) drop(nstreams - 1);
  if (gates_ok == 1) {
    DRV(cuMemFreeHost, (void *)slots);
    for (unsigned c = 0; c < MAX_CHUNKS && chunk[c]; c++) DRV(cuMemFreeHost, (void *)chunk[c]);
  }
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

static bool arrived(const struct ckpt_gate *g, int i) {
  return (int32_t)(__atomic_load_n(g->reached[i], __ATOMIC_ACQUIRE) - g->seq) >= 0;
}

bool ckpt_gate_reached(struct ckpt_gate *g) {
  for (int i = 0; i < g->n; i++)
    if (!arrived(g, i)) return false;
  return true;
}

/* A held stream stalls only while work waits behind the gate. One that
 * arrives within the grace had next to nothing queued before the cut: the
 * program is not feeding it, so it is taken to have nothing behind the gate
 * either, and waiting longer costs nothing while the busy ones drain their
 * pre-cut work (which only the program's run-ahead bounds). Once a stream
 * that was busy has arrived, it may be stalled: CKPT_GATE_TIMEOUT from then. */
bool ckpt_gate_wait(struct ckpt_gate *g, int bounds, bool held) {
  struct timespec ts = {0, 0};
  double t0 = ckpt_now(), limit = gate_timeout() * bounds, busy_since = -1;
  bool *seen = held ? calloc((size_t)(g->n ? g->n : 1), sizeof *seen) : NULL;
  if (held && !seen) limit = gate_timeout(); /* no memory: the tighter bound */
  for (unsigned spin = 0; !ckpt_gate_reached(g); spin++) {
    double now = ckpt_now();
    for (int i = 0; seen && i < g->n; i++)
      if (!seen[i] && arrived(g, i)) {
        seen[i] = true;
        if (busy_since < 0 && !(g->idle && g->idle[i]) && now - t0 > CKPT_GATE_GRACE_S) busy_since = now;
      }
    if (now - t0 > limit || (busy_since >= 0 && now - busy_since > gate_timeout())) {
      free(seen);
      return false;
    }
    ts.tv_nsec = spin < 7 ? 10000L << spin : 1000000L; /* 10 us doubling to 1 ms */
    nanosleep(&ts, NULL);
  }
  free(seen);
  return true;
}

void ckpt_gate_timed_out(void) {
  ckpt_g.stats.gate_timeouts++;
  CKPT_WARN_ONCE("a stream did not reach libckpt's gate within CKPT_GATE_TIMEOUT=%lld ms (blocked on the host: "
                 "a wait-value or a host function; or a hardware queue shared with one, "
                 "CUDA_DEVICE_MAX_CONNECTIONS): the gate opened without swapping, retried later",
                 (long long)ckpt_param_int(CKPT_P_GATE_TIMEOUT));
}

void ckpt_gate_release(struct ckpt_gate *g) {
  if (slots) __atomic_store_n(&slots[g->slot], g->seq, __ATOMIC_RELEASE);
  slot_busy[g->slot] = false;
}

void ckpt_gate_forget(struct ckpt_gate *g) {
  free(g->reached);
  g->reached = NULL;
  free(g->idle);
  g->idle = NULL;
  g->n = 0;
}

void ckpt_gate_open(struct ckpt_gate *g) {
  ckpt_gate_release(g);
  ckpt_gate_forget(g);
}
