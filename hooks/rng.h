/* rng: cuRAND generator tracking, region replay, and the named RNG states.
 * (rng.c: real table, generators, hooks; rng_replay.c: region records and
 * replay; rng_named.c: the named states; rng_state.h: what they share.)
 *
 * A core module on the base layer only (log.h, driver.h's real dlsym); it
 * reaches the real cuRAND through its own function table, loaded with
 * dlopen("libcurand.so.10") and the real dlsym, so libckpt's calls never
 * re-enter the hooks. One mutex guards everything; a
 * hook costs the real call plus one lock and a short table scan.
 *
 * WHAT IS TRACKED. For each generator created through the hooks: type,
 * ordering, seed, stream and its position (the offset, in 32-bit results)
 * as it advances with each successful generate call.
 *
 * SUPPORTED FOR REPLAY (everything else is reported once, with a warning
 * naming the reason, and is never touched by a replay or a fork):
 *   types      CURAND_RNG_PSEUDO_XORWOW (= PSEUDO_DEFAULT), PSEUDO_MRG32K3A,
 *              PSEUDO_PHILOX4_32_10, device or host generators.
 *   orderings  CURAND_ORDERING_PSEUDO_DEFAULT, PSEUDO_BEST, PSEUDO_LEGACY.
 *   Not supported: MTGP32 and MT19937 (no skip-ahead [G], so no way to set
 *   a position); quasirandom generators (position per dimension, seedless);
 *   orderings PSEUDO_SEEDED (per-thread seeds instead of one skip-ahead
 *   sequence) and PSEUDO_DYNAMIC (the result order depends on the device
 *   [H]); a generator whose position became unknown (below) until the next
 *   curandSetGeneratorOffset gives it an absolute position again.
 *
 * OFFSET RULE PER CALL (position += ...; only on CURAND_STATUS_SUCCESS).
 * cuRAND documents what an offset means [G] but not how far a call moves
 * it, so every rule below was MEASURED [R] and anything that follows no
 * simple rule makes the position UNKNOWN instead of being guessed:
 *                                     XORWOW     MRG32K3A    PHILOX4_32_10
 *   curandGenerate, GenerateUniform   n          n           n
 *   curandGenerateUniformDouble       unknown    n           n
 *   Normal, LogNormal (n even [H]),
 *   NormalDouble, LogNormalDouble     unknown    unknown     n
 *   Poisson(Method), Binomial(Method) unknown    unknown     unknown
 *   curandGenerateLongLong            64-bit quasi only [H]: never replayable
 *   curandSetGeneratorOffset(o)       position = o (absolute [H])
 *   curandSetPseudoRandomGeneratorSeed  position kept [C, R]; PHILOX: kept
 *                                     only when nothing was drawn since the
 *                                     last absolute offset, else unknown [R]
 *   curandSetGeneratorOrdering        position kept [R]; PHILOX: as for
 *                                     the seed [R]
 * (e.g. XORWOW UniformDouble moved the position by n for n = 2, 6 and by
 * 2n for 4096, 18194 for 10002; MRG32K3A Normal by n/2 except with the
 * LEGACY ordering; PHILOX reseeded after drawing d results went to
 * offset + d/4.) Sources: [H] doc comments of curand.h (CUDA 13); [G] cuRAND
 * Library Programming Guide, Host API Overview and "Generator Options"
 * (offset = 100 -> the first number generated is the 100th of the
 * sequence; skip-ahead not available for MTGP32/MT19937; host and device
 * generators give the same sequences and every other call works
 * identically); [C] cudarc PR #185 (setting the seed re-initialises the
 * state but does not restart the sequence); [R] measured on the real
 * cuRAND 10.4.0 (CUDA 13 toolkit) with HOST generators, n in {2, 4096,
 * 10002} at offsets {0, 1000, 2000}, orderings DEFAULT, BEST, LEGACY:
 * tests/rng/host_rules.c `rules` (runs without a GPU:
 * LD_LIBRARY_PATH=/usr/local/cuda/lib64 build/tests/rng/rng_host_rules
 * rules). That device generators move exactly as host ones is [G]'s claim,
 * still to check on a GPU (tests/rng/gpu_check.sh). The test double
 * (tests/simdev/curand.c) implements these rules, and moves by a
 * deliberately irregular amount in the unknown cells.
 *
 * REPLAY. rng_region_opened(r) records every live generator's state, and a
 * copy of the named states. rng_replay_begin(r) sets each replayable
 * generator back to that state with curandSetPseudoRandomGeneratorSeed +
 * curandSetGeneratorOffset (host calls: cuRAND applies them to generate
 * calls made after them, in stream order on the generator's stream, so
 * work already enqueued keeps what it captured), and puts the recorded
 * named states in place; rng_replay_end() sets every generator and the
 * named states back to where they were at rng_replay_begin.
 *   - A generator created after the region opened (and before it closed, when
 *     rng_region_closed is called) restarts from its creation state: the
 *     seed/offset it had just before its first generate call (what a
 *     create-if-missing, seed, generate sequence gives it). One that never
 *     generated is left alone.
 *   - A generator whose position is unknown NOW (a Poisson call since the
 *     region opened) is left alone, with the warning: it could not be put
 *     back after the replay.
 *   - A replayable generator recorded at open and destroyed since makes
 *     rng_replay_begin fail with CKPT_ENOENT and one log line naming it;
 *     nothing is changed then (all or nothing).
 *   - Generators must not generate on other threads while a replay begins
 *     or ends (their calls would race the reset, as they would race any
 *     curandSetGeneratorOffset of the program).
 *
 * NAMED STATES (DeepSpeed's CudaRNGStatesTracker, for cuRAND generators).
 * A named state is a seed plus, per generator, the position reached while
 * forked into it (0 for a generator never forked into it). rng_fork(name)
 * switches every live replayable generator to (state seed, its position in
 * the state); rng_unfork() stores the positions reached into the state and
 * sets each generator back to its outer state. Forks nest. Generators in the
 * same named state draw the same sequence (same seed), as two devices
 * seeded alike would. rng_model_parallel_seed(seed, tp_rank) resets the
 * tracker, seeds every live replayable generator with `seed` at offset 0
 * (the default state) and adds "model-parallel-rng" = seed + 2718 + tp_rank.
 *
 * OTHER RULES
 *   - Locks: the rng mutex is taken inside the core lock (the region
 *     registry's calls) and never takes it. It calls the real cuRAND while
 *     held only from API calls, which run in-lib (api_rng.c): a driver call
 *     cuRAND makes then passes straight to the driver, without the core lock.
 *   - A hook entered while another hook runs on the same thread (libcurand
 *     calling its own exported curand* through the PLT, which the preload
 *     interposes) passes straight to the real function: tracked once.
 *   - At most 4096 region records not yet retired; beyond that the oldest
 *     is dropped (one warning): the core must call rng_region_retired.
 *   - Replay, fork and seeding work with no cuRAND in the process (nothing
 *     tracked: nothing to reset), so the Python recompute path may always
 *     call them; only the hooks load libcurand.so.10.
 *
 * WRAPPER CONTRACT (preload): each exported curand* wrapper returns
 * rng_hook_<name>(same arguments) and does nothing else:
 *   curandCreateGenerator -> rng_hook_create, curandCreateGeneratorHost ->
 *   rng_hook_create_host, curandDestroyGenerator -> rng_hook_destroy,
 *   curandSetPseudoRandomGeneratorSeed -> rng_hook_set_seed,
 *   curandSetGeneratorOffset -> rng_hook_set_offset,
 *   curandSetGeneratorOrdering -> rng_hook_set_ordering,
 *   curandSetStream -> rng_hook_set_stream, curandGenerate ->
 *   rng_hook_generate, curandGenerateLongLong -> rng_hook_generate_long_long,
 *   curandGenerateUniform(Double) -> rng_hook_generate_uniform(_double),
 *   curandGenerateNormal(Double) -> rng_hook_generate_normal(_double),
 *   curandGenerateLogNormal(Double) -> rng_hook_generate_log_normal(_double),
 *   curandGeneratePoisson(Method) -> rng_hook_generate_poisson(_method),
 *   curandGenerateBinomial(Method) -> rng_hook_generate_binomial(_method).
 * The region registry calls rng_region_opened(id) when a region opens,
 * rng_region_closed(id) when it closes, rng_region_retired(id) when it can
 * no longer be recomputed. preload/curand.c holds the wrappers (rows CURAND
 * of preload/hooked.def); api.c and region.c call the region functions;
 * api_rng.c is the public API over the rest.
 *
 * Return codes are the CKPT_E* values of include/ckpt.h: 0 on success.
 */
#ifndef CKPT_RNG_H
#define CKPT_RNG_H

#include <curand.h>
#include <stdbool.h>
#include <stddef.h>

#define RNG_NAME_MAX 64                 /* named state names, with the NUL */
#define RNG_MODEL_PARALLEL_NAME "model-parallel-rng"
#define RNG_MODEL_PARALLEL_OFFSET 2718ull

/* Loads the real cuRAND table. `resolve` (may be NULL) maps a curand* name to
 * the real function (tests); NULL means dlopen("libcurand.so.10") + the real
 * dlsym (ckpt_real_dlsym) on that handle, never the preload's override. Called lazily by the
 * first hook; an explicit call must come before it. Returns 0, or
 * CKPT_EDRIVER when the library or a required symbol is missing. */
int rng_load(void *(*resolve)(const char *name));

/* ---- Hooks: one per hooked function. Each calls the real function through
 * the table and updates the tracker; they return what cuRAND returned
 * (CURAND_STATUS_INITIALIZATION_FAILED when the real library is missing). */
curandStatus_t rng_hook_create(curandGenerator_t *generator, curandRngType_t rng_type);
curandStatus_t rng_hook_create_host(curandGenerator_t *generator, curandRngType_t rng_type);
curandStatus_t rng_hook_destroy(curandGenerator_t generator);
curandStatus_t rng_hook_set_seed(curandGenerator_t generator, unsigned long long seed);
curandStatus_t rng_hook_set_offset(curandGenerator_t generator, unsigned long long offset);
curandStatus_t rng_hook_set_ordering(curandGenerator_t generator, curandOrdering_t order);
curandStatus_t rng_hook_set_stream(curandGenerator_t generator, cudaStream_t stream);
curandStatus_t rng_hook_generate(curandGenerator_t generator, unsigned int *out, size_t num);
curandStatus_t rng_hook_generate_long_long(curandGenerator_t generator, unsigned long long *out, size_t num);
curandStatus_t rng_hook_generate_uniform(curandGenerator_t generator, float *out, size_t num);
curandStatus_t rng_hook_generate_uniform_double(curandGenerator_t generator, double *out, size_t num);
curandStatus_t rng_hook_generate_normal(curandGenerator_t generator, float *out, size_t n, float mean,
                                        float stddev);
curandStatus_t rng_hook_generate_normal_double(curandGenerator_t generator, double *out, size_t n, double mean,
                                               double stddev);
curandStatus_t rng_hook_generate_log_normal(curandGenerator_t generator, float *out, size_t n, float mean,
                                            float stddev);
curandStatus_t rng_hook_generate_log_normal_double(curandGenerator_t generator, double *out, size_t n,
                                                   double mean, double stddev);
curandStatus_t rng_hook_generate_poisson(curandGenerator_t generator, unsigned int *out, size_t n, double lambda);
curandStatus_t rng_hook_generate_poisson_method(curandGenerator_t generator, unsigned int *out, size_t n,
                                                double lambda, curandMethod_t method);
curandStatus_t rng_hook_generate_binomial(curandGenerator_t generator, unsigned int *out, size_t num,
                                          unsigned int n, double p);
curandStatus_t rng_hook_generate_binomial_method(curandGenerator_t generator, unsigned int *out, size_t num,
                                                 unsigned int n, double p, curandMethod_t method);

/* ---- Regions (called by the region registry). */
void rng_region_opened(int region);
void rng_region_closed(int region);  /* optional: bounds "created inside" */
void rng_region_retired(int region); /* frees the record */
/* 0; CKPT_ENOENT (no record for the region, or a recorded generator was
 * destroyed: logged); CKPT_ESTATE (a replay is already active); CKPT_EDRIVER
 * (a real call failed: logged, everything already changed is put back). */
int rng_replay_begin(int region);
/* 0; CKPT_ESTATE when no replay is active. */
int rng_replay_end(void);

/* ---- Named states. */
struct ckpt_rng_states; /* a copy of the tracker's states (opaque) */
/* CKPT_EINVAL: NULL/empty/too long name, or a name or seed already added
 * (one log line says which); CKPT_ENOMEM. */
int rng_add(const char *name, unsigned long long seed);
/* name NULL = "model-parallel-rng". CKPT_ENOENT: not added (logged);
 * CKPT_ESTATE: forks nested too deep; CKPT_EDRIVER: a real call failed. */
int rng_fork(const char *name);
int rng_unfork(void); /* CKPT_ESTATE: not forked */
int rng_get_states(struct ckpt_rng_states **out);   /* a deep copy; CKPT_ENOMEM */
int rng_set_states(const struct ckpt_rng_states *states); /* copied in; seeds kept, as the reference does */
void rng_states_free(struct ckpt_rng_states *states);
int rng_states_count(const struct ckpt_rng_states *states);
/* Entry i: its name (valid while `states` lives) and seed. CKPT_EINVAL out of range. */
int rng_states_entry(const struct ckpt_rng_states *states, int i, const char **name, unsigned long long *seed);
int rng_reset(void); /* no named states, no seeds (forks must be closed: CKPT_ESTATE otherwise) */
int rng_model_parallel_seed(unsigned long long seed, int tp_rank);

/* ---- Introspection (tests, stats). */
struct rng_gen_info {
  curandRngType_t type;       /* resolved: PSEUDO_DEFAULT reads as XORWOW */
  curandOrdering_t ordering;
  unsigned long long seed;
  unsigned long long offset;  /* tracked position, meaningful when position_known */
  bool position_known;
  bool replayable;
  cudaStream_t stream;
};
/* 0, or CKPT_ENOENT for a generator the tracker does not know. */
int rng_generator_info(curandGenerator_t generator, struct rng_gen_info *out);
int rng_live_generators(void);
/* Forgets generators, records, named states and an active replay (tests). */
void rng_forget_all(void);

#endif /* CKPT_RNG_H */
