/* netbuf's plug backend for real, run inside the test guest (Debian cloud
 * 6.1: sch_plug, ifb, sch_ingress, cls_u32, act_mirred, tun, bridge, veth
 * as modules; /init loads them). Statically linked: no cmocka (there is
 * no static libcmocka), one line per case instead:
 *
 *   HAVMS-NETBUF-CASE ok|FAILED <name>
 *   HAVMS-NETBUF-SUMMARY passed=N failed=M
 *
 * The test plays QEMU by attaching to the persistent tap netbuf made
 * (what `-netdev tap,ifname=` does) and the LAN with a bridge, a veth
 * pair and a packet socket on the far end:
 *
 *   "guest" fd --tap nbp0--[ingress->ifb->plug]--> br0 --> lan0 ~ lan1 (observer)
 *
 * Run by test/integration/netbuf-plug-in-guest.sh.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <netlink/netlink.h>
#include <netlink/route/link.h>
#include <netlink/route/link/veth.h>

#include "netbuf.h"

#define ETYPE 0x88b5            /* our frames */
#define ETYPE_TINY 0x88b6       /* frames too short to carry a tag */
#define TAG_TINY 0xfffffff0u
#define MAX_BYTES 5000
#define WAIT_MS 3000
#define QUIET_MS 400

static struct netbuf *nb;
static int guest = -1;          /* QEMU's side of the tap */
static int lan = -1;            /* packet socket on lan1 */
static int lan_ifindex;
static uint64_t epoch;

#define CHECK(c)                                                                   \
        do {                                                                       \
                if (!(c)) {                                                        \
                        printf("    check failed at line %d: %s\n", __LINE__, #c); \
                        return false;                                              \
                }                                                                  \
        } while (0)

/* ---- frames ---- */

static size_t mkframe(uint8_t *b, uint32_t tag, size_t len)
{
        static const uint8_t src[6] = { 0x02, 0, 0, 0, 0, 0x01 };
        uint32_t be = htonl(tag);

        memset(b, 0xff, 6);
        memcpy(b + 6, src, 6);
        if (tag == TAG_TINY) {
                b[12] = ETYPE_TINY >> 8;
                b[13] = ETYPE_TINY & 0xff;
                memset(b + 14, 0, len - 14);
                return len;
        }
        b[12] = ETYPE >> 8;
        b[13] = ETYPE & 0xff;
        memcpy(b + 14, &be, 4);
        memset(b + 18, (int)(tag & 0xff), len - 18);
        return len;
}

static int64_t frame_tag(const uint8_t *b, size_t len)
{
        uint32_t be;

        if (len >= 14 && b[12] == (ETYPE_TINY >> 8) && b[13] == (ETYPE_TINY & 0xff))
                return TAG_TINY;
        if (len < 18 || b[12] != (ETYPE >> 8) || b[13] != (ETYPE & 0xff))
                return -1;
        memcpy(&be, b + 14, 4);
        return ntohl(be);
}

static bool readable(int fd, int ms)
{
        struct pollfd p = { .fd = fd, .events = POLLIN };

        return poll(&p, 1, ms) == 1;
}

static int ms_since(const struct timespec *t0)
{
        struct timespec t;

        clock_gettime(CLOCK_MONOTONIC, &t);
        return (int)((t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000);
}

/* The guest sends a frame. */
static bool guest_send(uint32_t tag, size_t len)
{
        uint8_t b[2000];

        mkframe(b, tag, len);
        return write(guest, b, len) == (ssize_t)len;
}

/* Our next frame on the LAN within ms: its tag, or -1. */
static int64_t lan_recv(int ms)
{
        struct timespec t0;
        uint8_t b[2000];

        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (;;) {
                struct sockaddr_ll sll;
                socklen_t sl = sizeof(sll);
                int left = ms - ms_since(&t0);
                ssize_t n;

                if (left < 0 || !readable(lan, left))
                        return -1;
                n = recvfrom(lan, b, sizeof(b), 0, (struct sockaddr *)&sll, &sl);
                if (n < 0)
                        return -1;
                if (sll.sll_pkttype == PACKET_OUTGOING || frame_tag(b, (size_t)n) < 0)
                        continue;
                return frame_tag(b, (size_t)n);
        }
}

static void lan_drain(void)
{
        while (lan_recv(50) >= 0) {
        }
}

static bool lan_send(uint32_t tag, size_t len)
{
        uint8_t b[2000];
        struct sockaddr_ll sll = { .sll_family = AF_PACKET, .sll_ifindex = lan_ifindex,
                                   .sll_halen = 6 };

        mkframe(b, tag, len);
        memset(sll.sll_addr, 0xff, 6);
        return sendto(lan, b, len, 0, (struct sockaddr *)&sll, sizeof(sll)) == (ssize_t)len;
}

static int64_t guest_recv(int ms)
{
        struct timespec t0;
        uint8_t b[2000];

        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (;;) {
                int left = ms - ms_since(&t0);
                ssize_t n;

                if (left < 0 || !readable(guest, left))
                        return -1;
                n = read(guest, b, sizeof(b));
                if (n > 0 && frame_tag(b, (size_t)n) >= 0)
                        return frame_tag(b, (size_t)n);
        }
}

static struct netbuf_stats stats(void)
{
        struct netbuf_stats st;

        netbuf_get_stats(nb, &st);
        return st;
}

/* The kernel takes a written frame synchronously, but give it a moment
 * under TCG before counting. */
static bool wait_held(uint64_t frames)
{
        for (int i = 0; i < WAIT_MS / 10; i++) {
                if (stats().held_frames == frames)
                        return true;
                usleep(10000);
        }
        printf("    held_frames %llu, expected %llu\n",
               (unsigned long long)stats().held_frames, (unsigned long long)frames);
        return false;
}

/* ---- cases ---- */

static bool case_qemu_netdev(void)
{
        char buf[128];

        CHECK(netbuf_qemu_netdev(nb, buf, sizeof(buf)) == 0);
        CHECK(strcmp(buf, "tap,ifname=nbp0,script=no,downscript=no") == 0);
        CHECK(if_nametoindex("ifb-nbp0") > 0);
        return true;
}

static bool case_passthrough(void)
{
        struct netbuf_stats st0 = stats();

        CHECK(guest_send(1, 100));
        CHECK(guest_send(2, 200));
        CHECK(lan_recv(WAIT_MS) == 1);
        CHECK(lan_recv(WAIT_MS) == 2);
        CHECK(stats().frames_out - st0.frames_out == 2);
        CHECK(stats().held_frames == 0);
        return true;
}

static bool case_hold_until_release(void)
{
        uint64_t e = ++epoch;
        struct netbuf_stats st0;

        netbuf_set_buffering(nb, true);
        st0 = stats();
        CHECK(guest_send(10, 100));
        CHECK(guest_send(11, 200));
        CHECK(wait_held(2));
        CHECK(stats().held_bytes == 300);
        CHECK(lan_recv(QUIET_MS) == -1);
        CHECK(netbuf_barrier(nb, e) == 0);
        CHECK(netbuf_release(nb, e - 1) == 0);
        CHECK(lan_recv(QUIET_MS) == -1);
        CHECK(netbuf_release(nb, e) == 0);
        CHECK(lan_recv(WAIT_MS) == 10);
        CHECK(lan_recv(WAIT_MS) == 11);
        CHECK(stats().frames_out - st0.frames_out == 2);
        CHECK(stats().held_frames == 0);
        CHECK(stats().held_bytes_max >= 300);
        /* the kernel's queue is not watched per frame */
        CHECK(!netbuf_output_waiting(nb) && !netbuf_full(nb));
        return true;
}

static bool case_barrier_cuts_exactly(void)
{
        uint64_t e1 = ++epoch, e2 = ++epoch;

        CHECK(guest_send(20, 100));
        CHECK(netbuf_barrier(nb, e1) == 0);
        CHECK(guest_send(21, 100));
        CHECK(wait_held(2));
        CHECK(netbuf_release(nb, e1) == 0);
        CHECK(lan_recv(WAIT_MS) == 20);
        CHECK(lan_recv(QUIET_MS) == -1);        /* 21 belongs to e2 */
        CHECK(netbuf_barrier(nb, e2) == 0);
        CHECK(netbuf_release(nb, e2) == 0);
        CHECK(lan_recv(WAIT_MS) == 21);
        CHECK(netbuf_barrier(nb, e2) == -EINVAL);
        return true;
}

/* Two epochs closed before the first ACK: sch_plug keeps one count, so
 * the second barrier is merged into the third. Nothing may leave early. */
static bool case_outstanding_epochs_merge(void)
{
        uint64_t e1 = ++epoch, e2 = ++epoch, e3 = ++epoch;

        CHECK(guest_send(30, 100));
        CHECK(netbuf_barrier(nb, e1) == 0);
        CHECK(guest_send(31, 100));
        CHECK(guest_send(32, 100));
        CHECK(netbuf_barrier(nb, e2) == 0);
        CHECK(guest_send(33, 100));
        CHECK(wait_held(4));
        CHECK(netbuf_release(nb, e1) == 0);
        CHECK(lan_recv(WAIT_MS) == 30);
        CHECK(lan_recv(QUIET_MS) == -1);        /* not 31: merged, held longer */
        CHECK(netbuf_release(nb, e2) == 0);
        CHECK(lan_recv(QUIET_MS) == -1);
        CHECK(netbuf_barrier(nb, e3) == 0);
        CHECK(netbuf_release(nb, e3) == 0);
        CHECK(lan_recv(WAIT_MS) == 31);
        CHECK(lan_recv(WAIT_MS) == 32);
        CHECK(lan_recv(WAIT_MS) == 33);
        CHECK(stats().held_frames == 0);
        return true;
}

/* An Ethernet header and 2 bytes: the match-all filter still catches it. */
static bool case_tiny_frame_buffered(void)
{
        uint64_t e = ++epoch;

        CHECK(guest_send(TAG_TINY, 16));
        CHECK(wait_held(1));
        CHECK(lan_recv(QUIET_MS) == -1);
        CHECK(netbuf_barrier(nb, e) == 0);
        CHECK(netbuf_release(nb, e) == 0);
        CHECK(lan_recv(WAIT_MS) == TAG_TINY);
        return true;
}

static bool case_lan_to_guest_while_buffering(void)
{
        struct netbuf_stats st0 = stats();

        CHECK(guest_send(40, 100));
        CHECK(wait_held(1));
        CHECK(lan_send(41, 300));
        CHECK(guest_recv(WAIT_MS) == 41);
        CHECK(stats().frames_in - st0.frames_in >= 1);
        CHECK(stats().held_frames == 1);
        uint64_t e = ++epoch;
        CHECK(netbuf_barrier(nb, e) == 0);
        CHECK(netbuf_release(nb, e) == 0);
        CHECK(lan_recv(WAIT_MS) == 40);
        return true;
}

/* Beyond max_bytes the kernel drops (no backpressure with plug). */
static bool case_limit_drops(void)
{
        struct netbuf_stats st0 = stats(), st;
        uint64_t e = ++epoch;

        for (uint32_t t = 50; t < 60; t++)
                CHECK(guest_send(t, 1000));
        CHECK(wait_held(5));
        st = stats();
        CHECK(st.held_bytes == MAX_BYTES);
        CHECK(st.frames_dropped - st0.frames_dropped == 5);
        CHECK(netbuf_barrier(nb, e) == 0);
        CHECK(netbuf_release(nb, e) == 0);
        for (uint32_t t = 50; t < 55; t++)
                CHECK(lan_recv(WAIT_MS) == t);
        CHECK(lan_recv(QUIET_MS) == -1);
        return true;
}

static bool case_buffering_off_releases_in_order(void)
{
        uint64_t e = ++epoch;

        CHECK(guest_send(60, 100));
        CHECK(netbuf_barrier(nb, e) == 0);
        CHECK(guest_send(61, 100));
        CHECK(wait_held(2));
        CHECK(lan_recv(QUIET_MS) == -1);
        netbuf_set_buffering(nb, false);
        CHECK(lan_recv(WAIT_MS) == 60);
        CHECK(lan_recv(WAIT_MS) == 61);
        CHECK(guest_send(62, 100));
        CHECK(lan_recv(WAIT_MS) == 62);
        return true;
}

/* On again: a fresh qdisc, counters carried over. */
static bool case_buffering_on_again(void)
{
        uint64_t drops = stats().frames_dropped;
        uint64_t e = ++epoch;

        CHECK(drops >= 5);
        netbuf_set_buffering(nb, true);
        CHECK(stats().frames_dropped == drops);
        CHECK(guest_send(70, 100));
        CHECK(wait_held(1));
        CHECK(lan_recv(QUIET_MS) == -1);
        CHECK(netbuf_barrier(nb, e) == 0);
        CHECK(netbuf_release(nb, e) == 0);
        CHECK(lan_recv(WAIT_MS) == 70);
        return true;
}

static bool case_discard(void)
{
        uint64_t e1 = ++epoch, e2 = ++epoch;

        CHECK(guest_send(80, 100));
        CHECK(netbuf_barrier(nb, e1) == 0);
        CHECK(guest_send(81, 100));
        CHECK(wait_held(2));
        netbuf_discard(nb);
        CHECK(stats().held_frames == 0);
        CHECK(netbuf_release(nb, e1) == 0);
        CHECK(lan_recv(QUIET_MS) == -1);
        /* still buffering, from a clean state */
        CHECK(guest_send(82, 100));
        CHECK(wait_held(1));
        CHECK(netbuf_barrier(nb, e2) == 0);
        CHECK(netbuf_release(nb, e2) == 0);
        CHECK(lan_recv(WAIT_MS) == 82);
        CHECK(lan_recv(QUIET_MS) == -1);
        return true;
}

static bool case_close_removes_devices(void)
{
        close(guest);
        guest = -1;
        netbuf_close(nb);
        nb = NULL;
        CHECK(if_nametoindex("nbp0") == 0);
        CHECK(if_nametoindex("ifb-nbp0") == 0);
        return true;
}

/* ---- set-up ---- */

static int ifreq_ioctl(unsigned long req, const char *name, int ifindex)
{
        struct ifreq ifr = { 0 };
        int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), r;

        snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
        if (req == SIOCSIFFLAGS) {
                if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) {
                        close(s);
                        return -errno;
                }
                ifr.ifr_flags |= IFF_UP;
        } else {
                ifr.ifr_ifindex = ifindex;
        }
        r = ioctl(s, req, &ifr) < 0 ? -errno : 0;
        close(s);
        return r;
}

static int lan_setup(void)
{
        struct nl_sock *sk = nl_socket_alloc();
        struct sockaddr_ll sll = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL) };
        int s, r;

        /* no IPv6 chatter on the test links */
        FILE *f = fopen("/proc/sys/net/ipv6/conf/default/disable_ipv6", "w");
        if (f) {
                fputs("1", f);
                fclose(f);
        }
        s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (s < 0 || ioctl(s, SIOCBRADDBR, "br0") < 0) {
                printf("cannot create bridge br0: %s\n", strerror(errno));
                return -1;
        }
        close(s);
        if (!sk || nl_connect(sk, NETLINK_ROUTE) < 0 ||
            (r = rtnl_link_veth_add(sk, "lan0", "lan1", getpid())) < 0) {
                printf("cannot create veth lan0/lan1\n");
                return -1;
        }
        nl_socket_free(sk);
        if (ifreq_ioctl(SIOCBRADDIF, "br0", (int)if_nametoindex("lan0")) < 0 ||
            ifreq_ioctl(SIOCSIFFLAGS, "br0", 0) < 0 || ifreq_ioctl(SIOCSIFFLAGS, "lan0", 0) < 0 ||
            ifreq_ioctl(SIOCSIFFLAGS, "lan1", 0) < 0) {
                printf("cannot set up the LAN links: %s\n", strerror(errno));
                return -1;
        }
        lan_ifindex = (int)if_nametoindex("lan1");
        lan = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
        sll.sll_ifindex = lan_ifindex;
        if (lan < 0 || bind(lan, (struct sockaddr *)&sll, sizeof(sll)) < 0) {
                printf("cannot open a packet socket on lan1: %s\n", strerror(errno));
                return -1;
        }
        return 0;
}

/* What QEMU does with -netdev tap,ifname=nbp0. */
static int guest_attach(void)
{
        struct ifreq ifr = { 0 };

        guest = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
        if (guest < 0)
                return -errno;
        ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
        snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "nbp0");
        return ioctl(guest, TUNSETIFF, &ifr) < 0 ? -errno : 0;
}

static const struct {
        const char *name;
        bool (*fn)(void);
} cases[] = {
        { "qemu_netdev", case_qemu_netdev },
        { "passthrough", case_passthrough },
        { "hold_until_release", case_hold_until_release },
        { "barrier_cuts_exactly", case_barrier_cuts_exactly },
        { "outstanding_epochs_merge", case_outstanding_epochs_merge },
        { "tiny_frame_buffered", case_tiny_frame_buffered },
        { "lan_to_guest_while_buffering", case_lan_to_guest_while_buffering },
        { "limit_drops", case_limit_drops },
        { "buffering_off_releases_in_order", case_buffering_off_releases_in_order },
        { "buffering_on_again", case_buffering_on_again },
        { "discard", case_discard },
        { "close_removes_devices", case_close_removes_devices },
};

int main(void)
{
        struct netbuf_options o = { .vm = "guest-test", .nic = 0, .tap = "nbp0", .bridge = "br0",
                                    .socket_path = "", .max_bytes = MAX_BYTES,
                                    .backend = NETBUF_PLUG };
        unsigned passed = 0, failed = 0;
        char err[512];
        int r;

        setvbuf(stdout, NULL, _IOLBF, 0);
        if (lan_setup() < 0)
                return 2;
        r = netbuf_open(&o, &nb, err, sizeof(err));
        if (r < 0) {
                printf("HAVMS-NETBUF-OPEN-FAILED %s\n", err);
                return 2;
        }
        printf("HAVMS-NETBUF-OPEN ok\n");
        r = guest_attach();
        if (r < 0) {
                printf("cannot attach to tap nbp0: %s\n", strerror(-r));
                return 2;
        }
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                bool ok;

                lan_drain();
                ok = cases[i].fn();
                printf("HAVMS-NETBUF-CASE %s %s\n", ok ? "ok" : "FAILED", cases[i].name);
                ok ? passed++ : failed++;
        }
        printf("HAVMS-NETBUF-SUMMARY passed=%u failed=%u\n", passed, failed);
        netbuf_close(nb);
        return failed ? 1 : 0;
}
