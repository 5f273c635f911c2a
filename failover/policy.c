/* policy: the failover decision (see policy.h for the rules S1-S5). */
#include "policy.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* What a host that is not a member may need to be fenced for. */
struct fence_need {
        bool takeover; /* a VM it ran is backed up here: we would take it over */
        bool release;  /* it is the lost standby of a VM that holds output here */
};

static void act(struct po_output *out, enum po_act type, const char *vm, const char *host,
                uint64_t generation, const char *why)
{
        if (out->n_actions >= PO_MAX_ACTIONS)
                return; /* cannot happen: at most one per VM and one per host */
        struct po_action *a = &out->actions[out->n_actions++];
        memset(a, 0, sizeof(*a));
        a->type = type;
        snprintf(a->vm, sizeof(a->vm), "%s", vm ? vm : "");
        snprintf(a->host, sizeof(a->host), "%s", host ? host : "");
        a->generation = generation;
        a->why = why;
}

static void note(struct po_output *out, size_t i, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
static void note(struct po_output *out, size_t i, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(out->note[i], PO_NOTE_MAX, fmt, ap);
        va_end(ap);
}

static void wake_at(struct po_output *out, uint64_t t)
{
        if (!out->wake_ms || t < out->wake_ms)
                out->wake_ms = t;
}

static const struct po_host *host_of(const struct po_input *in, const char *name, size_t *ret_idx)
{
        for (size_t i = 0; i < in->n_hosts; i++)
                if (!strcmp(in->hosts[i].name, name)) {
                        if (ret_idx)
                                *ret_idx = i;
                        return &in->hosts[i];
                }
        return NULL;
}

static bool runs_here(enum po_vm_state s)
{
        return s == PO_VM_RUNNING || s == PO_VM_SYNCING || s == PO_VM_PROTECTED ||
               s == PO_VM_ISOLATED;
}

/* Fenced after it last left: a fence from before a rejoin proves nothing. */
static bool fenced(const struct po_host *h)
{
        return h->fence == PO_FENCE_DONE && h->fence_ms >= h->left_ms;
}

/* S5: the head start. A host that takes VMs over fences at once, unless
 * the lost host would take VMs over from us too (it backs up a VM that
 * runs here): then the lower node id goes first. A host that only needs
 * the fence to release output waits fence_delay_ms. */
static uint32_t fence_delay(const struct po_input *in, const struct po_host *h,
                            const struct fence_need *need)
{
        if (!need->takeover)
                return in->fence_delay_ms;
        bool tie = false;
        for (size_t i = 0; i < in->n_vms; i++)
                if (runs_here(in->vms[i].state) && !strcmp(in->vms[i].peer, h->name) &&
                    in->vms[i].peer_holds_replica)
                        tie = true;
        if (tie && in->self_nodeid > h->nodeid)
                return in->fence_delay_ms;
        return 0;
}

/* When a witness wait for a peer that left ends (see policy.h). */
static uint64_t witness_end(const struct po_input *in, const struct po_host *h)
{
        uint64_t from = h->left_ms > in->quorate_since_ms ? h->left_ms : in->quorate_since_ms;
        return from + in->witness_wait_ms;
}

/* The standby's side: take over, drop the replica, or wait. */
static void decide_backup(const struct po_input *in, size_t i, struct fence_need *needs,
                          struct po_output *out)
{
        const struct po_vm *v = &in->vms[i];
        size_t hi = 0;
        const struct po_host *h = host_of(in, v->peer, &hi);
        if (v->newer_copy_elsewhere) { /* S6, before anything else */
                act(out, PO_ACT_DISCARD, v->name, v->peer, v->generation,
                    "another member holds a newer generation of this VM: our replica is "
                    "stale and must never run");
                return;
        }
        if (v->peer_relinquished) {
                if (v->last_exit == PO_EXIT_PEER_HANDOVER)
                        act(out, PO_ACT_ACTIVATE, v->name, v->peer, v->generation + 1,
                            "the primary handed the VM over (switchover)");
                else if (v->failover_auto)
                        act(out, PO_ACT_ACTIVATE, v->name, v->peer, v->generation + 1,
                            "the primary gave its crashed copy up");
                else
                        note(out, i, "primary %s lost the VM; failover = manual: "
                                     "`havmsctl activate %s` to take over", v->peer, v->name);
                return;
        }
        if (!h) {
                note(out, i, "primary '%s' is not a known cluster host: cannot judge it",
                     v->peer);
                return;
        }
        if (h->member) {
                if (v->discard_requested)
                        act(out, PO_ACT_DISCARD, v->name, v->peer, v->generation,
                            "the primary, still a member, asked us to drop the replica");
                return;
        }
        if (!v->failover_auto) {
                note(out, i, "primary %s left; failover = manual: `havmsctl activate %s` "
                             "once it is known to be down", v->peer, v->name);
                return;
        }
        if (in->witness) {
                uint64_t at = witness_end(in, h);
                if (in->now_ms >= at) {
                        act(out, PO_ACT_ACTIVATE, v->name, v->peer, v->generation + 1,
                            "primary left and the witness wait is over");
                } else {
                        note(out, i, "primary %s left; witness wait, %llu ms to go", v->peer,
                             (unsigned long long)(at - in->now_ms));
                        wake_at(out, at);
                }
                return;
        }
        if (!h->fence_configured) {
                note(out, i, "primary %s left but no [fence %s] is configured: "
                             "NOT taking over (it may still run the VM)", v->peer, v->peer);
                return;
        }
        if (fenced(h)) {
                act(out, PO_ACT_ACTIVATE, v->name, v->peer, v->generation + 1,
                    "primary left and was fenced");
                return;
        }
        needs[hi].takeover = true;
        note(out, i, "primary %s left: fencing it before taking over", v->peer);
}

/* The primary's side when its standby stopped ACKing: output is held
 * until the standby provably cannot activate. */
static void decide_isolated(const struct po_input *in, size_t i, struct fence_need *needs,
                            struct po_output *out)
{
        const struct po_vm *v = &in->vms[i];
        size_t hi = 0;
        const struct po_host *h = host_of(in, v->peer, &hi);
        if (v->peer_discarded) {
                act(out, PO_ACT_RELEASE, v->name, v->peer, v->generation,
                    "the standby confirmed it dropped its replica");
                return;
        }
        if (!h) {
                note(out, i, "standby '%s' is not a known cluster host: output stays held",
                     v->peer);
                return;
        }
        if (h->member) {
                if (!v->discard_asked)
                        act(out, PO_ACT_ASK_DISCARD, v->name, v->peer, v->generation,
                            "standby is a member but stopped ACKing");
                note(out, i, "standby %s stopped ACKing: asked it to drop its replica, "
                             "output held meanwhile", v->peer);
                return;
        }
        if (in->witness) {
                uint64_t at = witness_end(in, h);
                if (in->now_ms >= at) {
                        act(out, PO_ACT_RELEASE, v->name, v->peer, v->generation,
                            "standby left and the witness wait is over");
                } else {
                        note(out, i, "standby %s left; output held for the witness wait, "
                                     "%llu ms to go", v->peer,
                             (unsigned long long)(at - in->now_ms));
                        wake_at(out, at);
                }
                return;
        }
        if (!h->fence_configured) {
                note(out, i, "standby %s left but no [fence %s] is configured: output stays "
                             "held (`havmsctl release` once it is known to be down)",
                     v->peer, v->peer);
                return;
        }
        if (fenced(h)) {
                act(out, PO_ACT_RELEASE, v->name, v->peer, v->generation,
                    "standby left and was fenced");
                return;
        }
        needs[hi].release = true;
        note(out, i, "standby %s left: output held until it is fenced", v->peer);
}

/* A VM that is not running here: a crash may call for a local restart
 * or for handing it to the standby. */
/* A VM that is not running here: a crash may call for a local restart
 * or for handing it to the standby. A restart here is a new boot whose
 * output the standby's replica lacks: it waits until the standby has
 * dropped that replica (ASK_DISCARD -> DISCARDED), and never happens
 * while the standby is out of reach (it could still take over). */
static void decide_stopped(const struct po_input *in, size_t i, struct po_output *out)
{
        const struct po_vm *v = &in->vms[i];
        if (v->last_exit == PO_EXIT_HANDED_OVER && !v->relinquished && v->peer[0]) {
                /* a switchover: QEMU here is off after the final checkpoint,
                 * never restarted here; the standby activates on this */
                act(out, PO_ACT_RELINQUISH, v->name, v->peer, v->generation,
                    "handed over: the standby activates");
                return;
        }
        if (v->last_exit != PO_EXIT_CRASH || v->relinquished)
                return;
        if (v->restarts_done < v->local_restarts) {
                const struct po_host *h = v->peer[0] ? host_of(in, v->peer, NULL) : NULL;
                if (!v->peer[0] || v->peer_discarded) {
                        act(out, PO_ACT_RESTART, v->name, v->peer, v->generation,
                            "QEMU crashed; local restarts left");
                } else if (h && h->member) {
                        if (!v->discard_asked)
                                act(out, PO_ACT_ASK_DISCARD, v->name, v->peer, v->generation,
                                    "restart here: the standby's replica must go first");
                        note(out, i, "QEMU crashed: restarting here once standby %s has "
                                     "dropped its replica", v->peer);
                } else {
                        note(out, i, "QEMU crashed: standby %s is out of reach, so no restart "
                                     "here (it may take the VM over)", v->peer);
                }
                return;
        }
        if (v->peer[0])
                act(out, PO_ACT_RELINQUISH, v->name, v->peer, v->generation,
                    "QEMU crashed; the standby takes over");
        else
                note(out, i, "crashed while unprotected: start it again by hand");
}

static void decide_fences(const struct po_input *in, const struct fence_need *needs,
                          struct po_output *out)
{
        for (size_t k = 0; k < in->n_hosts; k++) {
                const struct po_host *h = &in->hosts[k];
                if (!needs[k].takeover && !needs[k].release)
                        continue;
                if (h->fence == PO_FENCE_RUNNING)
                        continue;
                if (h->fence == PO_FENCE_FAILED && h->fence_ms >= h->left_ms) {
                        uint64_t retry = h->fence_ms + in->fence_retry_ms;
                        if (in->now_ms < retry) {
                                wake_at(out, retry);
                                continue;
                        }
                }
                uint64_t start = h->left_ms + fence_delay(in, h, &needs[k]);
                if (in->now_ms < start) {
                        wake_at(out, start);
                        continue;
                }
                act(out, PO_ACT_FENCE, NULL, h->name, 0,
                    needs[k].takeover ? "to take its VMs over" : "to release held output");
        }
}

void po_decide(const struct po_input *in, struct po_output *out)
{
        memset(out, 0, sizeof(*out));
        struct fence_need needs[PO_MAX_HOSTS];
        memset(needs, 0, sizeof(needs));

        for (size_t i = 0; i < in->n_vms; i++) {
                const struct po_vm *v = &in->vms[i];
                if (!in->quorum_known) {
                        note(out, i, in->quorum_settling
                                             ? "a host left: waiting for corosync to count the votes"
                                             : "waiting for corosync's first quorum report");
                        continue;
                }
                if (!in->quorate) { /* S3: before anything else under way */
                        if (runs_here(v->state) && !v->stopping)
                                act(out, PO_ACT_STOP, v->name, NULL, v->generation,
                                    "this host lost quorum (self-fence)");
                        else if (v->state == PO_VM_BK_READY)
                                note(out, i, "no quorum: this host takes nothing over");
                        continue;
                }
                if (v->busy || v->state == PO_VM_UNKNOWN || v->state == PO_VM_ACTIVATING)
                        continue;
                if (runs_here(v->state) && v->newer_generation > v->generation &&
                    !v->stopping) { /* S4 */
                        act(out, PO_ACT_STOP, v->name, NULL, v->generation,
                            "a newer generation of this VM runs elsewhere");
                        continue;
                }
                switch (v->state) {
                case PO_VM_BK_READY:
                        decide_backup(in, i, needs, out);
                        break;
                case PO_VM_BK_SYNCING: {
                        const struct po_host *h = host_of(in, v->peer, NULL);
                        if (h && h->member && v->discard_requested)
                                act(out, PO_ACT_DISCARD, v->name, v->peer, v->generation,
                                    "the primary asked us to drop an incomplete replica");
                        else if (h && !h->member)
                                note(out, i, "primary %s left during the initial sync: the "
                                             "replica is incomplete, no takeover possible",
                                     v->peer);
                        break;
                }
                case PO_VM_ISOLATED:
                        decide_isolated(in, i, needs, out);
                        break;
                case PO_VM_DEFINED:
                        if (v->discard_requested) { /* no replica here: say so */
                                act(out, PO_ACT_DISCARD, v->name, v->peer, v->generation,
                                    "the primary asked; there is no replica here");
                                break;
                        }
                        decide_stopped(in, i, out);
                        break;
                default:
                        break;
                }
        }
        if (in->quorum_known && in->quorate)
                decide_fences(in, needs, out);
}

struct po_quorum po_quorum_view(bool known, bool quorate, bool corosync_up, bool settled)
{
        struct po_quorum q = { .known = known, .quorate = known && quorate && corosync_up };
        if (q.quorate && !settled) {
                q.known = q.quorate = false;
                q.settling = true;
        }
        return q;
}

const char *po_act_name(enum po_act a)
{
        static const char *const names[] = {
                [PO_ACT_FENCE] = "fence",         [PO_ACT_ACTIVATE] = "activate",
                [PO_ACT_RELEASE] = "release",     [PO_ACT_ASK_DISCARD] = "ask-discard",
                [PO_ACT_DISCARD] = "discard",     [PO_ACT_RELINQUISH] = "relinquish",
                [PO_ACT_RESTART] = "restart",     [PO_ACT_STOP] = "stop",
        };
        return (unsigned)a < sizeof(names) / sizeof(names[0]) && names[a] ? names[a] : "?";
}

const char *po_exit_name(enum po_exit e)
{
        static const char *const names[] = {
                [PO_EXIT_NONE] = "",                [PO_EXIT_GUEST_SHUTDOWN] = "guest-shutdown",
                [PO_EXIT_CRASH] = "crash",          [PO_EXIT_STOPPED] = "stopped",
                [PO_EXIT_STALE] = "stale",          [PO_EXIT_HANDED_OVER] = "handed-over",
                [PO_EXIT_PEER_HANDOVER] = "peer-handover",
        };
        return (unsigned)e < sizeof(names) / sizeof(names[0]) ? names[e] : "?";
}

const char *po_vm_state_name(enum po_vm_state s)
{
        static const char *const names[] = {
                [PO_VM_UNKNOWN] = "unknown",     [PO_VM_DEFINED] = "defined",
                [PO_VM_RUNNING] = "running",     [PO_VM_SYNCING] = "syncing",
                [PO_VM_PROTECTED] = "protected", [PO_VM_ISOLATED] = "isolated",
                [PO_VM_BK_SYNCING] = "backup-syncing", [PO_VM_BK_READY] = "backup-ready",
                [PO_VM_ACTIVATING] = "activating",
        };
        return (unsigned)s < sizeof(names) / sizeof(names[0]) && names[s] ? names[s] : "?";
}

enum po_vm_state po_vm_state_parse(const char *s)
{
        static const struct {
                const char *text;
                enum po_vm_state state;
        } map[] = {
                { "defined", PO_VM_DEFINED },          { "running", PO_VM_RUNNING },
                { "connecting", PO_VM_RUNNING },       { "degraded", PO_VM_RUNNING },
                { "syncing", PO_VM_SYNCING },          { "protected", PO_VM_PROTECTED },
                { "held", PO_VM_PROTECTED },           { "isolated", PO_VM_ISOLATED },
                { "backup-syncing", PO_VM_BK_SYNCING }, { "backup-standby", PO_VM_BK_READY },
                { "backup-orphaned", PO_VM_BK_READY }, { "activating", PO_VM_ACTIVATING },
        };
        for (size_t i = 0; s && i < sizeof(map) / sizeof(map[0]); i++)
                if (!strcmp(s, map[i].text))
                        return map[i].state;
        return PO_VM_UNKNOWN;
}

enum po_exit po_exit_parse(const char *s)
{
        if (!s)
                return PO_EXIT_NONE;
        if (!strcmp(s, "guest-shutdown"))
                return PO_EXIT_GUEST_SHUTDOWN;
        /* "fenced": killed by `havmsctl kill` or a self-fence — the copy
         * here is gone without a goodbye, as after a crash: the standby may
         * take the VM over. */
        if (!strcmp(s, "crash") || !strcmp(s, "fenced"))
                return PO_EXIT_CRASH;
        if (!strcmp(s, "stopped"))
                return PO_EXIT_STOPPED;
        if (!strcmp(s, "stale"))
                return PO_EXIT_STALE;
        if (!strcmp(s, "handed-over"))
                return PO_EXIT_HANDED_OVER;
        if (!strcmp(s, "peer-handover"))
                return PO_EXIT_PEER_HANDOVER;
        return PO_EXIT_NONE;
}
