/* The driver-error path, at the bottom of the core: every failed driver call
 * libckpt makes is counted (ckpt_stats.driver_errors), logged where it failed,
 * and, the first time at each call site, logged with a backtrace. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h> /* program_invocation_short_name */
#include <execinfo.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#ifdef CKPT_HAVE_LIBUNWIND
#define UNW_LOCAL_ONLY
#include <libunwind.h>
#endif

#include "check.h"
#include "state.h"
#include "stats_segment.h" /* CKPT_SEG_FRAME_LEN */

void ckpt_note_driver_error(void) { __atomic_add_fetch(&ckpt_g.hot.driver_errors, 1, __ATOMIC_RELAXED); }

void ckpt_cu_failed(const char *call, CUresult r, const char *file, int line) {
  ckpt_note_driver_error();
  CKPT_WARN("%s:%d %s failed: %s (%d)", file, line, call, ckpt_cu_name(r), (int)r);
  ckpt_crash_context(call, (int)r);
}

void ckpt_symbolize_pc(uintptr_t pc, char *out, size_t cap) {
  Dl_info info;
  /* pc is a return address: look up the call instruction before it. */
  if (!pc || !dladdr((void *)(pc - 1), &info) || !info.dli_fname) {
    snprintf(out, cap, "%#lx", (unsigned long)pc);
    return;
  }
  const char *obj = strrchr(info.dli_fname, '/');
  obj = obj ? obj + 1 : info.dli_fname;
  if (!obj[0]) obj = program_invocation_short_name; /* the main program has an empty name */
  if (info.dli_sname && info.dli_saddr)
    snprintf(out, cap, "%s!%s+%#lx", obj, info.dli_sname, (unsigned long)(pc - (uintptr_t)info.dli_saddr));
  else
    snprintf(out, cap, "%s+%#lx", obj, (unsigned long)(pc - (uintptr_t)info.dli_fbase));
}

#define CRASH_SITES 128
static const char *crash_seen[CRASH_SITES];

/* Once per call site: `call` is the text of the failing expression, a string
 * literal, so its address names the site. */
static bool first_time(const char *call) {
  for (int i = 0; i < CRASH_SITES; i++) {
    const char *cur = __atomic_load_n(&crash_seen[i], __ATOMIC_ACQUIRE);
    if (cur == call) return false;
    if (!cur && __atomic_compare_exchange_n(&crash_seen[i], &cur, call, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
      return true;
    if (cur == call) return false;
  }
  return false; /* table full: enough backtraces for one run */
}

void ckpt_crash_context(const char *call, int code) {
  if (!call || !ckpt_log_on(CKPT_LOG_WARN) || !first_time(call)) return;
  void *pc[24];
#ifdef CKPT_HAVE_LIBUNWIND
  int n = unw_backtrace(pc, 24);
#else
  int n = backtrace(pc, 24);
#endif
  CKPT_WARN("driver error context: %s returned %s (%d); backtrace (first time at this call):", call,
            ckpt_cu_name((CUresult)code), code);
  for (int i = 1; i < n; i++) { /* frame 0 is this function */
    char frame[CKPT_SEG_FRAME_LEN];
    ckpt_symbolize_pc((uintptr_t)pc[i], frame, sizeof frame);
    CKPT_WARN("  #%d %s", i - 1, frame);
  }
}
