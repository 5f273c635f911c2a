#!/bin/bash
# `discard` on a host that holds no replica of the VM answers "nothing to
# discard" (ok), so a primary can be told "no replica here" (review
# finding 10b: it used to fail with "only a standby's replica can be
# discarded" and havmsd retried forever). No QEMU is started.
set -u
. "$(dirname "$0")/../lib/havms.sh"
hv_need
HV_HOST_EXTRA="managed = yes"
hv_pair_create || { echo "FAIL: test bed"; exit 1; }
command -v socat >/dev/null || { echo "SKIP: needs socat (scripts/setup.sh)"; exit 77; }

ctl_raw() { # ctl_raw HOST JSON: one raw request to checkpointd
        echo "$2" | tb_exec "$1" socat -t 5 - UNIX-CONNECT:/run/havms/checkpointd.sock
}
r=$(ctl_raw b '{"cmd":"discard","vm":"web01"}')
echo "discard on b (defined): $r"
hv_check "discard with no replica here succeeds" grep -q '"ok": *true' <<<"$r"
hv_check "... and says nothing was discarded" grep -q '"discarded": *false' <<<"$r"
r=$(ctl_raw b '{"cmd":"discard","vm":"web01"}')
hv_check "again: still ok (idempotent)" grep -q '"ok": *true' <<<"$r"
hv_check "b: web01 still defined" hv_wait_state b web01 defined 2
hv_check "b: last_exit not set by a no-op discard" hv_field_has b web01 last_exit '^$'
hv_summary discard-no-replica
