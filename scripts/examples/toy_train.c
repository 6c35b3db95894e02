/* A training-like program that uses only the CUDA driver API, so it runs on a
 * real GPU and on the simulated one. Forward: one region per layer, each
 * leaving an activation for backward. Backward: layers in reverse, each
 * restoring its input first (through libckpt's API when it is preloaded; a
 * no-op otherwise) and checking every word of it. Prints the peak device
 * memory seen by cuMemGetInfo, so runs with and without libckpt compare.
 * The driver is reached the way the CUDA runtime does it (dlopen + dlsym), so
 * LD_LIBRARY_PATH alone decides between the real and the simulated driver.
 *
 *   toy_train [layers] [MiB per activation] [steps] [compute ms per layer]
 *
 * The peak is taken over the steps after the first (the steady state: the
 * first step also pays for creating pinned host memory). The optional
 * compute time (a host function sleeping on the stream) stands in for the
 * kernels of a real layer on the simulated device. */
#define _GNU_SOURCE
#define __CUDA_API_VERSION_INTERNAL 1 /* declare every entry point by its real name */
#include <cuda.h>
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define CU(call)                                                                    \
  do {                                                                              \
    CUresult r_ = (call);                                                           \
    if (r_ != CUDA_SUCCESS) {                                                       \
      fprintf(stderr, "toy_train: %s failed: %d\n", #call, (int)r_);                \
      exit(1);                                                                      \
    }                                                                               \
  } while (0)

/* The driver entry points used, resolved from libcuda.so.1 at start. */
#define DRIVER(X) X(cuInit) X(cuDeviceGet) X(cuDevicePrimaryCtxRetain) X(cuCtxSetCurrent) X(cuStreamCreate) \
  X(cuMemGetInfo_v2) X(cuMemAllocAsync) X(cuMemFreeAsync) X(cuMemsetD32Async) X(cuMemcpyDtoHAsync_v2)    \
  X(cuStreamSynchronize) X(cuLaunchHostFunc)
#define DECLARE(f) static __typeof__(f) *p_##f;
DRIVER(DECLARE)
#define RESOLVE(f)                                                                  \
  if (!(*(void **)&p_##f = dlsym(h, #f))) {                                         \
    fprintf(stderr, "toy_train: driver lacks %s\n", #f);                           \
    exit(1);                                                                        \
  }

static int (*region_begin)(const char *);
static int (*region_end)(void);
static int (*restore)(int);

static void CUDA_CB compute(void *ms) { usleep((useconds_t)(uintptr_t)ms * 1000); }

static size_t used_now(void) {
  size_t f, t;
  CU(p_cuMemGetInfo_v2(&f, &t));
  return t - f;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  int layers = argc > 1 ? atoi(argv[1]) : 8;
  size_t mib = argc > 2 ? (size_t)atoi(argv[2]) : 64;
  int steps = argc > 3 ? atoi(argv[3]) : 3;
  unsigned compute_ms = argc > 4 ? (unsigned)atoi(argv[4]) : 0;
  size_t bytes = mib << 20, words = bytes / 4;
  *(void **)&region_begin = dlsym(RTLD_DEFAULT, "ckpt_region_begin");
  *(void **)&region_end = dlsym(RTLD_DEFAULT, "ckpt_region_end");
  *(void **)&restore = dlsym(RTLD_DEFAULT, "ckpt_restore");
  int with_ckpt = region_begin && region_end && restore;

  void *h = dlopen("libcuda.so.1", RTLD_NOW);
  if (!h) {
    fprintf(stderr, "toy_train: no CUDA driver: %s\n", dlerror());
    return 1;
  }
  DRIVER(RESOLVE)
  CUdevice dev;
  CUcontext ctx;
  CU(p_cuInit(0));
  CU(p_cuDeviceGet(&dev, 0));
  CU(p_cuDevicePrimaryCtxRetain(&ctx, dev));
  CU(p_cuCtxSetCurrent(ctx));
  CUstream s;
  CU(p_cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  CUdeviceptr *act = calloc((size_t)layers, sizeof *act);
  int *ids = calloc((size_t)layers, sizeof *ids);
  uint32_t *check = malloc(bytes);
  size_t base = used_now(), peak = base;
  long bad = 0;
  double t0 = now();
  for (int step = 0; step < steps; step++) {
    for (int l = 0; l < layers; l++) {
      if (with_ckpt) ids[l] = region_begin("layer");
      CUdeviceptr tmp; /* a temporary that dies inside the layer */
      CU(p_cuMemAllocAsync(&tmp, bytes, s));
      CU(p_cuMemsetD32Async(tmp, 0xdead, words, s));
      CU(p_cuMemAllocAsync(&act[l], bytes, s));
      CU(p_cuMemsetD32Async(act[l], (unsigned)(step * 1000 + l), words, s));
      if (compute_ms) CU(p_cuLaunchHostFunc(s, compute, (void *)(uintptr_t)compute_ms));
      CU(p_cuMemFreeAsync(tmp, s));
      if (with_ckpt) region_end();
      CU(p_cuStreamSynchronize(s)); /* let the sample see this layer's memory */
      size_t u = used_now();
      if (u > peak && (step > 0 || steps == 1)) peak = u;
    }
    for (int l = layers - 1; l >= 0; l--) {
      if (with_ckpt) restore(ids[l]);
      if (compute_ms) CU(p_cuLaunchHostFunc(s, compute, (void *)(uintptr_t)compute_ms));
      CU(p_cuMemcpyDtoHAsync_v2(check, act[l], bytes, s));
      CU(p_cuStreamSynchronize(s));
      for (size_t i = 0; i < words; i++) bad += check[i] != (uint32_t)(step * 1000 + l);
      CU(p_cuMemFreeAsync(act[l], s));
    }
    CU(p_cuStreamSynchronize(s));
  }
  double dt = now() - t0;
  printf("toy_train: %s, %d layers x %zu MiB x %d steps: peak device memory above start %.1f MiB, %.3f s/step, "
         "%ld wrong words (peak over steps 2..%d)\n",
         with_ckpt ? "with libckpt" : "plain", layers, mib, steps, (double)(peak - base) / 1048576.0, dt / steps, bad, steps);
  return bad ? 1 : 0;
}
