#!/bin/bash
# A damaged replication stream never damages the replica.
#   damaged-epoch.sh corrupt    one byte of an epoch's pages flipped in flight
#   damaged-epoch.sh truncate   the primary's stream ends in the middle of an
#                               epoch (a primary that vanishes mid-epoch)
#   damaged-epoch.sh baddelta   a device-state delta (XOR_LZ4 chunk) that
#                               does not decode to its length, checksum
#                               intact: only the delta decoder can refuse it
# The replication link runs through test/tools/wire_proxy.py on host a.
# Expected: b drops the connection, keeps the last committed epoch (the
# one before the damaged one), its replica file does not change, and it
# still activates into the same running guest.
set -u
mode=${1:-corrupt}
name=damaged-epoch-$mode
. "$(dirname "$0")/../lib/havms.sh"
hv_need
HV_PEER_ADDR[a]=127.0.0.1:7790
hv_pair_create "havms.dirty_mib_s=4" || { echo "FAIL: test bed"; exit 1; }
ctl=$TB_RUN/proxy
mkdir -p "$ctl"
tb_spawn a "$TB_RUN/proxy.log" python3 "$hv_top/test/tools/wire_proxy.py" \
        127.0.0.1:7790 "$(tb_addr b 1):7780" "$ctl"

hv_start_protected   # through the proxy on a
boot_id=$HV_BOOT_ID
last=0
for _ in $(seq 20); do last=$(hv_guest next); sleep 0.05; done
sleep 0.5   # let the last answer's state commit

# renamed into place: the proxy must never read a half-written file
echo "$mode" >"$ctl/fault.new" && mv "$ctl/fault.new" "$ctl/fault"
hv_must "b drops the damaged stream" hv_wait_state b web01 backup-orphaned 15
read -r bad_epoch _ <"$ctl/faulted"
committed=$(hv_field b web01 committed_epoch)
hv_check "b kept the epoch before the damaged one ($committed = $bad_epoch - 1)" \
        test "$committed" = $((bad_epoch - 1))
hv_check "the proxy applied the fault as asked" grep -qx "[0-9]* $mode" "$ctl/faulted"
if [ "$mode" = corrupt ] || [ "$mode" = baddelta ]; then
        hv_check "b logged the corrupt record" \
                grep -q "HAVMS-BK-2003.*corrupt record" "$TB_RUN/b-checkpointd.log"
fi
hv_check "a keeps the VM running, unprotected" hv_wait_state a web01 degraded 10
hv_check "the guest still answers from a" hv_wait_guest 5
replica=$(tb_path b /dev/shm/havms/$HV_VM.ram)
h1=$(sha256sum <"$replica")
sleep 2
h2=$(sha256sum <"$replica")
hv_check "replica unchanged after the damage" test "$h1" = "$h2"
hv_check "b is still at epoch $committed" test "$(hv_field b web01 committed_epoch)" = "$committed"

# The replica is sound: it takes over.
tb_poweroff a
hv_must "activate web01 on b" hvctl b activate web01
hv_must "guest answers from b" hv_wait_guest 20
st=$(hv_guest stat)
hv_check "same boot after activation" test "$(hv_kv "$st" boot_id)" = "$boot_id"
v=$(hv_guest next)
hv_check "counter resumes above $last (got $v)" test "$v" -gt "$last"
hv_summary "$name"
