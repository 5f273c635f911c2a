/* libFuzzer target for the wake-on-LAN parsers (lib/wol.c): what the
 * spare's listener makes of any payload, and the MAC and password strings
 * of the command line and configuration.
 *
 * Input: byte 0 picks the listener's password length (0, 4 or 6), bytes
 * 1..6 its MAC, the next pwlen its password, the rest is the payload (and,
 * NUL-terminated, a string for the two string parsers). Checked against
 * the definition in wol.h, by brute force: VALID iff some offset holds
 * 6 x 0xFF, 16 x our MAC and our password; a verdict other than MALFORMED
 * names a MAC whose complete sequence is in the payload; a parsed string
 * formats back to what parses to the same bytes. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "wol.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* payload holds 6 x 0xFF + 16 x mac at some offset (followed by pw) */
static bool holds(const uint8_t *p, size_t len, const uint8_t mac[6], const uint8_t *pw, size_t pwlen)
{
        uint8_t want[WOL_PACKET_MAX];
        size_t n = wol_build(mac, pw, pwlen, want);
        return n && memmem(p, len, want, n) != NULL;
}

static void strings(const uint8_t *data, size_t size)
{
        char s[64];
        size_t n = size < sizeof(s) - 1 ? size : sizeof(s) - 1;
        memcpy(s, data, n);
        s[n] = '\0';
        uint8_t mac[6], mac2[6], pw[6], pw2[6];
        size_t pwlen, pwlen2;
        char back[WOL_PW_STRLEN > WOL_MAC_STRLEN ? WOL_PW_STRLEN : WOL_MAC_STRLEN];
        if (wol_parse_mac(s, mac) == 0) {
                wol_format_mac(mac, back);
                if (wol_parse_mac(back, mac2) != 0 || memcmp(mac, mac2, 6))
                        abort();
        }
        if (wol_parse_password(s, pw, &pwlen) == 0) {
                if (pwlen != 4 && pwlen != 6)
                        abort();
                wol_format_password(pw, pwlen, back);
                if (wol_parse_password(back, pw2, &pwlen2) != 0 || pwlen2 != pwlen ||
                    memcmp(pw, pw2, pwlen))
                        abort();
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static const size_t lens[] = { 0, 4, 6 };
        strings(data, size);
        if (size < 7)
                return 0;
        size_t pwlen = lens[data[0] % 3];
        if (size < 7 + pwlen)
                return 0;
        const uint8_t *mac = data + 1, *pw = data + 7;
        const uint8_t *p = data + 7 + pwlen;
        size_t len = size - 7 - pwlen;
        uint8_t seen[6];
        enum wol_verdict v = wol_scan(p, len, mac, pw, pwlen, seen);
        static const uint8_t ff[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
        bool valid = memcmp(mac, ff, 6) != 0 && holds(p, len, mac, pw, pwlen);
        if ((v == WOL_VALID) != valid)
                abort();
        if (v != WOL_MALFORMED && (!holds(p, len, seen, NULL, 0) || !memcmp(seen, ff, 6)))
                abort();
        if (v == WOL_OTHER_MAC && !memcmp(seen, mac, 6))
                abort();
        if (v == WOL_BAD_PASSWORD && (memcmp(seen, mac, 6) || pwlen == 0))
                abort();
        if (v != wol_check(p, len, mac, pw, pwlen))
                abort();
        return 0;
}
