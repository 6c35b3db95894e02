/* NCCL, loaded at run time (peer_nccl.c): the function table typed by the
 * real nccl.h, filled from dlopen(CKPT_NCCL_LIBRARY or "libnccl.so.2"). */
#ifndef CKPT_PEER_NCCL_H
#define CKPT_PEER_NCCL_H
#include <nccl.h>
#include <stdbool.h>

struct ckpt_nccl {
#define CKPT_NCCL(sym) __typeof__(sym) *sym;
#include "peer_nccl.def"
#undef CKPT_NCCL
};
extern struct ckpt_nccl ckpt_nccl;

/* Loads NCCL once (thread-safe); false (said) when it cannot. */
bool ckpt_nccl_load(void);
/* ncclGetErrorString, never NULL. */
const char *ckpt_nccl_err(ncclResult_t r);
#endif
