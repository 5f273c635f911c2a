/* hv-members: print what failover/membership reports, one timestamped line
 * per event, for tests and for looking at a cluster by hand.
 *
 *   hv-members [-g GROUP] [-i POLL_MS]        watch until SIGTERM/SIGINT
 *   hv-members [-g GROUP] -s TEXT              join, send TEXT, exit once it
 *                                              came back (all members have it)
 *
 * Lines (wall clock in seconds.microseconds first, so a test can compare
 * them with bash's $EPOCHREALTIME):
 *   T ready nodeid=N
 *   T nodes N N ...                  corosync node membership (hosts)
 *   T members N:PID N:PID ...        CPG group membership (processes)
 *   T quorum quorate=0|1 expected=N total=N
 *   T message from=N pid=P len=L text=TEXT
 *   T link node=N link=L enabled=0|1 connected=0|1 addr=A   (on change)
 *   T error TEXT                     then exit 3 (corosync went away)
 * Exit: 0 on a signal or after -s, 1 on a usage or open error, 3 when
 * corosync went away.
 */
#include "membership.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

struct link_seen {
        uint32_t nodeid;
        uint8_t link;
        bool enabled, connected;
};

struct tool {
        struct membership *m;
        const char *send_text;
        bool sent_back;
        struct link_seen seen[MEMBERSHIP_NODES_MAX * 2];
        size_t nseen;
};

static void stamp(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_REALTIME, &ts);
        printf("%lld.%06ld ", (long long)ts.tv_sec, ts.tv_nsec / 1000);
}

static void on_nodes(void *opaque, const uint32_t *ids, size_t n)
{
        size_t i;

        stamp();
        printf("nodes");
        for (i = 0; i < n; i++)
                printf(" %" PRIu32, ids[i]);
        printf("\n");
        fflush(stdout);
}

static void on_members(void *opaque, const struct membership_member *mb, size_t n)
{
        size_t i;

        stamp();
        printf("members");
        for (i = 0; i < n; i++)
                printf(" %" PRIu32 ":%" PRIu32, mb[i].nodeid, mb[i].pid);
        printf("\n");
        fflush(stdout);
}

static void on_quorum(void *opaque, bool quorate, uint32_t expected, uint32_t total)
{
        stamp();
        printf("quorum quorate=%d expected=%" PRIu32 " total=%" PRIu32 "\n", quorate,
               expected, total);
        fflush(stdout);
}

static void on_message(void *opaque, uint32_t from, uint32_t pid, const void *buf, size_t len)
{
        struct tool *t = opaque;
        const unsigned char *p = buf;
        size_t i;

        stamp();
        printf("message from=%" PRIu32 " pid=%" PRIu32 " len=%zu text=", from, pid, len);
        for (i = 0; i < len && i < 200; i++)
                putchar(p[i] >= 0x21 && p[i] < 0x7f ? p[i] : '_');
        printf("\n");
        fflush(stdout);
        if (t->send_text && from == membership_local_nodeid(t->m) && pid == (uint32_t)getpid())
                t->sent_back = true;
}

static struct link_seen *seen_slot(struct tool *t, uint32_t nodeid, uint8_t link, bool *fresh)
{
        size_t i;

        *fresh = false;
        for (i = 0; i < t->nseen; i++)
                if (t->seen[i].nodeid == nodeid && t->seen[i].link == link)
                        return &t->seen[i];
        if (t->nseen == sizeof(t->seen) / sizeof(t->seen[0]))
                return NULL;
        *fresh = true;
        t->seen[t->nseen] = (struct link_seen){ .nodeid = nodeid, .link = link };
        return &t->seen[t->nseen++];
}

/* Print every link of every other configured node whose state changed. */
static int poll_links(struct tool *t)
{
        uint32_t ids[MEMBERSHIP_NODES_MAX];
        struct membership_link links[MEMBERSHIP_LINKS_MAX];
        size_t nids, nl, i, j;
        int r;

        r = membership_nodelist(t->m, ids, MEMBERSHIP_NODES_MAX, &nids);
        if (r < 0)
                return r;
        for (i = 0; i < nids && i < MEMBERSHIP_NODES_MAX; i++) {
                if (ids[i] == membership_local_nodeid(t->m))
                        continue;
                r = membership_links(t->m, ids[i], links, MEMBERSHIP_LINKS_MAX, &nl);
                if (r == -ENOENT)
                        continue;
                if (r < 0)
                        return r;
                for (j = 0; j < nl && j < MEMBERSHIP_LINKS_MAX; j++) {
                        struct link_seen *s;
                        bool fresh;

                        s = seen_slot(t, ids[i], links[j].link, &fresh);
                        if (!s || (!fresh && s->enabled == links[j].enabled &&
                                   s->connected == links[j].connected))
                                continue;
                        s->enabled = links[j].enabled;
                        s->connected = links[j].connected;
                        stamp();
                        printf("link node=%" PRIu32 " link=%u enabled=%d connected=%d addr=%s\n",
                               ids[i], links[j].link, links[j].enabled, links[j].connected,
                               links[j].addr[0] ? links[j].addr : "-");
                        fflush(stdout);
                }
        }
        return 0;
}

static int add_fd(int ep, int fd)
{
        struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };

        return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

static int run(struct tool *t, int ep, int sfd, int tfd)
{
        for (;;) {
                struct epoll_event ev[8];
                int n, i, r;

                if (t->send_text && t->sent_back)
                        return 0;
                n = epoll_wait(ep, ev, 8, -1);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return -errno;
                for (i = 0; i < n; i++) {
                        int fd = ev[i].data.fd;

                        if (fd == sfd)
                                return 0;
                        if (fd == tfd) {
                                uint64_t ticks;

                                if (read(tfd, &ticks, sizeof(ticks)) < 0 && errno != EAGAIN)
                                        return -errno;
                                r = poll_links(t);
                        } else {
                                r = membership_dispatch(t->m, fd);
                        }
                        if (r < 0)
                                return r;
                }
        }
}

static void usage(void)
{
        fprintf(stderr, "usage: hv-members [-g GROUP] [-i POLL_MS] [-s TEXT]\n");
}

int main(int argc, char **argv)
{
        struct membership_cb cb = {
                .nodes = on_nodes, .members = on_members,
                .quorum = on_quorum, .message = on_message,
        };
        struct tool t = { 0 };
        const char *group = "havms";
        long poll_ms = 100;
        int fds[4], ep, sfd, tfd, c, r;
        size_t nfds, i;
        sigset_t sigs;

        while ((c = getopt(argc, argv, "g:i:s:h")) != -1) {
                switch (c) {
                case 'g': group = optarg; break;
                case 'i': poll_ms = strtol(optarg, NULL, 10); break;
                case 's': t.send_text = optarg; break;
                default: usage(); return 1;
                }
        }
        if (optind != argc || poll_ms < 10 || poll_ms > 60000) {
                usage();
                return 1;
        }
        setvbuf(stdout, NULL, _IOLBF, 0);
        sigemptyset(&sigs);
        sigaddset(&sigs, SIGTERM);
        sigaddset(&sigs, SIGINT);
        sigprocmask(SIG_BLOCK, &sigs, NULL);

        r = membership_open(group, &cb, &t, &t.m);
        if (r < 0) {
                fprintf(stderr, "hv-members: cannot open membership: %s\n", strerror(-r));
                return 1;
        }
        stamp();
        printf("ready nodeid=%" PRIu32 "\n", membership_local_nodeid(t.m));

        struct itimerspec its = {
                .it_interval = { poll_ms / 1000, (poll_ms % 1000) * 1000000 },
                .it_value = { 0, 1 },
        };
        ep = epoll_create1(EPOLL_CLOEXEC);
        sfd = signalfd(-1, &sigs, SFD_CLOEXEC);
        tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
        if (ep < 0 || sfd < 0 || tfd < 0 || timerfd_settime(tfd, 0, &its, NULL) < 0 ||
            membership_fds(t.m, fds, 4, &nfds) < 0) {
                perror("hv-members: setup");
                return 1;
        }
        r = add_fd(ep, sfd);
        if (r == 0 && !t.send_text)
                r = add_fd(ep, tfd);
        for (i = 0; r == 0 && i < nfds; i++)
                r = add_fd(ep, fds[i]);
        if (r == 0 && t.send_text)
                r = membership_send(t.m, t.send_text, strlen(t.send_text));
        if (r == 0)
                r = run(&t, ep, sfd, tfd);
        if (r < 0) {
                stamp();
                printf("error %s\n", strerror(-r));
        }
        membership_close(t.m);
        close(ep);
        close(sfd);
        close(tfd);
        return r == -ENOTCONN ? 3 : r < 0 ? 1 : 0;
}
