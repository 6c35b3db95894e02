/* What the constructor may do (set two variables when unset), and the
 * warnings about them, deferred to the first CUDA use so that a process that
 * never touches CUDA sees no output at all; and the variables that only the
 * Python package reads, which do nothing where it never ran. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "driver.h"
#include "log.h"
#include "params.h"

static int alloc_conf_hides_tensors;
static int nvtx_taken;

void ckpt_preload_env(const char *self_path) {
  const char *conf = ckpt_env("PYTORCH_CUDA_ALLOC_CONF");
  if (!conf || !*conf)
    setenv("PYTORCH_CUDA_ALLOC_CONF", "backend:cudaMallocAsync", 1);
  else if (!strstr(conf, "cudaMallocAsync"))
    alloc_conf_hides_tensors = 1; /* the native caching allocator hides tensors in big segments */
  const char *nvtx = ckpt_env("NVTX_INJECTION64_PATH");
  if (!nvtx || !*nvtx) {
    if (self_path && *self_path) setenv("NVTX_INJECTION64_PATH", self_path, 1);
  } else if (!self_path || strcmp(nvtx, self_path) != 0) {
    nvtx_taken = 1;
  }
}

/* Set by the Python package (ckpt.autopatch, through ctypes) once it has
 * installed what CKPT_PATCH / CKPT_REGIONS ask for. A plain flag: the call
 * must not initialise libckpt or touch the driver. */
static int python_patching;
CKPT_API int ckpt_python_loaded(void) {
  __atomic_store_n(&python_patching, 1, __ATOMIC_RELAXED);
  return 0;
}

/* At exit: CKPT_PATCH / CKPT_REGIONS in a Python process whose ckpt package
 * never ran (LD_PRELOAD without ckpt-run) patched nothing: say so, once. A
 * program that is not Python (no Py_IsInitialized in the process, e.g. a C
 * program under ckpt-run, which sets CKPT_PATCH=torch) has nothing to patch. */
void ckpt_startup_exit_warnings(void) {
  if (__atomic_load_n(&python_patching, __ATOMIC_RELAXED)) return;
  bool patch = ckpt_param_int(CKPT_P_PATCH) != 0;
  const char *regions = ckpt_param_str(CKPT_P_REGIONS);
  if (!patch && !regions[0]) return;
  if (!ckpt_real_dlsym(RTLD_DEFAULT, "Py_IsInitialized")) return;
  CKPT_WARN("%s%s%s%s had no effect: the Python package ckpt never ran in this Python process (libckpt came "
            "in by LD_PRELOAD alone), so no region was made from them. Run the program with ckpt-run "
            "(it loads the package at interpreter start), or import ckpt.autopatch at the top of the script "
            "with scripts/ on PYTHONPATH or the package pip-installed",
            patch ? "CKPT_PATCH=" : "", patch ? ckpt_param_str(CKPT_P_PATCH) : "",
            patch && regions[0] ? " and CKPT_REGIONS=" : regions[0] ? "CKPT_REGIONS=" : "", regions);
}

void ckpt_startup_warnings(void) {
  ckpt_log_open_now(); /* an unusable CKPT_DEBUG_FILE is reported now, not at the first message */
  if (alloc_conf_hides_tensors)
    CKPT_WARN("PYTORCH_CUDA_ALLOC_CONF does not select backend:cudaMallocAsync: PyTorch's caching allocator "
              "hides tensors inside large segments, so libckpt tags segments, not tensors. Unset it or add "
              "backend:cudaMallocAsync.");
  if (nvtx_taken)
    CKPT_INFO("NVTX_INJECTION64_PATH names another tool (e.g. Nsight Systems): NVTX ranges do not open "
              "regions; the C and Python APIs still do");
}
