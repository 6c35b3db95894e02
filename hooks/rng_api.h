/* The public RNG API of libckpt (to move into include/ckpt.h).
 *
 * Return values follow ckpt.h: 0 on success, a negative CKPT_E* code on
 * failure (with one log line saying why); nothing aborts the process. The
 * rules (supported cuRAND generator types and orderings, how positions are
 * tracked) are in hooks/rng.h. */
#ifndef CKPT_RNG_API_H
#define CKPT_RNG_API_H

#ifdef __cplusplus
extern "C" {
#endif

/* ---- replay of a region's random numbers --------------------------------- */

/* Sets every replayable cuRAND generator (and the named RNG states) back to
 * the state recorded when `region` opened, so that recomputing the region
 * draws exactly the numbers its first forward drew. A generator created
 * inside the region restarts from its state before its first draw.
 * Returns 0; CKPT_ENOENT when the region has no record (never opened, or
 * retired) or a generator it used was destroyed since (nothing is changed
 * then); CKPT_ESTATE when a replay is already active; CKPT_EDRIVER when
 * cuRAND refused a reset (everything is put back). Not replayable generators
 * (see rng.h) are left alone, with one warning each. */
int ckpt_region_replay_begin(int region);

/* Puts every generator reset by ckpt_region_replay_begin, and the named RNG
 * states, back where they were when it was called: the forward continues its
 * own sequence as if no replay had happened. CKPT_ESTATE when no replay is
 * active. */
int ckpt_region_replay_end(void);

/* ---- named RNG states (DeepSpeed's CudaRNGStatesTracker) ------------------ */

/* Adds a named state seeded with `seed`. CKPT_EINVAL when the name is NULL,
 * empty or 64 bytes or longer, or when the name or the seed was already
 * added (the tracker refuses both, as the reference does). */
int ckpt_rng_add(const char *name, unsigned long long seed);

/* Switches every replayable cuRAND generator to the named state (NULL =
 * "model-parallel-rng") until ckpt_rng_unfork. Forks nest (16 deep).
 * CKPT_ENOENT when the name was never added. */
int ckpt_rng_fork(const char *name);

/* Leaves the innermost fork: the named state keeps the positions its
 * generators reached, and they return to the outer state. CKPT_ESTATE when
 * not forked. */
int ckpt_rng_unfork(void);

/* A copy of all named states (names, seeds, positions), for saving around a
 * recompute the way the reference's get_states/set_states are used. */
struct ckpt_rng_states;

/* *out receives a new copy, to be freed with ckpt_rng_states_free. */
int ckpt_rng_get_states(struct ckpt_rng_states **out);

/* Replaces the named states with a copy of `states` (the set of seeds
 * already added is kept, as the reference does). */
int ckpt_rng_set_states(const struct ckpt_rng_states *states);

void ckpt_rng_states_free(struct ckpt_rng_states *states);

/* Number of named states in a copy (>= 0), and entry i's name (valid while
 * the copy lives) and seed. */
int ckpt_rng_states_count(const struct ckpt_rng_states *states);
int ckpt_rng_states_entry(const struct ckpt_rng_states *states, int i, const char **name,
                          unsigned long long *seed);

/* Forgets every named state and seed (the reference's reset). */
int ckpt_rng_reset(void);

/* Model-parallel seeding: resets the tracker, puts every replayable cuRAND
 * generator in the default state (seed `seed`, offset 0) and adds the state
 * "model-parallel-rng" with seed seed + 2718 + tp_rank. CKPT_EINVAL for a
 * negative tp_rank. */
int ckpt_rng_model_parallel_seed(unsigned long long seed, int tp_rank);

#ifdef __cplusplus
}
#endif

#endif /* CKPT_RNG_API_H */
