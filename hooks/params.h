/* params: every CKPT_* environment variable, from the one table in params.def.
 *
 * The environment is read once (first call of any getter, or ckpt_params_load),
 * values are kept in static storage, and the getters neither lock nor allocate,
 * so they are safe from any thread. This is the only module that calls getenv.
 */
#ifndef CKPT_PARAMS_H
#define CKPT_PARAMS_H

#include <stdint.h>

typedef enum {
#define CKPT_PARAM(id, name, type, def, accepted, doc) CKPT_P_##id,
#include "params.def"
#undef CKPT_PARAM
  CKPT_P__COUNT
} ckpt_param_id;

/* Indices that ckpt_param_int() returns for the ENUM rows the C side reads;
 * they follow the order of the accepted lists in params.def (test_params checks). */
enum ckpt_mode_value { CKPT_MODE_NONE, CKPT_MODE_HOST, CKPT_MODE_PEER, CKPT_MODE_PEER_HOST };
enum ckpt_offload_value { CKPT_OFFLOAD_AUTO, CKPT_OFFLOAD_MANUAL };
/* CKPT_DEBUG's index is the CKPT_LOG_* level of log.h. */

/* Reads the environment once (pthread_once); later calls return at once.
 * Also sets the log level and log file from CKPT_DEBUG / CKPT_DEBUG_FILE, and
 * warns about invalid values and unknown CKPT_* variables. */
void ckpt_params_load(void);

/* INT value, SIZE bytes (-1 = auto, -2 = off), BOOL 0/1, ENUM index into its list. */
int64_t ckpt_param_int(ckpt_param_id id);
/* STRING value, ENUM canonical name as written in the table; for the other
 * types the text that was parsed (the default's text when unset or invalid). */
const char *ckpt_param_str(ckpt_param_id id);
/* "CKPT_MODE" etc. */
const char *ckpt_param_name(ckpt_param_id id);

/* CKPT_HOST_MAX_BYTES in bytes, auto resolved (half of physical RAM divided
 * by LOCAL_WORLD_SIZE, read with the other variables). */
uint64_t ckpt_param_host_max_bytes(void);

/* A variable that is not libckpt's own (PYTORCH_CUDA_ALLOC_CONF,
 * NVTX_INJECTION64_PATH), read raw: this module stays the only getenv caller. */
const char *ckpt_env(const char *name);

/* For tests: re-read every variable through `lookup` (NULL = unset) instead of
 * getenv. Not safe against concurrent readers: strings are rewritten in place. */
void ckpt_params_reload(const char *(*lookup)(const char *name));

/* For the docs generator and tests: the table row as written. NULL when out of range. */
struct ckpt_param_info {
  const char *name, *type, *def, *accepted, *doc;
};
const struct ckpt_param_info *ckpt_param_info(ckpt_param_id id);

#endif /* CKPT_PARAMS_H */
