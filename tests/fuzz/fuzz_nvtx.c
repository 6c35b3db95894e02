/* libFuzzer target: NVTX range names (hooks/nvtx.c).
 *
 * InitializeInjectionNvtx2 gets a fake export table (one library's, as in
 * tests/unit/test_nvtx.c) and installs libckpt's handlers into it; the input
 * then drives those handlers: byte 0 picks CKPT_NVTX_PREFIX, then each op
 * byte is a push (ASCII, wide, event attributes of any message type, domain)
 * with a name taken from the following bytes, or a pop. After the input all
 * ranges are popped and every region opened must have been closed. */
#define _GNU_SOURCE
#define NVTX_NO_IMPL
#include <nvtx3/nvToolsExt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

#include "../../hooks/log.h"
#include "../../hooks/params.h"
#include "ckpt.h"

int InitializeInjectionNvtx2(NvtxGetExportTableFunc_t get_table);

typedef int (*push_a_fn)(const char *);
typedef int (*push_w_fn)(const wchar_t *);
typedef int (*push_ex_fn)(const nvtxEventAttributes_t *);
typedef int (*pop_fn)(void);
typedef int (*dpush_ex_fn)(nvtxDomainHandle_t, const nvtxEventAttributes_t *);
typedef int (*dpop_fn)(nvtxDomainHandle_t);

static NvtxFunctionPointer core_slots[NVTX_CBID_CORE_SIZE];
static NvtxFunctionPointer *core_table[NVTX_CBID_CORE_SIZE + 1];
static NvtxFunctionPointer core2_slots[NVTX_CBID_CORE2_SIZE];
static NvtxFunctionPointer *core2_table[NVTX_CBID_CORE2_SIZE + 1];

static int NVTX_API get_module(NvtxCallbackModule module, NvtxFunctionTable *out, unsigned *size) {
  if (module == NVTX_CB_MODULE_CORE) {
    *out = core_table;
    *size = NVTX_CBID_CORE_SIZE;
    return 1;
  }
  if (module == NVTX_CB_MODULE_CORE2) {
    *out = core2_table;
    *size = NVTX_CBID_CORE2_SIZE;
    return 1;
  }
  return 0;
}
static const NvtxExportTableCallbacks callbacks = {sizeof(NvtxExportTableCallbacks), get_module};
static const void *NVTX_API get_table(uint32_t id) { return id == NVTX_ETID_CALLBACKS ? (const void *)&callbacks : NULL; }

static const char *prefix;
static const char *lookup(const char *name) {
  if (!strcmp(name, "CKPT_NVTX_PREFIX")) return prefix;
  if (!strcmp(name, "CKPT_DEBUG")) return "NONE";
  if (!strcmp(name, "CKPT_STATS_SHM")) return "0";
  return NULL;
}

static void setup(void) {
  static int done;
  if (done) return;
  done = 1;
  for (int i = 1; i < NVTX_CBID_CORE_SIZE; i++) core_table[i] = &core_slots[i];
  for (int i = 1; i < NVTX_CBID_CORE2_SIZE; i++) core2_table[i] = &core2_slots[i];
  prefix = "ckpt";
  ckpt_params_reload(lookup);
  if (InitializeInjectionNvtx2(get_table) != 1) abort();
  if (!core_slots[NVTX_CBID_CORE_RangePushA] || !core_slots[NVTX_CBID_CORE_RangePop]) abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  setup();
  return 0;
}

struct input {
  const uint8_t *p;
  size_t n;
};
static unsigned take(struct input *in) {
  if (!in->n) return 0;
  in->n--;
  return *in->p++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  setup();
  struct input in = {data, size};
  static const char *const prefixes[] = {"ckpt", "", "a", "ckpt_layer", "\xc3\xa9"};
  prefix = prefixes[take(&in) % 5];
  ckpt_params_reload(lookup);
  push_a_fn push_a = (push_a_fn)core_slots[NVTX_CBID_CORE_RangePushA];
  push_w_fn push_w = (push_w_fn)core_slots[NVTX_CBID_CORE_RangePushW];
  push_ex_fn push_ex = (push_ex_fn)core_slots[NVTX_CBID_CORE_RangePushEx];
  pop_fn pop = (pop_fn)core_slots[NVTX_CBID_CORE_RangePop];
  dpush_ex_fn dpush = (dpush_ex_fn)core2_slots[NVTX_CBID_CORE2_DomainRangePushEx];
  dpop_fn dpop = (dpop_fn)core2_slots[NVTX_CBID_CORE2_DomainRangePop];
  struct ckpt_stats before;
  ckpt_stats_get(&before, sizeof before);
  char name[512];
  wchar_t wname[256];
  while (in.n) {
    unsigned op = take(&in) % 10;
    size_t len = take(&in) % 200;
    size_t i = 0;
    for (; i < len && in.n; i++) name[i] = (char)take(&in);
    name[i] = '\0'; /* may hold earlier NULs: a shorter name */
    size_t wl = 0;
    for (; wl + 1 < sizeof wname / sizeof *wname && wl < i / 4; wl++) {
      uint32_t w;
      memcpy(&w, name + 4 * wl, 4);
      wname[wl] = (wchar_t)w; /* any value, negative and beyond Unicode too */
    }
    wname[wl] = 0;
    nvtxEventAttributes_t a;
    memset(&a, 0, sizeof a);
    a.version = NVTX_VERSION;
    a.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
    switch (op) {
    case 0: case 1: push_a(name); break;
    case 2: push_w(wname); break;
    case 3: a.messageType = NVTX_MESSAGE_TYPE_ASCII; a.message.ascii = name; push_ex(&a); break;
    case 4: a.messageType = NVTX_MESSAGE_TYPE_UNICODE; a.message.unicode = wname; push_ex(&a); break;
    case 5: /* a registered-string handle or an unknown type: never dereferenced */
      a.messageType = i & 1 ? NVTX_MESSAGE_TYPE_REGISTERED : (int32_t)(i * 7919);
      a.message.registered = (nvtxStringHandle_t)(uintptr_t)0x10;
      push_ex(i % 3 ? &a : NULL);
      break;
    case 6: a.messageType = NVTX_MESSAGE_TYPE_ASCII; a.message.ascii = i ? name : NULL;
      dpush((nvtxDomainHandle_t)(uintptr_t)(i & 1), &a); break;
    case 7: push_a(i ? name : NULL); break;
    case 8: dpop((nvtxDomainHandle_t)(uintptr_t)(i & 1)); break;
    default: pop(); break;
    }
  }
  for (int k = 0; k < 100000 && pop() >= 0; k++) {
  }
  struct ckpt_stats after;
  ckpt_stats_get(&after, sizeof after);
  if (after.regions_opened - before.regions_opened != after.regions_closed - before.regions_closed) {
    fprintf(stderr, "fuzz_nvtx: %llu regions opened, %llu closed after popping every range\n",
            (unsigned long long)(after.regions_opened - before.regions_opened),
            (unsigned long long)(after.regions_closed - before.regions_closed));
    abort();
  }
  ckpt_step(); /* a new cycle: nothing accumulates across inputs */
  return 0;
}
