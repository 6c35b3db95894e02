/* The cuRAND host API wrappers (the CURAND rows of hooked.def), each defined
 * once here with its signature: lazy init, count, then the rng hook of the
 * same arguments. All tracking, and the real cuRAND (its own table, loaded
 * with the real dlsym), are hooks/rng.c's. */
#define _GNU_SOURCE
#include <curand.h>

#include "../hooks/core.h"
#include "../hooks/rng.h"

#define CURAND_WRAP(sym, hook, params, args) \
  CKPT_API curandStatus_t sym params {       \
    ckpt_init();                             \
    ckpt_count_hooked();                     \
    return hook args;                        \
  }

typedef curandGenerator_t gen_t;
CURAND_WRAP(curandCreateGenerator, rng_hook_create, (gen_t *g, curandRngType_t t), (g, t))
CURAND_WRAP(curandCreateGeneratorHost, rng_hook_create_host, (gen_t *g, curandRngType_t t), (g, t))
CURAND_WRAP(curandDestroyGenerator, rng_hook_destroy, (gen_t g), (g))
CURAND_WRAP(curandSetPseudoRandomGeneratorSeed, rng_hook_set_seed, (gen_t g, unsigned long long s), (g, s))
CURAND_WRAP(curandSetGeneratorOffset, rng_hook_set_offset, (gen_t g, unsigned long long o), (g, o))
CURAND_WRAP(curandSetGeneratorOrdering, rng_hook_set_ordering, (gen_t g, curandOrdering_t o), (g, o))
CURAND_WRAP(curandSetStream, rng_hook_set_stream, (gen_t g, cudaStream_t s), (g, s))
CURAND_WRAP(curandGenerate, rng_hook_generate, (gen_t g, unsigned int *o, size_t n), (g, o, n))
CURAND_WRAP(curandGenerateLongLong, rng_hook_generate_long_long, (gen_t g, unsigned long long *o, size_t n),
            (g, o, n))
CURAND_WRAP(curandGenerateUniform, rng_hook_generate_uniform, (gen_t g, float *o, size_t n), (g, o, n))
CURAND_WRAP(curandGenerateUniformDouble, rng_hook_generate_uniform_double, (gen_t g, double *o, size_t n),
            (g, o, n))
CURAND_WRAP(curandGenerateNormal, rng_hook_generate_normal, (gen_t g, float *o, size_t n, float m, float s),
            (g, o, n, m, s))
CURAND_WRAP(curandGenerateNormalDouble, rng_hook_generate_normal_double,
            (gen_t g, double *o, size_t n, double m, double s), (g, o, n, m, s))
CURAND_WRAP(curandGenerateLogNormal, rng_hook_generate_log_normal, (gen_t g, float *o, size_t n, float m, float s),
            (g, o, n, m, s))
CURAND_WRAP(curandGenerateLogNormalDouble, rng_hook_generate_log_normal_double,
            (gen_t g, double *o, size_t n, double m, double s), (g, o, n, m, s))
CURAND_WRAP(curandGeneratePoisson, rng_hook_generate_poisson, (gen_t g, unsigned int *o, size_t n, double l),
            (g, o, n, l))
CURAND_WRAP(curandGeneratePoissonMethod, rng_hook_generate_poisson_method,
            (gen_t g, unsigned int *o, size_t n, double l, curandMethod_t m), (g, o, n, l, m))
CURAND_WRAP(curandGenerateBinomial, rng_hook_generate_binomial,
            (gen_t g, unsigned int *o, size_t num, unsigned int n, double p), (g, o, num, n, p))
CURAND_WRAP(curandGenerateBinomialMethod, rng_hook_generate_binomial_method,
            (gen_t g, unsigned int *o, size_t num, unsigned int n, double p, curandMethod_t m), (g, o, num, n, p, m))
