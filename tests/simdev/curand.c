/* libcurand.so.10 test double: the cuRAND host API on the simulated driver.
 *
 * Types and values come from the real /usr/local/cuda/include/curand.h. The
 * numbers are NOT cuRAND's: value k of a generator's sequence is a counter
 * hash of (seed, type, ordering class, k), so any position can be computed
 * directly and the offset rules below are exact.
 *
 * Rules followed (never more lenient than cuRAND; sources in brackets:
 * [H] = curand.h doc comments of CUDA 13, [G] = cuRAND Library Programming
 * Guide, "Host API Overview" / "Generator Options" (Seed, Offset, Order),
 * [C] = cudarc PR #185 ("setting the seed initializes the state of the PRNG
 * but does not restart the sequence"), [R] = measured on the real cuRAND
 * (below), [D] = this double's own choice, marked
 * where cuRAND documents nothing; the tracker in hooks/rng.h relies only on
 * rules marked [H]/[G] and flags the rest):
 *
 *  - Creation: seed 0, offset 0, ordering PSEUDO_DEFAULT / QUASI_DEFAULT,
 *    PSEUDO_DEFAULT means XORWOW, QUASI_DEFAULT means SOBOL32 [H]. An
 *    unknown type -> CURAND_STATUS_TYPE_ERROR [H].
 *  - Generation is stream-ordered [G: "curandGenerate() launches a kernel
 *    and returns asynchronously"]: the call captures (seed, offset, ordering,
 *    n) when it is made and the values are written by work enqueued with
 *    cuLaunchHostFunc on the generator's stream (curandSetStream, NULL = the
 *    legacy stream) [H]. A reader that does not wait sees stale memory.
 *    Host generators (curandCreateGeneratorHost) write before returning.
 *  - Offset: absolute, not relative [H]; "if offset = 100 the first number
 *    generated is the 100th of the sequence" [G]; units = 32-bit results of
 *    curandGenerate. Not available for MTGP32 and MT19937 [G: skip-ahead is
 *    not available for them] -> CURAND_STATUS_TYPE_ERROR [D, as hipRAND's
 *    documented equivalent]. Every successful generate call moves the
 *    position by what it consumed; [R] = measured on the real cuRAND 10.4
 *    (CUDA 13) with host generators, by tests/rng/host_rules.c:
 *      curandGenerate, curandGenerateUniform: n, every type             [R]
 *      UniformDouble: n on PHILOX4_32_10 and MRG32K3A                    [R]
 *      Normal, LogNormal, NormalDouble, LogNormalDouble: n on PHILOX     [R]
 *      everything else (XORWOW doubles and normals, MRG32K3A normals,
 *      Poisson, LongLong): the real amount follows no simple rule [R], so
 *      the double moves by a deliberately irregular amount (sc_consumed):
 *      a tracker that guesses a rule there fails its tests.
 *  - Seed: pseudo generators only, else CURAND_STATUS_TYPE_ERROR [H]; setting
 *    it keeps the position [C, R] on XORWOW and MRG32K3A; PHILOX4_32_10 keeps
 *    the last absolute offset plus a quarter of what was drawn since [R].
 *  - Ordering: the position is kept on XORWOW and MRG32K3A [R]; PHILOX moves
 *    as for a reseed ([R]: it moves; by how much is the double's choice).
 *  - Ordering per type (CURAND_STATUS_OUT_OF_RANGE otherwise [H]):
 *      XORWOW: PSEUDO_DEFAULT, BEST, SEEDED, LEGACY, DYNAMIC
 *      MRG32K3A, PHILOX4_32_10: PSEUDO_DEFAULT, BEST, LEGACY, DYNAMIC
 *      MT19937: PSEUDO_DEFAULT, BEST, LEGACY;  MTGP32: PSEUDO_DEFAULT, BEST
 *      quasi: QUASI_DEFAULT only [H]
 *    [D: the narrowest reading of [G]'s Order section]. DEFAULT and BEST give
 *    the same sequence [H: "same as CURAND_ORDERING_PSEUDO_BEST"]; LEGACY,
 *    SEEDED and DYNAMIC each give a different one, so a replay that forgets
 *    the ordering fails.
 *  - Normal and log-normal need an even n for pseudo generators ->
 *    CURAND_STATUS_LENGTH_NOT_MULTIPLE [H]; quasi: n a multiple of the
 *    dimension count [H]. curandGenerate on a 64-bit quasi generator and
 *    curandGenerateLongLong on anything else -> CURAND_STATUS_TYPE_ERROR [H].
 *    Poisson lambda <= 0 or > 400000 -> CURAND_STATUS_OUT_OF_RANGE [H].
 *  - Output pointer NULL, not aligned to its element type, or (device
 *    generators) [out, out + n) not inside one allocation the device can
 *    reach (cuPointerGetAttribute range) -> CURAND_STATUS_LAUNCH_FAILURE at
 *    the call [D: on a GPU the kernel would fault the context; failing at
 *    once is stricter]. n == 0 is a no-op.
 *  - An unknown or destroyed generator -> CURAND_STATUS_NOT_INITIALIZED [H].
 *    Destroying a generator with generation still queued is safe: the queued
 *    work owns what it captured.
 */
#define _GNU_SOURCE
#include <cuda.h>
#include <curand.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SC_MAGIC 0x63724e44u /* "crND" */
#define SC_MAX_DIMS 20000u

struct curandGenerator_st {
    uint32_t magic;
    curandRngType_t type;
    curandOrdering_t ordering;
    bool host;
    unsigned long long seed;
    unsigned long long offset;
    unsigned long long anchor; /* offset at the last curandSetGeneratorOffset */
    unsigned dims;
    CUstream stream;
    struct curandGenerator_st *next; /* live list */
};

/* Every live generator, so a stale handle is refused instead of read. */
static pthread_mutex_t sc_mu = PTHREAD_MUTEX_INITIALIZER;
static struct curandGenerator_st *sc_live;

static bool sc_is_live(curandGenerator_t g)
{
    for (struct curandGenerator_st *p = sc_live; p; p = p->next)
        if (p == g)
            return g->magic == SC_MAGIC;
    return false;
}

static bool sc_pseudo(curandRngType_t t) { return t >= 100 && t < 200; }
static bool sc_quasi64(curandRngType_t t)
{
    return t == CURAND_RNG_QUASI_SOBOL64 || t == CURAND_RNG_QUASI_SCRAMBLED_SOBOL64;
}
static bool sc_has_offset(curandRngType_t t)
{
    return t != CURAND_RNG_PSEUDO_MTGP32 && t != CURAND_RNG_PSEUDO_MT19937;
}

static bool sc_ordering_ok(curandRngType_t t, curandOrdering_t o)
{
    if (!sc_pseudo(t))
        return o == CURAND_ORDERING_QUASI_DEFAULT;
    switch (o) {
    case CURAND_ORDERING_PSEUDO_DEFAULT:
    case CURAND_ORDERING_PSEUDO_BEST:
        return true;
    case CURAND_ORDERING_PSEUDO_LEGACY:
        return t != CURAND_RNG_PSEUDO_MTGP32;
    case CURAND_ORDERING_PSEUDO_SEEDED:
        return t == CURAND_RNG_PSEUDO_XORWOW;
    case CURAND_ORDERING_PSEUDO_DYNAMIC:
        return t == CURAND_RNG_PSEUDO_XORWOW || t == CURAND_RNG_PSEUDO_MRG32K3A ||
               t == CURAND_RNG_PSEUDO_PHILOX4_32_10;
    default:
        return false;
    }
}

/* Ordering class: DEFAULT and BEST share a sequence. */
static uint64_t sc_order_tag(curandOrdering_t o)
{
    return o == CURAND_ORDERING_PSEUDO_BEST ? (uint64_t)CURAND_ORDERING_PSEUDO_DEFAULT : (uint64_t)o;
}

static uint64_t sc_mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

enum sc_kind { K_U32, K_U64, K_UNIF, K_UNIF_D, K_NORM, K_NORM_D, K_LOGN, K_LOGN_D, K_POIS };

struct sc_job {
    enum sc_kind kind;
    uint64_t key;          /* from seed, type, ordering class */
    unsigned long long start;
    size_t n;
    unsigned per;          /* positions consumed per double (1 or 2) */
    void *out;
    double a, b;           /* mean/stddev or lambda */
};

static uint64_t sc_raw64(const struct sc_job *j, unsigned long long pos)
{
    return sc_mix(j->key ^ sc_mix(pos));
}
static uint32_t sc_raw32(const struct sc_job *j, unsigned long long pos)
{
    return (uint32_t)(sc_raw64(j, pos) >> 32);
}
/* (0, 1], like cuRAND's uniform output. */
static float sc_unif(const struct sc_job *j, unsigned long long pos)
{
    return (float)((sc_raw32(j, pos) >> 8) + 1) * (1.0f / 16777216.0f);
}
static double sc_unif_d(const struct sc_job *j, size_t i)
{
    uint64_t bits;
    if (j->per == 1) {
        bits = sc_raw64(j, j->start + i) >> 11;
    } else {
        unsigned long long p = j->start + 2 * (unsigned long long)i;
        bits = ((uint64_t)sc_raw32(j, p) << 21) ^ (sc_raw32(j, p + 1) >> 11);
    }
    return (double)(bits + 1) * (1.0 / 9007199254740992.0);
}

static void sc_run(struct sc_job *j)
{
    const double two_pi = 6.283185307179586;
    switch (j->kind) {
    case K_U32:
        for (size_t i = 0; i < j->n; i++)
            ((uint32_t *)j->out)[i] = sc_raw32(j, j->start + i);
        break;
    case K_U64:
        for (size_t i = 0; i < j->n; i++)
            ((uint64_t *)j->out)[i] = sc_raw64(j, j->start + i);
        break;
    case K_UNIF:
        for (size_t i = 0; i < j->n; i++)
            ((float *)j->out)[i] = sc_unif(j, j->start + i);
        break;
    case K_UNIF_D:
        for (size_t i = 0; i < j->n; i++)
            ((double *)j->out)[i] = sc_unif_d(j, i);
        break;
    case K_NORM:
    case K_LOGN:
        for (size_t i = 0; i + 1 < j->n; i += 2) {
            double u1 = sc_unif(j, j->start + i), u2 = sc_unif(j, j->start + i + 1);
            double r = sqrt(-2.0 * log(u1));
            double z0 = j->a + j->b * r * cos(two_pi * u2), z1 = j->a + j->b * r * sin(two_pi * u2);
            if (j->kind == K_LOGN) {
                z0 = exp(z0);
                z1 = exp(z1);
            }
            ((float *)j->out)[i] = (float)z0;
            ((float *)j->out)[i + 1] = (float)z1;
        }
        if (j->n % 2) /* quasi with an odd count: inverse-CDF-like, one value each */
            ((float *)j->out)[j->n - 1] = (float)j->a;
        break;
    case K_NORM_D:
    case K_LOGN_D:
        for (size_t i = 0; i + 1 < j->n; i += 2) {
            double u1 = sc_unif_d(j, i), u2 = sc_unif_d(j, i + 1);
            double r = sqrt(-2.0 * log(u1));
            double z0 = j->a + j->b * r * cos(two_pi * u2), z1 = j->a + j->b * r * sin(two_pi * u2);
            if (j->kind == K_LOGN_D) {
                z0 = exp(z0);
                z1 = exp(z1);
            }
            ((double *)j->out)[i] = z0;
            ((double *)j->out)[i + 1] = z1;
        }
        if (j->n % 2)
            ((double *)j->out)[j->n - 1] = j->a;
        break;
    case K_POIS:
        for (size_t i = 0; i < j->n; i++) {
            double u = (double)((sc_raw64(j, j->start + i) >> 11) + 1) * (1.0 / 9007199254740992.0);
            unsigned k = 0;
            if (j->a <= 64.0) { /* inversion */
                double p = exp(-j->a), c = p;
                while (u > c && k < 10000) {
                    k++;
                    p *= j->a / k;
                    c += p;
                }
            } else { /* normal approximation from the same position */
                double u2 = (double)((sc_mix(sc_raw64(j, j->start + i)) >> 11) + 1) *
                            (1.0 / 9007199254740992.0);
                double z = sqrt(-2.0 * log(u)) * cos(two_pi * u2);
                double v = floor(j->a + sqrt(j->a) * z + 0.5);
                k = v < 0 ? 0 : (unsigned)v;
            }
            ((unsigned *)j->out)[i] = k;
        }
        break;
    }
}

static void CUDA_CB sc_hostfn(void *data)
{
    sc_run(data);
    free(data);
}

/* The CUDA runtime cuRAND sits on makes the device's primary context
 * current on first use; the double does the same when none is current. */
static CUresult sc_context(void)
{
    CUcontext ctx = NULL;
    if (cuCtxGetCurrent(&ctx) == CUDA_SUCCESS && ctx)
        return CUDA_SUCCESS;
    CUresult rc = cuInit(0);
    CUdevice dev = 0;
    if (rc == CUDA_SUCCESS)
        rc = cuDeviceGet(&dev, 0);
    if (rc == CUDA_SUCCESS)
        rc = cuDevicePrimaryCtxRetain(&ctx, dev);
    if (rc == CUDA_SUCCESS)
        rc = cuCtxSetCurrent(ctx);
    return rc;
}

static curandStatus_t sc_create(curandGenerator_t *out, curandRngType_t type, bool host)
{
    if (!out)
        return CURAND_STATUS_NOT_INITIALIZED;
    if (type == CURAND_RNG_PSEUDO_DEFAULT)
        type = CURAND_RNG_PSEUDO_XORWOW;
    if (type == CURAND_RNG_QUASI_DEFAULT)
        type = CURAND_RNG_QUASI_SOBOL32;
    switch (type) {
    case CURAND_RNG_PSEUDO_XORWOW:
    case CURAND_RNG_PSEUDO_MRG32K3A:
    case CURAND_RNG_PSEUDO_MTGP32:
    case CURAND_RNG_PSEUDO_MT19937:
    case CURAND_RNG_PSEUDO_PHILOX4_32_10:
    case CURAND_RNG_QUASI_SOBOL32:
    case CURAND_RNG_QUASI_SCRAMBLED_SOBOL32:
    case CURAND_RNG_QUASI_SOBOL64:
    case CURAND_RNG_QUASI_SCRAMBLED_SOBOL64:
        break;
    default:
        return CURAND_STATUS_TYPE_ERROR;
    }
    if (!host && sc_context() != CUDA_SUCCESS)
        return CURAND_STATUS_INITIALIZATION_FAILED;
    struct curandGenerator_st *g = calloc(1, sizeof *g);
    if (!g)
        return CURAND_STATUS_ALLOCATION_FAILED;
    g->magic = SC_MAGIC;
    g->type = type;
    g->ordering = sc_pseudo(type) ? CURAND_ORDERING_PSEUDO_DEFAULT : CURAND_ORDERING_QUASI_DEFAULT;
    g->host = host;
    g->dims = 1;
    pthread_mutex_lock(&sc_mu);
    g->next = sc_live;
    sc_live = g;
    pthread_mutex_unlock(&sc_mu);
    *out = g;
    return CURAND_STATUS_SUCCESS;
}

curandStatus_t CURANDAPI curandCreateGenerator(curandGenerator_t *generator, curandRngType_t rng_type)
{
    return sc_create(generator, rng_type, false);
}

curandStatus_t CURANDAPI curandCreateGeneratorHost(curandGenerator_t *generator, curandRngType_t rng_type)
{
    return sc_create(generator, rng_type, true);
}

curandStatus_t CURANDAPI curandDestroyGenerator(curandGenerator_t generator)
{
    pthread_mutex_lock(&sc_mu);
    struct curandGenerator_st **pp = &sc_live;
    while (*pp && *pp != generator)
        pp = &(*pp)->next;
    if (!*pp) {
        pthread_mutex_unlock(&sc_mu);
        return CURAND_STATUS_NOT_INITIALIZED;
    }
    *pp = generator->next;
    generator->magic = 0;
    pthread_mutex_unlock(&sc_mu);
    free(generator);
    return CURAND_STATUS_SUCCESS;
}

curandStatus_t CURANDAPI curandGetVersion(int *version)
{
    if (!version)
        return CURAND_STATUS_OUT_OF_RANGE;
    *version = CURAND_VERSION;
    return CURAND_STATUS_SUCCESS;
}

/* Runs `body` with the generator locked and known to be live. */
#define SC_WITH(g, body)                          \
    do {                                          \
        pthread_mutex_lock(&sc_mu);               \
        if (!sc_is_live(g)) {                     \
            pthread_mutex_unlock(&sc_mu);         \
            return CURAND_STATUS_NOT_INITIALIZED; \
        }                                         \
        curandStatus_t sc_st_ = CURAND_STATUS_SUCCESS; \
        body;                                     \
        pthread_mutex_unlock(&sc_mu);             \
        return sc_st_;                            \
    } while (0)

curandStatus_t CURANDAPI curandSetStream(curandGenerator_t generator, cudaStream_t stream)
{
    SC_WITH(generator, generator->stream = (CUstream)stream);
}

curandStatus_t CURANDAPI curandSetPseudoRandomGeneratorSeed(curandGenerator_t generator, unsigned long long seed)
{
    SC_WITH(generator, if (!sc_pseudo(generator->type)) sc_st_ = CURAND_STATUS_TYPE_ERROR; else {
        generator->seed = seed;
        if (generator->type == CURAND_RNG_PSEUDO_PHILOX4_32_10) { /* [R] */
            generator->offset = generator->anchor + (generator->offset - generator->anchor) / 4;
            generator->anchor = generator->offset;
        }
    });
}

curandStatus_t CURANDAPI curandSetGeneratorOffset(curandGenerator_t generator, unsigned long long offset)
{
    SC_WITH(generator, if (!sc_has_offset(generator->type)) sc_st_ = CURAND_STATUS_TYPE_ERROR;
            else generator->offset = generator->anchor = offset);
}

curandStatus_t CURANDAPI curandSetGeneratorOrdering(curandGenerator_t generator, curandOrdering_t order)
{
    SC_WITH(generator, if (!sc_ordering_ok(generator->type, order)) sc_st_ = CURAND_STATUS_OUT_OF_RANGE; else {
        generator->ordering = order;
        if (generator->type == CURAND_RNG_PSEUDO_PHILOX4_32_10) { /* moves, as the real one does [R] */
            generator->offset = generator->anchor + (generator->offset - generator->anchor) / 4;
            generator->anchor = generator->offset;
        }
    });
}

curandStatus_t CURANDAPI curandSetQuasiRandomGeneratorDimensions(curandGenerator_t generator,
                                                                 unsigned int num_dimensions)
{
    SC_WITH(generator, if (sc_pseudo(generator->type)) sc_st_ = CURAND_STATUS_TYPE_ERROR;
            else if (num_dimensions < 1 || num_dimensions > SC_MAX_DIMS) sc_st_ = CURAND_STATUS_OUT_OF_RANGE;
            else generator->dims = num_dimensions);
}

/* Device generators write through a kernel: the output must lie inside one
 * allocation the device can reach (device, pool, VMM or pinned host memory),
 * or the kernel would fault the context. */
static bool sc_range_ok(const void *out, size_t bytes)
{
    CUdeviceptr base = 0;
    size_t size = 0;
    CUdeviceptr p = (CUdeviceptr)(uintptr_t)out;
    if (cuPointerGetAttribute(&base, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, p) != CUDA_SUCCESS ||
        cuPointerGetAttribute(&size, CU_POINTER_ATTRIBUTE_RANGE_SIZE, p) != CUDA_SUCCESS)
        return false;
    return p >= base && bytes <= size && p - base <= size - bytes;
}

/* Results consumed by one call: the measured rules [R], and an irregular
 * amount where the real one follows no simple rule. */
static unsigned long long sc_consumed(curandRngType_t t, enum sc_kind kind, size_t n, double lambda)
{
    unsigned long long ln = n;
    bool philox = t == CURAND_RNG_PSEUDO_PHILOX4_32_10, mrg = t == CURAND_RNG_PSEUDO_MRG32K3A;
    switch (kind) {
    case K_U32:
    case K_UNIF:
        return ln;
    case K_UNIF_D:
        return philox || mrg ? ln : ln + ln / 2 + ln % 7;
    case K_NORM:
    case K_LOGN:
    case K_NORM_D:
    case K_LOGN_D:
        return philox ? ln : ln / 2 + ln % 5 + 1 + (ln > 4096 ? ln / 9 : 0);
    case K_POIS:
        return ln + (lambda > 64.0 ? ln : 0) + ln % 3;
    default: /* K_U64: quasi */
        return ln;
    }
}

static curandStatus_t sc_generate(curandGenerator_t g, enum sc_kind kind, void *out, size_t n, size_t elt,
                                  double a, double b)
{
    pthread_mutex_lock(&sc_mu);
    if (!sc_is_live(g)) {
        pthread_mutex_unlock(&sc_mu);
        return CURAND_STATUS_NOT_INITIALIZED;
    }
    curandStatus_t st = CURAND_STATUS_SUCCESS;
    bool pseudo = sc_pseudo(g->type);
    if ((kind == K_U64) != sc_quasi64(g->type))
        st = CURAND_STATUS_TYPE_ERROR;
    else if (!pseudo && n % g->dims)
        st = CURAND_STATUS_LENGTH_NOT_MULTIPLE;
    else if (pseudo && n % 2 && (kind == K_NORM || kind == K_NORM_D || kind == K_LOGN || kind == K_LOGN_D))
        st = CURAND_STATUS_LENGTH_NOT_MULTIPLE;
    else if (kind == K_POIS && !(a > 0.0 && a <= 400000.0))
        st = CURAND_STATUS_OUT_OF_RANGE;
    else if (n && (!out || (uintptr_t)out % elt))
        st = CURAND_STATUS_LAUNCH_FAILURE;
    else if (n && !g->host && !sc_range_ok(out, n * elt))
        st = CURAND_STATUS_LAUNCH_FAILURE;
    if (st != CURAND_STATUS_SUCCESS || n == 0) {
        pthread_mutex_unlock(&sc_mu);
        return st;
    }
    struct sc_job *j = malloc(sizeof *j);
    if (!j) {
        pthread_mutex_unlock(&sc_mu);
        return CURAND_STATUS_ALLOCATION_FAILED;
    }
    bool is_double = kind == K_UNIF_D || kind == K_NORM_D || kind == K_LOGN_D;
    j->kind = kind;
    j->key = sc_mix(g->seed ^ sc_mix(((uint64_t)g->type << 32) | sc_order_tag(g->ordering)));
    j->start = g->offset;
    j->n = n;
    j->per = (is_double && g->type == CURAND_RNG_PSEUDO_XORWOW) ? 2 : 1;
    j->out = out;
    j->a = a;
    j->b = b;
    unsigned long long consumed = pseudo ? sc_consumed(g->type, kind, n, a) : n;
    bool host = g->host;
    CUstream stream = g->stream;
    g->offset += consumed;
    if (host) {
        pthread_mutex_unlock(&sc_mu);
        sc_hostfn(j);
        return CURAND_STATUS_SUCCESS;
    }
    /* Enqueued under the lock so two calls on one generator keep their order. */
    CUresult rc = sc_context();
    if (rc == CUDA_SUCCESS)
        rc = cuLaunchHostFunc(stream, sc_hostfn, j);
    if (rc != CUDA_SUCCESS) {
        g->offset -= consumed;
        free(j);
        st = rc == CUDA_ERROR_OUT_OF_MEMORY ? CURAND_STATUS_ALLOCATION_FAILED : CURAND_STATUS_LAUNCH_FAILURE;
    }
    pthread_mutex_unlock(&sc_mu);
    return st;
}

curandStatus_t CURANDAPI curandGenerate(curandGenerator_t generator, unsigned int *outputPtr, size_t num)
{
    return sc_generate(generator, K_U32, outputPtr, num, sizeof *outputPtr, 0, 0);
}

curandStatus_t CURANDAPI curandGenerateLongLong(curandGenerator_t generator, unsigned long long *outputPtr,
                                                size_t num)
{
    return sc_generate(generator, K_U64, outputPtr, num, sizeof *outputPtr, 0, 0);
}

curandStatus_t CURANDAPI curandGenerateUniform(curandGenerator_t generator, float *outputPtr, size_t num)
{
    return sc_generate(generator, K_UNIF, outputPtr, num, sizeof *outputPtr, 0, 0);
}

curandStatus_t CURANDAPI curandGenerateUniformDouble(curandGenerator_t generator, double *outputPtr, size_t num)
{
    return sc_generate(generator, K_UNIF_D, outputPtr, num, sizeof *outputPtr, 0, 0);
}

curandStatus_t CURANDAPI curandGenerateNormal(curandGenerator_t generator, float *outputPtr, size_t n, float mean,
                                              float stddev)
{
    return sc_generate(generator, K_NORM, outputPtr, n, sizeof *outputPtr, mean, stddev);
}

curandStatus_t CURANDAPI curandGenerateNormalDouble(curandGenerator_t generator, double *outputPtr, size_t n,
                                                    double mean, double stddev)
{
    return sc_generate(generator, K_NORM_D, outputPtr, n, sizeof *outputPtr, mean, stddev);
}

curandStatus_t CURANDAPI curandGenerateLogNormal(curandGenerator_t generator, float *outputPtr, size_t n,
                                                 float mean, float stddev)
{
    return sc_generate(generator, K_LOGN, outputPtr, n, sizeof *outputPtr, mean, stddev);
}

curandStatus_t CURANDAPI curandGenerateLogNormalDouble(curandGenerator_t generator, double *outputPtr, size_t n,
                                                       double mean, double stddev)
{
    return sc_generate(generator, K_LOGN_D, outputPtr, n, sizeof *outputPtr, mean, stddev);
}

curandStatus_t CURANDAPI curandGeneratePoisson(curandGenerator_t generator, unsigned int *outputPtr, size_t n,
                                               double lambda)
{
    return sc_generate(generator, K_POIS, outputPtr, n, sizeof *outputPtr, lambda, 0);
}
