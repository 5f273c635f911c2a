#!/bin/bash
# Bad input gets a clear error and loses nothing:
#  - a malformed host config or VM definition is refused at load with
#    file:line: reason (daemon start, check-config);
#  - an unknown VM name is refused by havmsctl with the name;
#  - a standby without the VM's definition, with a different definition,
#    or without room for the replica refuses the primary with the reason,
#    which `status` on the primary shows; the VM keeps running meanwhile;
#  - once the cause is fixed, protection starts by itself.
set -u
. "$(dirname "$0")/../lib/havms.sh"
hv_need
hv_pair_create "havms.dirtier=0" || { echo "FAIL: test bed"; exit 1; }
ctl() { "$HV_BUILD/havmsctl/havmsctl" "$@"; }

# configuration errors, checked without any daemon
tmp=$TB_RUN/cfg
mkdir -p "$tmp"
printf '[vm]\nname = web02\nmemory_mib = 10\nkernel = /k\n' >"$tmp/web02.conf"
out=$(ctl check-config "$tmp/web02.conf" 2>&1)
hv_check "check-config names file, line and reason" \
        grep -q "web02.conf:3: memory_mib: 10 is out of range \[16, 1048576\]" <<<"$out"
printf '[host]\nname = x\nlisten = 1.2.3.4\n' >"$tmp/havms.conf"
out=$("$HV_BUILD/checkpointd/checkpointd" -c "$tmp/havms.conf" 2>&1)
rc=$?
hv_check "checkpointd refuses a bad config (rc $rc)" test "$rc" != 0
hv_check "... saying where and why" grep -q "havms.conf:3: listen: '1.2.3.4' is not address:port" <<<"$out"

out=$(hvctl a start nosuchvm 2>&1)
hv_check "unknown VM refused by name" grep -q "unknown VM 'nosuchvm'" <<<"$out"
out=$(hvctl a activate web01 2>&1)
hv_check "activate without a replica refused" grep -q "only a backup holding a committed replica" <<<"$out"

hv_must "start web01 on a" hvctl a start web01

# 1. the standby has no definition of the VM
vmconf=$(tb_path b /etc/havms/vms/web01.conf)
mv "$vmconf" "$vmconf.off"
hv_must "protect web01" hvctl a protect web01
hv__err_has() { hv_field_has a web01 last_error "$1"; }
hv_check "primary shows: standby has no definition" tb_wait_for 10 hv__err_has "unknown VM 'web01'"
hv_check "VM still running on a" test "$(hv_field a web01 state)" = connecting

# 2. the standby's definition differs
sed 's/^memory_mib = 256/memory_mib = 512/' "$vmconf.off" >"$vmconf"
hv_check "primary shows: memory differs" tb_wait_for 10 hv__err_has "memory size differs"

# 3. the standby's tmpfs cannot hold the replica (256 MiB). Shrink it
# before the definition is fixed: the other order races the primary's
# retry, which may land in between and succeed.
tb_exec b mount -o remount,size=64m /dev/shm
mv "$vmconf.off" "$vmconf"
hv_check "primary shows: no room on the standby" tb_wait_for 10 hv__err_has "cannot hold the replica"
hv_check "the refusal is logged once, not every retry" \
        test "$(grep -c 'cannot hold the replica' "$TB_RUN/a-checkpointd.log")" = 1

# fixed: protection starts by itself
tb_exec b mount -o remount,size=1g /dev/shm
hv_check "protection starts once the standby has room" hv_wait_state a web01 protected 120
hv_check "b holds the replica" hv_wait_state b web01 backup-standby 10
hv_summary bad-input
