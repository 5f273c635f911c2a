# shellcheck shell=bash disable=SC2015
# bmc.sh - simulated BMCs (IPMI over LAN) for the test bed, so that real
# fence agents (fence_ipmilan) can power test-bed hosts off and on.
#
# Source it after testbed.sh:
#
#   . "$(dirname "$0")/../lib/testbed.sh"
#   . "$(dirname "$0")/../lib/bmc.sh"
#   tb_init; tb_lan_create; tb_host_create a 1; tb_host_create b 2
#   tb_bmc_create a              # BMC of a at 10.88.0.101:623, a gets mg0
#   tb_bmc_create b
#   tb_bmc_fence_args a          # "ip=10.88.0.101 username=admin password=..."
#   tb_exec b fence_ipmilan ...  # from b, over the management network
#
# Model:
#   - management network: bridge br-mgmt in the lan namespace (10.88.0.254/24),
#     separate from the LAN (br-lan) and the replication links, like a real
#     out-of-band BMC network: tb_uplink_down / tb_link_down do not touch it.
#     Every host given a BMC also gets a NIC "mg0" on it: 10.88.0.(10+idx)/24
#     (its cable: mh<idx> on br-mgmt). mg0 is not powered off with the host.
#   - each BMC is OpenIPMI's simulator ipmi_sim in its own network namespace
#     $TB_PREFIX-bmc-<host> at 10.88.0.(100+idx), UDP 623, user "admin" and a
#     per-run password, and in its own cgroup $TB_CG_ROOT/bmc-<host>: NOT the
#     host's, so it outlives the host's power-off, as a real BMC does.
#   - ipmi_sim's chassis_control program is this very file, run as
#     "bash bmc.sh --power RUNDIR HOST get power | set power 0|1 | set reset 1".
#     It attaches to the run (tb_attach) and does what the test bed calls a
#     power-off (tb_poweroff: freeze, links down, cgroup.kill, wait until
#     empty) or a power-on (tb_host_restart: fresh holder, links up, then
#     the optional boot script $TB_RUN/hosts/HOST/boot, run inside the host
#     in the background with its output in .../boot.log, so a test can start
#     daemons "at boot"). ipmi_sim answers the IPMI request only after the
#     program returned: when fence_ipmilan's "off" is acknowledged, the
#     host is already dead. Each action is recorded, with the wall-clock
#     time in microseconds, in $TB_RUN/bmc/HOST/events
#     ("off_start T", "off_done T", "on_done T").
#
# Verified pitfalls (docs/testing.md): fence_ipmilan/ipmitool need cipher
# suite 3 (cipher=3 / -C 3), or each call waits 10-14 s for an answer
# ipmi_sim never gives; ipmi_sim is started with nsenter --net, not "ip
# netns exec" (which remounts /sys and would hide the cgroup tree from the
# power program); the power program closes ipmi_sim's descriptors (its UDP
# socket) before it starts anything long-lived.
#
# Cleanup: tb_bmc_create registers tb_bmc_destroy_all with tb_on_cleanup
# (kills the simulators, deletes their namespaces); the namespaces and the
# cgroups carry the run's prefix, so tb_cleanup and tb-clean-leftovers.sh
# remove what a killed run left as well.

TB_MGMT_NET=10.88.0
TB_BMC__SELF=$(readlink -f "${BASH_SOURCE[0]}")

# tb_mgmt_create: the management bridge (idempotent).
tb_mgmt_create() {
	tb__need_init || return 1
	[ -e "/run/netns/$TB_NS_LAN" ] || { tb__err "call tb_lan_create first"; return 1; }
	ip -n "$TB_NS_LAN" link show br-mgmt >/dev/null 2>&1 && return 0
	ip -n "$TB_NS_LAN" link add br-mgmt type bridge forward_delay 0 stp_state 0 &&
	ip -n "$TB_NS_LAN" addr add "$TB_MGMT_NET.254/24" dev br-mgmt &&
	ip -n "$TB_NS_LAN" link set br-mgmt up || { tb__err "management bridge setup failed"; return 1; }
	mkdir -p "$TB_RUN/bmc"
}

# tb_mgmt_attach HOST: HOST's NIC mg0 on the management network
# (10.88.0.(10+idx)/24), idempotent.
tb_mgmt_attach() {
	local host=$1 ns idx
	ns=$(tb_ns "$host") && idx=$(tb_host_idx "$host") || return 1
	tb_mgmt_create || return 1
	ip -n "$ns" link show mg0 >/dev/null 2>&1 && return 0
	ip link add mg0 netns "$ns" type veth peer name "mh$idx" netns "$TB_NS_LAN" &&
	ip -n "$TB_NS_LAN" link set "mh$idx" master br-mgmt &&
	ip -n "$TB_NS_LAN" link set "mh$idx" up &&
	ip -n "$ns" addr add "$TB_MGMT_NET.$((10 + idx))/24" dev mg0 &&
	ip -n "$ns" link set mg0 up || { tb__err "mg0 of host $host failed"; return 1; }
}

# tb_mgmt_addr HOST: HOST's own address on the management network.
tb_mgmt_addr() { local i; i=$(tb_host_idx "$1") && echo "$TB_MGMT_NET.$((10 + i))"; }

# tb_bmc_addr HOST / tb_bmc_user HOST / tb_bmc_password HOST
tb_bmc_addr() { tb__get "$TB_RUN/bmc/$1/addr" || tb__err "host $1 has no BMC"; }
tb_bmc_user() { tb__get "$TB_RUN/bmc/$1/user" || tb__err "host $1 has no BMC"; }
tb_bmc_password() { tb__get "$TB_RUN/bmc/$1/password" || tb__err "host $1 has no BMC"; }
tb_bmc_ns() { echo "$TB_PREFIX-bmc-$1"; }

# tb_bmc_fence_args HOST: fence_ipmilan's key=value arguments for HOST's
# BMC (lanplus, cipher suite 3), for a [fence HOST] levelN line.
tb_bmc_fence_args() {
	local a u p
	a=$(tb_bmc_addr "$1") && u=$(tb_bmc_user "$1") && p=$(tb_bmc_password "$1") || return 1
	echo "ip=$a username=$u password=$p lanplus=1 cipher=3"
}

# tb_bmc_create HOST: HOST's BMC (see the header); prints its address.
tb_bmc_create() {
	tb__need_init || return 1
	local host=$1 idx d ns addr pw cg i
	idx=$(tb_host_idx "$host") || return 1
	command -v ipmi_sim >/dev/null || { tb__err "ipmi_sim not installed (openipmi)"; return 1; }
	tb_mgmt_attach "$host" || return 1
	d=$TB_RUN/bmc/$host
	[ ! -e "$d" ] || { tb__err "host $host already has a BMC"; return 1; }
	mkdir -p "$d/state" || return 1
	ns=$(tb_bmc_ns "$host")
	addr=$TB_MGMT_NET.$((100 + idx))
	pw=pw$RANDOM$RANDOM
	echo "$addr" >"$d/addr"
	echo admin >"$d/user"
	echo "$pw" >"$d/password"
	: >"$d/events"
	ip netns add "$ns" &&
	ip -n "$ns" link set lo up &&
	ip link add eth0 netns "$ns" type veth peer name "mb$idx" netns "$TB_NS_LAN" &&
	ip -n "$TB_NS_LAN" link set "mb$idx" master br-mgmt &&
	ip -n "$TB_NS_LAN" link set "mb$idx" up &&
	ip -n "$ns" addr add "$addr/24" dev eth0 &&
	ip -n "$ns" link set eth0 up || { tb__err "BMC network of host $host failed"; return 1; }
	cat >"$d/lan.conf" <<-EOF
	name "bmc-$host"
	set_working_mc 0x20
	  startlan 1
	    addr $addr 623
	    priv_limit admin
	    allowed_auths_callback none md2 md5 straight
	    allowed_auths_user none md2 md5 straight
	    allowed_auths_operator none md2 md5 straight
	    allowed_auths_admin none md2 md5 straight
	    guid $(printf '%08x' "$idx")0123456789abcdef01234567
	  endlan
	  chassis_control "/bin/bash $TB_BMC__SELF --power $TB_RUN $host"
	  user 2 true "admin" "$pw" admin 10 none md2 md5 straight
	EOF
	printf '%s\n' 'mc_setbmc 0x20' \
		'mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02' \
		'mc_enable 0x20' >"$d/cmds.emu"
	cg=$TB_CG_ROOT/bmc-$host
	mkdir -p "$cg" || return 1
	(
		echo "$BASHPID" >"$cg/cgroup.procs" || exit 125
		exec nsenter --net="/run/netns/$ns" -- \
			ipmi_sim -n -c "$d/lan.conf" -f "$d/cmds.emu" -s "$d/state"
	) </dev/null >>"$d/ipmi_sim.log" 2>&1 &
	echo $! >"$d/pid"
	disown $!
	if [ -z "${TB_BMC__CLEANUP:-}" ]; then
		tb_on_cleanup tb_bmc_destroy_all
		TB_BMC__CLEANUP=1
	fi
	for i in $(seq 50); do
		[ -n "$(ss -N "$ns" -H -lun "sport = :623" 2>/dev/null)" ] && { echo "$addr"; return 0; }
		tb_pid_alive "$(tb__get "$d/pid")" || break
		sleep 0.1
	done
	tb__err "BMC of host $host did not start: $(tail -5 "$d/ipmi_sim.log")"
	return 1
}

# tb_bmc_destroy_all: kill every simulator of the run, delete the BMC
# namespaces and cgroups (registered with tb_on_cleanup).
tb_bmc_destroy_all() {
	local d host cg pid
	for d in "$TB_RUN"/bmc/*/; do
		[ -f "$d/addr" ] || continue
		host=$(basename "$d")
		cg=$TB_CG_ROOT/bmc-$host
		pid=$(tb__get "$d/pid")
		[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
		tb__cg_kill "$cg" 5
		rmdir "$cg" 2>/dev/null
		[ -n "$pid" ] && tb_wait_for 1 tb__not tb__pid_exists_child "$pid" >/dev/null 2>&1
		ip netns del "$(tb_bmc_ns "$host")" 2>/dev/null
	done
	return 0
}

# tb_bmc_events HOST: what the BMC did ("off_start T" ... lines).
tb_bmc_events() { cat "$TB_RUN/bmc/$1/events"; }

# ------------------------------------------ the chassis_control program ----

tb_bmc__event() { echo "$2 $(tb__now_us)" >>"$TB_RUN/bmc/$1/events"; }

tb_bmc__powered() {
	local d=$TB_RUN/hosts/$1 pid
	[ "$(tb__get "$d/power")" = on ] || return 1
	pid=$(tb__get "$d/holder") && tb_pid_alive "$pid"
}

tb_bmc__off() {
	tb_bmc__powered "$1" || return 0
	tb_bmc__event "$1" off_start
	tb_poweroff "$1" || return 1
	tb_bmc__event "$1" off_done
}

tb_bmc__on() {
	local host=$1 d=$TB_RUN/hosts/$1 holder
	tb_bmc__powered "$host" && return 0
	tb_host_restart "$host" || return 1
	tb_bmc__event "$host" on_done
	if [ -f "$d/boot" ]; then
		holder=$(tb__get "$d/holder") || return 1
		(
			echo "$BASHPID" >"$TB_CG_ROOT/$host/cgroup.procs" || exit 125
			exec nsenter -t "$holder" -n -m -u -- bash "$d/boot"
		) </dev/null >>"$d/boot.log" 2>&1 &
		echo $! >>"$d/pids"
	fi
}

# bash bmc.sh --power RUNDIR HOST get NAME... | set NAME VALUE
tb_bmc__power_main() {
	local run=$1 host=$2 op=$3 fd
	shift 3
	# ipmi_sim's descriptors (its UDP socket among them) must not live on
	# in the host's processes; 255 is bash's own script fd.
	for fd in /proc/$$/fd/*; do
		fd=${fd##*/}
		[ "$fd" -gt 2 ] && [ "$fd" != 255 ] && eval "exec $fd>&-" 2>/dev/null
	done
	# shellcheck source=test/lib/testbed.sh
	. "$(dirname "$TB_BMC__SELF")/testbed.sh"
	tb_attach "$run" >&2 || exit 1
	case $op in
	get)
		local name
		for name in "$@"; do
			case $name in
			power) if tb_bmc__powered "$host"; then echo power:1; else echo power:0; fi ;;
			esac
		done ;;
	set)
		case "$1 $2" in
		"power 0") tb_bmc__off "$host" >&2 || exit 1 ;;
		"power 1") tb_bmc__on "$host" >&2 || exit 1 ;;
		"reset 1") { tb_bmc__off "$host" && tb_bmc__on "$host"; } >&2 || exit 1 ;;
		*) : ;; # boot device, identify...: accepted, no effect
		esac ;;
	esac
	exit 0
}

if [ "${1:-}" = --power ] && [ "${BASH_SOURCE[0]}" = "$0" ]; then
	shift
	tb_bmc__power_main "$@"
fi
