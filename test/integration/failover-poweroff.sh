#!/bin/bash
# failover-poweroff: the primary host dies; the standby takes over BY
# ITSELF (no `havmsctl activate` anywhere). havmsd on b sees a leave the
# corosync membership, fences it through its BMC with the real
# fence_ipmilan, and activates the replica as a new generation. A client
# keeps ONE TCP connection to the guest's counter (persisted to ext4 on a
# replicated disk) through it all: no reset, no rollback, no value lost;
# the disk image b ends with is clean under e2fsck.
# HAVMS_FAILOVER_JSON=1 prints the figures as JSON on the last line.
set -u
. "$(dirname "$0")/../lib/failover.sh"
hv_fo_need
HV_DISK_MIB=64
hv_cluster_create "havms.dirty_mib_s=2" || { echo "FAIL: test bed"; exit 1; }
work=$(mktemp -d /tmp/havms-failover.XXXXXX)
tb_on_cleanup "rm -rf '$work'"
values=$work/values

hv_must "ext4 data disk on a" hv_make_disk a
hv_must "ext4 data disk on b" hv_make_disk b
hv_must "start web01 on a" hvctl a start web01
hv_must "guest answers on the LAN" hv_wait_guest 90
hv_must "protect web01 to b" hvctl a protect web01
hv_must "a reaches protected" hv_wait_state a web01 protected 180
hv_must "b holds a committed replica" hv_wait_state b web01 backup-standby 30
gen_before=$(hv_field b web01 generation)

tb_client_spawn "$work/client.log" python3 "$hv_top/test/tools/counter_client.py" \
        --addr "$HV_GUEST_IP" --out "$values" --pause-file "$work/pause"
client=$TB_LAST_PID
tb_on_cleanup "kill $client 2>/dev/null"
hv_must "client connected" tb_wait_for 10 grep -q CONNECTED "$values"
hv_check "cluster status shows both members quorate" \
        tb_wait_for 10 eval 'hvctl b status | grep -qi "quorate"'
sleep "$((4 + RANDOM % 3)).$((RANDOM % 10))"

n_values() { grep -c '^[0-9]' "$values"; }
more_values_than() { [ "$(n_values)" -gt "$1" ]; }
kill_ns=$(date +%s%N)
tb_poweroff a
before=$(n_values)
seen=$(grep '^[0-9]' "$values" | tail -n1 | cut -d' ' -f2)
hv_must "b takes web01 over by itself" hv_wait_state b web01 running 60
hv_must "client gets answers again" tb_wait_for 60 more_values_than "$before"
hv_check "connection survived the takeover" tb__not grep -q '^END' "$values"
ask_now() { now=$(hv_guest get); }
tb_wait_for 20 ask_now || now=-1
hv_check "resumed counter $now >= last value seen before the power-off ($seen)" \
        test "$now" -ge "$seen"
gen_after=$(hv_field b web01 generation)
hv_check "generation went up at the takeover ($gen_before -> $gen_after)" \
        test "$gen_after" -gt "$gen_before"
hv_check "a was fenced before the takeover (events)" \
        eval 'hv_events b | grep -q "HAVMS-FO-5009.*fenced"'
hv_check "a's BMC reports power off" tb_bmc_power_is a off
hv_events b | tail -n 20

sleep 3
touch "$work/pause"
sleep 0.5
last_seen=$(grep '^[0-9]' "$values" | tail -n1 | cut -d' ' -f2)
kill -TERM "$client" 2>/dev/null
tb_wait_for 10 grep -q '^END' "$values"
hv_check "no value repeated, skipped or rolled back" tb__not grep -q '^GAP' "$values"
hv_check "client ended cleanly (one connection)" grep -q '^END stop' "$values"
hv_must "stop web01 on b" hvctl b stop web01
img=$work/b.img
cp --sparse=always "$(tb_path b "$HV_DISK")" "$img"
e2fsck -E journal_only -y "$img" >"$work/fsck-journal.log" 2>&1
hv_check "b's image passes e2fsck -fn after journal replay" e2fsck -fn "$img"
on_disk=$(debugfs -R "cat /counter" "$img" 2>/dev/null | tr -dc 0-9 | sed 's/^0*//')
hv_check "counter on b's disk (${on_disk:-none}) >= last value seen ($last_seen)" \
        test "${on_disk:-0}" -ge "$last_seen"

# Figures: client-visible outage (last answer before the power-off to the
# first after it) and the agent's own steps on b.
report=$(python3 - "$values" "$kill_ns" "$TB_RUN/b-havmsd.log" <<'PY'
import json, re, sys
vals = []
for line in open(sys.argv[1]):
    f = line.split()
    if f and f[0].isdigit():
        vals.append((int(f[0]), int(f[1])))
kill = int(sys.argv[2])
before = [t for t, _ in vals if t < kill]
after = [t for t, _ in vals if t > kill]
out = {"outage_ms": round((min(after) - max(before)) / 1e6, 1) if before and after else None}
print(json.dumps(out))
PY
)
echo "$report"
hv_summary failover-poweroff || exit 1
[ "${HAVMS_FAILOVER_JSON:-0}" = 1 ] && echo "$report"
exit 0
