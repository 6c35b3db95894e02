/* CKPT_TRACE: the writer (buffer, flush, names, threads, fork, exit) and the
 * file read back record by record as scripts/ckpt/stats_trace.py reads it. */
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "unit_helpers.h"
#include "../../hooks/observers.h"
#include "../../hooks/trace_format.h"

static char dir[] = "/tmp/ckpt_trace_XXXXXX";
static char path[256];

static void setup(void) {
  ut_env_reset();
  ut_env("CKPT_MODE", "host");
  ut_env("CKPT_STATS_SHM", "0");
  cr_assert_not_null(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/trace", dir);
  ut_env("CKPT_TRACE", path);
}

/* The file as header + records; text payloads stay in place (rec.text says
 * how many records follow). */
struct trace_file {
  struct ckpt_trace_header h;
  struct ckpt_trace_rec *r;
  size_t n;
};

static struct trace_file read_trace(const char *p) {
  struct trace_file t = {0};
  FILE *f = fopen(p, "rb");
  cr_assert_not_null(f, "no trace %s", p);
  cr_assert_eq(fread(&t.h, sizeof t.h, 1, f), 1, "short header");
  cr_assert_eq(memcmp(t.h.magic, CKPT_TRACE_MAGIC, 8), 0);
  cr_assert_eq(t.h.version, CKPT_TRACE_VERSION);
  cr_assert_eq(t.h.header_size, sizeof t.h);
  cr_assert_eq(t.h.record_size, sizeof(struct ckpt_trace_rec));
  struct stat st;
  cr_assert_eq(fstat(fileno(f), &st), 0);
  size_t body = (size_t)st.st_size - sizeof t.h;
  cr_assert_eq(body % sizeof *t.r, 0, "a partial record");
  t.n = body / sizeof *t.r;
  t.r = malloc(body + 1);
  cr_assert_eq(fread(t.r, sizeof *t.r, t.n, f), t.n);
  fclose(f);
  return t;
}

static const char *text_of(const struct ckpt_trace_rec *r) { return r->text ? (const char *)(r + 1) : ""; }

Test(trace, regions_names_and_order, .init = setup) {
  ckpt_init();
  struct stat st;
  cr_assert_eq(stat(path, &st), 0);
  cr_assert_eq(st.st_mode & 0777, 0600);
  int a = ckpt_region_begin("encoder_layer_with_a_rather_long_name_0123456789");
  ckpt_region_end();
  int b = ckpt_region_begin("encoder_layer_with_a_rather_long_name_0123456789");
  ckpt_region_end();
  int c = ckpt_region_begin("head");
  ckpt_region_end();
  ckpt_step();
  ckpt_trace(CKPT_T_OFFLOAD_START, a, NULL, 1234, 0x77, 0);
  ckpt_observe_exit();
  struct trace_file t = read_trace(path);
  cr_assert_eq(t.h.pid, getpid());
  cr_assert_gt(t.h.start_mono_ns, 0);
  int opens = 0, closes = 0, names = 0, steps = 0, offloads = 0;
  uint64_t prev = t.h.start_mono_ns, long_id = 0;
  for (size_t i = 0; i < t.n; i += 1 + t.r[i].text) {
    const struct ckpt_trace_rec *r = &t.r[i];
    cr_assert_geq(r->t_ns, prev, "record %zu goes back in time", i);
    prev = r->t_ns;
    switch (r->kind) {
    case CKPT_T_NAME:
      names++;
      if (!strcmp(text_of(r), "encoder_layer_with_a_rather_long_name_0123456789")) long_id = (uint64_t)r->region;
      else cr_assert_str_eq(text_of(r), "head");
      break;
    case CKPT_T_REGION_OPEN:
      opens++;
      cr_assert(r->region == a || r->region == b || r->region == c);
      cr_assert_eq(r->value, r->region == c ? long_id + 1 : long_id, "name id of region %d", r->region);
      break;
    case CKPT_T_REGION_CLOSE: closes++; break;
    case CKPT_T_STEP: steps++; break;
    case CKPT_T_OFFLOAD_START:
      offloads++;
      cr_assert(r->bytes == 1234 && r->stream == 0x77 && r->region == a);
      break;
    }
  }
  cr_assert_eq(names, 2, "each name once");
  cr_assert_gt(long_id, 0);
  cr_assert(opens == 3 && closes == 3 && steps == 1 && offloads == 1, "%d %d %d %d", opens, closes, steps, offloads);
}

#define THREADS 4
#define PER_THREAD 50000
static void *spam(void *arg) {
  int id = (int)(intptr_t)arg;
  for (int i = 0; i < PER_THREAD; i++) {
    ckpt_trace(CKPT_T_STALL, id, NULL, 0, 0, (uint64_t)i);
    if (i % 2000 == 1999) usleep(1000); /* bursts, as a program makes them: the flusher gets a turn */
  }
  return NULL;
}

/* Several threads at once, more records than the buffer holds: every record
 * is in the file or counted as dropped, each thread's in its order. */
Test(trace, threads_and_a_full_buffer, .init = setup, .timeout = 60) {
  ckpt_init();
  pthread_t th[THREADS];
  for (int i = 0; i < THREADS; i++) pthread_create(&th[i], NULL, spam, (void *)(intptr_t)(i + 1));
  for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
  ckpt_observe_exit();
  struct trace_file t = read_trace(path);
  uint64_t seen = 0, dropped = 0;
  int64_t last[THREADS + 1];
  for (int i = 0; i <= THREADS; i++) last[i] = -1;
  for (size_t i = 0; i < t.n; i += 1 + t.r[i].text) {
    const struct ckpt_trace_rec *r = &t.r[i];
    if (r->kind == CKPT_T_DROPPED) dropped += r->value;
    if (r->kind != CKPT_T_STALL) continue;
    cr_assert(r->region >= 1 && r->region <= THREADS);
    cr_assert_gt((int64_t)r->value, last[r->region], "thread %d out of order", r->region);
    last[r->region] = (int64_t)r->value;
    seen++;
  }
  cr_assert_eq(seen + dropped, (uint64_t)THREADS * PER_THREAD, "seen %llu + dropped %llu",
               (unsigned long long)seen, (unsigned long long)dropped);
  cr_assert_gt(seen, 16384, "the observer thread flushed while the threads ran");
}

Test(trace, existing_file_is_not_overwritten, .init = setup) {
  int fd = open(path, O_CREAT | O_WRONLY, 0644);
  cr_assert_eq(write(fd, "mine", 4), 4);
  close(fd);
  ut_capture_start();
  ckpt_init();
  const char *log = ut_capture_end();
  cr_assert_not_null(strstr(log, "already exists"), "log: %s", log);
  ckpt_region_begin("r");
  ckpt_region_end();
  ckpt_observe_exit();
  struct stat st;
  cr_assert_eq(stat(path, &st), 0);
  cr_assert_eq(st.st_size, 4);
}

Test(trace, planted_link_is_not_followed, .init = setup) {
  char target[300];
  snprintf(target, sizeof target, "%s/target", dir);
  int fd = open(target, O_CREAT | O_WRONLY, 0644);
  cr_assert_eq(write(fd, "keep", 4), 4);
  close(fd);
  cr_assert_eq(symlink(target, path), 0);
  ut_capture_start();
  ckpt_init();
  ut_capture_end();
  ckpt_region_begin("r");
  ckpt_region_end();
  ckpt_observe_exit();
  struct stat st;
  cr_assert_eq(stat(target, &st), 0);
  cr_assert_eq(st.st_size, 4, "written through the link");
}

Test(trace, percent_p_is_the_pid, .init = setup) {
  snprintf(path, sizeof path, "%s/trace.%%p", dir);
  ut_env("CKPT_TRACE", path);
  ckpt_init();
  ckpt_observe_exit();
  char real[300];
  snprintf(real, sizeof real, "%s/trace.%d", dir, (int)getpid());
  struct trace_file t = read_trace(real);
  cr_assert_eq(t.h.pid, getpid());
}

Test(trace, forked_child_writes_nothing, .init = setup) {
  ckpt_init();
  ckpt_region_begin("parent");
  ckpt_region_end();
  pid_t pid = fork();
  if (pid == 0) {
    ckpt_trace(CKPT_T_STALL, 99, NULL, 0, 0, 0);
    ckpt_observe_exit();
    _exit(0);
  }
  int status;
  waitpid(pid, &status, 0);
  cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ckpt_observe_exit();
  struct trace_file t = read_trace(path);
  int opens = 0;
  for (size_t i = 0; i < t.n; i += 1 + t.r[i].text) {
    cr_assert_neq(t.r[i].region, 99, "the child's record reached the file");
    opens += t.r[i].kind == CKPT_T_REGION_OPEN;
  }
  cr_assert_eq(opens, 1, "the parent's buffered records were written once");
}
