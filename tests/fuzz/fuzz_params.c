/* libFuzzer target: the CKPT_* parameter parser (hooks/params.c).
 *
 * The input is split at NUL bytes: piece i is the value of the i-th row of
 * hooks/params.def (an absent piece: unset), the piece after them is
 * LOCAL_WORLD_SIZE. ckpt_params_reload() reads them through a lookup
 * function; then every getter is checked against what its type promises.
 * CKPT_DEBUG_FILE is kept inside a scratch directory (its '/' become '_'),
 * which is emptied now and then, so the fuzzer never writes elsewhere. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../hooks/log.h"
#include "../../hooks/params.h"

#define NVALUES (CKPT_P__COUNT + 1)
static char *values[NVALUES];
static char scratch[] = "/tmp/ckpt-fuzz-params-XXXXXX";
static int devnull = -1;

static const char *lookup(const char *name) {
  for (int id = 0; id < CKPT_P__COUNT; id++)
    if (strcmp(name, ckpt_param_name((ckpt_param_id)id)) == 0) return values[id];
  if (strcmp(name, "LOCAL_WORLD_SIZE") == 0) return values[CKPT_P__COUNT];
  return NULL;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st, (void)flag;
  if (ftw->level > 0) remove(path);
  return 0;
}
static void empty_scratch(void) { nftw(scratch, rm_entry, 8, FTW_DEPTH | FTW_PHYS); }
static void remove_scratch(void) {
  empty_scratch();
  if (chdir("/") == 0) rmdir(scratch);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  if (!mkdtemp(scratch) || chdir(scratch) != 0) abort();
  atexit(remove_scratch);
  devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
  return 0;
}

static int64_t count_items(const char *list) {
  int64_t n = 1;
  for (const char *p = list; *p; p++) n += *p == '|';
  return n;
}

#define ASSERT(cond, ...) \
  do { if (!(cond)) { fprintf(stderr, "fuzz_params: %s: ", #cond); fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); abort(); } } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static unsigned runs;
  if (devnull < 0) LLVMFuzzerInitialize(NULL, NULL);
  /* Split at NUL bytes into at most NVALUES pieces. */
  char *copy = malloc(size + 1);
  memcpy(copy, data, size);
  copy[size] = '\0';
  int n = 0;
  for (size_t start = 0; n < NVALUES && start <= size;) {
    values[n++] = copy + start;
    size_t len = strlen(copy + start);
    start += len + 1;
  }
  for (int i = n; i < NVALUES; i++) values[i] = NULL;
  const char *debug_file = CKPT_P_DEBUG_FILE < n ? values[CKPT_P_DEBUG_FILE] : NULL;
  if (debug_file)
    for (char *p = values[CKPT_P_DEBUG_FILE]; *p; p++)
      if (*p == '/') *p = '_';
  /* Messages about bad values go to /dev/null, except when the input names a
   * log file: then they go there (opening it is part of what is fuzzed). */
  ckpt_log_set_fd(debug_file && *debug_file ? -1 : devnull);

  ckpt_params_reload(lookup);
  CKPT_WARN("fuzz %s", debug_file ? debug_file : "(none)"); /* a long line is cut, never overflows */

  for (int id = 0; id < CKPT_P__COUNT; id++) {
    const struct ckpt_param_info *row = ckpt_param_info((ckpt_param_id)id);
    ASSERT(row != NULL, "row %d", id);
    const char *s = ckpt_param_str((ckpt_param_id)id);
    ASSERT(s != NULL && strlen(s) < 4096, "%s string", row->name);
    int64_t v = ckpt_param_int((ckpt_param_id)id);
    const char *raw = id < n ? values[id] : NULL;
    if (!strcmp(row->type, "ENUM")) {
      ASSERT(v >= 0 && v < count_items(row->accepted), "%s=%lld out of %s", row->name, (long long)v, row->accepted);
      ASSERT(strcasestr(row->accepted, s) != NULL, "%s canonical '%s' not in %s", row->name, s, row->accepted);
    } else if (!strcmp(row->type, "INT")) {
      long long lo, hi;
      ASSERT(sscanf(row->accepted, "%lld..%lld", &lo, &hi) == 2, "%s range", row->name);
      ASSERT(v >= lo && v <= hi, "%s=%lld outside %s", row->name, (long long)v, row->accepted);
    } else if (!strcmp(row->type, "BOOL")) {
      ASSERT(v == 0 || v == 1, "%s=%lld", row->name, (long long)v);
    } else if (!strcmp(row->type, "SIZE")) {
      ASSERT(v >= -2, "%s=%lld", row->name, (long long)v);
      ASSERT(v != -1 || strstr(row->accepted, "auto"), "%s auto without auto", row->name);
      ASSERT(v != -2 || strstr(row->accepted, "off"), "%s off without off", row->name);
    } else {
      /* STRING / PATH: the value itself, or the default when unset/empty/too long. */
      if (raw && *raw && strlen(raw) < 4096) ASSERT(strcmp(s, raw) == 0, "%s='%s' read back as '%s'", row->name, raw, s);
      else ASSERT(strcmp(s, row->def) == 0, "%s unset, not its default", row->name);
    }
    if (!raw || !*raw) /* unset or empty: the default, as written in the table */
      ASSERT(strcasecmp(s, row->def) == 0, "%s unset reads '%s', default '%s'", row->name, s, row->def);
  }
  (void)ckpt_param_host_max_bytes();
  free(copy);
  for (int i = 0; i < NVALUES; i++) values[i] = NULL;
  if (++runs % 512 == 0) {
    ckpt_log_configure(CKPT_LOG_WARN, ""); /* close the log file before emptying */
    empty_scratch();
  }
  return 0;
}
