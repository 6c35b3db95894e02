/* The simulated NCCL: a libnccl.so.2 for tests and the CPU demo, beside the
 * simulated driver (libcuda.so.1) in the same build directory, so that
 * LD_LIBRARY_PATH=<simdev build dir> (what scripts/ckpt-run --sim sets) finds
 * both. Test controls and environment knobs: simnccl.h.
 *
 * Ranks are processes (or threads) of the simulated device. Device memory is
 * host memory of its own process, so data moves through POSIX shared memory:
 *
 *   /simnccl-<id>        the communicator's control block: per-rank state and
 *                        a ring of SN_SLOTS rendezvous slots; the unique id
 *                        names it. Every rank creates-or-opens it, so ranks may
 *                        join in any order; the last one to join unlinks it.
 *   /simnccl-<id>-<seq>  the staging buffer of collective number <seq>, made at
 *                        stream time, unlinked once every rank has mapped it.
 *
 * Liveness: each rank holds an open-file-description lock on byte <rank> of
 * the control block for the life of its communicator; the kernel drops it when
 * the process dies, however it dies, so a peer waiting for it sees "exited"
 * within a poll (a zombie not yet reaped counts as dead, as it should).
 *
 * Stream order, as on a GPU: ncclAllGather returns at once and the collective
 * is work on `stream`, five operations enqueued through the simulated driver
 * (found as cudart finds the real one: dlopen("libcuda.so.1"), then
 * cuGetProcAddress_v2, so an interposer's dlsym override sees it):
 *   H1 host function: wait for the slot, publish (kind, count, datatype, root),
 *      wait for every rank's, compare them, map the staging buffer
 *   C1 copy sendbuff -> staging[rank]        (a stream copy: faults as a kernel would)
 *   H2 host function: publish "deposited", wait for every rank's (a broadcast
 *      too: all ranks take part, as in NCCL's ring)
 *   C2 copy staging -> recvbuff
 *   H3 host function: publish "done" (frees the slot), unmap, release
 * so a caller who does not wait on the stream sees stale data, and a stream
 * blocked ahead of the collective delays it. The two rendezvous block the
 * stream's worker as a spinning NCCL kernel blocks its stream.
 *
 * Failure, never a hang: every wait polls the peers' state and liveness and is
 * bounded by SIMNCCL_TIMEOUT_MS. A failed collective sets the communicator's
 * async error (ncclRemoteError: a peer exited, aborted, left or failed;
 * ncclSystemError: timeout; ncclInvalidUsage: mismatch), marks this rank failed
 * in the control block so peers fail at once too, and poisons its staging
 * buffer (bytes 0xA5) so recvbuff receives garbage, not plausible data (NCCL:
 * after an error nothing can be assumed about enqueued operations). Later calls
 * on the communicator return the async error, as NCCL's ncclCommEnsureReady
 * does. ncclCommAbort returns at once; blocked stream work sees the abort
 * within a poll and finishes.
 *
 * Stricter than real NCCL, on purpose (never more lenient than the hardware):
 *  - collectives that differ between ranks at the same sequence number (kind,
 *    count, datatype, root) fail with ncclInvalidUsage and a line giving both
 *    sides; real NCCL hangs or mixes data;
 *  - a peer that is alive but never arrives fails the collective after the
 *    timeout; real NCCL waits forever (SIMNCCL_TIMEOUT_MS=0 does too);
 *  - buffers are checked as NCCL_CHECK_MODE does: not NULL, known to the
 *    simulated driver, on the communicator's device; and a send buffer that
 *    overlaps the receive buffer anywhere but the in-place position is refused;
 *  - ncclCommInitRank inside a group is refused (real NCCL defers it).
 * Not modelled: reductions, send/recv, split, windows, ncclMemAlloc (all
 * exported, so torch's libtorch_cuda.so loads against this library, and all
 * refusing with ncclInvalidUsage and a line on stderr); nonblocking
 * communicators (ncclCommInitRankConfig with blocking=0 initialises blocking
 * and returns ncclSuccess, which NCCL allows); registered buffers are only
 * handles (nothing notices if a registered range is remapped).
 *
 * Finding it: dlopen("libnccl.so.2") returns whatever libnccl.so.2 the process
 * already has, since a name without a slash matches a loaded soname. torch's
 * libtorch_cuda.so needs libnccl.so.2 and looks in its RPATH
 * ($ORIGIN/../../nvidia/nccl/lib) before LD_LIBRARY_PATH, then ld.so.cache
 * after it. Where that RPATH directory is absent (this machine's torch
 * 2.11+cu130: measured, `import torch` under LD_LIBRARY_PATH=<simdev dir>
 * maps this library and torch.cuda.nccl.version() reads 2.28.9 from it),
 * LD_LIBRARY_PATH is enough; where it exists, torch loads the real NCCL first
 * and only dlopen of this file's full path (e.g. CKPT_NCCL_LIBRARY) loads the
 * double, beside it. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cuda.h>
#include <nccl.h>

#include "simnccl.h"

#define EXPORT __attribute__((visibility("default")))

#define SN_MAX_RANKS 64
#define SN_SLOTS 16
#define SN_CTL_MAGIC 0x53494d4e43434c31ull /* "SIMNCCL1" */
#define SN_ID_MAGIC "simnccl-id-v1"
#define SN_COMM_MAGIC 0x636f6d6d5f736e63ull
#define SN_REG_MAGIC 0x7265675f736e6363ull
#define SN_POISON 0xA5

enum sn_kind { SN_ALLGATHER = 1, SN_BROADCAST = 2 };
enum sn_state { SN_FREE = 0, SN_JOINED, SN_FAILED, SN_ABORTED, SN_DESTROYED, SN_GAVE_UP };

/* ---- the shared control block ---- */

struct sn_meta {
    int32_t kind, dtype, root, pad;
    uint64_t count;
};

struct sn_peer_slot {
    _Atomic uint64_t meta_seq; /* meta below is valid for this seq */
    struct sn_meta meta;
    _Atomic uint64_t map_seq;  /* mapped the staging buffer of this seq */
    _Atomic uint64_t dep_seq;  /* its data is in the staging buffer */
    _Atomic uint64_t done_seq; /* finished: the slot may be reused */
};

struct sn_rank {
    _Atomic int32_t state;
    _Atomic int32_t pid;
    _Atomic int32_t error;
    int32_t pad;
    _Atomic uint64_t fail_seq; /* its lowest failed collective, 0: none */
    _Atomic int32_t reason_claimed;
    _Atomic int32_t reason_ready;
    char reason[256]; /* the line it printed when it first failed */
};

struct sn_ctl {
    _Atomic uint64_t magic;
    _Atomic int32_t nranks;
    _Atomic int32_t joined;
    struct sn_rank rank[SN_MAX_RANKS];
    struct sn_peer_slot slot[SN_SLOTS][SN_MAX_RANKS];
};

/* ---- the unique id: a magic, random bytes, the creator's pid ---- */

struct sn_id {
    char magic[16];
    uint64_t rnd[2];
    int32_t pid;
};
_Static_assert(sizeof(struct sn_id) <= NCCL_UNIQUE_ID_BYTES, "unique id too small");

/* ---- the process-local communicator ---- */

struct sn_reg {
    uint64_t magic;
    void *buff;
    size_t size;
    struct sn_reg *next;
};

struct ncclComm {
    uint64_t magic;
    _Atomic int refs; /* the user's (until destroy/abort) + one per live op */
    int rank, nranks, dev;
    char name[64]; /* "/simnccl-<hex>" */
    int fd;
    struct sn_ctl *ctl;
    pthread_mutex_t lock; /* issue order, registrations */
    uint64_t issued;      /* under lock */
    _Atomic uint64_t finished;
    _Atomic int error;
    _Atomic int aborted;
    _Atomic int reported;
    struct sn_reg *regs;     /* under lock */
    struct sn_op *pending;   /* under lock: launched, stream work not finished */
    struct ncclComm *next_live;
};

struct sn_op {
    struct ncclComm *comm;
    enum sn_kind kind;
    ncclDataType_t dtype;
    size_t count;
    int root;
    const void *send;
    void *recv;
    CUstream stream;
    uint64_t seq;
    unsigned long nth; /* of its kind in this process, for fault injection */
    size_t bytes;      /* one rank's contribution */
    size_t stage_bytes, stage_len;
    void *stage;
    bool failed;
    bool enqueued_all;
    _Atomic int refs;
    struct sn_op *next;         /* group list */
    struct sn_op *next_pending; /* comm->pending */
};

/* ---- configuration ---- */

enum sn_action { SN_EXIT = 1, SN_CORRUPT = 2 };

struct sn_rule {
    enum sn_action action;
    enum sn_kind kind;
    int rank; /* -1: any */
    unsigned long nth;
};
#define SN_MAX_RULES 16

static pthread_once_t cfg_once = PTHREAD_ONCE_INIT;
static _Atomic unsigned cfg_timeout_ms = 5000;
static int cfg_debug;
static pthread_mutex_t rules_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sn_rule rules[SN_MAX_RULES];
static int nrules;
static _Atomic unsigned long kind_count[3];
static _Atomic unsigned long outstanding;

static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ncclComm *live_comms;

static pthread_mutex_t last_error_lock = PTHREAD_MUTEX_INITIALIZER;
static char last_error[512];

static __thread char thread_last[256]; /* this thread's last error line */
static __thread int group_depth;
static __thread struct sn_op *group_head, *group_tail;

/* One line on stderr; an error (not a debug line) is also ncclGetLastError's. */
static void vsay(bool error, const char *fmt, va_list ap)
{
    char buf[512];
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof buf - 2)
        n = sizeof buf - 2;
    if (error) {
        memcpy(thread_last, buf, (size_t)n + 1 < sizeof thread_last ? (size_t)n + 1 : sizeof thread_last);
        thread_last[sizeof thread_last - 1] = '\0';
        pthread_mutex_lock(&last_error_lock);
        memcpy(last_error, buf, (size_t)n + 1);
        pthread_mutex_unlock(&last_error_lock);
    }
    buf[n] = '\n';
    ssize_t w = write(2, buf, (size_t)n + 1);
    (void)w;
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsay(true, fmt, ap);
    va_end(ap);
}

static void debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void debug(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsay(false, fmt, ap);
    va_end(ap);
}

#define LOG(...)                \
    do {                        \
        if (cfg_debug)          \
            debug(__VA_ARGS__); \
    } while (0)

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int parse_rules(const char *spec, struct sn_rule *out, int max)
{
    int n = 0;
    char buf[256];
    if (strlen(spec) >= sizeof buf)
        return -1;
    strcpy(buf, spec);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *c1 = strchr(tok, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c1 || !c2 || n >= max)
            return -1;
        *c1 = *c2 = '\0';
        struct sn_rule r;
        const char *what = tok;
        if (!strncmp(what, "exit_in_", 8)) {
            r.action = SN_EXIT;
            what += 8;
        } else if (!strncmp(what, "corrupt_in_", 11)) {
            r.action = SN_CORRUPT;
            what += 11;
        } else {
            return -1;
        }
        if (!strcmp(what, "allgather"))
            r.kind = SN_ALLGATHER;
        else if (!strcmp(what, "broadcast"))
            r.kind = SN_BROADCAST;
        else
            return -1;
        char *end;
        if (!strcmp(c1 + 1, "*")) {
            r.rank = -1;
        } else {
            long v = strtol(c1 + 1, &end, 10);
            if (*end || end == c1 + 1 || v < 0 || v >= SN_MAX_RANKS)
                return -1;
            r.rank = (int)v;
        }
        unsigned long nth = strtoul(c2 + 1, &end, 10);
        if (*end || end == c2 + 1 || nth == 0)
            return -1;
        r.nth = nth;
        out[n++] = r;
    }
    return n;
}

static void cfg_init(void)
{
    const char *v = getenv("SIMNCCL_TIMEOUT_MS");
    if (v && *v) {
        char *end;
        unsigned long ms = strtoul(v, &end, 10);
        if (*end || ms > 86400000ul)
            say("simnccl: SIMNCCL_TIMEOUT_MS=%s is not a number of milliseconds; using %u", v,
                atomic_load(&cfg_timeout_ms));
        else
            atomic_store(&cfg_timeout_ms, (unsigned)ms);
    }
    v = getenv("SIMNCCL_DEBUG");
    cfg_debug = v && *v && strcmp(v, "0") != 0;
    v = getenv("SIMNCCL_FAIL");
    if (v && *v && simnccl_fail(v) != 0)
        say("simnccl: SIMNCCL_FAIL=%s does not parse (what:rank:nth[,...], what = exit_in_allgather | "
            "exit_in_broadcast | corrupt_in_allgather | corrupt_in_broadcast, rank a number or '*', nth >= 1); "
            "ignored", v);
}

static void cfg(void)
{
    pthread_once(&cfg_once, cfg_init);
}

EXPORT void simnccl_set_timeout_ms(unsigned ms)
{
    cfg();
    atomic_store(&cfg_timeout_ms, ms);
}

EXPORT int simnccl_fail(const char *spec)
{
    struct sn_rule tmp[SN_MAX_RULES];
    if (!spec)
        return -1;
    pthread_mutex_lock(&rules_lock);
    int n = parse_rules(spec, tmp, SN_MAX_RULES - nrules);
    if (n >= 0) {
        memcpy(&rules[nrules], tmp, (size_t)n * sizeof tmp[0]);
        nrules += n;
    }
    pthread_mutex_unlock(&rules_lock);
    return n < 0 ? -1 : 0;
}

EXPORT void simnccl_fail_clear(void)
{
    pthread_mutex_lock(&rules_lock);
    nrules = 0;
    pthread_mutex_unlock(&rules_lock);
}

EXPORT unsigned long simnccl_outstanding(void)
{
    return atomic_load(&outstanding);
}

static bool injected(enum sn_action action, enum sn_kind kind, int rank, unsigned long nth)
{
    bool hit = false;
    pthread_mutex_lock(&rules_lock);
    for (int i = 0; i < nrules; i++)
        if (rules[i].action == action && rules[i].kind == kind && (rules[i].rank < 0 || rules[i].rank == rank) &&
            rules[i].nth == nth)
            hit = true;
    pthread_mutex_unlock(&rules_lock);
    return hit;
}

/* ---- the driver, found as cudart finds it ---- */

typedef CUresult (*pfn_getproc)(const char *, void **, int, cuuint64_t, CUdriverProcAddressQueryResult *);
static struct {
    CUresult (*launch_host_func)(CUstream, CUhostFn, void *);
    CUresult (*memcpy_async)(CUdeviceptr, CUdeviceptr, size_t, CUstream);
    CUresult (*pointer_get_attribute)(void *, CUpointer_attribute, CUdeviceptr);
    CUresult (*ctx_get_device)(CUdevice *);
    CUresult (*stream_query)(CUstream);
    bool ok;
} drv;
static pthread_once_t drv_once = PTHREAD_ONCE_INIT;

static void *drv_sym(void *h, pfn_getproc gpa, const char *name)
{
    void *fn = NULL;
    CUdriverProcAddressQueryResult st;
    if (gpa && gpa(name, &fn, 12000, CU_GET_PROC_ADDRESS_LEGACY_STREAM, &st) == CUDA_SUCCESS &&
        st == CU_GET_PROC_ADDRESS_SUCCESS && fn)
        return fn;
    return dlsym(h, name);
}

static void drv_init(void)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!h) {
        say("simnccl: cannot load libcuda.so.1: %s", dlerror());
        return;
    }
    pfn_getproc gpa = (pfn_getproc)dlsym(h, "cuGetProcAddress_v2");
    drv.launch_host_func = drv_sym(h, gpa, "cuLaunchHostFunc");
    drv.memcpy_async = drv_sym(h, gpa, "cuMemcpyAsync");
    drv.pointer_get_attribute = drv_sym(h, gpa, "cuPointerGetAttribute");
    drv.ctx_get_device = drv_sym(h, gpa, "cuCtxGetDevice");
    drv.stream_query = drv_sym(h, gpa, "cuStreamQuery");
    drv.ok = drv.launch_host_func && drv.memcpy_async && drv.pointer_get_attribute && drv.ctx_get_device &&
             drv.stream_query;
    if (!drv.ok)
        say("simnccl: libcuda.so.1 lacks one of cuLaunchHostFunc, cuMemcpyAsync, cuPointerGetAttribute, "
            "cuCtxGetDevice, cuStreamQuery");
}

static bool drv_ready(void)
{
    pthread_once(&drv_once, drv_init);
    return drv.ok;
}

/* ---- small helpers ---- */

static size_t dtype_size(ncclDataType_t t)
{
    switch (t) {
    case ncclInt8: case ncclUint8: case ncclFloat8e4m3: case ncclFloat8e5m2: return 1;
    case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
    default: return 0;
    }
}

static const char *dtype_name(int t)
{
    static const char *names[] = {"ncclInt8",    "ncclUint8",      "ncclInt32",     "ncclUint32",
                                  "ncclInt64",   "ncclUint64",     "ncclFloat16",   "ncclFloat32",
                                  "ncclFloat64", "ncclBfloat16",   "ncclFloat8e4m3", "ncclFloat8e5m2"};
    return t >= 0 && t < (int)(sizeof names / sizeof names[0]) ? names[t] : "(invalid datatype)";
}

static const char *kind_name(int k)
{
    return k == SN_ALLGATHER ? "ncclAllGather" : k == SN_BROADCAST ? "ncclBroadcast" : "(nothing)";
}

static const char *state_name(int s)
{
    switch (s) {
    case SN_FREE: return "not joined";
    case SN_JOINED: return "alive";
    case SN_FAILED: return "failed a collective";
    case SN_ABORTED: return "aborted its communicator";
    case SN_DESTROYED: return "destroyed its communicator";
    case SN_GAVE_UP: return "gave up bootstrapping";
    default: return "in an unknown state";
    }
}

static size_t page_size(void)
{
    static _Atomic size_t pg;
    size_t v = atomic_load_explicit(&pg, memory_order_relaxed);
    if (!v) {
        v = (size_t)sysconf(_SC_PAGESIZE);
        atomic_store_explicit(&pg, v, memory_order_relaxed);
    }
    return v;
}

static void ctl_name(const struct sn_id *id, char *out, size_t n)
{
    snprintf(out, n, "/simnccl-%016" PRIx64 "%016" PRIx64, id->rnd[0], id->rnd[1]);
}

EXPORT int simnccl_shm_prefix(const void *unique_id, char *buf, unsigned long len)
{
    struct sn_id id;
    char name[64];
    if (!unique_id || !buf)
        return -1;
    memcpy(&id, unique_id, sizeof id);
    if (memcmp(id.magic, SN_ID_MAGIC, sizeof SN_ID_MAGIC) != 0)
        return -1;
    ctl_name(&id, name, sizeof name);
    return snprintf(buf, len, "%s", name + 1) < (int)len ? 0 : -1;
}

static void stage_name(const struct ncclComm *c, uint64_t seq, char *out, size_t n)
{
    snprintf(out, n, "%s-%" PRIu64, c->name, seq);
}

/* True while the process holding rank q's communicator lives (it holds the lock). */
static bool peer_alive(const struct ncclComm *c, int q)
{
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = q;
    fl.l_len = 1;
    if (fcntl(c->fd, F_OFD_GETLK, &fl) != 0)
        return true; /* cannot tell: assume alive, the timeout still bounds the wait */
    return fl.l_type != F_UNLCK;
}

static bool comm_valid(const struct ncclComm *c)
{
    bool found = false;
    pthread_mutex_lock(&live_lock);
    for (struct ncclComm *p = live_comms; p; p = p->next_live)
        if (p == c)
            found = true;
    pthread_mutex_unlock(&live_lock);
    return found;
}

static bool comm_unlist(struct ncclComm *c)
{
    bool found = false;
    pthread_mutex_lock(&live_lock);
    for (struct ncclComm **pp = &live_comms; *pp; pp = &(*pp)->next_live)
        if (*pp == c) {
            *pp = c->next_live;
            found = true;
            break;
        }
    pthread_mutex_unlock(&live_lock);
    return found;
}

static void comm_unref(struct ncclComm *c)
{
    if (atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    munmap(c->ctl, sizeof *c->ctl);
    close(c->fd); /* drops the liveness lock */
    for (struct sn_reg *r = c->regs, *n; r; r = n) {
        n = r->next;
        r->magic = 0;
        free(r);
    }
    pthread_mutex_destroy(&c->lock);
    c->magic = 0;
    free(c);
}

/* Marks the communicator failed (first error wins) and tells the peers. */
static void comm_fail(struct ncclComm *c, ncclResult_t code)
{
    int expect = ncclSuccess;
    atomic_compare_exchange_strong(&c->error, &expect, (int)code);
    int st = SN_JOINED;
    atomic_store(&c->ctl->rank[c->rank].error, (int)code);
    atomic_compare_exchange_strong(&c->ctl->rank[c->rank].state, &st, SN_FAILED);
}

/* ---- waiting for peers ---- */

enum sn_wait { SN_WAIT_SLOT, SN_WAIT_META, SN_WAIT_DEPOSIT };

static bool peer_ready(const struct sn_op *op, int q, enum sn_wait what)
{
    const struct ncclComm *c = op->comm;
    const struct sn_peer_slot *ps = &c->ctl->slot[op->seq % SN_SLOTS][q];
    switch (what) {
    case SN_WAIT_SLOT:
        return op->seq <= SN_SLOTS || atomic_load(&ps->done_seq) >= op->seq - SN_SLOTS;
    case SN_WAIT_META:
        return atomic_load(&ps->meta_seq) == op->seq;
    case SN_WAIT_DEPOSIT:
        /* A broadcast needs only the root's data but waits for every rank's
         * "deposited" (made after it mapped the staging buffer): every rank
         * takes part, so a rank dying mid-collective fails the others (it would
         * break NCCL's ring), and the last mapper has unlinked the buffer. */
        return atomic_load(&ps->dep_seq) == op->seq;
    }
    return true;
}

static const char *wait_name(enum sn_wait w)
{
    return w == SN_WAIT_SLOT ? "for the previous use of its slot to finish"
           : w == SN_WAIT_META ? "for the peers to arrive"
                               : "for the peers' data";
}

static void list_ranks(const bool *set, int n, char *out, size_t len)
{
    size_t o = 0;
    out[0] = '\0';
    for (int q = 0; q < n && o + 8 < len; q++)
        if (set[q])
            o += (size_t)snprintf(out + o, len - o, "%s%d", o ? ", " : "", q);
}

/* Waits until every peer is ready; fails on abort, a dead or failed peer, or
 * the timeout. Quiet when the communicator has already failed. */
static ncclResult_t wait_peers(struct sn_op *op, enum sn_wait what)
{
    struct ncclComm *c = op->comm;
    unsigned tmo = atomic_load(&cfg_timeout_ms);
    uint64_t start = now_ns(), deadline = tmo ? start + (uint64_t)tmo * 1000000ull : UINT64_MAX;
    uint64_t nap = 2000;
    bool missing[SN_MAX_RANKS];
    for (unsigned iter = 0;; iter++) {
        bool all = true;
        for (int q = 0; q < c->nranks; q++) {
            missing[q] = !peer_ready(op, q, what);
            all = all && !missing[q];
        }
        if (all)
            return ncclSuccess;
        if (atomic_load(&c->aborted))
            return ncclSystemError;
        if (atomic_load(&c->error) != ncclSuccess)
            return (ncclResult_t)atomic_load(&c->error);
        for (int q = 0; q < c->nranks; q++) {
            if (q == c->rank)
                continue;
            int st = atomic_load(&c->ctl->rank[q].state);
            uint64_t fs = atomic_load(&c->ctl->rank[q].fail_seq);
            if ((st == SN_FAILED || st == SN_ABORTED) && fs && fs <= op->seq) {
                /* It arrived, maybe, but it will not finish this collective. */
                const struct sn_rank *qr = &c->ctl->rank[q];
                say("simnccl: rank %d: %s #%" PRIu64 " failed: rank %d %s (its collective #%" PRIu64
                    " failed%s%s%s) while this rank waited %s",
                    c->rank, kind_name(op->kind), op->seq, q, state_name(st), fs,
                    atomic_load(&qr->reason_ready) ? ": \"" : "", atomic_load(&qr->reason_ready) ? qr->reason : "",
                    atomic_load(&qr->reason_ready) ? "\"" : "", wait_name(what));
                return ncclRemoteError;
            }
            if (!missing[q])
                continue;
            bool dead = st == SN_JOINED && (iter % 4 == 0) && !peer_alive(c, q);
            if (st != SN_JOINED || dead) {
                if (dead)
                    say("simnccl: rank %d: %s #%" PRIu64 " failed: rank %d (pid %d) exited while this rank waited %s",
                        c->rank, kind_name(op->kind), op->seq, q, (int)atomic_load(&c->ctl->rank[q].pid),
                        wait_name(what));
                else
                    say("simnccl: rank %d: %s #%" PRIu64 " failed: rank %d %s while this rank waited %s", c->rank,
                        kind_name(op->kind), op->seq, q, state_name(st), wait_name(what));
                return ncclRemoteError;
            }
        }
        uint64_t t = now_ns();
        if (t >= deadline) {
            char who[256];
            list_ranks(missing, c->nranks, who, sizeof who);
            say("simnccl: rank %d: %s #%" PRIu64 " timed out after %u ms (SIMNCCL_TIMEOUT_MS) waiting %s: rank(s) %s "
                "did not come",
                c->rank, kind_name(op->kind), op->seq, tmo, wait_name(what), who);
            return ncclSystemError;
        }
        sleep_ns(nap);
        if (nap < 500000)
            nap *= 2;
    }
}

/* ---- the stream work of one collective ---- */

static void op_unref(struct sn_op *op)
{
    if (atomic_fetch_sub(&op->refs, 1) != 1)
        return;
    /* Every host function has run, so every copy enqueued before the last one
     * has too; copies after an enqueue failure may still be queued: leak. */
    if (op->stage && op->enqueued_all)
        munmap(op->stage, op->stage_len);
    struct ncclComm *c = op->comm;
    free(op);
    comm_unref(c);
}

/* Replaces this process's view of the staging buffer with private poison, so
 * the copies still queued read garbage and touch nothing shared. */
static void poison(struct sn_op *op)
{
    if (!op->stage)
        return;
    void *p = mmap(op->stage, op->stage_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (p != MAP_FAILED)
        memset(p, SN_POISON, op->stage_bytes);
}

static void op_fail(struct sn_op *op, ncclResult_t code)
{
    bool said = thread_last[0] != '\0'; /* this host function printed why */
    op->failed = true;
    comm_fail(op->comm, code);
    /* Peers past the point of waiting for this rank see it from here, and
     * repeat its first reason, so every rank's log names the cause. */
    struct sn_rank *me = &op->comm->ctl->rank[op->comm->rank];
    if (said && atomic_exchange(&me->reason_claimed, 1) == 0) {
        const char *r = thread_last;
        if (!strncmp(r, "simnccl: ", 9))
            r += 9;
        snprintf(me->reason, sizeof me->reason, "%s", r);
        atomic_store(&me->reason_ready, 1);
    }
    _Atomic uint64_t *fs = &me->fail_seq;
    uint64_t cur = atomic_load(fs);
    while ((cur == 0 || cur > op->seq) && !atomic_compare_exchange_weak(fs, &cur, op->seq))
        ;
    poison(op);
    char name[96];
    stage_name(op->comm, op->seq, name, sizeof name);
    shm_unlink(name);
}

static ncclResult_t map_stage(struct sn_op *op)
{
    struct ncclComm *c = op->comm;
    char name[96];
    stage_name(c, op->seq, name, sizeof name);
    int fd = shm_open(name, O_CREAT | O_RDWR, 0600);
    /* Reserve the pages now: a full /dev/shm is an error here, not a SIGBUS in a copy. */
    int e = fd < 0 ? errno : posix_fallocate(fd, 0, (off_t)op->stage_bytes);
    if (fd < 0 || e != 0) {
        errno = e;
        say("simnccl: rank %d: cannot create staging buffer %s (%zu bytes): %s", c->rank, name, op->stage_bytes,
            strerror(errno));
        if (fd >= 0)
            close(fd);
        return ncclSystemError;
    }
    void *p = mmap(op->stage, op->stage_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        say("simnccl: rank %d: cannot map staging buffer %s: %s", c->rank, name, strerror(errno));
        return ncclSystemError;
    }
    /* Unlinked once all have it mapped; whoever sees that last does it. */
    atomic_store(&c->ctl->slot[op->seq % SN_SLOTS][c->rank].map_seq, op->seq);
    bool all = true;
    for (int q = 0; q < c->nranks; q++)
        all = all && atomic_load(&c->ctl->slot[op->seq % SN_SLOTS][q].map_seq) == op->seq;
    if (all)
        shm_unlink(name);
    return ncclSuccess;
}

static void h1_arrive(void *arg)
{
    struct sn_op *op = arg;
    thread_last[0] = '\0';
    struct ncclComm *c = op->comm;
    struct sn_peer_slot *mine = &c->ctl->slot[op->seq % SN_SLOTS][c->rank];
    ncclResult_t rc;
    if (atomic_load(&c->aborted) || atomic_load(&c->error) != ncclSuccess) {
        op_fail(op, atomic_load(&c->aborted) ? ncclSystemError : (ncclResult_t)atomic_load(&c->error));
        goto out;
    }
    if ((rc = wait_peers(op, SN_WAIT_SLOT)) != ncclSuccess) {
        op_fail(op, rc);
        goto out;
    }
    mine->meta.kind = op->kind;
    mine->meta.dtype = op->dtype;
    mine->meta.root = op->root;
    mine->meta.count = op->count;
    atomic_store(&mine->meta_seq, op->seq);
    if ((rc = wait_peers(op, SN_WAIT_META)) != ncclSuccess) {
        op_fail(op, rc);
        goto out;
    }
    for (int q = 0; q < c->nranks; q++) {
        const struct sn_meta *m = &c->ctl->slot[op->seq % SN_SLOTS][q].meta;
        if (m->kind != (int)op->kind || m->dtype != (int)op->dtype || m->count != op->count ||
            (op->kind == SN_BROADCAST && m->root != op->root)) {
            char mine_root[24] = "", its_root[24] = "";
            if (op->kind == SN_BROADCAST)
                snprintf(mine_root, sizeof mine_root, ", root=%d", op->root);
            if (m->kind == SN_BROADCAST)
                snprintf(its_root, sizeof its_root, ", root=%d", (int)m->root);
            say("simnccl: rank %d: collective #%" PRIu64 " mismatch: this rank called %s(count=%zu, datatype=%s%s) "
                "but rank %d called %s(count=%" PRIu64 ", datatype=%s%s)",
                c->rank, op->seq, kind_name(op->kind), op->count, dtype_name(op->dtype), mine_root, q,
                kind_name(m->kind), m->count, dtype_name(m->dtype), its_root);
            op_fail(op, ncclInvalidUsage);
            goto out;
        }
    }
    if (op->stage && (rc = map_stage(op)) != ncclSuccess) {
        op_fail(op, rc);
        goto out;
    }
    LOG("simnccl: rank %d: %s #%" PRIu64 ": all %d ranks arrived", c->rank, kind_name(op->kind), op->seq,
        c->nranks);
out:
    op_unref(op);
}

static void h2_deposit(void *arg)
{
    struct sn_op *op = arg;
    thread_last[0] = '\0';
    struct ncclComm *c = op->comm;
    if (op->failed)
        goto out;
    if (injected(SN_EXIT, op->kind, c->rank, op->nth)) {
        say("simnccl: rank %d: SIMNCCL_FAIL: exiting in %s #%" PRIu64 " (number %lu of its kind in this process)",
            c->rank, kind_name(op->kind), op->seq, op->nth);
        _exit(SIMNCCL_EXIT_STATUS);
    }
    bool contributes = op->kind == SN_ALLGATHER || c->rank == op->root;
    if (op->stage && contributes && injected(SN_CORRUPT, op->kind, c->rank, op->nth)) {
        /* Silent, as a bit flip on the wire would be: only the data shows it. */
        size_t off = op->kind == SN_ALLGATHER ? (size_t)c->rank * op->bytes : 0;
        ((unsigned char *)op->stage)[off] ^= 0xFF;
        LOG("simnccl: rank %d: SIMNCCL_FAIL: corrupted byte 0 of its contribution to %s #%" PRIu64, c->rank,
            kind_name(op->kind), op->seq);
    }
    if (atomic_load(&c->aborted)) {
        op_fail(op, ncclSystemError);
        goto out;
    }
    atomic_store(&c->ctl->slot[op->seq % SN_SLOTS][c->rank].dep_seq, op->seq);
    ncclResult_t rc = wait_peers(op, SN_WAIT_DEPOSIT);
    if (rc != ncclSuccess)
        op_fail(op, rc);
    else
        LOG("simnccl: rank %d: %s #%" PRIu64 ": data complete", c->rank, kind_name(op->kind), op->seq);
out:
    op_unref(op);
}

/* The op's stream work is over (or will never run): under c->lock. */
static void op_retire_locked(struct sn_op *op)
{
    struct ncclComm *c = op->comm;
    for (struct sn_op **pp = &c->pending; *pp; pp = &(*pp)->next_pending)
        if (*pp == op) {
            *pp = op->next_pending;
            break;
        }
    atomic_fetch_add(&c->finished, 1);
    atomic_fetch_sub(&outstanding, 1);
}

static void h3_done(void *arg)
{
    struct sn_op *op = arg;
    struct ncclComm *c = op->comm;
    atomic_store(&c->ctl->slot[op->seq % SN_SLOTS][c->rank].done_seq, op->seq);
    pthread_mutex_lock(&c->lock);
    op_retire_locked(op);
    pthread_mutex_unlock(&c->lock);
    op_unref(op);
}

/* ---- issuing ---- */

static ncclResult_t cuda_failed(struct ncclComm *c, const char *what, CUresult rc)
{
    say("simnccl: rank %d: %s failed with CUDA error %d", c->rank, what, (int)rc);
    return ncclUnhandledCudaError;
}

/* Enqueues the op's stream work; consumes the caller's reference. */
static ncclResult_t op_launch(struct sn_op *op)
{
    struct ncclComm *c = op->comm;
    ncclResult_t res = ncclSuccess;
    pthread_mutex_lock(&c->lock);
    op->seq = ++c->issued;
    atomic_fetch_add(&outstanding, 1);
    op->next_pending = c->pending;
    c->pending = op;
    op->nth = atomic_fetch_add(&kind_count[op->kind], 1) + 1;
    if (op->bytes) {
        op->stage_bytes = op->kind == SN_ALLGATHER ? op->bytes * (size_t)c->nranks : op->bytes;
        op->stage_len = (op->stage_bytes + page_size() - 1) & ~(page_size() - 1);
        void *p = mmap(NULL, op->stage_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) {
            say("simnccl: rank %d: cannot reserve %zu bytes of staging: %s", c->rank, op->stage_len, strerror(errno));
            res = ncclSystemError;
            goto fail;
        }
        op->stage = p;
    }
    LOG("simnccl: rank %d: enqueue %s #%" PRIu64 " count %zu %s root %d send %p recv %p stream %p", c->rank,
        kind_name(op->kind), op->seq, op->count, dtype_name(op->dtype), op->root, op->send, op->recv,
        (void *)op->stream);
    CUresult cr;
    atomic_fetch_add(&op->refs, 1);
    if ((cr = drv.launch_host_func(op->stream, h1_arrive, op)) != CUDA_SUCCESS) {
        atomic_fetch_sub(&op->refs, 1);
        res = cuda_failed(c, "cuLaunchHostFunc", cr);
        goto fail;
    }
    if (op->bytes) {
        bool sends = op->kind == SN_ALLGATHER || c->rank == op->root;
        size_t off = op->kind == SN_ALLGATHER ? (size_t)c->rank * op->bytes : 0;
        if (sends && (cr = drv.memcpy_async((CUdeviceptr)(uintptr_t)((char *)op->stage + off),
                                            (CUdeviceptr)(uintptr_t)op->send, op->bytes, op->stream)) != CUDA_SUCCESS) {
            res = cuda_failed(c, "cuMemcpyAsync", cr);
            goto enq_fail;
        }
        atomic_fetch_add(&op->refs, 1);
        if ((cr = drv.launch_host_func(op->stream, h2_deposit, op)) != CUDA_SUCCESS) {
            atomic_fetch_sub(&op->refs, 1);
            res = cuda_failed(c, "cuLaunchHostFunc", cr);
            goto enq_fail;
        }
        size_t n = op->kind == SN_ALLGATHER ? op->stage_bytes : op->bytes;
        if ((cr = drv.memcpy_async((CUdeviceptr)(uintptr_t)op->recv, (CUdeviceptr)(uintptr_t)op->stage, n,
                                   op->stream)) != CUDA_SUCCESS) {
            res = cuda_failed(c, "cuMemcpyAsync", cr);
            goto enq_fail;
        }
    }
    atomic_fetch_add(&op->refs, 1);
    if ((cr = drv.launch_host_func(op->stream, h3_done, op)) != CUDA_SUCCESS) {
        atomic_fetch_sub(&op->refs, 1);
        res = cuda_failed(c, "cuLaunchHostFunc", cr);
        goto enq_fail;
    }
    op->enqueued_all = true;
    pthread_mutex_unlock(&c->lock);
    op_unref(op);
    return ncclSuccess;

enq_fail:
    /* Part of the work is queued; its host functions see the failure. H3
     * never runs, so account for it here. */
    comm_fail(c, res);
    op_retire_locked(op);
    pthread_mutex_unlock(&c->lock);
    op_unref(op);
    return res;
fail:
    comm_fail(c, res);
    op_retire_locked(op);
    pthread_mutex_unlock(&c->lock);
    if (op->stage)
        munmap(op->stage, op->stage_len);
    op->stage = NULL;
    op_unref(op);
    return res;
}

static ncclResult_t check_comm(ncclComm_t comm, const char *fn)
{
    if (!comm || !comm_valid(comm)) {
        say("simnccl: %s: comm %p is not a live communicator", fn, (void *)comm);
        return ncclInvalidArgument;
    }
    return ncclSuccess;
}

static ncclResult_t check_buffer(struct ncclComm *c, const char *fn, const char *what, const void *p, size_t n)
{
    if (!p) {
        say("simnccl: rank %d: %s: %s (nil) is not a valid pointer", c->rank, fn, what);
        return ncclInvalidArgument;
    }
    unsigned type = 0;
    int dev = -1;
    CUdeviceptr d = (CUdeviceptr)(uintptr_t)p;
    if (drv.pointer_get_attribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, d) != CUDA_SUCCESS ||
        drv.pointer_get_attribute(&dev, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, d) != CUDA_SUCCESS) {
        say("simnccl: rank %d: %s: %s %p (%zu bytes) is not memory of the simulated device", c->rank, fn, what, p, n);
        return ncclInvalidArgument;
    }
    if (type == CU_MEMORYTYPE_DEVICE && dev != c->dev) {
        say("simnccl: rank %d: %s: %s %p is on device %d, the communicator on device %d", c->rank, fn, what, p, dev,
            c->dev);
        return ncclInvalidArgument;
    }
    return ncclSuccess;
}

static ncclResult_t collective(enum sn_kind kind, const char *fn, const void *send, void *recv, size_t count,
                               ncclDataType_t dtype, int root, ncclComm_t comm, cudaStream_t stream)
{
    cfg();
    ncclResult_t rc = check_comm(comm, fn);
    if (rc != ncclSuccess)
        return rc;
    struct ncclComm *c = comm;
    if (atomic_load(&c->error) != ncclSuccess)
        return (ncclResult_t)atomic_load(&c->error);
    if (!drv_ready())
        return ncclUnhandledCudaError;
    size_t es = dtype_size(dtype);
    if (es == 0) {
        say("simnccl: rank %d: %s: invalid datatype %d", c->rank, fn, (int)dtype);
        return ncclInvalidArgument;
    }
    if (kind == SN_BROADCAST && (root < 0 || root >= c->nranks)) {
        say("simnccl: rank %d: %s: invalid root %d (nranks %d)", c->rank, fn, root, c->nranks);
        return ncclInvalidArgument;
    }
    if (count > SIZE_MAX / es / (size_t)c->nranks) {
        say("simnccl: rank %d: %s: count %zu overflows", c->rank, fn, count);
        return ncclInvalidArgument;
    }
    size_t bytes = count * es;
    size_t recv_bytes = kind == SN_ALLGATHER ? bytes * (size_t)c->nranks : bytes;
    bool sends = kind == SN_ALLGATHER || c->rank == root;
    if (bytes) {
        if ((sends && (rc = check_buffer(c, fn, "sendbuff", send, bytes)) != ncclSuccess) ||
            (rc = check_buffer(c, fn, "recvbuff", recv, recv_bytes)) != ncclSuccess)
            return rc;
        if (sends) {
            uintptr_t s = (uintptr_t)send, r = (uintptr_t)recv;
            uintptr_t in_place = kind == SN_ALLGATHER ? r + (uintptr_t)c->rank * bytes : r;
            bool overlap = s < r + recv_bytes && r < s + bytes;
            if (overlap && s != in_place) {
                say("simnccl: rank %d: %s: sendbuff %p overlaps recvbuff %p (%zu bytes) but is not the in-place "
                    "position %p",
                    c->rank, fn, send, recv, recv_bytes, (void *)in_place);
                return ncclInvalidArgument;
            }
        }
    }
    struct sn_op *op = calloc(1, sizeof *op);
    if (!op)
        return ncclSystemError;
    op->kind = kind;
    op->dtype = dtype;
    op->count = count;
    op->root = kind == SN_BROADCAST ? root : -1;
    op->send = sends ? send : NULL;
    op->recv = recv;
    op->stream = (CUstream)stream;
    op->bytes = bytes;
    op->refs = 1;
    op->comm = c;
    atomic_fetch_add(&c->refs, 1);
    if (group_depth > 0) {
        if (group_tail)
            group_tail->next = op;
        else
            group_head = op;
        group_tail = op;
        return ncclSuccess;
    }
    return op_launch(op);
}

/* ---- exported API ---- */

EXPORT ncclResult_t ncclGetVersion(int *version)
{
    if (!version)
        return ncclInvalidArgument;
    *version = NCCL_VERSION_CODE;
    return ncclSuccess;
}

EXPORT const char *ncclGetErrorString(ncclResult_t result)
{
    switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "a CUDA call failed (simnccl printed which on stderr)";
    case ncclSystemError: return "a system call failed or a wait for peers timed out (see stderr)";
    case ncclInternalError: return "internal error of simnccl";
    case ncclInvalidArgument: return "invalid argument (simnccl printed which on stderr)";
    case ncclInvalidUsage: return "invalid usage: a mismatched collective, or a call simnccl does not model (see stderr)";
    case ncclRemoteError: return "a peer rank exited, aborted, left or failed";
    case ncclInProgress: return "operation in progress";
    default: return "unknown result code";
    }
}

EXPORT const char *ncclGetLastError(ncclComm_t comm)
{
    (void)comm;
    return last_error;
}

EXPORT ncclResult_t ncclGetUniqueId(ncclUniqueId *uniqueId)
{
    cfg();
    if (!uniqueId)
        return ncclInvalidArgument;
    struct sn_id id;
    memset(&id, 0, sizeof id);
    strcpy(id.magic, SN_ID_MAGIC);
    if (getrandom(id.rnd, sizeof id.rnd, 0) != (ssize_t)sizeof id.rnd) {
        say("simnccl: ncclGetUniqueId: getrandom failed: %s", strerror(errno));
        return ncclSystemError;
    }
    id.pid = (int32_t)getpid();
    memset(uniqueId, 0, sizeof *uniqueId);
    memcpy(uniqueId->internal, &id, sizeof id);
    return ncclSuccess;
}

static ncclResult_t init_rank(ncclComm_t *out, int nranks, ncclUniqueId uid, int rank, const char *fn)
{
    cfg();
    if (!out)
        return ncclInvalidArgument;
    *out = NULL;
    if (nranks < 1 || nranks > SN_MAX_RANKS || rank < 0 || rank >= nranks) {
        say("simnccl: %s: invalid rank %d of %d (simnccl allows 1..%d ranks)", fn, rank, nranks, SN_MAX_RANKS);
        return ncclInvalidArgument;
    }
    struct sn_id id;
    memcpy(&id, uid.internal, sizeof id);
    if (memcmp(id.magic, SN_ID_MAGIC, sizeof SN_ID_MAGIC) != 0) {
        say("simnccl: %s: rank %d: the unique id was not made by ncclGetUniqueId of simnccl", fn, rank);
        return ncclInvalidArgument;
    }
    if (group_depth > 0) {
        say("simnccl: %s: rank %d: communicator creation inside a group is not supported by simnccl", fn, rank);
        return ncclInvalidUsage;
    }
    if (!drv_ready())
        return ncclUnhandledCudaError;
    CUdevice dev = 0;
    if (drv.ctx_get_device(&dev) != CUDA_SUCCESS)
        dev = 0; /* cudart would make device 0's primary context current */

    struct ncclComm *c = calloc(1, sizeof *c);
    if (!c)
        return ncclSystemError;
    c->magic = SN_COMM_MAGIC;
    c->rank = rank;
    c->nranks = nranks;
    c->dev = (int)dev;
    c->refs = 1;
    pthread_mutex_init(&c->lock, NULL);
    ctl_name(&id, c->name, sizeof c->name);
    c->fd = shm_open(c->name, O_CREAT | O_RDWR, 0600);
    if (c->fd < 0 || ftruncate(c->fd, sizeof(struct sn_ctl)) != 0) {
        say("simnccl: %s: rank %d: cannot create %s: %s", fn, rank, c->name, strerror(errno));
        goto sys_fail;
    }
    c->ctl = mmap(NULL, sizeof(struct sn_ctl), PROT_READ | PROT_WRITE, MAP_SHARED, c->fd, 0);
    if (c->ctl == MAP_FAILED) {
        c->ctl = NULL;
        say("simnccl: %s: rank %d: cannot map %s: %s", fn, rank, c->name, strerror(errno));
        goto sys_fail;
    }
    struct sn_ctl *ctl = c->ctl;
    uint64_t m = 0;
    if (!atomic_compare_exchange_strong(&ctl->magic, &m, SN_CTL_MAGIC) && m != SN_CTL_MAGIC) {
        say("simnccl: %s: rank %d: %s is not a simnccl control block", fn, rank, c->name);
        goto usage_fail;
    }
    int32_t n = 0;
    if (!atomic_compare_exchange_strong(&ctl->nranks, &n, nranks) && n != nranks) {
        say("simnccl: %s: rank %d: called with nranks %d, but the ranks that joined first said %d", fn, rank, nranks,
            (int)n);
        goto usage_fail;
    }
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = rank;
    fl.l_len = 1;
    int32_t st = SN_FREE;
    if (fcntl(c->fd, F_OFD_SETLK, &fl) != 0 || !atomic_compare_exchange_strong(&ctl->rank[rank].state, &st, SN_JOINED)) {
        say("simnccl: %s: rank %d of communicator %s joined twice", fn, rank, c->name);
        goto usage_fail;
    }
    atomic_store(&ctl->rank[rank].pid, (int32_t)getpid());
    if (atomic_fetch_add(&ctl->joined, 1) + 1 == nranks)
        shm_unlink(c->name); /* everyone has it open: no name needed any more */

    unsigned tmo = atomic_load(&cfg_timeout_ms);
    uint64_t deadline = tmo ? now_ns() + (uint64_t)tmo * 1000000ull : UINT64_MAX;
    uint64_t nap = 2000;
    for (unsigned iter = 0; atomic_load(&ctl->joined) < nranks; iter++) {
        for (int q = 0; q < nranks; q++) {
            int s = atomic_load(&ctl->rank[q].state);
            if (q == rank || s == SN_FREE)
                continue;
            if (s != SN_JOINED || (iter % 4 == 0 && !peer_alive(c, q))) {
                if (atomic_load(&ctl->joined) >= nranks)
                    break; /* everyone joined, then it left: that is for its collectives to see */
                if (s == SN_GAVE_UP) {
                    /* It timed out: so do we, and say who is missing. */
                    deadline = 0;
                    break;
                }
                say("simnccl: %s: rank %d: rank %d %s during the bootstrap", fn, rank, q,
                    s != SN_JOINED ? state_name(s) : "exited");
                goto remote_fail;
            }
        }
        if (now_ns() >= deadline) {
            bool missing[SN_MAX_RANKS];
            for (int q = 0; q < nranks; q++)
                missing[q] = atomic_load(&ctl->rank[q].state) == SN_FREE;
            char who[256];
            list_ranks(missing, nranks, who, sizeof who);
            say("simnccl: %s: rank %d of %d: bootstrap timed out after %u ms (SIMNCCL_TIMEOUT_MS)%s: rank(s) %s never "
                "joined",
                fn, rank, nranks, tmo, deadline ? "" : " on a peer", who);
            atomic_store(&ctl->rank[rank].state, SN_GAVE_UP);
            shm_unlink(c->name);
            goto sys_fail;
        }
        sleep_ns(nap);
        if (nap < 500000)
            nap *= 2;
    }
    LOG("simnccl: rank %d of %d: communicator %s ready on device %d", rank, nranks, c->name, c->dev);
    pthread_mutex_lock(&live_lock);
    c->next_live = live_comms;
    live_comms = c;
    pthread_mutex_unlock(&live_lock);
    *out = c;
    return ncclSuccess;

    ncclResult_t res;
remote_fail:
    atomic_store(&ctl->rank[rank].state, SN_GAVE_UP);
    res = ncclRemoteError;
    goto cleanup;
usage_fail:
    res = ncclInvalidUsage;
    goto cleanup;
sys_fail:
    res = ncclSystemError;
cleanup:
    if (c->ctl)
        munmap(c->ctl, sizeof(struct sn_ctl));
    if (c->fd >= 0)
        close(c->fd);
    pthread_mutex_destroy(&c->lock);
    free(c);
    return res;
}

EXPORT ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank)
{
    return init_rank(comm, nranks, commId, rank, "ncclCommInitRank");
}

EXPORT ncclResult_t ncclCommInitRankConfig(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank,
                                           ncclConfig_t *config)
{
    if (config && config->magic != 0xcafebeef) {
        say("simnccl: ncclCommInitRankConfig: config was not initialised with NCCL_CONFIG_INITIALIZER");
        return ncclInvalidArgument;
    }
    return init_rank(comm, nranks, commId, rank, "ncclCommInitRankConfig");
}

EXPORT ncclResult_t ncclCommFinalize(ncclComm_t comm)
{
    ncclResult_t rc = check_comm(comm, "ncclCommFinalize");
    return rc != ncclSuccess ? rc : (ncclResult_t)atomic_load(&comm->error);
}

EXPORT ncclResult_t ncclCommDestroy(ncclComm_t comm)
{
    cfg();
    if (!comm)
        return ncclSuccess; /* NCCL: destroying NULL is a no-op */
    if (!comm_unlist(comm)) {
        say("simnccl: ncclCommDestroy: comm %p is not a live communicator", (void *)comm);
        return ncclInvalidArgument;
    }
    /* Like ncclCommFinalize: wait for this communicator's stream work, bounded. */
    unsigned tmo = atomic_load(&cfg_timeout_ms);
    uint64_t deadline = tmo ? now_ns() + 2ull * tmo * 1000000ull : UINT64_MAX;
    uint64_t issued;
    ncclResult_t res = ncclSuccess;
    pthread_mutex_lock(&comm->lock);
    issued = comm->issued;
    pthread_mutex_unlock(&comm->lock);
    while (atomic_load(&comm->finished) < issued) {
        /* A stream whose context has faulted runs nothing more: its
         * collectives will never finish. The driver says so at once. */
        CUresult cr = CUDA_SUCCESS;
        uint64_t seq = 0;
        pthread_mutex_lock(&comm->lock);
        for (struct sn_op *op = comm->pending; op && cr == CUDA_SUCCESS; op = op->next_pending) {
            CUresult q = drv.stream_query(op->stream);
            if (q != CUDA_SUCCESS && q != CUDA_ERROR_NOT_READY) {
                cr = q;
                seq = op->seq;
            }
        }
        pthread_mutex_unlock(&comm->lock);
        if (cr != CUDA_SUCCESS) {
            say("simnccl: ncclCommDestroy: rank %d: the stream of collective #%" PRIu64 " failed with CUDA error %d; "
                "destroying without waiting",
                comm->rank, seq, (int)cr);
            res = ncclUnhandledCudaError;
            break;
        }
        if (now_ns() >= deadline) {
            say("simnccl: ncclCommDestroy: rank %d: %" PRIu64 " collective(s) still queued on their streams after %u ms; "
                "destroying anyway",
                comm->rank, issued - atomic_load(&comm->finished), 2 * tmo);
            break;
        }
        sleep_ns(200000);
    }
    int st = SN_JOINED;
    atomic_compare_exchange_strong(&comm->ctl->rank[comm->rank].state, &st, SN_DESTROYED);
    LOG("simnccl: rank %d: communicator %s destroyed", comm->rank, comm->name);
    comm_unref(comm);
    return res;
}

EXPORT ncclResult_t ncclCommAbort(ncclComm_t comm)
{
    cfg();
    if (!comm)
        return ncclSuccess;
    if (!comm_unlist(comm)) {
        say("simnccl: ncclCommAbort: comm %p is not a live communicator", (void *)comm);
        return ncclInvalidArgument;
    }
    atomic_store(&comm->aborted, 1);
    int32_t st = atomic_load(&comm->ctl->rank[comm->rank].state);
    if (st == SN_JOINED || st == SN_FAILED)
        atomic_store(&comm->ctl->rank[comm->rank].state, SN_ABORTED);
    /* Staging names that a blocked collective may leave behind. */
    pthread_mutex_lock(&comm->lock);
    uint64_t hi = comm->issued;
    pthread_mutex_unlock(&comm->lock);
    for (uint64_t s = hi > 2 * SN_SLOTS ? hi - 2 * SN_SLOTS : 1; s <= hi; s++) {
        char name[96];
        stage_name(comm, s, name, sizeof name);
        shm_unlink(name);
    }
    LOG("simnccl: rank %d: communicator %s aborted", comm->rank, comm->name);
    comm_unref(comm); /* queued work holds its own references */
    return ncclSuccess;
}

EXPORT ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *asyncError)
{
    ncclResult_t rc = check_comm(comm, "ncclCommGetAsyncError");
    if (rc != ncclSuccess)
        return rc;
    if (!asyncError)
        return ncclInvalidArgument;
    *asyncError = (ncclResult_t)atomic_load(&comm->error);
    return ncclSuccess;
}

EXPORT ncclResult_t ncclCommCount(const ncclComm_t comm, int *count)
{
    ncclResult_t rc = check_comm(comm, "ncclCommCount");
    if (rc != ncclSuccess)
        return rc;
    if (!count)
        return ncclInvalidArgument;
    *count = comm->nranks;
    return ncclSuccess;
}

EXPORT ncclResult_t ncclCommUserRank(const ncclComm_t comm, int *rank)
{
    ncclResult_t rc = check_comm(comm, "ncclCommUserRank");
    if (rc != ncclSuccess)
        return rc;
    if (!rank)
        return ncclInvalidArgument;
    *rank = comm->rank;
    return ncclSuccess;
}

EXPORT ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int *device)
{
    ncclResult_t rc = check_comm(comm, "ncclCommCuDevice");
    if (rc != ncclSuccess)
        return rc;
    if (!device)
        return ncclInvalidArgument;
    *device = comm->dev;
    return ncclSuccess;
}

EXPORT ncclResult_t ncclCommRegister(const ncclComm_t comm, void *buff, size_t size, void **handle)
{
    ncclResult_t rc = check_comm(comm, "ncclCommRegister");
    if (rc != ncclSuccess)
        return rc;
    if (!handle || size == 0)
        return ncclInvalidArgument;
    if (!drv_ready())
        return ncclUnhandledCudaError;
    if ((rc = check_buffer(comm, "ncclCommRegister", "buff", buff, size)) != ncclSuccess)
        return rc;
    struct sn_reg *r = calloc(1, sizeof *r);
    if (!r)
        return ncclSystemError;
    r->magic = SN_REG_MAGIC;
    r->buff = buff;
    r->size = size;
    pthread_mutex_lock(&comm->lock);
    r->next = comm->regs;
    comm->regs = r;
    pthread_mutex_unlock(&comm->lock);
    *handle = r;
    LOG("simnccl: rank %d: registered %p, %zu bytes", comm->rank, buff, size);
    return ncclSuccess;
}

EXPORT ncclResult_t ncclCommDeregister(const ncclComm_t comm, void *handle)
{
    ncclResult_t rc = check_comm(comm, "ncclCommDeregister");
    if (rc != ncclSuccess)
        return rc;
    struct sn_reg *found = NULL;
    pthread_mutex_lock(&comm->lock);
    for (struct sn_reg **pp = &comm->regs; *pp; pp = &(*pp)->next)
        if (*pp == handle) {
            found = *pp;
            *pp = found->next;
            break;
        }
    pthread_mutex_unlock(&comm->lock);
    if (!found) {
        say("simnccl: rank %d: ncclCommDeregister: handle %p is not a registration of this communicator", comm->rank,
            handle);
        return ncclInvalidArgument;
    }
    found->magic = 0;
    free(found);
    return ncclSuccess;
}

EXPORT ncclResult_t ncclAllGather(const void *sendbuff, void *recvbuff, size_t sendcount, ncclDataType_t datatype,
                                  ncclComm_t comm, cudaStream_t stream)
{
    return collective(SN_ALLGATHER, "ncclAllGather", sendbuff, recvbuff, sendcount, datatype, 0, comm, stream);
}

EXPORT ncclResult_t ncclBroadcast(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
                                  int root, ncclComm_t comm, cudaStream_t stream)
{
    return collective(SN_BROADCAST, "ncclBroadcast", sendbuff, recvbuff, count, datatype, root, comm, stream);
}

EXPORT ncclResult_t ncclBcast(void *buff, size_t count, ncclDataType_t datatype, int root, ncclComm_t comm,
                              cudaStream_t stream)
{
    return collective(SN_BROADCAST, "ncclBcast", buff, buff, count, datatype, root, comm, stream);
}

EXPORT ncclResult_t ncclGroupStart(void)
{
    cfg();
    group_depth++;
    return ncclSuccess;
}

EXPORT ncclResult_t ncclGroupEnd(void)
{
    if (group_depth <= 0) {
        say("simnccl: ncclGroupEnd: not in a group call");
        return ncclInvalidUsage;
    }
    if (--group_depth > 0)
        return ncclSuccess;
    ncclResult_t first = ncclSuccess;
    struct sn_op *op = group_head;
    group_head = group_tail = NULL;
    while (op) {
        struct sn_op *next = op->next;
        op->next = NULL;
        ncclResult_t rc;
        if (atomic_load(&op->comm->error) != ncclSuccess) {
            rc = (ncclResult_t)atomic_load(&op->comm->error);
            op_unref(op);
        } else {
            rc = op_launch(op);
        }
        if (first == ncclSuccess)
            first = rc;
        op = next;
    }
    return first;
}

/* ---- the rest of the API torch links against: present, so a program that
 * links them loads, and refusing, loudly, if called ---- */

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"

static ncclResult_t unsupported(const char *fn)
{
    say("simnccl: %s is not simulated (tests/simdev/simnccl.c models all-gather and broadcast only)", fn);
    return ncclInvalidUsage;
}

#define UNSUPPORTED return unsupported(__func__)

EXPORT ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
                                  ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) { UNSUPPORTED; }
EXPORT ncclResult_t ncclReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
                               ncclRedOp_t op, int root, ncclComm_t comm, cudaStream_t stream) { UNSUPPORTED; }
EXPORT ncclResult_t ncclReduceScatter(const void *sendbuff, void *recvbuff, size_t recvcount, ncclDataType_t datatype,
                                      ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) { UNSUPPORTED; }
EXPORT ncclResult_t ncclAlltoAll(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
                                 ncclComm_t comm, cudaStream_t stream) { UNSUPPORTED; }
EXPORT ncclResult_t ncclGather(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype, int root,
                               ncclComm_t comm, cudaStream_t stream) { UNSUPPORTED; }
EXPORT ncclResult_t ncclScatter(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype, int root,
                                ncclComm_t comm, cudaStream_t stream) { UNSUPPORTED; }
EXPORT ncclResult_t ncclSend(const void *sendbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                             cudaStream_t stream) { UNSUPPORTED; }
EXPORT ncclResult_t ncclRecv(void *recvbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                             cudaStream_t stream) { UNSUPPORTED; }
EXPORT ncclResult_t ncclCommInitAll(ncclComm_t *comm, int ndev, const int *devlist) { UNSUPPORTED; }
EXPORT ncclResult_t ncclCommInitRankScalable(ncclComm_t *newcomm, int nranks, int myrank, int nId,
                                             ncclUniqueId *commIds, ncclConfig_t *config) { UNSUPPORTED; }
EXPORT ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int key, ncclComm_t *newcomm, ncclConfig_t *config)
{
    UNSUPPORTED;
}
EXPORT ncclResult_t ncclCommShrink(ncclComm_t comm, int *excludeRanksList, int excludeRanksCount, ncclComm_t *newcomm,
                                   ncclConfig_t *config, int shrinkFlags) { UNSUPPORTED; }
EXPORT ncclResult_t ncclCommRevoke(ncclComm_t comm, int revokeFlags) { UNSUPPORTED; }
EXPORT ncclResult_t ncclCommWindowRegister(ncclComm_t comm, void *buff, size_t size, ncclWindow_t *win, int winFlags)
{
    UNSUPPORTED;
}
EXPORT ncclResult_t ncclCommWindowDeregister(ncclComm_t comm, ncclWindow_t win) { UNSUPPORTED; }
EXPORT ncclResult_t ncclGroupSimulateEnd(ncclSimInfo_t *simInfo) { UNSUPPORTED; }
EXPORT ncclResult_t ncclMemAlloc(void **ptr, size_t size) { UNSUPPORTED; }
EXPORT ncclResult_t ncclMemFree(void *ptr) { UNSUPPORTED; }
EXPORT ncclResult_t ncclRedOpCreatePreMulSum(ncclRedOp_t *op, void *scalar, ncclDataType_t datatype,
                                             ncclScalarResidence_t residence, ncclComm_t comm) { UNSUPPORTED; }
EXPORT ncclResult_t ncclRedOpDestroy(ncclRedOp_t op, ncclComm_t comm) { UNSUPPORTED; }
/* Device-side API (nccl_device.h, not in nccl.h): declared loosely, refused. */
EXPORT ncclResult_t ncclDevCommCreate(void) { UNSUPPORTED; }
EXPORT ncclResult_t ncclDevCommDestroy(void) { UNSUPPORTED; }

#pragma GCC diagnostic pop
