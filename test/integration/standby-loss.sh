#!/bin/bash
# Losing the standby never stops the VM, and protection comes back by
# itself: the replication link is cut and restored; then the standby host
# dies and is rebooted. Each time the primary runs on unprotected
# ("degraded", and status says why), the guest keeps answering, and once
# the standby is back the primary re-syncs and is protected again. Last,
# the re-synced replica takes over.
set -u
. "$(dirname "$0")/../lib/havms.sh"
hv_need
hv_pair_create "havms.dirty_mib_s=4" || { echo "FAIL: test bed"; exit 1; }

hv_start_protected
boot_id=$HV_BOOT_ID

# counting_for SECONDS: the guest answers with increasing values throughout
counting_for() {
        local end=$((SECONDS + $1)) last=0 v
        while [ $SECONDS -lt "$end" ]; do
                v=$(hv_guest next) || return 1
                [ "$v" -gt "$last" ] || return 1
                last=$v
                sleep 0.1
        done
}

# 1. the replication link is cut
tb_link_down a b 1
hv_check "a goes degraded when the link is cut" hv_wait_state a web01 degraded 15
hv_check "status says why" hv_field_has a web01 last_error "standby b lost|cannot reach standby b"
hv_check "the guest keeps answering, unprotected" counting_for 3
hv_check "b keeps its replica, orphaned" hv_wait_state b web01 backup-orphaned 15
tb_link_up a b 1
hv_check "a is protected again after the link returns" hv_wait_state a web01 protected 120
hv_check "b is standby again" hv_wait_state b web01 backup-standby 10
# b kept its replica's RAM file: only pages that differ went again (the
# guest dirties 4 MiB/s; 256 MiB of RAM is 65536 pages)
same=$(hv_sync_field a web01 pages_same); sent=$(hv_sync_field a web01 pages_sent)
echo "re-seed after the link cut: $sent pages sent, $same pages the standby had"
hv_check "the re-sync was a memory re-seed" test "$(hv_sync_field a web01 memory)" = re-seed
hv_check "it sent under a quarter of RAM ($sent pages)" test "${sent:-65536}" -lt 16384
hv_check "most pages were already there ($same)" test "${same:-0}" -gt 49152

# 2. the standby host dies and reboots (its RAM, replica and config gone)
tb_poweroff b
hv_check "a goes degraded when b dies" hv_wait_state a web01 degraded 15
hv_check "the guest keeps answering while b is down" counting_for 3
tb_host_restart b
hv_host_config b a 1 "havms.dirty_mib_s=4"
hv_must "checkpointd back on b" hv_start_daemon b
hv_check "a is protected again after b's reboot" hv_wait_state a web01 protected 120
hv_check "b is standby again" hv_wait_state b web01 backup-standby 10
hv_check "after a reboot (RAM gone) the memory sync is full" \
        test "$(hv_sync_field a web01 memory)" = full
grep -c "HAVMS-CK-1004" "$TB_RUN/a-checkpointd.log" | { read -r n; echo "re-syncs logged: $n"; }
hv_check "the guest answered throughout" counting_for 2
last=$(hv_guest next)
sleep 0.5

# 3. the re-synced replica is sound
tb_poweroff a
hv_must "b notices" hv_wait_state b web01 backup-orphaned 15
hv_must "activate on b" hvctl b activate web01
hv_must "guest answers from b" hv_wait_guest 20
hv_check "same boot" test "$(hv_kv "$(hv_guest stat)" boot_id)" = "$boot_id"
v=$(hv_guest next)
hv_check "counter resumes above $last (got $v)" test "$v" -gt "$last"
hv_summary standby-loss
