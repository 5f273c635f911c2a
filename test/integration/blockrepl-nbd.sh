#!/bin/bash
# blockrepl's NBD server against real clients and hostile ones, on a temp
# raw image, with the standalone `blockrepl` daemon (no peer, no test bed):
#  - nbdinfo sees the size and the flags (flush, FUA, trim, zero);
#  - qemu-io: pattern writes read back, write-zeroes (with and without
#    unmap), discard, flush, FUA writes, a 16 MiB request, and a 40 MiB one
#    (above the server's 32 MiB limit: QEMU splits it, as the advertised
#    block size tells it to);
#  - qemu-img compare/convert: the export equals the image file;
#  - a client that dies in the middle of a WRITE payload leaves the image
#    alone; malformed input (test/tools/nbd_bad_client.py) gets an NBD error
#    or a clean disconnect; after all that the same server still serves
#    and is alive;
#  - read-only export: EPERM; the bitmap file is kept across restarts and a
#    bitmap of another image size is refused.
# Needs no root. Skips (77) without qemu-io, qemu-img or nbdinfo.
set -u
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${HAVMS_BUILD:-$top/build}
br=$build/blockrepl/blockrepl
bad=$top/test/tools/nbd_bad_client.py
for t in qemu-io qemu-img nbdinfo python3; do
        command -v "$t" >/dev/null || { echo "SKIP: $t missing (qemu-utils, libnbd-bin)"; exit 77; }
done
[ -x "$br" ] || { echo "FAIL: no blockrepl in $build"; exit 1; }

tmp=$(mktemp -d /tmp/havms-brnbd-XXXXXX)
img=$tmp/disk.raw sock=$tmp/nbd.sock bm=$tmp/disk.bitmap
uri="nbd+unix:///?socket=$sock"
pid=
cleanup() {
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
                kill "$pid"; wait "$pid" 2>/dev/null
        fi
        rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

PASS=0 FAIL=0
ok() { PASS=$((PASS + 1)); echo "PASS: $*"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL: $*"; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; return 1; fi; }
summary() { echo "blockrepl-nbd: $PASS passed, $FAIL failed"; [ "$FAIL" = 0 ]; }

start() { # start [blockrepl options]: serve $img on $sock
        "$br" --image "$img" --socket "$sock" "$@" 2>>"$tmp/blockrepl.log" &
        pid=$!
        for _ in $(seq 100); do
                [ -S "$sock" ] && return 0
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.05
        done
        cat "$tmp/blockrepl.log"
        return 1
}
stop() { # SIGTERM; the exit status must be 0
        kill -TERM "$pid" && wait "$pid"
        local rc=$?
        pid=
        return $rc
}
qio() { qemu-io -f raw "$uri" "$@" >"$tmp/qio.out" 2>&1 && ! grep -qiE "fail|error|mismatch" "$tmp/qio.out"; }
alive() { kill -0 "$pid" 2>/dev/null; }

truncate -s 64M "$img"
check "blockrepl starts on a 64 MiB image with a new bitmap" start --bitmap "$bm" || { summary; exit 1; }
check "... the socket is private (0600)" test "$(stat -c %a "$sock")" = 600

info=$(nbdinfo --json "$uri" 2>&1)
has() { grep -q "\"$1\": $2" <<<"$info"; }
check "nbdinfo: size 67108864" has export-size 67108864
check "nbdinfo: flush, fua, trim, zero; writable" \
        eval 'has can_flush true && has can_fua true && has can_trim true && has can_zero true && has is_read_only false'
check "nbdinfo: 32 MiB maximum block size" has block_size_maximum 33554432

check "qemu-io: write -P 0xab, read back" qio -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M'
check "qemu-io: write -z (NO_HOLE) reads back zero" \
        qio -c 'write -P 0xcd 1M 1M' -c 'write -z 1M 512k' -c 'read -P 0 1M 512k' -c 'read -P 0xcd 1536k 512k'
check "qemu-io: write -z -u (may punch) reads back zero" \
        qio -c 'write -P 0xcd 2M 256k' -c 'write -z -u 2M 128k' -c 'read -P 0 2M 128k' -c 'read -P 0xcd 2176k 128k'
check "qemu-io: discard reads back zero" \
        qio -c 'write -P 0xee 3M 256k' -c 'discard 3M 64k' -c 'read -P 0 3M 64k' -c 'read -P 0xee 3136k 192k'
check "qemu-io: flush" qio -c 'write -P 0x22 4M 4k' -c 'flush'
check "qemu-io: FUA write (write -f)" qio -c 'write -f -P 0x11 5M 64k' -c 'read -P 0x11 5M 64k'
check "qemu-io: unaligned write" qio -c 'write -P 0x44 6291457 1000' -c 'read -P 0x44 6291457 1000'
check "qemu-io: 16 MiB request" qio -c 'write -P 0x5a 8M 16M' -c 'read -P 0x5a 8M 16M'
check "qemu-io: 40 MiB request (split by QEMU at 32 MiB)" qio -c 'write -P 0x33 24M 40M' -c 'read -P 0x33 24M 40M'
check "qemu-io: write at the last byte" qio -c 'write -P 0x77 67108863 1' -c 'read -P 0x77 67108863 1'
# allocation: NO_HOLE keeps the range allocated, unmap and discard free it
alloc() { stat -c %b "$img"; }
qio -c 'write -P 0x99 7M 1M'
a0=$(alloc); qio -c 'write -z 7M 256k'; a1=$(alloc)
check "write -z (NO_HOLE) keeps the blocks allocated ($a0 -> $a1)" test "$a1" -ge "$a0"
qio -c 'write -z -u 7424k 256k'; a2=$(alloc)
check "write -z -u frees them ($a1 -> $a2)" test "$a2" -lt "$a1"
qio -c 'discard 7680k 256k'; a3=$(alloc)
check "discard frees them ($a2 -> $a3)" test "$a3" -lt "$a2"
check "... and all of it reads back zero" qio -c 'read -P 0 7M 768k' -c 'read -P 0x99 7936k 256k'
check "qemu-img compare: export = image file" qemu-img compare -q -f raw -F raw "$img" "$uri"
check "qemu-img convert of the export = image file" \
        eval 'qemu-img convert -f raw -O raw "$uri" "$tmp/copy.raw" && cmp -s "$img" "$tmp/copy.raw"'
rm -f "$tmp/copy.raw"

# a client dying inside a WRITE payload: nothing of it reaches the image
check "client cut mid-WRITE (1 MiB announced, 100 bytes sent)" python3 "$bad" "$sock" mid-write
check "... the image kept its data" qio -c 'read -P 0xab 0 1M'
# every malformed input: an NBD error or a clean disconnect
for c in bad-magic unknown-cmd bad-flags oob-read oversize-read oversize-write oob-write \
         opt-garbage opt-too-long opt-unknown opt-list-info export-name abort bad-cflags \
         no-fixed truncated-handshake; do
        check "malformed: $c" python3 "$bad" "$sock" "$c"
done
check "server alive after all of it" alive
check "... and still serves a normal client" qio -c 'read -P 0x5a 8M 16M' -c 'write -P 0x66 0 64k'
check "... with nothing changed behind the client's back" qemu-img compare -q -f raw -F raw "$img" "$uri"
check "nbdinfo still works" eval 'nbdinfo --size "$uri" | grep -qx 67108864'
check "SIGTERM: clean exit" stop
check "... socket removed" test ! -e "$sock"
check "... bitmap file kept" test -s "$bm"

# read-only export
check "blockrepl --read-only starts" start --read-only --bitmap "$bm"
check "read-only: WRITE gets EPERM, FLUSH and READ work" python3 "$bad" "$sock" ro-write
check "read-only: nbdinfo says so" eval 'nbdinfo --json "$uri" | grep -q "\"is_read_only\": true"'
check "read-only: stop" stop

# a second server on the same image or socket is refused
start --bitmap "$bm"
out=$("$br" --image "$img" --socket "$tmp/other.sock" 2>&1)
check "second server on the same image refused" grep -q "in use by another blockrepl" <<<"$out"
truncate -s 1M "$tmp/other.raw"
out=$("$br" --image "$tmp/other.raw" --socket "$sock" 2>&1)
check "second server on the same socket refused" grep -q "another server listens there" <<<"$out"
check "first server unaffected" qio -c 'read -P 0x66 0 64k'
stop

# a bitmap made for another image size is refused, not reset
truncate -s 32M "$img"
out=$("$br" --image "$img" --socket "$sock" --bitmap "$bm" 2>&1)
rc=$?
check "bitmap of a 64 MiB image refused for a 32 MiB one (rc $rc)" test "$rc" = 1
check "... with the reason" grep -q "made for an image of 67108864 bytes" <<<"$out"
check "... the socket is not left behind" test ! -e "$sock"
summary
