/* A C "framework" that draws cuRAND numbers inside checkpoint regions and
 * recomputes them with ckpt_region_replay_begin/end.
 *
 *   rng_replay replay       several generators and streams, work in flight:
 *                           recompute bit-identical, the sequence after the
 *                           replay equal to a run without replay
 *   rng_replay inside       generators created inside a region (lazily)
 *   rng_replay destroyed    a generator destroyed before replay: clear error
 *   rng_replay unsupported  MTGP32 / SEEDED generators alongside: left alone
 *   rng_replay tracker      named states: refusals, fork restores the outer state
 *   rng_replay fork_in_region  a fork inside a region replays too
 *   rng_replay rules        the offset rules hooks/rng.h tracks, on DEVICE
 *                           generators, against whatever libcurand.so.10 is
 *                           loaded (the GPU check: real cuRAND; the rules were
 *                           measured on host generators, tests/rng/host_rules.c)
 *   rng_replay dlsym        dlopen("libcurand.so.10") + dlsym hands out the
 *                           preload's wrappers, and a region drawn through them
 *                           replays
 *
 * It uses only curand.h, cuda.h and the libckpt API, found with
 * dlsym(RTLD_DEFAULT); it runs under LD_PRELOAD=libckpt.so (linked with
 * libcurand and libcuda only: the simulated ones in the test suite, the real
 * ones in tests/rng/gpu_check.sh). Scenarios that
 * compare with a run without replay run both in fork()ed children (before
 * any CUDA call) and compare what they wrote to shared memory.
 * Exit 0 = pass; every failure prints one line. */
#define _GNU_SOURCE
#include <cuda.h>
#include <curand.h>
#include <dlfcn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ckpt.h" /* CKPT_E* */

struct ckpt_rng_states;

static struct {
  int (*region_begin)(const char *);
  int (*region_end)(void);
  int (*replay_begin)(int);
  int (*replay_end)(void);
  int (*add)(const char *, unsigned long long);
  int (*fork)(const char *);
  int (*unfork)(void);
  int (*get_states)(struct ckpt_rng_states **);
  int (*set_states)(const struct ckpt_rng_states *);
  void (*states_free)(struct ckpt_rng_states *);
  int (*mp_seed)(unsigned long long, int);
  int (*set_delay)(CUstream, unsigned); /* simdev only: optional */
} ck;

static int failures;
#define FAIL(...)                                 \
  do {                                            \
    fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
    fprintf(stderr, __VA_ARGS__);                 \
    fputc('\n', stderr);                          \
    failures++;                                   \
  } while (0)
#define CHECK(c, ...) \
  do {                \
    if (!(c)) FAIL(__VA_ARGS__); \
  } while (0)
#define CU(x)                                                     \
  do {                                                            \
    CUresult r_ = (x);                                            \
    if (r_ != CUDA_SUCCESS) {                                     \
      fprintf(stderr, "FAIL %s:%d: %s = %d\n", __FILE__, __LINE__, #x, (int)r_); \
      exit(1);                                                    \
    }                                                             \
  } while (0)
#define CR(x)                                                     \
  do {                                                            \
    curandStatus_t r_ = (x);                                      \
    if (r_ != CURAND_STATUS_SUCCESS) {                            \
      fprintf(stderr, "FAIL %s:%d: %s = %d\n", __FILE__, __LINE__, #x, (int)r_); \
      exit(1);                                                    \
    }                                                             \
  } while (0)

static void load(void) {
#define L(f, s)                                                      \
  if (!(*(void **)&ck.f = dlsym(RTLD_DEFAULT, #s))) {                \
    fprintf(stderr, "FAIL: no %s (libckpt not preloaded?)\n", #s);  \
    exit(1);                                                         \
  }
  L(region_begin, ckpt_region_begin);
  L(region_end, ckpt_region_end);
  L(replay_begin, ckpt_region_replay_begin);
  L(replay_end, ckpt_region_replay_end);
  L(add, ckpt_rng_add);
  L(fork, ckpt_rng_fork);
  L(unfork, ckpt_rng_unfork);
  L(get_states, ckpt_rng_get_states);
  L(set_states, ckpt_rng_set_states);
  L(states_free, ckpt_rng_states_free);
  L(mp_seed, ckpt_rng_model_parallel_seed);
#undef L
  *(void **)&ck.set_delay = dlsym(RTLD_DEFAULT, "simdev_stream_set_delay_us");
}

static void context(void) {
  CUcontext c = NULL;
  CU(cuInit(0));
  CU(cuDevicePrimaryCtxRetain(&c, 0));
  CU(cuCtxSetCurrent(c));
}

static CUstream slow_stream(unsigned us) {
  CUstream s;
  CU(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  if (ck.set_delay) ck.set_delay(s, us);
  return s;
}

/* One "layer" of draws: every generate function hooks/rng.h tracks for the
 * generator's type (others would make it not replayable), <= 672 bytes. */
enum { MIX_BYTES = 672, SLOT = 1024 };

static struct {
  curandGenerator_t g;
  curandRngType_t t;
} types_of[64];
static int ntypes;

static curandRngType_t type_of(curandGenerator_t g) {
  for (int i = 0; i < ntypes; i++)
    if (types_of[i].g == g) return types_of[i].t;
  return CURAND_RNG_PSEUDO_XORWOW;
}

static void mix(curandGenerator_t g, char *dev) {
  curandRngType_t t = type_of(g);
  CR(curandGenerateUniform(g, (float *)dev, 64));
  if (t == CURAND_RNG_PSEUDO_PHILOX4_32_10) {
    CR(curandGenerateNormal(g, (float *)(dev + 256), 32, 1.0f, 2.0f));
    CR(curandGenerateLogNormalDouble(g, (double *)(dev + 512), 8, 0.0, 0.5));
  }
  if (t == CURAND_RNG_PSEUDO_PHILOX4_32_10 || t == CURAND_RNG_PSEUDO_MRG32K3A)
    CR(curandGenerateUniformDouble(g, (double *)(dev + 384), 16));
  CR(curandGenerate(g, (unsigned *)(dev + 576), 24));
}

static char *dalloc(size_t bytes) {
  CUdeviceptr p = 0;
  CU(cuMemAlloc_v2(&p, bytes));
  CU(cuMemsetD8_v2(p, 0, bytes));
  return (char *)p;
}

/* Device buffer -> host copy, after the device is idle. */
static void fetch(void *host, const char *dev, size_t bytes) {
  CU(cuCtxSynchronize());
  CU(cuMemcpyDtoH_v2(host, (CUdeviceptr)dev, bytes));
}

static curandGenerator_t gen(curandRngType_t t, unsigned long long seed, CUstream s, curandOrdering_t o) {
  curandGenerator_t g = NULL;
  CR(curandCreateGenerator(&g, t));
  if (ntypes < 64) {
    types_of[ntypes].g = g;
    types_of[ntypes++].t = t == CURAND_RNG_PSEUDO_DEFAULT ? CURAND_RNG_PSEUDO_XORWOW : t;
  }
  CR(curandSetPseudoRandomGeneratorSeed(g, seed));
  if (o) CR(curandSetGeneratorOrdering(g, o));
  if (s) CR(curandSetStream(g, (cudaStream_t)s));
  return g;
}

/* Runs fn(replay, out) in two children (without and with replay) and
 * compares their `out`; fn checks its own recompute. */
typedef void (*scenario_fn)(bool replay, char *out, size_t cap);

static int twice(scenario_fn fn, size_t cap) {
  char *sh[2];
  int bad = 0;
  for (int r = 0; r < 2; r++) {
    sh[r] = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh[r] == MAP_FAILED) return 1;
    memset(sh[r], 0, cap);
    fflush(NULL);
    pid_t p = fork();
    if (p == 0) {
      load();
      context();
      fn(r == 1, sh[r], cap);
      fflush(NULL);
      _exit(failures ? 1 : 0);
    }
    int st = 0;
    waitpid(p, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      fprintf(stderr, "FAIL: the run %s replay failed (status %#x)\n", r ? "with" : "without", st);
      bad = 1;
    }
  }
  if (!bad && memcmp(sh[0], sh[1], cap) != 0) {
    fprintf(stderr, "FAIL: the sequence after the replay differs from a run without replay\n");
    bad = 1;
  }
  if (!bad) {
    bool nonzero = false;
    for (size_t i = 0; i < cap && !nonzero; i++) nonzero = sh[0][i] != 0;
    if (!nonzero) {
      fprintf(stderr, "FAIL: nothing was drawn\n");
      bad = 1;
    }
  }
  return bad;
}

/* ---- replay: 4 generators, 3 streams, 2 regions, no waits until the end. */
enum { NG = 4, NR = 2 };

static void s_replay(bool replay, char *out, size_t cap) {
  CUstream s1 = slow_stream(20000), s2 = slow_stream(5000);
  curandGenerator_t g[NG] = {
      gen(CURAND_RNG_PSEUDO_XORWOW, 1, s1, 0),
      gen(CURAND_RNG_PSEUDO_PHILOX4_32_10, 2, s2, CURAND_ORDERING_PSEUDO_LEGACY),
      gen(CURAND_RNG_PSEUDO_MRG32K3A, 3, s1, CURAND_ORDERING_PSEUDO_BEST),
      gen(CURAND_RNG_PSEUDO_DEFAULT, 4, NULL, 0), /* legacy stream */
  };
  char *fwd = dalloc(NR * NG * SLOT), *re = dalloc(NR * NG * SLOT), *post = dalloc(NG * SLOT);
  int region[NR];
  for (int r = 0; r < NR; r++) { /* forward */
    region[r] = ck.region_begin("layer");
    CHECK(region[r] > 0, "region_begin = %d", region[r]);
    for (int k = 0; k < NG; k++) mix(g[k], fwd + (r * NG + k) * SLOT);
    CHECK(ck.region_end() == region[r], "region_end");
  }
  if (replay)
    for (int r = NR - 1; r >= 0; r--) { /* backward: recompute, newest first */
      int rc = ck.replay_begin(region[r]);
      CHECK(rc == 0, "replay_begin(%d) = %d", region[r], rc);
      for (int k = 0; k < NG; k++) mix(g[k], re + (r * NG + k) * SLOT);
      rc = ck.replay_end();
      CHECK(rc == 0, "replay_end = %d", rc);
    }
  for (int k = 0; k < NG; k++) mix(g[k], post + k * SLOT); /* the next step */
  static char a[NR * NG * SLOT], b[NR * NG * SLOT];
  fetch(a, fwd, sizeof a);
  if (replay) {
    fetch(b, re, sizeof b);
    for (int i = 0; i < NR * NG; i++)
      CHECK(memcmp(a + i * SLOT, b + i * SLOT, MIX_BYTES) == 0, "region %d generator %d: recompute not bit-identical",
            i / NG, i % NG);
  }
  if (cap >= (size_t)NG * SLOT) fetch(out, post, NG * SLOT);
  for (int k = 0; k < NG; k++) CR(curandDestroyGenerator(g[k]));
}

/* ---- inside: a generator created lazily inside the region (create, seed,
 * draw), reused by the recompute without being created again; and one
 * created and destroyed inside the region. */
static curandGenerator_t lazy;

static void layer_inside(char *dev, bool recompute) {
  if (!lazy) {
    lazy = gen(CURAND_RNG_PSEUDO_PHILOX4_32_10, 31337, NULL, 0);
    CR(curandSetGeneratorOffset(lazy, 1000));
  }
  mix(lazy, dev);
  curandGenerator_t tmp = gen(CURAND_RNG_PSEUDO_XORWOW, 5, NULL, 0); /* seeded each time: same numbers */
  mix(tmp, dev + SLOT);
  CR(curandDestroyGenerator(tmp));
  (void)recompute;
}

static void s_inside(bool replay, char *out, size_t cap) {
  curandGenerator_t outer = gen(CURAND_RNG_PSEUDO_MRG32K3A, 8, NULL, 0);
  char *fwd = dalloc(3 * SLOT), *re = dalloc(3 * SLOT), *post = dalloc(2 * SLOT);
  int r = ck.region_begin("inside");
  layer_inside(fwd, false);
  mix(outer, fwd + 2 * SLOT);
  ck.region_end();
  if (replay) {
    int rc = ck.replay_begin(r);
    CHECK(rc == 0, "replay_begin = %d", rc);
    layer_inside(re, true);
    mix(outer, re + 2 * SLOT);
    CHECK(ck.replay_end() == 0, "replay_end");
    static char a[3 * SLOT], b[3 * SLOT];
    fetch(a, fwd, sizeof a);
    fetch(b, re, sizeof b);
    for (int i = 0; i < 3; i++) CHECK(memcmp(a + i * SLOT, b + i * SLOT, MIX_BYTES) == 0, "slot %d differs", i);
  }
  mix(lazy, post);
  mix(outer, post + SLOT);
  if (cap >= 2 * SLOT) fetch(out, post, 2 * SLOT);
}

/* ---- destroyed: recorded at open, destroyed before the replay. */
static void s_destroyed(bool replay, char *out, size_t cap) {
  curandGenerator_t keep = gen(CURAND_RNG_PSEUDO_XORWOW, 1, NULL, 0), gone = gen(CURAND_RNG_PSEUDO_XORWOW, 2, NULL, 0);
  char *d = dalloc(3 * SLOT);
  int r = ck.region_begin("destroyed");
  mix(keep, d);
  mix(gone, d + SLOT);
  ck.region_end();
  CR(curandDestroyGenerator(gone));
  if (replay) {
    int rc = ck.replay_begin(r);
    CHECK(rc == CKPT_ENOENT, "replay_begin with a destroyed generator = %d, want CKPT_ENOENT", rc);
    rc = ck.replay_end();
    CHECK(rc == CKPT_ESTATE, "replay_end after a refused begin = %d, want CKPT_ESTATE", rc);
  }
  mix(keep, d + 2 * SLOT); /* unchanged by the refused replay */
  if (cap >= SLOT) fetch(out, d + 2 * SLOT, SLOT);
}

/* ---- unsupported generators alongside supported ones. */
static void s_unsupported(bool replay, char *out, size_t cap) {
  curandGenerator_t ok = gen(CURAND_RNG_PSEUDO_PHILOX4_32_10, 1, NULL, 0);
  curandGenerator_t mt = gen(CURAND_RNG_PSEUDO_MTGP32, 2, NULL, 0);
  curandGenerator_t sd = gen(CURAND_RNG_PSEUDO_XORWOW, 3, NULL, CURAND_ORDERING_PSEUDO_SEEDED);
  char *d = dalloc(6 * SLOT);
  int r = ck.region_begin("unsupported");
  mix(ok, d);
  mix(mt, d + SLOT);
  mix(sd, d + 2 * SLOT);
  ck.region_end();
  if (replay) {
    int rc = ck.replay_begin(r);
    CHECK(rc == 0, "replay_begin = %d", rc);
    mix(ok, d + 3 * SLOT);
    CHECK(ck.replay_end() == 0, "replay_end");
    static char a[SLOT], b[SLOT];
    fetch(a, d, SLOT);
    fetch(b, d + 3 * SLOT, SLOT);
    CHECK(memcmp(a, b, MIX_BYTES) == 0, "supported generator not replayed");
  }
  mix(ok, d + 3 * SLOT); /* the sequences after: same as without replay */
  mix(mt, d + 4 * SLOT);
  mix(sd, d + 5 * SLOT);
  if (cap >= 3 * SLOT) fetch(out, d + 3 * SLOT, 3 * SLOT);
}

/* ---- fork inside a region: the recompute forks again and must draw the
 * forward's numbers; afterwards the named state goes on as without replay. */
static void s_fork_in_region(bool replay, char *out, size_t cap) {
  curandGenerator_t g = gen(CURAND_RNG_PSEUDO_XORWOW, 10, NULL, 0);
  CHECK(ck.mp_seed(1234, 1) == 0, "model_parallel_seed");
  char *d = dalloc(6 * SLOT);
  int r = ck.region_begin("tp-layer");
  mix(g, d); /* default state */
  CHECK(ck.fork(NULL) == 0, "fork");
  mix(g, d + SLOT); /* model-parallel state */
  CHECK(ck.unfork() == 0, "unfork");
  ck.region_end();
  if (replay) {
    CHECK(ck.replay_begin(r) == 0, "replay_begin");
    mix(g, d + 2 * SLOT);
    CHECK(ck.fork(NULL) == 0, "fork");
    mix(g, d + 3 * SLOT);
    CHECK(ck.unfork() == 0, "unfork");
    CHECK(ck.replay_end() == 0, "replay_end");
    static char a[4 * SLOT];
    fetch(a, d, sizeof a);
    CHECK(memcmp(a, a + 2 * SLOT, MIX_BYTES) == 0, "default-state draws not replayed");
    CHECK(memcmp(a + SLOT, a + 3 * SLOT, MIX_BYTES) == 0, "forked draws not replayed");
  }
  mix(g, d + 4 * SLOT);
  CHECK(ck.fork(NULL) == 0, "fork");
  mix(g, d + 5 * SLOT);
  CHECK(ck.unfork() == 0, "unfork");
  if (cap >= 2 * SLOT) fetch(out, d + 4 * SLOT, 2 * SLOT);
}

/* ---- tracker: refusals and outer-state restore (one process). */
static int s_tracker(void) {
  load();
  context();
  curandGenerator_t g = gen(CURAND_RNG_PSEUDO_PHILOX4_32_10, 77, NULL, 0);
  curandGenerator_t ref = gen(CURAND_RNG_PSEUDO_PHILOX4_32_10, 77, NULL, 0);
  CHECK(ck.add("a", 100) == 0, "add a");
  CHECK(ck.add("a", 101) == CKPT_EINVAL, "duplicate name accepted");
  CHECK(ck.add("b", 100) == CKPT_EINVAL, "duplicate seed accepted");
  CHECK(ck.fork("missing") == CKPT_ENOENT, "fork of an unknown name accepted");
  CHECK(ck.unfork() == CKPT_ESTATE, "unfork without fork accepted");
  char *d = dalloc(4 * SLOT);
  mix(g, d);
  mix(ref, d + SLOT);
  CHECK(ck.fork("a") == 0, "fork a");
  mix(g, d + 2 * SLOT);
  CHECK(ck.unfork() == 0, "unfork");
  mix(g, d + 3 * SLOT); /* outer state: continues g's own sequence */
  mix(ref, d + 2 * SLOT); /* overwrites: ref was forked too but drew nothing */
  static char a[4 * SLOT];
  fetch(a, d, sizeof a);
  CHECK(memcmp(a, a + SLOT, MIX_BYTES) == 0, "same seed, same numbers");
  CHECK(memcmp(a + 3 * SLOT, a + 2 * SLOT, MIX_BYTES) == 0, "fork did not restore the outer state");
  /* get/set states around a fork */
  struct ckpt_rng_states *st = NULL;
  CHECK(ck.get_states(&st) == 0 && st, "get_states");
  CHECK(ck.fork("a") == 0, "fork a");
  mix(g, d);
  CHECK(ck.unfork() == 0, "unfork");
  CHECK(ck.set_states(st) == 0, "set_states");
  CHECK(ck.fork("a") == 0, "fork a");
  mix(g, d + SLOT);
  CHECK(ck.unfork() == 0, "unfork");
  fetch(a, d, 2 * SLOT);
  CHECK(memcmp(a, a + SLOT, MIX_BYTES) == 0, "set_states did not bring the named state back");
  ck.states_free(st);
  return failures != 0;
}

/* ---- rules: each generate function the tracker models moves the position as
 * hooks/rng.h says, checked against the loaded cuRAND with
 * curandSetGeneratorOffset only; cells it does not model are skipped. */
static int s_rules(void) {
  load();
  context();
  const curandRngType_t types[] = {CURAND_RNG_PSEUDO_XORWOW, CURAND_RNG_PSEUDO_MRG32K3A,
                                   CURAND_RNG_PSEUDO_PHILOX4_32_10};
  const curandOrdering_t ords[] = {CURAND_ORDERING_PSEUDO_DEFAULT, CURAND_ORDERING_PSEUDO_LEGACY};
  char *d = dalloc(64 * 1024);
  unsigned *x = (unsigned *)dalloc(64 * 4), *y = (unsigned *)dalloc(64 * 4);
  for (int t = 0; t < 3; t++)
    for (int o = 0; o < 2; o++)
      for (int f = 0; f < 7; f++) {
        curandGenerator_t a = gen(types[t], 99, NULL, ords[o]), b = gen(types[t], 99, NULL, ords[o]);
        size_t n = 4096; /* large enough to span several threads' shares */
        bool philox = types[t] == CURAND_RNG_PSEUDO_PHILOX4_32_10, mrg = types[t] == CURAND_RNG_PSEUDO_MRG32K3A;
        unsigned long long want = 0;
        bool known = true;
        switch (f) {
        case 0: CR(curandGenerate(a, (unsigned *)d, n)); want = n; break;
        case 1: CR(curandGenerateUniform(a, (float *)d, n)); want = n; break;
        case 2: CR(curandGenerateNormal(a, (float *)d, n, 0, 1)); want = n; known = philox; break;
        case 3: CR(curandGenerateLogNormal(a, (float *)d, n, 0, 1)); want = n; known = philox; break;
        case 4: CR(curandGenerateUniformDouble(a, (double *)d, n)); want = n; known = philox || mrg; break;
        case 5: CR(curandGenerateNormalDouble(a, (double *)d, n, 0, 1)); want = n; known = philox; break;
        case 6: /* reseeding keeps the position (PHILOX: only before drawing) */
          CR(curandSetGeneratorOffset(a, 77));
          if (!philox) CR(curandGenerate(a, (unsigned *)d, n));
          CR(curandSetPseudoRandomGeneratorSeed(a, 99));
          want = philox ? 77 : 77 + n;
          break;
        }
        if (!known) { /* not tracked: nothing to check */
          CR(curandDestroyGenerator(a));
          CR(curandDestroyGenerator(b));
          continue;
        }
        CR(curandGenerate(a, x, 64));
        CR(curandSetGeneratorOffset(b, want));
        CR(curandGenerate(b, y, 64));
        static unsigned hx[64], hy[64];
        fetch(hx, (char *)x, sizeof hx);
        fetch(hy, (char *)y, sizeof hy);
        CHECK(memcmp(hx, hy, sizeof hx) == 0, "type %d ordering %d function %d: position is not %llu", types[t],
              ords[o], f, want);
        CR(curandDestroyGenerator(a));
        CR(curandDestroyGenerator(b));
      }
  return failures != 0;
}

/* ---- dlsym: a program that loads cuRAND itself gets the wrappers. */
static int s_dlsym(void) {
  void *h = dlopen("libcurand.so.10", RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    FAIL("dlopen(libcurand.so.10): %s", dlerror());
    return 1;
  }
  load();
  context();
  curandStatus_t (*create)(curandGenerator_t *, curandRngType_t) = (curandStatus_t(*)(curandGenerator_t *, curandRngType_t))dlsym(h, "curandCreateGenerator");
  curandStatus_t (*uniform)(curandGenerator_t, float *, size_t) = (curandStatus_t(*)(curandGenerator_t, float *, size_t))dlsym(h, "curandGenerateUniform");
  Dl_info info;
  CHECK(create && uniform, "dlsym found no cuRAND function");
  if (!create || !uniform) return 1;
  CHECK(dladdr((void *)uniform, &info) && info.dli_fname && strstr(info.dli_fname, "libckpt"),
        "dlsym(libcurand, curandGenerateUniform) is not libckpt's wrapper (%s)", info.dli_fname);
  CHECK((void *)uniform == dlsym(RTLD_DEFAULT, "curandGenerateUniform"), "two different wrappers");
  curandGenerator_t g = NULL;
  CR(create(&g, CURAND_RNG_PSEUDO_PHILOX4_32_10));
  float *fwd = (float *)dalloc(256 * 4), *re = (float *)dalloc(256 * 4);
  int r = ck.region_begin("dlsym");
  CR(uniform(g, fwd, 256));
  CHECK(ck.region_end() == r, "region_end");
  CHECK(ck.replay_begin(r) == 0, "replay_begin: a generator created through dlsym is not tracked");
  CR(uniform(g, re, 256));
  CHECK(ck.replay_end() == 0, "replay_end");
  static float a[256], b[256];
  fetch(a, (char *)fwd, sizeof a);
  fetch(b, (char *)re, sizeof b);
  CHECK(memcmp(a, b, sizeof a) == 0, "draws through dlsym'd wrappers not replayed");
  CR(curandDestroyGenerator(g));
  return failures != 0;
}

int main(int argc, char **argv) {
  setvbuf(stderr, NULL, _IONBF, 0);
  const char *what = argc > 1 ? argv[1] : "";
  int rc;
  if (!strcmp(what, "replay")) rc = twice(s_replay, NG * SLOT);
  else if (!strcmp(what, "inside")) rc = twice(s_inside, 2 * SLOT);
  else if (!strcmp(what, "destroyed")) rc = twice(s_destroyed, SLOT);
  else if (!strcmp(what, "unsupported")) rc = twice(s_unsupported, 3 * SLOT);
  else if (!strcmp(what, "fork_in_region")) rc = twice(s_fork_in_region, 2 * SLOT);
  else if (!strcmp(what, "tracker")) rc = s_tracker();
  else if (!strcmp(what, "rules")) rc = s_rules();
  else if (!strcmp(what, "dlsym")) rc = s_dlsym();
  else {
    fprintf(stderr, "usage: %s replay|inside|destroyed|unsupported|fork_in_region|tracker|rules|dlsym\n", argv[0]);
    return 2;
  }
  printf("%s: %s\n", what, rc ? "FAIL" : "ok");
  return rc ? 1 : 0;
}
