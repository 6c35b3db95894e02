#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "params.h"

#include "log.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

extern char **environ;

enum param_type { PT_ENUM, PT_SIZE, PT_INT, PT_BOOL, PT_STRING, PT_PATH };

static const struct ckpt_param_info param_rows[CKPT_P__COUNT] = {
#define CKPT_PARAM(id, name, type, def, accepted, doc) \
  [CKPT_P_##id] = {name, #type, def, accepted, doc},
#include "params.def"
#undef CKPT_PARAM
};

static const enum param_type param_types[CKPT_P__COUNT] = {
#define CKPT_PARAM(id, name, type, def, accepted, doc) [CKPT_P_##id] = PT_##type,
#include "params.def"
#undef CKPT_PARAM
};

/* Values live in static storage so that reading them never allocates and the
 * strings do not depend on the environment staying unchanged. */
enum { PARAM_STR_MAX = 4096, LOCAL_WORLD_MAX = 1 << 16 };
static int64_t param_ints[CKPT_P__COUNT];
static char param_strs[CKPT_P__COUNT][PARAM_STR_MAX];
static uint64_t host_max_auto;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;

typedef const char *(*lookup_fn)(const char *name);

/* ---- parsing (0 = valid, -1 = invalid) ---------------------------------- */

/* `word` as a whole word of `text` (so "automatic" is not "auto"). */
static int has_word(const char *text, const char *word) {
  size_t n = strlen(word);
  for (const char *p = text; (p = strcasestr(p, word)); p += n)
    if ((p == text || !isalnum((unsigned char)p[-1])) && !isalnum((unsigned char)p[n])) return 1;
  return 0;
}

/* Index of `s` in the list "a|b|c", matched case-insensitively; the canonical
 * spelling goes to canon. */
static int parse_enum(const char *list, const char *s, int64_t *out, char *canon) {
  size_t slen = strlen(s);
  int64_t index = 0;
  for (const char *item = list;; index++) {
    const char *bar = strchr(item, '|');
    size_t n = bar ? (size_t)(bar - item) : strlen(item);
    if (n == slen && strncasecmp(item, s, n) == 0) {
      memcpy(canon, item, n);
      canon[n] = '\0';
      *out = index;
      return 0;
    }
    if (!bar) return -1;
    item = bar + 1;
  }
}

static int parse_size(const char *s, int allow_auto, int allow_off, int64_t *out) {
  if (allow_auto && strcasecmp(s, "auto") == 0) {
    *out = -1;
    return 0;
  }
  if (allow_off && strcasecmp(s, "off") == 0) {
    *out = -2;
    return 0;
  }
  if (!isdigit((unsigned char)*s)) return -1; /* rejects "-1" and "+1" too */
  char *end;
  errno = 0;
  unsigned long long n = strtoull(s, &end, 10);
  if (errno) return -1;
  while (isspace((unsigned char)*end)) end++;
  int shift = 0;
  switch (toupper((unsigned char)*end)) {
  case 'K': shift = 10; break;
  case 'M': shift = 20; break;
  case 'G': shift = 30; break;
  case 'T': shift = 40; break;
  }
  if (shift) end++;
  if (shift && toupper((unsigned char)end[0]) == 'I' && toupper((unsigned char)end[1]) == 'B')
    end += 2;
  else if (toupper((unsigned char)*end) == 'B')
    end++;
  if (*end || n > (unsigned long long)INT64_MAX >> shift) return -1;
  *out = (int64_t)(n << shift);
  return 0;
}

static int parse_int_in(const char *s, long long lo, long long hi, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return -1;
  *out = v;
  return 0;
}

static int parse_int(const char *range, const char *s, int64_t *out) {
  long long lo, hi;
  if (sscanf(range, "%lld..%lld", &lo, &hi) != 2) return -1;
  return parse_int_in(s, lo, hi, out);
}

static int parse_bool(const char *s, int64_t *out) {
  static const char *const words[] = {"0", "1", "no", "yes", "false", "true", "off", "on"};
  for (size_t i = 0; i < sizeof words / sizeof *words; i++) {
    if (strcasecmp(s, words[i]) == 0) {
      *out = (int64_t)(i & 1);
      return 0;
    }
  }
  return -1;
}

/* Parses `text` for row `id` into *ival and canon (PARAM_STR_MAX bytes). */
static int parse_value(ckpt_param_id id, const char *text, int64_t *ival, char *canon) {
  const struct ckpt_param_info *row = &param_rows[id];
  size_t n = strlen(text);
  if (n >= PARAM_STR_MAX) return -1;
  *ival = 0;
  if (param_types[id] == PT_STRING || param_types[id] == PT_PATH) {
    memcpy(canon, text, n + 1);
    return 0;
  }
  /* Numbers and words: surrounding blanks are a quoting accident, not a value. */
  while (n && isspace((unsigned char)text[n - 1])) n--;
  while (n && isspace((unsigned char)*text)) text++, n--;
  memcpy(canon, text, n);
  canon[n] = '\0';
  switch (param_types[id]) {
  case PT_ENUM: return parse_enum(row->accepted, canon, ival, canon);
  case PT_SIZE: return parse_size(canon, has_word(row->accepted, "auto"), has_word(row->accepted, "off"), ival);
  case PT_INT: return parse_int(row->accepted, canon, ival);
  case PT_BOOL: return parse_bool(canon, ival);
  default: return -1;
  }
}

/* Sets row `id` from lookup(name), or its default when unset, empty or invalid. */
static void load_param(ckpt_param_id id, lookup_fn lookup, int warn) {
  const struct ckpt_param_info *row = &param_rows[id];
  const char *raw = lookup(row->name);
  if (raw && *raw && parse_value(id, raw, &param_ints[id], param_strs[id]) == 0) return;
  if (raw && *raw && warn) {
    if (strlen(raw) >= PARAM_STR_MAX)
      CKPT_WARN("%s is longer than %d bytes (accepted: %s); using the default '%s'",
                row->name, PARAM_STR_MAX - 1, row->accepted, row->def);
    else
      CKPT_WARN("%s='%.200s' is not valid (accepted: %s); using the default '%s'",
                row->name, raw, row->accepted, row->def);
  }
  /* The defaults are checked by test_params, so this cannot fail. */
  parse_value(id, row->def, &param_ints[id], param_strs[id]);
}

static uint64_t physical_ram(void) {
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
}

static void load_host_max_auto(lookup_fn lookup) {
  int64_t ranks = 1;
  const char *raw = lookup("LOCAL_WORLD_SIZE");
  if (raw && *raw && parse_int_in(raw, 1, LOCAL_WORLD_MAX, &ranks) != 0) {
    CKPT_WARN("LOCAL_WORLD_SIZE='%.200s' is not valid (accepted: 1..%d); assuming 1 for "
              "CKPT_HOST_MAX_BYTES=auto", raw, LOCAL_WORLD_MAX);
    ranks = 1;
  }
  uint64_t ram = physical_ram();
  if (!ram) CKPT_WARN("cannot read the physical RAM size; CKPT_HOST_MAX_BYTES=auto is 0");
  host_max_auto = ram / 2 / (uint64_t)ranks;
}

/* A misspelt name would otherwise be ignored without a word. */
static void warn_unknown_names(void) {
  for (char **env = environ; env && *env; env++) {
    if (strncmp(*env, "CKPT_", 5) != 0) continue;
    size_t n = strcspn(*env, "=");
    int known = 0;
    for (int id = 0; id < CKPT_P__COUNT && !known; id++)
      known = strlen(param_rows[id].name) == n && strncmp(param_rows[id].name, *env, n) == 0;
    if (!known)
      CKPT_WARN("%.*s is not a libckpt variable and is ignored (see the CKPT_* table in "
                "README.md)", (int)(n > 200 ? 200 : n), *env);
  }
}

static void load_all(lookup_fn lookup) {
  /* The logger first, so that the warnings below go where the user asked. */
  load_param(CKPT_P_DEBUG, lookup, 0);
  load_param(CKPT_P_DEBUG_FILE, lookup, 0);
  ckpt_log_configure((int)param_ints[CKPT_P_DEBUG], param_strs[CKPT_P_DEBUG_FILE]);
  for (int id = 0; id < CKPT_P__COUNT; id++) load_param((ckpt_param_id)id, lookup, 1);
  load_host_max_auto(lookup);
}

static const char *env_lookup(const char *name) { return getenv(name); }

static void load_from_env(void) {
  pthread_mutex_lock(&load_lock);
  load_all(env_lookup);
  warn_unknown_names();
  pthread_mutex_unlock(&load_lock);
}

static void load_nothing(void) {}

void ckpt_params_load(void) { pthread_once(&load_once, load_from_env); }

void ckpt_params_reload(const char *(*lookup)(const char *name)) {
  /* Spend the once first, so a later ckpt_params_load() keeps these values. */
  pthread_once(&load_once, load_nothing);
  pthread_mutex_lock(&load_lock);
  load_all(lookup ? lookup : env_lookup);
  pthread_mutex_unlock(&load_lock);
}

int64_t ckpt_param_int(ckpt_param_id id) {
  if ((unsigned)id >= CKPT_P__COUNT) return 0;
  ckpt_params_load();
  return param_ints[id];
}

const char *ckpt_param_str(ckpt_param_id id) {
  if ((unsigned)id >= CKPT_P__COUNT) return "";
  ckpt_params_load();
  return param_strs[id];
}

const char *ckpt_param_name(ckpt_param_id id) {
  return (unsigned)id < CKPT_P__COUNT ? param_rows[id].name : NULL;
}

const struct ckpt_param_info *ckpt_param_info(ckpt_param_id id) {
  return (unsigned)id < CKPT_P__COUNT ? &param_rows[id] : NULL;
}

uint64_t ckpt_param_host_max_bytes(void) {
  int64_t v = ckpt_param_int(CKPT_P_HOST_MAX_BYTES);
  return v >= 0 ? (uint64_t)v : host_max_auto;
}

const char *ckpt_env(const char *name) { return getenv(name); }
