#include "wol.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define WOL_SYNC_LEN 6
#define WOL_COPIES 16

static int hexval(char c)
{
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

/* Two hex digits at s into *ret; -EINVAL unless both are hex digits. */
static int hexbyte(const char *s, uint8_t *ret)
{
        int hi = hexval(s[0]), lo = hi < 0 ? -1 : hexval(s[1]);
        if (hi < 0 || lo < 0)
                return -EINVAL;
        *ret = (uint8_t)(hi << 4 | lo);
        return 0;
}

/* "xx:xx:..." or "xx-xx-..." with exactly n pairs and one separator
 * throughout; or, when contiguous is set, 2n hex digits in a row. */
static int parse_hex(const char *s, size_t n, bool contiguous, uint8_t *out)
{
        size_t len = strlen(s);
        uint8_t tmp[6];
        if (n > sizeof(tmp))
                return -EINVAL;
        if (contiguous && len == 2 * n) {
                for (size_t i = 0; i < n; i++)
                        if (hexbyte(s + 2 * i, &tmp[i]) < 0)
                                return -EINVAL;
                memcpy(out, tmp, n);
                return 0;
        }
        if (len != 3 * n - 1)
                return -EINVAL;
        char sep = s[2];
        if (sep != ':' && sep != '-')
                return -EINVAL;
        for (size_t i = 0; i < n; i++) {
                if (hexbyte(s + 3 * i, &tmp[i]) < 0)
                        return -EINVAL;
                if (i + 1 < n && s[3 * i + 2] != sep)
                        return -EINVAL;
        }
        memcpy(out, tmp, n);
        return 0;
}

int wol_parse_mac(const char *s, uint8_t ret_mac[6])
{
        static const uint8_t zero[6];
        uint8_t mac[6];
        if (!s || parse_hex(s, 6, false, mac) < 0)
                return -EINVAL;
        /* The multicast bit (which broadcast has too) or all zeros: never
         * one NIC's own address, so a typo rather than a spare. */
        if ((mac[0] & 1) || memcmp(mac, zero, 6) == 0)
                return -EINVAL;
        memcpy(ret_mac, mac, 6);
        return 0;
}

void wol_format_mac(const uint8_t mac[6], char buf[WOL_MAC_STRLEN])
{
        snprintf(buf, WOL_MAC_STRLEN, "%02x:%02x:%02x:%02x:%02x:%02x",
                 mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
}

int wol_parse_password(const char *s, uint8_t ret_pw[6], size_t *ret_len)
{
        uint8_t pw[6];
        size_t n;
        if (!s)
                return -EINVAL;
        if (strchr(s, '.')) {
                /* dotted IPv4 form: inet_pton takes exactly four decimal
                 * parts of 0..255, nothing before or after */
                struct in_addr a;
                if (inet_pton(AF_INET, s, &a) != 1)
                        return -EINVAL;
                memcpy(pw, &a.s_addr, 4); /* network order: "1.2.3.4" is 01 02 03 04 */
                n = 4;
        } else if (parse_hex(s, 4, true, pw) == 0) {
                n = 4;
        } else if (parse_hex(s, 6, true, pw) == 0) {
                n = 6;
        } else {
                return -EINVAL;
        }
        memcpy(ret_pw, pw, n);
        *ret_len = n;
        return 0;
}

void wol_format_password(const uint8_t *pw, size_t pwlen, char buf[WOL_PW_STRLEN])
{
        size_t off = 0;
        buf[0] = '\0';
        for (size_t i = 0; i < pwlen && i < 6; i++)
                off += (size_t)snprintf(buf + off, WOL_PW_STRLEN - off, "%s%02x",
                                        i ? ":" : "", pw[i]);
}

static bool pwlen_ok(size_t pwlen)
{
        return pwlen == 0 || pwlen == 4 || pwlen == 6;
}

size_t wol_build(const uint8_t mac[6], const uint8_t *pw, size_t pwlen, uint8_t *buf)
{
        if (!pwlen_ok(pwlen))
                return 0;
        memset(buf, 0xff, WOL_SYNC_LEN);
        for (unsigned i = 0; i < WOL_COPIES; i++)
                memcpy(buf + WOL_SYNC_LEN + 6 * i, mac, 6);
        if (pwlen)
                memcpy(buf + WOL_MAGIC_LEN, pw, pwlen);
        return WOL_MAGIC_LEN + pwlen;
}

/* Lower is better: the order in which verdicts win over each other when a
 * payload holds several magic sequences. */
static int rank(enum wol_verdict v)
{
        switch (v) {
        case WOL_VALID: return 0;
        case WOL_BAD_PASSWORD: return 1;
        case WOL_OTHER_MAC: return 2;
        case WOL_MALFORMED: break;
        }
        return 3;
}

static bool all_ff(const uint8_t *p, size_t n)
{
        for (size_t i = 0; i < n; i++)
                if (p[i] != 0xff)
                        return false;
        return true;
}

enum wol_verdict wol_scan(const uint8_t *payload, size_t len, const uint8_t mac[6],
                          const uint8_t *pw, size_t pwlen, uint8_t ret_seen[6])
{
        enum wol_verdict best = WOL_MALFORMED;
        const uint8_t *best_mac = NULL;

        if (!payload || len < WOL_MAGIC_LEN)
                return WOL_MALFORMED;
        /* Every offset where a whole magic sequence could start. A longer
         * run of 0xFF is found at its last six bytes: earlier offsets read
         * 0xFF bytes as the address and fail the sixteen copies. */
        for (size_t i = 0; i + WOL_MAGIC_LEN <= len; i++) {
                const uint8_t *cand = payload + i + WOL_SYNC_LEN;
                if (!all_ff(payload + i, WOL_SYNC_LEN) || all_ff(cand, 6))
                        continue;
                unsigned copies = 1;
                while (copies < WOL_COPIES && memcmp(cand + 6 * copies, cand, 6) == 0)
                        copies++;
                if (copies < WOL_COPIES)
                        continue;

                enum wol_verdict v;
                if (memcmp(cand, mac, 6) != 0) {
                        v = WOL_OTHER_MAC;
                } else {
                        size_t end = i + WOL_MAGIC_LEN;
                        /* bytes past the password are ignored (wol.h) */
                        bool pw_ok = pwlen == 0 ||
                                     (len - end >= pwlen && memcmp(payload + end, pw, pwlen) == 0);
                        v = pw_ok ? WOL_VALID : WOL_BAD_PASSWORD;
                }
                if (rank(v) < rank(best)) {
                        best = v;
                        best_mac = cand;
                }
                if (best == WOL_VALID)
                        break;
        }
        if (best_mac && ret_seen)
                memcpy(ret_seen, best_mac, 6);
        return best;
}

enum wol_verdict wol_check(const uint8_t *payload, size_t len, const uint8_t mac[6],
                           const uint8_t *pw, size_t pwlen)
{
        return wol_scan(payload, len, mac, pw, pwlen, NULL);
}

const char *wol_verdict_name(enum wol_verdict v)
{
        switch (v) {
        case WOL_VALID: return "valid";
        case WOL_OTHER_MAC: return "other-mac";
        case WOL_BAD_PASSWORD: return "bad-password";
        case WOL_MALFORMED: return "malformed";
        }
        return "unknown";
}

/* Append "fmt" to err (with "; " between entries), never overflowing. */
static void err_add(char *err, size_t errlen, const char *fmt, ...)
{
        if (!err || errlen == 0)
                return;
        size_t off = strnlen(err, errlen);
        if (off + 1 >= errlen)
                return;
        if (off > 0) {
                int n = snprintf(err + off, errlen - off, "; ");
                off += (size_t)n < errlen - off ? (size_t)n : errlen - off - 1;
        }
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err + off, errlen - off, fmt, ap);
        va_end(ap);
}

static int send_udp(const struct wol_target *t, const uint8_t *pkt, size_t len,
                    char *err, size_t errlen)
{
        const char *bc = t->broadcast[0] ? t->broadcast : WOL_BROADCAST_DEFAULT;
        struct sockaddr_in dst = {
                .sin_family = AF_INET,
                .sin_port = htons(t->port ? t->port : WOL_PORT_DEFAULT),
        };
        const int one = 1;
        const char *step;
        int r = 0, fd = -1;

        if (inet_pton(AF_INET, bc, &dst.sin_addr) != 1) {
                err_add(err, errlen, "udp: broadcast address '%s' is not an IPv4 address", bc);
                return -EINVAL;
        }
        step = "socket";
        fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                goto fail;
        step = "SO_BROADCAST";
        if (setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &one, sizeof(one)) < 0)
                goto fail;
        /* Out of this interface whatever the routes say: the spare sits on
         * this segment, and 255.255.255.255 would otherwise leave by the
         * default route's interface. */
        step = "SO_BINDTODEVICE";
        if (setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, t->ifname, (socklen_t)strlen(t->ifname)) < 0)
                goto fail;
        step = "sendto";
        ssize_t n = sendto(fd, pkt, len, 0, (const struct sockaddr *)&dst, sizeof(dst));
        if (n < 0)
                goto fail;
        if ((size_t)n != len) {
                r = -EMSGSIZE;
                err_add(err, errlen, "udp: sent %zd of %zu bytes", n, len);
        }
        goto out;
fail:
        r = -errno;
        err_add(err, errlen, "udp: %s on %s to %s: %s", step, t->ifname, bc, strerror(errno));
out:
        if (fd >= 0)
                close(fd);
        return r;
}

static int send_raw(const struct wol_target *t, const uint8_t *pkt, size_t len,
                    char *err, size_t errlen)
{
        struct sockaddr_ll dst = {
                .sll_family = AF_PACKET,
                .sll_protocol = htons(WOL_ETHERTYPE),
                .sll_halen = 6,
                .sll_addr = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff },
        };
        const char *step;
        int r = 0, fd = -1;

        step = "if_nametoindex";
        dst.sll_ifindex = (int)if_nametoindex(t->ifname);
        if (dst.sll_ifindex == 0)
                goto fail;
        /* SOCK_DGRAM: the kernel writes the Ethernet header from dst and
         * the interface's own address as the source. Protocol 0: this
         * socket only sends, it receives no frames. */
        step = "socket(AF_PACKET)";
        fd = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                goto fail;
        step = "sendto";
        ssize_t n = sendto(fd, pkt, len, 0, (const struct sockaddr *)&dst, sizeof(dst));
        if (n < 0)
                goto fail;
        if ((size_t)n != len) {
                r = -EMSGSIZE;
                err_add(err, errlen, "raw: sent %zd of %zu bytes", n, len);
        }
        goto out;
fail:
        r = -errno;
        err_add(err, errlen, "raw: %s on %s: %s", step, t->ifname, strerror(errno));
out:
        if (fd >= 0)
                close(fd);
        return r;
}

int wol_send(const struct wol_target *t, unsigned *ret_sent, char *err, size_t errlen)
{
        uint8_t pkt[WOL_PACKET_MAX];
        size_t len;
        unsigned sent = 0;

        if (err && errlen)
                err[0] = '\0';
        if (!t || !t->ifname[0] || strnlen(t->ifname, sizeof(t->ifname)) >= sizeof(t->ifname) ||
            strnlen(t->broadcast, sizeof(t->broadcast)) >= sizeof(t->broadcast)) {
                err_add(err, errlen, "bad target: interface name missing or too long");
                return -EINVAL;
        }
        len = wol_build(t->mac, t->pw, t->pwlen, pkt);
        if (len == 0) {
                err_add(err, errlen, "bad target: password of %zu bytes (0, 4 or 6)", t->pwlen);
                return -EINVAL;
        }
        int ru = send_udp(t, pkt, len, err, errlen);
        if (ru == 0)
                sent |= WOL_SENT_UDP;
        int rr = send_raw(t, pkt, len, err, errlen);
        if (rr == 0)
                sent |= WOL_SENT_RAW;
        if (sent == 0)
                return ru;
        if (ret_sent)
                *ret_sent = sent;
        return 0;
}
