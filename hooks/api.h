/* The one prologue of every exported ckpt_* function (api.c and its RNG half,
 * api_rng.c). */
#ifndef CKPT_API_H
#define CKPT_API_H
#include "core.h"
#include "state.h"
#include "submit.h"

/* Lazy initialisation; in a fork()ed child libckpt keeps its hands off.
 * While a capture is active, the calling thread is in relaxed capture mode
 * for libckpt's own driver calls (an event query from it must not invalidate
 * a program's global-mode capture) and back in its own mode on return. */
#define API_ENTER() \
  ckpt_init(); \
  if (ckpt_g.forked) return CKPT_EDISABLED; \
  CKPT_RELAXED_SCOPE()
#endif
