#!/bin/bash
# Re-adoption after a restart of checkpointd, when something is damaged
# (review finding 5).
#
# Managed mode, web01 on a, no standby needed.
#   1. The run file is damaged while checkpointd is down: the QEMU that
#      still runs is found (by its QMP socket on its command line) and
#      killed BEFORE the VM is reported as a crash; before, it ran on while
#      havmsd was told "crash" (and would restart onto its RAM file).
#   2. The run file says "peer b, output held" but the generation file is
#      corrupt, so protection cannot resume: the VM is adopted ISOLATED with
#      its output still held (a request gets no answer) until `release`;
#      before, its output flowed at once while b could hold a replica.
set -u
. "$(dirname "$0")/../lib/havms.sh"
hv_need
HV_HOST_EXTRA="managed = yes"
hv_pair_create || { echo "FAIL: test bed"; exit 1; }

cpd_pid() { local pid; for pid in $(tb_host_pids a); do
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = checkpointd ] && echo "$pid"; done; }
qemu_pid() { hv_field a web01 qemu_pid; }
run=$(tb_path a /var/lib/havms/web01.run)
gen=$(tb_path a /var/lib/havms/web01.generation)

hv_must "start web01 on a" hvctl a start web01
q=$(qemu_pid)
hv_must "QEMU runs (pid $q)" test -n "$q"
c=$(cpd_pid)
kill -9 "$c"
hv_must "checkpointd gone" tb_wait_exit "$c" 5
echo "garbage" >"$run"
hv_must "checkpointd restarts on a" hv_start_daemon a
hv_check "web01 reported as a crash" tb_wait_for 15 hv_field_has a web01 last_exit '^crash$'
hv_check "the QEMU left behind was killed (pid $q)" tb_wait_for 5 tb__not kill -0 "$q"

hv_must "start web01 on a again" hvctl a start web01
hv_must "guest answers on the LAN" hv_wait_guest 90
c=$(cpd_pid)
kill -9 "$c"
hv_must "checkpointd gone" tb_wait_exit "$c" 5
sed -i 's/^output .*/peer b\noutput held/' "$run"
echo "garbage" >"$gen"
hv_must "checkpointd restarts on a" hv_start_daemon a
hv_check "adopted isolated (output held, protection not resumed)" hv_wait_state a web01 isolated 15
hv_check "a request gets no answer while isolated" tb__not hv_guest next
hv_check "release" hvctl a release web01
hv_check "running after release" hv_wait_state a web01 running 5
hv_check "the guest answers after release" hv_wait_guest 20
hv_summary adopt-damaged
