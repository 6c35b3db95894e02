/* The driver behind one header: loading libcuda.so.1 (the simulator here),
 * symbol look-ups, the DRV() guard, error names, the real dlsym. */
#include <dlfcn.h>

#include "unit_helpers.h"

static void env(void) {
  ut_env_reset();
  ut_env("CKPT_MODE", "host");
}

Test(driver, load_succeeds_with_the_simulator, .init = env) {
  cr_assert_eq(ckpt_driver_load(), CUDA_SUCCESS);
  cr_assert_eq(ckpt_driver_load(), CUDA_SUCCESS, "loading is idempotent");
  /* The table holds the simulator's entry points, the very ones this test
   * program links against. */
  cr_assert_not_null(ckpt_drv.cuMemCreate);
  cr_assert_eq((void *)ckpt_drv.cuMemCreate, (void *)cuMemCreate);
  cr_assert_eq((void *)ckpt_drv.cuInit, (void *)cuInit);
}

Test(driver, every_entry_libckpt_uses_is_present, .init = env) {
  cr_assert_eq(ckpt_driver_load(), CUDA_SUCCESS);
#define CKPT_DRV(sym) cr_assert_not_null((void *)ckpt_drv.sym, "the simulator lacks %s", #sym);
#include "../../hooks/driver.def"
#undef CKPT_DRV
}

Test(driver, driver_sym, .init = env) {
  void *create = ckpt_driver_sym("cuMemCreate");
  cr_assert_not_null(create, "ckpt_driver_sym loads the driver itself");
  cr_assert_eq(create, (void *)ckpt_drv.cuMemCreate);
  cr_assert_not_null(ckpt_driver_sym("cuGetProcAddress_v2"));
  cr_assert_not_null(ckpt_driver_sym("cuMemAllocAsync_ptsz"), "per-thread variants too");
  cr_assert_null(ckpt_driver_sym("cuNoSuchThing"));
  cr_assert_null(ckpt_driver_sym(""));
}

Test(driver, drv_on_a_null_entry_is_not_found, .init = env) {
  cr_assert_eq(ckpt_driver_load(), CUDA_SUCCESS);
  cr_assert_eq(cuInit(0), CUDA_SUCCESS);
  __typeof__(ckpt_drv.cuMemGetAllocationGranularity) saved = ckpt_drv.cuMemGetAllocationGranularity;
  CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                              .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 0}};
  size_t g = 0;
  cr_assert_eq(DRV(cuMemGetAllocationGranularity, &g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM), CUDA_SUCCESS);
  cr_assert_gt(g, 0);

  ckpt_drv.cuMemGetAllocationGranularity = NULL;
  size_t g2 = 12345;
  int evaluated = 0;
  CUresult r = DRV(cuMemGetAllocationGranularity, (evaluated++, &g2), &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
  ckpt_drv.cuMemGetAllocationGranularity = saved;
  cr_assert_eq(r, CUDA_ERROR_NOT_FOUND);
  cr_assert_eq(g2, 12345, "nothing was called");
  cr_assert_eq(evaluated, 0, "arguments are not evaluated for a missing entry");

  /* Restored, it works again. */
  cr_assert_eq(DRV(cuMemGetAllocationGranularity, &g2, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM), CUDA_SUCCESS);
  cr_assert_eq(g2, g);
}

Test(driver, drv_null_entry_in_a_core_path_degrades, .init = env) {
  /* A driver without cuMemGetAllocationGranularity: the arena falls back to
   * 2 MiB instead of failing. */
  cr_assert_eq(ckpt_driver_load(), CUDA_SUCCESS);
  ckpt_drv.cuMemGetAllocationGranularity = NULL;
  cr_assert_eq(ckpt_granularity(0), 2 * UT_MiB);
  cr_assert_eq(ckpt_granularity(-1), 2 * UT_MiB);
  cr_assert_eq(ckpt_granularity(64), 2 * UT_MiB);
}

Test(driver, error_names, .init = env) {
  cr_assert_eq(ckpt_driver_load(), CUDA_SUCCESS);
  cr_assert_str_eq(ckpt_cu_name(CUDA_ERROR_OUT_OF_MEMORY), "CUDA_ERROR_OUT_OF_MEMORY");
  cr_assert_str_eq(ckpt_cu_name(CUDA_SUCCESS), "CUDA_SUCCESS");
  cr_assert_str_eq(ckpt_cu_name(CUDA_ERROR_NOT_FOUND), "CUDA_ERROR_NOT_FOUND");
  cr_assert_str_eq(ckpt_cu_name(CUDA_ERROR_INVALID_VALUE), "CUDA_ERROR_INVALID_VALUE");
  const char *unknown = ckpt_cu_name((CUresult)987654);
  cr_assert_not_null(unknown, "never NULL");
  cr_assert_gt(strlen(unknown), 0);
}

Test(driver, error_names_without_a_driver, .init = env) {
  /* Before the driver is loaded (or without cuGetErrorName) a name is still
   * returned, never NULL. */
  const char *s = ckpt_cu_name(CUDA_ERROR_OUT_OF_MEMORY);
  cr_assert_not_null(s);
  cr_assert_gt(strlen(s), 0);
  cr_assert_eq(ckpt_driver_load(), CUDA_SUCCESS);
  ckpt_drv.cuGetErrorName = NULL;
  s = ckpt_cu_name(CUDA_ERROR_OUT_OF_MEMORY);
  cr_assert_not_null(s);
  cr_assert_gt(strlen(s), 0);
}

Test(driver, cu_failed_logs_and_counts, .init = env) {
  cr_assert_eq(ckpt_driver_load(), CUDA_SUCCESS);
  uint64_t before = ut_stats().driver_errors;
  ut_capture_start();
  CU_FAILED(cuMemCreate, CUDA_ERROR_OUT_OF_MEMORY);
  const char *log = ut_capture_end();
  cr_assert_eq(ut_stats().driver_errors, before + 1);
  cr_assert_not_null(strstr(log, "cuMemCreate"), "log: %s", log);
  cr_assert_not_null(strstr(log, "CUDA_ERROR_OUT_OF_MEMORY"), "log: %s", log);
  cr_assert_not_null(strstr(log, "test_driver.c"), "says where: %s", log);
}

static CUresult checked(CUresult inner, int *reached) {
  CU_CHECK(inner);
  *reached = 1;
  return CUDA_SUCCESS;
}

Test(driver, cu_check_propagates, .init = env) {
  cr_assert_eq(ckpt_driver_load(), CUDA_SUCCESS);
  int reached = 0;
  cr_assert_eq(checked(CUDA_SUCCESS, &reached), CUDA_SUCCESS);
  cr_assert_eq(reached, 1);
  reached = 0;
  ut_capture_start();
  CUresult r = checked(CUDA_ERROR_INVALID_VALUE, &reached);
  ut_capture_end();
  cr_assert_eq(r, CUDA_ERROR_INVALID_VALUE);
  cr_assert_eq(reached, 0);
}

Test(driver, real_dlsym, .init = env) {
  void *p = ckpt_real_dlsym(RTLD_DEFAULT, "printf");
  cr_assert_not_null(p);
  cr_assert_eq(p, dlsym(RTLD_DEFAULT, "printf"));
  cr_assert_null(ckpt_real_dlsym(RTLD_DEFAULT, "ckpt_no_such_symbol_anywhere"));
  /* With a library handle. */
  void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
  cr_assert_not_null(h, "the simulator is loaded");
  cr_assert_eq(ckpt_real_dlsym(h, "cuMemCreate"), (void *)cuMemCreate);
  dlclose(h);
}
