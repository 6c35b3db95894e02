/* libFuzzer target: the C reader of the live stats segment
 * (hooks/stats_segment.h: ckpt_seg_check, ckpt_seg_snapshot), on segments
 * of any content and length. A segment the check accepts is snapshotted and
 * its counts must lie within the tables. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../hooks/stats_segment.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* The reader maps the segment: its bytes are aligned, and it knows the
   * mapped length. Give it the input's bytes at the start of such a buffer. */
  size_t cap = size > sizeof(struct ckpt_seg) ? size : sizeof(struct ckpt_seg);
  struct ckpt_seg *s = aligned_alloc(64, (cap + 63) / 64 * 64);
  memset(s, 0, cap);
  memcpy(s, data, size);
  if (ckpt_seg_check(s, size) == 0) {
    struct ckpt_seg *out = aligned_alloc(64, (sizeof *out + 63) / 64 * 64);
    if (ckpt_seg_snapshot(s, out, 2) == 0) {
      /* What a consumer would index with: must be checked before use. */
      uint32_t nn = out->live.nnames < CKPT_SEG_MAX_NAMES ? out->live.nnames : CKPT_SEG_MAX_NAMES;
      uint32_t ns = out->live.nsites < CKPT_SEG_MAX_SITES ? out->live.nsites : CKPT_SEG_MAX_SITES;
      volatile size_t sum = 0;
      for (uint32_t i = 0; i < nn; i++) sum += strnlen(out->names[i].name, sizeof out->names[i].name);
      for (uint32_t i = 0; i < ns; i++) sum += out->sites[i].nframes;
      (void)sum;
    }
    free(out);
  }
  free(s);
  return 0;
}
