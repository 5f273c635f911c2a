/* plan: the failback decision (see plan.h for the rules F1-F7). */
#include "plan.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static void act(struct fb_output *out, enum fb_act type, const char *vm, const char *host,
                uint64_t generation, unsigned attempt, const char *why)
{
        if (out->n_actions >= FB_MAX_ACTIONS)
                return; /* cannot happen: at most one per VM and one per host */
        struct fb_action *a = &out->actions[out->n_actions++];
        memset(a, 0, sizeof(*a));
        a->type = type;
        snprintf(a->vm, sizeof(a->vm), "%s", vm ? vm : "");
        snprintf(a->host, sizeof(a->host), "%s", host ? host : "");
        a->generation = generation;
        a->attempt = attempt;
        a->why = why;
}

static void note(struct fb_output *out, size_t i, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
static void note(struct fb_output *out, size_t i, const char *fmt, ...)
{
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(out->note[i], FB_NOTE_MAX, fmt, ap);
        va_end(ap);
}

static void wake_at(struct fb_output *out, uint64_t t)
{
        if (!out->wake_ms || t < out->wake_ms)
                out->wake_ms = t;
}

static const struct fb_host *host_of(const struct fb_input *in, const char *name)
{
        for (size_t i = 0; name && name[0] && i < in->n_hosts; i++)
                if (!strcmp(in->hosts[i].name, name))
                        return &in->hosts[i];
        return NULL;
}

static bool usable(const struct fb_input *in, const struct fb_host *h)
{
        return h && strcmp(h->name, in->self) && h->member && h->agent_up;
}

uint64_t fb_wake_due_ms(uint64_t first_ms, unsigned attempt)
{
        static const uint32_t early_s[] = { 0, 5, 10, 20, 40 };
        if (attempt == 0)
                attempt = 1;
        if (attempt <= 5)
                return first_ms + early_s[attempt - 1] * 1000ull;
        return first_ms + (40 + 60ull * (attempt - 5)) * 1000ull;
}

/* F3: the candidates are the VM's hosts, then every spare; non-spares
 * first, spares only when spare_ok and no non-spare can take the role. */
static const char *choose_pass(const struct fb_input *in, const struct fb_vm *v, bool spares)
{
        const struct fb_host *best = NULL;
        const struct fb_host *cand[CFG_MAX_HOSTS + FB_MAX_HOSTS];
        size_t n = 0;
        for (unsigned k = 0; k < v->n_hosts; k++)
                cand[n++] = host_of(in, v->hosts[k]);
        for (size_t k = 0; k < in->n_hosts; k++)
                if (in->hosts[k].spare)
                        cand[n++] = &in->hosts[k];
        for (size_t k = 0; k < n; k++) {
                const struct fb_host *h = cand[k];
                if (!usable(in, h) || h->spare != spares)
                        continue;
                if (!v->fewest_vms)
                        return h->name;
                if (!best || h->n_vms < best->n_vms)
                        best = h;
        }
        return best ? best->name : NULL;
}

const char *fb_choose_standby(const struct fb_input *in, size_t vm_idx, bool spare_ok)
{
        const struct fb_vm *v = &in->vms[vm_idx];
        const char *c = choose_pass(in, v, false);
        if (!c && spare_ok)
                c = choose_pass(in, v, true);
        return c;
}

int fb_switchover_check(const struct fb_input *in, size_t vm_idx, const char *to, char *why,
                        size_t whylen)
{
        const struct fb_vm *v = &in->vms[vm_idx];
        const struct fb_host *h = host_of(in, v->peer);
        static const char *const st[] = {
                [FB_VM_OTHER] = "not running here", [FB_VM_UNPROTECTED] = "unprotected",
                [FB_VM_RETRYING] = "degraded (its standby is away)",
                [FB_VM_SYNCING] = "resyncing", [FB_VM_PROTECTED] = "protected",
                [FB_VM_BUSY] = "isolated or activating",
        };
        int r = 0;
        if (v->state == FB_VM_OTHER) {
                snprintf(why, whylen, "%s does not run on %s", v->name, in->self);
                r = -ENOENT;
        } else if (!in->quorate) {
                snprintf(why, whylen, "%s has no quorum: no switchover", in->self);
                r = -EBUSY;
        } else if (in->failover_busy) {
                snprintf(why, whylen, "a failure is being handled (%s): no switchover now",
                         in->failover_why ? in->failover_why : "failover busy");
                r = -EBUSY;
        } else if (v->newer_generation > v->generation) {
                snprintf(why, whylen, "a newer generation of %s runs elsewhere", v->name);
                r = -ESTALE;
        } else if (v->state != FB_VM_PROTECTED) {
                snprintf(why, whylen, "%s is not protected (it is %s): a switchover needs a standby "
                         "holding a committed replica", v->name, st[v->state]);
                r = -EINVAL;
        } else if (to && to[0] && strcmp(to, v->peer)) {
                snprintf(why, whylen, "%s is not the standby of %s (standby: %s)", to, v->name,
                         v->peer);
                r = -EINVAL;
        } else if (!v->standby_committed) {
                snprintf(why, whylen, "standby %s has not announced a committed replica of "
                         "generation %llu yet", v->peer, (unsigned long long)v->generation);
                r = -EBUSY;
        } else if (!usable(in, h)) {
                snprintf(why, whylen, "standby %s is not a member with havmsd up", v->peer);
                r = -EBUSY;
        } else if (in->switchover_running) {
                snprintf(why, whylen, "another switchover is running: one at a time");
                r = -EBUSY;
        } else if (v->busy) {
                snprintf(why, whylen, "an action for %s is in flight", v->name);
                r = -EBUSY;
        }
        return r;
}

/* F6 for one VM: does it need a spare now? Arms the timer otherwise. */
static bool wants_spare(const struct fb_input *in, const struct fb_vm *v, struct fb_output *out)
{
        if (!v->spare_wait_s || !v->unprotected_since_ms || !v->reprotect_auto)
                return false;
        uint64_t due = v->unprotected_since_ms + (uint64_t)v->spare_wait_s * 1000;
        if (in->now_ms >= due)
                return true;
        wake_at(out, due);
        return false;
}

static bool ours(const struct fb_vm *v)
{
        return v->state != FB_VM_OTHER;
}

/* The VMs running here; returns whether this one needs a spare. */
static bool plan_vm(const struct fb_input *in, size_t i, bool *switch_planned,
                    bool *blocks_off, struct fb_output *out)
{
        const struct fb_vm *v = &in->vms[i];
        const struct fb_host *peer = host_of(in, v->peer);
        if (v->newer_generation > v->generation) { /* F1 */
                note(out, i, "generation %llu of it runs elsewhere: not the owner, no failback "
                             "action here", (unsigned long long)v->newer_generation);
                return false;
        }
        if (v->busy) {
                if (v->state == FB_VM_UNPROTECTED || v->state == FB_VM_RETRYING)
                        *blocks_off = true;
                return false;
        }
        switch (v->state) {
        case FB_VM_UNPROTECTED: {
                *blocks_off = true;
                const char *c = fb_choose_standby(in, i, true);
                if (v->operator_unprotected) {
                        note(out, i, "unprotected by the operator: `havmsctl protect %s` resumes "
                                     "protection", v->name);
                        return false;
                }
                if (!v->reprotect_auto) {
                        if (c)
                                note(out, i, "no standby; reprotect = manual: `havmsctl protect "
                                             "%s --peer %s`", v->name, c);
                        return false;
                }
                if (c) {
                        act(out, FB_PROTECT, v->name, c, v->generation, 0,
                            host_of(in, c)->spare ? "a woken spare can take the standby role"
                                                  : "a host that may back it up is a member");
                        return false;
                }
                note(out, i, "no standby: no candidate host is a member with havmsd up");
                return wants_spare(in, v, out);
        }
        case FB_VM_RETRYING: {
                *blocks_off = true;
                if (usable(in, peer)) {
                        note(out, i, "connecting to standby %s (checkpointd retries it)", v->peer);
                        return false;
                }
                const char *c = fb_choose_standby(in, i, true);
                if (c && strcmp(c, v->peer) && v->reprotect_auto) {
                        act(out, FB_UNPROTECT, v->name, v->peer, v->generation, 0,
                            "its standby is away and another host can take the role");
                        return false;
                }
                note(out, i, "standby %s is away; checkpointd retries it", v->peer);
                return wants_spare(in, v, out);
        }
        case FB_VM_PROTECTED:
                break;
        case FB_VM_SYNCING:
                /* F7: no spare is powered off while a VM has no committed
                 * standby yet: should this (re)sync fail, a spare that is
                 * up takes the role at once instead of after a boot */
                *blocks_off = true;
                return false;
        default:
                return false;
        }
        /* F7: hand the standby role back from a spare */
        if (peer && peer->spare && peer->hand_back) {
                const char *c = fb_choose_standby(in, i, false);
                if (c) {
                        act(out, FB_UNPROTECT, v->name, v->peer, v->generation, 0,
                            "hand-back: a regular host returned, the spare gives the role up");
                        return false;
                }
        }
        /* F5 */
        if (v->failback == FB_FAILBACK_OFF || !v->preferred[0] || !strcmp(v->preferred, in->self) ||
            strcmp(v->peer, v->preferred) || !v->standby_committed || !v->preferred_since_ms)
                return false;
        if (v->failback == FB_FAILBACK_MANUAL) {
                out->failback_pending[i] = true;
                note(out, i, "switchover to preferred host %s pending (failback = manual): "
                             "`havmsctl switchover %s`", v->preferred, v->name);
                return false;
        }
        uint64_t due = v->preferred_since_ms + (uint64_t)v->failback_delay_s * 1000;
        if (in->now_ms < due) {
                note(out, i, "failing back to %s in %llu s", v->preferred,
                     (unsigned long long)((due - in->now_ms + 999) / 1000));
                wake_at(out, due);
                return false;
        }
        char why[FB_NOTE_MAX];
        if (*switch_planned) {
                note(out, i, "failback to %s waits: another switchover runs", v->preferred);
                return false;
        }
        if (fb_switchover_check(in, i, v->preferred, why, sizeof(why)) < 0) {
                note(out, i, "failback to %s waits: %s", v->preferred, why);
                return false;
        }
        *switch_planned = true;
        act(out, FB_SWITCHOVER, v->name, v->preferred, v->generation, 0,
            "failback = auto: the preferred host has been the standby for failback_delay_s");
        note(out, i, "failing back to %s", v->preferred);
        return false;
}

/* F6: one spare at a time from this host, with back-off. */
static void plan_wake(const struct fb_input *in, struct fb_output *out)
{
        const struct fb_host *next = NULL;
        uint64_t retry_at = 0;
        for (size_t k = 0; k < in->n_hosts; k++) {
                const struct fb_host *h = &in->hosts[k];
                if (!h->spare)
                        continue;
                if (h->member)
                        return; /* up (its havmsd may still be starting): F3 takes it */
                if (h->spare_state == FB_SPARE_WAKING) {
                        uint64_t give_up = h->wake_first_ms + (uint64_t)h->boot_timeout_s * 1000;
                        if (in->now_ms >= give_up) {
                                act(out, FB_WAKE_FAILED, NULL, h->name, 0, h->wake_attempts,
                                    "it did not join within boot_timeout_s");
                                continue; /* the next spare may be woken */
                        }
                        uint64_t due = fb_wake_due_ms(h->wake_first_ms, h->wake_attempts + 1);
                        if (in->now_ms >= due)
                                act(out, FB_WAKE, NULL, h->name, 0, h->wake_attempts + 1,
                                    "not a member yet: woken again");
                        else
                                wake_at(out, due < give_up ? due : give_up);
                        return; /* never two spares waking at once */
                }
                if (next)
                        continue;
                if (h->spare_state == FB_SPARE_FAILED &&
                    in->now_ms < h->failed_ms + FB_SPARE_RETRY_MS) {
                        uint64_t t = h->failed_ms + FB_SPARE_RETRY_MS;
                        if (!retry_at || t < retry_at)
                                retry_at = t;
                        continue;
                }
                next = h;
        }
        if (next)
                act(out, FB_WAKE, NULL, next->name, 0, 1,
                    "a VM has been without a standby for spare_wait_s and no regular host can "
                    "take the role");
        else if (retry_at)
                wake_at(out, retry_at);
}

/* F7: the first non-spare member (by name) powers a handed-back spare off,
 * whether or not its havmsd has announced itself here yet: a host that has
 * just joined has not heard from the others, knows nothing of their VMs,
 * and must not act for them (seen on the test bed: the repaired b powered
 * the spare off 100 ms after joining, before the owner a had protected its
 * VM to b). If that member's havmsd is down, the spare stays on: the safe
 * side. */
static bool self_powers_off(const struct fb_input *in)
{
        for (size_t k = 0; k < in->n_hosts; k++) {
                const struct fb_host *h = &in->hosts[k];
                if (!h->spare && h->member && strcmp(h->name, in->self) < 0)
                        return false;
        }
        return true;
}

static void plan_spare_off(const struct fb_input *in, struct fb_output *out)
{
        if (!self_powers_off(in))
                return;
        for (size_t k = 0; k < in->n_hosts; k++) {
                const struct fb_host *h = &in->hosts[k];
                if (!h->spare || !h->hand_back || !h->member || !h->agent_up || h->n_vms)
                        continue;
                bool used = false;
                for (size_t i = 0; i < in->n_vms; i++)
                        used |= ours(&in->vms[i]) && !strcmp(in->vms[i].peer, h->name);
                for (size_t a = 0; a < out->n_actions; a++)
                        used |= out->actions[a].type == FB_PROTECT &&
                                !strcmp(out->actions[a].host, h->name);
                if (!used)
                        act(out, FB_SPARE_OFF, NULL, h->name, 0, 0,
                            "hand-back: the spare runs and backs up nothing");
        }
}

void fb_plan(const struct fb_input *in, struct fb_output *out)
{
        memset(out, 0, sizeof(*out));
        for (size_t i = 0; i < in->n_vms; i++) { /* F2 */
                if (!ours(&in->vms[i]))
                        continue;
                if (!in->quorate)
                        note(out, i, "no quorum: failback waits");
                else if (in->failover_busy)
                        note(out, i, "failback waits: %s",
                             in->failover_why ? in->failover_why : "a failure is being handled");
        }
        if (!in->quorate || in->failover_busy)
                return;
        bool switch_planned = in->switchover_running, need_spare = false, blocks_off = false;
        for (size_t i = 0; i < in->n_vms; i++)
                if (ours(&in->vms[i]))
                        need_spare |= plan_vm(in, i, &switch_planned, &blocks_off, out);
        if (need_spare)
                plan_wake(in, out);
        /* F7 looks at the whole cluster: the host that decides the
         * power-off is often not the VM's owner */
        for (size_t k = 0; k < in->n_hosts; k++)
                blocks_off |= in->hosts[k].member && in->hosts[k].unsettled;
        if (!need_spare && !blocks_off)
                plan_spare_off(in, out);
}

const char *fb_act_name(enum fb_act a)
{
        static const char *const names[] = {
                [FB_PROTECT] = "protect",       [FB_SWITCHOVER] = "switchover",
                [FB_WAKE] = "wake",             [FB_WAKE_FAILED] = "wake-failed",
                [FB_SPARE_OFF] = "spare-off",   [FB_UNPROTECT] = "unprotect",
        };
        return (unsigned)a < sizeof(names) / sizeof(names[0]) && names[a] ? names[a] : "?";
}

const char *fb_spare_state_name(enum fb_spare_state s)
{
        static const char *const names[] = {
                [FB_SPARE_ASLEEP] = "asleep", [FB_SPARE_WAKING] = "waking",
                [FB_SPARE_UP] = "up",         [FB_SPARE_FAILED] = "failed",
        };
        return (unsigned)s < sizeof(names) / sizeof(names[0]) ? names[s] : "?";
}

enum fb_vm_state fb_vm_state_parse(const char *s)
{
        static const struct {
                const char *text;
                enum fb_vm_state state;
        } map[] = {
                { "running", FB_VM_UNPROTECTED }, { "degraded", FB_VM_RETRYING },
                { "connecting", FB_VM_RETRYING }, { "syncing", FB_VM_SYNCING },
                { "protected", FB_VM_PROTECTED }, { "held", FB_VM_PROTECTED },
                { "isolated", FB_VM_BUSY },       { "activating", FB_VM_BUSY },
        };
        for (size_t i = 0; s && i < sizeof(map) / sizeof(map[0]); i++)
                if (!strcmp(s, map[i].text))
                        return map[i].state;
        return FB_VM_OTHER;
}
