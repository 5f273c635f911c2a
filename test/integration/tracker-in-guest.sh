#!/bin/bash
# The soft-dirty tracker, tested for real: the development hosts' kernel
# lacks CONFIG_MEM_SOFT_DIRTY, so test_tracker skips its soft-dirty cases
# there. This runs the same test binary as PID 1's child in the test
# guest's kernel (Debian cloud 6.1, soft-dirty built in) under TCG and
# reads its verdict from the serial console. It passes only if
#  - the binary exits 0 in the guest;
#  - every soft-dirty case (test_softdirty_*) ran and passed, not skipped,
#    and test_softdirty_why saw that the kernel has soft-dirty;
#  - on a kernel older than 6.7, every uffd-wp case skipped with the
#    tracker's own sentence about UFFD_FEATURE_WP_ASYNC (the clear error on
#    old kernels); on a newer guest kernel they must pass instead.
#
# Environment: HAVMS_BUILD (build dir, default <top>/build), HAVMS_GUEST
# (guest dir with vmlinuz, default test/guest/out; built with
# test/guest/build.sh if missing), HAVMS_GUEST_TIMEOUT (seconds for boot +
# test, default 300), HAVMS_KEEP=1 keeps the temp dir (console log).
# shellcheck disable=SC2317  # cleanup runs from the trap
set -u
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${HAVMS_BUILD:-$top/build}
guest=${HAVMS_GUEST:-$top/test/guest/out}
limit=${HAVMS_GUEST_TIMEOUT:-300}
bin=$build/test/test_tracker
name=tracker-in-guest

# The uffd-wp cases must skip, on a < 6.7 kernel, with this reason
# (lib/tracker.c, docs/tracker.md).
UFFD_WHY="uffd-wp: userfaultfd write-protect async mode needs Linux >= 6.7 (UFFD_FEATURE_WP_ASYNC)"
SD_CASES="test_softdirty_exact test_softdirty_cap"
UFFD_CASES="test_uffd_exact test_uffd_cap test_uffd_fork_own test_uffd_inherited test_uffd_missing"

skip() { echo "SKIP: $*"; exit 77; }
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "PASS: $*"; }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
summary() { echo "$name: $pass passed, $fail failed"; [ "$fail" = 0 ] && exit 0; exit 1; }
die() { bad "$*"; summary; }

[ "$(id -u)" = 0 ] || skip "needs root (builds the guest kernel with apt-get, boots QEMU)"
command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 is missing"
[ -x "$bin" ] || die "no test binary $bin (build with meson first)"

if [ ! -f "$guest/vmlinuz" ] || [ ! -x /bin/busybox ]; then
	echo "building the test guest ($top/test/guest/build.sh $guest)"
	"$top/test/guest/build.sh" "$guest" >/dev/null ||
		die "test/guest/build.sh failed"
fi
[ -f "$guest/vmlinuz" ] || die "no guest kernel $guest/vmlinuz"
if [ -f "$guest/kernel.config" ] && ! grep -qx 'CONFIG_MEM_SOFT_DIRTY=y' "$guest/kernel.config"; then
	skip "the guest kernel $(cat "$guest/kernel.release" 2>/dev/null) lacks CONFIG_MEM_SOFT_DIRTY: nothing to test"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/havms-$name.XXXXXX")
qpid=
cleanup() {
	if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
		kill "$qpid" 2>/dev/null
		for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$qpid" 2>/dev/null || break; sleep 0.2; done
		kill -KILL "$qpid" 2>/dev/null
		wait "$qpid" 2>/dev/null
	fi
	if [ "${HAVMS_KEEP:-0}" = 1 ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# An ASan build takes the sanitizer options from the environment (the
# host's, else strict ones), and LeakSanitizer needs ptrace: fine as root.
envs=()
asan=0
if ldd "$bin" 2>/dev/null | grep -q 'libasan'; then
	asan=1
	envs+=(-e "ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
	       -e "UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}")
fi
"$top/test/guest/mkinitrd-test.sh" "${envs[@]}" "$tmp/initrd.img" "$bin" >"$tmp/mkinitrd.log" 2>&1 ||
	{ cat "$tmp/mkinitrd.log"; die "cannot build the test initramfs"; }

log=$tmp/console.log
start=$(date +%s)
qemu-system-x86_64 -machine q35,accel=tcg -cpu max -m 512 -nodefaults -vga none \
	-display none -no-reboot -serial "file:$log" \
	-kernel "$guest/vmlinuz" -initrd "$tmp/initrd.img" \
	-append "console=ttyS0 panic=-1 quiet" >"$tmp/qemu.log" 2>&1 &
qpid=$!

# Wait for the result line; QEMU exits by itself after poweroff -f.
result=
while :; do
	result=$(tr -d '\r' 2>/dev/null <"$log" | sed -n 's/^HAVMS-TEST-RESULT rc=\([0-9]*\)$/\1/p' | head -n1)
	[ -n "$result" ] && break
	kill -0 "$qpid" 2>/dev/null || break
	[ $(($(date +%s) - start)) -ge "$limit" ] && break
	sleep 0.5
done
# let the guest power off by itself, then make sure QEMU is gone
if [ -n "$result" ]; then
	for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$qpid" 2>/dev/null || break; sleep 0.3; done
fi
timed_out=0
if kill -0 "$qpid" 2>/dev/null; then
	kill "$qpid" 2>/dev/null
	timed_out=1
fi
wait "$qpid" 2>/dev/null
qpid=
secs=$(($(date +%s) - start))
con=$(tr -d '\r' 2>/dev/null <"$log")

# cmocka's lines, the start line and the result line
echo "--- guest console (${secs}s) ---"
grep -E '^(\[( *[A-Z]|=)|HAVMS-TEST-)' <<<"$con" | sed 's/^/  /'
echo "---"

# An ASan build that dies before cmocka starts, saying why, is the
# sanitizer refusing this guest (memory layout, shadow mapping), not a
# tracker bug: skip, and say how to run the test anyway.
asan_refused() {
	[ "$asan" = 1 ] && ! grep -q '^\[==========\] Running' <<<"$con" &&
		grep -Eq 'AddressSanitizer|LeakSanitizer|Shadow memory' <<<"$con" || return 0
	grep -E 'Sanitizer|Shadow' <<<"$con" | head -n 5 | sed 's/^/  /'
	skip "the ASan build of test_tracker does not start in the guest (rc=${result:-none}); run with a non-ASan HAVMS_BUILD"
}

if [ -z "$result" ]; then
	echo "--- last console lines ---"
	tail -n 40 <<<"$con" | sed 's/^/  /'
	[ -s "$tmp/qemu.log" ] && { echo "--- qemu ---"; sed 's/^/  /' "$tmp/qemu.log"; }
	asan_refused
	if [ "$timed_out" = 1 ]; then
		die "no HAVMS-TEST-RESULT line within ${limit}s"
	else
		die "QEMU ended without a HAVMS-TEST-RESULT line"
	fi
fi

[ "$result" = 0 ] || asan_refused
kernel=$(sed -n 's/^HAVMS-TEST-START kernel=\([^ ]*\) .*/\1/p' <<<"$con" | head -n1)

# block NAME: the lines cmocka printed for test NAME, from its RUN line to
# its verdict
block() {
	awk -v t="$1" '$0 == "[ RUN      ] " t { on = 1 }
		on { print }
		on && ($0 == "[       OK ] " t || $0 == "[  SKIPPED ] " t || $0 == "[  FAILED  ] " t) { exit }' <<<"$con"
}
passed() { block "$1" | grep -qxF "[       OK ] $1"; }
shown() { # shown NAME: what it printed, on one line
	local b
	b=$(block "$1" | tr '\n' ' ')
	echo "${b:-it did not run}"
}
skipped_with() { # skipped_with NAME REASON
	local b
	b=$(block "$1")
	grep -qxF "[  SKIPPED ] $1" <<<"$b" && grep -qxF "[ SKIPPED  ] $2" <<<"$b"
}

# check WHAT WHY_NOT CMD...: pass if CMD succeeds, else fail saying WHY_NOT
check() {
	local what=$1 why_not=$2
	shift 2
	if "$@"; then ok "$what"; else bad "$what: $why_not"; fi
}
check "guest booted ($kernel) and ran $(basename "$bin")" "no HAVMS-TEST-START line" \
	test -n "$kernel"
check "test_tracker exited 0 in the guest" "rc=$result" test "$result" = 0
check "cmocka finished the run" "no '[==========] N test(s) run.' line" \
	grep -q '^\[==========\] [0-9]* test(s) run\.$' <<<"$con"
nfailed=$(grep -c '^\[  FAILED  \] test_' <<<"$con")
check "no case failed" "$nfailed failed" test "$nfailed" = 0

for t in $SD_CASES; do
	check "$t ran and passed on soft-dirty" "$(shown "$t")" passed "$t"
done
check "test_softdirty_why: the guest kernel has soft-dirty" "$(shown test_softdirty_why)" \
	skipped_with test_softdirty_why "soft-dirty is present in this kernel"
check "test_auto passed (auto takes the backend that works)" "$(shown test_auto)" \
	passed test_auto

# uffd-wp: skips with the reason below 6.7, runs from 6.7 on
kmaj=${kernel%%.*} kmin=${kernel#*.}
kmin=${kmin%%.*}
if [[ $kmaj =~ ^[0-9]+$ && $kmin =~ ^[0-9]+$ ]] && ((kmaj > 6 || (kmaj == 6 && kmin >= 7))); then
	for t in $UFFD_CASES; do
		check "$t passed (kernel $kernel has WP_ASYNC)" "$(shown "$t")" passed "$t"
	done
else
	for t in $UFFD_CASES; do
		check "$t skipped: $UFFD_WHY" "$(shown "$t")" skipped_with "$t" "$UFFD_WHY"
	done
fi

echo "duration: ${secs}s (boot + test under TCG$([ "$asan" = 1 ] && echo ", ASan build"))"
summary
