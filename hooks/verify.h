/* CKPT_VERIFY: checksums of a job's items, taken on the host from pinned
 * staging copies enqueued on the job's stream (device memory is not readable
 * by the host on a GPU). One staging buffer per job: slow, a debugging aid. */
#ifndef CKPT_VERIFY_H
#define CKPT_VERIFY_H
#include <stddef.h>
#include <stdint.h>

#include "cu.h"

struct ckpt_verify;
/* Enqueues on s the copy of each (src[i], bytes[i]) into staging; NULL (said
 * once, counted) when it cannot: the job is then not verified. */
struct ckpt_verify *ckpt_verify_start(const CUdeviceptr *src, const size_t *bytes, int n, CUstream s);
/* After the copies completed: the checksum of item i. */
uint64_t ckpt_verify_sum(const struct ckpt_verify *v, int i);
void ckpt_verify_free(struct ckpt_verify *v);
#endif
