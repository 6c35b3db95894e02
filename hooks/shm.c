/* The live stats segment: /dev/shm/libckpt.<uid>.<pid>, owner-only, read by
 * scripts/ckpt-stats from another process at any time. ckpt_publish() is the
 * seqlock writer: no syscall, no lock of its own (the core lock, held by
 * every caller, makes it the only writer), a few kilobytes copied. */
#define _GNU_SOURCE /* program_invocation_short_name */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "state.h"
#include "observers.h"

static struct ckpt_seg *seg;
static char seg_name[64];

static uint64_t realtime_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts); /* vDSO: no syscall */
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Field 22 of /proc/self/stat (start time in clock ticks after boot): with
 * the pid it names this process uniquely, so a reader can tell a segment
 * whose pid was reused. 0 when unreadable. */
static uint64_t proc_start_ticks(void) {
  char buf[1024];
  int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  char *p = strrchr(buf, ')'); /* the command may contain spaces and ')' */
  if (!p) return 0;
  unsigned long long v = 0;
  /* after ")": state is field 3, starttime field 22 */
  if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu", &v) != 1)
    return 0;
  return v;
}

/* Our own pid is in the name, so an existing segment of ours is left over by
 * an earlier process with this pid (or by this one before an exec). */
static bool remove_leftover(void) {
  char path[96];
  struct stat st;
  snprintf(path, sizeof path, "/dev/shm%s", seg_name);
  if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != getuid()) return false;
  return shm_unlink(seg_name) == 0;
}

bool ckpt_shm_create(const char *mode, uint32_t stacks, uint32_t flags) {
  snprintf(seg_name, sizeof seg_name, CKPT_SEG_PREFIX "%u.%d", (unsigned)getuid(), (int)getpid());
  const int oflags = O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
  int fd = shm_open(seg_name, oflags, 0600);
  if (fd < 0 && errno == EEXIST && remove_leftover()) fd = shm_open(seg_name, oflags, 0600);
  if (fd < 0) {
    CKPT_WARN("live stats off: cannot create /dev/shm%s: %s", seg_name, strerror(errno));
    return false;
  }
  struct ckpt_seg *s = MAP_FAILED;
  if (fchmod(fd, 0600) == 0 && ftruncate(fd, sizeof *s) == 0) /* 0600 whatever the umask */
    s = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int err = errno;
  close(fd);
  if (s == MAP_FAILED) {
    CKPT_WARN("live stats off: cannot size or map /dev/shm%s: %s", seg_name, strerror(err));
    shm_unlink(seg_name);
    return false;
  }
  s->h = (struct ckpt_seg_header){
      .version = CKPT_SEG_VERSION,
      .seg_size = sizeof *s,
      .stats_size = sizeof s->stats,
      .name_size = sizeof s->names[0],
      .site_size = sizeof s->sites[0],
      .max_names = CKPT_SEG_MAX_NAMES,
      .max_sites = CKPT_SEG_MAX_SITES,
      .max_frames = CKPT_SEG_FRAMES,
      .frame_len = CKPT_SEG_FRAME_LEN,
      .live_off = offsetof(struct ckpt_seg, live),
      .stats_off = offsetof(struct ckpt_seg, stats),
      .names_off = offsetof(struct ckpt_seg, names),
      .sites_off = offsetof(struct ckpt_seg, sites),
      .pid = (int32_t)getpid(),
      .uid = (uint32_t)getuid(),
      .start_realtime_ns = realtime_ns(),
      .proc_start_ticks = proc_start_ticks(),
      .stacks = stacks,
      .flags = flags,
  };
  snprintf(s->h.command, sizeof s->h.command, "%s", program_invocation_short_name);
  snprintf(s->h.mode, sizeof s->h.mode, "%s", mode);
  s->stats.size = sizeof s->stats;
  /* A reader that sees the magic sees the whole header. */
  __atomic_thread_fence(__ATOMIC_RELEASE);
  memcpy(s->h.magic, CKPT_SEG_MAGIC, sizeof s->h.magic);
  seg = s;
  CKPT_INFO("live stats in /dev/shm%s", seg_name);
  return true;
}

void ckpt_publish(void) {
  struct ckpt_seg *s = seg;
  if (!s) return;
  uint64_t q = s->live.seq;
  __atomic_store_n(&s->live.seq, q + 1, __ATOMIC_RELAXED);
  __atomic_thread_fence(__ATOMIC_RELEASE); /* odd before any field changes */
  ckpt_stats_snapshot(&s->stats);
  const struct ckpt_name_stats *names;
  int n = ckpt_name_table(&names);
  memcpy(s->names, names, (size_t)n * sizeof *names);
  s->live.nnames = (uint32_t)n;
  s->live.nsites = (uint32_t)ckpt_callsite_top(s->sites, CKPT_SEG_MAX_SITES);
  s->live.publishes++;
  s->live.updated_realtime_ns = realtime_ns();
  __atomic_store_n(&s->live.seq, q + 2, __ATOMIC_RELEASE); /* every field before even */
}

void ckpt_shm_remove(void) {
  if (!seg) return;
  munmap(seg, sizeof *seg);
  seg = NULL;
  shm_unlink(seg_name);
}

void ckpt_shm_forked(void) { seg = NULL; /* the parent's: never written, never removed here */ }
