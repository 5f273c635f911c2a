#!/usr/bin/env python3
"""counter_client: ONE long-lived TCP connection to the test guest's counter
service, sending "next" back to back, for the output-commit consistency test.

Every reply is appended to OUT as a line

    <wall_ns> <value> <latency_us>

and flushed, so the test can read what the client has seen at any moment.
The connection is never re-opened: if it breaks (reset, EOF, timeout) the
client writes "END <reason>" and exits 3. On SIGTERM it writes "END stop"
and exits 0. A "GAP <expected> <got>" line records a value that is not the
previous one plus one (a rollback, a repeat or a skip); the client goes on.

With --pause-file F, no request is sent while F exists (used to let the
test make a quiet point, e.g. to read the counter on disk).
"""
import argparse
import os
import signal
import socket
import sys
import time

stop = False


def on_term(signum, frame):
    global stop
    stop = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--port", type=int, default=7000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="seconds one reply may take (a takeover is slower)")
    ap.add_argument("--pause-file")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, on_term)
    out = open(a.out, "a", buffering=1)
    try:
        s = socket.create_connection((a.addr, a.port), timeout=10)
    except OSError as e:
        out.write("END connect %s\n" % e)
        return 3
    s.settimeout(a.timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    out.write("CONNECTED %d\n" % time.time_ns())
    buf = b""
    last = None
    while not stop:
        if a.pause_file and os.path.exists(a.pause_file):
            time.sleep(0.01)
            continue
        t0 = time.monotonic_ns()
        try:
            s.sendall(b"next\n")
            while b"\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    out.write("END eof\n")
                    return 3
                buf += chunk
        except socket.timeout:
            out.write("END timeout\n")
            return 3
        except OSError as e:
            out.write("END %s\n" % ("reset" if isinstance(e, ConnectionResetError) else e))
            return 3
        line, buf = buf.split(b"\n", 1)
        lat_us = (time.monotonic_ns() - t0) // 1000
        try:
            v = int(line)
        except ValueError:
            out.write("END bad-reply %r\n" % line[:60])
            return 3
        if last is not None and v != last + 1:
            out.write("GAP %d %d\n" % (last + 1, v))
        last = v
        out.write("%d %d %d\n" % (time.time_ns(), v, lat_us))
    out.write("END stop\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
