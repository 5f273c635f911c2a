/* daemon: checkpointd's process-wide state and its one event loop.
 *
 * Owns: the host configuration, the table of VMs this host knows, the
 * control socket (havmsctl), the replication listener (primaries of VMs
 * this host backs up connect here), reaping QEMU children. Each VM in
 * protection has one replication thread (primary.c or backup.c); the
 * control thread never blocks on a replication socket.
 */
#pragma once
#include <json-c/json.h>
#include <stdbool.h>

#include "accel.h"
#include "config.h"
#include "vm.h"

#define DAEMON_MAX_VMS 64

struct daemon {
        struct host_config host;
        struct accel_choice accel;  /* what accel = auto means here, probed at start */
        pthread_mutex_t table_lock;
        struct vm *vms[DAEMON_MAX_VMS];
        unsigned n_vms;
        int ctl_fd, repl_fd, epoll_fd, signal_fd;
        volatile bool quit;
};

/* managed: --managed, overrides [host] managed; known before the VMs that
 * a crashed checkpointd left running are adopted (their protection
 * resumes under the same rule). */
int daemon_init(struct daemon *d, const char *config_path, bool managed, char *err,
                size_t errlen);
int daemon_run(struct daemon *d);
void daemon_shutdown(struct daemon *d);
/* End protection (if any), power the VM off here (QMP quit), state defined. */
void daemon_stop_vm(struct daemon *d, struct vm *v);

/* Watch q's pidfd in the event loop (one-shot; call again to re-arm when
 * a replication thread that watched q ends and leaves it running). */
void daemon_watch_qemu(struct daemon *d, struct qemu_vm *q);
/* (Re-)read v's generation file (v->lock held or v not yet shared). */
int daemon_load_generation(struct daemon *d, struct vm *v);

/* Find a VM by name; with create, load its definition and add it. */
int daemon_vm(struct daemon *d, const char *name, bool create, struct vm **ret,
              char *err, size_t errlen);

/* Command handlers (commands.c): fill *resp; return 0 or -errno with
 * resp's "error" set. */
json_object *daemon_dispatch(struct daemon *d, json_object *req);

/* Replication roles (primary.c, backup.c). */
int primary_start(struct daemon *d, struct vm *v, const char *peer, char *err, size_t errlen);
/* Daemon start, v adopted (adopt.h; v->lock held): protection to peer
 * again, by a full re-sync. With output_held the NICs are buffering and
 * stay so until the standby's WELCOME (it dropped its old replica) or
 * `release` (state isolated; without managed mode until the first failed
 * attempt). */
int primary_resume(struct daemon *d, struct vm *v, const char *peer, bool output_held,
                   char *err, size_t errlen);
void primary_stop(struct vm *v);
/* `unprotect` (called without v->lock): end protection, the VM runs on.
 * 0 when protection ended; -EAGAIN in managed mode when the standby did
 * not confirm the goodbye while output was held: the thread stays,
 * ISOLATED, until `release`, a confirmed goodbye or `stop`. */
int primary_unprotect(struct vm *v);
int primary_hold(struct vm *v, bool hold); /* v->lock held */
void backup_accept(struct daemon *d, int fd);
/* generation: 0 = stored + 1; otherwise it must exceed the stored one. */
int backup_activate(struct daemon *d, struct vm *v, bool force, uint64_t generation,
                    char *err, size_t errlen);
/* Daemon start: a committed replica left by an earlier checkpointd makes v
 * backup-orphaned again (persist.h). */
void backup_adopt(struct daemon *d, struct vm *v);
/* Managed mode: end ISOLATED (the cluster says the standby cannot take
 * over); v->lock held. */
int primary_release(struct vm *v);
void backup_discard(struct daemon *d, struct vm *v);
void backup_stop(struct daemon *d, struct vm *v);
