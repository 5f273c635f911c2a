/* adopt: a VM's QEMU outlives a crash of checkpointd, and the next
 * checkpointd takes it over (docs/checkpoint.md, "Restart of checkpointd").
 *
 * Owns the run file of each VM that runs here as primary,
 * <state_dir>/<vm>.run, and its format:
 *
 *   havms-run 1
 *   pid 4242
 *   start_time 1234567        (/proc/PID/stat starttime: tells pid reuse apart)
 *   accel tcg
 *   config_digest 0123456789abcdef
 *   peer b                    (only while protection is on)
 *   output held|free          (held: output is buffered because the standby may
 *                              hold a committed replica; an adopting
 *                              checkpointd holds it until the standby accepts
 *                              a HELLO, which drops that replica)
 *
 * Written whole to a temporary file and renamed (atomic for a process
 * crash; no fsync: a crash of the host kills QEMU too). The socket paths
 * are not in it: they are derived from the VM's name and the host
 * configuration, as at launch (qemu.c).
 *
 * Also owns the decision at daemon start: a VM whose run file names a live
 * QEMU (same pid and start time, same definition) is adopted — its I/O
 * paths reopened (qemu_adopt), state running, and protection restarted
 * toward the recorded peer with output held (primary_resume); a dead or
 * unadoptable one is cleaned up and reported as a crash (`last_exit`
 * crash), so havmsd hands the VM to its standby.
 *
 * Does not own: QEMU's command line and I/O paths (qemu.c), replication
 * (primary.c), the standby's persisted replica (persist.h).
 */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"

struct daemon;
struct vm;

struct run_record {
        pid_t pid;
        uint64_t start_time;
        char accel[8];
        uint64_t config_digest;
        char peer[CFG_NAME_MAX];   /* "" = unprotected */
        bool output_held;
};

/* File level (also for tests). load: 0, -ENOENT (no file), -EUCLEAN with a
 * reason in err (unreadable as a run file). */
int runfile_store(const struct host_config *h, const char *vm, const struct run_record *rec);
int runfile_load(const struct host_config *h, const char *vm, struct run_record *ret,
                 char *err, size_t errlen);
void runfile_drop(const struct host_config *h, const char *vm);

/* v runs here with v->qemu: record it, protected to peer ("" = not) with
 * output held or free. Call with v->lock held (or v not yet shared). A
 * failure is logged, not returned: the VM runs on, a later crash of
 * checkpointd would then stop it. Record "held" BEFORE output is held and
 * "free" only AFTER it was released: a crash in between errs toward
 * holding. */
void adopt_record(struct daemon *d, struct vm *v, const char *peer, bool output_held);
/* The VM no longer runs here (stopped, exited, stale). */
void adopt_forget(struct daemon *d, struct vm *v);
/* Daemon start: adopt v's QEMU if its run file names a live one. Returns
 * true when v's run file existed (adopted, or cleaned up and reported),
 * so that no standby role is adopted for it. */
bool adopt_at_start(struct daemon *d, struct vm *v);
