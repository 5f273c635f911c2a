#!/bin/bash
# A full disk at the standby: b keeps staged disk writes in memory only up
# to 1 MiB per epoch (disk_buffer_mib = 1) and its journal lives on a 3 MiB
# tmpfs. The guest then writes 16 MiB: an epoch's writes no longer fit,
# b refuses that epoch with a reason (HAVMS-BK-2008, NOSPACE) before it
# touches the replica, then drops the replica (the primary runs on without
# a standby, so activating it would roll the world back); a says why and
# runs on, degraded, never pausing the guest; once the writes are done,
# protection comes back by itself (full re-sync, which needs no journal).
set -u
. "$(dirname "$0")/../lib/havms.sh"
hv_need
HV_DISK_MIB=64

tb_init || { echo "FAIL: test bed"; exit 1; }
tb_on_cleanup '[ "$HV_FAIL" = 0 ] || hv_dump_logs'
tb_lan_create && tb_host_create a 1 && tb_host_create b 2 && tb_link_create a b 1 ||
        { echo "FAIL: test bed"; exit 1; }
# a's epochs last a second and never start early, so one epoch holds
# several MiB of the guest's writes on any machine speed: more than b's
# 1 MiB of memory plus its 3 MiB journal.
hv_host_config a b 1 "havms.dirty_mib_s=1" $'epoch_ms = 1000\nmin_epoch_ms = 0' &&
        hv_host_config b a 1 "havms.dirty_mib_s=1" "disk_buffer_mib = 1" ||
        { echo "FAIL: configs"; exit 1; }
# b's state_dir (the journal's home) on a small filesystem
small=/var/lib/havms-small
mkdir -p "$(tb_path b $small)"
hv_must "3 MiB tmpfs for b's state_dir" tb_exec b mount -t tmpfs -o size=3m tb-small $small
sed -i "/^\[host\]/a state_dir = $small" "$(tb_path b /etc/havms/havms.conf)"
hv_must "daemons start" eval 'hv_start_daemon a && hv_start_daemon b'
hv_must "ext4 data disk on a" hv_make_disk a

hv_start_protected
hv_check "b holds a committed replica" hv_wait_state b web01 backup-standby 10
e0=$(hv_field b web01 committed_epoch)

# 16 MiB of incompressible writes + fdatasync in the guest
reply=$(tb_client "$HV_GUEST/bin/hvq" -a "$HV_GUEST_IP" -t 120 7002 "write 16")
hv_check "the guest's writes complete (reply: $reply)" test "${reply%% *}" = ok
blog=$TB_RUN/b-checkpointd.log alog=$TB_RUN/a-checkpointd.log
hv_check "b refused the epoch it could not stage (HAVMS-BK-2008)" \
        grep -q "HAVMS-BK-2008.*staging the epoch's disk writes: No space left on device" "$blog"
hv_check "b refused the epoch before it touched the replica" \
        grep -q "HAVMS-BK-2008.*the epoch was refused before it touched the replica" "$blog"
hv_check "b dropped the replica (the primary runs on without it)" \
        grep -q "HAVMS-BK-2006\|replica is dropped" "$blog"
hv_check "a logged the standby's reason" grep -q "HAVMS-CK-1008.*No space left on device" "$alog"
# The guest's reply may be released (the primary leaves protection) a
# moment before a logs CK-1003 and b empties its journal: wait for both.
hv_check "a went degraded, the VM running on" tb_wait_for 10 grep -q "HAVMS-CK-1003" "$alog"
journal_small() {
        [ "$(stat -c %s "$(tb_path b $small/web01.disk0.journal)" 2>/dev/null || echo 0)" -lt 1048576 ]
}
hv_check "the journal was emptied" tb_wait_for 10 journal_small
hv_check "guest answers" hv_guest next
hv_check "protection comes back by itself" hv_wait_state a web01 protected 120
e1=$(hv_field b web01 committed_epoch)
hv_check "b commits again ($e0 before, $e1 now)" test "$e1" -gt 0
hv_check "a's disk is back in epoch-log mode" hv_field_has a web01 disks "'mode': 'log'"
hvctl a status
hv_summary standby-disk-full
