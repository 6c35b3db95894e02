/* Stand-in for the preload while the core is being restructured: exported
 * curand* wrappers that call the rng hooks exactly as the preload's wrappers
 * will, and a minimal region registry (ckpt_region_begin/end) that notifies
 * the rng module as the core's region registry will. The replay program is
 * linked with -rdynamic, so it finds these (and ckpt_rng_*, ckpt_region_replay_*
 * from hooks/rng_api.c) with dlsym(RTLD_DEFAULT), the way it will find
 * libckpt's under LD_PRELOAD. */
#include <curand.h>

#include "rng.h"

#define SHIM __attribute__((visibility("default")))

SHIM curandStatus_t curandCreateGenerator(curandGenerator_t *g, curandRngType_t t) { return rng_hook_create(g, t); }
SHIM curandStatus_t curandCreateGeneratorHost(curandGenerator_t *g, curandRngType_t t) {
  return rng_hook_create_host(g, t);
}
SHIM curandStatus_t curandDestroyGenerator(curandGenerator_t g) { return rng_hook_destroy(g); }
SHIM curandStatus_t curandSetPseudoRandomGeneratorSeed(curandGenerator_t g, unsigned long long s) {
  return rng_hook_set_seed(g, s);
}
SHIM curandStatus_t curandSetGeneratorOffset(curandGenerator_t g, unsigned long long o) {
  return rng_hook_set_offset(g, o);
}
SHIM curandStatus_t curandSetGeneratorOrdering(curandGenerator_t g, curandOrdering_t o) {
  return rng_hook_set_ordering(g, o);
}
SHIM curandStatus_t curandSetStream(curandGenerator_t g, cudaStream_t s) { return rng_hook_set_stream(g, s); }
SHIM curandStatus_t curandGenerate(curandGenerator_t g, unsigned int *o, size_t n) { return rng_hook_generate(g, o, n); }
SHIM curandStatus_t curandGenerateLongLong(curandGenerator_t g, unsigned long long *o, size_t n) {
  return rng_hook_generate_long_long(g, o, n);
}
SHIM curandStatus_t curandGenerateUniform(curandGenerator_t g, float *o, size_t n) {
  return rng_hook_generate_uniform(g, o, n);
}
SHIM curandStatus_t curandGenerateUniformDouble(curandGenerator_t g, double *o, size_t n) {
  return rng_hook_generate_uniform_double(g, o, n);
}
SHIM curandStatus_t curandGenerateNormal(curandGenerator_t g, float *o, size_t n, float m, float s) {
  return rng_hook_generate_normal(g, o, n, m, s);
}
SHIM curandStatus_t curandGenerateNormalDouble(curandGenerator_t g, double *o, size_t n, double m, double s) {
  return rng_hook_generate_normal_double(g, o, n, m, s);
}
SHIM curandStatus_t curandGenerateLogNormal(curandGenerator_t g, float *o, size_t n, float m, float s) {
  return rng_hook_generate_log_normal(g, o, n, m, s);
}
SHIM curandStatus_t curandGenerateLogNormalDouble(curandGenerator_t g, double *o, size_t n, double m, double s) {
  return rng_hook_generate_log_normal_double(g, o, n, m, s);
}
SHIM curandStatus_t curandGeneratePoisson(curandGenerator_t g, unsigned int *o, size_t n, double l) {
  return rng_hook_generate_poisson(g, o, n, l);
}

/* The region registry's part: ids from 1, nestable, notified on open/close. */
static int shim_next = 1, shim_stack[64], shim_depth;

SHIM int ckpt_region_begin(const char *name) {
  (void)name;
  if (shim_depth == 64) return -3;
  int id = shim_next++;
  shim_stack[shim_depth++] = id;
  rng_region_opened(id);
  return id;
}

SHIM int ckpt_region_end(void) {
  if (!shim_depth) return -3;
  rng_region_closed(shim_stack[--shim_depth]);
  return 0;
}
