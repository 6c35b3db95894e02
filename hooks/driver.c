#define _GNU_SOURCE
#include "driver.h"
#include "log.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

struct ckpt_driver ckpt_drv;
static void *libcuda;
static CUresult load_result = CUDA_ERROR_NOT_FOUND;
static pthread_once_t load_once = PTHREAD_ONCE_INIT;

CKPT_NO_SANITIZE dlsym_fn ckpt_real_dlsym_fn(void) {
  static dlsym_fn real;
  dlsym_fn r = __atomic_load_n(&real, __ATOMIC_RELAXED);
  if (!r) {
    /* dlsym moved into libc proper in glibc 2.34; older ones only have the
     * first version of each architecture. */
    static const char *const versions[] = {"GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17", "GLIBC_2.0"};
    for (size_t i = 0; !r && i < sizeof versions / sizeof *versions; i++)
      r = (dlsym_fn)dlvsym(RTLD_NEXT, "dlsym", versions[i]);
    __atomic_store_n(&real, r, __ATOMIC_RELAXED);
  }
  return r;
}

CKPT_NO_SANITIZE void *ckpt_real_dlsym(void *handle, const char *name) {
  dlsym_fn real = ckpt_real_dlsym_fn();
  return real ? real(handle, name) : NULL;
}

static void load(void) {
  /* NODELETE: the driver must outlive every handle the program closes. */
  libcuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NODELETE);
  if (!libcuda) {
    CKPT_INFO("no CUDA driver (%s): pass-through", dlerror());
    return;
  }
#define CKPT_DRV(sym) ckpt_drv.sym = (__typeof__(sym) *)ckpt_real_dlsym(libcuda, #sym);
#include "driver.def"
#undef CKPT_DRV
  load_result = CUDA_SUCCESS;
}

CUresult ckpt_driver_load(void) {
  pthread_once(&load_once, load);
  return load_result;
}

void *ckpt_driver_sym(const char *name) {
  if (ckpt_driver_load() != CUDA_SUCCESS) return NULL;
  return ckpt_real_dlsym(libcuda, name);
}

const char *ckpt_cu_name(CUresult r) {
  const char *s = NULL;
  if (ckpt_drv.cuGetErrorName && ckpt_drv.cuGetErrorName(r, &s) == CUDA_SUCCESS && s) return s;
  return "CUDA_ERROR_(unknown)";
}
