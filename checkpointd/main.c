/* checkpointd: the per-host havms daemon (see daemon.h). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "havms-config.h"
#include "log.h"

static void usage(FILE *f)
{
        fprintf(f, "usage: checkpointd [-c CONFIG] [--managed] [--syslog] [-v]\n"
                   "  -c, --config FILE  host configuration (default %s/havms.conf)\n"
                   "      --managed      havmsd decides takeovers: a primary that loses its\n"
                   "                     standby holds its output (isolated) until the standby\n"
                   "                     is back or `release`; overrides [host] managed\n"
                   "      --syslog       log to syslog instead of stderr\n"
                   "  -v, --verbose      debug logging\n",
                HAVMS_SYSCONFDIR);
}

int main(int argc, char **argv)
{
        const char *config = HAVMS_SYSCONFDIR "/havms.conf";
        bool use_syslog = false, managed = false;
        enum log_level level = LOG_LVL_INFO;
        static const struct option opts[] = {
                { "config", required_argument, NULL, 'c' },
                { "syslog", no_argument, NULL, 'S' },
                { "managed", no_argument, NULL, 'M' },
                { "verbose", no_argument, NULL, 'v' },
                { "help", no_argument, NULL, 'h' },
                { 0 },
        };
        int o;
        while ((o = getopt_long(argc, argv, "c:vh", opts, NULL)) != -1) {
                switch (o) {
                case 'c': config = optarg; break;
                case 'S': use_syslog = true; break;
                case 'M': managed = true; break;
                case 'v': level = LOG_LVL_DEBUG; break;
                case 'h': usage(stdout); return 0;
                default: usage(stderr); return 2;
                }
        }
        log_open("checkpointd", use_syslog, level);
        static struct daemon d;
        char err[512];
        if (daemon_init(&d, config, managed, err, sizeof(err)) < 0) {
                log_msg(LOG_LVL_ERR, NULL, NULL, -1, "%s", err);
                return 1;
        }
        int r = daemon_run(&d);
        daemon_shutdown(&d);
        return r < 0 ? 1 : 0;
}
