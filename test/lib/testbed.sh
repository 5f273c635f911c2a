# shellcheck shell=bash disable=SC2015,SC2120,SC2119,SC2034
# testbed.sh - simulate a small havms cluster on one machine (bash library).
#
# Source this file from an integration test (bash >= 4.4, root):
#
#   . "$(dirname "$0")/../lib/testbed.sh"
#   tb_init                      # run dir, cgroup root, cleanup trap
#   tb_lan_create                # lan bridge + client namespace (10.77.0.100)
#   tb_host_create a 1           # host a: 10.77.0.11 on br0
#   tb_host_create b 2           # host b: 10.77.0.12 on br0
#   tb_link_create a b 1         # replication link: a=10.99.1.1 b=10.99.1.2
#   tb_spawn a "$TB_RUN/a.log" havmsd -f ; pid=$TB_LAST_PID
#   tb_poweroff a                # sudden death of host a
#
# Every name (netns, cgroup, run dir) carries the per-run prefix
# "havms-tb-<id>", so concurrent runs and leftovers of crashed runs never
# collide.  test/lib/tb-clean-leftovers.sh removes leftovers of dead runs.
#
# Model of a host:
#   - network namespace  $TB_PREFIX-<name>: lo, bridge br0 (host address
#     10.77.0.(10+idx)/24, fixed MAC 02:77:00:00:<idx>:00), veth "up0"
#     enslaved to br0 whose peer "vh<idx>" sits on br-lan in the lan
#     namespace (the switch), and one veth "rl<n>" per replication link
#     (its cable runs through the lan namespace, see tb_link_create);
#   - a holder process (sleep infinity) that owns a private mount namespace
#     (fresh tmpfs on /run, /dev/shm, /etc/havms, /var/log/havms: lost at
#     every power-off, like RAM; /var/lib/havms is the host's "disk",
#     $TB_RUN/hosts/<name>/disk bind-mounted, kept across tb_host_restart
#     as a real disk survives a reboot) and a UTS namespace (hostname =
#     host name);
#   - a cgroup v2 leaf  <cgroup2 mount>/havms-tb-<id>/<name>  holding the
#     holder and every process started with tb_exec/tb_spawn.
#
# Traffic: only addresses inside the namespaces created here are used.
#
# Conventions: functions return non-zero and print "testbed: ..." on stderr
# on error; nothing calls exit except the signal/exit traps.  Options of the
# caller (set -e/-u) are respected; the library is -u clean.
#
# Environment knobs:
#   TB_BASE     directory for run dirs (default /tmp)
#   TB_KEEP=1   keep the run dir (logs) after cleanup; it is printed
#   TB_VERBOSE=1  log every step on stderr

[ -n "${TB__LOADED:-}" ] && return 0
TB__LOADED=1

TB_LAN_NET=10.77.0
TB_CLIENT_ADDR=10.77.0.100
TB_LAN_ADDR=10.77.0.254
TB_REPL_NET=10.99
TB_RUN=${TB_RUN:-}
TB_ID=
TB_PREFIX=
TB_CG2=
TB_CG_ROOT=
TB_OWNER_PID=
TB_LAST_PID=
TB_NS_LAN=
TB_NS_CLIENT=
declare -ga TB__CLEANUP_CMDS=()
declare -gA TB__PREV_TRAP=()

# ---------------------------------------------------------------- helpers --

tb__err() { echo "testbed: $*" >&2; return 1; }
tb__log() { [ -z "${TB_VERBOSE:-}" ] || echo "testbed: $*" >&2; return 0; }

tb__need_init() {
	[ -n "$TB_RUN" ] && [ -d "$TB_RUN" ] || tb__err "tb_init has not been called"
}

# Mount point of the cgroup v2 hierarchy (first cgroup2 line of /proc/mounts).
tb_cgroup2_mount() {
	local _dev mnt type rest
	while read -r _dev mnt type rest; do
		if [ "$type" = cgroup2 ]; then
			printf '%b\n' "$mnt"   # undo \040-style escapes
			return 0
		fi
	done </proc/mounts
	return 1
}

# Start time (clock ticks since boot) of a pid, to tell pid reuse apart.
tb__starttime() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	# fields after "comm)": state is field 3 → index 0; starttime field 22 → index 19
	local -a f
	read -r -a f <<<"$stat"
	echo "${f[19]}"
}

# Current time in microseconds.
tb__now_us() { local t=$EPOCHREALTIME; echo "${t/./}"; }

# "1.5" → 1500000 (seconds → µs), pure bash.
tb__s_to_us() {
	local s=$1 int frac
	int=${s%%.*}; [ -n "$int" ] || int=0
	if [[ $s == *.* ]]; then frac=${s#*.}; else frac=; fi
	frac=${frac}000000; frac=${frac:0:6}
	echo $(( 10#$int * 1000000 + 10#$frac ))
}

# tb_pid_alive PID: the process exists and is not a zombie.
tb_pid_alive() {
	local st
	[ -r "/proc/$1/stat" ] || return 1
	st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	st=${st##*) }
	[ "${st:0:1}" != Z ] && [ "${st:0:1}" != X ]
}

# tb_wait_for TIMEOUT_S CMD...: run CMD every $TB_POLL s (default 0.1) until
# it succeeds (return 0) or TIMEOUT_S (may be fractional) elapsed (return 1).
tb_wait_for() {
	local timeout=$1; shift
	local deadline
	deadline=$(( $(tb__now_us) + $(tb__s_to_us "$timeout") ))
	while :; do
		"$@" && return 0
		[ "$(tb__now_us)" -lt "$deadline" ] || return 1
		sleep "${TB_POLL:-0.1}"
	done
}

# tb_wait_exit PID TIMEOUT_S: wait until PID is gone (or a zombie).
tb_wait_exit() { tb_wait_for "$2" tb__not tb_pid_alive "$1"; }
tb__not() { ! "$@"; }

# (return $?, never a bare return after a test: inside a trap handler, as
# in the EXIT trap that cleans up, a bare return gives the status from
# before the trap, and cleanup then saw "populated" for its whole timeout.)
tb__cg_populated() {
	local k v
	while read -r k v; do
		[ "$k" = populated ] && { [ "$v" = 1 ]; return $?; }
	done <"$1/cgroup.events" 2>/dev/null
	return 1
}
tb__cg_frozen() {
	local k v
	while read -r k v; do
		[ "$k" = frozen ] && { [ "$v" = 1 ]; return $?; }
	done <"$1/cgroup.events" 2>/dev/null
	return 1
}

# Kill everything in a cgroup subtree, wait until empty, thaw it.
tb__cg_kill() {
	local cg=$1 timeout=${2:-5}
	[ -d "$cg" ] || return 0
	echo 1 >"$cg/cgroup.kill" 2>/dev/null || true
	if ! tb_wait_for "$timeout" tb__not tb__cg_populated "$cg"; then
		tb__err "cgroup $cg still populated after ${timeout}s: $(tb__cg_live "$cg")"
		return 1
	fi
	echo 0 >"$cg/cgroup.freeze" 2>/dev/null || true
	return 0
}

# The processes of a cgroup subtree (the root's own list is empty: they
# live in the hosts' cgroups): "pid(comm)" each.
tb__cg_live() {
	local f p
	for f in $(find "$1" -name cgroup.procs 2>/dev/null); do
		while read -r p; do
			echo -n "$p($(cat "/proc/$p/comm" 2>/dev/null)) "
		done <"$f"
	done
}

# Remove a cgroup subtree (children first).  Processes must be gone.
tb__cg_remove() {
	local cg=$1 d
	[ -d "$cg" ] || return 0
	while IFS= read -r d; do
		rmdir "$d" 2>/dev/null || tb__err "cannot rmdir cgroup $d"
	done < <(find "$cg" -depth -type d 2>/dev/null)
	[ ! -d "$cg" ]
}

tb__valid_name() {
	[[ $1 =~ ^[A-Za-z][A-Za-z0-9_]{0,14}$ ]] || { tb__err "bad host name '$1' (letters, digits, _; max 15)"; return 1; }
	case $1 in lan|client) tb__err "host name '$1' is reserved"; return 1 ;; esac
}

tb__hostdir() {
	local d=$TB_RUN/hosts/$1
	[ -n "$1" ] && [ -d "$d" ] || { tb__err "unknown host '$1'"; return 1; }
	echo "$d"
}

# tb__get FILE → value (no fork)
tb__get() { local v; read -r v <"$1" 2>/dev/null || return 1; echo "$v"; }

# ------------------------------------------------------------ init/cleanup --

# tb_init: create run dir, cgroup root, install EXIT/INT/TERM/HUP traps.
tb_init() {
	if [ -n "$TB_RUN" ]; then tb__err "tb_init called twice"; return 1; fi
	[ "$(id -u)" = 0 ] || { tb__err "must run as root"; return 1; }
	local cg2
	cg2=$(tb_cgroup2_mount) || { tb__err "no cgroup2 mount in /proc/mounts"; return 1; }
	[ -w "$cg2/cgroup.procs" ] || { tb__err "cgroup2 at $cg2 not writable"; return 1; }
	TB_CG2=$cg2   # for callers: the cgroup2 mount
	TB_RUN=$(mktemp -d "${TB_BASE:-/tmp}/havms-tb-XXXXXX") || { TB_RUN=; return 1; }
	TB_ID=${TB_RUN##*/havms-tb-}
	TB_PREFIX=havms-tb-$TB_ID
	TB_CG_ROOT=$cg2/$TB_PREFIX
	TB_NS_LAN=$TB_PREFIX-lan
	TB_NS_CLIENT=$TB_PREFIX-client
	TB_OWNER_PID=$BASHPID
	mkdir -p "$TB_RUN/hosts" "$TB_RUN/links" "$TB_RUN/logs"
	# (not "$(tb__starttime "$BASHPID")": $BASHPID inside $(...) is the
	# subshell's pid)
	echo "$TB_OWNER_PID $(tb__starttime "$TB_OWNER_PID")" >"$TB_RUN/owner"
	tb__install_traps
	if ! mkdir "$TB_CG_ROOT"; then
		tb__err "cannot create cgroup $TB_CG_ROOT"
		return 1
	fi
	tb__log "run $TB_ID: dir $TB_RUN, cgroup $TB_CG_ROOT"
	return 0
}

tb__install_traps() {
	local sig prev
	for sig in EXIT INT TERM HUP; do
		prev=$(trap -p "$sig")
		if [ -n "$prev" ]; then
			# "trap -- 'cmd' SIG" → cmd
			eval "set -- $prev"
			TB__PREV_TRAP[$sig]=$3
		fi
	done
	trap 'tb__on_exit' EXIT
	trap 'tb__on_signal INT 130' INT
	trap 'tb__on_signal TERM 143' TERM
	trap 'tb__on_signal HUP 129' HUP
}

tb__on_signal() {
	local prev=${TB__PREV_TRAP[$1]:-}
	echo "testbed: caught SIG$1, cleaning up" >&2
	if [ -n "$prev" ]; then eval "$prev"; fi
	exit "$2"       # runs the EXIT trap → cleanup
}

tb__on_exit() {
	local rc=$?
	set +e
	if [ "$BASHPID" = "${TB_OWNER_PID:-}" ]; then
		tb_cleanup
		local prev=${TB__PREV_TRAP[EXIT]:-}
		if [ -n "$prev" ]; then eval "$prev"; fi
	fi
	exit "$rc"
}

# tb_on_cleanup CMD: register a command (string, eval'ed) run at cleanup,
# before the test bed is torn down (hosts still exist); last in, first out.
tb_on_cleanup() { TB__CLEANUP_CMDS+=("$*"); }

# tb_cleanup: kill all processes of the run (cgroup.kill), remove cgroups,
# namespaces and the run dir.  Idempotent; safe on a half-built test bed.
tb_cleanup() {
	local - ; set +e
	[ -n "$TB_RUN" ] || return 0
	if [ "$BASHPID" != "$TB_OWNER_PID" ]; then
		tb__err "tb_cleanup called from a subshell; ignored"
		return 1
	fi
	local i cmd ns pid d failed=0
	# 1. user cleanup commands, LIFO
	for (( i=${#TB__CLEANUP_CMDS[@]}-1; i>=0; i-- )); do
		cmd=${TB__CLEANUP_CMDS[i]}
		eval "$cmd" || tb__log "cleanup command failed: $cmd"
	done
	TB__CLEANUP_CMDS=()
	# 2. kill every process of the run (the whole cgroup subtree at once)
	tb__cg_kill "$TB_CG_ROOT" 5 || failed=1
	# 3. processes that escaped the cgroups but live in our namespaces
	local -a nss=()
	while read -r ns _; do
		[[ $ns == "$TB_PREFIX"-* ]] && nss+=("$ns")
	done < <(ip netns list 2>/dev/null)
	for ns in "${nss[@]}"; do
		for pid in $(ip netns pids "$ns" 2>/dev/null); do
			kill -9 "$pid" 2>/dev/null
		done
	done
	# 4. let this shell reap its (disowned) children, so that they do not
	#    become orphans of PID 1 (which reaps lazily here)
	for d in "$TB_RUN"/hosts/*/pids "$TB_RUN/logs/client.pids"; do
		[ -f "$d" ] || continue
		while read -r pid; do
			tb_wait_for 1 tb__not tb__pid_exists_child "$pid" >/dev/null 2>&1
		done <"$d"
	done
	# 5. cgroups and namespaces
	tb__cg_remove "$TB_CG_ROOT" || failed=1
	for ns in "${nss[@]}"; do
		ip netns del "$ns" 2>/dev/null || { tb__err "cannot delete netns $ns"; failed=1; }
	done
	# 6. run dir
	if [ -n "${TB_KEEP:-}" ]; then
		echo "testbed: run dir kept: $TB_RUN" >&2
	else
		rm -rf -- "$TB_RUN"
	fi
	TB_RUN=
	return "$failed"
}

# tb_attach RUNDIR: act on the test bed of a running test from another
# process (the simulated BMC's power program, test/lib/bmc.sh): sets the
# run's variables without taking it over: no traps, and tb_cleanup refuses
# to run here (only the shell that called tb_init tears the bed down).
# Start processes with explicit redirections: tb_spawn's subshell warning
# would fire, as this shell is not the owner.
tb_attach() {
	local run=$1 cg2 _st
	[ -d "$run/hosts" ] && [ -f "$run/owner" ] || { tb__err "tb_attach: '$run' is not a test-bed run dir"; return 1; }
	cg2=$(tb_cgroup2_mount) || { tb__err "no cgroup2 mount in /proc/mounts"; return 1; }
	TB_RUN=$run
	TB_ID=${run##*/havms-tb-}
	TB_PREFIX=havms-tb-$TB_ID
	TB_CG2=$cg2
	TB_CG_ROOT=$cg2/$TB_PREFIX
	TB_NS_LAN=$TB_PREFIX-lan
	TB_NS_CLIENT=$TB_PREFIX-client
	read -r TB_OWNER_PID _st <"$run/owner"
}

# A pid that still has a /proc entry and is our child (zombie or not).
tb__pid_exists_child() {
	local st ppid
	st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	st=${st##*) }
	read -r _ ppid _ <<<"$st"
	[ "$ppid" = "$TB_OWNER_PID" ]
}

# ------------------------------------------------------------------ LAN ----

# tb_lan_create: lan netns with bridge br-lan (10.77.0.254/24, for
# debugging) and client netns (eth0 = 10.77.0.100/24, peer vc0 on br-lan).
tb_lan_create() {
	tb__need_init || return 1
	[ ! -e "/run/netns/$TB_NS_LAN" ] || { tb__err "lan already exists"; return 1; }
	local lan=$TB_NS_LAN cl=$TB_NS_CLIENT
	ip netns add "$lan" || return 1
	ip -n "$lan" link set lo up &&
	ip -n "$lan" link add br-lan type bridge forward_delay 0 stp_state 0 &&
	ip -n "$lan" addr add "$TB_LAN_ADDR/24" dev br-lan &&
	ip -n "$lan" link set br-lan up || { tb__err "lan setup failed"; return 1; }
	ip netns add "$cl" || return 1
	ip link add eth0 netns "$cl" type veth peer name vc0 netns "$lan" &&
	ip -n "$lan" link set vc0 master br-lan &&
	ip -n "$lan" link set vc0 up &&
	ip -n "$cl" link set lo up &&
	ip -n "$cl" addr add "$TB_CLIENT_ADDR/24" dev eth0 &&
	ip -n "$cl" link set eth0 up || { tb__err "client setup failed"; return 1; }
	mkdir -p "$TB_CG_ROOT/client" || return 1
	tb__log "lan created ($lan, $cl)"
}

# tb_client CMD...: run CMD in the client namespace (cgroup "client"), wait.
tb_client() {
	tb__need_init || return 125
	[ -e "/run/netns/$TB_NS_CLIENT" ] || { tb__err "no lan/client (tb_lan_create)"; return 125; }
	(
		echo "$BASHPID" >"$TB_CG_ROOT/client/cgroup.procs" || exit 125
		exec ip netns exec "$TB_NS_CLIENT" "$@"
	)
}

# tb_client_spawn LOGFILE CMD...: tb_client in the background; pid in
# TB_LAST_PID (not printed: see tb_spawn).
tb_client_spawn() {
	tb__need_init || return 125
	local log=$1; shift
	tb__warn_subshell tb_client_spawn
	(
		echo "$BASHPID" >"$TB_CG_ROOT/client/cgroup.procs" || exit 125
		exec ip netns exec "$TB_NS_CLIENT" "$@"
	) </dev/null >>"$log" 2>&1 &
	TB_LAST_PID=$!
	disown "$TB_LAST_PID"
	echo "$TB_LAST_PID" >>"$TB_RUN/logs/client.pids"
}

# tb_lan_exec CMD...: run CMD in the lan namespace (debugging: tcpdump...).
tb_lan_exec() {
	tb__need_init || return 125
	(
		echo "$BASHPID" >"$TB_CG_ROOT/client/cgroup.procs" || exit 125
		exec ip netns exec "$TB_NS_LAN" "$@"
	)
}

# ---------------------------------------------------------------- hosts ----

# tb_host_create NAME IDX: a simulated host (see header).  IDX 1..89.
tb_host_create() {
	tb__need_init || return 1
	local name=$1 idx=$2
	tb__valid_name "$name" || return 1
	[[ $idx =~ ^[0-9]+$ ]] && [ "$idx" -ge 1 ] && [ "$idx" -le 89 ] || { tb__err "host index must be 1..89"; return 1; }
	[ -e "/run/netns/$TB_NS_LAN" ] || { tb__err "call tb_lan_create first"; return 1; }
	local d=$TB_RUN/hosts/$name h
	[ ! -e "$d" ] || { tb__err "host $name exists"; return 1; }
	for h in "$TB_RUN"/hosts/*/idx; do
		[ -f "$h" ] || continue
		[ "$(tb__get "$h")" != "$idx" ] || { tb__err "host index $idx already used"; return 1; }
	done
	mkdir -p "$d" "$TB_CG_ROOT/$name" || return 1
	local ns=$TB_PREFIX-$name hx
	hx=$(printf %02x "$idx")
	echo "$idx" >"$d/idx"
	echo "$ns" >"$d/ns"
	echo on >"$d/power"
	: >"$d/pids"
	ip netns add "$ns" || return 1
	ip -n "$ns" link set lo up &&
	ip -n "$ns" link add br0 address "02:77:00:00:$hx:00" type bridge forward_delay 0 stp_state 0 &&
	ip link add up0 netns "$ns" type veth peer name "vh$idx" netns "$TB_NS_LAN" &&
	ip -n "$TB_NS_LAN" link set "vh$idx" master br-lan &&
	ip -n "$TB_NS_LAN" link set "vh$idx" up &&
	ip -n "$ns" link set up0 master br0 &&
	ip -n "$ns" addr add "$TB_LAN_NET.$((10 + idx))/24" dev br0 &&
	ip -n "$ns" link set br0 up &&
	ip -n "$ns" link set up0 up || { tb__err "network setup of host $name failed"; return 1; }
	tb__start_holder "$name" || return 1
	tb__log "host $name created (ns $ns, holder $(tb__get "$d/holder"))"
}

# Start the holder of a host: private mount + UTS namespace inside the
# host's netns, in the host's cgroup.
tb__start_holder() {
	local name=$1 d=$TB_RUN/hosts/$1 ns cg pid
	ns=$(tb__get "$d/ns") || return 1
	cg=$TB_CG_ROOT/$name
	rm -f "$d/ready" "$d/holder"
	mkdir -p "$d/disk" && chmod 0755 "$d/disk"
	# shellcheck disable=SC2016
	local script='set -e
for m in /run /dev/shm /var/lib/havms /etc/havms /var/log/havms; do
	[ -d "$m" ] || mkdir -p "$m"
done
mount -t tmpfs -o mode=0755,nosuid,nodev tb-run /run
mkdir -p /run/lock && chmod 1777 /run/lock
mount -t tmpfs -o mode=1777,nosuid,nodev tb-shm /dev/shm
mount --bind "$3" /var/lib/havms
mount -t tmpfs -o mode=0755 tb-etc /etc/havms
mount -t tmpfs -o mode=0755 tb-log /var/log/havms
echo "$1" >/proc/sys/kernel/hostname
echo $$ >"$2"
exec sleep infinity'
	(
		echo "$BASHPID" >"$cg/cgroup.procs" || exit 125
		exec ip netns exec "$ns" unshare -m -u --propagation private \
			sh -c "$script" holder "$name" "$d/ready" "$d/disk"
	) </dev/null >>"$d/holder.log" 2>&1 &
	pid=$!
	disown "$pid"
	echo "$pid" >>"$d/pids"
	if ! tb_wait_for 5 test -s "$d/ready"; then
		tb__err "holder of host $name did not start: $(cat "$d/holder.log" 2>/dev/null)"
		kill -9 "$pid" 2>/dev/null
		return 1
	fi
	if [ "$(tb__get "$d/ready")" != "$pid" ]; then
		tb__err "holder pid mismatch for $name ($pid vs $(tb__get "$d/ready"))"
		return 1
	fi
	echo "$pid" >"$d/holder"
}

# tb_holder HOST: pid of the host's holder (its namespaces' anchor).
tb_holder() {
	local d pid
	d=$(tb__hostdir "$1") || return 1
	pid=$(tb__get "$d/holder") || { tb__err "host $1 has no holder (powered off? use tb_host_restart)"; return 1; }
	tb_pid_alive "$pid" || { tb__err "holder of host $1 is dead (powered off? use tb_host_restart)"; return 1; }
	echo "$pid"
}

tb_ns() { local d; d=$(tb__hostdir "$1") && tb__get "$d/ns"; }              # tb_ns HOST: netns name (for ip -n)
tb_cgroup() { tb__hostdir "$1" >/dev/null && echo "$TB_CG_ROOT/$1"; }      # tb_cgroup HOST: cgroup dir
tb_host_idx() { local d; d=$(tb__hostdir "$1") && tb__get "$d/idx"; }       # tb_host_idx HOST
tb_mac() { local i; i=$(tb_host_idx "$1") && printf '02:77:00:00:%02x:00\n' "$i"; }  # br0 MAC
# tb_host_pids HOST: pids currently in the host's cgroup.
tb_host_pids() { local cg; cg=$(tb_cgroup "$1") && cat "$cg/cgroup.procs"; }

# tb_path HOST PATH: the host's view of PATH, seen from the root namespace
# (/proc/<holder>/root/PATH), e.g. cat "$(tb_path a /run/havms.pid)".
tb_path() {
	local pid
	pid=$(tb_holder "$1") || return 1
	echo "/proc/$pid/root$2"
}

# tb_put HOST SRC DST: copy a file into the host's mount namespace.
tb_put() {
	local p
	p=$(tb_path "$1" "$3") || return 1
	cp -- "$2" "$p"
}

tb__warn_subshell() {
	if [ "$BASHPID" != "$TB_OWNER_PID" ]; then
		echo "testbed: warning: $1 in a subshell: the process is orphaned when the subshell exits (use TB_LAST_PID instead of \$(...))" >&2
	fi
}

# Working directory for a command in a host: keep $PWD if the host sees it.
tb__wd() {
	if [ -d "/proc/$1/root$PWD" ]; then echo "$PWD"; else echo /; fi
}

# tb_exec HOST CMD...: run CMD inside HOST (its net, mount and UTS
# namespaces), placed in the host's cgroup before exec; waits, returns
# CMD's exit status (125 if it could not be started).
tb_exec() {
	tb__need_init || return 125
	local host=$1; shift
	local pid cg wd
	pid=$(tb_holder "$host") || return 125
	cg=$TB_CG_ROOT/$host
	wd=$(tb__wd "$pid")
	(
		echo "$BASHPID" >"$cg/cgroup.procs" || exit 125
		exec nsenter -t "$pid" -n -m -u --wd="$wd" -- "$@"
	)
}

# tb_spawn HOST LOGFILE CMD...: like tb_exec but in the background, stdin
# from /dev/null, stdout+stderr appended to LOGFILE.  The pid (the pid of
# CMD itself) is stored in TB_LAST_PID and recorded in the host's pid list;
# it is NOT printed: calling tb_spawn inside $(...) would orphan CMD.  The
# job is disowned (no "Killed" noise on power-off); CMD's exit status is
# therefore not available via wait - wrap CMD if you need it.
tb_spawn() {
	tb__need_init || return 125
	local host=$1 log=$2; shift 2
	local pid cg wd d
	d=$(tb__hostdir "$host") || return 125
	pid=$(tb_holder "$host") || return 125
	cg=$TB_CG_ROOT/$host
	wd=$(tb__wd "$pid")
	tb__warn_subshell tb_spawn
	(
		echo "$BASHPID" >"$cg/cgroup.procs" || exit 125
		exec nsenter -t "$pid" -n -m -u --wd="$wd" -- "$@"
	) </dev/null >>"$log" 2>&1 &
	TB_LAST_PID=$!
	disown "$TB_LAST_PID"
	echo "$TB_LAST_PID" >>"$d/pids"
	return 0
}

# ---------------------------------------------------------------- links ----

# tb_link_create A B SUBNET_IDX: replication link rl<SUBNET_IDX> between
# hosts A and B; A gets 10.99.<idx>.1/24, B gets 10.99.<idx>.2/24.
# The "cable" runs through the lan namespace (the wiring closet): A's veth
# rl<idx> <-> w<idx>a, B's rl<idx> <-> w<idx>b, both on bridge w<idx> (not
# connected to br-lan).  So a cut (tb_link_down) downs w<idx>a/w<idx>b and
# both hosts see NO-CARRIER on an admin-up rl<idx> (routes stay, packets
# vanish), as with a real unplugged cable.
tb_link_create() {
	tb__need_init || return 1
	local a=$1 b=$2 idx=$3 nsa nsb lan=$TB_NS_LAN
	[[ $idx =~ ^[0-9]+$ ]] && [ "$idx" -le 255 ] || { tb__err "link index must be 0..255"; return 1; }
	[ "$a" != "$b" ] || { tb__err "link needs two different hosts"; return 1; }
	[ ! -e "$TB_RUN/links/$idx" ] || { tb__err "link $idx exists"; return 1; }
	nsa=$(tb_ns "$a") && nsb=$(tb_ns "$b") || return 1
	ip -n "$lan" link add "w$idx" type bridge forward_delay 0 stp_state 0 &&
	ip -n "$lan" link set "w$idx" up &&
	ip link add "rl$idx" netns "$nsa" type veth peer name "w${idx}a" netns "$lan" &&
	ip link add "rl$idx" netns "$nsb" type veth peer name "w${idx}b" netns "$lan" &&
	ip -n "$lan" link set "w${idx}a" master "w$idx" &&
	ip -n "$lan" link set "w${idx}b" master "w$idx" &&
	ip -n "$nsa" addr add "$TB_REPL_NET.$idx.1/24" dev "rl$idx" &&
	ip -n "$nsb" addr add "$TB_REPL_NET.$idx.2/24" dev "rl$idx" || { tb__err "link $idx setup failed"; return 1; }
	echo "$a $b" >"$TB_RUN/links/$idx"
	tb__apply_links "$a" && tb__apply_links "$b"
}

# tb_addr HOST LINKIDX|lan: HOST's address on replication link LINKIDX (or
# on the LAN).
tb_addr() {
	local host=$1 idx=$2 a b
	if [ "$idx" = lan ]; then
		local i; i=$(tb_host_idx "$host") || return 1
		echo "$TB_LAN_NET.$((10 + i))"; return 0
	fi
	read -r a b <"$TB_RUN/links/$idx" 2>/dev/null || { tb__err "no link $idx"; return 1; }
	if [ "$host" = "$a" ]; then echo "$TB_REPL_NET.$idx.1"
	elif [ "$host" = "$b" ]; then echo "$TB_REPL_NET.$idx.2"
	else tb__err "host $host is not on link $idx"; return 1; fi
}

# tb_links HOST: indexes of the replication links HOST is on.
tb_links() {
	local f a b
	for f in "$TB_RUN"/links/*; do
		[ -f "$f" ] || continue
		read -r a b <"$f"
		if [ "$a" = "$1" ] || [ "$b" = "$1" ]; then echo "${f##*/}"; fi
	done
}

# Recompute the admin state of everything wired to HOST:
#  - its own ends (up0, rl<n>): up iff the host is powered on;
#  - its switch port vh<idx> in the lan ns: up iff the uplink is not cut;
#  - both closet ends of each replication link: up iff the link is not cut
#    and both hosts are powered on (a dead peer NIC = carrier loss).
# Whenever an end comes up, stale neighbour entries (FAILED from probes
# while the link was down) are flushed so that traffic resumes at once.
tb__apply_links() {
	local host=$1 d ns power idx state rc=0 a b pa pb i
	d=$(tb__hostdir "$host") || return 1
	ns=$(tb__get "$d/ns") || return 1
	i=$(tb__get "$d/idx") || return 1
	power=$(tb__get "$d/power")
	state=down; [ "$power" = on ] && state=up
	ip -n "$ns" link set up0 "$state" || rc=1
	for idx in $(tb_links "$host"); do
		ip -n "$ns" link set "rl$idx" "$state" || rc=1
	done
	state=up; [ -e "$d/uplink-cut" ] && state=down
	ip -n "$TB_NS_LAN" link set "vh$i" "$state" || rc=1
	for idx in $(tb_links "$host"); do
		read -r a b <"$TB_RUN/links/$idx"
		pa=$(tb__get "$TB_RUN/hosts/$a/power"); pb=$(tb__get "$TB_RUN/hosts/$b/power")
		state=down
		if [ "$pa" = on ] && [ "$pb" = on ] && [ ! -e "$TB_RUN/links/$idx.cut" ]; then state=up; fi
		ip -n "$TB_NS_LAN" link set "w${idx}a" "$state" || rc=1
		ip -n "$TB_NS_LAN" link set "w${idx}b" "$state" || rc=1
		if [ "$state" = up ]; then
			ip -n "$(tb__get "$TB_RUN/hosts/$a/ns")" neigh flush dev "rl$idx" 2>/dev/null
			ip -n "$(tb__get "$TB_RUN/hosts/$b/ns")" neigh flush dev "rl$idx" 2>/dev/null
		fi
	done
	if [ "$power" = on ] && [ ! -e "$d/uplink-cut" ]; then
		ip -n "$ns" neigh flush dev br0 2>/dev/null
	fi
	return "$rc"
}

# Links between A and B (optionally only IDX).
tb__links_between() {
	local f a b idx
	for f in "$TB_RUN"/links/*; do
		[ -f "$f" ] || continue
		idx=${f##*/}
		[[ $idx =~ ^[0-9]+$ ]] || continue
		[ -z "${3:-}" ] || [ "$3" = "$idx" ] || continue
		read -r a b <"$f"
		if { [ "$a" = "$1" ] && [ "$b" = "$2" ]; } || { [ "$a" = "$2" ] && [ "$b" = "$1" ]; }; then
			echo "$idx"
		fi
	done
}

# tb_link_down A B [IDX]: cut the replication link(s) between A and B (in
# the closet: both hosts see NO-CARRIER).  tb_link_up A B [IDX]: restore.
tb_link_down() { tb__link_set "$1" "$2" "${3:-}" cut; }
tb_link_up() { tb__link_set "$1" "$2" "${3:-}" ok; }
tb__link_set() {
	local a=$1 b=$2 only=$3 what=$4 idx any=
	for idx in $(tb__links_between "$a" "$b" "$only"); do
		any=1
		if [ "$what" = cut ]; then : >"$TB_RUN/links/$idx.cut"; else rm -f "$TB_RUN/links/$idx.cut"; fi
	done
	[ -n "$any" ] || { tb__err "no link between $a and $b${only:+ with index $only}"; return 1; }
	tb__apply_links "$a" && tb__apply_links "$b"
}

# tb_uplink_down HOST / tb_uplink_up HOST: cut/restore HOST's LAN uplink
# (its switch port; the host sees NO-CARRIER on up0).
tb_uplink_down() { local d; d=$(tb__hostdir "$1") || return 1; : >"$d/uplink-cut"; tb__apply_links "$1"; }
tb_uplink_up() { local d; d=$(tb__hostdir "$1") || return 1; rm -f "$d/uplink-cut"; tb__apply_links "$1"; }

# --------------------------------------------------------------- faults ----

# tb_poweroff HOST: sudden death.  Freezes the host's cgroup (nothing can
# react), downs all its link ends (up0 + rl<n> in its netns; the switch
# port and replication peers see carrier loss), then kills every process at once (cgroup.kill) and waits
# until the cgroup is empty.  Sockets closed by the kill cannot send
# FIN/RST: the links are already down.
tb_poweroff() {
	tb__need_init || return 1
	local host=$1 d cg rc=0
	d=$(tb__hostdir "$host") || return 1
	cg=$TB_CG_ROOT/$host
	echo 1 >"$cg/cgroup.freeze" || rc=1
	echo off >"$d/power"
	tb__apply_links "$host" || rc=1
	echo 1 >"$cg/cgroup.kill" || rc=1
	if ! tb_wait_for 5 tb__not tb__cg_populated "$cg"; then
		tb__err "host $host: processes survive cgroup.kill"; rc=1
	fi
	echo 0 >"$cg/cgroup.freeze" || rc=1
	rm -f "$d/holder"
	tb__log "host $host powered off"
	return "$rc"
}

# tb_poweron_links HOST: bring the host's links back up (no processes are
# started; call tb_host_restart to get a running host again).
tb_poweron_links() {
	local d
	d=$(tb__hostdir "$1") || return 1
	echo on >"$d/power"
	tb__apply_links "$1"
}

# tb_host_restart NAME: reboot: kill whatever still runs (as tb_poweroff),
# start a new holder with fresh tmpfs mounts (the host lost its RAM) in the
# same netns, bring links up.  Starting services is the caller's job.
tb_host_restart() {
	local name=$1 d cg
	d=$(tb__hostdir "$name") || return 1
	cg=$TB_CG_ROOT/$name
	if tb__cg_populated "$cg"; then tb_poweroff "$name" || return 1; fi
	echo 0 >"$cg/cgroup.freeze"
	tb__start_holder "$name" || return 1
	echo on >"$d/power"
	tb__apply_links "$name"
}

# tb_freeze HOST / tb_thaw HOST: freeze/thaw all processes of the host
# (cgroup.freeze; a hung host, links stay up); waits until effective.
tb_freeze() {
	local cg; cg=$(tb_cgroup "$1") || return 1
	echo 1 >"$cg/cgroup.freeze" || return 1
	tb_wait_for 5 tb__cg_frozen "$cg" || { tb__err "host $1 did not freeze"; return 1; }
}
tb_thaw() {
	local cg; cg=$(tb_cgroup "$1") || return 1
	echo 0 >"$cg/cgroup.freeze" || return 1
	tb_wait_for 5 tb__not tb__cg_frozen "$cg" || { tb__err "host $1 did not thaw"; return 1; }
}

# ------------------------------------------------------------ probes -------

# tb_tcp_connect HOST|client ADDR PORT [TIMEOUT_S]: connect from HOST (or
# the client) with bash /dev/tcp and print the first line the server sends.
# Returns 0 on success, 124 on timeout (e.g. link down), 1 on refusal etc.
tb_tcp_connect() {
	local from=$1 addr=$2 port=$3 t=${4:-2}
	# shellcheck disable=SC2016
	local -a cmd=(timeout "$t" bash -c 'exec 3<>"/dev/tcp/$1/$2" || exit 1; IFS= read -r -t "$3" line <&3; printf "%s\n" "$line"' tcp "$addr" "$port" "$t")
	if [ "$from" = client ]; then tb_client "${cmd[@]}"; else tb_exec "$from" "${cmd[@]}"; fi
}

# tb_tcp_listen HOST|client ADDR PORT WORD: background socat listener that
# answers every connection with WORD (needs socat); waits until it listens;
# pid in TB_LAST_PID.
tb_tcp_listen() {
	local from=$1 addr=$2 port=$3 text=$4 log ns
	command -v socat >/dev/null || { tb__err "socat not installed"; return 1; }
	[[ $text =~ ^[A-Za-z0-9_.:-]+$ ]] || { tb__err "tb_tcp_listen: WORD must be [A-Za-z0-9_.:-]+"; return 1; }
	log=$TB_RUN/logs/listen-$from-$port.log
	local -a cmd=(socat "TCP-LISTEN:$port,bind=$addr,reuseaddr,fork" "SYSTEM:echo $text")
	if [ "$from" = client ]; then
		ns=$TB_NS_CLIENT
		tb_client_spawn "$log" "${cmd[@]}" || return 1
	else
		ns=$(tb_ns "$from") || return 1
		tb_spawn "$from" "$log" "${cmd[@]}" || return 1
	fi
	tb_wait_for 3 tb__listening "$ns" "$addr" "$port" || { tb__err "listener $from $addr:$port did not start: $(cat "$log")"; return 1; }
}

# tb__listening NETNS ADDR PORT: a TCP socket listens on ADDR:PORT in NETNS.
tb__listening() {
	[ -n "$(ss -N "$1" -H -ltn "src $2:$3" 2>/dev/null)" ]
}
