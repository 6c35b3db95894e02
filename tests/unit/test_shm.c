/* The live stats segment: creation (owner-only, never through a planted
 * link), the seqlock writer against a concurrent reader, fork and exit. */
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include "unit_helpers.h"
#include "../../hooks/observers.h"

static char seg_path[128];

static void setup(void) {
  ut_env_reset();
  ut_env("CKPT_MODE", "host");
  snprintf(seg_path, sizeof seg_path, "/dev/shm" CKPT_SEG_PREFIX "%u.%d", (unsigned)getuid(), (int)getpid());
}

static const struct ckpt_seg *map_segment(void) {
  int fd = open(seg_path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  cr_assert_geq(fd, 0, "no segment at %s", seg_path);
  struct stat st;
  cr_assert_eq(fstat(fd, &st), 0);
  const struct ckpt_seg *s = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  cr_assert_neq(s, MAP_FAILED);
  cr_assert_eq(ckpt_seg_check(s, (size_t)st.st_size), 0);
  return s;
}

Test(shm, created_owner_only_with_header, .init = setup) {
  ckpt_init();
  struct stat st;
  cr_assert_eq(lstat(seg_path, &st), 0, "no %s", seg_path);
  cr_assert(S_ISREG(st.st_mode));
  cr_assert_eq(st.st_mode & 0777, 0600);
  cr_assert_eq(st.st_uid, getuid());
  const struct ckpt_seg *s = map_segment();
  cr_assert_eq(s->h.pid, getpid());
  cr_assert_eq(s->h.uid, getuid());
  cr_assert_str_eq(s->h.mode, "host");
  cr_assert_gt(s->h.start_realtime_ns, 0);
  cr_assert_gt(s->h.proc_start_ticks, 0);
  cr_assert_eq(s->h.stats_off, offsetof(struct ckpt_seg, stats));
  cr_assert_eq(s->h.stacks, CKPT_SEG_STACKS_OFF);
  /* A region's end publishes. */
  uint64_t before = s->live.publishes;
  int id = ckpt_region_begin("layer");
  cr_assert_eq(ckpt_region_end(), id);
  struct ckpt_seg snap;
  cr_assert_eq(ckpt_seg_snapshot(s, &snap, 100), 0);
  cr_assert_gt(snap.live.publishes, before);
  cr_assert_eq(snap.stats.regions_opened, 1);
  cr_assert_eq(snap.live.nnames, 1);
  cr_assert_str_eq(snap.names[0].name, "layer");
  cr_assert_eq(snap.names[0].regions, 1);
  /* Removed at exit. */
  ckpt_observe_exit();
  cr_assert_neq(access(seg_path, F_OK), 0, "segment left after exit");
}

Test(shm, leftover_of_our_pid_is_replaced, .init = setup) {
  int fd = open(seg_path, O_CREAT | O_WRONLY | O_EXCL, 0644);
  cr_assert_geq(fd, 0);
  cr_assert_eq(write(fd, "junk", 4), 4);
  close(fd);
  ckpt_init();
  const struct ckpt_seg *s = map_segment();
  cr_assert_eq(s->h.pid, getpid());
  struct stat st;
  cr_assert_eq(stat(seg_path, &st), 0);
  cr_assert_eq(st.st_mode & 0777, 0600);
  ckpt_observe_exit();
}

Test(shm, planted_link_is_not_followed, .init = setup) {
  char target[] = "/tmp/ckpt_shm_target_XXXXXX";
  int fd = mkstemp(target);
  cr_assert_geq(fd, 0);
  cr_assert_eq(write(fd, "keep", 4), 4);
  close(fd);
  cr_assert_eq(symlink(target, seg_path), 0);
  ut_capture_start();
  ckpt_init();
  const char *log = ut_capture_end();
  cr_assert_not_null(strstr(log, "live stats off"), "log: %s", log);
  struct stat st;
  cr_assert_eq(stat(target, &st), 0);
  cr_assert_eq(st.st_size, 4, "the link's target was written");
  ckpt_region_begin("r"); /* publishing without a segment is a no-op */
  ckpt_region_end();
  unlink(seg_path);
  unlink(target);
}

Test(shm, disabled_by_param, .init = setup) {
  ut_env("CKPT_STATS_SHM", "0");
  ckpt_init();
  cr_assert_neq(access(seg_path, F_OK), 0);
}

Test(shm, forked_child_leaves_it_alone, .init = setup) {
  ckpt_init();
  const struct ckpt_seg *s = map_segment();
  uint64_t seq = s->live.seq;
  pid_t pid = fork();
  if (pid == 0) {
    ckpt_region_begin("child"); /* pass-through in a child: nothing published */
    ckpt_region_end();
    LOCK();
    ckpt_publish();
    UNLOCK();
    ckpt_observe_exit();
    _exit(0);
  }
  int status;
  cr_assert_eq(waitpid(pid, &status, 0), pid);
  cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  cr_assert_eq(access(seg_path, F_OK), 0, "the child removed the parent's segment");
  cr_assert_eq(s->live.seq, seq, "the child wrote the parent's segment");
  ckpt_observe_exit();
}

/* ---- the seqlock ----------------------------------------------------------- */

/* The writer sets every counter and every name row to the same value k, so a
 * torn snapshot shows two different values. */
static volatile int stop_writer;
static void *writer(void *arg) {
  (void)arg;
  for (uint64_t k = 1; !stop_writer; k++) {
    LOCK();
    uint64_t *w = (uint64_t *)&ckpt_g.stats;
    for (size_t i = 1; i < sizeof ckpt_g.stats / sizeof *w; i++) w[i] = k;
    uint64_t *h = (uint64_t *)&ckpt_g.hot; /* published in place of their twins in stats */
    for (size_t i = 0; i < sizeof ckpt_g.hot / sizeof *h; i++) h[i] = k;
    const struct ckpt_name_stats *names;
    int n = ckpt_name_table(&names);
    for (int i = 0; i < n; i++) {
      struct ckpt_name_stats *row = (struct ckpt_name_stats *)&names[i];
      row->regions = row->offloads = row->restored_bytes = k;
    }
    ckpt_publish();
    UNLOCK();
  }
  return NULL;
}

Test(shm, seqlock_reader_never_sees_a_torn_publish, .init = setup, .timeout = 60) {
  ckpt_init();
  for (int i = 0; i < 40; i++) { /* name rows to copy too */
    char name[16];
    snprintf(name, sizeof name, "r%d", i);
    ckpt_region_begin(name);
    ckpt_region_end();
  }
  const struct ckpt_seg *s = map_segment();
  pthread_t w;
  cr_assert_eq(pthread_create(&w, NULL, writer, NULL), 0);
  struct ckpt_seg *snap = malloc(sizeof *snap);
  uint64_t last = 0;
  int ok = 0, busy = 0;
  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  do {
    clock_gettime(CLOCK_MONOTONIC, &t); /* first: the `continue` below skips the rest */
    if (ckpt_seg_snapshot(s, snap, 1000) != 0) {
      busy++;
    } else {
      const uint64_t *v = (const uint64_t *)&snap->stats;
      uint64_t k = v[1];
      if (k == 0) continue; /* before the writer's first publish */
      for (size_t i = 2; i < sizeof snap->stats / sizeof *v; i++)
        cr_assert_eq(v[i], k, "torn snapshot: field %zu = %llu, field 1 = %llu", i, (unsigned long long)v[i],
                     (unsigned long long)k);
      for (uint32_t i = 0; i < snap->live.nnames && k; i++)
        cr_assert(snap->names[i].regions == k && snap->names[i].offloads == k && snap->names[i].restored_bytes == k,
                  "torn name row %u", i);
      cr_assert_geq(k, last, "went back in time");
      last = k;
      ok++;
    }
    /* Until enough consistent snapshots were seen (a loaded 2-core machine
     * may not schedule the writer at once), 20 s at most. */
  } while ((ok <= 1000 || last <= 1000) &&
           (t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) < 20000000000L);
  stop_writer = 1;
  pthread_join(w, NULL);
  cr_assert_gt(ok, 1000, "only %d consistent snapshots (%d gave up)", ok, busy);
  cr_assert_gt(last, 1000, "the writer hardly ran");
  free(snap);
  ckpt_observe_exit();
}

Test(shm, reader_gives_up_on_a_writer_that_died_inside, .init = setup) {
  struct ckpt_seg *s = calloc(1, sizeof *s), *out = malloc(sizeof *s);
  s->live.seq = 7; /* odd for ever */
  cr_assert_eq(ckpt_seg_snapshot(s, out, 50), -1);
  s->live.seq = 8;
  cr_assert_eq(ckpt_seg_snapshot(s, out, 50), 0);
  free(s);
  free(out);
}

Test(shm, check_rejects_foreign_and_short_segments) {
  struct ckpt_seg *s = calloc(1, sizeof *s);
  cr_assert_eq(ckpt_seg_check(s, sizeof *s), -1, "no magic");
  memcpy(s->h.magic, CKPT_SEG_MAGIC, 8);
  s->h.version = CKPT_SEG_VERSION;
  s->h.seg_size = sizeof *s;
  s->h.stats_size = sizeof s->stats;
  s->h.name_size = sizeof s->names[0];
  s->h.site_size = sizeof s->sites[0];
  cr_assert_eq(ckpt_seg_check(s, sizeof *s), 0);
  cr_assert_eq(ckpt_seg_check(s, sizeof *s - 1), -1, "short");
  s->h.version = CKPT_SEG_VERSION + 1;
  cr_assert_eq(ckpt_seg_check(s, sizeof *s), -1, "newer version");
  free(s);
}
