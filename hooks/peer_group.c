/* The peer group (peer.h): its state and bootstrap (the bounded parts in
 * peer_boot.c), the descriptor exchange that makes the ranks agree, and
 * failure.
 *
 * Failure is bounded and loud: every wait on work that contains a collective
 * polls ncclCommGetAsyncError and is bounded by CKPT_PEER_TIMEOUT_MS; on an
 * error or past the bound the communicator is aborted once, peer mode is off
 * for this rank (offloads go to the host store), and survivors whose slices
 * were only on the peers are reported by the copies (copy.c). */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "params.h"
#include "peer.h"
#include "peer_boot.h"
#include "peer_nccl.h"
#include "state.h"
#include "vmm.h"


enum { P_UNSET, P_READY, P_FAILED };
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER; /* inside the core lock */
static int state, group_size, group_rank, group_device;
static bool env_tried;
static ncclComm_t comm;

#define SLOTS 64 /* descriptor exchanges in flight at most */
static CUdeviceptr xdev;          /* device: SLOTS x P descriptors (the all-gather buffer) */
static size_t xdev_size;
static CUmemGenericAllocationHandle xdev_h;
static unsigned char *xhost;      /* pinned: SLOTS sent, then SLOTS x P received */
static CUdeviceptr xhost_dev;
static bool slot_busy[SLOTS];
static uint64_t next_seq = 1;

static double timeout_s(void) { return (double)ckpt_param_int(CKPT_P_PEER_TIMEOUT_MS) / 1000.0; }

static void pause_a_little(void) {
  struct timespec ts = {0, 200000};
  nanosleep(&ts, NULL);
}

/* mu held: the group failed before it worked; peer mode stays off. */
__attribute__((format(printf, 1, 2))) static int give_up(const char *fmt, ...) {
  char why[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  CKPT_WARN("peer mode: %s; peer mode is off, offloads go to pinned host memory", why);
  state = P_FAILED;
  return CKPT_ESTATE;
}

/* The exchange buffers, once the size is known (mu held, in the device's context). */
static CUresult exchange_buffers(int device) {
  size_t gran = ckpt_vmm_granularity(device, CKPT_VMM_DEVICE);
  xdev_size = ((size_t)SLOTS * (size_t)group_size * sizeof(struct ckpt_peer_desc) + gran - 1) / gran * gran;
  CUresult r;
  CU_CHECK_GOTO(ckpt_vmm_create_device(device, xdev_size, &xdev_h), r, fail);
  CU_CHECK_GOTO(ckpt_vmm_reserve(xdev_size, gran, &xdev), r, fail_h);
  CU_CHECK_GOTO(ckpt_vmm_map(xdev, xdev_size, xdev_h, CKPT_DEV_BIT(device)), r, fail_va);
  size_t hs = (size_t)SLOTS * (size_t)(group_size + 1) * sizeof(struct ckpt_peer_desc);
  CU_CHECK_GOTO(DRV(cuMemHostAlloc, (void **)&xhost, hs, CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP), r,
                fail_map);
  CU_CHECK_GOTO(DRV(cuMemHostGetDevicePointer_v2, &xhost_dev, xhost, 0), r, fail_host);
  return CUDA_SUCCESS;
fail_host:
  DRV(cuMemFreeHost, xhost);
  xhost = NULL;
fail_map:
  ckpt_vmm_unmap(xdev, xdev_size);
fail_va:
  ckpt_vmm_free_va(xdev, xdev_size);
fail_h:
  ckpt_vmm_release(xdev_h);
fail:
  xdev = 0;
  return r;
}

/* mu held, in the device's context: creates the communicator, bounded. */
static int join(const ncclUniqueId *id, int size, int rank) {
  CUdevice dev;
  if (DRV(cuCtxGetDevice, &dev) != CUDA_SUCCESS) { /* not a failure of the group: the caller may retry */
    CKPT_WARN("ckpt_peer_init: no current CUDA context on this thread; make the device's context current "
              "(torch: after torch.cuda.set_device and CUDA's initialisation) and call it again");
    return CKPT_ESTATE;
  }
  group_size = size;
  group_rank = rank;
  group_device = (int)dev;
  if (exchange_buffers(group_device) != CUDA_SUCCESS)
    return give_up("cannot create the descriptor buffers");
  ncclResult_t r = ckpt_peer_comm_init(id, size, rank, timeout_s(), &comm);
  if (r == ncclInProgress)
    return give_up("ncclCommInitRank did not complete within CKPT_PEER_TIMEOUT_MS=%ld ms (are all ranks running?)",
                   (long)ckpt_param_int(CKPT_P_PEER_TIMEOUT_MS));
  if (r != ncclSuccess) return give_up("ncclCommInitRank failed: %s (%d)", ckpt_nccl_err(r), (int)r);
  state = P_READY;
  CKPT_INFO("peer mode: rank %d of %d on device %d", rank, size, group_device);
  return 0;
}

/* mu held: the group from CKPT_PEER_SIZE / CKPT_PEER_RANK / CKPT_PEER_ID_FILE. */
static void bootstrap_env(void) {
  env_tried = true;
  int size = (int)ckpt_param_int(CKPT_P_PEER_SIZE), rank = (int)ckpt_param_int(CKPT_P_PEER_RANK);
  if (size == 0) {
    CKPT_WARN("CKPT_MODE=%s needs a peer group: set CKPT_PEER_SIZE, CKPT_PEER_RANK and CKPT_PEER_ID_FILE, "
              "or call ckpt_peer_init(); offloads go to pinned host memory until then",
              ckpt_mode_name(ckpt_g.mode));
    return;
  }
  if (rank >= size) {
    give_up("CKPT_PEER_RANK=%d is not below CKPT_PEER_SIZE=%d", rank, size);
    return;
  }
  if (!ckpt_nccl_load()) {
    state = P_FAILED;
    return;
  }
  const char *path = ckpt_param_str(CKPT_P_PEER_ID_FILE);
  ncclUniqueId id;
  if (size > 1 && !*path) {
    give_up("CKPT_PEER_SIZE=%d needs CKPT_PEER_ID_FILE (or ckpt_peer_init())", size);
    return;
  }
  if (rank == 0 || size == 1) {
    ncclResult_t r = ckpt_nccl.ncclGetUniqueId(&id);
    if (r != ncclSuccess) {
      give_up("ncclGetUniqueId failed: %s (%ld)", ckpt_nccl_err(r), (long)r);
      return;
    }
    if (size > 1 && !ckpt_peer_id_write(path, &id)) {
      give_up("cannot write CKPT_PEER_ID_FILE=%s (%s)", path, strerror(errno));
      return;
    }
  } else if (!ckpt_peer_id_read(path, &id, ckpt_now() + timeout_s())) {
    give_up("no NCCL id from rank 0 in CKPT_PEER_ID_FILE=%s after CKPT_PEER_TIMEOUT_MS=%ld ms (is rank 0 "
            "running, with the same path, on a filesystem every rank sees?)",
            path, (long)ckpt_param_int(CKPT_P_PEER_TIMEOUT_MS));
    return;
  }
  if (join(&id, size, rank) == 0 && rank == 0 && size > 1) unlink(path); /* every rank has read it */
}

int ckpt_peer_group_unique_id(void *out, size_t len) {
  if (!out || len < sizeof(ncclUniqueId)) return CKPT_EINVAL;
  pthread_mutex_lock(&mu);
  bool ok = ckpt_nccl_load();
  ncclResult_t r = ok ? ckpt_nccl.ncclGetUniqueId((ncclUniqueId *)out) : ncclSystemError;
  pthread_mutex_unlock(&mu);
  if (ok && r != ncclSuccess) CKPT_WARN("ncclGetUniqueId failed: %s", ckpt_nccl_err(r));
  return r == ncclSuccess ? 0 : CKPT_EDRIVER;
}

int ckpt_peer_group_init(const void *id, size_t len, int size, int rank) {
  if (!id || len != sizeof(ncclUniqueId) || size < 1 || rank < 0 || rank >= size) return CKPT_EINVAL;
  pthread_mutex_lock(&mu);
  int rc = CKPT_ESTATE;
  if (state == P_UNSET) {
    env_tried = true; /* the caller's group wins over the environment */
    rc = ckpt_nccl_load() ? join((const ncclUniqueId *)id, size, rank) : (state = P_FAILED, CKPT_ESTATE);
  }
  pthread_mutex_unlock(&mu);
  return rc;
}

bool ckpt_peer_ready(int device) {
  pthread_mutex_lock(&mu);
  if (state == P_UNSET && !env_tried) bootstrap_env();
  bool ok = state == P_READY && device == group_device;
  pthread_mutex_unlock(&mu);
  return ok;
}

bool ckpt_peer_active(void) { return __atomic_load_n(&state, __ATOMIC_RELAXED) == P_READY; }
bool ckpt_peer_failed(void) { return __atomic_load_n(&state, __ATOMIC_RELAXED) == P_FAILED; }
int ckpt_peer_size(void) { return group_size; }
int ckpt_peer_rank(void) { return group_rank; }

static void fail_locked(const char *why) {
  if (state != P_READY) return;
  __atomic_store_n(&state, P_FAILED, __ATOMIC_RELAXED);
  ckpt_nccl.ncclCommAbort(comm);
  comm = NULL;
  CKPT_WARN("peer group failed (rank %d of %d): %s; ncclCommAbort called; this rank's offloads now go to "
            "pinned host memory; survivors whose slices were on the peers are lost (each is named)",
            group_rank, group_size, why);
}

void ckpt_peer_fail(const char *why) {
  pthread_mutex_lock(&mu);
  fail_locked(why);
  pthread_mutex_unlock(&mu);
}

CUresult ckpt_peer_wait(CUevent done) {
  double deadline = ckpt_now() + timeout_s();
  for (;;) {
    CUresult r = DRV(cuEventQuery, done);
    if (r != CUDA_ERROR_NOT_READY) return r;
    pthread_mutex_lock(&mu);
    bool failed = state != P_READY;
    if (!failed) {
      ncclResult_t a = ncclSuccess;
      ckpt_nccl.ncclCommGetAsyncError(comm, &a);
      char why[256];
      if (a != ncclSuccess && a != ncclInProgress) {
        snprintf(why, sizeof why, "a collective failed: %s", ckpt_nccl_err(a));
        fail_locked(why);
        failed = true;
      } else if (ckpt_now() > deadline) {
        snprintf(why, sizeof why, "a collective did not complete within CKPT_PEER_TIMEOUT_MS=%lld ms "
                 "(a rank dead or out of step)", (long long)ckpt_param_int(CKPT_P_PEER_TIMEOUT_MS));
        fail_locked(why);
        failed = true;
      }
    }
    pthread_mutex_unlock(&mu);
    if (failed) {
      /* Aborted: the enqueued work finishes (with garbage); wait for it
       * before anything frees memory it touches. */
      DRV(cuEventSynchronize, done);
      return CUDA_ERROR_NOT_READY;
    }
    pause_a_little();
  }
}

/* mu held. The communicator is nonblocking (so that its init is bounded):
 * a call may return ncclInProgress, and the next one may only be made once
 * ncclCommGetAsyncError says the call is through (bounded too). */
static CUresult nccl_rc(ncclResult_t r, const char *what) {
  double deadline = ckpt_now() + timeout_s();
  while (r == ncclInProgress && ckpt_now() < deadline) {
    ckpt_nccl.ncclCommGetAsyncError(comm, &r);
    if (r == ncclInProgress) pause_a_little();
  }
  if (r == ncclSuccess) return CUDA_SUCCESS;
  char why[256];
  snprintf(why, sizeof why, "%s returned %s", what, ckpt_nccl_err(r));
  fail_locked(why);
  return CUDA_ERROR_NOT_READY;
}

CUresult ckpt_peer_group_start(void) {
  pthread_mutex_lock(&mu);
  CUresult r = state == P_READY ? nccl_rc(ckpt_nccl.ncclGroupStart(), "ncclGroupStart") : CUDA_ERROR_NOT_READY;
  pthread_mutex_unlock(&mu);
  return r;
}

CUresult ckpt_peer_group_end(void) {
  pthread_mutex_lock(&mu);
  CUresult r = state == P_READY ? nccl_rc(ckpt_nccl.ncclGroupEnd(), "ncclGroupEnd") : CUDA_ERROR_NOT_READY;
  pthread_mutex_unlock(&mu);
  return r;
}

CUresult ckpt_peer_allgather(CUdeviceptr buf, size_t count, CUstream s) {
  pthread_mutex_lock(&mu);
  CUresult r = CUDA_ERROR_NOT_READY;
  if (state == P_READY)
    r = nccl_rc(ckpt_nccl.ncclAllGather((const void *)(buf + (size_t)group_rank * count), (void *)buf, count, ncclUint8,
                                   comm, s),
                "ncclAllGather");
  pthread_mutex_unlock(&mu);
  return r;
}

/* ---- the descriptor exchange --------------------------------------------- */

#define DESC_MAGIC 0x636b7074u
#define DSZ sizeof(struct ckpt_peer_desc)

static struct ckpt_peer_desc *sent(int slot) { return (struct ckpt_peer_desc *)(xhost + (size_t)slot * DSZ); }
static struct ckpt_peer_desc *got(int slot) {
  return (struct ckpt_peer_desc *)(xhost + SLOTS * DSZ + (size_t)slot * (size_t)group_size * DSZ);
}

CUresult ckpt_peer_exchange(struct ckpt_peer_desc *d, CUstream s, int *slot) {
  _Static_assert(sizeof(struct ckpt_peer_desc) == 64, "descriptor is 64 bytes");
  pthread_mutex_lock(&mu);
  CUresult r = CUDA_ERROR_NOT_READY;
  if (state != P_READY || slot_busy[next_seq % SLOTS]) goto out;
  int k = (int)(next_seq % SLOTS);
  d->magic = DESC_MAGIC;
  d->seq = next_seq++;
  *sent(k) = *d;
  memset(got(k), 0, (size_t)group_size * DSZ);
  CUdeviceptr buf = xdev + (size_t)k * (size_t)group_size * DSZ;
  size_t off_sent = (size_t)k * DSZ, off_got = SLOTS * DSZ + (size_t)k * (size_t)group_size * DSZ;
  CU_CHECK_GOTO(DRV(cuMemcpyDtoDAsync_v2, buf + (size_t)group_rank * DSZ, xhost_dev + off_sent, DSZ, s), r, out);
  r = nccl_rc(ckpt_nccl.ncclAllGather((const void *)(buf + (size_t)group_rank * DSZ), (void *)buf, DSZ, ncclUint8, comm, s),
              "ncclAllGather (descriptor)");
  if (r != CUDA_SUCCESS) goto out;
  CU_CHECK_GOTO(DRV(cuMemcpyDtoDAsync_v2, xhost_dev + off_got, buf, (size_t)group_size * DSZ, s), r, out);
  slot_busy[k] = true;
  *slot = k;
out:
  pthread_mutex_unlock(&mu);
  return r;
}

static void say_desc(char *out, size_t cap, const struct ckpt_peer_desc *d) {
  snprintf(out, cap, "job #%llu %s of region %d '%.24s', %u allocations, %llu bytes, sizes hash %016llx",
           (unsigned long long)d->seq, d->kind == 0 ? "offload" : "restore", d->region, d->name, d->n,
           (unsigned long long)d->bytes, (unsigned long long)d->sizes_hash);
}

bool ckpt_peer_agreed(int slot, bool delivered_only) {
  pthread_mutex_lock(&mu);
  const struct ckpt_peer_desc *mine = sent(slot);
  bool ok = true;
  for (int i = 0; i < group_size && ok; i++) {
    const struct ckpt_peer_desc *o = &got(slot)[i];
    if (memcmp(o, mine, DSZ) == 0 || (delivered_only && o->magic != DESC_MAGIC)) continue;
    ok = false;
    char a[200], b[200];
    say_desc(a, sizeof a, mine);
    if (o->magic != DESC_MAGIC) snprintf(b, sizeof b, "no descriptor (the exchange failed)");
    else say_desc(b, sizeof b, o);
    CKPT_WARN("peer ranks disagree: rank %d has %s; rank %d has %s", group_rank, a, i, b);
  }
  slot_busy[slot] = false;
  pthread_mutex_unlock(&mu);
  return ok;
}
