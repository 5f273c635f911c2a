#!/usr/bin/env python3
"""fake_ctl: a stand-in for a havms daemon's control socket (lib/ctl.h:
one JSON request line, one JSON response line per connection), for
testing havmsctl without the daemon.

    fake_ctl.py SOCKET DIR [--hang]

Each request is appended as one line to DIR/requests.log; the answer is
the content of DIR/<cmd>.json, or {"ok":false,"error":"unknown command"}
when there is no such file. With --hang it reads the request and never
answers (a daemon stuck in its loop). Runs until killed.
"""
import json
import os
import socketserver
import sys
import threading


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline()
        if not line:
            return
        d = self.server.dir
        with self.server.lock, open(os.path.join(d, "requests.log"), "ab") as f:
            f.write(line if line.endswith(b"\n") else line + b"\n")
        if self.server.hang:
            self.rfile.read()  # until the client gives up and closes
            return
        try:
            cmd = json.loads(line).get("cmd", "")
        except ValueError:
            cmd = ""
        path = os.path.join(d, os.path.basename(str(cmd)) + ".json")
        if cmd and os.path.exists(path):
            with open(path, "rb") as f:
                answer = json.dumps(json.load(f), separators=(",", ":")).encode()
        else:
            answer = b'{"ok":false,"error":"unknown command"}'
        self.wfile.write(answer + b"\n")


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    sock, d = sys.argv[1], sys.argv[2]
    if os.path.exists(sock):
        os.unlink(sock)
    srv = Server(sock, Handler)
    srv.dir, srv.hang, srv.lock = d, "--hang" in sys.argv[3:], threading.Lock()
    srv.serve_forever()


if __name__ == "__main__":
    main()
