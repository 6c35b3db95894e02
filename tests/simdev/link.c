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
 * takes bytes / rate as before, on no channel.
 *
 * The simulator's own cost of a copy (the memcpy after the transfer time, and
 * its page faults) is not link time: a DMA engine streams the next transfer
 * while the last one lands. So the idle time a channel shows right after a
 * transfer, up to what its landing took, is given back to the next transfer
 * on it (sd_link_landed), which then starts that much earlier but never before
 * the channel was free: reservations still never overlap, the rate of one
 * direction still never exceeds SIMDEV_COPY_GBPS, and the data still lands
 * at the end of its reserved time, never earlier. Without this, back-to-back
 * copies of 4 MiB at 1 GB/s used 85% of the channel instead of ~100%. */
#include <pthread.h>

#include "simdev.h"
#include "simdev_internal.h"

enum { LINK_D2H, LINK_H2D, LINK_NONE, LINK_N };

static pthread_mutex_t link_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t channel_free_ns[2];       /* under link_lock: when each channel is free again */
static uint64_t landing_ns[2];            /* under link_lock: what landing the last transfer took */
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

void sd_link_landed(int dir, uint64_t ns)
{
    if (dir != LINK_D2H && dir != LINK_H2D)
        return;
    pthread_mutex_lock(&link_lock);
    landing_ns[dir] = ns;
    pthread_mutex_unlock(&link_lock);
}

int sd_link_transfer(const void *dst, const void *src, size_t n, unsigned long long bytes_per_s)
{
    if (!bytes_per_s || !n)
        return -1;
    uint64_t dur = (uint64_t)((double)n * 1e9 / (double)bytes_per_s);
    bool src_host = on_host(src), dst_host = on_host(dst);
    int dir = src_host == dst_host ? LINK_NONE : src_host ? LINK_H2D : LINK_D2H;
    atomic_fetch_add(&busy_ns[dir], dur);
    atomic_fetch_add(&moved[dir], n);
    if (dir == LINK_NONE) {
        sd_sleep_ns(dur);
        return dir;
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
    uint64_t start = now;
    if (channel_free_ns[dir] > now) {
        start = channel_free_ns[dir];
    } else { /* idle since channel_free: the part of it the last landing took is given back */
        uint64_t idle = now - channel_free_ns[dir];
        start = now - (idle < landing_ns[dir] ? idle : landing_ns[dir]);
    }
    landing_ns[dir] = 0;
    channel_free_ns[dir] = start + dur;
    pthread_mutex_unlock(&link_lock);
    /* The data lands at the end of the transfer, as a reader racing it sees. */
    if (start + dur > now) /* given back more than dur: the transfer ran while the last one landed */
        sd_sleep_ns(start + dur - now);
    return dir;
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
