/* plan: the failback decision, as a pure function (docs/failback.md).
 *
 * Owns: turning what this host knows after the failover policy has had its
 * say — members, which of them run havmsd, the spares and their wake
 * history, each VM that runs HERE with its [failback] settings and timers —
 * into a list of actions (protect, switch over, wake a spare, power a spare
 * off, end protection for a hand-back) and the time to decide again. Like
 * failover/policy.c it performs no I/O, reads no clock and logs nothing:
 * failback/controller.c gathers the inputs and havmsd carries the actions
 * out. Every rule is tested by tables in test/unit/test_failback.c.
 *
 * The rules:
 *   F1 Source. Only the owner acts for a VM: the host that runs it, and
 *      only while no member runs it with a newer generation. A rejoining
 *      host's copy is never the source: protection always flows from the
 *      owner towards the other host (a `protect` from here), whatever the
 *      rejoining host holds.
 *   F2 Failures first. While the failover policy handles anything (a
 *      member left and is not fenced yet, a fence runs, a VM is isolated or
 *      activating, any failover action is in flight) or this host is not
 *      quorate, the plan does nothing at all; it only notes why.
 *   F3 Re-protection. A VM that runs here without a standby (checkpointd
 *      state `running`) and reprotect = auto is protected towards the
 *      chosen standby: among its candidates (`hosts`, then the spares)
 *      that are members with havmsd up, not this host, non-spares first;
 *      ordered = the first of them, fewest-vms = the one running or backing
 *      up the fewest VMs (ties: list order). A spare is chosen only when no
 *      non-spare candidate can take the role. reprotect = manual: a note.
 *      A VM whose checkpointd retries a standby that is no member while
 *      another candidate is available gets an UNPROTECT first (its retry
 *      target changes), then F3 applies.
 *   F4 Switchover safety. A switchover (automatic or asked by the operator,
 *      fb_switchover_check) needs: the VM `protected` here, its standby
 *      announced a committed replica of this generation (backup-ready), the
 *      target is that standby and a member with havmsd up, F2 clear, and no
 *      other switchover anywhere in the cluster (one at a time).
 *   F5 Failback. failback = auto: once the VM has been protected with its
 *      preferred host as standby for failback_delay_s, switch over there
 *      (F4 applies). manual: a note says a switchover is pending. off:
 *      nothing.
 *   F6 Spare wake. A VM without a standby for spare_wait_s (0 = never),
 *      when no non-spare candidate can take the role, makes this host wake
 *      a spare: the first configured one that is not failed. Retries with
 *      back-off: wakes at 0, 5, 10, 20, 40 s after the first, then every
 *      60 s, until boot_timeout_s without the spare joining: then it is
 *      declared failed (FB_WAKE_FAILED) and tried again FB_SPARE_RETRY_MS
 *      later; meanwhile the next spare may be woken. Never two spares
 *      waking at once from this host, never two wakes of one spare within
 *      the back-off step.
 *   F7 Hand-back. A VM protected with a spare (on_return = hand-back) as
 *      standby, once one of its non-spare candidates is a member with
 *      havmsd up: UNPROTECT (then F3 picks the non-spare). A spare with
 *      hand-back that backs up and runs nothing, is the standby of no VM
 *      here and is not being chosen now, is powered off (FB_SPARE_OFF) by
 *      one host only: the member whose name sorts first among the
 *      non-spares, even before its havmsd has announced itself (a host
 *      that just joined must not act for one it has not heard from yet;
 *      with that host's havmsd down the spare stays on); and only while
 *      no VM here is without a committed standby (unprotected, retrying
 *      or still syncing): should the resync to the returned host fail,
 *      the spare is still up.
 */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

#define FB_MAX_HOSTS (CFG_MAX_PEERS + 1)
#define FB_MAX_VMS 64
#define FB_MAX_ACTIONS (2 * FB_MAX_VMS + FB_MAX_HOSTS)
#define FB_NOTE_MAX 160
#define FB_SPARE_RETRY_MS (300 * 1000ull) /* a failed spare is woken again after this */

/* A VM's state here, reduced from checkpointd's for failback. */
enum fb_vm_state {
        FB_VM_OTHER,       /* not running here (or unknown): not ours to plan */
        FB_VM_UNPROTECTED, /* running, no standby (checkpointd `running`) */
        FB_VM_RETRYING,    /* running, checkpointd retries its standby (degraded, connecting) */
        FB_VM_SYNCING,     /* initial sync or resync towards the standby */
        FB_VM_PROTECTED,   /* epochs commit on the standby (protected, held) */
        FB_VM_BUSY,        /* isolated or activating: the failover policy's */
};

enum fb_failback { FB_FAILBACK_MANUAL, FB_FAILBACK_AUTO, FB_FAILBACK_OFF };

/* A spare's life (docs/failback.md): asleep -> waking -> up, or failed. */
enum fb_spare_state {
        FB_SPARE_ASLEEP,   /* not a member, no wake sent (or powered off again) */
        FB_SPARE_WAKING,   /* wakes sent, not a member yet */
        FB_SPARE_UP,       /* a member */
        FB_SPARE_FAILED,   /* not a member boot_timeout_s after the first wake */
};

struct fb_host {
        char name[CFG_NAME_MAX];
        bool member;            /* in the corosync membership (self: always) */
        bool agent_up;          /* its havmsd announced its state since it joined */
        unsigned n_vms;         /* VMs it runs or backs up (its announcement) */
        bool unsettled;         /* it announced a VM unprotected, syncing, isolated or a
                                   replica still syncing: a spare may be needed yet (F7) */
        bool spare;             /* a [spare NAME] of this host's configuration */
        /* spares only */
        enum fb_spare_state spare_state;
        bool hand_back;         /* on_return = hand-back */
        uint32_t boot_timeout_s;
        unsigned wake_attempts; /* wakes sent in this round */
        uint64_t wake_first_ms; /* first wake of this round */
        uint64_t wake_last_ms;  /* last wake sent */
        uint64_t failed_ms;     /* when it was declared failed */
};

struct fb_vm {
        char name[CFG_NAME_MAX];
        enum fb_vm_state state;
        uint64_t generation;
        char peer[CFG_NAME_MAX];        /* the standby (or the one checkpointd retries) */
        uint64_t newer_generation;      /* highest generation a member runs it with; 0 none */
        bool standby_committed;         /* peer announced backup-ready of this generation */
        bool busy;                      /* a failback or failover action for it is in flight */
        bool operator_unprotected;      /* an operator typed `unprotect`: never re-protected
                                           by itself until the next protect/start/activation */
        /* [failback] */
        bool reprotect_auto;
        enum fb_failback failback;
        uint32_t failback_delay_s;
        char preferred[CFG_NAME_MAX];
        char hosts[CFG_MAX_HOSTS][CFG_NAME_MAX]; /* vm_config_hosts(): never empty in use */
        unsigned n_hosts;
        bool fewest_vms;                /* standby_policy = fewest-vms */
        uint32_t spare_wait_s;
        /* timers kept by the controller */
        uint64_t unprotected_since_ms;  /* without a committed standby since; 0 = has one */
        uint64_t preferred_since_ms;    /* protected with `preferred` as standby since; 0 = not */
};

struct fb_input {
        uint64_t now_ms;
        char self[CFG_NAME_MAX];
        bool quorate;
        bool failover_busy;             /* F2: the failover policy handles something */
        const char *failover_why;       /* for the note; NULL = "a failure is being handled" */
        bool switchover_running;        /* F4: one runs somewhere in the cluster */
        struct fb_host hosts[FB_MAX_HOSTS]; /* every host known, self included */
        size_t n_hosts;
        struct fb_vm vms[FB_MAX_VMS];
        size_t n_vms;
};

enum fb_act {
        FB_PROTECT,      /* vm, host: `protect` towards host */
        FB_SWITCHOVER,   /* vm, host: hand the VM over to its standby host */
        FB_WAKE,         /* host: wake the spare (attempt = 1, 2, ...) */
        FB_WAKE_FAILED,  /* host: the spare did not join within boot_timeout_s */
        FB_SPARE_OFF,    /* host: power the spare off (hand-back done) */
        FB_UNPROTECT,    /* vm: end protection (hand-back, or a dead retry target) */
};

struct fb_action {
        enum fb_act type;
        char vm[CFG_NAME_MAX];
        char host[CFG_NAME_MAX];
        uint64_t generation;
        unsigned attempt;
        const char *why; /* a static string, for the log */
};

struct fb_output {
        struct fb_action actions[FB_MAX_ACTIONS];
        size_t n_actions;
        char note[FB_MAX_VMS][FB_NOTE_MAX]; /* per VM as in the input, "" = nothing */
        bool failback_pending[FB_MAX_VMS];  /* failback = manual and it could switch back now */
        uint64_t wake_ms;                   /* decide again then; 0 = no timer */
};

/* Decide. Never fails: what it cannot act on becomes a note. */
void fb_plan(const struct fb_input *in, struct fb_output *out);

/* F4 for a switchover of VM (index vm_idx) to `to` ("" = its standby):
 * 0, or -EINVAL/-EBUSY/-ENOENT with the reason in why. */
int fb_switchover_check(const struct fb_input *in, size_t vm_idx, const char *to, char *why,
                        size_t whylen);

/* The standby F3 would choose for VM vm_idx now; NULL if none. spare_ok:
 * spares may be chosen. */
const char *fb_choose_standby(const struct fb_input *in, size_t vm_idx, bool spare_ok);

/* F6's back-off: when wake number `attempt` (1-based) of a round that
 * began at first_ms is due. */
uint64_t fb_wake_due_ms(uint64_t first_ms, unsigned attempt);

const char *fb_act_name(enum fb_act a);
const char *fb_spare_state_name(enum fb_spare_state s);
enum fb_vm_state fb_vm_state_parse(const char *checkpointd_state);
