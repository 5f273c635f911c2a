#!/bin/sh
# SPDX-License-Identifier: GPL-2.0-or-later
#
# /init of the havms test guest (busybox sh, PID 1).  It must never exit:
# the kernel panics when init dies.
#
# Kernel command line parameters (defaults in brackets):
#   havms.ip=ADDR/LEN      eth0's address [10.77.0.10/24]
#   havms.gw=ADDR          default route via ADDR [none]
#   havms.dirtier=0|1      run the memory dirtier [1]
#   havms.dirty_mib_s=N    dirtier rate in MiB/s, 0 = flat out [4]
#   havms.wss_mib=N        dirtier working set in MiB [64]
#   havms.hb=N             heartbeat line every N s on the console, 0 = off [5]
#   havms.shell=1          run a shell on the console (for -serial stdio) [0]
#
# A first virtio disk (/dev/vda) holding ext4 is mounted on /data, and the
# counter service then persists every increment to /data/counter (write +
# fdatasync before it replies); diskw (port 7002) writes load on request.
#
# Console lines for the host to parse (each starts a line):
#   HAVMS-GUEST-INFO  kernel=... disks=... data=... dirtier=... rate_mib_s=... wss_mib=...
#   HAVMS-GUEST-READY ip=... boot_id=...         services are listening
#   HAVMS-GUEST-HB    uptime_ms=... counter=...  heartbeat
#   HAVMS-GUEST-EXIT  name=... rc=...            a service died
#   HAVMS-GUEST-WARN  ...                        something is missing

export PATH=/bin:/sbin:/usr/bin:/usr/sbin

COUNTER_PORT=7000
DIRTIER_PORT=7001
DISKW_PORT=7002

mount_filesystems() {
	mount -t proc proc /proc
	mount -t sysfs sysfs /sys
	mount -t devtmpfs devtmpfs /dev
	mkdir -p /dev/pts /dev/shm
	mount -t devpts devpts /dev/pts
	mount -t tmpfs tmpfs /dev/shm
	mount -t tmpfs tmpfs /tmp
	mount -t tmpfs tmpfs /run
}

parse_cmdline() {
	IP=10.77.0.10/24 GW='' DIRTIER=1 RATE=4 WSS=64 HB=5 DEBUG_SHELL=0
	for arg in $(cat /proc/cmdline); do
		case $arg in
		havms.ip=*) IP=${arg#*=} ;;
		havms.gw=*) GW=${arg#*=} ;;
		havms.dirtier=*) DIRTIER=${arg#*=} ;;
		havms.dirty_mib_s=*) RATE=${arg#*=} ;;
		havms.wss_mib=*) WSS=${arg#*=} ;;
		havms.hb=*) HB=${arg#*=} ;;
		havms.shell=*) DEBUG_SHELL=${arg#*=} ;;
		esac
	done
}

# build.sh wrote the modules in modules.dep order, dependencies first.
load_modules() {
	local dir m
	dir=/lib/modules/$(uname -r)
	while read -r m; do
		insmod "$dir/$m" || echo "HAVMS-GUEST-WARN insmod $m failed"
	done <"$dir/havms-load.list"
}

setup_network() {
	local i=0
	ip link set lo up
	# virtio_net probes while insmod runs; allow a little slack anyway.
	while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do
		usleep 100000
		i=$((i + 1))
	done
	if [ ! -e /sys/class/net/eth0 ]; then
		echo "HAVMS-GUEST-WARN no eth0"
		IP=none
		return
	fi
	ip addr add "$IP" dev eth0
	ip link set eth0 up
	[ -z "$GW" ] || ip route add default via "$GW"
}

# Run a service in the background; report on the console if it ever ends.
start_service() {
	local name=$1
	shift
	( "$@"; echo "HAVMS-GUEST-EXIT name=$name rc=$?" ) &
}

# Wait until PORT answers REQUEST, at most ~30 s.
wait_service() {
	local port=$1 req=$2 i=0
	while [ $i -lt 600 ]; do
		hvq -t 2 "$port" "$req" >/dev/null 2>&1 && return 0
		usleep 50000
		i=$((i + 1))
	done
	echo "HAVMS-GUEST-WARN service on port $port not answering"
	return 1
}

list_disks() {
	local d list=
	for d in /sys/block/vd*; do
		[ -e "$d" ] && list=$list${list:+,}${d##*/}
	done
	echo "${list:-none}"
}

# Mount the data disk if there is one; prints the counter's store path.
mount_data() {
	local i=0
	# virtio_blk probes while insmod runs; allow half a second of slack
	# (a guest without a disk pays it once, at boot).
	while [ ! -e /dev/vda ] && [ $i -lt 10 ]; do
		usleep 50000
		i=$((i + 1))
	done
	[ -e /dev/vda ] || return 1
	mkdir -p /data
	if ! mount -t ext4 /dev/vda /data; then
		echo "HAVMS-GUEST-WARN cannot mount /dev/vda as ext4"
		return 1
	fi
	echo /data/counter
}

heartbeat() {
	local up c
	while sleep "$HB"; do
		up=$(awk '{ printf "%d", $1 * 1000 }' /proc/uptime)
		c=$(hvq -t 2 $COUNTER_PORT get 2>/dev/null || echo none)
		echo "HAVMS-GUEST-HB uptime_ms=$up counter=$c"
	done
}

mount_filesystems
# Keep the console for our own lines: kernel messages below "error" go to
# dmesg only, so they do not split a READY line.
dmesg -n 4
hostname havms-guest
parse_cmdline
load_modules
setup_network

STORE=$(mount_data) || STORE=
if [ -n "$STORE" ]; then
	start_service counterd counterd -p $COUNTER_PORT -s "$STORE"
	start_service diskw diskw $DISKW_PORT /data/diskw.bin
else
	start_service counterd counterd -p $COUNTER_PORT
fi
[ "$DIRTIER" = 1 ] && start_service dirtier dirtier -r "$RATE" -w "$WSS" -p $DIRTIER_PORT

wait_service $COUNTER_PORT get
[ "$DIRTIER" = 1 ] && wait_service $DIRTIER_PORT stat

echo "HAVMS-GUEST-INFO kernel=$(uname -r) disks=$(list_disks) data=${STORE:-none} dirtier=$DIRTIER rate_mib_s=$RATE wss_mib=$WSS"
echo "HAVMS-GUEST-READY ip=$IP boot_id=$(cat /proc/sys/kernel/random/boot_id)"

[ "$HB" -gt 0 ] 2>/dev/null && heartbeat &

# PID 1 also reaps orphans: ash's wait for the foreground child does that.
while :; do
	if [ "$DEBUG_SHELL" = 1 ]; then
		setsid cttyhack sh
		sleep 1 # a console without input ends the shell at once
	else
		sleep 3600
	fi
done
