/* netbuf: the relay backend against a fake QEMU (a unix socket speaking
 * QEMU's 4-byte big-endian length framing) and a packet socket on the tap
 * (the LAN side), in a private network namespace; and the plug backend's
 * refusal on a kernel without sch_plug (it is tested for real inside the
 * test guest: test/integration/netbuf-plug-in-guest.sh).
 *
 * Needs root and /dev/net/tun; skips (77) without them.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <netlink/netlink.h>
#include <netlink/route/link.h>

#include "netbuf.h"
#include "qmp.h"

#define TEST_ETHERTYPE 0x88b5   /* IEEE local experimental: only ours */
#define TAP "nbt0"
#define WAIT_MS 2000
#define QUIET_MS 200

struct fx {
        struct netbuf *nb;
        char dir[64];
        char sock[96];
        int ps;                 /* packet socket on the tap: the LAN */
        int ifindex;
        int q;                  /* the fake QEMU */
        uint64_t max;
        uint32_t hello;         /* tag of the connection check frame */
};

/* ---- frames ---- */

static size_t mkframe(uint8_t *b, uint32_t tag, size_t len)
{
        static const uint8_t src[6] = { 0x02, 0, 0, 0, 0, 0x01 };
        uint32_t be = htonl(tag);

        assert_true(len >= 18);
        memset(b, 0xff, 6);
        memcpy(b + 6, src, 6);
        b[12] = TEST_ETHERTYPE >> 8;
        b[13] = TEST_ETHERTYPE & 0xff;
        memcpy(b + 14, &be, 4);
        memset(b + 18, (int)(tag & 0xff), len - 18);
        return len;
}

/* tag of one of our frames, or -1 for anything else */
static int64_t frame_tag(const uint8_t *b, size_t len)
{
        uint32_t be;

        if (len < 18 || b[12] != (TEST_ETHERTYPE >> 8) || b[13] != (TEST_ETHERTYPE & 0xff))
                return -1;
        memcpy(&be, b + 14, 4);
        return ntohl(be);
}

static void write_all(int fd, const void *p, size_t n)
{
        const uint8_t *b = p;

        while (n) {
                ssize_t w = write(fd, b, n);

                assert_true(w > 0);
                b += w;
                n -= (size_t)w;
        }
}

/* The guest sends a frame (QEMU writes it to the socket). */
static void qemu_send(struct fx *f, uint32_t tag, size_t len)
{
        uint8_t b[4 + 9000];
        uint32_t be = htonl((uint32_t)len);

        memcpy(b, &be, 4);
        mkframe(b + 4, tag, len);
        write_all(f->q, b, 4 + len);
}

static bool readable(int fd, int ms)
{
        struct pollfd p = { .fd = fd, .events = POLLIN };

        return poll(&p, 1, ms) == 1;
}

/* Next frame of EtherType etype the packet socket ps sees coming from the
 * tap within ms: its length (copied to b), or -1. */
static ssize_t recv_type(int ps, uint16_t etype, uint8_t *b, size_t cap, int ms)
{
        struct timespec t0, t;

        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (;;) {
                struct sockaddr_ll sll;
                socklen_t sl = sizeof(sll);
                int left;
                ssize_t n;

                clock_gettime(CLOCK_MONOTONIC, &t);
                left = ms - (int)((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000);
                if (left < 0 || !readable(ps, left))
                        return -1;
                n = recvfrom(ps, b, cap, 0, (struct sockaddr *)&sll, &sl);
                assert_true(n >= 0);
                /* frames the tap transmits are the other direction */
                if (sll.sll_pkttype == PACKET_OUTGOING || n < 14 ||
                    b[12] != (etype >> 8) || b[13] != (etype & 0xff))
                        continue;
                return n;
        }
}

/* Next of our frames seen on the LAN side within ms: its tag, or -1. */
static int64_t lan_recv(struct fx *f, int ms, size_t *ret_len)
{
        uint8_t b[70000];
        ssize_t n = recv_type(f->ps, TEST_ETHERTYPE, b, sizeof(b), ms);

        if (n < 0)
                return -1;
        if (ret_len)
                *ret_len = (size_t)n;
        return frame_tag(b, (size_t)n);
}

static void lan_expect(struct fx *f, uint32_t tag)
{
        assert_int_equal(lan_recv(f, WAIT_MS, NULL), tag);
}

static void lan_none(struct fx *f)
{
        assert_int_equal(lan_recv(f, QUIET_MS, NULL), -1);
}

/* A host on the LAN sends a frame to the guest. */
static void lan_send(struct fx *f, uint32_t tag, size_t len)
{
        uint8_t b[9000];
        struct sockaddr_ll sll = {
                .sll_family = AF_PACKET,
                .sll_ifindex = f->ifindex,
                .sll_halen = 6,
        };

        mkframe(b, tag, len);
        memset(sll.sll_addr, 0xff, 6);
        assert_int_equal(sendto(f->ps, b, len, 0, (struct sockaddr *)&sll, sizeof(sll)),
                         (ssize_t)len);
}

/* Next of our frames QEMU receives within ms: its tag, or -1. */
static int64_t qemu_recv(int q, int ms)
{
        uint8_t b[70000];

        for (;;) {
                uint32_t len;
                size_t got = 0;

                if (!readable(q, ms))
                        return -1;
                if (read(q, &len, 4) != 4)
                        return -1;
                len = ntohl(len);
                assert_true(len <= sizeof(b));
                while (got < len) {
                        ssize_t n = read(q, b + got, len - got);

                        assert_true(n > 0);
                        got += (size_t)n;
                }
                if (frame_tag(b, len) >= 0)
                        return frame_tag(b, len);
        }
}

/* ---- fixture ---- */

static int qemu_connect(const char *path)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

        assert_true(fd >= 0);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        return fd;
}

/* Connect a fresh fake QEMU and prove the relay accepted it: a frame
 * (buffering off) reaches the LAN. */
static void reconnect(struct fx *f)
{
        if (f->q >= 0)
                close(f->q);
        f->q = qemu_connect(f->sock);
        qemu_send(f, ++f->hello, 60);
        lan_expect(f, f->hello);
}

static int fx_setup_max(void **state, uint64_t max)
{
        struct fx *f = calloc(1, sizeof(*f));
        struct netbuf_options o = { .vm = "test", .nic = 0, .tap = TAP, .bridge = "",
                                    .max_bytes = max, .backend = NETBUF_RELAY };
        struct sockaddr_ll sll = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL) };
        char err[256];

        assert_non_null(f);
        f->q = -1;
        f->max = max;
        f->hello = 0x10000;
        strcpy(f->dir, "/tmp/havms-netbuf.XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        snprintf(f->sock, sizeof(f->sock), "%s/nic0.sock", f->dir);
        o.socket_path = f->sock;
        if (netbuf_open(&o, &f->nb, err, sizeof(err)) < 0)
                fail_msg("netbuf_open: %s", err);
        f->ifindex = (int)if_nametoindex(TAP);
        assert_true(f->ifindex > 0);
        f->ps = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
        assert_true(f->ps >= 0);
        sll.sll_ifindex = f->ifindex;
        assert_int_equal(bind(f->ps, (struct sockaddr *)&sll, sizeof(sll)), 0);
        reconnect(f);
        *state = f;
        return 0;
}

static int fx_setup(void **state)
{
        return fx_setup_max(state, 1u << 20);
}

static int fx_setup_small(void **state)
{
        return fx_setup_max(state, 3000);
}

static int fx_teardown(void **state)
{
        struct fx *f = *state;

        netbuf_close(f->nb);
        if (f->q >= 0)
                close(f->q);
        close(f->ps);
        /* the tap goes with the relay, the socket file too */
        assert_int_equal(if_nametoindex(TAP), 0);
        assert_int_equal(access(f->sock, F_OK), -1);
        rmdir(f->dir);
        free(f);
        return 0;
}

static struct netbuf_stats stats(struct fx *f)
{
        struct netbuf_stats st;

        netbuf_get_stats(f->nb, &st);
        return st;
}

/* The relay thread reads asynchronously: wait until it holds n frames. */
static void wait_held(struct fx *f, uint64_t n)
{
        for (int i = 0; i < WAIT_MS / 5; i++) {
                if (stats(f).held_frames == n)
                        return;
                usleep(5000);
        }
        fail_msg("held_frames stayed %llu, expected %llu",
                 (unsigned long long)stats(f).held_frames, (unsigned long long)n);
}

static void ev_clear(int fd)
{
        uint64_t v;

        while (read(fd, &v, sizeof(v)) == sizeof(v)) {
        }
}

/* ---- tests ---- */

static void test_passthrough(void **state)
{
        struct fx *f = *state;
        struct netbuf_stats st0 = stats(f), st;

        for (uint32_t t = 1; t <= 3; t++)
                qemu_send(f, t, 100 * t);
        for (uint32_t t = 1; t <= 3; t++)
                lan_expect(f, t);
        st = stats(f);
        assert_int_equal(st.frames_out - st0.frames_out, 3);
        assert_int_equal(st.bytes_out - st0.bytes_out, 600);
        assert_int_equal(st.held_frames, 0);
        assert_false(netbuf_output_waiting(f->nb));
}

static void test_hold_until_release(void **state)
{
        struct fx *f = *state;

        netbuf_set_buffering(f->nb, true);
        qemu_send(f, 1, 100);
        qemu_send(f, 2, 200);
        wait_held(f, 2);
        assert_int_equal(stats(f).held_bytes, 300);
        lan_none(f);
        assert_int_equal(netbuf_barrier(f->nb, 1), 0);
        /* an older epoch does not release a newer one */
        assert_int_equal(netbuf_release(f->nb, 0), 0);
        lan_none(f);
        assert_int_equal(netbuf_release(f->nb, 1), 0);
        lan_expect(f, 1);
        lan_expect(f, 2);
        assert_int_equal(stats(f).held_frames, 0);
        assert_int_equal(stats(f).held_bytes_max, 300);
}

static void test_barrier_cuts_exactly(void **state)
{
        struct fx *f = *state;

        netbuf_set_buffering(f->nb, true);
        /* no waiting: the barrier itself drains what QEMU wrote */
        qemu_send(f, 1, 100);
        qemu_send(f, 2, 100);
        assert_int_equal(netbuf_barrier(f->nb, 7), 0);
        qemu_send(f, 3, 100);
        wait_held(f, 3);
        assert_int_equal(netbuf_release(f->nb, 7), 0);
        lan_expect(f, 1);
        lan_expect(f, 2);
        lan_none(f);            /* 3 is in the open epoch */
        assert_true(netbuf_output_waiting(f->nb));
        assert_int_equal(netbuf_barrier(f->nb, 8), 0);
        qemu_send(f, 4, 100);
        assert_int_equal(netbuf_barrier(f->nb, 9), 0);
        assert_int_equal(netbuf_release(f->nb, 8), 0);
        lan_expect(f, 3);
        lan_none(f);
        assert_int_equal(netbuf_release(f->nb, 9), 0);
        lan_expect(f, 4);
        /* epochs only go up */
        assert_int_equal(netbuf_barrier(f->nb, 9), -EINVAL);
}

static void test_partial_frame_next_epoch(void **state)
{
        struct fx *f = *state;
        uint8_t b[4 + 500];
        uint32_t be = htonl(500);

        netbuf_set_buffering(f->nb, true);
        qemu_send(f, 1, 100);
        memcpy(b, &be, 4);
        mkframe(b + 4, 2, 500);
        write_all(f->q, b, 4 + 200);    /* header and part of frame 2 */
        assert_int_equal(netbuf_barrier(f->nb, 1), 0);
        write_all(f->q, b + 4 + 200, 300);
        assert_int_equal(netbuf_barrier(f->nb, 2), 0);
        assert_int_equal(netbuf_release(f->nb, 1), 0);
        lan_expect(f, 1);
        lan_none(f);
        assert_int_equal(netbuf_release(f->nb, 2), 0);
        size_t len = 0;
        assert_int_equal(lan_recv(f, WAIT_MS, &len), 2);
        assert_int_equal(len, 500);
}

static void test_lan_to_guest_while_buffering(void **state)
{
        struct fx *f = *state;
        struct netbuf_stats st0, st;

        netbuf_set_buffering(f->nb, true);
        qemu_send(f, 1, 100);
        wait_held(f, 1);
        st0 = stats(f);
        lan_send(f, 77, 300);
        lan_send(f, 78, 1500);
        assert_int_equal(qemu_recv(f->q, WAIT_MS), 77);
        assert_int_equal(qemu_recv(f->q, WAIT_MS), 78);
        st = stats(f);
        assert_int_equal(st.frames_in - st0.frames_in, 2);
        assert_int_equal(st.bytes_in - st0.bytes_in, 1800);
        assert_int_equal(st.held_frames, 1);   /* the guest's frame still held */
        lan_none(f);
}

static void test_output_waiting_eventfd(void **state)
{
        struct fx *f = *state;
        int efd = netbuf_event_fd(f->nb);

        netbuf_set_buffering(f->nb, true);
        ev_clear(efd);
        assert_false(netbuf_output_waiting(f->nb));
        qemu_send(f, 1, 100);
        assert_true(readable(efd, WAIT_MS));
        assert_true(netbuf_output_waiting(f->nb));
        ev_clear(efd);
        /* the open epoch was not empty: no new event */
        qemu_send(f, 2, 100);
        wait_held(f, 2);
        assert_false(readable(efd, 0));
        assert_int_equal(netbuf_barrier(f->nb, 1), 0);
        assert_false(netbuf_output_waiting(f->nb));
        assert_false(readable(efd, 0));
        /* the new open epoch gets its first frame: event */
        qemu_send(f, 3, 100);
        assert_true(readable(efd, WAIT_MS));
        assert_true(netbuf_output_waiting(f->nb));
        assert_false(netbuf_full(f->nb));
}

static void test_backpressure(void **state)
{
        struct fx *f = *state;          /* max_bytes 3000 */
        int efd = netbuf_event_fd(f->nb);
        struct netbuf_stats st;

        netbuf_set_buffering(f->nb, true);
        ev_clear(efd);
        for (uint32_t t = 1; t <= 7; t++)
                qemu_send(f, t, 1000);
        wait_held(f, 3);
        assert_true(readable(efd, WAIT_MS));
        assert_true(netbuf_full(f->nb));
        /* frames 4..7 stay in QEMU's socket, not in memory */
        usleep(QUIET_MS * 1000);
        st = stats(f);
        assert_int_equal(st.held_frames, 3);
        assert_int_equal(st.held_bytes, 3000);
        assert_true(st.held_bytes_max <= f->max);
        assert_int_equal(st.frames_dropped, 0);
        /* a barrier while full takes no more */
        assert_int_equal(netbuf_barrier(f->nb, 1), 0);
        assert_int_equal(stats(f).held_frames, 3);
        lan_none(f);
        ev_clear(efd);
        /* release frees room: reading resumes, into the open epoch */
        assert_int_equal(netbuf_release(f->nb, 1), 0);
        for (uint32_t t = 1; t <= 3; t++)
                lan_expect(f, t);
        wait_held(f, 3);
        assert_true(netbuf_full(f->nb));
        lan_none(f);            /* 4..6 are held: not released early */
        assert_int_equal(netbuf_barrier(f->nb, 2), 0);
        assert_int_equal(netbuf_release(f->nb, 2), 0);
        for (uint32_t t = 4; t <= 6; t++)
                lan_expect(f, t);
        wait_held(f, 1);
        assert_false(netbuf_full(f->nb));
        st = stats(f);
        assert_true(st.held_bytes_max <= f->max);
        assert_int_equal(st.frames_dropped, 0);
        /* turning buffering off sends what is held and what waited */
        netbuf_set_buffering(f->nb, false);
        lan_expect(f, 7);
        /* a frame that could never fit under max_bytes is dropped */
        netbuf_set_buffering(f->nb, true);
        qemu_send(f, 8, 4000);
        qemu_send(f, 9, 100);
        wait_held(f, 1);
        assert_int_equal(stats(f).frames_dropped, 1);
        assert_int_equal(netbuf_barrier(f->nb, 3), 0);
        assert_int_equal(netbuf_release(f->nb, 3), 0);
        lan_expect(f, 9);
}

static void test_set_buffering_off_releases_in_order(void **state)
{
        struct fx *f = *state;

        netbuf_set_buffering(f->nb, true);
        qemu_send(f, 1, 100);
        assert_int_equal(netbuf_barrier(f->nb, 1), 0);
        qemu_send(f, 2, 100);
        assert_int_equal(netbuf_barrier(f->nb, 2), 0);
        qemu_send(f, 3, 100);
        wait_held(f, 3);
        lan_none(f);
        netbuf_set_buffering(f->nb, false);
        lan_expect(f, 1);
        lan_expect(f, 2);
        lan_expect(f, 3);
        assert_int_equal(stats(f).held_frames, 0);
        qemu_send(f, 4, 100);
        lan_expect(f, 4);
}

static void test_discard(void **state)
{
        struct fx *f = *state;
        struct netbuf_stats st0 = stats(f);

        netbuf_set_buffering(f->nb, true);
        qemu_send(f, 1, 100);
        qemu_send(f, 2, 100);
        assert_int_equal(netbuf_barrier(f->nb, 1), 0);
        netbuf_discard(f->nb);
        assert_int_equal(stats(f).held_frames, 0);
        assert_int_equal(stats(f).frames_dropped - st0.frames_dropped, 2);
        assert_int_equal(netbuf_release(f->nb, 1), 0);
        lan_none(f);
}

/* Switchover: the frames of committed epochs are taken out unsent (the
 * new primary sends them), newer ones stay held; emitting the buffer
 * (here through the same netbuf, standing for the new primary's) sends
 * them in order; a malformed buffer sends nothing. */
static void test_take_and_emit(void **state)
{
        struct fx *f = *state;

        netbuf_set_buffering(f->nb, true);
        qemu_send(f, 1, 100);
        qemu_send(f, 2, 200);
        wait_held(f, 2);
        assert_int_equal(netbuf_barrier(f->nb, 1), 0);
        qemu_send(f, 3, 150);
        wait_held(f, 3);
        assert_int_equal(netbuf_barrier(f->nb, 2), 0);
        uint8_t *buf;
        size_t len;
        assert_int_equal(netbuf_take(f->nb, 1, &buf, &len), 0);
        assert_non_null(buf);
        assert_int_equal(len, 4 + 100 + 4 + 200);
        assert_int_equal(stats(f).held_frames, 1); /* epoch 2 stays */
        assert_int_equal(stats(f).held_bytes, 150);
        lan_none(f);
        /* a length running past the end: refused whole */
        assert_int_equal(netbuf_emit(f->nb, buf, len - 1), -EBADMSG);
        lan_none(f);
        assert_int_equal(netbuf_emit(f->nb, buf, len), 0);
        lan_expect(f, 1);
        lan_expect(f, 2);
        lan_none(f);
        free(buf);
        /* nothing committed left to take */
        assert_int_equal(netbuf_take(f->nb, 1, &buf, &len), 0);
        assert_null(buf);
        assert_int_equal(len, 0);
        assert_int_equal(netbuf_release(f->nb, 2), 0);
        lan_expect(f, 3);
}

static void test_reconnect(void **state)
{
        struct fx *f = *state;

        /* a frame held before QEMU goes away is still released */
        netbuf_set_buffering(f->nb, true);
        qemu_send(f, 1, 100);
        assert_int_equal(netbuf_barrier(f->nb, 1), 0);
        close(f->q);
        f->q = -1;
        /* nobody to deliver LAN frames to: dropped, counted */
        uint64_t d0 = stats(f).frames_dropped;
        usleep(50 * 1000);
        lan_send(f, 50, 100);
        for (int i = 0; i < 100 && stats(f).frames_dropped == d0; i++)
                usleep(10 * 1000);
        assert_int_equal(stats(f).frames_dropped - d0, 1);
        assert_int_equal(netbuf_release(f->nb, 1), 0);
        lan_expect(f, 1);
        netbuf_set_buffering(f->nb, false);
        /* a restarted QEMU connects again; both directions work */
        reconnect(f);
        lan_send(f, 51, 100);
        assert_int_equal(qemu_recv(f->q, WAIT_MS), 51);
}

/* A length prefix no frame can have: the relay hangs up. */
static void bad_length(struct fx *f, uint32_t len)
{
        uint32_t be = htonl(len);
        uint8_t junk[64];

        qemu_send(f, 1, 100);           /* complete frames before it count */
        write_all(f->q, &be, 4);
        lan_expect(f, 1);
        assert_true(readable(f->q, WAIT_MS));
        assert_true(read(f->q, junk, sizeof(junk)) <= 0);
        reconnect(f);
        qemu_send(f, 2, 100);
        lan_expect(f, 2);
}

static void test_bad_length(void **state)
{
        struct fx *f = *state;

        bad_length(f, 0xffffffffu);
        bad_length(f, 70000);
        bad_length(f, 0);
        bad_length(f, 13);
}

static void test_qemu_netdev(void **state)
{
        struct fx *f = *state;
        char want[256], got[256];

        snprintf(want, sizeof(want), "stream,server=off,addr.type=unix,addr.path=%s", f->sock);
        assert_int_equal(netbuf_qemu_netdev(f->nb, got, sizeof(got)), 0);
        assert_string_equal(got, want);
        assert_int_equal(netbuf_qemu_netdev(f->nb, got, 20), -ENOSPC);
}

/* ifindex of dev's master (rtnetlink: /sys shows the namespace it was
 * mounted in, not ours) */
static int master_of(const char *dev)
{
        struct nl_sock *sk = nl_socket_alloc();
        struct rtnl_link *l;
        int m = -1;

        assert_non_null(sk);
        assert_int_equal(nl_connect(sk, NETLINK_ROUTE), 0);
        if (rtnl_link_get_kernel(sk, 0, dev, &l) == 0) {
                m = rtnl_link_get_master(l);
                rtnl_link_put(l);
        }
        nl_socket_free(sk);
        return m;
}

static void test_bridge_and_options(void **state)
{
        char dir[] = "/tmp/havms-netbuf.XXXXXX", path[96], err[256];
        struct netbuf_options o = { .vm = "test", .nic = 1, .tap = "nbt1", .bridge = "nbbr0",
                                    .max_bytes = 1 << 20, .backend = NETBUF_RELAY };
        struct netbuf *nb;
        int s, fd;

        assert_non_null(mkdtemp(dir));
        snprintf(path, sizeof(path), "%s/nic1.sock", dir);
        o.socket_path = path;

        /* a missing bridge is named */
        assert_int_equal(netbuf_open(&o, &nb, err, sizeof(err)), -ENODEV);
        assert_non_null(strstr(err, "nbbr0"));
        assert_int_equal(if_nametoindex("nbt1"), 0);

        s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        assert_true(s >= 0);
        assert_int_equal(ioctl(s, SIOCBRADDBR, "nbbr0"), 0);
        /* a stale socket file is replaced */
        fd = open(path, O_CREAT | O_WRONLY, 0600);
        close(fd);
        assert_int_equal(netbuf_open(&o, &nb, err, sizeof(err)), -EEXIST);
        assert_non_null(strstr(err, path));
        unlink(path);
        {
                struct sockaddr_un sa = { .sun_family = AF_UNIX };
                int l = socket(AF_UNIX, SOCK_STREAM, 0);

                snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
                assert_int_equal(bind(l, (struct sockaddr *)&sa, sizeof(sa)), 0);
                close(l);
        }
        if (netbuf_open(&o, &nb, err, sizeof(err)) < 0)
                fail_msg("netbuf_open: %s", err);
        assert_int_equal(master_of("nbt1"), (int)if_nametoindex("nbbr0"));
        struct stat stt;
        assert_int_equal(stat(path, &stt), 0);
        assert_true(S_ISSOCK(stt.st_mode));
        assert_int_equal(stt.st_mode & 0777, 0600);
        netbuf_close(nb);
        assert_int_equal(if_nametoindex("nbt1"), 0);
        assert_int_equal(ioctl(s, SIOCBRDELBR, "nbbr0"), 0);
        close(s);

        /* refused options */
        o.bridge = "";
        o.tap = "a-name-far-too-long";
        assert_int_equal(netbuf_open(&o, &nb, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "tap name"));
        o.tap = "nbt1";
        o.max_bytes = 0;
        assert_int_equal(netbuf_open(&o, &nb, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "max_bytes"));
        netbuf_close(NULL);
        rmdir(dir);
}

/* This host's kernel lacks sch_plug: open must fail, name what is missing,
 * point to the relay, and leave nothing behind. */
static void test_plug_refused(void **state)
{
        struct netbuf_options o = { .vm = "test", .nic = 2, .tap = "nbp0", .bridge = "",
                                    .max_bytes = 1 << 20, .backend = NETBUF_PLUG };
        struct netbuf *nb = NULL;
        char err[512] = "";
        int r;

        r = netbuf_open(&o, &nb, err, sizeof(err));
        if (r == 0) {
                char buf[128];

                assert_int_equal(netbuf_qemu_netdev(nb, buf, sizeof(buf)), 0);
                assert_string_equal(buf, "tap,ifname=nbp0,script=no,downscript=no");
                netbuf_close(nb);
                assert_int_equal(if_nametoindex("nbp0"), 0);
                skip();         /* a kernel with sch_plug: nothing to refuse */
        }
        print_message("netbuf_open(plug): %s\n", err);
        assert_true(r < 0);
        assert_non_null(strstr(err, "netbuf=relay"));
        if (access("/proc/config.gz", R_OK) == 0 &&
            system("zcat /proc/config.gz | grep -qx '# CONFIG_NET_SCH_PLUG is not set'") == 0)
                assert_non_null(strstr(err, "sch_plug"));
        assert_int_equal(if_nametoindex("nbp0"), 0);
        assert_int_equal(if_nametoindex("ifb-nbp0"), 0);
}

/* ---- real QEMU ---- */

#define QEMU_MAC "52:54:00:12:34:56"
#define ETH_RARP 0x8035

static bool have_qemu(void)
{
        return system("command -v qemu-system-x86_64 >/dev/null 2>&1") == 0;
}

/* A QEMU with no guest (the firmware finds nothing to boot and idles,
 * the VM running) and one NIC on netdev. */
static pid_t qemu_start(const char *dir, const char *netdev, struct qmp **ret_qmp)
{
        char nd[256], qmpsock[128], qmparg[160], logf[128];
        pid_t pid;

        snprintf(nd, sizeof(nd), "%s,id=n0", netdev);
        snprintf(qmpsock, sizeof(qmpsock), "%s/qmp.sock", dir);
        snprintf(qmparg, sizeof(qmparg), "unix:%s,server=on,wait=off", qmpsock);
        snprintf(logf, sizeof(logf), "%s/qemu.log", dir);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                int fd = open(logf, O_WRONLY | O_CREAT | O_APPEND, 0600);

                /* a failed assertion must not leave QEMU running */
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                dup2(fd, 1);
                dup2(fd, 2);
                execlp("qemu-system-x86_64", "qemu-system-x86_64", "-machine", "q35,accel=tcg",
                       "-m", "64", "-nodefaults", "-display", "none", "-netdev", nd,
                       "-device", "virtio-net-pci,netdev=n0,mac=" QEMU_MAC, "-qmp", qmparg,
                       (char *)NULL);
                _exit(127);
        }
        for (int i = 0; i < 100; i++) {
                if (access(qmpsock, F_OK) == 0 && qmp_connect(qmpsock, 2000, ret_qmp) == 0)
                        return pid;
                usleep(50 * 1000);
        }
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        fail_msg("QEMU did not open its QMP socket (see %s)", logf);
        return -1;
}

static void qemu_stop(pid_t pid, struct qmp *q)
{
        qmp_close(q);
        kill(pid, SIGTERM);
        assert_int_equal(waitpid(pid, NULL, 0), pid);
}

/* QEMU's self-announcement: RARP broadcasts from the NIC's MAC, sent by
 * QEMU itself through the netdev. */
static void announce(struct qmp *q)
{
        assert_int_equal(qmp_execute_json(q, "announce-self",
                                          "{\"initial\":50,\"max\":100,\"rounds\":1,\"step\":50}",
                                          2000, NULL), 0);
}

static bool rarp_seen(int ps, int ms)
{
        static const uint8_t mac[6] = { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 };
        uint8_t b[2000];
        ssize_t n = recv_type(ps, ETH_RARP, b, sizeof(b), ms);

        return n >= 14 && memcmp(b + 6, mac, 6) == 0;
}

/* QEMU connects its stream netdev asynchronously, and drops frames until
 * it is connected: announce until one passes. */
static bool announce_until_seen(struct qmp *q, int ps)
{
        for (int i = 0; i < 20; i++) {
                announce(q);
                if (rarp_seen(ps, 500))
                        return true;
        }
        return false;
}

/* QEMU 7.2 itself on the relay: it connects with netbuf_qemu_netdev()'s
 * argument, its frames pass or are held like the fake's, and a restarted
 * QEMU connects again. */
static void test_real_qemu(void **state)
{
        char dir[] = "/tmp/havms-netbuf.XXXXXX", path[96], err[256], netdev[256];
        struct netbuf_options o = { .vm = "test", .nic = 3, .tap = "nbt3", .bridge = "",
                                    .max_bytes = 1 << 20, .backend = NETBUF_RELAY };
        struct sockaddr_ll sll = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL) };
        struct netbuf *nb;
        struct qmp *q;
        pid_t pid;
        int ps;

        if (!have_qemu())
                skip();
        assert_non_null(mkdtemp(dir));
        snprintf(path, sizeof(path), "%s/nic3.sock", dir);
        o.socket_path = path;
        if (netbuf_open(&o, &nb, err, sizeof(err)) < 0)
                fail_msg("netbuf_open: %s", err);
        assert_int_equal(netbuf_qemu_netdev(nb, netdev, sizeof(netdev)), 0);
        ps = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
        assert_true(ps >= 0);
        sll.sll_ifindex = (int)if_nametoindex("nbt3");
        assert_int_equal(bind(ps, (struct sockaddr *)&sll, sizeof(sll)), 0);

        pid = qemu_start(dir, netdev, &q);
        assert_true(announce_until_seen(q, ps));
        /* buffering: held until the epoch is released */
        netbuf_set_buffering(nb, true);
        while (rarp_seen(ps, 300)) {
        }
        announce(q);
        assert_true(readable(netbuf_event_fd(nb), 5000));
        assert_false(rarp_seen(ps, 300));
        assert_int_equal(netbuf_barrier(nb, 1), 0);
        assert_int_equal(netbuf_release(nb, 1), 0);
        assert_true(rarp_seen(ps, 2000));
        netbuf_set_buffering(nb, false);
        qemu_stop(pid, q);

        /* a new QEMU on the same socket */
        while (rarp_seen(ps, 100)) {
        }
        pid = qemu_start(dir, netdev, &q);
        assert_true(announce_until_seen(q, ps));
        qemu_stop(pid, q);

        close(ps);
        netbuf_close(nb);
        char logf[128];
        snprintf(logf, sizeof(logf), "%s/qemu.log", dir);
        unlink(logf);
        rmdir(dir);
}

/* QEMU listens (qemu_listens, -netdev stream,server=on): the relay
 * connects with netbuf_attach(); a relay that dies (a checkpointd crash:
 * netbuf_close) and a new one opened next to the same, still running QEMU
 * connects again and frames pass; output held by the new one is held. */
static void test_real_qemu_listens(void **state)
{
        char dir[] = "/tmp/havms-netbuf.XXXXXX", path[96], err[256], netdev[256];
        struct netbuf_options o = { .vm = "test", .nic = 4, .tap = "nbt4", .bridge = "",
                                    .max_bytes = 1 << 20, .backend = NETBUF_RELAY,
                                    .qemu_listens = true };
        struct sockaddr_ll sll = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL) };
        struct netbuf *nb;
        struct qmp *q;
        pid_t pid;
        int ps;

        if (!have_qemu())
                skip();
        assert_non_null(mkdtemp(dir));
        snprintf(path, sizeof(path), "%s/nic4.sock", dir);
        o.socket_path = path;
        if (netbuf_open(&o, &nb, err, sizeof(err)) < 0)
                fail_msg("netbuf_open: %s", err);
        assert_int_equal(netbuf_qemu_netdev(nb, netdev, sizeof(netdev)), 0);
        assert_non_null(strstr(netdev, "server=on"));
        /* nobody listens yet */
        assert_true(netbuf_attach(nb, err, sizeof(err)) < 0);
        pid = qemu_start(dir, netdev, &q);
        assert_int_equal(netbuf_attach(nb, err, sizeof(err)), 0);
        assert_int_equal(netbuf_attach(nb, err, sizeof(err)), 0); /* connected: no-op */
        ps = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
        assert_true(ps >= 0);
        sll.sll_ifindex = (int)if_nametoindex("nbt4");
        assert_int_equal(bind(ps, (struct sockaddr *)&sll, sizeof(sll)), 0);
        assert_true(announce_until_seen(q, ps));
        close(ps);

        /* the relay goes away (its tap too); a new one, buffering from the
         * start, reaches the same QEMU */
        netbuf_close(nb);
        assert_int_equal(if_nametoindex("nbt4"), 0);
        if (netbuf_open(&o, &nb, err, sizeof(err)) < 0)
                fail_msg("netbuf_open again: %s", err);
        netbuf_set_buffering(nb, true);
        ps = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
        assert_true(ps >= 0);
        sll.sll_ifindex = (int)if_nametoindex("nbt4");
        assert_int_equal(bind(ps, (struct sockaddr *)&sll, sizeof(sll)), 0);
        assert_int_equal(netbuf_attach(nb, err, sizeof(err)), 0);
        /* QEMU accepts the new relay once it saw the old one go; until
         * then its frames are dropped: announce until one is held */
        bool held = false;
        for (int i = 0; i < 20 && !held; i++) {
                announce(q);
                held = readable(netbuf_event_fd(nb), 500);
        }
        assert_true(held);
        assert_false(rarp_seen(ps, 300));
        netbuf_set_buffering(nb, false); /* released, in order */
        assert_true(rarp_seen(ps, 2000));
        assert_true(announce_until_seen(q, ps));
        qemu_stop(pid, q);

        close(ps);
        netbuf_close(nb);
        char f[128];
        snprintf(f, sizeof(f), "%s/qemu.log", dir);
        unlink(f);
        unlink(path); /* QEMU's socket file */
        rmdir(dir);
}

static void write_sysctl(const char *path, const char *v)
{
        int fd = open(path, O_WRONLY | O_CLOEXEC);

        if (fd < 0)
                return;
        /* best effort: the tests filter frames by EtherType anyway */
        ssize_t n = write(fd, v, strlen(v));
        (void)n;
        close(fd);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_passthrough, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_hold_until_release, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_barrier_cuts_exactly, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_partial_frame_next_epoch, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_lan_to_guest_while_buffering, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_output_waiting_eventfd, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_backpressure, fx_setup_small, fx_teardown),
                cmocka_unit_test_setup_teardown(test_set_buffering_off_releases_in_order, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_discard, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_take_and_emit, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_reconnect, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_bad_length, fx_setup, fx_teardown),
                cmocka_unit_test_setup_teardown(test_qemu_netdev, fx_setup, fx_teardown),
                cmocka_unit_test(test_bridge_and_options),
                cmocka_unit_test(test_plug_refused),
                cmocka_unit_test(test_real_qemu),
                cmocka_unit_test(test_real_qemu_listens),
        };

        if (geteuid() != 0) {
                printf("SKIP: test_netbuf needs root (a network namespace and a tap)\n");
                return 77;
        }
        if (access("/dev/net/tun", R_OK | W_OK) != 0) {
                printf("SKIP: test_netbuf needs /dev/net/tun\n");
                return 77;
        }
        if (unshare(CLONE_NEWNET) != 0) {
                printf("SKIP: test_netbuf cannot make a network namespace: %s\n", strerror(errno));
                return 77;
        }
        /* No IPv6 chatter (router solicitations, MLD) on the test links. */
        write_sysctl("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
        write_sysctl("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1");
        return cmocka_run_group_tests(tests, NULL, NULL);
}
