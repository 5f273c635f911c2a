/* havmsctl: the operator's command line. A thin client: every command is
 * a request to the local checkpointd over its control socket, except
 * check-config, which runs the daemon's own configuration checks, and the
 * cluster view (`status` without a VM, `events`), which asks havmsd on its
 * own socket (cluster.c prints it). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "cluster.h"
#include "ctl.h"
#include "havms-config.h"
#include "wake.h"

#define DEFAULT_SOCKET "/run/havms/checkpointd.sock"

struct ctx {
        const char *socket;
        const char *havmsd_socket;
        const char *max_events; /* events -n N */
        bool json;
        bool force;
        const char *peer;
        bool reset;
        const char *generation;
        const char *to;         /* switchover --to HOST */
};

/* One request to the daemon at sock: 0 with *ret the ok response; 3 if it
 * cannot be reached, 1 if it refused (both said on stderr, or as JSON). */
static int call_at(struct ctx *c, const char *sock, const char *daemon, const char *cmd,
                   const char *vm, json_object *args, int timeout_ms, json_object **ret)
{
        json_object *req = json_object_new_object();
        json_object_object_add(req, "cmd", json_object_new_string(cmd));
        if (vm)
                json_object_object_add(req, "vm", json_object_new_string(vm));
        if (args)
                json_object_object_add(req, "args", args);
        json_object *resp = NULL;
        int r = ctl_call(sock, req, timeout_ms, &resp);
        json_object_put(req);
        if (r < 0) {
                fprintf(stderr, "havmsctl: cannot talk to %s at %s: %s%s\n", daemon, sock,
                        strerror(-r), r == -ENOENT || r == -ECONNREFUSED ? " (is it running?)" : "");
                return 3;
        }
        json_object *ok, *err;
        if (!json_object_object_get_ex(resp, "ok", &ok) || !json_object_get_boolean(ok)) {
                if (c->json)
                        printf("%s\n", json_object_to_json_string_ext(resp, JSON_C_TO_STRING_PLAIN));
                else
                        fprintf(stderr, "havmsctl %s: %s\n", cmd,
                                json_object_object_get_ex(resp, "error", &err)
                                        ? json_object_get_string(err) : "failed");
                json_object_put(resp);
                return 1;
        }
        *ret = resp;
        return 0;
}

static int call(struct ctx *c, const char *cmd, const char *vm, json_object *args,
                int timeout_ms, json_object **ret)
{
        return call_at(c, c->socket, "checkpointd", cmd, vm, args, timeout_ms, ret);
}

static const char *get_s(json_object *o, const char *k)
{
        json_object *x;
        return json_object_object_get_ex(o, k, &x) ? json_object_get_string(x) : "";
}

static int64_t get_i(json_object *o, const char *k, int64_t def)
{
        json_object *x;
        return json_object_object_get_ex(o, k, &x) ? json_object_get_int64(x) : def;
}

static void print_vm(json_object *vm)
{
        printf("%-12s %-16s %-8s %-10s %-5s %8lld %8lld", get_s(vm, "name"), get_s(vm, "state"),
               get_s(vm, "role"), get_s(vm, "peer")[0] ? get_s(vm, "peer") : "-",
               get_s(vm, "link"), (long long)get_i(vm, "committed_epoch", 0),
               (long long)get_i(vm, "lag_ms", -1));
        json_object *x;
        if (json_object_object_get_ex(vm, "last_pause_ms", &x))
                printf(" %7.2f", json_object_get_double(x));
        else
                printf(" %7s", "-");
        printf(" %-5s\n", get_s(vm, "accel")[0] ? get_s(vm, "accel") : "-");
        json_object *s;
        if (json_object_object_get_ex(vm, "sync", &s))
                printf("  sync: %.1f%% at %.1f MiB/s, eta %.0f s, pre-copy round %lld\n",
                       json_object_get_double(json_object_object_get(s, "percent")),
                       json_object_get_double(json_object_object_get(s, "mib_s")),
                       json_object_get_double(json_object_object_get(s, "eta_s")),
                       (long long)get_i(s, "round", 0));
        printf("  generation %lld%s%s\n", (long long)get_i(vm, "generation", 0),
               get_s(vm, "last_exit")[0] ? ", last exit: " : "", get_s(vm, "last_exit"));
        if (get_s(vm, "last_error")[0])
                printf("  last error: %s\n", get_s(vm, "last_error"));
}

static int do_status(struct ctx *c, const char *vm)
{
        json_object *resp;
        int r = call(c, "status", vm, NULL, 5000, &resp);
        if (r)
                return r;
        if (c->json) {
                printf("%s\n", json_object_to_json_string_ext(resp, JSON_C_TO_STRING_PLAIN));
        } else {
                printf("host %s\n", get_s(resp, "host"));
                json_object *acc;
                if (json_object_object_get_ex(resp, "accel", &acc))
                        printf("accel auto = %s (%s)\n", get_s(acc, "auto"), get_s(acc, "why"));
                printf("%-12s %-16s %-8s %-10s %-5s %8s %8s %7s %-5s\n", "VM", "STATE", "ROLE", "PEER",
                       "LINK", "EPOCH", "LAG_MS", "PAUSE", "ACCEL");
                json_object *vms = json_object_object_get(resp, "vms");
                for (size_t i = 0; i < json_object_array_length(vms); i++)
                        print_vm(json_object_array_get_idx(vms, i));
        }
        json_object_put(resp);
        return 0;
}

/* `status` without a VM: havmsd's cluster view, then this host's
 * checkpointd as `status` always showed it. No havmsd (a host without
 * automatic failover, or havmsd down) is said in one line, not an error:
 * the exit status is checkpointd's. */
static int do_status_all(struct ctx *c)
{
        json_object *req = json_object_new_object(), *cl = NULL;
        json_object_object_add(req, "cmd", json_object_new_string("cluster-status"));
        int r = ctl_call(c->havmsd_socket, req, 3000, &cl);
        json_object_put(req);
        char why[300] = "";
        json_object *ok;
        if (r == -ETIMEDOUT)
                snprintf(why, sizeof(why), "havmsd: no answer within 3 s at %s; this host's checkpointd only",
                         c->havmsd_socket);
        else if (r < 0)
                snprintf(why, sizeof(why), "havmsd: not reachable at %s (%s); this host's checkpointd only",
                         c->havmsd_socket, strerror(-r));
        else if (!json_object_object_get_ex(cl, "ok", &ok) || !json_object_get_boolean(ok))
                snprintf(why, sizeof(why), "havmsd: cluster-status refused: %s",
                         get_s(cl, "error")[0] ? get_s(cl, "error") : "no reason given");
        if (why[0]) {
                json_object_put(cl);
                cl = NULL;
        }
        if (!c->json) {
                if (cl)
                        cluster_print_status(stdout, cl);
                else
                        printf("%s\n", why);
                printf("\n");
                fflush(stdout);
                json_object_put(cl);
                return do_status(c, NULL);
        }
        /* {"cluster": havmsd's answer or null, "local": checkpointd's or null} */
        if (why[0])
                fprintf(stderr, "%s\n", why);
        json_object *local = NULL;
        req = json_object_new_object();
        json_object_object_add(req, "cmd", json_object_new_string("status"));
        r = ctl_call(c->socket, req, 5000, &local);
        json_object_put(req);
        int rc = 0;
        if (r < 0) {
                fprintf(stderr, "havmsctl: cannot talk to checkpointd at %s: %s\n", c->socket,
                        strerror(-r));
                rc = 3;
        } else if (!json_object_object_get_ex(local, "ok", &ok) || !json_object_get_boolean(ok)) {
                rc = 1;
        }
        json_object *out = json_object_new_object();
        json_object_object_add(out, "cluster", cl);
        json_object_object_add(out, "local", local);
        printf("%s\n", json_object_to_json_string_ext(out, JSON_C_TO_STRING_PLAIN));
        json_object_put(out);
        return rc;
}

/* `switchover VM [--to HOST]`: havmsd (here, or the owner it forwards to)
 * answers with the outcome, so this waits up to the switchover's bound. */
static int do_switchover(struct ctx *c, const char *vm)
{
        json_object *args = json_object_new_object(), *resp;
        json_object_object_add(args, "vm", json_object_new_string(vm));
        if (c->to)
                json_object_object_add(args, "to", json_object_new_string(c->to));
        int r = call_at(c, c->havmsd_socket, "havmsd", "switchover", vm, args, 160000, &resp);
        if (r)
                return r;
        if (c->json)
                printf("%s\n", json_object_to_json_string_ext(resp, JSON_C_TO_STRING_PLAIN));
        else
                printf("%s: switched over to %s: %s\n", vm, get_s(resp, "to"), get_s(resp, "text"));
        json_object_put(resp);
        return 0;
}

/* `events [-n N]`: havmsd's recent failover steps, oldest first. */
static int do_events(struct ctx *c)
{
        long long max = 50;
        if (c->max_events) {
                char *end;
                max = strtoll(c->max_events, &end, 10);
                if (*end || end == c->max_events || max <= 0 || max > 1000000) {
                        fprintf(stderr, "havmsctl events: -n needs a number from 1 to 1000000\n");
                        return 2;
                }
        }
        json_object *args = json_object_new_object(), *resp;
        json_object_object_add(args, "max", json_object_new_int64(max));
        int r = call_at(c, c->havmsd_socket, "havmsd", "events", NULL, args, 5000, &resp);
        if (r)
                return r;
        if (c->json)
                printf("%s\n", json_object_to_json_string_ext(resp, JSON_C_TO_STRING_PLAIN));
        else
                cluster_print_events(stdout, resp);
        json_object_put(resp);
        return 0;
}

static int do_simple(struct ctx *c, const char *cmd, const char *vm, json_object *args,
                     int timeout_ms, const char *done)
{
        json_object *resp;
        int r = call(c, cmd, vm, args, timeout_ms, &resp);
        if (r)
                return r;
        if (c->json)
                printf("%s\n", json_object_to_json_string_ext(resp, JSON_C_TO_STRING_PLAIN));
        else if (!strcmp(cmd, "activate"))
                printf("%s: running here from epoch %lld, generation %lld (activation %lld ms)\n",
                       vm, (long long)get_i(resp, "epoch", 0), (long long)get_i(resp, "generation", 0),
                       (long long)get_i(resp, "activation_ms", 0));
        else if (!strcmp(cmd, "stats"))
                printf("%s\n", json_object_to_json_string_ext(json_object_object_get(resp, "stats"),
                                                              JSON_C_TO_STRING_PRETTY));
        else
                printf("%s: %s\n", vm, done);
        json_object_put(resp);
        return 0;
}

static int check_config(int n, char **files)
{
        int bad = 0;
        for (int i = 0; i < n; i++) {
                char err[512];
                int r;
                const char *f = files[i];
                size_t l = strlen(f);
                if (l > 11 && !strcmp(f + l - 10, "havms.conf")) {
                        struct host_config h;
                        r = host_config_load(f, &h, err, sizeof(err));
                } else {
                        struct vm_config v;
                        r = vm_config_load(f, &v, err, sizeof(err));
                }
                if (r < 0) {
                        fprintf(stderr, "%s\n", err);
                        bad++;
                } else {
                        printf("%s: ok\n", f);
                }
        }
        return bad ? 1 : 0;
}

static void usage(FILE *f)
{
        fprintf(f,
                "usage: havmsctl [-s SOCKET] [-S HAVMSD_SOCKET] [--json] COMMAND [ARGS]\n"
                "commands:\n"
                "  start VM [--generation N] boot VM on this host (unprotected)\n"
                "  stop VM                  end protection and power VM off\n"
                "  kill VM                  for the cluster agent / emergencies: SIGKILL the\n"
                "                           VM's QEMU at once, drop held output, do NOT tell\n"
                "                           the standby: the standby can take over\n"
                "  protect VM [--peer HOST] replicate VM to standby HOST every epoch\n"
                "  unprotect VM             end protection (the standby discards its replica)\n"
                "  status [VM]              role, epoch, lag, last pause, link, sync progress,\n"
                "                           accelerator (and what accel = auto means here);\n"
                "                           without VM, first the cluster as havmsd sees it:\n"
                "                           members, links, quorum, fencing, each VM's owner,\n"
                "                           generation and protection\n"
                "  events [-n N]            havmsd's last N (50) failover steps, oldest first\n"
                "  activate VM [--force] [--generation N]\n"
                "                           take over VM on this (standby) host with a new\n"
                "                           generation (default: the stored one + 1)\n"
                "  release VM               isolated VM: the standby cannot take over (fenced,\n"
                "                           gone): release held output, run unprotected\n"
                "  pause VM                 checkpoint, then hold VM paused (replica == RAM)\n"
                "  resume VM                continue a paused VM\n"
                "  handover VM              switchover, first half: final checkpoint, the\n"
                "                           standby keeps it, VM powered off here (havmsd's\n"
                "                           `switchover` does this and the activation)\n"
                "  stats VM [--reset]       epoch statistics (pause, bytes, compression)\n"
                "  switchover VM [--to HOST]  move protected VM to its standby (HOST must be\n"
                "                           it): final checkpoint with the VM stopped, the\n"
                "                           standby activates, the old primary becomes the\n"
                "                           standby; typed on any host, waits for the outcome\n"
                "  wake --mac MAC --interface IF [--password PW] [--broadcast ADDR] [--port N]\n"
                "                           send one wake-on-LAN magic packet (UDP broadcast\n"
                "                           and EtherType 0x0842 frame) out of IF\n"
                "  check-config FILE...     validate havms.conf or VM definitions\n"
                "  config-reference         list every configuration option\n"
                "options:\n"
                "  -s, --socket PATH  control socket (default $HAVMS_SOCKET or %s)\n"
                "  -S, --havmsd-socket PATH  havmsd's control socket (default\n"
                "                     $HAVMS_HAVMSD_SOCKET or %s)\n"
                "  -j, --json         machine-readable output\n"
                "  -n N               events: how many\n",
                DEFAULT_SOCKET, HAVMSD_DEFAULT_SOCKET);
}

int main(int argc, char **argv)
{
        struct ctx c = { .socket = getenv("HAVMS_SOCKET") ? getenv("HAVMS_SOCKET") : DEFAULT_SOCKET,
                         .havmsd_socket = getenv("HAVMS_HAVMSD_SOCKET") ? getenv("HAVMS_HAVMSD_SOCKET")
                                                                        : HAVMSD_DEFAULT_SOCKET };
        static const struct option opts[] = {
                { "socket", required_argument, NULL, 's' },
                { "havmsd-socket", required_argument, NULL, 'S' },
                { "json", no_argument, NULL, 'j' },
                { "peer", required_argument, NULL, 'p' },
                { "force", no_argument, NULL, 'f' },
                { "reset", no_argument, NULL, 'r' },
                { "help", no_argument, NULL, 'h' },
                { 0 },
        };
        int o;
        while ((o = getopt_long(argc, argv, "+s:S:n:jp:frh", opts, NULL)) != -1) {
                switch (o) {
                case 's': c.socket = optarg; break;
                case 'S': c.havmsd_socket = optarg; break;
                case 'n': c.max_events = optarg; break;
                case 'j': c.json = true; break;
                case 'p': c.peer = optarg; break;
                case 'f': c.force = true; break;
                case 'r': c.reset = true; break;
                case 'h': usage(stdout); return 0;
                default: usage(stderr); return 2;
                }
        }
        /* options may also follow the command: havmsctl protect web01 --peer b */
        if (optind >= argc) {
                usage(stderr);
                return 2;
        }
        const char *cmd = argv[optind++];
        if (!strcmp(cmd, "wake")) /* its own options (wake.c) */
                return wake_main(argc - optind + 1, argv + optind - 1, c.json);
        char *pos[8];
        int npos = 0;
        for (int i = optind; i < argc; i++) {
                if (!strcmp(argv[i], "--json") || !strcmp(argv[i], "-j"))
                        c.json = true;
                else if (!strcmp(argv[i], "--force"))
                        c.force = true;
                else if (!strcmp(argv[i], "--reset"))
                        c.reset = true;
                else if (!strcmp(argv[i], "--peer") && i + 1 < argc)
                        c.peer = argv[++i];
                else if (!strcmp(argv[i], "--generation") && i + 1 < argc)
                        c.generation = argv[++i];
                else if (!strcmp(argv[i], "--to") && i + 1 < argc)
                        c.to = argv[++i];
                else if ((!strcmp(argv[i], "-S") || !strcmp(argv[i], "--havmsd-socket")) && i + 1 < argc)
                        c.havmsd_socket = argv[++i];
                else if (!strcmp(argv[i], "-n") && i + 1 < argc)
                        c.max_events = argv[++i];
                else if (argv[i][0] == '-' && strcmp(cmd, "check-config")) {
                        fprintf(stderr, "havmsctl: unknown option %s\n", argv[i]);
                        return 2;
                } else if (npos < 8)
                        pos[npos++] = argv[i];
        }
        const char *vm = npos ? pos[0] : NULL;
        if (!strcmp(cmd, "check-config"))
                return npos ? check_config(npos, pos) : (usage(stderr), 2);
        if (!strcmp(cmd, "config-reference")) {
                config_print_reference(stdout);
                return 0;
        }
        if (!strcmp(cmd, "status")) /* with a VM: checkpointd's view only, as always */
                return vm ? do_status(&c, vm) : do_status_all(&c);
        if (!strcmp(cmd, "events"))
                return do_events(&c);
        if (!strcmp(cmd, "switchover")) {
                if (!vm) {
                        fprintf(stderr, "havmsctl switchover: needs a VM name\n");
                        return 2;
                }
                return do_switchover(&c, vm);
        }
        static const struct { const char *cmd, *done; int timeout_ms; } simple[] = {
                { "start", "started (unprotected)", 30000 },
                { "stop", "stopped", 30000 },
                { "kill", "killed (the standby was not told: it can take over)", 5000 },
                { "protect", "protection starting (see status)", 10000 },
                { "unprotect", "protection ended", 30000 },
                { "activate", "activated", 60000 },
                { "release", "released: held output flows, unprotected (degraded)", 15000 },
                { "pause", "paused after a committed checkpoint: the replica equals guest RAM", 15000 },
                { "resume", "resumed, protected", 15000 },
                { "handover", "handed over: powered off here, the standby keeps the replica "
                              "(activate it there)", 20000 },
                { "stats", "", 5000 },
        };
        for (size_t i = 0; i < sizeof(simple) / sizeof(simple[0]); i++) {
                if (strcmp(cmd, simple[i].cmd))
                        continue;
                if (!vm) {
                        fprintf(stderr, "havmsctl %s: needs a VM name\n", cmd);
                        return 2;
                }
                json_object *args = json_object_new_object();
                if (c.peer)
                        json_object_object_add(args, "peer", json_object_new_string(c.peer));
                if (c.force)
                        json_object_object_add(args, "force", json_object_new_boolean(1));
                if (c.reset)
                        json_object_object_add(args, "reset", json_object_new_boolean(1));
                if (c.generation) {
                        char *end;
                        long long g = strtoll(c.generation, &end, 10);
                        if (*end || g <= 0) {
                                fprintf(stderr, "havmsctl: --generation needs a number > 0\n");
                                json_object_put(args);
                                return 2;
                        }
                        json_object_object_add(args, "generation", json_object_new_int64(g));
                }
                return do_simple(&c, cmd, vm, args, simple[i].timeout_ms, simple[i].done);
        }
        fprintf(stderr, "havmsctl: unknown command '%s'\n", cmd);
        usage(stderr);
        return 2;
}
