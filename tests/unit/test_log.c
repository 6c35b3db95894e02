/* Criterion runs each test in its own process: the logger starts at WARN on stderr. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"

static FILE *capture;
static char captured[16384];

static void capture_start(void) {
  capture = tmpfile();
  cr_assert_not_null(capture);
  ckpt_log_set_fd(fileno(capture));
}

static int count_lines(const char *s) {
  int n = 0;
  for (; *s; s++) n += *s == '\n';
  return n;
}

static int capture_end(void) {
  ckpt_log_set_fd(-1);
  ssize_t n = pread(fileno(capture), captured, sizeof captured - 1, 0);
  captured[n < 0 ? 0 : n] = '\0';
  fclose(capture);
  return count_lines(captured);
}

static void read_file(const char *path, char *out, size_t cap) {
  int fd = open(path, O_RDONLY);
  cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
  ssize_t n = read(fd, out, cap - 1);
  out[n < 0 ? 0 : n] = '\0';
  close(fd);
}

static char tmpdir[] = "/tmp/ckpt-test-log-XXXXXX";
static void make_tmpdir(void) { cr_assert_not_null(mkdtemp(tmpdir)); }
static void remove_tmpdir(void) {
  if (strstr(tmpdir, "XXXXXX")) return;
  char cmd[PATH_MAX + 16];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
}

static int evaluated;
static int side_effect(void) { return ++evaluated; }

Test(log, default_level_is_warn) { cr_assert_eq(ckpt_log_level, CKPT_LOG_WARN); }

Test(log, level_filtering) {
  capture_start();
  ckpt_log_level = CKPT_LOG_WARN;
  CKPT_WARN("w%d", 1);
  CKPT_INFO("i%d", side_effect());
  CKPT_TRACE("t%d", side_effect());
  cr_assert_eq(evaluated, 0, "a disabled level does not evaluate its arguments");
  ckpt_log_level = CKPT_LOG_INFO;
  CKPT_INFO("i%d", 2);
  CKPT_TRACE("t%d", 2);
  ckpt_log_level = CKPT_LOG_NONE;
  CKPT_WARN("w%d", 3);
  cr_assert_eq(capture_end(), 2, "%s", captured);
  char want[256];
  snprintf(want, sizeof want, "libckpt[%d] WARN w1\nlibckpt[%d] INFO i2\n", (int)getpid(),
           (int)getpid());
  cr_assert_str_eq(captured, want);
}

Test(log, trace_adds_file_and_line) {
  capture_start();
  ckpt_log_level = CKPT_LOG_TRACE;
  int line = __LINE__ + 1;
  CKPT_TRACE("deep");
  CKPT_WARN("also located");
  capture_end();
  char want[128];
  snprintf(want, sizeof want, "TRACE test_log.c:%d deep\n", line);
  cr_assert(strstr(captured, want), "%s", captured);
  snprintf(want, sizeof want, "WARN test_log.c:%d also located\n", line + 1);
  cr_assert(strstr(captured, want), "%s", captured);
}

Test(log, one_newline_and_errno_kept) {
  capture_start();
  errno = EBUSY;
  CKPT_WARN("ends with newline\n");
  cr_assert_eq(errno, EBUSY);
  capture_end();
  cr_assert(strstr(captured, "newline\n") && !strstr(captured, "\n\n"), "%s", captured);
}

Test(log, long_messages_are_cut_not_overflowed) {
  static char big[10000];
  memset(big, 'y', sizeof big - 1);
  capture_start();
  CKPT_WARN("%s", big);
  cr_assert_eq(capture_end(), 1);
  size_t n = strlen(captured);
  cr_assert_lt(n, 4096);
  cr_assert_str_eq(captured + n - 4, "...\n");
}

static void warn_once_site(void) { CKPT_WARN_ONCE("only once %d", 7); }

Test(log, warn_once) {
  capture_start();
  ckpt_log_level = CKPT_LOG_NONE;
  warn_once_site(); /* not printed, so not spent */
  ckpt_log_level = CKPT_LOG_WARN;
  for (int i = 0; i < 5; i++) warn_once_site();
  for (int i = 0; i < 2; i++) CKPT_WARN_ONCE("another site"); /* own flag */
  cr_assert_eq(capture_end(), 2, "%s", captured);
  cr_assert(strstr(captured, "only once 7\n"));
  cr_assert(strstr(captured, "another site\n"));
}

static void *warn_once_many(void *arg) {
  (void)arg;
  for (int i = 0; i < 1000; i++) warn_once_site();
  return NULL;
}

Test(log, warn_once_across_threads) {
  capture_start();
  pthread_t t[8];
  for (int i = 0; i < 8; i++) pthread_create(&t[i], NULL, warn_once_many, NULL);
  for (int i = 0; i < 8; i++) pthread_join(t[i], NULL);
  cr_assert_eq(capture_end(), 1, "%s", captured);
}

static void *emit_many(void *arg) {
  for (int i = 0; i < 200; i++) CKPT_WARN("thread %ld message %d", (long)(intptr_t)arg, i);
  return NULL;
}

Test(log, lines_from_threads_do_not_interleave) {
  capture = tmpfile();
  ckpt_log_set_fd(fileno(capture));
  pthread_t t[4];
  for (long i = 0; i < 4; i++) pthread_create(&t[i], NULL, emit_many, (void *)(intptr_t)i);
  for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
  ckpt_log_set_fd(-1);
  static char all[65536];
  ssize_t n = pread(fileno(capture), all, sizeof all - 1, 0);
  all[n < 0 ? 0 : n] = '\0';
  cr_assert_eq(count_lines(all), 800);
  for (char *line = strtok(all, "\n"); line; line = strtok(NULL, "\n"))
    cr_assert(strncmp(line, "libckpt[", 8) == 0 && strstr(line, " message "), "%s", line);
}

Test(log, file_with_pid_and_host, .fini = remove_tmpdir) {
  make_tmpdir();
  char pattern[PATH_MAX], path[PATH_MAX], host[256], text[4096];
  snprintf(pattern, sizeof pattern, "%s/log.%%p.%%h.%%%%", tmpdir);
  ckpt_log_configure(CKPT_LOG_INFO, pattern);
  cr_assert_eq(access(tmpdir, F_OK), 0);
  CKPT_INFO("to the file");
  gethostname(host, sizeof host);
  snprintf(path, sizeof path, "%s/log.%d.%s.%%", tmpdir, (int)getpid(), host);
  read_file(path, text, sizeof text);
  char want[128];
  snprintf(want, sizeof want, "libckpt[%d] INFO to the file\n", (int)getpid());
  cr_assert_str_eq(text, want);
  struct stat st;
  cr_assert_eq(stat(path, &st), 0);
  mode_t mask = umask(0);
  umask(mask);
  cr_assert_eq(st.st_mode & 0777, 0600 & ~mask);

  /* Appends; reconfiguring to the same path keeps the file. */
  ckpt_log_configure(CKPT_LOG_WARN, pattern);
  CKPT_WARN("second");
  read_file(path, text, sizeof text);
  cr_assert_eq(count_lines(text), 2, "%s", text);
  cr_assert(strstr(text, "WARN second\n"));
}

Test(log, forked_child_opens_its_own_pid_file, .fini = remove_tmpdir) {
  make_tmpdir();
  char pattern[PATH_MAX], path[PATH_MAX], text[4096];
  snprintf(pattern, sizeof pattern, "%s/log.%%p", tmpdir);
  ckpt_log_configure(CKPT_LOG_WARN, pattern);
  CKPT_WARN("parent");
  pid_t child = fork();
  if (child == 0) {
    CKPT_WARN("child");
    _exit(0);
  }
  int status;
  waitpid(child, &status, 0);
  snprintf(path, sizeof path, "%s/log.%d", tmpdir, (int)child);
  read_file(path, text, sizeof text);
  cr_assert(strstr(text, "WARN child\n") && count_lines(text) == 1, "%s", text);
  snprintf(path, sizeof path, "%s/log.%d", tmpdir, (int)getpid());
  read_file(path, text, sizeof text);
  cr_assert(strstr(text, "WARN parent\n") && count_lines(text) == 1, "%s", text);
}

/* Runs fn with stderr sent to a temp file; returns what it wrote. */
static void with_stderr_captured(void (*fn)(void), char *out, size_t cap) {
  FILE *f = tmpfile();
  int saved = dup(STDERR_FILENO);
  dup2(fileno(f), STDERR_FILENO);
  fn();
  dup2(saved, STDERR_FILENO);
  close(saved);
  ssize_t n = pread(fileno(f), out, cap - 1, 0);
  out[n < 0 ? 0 : n] = '\0';
  fclose(f);
}

static void warn_twice(void) {
  CKPT_WARN("first message");
  CKPT_WARN("second message");
}

Test(log, symlink_is_refused, .fini = remove_tmpdir) {
  make_tmpdir();
  char target[PATH_MAX], link[PATH_MAX], err[4096], text[256];
  snprintf(target, sizeof target, "%s/target", tmpdir);
  snprintf(link, sizeof link, "%s/link", tmpdir);
  int fd = open(target, O_WRONLY | O_CREAT, 0600);
  close(fd);
  cr_assert_eq(symlink(target, link), 0);

  ckpt_log_configure(CKPT_LOG_WARN, link);
  with_stderr_captured(warn_twice, err, sizeof err);
  read_file(target, text, sizeof text);
  cr_assert_str_eq(text, "", "nothing written through the symlink");
  cr_assert_eq(count_lines(err), 3, "one warning, then both messages: %s", err);
  char want[PATH_MAX + 128];
  snprintf(want, sizeof want, "cannot open CKPT_DEBUG_FILE %s: %s; logging to stderr\n", link,
           strerror(ELOOP));
  cr_assert(strstr(err, want), "%s", err);
  cr_assert(strstr(err, "WARN first message\n") && strstr(err, "WARN second message\n"));
}

Test(log, unopenable_path_falls_back_to_stderr) {
  char err[4096];
  ckpt_log_configure(CKPT_LOG_WARN, "/nonexistent-dir/ckpt.log");
  with_stderr_captured(warn_twice, err, sizeof err);
  cr_assert_eq(count_lines(err), 3, "%s", err);
  cr_assert(strstr(err, "/nonexistent-dir/ckpt.log: No such file or directory"), "%s", err);
}

Test(log, set_fd_overrides_the_file, .fini = remove_tmpdir) {
  make_tmpdir();
  char path[PATH_MAX], text[256];
  snprintf(path, sizeof path, "%s/log", tmpdir);
  ckpt_log_configure(CKPT_LOG_WARN, path);
  capture_start();
  CKPT_WARN("to the test fd");
  ckpt_log_configure(CKPT_LOG_WARN, path); /* params reload must not steal the fd */
  CKPT_WARN("still the test fd");
  cr_assert_eq(capture_end(), 2, "%s", captured);
  CKPT_WARN("to the file");
  read_file(path, text, sizeof text);
  cr_assert(strstr(text, "WARN to the file\n") && count_lines(text) == 1, "%s", text);
}

/* The exit summary's writer: no level name, printed whatever the level. */
static void print_summary_at_none(void) {
  ckpt_log_configure(CKPT_LOG_NONE, "");
  ckpt_log_print("summary: %s", "device peak 2 MiB");
  ckpt_log_configure(CKPT_LOG_WARN, "");
}

Test(log, print_ignores_the_level_and_has_no_level_name) {
  char err[4096];
  with_stderr_captured(print_summary_at_none, err, sizeof err);
  char want[64];
  snprintf(want, sizeof want, "libckpt[%d] summary: device peak 2 MiB\n", (int)getpid());
  cr_assert_str_eq(err, want);
}

static void open_now(void) { ckpt_log_open_now(); }

Test(log, open_now_reports_an_unusable_file_at_once) {
  char err[4096];
  ckpt_log_configure(CKPT_LOG_WARN, "/nonexistent-dir/now.log");
  with_stderr_captured(open_now, err, sizeof err);
  cr_assert_eq(count_lines(err), 1, "%s", err);
  cr_assert(strstr(err, "cannot open CKPT_DEBUG_FILE /nonexistent-dir/now.log: No such file or directory; "
                        "logging to stderr"), "%s", err);
  with_stderr_captured(open_now, err, sizeof err);
  cr_assert_str_eq(err, "", "reported once");
}
