#define _GNU_SOURCE /* the writer-preferring rwlock, pthread_rwlock_clockwrlock */
/* The submission lock and the capture count (submit.h). */
#include <time.h>

#include "driver.h"
#include "state.h"
#include "submit.h"

int ckpt_gating;
__thread int ckpt_submit_depth;
/* Writer-preferring: a stream of launches from many threads must not starve
 * a gate; readers never nest on one thread (ckpt_submit_depth). */
pthread_rwlock_t ckpt_submit_lock = PTHREAD_RWLOCK_WRITER_NONRECURSIVE_INITIALIZER_NP;

bool ckpt_submit_exclusive(double timeout_s) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  long ns = ts.tv_nsec + (long)((timeout_s - (double)(long)timeout_s) * 1e9);
  ts.tv_sec += (time_t)timeout_s + ns / 1000000000L;
  ts.tv_nsec = ns % 1000000000L;
  return pthread_rwlock_clockwrlock(&ckpt_submit_lock, CLOCK_MONOTONIC, &ts) == 0;
}

void ckpt_submit_release(void) { pthread_rwlock_unlock(&ckpt_submit_lock); }

/* ---- captures ------------------------------------------------------------- */

#define MAXDEV 64
#define MAXCAP 256
static int active[MAXDEV];
static int active_total;
static pthread_mutex_t cap_mu = PTHREAD_MUTEX_INITIALIZER; /* innermost; guards caps */
static struct {
  CUstream s;
  int device;
} caps[MAXCAP];
static int ncaps;

static CUstream norm(CUstream s, bool ptsz) { return s ? s : ptsz ? CU_STREAM_PER_THREAD : CU_STREAM_LEGACY; }

void ckpt_capture_begun(CUstream s, bool ptsz, CUresult rc) {
  CUdevice dev = 0;
  if (rc != CUDA_SUCCESS || !ckpt_g.tagging || DRV(cuCtxGetDevice, &dev) != CUDA_SUCCESS) return;
  if (dev < 0 || dev >= MAXDEV) return;
  pthread_mutex_lock(&cap_mu);
  if (ncaps < MAXCAP) {
    caps[ncaps].s = norm(s, ptsz);
    caps[ncaps].device = dev;
    ncaps++;
  }
  /* Counted even when the table is full: then never decremented, and the
   * device's swaps wait for good (safe, said in the stats). */
  __atomic_add_fetch(&active[dev], 1, __ATOMIC_RELAXED);
  __atomic_add_fetch(&active_total, 1, __ATOMIC_RELAXED);
  pthread_mutex_unlock(&cap_mu);
}

/* cuStreamEndCapture ends the capture whatever it returns (an invalidated
 * capture too), unless the stream was not the origin of one. */
void ckpt_capture_ended(CUstream s, bool ptsz) {
  if (!ckpt_g.tagging) return;
  s = norm(s, ptsz);
  pthread_mutex_lock(&cap_mu);
  for (int i = 0; i < ncaps; i++)
    if (caps[i].s == s) {
      __atomic_sub_fetch(&active[caps[i].device], 1, __ATOMIC_RELAXED);
      __atomic_sub_fetch(&active_total, 1, __ATOMIC_RELAXED);
      caps[i] = caps[--ncaps];
      break;
    }
  pthread_mutex_unlock(&cap_mu);
}

int ckpt_captures_active(int device) {
  return device >= 0 && device < MAXDEV ? __atomic_load_n(&active[device], __ATOMIC_RELAXED) : 0;
}

bool ckpt_captures_any(void) { return __atomic_load_n(&active_total, __ATOMIC_RELAXED) > 0; }

bool ckpt_stream_capturing(CUstream s) {
  CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
  CUresult r = DRV(cuStreamIsCapturing, s, &st);
  if (r == CUDA_ERROR_NOT_FOUND) return false; /* a driver without capture */
  return r != CUDA_SUCCESS || st != CU_STREAM_CAPTURE_STATUS_NONE;
}

#define NOT_SWITCHED (-1)
ckpt_relax_t ckpt_relax_begin(void) {
  ckpt_relax_t r = {NOT_SWITCHED};
  if (!ckpt_g.tagging || !ckpt_captures_any()) return r;
  CUstreamCaptureMode m = CU_STREAM_CAPTURE_MODE_RELAXED;
  if (DRV(cuThreadExchangeStreamCaptureMode, &m) == CUDA_SUCCESS) r.saved = (int)m;
  return r;
}

void ckpt_relax_end(ckpt_relax_t *r) {
  if (r->saved == NOT_SWITCHED) return;
  CUstreamCaptureMode m = (CUstreamCaptureMode)r->saved;
  DRV(cuThreadExchangeStreamCaptureMode, &m);
}
