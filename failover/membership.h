/* membership: who is in the cluster, whether we have quorum, and a totally
 * ordered message channel, on corosync (libcpg, libvotequorum, libcmap).
 *
 * Owns: one process's connections to the local corosync (a CPG handle
 * joined to one group, a votequorum handle tracking changes, a cmap handle
 * on the configuration map and one on the stats map), the cached lists
 * they report, and the translation of corosync's errors into -errno.
 * Does not own: any decision. It never fences, never logs above debug,
 * never reconnects by itself, and never sleeps except for the bounded
 * CS_ERR_TRY_AGAIN retry in membership_open(). What a change means is the
 * caller's (havmsd's policy) business.
 *
 * Two notions of membership, both reported (docs/membership.md):
 *   - nodes: the corosync (totem) membership, i.e. the HOSTS whose corosync
 *     can talk to ours over at least one knet link. A host that powers off,
 *     hangs, or is cut off on every link leaves it (after the token timeout
 *     plus consensus). This is the one that says "a host is gone".
 *   - group: the members of the CPG group (e.g. "havms"), i.e. the
 *     PROCESSES that called membership_open() with that name: one entry per
 *     (node, pid). A havmsd that exits or crashes leaves the group while
 *     its host stays in nodes. A node id can appear twice while a restarted
 *     daemon's old instance is still being cleaned up.
 * A host that leaves nodes leaves the group in the same configuration
 * change (CPG_REASON_NODEDOWN). Nodes and group arrive on the CPG
 * descriptor, in order with the messages (virtual synchrony: every member
 * sees the same messages between two configuration changes). Quorum
 * arrives on the votequorum descriptor: do not assume an order between
 * the two descriptors.
 *
 * Links: knet link state comes from corosync's stats map (keys
 * stats.knet.node<N>.link<L>.{enabled,connected}); corosync sends no event
 * for it, so the caller polls membership_links() (e.g. every 100 ms on a
 * timerfd). A link's address is the configured one (nodelist.node.X.
 * ring<L>_addr).
 *
 * Loss of corosync: when corosync stops or dies, its IPC closes; the next
 * membership_dispatch() returns -ENOTCONN and every later call fails the
 * same way. The caller must treat this as loss of quorum, close the
 * handle, and call membership_open() again later (it fails fast, with
 * -ENOTCONN, while corosync is not running).
 *
 * Not thread-safe: one thread per struct membership. Callbacks run only
 * inside membership_dispatch(); they must not call membership_close().
 */
#pragma once
#include <corosync/votequorum.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Largest message membership_send() accepts. */
#define MEMBERSHIP_MSG_MAX (64u * 1024u)
/* corosync's limits: nodes in a cluster, knet links per node. */
#define MEMBERSHIP_NODES_MAX 128u
#define MEMBERSHIP_LINKS_MAX 8u
/* membership_open() retries CS_ERR_TRY_AGAIN (corosync is syncing) this
 * long before it gives up with -EAGAIN. */
#define MEMBERSHIP_OPEN_RETRY_MS 2000u

struct membership;

/* One process in the CPG group. */
struct membership_member {
        uint32_t nodeid;
        uint32_t pid;
};

/* One knet link from this host to a node. */
struct membership_link {
        uint8_t link;         /* knet link number (ring<L>_addr in the config) */
        bool enabled;         /* configured and enabled in knet */
        bool connected;       /* knet's pings get through now */
        char addr[64];        /* the node's configured address on it, or "" */
};

/* Every callback may be NULL. Lists are sorted by node id (then pid) and
 * borrowed for the duration of the call. */
struct membership_cb {
        /* corosync node membership (hosts) after each change, ours included. */
        void (*nodes)(void *opaque, const uint32_t *nodeids, size_t n);
        /* CPG group membership (processes) after each change, ours included. */
        void (*members)(void *opaque, const struct membership_member *members, size_t n);
        /* Quorum after each change. votes_expected: the cluster's expected
         * votes; votes_total: the votes present now (qdevice included). */
        void (*quorum)(void *opaque, bool quorate, uint32_t votes_expected,
                       uint32_t votes_total);
        /* A message sent to the group, in the same total order on every
         * member; our own messages come back too (from_nodeid is ours). */
        void (*message)(void *opaque, uint32_t from_nodeid, uint32_t from_pid,
                        const void *buf, size_t len);
};

/* Connect to the local corosync, join CPG group `group` (1..127 bytes) and
 * track quorum. cb is copied. -ENOTCONN when corosync is not running (no
 * wait), -EAGAIN when it stayed busy for MEMBERSHIP_OPEN_RETRY_MS,
 * -EEXIST when this process already joined the group elsewhere,
 * -EACCES when corosync refuses us (not root / uidgid), -errno otherwise.
 * The first nodes/members/quorum reports arrive with the first dispatch. */
int membership_open(const char *group, const struct membership_cb *cb, void *opaque,
                    struct membership **ret);
/* Leave the group and close every handle. Accepts NULL. */
void membership_close(struct membership *m);

/* The descriptors to watch for POLLIN (2 today: CPG, votequorum). *ret_n
 * is set to how many were written; -ENOSPC if max is too small. */
int membership_fds(struct membership *m, int *fds, size_t max, size_t *ret_n);
/* fd (one of membership_fds()) is readable: run the callbacks for what
 * arrived. 0, -EINVAL for a foreign fd, -ENOTCONN when corosync went away
 * (sticky; see above). Never blocks. */
int membership_dispatch(struct membership *m, int fd);

/* Send buf to every group member (CPG_TYPE_AGREED: total order, delivered
 * to us too). -EMSGSIZE above MEMBERSHIP_MSG_MAX, -EAGAIN under corosync's
 * flow control (try again later), -ENOTCONN when corosync is gone. */
int membership_send(struct membership *m, const void *buf, size_t len);

/* Our corosync node id. */
uint32_t membership_local_nodeid(const struct membership *m);

/* Cached state, as last reported by the callbacks. Lists are copied into
 * the caller's arrays (up to max entries); *ret_n is the full count, so
 * *ret_n > max means the copy was cut short. */
int membership_nodes(const struct membership *m, uint32_t *nodeids, size_t max,
                     size_t *ret_n);
int membership_members(const struct membership *m, struct membership_member *members,
                       size_t max, size_t *ret_n);
/* -ENODATA until the first quorum report. */
int membership_quorum(const struct membership *m, bool *ret_quorate,
                      uint32_t *ret_votes_expected, uint32_t *ret_votes_total);

/* Whether the last quorum report has counted every node that has left the
 * node list. corosync hands CPG's new totem configuration to us when the
 * membership changes, and votequorum recounts the votes only at the end
 * of its sync, a few milliseconds later: until its next report, the
 * quorate flag is the old membership's. While false, a quorate flag must
 * not be acted on; a loss may (S3; docs/membership.md). A node that joined
 * is not waited for: a gain comes with its own report. */
bool membership_quorum_settled(const struct membership *m);
/* The rule, on lists: nodes (the node list) and view (the nodes the last
 * quorum report lists as members). True when every node of view is in
 * nodes. */
bool membership_view_settled(const uint32_t *nodes, size_t n, const uint32_t *view,
                             size_t nview);
/* The members of a quorum report (state MEMBER; not the quorum device,
 * node 0) into view (max entries): their count. *ret_cut is set when
 * there were more than max: the rule is then not checked (more hosts
 * than havmsd tracks, MEMBERSHIP_NODES_MAX). */
size_t membership_view_of(const votequorum_node_t *nodes, uint32_t n, uint32_t *view,
                          size_t max, bool *ret_cut);

/* Names and ids from corosync's nodelist (nodelist.node.X.{nodeid,name};
 * a node without name: falls back to its ring0_addr). -ENOENT when the
 * node is not in the nodelist, -ENAMETOOLONG when buf is too small. */
int membership_node_name(struct membership *m, uint32_t nodeid, char *buf, size_t len);
int membership_node_id(struct membership *m, const char *name, uint32_t *ret_nodeid);
/* Every node id in corosync's nodelist (configured, present or not),
 * sorted; same count convention as membership_nodes(). */
int membership_nodelist(struct membership *m, uint32_t *nodeids, size_t max, size_t *ret_n);

/* Every configured knet link from this host to nodeid, sorted by link
 * number (a read of corosync's stats map now; cheap, one IPC round trip per
 * key). For our own node id, knet reports only its loopback link. Same
 * count convention as membership_nodes(). -ENOENT: knet knows no such
 * node. */
int membership_links(struct membership *m, uint32_t nodeid, struct membership_link *links,
                     size_t max, size_t *ret_n);
