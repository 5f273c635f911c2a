#!/bin/bash
# scale.sh [SECONDS]: `test/bench/run scale` (issue 9, "How it is shown").
# The figures and their definitions are in test/bench/run's header; this
# file measures them. The last line is one JSON object.
#
# One fresh pair per guest RAM size (HAVMS_SCALE_SIZES, default
# "256 1024 4096"), torn down before the next: hosts a and b on the
# namespace test bed, web01 with the paced dirtier (8 MiB/s of modified
# bytes in a 64 MiB working set, as in the checkpoint scenario), 40 ms
# epochs. Each pair lives in a subshell of its own, so the test bed's
# cleanup trap tears it down when the subshell ends, even on failure;
# the subshell leaves its figures in a file.
#
# The delta-cache sweep (HAVMS_SCALE_SWEEP, default "0 16 32 64 256";
# empty: none) runs at 256 MiB with a fresh pair per value: the primary's
# checkpointd reads a VM's definition once, when it first learns the VM
# (checkpointd/daemon.c), so rewriting `delta_cache_mib` under a running
# pair would change only the standby's copy. A boot per value (~30 s) is
# the price of not depending on a reload that does not exist.
set -u
. "$(dirname "$0")/../lib/havms.sh"
hv_need
secs=${1:-20}
sizes=${HAVMS_SCALE_SIZES:-256 1024 4096}
sweep=${HAVMS_SCALE_SWEEP-0 16 32 64 256}
unprot_secs=10
sweep_secs=10
load="havms.dirty_mib_s=8 havms.wss_mib=64"
res=$(mktemp -d /tmp/havms-bench-scale.XXXXXX) # not removed by a trap: the
# subshells' test beds install EXIT traps of their own (testbed.sh chains
# a trap found at tb_init, and a subshell still shows its parent's)

# die WHAT: inside a pair's subshell: logs to stderr, the reason to the
# result file, exit (the test bed's trap tears the pair down)
die() {
        echo "bench: $*" >&2
        hv_dump_logs >&2
        echo "{\"error\": \"$*\"}" >"$R"
        exit 1
}

# rate_mib_s SECONDS: the dirtier's modified MiB per wall-clock second
rate_mib_s() {
        local b0 b1 t0 t1
        b0=$(hv_kv "$(hv_guest stat 7001)" bytes) || return 1
        t0=$(date +%s%N)
        sleep "$1"
        b1=$(hv_kv "$(hv_guest stat 7001)" bytes) || return 1
        t1=$(date +%s%N)
        python3 -c "print(round(($b1 - $b0) / 1048576 / (($t1 - $t0) / 1e9), 3))"
}

# anon_kib HOST: RssAnon of HOST's checkpointd (kB, /proc/PID/status): its
# private memory (heap, shadow copy or delta cache, staging, buffers).
# Guest RAM and the replica are shared tmpfs mappings (RssShmem), not in it.
anon_kib() {
        local pid=${HV_DAEMON_PID[$1]}
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = checkpointd ] ||
                { echo "bench: pid $pid on $1 is not checkpointd" >&2; return 1; }
        awk '$1 == "RssAnon:" { print $2 }' "/proc/$pid/status"
}

# boot_protected MIB ACCEL: a fresh pair, web01 booted and answering;
# sets UNPROT (unless NO_UNPROT is set), SYNC_S, SYNC_MS, SYNC_MEM,
# SYNC_LOST, ACCEL_JSON
boot_protected() {
        # shellcheck disable=SC2034 # read by hv_host_config (havms.sh)
        HV_MEMORY_MIB=$1
        # shellcheck disable=SC2034
        HV_VM_EXTRA="accel = $2"
        hv_pair_create "$load" || die "test bed"
        hvctl a start web01 >/dev/null || die "start at $1 MiB"
        hv_wait_guest 300 || die "guest did not come up at $1 MiB"
        ACCEL_JSON=$(hvctl a status web01 --json |
                python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({"auto": d.get("accel"), "vm": d["vms"][0].get("accel")}))')
        sleep 2
        UNPROT=
        if [ -z "${NO_UNPROT:-}" ]; then
                echo "$1 MiB: measuring the unprotected guest rate for $unprot_secs s..." >&2
                UNPROT=$(rate_mib_s "$unprot_secs") || die "unprotected rate"
        fi
        local t0 t1
        t0=$(date +%s%N)
        hvctl a protect web01 >/dev/null || die "protect"
        hv_wait_state a web01 protected 900 || die "protection did not start at $1 MiB"
        t1=$(date +%s%N)
        SYNC_S=$(python3 -c "print(round(($t1 - $t0) / 1e9, 2))")
        SYNC_MS=$(hv_sync_field a web01 ms)
        SYNC_MEM=$(hv_sync_field a web01 memory)
        # last_sync covers the last attempt only: a standby lost during the
        # sync (HAVMS-CK-1003, e.g. an ACK late under load) starts another,
        # a re-seed by hashes; the host clock covers them all
        SYNC_LOST=$(grep -c HAVMS-CK-1003 "$TB_RUN/a-checkpointd.log")
        if [ "$SYNC_LOST" != 0 ]; then
                grep HAVMS-CK-1003 "$TB_RUN/a-checkpointd.log" >&2
                echo "bench: the standby's side:" >&2
                grep -v HAVMS-CK-1009 "$TB_RUN/b-checkpointd.log" | tail -n 8 >&2
        fi
        echo "$1 MiB: initial sync ${SYNC_S} s (checkpointd's last attempt: ${SYNC_MS} ms," \
                "memory $SYNC_MEM, standby lost $SYNC_LOST times)" >&2
}

# identical: `pause` (one more checkpoint, the VM held), sha256 of a's
# guest RAM and b's replica (test/integration/replica-identity.sh), resume.
# Prints true/false.
identical() {
        local ram replica ea eb h1 h2
        ram=$(tb_path a /dev/shm/havms/$HV_VM.ram)
        replica=$(tb_path b /dev/shm/havms/$HV_VM.ram)
        hvctl a pause web01 >/dev/null || { echo false; return 1; }
        ea=$(hv_field a web01 committed_epoch)
        eb=$(hv_field b web01 committed_epoch)
        h1=$(sha256sum <"$ram")
        h2=$(sha256sum <"$replica")
        hvctl a resume web01 >/dev/null || echo "bench: resume failed" >&2
        if [ "$ea" = "$eb" ] && [ "$h1" = "$h2" ]; then echo true; else
                echo "bench: replica differs (epochs $ea/$eb)" >&2
                echo false
        fi
}

# one_size MIB ACCEL: the figures of one RAM size, as a JSON object in $R
one_size() {
        boot_protected "$1" "$2"
        sleep 2
        hvctl a stats web01 --reset >/dev/null
        echo "$1 MiB: measuring the protected guest rate for $secs s..." >&2
        local prot stats ra rb same
        prot=$(rate_mib_s "$secs") || die "protected rate"
        stats=$(hvctl a stats web01 --json) || die "stats"
        ra=$(anon_kib a) && rb=$(anon_kib b) || die "checkpointd's memory"
        same=$(identical)
        python3 - "$1" "$stats" "$UNPROT" "$prot" "$ra" "$rb" "$SYNC_S" "$SYNC_MS" "$same" \
                "$ACCEL_JSON" "$SYNC_MEM" "$SYNC_LOST" >"$R" <<'PY'
import json, sys
mib = int(sys.argv[1])
st = json.loads(sys.argv[2])["stats"]
unprot, prot = float(sys.argv[3]), float(sys.argv[4])
ra, rb = int(sys.argv[5]), int(sys.argv[6])      # kB
ram_kib = mib * 1024
parts = st["pause_parts_ms_p50"]
print(json.dumps({
    "pause_ms_p50": st["pause_ms_p50"], "pause_ms_p99": st["pause_ms_p99"],
    "scan_ms_p50": parts.get("scan"),
    "guest_rate_ratio": round(prot / unprot, 3) if unprot else None,
    "primary_rss_over_ram": round(ra / ram_kib, 3),
    "standby_rss_over_ram": round(rb / ram_kib, 3),
    "initial_sync_s": float(sys.argv[7]),
    "compression_ratio": st["compression_ratio"],
    "pause_parts_ms_p50": parts, "commit_ms_p50": st["commit_ms_p50"],
    "dirty_pages_p50": st["dirty_pages_p50"], "epochs": st["epochs"],
    "delta_cache_mib": st.get("delta_cache_mib"),
    # RssAnon counts only touched memory: the cache fills only as far as
    # the working set reaches. Its bound (slots + pfn index), over RAM:
    "delta_cache_bound_over_ram": round(((st.get("delta_cache_mib") or 0) * 1024 + mib * 1024 * 4 // 4096) / ram_kib, 3),
    "delta_cache_hit_ratio": st.get("delta_cache_hit_ratio"),
    "replica_identical": sys.argv[9] == "true",
    "guest_rate_unprotected": unprot, "guest_rate_protected": prot,
    "primary_rss_anon_mib": round(ra / 1024, 1), "standby_rss_anon_mib": round(rb / 1024, 1),
    "initial_sync_ms_checkpointd": int(sys.argv[8]) if sys.argv[8] else None,
    "initial_sync_memory": sys.argv[11], "initial_sync_standby_lost": int(sys.argv[12]),
    "accel": json.loads(sys.argv[10]),
}))
PY
}

# one_cache VALUE: 256 MiB with delta_cache_mib = VALUE: compression and
# the primary's memory over sweep_secs s, as a JSON object in $R
one_cache() {
        # shellcheck disable=SC2034
        HV_PROT_EXTRA="delta_cache_mib = $1"
        NO_UNPROT=1 boot_protected 256 tcg
        sleep 2
        hvctl a stats web01 --reset >/dev/null
        echo "delta_cache_mib = $1: measuring for $sweep_secs s..." >&2
        sleep "$sweep_secs"
        local stats ra
        stats=$(hvctl a stats web01 --json) || die "stats"
        ra=$(anon_kib a) || die "checkpointd's memory"
        python3 - "$stats" "$ra" >"$R" <<'PY'
import json, sys
st = json.loads(sys.argv[1])["stats"]
print(json.dumps({"compression_ratio": st["compression_ratio"],
                  "primary_rss_over_ram": round(int(sys.argv[2]) / (256 * 1024), 3),
                  "pause_ms_p50": st["pause_ms_p50"], "epochs": st["epochs"],
                  "delta_cache_mib": st.get("delta_cache_mib"),
                  "delta_cache_hit_ratio": st.get("delta_cache_hit_ratio")}))
PY
}

for mib in $sizes; do
        R=$res/tcg-$mib.json
        ( one_size "$mib" tcg ) || echo "bench: $mib MiB failed" >&2
done

# KVM beside TCG where this host's checkpointd says /dev/kvm runs guests
# (lib/accel.c's probe: what `accel = auto` means here)
kvm_auto=$(cat "$res"/tcg-*.json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    a = json.loads(l).get("accel", {}).get("auto") or {}
    if a: print(a.get("auto", "")); break')
if [ "$kvm_auto" = kvm ]; then
        for mib in $sizes; do
                R=$res/kvm-$mib.json
                ( one_size "$mib" kvm ) || echo "bench: $mib MiB under KVM failed" >&2
        done
fi

for v in $sweep; do
        R=$res/cache-$v.json
        ( one_cache "$v" ) || echo "bench: delta_cache_mib = $v failed" >&2
done

python3 - "$res" "$sizes" "$sweep" <<'PY'
import glob, json, os, sys
res, sizes, sweep = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
def load(name):
    try:
        with open(os.path.join(res, name)) as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None
tcg = {m: load("tcg-%s.json" % m) for m in sizes}
# what accel = auto means on these hosts: once, not per size
accel = next((d["accel"]["auto"] for d in tcg.values() if d and d.get("accel")), None)
for d in tcg.values():
    if d and d.get("accel"):
        d["accel"] = d["accel"]["vm"]
out = {"scenario": "scale", "ram_mib": tcg}
if accel and accel.get("auto") == "kvm":
    out["kvm"] = {"ram_mib": {m: load("kvm-%s.json" % m) for m in sizes}}
    for d in out["kvm"]["ram_mib"].values():
        if d and d.get("accel"):
            d["accel"] = d["accel"]["vm"]
else:
    out["kvm"] = None
    out["kvm_note"] = ("checkpointd's accel = auto is %s here (%s: %s); TCG figures only"
                       % (accel.get("auto"), accel.get("basis"), accel.get("why"))
                       if accel else "no size ran: accelerator unknown")
out["accel_auto"] = accel
if not sweep:
    out["delta_cache_sweep"] = None
    out["delta_cache_note"] = "sweep not run (HAVMS_SCALE_SWEEP empty)"
else:
    out["delta_cache_sweep"] = {v: load("cache-%s.json" % v) for v in sweep}
def fig(m, k):
    d = tcg.get(m)
    return d.get(k) if d else None
def every(k, test):
    vals = [fig(m, k) for m in sizes]
    return None if not vals or any(v is None for v in vals) else all(test(v) for v in vals)
p256, p4096 = fig("256", "pause_ms_p50"), fig("4096", "pause_ms_p50")
c256 = fig("256", "compression_ratio")
out["targets_met"] = {
    "pause_ms_p50_4096<=1.2x256": None if p256 is None or p4096 is None else p4096 <= 1.2 * p256,
    "pause_ms_p50_256<=1.5": None if p256 is None else p256 <= 1.5,
    "primary_rss_over_ram<=0.25": every("primary_rss_over_ram", lambda v: v <= 0.25),
    # the paced dirtier's ratio; the issue's >= 0.8 is for the flat-out
    # writer, measured by `test/bench/run checkpoint 30 0`
    "guest_rate_ratio_paced>=0.8": every("guest_rate_ratio", lambda v: v >= 0.8),
    "compression_ratio_256>=6.03": None if c256 is None else c256 >= 0.9 * 6.7,
    "replica_identical": every("replica_identical", lambda v: v is True),
}
print(json.dumps(out))
PY
rm -rf "$res"
