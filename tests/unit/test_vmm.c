/* The VMM primitives' contracts (hooks/vmm.h), on the simulator: a remap
 * moves a VA onto other memory, and rolls back onto the old one when the new
 * map fails; teardown undoes exactly the steps it is asked to; the host
 * location is probed once. */
#include "unit_helpers.h"

static void vmm_setup(void) {
  ut_env_reset();
  ut_env("CKPT_MODE", "host");
  ckpt_init();
  cr_assert(ckpt_tagging());
  ut_context();
}

/* A reserved, device-backed, mapped range of one granule, filled with `byte`. */
static CUdeviceptr mapped(CUmemGenericAllocationHandle *h, size_t *size, int byte) {
  *size = ckpt_vmm_granularity(0, CKPT_VMM_DEVICE);
  CUdeviceptr va = 0;
  cr_assert_eq(ckpt_vmm_reserve(*size, *size, &va), CUDA_SUCCESS);
  cr_assert_eq(ckpt_vmm_create_device(0, *size, h), CUDA_SUCCESS);
  cr_assert_eq(ckpt_vmm_map(va, *size, *h, CKPT_DEV_BIT(0)), CUDA_SUCCESS);
  memset((void *)va, byte, *size);
  return va;
}

Test(vmm, granularity_per_location, .init = vmm_setup) {
  cr_assert_gt(ckpt_vmm_granularity(0, CKPT_VMM_DEVICE), 0);
  cr_assert_gt(ckpt_vmm_granularity(0, CKPT_VMM_HOST), 0);
  cr_assert_eq(ckpt_vmm_granularity(9999, CKPT_VMM_DEVICE), (size_t)2 << 20, "out of range: the default");
}

Test(vmm, remap_moves_the_va, .init = vmm_setup) {
  CUmemGenericAllocationHandle a, b;
  size_t size;
  CUdeviceptr va = mapped(&a, &size, 0x11);
  CUdeviceptr other = mapped(&b, &size, 0x22);
  /* A map or access answering NOT_READY is retried. */
  cr_assert_eq(simdev_fail("cuMemMap", 1, CUDA_ERROR_NOT_READY), 0);
  cr_assert_eq(simdev_fail("cuMemSetAccess", 2, CUDA_ERROR_NOT_READY), 0);
  CUresult rc = CUDA_ERROR_UNKNOWN;
  cr_assert_eq(ckpt_vmm_remap(va, size, CKPT_DEV_BIT(0), b, a, &rc), CKPT_REMAP_TO);
  simdev_fail_clear();
  cr_assert_eq(rc, CUDA_SUCCESS);
  cr_assert_eq(((unsigned char *)va)[0], 0x22, "va now shows b's bytes");
  ckpt_vmm_teardown(va, size, a, CKPT_VMM_UNMAP | CKPT_VMM_RELEASE | CKPT_VMM_FREE_VA, true);
  ckpt_vmm_teardown(other, size, b, CKPT_VMM_UNMAP | CKPT_VMM_RELEASE | CKPT_VMM_FREE_VA, true);
}

Test(vmm, remap_rolls_back_when_the_map_fails, .init = vmm_setup) {
  CUmemGenericAllocationHandle a, b;
  size_t size;
  CUdeviceptr va = mapped(&a, &size, 0x33);
  CUdeviceptr other = mapped(&b, &size, 0x44);
  uint64_t errors = ut_stats().driver_errors;
  cr_assert_eq(simdev_fail("cuMemMap", 1, CUDA_ERROR_UNKNOWN), 0);
  CUresult rc;
  cr_assert_eq(ckpt_vmm_remap(va, size, CKPT_DEV_BIT(0), b, a, &rc), CKPT_REMAP_BACK, "mapped back onto a");
  simdev_fail_clear();
  cr_assert_eq(rc, CUDA_ERROR_UNKNOWN);
  cr_assert_eq(((unsigned char *)va)[size - 1], 0x33, "va shows a's bytes again");
  cr_assert_gt(ut_stats().driver_errors, errors, "the failed map is counted");
  ckpt_vmm_teardown(va, size, a, CKPT_VMM_UNMAP | CKPT_VMM_RELEASE | CKPT_VMM_FREE_VA, true);
  ckpt_vmm_teardown(other, size, b, CKPT_VMM_UNMAP | CKPT_VMM_RELEASE | CKPT_VMM_FREE_VA, true);
}

Test(vmm, remap_says_when_the_va_is_stranded, .init = vmm_setup) {
  CUmemGenericAllocationHandle a, b;
  size_t size;
  CUdeviceptr va = mapped(&a, &size, 0x55);
  CUdeviceptr other = mapped(&b, &size, 0x66);
  cr_assert_eq(simdev_fail("cuMemMap", 1, CUDA_ERROR_UNKNOWN), 0);
  cr_assert_eq(simdev_fail("cuMemMap", 2, CUDA_ERROR_UNKNOWN), 0);
  CUresult rc;
  cr_assert_eq(ckpt_vmm_remap(va, size, CKPT_DEV_BIT(0), b, a, &rc), CKPT_REMAP_NONE);
  cr_assert_neq(rc, CUDA_SUCCESS);
  /* Both copies are intact: a later try maps one. */
  cr_assert_eq(ckpt_vmm_map_either(va, size, CKPT_DEV_BIT(0), b, a, &rc), CKPT_REMAP_TO);
  simdev_fail_clear();
  cr_assert_eq(((unsigned char *)va)[0], 0x66);
  ckpt_vmm_teardown(va, size, a, CKPT_VMM_UNMAP | CKPT_VMM_RELEASE | CKPT_VMM_FREE_VA, true);
  ckpt_vmm_teardown(other, size, b, CKPT_VMM_UNMAP | CKPT_VMM_RELEASE | CKPT_VMM_FREE_VA, true);
}

/* A peer slice's offload: no handle to move onto, the VA is only unmapped;
 * a failed unmap leaves it mapped (the data still on the device). */
Test(vmm, remap_onto_nothing_only_unmaps, .init = vmm_setup) {
  CUmemGenericAllocationHandle a;
  size_t size;
  CUdeviceptr va = mapped(&a, &size, 0x12);
  cr_assert_eq(simdev_fail("cuMemUnmap", 1, CUDA_ERROR_UNKNOWN), 0);
  CUresult rc;
  cr_assert_eq(ckpt_vmm_remap(va, size, CKPT_DEV_BIT(0), 0, a, &rc), CKPT_REMAP_BACK, "the unmap failed");
  simdev_fail_clear();
  cr_assert_eq(rc, CUDA_ERROR_UNKNOWN);
  cr_assert_eq(((unsigned char *)va)[0], 0x12, "still mapped onto a");
  unsigned long maps = simdev_calls("cuMemMap");
  cr_assert_eq(ckpt_vmm_remap(va, size, CKPT_DEV_BIT(0), 0, a, &rc), CKPT_REMAP_TO);
  cr_assert_eq(rc, CUDA_SUCCESS);
  cr_assert_eq(simdev_calls("cuMemMap"), maps, "nothing mapped");
  /* A peer slice's restore: the VA is unmapped, only `to` can be mapped
   * (back 0); its failure leaves it unmapped (stranded), a later try maps it. */
  cr_assert_eq(simdev_fail("cuMemMap", 1, CUDA_ERROR_UNKNOWN), 0);
  cr_assert_eq(ckpt_vmm_map_either(va, size, CKPT_DEV_BIT(0), a, 0, &rc), CKPT_REMAP_NONE);
  simdev_fail_clear();
  cr_assert_eq(ckpt_vmm_map_either(va, size, CKPT_DEV_BIT(0), a, 0, &rc), CKPT_REMAP_TO);
  cr_assert_eq(((unsigned char *)va)[size - 1], 0x12);
  ckpt_vmm_teardown(va, size, a, CKPT_VMM_UNMAP | CKPT_VMM_RELEASE | CKPT_VMM_FREE_VA, true);
}

Test(vmm, teardown_does_only_what_it_is_asked, .init = vmm_setup) {
  CUmemGenericAllocationHandle a;
  size_t size;
  CUdeviceptr va = mapped(&a, &size, 0x77);
  unsigned long unmaps = simdev_calls("cuMemUnmap"), releases = simdev_calls("cuMemRelease"),
                frees = simdev_calls("cuMemAddressFree");
  ckpt_vmm_teardown(va, size, a, CKPT_VMM_UNMAP, false);
  cr_assert_eq(simdev_calls("cuMemUnmap"), unmaps + 1);
  cr_assert_eq(simdev_calls("cuMemRelease"), releases);
  cr_assert_eq(simdev_calls("cuMemAddressFree"), frees);
  ckpt_vmm_teardown(va, size, a, CKPT_VMM_RELEASE | CKPT_VMM_FREE_VA, false);
  cr_assert_eq(simdev_calls("cuMemUnmap"), unmaps + 1);
  cr_assert_eq(simdev_calls("cuMemRelease"), releases + 1);
  cr_assert_eq(simdev_calls("cuMemAddressFree"), frees + 1);
}

/* Host-located memory has its own granularity (SIMDEV_HOST_GRANULARITY, 4 MiB
 * by default against the device's 2 MiB): what may be backed by either takes
 * the larger. */
Test(vmm, both_locations_take_the_larger_granularity, .init = vmm_setup) {
  size_t d = ckpt_vmm_granularity(0, CKPT_VMM_DEVICE), h = ckpt_vmm_granularity(0, CKPT_VMM_HOST);
  cr_assert_eq(d, (size_t)2 << 20);
  cr_assert_eq(h, (size_t)4 << 20, "the host location's own, queried");
  cr_assert_eq(ckpt_vmm_granularity(0, CKPT_VMM_BOTH), h);
  CUmemGenericAllocationHandle x;
  cr_assert_eq(ckpt_vmm_create_host(0, d, &x), CUDA_ERROR_INVALID_VALUE, "a device granule is no host size");
}

/* The device's host NUMA node (CU_DEVICE_ATTRIBUTE_HOST_NUMA_ID), said once. */
Test(vmm, host_memory_goes_on_the_devices_numa_node, .init = vmm_setup) {
  size_t size = ckpt_vmm_granularity(0, CKPT_VMM_BOTH);
  CUmemGenericAllocationHandle h;
  cr_assert_eq(ckpt_vmm_create_host(0, size, &h), CUDA_SUCCESS);
  cr_assert_str_eq(ckpt_vmm_host_placement(0), "HOST_NUMA node 0");
  ckpt_vmm_release(h);
}

Test(vmm, host_memory_is_mappable, .init = vmm_setup) {
  size_t size = ckpt_vmm_granularity(0, CKPT_VMM_BOTH);
  CUmemGenericAllocationHandle h;
  CUdeviceptr va;
  cr_assert_eq(ckpt_vmm_create_host(0, size, &h), CUDA_SUCCESS);
  cr_assert_eq(ckpt_vmm_reserve(size, size, &va), CUDA_SUCCESS);
  cr_assert(ckpt_maybe_ours(va), "a reserved VA is recognised by the free path");
  cr_assert_eq(ckpt_vmm_map(va, size, h, CKPT_DEV_BIT(0)), CUDA_SUCCESS);
  memset((void *)va, 0x5a, size);
  ckpt_vmm_teardown(va, size, h, CKPT_VMM_UNMAP | CKPT_VMM_RELEASE | CKPT_VMM_FREE_VA, true);
}
