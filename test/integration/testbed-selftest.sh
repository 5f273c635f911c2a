#!/bin/bash
# testbed-selftest.sh - self-test of test/lib/testbed.sh.
# shellcheck disable=SC2015,SC2317,SC2086  # A && B || fail idiom; check functions are called indirectly
# Exit 0 = pass, 1 = fail, 77 = skip (reason printed).
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
lib=$here/../lib/testbed.sh
me=testbed-selftest

skip() { echo "$me: SKIP: $*"; exit 77; }

[ "$(id -u)" = 0 ] || skip "needs root (network namespaces, cgroups, mounts)"
for c in ip nsenter unshare socat timeout ss findmnt; do
	command -v "$c" >/dev/null || skip "missing command: $c"
done
awk '$3 == "cgroup2" { f = 1 } END { exit !f }' /proc/mounts || skip "no cgroup2 hierarchy mounted"
ip netns add "havms-tb-probe-$$" 2>/dev/null || skip "cannot create network namespaces"
ip netns del "havms-tb-probe-$$"

# shellcheck source=../lib/testbed.sh
. "$lib"

t_start=$EPOCHREALTIME
passed=0 failed=0
pass() { echo "PASS: $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
# check NAME FUNC: run FUNC, PASS/FAIL on its status; FUNC prints details
check() {
	local name=$1; shift
	local out rc
	out=$("$@" 2>&1); rc=$?
	# FUNC runs in a subshell: test-bed state lives in files, so that is
	# fine; processes it must keep are spawned outside FUNC.
	if [ "$rc" = 0 ]; then pass "$name${out:+ ($out)}"; else fail "$name: ${out:-exit $rc}"; fi
}
ms_since() { local now=${EPOCHREALTIME/./} t=${1/./}; echo $(( (now - t) / 1000 )); }

finish() {
	echo "$me: total $(( $(ms_since "$t_start") )) ms"
	echo "$me: $passed passed, $failed failed"
	[ "$failed" = 0 ] && exit 0
	exit 1
}

# ---------------------------------------------------------------- setup ----
if ! tb_init; then
	skip "tb_init failed (cgroup2 not writable?)"
fi
prefix=$TB_PREFIX cgroot=$TB_CG_ROOT rundir=$TB_RUN

err=
{ tb_lan_create && tb_host_create a 1 && tb_host_create b 2 && tb_link_create a b 1; } 2>"$TB_RUN/setup.err" || err=$(cat "$TB_RUN/setup.err")
if [ -z "$err" ]; then
	pass "setup: lan + client + hosts a, b + replication link 1 ($(ms_since "$t_start") ms)"
else
	fail "setup: $err"
	finish
fi
A_LAN=$(tb_addr a lan) B_LAN=$(tb_addr b lan)
A_RL=$(tb_addr a 1) B_RL=$(tb_addr b 1)

# ------------------------------------------------------ private mounts -----
check_mounts() {
	local p f bad=
	for p in /run /dev/shm /var/lib/havms /etc/havms /var/log/havms; do
		f=$p/tb-probe-$TB_ID
		tb_exec a sh -c "echo host-a > '$f'" || { echo "cannot write $f in a"; return 1; }
		tb_exec b test -e "$f" && bad+=" $f visible in b;"
		[ -e "$f" ] && bad+=" $f visible on the real host;"
		[ "$(tb_exec a cat "$f")" = host-a ] || bad+=" $f not readable in a;"
		# /var/lib/havms is the host's disk (kept across a restart), the rest RAM
		if [ "$p" = /var/lib/havms ]; then
			tb_exec a findmnt -n --mountpoint "$p" >/dev/null || bad+=" $p not a mount in a;"
		else
			[ "$(tb_exec a findmnt -n -o FSTYPE --mountpoint "$p" | tail -n 1)" = tmpfs ] ||
				bad+=" $p not tmpfs in a;"
		fi
		[ "$(cat "$(tb_path a "$f")")" = host-a ] || bad+=" tb_path a $f wrong;"
	done
	[ "$(tb_exec a hostname)" = a ] || bad+=" hostname in a is not a;"
	[ "$(tb_exec b hostname)" = b ] || bad+=" hostname in b is not b;"
	[ -z "$bad" ] || { echo "$bad"; return 1; }
	echo "/run /dev/shm /etc/havms /var/log/havms private tmpfs, /var/lib/havms a private disk; hostnames a, b"
}
check "private mounts per host" check_mounts

# --------------------------------------------------------- connectivity ----
tb_tcp_listen a "$A_RL" 7001 hello-a-rl
tb_tcp_listen b "$B_RL" 7001 hello-b-rl
tb_tcp_listen a "$A_LAN" 7002 hello-a-lan
tb_tcp_listen b "$B_LAN" 7002 hello-b-lan
check_repl() {
	local r
	r=$(tb_tcp_connect b "$A_RL" 7001) && [ "$r" = hello-a-rl ] || { echo "b -> $A_RL: '$r'"; return 1; }
	r=$(tb_tcp_connect a "$B_RL" 7001) && [ "$r" = hello-b-rl ] || { echo "a -> $B_RL: '$r'"; return 1; }
	echo "b -> $A_RL:7001 and a -> $B_RL:7001"
}
check "replication link a <-> b" check_repl
check_client() {
	local r
	r=$(tb_tcp_connect client "$A_LAN" 7002) && [ "$r" = hello-a-lan ] || { echo "client -> $A_LAN: '$r'"; return 1; }
	r=$(tb_tcp_connect client "$B_LAN" 7002) && [ "$r" = hello-b-lan ] || { echo "client -> $B_LAN: '$r'"; return 1; }
	echo "client -> $A_LAN:7002 and $B_LAN:7002"
}
check "client -> hosts over the lan" check_client

# ------------------------------------------------------------ cgroups ------
# processes of a: the holder, the listeners, a sleeper, a shell with a child
tb_spawn a "$TB_RUN/a-sleep.log" sleep 1000; p_sleep=$TB_LAST_PID
tb_spawn a "$TB_RUN/a-tree.log" sh -c 'sleep 1001 & sleep 1002; wait'; p_tree=$TB_LAST_PID
# a spawned pid joins the cgroup before it has entered a's namespaces
in_a_netns() {
	local nsa p; nsa=$(readlink "/proc/$(tb_holder a)/ns/net")
	for p in "$@"; do [ "$(readlink "/proc/$p/ns/net")" = "$nsa" ] || return 1; done
}
tb_wait_for 5 in_a_netns "$p_sleep" "$p_tree"
check_cgroup() {
	local pid want="0::/$prefix/a" got n=0 nsa bad=
	nsa=$(readlink "/proc/$(tb_holder a)/ns/net")
	for pid in $(tb_host_pids a) "$p_sleep" "$p_tree"; do
		got=$(grep '^0::' "/proc/$pid/cgroup")
		[ "$got" = "$want" ] || bad+=" pid $pid in '$got';"
		[ "$(readlink "/proc/$pid/ns/net")" = "$nsa" ] || bad+=" pid $pid not in a's netns;"
		n=$((n + 1))
	done
	got=$(tb_exec a cat /proc/self/cgroup | grep '^0::')
	[ "$got" = "$want" ] || bad+=" tb_exec process in '$got';"
	[ "$(tb_exec a readlink /proc/self/ns/net)" = "$nsa" ] || bad+=" tb_exec process not in a's netns;"
	[ "$(tb_exec a readlink /proc/self/ns/mnt)" = "$(readlink "/proc/$(tb_holder a)/ns/mnt")" ] || bad+=" tb_exec process not in a's mount ns;"
	[ "$(tb_host_pids a | wc -l)" -ge 5 ] || bad+=" expected >= 5 processes in a, got $(tb_host_pids a | wc -l);"
	[ -z "$bad" ] || { echo "$bad"; return 1; }
	echo "$n processes + tb_exec in $want, a's net and mount ns"
}
check "processes spawned in a are in a's cgroup" check_cgroup

# ------------------------------------------------------------ poweroff -----
pids_a=$(tb_host_pids a)
t0=$EPOCHREALTIME
tb_poweroff a
check_poweroff() {
	local pid alive=
	tb_wait_for 3 tb__all_dead $pids_a || true
	local ms; ms=$(ms_since "$t0")
	for pid in $pids_a; do tb_pid_alive "$pid" && alive+=" $pid"; done
	[ -z "$alive" ] || { echo "still alive after ${ms} ms:$alive"; return 1; }
	# The host is frozen at once (nothing of it runs after the first
	# step); the bound covers the link changes and the kill after it.
	[ "$ms" -le 3000 ] || { echo "took ${ms} ms"; return 1; }
	[ -z "$(tb_host_pids a)" ] || { echo "cgroup of a not empty"; return 1; }
	local nsa nsb; nsa=$(tb_ns a) nsb=$(tb_ns b)
	ip -n "$nsa" -br link show rl1 | grep -qw DOWN || { echo "rl1 in a not down"; return 1; }
	ip -n "$nsa" -br link show up0 | grep -qw DOWN || { echo "up0 in a not down"; return 1; }
	ip -n "$nsb" link show rl1 | grep -q NO-CARRIER || { echo "rl1 in b still has carrier"; return 1; }
	local rc
	tb_tcp_connect b "$A_RL" 7001 1 >/dev/null 2>&1; rc=$?
	[ "$rc" = 124 ] || { echo "b -> $A_RL: expected timeout (124), got $rc"; return 1; }
	tb_tcp_connect client "$A_LAN" 7002 1 >/dev/null 2>&1; rc=$?
	[ "$rc" = 124 ] || { echo "client -> $A_LAN: expected timeout (124), got $rc"; return 1; }
	tb_exec a true 2>/dev/null && { echo "tb_exec on a powered-off host succeeded"; return 1; }
	echo "$(echo $pids_a | wc -w) processes dead in ${ms} ms; links down; b and client time out"
}
tb__all_dead() { local p; for p; do tb_pid_alive "$p" && return 1; done; return 0; }
check "tb_poweroff a: all processes dead within 1 s, a unreachable" check_poweroff

# -------------------------------------------------------------- restart ----
check_restart() {
	local f=/run/tb-probe-$TB_ID
	[ -z "$(tb_exec a sh -c "ls /run /etc/havms /var/log/havms /dev/shm | grep tb-probe")" ] ||
		{ echo "probe files in RAM survived the restart"; return 1; }
	[ "$(tb_exec a cat "/var/lib/havms/tb-probe-$TB_ID")" = host-a ] ||
		{ echo "the disk (/var/lib/havms) did not survive the restart"; return 1; }
	[ "$(tb_exec a hostname)" = a ] || { echo "hostname lost"; return 1; }
	local r
	r=$(tb_tcp_connect b "$A_RL" 7001) && [ "$r" = hello-a-rl ] || { echo "b -> $A_RL after restart: '$r'"; return 1; }
	r=$(tb_tcp_connect client "$A_LAN" 7002) && [ "$r" = hello-a-lan ] || { echo "client -> $A_LAN after restart: '$r'"; return 1; }
	echo "fresh tmpfs, the disk kept, links up, reachable again"
}
if tb_poweron_links a && tb_host_restart a &&
	tb_tcp_listen a "$A_RL" 7001 hello-a-rl && tb_tcp_listen a "$A_LAN" 7002 hello-a-lan; then
	check "tb_poweron_links + tb_host_restart a" check_restart
else
	fail "tb_poweron_links + tb_host_restart a: restart failed"
fi

# ------------------------------------------------------------ link cut -----
check_linkcut() {
	local r rc
	tb_link_down a b || { echo "tb_link_down failed"; return 1; }
	ip -n "$(tb_ns a)" link show rl1 | grep -q 'NO-CARRIER.*state LOWERLAYERDOWN\|NO-CARRIER' || { echo "rl1 in a has carrier"; return 1; }
	ip -n "$(tb_ns b)" link show rl1 | grep -q NO-CARRIER || { echo "rl1 in b has carrier"; return 1; }
	ip -n "$(tb_ns b)" -br addr show rl1 | grep -q "$B_RL" || { echo "rl1 in b lost its address"; return 1; }
	tb_tcp_connect b "$A_RL" 7001 1 >/dev/null 2>&1; rc=$?
	[ "$rc" = 124 ] || { echo "b -> a with link cut: expected timeout, got $rc"; return 1; }
	r=$(tb_tcp_connect client "$A_LAN" 7002) && [ "$r" = hello-a-lan ] || { echo "lan affected by link cut"; return 1; }
	tb_link_up a b || { echo "tb_link_up failed"; return 1; }
	tb_wait_for 3 tb_tcp_connect b "$A_RL" 7001 1 >/dev/null 2>&1 || { echo "b -> a after link up fails"; return 1; }
	echo "cut: both ends NO-CARRIER, b -> a times out, lan still fine; restored"
}
check "tb_link_down / tb_link_up a b" check_linkcut

# -------------------------------------------------------- freeze / thaw ----
# shellcheck disable=SC2016
tb_spawn b "$TB_RUN/b-counter.log" sh -c 'i=0; while :; do i=$((i+1)); echo $i >/run/counter.new; mv /run/counter.new /run/counter; sleep 0.05; done'
counter() { cat "$(tb_path b /run/counter)" 2>/dev/null || echo 0; }
counter_gt() { [ "$(counter)" -gt "$1" ]; }
check_freeze() {
	tb_wait_for 2 counter_gt 2 || { echo "counter does not run"; return 1; }
	tb_freeze b || return 1
	local c1 c2 c3
	c1=$(counter); sleep 0.5; c2=$(counter)
	[ "$c1" = "$c2" ] || { echo "counter moved while frozen: $c1 -> $c2"; return 1; }
	tb_thaw b || return 1
	sleep 0.5; c3=$(counter)
	[ "$c3" -gt "$c2" ] || { echo "counter did not resume: $c2 -> $c3"; return 1; }
	echo "frozen at $c1 for 0.5 s, resumed to $c3"
}
check "tb_freeze / tb_thaw b" check_freeze

# ------------------------------------------------- cleanup on a signal -----
check_signal_cleanup() {
	local info=$rundir/child.info child pfx holder spawned sleeper
	# The child waits in "wait" (interruptible) on a sleeper of its own,
	# which it kills through tb_on_cleanup.
	# shellcheck disable=SC2016
	bash -c '. "$1"; tb_init || exit 1; tb_lan_create && tb_host_create x 1 || exit 1
		tb_spawn x /dev/null sleep 1000
		sleep 1000 & sleeper=$!
		tb_on_cleanup "kill $sleeper"
		echo "$TB_PREFIX $(tb_holder x) $TB_LAST_PID $sleeper" >"$2"
		wait $sleeper' child "$lib" "$info" >"$rundir/child.log" 2>&1 </dev/null &
	child=$!
	if ! tb_wait_for 10 test -s "$info"; then kill -9 "$child"; echo "child test bed did not start"; return 1; fi
	read -r pfx holder spawned sleeper <"$info"
	kill -TERM "$child"
	wait "$child"
	local rc=$?
	[ "$rc" = 143 ] || { echo "child exit status $rc, expected 143: $(cat "$rundir/child.log")"; return 1; }
	grep -q 'caught SIGTERM' "$rundir/child.log" || { echo "child did not report SIGTERM"; return 1; }
	tb_leftovers "$pfx" || return 1
	tb__all_dead "$holder" "$spawned" "$sleeper" || { echo "processes of the child survive"; return 1; }
	echo "SIGTERM: child exited 143, nothing left"
}
# tb_leftovers PREFIX: fails (and prints) if anything of run PREFIX remains
tb_leftovers() {
	local left
	left=$(ip netns list | grep -o "^$1-[^ ]*")
	[ -d "$cgroot/../$1" ] && left+=" cgroup"
	[ -d "${TB_BASE:-/tmp}/$1" ] && left+=" rundir"
	[ -z "$left" ] || { echo "left over: $left"; return 1; }
}
check "cleanup trap on SIGTERM (child test bed)" check_signal_cleanup

# --------------------------------------------------------------- cleanup ---
holders="$(tb_holder a) $(tb_holder b)"
tb_cleanup; rc1=$?
tb_cleanup; rc2=$?
check_cleanup() {
	[ "$rc1" = 0 ] || { echo "tb_cleanup returned $rc1"; return 1; }
	[ "$rc2" = 0 ] || { echo "second tb_cleanup returned $rc2"; return 1; }
	tb_leftovers "$prefix" || return 1
	[ ! -d "$cgroot" ] || { echo "cgroup $cgroot remains"; return 1; }
	[ ! -d "$rundir" ] || { echo "run dir remains"; return 1; }
	# shellcheck disable=SC2086
	tb__all_dead $holders || { echo "holders alive"; return 1; }
	echo "no netns, cgroup, run dir or process of $prefix left; idempotent"
}
check "tb_cleanup leaves nothing behind" check_cleanup

finish
