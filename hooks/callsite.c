/* CKPT_STACKS: where tagged allocations come from, and the driver-error
 * context (a backtrace once per failing call site).
 (The driver-error context, a backtrace once per failing call
 * site, is errors.c's.)
 *
 * Capture (core lock held, at each tagged allocation) is unw_backtrace into
 * a stack buffer and a hash probe: no allocation, no symbol lookup. Sites
 * are symbolised with dladdr by the observer thread, once each, when they
 * first reach the published top list: dladdr takes the loader lock and scans
 * symbol tables, which the core lock must not wait for. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h> /* program_invocation_short_name */
#include <execinfo.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef CKPT_HAVE_LIBUNWIND
#define UNW_LOCAL_ONLY
#include <libunwind.h>
#endif

#include "check.h"
#include "state.h"
#include "observers.h"
#include "trace_format.h"

#define MAX_SITES 1024
#define SITE_HASH 2048 /* power of two, > MAX_SITES */
#define CAPTURE_DEPTH 32
#define SITE_DEPTH 16  /* frames kept (past libckpt's own) and hashed */

struct site {
  uint64_t hash;
  uint32_t nframes;
  uintptr_t pc[SITE_DEPTH];
  uint64_t allocs, offloaded_bytes; /* lock held */
  bool requested;                   /* in the top list: symbolise it */
  bool symbolised;                  /* frame[] is final (release/acquire) */
  char frame[CKPT_SEG_FRAMES][CKPT_SEG_FRAME_LEN];
};

static bool stacks_on;
static struct site *sites; /* MAX_SITES, allocated when CKPT_STACKS=1 */
static uint32_t nsites;    /* published with release: frames filled before */
static uint16_t slots[SITE_HASH]; /* site index + 1 */
static uintptr_t self_lo, self_hi; /* libckpt's own code, skipped */

static int find_self(struct dl_phdr_info *info, size_t size, void *arg) {
  (void)size;
  uintptr_t me = (uintptr_t)arg;
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    uintptr_t lo = info->dlpi_addr + ph->p_vaddr, hi = lo + ph->p_memsz;
    if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X) && me >= lo && me < hi) {
      /* Linked into the program itself (the unit tests): the range would
       * cover the program's frames too; capture then skips its caller only. */
      if (info->dlpi_name && info->dlpi_name[0]) self_lo = lo, self_hi = hi;
      return 1;
    }
  }
  return 0;
}

uint32_t ckpt_callsite_init(bool wanted) {
  if (!wanted) return CKPT_SEG_STACKS_OFF;
#ifndef CKPT_HAVE_LIBUNWIND
  CKPT_WARN("CKPT_STACKS=1: built without libunwind: call sites unavailable");
  return CKPT_SEG_STACKS_UNAVAILABLE;
#else
  sites = calloc(MAX_SITES, sizeof *sites);
  if (!sites) {
    CKPT_WARN("CKPT_STACKS=1: out of memory for the call-site table: call sites off");
    return CKPT_SEG_STACKS_OFF;
  }
  dl_iterate_phdr(find_self, (void *)(uintptr_t)ckpt_callsite_init);
  stacks_on = true;
  return CKPT_SEG_STACKS_ON;
#endif
}

static uint64_t hash_pcs(const uintptr_t *pc, int n) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a over the addresses */
  for (int i = 0; i < n; i++) h = (h ^ pc[i]) * 1099511628211ull;
  return h ? h : 1;
}

uint32_t ckpt_callsite_capture(void) {
#ifdef CKPT_HAVE_LIBUNWIND
  if (!stacks_on) return 0;
  void *raw[CAPTURE_DEPTH];
  int n = unw_backtrace(raw, CAPTURE_DEPTH), first = 0;
  if (self_hi)
    while (first < n && (uintptr_t)raw[first] >= self_lo && (uintptr_t)raw[first] < self_hi) first++;
  else
    first = n > 2 ? 2 : 0; /* this function and ckpt_alloc */
  int k = n - first < SITE_DEPTH ? n - first : SITE_DEPTH;
  uintptr_t *pc = (uintptr_t *)(raw + first);
  uint64_t h = hash_pcs(pc, k);
  for (uint32_t i = (uint32_t)h & (SITE_HASH - 1);; i = (i + 1) & (SITE_HASH - 1)) {
    if (!slots[i]) {
      if (nsites == MAX_SITES) {
        CKPT_WARN_ONCE("CKPT_STACKS: more than %d call sites: the others are not recorded", MAX_SITES);
        return 0;
      }
      struct site *s = &sites[nsites];
      s->hash = h;
      s->nframes = (uint32_t)k;
      memcpy(s->pc, pc, (size_t)k * sizeof *pc);
      s->allocs = 1;
      slots[i] = (uint16_t)(nsites + 1);
      __atomic_store_n(&nsites, nsites + 1, __ATOMIC_RELEASE);
      return nsites;
    }
    struct site *s = &sites[slots[i] - 1];
    if (s->hash == h && s->nframes == (uint32_t)k && memcmp(s->pc, pc, (size_t)k * sizeof *pc) == 0) {
      s->allocs++;
      return slots[i];
    }
  }
#else
  return 0;
#endif
}

void ckpt_callsite_offloaded(uint32_t site, uint64_t bytes) {
  if (site && site <= nsites) sites[site - 1].offloaded_bytes += bytes;
}

static bool ranks_above(const struct site *a, const struct site *b) {
  return a->offloaded_bytes != b->offloaded_bytes ? a->offloaded_bytes > b->offloaded_bytes : a->allocs > b->allocs;
}

int ckpt_callsite_top(struct ckpt_seg_site *out, int max) {
  if (!stacks_on) return 0;
  int top[CKPT_SEG_MAX_SITES], n = 0;
  if (max > CKPT_SEG_MAX_SITES) max = CKPT_SEG_MAX_SITES;
  for (uint32_t i = 0; i < nsites; i++) { /* insertion into a short sorted list */
    if (n == max && (n == 0 || !ranks_above(&sites[i], &sites[top[n - 1]]))) continue;
    int j = n < max ? n++ : max - 1; /* a new slot, or in place of the last */
    while (j > 0 && ranks_above(&sites[i], &sites[top[j - 1]])) top[j] = top[j - 1], j--;
    top[j] = (int)i;
  }
  bool wake = false;
  for (int i = 0; i < n; i++) {
    struct site *s = &sites[top[i]];
    struct ckpt_seg_site *o = &out[i];
    o->offloaded_bytes = s->offloaded_bytes;
    o->allocs = s->allocs;
    o->id = (uint32_t)top[i] + 1;
    o->nframes = s->nframes < CKPT_SEG_FRAMES ? s->nframes : CKPT_SEG_FRAMES;
    for (uint32_t f = 0; f < o->nframes; f++) o->pc[f] = s->pc[f];
    if (__atomic_load_n(&s->symbolised, __ATOMIC_ACQUIRE)) {
      memcpy(o->frame, s->frame, sizeof o->frame);
    } else {
      memset(o->frame, 0, sizeof o->frame);
      if (!__atomic_exchange_n(&s->requested, true, __ATOMIC_RELAXED)) wake = true;
    }
  }
  if (wake) ckpt_observer_wake();
  return n;
}

static void symbolise_site(struct site *s) {
  for (uint32_t f = 0; f < s->nframes && f < CKPT_SEG_FRAMES; f++)
    ckpt_symbolize_pc(s->pc[f], s->frame[f], sizeof s->frame[f]);
  __atomic_store_n(&s->symbolised, true, __ATOMIC_RELEASE);
}

int ckpt_callsite_symbolize(void) {
  if (!stacks_on) return 0;
  int done = 0;
  uint32_t n = __atomic_load_n(&nsites, __ATOMIC_ACQUIRE);
  for (uint32_t i = 0; i < n; i++) {
    struct site *s = &sites[i];
    if (__atomic_load_n(&s->requested, __ATOMIC_RELAXED) && !__atomic_load_n(&s->symbolised, __ATOMIC_ACQUIRE)) {
      symbolise_site(s);
      done++;
    }
  }
  return done;
}

void ckpt_callsite_report_trace(void) {
  if (!stacks_on) return;
  struct ckpt_seg_site top[CKPT_SEG_MAX_SITES];
  LOCK();
  int n = ckpt_callsite_top(top, CKPT_SEG_MAX_SITES);
  UNLOCK();
  for (int i = 0; i < n; i++) {
    char text[CKPT_SEG_FRAMES * CKPT_SEG_FRAME_LEN];
    size_t len = 0;
    for (uint32_t f = 0; f < top[i].nframes; f++) {
      char one[CKPT_SEG_FRAME_LEN];
      if (top[i].frame[f][0]) snprintf(one, sizeof one, "%s", top[i].frame[f]);
      else ckpt_symbolize_pc(top[i].pc[f], one, sizeof one);
      len += (size_t)snprintf(text + len, sizeof text - len, "%s%s", f ? "\n" : "", one);
      if (len >= sizeof text) break;
    }
    if (!top[i].nframes) text[0] = '\0';
    ckpt_trace_text(CKPT_T_SITE, (int)top[i].id, top[i].offloaded_bytes, top[i].allocs, text);
  }
}

void ckpt_callsite_forked(void) { stacks_on = false; }
