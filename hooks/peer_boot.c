/* The bounded bootstrap (peer_boot.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "core.h"
#include "driver.h"
#include "peer_boot.h"
#include "peer_nccl.h"
#include "state.h"

bool ckpt_peer_id_write(const char *path, const ncclUniqueId *id) {
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  bool ok = write(fd, id, sizeof *id) == (ssize_t)sizeof *id;
  ok = close(fd) == 0 && ok;
  if (ok) ok = rename(tmp, path) == 0;
  if (!ok) unlink(tmp);
  return ok;
}

bool ckpt_peer_id_read(const char *path, ncclUniqueId *id, double deadline) {
  for (;;) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      ssize_t n = read(fd, id, sizeof *id);
      close(fd);
      if (n == (ssize_t)sizeof *id) return true;
    }
    if (ckpt_now() > deadline) return false;
    struct timespec ts = {0, 10000000};
    nanosleep(&ts, NULL);
  }
}

/* Shared by the caller and the helper; the last one out frees it. */
struct init_call {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  ncclUniqueId id;
  int size, rank, refs;
  CUcontext ctx;
  ncclComm_t comm;
  ncclResult_t r;
  bool done, abandoned;
};

static void put_call(struct init_call *c) {
  bool last = --c->refs == 0;
  pthread_mutex_unlock(&c->mu);
  if (last) free(c);
}

static void *init_main(void *arg) {
  struct init_call *c = arg;
  ckpt_in_lib = 1;
  DRV(cuCtxSetCurrent, c->ctx);
  ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
  cfg.blocking = 0;
  ncclComm_t comm = NULL;
  ncclResult_t r = ckpt_nccl.ncclCommInitRankConfig(&comm, c->size, c->id, c->rank, &cfg);
  while (r == ncclInProgress || (r == ncclSuccess && comm)) {
    ncclResult_t a = ncclSuccess;
    ckpt_nccl.ncclCommGetAsyncError(comm, &a);
    if (a != ncclInProgress) {
      r = a;
      break;
    }
    pthread_mutex_lock(&c->mu);
    bool gone = c->abandoned;
    pthread_mutex_unlock(&c->mu);
    if (gone) break;
    struct timespec ts = {0, 200000};
    nanosleep(&ts, NULL);
  }
  pthread_mutex_lock(&c->mu);
  if (c->abandoned || r != ncclSuccess) {
    if (comm) ckpt_nccl.ncclCommAbort(comm);
    comm = NULL;
  }
  c->comm = comm;
  c->r = r == ncclSuccess && !comm ? ncclInternalError : r;
  c->done = true;
  pthread_cond_broadcast(&c->cv);
  put_call(c);
  return NULL;
}

ncclResult_t ckpt_peer_comm_init(const ncclUniqueId *id, int size, int rank, double timeout_s, ncclComm_t *comm) {
  struct init_call *c = calloc(1, sizeof *c);
  if (!c) return ncclSystemError;
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, NULL);
  c->id = *id;
  c->size = size;
  c->rank = rank;
  c->refs = 2;
  DRV(cuCtxGetCurrent, &c->ctx);
  pthread_t th;
  if (pthread_create(&th, NULL, init_main, c) != 0) {
    free(c);
    return ncclSystemError;
  }
  pthread_detach(th);
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += (time_t)timeout_s;
  until.tv_nsec += (long)((timeout_s - (double)(time_t)timeout_s) * 1e9);
  if (until.tv_nsec >= 1000000000L) until.tv_sec++, until.tv_nsec -= 1000000000L;
  pthread_mutex_lock(&c->mu);
  while (!c->done && pthread_cond_timedwait(&c->cv, &c->mu, &until) != ETIMEDOUT) {
  }
  ncclResult_t r = ncclInProgress;
  if (c->done) {
    r = c->r;
    *comm = c->comm;
  } else {
    c->abandoned = true; /* the helper aborts what it makes */
  }
  put_call(c);
  return r;
}
