/* The VMM primitives: the only module that calls the driver's virtual-memory
 * functions (cuMemAddressReserve/Free, cuMemCreate/Release, cuMemMap/Unmap,
 * cuMemSetAccess, cuMemGetAllocationGranularity, the pool trim).
 *
 * Contracts: every function returns the driver's code and leaves nothing
 * behind on failure (a failed map is unmapped again). Only the functions
 * named "logged" log and count a failure; the others leave that to the
 * caller, which knows whether it is an error or a capability the driver lacks. */
#ifndef CKPT_VMM_H
#define CKPT_VMM_H
#include <stdbool.h>
#include <stddef.h>

#include "cu.h"

enum ckpt_vmm_location { CKPT_VMM_DEVICE, CKPT_VMM_HOST };

/* Minimum granularity of memory of `location` for `device` (2 MiB when the
 * driver does not say; queried once per device and location). */
size_t ckpt_vmm_granularity(int device, enum ckpt_vmm_location location);

/* Reserves `size` bytes of VA aligned to `align`; logged, except when the
 * driver lacks VMM (ckpt_cu_unsupported), which the caller says once. */
CUresult ckpt_vmm_reserve(size_t size, size_t align, CUdeviceptr *va);
/* Frees a reservation (logged). */
void ckpt_vmm_free_va(CUdeviceptr va, size_t size);
/* Whether p could lie in a range ever reserved here is ckpt_maybe_ours (core.h). */

/* Physical memory of `size` bytes on `device`. Not logged. */
CUresult ckpt_vmm_create_device(int device, size_t size, CUmemGenericAllocationHandle *out);
/* Pinned host memory usable by `device`: CU_MEM_LOCATION_TYPE_HOST, or
 * HOST_NUMA node 0 when the driver refuses HOST (probed once, then only the
 * accepted type is asked). Not logged, except a HOST refusal that is neither
 * "unsupported" nor "invalid value" (counted, said once). */
CUresult ckpt_vmm_create_host(int device, size_t size, CUmemGenericAllocationHandle *out);
/* Gives the stream-ordered pool's cached memory of `device` back to the
 * driver; CUDA_SUCCESS when it did. Not logged. */
CUresult ckpt_vmm_trim_pool(int device);

/* Maps h at va and grants `device` read-write access; on an access failure
 * the mapping is undone (that failure is logged, the map's is not). */
CUresult ckpt_vmm_map(CUdeviceptr va, size_t size, CUmemGenericAllocationHandle h, int device);
/* Not logged. */
CUresult ckpt_vmm_unmap(CUdeviceptr va, size_t size);
/* Not logged. */
CUresult ckpt_vmm_release(CUmemGenericAllocationHandle h);

/* What ckpt_vmm_teardown undoes, in this order. */
enum { CKPT_VMM_UNMAP = 1, CKPT_VMM_RELEASE = 2, CKPT_VMM_FREE_VA = 4 };
/* Unmaps va, releases h, frees the reservation (the steps in `what`);
 * `logged`: each failure of the unmap and the release is logged and counted. */
void ckpt_vmm_teardown(CUdeviceptr va, size_t size, CUmemGenericAllocationHandle h, unsigned what, bool logged);

/* Moves va from the handle it is mapped to onto `to`. Unmaps, maps `to`; when
 * that map fails, maps `back` again. CUDA_SUCCESS, or the failing code with
 * *stranded set when va could not be mapped back either (its data is then
 * only in `to`'s source). The unmap's failure is logged. Mapped memory is
 * never touched: the caller guarantees nothing runs on va meanwhile (gates). */
CUresult ckpt_vmm_remap(CUdeviceptr va, size_t size, int device, CUmemGenericAllocationHandle to,
                        CUmemGenericAllocationHandle back, bool *stranded);
#endif
