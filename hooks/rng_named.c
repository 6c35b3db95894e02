/* rng: the named RNG states' verbs (DeepSpeed's tracker for cuRAND
 * generators) and introspection (rules in rng.h, state in rng_state.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "rng_state.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"
#include "log.h"

static struct {
  struct frame f;
  char name[RNG_NAME_MAX];
} forks[FORK_DEPTH_MAX];
static int nforks;

static struct named *named_find(const char *name) {
  for (int i = 0; i < rng_named.n; i++)
    if (strcmp(rng_named.v[i].name, name) == 0) return &rng_named.v[i];
  return NULL;
}

static unsigned long long named_pos(const struct named *s, uint64_t id) {
  for (int i = 0; i < s->npos; i++)
    if (s->pos[i].id == id) return s->pos[i].offset;
  return 0;
}

static bool named_set_pos(struct named *s, uint64_t id, unsigned long long off) {
  for (int i = 0; i < s->npos; i++)
    if (s->pos[i].id == id) {
      s->pos[i].offset = off;
      return true;
    }
  if (!rng_grow((void **)&s->pos, &s->cap, s->npos + 1, sizeof *s->pos)) return false;
  s->pos[s->npos].id = id;
  s->pos[s->npos].offset = off;
  s->npos++;
  return true;
}


/* ---- named states ------------------------------------------------------ */

int rng_add(const char *name, unsigned long long seed) {
  if (!name || !*name || strlen(name) >= RNG_NAME_MAX) return CKPT_EINVAL;
  pthread_mutex_lock(&rng_mu);
  int rc = 0;
  for (int i = 0; i < rng_nseeds; i++)
    if (rng_seeds[i] == seed) {
      CKPT_WARN("rng: cannot add RNG state '%s': seed %llu already exists", name, seed);
      rc = CKPT_EINVAL;
      goto out;
    }
  if (named_find(name)) {
    CKPT_WARN("rng: cannot add RNG state '%s': it already exists", name);
    rc = CKPT_EINVAL;
    goto out;
  }
  int capn = rng_named.n; /* exact-size array: grow by one */
  struct named *v = realloc(rng_named.v, (size_t)(capn + 1) * sizeof *v);
  if (!v || !rng_grow((void **)&rng_seeds, &rng_capseeds, rng_nseeds + 1, sizeof *rng_seeds)) {
    if (v) rng_named.v = v;
    rc = CKPT_ENOMEM;
    goto out;
  }
  rng_named.v = v;
  memset(&v[rng_named.n], 0, sizeof *v);
  strcpy(v[rng_named.n].name, name);
  v[rng_named.n].seed = seed;
  rng_named.n++;
  rng_seeds[rng_nseeds++] = seed;
out:
  pthread_mutex_unlock(&rng_mu);
  return rc;
}

int rng_fork(const char *name) {
  if (!name) name = RNG_MODEL_PARALLEL_NAME;
  pthread_mutex_lock(&rng_mu);
  int rc = 0;
  struct named *st = named_find(name);
  if (!st) {
    CKPT_WARN("rng: cannot fork RNG state '%s': it is not added", name);
    rc = CKPT_ENOENT;
    goto out;
  }
  if (nforks == FORK_DEPTH_MAX) {
    CKPT_WARN("rng: cannot fork RNG state '%s': forks nested deeper than %d", name, FORK_DEPTH_MAX);
    rc = CKPT_ESTATE;
    goto out;
  }
  struct frame f = {0};
  int cap = 0;
  for (int i = 0; i < rng_ngens && rc == 0; i++) {
    struct gen *g = rng_gens[i];
    if (!rng_replayable(g)) {
      rng_warn_unreplayable(g);
      continue;
    }
    if (!rng_frame_push(&f, &cap, g)) {
      rc = CKPT_ENOMEM;
      break;
    }
    struct gen_state target = {
        .seed = st->seed, .offset = named_pos(st, g->id), .ordering = g->st.ordering, .known = true};
    curandStatus_t s = rng_apply(g, &target);
    if (s != CURAND_STATUS_SUCCESS) {
      CKPT_WARN("rng: fork '%s': cannot set generator %p (cuRAND status %d)", name, (void *)g->h, (int)s);
      rc = CKPT_EDRIVER;
    }
  }
  if (rc != 0) {
    rng_restore_frame(&f);
    goto out;
  }
  forks[nforks].f = f;
  snprintf(forks[nforks].name, sizeof forks[nforks].name, "%s", name);
  nforks++;
out:
  pthread_mutex_unlock(&rng_mu);
  return rc;
}

int rng_unfork(void) {
  pthread_mutex_lock(&rng_mu);
  if (nforks == 0) {
    pthread_mutex_unlock(&rng_mu);
    return CKPT_ESTATE;
  }
  nforks--;
  /* The state may have been replaced by set_states meanwhile: by name. */
  struct named *st = named_find(forks[nforks].name);
  int rc = 0;
  for (int i = 0; st && i < forks[nforks].f.n; i++) {
    struct gen *g = rng_find_id(forks[nforks].f.s[i].id);
    if (g && g->st.known && !named_set_pos(st, g->id, g->st.offset)) rc = CKPT_ENOMEM;
  }
  rng_restore_frame(&forks[nforks].f);
  pthread_mutex_unlock(&rng_mu);
  return rc;
}

int rng_get_states(struct ckpt_rng_states **out) {
  if (!out) return CKPT_EINVAL;
  struct ckpt_rng_states *s = calloc(1, sizeof *s);
  if (!s) return CKPT_ENOMEM;
  pthread_mutex_lock(&rng_mu);
  int rc = rng_states_copy(s, &rng_named);
  pthread_mutex_unlock(&rng_mu);
  if (rc) {
    free(s);
    return rc;
  }
  *out = s;
  return 0;
}

int rng_set_states(const struct ckpt_rng_states *states) {
  if (!states) return CKPT_EINVAL;
  pthread_mutex_lock(&rng_mu);
  int rc = rng_states_copy(&rng_named, states);
  pthread_mutex_unlock(&rng_mu);
  return rc;
}

void rng_states_free(struct ckpt_rng_states *states) {
  if (!states) return;
  rng_states_clear(states);
  free(states);
}

int rng_states_count(const struct ckpt_rng_states *states) {
  return states ? states->n : CKPT_EINVAL;
}

int rng_states_entry(const struct ckpt_rng_states *states, int i, const char **name, unsigned long long *seed) {
  if (!states || i < 0 || i >= states->n) return CKPT_EINVAL;
  if (name) *name = states->v[i].name;
  if (seed) *seed = states->v[i].seed;
  return 0;
}

int rng_reset(void) {
  pthread_mutex_lock(&rng_mu);
  if (nforks) {
    pthread_mutex_unlock(&rng_mu);
    CKPT_WARN("rng: cannot reset the RNG states inside a fork");
    return CKPT_ESTATE;
  }
  rng_states_clear(&rng_named);
  rng_nseeds = 0;
  pthread_mutex_unlock(&rng_mu);
  return 0;
}

int rng_model_parallel_seed(unsigned long long seed, int tp_rank) {
  if (tp_rank < 0) return CKPT_EINVAL;
  int rc = rng_reset();
  if (rc) return rc;
  /* The default state: every replayable generator at (seed, 0). */
  pthread_mutex_lock(&rng_mu);
  for (int i = 0; i < rng_ngens; i++) {
    struct gen *g = rng_gens[i];
    struct gen_state def = {.seed = seed, .offset = 0, .ordering = g->st.ordering, .known = true};
    if (!rng_type_ok(g->type) || !rng_ordering_ok(g->st.ordering)) {
      rng_warn_unreplayable(g);
      continue;
    }
    curandStatus_t s = rng_apply(g, &def);
    if (s != CURAND_STATUS_SUCCESS) {
      CKPT_WARN("rng: model-parallel seed: cannot seed generator %p (cuRAND status %d)", (void *)g->h, (int)s);
      rc = CKPT_EDRIVER;
    }
  }
  pthread_mutex_unlock(&rng_mu);
  int rc2 = rng_add(RNG_MODEL_PARALLEL_NAME, seed + RNG_MODEL_PARALLEL_OFFSET + (unsigned long long)tp_rank);
  return rc ? rc : rc2;
}

/* ---- introspection ----------------------------------------------------- */

int rng_generator_info(curandGenerator_t generator, struct rng_gen_info *out) {
  pthread_mutex_lock(&rng_mu);
  struct gen *g = generator ? rng_find(generator) : NULL;
  if (g && out)
    *out = (struct rng_gen_info){.type = g->type,
                                 .ordering = g->st.ordering,
                                 .seed = g->st.seed,
                                 .offset = g->st.offset,
                                 .position_known = g->st.known,
                                 .replayable = rng_replayable(g),
                                 .stream = g->stream};
  pthread_mutex_unlock(&rng_mu);
  return g ? 0 : CKPT_ENOENT;
}

int rng_live_generators(void) {
  pthread_mutex_lock(&rng_mu);
  int n = rng_ngens;
  pthread_mutex_unlock(&rng_mu);
  return n;
}

void rng_forget_all(void) {
  pthread_mutex_lock(&rng_mu);
  for (int i = 0; i < rng_ngens; i++) free(rng_gens[i]);
  rng_ngens = 0;
  while (rng_snaps) {
    struct snap *s = rng_snaps;
    rng_snaps = s->next;
    rng_snap_free(s);
  }
  rng_snaps_tail = NULL;
  rng_nsnaps = 0;
  free(rng_replay_state.f.s);
  rng_states_clear(&rng_replay_state.named);
  memset(&rng_replay_state, 0, sizeof rng_replay_state);
  for (int i = 0; i < nforks; i++) free(forks[i].f.s);
  nforks = 0;
  rng_states_clear(&rng_named);
  rng_nseeds = 0;
  pthread_mutex_unlock(&rng_mu);
}
