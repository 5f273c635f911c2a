#!/bin/bash
# failback-spare: the wake-on-LAN spare of issue 8 ("How it is shown", 5)
# on three hosts (test/lib/failover.sh hv_cluster_create_with_spare): a and
# b a pair, s a powered-off spare whose namespace runs only its NIC
# (test/tools/wol-listen), which starts s's corosync and havmsd on the
# first valid magic packet for its MAC and SecureOn password.
#   1. web01 (ext4 data disk, guest dirtying memory) runs on a, protected
#      to b, reprotect = auto, spare_wait_s = 5; the client keeps ONE TCP
#      connection to the guest's counter for the whole run
#   2. packets that must not wake s, sent from a: another MAC (havmsctl
#      wake and a raw frame), a wrong password, no password, malformed
#      (15 copies, truncated): the listener judges each one, nothing runs
#      in s but the listener, a's status shows s asleep
#   3. b dies for good (tb_poweroff, never back). No command is typed from
#      here: a fences b through its BMC, releases the held output, runs
#      web01 degraded; spare_wait_s later it wakes s (FB-8010); s boots,
#      joins (FB-8012), a re-protects towards s (FB-8001) and web01 is
#      protected again (FB-8002) with s holding a committed replica
#   4. checks: a quorate at every sample (s asleep, b gone, s joining,
#      s a member), corosync's flags, s quorate once joined; a's status went
#      asleep -> waking -> up for s and shows it a member; the listener
#      log shows the valid packet that woke s; a's events hold the FB lines
#   5. the operator moves b's vote to s (configs/corosync-pair-spare.conf:
#      a spare that replaces a host for good; without it s, 0 votes, is
#      never quorate alone), then a dies: s fences a through a's BMC and
#      takes web01 over from its replica (it holds a usable one); the
#      client judged over the whole run: one connection,
#      no gap or rollback; s's image clean under e2fsck, the counter on
#      disk not behind what the client saw
# Mode novote (failback-spare-novote), instead of 5: a dies while s has
# no vote yet: s loses quorum, fences nobody, takes nothing over.
# Prints spare_wake_to_protected_ms=N (first wake event -> protected
# again, both on a's clock) and wake_to_join_ms=N.
# Exit 0 = pass, 1 = fail, 77 = skip. TB_KEEP=1 keeps the logs.
set -u
. "$(dirname "$0")/../lib/failover.sh"
hv_fo_need
[ -x "$HV_BUILD/test/wol-listen" ] || { echo "FAIL: no $HV_BUILD/test/wol-listen"; exit 1; }
command -v e2fsck >/dev/null && command -v debugfs >/dev/null ||
        { echo "FAIL: needs e2fsck and debugfs (e2fsprogs)"; exit 1; }
command -v jq >/dev/null || { echo "SKIP: needs jq"; exit 77; }

MODE=${1:-takeover}
case $MODE in takeover|novote) ;; *) echo "FAIL: unknown mode $MODE"; exit 2 ;; esac
SPARE_WAIT_S=${HV_SPARE_WAIT_S:-5}
HV_DISK_MIB=64
HV_FAILBACK="reprotect = auto
spare_wait_s = $SPARE_WAIT_S"
hv_cluster_create_with_spare "havms.dirty_mib_s=2" || { echo "FAIL: test bed"; exit 1; }
S=$HV_SPARE
SEND=$hv_fo_top/test/tools/wol_send.py
S_MAC=$(tb_mac "$S")
OTHER_MAC=02:77:00:00:09:00
PW_HEX=${HV_SPARE_PW//:/}

# s's state in a's status ("asleep", "waking", ...)
spare_state() { hv_cluster_json a | jq -r --arg s "$S" '.cluster.members[] | select(.name == $s) | .spare'; }
spare_member() { hv_cluster_json a | jq -e --arg s "$S" '.cluster.members[] | select(.name == $s) | .member' >/dev/null; }
quorate_a() { hv_corosync_quorate a; }

hv_check "corosync on a: members a and b, quorate, 2Node flags (s asleep, 0 votes)" \
        eval 'tb_exec a corosync-quorumtool -s | tee "$TB_RUN/quorum-start.txt" | grep -q "Flags:.*2Node.*Quorate"'
sed 's/^/  /' "$TB_RUN/quorum-start.txt" | grep -E 'Expected|Total|Quorum:|Flags|Nodes'
hv_check "a's status: spare $S asleep, not a member" \
        eval '[ "$(spare_state)" = asleep ] && ! spare_member'
# reprotect = auto: a's havmsd protects web01 towards b by itself
hv_must "ext4 data disk on a" hv_make_disk a
hv_must "start web01 on a" hvctl a start web01
hv_must "guest answers on the LAN" hv_wait_guest 90
hv_must "a protects web01 to b by itself (reprotect = auto)" hv_wait_state a web01 protected 180
hv_must "b holds a committed replica" hv_wait_state b web01 backup-standby 30
hv_check "web01's standby is b" test "$(hv_field a web01 peer)" = b
hv_must "client connected" hv_fo_client_start

# ---- 2. what must not wake the spare
n_lines() { grep -cE '^[0-9]+ (udp|raw) ' "$HV_SPARE_WOL_LOG"; }
more_lines() { [ "$(n_lines)" -gt "$1" ]; }
# expect WHAT VERDICT SEND-CMD...: the next packet line(s) of the listener
# all say VERDICT, and s still sleeps
expect() {
        local what=$1 verdict=$2 before bad; shift 2
        before=$(n_lines)
        "$@" >/dev/null 2>&1 || { hv_bad "$what: could not send"; return; }
        tb_wait_for 5 more_lines "$before" || { hv_bad "$what: the listener saw nothing"; return; }
        sleep 0.3 # both ways (havmsctl wake) and a wrongly started command would show
        bad=$(grep -E '^[0-9]+ (udp|raw) ' "$HV_SPARE_WOL_LOG" | tail -n +"$((before + 1))" |
                awk -v v="$verdict" '$3 != v')
        if [ -z "$bad" ] && ! grep -q ' woken ' "$HV_SPARE_WOL_LOG" && ! hv_spare_awake; then
                hv_ok "$what: $verdict, $S still asleep"
        else
                hv_bad "$what: want $verdict and asleep; got '${bad:-woken}'"
        fi
}
expect "havmsctl wake for another MAC (right password)" other-mac \
        hvctl a wake --mac "$OTHER_MAC" --interface br0 --password "$HV_SPARE_PW"
expect "raw frame for another MAC" other-mac tb_exec a python3 "$SEND" br0 raw "$OTHER_MAC" --password "$PW_HEX"
expect "havmsctl wake with a wrong password" bad-password \
        hvctl a wake --mac "$S_MAC" --interface br0 --password 5a:5a:01:02:03:05
expect "UDP without the password" bad-password tb_exec a python3 "$SEND" br0 udp "$S_MAC"
expect "UDP with 15 copies" malformed tb_exec a python3 "$SEND" br0 udp "$S_MAC" --password "$PW_HEX" --copies 15
expect "raw frame truncated in the 16th copy" malformed \
        tb_exec a python3 "$SEND" br0 raw "$S_MAC" --password "$PW_HEX" --truncate 100
expect "UDP garbage" malformed tb_exec a python3 "$SEND" br0 udp garbage
hv_check "no corosync in $S, a's status: spare $S still asleep" \
        eval '! hv_spare_awake && [ "$(spare_state)" = asleep ]'

# ---- 3. b dies for good; from here on nobody types a command
samples=$TB_RUN/samples
sampler() { # every 0.25 s: ms, a quorate?, s's state in a's status, web01's status on a
        local j
        while :; do
                j=$(hv_cluster_json a)
                echo "$(date +%s%3N) q=$(quorate_a && echo yes || echo no)" \
                        "$(jq -r --arg s "$S" '(.cluster.members[] | select(.name == $s) | "spare=\(.spare) member=\(.member)"),
                                (.cluster.vms[] | select(.name == "web01") | "vm=\(.status)")' <<<"$j" 2>/dev/null | tr '\n' ' ')"
                sleep 0.25
        done >>"$samples"
}
sampler &
SAMPLER=$!
tb_on_cleanup "kill $SAMPLER 2>/dev/null"
sleep 2
echo "--- b loses power for good"
tb_poweroff b
# a's checkpointd: running, or degraded/connecting while it retries b
unprotected_here() { hv_field a web01 state | grep -qxE 'running|degraded|connecting'; }
hv_must "a fences b through its BMC (HAVMS-FN-6003)" tb_wait_for 60 hv_event_seen a HAVMS-FN-6003
hv_must "a releases web01's held output (HAVMS-FO-5015) and runs it unprotected" \
        eval 'tb_wait_for 30 hv_event_seen a HAVMS-FO-5015 && tb_wait_for 30 unprotected_here'
hv_must "a wakes $S by itself (HAVMS-FB-8010)" tb_wait_for 90 hv_event_seen a HAVMS-FB-8010
hv_check "the listener saw a valid packet for $S_MAC and booted $S" \
        tb_wait_for 10 eval 'grep -qE "^[0-9]+ (udp|raw) valid $S_MAC " "$HV_SPARE_WOL_LOG" && grep -q " woken " "$HV_SPARE_WOL_LOG"'
hv_must "$S joins: a reports it (HAVMS-FB-8012)" tb_wait_for 90 hv_event_seen a HAVMS-FB-8012
hv_check "a re-protects web01 towards $S (HAVMS-FB-8001)" \
        tb_wait_for 30 eval 'hv_events a | grep "HAVMS-FB-8001" | grep -q "towards $S"'
hv_must "web01 protected again, towards $S (HAVMS-FB-8002)" \
        eval 'tb_wait_for 240 hv_event_seen a HAVMS-FB-8002 && hv_wait_state a web01 protected 30'
hv_check "$S holds a committed replica (backup-standby)" hv_wait_state "$S" web01 backup-standby 30
hv_check "web01's standby is $S" test "$(hv_field a web01 peer)" = "$S"
sleep 1
kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null

t_wake=$(hvctl a events --json -n 500 | jq '[.events[] | select(.id == "HAVMS-FB-8010")][0].ts_ms')
t_join=$(hv_event_ms a HAVMS-FB-8012)
t_prot=$(hv_event_ms a HAVMS-FB-8002)
t_off=$(hvctl a events --json -n 500 | jq '[.events[] | select(.id == "HAVMS-FN-6003")][0].ts_ms')
echo "--- a's events"
hv_events a | grep -E 'HAVMS-F(B|N-6003|O-50)' | sed 's/^/  /'
echo "--- the listener's log"
sed 's/^/  /' "$HV_SPARE_WOL_LOG"
echo "--- a's samples (state changes)"
awk '{ l = $0; $1 = ""; if ($0 != prev) print l; prev = $0 }' "$samples" | sed 's/^/  /'

hv_check "a quorate in every sample ($(wc -l <"$samples") samples, b dead, $S asleep then joining)" \
        tb__not grep -q ' q=no' "$samples"
hv_check "a's status showed $S waking, then up" \
        eval 'grep -q "spare=waking" "$samples" && grep -q "spare=up member=true" "$samples" &&
              [ "$(grep -n "spare=waking" "$samples" | head -n1 | cut -d: -f1)" -lt \
                "$(grep -n "spare=up" "$samples" | head -n1 | cut -d: -f1)" ]'
hv_check "a's status: $S a member, spare up" eval 'spare_member && [ "$(spare_state)" = up ]'
tb_exec a corosync-quorumtool -s >"$TB_RUN/quorum-joined.txt" 2>&1
sed 's/^/  /' "$TB_RUN/quorum-joined.txt" | grep -E 'Expected|Total|Quorum:|Flags|Nodes'
hv_check "corosync on a with $S joined: 2 members, 1 vote, quorate" \
        eval 'grep -qE "^Nodes:[[:space:]]+2$" "$TB_RUN/quorum-joined.txt" &&
              grep -qE "^Total votes:[[:space:]]+1$" "$TB_RUN/quorum-joined.txt" &&
              grep -q "Flags:.*Quorate" "$TB_RUN/quorum-joined.txt"'
hv_check "corosync on $S: quorate (its wait_for_all cleared by a)" hv_corosync_quorate "$S"
hv_check "a's events: wake sent, joined, re-protected" \
        eval 'hv_event_seen a HAVMS-FB-8010 && hv_event_seen a HAVMS-FB-8012 && hv_event_seen a HAVMS-FB-8002'
hv_check "the client's connection is alive" tb__not grep -q '^END' "$HV_VALUES"

spare_ms=-1 join_ms=-1
if [ -n "$t_wake" ] && [ "$t_wake" != null ] && [ -n "$t_prot" ]; then
        spare_ms=$((t_prot - t_wake))
        join_ms=$((t_join - t_wake))
        echo "b fenced -> first wake: $((t_wake - t_off)) ms (spare_wait_s = $SPARE_WAIT_S)"
fi
echo "wake_to_join_ms=$join_ms"
echo "spare_wake_to_protected_ms=$spare_ms"

# ---- 5 (novote). a dies while s still has no vote: s alone is not
# quorate, so it must fence nobody and take nothing over (S3) - not even
# in the moment between the membership change and the quorum report.
if [ "$MODE" = novote ]; then
        echo "--- a loses power while $S has no vote: $S takes nothing over, fences nobody"
        tb_poweroff a
        hv_check "$S loses quorum (HAVMS-FO-5004 QUORUM LOST)" \
                tb_wait_for 15 eval 'hv_events "$S" | grep HAVMS-FO-5004 | grep -q "QUORUM LOST"'
        sleep 5
        hv_events "$S" | grep -E 'HAVMS-F(O-500[45]|N-600)' | sed 's/^/  /'
        hv_check "$S started no fence (no HAVMS-FN-6001)" tb__not hv_event_seen "$S" HAVMS-FN-6001
        hv_check "$S did not take web01 over" tb__not hv__state_is "$S" web01 running
        hv_summary failback-spare-novote
        exit
fi

# ---- 5. s holds a usable replica: a dies, s takes over.
# s has no vote: alone it is never quorate, so a's death would leave it
# without quorum and it would take nothing over (S3; seen on this bed:
# "QUORUM LOST (votes 0 of 2 expected)"). The spare replaced b for good,
# so the operator moves b's vote to s, as configs/corosync-pair-spare.conf
# says - the one command typed in this test, and only for this part.
echo "--- b is gone for good: the operator moves b's vote to $S"
tb_exec a corosync-quorumtool -n "$(tb_host_idx "$S")" -v 1 >/dev/null &&
        tb_exec a corosync-quorumtool -n "$(tb_host_idx b)" -v 0 >/dev/null
hv_check "corosync on a: 2 votes (a and $S), quorate" \
        eval 'tb_exec a corosync-quorumtool -s | grep -qE "^Total votes:[[:space:]]+2$" && hv_corosync_quorate a'
echo "--- a loses power: $S takes web01 over"
before=$(hv_client_n)
tb_poweroff a
hv_must "$S takes web01 over by itself" hv_wait_state "$S" web01 running 60
hv_check "$S fenced a through a's BMC" eval 'tb_bmc_events a | grep -q off_done || hv_event_seen "$S" HAVMS-FN-6003'
hv_must "the client gets answers from $S" tb_wait_for 60 hv_client_more_than "$before"
hv_fo_client_judge "$S"
hv_summary failback-spare
