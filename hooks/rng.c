/* rng: the real cuRAND table, the tracked generators and the hooks. The
 * rules and their sources are in rng.h; the state shared with rng_replay.c
 * and rng_named.c in rng_state.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "rng_state.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"
#include "driver.h"
#include "log.h"

/* ---- the real cuRAND --------------------------------------------------- */

struct rng_real_table rng_real;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static void *(*load_resolve)(const char *name);
static int load_rc = CKPT_EDRIVER;

/* The real dlsym (driver.h): inside libckpt a plain dlsym is the preload's
 * override, which would hand back the curand* wrappers themselves. A
 * handle's own scope never contains the preload, so this is libcurand's. */
static void *dl_resolve(const char *name) {
  static void *lib;
  if (!lib) lib = dlopen("libcurand.so.10", RTLD_NOW | RTLD_LOCAL);
  return lib ? ckpt_real_dlsym(lib, name) : NULL;
}

static void load_table(void) {
  void *(*resolve)(const char *) = load_resolve ? load_resolve : dl_resolve;
  int rc = 0;
#define X(req, name, ret, args)                                                        \
  rng_real.name = (ret(*) args)resolve(#name);                                             \
  if (!rng_real.name && req) {                                                             \
    CKPT_WARN("rng: cannot find %s in libcurand.so.10: cuRAND calls fail", #name); \
    rc = CKPT_EDRIVER;                                                                 \
  }
  RNG_REAL_FUNCS(X)
#undef X
  load_rc = rc;
}

int rng_load(void *(*resolve)(const char *name)) {
  load_resolve = resolve;
  pthread_once(&load_once, load_table);
  return load_rc;
}

static bool loaded(void) {
  pthread_once(&load_once, load_table);
  return load_rc == 0;
}

/* ---- the generators ------------------------------------------------------ */

pthread_mutex_t rng_mu = PTHREAD_MUTEX_INITIALIZER;
struct gen **rng_gens;
int rng_ngens, rng_capgens;
uint64_t rng_next_id = 1, rng_ev;

bool rng_grow(void **v, int *cap, int need, size_t elt) {
  if (need <= *cap) return true;
  int c = *cap ? *cap * 2 : 8;
  while (c < need) c *= 2;
  void *p = realloc(*v, (size_t)c * elt);
  if (!p) return false;
  *v = p;
  *cap = c;
  return true;
}

struct gen *rng_find(curandGenerator_t h) {
  for (int i = 0; i < rng_ngens; i++)
    if (rng_gens[i]->h == h) return rng_gens[i];
  return NULL;
}

struct gen *rng_find_id(uint64_t id) {
  for (int i = 0; i < rng_ngens; i++)
    if (rng_gens[i]->id == id) return rng_gens[i];
  return NULL;
}


/* ---- hooks ------------------------------------------------------------- */

#define NEED_REAL(fn)                                                      \
  do {                                                                     \
    if (!loaded() || !rng_real.fn) return CURAND_STATUS_INITIALIZATION_FAILED; \
  } while (0)

/* A hook entered from inside cuRAND (a libcurand function calling another
 * exported curand* function through the PLT lands in the preload's wrapper)
 * passes straight through: only the outermost call is tracked. */
static __thread int hook_depth;

#define PASS_THROUGH_IF_NESTED(fn, args) \
  do {                                   \
    if (hook_depth) return rng_real.fn args; \
  } while (0)

/* Calls rng_real.fn as the outermost hook. */
#define REAL_CALL(out, fn, args) \
  do {                           \
    hook_depth++;                \
    out = rng_real.fn args;          \
    hook_depth--;                \
  } while (0)

static curandStatus_t track_create(curandStatus_t s, curandGenerator_t *out, curandRngType_t type) {
  if (s != CURAND_STATUS_SUCCESS || !out) return s;
  if (type == CURAND_RNG_PSEUDO_DEFAULT) type = CURAND_RNG_PSEUDO_XORWOW;
  if (type == CURAND_RNG_QUASI_DEFAULT) type = CURAND_RNG_QUASI_SOBOL32;
  struct gen *g = calloc(1, sizeof *g);
  pthread_mutex_lock(&rng_mu);
  if (!g || !rng_grow((void **)&rng_gens, &rng_capgens, rng_ngens + 1, sizeof *rng_gens)) {
    pthread_mutex_unlock(&rng_mu);
    free(g);
    CKPT_WARN("rng: out of memory: generator %p is not tracked (not replayable)", (void *)*out);
    return s;
  }
  for (int i = 0; i < rng_ngens; i++) /* a handle destroyed behind our back */
    if (rng_gens[i]->h == *out) {
      free(rng_gens[i]);
      rng_gens[i] = rng_gens[--rng_ngens];
      break;
    }
  g->h = *out;
  g->id = rng_next_id++;
  g->born = ++rng_ev;
  g->type = type;
  g->st.ordering = type < 200 ? CURAND_ORDERING_PSEUDO_DEFAULT : CURAND_ORDERING_QUASI_DEFAULT;
  g->st.known = true; /* seed 0, offset 0 [H] */
  rng_gens[rng_ngens++] = g;
  pthread_mutex_unlock(&rng_mu);
  return s;
}

curandStatus_t rng_hook_create(curandGenerator_t *generator, curandRngType_t rng_type) {
  NEED_REAL(curandCreateGenerator);
  PASS_THROUGH_IF_NESTED(curandCreateGenerator, (generator, rng_type));
  curandStatus_t s;
  REAL_CALL(s, curandCreateGenerator, (generator, rng_type));
  return track_create(s, generator, rng_type);
}

curandStatus_t rng_hook_create_host(curandGenerator_t *generator, curandRngType_t rng_type) {
  NEED_REAL(curandCreateGeneratorHost);
  PASS_THROUGH_IF_NESTED(curandCreateGeneratorHost, (generator, rng_type));
  curandStatus_t s;
  REAL_CALL(s, curandCreateGeneratorHost, (generator, rng_type));
  return track_create(s, generator, rng_type);
}

curandStatus_t rng_hook_destroy(curandGenerator_t generator) {
  NEED_REAL(curandDestroyGenerator);
  PASS_THROUGH_IF_NESTED(curandDestroyGenerator, (generator));
  curandStatus_t s;
  REAL_CALL(s, curandDestroyGenerator, (generator));
  if (s != CURAND_STATUS_SUCCESS) return s;
  pthread_mutex_lock(&rng_mu);
  for (int i = 0; i < rng_ngens; i++)
    if (rng_gens[i]->h == generator) {
      free(rng_gens[i]);
      rng_gens[i] = rng_gens[--rng_ngens];
      break;
    }
  pthread_mutex_unlock(&rng_mu);
  return s;
}

curandStatus_t rng_hook_set_seed(curandGenerator_t generator, unsigned long long seed) {
  NEED_REAL(curandSetPseudoRandomGeneratorSeed);
  PASS_THROUGH_IF_NESTED(curandSetPseudoRandomGeneratorSeed, (generator, seed));
  curandStatus_t s;
  REAL_CALL(s, curandSetPseudoRandomGeneratorSeed, (generator, seed));
  if (s != CURAND_STATUS_SUCCESS) return s;
  pthread_mutex_lock(&rng_mu);
  struct gen *g = rng_find(generator);
  if (g) {
    g->st.seed = seed; /* position kept [C, R] */
    /* PHILOX re-derives its position from a counter in blocks of 4 results
     * when reseeded after drawing [R]: not modelled. */
    if (g->type == CURAND_RNG_PSEUDO_PHILOX4_32_10 && g->st.offset != g->anchor) g->st.known = false;
  }
  pthread_mutex_unlock(&rng_mu);
  return s;
}

curandStatus_t rng_hook_set_offset(curandGenerator_t generator, unsigned long long offset) {
  NEED_REAL(curandSetGeneratorOffset);
  PASS_THROUGH_IF_NESTED(curandSetGeneratorOffset, (generator, offset));
  curandStatus_t s;
  REAL_CALL(s, curandSetGeneratorOffset, (generator, offset));
  if (s != CURAND_STATUS_SUCCESS) return s;
  pthread_mutex_lock(&rng_mu);
  struct gen *g = rng_find(generator);
  if (g) {
    g->st.offset = offset;
    g->anchor = offset;
    if (!g->st.known) {
      g->st.known = true;
      g->warned = false; /* replayable again; a later loss warns again */
    }
  }
  pthread_mutex_unlock(&rng_mu);
  return s;
}

curandStatus_t rng_hook_set_ordering(curandGenerator_t generator, curandOrdering_t order) {
  NEED_REAL(curandSetGeneratorOrdering);
  PASS_THROUGH_IF_NESTED(curandSetGeneratorOrdering, (generator, order));
  curandStatus_t s;
  REAL_CALL(s, curandSetGeneratorOrdering, (generator, order));
  if (s != CURAND_STATUS_SUCCESS) return s;
  pthread_mutex_lock(&rng_mu);
  struct gen *g = rng_find(generator);
  if (g) {
    g->st.ordering = order; /* position kept [R], PHILOX: as for a reseed [R] */
    if (g->type == CURAND_RNG_PSEUDO_PHILOX4_32_10 && g->st.offset != g->anchor) g->st.known = false;
  }
  pthread_mutex_unlock(&rng_mu);
  return s;
}

curandStatus_t rng_hook_set_stream(curandGenerator_t generator, cudaStream_t stream) {
  NEED_REAL(curandSetStream);
  PASS_THROUGH_IF_NESTED(curandSetStream, (generator, stream));
  curandStatus_t s;
  REAL_CALL(s, curandSetStream, (generator, stream));
  if (s != CURAND_STATUS_SUCCESS) return s;
  pthread_mutex_lock(&rng_mu);
  struct gen *g = rng_find(generator);
  if (g) g->stream = stream;
  pthread_mutex_unlock(&rng_mu);
  return s;
}

/* What a generate call draws, for the consumption rule. */
enum draw { D_BITS, D_NORMAL, D_DOUBLE, D_NORMAL_DOUBLE, D_UNKNOWN };

/* Results consumed by one successful call of n outputs, or -1 when the rule
 * is not known (see rng.h: measured on the real cuRAND). */
static long long consumption(curandRngType_t t, enum draw kind, size_t n) {
  long long ln = (long long)n;
  switch (kind) {
  case D_BITS: return ln;
  case D_NORMAL:
  case D_NORMAL_DOUBLE:
    return t == CURAND_RNG_PSEUDO_PHILOX4_32_10 ? ln : -1;
  case D_DOUBLE:
    return t == CURAND_RNG_PSEUDO_PHILOX4_32_10 || t == CURAND_RNG_PSEUDO_MRG32K3A ? ln : -1;
  default: return -1;
  }
}

/* After a successful generate call of n outputs: the state before it is
 * the state now (only this call moved it), kept once as the creation state. */
static void advance(curandGenerator_t h, enum draw kind, size_t n) {
  pthread_mutex_lock(&rng_mu);
  struct gen *g = rng_find(h);
  if (g) {
    if (!g->has_first) {
      g->has_first = true;
      g->first = g->st;
    }
    long long c = consumption(g->type, kind, n);
    if (c < 0)
      g->st.known = false;
    else
      g->st.offset += (unsigned long long)c;
  }
  pthread_mutex_unlock(&rng_mu);
}

#define GENERATE(fn, kind, n, call)                                     \
  do {                                                                  \
    NEED_REAL(fn);                                                      \
    PASS_THROUGH_IF_NESTED(fn, call);                                   \
    curandStatus_t s_;                                                  \
    REAL_CALL(s_, fn, call);                                            \
    if (s_ == CURAND_STATUS_SUCCESS && (n) > 0) advance(generator, kind, n); \
    return s_;                                                          \
  } while (0)

curandStatus_t rng_hook_generate(curandGenerator_t generator, unsigned int *out, size_t num) {
  GENERATE(curandGenerate, D_BITS, num, (generator, out, num));
}
curandStatus_t rng_hook_generate_long_long(curandGenerator_t generator, unsigned long long *out, size_t num) {
  /* 64-bit quasirandom generators only, which are never replayed. */
  GENERATE(curandGenerateLongLong, D_BITS, num, (generator, out, num));
}
curandStatus_t rng_hook_generate_uniform(curandGenerator_t generator, float *out, size_t num) {
  GENERATE(curandGenerateUniform, D_BITS, num, (generator, out, num));
}
curandStatus_t rng_hook_generate_uniform_double(curandGenerator_t generator, double *out, size_t num) {
  GENERATE(curandGenerateUniformDouble, D_DOUBLE, num, (generator, out, num));
}
curandStatus_t rng_hook_generate_normal(curandGenerator_t generator, float *out, size_t n, float mean,
                                        float stddev) {
  GENERATE(curandGenerateNormal, D_NORMAL, n, (generator, out, n, mean, stddev));
}
curandStatus_t rng_hook_generate_normal_double(curandGenerator_t generator, double *out, size_t n, double mean,
                                               double stddev) {
  GENERATE(curandGenerateNormalDouble, D_NORMAL_DOUBLE, n, (generator, out, n, mean, stddev));
}
curandStatus_t rng_hook_generate_log_normal(curandGenerator_t generator, float *out, size_t n, float mean,
                                            float stddev) {
  GENERATE(curandGenerateLogNormal, D_NORMAL, n, (generator, out, n, mean, stddev));
}
curandStatus_t rng_hook_generate_log_normal_double(curandGenerator_t generator, double *out, size_t n,
                                                   double mean, double stddev) {
  GENERATE(curandGenerateLogNormalDouble, D_NORMAL_DOUBLE, n, (generator, out, n, mean, stddev));
}
curandStatus_t rng_hook_generate_poisson(curandGenerator_t generator, unsigned int *out, size_t n, double lambda) {
  GENERATE(curandGeneratePoisson, D_UNKNOWN, n, (generator, out, n, lambda));
}
curandStatus_t rng_hook_generate_poisson_method(curandGenerator_t generator, unsigned int *out, size_t n,
                                                double lambda, curandMethod_t method) {
  GENERATE(curandGeneratePoissonMethod, D_UNKNOWN, n, (generator, out, n, lambda, method));
}
curandStatus_t rng_hook_generate_binomial(curandGenerator_t generator, unsigned int *out, size_t num,
                                          unsigned int n, double p) {
  GENERATE(curandGenerateBinomial, D_UNKNOWN, num, (generator, out, num, n, p));
}
curandStatus_t rng_hook_generate_binomial_method(curandGenerator_t generator, unsigned int *out, size_t num,
                                                 unsigned int n, double p, curandMethod_t method) {
  GENERATE(curandGenerateBinomialMethod, D_UNKNOWN, num, (generator, out, num, n, p, method));
}
