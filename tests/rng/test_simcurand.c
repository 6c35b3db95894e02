/* The cuRAND test double's own rules (tests/simdev/curand.c): offsets, stream
 * ordering, strictness. Linked directly with libcurand.so.10 (the double) and
 * libcuda.so.1 (the simulated driver). */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <cuda.h>
#include <curand.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "simdev.h"

#define CK(x) cr_assert_eq((x), CUDA_SUCCESS, "%s", #x)
#define RK(x) cr_assert_eq((x), CURAND_STATUS_SUCCESS, "%s", #x)

static void ctx(void) {
  CUcontext c = NULL;
  CK(cuInit(0));
  CK(cuDevicePrimaryCtxRetain(&c, 0));
  CK(cuCtxSetCurrent(c));
}

static void *dalloc(size_t bytes) {
  CUdeviceptr p = 0;
  CK(cuMemAlloc_v2(&p, bytes));
  memset((void *)p, 0, bytes);
  return (void *)p;
}

static curandGenerator_t gen(curandRngType_t t, unsigned long long seed) {
  curandGenerator_t g = NULL;
  RK(curandCreateGenerator(&g, t));
  if (t < 200) RK(curandSetPseudoRandomGeneratorSeed(g, seed));
  return g;
}

TestSuite(simcurand, .timeout = 30);

Test(simcurand, version_and_defaults) {
  ctx();
  int v = 0;
  RK(curandGetVersion(&v));
  cr_expect_eq(v, CURAND_VERSION);
  /* PSEUDO_DEFAULT is XORWOW with seed 0 [curand.h]: same numbers. */
  curandGenerator_t a = NULL, b = NULL;
  RK(curandCreateGenerator(&a, CURAND_RNG_PSEUDO_DEFAULT));
  RK(curandCreateGenerator(&b, CURAND_RNG_PSEUDO_XORWOW));
  RK(curandSetPseudoRandomGeneratorSeed(b, 0));
  unsigned *x = dalloc(64 * 4), *y = dalloc(64 * 4);
  RK(curandGenerate(a, x, 64));
  RK(curandGenerate(b, y, 64));
  CK(cuCtxSynchronize());
  cr_expect_eq(memcmp(x, y, 64 * 4), 0);
  RK(curandDestroyGenerator(a));
  RK(curandDestroyGenerator(b));
  cr_expect_eq(curandDestroyGenerator(a), CURAND_STATUS_NOT_INITIALIZED);
  cr_expect_eq(curandGenerate(a, x, 4), CURAND_STATUS_NOT_INITIALIZED);
  curandGenerator_t bad = NULL;
  cr_expect_eq(curandCreateGenerator(&bad, (curandRngType_t)77), CURAND_STATUS_TYPE_ERROR);
}

/* Offset = 100 -> the first number generated is the 100th [Guide]; each call
 * advances the offset by what it consumed. */
Test(simcurand, offsets_per_function) {
  ctx();
  const curandRngType_t types[] = {CURAND_RNG_PSEUDO_XORWOW, CURAND_RNG_PSEUDO_MRG32K3A,
                                   CURAND_RNG_PSEUDO_PHILOX4_32_10};
  for (int t = 0; t < 3; t++) {
    curandGenerator_t a = gen(types[t], 7), b = gen(types[t], 7);
    unsigned *u = dalloc(300 * 4), *w = dalloc(300 * 4);
    /* Plain bits: 100 then 200 == 300 at once, split. */
    RK(curandGenerate(a, u, 100));
    RK(curandGenerate(a, u + 100, 200));
    RK(curandGenerate(b, w, 300));
    CK(cuCtxSynchronize());
    cr_expect_eq(memcmp(u, w, 300 * 4), 0, "type %d", types[t]);
    /* Offset jumps. */
    RK(curandSetGeneratorOffset(b, 150));
    RK(curandGenerate(b, w, 10));
    CK(cuCtxSynchronize());
    cr_expect_eq(memcmp(u + 150, w, 40), 0);
    /* The measured rules: UniformDouble n on PHILOX and MRG32K3A, normals n
     * on PHILOX; elsewhere no simple rule (neither n nor 2n). */
    bool philox = types[t] == CURAND_RNG_PSEUDO_PHILOX4_32_10, mrg = types[t] == CURAND_RNG_PSEUDO_MRG32K3A;
    double *d = dalloc(12 * 8);
    float *f = dalloc(12 * 4);
    for (int fn = 0; fn < 2; fn++) {
      RK(curandSetGeneratorOffset(a, 0));
      if (fn == 0) RK(curandGenerateUniformDouble(a, d, 10));
      else RK(curandGenerateNormal(a, f, 10, 0.f, 1.f));
      RK(curandGenerate(a, u, 4));
      bool known = fn == 0 ? philox || mrg : philox;
      unsigned long long cands[] = {10, 20, 5};
      for (int c = 0; c < 3; c++) {
        RK(curandSetGeneratorOffset(b, cands[c]));
        RK(curandGenerate(b, w, 4));
        CK(cuCtxSynchronize());
        bool same = memcmp(u, w, 16) == 0;
        if (known && c == 0)
          cr_expect(same, "type %d fn %d: consumption is not n", types[t], fn);
        else
          cr_expect_not(same, "type %d fn %d: consumption follows a simple rule (%llu)", types[t], fn, cands[c]);
      }
    }
  }
}

/* Setting the seed keeps the position (XORWOW, MRG32K3A); PHILOX keeps the
 * last absolute offset plus a quarter of what was drawn since (measured). */
Test(simcurand, seed_and_position) {
  ctx();
  const curandRngType_t types[] = {CURAND_RNG_PSEUDO_XORWOW, CURAND_RNG_PSEUDO_MRG32K3A,
                                   CURAND_RNG_PSEUDO_PHILOX4_32_10};
  for (int t = 0; t < 3; t++) {
    curandGenerator_t a = gen(types[t], 1), b = gen(types[t], 2);
    unsigned *u = dalloc(64 * 4), *w = dalloc(64 * 4);
    RK(curandSetGeneratorOffset(a, 100));
    RK(curandGenerate(a, u, 32));
    RK(curandSetPseudoRandomGeneratorSeed(a, 2));
    RK(curandGenerate(a, u, 8));
    RK(curandSetGeneratorOffset(b, types[t] == CURAND_RNG_PSEUDO_PHILOX4_32_10 ? 100 + 32 / 4 : 132));
    RK(curandGenerate(b, w, 8));
    CK(cuCtxSynchronize());
    cr_expect_eq(memcmp(u, w, 32), 0, "type %d", types[t]);
  }
}

/* DEFAULT == BEST; LEGACY gives another sequence; ordering per type. */
Test(simcurand, orderings) {
  ctx();
  curandGenerator_t a = gen(CURAND_RNG_PSEUDO_XORWOW, 5), b = gen(CURAND_RNG_PSEUDO_XORWOW, 5);
  unsigned *u = dalloc(16 * 4), *w = dalloc(16 * 4);
  RK(curandSetGeneratorOrdering(b, CURAND_ORDERING_PSEUDO_BEST));
  RK(curandGenerate(a, u, 16));
  RK(curandGenerate(b, w, 16));
  CK(cuCtxSynchronize());
  cr_expect_eq(memcmp(u, w, 64), 0);
  RK(curandSetGeneratorOrdering(b, CURAND_ORDERING_PSEUDO_LEGACY));
  RK(curandSetGeneratorOffset(a, 0));
  RK(curandSetGeneratorOffset(b, 0));
  RK(curandGenerate(a, u, 16));
  RK(curandGenerate(b, w, 16));
  CK(cuCtxSynchronize());
  cr_expect_neq(memcmp(u, w, 64), 0);
  curandGenerator_t m = gen(CURAND_RNG_PSEUDO_MTGP32, 1), p = gen(CURAND_RNG_PSEUDO_PHILOX4_32_10, 1);
  curandGenerator_t q = NULL;
  RK(curandCreateGenerator(&q, CURAND_RNG_QUASI_DEFAULT));
  cr_expect_eq(curandSetGeneratorOrdering(m, CURAND_ORDERING_PSEUDO_LEGACY), CURAND_STATUS_OUT_OF_RANGE);
  cr_expect_eq(curandSetGeneratorOrdering(p, CURAND_ORDERING_PSEUDO_SEEDED), CURAND_STATUS_OUT_OF_RANGE);
  cr_expect_eq(curandSetGeneratorOrdering(p, CURAND_ORDERING_QUASI_DEFAULT), CURAND_STATUS_OUT_OF_RANGE);
  cr_expect_eq(curandSetGeneratorOrdering(q, CURAND_ORDERING_PSEUDO_DEFAULT), CURAND_STATUS_OUT_OF_RANGE);
  cr_expect_eq(curandSetGeneratorOrdering(a, (curandOrdering_t)999), CURAND_STATUS_OUT_OF_RANGE);
  RK(curandSetGeneratorOrdering(a, CURAND_ORDERING_PSEUDO_SEEDED));
  RK(curandSetGeneratorOrdering(q, CURAND_ORDERING_QUASI_DEFAULT));
}

Test(simcurand, strictness) {
  ctx();
  curandGenerator_t a = gen(CURAND_RNG_PSEUDO_XORWOW, 3);
  float *f = dalloc(64);
  double *d = dalloc(64);
  unsigned *u = dalloc(64);
  cr_expect_eq(curandGenerateNormal(a, f, 3, 0, 1), CURAND_STATUS_LENGTH_NOT_MULTIPLE);
  cr_expect_eq(curandGenerateNormalDouble(a, d, 5, 0, 1), CURAND_STATUS_LENGTH_NOT_MULTIPLE);
  cr_expect_eq(curandGenerateLogNormal(a, f, 1, 0, 1), CURAND_STATUS_LENGTH_NOT_MULTIPLE);
  cr_expect_eq(curandGenerateLogNormalDouble(a, d, 7, 0, 1), CURAND_STATUS_LENGTH_NOT_MULTIPLE);
  cr_expect_eq(curandGenerateUniform(a, (float *)((char *)f + 2), 4), CURAND_STATUS_LAUNCH_FAILURE);
  cr_expect_eq(curandGenerateUniformDouble(a, (double *)((char *)d + 4), 4), CURAND_STATUS_LAUNCH_FAILURE);
  cr_expect_eq(curandGenerate(a, NULL, 4), CURAND_STATUS_LAUNCH_FAILURE);
  static unsigned pageable[16]; /* not device memory: a kernel would fault */
  cr_expect_eq(curandGenerate(a, pageable, 16), CURAND_STATUS_LAUNCH_FAILURE);
  cr_expect_eq(curandGenerate(a, u, 17), CURAND_STATUS_LAUNCH_FAILURE, "past the end of a 64-byte allocation");
  RK(curandGenerate(a, u, 16));
  CK(cuCtxSynchronize());
  cr_expect_eq(curandGeneratePoisson(a, u, 4, 0.0), CURAND_STATUS_OUT_OF_RANGE);
  cr_expect_eq(curandGeneratePoisson(a, u, 4, 400001.0), CURAND_STATUS_OUT_OF_RANGE);
  cr_expect_eq(curandGenerateLongLong(a, (unsigned long long *)d, 4), CURAND_STATUS_TYPE_ERROR);
  RK(curandGenerate(a, u, 0)); /* no-op */
  /* None of the refused calls moved the offset. */
  curandGenerator_t b = gen(CURAND_RNG_PSEUDO_XORWOW, 3);
  RK(curandSetGeneratorOffset(b, 16));
  unsigned *x = dalloc(16), *y = dalloc(16);
  RK(curandGenerate(a, x, 4));
  RK(curandGenerate(b, y, 4));
  CK(cuCtxSynchronize());
  cr_expect_eq(memcmp(x, y, 16), 0);
  /* Type rules: no skip-ahead on MTGP32/MT19937, no seed on quasi, 64-bit quasi only LongLong. */
  curandGenerator_t m = gen(CURAND_RNG_PSEUDO_MTGP32, 1), t = gen(CURAND_RNG_PSEUDO_MT19937, 1);
  cr_expect_eq(curandSetGeneratorOffset(m, 5), CURAND_STATUS_TYPE_ERROR);
  cr_expect_eq(curandSetGeneratorOffset(t, 5), CURAND_STATUS_TYPE_ERROR);
  curandGenerator_t q = NULL, q64 = NULL;
  RK(curandCreateGenerator(&q, CURAND_RNG_QUASI_SOBOL32));
  RK(curandCreateGenerator(&q64, CURAND_RNG_QUASI_SCRAMBLED_SOBOL64));
  cr_expect_eq(curandSetPseudoRandomGeneratorSeed(q, 1), CURAND_STATUS_TYPE_ERROR);
  cr_expect_eq(curandGenerate(q64, u, 4), CURAND_STATUS_TYPE_ERROR);
  RK(curandGenerateLongLong(q64, (unsigned long long *)d, 4));
  RK(curandSetQuasiRandomGeneratorDimensions(q, 3));
  cr_expect_eq(curandGenerateUniform(q, f, 4), CURAND_STATUS_LENGTH_NOT_MULTIPLE);
  RK(curandGenerateUniform(q, f, 6));
  RK(curandGenerateNormal(q, f, 3, 0, 1)); /* quasi: a multiple of the dimension, odd allowed */
  CK(cuCtxSynchronize());
}

/* Generation is stream work: a reader that does not wait sees stale memory,
 * and the numbers follow the state captured at the call. */
Test(simcurand, stream_ordered) {
  ctx();
  CUstream s;
  CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  cr_assert_eq(simdev_stream_set_delay_us(s, 200000), 0);
  curandGenerator_t a = gen(CURAND_RNG_PSEUDO_PHILOX4_32_10, 11), b = gen(CURAND_RNG_PSEUDO_PHILOX4_32_10, 11);
  RK(curandSetStream(a, (cudaStream_t)s));
  unsigned *u = dalloc(256 * 4), *w = dalloc(256 * 4);
  RK(curandGenerate(a, u, 256));
  /* Changed after the call: must not affect the enqueued work. */
  RK(curandSetPseudoRandomGeneratorSeed(a, 999));
  RK(curandSetGeneratorOffset(a, 12345));
  unsigned zero[256] = {0};
  cr_expect_eq(memcmp(u, zero, sizeof zero), 0, "values visible before the stream ran");
  CK(cuStreamSynchronize(s));
  RK(curandGenerate(b, w, 256));
  CK(cuCtxSynchronize());
  cr_expect_eq(memcmp(u, w, 256 * 4), 0);
  /* Destroying with work queued is safe. */
  RK(curandGenerate(a, u, 256));
  RK(curandDestroyGenerator(a));
  CK(cuStreamSynchronize(s));
  CK(cuStreamDestroy(s));
}

Test(simcurand, distributions_sane) {
  ctx();
  curandGenerator_t a = gen(CURAND_RNG_PSEUDO_XORWOW, 1234);
  enum { N = 20000 };
  float *f = dalloc(N * 4);
  double *d = dalloc(N * 8);
  unsigned *u = dalloc(N * 4);
  RK(curandGenerateUniform(a, f, N));
  CK(cuCtxSynchronize());
  double m = 0;
  for (int i = 0; i < N; i++) {
    cr_assert(f[i] > 0.f && f[i] <= 1.f);
    m += f[i];
  }
  cr_expect(m / N > 0.48 && m / N < 0.52, "uniform mean %f", m / N);
  RK(curandGenerateNormalDouble(a, d, N, 2.0, 3.0));
  CK(cuCtxSynchronize());
  m = 0;
  double v = 0;
  for (int i = 0; i < N; i++) m += d[i];
  m /= N;
  for (int i = 0; i < N; i++) v += (d[i] - m) * (d[i] - m);
  v /= N;
  cr_expect(m > 1.9 && m < 2.1 && v > 8.5 && v < 9.5, "normal mean %f var %f", m, v);
  RK(curandGeneratePoisson(a, u, N, 4.0));
  CK(cuCtxSynchronize());
  m = 0;
  for (int i = 0; i < N; i++) m += u[i];
  cr_expect(m / N > 3.9 && m / N < 4.1, "poisson mean %f", m / N);
  RK(curandGeneratePoisson(a, u, N, 1000.0));
  CK(cuCtxSynchronize());
  m = 0;
  for (int i = 0; i < N; i++) m += u[i];
  cr_expect(m / N > 995 && m / N < 1005, "poisson(1000) mean %f", m / N);
}

Test(simcurand, host_generator) {
  curandGenerator_t h = NULL, g = NULL;
  RK(curandCreateGeneratorHost(&h, CURAND_RNG_PSEUDO_MRG32K3A));
  RK(curandSetPseudoRandomGeneratorSeed(h, 8));
  unsigned host[32];
  RK(curandGenerate(h, host, 32)); /* written before the call returns */
  ctx();
  g = gen(CURAND_RNG_PSEUDO_MRG32K3A, 8);
  unsigned *w = dalloc(32 * 4);
  RK(curandGenerate(g, w, 32));
  CK(cuCtxSynchronize());
  cr_expect_eq(memcmp(host, w, sizeof host), 0);
}
