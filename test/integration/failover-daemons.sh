#!/bin/bash
# failover-daemons: a crash of havms's own daemons never stops the VM and
# never causes a takeover; protection comes back by itself, and the
# standby can still take over afterwards. havmsd supervises checkpointd
# (the project's own supervisor; under systemd havmsd itself would be
# restarted by the unit): here havmsd is killed and started again by the
# test, as its unit would.
#   1. havmsd killed on both hosts: the VM stays protected; a new havmsd
#      adopts the running checkpointd.
#   2. checkpointd killed on the standby: havmsd restarts it, it re-adopts
#      its replica, the primary (output held meanwhile) is protected again.
#   3. checkpointd killed on the primary: havmsd restarts it, it adopts the
#      running QEMU (same boot, the counter goes on), protected again.
#   4. then the primary host dies: the standby takes over by itself.
# A client on ONE connection to the guest's counter (ext4 data disk)
# throughout, judged as in the consistency test.
set -u
. "$(dirname "$0")/../lib/failover.sh"
hv_fo_need
HV_DISK_MIB=64
hv_cluster_create "havms.dirty_mib_s=2" || { echo "FAIL: test bed"; exit 1; }
hv_fo_protected_with_client
boot=$(hv_kv "$(hv_guest stat)" boot_id)

pid_of() { # HOST COMM: the pid of COMM in HOST's cgroup
        local p
        for p in $(tb_host_pids "$1"); do
                [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$2" ] && { echo "$p"; return 0; }
        done
        return 1
}
served() { local n; n=$(hv_client_n); tb_wait_for 30 hv_client_more_than "$((n + 10))"; }
no_takeover() { ! hv_events a | grep -q HAVMS-FO-5012 && ! hv_events b | grep -q HAVMS-FO-5012; }

echo "--- 1. havmsd killed on both hosts"
kill -9 "$(pid_of a havmsd)" "$(pid_of b havmsd)"
sleep 3
hv_check "web01 still protected without havmsd" hv__state_is a web01 protected
hv_check "the client is served" served
hv_must "havmsd again on a" hv_start_havmsd a
hv_must "havmsd again on b" hv_start_havmsd b
hv_check "a's new havmsd adopted checkpointd" \
        tb_wait_for 10 eval 'hv_events a | grep -q "HAVMS-FO-5001.*adopted"'
hv_check "b's cluster view is whole again" \
        tb_wait_for 20 eval 'hvctl b status | grep -q "web01.*owner a\|web01 .*a.*protected"'

echo "--- 2. checkpointd killed on the standby b"
ck=$(pid_of b checkpointd)
kill -9 "$ck"
hv_check "b's havmsd restarts checkpointd" \
        tb_wait_for 10 eval '[ -n "$(pid_of b checkpointd)" ] && [ "$(pid_of b checkpointd)" != "$ck" ]'
hv_check "web01 protected again" hv_wait_state a web01 protected 180
hv_check "the client is served" served

echo "--- 3. checkpointd killed on the primary a"
ck=$(pid_of a checkpointd)
kill -9 "$ck"
hv_check "a's havmsd restarts checkpointd" \
        tb_wait_for 10 eval '[ -n "$(pid_of a checkpointd)" ] && [ "$(pid_of a checkpointd)" != "$ck" ]'
hv_check "web01 protected again after the adoption" hv_wait_state a web01 protected 180
hv_check "same boot of the guest ($boot)" \
        eval '[ "$(hv_kv "$(hv_guest stat)" boot_id)" = "$boot" ]'
hv_check "the client is served" served
hv_check "no takeover so far" no_takeover

echo "--- 4. the primary host dies: the standby still takes over"
sleep 3
seen=$(hv_client_last)
before=$(hv_client_n)
tb_poweroff a
hv_must "b takes web01 over by itself" hv_wait_state b web01 running 60
hv_must "client gets answers again" tb_wait_for 60 hv_client_more_than "$before"
now=$(hv_guest get)
hv_check "resumed counter ${now:-none} >= last value seen ($seen)" test "${now:-0}" -ge "$seen"
hv_check "same boot of the guest" eval '[ "$(hv_kv "$(hv_guest stat)" boot_id)" = "$boot" ]'
hv_fo_client_judge b
hv_summary failover-daemons
