/* The peer group's bootstrap, bounded (peer_boot.c): the id file, and the
 * communicator made on a helper thread so that no NCCL (blocking or not,
 * real or simulated) can hold the caller past the bound. */
#ifndef CKPT_PEER_BOOT_H
#define CKPT_PEER_BOOT_H
#include <nccl.h>
#include <stdbool.h>

/* Rank 0: writes the id atomically (a new file renamed into place). */
bool ckpt_peer_id_write(const char *path, const ncclUniqueId *id);
/* The others: polls until the whole id is there or ckpt_now() > deadline. */
bool ckpt_peer_id_read(const char *path, ncclUniqueId *id, double deadline);
/* ncclCommInitRankConfig (nonblocking) in the calling thread's context, on
 * a helper thread, waited for at most timeout_s. ncclSuccess and *comm, the
 * error, or ncclInProgress past the bound (the helper is left behind and
 * aborts whatever it makes). */
ncclResult_t ckpt_peer_comm_init(const ncclUniqueId *id, int size, int rank, double timeout_s, ncclComm_t *comm);
#endif
