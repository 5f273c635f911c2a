/* wol-listen: the test bed's "NIC firmware" of a powered-off spare host.
 * It listens for wake-on-LAN magic packets the two ways havms sends them,
 * judges each with lib/wol.c's wol_scan (as firmware does), and on the
 * first valid one "powers the host on": runs COMMAND once.
 *
 *   wol-listen --interface IF --mac MAC [--password PW] [--port 9]
 *              [--log FILE] [--no-udp] -- COMMAND ARGS...
 *
 *   UDP:  a datagram socket bound to IF (SO_BINDTODEVICE) on port PORT;
 *   raw:  an AF_PACKET socket for EtherType 0x0842 frames on IF.
 *   --no-udp: no UDP socket, as if UDP never reached the NIC (the test
 *   shows the raw frame alone wakes the host).
 *
 * Log (FILE, appended, or stdout), one line each, fields without blanks:
 *   <wall ms> listening if=IF mac=MAC udp=PORT|off raw=0x0842
 *   <wall ms> udp|raw <verdict> <mac seen or -> len=N from=SOURCE
 *   <wall ms> woken pid=PID by=udp|raw      (after the first valid packet)
 *   <wall ms> already awake                 (after any later valid packet)
 *   <wall ms> command exited status=S       (COMMAND ended; not waited for)
 *   <wall ms> stopped                       (SIGTERM or SIGINT)
 * COMMAND is started with fork+exec and not waited for; it keeps running
 * after wol-listen ends. Exit: 0 after SIGTERM/SIGINT, 1 on a setup
 * failure (said on stderr), 2 on a usage error.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util.h"
#include "wol.h"

struct listener {
        char ifname[IF_NAMESIZE];
        uint8_t mac[6];
        uint8_t pw[6];
        size_t pwlen;
        uint16_t port;
        bool no_udp;
        char **command;
        int log_fd;
        pid_t child;  /* COMMAND while it runs, 0 otherwise */
        bool woken;   /* COMMAND was started (once only) */
};

static void logline(const struct listener *l, const char *fmt, ...)
{
        char line[512];
        int n = snprintf(line, sizeof(line), "%llu ", (unsigned long long)wall_ms());
        va_list ap;
        va_start(ap, fmt);
        n += vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
        va_end(ap);
        if ((size_t)n >= sizeof(line) - 1)
                n = sizeof(line) - 2;
        line[n++] = '\n';
        /* one write per line: readers never see half a line */
        if (write_full(l->log_fd, line, (size_t)n, 0) < 0)
                perror("wol-listen: log");
}

static void usage(void)
{
        fprintf(stderr, "usage: wol-listen --interface IF --mac MAC [--password PW] [--port 9]\n"
                        "                  [--log FILE] [--no-udp] -- COMMAND ARGS...\n");
}

static int open_udp(const struct listener *l, int *ret_fd)
{
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(l->port),
                                 .sin_addr.s_addr = htonl(INADDR_ANY) };
        const int one = 1;
        int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
            setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, l->ifname, (socklen_t)strlen(l->ifname)) < 0 ||
            bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
                int r = -errno;
                close(fd);
                return r;
        }
        *ret_fd = fd;
        return 0;
}

static int open_raw(const struct listener *l, int *ret_fd)
{
        struct sockaddr_ll a = { .sll_family = AF_PACKET, .sll_protocol = htons(WOL_ETHERTYPE),
                                 .sll_ifindex = (int)if_nametoindex(l->ifname) };
        if (a.sll_ifindex == 0)
                return -errno;
        /* SOCK_DGRAM: the frame's data without the Ethernet header, which
         * is what the magic packet is in */
        int fd = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, htons(WOL_ETHERTYPE));
        if (fd < 0)
                return -errno;
        if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
                int r = -errno;
                close(fd);
                return r;
        }
        *ret_fd = fd;
        return 0;
}

static void run_command(struct listener *l, const char *by)
{
        pid_t pid = fork();
        if (pid < 0) {
                logline(l, "woken failed=fork:%s", strerror(errno));
                return;
        }
        if (pid == 0) {
                /* the child must not inherit our blocked signals */
                sigset_t none;
                sigemptyset(&none);
                sigprocmask(SIG_SETMASK, &none, NULL);
                execvp(l->command[0], l->command);
                fprintf(stderr, "wol-listen: exec %s: %s\n", l->command[0], strerror(errno));
                _exit(127);
        }
        l->child = pid;
        l->woken = true;
        logline(l, "woken pid=%d by=%s", (int)pid, by);
}

/* Read every datagram waiting on fd (non-blocking) and judge each. */
static void drain(struct listener *l, int fd, bool raw)
{
        static uint8_t buf[65536];
        for (;;) {
                union {
                        struct sockaddr_in in;
                        struct sockaddr_ll ll;
                } from;
                socklen_t fromlen = sizeof(from);
                ssize_t n = recvfrom(fd, buf, sizeof(buf), MSG_TRUNC, (struct sockaddr *)&from, &fromlen);
                if (n < 0) {
                        if (errno != EAGAIN && errno != EINTR)
                                logline(l, "%s error=%s", raw ? "raw" : "udp", strerror(errno));
                        return;
                }
                char src[64] = "-";
                if (raw) {
                        /* our own frames (the listener's host sending) are
                         * not received by a NIC */
                        if (from.ll.sll_pkttype == PACKET_OUTGOING)
                                continue;
                        if (from.ll.sll_halen == 6)
                                wol_format_mac(from.ll.sll_addr, src);
                } else {
                        char ip[INET_ADDRSTRLEN];
                        if (inet_ntop(AF_INET, &from.in.sin_addr, ip, sizeof(ip)))
                                snprintf(src, sizeof(src), "%s:%u", ip, ntohs(from.in.sin_port));
                }
                size_t len = (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf);
                uint8_t seen[6];
                enum wol_verdict v = wol_scan(buf, len, l->mac, l->pw, l->pwlen, seen);
                char seen_s[WOL_MAC_STRLEN] = "-";
                if (v != WOL_MALFORMED)
                        wol_format_mac(seen, seen_s);
                logline(l, "%s %s %s len=%zd from=%s", raw ? "raw" : "udp",
                        wol_verdict_name(v), seen_s, n, src);
                if (v != WOL_VALID)
                        continue;
                if (l->woken)
                        logline(l, "already awake");
                else
                        run_command(l, raw ? "raw" : "udp");
        }
}

static void reap(struct listener *l)
{
        int status;
        pid_t pid;
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
                if (pid != l->child)
                        continue;
                l->child = 0;
                if (WIFEXITED(status))
                        logline(l, "command exited status=%d", WEXITSTATUS(status));
                else
                        logline(l, "command exited signal=%d", WTERMSIG(status));
        }
}

static int parse_args(int argc, char **argv, struct listener *l)
{
        static const struct option opts[] = {
                { "interface", required_argument, NULL, 'i' },
                { "mac", required_argument, NULL, 'm' },
                { "password", required_argument, NULL, 'p' },
                { "port", required_argument, NULL, 'P' },
                { "log", required_argument, NULL, 'l' },
                { "no-udp", no_argument, NULL, 'U' },
                { "help", no_argument, NULL, 'h' },
                {}
        };
        const char *logpath = NULL;
        bool have_mac = false;
        int c;
        l->port = WOL_PORT_DEFAULT;
        l->log_fd = STDOUT_FILENO;
        while ((c = getopt_long(argc, argv, "+i:m:p:P:l:Uh", opts, NULL)) != -1) {
                switch (c) {
                case 'i':
                        if (!optarg[0] || strlen(optarg) >= sizeof(l->ifname)) {
                                fprintf(stderr, "wol-listen: bad interface name '%s'\n", optarg);
                                return -EINVAL;
                        }
                        strcpy(l->ifname, optarg);
                        break;
                case 'm':
                        if (wol_parse_mac(optarg, l->mac) < 0) {
                                fprintf(stderr, "wol-listen: bad MAC '%s'\n", optarg);
                                return -EINVAL;
                        }
                        have_mac = true;
                        break;
                case 'p':
                        if (wol_parse_password(optarg, l->pw, &l->pwlen) < 0) {
                                fprintf(stderr, "wol-listen: bad password '%s' (a.b.c.d, 4 or 6 hex bytes)\n", optarg);
                                return -EINVAL;
                        }
                        break;
                case 'P': {
                        char *end;
                        unsigned long p = strtoul(optarg, &end, 10);
                        if (*end || p == 0 || p > 65535) {
                                fprintf(stderr, "wol-listen: bad port '%s'\n", optarg);
                                return -EINVAL;
                        }
                        l->port = (uint16_t)p;
                        break;
                }
                case 'l':
                        logpath = optarg;
                        break;
                case 'U':
                        l->no_udp = true;
                        break;
                default:
                        return -EINVAL;
                }
        }
        if (!l->ifname[0] || !have_mac || optind >= argc) {
                fprintf(stderr, "wol-listen: --interface, --mac and a COMMAND are needed\n");
                return -EINVAL;
        }
        l->command = argv + optind;
        if (logpath) {
                l->log_fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
                if (l->log_fd < 0) {
                        fprintf(stderr, "wol-listen: %s: %s\n", logpath, strerror(errno));
                        return -EINVAL;
                }
        }
        return 0;
}

int main(int argc, char **argv)
{
        static struct listener l;
        int udp = -1, raw = -1, sfd = -1, ep = -1, r;
        if (parse_args(argc, argv, &l) < 0) {
                usage();
                return 2;
        }

        sigset_t mask;
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGCHLD);
        sigprocmask(SIG_BLOCK, &mask, NULL);
        sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
        ep = epoll_create1(EPOLL_CLOEXEC);
        if (sfd < 0 || ep < 0) {
                perror("wol-listen: signalfd/epoll");
                return 1;
        }
        if (!l.no_udp && (r = open_udp(&l, &udp)) < 0) {
                fprintf(stderr, "wol-listen: UDP port %u on %s: %s\n", l.port, l.ifname, strerror(-r));
                return 1;
        }
        if ((r = open_raw(&l, &raw)) < 0) {
                fprintf(stderr, "wol-listen: AF_PACKET 0x%04x on %s: %s\n", WOL_ETHERTYPE, l.ifname,
                        strerror(-r));
                return 1;
        }
        int fds[] = { sfd, udp, raw };
        for (unsigned i = 0; i < ARRAY_SIZE(fds); i++) {
                struct epoll_event ev = { .events = EPOLLIN, .data.fd = fds[i] };
                if (fds[i] >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) < 0) {
                        perror("wol-listen: epoll_ctl");
                        return 1;
                }
        }
        char mac_s[WOL_MAC_STRLEN];
        wol_format_mac(l.mac, mac_s);
        char port_s[8] = "off";
        if (!l.no_udp)
                snprintf(port_s, sizeof(port_s), "%u", l.port);
        logline(&l, "listening if=%s mac=%s udp=%s raw=0x%04x", l.ifname, mac_s, port_s, WOL_ETHERTYPE);

        for (;;) {
                struct epoll_event evs[4];
                int n = epoll_wait(ep, evs, (int)ARRAY_SIZE(evs), -1);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        perror("wol-listen: epoll_wait");
                        return 1;
                }
                for (int i = 0; i < n; i++) {
                        int fd = evs[i].data.fd;
                        if (fd == udp || fd == raw) {
                                drain(&l, fd, fd == raw);
                                continue;
                        }
                        struct signalfd_siginfo si;
                        while (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
                                if (si.ssi_signo == SIGCHLD) {
                                        reap(&l);
                                } else {
                                        logline(&l, "stopped");
                                        return 0;
                                }
                        }
                }
        }
}
