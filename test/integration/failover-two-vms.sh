#!/bin/bash
# failover-two-vms: two VMs, one primary on each host, each protected to
# the other (web01: a -> b, db01: b -> a). Host b dies. Only db01 moves
# (to a, as a new generation, after a fenced b once); web01 stays where
# it is, its protection lost and reported, its output released only once
# b is fenced. A client on ONE connection to web01's counter (on an ext4
# data disk) is judged as in the consistency test.
set -u
. "$(dirname "$0")/../lib/failover.sh"
hv_fo_need
HV_DISK_MIB=64
DB_IP=10.77.0.20
hv_cluster_create "havms.dirty_mib_s=1" || { echo "FAIL: test bed"; exit 1; }

# db01: web01's definition with its own name, MAC, address and direction
for h in a b; do
        other=b; [ "$h" = b ] && other=a
        sed -e "s/^name = web01/name = db01/" -e "s/52:54:00:77:00:10/52:54:00:77:00:20/" \
            -e "s#havms.ip=$HV_GUEST_IP/24#havms.ip=$DB_IP/24#" -e "/^disk = /d" \
            -e "s/^preferred_host = a/preferred_host = b/" -e "s/^peer = .*/peer = $h/" \
            "$(tb_path "$h" /etc/havms/vms/web01.conf)" >"$(tb_path "$h" /etc/havms/vms/db01.conf)"
        # db01's peer, seen from each host, is the other one
        sed -i "s/^peer = .*/peer = $other/" "$(tb_path "$h" /etc/havms/vms/db01.conf)"
done
db() { tb_client "$HV_GUEST/bin/hvq" -a "$DB_IP" -t 2 7000 "$1"; }
db_up() { db stat >/dev/null 2>&1; }

hv_fo_protected_with_client
hv_must "start db01 on b" hvctl b start db01
hv_must "db01 answers on the LAN" tb_wait_for 90 db_up
db_boot=$(hv_kv "$(db stat)" boot_id)
hv_must "protect db01 to a" hvctl b protect db01
hv_must "b: db01 protected" hv_wait_state b db01 protected 180
hv_must "a: db01's replica committed" hv_wait_state a db01 backup-standby 30
web_gen=$(hv_field a web01 generation)
db_gen=$(hv_field a db01 generation)
for i in 1 2 3; do db next >/dev/null; done
db_seen=$(db get)
sleep 3

echo "--- host b (db01's primary, web01's standby) dies"
before=$(hv_client_n)
tb_poweroff b
hv_must "a takes db01 over by itself" hv_wait_state a db01 running 60
hv_check "db01 answers from a with the same boot" \
        eval '[ "$(hv_kv "$(db stat)" boot_id)" = "$db_boot" ]'
db_now() { now=$(db get); }
tb_wait_for 20 db_now || now=-1
hv_check "db01's counter continues ($now >= $db_seen)" test "$now" -ge "$db_seen"
hv_check "db01's generation went up" test "$(hv_field a db01 generation)" -gt "$db_gen"
hv_check "a: web01 released its held output (degraded: unprotected)" \
        hv_wait_state a web01 degraded 30
hv_check "web01 did not move: same generation ($web_gen)" \
        test "$(hv_field a web01 generation)" = "$web_gen"
hv_check "web01's protection loss reported (HAVMS-FO-5021)" \
        eval 'hv_events a | grep -q "HAVMS-FO-5021.*web01"'
hv_check "b fenced exactly once" test "$(hv_events a | grep -c 'HAVMS-FN-6001')" = 1
hv_check "web01's output released only after b was verified off" \
        hv_event_before a HAVMS-FN-6003 a HAVMS-FO-5015
hv_check "web01's client gets answers" tb_wait_for 30 hv_client_more_than "$((before + 10))"
hv_check "a's cluster view: web01 unprotected on a, db01 on a" \
        eval 'hvctl a status | grep -E "web01.*a" >/dev/null && hvctl a status | grep -E "db01.*a" >/dev/null'
hvctl a status
hv_fo_client_judge a
hv_summary failover-two-vms
