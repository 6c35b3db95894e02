/* The API's RNG half (include/ckpt.h, "random numbers"): replay of a region's
 * cuRAND draws and the named RNG states, over the rng module (rng.h). Same
 * prologue as api.c. Each call runs in-lib: the rng module calls the real
 * cuRAND under its own lock, and a driver call cuRAND makes then (a kernel
 * launch, an allocation for a generator's state) must go straight to the
 * driver, untagged and without the core lock. */
#include "api.h"
#include "ckpt.h"
#include "rng.h"

#define IN_LIB(call)      \
  do {                    \
    IN_LIB_BEGIN();       \
    int rc_ = (call);     \
    IN_LIB_END();         \
    return rc_;           \
  } while (0)

CKPT_API int ckpt_region_replay_begin(int region) {
  API_ENTER();
  IN_LIB(rng_replay_begin(region));
}

CKPT_API int ckpt_region_replay_end(void) {
  API_ENTER();
  IN_LIB(rng_replay_end());
}

CKPT_API int ckpt_rng_add(const char *name, unsigned long long seed) {
  API_ENTER();
  return rng_add(name, seed);
}

CKPT_API int ckpt_rng_fork(const char *name) {
  API_ENTER();
  IN_LIB(rng_fork(name));
}

CKPT_API int ckpt_rng_unfork(void) {
  API_ENTER();
  IN_LIB(rng_unfork());
}

CKPT_API int ckpt_rng_get_states(struct ckpt_rng_states **out) {
  API_ENTER();
  return rng_get_states(out);
}

CKPT_API int ckpt_rng_set_states(const struct ckpt_rng_states *states) {
  API_ENTER();
  return rng_set_states(states);
}

/* No prologue: freeing and reading a copy work in any process. */
CKPT_API void ckpt_rng_states_free(struct ckpt_rng_states *states) { rng_states_free(states); }
CKPT_API int ckpt_rng_states_count(const struct ckpt_rng_states *states) { return rng_states_count(states); }
CKPT_API int ckpt_rng_states_entry(const struct ckpt_rng_states *states, int i, const char **name,
                                   unsigned long long *seed) {
  return rng_states_entry(states, i, name, seed);
}

CKPT_API int ckpt_rng_reset(void) {
  API_ENTER();
  return rng_reset();
}

CKPT_API int ckpt_rng_model_parallel_seed(unsigned long long seed, int tp_rank) {
  API_ENTER();
  IN_LIB(rng_model_parallel_seed(seed, tp_rank));
}
