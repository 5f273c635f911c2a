# shellcheck shell=bash
# cluster.sh - corosync on the test bed (bash library; source it after
# testbed.sh or havms.sh).
#
#   . test/lib/testbed.sh; . test/lib/cluster.sh
#   tb_init; tb_lan_create; tb_host_create a 1; tb_host_create b 2
#   tb_link_create a b 1
#   hv_corosync_config a b       # one corosync.conf per host
#   hv_corosync_start a; hv_corosync_start b
#   hv_corosync_wait_members a 2 10
#
# Each host runs its own corosync (`corosync -f`) inside its namespaces:
#   - config   /etc/havms/corosync.conf   (the host's private tmpfs; never
#              /etc/corosync, which the holder shares with the real machine)
#   - state    /var/lib/havms/corosync    (system.state_dir; private tmpfs)
#   - pid file /run/corosync.pid          (private /run)
#   - log      /var/log/havms/corosync.log, and stderr into
#              $TB_RUN/<host>-corosync.log (survives a power-off)
#   - IPC      libqb abstract sockets (per network namespace) and /dev/shm
#              (private): corosync-* tools and the client libraries work
#              inside the host through tb_exec / tb_spawn.
# corosync lives in the host's cgroup: tb_poweroff and the test bed's
# cleanup kill it with everything else; nothing is written outside the
# host's private mounts and $TB_RUN.
#
# Two knet links per node:
#   link 0  the replication link HV_CS_RLINK (default 1): 10.99.<n>.x
#   link 1  the LAN: 10.77.0.(10+idx) on br0
# Node ids are the test-bed host indexes (tb_host_idx).
#
# Timing: HV_CS_TOKEN (ms, default 500) and HV_CS_CONSENSUS (ms, default
# 200 for a pair). These are the values measured and chosen in
# docs/membership.md (a dead host detected in ~0.75 s, no false membership
# change with both cores busy) and used in configs/corosync-pair.conf.
# link_mode is active: every packet on both links, so one cut link never
# costs the token (see configs/corosync-pair.conf for why not passive).

[ -n "${HV_CLUSTER__LOADED:-}" ] && return 0
HV_CLUSTER__LOADED=1

HV_CS_CONF=/etc/havms/corosync.conf
HV_CS_STATE=/var/lib/havms/corosync
HV_CS_RLINK=${HV_CS_RLINK:-1}
HV_CS_TOKEN=${HV_CS_TOKEN:-500}
# empty: 200 for a pair (shorter than the token is safe with two nodes,
# corosync.conf(5)), corosync's default (1.2 x token) for more
HV_CS_CONSENSUS=${HV_CS_CONSENSUS:-}
# knet's link heartbeat (ms); empty: corosync derives them from the token
# (interval token/4, timeout token/2).
HV_CS_PING_INTERVAL=${HV_CS_PING_INTERVAL:-}
HV_CS_PING_TIMEOUT=${HV_CS_PING_TIMEOUT:-}
HV_CS_CLUSTER=${HV_CS_CLUSTER:-havms-tb}

# Link 0 of a bed with more than two hosts (hv_cluster_create_with_spare):
# HV_CS_RING0_NET set = link 0 is the replication network shared by all
# hosts, HOST's address $HV_CS_RING0_NET.<idx> (a point-to-point link has
# only two ends). HV_CS_ZERO_VOTES: hosts with quorum_votes: 0 (a spare).
HV_CS_RING0_NET=${HV_CS_RING0_NET:-}
HV_CS_ZERO_VOTES=${HV_CS_ZERO_VOTES:-}

hv__cs_ring0() {
        if [ -n "$HV_CS_RING0_NET" ]; then
                local i; i=$(tb_host_idx "$1") || return 1
                echo "$HV_CS_RING0_NET.$i"
        else
                tb_addr "$1" "$HV_CS_RLINK"
        fi
}
hv__cs_zero_vote() { [[ " $HV_CS_ZERO_VOTES " == *" $1 "* ]]; }

# hv__cs_nodelist HOST...: the nodelist section for these hosts.
hv__cs_nodelist() {
        local h idx rl votes
        echo "nodelist {"
        for h in "$@"; do
                idx=$(tb_host_idx "$h") || return 1
                rl=$(hv__cs_ring0 "$h") || return 1
                votes=
                hv__cs_zero_vote "$h" && votes="quorum_votes: 0"
                cat <<EOC
        node {
                name: $h
                nodeid: $idx
                # link 0: the replication link/network; link 1: the LAN
                ring0_addr: $rl
                ring1_addr: $(tb_addr "$h" lan)
                $votes
        }
EOC
        done
        echo "}"
}

# hv_corosync_config HOST...: write $HV_CS_CONF into every HOST, each
# listing all of them. Two voting hosts (HV_CS_ZERO_VOTES aside) get
# two_node (which implies wait_for_all: start both); more get plain
# majority votequorum.
hv_corosync_config() {
        local h conf nodes two=0 consensus= ping= voters=0
        [ "$#" -ge 2 ] || { echo "hv_corosync_config: needs >= 2 hosts" >&2; return 1; }
        for h in "$@"; do hv__cs_zero_vote "$h" || voters=$((voters + 1)); done
        [ "$voters" = 2 ] && two=1
        if [ -n "$HV_CS_CONSENSUS" ]; then consensus="consensus: $HV_CS_CONSENSUS"
        elif [ "$#" = 2 ]; then consensus="consensus: 200"; fi
        if [ -n "$HV_CS_PING_TIMEOUT" ]; then
                ping="knet_ping_interval: $HV_CS_PING_INTERVAL
                knet_ping_timeout: $HV_CS_PING_TIMEOUT"
        fi
        nodes=$(hv__cs_nodelist "$@") || return 1
        for h in "$@"; do
                conf=$(tb_path "$h" "$HV_CS_CONF") || return 1
                mkdir -p "$(tb_path "$h" "$HV_CS_STATE")" || return 1
                cat >"$conf" <<EOC
# corosync for test-bed host $h (written by test/lib/cluster.sh).
# Crypto is OFF: the test bed's links are veths inside this machine. A real
# cluster must use crypto_cipher/crypto_hash and an authkey
# (configs/corosync-pair.conf).
system {
        state_dir: $HV_CS_STATE
}
totem {
        version: 2
        cluster_name: $HV_CS_CLUSTER
        transport: knet
        crypto_cipher: none
        crypto_hash: none
        token: $HV_CS_TOKEN
        $consensus
        # no extra token time per node above two
        token_coefficient: 0
        link_mode: active
        interface {
                linknumber: 0
                knet_link_priority: 2
                $ping
        }
        interface {
                linknumber: 1
                knet_link_priority: 1
                $ping
        }
}
quorum {
        provider: corosync_votequorum
        two_node: $two
}
logging {
        to_stderr: yes
        to_logfile: yes
        logfile: /var/log/havms/corosync.log
        to_syslog: no
        timestamp: hires
}
$nodes
EOC
        done
}

# hv_corosync_start HOST: start corosync in HOST and wait (10 s) until its
# IPC answers. Membership may still be forming: see hv_corosync_wait_members.
hv_corosync_start() {
        local h=$1 log=$TB_RUN/$1-corosync.log
        tb_spawn "$h" "$log" corosync -f -c "$HV_CS_CONF" || return 1
        if ! tb_wait_for 10 hv__cs_answers "$h"; then
                echo "hv_corosync_start: corosync on $h does not answer:" >&2
                tail -n 20 "$log" >&2
                return 1
        fi
}
hv__cs_answers() { tb_exec "$1" corosync-cmapctl -g runtime.votequorum.this_node_id >/dev/null 2>&1; }

# hv_corosync_members HOST: node ids of HOST's current totem membership,
# one line, sorted ("1 2").
hv_corosync_members() {
        tb_exec "$1" corosync-cmapctl -b runtime.members 2>/dev/null |
                sed -n 's/^runtime\.members\.\([0-9]*\)\.status (str) = joined$/\1/p' |
                sort -n | tr '\n' ' ' | sed 's/ $//'
}
hv__cs_nmembers() { [ "$(hv_corosync_members "$1" | wc -w)" = "$2" ]; }
# hv_corosync_wait_members HOST N TIMEOUT_S: until HOST sees N members.
hv_corosync_wait_members() { tb_wait_for "$3" hv__cs_nmembers "$1" "$2"; }

# hv_corosync_quorate HOST: corosync in HOST says it is quorate.
hv_corosync_quorate() {
        tb_exec "$1" corosync-quorumtool -s 2>/dev/null | grep -qE '^Quorate:[[:space:]]+Yes'
}

# hv_corosync_link HOST NODEID LINK: "1" if HOST's knet link LINK to NODEID
# is connected, "0" if not (cmap stats map; see docs/membership.md).
hv_corosync_link() {
        tb_exec "$1" corosync-cmapctl -m stats -g "stats.knet.node$2.link$3.connected" 2>/dev/null |
                sed -n 's/.* = \([0-9]*\)$/\1/p'
}

# hv_corosync_stop HOST: stop corosync in HOST (SIGTERM, then wait 10 s).
hv_corosync_stop() {
        local pid
        pid=$(cat "$(tb_path "$1" /run/corosync.pid)" 2>/dev/null) || return 0
        kill -TERM "$pid" 2>/dev/null || return 0
        tb_wait_exit "$pid" 10
}
