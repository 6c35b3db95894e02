/* rng: replay checks and resets, the region records and replay, and the
 * storage of the named states (rules in rng.h, shared state in rng_state.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "rng_state.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"
#include "log.h"

struct snap *rng_snaps, *rng_snaps_tail;
int rng_nsnaps;
struct ckpt_rng_states rng_named;
unsigned long long *rng_seeds;
int rng_nseeds, rng_capseeds;
struct rng_replay_state rng_replay_state;

static const char *type_name(curandRngType_t t) {
  switch (t) {
  case CURAND_RNG_PSEUDO_XORWOW: return "XORWOW";
  case CURAND_RNG_PSEUDO_MRG32K3A: return "MRG32K3A";
  case CURAND_RNG_PSEUDO_MTGP32: return "MTGP32";
  case CURAND_RNG_PSEUDO_MT19937: return "MT19937";
  case CURAND_RNG_PSEUDO_PHILOX4_32_10: return "PHILOX4_32_10";
  default: return "quasirandom";
  }
}

bool rng_type_ok(curandRngType_t t) {
  return t == CURAND_RNG_PSEUDO_XORWOW || t == CURAND_RNG_PSEUDO_MRG32K3A || t == CURAND_RNG_PSEUDO_PHILOX4_32_10;
}

bool rng_ordering_ok(curandOrdering_t o) {
  return o == CURAND_ORDERING_PSEUDO_DEFAULT || o == CURAND_ORDERING_PSEUDO_BEST ||
         o == CURAND_ORDERING_PSEUDO_LEGACY;
}

bool rng_state_ok(const struct gen *g, const struct gen_state *st) {
  return rng_type_ok(g->type) && rng_ordering_ok(st->ordering) && st->known;
}

bool rng_replayable(const struct gen *g) { return rng_state_ok(g, &g->st); }

/* Warns once per generator, with the reason. */
void rng_warn_unreplayable(struct gen *g) {
  if (g->warned) return;
  g->warned = true;
  if (!rng_type_ok(g->type))
    CKPT_WARN("rng: generator %p (%s) is not replayable: only XORWOW, MRG32K3A and PHILOX4_32_10 are; "
              "a recompute will draw other numbers",
              (void *)g->h, type_name(g->type));
  else if (!rng_ordering_ok(g->st.ordering))
    CKPT_WARN("rng: generator %p (%s, ordering %d) is not replayable: only orderings PSEUDO_DEFAULT, BEST "
              "and LEGACY are; a recompute will draw other numbers",
              (void *)g->h, type_name(g->type), (int)g->st.ordering);
  else
    CKPT_WARN("rng: generator %p (%s) is not replayable until its next curandSetGeneratorOffset: a call "
              "moved it by an amount cuRAND does not document (see rng.h for the calls that are tracked)",
              (void *)g->h, type_name(g->type));
}

/* Sets a generator through the real API: ordering (when it differs), seed,
 * then the absolute offset. */
curandStatus_t rng_apply(struct gen *g, const struct gen_state *st) {
  curandStatus_t s = CURAND_STATUS_SUCCESS;
  /* Already there: no call (re-seeding re-initialises XORWOW's state, which
   * costs a kernel). */
  if (g->st.known && st->known && g->st.seed == st->seed && g->st.offset == st->offset &&
      g->st.ordering == st->ordering)
    return s;
  if (st->ordering != g->st.ordering) {
    s = rng_real.curandSetGeneratorOrdering(g->h, st->ordering);
    if (s == CURAND_STATUS_SUCCESS) g->st.ordering = st->ordering;
  }
  if (s == CURAND_STATUS_SUCCESS) s = rng_real.curandSetPseudoRandomGeneratorSeed(g->h, st->seed);
  if (s == CURAND_STATUS_SUCCESS) s = rng_real.curandSetGeneratorOffset(g->h, st->offset);
  if (s == CURAND_STATUS_SUCCESS) {
    g->st = *st;
    g->anchor = st->offset;
  }
  return s;
}

/* Puts a frame's generators back (those still alive) and empties it. */
void rng_restore_frame(struct frame *f) {
  for (int i = f->n - 1; i >= 0; i--) {
    struct gen *g = rng_find_id(f->s[i].id);
    if (!g) continue;
    curandStatus_t s = rng_apply(g, &f->s[i].st);
    if (s != CURAND_STATUS_SUCCESS)
      CKPT_WARN("rng: generator %p: cannot set it back (cuRAND status %d); its sequence is changed",
                (void *)g->h, (int)s);
  }
  free(f->s);
  f->s = NULL;
  f->n = 0;
}

bool rng_frame_push(struct frame *f, int *cap, struct gen *g) {
  if (!rng_grow((void **)&f->s, cap, f->n + 1, sizeof *f->s)) return false;
  f->s[f->n].id = g->id;
  f->s[f->n].st = g->st;
  f->n++;
  return true;
}

/* ---- named states: copies ---------------------------------------------- */

void rng_states_clear(struct ckpt_rng_states *s) {
  for (int i = 0; i < s->n; i++) free(s->v[i].pos);
  free(s->v);
  s->v = NULL;
  s->n = 0;
}

int rng_states_copy(struct ckpt_rng_states *dst, const struct ckpt_rng_states *src) {
  struct ckpt_rng_states t = {0};
  if (src->n) {
    t.v = calloc((size_t)src->n, sizeof *t.v);
    if (!t.v) return CKPT_ENOMEM;
    for (int i = 0; i < src->n; i++) {
      t.v[i] = src->v[i];
      t.v[i].pos = NULL;
      t.v[i].cap = t.v[i].npos = 0;
      if (src->v[i].npos) {
        t.v[i].pos = malloc((size_t)src->v[i].npos * sizeof *t.v[i].pos);
        if (!t.v[i].pos) {
          t.n = i;
          rng_states_clear(&t);
          return CKPT_ENOMEM;
        }
        memcpy(t.v[i].pos, src->v[i].pos, (size_t)src->v[i].npos * sizeof *t.v[i].pos);
        t.v[i].npos = t.v[i].cap = src->v[i].npos;
      }
      t.n = i + 1;
    }
  }
  rng_states_clear(dst);
  *dst = t;
  return 0;
}


/* ---- regions ----------------------------------------------------------- */

static struct snap *snap_find(int region) {
  for (struct snap *s = rng_snaps; s; s = s->next)
    if (s->region == region) return s;
  return NULL;
}

void rng_snap_free(struct snap *s) {
  free(s->e);
  rng_states_clear(&s->named);
  free(s);
}

static void snap_unlink(struct snap *s) {
  struct snap **pp = &rng_snaps, *prev = NULL;
  while (*pp != s) {
    prev = *pp;
    pp = &(*pp)->next;
  }
  *pp = s->next;
  if (rng_snaps_tail == s) rng_snaps_tail = prev;
  rng_nsnaps--;
}

void rng_region_opened(int region) {
  pthread_mutex_lock(&rng_mu);
  struct snap *old = snap_find(region);
  if (old) { /* an id reused before retire: the newer open wins */
    snap_unlink(old);
    rng_snap_free(old);
  }
  if (rng_nsnaps == RECORDS_MAX) {
    struct snap *oldest = rng_snaps;
    CKPT_WARN_ONCE("rng: more than %d regions recorded and not retired: dropping the oldest (region %d "
                   "can no longer be replayed)",
                   RECORDS_MAX, oldest->region);
    snap_unlink(oldest);
    rng_snap_free(oldest);
  }
  struct snap *s = calloc(1, sizeof *s);
  if (s && rng_ngens) s->e = calloc((size_t)rng_ngens, sizeof *s->e);
  if (!s || (rng_ngens && !s->e) || rng_states_copy(&s->named, &rng_named) != 0) {
    if (s) rng_snap_free(s);
    pthread_mutex_unlock(&rng_mu);
    CKPT_WARN("rng: out of memory: region %d is not replayable", region);
    return;
  }
  s->region = region;
  s->open_ev = ++rng_ev;
  for (int i = 0; i < rng_ngens; i++) {
    struct gen *g = rng_gens[i];
    bool ok = rng_replayable(g);
    if (!ok) rng_warn_unreplayable(g);
    s->e[s->n++] = (struct snap_entry){.id = g->id, .h = g->h, .st = g->st, .replayable = ok};
  }
  if (rng_snaps_tail)
    rng_snaps_tail->next = s;
  else
    rng_snaps = s;
  rng_snaps_tail = s;
  rng_nsnaps++;
  pthread_mutex_unlock(&rng_mu);
}

void rng_region_closed(int region) {
  pthread_mutex_lock(&rng_mu);
  struct snap *s = snap_find(region);
  if (s && !s->close_ev) s->close_ev = ++rng_ev;
  pthread_mutex_unlock(&rng_mu);
}

void rng_region_retired(int region) {
  pthread_mutex_lock(&rng_mu);
  struct snap *s = snap_find(region);
  if (s) {
    snap_unlink(s);
    rng_snap_free(s);
  }
  pthread_mutex_unlock(&rng_mu);
}

static bool born_inside(const struct snap *s, const struct gen *g) {
  return g->born > s->open_ev && (!s->close_ev || g->born < s->close_ev);
}

/* No loaded() here: a tracked generator implies the table is loaded, and a
 * program without cuRAND (the Python recompute path) must not need it. */
int rng_replay_begin(int region) {
  pthread_mutex_lock(&rng_mu);
  int rc = 0;
  if (rng_replay_state.active) {
    CKPT_WARN("rng: replay of region %d requested while region %d is being replayed", region, rng_replay_state.region);
    rc = CKPT_ESTATE;
    goto out;
  }
  struct snap *s = snap_find(region);
  if (!s) {
    CKPT_WARN("rng: region %d has no recorded RNG state (never opened, or retired)", region);
    rc = CKPT_ENOENT;
    goto out;
  }
  /* All or nothing: every replayable generator recorded must still exist. */
  for (int i = 0; i < s->n; i++)
    if (s->e[i].replayable && !rng_find_id(s->e[i].id)) {
      CKPT_WARN("rng: region %d cannot be replayed: cuRAND generator %p was destroyed after the region "
                "opened; its numbers cannot be drawn again",
                region, (void *)s->e[i].h);
      rc = CKPT_ENOENT;
      goto out;
    }
  struct frame f = {0};
  int cap = 0;
  for (int i = 0; i < rng_ngens && rc == 0; i++) {
    struct gen *g = rng_gens[i];
    const struct gen_state *target = NULL;
    for (int k = 0; k < s->n; k++)
      if (s->e[k].id == g->id) {
        target = s->e[k].replayable ? &s->e[k].st : NULL;
        break;
      }
    if (!target && born_inside(s, g) && g->has_first) {
      if (rng_state_ok(g, &g->first))
        target = &g->first;
      else
        rng_warn_unreplayable(g);
    }
    if (!target) continue;
    if (!g->st.known) { /* could not be put back afterwards: leave it alone */
      rng_warn_unreplayable(g);
      continue;
    }
    if (!rng_frame_push(&f, &cap, g)) {
      rc = CKPT_ENOMEM;
      break;
    }
    curandStatus_t st = rng_apply(g, target);
    if (st != CURAND_STATUS_SUCCESS) {
      CKPT_WARN("rng: region %d: cannot reset generator %p (cuRAND status %d); replay abandoned", region,
                (void *)g->h, (int)st);
      rc = CKPT_EDRIVER;
    }
  }
  if (rc == 0) {
    struct ckpt_rng_states cur = {0};
    rc = rng_states_copy(&cur, &rng_named);
    if (rc == 0) rc = rng_states_copy(&rng_named, &s->named);
    if (rc == 0) {
      rng_replay_state.named = cur;
    } else {
      rng_states_clear(&cur);
    }
  }
  if (rc != 0) {
    rng_restore_frame(&f);
    goto out;
  }
  rng_replay_state.active = true;
  rng_replay_state.region = region;
  rng_replay_state.f = f;
out:
  pthread_mutex_unlock(&rng_mu);
  return rc;
}

int rng_replay_end(void) {
  pthread_mutex_lock(&rng_mu);
  if (!rng_replay_state.active) {
    pthread_mutex_unlock(&rng_mu);
    return CKPT_ESTATE;
  }
  rng_restore_frame(&rng_replay_state.f);
  rng_states_clear(&rng_named);
  rng_named = rng_replay_state.named;
  rng_replay_state.named = (struct ckpt_rng_states){0};
  rng_replay_state.active = false;
  pthread_mutex_unlock(&rng_mu);
  return 0;
}
