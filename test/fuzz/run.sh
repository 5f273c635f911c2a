#!/bin/bash
# Build the fuzz targets with clang's libFuzzer (+ ASan, UBSan) and run
# each for SECONDS (default 30). Exit 0 if no crash was found, 77 (skip)
# without clang's fuzzer runtime. Crashes are kept in $FUZZ_OUT.
set -u
top=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-30}
out=${FUZZ_OUT:-$(mktemp -d /tmp/havms-fuzz-XXXXXX)}
command -v clang >/dev/null || { echo "SKIP: no clang"; exit 77; }
flags=(-std=gnu11 -g -O1 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=undefined -I"$top/lib")
srcs=("$top/lib/wire.c" "$top/lib/codec.c" "$top/lib/util.c")
if ! clang "${flags[@]}" -o "$out/fuzz_wire" "$top/test/fuzz/fuzz_wire.c" "${srcs[@]}" \
        -llz4 -lxxhash 2>"$out/build.log"; then
        if grep -q "fuzzer" "$out/build.log"; then
                echo "SKIP: clang has no libFuzzer runtime (libclang-rt-dev)"; exit 77
        fi
        cat "$out/build.log"; exit 1
fi
mkdir -p "$out/corpus"
if "$out/fuzz_wire" -max_total_time="$secs" -max_len=70000 -artifact_prefix="$out/" \
        "$out/corpus" >"$out/fuzz.log" 2>&1; then
        tail -n 2 "$out/fuzz.log"
        echo "fuzz-wire: 1 passed, 0 failed"
        [ -n "${FUZZ_OUT:-}" ] || rm -rf "$out"
        exit 0
fi
tail -n 40 "$out/fuzz.log"
echo "fuzz-wire: 0 passed, 1 failed (artifacts in $out)"
exit 1
