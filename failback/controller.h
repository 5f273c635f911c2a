/* controller: what the failback plan (plan.h) remembers between two
 * decisions, and the bookkeeping of the actions havmsd carries out for it.
 *
 * Owns: per VM running here, the timers the plan reads (without a standby
 * since, with its preferred host as standby since), the switchover this
 * host runs as the owner (phase, target, requester, timings), the
 * switchovers other hosts announced (one at a time in the cluster), and
 * per spare its life (asleep / waking / up / failed, wake attempts).
 * Does not own: I/O of any kind, the clock (every call takes now_ms), the
 * configuration (it keeps pointers into the host_config it was given),
 * logging. failover/agent.c fills the plan's input from its view of the
 * cluster, calls fbc_observe() to complete it, runs fb_plan(), and
 * reports each action it starts and ends here.
 */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "plan.h"

#define FBC_SWITCH_TIMEOUT_MS 120000ull /* handover done, no new owner within this: failed */
#define FBC_MAX_REMOTE 8

/* A switchover this host runs as the VM's owner. */
enum fbc_sw_phase {
        FBC_SW_NONE,
        FBC_SW_HANDOVER,     /* checkpointd's `handover` runs (final checkpoint, goodbye) */
        FBC_SW_RELINQUISHED, /* our QEMU is off; waiting for the standby to run it */
};

struct fbc_vm {
        char name[CFG_NAME_MAX];
        enum fb_vm_state state;         /* at the last fbc_observe() */
        char peer[CFG_NAME_MAX];
        uint64_t unprotected_since_ms;
        uint64_t preferred_since_ms;
        uint64_t reprotect_ms;          /* a protect was started then (0 = none pending) */
        /* switchover */
        enum fbc_sw_phase sw;
        char sw_to[CFG_NAME_MAX];
        char sw_requester[CFG_NAME_MAX]; /* host that asked ("" = failback = auto here) */
        uint32_t sw_reqid;
        uint64_t sw_generation;         /* the generation handed over */
        uint64_t sw_started_ms;         /* handover asked */
        uint64_t sw_stopped_ms;         /* handover answered: QEMU here off */
        uint32_t sw_pause_ms;           /* checkpointd's final-checkpoint pause */
};

struct fbc_spare {
        const struct cfg_spare *cfg;
        enum fb_spare_state state;
        unsigned attempts;
        uint64_t first_ms, last_ms, failed_ms, up_ms;
        uint64_t off_ms;                 /* last power-off asked (hand-back) */
        bool job;                        /* a wake or power-off runs now */
        char last_way[48];               /* how the last wake went out ("ipmi", "wol udp+raw") */
};

/* A switchover another host announced (SWITCHOVER_STATUS started). */
struct fbc_remote {
        char host[CFG_NAME_MAX];
        char vm[CFG_NAME_MAX];
        uint64_t since_ms;
};

struct fb_controller {
        const struct host_config *host;
        struct fbc_vm vms[FB_MAX_VMS];
        size_t n_vms;
        struct fbc_spare spares[CFG_MAX_SPARES];
        size_t n_spares;
        struct fbc_remote remote[FBC_MAX_REMOTE];
        size_t n_remote;
};

void fbc_init(struct fb_controller *c, const struct host_config *h);
/* The VM's record (created when create; NULL when full or absent). */
struct fbc_vm *fbc_vm(struct fb_controller *c, const char *name, bool create);
struct fbc_spare *fbc_spare(struct fb_controller *c, const char *name);

/* Complete the plan's input: in->hosts and in->vms hold what the agent
 * knows (membership, announcements, checkpointd states, [failback]
 * settings); this updates the timers and spare states from them, writes
 * the timers and spare fields into in, appends spares that are no corosync
 * node (never members), and sets switchover_running. */
void fbc_observe(struct fb_controller *c, struct fb_input *in);

/* Bookkeeping of actions: started (before the work), and a wake's end. */
void fbc_action_started(struct fb_controller *c, const struct fb_action *x, uint64_t now_ms);
void fbc_wake_done(struct fb_controller *c, const char *spare, const char *way);

/* Switchover phases of this host's own switchover of vm. */
void fbc_switch_begin(struct fb_controller *c, const char *vm, const char *to,
                      const char *requester, uint32_t reqid, uint64_t generation, uint64_t now_ms);
void fbc_switch_stopped(struct fb_controller *c, const char *vm, uint32_t pause_ms,
                        uint64_t now_ms);
void fbc_switch_end(struct fb_controller *c, const char *vm);

/* Switchovers of other hosts: started / ended (done or failed), or the host left. */
void fbc_remote_begin(struct fb_controller *c, const char *host, const char *vm, uint64_t now_ms);
void fbc_remote_end(struct fb_controller *c, const char *host, const char *vm);
bool fbc_switch_running(const struct fb_controller *c, uint64_t now_ms);
