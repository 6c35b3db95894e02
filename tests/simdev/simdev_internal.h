/* Interfaces shared by the simulator's source files (none of this is exported). */
#ifndef SIMDEV_INTERNAL_H
#define SIMDEV_INTERNAL_H

/* Declares the plain, _v2 and _ptsz/_ptds names with their real prototypes. */
#define __CUDA_API_VERSION_INTERNAL 1
#include <cuda.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "simdev.h"

#define SD_MAX_DEVICES 16
#define SD_LOC_HOST (-1) /* accounting location of host-located VMM memory */
#define SD_LOC_NONE (-2) /* not accounted: pinned host allocations */

/* ---- configuration, logging, time (simdev.c) ---- */

struct sd_config {
    int ndev;
    size_t device_bytes;
    size_t host_bytes;
    size_t granularity;      /* device-located VMM memory */
    size_t host_granularity; /* host-located VMM memory (SIMDEV_HOST_GRANULARITY) */
    int host_numa_nodes;     /* valid CU_MEM_LOCATION_TYPE_HOST_NUMA ids: 0 .. n-1 */
    unsigned stream_delay_us;
    double copy_gbps;
    unsigned max_connections; /* CUDA_DEVICE_MAX_CONNECTIONS: hardware work queues per context */
    int debug; /* 1: decisions, 2: also every stream operation as it runs */
};
extern struct sd_config sd_cfg;
extern size_t sd_page;

void sd_init(void); /* reads the environment once; every entry point calls it */
void sd_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void sd_say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
uint64_t sd_now_ns(void);
void sd_sleep_ns(uint64_t ns);
/* A throttled copy crossing the simulated link (link.c): returns once its
 * bytes have crossed, its direction's channel shared first come first served. */
void sd_link_transfer(const void *dst, const void *src, size_t n, unsigned long long bytes_per_s);
size_t sd_round_up(size_t n, size_t align); /* align: a power of two */

/* ---- entry points: counting and fault injection (calls.c, procaddr.c) ---- */

enum sd_entry_id {
#define SD_ENTRY_POINT(name, base, version, ptds) SD_ID_##name,
#include "entries.def"
#undef SD_ENTRY_POINT
    SD_ID_COUNT
};

struct sd_entry {
    const char *name;
    const char *base;
    int version;
    bool ptds;
    void *fn;
};
extern const struct sd_entry sd_entries[SD_ID_COUNT];
int sd_entry_find(const char *name); /* -1 when not exported */

/* Counts the call and applies injected failures: true means return *code. */
bool sd_enter(enum sd_entry_id id, const char *func, CUresult *code);
void sd_fail_parse_env(const char *spec);

#define SD_ENTER(name)                                       \
    do {                                                     \
        CUresult sd_injected_;                               \
        if (sd_enter(SD_ID_##name, __func__, &sd_injected_)) \
            return sd_injected_;                             \
    } while (0)

bool sd_error_from_name(const char *name, int *code); /* errors.c */

/* ---- sorted map of disjoint ranges, keyed by start (rmap.c) ---- */

struct sd_range {
    uintptr_t base;
    size_t size;
    void *obj;
};
struct sd_rmap {
    struct sd_range *v;
    size_t n, cap;
};
bool sd_rmap_insert(struct sd_rmap *m, uintptr_t base, size_t size, void *obj);
void *sd_rmap_remove(struct sd_rmap *m, uintptr_t base);
void *sd_rmap_find(const struct sd_rmap *m, uintptr_t addr); /* range holding addr */
size_t sd_rmap_lower(const struct sd_rmap *m, uintptr_t addr); /* first range ending after addr */

/* ---- devices and contexts (device.c) ---- */

struct sd_stream;

struct sd_ctx {
    int dev;
    bool primary;
    bool destroyed;
    unsigned flags;
    unsigned long long id;
    _Atomic int sticky;       /* CUresult of a fault, 0 while healthy */
    struct sd_stream *legacy; /* created on first use, under the sched lock */
    struct sd_hwq *hwq;       /* max_connections hardware queues, created with the first stream */
    unsigned hwq_next;        /* round-robin assignment of the next stream */
    struct sd_ctx *next;      /* all contexts ever created */
};

bool sd_dev_valid(CUdevice dev);
struct sd_ctx *sd_ctx_current(void); /* NULL when none is current: CUDA_ERROR_INVALID_CONTEXT */
bool sd_ctx_valid(struct sd_ctx *ctx);
void sd_ctx_foreach(void (*fn)(struct sd_ctx *, void *), void *arg);

#define SD_PRIORITY_LEAST 0
#define SD_PRIORITY_GREATEST (-5)

/* ---- memory accounting and the address registry (mem.c) ---- */

extern pthread_mutex_t sd_mem_lock;

CUresult sd_account_add(int loc, size_t bytes); /* under sd_mem_lock */
void sd_account_sub(int loc, size_t bytes);     /* under sd_mem_lock */
size_t sd_device_capacity(int dev);

enum sd_region_kind {
    SD_REGION_CLASSIC,  /* cuMemAlloc */
    SD_REGION_PINNED,   /* cuMemAllocHost / cuMemHostAlloc */
    SD_REGION_POOL,     /* a block of a stream-ordered pool */
    SD_REGION_RESERVED, /* cuMemAddressReserve */
};

enum sd_block_state { SD_BLOCK_LIVE, SD_BLOCK_FREEING, SD_BLOCK_CACHED };

struct sd_pool;

struct sd_region {
    enum sd_region_kind kind;
    uintptr_t base;
    size_t len;  /* mapped bytes, what is accounted */
    size_t size; /* bytes asked for */
    int loc;     /* accounting location: device ordinal or SD_LOC_HOST */
    unsigned flags;
    struct sd_pool *pool; /* SD_REGION_POOL */
    enum sd_block_state state;
    bool graph_alloc; /* SD_REGION_POOL: allocated on a capturing stream (a graph allocation node) */
    struct sd_region *next_cached;
    unsigned long nmaps; /* SD_REGION_RESERVED: live cuMemMap mappings */
};

extern struct sd_rmap sd_regions; /* under sd_mem_lock */
/* Accounts, maps (read-write) and registers size bytes rounded up to pages;
 * both under sd_mem_lock. */
CUresult sd_region_create(enum sd_region_kind kind, size_t size, int loc, struct sd_region **out);
void sd_region_drop(struct sd_region *r); /* unregister, unmap, unaccount, free */

/* ---- stream-ordered pools (pool.c) ---- */

void sd_pool_free_done(struct sd_region *block); /* run by a stream worker */

/* ---- VMM lookup for cuMemGetAddressRange / cuPointerGetAttribute (vmm.c) ---- */

/* The mapping holding addr (under sd_mem_lock); loc may be NULL. */
bool sd_vmm_range(uintptr_t addr, uintptr_t *base, size_t *size, int *loc);
/* Whether device `dev` may touch [addr, addr + n) (for writing when `write`):
 * VMM mappings need cuMemSetAccess for that device, stream-ordered pool blocks
 * the pool's device or cuMemPoolSetAccess. Memory of other kinds, and
 * reserved ranges left unmapped, are left to the page protection. Takes
 * sd_mem_lock. *where: the first byte refused. */
bool sd_device_may_touch(int dev, const void *addr, size_t n, bool write, const void **where);
bool sd_pool_grants(struct sd_pool *pool, int dev, bool write); /* pool.c, under sd_mem_lock */
/* Whether [addr, addr + n) may be named by a stream memory operation of
 * device `dev`: device memory, a mapping that device may access, or pinned
 * host memory mapped for the device (CU_MEMHOSTALLOC_DEVICEMAP). */
bool sd_device_visible(int dev, uintptr_t addr, size_t n);

/* ---- the stream engine (stream.c) ---- */

enum sd_op_kind {
    SD_OP_NOP,      /* waits on its dependencies only */
    SD_OP_COPY,
    SD_OP_SET,
    SD_OP_HOSTFN,   /* cuLaunchHostFunc */
    SD_OP_CALLBACK, /* cuStreamAddCallback */
    SD_OP_RECORD,   /* an event record: the op is the event's completion mark */
    SD_OP_FREE,     /* cuMemFreeAsync reaching its stream position */
    SD_OP_WAIT_VALUE,  /* cuStreamWaitValue32/64: blocks the stream on a memory word */
    SD_OP_WRITE_VALUE, /* cuStreamWriteValue32/64 */
    SD_OP_BATCH,       /* cuStreamBatchMemOp: waits and writes as one stream operation */
};

struct sd_op {
    enum sd_op_kind kind;
    int refs; /* queue + waiters + events + dependants; under the sched lock */
    bool done;
    uint64_t done_ns;
    struct sd_op *next; /* stream queue link */
    struct sd_op *qnext; /* hardware queue link, while not yet dispatched */
    struct sd_capture *cap; /* recorded into this stream capture instead of queued */
    bool captured;          /* recorded into a capture (stays set after it ends) */
    struct sd_stream *cap_stream; /* the stream it was captured on */
    size_t cap_index;             /* its position in the capture, from 1 */
    struct sd_op **deps;
    unsigned ndeps, capdeps;
    union {
        struct { void *dst; const void *src; size_t n; int dst_dev, src_dev; /* -1: the stream's */ } copy;
        struct { void *dst; uint32_t value; unsigned elem; size_t count; } set;
        struct { CUhostFn fn; void *data; } hostfn;
        struct { CUstreamCallback fn; CUstream handle; void *data; } callback;
        struct { struct sd_region *block; } free;
        struct { void *addr; uint64_t value; unsigned width; unsigned flags; } value;
        struct { struct sd_op *items; unsigned count; } batch; /* items: plain structs, not queued */
    } u;
};

enum sd_stream_kind { SD_STREAM_USER, SD_STREAM_LEGACY, SD_STREAM_PER_THREAD };

/* A hardware work queue (a "connection"): the streams assigned to it share one
 * in-order FIFO of the operations submitted to any of them. */
struct sd_hwq {
    struct sd_op *head, *tail; /* submitted, not yet dispatched */
    unsigned index;
};

struct sd_stream {
    enum sd_stream_kind kind;
    struct sd_ctx *ctx;
    unsigned flags;
    int priority;
    unsigned long long id;
    struct sd_op *head, *tail; /* not yet executed */
    struct sd_op *last;        /* last submitted, referenced: what later work orders after */
    struct sd_hwq *hwq;        /* the hardware queue it was assigned at creation */
    struct sd_capture *cap;    /* the capture sequence it takes part in; under the sched lock */
    size_t cap_last, cap_joined; /* positions: its last captured op, the last joined back */
    bool dying;
    _Atomic unsigned delay_us;
    pthread_cond_t work;
    struct sd_stream *prev, *next; /* all streams with a worker */
};

void sd_sched_lock(void);
void sd_sched_unlock(void);

/* Resolves a handle as the driver does: 0 is the legacy stream (or this
 * thread's default stream when `per_thread`), CU_STREAM_LEGACY and
 * CU_STREAM_PER_THREAD are explicit. */
CUresult sd_stream_get(CUstream handle, bool per_thread, struct sd_stream **out);

struct sd_op *sd_op_new(enum sd_op_kind kind); /* NULL when out of memory */
bool sd_op_add_dep(struct sd_op *op, struct sd_op *dep); /* under lock or before submit */
void sd_op_ref(struct sd_op *op);   /* under the sched lock */
void sd_op_unref(struct sd_op *op); /* under the sched lock */
void sd_op_release(struct sd_op *op); /* takes the lock */
void sd_op_wait(struct sd_op *op);

/* Queues op on s (taking the creator's reference). With `keep`, a second
 * reference is returned for the caller to wait on and release. */
CUresult sd_submit(struct sd_stream *s, struct sd_op *op, struct sd_op **keep);
/* Submits and waits: a synchronous call's work on the given stream. */
CUresult sd_submit_wait(struct sd_stream *s, struct sd_op *op);

const char *sd_op_name(enum sd_op_kind kind);
CUresult sd_ctx_sync(struct sd_ctx *ctx);
void sd_ctx_retire_streams(struct sd_ctx *ctx); /* a destroyed context's streams finish and go */
void sd_device_sync(int dev); /* what cuMemFree's implicit synchronization waits for */
CUresult sd_sticky(struct sd_ctx *ctx);

/* ---- stream capture and graphs (capture.c) ---- */

struct sd_capture;
/* Under the sched lock: a captured stream's submission is recorded in its
 * capture (taking the creator's reference); the result to return. */
CUresult sd_capture_record(struct sd_capture *cap, struct sd_stream *s, struct sd_op *op);
/* Under the sched lock: legacy-stream work while a blocking stream of its
 * context captures (CUDA_ERROR_STREAM_CAPTURE_IMPLICIT, captures invalidated). */
CUresult sd_capture_legacy_check(struct sd_stream *legacy);
/* Under the sched lock: whether a blocking stream of legacy's context captures
 * (nothing invalidated: what cuStreamIsCapturing on the legacy stream reports). */
bool sd_capture_legacy_blocked(struct sd_stream *legacy);
/* The rule for potentially unsafe calls while captures are active; returns
 * CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED (and invalidates the captures it
 * conflicts with) or CUDA_SUCCESS. Takes the sched lock. */
CUresult sd_capture_unsafe_call(void);
/* Under the sched lock: the capture is invalid from now on. */
void sd_capture_invalidate(struct sd_capture *cap);
/* Under the sched lock: s joins cap (an event recorded in it was waited on). */
CUresult sd_capture_join(struct sd_stream *s, struct sd_op *mark); /* mark: an event's record op in a capture */
void sd_streams_leave_capture(struct sd_capture *cap); /* stream.c, under the sched lock */
struct sd_capture *sd_stream_capture(struct sd_stream *s); /* takes the sched lock */
/* Stream-ordered allocation in a capture: a graph allocation node (the block
 * belongs to the graph, same address every launch) / a graph free node. */
void sd_capture_note_free(struct sd_capture *cap, struct sd_region *block); /* takes the sched lock */
void sd_capture_fail(struct sd_capture *cap); /* invalidates it; takes the sched lock */

/* ---- stream memory operations (memop.c) ---- */

/* Runs a WAIT_VALUE or WRITE_VALUE op on its worker. */
void sd_memop_run(struct sd_stream *s, struct sd_op *op);
extern atomic_bool sd_abandon_waits; /* simdev_shutdown: waits on memory give up */

/* ---- faults (fault.c) ---- */

/* Runs fn(arg); false when it touched memory without access (*addr = where). */
bool sd_guarded(void (*fn)(void *), void *arg, void **addr);
void sd_fault_record(struct sd_ctx *ctx, void *addr, const char *what, unsigned long long stream_id);

#endif
