/* The VMM primitives: the only module that calls the driver's virtual-memory
 * functions (cuMemAddressReserve/Free, cuMemCreate/Release, cuMemMap/Unmap,
 * cuMemSetAccess, cuMemGetAllocationGranularity, the pool trim and its
 * access list).
 *
 * Contracts: every function returns the driver's code and leaves nothing
 * behind on failure (a failed map is unmapped again). Only the functions
 * named "logged" log and count a failure; the others leave that to the
 * caller, which knows whether it is an error or a capability the driver lacks. */
#ifndef CKPT_VMM_H
#define CKPT_VMM_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cu.h"

/* CKPT_VMM_BOTH: memory that may be backed by either location in turn (a
 * tagged allocation, a host block): the larger of the two granularities
 * (powers of two, so also a multiple of both). */
enum ckpt_vmm_location { CKPT_VMM_DEVICE, CKPT_VMM_HOST, CKPT_VMM_BOTH };

/* Minimum granularity of memory of `location` for `device` (2 MiB when the
 * driver does not say; queried once per device and location). The host one
 * is asked with the host location type(s) the host memory of `device` may
 * be created with (the largest of their answers). */
size_t ckpt_vmm_granularity(int device, enum ckpt_vmm_location location);

/* Reserves `size` bytes of VA aligned to `align`; logged, except when the
 * driver lacks VMM (ckpt_cu_unsupported), which the caller says once. */
CUresult ckpt_vmm_reserve(size_t size, size_t align, CUdeviceptr *va);
/* Frees a reservation (logged). */
void ckpt_vmm_free_va(CUdeviceptr va, size_t size);
/* Whether p could lie in a range ever reserved here is ckpt_maybe_ours (core.h). */

/* Physical memory of `size` bytes on `device`. Not logged. */
CUresult ckpt_vmm_create_device(int device, size_t size, CUmemGenericAllocationHandle *out);
/* Pinned host memory usable by `device`, on the device's host NUMA node:
 * CU_MEM_LOCATION_TYPE_HOST_NUMA with CU_DEVICE_ATTRIBUTE_HOST_NUMA_ID where
 * the driver has it, else CU_MEM_LOCATION_TYPE_HOST, else HOST_NUMA node 0
 * (probed once per device, said once at INFO). `size` a multiple of
 * ckpt_vmm_granularity(device, CKPT_VMM_HOST). Not logged, except a refusal
 * that is neither "unsupported" nor "invalid value" (counted, said once). */
CUresult ckpt_vmm_create_host(int device, size_t size, CUmemGenericAllocationHandle *out);
/* Test hook: called on the creating thread before each host-memory create. */
extern void (*ckpt_vmm_host_create_hook)(void);
/* Where host memory of `device` goes, for the log and the stats: "HOST_NUMA
 * node 1", "HOST", or "not probed yet". */
const char *ckpt_vmm_host_placement(int device);
/* Gives the stream-ordered pool's cached memory of `device` back to the
 * driver; CUDA_SUCCESS when it did. Not logged. */
CUresult ckpt_vmm_trim_pool(int device);

/* Devices as a bit mask (bit d: device d; devices >= 64 are not granted). */
typedef uint64_t ckpt_devmask;
#define CKPT_DEV_BIT(d) ((d) >= 0 && (d) < 64 ? (ckpt_devmask)1 << (d) : 0)
/* The devices granted read-write access by the current stream-ordered pool
 * of `device` (cuDeviceGetMemPool, cuMemPoolGetAccess for each other device),
 * `device` itself included. One query per other device, none with one
 * device; on a query failure the device alone. Not logged. */
ckpt_devmask ckpt_vmm_pool_access(int device);
/* Grants read-write access on [va, va+size) to the devices of `grant` and
 * takes it from those of `revoke` (not in `grant`). Not logged. */
CUresult ckpt_vmm_set_access(CUdeviceptr va, size_t size, ckpt_devmask grant, ckpt_devmask revoke);

/* Maps h at va and grants the devices of `access` read-write access; on an
 * access failure the mapping is undone (that failure is logged, the map's
 * is not). */
CUresult ckpt_vmm_map(CUdeviceptr va, size_t size, CUmemGenericAllocationHandle h, ckpt_devmask access);
/* Not logged. */
CUresult ckpt_vmm_unmap(CUdeviceptr va, size_t size);
/* Not logged. */
CUresult ckpt_vmm_release(CUmemGenericAllocationHandle h);

/* What ckpt_vmm_teardown undoes, in this order. */
enum { CKPT_VMM_UNMAP = 1, CKPT_VMM_RELEASE = 2, CKPT_VMM_FREE_VA = 4 };
/* Unmaps va, releases h, frees the reservation (the steps in `what`);
 * `logged`: each failure of the unmap and the release is logged and counted. */
void ckpt_vmm_teardown(CUdeviceptr va, size_t size, CUmemGenericAllocationHandle h, unsigned what, bool logged);

/* What a remap left at va. */
enum ckpt_remap { CKPT_REMAP_TO, CKPT_REMAP_BACK, CKPT_REMAP_NONE };
/* Moves va from the handle it is mapped to (`back`) onto `to`: unmaps, maps
 * `to`, sets the access of `access`. A step that answers CUDA_ERROR_NOT_READY
 * is retried a bounded number of times; when `to` cannot be mapped, `back`
 * is mapped again. Returns what va maps now: TO, BACK (also when the unmap
 * failed: nothing moved), or NONE: va is unmapped (both copies still hold
 * the data; ckpt_vmm_map_either can be retried later). *rc: the first
 * failure (CUDA_SUCCESS for TO). Every failure is logged. Mapped memory is
 * never touched: the caller guarantees nothing runs on va meanwhile (gates).
 * `to` 0: va is only unmapped (TO once the unmap succeeded; a peer slice). */
enum ckpt_remap ckpt_vmm_remap(CUdeviceptr va, size_t size, ckpt_devmask access, CUmemGenericAllocationHandle to,
                               CUmemGenericAllocationHandle back, CUresult *rc);
/* va is unmapped: maps `to`, else `back` (with the same retries); logged. */
enum ckpt_remap ckpt_vmm_map_either(CUdeviceptr va, size_t size, ckpt_devmask access,
                                    CUmemGenericAllocationHandle to, CUmemGenericAllocationHandle back,
                                    CUresult *rc);
#endif
