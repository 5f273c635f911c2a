#!/bin/bash
# A goodbye the standby cannot confirm never releases held output.
#
# Managed mode. web01 protected a -> b, a client asks the guest's counter
# service back to back on one connection (every reply is output held until
# its epoch commits on b). The replication link is cut and, at once (well
# before ack_timeout_ms makes a isolated), `havmsctl stop web01` runs on a:
# a says goodbye, b never gets it (it stays backup-orphaned with its last
# committed replica, peer-lost). The frames a held at that moment must be
# DROPPED: released, the client would see a counter value b's replica
# lacks. Then host a is powered off and web01 activated on b (--force): the
# counter the resumed guest reports must be >= the last value the client
# saw (as in the consistency test). Review finding 1; the old code
# released them (leave_protection_io after the unconfirmed goodbye).
set -u
. "$(dirname "$0")/../lib/havms.sh"
hv_need
HV_HOST_EXTRA="managed = yes"
hv_pair_create "havms.dirty_mib_s=2" "reconnect_ms = 600000" || { echo "FAIL: test bed"; exit 1; }

work=$TB_RUN/unconfirmed
hv_protected_client_start "$work"

tb_link_down a b 1
t0=$(date +%s%N)
hv_check "stop web01 on a (link to b cut)" hvctl a stop web01
t1=$(date +%s%N)
echo "stop took $(((t1 - t0) / 1000000)) ms"
hv_check "a: web01 defined" hv_wait_state a web01 defined 5
sleep 1 # whatever a released is at the client by now
seen=$(hv_client_last)
echo "last value the client saw: $seen"
hv_check "a logged the unconfirmed goodbye (HAVMS-CK-1003)" \
        grep -q "did not confirm the end of protection" "$TB_RUN/a-checkpointd.log"

tb_poweroff a
hv_must "b still holds an activatable replica" hv_wait_state b web01 backup-orphaned 20
hv_check "b: last_exit peer-lost (no goodbye reached it)" hv_field_has b web01 last_exit '^peer-lost$'
hv_must "activate web01 on b" hvctl b activate web01 --force
ask_now() { now=$(hv_guest get); }
tb_wait_for 30 ask_now || now=-1
hv_check "resumed counter $now >= last value the client saw ($seen)" test "$now" -ge "$seen"
hv_summary unconfirmed-goodbye
