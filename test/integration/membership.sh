#!/bin/bash
# membership.sh - failover/membership on a real corosync, two knet links,
# on the namespace test bed (no QEMU). hv-members (test/tools) runs on
# each host and logs one timestamped line per event.
#   0. hv-members fails at once while corosync is not running
#   a. both hosts see each other, quorate; a CPG message from a reaches b
#   b. replication link cut: no membership change for 5 s, link 0 shown
#      down on both sides, back up when restored; same for a's LAN uplink
#      (link 1)
#   c. power-off of a: b sees it leave in < 2 s (printed) and stays
#      quorate (two_node). HV_MEMBERSHIP_TRIALS=N repeats it N times and
#      prints p50/max
#   d. partition (both links cut, both hosts up): each side sees the other
#      leave and stays quorate - which is why fencing is needed; healed,
#      the membership merges back
#   e. corosync stopped under hv-members: it reports the error and exits 3
# HV_MEMBERSHIP_HOG=N runs N busy loops during the test (CPU load as with
# two TCG guests on this 2-core machine). Exit 0 pass, 1 fail, 77 skip.
# shellcheck disable=SC2317  # functions called indirectly (tb_wait_for)
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lib/havms.sh
. "$here/../lib/havms.sh"
# shellcheck source=../lib/cluster.sh
. "$here/../lib/cluster.sh"
me=membership

[ "$(id -u)" = 0 ] || { echo "SKIP: needs root (namespaces, cgroups)"; exit 77; }
for c in corosync corosync-cmapctl corosync-quorumtool; do
        command -v "$c" >/dev/null || { echo "FAIL: $c not installed (scripts/setup.sh)"; exit 1; }
done
HM=$HV_BUILD/test/hv-members
[ -x "$HM" ] || { echo "FAIL: no $HM (build first)"; exit 1; }
TRIALS=${HV_MEMBERSHIP_TRIALS:-1}
HOG=${HV_MEMBERSHIP_HOG:-0}

# ------------------------------------------------------------- helpers ----
us() { echo "${1/./}"; }                      # "s.micro" -> microseconds
hm_log() { echo "$TB_RUN/hm-$1.log"; }
hm_start() { # hm_start HOST: hv-members on HOST, waits for its first quorum line
        : >"$(hm_log "$1")"
        tb_spawn "$1" "$(hm_log "$1")" "$HM" || return 1
        tb_wait_for 10 grep -q ' quorum ' "$(hm_log "$1")"
}
hm_mark() { wc -l <"$(hm_log "$1")"; }        # line count, for hm_since
hm_since() { tail -n +"$(( $2 + 1 ))" "$(hm_log "$1")"; }   # HOST MARK
# hm_grep_since HOST MARK REGEX: first matching line after MARK
hm_grep_since() { hm_since "$1" "$2" | grep -m1 -E "$3"; }
hm_has_since() { hm_grep_since "$@" >/dev/null; }
hm_last() { grep -E " $2( |$)" "$(hm_log "$1")" | tail -n 1 | cut -d' ' -f2-; }   # HOST KIND
changes_since() { hm_since "$1" "$2" | grep -cE ' (nodes|members) '; }

# percentile over a list of integers: pct P N...
pct() { local p=$1; shift; printf '%s\n' "$@" | sort -n | awk -v p="$p" '{v[NR]=$1} END {i=int((NR-1)*p/100)+1; print v[i]}'; }

start_a() { # (re)start host a's corosync and hv-members; b must see 2 nodes
        hv_corosync_config a b && hv_corosync_start a && hm_start a &&
                tb_wait_for 15 hm_last_is b nodes "nodes 1 2"
}
hm_last_is() { [ "$(hm_last "$1" "$2")" = "$3" ]; }

# -------------------------------------------------------------- setup -----
tb_init || exit 1
tb_on_cleanup '[ "$HV_FAIL" = 0 ] || dump_logs'
dump_logs() {
        local h
        for h in a b; do
                echo "----- hv-members on $h"; tail -n 30 "$(hm_log $h)" 2>/dev/null
                echo "----- corosync on $h"; tail -n 30 "$TB_RUN/$h-corosync.log" 2>/dev/null
        done
}
hv_must "test bed: lan, hosts a b, replication link 1" \
        eval 'tb_lan_create && tb_host_create a 1 && tb_host_create b 2 && tb_link_create a b 1'
for ((i = 0; i < HOG; i++)); do
        tb_client_spawn "$TB_RUN/hog.log" bash -c 'while :; do :; done'
done
echo "token ${HV_CS_TOKEN} ms, consensus ${HV_CS_CONSENSUS:-200 (pair default)} ms, CPU hogs: $HOG"

hv_must "corosync configs written" hv_corosync_config a b
open_fails_fast() {
        local t0=$EPOCHREALTIME rc ms
        tb_exec a "$HM" >"$TB_RUN/hm-nocorosync.log" 2>&1; rc=$?
        ms=$(( ($(us "$EPOCHREALTIME") - $(us "$t0")) / 1000 ))
        echo "  without corosync: exit $rc after $ms ms: $(head -n1 "$TB_RUN/hm-nocorosync.log")"
        [ "$rc" = 1 ] && [ "$ms" -lt 2000 ]
}
hv_check "0: membership_open fails fast without corosync" open_fails_fast
hv_must "corosync starts on a and b" eval 'hv_corosync_start a && hv_corosync_start b'
hv_must "totem membership of 2 on both" eval 'hv_corosync_wait_members a 2 15 && hv_corosync_wait_members b 2 15'
hv_must "hv-members runs on a and b" eval 'hm_start a && hm_start b'

# ------------------------------------------------------------------ a -----
hv_check "a: both see nodes 1 2" eval 'tb_wait_for 5 hm_last_is a nodes "nodes 1 2" && tb_wait_for 5 hm_last_is b nodes "nodes 1 2"'
hv_check "a: both quorate (2 of 2 votes)" eval 'tb_wait_for 5 hm_last_is a quorum "quorum quorate=1 expected=2 total=2" &&
        tb_wait_for 5 hm_last_is b quorum "quorum quorate=1 expected=2 total=2"'
hv_check "a: the group has a havmsd-like member on each node" eval '[[ "$(hm_last b members)" =~ ^members\ 1:[0-9]+\ 2:[0-9]+$ ]]'
m=$(hm_mark b)
hv_check "a: send from a" tb_exec a "$HM" -s "hello-$TB_ID"
hv_check "a: the message from a arrives at b" tb_wait_for 3 hm_has_since b "$m" "message from=1 .* text=hello-$TB_ID\$"
echo "  b: $(hm_grep_since b "$m" 'message from=1')"

# ------------------------------------------------------------------ b -----
# knet starts a link's down-detection timeout at 10 x knet_ping_timeout
# and brings it down by one step per second: let it settle first.
sleep 3
link_is() { # link_is HOST NODEID LINK 0|1: the last reported state
        [ "$(grep -E " link node=$2 link=$3 " "$(hm_log "$1")" | tail -n1 | sed -n 's/.*connected=\([01]\).*/\1/p')" = "$4" ]
}
one_link_cut() { # one_link_cut LINK CUT_CMD RESTORE_CMD
        local link=$1 cut=$2 restore=$3 ma mb
        ma=$(hm_mark a); mb=$(hm_mark b)
        $cut
        hv_check "b: link $link cut: shown down on a" tb_wait_for 5 link_is a 2 "$link" 0
        hv_check "b: link $link cut: shown down on b" tb_wait_for 5 link_is b 1 "$link" 0
        sleep 5
        hv_check "b: link $link cut: no membership change for 5 s on a" [ "$(changes_since a "$ma")" = 0 ]
        hv_check "b: link $link cut: no membership change for 5 s on b" [ "$(changes_since b "$mb")" = 0 ]
        hv_check "b: link $link cut: corosync still has 2 members" hv__cs_nmembers a 2
        $restore
        hv_check "b: link $link restored: up on both" eval "tb_wait_for 10 link_is a 2 $link 1 && tb_wait_for 10 link_is b 1 $link 1"
        hv_check "b: link $link restored: still no membership change" \
                eval "[ \"\$(changes_since a $ma)\" = 0 ] && [ \"\$(changes_since b $mb)\" = 0 ]"
}
one_link_cut 0 "tb_link_down a b 1" "tb_link_up a b 1"
one_link_cut 1 "tb_uplink_down a" "tb_uplink_up a"

# ------------------------------------------------------------------ c -----
declare -a detect=()
for ((t = 1; t <= TRIALS; t++)); do
        sleep 2
        mb=$(hm_mark b)
        t0=$EPOCHREALTIME
        tb_poweroff a
        if ! tb_wait_for 5 hm_has_since b "$mb" ' nodes 2$'; then
                hv_bad "c: trial $t: b did not see a leave within 5 s"
                continue
        fi
        line=$(hm_grep_since b "$mb" ' nodes 2$')
        ms=$(( ($(us "${line%% *}") - $(us "$t0")) / 1000 ))
        detect+=("$ms")
        echo "  trial $t: power-off of a -> b's nodes callback: $ms ms"
        hv_check "c: trial $t: detected in < 2000 ms ($ms ms)" [ "$ms" -lt 2000 ]
        hv_check "c: trial $t: b stays quorate (two_node)" \
                tb_wait_for 3 hm_has_since b "$mb" 'quorum quorate=1 expected=2 total=1$'
        hv_check "c: trial $t: a's process left the group" tb_wait_for 3 hm_has_since b "$mb" 'members 2:[0-9]+$'
        hv_must "c: trial $t: host a back up and rejoined" eval 'tb_host_restart a && start_a'
done
if [ "${#detect[@]}" -gt 0 ]; then
        echo "c: detection over ${#detect[@]} trials: p50 $(pct 50 "${detect[@]}") ms, max $(pct 100 "${detect[@]}") ms (all: ${detect[*]})"
fi

# ------------------------------------------------------------------ d -----
sleep 2
ma=$(hm_mark a); mb=$(hm_mark b)
t0=$EPOCHREALTIME
tb_link_down a b 1; tb_uplink_down a
hv_check "d: partition: a sees b leave" tb_wait_for 5 hm_has_since a "$ma" ' nodes 1$'
hv_check "d: partition: b sees a leave" tb_wait_for 5 hm_has_since b "$mb" ' nodes 2$'
hv_check "d: partition: a still quorate (two_node)" tb_wait_for 3 hm_has_since a "$ma" 'quorum quorate=1 expected=2 total=1$'
hv_check "d: partition: b still quorate (two_node)" tb_wait_for 3 hm_has_since b "$mb" 'quorum quorate=1 expected=2 total=1$'
la=$(hm_grep_since a "$ma" ' nodes 1$'); lb=$(hm_grep_since b "$mb" ' nodes 2$')
echo "  partition: a saw b leave after $(( ($(us "${la%% *}") - $(us "$t0")) / 1000 )) ms, b saw a leave after $(( ($(us "${lb%% *}") - $(us "$t0")) / 1000 )) ms; BOTH quorate: split brain unless fenced"
ma=$(hm_mark a); mb=$(hm_mark b)
tb_uplink_up a; tb_link_up a b 1
hv_check "d: healed: a sees nodes 1 2" tb_wait_for 10 hm_has_since a "$ma" ' nodes 1 2$'
hv_check "d: healed: b sees nodes 1 2" tb_wait_for 10 hm_has_since b "$mb" ' nodes 1 2$'
hv_check "d: healed: group has both again" eval 'tb_wait_for 5 eval "[[ \"\$(hm_last a members)\" =~ ^members\ 1:[0-9]+\ 2:[0-9]+$ ]]"'
hv_check "d: healed: quorate with 2 votes" tb_wait_for 5 hm_last_is b quorum "quorum quorate=1 expected=2 total=2"

# ------------------------------------------------------------------ e -----
mb=$(hm_mark b)
hv_check "e: corosync on b stops" hv_corosync_stop b
hv_check "e: hv-members on b reports the loss" tb_wait_for 3 hm_has_since b "$mb" ' error '
hv_check "e: a sees b leave (graceful)" tb_wait_for 5 hm_last_is a nodes "nodes 1"

# ---------------------------------------------------- nothing leaked ------
hv_check "nothing in the root namespace's /run, /etc, /var/lib" \
        eval '[ ! -e /run/corosync.pid ] && [ ! -e /etc/havms/corosync.conf ] && [ ! -e /var/lib/havms/corosync ]'
hv_summary "$me"
