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
"""
import os
import socket
import struct
import sys
import threading

HDR = 32
EPOCH_PAGES = 4


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
                if rtype == EPOCH_PAGES and length > 64 and os.path.exists(os.path.join(self.ctl, "fault")):
                    mode = self.take_fault()
                if mode:
                    with open(os.path.join(self.ctl, "faulted"), "w") as f:
                        f.write(f"{epoch} {mode}\n")
                    self.done = True
                if mode == "corrupt":
                    p = bytearray(payload)
                    p[len(p) // 2] ^= 0x01
                    dst.sendall(hdr + bytes(p))
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
