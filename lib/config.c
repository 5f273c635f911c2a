#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "havms-config.h"
#include "util.h"
#include "wol.h"

enum opt_type {
        OPT_STR,   /* char[size] */
        OPT_U32,   /* uint32_t within [min, max] */
        OPT_BOOL,  /* bool: yes/no/true/false/on/off/1/0 */
        OPT_ENUM,  /* char[size], one of choices ("a|b|c") */
        OPT_NAME,  /* char[size], a host or VM name */
        OPT_ADDR,  /* char[size], "host:port" */
};

struct opt {
        const char *section;
        const char *name;
        enum opt_type type;
        size_t offset;
        size_t size;
        long long min, max;
        const char *def;     /* default as text, NULL = required */
        const char *choices; /* OPT_ENUM */
        const char *help;
};

#define VO(f) offsetof(struct vm_config, f), sizeof(((struct vm_config *)0)->f)
#define HO(f) offsetof(struct host_config, f), sizeof(((struct host_config *)0)->f)
#define CO(f) HO(cluster.f)

static const struct opt vm_opts[] = {
        { "vm", "name", OPT_NAME, VO(name), 0, 0, NULL, NULL,
          "VM name: 1-32 of [A-Za-z0-9_.-]; must match the file name <name>.conf" },
        { "vm", "memory_mib", OPT_U32, VO(memory_mib), 16, 1048576, NULL, NULL,
          "guest RAM in MiB" },
        { "vm", "vcpus", OPT_U32, VO(vcpus), 1, 256, "1", NULL, "virtual CPUs" },
        { "vm", "machine", OPT_STR, VO(machine), 0, 0, "q35", NULL, "QEMU machine type" },
        { "vm", "builtin_devices", OPT_ENUM, VO(builtin_devices), 0, 0, "all", "minimal|all",
          "minimal: turn off the machine's built-in devices havms never attaches anything to "
          "(q35: SATA controller, SMBus, VMware port; pc: SMBus, VMware port; an option "
          "given in machine wins): QEMU saves every device in every checkpoint pause "
          "(recommended for protected VMs; a change of the guest's hardware, so it is not "
          "the default); all: keep them" },
        { "vm", "cpu", OPT_STR, VO(cpu), 0, 0, "max", NULL,
          "QEMU CPU model; must be identical on both hosts" },
        { "vm", "accel", OPT_ENUM, VO(accel), 0, 0, "auto", "auto|kvm|tcg",
          "accelerator; auto uses KVM only when a probe guest really runs on it "
          "(probed at checkpointd start; HAVMS_ACCEL=kvm|tcg decides auto instead)" },
        { "vm", "kernel", OPT_STR, VO(kernel), 0, 0, "", NULL,
          "kernel image for direct boot (kernel or a disk is required)" },
        { "vm", "initrd", OPT_STR, VO(initrd), 0, 0, "", NULL, "initramfs for direct boot" },
        { "vm", "cmdline", OPT_STR, VO(cmdline), 0, 0, "", NULL, "kernel command line" },
        { "vm", "qemu_args", OPT_STR, VO(qemu_args), 0, 0, "", NULL,
          "extra QEMU arguments, split on spaces" },
        { "vm", "preferred_host", OPT_NAME, VO(preferred_host), 0, 0, "", NULL,
          "host the VM should run on when both are healthy" },
        { "protection", "peer", OPT_NAME, VO(peer), 0, 0, "", NULL,
          "standby host (a [peer NAME] of havms.conf); protect --peer overrides" },
        { "protection", "epoch_ms", OPT_U32, VO(epoch_ms), 5, 10000, "40", NULL,
          "checkpoint interval: the replica is at most this far behind" },
        { "protection", "tracker", OPT_ENUM, VO(tracker), 0, 0, "auto",
          "auto|uffd-wp|soft-dirty", "dirty page tracker backend" },
        { "protection", "precopy_max_rounds", OPT_U32, VO(precopy_max_rounds), 1, 1000, "30",
          NULL, "initial sync: most pre-copy passes before the first checkpoint" },
        { "protection", "precopy_done_pages", OPT_U32, VO(precopy_done_pages), 1, 1u << 30,
          "2048", NULL, "initial sync ends when a pass finds fewer dirty pages than this" },
        { "protection", "ack_timeout_ms", OPT_U32, VO(ack_timeout_ms), 100, 600000, "3000",
          NULL, "a backup that does not ACK within this is declared lost" },
        { "protection", "reconnect_ms", OPT_U32, VO(reconnect_ms), 100, 600000, "1000",
          NULL, "how often an unprotected primary retries its peer" },
        { "protection", "delta_cache_mib", OPT_U32, VO(delta_cache_mib), 0, 1048576, "auto", NULL,
          "primary: memory for the last sent content of recently sent pages, the base of XOR "
          "deltas (auto = a fifth of memory_mib; 0 = no XOR deltas; more than memory_mib "
          "is cut to memory_mib)" },
        { "protection", "xor_delta", OPT_BOOL, VO(xor_delta), 0, 0, "yes", NULL,
          "deprecated: 'no' is delta_cache_mib = 0" },
        { "protection", "netbuf", OPT_ENUM, VO(netbuf), 0, 0, "relay", "relay|plug",
          "output commit: user-space frame relay (any kernel) or the sch_plug qdisc" },
        { "protection", "netbuf_max_mib", OPT_U32, VO(netbuf_max_mib), 1, 4096, "16", NULL,
          "most guest output held per NIC while epochs await their ACK" },
        { "protection", "on_buffer_full", OPT_ENUM, VO(on_buffer_full), 0, 0, "pause",
          "pause|release",
          "held output reached netbuf_max_mib: pause the guest's output until ACKs free room "
          "(safe), or drop protection and release it (fast, unprotected)" },
        { "protection", "min_epoch_ms", OPT_U32, VO(min_epoch_ms), 0, 10000, "5", NULL,
          "adaptive epochs: with output waiting, checkpoint this soon after the last one "
          "(0 = always wait epoch_ms)" },
        { "protection", "disk_log_mib", OPT_U32, VO(disk_log_mib), 1, 4096, "64", NULL,
          "primary: disk writes held for one epoch; a quarter of it starts a checkpoint early, "
          "all of it makes writers wait" },
        { "protection", "disk_buffer_mib", OPT_U32, VO(disk_buffer_mib), 1, 65536, "64", NULL,
          "standby: staged disk writes kept in memory per epoch before spilling to a journal" },
        { "failover", "failover", OPT_ENUM, VO(failover), 0, 0, "auto", "auto|manual",
          "auto: havmsd fences the dead primary and activates the standby by itself; "
          "manual: it only reports, the operator runs 'havmsctl activate'" },
        { "failover", "local_restarts", OPT_U32, VO(local_restarts), 0, 10, "0", NULL,
          "after QEMU crashes on its host, restart it there this many times before the "
          "standby takes over (0 = take over at once)" },
        { "failback", "reprotect", OPT_ENUM, VO(reprotect), 0, 0, "auto", "auto|manual",
          "auto: when a host that may back the VM up is a member and the VM runs here "
          "unprotected, protect it towards that host by itself; manual: 'havmsctl protect'" },
        { "failback", "failback", OPT_ENUM, VO(failback), 0, 0, "manual", "auto|manual|off",
          "auto: once protected with preferred_host as standby for failback_delay_s, switch "
          "over there; manual: status says a switchover is pending; off: never mention it" },
        { "failback", "failback_delay_s", OPT_U32, VO(failback_delay_s), 0, 86400, "60", NULL,
          "failback = auto: how long the preferred host must be the protected standby first" },
        { "failback", "standby_policy", OPT_ENUM, VO(standby_policy), 0, 0, "ordered",
          "ordered|fewest-vms",
          "which member becomes the standby: the first of 'hosts' that is not the owner, or "
          "the member with the fewest VMs running or backed up" },
        { "failback", "spare_wait_s", OPT_U32, VO(spare_wait_s), 0, 86400, "30", NULL,
          "without a standby this long, and no member can take the role: the owner wakes a "
          "spare (0 = never wake one)" },
};

#define SO(f) offsetof(struct cfg_spare, f), sizeof(((struct cfg_spare *)0)->f)

/* [spare NAME]: options of one spare; the target is the struct cfg_spare. */
static const struct opt spare_opts[] = {
        { "spare", "mac", OPT_STR, SO(mac), 0, 0, NULL, NULL,
          "MAC address of the spare's NIC that wakes (xx:xx:xx:xx:xx:xx, unicast)" },
        { "spare", "interface", OPT_STR, SO(interface), 0, 0, NULL, NULL,
          "this host's interface the magic packet leaves through" },
        { "spare", "password", OPT_STR, SO(password), 0, 0, "", NULL,
          "SecureOn password: a.b.c.d or 4 hex bytes, or 6 hex bytes (xx:xx:xx:xx:xx:xx); empty = none" },
        { "spare", "broadcast", OPT_STR, SO(broadcast), 0, 0, "255.255.255.255", NULL,
          "UDP destination address of the magic packet" },
        { "spare", "port", OPT_U32, SO(port), 1, 65535, "9", NULL, "UDP port of the magic packet" },
        { "spare", "wake", OPT_ENUM, SO(wake), 0, 0, "auto", "auto|wol|ipmi",
          "auto: if [fence NAME] exists, its level1 agent with action=on first, then WOL; "
          "wol: magic packets only; ipmi: the fence agent only (needs [fence NAME])" },
        { "spare", "on_return", OPT_ENUM, SO(on_return), 0, 0, "keep", "keep|hand-back",
          "when the original host returns: the spare keeps the standby role, or hands it back "
          "and is powered off ([fence NAME] action=off, else off_command)" },
        { "spare", "off_command", OPT_STR, SO(off_command), 0, 0, "", NULL,
          "hand-back without [fence NAME]: this command (absolute path, arguments split on "
          "blanks) powers the spare off" },
        { "spare", "boot_timeout_s", OPT_U32, SO(boot_timeout_s), 10, 3600, "300", NULL,
          "a spare that is not a member this long after its first wake counts as failed "
          "(reported, woken again later)" },
};
#define N_SPARE_OPTS (sizeof(spare_opts) / sizeof(spare_opts[0]))

static const struct opt host_opts[] = {
        { "host", "name", OPT_NAME, HO(name), 0, 0, NULL, NULL, "this host's name" },
        { "host", "listen", OPT_ADDR, HO(listen), 0, 0, "0.0.0.0:7780", NULL,
          "replication listener (address:port) for VMs this host backs up" },
        { "host", "control_socket", OPT_STR, HO(control_socket), 0, 0,
          "/run/havms/checkpointd.sock", NULL, "havmsctl's unix socket" },
        { "host", "state_dir", OPT_STR, HO(state_dir), 0, 0, "/var/lib/havms", NULL,
          "persistent state (committed device state, replica markers)" },
        { "host", "ram_dir", OPT_STR, HO(ram_dir), 0, 0, "/dev/shm/havms", NULL,
          "guest RAM and replica files (tmpfs)" },
        { "host", "vm_dir", OPT_STR, HO(vm_dir), 0, 0, HAVMS_SYSCONFDIR "/vms", NULL,
          "directory of VM definitions <name>.conf" },
        { "host", "log_dir", OPT_STR, HO(log_dir), 0, 0, "/var/log/havms", NULL,
          "QEMU logs and guest consoles" },
        { "host", "qemu", OPT_STR, HO(qemu), 0, 0, "qemu-system-x86_64", NULL,
          "QEMU binary" },
        { "host", "uffd_preload", OPT_STR, HO(uffd_preload), 0, 0, HAVMS_PRELOAD_DEFAULT, NULL,
          "LD_PRELOAD library that creates the dirty-tracking userfaultfd inside QEMU" },
        { "host", "managed", OPT_BOOL, HO(managed), 0, 0, "no", NULL,
          "havmsd decides takeovers: a primary that loses its standby holds its output "
          "(isolated) until the standby is back or `release` says it cannot take over "
          "(checkpointd --managed sets it too)" },
        { "cluster", "control_socket", OPT_STR, CO(control_socket), 0, 0,
          "/run/havms/havmsd.sock", NULL, "havmsd's unix socket (havmsctl cluster commands)" },
        { "cluster", "checkpointd", OPT_STR, CO(checkpointd), 0, 0, HAVMS_CHECKPOINTD_DEFAULT,
          NULL, "the checkpointd binary havmsd starts and supervises" },
        { "cluster", "quorum", OPT_ENUM, CO(quorum), 0, 0, "fence", "fence|witness",
          "fence: two_node, the survivor fences the other before taking over; witness: a "
          "qdevice vote decides, and the side without it stops its VMs" },
        { "cluster", "witness_wait_ms", OPT_U32, CO(witness_wait_ms), 0, 600000, "12000", NULL,
          "witness: wait this long after losing the peer before taking over (the lost side "
          "may think itself quorate until its qdevice timeout, then self-fences)" },
        { "cluster", "fence_delay_ms", OPT_U32, CO(fence_delay_ms), 0, 600000, "3000", NULL,
          "in a split, the host that runs no primary waits this long before fencing, so the "
          "primary's host wins the fence race" },
        { "cluster", "fence_retry_ms", OPT_U32, CO(fence_retry_ms), 100, 3600000, "5000", NULL,
          "after every fence level failed, try again this often (never take over unfenced)" },
        { "cluster", "fence_monitor_s", OPT_U32, CO(fence_monitor_s), 0, 86400, "600", NULL,
          "check every fence agent can reach its device this often (action=monitor); 0 = off" },
        { "cluster", "self_fence_ms", OPT_U32, CO(self_fence_ms), 100, 60000, "2000", NULL,
          "a host without quorum stops its VMs within this" },
        { "cluster", "hooks_dir", OPT_STR, CO(hooks_dir), 0, 0, HAVMS_SYSCONFDIR "/hooks", NULL,
          "hook scripts: <hooks_dir>/<event> and <hooks_dir>/<event>.d/* (hooks/README.md)" },
        { "cluster", "hook_timeout_ms", OPT_U32, CO(hook_timeout_ms), 100, 600000, "10000", NULL,
          "a hook still running after this is killed (a pre- hook then counts as 'defer')" },
};

struct load_ctx {
        const struct opt *opts;
        size_t n_opts;
        void *target;
        bool seen[64];
        char reason[256];
        struct vm_config *vm;     /* for [vm] nic lines */
        struct host_config *host; /* for [peer NAME] sections */
        bool spare_seen[CFG_MAX_SPARES][16];
        bool hosts_seen;          /* [failback] hosts */
};

bool cfg_name_valid(const char *s)
{
        size_t n = strlen(s);
        if (n == 0 || n > 32)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!isalnum((unsigned char)s[i]) && !strchr("_.-", s[i]))
                        return false;
        return s[0] != '.' && s[0] != '-';
}

static bool addr_valid(const char *s)
{
        const char *c = strrchr(s, ':');
        if (!c || c == s)
                return false;
        char *end;
        long port = strtol(c + 1, &end, 10);
        return *end == 0 && port > 0 && port < 65536;
}

static int set_value(struct load_ctx *x, const struct opt *o, const char *v)
{
        uint8_t *dst = (uint8_t *)x->target + o->offset;
        switch (o->type) {
        case OPT_STR:
        case OPT_NAME:
        case OPT_ADDR:
        case OPT_ENUM:
                /* (an enum's choices all fit: a long value gets the list of choices) */
                if (strlen(v) >= o->size && o->type != OPT_ENUM) {
                        snprintf(x->reason, sizeof(x->reason), "%s: value longer than %zu characters",
                                 o->name, o->size - 1);
                        return -EINVAL;
                }
                if (o->type == OPT_NAME && *v && !cfg_name_valid(v)) {
                        snprintf(x->reason, sizeof(x->reason),
                                 "%s: '%s' is not a valid name (1-32 of A-Z a-z 0-9 _ . -)", o->name, v);
                        return -EINVAL;
                }
                if (o->type == OPT_ADDR && !addr_valid(v)) {
                        snprintf(x->reason, sizeof(x->reason), "%s: '%s' is not address:port", o->name, v);
                        return -EINVAL;
                }
                if (o->type == OPT_ENUM) {
                        size_t l = strlen(v);
                        const char *c = o->choices;
                        bool ok = false;
                        while (c && *c && !ok) {
                                size_t cl = strcspn(c, "|");
                                ok = cl == l && l > 0 && !strncmp(c, v, l);
                                c += cl + (c[cl] == '|');
                        }
                        if (!ok) {
                                snprintf(x->reason, sizeof(x->reason), "%s: '%s' is not one of %s",
                                         o->name, v, o->choices);
                                return -EINVAL;
                        }
                }
                strcpy((char *)dst, v);
                return 0;
        case OPT_U32: {
                /* a computed default (resolved after the whole file is read) */
                if (!strcmp(v, "auto") && o->def && !strcmp(o->def, "auto")) {
                        *(uint32_t *)dst = CFG_U32_AUTO;
                        return 0;
                }
                char *end;
                errno = 0;
                long long n = strtoll(v, &end, 10);
                if (errno || end == v || *end) {
                        snprintf(x->reason, sizeof(x->reason), "%s: '%s' is not a whole number",
                                 o->name, v);
                        return -EINVAL;
                }
                if (n < o->min || n > o->max) {
                        snprintf(x->reason, sizeof(x->reason), "%s: %lld is out of range [%lld, %lld]",
                                 o->name, n, o->min, o->max);
                        return -EINVAL;
                }
                *(uint32_t *)dst = (uint32_t)n;
                return 0;
        }
        case OPT_BOOL:
                if (!strcmp(v, "yes") || !strcmp(v, "true") || !strcmp(v, "on") || !strcmp(v, "1"))
                        *(bool *)dst = true;
                else if (!strcmp(v, "no") || !strcmp(v, "false") || !strcmp(v, "off") || !strcmp(v, "0"))
                        *(bool *)dst = false;
                else {
                        snprintf(x->reason, sizeof(x->reason), "%s: '%s' is not yes or no", o->name, v);
                        return -EINVAL;
                }
                return 0;
        }
        return -EINVAL;
}

static bool mac_valid(const char *m)
{
        if (strlen(m) != 17)
                return false;
        for (int i = 0; i < 17; i++) {
                if (i % 3 == 2 ? m[i] != ':' : !isxdigit((unsigned char)m[i]))
                        return false;
        }
        /* unicast: the low bit of the first octet must be clear */
        return (strtol(m, NULL, 16) & 1) == 0;
}

static int parse_disk(struct load_ctx *x, const char *v)
{
        struct vm_config *c = x->vm;
        if (c->n_disks >= CFG_MAX_DISKS) {
                snprintf(x->reason, sizeof(x->reason), "disk: at most %d disks", CFG_MAX_DISKS);
                return -EINVAL;
        }
        if (v[0] != '/' || strlen(v) >= sizeof(c->disks[0])) {
                snprintf(x->reason, sizeof(x->reason),
                         "disk: expected an absolute path to a raw image or block device, got '%s'", v);
                return -EINVAL;
        }
        strcpy(c->disks[c->n_disks++], v);
        return 0;
}

/* nic = mac=52:54:00:12:34:56[,bridge=br0][,model=virtio-net-pci] */
static int parse_nic(struct load_ctx *x, const char *v)
{
        struct vm_config *c = x->vm;
        if (c->n_nics >= CFG_MAX_NICS) {
                snprintf(x->reason, sizeof(x->reason), "nic: at most %d NICs", CFG_MAX_NICS);
                return -EINVAL;
        }
        struct cfg_nic n = { .model = "virtio-net-pci" };
        char buf[256];
        if (strlen(v) >= sizeof(buf))
                goto bad;
        strcpy(buf, v);
        for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                char *eq = strchr(tok, '=');
                if (!eq)
                        goto bad;
                *eq++ = 0;
                if (!strcmp(tok, "mac") && mac_valid(eq))
                        strcpy(n.mac, eq);
                else if (!strcmp(tok, "bridge") && strlen(eq) < sizeof(n.bridge) && *eq)
                        strcpy(n.bridge, eq);
                else if (!strcmp(tok, "model") && strlen(eq) < sizeof(n.model) && *eq)
                        strcpy(n.model, eq);
                else
                        goto bad;
        }
        if (!n.mac[0])
                goto bad;
        c->nics[c->n_nics++] = n;
        return 0;
bad:
        snprintf(x->reason, sizeof(x->reason),
                 "nic: expected mac=52:54:00:xx:xx:xx[,bridge=NAME][,model=MODEL] (unicast MAC), got '%s'", v);
        return -EINVAL;
}

static int parse_peer(struct load_ctx *x, const char *section, const char *name, const char *v)
{
        struct host_config *h = x->host;
        const char *pname = section + 5;
        if (!cfg_name_valid(pname)) {
                snprintf(x->reason, sizeof(x->reason), "[%s]: '%s' is not a valid host name", section, pname);
                return -EINVAL;
        }
        if (strcmp(name, "address")) {
                snprintf(x->reason, sizeof(x->reason), "[%s]: unknown option '%s' (only 'address')",
                         section, name);
                return -EINVAL;
        }
        if (!addr_valid(v) || strlen(v) >= sizeof(h->peers[0].address)) {
                snprintf(x->reason, sizeof(x->reason), "[%s] address: '%s' is not address:port", section, v);
                return -EINVAL;
        }
        struct cfg_peer *p = NULL;
        for (unsigned i = 0; i < h->n_peers; i++)
                if (!strcmp(h->peers[i].name, pname))
                        p = &h->peers[i];
        if (!p) {
                if (h->n_peers >= CFG_MAX_PEERS) {
                        snprintf(x->reason, sizeof(x->reason), "at most %d peers", CFG_MAX_PEERS);
                        return -EINVAL;
                }
                p = &h->peers[h->n_peers++];
                strcpy(p->name, pname);
        }
        strcpy(p->address, v);
        return 0;
}

static struct cfg_fence *fence_entry(struct load_ctx *x, const char *section)
{
        struct host_config *h = x->host;
        const char *host = section + 6;
        if (!cfg_name_valid(host)) {
                snprintf(x->reason, sizeof(x->reason), "[%s]: '%s' is not a valid host name",
                         section, host);
                return NULL;
        }
        for (unsigned i = 0; i < h->n_fences; i++)
                if (!strcmp(h->fences[i].host, host))
                        return &h->fences[i];
        if (h->n_fences >= CFG_MAX_PEERS) {
                snprintf(x->reason, sizeof(x->reason), "at most %d [fence] sections", CFG_MAX_PEERS);
                return NULL;
        }
        struct cfg_fence *f = &h->fences[h->n_fences++];
        memset(f, 0, sizeof(*f));
        strcpy(f->host, host);
        f->timeout_ms = 20000;
        return f;
}

/* levelN = AGENT key=value key=value ...  Values cannot hold blanks; the
 * agent gets one "key=value" line per pair on its stdin, then the action
 * (which is why the configuration may not set action= itself). */
static int parse_fence_level(struct load_ctx *x, const char *section, struct cfg_fence *f,
                             unsigned n, const char *v)
{
        struct cfg_fence_level lv = { .agent = "" };
        char buf[CFG_TEXT_MAX + CFG_PATH_MAX];
        if (strlen(v) >= sizeof(buf)) {
                snprintf(x->reason, sizeof(x->reason), "[%s] level%u: too long", section, n);
                return -EINVAL;
        }
        strcpy(buf, v);
        size_t used = 0;
        for (char *save = NULL, *tok = strtok_r(buf, " \t", &save); tok;
             tok = strtok_r(NULL, " \t", &save)) {
                if (!lv.agent[0]) {
                        bool script = !strncmp(tok, "script:", 7);
                        const char *path = script ? tok + 7 : tok;
                        if ((script && path[0] != '/') || (!script && strchr(tok, '/') && tok[0] != '/') ||
                            strchr(tok, '=') || !path[0] || strlen(tok) >= sizeof(lv.agent)) {
                                snprintf(x->reason, sizeof(x->reason),
                                         "[%s] level%u: '%s' is not an agent (a fence_* program name, "
                                         "an absolute path, or script:/absolute/path)", section, n, tok);
                                return -EINVAL;
                        }
                        strcpy(lv.agent, tok);
                        continue;
                }
                char *eq = strchr(tok, '=');
                if (!eq || eq == tok) {
                        snprintf(x->reason, sizeof(x->reason),
                                 "[%s] level%u: argument '%s' is not key=value", section, n, tok);
                        return -EINVAL;
                }
                if (eq - tok == 6 && !strncmp(tok, "action", 6)) {
                        snprintf(x->reason, sizeof(x->reason),
                                 "[%s] level%u: 'action' is set by havms, not here", section, n);
                        return -EINVAL;
                }
                size_t l = strlen(tok);
                if (used + l + 2 > sizeof(lv.args)) {
                        snprintf(x->reason, sizeof(x->reason), "[%s] level%u: arguments too long",
                                 section, n);
                        return -EINVAL;
                }
                if (used)
                        lv.args[used++] = ' ';
                memcpy(lv.args + used, tok, l + 1);
                used += l;
        }
        if (!lv.agent[0]) {
                snprintf(x->reason, sizeof(x->reason), "[%s] level%u: no agent given", section, n);
                return -EINVAL;
        }
        f->levels[n - 1] = lv;
        f->n_levels = n;
        return 0;
}

/* [fence HOST]: level1..level4, timeout_ms. Levels are written in order
 * (level2 after level1), so a gap is reported at the line that makes it.
 * HOST need not be a [peer]: a spare can be fenced too. */
static int parse_fence(struct load_ctx *x, const char *section, const char *name, const char *v)
{
        struct cfg_fence *f = fence_entry(x, section);
        if (!f)
                return -EINVAL;
        if (!name)
                return 0;
        if (!strcmp(name, "timeout_ms")) {
                static const struct opt o = { "fence", "timeout_ms", OPT_U32,
                                              offsetof(struct cfg_fence, timeout_ms), sizeof(uint32_t),
                                              100, 600000, "20000", NULL, NULL };
                void *saved = x->target;
                x->target = f;
                int r = set_value(x, &o, v);
                x->target = saved;
                return r;
        }
        unsigned n = 0;
        if (!strncmp(name, "level", 5) && name[5] >= '1' && name[5] <= '0' + CFG_MAX_FENCE_LEVELS &&
            !name[6])
                n = (unsigned)(name[5] - '0');
        if (!n) {
                snprintf(x->reason, sizeof(x->reason),
                         "[%s]: unknown option '%s' (level1..level%d, timeout_ms)", section, name,
                         CFG_MAX_FENCE_LEVELS);
                return -EINVAL;
        }
        if (n <= f->n_levels) {
                snprintf(x->reason, sizeof(x->reason), "[%s]: %s set twice", section, name);
                return -EINVAL;
        }
        if (n != f->n_levels + 1) {
                snprintf(x->reason, sizeof(x->reason), "[%s]: %s without level%u before it "
                         "(levels are tried in order and written in order)", section, name,
                         f->n_levels + 1);
                return -EINVAL;
        }
        return parse_fence_level(x, section, f, n, v);
}

/* [failback] hosts = a b c: names, blank separated, each once. */
static int parse_hosts(struct load_ctx *x, const char *v)
{
        struct vm_config *c = x->vm;
        char buf[CFG_TEXT_MAX];
        if (x->hosts_seen) {
                snprintf(x->reason, sizeof(x->reason), "hosts: set twice in [failback]");
                return -EINVAL;
        }
        x->hosts_seen = true;
        if (strlen(v) >= sizeof(buf)) {
                snprintf(x->reason, sizeof(x->reason), "hosts: too long");
                return -EINVAL;
        }
        strcpy(buf, v);
        c->n_hosts = 0;
        for (char *save = NULL, *tok = strtok_r(buf, " \t,", &save); tok;
             tok = strtok_r(NULL, " \t,", &save)) {
                if (!cfg_name_valid(tok)) {
                        snprintf(x->reason, sizeof(x->reason),
                                 "hosts: '%s' is not a valid host name", tok);
                        return -EINVAL;
                }
                for (unsigned i = 0; i < c->n_hosts; i++)
                        if (!strcmp(c->hosts[i], tok)) {
                                snprintf(x->reason, sizeof(x->reason), "hosts: '%s' listed twice", tok);
                                return -EINVAL;
                        }
                if (c->n_hosts >= CFG_MAX_HOSTS) {
                        snprintf(x->reason, sizeof(x->reason), "hosts: at most %d hosts",
                                 CFG_MAX_HOSTS);
                        return -EINVAL;
                }
                strcpy(c->hosts[c->n_hosts++], tok);
        }
        if (!c->n_hosts) {
                snprintf(x->reason, sizeof(x->reason), "hosts: empty (leave it out for the default)");
                return -EINVAL;
        }
        return 0;
}

static bool ifname_valid(const char *s)
{
        size_t n = strlen(s);
        if (n == 0 || n > 15 || !strcmp(s, ".") || !strcmp(s, ".."))
                return false;
        for (size_t i = 0; i < n; i++)
                if (s[i] == '/' || s[i] == ':' || isspace((unsigned char)s[i]))
                        return false;
        return true;
}

/* SecureOn: what lib/wol parses (a.b.c.d, or 4 or 6 hex bytes). */
static bool password_valid(const char *s)
{
        uint8_t pw[6];
        size_t len;
        return wol_parse_password(s, pw, &len) == 0;
}

static struct cfg_spare *spare_entry(struct load_ctx *x, const char *section, unsigned *ret_i)
{
        struct host_config *h = x->host;
        const char *name = section + 6;
        if (!cfg_name_valid(name)) {
                snprintf(x->reason, sizeof(x->reason), "[%s]: '%s' is not a valid host name",
                         section, name);
                return NULL;
        }
        for (unsigned i = 0; i < h->n_spares; i++)
                if (!strcmp(h->spares[i].name, name)) {
                        *ret_i = i;
                        return &h->spares[i];
                }
        if (h->n_spares >= CFG_MAX_SPARES) {
                snprintf(x->reason, sizeof(x->reason), "at most %d [spare] sections", CFG_MAX_SPARES);
                return NULL;
        }
        struct cfg_spare *sp = &h->spares[h->n_spares];
        memset(sp, 0, sizeof(*sp));
        strcpy(sp->name, name);
        void *saved = x->target;
        x->target = sp;
        for (size_t i = 0; i < N_SPARE_OPTS; i++)
                if (spare_opts[i].def)
                        set_value(x, &spare_opts[i], spare_opts[i].def);
        x->target = saved;
        *ret_i = h->n_spares++;
        return sp;
}

static int parse_spare(struct load_ctx *x, const char *section, const char *name, const char *v)
{
        unsigned idx;
        struct cfg_spare *sp = spare_entry(x, section, &idx);
        if (!sp)
                return -EINVAL;
        if (!name)
                return 0;
        const struct opt *o = NULL;
        size_t oi = 0;
        for (; oi < N_SPARE_OPTS && !o; oi++)
                if (!strcmp(spare_opts[oi].name, name))
                        o = &spare_opts[oi];
        if (!o) {
                snprintf(x->reason, sizeof(x->reason), "[%s]: unknown option '%s'", section, name);
                return -EINVAL;
        }
        if (x->spare_seen[idx][oi - 1]) {
                snprintf(x->reason, sizeof(x->reason), "[%s]: %s set twice", section, name);
                return -EINVAL;
        }
        x->spare_seen[idx][oi - 1] = true;
        void *saved = x->target;
        x->target = sp;
        int r = set_value(x, o, v);
        x->target = saved;
        if (r < 0)
                return r;
        const char *bad = NULL;
        if (!strcmp(name, "mac") && !mac_valid(v))
                bad = "is not a unicast MAC address xx:xx:xx:xx:xx:xx";
        else if (!strcmp(name, "interface") && !ifname_valid(v))
                bad = "is not an interface name (1-15 characters, no '/', ':' or blanks)";
        else if (!strcmp(name, "password") && *v && !password_valid(v))
                bad = "is not a SecureOn password (a.b.c.d or xx:xx:xx:xx:xx:xx)";
        else if (!strcmp(name, "broadcast") && (!*v || strchr(v, ' ')))
                bad = "is not an address";
        else if (!strcmp(name, "off_command") && *v && v[0] != '/')
                bad = "must start with an absolute path";
        if (bad) {
                snprintf(x->reason, sizeof(x->reason), "[%s] %s: '%s' %s", section, name, v, bad);
                return -EINVAL;
        }
        return 0;
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
        struct load_ctx *x = user;
        if (x->host && !strncmp(section, "fence ", 6))
                return parse_fence(x, section, name, value) == 0;
        if (x->host && !strncmp(section, "spare ", 6))
                return parse_spare(x, section, name, value) == 0;
        if (!name) /* a section header alone */
                return 1;
        if (x->host && !strncmp(section, "peer ", 5))
                return parse_peer(x, section, name, value) == 0;
        if (x->vm && !strcmp(section, "vm") && !strcmp(name, "nic"))
                return parse_nic(x, value) == 0;
        if (x->vm && !strcmp(section, "vm") && !strcmp(name, "disk"))
                return parse_disk(x, value) == 0;
        if (x->vm && !strcmp(section, "failback") && !strcmp(name, "hosts"))
                return parse_hosts(x, value) == 0;
        for (size_t i = 0; i < x->n_opts; i++) {
                const struct opt *o = &x->opts[i];
                if (strcmp(o->section, section) || strcmp(o->name, name))
                        continue;
                if (x->seen[i]) {
                        snprintf(x->reason, sizeof(x->reason), "%s: set twice in [%s]", name, section);
                        return 0;
                }
                x->seen[i] = true;
                return set_value(x, o, value) == 0;
        }
        snprintf(x->reason, sizeof(x->reason), "unknown option '%s' in [%s]", name, section);
        return 0;
}

static int load(const char *path, struct load_ctx *x, char *err, size_t errlen)
{
        /* defaults first, so a later error leaves nothing half set */
        for (size_t i = 0; i < x->n_opts; i++)
                if (x->opts[i].def && set_value(x, &x->opts[i], x->opts[i].def) < 0)
                        return -EINVAL; /* a bad default is a bug in the table */
        FILE *f = fopen(path, "re");
        if (!f) {
                int e = errno;
                snprintf(err, errlen, "%s: cannot open: %s", path, strerror(e));
                return -e;
        }
        int line = ini_parse_file(f, handler, x);
        fclose(f);
        if (line != 0) {
                snprintf(err, errlen, "%s:%d: %s", path, line,
                         x->reason[0] ? x->reason : "syntax error (expected [section] or key = value)");
                return -EINVAL;
        }
        for (size_t i = 0; i < x->n_opts; i++) {
                if (!x->opts[i].def && !x->seen[i]) {
                        snprintf(err, errlen, "%s: missing required option '%s' in [%s]", path,
                                 x->opts[i].name, x->opts[i].section);
                        return -EINVAL;
                }
        }
        return 0;
}

int vm_config_load(const char *path, struct vm_config *ret, char *err, size_t errlen)
{
        char dummy[8];
        if (!err) {
                err = dummy;
                errlen = sizeof(dummy);
        }
        struct vm_config *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        struct load_ctx x = { .opts = vm_opts, .n_opts = ARRAY_SIZE(vm_opts), .target = c, .vm = c };
        int r = load(path, &x, err, errlen);
        if (r < 0)
                goto out;
        r = -EINVAL;
        const char *base = strrchr(path, '/');
        base = base ? base + 1 : path;
        size_t nl = strlen(c->name);
        if (strncmp(base, c->name, nl) || strcmp(base + nl, ".conf")) {
                snprintf(err, errlen, "%s: name '%s' does not match the file name (expected %s.conf)",
                         path, c->name, c->name);
                goto out;
        }
        if (!c->kernel[0] && !c->n_disks) {
                snprintf(err, errlen, "%s: [vm] needs 'kernel' or a 'disk' to boot from", path);
                goto out;
        }
        if ((c->initrd[0] || c->cmdline[0]) && !c->kernel[0]) {
                snprintf(err, errlen, "%s: 'initrd' and 'cmdline' need 'kernel'", path);
                goto out;
        }
        if (!c->xor_delta && c->delta_cache_mib != CFG_U32_AUTO && c->delta_cache_mib) {
                snprintf(err, errlen, "%s: xor_delta = no contradicts delta_cache_mib = %u "
                         "(xor_delta is deprecated: write delta_cache_mib = 0 alone)", path,
                         c->delta_cache_mib);
                goto out;
        }
        if (!c->xor_delta)
                c->delta_cache_mib = 0;
        else if (c->delta_cache_mib == CFG_U32_AUTO)
                /* a fifth: with the index and the staging buffer all of
                 * checkpointd's memory beyond guest RAM stays under a
                 * quarter of it (docs/scale.md) */
                c->delta_cache_mib = c->memory_mib / 5;
        if (!strcmp(c->failback, "auto") && !c->preferred_host[0]) {
                snprintf(err, errlen, "%s: failback = auto needs preferred_host in [vm]", path);
                goto out;
        }
        if (c->n_hosts && c->preferred_host[0]) {
                bool found = false;
                for (unsigned i = 0; i < c->n_hosts; i++)
                        found |= !strcmp(c->hosts[i], c->preferred_host);
                if (!found) {
                        snprintf(err, errlen, "%s: preferred_host '%s' is not in [failback] hosts",
                                 path, c->preferred_host);
                        goto out;
                }
        }
        if (strlen(path) >= sizeof(c->source)) {
                snprintf(err, errlen, "%s: path too long", path);
                goto out;
        }
        strcpy(c->source, path);
        *ret = *c;
        r = 0;
out:
        free(c);
        return r;
}

int host_config_load(const char *path, struct host_config *ret, char *err, size_t errlen)
{
        char dummy[8];
        if (!err) {
                err = dummy;
                errlen = sizeof(dummy);
        }
        struct host_config *h = calloc(1, sizeof(*h));
        if (!h)
                return -ENOMEM;
        struct load_ctx x = { .opts = host_opts, .n_opts = ARRAY_SIZE(host_opts), .target = h, .host = h };
        int r = load(path, &x, err, errlen);
        for (unsigned i = 0; r == 0 && i < h->n_fences; i++)
                if (h->fences[i].n_levels == 0) {
                        snprintf(err, errlen, "%s: [fence %s] has no level1 (at least one agent)",
                                 path, h->fences[i].host);
                        r = -EINVAL;
                }
        for (unsigned i = 0; r == 0 && i < h->n_spares; i++) {
                const struct cfg_spare *sp = &h->spares[i];
                const char *why = NULL;
                for (size_t o = 0; o < N_SPARE_OPTS && !why; o++)
                        if (!spare_opts[o].def && !x.spare_seen[i][o])
                                why = spare_opts[o].name;
                if (why)
                        snprintf(err, errlen, "%s: [spare %s] needs '%s'", path, sp->name, why);
                else if (!strcmp(sp->name, h->name))
                        snprintf(err, errlen, "%s: [spare %s] names this host itself", path, sp->name);
                else if (!host_config_peer(h, sp->name))
                        snprintf(err, errlen, "%s: [spare %s] has no [peer %s] (a spare backs VMs "
                                 "up, so it needs a replication address)", path, sp->name, sp->name);
                else if (!strcmp(sp->wake, "ipmi") && !host_config_fence(h, sp->name))
                        snprintf(err, errlen, "%s: [spare %s] wake = ipmi needs a [fence %s]",
                                 path, sp->name, sp->name);
                else if (!strcmp(sp->on_return, "hand-back") && !host_config_fence(h, sp->name) &&
                         !sp->off_command[0])
                        snprintf(err, errlen, "%s: [spare %s] on_return = hand-back needs a "
                                 "[fence %s] or off_command to power it off", path, sp->name, sp->name);
                else
                        continue;
                r = -EINVAL;
        }
        if (r == 0 && host_config_peer(h, h->name)) {
                snprintf(err, errlen, "%s: [peer %s] names this host itself", path, h->name);
                r = -EINVAL;
        }
        /* these end up inside QEMU options, where a comma separates options */
        const char *dirs[] = { h->state_dir, h->ram_dir, h->log_dir };
        for (size_t i = 0; r == 0 && i < ARRAY_SIZE(dirs); i++)
                if (strchr(dirs[i], ',')) {
                        snprintf(err, errlen, "%s: '%s' contains a comma, which QEMU's option "
                                 "syntax cannot take here", path, dirs[i]);
                        r = -EINVAL;
                }
        if (r == 0 && strlen(path) < sizeof(h->source)) {
                strcpy(h->source, path);
                *ret = *h;
        }
        free(h);
        return r;
}

int vm_config_find(const struct host_config *h, const char *name,
                   struct vm_config *ret, char *err, size_t errlen)
{
        if (!cfg_name_valid(name)) {
                snprintf(err, errlen, "'%s' is not a valid VM name", name);
                return -EINVAL;
        }
        char path[CFG_PATH_MAX + 64];
        snprintf(path, sizeof(path), "%s/%s.conf", h->vm_dir, name);
        int r = vm_config_load(path, ret, err, errlen);
        if (r == -ENOENT)
                snprintf(err, errlen, "unknown VM '%s': no definition %s", name, path);
        return r;
}

const struct cfg_peer *host_config_peer(const struct host_config *h, const char *name)
{
        for (unsigned i = 0; i < h->n_peers; i++)
                if (!strcmp(h->peers[i].name, name))
                        return &h->peers[i];
        return NULL;
}

const struct cfg_fence *host_config_fence(const struct host_config *h, const char *name)
{
        for (unsigned i = 0; i < h->n_fences; i++)
                if (!strcmp(h->fences[i].host, name))
                        return &h->fences[i];
        return NULL;
}

const struct cfg_spare *host_config_spare(const struct host_config *h, const char *name)
{
        for (unsigned i = 0; i < h->n_spares; i++)
                if (!strcmp(h->spares[i].name, name))
                        return &h->spares[i];
        return NULL;
}

static unsigned add_host(char (*ret)[CFG_NAME_MAX], unsigned n, unsigned max, const char *name)
{
        if (!name || !name[0] || n >= max)
                return n;
        for (unsigned i = 0; i < n; i++)
                if (!strcmp(ret[i], name))
                        return n;
        snprintf(ret[n], CFG_NAME_MAX, "%s", name);
        return n + 1;
}

unsigned vm_config_hosts(const struct vm_config *c, const char *self,
                         char (*ret)[CFG_NAME_MAX], unsigned max)
{
        unsigned n = 0;
        if (c->n_hosts) {
                for (unsigned i = 0; i < c->n_hosts; i++)
                        n = add_host(ret, n, max, c->hosts[i]);
                return n;
        }
        n = add_host(ret, n, max, c->preferred_host);
        n = add_host(ret, n, max, c->peer);
        return add_host(ret, n, max, self);
}

uint64_t vm_config_digest(const struct vm_config *c)
{
        char buf[4096];
        /* builtin_devices only when it changes the command line: the
         * digest of every existing VM stays what it was (a restarted
         * checkpointd compares it with what its running QEMU was started
         * with, adopt.c) */
        int n = snprintf(buf, sizeof(buf), "mem=%u;cpus=%u;machine=%s%s;cpu=%s;args=%s",
                         c->memory_mib, c->vcpus, c->machine,
                         strcmp(c->builtin_devices, "all") ? "/minimal" : "", c->cpu,
                         c->qemu_args);
        for (unsigned i = 0; i < c->n_nics && n < (int)sizeof(buf); i++)
                n += snprintf(buf + n, sizeof(buf) - (size_t)n, ";nic=%s/%s", c->nics[i].mac,
                              c->nics[i].model);
        /* the number of disks, not their paths: paths may differ per host */
        if (n < (int)sizeof(buf))
                n += snprintf(buf + n, sizeof(buf) - (size_t)n, ";disks=%u", c->n_disks);
        /* where the VM belongs: two hosts that disagree would switch it
         * back and forth (failback = auto) */
        if (n < (int)sizeof(buf))
                n += snprintf(buf + n, sizeof(buf) - (size_t)n, ";preferred=%s;failback=%s/%u",
                              c->preferred_host, c->failback, c->failback_delay_s);
        if (n >= (int)sizeof(buf))
                n = (int)sizeof(buf) - 1;
        return XXH64(buf, (size_t)n, 0);
}

static void print_table(FILE *f, const struct opt *opts, size_t n)
{
        static const char *const tn[] = { "string", "integer", "yes/no", "choice", "name", "address:port" };
        for (size_t i = 0; i < n; i++) {
                const struct opt *o = &opts[i];
                fprintf(f, "[%s] %s (%s", o->section, o->name, tn[o->type]);
                if (o->type == OPT_U32)
                        fprintf(f, " %lld..%lld", o->min, o->max);
                if (o->type == OPT_ENUM)
                        fprintf(f, " %s", o->choices);
                fprintf(f, ", %s%s%s)\n    %s\n", o->def ? "default '" : "required",
                        o->def ? o->def : "", o->def ? "'" : "", o->help);
        }
}

void config_print_reference(FILE *f)
{
        fprintf(f, "Host configuration (havms.conf):\n");
        print_table(f, host_opts, ARRAY_SIZE(host_opts));
        fprintf(f, "[peer NAME] address (address:port, required)\n"
                   "    replication listener of peer host NAME\n");
        fprintf(f, "[fence HOST] level1..level%d (AGENT key=value ..., level1 required, in order)\n"
                   "    how to fence HOST: AGENT is a fence-agents program (fence_ipmilan; looked up\n"
                   "    in PATH, then /usr/sbin), an absolute path, or script:/absolute/path; the\n"
                   "    pairs go to the agent's stdin one per line (values without blanks; no\n"
                   "    action=). Levels are tried in order until one powers HOST off (verified by status)\n"
                   "[fence HOST] timeout_ms (integer 100..600000, default '20000')\n"
                   "    one agent call; a timeout is a failure and the agent is killed\n\n",
                CFG_MAX_FENCE_LEVELS);
        for (size_t i = 0; i < N_SPARE_OPTS; i++) {
                const struct opt *o = &spare_opts[i];
                fprintf(f, "[spare NAME] %s (%s", o->name,
                        o->type == OPT_U32 ? "integer" : o->type == OPT_ENUM ? "choice" : "string");
                if (o->type == OPT_U32)
                        fprintf(f, " %lld..%lld", o->min, o->max);
                if (o->type == OPT_ENUM)
                        fprintf(f, " %s", o->choices);
                fprintf(f, ", %s%s%s)\n    %s\n", o->def ? "default '" : "required",
                        o->def ? o->def : "", o->def ? "'" : "", o->help);
        }
        fprintf(f, "    (at most %d [spare] sections; NAME must also be a [peer NAME])\n\n",
                CFG_MAX_SPARES);
        fprintf(f, "VM definition (<vm_dir>/<name>.conf):\n");
        print_table(f, vm_opts, ARRAY_SIZE(vm_opts));
        fprintf(f, "[vm] nic (mac=52:54:00:xx:xx:xx[,bridge=NAME][,model=MODEL], repeatable, at most %d)\n"
                   "    a NIC; its tap joins the host bridge NAME\n", CFG_MAX_NICS);
        fprintf(f, "[vm] disk (absolute path, repeatable, at most %d)\n"
                   "    a raw image file or block device, served to QEMU by blockrepl and\n"
                   "    replicated in epochs; the path may differ on the peer, the size may not\n",
                CFG_MAX_DISKS);
        fprintf(f, "[failback] hosts (names, blank separated, at most %d, default: preferred_host,\n"
                   "    then [protection] peer, then this host)\n"
                   "    ordered hosts that may run or back up the VM; spares come after them\n",
                CFG_MAX_HOSTS);
}
