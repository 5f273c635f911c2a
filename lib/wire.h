/* wire: the replication protocol between a primary and its backup, declared
 * once. Every record is a fixed 32-byte header and a payload:
 *
 *   offset size  field
 *   0      4     magic    "HVMS" (0x534d5648 little-endian)
 *   4      2     version  WIRE_VERSION
 *   6      2     type     enum wire_type
 *   8      4     length   payload bytes, <= WIRE_MAX_PAYLOAD
 *   12     4     flags    0 (reserved; receivers reject non-zero)
 *   16     8     epoch    epoch the record belongs to (0 = none / pre-copy)
 *   24     8     checksum XXH64 of bytes 0..23 followed by the payload
 *
 * All integers are little-endian. A receiver reads the header, checks magic,
 * version, type, flags and length BEFORE it allocates or reads the payload,
 * then checks the checksum before it looks inside. Payload layouts are in
 * docs/wire.md; every parser here checks sizes before it reads.
 *
 * Owns: encoding/decoding and validation. Does not own: sockets policy,
 * what a record means for the replica (checkpointd does that).
 */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WIRE_MAGIC 0x534d5648u
#define WIRE_VERSION 7 /* 2: disks in HELLO and EPOCH_END, SYNC_DISK, EPOCH_DISK;
                           3: generations in HELLO and WELCOME, ERROR STALE;
                           4: re-seed and incremental resync (lineages, bitmaps,
                              hashes), ERROR HANDOVER;
                           5: a page may come twice in an epoch (sent before the stop),
                              EPOCH_END counts page records;
                           6: EPOCH_DEVSTATE chunks may be XOR_LZ4 (a delta
                              against the standby's committed device state);
                           7: page encoding RUNS */
#define WIRE_HDR_SIZE 32
#define WIRE_MAX_PAYLOAD (16u << 20)
#define WIRE_NAME_LEN 64
#define WIRE_ERROR_TEXT_MAX 512
#define WIRE_MAX_DISKS 4
#define WIRE_MAX_NICS 4
#define WIRE_DISK_REC_MAX (1u << 20) /* raw bytes of one EPOCH_DISK entry */

enum wire_type {
        WIRE_HELLO = 1,          /* P->B: who I am, what I protect */
        WIRE_WELCOME = 2,        /* B->P: accepted, ready for pre-copy */
        WIRE_SYNC_PAGES = 3,     /* P->B: pre-copy pages, applied at once */
        WIRE_EPOCH_PAGES = 4,    /* P->B: pages of epoch N, staged */
        WIRE_EPOCH_DEVSTATE = 5, /* P->B: device state chunk of epoch N, staged */
        WIRE_EPOCH_END = 6,      /* P->B: epoch N is complete: commit it */
        WIRE_ACK = 7,            /* B->P: epoch N is committed in the replica */
        WIRE_ERROR = 8,          /* either way: refusal with a reason, then close */
        WIRE_PING = 9,           /* P->B: alive, no epoch coming (VM held) */
        WIRE_SYNC_DISK = 10,     /* P->B: initial copy of disk blocks, applied at once */
        WIRE_EPOCH_DISK = 11,    /* P->B: disk writes of epoch N, staged */
        WIRE_DISK_BITMAP = 12,   /* P->B after HELLO: the primary's bitmap of a disk */
        WIRE_PAGE_HASHES = 13,   /* B->P after WELCOME: hashes of the replica's pages */
        WIRE_DISK_HASHES = 14,   /* B->P after WELCOME: hashes of the resync set's blocks */
        WIRE_HASHES_END = 15,    /* B->P: no more hashes; counts */
        WIRE_NET_FRAMES = 16,    /* P->B before ERROR(HANDOVER): the last epoch's output */
        WIRE_TYPE_MAX = 16,
};

/* Page encodings inside SYNC_PAGES / EPOCH_PAGES. */
enum wire_page_enc {
        WIRE_PAGE_ZERO = 0,    /* all zero, no data */
        WIRE_PAGE_RAW = 1,     /* 4096 bytes */
        WIRE_PAGE_LZ4 = 2,     /* LZ4 block of the page */
        WIRE_PAGE_XOR_LZ4 = 3, /* LZ4 block of (page XOR replica's copy) */
        WIRE_PAGE_RUNS = 4,    /* LZ4 block of the runs of bytes that differ
                                  from the replica's copy (lib/codec.c, v7) */
        WIRE_PAGE_ENC_MAX = 4,
};

/* Error codes carried by WIRE_ERROR (stable, documented in docs/wire.md). */
enum wire_err {
        WIRE_ERR_PROTOCOL = 1, /* malformed or unexpected record */
        WIRE_ERR_UNKNOWN_VM = 2,
        WIRE_ERR_MISMATCH = 3, /* memory size / config differs */
        WIRE_ERR_BUSY = 4,     /* backup is active or already has a primary */
        WIRE_ERR_NOSPACE = 5,  /* backup cannot store the replica */
        WIRE_ERR_INTERNAL = 6,
        WIRE_ERR_SHUTDOWN = 7, /* primary ended protection: discard the replica */
        WIRE_ERR_STALE = 8,    /* HELLO's generation is older than the backup's */
        WIRE_ERR_HANDOVER = 9, /* planned switchover: KEEP the committed replica, the
                                  primary's copy is powered off; the cluster activates */
};

/* Re-seed and incremental resync (docs/failback.md). A hash is XXH3-128
 * of one 4 KiB page or disk block: low 64 bits then high, little-endian. */
#define WIRE_HASH_LEN 16
/* The hash exchange has a deadline per record, not per exchange: a large
 * RAM or resync set takes as long as the standby's reads, while they flow */
#define WIRE_HASH_RECORD_TIMEOUT_NS 30000000000ull
#define WIRE_BLOCK_PAGES 16  /* 4 KiB pieces of one 64 KiB bitmap block */
#define WIRE_BLOCK_SIZE (WIRE_BLOCK_PAGES * 4096u)
#define WIRE_DISK_HASH_ENTRY (8 + WIRE_BLOCK_PAGES * WIRE_HASH_LEN) /* block u64, hashes */
#define WIRE_HELLO_BITMAP(i) (1u << (i))          /* DISK_BITMAP records of disk i follow */
#define WIRE_HELLO_FLAGS_ALL 0xfu
#define WIRE_WELCOME_PAGE_HASHES 1u               /* PAGE_HASHES follow: the replica file has content */
#define WIRE_WELCOME_DISK_INCR(i) (1u << (8 + (i))) /* disk i: incremental, DISK_HASHES follow */
#define WIRE_WELCOME_FLAGS_ALL (1u | (0xfu << 8))

/* A SHUTDOWN whose text starts with this: the guest powered itself off
 * (not a crash, not the operator). The standby discards its replica and
 * records why. */
#define WIRE_SHUTDOWN_GUEST_OFF "guest powered off"

struct wire_hdr {
        uint16_t version;
        uint16_t type;
        uint32_t length;
        uint32_t flags;
        uint64_t epoch;
        uint64_t checksum;
};

struct wire_hello {
        uint32_t page_size;
        uint32_t flags;
        uint64_t ram_bytes;
        uint64_t config_digest;
        char vm[WIRE_NAME_LEN];   /* NUL-terminated on decode */
        char host[WIRE_NAME_LEN]; /* NUL-terminated on decode */
        uint32_t n_disks;         /* <= WIRE_MAX_DISKS */
        uint64_t disk_bytes[WIRE_MAX_DISKS]; /* size of each disk, 0 past n_disks */
        uint64_t generation;      /* the primary's generation of the VM (fencing token) */
        /* v4: per disk, the lineage of the primary's bitmap (0 = history
         * unknown); the lineage both sides record when this sync commits */
        uint64_t disk_lineage[WIRE_MAX_DISKS];
        uint64_t new_lineage;
};

struct wire_welcome {
        uint64_t last_committed; /* epoch the backup holds, 0 if none */
        uint32_t flags;
        uint64_t generation;     /* the backup's generation, after adopting HELLO's */
};

struct wire_epoch_end {
        uint64_t pages;          /* page entries sent in this epoch */
        uint64_t devstate_bytes; /* total device state bytes (decoded) */
        uint64_t stop_wall_ms;   /* primary's wall clock when it stopped the VM */
        uint64_t disk_recs;      /* EPOCH_DISK entries sent in this epoch, all disks */
        uint64_t disk_bytes;     /* their raw (decoded) data bytes */
};

struct wire_ack {
        uint64_t pages_applied;
};

struct wire_error {
        uint32_t code;
        char text[WIRE_ERROR_TEXT_MAX]; /* NUL-terminated on decode */
};

/* One page entry in a PAGES payload. data points into the payload. */
struct wire_page {
        uint64_t pfn;
        uint8_t enc;
        uint32_t len;
        const uint8_t *data;
};

/* One DEVSTATE chunk: bytes [offset, offset+raw_len) of the device state,
 * raw when enc == WIRE_PAGE_RAW (len == raw_len), LZ4-compressed when
 * WIRE_PAGE_LZ4, or (v6) WIRE_PAGE_XOR_LZ4: LZ4 of those bytes XOR the same
 * range of the device state the standby committed last on this connection
 * (past its end: zeros). Compressed forms have 0 < len < raw_len. */
struct wire_devstate {
        uint64_t offset;
        uint32_t raw_len;
        uint8_t enc;
        uint32_t len;
        const uint8_t *data;
};

/* One entry of an EPOCH_DISK payload: a change to the disk, in the order
 * the primary made it. op is enum br_op (1 write, 2 zero, 3 trim); a write
 * carries raw_len bytes, raw (enc WIRE_PAGE_RAW) or LZ4 (WIRE_PAGE_LZ4);
 * zero and trim carry none (enc WIRE_PAGE_ZERO, len 0). */
struct wire_disk_rec {
        uint8_t op;
        uint8_t enc;
        uint32_t raw_len;  /* <= WIRE_DISK_REC_MAX */
        uint64_t offset;
        uint32_t len;      /* bytes of data in the payload */
        const uint8_t *data;
};

/* A piece of a disk's bitmap: bytes [offset, offset+len) of it. */
struct wire_bitmap_chunk {
        uint32_t disk;
        uint64_t offset;
        uint32_t len;
        const uint8_t *bits;
};

/* Hashes of count consecutive pages from first_pfn. */
struct wire_page_hashes {
        uint64_t first_pfn;
        uint32_t count;
        const uint8_t *hashes; /* count * WIRE_HASH_LEN */
};

/* Hashes of count blocks of one disk: entry i at entries + i *
 * WIRE_DISK_HASH_ENTRY: block u64 (64 KiB index), 16 hashes of its 4 KiB
 * pieces (pieces past the end of the disk hash as zero-length: ignored). */
struct wire_disk_hashes {
        uint32_t disk;
        uint32_t count;
        const uint8_t *entries;
};

/* NET_FRAMES: the committed, unsent output of one NIC at a handover, as
 * (len u32, frame) records; the new primary sends it before it runs. */
#define WIRE_FRAME_MIN 14u
#define WIRE_FRAME_MAX (4096u + 65536u)
struct wire_net_frames {
        uint32_t nic;
        uint32_t count;
        const uint8_t *frames; /* count records */
        size_t len;            /* their bytes */
};

struct wire_hashes_end {
        uint64_t pages;                  /* page hashes sent */
        uint64_t blocks[WIRE_MAX_DISKS]; /* disk hash entries sent, per disk */
};

/* ---- building records ---- */

/* A growable buffer holding one or more complete records. */
struct wire_buf {
        uint8_t *data;
        size_t len;
        size_t cap;
        size_t rec_start; /* offset of the record being built */
};

void wire_buf_free(struct wire_buf *b);
void wire_buf_reset(struct wire_buf *b);
int wire_buf_reserve(struct wire_buf *b, size_t extra);
/* Start a record; fields and bytes are appended with wire_put_*; finish
 * fills in length and checksum. */
int wire_begin(struct wire_buf *b, enum wire_type type, uint64_t epoch);
int wire_put_u32(struct wire_buf *b, uint32_t v);
int wire_put_u64(struct wire_buf *b, uint64_t v);
int wire_put_bytes(struct wire_buf *b, const void *p, size_t n);
/* Reserve n bytes at the end and return a pointer to write them into. */
int wire_put_space(struct wire_buf *b, size_t n, uint8_t **ret_p);
int wire_finish(struct wire_buf *b);
/* Bytes of the record being built (payload only). */
size_t wire_cur_payload(const struct wire_buf *b);

int wire_put_hello(struct wire_buf *b, const struct wire_hello *h);
int wire_put_welcome(struct wire_buf *b, const struct wire_welcome *w);
int wire_put_epoch_end(struct wire_buf *b, uint64_t epoch, const struct wire_epoch_end *e);
int wire_put_ack(struct wire_buf *b, uint64_t epoch, const struct wire_ack *a);
int wire_put_error(struct wire_buf *b, uint32_t code, const char *text);
int wire_put_ping(struct wire_buf *b, uint64_t committed_epoch);
int wire_put_disk_bitmap(struct wire_buf *b, const struct wire_bitmap_chunk *c);
int wire_put_page_hashes(struct wire_buf *b, const struct wire_page_hashes *h);
int wire_put_disk_hashes(struct wire_buf *b, const struct wire_disk_hashes *h);
int wire_put_hashes_end(struct wire_buf *b, const struct wire_hashes_end *e);
int wire_put_net_frames(struct wire_buf *b, uint64_t epoch, const struct wire_net_frames *f);
/* PAGES record: begin with wire_pages_begin, add entries, wire_finish.
 * The entry count is patched in by wire_finish. */
int wire_pages_begin(struct wire_buf *b, enum wire_type type, uint64_t epoch);
int wire_pages_add(struct wire_buf *b, uint64_t pfn, uint8_t enc, const void *data, uint32_t len);
int wire_put_devstate(struct wire_buf *b, uint64_t epoch, const struct wire_devstate *d);
/* SYNC_DISK: like a PAGES record, for disk `disk`; pfn = 4 KiB block. */
int wire_disk_pages_begin(struct wire_buf *b, uint32_t disk);
/* EPOCH_DISK: begin, add entries, wire_finish. */
int wire_disk_begin(struct wire_buf *b, uint64_t epoch, uint32_t disk);
int wire_disk_add(struct wire_buf *b, const struct wire_disk_rec *rec);

/* ---- reading records ---- */

/* Decode and validate a raw 32-byte header (everything except the
 * checksum, which needs the payload). */
int wire_hdr_decode(const uint8_t raw[WIRE_HDR_SIZE], struct wire_hdr *ret);
/* Check the checksum of a header + payload pair. -EBADMSG if wrong. */
int wire_verify(const uint8_t raw[WIRE_HDR_SIZE], const void *payload, size_t len);

/* A received, verified record. payload is owned by the msg. */
struct wire_msg {
        struct wire_hdr hdr;
        uint8_t *payload;
        size_t cap;
};
void wire_msg_free(struct wire_msg *m);
/* Read one record from fd (blocking up to deadline_ns, 0 = none).
 * Returns 0, -EBADMSG (corrupt: bad magic/version/type/flags/length or
 * checksum), -EPIPE (EOF; a record cut short is -EPIPE too), -ETIMEDOUT,
 * or -errno. After any error the stream is unusable. */
int wire_recv(int fd, uint64_t deadline_ns, struct wire_msg *m);
/* Parse the payload of a record held in a buffer (as wire_recv does, for
 * tests and fuzzing): data/len hold header + payload. *ret_used is the
 * record's size. -EAGAIN if more bytes are needed. */
int wire_parse(const uint8_t *data, size_t len, struct wire_hdr *ret_hdr,
               const uint8_t **ret_payload, size_t *ret_used);

int wire_get_hello(const struct wire_msg *m, struct wire_hello *ret);
int wire_get_welcome(const struct wire_msg *m, struct wire_welcome *ret);
int wire_get_epoch_end(const struct wire_msg *m, struct wire_epoch_end *ret);
int wire_get_ack(const struct wire_msg *m, struct wire_ack *ret);
int wire_get_error(const struct wire_msg *m, struct wire_error *ret);
int wire_get_devstate(const struct wire_msg *m, struct wire_devstate *ret);
int wire_get_disk_bitmap(const struct wire_msg *m, struct wire_bitmap_chunk *ret);
int wire_get_page_hashes(const struct wire_msg *m, struct wire_page_hashes *ret);
int wire_get_disk_hashes(const struct wire_msg *m, struct wire_disk_hashes *ret);
int wire_get_hashes_end(const struct wire_msg *m, struct wire_hashes_end *ret);
/* Checks every record: count, each length within WIRE_FRAME_MIN..MAX,
 * nothing trailing. */
int wire_get_net_frames(const struct wire_msg *m, struct wire_net_frames *ret);
/* The block number of a DISK_HASHES entry (its first 8 bytes, LE). */
uint64_t wire_hash_entry_block(const uint8_t *entry);
void wire_hash_entry_set_block(uint8_t *entry, uint64_t block);
/* XXH3-128 of len bytes into out[WIRE_HASH_LEN] (the wire's byte order). */
void wire_hash(const void *data, size_t len, uint8_t out[WIRE_HASH_LEN]);

/* Iterate page entries of a PAGES payload. The count is checked against
 * the entries present: a mismatch or an entry running past the end is
 * -EBADMSG. Returns 1 with *ret filled, 0 at the end, or -EBADMSG. */
struct wire_pages_iter {
        const uint8_t *p, *end;
        uint32_t left;
        uint32_t disk;     /* SYNC_DISK: which disk */
};
int wire_pages_iter_init(struct wire_pages_iter *it, const struct wire_msg *m);
int wire_pages_next(struct wire_pages_iter *it, struct wire_page *ret);

/* Iterate an EPOCH_DISK payload; same contract as the pages iterator. */
struct wire_disk_iter {
        const uint8_t *p, *end;
        uint32_t left;
        uint32_t disk;
};
int wire_disk_iter_init(struct wire_disk_iter *it, const struct wire_msg *m);
int wire_disk_next(struct wire_disk_iter *it, struct wire_disk_rec *ret);

const char *wire_type_name(uint16_t type);
