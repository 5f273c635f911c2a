#include "daemon.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "adopt.h"
#include "ctl.h"
#include "log.h"
#include "msgid.h"
#include "persist.h"
#include "util.h"

#define CTL_TIMEOUT_MS 2000

static struct vm *vm_new(const struct vm_config *c)
{
        struct vm *v = calloc(1, sizeof(*v));
        if (!v)
                return NULL;
        snprintf(v->name, sizeof(v->name), "%s", c->name);
        v->cfg = *c;
        v->state = VM_DEFINED;
        v->conn_fd = -1;
        v->wake_fd = -1;
        pthread_mutex_init(&v->lock, NULL);
        pthread_cond_init(&v->changed, NULL);
        return v;
}

int daemon_load_generation(struct daemon *d, struct vm *v)
{
        char err[512];
        uint64_t g = 0;
        int r = persist_generation_load(&d->host, v->name, &g, err, sizeof(err));
        if (r < 0) {
                v->generation_bad = true;
                vm_set_error(v, "%s", err);
                log_msg(LOG_LVL_ERR, MSG_GENERATION_BAD, v->name, -1, "%s", err);
                return r;
        }
        v->generation = g;
        v->generation_bad = false;
        return 0;
}

int daemon_vm(struct daemon *d, const char *name, bool create, struct vm **ret,
              char *err, size_t errlen)
{
        int r = 0;
        pthread_mutex_lock(&d->table_lock);
        for (unsigned i = 0; i < d->n_vms; i++) {
                if (!strcmp(d->vms[i]->name, name)) {
                        *ret = d->vms[i];
                        goto out;
                }
        }
        struct vm_config c;
        r = vm_config_find(&d->host, name, &c, err, errlen);
        if (r < 0)
                goto out;
        if (!create) {
                r = -ENOENT;
                snprintf(err, errlen, "unknown VM '%s'", name);
                goto out;
        }
        if (d->n_vms >= DAEMON_MAX_VMS) {
                r = -ENOSPC;
                snprintf(err, errlen, "too many VMs (at most %d per host)", DAEMON_MAX_VMS);
                goto out;
        }
        struct vm *v = vm_new(&c);
        if (!v) {
                r = -ENOMEM;
                goto out;
        }
        daemon_load_generation(d, v);
        d->vms[d->n_vms++] = v;
        *ret = v;
out:
        pthread_mutex_unlock(&d->table_lock);
        return r;
}

/* Make every valid definition in vm_dir known, and say which are not. */
static void load_definitions(struct daemon *d)
{
        DIR *dir = opendir(d->host.vm_dir);
        if (!dir)
                return;
        struct dirent *e;
        while ((e = readdir(dir))) {
                size_t n = strlen(e->d_name);
                if (n < 6 || strcmp(e->d_name + n - 5, ".conf"))
                        continue;
                char name[CFG_NAME_MAX], err[512];
                if (n - 5 >= sizeof(name))
                        continue;
                memcpy(name, e->d_name, n - 5);
                name[n - 5] = 0;
                struct vm *v;
                /* a QEMU left running by a crashed checkpointd first
                 * (adopt.h); else a replica left on this host */
                if (daemon_vm(d, name, true, &v, err, sizeof(err)) < 0)
                        log_msg(LOG_LVL_WARN, MSG_BAD_DEFINITION, NULL, -1, "ignored: %s", err);
                else if (!adopt_at_start(d, v))
                        backup_adopt(d, v);
        }
        closedir(dir);
}

static int add_fd(struct daemon *d, int fd)
{
        struct epoll_event ev = { .events = EPOLLIN, .data.u64 = (uint64_t)fd };
        return epoll_ctl(d->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

/* A QEMU's pidfd becomes readable when the process exits: the event loop
 * then looks for dead QEMUs at once (milliseconds, not a periodic tick).
 * One-shot, because a dead QEMU's pidfd stays readable: whoever keeps a
 * QEMU that a replication thread was watching re-arms it. The entry goes
 * away by itself when qemu_destroy closes the pidfd. */
#define PIDFD_TAG (1ull << 32)
void daemon_watch_qemu(struct daemon *d, struct qemu_vm *q)
{
        if (!q || q->pidfd < 0 || d->epoll_fd < 0)
                return;
        struct epoll_event ev = { .events = EPOLLIN | EPOLLONESHOT,
                                  .data.u64 = PIDFD_TAG | (uint32_t)q->pidfd };
        if (epoll_ctl(d->epoll_fd, EPOLL_CTL_MOD, q->pidfd, &ev) < 0 && errno == ENOENT)
                epoll_ctl(d->epoll_fd, EPOLL_CTL_ADD, q->pidfd, &ev);
}

int daemon_init(struct daemon *d, const char *config_path, bool managed, char *err,
                size_t errlen)
{
        memset(d, 0, sizeof(*d));
        d->ctl_fd = d->repl_fd = d->epoll_fd = d->signal_fd = -1;
        pthread_mutex_init(&d->table_lock, NULL);
        int r = host_config_load(config_path, &d->host, err, errlen);
        if (r < 0)
                return r;
        if (managed)
                d->host.managed = true;
        char dir[CFG_PATH_MAX];
        snprintf(dir, sizeof(dir), "%s", d->host.control_socket);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
                *slash = 0;
                mkdir_p(dir, 0755);
        }
        if ((r = mkdir_p(d->host.state_dir, 0700)) < 0 || (r = mkdir_p(d->host.ram_dir, 0700)) < 0 ||
            (r = mkdir_p(d->host.log_dir, 0755)) < 0) {
                snprintf(err, errlen, "cannot create %s, %s or %s: %s", d->host.state_dir,
                         d->host.ram_dir, d->host.log_dir, strerror(-r));
                return r;
        }
        /* What accel = auto means on this host, decided before the control
         * socket appears (so no VM starts first) and once: a KVM that
         * cannot run guests costs up to ACCEL_PROBE_TIMEOUT_MS here. */
        accel_auto(d->host.qemu, &d->accel);
        /* Signals are read from a signalfd by the event loop; block them
         * before any thread exists so every thread inherits the mask. */
        sigset_t mask;
        sigemptyset(&mask);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGTERM);
        pthread_sigmask(SIG_BLOCK, &mask, NULL);
        signal(SIGPIPE, SIG_IGN);
        d->signal_fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
        d->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
        if (d->signal_fd < 0 || d->epoll_fd < 0) {
                snprintf(err, errlen, "cannot set up the event loop: %s", strerror(errno));
                return -errno;
        }
        const char *why;
        r = unix_listen(d->host.control_socket, SOCK_NONBLOCK, 16, &d->ctl_fd, &why);
        if (r < 0) {
                if (r == -EADDRINUSE)
                        snprintf(err, errlen, "control socket %s: another checkpointd is running",
                                 d->host.control_socket);
                else
                        snprintf(err, errlen, "control socket %s: %s: %s", d->host.control_socket,
                                 why, strerror(-r));
                return r;
        }
        r = tcp_listen(d->host.listen, &d->repl_fd);
        if (r < 0) {
                snprintf(err, errlen, "replication listener %s: %s", d->host.listen, strerror(-r));
                return r;
        }
        if ((r = add_fd(d, d->signal_fd)) < 0 ||
            (r = add_fd(d, d->ctl_fd)) < 0 || (r = add_fd(d, d->repl_fd)) < 0) {
                snprintf(err, errlen, "epoll: %s", strerror(-r));
                return r;
        }
        load_definitions(d);
        return 0;
}

static void handle_ctl(struct daemon *d)
{
        int fd = accept4(d->ctl_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0)
                return;
        json_object *req = NULL, *resp;
        int r = ctl_read(fd, CTL_TIMEOUT_MS, &req);
        if (r < 0) {
                resp = json_object_new_object();
                json_object_object_add(resp, "ok", json_object_new_boolean(0));
                json_object_object_add(resp, "error", json_object_new_string("malformed request"));
        } else {
                resp = daemon_dispatch(d, req);
        }
        ctl_write(fd, resp, CTL_TIMEOUT_MS);
        json_object_put(req);
        json_object_put(resp);
        close(fd);
}

/* A QEMU exited (its pidfd fired): handle the VMs whose QEMU died while
 * no replication thread was watching it (a thread handles its own). */
static void reap_dead(struct daemon *d)
{
        pthread_mutex_lock(&d->table_lock);
        for (unsigned i = 0; i < d->n_vms; i++) {
                struct vm *v = d->vms[i];
                struct qemu_vm *dead = NULL;
                pthread_mutex_lock(&v->lock);
                if (!v->thread_running && v->qemu && v->state != VM_ACTIVATING &&
                    qemu_exited(v->qemu)) {
                        dead = v->qemu;
                        v->qemu = NULL;
                        if (vm_state_is_primary(v->state)) {
                                adopt_forget(d, v);
                                vm_set_state(v, VM_DEFINED);
                                if (v->kill_requested) { /* `kill`: commands.c logged it */
                                        v->kill_requested = false;
                                        vm_set_exit(v, "fenced");
                                } else if (vm_guest_powered_off(dead)) {
                                        vm_set_exit(v, "guest-shutdown");
                                        log_msg(LOG_LVL_NOTICE, MSG_VM_GUEST_OFF, v->name, -1,
                                                "the guest powered itself off");
                                } else {
                                        vm_set_exit(v, "crash");
                                        vm_set_error(v, "QEMU exited (status %d)", dead->exit_status);
                                        log_msg(LOG_LVL_ERR, MSG_VM_EXITED, v->name, -1,
                                                "QEMU exited unexpectedly (status %d); see %s/%s.qemu.log",
                                                dead->exit_status, d->host.log_dir, v->name);
                                }
                        }
                }
                pthread_mutex_unlock(&v->lock);
                qemu_destroy(dead);
        }
        pthread_mutex_unlock(&d->table_lock);
}

/* A KVM that is there but cannot run guests is worth a warning (VMs run
 * many times slower under TCG); no KVM at all is a plain fact. */
static void log_accel(const struct accel_choice *a)
{
        switch (a->basis) {
        case ACCEL_BASIS_PROBE_FAILED:
        case ACCEL_BASIS_PROBE_ERROR:
                log_msg(LOG_LVL_WARN, MSG_ACCEL_FALLBACK, NULL, -1,
                        "/dev/kvm is present but KVM cannot run guests here (%s): "
                        "VMs with accel = auto run under TCG", a->why);
                break;
        case ACCEL_BASIS_PROBE_OK:
                log_msg(LOG_LVL_INFO, MSG_ACCEL_CHOSEN, NULL, -1,
                        "accel = auto means kvm: the probe guest ran under KVM in %u ms",
                        a->probe_ms);
                break;
        case ACCEL_BASIS_NO_KVM:
        case ACCEL_BASIS_ENV:
                log_msg(LOG_LVL_INFO, MSG_ACCEL_CHOSEN, NULL, -1, "accel = auto means %s (%s)",
                        a->accel, a->why);
                break;
        }
}

int daemon_run(struct daemon *d)
{
        log_msg(LOG_LVL_NOTICE, MSG_DAEMON_STARTED, NULL, -1,
                "checkpointd on host %s: control %s, replication %s%s", d->host.name,
                d->host.control_socket, d->host.listen,
                d->host.managed ? ", managed (a lost standby isolates its primaries)" : "");
        log_accel(&d->accel);
        while (!d->quit) {
                struct epoll_event evs[8];
                int n = epoll_wait(d->epoll_fd, evs, 8, -1);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return -errno;
                for (int i = 0; i < n; i++) {
                        if (evs[i].data.u64 & PIDFD_TAG) {
                                reap_dead(d);
                                continue;
                        }
                        int fd = (int)evs[i].data.u64;
                        if (fd == d->ctl_fd) {
                                handle_ctl(d);
                        } else if (fd == d->repl_fd) {
                                int cfd;
                                if (tcp_accept(d->repl_fd, &cfd) == 0)
                                        backup_accept(d, cfd);
                        } else if (fd == d->signal_fd) {
                                struct signalfd_siginfo si;
                                if (read(d->signal_fd, &si, sizeof(si)) > 0)
                                        d->quit = true;
                        }
                }
        }
        return 0;
}

void daemon_stop_vm(struct daemon *d, struct vm *v)
{
        primary_stop(v);
        pthread_mutex_lock(&v->lock);
        struct qemu_vm *q = v->qemu;
        v->qemu = NULL;
        vm_set_state(v, VM_DEFINED);
        if (q)
                vm_set_exit(v, "stopped");
        adopt_forget(d, v);
        pthread_mutex_unlock(&v->lock);
        qemu_quit(q, 3000);
        qemu_destroy(q);
        log_msg(LOG_LVL_NOTICE, MSG_VM_STOPPED, v->name, -1, "stopped on %s", d->host.name);
}

/* A clean stop: protection ends (standbys are told) and the guests
 * running here stop too: their disks (blockrepl) and NICs (netbuf) are
 * served from inside this process. Only a crash leaves them running, for
 * the next checkpointd to adopt (adopt.h). */
void daemon_shutdown(struct daemon *d)
{
        log_msg(LOG_LVL_NOTICE, MSG_DAEMON_STOPPING, NULL, -1,
                "checkpointd stopping: ending protection, dropping replicas held here, "
                "stopping the guests running here (their disks and NICs are served by "
                "checkpointd)");
        for (unsigned i = 0; i < d->n_vms; i++) {
                struct vm *v = d->vms[i];
                pthread_mutex_lock(&v->lock);
                bool here = vm_state_is_primary(v->state) && v->qemu;
                pthread_mutex_unlock(&v->lock);
                if (here)
                        daemon_stop_vm(d, v);
                else
                        primary_stop(v);
                backup_stop(d, v); /* no-op for a VM running here */
        }
        if (d->ctl_fd >= 0) {
                close(d->ctl_fd);
                unlink(d->host.control_socket);
        }
        if (d->repl_fd >= 0)
                close(d->repl_fd);
}
