#!/bin/bash
# The standby survives its own restart, and a managed primary holds its
# output while its standby is gone.
#
# web01 protected a -> b, both checkpointds managed ([host] managed =
# yes). b's checkpointd is killed (SIGKILL) and restarted: it finds the
# replica and its persisted device state and is backup-orphaned again at
# the same epoch and generation. Meanwhile a, having lost its standby, is
# isolated: the guest runs but nothing it says reaches the LAN (a request
# gets no answer). Then host a is powered off and web01 activated on b:
# the guest answers with the same boot id, and its counter continues from
# the last value a client saw.
#
# reconnect_ms is long so that a does not reconnect (a HELLO would make b
# drop the replica it is about to adopt and re-sync).
set -u
. "$(dirname "$0")/../lib/havms.sh"
hv_need
HV_HOST_EXTRA="managed = yes"
hv_pair_create "havms.dirty_mib_s=4" "reconnect_ms = 600000" || { echo "FAIL: test bed"; exit 1; }

hv_start_protected
boot_id=$HV_BOOT_ID
hv_must "b holds a committed replica" hv_wait_state b web01 backup-standby 10
hv_check "a runs in managed mode" hv_field_has a web01 mode '^managed$'
last=0
for _ in 1 2 3 4 5; do last=$(hv_guest next); done
hv_check "the guest counts ($last)" test "$last" -ge 5
gen=$(hv_field b web01 generation)
e0=$(hv_field b web01 committed_epoch)
epoch_at_least() { [ "$(hv_field b web01 committed_epoch)" -ge "$1" ]; }
hv_check "epochs commit after the last answer" tb_wait_for 10 epoch_at_least $((e0 + 3))
hv_check "b saves the device state per commit (persist $(hv_field b web01 devstate_persist_ms_max) ms max)" \
        hv_field_has b web01 devstate_persist_ms_max '[0-9]'

# kill b's checkpointd (not the host)
cpid=
for pid in $(tb_host_pids b); do
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = checkpointd ] && cpid=$pid
done
hv_must "found b's checkpointd ($cpid)" test -n "$cpid"
kill -9 "$cpid"
hv_must "a is isolated (standby lost, output held)" hv_wait_state a web01 isolated 15
hv_check "unprotect is refused while isolated" tb__not hvctl a unprotect web01
hv_check "a request gets no answer while isolated" tb__not hv_guest next

hv_must "checkpointd restarts on b" hv_start_daemon b
hv_check "b adopted its replica (backup-orphaned)" hv_wait_state b web01 backup-orphaned 10
hv_check "b logged the adoption (HAVMS-BK-2011)" grep -q "HAVMS-BK-2011" "$TB_RUN/b-checkpointd.log"
hv_check "b kept the generation ($gen)" test "$(hv_field b web01 generation)" = "$gen"
echo "b adopted epoch $(hv_field b web01 committed_epoch)"
hvctl b status

tb_poweroff a
hv_must "activate web01 on b" hvctl b activate web01
hv_check "b runs web01" hv_wait_state b web01 running 5
hv_check "generation moved on ($gen -> $(hv_field b web01 generation))" \
        test "$(hv_field b web01 generation)" -gt "$gen"
hv_must "guest answers from b" hv_wait_guest 20
st=$(hv_guest stat)
hv_check "same boot (boot_id $boot_id)" test "$(hv_kv "$st" boot_id)" = "$boot_id"
v=$(hv_guest next)
hv_check "counter continues after the last value seen ($last -> $v)" test "$v" -gt "$last"
hvctl b status
hv_summary standby-restart
