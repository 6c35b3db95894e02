/* NVTX injection: InitializeInjectionNvtx2 with a fake export table (what the
 * NVTX loader of one library hands to the injection), then the handlers it
 * installed, called the way that library's nvtxRangePush/Pop would. */
#define NVTX_NO_IMPL
#include <nvtx3/nvToolsExt.h>
#include <wchar.h>

#include "unit_helpers.h"

int InitializeInjectionNvtx2(NvtxGetExportTableFunc_t get_table); /* nvtx.c, exported */

typedef int (*push_a_fn)(const char *);
typedef int (*push_w_fn)(const wchar_t *);
typedef int (*push_ex_fn)(const nvtxEventAttributes_t *);
typedef int (*pop_fn)(void);
typedef int (*dpush_ex_fn)(nvtxDomainHandle_t, const nvtxEventAttributes_t *);
typedef int (*dpop_fn)(nvtxDomainHandle_t);

/* One library's tables, laid out like the NVTX loader's: entry [id] points at
 * that library's function-pointer slot for callback id, [0] and [SIZE] NULL;
 * the size reported is the array length minus one. */
struct fake_lib {
  NvtxFunctionPointer core_slots[NVTX_CBID_CORE_SIZE];
  NvtxFunctionPointer *core_table[NVTX_CBID_CORE_SIZE + 1];
  NvtxFunctionPointer core2_slots[NVTX_CBID_CORE2_SIZE];
  NvtxFunctionPointer *core2_table[NVTX_CBID_CORE2_SIZE + 1];
  unsigned core_size, core2_size; /* what GetModuleFunctionTable reports */
  bool offer_core, offer_core2;
  int asked_core, asked_core2, asked_other;
};

static void sentinel(void) {}

static void fake_lib_init(struct fake_lib *l) {
  memset(l, 0, sizeof *l);
  for (int i = 1; i < NVTX_CBID_CORE_SIZE; i++) {
    l->core_slots[i] = sentinel;
    l->core_table[i] = &l->core_slots[i];
  }
  for (int i = 1; i < NVTX_CBID_CORE2_SIZE; i++) {
    l->core2_slots[i] = sentinel;
    l->core2_table[i] = &l->core2_slots[i];
  }
  l->core_size = NVTX_CBID_CORE_SIZE;
  l->core2_size = NVTX_CBID_CORE2_SIZE;
  l->offer_core = l->offer_core2 = true;
}

/* The export-table function has no context argument: one "current" library. */
static struct fake_lib *current_lib;

static int NVTX_API fake_get_module(NvtxCallbackModule module, NvtxFunctionTable *out_table, unsigned *out_size) {
  struct fake_lib *l = current_lib;
  if (module == NVTX_CB_MODULE_CORE) {
    l->asked_core++;
    if (!l->offer_core) return 0;
    if (out_table) *out_table = l->core_table;
    if (out_size) *out_size = l->core_size;
    return 1;
  }
  if (module == NVTX_CB_MODULE_CORE2) {
    l->asked_core2++;
    if (!l->offer_core2) return 0;
    if (out_table) *out_table = l->core2_table;
    if (out_size) *out_size = l->core2_size;
    return 1;
  }
  l->asked_other++;
  return 0;
}

static const NvtxExportTableCallbacks callbacks = {sizeof(NvtxExportTableCallbacks), fake_get_module};

static const void *NVTX_API fake_get_table(uint32_t id) {
  return id == NVTX_ETID_CALLBACKS ? (const void *)&callbacks : NULL;
}

static const void *NVTX_API no_callbacks_table(uint32_t id) {
  (void)id;
  return NULL;
}

static int inject(struct fake_lib *l) {
  current_lib = l;
  int rc = InitializeInjectionNvtx2(fake_get_table);
  current_lib = NULL;
  return rc;
}

#define CORE(l, id) ((l)->core_slots[NVTX_CBID_CORE_##id])
#define CORE2(l, id) ((l)->core2_slots[NVTX_CBID_CORE2_##id])

static void env(void) {
  ut_env_reset();
  ut_env("CKPT_MODE", "host");
}

static void env_prefix(void) {
  env();
  ut_env("CKPT_NVTX_PREFIX", "act:");
}

static nvtxEventAttributes_t ascii_attr(const char *msg) {
  nvtxEventAttributes_t a;
  memset(&a, 0, sizeof a);
  a.version = NVTX_VERSION;
  a.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
  a.messageType = NVTX_MESSAGE_TYPE_ASCII;
  a.message.ascii = msg;
  return a;
}

static nvtxEventAttributes_t unicode_attr(const wchar_t *msg) {
  nvtxEventAttributes_t a = ascii_attr(NULL);
  a.messageType = NVTX_MESSAGE_TYPE_UNICODE;
  a.message.unicode = msg;
  return a;
}

static uint64_t opened(void) { return ut_stats().regions_opened; }
static uint64_t closed(void) { return ut_stats().regions_closed; }

Test(nvtx, installs_handlers, .init = env) {
  static struct fake_lib lib;
  fake_lib_init(&lib);
  cr_assert_eq(inject(&lib), 1);
  cr_assert_geq(lib.asked_core, 1);
  cr_assert_geq(lib.asked_core2, 1);
  /* The range push/pop slots now hold libckpt's handlers. */
  cr_assert(CORE(&lib, RangePushA) && CORE(&lib, RangePushA) != sentinel);
  cr_assert(CORE(&lib, RangePushW) && CORE(&lib, RangePushW) != sentinel);
  cr_assert(CORE(&lib, RangePushEx) && CORE(&lib, RangePushEx) != sentinel);
  cr_assert(CORE(&lib, RangePop) && CORE(&lib, RangePop) != sentinel);
  cr_assert(CORE2(&lib, DomainRangePushEx) && CORE2(&lib, DomainRangePushEx) != sentinel);
  cr_assert(CORE2(&lib, DomainRangePop) && CORE2(&lib, DomainRangePop) != sentinel);
  /* Everything else is left to the library. */
  cr_assert_eq(CORE(&lib, MarkA), sentinel);
  cr_assert_eq(CORE(&lib, RangeStartA), sentinel);
  cr_assert_eq(CORE(&lib, NameCategoryA), sentinel);
  cr_assert_eq(CORE2(&lib, DomainMarkEx), sentinel);
  cr_assert_eq(CORE2(&lib, DomainCreateA), sentinel);
  cr_assert_eq(CORE2(&lib, Initialize), sentinel);
  cr_assert_eq(ut_stats().regions_opened, 0, "installing opens nothing");
}

Test(nvtx, push_with_prefix_opens_a_region, .init = env) {
  static struct fake_lib lib;
  fake_lib_init(&lib);
  cr_assert_eq(inject(&lib), 1);
  push_a_fn push = (push_a_fn)CORE(&lib, RangePushA);
  pop_fn pop = (pop_fn)CORE(&lib, RangePop);

  cr_assert_eq(push("ckpt:layer0"), 0, "push returns the level of the range started");
  cr_assert_eq(opened(), 1);
  /* The region is the innermost open one: a tagged allocation would land in it. */
  cr_assert_eq(pop(), 0);
  cr_assert_eq(closed(), 1);
  ut_capture_start();
  cr_assert_eq(ckpt_region_end(), CKPT_ESTATE, "the pop closed it");
  ut_capture_end();

  /* "ckpt" itself and anything starting with it. */
  cr_assert_eq(push("ckpt"), 0);
  cr_assert_eq(push("ckpt.attention"), 1);
  cr_assert_eq(opened(), 3);
  cr_assert_eq(pop(), 1);
  cr_assert_eq(pop(), 0);
  cr_assert_eq(closed(), 3);
}

Test(nvtx, other_names_open_nothing, .init = env) {
  static struct fake_lib lib;
  fake_lib_init(&lib);
  cr_assert_eq(inject(&lib), 1);
  push_a_fn push = (push_a_fn)CORE(&lib, RangePushA);
  pop_fn pop = (pop_fn)CORE(&lib, RangePop);
  cr_assert_eq(push("forward"), 0);
  cr_assert_eq(push("CKPT upper case"), 1);
  cr_assert_eq(push("ckp"), 2);
  cr_assert_eq(push(" ckpt"), 3);
  cr_assert_eq(push(""), 4);
  cr_assert_eq(push(NULL), 5);
  cr_assert_eq(opened(), 0);
  for (int level = 5; level >= 0; level--) cr_assert_eq(pop(), level);
  cr_assert_eq(closed(), 0);
}

Test(nvtx, pop_closes_only_what_push_opened, .init = env) {
  static struct fake_lib lib;
  fake_lib_init(&lib);
  cr_assert_eq(inject(&lib), 1);
  push_a_fn push = (push_a_fn)CORE(&lib, RangePushA);
  pop_fn pop = (pop_fn)CORE(&lib, RangePop);

  cr_assert_eq(push("ckpt:block"), 0);   /* region */
  cr_assert_eq(push("matmul"), 1);       /* not a region */
  cr_assert_eq(push("ckpt:inner"), 2);   /* region */
  cr_assert_eq(push("softmax"), 3);      /* not a region */
  cr_assert_eq(opened(), 2);
  cr_assert_eq(pop(), 3);
  cr_assert_eq(closed(), 0, "popping a plain range closes nothing");
  cr_assert_eq(pop(), 2);
  cr_assert_eq(closed(), 1);
  cr_assert_eq(pop(), 1);
  cr_assert_eq(closed(), 1);
  cr_assert_eq(pop(), 0);
  cr_assert_eq(closed(), 2);

  /* A region opened through the API inside a plain range outlives its pop. */
  cr_assert_eq(push("plain"), 0);
  int api = ckpt_region_begin("api");
  cr_assert_gt(api, 0);
  cr_assert_eq(pop(), 0);
  cr_assert_eq(closed(), 2, "the plain pop must not close the API region");
  cr_assert_eq(ckpt_region_end(), api);

  /* Unbalanced pop: an error, and nothing closed. */
  cr_assert_lt(pop(), 0);
  cr_assert_eq(closed(), 3);
}

Test(nvtx, push_ex_and_unicode, .init = env) {
  static struct fake_lib lib;
  fake_lib_init(&lib);
  cr_assert_eq(inject(&lib), 1);
  push_ex_fn push_ex = (push_ex_fn)CORE(&lib, RangePushEx);
  push_w_fn push_w = (push_w_fn)CORE(&lib, RangePushW);
  pop_fn pop = (pop_fn)CORE(&lib, RangePop);

  nvtxEventAttributes_t a = ascii_attr("ckpt:ex");
  cr_assert_eq(push_ex(&a), 0);
  cr_assert_eq(opened(), 1);
  nvtxEventAttributes_t u = unicode_attr(L"ckpt:w\u00e9");
  cr_assert_eq(push_ex(&u), 1);
  cr_assert_eq(opened(), 2);
  nvtxEventAttributes_t other = ascii_attr("gemm");
  cr_assert_eq(push_ex(&other), 2);
  nvtxEventAttributes_t registered = ascii_attr("ckpt:registered");
  registered.messageType = NVTX_MESSAGE_TYPE_REGISTERED; /* not a string we can read */
  cr_assert_eq(push_ex(&registered), 3);
  cr_assert_eq(push_ex(NULL), 4);
  cr_assert_eq(push_w(L"ckpt wide"), 5);
  cr_assert_eq(push_w(L"wide"), 6);
  cr_assert_eq(opened(), 3);
  for (int level = 6; level >= 0; level--) cr_assert_eq(pop(), level);
  cr_assert_eq(closed(), 3);
}

Test(nvtx, domain_push_and_pop, .init = env) {
  static struct fake_lib lib;
  fake_lib_init(&lib);
  cr_assert_eq(inject(&lib), 1);
  dpush_ex_fn dpush = (dpush_ex_fn)CORE2(&lib, DomainRangePushEx);
  dpop_fn dpop = (dpop_fn)CORE2(&lib, DomainRangePop);
  push_a_fn push = (push_a_fn)CORE(&lib, RangePushA);
  pop_fn pop = (pop_fn)CORE(&lib, RangePop);
  nvtxDomainHandle_t dom = (nvtxDomainHandle_t)(uintptr_t)0x1234;

  nvtxEventAttributes_t a = ascii_attr("ckpt:domain");
  cr_assert_eq(dpush(dom, &a), 0);
  cr_assert_eq(opened(), 1);
  nvtxEventAttributes_t b = ascii_attr("not a region");
  cr_assert_eq(dpush(NULL, &b), 1);
  cr_assert_eq(push("ckpt:core"), 2, "one nesting count per thread");
  cr_assert_eq(opened(), 2);
  cr_assert_eq(pop(), 2);
  cr_assert_eq(closed(), 1);
  cr_assert_eq(dpop(NULL), 1);
  cr_assert_eq(closed(), 1);
  cr_assert_eq(dpop(dom), 0);
  cr_assert_eq(closed(), 2);
}

Test(nvtx, custom_prefix, .init = env_prefix) {
  static struct fake_lib lib;
  fake_lib_init(&lib);
  cr_assert_eq(inject(&lib), 1);
  push_a_fn push = (push_a_fn)CORE(&lib, RangePushA);
  pop_fn pop = (pop_fn)CORE(&lib, RangePop);
  cr_assert_eq(push("ckpt:default prefix"), 0);
  cr_assert_eq(opened(), 0, "CKPT_NVTX_PREFIX=act: replaces the default");
  cr_assert_eq(push("act:layer"), 1);
  cr_assert_eq(opened(), 1);
  cr_assert_eq(pop(), 1);
  cr_assert_eq(pop(), 0);
  cr_assert_eq(closed(), 1);
}

Test(nvtx, nvtx_region_is_the_innermost_open_one, .init = env) {
  static struct fake_lib lib;
  fake_lib_init(&lib);
  cr_assert_eq(inject(&lib), 1);
  push_a_fn push = (push_a_fn)CORE(&lib, RangePushA);
  pop_fn pop = (pop_fn)CORE(&lib, RangePop);
  cr_assert_eq(push("ckpt:named"), 0);
  /* The region is open and innermost: the next API region nests inside it,
   * and ids keep increasing. */
  int inner = ckpt_region_begin("inner");
  cr_assert_eq(inner, 2);
  cr_assert_eq(ckpt_region_end(), inner);
  cr_assert_eq(ckpt_offload(1), CKPT_ESTATE, "region 1 (the NVTX one) is open");
  cr_assert_eq(pop(), 0);
  cr_assert_eq(ckpt_offload(1), 0, "closed by the pop");
}

Test(nvtx, two_libraries, .init = env) {
  static struct fake_lib lib1, lib2;
  fake_lib_init(&lib1);
  fake_lib_init(&lib2);
  cr_assert_eq(inject(&lib1), 1);
  cr_assert_eq(inject(&lib2), 1);
  /* Each library's table got the handlers. */
  cr_assert_neq(CORE(&lib1, RangePushA), sentinel);
  cr_assert_neq(CORE(&lib2, RangePushA), sentinel);
  cr_assert_eq(CORE(&lib1, RangePushA), CORE(&lib2, RangePushA));
  cr_assert_eq(CORE(&lib1, RangePop), CORE(&lib2, RangePop));
  cr_assert_eq(CORE2(&lib1, DomainRangePushEx), CORE2(&lib2, DomainRangePushEx));
  /* Both work, and nesting is the thread's, whichever library pushed. */
  push_a_fn push1 = (push_a_fn)CORE(&lib1, RangePushA), push2 = (push_a_fn)CORE(&lib2, RangePushA);
  pop_fn pop1 = (pop_fn)CORE(&lib1, RangePop), pop2 = (pop_fn)CORE(&lib2, RangePop);
  cr_assert_eq(push1("ckpt:lib1"), 0);
  cr_assert_eq(push2("ckpt:lib2"), 1);
  cr_assert_eq(opened(), 2);
  cr_assert_eq(pop2(), 1);
  cr_assert_eq(pop1(), 0);
  cr_assert_eq(closed(), 2);
  /* Injecting again into an already injected library is harmless. */
  cr_assert_eq(inject(&lib1), 1);
  cr_assert_eq(push1("ckpt:again"), 0);
  cr_assert_eq(pop1(), 0);
  cr_assert_eq(opened(), 3);
  cr_assert_eq(closed(), 3);
}

Test(nvtx, bad_tables, .init = env) {
  cr_assert_eq(InitializeInjectionNvtx2(NULL), 0, "no export-table function");
  cr_assert_eq(InitializeInjectionNvtx2(no_callbacks_table), 0, "no callbacks table");

  /* A library that offers no CORE2 module still gets the CORE handlers. */
  static struct fake_lib lib;
  fake_lib_init(&lib);
  lib.offer_core2 = false;
  cr_assert_eq(inject(&lib), 1);
  cr_assert_neq(CORE(&lib, RangePushA), sentinel);
  cr_assert_eq(CORE2(&lib, DomainRangePushEx), sentinel);

  /* Slots beyond the size the library reports, or without a pointer, are
   * not written. */
  static struct fake_lib small;
  fake_lib_init(&small);
  small.core_size = NVTX_CBID_CORE_RangePushA + 1; /* up to RangePushA */
  small.core_table[NVTX_CBID_CORE_RangePushEx] = NULL;
  cr_assert_eq(inject(&small), 1);
  cr_assert_neq(CORE(&small, RangePushA), sentinel);
  cr_assert_eq(CORE(&small, RangePushEx), sentinel, "NULL table entry");
  cr_assert_eq(CORE(&small, RangePushW), sentinel, "beyond the reported size");
  cr_assert_eq(CORE(&small, RangePop), sentinel, "beyond the reported size");
}

/* NVTX nesting is per thread: another thread's pushes and pops neither close
 * this thread's region nor count against its levels. */
struct other_thread {
  push_a_fn push;
  pop_fn pop;
  int levels[4];
};

static void *other_thread_main(void *argp) {
  struct other_thread *o = argp;
  o->levels[0] = o->push("matmul");
  o->levels[1] = o->pop();
  o->levels[2] = o->pop(); /* nothing pushed on this thread any more */
  o->levels[3] = 0;
  return NULL;
}

Test(nvtx, nesting_is_per_thread, .init = env) {
  static struct fake_lib lib;
  fake_lib_init(&lib);
  cr_assert_eq(inject(&lib), 1);
  push_a_fn push = (push_a_fn)CORE(&lib, RangePushA);
  pop_fn pop = (pop_fn)CORE(&lib, RangePop);
  cr_assert_eq(push("ckpt:main"), 0);
  cr_assert_eq(push("inner"), 1);
  struct other_thread o = {.push = push, .pop = pop};
  pthread_t th;
  cr_assert_eq(pthread_create(&th, NULL, other_thread_main, &o), 0);
  cr_assert_eq(pthread_join(th, NULL), 0);
  cr_assert_eq(o.levels[0], 0, "the other thread starts at level 0");
  cr_assert_eq(o.levels[1], 0);
  cr_assert_lt(o.levels[2], 0, "unbalanced pop on that thread");
  cr_assert_eq(closed(), 0, "this thread's region is still open");
  cr_assert_eq(pop(), 1);
  cr_assert_eq(pop(), 0);
  cr_assert_eq(closed(), 1);
}
