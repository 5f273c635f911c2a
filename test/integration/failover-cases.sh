#!/bin/bash
# failover-cases CASE: what must NOT cause a takeover, and what must cause
# one without fencing — with havmsd on both hosts, no `activate` typed.
#   link-cut       one of the two corosync links cut at a time: no
#                  takeover. Cutting the replication link stops the
#                  checkpoint stream: the primary holds its output, asks
#                  the standby (a member, over the LAN link) to drop its
#                  replica, then releases and runs unprotected; restored,
#                  protection comes back by itself. Status shows the link.
#   qemu-crash     the primary's QEMU is killed on a live host: the
#                  primary hands the VM over (RELINQUISH), the standby
#                  takes it over without fencing anyone.
#   qemu-crash-restart  the same with local_restarts = 1: the standby drops
#                  its replica, then the VM restarts on its host (a new
#                  boot) and is protected again; no takeover.
#   guest-poweroff the guest shuts itself down: no takeover, the VM ends
#                  stopped on both hosts.
#   fence-fallback the first fence level fails (wrong password), the
#                  second powers the host off; then with every level
#                  failing: no takeover, a loud error, retries.
# Each case but guest-poweroff keeps the consistency client connected and
# judges it (one connection, no gap, e2fsck) at the end.
set -u
. "$(dirname "$0")/../lib/failover.sh"
hv_fo_need
CASE=${1:-}
HV_DISK_MIB=64

events_count() { hv_events "$1" | grep -c "$2"; }
no_takeover_on() { ! hv_events "$1" | grep -q "HAVMS-FO-5012"; }
# JSON of the link LINK from HOST to PEER in havmsd's cluster status: 1 up, 0 down
link_state() {
        hvctl "$1" status --json 2>/dev/null | python3 -c '
import json, sys
c = json.load(sys.stdin)["cluster"]
m = [m for m in c["members"] if m["name"] == sys.argv[1]][0]
l = [l for l in m.get("links", []) if l["id"] == int(sys.argv[2])]
print(1 if l and l[0]["connected"] else 0)' "$2" "$3"
}
link_is() { [ "$(link_state "$1" "$2" "$3")" = "$4" ]; }

case_link_cut() {
        hv_cluster_create "havms.dirty_mib_s=2" || { echo "FAIL: test bed"; exit 1; }
        hv_fo_protected_with_client
        local gen before
        gen=$(hv_field a web01 generation)
        sleep 3
        echo "--- the replication link (corosync link 0) is cut"
        tb_link_down a b 1
        hv_check "b's status shows link 0 to a down" tb_wait_for 10 link_is b a 0 0
        hv_check "a's status shows link 0 to b down" tb_wait_for 10 link_is a b 0 0
        hv_check "a and b stay members of one membership" hv_corosync_wait_members b 2 1
        hv_check "b's standby patrol reports the cut link (PATROL)" \
                tb_wait_for 12 eval 'hvctl b status | grep -q "PATROL: link 0 to a is down"'
        hv_must "a: web01 released after b dropped its replica (degraded)" \
                hv_wait_state a web01 degraded 30
        hv_check "a asked b to drop its replica (HAVMS-FO-5016)" \
                eval 'hv_events a | grep -q HAVMS-FO-5016'
        hv_check "b dropped it (HAVMS-FO-5017)" eval 'hv_events b | grep -q HAVMS-FO-5017'
        hv_check "a released only after b had dropped it" \
                hv_event_before b HAVMS-FO-5017 a HAVMS-FO-5015
        before=$(hv_client_n)
        hv_check "the client is served while the link is down" \
                tb_wait_for 20 hv_client_more_than "$((before + 20))"
        hvctl b status
        echo "--- link restored"
        tb_link_up a b 1
        hv_check "b's status shows link 0 up again" tb_wait_for 10 link_is b a 0 1
        hv_must "a: protected again by itself" hv_wait_state a web01 protected 180
        echo "--- b's LAN port (corosync link 1) is cut"
        tb_uplink_down b
        hv_check "a's status shows link 1 to b down" tb_wait_for 10 link_is a b 1 0
        sleep 4
        hv_check "a stays protected with one link" hv__state_is a web01 protected
        tb_uplink_up b
        hv_check "a's status shows link 1 up again" tb_wait_for 10 link_is a b 1 1
        hv_check "no takeover on b" no_takeover_on b
        hv_check "no takeover on a" no_takeover_on a
        hv_check "generation unchanged ($gen)" test "$(hv_field a web01 generation)" = "$gen"
        hv_check "nobody was fenced" eval '! hv_events a | grep -q HAVMS-FN-6001 &&
                ! hv_events b | grep -q HAVMS-FN-6001'
        hv_fo_client_judge a
}

case_qemu_crash() {
        hv_cluster_create "havms.dirty_mib_s=2" || { echo "FAIL: test bed"; exit 1; }
        hv_fo_protected_with_client
        local pid before seen gen now
        gen=$(hv_field b web01 generation)
        sleep 3
        pid=$(hv_field a web01 qemu_pid)
        before=$(hv_client_n)
        seen=$(hv_client_last)
        echo "--- kill -9 of web01's QEMU (pid $pid) on a; a stays up"
        kill -9 "$pid"
        hv_must "b takes web01 over by itself" hv_wait_state b web01 running 30
        hv_check "a handed it over (HAVMS-FO-5018)" eval 'hv_events a | grep -q HAVMS-FO-5018'
        hv_check "a: last exit is a crash" hv_field_has a web01 last_exit crash
        hv_check "nobody was fenced" eval '! hv_events b | grep -q HAVMS-FN-6001'
        hv_check "a is still a member" hv_corosync_wait_members b 2 1
        hv_check "generation went up" test "$(hv_field b web01 generation)" -gt "$gen"
        hv_must "client gets answers again" tb_wait_for 60 hv_client_more_than "$before"
        now=$(hv_guest get)
        hv_check "resumed counter ${now:-none} >= last value seen ($seen)" test "${now:-0}" -ge "$seen"
        hv_events b | tail -n 6
        hv_fo_client_judge b
}

# local_restarts = 1: a QEMU crash is first handled on its own host — but
# only after the standby dropped its replica (the restart is a new boot
# whose output that replica lacks). No client here: a restart is a reboot.
case_qemu_crash_restart() {
        hv_cluster_create || { echo "FAIL: test bed"; exit 1; }
        local h boot pid
        for h in a b; do
                printf '\n[failover]\nlocal_restarts = 1\n' >>"$(tb_path "$h" /etc/havms/vms/web01.conf)"
        done
        hv_must "ext4 data disk on a" hv_make_disk a
        hv_start_protected
        hv_must "b holds a committed replica" hv_wait_state b web01 backup-standby 30
        boot=$HV_BOOT_ID
        pid=$(hv_field a web01 qemu_pid)
        echo "--- kill -9 of web01's QEMU (pid $pid) on a; one local restart allowed"
        kill -9 "$pid"
        hv_check "b dropped its replica first (HAVMS-FO-5017)" \
                tb_wait_for 30 eval 'hv_events b | grep -q HAVMS-FO-5017'
        hv_check "a restarted web01 (HAVMS-FO-5019)" \
                tb_wait_for 30 eval 'hv_events a | grep -q HAVMS-FO-5019'
        hv_check "the restart came after the discard" hv_event_before b HAVMS-FO-5017 a HAVMS-FO-5019
        hv_check "the guest answers again" hv_wait_guest 120
        hv_check "it is a new boot" eval '[ "$(hv_kv "$(hv_guest stat)" boot_id)" != "$boot" ]'
        hv_check "a protects it again by itself" hv_wait_state a web01 protected 180
        hv_check "b did not take it over" no_takeover_on b
}

case_guest_poweroff() {
        hv_cluster_create || { echo "FAIL: test bed"; exit 1; }
        hv_must "ext4 data disk on a" hv_make_disk a
        hv_start_protected
        hv_must "b holds a committed replica" hv_wait_state b web01 backup-standby 30
        hv_check "the guest accepts the power-off request" test "$(hv_guest poweroff)" = "ok poweroff"
        hv_check "a: web01 stopped" hv_wait_state a web01 defined 60
        hv_check "a: last exit guest-shutdown" hv_field_has a web01 last_exit guest-shutdown
        hv_check "b: replica dropped, web01 stopped" hv_wait_state b web01 defined 30
        sleep 5
        hv_check "b did not take it over" no_takeover_on b
        hv_check "b: web01 still stopped" hv__state_is b web01 defined
        hv_check "a did not hand it over" eval '! hv_events a | grep -q HAVMS-FO-5018'
}

case_fence_fallback() {
        # b fences a: level 1 has a wrong password, level 2 works
        HV_FENCE_LEVELS="level1 = fence_ipmilan ip=@BMC@ username=admin password=wrong lanplus=1 cipher=3 power_wait=0
level2 = fence_ipmilan @ARGS@ power_wait=0"
        hv_cluster_create "havms.dirty_mib_s=2" || { echo "FAIL: test bed"; exit 1; }
        hv_fo_protected_with_client
        local before
        sleep 3
        echo "--- a powers off; b's first fence level fails"
        before=$(hv_client_n)
        tb_poweroff a
        hv_must "b takes web01 over by itself" hv_wait_state b web01 running 60
        hv_check "fenced by level 2" eval 'hv_events b | grep -q "HAVMS-FN-6003.*level 2"'
        hv_check "level 1's failure reported (HAVMS-FN-6002)" \
                eval 'hv_events b | grep -q "HAVMS-FN-6002.*level 1"'
        hv_must "client gets answers again" tb_wait_for 60 hv_client_more_than "$before"
        hv_events b | grep -E "FO-501[23]|FN-600[123]"
        hv_fo_client_judge b

        echo "--- every level fails: a (back, standby) must not take over"
        HV_FENCE_LEVELS="level1 = fence_ipmilan ip=@BMC@ username=admin password=wrong lanplus=1 cipher=3 power_wait=0
level2 = script:/bin/false"
        tb_host_restart a || hv_must "restart a" false
        hv_host_config a b 1 && hv_cluster_config a b && hv_corosync_config a b &&
                hv_corosync_start a && hv_start_havmsd a || hv_must "a rejoins" false
        hv_must "a is a member again" hv_corosync_wait_members b 2 30
        hv_must "start web01 on b" hvctl b start web01
        hv_must "protect web01 from b to a" hvctl b protect web01
        hv_must "b reaches protected" hv_wait_state b web01 protected 180
        tb_poweroff b
        hv_check "a reports the failed fencing (HAVMS-FN-6004)" \
                tb_wait_for 20 eval 'hv_events a | grep -q HAVMS-FN-6004'
        hv_check "a retries the fencing" \
                tb_wait_for 20 eval '[ "$(events_count a HAVMS-FN-6004)" -ge 2 ]'
        hv_check "a did not take web01 over" no_takeover_on a
        hv_check "a: web01 is still a standby's replica" hv_field_has a web01 state "backup-"
        hvctl a status
}

case $CASE in
link-cut) case_link_cut ;;
qemu-crash) case_qemu_crash ;;
qemu-crash-restart) case_qemu_crash_restart ;;
guest-poweroff) case_guest_poweroff ;;
fence-fallback) case_fence_fallback ;;
*) echo "usage: failover-cases.sh link-cut|qemu-crash|qemu-crash-restart|guest-poweroff|fence-fallback"; exit 2 ;;
esac
hv_summary "failover-$CASE"
