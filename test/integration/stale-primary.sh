#!/bin/bash
# A primary with an older generation never acts as primary again.
#
# Managed mode. web01 protected a -> b; the replication link is cut: a
# goes isolated (output held). b is activated (a split brain an operator
# or a broken cluster could cause): generation + 1. When the link comes
# back, a's HELLO is refused as STALE; a powers its copy off at once
# (last_exit stale) and b's copy is the VM.
set -u
. "$(dirname "$0")/../lib/havms.sh"
hv_need
HV_HOST_EXTRA="managed = yes"
hv_pair_create "havms.dirty_mib_s=4" "reconnect_ms = 500" || { echo "FAIL: test bed"; exit 1; }

hv_start_protected
hv_must "b holds a committed replica" hv_wait_state b web01 backup-standby 10
gen=$(hv_field a web01 generation)
tb_link_down a b 1
hv_must "a is isolated" hv_wait_state a web01 isolated 15
hv_must "b is orphaned" hv_wait_state b web01 backup-orphaned 15
hv_check "activate refuses an old generation" tb__not hvctl b activate web01 --generation "$gen"
hv_must "activate on b with a newer generation" hvctl b activate web01
hv_check "b's generation is newer ($gen -> $(hv_field b web01 generation))" \
        test "$(hv_field b web01 generation)" -gt "$gen"
tb_link_up a b 1
hv_check "a powers its stale copy off" hv_wait_state a web01 defined 15
hv_check "a: last_exit is stale" hv_field_has a web01 last_exit '^stale$'
hv_check "a logged it (HAVMS-CK-1014)" grep -q "HAVMS-CK-1014" "$TB_RUN/a-checkpointd.log"
hv_check "b refused it (HAVMS-BK-2009)" grep -q "HAVMS-BK-2009" "$TB_RUN/b-checkpointd.log"
hv_check "b still runs web01" hv_wait_state b web01 running 2
hv_check "the guest answers (from b)" hv_wait_guest 20
hvctl a status
hv_summary stale-primary
