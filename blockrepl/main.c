/* blockrepl: serve one disk image over NBD without a peer (BR_MODE_ALONE),
 * until SIGTERM or SIGINT. For tests, and for operators who need to serve a
 * disk by hand; checkpointd runs blockrepl in-process instead. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blockrepl.h"
#include "havms-config.h"
#include "log.h"

static void usage(FILE *f)
{
        fprintf(f, "usage: blockrepl --image PATH --socket PATH [--bitmap PATH] [--read-only] [-v]\n"
                   "  -i, --image PATH   raw image file or block device to serve\n"
                   "  -s, --socket PATH  NBD unix socket to listen on (mode 0600)\n"
                   "  -b, --bitmap PATH  persistent dirty bitmap (created if missing)\n"
                   "  -r, --read-only    refuse writes (EPERM)\n"
                   "  -v, --verbose      debug logging\n"
                   "Any export name is accepted. Stops on SIGTERM or SIGINT.\n");
}

int main(int argc, char **argv)
{
        struct blockrepl_options o = { 0 }; /* name: the image path */
        enum log_level level = LOG_LVL_INFO;
        static const struct option opts[] = {
                { "image", required_argument, NULL, 'i' },
                { "socket", required_argument, NULL, 's' },
                { "bitmap", required_argument, NULL, 'b' },
                { "read-only", no_argument, NULL, 'r' },
                { "verbose", no_argument, NULL, 'v' },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },
                { 0 },
        };
        int c;
        while ((c = getopt_long(argc, argv, "i:s:b:rvh", opts, NULL)) != -1) {
                switch (c) {
                case 'i': o.image = optarg; break;
                case 's': o.socket_path = optarg; break;
                case 'b': o.bitmap_path = optarg; break;
                case 'r': o.read_only = true; break;
                case 'v': level = LOG_LVL_DEBUG; break;
                case 'h': usage(stdout); return 0;
                case 'V': printf("blockrepl %s\n", HAVMS_VERSION); return 0;
                default: usage(stderr); return 2;
                }
        }
        if (!o.image || !o.socket_path || optind != argc) {
                usage(stderr);
                return 2;
        }
        log_open("blockrepl", false, level);

        /* Blocked before any thread starts, so only sigwait() sees them. */
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGINT);
        pthread_sigmask(SIG_BLOCK, &set, NULL);
        signal(SIGPIPE, SIG_IGN);

        struct blockrepl *b;
        char err[512];
        if (blockrepl_open(&o, &b, err, sizeof(err)) < 0) {
                log_msg(LOG_LVL_ERR, NULL, NULL, -1, "%s", err);
                return 1;
        }
        int sig;
        while (sigwait(&set, &sig) != 0)
                ;
        struct blockrepl_stats st;
        blockrepl_get_stats(b, &st);
        log_msg(LOG_LVL_DEBUG, NULL, NULL, -1,
                "signal %d: stopping after %llu reads, %llu writes, %llu flushes", sig,
                (unsigned long long)st.reads, (unsigned long long)st.writes,
                (unsigned long long)st.flushes);
        blockrepl_close(b);
        return 0;
}
