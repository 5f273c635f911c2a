/* log: the one place operator-facing messages are formatted and emitted.
 *
 * Owns: the destination (stderr in the foreground, syslog as a service),
 * the threshold, and the format "LEVEL [ID] vm=NAME epoch=N: text".
 * Does not own: deciding what to log. Library code logs at debug only;
 * the component that makes a decision logs it once, with a stable message
 * ID from docs/messages.md.
 */
#pragma once
#include <stdbool.h>
#include <stdint.h>

enum log_level {
        LOG_LVL_ERR = 3,
        LOG_LVL_WARN = 4,
        LOG_LVL_NOTICE = 5,
        LOG_LVL_INFO = 6,
        LOG_LVL_DEBUG = 7,
};

void log_open(const char *ident, bool use_syslog, enum log_level threshold);

/* "error", "warning", "notice", "info", "debug" */
const char *log_level_name(enum log_level l);

/* msgid: a stable ID such as "HAVMS-CK-1001", or NULL for debug chatter.
 * vm may be NULL; epoch < 0 means "no epoch". */
void log_msg(enum log_level level, const char *msgid, const char *vm,
             int64_t epoch, const char *fmt, ...)
        __attribute__((format(printf, 5, 6)));

#define log_debug(...) log_msg(LOG_LVL_DEBUG, NULL, NULL, -1, __VA_ARGS__)
