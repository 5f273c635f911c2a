#include "qemu.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include "accel.h"
#include "log.h"
#include "util.h"

extern char **environ;

#define QEMU_MAX_ARGS 128
/* The primary sends the open epoch's disk writes each time this much
 * more has come (docs/output-commit.md): small enough that little is
 * left for the commit, large enough that the epoch thread wakes rarely. */
#define DISK_STREAM_BYTES (1u << 20)

/* QEMU's NBD client keeps I/O waiting this long for a vanished server
 * (checkpointd restarting) and retries it once connected again; after it,
 * requests fail and the guest sees I/O errors. Its reconnect attempts
 * back off 1, 2, 4, 8, 16 s, so a server back within ~3 s resumes I/O
 * ~3 s after the crash, one back within 7 s after ~7 s. */
#define QEMU_NBD_RECONNECT_S 60

void qemu_ram_path(const struct host_config *h, const char *vm, char *buf, size_t len)
{
        snprintf(buf, len, "%s/%s.ram", h->ram_dir, vm);
}

void qemu_tap_name(const char *vm, unsigned idx, char *buf, size_t len)
{
        /* IFNAMSIZ is 16: readable when the name fits, hashed otherwise */
        if (strlen(vm) <= 9)
                snprintf(buf, len, "hv-%s-%u", vm, idx);
        else
                snprintf(buf, len, "hv%08x-%u", (unsigned)XXH32(vm, strlen(vm), 0), idx);
}

struct argv_builder {
        char *argv[QEMU_MAX_ARGS + 1];
        int n;
        bool overflow;
};

static void arg(struct argv_builder *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void arg(struct argv_builder *a, const char *fmt, ...)
{
        if (a->n >= QEMU_MAX_ARGS) {
                a->overflow = true;
                return;
        }
        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(&a->argv[a->n], fmt, ap) < 0)
                a->overflow = true;
        else
                a->n++;
        va_end(ap);
}

static void argv_free(struct argv_builder *a)
{
        for (int i = 0; i < a->n; i++)
                free(a->argv[i]);
}

/* builtin_devices = minimal: the machine's built-in devices that havms
 * never attaches anything to (its disks are virtio over NBD, its NICs
 * virtio), off. QEMU saves every device in every checkpoint pause, used or
 * not: on q35 the SATA controller, the SMBus and the VMware port (~0.14 ms
 * of the test bed's pause, ~0.4 ms of a bare q35's save: docs/scale.md). */
static const char *machine_trim(const struct vm_config *c, char *buf, size_t len)
{
        buf[0] = 0;
        if (strcmp(c->builtin_devices, "minimal"))
                return buf;
        bool q35 = !strncmp(c->machine, "q35", 3) || !strncmp(c->machine, "pc-q35", 6);
        bool pc = !strncmp(c->machine, "pc", 2) && !q35 &&
                  (c->machine[2] == 0 || c->machine[2] == ',' || !strncmp(c->machine, "pc-i440fx", 9));
        if (!q35 && !pc)
                return buf; /* other machines: their own device sets */
        static const char *const keys[] = { "sata", "smbus", "vmport" };
        for (unsigned i = q35 ? 0 : 1; i < 3; i++) { /* pc has no sata switch */
                char kv[16];
                snprintf(kv, sizeof(kv), ",%s=", keys[i]);
                if (strstr(c->machine, kv)) /* the operator's own choice wins */
                        continue;
                size_t l = strlen(buf);
                snprintf(buf + l, len - l, ",%s=off", keys[i]);
        }
        return buf;
}

static void build_argv(const struct host_config *h, const struct vm_config *c,
                       const struct qemu_vm *q, enum qemu_start_mode mode,
                       struct argv_builder *a)
{
        arg(a, "%s", h->qemu);
        arg(a, "-name");
        arg(a, "guest=%s,debug-threads=on", c->name);
        arg(a, "-machine");
        char trim[64];
        arg(a, "%s,accel=%s,memory-backend=havms-ram%s", c->machine, q->accel,
            machine_trim(c, trim, sizeof(trim)));
        arg(a, "-cpu");
        arg(a, "%s", c->cpu);
        arg(a, "-smp");
        arg(a, "%u", c->vcpus);
        arg(a, "-m");
        arg(a, "%uM", c->memory_mib);
        /* Guest RAM in a named shared file: the tracker watches QEMU's
         * mapping of it, checkpointd reads it through its own mapping, and
         * x-ignore-shared keeps it out of the device-state stream. */
        arg(a, "-object");
        arg(a, "memory-backend-file,id=havms-ram,size=%uM,mem-path=%s,share=on",
            c->memory_mib, q->ram_path);
        arg(a, "-nodefaults");
        arg(a, "-no-user-config");
        arg(a, "-vga");
        arg(a, "none");
        arg(a, "-display");
        arg(a, "none");
        arg(a, "-chardev");
        arg(a, "file,id=havms-con,path=%s,append=on", q->console_path);
        arg(a, "-serial");
        arg(a, "chardev:havms-con");
        arg(a, "-qmp");
        arg(a, "unix:%s,server=on,wait=off", q->qmp_path);
        if (c->kernel[0]) {
                arg(a, "-kernel");
                arg(a, "%s", c->kernel);
        }
        if (c->initrd[0]) {
                arg(a, "-initrd");
                arg(a, "%s", c->initrd);
        }
        if (c->cmdline[0]) {
                arg(a, "-append");
                arg(a, "%s", c->cmdline);
        }
        /* Disks through blockrepl's NBD socket: it sees every write, so it
         * can cut the disk at the epoch barrier (docs/blockrepl.md). */
        for (unsigned i = 0; i < c->n_disks; i++) {
                arg(a, "-blockdev");
                arg(a, "driver=nbd,node-name=havms-disk%u,server.type=unix,server.path=%s/%s.disk%u.nbd,"
                       "reconnect-delay=%u",
                    i, h->state_dir, c->name, i, QEMU_NBD_RECONNECT_S);
                arg(a, "-device");
                /* without a kernel, the first disk is the boot disk */
                arg(a, "virtio-blk-pci,drive=havms-disk%u%s", i,
                    i == 0 && !c->kernel[0] ? ",bootindex=0" : "");
        }
        for (unsigned i = 0; i < c->n_nics; i++) {
                char netdev[CFG_PATH_MAX + 128];
                if (i >= q->n_net || netbuf_qemu_netdev(q->net[i], netdev, sizeof(netdev)) < 0) {
                        a->overflow = true;
                        return;
                }
                arg(a, "-netdev");
                arg(a, "%s,id=havms-net%u", netdev, i);
                arg(a, "-device");
                arg(a, "%s,netdev=havms-net%u,mac=%s", c->nics[i].model, i, c->nics[i].mac);
        }
        /* Always start paused: a fresh guest is continued once the driver
         * is ready; a hot standby waits for activation. */
        arg(a, "-S");
        if (mode == QEMU_START_INCOMING) {
                arg(a, "-incoming");
                arg(a, "defer");
        }
        if (c->qemu_args[0]) {
                char buf[CFG_TEXT_MAX];
                strcpy(buf, c->qemu_args);
                for (char *s = NULL, *t = strtok_r(buf, " \t", &s); t; t = strtok_r(NULL, " \t", &s))
                        arg(a, "%s", t);
        }
}

/* The NICs' output buffers and the disks' servers exist before QEMU starts
 * (QEMU connects to both) and go away after it. */
static int open_io(const struct host_config *h, const struct vm_config *c, struct qemu_vm *q,
                   char *err, size_t errlen)
{
        char path[CFG_PATH_MAX + 64], bitmap[CFG_PATH_MAX + 64], name[CFG_NAME_MAX + 16];
        int r;
        for (unsigned i = 0; i < c->n_nics; i++) {
                char tap[16];
                qemu_tap_name(c->name, i, tap, sizeof(tap));
                snprintf(path, sizeof(path), "%s/%s.net%u.sock", h->state_dir, c->name, i);
                struct netbuf_options o = {
                        .vm = c->name,
                        .nic = i,
                        .tap = tap,
                        .bridge = c->nics[i].bridge,
                        .socket_path = path,
                        .max_bytes = (uint64_t)c->netbuf_max_mib << 20,
                        .backend = strcmp(c->netbuf, "plug") ? NETBUF_RELAY : NETBUF_PLUG,
                        /* QEMU listens: a restarted checkpointd's relay
                         * can connect to a QEMU that kept running */
                        .qemu_listens = true,
                };
                char why[256] = "";
                r = netbuf_open(&o, &q->net[i], why, sizeof(why));
                if (r < 0) {
                        snprintf(err, errlen, "NIC %u: %s", i, why[0] ? why : strerror(-r));
                        return r;
                }
                q->n_net = i + 1;
        }
        for (unsigned i = 0; i < c->n_disks; i++) {
                snprintf(path, sizeof(path), "%s/%s.disk%u.nbd", h->state_dir, c->name, i);
                snprintf(bitmap, sizeof(bitmap), "%s/%s.disk%u.bitmap", h->state_dir, c->name, i);
                snprintf(name, sizeof(name), "%s/disk%u", c->name, i);
                uint64_t log_max = (uint64_t)c->disk_log_mib << 20;
                struct blockrepl_options o = {
                        .name = name,
                        .image = c->disks[i],
                        .socket_path = path,
                        .bitmap_path = bitmap,
                        .log_soft_bytes = log_max / 4,
                        .log_hard_bytes = log_max,
                        /* streamed to the standby while the guest runs */
                        .stream_bytes = DISK_STREAM_BYTES < log_max / 8 ? DISK_STREAM_BYTES
                                                                        : log_max / 8,
                };
                char why[256] = "";
                r = blockrepl_open(&o, &q->disk[i], why, sizeof(why));
                if (r < 0) {
                        snprintf(err, errlen, "disk %s: %s", c->disks[i], why[0] ? why : strerror(-r));
                        return r;
                }
                q->n_disk = i + 1;
        }
        return 0;
}

static void close_io(struct qemu_vm *q)
{
        for (unsigned i = 0; i < q->n_net; i++)
                netbuf_close(q->net[i]);
        for (unsigned i = 0; i < q->n_disk; i++)
                blockrepl_close(q->disk[i]);
        q->n_net = q->n_disk = 0;
}

void qemu_net_buffering(struct qemu_vm *q, bool on)
{
        for (unsigned i = 0; i < q->n_net; i++)
                netbuf_set_buffering(q->net[i], on);
}

int qemu_net_barrier(struct qemu_vm *q, uint64_t epoch)
{
        for (unsigned i = 0; i < q->n_net; i++) {
                int r = netbuf_barrier(q->net[i], epoch);
                if (r < 0)
                        return r;
        }
        return 0;
}

void qemu_net_release(struct qemu_vm *q, uint64_t epoch)
{
        for (unsigned i = 0; i < q->n_net; i++)
                netbuf_release(q->net[i], epoch);
}

bool qemu_net_waiting(const struct qemu_vm *q)
{
        for (unsigned i = 0; i < q->n_net; i++)
                if (netbuf_output_waiting(q->net[i]))
                        return true;
        return false;
}

uint64_t qemu_net_waiting_since(const struct qemu_vm *q)
{
        uint64_t first = 0;
        for (unsigned i = 0; i < q->n_net; i++) {
                uint64_t t = netbuf_waiting_since(q->net[i]);
                if (t && (!first || t < first))
                        first = t;
        }
        return first;
}

bool qemu_net_full(const struct qemu_vm *q)
{
        for (unsigned i = 0; i < q->n_net; i++)
                if (netbuf_full(q->net[i]))
                        return true;
        return false;
}

int qemu_disk_mode(struct qemu_vm *q, enum blockrepl_mode m)
{
        int r = 0;
        for (unsigned i = 0; i < q->n_disk; i++) {
                int e = blockrepl_set_mode(q->disk[i], m);
                if (e < 0 && r == 0)
                        r = e;
        }
        return r;
}

void qemu_disk_defer_flushes(struct qemu_vm *q)
{
        for (unsigned i = 0; i < q->n_disk; i++)
                blockrepl_defer_flushes(q->disk[i], true);
}

/* QEMU listens on each NIC's socket (server=on) from before its monitor
 * answers; connect the relays. Retried briefly in case it is not there
 * yet; a QEMU that dies meanwhile ends the wait at once. */
static int attach_nics(struct qemu_vm *q, uint64_t deadline, char *err, size_t errlen)
{
        for (unsigned i = 0; i < q->n_net; i++) {
                for (;;) {
                        char why[256] = "";
                        int r = netbuf_attach(q->net[i], why, sizeof(why));
                        if (r == 0)
                                break;
                        if (qemu_exited(q) || now_ns() > deadline ||
                            (r != -ENOENT && r != -ECONNREFUSED && r != -EAGAIN)) {
                                snprintf(err, errlen, "NIC %u: %s", i, why[0] ? why : strerror(-r));
                                return r;
                        }
                        struct pollfd p = { .fd = q->pidfd, .events = POLLIN };
                        poll(&p, 1, 20);
                }
        }
        return 0;
}

int qemu_proc_start_time(pid_t pid, uint64_t *ret)
{
        char path[64], buf[1024];
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return errno == ENOENT ? -ESRCH : -errno;
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0)
                return -EIO;
        buf[n] = 0;
        /* comm may hold spaces and parentheses: count fields after the last ')' */
        char *p = strrchr(buf, ')');
        if (!p)
                return -EIO;
        unsigned field = 2;
        for (char *s = NULL, *t = strtok_r(p + 1, " ", &s); t; t = strtok_r(NULL, " ", &s)) {
                if (++field == 22) {
                        char *end;
                        unsigned long long v = strtoull(t, &end, 10);
                        if (*end)
                                return -EIO;
                        *ret = v;
                        return 0;
                }
        }
        return -EIO;
}

void qemu_kill_pid(pid_t pid, uint64_t start_time)
{
        uint64_t st;
        int fd = (int)syscall(SYS_pidfd_open, pid, 0);
        if (fd < 0)
                return;
        if (qemu_proc_start_time(pid, &st) == 0 && st == start_time &&
            syscall(SYS_pidfd_send_signal, fd, SIGKILL, NULL, 0) == 0) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                poll(&p, 1, 5000);
        }
        close(fd);
}

static int spawn_qemu(const struct host_config *h, struct argv_builder *a,
                      const char *logpath, pid_t *ret_pid)
{
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, logpath,
                                         O_WRONLY | O_CREAT | O_APPEND, 0644);
        posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);

        /* environment: ours plus LD_PRELOAD of the uffd library */
        size_t n_env = 0;
        while (environ[n_env])
                n_env++;
        char **env = calloc(n_env + 2, sizeof(char *));
        char *preload = NULL;
        int r = -ENOMEM;
        if (!env || asprintf(&preload, "LD_PRELOAD=%s", h->uffd_preload) < 0)
                goto out;
        size_t k = 0;
        for (size_t i = 0; i < n_env; i++)
                if (strncmp(environ[i], "LD_PRELOAD=", 11))
                        env[k++] = environ[i];
        if (h->uffd_preload[0])
                env[k++] = preload;
        env[k] = NULL;

        posix_spawnattr_t attr;
        posix_spawnattr_init(&attr);
        /* QEMU gets default signal dispositions and a session of its own:
         * neither a ^C at the daemon's terminal nor the hang-up of the
         * daemon's session reaches it, and nothing ties its life to
         * checkpointd's (no parent-death signal, stdio on files): a crash
         * of checkpointd leaves it running for the next one to adopt. */
        sigset_t all;
        sigfillset(&all);
        posix_spawnattr_setsigdefault(&attr, &all);
        sigset_t none;
        sigemptyset(&none);
        posix_spawnattr_setsigmask(&attr, &none);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK |
                                                POSIX_SPAWN_SETSID);
        int e = posix_spawnp(ret_pid, a->argv[0], &fa, &attr, a->argv, env);
        posix_spawnattr_destroy(&attr);
        r = e ? -e : 0;
out:
        posix_spawn_file_actions_destroy(&fa);
        free(env);
        free(preload);
        return r;
}

int qemu_launch(const struct host_config *h, const struct vm_config *c,
                enum qemu_start_mode mode, struct qemu_vm **ret, char *err, size_t errlen)
{
        struct argv_builder a = { 0 };
        struct qemu_vm *q = calloc(1, sizeof(*q));
        int r = -ENOMEM;
        if (!q)
                goto fail;
        q->pid = -1;
        q->pidfd = -1;
        q->ds_fd = -1;
        strcpy(q->name, c->name);
        q->ram_bytes = (uint64_t)c->memory_mib << 20;
        q->incoming = mode == QEMU_START_INCOMING;
        /* auto: KVM only where the probe guest ran on it (lib/accel.h),
         * decided once when the daemon started */
        snprintf(q->accel, sizeof(q->accel), "%s", accel_resolve(c->accel, h->qemu));
        qemu_ram_path(h, c->name, q->ram_path, sizeof(q->ram_path));
        snprintf(q->qmp_path, sizeof(q->qmp_path), "%s/qmp-%s.sock", h->state_dir, c->name);
        snprintf(q->console_path, sizeof(q->console_path), "%s/%s.console", h->log_dir, c->name);
        char logpath[CFG_PATH_MAX + 64];
        snprintf(logpath, sizeof(logpath), "%s/%s.qemu.log", h->log_dir, c->name);

        if ((r = mkdir_p(h->ram_dir, 0700)) < 0 || (r = mkdir_p(h->state_dir, 0700)) < 0 ||
            (r = mkdir_p(h->log_dir, 0755)) < 0) {
                snprintf(err, errlen, "cannot create state directories: %s", strerror(-r));
                goto fail;
        }
        if (mode == QEMU_START_FRESH)
                unlink(q->ram_path); /* a fresh boot must not inherit old RAM */
        else if (access(q->ram_path, R_OK) < 0) {
                r = -ENOENT;
                snprintf(err, errlen, "no replica RAM file %s", q->ram_path);
                goto fail;
        }
        unlink(q->qmp_path);
        if ((r = open_io(h, c, q, err, errlen)) < 0)
                goto fail;

        build_argv(h, c, q, mode, &a);
        if (a.overflow) {
                r = -E2BIG;
                snprintf(err, errlen, "QEMU command line too long (qemu_args?)");
                goto fail;
        }
        r = spawn_qemu(h, &a, logpath, &q->pid);
        if (r < 0) {
                snprintf(err, errlen, "cannot start %s: %s", h->qemu, strerror(-r));
                goto fail;
        }
        q->pidfd = (int)syscall(SYS_pidfd_open, q->pid, 0);

        /* QEMU creates the QMP socket early; wait for it, but notice a
         * QEMU that died on a bad command line instead of waiting. */
        uint64_t deadline = now_ns() + 15000000000ull;
        for (;;) {
                r = qmp_connect(q->qmp_path, 1000, &q->qmp);
                if (r == 0)
                        break;
                if (qemu_exited(q) || now_ns() > deadline) {
                        snprintf(err, errlen, "QEMU did not come up (see %s)", logpath);
                        r = -ECHILD;
                        goto fail;
                }
                struct pollfd p = { .fd = q->pidfd, .events = POLLIN };
                poll(&p, 1, 20); /* wake at once if QEMU exits */
        }
        q->start_time = 0;
        qemu_proc_start_time(q->pid, &q->start_time);
        if ((r = attach_nics(q, deadline, err, errlen)) < 0)
                goto fail;
        argv_free(&a);
        *ret = q;
        return 0;
fail:
        argv_free(&a);
        qemu_destroy(q);
        return r;
}

/* The guest's run state (query-status), into buf. */
static int query_status(struct qemu_vm *q, char *buf, size_t len)
{
        json_object *ret = NULL, *st;
        int r = qmp_execute(q->qmp, "query-status", NULL, 2000, &ret);
        if (r < 0)
                return r;
        if (!json_object_object_get_ex(ret, "status", &st)) {
                json_object_put(ret);
                return -EPROTO;
        }
        snprintf(buf, len, "%s", json_object_get_string(st));
        json_object_put(ret);
        return 0;
}

/* The dead checkpointd may have left a device-state migration going (its
 * end of the stream is closed, so QEMU fails it and resumes the guest by
 * itself) or the guest paused (an epoch's pause, `pause`, a start not yet
 * continued). Cancel what is left and continue the guest, checking until
 * it runs: QEMU refuses `cont` while a failing migration still owns the
 * stopped VM. */
static int adopt_resume(struct qemu_vm *q, char *err, size_t errlen)
{
        char st[32] = "";
        uint64_t deadline = now_ns() + 10000000000ull;
        qmp_execute(q->qmp, "migrate_cancel", NULL, 2000, NULL);
        for (;;) {
                int r = query_status(q, st, sizeof(st));
                if (r < 0) {
                        snprintf(err, errlen, "query-status: %s", strerror(-r));
                        return r;
                }
                if (!strcmp(st, "running"))
                        return 0;
                if (qemu_exited(q)) {
                        snprintf(err, errlen, "QEMU exited while being adopted");
                        return -ECHILD;
                }
                if (now_ns() > deadline) {
                        snprintf(err, errlen, "the guest stays '%s': %s", st,
                                 qmp_last_error(q->qmp));
                        return -ETIMEDOUT;
                }
                if (qemu_cont(q, 2000) < 0) {
                        struct pollfd p = { .fd = q->pidfd, .events = POLLIN };
                        poll(&p, 1, 50); /* a migration still ending; wake if QEMU dies */
                }
        }
}

int qemu_adopt(const struct host_config *h, const struct vm_config *c, pid_t pid,
               uint64_t start_time, const char *accel, bool hold_output,
               struct qemu_vm **ret, char *err, size_t errlen)
{
        struct qemu_vm *q = calloc(1, sizeof(*q));
        uint64_t st = 0;
        int r = -ENOMEM;
        if (!q)
                goto fail;
        q->pid = pid;
        q->pidfd = -1;
        q->ds_fd = -1;
        q->adopted = true;
        q->start_time = start_time;
        strcpy(q->name, c->name);
        q->ram_bytes = (uint64_t)c->memory_mib << 20;
        snprintf(q->accel, sizeof(q->accel), "%s", accel);
        qemu_ram_path(h, c->name, q->ram_path, sizeof(q->ram_path));
        snprintf(q->qmp_path, sizeof(q->qmp_path), "%s/qmp-%s.sock", h->state_dir, c->name);
        snprintf(q->console_path, sizeof(q->console_path), "%s/%s.console", h->log_dir, c->name);
        /* the pidfd first, then the start time: if that matches, the pidfd
         * names the very process the earlier checkpointd started */
        q->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
        if (q->pidfd < 0 || qemu_proc_start_time(pid, &st) < 0 || st != start_time) {
                r = -ESRCH;
                snprintf(err, errlen, "QEMU pid %d is gone", (int)pid);
                goto fail;
        }
        if (c->n_nics && !strcmp(c->netbuf, "plug")) {
                r = -EOPNOTSUPP;
                snprintf(err, errlen, "netbuf = plug: QEMU holds the tap itself and its output "
                         "queue cannot be taken over");
                goto fail;
        }
        /* NBD servers and relays first: QEMU's NBD client is retrying */
        if ((r = open_io(h, c, q, err, errlen)) < 0)
                goto fail;
        /* before the first frame is read: the standby may hold a replica
         * that the guest's newer output must not overtake */
        if (hold_output)
                qemu_net_buffering(q, true);
        if ((r = qmp_connect(q->qmp_path, 5000, &q->qmp)) < 0) {
                snprintf(err, errlen, "QMP %s: %s", q->qmp_path, strerror(-r));
                goto fail;
        }
        if ((r = attach_nics(q, now_ns() + 5000000000ull, err, errlen)) < 0)
                goto fail;
        if ((r = adopt_resume(q, err, errlen)) < 0)
                goto fail;
        *ret = q;
        return 0;
fail:
        if (q) {
                /* gone, or left without its disks and NICs: killed, so
                 * the cluster can hand the VM to its standby */
                q->exited = r == -ESRCH || q->pidfd < 0;
                qemu_destroy(q);
        }
        return r;
}

bool qemu_wait_exit(struct qemu_vm *q, int timeout_ms)
{
        if (!qemu_exited(q) && q->pidfd >= 0) {
                struct pollfd p = { .fd = q->pidfd, .events = POLLIN };
                poll(&p, 1, timeout_ms);
        }
        return qemu_exited(q);
}

bool qemu_exited(struct qemu_vm *q)
{
        if (q->exited)
                return true;
        if (q->adopted) {
                /* not our child: init reaps it; its pidfd turns readable */
                struct pollfd p = { .fd = q->pidfd, .events = POLLIN };
                if (q->pidfd < 0 || poll(&p, 1, 0) == 1) {
                        q->exited = true;
                        q->exit_status = -1;
                }
                return q->exited;
        }
        int st;
        pid_t p = waitpid(q->pid, &st, WNOHANG);
        if (p == q->pid || (p < 0 && errno == ECHILD)) {
                q->exited = true;
                q->exit_status = p == q->pid ? st : -1;
        }
        return q->exited;
}

void qemu_destroy(struct qemu_vm *q)
{
        if (!q)
                return;
        if (q->pid > 0 && !qemu_exited(q)) {
                if (q->adopted) {
                        /* the pidfd names this very process: no pid reuse */
                        syscall(SYS_pidfd_send_signal, q->pidfd, SIGKILL, NULL, 0);
                        struct pollfd p = { .fd = q->pidfd, .events = POLLIN };
                        poll(&p, 1, 5000);
                } else {
                        kill(q->pid, SIGKILL);
                        int st;
                        waitpid(q->pid, &st, 0);
                }
                q->exited = true;
        }
        qmp_close(q->qmp);
        close_io(q);
        if (q->ds_fd >= 0)
                close(q->ds_fd);
        if (q->pidfd >= 0)
                close(q->pidfd);
        if (q->qmp_path[0])
                unlink(q->qmp_path);
        free(q);
}

void qemu_quit(struct qemu_vm *q, int timeout_ms)
{
        if (!q || qemu_exited(q))
                return;
        if (q->qmp && qmp_execute(q->qmp, "quit", NULL, timeout_ms, NULL) == 0 && q->pidfd >= 0) {
                struct pollfd p = { .fd = q->pidfd, .events = POLLIN };
                poll(&p, 1, timeout_ms);
        }
        qemu_exited(q); /* qemu_destroy kills what is left */
}

int qemu_cont(struct qemu_vm *q, int timeout_ms)
{
        return qmp_execute(q->qmp, "cont", NULL, timeout_ms, NULL);
}

int qemu_migration_setup(struct qemu_vm *q, int timeout_ms)
{
        int r = qmp_execute_json(q->qmp, "migrate-set-capabilities",
                                 "{\"capabilities\":["
                                 "{\"capability\":\"x-ignore-shared\",\"state\":true},"
                                 "{\"capability\":\"events\",\"state\":true}]}",
                                 timeout_ms, NULL);
        if (r < 0)
                return r;
        /* The device state is sent with the VM stopped: never throttle it. */
        return qmp_execute_json(q->qmp, "migrate-set-parameters",
                                "{\"max-bandwidth\":100000000000}", timeout_ms, NULL);
}

/* After the stream ended, the MIGRATION event tells how it ended. */
static int await_migration_end(struct qemu_vm *q, uint64_t deadline)
{
        for (;;) {
                uint64_t now = now_ns();
                int left = now >= deadline ? 0 : (int)((deadline - now) / 1000000);
                json_object *ev = NULL, *data, *st;
                int r = qmp_wait_event(q->qmp, "MIGRATION", left, &ev);
                if (r < 0)
                        return r;
                const char *s = "";
                if (json_object_object_get_ex(ev, "data", &data) &&
                    json_object_object_get_ex(data, "status", &st))
                        s = json_object_get_string(st);
                r = !strcmp(s, "completed") ? 0 : !strcmp(s, "failed") || !strcmp(s, "cancelled") ? -EIO : 1;
                json_object_put(ev);
                if (r <= 0)
                        return r;
        }
}

int qemu_devstate_arm(struct qemu_vm *q, int timeout_ms)
{
        int sv[2];
        if (q->ds_fd >= 0)
                return 0;
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                return -errno;
        int r = qmp_send_fd(q->qmp, "havms-ds", sv[1], timeout_ms);
        close(sv[1]);
        if (r < 0) {
                close(sv[0]);
                return r;
        }
        set_nonblock(sv[0], true);
        q->ds_fd = sv[0];
        return 0;
}

void qemu_devstate_disarm(struct qemu_vm *q)
{
        if (q->ds_fd >= 0)
                close(q->ds_fd);
        q->ds_fd = -1;
}

int qemu_save_devstate(struct qemu_vm *q, uint8_t **buf, size_t *cap,
                       size_t *ret_len, int timeout_ms)
{
        uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000u;
        size_t len = 0;
        int r = qemu_devstate_arm(q, timeout_ms);
        if (r < 0)
                return r;
        /* the STOP and MIGRATION events read next are this migration's
         * (arming may have happened an epoch earlier) */
        qmp_clear_events(q->qmp);
        r = qmp_execute_json(q->qmp, "migrate", "{\"uri\":\"fd:havms-ds\"}", timeout_ms, NULL);
        if (r < 0)
                goto out;
        for (;;) {
                if (*cap - len < 65536) {
                        size_t ncap = *cap ? *cap * 2 : 1 << 20;
                        uint8_t *nb = realloc(*buf, ncap);
                        if (!nb) {
                                r = -ENOMEM;
                                goto out;
                        }
                        *buf = nb;
                        *cap = ncap;
                }
                ssize_t n = read(q->ds_fd, *buf + len, *cap - len);
                if (n > 0) {
                        len += (size_t)n;
                        continue;
                }
                if (n == 0)
                        break; /* QEMU closed its end: the stream is complete */
                if (errno == EINTR)
                        continue;
                if (errno != EAGAIN) {
                        r = -errno;
                        goto out;
                }
                r = wait_fd(q->ds_fd, POLLIN, deadline);
                if (r < 0)
                        goto out;
        }
        *ret_len = len;
out:
        close(q->ds_fd);
        q->ds_fd = -1;
        return r;
}

int qemu_devstate_check(struct qemu_vm *q, int timeout_ms)
{
        return await_migration_end(q, now_ns() + (uint64_t)timeout_ms * 1000000u);
}

/* Wall-clock time (µs) of the queued event name, if QEMU's clock puts
 * it no later than fallback (the same host's clock); else fallback. */
static uint64_t event_time_or(struct qemu_vm *q, const char *name, uint64_t fallback)
{
        json_object *ev = NULL, *ts, *sec, *usec;
        uint64_t t = fallback;
        if (qmp_wait_event(q->qmp, name, 0, &ev) < 0)
                return fallback;
        if (json_object_object_get_ex(ev, "timestamp", &ts) &&
            json_object_object_get_ex(ts, "seconds", &sec) &&
            json_object_object_get_ex(ts, "microseconds", &usec)) {
                uint64_t v = (uint64_t)json_object_get_int64(sec) * 1000000u +
                             (uint64_t)json_object_get_int64(usec);
                if (v <= fallback)
                        t = v;
        }
        json_object_put(ev);
        return t;
}

uint64_t qemu_stop_time_us(struct qemu_vm *q, uint64_t fallback)
{
        return event_time_or(q, "STOP", fallback);
}

uint64_t qemu_resume_time_us(struct qemu_vm *q, uint64_t fallback)
{
        return event_time_or(q, "RESUME", fallback);
}

int qemu_load_devstate(struct qemu_vm *q, const uint8_t *buf, size_t len, int timeout_ms)
{
        uint64_t deadline = now_ns() + (uint64_t)timeout_ms * 1000000u;
        int sv[2] = { -1, -1 };
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                return -errno;
        int r = qemu_migration_setup(q, timeout_ms);
        if (r == 0)
                r = qmp_send_fd(q->qmp, "havms-in", sv[1], timeout_ms);
        close(sv[1]);
        if (r == 0)
                r = qmp_execute_json(q->qmp, "migrate-incoming", "{\"uri\":\"fd:havms-in\"}",
                                     timeout_ms, NULL);
        if (r == 0) {
                set_nonblock(sv[0], true);
                r = write_full(sv[0], buf, len, deadline);
        }
        close(sv[0]); /* EOF ends the stream for QEMU */
        if (r == 0)
                r = await_migration_end(q, deadline);
        if (r == 0)
                q->incoming = false;
        return r;
}

int qemu_announce(struct qemu_vm *q, int timeout_ms)
{
        return qmp_execute_json(q->qmp, "announce-self",
                                "{\"initial\":50,\"max\":550,\"rounds\":5,\"step\":100}",
                                timeout_ms, NULL);
}
