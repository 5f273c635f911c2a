#!/bin/bash
# `havmsctl kill VM`: a fence (havmsd's self-fencing, emergencies).
#
# Managed mode. web01 protected a -> b, a client on the counter service.
# `kill` on a answers within a second: QEMU SIGKILLed, a's held output
# dropped, state defined, last_exit fenced, and NO goodbye: b keeps an
# activatable replica (backup-orphaned, peer-lost, not discarded). b is
# activated: the resumed counter is >= the last value the client saw.
# Then `kill` of the unprotected copy on b (no replication thread): defined,
# fenced, within a second; `kill` of a VM that does not run here is ok.
set -u
. "$(dirname "$0")/../lib/havms.sh"
hv_need
HV_HOST_EXTRA="managed = yes"
hv_pair_create "havms.dirty_mib_s=2" "reconnect_ms = 600000" || { echo "FAIL: test bed"; exit 1; }

work=$TB_RUN/kill
hv_protected_client_start "$work"

ms_of() { local t0 t1; t0=$(date +%s%N); "$@" >"$work/out" 2>&1; local rc=$?; t1=$(date +%s%N)
        echo $(((t1 - t0) / 1000000)) >"$work/ms"; cat "$work/out"; return $rc; }
hv_check "kill web01 on a" ms_of hvctl a kill web01
ms=$(cat "$work/ms")
hv_check "the reply came within 1 s ($ms ms)" test "$ms" -le 1000
hv_check "a: defined" hv_wait_state a web01 defined 5
hv_check "a: last_exit fenced" hv_field_has a web01 last_exit '^fenced$'
hv_check "a logged it (HAVMS-VM-4008)" grep -q "HAVMS-VM-4008" "$TB_RUN/a-checkpointd.log"
sleep 1
seen=$(hv_client_last)
hv_must "b keeps an activatable replica" hv_wait_state b web01 backup-orphaned 15
hv_check "b: last_exit peer-lost (no goodbye)" hv_field_has b web01 last_exit '^peer-lost$'
hv_check "b discarded nothing (no HAVMS-BK-2006)" tb__not grep -q "HAVMS-BK-2006" "$TB_RUN/b-checkpointd.log"
hv_must "activate web01 on b" hvctl b activate web01
ask_now() { now=$(hv_guest get); }
tb_wait_for 30 ask_now || now=-1
hv_check "resumed counter $now >= last value the client saw ($seen)" test "$now" -ge "$seen"

hv_check "kill web01 on b (unprotected)" ms_of hvctl b kill web01
ms=$(cat "$work/ms")
hv_check "the reply came within 1 s ($ms ms)" test "$ms" -le 1000
hv_check "b: defined, fenced" hv_field_has b web01 last_exit '^fenced$'
hv_check "b: state defined" hv_wait_state b web01 defined 2
hv_check "kill of a VM not running here is ok" hvctl a kill web01
hv_summary kill-fence
