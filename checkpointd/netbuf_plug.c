/* netbuf plug backend: the kernel holds the guest's frames, in a sch_plug
 * qdisc; user space only moves the epoch boundaries (libnl-route-3).
 *
 * Owns: the persistent tap QEMU attaches to, the ifb device, the ingress
 * qdisc and redirect filter on the tap, the plug qdisc on the ifb, and a
 * rtnetlink socket. Does not own QEMU or the bridge.
 *
 *   guest --QEMU--> tap (ingress qdisc: u32 match-all, mirred redirect)
 *                    --> ifb (root qdisc: plug, limit = max_bytes)
 *                    --released--> back into the tap's receive path
 *                                  --> bridge --> LAN
 *   LAN --> bridge --> tap --> QEMU   (not buffered)
 *
 * sch_plug remembers one closed epoch only (pkts_last_epoch): a second
 * TCA_PLUG_BUFFER before the first TCA_PLUG_RELEASE_ONE would overwrite
 * its count and a later release would free the wrong frames. So at most
 * one closed epoch lives in the kernel; a barrier that comes while one is
 * outstanding is merged into the next barrier (its frames are held one
 * epoch longer, never released early). See docs/netbuf.md.
 */
#include <errno.h>
#include <limits.h>
#include <linux/if_ether.h>
#include <linux/pkt_sched.h>
#include <linux/tc_act/tc_mirred.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <netlink/errno.h>
#include <netlink/netlink.h>
#include <netlink/route/act/mirred.h>
#include <netlink/route/action.h>
#include <netlink/route/classifier.h>
#include <netlink/route/cls/u32.h>
#include <netlink/route/link.h>
#include <netlink/route/qdisc.h>
#include <netlink/route/qdisc/plug.h>
#include <netlink/route/tc.h>

#include "log.h"
#include "netbuf_int.h"

#define PLUG_HANDLE_A TC_H_MAKE(1u << 16, 0)
#define PLUG_HANDLE_B TC_H_MAKE(2u << 16, 0)
#define INGRESS_HANDLE TC_H_MAKE(TC_H_INGRESS, 0)

struct plug {
        struct nl_sock *sk;             /* lock */
        char ifb[IFNAMSIZ];
        int tap_ifindex, ifb_ifindex;
        bool tap_made, ifb_made;
        uint32_t handle;                /* lock: the live plug qdisc */
        /* lock: a TCA_PLUG_BUFFER not yet matched by a release; its
         * frames are those of every epoch <= closed_epoch not released */
        bool closed;
        uint64_t closed_epoch;
        uint64_t drops_before;          /* lock: drops of replaced qdiscs */
        uint64_t held_max;              /* lock: seen by netbuf_get_stats */
};

static struct plug *P(const struct netbuf *nb)
{
        return nb->priv;
}

/* libnl returns its own codes; the module's contract is -errno. */
static int nl_errno(int nle)
{
        switch (nle < 0 ? -nle : nle) {
        case 0: return 0;
        case NLE_NOMEM: return -ENOMEM;
        case NLE_EXIST: return -EEXIST;
        case NLE_INVAL: return -EINVAL;
        case NLE_RANGE: return -ERANGE;
        case NLE_OPNOTSUPP: return -EOPNOTSUPP;
        case NLE_AF_NOSUPPORT: return -EAFNOSUPPORT;
        case NLE_OBJ_NOTFOUND: return -ENOENT;
        case NLE_BUSY: return -EBUSY;
        case NLE_PERM: return -EPERM;
        case NLE_NOACCESS: return -EACCES;
        case NLE_NODEV: return -ENODEV;
        case NLE_AGAIN: return -EAGAIN;
        case NLE_INTR: return -EINTR;
        case NLE_MSGSIZE: return -EMSGSIZE;
        default: return -EIO;
        }
}

/* A kernel without the module answers "unknown kind" with ENOENT (tc) or
 * EOPNOTSUPP (links). */
static bool missing(int r)
{
        return r == -ENOENT || r == -EOPNOTSUPP;
}

/* "ifb-" + the tap's name, or a short form with a hash when that would
 * not fit in IFNAMSIZ. */
static void ifb_name(const char *tap, char *out, size_t n)
{
        uint32_t h = 2166136261u;

        if (strlen(tap) + 4 < IFNAMSIZ) {
                snprintf(out, n, "ifb-%s", tap);
                return;
        }
        for (const char *p = tap; *p; p++)
                h = (h ^ (uint8_t)*p) * 16777619u;
        snprintf(out, n, "ifb-%.5s-%05x", tap, h & 0xfffffu);
}

static int link_delete(struct nl_sock *sk, const char *name)
{
        struct rtnl_link *l = rtnl_link_alloc();
        int r;

        if (!l)
                return -ENOMEM;
        rtnl_link_set_name(l, name);
        r = nl_errno(rtnl_link_delete(sk, l));
        rtnl_link_put(l);
        return r;
}

static int ifb_create(struct netbuf *nb)
{
        struct plug *p = P(nb);
        struct rtnl_link *l = rtnl_link_alloc();
        int r;

        if (!l)
                return -ENOMEM;
        rtnl_link_set_name(l, p->ifb);
        r = nl_errno(rtnl_link_set_type(l, "ifb"));
        if (r == 0)
                r = nl_errno(rtnl_link_add(p->sk, l, NLM_F_CREATE | NLM_F_EXCL));
        rtnl_link_put(l);
        return r;
}

/* A plug qdisc object addressed at the live one (or at handle). */
static struct rtnl_qdisc *plug_obj(struct netbuf *nb, uint32_t handle)
{
        struct rtnl_qdisc *q = rtnl_qdisc_alloc();

        if (!q)
                return NULL;
        rtnl_tc_set_ifindex(TC_CAST(q), P(nb)->ifb_ifindex);
        rtnl_tc_set_parent(TC_CAST(q), TC_H_ROOT);
        rtnl_tc_set_handle(TC_CAST(q), handle);
        if (rtnl_tc_set_kind(TC_CAST(q), "plug") < 0) {
                rtnl_qdisc_put(q);
                return NULL;
        }
        return q;
}

/* Put a fresh plug qdisc at the ifb's root (flags: NLM_F_CREATE with
 * NLM_F_EXCL when there is none, with NLM_F_REPLACE to swap it in
 * atomically). A fresh plug is throttled and
 * counts every frame into its open epoch: buffering on, nothing closed. */
static int plug_fresh(struct netbuf *nb, int flags)
{
        struct plug *p = P(nb);
        uint32_t h = p->handle == PLUG_HANDLE_A ? PLUG_HANDLE_B : PLUG_HANDLE_A;
        uint64_t limit = nb->max_bytes > INT_MAX ? INT_MAX : nb->max_bytes;
        struct rtnl_qdisc *q;
        int r;

        q = plug_obj(nb, h);
        if (!q)
                return -ENOMEM;
        r = nl_errno(rtnl_qdisc_plug_set_limit(q, (int)limit));
        if (r == 0)
                r = nl_errno(rtnl_qdisc_add(p->sk, q, flags));
        rtnl_qdisc_put(q);
        if (r < 0)
                return r;
        p->handle = h;
        p->closed = false;
        return 0;
}

enum plug_cmd {
        CMD_BUFFER,
        CMD_RELEASE_ONE,
        CMD_RELEASE_INDEFINITE,
};

/* Send one TCA_PLUG_* command to the live qdisc (lock held). */
static int plug_cmd(struct netbuf *nb, enum plug_cmd c)
{
        struct rtnl_qdisc *q = plug_obj(nb, P(nb)->handle);
        int r;

        if (!q)
                return -ENOMEM;
        switch (c) {
        case CMD_BUFFER:
                r = rtnl_qdisc_plug_buffer(q);
                break;
        case CMD_RELEASE_ONE:
                r = rtnl_qdisc_plug_release_one(q);
                break;
        default:
                r = rtnl_qdisc_plug_release_indefinite(q);
                break;
        }
        if (r == 0)
                r = rtnl_qdisc_add(P(nb)->sk, q, 0);
        rtnl_qdisc_put(q);
        return nl_errno(r);
}

static int ingress_redirect(struct netbuf *nb, char *err, size_t errlen)
{
        struct plug *p = P(nb);
        struct rtnl_qdisc *q = rtnl_qdisc_alloc();
        struct rtnl_cls *c = rtnl_cls_alloc();
        struct rtnl_act *a = rtnl_act_alloc();
        int r = -ENOMEM;

        if (!q || !c || !a)
                goto out;
        rtnl_tc_set_ifindex(TC_CAST(q), p->tap_ifindex);
        rtnl_tc_set_parent(TC_CAST(q), TC_H_INGRESS);
        rtnl_tc_set_handle(TC_CAST(q), INGRESS_HANDLE);
        r = nl_errno(rtnl_tc_set_kind(TC_CAST(q), "ingress"));
        if (r == 0)
                r = nl_errno(rtnl_qdisc_add(p->sk, q, NLM_F_CREATE | NLM_F_EXCL));
        if (missing(r)) {
                nb_refuse(nb, err, errlen, r, "the kernel lacks the ingress qdisc "
                          "(CONFIG_NET_SCH_INGRESS, module sch_ingress); use netbuf=relay");
                goto out;
        }
        if (r < 0) {
                nb_fail(nb, err, errlen, r, "add an ingress qdisc to tap %s", nb->tap);
                goto out;
        }

        /* Match every frame. A u32 key reads 4 bytes at an offset from
         * the network header; -12 is the source MAC, present in every
         * Ethernet frame, so even a frame with no payload is caught (a
         * key at 0 would let one with under 4 bytes through unbuffered).
         * u32 rather than matchall: it is in more kernels. */
        rtnl_tc_set_ifindex(TC_CAST(c), p->tap_ifindex);
        rtnl_tc_set_parent(TC_CAST(c), INGRESS_HANDLE);
        rtnl_cls_set_prio(c, 1);
        rtnl_cls_set_protocol(c, ETH_P_ALL);
        r = nl_errno(rtnl_tc_set_kind(TC_CAST(c), "u32"));
        if (r == 0)
                r = nl_errno(rtnl_u32_add_key_uint32(c, 0, 0, -12, 0));
        /* A u32 node runs its actions only when terminal (tc sets this
         * by itself; libnl does not). */
        if (r == 0)
                r = nl_errno(rtnl_u32_set_cls_terminal(c));
        if (r == 0)
                r = nl_errno(rtnl_tc_set_kind(TC_CAST(a), "mirred"));
        if (r == 0) {
                rtnl_mirred_set_action(a, TCA_EGRESS_REDIR);
                rtnl_mirred_set_policy(a, TC_ACT_STOLEN);
                rtnl_mirred_set_ifindex(a, (uint32_t)p->ifb_ifindex);
                r = nl_errno(rtnl_u32_add_action(c, a));
        }
        if (r == 0)
                r = nl_errno(rtnl_cls_add(p->sk, c, NLM_F_CREATE | NLM_F_EXCL));
        if (missing(r))
                nb_refuse(nb, err, errlen, r, "the kernel lacks the u32 classifier or the "
                          "mirred action (CONFIG_NET_CLS_U32, CONFIG_NET_ACT_MIRRED; modules "
                          "cls_u32, act_mirred); use netbuf=relay");
        else if (r < 0)
                nb_fail(nb, err, errlen, r, "redirect tap %s to %s", nb->tap, p->ifb);
out:
        if (a)
                rtnl_act_put(a);
        if (c)
                rtnl_cls_put(c);
        if (q)
                rtnl_qdisc_put(q);
        return r;
}

static void plug_close(struct netbuf *nb)
{
        struct plug *p = P(nb);

        if (!p)
                return;
        /* Removing the tap removes its ingress qdisc and filter; removing
         * the ifb drops whatever its plug still holds. */
        if (p->tap_made && link_delete(p->sk, nb->tap) < 0)
                log_debug("netbuf vm=%s nic=%u: could not remove tap %s", nb->vm, nb->nic,
                          nb->tap);
        if (p->ifb_made && link_delete(p->sk, p->ifb) < 0)
                log_debug("netbuf vm=%s nic=%u: could not remove %s", nb->vm, nb->nic, p->ifb);
        if (p->sk)
                nl_socket_free(p->sk);
        free(p);
        nb->priv = NULL;
}

static int plug_setup(struct netbuf *nb, char *err, size_t errlen)
{
        struct plug *p = P(nb);
        int fd, r;

        r = nl_errno(nl_connect(p->sk, NETLINK_ROUTE));
        if (r < 0)
                return nb_fail(nb, err, errlen, r, "rtnetlink socket");
        r = nb_tap_create(nb->tap, true, &fd);
        if (r == -ENOENT)
                return nb_refuse(nb, err, errlen, r, "create tap %s: no /dev/net/tun "
                                 "(CONFIG_TUN, module tun)", nb->tap);
        if (r < 0)
                return nb_fail(nb, err, errlen, r, "create tap %s", nb->tap);
        p->tap_made = true;
        r = nb_link_up(nb->tap);
        if (r < 0)
                return nb_fail(nb, err, errlen, r, "set tap %s up", nb->tap);
        if (nb->bridge[0]) {
                r = nb_bridge_add(nb->bridge, nb->tap);
                if (r < 0)
                        return nb_fail(nb, err, errlen, r, "add tap %s to bridge %s",
                                       nb->tap, nb->bridge);
        }
        p->tap_ifindex = (int)if_nametoindex(nb->tap);
        if (!p->tap_ifindex)
                return nb_fail(nb, err, errlen, -errno, "find tap %s", nb->tap);

        /* An ifb of this name is ours, left by a daemon that crashed. */
        link_delete(p->sk, p->ifb);
        r = ifb_create(nb);
        if (missing(r))
                return nb_refuse(nb, err, errlen, r, "the kernel lacks ifb devices "
                                 "(CONFIG_IFB, module ifb); use netbuf=relay");
        if (r < 0)
                return nb_fail(nb, err, errlen, r, "create %s", p->ifb);
        p->ifb_made = true;
        p->ifb_ifindex = (int)if_nametoindex(p->ifb);
        if (!p->ifb_ifindex)
                return nb_fail(nb, err, errlen, -errno, "find %s", p->ifb);
        r = nb_link_up(p->ifb);
        if (r < 0)
                return nb_fail(nb, err, errlen, r, "set %s up", p->ifb);

        r = ingress_redirect(nb, err, errlen);
        if (r < 0)
                return r;

        p->handle = PLUG_HANDLE_B;      /* so the first one is A */
        r = plug_fresh(nb, NLM_F_CREATE | NLM_F_EXCL);
        if (missing(r))
                return nb_refuse(nb, err, errlen, r, "the kernel lacks the plug qdisc "
                                 "(CONFIG_NET_SCH_PLUG, module sch_plug); use netbuf=relay");
        if (r < 0)
                return nb_fail(nb, err, errlen, r, "add a plug qdisc to %s", p->ifb);
        /* Buffering starts off. */
        r = plug_cmd(nb, CMD_RELEASE_INDEFINITE);
        if (r < 0)
                return nb_fail(nb, err, errlen, r, "unplug %s", p->ifb);
        return 0;
}

static void plug_discard(struct netbuf *nb);
static void plug_stats(const struct netbuf *nb, struct netbuf_stats *st);

static int plug_open(struct netbuf *nb, char *err, size_t errlen)
{
        struct plug *p;
        int r;

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        nb->priv = p;
        ifb_name(nb->tap, p->ifb, sizeof(p->ifb));
        p->sk = nl_socket_alloc();
        if (!p->sk) {
                r = nb_fail(nb, err, errlen, -ENOMEM, "rtnetlink socket");
                goto fail;
        }
        r = plug_setup(nb, err, errlen);
        if (r < 0)
                goto fail;
        nb->discard = plug_discard;
        nb->stats = plug_stats;
        return 0;
fail:
        plug_close(nb);
        return r;
}

static int plug_qemu_netdev(const struct netbuf *nb, char *buf, size_t len)
{
        int n = snprintf(buf, len, "tap,ifname=%s,script=no,downscript=no", nb->tap);

        return n < 0 || (size_t)n >= len ? -ENOSPC : 0;
}

static int plug_barrier(struct netbuf *nb, uint64_t epoch)
{
        struct plug *p = P(nb);
        int r = 0;

        pthread_mutex_lock(&nb->lock);
        if (nb->cut_any && epoch <= nb->last_cut) {
                r = -EINVAL;
                goto out;
        }
        /* One closed epoch in the kernel at a time (see the top). */
        if (nb->buffering && !p->closed) {
                r = plug_cmd(nb, CMD_BUFFER);
                if (r < 0)
                        goto out;
                p->closed = true;
                p->closed_epoch = epoch;
        }
        nb->cut_any = true;
        nb->last_cut = epoch;
out:
        pthread_mutex_unlock(&nb->lock);
        return r;
}

static int plug_release(struct netbuf *nb, uint64_t epoch)
{
        struct plug *p = P(nb);
        int r = 0;

        pthread_mutex_lock(&nb->lock);
        if (nb->buffering && p->closed && p->closed_epoch <= epoch) {
                r = plug_cmd(nb, CMD_RELEASE_ONE);
                if (r == 0)
                        p->closed = false;
        }
        pthread_mutex_unlock(&nb->lock);
        return r;
}

/* Drops of the live qdisc, to carry over when it is replaced. */
static uint64_t live_drops(const struct netbuf *nb)
{
        struct plug *p = P(nb);
        struct nl_cache *cache;
        struct rtnl_qdisc *q;
        uint64_t d = 0;

        if (rtnl_qdisc_alloc_cache(p->sk, &cache) < 0)
                return 0;
        q = rtnl_qdisc_get(cache, p->ifb_ifindex, p->handle);
        if (q) {
                d = rtnl_tc_get_stat(TC_CAST(q), RTNL_TC_DROPS);
                rtnl_qdisc_put(q);
        }
        nl_cache_free(cache);
        return d;
}

/* Lock held. A fresh qdisc rather than TCA_PLUG_BUFFER after an
 * indefinite release: frames enqueued while unplugged are not counted, and
 * any still queued at the BUFFER would shift every later release count
 * by their number (releasing frames of the next epoch early). The
 * replacement drops them: a few unprotected frames at most, lost as on
 * a busy link. */
static int plug_restart(struct netbuf *nb)
{
        struct plug *p = P(nb);
        uint64_t d = live_drops(nb);
        int r;

        r = plug_fresh(nb, NLM_F_CREATE | NLM_F_REPLACE);
        if (r == 0)
                p->drops_before += d;
        return r;
}

static void plug_set_buffering(struct netbuf *nb, bool on)
{
        int r = 0;

        pthread_mutex_lock(&nb->lock);
        if (on && !nb->buffering) {
                r = plug_restart(nb);
                if (r < 0) {
                        /* Second best: correct unless frames are queued
                         * right now. */
                        log_debug("netbuf vm=%s nic=%u: replace plug qdisc: %s", nb->vm,
                                  nb->nic, strerror(-r));
                        r = plug_cmd(nb, CMD_BUFFER);
                }
        } else if (!on && nb->buffering) {
                r = plug_cmd(nb, CMD_RELEASE_INDEFINITE);
        }
        if (r < 0)
                log_debug("netbuf vm=%s nic=%u: set buffering %s: %s", nb->vm, nb->nic,
                          on ? "on" : "off", strerror(-r));
        nb->buffering = on;
        P(nb)->closed = false;
        pthread_mutex_unlock(&nb->lock);
}

static void plug_discard(struct netbuf *nb)
{
        int r;

        pthread_mutex_lock(&nb->lock);
        r = plug_restart(nb);
        if (r == 0 && !nb->buffering)
                r = plug_cmd(nb, CMD_RELEASE_INDEFINITE);
        if (r < 0)
                log_debug("netbuf vm=%s nic=%u: discard: %s", nb->vm, nb->nic, strerror(-r));
        pthread_mutex_unlock(&nb->lock);
}

/* Transmit counters of a link: the ifb's are the released frames, the
 * tap's what reached QEMU. */
static void link_tx(struct nl_sock *sk, int ifindex, uint64_t *pkts, uint64_t *bytes,
                    uint64_t *dropped)
{
        struct rtnl_link *l;

        if (rtnl_link_get_kernel(sk, ifindex, NULL, &l) < 0)
                return;
        *pkts = rtnl_link_get_stat(l, RTNL_LINK_TX_PACKETS);
        *bytes = rtnl_link_get_stat(l, RTNL_LINK_TX_BYTES);
        if (dropped)
                *dropped += rtnl_link_get_stat(l, RTNL_LINK_TX_DROPPED);
        rtnl_link_put(l);
}

/* The counters live in the kernel: the plug qdisc (held, dropped), the
 * ifb (released) and the tap (to the guest). */
static void plug_stats(const struct netbuf *nb, struct netbuf_stats *st)
{
        struct plug *p = P(nb);
        struct nl_cache *cache;
        struct rtnl_qdisc *q;

        pthread_mutex_lock((pthread_mutex_t *)&nb->lock);
        st->frames_dropped = p->drops_before;
        link_tx(p->sk, p->ifb_ifindex, &st->frames_out, &st->bytes_out, NULL);
        link_tx(p->sk, p->tap_ifindex, &st->frames_in, &st->bytes_in, &st->frames_dropped);
        if (rtnl_qdisc_alloc_cache(p->sk, &cache) == 0) {
                q = rtnl_qdisc_get(cache, p->ifb_ifindex, p->handle);
                if (q) {
                        st->held_bytes = rtnl_tc_get_stat(TC_CAST(q), RTNL_TC_BACKLOG);
                        st->held_frames = rtnl_tc_get_stat(TC_CAST(q), RTNL_TC_QLEN);
                        st->frames_dropped += rtnl_tc_get_stat(TC_CAST(q), RTNL_TC_DROPS);
                        rtnl_qdisc_put(q);
                }
                nl_cache_free(cache);
        }
        if (st->held_bytes > p->held_max)
                p->held_max = st->held_bytes;
        st->held_bytes_max = p->held_max;
        pthread_mutex_unlock((pthread_mutex_t *)&nb->lock);
}

const struct netbuf_ops netbuf_plug_ops = {
        .name = "plug",
        .open = plug_open,
        .close = plug_close,
        .qemu_netdev = plug_qemu_netdev,
        .barrier = plug_barrier,
        .release = plug_release,
        .set_buffering = plug_set_buffering,
};
