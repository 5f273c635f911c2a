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
# The other modes skip 2 (s has no listener, or it is not the point) and
# end, instead of 5, with the client judged on a:
#   ipmi      s has a BMC and is powered off (HV_SPARE_START=off: its NIC
#             listens for nothing); a and b have [fence s] and wake = auto
#             (IPMI first): a powers s on through fence_ipmilan action=on,
#             the BMC's power-on boots s (corosync, havmsd). Checked: the
#             BMC's on_done, FB-8010 and a's status say "ipmi", and a
#             wake-on-LAN listener on the LAN switch saw no packet for s
#   handback  on_return = hand-back, s has a BMC (a [fence s] powers it
#             off): after 3-4, b is repaired (powered on through its BMC,
#             its saved /etc, corosync, havmsd): a hands the standby role
#             back (FB-8014), re-protects towards b (a resync: full or
#             incremental, printed), then powers s off (FB-8015; s's BMC
#             off_done, nothing runs in s, a's status asleep); a quorate
#             throughout; with web01 held, a's and b's images identical
#   retry     s's listener starts only after a's second wake (FB-8011
#             attempt 2): the third, 10 s after the first (back-off 0, 5,
#             10 s), boots s; a listener on the LAN switch shows each wake
#             on the wire; FB-8012 counts 3 wakes, none after the join
# Prints spare_wake_to_protected_ms=N (the first wake's start, from
# FB-8012's "ms after the first", -> protected again, both on a's clock)
# and wake_to_join_ms=N; handback also handback_unprotected_ms (FB-8014
# -> FB-8002) and the resync's figures.
# Exit 0 = pass, 1 = fail, 77 = skip. TB_KEEP=1 keeps the logs.
set -u
. "$(dirname "$0")/../lib/failover.sh"
hv_fo_need
[ -x "$HV_BUILD/test/wol-listen" ] || { echo "FAIL: no $HV_BUILD/test/wol-listen"; exit 1; }
command -v e2fsck >/dev/null && command -v debugfs >/dev/null ||
        { echo "FAIL: needs e2fsck and debugfs (e2fsprogs)"; exit 1; }
command -v jq >/dev/null || { echo "SKIP: needs jq"; exit 77; }

MODE=${1:-takeover}
case $MODE in
takeover|novote) ;;
ipmi) HV_SPARE_BMC=1 HV_SPARE_WAKE=auto HV_SPARE_START=off ;;
handback) HV_SPARE_BMC=1 HV_SPARE_EXTRA="on_return = hand-back" ;;
retry) HV_SPARE_START=none ;;
*) echo "FAIL: unknown mode $MODE"; exit 2 ;;
esac
SPARE_WAIT_S=${HV_SPARE_WAIT_S:-5}
HV_DISK_MIB=64
HV_FAILBACK="reprotect = auto
spare_wait_s = $SPARE_WAIT_S"
hv_cluster_create_with_spare "havms.dirty_mib_s=2" || { echo "FAIL: test bed"; exit 1; }
case $MODE in ipmi|retry) hv_wol_sniffer_start || { echo "FAIL: LAN listener"; exit 1; } ;; esac
now_ms() { echo $(($(date +%s%N) / 1000000)); }
S=$HV_SPARE
SEND=$hv_fo_top/test/tools/wol_send.py
S_MAC=$(tb_mac "$S")
OTHER_MAC=02:77:00:00:09:00
PW_HEX=${HV_SPARE_PW//:/}

# s's state in a's status ("asleep", "waking", ...)
spare_state() { hv_cluster_json a | jq -r --arg s "$S" '.cluster.members[] | select(.name == $s) | .spare'; }
spare_member() { hv_cluster_json a | jq -e --arg s "$S" '.cluster.members[] | select(.name == $s) | .member' >/dev/null; }
quorate_a() { hv_corosync_quorate a; }
wake_way() { hv_cluster_json a | jq -r --arg s "$S" '.cluster.members[] | select(.name == $s) | .wake_way'; }
# ts_after ID T: ts_ms of a's first event ID at or after T
ts_after() {
        hvctl a events --json -n 500 | jq --arg id "$1" --argjson t "$2" \
                '[.events[] | select(.id == $id and .ts_ms >= $t)][0].ts_ms // empty'
}
text_after() { # ID T: the text of a's first event ID at or after T
        hvctl a events --json -n 500 | jq -r --arg id "$1" --argjson t "$2" \
                '[.events[] | select(.id == $id and .ts_ms >= $t)][0] | .text // .message // empty'
}
last_sync() { # KEY: a figure of web01's last (re-)sync on a, from the snapshot
        jq -r --arg k "$1" '.vms[0].last_sync[$k] // empty' "$TB_RUN/sync-b.json" 2>/dev/null
}

# handback: b repaired, the standby role goes back from s to b, s is
# powered off through its BMC; then the client is judged on a
handback_part() {
        local t_on t_hb t_prot t_start t_off_s t_off_start t_ck stb
        samples=$TB_RUN/samples-handback
        sampler &
        SAMPLER=$!
        echo "--- b is repaired: powered on through its BMC (ipmitool from a)"
        t_on=$(now_ms)
        hv_must "power b on through its BMC" tb_exec a ipmitool -I lanplus -C 3 -H "$(tb_bmc_addr b)" \
                -U "$(tb_bmc_user b)" -P "$(tb_bmc_password b)" chassis power on
        hv_must "b boots: corosync and havmsd up" tb_wait_for 60 test -S "$(tb_path b /run/havms/havmsd.sock)"
        hv_must "b is a member again: a sees a, b, $S" hv_corosync_wait_members a 3 30
        hv_must "a hands web01's standby role back from $S (HAVMS-FB-8014)" \
                tb_wait_for 90 hv_event_seen a HAVMS-FB-8014
        t_hb=$(hv_event_ms a HAVMS-FB-8014)
        hv_check "then a re-protects web01 towards b (HAVMS-FB-8001)" \
                tb_wait_for 30 eval 'text_after HAVMS-FB-8001 "$t_hb" | grep -q "^re-protecting towards b: "'
        hv_must "web01 protected again, standby b (HAVMS-FB-8002 after the hand-back)" \
                tb_wait_for 240 eval '[ -n "$(ts_after HAVMS-FB-8002 "$t_hb")" ] && hv__state_is a web01 protected'
        hvctl a status web01 --json >"$TB_RUN/sync-b.json" 2>/dev/null
        t_start=$(ts_after HAVMS-FB-8001 "$t_hb")
        t_prot=$(ts_after HAVMS-FB-8002 "$t_hb")
        stb=$(hv_field a web01 peer)
        hv_check "web01's standby is b again (peer=$stb)" test "$stb" = b
        hv_check "b holds a committed replica (backup-standby)" hv_wait_state b web01 backup-standby 30
        hv_must "a powers $S off after the hand-back (HAVMS-FB-8015 powered off)" \
                tb_wait_for 60 eval 'hv_events a | grep HAVMS-FB-8015 | grep -q "powered off after the hand-back"'
        t_off_s=$(hv_event_ms a HAVMS-FB-8015)
        t_off_start=$(ts_after HAVMS-FB-8015 "$t_hb")
        t_ck=$(ts_after HAVMS-FO-5022 "$t_hb")
        hv_check "$S was powered off only once web01 was protected to b (FO-5022 before FB-8015)" \
                test "${t_ck:-9999999999999}" -le "${t_off_start:-0}"
        hv_check "$S's BMC did it (off_done)" eval 'tb_bmc_events "$S" | grep -q "^off_done "'
        hv_check "only a powered it off: b (just joined, not the first by name) did not (no FB-8015 on b)" \
                tb__not hv_event_seen b HAVMS-FB-8015
        hv_check "nothing runs in $S any more (its holder is gone too)" \
                eval '! hv_spare_awake && ! tb_holder "$S" >/dev/null 2>&1'
        hv_check "a's status: $S asleep again, not a member" \
                tb_wait_for 15 eval '[ "$(spare_state)" = asleep ] && ! spare_member'
        hv_check "corosync on a: members a and b again, 2 votes, quorate" \
                tb_wait_for 15 eval 'tb_exec a corosync-quorumtool -s | tee "$TB_RUN/quorum-end.txt" |
                        grep -qE "^Total votes:[[:space:]]+2$" && grep -q "Flags:.*Quorate" "$TB_RUN/quorum-end.txt" &&
                        [ "$(hv_corosync_members a)" = "1 2" ]'
        sleep 1
        kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null
        echo "--- a's events from the repair on"
        hvctl a events --json -n 500 | jq -r --argjson t "$t_on" \
                '.events[] | select(.ts_ms >= $t and (.id | test("HAVMS-F(B|O-50)"))) | "\(.ts_ms) \(.id) \(.vm // "-") \(.text // .message)"' |
                sed 's/^/  /'
        echo "--- a's samples (state changes)"
        awk '{ l = $0; $1 = ""; if ($0 != prev) print l; prev = $0 }' "$samples" | sed 's/^/  /'
        hv_check "a quorate in every sample ($(wc -l <"$samples") samples: b joining, $S handing back, $S off)" \
                tb__not grep -q ' q=no' "$samples"
        echo "resync to b: memory=$(last_sync memory) disks_incremental=$(last_sync disks_incremental)" \
                "disks_full=$(last_sync disks_full) disk_blocks=$(last_sync disk_blocks)" \
                "disk_sent_bytes=$(last_sync disk_sent_bytes) pages_sent=$(last_sync pages_sent)" \
                "wire_bytes=$(last_sync wire_bytes)"
        if [ "$(last_sync disks_incremental)" = 1 ]; then
                echo "the disk resync to b was INCREMENTAL"
        else
                echo "the disk resync to b was FULL (b's history did not match: see docs/failback.md)"
        fi
        echo "power-on of b -> hand-back (FB-8014): $((t_hb - t_on)) ms"
        echo "handback_gap_ms=$((t_start - t_hb)) (FB-8014 unprotect -> FB-8001 protect towards b)"
        echo "handback_unprotected_ms=$((t_prot - t_hb)) (FB-8014 -> FB-8002: no committed standby)"
        echo "protected to b (FO-5022) -> $S's power-off started: $((t_off_start - t_ck)) ms, done: $((t_off_s - t_ck)) ms"
        hv_check "the client's connection is alive" tb__not grep -q '^END' "$HV_VALUES"
        same_disks a b
        hv_fo_client_judge a
        hv_summary failback-spare-handback
}

# same_disks OWNER OTHER: with web01 held, both images are bit-identical
same_disks() {
        local s1 s2
        hv_must "pause web01 on $1" hvctl "$1" pause web01
        s1=$(sha256sum <"$(tb_path "$1" "$HV_DISK")")
        s2=$(sha256sum <"$(tb_path "$2" "$HV_DISK")")
        hv_check "with web01 held, $1's and $2's disk images are bit-identical" test "$s1" = "$s2"
        hv_must "resume web01 on $1" hvctl "$1" resume web01
}

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

# ---- 2. what must not wake the spare (takeover and novote only)
if [ "$MODE" = takeover ] || [ "$MODE" = novote ]; then
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
fi

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
if [ "$MODE" = handback ]; then
        hv_must "b's /etc/havms kept, its boot file written" hv_boot_saved b
        echo "--- b loses power (repaired later)"
else
        echo "--- b loses power for good"
fi
tb_poweroff b
# a's checkpointd: running, or degraded/connecting while it retries b
unprotected_here() { hv_field a web01 state | grep -qxE 'running|degraded|connecting'; }
hv_must "a fences b through its BMC (HAVMS-FN-6003)" tb_wait_for 60 hv_event_seen a HAVMS-FN-6003
hv_must "a releases web01's held output (HAVMS-FO-5015) and runs it unprotected" \
        eval 'tb_wait_for 30 hv_event_seen a HAVMS-FO-5015 && tb_wait_for 30 unprotected_here'
hv_must "a wakes $S by itself (HAVMS-FB-8010)" tb_wait_for 90 hv_event_seen a HAVMS-FB-8010
listener_woke() {
        grep -qE "^[0-9]+ (udp|raw) valid $S_MAC " "$HV_SPARE_WOL_LOG" && grep -q " woken " "$HV_SPARE_WOL_LOG"
}
case $MODE in
ipmi)
        hv_check "$S's BMC powered it on (on_done)" \
                tb_wait_for 10 eval 'tb_bmc_events "$S" | grep -q "^on_done "'
        hv_check "a's FB-8010 says the wake went by IPMI" \
                eval 'hv_events a | grep HAVMS-FB-8010 | grep -q "attempt 1): ipmi (fence_ipmilan action=on)"'
        hv_check "$S boots from the power-on (its boot file: /etc/havms, corosync, havmsd)" \
                tb_wait_for 20 grep -q "^boot done" "$TB_RUN/hosts/$S/boot.log"
        ;;
retry)
        hv_must "a wakes $S again (HAVMS-FB-8011, attempt 2): nothing listened" \
                tb_wait_for 20 eval 'hv_events a | grep HAVMS-FB-8011 | grep -q "(attempt 2)"'
        echo "--- $S's NIC listens from now on (wakes 1 and 2 went nowhere)"
        hv_must "$S's listener started" hv_spare_wol_start
        hv_check "a later wake reached the listener: valid packet for $S_MAC, $S booted" \
                tb_wait_for 30 listener_woke
        ;;
*)
        hv_check "the listener saw a valid packet for $S_MAC and booted $S" tb_wait_for 10 listener_woke
        ;;
esac
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
# the first wake's start: FB-8010 is logged when the wake job ENDS (for
# IPMI, after fence_ipmilan's on and its status polls); FB-8012 says how
# long after the first wake's start the spare joined
join_after=$(hv_events a | grep HAVMS-FB-8012 | tail -n1 | sed -n 's/.*, \([0-9]*\) ms after the first.*/\1/p')
[ -n "$join_after" ] && [ -n "$t_join" ] && t_wake=$((t_join - join_after))
t_prot=$(hv_event_ms a HAVMS-FB-8002)
t_off=$(hvctl a events --json -n 500 | jq '[.events[] | select(.id == "HAVMS-FN-6003")][0].ts_ms')
echo "--- a's events"
hv_events a | grep -E 'HAVMS-F(B|N-6003|O-50)' | sed 's/^/  /'
if [ -s "$HV_SPARE_WOL_LOG" ]; then
        echo "--- the listener's log"
        sed 's/^/  /' "$HV_SPARE_WOL_LOG"
fi
if [ -n "$HV_SPARE_BMC" ]; then
        echo "--- $S's BMC events, boot log"
        { tb_bmc_events "$S"; cat "$TB_RUN/hosts/$S/boot.log" 2>/dev/null; } | sed 's/^/  /'
fi
if [ -n "${HV_WOL_SNIFF_LOG:-}" ]; then
        echo "--- magic packets for $S on the LAN (listener on the switch)"
        sed 's/^/  /' "$HV_WOL_SNIFF_LOG"
fi
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
way=$(wake_way)
echo "a's status: $S woken by: $way"
hv_check "a's status: the last wake of $S went out as ${HV_SPARE_WAKE/auto/ipmi}" \
        eval '[[ "$way" == "${HV_SPARE_WAKE/auto/ipmi}"* ]]'

case $MODE in
ipmi)
        hv_check "no magic packet for $S went out on the LAN (IPMI worked, wake = auto fell back to nothing)" \
                tb__not grep -qE '^[0-9]+ (udp|raw) ' "$HV_WOL_SNIFF_LOG"
        hv_check "$S's BMC powered it on once, never off" \
                eval '[ "$(tb_bmc_events "$S" | grep -c "^on_done ")" = 1 ] && ! tb_bmc_events "$S" | grep -q "^off"'
        hv_fo_client_judge a
        hv_summary failback-spare-ipmi
        exit
        ;;
retry)
        # each wake is a UDP datagram and a raw frame: the switch saw them
        wakes=$(hvctl a events --json -n 500 | jq -r '.events[] | select(.id == "HAVMS-FB-8010" or .id == "HAVMS-FB-8011") | .ts_ms' | tr '\n' ' ')
        echo "a's wakes of $S at (ms): $wakes"
        read -r -a wk <<<"$wakes"
        hv_check "3 wakes before the join (FB-8012 says so)" \
                eval 'hv_events a | grep HAVMS-FB-8012 | grep -q "(3 wake(s)"'
        if [ "${#wk[@]}" -ge 3 ]; then
                d1=$((wk[1] - wk[0])) d2=$((wk[2] - wk[0]))
                echo "back-off: wake 2 at +$d1 ms, wake 3 at +$d2 ms (plan: +5000, +10000)"
                hv_check "back-off: wake 2 at +5 s, wake 3 at +10 s (+-1.5 s)" \
                        eval '[ $d1 -ge 4500 ] && [ $d1 -le 6500 ] && [ $d2 -ge 9500 ] && [ $d2 -le 11500 ]'
        else
                hv_bad "back-off: want 3 wakes, got ${#wk[@]}"
        fi
        hv_check "the switch saw each of the 3 wakes (udp and raw, valid)" \
                test "$(grep -cE '^[0-9]+ (udp|raw) valid ' "$HV_WOL_SNIFF_LOG")" -ge 6
        sleep 6
        hv_check "no wake after the join ($S a member: no FB-8011 beyond attempt 3)" \
                eval '[ "$(hv_events a | grep -c HAVMS-FB-8011)" = 2 ]'
        hv_fo_client_judge a
        hv_summary failback-spare-retry
        exit
        ;;
handback)
        handback_part
        exit
        ;;
esac

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
