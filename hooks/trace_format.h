/* The CKPT_TRACE file: a header, then fixed-size records in time order of
 * their appending. Read by scripts/ckpt/stats_trace.py and the unit tests.
 * Bump CKPT_TRACE_VERSION when a field moves or changes meaning.
 *
 * Version 2 (version 1 in brackets, still read by ckpt-stats):
 *   CKPT_T_OFFLOAD_END / CKPT_T_RESTORE_END: bytes = requested bytes of the
 *     job's items actually swapped (what the counters count; 0 when the whole
 *     job was rolled back), stream = device bytes of those items (whole
 *     granules: what the device released / took back), value = copy ns.
 *     [v1: bytes = every item the job copied, swapped or not; stream = 0.]
 *   CKPT_T_OFFLOAD_ROLLBACK / CKPT_T_RESTORE_ROLLBACK (v2 only), just before
 *     the END of a job some of whose items were not swapped (cancelled, freed,
 *     gate or copy failure): bytes = their requested bytes, value = how many.
 *   CKPT_T_MEM: value = device bytes in use (cuMemGetInfo), bytes = device
 *     bytes libckpt had released at that moment (the counters'
 *     device_bytes_released), so value + bytes = "without libckpt".
 *     [v1: bytes = 0.] Sampled at region open and close, and after every
 *     engine round that swapped (offloads and restores); only region close
 *     when CKPT_TRACE is off (it feeds the stats' device peak). */
#ifndef CKPT_TRACE_FORMAT_H
#define CKPT_TRACE_FORMAT_H
#include <stdint.h>

#define CKPT_TRACE_MAGIC "CKPTTRCE" /* 8 bytes, no NUL */
#define CKPT_TRACE_VERSION 2

struct ckpt_trace_header {
  char magic[8];
  uint32_t version;
  uint32_t header_size; /* sizeof(struct ckpt_trace_header) */
  uint32_t record_size; /* sizeof(struct ckpt_trace_rec) */
  int32_t pid;
  uint64_t start_mono_ns;     /* CLOCK_MONOTONIC when the trace began */
  uint64_t start_realtime_ns; /* the same instant in wall-clock time */
};

struct ckpt_trace_rec {
  uint64_t t_ns;   /* CLOCK_MONOTONIC */
  uint16_t kind;   /* enum ckpt_trace_kind (observe.h) or the kinds below */
  uint16_t text;   /* records that follow holding text (NUL-padded), not events */
  int32_t region;
  uint64_t bytes;
  uint64_t stream;
  uint64_t value;
};

/* Kinds the observers write themselves (the core's are 1..31). */
enum {
  CKPT_T_NAME = 32,    /* region = name id; text = the region name */
  CKPT_T_SITE = 33,    /* region = site id, bytes = offloaded, value = allocations; text = frames, '\n'-separated */
  CKPT_T_FWD = 34,     /* CKPT_PROFILE: region, value = forward device ns */
  CKPT_T_BWD = 35,     /* CKPT_PROFILE: region, value = backward device ns */
  CKPT_T_DROPPED = 36, /* value = records lost to a full buffer before this one */
};
/* CKPT_T_REGION_OPEN: value = name id (0: none); its CKPT_T_NAME comes first. */

#endif
