/* adopt: the run file of a primary VM and its adoption by a restarted
 * checkpointd (adopt.h). */
#include "adopt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "daemon.h"
#include "log.h"
#include "msgid.h"
#include "persist.h"
#include "util.h"

#define RUNFILE_MAGIC "havms-run 1"
#define RUNFILE_MAX 1024

static void run_path(const struct host_config *h, const char *vm, char *buf, size_t len)
{
        snprintf(buf, len, "%s/%s.run", h->state_dir, vm);
}

int runfile_store(const struct host_config *h, const char *vm, const struct run_record *rec)
{
        static unsigned counter;
        char path[CFG_PATH_MAX + 80], tmp[CFG_PATH_MAX + 120], text[RUNFILE_MAX];
        run_path(h, vm, path, sizeof(path));
        /* unique per call: the control thread and a replication thread
         * may record the same VM at once; the last rename wins whole */
        snprintf(tmp, sizeof(tmp), "%s.%d.%u.tmp", path, (int)getpid(),
                 __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED));
        int n = snprintf(text, sizeof(text),
                         RUNFILE_MAGIC "\npid %d\nstart_time %" PRIu64 "\naccel %s\n"
                         "config_digest %016" PRIx64 "\n%s%s%soutput %s\n",
                         (int)rec->pid, rec->start_time, rec->accel, rec->config_digest,
                         rec->peer[0] ? "peer " : "", rec->peer, rec->peer[0] ? "\n" : "",
                         rec->output_held ? "held" : "free");
        if (n < 0 || (size_t)n >= sizeof(text))
                return -ENAMETOOLONG;
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
                return -errno;
        int r = write_full(fd, text, (size_t)n, now_ns() + 2000000000ull);
        if (close(fd) < 0 && r == 0)
                r = -errno;
        if (r == 0 && rename(tmp, path) < 0)
                r = -errno;
        if (r < 0)
                unlink(tmp);
        return r;
}

static int corrupt(char *err, size_t errlen, const char *path, const char *what)
{
        snprintf(err, errlen, "%s: %s", path, what);
        return -EUCLEAN;
}

int runfile_load(const struct host_config *h, const char *vm, struct run_record *ret,
                 char *err, size_t errlen)
{
        char path[CFG_PATH_MAX + 80], text[RUNFILE_MAX + 1];
        run_path(h, vm, path, sizeof(path));
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return errno == ENOENT ? -ENOENT : corrupt(err, errlen, path, strerror(errno));
        ssize_t n = read(fd, text, sizeof(text));
        close(fd);
        if (n < 0)
                return corrupt(err, errlen, path, strerror(errno));
        if (n > RUNFILE_MAX)
                return corrupt(err, errlen, path, "too long");
        text[n] = 0;
        struct run_record rec = { 0 };
        bool pid = false, start = false, accel = false, digest = false, output = false;
        char *save = NULL, *line = strtok_r(text, "\n", &save);
        if (!line || strcmp(line, RUNFILE_MAGIC))
                return corrupt(err, errlen, path, "not a run file");
        while ((line = strtok_r(NULL, "\n", &save))) {
                char key[32], val[128], *end;
                if (sscanf(line, "%31s %127s", key, val) != 2)
                        return corrupt(err, errlen, path, "malformed line");
                if (!strcmp(key, "pid")) {
                        long v = strtol(val, &end, 10);
                        if (*end || v <= 0)
                                return corrupt(err, errlen, path, "bad pid");
                        rec.pid = (pid_t)v;
                        pid = true;
                } else if (!strcmp(key, "start_time")) {
                        rec.start_time = strtoull(val, &end, 10);
                        if (*end)
                                return corrupt(err, errlen, path, "bad start_time");
                        start = true;
                } else if (!strcmp(key, "accel")) {
                        if (strlen(val) >= sizeof(rec.accel))
                                return corrupt(err, errlen, path, "bad accel");
                        strcpy(rec.accel, val);
                        accel = true;
                } else if (!strcmp(key, "config_digest")) {
                        rec.config_digest = strtoull(val, &end, 16);
                        if (*end)
                                return corrupt(err, errlen, path, "bad config_digest");
                        digest = true;
                } else if (!strcmp(key, "peer")) {
                        if (strlen(val) >= sizeof(rec.peer))
                                return corrupt(err, errlen, path, "bad peer");
                        strcpy(rec.peer, val);
                } else if (!strcmp(key, "output")) {
                        if (strcmp(val, "held") && strcmp(val, "free"))
                                return corrupt(err, errlen, path, "bad output");
                        rec.output_held = !strcmp(val, "held");
                        output = true;
                } else {
                        return corrupt(err, errlen, path, "unknown key");
                }
        }
        if (!pid || !start || !accel || !digest || !output)
                return corrupt(err, errlen, path, "a field is missing");
        *ret = rec;
        return 0;
}

void runfile_drop(const struct host_config *h, const char *vm)
{
        char path[CFG_PATH_MAX + 80];
        run_path(h, vm, path, sizeof(path));
        unlink(path);
}

void adopt_record(struct daemon *d, struct vm *v, const char *peer, bool output_held)
{
        struct qemu_vm *q = v->qemu;
        if (!q)
                return;
        struct run_record rec = {
                .pid = q->pid,
                .start_time = q->start_time,
                .config_digest = vm_config_digest(&v->cfg),
                .output_held = output_held,
        };
        snprintf(rec.accel, sizeof(rec.accel), "%s", q->accel);
        snprintf(rec.peer, sizeof(rec.peer), "%s", peer ? peer : "");
        int r = runfile_store(&d->host, v->name, &rec);
        if (r < 0)
                log_msg(LOG_LVL_WARN, MSG_VM_ADOPT_FAILED, v->name, -1,
                        "cannot write the run file in %s (%s): a crash of checkpointd "
                        "would now stop this VM", d->host.state_dir, strerror(-r));
}

void adopt_forget(struct daemon *d, struct vm *v)
{
        runfile_drop(&d->host, v->name);
}

/* The VM's QEMU is gone or could not be taken over: say so the way a QEMU
 * crash is said (last_exit crash), so havmsd restarts it here or hands it
 * to the standby, per policy. */
static void report_lost(struct daemon *d, struct vm *v, const char *why)
{
        runfile_drop(&d->host, v->name);
        pthread_mutex_lock(&v->lock);
        vm_set_state(v, VM_DEFINED);
        vm_set_exit(v, "crash");
        vm_set_error(v, "not adopted after a restart of checkpointd: %s", why);
        pthread_mutex_unlock(&v->lock);
        log_msg(LOG_LVL_ERR, MSG_VM_ADOPT_FAILED, v->name, -1,
                "the QEMU left by the previous checkpointd cannot be adopted: %s; "
                "reported as a crash (last_exit crash)", why);
}

/* Does /proc/PID/cmdline look like a QEMU whose QMP socket is qmp? */
static bool is_vm_qemu(const char *pid, const char *qmp)
{
        char path[300], buf[8192];
        snprintf(path, sizeof(path), "/proc/%.256s/cmdline", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return false;
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0)
                return false;
        buf[n] = 0;
        if (!strstr(buf, "qemu")) /* argv[0] */
                return false;
        for (ssize_t i = 0; i < n; i++) /* NULs between the arguments */
                if (!buf[i])
                        buf[i] = ' ';
        return strstr(buf, qmp) != NULL;
}

/* The run file is damaged, so its pid cannot be trusted or read: find the
 * VM's QEMU by its QMP socket path (derived from the host configuration
 * and the VM's name, on its command line) and kill it, so that nothing
 * restarts onto the RAM file and sockets a live QEMU still uses, and the
 * standby does not take over from under it. 0: none runs (any more);
 * -EBUSY with why: one could not be killed or /proc not read. */
static int kill_vm_qemu(struct daemon *d, struct vm *v, char *why, size_t whylen)
{
        char qmp[CFG_PATH_MAX + 64];
        snprintf(qmp, sizeof(qmp), "%s/qmp-%s.sock,", d->host.state_dir, v->name);
        DIR *dir = opendir("/proc");
        if (!dir) {
                snprintf(why, whylen, "cannot read /proc: %s", strerror(errno));
                return -EBUSY;
        }
        int r = 0;
        struct dirent *e;
        while ((e = readdir(dir))) {
                char *end;
                long pid = strtol(e->d_name, &end, 10);
                if (*end || pid <= 1 || pid == (long)getpid() || !is_vm_qemu(e->d_name, qmp))
                        continue;
                int fd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
                if (fd < 0)
                        continue; /* gone meanwhile */
                struct pollfd pf = { .fd = fd, .events = POLLIN };
                if (syscall(SYS_pidfd_send_signal, fd, SIGKILL, NULL, 0) < 0 ||
                    poll(&pf, 1, 5000) != 1) {
                        snprintf(why, whylen, "QEMU pid %ld (QMP %.*s) survives SIGKILL", pid,
                                 (int)strlen(qmp) - 1, qmp);
                        r = -EBUSY;
                } else {
                        log_msg(LOG_LVL_WARN, MSG_VM_ADOPT_FAILED, v->name, -1,
                                "killed QEMU pid %ld, found by its QMP socket: its run file is "
                                "damaged", pid);
                }
                close(fd);
        }
        closedir(dir);
        return r;
}

bool adopt_at_start(struct daemon *d, struct vm *v)
{
        struct run_record rec;
        char err[512] = "";
        int r = runfile_load(&d->host, v->name, &rec, err, sizeof(err));
        if (r == -ENOENT)
                return false;
        if (r < 0) {
                char why[256] = "";
                if (kill_vm_qemu(d, v, why, sizeof(why)) < 0) {
                        /* not a crash: a QEMU may still run (and speak) */
                        pthread_mutex_lock(&v->lock);
                        vm_set_state(v, VM_DEFINED);
                        vm_set_error(v, "run file damaged (%s) and %s: a QEMU of this VM may "
                                     "still run here; kill it by hand", err, why);
                        pthread_mutex_unlock(&v->lock);
                        log_msg(LOG_LVL_ERR, MSG_VM_ADOPT_FAILED, v->name, -1,
                                "run file damaged (%s) and %s: a QEMU of this VM may still run "
                                "here; NOT reported as a crash (kill it by hand)", err, why);
                        return true;
                }
                report_lost(d, v, err);
                return true;
        }
        if (rec.config_digest != vm_config_digest(&v->cfg)) {
                /* the I/O paths are built from the definition: adopting
                 * with another would serve the wrong disks or NICs */
                snprintf(err, sizeof(err), "its definition (%s) changed while checkpointd was "
                         "down", v->cfg.source);
                qemu_kill_pid(rec.pid, rec.start_time);
                report_lost(d, v, err);
                return true;
        }
        /* The standby role cannot be ours too: a replica file here is stale. */
        persist_devstate_drop(&d->host, v->name);
        bool protect = rec.peer[0] && !v->generation_bad;
        /* held whatever else is wrong (a bad generation file, say): the
         * standby may hold an activatable replica behind this output */
        bool held = rec.output_held;
        struct qemu_vm *q = NULL;
        uint64_t t0 = now_ms();
        r = qemu_adopt(&d->host, &v->cfg, rec.pid, rec.start_time, rec.accel, held, &q, err,
                       sizeof(err));
        if (r < 0) {
                report_lost(d, v, r == -ESRCH ? "its QEMU exited while checkpointd was down" : err);
                return true;
        }
        qemu_announce(q, 2000); /* the NICs' taps are new bridge ports */
        pthread_mutex_lock(&v->lock);
        v->qemu = q;
        v->epoch = v->committed_epoch = 0;
        v->last_error[0] = 0;
        vm_set_state(v, VM_RUNNING);
        adopt_record(d, v, rec.peer, held);
        int pr = 0;
        char perr[512] = "";
        if (protect)
                pr = primary_resume(d, v, rec.peer, held, perr, sizeof(perr));
        if ((!protect || pr < 0) && held && !d->host.managed) {
                /* as for a lost standby without managed mode: released */
                qemu_net_buffering(q, false);
                held = false;
        } else if ((!protect || pr < 0) && held) {
                /* managed: no replication thread, output held: isolated,
                 * so havmsd sees it and says `release` (or stops it) */
                vm_set_state(v, VM_ISOLATED);
                vm_set_error(v, "adopted with output held, protection not resumed: isolated "
                             "until `release`");
        }
        if (!protect || pr < 0)
                adopt_record(d, v, pr < 0 ? rec.peer : "", held);
        pthread_mutex_unlock(&v->lock);
        if (!protect || pr < 0)
                daemon_watch_qemu(d, q); /* a replication thread watches its own */
        log_msg(LOG_LVL_NOTICE, MSG_VM_ADOPTED, v->name, -1,
                "adopted QEMU pid %d left running by the previous checkpointd in %llu ms: "
                "disks and NICs served again%s%s", (int)rec.pid,
                (unsigned long long)(now_ms() - t0), protect ? ", protection to " : "",
                protect ? rec.peer : "");
        if (pr < 0 || (!protect && rec.peer[0]))
                log_msg(LOG_LVL_ERR, MSG_PROTECT_FAILED, v->name, -1,
                        "cannot resume protection to %s: %s; the VM runs unprotected%s",
                        rec.peer, pr < 0 ? perr : "its generation file is not trustworthy",
                        held ? ", ISOLATED with its output held (managed: the standby may "
                        "hold a replica; `release` once it cannot take over, or `stop`)" : "");
        return true;
}
