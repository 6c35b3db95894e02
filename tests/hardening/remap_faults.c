/* A failed remap never opens a gate over an unmapped VA (issue 11 B.5).
 *
 * A worker thread keeps a program stream busy on a tagged tensor (copies
 * out of it, check "kernels"; reads only: a survivor is read-only from its
 * region's close until backward, and an offload copy reads it while the
 * consumers run; a write then would race that copy, finding 11), while the main thread offloads
 * and restores it with cuMemMap / cuMemSetAccess failing on the swap's calls
 * (simdev_fail): once (libckpt maps the other copy back), several times in
 * a row (neither copy maps: the VA is stranded, said loudly, and the stream
 * stays held until libckpt maps it again), and with CUDA_ERROR_NOT_READY
 * (retried). After every case: no simulated fault (the held stream never
 * touched an unmapped VA), the bytes exact, the tensor where the case says.
 *   hard_remap_faults        (CKPT_OFFLOAD=manual, CKPT_PREFETCH=0) */
#include "hard.h"

#define N (6 * MiB + 100)

static CUcontext ctx;
static CUstream s;
static struct tensor t;
static CUdeviceptr scratch; /* untagged: receives t's bytes */
static _Atomic bool stop;
static _Atomic long rounds;

/* Reads t, through copies and check kernels. */
static void *worker(void *arg) {
  (void)arg;
  CU(cuCtxSetCurrent(ctx));
  while (!stop) {
    CU(cuMemcpyDtoDAsync_v2(scratch, t.p, N, s));
    hard_launch(s, hard_check_kernel, &t, 0);
    CU(cuStreamSynchronize(s));
    rounds++;
  }
  return NULL;
}

struct fcase {
  bool restore;     /* the failures hit the restore's swap, else the offload's */
  const char *call; /* cuMemMap or cuMemSetAccess */
  unsigned first;   /* the first failing call, counted from the job's start */
  unsigned count;   /* consecutive failing calls */
  int code;
  int after;        /* residency once the job is done */
};

/* The calls of a job, in order. Offload (its host block already pooled):
 * the swap's map (1) and access (1). Restore: the staging map (1) and its
 * access (1), then the swap's map (2) and access (2). */
static const struct fcase cases[] = {
    {false, "cuMemMap", 1, 1, CUDA_ERROR_UNKNOWN, CKPT_DEVICE},        /* maps the device copy back */
    {false, "cuMemMap", 1, 2, CUDA_ERROR_UNKNOWN, CKPT_HOST},          /* stranded, then maps the host copy */
    {false, "cuMemMap", 1, 5, CUDA_ERROR_UNKNOWN, CKPT_DEVICE},        /* stranded over several repairs */
    {false, "cuMemMap", 1, 3, CUDA_ERROR_NOT_READY, CKPT_HOST},        /* retried */
    {false, "cuMemSetAccess", 1, 1, CUDA_ERROR_UNKNOWN, CKPT_DEVICE},
    {false, "cuMemSetAccess", 1, 2, CUDA_ERROR_UNKNOWN, CKPT_HOST},
    {false, "cuMemSetAccess", 1, 5, CUDA_ERROR_UNKNOWN, CKPT_DEVICE},
    {false, "cuMemSetAccess", 1, 3, CUDA_ERROR_NOT_READY, CKPT_HOST},
    {true, "cuMemMap", 2, 1, CUDA_ERROR_UNKNOWN, CKPT_HOST},           /* maps the host copy back */
    {true, "cuMemMap", 2, 2, CUDA_ERROR_UNKNOWN, CKPT_DEVICE},         /* stranded, then the fresh copy */
    {true, "cuMemMap", 2, 5, CUDA_ERROR_UNKNOWN, CKPT_HOST},
    {true, "cuMemMap", 2, 3, CUDA_ERROR_NOT_READY, CKPT_DEVICE},
    {true, "cuMemSetAccess", 2, 1, CUDA_ERROR_UNKNOWN, CKPT_HOST},
    {true, "cuMemSetAccess", 2, 2, CUDA_ERROR_UNKNOWN, CKPT_DEVICE},
    {true, "cuMemSetAccess", 2, 5, CUDA_ERROR_UNKNOWN, CKPT_HOST},
    {true, "cuMemSetAccess", 2, 3, CUDA_ERROR_NOT_READY, CKPT_DEVICE},
};

static void move(int region, bool restore) {
  CHECK((restore ? ck.restore(region) : ck.offload(region)) == 0);
  CHECK(ck.wait(region) == 0);
}

int main(void) {
  watchdog_start("hard_remap_faults", 120);
  ck_load();
  ctx = ctx_setup();
  CU(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  CHECK(ck.set_stream((uintptr_t)s) == 0);
  CU(cuMemAlloc_v2(&scratch, N));
  int a = ck.region_begin("a");
  hard_alloc(&t, N, 42, s);
  ck.region_end();
  CU(cuStreamSynchronize(s));
  CHECK(residency(t.p) == CKPT_DEVICE);
  move(a, false); /* a first round trip pools the host block */
  move(a, true);
  pthread_t w;
  CHECK(pthread_create(&w, NULL, worker, NULL) == 0);
  uint64_t errors0 = ck_stats().driver_errors;
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    const struct fcase *c = &cases[i];
    /* Bring t where this case's job starts from. */
    if (c->restore != (residency(t.p) == CKPT_HOST)) move(a, !c->restore);
    CHECK(residency(t.p) == (c->restore ? CKPT_HOST : CKPT_DEVICE));
    long r0 = rounds;
    while (rounds < r0 + 2) usleep(100);
    for (unsigned k = 0; k < c->count; k++) CHECK(simdev_fail(c->call, c->first + k, c->code) == 0);
    move(a, c->restore);
    simdev_fail_clear();
    r0 = rounds;
    while (rounds < r0 + 2) usleep(100);
    CHECK(!simdev_faulted(), "case %zu (%s %s %u x%u code %d): a stream touched an unmapped VA", i,
          c->restore ? "restore" : "offload", c->call, c->first, c->count, c->code);
    CHECK(residency(t.p) == c->after, "case %zu: residency %d, expected %d", i, residency(t.p), c->after);
    CHECK(pattern_check((void *)t.p, N, 42) == 0, "case %zu: wrong bytes", i);
    CHECK(kernel_errors == 0, "case %zu: a check kernel saw wrong bytes", i);
  }
  stop = true;
  pthread_join(w, NULL);
  CHECK(pattern_check((void *)scratch, N, 42) == 0);
  CHECK(ck_stats().driver_errors > errors0, "the failures were reported");
  CHECK(!simdev_faulted());
  printf("hard_remap_faults: %zu cases, %ld worker rounds, no fault, data exact\n", sizeof cases / sizeof *cases,
         (long)rounds);
  return 0;
}
