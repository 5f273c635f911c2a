/* hv-fence: run one fence action for a host through failover/fence.c, as
 * havmsd would (the asynchronous form: worker thread, completion on an fd
 * waited for with poll), and print every attempt. For tests and by hand.
 *
 *   hv-fence HAVMS.CONF HOST off|on|status|monitor [LEVEL]
 *
 * Output, one line each (values without blanks, or quoted):
 *   start_us=WALL_US                 just before the operation started
 *   attempt level=L action=A agent=X ok=0|1 ms=D end="exit 0" reason="..." output="..."
 *   result ok=0|1 level=L power=on|off|unknown ms=D
 * Exit: 0 done (status: on), 2 status off, 1 failed or unknown, 3 usage or
 * configuration error.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "fence.h"
#include "util.h"

int main(int argc, char **argv)
{
        if (argc < 4 || argc > 5) {
                fprintf(stderr, "usage: hv-fence HAVMS.CONF HOST off|on|status|monitor [LEVEL]\n");
                return 3;
        }
        static struct host_config h;
        char err[512];
        if (host_config_load(argv[1], &h, err, sizeof(err)) < 0) {
                fprintf(stderr, "hv-fence: %s\n", err);
                return 3;
        }
        const struct cfg_fence *f = host_config_fence(&h, argv[2]);
        if (!f) {
                fprintf(stderr, "hv-fence: no [fence %s] in %s\n", argv[2], argv[1]);
                return 3;
        }
        enum fence_action a;
        if (!strcmp(argv[3], "off"))
                a = FENCE_OFF;
        else if (!strcmp(argv[3], "on"))
                a = FENCE_ON;
        else if (!strcmp(argv[3], "status"))
                a = FENCE_STATUS;
        else if (!strcmp(argv[3], "monitor"))
                a = FENCE_MONITOR;
        else {
                fprintf(stderr, "hv-fence: unknown action '%s'\n", argv[3]);
                return 3;
        }
        unsigned level = argc == 5 ? (unsigned)atoi(argv[4]) : 0;

        printf("start_us=%llu\n", (unsigned long long)wall_us());
        fflush(stdout);
        struct fence_op *op;
        int r = fence_start(f, a, level, &op);
        if (r < 0) {
                fprintf(stderr, "hv-fence: cannot start: %s\n", strerror(-r));
                return 3;
        }
        /* the bound fence.h promises, plus slack */
        int limit_ms = (int)(f->n_levels * 2 * f->timeout_ms) + 5000;
        struct pollfd p = { .fd = fence_op_fd(op), .events = POLLIN };
        if (poll(&p, 1, limit_ms) != 1) {
                fprintf(stderr, "hv-fence: no completion within %d ms: fence.c broke its bound\n",
                        limit_ms);
                return 1;
        }
        static struct fence_result res;
        r = fence_op_result(op, &res);
        fence_op_free(op);
        if (r < 0) {
                fprintf(stderr, "hv-fence: %s\n", strerror(-r));
                return 1;
        }
        for (unsigned i = 0; i < res.n_attempts; i++) {
                const struct fence_attempt *t = &res.attempts[i];
                char d[128];
                printf("attempt level=%u action=%s agent=%s ok=%d ms=%llu end=\"%s\" reason=\"%s\" "
                       "output=\"%s\"\n", t->level, t->action, t->agent, t->ok,
                       (unsigned long long)t->run.duration_ms, runner_describe(&t->run, d, sizeof(d)),
                       t->reason, t->run.stderr_tail);
        }
        const char *pw = res.power == FENCE_POWER_ON ? "on"
                       : res.power == FENCE_POWER_OFF ? "off" : "unknown";
        printf("result ok=%d level=%u power=%s ms=%llu\n", res.ok, res.level, pw,
               (unsigned long long)res.duration_ms);
        if (!res.ok)
                return 1;
        return a == FENCE_STATUS && res.power == FENCE_POWER_OFF ? 2 : 0;
}
