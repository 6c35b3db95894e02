/* CKPT_TRACE: the binary event stream (format in trace_format.h).
 *
 * ckpt_trace() copies one record into an in-memory buffer under a mutex held
 * for that copy only (callers may hold the core lock, on any thread); the
 * observer thread swaps buffers and writes the full one to the file, every
 * 100 ms, sooner when half full, and at exit. A full buffer drops records
 * (counted in a CKPT_T_DROPPED record) rather than block the program. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "state.h"
#include "observers.h"
#include "trace_format.h"

#define TRACE_BUF_RECS 16384 /* per buffer; 640 KiB */
#define TRACE_NAMES 1024     /* distinct region names given an id */

static bool trace_on;
static int trace_fd = -1;
static pthread_mutex_t buf_mu = PTHREAD_MUTEX_INITIALIZER;   /* filling side */
static pthread_mutex_t flush_mu = PTHREAD_MUTEX_INITIALIZER; /* one writer of the file */
static struct ckpt_trace_rec *filling, *spare;
static size_t nfilling;
static uint64_t dropped;
static char name_ids[TRACE_NAMES][64]; /* id = index + 1, under buf_mu */
static int nname_ids;

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static bool write_all(const void *p, size_t n) {
  const char *c = p;
  while (n) {
    ssize_t w = write(trace_fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    c += w;
    n -= (size_t)w;
  }
  return true;
}

/* "%p" -> pid, "%%" -> "%". */
static bool expand(const char *in, char *out, size_t cap) {
  size_t n = 0;
  for (const char *s = in; *s; s++) {
    char piece[24] = {s[0], 0};
    if (s[0] == '%' && s[1] == 'p') snprintf(piece, sizeof piece, "%d", (int)getpid()), s++;
    else if (s[0] == '%' && s[1] == '%') s++;
    size_t k = strlen(piece);
    if (n + k >= cap) return false;
    memcpy(out + n, piece, k);
    n += k;
  }
  out[n] = '\0';
  return true;
}

bool ckpt_trace_open(const char *path) {
  char file[4096];
  if (!expand(path, file, sizeof file)) {
    CKPT_WARN("CKPT_TRACE=%s: path too long: tracing off", path);
    return false;
  }
  /* Never follow a planted link, never overwrite: O_EXCL fails on any existing name. */
  trace_fd = open(file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (trace_fd < 0) {
    if (errno == EEXIST)
      CKPT_WARN("CKPT_TRACE=%s: %s already exists, not overwriting it (%%p in the path = pid): tracing off", path,
                file);
    else
      CKPT_WARN("CKPT_TRACE=%s: cannot create %s: %s: tracing off", path, file, strerror(errno));
    return false;
  }
  filling = malloc(TRACE_BUF_RECS * sizeof *filling);
  spare = malloc(TRACE_BUF_RECS * sizeof *spare);
  struct timespec rt;
  clock_gettime(CLOCK_REALTIME, &rt);
  struct ckpt_trace_header h = {
      .version = CKPT_TRACE_VERSION,
      .header_size = sizeof h,
      .record_size = sizeof(struct ckpt_trace_rec),
      .pid = (int32_t)getpid(),
      .start_mono_ns = mono_ns(),
      .start_realtime_ns = (uint64_t)rt.tv_sec * 1000000000u + (uint64_t)rt.tv_nsec,
  };
  memcpy(h.magic, CKPT_TRACE_MAGIC, sizeof h.magic);
  if (!filling || !spare || !write_all(&h, sizeof h)) {
    CKPT_WARN("CKPT_TRACE=%s: cannot write %s: tracing off", path, file);
    free(filling), free(spare);
    close(trace_fd);
    trace_fd = -1;
    return false;
  }
  CKPT_INFO("tracing to %s", file);
  __atomic_store_n(&trace_on, true, __ATOMIC_RELEASE);
  return true;
}

bool ckpt_trace_enabled(void) { return __atomic_load_n(&trace_on, __ATOMIC_ACQUIRE); }

/* Appends rec and its text under buf_mu; false when it does not fit. */
static bool append_locked(const struct ckpt_trace_rec *rec, const char *text) {
  size_t len = text ? strlen(text) + 1 : 0;
  size_t ntext = (len + sizeof *rec - 1) / sizeof *rec;
  if (!trace_on || nfilling + 1 + ntext > TRACE_BUF_RECS) {
    if (trace_on) dropped += 1 + ntext;
    return false;
  }
  struct ckpt_trace_rec *r = &filling[nfilling];
  *r = *rec;
  r->text = (uint16_t)ntext;
  if (ntext) {
    memset(r + 1, 0, ntext * sizeof *r);
    memcpy(r + 1, text, len);
  }
  size_t before = nfilling;
  nfilling += 1 + ntext;
  if (before < TRACE_BUF_RECS / 2 && nfilling >= TRACE_BUF_RECS / 2) ckpt_observer_wake();
  return true;
}

/* The id of a region name, with its CKPT_T_NAME record the first time. */
static uint64_t name_id_locked(const char *name, uint64_t t) {
  for (int i = 0; i < nname_ids; i++)
    if (strcmp(name_ids[i], name) == 0) return (uint64_t)i + 1;
  if (nname_ids == TRACE_NAMES) return 0;
  struct ckpt_trace_rec rec = {.t_ns = t, .kind = CKPT_T_NAME, .region = nname_ids + 1};
  snprintf(name_ids[nname_ids], sizeof name_ids[0], "%s", name);
  if (!append_locked(&rec, name_ids[nname_ids])) return 0;
  return (uint64_t)++nname_ids;
}

void ckpt_trace(int kind, int region, const char *name, uint64_t bytes, uintptr_t stream, uint64_t value) {
  if (!__atomic_load_n(&trace_on, __ATOMIC_RELAXED)) return;
  struct ckpt_trace_rec rec = {.t_ns = mono_ns(), .kind = (uint16_t)kind, .region = region, .bytes = bytes,
                               .stream = stream, .value = value};
  pthread_mutex_lock(&buf_mu);
  if (kind == CKPT_T_REGION_OPEN && name && name[0]) rec.value = name_id_locked(name, rec.t_ns);
  append_locked(&rec, NULL);
  pthread_mutex_unlock(&buf_mu);
}

void ckpt_trace_text(int kind, int id, uint64_t bytes, uint64_t value, const char *text) {
  if (!__atomic_load_n(&trace_on, __ATOMIC_RELAXED)) return;
  struct ckpt_trace_rec rec = {.t_ns = mono_ns(), .kind = (uint16_t)kind, .region = id, .bytes = bytes,
                               .value = value};
  pthread_mutex_lock(&buf_mu);
  append_locked(&rec, text);
  pthread_mutex_unlock(&buf_mu);
}

void ckpt_trace_flush(void) {
  if (trace_fd < 0) return;
  pthread_mutex_lock(&flush_mu);
  if (trace_fd < 0) {
    pthread_mutex_unlock(&flush_mu);
    return;
  }
  pthread_mutex_lock(&buf_mu);
  struct ckpt_trace_rec *full = filling;
  size_t n = nfilling;
  uint64_t lost = dropped;
  filling = spare;
  nfilling = 0;
  dropped = 0;
  pthread_mutex_unlock(&buf_mu);
  spare = full;
  bool ok = write_all(full, n * sizeof *full);
  if (ok && lost) {
    struct ckpt_trace_rec rec = {.t_ns = mono_ns(), .kind = CKPT_T_DROPPED, .value = lost};
    ok = write_all(&rec, sizeof rec);
  }
  if (!ok && __atomic_exchange_n(&trace_on, false, __ATOMIC_RELAXED))
    CKPT_WARN("CKPT_TRACE: write failed (%s): tracing off", strerror(errno));
  pthread_mutex_unlock(&flush_mu);
}

void ckpt_trace_close(void) {
  if (trace_fd < 0) return;
  pthread_mutex_lock(&buf_mu);
  __atomic_store_n(&trace_on, false, __ATOMIC_RELAXED); /* later events are dropped, uncounted */
  pthread_mutex_unlock(&buf_mu);
  ckpt_trace_flush();
  pthread_mutex_lock(&flush_mu);
  close(trace_fd);
  trace_fd = -1;
  free(filling), free(spare);
  filling = spare = NULL;
  pthread_mutex_unlock(&flush_mu);
}

/* The file and the buffered records are the parent's. */
void ckpt_trace_forked(void) {
  __atomic_store_n(&trace_on, false, __ATOMIC_RELAXED);
  if (trace_fd >= 0) close(trace_fd);
  trace_fd = -1;
}
