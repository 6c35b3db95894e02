/* libckpt public C API.
 *
 * libckpt is preloaded into a training process (LD_PRELOAD=libckpt.so). It tags
 * device allocations made inside checkpoint regions, offloads the ones that are
 * only needed for backward to host memory, and restores them at the same address.
 * Every function returns 0 (or a positive id) on success and a negative
 * CKPT_E* code on failure; none of them aborts the process.
 */
#ifndef CKPT_H
#define CKPT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes (negative return values). */
enum ckpt_error {
  CKPT_OK = 0,
  CKPT_EINVAL = -1,    /* bad argument */
  CKPT_ENOENT = -2,    /* no such region / pointer not tagged */
  CKPT_ESTATE = -3,    /* wrong state (no open region, region still open, ...) */
  CKPT_ENOMEM = -4,    /* host or device memory exhausted */
  CKPT_EDRIVER = -5,   /* the CUDA driver returned an error (logged) */
  CKPT_EDISABLED = -6, /* libckpt is disabled (pass-through) in this process */
  CKPT_ETIMEDOUT = -7, /* ckpt_wait(): the copies did not finish within CKPT_WAIT_TIMEOUT (logged; they go on) */
};

/* Where the bytes of a tagged allocation live now. */
enum ckpt_residency {
  CKPT_UNTAGGED = 0,   /* not a tagged allocation */
  CKPT_DEVICE = 1,     /* device memory, as allocated */
  CKPT_OFFLOADING = 2, /* copy to host in flight; device copy still valid */
  CKPT_HOST = 3,       /* VA mapped onto host memory; device memory released */
  CKPT_RESTORING = 4,  /* copy back in flight; host copy still valid */
  CKPT_PEER = 5,       /* partitioned across peer ranks (peer mode) */
};

/* ---- regions and tagging ------------------------------------------------- */

/* Opens a region (process-wide, nestable). Returns its id (> 0) or < 0. */
int ckpt_region_begin(const char *name);
/* Closes the innermost open region. Returns its id or < 0. */
int ckpt_region_end(void);
/* 0 and fills *region_id / *residency (either may be NULL) when dptr lies
 * anywhere inside a tagged allocation; CKPT_ENOENT otherwise. */
int ckpt_query(uintptr_t dptr, int *region_id, int *residency);

/* ---- offload and restore (CKPT_MODE=host) -------------------------------- */

/* Starts offloading the survivors of a closed region now (policy override). */
int ckpt_offload(int region);
/* Starts copying a region back to the device; returns without waiting. */
int ckpt_prefetch(int region);
/* Prefetch + the program's streams wait (at a gate enqueued now) for the swap
 * back to device memory, so any work enqueued afterwards on them reads device
 * memory. Does not block the host; ckpt_wait() does. Streams libckpt knows:
 * those tagged memory was allocated on and those named by ckpt_set_stream(). */
int ckpt_restore(int region);
/* ckpt_restore() of the region holding dptr (any byte of a tagged allocation). */
int ckpt_restore_ptr(uintptr_t dptr);
/* Blocks the calling host thread until the region's offload or restore is
 * done; CKPT_ETIMEDOUT after CKPT_WAIT_TIMEOUT ms (logged: a stream blocked on
 * the host or a stuck copy; the copies go on and a later ckpt_wait may succeed). */
int ckpt_wait(int region);
/* Marks the start of a new training step (forward pass): a new offload cycle. */
int ckpt_step(void);

/* Tells libckpt which stream the calling thread launches work on (frameworks
 * know their "current stream", the driver does not). 0 = legacy stream. */
int ckpt_set_stream(uintptr_t cu_stream);

/* Returns the device memory held by free cached mappings, and the idle pinned
 * host blocks, to the driver (like torch.cuda.empty_cache()). Returns the
 * device bytes released, capped at INT_MAX. */
int ckpt_release_cached(void);

/* ---- stats ---------------------------------------------------------------- */

struct ckpt_stats {
  uint64_t size;                  /* sizeof(struct ckpt_stats) as filled */
  uint64_t hooked_calls;          /* driver calls that went through a hook */
  uint64_t regions_opened;
  uint64_t regions_closed;
  uint64_t tagged_allocs;         /* tagged allocations made (total) */
  uint64_t tagged_allocs_live;
  uint64_t tagged_bytes_live;     /* requested bytes of live tagged allocations */
  uint64_t untagged_allocs;       /* allocations passed to the driver untouched */
  uint64_t mapping_cache_hits;    /* tagged allocs served without driver calls */
  uint64_t mapping_cache_bytes;   /* device bytes held by cached free mappings */
  uint64_t offloads;              /* survivors offloaded (total) */
  uint64_t offloaded_bytes_total;
  uint64_t restores;
  uint64_t restored_bytes_total;
  uint64_t host_bytes_in_use;     /* host pool bytes backing tagged data now */
  uint64_t host_pool_bytes;       /* host pool bytes created (in use + idle) */
  uint64_t device_bytes_released; /* device bytes released by offload, now */
  uint64_t device_bytes_released_peak;
  double copy_seconds_total;      /* time the copy stream spent copying */
  double stall_seconds_total;     /* time consumers waited for restores */
  uint64_t host_pool_exhausted;   /* survivors kept on device: host pool full */
  uint64_t restore_oom;           /* restores left host-backed: device OOM */
  uint64_t driver_errors;         /* failed driver calls libckpt made itself (logged or worked around) */
  uint64_t device_used_now;       /* from cuMemGetInfo, last sample */
  uint64_t device_used_peak;
  uint64_t gate_timeouts;         /* gates opened without swapping: an arrival or the submission lock timed out */
  uint64_t captured_allocs;       /* allocations on a capturing stream, passed through untagged */
  uint64_t swaps_deferred_capture; /* gates refused (batch rolled back) while a capture was active on the device */
  uint64_t streams_known;         /* streams libckpt fences and holds now (all devices) */
  /* peer modes, contiguous buffers, verify (appended: older readers stop above) */
  uint64_t peer_bytes_in_use;     /* bytes of this rank's slices held now (device or host slabs) */
  uint64_t peer_slab_bytes;       /* bytes of slice buffers (slabs) created, in use + idle */
  uint64_t store_allocs;          /* backing memory the stores created (host blocks, slabs): 0 per step after warm-up */
  uint64_t contiguous_bytes;      /* bytes of kept (CKPT_CONTIGUOUS) slice buffers */
  uint64_t allocs_avoided;        /* slices placed in a contiguous buffer made by an earlier job */
  uint64_t peer_mismatches;       /* peer jobs the ranks disagreed on (rolled back or failed) */
  uint64_t peer_lost;             /* allocations whose slices were lost with a failed peer group */
  uint64_t verify_checked;        /* restores whose checksum matched (CKPT_VERIFY) */
  uint64_t verify_failures;       /* restores whose checksum did not match (each logged) */
  /* CKPT_BUDGET: what the budget chose last and why (CKPT_BUDGET_WHY_*). */
  uint64_t budget_mode;           /* CKPT_BUDGET_OFF, _AUTO, _BYTES */
  uint64_t budget_bytes;          /* CKPT_BUDGET=<bytes>; 0 otherwise */
  uint64_t budget_why;            /* the reason of the last decision */
  uint64_t budget_kept_regions;   /* region trees the budget kept on the device (total) */
  uint64_t budget_kept_bytes;     /* their survivors' device bytes (total) */
  uint64_t budget_survivor_bytes; /* device bytes held by closed regions' survivors after the last decision */
  double budget_d2h_gbps;         /* copy bandwidth measured in this run (any budget), device to host (0: not yet) */
  double budget_h2d_gbps;         /* host to device */
  double budget_copy_ratio;       /* auto: copy time / compute time of the last region decided (0: unknown) */
  /* pipeline schedules (appended) */
  uint64_t regions_carried;       /* region trees carried into the next cycle at the last turn: not restored yet (1F1B) */
};

/* stats.budget_mode */
enum { CKPT_BUDGET_OFF = 0, CKPT_BUDGET_AUTO = 1, CKPT_BUDGET_BYTES = 2 };
/* stats.budget_why */
enum {
  CKPT_BUDGET_WHY_NONE = 0,      /* off, or nothing decided yet */
  CKPT_BUDGET_WHY_MEASURING = 1, /* auto: the link or the region's compute not measured yet */
  CKPT_BUDGET_WHY_HIDDEN = 2,    /* auto: the copies hide behind the compute: offloaded */
  CKPT_BUDGET_WHY_LINK = 3,      /* auto: the copies would not hide: kept on the device */
  CKPT_BUDGET_WHY_OVER = 4,      /* bytes: survivors over the budget: offloaded */
  CKPT_BUDGET_WHY_UNDER = 5,     /* bytes: survivors under the budget: kept on the device */
};

/* Copies up to `size` bytes of the stats into *out (pass sizeof(*out)). */
int ckpt_stats_get(struct ckpt_stats *out, size_t size);

/* DeepSpeed's profile / synchronize_checkpoint_boundary at run time (the same
 * as CKPT_PROFILE / CKPT_SYNC): per-region forward and backward device time
 * in the stats, and a device synchronisation at every region boundary. */
int ckpt_profile_set(int profile, int synchronize);

/* ---- peer modes (CKPT_MODE=peer / peer+host) ------------------------------ */

/* The peer group is CKPT_PEER_SIZE/CKPT_PEER_RANK/CKPT_PEER_ID_FILE, or these
 * two calls (what a framework binding uses: rank 0 makes the id, the group's
 * own broadcast hands it to the others, every rank joins). The id is NCCL's
 * (128 bytes). Join on the device the tagged memory lives on (its context
 * current); bounded by CKPT_PEER_TIMEOUT_MS; once per process. The id is
 * bytes, not a string (char * for bindings). */
int ckpt_peer_unique_id(char *out, size_t len);
int ckpt_peer_init(const char *id, size_t len, int size, int rank);

/* Never offload the tagged allocation holding ptr again (it is restored now
 * if it is not on the device). For buffers handed to NCCL (ncclCommRegister)
 * or anything else that keeps the address: libckpt does not see those. */
int ckpt_pin(uintptr_t ptr);

/* Returns the mode in effect: "none", "host", "peer" or "peer+host". */
const char *ckpt_mode(void);

/* ---- random numbers: cuRAND replay and named RNG states ------------------
 * libckpt intercepts the cuRAND host API (libcurand.so.10) and tracks each
 * generator's seed and position. Replayable: generator types XORWOW
 * (= PSEUDO_DEFAULT), MRG32K3A and PHILOX4_32_10, device or host, with the
 * orderings PSEUDO_DEFAULT, PSEUDO_BEST and PSEUDO_LEGACY, while every call
 * since the last curandSetGeneratorOffset moved the position by a known
 * amount (README "Random numbers" has the table). Others are reported once
 * and never touched. torch/flash-attention dropout does not use cuRAND: the
 * Python package restores torch's Philox seed/offset for its recomputes. */

/* Sets every replayable cuRAND generator (and the named RNG states) back to
 * the state recorded when `region` opened, so that recomputing the region
 * draws exactly the numbers its first forward drew. A generator created
 * inside the region restarts from its state before its first draw.
 * Returns 0; CKPT_ENOENT when the region has no record (never opened, or
 * retired) or a generator it used was destroyed since (nothing is changed
 * then); CKPT_ESTATE when a replay is already active; CKPT_EDRIVER when
 * cuRAND refused a reset (everything is put back). Not replayable generators
 * (see the README) are left alone, with one warning each. */
int ckpt_region_replay_begin(int region);

/* Puts every generator reset by ckpt_region_replay_begin, and the named RNG
 * states, back where they were when it was called: the forward continues its
 * own sequence as if no replay had happened. CKPT_ESTATE when no replay is
 * active. */
int ckpt_region_replay_end(void);

/* ---- named RNG states (DeepSpeed's CudaRNGStatesTracker) ------------------ */

/* Adds a named state seeded with `seed`. CKPT_EINVAL when the name is NULL,
 * empty or 64 bytes or longer, or when the name or the seed was already
 * added (the tracker refuses both, as the reference does). */
int ckpt_rng_add(const char *name, unsigned long long seed);

/* Switches every replayable cuRAND generator to the named state (NULL =
 * "model-parallel-rng") until ckpt_rng_unfork. Forks nest (16 deep).
 * CKPT_ENOENT when the name was never added. */
int ckpt_rng_fork(const char *name);

/* Leaves the innermost fork: the named state keeps the positions its
 * generators reached, and they return to the outer state. CKPT_ESTATE when
 * not forked. */
int ckpt_rng_unfork(void);

/* A copy of all named states (names, seeds, positions), for saving around a
 * recompute the way the reference's get_states/set_states are used. */
struct ckpt_rng_states;

/* *out receives a new copy, to be freed with ckpt_rng_states_free. */
int ckpt_rng_get_states(struct ckpt_rng_states **out);

/* Replaces the named states with a copy of `states` (the set of seeds
 * already added is kept, as the reference does). */
int ckpt_rng_set_states(const struct ckpt_rng_states *states);

void ckpt_rng_states_free(struct ckpt_rng_states *states);

/* Number of named states in a copy (>= 0), and entry i's name (valid while
 * the copy lives) and seed. */
int ckpt_rng_states_count(const struct ckpt_rng_states *states);
int ckpt_rng_states_entry(const struct ckpt_rng_states *states, int i, const char **name,
                          unsigned long long *seed);

/* Forgets every named state and seed (the reference's reset). */
int ckpt_rng_reset(void);

/* Model-parallel seeding: resets the tracker, puts every replayable cuRAND
 * generator in the default state (seed `seed`, offset 0) and adds the state
 * "model-parallel-rng" with seed seed + 2718 + tp_rank. CKPT_EINVAL for a
 * negative tp_rank. */
int ckpt_rng_model_parallel_seed(unsigned long long seed, int tp_rank);

/* Called by the Python package (ckpt.autopatch) once it has installed what
 * CKPT_PATCH / CKPT_REGIONS ask for; only sets a flag, returns 0. In a Python process
 * where it was never called, libckpt warns at exit that those variables had
 * no effect (LD_PRELOAD without ckpt-run). */
int ckpt_python_loaded(void);

#ifdef __cplusplus
}
#endif
#endif /* CKPT_H */
