/* disks: checkpointd's side of disk replication — what a VM's disks put on
 * the replication stream, and what the standby does with it.
 *
 * Primary: the initial copy (SYNC_DISK: every 4 KiB block, zero blocks
 * cost 16 bytes) while blockrepl's sync map catches writes made meanwhile,
 * then the epoch logs cut at each barrier (EPOCH_DISK, in write order).
 *
 * Standby: SYNC_DISK goes straight into the standby's image (the replica is
 * not usable during a sync anyway); EPOCH_DISK is staged per disk
 * (br_stage: memory, then a journal) and applied at the epoch's commit,
 * before the ACK, with fdatasync.
 *
 * Incremental resync (docs/failback.md): when both hosts' bitmaps carry the
 * same lineage, only the union of the bitmaps is looked at, and of that
 * only the 4 KiB pieces whose hashes differ are sent.
 *
 * Owns: the standby's image fds, stages, and (from a HELLO to the first
 * commit) its bitmaps. Does not own: the NBD servers
 * (blockrepl, inside the QEMU's I/O set), epochs, the connection.
 */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "bitmap.h"
#include "blockrepl.h"
#include "config.h"
#include "stage.h"
#include "wire.h"

/* Where the primary sends: the connection, its deadline, a buffer. */
struct disk_sender {
        int fd;
        uint64_t timeout_ns;   /* per write to the socket */
        struct wire_buf *wb;
        uint64_t *wire_bytes;  /* added to as records go out */
        uint64_t *done_bytes;  /* copy passes: bytes looked at, added to (atomically, for
                                  status) as they go; NULL = not counted */
        void (*tick)(void *ctx); /* copy passes: called after each block (progress log) */
        void *tick_ctx;
};

/* Copy every block of every disk (dirty_only: only blocks the sync map
 * has marked since they were copied), clearing each block's mark before
 * reading it. *raw gets the bytes read. */
int disks_sync_pass(struct blockrepl *const *disks, unsigned n, struct disk_sender *s,
                    bool dirty_only, uint64_t *raw);

/* Copy every block of disk number `disk` (its records name it). */
int disks_copy_disk(struct blockrepl *b, uint32_t disk, struct disk_sender *s, uint64_t *raw);

/* Which 4 KiB pieces of a block (len bytes, the last block of a disk may
 * be shorter) differ from a DISK_HASHES entry: bit i set = piece i must be
 * sent. */
uint32_t disks_piece_diff(const uint8_t *block, size_t len, const uint8_t *entry);

/* Incremental first pass of one disk: the standby's DISK_HASHES entries
 * (n of them, WIRE_DISK_HASH_ENTRY each, blocks ascending) name the blocks
 * to look at; each block's sync-map mark is cleared before it is read, and
 * only the 4 KiB pieces whose hash differs are sent. *raw gets the bytes
 * sent, *ret_same the pieces the standby already had. */
int disks_resync_pass(struct blockrepl *b, uint32_t disk, const uint8_t *entries, uint64_t n,
                      struct disk_sender *s, uint64_t *raw, uint64_t *ret_same);

/* Send the logs of epoch `epoch` (one per disk) as EPOCH_DISK records,
 * each after the record sent[d] already streamed (sent NULL, or sent[d]
 * NULL: all of it). Adds the entry count and raw data bytes EPOCH_END
 * must announce to *recs and *bytes. */
int disks_send_logs(const struct br_log *logs, unsigned n, const struct br_rec *const *sent,
                    struct disk_sender *s, uint64_t epoch, uint64_t *recs, uint64_t *bytes);
/* Streaming (docs/output-commit.md): send what each disk's OPEN log got
 * since sent[d] as EPOCH_DISK records of `epoch`, the epoch that log
 * becomes at the next barrier; sent[d] moves to the last record sent.
 * Only between a commit and the next barrier, from the epoch thread. */
int disks_stream(struct blockrepl *const *disks, unsigned n, const struct br_rec **sent,
                 struct disk_sender *s, uint64_t epoch, uint64_t *recs, uint64_t *bytes);

/* ---- standby ---- */

struct disk_replica {
        unsigned n;
        int fd[CFG_MAX_DISKS];
        uint64_t bytes[CFG_MAX_DISKS];
        struct br_stage *stage[CFG_MAX_DISKS];
        bool unsynced;        /* SYNC_DISK writes not yet fdatasync'ed */
        uint64_t st_recs, st_bytes; /* what is staged for the epoch in flight */
        uint64_t sync_ns;     /* the last commit's fdatasyncs (0: none needed) */
        uint8_t *scratch;     /* WIRE_DISK_REC_MAX, for LZ4 entries */
        /* resync: this host's bitmaps, open from the HELLO to the first
         * commit (then the hot standby's blockrepl owns the files) */
        struct br_bitmap *bm[CFG_MAX_DISKS];
        bool incremental[CFG_MAX_DISKS]; /* same lineage as the primary's */
        uint8_t *set[CFG_MAX_DISKS];     /* the primary's bitmap, then the union */
        size_t set_len[CFG_MAX_DISKS], set_got[CFG_MAX_DISKS];
        uint64_t new_lineage;            /* recorded at the first commit */
};

/* Can this host take the primary's disks (count, sizes of existing
 * images)? Checked before a HELLO touches anything. */
int disk_replica_check(const struct vm_config *c, const struct wire_hello *hello,
                       char *why, size_t whylen);
/* Open (creating a missing regular file, sparse, of the primary's size)
 * every disk the HELLO announces, check sizes; why gets a sentence for the
 * primary on failure. */
int disk_replica_open(struct disk_replica *r, const struct host_config *h,
                      const struct vm_config *c, const struct wire_hello *hello,
                      char *why, size_t whylen);
void disk_replica_close(struct disk_replica *r);
/* The primary's bitmap of an incremental disk, a chunk at a time (in
 * order); once whole, the union with ours is marked here, durably, before
 * any block of the resync can arrive. -EBADMSG for a chunk out of place.
 * *ret_done says when every incremental disk's bitmap is in. */
int disk_replica_bitmap(struct disk_replica *r, const struct wire_msg *m, bool *ret_done);
/* Hashes of the union's blocks of disk i, for DISK_HASHES: calls emit for
 * each batch of at most max entries. */
int disk_replica_hashes(struct disk_replica *r, unsigned i, uint32_t max,
                        int (*emit)(void *ctx, const uint8_t *entries, uint32_t n), void *ctx,
                        uint64_t *ret_blocks);
/* After the first commit of a sync: the images hold the state the primary
 * named in HELLO: record its lineage, clear the bitmaps (in that order: a
 * crash between leaves a superset), close them. */
int disk_replica_sync_done(struct disk_replica *r);
int disk_replica_sync(struct disk_replica *r, const struct wire_msg *m);
int disk_replica_stage(struct disk_replica *r, const struct wire_msg *m);
/* Apply the staged epoch to the images, durably (an image the epoch did
 * not write is not fdatasync'ed again). On failure the images may hold
 * part of the epoch: the caller must treat the replica as lost. */
int disk_replica_commit(struct disk_replica *r);
void disk_replica_discard(struct disk_replica *r);
