/* Shared by the hardening programs (tests/hardening): they run under
 * LD_PRELOAD=libckpt.so on the simulated driver like the integration
 * programs, and add a watchdog (a hang is a failure, never a stuck CI job)
 * and stream-ordered "kernels" that fill and check tensors. */
#ifndef CKPT_HARD_H
#define CKPT_HARD_H
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include "../integ/harness.h"

/* ---- watchdog ------------------------------------------------------------- */

static const char *watchdog_what = "the test";
static unsigned watchdog_secs;

static void *watchdog_main(void *arg) {
  (void)arg;
  sleep(watchdog_secs);
  char line[256];
  int n = snprintf(line, sizeof line, "TIMEOUT: %s did not finish within %u s (deadlock?)\n", watchdog_what,
                   watchdog_secs);
  if (n > 0) (void)!write(2, line, (size_t)n);
  /* Every thread's stack, when gdb is there to take them (best effort:
   * ptrace may be forbidden). HARD_NO_GDB=1 skips it. */
  if (!getenv("HARD_NO_GDB")) {
    char cmd[256];
    snprintf(cmd, sizeof cmd,
             "command -v gdb >/dev/null && gdb -p %d -batch -nx -ex 'set pagination off' "
             "-ex 'thread apply all bt' </dev/null 1>&2 2>/dev/null",
             (int)getpid());
    unsetenv("LD_PRELOAD");
    (void)!system(cmd);
  }
  _exit(3);
  return NULL;
}

/* Kills the process with exit status 3 and a message after `secs` seconds. */
static inline void watchdog_start(const char *what, unsigned secs) {
  watchdog_what = what;
  watchdog_secs = secs;
  pthread_t t;
  CHECK(pthread_create(&t, NULL, watchdog_main, NULL) == 0);
  pthread_detach(t);
}

/* ---- stream-ordered kernels ---------------------------------------------- */

struct tensor {
  CUdeviceptr p;
  size_t n;
  uint64_t seed;
  int region;
};

static _Atomic long kernel_errors;

struct kernel_args {
  struct tensor t;
  unsigned sleep_us;
};

static void CUDA_CB hard_fill_kernel(void *arg) {
  struct kernel_args *k = arg;
  if (k->sleep_us) usleep(k->sleep_us);
  pattern_fill((void *)k->t.p, k->t.n, k->t.seed);
  free(k);
}

static void CUDA_CB hard_check_kernel(void *arg) {
  struct kernel_args *k = arg;
  if (k->sleep_us) usleep(k->sleep_us);
  size_t bad = pattern_check((void *)k->t.p, k->t.n, k->t.seed);
  if (bad) {
    fprintf(stderr, "DATA: tensor %#llx (%zu bytes, seed %llu, region %d) differs at byte %zu\n",
            (unsigned long long)k->t.p, k->t.n, (unsigned long long)k->t.seed, k->t.region, bad - 1);
    kernel_errors++;
  }
  free(k);
}

static inline void hard_launch(CUstream s, void (*fn)(void *), const struct tensor *t, unsigned sleep_us) {
  struct kernel_args *k = malloc(sizeof *k);
  CHECK(k != NULL);
  k->t = *t;
  k->sleep_us = sleep_us;
  CU(cuLaunchHostFunc(s, fn, k));
}

/* A tensor allocated on `s` and filled there (stream-ordered). */
static inline void hard_alloc(struct tensor *t, size_t n, uint64_t seed, CUstream s) {
  t->n = n;
  t->seed = seed;
  CU(cuMemAllocAsync(&t->p, n, s));
  t->region = region_of(t->p);
  hard_launch(s, hard_fill_kernel, t, 0);
}

/* ---- misc ----------------------------------------------------------------- */

static inline double hard_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline uint64_t hard_rnd(uint64_t *s) {
  *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
  return *s;
}

#endif
