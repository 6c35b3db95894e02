/* CKPT_VERIFY (verify.h). */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "verify.h"

struct staging {
  unsigned char *host;
  CUdeviceptr dev;
  size_t cap;
  struct staging *next;
};

struct ckpt_verify {
  struct staging *st;
  unsigned char *host;
  int n;
  size_t off[];  /* n + 1 offsets into host */
};

/* Staging buffers are pooled, never freed while the program runs:
 * cuMemFreeHost synchronizes the device, which would wait for streams held
 * at a gate by the very engine thread that frees. Lock held. */
static struct staging *pool;

static struct staging *staging_get(size_t need, CUresult *r) {
  for (struct staging **pp = &pool; *pp; pp = &(*pp)->next)
    if ((*pp)->cap >= need) {
      struct staging *s = *pp;
      *pp = s->next;
      *r = CUDA_SUCCESS;
      return s;
    }
  struct staging *s = calloc(1, sizeof *s);
  if (!s) {
    *r = CUDA_ERROR_OUT_OF_MEMORY;
    return NULL;
  }
  s->cap = need;
  *r = DRV(cuMemHostAlloc, (void **)&s->host, need, CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP);
  if (*r == CUDA_SUCCESS && (*r = DRV(cuMemHostGetDevicePointer_v2, &s->dev, s->host, 0)) != CUDA_SUCCESS)
    DRV(cuMemFreeHost, s->host);
  if (*r != CUDA_SUCCESS) {
    free(s);
    return NULL;
  }
  return s;
}

struct ckpt_verify *ckpt_verify_start(const CUdeviceptr *src, const size_t *bytes, int n, CUstream s) {
  struct ckpt_verify *v = calloc(1, sizeof *v + (size_t)(n + 1) * sizeof v->off[0]);
  if (!v) return NULL;
  v->n = n;
  for (int i = 0; i < n; i++) v->off[i + 1] = v->off[i] + (bytes[i] + 7) / 8 * 8;
  CUresult r;
  size_t need = v->off[n] ? v->off[n] : 8;
  if (!(v->st = staging_get(need, &r))) goto fail;
  v->host = v->st->host;
  memset(v->host, 0, need); /* the padding counts in the sum */
  for (int i = 0; i < n; i++)
    if (bytes[i] && (r = DRV(cuMemcpyDtoDAsync_v2, v->st->dev + v->off[i], src[i], bytes[i], s)) != CUDA_SUCCESS)
      goto fail_st;
  return v;
fail_st:
  v->st->next = pool;
  pool = v->st;
fail:
  CU_ERROR_ONCE("CKPT_VERIFY: cannot stage a copy for the checksum (%s): such jobs are not verified",
                ckpt_cu_name(r));
  free(v);
  return NULL;
}

uint64_t ckpt_verify_sum(const struct ckpt_verify *v, int i) {
  uint64_t h = 0xcbf29ce484222325ull;
  const uint64_t *w = (const uint64_t *)(v->host + v->off[i]);
  for (size_t k = 0; k < (v->off[i + 1] - v->off[i]) / 8; k++) h = (h ^ w[k]) * 0x100000001b3ull;
  return h;
}

void ckpt_verify_free(struct ckpt_verify *v) {
  if (!v) return;
  v->st->next = pool;
  pool = v->st;
  free(v);
}
