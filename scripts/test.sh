#!/bin/bash
# Run every havms test on this machine, from nothing: installs what is
# missing (scripts/setup.sh), builds, then runs
#   1. the unit and integration suites on the normal build;
#   2. the unit suite, the takeover test, the NBD server against real
#      clients, an automatic failover (havmsd) and the consistency test
#      (2 takeovers) on an ASan+UBSan build.
# Run as root. Exit status 0 only if everything passed.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
scripts/setup.sh build
bash test/lib/tb-clean-leftovers.sh >/dev/null 2>&1 || true

rc=0
meson test -C build --print-errorlogs || rc=1

HAVMS_SANITIZE=1 scripts/setup.sh build-asan
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
meson test -C build-asan --print-errorlogs --suite unit || rc=1
meson test -C build-asan --print-errorlogs checkpoint-takeover blockrepl-nbd failover-poweroff || rc=1
HAVMS_TAKEOVERS=2 meson test -C build-asan --print-errorlogs consistency || rc=1

if [ "$rc" = 0 ]; then echo "havms tests: all passed"; else echo "havms tests: FAILED"; fi
exit "$rc"
