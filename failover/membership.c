/* membership: corosync membership, quorum and messages (see membership.h).
 *
 *   corosync (same host, libqb IPC)
 *     |-- CPG handle ------- fd 0: totem confchg  -> nodes[]   -> cb.nodes
 *     |                             group confchg  -> group[]   -> cb.members
 *     |                             deliver        ------------> cb.message
 *     |-- votequorum handle - fd 1: quorum notify  -> (getinfo)  -> cb.quorum
 *     |-- cmap (icmap) ------ no fd: nodelist lookups (names, addresses)
 *     `-- cmap (stats) ------ no fd: knet link state, read on demand
 *
 * corosync's configuration-change callbacks only record the new lists;
 * they are reported once corosync's dispatch returns (one report per
 * batch), or just before the next message, so that a message is never
 * seen before the change that preceded it. Messages are handed over from
 * inside cpg_dispatch(), where libcpg allows membership_send().
 * votequorum's notification carries no vote counts: they are asked for
 * (votequorum_getinfo) after its dispatch, once per batch.
 */
#include "membership.h"

#include <corosync/cmap.h>
#include <corosync/corotypes.h>
#include <corosync/cpg.h>
#include <corosync/votequorum.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>

struct membership {
        cpg_handle_t cpg;
        votequorum_handle_t vq;
        cmap_handle_t cmap;
        cmap_handle_t stats;
        bool have_cpg, have_vq, have_cmap, have_stats, joined;
        int cpg_fd, vq_fd;
        bool gone;                  /* corosync's IPC closed: sticky */
        struct cpg_name group;
        uint32_t local_nodeid;
        struct membership_cb cb;
        void *opaque;

        /* set by corosync's callbacks, reported after its dispatch */
        bool nodes_changed, group_changed, quorum_changed;

        uint32_t nodes[MEMBERSHIP_NODES_MAX];
        size_t nnodes;
        struct membership_member group_list[CPG_MEMBERS_MAX];
        size_t ngroup;
        bool have_quorum;           /* at least one quorum report */
        bool quorate;
        uint32_t view[MEMBERSHIP_NODES_MAX]; /* members in the last quorum report */
        size_t nview;
        bool view_cut, nodes_cut;   /* a list longer than we keep: rule not checked */
        uint32_t votes_expected, votes_total;
};

static int cs_errno(cs_error_t e)
{
        switch (e) {
        case CS_OK:
                return 0;
        case CS_ERR_LIBRARY:
        case CS_ERR_BAD_HANDLE:
                return -ENOTCONN;
        case CS_ERR_TRY_AGAIN:
        case CS_ERR_BUSY:
        case CS_ERR_QUEUE_FULL:
                return -EAGAIN;
        case CS_ERR_TIMEOUT:
                return -ETIMEDOUT;
        case CS_ERR_INVALID_PARAM:
        case CS_ERR_BAD_FLAGS:
                return -EINVAL;
        case CS_ERR_NO_MEMORY:
        case CS_ERR_NO_RESOURCES:
                return -ENOMEM;
        case CS_ERR_ACCESS:
        case CS_ERR_SECURITY:
                return -EACCES;
        case CS_ERR_NOT_EXIST:
        case CS_ERR_NAME_NOT_FOUND:
                return -ENOENT;
        case CS_ERR_EXIST:
                return -EEXIST;
        case CS_ERR_NAME_TOO_LONG:
                return -ENAMETOOLONG;
        case CS_ERR_TOO_BIG:
                return -EMSGSIZE;
        case CS_ERR_NOT_SUPPORTED:
                return -EOPNOTSUPP;
        default:
                return -EIO;
        }
}

static uint64_t mono_ms(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* corosync answers CS_ERR_TRY_AGAIN while it synchronises a new
 * membership (tens of milliseconds): the only wait this module does. */
static bool retry_again(cs_error_t e, uint64_t deadline_ms)
{
        static const struct timespec step = { .tv_nsec = 10 * 1000 * 1000 };

        if (e != CS_ERR_TRY_AGAIN || mono_ms() >= deadline_ms)
                return false;
        nanosleep(&step, NULL);
        return true;
}

static int cmp_u32(const void *a, const void *b)
{
        uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

        return (x > y) - (x < y);
}

static int cmp_member(const void *a, const void *b)
{
        const struct membership_member *x = a, *y = b;

        if (x->nodeid != y->nodeid)
                return (x->nodeid > y->nodeid) - (x->nodeid < y->nodeid);
        return (x->pid > y->pid) - (x->pid < y->pid);
}

/* ------------------------------------------------- corosync callbacks --- */

static struct membership *cpg_self(cpg_handle_t h)
{
        void *ctx = NULL;

        return cpg_context_get(h, &ctx) == CS_OK ? ctx : NULL;
}

static void report_quorum_loss_first(struct membership *m);

static void on_deliver(cpg_handle_t h, const struct cpg_name *group, uint32_t nodeid,
                       uint32_t pid, void *msg, size_t len)
{
        struct membership *m = cpg_self(h);

        /* Messages are handed over at once, not batched: their order
         * relative to the configuration changes is the point of CPG. So
         * a pending change is reported first. */
        if (!m)
                return;
        if (m->nodes_changed)
                report_quorum_loss_first(m);
        if (m->nodes_changed && m->cb.nodes)
                m->cb.nodes(m->opaque, m->nodes, m->nnodes);
        if (m->group_changed && m->cb.members)
                m->cb.members(m->opaque, m->group_list, m->ngroup);
        m->nodes_changed = m->group_changed = false;
        if (m->cb.message)
                m->cb.message(m->opaque, nodeid, pid, msg, len);
}

static void on_group(cpg_handle_t h, const struct cpg_name *group,
                     const struct cpg_address *list, size_t n,
                     const struct cpg_address *left, size_t nleft,
                     const struct cpg_address *joined, size_t njoined)
{
        struct membership *m = cpg_self(h);
        size_t i;

        if (!m)
                return;
        if (n > CPG_MEMBERS_MAX)
                n = CPG_MEMBERS_MAX;
        for (i = 0; i < n; i++) {
                m->group_list[i].nodeid = list[i].nodeid;
                m->group_list[i].pid = list[i].pid;
        }
        m->ngroup = n;
        qsort(m->group_list, n, sizeof(m->group_list[0]), cmp_member);
        m->group_changed = true;
}

static void on_totem(cpg_handle_t h, struct cpg_ring_id ring, uint32_t n, const uint32_t *list)
{
        struct membership *m = cpg_self(h);

        if (!m)
                return;
        m->nodes_cut = n > MEMBERSHIP_NODES_MAX;
        if (n > MEMBERSHIP_NODES_MAX)
                n = MEMBERSHIP_NODES_MAX;
        memcpy(m->nodes, list, n * sizeof(list[0]));
        m->nnodes = n;
        qsort(m->nodes, n, sizeof(m->nodes[0]), cmp_u32);
        m->nodes_changed = true;
}

static void on_quorum(votequorum_handle_t h, uint64_t context, uint32_t quorate,
                      uint32_t n, votequorum_node_t nodes[])
{
        struct membership *m = (struct membership *)(uintptr_t)context;

        m->quorate = quorate != 0;
        m->quorum_changed = true;
        m->nview = membership_view_of(nodes, n, m->view, MEMBERSHIP_NODES_MAX, &m->view_cut);
}

static void on_expected(votequorum_handle_t h, uint64_t context, uint32_t expected)
{
        struct membership *m = (struct membership *)(uintptr_t)context;

        m->quorum_changed = true;
}

/* ------------------------------------------------------------- open ----- */

int membership_open(const char *group, const struct membership_cb *cb, void *opaque,
                    struct membership **ret)
{
        cpg_model_v1_data_t model = {
                .model = CPG_MODEL_V1,
                .cpg_deliver_fn = on_deliver,
                .cpg_confchg_fn = on_group,
                .cpg_totem_confchg_fn = on_totem,
                .flags = CPG_MODEL_V1_DELIVER_INITIAL_TOTEM_CONF,
        };
        votequorum_callbacks_t vcb = {
                .votequorum_quorum_notify_fn = on_quorum,
                .votequorum_expectedvotes_notify_fn = on_expected,
        };
        uint64_t deadline = mono_ms() + MEMBERSHIP_OPEN_RETRY_MS;
        struct membership *m;
        unsigned int nodeid;
        size_t glen;
        cs_error_t e;
        int r;

        if (!group || !ret)
                return -EINVAL;
        glen = strlen(group);
        if (glen == 0 || glen >= CPG_MAX_NAME_LENGTH)
                return -EINVAL;
        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->cpg_fd = m->vq_fd = -1;
        if (cb)
                m->cb = *cb;
        m->opaque = opaque;
        m->group.length = (uint32_t)glen;
        memcpy(m->group.value, group, glen);

        /* The first call tells whether corosync runs at all: libqb's connect
         * to its socket is refused at once when it does not. */
        e = cpg_model_initialize(&m->cpg, CPG_MODEL_V1, (cpg_model_data_t *)&model, m);
        if ((r = cs_errno(e)) < 0)
                goto fail;
        m->have_cpg = true;
        e = cpg_fd_get(m->cpg, &m->cpg_fd);
        if ((r = cs_errno(e)) < 0)
                goto fail;
        do
                e = cpg_local_get(m->cpg, &nodeid);
        while (retry_again(e, deadline));
        if ((r = cs_errno(e)) < 0)
                goto fail;
        m->local_nodeid = nodeid;

        e = votequorum_initialize(&m->vq, &vcb);
        if ((r = cs_errno(e)) < 0)
                goto fail;
        m->have_vq = true;
        e = votequorum_fd_get(m->vq, &m->vq_fd);
        if ((r = cs_errno(e)) < 0)
                goto fail;
        /* Track the quorum before joining CPG, and keep it so: the first
         * quorum report (CS_TRACK_CURRENT) ignores a sync in progress,
         * but cpg_join is refused while one runs, so by the time the
         * first node list comes the sync's own report is queued behind
         * it (membership_quorum_settled relies on that order). */
        do
                e = votequorum_trackstart(m->vq, (uint64_t)(uintptr_t)m,
                                          CS_TRACK_CURRENT | CS_TRACK_CHANGES);
        while (retry_again(e, deadline));
        if ((r = cs_errno(e)) < 0)
                goto fail;

        e = cmap_initialize(&m->cmap);
        if ((r = cs_errno(e)) < 0)
                goto fail;
        m->have_cmap = true;
        e = cmap_initialize_map(&m->stats, CMAP_MAP_STATS);
        if ((r = cs_errno(e)) < 0)
                goto fail;
        m->have_stats = true;

        /* Join last: from here on the group sees us. */
        do
                e = cpg_join(m->cpg, &m->group);
        while (retry_again(e, deadline));
        if ((r = cs_errno(e)) < 0)
                goto fail;
        m->joined = true;
        *ret = m;
        return 0;
fail:
        membership_close(m);
        return r;
}

void membership_close(struct membership *m)
{
        if (!m)
                return;
        /* After corosync went away these fail at once; nothing to wait for. */
        if (m->joined && !m->gone)
                cpg_leave(m->cpg, &m->group);
        if (m->have_cpg)
                cpg_finalize(m->cpg);
        if (m->have_vq)
                votequorum_finalize(m->vq);
        if (m->have_cmap)
                cmap_finalize(m->cmap);
        if (m->have_stats)
                cmap_finalize(m->stats);
        free(m);
}

/* --------------------------------------------------------- dispatch ----- */

int membership_fds(struct membership *m, int *fds, size_t max, size_t *ret_n)
{
        if (max < 2)
                return -ENOSPC;
        fds[0] = m->cpg_fd;
        fds[1] = m->vq_fd;
        *ret_n = 2;
        return 0;
}

static void report_quorum(struct membership *m)
{
        struct votequorum_info info;

        m->quorum_changed = false;
        /* Without counts the report is still worth making: quorate is
         * what matters; counts stay as last known. */
        if (votequorum_getinfo(m->vq, m->local_nodeid, &info) == CS_OK) {
                m->votes_expected = info.node_expected_votes;
                m->votes_total = info.total_votes;
        }
        m->have_quorum = true;
        if (m->cb.quorum)
                m->cb.quorum(m->opaque, m->quorate, m->votes_expected, m->votes_total);
}

/* A node list change and the quorum it brings arrive on two fds, in
 * either order. When the node list changes, a LOSS of quorum that
 * votequorum has already counted is read at once and reported before it.
 * That is not enough on its own: CPG hands over the new totem
 * configuration before votequorum's sync recounts the votes, so getinfo
 * may still answer with the old membership's flag (a 0-vote spare whose
 * last voting peer had left started fencing that peer 3 ms before its
 * QUORUM LOST). membership_quorum_settled() tells the caller not to trust
 * a quorate flag until the count includes the change. A gain is left to its own
 * notification: reported before the node list, it would be decided on
 * the old one. */
static void report_quorum_loss_first(struct membership *m)
{
        struct votequorum_info info;

        if (!m->have_quorum || !m->quorate)
                return;
        if (votequorum_getinfo(m->vq, m->local_nodeid, &info) != CS_OK ||
            (info.flags & VOTEQUORUM_INFO_QUORATE))
                return;
        m->quorate = false;
        report_quorum(m);
}

int membership_dispatch(struct membership *m, int fd)
{
        cs_error_t e;
        int r;

        if (m->gone)
                return -ENOTCONN;
        if (fd == m->cpg_fd)
                e = cpg_dispatch(m->cpg, CS_DISPATCH_ALL);
        else if (fd == m->vq_fd)
                e = votequorum_dispatch(m->vq, CS_DISPATCH_ALL);
        else
                return -EINVAL;
        r = e == CS_ERR_TRY_AGAIN ? 0 : cs_errno(e);
        if (r == -ENOTCONN) {
                m->gone = true;
                return r;
        }
        if (m->nodes_changed)
                report_quorum_loss_first(m);
        if (m->nodes_changed && m->cb.nodes)
                m->cb.nodes(m->opaque, m->nodes, m->nnodes);
        if (m->group_changed && m->cb.members)
                m->cb.members(m->opaque, m->group_list, m->ngroup);
        m->nodes_changed = m->group_changed = false;
        if (m->quorum_changed)
                report_quorum(m);
        return r;
}

int membership_send(struct membership *m, const void *buf, size_t len)
{
        struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
        int r;

        if (m->gone)
                return -ENOTCONN;
        if (len > MEMBERSHIP_MSG_MAX)
                return -EMSGSIZE;
        r = cs_errno(cpg_mcast_joined(m->cpg, CPG_TYPE_AGREED, &iov, 1));
        if (r == -ENOTCONN)
                m->gone = true;
        return r;
}

uint32_t membership_local_nodeid(const struct membership *m)
{
        return m->local_nodeid;
}

/* ------------------------------------------------------ cached state ---- */

int membership_nodes(const struct membership *m, uint32_t *nodeids, size_t max,
                     size_t *ret_n)
{
        size_t n = m->nnodes < max ? m->nnodes : max;

        if (n)
                memcpy(nodeids, m->nodes, n * sizeof(m->nodes[0]));
        *ret_n = m->nnodes;
        return 0;
}

int membership_members(const struct membership *m, struct membership_member *members,
                       size_t max, size_t *ret_n)
{
        size_t n = m->ngroup < max ? m->ngroup : max;

        if (n)
                memcpy(members, m->group_list, n * sizeof(m->group_list[0]));
        *ret_n = m->ngroup;
        return 0;
}

bool membership_view_settled(const uint32_t *nodes, size_t n, const uint32_t *view,
                             size_t nview)
{
        for (size_t i = 0; i < nview; i++) {
                bool present = false;
                for (size_t j = 0; j < n && !present; j++)
                        present = nodes[j] == view[i];
                if (!present)
                        return false;
        }
        return true;
}

size_t membership_view_of(const votequorum_node_t *nodes, uint32_t n, uint32_t *view,
                          size_t max, bool *ret_cut)
{
        size_t k = 0;
        *ret_cut = false;
        for (uint32_t i = 0; i < n; i++) {
                if (!nodes[i].nodeid || nodes[i].state != VOTEQUORUM_NODESTATE_MEMBER)
                        continue;
                if (k == max) {
                        *ret_cut = true;
                        break;
                }
                view[k++] = nodes[i].nodeid;
        }
        return k;
}

bool membership_quorum_settled(const struct membership *m)
{
        if (m->view_cut || m->nodes_cut)
                return true;
        return membership_view_settled(m->nodes, m->nnodes, m->view, m->nview);
}

int membership_quorum(const struct membership *m, bool *ret_quorate,
                      uint32_t *ret_votes_expected, uint32_t *ret_votes_total)
{
        if (!m->have_quorum)
                return -ENODATA;
        if (ret_quorate)
                *ret_quorate = m->quorate;
        if (ret_votes_expected)
                *ret_votes_expected = m->votes_expected;
        if (ret_votes_total)
                *ret_votes_total = m->votes_total;
        return 0;
}

/* ------------------------------------------------- nodelist (cmap) ------ */

/* The X of the nodelist.node.X entry whose `field` (a string key) equals
 * `want`, or whose nodeid equals `nodeid` when want is NULL. */
static int find_node(struct membership *m, const char *want, uint32_t nodeid,
                     unsigned *ret_idx)
{
        char key[CMAP_KEYNAME_MAXLEN + 1];
        cmap_iter_handle_t it;
        cmap_value_types_t type;
        size_t vlen;
        cs_error_t e;
        int r = -ENOENT;

        if (m->gone)
                return -ENOTCONN;
        e = cmap_iter_init(m->cmap, "nodelist.node.", &it);
        if (e != CS_OK)
                return cs_errno(e);
        while (r == -ENOENT && cmap_iter_next(m->cmap, it, key, &vlen, &type) == CS_OK) {
                unsigned idx;
                int end = 0;
                uint32_t id;
                char *s = NULL;

                if (sscanf(key, "nodelist.node.%u.%n", &idx, &end) != 1 || end == 0)
                        continue;
                if (!want && strcmp(key + end, "nodeid") == 0) {
                        if (cmap_get_uint32(m->cmap, key, &id) == CS_OK && id == nodeid) {
                                *ret_idx = idx;
                                r = 0;
                        }
                } else if (want && strcmp(key + end, "name") == 0) {
                        if (cmap_get_string(m->cmap, key, &s) == CS_OK && strcmp(s, want) == 0) {
                                *ret_idx = idx;
                                r = 0;
                        }
                        free(s);
                }
        }
        cmap_iter_finalize(m->cmap, it);
        return r;
}

/* nodelist.node.<idx>.<field> as a string (malloc'ed). */
static int node_string(struct membership *m, unsigned idx, const char *field, char **ret)
{
        char key[CMAP_KEYNAME_MAXLEN + 1];

        snprintf(key, sizeof(key), "nodelist.node.%u.%s", idx, field);
        return cs_errno(cmap_get_string(m->cmap, key, ret));
}

int membership_node_name(struct membership *m, uint32_t nodeid, char *buf, size_t len)
{
        char *s = NULL;
        unsigned idx;
        int r;

        r = find_node(m, NULL, nodeid, &idx);
        if (r < 0)
                return r;
        r = node_string(m, idx, "name", &s);
        if (r == -ENOENT)
                r = node_string(m, idx, "ring0_addr", &s);
        if (r < 0)
                return r;
        if (strlen(s) >= len)
                r = -ENAMETOOLONG;
        else
                memcpy(buf, s, strlen(s) + 1);
        free(s);
        return r;
}

int membership_node_id(struct membership *m, const char *name, uint32_t *ret_nodeid)
{
        char key[CMAP_KEYNAME_MAXLEN + 1];
        unsigned idx;
        uint32_t id;
        int r;

        r = find_node(m, name, 0, &idx);
        if (r < 0)
                return r;
        snprintf(key, sizeof(key), "nodelist.node.%u.nodeid", idx);
        r = cs_errno(cmap_get_uint32(m->cmap, key, &id));
        if (r == 0)
                *ret_nodeid = id;
        return r;
}

int membership_nodelist(struct membership *m, uint32_t *nodeids, size_t max, size_t *ret_n)
{
        uint32_t all[MEMBERSHIP_NODES_MAX];
        char key[CMAP_KEYNAME_MAXLEN + 1];
        cmap_iter_handle_t it;
        cmap_value_types_t type;
        size_t vlen, n = 0;
        cs_error_t e;

        if (m->gone)
                return -ENOTCONN;
        e = cmap_iter_init(m->cmap, "nodelist.node.", &it);
        if (e != CS_OK)
                return cs_errno(e);
        while (n < MEMBERSHIP_NODES_MAX &&
               cmap_iter_next(m->cmap, it, key, &vlen, &type) == CS_OK) {
                unsigned idx;
                int end = 0;

                if (sscanf(key, "nodelist.node.%u.%n", &idx, &end) == 1 && end > 0 &&
                    strcmp(key + end, "nodeid") == 0 &&
                    cmap_get_uint32(m->cmap, key, &all[n]) == CS_OK)
                        n++;
        }
        cmap_iter_finalize(m->cmap, it);
        qsort(all, n, sizeof(all[0]), cmp_u32);
        if (n && max)
                memcpy(nodeids, all, (n < max ? n : max) * sizeof(all[0]));
        *ret_n = n;
        return 0;
}

/* ---------------------------------------------------- links (stats) ----- */

static struct membership_link *link_slot(struct membership_link *all, size_t *n, unsigned link)
{
        size_t i;

        for (i = 0; i < *n; i++)
                if (all[i].link == link)
                        return &all[i];
        if (*n == MEMBERSHIP_LINKS_MAX)
                return NULL;
        memset(&all[*n], 0, sizeof(all[*n]));
        all[*n].link = (uint8_t)link;
        return &all[(*n)++];
}

static int cmp_link(const void *a, const void *b)
{
        const struct membership_link *x = a, *y = b;

        return (x->link > y->link) - (x->link < y->link);
}

int membership_links(struct membership *m, uint32_t nodeid, struct membership_link *links,
                     size_t max, size_t *ret_n)
{
        struct membership_link all[MEMBERSHIP_LINKS_MAX];
        char prefix[64], key[CMAP_KEYNAME_MAXLEN + 1];
        cmap_iter_handle_t it;
        cmap_value_types_t type;
        size_t vlen, n = 0, i;
        unsigned idx;
        cs_error_t e;
        int plen;

        if (m->gone)
                return -ENOTCONN;
        plen = snprintf(prefix, sizeof(prefix), "stats.knet.node%" PRIu32 ".link", nodeid);
        e = cmap_iter_init(m->stats, prefix, &it);
        if (e != CS_OK)
                return e == CS_ERR_NOT_EXIST ? -ENOENT : cs_errno(e);
        while ((e = cmap_iter_next(m->stats, it, key, &vlen, &type)) == CS_OK) {
                struct membership_link *l;
                unsigned link;
                int end = 0;
                uint8_t v;

                if (sscanf(key + plen, "%u.%n", &link, &end) != 1 || end == 0)
                        continue;
                if (strcmp(key + plen + end, "connected") != 0 &&
                    strcmp(key + plen + end, "enabled") != 0)
                        continue;
                if (cmap_get_uint8(m->stats, key, &v) != CS_OK)
                        continue;
                l = link_slot(all, &n, link);
                if (!l)
                        continue;
                if (key[plen + end] == 'c')
                        l->connected = v != 0;
                else
                        l->enabled = v != 0;
        }
        cmap_iter_finalize(m->stats, it);
        if (e != CS_OK && e != CS_ERR_NO_SECTIONS) {
                int r = cs_errno(e);

                if (r == -ENOTCONN) {
                        m->gone = true;
                        return r;
                }
        }
        if (n == 0)
                return -ENOENT;
        qsort(all, n, sizeof(all[0]), cmp_link);
        if (find_node(m, NULL, nodeid, &idx) == 0) {
                for (i = 0; i < n; i++) {
                        char field[16], *s = NULL;

                        snprintf(field, sizeof(field), "ring%u_addr", all[i].link);
                        if (node_string(m, idx, field, &s) == 0)
                                snprintf(all[i].addr, sizeof(all[i].addr), "%s", s);
                        free(s);
                }
        }
        if (max)
                memcpy(links, all, (n < max ? n : max) * sizeof(all[0]));
        *ret_n = n;
        return 0;
}
