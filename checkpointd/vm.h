/* vm: what this host's checkpointd knows about one VM, and the state
 * machine of its role here. The control thread and the VM's replication
 * thread share it; every field below `lock` is read or written with the
 * lock held, except where a comment names the one thread that owns it.
 *
 *                     start                protect
 *   DEFINED ───────────────> RUNNING ─────────────> CONNECTING
 *      ^  ^                   ^  ^                    │ WELCOME
 *      │  │ stop/exit         │  └──── unprotect ──┐  v
 *      │  │                   │                 SYNCING (pre-copy)
 *      │  │                   │                    │ first epoch ACKed
 *      │  │                   │                    v
 *      │  │                   │   peer lost     PROTECTED
 *      │  │                   │                    │ pause ^ resume
 *      │  │                   │                    v       │
 *      │  │                   │                   HELD ─────┘
 *      │  │                   └── DEGRADED <───────┤  (retries the peer,
 *      │  │                         │ peer back  ^     │   then SYNCING again)
 *      │  │                         └──> SYNCING │     │ peer lost, managed
 *      │  │                                      │     v   (--managed / [host] managed)
 *      │  │                              release └─ ISOLATED: output and disk logs
 *      │  │                                           │  HELD, retries the peer
 *      │  │                     WELCOME (the standby  │
 *      │  │                     dropped its replica)  └──> release held, SYNCING
 *      │  │
 *      │  │  Any primary state: HELLO refused as STALE (a newer generation
 *      │  │  ran elsewhere) -> the VM is powered off here -> DEFINED.
 *      │  │
 *      │  │  checkpointd restarts after a crash, the VM's QEMU still runs
 *      │  │  (adopt.h): RUNNING, or ISOLATED (output held) / DEGRADED when it
 *      │  │  was protected: protection resumes with a full re-sync. QEMU gone:
 *      │  │  DEFINED, last_exit crash.
 *      │  │
 *      │  │  HELLO from a primary
 *      │  └──────────────── BK_SYNCING ── first commit ──> BK_STANDBY
 *      │   unprotect / error   ^                              │ primary lost
 *      │                       └──── HELLO (full re-sync) ── BK_ORPHANED
 *      │                                                      │ activate
 *      │    checkpointd restarts holding a committed replica ─>│ (persist.h)
 *      └──── activation failed ──── ACTIVATING <──────────────┘
 *                                      │ device state loaded, cont
 *                                      v
 *                                   RUNNING (this host is now the primary)
 */
#pragma once
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "qemu.h"

enum vm_state {
        VM_DEFINED,     /* known here, nothing running, no replica */
        VM_RUNNING,     /* primary here, protection off */
        VM_CONNECTING,  /* primary, looking for its standby */
        VM_SYNCING,     /* primary, initial (or re-) sync to the standby */
        VM_PROTECTED,   /* primary, epochs commit on the standby */
        VM_HELD,        /* primary, paused right after a committed epoch:
                           the replica equals guest RAM (pause/resume) */
        VM_DEGRADED,    /* primary, standby lost: running unprotected, retrying */
        VM_ISOLATED,    /* primary (managed mode), standby lost: output and disk
                           logs still HELD (the standby may take over), retrying;
                           `release` or a WELCOME ends it */
        VM_BK_SYNCING,  /* backup, receiving the initial sync: replica unusable */
        VM_BK_STANDBY,  /* backup, replica committed, primary connected */
        VM_BK_ORPHANED, /* backup, replica committed, primary gone: may activate */
        VM_ACTIVATING,  /* backup taking over: loading device state */
};

const char *vm_state_name(enum vm_state s);
bool vm_state_is_primary(enum vm_state s);

#define STATS_RING 8192

struct epoch_stat {
        float stop_ms, scan_ms, copy_ms, devstate_ms, barrier_ms, cont_ms, pause_ms;
        float commit_ms;   /* VM stop to ACK received */
        uint32_t dirty_pages; /* page records sent: before the stop + the pause's */
        uint32_t prestop_pages; /* sent before the stop (pre-scan), of dirty_pages */
        uint32_t resent_pages;  /* of those, written again before the stop: sent twice */
        uint64_t raw_bytes;  /* page bytes + device state, uncompressed */
        uint64_t wire_bytes; /* bytes put on the socket for this epoch */
        uint64_t disk_bytes; /* disk write data of this epoch (all disks) */
        uint32_t early;      /* 1: started before epoch_ms by adaptive epochs */
        uint32_t delta_hits;   /* pages found in the delta cache (sent as XOR against it) */
        uint32_t delta_misses; /* pages not in it (LZ4 or raw); both 0 without a cache */
        /* Where held output waits (docs/output-commit.md), primary side:
         * the previous epoch's release -> this epoch's first output frame
         * (0: none), that frame -> epoch start, epoch start -> STOP, pause
         * end -> EPOCH_END sent, EPOCH_END sent -> ACK read, ACK -> output
         * released and logs freed. */
        float to_output_ms, out_wait_ms, prestop_ms, send_ms, ack_ms, release_ms;
};

/* A commit as the standby saw it (its own ring: `stats` on the standby):
 * first record of the epoch -> EPOCH_END read, device state saved, disk
 * writes applied (fdatasync included), of which fdatasync, pages copied
 * into the replica. The ACK is sent right after. */
struct standby_stat {
        float recv_ms, persist_ms, disk_ms, fsync_ms, pages_ms;
};
#define SB_STATS_RING 1024

/* A (re-)sync to the standby: progress while it runs, its figures after
 * (status shows them as "sync" while syncing, "last_sync" after). */
struct sync_progress {
        uint64_t total_bytes; /* disk bytes to look at + guest RAM */
        uint64_t sent_bytes;  /* of those, looked at so far (first pass) */
        uint32_t round;       /* 0 = full pass, then pre-copy rounds */
        uint64_t last_round_pages;
        uint64_t started_ms;
        uint64_t ended_ms;    /* 0 while running */
        const char *phase;    /* "hashes", "disks", "memory", "pre-copy" */
        bool mem_reseed;      /* the standby's RAM file was compared by hashes */
        uint64_t pages_same;  /* first pass: pages the standby already had */
        uint64_t pages_sent;  /* first pass: pages sent */
        uint64_t precopy_pages; /* pages sent again in pre-copy rounds */
        unsigned disks_incremental, disks_full;
        uint64_t disk_blocks; /* 64 KiB blocks looked at in the first pass */
        uint64_t disk_sent_bytes; /* disk bytes sent, all passes */
        uint64_t hash_bytes;  /* hashes received from the standby */
        uint64_t wire_bytes;  /* bytes sent during the sync */
};

struct vm {
        char name[CFG_NAME_MAX];

        pthread_mutex_t lock;
        struct vm_config cfg;
        enum vm_state state;
        char peer[CFG_NAME_MAX];       /* the other host of the pair */
        char last_error[256];          /* last operator-relevant failure */
        uint64_t epoch;                /* last epoch started (primary) / committed (backup) */
        uint64_t committed_epoch;
        uint64_t last_commit_wall_ms;  /* wall clock of the last commit */
        uint64_t last_stop_wall_ms;    /* primary's stop time of that epoch */
        bool link_up;
        struct sync_progress sync;
        struct epoch_stat stats[STATS_RING];
        uint64_t n_stats;              /* total recorded; ring index = n % STATS_RING */
        uint64_t stats_from;           /* first index counted by `stats` */
        struct standby_stat sb_stats[SB_STATS_RING]; /* backup: its commits */
        uint64_t n_sb_stats, sb_stats_from;
        uint64_t activation_ms;        /* last activation: command to running */
        uint64_t epochs_failed;
        uint64_t generation;           /* fencing token as persisted here (persist.h) */
        bool generation_bad;           /* the generation file is corrupt: refuse to act */
        bool unprotected_by_operator;  /* `unprotect` typed by an operator (not the cluster's):
                                          havmsd's reprotect leaves the VM alone until the
                                          next protect, start or activation */
        char last_exit[32];            /* why the VM last stopped here: guest-shutdown,
                                          crash, stopped, stale, handed-over,
                                          peer-guest-shutdown, peer-ended, peer-lost,
                                          peer-handover; "" = never */
        float persist_ms_last, persist_ms_max; /* backup: devstate write per commit */

        /* Owned by whoever holds `busy`: the replication thread while it
         * runs, else the control thread. */
        struct qemu_vm *qemu;
        pthread_t thread;              /* primary thread */
        bool thread_joinable;          /* primary thread created, not yet joined */
        bool thread_running;           /* primary or backup thread alive */
        pthread_cond_t changed;        /* broadcast on every state change and when
                                          thread_running drops */
        volatile bool stop_requested;  /* control -> thread: end protection */
        volatile bool hold_requested;  /* control -> thread: pause after a checkpoint */
        volatile bool handover_requested; /* control -> thread: after that checkpoint, hand
                                             the VM to the standby (switchover) */
        int handover_result;           /* thread -> control: 1 pending, 0 done, -errno */
        volatile bool release_requested; /* control -> thread: leave ISOLATED, release */
        volatile bool unprotecting;    /* control -> thread: this stop_requested is an
                                          `unprotect` (the VM runs on), not a `stop` */
        volatile bool kill_requested;  /* `kill` (fence): QEMU SIGKILLed; drop held
                                          output, no goodbye, last_exit fenced */
        int wake_fd;                   /* eventfd that wakes the thread */
        int conn_fd;                   /* backup: the primary's connection */
        struct backup_replica *replica;/* backup role state (backup.c) */
};

void vm_set_state(struct vm *v, enum vm_state s);     /* lock held */
void vm_set_error(struct vm *v, const char *fmt, ...) /* lock held */
        __attribute__((format(printf, 2, 3)));
void vm_record_epoch(struct vm *v, const struct epoch_stat *st); /* lock held */
void vm_record_standby(struct vm *v, const struct standby_stat *st); /* lock held */
void vm_set_exit(struct vm *v, const char *why);       /* lock held */
/* After the QEMU died: did the guest power itself off (QMP SHUTDOWN with
 * guest true, seen before the end of the QMP stream)? Reads what QEMU left
 * in its QMP socket. Call by the owner of q only. */
bool vm_guest_powered_off(struct qemu_vm *q);
