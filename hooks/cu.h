/* Every libckpt file includes cuda.h through here: with the driver's own
 * internal define, cuda.h declares each entry point under its real exported
 * name (plain, _v2 and _ptsz alike) instead of macro-renaming them. */
#ifndef CKPT_CU_H
#define CKPT_CU_H
#ifndef __CUDA_API_VERSION_INTERNAL
#define __CUDA_API_VERSION_INTERNAL 1
#endif
#include <cuda.h>
#endif
