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
GT_NAME=tracker-in-guest
GT_BIN=${HAVMS_BUILD:-$(cd "$(dirname "$0")/../.." && pwd)/build}/test/test_tracker
. "$(dirname "$0")/../lib/guesttest.sh"
bin=$GT_BIN

# The uffd-wp cases must skip, on a < 6.7 kernel, with this reason
# (lib/tracker.c, docs/tracker.md).
UFFD_WHY="uffd-wp: userfaultfd write-protect async mode needs Linux >= 6.7 (UFFD_FEATURE_WP_ASYNC)"
SD_CASES="test_softdirty_exact test_softdirty_cap"
UFFD_CASES="test_uffd_exact test_uffd_cap test_uffd_fork_own test_uffd_inherited test_uffd_missing"

gt_prepare
if [ -f "$guest/kernel.config" ] && ! grep -qx 'CONFIG_MEM_SOFT_DIRTY=y' "$guest/kernel.config"; then
	gt_skip "the guest kernel $(cat "$guest/kernel.release" 2>/dev/null) lacks CONFIG_MEM_SOFT_DIRTY: nothing to test"
fi

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
	{ cat "$tmp/mkinitrd.log"; gt_die "cannot build the test initramfs"; }

gt_boot "$tmp/initrd.img"
result=$gt_result con=$gt_con secs=$gt_secs

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
	gt_skip "the ASan build of test_tracker does not start in the guest (rc=${result:-none}); run with a non-ASan HAVMS_BUILD"
}

gt_no_result asan_refused

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

gt_check "guest booted ($kernel) and ran $(basename "$bin")" "no HAVMS-TEST-START line" \
	test -n "$kernel"
gt_check "test_tracker exited 0 in the guest" "rc=$result" test "$result" = 0
gt_check "cmocka finished the run" "no '[==========] N test(s) run.' line" \
	grep -q '^\[==========\] [0-9]* test(s) run\.$' <<<"$con"
nfailed=$(grep -c '^\[  FAILED  \] test_' <<<"$con")
gt_check "no case failed" "$nfailed failed" test "$nfailed" = 0

for t in $SD_CASES; do
	gt_check "$t ran and passed on soft-dirty" "$(shown "$t")" passed "$t"
done
gt_check "test_softdirty_why: the guest kernel has soft-dirty" "$(shown test_softdirty_why)" \
	skipped_with test_softdirty_why "soft-dirty is present in this kernel"
gt_check "test_auto passed (auto takes the backend that works)" "$(shown test_auto)" \
	passed test_auto

# uffd-wp: skips with the reason below 6.7, runs from 6.7 on
kmaj=${kernel%%.*} kmin=${kernel#*.}
kmin=${kmin%%.*}
if [[ $kmaj =~ ^[0-9]+$ && $kmin =~ ^[0-9]+$ ]] && ((kmaj > 6 || (kmaj == 6 && kmin >= 7))); then
	for t in $UFFD_CASES; do
		gt_check "$t passed (kernel $kernel has WP_ASYNC)" "$(shown "$t")" passed "$t"
	done
else
	for t in $UFFD_CASES; do
		gt_check "$t skipped: $UFFD_WHY" "$(shown "$t")" skipped_with "$t" "$UFFD_WHY"
	done
fi

echo "duration: ${secs}s (boot + test under TCG$([ "$asan" = 1 ] && echo ", ASan build"))"
gt_summary
