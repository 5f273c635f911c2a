#!/bin/bash
# A guest that powers itself off is not a failure; a QEMU that dies is.
#
# 1. web01 protected a -> b; the guest is asked to power off (the counter
#    service's `poweroff`: ACPI power-off from inside the guest). Both
#    hosts end with the VM not running (state defined), b discarded its
#    replica and its hot-standby QEMU, and last_exit says guest-shutdown
#    on a and peer-guest-shutdown on b: nothing for a failover agent to
#    take over.
# 2. web01 protected again; its QEMU on a is killed (SIGKILL): a records a
#    crash, b keeps its replica (backup-orphaned, activatable).
set -u
. "$(dirname "$0")/../lib/havms.sh"
hv_need
hv_pair_create "havms.dirty_mib_s=4" || { echo "FAIL: test bed"; exit 1; }

# no_qemu_on HOST: no QEMU process of web01 runs on HOST
no_qemu_on() {
        local pid
        for pid in $(tb_host_pids "$1"); do
                tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "guest=$HV_VM" && return 1
        done
        return 0
}
qemu_on() { ! no_qemu_on "$1"; }

# 1. guest power-off while protected
hv_start_protected
hv_must "b holds a committed replica" hv_wait_state b web01 backup-standby 10
hv_must "b's hot-standby QEMU runs" tb_wait_for 30 qemu_on b
hv_check "generation shown on both hosts ($(hv_field a web01 generation))" \
        test "$(hv_field a web01 generation)" = "$(hv_field b web01 generation)"
hv_check "the guest accepts the power-off request" test "$(hv_guest poweroff)" = "ok poweroff"
hv_check "a: web01 is defined (not running)" hv_wait_state a web01 defined 15
hv_check "a: last_exit is guest-shutdown" hv_field_has a web01 last_exit '^guest-shutdown$'
hv_check "b: web01 is defined (replica discarded)" hv_wait_state b web01 defined 15
hv_check "b: last_exit is peer-guest-shutdown" hv_field_has b web01 last_exit '^peer-guest-shutdown$'
hv_check "b: the hot-standby QEMU is gone" tb_wait_for 10 no_qemu_on b
hv_check "b: no device state left for a restart to adopt" \
        test ! -e "$(tb_path b /dev/shm/havms/web01.devstate)"
hv_check "a logged the guest power-off (HAVMS-VM-4004)" grep -q "HAVMS-VM-4004" "$TB_RUN/a-checkpointd.log"
hv_check "b logged it as no failure (HAVMS-BK-2010)" grep -q "HAVMS-BK-2010" "$TB_RUN/b-checkpointd.log"
hvctl a status
hvctl b status

# 2. QEMU killed on the primary: a crash, the replica stays activatable
hv_start_protected
hv_must "b holds a committed replica" hv_wait_state b web01 backup-standby 10
pid=$(hv_field a web01 qemu_pid)
t0=$(date +%s%N)
kill -9 "$pid"
hv_check "a: web01 is defined after the kill" hv_wait_state a web01 defined 15
echo "kill -9 of QEMU to state defined (seen by polling): $(( ($(date +%s%N) - t0) / 1000000 )) ms"
hv_check "a: last_exit is crash" hv_field_has a web01 last_exit '^crash$'
hv_check "b keeps its replica (backup-orphaned)" hv_wait_state b web01 backup-orphaned 15
hv_check "b: last_exit is peer-lost" hv_field_has b web01 last_exit '^peer-lost$'
hvctl a status
hvctl b status
hv_summary guest-poweroff
