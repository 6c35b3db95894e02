/* What the observers share: the per-name counters and the wake-up of the
 * observer thread. Calls no observer (observe_run.c starts and stops them). */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "params.h"
#include "state.h"
#include "observers.h"

/* ---- per region name --------------------------------------------------- */

static struct ckpt_name_stats names[CKPT_SEG_MAX_NAMES];
static int nnames;

struct ckpt_name_stats *ckpt_name_stats(const char *name) {
  for (int i = 0; i < nnames; i++)
    if (strncmp(names[i].name, name, sizeof names[i].name - 1) == 0) return &names[i];
  if (nnames == CKPT_SEG_MAX_NAMES) return NULL;
  snprintf(names[nnames].name, sizeof names[nnames].name, "%s", name);
  return &names[nnames++];
}

int ckpt_name_table(const struct ckpt_name_stats **out) {
  *out = names;
  return nnames;
}

/* ---- waking the observer thread (observe_run.c runs it) ----------------- */

struct ckpt_observer ckpt_observer = {
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .cv = PTHREAD_COND_INITIALIZER,
};

void ckpt_observer_wake(void) {
  if (!ckpt_observer.running || __atomic_load_n(&ckpt_observer.kick, __ATOMIC_RELAXED)) return;
  __atomic_store_n(&ckpt_observer.kick, true, __ATOMIC_RELAXED);
  pthread_cond_signal(&ckpt_observer.cv); /* a lost wake-up costs one period at most */
}
