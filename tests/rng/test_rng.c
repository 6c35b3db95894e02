/* Unit tests of hooks/rng.c: tracking rules, replay, named states. The module
 * is linked directly; the hooks are called as the preload's wrappers will
 * call them, and the module reaches the cuRAND double through its own
 * dlopen("libcurand.so.10") (LD_LIBRARY_PATH = the simdev build dir). */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <dlfcn.h>
#include <cuda.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt.h"
#include "log.h"
#include "rng.h"
#include "simdev.h"

#define CK(x) cr_assert_eq((x), CUDA_SUCCESS, "%s", #x)
#define RK(x) cr_assert_eq((x), CURAND_STATUS_SUCCESS, "%s", #x)

static FILE *logf_;

static void setup(void) {
  CUcontext c = NULL;
  CK(cuInit(0));
  CK(cuDevicePrimaryCtxRetain(&c, 0));
  CK(cuCtxSetCurrent(c));
  logf_ = tmpfile();
  cr_assert_not_null(logf_);
  ckpt_log_configure(CKPT_LOG_WARN, NULL);
  ckpt_log_set_fd(fileno(logf_));
}

/* Everything logged so far (static buffer). */
static const char *logged(void) {
  static char buf[16384];
  fflush(logf_);
  size_t n = (size_t)pread(fileno(logf_), buf, sizeof buf - 1, 0);
  buf[n < sizeof buf ? n : 0] = 0;
  return buf;
}

static int count(const char *hay, const char *needle) {
  int n = 0;
  for (const char *p = hay; (p = strstr(p, needle)); p++) n++;
  return n;
}

TestSuite(rng, .init = setup, .timeout = 30);

static curandGenerator_t hgen(curandRngType_t t, unsigned long long seed) {
  curandGenerator_t g = NULL;
  RK(rng_hook_create(&g, t));
  RK(rng_hook_set_seed(g, seed));
  return g;
}

static unsigned *dalloc(size_t words) {
  CUdeviceptr p = 0;
  CK(cuMemAlloc_v2(&p, words * 4 + 16));
  return (unsigned *)p;
}

/* n 32-bit results drawn through the hook, waited for, copied. */
static unsigned *draw(curandGenerator_t g, size_t n) {
  unsigned *d = dalloc(n), *h = malloc(n * 4);
  RK(rng_hook_generate(g, d, n));
  CK(cuCtxSynchronize());
  memcpy(h, d, n * 4);
  CK(cuMemFree_v2((CUdeviceptr)d));
  return h;
}

static struct rng_gen_info info(curandGenerator_t g) {
  struct rng_gen_info i;
  cr_assert_eq(rng_generator_info(g, &i), 0);
  return i;
}

/* The tracked position is the real one: a fresh generator put at (seed,
 * tracked offset, ordering) draws what `g` draws next. */
static void expect_position_true(curandGenerator_t g, curandRngType_t t) {
  struct rng_gen_info i = info(g);
  cr_assert(i.position_known);
  curandGenerator_t r = hgen(t, i.seed);
  RK(rng_hook_set_ordering(r, i.ordering));
  RK(rng_hook_set_offset(r, i.offset));
  unsigned *a = draw(g, 16), *b = draw(r, 16);
  cr_expect_eq(memcmp(a, b, 64), 0, "tracked offset %llu is not the generator's position", i.offset);
  free(a);
  free(b);
  RK(rng_hook_destroy(r));
}

/* The rules of rng.h: Generate and Uniform n everywhere; UniformDouble n
 * on PHILOX and MRG32K3A; normals n on PHILOX; the rest is not guessed. */
Test(rng, offset_rules_per_function_and_type) {
  const curandRngType_t types[] = {CURAND_RNG_PSEUDO_XORWOW, CURAND_RNG_PSEUDO_MRG32K3A,
                                   CURAND_RNG_PSEUDO_PHILOX4_32_10};
  for (int k = 0; k < 3; k++) {
    bool philox = types[k] == CURAND_RNG_PSEUDO_PHILOX4_32_10, mrg = types[k] == CURAND_RNG_PSEUDO_MRG32K3A;
    curandGenerator_t g = hgen(types[k], 100 + k);
    unsigned long long want = 0;
    unsigned *d = dalloc(64);
    RK(rng_hook_generate(g, d, 10)); want += 10;
    RK(rng_hook_generate_uniform(g, (float *)d, 6)); want += 6;
    if (philox || mrg) {
      RK(rng_hook_generate_uniform_double(g, (double *)d, 5)); want += 5;
    }
    if (philox) {
      RK(rng_hook_generate_normal(g, (float *)d, 4, 0, 1)); want += 4;
      RK(rng_hook_generate_normal_double(g, (double *)d, 2, 0, 1)); want += 2;
      RK(rng_hook_generate_log_normal(g, (float *)d, 2, 0, 1)); want += 2;
      RK(rng_hook_generate_log_normal_double(g, (double *)d, 4, 0, 1)); want += 4;
    }
    /* Refused calls do not move it. */
    cr_expect_eq(rng_hook_generate_normal(g, (float *)d, 3, 0, 1), CURAND_STATUS_LENGTH_NOT_MULTIPLE);
    cr_expect_eq(rng_hook_generate(g, (unsigned *)((char *)d + 1), 3), CURAND_STATUS_LAUNCH_FAILURE);
    RK(rng_hook_generate(g, d, 0));
    cr_expect_eq(info(g).offset, want, "type %d: tracked %llu, want %llu", types[k], info(g).offset, want);
    cr_expect(info(g).replayable);
    CK(cuCtxSynchronize());
    expect_position_true(g, types[k]);
    /* What is not known is not guessed. */
    if (!philox) {
      RK(rng_hook_generate_normal(g, (float *)d, 4, 0, 1));
      cr_expect_not(info(g).position_known, "type %d: a normal call was guessed", types[k]);
      RK(rng_hook_set_offset(g, 50));
    }
    if (!philox && !mrg) {
      RK(rng_hook_generate_uniform_double(g, (double *)d, 4));
      cr_expect_not(info(g).position_known, "type %d: a double call was guessed", types[k]);
    }
    RK(rng_hook_set_offset(g, 777));
    cr_expect_eq(info(g).offset, 777);
    cr_expect(info(g).replayable);
    expect_position_true(g, types[k]);
    RK(rng_hook_destroy(g));
  }
  cr_expect_eq(rng_live_generators(), 0);
}

/* PHILOX reseeded after drawing re-derives its position (measured): not guessed. */
Test(rng, philox_reseed_after_drawing_is_not_guessed) {
  curandGenerator_t g = hgen(CURAND_RNG_PSEUDO_PHILOX4_32_10, 1);
  RK(rng_hook_set_offset(g, 40));
  RK(rng_hook_set_seed(g, 2)); /* nothing drawn since the offset: kept */
  cr_expect(info(g).position_known);
  expect_position_true(g, CURAND_RNG_PSEUDO_PHILOX4_32_10); /* draws 16 */
  RK(rng_hook_set_seed(g, 3));
  cr_expect_not(info(g).position_known);
  RK(rng_hook_set_offset(g, 8));
  free(draw(g, 8));
  RK(rng_hook_set_ordering(g, CURAND_ORDERING_PSEUDO_LEGACY)); /* the same for an ordering change */
  cr_expect_not(info(g).position_known);
  /* XORWOW and MRG32K3A keep it */
  curandGenerator_t x = hgen(CURAND_RNG_PSEUDO_MRG32K3A, 1);
  free(draw(x, 8));
  RK(rng_hook_set_ordering(x, CURAND_ORDERING_PSEUDO_LEGACY));
  cr_expect(info(x).position_known);
  expect_position_true(x, CURAND_RNG_PSEUDO_MRG32K3A);
}

Test(rng, default_type_seed_keeps_offset) {
  curandGenerator_t g = NULL;
  RK(rng_hook_create(&g, CURAND_RNG_PSEUDO_DEFAULT));
  cr_expect_eq(info(g).type, CURAND_RNG_PSEUDO_XORWOW);
  cr_expect_eq(info(g).seed, 0);
  cr_expect_eq(info(g).ordering, CURAND_ORDERING_PSEUDO_DEFAULT);
  free(draw(g, 40));
  RK(rng_hook_set_seed(g, 5));
  cr_expect_eq(info(g).offset, 40);
  cr_expect_eq(info(g).seed, 5);
  expect_position_true(g, CURAND_RNG_PSEUDO_XORWOW);
  CUstream s;
  CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  RK(rng_hook_set_stream(g, (cudaStream_t)s));
  cr_expect_eq(info(g).stream, (cudaStream_t)s);
  /* A failed call changes nothing in the tracker. */
  cr_expect_eq(rng_hook_set_ordering(g, (curandOrdering_t)999), CURAND_STATUS_OUT_OF_RANGE);
  cr_expect_eq(info(g).ordering, CURAND_ORDERING_PSEUDO_DEFAULT);
  cr_expect_eq(rng_hook_destroy((curandGenerator_t)0x1234), CURAND_STATUS_NOT_INITIALIZED);
}

Test(rng, poisson_makes_position_unknown_until_set_offset) {
  curandGenerator_t g = hgen(CURAND_RNG_PSEUDO_PHILOX4_32_10, 9);
  unsigned *d = dalloc(16);
  RK(rng_hook_generate_poisson(g, d, 8, 2.5));
  cr_expect_not(info(g).position_known);
  cr_expect_not(info(g).replayable);
  rng_region_opened(1);
  rng_region_opened(2);
  cr_expect_eq(count(logged(), "not replayable"), 1, "warned once: %s", logged());
  cr_expect_eq(count(logged(), "cuRAND does not document"), 1);
  /* Skipped by the replay, not an error. */
  cr_expect_eq(rng_replay_begin(1), 0);
  cr_expect_eq(rng_replay_end(), 0);
  RK(rng_hook_set_offset(g, 64));
  cr_expect(info(g).replayable);
  expect_position_true(g, CURAND_RNG_PSEUDO_PHILOX4_32_10);
  rng_region_retired(1);
  rng_region_retired(2);
}

Test(rng, unsupported_types_and_orderings_never_replayed) {
  curandGenerator_t mt = hgen(CURAND_RNG_PSEUDO_MTGP32, 1), q = NULL;
  RK(rng_hook_create(&q, CURAND_RNG_QUASI_SOBOL32));
  curandGenerator_t seeded = hgen(CURAND_RNG_PSEUDO_XORWOW, 2);
  RK(rng_hook_set_ordering(seeded, CURAND_ORDERING_PSEUDO_SEEDED));
  curandGenerator_t ok = hgen(CURAND_RNG_PSEUDO_XORWOW, 3);
  cr_expect_not(info(mt).replayable);
  cr_expect_not(info(q).replayable);
  cr_expect_not(info(seeded).replayable);
  cr_expect(info(ok).replayable);
  rng_region_opened(7);
  unsigned *a = draw(seeded, 8), *b = draw(ok, 8);
  free(draw(mt, 8));
  cr_assert_eq(rng_replay_begin(7), 0);
  cr_expect_eq(info(seeded).offset, 8, "an unsupported generator was reset");
  cr_expect_eq(info(ok).offset, 0);
  unsigned *b2 = draw(ok, 8);
  cr_expect_eq(memcmp(b, b2, 32), 0);
  cr_assert_eq(rng_replay_end(), 0);
  cr_expect_eq(info(ok).offset, 8);
  const char *l = logged();
  cr_expect_eq(count(l, "MTGP32) is not replayable"), 1, "%s", l);
  cr_expect_eq(count(l, "quasirandom) is not replayable"), 1, "%s", l);
  cr_expect_eq(count(l, "ordering 102) is not replayable"), 1, "%s", l);
  free(a);
  free(b);
  free(b2);
}

Test(rng, replay_draws_again_then_continues) {
  curandGenerator_t g = hgen(CURAND_RNG_PSEUDO_XORWOW, 42);
  free(draw(g, 100));
  rng_region_opened(3);
  unsigned *fwd = draw(g, 64);
  rng_region_closed(3);
  unsigned *after1 = draw(g, 32);
  cr_assert_eq(rng_replay_begin(3), 0);
  cr_expect_eq(info(g).offset, 100);
  unsigned *re = draw(g, 64);
  cr_expect_eq(memcmp(fwd, re, 64 * 4), 0, "recompute drew other numbers");
  cr_assert_eq(rng_replay_end(), 0);
  cr_expect_eq(info(g).offset, 196);
  unsigned *after2 = draw(g, 32);
  /* What a run without replay draws after `after1`. */
  curandGenerator_t ref = hgen(CURAND_RNG_PSEUDO_XORWOW, 42);
  RK(rng_hook_set_offset(ref, 196));
  unsigned *want = draw(ref, 32);
  cr_expect_eq(memcmp(after2, want, 32 * 4), 0, "the sequence after the replay changed");
  cr_expect_neq(memcmp(after1, after2, 32 * 4), 0);
  /* A region can be replayed again while it is not retired. */
  cr_assert_eq(rng_replay_begin(3), 0);
  unsigned *re2 = draw(g, 64);
  cr_expect_eq(memcmp(fwd, re2, 64 * 4), 0);
  cr_assert_eq(rng_replay_end(), 0);
  free(fwd), free(after1), free(re), free(after2), free(want), free(re2);
}

Test(rng, replay_errors) {
  curandGenerator_t g = hgen(CURAND_RNG_PSEUDO_PHILOX4_32_10, 1), gone = hgen(CURAND_RNG_PSEUDO_MRG32K3A, 2);
  cr_expect_eq(rng_replay_end(), CKPT_ESTATE);
  cr_expect_eq(rng_replay_begin(99), CKPT_ENOENT);
  rng_region_opened(4);
  free(draw(g, 10));
  free(draw(gone, 10));
  cr_assert_eq(rng_replay_begin(4), 0);
  cr_expect_eq(rng_replay_begin(4), CKPT_ESTATE);
  cr_assert_eq(rng_replay_end(), 0);
  RK(rng_hook_destroy(gone));
  cr_expect_eq(rng_replay_begin(4), CKPT_ENOENT);
  cr_expect_eq(count(logged(), "was destroyed"), 1, "%s", logged());
  cr_expect_eq(info(g).offset, 10, "all or nothing: g was reset although the replay failed");
  cr_expect_eq(rng_replay_end(), CKPT_ESTATE);
  rng_region_retired(4);
  cr_expect_eq(rng_replay_begin(4), CKPT_ENOENT);
  /* A handle reused by a new generator is not the recorded one. */
  rng_region_opened(5);
  free(draw(g, 4));
  cr_assert_eq(rng_replay_begin(5), 0);
  cr_assert_eq(rng_replay_end(), 0);
}

Test(rng, generator_created_inside_restarts_from_creation_state) {
  curandGenerator_t outer = hgen(CURAND_RNG_PSEUDO_XORWOW, 1);
  rng_region_opened(6);
  curandGenerator_t in = hgen(CURAND_RNG_PSEUDO_PHILOX4_32_10, 77); /* create-if-missing, seed, draw */
  RK(rng_hook_set_offset(in, 5));
  unsigned *fwd = draw(in, 48);
  free(draw(outer, 8));
  rng_region_closed(6);
  curandGenerator_t later = hgen(CURAND_RNG_PSEUDO_XORWOW, 2);
  free(draw(later, 8));
  free(draw(in, 8));
  cr_assert_eq(rng_replay_begin(6), 0);
  cr_expect_eq(info(in).offset, 5);
  cr_expect_eq(info(later).offset, 8, "a generator created after the region closed was reset");
  unsigned *re = draw(in, 48);
  cr_expect_eq(memcmp(fwd, re, 48 * 4), 0);
  cr_assert_eq(rng_replay_end(), 0);
  cr_expect_eq(info(in).offset, 5 + 48 + 8);
  free(fwd), free(re);
}

Test(rng, replay_restores_the_ordering) {
  curandGenerator_t g = hgen(CURAND_RNG_PSEUDO_MRG32K3A, 3);
  RK(rng_hook_set_ordering(g, CURAND_ORDERING_PSEUDO_LEGACY));
  rng_region_opened(8);
  unsigned *fwd = draw(g, 16);
  RK(rng_hook_set_ordering(g, CURAND_ORDERING_PSEUDO_DEFAULT));
  cr_assert_eq(rng_replay_begin(8), 0);
  cr_expect_eq(info(g).ordering, CURAND_ORDERING_PSEUDO_LEGACY);
  unsigned *re = draw(g, 16);
  cr_expect_eq(memcmp(fwd, re, 64), 0);
  cr_assert_eq(rng_replay_end(), 0);
  cr_expect_eq(info(g).ordering, CURAND_ORDERING_PSEUDO_DEFAULT);
  free(fwd), free(re);
}

/* Replay is correct for work already enqueued: the generation queued before
 * rng_replay_begin keeps the state it was called with. */
Test(rng, replay_with_work_in_flight) {
  CUstream s;
  CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  cr_assert_eq(simdev_stream_set_delay_us(s, 50000), 0);
  curandGenerator_t g = hgen(CURAND_RNG_PSEUDO_PHILOX4_32_10, 5);
  RK(rng_hook_set_stream(g, (cudaStream_t)s));
  unsigned *d1 = dalloc(128), *d2 = dalloc(128), *d3 = dalloc(128);
  rng_region_opened(9);
  RK(rng_hook_generate(g, d1, 128));
  cr_assert_eq(rng_replay_begin(9), 0); /* d1 not written yet */
  RK(rng_hook_generate(g, d2, 128));
  cr_assert_eq(rng_replay_end(), 0);
  RK(rng_hook_generate(g, d3, 128));
  CK(cuStreamSynchronize(s));
  cr_expect_eq(memcmp(d1, d2, 512), 0);
  curandGenerator_t ref = hgen(CURAND_RNG_PSEUDO_PHILOX4_32_10, 5);
  RK(rng_hook_set_offset(ref, 128));
  unsigned *want = draw(ref, 128);
  cr_expect_eq(memcmp(d3, want, 512), 0);
  free(want);
}

Test(rng, tracker_errors) {
  cr_expect_eq(rng_add("a", 1), 0);
  cr_expect_eq(rng_add("a", 2), CKPT_EINVAL);
  cr_expect(strstr(logged(), "'a': it already exists"), "%s", logged());
  cr_expect_eq(rng_add("b", 1), CKPT_EINVAL);
  cr_expect(strstr(logged(), "seed 1 already exists"), "%s", logged());
  cr_expect_eq(rng_add("b", 2), 0, "a refused add must not spend the name or seed");
  cr_expect_eq(rng_fork("nope"), CKPT_ENOENT);
  cr_expect(strstr(logged(), "'nope': it is not added"), "%s", logged());
  cr_expect_eq(rng_fork(NULL), CKPT_ENOENT);
  cr_expect_eq(rng_unfork(), CKPT_ESTATE);
  cr_expect_eq(rng_add(NULL, 3), CKPT_EINVAL);
  cr_expect_eq(rng_add("", 3), CKPT_EINVAL);
  char big[100];
  memset(big, 'x', sizeof big - 1);
  big[sizeof big - 1] = 0;
  cr_expect_eq(rng_add(big, 3), CKPT_EINVAL);
  /* (The public names, ckpt_rng_*, are checked through the preload by
   * tests/rng/replay.c tracker.) */
  cr_expect_eq(rng_add("a", 9), CKPT_EINVAL);
  cr_expect_eq(rng_fork("zzz"), CKPT_ENOENT);
}

Test(rng, fork_restores_outer_state_and_keeps_its_own) {
  curandGenerator_t g = hgen(CURAND_RNG_PSEUDO_XORWOW, 11);
  cr_assert_eq(rng_add("tp", 500), 0);
  unsigned *a = draw(g, 16);
  cr_assert_eq(rng_fork("tp"), 0);
  cr_expect_eq(info(g).seed, 500);
  cr_expect_eq(info(g).offset, 0);
  unsigned *f1 = draw(g, 16);
  cr_assert_eq(rng_unfork(), 0);
  cr_expect_eq(info(g).seed, 11);
  cr_expect_eq(info(g).offset, 16);
  unsigned *b = draw(g, 16);
  cr_assert_eq(rng_fork("tp"), 0);
  cr_expect_eq(info(g).offset, 16, "the named state did not keep its position");
  unsigned *f2 = draw(g, 16);
  /* Nested fork into another state, then back. */
  cr_assert_eq(rng_add("inner", 600), 0);
  cr_assert_eq(rng_fork("inner"), 0);
  free(draw(g, 4));
  cr_assert_eq(rng_unfork(), 0);
  cr_expect_eq(info(g).seed, 500);
  cr_expect_eq(info(g).offset, 32);
  cr_assert_eq(rng_unfork(), 0);
  /* Reference sequences without any fork. */
  curandGenerator_t r = hgen(CURAND_RNG_PSEUDO_XORWOW, 11), t = hgen(CURAND_RNG_PSEUDO_XORWOW, 500);
  unsigned *ra = draw(r, 32), *ta = draw(t, 32);
  cr_expect_eq(memcmp(a, ra, 64), 0);
  cr_expect_eq(memcmp(b, ra + 16, 64), 0, "fork did not restore the outer state");
  cr_expect_eq(memcmp(f1, ta, 64), 0);
  cr_expect_eq(memcmp(f2, ta + 16, 64), 0);
  free(a), free(b), free(f1), free(f2), free(ra), free(ta);
}

Test(rng, get_set_states_and_model_parallel_seed) {
  curandGenerator_t g = hgen(CURAND_RNG_PSEUDO_PHILOX4_32_10, 1);
  free(draw(g, 10));
  cr_assert_eq(rng_model_parallel_seed(42, 3), 0);
  cr_expect_eq(info(g).seed, 42);
  cr_expect_eq(info(g).offset, 0);
  struct ckpt_rng_states *st = NULL;
  cr_assert_eq(rng_get_states(&st), 0);
  cr_assert_eq(rng_states_count(st), 1);
  const char *name = NULL;
  unsigned long long seed = 0;
  cr_assert_eq(rng_states_entry(st, 0, &name, &seed), 0);
  cr_expect_str_eq(name, "model-parallel-rng");
  cr_expect_eq(seed, 42 + 2718 + 3);
  cr_expect_eq(rng_states_entry(st, 1, &name, &seed), CKPT_EINVAL);
  /* The saved copy replays a fork's draws (DeepSpeed's use around recompute). */
  cr_assert_eq(rng_fork(NULL), 0);
  unsigned *f1 = draw(g, 8);
  cr_assert_eq(rng_unfork(), 0);
  cr_assert_eq(rng_fork(NULL), 0);
  unsigned *f2 = draw(g, 8);
  cr_assert_eq(rng_unfork(), 0);
  cr_expect_neq(memcmp(f1, f2, 32), 0);
  cr_assert_eq(rng_set_states(st), 0);
  cr_assert_eq(rng_fork(NULL), 0);
  unsigned *f3 = draw(g, 8);
  cr_assert_eq(rng_unfork(), 0);
  cr_expect_eq(memcmp(f1, f3, 32), 0);
  /* Seeds stay spent after set_states, as the reference keeps seeds_. */
  cr_expect_eq(rng_add("other", 42 + 2718 + 3), CKPT_EINVAL);
  rng_states_free(st);
  cr_expect_eq(rng_model_parallel_seed(1, -1), CKPT_EINVAL);
  cr_assert_eq(rng_fork(NULL), 0);
  cr_expect_eq(rng_reset(), CKPT_ESTATE);
  cr_assert_eq(rng_unfork(), 0);
  cr_expect_eq(rng_reset(), 0);
  cr_expect_eq(rng_add("x", 42 + 2718 + 3), 0);
  free(f1), free(f2), free(f3);
}

struct worker {
  int k;
  curandGenerator_t g;
};

static void *work(void *p) {
  struct worker *w = p;
  /* A new thread has no current context (the driver answers
   * CUDA_ERROR_INVALID_CONTEXT): make the primary one current first. */
  CUcontext c = NULL;
  cuDevicePrimaryCtxRetain(&c, 0);
  cuCtxSetCurrent(c);
  unsigned *d = dalloc(64);
  for (int i = 0; i < 200; i++) {
    if (rng_hook_generate(w->g, d, 1 + (i % 7)) != CURAND_STATUS_SUCCESS) return (void *)1;
    if (i % 50 == 0) rng_region_opened(1000 + w->k * 10 + i / 50);
  }
  cuCtxSynchronize();
  return NULL;
}

Test(rng, threads) {
  struct worker w[4];
  pthread_t t[4];
  for (int k = 0; k < 4; k++) {
    w[k] = (struct worker){.k = k, .g = hgen(CURAND_RNG_PSEUDO_XORWOW, 1000 + k)};
    cr_assert_eq(pthread_create(&t[k], NULL, work, &w[k]), 0);
  }
  unsigned long long want = 0;
  for (int i = 0; i < 200; i++) want += 1 + (i % 7);
  for (int k = 0; k < 4; k++) {
    void *rc;
    pthread_join(t[k], &rc);
    cr_expect_null(rc);
    cr_expect_eq(info(w[k].g).offset, want);
    expect_position_true(w[k].g, CURAND_RNG_PSEUDO_XORWOW);
  }
}

static void *no_symbols(const char *name) {
  (void)name;
  return NULL;
}

/* A program without cuRAND (the Python recompute path) still opens, replays
 * and forks regions; only the hooks report the missing library. */
Test(rng, works_without_curand) {
  cr_expect_eq(rng_load(no_symbols), CKPT_EDRIVER);
  cr_expect(strstr(logged(), "cannot find curandCreateGenerator"), "%s", logged());
  curandGenerator_t g = NULL;
  cr_expect_eq(rng_hook_create(&g, CURAND_RNG_PSEUDO_XORWOW), CURAND_STATUS_INITIALIZATION_FAILED);
  rng_region_opened(1);
  cr_expect_eq(rng_replay_begin(1), 0);
  cr_expect_eq(rng_replay_end(), 0);
  cr_expect_eq(rng_model_parallel_seed(5, 0), 0);
  cr_expect_eq(rng_fork(NULL), 0);
  cr_expect_eq(rng_unfork(), 0);
  rng_region_retired(1);
}

Test(rng, records_are_bounded) {
  for (int r = 1; r <= 4097; r++) rng_region_opened(r);
  cr_expect_eq(rng_replay_begin(1), CKPT_ENOENT);
  cr_expect_eq(count(logged(), "dropping the oldest"), 1, "%s", logged());
  cr_expect_eq(rng_replay_begin(4097), 0);
  cr_expect_eq(rng_replay_end(), 0);
  cr_expect_eq(rng_replay_begin(2), 0);
  cr_expect_eq(rng_replay_end(), 0);
  for (int r = 2; r <= 4097; r++) rng_region_retired(r);
  cr_expect_eq(rng_replay_begin(2), CKPT_ENOENT);
}

/* A libcurand whose uniform generator is built on its own exported
 * curandGenerate (which, under the preload, is the wrapper): tracked once,
 * not twice. (The bits are left unconverted: only positions matter here.) */
static curandStatus_t nested_uniform(curandGenerator_t g, float *out, size_t n) {
  RK(rng_hook_set_stream(g, NULL)); /* any entry point called from inside */
  return rng_hook_generate(g, (unsigned *)out, n);
}

static void *nesting_resolver(const char *name) {
  static void *lib;
  if (!lib) lib = dlopen("libcurand.so.10", RTLD_NOW | RTLD_LOCAL);
  void *f = dlsym(lib, name);
  if (!strcmp(name, "curandGenerateUniform")) return (void *)nested_uniform;
  return f;
}

Test(rng, calls_from_inside_curand_are_not_tracked_twice) {
  cr_assert_eq(rng_load(nesting_resolver), 0);
  curandGenerator_t g = hgen(CURAND_RNG_PSEUDO_XORWOW, 3);
  free(draw(g, 10));
  unsigned *d = dalloc(32);
  RK(rng_hook_generate_uniform(g, (float *)d, 32));
  cr_expect_eq(info(g).offset, 10 + 32, "tracked %llu", info(g).offset);
  CK(cuCtxSynchronize());
  expect_position_true(g, CURAND_RNG_PSEUDO_XORWOW);
}

/* Recorded replayable, position lost since (Poisson): replaying it could not
 * be undone, so it is left alone with the warning. */
Test(rng, position_lost_after_open_is_left_alone) {
  curandGenerator_t g = hgen(CURAND_RNG_PSEUDO_XORWOW, 4), ok = hgen(CURAND_RNG_PSEUDO_XORWOW, 5);
  rng_region_opened(2);
  free(draw(g, 8));
  free(draw(ok, 8));
  unsigned *d = dalloc(8);
  RK(rng_hook_generate_poisson(g, d, 8, 1.0));
  cr_assert_eq(rng_replay_begin(2), 0);
  cr_expect_eq(info(ok).offset, 0);
  cr_expect_not(info(g).position_known);
  cr_expect_eq(info(g).offset, 8);
  cr_assert_eq(rng_replay_end(), 0);
  cr_expect_eq(info(ok).offset, 8);
  cr_expect_eq(count(logged(), "not replayable until its next curandSetGeneratorOffset"), 1, "%s", logged());
}
