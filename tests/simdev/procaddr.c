/* cuGetProcAddress from a static table of the simulator's own functions.
 * Never dlsym: a preloaded interposer overrides dlsym and exports the same
 * names, and the library links with -Bsymbolic so that &fn below is ours. */
#include <string.h>

#include "simdev_internal.h"

const struct sd_entry sd_entries[SD_ID_COUNT] = {
/* __extension__: ISO C has no function-to-void* conversion; cuGetProcAddress needs one. */
#define SD_ENTRY_POINT(name, base, version, ptds) {#name, #base, version, ptds, __extension__(void *)&name},
#include "entries.def"
#undef SD_ENTRY_POINT
};

int sd_entry_find(const char *name)
{
    for (int i = 0; i < SD_ID_COUNT; i++)
        if (strcmp(sd_entries[i].name, name) == 0)
            return i;
    return -1;
}

/* The driver's rule: `symbol` is a base name. With the per-thread flag the
 * _ptsz/_ptds variant is preferred; otherwise, and as a fallback, the highest
 * variant whose version does not exceed cudaVersion. */
static CUresult lookup(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                       CUdriverProcAddressQueryResult *status)
{
    if (!symbol || !pfn)
        return CUDA_ERROR_INVALID_VALUE;
    bool want_per_thread = flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
    const struct sd_entry *best = NULL, *best_per_thread = NULL;
    bool known = false;
    for (int i = 0; i < SD_ID_COUNT; i++) {
        const struct sd_entry *e = &sd_entries[i];
        if (strcmp(e->base, symbol) != 0)
            continue;
        known = true;
        if (e->version > cudaVersion)
            continue;
        const struct sd_entry **slot = e->ptds ? &best_per_thread : &best;
        if (!*slot || e->version > (*slot)->version)
            *slot = e;
    }
    if (want_per_thread && best_per_thread)
        best = best_per_thread;

    *pfn = best ? best->fn : NULL;
    if (status)
        *status = best ? CU_GET_PROC_ADDRESS_SUCCESS
                       : known ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    sd_log("cuGetProcAddress(%s, %d, %#llx) -> %s", symbol, cudaVersion, (unsigned long long)flags,
           best ? best->name : "not found");
    return best ? CUDA_SUCCESS : CUDA_ERROR_NOT_FOUND;
}

CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags)
{
    SD_ENTER(cuGetProcAddress);
    return lookup(symbol, pfn, cudaVersion, flags, NULL);
}

CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags,
                             CUdriverProcAddressQueryResult *symbolStatus)
{
    SD_ENTER(cuGetProcAddress_v2);
    return lookup(symbol, pfn, cudaVersion, flags, symbolStatus);
}
