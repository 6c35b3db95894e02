/* Exit does not hang on a program stream that never passes a free, under
 * LD_PRELOAD on the simulated device.
 *
 * `exit_wait MODE` runs itself as a child (`exit_wait MODE child`, exec'd:
 * libckpt leaves a forked child alone) and gives it LIMIT_S to exit. The
 * child tags a tensor on stream w, blocks w on a word nobody writes
 * (cuStreamWaitValue32), frees the tensor on w and exits: the free's event
 * never completes, and libckpt's exit release waits for it. Passes when the
 * child exits 0 in time and libckpt's warning names the mapping it left
 * unreleased. MODE:
 *   stuck_copy  an offload is queued after w blocks: its copy is fenced behind
 *               w, so at exit the engine is either stuck on it (its stop is
 *               bounded, engine.c) or stops with it still queued; either way
 *               exit releases only the arena, whose wait for the free is the
 *               one under test (it hung in cuEventSynchronize before)
 *   plain       no offload: exit used to go on to release the gate page,
 *               whose cuMemFreeHost synchronizes the device and so waited for
 *               w for ever; exit now releases nothing more of the driver once
 *               the arena left a mapping unreleased (hooks/init.c) */
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

#define LIMIT_S 20 /* libckpt's exit bound is 2 s: ample on two busy cores */

static int child(bool offload) {
  ck_load();
  ctx_setup();
  volatile uint32_t *word;
  CUdeviceptr dword;
  CU(cuMemHostAlloc((void **)&word, 4096, CU_MEMHOSTALLOC_DEVICEMAP | CU_MEMHOSTALLOC_PORTABLE));
  CU(cuMemHostGetDevicePointer_v2(&dword, (void *)word, 0));
  *word = 0;
  CUstream w, c;
  CU(cuStreamCreate(&w, CU_STREAM_NON_BLOCKING));
  CU(cuStreamCreate(&c, CU_STREAM_NON_BLOCKING));
  const size_t n = 6 * MiB;
  int a = ck.region_begin("a");
  CUdeviceptr y;
  CU(cuMemAllocAsync(&y, n, c));
  CU(cuStreamSynchronize(c));
  pattern_fill((void *)y, n, 4);
  ck.region_end();
  ck.region_begin("b");
  CUdeviceptr x;
  CU(cuMemAllocAsync(&x, n, w));
  CU(cuStreamSynchronize(w));
  pattern_fill((void *)x, n, 5);
  ck.region_end();
  CHECK(residency(x) == CKPT_DEVICE, "not tagged: residency %d", residency(x));
  /* w never gets past this: the free below is never reached by the stream. */
  CU(cuStreamWaitValue32_v2(w, dword, 1, CU_STREAM_WAIT_VALUE_GEQ));
  if (offload) CHECK(ck.offload(a) == 0); /* its copy waits for w's work so far: forever */
  CU(cuMemFreeAsync(x, w));
  printf("child: freed %#llx on a blocked stream, exiting\n", (unsigned long long)x);
  fflush(stdout);
  return 0; /* libckpt's exit handler runs now */
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Reads what is there on fd (non-blocking) onto buf. */
static void drain(int fd, char *buf, size_t cap, size_t *len) {
  ssize_t k;
  while (*len + 1 < cap && (k = read(fd, buf + *len, cap - 1 - *len)) > 0) *len += (size_t)k;
  buf[*len] = 0;
}

int main(int argc, char **argv) {
  CHECK(argc >= 2 && (!strcmp(argv[1], "stuck_copy") || !strcmp(argv[1], "plain")), "usage: exit_wait stuck_copy|plain");
  if (argc > 2 && !strcmp(argv[2], "child")) return child(!strcmp(argv[1], "stuck_copy"));
  int out[2], err[2];
  CHECK(pipe(out) == 0 && pipe(err) == 0);
  double t0 = now();
  pid_t pid = fork();
  CHECK(pid >= 0);
  if (pid == 0) {
    dup2(out[1], 1);
    dup2(err[1], 2);
    close(out[0]);
    close(err[0]);
    execl("/proc/self/exe", argv[0], argv[1], "child", (char *)NULL);
    _exit(127);
  }
  close(out[1]);
  close(err[1]);
  fcntl(out[0], F_SETFL, O_NONBLOCK);
  fcntl(err[0], F_SETFL, O_NONBLOCK);
  static char obuf[1 << 16], ebuf[1 << 16];
  size_t olen = 0, elen = 0;
  int status = 0;
  pid_t done = 0;
  while ((done = waitpid(pid, &status, WNOHANG)) == 0 && now() - t0 < LIMIT_S) {
    drain(out[0], obuf, sizeof obuf, &olen);
    drain(err[0], ebuf, sizeof ebuf, &elen);
    usleep(20000);
  }
  double secs = now() - t0;
  if (done == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
  }
  drain(out[0], obuf, sizeof obuf, &olen);
  drain(err[0], ebuf, sizeof ebuf, &elen);
  fprintf(stderr, "--- child stdout:\n%s--- child stderr:\n%s---\n", obuf, ebuf);
  CHECK(done == pid, "the child's exit hung: killed after %d s", LIMIT_S);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
  const char *freed = strstr(obuf, "freed ");
  CHECK(freed, "the child did not get to its free");
  char va[32] = "";
  CHECK(sscanf(freed, "freed %31s", va) == 1);
  const char *warn = strstr(ebuf, "not released");
  CHECK(warn, "no warning about the unreleased mapping");
  CHECK(strstr(warn, va), "the warning does not name %s", va);
  printf("exit_wait %s: the child exited in %.1f s, %s left unreleased and said: ok\n", argv[1], secs, va);
  return 0;
}
