/* The public RNG API: thin functions over the rng module (rng.h). */
#include "rng_api.h"

#include "rng.h"

#define RNG_API __attribute__((visibility("default")))

RNG_API int ckpt_region_replay_begin(int region) { return rng_replay_begin(region); }
RNG_API int ckpt_region_replay_end(void) { return rng_replay_end(); }
RNG_API int ckpt_rng_add(const char *name, unsigned long long seed) { return rng_add(name, seed); }
RNG_API int ckpt_rng_fork(const char *name) { return rng_fork(name); }
RNG_API int ckpt_rng_unfork(void) { return rng_unfork(); }
RNG_API int ckpt_rng_get_states(struct ckpt_rng_states **out) { return rng_get_states(out); }
RNG_API int ckpt_rng_set_states(const struct ckpt_rng_states *states) { return rng_set_states(states); }
RNG_API void ckpt_rng_states_free(struct ckpt_rng_states *states) { rng_states_free(states); }
RNG_API int ckpt_rng_states_count(const struct ckpt_rng_states *states) { return rng_states_count(states); }
RNG_API int ckpt_rng_states_entry(const struct ckpt_rng_states *states, int i, const char **name,
                                  unsigned long long *seed) {
  return rng_states_entry(states, i, name, seed);
}
RNG_API int ckpt_rng_reset(void) { return rng_reset(); }
RNG_API int ckpt_rng_model_parallel_seed(unsigned long long seed, int tp_rank) {
  return rng_model_parallel_seed(seed, tp_rank);
}
