/* What the constructor may do (set two variables when unset), and the
 * warnings about them, deferred to the first CUDA use so that a process that
 * never touches CUDA sees no output at all. */
#include <stdlib.h>
#include <string.h>

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

void ckpt_startup_warnings(void) {
  if (alloc_conf_hides_tensors)
    CKPT_WARN("PYTORCH_CUDA_ALLOC_CONF does not select backend:cudaMallocAsync: PyTorch's caching allocator "
              "hides tensors inside large segments, so libckpt tags segments, not tensors. Unset it or add "
              "backend:cudaMallocAsync.");
  if (nvtx_taken)
    CKPT_INFO("NVTX_INJECTION64_PATH names another tool (e.g. Nsight Systems): NVTX ranges do not open "
              "regions; the C and Python APIs still do");
}
