/* Error propagation: every failing call logs where it failed and returns its
 * code to the caller, which does the same; the log of one failure reads as a
 * backtrace (NCCL's NCCLCHECK idea). Nothing here aborts the process. */
#ifndef CKPT_CHECK_H
#define CKPT_CHECK_H
#include "driver.h"
#include "log.h"
#include <stddef.h>
#include <stdint.h>

/* errors.c: counts one driver error (ckpt_stats.driver_errors). */
void ckpt_note_driver_error(void);
/* errors.c: logs the call, its code and a backtrace, once per call site
 * (`call` is the failing expression's text, a string literal). */
void ckpt_crash_context(const char *call, int code);
/* errors.c: "object!symbol+0xoff" for a return address (dladdr: not on the hot path). */
void ckpt_symbolize_pc(uintptr_t pc, char *out, size_t cap);
/* Logs "file:line call failed: NAME (code)" and counts the error. */
void ckpt_cu_failed(const char *call, CUresult r, const char *file, int line);
#define CU_FAILED(call, r) ckpt_cu_failed(#call, (r), __FILE__, __LINE__)

/* In functions returning CUresult. */
#define CU_CHECK(call) do { \
    CUresult r_ = (call); \
    if (r_ != CUDA_SUCCESS) { CU_FAILED(call, r_); return r_; } \
  } while (0)

/* Sets `res` and jumps to `label` on failure (for cleanup paths). */
#define CU_CHECK_GOTO(call, res, label) do { \
    (res) = (call); \
    if ((res) != CUDA_SUCCESS) { CU_FAILED(call, res); goto label; } \
  } while (0)

/* Like CU_CHECK_GOTO, but silent: for calls whose failure the caller reports
 * itself (once, e.g. a capability the driver lacks). */
#define CU_TRY_GOTO(call, res, label) do { \
    (res) = (call); \
    if ((res) != CUDA_SUCCESS) goto label; \
  } while (0)

/* A driver error libckpt works around: counted every time, said once per place. */
#define CU_ERROR_ONCE(...) do { \
    ckpt_note_driver_error(); \
    CKPT_WARN_ONCE(__VA_ARGS__); \
  } while (0)

/* A failure that will not go away by retrying: the driver lacks the feature. */
static inline int ckpt_cu_unsupported(CUresult r) {
  return r == CUDA_ERROR_NOT_SUPPORTED || r == CUDA_ERROR_NOT_PERMITTED || r == CUDA_ERROR_NOT_FOUND;
}

#endif
