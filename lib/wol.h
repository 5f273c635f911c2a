/* wol: wake-on-LAN magic packets for the powered-off spare host: parsing a
 * MAC and a SecureOn password, building the packet, judging a received
 * payload the way NIC firmware does, and sending one packet both ways (UDP
 * broadcast and a raw Ethernet frame of EtherType 0x0842).
 *
 * Owns: the magic packet format and its two transports. Does not own: when
 * to wake a spare, retries and back-off (the caller: failback's controller
 * or `havmsctl wake`), configuration, logging (errors are returned).
 *
 * Packet layout (docs/wol.md):
 *
 *   offset 0      6        12            96       102      102+pwlen
 *          +------+--------+--- ... -----+--------+--------+
 *          | FF x6| MAC    | MAC (x16)   | MAC    |password|
 *          +------+--------+--- ... -----+--------+--------+
 *           sync   copy 1                 copy 16  0, 4 or 6 bytes
 */
#pragma once
#include <stddef.h>
#include <stdint.h>

#define WOL_MAGIC_LEN 102              /* 6 x 0xFF + 16 x MAC */
#define WOL_PACKET_MAX (WOL_MAGIC_LEN + 6)
#define WOL_PORT_DEFAULT 9             /* "discard"; 7 (echo) is the other usual one */
#define WOL_ETHERTYPE 0x0842
#define WOL_BROADCAST_DEFAULT "255.255.255.255"
#define WOL_MAC_STRLEN 18              /* "52:54:00:12:34:56" + NUL */
#define WOL_PW_STRLEN 18               /* 6 bytes as "xx:xx:xx:xx:xx:xx" + NUL */

/* Parse "52:54:00:12:34:56" or "52-54-00-12-34-56" (one separator
 * throughout, two hex digits per byte, either case). A wake target is a
 * station's own address, so the all-zero address and group addresses
 * (the multicast bit, which includes ff:ff:ff:ff:ff:ff) are refused too:
 * -EINVAL for all of these. *ret_mac is written only on success. */
int wol_parse_mac(const char *s, uint8_t ret_mac[6]);

/* Write mac as "52:54:00:12:34:56" into buf (WOL_MAC_STRLEN bytes). */
void wol_format_mac(const uint8_t mac[6], char buf[WOL_MAC_STRLEN]);

/* Parse a SecureOn password: 4 bytes as a dotted IPv4 address
 * ("192.168.1.1", the form ether-wake and NIC utilities use) or as hex;
 * or 6 bytes as hex. Hex is either pairs separated by ':' or '-'
 * ("01:02:03:04:05:06") or 8/12 hex digits in a row ("010203040506").
 * -EINVAL for anything else; outputs written only on success. */
int wol_parse_password(const char *s, uint8_t ret_pw[6], size_t *ret_len);

/* Write pw (pwlen 0, 4 or 6) as colon-separated hex into buf
 * (WOL_PW_STRLEN bytes); "" for no password. */
void wol_format_password(const uint8_t *pw, size_t pwlen, char buf[WOL_PW_STRLEN]);

/* Build the magic packet for mac with pwlen (0, 4 or 6) password bytes into
 * buf (at least WOL_PACKET_MAX bytes). Returns the length, 102 + pwlen; 0
 * if pwlen is none of 0, 4, 6 (a caller's bug: nothing is written). */
size_t wol_build(const uint8_t mac[6], const uint8_t *pw, size_t pwlen, uint8_t *buf);

/* What a listener with address mac and password pw (pwlen 0, 4 or 6)
 * makes of a received payload (a UDP datagram's data, or an Ethernet
 * frame's data after the 14-byte header).
 *
 * Like NIC firmware, the whole payload is scanned: a magic sequence is six
 * 0xFF bytes anywhere in it followed at once by sixteen copies of one
 * address. The password, when the listener has one, is the pwlen bytes
 * right after the 16th copy; bytes after those (or after the 16th copy
 * when the listener has no password) are ignored, as firmware ignores
 * them: frame padding, a password the listener does not need, or other
 * data cannot be told apart, and ignoring them lets nobody wake the host
 * without knowing what it checks.
 *
 * Verdict, over every magic sequence found (the best one wins, in this
 * order):
 *   WOL_VALID         a sequence for our mac, with our password if we have one
 *   WOL_BAD_PASSWORD  a sequence for our mac, the password wrong or cut short
 *   WOL_OTHER_MAC     a complete sequence for another address
 *   WOL_MALFORMED     no complete sequence: empty, truncated, 15 copies,
 *                     garbage (16 copies of ff:ff:ff:ff:ff:ff count as a long
 *                     sync stream, not as an address)
 */
enum wol_verdict { WOL_VALID, WOL_OTHER_MAC, WOL_BAD_PASSWORD, WOL_MALFORMED };

enum wol_verdict wol_check(const uint8_t *payload, size_t len, const uint8_t mac[6],
                           const uint8_t *pw, size_t pwlen);
/* The same, and the address of the sequence that decided the verdict into
 * ret_seen (when not NULL) for every verdict but WOL_MALFORMED. */
enum wol_verdict wol_scan(const uint8_t *payload, size_t len, const uint8_t mac[6],
                          const uint8_t *pw, size_t pwlen, uint8_t ret_seen[6]);

/* "valid", "other-mac", "bad-password", "malformed". */
const char *wol_verdict_name(enum wol_verdict v);

/* Where and how to send. broadcast "" means WOL_BROADCAST_DEFAULT (an IPv4
 * address: a subnet's directed broadcast such as "10.1.2.255" also works),
 * port 0 means WOL_PORT_DEFAULT. pwlen 0, 4 or 6. */
struct wol_target {
        char ifname[16];
        uint8_t mac[6];
        uint8_t pw[6];
        size_t pwlen;
        char broadcast[64];
        uint16_t port;
};

#define WOL_SENT_UDP 1u /* bit 0: the UDP broadcast went out */
#define WOL_SENT_RAW 2u /* bit 1: the EtherType 0x0842 frame went out */

/* Send one magic packet for t both ways, once each (no retries: the caller
 * retries with back-off, and watches for the spare joining the cluster;
 * nothing confirms delivery):
 *   UDP: to broadcast:port, SO_BROADCAST, SO_BINDTODEVICE t->ifname;
 *   raw: an AF_PACKET frame on t->ifname to ff:ff:ff:ff:ff:ff, EtherType
 *        0x0842, from the interface's own MAC (the kernel writes it).
 * Both need CAP_NET_RAW. 0 if at least one went out, with *ret_sent the
 * WOL_SENT_* bits of those that did and err (when not NULL) saying why the
 * other failed ("" when both went out). Otherwise the negative errno of
 * the UDP failure (-EINVAL for a bad target) and err says why each failed.
 * Does not wait for anything (two sendto calls on fresh sockets): callable
 * from an event loop. */
int wol_send(const struct wol_target *t, unsigned *ret_sent, char *err, size_t errlen);
