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
GT_NAME=netbuf-plug-in-guest
GT_BIN=${HAVMS_BUILD:-$(cd "$(dirname "$0")/../.." && pwd)/build}/test/netbuf_plug_guest
. "$(dirname "$0")/../lib/guesttest.sh"
bin=$GT_BIN

MODULES="tun bridge veth ifb sch_ingress cls_u32 act_mirred sch_plug"
# the cases netbuf-plug-guest.c runs, in order
CASES="qemu_netdev passthrough hold_until_release barrier_cuts_exactly
       outstanding_epochs_merge tiny_frame_buffered lan_to_guest_while_buffering
       limit_drops buffering_off_releases_in_order buffering_on_again discard
       close_removes_devices"

gt_prepare
rel=$(cat "$guest/kernel.release" 2>/dev/null)
if [ -f "$guest/kernel.config" ] && ! grep -Eqx 'CONFIG_NET_SCH_PLUG=(y|m)' "$guest/kernel.config"; then
	gt_skip "the guest kernel $rel lacks CONFIG_NET_SCH_PLUG: nothing to test"
fi
# build.sh extracts the whole kernel package here (modules.dep included)
moddir=$guest/cache/linux-image-$rel/lib/modules/$rel
[ -f "$moddir/modules.dep" ] || gt_die "no modules of $rel in $moddir (run test/guest/build.sh)"

margs=()
for m in $MODULES; do margs+=(-m "$m"); done
"$top/test/guest/mkinitrd-test.sh" -k "$moddir" "${margs[@]}" "$tmp/initrd.img" "$bin" \
	>"$tmp/mkinitrd.log" 2>&1 ||
	{ cat "$tmp/mkinitrd.log"; gt_die "cannot build the test initramfs"; }

gt_boot "$tmp/initrd.img"
result=$gt_result con=$gt_con secs=$gt_secs

echo "--- guest console (${secs}s) ---"
grep -E '^(HAVMS-|    check failed|    held_frames|cannot )' <<<"$con" | sed 's/^/  /'
echo "---"

gt_no_result

kernel=$(sed -n 's/^HAVMS-TEST-START kernel=\([^ ]*\) .*/\1/p' <<<"$con" | head -n1)
gt_check "guest booted ($kernel) and ran $(basename "$bin")" "no HAVMS-TEST-START line" \
	test -n "$kernel"
modfail=$(sed -n 's/^HAVMS-TEST-MODULE-FAILED //p' <<<"$con" | tr '\n' ' ')
gt_check "the modules loaded ($MODULES)" "failed: $modfail" test -z "$modfail"
gt_check "netbuf_open(plug) succeeded in the guest" \
	"$(grep -E '^(HAVMS-NETBUF-OPEN-FAILED|cannot )' <<<"$con" | head -n1)" \
	grep -qx 'HAVMS-NETBUF-OPEN ok' <<<"$con"
for c in $CASES; do
	gt_check "case $c" "$(grep -E "^HAVMS-NETBUF-CASE [A-Za-z]+ $c\$" <<<"$con" || echo "it did not run")" \
		grep -qx "HAVMS-NETBUF-CASE ok $c" <<<"$con"
done
nfailed=$(grep -c '^HAVMS-NETBUF-CASE FAILED' <<<"$con")
gt_check "no case failed" "$nfailed failed" test "$nfailed" = 0
gt_check "netbuf_plug_guest exited 0 in the guest" "rc=$result" test "$result" = 0

echo "duration: ${secs}s (boot + test under TCG)"
gt_summary
