#!/bin/bash
# checkpointd-restart: a crash of checkpointd never stops a VM (issue 7,
# item 1; docs/checkpoint.md, "Restart of checkpointd").
#
# web01 (ext4 data disk, counter persisted on it before each reply) runs
# protected a -> b; a client in the LAN keeps ONE TCP connection and sends
# "next" back to back. Then:
#   1. a's checkpointd is killed (SIGKILL) and started again. Its QEMU keeps
#      running; the new checkpointd adopts it (QMP, NBD servers, NIC relay,
#      dirty tracker) and protection comes back by itself (full re-sync).
#   2. b's checkpointd is killed and started again: a runs on, protection
#      comes back.
#   3. host a is powered off and web01 activated on b.
# It must hold: the guest never stopped (same QEMU pid, same boot id, its
# uptime went on), the client's connection survives it all (it may stall
# a few seconds), no value repeats, is skipped or rolls back, and the
# counter after the takeover continues from the last value the client saw.
#
# Both checkpointds run managed ([host] managed = yes, as under havmsd)
# unless HAVMS_RESTART_MANAGED=0.
set -u
. "$(dirname "$0")/../lib/havms.sh"
hv_need

[ "${HAVMS_RESTART_MANAGED:-1}" = 1 ] && HV_HOST_EXTRA="managed = yes"
HV_DISK_MIB=64
hv_pair_create "havms.dirty_mib_s=2" || { echo "FAIL: test bed"; exit 1; }
work=$(mktemp -d /tmp/havms-ckrestart.XXXXXX)
tb_on_cleanup "rm -rf '$work'"
values=$work/values

hv_must "ext4 data disk on a" hv_make_disk a
hv_must "start web01 on a" hvctl a start web01
hv_must "guest answers on the LAN" hv_wait_guest 90
hv_must "guest mounted its data disk" tb_wait_for 10 grep -q "data=/data/counter" \
        "$(tb_path a /var/log/havms/$HV_VM.console)"
st0=$(hv_guest stat)
boot_id=$(hv_kv "$st0" boot_id)
qpid=$(hv_field a web01 qemu_pid)
hv_check "QEMU pid known ($qpid)" test -n "$qpid"

hv_must "client connected" hv_client_start "$work"
client=$HV_CLIENT

hv_must "protect web01 to b" hvctl a protect web01
hv_must "a reaches protected" hv_wait_state a web01 protected 180

# mark_log HOST, then new_log_has HOST TEXT: TEXT in what HOST's
# checkpointd logged after the mark
declare -A log_mark=()
mark_log() { log_mark[$1]=$(wc -l <"$TB_RUN/$1-checkpointd.log"); }
new_log_has() { tail -n +"$((${log_mark[$1]} + 1))" "$TB_RUN/$1-checkpointd.log" | grep -q "$2"; }
ckpt_pid() { # ckpt_pid HOST: the host's checkpointd
        local pid
        for pid in $(tb_host_pids "$1"); do
                [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = checkpointd ] && { echo "$pid"; return 0; }
        done
        return 1
}
# stall_ms LABEL: the longest wait between two answers after the mark
# LABEL's wall-clock ns ($2), until now
longest_gap_ms() {
        python3 - "$values" "$1" <<'EOF'
import sys
t0 = int(sys.argv[2]); prev = None; gap = 0
for line in open(sys.argv[1]):
    f = line.split()
    if not f[0].isdigit():
        continue
    t = int(f[0])
    if t < t0:
        prev = t
        continue
    if prev is not None:
        gap = max(gap, t - prev)
    prev = t
print(gap // 1000000)
EOF
}

sleep 3
# ---- 1. the primary's checkpointd dies
cpid=$(ckpt_pid a)
hv_must "found a's checkpointd ($cpid)" test -n "$cpid"
before=$(hv_client_n)
t_kill=$(date +%s%N)
kill -9 "$cpid"
hv_check "QEMU runs on without its checkpointd" tb_wait_for 1 test -d "/proc/$qpid"
sleep 1 # what havmsd waits before starting it again
hv_must "checkpointd restarts on a" hv_start_daemon a
# the control socket appears before the adoption is done: wait for it
hv_check "a adopted web01's QEMU (HAVMS-VM-4006)" \
        tb_wait_for 10 grep -q HAVMS-VM-4006 "$TB_RUN/a-checkpointd.log"
grep HAVMS-VM-4006 "$TB_RUN/a-checkpointd.log" | tail -n1
same_qemu() { [ "$(hv_field a web01 qemu_pid)" = "$qpid" ]; }
hv_check "the same QEMU (pid $qpid) runs web01" tb_wait_for 10 same_qemu
hv_must "the client gets answers again" tb_wait_for 30 hv_client_more_than "$before"
t_back=$(date +%s%N)
hv_check "a is protected again by itself" hv_wait_state a web01 protected 180
t_prot=$(date +%s%N)
gap1=$(longest_gap_ms "$t_kill")
echo "primary restart: longest client stall ${gap1} ms; first answer $(((t_back - t_kill) / 1000000)) ms" \
     "after the kill, protected again after $(((t_prot - t_kill) / 1000000)) ms"
hv_check "client stall after the restart ($gap1 ms) < 20 s" test "$gap1" -lt 20000
hv_check "connection survived the restart" tb__not grep -q '^END' "$values"
st1=$(hv_guest stat)
hv_check "same boot (boot_id $boot_id)" test "$(hv_kv "$st1" boot_id)" = "$boot_id"
hv_check "guest uptime went on ($(hv_kv "$st0" uptime_ms) -> $(hv_kv "$st1" uptime_ms) ms)" \
        test "$(hv_kv "$st1" uptime_ms)" -gt "$(hv_kv "$st0" uptime_ms)"

sleep 3
# ---- 2. the standby's checkpointd dies
cpid=$(ckpt_pid b)
hv_must "found b's checkpointd ($cpid)" test -n "$cpid"
t_kill=$(date +%s%N)
kill -9 "$cpid"
sleep 1
hv_must "checkpointd restarts on b" hv_start_daemon b
hv_check "a is protected again after b's restart" hv_wait_state a web01 protected 180
before=$(hv_client_n)
hv_check "the client gets answers" tb_wait_for 30 hv_client_more_than "$before"
gap2=$(longest_gap_ms "$t_kill")
echo "standby restart: longest client stall ${gap2} ms"
hv_check "client stall after b's restart ($gap2 ms) < 20 s" test "$gap2" -lt 20000
hv_check "connection survived b's restart" tb__not grep -q '^END' "$values"

sleep 3
# ---- 3. takeover after all this
hv_must "b holds a committed replica" hv_wait_state b web01 backup-standby 10
seen=$(hv_client_last)
before=$(hv_client_n)
tb_poweroff a
hv_must "b notices the primary is gone" hv_wait_state b web01 backup-orphaned 20
hv_must "activate web01 on b" hvctl b activate web01
ask_now() { now=$(hv_guest get); }
tb_wait_for 20 ask_now || now=-1
hv_check "resumed counter $now >= last value seen before the power-off ($seen)" \
        test "$now" -ge "$seen"
hv_check "client gets answers from b" tb_wait_for 60 hv_client_more_than "$before"
st2=$(hv_guest stat)
hv_check "same boot after the takeover" test "$(hv_kv "$st2" boot_id)" = "$boot_id"

# ---- 4. an unprotected VM (b runs web01 since the takeover) is adopted
# too; a QEMU that died while checkpointd was down is reported as a crash
bpid=$(hv_field b web01 qemu_pid)
cpid=$(ckpt_pid b)
before=$(hv_client_n)
mark_log b
t_kill=$(date +%s%N)
kill -9 "$cpid"
sleep 1
hv_must "checkpointd restarts on b (unprotected VM)" hv_start_daemon b
hv_check "b adopted web01's QEMU" tb_wait_for 10 new_log_has b HAVMS-VM-4006
same_qemu_b() { [ "$(hv_field b web01 qemu_pid)" = "$bpid" ] && hv__state_is b web01 running; }
hv_check "b runs web01 unprotected in the same QEMU (pid $bpid)" tb_wait_for 10 same_qemu_b
hv_check "the client gets answers" tb_wait_for 30 hv_client_more_than "$before"
echo "unprotected restart: longest client stall $(longest_gap_ms "$t_kill") ms"
hv_check "connection survived" tb__not grep -q '^END' "$values"

kill -TERM "$client" 2>/dev/null
tb_wait_for 10 grep -q '^END' "$values"

cpid=$(ckpt_pid b)
mark_log b
kill -9 "$cpid"
kill -9 "$bpid"
hv_check "QEMU is gone" tb_wait_for 5 tb__not test -d "/proc/$bpid"
hv_must "checkpointd restarts on b (QEMU gone)" hv_start_daemon b
hv_check "b reports web01's QEMU lost (HAVMS-VM-4007)" tb_wait_for 10 new_log_has b HAVMS-VM-4007
hv_check "web01 is defined on b" hv_wait_state b web01 defined 5
hv_check "last_exit is crash (havmsd hands such a VM over)" hv_field_has b web01 last_exit '^crash$'

hv_check "one connection for the whole run ($(grep '^END' "$values"))" grep -q '^END stop' "$values"
gaps=$(grep -c '^GAP' "$values")
hv_check "no value repeated, skipped or rolled back ($gaps gaps)" test "$gaps" = 0
hv_check "$(hv_client_n) requests answered" test "$(hv_client_n)" -gt 100
hv_summary checkpointd-restart
