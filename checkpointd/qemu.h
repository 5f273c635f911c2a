/* qemu: one QEMU process running (or waiting to run) one VM on this host.
 *
 * Owns: the QEMU command line (guest RAM in a shared memory-backend-file,
 * -nodefaults, a QMP socket, the uffd preload library), the process, its
 * QMP connection, the I/O paths that live exactly as long as the process —
 * one netbuf per NIC (output commit) and one blockrepl per disk (NBD server,
 * disk epochs) — and the VM-level operations built on QMP: stop,
 * cont, device-state save (migration to an fd with x-ignore-shared, so only
 * device state travels, never the shared RAM), device-state load into an
 * -incoming QEMU, announce-self. Does not own: guest RAM contents or
 * replication (primary.c / backup.c), dirty tracking (lib/tracker).
 *
 * QEMU is never daemonized: the uffd the tracker needs is bound to the
 * address space it was created in (docs/tracker.md). It is started in a
 * session of its own, stdio on /dev/null and its log file, no parent-death
 * signal: it outlives a crash of checkpointd, and the next checkpointd
 * adopts it (qemu_adopt; docs/checkpoint.md, "Restart of checkpointd"):
 * its disks' NBD client reconnects by itself (reconnect-delay) and its
 * NICs listen (-netdev stream,server=on), so both I/O paths come back.
 */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "blockrepl.h"
#include "config.h"
#include "netbuf.h"
#include "qmp.h"

struct qemu_vm {
        char name[CFG_NAME_MAX];
        pid_t pid;
        int pidfd;
        struct qmp *qmp;
        char ram_path[CFG_PATH_MAX + 64];
        char qmp_path[CFG_PATH_MAX + 64];
        char console_path[CFG_PATH_MAX + 64];
        uint64_t ram_bytes;
        char accel[8];      /* accelerator it runs with: "kvm" or "tcg" */
        bool incoming;      /* started with -incoming defer, not yet loaded */
        int ds_fd;          /* our end of the armed device-state channel, or -1 */
        bool exited;
        int exit_status;    /* waitpid status; -1 when unknown (adopted) */
        bool adopted;       /* started by an earlier checkpointd: not our child
                               (init reaps it); its exit shows on the pidfd */
        uint64_t start_time;/* /proc/PID/stat starttime: tells pid reuse apart */
        struct netbuf *net[CFG_MAX_NICS];       /* one per NIC, opened before QEMU */
        unsigned n_net;
        struct blockrepl *disk[CFG_MAX_DISKS];  /* one per disk, opened before QEMU */
        unsigned n_disk;
};

enum qemu_start_mode {
        QEMU_START_FRESH,    /* new guest: RAM file recreated, boots from scratch */
        QEMU_START_INCOMING, /* hot standby: RAM file is the replica, waits paused */
};

int qemu_launch(const struct host_config *h, const struct vm_config *c,
                enum qemu_start_mode mode, struct qemu_vm **ret, char *err, size_t errlen);
/* Take over a QEMU that an earlier checkpointd started and left running
 * (pid, with start_time as /proc says): open its I/O paths again (NBD
 * servers, NIC relays; with hold_output the NICs buffer from the first
 * frame), connect QMP, end a device-state migration the dead daemon left
 * and make sure the guest runs. -ESRCH: no such process (any more);
 * -EOPNOTSUPP: a NIC on the plug backend (QEMU holds the tap itself).
 * On any other failure the QEMU is killed: it cannot run on without its
 * disks and NICs, and the caller reports a crash (the standby may take
 * over). */
int qemu_adopt(const struct host_config *h, const struct vm_config *c, pid_t pid,
               uint64_t start_time, const char *accel, bool hold_output,
               struct qemu_vm **ret, char *err, size_t errlen);
/* SIGKILL the process pid if its start time is start_time (through a
 * pidfd: no pid reuse race); waits up to 5 s for it to die. */
void qemu_kill_pid(pid_t pid, uint64_t start_time);
/* starttime of pid (field 22 of /proc/PID/stat). */
int qemu_proc_start_time(pid_t pid, uint64_t *ret);
/* SIGKILL if still running, reap, close QMP. Accepts NULL. */
void qemu_destroy(struct qemu_vm *q);
/* Ask QEMU to quit cleanly; falls back to SIGKILL after timeout_ms. */
void qemu_quit(struct qemu_vm *q, int timeout_ms);
/* Non-blocking: has the process exited? Reaps it if so. */
bool qemu_exited(struct qemu_vm *q);
/* Wait up to timeout_ms for QEMU to exit (its pidfd); true if it has. An
 * epoch that fails while QEMU is dying must be taken for the VM's end, not
 * for the standby's loss (which would start the discard handshake). */
bool qemu_wait_exit(struct qemu_vm *q, int timeout_ms);

int qemu_cont(struct qemu_vm *q, int timeout_ms);
/* One-time migration settings: x-ignore-shared, events, no bandwidth cap. */
int qemu_migration_setup(struct qemu_vm *q, int timeout_ms);
/* Device state (everything but the shared guest RAM), in three steps so
 * that only the middle one falls in the VM's pause:
 *   arm   - hand QEMU the channel (getfd); before `stop`, best right after
 *           the previous epoch's commit: the round trip then leaves the
 *           path from the guest's output to its release. Once armed, a
 *           call does nothing until save used the channel.
 *   save  - with the VM stopped: migrate into the channel, read it to EOF
 *           into *buf (grown as needed, reused across calls)
 *   check - after `cont`: QEMU's verdict on the migration (event); a
 *           stream that QEMU says failed must not be committed. */
int qemu_devstate_arm(struct qemu_vm *q, int timeout_ms);
/* Forget an armed channel (QEMU's side may be gone with its monitor
 * connection: a reconnected QMP arms afresh). */
void qemu_devstate_disarm(struct qemu_vm *q);
int qemu_save_devstate(struct qemu_vm *q, uint8_t **buf, size_t *cap,
                       size_t *ret_len, int timeout_ms);
int qemu_devstate_check(struct qemu_vm *q, int timeout_ms);
/* Wall-clock time (µs) at which QEMU stopped (resumed) the VM, from its
 * STOP (RESUME) event queued since the device state was armed; fallback
 * if there is none. */
uint64_t qemu_stop_time_us(struct qemu_vm *q, uint64_t fallback);
uint64_t qemu_resume_time_us(struct qemu_vm *q, uint64_t fallback);
/* Load a device state into an -incoming QEMU. The VM stays paused. */
int qemu_load_devstate(struct qemu_vm *q, const uint8_t *buf, size_t len, int timeout_ms);
/* Tell the LAN where the NICs are now (RARP via announce-self). */
int qemu_announce(struct qemu_vm *q, int timeout_ms);

/* Deterministic names of a VM's files on a host. */
void qemu_ram_path(const struct host_config *h, const char *vm, char *buf, size_t len);
void qemu_tap_name(const char *vm, unsigned idx, char *buf, size_t len);

/* Output commit and disk epochs over all NICs / disks of the VM. */
void qemu_net_buffering(struct qemu_vm *q, bool on);
int qemu_net_barrier(struct qemu_vm *q, uint64_t epoch);
void qemu_net_release(struct qemu_vm *q, uint64_t epoch);
bool qemu_net_waiting(const struct qemu_vm *q);
uint64_t qemu_net_waiting_since(const struct qemu_vm *q); /* earliest, 0 = none */
bool qemu_net_full(const struct qemu_vm *q);
/* Every disk's mode (blockrepl_set_mode); the first error of leaving a
 * flush deferral. */
int qemu_disk_mode(struct qemu_vm *q, enum blockrepl_mode m);
/* Output is held from now on: the disks' flushes are the standby's to
 * keep (blockrepl_defer_flushes); leaving LOG ends it. */
void qemu_disk_defer_flushes(struct qemu_vm *q);
