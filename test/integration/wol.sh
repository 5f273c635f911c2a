#!/bin/bash
# wol.sh - wake-on-LAN on the test bed (no QEMU, no daemons): host a sends,
# host s is a sleeping spare whose "NIC" is test/tools/wol-listen (UDP port 9
# and EtherType 0x0842 on its br0, MAC and SecureOn password set); waking
# it runs a command that creates a file.
#   1. what must not wake it, each checked in the listener's log (verdict,
#      and for packets the MAC seen) and by the file staying absent:
#      UDP for another MAC, wrong password, no password, 15 copies, a
#      truncated packet; raw frames for another MAC, with a wrong password,
#      garbage
#   2. havmsctl wake with the right MAC and password: the file appears; the
#      log shows a udp and a raw valid line, one "woken" and one
#      "already awake"; the raw frame's source is a's br0 MAC
#   3. UDP does not reach the spare (the listener runs with --no-udp, as a
#      NIC the UDP datagram never reaches): the raw frame alone wakes it
#   4. SIGTERM ends the listener cleanly ("stopped")
#   5. the raw frame cannot leave a (MTU 68 < 102): havmsctl wake still
#      succeeds, says which way failed and why; UDP alone wakes the spare
# Measured: wake_ms, from havmsctl wake's start to the command running.
# Exit 0 = pass, 1 = fail, 77 = skip (reason printed).
# shellcheck disable=SC2015,SC2317 # a && b || fail; functions called through tb_wait_for
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
me=wol
build=${HAVMS_BUILD:-$here/../../build}
listen=$build/test/wol-listen
ctl=$build/havmsctl/havmsctl
send="$here/../tools/wol_send.py"

skip() { echo "$me: SKIP: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root (network namespaces, cgroups, raw sockets)"
for c in nsenter python3; do
	command -v "$c" >/dev/null || skip "missing command: $c"
done
[ -x "$listen" ] && [ -x "$ctl" ] || skip "no $listen or $ctl (build first)"

# shellcheck source=../lib/testbed.sh
. "$here/../lib/testbed.sh"

failed=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
die() { echo "FAIL: $*"; echo "$me: FAILED"; exit 1; }

tb_init || skip "tb_init failed"
tb_lan_create && tb_host_create a 1 && tb_host_create s 3 || die "test bed setup"
SPARE_MAC=$(tb_mac s)     # the spare NIC's own address
OTHER_MAC=02:77:00:00:09:00
PW=1.2.3.4                # SecureOn, dotted form
PW_HEX=01020304

# listener state: its pid, log, the file its command creates, packet lines seen
L_PID='' L_LOG='' L_FILE='' L_SEEN=0

start_listener() { # start_listener TAG [wol-listen options...]
	local tag=$1; shift
	L_LOG=$TB_RUN/logs/wol-$tag.log L_FILE=$TB_RUN/woken-$tag L_SEEN=0
	: >"$L_LOG"
	tb_spawn s "$TB_RUN/logs/wol-$tag.out" "$listen" --interface br0 --mac "$SPARE_MAC" \
		--password "$PW" --log "$L_LOG" "$@" -- touch "$L_FILE" || die "spawn wol-listen"
	L_PID=$TB_LAST_PID
	tb_wait_for 5 grep -q ' listening ' "$L_LOG" ||
		die "wol-listen did not start: $(cat "$TB_RUN/logs/wol-$tag.out")"
}

packet_lines() { grep -cE '^[0-9]+ (udp|raw) ' "$L_LOG"; }
has_more_packets() { [ "$(packet_lines)" -gt "$L_SEEN" ]; }

# expect_packet WHAT HOW VERDICT MACSEEN: the next packet line in the log
# is "HOW VERDICT MACSEEN", and nothing was woken
expect_packet() {
	local what=$1 how=$2 verdict=$3 seen=$4 line
	if ! tb_wait_for 5 has_more_packets; then
		fail "$what: no packet line in the listener's log"
		return
	fi
	L_SEEN=$((L_SEEN + 1))
	line=$(grep -E '^[0-9]+ (udp|raw) ' "$L_LOG" | sed -n "${L_SEEN}p")
	# the command is started right after the packet's line, by the same
	# process: give it the time a wrong "woken" would need to show
	sleep 0.2
	read -r _ got_how got_verdict got_seen _ <<<"$line"
	if [ "$got_how $got_verdict $got_seen" = "$how $verdict $seen" ] &&
	   ! grep -q ' woken ' "$L_LOG" && [ ! -e "$L_FILE" ]; then
		pass "$what: $how $verdict $seen, not woken"
	else
		fail "$what: want '$how $verdict $seen' and not woken; log line '$line'," \
			"file $([ -e "$L_FILE" ] && echo exists || echo absent)"
	fi
}

bad() { # bad WHAT HOW VERDICT SEEN wol_send.py-args...
	local what=$1 how=$2 verdict=$3 seen=$4; shift 4
	tb_exec a python3 "$send" br0 "$how" "$@" >/dev/null || { fail "$what: send failed"; return; }
	expect_packet "$what" "$how" "$verdict" "$seen"
}

# ---- 1. what must not wake the spare
start_listener main
bad "UDP for another MAC (right password)" udp other-mac "$OTHER_MAC" "$OTHER_MAC" --password "$PW_HEX"
bad "UDP with a wrong password" udp bad-password "$SPARE_MAC" "$SPARE_MAC" --password 01020305
bad "UDP without the password" udp bad-password "$SPARE_MAC" "$SPARE_MAC"
bad "UDP with 15 copies" udp malformed - "$SPARE_MAC" --password "$PW_HEX" --copies 15
bad "UDP truncated inside the 16th copy" udp malformed - "$SPARE_MAC" --password "$PW_HEX" --truncate 100
bad "UDP garbage" udp malformed - garbage
bad "raw frame for another MAC" raw other-mac "$OTHER_MAC" "$OTHER_MAC" --password "$PW_HEX"
bad "raw frame with a wrong password" raw bad-password "$SPARE_MAC" "$SPARE_MAC" --password 09020304
bad "raw frame truncated to 40 bytes" raw malformed - "$SPARE_MAC" --truncate 40
bad "raw garbage" raw malformed - garbage
if [ ! -e "$L_FILE" ] && ! grep -q ' woken ' "$L_LOG"; then
	pass "nothing above woke the spare"
else
	fail "the spare was woken by a bad packet"
fi

# ---- 2. havmsctl wake: the right MAC and password, both ways
t0=$(tb__now_us)
out=$(tb_exec a "$ctl" wake --mac "$SPARE_MAC" --interface br0 --password "$PW" 2>&1)
rc=$?
while IFS= read -r l; do echo "  havmsctl: $l"; done <<<"$out"
if [ $rc = 0 ] && grep -q 'udp 255.255.255.255:9: sent' <<<"$out" &&
   grep -q 'raw ethertype 0x0842 .*: sent' <<<"$out"; then
	pass "havmsctl wake sent the packet both ways"
else
	fail "havmsctl wake (exit $rc)"
fi
if tb_wait_for 5 test -e "$L_FILE"; then
	t1=$(grep ' woken ' "$L_LOG" | head -n1 | cut -d' ' -f1)
	pass "the spare woke: its command ran (woken at +$(( t1 - t0 / 1000 )) ms)"
	wake_ms=$(( t1 - t0 / 1000 ))
else
	fail "the spare did not wake"
	wake_ms=-1
fi
tb_wait_for 5 grep -q 'already awake' "$L_LOG"
sed 's/^/  log: /' "$L_LOG"
grep -qE "^[0-9]+ udp valid $SPARE_MAC " "$L_LOG" && pass "log: a udp valid line" ||
	fail "log: no udp valid line"
grep -qE "^[0-9]+ raw valid $SPARE_MAC .* from=$(tb_mac a)$" "$L_LOG" &&
	pass "log: a raw valid line, from a's br0 MAC" || fail "log: no raw valid line from $(tb_mac a)"
[ "$(grep -c ' woken ' "$L_LOG")" = 1 ] && [ "$(grep -c ' already awake' "$L_LOG")" = 1 ] &&
	pass "log: woken once, then already awake" || fail "log: want one woken and one already awake"

# ---- 4. SIGTERM ends it cleanly
kill -TERM "$L_PID"
if tb_wait_exit "$L_PID" 5 && tail -n1 "$L_LOG" | grep -q ' stopped$'; then
	pass "SIGTERM: the listener logged 'stopped' and ended"
else
	fail "SIGTERM did not end the listener cleanly"
fi

# ---- 3. UDP never reaches the spare: the raw frame alone wakes it
start_listener raw-only --no-udp
grep -q 'udp=off' "$L_LOG" || fail "--no-udp: the listener says it listens on UDP"
out=$(tb_exec a "$ctl" wake --mac "$SPARE_MAC" --interface br0 --password "$PW" --json 2>&1)
echo "  havmsctl: $out"
grep -q '"udp":true,"raw":true' <<<"$out" || fail "havmsctl wake --json: $out"
if tb_wait_for 5 test -e "$L_FILE" && grep -qE "^[0-9]+ raw valid $SPARE_MAC " "$L_LOG" &&
   ! grep -qE '^[0-9]+ udp ' "$L_LOG"; then
	pass "UDP not received: the raw frame alone woke the spare"
else
	fail "UDP not received: not woken by the raw frame"; sed 's/^/  log: /' "$L_LOG"
fi

# ---- 5. the raw frame cannot go out (a's MTU of 68 is below the frame's
# 102 bytes; the UDP datagram is fragmented): wake still succeeds, says
# which way failed and why, and UDP alone wakes the spare
kill -TERM "$L_PID"; tb_wait_exit "$L_PID" 5
start_listener udp-only
tb_exec a ip link set up0 mtu 68 && tb_exec a ip link set br0 mtu 68 || fail "MTU 68 on a"
out=$(tb_exec a "$ctl" wake --mac "$SPARE_MAC" --interface br0 --password "$PW" 2>&1)
rc=$?
while IFS= read -r l; do echo "  havmsctl: $l"; done <<<"$out"
if [ $rc = 0 ] && grep -q 'udp 255.255.255.255:9: sent' <<<"$out" &&
   grep -q 'raw ethertype 0x0842 .*: NOT sent' <<<"$out" && grep -q 'raw: sendto on br0' <<<"$out"; then
	pass "raw frame refused by the MTU: havmsctl wake exits 0, says raw NOT sent and why"
else
	fail "raw frame refused: want exit 0 with 'NOT sent' and the reason (exit $rc)"
fi
if tb_wait_for 5 test -e "$L_FILE" && grep -qE "^[0-9]+ udp valid $SPARE_MAC " "$L_LOG" &&
   ! grep -qE '^[0-9]+ raw ' "$L_LOG"; then
	pass "no raw frame: the UDP datagram alone woke the spare"
else
	fail "no raw frame: not woken by UDP"; sed 's/^/  log: /' "$L_LOG"
fi

echo "wake_ms=$wake_ms"
if [ "$failed" = 0 ]; then
	echo "$me: PASSED"
	exit 0
fi
echo "$me: FAILED ($failed)"
exit 1
