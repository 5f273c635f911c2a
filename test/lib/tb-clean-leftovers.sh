#!/bin/bash
# tb-clean-leftovers.sh - remove leftovers of crashed test-bed runs:
# cgroups <cgroup2>/havms-tb-*, network namespaces havms-tb-*, run dirs
# ${TB_BASE:-/tmp}/havms-tb-*, and the simulated BMCs of test/lib/bmc.sh
# (namespaces havms-tb-<id>-bmc-*, cgroups .../bmc-*, ipmi_sim processes
# of the run even when their namespace is gone).  A run whose owner shell is still alive
# (pid + start time recorded in <run dir>/owner) is left alone unless
# --all is given.
#
# usage: tb-clean-leftovers.sh [-n|--dry-run] [-a|--all]
set -u

dry=
all=
for arg in "$@"; do
	case $arg in
	-n|--dry-run) dry=1 ;;
	-a|--all) all=1 ;;
	-h|--help) sed -n '2,10p' "$0"; exit 0 ;;
	*) echo "usage: $0 [-n|--dry-run] [-a|--all]" >&2; exit 2 ;;
	esac
done
[ "$(id -u)" = 0 ] || { echo "$0: must run as root" >&2; exit 1; }

base=${TB_BASE:-/tmp}
cg2=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)

starttime() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	local -a f
	read -r -a f <<<"$stat"
	echo "${f[19]}"
}

# run_alive ID: the shell that created run ID still exists: its pid is in
# use by a process that started no later than recorded (a reused pid
# belongs to a younger process).  Without an owner file the run counts as
# alive while its run dir is younger than 10 s (tb_init in progress).
run_alive() {
	local pid st now_st d=$base/havms-tb-$1
	[ -n "$all" ] && return 1
	if ! read -r pid st <"$d/owner" 2>/dev/null; then
		[ -d "$d" ] && [ $(( $(date +%s) - $(stat -c %Y "$d") )) -lt 10 ] && return 0
		return 1
	fi
	[[ $pid =~ ^[0-9]+$ ]] && [[ $st =~ ^[0-9]+$ ]] || return 1
	now_st=$(starttime "$pid") || return 1
	[ "$now_st" -le "$st" ]
}

do_() {
	echo "  $*"
	[ -n "$dry" ] || "$@"
}

removed=0 kept=0
declare -A seen=()

# run ids from cgroups, netns and run dirs
ids=()
if [ -n "$cg2" ]; then
	for d in "$cg2"/havms-tb-*; do [ -d "$d" ] && ids+=("${d##*/havms-tb-}"); done
fi
while read -r ns _; do
	[[ $ns == havms-tb-* ]] || continue
	id=${ns#havms-tb-}; id=${id%%-*}
	ids+=("$id")
done < <(ip netns list 2>/dev/null)
for d in "$base"/havms-tb-*; do [ -d "$d" ] && ids+=("${d##*/havms-tb-}"); done

for id in "${ids[@]}"; do
	[ -n "${seen[$id]:-}" ] && continue
	seen[$id]=1
	if run_alive "$id"; then
		echo "run $id: owner alive, kept (use --all to force)"
		kept=$((kept + 1))
		continue
	fi
	echo "run $id: removing"
	cg=$cg2/havms-tb-$id
	if [ -n "$cg2" ] && [ -d "$cg" ]; then
		do_ sh -c "echo 1 > '$cg/cgroup.kill'"
		if [ -z "$dry" ]; then
			for _ in $(seq 50); do
				grep -q '^populated 0' "$cg/cgroup.events" && break
				sleep 0.1
			done
			find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null
			[ -d "$cg" ] && echo "  WARNING: cannot remove $cg" >&2
		fi
	fi
	while read -r ns _; do
		[[ $ns == "havms-tb-$id-"* ]] || continue
		for pid in $(ip netns pids "$ns" 2>/dev/null); do do_ kill -9 "$pid"; done
		do_ ip netns del "$ns"
	done < <(ip netns list 2>/dev/null)
	# simulated BMCs whose namespace name was deleted while ipmi_sim lived on
	# (a process keeps its netns; "ip netns pids" no longer finds it)
	for p in /proc/[0-9]*; do
		[ "$(cat "$p/comm" 2>/dev/null)" = ipmi_sim ] || continue
		tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q -- "$base/havms-tb-$id/bmc/" &&
			do_ kill -9 "${p#/proc/}"
	done
	[ -d "$base/havms-tb-$id" ] && do_ rm -rf -- "${base:?}/havms-tb-$id"
	removed=$((removed + 1))
done
echo "tb-clean-leftovers: $removed run(s) removed, $kept kept${dry:+ (dry run)}"
