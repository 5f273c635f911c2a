#!/bin/bash
# The havms demo: two hosts on this machine (network namespaces), a
# protected VM, the sudden death of its host, the takeover. Run as root.
# Everything it creates is removed at the end (HAVMS_DEMO_KEEP=1 keeps
# the logs and prints where).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/setup.sh" build
set +e
TB_KEEP=${HAVMS_DEMO_KEEP:-}
. "$top/test/lib/havms.sh"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

say "Two hosts, a and b, on one LAN with a client, and a replication link"
HV_DISK_MIB=64 # web01 gets an ext4 data disk; its counter persists there
hv_pair_create "havms.dirty_mib_s=4" || { echo "demo: test bed failed"; exit 1; }
hv_make_disk a || { echo "demo: cannot make the data disk"; exit 1; }
echo "host a: 10.77.0.11 (replication 10.99.1.1)   host b: 10.77.0.12 (replication 10.99.1.2)"
echo "each runs checkpointd; the VM definition is /etc/havms/vms/web01.conf on both"
echo "web01's disk (64 MiB ext4) is served to QEMU by blockrepl; its counter service"
echo "writes every increment to that disk (fdatasync) before it replies"

say "Boot web01 on host a"
run hvctl a start web01 || exit 1
echo "waiting for the guest's services (TCG boot, ~5 s)..."
hv_wait_guest 90 || { echo "demo: the guest did not come up"; exit 1; }
echo "client -> guest counter: $(hv_guest next), $(hv_guest next), $(hv_guest next)"

say "Protect web01: memory, device state and disk writes checkpointed to b every 40 ms"
echo "(the guest's network output is held until b has committed the epoch that produced it)"
run hvctl a protect web01
hv_wait_state a web01 protected 120 || { echo "demo: protection did not start"; hvctl a status; exit 1; }
sleep 3
run hvctl a status
run hvctl b status
run hvctl a stats web01

say "The client keeps using the service for 5 s"
for _ in $(seq 40); do last=$(hv_guest next); sleep 0.1; done
echo "last counter value seen by the client: $last (uptime $(hv_kv "$(hv_guest stat)" uptime_ms) ms)"
sleep 0.3

say "Host a dies: every process killed at once, its links down"
tb_poweroff a
echo "host b notices the primary is gone (no epoch within ack_timeout_ms)..."
hv_wait_state b web01 backup-orphaned 15
run hvctl b status

say "Take over on b from the last committed checkpoint"
run hvctl b activate web01
hv_wait_guest 20
echo "client -> guest counter: $(hv_guest next) (was $last before the failure)"
echo "guest uptime: $(hv_kv "$(hv_guest stat)" uptime_ms) ms: the same boot, it never restarted"
run hvctl b status

say "Done: web01 survived the death of its host. Cleaning up."
