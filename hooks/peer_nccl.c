/* NCCL loaded at run time (peer_nccl.h). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>

#include "driver.h"
#include "log.h"
#include "params.h"
#include "peer_nccl.h"

struct ckpt_nccl ckpt_nccl;
static pthread_mutex_t load_mu = PTHREAD_MUTEX_INITIALIZER;
static bool loaded, tried;

static bool load(void) {
  const char *path = ckpt_param_str(CKPT_P_NCCL_LIBRARY);
  if (!*path) path = "libnccl.so.2";
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    CKPT_WARN("peer mode: cannot load NCCL (%s): %s; set CKPT_NCCL_LIBRARY to its path", path, dlerror());
    return false;
  }
#define CKPT_NCCL(sym)                                                       \
  ckpt_nccl.sym = (__typeof__(sym) *)ckpt_real_dlsym(h, #sym);               \
  if (!ckpt_nccl.sym) {                                                      \
    CKPT_WARN("peer mode: %s has no %s (NCCL >= 2.14 needed)", path, #sym); \
    return false;                                                            \
  }
#include "peer_nccl.def"
#undef CKPT_NCCL
  int v = 0;
  ckpt_nccl.ncclGetVersion(&v);
  CKPT_INFO("peer mode: NCCL %d from %s", v, path);
  return true;
}

bool ckpt_nccl_load(void) {
  pthread_mutex_lock(&load_mu);
  if (!tried) {
    tried = true;
    loaded = load();
  }
  bool ok = loaded;
  pthread_mutex_unlock(&load_mu);
  return ok;
}

const char *ckpt_nccl_err(ncclResult_t r) {
  const char *s = loaded && ckpt_nccl.ncclGetErrorString ? ckpt_nccl.ncclGetErrorString(r) : NULL;
  return s ? s : "unknown NCCL error";
}
