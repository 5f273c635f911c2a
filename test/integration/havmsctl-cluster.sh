#!/bin/bash
# havmsctl's cluster view against fake daemons (test/tools/fake_ctl.py
# answering canned JSON on unix sockets in a temp dir; no test bed, no
# root, no QEMU):
#  - `status` (no VM): havmsd's view first (Cluster: host, corosync,
#    quorum, checkpointd, members with link states and fencing readiness;
#    VMs: owner, generation, protection, note), then checkpointd's table;
#  - havmsd absent, refusing or hung: one line saying so, checkpointd's
#    view as before, exit 0; checkpointd absent: the cluster view and exit 3;
#  - `status --json`: {"cluster": ..., "local": ...}, cluster null without
#    havmsd; `status VM --json` is checkpointd's answer, unchanged (what
#    test/lib/havms.sh hv_field parses), and havmsd is not asked;
#  - `events`: one line per event, "15:40:01.123 notice HAVMS-FO-5003
#    web01 b: text"; -n N is sent as max; --json is havmsd's answer;
#    havmsd absent: a clear error and exit 3; bad -n: exit 2.
set -u
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${HAVMS_BUILD:-$top/build}
ctl=$build/havmsctl/havmsctl
fake=$top/test/tools/fake_ctl.py
command -v python3 >/dev/null || { echo "SKIP: python3 missing"; exit 77; }
[ -x "$ctl" ] || { echo "FAIL: no havmsctl in $build"; exit 1; }

tmp=$(mktemp -d /tmp/havms-ctlcl-XXXXXX)
pids=()
cleanup() {
        local p
        for p in "${pids[@]}"; do
                kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
        done
        rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

PASS=0 FAIL=0
ok() { PASS=$((PASS + 1)); echo "PASS: $*"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL: $*"; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
summary() { echo "havmsctl-cluster: $PASS passed, $FAIL failed"; [ "$FAIL" = 0 ]; }

# serve NAME [--hang]: a fake daemon on $tmp/NAME.sock answering from $tmp/NAME/
serve() {
        local name=$1; shift
        mkdir -p "$tmp/$name"
        python3 "$fake" "$tmp/$name.sock" "$tmp/$name" "$@" 2>>"$tmp/fake.log" &
        pids+=($!)
        for _ in $(seq 100); do
                [ -S "$tmp/$name.sock" ] && return 0
                sleep 0.05
        done
        echo "fake $name did not start: $(cat "$tmp/fake.log")"
        return 1
}

# The canned answers: what havmsd (failover/agent.c) and checkpointd send.
ts=$(date -u -d 2026-12-01T15:40:01Z +%s)
mkdir -p "$tmp/havmsd" "$tmp/ckpt" "$tmp/refusing"
cat >"$tmp/havmsd/cluster-status.json" <<EOF
{"ok":true,"host":"a","corosync":true,"quorate":true,"quorum":"fence",
 "members":[{"name":"a","nodeid":1,"member":true,"self":true},
  {"name":"b","nodeid":2,"member":true,"self":false,
   "links":[{"id":0,"connected":true},{"id":1,"connected":false}],
   "fence":{"configured":true,"levels":2,"state":"none","last":"","monitor":"ok"}},
  {"name":"c","nodeid":3,"member":false,"self":false,"links":[],
   "fence":{"configured":true,"levels":1,"state":"failed","last":"fence_ipmilan: timeout","monitor":"failed: no route to BMC"}},
  {"name":"d","nodeid":4,"member":true,"self":false,"links":[{"id":0,"connected":true}],
   "fence":{"configured":false,"levels":0,"state":"none","last":"","monitor":"unchecked"}}],
 "vms":[{"name":"web01","owner":"a","generation":5,"protection":"protected","note":"",
   "hosts":[{"host":"a","state":"protected","generation":5,"epoch":1234,"peer":"b","last_exit":""},
            {"host":"b","state":"backup-ready","generation":5,"epoch":1234,"peer":"a","last_exit":""}]},
  {"name":"db01","owner":"b","generation":3,"protection":"isolated","note":"standby a lost, output held",
   "hosts":[{"host":"b","state":"isolated","generation":3,"epoch":77,"peer":"a","last_exit":""}]}],
 "checkpointd":{"running":true,"pid":123,"restarts":0}}
EOF
cat >"$tmp/havmsd/events.json" <<EOF
{"ok":true,"events":[
 {"time":"2026-12-01T15:40:01.123Z","ts_ms":$((ts * 1000 + 123)),"id":"HAVMS-FO-5003","level":"notice","vm":"web01","host":"b","text":"fenced a, activating"},
 {"time":"2026-12-01T15:40:02.005Z","ts_ms":$((ts * 1000 + 1005)),"id":"HAVMS-FO-5010","level":"warning","vm":"","host":"a","text":"link 1 down"}]}
EOF
cat >"$tmp/ckpt/status.json" <<'EOF'
{"ok":true,"host":"a","vms":[{"name":"web01","state":"protected","role":"primary","peer":"b",
 "link":"up","committed_epoch":1234,"lag_ms":3,"last_pause_ms":1.5,"generation":5}]}
EOF
serve havmsd && serve ckpt && serve refusing && serve hung --hang || exit 1
run() { "$ctl" -s "$tmp/ckpt.sock" "$@"; }
H=(-S "$tmp/havmsd.sock")
export TZ=UTC

# --- status, no VM: the cluster, then this host -----------------------
out=$(run "${H[@]}" status); rc=$?
echo "$out"
check "status exits 0" [ "$rc" = 0 ]
has() { grep -qE -- "$1" <<<"$out" || { echo "  missing: $1"; return 1; }; }
check "Cluster line: host, corosync, quorum" has '^Cluster: host a, corosync up, quorate \(quorum: fence\)$'
check "checkpointd supervision" has '^  checkpointd: running, pid 123, 0 restarts$'
check "self member" has '^  member a \(node 1\): online, this host$'
check "links and fencing of b" \
        has '^  member b \(node 2\): online; link0 up, link1 DOWN; fence: 2 levels, monitor ok$'
check "c offline, its monitor and last fence failed" \
        has '^  member c \(node 3\): OFFLINE; fence: 1 level, monitor failed: no route to BMC, last fence FAILED \(fence_ipmilan: timeout\)$'
check "d without fencing" has '^  member d \(node 4\): online; link0 up; fence: NOT CONFIGURED$'
check "VM line: owner, generation, protection, hosts" \
        has '^  web01 +a +5 protected +a:protected b:backup-ready$'
check "VM note" has '^  db01 +b +3 isolated +b:isolated  -- standby a lost, output held$'
check "then checkpointd's table" has '^web01 +protected +primary +b '
order() { awk '/^Cluster:/{c=NR} /^VMs:/{v=NR} /^host a/{h=NR} END{exit !(c && v > c && h > v)}' <<<"$out"; }
check "order: Cluster, VMs, local" order
check "status asked havmsd for cluster-status" grep -q '"cmd":"cluster-status"' "$tmp/havmsd/requests.log"

# corosync down: said plainly, and "quorate" appears nowhere
cp "$tmp/havmsd/cluster-status.json" "$tmp/cs.json"
python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
d.update(corosync=False, quorate=False, vms=[])
json.dump(d, open(sys.argv[1], "w"))' "$tmp/havmsd/cluster-status.json"
out=$(run "${H[@]}" status)
check "corosync down, no quorum" has '^Cluster: host a, corosync DOWN, NO QUORUM \(quorum: fence\)$'
check "no quorum: no 'quorate' anywhere" bash -c '! grep -qi quorate <<<"$1"' _ "$out"
check "no VMs: said so" has '^VMs: none known to havmsd$'
mv "$tmp/cs.json" "$tmp/havmsd/cluster-status.json"

# --- status --json -----------------------------------------------------
js=$(run "${H[@]}" status --json); rc=$?
check "status --json exits 0" [ "$rc" = 0 ]
jpy() { python3 -c "import sys,json; d=json.load(sys.stdin); sys.exit(0 if ($1) else 1)" <<<"$js"; }
check "--json: cluster and local" jpy 'd["cluster"]["host"]=="a" and d["cluster"]["vms"][1]["note"].startswith("standby") and d["local"]["vms"][0]["name"]=="web01"'

# --- status VM --json: checkpointd's answer exactly, havmsd not asked -------
: >"$tmp/havmsd/requests.log"
js=$(run "${H[@]}" status web01 --json); rc=$?
check "status VM --json exits 0" [ "$rc" = 0 ]
check "status VM --json is checkpointd's answer" jpy 'd == json.load(open("'"$tmp"'/ckpt/status.json"))'
check "hv_field's parse still works" \
        test "$(python3 -c 'import sys,json; print(json.load(sys.stdin)["vms"][0]["state"])' <<<"$js")" = protected
check "status VM sent the VM to checkpointd" grep -q '"cmd":"status","vm":"web01"' "$tmp/ckpt/requests.log"
check "status VM did not ask havmsd" test ! -s "$tmp/havmsd/requests.log"
out=$(run "${H[@]}" status web01)
check "status VM text has no cluster block" bash -c '! grep -q "^Cluster:" <<<"$1" && grep -q "^web01 " <<<"$1"' _ "$out"

# --- havmsd absent, refusing, hung: one line, checkpointd's view, exit 0 ---
for how in absent refusing hung; do
        case $how in
        absent) S=$tmp/nothere.sock ;;
        *) S=$tmp/$how.sock ;;
        esac
        t0=$(date +%s%N)
        out=$(run -S "$S" status 2>"$tmp/err"); rc=$?
        ms=$((($(date +%s%N) - t0) / 1000000))
        echo "$out"
        check "havmsd $how: status exits 0 (${ms} ms)" [ "$rc" = 0 ]
        check "havmsd $how: one line says so" \
                test "$(grep -c havmsd <<<"$out")" = 1 -a "$(head -n1 <<<"$out" | grep -c '^havmsd: ')" = 1
        check "havmsd $how: no cluster block" bash -c '! grep -qE "^(Cluster|VMs):" <<<"$1"' _ "$out"
        check "havmsd $how: checkpointd's view follows" has '^web01 +protected +primary'
        check "havmsd $how: nothing on stderr" test ! -s "$tmp/err"
        js=$(run -S "$S" status --json 2>/dev/null); rc=$?
        check "havmsd $how: --json has cluster null, exit 0" \
                bash -c '[ "$1" = 0 ] && python3 -c "import sys,json; d=json.load(sys.stdin); sys.exit(d[\"cluster\"] is not None or d[\"local\"][\"host\"] != \"a\")" <<<"$2"' _ "$rc" "$js"
done
check "absent: the line names the socket" \
        bash -c '"$1" -s "$2" -S "$3" status | head -n1 | grep -q "not reachable at $3"' _ "$ctl" "$tmp/ckpt.sock" "$tmp/nothere.sock"
check "HAVMS_HAVMSD_SOCKET is the default" \
        bash -c 'HAVMS_HAVMSD_SOCKET=$3 "$1" -s "$2" status | grep -q "^Cluster: host a"' _ "$ctl" "$tmp/ckpt.sock" "$tmp/havmsd.sock"

# --- checkpointd absent: the cluster view still shows, exit 3 ------------
out=$("$ctl" -s "$tmp/nothere.sock" "${H[@]}" status 2>"$tmp/err"); rc=$?
check "checkpointd absent: exit 3" [ "$rc" = 3 ]
check "checkpointd absent: cluster shown" has '^Cluster: host a'
check "checkpointd absent: said on stderr" grep -q "cannot talk to checkpointd" "$tmp/err"
js=$("$ctl" -s "$tmp/nothere.sock" "${H[@]}" status --json 2>/dev/null); rc=$?
check "checkpointd absent: --json local null, exit 3" \
        bash -c '[ "$1" = 3 ] && python3 -c "import sys,json; d=json.load(sys.stdin); sys.exit(d[\"local\"] is not None or d[\"cluster\"][\"host\"] != \"a\")" <<<"$2"' _ "$rc" "$js"

# --- events -------------------------------------------------------------
: >"$tmp/havmsd/requests.log"
out=$(run "${H[@]}" events); rc=$?
echo "$out"
check "events exits 0" [ "$rc" = 0 ]
check "events: exact lines, oldest first" test "$out" = "15:40:01.123 notice HAVMS-FO-5003 web01 b: fenced a, activating
15:40:02.005 warning HAVMS-FO-5010 - a: link 1 down"
check "events: max 50 by default" grep -q '"cmd":"events","args":{"max":50}' "$tmp/havmsd/requests.log"
run "${H[@]}" events -n 7 >/dev/null
check "events -n 7: max 7" grep -q '"max":7' "$tmp/havmsd/requests.log"
run "${H[@]}" -n 8 events >/dev/null
check "-n before the command" grep -q '"max":8' "$tmp/havmsd/requests.log"
js=$(run "${H[@]}" events --json); rc=$?
check "events --json: havmsd's answer" \
        bash -c '[ "$1" = 0 ] && python3 -c "import sys,json; d=json.load(sys.stdin); sys.exit(len(d[\"events\"]) != 2 or d[\"events\"][0][\"id\"] != \"HAVMS-FO-5003\")" <<<"$2"' _ "$rc" "$js"
out=$(run -S "$tmp/nothere.sock" events 2>"$tmp/err"); rc=$?
check "events, havmsd absent: exit 3" [ "$rc" = 3 ]
check "events, havmsd absent: clear error" grep -q "cannot talk to havmsd at $tmp/nothere.sock: .*(is it running?)" "$tmp/err"
check "events, havmsd absent: nothing on stdout" test -z "$out"
run -S "$tmp/refusing.sock" events >/dev/null 2>"$tmp/err"; rc=$?
check "events refused: exit 1 with the reason" bash -c '[ "$1" = 1 ] && grep -q "unknown command" "$2"' _ "$rc" "$tmp/err"
for n in 0 -3 x 5x; do
        run "${H[@]}" events -n "$n" >/dev/null 2>&1; rc=$?
        check "events -n '$n' refused (exit 2)" [ "$rc" = 2 ]
done
check "usage lists events and -S" bash -c '"$1" --help | grep -q "^  events" && "$1" --help | grep -q "havmsd-socket"' _ "$ctl"

summary
