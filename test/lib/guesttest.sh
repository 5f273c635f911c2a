# shellcheck shell=bash
# guesttest.sh - run a test program inside the test guest's kernel (Debian
# cloud 6.1) under TCG and read its verdict from the serial console. For
# kernel features the development hosts lack (soft-dirty, sch_plug).
#
#   GT_NAME=tracker-in-guest GT_BIN=$build/test/test_tracker
#   . test/lib/guesttest.sh          # gt_ok/gt_bad/gt_skip/gt_die, $top, $guest
#   gt_prepare                       # root, QEMU, binary, guest; $tmp, cleanup trap
#   test/guest/mkinitrd-test.sh ... "$tmp/initrd.img" "$GT_BIN"
#   gt_boot "$tmp/initrd.img"        # sets gt_result, gt_timed_out, gt_secs, gt_con
#
# The program's initramfs prints "HAVMS-TEST-RESULT rc=N" and powers off.
# Environment: HAVMS_BUILD, HAVMS_GUEST (default test/guest/out, built if
# missing), HAVMS_GUEST_TIMEOUT (boot + test, default 300 s), HAVMS_KEEP=1
# keeps the temp dir (console log).
# shellcheck disable=SC2317  # functions run from traps

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${HAVMS_BUILD:-$top/build}
guest=${HAVMS_GUEST:-$top/test/guest/out}
limit=${HAVMS_GUEST_TIMEOUT:-300}
gt_pass=0 gt_fail=0
gt_skip() { echo "SKIP: $*"; exit 77; }
gt_ok() { gt_pass=$((gt_pass + 1)); echo "PASS: $*"; }
gt_bad() { gt_fail=$((gt_fail + 1)); echo "FAIL: $*"; }
gt_summary() { echo "$GT_NAME: $gt_pass passed, $gt_fail failed"; [ "$gt_fail" = 0 ] && exit 0; exit 1; }
gt_die() { gt_bad "$*"; gt_summary; }

qpid=
gt__cleanup() {
	if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
		kill "$qpid" 2>/dev/null
		for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$qpid" 2>/dev/null || break; sleep 0.2; done
		kill -KILL "$qpid" 2>/dev/null
		wait "$qpid" 2>/dev/null
	fi
	[ -n "${tmp:-}" ] || return 0
	if [ "${HAVMS_KEEP:-0}" = 1 ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}

# gt_prepare: what every in-guest test needs, and its temp dir ($tmp).
gt_prepare() {
	[ "$(id -u)" = 0 ] || gt_skip "needs root (builds the guest kernel with apt-get, boots QEMU)"
	command -v qemu-system-x86_64 >/dev/null || gt_skip "qemu-system-x86_64 is missing"
	[ -x "$GT_BIN" ] || gt_die "no test binary $GT_BIN (build with meson first)"
	if [ ! -f "$guest/vmlinuz" ] || [ ! -x /bin/busybox ]; then
		echo "building the test guest ($top/test/guest/build.sh $guest)"
		"$top/test/guest/build.sh" "$guest" >/dev/null || gt_die "test/guest/build.sh failed"
	fi
	[ -f "$guest/vmlinuz" ] || gt_die "no guest kernel $guest/vmlinuz"
	tmp=$(mktemp -d "${TMPDIR:-/tmp}/havms-$GT_NAME.XXXXXX")
	trap gt__cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	trap 'exit 129' HUP
}

# gt_boot INITRD: boot it, wait for the result line (or QEMU's end, or the
# time limit); the console without CRs is in gt_con.
gt_boot() {
	local log=$tmp/console.log start
	start=$(date +%s)
	qemu-system-x86_64 -machine q35,accel=tcg -cpu max -m 512 -nodefaults -vga none \
		-display none -no-reboot -serial "file:$log" \
		-kernel "$guest/vmlinuz" -initrd "$1" \
		-append "console=ttyS0 panic=-1 quiet" >"$tmp/qemu.log" 2>&1 &
	qpid=$!
	gt_result=
	while :; do
		gt_result=$(tr -d '\r' 2>/dev/null <"$log" |
			sed -n 's/^HAVMS-TEST-RESULT rc=\([0-9]*\)$/\1/p' | head -n1)
		[ -n "$gt_result" ] && break
		kill -0 "$qpid" 2>/dev/null || break
		[ $(($(date +%s) - start)) -ge "$limit" ] && break
		sleep 0.5
	done
	# let the guest power off by itself, then make sure QEMU is gone
	if [ -n "$gt_result" ]; then
		for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$qpid" 2>/dev/null || break; sleep 0.3; done
	fi
	gt_timed_out=0
	if kill -0 "$qpid" 2>/dev/null; then
		kill "$qpid" 2>/dev/null
		gt_timed_out=1
	fi
	wait "$qpid" 2>/dev/null
	qpid=
	gt_secs=$(($(date +%s) - start))
	gt_con=$(tr -d '\r' 2>/dev/null <"$log")
}

# gt_no_result [HOOK]: when there is no result line, show why (after HOOK,
# which may skip) and fail.
gt_no_result() {
	[ -z "$gt_result" ] || return 0
	echo "--- last console lines ---"
	tail -n 40 <<<"$gt_con" | sed 's/^/  /'
	[ -s "$tmp/qemu.log" ] && { echo "--- qemu ---"; sed 's/^/  /' "$tmp/qemu.log"; }
	[ -z "${1:-}" ] || "$1"
	if [ "$gt_timed_out" = 1 ]; then
		gt_die "no HAVMS-TEST-RESULT line within ${limit}s"
	else
		gt_die "QEMU ended without a HAVMS-TEST-RESULT line"
	fi
}

# gt_check WHAT WHY_NOT CMD...: pass if CMD succeeds, else fail saying WHY_NOT
gt_check() {
	local what=$1 why_not=$2
	shift 2
	if "$@"; then gt_ok "$what"; else gt_bad "$what: $why_not"; fi
}
