#!/bin/bash
# The two halves of a planned switchover done by hand with checkpointd's
# commands, no cluster (havmsd's `switchover` chains them): `handover` on
# the primary (final checkpoint with the VM held, the standby keeps that
# replica, the VM is powered off here, its RAM file kept), `activate` on
# the standby, then `protect` back. ROUNDS times back and forth, under
# load, with the consistency client on one TCP connection throughout.
# After each switch the old primary becomes the standby by a re-seed:
# its RAM file equals the switch point, so only what the guest changed
# since the activation goes again, not the 65536 pages of its RAM.
set -u
. "$(dirname "$0")/../lib/failover.sh"
rounds=${1:-2}
hv_need
HV_DISK_MIB=64
hv_pair_create "havms.dirty_mib_s=4" || { echo "FAIL: test bed"; exit 1; }
hv_fo_protected_with_client

from=a to=b
for round in $(seq 1 "$rounds"); do
        n0=$(hv_client_n)
        gen=$(hv_field "$from" web01 generation)
        out=$(hvctl "$from" handover web01 2>&1)
        hv_check "round $round: handover on $from" test $? = 0
        echo "$out"
        hv_check "round $round: $from powered its copy off (handed-over)" \
                hv_field_has "$from" web01 last_exit '^handed-over$'
        hv_check "round $round: $from is defined" hv_field_has "$from" web01 state '^defined$'
        hv_check "round $round: $to keeps the replica (backup-orphaned, peer-handover)" \
                hv_field_has "$to" web01 last_exit '^peer-handover$'
        hv_must "round $round: activate on $to" hvctl "$to" activate web01
        hv_check "round $round: generation went up" \
                test "$(hv_field "$to" web01 generation)" -gt "$gen"
        hv_must "round $round: protect back to $from" hvctl "$to" protect web01 --peer "$from"
        hv_must "round $round: $to protected" hv_wait_state "$to" web01 protected 180
        same=$(hv_sync_field "$to" web01 pages_same); sent=$(hv_sync_field "$to" web01 pages_sent)
        echo "round $round: re-seed of $from: $sent pages sent, $same the standby had"
        hv_check "round $round: memory re-seeded by hashes" \
                test "$(hv_sync_field "$to" web01 memory)" = re-seed
        hv_check "round $round: under a quarter of RAM (16384 of 65536 pages) went again ($sent)" test "${sent:-65536}" -lt 16384
        dsent=$(hv_sync_field "$to" web01 disk_sent_bytes)
        echo "round $round: disk resync: $(hv_sync_field "$to" web01 disk_blocks) blocks looked at, $dsent bytes sent"
        hv_check "round $round: the disk resync was incremental" \
                test "$(hv_sync_field "$to" web01 disks_incremental)" = 1
        hv_check "round $round: it sent under 4 MiB of the 64 MiB disk ($dsent bytes)" \
                test "${dsent:-67108864}" -lt 4194304
        hv_check "round $round: the client got answers after the switch" \
                tb_wait_for 20 hv_client_more_than $((n0 + 20))
        t=$from; from=$to; to=$t
done
# the disks are bit-identical at a committed point (the VM held)
hv_must "pause web01 on $from" hvctl "$from" pause web01
sum_from=$(sha256sum <"$(tb_path "$from" "$HV_DISK")")
sum_to=$(sha256sum <"$(tb_path "$to" "$HV_DISK")")
hv_check "with the VM held, $from's and $to's disk images are identical" test "$sum_from" = "$sum_to"
hv_must "resume web01 on $from" hvctl "$from" resume web01
hv_fo_client_judge "$from"
hv_summary handover
