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
  cr_assert_eq(ckpt_vmm_map(va, *size, *h, 0), CUDA_SUCCESS);
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
  bool stranded = true;
  cr_assert_eq(ckpt_vmm_remap(va, size, 0, b, a, &stranded), CUDA_SUCCESS);
  cr_assert_not(stranded);
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
  bool stranded = true;
  cr_assert_eq(ckpt_vmm_remap(va, size, 0, b, a, &stranded), CUDA_ERROR_UNKNOWN);
  simdev_fail_clear();
  cr_assert_not(stranded, "mapped back onto a");
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
  bool stranded = false;
  cr_assert_neq(ckpt_vmm_remap(va, size, 0, b, a, &stranded), CUDA_SUCCESS);
  simdev_fail_clear();
  cr_assert(stranded);
  ckpt_vmm_teardown(va, size, a, CKPT_VMM_RELEASE | CKPT_VMM_FREE_VA, true); /* nothing mapped at va */
  ckpt_vmm_teardown(other, size, b, CKPT_VMM_UNMAP | CKPT_VMM_RELEASE | CKPT_VMM_FREE_VA, true);
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

Test(vmm, host_memory_is_mappable, .init = vmm_setup) {
  size_t size = ckpt_vmm_granularity(0, CKPT_VMM_DEVICE);
  CUmemGenericAllocationHandle h;
  CUdeviceptr va;
  cr_assert_eq(ckpt_vmm_create_host(0, size, &h), CUDA_SUCCESS);
  cr_assert_eq(ckpt_vmm_reserve(size, size, &va), CUDA_SUCCESS);
  cr_assert(ckpt_maybe_ours(va), "a reserved VA is recognised by the free path");
  cr_assert_eq(ckpt_vmm_map(va, size, h, 0), CUDA_SUCCESS);
  memset((void *)va, 0x5a, size);
  ckpt_vmm_teardown(va, size, h, CKPT_VMM_UNMAP | CKPT_VMM_RELEASE | CKPT_VMM_FREE_VA, true);
}
