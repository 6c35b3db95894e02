/* The arena: tagged allocations (each its own reserved VA range and physical
 * backing), the live index, the mapping cache and stream-ordered frees. */
#ifndef CKPT_ARENA_H
#define CKPT_ARENA_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cu.h"

/* A free, device-backed mapping in the cache (beyond the public residencies). */
enum { T_CACHED = 16 };

struct ckpt_held;
struct region;

/* One tagged allocation. */
struct talloc {
  CUdeviceptr va;   /* reservation base; the pointer the program got */
  size_t size;      /* mapped bytes, a multiple of the granularity */
  size_t req;       /* bytes the program asked for */
  int device;
  uint64_t access;  /* devices granted access to va (ckpt_devmask: the device, and the peers its pool grants) */
  CUcontext ctx;
  CUmemGenericAllocationHandle dev;   /* device memory mapped at va (0: none) */
  struct ckpt_held *held;             /* the store's copy while offloading/host/restoring */
  CUmemGenericAllocationHandle fresh; /* restore target, mapped at fresh_va */
  CUdeviceptr fresh_va;
  int state;        /* enum ckpt_residency or T_CACHED */
  bool busy;        /* an engine job owns the transition in flight */
  bool cancel;      /* offload cancelled by a restore before the swap */
  bool freed;       /* the program freed it; the stream has not passed the free yet (pending list) */
  bool free_deferred; /* freed on the legacy stream during a capture: free_ev not recorded yet (ckpt_reap) */
  bool keep;        /* outlived a whole cycle: persistent, never offloaded again */
  bool moved;       /* was host-backed in this life: its memory is not cached on free */
  bool stranded;    /* a swap could map neither copy at va: the gate stays closed (copy.h) */
  struct region *region;
  uint32_t site;    /* call site (CKPT_STACKS), 0 if none */
  CUstream stream;  /* allocation stream */
  CUstream free_stream;
  CUevent free_ev;
  struct talloc *rnext; /* region's list */
  struct talloc *next;  /* cache / pending list */
};

/* At init: allocations under min_bytes are never tagged. */
void ckpt_arena_init(size_t min_bytes);
/* Lock held. The live allocation holding p (interior pointers too), or NULL. */
struct talloc *ckpt_live_find(CUdeviceptr p);
/* The granularity every tagged size and VA is a multiple of: the larger of
 * the device's and its host memory's (a tagged VA is backed by either). */
size_t ckpt_granularity(int device);
/* Device memory, making room when the driver has none (lock held). */
CUresult ckpt_device_handle(int device, size_t size, CUmemGenericAllocationHandle *out);
/* Pending frees whose stream is past them are finished (lock held). */
void ckpt_reap(void);
/* Destroys cached mappings until `want` bytes are freed; the bytes freed. */
size_t ckpt_cache_trim(size_t want);
/* At exit, lock held: the program's pending frees completed and every cached
 * mapping destroyed (live tagged memory is the program's). A free whose
 * stream does not pass it within a bound is left, and said; then false: a
 * stream is stuck, so a call that synchronizes the device would hang. */
bool ckpt_arena_release_all(void);
#endif
