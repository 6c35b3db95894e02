/* NVTX v3 injection: a range whose message starts with CKPT_NVTX_PREFIX opens
 * a region, its pop closes it; other ranges pass through untouched.
 *
 * The NVTX loader in each shared library that uses NVTX dlopens
 * NVTX_INJECTION64_PATH and calls InitializeInjectionNvtx2 once for that
 * library, so this runs once per library: each call installs our handlers
 * into that library's tables. */
#define NVTX_NO_IMPL /* we are a tool: types only, no loader */
#include <nvtx3/nvToolsExt.h>
#include <string.h>
#include <wchar.h>

#include "check.h"
#include "params.h"
#include "state.h"

/* Per thread: which pushed levels opened a region (NVTX nesting is per thread).
 * Levels beyond 64 are never regions. */
static __thread uint64_t region_levels;
static __thread int depth;

static bool matches(const char *msg) {
  const char *prefix = ckpt_param_str(CKPT_P_NVTX_PREFIX);
  return msg && prefix && strncmp(msg, prefix, strlen(prefix)) == 0;
}

static bool matches_w(const wchar_t *msg, char *ascii, size_t cap) {
  if (!msg) return false;
  size_t i = 0;
  for (; msg[i] && i + 1 < cap; i++) ascii[i] = (msg[i] > 0 && msg[i] < 128) ? (char)msg[i] : '?';
  ascii[i] = 0;
  return matches(ascii);
}

static int push(const char *name) {
  int level = depth++;
  if (name && level < 64 && ckpt_region_begin(name) > 0) region_levels |= 1ull << level;
  return level;
}

static int pop(void) {
  if (depth == 0) return -1;
  int level = --depth;
  if (level < 64 && (region_levels & (1ull << level))) {
    region_levels &= ~(1ull << level);
    ckpt_region_end();
  }
  return level;
}

static const char *attr_name(const nvtxEventAttributes_t *a, char *buf, size_t cap) {
  if (!a) return NULL;
  if (a->messageType == NVTX_MESSAGE_TYPE_ASCII) return matches(a->message.ascii) ? a->message.ascii : NULL;
  if (a->messageType == NVTX_MESSAGE_TYPE_UNICODE) return matches_w(a->message.unicode, buf, cap) ? buf : NULL;
  return NULL;
}

static int NVTX_API push_a(const char *msg) { return push(matches(msg) ? msg : NULL); }
static int NVTX_API push_w(const wchar_t *msg) {
  char buf[64];
  return push(matches_w(msg, buf, sizeof buf) ? buf : NULL);
}
static int NVTX_API push_ex(const nvtxEventAttributes_t *a) {
  char buf[64];
  return push(attr_name(a, buf, sizeof buf));
}
static int NVTX_API pop_core(void) { return pop(); }
static int NVTX_API domain_push_ex(nvtxDomainHandle_t d, const nvtxEventAttributes_t *a) {
  (void)d;
  return push_ex(a);
}
static int NVTX_API domain_pop(nvtxDomainHandle_t d) {
  (void)d;
  return pop();
}

static void install(NvtxFunctionTable table, unsigned size, unsigned id, NvtxFunctionPointer fn) {
  if (table && id < size && table[id]) *table[id] = fn;
}

CKPT_API int InitializeInjectionNvtx2(NvtxGetExportTableFunc_t get_table) {
  ckpt_init();
  if (!get_table) return 0;
  const NvtxExportTableCallbacks *cb = (const NvtxExportTableCallbacks *)get_table(NVTX_ETID_CALLBACKS);
  if (!cb || !cb->GetModuleFunctionTable) return 0;
  NvtxFunctionTable t = NULL;
  unsigned n = 0;
  if (cb->GetModuleFunctionTable(NVTX_CB_MODULE_CORE, &t, &n)) {
    install(t, n, NVTX_CBID_CORE_RangePushA, (NvtxFunctionPointer)push_a);
    install(t, n, NVTX_CBID_CORE_RangePushW, (NvtxFunctionPointer)push_w);
    install(t, n, NVTX_CBID_CORE_RangePushEx, (NvtxFunctionPointer)push_ex);
    install(t, n, NVTX_CBID_CORE_RangePop, (NvtxFunctionPointer)pop_core);
  }
  t = NULL;
  n = 0;
  if (cb->GetModuleFunctionTable(NVTX_CB_MODULE_CORE2, &t, &n)) {
    install(t, n, NVTX_CBID_CORE2_DomainRangePushEx, (NvtxFunctionPointer)domain_push_ex);
    install(t, n, NVTX_CBID_CORE2_DomainRangePop, (NvtxFunctionPointer)domain_pop);
  }
  return 1;
}
