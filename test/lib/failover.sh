# shellcheck shell=bash
# failover.sh - a havmsd cluster on the test bed (bash library, on top of
# havms.sh, cluster.sh and bmc.sh).
#
#   . test/lib/failover.sh
#   hv_cluster_create          # hosts a, b: LAN, replication link, BMCs on a
#                              # management network, corosync on two links,
#                              # havmsd on each (it starts checkpointd)
#   hvctl a start web01; hvctl a protect web01
#   tb_poweroff a              # ... b fences a through its BMC and takes over
#
# Each host's havms.conf gets a [cluster] section and a [fence OTHER]
# section whose level 1 is the real fence_ipmilan against OTHER's
# simulated BMC (test/lib/bmc.sh). HV_FENCE_LEVELS overrides the levels
# (lines "levelN = ..."), e.g. to put a failing agent first.

hv_fo_top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
. "$hv_fo_top/test/lib/havms.sh"
. "$hv_fo_top/test/lib/cluster.sh"
. "$hv_fo_top/test/lib/bmc.sh"

hv_fo_need() {
        hv_need
        [ -x "$HV_BUILD/failover/havmsd" ] || { echo "FAIL: no havmsd in $HV_BUILD"; exit 1; }
        local c
        for c in corosync fence_ipmilan ipmi_sim; do
                command -v "$c" >/dev/null || { echo "FAIL: $c missing (scripts/setup.sh installs it)"; exit 1; }
        done
}

# hv_fence_levels HOST: the [fence HOST] levels (default: its BMC).
hv_fence_levels() {
        if [ -n "${HV_FENCE_LEVELS:-}" ]; then
                printf '%s\n' "$HV_FENCE_LEVELS" | sed "s/@BMC@/$(tb_bmc_addr "$1")/g"
                return
        fi
        # power_wait=0: off is verified by a status call anyway (docs/failover.md)
        echo "level1 = fence_ipmilan $(tb_bmc_fence_args "$1") power_wait=0"
}

# hv_cluster_config HOST OTHER: havms.conf for havmsd (on top of
# hv_host_config's): [cluster] and [fence OTHER].
hv_cluster_config() {
        local host=$1 other=$2 conf
        conf=$(tb_path "$host" /etc/havms/havms.conf) || return 1
        cat >>"$conf" <<EOC

[cluster]
checkpointd = $HV_BUILD/checkpointd/checkpointd
fence_delay_ms = ${HV_FENCE_DELAY_MS:-3000}
fence_retry_ms = ${HV_FENCE_RETRY_MS:-3000}
fence_monitor_s = ${HV_FENCE_MONITOR_S:-600}
hooks_dir = /etc/havms/hooks

[fence $other]
$(hv_fence_levels "$other")
timeout_ms = ${HV_FENCE_TIMEOUT_MS:-20000}
EOC
}

# hv_start_havmsd HOST: havmsd in HOST; it starts checkpointd (--managed).
hv_start_havmsd() {
        tb_spawn "$1" "$TB_RUN/$1-havmsd.log" "$HV_BUILD/failover/havmsd" \
                -c /etc/havms/havms.conf || return 1
        tb_wait_for 20 test -S "$(tb_path "$1" /run/havms/checkpointd.sock)" &&
                tb_wait_for 10 test -S "$(tb_path "$1" /run/havms/havmsd.sock)"
}

# The log of checkpointd is havmsd's (its child writes to the same file).
hv_cluster_create() {
        tb_init || return 1
        tb_on_cleanup '[ "$HV_FAIL" = 0 ] || hv_fo_dump_logs'
        tb_lan_create || return 1
        tb_host_create a 1 && tb_host_create b 2 || return 1
        tb_link_create a b 1 || return 1
        tb_bmc_create a && tb_bmc_create b || return 1
        hv_host_config a b 1 "${1:-}" "${2:-}" && hv_host_config b a 1 "${1:-}" "${2:-}" || return 1
        hv_cluster_config a b && hv_cluster_config b a || return 1
        hv_corosync_config a b || return 1
        hv_corosync_start a && hv_corosync_start b || return 1
        hv_corosync_wait_members a 2 20 && hv_corosync_wait_members b 2 20 || return 1
        hv_start_havmsd a && hv_start_havmsd b
}

# hv_boot_script HOST: what a power-on of HOST runs (bmc.sh's boot hook):
# the same configuration, corosync and havmsd, as a host's init would.
hv_boot_script() {
        local h=$1 o=$2
        cat >"$TB_RUN/hosts/$h/boot" <<EOB
hv_host_config $h $o 1 && hv_cluster_config $h $o && hv_corosync_config a b &&
        hv_corosync_start $h && hv_start_havmsd $h
EOB
}

# hv_cluster_field HOST VM KEY: one field of VM in havmsd's cluster-status.
hv_cluster_json() { hvctl "$1" status --json 2>/dev/null; }

# hv_events HOST: havmsd's events, one line each.
hv_events() { hvctl "$1" events -n 500 2>/dev/null; }
hv_event_seen() { hv_events "$1" | grep -q "$2"; }

hv_fo_dump_logs() {
        local h
        for h in a b; do
                echo "----- $h havmsd + checkpointd log"; tail -n 60 "$TB_RUN/$h-havmsd.log" 2>/dev/null
                echo "----- $h corosync log"; tail -n 10 "$TB_RUN/$h-corosync.log" 2>/dev/null
                tb_holder "$h" >/dev/null 2>&1 || continue
                echo "----- $h console"; tail -n 8 "$(tb_path "$h" /var/log/havms/$HV_VM.console)" 2>/dev/null
        done
}
