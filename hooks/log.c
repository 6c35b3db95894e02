#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int ckpt_log_level = CKPT_LOG_WARN;

enum { LOG_LINE_MAX = 2048, LOG_FD_PENDING = -2 };

/* Destination: stderr, an opened CKPT_DEBUG_FILE, or PENDING until the first
 * message opens that file. Read without locks on every message. */
static int log_fd = STDERR_FILENO;
static int log_fd_owned;          /* opened here: closed on reconfigure / in a %p child */
static int log_fd_override = -1;  /* ckpt_log_set_fd */
static char log_path[PATH_MAX];   /* CKPT_DEBUG_FILE before %p/%h expansion */
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static const char *level_name(int level) {
  switch (level) {
  case CKPT_LOG_WARN: return "WARN";
  case CKPT_LOG_INFO: return "INFO";
  case CKPT_LOG_TRACE: return "TRACE";
  default: return "LOG";
  }
}

/* Appends to buf[*len..cap), always leaving room for the final newline. */
__attribute__((format(printf, 4, 0)))
static void append(char *buf, size_t cap, size_t *len, const char *fmt, va_list ap) {
  if (*len >= cap - 1) return;
  int n = vsnprintf(buf + *len, cap - 1 - *len, fmt, ap);
  if (n < 0) return;
  if ((size_t)n >= cap - 1 - *len) {
    *len = cap - 1;
    memcpy(buf + *len - 3, "...", 3); /* say it was cut */
  } else {
    *len += (size_t)n;
  }
}

__attribute__((format(printf, 4, 5)))
static void appendf(char *buf, size_t cap, size_t *len, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  append(buf, cap, len, fmt, ap);
  va_end(ap);
}

/* "%p" -> pid, "%h" -> hostname, "%%" -> "%"; other text is copied. */
static int expand_path(const char *in, char *out, size_t cap) {
  size_t n = 0;
  for (const char *s = in; *s; s++) {
    char piece[HOST_NAME_MAX + 1];
    const char *add = piece;
    if (s[0] == '%' && s[1] == 'p') {
      snprintf(piece, sizeof piece, "%d", (int)getpid());
      s++;
    } else if (s[0] == '%' && s[1] == 'h') {
      if (gethostname(piece, sizeof piece) != 0) snprintf(piece, sizeof piece, "unknown");
      piece[sizeof piece - 1] = '\0';
      s++;
    } else if (s[0] == '%' && s[1] == '%') {
      add = "%";
      s++;
    } else {
      piece[0] = *s;
      piece[1] = '\0';
    }
    size_t k = strlen(add);
    if (n + k >= cap) return -ENAMETOOLONG;
    memcpy(out + n, add, k);
    n += k;
  }
  out[n] = '\0';
  return 0;
}

/* Called once log_fd is stderr, so this does not come back to the file. */
static void report_unusable(const char *path, int err) {
  char ebuf[128];
  const char *etext = strerror_r(err, ebuf, sizeof ebuf);
  ckpt_log_emit(CKPT_LOG_WARN, __FILE__, __LINE__, "cannot open CKPT_DEBUG_FILE %s: %s; logging to stderr",
                err == ENAMETOOLONG ? log_path : path, etext);
}

/* 0 when the file could be opened for appending (or created), else the errno
 * saying why not. Creates nothing and keeps nothing open: the file is still
 * opened at the first message. O_NONBLOCK: a FIFO must not block the probe. */
static int probe_log_file(const char *path) {
  int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd >= 0) {
    close(fd);
    return 0;
  }
  if (errno != ENOENT) return errno;
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (!slash) snprintf(dir, sizeof dir, ".");
  else if (slash == dir) dir[1] = '\0';
  else *slash = '\0';
  return access(dir, W_OK | X_OK) == 0 ? 0 : errno;
}

/* First message after configure: open the file. Racing threads may both open;
 * the one that publishes its fd wins and only it reports a failure. */
static int open_log_file(void) {
  char path[PATH_MAX];
  int err = -expand_path(log_path, path, sizeof path);
  int fd = -1;
  if (!err) {
    fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) err = errno;
  }
  int expected = LOG_FD_PENDING;
  int want = fd >= 0 ? fd : STDERR_FILENO;
  if (!__atomic_compare_exchange_n(&log_fd, &expected, want, 0, __ATOMIC_ACQ_REL,
                                   __ATOMIC_ACQUIRE)) {
    if (fd >= 0) close(fd);
    return expected;
  }
  if (fd >= 0) {
    log_fd_owned = 1;
  } else {
    report_unusable(path, err);
  }
  return want;
}

static int log_dest(void) {
  int fd = __atomic_load_n(&log_fd_override, __ATOMIC_ACQUIRE);
  if (fd >= 0) return fd;
  fd = __atomic_load_n(&log_fd, __ATOMIC_ACQUIRE);
  return fd == LOG_FD_PENDING ? open_log_file() : fd;
}

/* level < 0: no level name, whatever the current level (ckpt_log_print). */
__attribute__((format(printf, 4, 0)))
static void emit(int level, const char *file, int line, const char *fmt, va_list ap) {
  int saved_errno = errno; /* callers are hooks: the host program reads errno */
  char buf[LOG_LINE_MAX];
  size_t len = 0;
  appendf(buf, sizeof buf, &len, "libckpt[%d] ", (int)getpid());
  if (level >= 0) appendf(buf, sizeof buf, &len, "%s ", level_name(level));
  if (level >= 0 && file && __atomic_load_n(&ckpt_log_level, __ATOMIC_RELAXED) >= CKPT_LOG_TRACE) {
    const char *base = strrchr(file, '/');
    appendf(buf, sizeof buf, &len, "%s:%d ", base ? base + 1 : file, line);
  }
  append(buf, sizeof buf, &len, fmt, ap);
  while (len > 0 && buf[len - 1] == '\n') len--;
  buf[len++] = '\n';

  int fd = log_dest();
  while (write(fd, buf, len) < 0 && errno == EINTR) {
  }
  errno = saved_errno;
}

void ckpt_log_emit(int level, const char *file, int line, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  emit(level, file, line, fmt, ap);
  va_end(ap);
}

void ckpt_log_print(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  emit(-1, NULL, 0, fmt, ap);
  va_end(ap);
}

void ckpt_log_open_now(void) {
  if (__atomic_load_n(&log_fd_override, __ATOMIC_ACQUIRE) >= 0) return;
  if (__atomic_load_n(&log_fd, __ATOMIC_ACQUIRE) != LOG_FD_PENDING) return;
  char path[PATH_MAX];
  int err = -expand_path(log_path, path, sizeof path);
  if (!err) err = probe_log_file(path);
  if (!err) return; /* opened at the first message, as before */
  int expected = LOG_FD_PENDING;
  if (__atomic_compare_exchange_n(&log_fd, &expected, STDERR_FILENO, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
    report_unusable(path, err);
}

/* A child of fork() logs to its own file when the name holds its pid. */
static void log_atfork_child(void) {
  if (!strstr(log_path, "%p")) return;
  int fd = __atomic_load_n(&log_fd, __ATOMIC_ACQUIRE);
  if (fd >= 0 && log_fd_owned) close(fd);
  log_fd_owned = 0;
  __atomic_store_n(&log_fd, LOG_FD_PENDING, __ATOMIC_RELEASE);
}

static void log_register_atfork(void) { pthread_atfork(NULL, NULL, log_atfork_child); }

void ckpt_log_configure(int level, const char *path) {
  if (level < CKPT_LOG_NONE) level = CKPT_LOG_NONE;
  if (level > CKPT_LOG_TRACE) level = CKPT_LOG_TRACE;
  __atomic_store_n(&ckpt_log_level, level, __ATOMIC_RELAXED);
  if (!path) path = "";
  if (strcmp(path, log_path) == 0) return; /* same file: keep it open */

  /* Park messages on stderr while the path changes. */
  int old = __atomic_exchange_n(&log_fd, STDERR_FILENO, __ATOMIC_ACQ_REL);
  if (old > STDERR_FILENO && log_fd_owned) close(old);
  log_fd_owned = 0;
  size_t n = strlen(path);
  if (n >= sizeof log_path) {
    log_path[0] = '\0';
    CKPT_WARN("CKPT_DEBUG_FILE is longer than %zu bytes; logging to stderr",
              sizeof log_path - 1);
    return;
  }
  memcpy(log_path, path, n + 1);
  if (n) {
    pthread_once(&atfork_once, log_register_atfork);
    __atomic_store_n(&log_fd, LOG_FD_PENDING, __ATOMIC_RELEASE);
  }
}

void ckpt_log_set_fd(int fd) {
  __atomic_store_n(&log_fd_override, fd < 0 ? -1 : fd, __ATOMIC_RELEASE);
}
