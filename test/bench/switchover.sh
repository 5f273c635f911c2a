#!/bin/bash
# switchover.sh [ROUNDS]: part (b) of `test/bench/run failback` — planned
# switchovers back and forth under load (dirtier 4 MiB/s, ext4 data disk),
# with the consistency client on ONE TCP connection throughout, and the
# client-visible downtime of each: the longest silence between two answers
# from the moment the switch starts until the VM is protected again in the
# other direction (+1 s).
#
# TODO(switchover): this chains checkpointd's halves by hand, as
# test/integration/handover.sh does (`handover` on the primary, `activate`
# on the standby, `protect --peer` back), on a pair without havmsd. Once
# havmsd's `havmsctl switchover VM [--to HOST]` (branch `failback`) is on
# main, replace switch_once's three commands by that one command on the
# cluster test bed (test/lib/failover.sh, hv_cluster_create) and keep the
# same timestamps: t_start before it, t_protected when it reports protected.
#
# Per round it also splits the time: the handover command, the activate
# command (and checkpointd's own activation_ms), the first answer after
# the activation, and the longest silence while the reversed protection
# syncs (its first epoch stops the VM), and the client's TCP
# retransmissions: a round with one is a request lost with the old copy
# (it reached it after its final stop), which costs the client its
# retransmission timeout (>= 200 ms) — see docs/testing.md. The last line
# is one JSON object.
set -u
. "$(dirname "$0")/../lib/failover.sh"
hv_need
ROUNDS=${1:-6}
HV_DISK_MIB=64
ms() { date +%s%3N; }
# client_retrans: retransmissions so far on the client's connection to the
# counter (ss's "retrans:CUR/TOTAL"): a request lost with the old copy
# costs the client one retransmission timeout (>= 200 ms on Linux)
client_retrans() {
        tb_client ss -tin dst "$HV_GUEST_IP" dport = :7000 2>/dev/null |
                sed -n 's/.*retrans:[0-9]*\/\([0-9]*\).*/\1/p' | head -n1 | grep . || echo 0
}

hv_pair_create "havms.dirty_mib_s=4" || { echo "FAIL: test bed"; exit 1; }
hv_fo_protected_with_client
sleep 3

marks=$HV_WORK/marks   # one line per round: the host clock's milestones
from=a to=b
for round in $(seq 1 "$ROUNDS"); do
        n0=$(hv_client_n)
        # what one havmsctl call costs here (nsenter, process start, socket
        # round trip): the two commands of the switch each pay it, a
        # switchover inside havmsd would not
        t_ctl=$(ms); hvctl "$to" status web01 >/dev/null; ctl_ms=$(($(ms) - t_ctl))
        rt0=$(client_retrans)
        t_start=$(ms)
        out=$(hvctl "$from" handover web01 2>&1)
        hv_check "round $round: handover on $from ($out)" test $? = 0
        t_handed=$(ms)
        act=$(hvctl "$to" activate web01 --json) || hv_must "round $round: activate on $to" false
        t_active=$(ms)
        act_ms=$(echo "$act" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("activation_ms", ""))' 2>/dev/null)
        hv_must "round $round: protect back to $from" hvctl "$to" protect web01 --peer "$from"
        hv_must "round $round: $to protected" hv_wait_state "$to" web01 protected 180
        t_prot=$(ms)
        mem=$(hv_sync_field "$to" web01 memory)
        sent=$(hv_sync_field "$to" web01 pages_sent)
        hv_check "round $round: the old primary $from was re-seeded by hashes ($sent pages sent)" \
                test "$mem" = re-seed
        rt=$(( $(client_retrans) - rt0 ))
        echo "$round $from $to $t_start $t_handed $t_active $t_prot ${act_ms:-0} ${sent:-0} $ctl_ms $rt" >>"$marks"
        hv_check "round $round: the client got answers after the switch" \
                tb_wait_for 20 hv_client_more_than $((n0 + 20))
        sleep 2
        t=$from; from=$to; to=$t
done
hv_fo_client_judge "$from"

report=$(python3 - "$HV_VALUES" "$marks" <<'PY'
import json, statistics, sys
vals = [int(f[0]) / 1e6 for f in (l.split() for l in open(sys.argv[1])) if f and f[0].isdigit()]
rounds = []
for f in (l.split() for l in open(sys.argv[2]) if l.strip()):
    n, frm, to = int(f[0]), f[1], f[2]
    t_start, t_handed, t_active, t_prot, act_ms, sent, ctl, rt = map(float, f[3:11])
    # the longest silence between two consecutive answers x, y with y
    # after a and x before b (an answer on its way at a does not hide it)
    def longest(a, b):
        g = [y - x for x, y in zip(vals, vals[1:]) if y > a and x < b]
        return max(g) if g else None
    down = longest(t_start, t_prot + 1000)
    # split by where the silence began: before the new copy ran (the
    # handover and activation), or after (the reversed protection's sync
    # and first epoch)
    sw = longest(t_start, t_active)
    rp = max([y - x for x, y in zip(vals, vals[1:]) if t_active <= x < t_prot + 1000] or [0])
    first = [v for v in vals if v > t_active]
    rounds.append({
        "round": n, "from": frm, "to": to,
        "downtime_ms": round(down, 1) if down is not None else None,
        "silence_switch_ms": round(sw, 1) if sw is not None else None,
        "silence_reprotect_ms": round(rp, 1) if rp is not None else None,
        "handover_cmd_ms": int(t_handed - t_start),
        "activate_cmd_ms": int(t_active - t_handed),
        "activation_ms": int(act_ms),
        "first_answer_after_activate_ms": round(first[0] - t_active, 1) if first else None,
        "reprotect_ms": int(t_prot - t_active),
        "reseed_pages_sent": int(sent),
        "ctl_call_ms": int(ctl),
        "client_tcp_retransmits": int(rt),
    })
def med(k):
    xs = [r[k] for r in rounds if r.get(k) is not None]
    return round(statistics.median(xs), 1) if xs else None
def mx(k):
    xs = [r[k] for r in rounds if r.get(k) is not None]
    return max(xs) if xs else None
print(json.dumps({
    "switchovers": len(rounds),
    "switchover_downtime_ms_p50": med("downtime_ms"),
    "switchover_downtime_ms_max": mx("downtime_ms"),
    "switch_silence_ms_p50": med("silence_switch_ms"),
    "reprotect_silence_ms_p50": med("silence_reprotect_ms"),
    "handover_cmd_ms_p50": med("handover_cmd_ms"),
    "activate_cmd_ms_p50": med("activate_cmd_ms"),
    "activation_ms_p50": med("activation_ms"),
    "first_answer_after_activate_ms_p50": med("first_answer_after_activate_ms"),
    "switch_reprotect_ms_p50": med("reprotect_ms"),
    "ctl_call_ms_p50": med("ctl_call_ms"),
    "rounds_with_client_retransmit": sum(1 for r in rounds if r["client_tcp_retransmits"] > 0),
    "method": "handover + activate + protect --peer (checkpointd commands, no havmsd)",
    "rounds": rounds,
}))
PY
)
echo "$report"
hv_summary switchover || exit 1
echo "$report"
