/* The real CUDA driver, behind one header (cf. mimalloc's prim.h).
 *
 * libckpt never calls a cu* symbol by name: it calls through this table,
 * filled from dlopen("libcuda.so.1"), so its own calls never re-enter the
 * hooks, and unit tests get the simulated driver by putting tests/simdev on
 * LD_LIBRARY_PATH. A symbol the driver lacks stays NULL and DRV() returns
 * CUDA_ERROR_NOT_FOUND instead of crashing. */
#ifndef CKPT_DRIVER_H
#define CKPT_DRIVER_H
#include "cu.h"

struct ckpt_driver {
#define CKPT_DRV(sym) __typeof__(sym) *sym;
#include "driver.def"
#undef CKPT_DRV
};
extern struct ckpt_driver ckpt_drv;

/* Loads libcuda.so.1 and fills ckpt_drv (once). CUDA_SUCCESS, or
 * CUDA_ERROR_NOT_FOUND when no driver library can be loaded. */
CUresult ckpt_driver_load(void);
/* The real driver's symbol `name` (NULL when the driver or symbol is absent). */
void *ckpt_driver_sym(const char *name);
/* Functions a sanitizer runtime reaches through dlsym while it initialises,
 * before its shadow memory and interceptors exist: not instrumented. */
#define CKPT_NO_SANITIZE __attribute__((no_sanitize("address", "thread", "undefined")))
/* dlsym as libc implements it; the preload overrides the public name. */
void *ckpt_real_dlsym(void *handle, const char *name);
typedef void *(*dlsym_fn)(void *, const char *);
/* libc's dlsym itself (NULL when it cannot be found). */
dlsym_fn ckpt_real_dlsym_fn(void);
/* "CUDA_ERROR_OUT_OF_MEMORY" etc., never NULL. */
const char *ckpt_cu_name(CUresult r);

#define DRV(fn, ...) (ckpt_drv.fn ? ckpt_drv.fn(__VA_ARGS__) : CUDA_ERROR_NOT_FOUND)

#endif
