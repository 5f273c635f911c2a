#!/bin/bash
# netbuf's plug backend, tested for real: the development hosts' kernel
# lacks sch_plug (test_netbuf only checks that open refuses there), so
# this boots the test guest's kernel (Debian cloud 6.1: sch_plug, ifb,
# sch_ingress, cls_u32, act_mirred, tun, bridge and veth as modules, which
# the initramfs loads) under TCG and runs netbuf_plug_guest, a static
# program that plays QEMU on the tap and watches the LAN through a bridge
# and a veth pair. It passes only if
#  - the modules load and netbuf_open(plug) succeeds in the guest;
#  - every case the program knows ran and passed, and it exited 0.
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
bin=$build/test/netbuf_plug_guest
name=netbuf-plug-in-guest

MODULES="tun bridge veth ifb sch_ingress cls_u32 act_mirred sch_plug"
# the cases netbuf-plug-guest.c runs, in order
CASES="qemu_netdev passthrough hold_until_release barrier_cuts_exactly
       outstanding_epochs_merge tiny_frame_buffered lan_to_guest_while_buffering
       limit_drops buffering_off_releases_in_order buffering_on_again discard
       close_removes_devices"

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
rel=$(cat "$guest/kernel.release" 2>/dev/null)
if [ -f "$guest/kernel.config" ] && ! grep -Eqx 'CONFIG_NET_SCH_PLUG=(y|m)' "$guest/kernel.config"; then
	skip "the guest kernel $rel lacks CONFIG_NET_SCH_PLUG: nothing to test"
fi
# build.sh extracts the whole kernel package here (modules.dep included)
moddir=$guest/cache/linux-image-$rel/lib/modules/$rel
[ -f "$moddir/modules.dep" ] || die "no modules of $rel in $moddir (run test/guest/build.sh)"

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

margs=()
for m in $MODULES; do margs+=(-m "$m"); done
"$top/test/guest/mkinitrd-test.sh" -k "$moddir" "${margs[@]}" "$tmp/initrd.img" "$bin" \
	>"$tmp/mkinitrd.log" 2>&1 ||
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

echo "--- guest console (${secs}s) ---"
grep -E '^(HAVMS-|    check failed|    held_frames|cannot )' <<<"$con" | sed 's/^/  /'
echo "---"

if [ -z "$result" ]; then
	echo "--- last console lines ---"
	tail -n 40 <<<"$con" | sed 's/^/  /'
	[ -s "$tmp/qemu.log" ] && { echo "--- qemu ---"; sed 's/^/  /' "$tmp/qemu.log"; }
	if [ "$timed_out" = 1 ]; then
		die "no HAVMS-TEST-RESULT line within ${limit}s"
	else
		die "QEMU ended without a HAVMS-TEST-RESULT line"
	fi
fi

kernel=$(sed -n 's/^HAVMS-TEST-START kernel=\([^ ]*\) .*/\1/p' <<<"$con" | head -n1)
check() { # check WHAT WHY_NOT CMD...
	local what=$1 why_not=$2
	shift 2
	if "$@"; then ok "$what"; else bad "$what: $why_not"; fi
}
check "guest booted ($kernel) and ran $(basename "$bin")" "no HAVMS-TEST-START line" \
	test -n "$kernel"
modfail=$(sed -n 's/^HAVMS-TEST-MODULE-FAILED //p' <<<"$con" | tr '\n' ' ')
check "the modules loaded ($MODULES)" "failed: $modfail" test -z "$modfail"
check "netbuf_open(plug) succeeded in the guest" \
	"$(grep -E '^(HAVMS-NETBUF-OPEN-FAILED|cannot )' <<<"$con" | head -n1)" \
	grep -qx 'HAVMS-NETBUF-OPEN ok' <<<"$con"
for c in $CASES; do
	check "case $c" "$(grep -E "^HAVMS-NETBUF-CASE [A-Za-z]+ $c\$" <<<"$con" || echo "it did not run")" \
		grep -qx "HAVMS-NETBUF-CASE ok $c" <<<"$con"
done
nfailed=$(grep -c '^HAVMS-NETBUF-CASE FAILED' <<<"$con")
check "no case failed" "$nfailed failed" test "$nfailed" = 0
check "netbuf_plug_guest exited 0 in the guest" "rc=$result" test "$result" = 0

echo "duration: ${secs}s (boot + test under TCG)"
summary
