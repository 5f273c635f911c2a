#!/bin/bash
# Build the fuzz targets with clang's libFuzzer (+ ASan, UBSan) and run
# them, SECONDS in all (default 30) split evenly between the targets:
#   fuzz_wire  the replication parser and page decoder (lib/wire.c, codec.c)
#   fuzz_nbd   blockrepl's NBD server, handshake and requests (blockrepl/nbd.c)
#   fuzz_clmsg havmsd's CPG messages (failover/clmsg.c)
#   fuzz_wol   the wake-on-LAN payload scan and MAC/password strings (lib/wol.c)
# Exit 0 if no crash was found, 77 (skip) without clang's fuzzer runtime.
# Crashes are kept in $FUZZ_OUT.
set -u
top=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-30}
out=${FUZZ_OUT:-$(mktemp -d /tmp/havms-fuzz-XXXXXX)}
command -v clang >/dev/null || { echo "SKIP: no clang"; exit 77; }
flags=(-std=gnu11 -g -O1 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=undefined -I"$top/lib" -I"$top/blockrepl" -I"$top/failover"
       -I"$out")
targets=(wire nbd clmsg wol)
declare -A srcs=(
        [wire]="lib/wire.c lib/codec.c lib/util.c"
        [nbd]="blockrepl/nbd.c lib/util.c"
        [clmsg]="failover/clmsg.c lib/config.c lib/util.c lib/wol.c"
        [wol]="lib/wol.c"
)
declare -A libs=([wire]="-llz4 -lxxhash" [nbd]="" [clmsg]="-lxxhash -linih" [wol]="")
# lib/config.c (cfg_name_valid) includes meson's generated header; the
# fuzz build has no build directory, so it gets a stand-in.
printf '#pragma once\n#define HAVMS_CHECKPOINTD_DEFAULT "checkpointd"\n#define HAVMS_PRELOAD_DEFAULT ""\n#define HAVMS_SYSCONFDIR "/etc/havms"\n#define HAVMS_VERSION "fuzz"\n' \
        >"$out/havms-config.h"

# Seeds for fuzz_nbd: byte 0 picks read-only, then a client's stream. A
# valid handshake and a few requests get the fuzzer past the magics.
nbd_seeds() {
        local d=$1 hs req
        mkdir -p "$d"
        hs='\x00\x00\x00\x03IHAVEOPT\x00\x00\x00\x07\x00\x00\x00\x08\x00\x00\x00\x00\x00\x01\x00\x03'
        req() { # type flags offset(8 bytes hex escaped) len(4)
                printf '\x25\x60\x95\x13\x00%b\x00%b\x00\x00\x00\x00\x00\x00\x00\x01%b%b' "$2" "$1" "$3" "$4"
        }
        { printf '\x00'; printf "$hs"
          req '\x01' '\x01' '\x00\x00\x00\x00\x00\x00\x10\x00' '\x00\x00\x00\x10'; printf '0123456789abcdef'
          req '\x00' '\x00' '\x00\x00\x00\x00\x00\x00\x00\x00' '\x00\x00\x02\x00'
          req '\x03' '\x00' '\x00\x00\x00\x00\x00\x00\x00\x00' '\x00\x00\x00\x00'
          req '\x04' '\x00' '\x00\x00\x00\x00\x00\x01\x00\x00' '\x00\x00\x10\x00'
          req '\x06' '\x02' '\x00\x00\x00\x00\x00\x02\x00\x00' '\x00\x00\x10\x00'
          req '\x02' '\x00' '\x00\x00\x00\x00\x00\x00\x00\x00' '\x00\x00\x00\x00'
        } >"$d/session"
        { printf '\x01'; printf '\x00\x00\x00\x01IHAVEOPT\x00\x00\x00\x03\x00\x00\x00\x00'
          printf 'IHAVEOPT\x00\x00\x00\x06\x00\x00\x00\x06\x00\x00\x00\x00\x00\x00'
          printf 'IHAVEOPT\x00\x00\x00\x01\x00\x00\x00\x01x'
          req '\x01' '\x00' '\x00\x00\x00\x00\x00\x00\x00\x00' '\x00\x00\x00\x04'; printf 'data'
        } >"$d/options"
}

# Seeds for fuzz_clmsg: a STATE with one VM and a RELINQUISH; the
# target fixes length and checksum up, so those fields may stay zero.
clmsg_seeds() {
        local d=$1
        z() { head -c "$1" /dev/zero; }
        mkdir -p "$d"
        { printf 'HVCL\x01\x00\x01\x00'; z 12; printf a; z 31; printf '\x01\x00\x00\x00'
          printf web01; z 27; printf '\x04\x00'; z 6; printf '\x05'; z 7; printf '\x10'; z 7
          printf b; z 31
        } >"$d/state"
        { printf 'HVCL\x01\x00\x02\x00'; z 12; printf b; z 31
          printf web01; z 27; printf '\x05'; z 7; printf a; z 31
        } >"$d/relinquish"
}

# Seeds for fuzz_wol: a listener (4-byte password) and a valid packet for
# it after two bytes; a MAC and a password string.
wol_seeds() {
        local d=$1 mac='\x52\x54\x00\x12\x34\x56' i
        mkdir -p "$d"
        { printf "\x01$mac\x01\x02\x03\x04xx\xff\xff\xff\xff\xff\xff"
          for i in $(seq 16); do printf "$mac"; done; printf '\x01\x02\x03\x04'
        } >"$d/valid"
        printf '52:54:00:12:34:56' >"$d/mac"
        printf '192.168.1.1' >"$d/password"
}

n=${#targets[@]}
each=$(( secs / n > 0 ? secs / n : 1 ))
failed=0
for t in "${targets[@]}"; do
        # shellcheck disable=SC2086 # word lists on purpose
        if ! clang "${flags[@]}" -o "$out/fuzz_$t" "$top/test/fuzz/fuzz_$t.c" \
                $(printf "$top/%s " ${srcs[$t]}) ${libs[$t]} 2>"$out/build-$t.log"; then
                if grep -q "fuzzer" "$out/build-$t.log"; then
                        echo "SKIP: clang has no libFuzzer runtime (libclang-rt-dev)"; exit 77
                fi
                cat "$out/build-$t.log"; exit 1
        fi
        mkdir -p "$out/corpus-$t"
        [ "$t" = nbd ] && nbd_seeds "$out/corpus-$t"
        [ "$t" = clmsg ] && clmsg_seeds "$out/corpus-$t"
        [ "$t" = wol ] && wol_seeds "$out/corpus-$t"
        if "$out/fuzz_$t" -max_total_time="$each" -max_len=70000 -artifact_prefix="$out/$t-" \
                "$out/corpus-$t" >"$out/fuzz-$t.log" 2>&1; then
                tail -n 2 "$out/fuzz-$t.log"
                echo "fuzz-$t: 1 passed, 0 failed"
        else
                tail -n 40 "$out/fuzz-$t.log"
                echo "fuzz-$t: 0 passed, 1 failed (artifacts in $out)"
                failed=1
        fi
done
[ "$failed" = 0 ] && [ -z "${FUZZ_OUT:-}" ] && rm -rf "$out"
exit "$failed"
