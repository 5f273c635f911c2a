#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static enum log_level threshold = LOG_LVL_INFO;
static bool to_syslog;
static const char *log_ident = "havms";

void log_open(const char *ident, bool use_syslog, enum log_level level)
{
        log_ident = ident;
        to_syslog = use_syslog;
        threshold = level;
        if (use_syslog)
                openlog(ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
}


const char *log_level_name(enum log_level l)
{
        switch (l) {
        case LOG_LVL_ERR: return "error";
        case LOG_LVL_WARN: return "warning";
        case LOG_LVL_NOTICE: return "notice";
        case LOG_LVL_INFO: return "info";
        case LOG_LVL_DEBUG: return "debug";
        }
        return "?";
}

void log_msg(enum log_level level, const char *msgid, const char *vm,
             int64_t epoch, const char *fmt, ...)
{
        if (level > threshold)
                return;
        char text[1024], prefix[192];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(text, sizeof(text), fmt, ap);
        va_end(ap);

        int n = 0;
        if (msgid)
                n += snprintf(prefix + n, sizeof(prefix) - (size_t)n, "[%s] ", msgid);
        if (vm)
                n += snprintf(prefix + n, sizeof(prefix) - (size_t)n, "vm=%s ", vm);
        if (epoch >= 0)
                snprintf(prefix + n, sizeof(prefix) - (size_t)n, "epoch=%lld ", (long long)epoch);

        if (to_syslog) {
                syslog((int)level, "%s%s", prefix, text);
                return;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        struct tm tm;
        localtime_r(&ts.tv_sec, &tm);
        char line[1400];
        int len = snprintf(line, sizeof(line), "%02d:%02d:%02d.%03ld %s %s: %s%s\n",
                           tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                           log_ident, log_level_name(level), prefix, text);
        if (len > (int)sizeof(line) - 1)
                len = (int)sizeof(line) - 1;
        /* one write per line so threads never interleave within a line */
        ssize_t w = write(STDERR_FILENO, line, (size_t)len);
        (void)w;
}
