/* rng's internal state, shared by its three files and by nothing else (the
 * other modules use rng.h): rng.c (the real cuRAND table, the generators, the
 * hooks), rng_replay.c (the checks and resets, the region records, replay,
 * the named states' storage), rng_named.c (the tracker's verbs, introspection).
 * Everything here is guarded by rng_mu. */
#ifndef CKPT_RNG_STATE_H
#define CKPT_RNG_STATE_H
#include <pthread.h>
#include <stdint.h>

#include "rng.h"

/* ---- the real cuRAND (rng.c) --------------------------------------------- */

#define RNG_REAL_FUNCS(X)                                                                                    \
  X(1, curandCreateGenerator, curandStatus_t, (curandGenerator_t *, curandRngType_t))                        \
  X(0, curandCreateGeneratorHost, curandStatus_t, (curandGenerator_t *, curandRngType_t))                    \
  X(1, curandDestroyGenerator, curandStatus_t, (curandGenerator_t))                                          \
  X(1, curandSetPseudoRandomGeneratorSeed, curandStatus_t, (curandGenerator_t, unsigned long long))          \
  X(1, curandSetGeneratorOffset, curandStatus_t, (curandGenerator_t, unsigned long long))                    \
  X(1, curandSetGeneratorOrdering, curandStatus_t, (curandGenerator_t, curandOrdering_t))                    \
  X(1, curandSetStream, curandStatus_t, (curandGenerator_t, cudaStream_t))                                   \
  X(1, curandGenerate, curandStatus_t, (curandGenerator_t, unsigned int *, size_t))                          \
  X(0, curandGenerateLongLong, curandStatus_t, (curandGenerator_t, unsigned long long *, size_t))            \
  X(1, curandGenerateUniform, curandStatus_t, (curandGenerator_t, float *, size_t))                          \
  X(0, curandGenerateUniformDouble, curandStatus_t, (curandGenerator_t, double *, size_t))                   \
  X(0, curandGenerateNormal, curandStatus_t, (curandGenerator_t, float *, size_t, float, float))             \
  X(0, curandGenerateNormalDouble, curandStatus_t, (curandGenerator_t, double *, size_t, double, double))    \
  X(0, curandGenerateLogNormal, curandStatus_t, (curandGenerator_t, float *, size_t, float, float))          \
  X(0, curandGenerateLogNormalDouble, curandStatus_t, (curandGenerator_t, double *, size_t, double, double)) \
  X(0, curandGeneratePoisson, curandStatus_t, (curandGenerator_t, unsigned int *, size_t, double))           \
  X(0, curandGeneratePoissonMethod, curandStatus_t,                                                          \
    (curandGenerator_t, unsigned int *, size_t, double, curandMethod_t))                                     \
  X(0, curandGenerateBinomial, curandStatus_t, (curandGenerator_t, unsigned int *, size_t, unsigned, double)) \
  X(0, curandGenerateBinomialMethod, curandStatus_t,                                                         \
    (curandGenerator_t, unsigned int *, size_t, unsigned, double, curandMethod_t))

struct rng_real_table {
#define X(req, name, ret, args) ret(*name) args;
  RNG_REAL_FUNCS(X)
#undef X
};
extern struct rng_real_table rng_real;

/* ---- the tracker's state ------------------------------------------------- */

struct gen_state {
  unsigned long long seed, offset;
  curandOrdering_t ordering;
  bool known; /* position known */
};

struct gen {
  curandGenerator_t h;
  uint64_t id;        /* unique: handles can be reused after destroy */
  uint64_t born;      /* event serial at creation */
  curandRngType_t type;
  cudaStream_t stream;
  struct gen_state st;
  unsigned long long anchor; /* offset at the last absolute set (creation, curandSetGeneratorOffset) */
  bool has_first;     /* state just before its first generate call */
  struct gen_state first;
  bool warned;
};

/* Per-generator position inside a named state. */
struct pos {
  uint64_t id;
  unsigned long long offset;
};

struct named {
  char name[RNG_NAME_MAX];
  unsigned long long seed;
  struct pos *pos;
  int npos, cap;
};

struct ckpt_rng_states {
  struct named *v;
  int n;
};

struct snap_entry {
  uint64_t id;
  curandGenerator_t h;
  struct gen_state st;
  bool replayable;
};

struct snap {
  int region;
  uint64_t open_ev, close_ev; /* close_ev 0: still open / never told */
  struct snap_entry *e;
  int n;
  struct ckpt_rng_states named;
  struct snap *next;
};

/* A generator set aside by a replay or a fork, to be put back. */
struct saved {
  uint64_t id;
  struct gen_state st;
};

struct frame {
  struct saved *s;
  int n;
};

enum { FORK_DEPTH_MAX = 16 };
/* Region records, oldest first; at most RECORDS_MAX (a core that never
 * retires regions must not grow this without bound). */
enum { RECORDS_MAX = 4096 };

/* rng.c */
extern pthread_mutex_t rng_mu;
extern struct gen **rng_gens;
extern int rng_ngens, rng_capgens;
extern uint64_t rng_next_id, rng_ev;
bool rng_grow(void **v, int *cap, int need, size_t elt);
struct gen *rng_find(curandGenerator_t h);
struct gen *rng_find_id(uint64_t id);

/* rng_replay.c */
extern struct snap *rng_snaps, *rng_snaps_tail;
extern int rng_nsnaps;
extern struct ckpt_rng_states rng_named;   /* the tracker's states_ */
extern unsigned long long *rng_seeds;      /* the tracker's seeds_ */
extern int rng_nseeds, rng_capseeds;
struct rng_replay_state {
  bool active;
  int region;
  struct frame f;
  struct ckpt_rng_states named; /* the states in place before the replay */
};
extern struct rng_replay_state rng_replay_state;
bool rng_type_ok(curandRngType_t t);
bool rng_ordering_ok(curandOrdering_t o);
bool rng_state_ok(const struct gen *g, const struct gen_state *st);
bool rng_replayable(const struct gen *g);
void rng_warn_unreplayable(struct gen *g);  /* once per generator, with the reason */
/* Sets a generator through the real API (ordering, seed, absolute offset). */
curandStatus_t rng_apply(struct gen *g, const struct gen_state *st);
void rng_restore_frame(struct frame *f);    /* puts a frame's generators back, empties it */
bool rng_frame_push(struct frame *f, int *cap, struct gen *g);
void rng_states_clear(struct ckpt_rng_states *s);
void rng_snap_free(struct snap *s);
int rng_states_copy(struct ckpt_rng_states *dst, const struct ckpt_rng_states *src);
#endif /* CKPT_RNG_STATE_H */
