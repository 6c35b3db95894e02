/* Criterion runs each test in its own process, so every test starts with
 * params not loaded and the logger at its defaults. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "params.h"

/* ---- a fake environment for ckpt_params_reload -------------------------- */

enum { FAKE_MAX = 8 };
static const char *fake_names[FAKE_MAX], *fake_values[FAKE_MAX];
static int fake_count;

static void fake_clear(void) { fake_count = 0; }
static void fake_set(const char *name, const char *value) {
  cr_assert_lt(fake_count, FAKE_MAX);
  fake_names[fake_count] = name;
  fake_values[fake_count++] = value;
}
static const char *fake_lookup(const char *name) {
  for (int i = fake_count - 1; i >= 0; i--)
    if (strcmp(fake_names[i], name) == 0) return fake_values[i];
  return NULL;
}

/* ---- log capture --------------------------------------------------------- */

static FILE *capture;
static char captured[16384];

static void capture_start(void) {
  capture = tmpfile();
  cr_assert_not_null(capture);
  ckpt_log_set_fd(fileno(capture));
}

/* Returns the captured text and how many lines it has. */
static int capture_end(void) {
  ckpt_log_set_fd(-1);
  size_t n = (size_t)pread(fileno(capture), captured, sizeof captured - 1, 0);
  captured[n == (size_t)-1 ? 0 : n] = '\0';
  fclose(capture);
  int lines = 0;
  for (char *p = captured; *p; p++) lines += *p == '\n';
  return lines;
}

/* Reloads with one variable set and returns the number of log lines. */
static int load_one(const char *name, const char *value) {
  fake_clear();
  if (name) fake_set(name, value);
  capture_start();
  ckpt_params_reload(fake_lookup);
  return capture_end();
}

/* ---- the table ----------------------------------------------------------- */

Test(params, table_rows_are_complete) {
  for (int id = 0; id < CKPT_P__COUNT; id++) {
    const struct ckpt_param_info *row = ckpt_param_info((ckpt_param_id)id);
    cr_assert_not_null(row);
    cr_assert_eq(strncmp(row->name, "CKPT_", 5), 0, "%s", row->name);
    cr_assert_str_eq(ckpt_param_name((ckpt_param_id)id), row->name);
    cr_assert(strlen(row->accepted) > 0 && strlen(row->doc) > 0, "%s", row->name);
    const char *types[] = {"ENUM", "SIZE", "INT", "BOOL", "STRING", "PATH"};
    int known = 0;
    for (size_t t = 0; t < sizeof types / sizeof *types; t++)
      known |= strcmp(row->type, types[t]) == 0;
    cr_assert(known, "%s has type %s", row->name, row->type);
  }
  cr_assert_null(ckpt_param_info(CKPT_P__COUNT));
  cr_assert_null(ckpt_param_name(CKPT_P__COUNT));
  cr_assert_eq(ckpt_param_int(CKPT_P__COUNT), 0);
}

Test(params, every_default_parses_silently) {
  cr_assert_eq(load_one(NULL, NULL), 0, "log: %s", captured);
  /* Each default, read back through the parser, is its own canonical text. */
  for (int id = 0; id < CKPT_P__COUNT; id++) {
    const struct ckpt_param_info *row = ckpt_param_info((ckpt_param_id)id);
    if (strcmp(row->type, "ENUM") == 0)
      cr_assert_eq(strcasecmp(ckpt_param_str((ckpt_param_id)id), row->def), 0, "%s", row->name);
    else
      cr_assert_str_eq(ckpt_param_str((ckpt_param_id)id), row->def, "%s", row->name);
  }
}

Test(params, defaults) {
  load_one(NULL, NULL);
  cr_assert_eq(ckpt_param_int(CKPT_P_MODE), CKPT_MODE_HOST);
  cr_assert_str_eq(ckpt_param_str(CKPT_P_MODE), "host");
  cr_assert_eq(ckpt_param_int(CKPT_P_DEBUG), CKPT_LOG_WARN);
  cr_assert_str_eq(ckpt_param_str(CKPT_P_DEBUG), "WARN");
  cr_assert_str_eq(ckpt_param_str(CKPT_P_DEBUG_FILE), "");
  cr_assert_eq(ckpt_param_int(CKPT_P_MIN_BYTES), 4 << 20);
  cr_assert_str_eq(ckpt_param_str(CKPT_P_NVTX_PREFIX), "ckpt");
  cr_assert_eq(ckpt_param_int(CKPT_P_OFFLOAD), CKPT_OFFLOAD_AUTO);
  cr_assert_eq(ckpt_param_int(CKPT_P_KEEP_LAST), 1);
  cr_assert_eq(ckpt_param_int(CKPT_P_PREFETCH), 1);
  cr_assert_eq(ckpt_param_int(CKPT_P_HOST_MAX_BYTES), -1);
  cr_assert_eq(ckpt_param_int(CKPT_P_CACHE_MAX_BYTES), -1);
  cr_assert_eq(ckpt_param_int(CKPT_P_STATS_AT_EXIT), 0);
  cr_assert_str_eq(ckpt_param_str(CKPT_P_PATCH), "none");
  cr_assert_str_eq(ckpt_param_str(CKPT_P_REGIONS), "");
  cr_assert_eq(ckpt_log_level, CKPT_LOG_WARN);
}

/* The C-side constants follow the accepted lists of the table. */
Test(params, enum_constants_match_table) {
  static const struct { ckpt_param_id id; const char *word; int64_t value; } cases[] = {
      {CKPT_P_MODE, "none", CKPT_MODE_NONE},        {CKPT_P_MODE, "host", CKPT_MODE_HOST},
      {CKPT_P_MODE, "peer", CKPT_MODE_PEER},        {CKPT_P_MODE, "peer+host", CKPT_MODE_PEER_HOST},
      {CKPT_P_OFFLOAD, "auto", CKPT_OFFLOAD_AUTO},  {CKPT_P_OFFLOAD, "manual", CKPT_OFFLOAD_MANUAL},
      {CKPT_P_DEBUG, "NONE", CKPT_LOG_NONE},        {CKPT_P_DEBUG, "WARN", CKPT_LOG_WARN},
      {CKPT_P_DEBUG, "INFO", CKPT_LOG_INFO},        {CKPT_P_DEBUG, "TRACE", CKPT_LOG_TRACE},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    cr_assert_eq(load_one(ckpt_param_name(cases[i].id), cases[i].word), 0);
    cr_assert_eq(ckpt_param_int(cases[i].id), cases[i].value, "%s", cases[i].word);
  }
}

/* ---- parsing --------------------------------------------------------------- */

Test(params, enums_are_case_insensitive_and_canonical) {
  cr_assert_eq(load_one("CKPT_MODE", "PEER+Host"), 0);
  cr_assert_eq(ckpt_param_int(CKPT_P_MODE), CKPT_MODE_PEER_HOST);
  cr_assert_str_eq(ckpt_param_str(CKPT_P_MODE), "peer+host");
  cr_assert_eq(load_one("CKPT_DEBUG", "info"), 0);
  cr_assert_str_eq(ckpt_param_str(CKPT_P_DEBUG), "INFO");
  cr_assert_eq(ckpt_log_level, CKPT_LOG_INFO, "CKPT_DEBUG sets the log level");
  cr_assert_eq(load_one("CKPT_OFFLOAD", " manual "), 0, "blanks around a word are ignored");
  cr_assert_eq(ckpt_param_int(CKPT_P_OFFLOAD), CKPT_OFFLOAD_MANUAL);
}

Test(params, sizes) {
  static const struct { const char *text; int64_t bytes; } cases[] = {
      {"0", 0},
      {"512", 512},
      {"1k", 1024},
      {"64K", 64 << 10},
      {"64KB", 64 << 10},
      {"64KiB", 64 << 10},
      {"64M", 64 << 20},
      {"8 mib", 8 << 20},
      {"2GiB", 2LL << 30},
      {"3T", 3LL << 40},
      {"100B", 100},
      {"8388607T", 8388607LL << 40}, /* the largest that fits in int64 */
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    cr_assert_eq(load_one("CKPT_MIN_BYTES", cases[i].text), 0, "%s: %s", cases[i].text, captured);
    cr_assert_eq(ckpt_param_int(CKPT_P_MIN_BYTES), cases[i].bytes, "%s", cases[i].text);
    cr_assert_str_eq(ckpt_param_str(CKPT_P_MIN_BYTES), cases[i].text);
  }
  cr_assert_eq(load_one("CKPT_CACHE_MAX_BYTES", "AUTO"), 0);
  cr_assert_eq(ckpt_param_int(CKPT_P_CACHE_MAX_BYTES), -1);
  cr_assert_eq(load_one("CKPT_CACHE_MAX_BYTES", "16G"), 0);
  cr_assert_eq(ckpt_param_int(CKPT_P_CACHE_MAX_BYTES), 16LL << 30);
}

Test(params, ints_and_ranges) {
  cr_assert_eq(load_one("CKPT_KEEP_LAST", "0"), 0);
  cr_assert_eq(ckpt_param_int(CKPT_P_KEEP_LAST), 0);
  cr_assert_eq(load_one("CKPT_KEEP_LAST", "1024"), 0);
  cr_assert_eq(ckpt_param_int(CKPT_P_KEEP_LAST), 1024);
  cr_assert_eq(load_one("CKPT_PREFETCH", "3"), 0);
  cr_assert_eq(ckpt_param_int(CKPT_P_PREFETCH), 3);
}

Test(params, bools) {
  static const struct { const char *text; int64_t value; } cases[] = {
      {"0", 0}, {"1", 1},     {"no", 0},  {"YES", 1}, {"false", 0},
      {"True", 1}, {"off", 0}, {"ON", 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    cr_assert_eq(load_one("CKPT_STATS_AT_EXIT", cases[i].text), 0);
    cr_assert_eq(ckpt_param_int(CKPT_P_STATS_AT_EXIT), cases[i].value, "%s", cases[i].text);
  }
}

Test(params, strings_are_kept_verbatim) {
  cr_assert_eq(load_one("CKPT_NVTX_PREFIX", " fwd:"), 0);
  cr_assert_str_eq(ckpt_param_str(CKPT_P_NVTX_PREFIX), " fwd:");
  cr_assert_eq(load_one("CKPT_REGIONS", "Block,Attention"), 0);
  cr_assert_str_eq(ckpt_param_str(CKPT_P_REGIONS), "Block,Attention");
}

Test(params, empty_means_unset) {
  cr_assert_eq(load_one("CKPT_MODE", ""), 0);
  cr_assert_eq(ckpt_param_int(CKPT_P_MODE), CKPT_MODE_HOST);
  cr_assert_eq(load_one("CKPT_NVTX_PREFIX", ""), 0);
  cr_assert_str_eq(ckpt_param_str(CKPT_P_NVTX_PREFIX), "ckpt");
}

/* ---- invalid values: one warning naming variable, value, accepted; default ---- */

Test(params, invalid_values_warn_once_and_use_the_default) {
  static const struct { ckpt_param_id id; const char *text; } cases[] = {
      {CKPT_P_MODE, "hostt"},       {CKPT_P_MODE, "peer+"},        {CKPT_P_DEBUG, "verbose"},
      {CKPT_P_OFFLOAD, "never"},    {CKPT_P_PATCH, "deepspeed"},   {CKPT_P_MIN_BYTES, "12Q"},
      {CKPT_P_MIN_BYTES, "-1"},     {CKPT_P_MIN_BYTES, "M"},       {CKPT_P_MIN_BYTES, "1.5G"},
      {CKPT_P_MIN_BYTES, "1iB"},    {CKPT_P_MIN_BYTES, "4MM"},     {CKPT_P_MIN_BYTES, "auto"},
      {CKPT_P_MIN_BYTES, "8388608T"}, {CKPT_P_MIN_BYTES, "99999999999999999999"},
      {CKPT_P_HOST_MAX_BYTES, "autox"}, {CKPT_P_KEEP_LAST, "1025"}, {CKPT_P_KEEP_LAST, "-1"},
      {CKPT_P_KEEP_LAST, "abc"},    {CKPT_P_PREFETCH, "5x"},       {CKPT_P_PREFETCH, "0x10"},
      {CKPT_P_STATS_AT_EXIT, "maybe"}, {CKPT_P_STATS_AT_EXIT, "2"}, {CKPT_P_DEBUG, "  "},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    const struct ckpt_param_info *row = ckpt_param_info(cases[i].id);
    int lines = load_one(row->name, cases[i].text);
    cr_assert_eq(lines, 1, "%s=%s gave %d lines: %s", row->name, cases[i].text, lines, captured);
    cr_assert(strstr(captured, " WARN "), "%s", captured);
    cr_assert(strstr(captured, row->name), "%s", captured);
    char quoted[64];
    snprintf(quoted, sizeof quoted, "'%s'", cases[i].text);
    cr_assert(strstr(captured, quoted), "value missing: %s", captured);
    cr_assert(strstr(captured, row->accepted), "accepted missing: %s", captured);

    /* The value is the default's. */
    int64_t got = ckpt_param_int(cases[i].id);
    char got_str[64];
    snprintf(got_str, sizeof got_str, "%s", ckpt_param_str(cases[i].id));
    load_one(NULL, NULL);
    cr_assert_eq(got, ckpt_param_int(cases[i].id), "%s=%s", row->name, cases[i].text);
    cr_assert_str_eq(got_str, ckpt_param_str(cases[i].id));
  }
}

Test(params, too_long_string_warns_and_uses_the_default) {
  static char big[5000];
  memset(big, 'x', sizeof big - 1);
  cr_assert_eq(load_one("CKPT_NVTX_PREFIX", big), 1);
  cr_assert(strstr(captured, "CKPT_NVTX_PREFIX is longer than"), "%s", captured);
  cr_assert_str_eq(ckpt_param_str(CKPT_P_NVTX_PREFIX), "ckpt");
}

Test(params, debug_none_silences_warnings) {
  fake_clear();
  fake_set("CKPT_DEBUG", "none");
  fake_set("CKPT_MODE", "bogus");
  capture_start();
  ckpt_params_reload(fake_lookup);
  cr_assert_eq(capture_end(), 0, "%s", captured);
  cr_assert_eq(ckpt_param_int(CKPT_P_MODE), CKPT_MODE_HOST);
}

Test(params, invalid_debug_warns_once_at_the_default_level) {
  cr_assert_eq(load_one("CKPT_DEBUG", "loud"), 1, "%s", captured);
  cr_assert_eq(ckpt_log_level, CKPT_LOG_WARN);
}

Test(params, warnings_go_to_the_debug_file) {
  char dir[] = "/tmp/ckpt-test-params-XXXXXX", pattern[128], path[128], text[1024] = "";
  cr_assert_not_null(mkdtemp(dir));
  snprintf(pattern, sizeof pattern, "%s/log.%%p", dir);
  fake_clear();
  fake_set("CKPT_MODE", "bogus"); /* warned about after the file is configured */
  fake_set("CKPT_DEBUG_FILE", pattern);
  fake_set("CKPT_DEBUG", "info");
  ckpt_params_reload(fake_lookup);
  CKPT_INFO("after load");
  snprintf(path, sizeof path, "%s/log.%d", dir, (int)getpid());
  FILE *f = fopen(path, "r");
  cr_assert_not_null(f, "%s", path);
  size_t n = fread(text, 1, sizeof text - 1, f);
  text[n] = '\0';
  fclose(f);
  unlink(path);
  rmdir(dir);
  cr_assert(strstr(text, "CKPT_MODE='bogus'"), "%s", text);
  cr_assert(strstr(text, "INFO after load\n"), "%s", text);
}

/* ---- loading ---------------------------------------------------------------- */

Test(params, reload_is_idempotent) {
  fake_clear();
  fake_set("CKPT_MODE", "peer");
  fake_set("CKPT_MIN_BYTES", "1G");
  fake_set("CKPT_KEEP_LAST", "9999");
  int64_t first[CKPT_P__COUNT];
  for (int round = 0; round < 3; round++) {
    capture_start();
    ckpt_params_reload(fake_lookup);
    cr_assert_eq(capture_end(), 1, "round %d: one warning per load: %s", round, captured);
    for (int id = 0; id < CKPT_P__COUNT; id++) {
      if (round == 0) first[id] = ckpt_param_int((ckpt_param_id)id);
      cr_assert_eq(ckpt_param_int((ckpt_param_id)id), first[id]);
    }
  }
  cr_assert_eq(first[CKPT_P_MODE], CKPT_MODE_PEER);
  cr_assert_eq(first[CKPT_P_MIN_BYTES], 1LL << 30);
  cr_assert_eq(first[CKPT_P_KEEP_LAST], 1);
  /* A load after a reload keeps the reloaded values. */
  setenv("CKPT_MODE", "none", 1);
  ckpt_params_load();
  cr_assert_eq(ckpt_param_int(CKPT_P_MODE), CKPT_MODE_PEER);
}

Test(params, load_reads_the_environment_once) {
  setenv("CKPT_MODE", "peer", 1);
  setenv("CKPT_MIN_BYTES", "2M", 1);
  capture_start();
  cr_assert_eq(ckpt_param_int(CKPT_P_MODE), CKPT_MODE_PEER, "a getter loads the params");
  cr_assert_eq(ckpt_param_int(CKPT_P_MIN_BYTES), 2 << 20);
  setenv("CKPT_MODE", "none", 1);
  ckpt_params_load();
  cr_assert_eq(ckpt_param_int(CKPT_P_MODE), CKPT_MODE_PEER, "read once");
  cr_assert_eq(capture_end(), 0, "%s", captured);
}

Test(params, unknown_ckpt_variable_warns) {
  setenv("CKPT_MODEE", "peer", 1);
  capture_start();
  ckpt_params_load();
  cr_assert_eq(capture_end(), 1, "%s", captured);
  cr_assert(strstr(captured, "CKPT_MODEE is not a libckpt variable"), "%s", captured);
}

static void *read_mode(void *arg) {
  (void)arg;
  return (void *)(intptr_t)ckpt_param_int(CKPT_P_MODE);
}

Test(params, concurrent_first_reads_agree) {
  setenv("CKPT_MODE", "peer", 1);
  pthread_t threads[8];
  for (int i = 0; i < 8; i++) pthread_create(&threads[i], NULL, read_mode, NULL);
  for (int i = 0; i < 8; i++) {
    void *mode;
    pthread_join(threads[i], &mode);
    cr_assert_eq((intptr_t)mode, CKPT_MODE_PEER);
  }
}

/* ---- CKPT_HOST_MAX_BYTES ------------------------------------------------------- */

static uint64_t ram(void) {
  return (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
}

Test(params, host_max_bytes) {
  cr_assert_eq(load_one(NULL, NULL), 0);
  cr_assert_eq(ckpt_param_host_max_bytes(), ram() / 2);
  cr_assert_gt(ckpt_param_host_max_bytes(), 0);

  cr_assert_eq(load_one("LOCAL_WORLD_SIZE", "4"), 0);
  cr_assert_eq(ckpt_param_host_max_bytes(), ram() / 2 / 4);

  cr_assert_eq(load_one("CKPT_HOST_MAX_BYTES", "3G"), 0);
  cr_assert_eq(ckpt_param_host_max_bytes(), 3ULL << 30);

  cr_assert_eq(load_one("LOCAL_WORLD_SIZE", "zero"), 1, "%s", captured);
  cr_assert(strstr(captured, "LOCAL_WORLD_SIZE='zero'"), "%s", captured);
  cr_assert_eq(ckpt_param_host_max_bytes(), ram() / 2);
}
