/* The copies and swaps (copy.h), through the backing-store interface. */
#include <stdlib.h>
#include <time.h>

#include "arena.h"
#include "check.h"
#include "copy.h"
#include "observe.h"
#include "params.h"
#include "peer.h"
#include "region.h"
#include "state.h"
#include "store.h"
#include "verify.h"
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
  /* The peer modes keep one stream: the group's collectives (agreement,
   * gathers) must run in the order every rank issued them, and two streams
   * on one communicator could run them out of that order and deadlock. */
  if (ckpt_g.mode == CKPT_MODE_PEER || ckpt_g.mode == CKPT_MODE_PEER_HOST) kind = JOB_TO_HOST;
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

/* Where offloaded bytes of `device` go: the peer group's slices in the peer
 * modes while the group works (bootstrapped on first use), the host pool
 * otherwise (also when the group is not configured or has failed). */
static const struct ckpt_store *store(int device) {
  bool peer = ckpt_g.mode == CKPT_MODE_PEER || ckpt_g.mode == CKPT_MODE_PEER_HOST;
  if (peer && ckpt_peer_ready(device))
    return ckpt_g.mode == CKPT_MODE_PEER ? &ckpt_peer_dev_store : &ckpt_peer_host_store;
  return &ckpt_host_store;
}

CUresult ckpt_copies_wait(struct job *j) {
  if (j->hooks && j->hooks->job_wait) return j->hooks->job_wait(j->done);
  /* A host job may be queued behind a peer job on the copy stream. */
  if (ckpt_peer_active()) return ckpt_peer_wait(j->done);
  return DRV(cuEventSynchronize, j->done);
}

/* A survivor whose other slices were on the ranks of a failed group: said
 * once, loudly, by region and address. */
static void report_lost(struct talloc *t) {
  if (t->held->lost_said) return;
  t->held->lost_said = true;
  ckpt_g.stats.peer_lost++;
  CKPT_WARN("region %d '%s': tagged allocation %#llx (%zu bytes) is LOST: the rest of its bytes were on the peer "
            "ranks and the peer group failed; its address stays unmapped (a touch faults)",
            t->region ? t->region->id : 0, t->region ? t->region->name : "?", (unsigned long long)t->va, t->req);
}

/* ---- starting the copies ------------------------------------------------- */

/* The store took nothing for t: said once, counted. `off`: the store cannot
 * take anything for this job any more. */
static void put_failed(const struct ckpt_store *st, const struct ckpt_store_fail *f, bool *off) {
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
    CKPT_WARN_ONCE("the %s store cannot make room (%s): survivors stay on the device until it can", st->name,
                   ckpt_cu_name(f->rc));
  }
}

/* Offload: false when t stays on the device. A pending held (its room is
 * being made) is completed by ckpt_copies_resume. */
static bool start_to_host(const struct ckpt_store *st, struct talloc *t, CUstream copy, bool *off) {
  struct ckpt_store_fail f;
  t->held = st->put(t->device, t->size, t->va, t->req, copy, &f);
  if (t->held) return true;
  put_failed(st, &f, off);
  return false;
}

/* Restore into fresh device memory at a staging VA: false when t stays host-backed. */
static bool start_to_device(struct talloc *t, CUstream copy) {
  if (t->held->store->lost && t->held->store->lost(t->held)) {
    report_lost(t);
    return false;
  }
  CUmemGenericAllocationHandle h;
  CUresult r = ckpt_device_handle(t->device, t->size, &h);
  if (r != CUDA_SUCCESS) {
    ckpt_g.stats.restore_oom++;
    CKPT_WARN_ONCE("no device memory to restore into (%s): data stays in the %s store (host: correct, slower); "
                   "retried at the next restore", ckpt_cu_name(r), t->held->store->name);
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

/* An offload job's sizes to its store, so that room for all is made at once. */
static void begin_job(const struct ckpt_store *st, struct talloc **items, int n) {
  size_t *bytes = malloc((size_t)n * sizeof *bytes);
  if (!bytes) return;
  int m = 0;
  for (int i = 0; i < n; i++)
    if (items[i]->device == items[0]->device) bytes[m++] = items[i]->req;
  st->job_begin(items[0]->device, bytes, m);
  free(bytes);
}

/* The job hooks of st (offload: where the puts went; restore: the first
 * item's store that has hooks), over the items that store holds. */
static CUresult end_job(struct job *j, const struct ckpt_store *st, CUstream copy) {
  if (!st || !st->job_end) return CUDA_SUCCESS;
  struct ckpt_store_item *it = malloc((size_t)j->n * sizeof *it);
  if (!it) return CUDA_ERROR_OUT_OF_MEMORY;
  int m = 0;
  for (int i = 0; i < j->n; i++) {
    struct talloc *t = j->items[i];
    if (t->held->store == st)
      it[m++] = (struct ckpt_store_item){.held = t->held, .dst = t->fresh_va, .bytes = t->req};
  }
  struct ckpt_store_job sj = {.kind = j->kind, .device = j->device, .region = j->top->id, .n = m,
                              .name = j->top->name, .items = it};
  CUresult r = st->job_end(&sj, copy, &j->token);
  if (r == CUDA_SUCCESS || j->token) j->hooks = st;
  free(it);
  return r;
}

/* CKPT_VERIFY: stage each item's bytes (offload: the original; restore: the
 * restored copy, after the gathers) for its checksum. */
static struct ckpt_verify *verify_job(struct job *j, CUstream copy) {
  CUdeviceptr *src = malloc((size_t)j->n * sizeof *src);
  size_t *bytes = malloc((size_t)j->n * sizeof *bytes);
  struct ckpt_verify *v = NULL;
  if (src && bytes) {
    for (int i = 0; i < j->n; i++) {
      src[i] = j->kind == JOB_TO_HOST ? j->items[i]->va : j->items[i]->fresh_va;
      bytes[i] = j->items[i]->req;
    }
    v = ckpt_verify_start(src, bytes, j->n, copy);
  }
  free(src);
  free(bytes);
  return v;
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
  const struct ckpt_store *st = j->kind == JOB_TO_HOST ? store(first->device) : NULL;
  for (int i = 0; !st && i < n; i++) /* a restore: the store of its first item that has job hooks */
    if (items[i]->device == first->device && items[i]->held->store->job_end) st = items[i]->held->store;
  if (j->kind == JOB_TO_HOST && st && st->job_begin) begin_job(st, items, n);
  for (int i = 0; i < n && !off; i++) {
    struct talloc *t = items[i];
    if (t->device != first->device) continue; /* another device's job takes it */
    if (j->kind == JOB_TO_HOST ? !start_to_host(st, t, copy, &off) : !start_to_device(t, copy)) continue;
    t->state = j->kind == JOB_TO_HOST ? CKPT_OFFLOADING : CKPT_RESTORING;
    t->busy = true;
    j->bytes += t->req;
    if (!t->held->pending) j->copied += t->req;
    j->items[j->n++] = t;
  }
  /* A store whose ranks act together hears of the job even when none of its
   * puts could start here, so that the others roll back too. */
  if ((j->n || (st && st->job_end)) && (r = end_job(j, st, copy)) != CUDA_SUCCESS) goto fail_items;
  if (j->n && ckpt_param_int(CKPT_P_VERIFY)) j->verify = verify_job(j, copy);
  CU_CHECK_GOTO(DRV(cuEventRecord, j->done, copy), r, fail_items);
  if (j->n == 0) goto fail_items;
  ckpt_trace(j->kind == JOB_TO_HOST ? CKPT_T_OFFLOAD_START : CKPT_T_RESTORE_START, j->top->id, NULL, j->bytes,
             (uintptr_t)copy, 0);
  return 1;
fail_items:
  /* No job: roll every item back to where its data is valid, once the copies
   * already enqueued can no longer touch the memory being dropped. */
  if (j->n || j->token) DRV(cuStreamSynchronize, copy);
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
    const struct ckpt_store *st = t->held->store; /* a failed resume frees the held */
    CUresult r = st->resume(t->held, t->va, t->req, copy, &f);
    if (r == CUDA_SUCCESS) {
      late = true;
      j->copied += t->req;
    } else if (r == CUDA_ERROR_NOT_READY) {
      done = false;
    } else { /* the held is gone; t stays on the device (apply) */
      put_failed(st, &f, &off);
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
 * failure; `again`: t is stranded (va unmapped), map one of them. `to` 0:
 * unmap only (a peer slice's offload); `back` 0: va is unmapped already (a
 * peer slice's restore), only `to` can be mapped. */
static enum ckpt_remap swap(struct talloc *t, CUmemGenericAllocationHandle to, CUmemGenericAllocationHandle back,
                            bool again) {
  CUresult r;
  enum ckpt_remap m = again || !back ? ckpt_vmm_map_either(t->va, t->size, t->access, to, back, &r)
                                     : ckpt_vmm_remap(t->va, t->size, t->access, to, back, &r);
  bool off = t->state == CKPT_OFFLOADING;
  if (m == CKPT_REMAP_NONE && !t->stranded) {
    ckpt_note_driver_error();
    CKPT_WARN("ERROR: %#llx (%zu bytes, region %d) is unmapped: %s could be mapped (%s); its data is in the %s "
              "store at %#llx and in %s; the program's streams stay held at libckpt's gate until it is mapped",
              (unsigned long long)t->va, t->size, t->region ? t->region->id : -1,
              back ? "neither copy of its data" : "its restored device memory", ckpt_cu_name(r),
              t->held->store->name, (unsigned long long)t->held->va,
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

/* Each returns false when t is stranded (its VA maps nothing). A peer slice
 * has no handle: its offload only unmaps the VA (ckpt_vmm_remap with `to` 0;
 * a failed unmap leaves the data on the device), its restore maps the fresh
 * memory at the unmapped VA (a failed map strands it, like any item). */
static bool to_host(struct talloc *t, CUresult copy_rc, bool again, const uint64_t *sum) {
  if (!t->held) { /* its room could not be made (ckpt_copies_resume said why) */
    t->state = CKPT_DEVICE;
    return true;
  }
  if (!again) { /* CKPT_VERIFY: kept with the held (a stranded item is swapped by the repair) */
    t->held->summed = sum != NULL;
    if (sum) t->held->sum = *sum;
  }
  enum ckpt_remap m = CKPT_REMAP_BACK;
  if (again || (copy_rc == CUDA_SUCCESS && !t->cancel && !t->freed && !t->held->pending))
    m = swap(t, t->held->handle, t->dev, again);
  if (m == CKPT_REMAP_NONE) return false;
  if (m == CKPT_REMAP_TO) {
    ckpt_vmm_release(t->dev);
    t->dev = 0;
    t->state = t->held->handle ? CKPT_HOST : CKPT_PEER;
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
static void check_sum(struct talloc *t, const uint64_t *sum) {
  if (!sum || !t->held->summed) return;
  if (*sum == t->held->sum) {
    ckpt_g.stats.verify_checked++;
    return;
  }
  ckpt_g.stats.verify_failures++;
  CKPT_WARN("CKPT_VERIFY: region %d '%s': tagged allocation %#llx (%zu bytes) came back from the %s store with "
            "checksum %016llx, offloaded with %016llx: its data is corrupt",
            t->region ? t->region->id : 0, t->region ? t->region->name : "?", (unsigned long long)t->va, t->req,
            t->held->store->name, (unsigned long long)*sum, (unsigned long long)t->held->sum);
}

static bool to_device(struct talloc *t, CUresult copy_rc, bool again, const uint64_t *sum) {
  if (!again && copy_rc == CUDA_SUCCESS) check_sum(t, sum);
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
  t->state = t->held->handle ? CKPT_HOST : CKPT_PEER;
  if (t->held->store->lost && t->held->store->lost(t->held)) report_lost(t);
  return true;
}

static bool apply(struct job *j, CUresult copy_rc, bool again) {
  if (!again && j->hooks && j->token) copy_rc = j->hooks->job_verdict(j->token, j->kind, copy_rc);
  if (!again) j->token = NULL;
  bool mapped = true;
  for (int i = 0; i < j->n; i++) {
    struct talloc *t = j->items[i];
    if (again && !t->stranded) continue;
    uint64_t sum = j->verify && copy_rc == CUDA_SUCCESS ? ckpt_verify_sum(j->verify, i) : 0;
    const uint64_t *ps = j->verify && copy_rc == CUDA_SUCCESS ? &sum : NULL;
    if (!(j->kind == JOB_TO_HOST ? to_host(t, copy_rc, again, ps) : to_device(t, copy_rc, again, ps))) {
      mapped = false; /* still the job's: busy until it is mapped */
      continue;
    }
    t->busy = false;
    t->cancel = false;
  }
  if (!again) {
    ckpt_verify_free(j->verify);
    j->verify = NULL;
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
    if (offload ? t->state == CKPT_HOST || t->state == CKPT_PEER : t->state == CKPT_DEVICE) {
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
