/* The one prologue of every exported ckpt_* function (api.c and its RNG half,
 * api_rng.c). */
#ifndef CKPT_API_H
#define CKPT_API_H
#include "core.h"
#include "state.h"

/* Lazy initialisation; in a fork()ed child libckpt keeps its hands off. */
#define API_ENTER() \
  ckpt_init(); \
  if (ckpt_g.forked) return CKPT_EDISABLED
#endif
