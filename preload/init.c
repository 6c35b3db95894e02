/* The constructor: tiny on purpose. It runs in every process the preload
 * reaches (shells, compilers, data-loader workers), so it only sets two
 * variables when they are unset; everything else waits for the first hook. */
#define _GNU_SOURCE
#include <dlfcn.h>

#include "../hooks/core.h"

void ckpt_preload_ctor_done(void); /* interpose.c */

__attribute__((constructor)) static void ckpt_preload_ctor(void) {
  Dl_info info;
  if (dladdr((void *)ckpt_preload_ctor, &info) && info.dli_fname) ckpt_preload_env(info.dli_fname);
  else ckpt_preload_env(NULL);
  ckpt_preload_ctor_done();
}
