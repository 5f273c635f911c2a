/* config: the host configuration (havms.conf) and the VM definitions
 * (one file per VM, <vm_dir>/<name>.conf). Each option is declared once, in
 * the tables in config.c: section, name, type, bounds, default, help. A bad
 * file is refused as a whole with "file:line: reason"; nothing is half
 * applied. `havmsctl check-config` runs exactly these checks.
 */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define CFG_NAME_MAX 33   /* 32 chars + NUL: host and VM names */
#define CFG_PATH_MAX 256
#define CFG_TEXT_MAX 1024
#define CFG_MAX_NICS 4
#define CFG_MAX_DISKS 4
#define CFG_MAX_PEERS 8
#define CFG_MAX_FENCE_LEVELS 4
#define CFG_MAX_HOSTS 8   /* [failback] hosts: the VM's candidate hosts */
#define CFG_MAX_SPARES 4
#define CFG_U32_AUTO UINT32_MAX /* an OPT_U32 whose default is computed ("auto"), until resolved */

struct cfg_nic {
        char mac[18];           /* "52:54:00:xx:xx:xx" */
        char bridge[16];        /* host bridge the tap joins; "" = none */
        char model[24];         /* QEMU NIC model, default virtio-net-pci */
};

enum cfg_on_peer_loss {
        CFG_PEER_LOSS_CONTINUE, /* keep running unprotected, retry the peer */
        CFG_PEER_LOSS_PAUSE,    /* pause the VM until the peer is back */
};

struct vm_config {
        char name[CFG_NAME_MAX];
        uint32_t memory_mib;
        uint32_t vcpus;
        char machine[32];
        char builtin_devices[8]; /* "minimal" or "all" */
        char cpu[32];
        char accel[8];          /* "auto", "kvm" or "tcg" */
        char kernel[CFG_PATH_MAX];
        char initrd[CFG_PATH_MAX];
        char cmdline[CFG_TEXT_MAX];
        /* disks (raw file or block device), served by blockrepl; the first
         * one is the boot disk when there is no kernel */
        char disks[CFG_MAX_DISKS][CFG_PATH_MAX];
        unsigned n_disks;
        char qemu_args[CFG_TEXT_MAX];
        char preferred_host[CFG_NAME_MAX];
        struct cfg_nic nics[CFG_MAX_NICS];
        unsigned n_nics;
        /* [protection] */
        char peer[CFG_NAME_MAX];
        uint32_t epoch_ms;
        char tracker[16];       /* "auto", "uffd-wp", "soft-dirty" */
        uint32_t precopy_max_rounds;
        uint32_t precopy_done_pages;
        uint32_t ack_timeout_ms;
        uint32_t reconnect_ms;
        bool xor_delta;         /* deprecated: false forces delta_cache_mib = 0 */
        uint32_t delta_cache_mib; /* primary: XOR-delta base cache (lib/deltacache.h);
                                   0 = none; "auto" (absent) = memory_mib / 5 */
        char netbuf[8];         /* "relay" or "plug": output-commit backend */
        uint32_t netbuf_max_mib;
        char on_buffer_full[8]; /* "pause" or "release" */
        uint32_t min_epoch_ms;  /* adaptive epochs: earliest early checkpoint, 0 = off */
        uint32_t disk_log_mib;  /* primary: a disk epoch log this big forces a checkpoint */
        uint32_t disk_buffer_mib; /* standby: staged disk writes in memory, then journal */
        /* [failover] (havmsd, docs/failover.md) */
        char failover[8];       /* "auto": havmsd takes over by itself; "manual": it only reports */
        uint32_t local_restarts;/* restarts on the same host after a QEMU crash before the
                                   standby takes over (0 = take over at once) */
        /* [failback] (havmsd's failback controller, docs/failback.md) */
        char reprotect[8];      /* "auto": protect towards a returning host by itself; "manual" */
        char failback[8];       /* "auto", "manual" (status says it is pending) or "off" */
        uint32_t failback_delay_s; /* preferred host protected this long -> switch back */
        char hosts[CFG_MAX_HOSTS][CFG_NAME_MAX]; /* ordered candidates; n_hosts == 0: the
                                   default list (vm_config_hosts) */
        unsigned n_hosts;
        char standby_policy[12];/* "ordered" or "fewest-vms" */
        uint32_t spare_wait_s;  /* without a standby this long -> wake a spare; 0 = never */
        char source[CFG_PATH_MAX]; /* file it came from */
};

struct cfg_peer {
        char name[CFG_NAME_MAX];
        char address[128];      /* "host:port" of the peer's replication listener */
};

/* One way to fence a host: a fence-agents style program (stdin key=value
 * lines) or a script agent ("script:/path"). */
struct cfg_fence_level {
        char agent[CFG_PATH_MAX];  /* "fence_ipmilan", "/usr/sbin/fence_x" or "script:/path" */
        char args[CFG_TEXT_MAX];   /* "key=value key=value": passed on the agent's stdin */
};

/* [fence HOST]: how to fence HOST, levels tried in order until one works. */
struct cfg_fence {
        char host[CFG_NAME_MAX];
        struct cfg_fence_level levels[CFG_MAX_FENCE_LEVELS];
        unsigned n_levels;
        uint32_t timeout_ms;       /* one agent call; a timeout is a failure */
};

/* [cluster]: havmsd's settings (docs/failover.md). */
struct cfg_cluster {
        char control_socket[CFG_PATH_MAX]; /* havmsd's own socket (havmsctl status/events) */
        char checkpointd[CFG_PATH_MAX];    /* the checkpointd binary havmsd supervises */
        char quorum[8];                    /* "fence" (two_node + fencing) or "witness" */
        uint32_t witness_wait_ms;          /* witness: how long a lost peer may still think
                                              itself quorate, plus its self-fence time */
        uint32_t fence_delay_ms;           /* head start of the side that takes over VMs */
        uint32_t fence_retry_ms;           /* after all levels failed, retry this often */
        uint32_t fence_monitor_s;          /* periodic agent check (monitor); 0 = off */
        uint32_t self_fence_ms;            /* without quorum, VMs stop within this */
        char hooks_dir[CFG_PATH_MAX];      /* hook scripts, see hooks/README.md */
        uint32_t hook_timeout_ms;
};

/* [spare NAME]: a powered-off host woken on demand (docs/failback.md). NAME
 * is also a [peer NAME]. */
struct cfg_spare {
        char name[CFG_NAME_MAX];
        char mac[18];           /* "xx:xx:xx:xx:xx:xx": the NIC the magic packet wakes */
        char interface[16];     /* where the magic packet leaves this host */
        char password[18];      /* SecureOn as wol_parse_password() reads it; "" = none */
        char broadcast[64];     /* UDP destination of the magic packet */
        uint32_t port;          /* UDP port (9 = discard) */
        char wake[8];           /* "auto" (IPMI on through [fence NAME] first, then WOL), "wol", "ipmi" */
        char on_return[12];     /* "keep" or "hand-back" when the original host returns */
        char off_command[CFG_PATH_MAX]; /* hand-back without a [fence NAME]: powers the spare off */
        uint32_t boot_timeout_s;/* a wake not followed by membership within this has failed */
};

struct host_config {
        char name[CFG_NAME_MAX];
        char listen[128];
        char control_socket[CFG_PATH_MAX];
        char state_dir[CFG_PATH_MAX];
        char ram_dir[CFG_PATH_MAX];
        char vm_dir[CFG_PATH_MAX];
        char log_dir[CFG_PATH_MAX];
        char qemu[CFG_PATH_MAX];
        char uffd_preload[CFG_PATH_MAX];
        bool managed;           /* havmsd decides: a lost standby isolates, never releases */
        struct cfg_peer peers[CFG_MAX_PEERS];
        unsigned n_peers;
        struct cfg_cluster cluster;
        struct cfg_fence fences[CFG_MAX_PEERS];
        unsigned n_fences;
        struct cfg_spare spares[CFG_MAX_SPARES];
        unsigned n_spares;
        char source[CFG_PATH_MAX];
};

/* Load and validate. On error returns -EINVAL (or -errno for I/O) and, if
 * err is given, writes "file:line: reason" into it. */
int host_config_load(const char *path, struct host_config *ret, char *err, size_t errlen);
int vm_config_load(const char *path, struct vm_config *ret, char *err, size_t errlen);
/* Load <vm_dir>/<name>.conf; -ENOENT with a clear message if missing. */
int vm_config_find(const struct host_config *h, const char *name,
                   struct vm_config *ret, char *err, size_t errlen);

const struct cfg_peer *host_config_peer(const struct host_config *h, const char *name);
/* [fence NAME] of host NAME, or NULL when none is configured. */
const struct cfg_fence *host_config_fence(const struct host_config *h, const char *name);

/* Digest of the settings that must match on both hosts of a pair (memory,
 * CPUs, machine, device model; and where the VM belongs: preferred_host,
 * failback, failback_delay_s), so a backup refuses a replica it could not
 * run, or whose owner would move it back and forth. */
uint64_t vm_config_digest(const struct vm_config *c);

/* [spare NAME] of host NAME, or NULL when NAME is no spare. */
const struct cfg_spare *host_config_spare(const struct host_config *h, const char *name);

/* The VM's candidate hosts in order: [failback] hosts when set, else
 * preferred_host, then [protection] peer, then self (each once, empty ones
 * skipped). Returns how many were written (at most max). */
unsigned vm_config_hosts(const struct vm_config *c, const char *self,
                         char (*ret)[CFG_NAME_MAX], unsigned max);

bool cfg_name_valid(const char *s);

/* Print every option with type, default, bounds and help (for docs). */
void config_print_reference(FILE *f);
