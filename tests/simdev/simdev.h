/* Test control of the simulated CUDA driver (libcuda.so.1 built from tests/simdev).
 *
 * The simulator is configured from the environment on its first call:
 *   SIMDEV_DEVICES          number of devices (default 1, at most 16)
 *   SIMDEV_DEVICE_BYTES     capacity of each device (default 16 GiB; K/M/G/T suffixes)
 *   SIMDEV_HOST_BYTES       capacity for host-located VMM memory (default 8 GiB)
 *   SIMDEV_GRANULARITY      VMM granularity of device memory (default 2 MiB, a power of
 *                           two >= page size)
 *   SIMDEV_HOST_GRANULARITY VMM granularity of host-located memory (HOST, HOST_NUMA), which
 *                           cuMemGetAllocationGranularity reports per location type
 *                           (default 4 MiB, unlike the device's: strict)
 *   SIMDEV_HOST_NUMA_NODES  host NUMA nodes: valid CU_MEM_LOCATION_TYPE_HOST_NUMA ids are
 *                           0 .. n-1 (default 1)
 *   CUDA_DEVICE_MAX_CONNECTIONS  hardware work queues per context, 1..32 (default 8), as
 *                           the driver reads it: streams share them round-robin and a
 *                           blocked operation blocks every stream of its queue
 *   SIMDEV_STREAM_DELAY_US  sleep before each operation of every stream, pure waits
 *                           (cuStreamWaitEvent, stream barriers) excepted (default 0)
 *   SIMDEV_COPY_GBPS        copies take bytes / (rate * 1e9) seconds (default 0: no delay);
 *                           host<->device copies cross a link of one channel per
 *                           direction at that rate (see simdev_link_stats)
 *   SIMDEV_FAIL             name:nth[:code][,...]: the nth call of an entry point
 *                           fails with code (default 2, CUDA_ERROR_OUT_OF_MEMORY);
 *                           nth '*' fails every call; code may be a number or a
 *                           CUDA_ERROR_* name
 *   SIMDEV_DEBUG=1          log allocations, mappings, streams and lookups on stderr;
 *                           =2 also every stream operation as a worker runs it
 * Nothing else is printed, except one "simdev: illegal address ..." line when a
 * context faults and one line per SIMDEV_* variable that cannot be parsed.
 * The functions below change the same settings at run time. All are thread-safe. */
#ifndef SIMDEV_H
#define SIMDEV_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct CUstream_st *simdev_stream_t; /* the same type as CUstream */

/* Memory accounting. `dev` is a device ordinal; out-of-range devices read as 0
 * and are ignored by the setter. Lowering a capacity below what is in use makes
 * the next allocations fail; nothing already allocated is taken away. */
void simdev_set_device_capacity(int dev, size_t bytes);
void simdev_set_host_capacity(size_t bytes);
/* Classic and stream-ordered allocations count in whole pages, VMM in whole granules. */
size_t simdev_device_used(int dev); /* classic + stream-ordered (incl. pool cache) + device VMM */
size_t simdev_host_used(void);      /* host-located VMM memory */

/* Slowness. The per-stream delay applies to `stream` as cuStreamSynchronize
 * would resolve it (0 = the legacy stream of the current context). Returns 0,
 * or -1 for an unknown stream. A rate <= 0 turns the copy delay off. */
int simdev_stream_set_delay_us(simdev_stream_t stream, unsigned us);
void simdev_set_copy_gbps(double gbps);
/* The link's use since start: per direction (0 device-to-host, 1
 * host-to-device, 2 copies that do not cross it), the nanoseconds of transfer
 * time reserved and the bytes moved. Either array may be NULL. A direction's
 * channel serves one copy at a time, so busy[0] / wall time is its utilisation. */
void simdev_link_stats(unsigned long long busy[3], unsigned long long bytes[3]);
/* Test control: while a direction (0 device-to-host, 1 host-to-device) is
 * paused, copies crossing the link that way wait before they start (a
 * saturated channel, made deterministic); the other direction runs on. A
 * pause longer than 60 s is lifted with a message (every wait is bounded). */
void simdev_link_pause(int dir, int paused);

/* The sticky "illegal address" fault a worker records when an operation
 * touches memory without access. */
int simdev_faulted(void);
void simdev_clear_fault(void);

/* Calls per exported entry point, by exact exported name ("cuMemAlloc_v2",
 * "cuMemAllocAsync_ptsz"); 0 for a name the simulator does not export. */
unsigned long simdev_calls(const char *exported_name);
void simdev_reset_calls(void);

/* Fault injection: the nth call of `exported_name` from now on (nth >= 1)
 * returns `code` without doing anything; nth 0 makes every call from now on
 * fail. Returns 0, or -1 for an unknown name or a full rule table. */
int simdev_fail(const char *exported_name, unsigned long nth, int code);
void simdev_fail_clear(void);

/* Finishes all queued stream work and stops every worker thread (optional:
 * workers are detached). Created streams are destroyed (their handles become
 * invalid); the legacy and per-thread default streams come back on next use.
 * A cuStreamWaitValue on a word nobody writes is abandoned. Events and memory
 * stay valid. */
void simdev_shutdown(void);

#ifdef __cplusplus
}
#endif

#endif
