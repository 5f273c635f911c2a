#!/bin/bash
# Takeover from the replica: boot the test guest on host a, protect it to
# host b, let the counter service and the dirtier run >= 10 s, power host a
# off (every process killed at once, links down), activate on b. The guest
# must go on on b: same boot, uptime continues, the counter resumes above
# the last value the replica committed, the dirtier keeps running.
set -u
. "$(dirname "$0")/../lib/havms.sh"
hv_need
hv_pair_create "havms.dirty_mib_s=4" || { echo "FAIL: test bed"; exit 1; }

hv_start_protected
boot_id=$HV_BOOT_ID
hv_check "b holds a committed replica" hv_wait_state b web01 backup-standby 10

# Clients talk to the guest for >= 10 s while it is protected.
last=0 ok=1
end=$((SECONDS + 10))
while [ $SECONDS -lt $end ]; do
        v=$(hv_guest next) || { ok=0; break; }
        [ "$v" -gt "$last" ] || ok=0
        last=$v
        sleep 0.05
done
hv_check "counter increases while protected (last $last)" test "$ok" = 1
st=$(hv_guest stat)
up_before=$(hv_kv "$st" uptime_ms)
d_before=$(hv_kv "$(hv_guest stat 7001)" bytes)
hvctl a status

# Let a few epochs commit after the last answer: the replica then holds
# it (without output commit, an answer can be ahead of the replica by up
# to one epoch; issue 3 closes that gap).
# (Waited for, not timed: an epoch takes as long as the machine needs.)
e0=$(hv_field b web01 committed_epoch)
epoch_at_least() { [ "$(hv_field b web01 committed_epoch)" -ge "$1" ]; }
hv_check "epochs keep committing on b (3 after $e0)" tb_wait_for 10 epoch_at_least $((e0 + 3))

tb_poweroff a
t0=$(date +%s%N)
hv_must "b notices the primary is gone" hv_wait_state b web01 backup-orphaned 15
echo "primary loss noticed after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
hvctl b status
hv_must "activate web01 on b" hvctl b activate web01
hv_check "b runs web01" hv_wait_state b web01 running 5
hv_must "guest answers from b" hv_wait_guest 20

st=$(hv_guest stat)
hv_check "same boot (boot_id $boot_id)" test "$(hv_kv "$st" boot_id)" = "$boot_id"
up_after=$(hv_kv "$st" uptime_ms)
hv_check "uptime continues ($up_before -> $up_after ms)" test "$up_after" -ge "$up_before"
v=$(hv_guest next)
hv_check "counter resumes above the committed value ($last -> $v)" test "$v" -gt "$last"
[ "$v" = $((last + 1)) ] && echo "counter resumed exactly at $v: no committed increment lost"
d1=$(hv_kv "$(hv_guest stat 7001)" bytes)
sleep 1
d2=$(hv_kv "$(hv_guest stat 7001)" bytes)
hv_check "dirtier kept its progress ($d_before <= $d1)" test "$d1" -ge "$d_before"
hv_check "dirtier keeps running on b ($d1 -> $d2)" test "$d2" -gt "$d1"
hvctl b status
hv_summary checkpoint-takeover
