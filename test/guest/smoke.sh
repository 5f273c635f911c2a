#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Smoke test of the havms test guest: build it, check the test programs on
# the host, boot the guest under QEMU (TCG), talk to its two services and
# check that the counter counts and the dirtier dirties.
#
#   test/guest/smoke.sh [--no-build] [OUTDIR]
#
# Runs in a private network namespace (unshare -n) holding only a loopback:
# the guest uses QEMU user networking with restrict=on, reachable only
# through hostfwd ports on that namespace's 127.0.0.1, so parallel runs do
# not collide and nothing leaves the machine.  SMOKE_KEEP=1 keeps the work
# directory (serial log) for inspection.  Exit 0 on success.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUILD=1
if [ "${1:-}" = --no-build ]; then
	BUILD=0
	shift
fi
OUT=${1:-$HERE/out}

BOOT_TIMEOUT=60
RATE=4          # dirtier MiB/s in the guest
WSS=32          # dirtier working set in the guest, MiB
CPORT=17000     # host side of the counter's hostfwd
DPORT=17001     # host side of the dirtier's hostfwd
GUEST_IP=10.0.2.15  # slirp's guest address

if [ -z "${HAVMS_SMOKE_NETNS:-}" ]; then
	if [ "$BUILD" = 1 ]; then
		"$HERE/build.sh" "$OUT"
	fi
	exec unshare -n -- env HAVMS_SMOKE_NETNS=1 "$0" --no-build "$OUT"
fi
OUT=$(cd "$OUT" && pwd)

fail() {
	echo "smoke: FAIL: $*" >&2
	exit 1
}
ok() { echo "smoke: ok: $*"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

WORK=$(mktemp -d /tmp/havms-guest-smoke.XXXXXX)
QEMU_PID=
HOST_PIDS=()
LOG=$WORK/serial.log

cleanup() {
	local rc=$? p
	for p in "${HOST_PIDS[@]}" $QEMU_PID; do
		kill "$p" 2>/dev/null || true
		wait "$p" 2>/dev/null || true
	done
	if [ $rc -ne 0 ] && [ -s "$LOG" ]; then
		echo "smoke: last lines of the serial console:" >&2
		tail -n 25 "$LOG" | tr -d '\r' | sed 's/^/  | /' >&2
	fi
	if [ -n "${SMOKE_KEEP:-}" ]; then
		echo "smoke: kept $WORK"
	else
		rm -rf "$WORK"
	fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip link set lo up

# ---- helpers talking to line services over bash's /dev/tcp ----

# query PORT REQUEST: one request on a fresh connection, prints the reply.
query() {
	local fd reply
	exec {fd}<>"/dev/tcp/127.0.0.1/$1" || return 1
	printf '%s\n' "$2" >&"$fd"
	read -r -t 10 -u "$fd" reply || { exec {fd}>&-; return 1; }
	exec {fd}>&-
	echo "$reply"
}

# field KEY LINE: value of KEY=value in a reply line.
field() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"; }

# ---- 1. the programs on the host ----

check_host_programs() {
	local bin=$OUT/bin a b
	for p in counterd dirtier hvq; do
		[ -x "$bin/$p" ] || fail "$bin/$p missing (run build.sh)"
	done
	"$bin/counterd" -p 27000 & HOST_PIDS+=($!)
	"$bin/dirtier" -r 0 -w 8 -p 27001 & HOST_PIDS+=($!)
	for _ in $(seq 50); do
		"$bin/hvq" 27001 stat >/dev/null 2>&1 && "$bin/hvq" 27000 get >/dev/null 2>&1 && break
		sleep 0.1
	done
	[ "$("$bin/hvq" 27000 next)" = 1 ] || fail "host counterd: first next is not 1"
	a=$(field bytes "$("$bin/hvq" 27001 stat)")
	sleep 0.5
	b=$(field bytes "$("$bin/hvq" 27001 stat)")
	[ "$b" -gt "$a" ] || fail "host dirtier -r 0: bytes did not grow ($a -> $b)"
	ok "host: counterd answers, dirtier flat out does $(((b - a) * 2 / 1048576)) MiB/s"
	kill "${HOST_PIDS[@]}"
	wait "${HOST_PIDS[@]}" 2>/dev/null || true
	HOST_PIDS=()
}

# ---- 2. boot ----

boot_guest() {
	local t0 t1 i
	truncate -s 16M "$WORK/disk.img"
	t0=$(now_ms)
	qemu-system-x86_64 -machine q35,accel=tcg -cpu max -m 256 -smp 1 \
		-nodefaults -vga none -display none -no-reboot \
		-serial "file:$LOG" \
		-kernel "$OUT/vmlinuz" -initrd "$OUT/initrd.img" \
		-append "console=ttyS0 panic=-1 havms.ip=$GUEST_IP/24 havms.dirty_mib_s=$RATE havms.wss_mib=$WSS havms.hb=2" \
		-netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$CPORT-$GUEST_IP:7000,hostfwd=tcp:127.0.0.1:$DPORT-$GUEST_IP:7001" \
		-device virtio-net-pci,netdev=n0 \
		-drive "if=none,id=d0,file=$WORK/disk.img,format=raw" \
		-device virtio-blk-pci,drive=d0 \
		2>"$WORK/qemu.err" &
	QEMU_PID=$!
	for ((i = 0; i < BOOT_TIMEOUT * 10; i++)); do
		grep -q '^HAVMS-GUEST-READY' "$LOG" 2>/dev/null && break
		kill -0 "$QEMU_PID" 2>/dev/null ||
			fail "QEMU exited during boot (guest panic?) $(cat "$WORK/qemu.err")"
		sleep 0.1
	done
	grep -q '^HAVMS-GUEST-READY' "$LOG" || fail "no HAVMS-GUEST-READY within ${BOOT_TIMEOUT}s"
	t1=$(now_ms)
	BOOT_MS=$((t1 - t0))
	READY=$(grep -a '^HAVMS-GUEST-READY' "$LOG" | tr -d '\r')
	INFO=$(grep -a '^HAVMS-GUEST-INFO' "$LOG" | tr -d '\r')
	echo "smoke: boot time (QEMU start to READY, host clock): ${BOOT_MS} ms"
	echo "smoke: $INFO"
	echo "smoke: $READY"
	[ "$(field disks "$INFO")" = vda ] || fail "guest does not see the virtio disk as vda"
	[ "$(field ip "$READY")" = "$GUEST_IP/24" ] || fail "guest has no eth0 address"
	ok "guest booted: virtio-net and virtio-blk up"
}

# ---- 3. counter service ----

check_counter() {
	local a b v1 v2 v3 st boot_id
	st=$(query $CPORT stat) || fail "counter: no reply to stat"
	[[ $st =~ ^counter=[0-9]+\ uptime_ms=[0-9]+\ boot_id=[0-9a-f-]{36}$ ]] ||
		fail "counter: bad stat reply '$st'"
	boot_id=$(field boot_id "$READY")
	[ "$(field boot_id "$st")" = "$boot_id" ] || fail "counter: boot_id differs from READY line"

	# Two clients at once, each with several requests on its connection.
	exec {a}<>/dev/tcp/127.0.0.1/$CPORT {b}<>/dev/tcp/127.0.0.1/$CPORT
	printf 'next\n' >&"$a"; read -r -t 10 -u "$a" v1
	printf 'next\n' >&"$b"; read -r -t 10 -u "$b" v2
	printf 'next\nget\n' >&"$a"; read -r -t 10 -u "$a" v3; read -r -t 10 -u "$a" st
	exec {a}>&- {b}>&-
	[ "$v2" = $((v1 + 1)) ] && [ "$v3" = $((v1 + 2)) ] && [ "$st" = "$v3" ] ||
		fail "counter: interleaved clients got $v1, $v2, $v3, get $st"
	ok "counter: two clients interleaved got $v1, $v2, $v3"

	# Misbehaving clients must not hurt the service.
	exec {a}<>/dev/tcp/127.0.0.1/$CPORT; printf 'nex' >&"$a"; exec {a}>&-
	exec {a}<>/dev/tcp/127.0.0.1/$CPORT; printf '%0600d\n' 0 1>&"$a" 2>/dev/null || true; exec {a}>&-
	exec {a}<>/dev/tcp/127.0.0.1/$CPORT; printf 'next\n%.0s' $(seq 300) >&"$a"; exec {a}>&-
	[ "$(query $CPORT bogus)" = "error unknown-command" ] || fail "counter: unknown command not rejected"
	sleep 0.5
	st=$(query $CPORT get) || fail "counter: dead after misbehaving clients"
	[ "$st" -ge "$v3" ] && [ "$st" -le $((v3 + 300)) ] ||
		fail "counter: implausible value $st after misbehaving clients"
	v1=$(query $CPORT next)
	[ "$v1" = $((st + 1)) ] || fail "counter: next after get $st gave $v1"
	ok "counter: survives partial, oversized and abandoned requests (now $v1)"
}

# ---- 4. dirtier ----

check_dirtier() {
	local s1 s2 t1 t2 db dp rate_x100
	s1=$(query $DPORT stat) || fail "dirtier: no reply to stat"
	t1=$(now_ms)
	[[ $s1 =~ ^bytes=[0-9]+\ pages=[0-9]+\ rate_mib_s=$RATE\ wss_mib=$WSS\ uptime_ms=[0-9]+$ ]] ||
		fail "dirtier: bad stat reply '$s1'"
	sleep 3
	s2=$(query $DPORT stat)
	t2=$(now_ms)
	db=$(($(field bytes "$s2") - $(field bytes "$s1")))
	dp=$(($(field pages "$s2") - $(field pages "$s1")))
	[ "$db" -gt 0 ] && [ "$dp" -gt 0 ] || fail "dirtier: counters did not grow ($s1 -> $s2)"
	# Modified bytes per wall-clock second, in hundredths of a MiB/s.
	rate_x100=$((db * 100 * 1000 / (t2 - t1) / 1048576))
	echo "smoke: dirtier: $db bytes, $dp page touches in $((t2 - t1)) ms:" \
	     "$((rate_x100 / 100)).$(printf %02d $((rate_x100 % 100))) MiB/s (configured $RATE)," \
	     "$((db / dp)) bytes per page touch"
	[ "$rate_x100" -ge $((RATE * 50)) ] && [ "$rate_x100" -le $((RATE * 150)) ] ||
		fail "dirtier: rate is off by more than 50%"
	ok "dirtier: dirties at the configured rate"
}

# ---- 5. console ----

check_console() {
	local i
	for ((i = 0; i < 50; i++)); do
		grep -q '^HAVMS-GUEST-HB' "$LOG" && break
		sleep 0.1
	done
	grep -a '^HAVMS-GUEST-HB' "$LOG" | tail -n1 | tr -d '\r' | grep -q 'counter=[0-9]' ||
		fail "no heartbeat line with a counter on the console"
	if grep -aE '^HAVMS-GUEST-(EXIT|WARN)|Kernel panic|BUG:|Oops' "$LOG"; then
		fail "problems reported on the console"
	fi
	kill -0 "$QEMU_PID" || fail "QEMU died"
	ok "console: heartbeat present, no warnings"
}

check_host_programs
boot_guest
check_counter
check_dirtier
check_console
echo "smoke: PASS (boot ${BOOT_MS} ms, kernel $(cat "$OUT/kernel.release"))"
