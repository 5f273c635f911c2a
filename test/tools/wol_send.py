#!/usr/bin/env python3
"""Send one wake-on-LAN packet, good or deliberately bad (python3 stdlib).

    wol_send.py IF udp|raw MAC [--password HEX] [--copies N] [--truncate N]
                [--prefix N] [--port P]

udp: a broadcast to 255.255.255.255:P (default 9) out of IF (SO_BINDTODEVICE);
raw: an Ethernet frame on IF to ff:ff:ff:ff:ff:ff, EtherType 0x0842, from IF's
own MAC. The payload is six 0xFF, N (16) copies of MAC, the password bytes,
then cut to --truncate bytes if given; --prefix puts N non-0xFF bytes before
it (the sync stream at an offset); MAC "garbage" sends 120 bytes of noise
instead. For havmsctl wake's opposite: what must NOT wake a spare. Prints
what it sent; exits 1 on a send error.
"""
import argparse
import socket
import sys


def payload(args):
    if args.mac == "garbage":
        return bytes((i * 37 + 11) % 251 for i in range(120))
    mac = bytes.fromhex(args.mac.replace(":", "").replace("-", ""))
    p = b"\xff" * 6 + mac * args.copies + bytes.fromhex(args.password.replace(":", ""))
    if args.truncate is not None:
        p = p[: args.truncate]
    return bytes(i % 200 for i in range(args.prefix)) + p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ifname")
    ap.add_argument("how", choices=["udp", "raw"])
    ap.add_argument("mac")
    ap.add_argument("--password", default="")
    ap.add_argument("--copies", type=int, default=16)
    ap.add_argument("--truncate", type=int)
    ap.add_argument("--prefix", type=int, default=0)
    ap.add_argument("--port", type=int, default=9)
    args = ap.parse_args()
    data = payload(args)
    try:
        if args.how == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.ifname.encode())
            s.sendto(data, ("255.255.255.255", args.port))
        else:
            with open("/sys/class/net/%s/address" % args.ifname) as f:
                src = bytes.fromhex(f.read().strip().replace(":", ""))
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            s.bind((args.ifname, 0))
            s.send(b"\xff" * 6 + src + b"\x08\x42" + data)
        s.close()
    except OSError as e:
        print("wol_send: %s %s: %s" % (args.how, args.ifname, e), file=sys.stderr)
        return 1
    print("sent %s %d bytes: %s" % (args.how, len(data), data.hex()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
