/* blockrepl: one VM disk. Serves a raw image (file or block device) to the
 * local QEMU over NBD on a unix socket, and records every change to it so
 * checkpointd can replicate the disk in epochs (docs/blockrepl.md).
 *
 *   QEMU --NBD--> nbd.c --> blockrepl.c --pwrite--> image
 *                               |
 *                               +--> mode LOG:   epoch log (br_log), cut by
 *                               |                blockrepl_barrier() in the pause
 *                               +--> mode SYNC:  sync map (what to copy again)
 *                               +--> every mode, BEFORE the image write:
 *                                                persistent dirty bitmap (bitmap.h);
 *                                                in LOG an activity log, cleared
 *                                                lazily behind the peer's commits
 *
 * Owns: the image fd, the NBD protocol, the epoch log of writes, the sync
 * map and the persistent bitmap. Does not own: the wire to the peer, epochs
 * numbering, QEMU (checkpointd drives all of those).
 *
 * Standby side (br_stage, stage.h): per-epoch buffer of received writes,
 * memory then a journal file, applied to the image at commit.
 */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BR_BLOCK_SIZE (64u * 1024) /* granularity of the bitmap and sync map */

struct blockrepl;

/* Replication mode: what a completed write is recorded in (besides the image). */
enum blockrepl_mode {
        BR_MODE_ALONE = 0, /* no peer: writes mark the persistent bitmap */
        BR_MODE_SYNC = 1,  /* initial copy running: writes mark the sync map
                              (and the persistent bitmap) */
        BR_MODE_LOG = 2,   /* protected: writes are appended to the epoch log */
};

/* One change to the image, in the order it completed. */
enum br_op {
        BR_OP_WRITE = 1, /* data[len] at offset */
        BR_OP_ZERO = 2,  /* len zero bytes at offset */
        BR_OP_TRIM = 3,  /* discard len bytes at offset (reads back zero on files) */
};

struct br_rec {
        struct br_rec *next;
        uint8_t op;           /* enum br_op */
        uint64_t offset;
        uint32_t len;
        uint8_t data[];       /* len bytes for BR_OP_WRITE, else empty */
};

/* The writes of one epoch, cut at the barrier; owned by whoever holds it. */
struct br_log {
        struct br_rec *head, *tail;
        uint64_t n_recs;
        uint64_t data_bytes;  /* sum of data[] sizes */
        uint64_t seq;         /* the barrier that cut it: 1, 2, ... per blockrepl */
};
/* Frees the records; NULL ok. seq is kept (the caller still names the
 * barrier in blockrepl_committed after the log is gone). */
void br_log_free(struct br_log *log);
/* One record with a copy of data (only for BR_OP_WRITE); NULL without memory. */
struct br_rec *br_rec_new(uint8_t op, uint64_t offset, uint32_t len, const void *data);
void br_log_append(struct br_log *log, struct br_rec *rec); /* at the tail, counted */

struct blockrepl_options {
        const char *name;        /* for messages: "<vm>/disk<i>" */
        const char *image;       /* raw file or block device, opened O_RDWR */
        const char *socket_path; /* NBD unix socket to listen on (created, 0600) */
        const char *bitmap_path; /* persistent dirty bitmap; NULL = none */
        uint64_t log_soft_bytes; /* epoch log above this: log_fd becomes readable */
        uint64_t log_hard_bytes; /* epoch log at this: writers wait for a barrier,
                                  * at most 1 s (QEMU also drains on reset or
                                  * exit, when no barrier comes) */
        uint64_t stream_bytes;   /* LOG mode: stream_fd becomes readable each time
                                  * the open log grew by this much; 0 = never */
        bool read_only;
        uint32_t clear_interval_ms; /* LOG mode: at most one bitmap clearing
                                     * boundary per interval; 0 = 2000 */
};

/* Open the image and the bitmap, listen on the socket, start the server
 * thread. Mode starts as BR_MODE_ALONE. */
int blockrepl_open(const struct blockrepl_options *o, struct blockrepl **ret,
                   char *err, size_t errlen);
/* Stop serving (connected clients are cut), close everything. NULL ok. */
void blockrepl_close(struct blockrepl *b);

uint64_t blockrepl_size(const struct blockrepl *b);
int blockrepl_image_fd(const struct blockrepl *b); /* for sync reads and apply */

/* Leaving LOG ends a flush deferral (below): -errno if the image could not
 * be made durable then (the caller must not release output that depends
 * on the guest's flushes: drop it). 0 otherwise. */
int blockrepl_set_mode(struct blockrepl *b, enum blockrepl_mode m);
/* In LOG mode, with the guest's output held until each epoch's ACK:
 * FLUSH and FUA are answered without an fdatasync, the standby keeps them
 * (docs/output-commit.md, "Flushes while protected"). Off (or leaving
 * LOG) makes the image durable first; -errno as for set_mode. Turning it
 * on outside LOG does nothing. */
int blockrepl_defer_flushes(struct blockrepl *b, bool on);
enum blockrepl_mode blockrepl_get_mode(const struct blockrepl *b);

/* Called while the VM is stopped (QEMU has drained its requests): hands
 * over every write completed since the previous barrier and starts an empty
 * log. Writers blocked on log_hard_bytes wake up. ret gets an empty log if
 * nothing was written, and ret->seq the barrier's number (monotonic per
 * blockrepl, never reused). Only in BR_MODE_LOG. */
int blockrepl_barrier(struct blockrepl *b, struct br_log *ret);

/* Streaming the open epoch (docs/output-commit.md): the records appended
 * to the open log after `after` (NULL: from its head) as the chain
 * *ret_first .. *ret_last, which the caller may walk through ->next from
 * first to last (and no further) while writers go on appending. The
 * records stay the log's: the next barrier hands them out with the rest,
 * so `after` must be the last record this returned since that barrier
 * (or NULL), and the caller must be the one that calls barrier and
 * set_mode. *ret_first is NULL when nothing is new; -EINVAL outside LOG. */
int blockrepl_log_since(struct blockrepl *b, const struct br_rec *after,
                        const struct br_rec **ret_first, const struct br_rec **ret_last);
/* eventfd: readable when the open log grew by stream_bytes (see options).
 * Read it to re-arm. */
int blockrepl_stream_fd(const struct blockrepl *b);

/* Every write up to barrier seq is committed on the peer (it applied them
 * and fdatasync'ed: the standby's ACK). Lets blockrepl clear the bits of
 * blocks not written since (lazily, on its own thread: this returns at
 * once). -EINVAL for a barrier not cut yet. See docs/blockrepl.md. */
int blockrepl_committed(struct blockrepl *b, uint64_t seq);

/* The VM is about to stop for the barrier: writers waiting at
 * log_hard_bytes may go on (their requests were issued in this epoch, and
 * QEMU's stop waits for them to complete: waiting for the barrier would
 * deadlock). The limit applies again after the barrier. */
void blockrepl_lift_limit(struct blockrepl *b);

/* eventfd: readable when the open epoch's log passed log_soft_bytes (the
 * primary checkpoints early). Read it to re-arm. */
int blockrepl_log_fd(const struct blockrepl *b);

/* Sync map (BR_MODE_SYNC): the initial copy calls blockrepl_sync_clear() for each
 * block it is about to read (clears its bit: a write that completes later
 * sets it again), and next_sync_dirty() to find blocks to copy again.
 * Returns the block index or -1 when none is set. */
void blockrepl_sync_clear(struct blockrepl *b, uint64_t block);
int64_t blockrepl_sync_next_dirty(struct blockrepl *b, uint64_t from_block);
void blockrepl_sync_mark_all(struct blockrepl *b);

/* Persistent bitmap: a set bit means "this block may differ between this
 * image and the replicated state the lineage names" (bitmap.h). Calls
 * without a bitmap (bitmap_path NULL) do nothing and return 0. */
uint64_t blockrepl_bitmap_count(const struct blockrepl *b);
void blockrepl_bitmap_mark_log(struct blockrepl *b, const struct br_log *log);
uint64_t blockrepl_lineage(const struct blockrepl *b); /* 0: unknown, or no bitmap */
int blockrepl_set_lineage(struct blockrepl *b, uint64_t lineage); /* durable */

/* A (full or incremental) resync whose first epoch was cut at barrier seq
 * is committed on the peer: fdatasyncs the image (on the caller's thread,
 * once per resync), sets the lineage, then clears every bit except the
 * blocks written after barrier seq; durable before return. Turns lazy
 * clearing on until the mode leaves LOG. Only in LOG mode, with seq cut
 * and not older than the last clearing boundary (or the entry into LOG):
 * -EINVAL otherwise, nothing changed. */
int blockrepl_resync_committed(struct blockrepl *b, uint64_t seq, uint64_t lineage);

/* For the resync exchange: the bitmap's length in bytes (0 without one), a
 * consistent copy of it (len must be that length: -EINVAL), and OR-ing
 * another bitmap in (same length; durable). */
size_t blockrepl_bitmap_bytes(const struct blockrepl *b);
int blockrepl_bitmap_copy(struct blockrepl *b, uint8_t *buf, size_t len);
int blockrepl_bitmap_merge(struct blockrepl *b, const uint8_t *bits, size_t len);

/* Counters for status/stats. */
struct blockrepl_stats {
        uint64_t reads, writes, flushes, trims, zeroes;
        uint64_t flushes_deferred; /* answered in LOG without fdatasync: the peer keeps them */
        uint64_t bytes_read, bytes_written;
        uint64_t log_waits;      /* writers that waited on log_hard_bytes */
        uint64_t log_overruns;   /* of which went on after 1 s without a barrier */
        uint64_t bitmap_syncs;   /* writes that marked a clean block (one msync each) */
        uint64_t bitmap_clears;  /* lazy clears done (LOG mode) */
        uint64_t bitmap_cleared; /* blocks they cleared */
        uint32_t clients;        /* connected now */
};
void blockrepl_get_stats(const struct blockrepl *b, struct blockrepl_stats *ret);
