/* Lazy initialisation, mode, fork and exit handling. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "arena.h"
#include "driver.h"
#include "engine.h"
#include "log.h"
#include "observe.h"
#include "params.h"
#include "peer.h"
#include "policy.h"
#include "state.h"
#include "store.h"
#include "streams.h"

void ckpt_startup_warnings(void);      /* startup.c */
void ckpt_startup_exit_warnings(void); /* startup.c */

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

/* The child of a fork() shares none of our streams, events or engine thread:
 * it keeps working, untouched (pass-through). */
static void atfork_child(void) {
  ckpt_observe_forked();
  ckpt_g.forked = true;
  ckpt_g.tagging = false;
  pthread_mutex_init(&ckpt_g.lock, NULL);
}

/* Gives back what libckpt holds of the driver (caches, pool, streams, events,
 * the gate page), so that leak checkers see nothing and a process that lives
 * on after exit handlers (other threads) holds nothing of ours. Skipped when
 * a copy may still run: a leak at exit is harmless, a freed target is not.
 * Skipped too when a program stream never passed a tagged free (the arena
 * said so): cuMemFreeHost of the gate page synchronizes the device, and
 * would wait for that stream for ever. */
static void release_at_exit(bool engine_stopped) {
  LOCK();
  IN_LIB_BEGIN();
  bool arena_released = ckpt_arena_release_all();
  if (arena_released && engine_stopped && ckpt_engine_release()) {
    ckpt_peer_dev_store.release_idle();
    ckpt_peer_host_store.release_idle(); /* its slabs' blocks go back to the host pool: first */
    ckpt_host_store.release_idle();
    ckpt_streams_release();
  }
  IN_LIB_END();
  UNLOCK();
}

static void at_exit(void) {
  if (ckpt_g.forked) return;
  LOCK();
  ckpt_g.exiting = true;
  __atomic_store_n(&ckpt_g.tag_off, true, __ATOMIC_RELAXED);
  UNLOCK();
  bool stopped = ckpt_engine_stop();
  if (ckpt_g.tagging) release_at_exit(stopped);
  ckpt_startup_exit_warnings();
  ckpt_observe_exit(); /* and the exit summary (CKPT_STATS_AT_EXIT) */
}

static void init(void) {
  ckpt_params_load();
  /* The peer modes' group is made on first use (copy.c, peer_group.c). */
  ckpt_g.mode = (int)ckpt_param_int(CKPT_P_MODE);
  ckpt_arena_init((size_t)ckpt_param_int(CKPT_P_MIN_BYTES));
  ckpt_policy_init();
  ckpt_g.tagging = ckpt_g.mode != CKPT_MODE_NONE && ckpt_driver_load() == CUDA_SUCCESS;
  ckpt_observe_init(ckpt_mode_name(ckpt_g.mode));
  pthread_atfork(NULL, NULL, atfork_child);
  atexit(at_exit);
  ckpt_startup_warnings();
}

void ckpt_init(void) { pthread_once(&init_once, init); }
bool ckpt_tagging(void) { return ckpt_g.tagging; }
