/* havmsd: the per-host failover agent (see agent.h, docs/failover.md). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "agent.h"
#include "havms-config.h"
#include "log.h"

static void usage(FILE *f)
{
        fprintf(f, "usage: havmsd [-c CONFIG] [--syslog] [-v]\n"
                   "  -c, --config FILE  host configuration (default %s/havms.conf)\n"
                   "      --syslog       log to syslog instead of stderr\n"
                   "  -v, --verbose      debug logging\n"
                   "havmsd joins corosync, supervises checkpointd (started with --managed)\n"
                   "and takes VMs over when their host dies (docs/failover.md).\n",
                HAVMS_SYSCONFDIR);
}

int main(int argc, char **argv)
{
        const char *config = HAVMS_SYSCONFDIR "/havms.conf";
        bool use_syslog = false;
        enum log_level level = LOG_LVL_INFO;
        static const struct option opts[] = {
                { "config", required_argument, NULL, 'c' },
                { "syslog", no_argument, NULL, 'S' },
                { "verbose", no_argument, NULL, 'v' },
                { "help", no_argument, NULL, 'h' },
                { 0 },
        };
        int o;
        while ((o = getopt_long(argc, argv, "c:vh", opts, NULL)) != -1) {
                switch (o) {
                case 'c': config = optarg; break;
                case 'S': use_syslog = true; break;
                case 'v': level = LOG_LVL_DEBUG; break;
                case 'h': usage(stdout); return 0;
                default: usage(stderr); return 2;
                }
        }
        log_open("havmsd", use_syslog, level);
        struct agent *a = NULL;
        char err[512];
        if (agent_init(&a, config, err, sizeof(err)) < 0) {
                log_msg(LOG_LVL_ERR, NULL, NULL, -1, "%s", err);
                return 1;
        }
        int r = agent_run(a);
        agent_free(a);
        return r < 0 ? 1 : 0;
}
