/* A simulated training run for the leak checks (scripts/check-leaks).
 *
 *   leak_train [STEPS [--strict]]     default 1000 steps
 *
 * Each step: 3 regions x 2 tensors (small: every tagged tensor maps a whole
 * 2 MiB granule), offloaded by the policy (waited for), restored in reverse,
 * freed, the stream synchronised (the step's loss.item()); every tensor is
 * checked by a stream-ordered kernel, every 100th step by the host too.
 *
 * At exit, after libckpt's own exit handler (ours is registered before the
 * first libckpt call, so it runs after libckpt's), it reports every driver
 * resource still held, from the simulator's call counters: created minus
 * released mappings, handles, reservations, streams, events, pinned host
 * memory, device and host bytes in use, and the stats segment. The program's
 * own resources are released before it returns from main, so whatever is
 * left is libckpt's. --strict: exit status 1 when anything is left. */
#include <sys/stat.h>

#include "hard.h"

static CUstream s;
static bool strict;
static size_t device_base, host_base;

struct pair {
  const char *what;
  const char *create[2], *release[2];
};
static const struct pair pairs[] = {
    {"physical allocations (cuMemCreate - cuMemRelease)", {"cuMemCreate"}, {"cuMemRelease"}},
    {"VA reservations (cuMemAddressReserve - cuMemAddressFree)", {"cuMemAddressReserve"}, {"cuMemAddressFree"}},
    {"mappings (cuMemMap - cuMemUnmap)", {"cuMemMap"}, {"cuMemUnmap"}},
    {"streams (cuStreamCreate - cuStreamDestroy)", {"cuStreamCreate", "cuStreamCreateWithPriority"},
     {"cuStreamDestroy", "cuStreamDestroy_v2"}},
    {"events (cuEventCreate - cuEventDestroy)", {"cuEventCreate"}, {"cuEventDestroy", "cuEventDestroy_v2"}},
    {"pinned host allocations (cuMemHostAlloc - cuMemFreeHost)", {"cuMemHostAlloc", "cuMemAllocHost_v2"},
     {"cuMemFreeHost"}},
};

static long balance(const struct pair *p) {
  long n = 0;
  for (int i = 0; i < 2; i++) {
    if (p->create[i]) n += (long)simdev_calls(p->create[i]);
    if (p->release[i]) n -= (long)simdev_calls(p->release[i]);
  }
  return n;
}

static void report_at_exit(void) {
  int held = 0;
  char line[512];
  for (size_t i = 0; i < sizeof pairs / sizeof *pairs; i++) {
    long n = balance(&pairs[i]);
    if (n) {
      snprintf(line, sizeof line, "HELD at exit: %ld %s\n", n, pairs[i].what);
      fputs(line, stderr);
      held++;
    }
  }
  size_t dev = simdev_device_used(0), host = simdev_host_used();
  if (dev != device_base) {
    fprintf(stderr, "HELD at exit: %.1f MiB of device memory (%zu bytes over the %zu at start)\n",
            (double)(dev - device_base) / 1048576.0, dev - device_base, device_base);
    held++;
  }
  if (host != host_base) {
    fprintf(stderr, "HELD at exit: %.1f MiB of host-located (pinned) memory\n", (double)(host - host_base) / 1048576.0);
    held++;
  }
  char path[128];
  struct stat st;
  snprintf(path, sizeof path, "/dev/shm/libckpt.%u.%d", (unsigned)getuid(), (int)getpid());
  if (lstat(path, &st) == 0) {
    fprintf(stderr, "HELD at exit: the stats segment %s\n", path);
    held++;
  }
  fflush(stdout);
  fprintf(stderr, "leak_train: %s at exit\n", held ? "driver resources held" : "every driver resource released");
  fflush(stderr);
  if (held && strict) _exit(1);
}

int main(int argc, char **argv) {
  int steps = argc > 1 ? atoi(argv[1]) : 1000;
  strict = argc > 2 && !strcmp(argv[2], "--strict");
  /* Before libckpt's first call: this handler runs after libckpt's. */
  atexit(report_at_exit);
  watchdog_start("leak_train", getenv("HARD_TIMEOUT") ? (unsigned)atoi(getenv("HARD_TIMEOUT")) : 1200);
  ck_load();
  ctx_setup();
  device_base = simdev_device_used(0);
  host_base = simdev_host_used();
  CU(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  CHECK(ck.set_stream((uintptr_t)s) == 0);
  enum { NREG = 3, PER = 2 };
  for (int step = 0; step < steps; step++) {
    struct tensor t[NREG][PER];
    int id[NREG];
    for (int r = 0; r < NREG; r++) {
      id[r] = ck.region_begin(r ? "layer" : "embed");
      for (int k = 0; k < PER; k++) hard_alloc(&t[r][k], 64 * 1024 + 1 + (size_t)k * 4096, (uint64_t)(step * 8 + r * 2 + k), s);
      CHECK(ck.region_end() == id[r]);
    }
    /* The offloads complete (forward is long), then backward restores. */
    for (int r = 0; r < NREG - 1; r++) CHECK(ck.wait(id[r]) == 0);
    for (int r = NREG - 1; r >= 0; r--) {
      CHECK(ck.restore(id[r]) == 0);
      for (int k = 0; k < PER; k++) {
        hard_launch(s, hard_check_kernel, &t[r][k], 0);
        if (step % 100 == 0) {
          CHECK(ck.wait(id[r]) == 0);
          CU(cuStreamSynchronize(s));
          CHECK(pattern_check((void *)t[r][k].p, t[r][k].n, t[r][k].seed) == 0, "step %d: host check", step);
        }
        CU(cuMemFreeAsync(t[r][k].p, s));
      }
    }
    CU(cuStreamSynchronize(s)); /* the step's loss.item() */
    CHECK(ck.step() == 0);
    if (getenv("LEAK_TRAIN_VERBOSE") && step % 100 == 0) {
      struct ckpt_stats st = ck_stats();
      printf("step %d: host pool %.1f MiB (in use %.1f), mapping cache %.1f MiB, device used %.1f MiB\n", step,
             st.host_pool_bytes / 1048576.0, st.host_bytes_in_use / 1048576.0, st.mapping_cache_bytes / 1048576.0,
             simdev_device_used(0) / 1048576.0);
    }
  }
  CU(cuStreamSynchronize(s));
  CHECK(kernel_errors == 0, "%ld checks failed", (long)kernel_errors);
  CHECK(!simdev_faulted());
  struct ckpt_stats st = ck_stats();
  printf("leak_train: %d steps, %llu offloads, %llu restores\n", steps, (unsigned long long)st.offloads,
         (unsigned long long)st.restores);
  CHECK(st.offloads > 0 && st.restores > 0, "nothing moved");
  CU(cuStreamDestroy_v2(s)); /* the program's own, so that what is left is libckpt's */
  return 0;
}
