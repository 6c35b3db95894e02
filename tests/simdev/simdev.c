/* The simulator's configuration (read from the environment once), logging and
 * time helpers. The driver entry points live in the files named for what they
 * simulate: device.c, mem.c, pool.c, vmm.c, stream.c, event.c, copy.c. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "simdev_internal.h"

#define GiB (1024ull * 1024 * 1024)

struct sd_config sd_cfg = {
    .ndev = 1,
    .device_bytes = 16 * GiB,
    .host_bytes = 8 * GiB,
    .granularity = 2u << 20,
    .host_granularity = (size_t)4 << 20, /* strict: not the device's (see read_config) */
    .host_numa_nodes = 1,
    .max_connections = 8,
};
size_t sd_page = 4096;

static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static bool parse_size(const char *s, size_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *s == '-')
        return false;
    unsigned shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    case 't': case 'T': shift = 40; end++; break;
    }
    if (*end == 'i' && shift)
        end++;
    if ((*end == 'b' || *end == 'B') && shift)
        end++;
    if (*end || (shift && v > (~0ull >> shift)))
        return false;
    *out = (size_t)(v << shift);
    return true;
}

static void env_size(const char *name, size_t *dst, const char *expected)
{
    const char *s = getenv(name);
    size_t v;
    if (!s || !*s)
        return;
    if (parse_size(s, &v))
        *dst = v;
    else
        sd_say("simdev: ignoring %s=%s (expected %s)", name, s, expected);
}

static void read_config(void)
{
    long page = sysconf(_SC_PAGESIZE);
    if (page > 0)
        sd_page = (size_t)page;

    const char *s = getenv("SIMDEV_DEBUG");
    if (s && *s)
        sd_cfg.debug = *s == '2' ? 2 : strcmp(s, "0") != 0;

    size_t v = 0;
    s = getenv("SIMDEV_DEVICES");
    if (s && *s) {
        if (parse_size(s, &v) && v >= 1 && v <= SD_MAX_DEVICES)
            sd_cfg.ndev = (int)v;
        else
            sd_say("simdev: ignoring SIMDEV_DEVICES=%s (expected 1..%d)", s, SD_MAX_DEVICES);
    }
    env_size("SIMDEV_DEVICE_BYTES", &sd_cfg.device_bytes, "a byte count such as 16G");
    env_size("SIMDEV_HOST_BYTES", &sd_cfg.host_bytes, "a byte count such as 8G");

    v = sd_cfg.granularity;
    env_size("SIMDEV_GRANULARITY", &v, "a byte count such as 2M");
    if (v >= sd_page && (v & (v - 1)) == 0)
        sd_cfg.granularity = v;
    else
        sd_say("simdev: ignoring SIMDEV_GRANULARITY=%zu (expected a power of two >= %zu)", v, sd_page);

    /* The driver gives each location type its own granularity
     * (cuMemGetAllocationGranularity takes the allocation's properties). An
     * H200 reports 2 MiB for both; simdev's host one is 4 MiB unless
     * SIMDEV_HOST_GRANULARITY says otherwise, so code that sizes or aligns
     * host-located memory by the device's granularity is caught. */
    v = sd_cfg.host_granularity;
    env_size("SIMDEV_HOST_GRANULARITY", &v, "a byte count such as 4M");
    if (v >= sd_page && (v & (v - 1)) == 0)
        sd_cfg.host_granularity = v;
    else
        sd_say("simdev: ignoring SIMDEV_HOST_GRANULARITY=%zu (expected a power of two >= %zu)", v, sd_page);

    s = getenv("SIMDEV_HOST_NUMA_NODES");
    if (s && *s) {
        if (parse_size(s, &v) && v >= 1 && v <= 64)
            sd_cfg.host_numa_nodes = (int)v;
        else
            sd_say("simdev: ignoring SIMDEV_HOST_NUMA_NODES=%s (expected 1..64)", s);
    }

    v = 0;
    env_size("SIMDEV_STREAM_DELAY_US", &v, "microseconds");
    sd_cfg.stream_delay_us = v > 60000000 ? 60000000 : (unsigned)v;

    s = getenv("SIMDEV_COPY_GBPS");
    if (s && *s) {
        char *end;
        double g = strtod(s, &end);
        if (*end == 0 && g >= 0)
            sd_cfg.copy_gbps = g;
        else
            sd_say("simdev: ignoring SIMDEV_COPY_GBPS=%s (expected a rate in GB/s)", s);
    }

    /* The driver's variable, as documented in the CUDA programming guide's
     * table of environment variables: 1 to 32 connections, default 8. */
    s = getenv("CUDA_DEVICE_MAX_CONNECTIONS");
    if (s && *s) {
        if (parse_size(s, &v) && v >= 1 && v <= 32)
            sd_cfg.max_connections = (unsigned)v;
        else
            sd_say("simdev: ignoring CUDA_DEVICE_MAX_CONNECTIONS=%s (expected 1..32)", s);
    }

    s = getenv("SIMDEV_FAIL");
    if (s && *s)
        sd_fail_parse_env(s);

    sd_log("%d device(s) of %zu bytes, host %zu bytes, granularity %zu, %u hardware queues per context",
           sd_cfg.ndev, sd_cfg.device_bytes, sd_cfg.host_bytes, sd_cfg.granularity, sd_cfg.max_connections);
}

void sd_init(void)
{
    pthread_once(&init_once, read_config);
}

static void vsay(const char *fmt, va_list ap)
{
    /* One write per line so lines from several threads do not interleave. */
    char line[512];
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 2)
        n = sizeof line - 2;
    line[n++] = '\n';
    ssize_t w = write(2, line, (size_t)n);
    (void)w;
}

void sd_say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsay(fmt, ap);
    va_end(ap);
}

void sd_log(const char *fmt, ...)
{
    if (!sd_cfg.debug)
        return;
    char buf[480];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    sd_say("simdev: %s", buf);
}

uint64_t sd_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void sd_sleep_ns(uint64_t ns)
{
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000ull), .tv_nsec = (long)(ns % 1000000000ull)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

size_t sd_round_up(size_t n, size_t align)
{
    return (n + align - 1) & ~(align - 1);
}
