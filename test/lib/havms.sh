# shellcheck shell=bash
# havms.sh - havms on the test bed (bash library, on top of testbed.sh).
#
#   . test/lib/havms.sh
#   hv_pair_create            # hosts a, b, LAN + client, replication link 1,
#                             # configs, a checkpointd on each host
#   hvctl a start web01       # havmsctl inside host a
#   hv_wait_state b web01 backup-standby 60
#   hv_guest next             # one request to the guest's counter service
#
# The guest is the test guest (test/guest) at 10.77.0.10 on the LAN, with
# its NIC's tap on the current host's br0.

hv_top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
. "$hv_top/test/lib/testbed.sh"

HV_BUILD=${HAVMS_BUILD:-$hv_top/build}
HV_GUEST=${HAVMS_GUEST:-$hv_top/test/guest/out}
HV_VM=web01
HV_GUEST_IP=10.77.0.10
declare -gA HV_PEER_ADDR=()   # per host: override the peer's address (a proxy)
HV_DISK_MIB=${HV_DISK_MIB:-0} # >0: web01 gets an ext4 data disk of this size
HV_DISK=/var/lib/havms/images/$HV_VM.raw
HV_HOST_EXTRA=${HV_HOST_EXTRA:-} # extra lines for [host] of havms.conf (e.g. "managed = yes")
HV_VM_EXTRA=${HV_VM_EXTRA:-}     # extra lines for [vm] of web01.conf (e.g. "accel = tcg")
HV_MEMORY_MIB=${HV_MEMORY_MIB:-256} # web01's memory_mib (guest RAM; a tmpfs file in each
                                 # host's /dev/shm, which is sized like the machine's: 4096 boots here)
HV_PROT_EXTRA=${HV_PROT_EXTRA:-} # extra lines for [protection] of web01.conf (e.g.
                                 # "delta_cache_mib = 1"), after the test's own
declare -gA HV_DAEMON_PID=()     # per host: the pid of its checkpointd (hv_start_daemon)
HV_FAILBACK=${HV_FAILBACK-reprotect = manual} # lines for [failback] of web01.conf: the
                                 # existing tests protect by hand; failback tests set
                                 # e.g. HV_FAILBACK="reprotect = auto" (docs/failback.md)
HV_PASS=0
HV_FAIL=0

hv_need() {
        [ "$(id -u)" = 0 ] || { echo "SKIP: needs root (namespaces, cgroups)"; exit 77; }
        [ -x "$HV_BUILD/checkpointd/checkpointd" ] || { echo "FAIL: no build in $HV_BUILD"; exit 1; }
        [ -f "$HV_GUEST/initrd.img" ] || { echo "FAIL: no test guest in $HV_GUEST (test/guest/build.sh)"; exit 1; }
}

hv_ok() { HV_PASS=$((HV_PASS + 1)); echo "PASS: $*"; }
hv_bad() { HV_FAIL=$((HV_FAIL + 1)); echo "FAIL: $*"; }
hv_check() { # hv_check "what" CMD...: pass if CMD succeeds
        local what=$1; shift
        if "$@"; then hv_ok "$what"; else hv_bad "$what"; return 1; fi
}
hv_must() { # hv_must "what" CMD...: like hv_check, but a failure ends the test
        hv_check "$@" && return 0
        echo "cannot go on after this failure"
        hv_summary "$(basename "$0" .sh)"
        exit 1
}
hv_summary() { # hv_summary NAME: print the closing line, exit with the verdict
        echo "$1: $HV_PASS passed, $HV_FAIL failed"
        [ "$HV_FAIL" = 0 ]
}

# hv_host_config HOST OTHER LINKIDX [EXTRA_VM_CMDLINE] [EXTRA_PROTECTION]
hv_host_config() {
        local host=$1 other=$2 link=$3 extra=${4:-} prot=${5:-}
        local conf vmconf
        conf=$(tb_path "$host" /etc/havms/havms.conf)
        vmconf=$(tb_path "$host" /etc/havms/vms/$HV_VM.conf)
        mkdir -p "$(dirname "$vmconf")" "$(tb_path "$host" "$(dirname "$HV_DISK")")"
        local disk=
        [ "$HV_DISK_MIB" -gt 0 ] && disk="disk = $HV_DISK"
        cat >"$conf" <<EOC
[host]
name = $host
listen = $(tb_addr "$host" "$link"):7780
uffd_preload = $HV_BUILD/checkpointd/libhavms-uffd.so
$HV_HOST_EXTRA

[peer $other]
address = ${HV_PEER_ADDR[$host]:-$(tb_addr "$other" "$link"):7780}
EOC
        cat >"$vmconf" <<EOC
[vm]
name = $HV_VM
memory_mib = $HV_MEMORY_MIB
builtin_devices = minimal
vcpus = 1
kernel = $HV_GUEST/vmlinuz
initrd = $HV_GUEST/initrd.img
cmdline = console=ttyS0 panic=-1 quiet havms.ip=$HV_GUEST_IP/24 havms.hb=1 $extra
nic = mac=52:54:00:77:00:10,bridge=br0
$disk
preferred_host = a
$HV_VM_EXTRA

[protection]
peer = $other
$prot
$HV_PROT_EXTRA

[failback]
$HV_FAILBACK
EOC
}

# hv_make_disk HOST: a fresh ext4 image of HV_DISK_MIB MiB at HV_DISK on
# HOST (the guest mounts it on /data; its counter persists there).
hv_make_disk() {
        local img
        img=$(tb_path "$1" "$HV_DISK") || return 1
        rm -f "$img" && truncate -s "${HV_DISK_MIB}M" "$img" &&
                mkfs.ext4 -q -F -L havms-data "$img" >/dev/null
}

hv_start_daemon() { # hv_start_daemon HOST
        tb_spawn "$1" "$TB_RUN/$1-checkpointd.log" "$HV_BUILD/checkpointd/checkpointd" \
                -c /etc/havms/havms.conf || return 1
        HV_DAEMON_PID[$1]=$TB_LAST_PID # nsenter execs checkpointd: the same pid
        tb_wait_for 10 test -S "$(tb_path "$1" /run/havms/checkpointd.sock)"
}

# hv_pair_create [EXTRA_VM_CMDLINE] [EXTRA_PROTECTION_LINES]
hv_pair_create() {
        tb_init || return 1
        # runs before the test bed is torn down, while logs still exist
        tb_on_cleanup '[ "$HV_FAIL" = 0 ] || hv_dump_logs'
        tb_lan_create || return 1
        tb_host_create a 1 && tb_host_create b 2 || return 1
        tb_link_create a b 1 || return 1
        hv_host_config a b 1 "${1:-}" "${2:-}" && hv_host_config b a 1 "${1:-}" "${2:-}" || return 1
        hv_start_daemon a && hv_start_daemon b
}

hvctl() { local h=$1; shift; tb_exec "$h" "$HV_BUILD/havmsctl/havmsctl" "$@"; }

# hv_field HOST VM KEY: one field of `havmsctl status VM --json`
hv_field() {
        hvctl "$1" status "$2" --json 2>/dev/null |
                python3 -c 'import sys,json; v=json.load(sys.stdin)["vms"][0]; print(v.get(sys.argv[1], ""))' "$3"
}

# hv_sync_field HOST VM KEY: a figure of the last (re-)sync (status "last_sync")
hv_sync_field() {
        hvctl "$1" status "$2" --json 2>/dev/null |
                python3 -c 'import sys,json; v=json.load(sys.stdin)["vms"][0]; print(v.get("last_sync", {}).get(sys.argv[1], ""))' "$3"
}

# hv_field_has HOST VM KEY REGEX: the field matches (grep -E)
hv_field_has() { hv_field "$1" "$2" "$3" | grep -qE "$4"; }

hv__state_is() { [ "$(hv_field "$1" "$2" state)" = "$3" ]; }
hv_wait_state() { # hv_wait_state HOST VM STATE TIMEOUT_S
        tb_wait_for "$4" hv__state_is "$1" "$2" "$3"
}

# hv_guest REQUEST [PORT]: one request to the guest, from the client.
hv_guest() { tb_client "$HV_GUEST/bin/hvq" -a "$HV_GUEST_IP" -t 2 "${2:-7000}" "$1"; }
hv__guest_up() { hv_guest stat >/dev/null 2>&1; }
hv_wait_guest() { tb_wait_for "${1:-90}" hv__guest_up; }

# hv_kv "k1=v1 k2=v2" KEY: value of KEY in a key=value reply
hv_kv() { local kv; for kv in $1; do [ "${kv%%=*}" = "$2" ] && { echo "${kv#*=}"; return 0; }; done; return 1; }

# hv_start_protected: boot web01 on a, wait for its services, protect it
# to b and wait until protected; sets HV_BOOT_ID. Ends the test on failure.
hv_start_protected() {
        hv_must "start web01 on a" hvctl a start web01
        hv_must "guest answers on the LAN" hv_wait_guest 90
        HV_BOOT_ID=$(hv_kv "$(hv_guest stat)" boot_id)
        hv_must "protect web01 to b" hvctl a protect web01
        hv_must "a reaches protected" hv_wait_state a web01 protected 120
}

# ------------------------------------------------ the consistency client --
# hv_client_start DIR: a client in the LAN keeps ONE TCP connection to the
# guest's counter (test/tools/counter_client.py). Its answers go to
# HV_VALUES (DIR/values); a file DIR/pause pauses it; HV_CLIENT is its pid.
hv_client_start() {
        HV_VALUES=$1/values
        tb_client_spawn "$1/client.log" python3 "$hv_top/test/tools/counter_client.py" \
                --addr "$HV_GUEST_IP" --out "$HV_VALUES" --pause-file "$1/pause"
        HV_CLIENT=$TB_LAST_PID
        tb_on_cleanup "kill $HV_CLIENT 2>/dev/null"
        tb_wait_for 10 grep -q CONNECTED "$HV_VALUES"
}
# hv_protected_client_start DIR: web01 protected a -> b with a committed
# replica on b, and the consistency client in DIR answering.
hv_protected_client_start() {
        hv_start_protected
        hv_must "b holds a committed replica" hv_wait_state b web01 backup-standby 10
        mkdir -p "$1"
        hv_must "client connected" hv_client_start "$1"
        hv_must "client gets answers" tb_wait_for 20 hv_client_more_than 20
}
hv_client_n() { grep -c '^[0-9]' "$HV_VALUES"; }                    # answers so far
hv_client_more_than() { [ "$(hv_client_n)" -gt "$1" ]; }
hv_client_last() { grep '^[0-9]' "$HV_VALUES" | tail -n1 | cut -d' ' -f2; } # last value seen

hv_dump_logs() { # on failure: what the daemons and consoles said
        local h
        for h in a b; do
                echo "----- $h checkpointd log"; tail -n 40 "$TB_RUN/$h-checkpointd.log" 2>/dev/null
                tb_holder "$h" >/dev/null 2>&1 || continue # powered off: its tmpfs is gone
                echo "----- $h console"; tail -n 8 "$(tb_path "$h" /var/log/havms/$HV_VM.console)" 2>/dev/null
        done
}
