/* policy: the failover decision, as a pure function.
 *
 * Owns: turning what this host knows — corosync membership and quorum,
 * fencing results, the local state of each VM (from checkpointd), what
 * the peers announced over CPG, the clock — into a list of actions and
 * the time at which to decide again. It performs no I/O, reads no clock
 * and logs nothing: agent.c gathers the inputs and carries out the
 * actions. So every rule below is tested by tables of scenarios
 * (test/unit/test_policy.c) without a cluster.
 *
 * The rules that keep two copies of a VM from running (docs/failover.md
 * has their timelines with measured numbers):
 *   S1 A standby activates only when its primary host left the membership
 *      AND was fenced after it left (fence mode), or left at least
 *      witness_wait_ms ago while this host stayed quorate (witness mode),
 *      or when the primary, still a member, announced over CPG that it
 *      gave its crashed copy of that generation up (RELINQUISH) — or its
 *      copy that a planned switchover stopped (last_exit handed-over: the
 *      old primary's QEMU is already off when it sends RELINQUISH; the
 *      standby, told by the goodbye, shows last_exit peer-handover and
 *      activates even with failover = manual, since an operator or
 *      failback = auto asked for it).
 *   S2 A primary whose standby stopped ACKing holds its output (ISOLATED,
 *      in checkpointd) until the standby is fenced, has confirmed over CPG
 *      that it dropped its replica, or (witness) cannot be quorate any
 *      more; only then RELEASE.
 *   S3 Without quorum (or without corosync, after having had it, or in
 *      witness mode for self_fence_ms after havmsd started) a host
 *      activates nothing and kills the VMs it runs at once (self-fence),
 *      whatever else is under way for them.
 *   S4 A host that learns of a newer generation of a VM it runs stops it.
 *   S6 A replica is never activated when a member announced (since it
 *      last joined) a newer copy of the VM: a running one or a replica of
 *      a newer generation, or the replica's own primary running this
 *      generation protected towards another host (a standby cut off and
 *      replaced keeps a replica older than what the world may have seen).
 *      It is discarded; the owner also asks any member holding a replica
 *      taken from it, other than its current standby, to drop it.
 *   S5 Of two hosts that lost each other, the one that takes VMs over
 *      fences at once; the one that would only release output waits
 *      fence_delay_ms; between equals (each holds a replica of a VM the
 *      other runs) the lower node id goes first. So a partition never ends
 *      with both fenced.
 * Witness waits count from when the peer left or this host last became
 * quorate, whichever is later: a quorum that flapped restarts the wait.
 */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

#define PO_MAX_HOSTS CFG_MAX_PEERS
#define PO_MAX_VMS 64
#define PO_MAX_ACTIONS (2 * PO_MAX_VMS + PO_MAX_HOSTS)
#define PO_NOTE_MAX 160

/* A VM's state on this host, reduced from checkpointd's states. */
enum po_vm_state {
        PO_VM_UNKNOWN,      /* checkpointd not answering: decide nothing for it */
        PO_VM_DEFINED,      /* nothing here (see last_exit for why) */
        PO_VM_RUNNING,      /* primary, unprotected (running, degraded, connecting) */
        PO_VM_SYNCING,      /* primary, initial sync: the standby cannot activate yet */
        PO_VM_PROTECTED,    /* primary, epochs commit on the standby (protected, held) */
        PO_VM_ISOLATED,     /* primary, standby lost, output held for the cluster to decide */
        PO_VM_BK_SYNCING,   /* backup, replica incomplete */
        PO_VM_BK_READY,     /* backup, committed replica (standby or orphaned) */
        PO_VM_ACTIVATING,   /* backup taking over */
};

/* Why the VM last stopped here (checkpointd's last_exit). */
enum po_exit {
        PO_EXIT_NONE,
        PO_EXIT_GUEST_SHUTDOWN, /* the guest powered itself off: not a failure */
        PO_EXIT_CRASH,          /* QEMU died without a shutdown */
        PO_EXIT_STOPPED,        /* the operator stopped it */
        PO_EXIT_STALE,          /* stopped for a newer generation elsewhere */
        PO_EXIT_HANDED_OVER,    /* primary: a planned switchover ended it here after a final
                                   checkpoint; the standby activates (never restarted here) */
        PO_EXIT_PEER_HANDOVER,  /* backup: our primary handed the VM over to this replica */
};
#define PO_EXIT_LAST PO_EXIT_PEER_HANDOVER

enum po_fence {
        PO_FENCE_NONE,    /* not fenced since it was last a member */
        PO_FENCE_RUNNING, /* an agent is at work */
        PO_FENCE_DONE,    /* verified off at fence_ms */
        PO_FENCE_FAILED,  /* every level failed at fence_ms */
};

struct po_host {
        char name[CFG_NAME_MAX];
        uint32_t nodeid;
        bool member;           /* in the corosync node membership now */
        uint64_t left_ms;      /* when it was last seen to leave (valid if !member) */
        bool fence_configured; /* a [fence NAME] section exists */
        enum po_fence fence;
        uint64_t fence_ms;
};

struct po_vm {
        char name[CFG_NAME_MAX];
        enum po_vm_state state;
        uint64_t generation;
        char peer[CFG_NAME_MAX];     /* the other host: standby of a primary, primary of a backup */
        enum po_exit last_exit;
        bool failover_auto;          /* [failover] failover = auto */
        uint32_t local_restarts;     /* policy: restarts here before relinquishing */
        uint32_t restarts_done;      /* agent's count since the VM last ran protected */
        bool busy;                   /* an action for this VM is in flight: decide nothing */
        bool relinquished;           /* primary: we announced our crashed copy given up */
        bool peer_relinquished;      /* backup: the primary gave this generation up (CPG) */
        bool discard_requested;      /* backup: the primary asked us to drop the replica (CPG) */
        bool discard_asked;          /* primary: we asked the standby to drop its replica */
        bool peer_discarded;         /* primary: the standby confirmed it dropped it */
        uint64_t newer_generation;   /* highest generation another host runs it with; 0 none */
        bool newer_copy_elsewhere;   /* backup: a member announced a newer copy (S6) */
        bool peer_holds_replica;     /* primary: the standby's last announcement showed a
                                        replica of it (or we never heard: assume it does) */
        bool stopping;               /* a self-fence of it is under way: do not ask twice */
};

/* What the decisions may take as the quorum (S3), from corosync's last
 * report (known, quorate), whether havmsd is connected to corosync, and
 * whether that report has counted every host that left since
 * (membership_quorum_settled; pass true when not connected). A quorate
 * flag not yet recounted after a host left counts as unknown: nothing is
 * decided until it is. A loss counts at once: stopping what runs here is
 * what S3 asks anyway. */
struct po_quorum {
        bool known, quorate, settling;
};
struct po_quorum po_quorum_view(bool known, bool quorate, bool corosync_up, bool settled);

struct po_input {
        uint64_t now_ms;
        char self[CFG_NAME_MAX];
        uint32_t self_nodeid;
        bool quorum_known;     /* a first quorum report arrived: before it, decide nothing */
        bool quorum_settling;  /* known, but not yet counted after a host left: as unknown */
        bool quorate;          /* false also when corosync is down */
        uint64_t quorate_since_ms; /* when this host last became quorate */
        bool witness;          /* [cluster] quorum = witness */
        uint32_t witness_wait_ms;
        uint32_t fence_delay_ms;
        uint32_t fence_retry_ms;
        struct po_host hosts[PO_MAX_HOSTS]; /* every other host we know of */
        size_t n_hosts;
        struct po_vm vms[PO_MAX_VMS];
        size_t n_vms;
};

enum po_act {
        PO_ACT_FENCE,        /* host: run its fence levels (off, verified) */
        PO_ACT_ACTIVATE,     /* vm: take over with `generation`, cutting the old primary off */
        PO_ACT_RELEASE,      /* vm: the standby cannot activate: release output, run degraded */
        PO_ACT_ASK_DISCARD,  /* vm: ask the standby over CPG to drop its replica */
        PO_ACT_DISCARD,      /* vm: drop our replica (its primary, alive, asked) */
        PO_ACT_RELINQUISH,   /* vm: announce our crashed copy given up; the standby takes over */
        PO_ACT_RESTART,      /* vm: start it again here (local_restarts) */
        PO_ACT_STOP,         /* vm: kill it here now (no quorum, or a newer generation): no
                                goodbye, held output dropped, the standby's replica kept */
};

struct po_action {
        enum po_act type;
        char vm[CFG_NAME_MAX];
        char host[CFG_NAME_MAX];
        uint64_t generation;
        const char *why; /* a static string, for the log */
};

struct po_output {
        struct po_action actions[PO_MAX_ACTIONS];
        size_t n_actions;
        /* Per VM (index as in the input): what it waits for, "" if nothing.
         * The agent logs a note when it changes and shows it in status. */
        char note[PO_MAX_VMS][PO_NOTE_MAX];
        uint64_t wake_ms; /* decide again at this time even without an event; 0 = no timer */
};

/* Decide. Never fails: a situation it cannot act on becomes a note. */
void po_decide(const struct po_input *in, struct po_output *out);

const char *po_act_name(enum po_act a);
const char *po_vm_state_name(enum po_vm_state s);
const char *po_exit_name(enum po_exit e); /* checkpointd's text; "" for NONE */
/* Map checkpointd's state and last_exit strings; unknown text -> UNKNOWN / NONE. */
enum po_vm_state po_vm_state_parse(const char *checkpointd_state);
enum po_exit po_exit_parse(const char *last_exit);
