/* Test control of the simulated NCCL (libnccl.so.2 built from tests/simdev/simnccl.c).
 *
 * A stand-in for NCCL between processes of the simulated device: each process
 * has its own simulated driver, device memory is that process's host memory,
 * and ranks exchange data through POSIX shared memory named from the unique id.
 * Types and values are those of the real nccl.h (2.28). Exported:
 *   ncclGetVersion, ncclGetUniqueId, ncclCommInitRank, ncclCommInitRankConfig
 *   (blocking init only), ncclCommDestroy, ncclCommFinalize, ncclCommAbort,
 *   ncclCommGetAsyncError, ncclGetErrorString, ncclGetLastError, ncclCommCount,
 *   ncclCommUserRank, ncclCommCuDevice, ncclCommRegister, ncclCommDeregister,
 *   ncclAllGather, ncclBroadcast, ncclBcast, ncclGroupStart, ncclGroupEnd.
 * The rest of the API torch's libtorch_cuda.so links (reductions, send/recv,
 * split, windows, ncclMemAlloc, ...) is exported too, so torch loads against
 * it, and refuses with ncclInvalidUsage and a line on stderr.
 *
 * Collectives are stream work (host functions and copies through the simulated
 * driver): data arrives when the stream gets there, a caller who does not wait
 * sees stale data. Every wait for peers is bounded; a dead, aborted, destroyed
 * or failed peer fails the others' collective at once (ncclRemoteError in
 * ncclCommGetAsyncError), a timeout gives ncclSystemError, and collectives that
 * differ between ranks (kind, count, datatype, root) give ncclInvalidUsage with
 * both sides on stderr. After a failure recvbuff holds 0xA5 bytes and every
 * later call on the communicator returns the error. Design: simnccl.c.
 *
 * Configured from the environment on its first call:
 *   SIMNCCL_TIMEOUT_MS   bound on every wait for peers: the bootstrap in
 *                        ncclCommInitRank and each rendezvous of a collective
 *                        (default 5000; 0 waits forever, as real NCCL does, but a
 *                        dead, aborted or destroyed peer is still seen at once)
 *   SIMNCCL_FAIL         what:rank:nth[,...]: fault injection in the nth
 *                        all-gather or broadcast (counted per process from 1,
 *                        each kind apart) of the rank whose comm rank is `rank`
 *                        ('*': any rank). `what` is one of
 *                          exit_in_allgather, exit_in_broadcast: the rank calls
 *                            _exit(SIMNCCL_EXIT_STATUS) from the stream worker
 *                            after it has arrived at the collective and before
 *                            it delivers its data, so its peers are left
 *                            waiting mid-collective;
 *                          corrupt_in_allgather, corrupt_in_broadcast: byte 0 of
 *                            the rank's contribution (the root's, for a
 *                            broadcast) is inverted on the way, silently: every
 *                            rank receives it so and no error is reported
 *   SIMNCCL_DEBUG=1      log init, every collective and its rendezvous on stderr
 * Nothing else is printed, except one "simnccl: ..." line per error (bootstrap
 * timeout naming the missing ranks, mismatched collectives with both sides'
 * values, a dead or failed peer, a bad argument) and one line per SIMNCCL_*
 * variable that cannot be parsed.
 *
 * The functions below change the same settings at run time (a forked child
 * inherits what its parent set). All are thread-safe. */
#ifndef SIMNCCL_H
#define SIMNCCL_H

#ifdef __cplusplus
extern "C" {
#endif

#define SIMNCCL_EXIT_STATUS 86 /* the status of a rank killed by SIMNCCL_FAIL */

void simnccl_set_timeout_ms(unsigned ms);
/* Adds rules in SIMNCCL_FAIL's syntax; returns 0, or -1 for a spec that does
 * not parse (nothing is added then). */
int simnccl_fail(const char *spec);
void simnccl_fail_clear(void);
/* Collectives this process has enqueued whose stream work has not finished. */
unsigned long simnccl_outstanding(void);
/* The prefix of the shared-memory names (under /dev/shm, without the leading
 * '/') that communicators of `id` use, so a test can check none is left. */
int simnccl_shm_prefix(const void *unique_id, char *buf, unsigned long len);

#ifdef __cplusplus
}
#endif

#endif
