/* The host<->device link that throttled copies cross (SIMDEV_COPY_GBPS).
 *
 * Modelled as one channel per direction, as PCIe and NVLink-C2C are: a
 * device-to-host and a host-to-device copy run at the same time, each at the
 * full rate (an H200 measured 55.4 GB/s each way, 101.8 GB/s both at once),
 * while copies in the same direction share their channel. Sharing is modelled
 * as first come, first served: a copy reserves the channel from the moment it
 * is free for bytes / rate, so two device-to-host copies started together take
 * twice as long as one. Never more lenient than the hardware: the aggregate
 * rate of one direction never exceeds SIMDEV_COPY_GBPS (the old model let
 * every stream copy at the full rate at once).
 *
 * Which side an address is on: host-located VMM memory, pinned host
 * allocations and memory the simulator never handed out (pageable host
 * memory) are the host; everything else is the device. A copy with both ends
 * on one side (device-to-device, host-to-host) does not cross the link: it
 * takes bytes / rate as before, on no channel. */
#include <pthread.h>

#include "simdev.h"
#include "simdev_internal.h"

enum { LINK_D2H, LINK_H2D, LINK_NONE, LINK_N };

static pthread_mutex_t link_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t channel_free_ns[2];       /* under link_lock: when each channel is free again */
static _Atomic unsigned long long busy_ns[LINK_N];
static _Atomic unsigned long long moved[LINK_N];
static _Atomic int paused[2]; /* simdev_link_pause */

void simdev_link_pause(int dir, int on)
{
    if (dir == LINK_D2H || dir == LINK_H2D)
        atomic_store(&paused[dir], on != 0);
}

static bool on_host(const void *p)
{
    uintptr_t a = (uintptr_t)p, base;
    size_t size;
    int loc;
    bool host;
    pthread_mutex_lock(&sd_mem_lock);
    if (sd_vmm_range(a, &base, &size, &loc)) {
        host = loc == SD_LOC_HOST;
    } else {
        const struct sd_region *r = sd_rmap_find(&sd_regions, a);
        host = !r || r->kind == SD_REGION_PINNED;
    }
    pthread_mutex_unlock(&sd_mem_lock);
    return host;
}

void sd_link_transfer(const void *dst, const void *src, size_t n, unsigned long long bytes_per_s)
{
    if (!bytes_per_s || !n)
        return;
    uint64_t dur = (uint64_t)((double)n * 1e9 / (double)bytes_per_s);
    bool src_host = on_host(src), dst_host = on_host(dst);
    int dir = src_host == dst_host ? LINK_NONE : src_host ? LINK_H2D : LINK_D2H;
    atomic_fetch_add(&busy_ns[dir], dur);
    atomic_fetch_add(&moved[dir], n);
    if (dir == LINK_NONE) {
        sd_sleep_ns(dur);
        return;
    }
    for (uint64_t t0 = sd_now_ns(); atomic_load(&paused[dir]);) {
        if (sd_now_ns() - t0 > 60ull * 1000000000ull) {
            sd_say("simdev: link direction %d paused for more than 60 s: lifted", dir);
            atomic_store(&paused[dir], 0);
            break;
        }
        sd_sleep_ns(1000000);
    }
    pthread_mutex_lock(&link_lock);
    uint64_t now = sd_now_ns();
    uint64_t start = channel_free_ns[dir] > now ? channel_free_ns[dir] : now;
    channel_free_ns[dir] = start + dur;
    pthread_mutex_unlock(&link_lock);
    /* The data lands at the end of the transfer, as a reader racing it sees. */
    sd_sleep_ns(start + dur - now);
}

void simdev_link_stats(unsigned long long busy[3], unsigned long long bytes[3])
{
    for (int i = 0; i < LINK_N; i++) {
        if (busy)
            busy[i] = atomic_load(&busy_ns[i]);
        if (bytes)
            bytes[i] = atomic_load(&moved[i]);
    }
}
