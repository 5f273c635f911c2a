/* persist: what a VM leaves on this host for a later checkpointd.
 *
 * Owns two kinds of files and their formats:
 *
 *   <state_dir>/<vm>.generation  the VM's generation (fencing token) as
 *       this host last saw it: "havms-generation N\n". Written atomically
 *       (temp file, fsync, rename, fsync of the directory). Missing = 0.
 *       Anything else is corrupt and refused: guessing a generation could
 *       let a stale copy push a replica over a newer one.
 *
 *   <ram_dir>/<vm>.devstate  the standby's committed device state, next to
 *       the replica RAM file <ram_dir>/<vm>.ram (same tmpfs, so both
 *       survive a crash of checkpointd and both vanish with the host):
 *
 *         offset size field
 *         0      8    magic "HVMSDEV1"
 *         8      4    state: 1 PENDING (epoch being applied), 2 COMMITTED
 *         12     4    0
 *         16     8    epoch
 *         24     8    generation
 *         32     8    config digest (vm_config_digest)
 *         40     8    ram bytes
 *         48     8    device state length
 *         56     64   primary host name, NUL-padded
 *         120    8    XXH64 of bytes 0..119 with state = 0, then the data
 *         128    ...  device state
 *
 *       A commit writes the new device state as PENDING (in place: the
 *       state word of the old record first), then the replica changes (disk writes, pages), then the
 *       state word becomes COMMITTED (one 4-byte pwrite). A crash in
 *       between leaves PENDING: the replica RAM may be half-applied, and
 *       it is not used. No fsync: the files live in tmpfs and only have to
 *       survive the process, not the host.
 *
 * Does not own: what the generation means (commands.c, backup.c) or the
 * replica RAM itself (backup.c).
 */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "config.h"

/* 0 with *ret (0 if no file); -EUCLEAN with a reason in err if corrupt;
 * -errno if unreadable. */
int persist_generation_load(const struct host_config *h, const char *vm, uint64_t *ret,
                            char *err, size_t errlen);
/* Durable when it returns 0 (the file and its directory are fsync'ed). */
int persist_generation_store(const struct host_config *h, const char *vm, uint64_t gen);

struct devstate_hdr {
        uint64_t epoch;
        uint64_t generation;
        uint64_t config_digest;
        uint64_t ram_bytes;
        char primary[64];
};

/* Replace <vm>.devstate with a PENDING record of (hdr, data). */
int persist_devstate_begin(const struct host_config *h, const char *vm,
                           const struct devstate_hdr *hdr, const uint8_t *data, size_t len);
/* Mark the record written by begin COMMITTED. */
int persist_devstate_commit(const struct host_config *h, const char *vm);
/* Read a COMMITTED record whose checksum holds. *ret_data is malloc'ed.
 * -ENOENT if there is none, -EUCLEAN (reason in err) if it is pending or
 * damaged. */
int persist_devstate_load(const struct host_config *h, const char *vm,
                          struct devstate_hdr *ret_hdr, uint8_t **ret_data, size_t *ret_len,
                          char *err, size_t errlen);
/* The replica is no longer usable: forget its device state. */
void persist_devstate_drop(const struct host_config *h, const char *vm);
