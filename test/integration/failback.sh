#!/bin/bash
# shellcheck disable=SC2034 # HV_* are read by the library, n0 inside an eval
# failback MODE: protection restores itself (issue 8, "How it is shown"
# 1-3). havmsd with its failback controller, corosync and a simulated BMC
# on hosts a and b; web01 with an ext4 data disk, the memory dirtier, and
# the consistency client on ONE TCP connection to the counter (persisted
# on the data disk) for the whole run; no command typed unless the
# scenario says so. MODE is
#   repair      web01 runs on a, protected to b by itself (reprotect =
#               auto). a loses power while the guest writes its disk (the
#               counter, plus 1 MiB `write`s to diskw, port 7002, back to
#               back) -> b fences a through its BMC and takes over -> a is
#               powered on through its BMC (its boot script starts its
#               config, corosync and havmsd; /var/lib/havms, its "disk",
#               kept the image with its un-ACKed last writes, /dev/shm is
#               gone) -> b re-protects towards a by itself, the disk
#               incrementally; held by `havmsctl pause`, both images are
#               bit-identical; then b loses power and a takes over again.
#   auto        the same first half with failback = auto, preferred_host =
#               a, failback_delay_s = 2: after the repair b re-protects to
#               a, then switches web01 back to a by itself, which ends
#               protected with b as its standby.
#   switchover  `havmsctl switchover web01` 5 times back and forth under
#               load, typed on a, a, b, b, a (so on the owner and on the
#               standby, which forwards it), with --to twice: after each
#               switch the old primary is re-protected by a memory re-seed
#               (hashes; only the pages the guest changed since the switch
#               go again) and an incremental disk resync; refusals when
#               web01 is not protected and with --to a host that is not
#               its standby.
# Prints the client-visible gaps (longest silence between two answers),
# the re-protection times and what the resyncs sent.
set -u
. "$(dirname "$0")/../lib/failover.sh"
hv_fo_need
MODE=${1:-repair}
case $MODE in
repair) HV_FAILBACK='reprotect = auto' ;;
auto) HV_FAILBACK=$'reprotect = auto\nfailback = auto\nfailback_delay_s = 2' ;;
switchover) HV_FAILBACK='reprotect = auto' ;;
*) echo "FAIL: unknown mode $MODE (repair, auto, switchover)"; exit 2 ;;
esac
command -v e2fsck >/dev/null && command -v debugfs >/dev/null ||
        { echo "FAIL: needs e2fsck and debugfs (e2fsprogs)"; exit 1; }
HV_DISK_MIB=64
EXTRA="havms.dirty_mib_s=2"
hv_cluster_create "$EXTRA" || { echo "FAIL: test bed"; exit 1; }
hv_boot_script a b "$EXTRA" && hv_boot_script b a "$EXTRA" || { echo "FAIL: boot scripts"; exit 1; }

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# gap_ms FROM_MS TO_MS: the longest silence between two answers of the
# client that touches [FROM_MS, TO_MS] (the last answer before FROM_MS
# counts, so an outage that starts there is seen whole).
gap_ms() {
        python3 - "$HV_VALUES" "$1" "$2" <<'PY'
import sys
t = [int(l.split()[0]) / 1e6 for l in open(sys.argv[1]) if l[:1].isdigit()]
lo, hi = float(sys.argv[2]), float(sys.argv[3])
before = [x for x in t if x < lo]
win = ([before[-1]] if before else []) + [x for x in t if lo <= x <= hi]
gaps = [b - a for a, b in zip(win, win[1:])]
print(round(max(gaps)) if gaps else -1)
PY
}

# snap_sync HOST: keep HOST's last (re-)sync figures (status "last_sync")
# at once, before a failback may move the VM; snap KEY reads one of them,
# snap_line prints them all on one line
snap_sync() { hvctl "$1" status web01 --json >"$HV_WORK/snap.json" 2>/dev/null; }
snap() {
        python3 -c '
import json, sys
print(json.load(open(sys.argv[1]))["vms"][0].get("last_sync", {}).get(sys.argv[2], ""))' \
                "$HV_WORK/snap.json" "$1" 2>/dev/null
}
snap_line() {
        python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))["vms"][0].get("last_sync", {})
print(" ".join("%s=%s" % (k, s.get(k, "?")) for k in ("memory", "pages_same", "pages_sent",
      "precopy_pages", "disks_incremental", "disks_full", "disk_blocks", "disk_sent_bytes",
      "hash_bytes", "wire_bytes")))' "$HV_WORK/snap.json" 2>/dev/null
}

# event_text HOST ID: the text of HOST's last event with this ID
event_text() {
        hvctl "$1" events --json -n 500 2>/dev/null | python3 -c '
import json, sys
ev = [e for e in json.load(sys.stdin)["events"] if e["id"] == sys.argv[1]]
print(ev[-1].get("text", ev[-1].get("message", "")) if ev else "")' "$2"
}

# web01 started on a and protected to b by the controller (no `protect`)
start_protected_by_itself() {
        hv_must "ext4 data disk on a" hv_make_disk a
        hv_must "start web01 on a" hvctl a start web01
        if [ "$MODE" = switchover ]; then
                # protection is seconds away (a full sync of 256 MiB + 64 MiB)
                out=$(hvctl a switchover web01 2>&1)
                rc=$?
                echo "switchover while web01 is not protected yet: $out"
                # refused either way: havmsd has not seen it run yet, or
                # has and it is not protected
                hv_check "switchover refused while web01 is not protected (exit $rc)" \
                        eval '[ "$rc" != 0 ] && grep -qE "not protected|runs on no member host" <<<"$out"'
        fi
        hv_must "guest answers on the LAN" hv_wait_guest 90
        hv_must "a protects web01 to b by itself" hv_wait_state a web01 protected 180
        hv_must "b holds a committed replica" hv_wait_state b web01 backup-standby 30
        hv_check "a's controller logged the re-protection (FB-8001, FB-8002)" \
                eval 'hv_event_seen a HAVMS-FB-8001 && tb_wait_for 10 hv_event_seen a HAVMS-FB-8002'
        hv_must "client connected" hv_fo_client_start
}

# diskw load: 1 MiB written and fdatasync'ed per request, back to back
disk_writer_start() {
        tb_client_spawn "$HV_WORK/diskw.log" bash -c \
                "while :; do '$HV_GUEST/bin/hvq' -a $HV_GUEST_IP -t 2 7002 'write 1' || sleep 0.2; done"
        DISKW=$TB_LAST_PID
        tb_on_cleanup "kill $DISKW 2>/dev/null"
}
disk_writer_stop() { kill "$DISKW" 2>/dev/null; }
disk_writes() { grep -c '^ok bytes' "$HV_WORK/diskw.log"; }

# power_on HOST: through its BMC (ipmitool from the other host over the
# management network); the boot script starts corosync and havmsd
power_on() {
        local o=$2
        tb_exec "$o" ipmitool -I lanplus -C 3 -H "$(tb_bmc_addr "$1")" -U "$(tb_bmc_user "$1")" \
                -P "$(tb_bmc_password "$1")" chassis power on
}

# takeover PRIM STBY: power PRIM off, STBY fences it and takes over
takeover() {
        local prim=$1 stby=$2 before seen t0 gen
        gen=$(hv_field "$stby" web01 generation)
        before=$(hv_client_n)
        seen=$(hv_client_last)
        t0=$(now_ms)
        tb_poweroff "$prim"
        hv_must "$stby takes web01 over by itself" hv_wait_state "$stby" web01 running 60
        hv_must "client gets answers again" tb_wait_for 60 hv_client_more_than "$before"
        hv_check "generation went up" test "$(hv_field "$stby" web01 generation)" -gt "$gen"
        hv_check "$stby verified $prim off (fence through its BMC) before it ran the VM" \
                hv_event_before "$stby" HAVMS-FN-6003 "$stby" HAVMS-FO-5013
        hv_check "post-activate hook ran on $stby" \
                tb_wait_for 10 hv_hook_seen "$stby" "^post-activate host=$stby vm=web01 .*peer=$prim"
        hv_check "connection survived the takeover" tb__not grep -q '^END' "$HV_VALUES"
        hv_check "counter resumed at or after the last value seen ($seen)" \
                test "$(hv_client_last)" -ge "$seen"
        sleep 1
        echo "takeover by $stby: client-visible gap $(gap_ms "$t0" "$(now_ms)") ms"
}

# repair PRIM_OLD OWNER: PRIM_OLD powered on through its BMC, OWNER
# re-protects web01 towards it by itself; prints the figures
repair() {
        local h=$1 owner=$2 t_on t_prot
        t_on=$(now_ms)
        hv_must "power $h on through its BMC" power_on "$h" "$owner"
        hv_must "$h boots: corosync and havmsd up" \
                tb_wait_for 60 test -S "$(tb_path "$h" /run/havms/havmsd.sock)"
        hv_must "$h is a member again" hv_corosync_wait_members "$owner" 2 30
        hv_must "$owner re-protects web01 to $h by itself" hv_wait_state "$owner" web01 protected 180
        t_prot=$(now_ms)
        snap_sync "$owner"
        hv_must "$h holds a committed replica" hv_wait_state "$h" web01 backup-standby 30
        REPROTECT_MS=$((t_prot - t_on))
        echo "repair of $h: power-on -> $owner protected: $REPROTECT_MS ms (status polled)"
        echo "  $owner: $(event_text "$owner" HAVMS-FB-8001)"
        echo "  $owner: $(event_text "$owner" HAVMS-FB-8002)"
        echo "  last sync: $(snap_line)"
        hv_check "$owner's controller started it (FB-8001) and saw it committed (FB-8002)" \
                eval "hv_event_seen $owner HAVMS-FB-8001 && hv_event_seen $owner HAVMS-FB-8002"
        hv_check "the disk resync was incremental (disks_incremental=1, disks_full=0)" \
                eval '[ "$(snap disks_incremental)" = 1 ] && [ "$(snap disks_full)" = 0 ]'
        DSENT=$(snap disk_sent_bytes)
        hv_check "it sent under 16 MiB of the 64 MiB disk ($DSENT bytes)" \
                test "${DSENT:-67108864}" -lt 16777216
        # /dev/shm was lost with the power: memory goes whole
        hv_check "memory went whole ($h lost its RAM file): memory=full" \
                test "$(snap memory)" = full
}

# same_disks OWNER OTHER: with web01 held, both images are bit-identical
same_disks() {
        local s1 s2
        hv_must "pause web01 on $1" hvctl "$1" pause web01
        s1=$(sha256sum <"$(tb_path "$1" "$HV_DISK")")
        s2=$(sha256sum <"$(tb_path "$2" "$HV_DISK")")
        echo "sha256 $1: ${s1%% *}"
        echo "sha256 $2: ${s2%% *}"
        hv_check "with web01 held, $1's and $2's disk images are bit-identical" test "$s1" = "$s2"
        hv_must "resume web01 on $1" hvctl "$1" resume web01
}

# ----------------------------------------------------------------------------
start_protected_by_itself

if [ "$MODE" = repair ] || [ "$MODE" = auto ]; then
        disk_writer_start
        hv_must "the guest writes its disk (diskw answers)" tb_wait_for 30 eval '[ "$(disk_writes)" -gt 2 ]'
        sleep "$((3 + RANDOM % 3)).$((RANDOM % 10))"
        n_before=$(disk_writes)
        echo "--- a loses power while the guest writes (diskw: $n_before MiB written so far)"
        takeover a b
        hv_check "b waits for a candidate, no standby (state running)" hv__state_is b web01 running
        sleep 3
        echo "--- a is repaired (powered on through its BMC)"
        repair a b
        echo "diskw: $(disk_writes) MiB written in all"
fi

case $MODE in
repair)
        hv_check "b notes the failback as pending (failback = manual, FB-8008)" \
                tb_wait_for 10 hv_event_seen b HAVMS-FB-8008
        sleep 2
        same_disks b a
        hv_check "b's status: protected" eval 'hvctl b status | grep -q "web01.*protected"'
        sleep 3
        echo "--- b (the new primary) loses power"
        takeover b a
        disk_writer_stop
        sleep 2
        hv_fo_client_judge a
        ;;
auto)
        t_fb=$(hv_event_ms b HAVMS-FB-8002)
        hv_must "b starts the failback by itself (FB-8009)" tb_wait_for 60 hv_event_seen b HAVMS-FB-8009
        t_start=$(hv_event_ms b HAVMS-FB-8009)
        echo "  b: $(event_text b HAVMS-FB-8009)"
        # the controller times the delay on the monotonic clock, events
        # carry wall-clock ms: a few ms of slack
        hv_check "after failback_delay_s: $((t_start - t_fb)) ms after b was protected (>= 2 s)" \
                test "$((t_start - t_fb))" -ge 1950
        hv_must "web01 runs on a again" hv_wait_state a web01 protected 180
        t_end=$(now_ms)
        snap_sync a
        hv_must "b is a's standby" hv_wait_state b web01 backup-standby 30
        hv_check "switchover done (FB-8006)" eval 'hv_event_seen a HAVMS-FB-8006 || hv_event_seen b HAVMS-FB-8006'
        t_done=$(hv_event_ms b HAVMS-FB-8006) dh=b
        [ -n "$t_done" ] || { t_done=$(hv_event_ms a HAVMS-FB-8006); dh=a; }
        echo "  $dh: $(event_text $dh HAVMS-FB-8006)"
        gap=$(gap_ms "$((t_start - 500))" "$((${t_done:-$t_end} + 3000))")
        echo "failback to a: client-visible gap $gap ms; a protected again $((t_end - t_start)) ms after the start (status polled)"
        echo "  a's re-seed of b: $(snap_line)"
        hv_check "a re-protected b by a memory re-seed" test "$(snap memory)" = re-seed
        hv_check "the disk resync was incremental" test "$(snap disks_incremental)" = 1
        hv_check "connection alive after the failback" tb__not grep -q '^END' "$HV_VALUES"
        n=$(hv_client_n)
        hv_check "the client gets answers from a" tb_wait_for 20 hv_client_more_than $((n + 20))
        hv_check "no further failback note: web01 is on its preferred host" \
                eval '! hvctl a status | grep -q "pending"'
        disk_writer_stop
        sleep 1
        same_disks a b
        hv_fo_client_judge a
        ;;
switchover)
        owner=a stby=b
        # typed on the owner, then its standby (forwarded), each twice
        typed=(a a b b)
        rounds=${HAVMS_SWITCHOVERS:-5}
        gaps=()
        sleep 3
        for k in $(seq 1 "$rounds"); do
                on=${typed[$(((k - 1) % 4))]}
                to=
                [ "$k" = 2 ] || [ "$k" = 4 ] && to="--to $stby"
                gen=$(hv_field "$owner" web01 generation)
                n0=$(hv_client_n)
                t0=$(now_ms)
                # shellcheck disable=SC2086
                out=$(hvctl "$on" switchover web01 $to 2>&1)
                rc=$?
                t1=$(now_ms)
                echo "switch $k (typed on $on${to:+ $to}): $out"
                hv_must "switch $k: switchover $owner -> $stby answered ok ($((t1 - t0)) ms)" test "$rc" = 0
                if [ "$k" = 1 ]; then
                        out=$(hvctl "$stby" switchover web01 2>&1)
                        rc=$?
                        echo "switchover right after the switch: $out"
                        hv_check "refused while $stby re-protects (exit $rc, \"not protected\")" \
                                eval '[ "$rc" != 0 ] && grep -q "not protected" <<<"$out"'
                fi
                t=$owner owner=$stby stby=$t
                hv_check "switch $k: generation went up" \
                        test "$(hv_field "$owner" web01 generation)" -gt "$gen"
                hv_must "switch $k: $owner protected again by itself" \
                        hv_wait_state "$owner" web01 protected 120
                t2=$(now_ms)
                snap_sync "$owner"
                hv_must "switch $k: $stby holds a committed replica" \
                        hv_wait_state "$stby" web01 backup-standby 30
                hv_check "switch $k: $stby's copy was handed over (last_exit handed-over)" \
                        hv_field_has "$stby" web01 last_exit '^handed-over$'
                sleep 1
                g=$(gap_ms "$t0" "$((t1 + 2000))")
                gaps+=("$g")
                sent=$(snap pages_sent)
                echo "switch $k: client-visible gap $g ms, command $((t1 - t0)) ms, protected again after $((t2 - t1)) ms"
                echo "  re-seed of $stby: $(snap_line)"
                hv_check "switch $k: memory re-seeded by hashes" \
                        test "$(snap memory)" = re-seed
                hv_check "switch $k: under a quarter of RAM (16384 of 65536 pages) went again ($sent)" \
                        test "${sent:-65536}" -lt 16384
                hv_check "switch $k: the disk resync was incremental" \
                        test "$(snap disks_incremental)" = 1
                hv_check "switch $k: connection alive, the client gets answers" \
                        eval 'tb__not grep -q "^END" "$HV_VALUES" && tb_wait_for 20 hv_client_more_than $((n0 + 20))'
                sleep 2
        done
        out=$(hvctl "$stby" switchover web01 --to "$owner" 2>&1)
        rc=$?
        echo "switchover --to $owner (the owner): $out"
        hv_check "--to a host that is not the standby is refused (exit $rc)" \
                eval '[ "$rc" != 0 ] && grep -q "is not the standby" <<<"$out"'
        hv_check "... and web01 stays on $owner, protected" hv__state_is "$owner" web01 protected
        sorted=$(printf '%s\n' "${gaps[@]}" | sort -n | tr '\n' ' ')
        # the benchmark's figures (test/bench/run failback)
        [ "${HAVMS_FAILBACK_JSON:-0}" = 1 ] && python3 -c '
import json, statistics, sys
g = [float(x) for x in sys.argv[1:]]
print(json.dumps({"switchovers": len(g), "switchover_downtime_ms_p50": statistics.median(g),
                  "switchover_downtime_ms_max": max(g), "gaps_ms": g,
                  "method": "havmsctl switchover (havmsd: handover, RELINQUISH, activation)"}))' "${gaps[@]}"
        echo "switchover gaps (ms): ${gaps[*]}; p50 $(printf '%s\n' "${gaps[@]}" | sort -n | sed -n 3p) max $(printf '%s\n' "${gaps[@]}" | sort -n | tail -n1)"
        echo "sorted: $sorted"
        same_disks "$owner" "$stby"
        hv_fo_client_judge "$owner"
        ;;
esac
hv_summary "failback-$MODE"
