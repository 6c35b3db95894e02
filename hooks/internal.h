/* State shared by the core's modules. One mutex (ckpt_g.lock) guards all of
 * it; the hot pass-through path never takes it (see ckpt_maybe_ours). */
#ifndef CKPT_INTERNAL_H
#define CKPT_INTERNAL_H
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "../include/ckpt.h"
#include "check.h"
#include "core.h"
#include "driver.h"
#include "observe.h"
#include "params.h"

#define CKPT_API __attribute__((visibility("default")))

enum { MODE_NONE, MODE_HOST, MODE_PEER, MODE_PEER_HOST };

/* A free, device-backed mapping in the cache (beyond the public residencies). */
enum { T_CACHED = 16 };

struct host_block;
struct region;

/* One tagged allocation: its own reserved VA range and physical backing. */
struct talloc {
  CUdeviceptr va;   /* reservation base; the pointer the program got */
  size_t size;      /* mapped bytes, a multiple of the granularity */
  size_t req;       /* bytes the program asked for */
  int device;
  CUcontext ctx;
  CUmemGenericAllocationHandle dev;   /* device memory mapped at va (0: none) */
  struct host_block *host;            /* host copy while offloading/host/restoring */
  CUmemGenericAllocationHandle fresh; /* restore target, mapped at fresh_va */
  CUdeviceptr fresh_va;
  int state;        /* enum ckpt_residency, T_FREEING or T_CACHED */
  bool busy;        /* an engine job owns the transition in flight */
  bool cancel;      /* offload cancelled by a restore before the swap */
  bool freed;       /* the program freed it */
  bool keep;        /* outlived a whole cycle: persistent, never offloaded again */
  bool moved;       /* was host-backed in this life: its memory is not cached on free */
  struct region *region;
  uint32_t site;    /* call site (CKPT_STACKS), 0 if none */
  CUstream stream;  /* allocation stream */
  CUstream free_stream;
  CUevent free_ev;
  struct talloc *rnext; /* region's list */
  struct talloc *next;  /* cache / pending list */
};

enum { R_OPEN, R_CLOSED };

struct region {
  int id;
  char name[64];
  int state;
  struct region *parent;   /* enclosing region when opened (open stack) */
  struct region *top;      /* outermost enclosing region */
  struct region *kids, *sibling; /* nested regions, for offload with the top */
  struct talloc *allocs;   /* live tagged allocations (survivors once closed) */
  int live;
  int jobs;                /* engine jobs in flight */
  int waiters;             /* API calls waiting on this tree */
  bool offloaded;          /* offloaded in this cycle (policy does it once) */
  int cycle_pos;           /* index in the cycle (top-level only), -1 if none */
  struct region *hnext;    /* id hash chain */
  struct ckpt_name_stats *ns; /* counters of its name (NULL: table full) */
};

struct ckpt_global {
  pthread_mutex_t lock;
  pthread_cond_t changed;  /* engine finished a job */
  int mode;
  bool tagging;            /* decided once at init */
  bool tag_off;            /* no new tagged allocation: driver lacks VMM, or exit began (atomic) */
  bool host_off;           /* the driver cannot create pinned host memory (lock) */
  bool forked;             /* we are a fork()ed child: hands off */
  bool exiting;            /* exit handler ran: no new offload or cache entry (lock) */
  size_t min_bytes;
  int keep_last, prefetch;
  bool auto_offload;
  int next_region_id;
  struct region *open;     /* innermost open region */
  struct region **cycle;   /* closed top-level regions of this forward pass */
  int ncycle, cap_cycle;
  int offload_cursor;      /* cycle entries before it are offloaded */
  bool cycle_restored;     /* a restore happened: the next top-level region starts a new cycle */
  struct ckpt_stats stats; /* under the lock; its hot fields below are not used */
  /* Counters the lock-free paths update atomically: kept apart from `stats`
   * so that a locked copy of it never reads them plainly. */
  struct {
    uint64_t hooked_calls, untagged_allocs, driver_errors, device_used_now, device_used_peak;
  } hot;
};
extern struct ckpt_global ckpt_g;

#define LOCK() pthread_mutex_lock(&ckpt_g.lock)
#define UNLOCK() pthread_mutex_unlock(&ckpt_g.lock)

/* Guard libckpt's own driver work on this thread (see ckpt_in_lib). */
#define IN_LIB_BEGIN() int in_lib_saved_ = ckpt_in_lib; ckpt_in_lib = 1
#define IN_LIB_END() ckpt_in_lib = in_lib_saved_

/* stats.c: a consistent copy of every counter (caller holds the lock). */
void ckpt_stats_snapshot(struct ckpt_stats *out);

/* region.c */
struct region *ckpt_region_find(int id);
void ckpt_region_retire_maybe(struct region *r);
void ckpt_cycle_reset(void);
void ckpt_region_attach(struct region *r, struct talloc *t);
void ckpt_region_detach(struct talloc *t);

/* arena.c */
struct talloc *ckpt_live_find(CUdeviceptr p); /* interior pointers too */
size_t ckpt_granularity(int device);
CUresult ckpt_device_handle(int device, size_t size, CUmemGenericAllocationHandle *out);
CUresult ckpt_map(CUdeviceptr va, size_t size, CUmemGenericAllocationHandle h, int device);
CUresult ckpt_va_get(size_t size, size_t align, CUdeviceptr *va);
void ckpt_va_put(CUdeviceptr va, size_t size);
void ckpt_reap(void);
void ckpt_talloc_finish_free(struct talloc *t);
size_t ckpt_cache_trim(size_t want);

/* host_pool.c */
struct host_block {
  CUmemGenericAllocationHandle handle;
  CUdeviceptr va;      /* the block's own mapping, the copy engine's view */
  size_t size;
  int device;
  bool in_use;
  struct host_block *next;
};
/* NULL with *rc set when no block can be had; *capped when CKPT_HOST_MAX_BYTES
 * is what stopped it (the driver's own refusals are not logged here). */
struct host_block *ckpt_host_get(int device, size_t size, CUresult *rc, bool *capped);
void ckpt_host_put(struct host_block *b);
CUresult ckpt_host_map_at(struct host_block *b, CUdeviceptr va);
void ckpt_host_pool_release_all(void);
/* At exit, engine stopped, lock held: the program's pending frees completed
 * and every cached mapping destroyed (live tagged memory is the program's). */
void ckpt_arena_release_all(void);
/* At exit, lock held: fence events and the gate page; false (nothing done)
 * when a gate is still closed. */
bool ckpt_streams_release(void);
/* At exit, engine stopped, lock held: the copy streams, when no job is left. */
bool ckpt_offload_release(void);

/* offload.c */
void ckpt_policy_region_closed(struct region *r);
void ckpt_policy_cycle_end(struct region *top);
/* Stops the engine thread; false when it could not be joined (a copy may still run). */
bool ckpt_engine_stop(void);

/* streams.c: the program's streams, which libckpt orders its copies after
 * (fences) and holds still while it swaps a mapping (gates). */
#define CKPT_MAX_STREAMS 8
void ckpt_note_stream(CUstream s, int device);
CUresult ckpt_fence(CUstream copy, int device);
struct ckpt_gate {
  int n;
  unsigned slot;
  uint32_t seq;
  volatile uint32_t *reached[CKPT_MAX_STREAMS]; /* each stream writes seq here on arrival */
};
/* Lock held, the device's context current. 1: every program stream of the
 * device is held; 0: no gate (unavailable: swaps rely on the policy's order);
 * -1: a stream could not be held (logged): nothing may be swapped. */
int ckpt_gate_close(int device, struct ckpt_gate *g);
/* cuEventQuery; an error other than NOT_READY is counted and warned once. */
CUresult ckpt_event_query(CUevent e);
bool ckpt_gate_reached(struct ckpt_gate *g);
void ckpt_gate_wait(struct ckpt_gate *g); /* lock NOT held */
void ckpt_gate_open(struct ckpt_gate *g);

/* startup.c */
void ckpt_startup_warnings(void);

/* stats.c */
void ckpt_stats_sample_device(void);
double ckpt_now(void);

#endif
