/* fork() and exec() from a process that uses CUDA through libckpt.
 *
 *   fork fork    data-loader workers: children forked after CUDA use (one of
 *                them while an offload is in flight, others while another
 *                thread hammers libckpt's lock) call every API function: each
 *                is pass-through (CKPT_EDISABLED or harmless), makes no driver
 *                call, prints nothing, and leaves the parent's stats segment
 *                alone; the parent's data and engine are intact afterwards.
 *   fork exec    children exec'd from a CUDA-using parent inherit LD_PRELOAD:
 *                /bin/true, python3 -c pass (when there) and this program in
 *                a CUDA-using child mode print nothing and exit 0.
 *   fork child-cuda   (the exec'd CUDA child) a small offload round trip.
 */
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "hard.h"

static CUstream s;

/* Driver entry points libckpt calls; a forked child must make none of them. */
static const char *const driver_calls[] = {
    "cuStreamCreate", "cuEventCreate", "cuEventRecord", "cuStreamWaitEvent", "cuEventQuery", "cuEventSynchronize",
    "cuMemCreate", "cuMemMap", "cuMemUnmap", "cuMemRelease", "cuMemSetAccess", "cuMemAddressReserve",
    "cuMemAddressFree", "cuMemcpyDtoDAsync_v2", "cuStreamWaitValue32_v2", "cuStreamBatchMemOp_v2",
    "cuMemHostAlloc", "cuCtxSynchronize", "cuStreamSynchronize", "cuMemGetInfo_v2", "cuCtxSetCurrent",
};
#define NCALLS (sizeof driver_calls / sizeof *driver_calls)

static unsigned long calls_total(void) {
  unsigned long n = 0;
  for (size_t i = 0; i < NCALLS; i++) n += simdev_calls(driver_calls[i]);
  return n;
}

static bool segment_exists(pid_t pid) {
  char path[128];
  struct stat st;
  snprintf(path, sizeof path, "/dev/shm/libckpt.%u.%d", (unsigned)getuid(), (int)pid);
  return lstat(path, &st) == 0;
}

/* One forward region pair: region a's tensors offloaded by the policy. */
struct fwd {
  int a, b;
  struct tensor x[2], y;
};

static void forward(struct fwd *f, uint64_t seed) {
  f->a = ck.region_begin("a");
  hard_alloc(&f->x[0], 4 * MiB + 7, seed, s);
  hard_alloc(&f->x[1], 2 * MiB, seed + 1, s);
  CHECK(ck.region_end() == f->a);
  f->b = ck.region_begin("b");
  hard_alloc(&f->y, 4 * MiB, seed + 2, s);
  CHECK(ck.region_end() == f->b); /* a is being offloaded now (CKPT_KEEP_LAST=1) */
}

static void backward(struct fwd *f) {
  CHECK(ck.restore(f->b) == 0);
  hard_launch(s, hard_check_kernel, &f->y, 0);
  CHECK(ck.restore(f->a) == 0);
  for (int i = 0; i < 2; i++) hard_launch(s, hard_check_kernel, &f->x[i], 0);
  CU(cuMemFreeAsync(f->y.p, s));
  for (int i = 0; i < 2; i++) CU(cuMemFreeAsync(f->x[i].p, s));
  CU(cuStreamSynchronize(s));
  CHECK(kernel_errors == 0);
  CHECK(ck.step() == 0);
}

/* ---- the forked child ------------------------------------------------------ */

#define EXPECT_DISABLED(call) CHECK((call) == CKPT_EDISABLED, "child: %s did not return CKPT_EDISABLED", #call)

static int child_body(struct fwd *f, pid_t parent) {
  unsigned long before = calls_total();
  EXPECT_DISABLED(ck.region_begin("worker"));
  EXPECT_DISABLED(ck.region_end());
  EXPECT_DISABLED(ck.offload(f->a));
  EXPECT_DISABLED(ck.prefetch(f->a));
  EXPECT_DISABLED(ck.restore(f->a));
  EXPECT_DISABLED(ck.restore_ptr(f->x[0].p));
  EXPECT_DISABLED(ck.wait(f->a));
  EXPECT_DISABLED(ck.step());
  EXPECT_DISABLED(ck.release_cached());
  /* Harmless ones: no error, nothing done. */
  int rid, res;
  (void)ck.query(f->x[0].p, &rid, &res);
  CHECK(ck.set_stream((uintptr_t)s) == 0, "child: set_stream");
  struct ckpt_stats st;
  CHECK(ck.stats_get(&st, sizeof st) == 0, "child: stats_get");
  CHECK(ck.mode() != NULL);
  unsigned long after = calls_total();
  CHECK(after == before, "child: libckpt made %lu driver calls in a forked child", after - before);
  CHECK(segment_exists(parent), "child: the parent's stats segment is gone");
  CHECK(!segment_exists(getpid()), "child: a forked child created its own stats segment");
  return 0;
}

/* Forks; the child runs child_body with stderr captured, exits through
 * exit() (atexit handlers run, as in a worker that returns from main). The
 * parent checks the exit status and that the child printed nothing. */
static void fork_and_check(struct fwd *f, const char *what) {
  char path[] = "/tmp/ckpt-fork-XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0);
  unlink(path);
  fflush(NULL);
  pid_t parent = getpid();
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    dup2(fd, 2);
    dup2(fd, 1);
    alarm(20); /* a child stuck on a lock inherited locked dies, and the parent says so */
    exit(child_body(f, parent));
  }
  int status = 0;
  CHECK(waitpid(pid, &status, 0) == pid);
  char out[4096];
  ssize_t n = pread(fd, out, sizeof out - 1, 0);
  close(fd);
  out[n > 0 ? n : 0] = '\0';
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: child %s (status %#x); its output: %s", what,
        WIFSIGNALED(status) ? (WTERMSIG(status) == SIGALRM ? "hung (deadlock on an inherited lock?)" : "crashed")
                            : "failed",
        status, out);
  CHECK(n == 0, "%s: child printed: %s", what, out);
}

static _Atomic int hammer_stop;
static void *hammer(void *arg) {
  struct fwd *f = arg;
  CU(cuCtxSetCurrent(ctx_setup()));
  while (!hammer_stop) {
    int rid, res;
    ck.query(f->x[0].p, &rid, &res);
    struct ckpt_stats st;
    ck.stats_get(&st, sizeof st);
  }
  return NULL;
}

static void test_fork(void) {
  struct fwd f;
  /* 1. Offload in flight (slow copies) when the child is forked. */
  simdev_set_copy_gbps(0.2);
  forward(&f, 1);
  CHECK(residency(f.x[0].p) == CKPT_OFFLOADING || residency(f.x[0].p) == CKPT_HOST);
  fork_and_check(&f, "fork during an offload");
  CHECK(ck.wait(f.a) == 0);
  CHECK(residency(f.x[0].p) == CKPT_HOST, "the parent's offload did not complete after the fork");
  backward(&f);
  simdev_set_copy_gbps(0);

  /* 2. Another thread inside libckpt's lock at the moment of fork, many times. */
  forward(&f, 10);
  pthread_t th;
  CHECK(pthread_create(&th, NULL, hammer, &f) == 0);
  for (int i = 0; i < 40; i++) fork_and_check(&f, "fork while another thread holds libckpt's lock");
  hammer_stop = 1;
  pthread_join(th, NULL);
  backward(&f);

  /* 3. The parent carries on: another step offloads and restores. */
  forward(&f, 20);
  CHECK(ck.wait(f.a) == 0);
  CHECK(residency(f.x[0].p) == CKPT_HOST);
  backward(&f);
  CHECK(segment_exists(getpid()), "the parent's stats segment is gone after its children exited");
  struct ckpt_stats st = ck_stats();
  CHECK(st.driver_errors == 0, "%llu driver errors", (unsigned long long)st.driver_errors);
  CHECK(!simdev_faulted());
}

/* ---- exec ------------------------------------------------------------------ */

static bool on_path(const char *prog) {
  const char *path = getenv("PATH");
  if (!path) return false;
  char buf[4096];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *save = NULL, *d = strtok_r(buf, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
    char full[4200];
    snprintf(full, sizeof full, "%s/%s", d, prog);
    if (access(full, X_OK) == 0) return true;
  }
  return false;
}

static void exec_and_check(char *const argv[]) {
  char path[] = "/tmp/ckpt-exec-XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0);
  unlink(path);
  fflush(NULL);
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    dup2(fd, 1);
    dup2(fd, 2);
    alarm(60);
    execvp(argv[0], argv);
    _exit(127);
  }
  int status = 0;
  CHECK(waitpid(pid, &status, 0) == pid);
  char out[4096];
  ssize_t n = pread(fd, out, sizeof out - 1, 0);
  close(fd);
  out[n > 0 ? n : 0] = '\0';
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exec %s: status %#x, output: %s", argv[0], status, out);
  CHECK(n == 0, "exec %s printed: %s", argv[0], out);
}

static void test_exec(const char *self) {
  struct fwd f;
  forward(&f, 30);
  CHECK(ck.wait(f.a) == 0);
  exec_and_check((char *[]){"/bin/true", NULL});
  if (on_path("python3")) exec_and_check((char *[]){"python3", "-c", "pass", NULL});
  else printf("exec: python3 not found, skipped\n");
  exec_and_check((char *[]){(char *)self, "child-cuda", NULL});
  backward(&f);
  CHECK(segment_exists(getpid()), "the parent's stats segment is gone");
}

/* The exec'd child: uses CUDA through libckpt like any process. Silent. */
static void child_cuda(void) {
  struct fwd f;
  forward(&f, 40);
  CHECK(ck.wait(f.a) == 0);
  CHECK(residency(f.x[0].p) == CKPT_HOST);
  CHECK(segment_exists(getpid()), "exec'd child: no stats segment of its own");
  backward(&f);
}

int main(int argc, char **argv) {
  CHECK(argc >= 2, "usage: fork fork|exec|child-cuda");
  watchdog_start("fork", 120);
  ck_load();
  ctx_setup();
  CU(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  CHECK(ck.set_stream((uintptr_t)s) == 0);
  if (!strcmp(argv[1], "fork")) test_fork();
  else if (!strcmp(argv[1], "exec")) test_exec(argv[0]);
  else if (!strcmp(argv[1], "child-cuda")) {
    child_cuda();
    return 0; /* silent: the parent checks that nothing was printed */
  } else CHECK(0, "unknown mode %s", argv[1]);
  CHECK(kernel_errors == 0);
  printf("fork %s: ok\n", argv[1]);
  return 0;
}
