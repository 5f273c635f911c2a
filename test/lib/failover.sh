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
# (lines "levelN = ...", @BMC@ = the BMC's address, @ARGS@ = the working
# fence_ipmilan arguments), e.g. to put a failing agent first.

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
                printf '%s\n' "$HV_FENCE_LEVELS" |
                        sed -e "s/@BMC@/$(tb_bmc_addr "$1")/g" -e "s/@ARGS@/$(tb_bmc_fence_args "$1")/g"
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
        # hooks that record what they were told (the tests check them)
        local hooks ev
        hooks=$(tb_path "$host" /etc/havms/hooks) || return 1
        mkdir -p "$hooks"
        for ev in post-activate post-fence protection-lost; do
                cat >"$hooks/$ev" <<'EOH'
#!/bin/sh
echo "$HAVMS_EVENT host=$HAVMS_HOST vm=$HAVMS_VM gen=$HAVMS_GENERATION peer=$HAVMS_PEER fenced=$HAVMS_FENCED_HOST" >>/var/log/havms/hooks.log
EOH
                chmod +x "$hooks/$ev"
        done
}
# hv_hook_seen HOST REGEX: a hook on HOST recorded a matching line.
hv_hook_seen() { grep -qE "$2" "$(tb_path "$1" /var/log/havms/hooks.log)" 2>/dev/null; }

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

# hv_boot_script HOST OTHER [EXTRA_VM_CMDLINE]: what a power-on of HOST
# runs (bmc.sh's boot hook): the same configuration, corosync and havmsd,
# as a host's init would. bmc.sh runs the hook inside HOST's namespaces,
# a fresh bash without this library, whose /sys hides the cgroup tree the
# test-bed helpers need: so it steps back into the test's mount namespace
# (the helpers enter HOST's namespaces by its holder), attaches to the run
# and calls them with this test's settings.
hv_boot_script() {
        local h=$1 o=$2 extra=${3:-} d=$TB_RUN/hosts/$1 v
        {
                printf 'HAVMS_BUILD=%q HAVMS_GUEST=%q\n' "$HV_BUILD" "$HV_GUEST"
                for v in HV_DISK_MIB HV_FAILBACK HV_HOST_EXTRA HV_VM_EXTRA HV_FENCE_LEVELS \
                        HV_FENCE_DELAY_MS HV_FENCE_RETRY_MS HV_FENCE_MONITOR_S HV_FENCE_TIMEOUT_MS; do
                        [ -n "${!v+x}" ] && printf '%s=%q\n' "$v" "${!v}"
                done
                printf '. %q\n' "$hv_fo_top/test/lib/failover.sh"
                printf 'tb_attach %q || exit 1\n' "$TB_RUN"
                printf 'hv_host_config %s %s 1 %q && hv_cluster_config %s %s && hv_corosync_config a b &&\n' \
                        "$h" "$o" "$extra" "$h" "$o"
                printf '        hv_corosync_start %s && hv_start_havmsd %s && echo booted\n' "$h" "$h"
        } >"$d/boot.sh"
        printf 'exec nsenter -t %s -m -- bash %q\n' "$TB_OWNER_PID" "$d/boot.sh" >"$d/boot"
}

# hv_cluster_field HOST VM KEY: one field of VM in havmsd's cluster-status.
hv_cluster_json() { hvctl "$1" status --json 2>/dev/null; }

# hv_event_ms HOST ID: ts_ms (wall clock) of HOST's last event with this ID
hv_event_ms() {
        hvctl "$1" events --json -n 500 2>/dev/null | python3 -c '
import json, sys
ev = [e for e in json.load(sys.stdin)["events"] if e["id"] == sys.argv[1]]
print(ev[-1]["ts_ms"] if ev else "")' "$2"
}
# hv_event_before HOST1 ID1 HOST2 ID2: both events happened, the first earlier
hv_event_before() {
        local t1 t2
        t1=$(hv_event_ms "$1" "$2") && t2=$(hv_event_ms "$3" "$4") &&
                [ -n "$t1" ] && [ -n "$t2" ] && [ "$t1" -le "$t2" ]
}

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

# ------------------------------------------------ the consistency client --
# hv_fo_client_start: hv_client_start in a work dir of its own (HV_WORK).
hv_fo_client_start() {
        HV_WORK=$(mktemp -d /tmp/havms-failover.XXXXXX) || return 1
        tb_on_cleanup "rm -rf '$HV_WORK'"
        hv_client_start "$HV_WORK"
}

# hv_fo_client_judge OWNER: stop the client and judge the whole run as the
# consistency test does: one connection, no gap or rollback; then stop the
# VM on OWNER and check its disk image (e2fsck after journal replay, the
# counter on disk >= the last value the client saw).
hv_fo_client_judge() {
        local owner=$1 last img on_disk
        touch "$HV_WORK/pause"
        sleep 0.5
        last=$(hv_client_last)
        kill -TERM "$HV_CLIENT" 2>/dev/null
        tb_wait_for 10 grep -q '^END' "$HV_VALUES"
        hv_check "no value repeated, skipped or rolled back" tb__not grep -q '^GAP' "$HV_VALUES"
        hv_check "one connection for the whole run" grep -q '^END stop' "$HV_VALUES"
        [ "$HV_DISK_MIB" -gt 0 ] || return 0
        hv_check "stop web01 on $owner" hvctl "$owner" stop web01
        img=$HV_WORK/last.img
        cp --sparse=always "$(tb_path "$owner" "$HV_DISK")" "$img"
        e2fsck -E journal_only -y "$img" >"$HV_WORK/fsck-journal.log" 2>&1
        hv_check "$owner's image passes e2fsck -fn after journal replay" e2fsck -fn "$img"
        on_disk=$(debugfs -R "cat /counter" "$img" 2>/dev/null | tr -dc 0-9 | sed 's/^0*//')
        hv_check "counter on disk (${on_disk:-none}) >= last value seen ($last)" \
                test "${on_disk:-0}" -ge "$last"
}

# hv_fo_protected_with_client: web01 with a data disk on a, protected to
# b, the client connected.
hv_fo_protected_with_client() {
        hv_must "ext4 data disk on a" hv_make_disk a
        hv_must "start web01 on a" hvctl a start web01
        hv_must "guest answers on the LAN" hv_wait_guest 90
        hv_must "protect web01 to b" hvctl a protect web01
        hv_must "a reaches protected" hv_wait_state a web01 protected 180
        hv_must "b holds a committed replica" hv_wait_state b web01 backup-standby 30
        hv_must "client connected" hv_fo_client_start
}

# ------------------------------------------- three hosts: a pair + a spare --
# hv_cluster_create_with_spare: hv_cluster_create's pair a, b plus host s,
# a powered-off spare (issue 8, docs/failback.md "The spare's life cycle"):
#
#   LAN br-lan:          a 10.77.0.11   b 10.77.0.12   s 10.77.0.13
#   replication network: a 10.99.200.1  b 10.99.200.2  s 10.99.200.3
#   management:          BMCs of a and b; s has mg0 (it fences a or b once
#                        it is a standby) but no BMC: it is woken by LAN only
#
# Why not tb_link_create's cables: with a third host, link 0 (the
# replication network, corosync's ring0) must be one segment all three
# are on - a small switch or a VLAN, as configs/corosync-pair-spare.conf
# says - and corosync wants ONE address per node per link, so two cables
# a-s and b-s cannot carry ring0. The simplest such segment here: a second
# subnet on each host's LAN bridge br0 (this kernel has no 8021q, so no
# real VLAN). A power-off (up0 down) silences it with the LAN, as the test
# bed's power-off wants; but the two corosync links share one wire, so
# this bed does not test link redundancy (the pair bed does).
#
# On a and b, havms.conf gains [peer s] and [spare s] (wake = wol, mac =
# s's br0 MAC, interface = br0, SecureOn HV_SPARE_PW); s's has [peer a],
# [peer b], [fence a], [fence b]. corosync lists all three with s at
# quorum_votes: 0 (hv_corosync_config, HV_CS_ZERO_VOTES; the quorum
# consequences are written at hv_spare_corosync_config).
#
# s runs ONLY test/tools/wol-listen (its NIC's firmware): on the first
# valid magic packet it runs $TB_RUN/hosts/s/wake-boot, which starts s's
# corosync and havmsd (havmsd starts checkpointd), as the spare's boot
# would. Its log: $HV_SPARE_WOL_LOG.
HV_REPL_NET=${HV_REPL_NET:-10.99.200}
HV_SPARE=s
HV_SPARE_PW=${HV_SPARE_PW:-5a:5a:01:02:03:04}
HV_SPARE_EXTRA=${HV_SPARE_EXTRA:-} # extra lines for [spare s] on a and b
HV_SPARE_WAKE=${HV_SPARE_WAKE:-wol} # wake = of [spare s]: auto | wol | ipmi
# HV_SPARE_BMC=1: s has a BMC too (a and b get a [fence s] through it: wake
# by IPMI, power-off after a hand-back)
HV_SPARE_BMC=${HV_SPARE_BMC:-}
# HV_SPARE_START: what s runs once the bed is up: wol = its NIC's listener
# (hv_spare_wol_start); none = nothing (the test starts the listener later:
# the first wakes are lost); off = s is powered off, its /etc/havms kept and
# a boot file written (hv_boot_saved): a power-on through its BMC boots it
HV_SPARE_START=${HV_SPARE_START:-wol}
HV_SPARE_WOL_LOG=

hv_repl_addr() { local i; i=$(tb_host_idx "$1") && echo "$HV_REPL_NET.$i"; }

# hv_repl_net_create HOST: HOST's replication address (on br0).
hv_repl_net_create() {
        local ns addr
        ns=$(tb_ns "$1") && addr=$(hv_repl_addr "$1") || return 1
        ip -n "$ns" addr add "$addr/24" dev br0
}

# hv_spare_host_config HOST OTHER...: havms.conf and web01.conf of HOST
# (hv_host_config + hv_cluster_config towards the first OTHER), replication
# on HV_REPL_NET, a [peer] for every OTHER, a [fence] for every OTHER that has
# a BMC, and on a and b the [spare s] section.
hv_spare_host_config() {
        local h=$1 first=$2 o conf
        shift
        HV_PEER_ADDR[$h]=$(hv_repl_addr "$first"):7780
        hv_host_config "$h" "$first" lan && hv_cluster_config "$h" "$first" || return 1
        conf=$(tb_path "$h" /etc/havms/havms.conf) || return 1
        sed -i "s|^listen = .*|listen = $(hv_repl_addr "$h"):7780|" "$conf"
        for o in "${@:2}"; do
                printf '\n[peer %s]\naddress = %s:7780\n' "$o" "$(hv_repl_addr "$o")" >>"$conf"
                [ -e "$TB_RUN/bmc/$o/addr" ] || continue
                printf '\n[fence %s]\n%s\ntimeout_ms = %s\n' "$o" "$(hv_fence_levels "$o")" \
                        "${HV_FENCE_TIMEOUT_MS:-20000}" >>"$conf"
        done
        [ "$h" = "$HV_SPARE" ] && return 0
        cat >>"$conf" <<EOC

[spare $HV_SPARE]
mac = $(tb_mac "$HV_SPARE")
interface = br0
password = $HV_SPARE_PW
wake = $HV_SPARE_WAKE
boot_timeout_s = 120
$HV_SPARE_EXTRA
EOC
}

# hv_spare_corosync_config: corosync.conf on a, b and s.
# Quorum (votequorum(5), and corosync's exec/votequorum.c read for it):
#  - expected_votes is the sum of the nodelist's quorum_votes: 1 + 1 + 0 =
#    2 on every node, s included;
#  - two_node's "quorum is 1" applies while the MEMBERSHIP has at most two
#    nodes - calculate_quorum() counts members, whatever their votes
#    (`two_node && total_nodes <= 2`); with three members quorum is the
#    plain majority of the expected 2 votes, i.e. 2. So:
#      s asleep, a+b:  2 members, quorum 1, votes 2: quorate
#      s asleep, a:    1 member,  quorum 1, votes 1: quorate (fence b first)
#      a + s, b dead:  2 members, quorum 1, votes 1: quorate
#      a + b + s:      3 members, quorum 2, votes 2: quorate; if a or b then
#                      dies, 2 members again, quorum 1: the survivor stays
#                      quorate with s (a partition {a,s} | {b} leaves both
#                      sides quorate, as in a pair: fencing decides)
#      s alone:        votes 0 < quorum 1: never quorate by itself;
#  - s boots with wait_for_all (two_node implies it): not quorate until it
#    has seen all expected votes at once OR a quorate member past its own
#    wait sends its node information (docs/failback.md): joining a lone
#    quorate survivor, it becomes quorate at once.
# The test checks the first, third and fourth lines on the test bed.
hv_spare_corosync_config() {
        HV_CS_RING0_NET=$HV_REPL_NET HV_CS_ZERO_VOTES=$HV_SPARE hv_corosync_config a b "$HV_SPARE"
}

# hv__boot_daemons HOST TAG: the lines of a boot script that start HOST's
# corosync, wait until it answers, then start havmsd (TAG marks the log).
hv__boot_daemons() {
        local h=$1 tag=$2
        cat <<EOB
echo "$tag \$(date +%s%3N)"
corosync -f -c $HV_CS_CONF >>$TB_RUN/$h-corosync.log 2>&1 &
for i in \$(seq 100); do
        corosync-cmapctl -g runtime.votequorum.this_node_id >/dev/null 2>&1 && break
        sleep 0.1
done
$HV_BUILD/failover/havmsd -c /etc/havms/havms.conf >>$TB_RUN/$h-havmsd.log 2>&1 &
echo "$tag done \$(date +%s%3N)"
EOB
}

# hv_spare_wol_start: the spare's NIC: wol-listen on s's br0, for s's MAC
# and HV_SPARE_PW; the first valid packet runs wake-boot.
hv_spare_wol_start() {
        local s=$HV_SPARE boot=$TB_RUN/hosts/$HV_SPARE/wake-boot
        HV_SPARE_WOL_LOG=$TB_RUN/$s-wol.log
        {
                echo "# the spare's \"boot\" (run by wol-listen inside $s): corosync, then havmsd"
                hv__boot_daemons "$s" wake-boot
        } >"$boot"
        : >"$HV_SPARE_WOL_LOG"
        tb_spawn "$s" "$TB_RUN/$s-wol.out" "$HV_BUILD/test/wol-listen" --interface br0 \
                --mac "$(tb_mac "$s")" --password "$HV_SPARE_PW" --log "$HV_SPARE_WOL_LOG" \
                -- /bin/bash "$boot" || return 1
        tb_wait_for 5 grep -q ' listening ' "$HV_SPARE_WOL_LOG"
}

# hv_spare_awake: something besides the holder and wol-listen runs in s
# (corosync, havmsd, the boot script).
hv_spare_awake() {
        local p c
        for p in $(tb_host_pids "$HV_SPARE"); do
                c=$(cat "/proc/$p/comm" 2>/dev/null) || continue
                case $c in sleep|wol-listen|nsenter) ;; *) return 0 ;; esac
        done
        return 1
}

hv_cluster_create_with_spare() {
        tb_init || return 1
        tb_on_cleanup '[ "$HV_FAIL" = 0 ] || hv_fo_dump_logs'
        tb_on_cleanup '[ "$HV_FAIL" = 0 ] || hv_spare_dump_logs'
        tb_lan_create || return 1
        tb_host_create a 1 && tb_host_create b 2 && tb_host_create "$HV_SPARE" 3 || return 1
        hv_repl_net_create a && hv_repl_net_create b && hv_repl_net_create "$HV_SPARE" || return 1
        tb_bmc_create a >/dev/null && tb_bmc_create b >/dev/null && tb_mgmt_attach "$HV_SPARE" || return 1
        [ -z "$HV_SPARE_BMC" ] || tb_bmc_create "$HV_SPARE" >/dev/null || return 1
        hv_spare_host_config a b "$HV_SPARE" && hv_spare_host_config b a "$HV_SPARE" &&
                hv_spare_host_config "$HV_SPARE" a b || return 1
        hv_spare_corosync_config || return 1
        hv_corosync_start a && hv_corosync_start b || return 1
        hv_corosync_wait_members a 2 20 && hv_corosync_wait_members b 2 20 || return 1
        hv_start_havmsd a && hv_start_havmsd b || return 1
        case $HV_SPARE_START in
        wol) hv_spare_wol_start ;;
        none) HV_SPARE_WOL_LOG=$TB_RUN/$HV_SPARE-wol.log; : >"$HV_SPARE_WOL_LOG" ;;
        off) hv_boot_saved "$HV_SPARE" && tb_poweroff "$HV_SPARE" ;;
        *) echo "HV_SPARE_START: wol, none or off" >&2; return 1 ;;
        esac
}

# hv_boot_saved HOST: HOST's /etc/havms is kept (its tmpfs goes with the
# power, a real host's /etc does not) and its boot file written: a power-on
# through its BMC (bmc.sh runs $TB_RUN/hosts/HOST/boot inside HOST, in its
# cgroup) puts the configuration back and starts corosync, then havmsd, as
# the host's init would. Unlike hv_boot_script it writes no configuration
# (the three-host bed's is not hv_host_config's) and needs none of this
# library inside the host. Call it while HOST runs.
hv_boot_saved() {
        local h=$1 d=$TB_RUN/hosts/$1
        rm -rf "$d/etc.saved" && mkdir -p "$d/etc.saved" &&
                cp -a "$(tb_path "$h" /etc/havms)/." "$d/etc.saved/" || return 1
        {
                echo "# $h's boot (run by its BMC's power-on inside $h): its configuration, corosync, havmsd"
                echo "cp -a $d/etc.saved/. /etc/havms/ || exit 1"
                hv__boot_daemons "$h" boot
        } >"$d/boot"
}

# hv_wol_sniffer_start: a wol-listen on the LAN switch (the client's
# namespace) for s's MAC and password that starts nothing: its log
# ($HV_WOL_SNIFF_LOG) shows every magic packet for s that went out on the
# wire, whether s listened or not.
hv_wol_sniffer_start() {
        HV_WOL_SNIFF_LOG=$TB_RUN/lan-wol-sniff.log
        : >"$HV_WOL_SNIFF_LOG"
        tb_client_spawn "$TB_RUN/lan-wol-sniff.out" "$HV_BUILD/test/wol-listen" --interface eth0 \
                --mac "$(tb_mac "$HV_SPARE")" --password "$HV_SPARE_PW" --log "$HV_WOL_SNIFF_LOG" -- /bin/true
        tb_on_cleanup "kill $TB_LAST_PID 2>/dev/null"
        tb_wait_for 5 grep -q ' listening ' "$HV_WOL_SNIFF_LOG"
}

hv_spare_dump_logs() {
        echo "----- $HV_SPARE wol-listen log"; cat "$HV_SPARE_WOL_LOG" 2>/dev/null
        echo "----- $HV_SPARE havmsd + checkpointd log"; tail -n 60 "$TB_RUN/$HV_SPARE-havmsd.log" 2>/dev/null
        echo "----- $HV_SPARE corosync log"; tail -n 15 "$TB_RUN/$HV_SPARE-corosync.log" 2>/dev/null
}
