/* agent: havmsd's event loop, its view of the cluster, and the actions
 * policy.c decides (see agent.h). */
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "clmsg.h"
#include "config.h"
#include "controller.h"
#include "ctl.h"
#include "fence.h"
#include "hooks.h"
#include "log.h"
#include "membership.h"
#include "msgid.h"
#include "policy.h"
#include "runner.h"
#include "util.h"
#include "wol.h"

#define TICK_MS 100            /* checkpointd status poll and link check */
#define CTL_TIMEOUT_MS 1000    /* one status call */
#define JOB_CTL_TIMEOUT_MS 60000
#define EVENTS_MAX 512
#define CKPT_RESTART_MS 1000   /* back-off between checkpointd starts */
#define CKPT_DEAD_TICKS 30     /* an adopted checkpointd silent this long is replaced */
#define ACTION_RETRY_MS 1000   /* a failed checkpointd command is retried after this */
#define PATROL_TICKS 50        /* the standby patrol runs every 5 s */
#define RESEND_MS 1000         /* an unanswered CPG request is sent again */
#define CKPT_RESTART_MAX_MS 30000 /* back-off ceiling for a checkpointd that keeps dying */
#define PATROL_MAX 16
#define PATROL_LAG_MS 2000     /* a connected replica older than this is reported */
#define PATROL_MIN_FREE (64ull << 20)
#define SW_REPLY_MS 150000     /* havmsctl switchover waits this long for the outcome */
#define SPARE_OFF_AGAIN_MS 60000 /* a spare powered off is not powered off again before this */
#define OFF_COMMAND_MS 60000   /* off_command's deadline */

/* epoll tags: small integers; membership fds are tagged TAG_MEM + index. */
enum { TAG_SIGNAL = 1, TAG_TICK, TAG_DECIDE, TAG_CTL, TAG_CKPT, TAG_JOB, TAG_MEM = 16 };

struct event {
        uint64_t wall_ms;
        enum log_level level;
        char id[16];
        char vm[CFG_NAME_MAX];
        char host[CFG_NAME_MAX];
        char text[256];
};

struct ahost {
        struct po_host po;
        const struct cfg_fence *fence_cfg;
        char fence_last[200];     /* last fence outcome, for status */
        char monitor[200];        /* last monitor outcome: "ok", "failed: ...", "unchecked" */
        bool have_state;
        bool announced;           /* a STATE arrived since it last joined: its havmsd is up */
        struct clmsg state;       /* its last STATE announcement */
        struct links_seen {
                size_t n;
                struct membership_link l[MEMBERSHIP_LINKS_MAX];
        } links;
};

struct avm {
        struct po_vm po;          /* local view + CPG flags, fed to the policy */
        bool seen;                /* in checkpointd's last status */
        uint64_t epoch;
        int64_t lag_ms;           /* backup: age of its last commit (-1 unknown) */
        int qemu_pid;             /* the VM's QEMU here (the hot standby on a backup) */
        char note[PO_NOTE_MAX];
        uint64_t lost_ms;         /* when the owner's loss was first seen (takeover timing) */
        uint64_t retry_ms;        /* a failed action: decide nothing for the VM before this */
        uint64_t asked_ms;        /* when ASK_DISCARD / RELINQUISH went out (resent each second) */
        uint64_t stale_asked_ms;  /* S6: when a stale replica's holder was last asked to drop it */
        bool stopping;            /* a self-fence kill was sent */
        bool hook_aborted;        /* pre-activate said abort: no automatic takeover until
                                     the VM's state here changes */
        /* failback (failback/) */
        char raw_state[24];       /* checkpointd's own state word */
        bool has_sync;            /* syncing: checkpointd's progress below */
        bool operator_unprotected; /* checkpointd: `unprotect` typed by an operator */
        double sync_pct, sync_mib_s, sync_eta_s;
        bool fb_busy;             /* a failback job for it runs */
        uint64_t fb_retry_ms;     /* a failback job failed: none for it before this */
        char fb_note[FB_NOTE_MAX];
        bool fb_pending;          /* failback = manual: a switchover is pending */
        struct fb_vm fbcfg;       /* its [failback] settings (name, config fields only) */
};

enum job_kind { JOB_CTL, JOB_FENCE, JOB_MONITOR, JOB_HOOK, JOB_WAKE, JOB_SPARE_OFF };

struct job {
        struct agent *a;
        enum job_kind kind;
        enum po_act act;
        char vm[CFG_NAME_MAX];
        char host[CFG_NAME_MAX];
        uint64_t generation;
        const struct cfg_fence *fence_cfg;
        /* in/out */
        char cmd[32];
        json_object *args;
        int r;
        char err[512];
        json_object *resp;
        struct fence_result fence;
        enum hook_event hook;
        struct hook_env henv;
        char hpeer[CFG_NAME_MAX], hrole[16], hvm[CFG_NAME_MAX], hhost[CFG_NAME_MAX];
        struct hook_result hres;
        uint64_t started_ms;
        bool fb;                  /* a failback job: fbact says which */
        enum fb_act fbact;
        const struct cfg_spare *spare;
        char way[64];             /* JOB_WAKE: how it went out */
        struct runner_job *rj;
        struct job *next;
};

/* A `havmsctl switchover` waiting for its outcome (its socket stays open). */
struct pending {
        int fd;
        char vm[CFG_NAME_MAX];
        char owner[CFG_NAME_MAX];
        uint32_t reqid;
        uint64_t deadline_ms;
        struct pending *next;
};

struct agent {
        struct host_config host;
        char config_path[CFG_PATH_MAX];
        int epfd, sigfd, tickfd, decidefd, ctlfd;
        /* checkpointd */
        pid_t ckpt_pid;
        int ckpt_pidfd;
        unsigned ckpt_restarts;
        uint64_t ckpt_next_start_ms;
        unsigned ckpt_silent_ticks;
        bool ckpt_up;
        /* corosync */
        struct membership *mem;
        int mem_fds[8];
        size_t n_mem_fds;
        bool corosync_up, quorum_known, quorate;
        bool nodes_known;         /* the first node membership report arrived */
        uint64_t quorate_since_ms;
        uint64_t unsettled_since_ms; /* a host left, its votes not yet recounted (0: settled) */
        bool unsettled_said;
        uint64_t started_ms;
        bool unmanaged_reported;  /* an adopted checkpointd without --managed */
        unsigned ckpt_quick_exits;/* consecutive exits soon after a start: back-off */
        uint64_t ckpt_started_ms;
        uint64_t mem_retry_ms;
        uint32_t self_nodeid;
        struct ahost hosts[PO_MAX_HOSTS];
        size_t n_hosts;
        struct avm vms[PO_MAX_VMS];
        size_t n_vms;
        bool state_dirty;         /* our STATE changed: announce it */
        bool ckpt_adopted;        /* the running checkpointd is not our child */
        unsigned patrol_tick;
        char patrol[PATROL_MAX][PO_NOTE_MAX]; /* problems the standby patrol sees now */
        size_t n_patrol;
        uint64_t next_monitor_ms;
        struct job *jobs;
        struct fb_controller fb;  /* failback's memory (failback/controller.h) */
        struct pending *pending;
        uint32_t next_reqid;
        pthread_mutex_t ev_lock;
        struct event events[EVENTS_MAX];
        uint64_t n_events;
        bool quit;
};

/* ------------------------------------------------------------ events -- */

/* Log once, where the decision is made, and keep it for `havmsctl events`. */
static void ev(struct agent *a, enum log_level lvl, const char *id, const char *vm,
               const char *host, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void ev(struct agent *a, enum log_level lvl, const char *id, const char *vm,
               const char *host, const char *fmt, ...)
{
        char text[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(text, sizeof(text), fmt, ap);
        va_end(ap);
        log_msg(lvl, id, vm && vm[0] ? vm : NULL, -1, "%s", text);
        pthread_mutex_lock(&a->ev_lock);
        struct event *e = &a->events[a->n_events++ % EVENTS_MAX];
        e->wall_ms = wall_ms();
        e->level = lvl;
        snprintf(e->id, sizeof(e->id), "%s", id ? id : "");
        snprintf(e->vm, sizeof(e->vm), "%s", vm ? vm : "");
        snprintf(e->host, sizeof(e->host), "%s", host ? host : "");
        snprintf(e->text, sizeof(e->text), "%s", text);
        pthread_mutex_unlock(&a->ev_lock);
}

/* ------------------------------------------------------------ lookups -- */

static struct ahost *host_by_name(struct agent *a, const char *name)
{
        for (size_t i = 0; i < a->n_hosts; i++)
                if (!strcmp(a->hosts[i].po.name, name))
                        return &a->hosts[i];
        return NULL;
}

static struct ahost *host_by_id(struct agent *a, uint32_t nodeid)
{
        for (size_t i = 0; i < a->n_hosts; i++)
                if (a->hosts[i].po.nodeid == nodeid)
                        return &a->hosts[i];
        return NULL;
}

/* The VM's [failover] settings, read again whenever it leaves `defined`:
 * an operator may have edited the definition meanwhile. */
static void vm_reload_config(struct agent *a, struct avm *v)
{
        struct vm_config cfg;
        char err[256];
        if (vm_config_find(&a->host, v->po.name, &cfg, err, sizeof(err)) == 0) {
                v->po.failover_auto = strcmp(cfg.failover, "manual") != 0;
                v->po.local_restarts = cfg.local_restarts;
                struct fb_vm *f = &v->fbcfg;
                f->reprotect_auto = strcmp(cfg.reprotect, "manual") != 0;
                f->failback = !strcmp(cfg.failback, "auto")  ? FB_FAILBACK_AUTO
                              : !strcmp(cfg.failback, "off") ? FB_FAILBACK_OFF
                                                             : FB_FAILBACK_MANUAL;
                f->failback_delay_s = cfg.failback_delay_s;
                snprintf(f->preferred, sizeof(f->preferred), "%s", cfg.preferred_host);
                f->n_hosts = vm_config_hosts(&cfg, a->host.name, f->hosts, CFG_MAX_HOSTS);
                f->fewest_vms = !strcmp(cfg.standby_policy, "fewest-vms");
                f->spare_wait_s = cfg.spare_wait_s;
        }
}

static struct avm *vm_by_name(struct agent *a, const char *name, bool create)
{
        for (size_t i = 0; i < a->n_vms; i++)
                if (!strcmp(a->vms[i].po.name, name))
                        return &a->vms[i];
        if (!create || a->n_vms >= PO_MAX_VMS)
                return NULL;
        struct avm *v = &a->vms[a->n_vms++];
        memset(v, 0, sizeof(*v));
        snprintf(v->po.name, sizeof(v->po.name), "%s", name);
        v->po.failover_auto = true;
        v->fbcfg.reprotect_auto = true;
        v->fbcfg.spare_wait_s = 30;
        v->fbcfg.failback_delay_s = 60;
        memcpy(v->fbcfg.hosts[0], a->host.name, CFG_NAME_MAX);
        v->fbcfg.n_hosts = 1; /* until its definition is read */
        vm_reload_config(a, v);
        return v;
}

static bool runs_here(enum po_vm_state s)
{
        return s == PO_VM_RUNNING || s == PO_VM_SYNCING || s == PO_VM_PROTECTED ||
               s == PO_VM_ISOLATED;
}

/* -------------------------------------------------------------- jobs -- */

/* Wake a spare (worker thread): wake = auto or ipmi with a [fence NAME]:
 * its level 1 with action=on; auto falls back to wake-on-LAN, wol uses only
 * that. 0 with how it went out in way, or -errno with why in err. */
static int spare_wake(const struct cfg_spare *sp, const struct cfg_fence *f,
                      struct fence_result *fr, char *way, size_t waylen, char *err, size_t errlen)
{
        char ipmi_err[200] = "";
        if (f && strcmp(sp->wake, "wol")) {
                int r = fence_run(f, FENCE_ON, 1, fr);
                if (r == 0 && fr->ok) {
                        snprintf(way, waylen, "ipmi (%.40s action=on)", f->levels[0].agent);
                        return 0;
                }
                snprintf(ipmi_err, sizeof(ipmi_err), "%.60s on failed: %.120s", f->levels[0].agent,
                         r < 0 ? strerror(-r) : fr->n_attempts ? fr->attempts[0].reason : "?");
        }
        if (!strcmp(sp->wake, "ipmi")) {
                snprintf(err, errlen, "%s", ipmi_err[0] ? ipmi_err : "no [fence] section for it");
                return -EIO;
        }
        struct wol_target t;
        memset(&t, 0, sizeof(t));
        snprintf(t.ifname, sizeof(t.ifname), "%s", sp->interface);
        snprintf(t.broadcast, sizeof(t.broadcast), "%s", sp->broadcast);
        t.port = (uint16_t)sp->port;
        if (wol_parse_mac(sp->mac, t.mac) < 0 ||
            (sp->password[0] && wol_parse_password(sp->password, t.pw, &t.pwlen) < 0)) {
                snprintf(err, errlen, "bad mac or password in [spare %s]", sp->name);
                return -EINVAL;
        }
        unsigned sent = 0;
        char werr[256] = "";
        int r = wol_send(&t, &sent, werr, sizeof(werr));
        if (r < 0) {
                snprintf(err, errlen, "%.200s%swake-on-LAN on %s: %.200s", ipmi_err, ipmi_err[0] ? "; " : "",
                         sp->interface, werr[0] ? werr : strerror(-r));
                return r;
        }
        snprintf(way, waylen, "wol %s%s%s on %s%s%s", sent & WOL_SENT_UDP ? "udp" : "",
                 (sent & WOL_SENT_UDP) && (sent & WOL_SENT_RAW) ? "+" : "",
                 sent & WOL_SENT_RAW ? "raw" : "", sp->interface, ipmi_err[0] ? " after " : "",
                 ipmi_err[0] ? "ipmi failed" : "");
        return 0;
}

/* Power a spare off after a hand-back (worker thread): its fence levels
 * (off, verified), else off_command (argv split on blanks). */
static int spare_off(const struct cfg_spare *sp, const struct cfg_fence *f, struct fence_result *fr,
                     char *err, size_t errlen)
{
        if (f) {
                int r = fence_run(f, FENCE_OFF, 0, fr);
                if (r == 0 && fr->ok)
                        return 0;
                snprintf(err, errlen, "fence off failed%s%s", r < 0 ? ": " : "",
                         r < 0 ? strerror(-r) : "");
                return r < 0 ? r : -EIO;
        }
        char buf[CFG_PATH_MAX];
        char *argv[16];
        size_t n = 0;
        snprintf(buf, sizeof(buf), "%s", sp->off_command);
        for (char *save = NULL, *t = strtok_r(buf, " \t", &save); t && n < 15;
             t = strtok_r(NULL, " \t", &save))
                argv[n++] = t;
        argv[n] = NULL;
        if (!n) {
                snprintf(err, errlen, "no [fence %s] and no off_command", sp->name);
                return -EINVAL;
        }
        struct runner_cmd cmd = { .path = argv[0], .argv = argv, .timeout_ms = OFF_COMMAND_MS };
        struct runner_result rr;
        int r = runner_run(&cmd, &rr);
        if (r < 0 || rr.end != RUNNER_EXITED || rr.exit_code) {
                char d[64];
                snprintf(err, errlen, "%.100s: %.60s %.200s", argv[0],
                         r < 0 ? strerror(-r) : runner_describe(&rr, d, sizeof(d)),
                         r < 0 ? "" : rr.stderr_tail);
                return r < 0 ? r : -EIO;
        }
        return 0;
}

static void job_body(void *arg, const volatile int *cancel)
{
        struct job *j = arg;
        struct agent *a = j->a;
        (void)cancel;
        switch (j->kind) {
        case JOB_CTL: {
                json_object *req = json_object_new_object();
                json_object_object_add(req, "cmd", json_object_new_string(j->cmd));
                json_object_object_add(req, "vm", json_object_new_string(j->vm));
                if (j->args)
                        json_object_object_add(req, "args", json_object_get(j->args));
                j->r = ctl_call(a->host.control_socket, req, JOB_CTL_TIMEOUT_MS, &j->resp);
                json_object_put(req);
                json_object *ok, *e;
                if (j->r == 0 && (!json_object_object_get_ex(j->resp, "ok", &ok) ||
                                  !json_object_get_boolean(ok))) {
                        j->r = -EREMOTEIO;
                        snprintf(j->err, sizeof(j->err), "%s",
                                 json_object_object_get_ex(j->resp, "error", &e)
                                         ? json_object_get_string(e) : "refused");
                } else if (j->r < 0) {
                        snprintf(j->err, sizeof(j->err), "checkpointd: %s", strerror(-j->r));
                }
                break;
        }
        case JOB_FENCE:
        case JOB_MONITOR:
                j->r = fence_run(j->fence_cfg, j->kind == JOB_FENCE ? FENCE_OFF : FENCE_MONITOR, 0,
                                 &j->fence);
                break;
        case JOB_HOOK:
                j->r = hooks_run(a->host.cluster.hooks_dir, a->host.cluster.hook_timeout_ms,
                                 j->hook, &j->henv, &j->hres);
                break;
        case JOB_WAKE:
                j->r = spare_wake(j->spare, j->fence_cfg, &j->fence, j->way, sizeof(j->way),
                                  j->err, sizeof(j->err));
                break;
        case JOB_SPARE_OFF:
                j->r = spare_off(j->spare, j->fence_cfg, &j->fence, j->err, sizeof(j->err));
                break;
        }
}

static struct job *job_new(struct agent *a, enum job_kind kind, const char *vm, const char *host)
{
        struct job *j = calloc(1, sizeof(*j));
        if (!j)
                return NULL;
        j->a = a;
        j->kind = kind;
        snprintf(j->vm, sizeof(j->vm), "%s", vm ? vm : "");
        snprintf(j->host, sizeof(j->host), "%s", host ? host : "");
        j->started_ms = now_ms();
        return j;
}

/* Run fn(j) on a worker thread; its end wakes the loop (TAG_JOB). */
static int job_launch(struct agent *a, struct job *j, runner_job_fn *fn)
{
        int r = runner_job_start(fn, j, &j->rj);
        if (r < 0) {
                json_object_put(j->args);
                free(j);
                return r;
        }
        struct epoll_event e = { .events = EPOLLIN };
        e.data.u64 = (uint64_t)(uintptr_t)j << 8 | TAG_JOB;
        epoll_ctl(a->epfd, EPOLL_CTL_ADD, runner_job_fd(j->rj), &e);
        j->next = a->jobs;
        a->jobs = j;
        return 0;
}

static int job_start(struct agent *a, struct job *j)
{
        return job_launch(a, j, job_body);
}

/* The hook environment of a job (hooks.h): the VM's fields when vm is
 * given, the fenced host (the job's host) when fenced. The strings live
 * in the job, so the worker thread owns what it reads. */
static void job_hook_env(struct agent *a, struct job *j, enum hook_event hev, const char *vm,
                         const char *peer, const char *role, uint64_t generation,
                         uint64_t epoch, bool fenced)
{
        j->hook = hev;
        snprintf(j->hhost, sizeof(j->hhost), "%s", a->host.name);
        j->henv = (struct hook_env){ .host = j->hhost, .fenced_host = fenced ? j->host : NULL };
        if (!vm)
                return;
        snprintf(j->hvm, sizeof(j->hvm), "%s", vm);
        snprintf(j->hpeer, sizeof(j->hpeer), "%s", peer);
        snprintf(j->hrole, sizeof(j->hrole), "%s", role);
        j->henv.vm = j->hvm;
        j->henv.peer = j->hpeer;
        j->henv.role = j->hrole;
        j->henv.has_generation = j->henv.has_epoch = true;
        j->henv.generation = generation;
        j->henv.epoch = epoch;
}

static void hook_async(struct agent *a, enum hook_event hev, const struct avm *v,
                       const char *fenced)
{
        struct job *j = job_new(a, JOB_HOOK, v ? v->po.name : NULL, fenced);
        if (!j)
                return;
        if (v)
                job_hook_env(a, j, hev, v->po.name, v->po.peer,
                             runs_here(v->po.state) ? "primary" : "backup", v->po.generation,
                             v->epoch, fenced != NULL);
        else
                job_hook_env(a, j, hev, NULL, NULL, NULL, 0, 0, fenced != NULL);
        job_start(a, j);
}

/* The pre-hook runs synchronously (bounded by hook_timeout_ms) in the
 * job's thread before the action itself. */
static void action_job_body(void *arg, const volatile int *cancel)
{
        struct job *j = arg;
        enum job_kind kind = j->kind;
        if (j->act == PO_ACT_ACTIVATE || j->act == PO_ACT_FENCE) {
                j->kind = JOB_HOOK;
                job_body(j, cancel);
                j->kind = kind;
                if (j->r == 0 && j->hres.verdict != HOOK_GO) {
                        j->r = j->hres.verdict == HOOK_DEFER ? -EAGAIN : -ECANCELED;
                        snprintf(j->err, sizeof(j->err), "%s hook said %s",
                                 hook_event_name(j->hook), hook_verdict_name(j->hres.verdict));
                        return;
                }
        }
        job_body(j, cancel);
}

static int start_action(struct agent *a, struct job *j)
{
        return job_launch(a, j, action_job_body);
}

/* ---------------------------------------------------------- announce -- */

static void send_msg(struct agent *a, const struct clmsg *m)
{
        if (!a->mem)
                return;
        uint8_t buf[CLMSG_MAX_SIZE];
        size_t len;
        if (clmsg_encode(m, buf, sizeof(buf), &len) == 0)
                membership_send(a->mem, buf, len);
}

static void announce_state(struct agent *a)
{
        static struct clmsg m;
        memset(&m, 0, sizeof(m));
        m.type = CLMSG_STATE;
        snprintf(m.sender, sizeof(m.sender), "%s", a->host.name);
        for (size_t i = 0; i < a->n_vms && m.n_vms < CLMSG_MAX_VMS; i++) {
                const struct avm *v = &a->vms[i];
                if (!v->seen)
                        continue;
                struct clmsg_vm *e = &m.vms[m.n_vms++];
                snprintf(e->name, sizeof(e->name), "%s", v->po.name);
                snprintf(e->peer, sizeof(e->peer), "%s", v->po.peer);
                e->state = v->po.state;
                e->last_exit = v->po.last_exit;
                e->generation = v->po.generation;
                e->committed_epoch = v->epoch;
        }
        send_msg(a, &m);
        a->state_dirty = false;
}

static void send_ref(struct agent *a, enum clmsg_type type, const char *vm, uint64_t gen,
                     const char *target)
{
        struct clmsg m;
        memset(&m, 0, sizeof(m));
        m.type = type;
        snprintf(m.sender, sizeof(m.sender), "%s", a->host.name);
        snprintf(m.vm, sizeof(m.vm), "%s", vm ? vm : "");
        snprintf(m.target, sizeof(m.target), "%s", target);
        m.generation = gen;
        send_msg(a, &m);
}

/* ---------------------------------------------------------- deciding -- */

static void arm_decide_timer(struct agent *a, uint64_t wake_ms)
{
        struct itimerspec its = { 0 };
        if (wake_ms) {
                uint64_t now = now_ms(), d = wake_ms > now ? wake_ms - now : 1;
                its.it_value.tv_sec = (time_t)(d / 1000);
                its.it_value.tv_nsec = (long)(d % 1000) * 1000000L;
        }
        timerfd_settime(a->decidefd, 0, &its, NULL);
}

static void do_action(struct agent *a, const struct po_action *x);
static void poll_checkpointd(struct agent *a);
static uint64_t failback_decide(struct agent *a, const struct po_output *pout);

/* What host h last announced about VM vm; NULL if nothing. */
static const struct clmsg_vm *host_vm(const struct ahost *h, const char *vm)
{
        for (size_t e = 0; h && h->have_state && e < h->state.n_vms; e++)
                if (!strcmp(h->state.vms[e].name, vm))
                        return &h->state.vms[e];
        return NULL;
}

/* The standby's last announcement for v. Kept after it left (its last
 * word is what the fence head start needs). */
static const struct clmsg_vm *peer_view(struct agent *a, const struct avm *v)
{
        return host_vm(host_by_name(a, v->po.peer), v->po.name);
}

/* S5's tie: does the peer hold a replica of this VM we run? Unknown
 * counts as yes (never both without a head start). */
static bool peer_holds_replica(struct agent *a, const struct avm *v)
{
        struct ahost *h = host_by_name(a, v->po.peer);
        if (!h || !h->have_state)
                return true;
        const struct clmsg_vm *x = peer_view(a, v);
        return x && (x->state == PO_VM_BK_READY || x->state == PO_VM_ACTIVATING);
}

/* The standby acted on our RELINQUISH: it no longer shows a ready replica
 * of our generation. */
static bool relinquish_taken(struct agent *a, const struct avm *v)
{
        if (!v->po.relinquished)
                return false;
        const struct clmsg_vm *x = peer_view(a, v);
        return !x || x->state != PO_VM_BK_READY || x->generation != v->po.generation;
}

/* S6, the owner's side: a member that announces a replica of a VM that
 * runs here, taken from this host, but is not its current standby (it was
 * cut off and replaced, or kept one from an earlier protection) is asked
 * to drop it, once a second while it announces it. Its own policy drops
 * it anyway when it sees a newer copy; this also frees it when the newer
 * copy is only ours. Returns when to ask again (0: nobody to ask). */
static uint64_t ask_stale_replicas(struct agent *a, uint64_t now)
{
        uint64_t again = 0;
        for (size_t i = 0; i < a->n_vms; i++) {
                struct avm *v = &a->vms[i];
                /* only while this host knows its standby (or the one it
                 * is syncing to or retrying) and it is another host. A
                 * holder still syncing is skipped: right after a protect
                 * it may be our new standby before our own view says so. */
                if (!v->seen || !runs_here(v->po.state) || !v->po.peer[0])
                        continue;
                for (size_t k = 0; k < a->n_hosts; k++) {
                        struct ahost *h = &a->hosts[k];
                        const struct clmsg_vm *x = host_vm(h, v->po.name);
                        if (!x || !h->po.member || !h->announced || !strcmp(h->po.name, v->po.peer) ||
                            strcmp(x->peer, a->host.name) || x->state != PO_VM_BK_READY)
                                continue;
                        if (now >= v->stale_asked_ms + 1000) {
                                bool say = now > v->stale_asked_ms + 5000; /* once, not each second */
                                v->stale_asked_ms = now;
                                if (say)
                                        ev(a, LOG_LVL_NOTICE, MSG_FO_ASK_DISCARD, v->po.name,
                                           h->po.name, "%s holds an old replica of %s (generation %"
                                           PRIu64 ", epoch %" PRIu64 ") that is not the standby's: "
                                           "asking it to drop it", h->po.name, v->po.name,
                                           x->generation, x->committed_epoch);
                                send_ref(a, CLMSG_ASK_DISCARD, v->po.name, v->po.generation,
                                         h->po.name);
                        }
                        if (!again || v->stale_asked_ms + 1000 < again)
                                again = v->stale_asked_ms + 1000;
                }
        }
        return again;
}

static void update_newer_generations(struct agent *a)
{
        for (size_t i = 0; i < a->n_vms; i++) {
                struct avm *v = &a->vms[i];
                v->po.newer_generation = 0;
                v->po.newer_copy_elsewhere = false;
                for (size_t k = 0; k < a->n_hosts; k++) {
                        struct ahost *h = &a->hosts[k];
                        const struct clmsg_vm *x = host_vm(h, v->po.name);
                        if (!x || !h->po.member)
                                continue;
                        if (runs_here(x->state) && x->generation > v->po.newer_generation)
                                v->po.newer_generation = x->generation;
                        /* S6, from what a member said since it last joined
                         * (an announcement from before a reboot describes
                         * copies that may be gone) */
                        if (!h->announced)
                                continue;
                        bool replica = x->state == PO_VM_BK_READY || x->state == PO_VM_BK_SYNCING ||
                                       x->state == PO_VM_ACTIVATING;
                        /* a copy of a newer generation anywhere */
                        if ((runs_here(x->state) || replica) && x->generation > v->po.generation)
                                v->po.newer_copy_elsewhere = true;
                        /* our replica's own primary runs this generation
                         * protected towards another host: our session
                         * with it has ended, the replica is stale */
                        if (!strcmp(h->po.name, v->po.peer) && runs_here(x->state) &&
                            x->generation == v->po.generation && x->peer[0] &&
                            strcmp(x->peer, a->host.name))
                                v->po.newer_copy_elsewhere = true;
                }
        }
}

/* The quorum the decisions and the failback planner see. Both first
 * reports, nodes and quorum, come before any decision: they arrive in no
 * set order, and a host not yet reported is unknown. A quorate flag that
 * corosync has not recounted since a host left is unknown too (S3: a
 * 0-vote host must not act on its last voter's departure with the flag
 * from before it; docs/membership.md). */
static struct po_quorum quorum_view(const struct agent *a)
{
        return po_quorum_view(a->quorum_known && a->nodes_known, a->quorate, a->corosync_up,
                              !a->mem || membership_quorum_settled(a->mem));
}

static void decide(struct agent *a)
{
        static struct po_input in;
        static struct po_output out;
        /* S4/S6 compare the announcements with this host's own state as of
         * now: our generation and epoch change with every checkpointd poll
         * (a switchover's old primary becomes a standby of the NEXT
         * generation: judged against its old one, the new primary's copy
         * looked newer and its fresh replica was dropped) */
        update_newer_generations(a);
        memset(&in, 0, sizeof(in));
        in.now_ms = now_ms();
        snprintf(in.self, sizeof(in.self), "%s", a->host.name);
        in.self_nodeid = a->self_nodeid;
        struct po_quorum qv = quorum_view(a);
        in.quorum_known = qv.known;
        in.quorate = qv.quorate;
        in.quorum_settling = qv.settling;
        in.quorate_since_ms = a->quorate_since_ms;
        /* Witness mode relies on a cut-off host stopping its VMs by
         * itself: a havmsd that never reaches corosync must too. */
        if (!a->corosync_up && !strcmp(a->host.cluster.quorum, "witness") &&
            in.now_ms - a->started_ms >= a->host.cluster.self_fence_ms) {
                in.quorum_known = true;
                in.quorate = false;
        }
        in.witness = !strcmp(a->host.cluster.quorum, "witness");
        in.witness_wait_ms = a->host.cluster.witness_wait_ms;
        in.fence_delay_ms = a->host.cluster.fence_delay_ms;
        in.fence_retry_ms = a->host.cluster.fence_retry_ms;
        for (size_t i = 0; i < a->n_hosts; i++)
                in.hosts[in.n_hosts++] = a->hosts[i].po;
        uint64_t retry = 0;
        for (size_t i = 0; i < a->n_vms; i++) {
                struct avm *av = &a->vms[i];
                struct po_vm *pv = &in.vms[in.n_vms++];
                /* a request the peer did not answer within a second is made again */
                if ((av->po.discard_asked || av->po.relinquished) && av->asked_ms &&
                    in.now_ms >= av->asked_ms + RESEND_MS && !av->po.peer_discarded &&
                    !relinquish_taken(a, av)) {
                        av->po.discard_asked = false;
                        av->po.relinquished = false;
                }
                *pv = av->po;
                pv->stopping = av->stopping;
                pv->peer_holds_replica = peer_holds_replica(a, av);
                if (pv->discard_asked || pv->relinquished)
                        if (!retry || av->asked_ms + RESEND_MS < retry)
                                retry = av->asked_ms + RESEND_MS;
                if (a->vms[i].hook_aborted || a->vms[i].fb_busy)
                        pv->busy = true; /* (a failback job: handover, protect) */
                if (a->vms[i].retry_ms > in.now_ms) {
                        pv->busy = true;
                        if (!retry || a->vms[i].retry_ms < retry)
                                retry = a->vms[i].retry_ms;
                }
        }
        po_decide(&in, &out);
        if (retry && (!out.wake_ms || retry < out.wake_ms))
                out.wake_ms = retry;
        for (size_t i = 0; i < a->n_vms; i++) {
                struct avm *v = &a->vms[i];
                if (strcmp(v->note, out.note[i])) {
                        snprintf(v->note, sizeof(v->note), "%s", out.note[i]);
                        if (v->note[0])
                                ev(a, LOG_LVL_WARN, MSG_FO_WAITING, v->po.name, NULL, "%s",
                                   v->note);
                }
        }
        for (size_t k = 0; k < out.n_actions; k++)
                do_action(a, &out.actions[k]);
        uint64_t sw = ask_stale_replicas(a, in.now_ms);
        if (sw && (!out.wake_ms || sw < out.wake_ms))
                out.wake_ms = sw;
        /* failback decides after the failover policy, from the same view */
        uint64_t fw = failback_decide(a, &out);
        if (fw && (!out.wake_ms || fw < out.wake_ms))
                out.wake_ms = fw;
        arm_decide_timer(a, out.wake_ms);
}

static void ctl_action(struct agent *a, const struct po_action *x, const char *cmd,
                       json_object *args)
{
        struct avm *v = vm_by_name(a, x->vm, false);
        struct job *j = job_new(a, JOB_CTL, x->vm, x->host);
        if (!v || !j) {
                free(j);
                json_object_put(args);
                return;
        }
        j->act = x->type;
        j->generation = x->generation;
        snprintf(j->cmd, sizeof(j->cmd), "%s", cmd);
        j->args = args;
        if (x->type == PO_ACT_ACTIVATE)
                job_hook_env(a, j, HOOK_PRE_ACTIVATE, x->vm, x->host, "backup", x->generation,
                             v->epoch, false);
        if (start_action(a, j) == 0)
                v->po.busy = true;
}

static void do_action(struct agent *a, const struct po_action *x)
{
        struct avm *v = x->vm[0] ? vm_by_name(a, x->vm, false) : NULL;
        switch (x->type) {
        case PO_ACT_FENCE: {
                struct ahost *h = host_by_name(a, x->host);
                struct job *j = h ? job_new(a, JOB_FENCE, NULL, x->host) : NULL;
                if (!j)
                        return;
                j->act = PO_ACT_FENCE;
                j->fence_cfg = h->fence_cfg;
                job_hook_env(a, j, HOOK_PRE_FENCE, NULL, NULL, NULL, 0, 0, true);
                ev(a, LOG_LVL_NOTICE, MSG_FENCE_START, NULL, x->host,
                   "fencing host %s (%s), %u level(s)", x->host, x->why, h->fence_cfg->n_levels);
                if (start_action(a, j) == 0)
                        h->po.fence = PO_FENCE_RUNNING;
                break;
        }
        case PO_ACT_ACTIVATE: {
                json_object *args = json_object_new_object();
                json_object_object_add(args, "force", json_object_new_boolean(1));
                json_object_object_add(args, "generation",
                                       json_object_new_int64((int64_t)x->generation));
                ev(a, LOG_LVL_NOTICE, MSG_FO_TAKEOVER, x->vm, x->host,
                   "taking over from %s as generation %" PRIu64 " (%s)", x->host, x->generation,
                   x->why);
                ctl_action(a, x, "activate", args);
                break;
        }
        case PO_ACT_RELEASE:
                ev(a, LOG_LVL_NOTICE, MSG_FO_RELEASE, x->vm, x->host,
                   "releasing held output, running without a standby: %s", x->why);
                ctl_action(a, x, "release", NULL);
                break;
        case PO_ACT_ASK_DISCARD:
                /* An isolated primary whose QEMU is dying is a crash about
                 * to be reported, not a lost standby: the standby's
                 * replica is exactly what the cluster will need. */
                if (v && v->po.state == PO_VM_ISOLATED &&
                    (v->qemu_pid <= 0 || kill(v->qemu_pid, 0) < 0)) {
                        v->retry_ms = now_ms() + ACTION_RETRY_MS;
                        break;
                }
                if (v) {
                        v->po.discard_asked = true;
                        v->asked_ms = now_ms();
                }
                ev(a, LOG_LVL_NOTICE, MSG_FO_ASK_DISCARD, x->vm, x->host,
                   "standby %s stopped ACKing but is a member: asking it to drop its replica",
                   x->host);
                send_ref(a, CLMSG_ASK_DISCARD, x->vm, x->generation, x->host);
                break;
        case PO_ACT_DISCARD:
                if (v)
                        v->po.discard_requested = false;
                ev(a, LOG_LVL_NOTICE, MSG_FO_DISCARDED, x->vm, x->host, "dropping the replica: %s",
                   x->why);
                ctl_action(a, x, "discard", NULL);
                break;
        case PO_ACT_RELINQUISH:
                if (v) {
                        v->po.relinquished = true;
                        v->asked_ms = now_ms();
                }
                if (v && v->po.last_exit == PO_EXIT_HANDED_OVER)
                        ev(a, LOG_LVL_NOTICE, MSG_FO_RELINQUISH, x->vm, x->host,
                           "switchover: QEMU here is off after the final checkpoint; handing "
                           "generation %" PRIu64 " to standby %s", x->generation, x->host);
                else
                        ev(a, LOG_LVL_WARN, MSG_FO_RELINQUISH, x->vm, x->host,
                           "QEMU crashed here: handing generation %" PRIu64 " to standby %s",
                           x->generation, x->host);
                send_ref(a, CLMSG_RELINQUISH, x->vm, x->generation, x->host);
                break;
        case PO_ACT_RESTART:
                if (v)
                        v->po.restarts_done++;
                ev(a, LOG_LVL_WARN, MSG_FO_RESTART, x->vm, NULL,
                   "QEMU crashed here: restarting it on this host (%u of %u)",
                   v ? v->po.restarts_done : 0, v ? v->po.local_restarts : 0);
                ctl_action(a, x, "start", NULL);
                break;
        case PO_ACT_STOP:
                /* Self-fence: kill QEMU here and now, not through a graceful
                 * stop (that would say goodbye and make the standby drop
                 * the replica the cluster needs). checkpointd sees the death
                 * at once (pidfd) and drops the held output. */
                if (!v)
                        break;
                v->stopping = true;
                ev(a, LOG_LVL_ERR, MSG_FO_SELF_FENCE, x->vm, NULL,
                   "killing the VM here (QEMU pid %d): %s", v->qemu_pid, x->why);
                if (v->qemu_pid > 0 && kill(v->qemu_pid, SIGKILL) < 0 && errno != ESRCH)
                        ev(a, LOG_LVL_ERR, MSG_FO_SELF_FENCE, x->vm, NULL,
                           "cannot kill QEMU pid %d: %s", v->qemu_pid, strerror(errno));
                break;
        }
}

/* ---------------------------------------------------------- failback -- */

/* Fenced after it last left (as policy.c judges it). */
static bool fenced_since_left(const struct ahost *h)
{
        return h->po.fence == PO_FENCE_DONE && h->po.fence_ms >= h->po.left_ms;
}

/* A departed host whose VMs the failover policy no longer waits for:
 * fenced since it left, or (witness) gone longer than the witness wait. */
static bool departure_settled(const struct agent *a, const struct ahost *h)
{
        if (fenced_since_left(h))
                return true;
        return !strcmp(a->host.cluster.quorum, "witness") &&
               now_ms() >= h->po.left_ms + a->host.cluster.witness_wait_ms;
}

/* F2 (failback/plan.h): what the failover policy handles now, in words;
 * NULL when nothing. */
static const char *failover_busy(struct agent *a, const struct po_output *pout, char *buf,
                                 size_t len)
{
        if (pout && pout->n_actions) {
                const struct po_action *x = &pout->actions[0];
                snprintf(buf, len, "failover action %s for %s under way", po_act_name(x->type),
                         x->vm[0] ? x->vm : x->host);
                return buf;
        }
        for (size_t k = 0; k < a->n_hosts; k++) {
                const struct ahost *h = &a->hosts[k];
                if (h->po.fence == PO_FENCE_RUNNING) {
                        snprintf(buf, len, "host %s is being fenced", h->po.name);
                        return buf;
                }
                for (size_t e = 0; h->po.member && h->have_state && e < h->state.n_vms; e++) {
                        const struct clmsg_vm *x = &h->state.vms[e];
                        if (x->state == PO_VM_ISOLATED || x->state == PO_VM_ACTIVATING) {
                                snprintf(buf, len, "%s is %s on %s", x->name,
                                         po_vm_state_name(x->state), h->po.name);
                                return buf;
                        }
                }
                /* a host that left while it ran a VM and is not fenced yet:
                 * some member is (or will be) taking that VM over, even if
                 * this host holds no replica of it */
                for (size_t e = 0; !h->po.member && h->have_state && !departure_settled(a, h) &&
                                   e < h->state.n_vms; e++) {
                        const struct clmsg_vm *x = &h->state.vms[e];
                        if (runs_here(x->state)) {
                                snprintf(buf, len, "host %s left running %s and is not fenced",
                                         h->po.name, x->name);
                                return buf;
                        }
                }
        }
        for (size_t i = 0; i < a->n_vms; i++) {
                const struct avm *v = &a->vms[i];
                const struct ahost *h = host_by_name(a, v->po.peer);
                if (v->po.busy) {
                        snprintf(buf, len, "a failover action for %s is in flight", v->po.name);
                        return buf;
                }
                if (v->po.state == PO_VM_ISOLATED || v->po.state == PO_VM_ACTIVATING) {
                        snprintf(buf, len, "%s is %s here", v->po.name,
                                 po_vm_state_name(v->po.state));
                        return buf;
                }
                if ((v->po.state == PO_VM_BK_READY || v->po.state == PO_VM_BK_SYNCING) && h &&
                    !h->po.member && !fenced_since_left(h)) {
                        snprintf(buf, len, "%s's primary %s left and is not fenced", v->po.name,
                                 h->po.name);
                        return buf;
                }
        }
        return NULL;
}

/* The plan's input, from the same view the failover policy had. */
static void fb_build(struct agent *a, struct fb_input *in, const struct po_output *pout)
{
        static char why[200];
        memset(in, 0, sizeof(*in));
        in->now_ms = now_ms();
        snprintf(in->self, sizeof(in->self), "%s", a->host.name);
        in->quorate = quorum_view(a).quorate;
        in->failover_why = failover_busy(a, pout, why, sizeof(why));
        in->failover_busy = in->failover_why != NULL;
        struct fb_host *self = &in->hosts[in->n_hosts++];
        snprintf(self->name, sizeof(self->name), "%s", a->host.name);
        self->member = self->agent_up = true;
        for (size_t i = 0; i < a->n_vms; i++)
                self->n_vms += a->vms[i].seen && a->vms[i].po.state != PO_VM_DEFINED &&
                               a->vms[i].po.state != PO_VM_UNKNOWN;
        for (size_t k = 0; k < a->n_hosts && in->n_hosts < FB_MAX_HOSTS; k++) {
                const struct ahost *h = &a->hosts[k];
                struct fb_host *f = &in->hosts[in->n_hosts++];
                snprintf(f->name, sizeof(f->name), "%s", h->po.name);
                f->member = h->po.member;
                f->agent_up = h->po.member && h->announced;
                for (size_t e = 0; h->have_state && e < h->state.n_vms; e++) {
                        enum po_vm_state st = h->state.vms[e].state;
                        f->n_vms += st != PO_VM_DEFINED;
                        f->unsettled |= h->announced && (st == PO_VM_RUNNING || st == PO_VM_SYNCING ||
                                                         st == PO_VM_ISOLATED ||
                                                         st == PO_VM_BK_SYNCING);
                }
        }
        for (size_t i = 0; i < a->n_vms && in->n_vms < FB_MAX_VMS; i++) {
                const struct avm *v = &a->vms[i];
                struct fb_vm *f = &in->vms[in->n_vms++];
                *f = v->fbcfg;
                snprintf(f->name, sizeof(f->name), "%s", v->po.name);
                f->state = v->seen && runs_here(v->po.state) ? fb_vm_state_parse(v->raw_state)
                                                             : FB_VM_OTHER;
                f->generation = v->po.generation;
                snprintf(f->peer, sizeof(f->peer), "%s", v->po.peer);
                f->newer_generation = v->po.newer_generation;
                const struct ahost *h = host_by_name(a, v->po.peer);
                const struct clmsg_vm *x = peer_view(a, v);
                f->standby_committed = h && h->po.member && x && x->state == PO_VM_BK_READY &&
                                       x->generation == v->po.generation;
                f->busy = v->fb_busy || v->po.busy || v->fb_retry_ms > in->now_ms;
                f->operator_unprotected = v->operator_unprotected;
        }
        fbc_observe(&a->fb, in);
}

static void reply_pending(struct agent *a, uint32_t reqid, int status, const char *text,
                          uint32_t ms, const char *to)
{
        for (struct pending **p = &a->pending; *p; p = &(*p)->next) {
                struct pending *q = *p;
                if (q->reqid != reqid)
                        continue;
                json_object *r = json_object_new_object();
                json_object_object_add(r, "ok", json_object_new_boolean(status == 0));
                json_object_object_add(r, status ? "error" : "text", json_object_new_string(text));
                json_object_object_add(r, "vm", json_object_new_string(q->vm));
                json_object_object_add(r, "to", json_object_new_string(to ? to : ""));
                if (!status)
                        json_object_object_add(r, "downtime_ms", json_object_new_int64(ms));
                ctl_write(q->fd, r, 1000);
                json_object_put(r);
                close(q->fd);
                *p = q->next;
                free(q);
                return;
        }
}

static void send_sw_status(struct agent *a, const char *vm, uint64_t gen, const char *target,
                           const char *to, uint32_t reqid, enum clmsg_phase phase, int status,
                           uint32_t ms, const char *text)
{
        static struct clmsg m;
        memset(&m, 0, sizeof(m));
        m.type = CLMSG_SWITCHOVER_STATUS;
        snprintf(m.sender, sizeof(m.sender), "%s", a->host.name);
        snprintf(m.vm, sizeof(m.vm), "%s", vm);
        snprintf(m.target, sizeof(m.target), "%s", target ? target : "");
        snprintf(m.to, sizeof(m.to), "%s", to ? to : "");
        m.generation = gen;
        m.reqid = reqid;
        m.phase = phase;
        m.status = status;
        m.ms = ms;
        size_t n = 0;
        for (const char *c = text; c && *c && n < CLMSG_TEXT - 1; c++)
                m.text[n++] = *c >= 0x20 && *c <= 0x7e ? *c : ' ';
        send_msg(a, &m);
}

/* The end of this host's switchover of vm: event, everyone told, the
 * requester answered. */
static void finish_switch(struct agent *a, struct fbc_vm *r, int status, uint32_t ms,
                          const char *text)
{
        if (!r)
                return;
        ev(a, status ? LOG_LVL_ERR : LOG_LVL_NOTICE, status ? MSG_FB_SW_FAILED : MSG_FB_SW_DONE,
           r->name, r->sw_to, "switchover to %s %s: %s", r->sw_to, status ? "FAILED" : "done",
           text);
        bool mine = !r->sw_requester[0] || !strcmp(r->sw_requester, a->host.name);
        send_sw_status(a, r->name, r->sw_generation, mine ? "" : r->sw_requester, r->sw_to,
                       r->sw_reqid, status ? CLMSG_SW_FAILED : CLMSG_SW_DONE, status, ms, text);
        if (mine && r->sw_reqid)
                reply_pending(a, r->sw_reqid, status, text, ms, r->sw_to);
        fbc_switch_end(&a->fb, r->name);
}

static int fb_ctl(struct agent *a, const char *vm, const char *host, const char *cmd,
                  json_object *args, enum fb_act fbact)
{
        struct avm *v = vm_by_name(a, vm, false);
        struct job *j = v ? job_new(a, JOB_CTL, vm, host) : NULL;
        if (!j) {
                json_object_put(args);
                return -ENOMEM;
        }
        j->fb = true;
        j->fbact = fbact;
        snprintf(j->cmd, sizeof(j->cmd), "%s", cmd);
        j->args = args;
        int r = job_start(a, j);
        if (r == 0)
                v->fb_busy = true;
        return r;
}

static void start_switchover(struct agent *a, const char *vm, const char *to,
                             const char *requester, uint32_t reqid)
{
        struct avm *v = vm_by_name(a, vm, false);
        if (!v)
                return;
        fbc_switch_begin(&a->fb, vm, to, requester, reqid, v->po.generation, now_ms());
        ev(a, LOG_LVL_NOTICE, MSG_FB_SW_STARTED, vm, to,
           "switchover to %s started (%s%s): final checkpoint with the VM stopped, then %s "
           "activates", to, requester && requester[0] ? "asked on " : "failback = auto",
           requester && requester[0] ? requester : "", to);
        send_sw_status(a, vm, v->po.generation, "", to, reqid, CLMSG_SW_STARTED, 0, 0, "");
        if (fb_ctl(a, vm, to, "handover", NULL, FB_SWITCHOVER) < 0)
                finish_switch(a, fbc_vm(&a->fb, vm, false), -EAGAIN, 0,
                              "cannot start checkpointd's handover");
}

/* Re-protections that ended, switchovers whose new owner runs the VM (or
 * that timed out). Returns when to look again (0 = no need). */
static uint64_t failback_progress(struct agent *a, const struct fb_input *in)
{
        uint64_t wake = 0;
        for (size_t i = 0; i < in->n_vms; i++) {
                const struct fb_vm *f = &in->vms[i];
                struct fbc_vm *r = fbc_vm(&a->fb, f->name, false);
                if (!r)
                        continue;
                if (r->reprotect_ms && f->state == FB_VM_PROTECTED && f->standby_committed) {
                        ev(a, LOG_LVL_NOTICE, MSG_FB_REPROTECTED, f->name, f->peer,
                           "protected again: standby %s holds a committed replica, %" PRIu64
                           " ms after re-protection started", f->peer, in->now_ms - r->reprotect_ms);
                        r->reprotect_ms = 0;
                }
                if (r->sw != FBC_SW_RELINQUISHED)
                        continue;
                for (size_t k = 0; k < a->n_hosts; k++) {
                        const struct ahost *h = &a->hosts[k];
                        const struct clmsg_vm *x = h->po.member ? host_vm(h, f->name) : NULL;
                        if (x && runs_here(x->state) && x->generation > r->sw_generation) {
                                char t[160];
                                uint64_t total = in->now_ms - r->sw_started_ms;
                                snprintf(t, sizeof(t), "runs on %s as generation %" PRIu64
                                         "; final-checkpoint pause %u ms, %" PRIu64
                                         " ms from request to running there", h->po.name,
                                         x->generation, r->sw_pause_ms, total);
                                finish_switch(a, r, 0, (uint32_t)total, t);
                                break;
                        }
                }
                if (r->sw != FBC_SW_RELINQUISHED)
                        continue;
                uint64_t end = r->sw_stopped_ms + FBC_SWITCH_TIMEOUT_MS;
                if (in->now_ms >= end)
                        finish_switch(a, r, -ETIMEDOUT, 0, "the standby did not run the VM within "
                                      "120 s after the handover: see `havmsctl status`");
                else if (!wake || end < wake)
                        wake = end;
        }
        return wake;
}

static void fb_do(struct agent *a, const struct fb_action *x)
{
        uint64_t now = now_ms();
        struct fbc_spare *s = x->host[0] ? fbc_spare(&a->fb, x->host) : NULL;
        switch (x->type) {
        case FB_PROTECT: {
                ev(a, LOG_LVL_NOTICE, MSG_FB_REPROTECT, x->vm, x->host,
                   "re-protecting towards %s: %s", x->host, x->why);
                json_object *args = json_object_new_object();
                json_object_object_add(args, "peer", json_object_new_string(x->host));
                if (fb_ctl(a, x->vm, x->host, "protect", args, FB_PROTECT) == 0)
                        fbc_action_started(&a->fb, x, now);
                break;
        }
        case FB_UNPROTECT:
                ev(a, LOG_LVL_NOTICE, s ? MSG_FB_HANDED_BACK : MSG_FB_UNPROTECT, x->vm, x->host,
                   "ending protection towards %s: %s", x->host, x->why);
                json_object *ua = json_object_new_object();
                /* the cluster's, not an operator's: reprotect goes on */
                json_object_object_add(ua, "cluster", json_object_new_boolean(1));
                if (fb_ctl(a, x->vm, x->host, "unprotect", ua, FB_UNPROTECT) == 0)
                        fbc_action_started(&a->fb, x, now);
                break;
        case FB_SWITCHOVER:
                ev(a, LOG_LVL_NOTICE, MSG_FB_FAILBACK, x->vm, x->host,
                   "failing back to preferred host %s: %s", x->host, x->why);
                start_switchover(a, x->vm, x->host, "", 0);
                break;
        case FB_WAKE: {
                if (!s || s->job)
                        break; /* never woken twice at once */
                struct job *j = job_new(a, JOB_WAKE, NULL, x->host);
                if (!j)
                        break;
                j->spare = s->cfg;
                j->fence_cfg = host_config_fence(&a->host, x->host);
                fbc_action_started(&a->fb, x, now);
                if (job_start(a, j) == 0)
                        s->job = true;
                break;
        }
        case FB_WAKE_FAILED:
                fbc_action_started(&a->fb, x, now);
                ev(a, LOG_LVL_ERR, MSG_FB_WAKE_FAILED, NULL, x->host,
                   "spare %s did not join within %u s after %u wake(s): FAILED; tried again in "
                   "%llu s, another spare may be woken meanwhile", x->host,
                   s ? s->cfg->boot_timeout_s : 0, x->attempt, FB_SPARE_RETRY_MS / 1000);
                break;
        case FB_SPARE_OFF: {
                if (!s || s->job || (s->off_ms && now < s->off_ms + SPARE_OFF_AGAIN_MS))
                        break;
                struct job *j = job_new(a, JOB_SPARE_OFF, NULL, x->host);
                if (!j)
                        break;
                j->spare = s->cfg;
                j->fence_cfg = host_config_fence(&a->host, x->host);
                s->off_ms = now;
                fbc_action_started(&a->fb, x, now);
                ev(a, LOG_LVL_NOTICE, MSG_FB_SPARE_OFF, NULL, x->host,
                   "powering spare %s off (%s): %s", x->host,
                   j->fence_cfg ? "fence agent off" : "off_command", x->why);
                if (job_start(a, j) < 0)
                        s->job = false;
                break;
        }
        }
}

static uint64_t failback_decide(struct agent *a, const struct po_output *pout)
{
        static struct fb_input in;
        static struct fb_output out;
        enum fb_spare_state before[CFG_MAX_SPARES];
        for (size_t k = 0; k < a->fb.n_spares; k++)
                before[k] = a->fb.spares[k].state;
        fb_build(a, &in, pout);
        for (size_t k = 0; k < a->fb.n_spares; k++) {
                const struct fbc_spare *s = &a->fb.spares[k];
                if (before[k] != FB_SPARE_UP && s->state == FB_SPARE_UP)
                        ev(a, LOG_LVL_NOTICE, MSG_FB_SPARE_JOINED, NULL, s->cfg->name,
                           "spare %s joined the membership%s (%u wake(s), %" PRIu64
                           " ms after the first)", s->cfg->name,
                           s->attempts ? "" : " by itself", s->attempts,
                           s->attempts ? in.now_ms - s->first_ms : 0);
        }
        uint64_t wake = failback_progress(a, &in);
        fb_plan(&in, &out);
        for (size_t i = 0; i < in.n_vms && i < a->n_vms; i++) {
                struct avm *v = &a->vms[i];
                if (strcmp(v->fb_note, out.note[i])) {
                        snprintf(v->fb_note, sizeof(v->fb_note), "%s", out.note[i]);
                        if (v->fb_note[0])
                                ev(a, LOG_LVL_NOTICE,
                                   out.failback_pending[i] ? MSG_FB_PENDING : MSG_FB_NOTE,
                                   v->po.name, NULL, "%s", v->fb_note);
                }
                v->fb_pending = out.failback_pending[i];
        }
        for (size_t k = 0; k < out.n_actions; k++)
                fb_do(a, &out.actions[k]);
        if (out.wake_ms && (!wake || out.wake_ms < wake))
                wake = out.wake_ms;
        return wake;
}

/* A failback job ended (JOB_CTL with fb, JOB_WAKE, JOB_SPARE_OFF). */
static void fb_job_finished(struct agent *a, struct job *j, struct avm *v, uint64_t took)
{
        struct fbc_spare *s = j->host[0] ? fbc_spare(&a->fb, j->host) : NULL;
        if (j->kind == JOB_WAKE) {
                fbc_wake_done(&a->fb, j->host, j->r == 0 ? j->way : "");
                unsigned n = s ? s->attempts : 0;
                if (j->r == 0)
                        ev(a, n > 1 ? LOG_LVL_WARN : LOG_LVL_NOTICE,
                           n > 1 ? MSG_FB_WAKE_RETRY : MSG_FB_WAKE_SENT, NULL, j->host,
                           "spare %s woken (attempt %u): %s", j->host, n, j->way);
                else
                        ev(a, LOG_LVL_ERR, MSG_FB_WAKE_FAILED, NULL, j->host,
                           "waking spare %s failed (attempt %u): %s; tried again with back-off",
                           j->host, n, j->err);
                return;
        }
        if (j->kind == JOB_SPARE_OFF) {
                if (s)
                        s->job = false;
                if (j->r == 0)
                        ev(a, LOG_LVL_NOTICE, MSG_FB_SPARE_OFF, NULL, j->host,
                           "spare %s powered off after the hand-back (%" PRIu64 " ms)", j->host, took);
                else
                        ev(a, LOG_LVL_ERR, MSG_FB_SPARE_OFF, NULL, j->host,
                           "powering spare %s off FAILED: %s", j->host, j->err);
                return;
        }
        if (!v)
                return;
        v->fb_busy = false;
        struct fbc_vm *r = fbc_vm(&a->fb, j->vm, false);
        if (j->fbact == FB_SWITCHOVER) {
                if (!r || r->sw != FBC_SW_HANDOVER)
                        return;
                if (j->r < 0) {
                        char t[CLMSG_TEXT];
                        snprintf(t, sizeof(t), "handover failed after %" PRIu64 " ms, the VM "
                                 "keeps running here: %.40s", took, j->err);
                        finish_switch(a, r, j->r, 0, t);
                        return;
                }
                json_object *o;
                /* pause_ms (the spec) or handover_ms (checkpointd's answer: the
                 * VM is held from the final checkpoint's start to its end) */
                int64_t pause = j->resp && (json_object_object_get_ex(j->resp, "pause_ms", &o) ||
                                            json_object_object_get_ex(j->resp, "handover_ms", &o))
                                        ? json_object_get_int64(o) : -1;
                int64_t ep = j->resp && json_object_object_get_ex(j->resp, "epoch", &o)
                                     ? json_object_get_int64(o) : -1;
                fbc_switch_stopped(&a->fb, j->vm, pause > 0 ? (uint32_t)pause : 0, now_ms());
                ev(a, LOG_LVL_NOTICE, MSG_FB_SW_STARTED, j->vm, j->host,
                   "handover done in %" PRIu64 " ms: final checkpoint epoch %" PRId64
                   ", pause %" PRId64 " ms; QEMU here is off, %s activates", took, ep, pause,
                   j->host);
                return;
        }
        if (j->r < 0) {
                v->fb_retry_ms = now_ms() + 5 * ACTION_RETRY_MS;
                if (r && j->fbact == FB_PROTECT)
                        r->reprotect_ms = 0;
                ev(a, LOG_LVL_WARN, j->fbact == FB_PROTECT ? MSG_FB_REPROTECT : MSG_FB_UNPROTECT,
                   j->vm, j->host, "%s towards %s failed after %" PRIu64 " ms (retried in %d ms): %s",
                   j->cmd, j->host, took, 5 * ACTION_RETRY_MS, j->err);
        } else if (j->fbact == FB_PROTECT) {
                ev(a, LOG_LVL_NOTICE, MSG_FB_REPROTECT, j->vm, j->host,
                   "re-protection towards %s under way: resyncing (only what differs when %s "
                   "still holds a replica or a disk with known history)", j->host, j->host);
        }
}

/* F4 for `havmsctl switchover` and a forwarded request. */
static int switchover_check(struct agent *a, const char *vm, const char *to, char *why,
                            size_t len)
{
        static struct fb_input in;
        fb_build(a, &in, NULL);
        for (size_t i = 0; i < in.n_vms; i++)
                if (!strcmp(in.vms[i].name, vm))
                        return fb_switchover_check(&in, i, to, why, len);
        snprintf(why, len, "%s is unknown on %s", vm, a->host.name);
        return -ENOENT;
}

/* SWITCHOVER from another host: we are (we think) the owner. */
static void switchover_request(struct agent *a, const struct clmsg *m)
{
        char why[256];
        struct avm *v = vm_by_name(a, m->vm, false);
        int r = switchover_check(a, m->vm, m->to, why, sizeof(why));
        if (r < 0) {
                ev(a, LOG_LVL_WARN, MSG_FB_SW_FAILED, m->vm, m->sender,
                   "switchover asked on %s refused: %s", m->sender, why);
                send_sw_status(a, m->vm, v ? v->po.generation : 0, m->sender, m->to, m->reqid,
                               CLMSG_SW_FAILED, r, 0, why);
                return;
        }
        ev(a, LOG_LVL_NOTICE, MSG_FB_SW_REQUESTED, m->vm, m->sender,
           "switchover to %s requested on %s", v->po.peer, m->sender);
        start_switchover(a, m->vm, v->po.peer, m->sender, m->reqid);
}

static void switchover_status(struct agent *a, const struct clmsg *m)
{
        if (m->phase == CLMSG_SW_STARTED)
                fbc_remote_begin(&a->fb, m->sender, m->vm, now_ms());
        else
                fbc_remote_end(&a->fb, m->sender, m->vm);
        if (m->phase != CLMSG_SW_STARTED && !strcmp(m->target, a->host.name))
                reply_pending(a, m->reqid, m->status, m->text, m->ms, m->to);
}

/* Requests whose answer did not come, or whose owner left. */
static void pending_tick(struct agent *a)
{
        uint64_t now = now_ms();
        for (struct pending *p = a->pending, *next; p; p = next) {
                next = p->next;
                const struct ahost *h = host_by_name(a, p->owner);
                if (now >= p->deadline_ms)
                        reply_pending(a, p->reqid, -ETIMEDOUT, "no outcome within 150 s: see "
                                      "`havmsctl events`", 0, "");
                else if (h && !h->po.member)
                        reply_pending(a, p->reqid, -EHOSTDOWN, "the owner left the membership "
                                      "during the switchover: see `havmsctl status`", 0, "");
        }
}

/* Each failed fence level, once (HAVMS-FN-6002), whether a later one worked or not. */
static void report_failed_attempts(struct agent *a, const struct job *j)
{
        char buf[64];
        for (unsigned i = 0; i < j->fence.n_attempts; i++) {
                const struct fence_attempt *fa = &j->fence.attempts[i];
                if (fa->ok)
                        continue;
                ev(a, LOG_LVL_WARN, MSG_FENCE_ATTEMPT_FAILED, NULL, j->host,
                   "fencing %s: level %u (%s) %s failed: %s [%s]", j->host, fa->level, fa->agent,
                   fa->action, fa->reason, runner_describe(&fa->run, buf, sizeof(buf)));
        }
}

/* A hook that did not say "go on", or that failed (HAVMS-HK-70xx). */
static void report_hook(struct agent *a, const struct job *j)
{
        const char *ev_name = hook_event_name(j->hook);
        for (unsigned i = 0; i < j->hres.n_skipped; i++)
                ev(a, LOG_LVL_WARN, MSG_HOOK_NOT_EXEC, j->vm, NULL,
                   "%s hook %s is not executable: not run", ev_name, j->hres.skipped[i]);
        for (unsigned i = 0; i < j->hres.n_runs; i++) {
                const struct hook_run *hr = &j->hres.runs[i];
                char buf[64];
                runner_describe(&hr->run, buf, sizeof(buf));
                if (hr->run.end == RUNNER_TIMEOUT)
                        ev(a, LOG_LVL_WARN, MSG_HOOK_TIMEOUT, j->vm, NULL,
                           "%s hook %s: %s, killed", ev_name, hr->path, buf);
                else if (hr->verdict == HOOK_DEFER)
                        ev(a, LOG_LVL_WARN, MSG_HOOK_DEFERRED, j->vm, NULL,
                           "%s hook %s deferred the action (%s): retried later", ev_name,
                           hr->path, buf);
                else if (hr->verdict == HOOK_ABORT)
                        ev(a, LOG_LVL_ERR, MSG_HOOK_ABORTED, j->vm, NULL,
                           "%s hook %s ABORTED the action (%s): an operator must act", ev_name,
                           hr->path, buf);
                else if (hr->run.end != RUNNER_EXITED || hr->run.exit_code != 0)
                        ev(a, LOG_LVL_WARN, MSG_HOOK_FAILED, j->vm, NULL, "%s hook %s: %s",
                           ev_name, hr->path, buf);
        }
}

static void job_finished(struct agent *a, struct job *j)
{
        struct avm *v = j->vm[0] ? vm_by_name(a, j->vm, false) : NULL;
        struct ahost *h = j->host[0] ? host_by_name(a, j->host) : NULL;
        uint64_t took = now_ms() - j->started_ms;
        if (j->kind == JOB_FENCE && h) {
                h->po.fence_ms = now_ms();
                if (j->r == -EAGAIN || j->r == -ECANCELED) { /* the pre-fence hook */
                        h->po.fence = PO_FENCE_FAILED;
                        snprintf(h->fence_last, sizeof(h->fence_last), "deferred: %.180s", j->err);
                        report_hook(a, j);
                } else if (j->r == 0 && j->fence.ok) {
                        h->po.fence = PO_FENCE_DONE;
                        report_failed_attempts(a, j);
                        snprintf(h->fence_last, sizeof(h->fence_last),
                                 "off at level %u in %" PRIu64 " ms", j->fence.level,
                                 j->fence.duration_ms);
                        ev(a, LOG_LVL_NOTICE, MSG_FENCE_DONE, NULL, j->host,
                           "host %s fenced: verified off by level %u (%s) in %" PRIu64 " ms",
                           j->host, j->fence.level,
                           j->fence.level ? j->fence_cfg->levels[j->fence.level - 1].agent : "?",
                           j->fence.duration_ms);
                        send_ref(a, CLMSG_FENCED, NULL, 0, j->host);
                        hook_async(a, HOOK_POST_FENCE, NULL, j->host);
                } else {
                        h->po.fence = PO_FENCE_FAILED;
                        report_failed_attempts(a, j);
                        snprintf(h->fence_last, sizeof(h->fence_last), "FAILED at %u level(s)%s%.150s",
                                 j->fence.n_attempts, j->err[0] ? ": " : "", j->err);
                        ev(a, LOG_LVL_ERR, MSG_FENCE_ALL_FAILED, NULL, j->host,
                           "FENCING OF %s FAILED at every level: it is NOT known to be off, so "
                           "nothing is taken over; retry in %u ms", j->host,
                           a->host.cluster.fence_retry_ms);
                }
        } else if (j->kind == JOB_MONITOR && h) {
                bool was_failing = !strncmp(h->monitor, "failed", 6);
                if (j->r == 0 && j->fence.ok) {
                        snprintf(h->monitor, sizeof(h->monitor), "ok");
                        if (was_failing)
                                ev(a, LOG_LVL_INFO, MSG_FENCE_MONITOR_OK, NULL, j->host,
                                   "fencing of %s answers its check again", j->host);
                } else {
                        const struct fence_attempt *fa = NULL;
                        for (unsigned i = 0; i < j->fence.n_attempts; i++)
                                if (!j->fence.attempts[i].ok && !fa)
                                        fa = &j->fence.attempts[i];
                        snprintf(h->monitor, sizeof(h->monitor), "failed: level %u: %.160s",
                                 fa ? fa->level : 0, fa ? fa->reason : "error");
                        ev(a, LOG_LVL_WARN, MSG_FENCE_MONITOR_FAILED, NULL, j->host,
                           "fence check for %s %s (it would fail when needed)", j->host,
                           h->monitor);
                }
        } else if (j->kind == JOB_HOOK) {
                report_hook(a, j);
        } else if (j->fb || j->kind == JOB_WAKE || j->kind == JOB_SPARE_OFF) {
                fb_job_finished(a, j, v, took);
        } else if (j->kind == JOB_CTL && v) {
                v->po.busy = false;
                if (j->r == -ECANCELED) { /* pre-activate hook: abort */
                        report_hook(a, j);
                        v->hook_aborted = true;
                } else if (j->r == -EAGAIN) { /* pre-activate hook: defer */
                        report_hook(a, j);
                        v->retry_ms = now_ms() + a->host.cluster.fence_retry_ms;
                } else if (j->r < 0) {
                        v->retry_ms = now_ms() + ACTION_RETRY_MS;
                        ev(a, LOG_LVL_ERR, MSG_FO_ACTION_FAILED, j->vm, j->host,
                           "%s failed after %" PRIu64 " ms (retry in %d ms): %s", j->cmd, took,
                           ACTION_RETRY_MS, j->err);
                } else if (j->act == PO_ACT_ACTIVATE) {
                        json_object *o;
                        int64_t act_ms = j->resp && json_object_object_get_ex(j->resp,
                                                "activation_ms", &o) ? json_object_get_int64(o) : -1;
                        ev(a, LOG_LVL_NOTICE, MSG_FO_TAKEN_OVER, j->vm, j->host,
                           "running here as generation %" PRIu64 ": activation %" PRId64
                           " ms, %" PRIu64 " ms since the loss was seen", j->generation, act_ms,
                           v->lost_ms ? now_ms() - v->lost_ms : 0);
                        v->po.generation = j->generation;
                        hook_async(a, HOOK_POST_ACTIVATE, v, NULL);
                } else if (j->act == PO_ACT_DISCARD) {
                        ev(a, LOG_LVL_NOTICE, MSG_FO_DISCARDED, j->vm, j->host,
                           "replica dropped at the request of primary %s", j->host);
                        send_ref(a, CLMSG_DISCARDED, j->vm, j->generation, j->host);
                } else if (j->act == PO_ACT_RESTART && !strcmp(j->cmd, "start")) {
                        v->po.last_exit = PO_EXIT_NONE;
                        if (v->po.peer[0]) { /* protected again, to the same standby */
                                struct po_action p = { .type = PO_ACT_RESTART };
                                snprintf(p.vm, sizeof(p.vm), "%s", j->vm);
                                snprintf(p.host, sizeof(p.host), "%s", v->po.peer);
                                json_object *args = json_object_new_object();
                                json_object_object_add(args, "peer",
                                                       json_object_new_string(v->po.peer));
                                ctl_action(a, &p, "protect", args);
                        }
                }
        }
        json_object_put(j->args);
        json_object_put(j->resp);
}

static void reap_job(struct agent *a, struct job *j)
{
        if (!runner_job_done(j->rj))
                return;
        epoll_ctl(a->epfd, EPOLL_CTL_DEL, runner_job_fd(j->rj), NULL);
        for (struct job **p = &a->jobs; *p; p = &(*p)->next)
                if (*p == j) {
                        *p = j->next;
                        break;
                }
        runner_job_free(j->rj);
        bool ctl = j->kind == JOB_CTL;
        job_finished(a, j);
        free(j);
        /* the command changed the VM's state: read it before deciding
         * again, or the old state would ask for the same action twice */
        if (ctl)
                poll_checkpointd(a);
        decide(a);
}

/* ------------------------------------------------------ checkpointd ---- */

static void ckpt_spawn(struct agent *a)
{
        pid_t pid = fork();
        if (pid < 0)
                return;
        if (pid == 0) {
                sigset_t all;
                sigemptyset(&all);
                sigprocmask(SIG_SETMASK, &all, NULL);
                setsid();
                execlp(a->host.cluster.checkpointd, a->host.cluster.checkpointd, "-c",
                       a->config_path, "--managed", (char *)NULL);
                fprintf(stderr, "havmsd: cannot run %s: %s\n", a->host.cluster.checkpointd,
                        strerror(errno));
                _exit(127);
        }
        a->ckpt_pid = pid;
        a->ckpt_pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
        if (a->ckpt_pidfd >= 0) {
                struct epoll_event e = { .events = EPOLLIN, .data.u64 = TAG_CKPT };
                epoll_ctl(a->epfd, EPOLL_CTL_ADD, a->ckpt_pidfd, &e);
        }
        a->ckpt_silent_ticks = 0;
        a->ckpt_started_ms = now_ms();
        ev(a, LOG_LVL_NOTICE, MSG_FO_CKPT_START, NULL, a->host.name,
           "checkpointd started (pid %d, start %u)", pid, a->ckpt_restarts + 1);
}

static void ckpt_exited(struct agent *a)
{
        int st = 0;
        if (a->ckpt_pid > 0 && waitpid(a->ckpt_pid, &st, WNOHANG) <= 0)
                return;
        if (a->ckpt_pidfd >= 0) {
                epoll_ctl(a->epfd, EPOLL_CTL_DEL, a->ckpt_pidfd, NULL);
                close(a->ckpt_pidfd);
                a->ckpt_pidfd = -1;
        }
        /* one that keeps dying soon after its start is restarted less often */
        if (now_ms() - a->ckpt_started_ms < 10 * CKPT_RESTART_MS)
                a->ckpt_quick_exits++;
        else
                a->ckpt_quick_exits = 0;
        uint64_t delay = (uint64_t)CKPT_RESTART_MS << (a->ckpt_quick_exits < 5 ? a->ckpt_quick_exits : 5);
        if (delay > CKPT_RESTART_MAX_MS)
                delay = CKPT_RESTART_MAX_MS;
        ev(a, LOG_LVL_WARN, MSG_FO_CKPT_EXIT, NULL, a->host.name,
           "checkpointd (pid %d) %s %d; restarting it in %" PRIu64 " ms", a->ckpt_pid,
           WIFSIGNALED(st) ? "killed by signal" : "exited with status",
           WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), delay);
        a->ckpt_pid = 0;
        a->ckpt_up = false;
        a->ckpt_restarts++;
        a->ckpt_next_start_ms = now_ms() + delay;
}

static const char *jstr(json_object *o, const char *k)
{
        json_object *x;
        return json_object_object_get_ex(o, k, &x) ? json_object_get_string(x) : "";
}

static int64_t jint(json_object *o, const char *k)
{
        json_object *x;
        return json_object_object_get_ex(o, k, &x) ? json_object_get_int64(x) : 0;
}

static double jdbl(json_object *o, const char *k)
{
        json_object *x;
        return json_object_object_get_ex(o, k, &x) ? json_object_get_double(x) : 0;
}

/* Notice protection lost / restored on a VM that runs here. */
static void local_transition(struct agent *a, struct avm *v, enum po_vm_state from)
{
        enum po_vm_state to = v->po.state;
        if (from == PO_VM_PROTECTED && (to == PO_VM_ISOLATED || to == PO_VM_RUNNING)) {
                ev(a, LOG_LVL_WARN, MSG_FO_PROT_LOST, v->po.name, v->po.peer,
                   "protection lost: standby %s stopped ACKing (%s)", v->po.peer,
                   to == PO_VM_ISOLATED ? "output held until the cluster decides" : "unprotected");
                hook_async(a, HOOK_PROTECTION_LOST, v, NULL);
        } else if (to == PO_VM_PROTECTED && from != PO_VM_PROTECTED && from != PO_VM_UNKNOWN) {
                ev(a, LOG_LVL_NOTICE, MSG_FO_PROT_RESTORED, v->po.name, v->po.peer,
                   "protected: standby %s holds a committed replica (generation %" PRIu64 ")",
                   v->po.peer, v->po.generation);
                hook_async(a, HOOK_PROTECTION_RESTORED, v, NULL);
        }
        /* flags that belong to one situation end with it */
        v->hook_aborted = false;
        if (!runs_here(to))
                v->stopping = false;
        if (runs_here(to))
                v->po.relinquished = false;
        if (to != PO_VM_ISOLATED || from != PO_VM_ISOLATED)
                v->po.discard_asked = v->po.peer_discarded = false;
        if (to != PO_VM_BK_READY)
                v->po.discard_requested = v->po.peer_relinquished = false;
        if (to == PO_VM_PROTECTED)
                v->po.restarts_done = 0;
}

static void poll_checkpointd(struct agent *a)
{
        json_object *req = json_object_new_object(), *resp = NULL;
        json_object_object_add(req, "cmd", json_object_new_string("status"));
        int r = ctl_call(a->host.control_socket, req, CTL_TIMEOUT_MS, &resp);
        json_object_put(req);
        json_object *vms;
        if (r < 0 || !json_object_object_get_ex(resp, "vms", &vms)) {
                json_object_put(resp);
                if (a->ckpt_up)
                        ev(a, LOG_LVL_WARN, MSG_FO_CKPT_EXIT, NULL, a->host.name,
                           "checkpointd does not answer (%s)", strerror(r < 0 ? -r : EPROTO));
                a->ckpt_up = false;
                a->ckpt_silent_ticks++;
                bool changed = false;
                for (size_t i = 0; i < a->n_vms; i++) {
                        changed |= a->vms[i].po.state != PO_VM_UNKNOWN;
                        a->vms[i].po.state = PO_VM_UNKNOWN;
                }
                if (changed)
                        decide(a);
                return;
        }
        a->ckpt_up = true;
        a->ckpt_silent_ticks = 0;
        bool unmanaged = false;
        for (size_t i = 0; i < json_object_array_length(vms); i++) {
                const char *mode = jstr(json_object_array_get_idx(vms, i), "mode");
                unmanaged |= mode[0] && strcmp(mode, "managed");
        }
        if (unmanaged) {
                /* It would release output on its own when a standby is
                 * lost: never decide for such a host's VMs. */
                if (!a->unmanaged_reported)
                        ev(a, LOG_LVL_ERR, MSG_FO_CKPT_EXIT, NULL, a->host.name,
                           "checkpointd runs WITHOUT --managed: havmsd takes no decision "
                           "until it is restarted by havmsd (stop it; havmsd starts it)");
                a->unmanaged_reported = true;
                json_object_put(resp);
                for (size_t i = 0; i < a->n_vms; i++)
                        a->vms[i].po.state = PO_VM_UNKNOWN;
                return;
        }
        a->unmanaged_reported = false;
        bool changed = false;
        for (size_t i = 0; i < a->n_vms; i++)
                a->vms[i].seen = false;
        for (size_t i = 0; i < json_object_array_length(vms); i++) {
                json_object *o = json_object_array_get_idx(vms, i);
                struct avm *v = vm_by_name(a, jstr(o, "name"), true);
                if (!v)
                        continue;
                v->seen = true;
                enum po_vm_state st = po_vm_state_parse(jstr(o, "state"));
                uint64_t gen = (uint64_t)jint(o, "generation");
                enum po_exit ex = po_exit_parse(jstr(o, "last_exit"));
                const char *peer = jstr(o, "peer");
                uint64_t ep = (uint64_t)jint(o, "committed_epoch");
                const char *raw = jstr(o, "state");
                bool raw_changed = strcmp(raw, v->raw_state) != 0;
                snprintf(v->raw_state, sizeof(v->raw_state), "%s", raw);
                json_object *sy;
                json_object *ou;
                v->operator_unprotected = json_object_object_get_ex(o, "unprotected_by_operator", &ou) &&
                                          json_object_get_boolean(ou);
                v->has_sync = json_object_object_get_ex(o, "sync", &sy);
                if (v->has_sync) {
                        v->sync_pct = jdbl(sy, "percent");
                        v->sync_mib_s = jdbl(sy, "mib_s");
                        v->sync_eta_s = jdbl(sy, "eta_s");
                }
                changed |= raw_changed; /* running <-> degraded: failback's business */
                if (st != v->po.state || gen != v->po.generation || ex != v->po.last_exit ||
                    strcmp(peer, v->po.peer)) {
                        enum po_vm_state from = v->po.state;
                        if (from == PO_VM_DEFINED || from == PO_VM_UNKNOWN)
                                vm_reload_config(a, v); /* edited since we last looked */
                        v->po.state = st;
                        v->po.generation = gen;
                        v->po.last_exit = ex;
                        if (peer[0])
                                snprintf(v->po.peer, sizeof(v->po.peer), "%s", peer);
                        local_transition(a, v, from);
                        changed = true;
                }
                v->epoch = ep;
                v->lag_ms = jint(o, "lag_ms");
                v->qemu_pid = (int)jint(o, "qemu_pid");
        }
        for (size_t i = 0; i < a->n_vms; i++)
                if (!a->vms[i].seen && a->vms[i].po.state != PO_VM_DEFINED) {
                        a->vms[i].po.state = PO_VM_DEFINED;
                        changed = true;
                }
        json_object_put(resp);
        if (changed) {
                a->state_dirty = true;
                decide(a);
        }
        if (a->state_dirty)
                announce_state(a);
}

/* ---------------------------------------------------------- corosync -- */


static void patrol(struct agent *a);

static void on_nodes(void *opaque, const uint32_t *ids, size_t n)
{
        struct agent *a = opaque;
        bool patrol_now = false;
        for (size_t k = 0; k < a->n_hosts; k++) {
                struct ahost *h = &a->hosts[k];
                bool member = false;
                for (size_t i = 0; i < n; i++)
                        member |= ids[i] == h->po.nodeid;
                if (!a->nodes_known && !member) {
                        /* absent at the first report: it counts as having
                         * just left, so every wait and head start applies */
                        h->po.left_ms = now_ms();
                        continue;
                }
                if (member == h->po.member)
                        continue;
                h->po.member = member;
                h->announced = false; /* its havmsd is up once it says so */
                if (!member)
                        fbc_remote_end(&a->fb, h->po.name, NULL);
                if (member) {
                        if (h->po.fence != PO_FENCE_RUNNING)
                                h->po.fence = PO_FENCE_NONE;
                        ev(a, LOG_LVL_NOTICE, MSG_FO_JOINED, NULL, h->po.name,
                           "host %s joined the membership", h->po.name);
                        a->state_dirty = true;
                } else {
                        h->po.left_ms = now_ms();
                        ev(a, LOG_LVL_WARN, MSG_FO_LEFT, NULL, h->po.name,
                           "host %s left the membership", h->po.name);
                        patrol_now = true; /* its links no longer concern the patrol */
                        for (size_t i = 0; i < a->n_vms; i++)
                                if (!strcmp(a->vms[i].po.peer, h->po.name))
                                        a->vms[i].lost_ms = h->po.left_ms;
                }
        }
        a->nodes_known = true;
        decide(a);
        if (patrol_now)
                patrol(a);
}

static void on_members(void *opaque, const struct membership_member *m, size_t n)
{
        struct agent *a = opaque;
        (void)m;
        (void)n;
        a->state_dirty = true; /* a (re)joined agent learns our state */
}

static void on_quorum(void *opaque, bool quorate, uint32_t expected, uint32_t total)
{
        struct agent *a = opaque;
        if (!a->quorum_known || quorate != a->quorate)
                ev(a, quorate || !a->quorum_known ? LOG_LVL_NOTICE : LOG_LVL_ERR, MSG_FO_QUORUM,
                   NULL, a->host.name, "%s (votes %u of %u expected)",
                   quorate ? "quorate" : a->quorum_known ? "QUORUM LOST" : "not quorate yet",
                   total, expected);
        if (quorate && (!a->quorate || !a->quorum_known))
                a->quorate_since_ms = now_ms();
        a->quorum_known = true;
        a->quorate = quorate;
        decide(a);
}

static void on_message(void *opaque, uint32_t from, uint32_t pid, const void *buf, size_t len)
{
        struct agent *a = opaque;
        (void)pid;
        static struct clmsg m;
        if (clmsg_decode(buf, len, &m) < 0) {
                log_msg(LOG_LVL_WARN, MSG_FO_BAD_MSG, NULL, -1,
                        "ignored a malformed CPG message from node %u (%zu bytes)", from, len);
                return;
        }
        if (!strcmp(m.sender, a->host.name))
                return; /* our own, back from CPG */
        struct ahost *h = host_by_name(a, m.sender);
        struct avm *v = m.vm[0] ? vm_by_name(a, m.vm, false) : NULL;
        if (m.type == CLMSG_ASK_DISCARD && !v && a->ckpt_up &&
            !strcmp(m.target, a->host.name)) {
                /* checkpointd holds nothing of this VM: no replica to drop */
                send_ref(a, CLMSG_DISCARDED, m.vm, m.generation, m.sender);
                return;
        }
        bool for_me = !strcmp(m.target, a->host.name);
        bool from_peer = v && !strcmp(v->po.peer, m.sender);
        switch (m.type) {
        case CLMSG_STATE:
                if (h) {
                        h->state = m;
                        h->have_state = true;
                        h->announced = true;
                }
                break;
        case CLMSG_RELINQUISH:
                if (for_me && v && from_peer && v->po.generation == m.generation &&
                    v->po.state == PO_VM_BK_READY) {
                        v->po.peer_relinquished = true;
                        v->lost_ms = now_ms();
                }
                break;
        case CLMSG_ASK_DISCARD:
                if (for_me && v && from_peer && v->po.generation <= m.generation &&
                    !runs_here(v->po.state))
                        v->po.discard_requested = true;
                break;
        case CLMSG_DISCARDED:
                /* only the answer to a request of this situation counts
                 * (an isolated primary's, or a crashed one's that restarts) */
                if (for_me && v && from_peer && v->po.generation == m.generation &&
                    (v->po.state == PO_VM_ISOLATED || v->po.state == PO_VM_DEFINED) &&
                    v->po.discard_asked)
                        v->po.peer_discarded = true;
                break;
        case CLMSG_FENCED: {
                struct ahost *t = host_by_name(a, m.target);
                if (t && !t->po.member && t->po.fence != PO_FENCE_RUNNING) {
                        t->po.fence = PO_FENCE_DONE;
                        t->po.fence_ms = now_ms();
                        snprintf(t->fence_last, sizeof(t->fence_last), "fenced by %s", m.sender);
                }
                break;
        }
        case CLMSG_SWITCHOVER:
                if (for_me)
                        switchover_request(a, &m);
                break;
        case CLMSG_SWITCHOVER_STATUS:
                switchover_status(a, &m);
                break;
        }
        decide(a);
}

static const struct membership_cb mem_cb = {
        .nodes = on_nodes, .members = on_members, .quorum = on_quorum, .message = on_message,
};

static void mem_close(struct agent *a)
{
        for (size_t i = 0; i < a->n_mem_fds; i++)
                epoll_ctl(a->epfd, EPOLL_CTL_DEL, a->mem_fds[i], NULL);
        a->n_mem_fds = 0;
        membership_close(a->mem);
        a->mem = NULL;
}

static void mem_open(struct agent *a)
{
        if (a->mem || now_ms() < a->mem_retry_ms)
                return;
        a->mem_retry_ms = now_ms() + 1000;
        int r = membership_open("havms", &mem_cb, a, &a->mem);
        if (r < 0) {
                a->mem = NULL;
                return;
        }
        a->self_nodeid = membership_local_nodeid(a->mem);
        /* the hosts we may have to judge: corosync's node list */
        uint32_t ids[MEMBERSHIP_NODES_MAX];
        size_t n = 0;
        membership_nodelist(a->mem, ids, MEMBERSHIP_NODES_MAX, &n);
        for (size_t i = 0; i < n; i++) {
                char name[CFG_NAME_MAX];
                if (ids[i] == a->self_nodeid || host_by_id(a, ids[i]) ||
                    a->n_hosts >= PO_MAX_HOSTS ||
                    membership_node_name(a->mem, ids[i], name, sizeof(name)) < 0)
                        continue;
                struct ahost *h = &a->hosts[a->n_hosts++];
                memset(h, 0, sizeof(*h));
                snprintf(h->po.name, sizeof(h->po.name), "%s", name);
                h->po.nodeid = ids[i];
                h->po.member = false; /* the first nodes report tells */
                h->fence_cfg = host_config_fence(&a->host, name);
                h->po.fence_configured = h->fence_cfg != NULL;
                snprintf(h->monitor, sizeof(h->monitor), "unchecked");
        }
        membership_fds(a->mem, a->mem_fds, 8, &a->n_mem_fds);
        for (size_t i = 0; i < a->n_mem_fds; i++) {
                struct epoll_event e = { .events = EPOLLIN, .data.u64 = TAG_MEM + i };
                epoll_ctl(a->epfd, EPOLL_CTL_ADD, a->mem_fds[i], &e);
        }
        a->corosync_up = true;
        a->state_dirty = true;
        ev(a, LOG_LVL_NOTICE, MSG_FO_COROSYNC, NULL, a->host.name,
           "joined corosync as node %u; %zu other host(s) known", a->self_nodeid, a->n_hosts);
}

static void mem_dispatch(struct agent *a, size_t idx)
{
        if (!a->mem || idx >= a->n_mem_fds)
                return;
        if (membership_dispatch(a->mem, a->mem_fds[idx]) < 0) {
                mem_close(a);
                a->corosync_up = false;
                if (a->quorum_known) /* connected before: this is a loss, self-fence (S3) */
                        a->quorate = false;
                ev(a, LOG_LVL_ERR, MSG_FO_COROSYNC, NULL, a->host.name,
                   "lost corosync: no quorum until it is back (the VMs running here stop)");
                decide(a);
        }
}

static void refresh_links(struct agent *a)
{
        if (!a->mem)
                return;
        for (size_t k = 0; k < a->n_hosts; k++) {
                struct ahost *h = &a->hosts[k];
                struct links_seen now = { 0 };
                if (membership_links(a->mem, h->po.nodeid, now.l, MEMBERSHIP_LINKS_MAX,
                                     &now.n) < 0)
                        continue;
                for (size_t i = 0; i < now.n; i++) {
                        bool was = false, known = false;
                        for (size_t j = 0; j < h->links.n; j++)
                                if (h->links.l[j].link == now.l[i].link) {
                                        known = true;
                                        was = h->links.l[j].connected;
                                }
                        if (known && was != now.l[i].connected)
                                ev(a, now.l[i].connected ? LOG_LVL_NOTICE : LOG_LVL_WARN,
                                   MSG_FO_LINK, NULL, h->po.name, "link %u to %s is %s",
                                   now.l[i].link, h->po.name,
                                   now.l[i].connected ? "up again" : "DOWN");
                }
                h->links = now;
        }
}

/* -------------------------------------------------------- monitoring -- */

static void monitor_fences(struct agent *a)
{
        uint32_t every = a->host.cluster.fence_monitor_s;
        if (!every || now_ms() < a->next_monitor_ms)
                return;
        a->next_monitor_ms = now_ms() + (uint64_t)every * 1000;
        for (size_t k = 0; k < a->n_hosts; k++) {
                struct ahost *h = &a->hosts[k];
                if (!h->fence_cfg || h->po.fence == PO_FENCE_RUNNING)
                        continue;
                struct job *j = job_new(a, JOB_MONITOR, NULL, h->po.name);
                if (!j)
                        continue;
                j->fence_cfg = h->fence_cfg;
                job_start(a, j);
        }
}

/* ------------------------------------------------------ control socket - */

static const char *fence_state_name(enum po_fence f)
{
        static const char *const n[] = { "none", "running", "done", "failed" };
        return n[f];
}

static const char *protection_of(const struct agent *a, const char *vm, const char **owner,
                                 uint64_t *gen)
{
        /* the owner: the host that runs it with the highest generation */
        const char *prot = "stopped";
        *owner = "";
        *gen = 0;
        for (size_t i = 0; i < a->n_vms; i++)
                if (!strcmp(a->vms[i].po.name, vm) && runs_here(a->vms[i].po.state)) {
                        *owner = a->host.name;
                        *gen = a->vms[i].po.generation;
                        prot = po_vm_state_name(a->vms[i].po.state);
                }
        for (size_t k = 0; k < a->n_hosts; k++) {
                const struct ahost *h = &a->hosts[k];
                const struct clmsg_vm *x = host_vm(h, vm);
                if (x && h->po.member && runs_here(x->state) && x->generation >= *gen) {
                        *owner = h->po.name;
                        *gen = x->generation;
                        prot = po_vm_state_name(x->state);
                }
        }
        if (!strcmp(prot, "running"))
                prot = "unprotected";
        return prot;
}

static json_object *vm_host_json(const char *host, enum po_vm_state st, uint64_t gen,
                                 uint64_t epoch, const char *peer, enum po_exit ex)
{
        json_object *o = json_object_new_object();
        json_object_object_add(o, "host", json_object_new_string(host));
        json_object_object_add(o, "state", json_object_new_string(po_vm_state_name(st)));
        json_object_object_add(o, "generation", json_object_new_int64((int64_t)gen));
        json_object_object_add(o, "epoch", json_object_new_int64((int64_t)epoch));
        json_object_object_add(o, "peer", json_object_new_string(peer));
        json_object_object_add(o, "last_exit", json_object_new_string(po_exit_name(ex)));
        return o;
}

/* A member's spare fields: "spare": asleep|waking|up|failed, wake history. */
static void spare_json(struct agent *a, json_object *o, const char *name)
{
        const struct fbc_spare *s = fbc_spare(&a->fb, name);
        if (!s)
                return;
        json_object_object_add(o, "spare", json_object_new_string(fb_spare_state_name(s->state)));
        json_object_object_add(o, "wake_attempts", json_object_new_int((int)s->attempts));
        json_object_object_add(o, "wake_way", json_object_new_string(s->last_way));
        json_object_object_add(o, "on_return", json_object_new_string(s->cfg->on_return));
}

/* Per VM: "status" protected | degraded | resyncing | switching | stopped,
 * checkpointd's sync progress when the owner is here, the failback note. */
static void failback_json(struct agent *a, json_object *o, const struct avm *v,
                          const char *owner, const char *prot)
{
        const struct fbc_vm *r = fbc_vm(&a->fb, v->po.name, false);
        bool switching = r && r->sw != FBC_SW_NONE;
        for (size_t i = 0; i < a->fb.n_remote; i++)
                switching |= !strcmp(a->fb.remote[i].vm, v->po.name) &&
                             now_ms() < a->fb.remote[i].since_ms + FBC_SWITCH_TIMEOUT_MS;
        const char *st = switching                      ? "switching"
                         : !strcmp(prot, "protected")   ? "protected"
                         : !strcmp(prot, "syncing")     ? "resyncing"
                         : !strcmp(prot, "stopped")     ? "stopped"
                                                        : "degraded";
        json_object_object_add(o, "status", json_object_new_string(st));
        if (!strcmp(owner, a->host.name) && v->has_sync) {
                json_object *s = json_object_new_object();
                json_object_object_add(s, "percent", json_object_new_double(v->sync_pct));
                json_object_object_add(s, "mib_s", json_object_new_double(v->sync_mib_s));
                json_object_object_add(s, "eta_s", json_object_new_double(v->sync_eta_s));
                json_object_object_add(o, "sync", s);
        }
        json_object_object_add(o, "failback", json_object_new_string(v->fb_note));
        json_object_object_add(o, "failback_pending", json_object_new_boolean(v->fb_pending));
        if (switching && r && r->sw != FBC_SW_NONE)
                json_object_object_add(o, "switching_to", json_object_new_string(r->sw_to));
}

static json_object *cluster_status(struct agent *a)
{
        json_object *r = json_object_new_object();
        json_object_object_add(r, "ok", json_object_new_boolean(1));
        json_object_object_add(r, "host", json_object_new_string(a->host.name));
        json_object_object_add(r, "corosync", json_object_new_boolean(a->corosync_up));
        json_object_object_add(r, "quorate", json_object_new_boolean(a->corosync_up && a->quorate));
        json_object_object_add(r, "quorum", json_object_new_string(a->host.cluster.quorum));
        json_object *members = json_object_new_array();
        json_object *self = json_object_new_object();
        json_object_object_add(self, "name", json_object_new_string(a->host.name));
        json_object_object_add(self, "nodeid", json_object_new_int64(a->self_nodeid));
        json_object_object_add(self, "member", json_object_new_boolean(a->corosync_up));
        json_object_object_add(self, "self", json_object_new_boolean(1));
        json_object_array_add(members, self);
        for (size_t k = 0; k < a->n_hosts; k++) {
                struct ahost *h = &a->hosts[k];
                json_object *o = json_object_new_object(), *links = json_object_new_array();
                json_object_object_add(o, "name", json_object_new_string(h->po.name));
                json_object_object_add(o, "nodeid", json_object_new_int64(h->po.nodeid));
                json_object_object_add(o, "member", json_object_new_boolean(h->po.member));
                json_object_object_add(o, "self", json_object_new_boolean(0));
                for (size_t i = 0; i < h->links.n; i++) {
                        json_object *l = json_object_new_object();
                        json_object_object_add(l, "id", json_object_new_int(h->links.l[i].link));
                        json_object_object_add(l, "connected",
                                               json_object_new_boolean(h->links.l[i].connected));
                        json_object_array_add(links, l);
                }
                json_object_object_add(o, "links", links);
                json_object *f = json_object_new_object();
                json_object_object_add(f, "configured", json_object_new_boolean(h->fence_cfg != NULL));
                json_object_object_add(f, "levels",
                                       json_object_new_int(h->fence_cfg ? (int)h->fence_cfg->n_levels : 0));
                json_object_object_add(f, "state", json_object_new_string(fence_state_name(h->po.fence)));
                json_object_object_add(f, "last", json_object_new_string(h->fence_last));
                json_object_object_add(f, "monitor", json_object_new_string(h->monitor));
                json_object_object_add(o, "fence", f);
                spare_json(a, o, h->po.name);
                json_object_array_add(members, o);
        }
        /* spares that are no corosync node: never members, still wakeable */
        for (size_t k = 0; k < a->fb.n_spares; k++) {
                const char *sn = a->fb.spares[k].cfg->name;
                if (host_by_name(a, sn))
                        continue;
                json_object *o = json_object_new_object();
                json_object_object_add(o, "name", json_object_new_string(sn));
                json_object_object_add(o, "nodeid", json_object_new_int64(0));
                json_object_object_add(o, "member", json_object_new_boolean(0));
                json_object_object_add(o, "self", json_object_new_boolean(0));
                spare_json(a, o, sn);
                json_object_array_add(members, o);
        }
        json_object_object_add(r, "members", members);
        json_object *vms = json_object_new_array();
        for (size_t i = 0; i < a->n_vms; i++) {
                struct avm *v = &a->vms[i];
                json_object *o = json_object_new_object(), *hosts = json_object_new_array();
                const char *owner;
                uint64_t gen;
                const char *prot = protection_of(a, v->po.name, &owner, &gen);
                json_object_object_add(o, "name", json_object_new_string(v->po.name));
                json_object_object_add(o, "owner", json_object_new_string(owner));
                json_object_object_add(o, "generation", json_object_new_int64((int64_t)gen));
                json_object_object_add(o, "protection", json_object_new_string(prot));
                json_object_object_add(o, "note", json_object_new_string(v->note));
                failback_json(a, o, v, owner, prot);
                json_object_array_add(hosts, vm_host_json(a->host.name, v->po.state, v->po.generation,
                                                          v->epoch, v->po.peer, v->po.last_exit));
                for (size_t k = 0; k < a->n_hosts; k++) {
                        struct ahost *h = &a->hosts[k];
                        /* a host that left keeps its last word for the
                         * policy, but status shows only what members say */
                        const struct clmsg_vm *x = h->po.member ? host_vm(h, v->po.name) : NULL;
                        if (x)
                                json_object_array_add(hosts, vm_host_json(h->po.name,
                                        x->state, x->generation, x->committed_epoch,
                                        x->peer, x->last_exit));
                }
                json_object_object_add(o, "hosts", hosts);
                json_object_array_add(vms, o);
        }
        json_object_object_add(r, "vms", vms);
        json_object *c = json_object_new_object();
        json_object_object_add(c, "running", json_object_new_boolean(a->ckpt_up));
        json_object_object_add(c, "pid", json_object_new_int(a->ckpt_pid));
        json_object_object_add(c, "restarts", json_object_new_int((int)a->ckpt_restarts));
        json_object_object_add(r, "checkpointd", c);
        json_object *pat = json_object_new_array();
        for (size_t i = 0; i < a->n_patrol; i++)
                json_object_array_add(pat, json_object_new_string(a->patrol[i]));
        json_object_object_add(r, "patrol", pat);
        return r;
}

static json_object *events_json(struct agent *a, json_object *req)
{
        json_object *args, *mx;
        int64_t max = 100;
        if (json_object_object_get_ex(req, "args", &args) &&
            json_object_object_get_ex(args, "max", &mx))
                max = json_object_get_int64(mx);
        json_object *r = json_object_new_object(), *arr = json_object_new_array();
        json_object_object_add(r, "ok", json_object_new_boolean(1));
        pthread_mutex_lock(&a->ev_lock);
        uint64_t n = a->n_events, first = n > EVENTS_MAX ? n - EVENTS_MAX : 0;
        if (max > 0 && n - first > (uint64_t)max)
                first = n - (uint64_t)max;
        for (uint64_t i = first; i < n; i++) {
                const struct event *e = &a->events[i % EVENTS_MAX];
                json_object *o = json_object_new_object();
                char ts[40];
                time_t s = (time_t)(e->wall_ms / 1000);
                struct tm tm;
                gmtime_r(&s, &tm);
                size_t k = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
                snprintf(ts + k, sizeof(ts) - k, ".%03uZ", (unsigned)(e->wall_ms % 1000));
                json_object_object_add(o, "time", json_object_new_string(ts));
                json_object_object_add(o, "ts_ms", json_object_new_int64((int64_t)e->wall_ms));
                json_object_object_add(o, "id", json_object_new_string(e->id));
                json_object_object_add(o, "level", json_object_new_string(log_level_name(e->level)));
                json_object_object_add(o, "vm", json_object_new_string(e->vm));
                json_object_object_add(o, "host", json_object_new_string(e->host));
                json_object_object_add(o, "text", json_object_new_string(e->text));
                json_object_array_add(arr, o);
        }
        pthread_mutex_unlock(&a->ev_lock);
        json_object_object_add(r, "events", arr);
        return r;
}

static json_object *ctl_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static json_object *ctl_error(const char *fmt, ...)
{
        char buf[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        json_object *r = json_object_new_object();
        json_object_object_add(r, "ok", json_object_new_boolean(0));
        json_object_object_add(r, "error", json_object_new_string(buf));
        return r;
}

static void pending_add(struct agent *a, int fd, const char *vm, const char *owner, uint32_t reqid)
{
        struct pending *p = calloc(1, sizeof(*p));
        if (!p) {
                close(fd);
                return;
        }
        p->fd = fd;
        snprintf(p->vm, sizeof(p->vm), "%s", vm);
        snprintf(p->owner, sizeof(p->owner), "%s", owner);
        p->reqid = reqid;
        p->deadline_ms = now_ms() + SW_REPLY_MS;
        p->next = a->pending;
        a->pending = p;
}

/* `havmsctl switchover VM [--to HOST]`, typed on any host: the owner runs
 * it, another host forwards it over CPG. NULL: the answer comes later on
 * fd (kept open), with the outcome. */
static json_object *ctl_switchover(struct agent *a, int fd, json_object *req)
{
        json_object *args = NULL;
        json_object_object_get_ex(req, "args", &args);
        const char *vm = args ? jstr(args, "vm") : "", *to = args ? jstr(args, "to") : "";
        if (!vm[0])
                vm = jstr(req, "vm");
        if (!cfg_name_valid(vm))
                return ctl_error("switchover needs a VM name");
        if (to[0] && !cfg_name_valid(to))
                return ctl_error("'%s' is not a host name", to);
        char why[256];
        struct avm *v = vm_by_name(a, vm, false);
        uint32_t reqid = ++a->next_reqid;
        if (v && v->seen && runs_here(v->po.state)) {
                if (switchover_check(a, vm, to, why, sizeof(why)) < 0) {
                        ev(a, LOG_LVL_WARN, MSG_FB_SW_FAILED, vm, NULL,
                           "switchover refused: %s", why);
                        return ctl_error("%s", why);
                }
                ev(a, LOG_LVL_NOTICE, MSG_FB_SW_REQUESTED, vm, v->po.peer,
                   "switchover to %s requested here", v->po.peer);
                pending_add(a, fd, vm, a->host.name, reqid);
                start_switchover(a, vm, v->po.peer, a->host.name, reqid);
                return NULL;
        }
        const char *owner;
        uint64_t gen;
        protection_of(a, vm, &owner, &gen);
        const struct ahost *h = owner[0] ? host_by_name(a, owner) : NULL;
        if (!h)
                return ctl_error("%s runs on no member host: nothing to switch over", vm);
        if (!h->announced)
                return ctl_error("the owner of %s, %s, has no havmsd up", vm, owner);
        static struct clmsg m;
        memset(&m, 0, sizeof(m));
        m.type = CLMSG_SWITCHOVER;
        snprintf(m.sender, sizeof(m.sender), "%s", a->host.name);
        snprintf(m.vm, sizeof(m.vm), "%s", vm);
        snprintf(m.target, sizeof(m.target), "%s", owner);
        snprintf(m.to, sizeof(m.to), "%s", to);
        m.generation = gen;
        m.reqid = reqid;
        ev(a, LOG_LVL_NOTICE, MSG_FB_SW_REQUESTED, vm, owner,
           "switchover requested here, forwarded to its owner %s", owner);
        pending_add(a, fd, vm, owner, reqid);
        send_msg(a, &m);
        return NULL;
}

static void serve_ctl(struct agent *a)
{
        int fd = accept4(a->ctlfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
                return;
        json_object *req = NULL, *resp;
        if (ctl_read(fd, 1000, &req) < 0) {
                close(fd);
                return;
        }
        const char *cmd = jstr(req, "cmd");
        if (!strcmp(cmd, "cluster-status")) {
                resp = cluster_status(a);
        } else if (!strcmp(cmd, "events")) {
                resp = events_json(a, req);
        } else if (!strcmp(cmd, "switchover")) {
                resp = ctl_switchover(a, fd, req);
                if (!resp) { /* answered when the outcome is known */
                        json_object_put(req);
                        return;
                }
        } else {
                resp = json_object_new_object();
                json_object_object_add(resp, "ok", json_object_new_boolean(0));
                json_object_object_add(resp, "error",
                                       json_object_new_string("unknown command (havmsd knows "
                                                              "cluster-status, events, switchover)"));
        }
        ctl_write(fd, resp, 1000);
        json_object_put(resp);
        json_object_put(req);
        close(fd);
}

/* ------------------------------------------------------ standby patrol - */

static void patrol_add(char (*found)[PO_NOTE_MAX], size_t *n, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
static void patrol_add(char (*found)[PO_NOTE_MAX], size_t *n, const char *fmt, ...)
{
        if (*n >= PATROL_MAX)
                return;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(found[(*n)++], PO_NOTE_MAX, fmt, ap);
        va_end(ap);
}

static void patrol_space(char (*found)[PO_NOTE_MAX], size_t *n, const char *dir, const char *what)
{
        struct statvfs st;
        if (statvfs(dir, &st) < 0)
                return;
        unsigned long long total = (unsigned long long)st.f_blocks * st.f_frsize;
        unsigned long long avail = (unsigned long long)st.f_bavail * st.f_frsize;
        if (avail < PATROL_MIN_FREE || avail < total / 10)
                patrol_add(found, n, "only %llu MiB free in %s (%s)", avail >> 20, dir, what);
}

/* The standby patrol: what would make a takeover fail, found before it is
 * needed (HAVMS-FO-5028 when a problem appears, 5029 when it clears). */
static void patrol(struct agent *a)
{
        char found[PATROL_MAX][PO_NOTE_MAX];
        size_t n = 0;
        patrol_space(found, &n, a->host.ram_dir, "guest RAM and replicas");
        patrol_space(found, &n, a->host.state_dir, "state, disk journals");
        for (size_t i = 0; i < a->n_vms; i++) {
                const struct avm *v = &a->vms[i];
                const struct ahost *h = host_by_name(a, v->po.peer);
                if (v->po.state == PO_VM_BK_READY) {
                        if (v->lag_ms > PATROL_LAG_MS)
                                patrol_add(found, &n, "%s: the replica is %lld ms old", v->po.name,
                                           (long long)v->lag_ms);
                        if (v->qemu_pid <= 0 || kill(v->qemu_pid, 0) < 0)
                                patrol_add(found, &n, "%s: no hot-standby QEMU: a takeover "
                                                      "would start one cold", v->po.name);
                }
                if ((v->po.state == PO_VM_BK_READY || runs_here(v->po.state)) && v->po.peer[0]) {
                        if (!h)
                                patrol_add(found, &n, "%s: its peer %s is not a corosync node",
                                           v->po.name, v->po.peer);
                        else if (!h->fence_cfg)
                                patrol_add(found, &n, "no [fence %s]: %s cannot be taken over "
                                                      "from it", h->po.name, v->po.name);
                        else if (!strncmp(h->monitor, "failed", 6))
                                patrol_add(found, &n, "fencing of %s would fail (%s)", h->po.name,
                                           h->monitor);
                }
        }
        for (size_t k = 0; k < a->n_hosts; k++) {
                const struct ahost *h = &a->hosts[k];
                for (size_t l = 0; h->po.member && l < h->links.n; l++)
                        if (!h->links.l[l].connected)
                                patrol_add(found, &n, "link %u to %s is down: one more failure "
                                                      "and %s looks dead", h->links.l[l].link,
                                           h->po.name, h->po.name);
        }
        for (size_t i = 0; i < n; i++) {
                bool known = false;
                for (size_t j = 0; j < a->n_patrol; j++)
                        known |= !strcmp(found[i], a->patrol[j]);
                if (!known)
                        ev(a, LOG_LVL_WARN, MSG_FO_PATROL, NULL, a->host.name, "patrol: %s",
                           found[i]);
        }
        for (size_t j = 0; j < a->n_patrol; j++) {
                bool still = false;
                for (size_t i = 0; i < n; i++)
                        still |= !strcmp(found[i], a->patrol[j]);
                if (!still)
                        ev(a, LOG_LVL_NOTICE, MSG_FO_PATROL_OK, NULL, a->host.name,
                           "patrol: cleared: %s", a->patrol[j]);
        }
        memcpy(a->patrol, found, sizeof(found));
        a->n_patrol = n;
}

/* votequorum recounts within milliseconds of a membership change; while it
 * has not, nothing is decided (S3). Say so when that lasts. */
#define UNSETTLED_WARN_MS 2000
static void watch_settling(struct agent *a)
{
        bool settled = !a->mem || !a->quorum_known || membership_quorum_settled(a->mem);
        if (settled) {
                if (a->unsettled_said && a->mem)
                        ev(a, LOG_LVL_NOTICE, MSG_FO_QUORUM, NULL, a->host.name,
                           "corosync counted the votes of the new membership: deciding again");
                a->unsettled_since_ms = 0;
                a->unsettled_said = false;
                return;
        }
        if (!a->unsettled_since_ms)
                a->unsettled_since_ms = now_ms();
        if (!a->unsettled_said && now_ms() - a->unsettled_since_ms >= UNSETTLED_WARN_MS) {
                a->unsettled_said = true;
                ev(a, LOG_LVL_WARN, MSG_FO_QUORUM, NULL, a->host.name,
                   "the membership changed %u ms ago and corosync has not counted its votes yet "
                   "(with a quorum device: it may still be answering): no failover decision "
                   "until it has", UNSETTLED_WARN_MS);
        }
}

/* -------------------------------------------------------------- loop -- */

static void tick(struct agent *a)
{
        uint64_t exp;
        if (read(a->tickfd, &exp, sizeof(exp)) < 0)
                return;
        mem_open(a);
        /* Our own child is watched by its pidfd; an adopted checkpointd
         * (havmsd restarted) is replaced only after staying silent for
         * CKPT_DEAD_TICKS: a second one could not take its socket anyway. */
        bool adopted_dead = a->ckpt_adopted && a->ckpt_silent_ticks >= CKPT_DEAD_TICKS;
        if (!a->ckpt_pid && !a->ckpt_up && now_ms() >= a->ckpt_next_start_ms &&
            (!a->ckpt_adopted || adopted_dead)) {
                a->ckpt_adopted = false;
                ckpt_spawn(a);
        }
        poll_checkpointd(a);
        refresh_links(a);
        watch_settling(a);
        monitor_fences(a);
        pending_tick(a);
        if (++a->patrol_tick >= PATROL_TICKS) {
                a->patrol_tick = 0;
                patrol(a);
        }
}

int agent_init(struct agent **ret, const char *config_path, char *err, size_t errlen)
{
        struct agent *a = calloc(1, sizeof(*a));
        if (!a)
                return -ENOMEM;
        a->epfd = a->sigfd = a->tickfd = a->decidefd = a->ctlfd = a->ckpt_pidfd = -1;
        pthread_mutex_init(&a->ev_lock, NULL);
        snprintf(a->config_path, sizeof(a->config_path), "%s", config_path);
        a->started_ms = now_ms();
        int r = host_config_load(config_path, &a->host, err, errlen);
        if (r < 0)
                goto fail;
        fbc_init(&a->fb, &a->host);
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigaddset(&set, SIGINT);
        sigaddset(&set, SIGCHLD);
        sigaddset(&set, SIGPIPE);
        sigprocmask(SIG_BLOCK, &set, NULL);
        sigdelset(&set, SIGCHLD);
        sigdelset(&set, SIGPIPE);
        a->epfd = epoll_create1(EPOLL_CLOEXEC);
        a->sigfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
        a->tickfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
        a->decidefd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
        if (a->epfd < 0 || a->sigfd < 0 || a->tickfd < 0 || a->decidefd < 0) {
                r = -errno;
                snprintf(err, errlen, "cannot set up the event loop: %s", strerror(-r));
                goto fail;
        }
        const char *why = NULL;
        char dir[CFG_PATH_MAX];
        snprintf(dir, sizeof(dir), "%s", a->host.cluster.control_socket);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
                *slash = 0;
                mkdir_p(dir, 0755);
        }
        r = unix_listen(a->host.cluster.control_socket, SOCK_CLOEXEC | SOCK_NONBLOCK, 16,
                        &a->ctlfd, &why);
        if (r < 0) {
                snprintf(err, errlen, "control socket %s: %s", a->host.cluster.control_socket,
                         why ? why : strerror(-r));
                goto fail;
        }
        struct itimerspec its = { .it_interval = { 0, TICK_MS * 1000000L },
                                  .it_value = { 0, 1000000L } };
        timerfd_settime(a->tickfd, 0, &its, NULL);
        struct { int fd; uint64_t tag; } fds[] = {
                { a->sigfd, TAG_SIGNAL }, { a->tickfd, TAG_TICK },
                { a->decidefd, TAG_DECIDE }, { a->ctlfd, TAG_CTL },
        };
        for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
                struct epoll_event e = { .events = EPOLLIN, .data.u64 = fds[i].tag };
                epoll_ctl(a->epfd, EPOLL_CTL_ADD, fds[i].fd, &e);
        }
        /* a checkpointd that already answers (havmsd restarted) is adopted */
        json_object *req = json_object_new_object(), *resp = NULL;
        json_object_object_add(req, "cmd", json_object_new_string("status"));
        a->ckpt_up = ctl_call(a->host.control_socket, req, CTL_TIMEOUT_MS, &resp) == 0;
        json_object_put(req);
        json_object_put(resp);
        a->ckpt_adopted = a->ckpt_up; /* not ours to restart until it goes silent */
        *ret = a;
        return 0;
fail:
        agent_free(a);
        return r;
}

int agent_run(struct agent *a)
{
        ev(a, LOG_LVL_NOTICE, MSG_FO_STARTED, NULL, a->host.name,
           "havmsd started on %s (control %s; checkpointd %s)", a->host.name,
           a->host.cluster.control_socket, a->ckpt_up ? "adopted" : "to be started");
        while (!a->quit) {
                struct epoll_event evs[16];
                int n = epoll_wait(a->epfd, evs, 16, -1);
                if (n < 0 && errno != EINTR)
                        return -errno;
                for (int i = 0; i < n; i++) {
                        uint64_t tag = evs[i].data.u64;
                        if ((tag & 0xff) == TAG_JOB && tag >> 8) {
                                reap_job(a, (struct job *)(uintptr_t)(tag >> 8));
                                continue;
                        }
                        switch (tag) {
                        case TAG_SIGNAL: {
                                struct signalfd_siginfo si;
                                if (read(a->sigfd, &si, sizeof(si)) == sizeof(si))
                                        a->quit = true;
                                break;
                        }
                        case TAG_TICK:
                                tick(a);
                                break;
                        case TAG_DECIDE: {
                                uint64_t x;
                                if (read(a->decidefd, &x, sizeof(x)) > 0)
                                        decide(a);
                                break;
                        }
                        case TAG_CTL:
                                serve_ctl(a);
                                break;
                        case TAG_CKPT:
                                ckpt_exited(a);
                                break;
                        default:
                                if (tag >= TAG_MEM)
                                        mem_dispatch(a, (size_t)(tag - TAG_MEM));
                        }
                }
        }
        ev(a, LOG_LVL_NOTICE, MSG_FO_STOPPING, NULL, a->host.name,
           "havmsd stopping; checkpointd and its VMs keep running");
        return 0;
}

void agent_free(struct agent *a)
{
        if (!a)
                return;
        while (a->jobs) {
                struct job *j = a->jobs;
                a->jobs = j->next;
                runner_job_free(j->rj);
                json_object_put(j->args);
                json_object_put(j->resp);
                free(j);
        }
        while (a->pending) {
                struct pending *p = a->pending;
                a->pending = p->next;
                close(p->fd);
                free(p);
        }
        if (a->mem)
                membership_close(a->mem);
        int fds[] = { a->epfd, a->sigfd, a->tickfd, a->decidefd, a->ctlfd, a->ckpt_pidfd };
        for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
                if (fds[i] >= 0)
                        close(fds[i]);
        if (a->ctlfd >= 0)
                unlink(a->host.cluster.control_socket);
        pthread_mutex_destroy(&a->ev_lock);
        free(a);
}
