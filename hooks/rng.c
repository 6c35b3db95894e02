/* rng: cuRAND generator tracking, region replay and named RNG states.
 * The rules and their sources are in rng.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "rng.h"

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

#define RNG_REAL_FUNCS(X)                                                                                    \
  X(1, curandCreateGenerator, curandStatus_t, (curandGenerator_t *, curandRngType_t))                        \
  X(0, curandCreateGeneratorHost, curandStatus_t, (curandGenerator_t *, curandRngType_t))                    \
  X(1, curandDestroyGenerator, curandStatus_t, (curandGenerator_t))                                          \
  X(1, curandSetPseudoRandomGeneratorSeed, curandStatus_t, (curandGenerator_t, unsigned long long))          \
  X(1, curandSetGeneratorOffset, curandStatus_t, (curandGenerator_t, unsigned long long))                    \
  X(1, curandSetGeneratorOrdering, curandStatus_t, (curandGenerator_t, curandOrdering_t))                    \
  X(1, curandSetStream, curandStatus_t, (curandGenerator_t, cudaStream_t))                                   \
  X(1, curandGenerate, curandStatus_t, (curandGenerator_t, unsigned int *, size_t))                          \
  X(0, curandGenerateLongLong, curandStatus_t, (curandGenerator_t, unsigned long long *, size_t))            \
  X(1, curandGenerateUniform, curandStatus_t, (curandGenerator_t, float *, size_t))                          \
  X(0, curandGenerateUniformDouble, curandStatus_t, (curandGenerator_t, double *, size_t))                   \
  X(0, curandGenerateNormal, curandStatus_t, (curandGenerator_t, float *, size_t, float, float))             \
  X(0, curandGenerateNormalDouble, curandStatus_t, (curandGenerator_t, double *, size_t, double, double))    \
  X(0, curandGenerateLogNormal, curandStatus_t, (curandGenerator_t, float *, size_t, float, float))          \
  X(0, curandGenerateLogNormalDouble, curandStatus_t, (curandGenerator_t, double *, size_t, double, double)) \
  X(0, curandGeneratePoisson, curandStatus_t, (curandGenerator_t, unsigned int *, size_t, double))           \
  X(0, curandGeneratePoissonMethod, curandStatus_t,                                                          \
    (curandGenerator_t, unsigned int *, size_t, double, curandMethod_t))                                     \
  X(0, curandGenerateBinomial, curandStatus_t, (curandGenerator_t, unsigned int *, size_t, unsigned, double)) \
  X(0, curandGenerateBinomialMethod, curandStatus_t,                                                         \
    (curandGenerator_t, unsigned int *, size_t, unsigned, double, curandMethod_t))

static struct {
#define X(req, name, ret, args) ret(*name) args;
  RNG_REAL_FUNCS(X)
#undef X
} real;

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
  real.name = (ret(*) args)resolve(#name);                                             \
  if (!real.name && req) {                                                             \
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

/* ---- the tracker's state ----------------------------------------------- */

struct gen_state {
  unsigned long long seed, offset;
  curandOrdering_t ordering;
  bool known; /* position known */
};

struct gen {
  curandGenerator_t h;
  uint64_t id;        /* unique: handles can be reused after destroy */
  uint64_t born;      /* event serial at creation */
  curandRngType_t type;
  cudaStream_t stream;
  struct gen_state st;
  unsigned long long anchor; /* offset at the last absolute set (creation, curandSetGeneratorOffset) */
  bool has_first;     /* state just before its first generate call */
  struct gen_state first;
  bool warned;
};

/* Per-generator position inside a named state. */
struct pos {
  uint64_t id;
  unsigned long long offset;
};

struct named {
  char name[RNG_NAME_MAX];
  unsigned long long seed;
  struct pos *pos;
  int npos, cap;
};

struct ckpt_rng_states {
  struct named *v;
  int n;
};

struct snap_entry {
  uint64_t id;
  curandGenerator_t h;
  struct gen_state st;
  bool replayable;
};

struct snap {
  int region;
  uint64_t open_ev, close_ev; /* close_ev 0: still open / never told */
  struct snap_entry *e;
  int n;
  struct ckpt_rng_states named;
  struct snap *next;
};

/* A generator set aside by a replay or a fork, to be put back. */
struct saved {
  uint64_t id;
  struct gen_state st;
};

struct frame {
  struct saved *s;
  int n;
};

enum { FORK_DEPTH_MAX = 16 };

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct gen **gens;
static int ngens, capgens;
static uint64_t next_id = 1, ev;
/* Region records, oldest first; at most RECORDS_MAX (a core that never
 * retires regions must not grow this without bound). */
enum { RECORDS_MAX = 4096 };
static struct snap *snaps, *snaps_tail;
static int nsnaps;

static struct ckpt_rng_states named;   /* the tracker's states_ */
static unsigned long long *seeds;      /* the tracker's seeds_ */
static int nseeds, capseeds;

static struct {
  bool active;
  int region;
  struct frame f;
  struct ckpt_rng_states named; /* the states in place before the replay */
} replay;

static struct {
  struct frame f;
  char name[RNG_NAME_MAX];
} forks[FORK_DEPTH_MAX];
static int nforks;

static bool grow(void **v, int *cap, int need, size_t elt) {
  if (need <= *cap) return true;
  int c = *cap ? *cap * 2 : 8;
  while (c < need) c *= 2;
  void *p = realloc(*v, (size_t)c * elt);
  if (!p) return false;
  *v = p;
  *cap = c;
  return true;
}

static struct gen *find(curandGenerator_t h) {
  for (int i = 0; i < ngens; i++)
    if (gens[i]->h == h) return gens[i];
  return NULL;
}

static struct gen *find_id(uint64_t id) {
  for (int i = 0; i < ngens; i++)
    if (gens[i]->id == id) return gens[i];
  return NULL;
}

static const char *type_name(curandRngType_t t) {
  switch (t) {
  case CURAND_RNG_PSEUDO_XORWOW: return "XORWOW";
  case CURAND_RNG_PSEUDO_MRG32K3A: return "MRG32K3A";
  case CURAND_RNG_PSEUDO_MTGP32: return "MTGP32";
  case CURAND_RNG_PSEUDO_MT19937: return "MT19937";
  case CURAND_RNG_PSEUDO_PHILOX4_32_10: return "PHILOX4_32_10";
  default: return "quasirandom";
  }
}

static bool type_ok(curandRngType_t t) {
  return t == CURAND_RNG_PSEUDO_XORWOW || t == CURAND_RNG_PSEUDO_MRG32K3A || t == CURAND_RNG_PSEUDO_PHILOX4_32_10;
}

static bool ordering_ok(curandOrdering_t o) {
  return o == CURAND_ORDERING_PSEUDO_DEFAULT || o == CURAND_ORDERING_PSEUDO_BEST ||
         o == CURAND_ORDERING_PSEUDO_LEGACY;
}

static bool state_ok(const struct gen *g, const struct gen_state *st) {
  return type_ok(g->type) && ordering_ok(st->ordering) && st->known;
}

static bool replayable(const struct gen *g) { return state_ok(g, &g->st); }

/* Warns once per generator, with the reason. */
static void warn_unreplayable(struct gen *g) {
  if (g->warned) return;
  g->warned = true;
  if (!type_ok(g->type))
    CKPT_WARN("rng: generator %p (%s) is not replayable: only XORWOW, MRG32K3A and PHILOX4_32_10 are; "
              "a recompute will draw other numbers",
              (void *)g->h, type_name(g->type));
  else if (!ordering_ok(g->st.ordering))
    CKPT_WARN("rng: generator %p (%s, ordering %d) is not replayable: only orderings PSEUDO_DEFAULT, BEST "
              "and LEGACY are; a recompute will draw other numbers",
              (void *)g->h, type_name(g->type), (int)g->st.ordering);
  else
    CKPT_WARN("rng: generator %p (%s) is not replayable until its next curandSetGeneratorOffset: a call "
              "moved it by an amount cuRAND does not document (see rng.h for the calls that are tracked)",
              (void *)g->h, type_name(g->type));
}

/* Sets a generator through the real API: ordering (when it differs), seed,
 * then the absolute offset. */
static curandStatus_t apply(struct gen *g, const struct gen_state *st) {
  curandStatus_t s = CURAND_STATUS_SUCCESS;
  /* Already there: no call (re-seeding re-initialises XORWOW's state, which
   * costs a kernel). */
  if (g->st.known && st->known && g->st.seed == st->seed && g->st.offset == st->offset &&
      g->st.ordering == st->ordering)
    return s;
  if (st->ordering != g->st.ordering) {
    s = real.curandSetGeneratorOrdering(g->h, st->ordering);
    if (s == CURAND_STATUS_SUCCESS) g->st.ordering = st->ordering;
  }
  if (s == CURAND_STATUS_SUCCESS) s = real.curandSetPseudoRandomGeneratorSeed(g->h, st->seed);
  if (s == CURAND_STATUS_SUCCESS) s = real.curandSetGeneratorOffset(g->h, st->offset);
  if (s == CURAND_STATUS_SUCCESS) {
    g->st = *st;
    g->anchor = st->offset;
  }
  return s;
}

/* Puts a frame's generators back (those still alive) and empties it. */
static void restore_frame(struct frame *f) {
  for (int i = f->n - 1; i >= 0; i--) {
    struct gen *g = find_id(f->s[i].id);
    if (!g) continue;
    curandStatus_t s = apply(g, &f->s[i].st);
    if (s != CURAND_STATUS_SUCCESS)
      CKPT_WARN("rng: generator %p: cannot set it back (cuRAND status %d); its sequence is changed",
                (void *)g->h, (int)s);
  }
  free(f->s);
  f->s = NULL;
  f->n = 0;
}

static bool frame_push(struct frame *f, int *cap, struct gen *g) {
  if (!grow((void **)&f->s, cap, f->n + 1, sizeof *f->s)) return false;
  f->s[f->n].id = g->id;
  f->s[f->n].st = g->st;
  f->n++;
  return true;
}

/* ---- named states: copies ---------------------------------------------- */

static void states_clear(struct ckpt_rng_states *s) {
  for (int i = 0; i < s->n; i++) free(s->v[i].pos);
  free(s->v);
  s->v = NULL;
  s->n = 0;
}

static int states_copy(struct ckpt_rng_states *dst, const struct ckpt_rng_states *src) {
  struct ckpt_rng_states t = {0};
  if (src->n) {
    t.v = calloc((size_t)src->n, sizeof *t.v);
    if (!t.v) return CKPT_ENOMEM;
    for (int i = 0; i < src->n; i++) {
      t.v[i] = src->v[i];
      t.v[i].pos = NULL;
      t.v[i].cap = t.v[i].npos = 0;
      if (src->v[i].npos) {
        t.v[i].pos = malloc((size_t)src->v[i].npos * sizeof *t.v[i].pos);
        if (!t.v[i].pos) {
          t.n = i;
          states_clear(&t);
          return CKPT_ENOMEM;
        }
        memcpy(t.v[i].pos, src->v[i].pos, (size_t)src->v[i].npos * sizeof *t.v[i].pos);
        t.v[i].npos = t.v[i].cap = src->v[i].npos;
      }
      t.n = i + 1;
    }
  }
  states_clear(dst);
  *dst = t;
  return 0;
}

static struct named *named_find(const char *name) {
  for (int i = 0; i < named.n; i++)
    if (strcmp(named.v[i].name, name) == 0) return &named.v[i];
  return NULL;
}

static unsigned long long named_pos(const struct named *s, uint64_t id) {
  for (int i = 0; i < s->npos; i++)
    if (s->pos[i].id == id) return s->pos[i].offset;
  return 0;
}

static bool named_set_pos(struct named *s, uint64_t id, unsigned long long off) {
  for (int i = 0; i < s->npos; i++)
    if (s->pos[i].id == id) {
      s->pos[i].offset = off;
      return true;
    }
  if (!grow((void **)&s->pos, &s->cap, s->npos + 1, sizeof *s->pos)) return false;
  s->pos[s->npos].id = id;
  s->pos[s->npos].offset = off;
  s->npos++;
  return true;
}

/* ---- hooks ------------------------------------------------------------- */

#define NEED_REAL(fn)                                                      \
  do {                                                                     \
    if (!loaded() || !real.fn) return CURAND_STATUS_INITIALIZATION_FAILED; \
  } while (0)

/* A hook entered from inside cuRAND (a libcurand function calling another
 * exported curand* function through the PLT lands in the preload's wrapper)
 * passes straight through: only the outermost call is tracked. */
static __thread int hook_depth;

#define PASS_THROUGH_IF_NESTED(fn, args) \
  do {                                   \
    if (hook_depth) return real.fn args; \
  } while (0)

/* Calls real.fn as the outermost hook. */
#define REAL_CALL(out, fn, args) \
  do {                           \
    hook_depth++;                \
    out = real.fn args;          \
    hook_depth--;                \
  } while (0)

static curandStatus_t track_create(curandStatus_t s, curandGenerator_t *out, curandRngType_t type) {
  if (s != CURAND_STATUS_SUCCESS || !out) return s;
  if (type == CURAND_RNG_PSEUDO_DEFAULT) type = CURAND_RNG_PSEUDO_XORWOW;
  if (type == CURAND_RNG_QUASI_DEFAULT) type = CURAND_RNG_QUASI_SOBOL32;
  struct gen *g = calloc(1, sizeof *g);
  pthread_mutex_lock(&mu);
  if (!g || !grow((void **)&gens, &capgens, ngens + 1, sizeof *gens)) {
    pthread_mutex_unlock(&mu);
    free(g);
    CKPT_WARN("rng: out of memory: generator %p is not tracked (not replayable)", (void *)*out);
    return s;
  }
  for (int i = 0; i < ngens; i++) /* a handle destroyed behind our back */
    if (gens[i]->h == *out) {
      free(gens[i]);
      gens[i] = gens[--ngens];
      break;
    }
  g->h = *out;
  g->id = next_id++;
  g->born = ++ev;
  g->type = type;
  g->st.ordering = type < 200 ? CURAND_ORDERING_PSEUDO_DEFAULT : CURAND_ORDERING_QUASI_DEFAULT;
  g->st.known = true; /* seed 0, offset 0 [H] */
  gens[ngens++] = g;
  pthread_mutex_unlock(&mu);
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
  pthread_mutex_lock(&mu);
  for (int i = 0; i < ngens; i++)
    if (gens[i]->h == generator) {
      free(gens[i]);
      gens[i] = gens[--ngens];
      break;
    }
  pthread_mutex_unlock(&mu);
  return s;
}

curandStatus_t rng_hook_set_seed(curandGenerator_t generator, unsigned long long seed) {
  NEED_REAL(curandSetPseudoRandomGeneratorSeed);
  PASS_THROUGH_IF_NESTED(curandSetPseudoRandomGeneratorSeed, (generator, seed));
  curandStatus_t s;
  REAL_CALL(s, curandSetPseudoRandomGeneratorSeed, (generator, seed));
  if (s != CURAND_STATUS_SUCCESS) return s;
  pthread_mutex_lock(&mu);
  struct gen *g = find(generator);
  if (g) {
    g->st.seed = seed; /* position kept [C, R] */
    /* PHILOX re-derives its position from a counter in blocks of 4 results
     * when reseeded after drawing [R]: not modelled. */
    if (g->type == CURAND_RNG_PSEUDO_PHILOX4_32_10 && g->st.offset != g->anchor) g->st.known = false;
  }
  pthread_mutex_unlock(&mu);
  return s;
}

curandStatus_t rng_hook_set_offset(curandGenerator_t generator, unsigned long long offset) {
  NEED_REAL(curandSetGeneratorOffset);
  PASS_THROUGH_IF_NESTED(curandSetGeneratorOffset, (generator, offset));
  curandStatus_t s;
  REAL_CALL(s, curandSetGeneratorOffset, (generator, offset));
  if (s != CURAND_STATUS_SUCCESS) return s;
  pthread_mutex_lock(&mu);
  struct gen *g = find(generator);
  if (g) {
    g->st.offset = offset;
    g->anchor = offset;
    if (!g->st.known) {
      g->st.known = true;
      g->warned = false; /* replayable again; a later loss warns again */
    }
  }
  pthread_mutex_unlock(&mu);
  return s;
}

curandStatus_t rng_hook_set_ordering(curandGenerator_t generator, curandOrdering_t order) {
  NEED_REAL(curandSetGeneratorOrdering);
  PASS_THROUGH_IF_NESTED(curandSetGeneratorOrdering, (generator, order));
  curandStatus_t s;
  REAL_CALL(s, curandSetGeneratorOrdering, (generator, order));
  if (s != CURAND_STATUS_SUCCESS) return s;
  pthread_mutex_lock(&mu);
  struct gen *g = find(generator);
  if (g) {
    g->st.ordering = order; /* position kept [R], PHILOX: as for a reseed [R] */
    if (g->type == CURAND_RNG_PSEUDO_PHILOX4_32_10 && g->st.offset != g->anchor) g->st.known = false;
  }
  pthread_mutex_unlock(&mu);
  return s;
}

curandStatus_t rng_hook_set_stream(curandGenerator_t generator, cudaStream_t stream) {
  NEED_REAL(curandSetStream);
  PASS_THROUGH_IF_NESTED(curandSetStream, (generator, stream));
  curandStatus_t s;
  REAL_CALL(s, curandSetStream, (generator, stream));
  if (s != CURAND_STATUS_SUCCESS) return s;
  pthread_mutex_lock(&mu);
  struct gen *g = find(generator);
  if (g) g->stream = stream;
  pthread_mutex_unlock(&mu);
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
  pthread_mutex_lock(&mu);
  struct gen *g = find(h);
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
  pthread_mutex_unlock(&mu);
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

/* ---- regions ----------------------------------------------------------- */

static struct snap *snap_find(int region) {
  for (struct snap *s = snaps; s; s = s->next)
    if (s->region == region) return s;
  return NULL;
}

static void snap_free(struct snap *s) {
  free(s->e);
  states_clear(&s->named);
  free(s);
}

static void snap_unlink(struct snap *s) {
  struct snap **pp = &snaps, *prev = NULL;
  while (*pp != s) {
    prev = *pp;
    pp = &(*pp)->next;
  }
  *pp = s->next;
  if (snaps_tail == s) snaps_tail = prev;
  nsnaps--;
}

void rng_region_opened(int region) {
  pthread_mutex_lock(&mu);
  struct snap *old = snap_find(region);
  if (old) { /* an id reused before retire: the newer open wins */
    snap_unlink(old);
    snap_free(old);
  }
  if (nsnaps == RECORDS_MAX) {
    struct snap *oldest = snaps;
    CKPT_WARN_ONCE("rng: more than %d regions recorded and not retired: dropping the oldest (region %d "
                   "can no longer be replayed)",
                   RECORDS_MAX, oldest->region);
    snap_unlink(oldest);
    snap_free(oldest);
  }
  struct snap *s = calloc(1, sizeof *s);
  if (s && ngens) s->e = calloc((size_t)ngens, sizeof *s->e);
  if (!s || (ngens && !s->e) || states_copy(&s->named, &named) != 0) {
    if (s) snap_free(s);
    pthread_mutex_unlock(&mu);
    CKPT_WARN("rng: out of memory: region %d is not replayable", region);
    return;
  }
  s->region = region;
  s->open_ev = ++ev;
  for (int i = 0; i < ngens; i++) {
    struct gen *g = gens[i];
    bool ok = replayable(g);
    if (!ok) warn_unreplayable(g);
    s->e[s->n++] = (struct snap_entry){.id = g->id, .h = g->h, .st = g->st, .replayable = ok};
  }
  if (snaps_tail)
    snaps_tail->next = s;
  else
    snaps = s;
  snaps_tail = s;
  nsnaps++;
  pthread_mutex_unlock(&mu);
}

void rng_region_closed(int region) {
  pthread_mutex_lock(&mu);
  struct snap *s = snap_find(region);
  if (s && !s->close_ev) s->close_ev = ++ev;
  pthread_mutex_unlock(&mu);
}

void rng_region_retired(int region) {
  pthread_mutex_lock(&mu);
  struct snap *s = snap_find(region);
  if (s) {
    snap_unlink(s);
    snap_free(s);
  }
  pthread_mutex_unlock(&mu);
}

static bool born_inside(const struct snap *s, const struct gen *g) {
  return g->born > s->open_ev && (!s->close_ev || g->born < s->close_ev);
}

/* No loaded() here: a tracked generator implies the table is loaded, and a
 * program without cuRAND (the Python recompute path) must not need it. */
int rng_replay_begin(int region) {
  pthread_mutex_lock(&mu);
  int rc = 0;
  if (replay.active) {
    CKPT_WARN("rng: replay of region %d requested while region %d is being replayed", region, replay.region);
    rc = CKPT_ESTATE;
    goto out;
  }
  struct snap *s = snap_find(region);
  if (!s) {
    CKPT_WARN("rng: region %d has no recorded RNG state (never opened, or retired)", region);
    rc = CKPT_ENOENT;
    goto out;
  }
  /* All or nothing: every replayable generator recorded must still exist. */
  for (int i = 0; i < s->n; i++)
    if (s->e[i].replayable && !find_id(s->e[i].id)) {
      CKPT_WARN("rng: region %d cannot be replayed: cuRAND generator %p was destroyed after the region "
                "opened; its numbers cannot be drawn again",
                region, (void *)s->e[i].h);
      rc = CKPT_ENOENT;
      goto out;
    }
  struct frame f = {0};
  int cap = 0;
  for (int i = 0; i < ngens && rc == 0; i++) {
    struct gen *g = gens[i];
    const struct gen_state *target = NULL;
    for (int k = 0; k < s->n; k++)
      if (s->e[k].id == g->id) {
        target = s->e[k].replayable ? &s->e[k].st : NULL;
        break;
      }
    if (!target && born_inside(s, g) && g->has_first) {
      if (state_ok(g, &g->first))
        target = &g->first;
      else
        warn_unreplayable(g);
    }
    if (!target) continue;
    if (!g->st.known) { /* could not be put back afterwards: leave it alone */
      warn_unreplayable(g);
      continue;
    }
    if (!frame_push(&f, &cap, g)) {
      rc = CKPT_ENOMEM;
      break;
    }
    curandStatus_t st = apply(g, target);
    if (st != CURAND_STATUS_SUCCESS) {
      CKPT_WARN("rng: region %d: cannot reset generator %p (cuRAND status %d); replay abandoned", region,
                (void *)g->h, (int)st);
      rc = CKPT_EDRIVER;
    }
  }
  if (rc == 0) {
    struct ckpt_rng_states cur = {0};
    rc = states_copy(&cur, &named);
    if (rc == 0) rc = states_copy(&named, &s->named);
    if (rc == 0) {
      replay.named = cur;
    } else {
      states_clear(&cur);
    }
  }
  if (rc != 0) {
    restore_frame(&f);
    goto out;
  }
  replay.active = true;
  replay.region = region;
  replay.f = f;
out:
  pthread_mutex_unlock(&mu);
  return rc;
}

int rng_replay_end(void) {
  pthread_mutex_lock(&mu);
  if (!replay.active) {
    pthread_mutex_unlock(&mu);
    return CKPT_ESTATE;
  }
  restore_frame(&replay.f);
  states_clear(&named);
  named = replay.named;
  replay.named = (struct ckpt_rng_states){0};
  replay.active = false;
  pthread_mutex_unlock(&mu);
  return 0;
}

/* ---- named states ------------------------------------------------------ */

int rng_add(const char *name, unsigned long long seed) {
  if (!name || !*name || strlen(name) >= RNG_NAME_MAX) return CKPT_EINVAL;
  pthread_mutex_lock(&mu);
  int rc = 0;
  for (int i = 0; i < nseeds; i++)
    if (seeds[i] == seed) {
      CKPT_WARN("rng: cannot add RNG state '%s': seed %llu already exists", name, seed);
      rc = CKPT_EINVAL;
      goto out;
    }
  if (named_find(name)) {
    CKPT_WARN("rng: cannot add RNG state '%s': it already exists", name);
    rc = CKPT_EINVAL;
    goto out;
  }
  int capn = named.n; /* exact-size array: grow by one */
  struct named *v = realloc(named.v, (size_t)(capn + 1) * sizeof *v);
  if (!v || !grow((void **)&seeds, &capseeds, nseeds + 1, sizeof *seeds)) {
    if (v) named.v = v;
    rc = CKPT_ENOMEM;
    goto out;
  }
  named.v = v;
  memset(&v[named.n], 0, sizeof *v);
  strcpy(v[named.n].name, name);
  v[named.n].seed = seed;
  named.n++;
  seeds[nseeds++] = seed;
out:
  pthread_mutex_unlock(&mu);
  return rc;
}

int rng_fork(const char *name) {
  if (!name) name = RNG_MODEL_PARALLEL_NAME;
  pthread_mutex_lock(&mu);
  int rc = 0;
  struct named *st = named_find(name);
  if (!st) {
    CKPT_WARN("rng: cannot fork RNG state '%s': it is not added", name);
    rc = CKPT_ENOENT;
    goto out;
  }
  if (nforks == FORK_DEPTH_MAX) {
    CKPT_WARN("rng: cannot fork RNG state '%s': forks nested deeper than %d", name, FORK_DEPTH_MAX);
    rc = CKPT_ESTATE;
    goto out;
  }
  struct frame f = {0};
  int cap = 0;
  for (int i = 0; i < ngens && rc == 0; i++) {
    struct gen *g = gens[i];
    if (!replayable(g)) {
      warn_unreplayable(g);
      continue;
    }
    if (!frame_push(&f, &cap, g)) {
      rc = CKPT_ENOMEM;
      break;
    }
    struct gen_state target = {
        .seed = st->seed, .offset = named_pos(st, g->id), .ordering = g->st.ordering, .known = true};
    curandStatus_t s = apply(g, &target);
    if (s != CURAND_STATUS_SUCCESS) {
      CKPT_WARN("rng: fork '%s': cannot set generator %p (cuRAND status %d)", name, (void *)g->h, (int)s);
      rc = CKPT_EDRIVER;
    }
  }
  if (rc != 0) {
    restore_frame(&f);
    goto out;
  }
  forks[nforks].f = f;
  snprintf(forks[nforks].name, sizeof forks[nforks].name, "%s", name);
  nforks++;
out:
  pthread_mutex_unlock(&mu);
  return rc;
}

int rng_unfork(void) {
  pthread_mutex_lock(&mu);
  if (nforks == 0) {
    pthread_mutex_unlock(&mu);
    return CKPT_ESTATE;
  }
  nforks--;
  /* The state may have been replaced by set_states meanwhile: by name. */
  struct named *st = named_find(forks[nforks].name);
  int rc = 0;
  for (int i = 0; st && i < forks[nforks].f.n; i++) {
    struct gen *g = find_id(forks[nforks].f.s[i].id);
    if (g && g->st.known && !named_set_pos(st, g->id, g->st.offset)) rc = CKPT_ENOMEM;
  }
  restore_frame(&forks[nforks].f);
  pthread_mutex_unlock(&mu);
  return rc;
}

int rng_get_states(struct ckpt_rng_states **out) {
  if (!out) return CKPT_EINVAL;
  struct ckpt_rng_states *s = calloc(1, sizeof *s);
  if (!s) return CKPT_ENOMEM;
  pthread_mutex_lock(&mu);
  int rc = states_copy(s, &named);
  pthread_mutex_unlock(&mu);
  if (rc) {
    free(s);
    return rc;
  }
  *out = s;
  return 0;
}

int rng_set_states(const struct ckpt_rng_states *states) {
  if (!states) return CKPT_EINVAL;
  pthread_mutex_lock(&mu);
  int rc = states_copy(&named, states);
  pthread_mutex_unlock(&mu);
  return rc;
}

void rng_states_free(struct ckpt_rng_states *states) {
  if (!states) return;
  states_clear(states);
  free(states);
}

int rng_states_count(const struct ckpt_rng_states *states) {
  return states ? states->n : CKPT_EINVAL;
}

int rng_states_entry(const struct ckpt_rng_states *states, int i, const char **name, unsigned long long *seed) {
  if (!states || i < 0 || i >= states->n) return CKPT_EINVAL;
  if (name) *name = states->v[i].name;
  if (seed) *seed = states->v[i].seed;
  return 0;
}

int rng_reset(void) {
  pthread_mutex_lock(&mu);
  if (nforks) {
    pthread_mutex_unlock(&mu);
    CKPT_WARN("rng: cannot reset the RNG states inside a fork");
    return CKPT_ESTATE;
  }
  states_clear(&named);
  nseeds = 0;
  pthread_mutex_unlock(&mu);
  return 0;
}

int rng_model_parallel_seed(unsigned long long seed, int tp_rank) {
  if (tp_rank < 0) return CKPT_EINVAL;
  int rc = rng_reset();
  if (rc) return rc;
  /* The default state: every replayable generator at (seed, 0). */
  pthread_mutex_lock(&mu);
  for (int i = 0; i < ngens; i++) {
    struct gen *g = gens[i];
    struct gen_state def = {.seed = seed, .offset = 0, .ordering = g->st.ordering, .known = true};
    if (!type_ok(g->type) || !ordering_ok(g->st.ordering)) {
      warn_unreplayable(g);
      continue;
    }
    curandStatus_t s = apply(g, &def);
    if (s != CURAND_STATUS_SUCCESS) {
      CKPT_WARN("rng: model-parallel seed: cannot seed generator %p (cuRAND status %d)", (void *)g->h, (int)s);
      rc = CKPT_EDRIVER;
    }
  }
  pthread_mutex_unlock(&mu);
  int rc2 = rng_add(RNG_MODEL_PARALLEL_NAME, seed + RNG_MODEL_PARALLEL_OFFSET + (unsigned long long)tp_rank);
  return rc ? rc : rc2;
}

/* ---- introspection ----------------------------------------------------- */

int rng_generator_info(curandGenerator_t generator, struct rng_gen_info *out) {
  pthread_mutex_lock(&mu);
  struct gen *g = generator ? find(generator) : NULL;
  if (g && out)
    *out = (struct rng_gen_info){.type = g->type,
                                 .ordering = g->st.ordering,
                                 .seed = g->st.seed,
                                 .offset = g->st.offset,
                                 .position_known = g->st.known,
                                 .replayable = replayable(g),
                                 .stream = g->stream};
  pthread_mutex_unlock(&mu);
  return g ? 0 : CKPT_ENOENT;
}

int rng_live_generators(void) {
  pthread_mutex_lock(&mu);
  int n = ngens;
  pthread_mutex_unlock(&mu);
  return n;
}

void rng_forget_all(void) {
  pthread_mutex_lock(&mu);
  for (int i = 0; i < ngens; i++) free(gens[i]);
  ngens = 0;
  while (snaps) {
    struct snap *s = snaps;
    snaps = s->next;
    snap_free(s);
  }
  snaps_tail = NULL;
  nsnaps = 0;
  free(replay.f.s);
  states_clear(&replay.named);
  memset(&replay, 0, sizeof replay);
  for (int i = 0; i < nforks; i++) free(forks[i].f.s);
  nforks = 0;
  states_clear(&named);
  nseeds = 0;
  pthread_mutex_unlock(&mu);
}
