#!/bin/bash
# fence-ipmi.sh - the real fence_ipmilan, through failover/fence.c (the
# hv-fence tool, async form), fences a test-bed host through its simulated
# BMC (test/lib/bmc.sh: ipmi_sim on the management network). No QEMU.
#   1. with host a cut off the LAN and the replication link (a partition),
#      b still reaches a's BMC: status says on; off succeeds, verified by
#      status; every process of a is gone within 0.5 s of the agent's start;
#      status then says off; on brings a back (holder alive, boot script ran)
#   2. level1 at an address where no BMC answers fails within timeout_ms,
#      level2 (the real BMC) fences
#   3. a wrong password fails cleanly (an exit, not a timeout)
#   4. measured: off and on with fence_ipmilan's default power_wait (2 s)
#      and with power_wait=0
# Exit 0 = pass, 1 = fail, 77 = skip (reason printed).
# shellcheck disable=SC2015
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
me=fence-ipmi
build=${HAVMS_BUILD:-$here/../../build}
hvf=$build/test/hv-fence

skip() { echo "$me: SKIP: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root (network namespaces, cgroups)"
for c in ipmi_sim ipmitool nsenter ss; do
	command -v "$c" >/dev/null || skip "missing command: $c (scripts/setup.sh installs it)"
done
[ -x /usr/sbin/fence_ipmilan ] || skip "fence_ipmilan missing (package fence-agents)"
[ -x "$hvf" ] || skip "no $hvf (build first)"

# shellcheck source=../lib/testbed.sh
. "$here/../lib/testbed.sh"
# shellcheck source=../lib/bmc.sh
. "$here/../lib/bmc.sh"

t_start=${EPOCHREALTIME/./}
failed=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }
die() { echo "FAIL: $*"; echo "$me: FAILED"; exit 1; }
field() { grep -o "$1=[^ ]*" <<<"$2" | head -n "${3:-1}" | tail -n 1 | cut -d= -f2- | tr -d '"'; }

tb_init || skip "tb_init failed"
tb_lan_create && tb_host_create a 1 && tb_host_create b 2 && tb_link_create a b 1 ||
	die "test bed setup"
tb_bmc_create a >/dev/null && tb_bmc_create b >/dev/null || die "BMC setup"
pass "BMCs: a at $(tb_bmc_addr a), b at $(tb_bmc_addr b) on the management network"

# host a: a few long-running processes, and what it does at boot
pids=()
for i in 1 2 3; do
	tb_spawn a "$TB_RUN/logs/a-sleep$i.log" sleep 1000 && pids+=("$TB_LAST_PID")
done
cat >"$TB_RUN/hosts/a/boot" <<'EOF'
echo "booted $(hostname)" >/run/booted
exec sleep 1000
EOF

# fence configuration as b would hold it (levels of [fence a])
conf() { # conf FILE LEVEL1 [LEVEL2] [TIMEOUT_MS]
	{
		echo "[host]"; echo "name = b"; echo "[fence a]"
		echo "level1 = $2"
		[ -z "${3:-}" ] || echo "level2 = $3"
		echo "timeout_ms = ${4:-20000}"
	} >"$1"
}
ipmi_a="fence_ipmilan $(tb_bmc_fence_args a)"
conf "$TB_RUN/pw0.conf" "$ipmi_a power_wait=0"
conf "$TB_RUN/pwdef.conf" "$ipmi_a"
conf "$TB_RUN/fallback.conf" "fence_ipmilan ip=10.88.0.199 username=admin password=x lanplus=1 cipher=3" \
	"$ipmi_a power_wait=0" 3000
conf "$TB_RUN/badpw.conf" "fence_ipmilan ip=$(tb_bmc_addr a) username=admin password=wrong lanplus=1 cipher=3 power_wait=0"
fence() { # fence CONF ACTION: run hv-fence in host b; output in $out, exit in $rc
	out=$(tb_exec b "$hvf" "$1" a "$2" 2>&1); rc=$?
	echo "$out" | sed 's/^/    /' >>"$TB_RUN/logs/fence.log"
}

# ------------------------------------------------ 1. a partition, then fence
tb_uplink_down a && tb_link_down a b || die "cannot cut a's links"
nsa=$(tb_ns a)
ip -n "$nsa" link show up0 | grep -q NO-CARRIER && ip -n "$nsa" link show rl1 | grep -q NO-CARRIER &&
	pass "partition: a has no carrier on the LAN (up0) nor the replication link (rl1); mg0 stays" ||
	fail "a's links are not cut: $(ip -n "$nsa" -br link)"

fence "$TB_RUN/pw0.conf" status
[ "$rc" = 0 ] && [ "$(field power "$out")" = on ] && pass "status: on ($(field ms "$out" 2) ms)" ||
	fail "status before off: rc=$rc: $out"

fence "$TB_RUN/pw0.conf" off
start=$(field start_us "$out")
off_start=$(awk '$1 == "off_start" { print $2 }' "$TB_RUN/bmc/a/events" | tail -n1)
off_done=$(awk '$1 == "off_done" { print $2 }' "$TB_RUN/bmc/a/events" | tail -n1)
if [ "$rc" = 0 ] && [ "$(field level "$out" 1)" = 1 ] && grep -q 'action=status agent=[^ ]* ok=1' <<<"$out"; then
	pass "off: level 1, verified by status ($(grep '^result' <<<"$out"))"
else
	fail "off: rc=$rc: $out"
fi
if [ -n "$off_done" ] && [ -n "$start" ]; then
	dead_ms=$(( (off_done - start) / 1000 ))
	[ "$dead_ms" -lt 500 ] && pass "host a dead ${dead_ms} ms after the agent started (the BMC was asked at $(( (off_start - start) / 1000 )) ms, the power-off itself took $(( (off_done - off_start) / 1000 )) ms)" ||
		fail "host a dead only ${dead_ms} ms after the agent started (want < 500)"
else
	fail "BMC recorded no power-off: $(cat "$TB_RUN/bmc/a/events")"
	dead_ms=-1
fi
left=$(cat "$(tb_cgroup a)/cgroup.procs")
alive=
for p in "${pids[@]}"; do tb_pid_alive "$p" && alive+=" $p"; done
[ -z "$left" ] && [ -z "$alive" ] && pass "no process of a left" || fail "left in a: $left $alive"
off_pw0_ms=$(field ms "$(grep '^result' <<<"$out")")

fence "$TB_RUN/pw0.conf" status
[ "$rc" = 2 ] && [ "$(field power "$out")" = off ] && pass "status: off" || fail "status after off: rc=$rc: $out"

tb_uplink_up a && tb_link_up a b || fail "cannot restore a's links"
fence "$TB_RUN/pw0.conf" on
on_pw0_ms=$(field ms "$(grep '^result' <<<"$out")")
[ "$rc" = 0 ] && pass "on: ok (${on_pw0_ms} ms)" || fail "on: rc=$rc: $out"
if tb_holder a >/dev/null && tb_wait_for 5 test -s "$(tb_path a /run/booted)"; then
	pass "a is back: holder $(tb_holder a), boot script ran ($(cat "$(tb_path a /run/booted)"))"
else
	fail "a not back after on: $(cat "$TB_RUN/hosts/a/boot.log" 2>/dev/null)"
fi

# --------------------------------------- 2. level 1 does not answer: level 2
fence "$TB_RUN/fallback.conf" off
a1=$(grep '^attempt' <<<"$out" | head -n1)
if [ "$rc" = 0 ] && [ "$(field level "$(grep '^result' <<<"$out")")" = 2 ] && grep -q 'ok=0' <<<"$a1" &&
   [ "$(field ms "$a1")" -le 3500 ]; then
	pass "fallback: level 1 failed in $(field ms "$a1") ms ($(grep -o 'end="[^"]*"' <<<"$a1")), level 2 fenced"
else
	fail "fallback: rc=$rc: $out"
fi

# ---------------------------------------------------- 3. a wrong password
fence "$TB_RUN/badpw.conf" status
a1=$(grep '^attempt' <<<"$out" | head -n1)
if [ "$rc" = 1 ] && grep -q 'end="exit' <<<"$a1"; then
	o=$(grep -o 'output="[^"]*"' <<<"$a1")
	pass "wrong password: fails cleanly in $(field ms "$a1") ms (...${o: -80})"
else
	fail "wrong password: rc=$rc: $out"
fi

# ------------------------------------- 4. power_wait: default 2 s vs 0
fence "$TB_RUN/pwdef.conf" on
on_def_ms=$(field ms "$(grep '^result' <<<"$out")")
[ "$rc" = 0 ] || fail "on (default power_wait): $out"
fence "$TB_RUN/pwdef.conf" off
off_def_ms=$(field ms "$(grep '^result' <<<"$out")")
[ "$rc" = 0 ] || fail "off (default power_wait): $out"
pass "fence_ipmilan through fence.c: off+status ${off_pw0_ms} ms with power_wait=0, ${off_def_ms} ms by default; on ${on_pw0_ms} ms vs ${on_def_ms} ms"

total_ms=$(( (${EPOCHREALTIME/./} - t_start) / 1000 ))
echo "{\"test\":\"$me\",\"dead_after_agent_start_ms\":$dead_ms,\"off_power_wait0_ms\":${off_pw0_ms:-0},\"off_default_ms\":${off_def_ms:-0},\"on_power_wait0_ms\":${on_pw0_ms:-0},\"on_default_ms\":${on_def_ms:-0},\"total_ms\":$total_ms}"
if [ "$failed" = 0 ]; then echo "$me: passed"; exit 0; fi
echo "$me: $failed failed; fence log:"; cat "$TB_RUN/logs/fence.log"
exit 1
