/* Live stats, call sites and profiling under LD_PRELOAD on the simulated
 * device. `stats MODE`:
 *   check    a known workload; ckpt_stats_get, the segment read back through
 *            the seqlock reader and the workload agree exactly
 *   serve    the workload, then prints its counters as JSON and waits for
 *            EOF on stdin (tests/python reads the segment meanwhile)
 *   sites    CKPT_STACKS=1: the top call sites name the allocating functions
 *   profile  CKPT_PROFILE=1: forward/backward device times per region name
 *   sync     CKPT_SYNC=1: a region's work has finished when it closes
 *   exec     prints "ready" and execs sleep: the segment stays, unmapped
 * Built with -rdynamic so that dladdr names this program's functions. */
#include <fcntl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "../../hooks/stats_segment.h"

#define STEPS 2
#define BLOCKS 4
#define ACT_BYTES (8 * MiB + 4096) /* requested; mapped as 10 MiB (2 MiB granules), 12 MiB (4 MiB) */
#define HEAD_BYTES (6 * MiB)
#define SMALL_BYTES (1 * MiB)      /* under CKPT_MIN_BYTES: untagged */

static CUstream compute;

/* ---- the segment, read as ckpt-stats would ------------------------------- */

static struct ckpt_seg *seg_map(void) {
  char path[96];
  snprintf(path, sizeof path, "/dev/shm" CKPT_SEG_PREFIX "%u.%d", (unsigned)getuid(), (int)getpid());
  int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  CHECK(fd >= 0, "no segment %s", path);
  struct stat st;
  CHECK(fstat(fd, &st) == 0);
  CHECK((st.st_mode & 0777) == 0600, "segment mode %o", (unsigned)(st.st_mode & 0777));
  CHECK(st.st_uid == getuid());
  void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  CHECK(p != MAP_FAILED);
  CHECK(ckpt_seg_check(p, (size_t)st.st_size) == 0, "segment header not understood");
  return p;
}

static struct ckpt_seg snap;
static const struct ckpt_seg *seg_read(const struct ckpt_seg *s) {
  CHECK(ckpt_seg_snapshot(s, &snap, 1000) == 0, "no consistent snapshot");
  return &snap;
}

static const struct ckpt_name_stats *name_row(const struct ckpt_seg *s, const char *name) {
  for (uint32_t i = 0; i < s->live.nnames; i++)
    if (!strcmp(s->names[i].name, name)) return &s->names[i];
  CHECK(0, "no row for region name %s", name);
  return NULL;
}

/* An empty region: its end publishes the counters as they are now. */
static void publish(void) {
  CHECK(ck.region_begin("publish") > 0);
  CHECK(ck.region_end() > 0);
}

/* ---- the workload ---------------------------------------------------------- */

/* Exported (-rdynamic lists global symbols only), not inlined. */
__attribute__((noinline)) CUdeviceptr alloc_activation(void) {
  CUdeviceptr p;
  CU(cuMemAllocAsync(&p, ACT_BYTES, compute));
  return p;
}

__attribute__((noinline)) CUdeviceptr alloc_other(void) {
  CUdeviceptr p;
  CU(cuMemAllocAsync(&p, HEAD_BYTES, compute));
  return p;
}

/* Per step: BLOCKS "block" regions of two activations (plus a small untagged
 * allocation each) and one "head" region; the blocks are offloaded and
 * restored in reverse (CKPT_OFFLOAD=manual: no policy decision), then
 * everything is freed. */
static void workload(void) {
  for (int step = 0; step < STEPS; step++) {
    CUdeviceptr acts[BLOCKS][2], small[BLOCKS], head;
    int ids[BLOCKS];
    for (int b = 0; b < BLOCKS; b++) {
      ids[b] = ck.region_begin("block");
      CHECK(ids[b] > 0);
      acts[b][0] = alloc_activation();
      acts[b][1] = alloc_activation();
      CU(cuMemAllocAsync(&small[b], SMALL_BYTES, compute));
      CHECK(residency(acts[b][0]) == CKPT_DEVICE && residency(small[b]) == CKPT_UNTAGGED);
      CHECK(ck.region_end() == ids[b]);
    }
    CHECK(ck.region_begin("head") > 0);
    head = alloc_other();
    CHECK(ck.region_end() > 0);
    for (int b = 0; b < BLOCKS; b++) CHECK(ck.offload(ids[b]) == 0);
    for (int b = 0; b < BLOCKS; b++) CHECK(ck.wait(ids[b]) == 0);
    for (int b = 0; b < BLOCKS; b++) CHECK(residency(acts[b][1]) == CKPT_HOST, "block %d not offloaded", b);
    for (int b = BLOCKS - 1; b >= 0; b--) CHECK(ck.restore(ids[b]) == 0);
    for (int b = 0; b < BLOCKS; b++) CHECK(ck.wait(ids[b]) == 0); /* restore does not block the host */
    for (int b = 0; b < BLOCKS; b++) CHECK(residency(acts[b][0]) == CKPT_DEVICE);
    for (int b = 0; b < BLOCKS; b++) {
      CU(cuMemFreeAsync(acts[b][0], compute));
      CU(cuMemFreeAsync(acts[b][1], compute));
      CU(cuMemFreeAsync(small[b], compute));
    }
    CU(cuMemFreeAsync(head, compute));
    CU(cuStreamSynchronize(compute));
    CHECK(ck.step() == 0);
  }
  publish();
}

/* What the workload did, counter by counter (the publish region included). */
static void check_expected(const struct ckpt_stats *s) {
  const uint64_t regions = STEPS * (BLOCKS + 1) + 1, tagged = STEPS * (2 * BLOCKS + 1);
  const uint64_t moved = STEPS * 2 * BLOCKS;
  CHECK(s->regions_opened == regions && s->regions_closed == regions, "regions %llu/%llu",
        (unsigned long long)s->regions_opened, (unsigned long long)s->regions_closed);
  CHECK(s->tagged_allocs == tagged, "tagged %llu", (unsigned long long)s->tagged_allocs);
  CHECK(s->tagged_allocs_live == 0 && s->tagged_bytes_live == 0);
  CHECK(s->untagged_allocs == STEPS * BLOCKS, "untagged %llu", (unsigned long long)s->untagged_allocs);
  CHECK(s->offloads == moved && s->offloaded_bytes_total == moved * ACT_BYTES, "offloads %llu, %llu bytes",
        (unsigned long long)s->offloads, (unsigned long long)s->offloaded_bytes_total);
  CHECK(s->restores == moved && s->restored_bytes_total == moved * ACT_BYTES);
  CHECK(s->host_bytes_in_use == 0 && s->device_bytes_released == 0);
  const size_t g = tagged_granule(), mapped = (ACT_BYTES + g - 1) / g * g;
  CHECK(s->device_bytes_released_peak == 2 * BLOCKS * mapped, "released peak %llu",
        (unsigned long long)s->device_bytes_released_peak);
  CHECK(s->host_pool_bytes >= 2 * BLOCKS * mapped);
  CHECK(s->driver_errors == 0 && s->restore_oom == 0 && s->host_pool_exhausted == 0);
}

static void check_names(const struct ckpt_seg *s) {
  const struct ckpt_name_stats *b = name_row(s, "block"), *h = name_row(s, "head");
  CHECK(b->regions == STEPS * BLOCKS && h->regions == STEPS);
  CHECK(b->tagged_allocs == STEPS * BLOCKS * 2 && b->tagged_bytes == STEPS * BLOCKS * 2 * ACT_BYTES);
  CHECK(b->offloads == STEPS * BLOCKS * 2 && b->offloaded_bytes == STEPS * BLOCKS * 2 * ACT_BYTES);
  CHECK(b->restores == STEPS * BLOCKS * 2 && b->restored_bytes == STEPS * BLOCKS * 2 * ACT_BYTES);
  CHECK(h->tagged_allocs == STEPS && h->tagged_bytes == STEPS * HEAD_BYTES && h->offloads == 0);
  CHECK(b->copy_seconds >= 0 && b->copy_seconds <= s->stats.copy_seconds_total + 1e-12);
  CHECK(name_row(s, "publish")->regions == 1);
}

/* Every counter of the segment equals ckpt_stats_get's, except the device
 * samples taken after the publish. */
static void check_same(const struct ckpt_stats *a, const struct ckpt_stats *b) {
  struct ckpt_stats x = *a, y = *b;
  x.device_used_now = y.device_used_now = 0;
  x.device_used_peak = y.device_used_peak = 0;
  CHECK(memcmp(&x, &y, sizeof x) == 0, "segment and ckpt_stats_get differ");
}

static void mode_check(void) {
  const struct ckpt_seg *live = seg_map();
  CHECK(live->h.pid == getpid() && live->h.uid == getuid() && !strcmp(live->h.mode, "host"));
  CHECK(live->h.proc_start_ticks > 0);
  workload();
  struct ckpt_stats st = ck_stats();
  const struct ckpt_seg *s = seg_read(live);
  check_expected(&st);
  check_expected(&s->stats);
  check_same(&st, &s->stats);
  check_names(s);
  CHECK(s->live.publishes > 0);
  CHECK(s->h.stacks != CKPT_SEG_STACKS_OFF || s->live.nsites == 0);
}

#define STATS_FIELDS(X)                                                                            \
  X(hooked_calls) X(regions_opened) X(regions_closed) X(tagged_allocs) X(tagged_allocs_live)       \
  X(tagged_bytes_live) X(untagged_allocs) X(mapping_cache_hits) X(mapping_cache_bytes) X(offloads) \
  X(offloaded_bytes_total) X(restores) X(restored_bytes_total) X(host_bytes_in_use)                \
  X(host_pool_bytes) X(device_bytes_released) X(device_bytes_released_peak) X(host_pool_exhausted) \
  X(restore_oom) X(driver_errors)

static void mode_serve(void) {
  workload();
  struct ckpt_stats st = ck_stats();
  check_expected(&st);
  printf("{\"pid\": %d, \"act_bytes\": %llu, \"steps\": %d, \"blocks\": %d, \"stats\": {", (int)getpid(),
         (unsigned long long)ACT_BYTES, STEPS, BLOCKS);
#define X(f) printf("\"%s\": %llu, ", #f, (unsigned long long)st.f);
  STATS_FIELDS(X)
#undef X
  printf("\"copy_seconds_total\": %.17g, \"stall_seconds_total\": %.17g}}\n", st.copy_seconds_total,
         st.stall_seconds_total);
  fflush(stdout);
  char buf[64];
  while (read(0, buf, sizeof buf) > 0) {
  }
}

static bool frames_name(const struct ckpt_seg_site *site, const char *fn) {
  for (uint32_t f = 0; f < site->nframes; f++)
    if (strstr(site->frame[f], fn)) return true;
  return false;
}

static void mode_sites(void) {
  const struct ckpt_seg *live = seg_map();
  CHECK(live->h.stacks == CKPT_SEG_STACKS_ON, "stacks state %u (libunwind missing?)", live->h.stacks);
  workload();
  /* The observer thread symbolises the sites off the hot path, then publishes. */
  const struct ckpt_seg *s = NULL;
  for (int i = 0; i < 500; i++) {
    s = seg_read(live);
    bool named = s->live.nsites >= 2;
    for (uint32_t k = 0; k < s->live.nsites; k++) named = named && s->sites[k].frame[0][0];
    if (named) break;
    usleep(10000);
  }
  CHECK(s->live.nsites >= 2, "%u call sites", s->live.nsites);
  for (uint32_t i = 0; i < s->live.nsites; i++)
    for (uint32_t f = 0; f < s->sites[i].nframes; f++)
      printf("site %u (%llu bytes offloaded) frame %u: %s\n", s->sites[i].id,
             (unsigned long long)s->sites[i].offloaded_bytes, f, s->sites[i].frame[f]);
  /* The two calls of alloc_activation are one site or two (the compiler
   * decides); together they hold every offloaded byte and rank first. */
  CHECK(frames_name(&s->sites[0], "alloc_activation"), "the top site does not name alloc_activation");
  uint64_t act_bytes = 0, act_allocs = 0, other_allocs = 0;
  for (uint32_t i = 0; i < s->live.nsites; i++) {
    const struct ckpt_seg_site *site = &s->sites[i];
    CHECK(!frames_name(site, "ckpt_"), "libckpt's own frames are not skipped");
    if (frames_name(site, "alloc_activation")) act_bytes += site->offloaded_bytes, act_allocs += site->allocs;
    if (frames_name(site, "alloc_other")) {
      CHECK(site->offloaded_bytes == 0);
      other_allocs += site->allocs;
    }
  }
  CHECK(act_bytes == STEPS * BLOCKS * 2 * ACT_BYTES && act_allocs == STEPS * BLOCKS * 2, "%llu bytes, %llu allocs",
        (unsigned long long)act_bytes, (unsigned long long)act_allocs);
  CHECK(other_allocs == STEPS);
}

/* ---- profiling ---------------------------------------------------------- */

static void CUDA_CB sleep_kernel(void *arg) { usleep((unsigned)(uintptr_t)arg); }
static atomic_int kernels_done;
static void CUDA_CB done_kernel(void *arg) {
  (void)arg;
  usleep(20000);
  kernels_done++;
}

static void mode_profile(void) {
  const struct ckpt_seg *live = seg_map();
  CHECK(live->h.flags & CKPT_SEG_PROFILE);
  /* Forward: "early" runs 30 ms of device work, "late" 10 ms; backward runs
   * 40 ms after restoring "late" and 5 ms after restoring "early". The
   * profile records its events on the declared stream, or on the legacy
   * stream, which this blocking stream is ordered with. */
  int early = ck.region_begin("early");
  CU(cuLaunchHostFunc(compute, sleep_kernel, (void *)(uintptr_t)30000));
  ck.region_end();
  int late = ck.region_begin("late");
  CU(cuLaunchHostFunc(compute, sleep_kernel, (void *)(uintptr_t)10000));
  ck.region_end();
  CHECK(ck.restore(late) == 0);
  CU(cuLaunchHostFunc(compute, sleep_kernel, (void *)(uintptr_t)40000));
  CHECK(ck.restore(early) == 0);
  CU(cuLaunchHostFunc(compute, sleep_kernel, (void *)(uintptr_t)5000));
  CU(cuCtxSynchronize());
  publish(); /* its begin resolves the intervals, its end publishes them */
  const struct ckpt_seg *s = seg_read(live);
  const struct ckpt_name_stats *e = name_row(s, "early"), *l = name_row(s, "late");
  printf("early fwd %.4f s bwd %.4f s; late fwd %.4f s bwd %.4f s\n", e->fwd_seconds, e->bwd_seconds,
         l->fwd_seconds, l->bwd_seconds);
  CHECK(e->fwd_seconds >= 0.029 && e->fwd_seconds < 0.5, "early forward %f", e->fwd_seconds);
  CHECK(l->fwd_seconds >= 0.009 && l->fwd_seconds < 0.5, "late forward %f", l->fwd_seconds);
  CHECK(l->bwd_seconds >= 0.039 && l->bwd_seconds < 0.5, "late backward %f", l->bwd_seconds);
  CHECK(e->bwd_seconds == 0, "the last restored region has no next restore: unmeasured");
}

static void mode_sync(void) {
  CHECK(ck.region_begin("synced") > 0);
  CU(cuLaunchHostFunc(compute, done_kernel, NULL));
  CHECK(ck.region_end() > 0);
  CHECK(kernels_done == 1, "CKPT_SYNC=1: the region's work had not finished at its end");
}

int main(int argc, char **argv) {
  CHECK(argc == 2, "usage: stats check|serve|sites|profile|sync|exec");
  ck_load();
  ctx_setup();
  CU(cuStreamCreate(&compute, CU_STREAM_DEFAULT));
  CHECK(ck.set_stream((uintptr_t)compute) == 0);
  const char *m = argv[1];
  if (!strcmp(m, "check")) mode_check();
  else if (!strcmp(m, "serve")) mode_serve();
  else if (!strcmp(m, "sites")) mode_sites();
  else if (!strcmp(m, "profile")) mode_profile();
  else if (!strcmp(m, "sync")) mode_sync();
  else if (!strcmp(m, "exec")) {
    CHECK(!strcmp(ck.mode(), "host")); /* libckpt initialised: the segment exists */
    printf("ready\n");
    fflush(stdout);
    execl("/bin/sleep", "sleep", "60", (char *)NULL);
    CHECK(0, "exec failed");
  }
  else CHECK(0, "unknown mode %s", m);
  if (strcmp(m, "serve")) printf("stats %s: ok\n", m);
  return 0;
}
