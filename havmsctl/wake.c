#include "wake.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void wake_usage(void)
{
        fprintf(stderr, "usage: havmsctl wake --mac MAC --interface IF [--password PW]\n"
                        "                     [--broadcast ADDR] [--port N] [--json]\n");
}

int wake_send_print(const struct wol_target *t, bool json)
{
        char err[512], mac[WOL_MAC_STRLEN];
        unsigned sent = 0;
        int r = wol_send(t, &sent, err, sizeof(err));
        const char *bc = t->broadcast[0] ? t->broadcast : WOL_BROADCAST_DEFAULT;
        unsigned port = t->port ? t->port : WOL_PORT_DEFAULT;
        wol_format_mac(t->mac, mac);
        if (json) {
                json_object *o = json_object_new_object();
                json_object_object_add(o, "ok", json_object_new_boolean(r == 0));
                json_object_object_add(o, "mac", json_object_new_string(mac));
                json_object_object_add(o, "interface", json_object_new_string(t->ifname));
                json_object_object_add(o, "password_bytes", json_object_new_int((int)t->pwlen));
                json_object_object_add(o, "udp", json_object_new_boolean(sent & WOL_SENT_UDP));
                json_object_object_add(o, "raw", json_object_new_boolean(sent & WOL_SENT_RAW));
                json_object_object_add(o, "broadcast", json_object_new_string(bc));
                json_object_object_add(o, "port", json_object_new_int((int)port));
                if (err[0])
                        json_object_object_add(o, "error", json_object_new_string(err));
                printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
                json_object_put(o);
                return r == 0 ? 0 : 1;
        }
        if (r < 0) {
                fprintf(stderr, "havmsctl wake: nothing sent for %s on %s: %s\n", mac, t->ifname, err);
                return 1;
        }
        /* the password itself is not printed: only that one was sent */
        printf("magic packet for %s (%zu-byte password) on %s:\n", mac, t->pwlen, t->ifname);
        printf("  udp %s:%u: %s\n", bc, port, sent & WOL_SENT_UDP ? "sent" : "NOT sent");
        printf("  raw ethertype 0x%04x to ff:ff:ff:ff:ff:ff: %s\n", WOL_ETHERTYPE,
               sent & WOL_SENT_RAW ? "sent" : "NOT sent");
        if (err[0])
                printf("  (%s)\n", err);
        printf("no delivery confirmation: watch for the host joining the cluster\n");
        return 0;
}

int wake_main(int argc, char **argv, bool json)
{
        static const struct option opts[] = {
                { "mac", required_argument, NULL, 'm' },
                { "interface", required_argument, NULL, 'i' },
                { "password", required_argument, NULL, 'p' },
                { "broadcast", required_argument, NULL, 'b' },
                { "port", required_argument, NULL, 'P' },
                { "json", no_argument, NULL, 'j' },
                { 0 },
        };
        struct wol_target t = { .port = WOL_PORT_DEFAULT };
        bool have_mac = false;
        int o;
        optind = 1;
        while ((o = getopt_long(argc, argv, "m:i:p:b:P:j", opts, NULL)) != -1) {
                switch (o) {
                case 'm':
                        if (wol_parse_mac(optarg, t.mac) < 0) {
                                fprintf(stderr, "havmsctl wake: bad MAC '%s' (xx:xx:xx:xx:xx:xx, unicast)\n", optarg);
                                return 2;
                        }
                        have_mac = true;
                        break;
                case 'i':
                        if (!optarg[0] || strlen(optarg) >= sizeof(t.ifname)) {
                                fprintf(stderr, "havmsctl wake: bad interface name '%s'\n", optarg);
                                return 2;
                        }
                        strcpy(t.ifname, optarg);
                        break;
                case 'p':
                        if (wol_parse_password(optarg, t.pw, &t.pwlen) < 0) {
                                fprintf(stderr, "havmsctl wake: bad password (a.b.c.d, or 4 or 6 hex bytes)\n");
                                return 2;
                        }
                        break;
                case 'b': {
                        unsigned char a[4];
                        if (strlen(optarg) >= sizeof(t.broadcast) || inet_pton(AF_INET, optarg, a) != 1) {
                                fprintf(stderr, "havmsctl wake: bad broadcast address '%s' (IPv4)\n", optarg);
                                return 2;
                        }
                        strcpy(t.broadcast, optarg);
                        break;
                }
                case 'P': {
                        char *end;
                        unsigned long p = strtoul(optarg, &end, 10);
                        if (!optarg[0] || *end || p == 0 || p > 65535) {
                                fprintf(stderr, "havmsctl wake: bad port '%s'\n", optarg);
                                return 2;
                        }
                        t.port = (uint16_t)p;
                        break;
                }
                case 'j':
                        json = true;
                        break;
                default:
                        wake_usage();
                        return 2;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "havmsctl wake: unexpected '%s' (the explicit form takes --mac and --interface)\n",
                        argv[optind]);
                return 2;
        }
        if (!have_mac || !t.ifname[0]) {
                wake_usage();
                return 2;
        }
        return wake_send_print(&t, json);
}
