/* The offset rules of hooks/rng.h and the tracker, checked on cuRAND HOST
 * generators (curandCreateGeneratorHost). cuRAND documents that host and
 * device generators give the same sequences and that every other call works
 * identically [Guide, Host API Overview], and the real libcurand runs host
 * generators without a GPU, so this program checks the rules against the
 * REAL cuRAND on a CPU-only machine:
 *
 *   LD_LIBRARY_PATH=/usr/local/cuda/lib64 build/tests/rng/rng_host_rules
 *
 * and against the test double in the test suite. Needs no CUDA driver. The
 * preload's sources are linked in (tests/rng/meson.build): the curand*
 * wrappers and ckpt_* it calls are libckpt's own, not a stand-in.
 *   rules    every generate function moves the position as rng.h says, for
 *            XORWOW, MRG32K3A, PHILOX4_32_10 x orderings DEFAULT, BEST, LEGACY;
 *            reseeding keeps the position; the tracker agrees
 *   replay   a region replayed bit-identically, the sequence afterwards equal
 *            to the one without replay; fork restores the outer state
 * Exit 0 = pass. */
#define _GNU_SOURCE
#include <curand.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"
#include "rng.h"

static int failures;
#define CHECK(c, ...)                                         \
  do {                                                        \
    if (!(c)) {                                               \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);    \
      fprintf(stderr, __VA_ARGS__);                           \
      fputc('\n', stderr);                                    \
      failures++;                                             \
    }                                                         \
  } while (0)
#define CR(x)                                                                    \
  do {                                                                           \
    curandStatus_t r_ = (x);                                                     \
    if (r_ != CURAND_STATUS_SUCCESS) {                                           \
      fprintf(stderr, "FAIL %s:%d: %s = %d\n", __FILE__, __LINE__, #x, (int)r_); \
      exit(1);                                                                   \
    }                                                                            \
  } while (0)

static curandGenerator_t hgen(curandRngType_t t, unsigned long long seed, curandOrdering_t o) {
  curandGenerator_t g = NULL;
  CR(curandCreateGeneratorHost(&g, t));
  CR(curandSetPseudoRandomGeneratorSeed(g, seed));
  CR(curandSetGeneratorOrdering(g, o));
  return g;
}

static const curandRngType_t types[] = {CURAND_RNG_PSEUDO_XORWOW, CURAND_RNG_PSEUDO_MRG32K3A,
                                        CURAND_RNG_PSEUDO_PHILOX4_32_10};
static const curandOrdering_t ords[] = {CURAND_ORDERING_PSEUDO_DEFAULT, CURAND_ORDERING_PSEUDO_BEST,
                                        CURAND_ORDERING_PSEUDO_LEGACY};

static union {
  unsigned u[1 << 16];
  float f[1 << 16];
  double d[1 << 15];
} buf;

/* The rule of hooks/rng.h: results consumed by one call, -1 = not known. */
static long long rule(curandRngType_t t, int f, size_t n) {
  long long ln = (long long)n;
  bool philox = t == CURAND_RNG_PSEUDO_PHILOX4_32_10, mrg = t == CURAND_RNG_PSEUDO_MRG32K3A;
  switch (f) {
  case 0: case 1: return ln;                                   /* bits, uniform */
  case 2: case 3: case 5: case 6: return philox ? ln : -1;    /* normals */
  default: return philox || mrg ? ln : -1;                     /* uniform double */
  }
}

/* One call of function f with n outputs. */
static void call(curandGenerator_t g, int f, size_t n) {
  switch (f) {
  case 0: CR(curandGenerate(g, buf.u, n)); break;
  case 1: CR(curandGenerateUniform(g, buf.f, n)); break;
  case 2: CR(curandGenerateNormal(g, buf.f, n, 0, 1)); break;
  case 3: CR(curandGenerateLogNormal(g, buf.f, n, 0, 1)); break;
  case 4: CR(curandGenerateUniformDouble(g, buf.d, n)); break;
  case 5: CR(curandGenerateNormalDouble(g, buf.d, n, 0, 1)); break;
  default: CR(curandGenerateLogNormalDouble(g, buf.d, n, 0, 1)); break;
  }
}
static const char *fname[] = {"Generate", "Uniform", "Normal", "LogNormal", "UniformDouble", "NormalDouble",
                              "LogNormalDouble"};

/* g's next calls (function f, then 64 bits) == those of a fresh generator
 * put at `pos`: the position is the whole state. */
static bool at(curandGenerator_t g, curandRngType_t t, unsigned long long seed, curandOrdering_t o, int f,
               unsigned long long pos) {
  static unsigned char a[4096], b[4096];
  curandGenerator_t r = hgen(t, seed, o);
  CR(curandSetGeneratorOffset(r, pos));
  call(g, f, 64);
  memcpy(a, &buf, 512);
  call(r, f, 64);
  memcpy(b, &buf, 512);
  CR(curandGenerate(g, (unsigned *)(a + 512), 64));
  CR(curandGenerate(r, (unsigned *)(b + 512), 64));
  CR(curandDestroyGenerator(r));
  return memcmp(a, b, 768) == 0;
}

static int rules(void) {
  const size_t sizes[] = {2, 4096, 10002};
  for (int t = 0; t < 3; t++)
    for (int o = 0; o < 3; o++)
      for (int f = 0; f < 7; f++)
        for (int k = 0; k < 3; k++) {
          curandGenerator_t g = hgen(types[t], 99 + k, ords[o]);
          CR(curandSetGeneratorOffset(g, 1000 * k));
          call(g, f, sizes[k]);
          long long c = rule(types[t], f, sizes[k]);
          struct rng_gen_info i;
          CHECK(rng_generator_info(g, &i) == 0, "not tracked");
          if (c < 0) {
            CHECK(!i.position_known && !i.replayable, "type %d %s: an unknown rule was guessed", types[t], fname[f]);
          } else {
            unsigned long long want = 1000 * k + (unsigned long long)c;
            CHECK(i.position_known && i.offset == want && i.replayable, "tracker disagrees with the rule");
            CHECK(at(g, types[t], 99 + k, ords[o], f, want), "type %d ordering %d %s(n=%zu): position is not %llu",
                  types[t], ords[o], fname[f], sizes[k], want);
          }
          CR(curandDestroyGenerator(g));
        }
  for (int t = 0; t < 3; t++) { /* reseeding keeps the position (PHILOX: only before drawing) */
    curandGenerator_t g = hgen(types[t], 5, CURAND_ORDERING_PSEUDO_DEFAULT);
    CR(curandSetGeneratorOffset(g, 300));
    if (types[t] != CURAND_RNG_PSEUDO_PHILOX4_32_10) CR(curandGenerate(g, buf.u, 5000));
    CR(curandSetPseudoRandomGeneratorSeed(g, 6));
    struct rng_gen_info i;
    CHECK(rng_generator_info(g, &i) == 0 && i.position_known, "reseed lost the position");
    CHECK(at(g, types[t], 6, CURAND_ORDERING_PSEUDO_DEFAULT, 0, i.offset), "type %d: reseeding moved the position",
          types[t]);
    CR(curandDestroyGenerator(g));
  }
  for (int t = 0; t < 2; t++) { /* an ordering change keeps the position (not PHILOX) */
    curandGenerator_t g = hgen(types[t], 5, CURAND_ORDERING_PSEUDO_DEFAULT);
    CR(curandSetGeneratorOffset(g, 10));
    CR(curandGenerate(g, buf.u, 4000));
    CR(curandSetGeneratorOrdering(g, CURAND_ORDERING_PSEUDO_LEGACY));
    struct rng_gen_info i;
    CHECK(rng_generator_info(g, &i) == 0 && i.position_known && i.offset == 4010, "ordering change lost it");
    CHECK(at(g, types[t], 5, CURAND_ORDERING_PSEUDO_LEGACY, 0, 4010), "type %d: ordering change moved it", types[t]);
    CR(curandDestroyGenerator(g));
  }
  curandGenerator_t p = hgen(CURAND_RNG_PSEUDO_PHILOX4_32_10, 5, CURAND_ORDERING_PSEUDO_DEFAULT);
  CR(curandGenerate(p, buf.u, 5000));
  CR(curandSetPseudoRandomGeneratorSeed(p, 6));
  struct rng_gen_info i;
  CHECK(rng_generator_info(p, &i) == 0 && !i.position_known, "PHILOX reseeded after drawing: position guessed");
  CR(curandDestroyGenerator(p));
  return failures != 0;
}

/* A "layer": two tracked calls per type (hooks/rng.h's rules). */
static void layer(curandGenerator_t g, curandRngType_t t, float *a, double *b, size_t n) {
  if (t == CURAND_RNG_PSEUDO_PHILOX4_32_10) CR(curandGenerateNormal(g, a, n, 0, 1));
  else CR(curandGenerateUniform(g, a, n));
  if (t == CURAND_RNG_PSEUDO_XORWOW) CR(curandGenerate(g, (unsigned *)b, n / 2));
  else CR(curandGenerateUniformDouble(g, b, n / 4));
}

static int replay(void) {
  enum { N = 4096 };
  static float fwd[N], re[N], post[N], want[N];
  static double fd[N], rd[N], scratch[N];
  curandGenerator_t g[3];
  for (int t = 0; t < 3; t++) g[t] = hgen(types[t], 7 + t, ords[t]);
  for (int t = 0; t < 3; t++) {
    int r = ckpt_region_begin("layer");
    layer(g[t], types[t], fwd, fd, N);
    ckpt_region_end();
    CHECK(ckpt_region_replay_begin(r) == 0, "replay_begin");
    layer(g[t], types[t], re, rd, N);
    CHECK(ckpt_region_replay_end() == 0, "replay_end");
    CHECK(memcmp(fwd, re, sizeof fwd) == 0 && memcmp(fd, rd, sizeof fd) == 0, "type %d: recompute not bit-identical",
          types[t]);
    CR(curandGenerateUniform(g[t], post, N));
    curandGenerator_t ref = hgen(types[t], 7 + t, ords[t]);
    layer(ref, types[t], want, scratch, N);
    CR(curandGenerateUniform(ref, want, N));
    CHECK(memcmp(post, want, sizeof post) == 0, "type %d: the sequence after the replay changed", types[t]);
    CR(curandDestroyGenerator(ref));
  }
  /* fork: the outer sequence continues, the named one is its own */
  CHECK(ckpt_rng_add("tp", 4242) == 0, "add");
  curandGenerator_t ref = hgen(types[2], 9, ords[2]);
  CR(curandGenerate(ref, buf.u, 100));
  CHECK(ckpt_rng_fork("tp") == 0, "fork");
  CR(curandGenerate(g[2], (unsigned *)re, 100));
  CHECK(ckpt_rng_unfork() == 0, "unfork");
  curandGenerator_t named = hgen(types[2], 4242, ords[2]);
  CR(curandGenerate(named, (unsigned *)want, 100));
  CHECK(memcmp(re, want, 400) == 0, "forked draws are not the named state's");
  return failures != 0;
}

int main(int argc, char **argv) {
  const char *what = argc > 1 ? argv[1] : "rules";
  int rc = !strcmp(what, "rules") ? rules() : !strcmp(what, "replay") ? replay() : 2;
  int v = 0;
  curandGetVersion(&v);
  printf("%s against cuRAND %d: %s\n", what, v, rc ? "FAIL" : "ok");
  return rc;
}
