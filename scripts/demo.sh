#!/bin/bash
# The havms demo: two hosts on this machine (network namespaces), each
# with havmsd (corosync membership over two links, a simulated BMC for
# fencing), a protected VM, the sudden death of its host, and the
# takeover — by itself: nobody types `activate`. Then the dead host is
# repaired and protection comes back by itself, moving only what changed,
# and a planned switchover moves the VM home. Run as root.
# Everything it creates is removed at the end (HAVMS_DEMO_KEEP=1 keeps
# the logs and prints where).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/setup.sh" build
set +e
TB_KEEP=${HAVMS_DEMO_KEEP:-}
. "$top/test/lib/failover.sh"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

say "Two hosts, a and b: a LAN with a client, a replication link, BMCs on a management network"
HV_DISK_MIB=64 # web01 gets an ext4 data disk; its counter persists there
HV_FAILBACK='reprotect = auto' # havmsd protects web01 towards the other host by itself
hv_cluster_create "havms.dirty_mib_s=4" || { echo "demo: test bed failed"; exit 1; }
hv_boot_script a b "havms.dirty_mib_s=4" # what a power-on of a runs (its init)
hv_make_disk a || { echo "demo: cannot make the data disk"; exit 1; }
echo "host a: 10.77.0.11 (replication 10.99.1.1, BMC $(tb_bmc_addr a))"
echo "host b: 10.77.0.12 (replication 10.99.1.2, BMC $(tb_bmc_addr b))"
echo "each runs corosync (links: replication + LAN) and havmsd, which runs checkpointd;"
echo "each may fence the other with the real fence_ipmilan through the other's BMC."
echo "web01's disk (64 MiB ext4) is served to QEMU by blockrepl; its counter service"
echo "writes every increment to that disk (fdatasync) before it replies"

say "Boot web01 on host a"
run hvctl a start web01 || exit 1
echo "waiting for the guest's services (TCG boot, ~5 s)..."
hv_wait_guest 90 || { echo "demo: the guest did not come up"; exit 1; }
echo "client -> guest counter: $(hv_guest next), $(hv_guest next), $(hv_guest next)"

say "havmsd protects web01 by itself ([failback] reprotect = auto): memory, device state"
echo "and disk writes are checkpointed to b every 40 ms (the guest's network output is held"
echo "until b has committed the epoch that produced it)"
hv_wait_state a web01 protected 120 || { echo "demo: protection did not start"; hvctl a status; exit 1; }
sleep 3
run hvctl b status
run hvctl a stats web01

say "The client keeps using the service for 5 s"
for _ in $(seq 40); do last=$(hv_guest next); sleep 0.1; done
echo "last counter value seen by the client: $last (uptime $(hv_kv "$(hv_guest stat)" uptime_ms) ms)"
sleep 0.3

say "Host a dies: every process killed at once, its links down. Nobody types anything."
t0=$(date +%s%N)
tb_poweroff a
echo "b's havmsd: a leaves the corosync membership -> fence a through its BMC -> activate"
hv_wait_state b web01 running 60 || { echo "demo: no takeover"; hvctl b status; hvctl b events; exit 1; }
hv_wait_guest 20
echo "client -> guest counter: $(hv_guest next) (was $last before the failure)"
echo "the VM ran again on b $(( ($(date +%s%N) - t0) / 1000000 )) ms after a died (measured by this script)"
echo "guest uptime: $(hv_kv "$(hv_guest stat)" uptime_ms) ms: the same boot, it never restarted"
run hvctl b events -n 12
run hvctl b status

say "Host a is repaired: powered on through its BMC, it boots with its disk (RAM lost)"
run tb_exec b ipmitool -I lanplus -C 3 -H "$(tb_bmc_addr a)" -U "$(tb_bmc_user a)" \
        -P "$(tb_bmc_password a)" chassis power on
echo "a's init starts corosync and havmsd; once a is a member, b protects web01 towards it"
echo "by itself. Only what changed is resynced: of the disk, the blocks b wrote since the"
echo "takeover and a's own last, never-acknowledged writes (both hosts' bitmaps share a"
echo "history), and of those only the 4 KiB pieces whose hashes differ."
tb_wait_for 60 test -S "$(tb_path a /run/havms/havmsd.sock)" || { echo "demo: a did not boot"; exit 1; }
hv_wait_state b web01 protected 180 || { echo "demo: no re-protection"; hvctl b status; exit 1; }
hvctl b status web01 --json | python3 -c '
import json, sys
s = json.load(sys.stdin)["vms"][0].get("last_sync", {})
print("resync: disks %s incremental / %s whole, %.1f KiB of the 64 MiB disk sent; memory %s (%d pages sent)"
      % (s.get("disks_incremental"), s.get("disks_full"), s.get("disk_sent_bytes", 0) / 1024,
         s.get("memory"), s.get("pages_sent", 0)))'

say "A planned switchover home to a: a final checkpoint with the VM stopped, no loss"
before=$(hv_guest next)
run hvctl b switchover web01
hv_wait_state a web01 protected 120 || { echo "demo: a not protected after the switchover"; exit 1; }
echo "client -> guest counter: $(hv_guest next) (was $before before the switchover), same boot:"
echo "uptime $(hv_kv "$(hv_guest stat)" uptime_ms) ms"
hvctl a status web01 --json | python3 -c '
import json, sys
s = json.load(sys.stdin)["vms"][0].get("last_sync", {})
print("b became the standby by a re-seed: %d of %d pages sent (its RAM was the switch point)"
      % (s.get("pages_sent", 0), s.get("pages_sent", 0) + s.get("pages_same", 0)))'
run hvctl a status

say "Done: web01 survived the death of its host, and protection came back by itself. Cleaning up."
