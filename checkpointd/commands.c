/* commands: the control commands of checkpointd, one table. Each handler
 * gets the VM (looked up by the table's rule) and the request's "args",
 * adds its result fields to resp, and returns 0 or -errno with a reason in
 * err. havmsctl is a thin client of this table. */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "adopt.h"
#include "daemon.h"
#include "log.h"
#include "msgid.h"
#include "persist.h"
#include "util.h"

#define ERRLEN 512

typedef int (*cmd_fn)(struct daemon *d, struct vm *v, json_object *args,
                      json_object *resp, char *err);

static const char *arg_str(json_object *args, const char *key)
{
        json_object *o;
        if (args && json_object_object_get_ex(args, key, &o) && json_object_is_type(o, json_type_string))
                return json_object_get_string(o);
        return NULL;
}

static bool arg_bool(json_object *args, const char *key)
{
        json_object *o;
        return args && json_object_object_get_ex(args, key, &o) && json_object_get_boolean(o);
}

/* A non-negative integer argument: 0 with *ret (0 if absent), -EINVAL if
 * present but not a whole number >= 0. */
static int arg_u64(json_object *args, const char *key, uint64_t *ret)
{
        json_object *o;
        *ret = 0;
        if (!args || !json_object_object_get_ex(args, key, &o))
                return 0;
        if (!json_object_is_type(o, json_type_int) || json_object_get_int64(o) < 0)
                return -EINVAL;
        *ret = (uint64_t)json_object_get_int64(o);
        return 0;
}

static void add_str(json_object *o, const char *k, const char *v) { json_object_object_add(o, k, json_object_new_string(v)); }
static void add_int(json_object *o, const char *k, int64_t v) { json_object_object_add(o, k, json_object_new_int64(v)); }
static void add_dbl(json_object *o, const char *k, double v)
{
        /* three decimals keep the JSON readable (and exact as printed) */
        char txt[32];
        snprintf(txt, sizeof(txt), "%.3f", v);
        json_object_object_add(o, k, json_object_new_double_s(v, txt));
}

/* ---- lifecycle ---- */

/* A fresh boot keeps the generation this host holds (1 if none): a cold
 * boot is no takeover. A cluster manager that boots a VM another host ran
 * gives `generation` (>= the stored one), so that the new copy can
 * protect to that host and an older one cannot. Lock held. */
static int start_generation(struct daemon *d, struct vm *v, json_object *args, char *err)
{
        uint64_t want;
        if (arg_u64(args, "generation", &want) < 0) {
                snprintf(err, ERRLEN, "generation must be a whole number");
                return -EINVAL;
        }
        if (v->generation_bad && daemon_load_generation(d, v) < 0) {
                snprintf(err, ERRLEN, "%s", v->last_error);
                return -EUCLEAN;
        }
        if (want && want < v->generation) {
                snprintf(err, ERRLEN, "generation %llu is older than %llu, the one %s has seen for %s",
                         (unsigned long long)want, (unsigned long long)v->generation, d->host.name,
                         v->name);
                return -ESTALE;
        }
        uint64_t g = want ? want : v->generation ? v->generation : 1;
        if (g != v->generation) {
                int r = persist_generation_store(&d->host, v->name, g);
                if (r < 0) {
                        snprintf(err, ERRLEN, "cannot store the generation in %s: %s",
                                 d->host.state_dir, strerror(-r));
                        return r;
                }
                v->generation = g;
        }
        return 0;
}

static int cmd_start(struct daemon *d, struct vm *v, json_object *args, json_object *resp, char *err)
{
        /* Claim the VM (state running, no QEMU yet) before the slow launch,
         * so a primary's HELLO cannot make it a backup meanwhile. */
        pthread_mutex_lock(&v->lock);
        enum vm_state st = v->state;
        bool busy = st != VM_DEFINED || v->thread_running || v->qemu;
        int r = busy ? 0 : start_generation(d, v, args, err);
        if (!busy && r == 0)
                vm_set_state(v, VM_RUNNING);
        pthread_mutex_unlock(&v->lock);
        if (busy) {
                snprintf(err, ERRLEN, "%s is already %s on %s", v->name, vm_state_name(st), d->host.name);
                return -EBUSY;
        }
        if (r < 0)
                return r;
        struct qemu_vm *q = NULL;
        r = qemu_launch(&d->host, &v->cfg, QEMU_START_FRESH, &q, err, ERRLEN);
        if (r == 0 && (r = qemu_cont(q, 5000)) < 0)
                snprintf(err, ERRLEN, "cont: %s", qmp_last_error(q->qmp));
        if (r < 0) {
                qemu_destroy(q);
                pthread_mutex_lock(&v->lock);
                vm_set_state(v, VM_DEFINED);
                pthread_mutex_unlock(&v->lock);
                return r;
        }
        pthread_mutex_lock(&v->lock);
        v->qemu = q;
        v->epoch = v->committed_epoch = 0;
        v->last_error[0] = 0;
        v->unprotected_by_operator = false;
        vm_set_state(v, VM_RUNNING);
        adopt_record(d, v, "", false); /* a restarted checkpointd adopts it */
        uint64_t gen = v->generation;
        pthread_mutex_unlock(&v->lock);
        daemon_watch_qemu(d, q);
        log_msg(LOG_LVL_NOTICE, MSG_VM_STARTED, v->name, -1,
                "started on %s (QEMU pid %d, generation %llu), unprotected", d->host.name,
                (int)q->pid, (unsigned long long)gen);
        add_int(resp, "pid", q->pid);
        return 0;
}

static int cmd_stop(struct daemon *d, struct vm *v, json_object *args, json_object *resp, char *err)
{
        pthread_mutex_lock(&v->lock);
        enum vm_state st = v->state;
        pthread_mutex_unlock(&v->lock);
        if (!vm_state_is_primary(st)) {
                snprintf(err, ERRLEN, "%s is not running on %s (it is %s)", v->name, d->host.name,
                         vm_state_name(st));
                return -EINVAL;
        }
        daemon_stop_vm(d, v);
        return 0;
}

/* kill: a fence, for the cluster agent (self-fencing without quorum, a
 * newer generation elsewhere) and emergencies. Unlike `stop`, the standby
 * is NOT told: its replica stays activatable, so it can take over. QEMU is
 * SIGKILLed at once, held output is dropped (never released), last_exit
 * says `fenced`. Bounded: the reply comes within KILL_WAIT_MS even when
 * the replication thread is stuck waiting for an ACK (it finishes later,
 * without releasing anything). A VM that does not run here: nothing to
 * do, ok (killed false). */
#define KILL_WAIT_MS 500
static int cmd_kill(struct daemon *d, struct vm *v, json_object *args, json_object *resp, char *err)
{
        uint64_t t0 = now_ms();
        pthread_mutex_lock(&v->lock);
        enum vm_state st = v->state;
        struct qemu_vm *q = v->qemu;
        if (st == VM_ACTIVATING) {
                pthread_mutex_unlock(&v->lock);
                snprintf(err, ERRLEN, "%s is being activated on %s: retry", v->name, d->host.name);
                return -EBUSY;
        }
        if (!vm_state_is_primary(st) || !q) {
                pthread_mutex_unlock(&v->lock);
                json_object_object_add(resp, "killed", json_object_new_boolean(0));
                add_str(resp, "state", vm_state_name(st));
                return 0;
        }
        v->kill_requested = true;
        int pidfd = q->pidfd >= 0 ? dup(q->pidfd) : -1;
        if (q->exited || q->pidfd < 0 ||
            syscall(SYS_pidfd_send_signal, q->pidfd, SIGKILL, NULL, 0) < 0)
                kill(q->pid, SIGKILL); /* exited: a zombie (not reaped): harmless */
        /* The replication thread may be waiting for an ACK and see the
         * death only then: what the NICs hold is dropped here, now. */
        for (unsigned i = 0; i < q->n_net; i++)
                netbuf_discard(q->net[i]);
        if (v->thread_running && v->wake_fd >= 0) {
                uint64_t one = 1;
                ssize_t k = write(v->wake_fd, &one, sizeof(one));
                (void)k;
        }
        pthread_mutex_unlock(&v->lock);
        if (pidfd >= 0) {
                struct pollfd pf = { .fd = pidfd, .events = POLLIN };
                poll(&pf, 1, KILL_WAIT_MS / 2);
                close(pidfd);
        }
        struct qemu_vm *dead = NULL;
        pthread_mutex_lock(&v->lock);
        if (!v->thread_running && v->qemu == q && qemu_exited(q)) {
                /* nobody else watches it: reaped here (reap_dead would too) */
                dead = q;
                v->qemu = NULL;
                vm_set_state(v, VM_DEFINED);
                vm_set_exit(v, "fenced");
                v->kill_requested = false;
                adopt_forget(d, v);
        } else if (v->thread_running) {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                uint64_t left = KILL_WAIT_MS - (now_ms() - t0 < KILL_WAIT_MS ? now_ms() - t0 : KILL_WAIT_MS);
                ts.tv_sec += (time_t)(left / 1000);
                ts.tv_nsec += (long)(left % 1000) * 1000000;
                if (ts.tv_nsec >= 1000000000) {
                        ts.tv_sec++;
                        ts.tv_nsec -= 1000000000;
                }
                while (v->thread_running && pthread_cond_timedwait(&v->changed, &v->lock, &ts) == 0)
                        ;
        }
        st = v->state;
        uint64_t epoch = v->committed_epoch, gen = v->generation;
        pthread_mutex_unlock(&v->lock);
        qemu_destroy(dead);
        uint64_t ms = now_ms() - t0;
        log_msg(LOG_LVL_WARN, MSG_VM_KILLED, v->name, (int64_t)epoch,
                "killed on request (fence): QEMU SIGKILLed, held output dropped, the standby was "
                "NOT told (its replica of generation %llu stays activatable); %llu ms, now %s",
                (unsigned long long)gen, (unsigned long long)ms, vm_state_name(st));
        json_object_object_add(resp, "killed", json_object_new_boolean(1));
        add_str(resp, "state", vm_state_name(st));
        add_int(resp, "kill_ms", (int64_t)ms);
        return 0;
}

static int cmd_protect(struct daemon *d, struct vm *v, json_object *args, json_object *resp, char *err)
{
        const char *peer = arg_str(args, "peer");
        if (!peer || !*peer)
                peer = v->cfg.peer;
        if (!*peer) {
                snprintf(err, ERRLEN, "no standby named: give --peer HOST or set [protection] peer in %s",
                         v->cfg.source);
                return -EINVAL;
        }
        if (!strcmp(peer, d->host.name)) {
                snprintf(err, ERRLEN, "the standby must be another host than %s", d->host.name);
                return -EINVAL;
        }
        pthread_mutex_lock(&v->lock);
        int r = 0;
        if (v->state != VM_RUNNING) {
                snprintf(err, ERRLEN, "%s is %s on %s: protect needs it running here, unprotected",
                         v->name, vm_state_name(v->state), d->host.name);
                r = -EINVAL;
        } else if (v->thread_running) {
                snprintf(err, ERRLEN, "%s: protection is still shutting down, try again", v->name);
                r = -EBUSY;
        } else if (v->generation_bad) {
                snprintf(err, ERRLEN, "%s", v->last_error);
                r = -EUCLEAN;
        } else {
                r = primary_start(d, v, peer, err, ERRLEN);
                if (r == 0)
                        v->unprotected_by_operator = false;
        }
        pthread_mutex_unlock(&v->lock);
        if (r == 0)
                add_str(resp, "peer", peer);
        return r;
}

static int cmd_unprotect(struct daemon *d, struct vm *v, json_object *args, json_object *resp, char *err)
{
        pthread_mutex_lock(&v->lock);
        enum vm_state st = v->state;
        pthread_mutex_unlock(&v->lock);
        if (st == VM_RUNNING) {
                snprintf(err, ERRLEN, "%s is not protected", v->name);
                return -EINVAL;
        }
        if (!vm_state_is_primary(st)) {
                snprintf(err, ERRLEN, "%s is %s on %s: run unprotect on its primary",
                         v->name, vm_state_name(st), d->host.name);
                return -EINVAL;
        }
        /* Unprotecting releases held output. From ISOLATED nobody has told
         * the standby (it is unreachable) and it may take over: only the
         * cluster can say that it cannot. */
        if (st == VM_ISOLATED) {
                snprintf(err, ERRLEN, "%s is isolated on %s: its standby %s was lost and may take "
                         "over, so its held output cannot simply be released. The cluster "
                         "decides: `release %s` once %s is fenced or provably cannot take over "
                         "(or `stop %s`, which drops the held output)", v->name, d->host.name,
                         v->peer, v->name, v->peer, v->name);
                return -EBUSY;
        }
        /* The standby must confirm the goodbye before held output flows;
         * without its confirmation the output held is dropped, or (managed
         * mode) kept held: the VM stays isolated until the cluster decides. */
        if (primary_unprotect(v) == -EAGAIN) {
                snprintf(err, ERRLEN, "%s: standby %s did not confirm the end of protection and "
                         "may still take over: the VM stays isolated on %s with its output held "
                         "until `release %s` (the standby is fenced or provably cannot take "
                         "over) or `stop %s`", v->name, v->peer, d->host.name, v->name, v->name);
                return -EBUSY;
        }
        bool cluster = arg_bool(args, "cluster");
        pthread_mutex_lock(&v->lock);
        v->unprotected_by_operator = !cluster;
        pthread_mutex_unlock(&v->lock);
        log_msg(LOG_LVL_NOTICE, MSG_PROTECT_END, v->name, -1, "protection ended by %s",
                cluster ? "the cluster (havmsd)" : "the operator: havmsd will not protect it "
                "again by itself until `protect`");
        return 0;
}

static int cmd_activate(struct daemon *d, struct vm *v, json_object *args, json_object *resp, char *err)
{
        uint64_t gen;
        if (arg_u64(args, "generation", &gen) < 0) {
                snprintf(err, ERRLEN, "generation must be a whole number");
                return -EINVAL;
        }
        int r = backup_activate(d, v, arg_bool(args, "force"), gen, err, ERRLEN);
        if (r == 0) {
                pthread_mutex_lock(&v->lock);
                add_int(resp, "activation_ms", (int64_t)v->activation_ms);
                add_int(resp, "epoch", (int64_t)v->committed_epoch);
                add_int(resp, "generation", (int64_t)v->generation);
                pthread_mutex_unlock(&v->lock);
        }
        return r;
}

static void wait_state_change(struct vm *v, enum vm_state from, int timeout_ms);

/* release: the cluster has made sure the standby cannot take over (it was
 * fenced, it said goodbye, its replica is gone): an ISOLATED primary
 * releases its held output and runs on unprotected (degraded). */
static int cmd_release(struct daemon *d, struct vm *v, json_object *args, json_object *resp, char *err)
{
        pthread_mutex_lock(&v->lock);
        int r = 0;
        if (v->state != VM_ISOLATED) {
                snprintf(err, ERRLEN, "%s is %s on %s: only an isolated VM holds output to release",
                         v->name, vm_state_name(v->state), d->host.name);
                r = -EINVAL;
        } else if (!v->thread_running && v->qemu) {
                /* adopted with output held, protection not resumed
                 * (adopt.c): no thread to ask, release it here */
                qemu_net_buffering(v->qemu, false);
                adopt_record(d, v, "", false); /* after the output flowed */
                vm_set_state(v, VM_RUNNING);
                v->last_error[0] = 0;
                log_msg(LOG_LVL_WARN, MSG_RELEASED, v->name, -1,
                        "released: held output flows, VM runs unprotected (the cluster says "
                        "the standby cannot take over)");
        } else if ((r = primary_release(v)) == 0) {
                wait_state_change(v, VM_ISOLATED, 10000);
                if (v->state == VM_ISOLATED) {
                        snprintf(err, ERRLEN, "%s: still isolated", v->name);
                        r = -EIO;
                }
        }
        if (r == 0)
                add_str(resp, "state", vm_state_name(v->state));
        pthread_mutex_unlock(&v->lock);
        return r;
}

/* discard: the standby drops its replica (and its hot-standby QEMU) at
 * the request of a primary that is alive and in contact but lost the
 * replication stream (havmsd, rule S2 in docs/failover.md): once it is
 * gone this host can no longer take over, so the primary may release its
 * held output. Refused where this host runs the VM. */
static int cmd_discard(struct daemon *d, struct vm *v, json_object *args, json_object *resp, char *err)
{
        pthread_mutex_lock(&v->lock);
        enum vm_state st = v->state;
        if (vm_state_is_primary(st) || st == VM_ACTIVATING) {
                pthread_mutex_unlock(&v->lock);
                snprintf(err, ERRLEN, "%s is %s on %s: only a standby's replica can be discarded",
                         v->name, vm_state_name(st), d->host.name);
                return -EINVAL;
        }
        /* The whole discard runs under a reservation (thread_running, as a
         * session holds it): a HELLO arriving meanwhile waits for it (same
         * primary) or is refused busy, instead of reserving the VM between
         * the session's end and the replica's release (which then freed
         * the replica under a running session). */
        if (v->thread_running && v->conn_fd >= 0)
                shutdown(v->conn_fd, SHUT_RDWR);
        while (v->thread_running)
                pthread_cond_wait(&v->changed, &v->lock);
        st = v->state;
        if (vm_state_is_primary(st) || st == VM_ACTIVATING) { /* cannot happen: control only */
                pthread_mutex_unlock(&v->lock);
                snprintf(err, ERRLEN, "%s became %s on %s", v->name, vm_state_name(st), d->host.name);
                return -EBUSY;
        }
        bool had = v->replica != NULL || v->qemu != NULL || st != VM_DEFINED;
        v->thread_running = true;
        uint64_t gen = v->generation;
        pthread_mutex_unlock(&v->lock);
        backup_discard(d, v);
        pthread_mutex_lock(&v->lock);
        vm_set_state(v, VM_DEFINED);
        v->conn_fd = -1;
        v->link_up = false;
        if (had)
                vm_set_exit(v, "discarded");
        v->thread_running = false;
        pthread_cond_broadcast(&v->changed);
        pthread_mutex_unlock(&v->lock);
        /* No replica here (defined): nothing to discard, and that is the
         * answer the primary needs ("this host cannot take over"). */
        if (had)
                log_msg(LOG_LVL_NOTICE, MSG_BK_DISCARDED, v->name, -1,
                        "replica of generation %llu discarded on request: this host can no "
                        "longer take the VM over", (unsigned long long)gen);
        json_object_object_add(resp, "discarded", json_object_new_boolean(had));
        add_int(resp, "generation", (int64_t)gen);
        return 0;
}

/* Wait (lock held) until the state leaves `from`, at most timeout_ms. */
static void wait_state_change(struct vm *v, enum vm_state from, int timeout_ms)
{
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += timeout_ms / 1000;
        ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
        if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
        }
        while (v->state == from && pthread_cond_timedwait(&v->changed, &v->lock, &ts) == 0)
                ;
}

/* pause: one more checkpoint, then the VM stays paused and the replica is
 * identical to guest RAM (a consistent point to compare, back up or hand
 * over from); resume: continue it. */
static int cmd_pause(struct daemon *d, struct vm *v, json_object *args, json_object *resp, char *err)
{
        pthread_mutex_lock(&v->lock);
        int r = 0;
        if (v->state != VM_PROTECTED) {
                snprintf(err, ERRLEN, "%s is %s on %s: pause needs it protected", v->name,
                         vm_state_name(v->state), d->host.name);
                r = -EINVAL;
        } else if ((r = primary_hold(v, true)) == 0) {
                wait_state_change(v, VM_PROTECTED, 10000);
                if (v->state != VM_HELD) {
                        snprintf(err, ERRLEN, "%s: no checkpoint committed (now %s)", v->name,
                                 vm_state_name(v->state));
                        v->hold_requested = false;
                        r = -EIO;
                }
        }
        if (r == 0)
                add_int(resp, "epoch", (int64_t)v->committed_epoch);
        pthread_mutex_unlock(&v->lock);
        return r;
}

/* handover: a planned switchover, the first half (docs/failback.md). One
 * more checkpoint with the VM stopped, then the standby is told to keep
 * that replica, then the VM is powered off here (its RAM file kept). The
 * caller (havmsd) then lets the cluster activate the standby. Returns
 * once our copy is dead; on failure the VM runs on here. */
static int cmd_handover(struct daemon *d, struct vm *v, json_object *args, json_object *resp, char *err)
{
        uint64_t t0 = now_ms();
        pthread_mutex_lock(&v->lock);
        int r = 0;
        if (v->state != VM_PROTECTED && v->state != VM_HELD) {
                snprintf(err, ERRLEN, "%s is %s on %s: a switchover needs it protected", v->name,
                         vm_state_name(v->state), d->host.name);
                pthread_mutex_unlock(&v->lock);
                return -EINVAL;
        }
        char peer[CFG_NAME_MAX];
        snprintf(peer, sizeof(peer), "%s", v->peer);
        v->handover_requested = true;
        v->handover_result = 1;
        if ((r = primary_hold(v, true)) == 0) {
                /* a checkpoint (its ACK: ack_timeout_ms at most) and the
                 * goodbye's answer (as long again), with room for the
                 * epoch's cadence */
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                uint64_t ms = 2ull * v->cfg.ack_timeout_ms + 5000;
                ts.tv_sec += (time_t)(ms / 1000);
                while (v->handover_result == 1 &&
                       pthread_cond_timedwait(&v->changed, &v->lock, &ts) == 0)
                        ;
                /* Once the thread has started the goodbye (2) it is no
                 * longer ours to cancel: wait for its outcome, which the
                 * goodbye's own deadline bounds. */
                while (v->handover_result == 2)
                        pthread_cond_wait(&v->changed, &v->lock);
                r = v->handover_result == 1 ? -ETIMEDOUT : v->handover_result;
        }
        if (r < 0) {
                /* still 1: the thread never started it, and now never will
                 * (it checks the flag under this lock) */
                v->handover_requested = false;
                v->hold_requested = false;
                snprintf(err, ERRLEN, "handover of %s to %s failed: %s; it runs on here (%s)",
                         v->name, peer, strerror(-r), vm_state_name(v->state));
        } else {
                add_int(resp, "generation", (int64_t)v->generation);
                add_int(resp, "epoch", (int64_t)v->committed_epoch);
                add_str(resp, "standby", peer);
                add_int(resp, "handover_ms", (int64_t)(now_ms() - t0));
        }
        pthread_mutex_unlock(&v->lock);
        return r;
}

static int cmd_resume(struct daemon *d, struct vm *v, json_object *args, json_object *resp, char *err)
{
        pthread_mutex_lock(&v->lock);
        int r = 0;
        if (v->state != VM_HELD) {
                snprintf(err, ERRLEN, "%s is %s on %s, not paused by havms", v->name,
                         vm_state_name(v->state), d->host.name);
                r = -EINVAL;
        } else if ((r = primary_hold(v, false)) == 0) {
                wait_state_change(v, VM_HELD, 10000);
        }
        pthread_mutex_unlock(&v->lock);
        return r;
}

/* ---- reading ---- */

static int cmp_float(const void *a, const void *b)
{
        float x = *(const float *)a, y = *(const float *)b;
        return x < y ? -1 : x > y;
}

/* Percentile p (0..100) of field at byte offset off in the records
 * counted of a ring (rec_size bytes each, ring records). */
enum field_kind { FK_FLOAT, FK_U32, FK_U64 };

static double ring_pct(const void *base, size_t rec_size, size_t ring, size_t off,
                       enum field_kind kind, double p, float *tmp, size_t n, uint64_t first)
{
        if (!n)
                return 0;
        for (size_t i = 0; i < n; i++) {
                const uint8_t *e = (const uint8_t *)base + ((first + i) % ring) * rec_size;
                tmp[i] = kind == FK_U32 ? (float)*(const uint32_t *)(e + off)
                         : kind == FK_U64 ? (float)*(const uint64_t *)(e + off)
                                          : *(const float *)(e + off);
        }
        qsort(tmp, n, sizeof(float), cmp_float);
        size_t k = (size_t)ceil(p / 100.0 * (double)n);
        return tmp[k ? k - 1 : 0];
}

/* ... of the epochs counted (the primary's ring) */
static double pct(const struct vm *v, size_t off, enum field_kind kind, double p, float *tmp, size_t n,
                  uint64_t first)
{
        return ring_pct(v->stats, sizeof(v->stats[0]), STATS_RING, off, kind, p, tmp, n, first);
}

/* The parts of a pause or a commit: named float fields of a ring's records */
struct part {
        const char *name;
        size_t off;
};
#define PART(rec, field) { #field, offsetof(struct rec, field##_ms) }
static const struct part pause_parts[] = {
        PART(epoch_stat, stop), PART(epoch_stat, scan), PART(epoch_stat, copy),
        PART(epoch_stat, devstate), PART(epoch_stat, barrier), PART(epoch_stat, cont),
};
/* where held output waits, outside the pause */
static const struct part commit_parts[] = {
        PART(epoch_stat, to_output), PART(epoch_stat, out_wait), PART(epoch_stat, prestop),
        PART(epoch_stat, send), PART(epoch_stat, ack), PART(epoch_stat, release),
};
static const struct part standby_parts[] = {
        PART(standby_stat, recv), PART(standby_stat, persist), PART(standby_stat, disk),
        PART(standby_stat, fsync), PART(standby_stat, pages),
};
#undef PART

/* One object: the p50 of each part over the n records from first. */
static json_object *parts_p50(const void *base, size_t rec_size, size_t ring,
                              const struct part *parts, size_t nparts, float *tmp, size_t n,
                              uint64_t first)
{
        json_object *o = json_object_new_object();
        for (size_t i = 0; i < nparts; i++)
                add_dbl(o, parts[i].name,
                        ring_pct(base, rec_size, ring, parts[i].off, FK_FLOAT, 50, tmp, n, first));
        return o;
}

/* The standby's commits, p50 of each part (docs/output-commit.md). */
static void standby_parts_json(json_object *o, struct vm *v)
{
        uint64_t from = v->sb_stats_from;
        if (v->n_sb_stats - from > SB_STATS_RING)
                from = v->n_sb_stats - SB_STATS_RING;
        size_t n = (size_t)(v->n_sb_stats - from);
        if (!n)
                return;
        float *tmp = calloc(n, sizeof(float));
        if (!tmp)
                return;
        json_object *parts = parts_p50(v->sb_stats, sizeof(v->sb_stats[0]), SB_STATS_RING,
                                       standby_parts, ARRAY_SIZE(standby_parts), tmp, n, from);
        add_int(o, "standby_commits", (int64_t)n);
        json_object_object_add(o, "standby_parts_ms_p50", parts);
        free(tmp);
}

static json_object *stats_json(struct vm *v)
{
        json_object *o = json_object_new_object();
        uint64_t from = v->stats_from;
        if (v->n_stats - from > STATS_RING)
                from = v->n_stats - STATS_RING;
        size_t n = (size_t)(v->n_stats - from);
        float *tmp = calloc(n ? n : 1, sizeof(float));
        if (!tmp)
                return o;
#define F(field) offsetof(struct epoch_stat, field)
        add_int(o, "epochs", (int64_t)n);
        add_dbl(o, "pause_ms_p50", pct(v, F(pause_ms), FK_FLOAT, 50, tmp, n, from));
        add_dbl(o, "pause_ms_p99", pct(v, F(pause_ms), FK_FLOAT, 99, tmp, n, from));
        add_dbl(o, "pause_ms_max", pct(v, F(pause_ms), FK_FLOAT, 100, tmp, n, from));
        json_object_object_add(o, "pause_parts_ms_p50",
                               parts_p50(v->stats, sizeof(v->stats[0]), STATS_RING, pause_parts,
                                         ARRAY_SIZE(pause_parts), tmp, n, from));
        add_dbl(o, "commit_ms_p50", pct(v, F(commit_ms), FK_FLOAT, 50, tmp, n, from));
        json_object_object_add(o, "commit_parts_ms_p50",
                               parts_p50(v->stats, sizeof(v->stats[0]), STATS_RING, commit_parts,
                                         ARRAY_SIZE(commit_parts), tmp, n, from));
        add_dbl(o, "commit_ms_p99", pct(v, F(commit_ms), FK_FLOAT, 99, tmp, n, from));
        add_dbl(o, "dirty_pages_p50", pct(v, F(dirty_pages), FK_U32, 50, tmp, n, from));
        add_dbl(o, "raw_bytes_per_epoch_p50", pct(v, F(raw_bytes), FK_U64, 50, tmp, n, from));
        add_dbl(o, "wire_bytes_per_epoch_p50", pct(v, F(wire_bytes), FK_U64, 50, tmp, n, from));
        add_dbl(o, "disk_bytes_per_epoch_p50", pct(v, F(disk_bytes), FK_U64, 50, tmp, n, from));
        add_dbl(o, "prestop_pages_p50", pct(v, F(prestop_pages), FK_U32, 50, tmp, n, from));
        uint64_t raw = 0, wire = 0, early = 0, hits = 0, misses = 0, sent_prestop = 0, resent = 0;
        for (size_t i = 0; i < n; i++) {
                const struct epoch_stat *e = &v->stats[(from + i) % STATS_RING];
                raw += e->raw_bytes;
                wire += e->wire_bytes;
                early += e->early;
                hits += e->delta_hits;
                misses += e->delta_misses;
                sent_prestop += e->prestop_pages;
                resent += e->resent_pages;
        }
        /* pages sent before the stop (docs/checkpoint.md), and those of
         * them written again before it (sent twice) */
        add_int(o, "pages_sent_prestop", (int64_t)sent_prestop);
        add_int(o, "pages_resent", (int64_t)resent);
        add_int(o, "epochs_early", (int64_t)early);
        add_dbl(o, "compression_ratio", wire ? (double)raw / (double)wire : 0);
        /* epoch pages found in the delta cache: the share sent as XOR deltas */
        add_int(o, "delta_cache_mib", v->cfg.delta_cache_mib);
        add_int(o, "delta_cache_hits", (int64_t)hits);
        add_int(o, "delta_cache_misses", (int64_t)misses);
        add_dbl(o, "delta_cache_hit_ratio",
                hits + misses ? (double)hits / (double)(hits + misses) : 0);
#undef F
        free(tmp);
        standby_parts_json(o, v);
        return o;
}

/* What the VM's I/O paths are doing: output held per NIC, and per disk
 * the writes made while no standby had them (what failback must resync). */
static void io_json(json_object *o, const struct qemu_vm *q)
{
        json_object *nics = json_object_new_array();
        for (unsigned i = 0; i < q->n_net; i++) {
                struct netbuf_stats ns;
                netbuf_get_stats(q->net[i], &ns);
                json_object *n = json_object_new_object();
                add_int(n, "held_bytes", (int64_t)ns.held_bytes);
                add_int(n, "held_bytes_max", (int64_t)ns.held_bytes_max);
                add_int(n, "frames_out", (int64_t)ns.frames_out);
                add_int(n, "frames_in", (int64_t)ns.frames_in);
                add_int(n, "frames_dropped", (int64_t)ns.frames_dropped);
                json_object_array_add(nics, n);
        }
        json_object_object_add(o, "nics", nics);
        json_object *disks = json_object_new_array();
        static const char *const modes[] = { "alone", "sync", "log" };
        for (unsigned i = 0; i < q->n_disk; i++) {
                struct blockrepl_stats bs;
                blockrepl_get_stats(q->disk[i], &bs);
                json_object *dj = json_object_new_object();
                add_str(dj, "mode", modes[blockrepl_get_mode(q->disk[i])]);
                add_int(dj, "size", (int64_t)blockrepl_size(q->disk[i]));
                add_int(dj, "unsynced_blocks", (int64_t)blockrepl_bitmap_count(q->disk[i]));
                add_int(dj, "bytes_written", (int64_t)bs.bytes_written);
                add_int(dj, "bytes_read", (int64_t)bs.bytes_read);
                add_int(dj, "log_waits", (int64_t)bs.log_waits);
                add_int(dj, "flushes", (int64_t)bs.flushes);
                add_int(dj, "flushes_deferred", (int64_t)bs.flushes_deferred);
                json_object_array_add(disks, dj);
        }
        json_object_object_add(o, "disks", disks);
}

static json_object *vm_json(struct daemon *d, struct vm *v)
{
        json_object *o = json_object_new_object();
        pthread_mutex_lock(&v->lock);
        add_str(o, "name", v->name);
        add_str(o, "state", vm_state_name(v->state));
        add_str(o, "role", vm_state_is_primary(v->state) ? "primary"
                           : v->state == VM_DEFINED ? "none" : "backup");
        add_str(o, "host", d->host.name);
        add_str(o, "peer", v->peer);
        bool replicating = v->state == VM_SYNCING || v->state == VM_PROTECTED || v->state == VM_HELD ||
                           v->state == VM_DEGRADED || v->state == VM_ISOLATED ||
                           v->state == VM_CONNECTING ||
                           v->state == VM_BK_SYNCING || v->state == VM_BK_STANDBY ||
                           v->state == VM_BK_ORPHANED;
        add_str(o, "link", !replicating ? "none" : v->link_up ? "up" : "down");
        add_int(o, "epoch", (int64_t)v->epoch);
        add_int(o, "committed_epoch", (int64_t)v->committed_epoch);
        add_int(o, "generation", (int64_t)v->generation);
        add_str(o, "last_exit", v->last_exit);
        if (v->unprotected_by_operator)
                json_object_object_add(o, "unprotected_by_operator", json_object_new_boolean(1));
        add_str(o, "mode", d->host.managed ? "managed" : "manual");
        add_int(o, "epoch_ms", v->cfg.epoch_ms);
        /* lag: on the primary, how old the state the replica holds is (the
         * committed epoch's stop time); on the standby, time since the last
         * commit by its own clock (the primary's clock may differ) */
        uint64_t since = vm_state_is_primary(v->state) ? v->last_stop_wall_ms : v->last_commit_wall_ms;
        int64_t lag = since ? (int64_t)(wall_ms() - since) : -1;
        add_int(o, "lag_ms", replicating && v->committed_epoch ? lag : -1);
        if (v->n_stats)
                add_dbl(o, "last_pause_ms", v->stats[(v->n_stats - 1) % STATS_RING].pause_ms);
        if (v->state == VM_SYNCING) {
                json_object *s = json_object_new_object();
                double el = (double)(wall_ms() - v->sync.started_ms) / 1000.0;
                double pc = v->sync.total_bytes ? 100.0 * (double)v->sync.sent_bytes /
                                                          (double)v->sync.total_bytes : 0;
                double rate = el > 0 ? (double)v->sync.sent_bytes / 1048576.0 / el : 0;
                add_str(s, "phase", v->sync.phase ? v->sync.phase : "");
                add_dbl(s, "percent", pc);
                add_dbl(s, "mib_s", rate);
                add_dbl(s, "eta_s", rate > 0 ? (double)(v->sync.total_bytes - v->sync.sent_bytes) /
                                                       1048576.0 / rate : -1);
                add_int(s, "round", v->sync.round);
                add_int(s, "round_pages", (int64_t)v->sync.last_round_pages);
                add_str(s, "memory", v->sync.mem_reseed ? "re-seed" : "full");
                add_int(s, "wire_bytes", (int64_t)v->sync.wire_bytes);
                json_object_object_add(o, "sync", s);
        } else if (v->sync.ended_ms && vm_state_is_primary(v->state)) {
                /* what the last (re-)sync moved: failback's figures */
                json_object *s = json_object_new_object();
                add_int(s, "ms", (int64_t)(v->sync.ended_ms - v->sync.started_ms));
                add_str(s, "memory", v->sync.mem_reseed ? "re-seed" : "full");
                add_int(s, "pages_same", (int64_t)v->sync.pages_same);
                add_int(s, "pages_sent", (int64_t)v->sync.pages_sent);
                add_int(s, "precopy_pages", (int64_t)v->sync.precopy_pages);
                add_int(s, "disks_incremental", v->sync.disks_incremental);
                add_int(s, "disks_full", v->sync.disks_full);
                add_int(s, "disk_blocks", (int64_t)v->sync.disk_blocks);
                add_int(s, "disk_sent_bytes", (int64_t)v->sync.disk_sent_bytes);
                add_int(s, "hash_bytes", (int64_t)v->sync.hash_bytes);
                add_int(s, "wire_bytes", (int64_t)v->sync.wire_bytes);
                json_object_object_add(o, "last_sync", s);
        }
        if (v->qemu) {
                add_int(o, "qemu_pid", v->qemu->pid);
                add_str(o, "accel", v->qemu->accel);
                io_json(o, v->qemu);
        }
        if (v->activation_ms)
                add_int(o, "activation_ms", (int64_t)v->activation_ms);
        add_int(o, "epochs_failed", (int64_t)v->epochs_failed);
        if (v->persist_ms_max > 0) { /* backup: saving the device state per commit */
                add_dbl(o, "devstate_persist_ms_last", v->persist_ms_last);
                add_dbl(o, "devstate_persist_ms_max", v->persist_ms_max);
        }
        if (v->last_error[0])
                add_str(o, "last_error", v->last_error);
        pthread_mutex_unlock(&v->lock);
        return o;
}

static int cmd_status(struct daemon *d, struct vm *v, json_object *args, json_object *resp, char *err)
{
        json_object *arr = json_object_new_array();
        if (v) {
                json_object_array_add(arr, vm_json(d, v));
        } else {
                pthread_mutex_lock(&d->table_lock);
                unsigned n = d->n_vms;
                struct vm *list[DAEMON_MAX_VMS];
                memcpy(list, d->vms, n * sizeof(*list));
                pthread_mutex_unlock(&d->table_lock);
                for (unsigned i = 0; i < n; i++)
                        json_object_array_add(arr, vm_json(d, list[i]));
        }
        add_str(resp, "host", d->host.name);
        /* what accel = auto means here, and why (lib/accel.h) */
        static const char *const basis[] = {
                [ACCEL_BASIS_ENV] = "env", [ACCEL_BASIS_NO_KVM] = "no_kvm",
                [ACCEL_BASIS_PROBE_OK] = "probe_ok", [ACCEL_BASIS_PROBE_FAILED] = "probe_failed",
                [ACCEL_BASIS_PROBE_ERROR] = "probe_error",
        };
        json_object *acc = json_object_new_object();
        add_str(acc, "auto", d->accel.accel);
        add_str(acc, "basis", basis[d->accel.basis]);
        add_str(acc, "why", d->accel.why);
        add_int(acc, "probe_ms", d->accel.probe_ms);
        json_object_object_add(resp, "accel", acc);
        json_object_object_add(resp, "vms", arr);
        return 0;
}

static int cmd_stats(struct daemon *d, struct vm *v, json_object *args, json_object *resp, char *err)
{
        pthread_mutex_lock(&v->lock);
        if (arg_bool(args, "reset")) {
                v->stats_from = v->n_stats;
                v->sb_stats_from = v->n_sb_stats;
        }
        json_object_object_add(resp, "stats", stats_json(v));
        add_int(resp, "epoch_ms", v->cfg.epoch_ms);
        pthread_mutex_unlock(&v->lock);
        return 0;
}

enum vm_rule { VM_NONE, VM_OPTIONAL, VM_REQUIRED };

static const struct command {
        const char *name;
        enum vm_rule vm;
        cmd_fn fn;
} commands[] = {
        { "start", VM_REQUIRED, cmd_start },
        { "stop", VM_REQUIRED, cmd_stop },
        { "kill", VM_REQUIRED, cmd_kill },
        { "protect", VM_REQUIRED, cmd_protect },
        { "unprotect", VM_REQUIRED, cmd_unprotect },
        { "activate", VM_REQUIRED, cmd_activate },
        { "release", VM_REQUIRED, cmd_release },
        { "discard", VM_REQUIRED, cmd_discard },
        { "pause", VM_REQUIRED, cmd_pause },
        { "handover", VM_REQUIRED, cmd_handover },
        { "resume", VM_REQUIRED, cmd_resume },
        { "status", VM_OPTIONAL, cmd_status },
        { "stats", VM_REQUIRED, cmd_stats },
};

json_object *daemon_dispatch(struct daemon *d, json_object *req)
{
        json_object *resp = json_object_new_object();
        char err[ERRLEN] = "";
        const char *cmd = arg_str(req, "cmd"), *vmname = arg_str(req, "vm");
        json_object *args = NULL;
        json_object_object_get_ex(req, "args", &args);
        int r = -EINVAL;
        const struct command *c = NULL;
        for (size_t i = 0; cmd && i < ARRAY_SIZE(commands); i++)
                if (!strcmp(commands[i].name, cmd))
                        c = &commands[i];
        if (!c) {
                snprintf(err, sizeof(err), "unknown command '%s'", cmd ? cmd : "");
                goto out;
        }
        struct vm *v = NULL;
        if (c->vm == VM_REQUIRED && !vmname) {
                snprintf(err, sizeof(err), "%s needs a VM name", c->name);
                goto out;
        }
        if (vmname && (r = daemon_vm(d, vmname, true, &v, err, sizeof(err))) < 0)
                goto out;
        r = c->fn(d, v, args, resp, err);
out:
        json_object_object_add(resp, "ok", json_object_new_boolean(r == 0));
        if (r < 0)
                add_str(resp, "error", err[0] ? err : strerror(-r));
        return resp;
}
