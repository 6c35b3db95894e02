/* Tests of the simulated NCCL (libnccl.so.2 from simnccl.c), multi-process.
 *
 * Each test forks one child per rank. The parent never touches the simulated
 * driver (it only makes the unique id and sets simnccl knobs, which children
 * inherit); each child makes its own context, as a training process would.
 * A child reports failure through its exit status and a line on stderr; the
 * parent bounds every child in time and kills the lot if one hangs. */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cuda.h>
#include <nccl.h>

#include "simdev.h"
#include "simnccl.h"

/* ---- in the children ---- */

static int my_rank = -1;

static int saved_stderr = -1;
static FILE *capture_file;

static void die(int line, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void die(int line, const char *fmt, ...)
{
    if (saved_stderr >= 0) { /* give back stderr, with what was captured */
        dup2(saved_stderr, 2);
        char text[4096];
        rewind(capture_file);
        size_t n = fread(text, 1, sizeof text, capture_file);
        if (n)
            (void)!write(2, text, n);
    }
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    dprintf(2, "test_simnccl.c:%d: rank %d: %s\n", line, my_rank, buf);
    _exit(1);
}

#define REQ(cond, ...)                  \
    do {                                \
        if (!(cond))                    \
            die(__LINE__, __VA_ARGS__); \
    } while (0)
#define CU(call)                                                         \
    do {                                                                 \
        CUresult r_ = (call);                                            \
        REQ(r_ == CUDA_SUCCESS, "%s failed with CUDA error %d", #call, r_); \
    } while (0)
#define NC(call)                                                                           \
    do {                                                                                   \
        ncclResult_t r_ = (call);                                                          \
        REQ(r_ == ncclSuccess, "%s failed: %d (%s)", #call, r_, ncclGetErrorString(r_)); \
    } while (0)
#define NC_ERR(call, err)                                                                         \
    do {                                                                                          \
        ncclResult_t r_ = (call);                                                                 \
        REQ(r_ == (err), "%s returned %d (%s), expected %s", #call, r_, ncclGetErrorString(r_), #err); \
    } while (0)

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void child_context(void)
{
    CUdevice dev;
    CUcontext ctx;
    CU(cuInit(0));
    CU(cuDeviceGet(&dev, 0));
    CU(cuDevicePrimaryCtxRetain(&ctx, dev));
    CU(cuCtxSetCurrent(ctx));
}

static void *dev_alloc(size_t n)
{
    CUdeviceptr p;
    CU(cuMemAlloc(&p, n ? n : 1));
    return (void *)(uintptr_t)p;
}

static CUstream new_stream(void)
{
    CUstream s;
    CU(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    return s;
}

/* stderr of the child goes to a file between capture_begin and capture_end. */

static void capture_begin(void)
{
    capture_file = tmpfile();
    REQ(capture_file, "tmpfile: %s", strerror(errno));
    saved_stderr = dup(2);
    dup2(fileno(capture_file), 2);
}

static char *capture_end(void)
{
    static char text[8192];
    dup2(saved_stderr, 2);
    close(saved_stderr);
    saved_stderr = -1;
    size_t n = 0;
    rewind(capture_file);
    n = fread(text, 1, sizeof text - 1, capture_file);
    text[n] = '\0';
    fclose(capture_file);
    fputs(text, stderr); /* keep it visible in the test log */
    return text;
}

#define REQ_HAS(text, needle) REQ(strstr((text), (needle)), "stderr lacks \"%s\"; it was:\n%s", (needle), (text))

/* A byte pattern that differs by rank, element and collective. */
static unsigned char pat(int rank, size_t i, unsigned salt)
{
    uint32_t x = (uint32_t)(rank + 1) * 2654435761u ^ (uint32_t)i * 40503u ^ salt * 97u;
    x ^= x >> 13;
    return (unsigned char)(x * 31u + (x >> 8));
}

/* ---- in the parent ---- */

typedef void (*rank_fn)(int rank, int nranks, ncclUniqueId id, void *arg);

struct job {
    int nranks;
    int expect[8];  /* exit status per rank (0 unless set) */
    int skip_rank;  /* -1, or a rank that is never started */
    double bound_s; /* every child must be done by then */
};

static void run(struct job *j, rank_fn fn, void *arg, ncclUniqueId *idp)
{
    ncclUniqueId id;
    cr_assert_eq(ncclGetUniqueId(&id), ncclSuccess);
    if (idp)
        *idp = id;
    pid_t pids[8] = {0};
    for (int r = 0; r < j->nranks; r++) {
        if (r == j->skip_rank)
            continue;
        pid_t p = fork();
        cr_assert_neq(p, -1, "fork: %s", strerror(errno));
        if (p == 0) {
            my_rank = r;
            alarm((unsigned)j->bound_s + 5); /* a last resort: the parent kills first */
            child_context();
            fn(r, j->nranks, id, arg);
            _exit(0);
        }
        pids[r] = p;
    }
    double deadline = now_ms() + j->bound_s * 1e3;
    int status[8] = {0};
    bool done[8] = {false};
    int left = 0;
    for (int r = 0; r < j->nranks; r++)
        left += pids[r] != 0;
    while (left > 0 && now_ms() < deadline) {
        for (int r = 0; r < j->nranks; r++) {
            if (!pids[r] || done[r])
                continue;
            if (waitpid(pids[r], &status[r], WNOHANG) == pids[r]) {
                done[r] = true;
                left--;
            }
        }
        usleep(2000);
    }
    for (int r = 0; r < j->nranks; r++)
        if (pids[r] && !done[r]) {
            kill(pids[r], SIGKILL);
            waitpid(pids[r], &status[r], 0);
        }
    for (int r = 0; r < j->nranks; r++) {
        if (!pids[r])
            continue;
        cr_expect(done[r], "rank %d did not finish within %.1f s (a hang)", r, j->bound_s);
        if (!done[r])
            continue;
        cr_expect(WIFEXITED(status[r]), "rank %d was killed by signal %d", r,
                  WIFSIGNALED(status[r]) ? WTERMSIG(status[r]) : 0);
        if (WIFEXITED(status[r]))
            cr_expect_eq(WEXITSTATUS(status[r]), j->expect[r], "rank %d exited with %d, expected %d", r,
                         WEXITSTATUS(status[r]), j->expect[r]);
    }
}

/* No shared-memory object of the communicator is left in /dev/shm. */
static void expect_no_leftovers(const ncclUniqueId *id)
{
    char prefix[128];
    cr_assert_eq(simnccl_shm_prefix(id, prefix, sizeof prefix), 0);
    DIR *d = opendir("/dev/shm");
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)))
        cr_expect(strncmp(e->d_name, prefix, strlen(prefix)) != 0, "left in /dev/shm: %s", e->d_name);
    closedir(d);
}

static ncclComm_t init(int rank, int nranks, ncclUniqueId id)
{
    ncclComm_t c;
    NC(ncclCommInitRank(&c, nranks, id, rank));
    return c;
}

/* ---- all-gather, bit-exact ---- */

static const ncclDataType_t types[] = {ncclInt8, ncclBfloat16, ncclFloat32, ncclFloat64};
static const size_t counts[] = {1, 3, 1000, 4099, 65536 + 7};

static size_t tsize(ncclDataType_t t)
{
    return t == ncclInt8 ? 1 : t == ncclBfloat16 ? 2 : t == ncclFloat32 ? 4 : 8;
}

static void gather_all(int rank, int nranks, ncclUniqueId id, void *arg)
{
    (void)arg;
    ncclComm_t c = init(rank, nranks, id);
    int n = -1, me = -1;
    NC(ncclCommCount(c, &n));
    NC(ncclCommUserRank(c, &me));
    REQ(n == nranks && me == rank, "count %d rank %d", n, me);
    CUstream s = new_stream();
    unsigned salt = 0;
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++)
        for (size_t ci = 0; ci < sizeof counts / sizeof counts[0]; ci++)
            for (int in_place = 0; in_place < 2; in_place++, salt++) {
                size_t bytes = counts[ci] * tsize(types[ti]), total = bytes * (size_t)nranks;
                unsigned char *recv = dev_alloc(total), *host = malloc(total);
                unsigned char *send = in_place ? recv + (size_t)rank * bytes : dev_alloc(bytes);
                for (size_t i = 0; i < bytes; i++)
                    host[i] = pat(rank, i, salt);
                CU(cuMemsetD8Async((CUdeviceptr)(uintptr_t)recv, 0x5A, total, s));
                CU(cuMemcpyHtoDAsync((CUdeviceptr)(uintptr_t)send, host, bytes, s));
                NC(ncclAllGather(send, recv, counts[ci], types[ti], c, s));
                CU(cuStreamSynchronize(s));
                ncclResult_t ae;
                NC(ncclCommGetAsyncError(c, &ae));
                REQ(ae == ncclSuccess, "async error %d", ae);
                CU(cuMemcpyDtoH(host, (CUdeviceptr)(uintptr_t)recv, total));
                for (int q = 0; q < nranks; q++)
                    for (size_t i = 0; i < bytes; i++)
                        REQ(host[(size_t)q * bytes + i] == pat(q, i, salt),
                            "type %d count %zu in_place %d: byte %zu of rank %d's slice differs", types[ti],
                            counts[ci], in_place, i, q);
                if (!in_place)
                    CU(cuMemFree((CUdeviceptr)(uintptr_t)send));
                CU(cuMemFree((CUdeviceptr)(uintptr_t)recv));
                free(host);
            }
    REQ(simnccl_outstanding() == 0, "%lu collectives outstanding", simnccl_outstanding());
    NC(ncclCommDestroy(c));
}

static void gather_test(int nranks)
{
    struct job j = {.nranks = nranks, .skip_rank = -1, .bound_s = 20};
    ncclUniqueId id;
    run(&j, gather_all, NULL, &id);
    expect_no_leftovers(&id);
}

Test(simnccl, allgather_p1, .timeout = 30) { gather_test(1); }
Test(simnccl, allgather_p2, .timeout = 30) { gather_test(2); }
Test(simnccl, allgather_p3, .timeout = 30) { gather_test(3); }
Test(simnccl, allgather_p4, .timeout = 30) { gather_test(4); }

/* ---- broadcast ---- */

static void bcast_rank(int rank, int nranks, ncclUniqueId id, void *arg)
{
    (void)arg;
    ncclComm_t c = init(rank, nranks, id);
    CUstream s = new_stream();
    size_t n = 10007;
    unsigned char *buf = dev_alloc(n), *host = malloc(n);
    for (size_t i = 0; i < n; i++)
        host[i] = pat(rank, i, 7);
    CU(cuMemcpyHtoD((CUdeviceptr)(uintptr_t)buf, host, n));
    NC(ncclBcast(buf, n, ncclUint8, 1, c, s)); /* in place */
    CU(cuStreamSynchronize(s));
    CU(cuMemcpyDtoH(host, (CUdeviceptr)(uintptr_t)buf, n));
    for (size_t i = 0; i < n; i++)
        REQ(host[i] == pat(1, i, 7), "byte %zu not root's", i);
    NC(ncclCommDestroy(c));
}

Test(simnccl, broadcast, .timeout = 30)
{
    struct job j = {.nranks = 3, .skip_rank = -1, .bound_s = 15};
    run(&j, bcast_rank, NULL, NULL);
}

/* ---- stream order ---- */

static void order_rank(int rank, int nranks, ncclUniqueId id, void *arg)
{
    (void)arg;
    ncclComm_t c = init(rank, nranks, id);
    CUstream s = new_stream();
    size_t count = 4096, total = count * (size_t)nranks;
    unsigned char *recv = dev_alloc(total), *host = malloc(total);
    CU(cuMemsetD8((CUdeviceptr)(uintptr_t)recv, 0x11, total));
    for (size_t i = 0; i < count; i++)
        host[i] = pat(rank, i, 3);
    /* Every operation of the stream now starts 100 ms late: the collective
     * (five operations) cannot be done for half a second. */
    REQ(simdev_stream_set_delay_us(s, 100000) == 0, "set delay");
    double t0 = now_ms();
    /* The send data is written by earlier stream work: the collective must see it. */
    CU(cuMemcpyHtoDAsync((CUdeviceptr)(uintptr_t)(recv + (size_t)rank * count), host, count, s));
    NC(ncclAllGather(recv + (size_t)rank * count, recv, count, ncclUint8, c, s));
    double issue_ms = now_ms() - t0;
    REQ(issue_ms < 80, "ncclAllGather took %.1f ms to return: it must only enqueue", issue_ms);
    REQ(cuStreamQuery(s) == CUDA_ERROR_NOT_READY, "the stream is already idle");
    usleep(50000);
    for (size_t i = 0; i < total; i++)
        REQ(recv[i] == 0x11, "byte %zu changed before the stream reached the collective", i);
    CU(cuStreamSynchronize(s));
    for (int q = 0; q < nranks; q++)
        for (size_t i = 0; i < count; i++)
            REQ(recv[(size_t)q * count + i] == pat(q, i, 3), "byte %zu of rank %d wrong after sync", i, q);
    NC(ncclCommDestroy(c));
}

Test(simnccl, stream_order, .timeout = 30)
{
    struct job j = {.nranks = 2, .skip_rank = -1, .bound_s = 15};
    run(&j, order_rank, NULL, NULL);
}

/* ---- group ---- */

static void group_rank(int rank, int nranks, ncclUniqueId id, void *arg)
{
    (void)arg;
    ncclComm_t c = init(rank, nranks, id);
    CUstream s1 = new_stream(), s2 = new_stream();
    size_t count = 333;
    unsigned char *a = dev_alloc(count * (size_t)nranks), *b = dev_alloc(2 * count * (size_t)nranks);
    for (size_t i = 0; i < count; i++)
        a[(size_t)rank * count + i] = pat(rank, i, 1);
    for (size_t i = 0; i < 2 * count; i++)
        b[(size_t)rank * 2 * count + i] = pat(rank, i, 2);
    NC_ERR(ncclGroupEnd(), ncclInvalidUsage);
    unsigned long before = simdev_calls("cuLaunchHostFunc");
    NC(ncclGroupStart());
    NC(ncclAllGather(a + (size_t)rank * count, a, count, ncclUint8, c, s1));
    NC(ncclGroupStart()); /* nested: launched at the outermost end */
    NC(ncclAllGather(b + (size_t)rank * 2 * count, b, count, ncclFloat16, c, s2));
    NC(ncclGroupEnd());
    REQ(simdev_calls("cuLaunchHostFunc") == before, "stream work was enqueued before the outermost ncclGroupEnd");
    NC(ncclGroupEnd());
    REQ(simdev_calls("cuLaunchHostFunc") == before + 6, "%lu host functions enqueued, expected 6",
        simdev_calls("cuLaunchHostFunc") - before);
    CU(cuStreamSynchronize(s1));
    CU(cuStreamSynchronize(s2));
    for (int q = 0; q < nranks; q++) {
        for (size_t i = 0; i < count; i++)
            REQ(a[(size_t)q * count + i] == pat(q, i, 1), "a: byte %zu of rank %d", i, q);
        for (size_t i = 0; i < 2 * count; i++)
            REQ(b[(size_t)q * 2 * count + i] == pat(q, i, 2), "b: byte %zu of rank %d", i, q);
    }
    NC(ncclCommDestroy(c));
}

Test(simnccl, group, .timeout = 30)
{
    struct job j = {.nranks = 2, .skip_rank = -1, .bound_s = 15};
    run(&j, group_rank, NULL, NULL);
}

/* ---- bootstrap timeout ---- */

static void lonely_rank(int rank, int nranks, ncclUniqueId id, void *arg)
{
    (void)arg;
    ncclComm_t c = (ncclComm_t)0x1;
    capture_begin();
    double t0 = now_ms();
    ncclResult_t rc = ncclCommInitRank(&c, nranks, id, rank);
    double ms = now_ms() - t0;
    char *err = capture_end();
    REQ(rc == ncclSystemError, "ncclCommInitRank returned %d, expected ncclSystemError", rc);
    REQ(c == NULL, "comm not cleared");
    REQ(ms >= 380 && ms < 3000, "gave up after %.0f ms, the timeout is 400 ms", ms);
    REQ_HAS(err, "rank(s) 2 never joined");
}

Test(simnccl, init_timeout, .timeout = 30)
{
    simnccl_set_timeout_ms(400);
    struct job j = {.nranks = 3, .skip_rank = 2, .bound_s = 10};
    ncclUniqueId id;
    run(&j, lonely_rank, NULL, &id);
    expect_no_leftovers(&id);
}

/* ---- a rank exits in the middle of a collective ---- */

static void exiting_rank(int rank, int nranks, ncclUniqueId id, void *arg)
{
    (void)arg;
    ncclComm_t c = init(rank, nranks, id);
    CUstream s = new_stream();
    size_t count = 1000, total = count * (size_t)nranks;
    unsigned char *recv = dev_alloc(total);
    for (int k = 1; k <= 3; k++) {
        for (size_t i = 0; i < count; i++)
            recv[(size_t)rank * count + i] = pat(rank, i, (unsigned)k);
        if (k == 2)
            capture_begin();
        double t0 = now_ms();
        ncclResult_t rc = ncclAllGather(recv + (size_t)rank * count, recv, count, ncclUint8, c, s);
        if (k == 3) {
            /* The communicator is broken: later calls say so at once. */
            REQ(rc == ncclRemoteError, "collective after the failure returned %d", rc);
            break;
        }
        REQ(rc == ncclSuccess, "ncclAllGather #%d returned %d", k, rc);
        CU(cuStreamSynchronize(s)); /* rank 1 dies in here, in #2 */
        double ms = now_ms() - t0;
        ncclResult_t ae;
        NC(ncclCommGetAsyncError(c, &ae));
        if (k == 1) {
            REQ(ae == ncclSuccess, "first collective failed: %d", ae);
            continue;
        }
        char *err = capture_end();
        REQ(ae == ncclRemoteError, "async error %d, expected ncclRemoteError", ae);
        REQ(ms < 2000, "the failure took %.0f ms to show (the timeout is 5000 ms; a dead rank is seen at once)", ms);
        REQ_HAS(err, "rank 1 (pid");
        REQ_HAS(err, "exited");
        /* The data is garbage, not a plausible stale copy. */
        for (size_t i = 0; i < total; i++)
            REQ(recv[i] == 0xA5, "byte %zu is %#x, not the poison", i, recv[i]);
    }
    NC(ncclCommAbort(c));
}

Test(simnccl, rank_exits_mid_collective, .timeout = 30)
{
    simnccl_set_timeout_ms(5000);
    cr_assert_eq(simnccl_fail("exit_in_allgather:1:2"), 0);
    cr_assert_eq(simnccl_fail("exit_in_nothing:1:2"), -1);
    struct job j = {.nranks = 3, .skip_rank = -1, .bound_s = 10, .expect = {0, SIMNCCL_EXIT_STATUS, 0}};
    ncclUniqueId id;
    run(&j, exiting_rank, NULL, &id);
    expect_no_leftovers(&id);
}

/* ---- a peer destroys its communicator instead of joining the collective ---- */

static void leaving_rank(int rank, int nranks, ncclUniqueId id, void *arg)
{
    (void)arg;
    ncclComm_t c = init(rank, nranks, id);
    if (rank == 1) {
        usleep(100000);
        NC(ncclCommDestroy(c));
        return;
    }
    CUstream s = new_stream();
    unsigned char *recv = dev_alloc(64 * (size_t)nranks);
    capture_begin();
    NC(ncclAllGather(recv, recv, 64, ncclUint8, c, s));
    CU(cuStreamSynchronize(s));
    char *err = capture_end();
    ncclResult_t ae;
    NC(ncclCommGetAsyncError(c, &ae));
    REQ(ae == ncclRemoteError, "async error %d", ae);
    REQ_HAS(err, "rank 1 destroyed its communicator");
    NC(ncclCommDestroy(c));
}

Test(simnccl, peer_destroys, .timeout = 30)
{
    struct job j = {.nranks = 2, .skip_rank = -1, .bound_s = 10};
    run(&j, leaving_rank, NULL, NULL);
}

/* ---- abort while the collective is blocked ---- */

static void abort_rank(int rank, int nranks, ncclUniqueId id, void *arg)
{
    (void)arg;
    ncclComm_t c = init(rank, nranks, id);
    if (rank == 2) {
        usleep(1500000); /* never joins the collective; alive throughout */
        NC(ncclCommDestroy(c));
        return;
    }
    CUstream s = new_stream();
    unsigned char *recv = dev_alloc(128 * (size_t)nranks);
    double t0 = now_ms();
    if (rank == 1)
        capture_begin();
    NC(ncclAllGather(recv + (size_t)rank * 128, recv, 128, ncclUint8, c, s));
    if (rank == 1) {
        /* Rank 0 arrived, then aborts: this rank must not wait for rank 2 any longer. */
        CU(cuStreamSynchronize(s));
        double ms = now_ms() - t0;
        char *err = capture_end();
        ncclResult_t ae;
        NC(ncclCommGetAsyncError(c, &ae));
        REQ(ae == ncclRemoteError, "async error %d", ae);
        REQ(ms < 1200, "the peer's abort took %.0f ms to show", ms);
        REQ_HAS(err, "rank 0 aborted its communicator");
        NC(ncclCommAbort(c));
        return;
    }
    usleep(200000);
    REQ(cuStreamQuery(s) == CUDA_ERROR_NOT_READY, "the collective finished without its peer");
    t0 = now_ms();
    NC(ncclCommAbort(c));
    double abort_ms = now_ms() - t0;
    CU(cuStreamSynchronize(s));
    double sync_ms = now_ms() - t0;
    REQ(abort_ms < 100, "ncclCommAbort took %.1f ms", abort_ms);
    REQ(sync_ms < 500, "the stream took %.0f ms to drain after the abort", sync_ms);
    REQ(simnccl_outstanding() == 0, "%lu outstanding", simnccl_outstanding());
    ncclResult_t ae;
    NC_ERR(ncclCommGetAsyncError(c, &ae), ncclInvalidArgument); /* an aborted comm is gone */
}

Test(simnccl, abort_unblocks, .timeout = 30)
{
    simnccl_set_timeout_ms(20000);
    struct job j = {.nranks = 3, .skip_rank = -1, .bound_s = 10};
    ncclUniqueId id;
    run(&j, abort_rank, NULL, &id);
    expect_no_leftovers(&id);
}

/* ---- the gather writes past the mapped memory: the context faults ---- */

static void fault_rank(int rank, int nranks, ncclUniqueId id, void *arg)
{
    (void)arg;
    ncclComm_t c = init(rank, nranks, id);
    CUstream s = new_stream();
    size_t gran = 2u << 20, count = gran / 2 + 4096, total = count * (size_t)nranks;
    unsigned char *recv;
    if (rank == 0) {
        /* Two granules of VA, only the first mapped: the gather's last 8 KiB land on nothing. */
        CUdeviceptr va;
        CUmemGenericAllocationHandle h;
        CUmemAllocationProp prop;
        memset(&prop, 0, sizeof prop);
        prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
        prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        CUmemAccessDesc rw;
        memset(&rw, 0, sizeof rw);
        rw.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        rw.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
        CU(cuMemAddressReserve(&va, 2 * gran, 0, 0, 0));
        CU(cuMemCreate(&h, gran, &prop, 0));
        CU(cuMemMap(va, gran, 0, h, 0));
        CU(cuMemSetAccess(va, gran, &rw, 1));
        recv = (unsigned char *)(uintptr_t)va;
    } else {
        recv = dev_alloc(total);
    }
    for (size_t i = 0; i < count; i++)
        recv[(size_t)rank * count + i] = pat(rank, i, 9);
    NC(ncclAllGather(recv + (size_t)rank * count, recv, count, ncclUint8, c, s));
    CUresult rc = cuStreamSynchronize(s);
    if (rank == 0) {
        REQ(rc == CUDA_ERROR_ILLEGAL_ADDRESS, "cuStreamSynchronize returned %d, expected the sticky fault", rc);
        REQ(simdev_faulted(), "the context did not fault");
        double t0 = now_ms();
        NC_ERR(ncclCommDestroy(c), ncclUnhandledCudaError);
        REQ(now_ms() - t0 < 1000, "ncclCommDestroy on a faulted context took %.0f ms", now_ms() - t0);
        return;
    }
    /* The faulting rank had delivered its data before its own write faulted. */
    REQ(rc == CUDA_SUCCESS, "cuStreamSynchronize %d", rc);
    for (int q = 0; q < nranks; q++)
        for (size_t i = 0; i < count; i++)
            REQ(recv[(size_t)q * count + i] == pat(q, i, 9), "byte %zu of rank %d", i, q);
    NC(ncclCommDestroy(c));
}

Test(simnccl, gather_into_unmapped_memory_faults, .timeout = 30)
{
    struct job j = {.nranks = 2, .skip_rank = -1, .bound_s = 10};
    run(&j, fault_rank, NULL, NULL);
}

/* ---- mismatched collectives ---- */

static void mismatch_rank(int rank, int nranks, ncclUniqueId id, void *arg)
{
    int which = *(int *)arg;
    ncclComm_t c = init(rank, nranks, id);
    CUstream s = new_stream();
    unsigned char *recv = dev_alloc(8192 * (size_t)nranks);
    size_t count = which == 0 && rank == 1 ? 101 : 100;
    ncclDataType_t t = which == 1 && rank == 2 ? ncclFloat16 : ncclInt8;
    capture_begin();
    NC(ncclAllGather(recv, recv + 1000, 1, ncclInt8, c, s)); /* #1 agrees */
    NC(ncclAllGather(recv + (size_t)rank * count * (t == ncclInt8 ? 1 : 2), recv, count, t, c, s));
    CU(cuStreamSynchronize(s));
    char *err = capture_end();
    ncclResult_t ae;
    NC(ncclCommGetAsyncError(c, &ae));
    if (which == 0) {
        REQ(ae == ncclInvalidUsage, "async error %d, expected ncclInvalidUsage", ae);
        REQ_HAS(err, "mismatch");
        REQ_HAS(err, rank == 1 ? "this rank called ncclAllGather(count=101" : "this rank called ncclAllGather(count=100");
        REQ_HAS(err, rank == 1 ? "rank 0 called ncclAllGather(count=100" : "rank 1 called ncclAllGather(count=101");
    } else {
        /* Every rank sees the mismatch itself, or sees a peer fail on it. */
        REQ(ae == ncclInvalidUsage || ae == ncclRemoteError, "async error %d", ae);
        REQ_HAS(err, "datatype=ncclFloat16");
        REQ_HAS(err, "datatype=ncclInt8");
    }
    NC_ERR(ncclAllGather(recv, recv, 1, ncclInt8, c, s), ae);
    NC(ncclCommAbort(c));
}

Test(simnccl, mismatch_count, .timeout = 30)
{
    int which = 0;
    struct job j = {.nranks = 2, .skip_rank = -1, .bound_s = 10};
    run(&j, mismatch_rank, &which, NULL);
}

Test(simnccl, mismatch_datatype, .timeout = 30)
{
    int which = 1;
    struct job j = {.nranks = 3, .skip_rank = -1, .bound_s = 10};
    run(&j, mismatch_rank, &which, NULL);
}

/* ---- arguments, version, registration (one rank) ---- */

static void args_rank(int rank, int nranks, ncclUniqueId id, void *arg)
{
    (void)arg;
    int v = 0;
    NC(ncclGetVersion(&v));
    REQ(v == NCCL_VERSION_CODE, "version %d", v);
    REQ(strcmp(ncclGetErrorString(ncclSuccess), "no error") == 0, "error string");
    ncclComm_t c = init(rank, nranks, id);
    CUstream s = new_stream();
    unsigned char *d = dev_alloc(4096);
    char host[64];
    NC_ERR(ncclAllGather(NULL, d, 8, ncclInt8, c, s), ncclInvalidArgument);
    NC_ERR(ncclAllGather(host, d, 8, ncclInt8, c, s), ncclInvalidArgument);
    NC_ERR(ncclAllGather(d, d + 1, 8, ncclInt8, c, s), ncclInvalidArgument); /* overlap, not in place */
    NC_ERR(ncclAllGather(d, d + 64, 8, (ncclDataType_t)99, c, s), ncclInvalidArgument);
    NC_ERR(ncclAllGather(d, d + 64, 8, ncclInt8, NULL, s), ncclInvalidArgument);
    NC_ERR(ncclBroadcast(d, d, 8, ncclInt8, 5, c, s), ncclInvalidArgument);
    NC(ncclAllGather(d, d, 0, ncclInt8, c, s)); /* count 0 takes part, moves nothing */
    void *h1 = NULL, *h2 = NULL;
    NC(ncclCommRegister(c, d, 4096, &h1));
    NC(ncclCommRegister(c, d + 2048, 1024, &h2));
    REQ(h1 && h2 && h1 != h2, "handles");
    NC_ERR(ncclCommRegister(c, host, sizeof host, &h2), ncclInvalidArgument);
    NC(ncclCommDeregister(c, h1));
    NC_ERR(ncclCommDeregister(c, h1), ncclInvalidArgument);
    CU(cuStreamSynchronize(s));
    NC(ncclCommDestroy(c)); /* frees h2 */
    NC_ERR(ncclCommDestroy(c), ncclInvalidArgument);
    ncclUniqueId bogus;
    memset(&bogus, 0, sizeof bogus);
    NC_ERR(ncclCommInitRank(&c, 1, bogus, 0), ncclInvalidArgument);
    NC_ERR(ncclCommInitRank(&c, 1, id, 1), ncclInvalidArgument);
}

Test(simnccl, arguments, .timeout = 30)
{
    struct job j = {.nranks = 1, .skip_rank = -1, .bound_s = 10};
    run(&j, args_rank, NULL, NULL);
}

/* ---- SIMNCCL_FAIL from the environment: the broadcast root dies ---- */

static void root_dies_rank(int rank, int nranks, ncclUniqueId id, void *arg)
{
    (void)arg;
    ncclComm_t c = init(rank, nranks, id);
    CUstream s = new_stream();
    unsigned char *buf = dev_alloc(4096);
    if (rank == 1)
        capture_begin();
    NC(ncclBroadcast(buf, buf, 4096, ncclUint8, 0, c, s));
    CU(cuStreamSynchronize(s)); /* rank 0 exits in here */
    char *err = capture_end();
    ncclResult_t ae;
    NC(ncclCommGetAsyncError(c, &ae));
    REQ(ae == ncclRemoteError, "async error %d", ae);
    REQ_HAS(err, "rank 0 (pid");
    REQ(strstr(ncclGetLastError(c), "rank 0 (pid"), "ncclGetLastError: %s", ncclGetLastError(c));
    NC(ncclCommAbort(c));
}

Test(simnccl, fail_from_environment, .timeout = 30)
{
    /* Read on this process's first simnccl call; the children inherit it. */
    setenv("SIMNCCL_FAIL", "exit_in_broadcast:0:1", 1);
    setenv("SIMNCCL_TIMEOUT_MS", "3000", 1);
    struct job j = {.nranks = 2, .skip_rank = -1, .bound_s = 10, .expect = {SIMNCCL_EXIT_STATUS, 0}};
    ncclUniqueId id;
    run(&j, root_dies_rank, NULL, &id);
    expect_no_leftovers(&id);
}

/* ---- a non-root rank exits in a broadcast: the others fail too ---- */

static void nonroot_dies_rank(int rank, int nranks, ncclUniqueId id, void *arg)
{
    (void)arg;
    ncclComm_t c = init(rank, nranks, id);
    CUstream s = new_stream();
    unsigned char *buf = dev_alloc(4096);
    if (rank != 2)
        capture_begin();
    NC(ncclBroadcast(buf, buf, 4096, ncclUint8, 0, c, s));
    CU(cuStreamSynchronize(s)); /* rank 2 exits in here */
    char *err = capture_end();
    ncclResult_t ae;
    NC(ncclCommGetAsyncError(c, &ae));
    REQ(ae == ncclRemoteError, "async error %d", ae);
    REQ_HAS(err, "rank 2 (pid");
    NC(ncclCommAbort(c));
}

Test(simnccl, broadcast_nonroot_exits, .timeout = 30)
{
    cr_assert_eq(simnccl_fail("exit_in_broadcast:2:1"), 0);
    struct job j = {.nranks = 3, .skip_rank = -1, .bound_s = 10, .expect = {0, 0, SIMNCCL_EXIT_STATUS}};
    ncclUniqueId id;
    run(&j, nonroot_dies_rank, NULL, &id);
    expect_no_leftovers(&id);
}

/* ---- ranks as threads of one process ---- */

#include <pthread.h>

struct thread_rank {
    int rank, nranks;
    ncclUniqueId id;
    CUcontext ctx;
    int ok;
};

static void *thread_main(void *arg)
{
    struct thread_rank *t = arg;
    ncclComm_t c;
    CUstream s;
    if (cuCtxSetCurrent(t->ctx) != CUDA_SUCCESS || ncclCommInitRank(&c, t->nranks, t->id, t->rank) != ncclSuccess ||
        cuStreamCreate(&s, CU_STREAM_NON_BLOCKING) != CUDA_SUCCESS)
        return NULL;
    size_t count = 5000;
    unsigned char *recv = dev_alloc(count * (size_t)t->nranks);
    for (size_t i = 0; i < count; i++)
        recv[(size_t)t->rank * count + i] = pat(t->rank, i, 11);
    if (ncclAllGather(recv + (size_t)t->rank * count, recv, count, ncclUint8, c, s) != ncclSuccess ||
        cuStreamSynchronize(s) != CUDA_SUCCESS)
        return NULL;
    for (int q = 0; q < t->nranks; q++)
        for (size_t i = 0; i < count; i++)
            if (recv[(size_t)q * count + i] != pat(q, i, 11))
                return NULL;
    t->ok = ncclCommDestroy(c) == ncclSuccess;
    return NULL;
}

static void threads_rank(int rank, int nranks, ncclUniqueId id, void *arg)
{
    (void)rank;
    (void)nranks;
    (void)arg;
    struct thread_rank t[3];
    pthread_t th[3];
    CUcontext ctx;
    CU(cuCtxGetCurrent(&ctx));
    for (int r = 0; r < 3; r++) {
        t[r] = (struct thread_rank){.rank = r, .nranks = 3, .id = id, .ctx = ctx};
        REQ(pthread_create(&th[r], NULL, thread_main, &t[r]) == 0, "pthread_create");
    }
    for (int r = 0; r < 3; r++) {
        pthread_join(th[r], NULL);
        REQ(t[r].ok, "thread rank %d failed", r);
    }
}

Test(simnccl, ranks_as_threads, .timeout = 30)
{
    struct job j = {.nranks = 1, .skip_rank = -1, .bound_s = 10};
    run(&j, threads_rank, NULL, NULL);
}

/* ---- SIMNCCL_FAIL corrupt_in_allgather: silent, every rank gets the flipped byte ---- */

static void corrupt_rank(int rank, int nranks, ncclUniqueId id, void *arg)
{
    (void)arg;
    ncclComm_t c = init(rank, nranks, id);
    CUstream s = new_stream();
    size_t count = 777;
    unsigned char *recv = dev_alloc(count * (size_t)nranks);
    for (int k = 1; k <= 2; k++) {
        for (size_t i = 0; i < count; i++)
            recv[(size_t)rank * count + i] = pat(rank, i, (unsigned)k);
        NC(ncclAllGather(recv + (size_t)rank * count, recv, count, ncclUint8, c, s));
        CU(cuStreamSynchronize(s));
        ncclResult_t ae;
        NC(ncclCommGetAsyncError(c, &ae));
        REQ(ae == ncclSuccess, "async error %d", ae);
        for (int q = 0; q < nranks; q++)
            for (size_t i = 0; i < count; i++) {
                unsigned char want = pat(q, i, (unsigned)k) ^ (k == 2 && q == 1 && i == 0 ? 0xFF : 0);
                REQ(recv[(size_t)q * count + i] == want, "#%d: byte %zu of rank %d is %#x, want %#x", k, i, q,
                    recv[(size_t)q * count + i], want);
            }
    }
    NC(ncclCommDestroy(c));
}

Test(simnccl, corrupt_injection, .timeout = 30)
{
    cr_assert_eq(simnccl_fail("corrupt_in_allgather:1:2"), 0);
    struct job j = {.nranks = 3, .skip_rank = -1, .bound_s = 10};
    run(&j, corrupt_rank, NULL, NULL);
}
