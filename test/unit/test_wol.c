/* Wake-on-LAN magic packets: the exact bytes, what a listener makes of
 * every kind of payload (ours, another MAC's, wrong/missing/extra password,
 * every truncation, 15 copies, a sequence inside a bigger payload,
 * garbage), the MAC and password parsers, and wol_send's refusals. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "wol.h"

static const uint8_t MAC[6] = { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 };
static const uint8_t OTHER[6] = { 0x52, 0x54, 0x00, 0x12, 0x34, 0x57 };
static const uint8_t PW4[6] = { 192, 168, 1, 1 };
static const uint8_t PW6[6] = { 0x01, 0x02, 0x03, 0x04, 0x05, 0x06 };

static void test_packet_bytes(void **state)
{
        (void)state;
        const uint8_t *pws[] = { NULL, PW4, PW6 };
        const size_t lens[] = { 0, 4, 6 };
        for (unsigned k = 0; k < 3; k++) {
                uint8_t buf[WOL_PACKET_MAX + 8];
                memset(buf, 0xa5, sizeof(buf));
                size_t n = wol_build(MAC, pws[k], lens[k], buf);
                assert_int_equal(n, 102 + lens[k]);
                for (unsigned i = 0; i < 6; i++)
                        assert_int_equal(buf[i], 0xff);
                for (unsigned c = 0; c < 16; c++)
                        assert_memory_equal(buf + 6 + 6 * c, MAC, 6);
                if (lens[k])
                        assert_memory_equal(buf + 102, pws[k], lens[k]);
                /* nothing written past the packet */
                for (size_t i = n; i < sizeof(buf); i++)
                        assert_int_equal(buf[i], 0xa5);
        }
        /* a password length the format does not have: nothing built */
        uint8_t buf[WOL_PACKET_MAX];
        memset(buf, 0, sizeof(buf));
        assert_int_equal(wol_build(MAC, PW6, 5, buf), 0);
        assert_int_equal(wol_build(MAC, PW6, 7, buf), 0);
        assert_int_equal(buf[0], 0);
}

static void test_roundtrip(void **state)
{
        (void)state;
        const uint8_t *pws[] = { NULL, PW4, PW6 };
        const size_t lens[] = { 0, 4, 6 };
        for (unsigned k = 0; k < 3; k++) {
                uint8_t buf[WOL_PACKET_MAX], seen[6] = { 0 };
                size_t n = wol_build(MAC, pws[k], lens[k], buf);
                assert_int_equal(wol_check(buf, n, MAC, pws[k], lens[k]), WOL_VALID);
                assert_int_equal(wol_scan(buf, n, MAC, pws[k], lens[k], seen), WOL_VALID);
                assert_memory_equal(seen, MAC, 6);
        }
}

static void test_other_mac(void **state)
{
        (void)state;
        uint8_t buf[WOL_PACKET_MAX], seen[6] = { 0 };
        size_t n = wol_build(OTHER, NULL, 0, buf);
        assert_int_equal(wol_scan(buf, n, MAC, NULL, 0, seen), WOL_OTHER_MAC);
        assert_memory_equal(seen, OTHER, 6);
        /* another MAC with our password is still another MAC */
        n = wol_build(OTHER, PW6, 6, buf);
        assert_int_equal(wol_check(buf, n, MAC, PW6, 6), WOL_OTHER_MAC);
        /* each byte of the address matters */
        for (unsigned b = 0; b < 6; b++) {
                uint8_t m[6];
                memcpy(m, MAC, 6);
                m[b] ^= 0x10;
                n = wol_build(m, NULL, 0, buf);
                assert_int_equal(wol_check(buf, n, MAC, NULL, 0), WOL_OTHER_MAC);
        }
}

static void test_password(void **state)
{
        (void)state;
        uint8_t buf[WOL_PACKET_MAX], seen[6] = { 0 };
        size_t n;

        /* wrong: every byte of a 4- and a 6-byte password */
        for (unsigned b = 0; b < 6; b++) {
                uint8_t pw[6];
                memcpy(pw, PW6, 6);
                pw[b] ^= 0x80;
                n = wol_build(MAC, pw, 6, buf);
                assert_int_equal(wol_scan(buf, n, MAC, PW6, 6, seen), WOL_BAD_PASSWORD);
                assert_memory_equal(seen, MAC, 6);
                if (b < 4) {
                        memcpy(pw, PW4, 4);
                        pw[b] ^= 0x80;
                        n = wol_build(MAC, pw, 4, buf);
                        assert_int_equal(wol_check(buf, n, MAC, PW4, 4), WOL_BAD_PASSWORD);
                }
        }
        /* missing */
        n = wol_build(MAC, NULL, 0, buf);
        assert_int_equal(wol_check(buf, n, MAC, PW4, 4), WOL_BAD_PASSWORD);
        assert_int_equal(wol_check(buf, n, MAC, PW6, 6), WOL_BAD_PASSWORD);
        /* too short: 4 bytes sent, the listener wants 6 (the 4 match) */
        n = wol_build(MAC, PW6, 4, buf);
        assert_int_equal(wol_check(buf, n, MAC, PW6, 6), WOL_BAD_PASSWORD);
        /* extra bytes are ignored, as firmware ignores them (wol.h): a
         * listener without a password wakes on a packet that has one, one
         * with 4 bytes on a 6-byte packet that starts with them */
        n = wol_build(MAC, PW6, 6, buf);
        assert_int_equal(wol_check(buf, n, MAC, NULL, 0), WOL_VALID);
        assert_int_equal(wol_check(buf, n, MAC, PW6, 4), WOL_VALID);
        /* ... but not when the first 4 differ */
        assert_int_equal(wol_check(buf, n, MAC, PW4, 4), WOL_BAD_PASSWORD);
}

static void test_truncated(void **state)
{
        (void)state;
        uint8_t buf[WOL_PACKET_MAX];
        size_t n = wol_build(MAC, NULL, 0, buf);
        for (size_t len = 0; len < n; len++) {
                assert_int_equal(wol_check(buf, len, MAC, NULL, 0), WOL_MALFORMED);
                /* the tail kept instead of the head: the sync stream is cut */
                assert_int_equal(wol_check(buf + n - len, len, MAC, NULL, 0), WOL_MALFORMED);
        }
        n = wol_build(MAC, PW6, 6, buf);
        for (size_t len = 0; len < n; len++)
                assert_int_equal(wol_check(buf, len, MAC, PW6, 6),
                                 len < WOL_MAGIC_LEN ? WOL_MALFORMED : WOL_BAD_PASSWORD);
        /* a truncated packet for another MAC is no complete sequence */
        n = wol_build(OTHER, NULL, 0, buf);
        assert_int_equal(wol_check(buf, n - 1, MAC, NULL, 0), WOL_MALFORMED);
}

static void test_fifteen_copies(void **state)
{
        (void)state;
        uint8_t buf[WOL_PACKET_MAX + 64];
        memset(buf, 0, sizeof(buf));
        size_t n = wol_build(MAC, NULL, 0, buf);
        /* 15 copies and then something else, long enough to hold 16 */
        memset(buf + 6 + 15 * 6, 0x00, 6);
        assert_int_equal(wol_check(buf, sizeof(buf), MAC, NULL, 0), WOL_MALFORMED);
        /* 15 copies and then another address */
        memcpy(buf + 6 + 15 * 6, OTHER, 6);
        assert_int_equal(wol_check(buf, n, MAC, NULL, 0), WOL_MALFORMED);
        /* one copy in the middle differs */
        wol_build(MAC, NULL, 0, buf);
        buf[6 + 7 * 6 + 3] ^= 1;
        assert_int_equal(wol_check(buf, n, MAC, NULL, 0), WOL_MALFORMED);
        /* a sync stream of five 0xFF */
        wol_build(MAC, NULL, 0, buf);
        buf[0] = 0;
        assert_int_equal(wol_check(buf, n, MAC, NULL, 0), WOL_MALFORMED);
}

/* A payload of non-0xFF filler with a packet at off. */
static size_t embed(uint8_t *payload, size_t size, size_t off, const uint8_t *mac,
                    const uint8_t *pw, size_t pwlen)
{
        for (size_t i = 0; i < size; i++)
                payload[i] = (uint8_t)(i * 7 % 251);
        return off + wol_build(mac, pw, pwlen, payload + off);
}

static void test_offset(void **state)
{
        (void)state;
        uint8_t p[1400];
        /* every offset of a 300-byte payload, with the password right after */
        for (size_t off = 0; off + WOL_MAGIC_LEN + 6 <= 300; off++) {
                embed(p, 300, off, MAC, PW6, 6);
                assert_int_equal(wol_check(p, 300, MAC, PW6, 6), WOL_VALID);
                assert_int_equal(wol_check(p, 300, MAC, PW4, 4), WOL_BAD_PASSWORD);
        }
        /* at the very end of a frame-sized payload */
        size_t end = embed(p, sizeof(p), sizeof(p) - WOL_MAGIC_LEN - 4, MAC, PW4, 4);
        assert_int_equal(end, sizeof(p));
        assert_int_equal(wol_check(p, sizeof(p), MAC, PW4, 4), WOL_VALID);
        /* the password cut off by the payload's end */
        assert_int_equal(wol_check(p, sizeof(p) - 1, MAC, PW4, 4), WOL_BAD_PASSWORD);
        /* a longer run of 0xFF before the copies (a UDP header's port
         * 65535, padding): still found */
        embed(p, sizeof(p), 500, MAC, NULL, 0);
        memset(p + 490, 0xff, 10);
        assert_int_equal(wol_check(p, sizeof(p), MAC, NULL, 0), WOL_VALID);
        /* several sequences: the best one decides, wherever it is */
        uint8_t seen[6];
        embed(p, sizeof(p), 10, OTHER, NULL, 0);
        wol_build(MAC, PW4, 4, p + 700);
        assert_int_equal(wol_scan(p, sizeof(p), MAC, PW6, 6, seen), WOL_BAD_PASSWORD);
        assert_memory_equal(seen, MAC, 6);
        wol_build(MAC, PW6, 6, p + 1000);
        assert_int_equal(wol_scan(p, sizeof(p), MAC, PW6, 6, seen), WOL_VALID);
        assert_int_equal(wol_scan(p, sizeof(p), MAC, PW4, 4, seen), WOL_VALID);
        embed(p, sizeof(p), 10, OTHER, NULL, 0);
        wol_build(OTHER, NULL, 0, p + 700);
        assert_int_equal(wol_scan(p, sizeof(p), MAC, NULL, 0, seen), WOL_OTHER_MAC);
        assert_memory_equal(seen, OTHER, 6);
}

static void test_garbage(void **state)
{
        (void)state;
        uint8_t p[1500];
        assert_int_equal(wol_check(NULL, 0, MAC, NULL, 0), WOL_MALFORMED);
        assert_int_equal(wol_check(p, 0, MAC, NULL, 0), WOL_MALFORMED);
        memset(p, 0, sizeof(p));
        assert_int_equal(wol_check(p, sizeof(p), MAC, NULL, 0), WOL_MALFORMED);
        /* all 0xFF: one long sync stream, not a packet for ff:ff:..:ff */
        memset(p, 0xff, sizeof(p));
        assert_int_equal(wol_check(p, sizeof(p), MAC, NULL, 0), WOL_MALFORMED);
        /* our MAC sixteen times without a sync stream */
        for (unsigned c = 0; c < 16; c++)
                memcpy(p + 6 * c, MAC, 6);
        assert_int_equal(wol_check(p, 16 * 6, MAC, NULL, 0), WOL_MALFORMED);
        srand(8);
        for (unsigned round = 0; round < 200; round++) {
                for (size_t i = 0; i < sizeof(p); i++)
                        p[i] = (uint8_t)rand();
                assert_int_equal(wol_check(p, sizeof(p), MAC, NULL, 0), WOL_MALFORMED);
        }
}

static void test_parse_mac(void **state)
{
        (void)state;
        uint8_t m[6];
        assert_int_equal(wol_parse_mac("52:54:00:12:34:56", m), 0);
        assert_memory_equal(m, MAC, 6);
        memset(m, 0, 6);
        assert_int_equal(wol_parse_mac("52-54-00-12-34-56", m), 0);
        assert_memory_equal(m, MAC, 6);
        assert_int_equal(wol_parse_mac("AA:bb:Cc:dD:ee:FE", m), 0);
        const uint8_t want[6] = { 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xfe };
        assert_memory_equal(m, want, 6);

        static const char *bad[] = {
                "", "52:54:00:12:34", "52:54:00:12:34:56:78", "52:54:00:12:34:56:",
                "52-54:00-12-34-56", "52:54:00:12:34-56", "5254.0012.3456", "525400123456",
                "52:54:00:12:34:5g", "52:54:00:12:34:5", "2:54:00:12:34:56", " 52:54:00:12:34:56",
                "52:54:00:12:34:56 ", "52::54:00:12:34:5", "52_54_00_12_34_56",
                "01:00:5e:00:00:01", /* multicast */
                "ff:ff:ff:ff:ff:ff", /* broadcast */
                "00:00:00:00:00:00",
        };
        for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                memset(m, 0x77, 6);
                if (wol_parse_mac(bad[i], m) != -EINVAL)
                        fail_msg("MAC '%s' accepted", bad[i]);
                for (unsigned b = 0; b < 6; b++)
                        assert_int_equal(m[b], 0x77); /* untouched */
        }
        assert_int_equal(wol_parse_mac(NULL, m), -EINVAL);

        char s[WOL_MAC_STRLEN];
        wol_format_mac(want, s);
        assert_string_equal(s, "aa:bb:cc:dd:ee:fe");
}

static void test_parse_password(void **state)
{
        (void)state;
        static const struct { const char *s; size_t len; uint8_t pw[6]; } good[] = {
                { "192.168.1.1", 4, { 192, 168, 1, 1 } },
                { "0.0.0.0", 4, { 0, 0, 0, 0 } },
                { "c0:a8:01:01", 4, { 192, 168, 1, 1 } },
                { "C0-A8-01-01", 4, { 192, 168, 1, 1 } },
                { "c0a80101", 4, { 192, 168, 1, 1 } },
                { "01:02:03:04:05:06", 6, { 1, 2, 3, 4, 5, 6 } },
                { "01-02-03-04-05-06", 6, { 1, 2, 3, 4, 5, 6 } },
                { "0102030405fF", 6, { 1, 2, 3, 4, 5, 0xff } },
        };
        for (unsigned i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
                uint8_t pw[6] = { 0 };
                size_t len = 99;
                if (wol_parse_password(good[i].s, pw, &len) != 0)
                        fail_msg("password '%s' refused", good[i].s);
                assert_int_equal(len, good[i].len);
                assert_memory_equal(pw, good[i].pw, len);
                char back[WOL_PW_STRLEN];
                wol_format_password(pw, len, back);
                assert_int_equal(strlen(back), 3 * len - 1);
        }
        static const char *bad[] = {
                "", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.4 ", "1..2.3", "a.b.c.d",
                "01:02:03", "01:02:03:04:05", "01:02:03:04:05:06:07", "01:02-03:04",
                "0102030405", "01020304050607", "zz:zz:zz:zz", "1:2:3:4", "010203040g06",
        };
        for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                uint8_t pw[6];
                size_t len = 99;
                memset(pw, 0x77, 6);
                if (wol_parse_password(bad[i], pw, &len) != -EINVAL)
                        fail_msg("password '%s' accepted", bad[i]);
                assert_int_equal(len, 99);
                assert_int_equal(pw[0], 0x77);
        }
        char none[WOL_PW_STRLEN];
        wol_format_password(NULL, 0, none);
        assert_string_equal(none, "");
}

static void test_verdict_names(void **state)
{
        (void)state;
        assert_string_equal(wol_verdict_name(WOL_VALID), "valid");
        assert_string_equal(wol_verdict_name(WOL_OTHER_MAC), "other-mac");
        assert_string_equal(wol_verdict_name(WOL_BAD_PASSWORD), "bad-password");
        assert_string_equal(wol_verdict_name(WOL_MALFORMED), "malformed");
}

/* Refusals that need no privilege and no network: the sending itself is
 * tested on the test bed (test/integration/wol.sh). */
static void test_send_refused(void **state)
{
        (void)state;
        struct wol_target t = { .ifname = "", .pwlen = 0 };
        memcpy(t.mac, MAC, 6);
        char err[256];
        unsigned sent = 99;
        assert_int_equal(wol_send(&t, &sent, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "interface"));
        assert_int_equal(sent, 99);

        strcpy(t.ifname, "lo");
        t.pwlen = 5;
        assert_int_equal(wol_send(&t, &sent, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "password"));

        /* no such interface: both ways fail, and err says why each did */
        strcpy(t.ifname, "havmsnosuch0");
        t.pwlen = 0;
        assert_true(wol_send(&t, &sent, err, sizeof(err)) < 0);
        assert_non_null(strstr(err, "udp: "));
        assert_non_null(strstr(err, "raw: "));
        assert_int_equal(sent, 99);

        /* not an IPv4 broadcast address: -EINVAL from the UDP side */
        strcpy(t.broadcast, "ff02::1");
        assert_int_equal(wol_send(&t, &sent, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "ff02::1"));
        /* a tiny err buffer is cut, never overrun */
        char tiny[8];
        memset(tiny, 'x', sizeof(tiny));
        assert_true(wol_send(&t, &sent, tiny, sizeof(tiny)) < 0);
        assert_true(memchr(tiny, '\0', sizeof(tiny)) != NULL);
        assert_int_equal(wol_send(&t, &sent, NULL, 0), -EINVAL);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_packet_bytes),
                cmocka_unit_test(test_roundtrip),
                cmocka_unit_test(test_other_mac),
                cmocka_unit_test(test_password),
                cmocka_unit_test(test_truncated),
                cmocka_unit_test(test_fifteen_copies),
                cmocka_unit_test(test_offset),
                cmocka_unit_test(test_garbage),
                cmocka_unit_test(test_parse_mac),
                cmocka_unit_test(test_parse_password),
                cmocka_unit_test(test_verdict_names),
                cmocka_unit_test(test_send_refused),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
