/* Call counting and fault injection for every exported entry point. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "simdev_internal.h"

#define MAX_RULES 64

/* A rule fails the nth call counted from its installation, or every call. */
struct rule {
    bool active;
    bool every;
    int id;
    unsigned long nth;
    unsigned long seen;
    CUresult code;
};

static atomic_ulong counts[SD_ID_COUNT];
static _Atomic int armed[SD_ID_COUNT]; /* active rules per entry point: the fast path reads only this */
static struct rule rules[MAX_RULES];
static pthread_mutex_t rules_lock = PTHREAD_MUTEX_INITIALIZER;

bool sd_enter(enum sd_entry_id id, const char *func, CUresult *code)
{
    sd_init();
    if (strcmp(sd_entries[id].name, func) != 0) {
        /* A function counted under another's name is a simulator bug: stop loudly. */
        sd_say("simdev: %s counts itself as %s", func, sd_entries[id].name);
        abort();
    }
    atomic_fetch_add_explicit(&counts[id], 1, memory_order_relaxed);
    if (atomic_load_explicit(&armed[id], memory_order_acquire) == 0)
        return false;

    bool fail = false;
    pthread_mutex_lock(&rules_lock);
    for (int i = 0; i < MAX_RULES; i++) {
        struct rule *r = &rules[i];
        if (!r->active || r->id != (int)id)
            continue;
        r->seen++;
        if (!fail && (r->every || r->seen == r->nth)) {
            fail = true;
            *code = r->code;
        }
        if (!r->every && r->seen >= r->nth) {
            r->active = false;
            atomic_fetch_sub(&armed[id], 1);
        }
    }
    pthread_mutex_unlock(&rules_lock);
    if (fail)
        sd_log("injected failure: %s returns %d", func, (int)*code);
    return fail;
}

static int add_rule(int id, unsigned long nth, bool every, int code)
{
    int ret = -1;
    pthread_mutex_lock(&rules_lock);
    for (int i = 0; i < MAX_RULES; i++) {
        if (rules[i].active)
            continue;
        rules[i] = (struct rule){.active = true, .every = every, .id = id, .nth = nth, .code = (CUresult)code};
        atomic_fetch_add(&armed[id], 1);
        ret = 0;
        break;
    }
    pthread_mutex_unlock(&rules_lock);
    return ret;
}

/* name:nth[:code], nth a count from 1 or '*'; code a number or a CUDA_ERROR_* name. */
static void parse_rule(const char *text)
{
    char buf[160];
    snprintf(buf, sizeof buf, "%s", text);
    char *name = buf;
    char *nth_s = strchr(name, ':');
    char *code_s = NULL;
    if (nth_s) {
        *nth_s++ = 0;
        code_s = strchr(nth_s, ':');
        if (code_s)
            *code_s++ = 0;
    }
    int id = sd_entry_find(name);
    bool every = nth_s && strcmp(nth_s, "*") == 0;
    unsigned long nth = 0;
    int code = CUDA_ERROR_OUT_OF_MEMORY;
    char *end = NULL;
    if (nth_s && !every)
        nth = strtoul(nth_s, &end, 10);
    bool ok = id >= 0 && nth_s && (every || (end && *end == 0 && nth >= 1));
    if (ok && code_s) {
        long c = strtol(code_s, &end, 0);
        if (*code_s && *end == 0 && c >= 0)
            code = (int)c;
        else if (!sd_error_from_name(code_s, &code))
            ok = false;
    }
    if (!ok || add_rule(id, nth, every, code) != 0)
        sd_say("simdev: ignoring SIMDEV_FAIL rule '%s' (expected exported-name:nth|*[:code])", text);
}

void sd_fail_parse_env(const char *spec)
{
    char *copy = strdup(spec);
    if (!copy)
        return;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
        if (*tok)
            parse_rule(tok);
    free(copy);
}

unsigned long simdev_calls(const char *exported_name)
{
    int id = exported_name ? sd_entry_find(exported_name) : -1;
    return id < 0 ? 0 : atomic_load(&counts[id]);
}

void simdev_reset_calls(void)
{
    for (int i = 0; i < SD_ID_COUNT; i++)
        atomic_store(&counts[i], 0);
}

int simdev_fail(const char *exported_name, unsigned long nth, int code)
{
    sd_init();
    int id = exported_name ? sd_entry_find(exported_name) : -1;
    if (id < 0)
        return -1;
    return add_rule(id, nth, nth == 0, code);
}

void simdev_fail_clear(void)
{
    sd_init();
    pthread_mutex_lock(&rules_lock);
    for (int i = 0; i < MAX_RULES; i++)
        if (rules[i].active) {
            rules[i].active = false;
            atomic_fetch_sub(&armed[rules[i].id], 1);
        }
    pthread_mutex_unlock(&rules_lock);
}
