#!/usr/bin/env python3
"""wire_proxy: a TCP relay between a havms primary and its backup that can
damage the replication stream on command, for tests.

    wire_proxy.py LISTEN_ADDR:PORT TARGET_ADDR:PORT CONTROL_DIR

It forwards both directions and parses the primary->backup direction as
havms records (32-byte header, docs/wire.md). When CONTROL_DIR/fault holds
a mode, the next EPOCH_PAGES record is damaged, the fault is consumed, the
epoch number is written to CONTROL_DIR/faulted, and from then on new
connections are refused (so the primary cannot re-sync over it):

    corrupt   flip one byte in the record's payload (checksum must catch it)
    truncate  forward the record's first half, then cut both connections
              (a primary that vanishes mid-epoch)
    baddelta  the next EPOCH_DEVSTATE chunk sent as a delta (XOR_LZ4)
              instead: its raw_len + 1, checksum re-sealed, so only the
              standby's delta decoder can find it wrong
"""
import os
import socket
import struct
import sys
import threading

HDR = 32
EPOCH_PAGES = 4
EPOCH_DEVSTATE = 5
XOR_LZ4 = 3
M64 = (1 << 64) - 1
P1, P2, P3, P4, P5 = (11400714785074694791, 14029467366897019727, 1609587929392839161,
                      9650029242287828579, 2870177450012600261)


def rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & M64


def xxh_round(acc, lane):
    return (rotl((acc + lane * P2) & M64, 31) * P1) & M64


def xxh64(data, seed=0):
    """XXH64 (seed 0 on the wire); slow, for one record per test"""
    n, i = len(data), 0
    if n >= 32:
        v = [(seed + P1 + P2) & M64, (seed + P2) & M64, seed, (seed - P1) & M64]
        while i + 32 <= n:
            for k in range(4):
                v[k] = xxh_round(v[k], struct.unpack_from("<Q", data, i + 8 * k)[0])
            i += 32
        h = (rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18)) & M64
        for k in range(4):
            h = ((h ^ xxh_round(0, v[k])) * P1 + P4) & M64
    else:
        h = (seed + P5) & M64
    h = (h + n) & M64
    while i + 8 <= n:
        h ^= xxh_round(0, struct.unpack_from("<Q", data, i)[0])
        h = (rotl(h, 27) * P1 + P4) & M64
        i += 8
    if i + 4 <= n:
        h ^= (struct.unpack_from("<I", data, i)[0] * P1) & M64
        h = (rotl(h, 23) * P2 + P3) & M64
        i += 4
    while i < n:
        h ^= (data[i] * P5) & M64
        h = (rotl(h, 11) * P1) & M64
        i += 1
    h ^= h >> 33
    h = (h * P2) & M64
    h ^= h >> 29
    h = (h * P3) & M64
    h ^= h >> 32
    return h


def reseal(hdr, payload):
    """the record with its checksum recomputed (docs/wire.md)"""
    h = bytearray(hdr)
    struct.pack_into("<Q", h, 24, xxh64(bytes(h[:24]) + payload))
    return bytes(h)


def addr(s):
    host, port = s.rsplit(":", 1)
    return host, int(port)


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def shutdown_both(*socks):
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Proxy:
    def __init__(self, target, ctl):
        self.target = target
        self.ctl = ctl
        self.done = False

    def peek_fault(self):
        try:
            with open(os.path.join(self.ctl, "fault")) as f:
                return f.read().strip()
        except FileNotFoundError:
            return None

    def take_fault(self):
        path = os.path.join(self.ctl, "fault")
        try:
            with open(path) as f:
                mode = f.read().strip()
            os.unlink(path)
            return mode
        except FileNotFoundError:
            return None

    def upstream(self, src, dst):
        """primary -> backup, record by record"""
        try:
            while True:
                hdr = recv_exact(src, HDR)
                if hdr is None:
                    break
                magic, version, rtype, length = struct.unpack_from("<IHHI", hdr)
                epoch = struct.unpack_from("<Q", hdr, 16)[0]
                payload = recv_exact(src, length) if length else b""
                if payload is None:
                    break
                mode = None
                fault = os.path.join(self.ctl, "fault")
                if rtype == EPOCH_PAGES and length > 64 and os.path.exists(fault):
                    mode = self.peek_fault()
                    mode = self.take_fault() if mode in ("corrupt", "truncate") else None
                if rtype == EPOCH_DEVSTATE and length > 16 and payload[12] == XOR_LZ4 \
                        and os.path.exists(fault) and self.peek_fault() == "baddelta":
                    mode = self.take_fault()
                    if reseal(hdr, payload) != hdr:  # our XXH64 is wrong: say so
                        mode = "baddelta-selfcheck-failed"
                if mode:
                    with open(os.path.join(self.ctl, "faulted"), "w") as f:
                        f.write(f"{epoch} {mode}\n")
                    self.done = True
                if mode == "corrupt":
                    p = bytearray(payload)
                    p[len(p) // 2] ^= 0x01
                    dst.sendall(hdr + bytes(p))
                    continue
                if mode == "baddelta":
                    p = bytearray(payload)
                    struct.pack_into("<I", p, 8, struct.unpack_from("<I", p, 8)[0] + 1)
                    dst.sendall(reseal(hdr, bytes(p)) + bytes(p))
                    continue
                if mode == "truncate":
                    dst.sendall(hdr + payload[: len(payload) // 2])
                    break
                dst.sendall(hdr + payload)
        except OSError:
            pass
        shutdown_both(src, dst)

    def downstream(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        shutdown_both(src, dst)

    def serve(self, listen):
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(listen)
        ls.listen(8)
        while True:
            c, _ = ls.accept()
            if self.done:
                c.close()
                continue
            try:
                b = socket.create_connection(self.target, timeout=3)
                b.settimeout(None)
            except OSError:
                c.close()
                continue
            for s in (c, b):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self.upstream, args=(c, b), daemon=True).start()
            threading.Thread(target=self.downstream, args=(b, c), daemon=True).start()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    Proxy(addr(sys.argv[2]), sys.argv[3]).serve(addr(sys.argv[1]))
