/* log: leveled messages to stderr or CKPT_DEBUG_FILE.
 *
 * A disabled level costs one integer comparison and does not evaluate the
 * arguments. The formatter uses a stack buffer and one write(2): no malloc, no
 * stdio locks, errno preserved, so it is usable from hooks and before params
 * are loaded (then the level is WARN and the destination stderr).
 */
#ifndef CKPT_LOG_H
#define CKPT_LOG_H

enum { CKPT_LOG_NONE, CKPT_LOG_WARN, CKPT_LOG_INFO, CKPT_LOG_TRACE };

/* Current level; set from CKPT_DEBUG when params load. */
extern int ckpt_log_level;

#define ckpt_log_on(lvl) \
  __builtin_expect(__atomic_load_n(&ckpt_log_level, __ATOMIC_RELAXED) >= (lvl), 0)

#define CKPT_LOG_AT(lvl, ...)                                \
  do {                                                       \
    if (ckpt_log_on(lvl))                                    \
      ckpt_log_emit((lvl), __FILE__, __LINE__, __VA_ARGS__); \
  } while (0)

#define CKPT_WARN(...) CKPT_LOG_AT(CKPT_LOG_WARN, __VA_ARGS__)
#define CKPT_INFO(...) CKPT_LOG_AT(CKPT_LOG_INFO, __VA_ARGS__)
#define CKPT_TRACE(...) CKPT_LOG_AT(CKPT_LOG_TRACE, __VA_ARGS__)

/* At most once per call site per process (the flag is only spent when the
 * message is actually printed, so raising the level later still shows it). */
#define CKPT_WARN_ONCE(...)                                                      \
  do {                                                                           \
    static int ckpt_warned_once_;                                                \
    if (ckpt_log_on(CKPT_LOG_WARN) &&                                            \
        !__atomic_exchange_n(&ckpt_warned_once_, 1, __ATOMIC_RELAXED))           \
      ckpt_log_emit(CKPT_LOG_WARN, __FILE__, __LINE__, __VA_ARGS__);             \
  } while (0)

/* Formats "libckpt[pid] LEVEL [file:line ]message\n" (file:line when the
 * current level is TRACE) and writes it with one write(2). Long messages are
 * cut and end in "...". */
void ckpt_log_emit(int level, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* "libckpt[pid] message\n" to the same destination, whatever the level (the
 * exit summary: asked for by CKPT_STATS_AT_EXIT, so CKPT_DEBUG does not hide it). */
void ckpt_log_print(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Checks CKPT_DEBUG_FILE now (may it be opened, or created?) rather than at
 * the first message, so that an unusable path is reported at start (once,
 * path and reason; logging then goes to stderr). Creates nothing: the file is
 * still opened at the first message. */
void ckpt_log_open_now(void);

/* Called by params: sets the level and the log file (NULL or "" = stderr).
 * The file is opened on the first message; "%p" -> pid, "%h" -> hostname,
 * "%%" -> "%". A forked child re-opens it when the path has %p. */
void ckpt_log_configure(int level, const char *path);

/* For tests: send messages to fd (not closed by the logger), whatever the
 * configured file; fd < 0 returns to the configured destination. */
void ckpt_log_set_fd(int fd);

#endif /* CKPT_LOG_H */
