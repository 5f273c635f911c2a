#!/usr/bin/env python3
"""Malformed and hostile NBD clients for blockrepl's server (python3 stdlib).

    nbd_bad_client.py SOCKET CASE...     (or CASE "all")

Each case connects once, misbehaves in one way, and checks that the server
answers with the right NBD error or closes the connection cleanly, and, where
the stream should still be in step, that a normal request then works. Prints
"ok CASE: what happened" or "FAIL CASE: ..."; exits 1 if any case failed.
"""
import os
import socket
import struct
import sys

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
REPLY_MAGIC = 0x67446698
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_INFO, OPT_GO = 1, 2, 3, 6, 7
REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
REP_ERR_UNSUP, REP_ERR_INVALID = (1 << 31) | 1, (1 << 31) | 3
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3
EPERM, EINVAL = 1, 22
MAX_REQUEST = 32 << 20
TIMEOUT = 10


class Fail(Exception):
    pass


class Closed(Exception):
    pass


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        try:
            chunk = s.recv(n - len(buf))
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise Closed()
        buf += chunk
    return buf


def expect_closed(s, what):
    """The server must close without sending anything more."""
    try:
        data = s.recv(1)
    except ConnectionResetError:
        data = b""
    except socket.timeout:
        raise Fail(f"{what}: server neither answered nor closed in {TIMEOUT} s")
    if data:
        raise Fail(f"{what}: expected a disconnect, got data {data!r}")
    return f"{what}: disconnected"


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    s.connect(path)
    return s


def greeting(s, cflags=3):
    magic, opt, hflags = struct.unpack(">QQH", recv_exact(s, 18))
    if magic != NBDMAGIC or opt != IHAVEOPT or not hflags & 1:
        raise Fail(f"bad greeting {magic:x} {opt:x} {hflags:x}")
    if cflags is not None:
        s.sendall(struct.pack(">I", cflags))


def send_opt(s, opt, data=b""):
    s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)


def recv_opt_reply(s):
    magic, opt, typ, length = struct.unpack(">QIII", recv_exact(s, 20))
    if magic != OPT_REPLY_MAGIC:
        raise Fail(f"bad option reply magic {magic:x}")
    if length > 65536:
        raise Fail(f"option reply of {length} bytes")
    return opt, typ, recv_exact(s, length)


def go(s, opt=OPT_GO, infos=()):
    """NBD_OPT_GO/INFO for export "": returns (size, flags) from NBD_INFO_EXPORT."""
    data = struct.pack(">IH", 0, len(infos)) + b"".join(struct.pack(">H", i) for i in infos)
    send_opt(s, opt, data)
    size = None
    while True:
        o, typ, d = recv_opt_reply(s)
        if o != opt:
            raise Fail(f"reply to option {o}, asked {opt}")
        if typ == REP_ACK:
            break
        if typ != REP_INFO:
            raise Fail(f"option {opt}: reply type {typ:#x}")
        if struct.unpack(">H", d[:2])[0] == 0:
            size, flags = struct.unpack(">QH", d[2:12])
    if size is None:
        raise Fail("no NBD_INFO_EXPORT")
    return size, flags


def session(path):
    s = connect(path)
    greeting(s)
    size, flags = go(s)
    return s, size, flags


def request(s, typ, off, length, flags=0, handle=0x1234, data=b"", magic=REQUEST_MAGIC):
    s.sendall(struct.pack(">IHHQQI", magic, flags, typ, handle, off, length) + data)


def reply(s, handle=0x1234):
    magic, err, h = struct.unpack(">IIQ", recv_exact(s, 16))
    if magic != REPLY_MAGIC or h != handle:
        raise Fail(f"bad reply magic {magic:x} handle {h:x}")
    return err


def still_serves(s, size):
    """A good READ on the same connection: the stream is still in step."""
    request(s, CMD_READ, size - 512, 512, handle=0x77)
    if reply(s, 0x77) != 0:
        raise Fail("a good READ failed afterwards")
    recv_exact(s, 512)
    request(s, CMD_DISC, 0, 0)


def expect_err(s, want, what):
    err = reply(s)
    if err != want:
        raise Fail(f"{what}: error {err}, expected {want}")
    return f"{what}: error {err}"


# ---- cases ---------------------------------------------------------------

def c_bad_magic(path):
    s, _, _ = session(path)
    request(s, CMD_READ, 0, 512, magic=0x25609514)
    return expect_closed(s, "request with bad magic")


def c_unknown_cmd(path):
    s, size, _ = session(path)
    request(s, 99, 0, 0)
    msg = expect_err(s, EINVAL, "command type 99")
    still_serves(s, size)
    return msg


def c_bad_flags(path):
    s, size, _ = session(path)
    request(s, CMD_READ, 0, 512, flags=0x8000)
    msg = expect_err(s, EINVAL, "READ with unknown flag")
    still_serves(s, size)
    return msg


def c_oob_read(path):
    s, size, _ = session(path)
    request(s, CMD_READ, size - 512, 1024)
    msg = expect_err(s, EINVAL, "READ past the end")
    request(s, CMD_READ, 2**64 - 512, 1024)
    expect_err(s, EINVAL, "READ with offset+len overflowing")
    still_serves(s, size)
    return msg


def c_oversize_read(path):
    s, size, _ = session(path)
    request(s, CMD_READ, 0, MAX_REQUEST + 1)
    msg = expect_err(s, EINVAL, f"READ of {MAX_REQUEST + 1} bytes")
    request(s, CMD_READ, 0, 0xFFFFFFFF)
    expect_err(s, EINVAL, "READ of 4 GiB - 1")
    still_serves(s, size)
    return msg


def c_oversize_write(path):
    s, _, _ = session(path)
    request(s, CMD_WRITE, 0, 64 << 20, data=b"x" * 4096)
    return expect_closed(s, "WRITE announcing 64 MiB")


def c_oob_write(path):
    s, size, _ = session(path)
    request(s, CMD_WRITE, size - 512, 4096, data=b"w" * 4096)
    msg = expect_err(s, EINVAL, "WRITE past the end (payload dropped)")
    still_serves(s, size)
    return msg


def c_mid_write(path):
    s, _, _ = session(path)
    request(s, CMD_WRITE, 0, 1 << 20, data=b"m" * 100)
    s.close()
    return "WRITE of 1 MiB cut after 100 bytes: closed by us"


def c_opt_garbage(path):
    s = connect(path)
    greeting(s)
    s.sendall(os.urandom(64))
    return expect_closed(s, "garbage instead of an option")


def c_opt_too_long(path):
    s = connect(path)
    greeting(s)
    s.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, 1 << 20) + b"\0" * 1024)
    return expect_closed(s, "option of 1 MiB")


def c_opt_unknown(path):
    s = connect(path)
    greeting(s)
    send_opt(s, 42, b"abc")
    _, typ, _ = recv_opt_reply(s)
    if typ != REP_ERR_UNSUP:
        raise Fail(f"unknown option: reply {typ:#x}")
    send_opt(s, 8)  # STRUCTURED_REPLY: we only do simple replies
    _, typ, _ = recv_opt_reply(s)
    if typ != REP_ERR_UNSUP:
        raise Fail(f"STRUCTURED_REPLY: reply {typ:#x}")
    send_opt(s, OPT_GO, b"\0\0\0\5abc")  # name longer than the option
    _, typ, _ = recv_opt_reply(s)
    if typ != REP_ERR_INVALID:
        raise Fail(f"GO with a lying name length: reply {typ:#x}")
    size, _ = go(s)
    still_serves(s, size)
    return "unknown option, STRUCTURED_REPLY: ERR_UNSUP; bad GO: ERR_INVALID; then GO works"


def c_opt_list_info(path):
    s = connect(path)
    greeting(s)
    send_opt(s, OPT_LIST)
    _, typ, d = recv_opt_reply(s)
    if typ != REP_SERVER or d != b"\0\0\0\0":
        raise Fail(f"LIST: reply {typ:#x} {d!r}")
    _, typ, _ = recv_opt_reply(s)
    if typ != REP_ACK:
        raise Fail(f"LIST: no ACK ({typ:#x})")
    size, flags = go(s, OPT_INFO, infos=(3, 1, 2, 999))
    size2, _ = go(s, OPT_GO, infos=())
    if size != size2:
        raise Fail("INFO and GO disagree on the size")
    still_serves(s, size)
    return f"LIST: one export; INFO: size {size} flags {flags:#x}; GO"


def c_export_name(path):
    s = connect(path)
    greeting(s, cflags=1)  # without NO_ZEROES: 124 zero bytes follow
    send_opt(s, OPT_EXPORT_NAME, b"any-name")
    size, _ = struct.unpack(">QH", recv_exact(s, 10))
    if recv_exact(s, 124) != b"\0" * 124:
        raise Fail("EXPORT_NAME: padding not zero")
    still_serves(s, size)
    return f"EXPORT_NAME 'any-name': size {size}"


def c_abort(path):
    s = connect(path)
    greeting(s)
    send_opt(s, OPT_ABORT)
    _, typ, _ = recv_opt_reply(s)
    if typ != REP_ACK:
        raise Fail(f"ABORT: reply {typ:#x}")
    return expect_closed(s, "ABORT acknowledged, then")


def c_bad_cflags(path):
    s = connect(path)
    greeting(s, cflags=0x80000001)
    return expect_closed(s, "unknown client flags")


def c_no_fixed(path):
    s = connect(path)
    greeting(s, cflags=0)
    return expect_closed(s, "client without FIXED_NEWSTYLE")


def c_truncated_handshake(path):
    s = connect(path)
    greeting(s, cflags=None)
    s.sendall(b"\0\0")
    s.close()
    s = connect(path)
    greeting(s)
    s.sendall(struct.pack(">QI", IHAVEOPT, OPT_GO))  # 12 of 16 header bytes
    s.close()
    s = connect(path)
    s.close()
    return "handshakes cut after 2, 12 and 0 bytes: closed by us"


def c_ro_write(path):
    s, size, flags = session(path)
    if not flags & 2:
        raise Fail("export not flagged read-only")
    request(s, CMD_WRITE, 0, 512, data=b"r" * 512)
    msg = expect_err(s, EPERM, "WRITE on a read-only export")
    request(s, CMD_FLUSH, 0, 0)
    expect_err(s, 0, "FLUSH on a read-only export")
    still_serves(s, size)
    return msg


CASES = {
    "bad-magic": c_bad_magic,
    "unknown-cmd": c_unknown_cmd,
    "bad-flags": c_bad_flags,
    "oob-read": c_oob_read,
    "oversize-read": c_oversize_read,
    "oversize-write": c_oversize_write,
    "oob-write": c_oob_write,
    "mid-write": c_mid_write,
    "opt-garbage": c_opt_garbage,
    "opt-too-long": c_opt_too_long,
    "opt-unknown": c_opt_unknown,
    "opt-list-info": c_opt_list_info,
    "export-name": c_export_name,
    "abort": c_abort,
    "bad-cflags": c_bad_cflags,
    "no-fixed": c_no_fixed,
    "truncated-handshake": c_truncated_handshake,
}
EXTRA = {"ro-write": c_ro_write}  # needs a read-only server: not in "all"


def main():
    if len(sys.argv) < 3:
        print(__doc__.strip(), file=sys.stderr)
        print("cases:", " ".join(list(CASES) + list(EXTRA)), file=sys.stderr)
        return 2
    path, names = sys.argv[1], sys.argv[2:]
    if names == ["all"]:
        names = list(CASES)
    failed = 0
    for name in names:
        fn = CASES.get(name) or EXTRA.get(name)
        if not fn:
            print(f"unknown case {name}", file=sys.stderr)
            return 2
        try:
            print(f"ok {name}: {fn(path)}")
        except (Fail, Closed, OSError) as e:
            what = "server closed the connection" if isinstance(e, Closed) else str(e)
            print(f"FAIL {name}: {what}")
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
