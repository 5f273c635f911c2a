/* controller: the failback plan's memory (see controller.h). */
#include "controller.h"

#include <stdio.h>
#include <string.h>

void fbc_init(struct fb_controller *c, const struct host_config *h)
{
        memset(c, 0, sizeof(*c));
        c->host = h;
        for (unsigned i = 0; i < h->n_spares && i < CFG_MAX_SPARES; i++) {
                c->spares[i].cfg = &h->spares[i];
                c->spares[i].state = FB_SPARE_ASLEEP;
        }
        c->n_spares = h->n_spares;
}

struct fbc_vm *fbc_vm(struct fb_controller *c, const char *name, bool create)
{
        for (size_t i = 0; i < c->n_vms; i++)
                if (!strcmp(c->vms[i].name, name))
                        return &c->vms[i];
        if (!create || c->n_vms >= FB_MAX_VMS)
                return NULL;
        struct fbc_vm *v = &c->vms[c->n_vms++];
        memset(v, 0, sizeof(*v));
        snprintf(v->name, sizeof(v->name), "%s", name);
        return v;
}

struct fbc_spare *fbc_spare(struct fb_controller *c, const char *name)
{
        for (size_t i = 0; i < c->n_spares; i++)
                if (!strcmp(c->spares[i].cfg->name, name))
                        return &c->spares[i];
        return NULL;
}

static struct fb_host *in_host(struct fb_input *in, const char *name)
{
        for (size_t i = 0; i < in->n_hosts; i++)
                if (!strcmp(in->hosts[i].name, name))
                        return &in->hosts[i];
        return NULL;
}

/* A spare's state follows its membership: joined = up; a spare that left
 * after being up is asleep again (powered off, or lost: woken on demand). */
static void observe_spares(struct fb_controller *c, struct fb_input *in)
{
        for (size_t k = 0; k < c->n_spares; k++) {
                struct fbc_spare *s = &c->spares[k];
                struct fb_host *h = in_host(in, s->cfg->name);
                if (!h && in->n_hosts < FB_MAX_HOSTS) { /* no corosync node: never a member */
                        h = &in->hosts[in->n_hosts++];
                        memset(h, 0, sizeof(*h));
                        snprintf(h->name, sizeof(h->name), "%s", s->cfg->name);
                }
                if (!h)
                        continue;
                if (h->member && s->state != FB_SPARE_UP) {
                        s->state = FB_SPARE_UP;
                        s->up_ms = in->now_ms;
                } else if (!h->member && s->state == FB_SPARE_UP) {
                        s->state = FB_SPARE_ASLEEP;
                        s->attempts = 0;
                }
                h->spare = true;
                h->spare_state = s->state;
                h->hand_back = !strcmp(s->cfg->on_return, "hand-back");
                h->boot_timeout_s = s->cfg->boot_timeout_s;
                h->wake_attempts = s->attempts;
                h->wake_first_ms = s->first_ms;
                h->wake_last_ms = s->last_ms;
                h->failed_ms = s->failed_ms;
        }
}

static bool has_standby(enum fb_vm_state s)
{
        return s == FB_VM_PROTECTED;
}

void fbc_observe(struct fb_controller *c, struct fb_input *in)
{
        observe_spares(c, in);
        for (size_t i = 0; i < in->n_vms; i++) {
                struct fb_vm *v = &in->vms[i];
                struct fbc_vm *r = fbc_vm(c, v->name, v->state != FB_VM_OTHER);
                if (!r)
                        continue;
                if (v->state == FB_VM_OTHER) {
                        r->unprotected_since_ms = r->preferred_since_ms = 0;
                        r->state = v->state;
                        continue;
                }
                /* without a standby: from the first time it is seen so, until
                 * a standby holds a committed replica again */
                if (has_standby(v->state) && v->standby_committed)
                        r->unprotected_since_ms = 0;
                else if (!r->unprotected_since_ms && v->state != FB_VM_SYNCING)
                        r->unprotected_since_ms = in->now_ms;
                bool pref = v->state == FB_VM_PROTECTED && v->standby_committed &&
                            v->preferred[0] && !strcmp(v->peer, v->preferred);
                if (!pref)
                        r->preferred_since_ms = 0;
                else if (!r->preferred_since_ms)
                        r->preferred_since_ms = in->now_ms;
                r->state = v->state;
                snprintf(r->peer, sizeof(r->peer), "%s", v->peer);
                v->unprotected_since_ms = r->unprotected_since_ms;
                v->preferred_since_ms = r->preferred_since_ms;
                if (r->sw != FBC_SW_NONE)
                        v->busy = true;
        }
        in->switchover_running |= fbc_switch_running(c, in->now_ms);
}

void fbc_action_started(struct fb_controller *c, const struct fb_action *x, uint64_t now_ms)
{
        struct fbc_spare *s = x->host[0] ? fbc_spare(c, x->host) : NULL;
        struct fbc_vm *v = x->vm[0] ? fbc_vm(c, x->vm, false) : NULL;
        switch (x->type) {
        case FB_WAKE:
                if (!s)
                        break;
                if (s->state != FB_SPARE_WAKING) {
                        s->state = FB_SPARE_WAKING;
                        s->first_ms = now_ms;
                        s->attempts = 0;
                }
                s->attempts++;
                s->last_ms = now_ms;
                break;
        case FB_WAKE_FAILED:
                if (s) {
                        s->state = FB_SPARE_FAILED;
                        s->failed_ms = now_ms;
                }
                break;
        case FB_SPARE_OFF:
                if (s)
                        s->job = true;
                break;
        case FB_PROTECT:
                if (v)
                        v->reprotect_ms = now_ms;
                break;
        case FB_SWITCHOVER:
        case FB_UNPROTECT:
                break;
        }
}

void fbc_wake_done(struct fb_controller *c, const char *spare, const char *way)
{
        struct fbc_spare *s = fbc_spare(c, spare);
        if (!s)
                return;
        s->job = false;
        snprintf(s->last_way, sizeof(s->last_way), "%s", way);
}

void fbc_switch_begin(struct fb_controller *c, const char *vm, const char *to,
                      const char *requester, uint32_t reqid, uint64_t generation, uint64_t now_ms)
{
        struct fbc_vm *v = fbc_vm(c, vm, true);
        if (!v)
                return;
        v->sw = FBC_SW_HANDOVER;
        snprintf(v->sw_to, sizeof(v->sw_to), "%s", to);
        snprintf(v->sw_requester, sizeof(v->sw_requester), "%s", requester ? requester : "");
        v->sw_reqid = reqid;
        v->sw_generation = generation;
        v->sw_started_ms = now_ms;
        v->sw_stopped_ms = 0;
        v->sw_pause_ms = 0;
}

void fbc_switch_stopped(struct fb_controller *c, const char *vm, uint32_t pause_ms,
                        uint64_t now_ms)
{
        struct fbc_vm *v = fbc_vm(c, vm, false);
        if (!v || v->sw != FBC_SW_HANDOVER)
                return;
        v->sw = FBC_SW_RELINQUISHED;
        v->sw_pause_ms = pause_ms;
        v->sw_stopped_ms = now_ms;
}

void fbc_switch_end(struct fb_controller *c, const char *vm)
{
        struct fbc_vm *v = fbc_vm(c, vm, false);
        if (v)
                v->sw = FBC_SW_NONE;
}

void fbc_remote_begin(struct fb_controller *c, const char *host, const char *vm, uint64_t now_ms)
{
        fbc_remote_end(c, host, vm);
        if (c->n_remote >= FBC_MAX_REMOTE)
                return;
        struct fbc_remote *r = &c->remote[c->n_remote++];
        snprintf(r->host, sizeof(r->host), "%s", host);
        snprintf(r->vm, sizeof(r->vm), "%s", vm ? vm : "");
        r->since_ms = now_ms;
}

/* vm NULL: every switchover of that host (it left). */
void fbc_remote_end(struct fb_controller *c, const char *host, const char *vm)
{
        for (size_t i = 0; i < c->n_remote;) {
                struct fbc_remote *r = &c->remote[i];
                if (!strcmp(r->host, host) && (!vm || !strcmp(r->vm, vm)))
                        c->remote[i] = c->remote[--c->n_remote];
                else
                        i++;
        }
}

bool fbc_switch_running(const struct fb_controller *c, uint64_t now_ms)
{
        for (size_t i = 0; i < c->n_vms; i++)
                if (c->vms[i].sw != FBC_SW_NONE)
                        return true;
        /* another host's: trusted until it says it ended, it leaves, or
         * (a lost message) the timeout */
        for (size_t i = 0; i < c->n_remote; i++)
                if (now_ms < c->remote[i].since_ms + FBC_SWITCH_TIMEOUT_MS)
                        return true;
        return false;
}
