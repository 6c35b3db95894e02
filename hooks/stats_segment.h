/* The live stats segment (/dev/shm/libckpt.<uid>.<pid>): its layout and the
 * reader's side of the seqlock. The library writes it (shm.c); ckpt-stats
 * (scripts/ckpt/stats_segment.py) and the tests read it from other processes,
 * so every field has a fixed size and the header says how big each part is.
 * Bump CKPT_SEG_VERSION when a field moves; growing struct ckpt_stats or
 * struct ckpt_name_stats at their end does not move anything (the sizes tell). */
#ifndef CKPT_STATS_SEGMENT_H
#define CKPT_STATS_SEGMENT_H
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ckpt.h"
#include "observe.h"

#define CKPT_SEG_MAGIC "CKPTSTAT" /* 8 bytes, no NUL */
#define CKPT_SEG_VERSION 1
#define CKPT_SEG_PREFIX "/libckpt." /* shm_open name: /libckpt.<uid>.<pid> */
#define CKPT_SEG_MAX_NAMES 256
#define CKPT_SEG_MAX_SITES 16
#define CKPT_SEG_FRAMES 6
#define CKPT_SEG_FRAME_LEN 112

/* What CKPT_STACKS gives in this process. */
enum { CKPT_SEG_STACKS_OFF, CKPT_SEG_STACKS_ON, CKPT_SEG_STACKS_UNAVAILABLE };
/* header.flags */
enum { CKPT_SEG_PROFILE = 1, CKPT_SEG_SYNC = 2, CKPT_SEG_TRACE = 4 };

/* One call site: where tagged allocations were made (CKPT_STACKS). */
struct ckpt_seg_site {
  uint64_t offloaded_bytes;
  uint64_t allocs;
  uint32_t id;
  uint32_t nframes;
  uint64_t pc[CKPT_SEG_FRAMES]; /* return addresses, innermost first */
  /* "object!symbol+0xoff"; empty until symbolised (off the hot path) */
  char frame[CKPT_SEG_FRAMES][CKPT_SEG_FRAME_LEN];
};

/* Written once when the segment is created, magic last. */
struct ckpt_seg_header {
  char magic[8];
  uint32_t version;
  uint32_t seg_size;   /* sizeof(struct ckpt_seg) */
  uint32_t stats_size; /* sizeof(struct ckpt_stats) */
  uint32_t name_size;  /* sizeof(struct ckpt_name_stats) */
  uint32_t site_size;  /* sizeof(struct ckpt_seg_site) */
  uint32_t max_names, max_sites, max_frames, frame_len;
  uint32_t live_off, stats_off, names_off, sites_off; /* offsets in the segment */
  int32_t pid;
  uint32_t uid;
  uint64_t start_realtime_ns; /* when the segment was created */
  uint64_t proc_start_ticks;  /* /proc/<pid>/stat field 22: tells a reused pid */
  char command[32];
  char mode[16];
  uint32_t stacks; /* CKPT_SEG_STACKS_* */
  uint32_t flags;  /* CKPT_SEG_* */
};

/* Rewritten by every publish, under the seqlock. */
struct ckpt_seg_live {
  uint64_t seq;       /* odd while the writer is inside */
  uint64_t publishes;
  uint64_t updated_realtime_ns;
  uint32_t nnames, nsites;
};

struct ckpt_seg {
  struct ckpt_seg_header h;
  struct ckpt_seg_live live __attribute__((aligned(64)));
  struct ckpt_stats stats;
  struct ckpt_name_stats names[CKPT_SEG_MAX_NAMES];
  struct ckpt_seg_site sites[CKPT_SEG_MAX_SITES];
};

/* 0 when `s` (of `len` mapped bytes) is a segment this reader understands. */
static inline int ckpt_seg_check(const struct ckpt_seg *s, size_t len) {
  if (len < sizeof s->h || memcmp(s->h.magic, CKPT_SEG_MAGIC, 8) != 0) return -1;
  if (s->h.version != CKPT_SEG_VERSION || s->h.seg_size != sizeof *s || len < sizeof *s) return -1;
  if (s->h.stats_size != sizeof s->stats || s->h.name_size != sizeof s->names[0] ||
      s->h.site_size != sizeof s->sites[0])
    return -1;
  return 0;
}

/* Copies a consistent snapshot of the segment into *out: the sequence was
 * even and unchanged around the copy. 0, or -1 when a writer was inside on
 * each of `tries` attempts (a writer holds it for microseconds; a process
 * killed mid-publish leaves it odd for ever, hence the bound). */
static inline int ckpt_seg_snapshot(const struct ckpt_seg *s, struct ckpt_seg *out, int tries) {
  for (int i = 0; i < tries; i++) {
    uint64_t a = __atomic_load_n(&s->live.seq, __ATOMIC_ACQUIRE);
    if (!(a & 1)) {
      memcpy(out, (const void *)s, sizeof *out);
      __atomic_thread_fence(__ATOMIC_ACQUIRE);
      if (__atomic_load_n(&s->live.seq, __ATOMIC_RELAXED) == a) return 0;
    }
    sched_yield();
  }
  return -1;
}

#endif
