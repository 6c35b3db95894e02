/* The copies and swaps (copy.h), through the backing-store interface. */
#include <stdlib.h>
#include <time.h>

#include "arena.h"
#include "check.h"
#include "copy.h"
#include "observe.h"
#include "params.h"
#include "region.h"
#include "state.h"
#include "store.h"
#include "vmm.h"

/* ---- per-device copy streams --------------------------------------------- */

#define MAXDEV 64
/* One per device and direction (JOB_TO_HOST, JOB_TO_DEVICE), so that offloads
 * and restores run at the same time (PCIe carries both at full rate). Nothing
 * orders one direction behind the other on the device; the order that
 * matters is kept on the host: an item is restored only once its offload was
 * applied (policy: never a busy item, so after its copy's `done` completed
 * and its swap), and a store's room is dropped only after the copy out of it
 * completed (ckpt_copies_apply runs after `done`). */
static CUstream copy_streams[MAXDEV][2];

static CUresult copy_stream(int device, int kind, CUstream *out) {
  if (!copy_streams[device][kind])
    /* Non-blocking: the copy stream must not serialise with the legacy stream. */
    CU_CHECK(DRV(cuStreamCreate, &copy_streams[device][kind], CU_STREAM_NON_BLOCKING));
  *out = copy_streams[device][kind];
  return CUDA_SUCCESS;
}

CUresult ckpt_copy_stream_sync(int device) {
  CUresult rc = CUDA_SUCCESS;
  for (int k = 0; k < 2; k++) {
    CUresult r = copy_streams[device][k] ? DRV(cuStreamSynchronize, copy_streams[device][k]) : CUDA_SUCCESS;
    if (r != CUDA_SUCCESS) rc = r;
  }
  return rc;
}

void ckpt_copy_streams_release(void) {
  for (int i = 0; i < MAXDEV; i++)
    for (int k = 0; k < 2; k++)
      if (copy_streams[i][k]) {
        DRV(cuStreamDestroy_v2, copy_streams[i][k]);
        copy_streams[i][k] = NULL;
      }
}

/* Where offloaded bytes go: the host pool (peer partitioning: a second store). */
static const struct ckpt_store *store(void) { return &ckpt_host_store; }

/* ---- starting the copies ------------------------------------------------- */

/* The store took nothing for t: said once, counted. `off`: the store cannot
 * take anything for this job any more. */
static void put_failed(const struct ckpt_store_fail *f, bool *off) {
  if (f->copy) return; /* logged by the store */
  ckpt_g.stats.host_pool_exhausted++;
  if (f->capped) {
    CKPT_WARN_ONCE("host pool full (CKPT_HOST_MAX_BYTES=%llu): survivors stay on the device",
                   (unsigned long long)ckpt_param_host_max_bytes());
  } else if (ckpt_cu_unsupported(f->rc)) {
    ckpt_g.host_off = true; /* the driver cannot: never ask again (policy) */
    CKPT_WARN_ONCE("this driver cannot create pinned host memory for offload (%s): host offload is off, "
                   "activations stay on the device",
                   ckpt_cu_name(f->rc));
    *off = true; /* the rest of this job's survivors stay on the device too */
  } else {
    if (f->rc != CUDA_ERROR_OUT_OF_MEMORY) ckpt_note_driver_error(); /* out of memory is no driver error */
    CKPT_WARN_ONCE("cannot create pinned host memory (%s): survivors stay on the device until it can",
                   ckpt_cu_name(f->rc));
  }
}

/* Offload: false when t stays on the device. A pending held (its room is
 * being made) is completed by ckpt_copies_resume. */
static bool start_to_host(struct talloc *t, CUstream copy, bool *off) {
  struct ckpt_store_fail f;
  t->held = store()->put(t->device, t->size, t->va, t->req, copy, &f);
  if (t->held) return true;
  put_failed(&f, off);
  return false;
}

/* Restore into fresh device memory at a staging VA: false when t stays host-backed. */
static bool start_to_device(struct talloc *t, CUstream copy) {
  CUmemGenericAllocationHandle h;
  CUresult r = ckpt_device_handle(t->device, t->size, &h);
  if (r != CUDA_SUCCESS) {
    ckpt_g.stats.restore_oom++;
    CKPT_WARN_ONCE("no device memory to restore into (%s): data stays host-backed (correct, slower); retried "
                   "at the next restore", ckpt_cu_name(r));
    return false;
  }
  CUdeviceptr va;
  unsigned undo = CKPT_VMM_RELEASE;
  if (ckpt_vmm_reserve(t->size, ckpt_granularity(t->device), &va) != CUDA_SUCCESS) goto fail;
  undo |= CKPT_VMM_FREE_VA;
  if (ckpt_vmm_map(va, t->size, h, CKPT_DEV_BIT(t->device)) != CUDA_SUCCESS) goto fail;
  undo |= CKPT_VMM_UNMAP;
  if (t->held->store->get(t->held, va, t->req, copy) != CUDA_SUCCESS) goto fail;
  t->fresh = h;
  t->fresh_va = va;
  return true;
fail:
  ckpt_vmm_teardown(va, t->size, h, undo, false);
  return false;
}

int ckpt_copies_start(struct job *j, struct talloc **items, int n, CUresult *out_r) {
  struct talloc *first = items[0];
  CUstream copy;
  CUresult r;
  CU_CHECK_GOTO(copy_stream(first->device, j->kind, &copy), r, fail);
  CU_CHECK_GOTO(DRV(cuEventCreate, &j->start, CU_EVENT_DEFAULT), r, fail);
  CU_CHECK_GOTO(DRV(cuEventCreate, &j->done, CU_EVENT_BLOCKING_SYNC), r, fail_start);
  CU_CHECK_GOTO(ckpt_fence(copy, first->device), r, fail_start_done);
  r = DRV(cuEventRecord, j->start, copy);
  if (r != CUDA_SUCCESS) { /* only the copy's timing is lost */
    CU_ERROR_ONCE("cuEventRecord of a copy's start failed (%s): its copy time is not counted", ckpt_cu_name(r));
  }
  bool off = false;
  for (int i = 0; i < n && !off; i++) {
    struct talloc *t = items[i];
    if (t->device != first->device) continue; /* another device's job takes it */
    if (j->kind == JOB_TO_HOST ? !start_to_host(t, copy, &off) : !start_to_device(t, copy)) continue;
    t->state = j->kind == JOB_TO_HOST ? CKPT_OFFLOADING : CKPT_RESTORING;
    t->busy = true;
    j->bytes += t->req;
    if (!t->held->pending) j->copied += t->req;
    j->items[j->n++] = t;
  }
  CU_CHECK_GOTO(DRV(cuEventRecord, j->done, copy), r, fail_items);
  if (j->n == 0) goto fail_items;
  ckpt_trace(j->kind == JOB_TO_HOST ? CKPT_T_OFFLOAD_START : CKPT_T_RESTORE_START, j->top->id, NULL, j->bytes,
             (uintptr_t)copy, 0);
  return 1;
fail_items:
  /* No job: roll every item back to where its data is valid, once the copies
   * already enqueued can no longer touch the memory being dropped. */
  if (j->n) DRV(cuStreamSynchronize, copy);
  ckpt_copies_apply(j, j->n ? r : CUDA_ERROR_NOT_READY);
fail_start_done:
  DRV(cuEventDestroy_v2, j->done);
fail_start:
  DRV(cuEventDestroy_v2, j->start);
fail:
  *out_r = r;
  return j->n ? CKPT_EDRIVER : 0;
}

bool ckpt_copies_resume(struct job *j) {
  if (j->kind != JOB_TO_HOST) return true;
  bool done = true, late = false, off = false;
  CUstream copy = copy_streams[j->device][JOB_TO_HOST];
  DRV(cuCtxSetCurrent, j->ctx);
  for (int i = 0; i < j->n; i++) {
    struct talloc *t = j->items[i];
    if (!t->held || !t->held->pending || t->cancel || t->freed) continue; /* apply rolls those back */
    if (off) { /* the store said it cannot: give the pending room back */
      t->held->store->drop(t->held);
      t->held = NULL;
      j->bytes -= t->req;
      continue;
    }
    struct ckpt_store_fail f;
    CUresult r = t->held->store->resume(t->held, t->va, t->req, copy, &f);
    if (r == CUDA_SUCCESS) {
      late = true;
      j->copied += t->req;
    } else if (r == CUDA_ERROR_NOT_READY) {
      done = false;
    } else { /* the held is gone; t stays on the device (apply) */
      put_failed(&f, &off);
      t->held = NULL;
      j->bytes -= t->req;
    }
  }
  if (late) {
    j->late = true;
    /* The job is complete once its late copies are (same copy stream: offloads'). */
    CUresult r = DRV(cuEventRecord, j->done, copy);
    if (r != CUDA_SUCCESS) { /* then the event proves nothing of them: wait here */
      CU_FAILED(cuEventRecord, r);
      ckpt_copy_stream_sync(j->device);
    }
  }
  return done;
}

/* ---- the swaps, on the engine thread ------------------------------------- */

bool ckpt_copies_swap(const struct job *j) {
  if (j->kind == JOB_TO_DEVICE) return j->n > 0; /* restores swap every item, see to_device */
  for (int i = 0; i < j->n; i++)
    if (!j->items[i]->cancel && !j->items[i]->freed) return true;
  return false;
}

/* Moves t's VA onto `to` (its data is already there), back onto `back` on
 * failure; `again`: t is stranded (va unmapped), map one of them. */
static enum ckpt_remap swap(struct talloc *t, CUmemGenericAllocationHandle to, CUmemGenericAllocationHandle back,
                            bool again) {
  CUresult r;
  enum ckpt_remap m = again ? ckpt_vmm_map_either(t->va, t->size, t->access, to, back, &r)
                            : ckpt_vmm_remap(t->va, t->size, t->access, to, back, &r);
  bool off = t->state == CKPT_OFFLOADING;
  if (m == CKPT_REMAP_NONE && !t->stranded) {
    ckpt_note_driver_error();
    CKPT_WARN("ERROR: %#llx (%zu bytes, region %d) is unmapped: neither copy of its data could be mapped (%s); "
              "its data is in host block %#llx and in %s; the program's streams stay held at libckpt's gate "
              "until it is mapped", (unsigned long long)t->va, t->size, t->region ? t->region->id : -1,
              ckpt_cu_name(r), (unsigned long long)t->held->va,
              off ? "its device memory (unmapped)" : "the restore's device memory at its staging VA");
  } else if (m != CKPT_REMAP_NONE && t->stranded) {
    CKPT_WARN("%#llx is mapped again (onto its %s copy): the gate opens", (unsigned long long)t->va,
              (m == CKPT_REMAP_TO) == off ? "host" : "device");
  }
  t->stranded = m == CKPT_REMAP_NONE;
  return m;
}

static void copy_failed(const char *what, struct talloc *t, CUresult copy_rc, const char *outcome) {
  if (copy_rc == CUDA_SUCCESS || copy_rc == CUDA_ERROR_NOT_READY) return;
  ckpt_note_driver_error();
  CKPT_WARN("%s copy of %#llx failed (%s): %s", what, (unsigned long long)t->va, ckpt_cu_name(copy_rc), outcome);
}

/* The counters of one swap, process-wide and per region name. */
static void count_move(struct talloc *t, bool offload) {
  struct ckpt_name_stats *ns = t->region ? t->region->ns : NULL;
  uint64_t *n = offload ? &ckpt_g.stats.offloads : &ckpt_g.stats.restores;
  uint64_t *bytes = offload ? &ckpt_g.stats.offloaded_bytes_total : &ckpt_g.stats.restored_bytes_total;
  ++*n;
  *bytes += t->req;
  if (ns) {
    ++*(offload ? &ns->offloads : &ns->restores);
    *(offload ? &ns->offloaded_bytes : &ns->restored_bytes) += t->req;
  }
  int64_t d = offload ? (int64_t)t->size : -(int64_t)t->size;
  ckpt_g.stats.host_bytes_in_use += (uint64_t)d;
  ckpt_g.stats.device_bytes_released += (uint64_t)d;
}

/* Each returns false when t is stranded (its VA maps nothing). */
static bool to_host(struct talloc *t, CUresult copy_rc, bool again) {
  if (!t->held) { /* its room could not be made (ckpt_copies_resume said why) */
    t->state = CKPT_DEVICE;
    return true;
  }
  enum ckpt_remap m = CKPT_REMAP_BACK;
  if (again || (copy_rc == CUDA_SUCCESS && !t->cancel && !t->freed && !t->held->pending))
    m = swap(t, t->held->handle, t->dev, again);
  if (m == CKPT_REMAP_NONE) return false;
  if (m == CKPT_REMAP_TO) {
    ckpt_vmm_release(t->dev);
    t->dev = 0;
    t->state = CKPT_HOST;
    t->moved = true;
    count_move(t, true);
    ckpt_callsite_offloaded(t->site, t->req);
    if (ckpt_g.stats.device_bytes_released > ckpt_g.stats.device_bytes_released_peak)
      ckpt_g.stats.device_bytes_released_peak = ckpt_g.stats.device_bytes_released;
    return true;
  }
  if (!again) copy_failed("offload", t, copy_rc, "data kept on the device");
  /* Not swapped: the device copy is the valid one. */
  ckpt_held_drop(t->held);
  t->held = NULL;
  t->state = CKPT_DEVICE;
  return true;
}

/* A survivor freed while its restore is in flight is swapped all the same:
 * the free is stream-ordered, and the work queued before it (behind the
 * restore's gate, typically) is exactly the consumer that wants device memory. */
static bool to_device(struct talloc *t, CUresult copy_rc, bool again) {
  enum ckpt_remap m = CKPT_REMAP_BACK;
  if (again || copy_rc == CUDA_SUCCESS) m = swap(t, t->fresh, t->held->handle, again);
  if (m == CKPT_REMAP_NONE) return false;
  if (m == CKPT_REMAP_TO) {
    ckpt_vmm_unmap(t->fresh_va, t->size);
    ckpt_vmm_free_va(t->fresh_va, t->size);
    t->dev = t->fresh;
    t->fresh = 0;
    t->fresh_va = 0;
    ckpt_held_drop(t->held);
    t->held = NULL;
    t->state = CKPT_DEVICE;
    count_move(t, false);
    return true;
  }
  if (!again) copy_failed("restore", t, copy_rc, "data stays host-backed");
  ckpt_vmm_teardown(t->fresh_va, t->size, t->fresh, CKPT_VMM_UNMAP | CKPT_VMM_RELEASE | CKPT_VMM_FREE_VA, false);
  t->fresh = 0;
  t->fresh_va = 0;
  t->state = CKPT_HOST;
  return true;
}

static bool apply(struct job *j, CUresult copy_rc, bool again) {
  bool mapped = true;
  for (int i = 0; i < j->n; i++) {
    struct talloc *t = j->items[i];
    if (again && !t->stranded) continue;
    if (!(j->kind == JOB_TO_HOST ? to_host(t, copy_rc, again) : to_device(t, copy_rc, again))) {
      mapped = false; /* still the job's: busy until it is mapped */
      continue;
    }
    t->busy = false;
    t->cancel = false;
  }
  return mapped;
}

bool ckpt_copies_apply(struct job *j, CUresult copy_rc) { return apply(j, copy_rc, false); }
void ckpt_copies_repair(struct job **jobs, int n) {
  for (bool stranded = true; stranded;) {
    struct timespec ts = {0, 10 * 1000 * 1000};
    UNLOCK();
    nanosleep(&ts, NULL);
    LOCK();
    stranded = false;
    for (int i = 0; i < n; i++) stranded |= !apply(jobs[i], CUDA_SUCCESS, true);
  }
}

/* ---- what the trace says of an applied job ------------------------------- */

void ckpt_copies_trace_end(const struct job *j, uint64_t copy_ns) {
  if (!ckpt_trace_enabled()) return;
  bool offload = j->kind == JOB_TO_HOST;
  uint64_t swapped = 0, device = 0, kept = 0, nkept = 0;
  for (int i = 0; i < j->n; i++) {
    const struct talloc *t = j->items[i];
    /* Where to_host / to_device leave an item they swapped (and counted). */
    if (t->state == (offload ? CKPT_HOST : CKPT_DEVICE)) {
      swapped += t->req;
      device += t->size;
    } else {
      kept += t->req;
      nkept++;
    }
  }
  if (nkept)
    ckpt_trace(offload ? CKPT_T_OFFLOAD_ROLLBACK : CKPT_T_RESTORE_ROLLBACK, j->top->id, NULL, kept, 0, nkept);
  ckpt_trace(offload ? CKPT_T_OFFLOAD_END : CKPT_T_RESTORE_END, j->top->id, NULL, swapped, (uintptr_t)device,
             copy_ns);
}
