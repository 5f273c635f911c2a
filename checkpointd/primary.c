/* primary: the replication thread of a VM that runs on this host.
 *
 * Owns, while it runs: the VM's QEMU (QMP), the dirty tracker, a read-only
 * mapping of guest RAM, the delta cache (what the replica holds of recently
 * sent pages, the base of XOR deltas: lib/deltacache.h), and the
 * connection to the standby. The epoch order is
 * the Remus order of docs/checkpoint.md:
 *
 *   pre-scan -> [migration stops the VM] device state -> scan+re-arm
 *        -> copy dirty pages -> barrier (NICs' output queues, disks' logs)
 *        -> cont -> encode+send pages, device state, disk writes (VM runs)
 *        -> EPOCH_END -> await ACK -> committed -> release the epoch's output
 *
 * Output commit (docs/output-commit.md): the frames the guest sent during
 * epoch N are held by netbuf until ACK(N). Adaptive epochs: when output is
 * waiting, the next epoch starts min_epoch_ms after the last one instead
 * of epoch_ms, so a request/response does not wait a whole interval.
 *
 * Any failure after `stop` continues the VM before anything else: losing
 * the standby must never stop the guest. A lost standby is retried every
 * reconnect_ms; a new connection always starts with a full sync.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "adopt.h"
#include "codec.h"
#include "daemon.h"
#include "deltacache.h"
#include "disks.h"
#include "log.h"
#include "msgid.h"
#include "tracker.h"
#include "twin.h"
#include "util.h"
#include "wire.h"

#include <sys/random.h>

#define QMP_TIMEOUT_MS 2000
#define DEVSTATE_TIMEOUT_MS 5000
#define SEND_BATCH (1u << 20)      /* flush a PAGES record at ~1 MiB */
#define DEVSTATE_CHUNK (1u << 20)
/* A smaller dirty set is copied by one thread: the hand-off to the twin
 * (tens of µs) would cost about what it saves (1 MiB: ~0.1 ms here). */
#define COPY_SPLIT_MIN_PAGES 256

struct primary {
        struct daemon *d;
        struct vm *v;
        struct vm_config cfg;
        char peer[CFG_NAME_MAX];
        char peer_addr[128];
        int fd;                   /* connection to the standby, -1 if none */
        int wake_fd;              /* eventfd: the control thread wants us */
        struct tracker *tracker;
        int ram_fd;
        const uint8_t *ram;
        uint64_t npages;
        struct dcache *dcache;    /* replica's copy of recently sent pages; NULL
                                     with delta_cache_mib = 0 (no XOR deltas) */
        uint32_t *dirty;          /* 2 * npages entries: pre-scan + pause scan */
        uint64_t *seen;           /* bitmap for merging the two scans */
        uint8_t *staging;         /* copies of dirty pages, grown on demand */
        struct twin *twin;        /* copies half of a large dirty set in the pause; or NULL */
        /* the pre-scan's pages sent before the stop (send_prestop) */
        bool prestop_off;           /* off after an epoch that re-sent most of them */
        unsigned prestop_probe;     /* epochs until it is tried again */
        size_t staging_pages;
        uint8_t *devstate;
        size_t devstate_cap;
        /* The base of device-state deltas: the device state of the last
         * epoch the standby ACKed on this connection, which is exactly the
         * standby's committed one (docs/checkpoint.md, "Device state as a delta").
         * Valid only from that ACK until the connection drops. */
        uint8_t *ds_base;
        size_t ds_base_cap, ds_base_len;
        bool ds_base_ok;
        uint8_t *chunk;           /* encoded device state chunk */
        uint8_t *chunk_scratch;   /* the delta encoder's workspace */
        struct wire_buf wb;
        struct wire_msg in;
        char last_failure[200];   /* last connection failure logged */
        uint64_t wire_bytes;      /* bytes sent in the current epoch/pass */
        struct br_log logs[CFG_MAX_DISKS]; /* disk writes of the epoch in flight */
        /* disk writes of the open epoch already sent (streamed while the
         * guest runs, docs/output-commit.md): the last record per disk, and
         * what EPOCH_END must count for them */
        const struct br_rec *streamed[CFG_MAX_DISKS];
        uint64_t stream_recs, stream_bytes, stream_wire;
        int stream_err;           /* a stream send failed: the next epoch fails with it */
        uint64_t last_pause_end;  /* monotonic ns: the VM last continued after a pause */
        uint64_t last_release;    /* monotonic ns: an epoch's output was last released */
        bool early;               /* the epoch about to run starts early (adaptive) */
        bool resumed;             /* started by a restarted checkpointd (adopt.c) */
        bool resume_held;         /* ... with output held from the adoption on */
        /* re-seed (docs/failback.md): what the standby said it holds */
        uint32_t welcome_flags;   /* WIRE_WELCOME_*: hashes that follow the WELCOME */
        uint64_t new_lineage;     /* offered in HELLO, recorded when the sync commits */
        uint8_t *peer_hash;       /* npages * WIRE_HASH_LEN: the standby's page hashes */
        uint8_t *disk_hash[CFG_MAX_DISKS]; /* incremental disks: the standby's DISK_HASHES */
        uint64_t disk_hash_n[CFG_MAX_DISKS], disk_hash_cap[CFG_MAX_DISKS];
        bool peer_hash_ok;        /* ... all of them arrived for this connection */
        bool handed_over;         /* switchover: the standby keeps the replica, our copy ends */
        /* switchover: the final epoch's committed output, taken from the
         * NICs unsent (netbuf_take): the new primary sends it */
        uint8_t *out_frames[CFG_MAX_NICS];
        size_t out_len[CFG_MAX_NICS];
        uint8_t enc[CODEC_PAGE_MAX] __attribute__((aligned(64)));
        uint8_t scratch[CODEC_PAGE_MAX] __attribute__((aligned(64)));
        uint8_t snap[CODEC_PAGE_MAX] __attribute__((aligned(64))); /* stable copy of a live page */
};

static float ms_since(uint64_t t0) { return (float)(now_ns() - t0) / 1e6f; }

static bool stop_requested(struct primary *p) { return p->v->stop_requested; }

static int send_buf(struct primary *p)
{
        if (!p->wb.len)
                return 0;
        uint64_t deadline = now_ns() + (uint64_t)p->cfg.ack_timeout_ms * 1000000u;
        int r = write_full(p->fd, p->wb.data, p->wb.len, deadline);
        p->wire_bytes += p->wb.len;
        wire_buf_reset(&p->wb);
        return r;
}

static void drop_connection(struct primary *p)
{
        if (p->fd < 0)
                return;
        pthread_mutex_lock(&p->v->lock);
        p->v->conn_fd = -1;
        p->v->link_up = false;
        pthread_mutex_unlock(&p->v->lock);
        close(p->fd);
        p->fd = -1;
        /* the next connection starts from plain device-state chunks */
        p->ds_base_ok = false;
        /* an epoch cut off midway is never applied, yet its pages are in
         * the cache: what the standby holds is unknown from here */
        if (p->dcache)
                dcache_drop_all(p->dcache);
}

static void set_state(struct primary *p, enum vm_state s)
{
        pthread_mutex_lock(&p->v->lock);
        vm_set_state(p->v, s);
        pthread_mutex_unlock(&p->v->lock);
}

/* The run file says what a restarted checkpointd must do with the output
 * (adopt.h): "held" is written before output is held, "free" after it
 * was released. */
static void record(struct primary *p, bool output_held)
{
        pthread_mutex_lock(&p->v->lock);
        adopt_record(p->d, p->v, p->peer, output_held);
        pthread_mutex_unlock(&p->v->lock);
}

/* ---- connection ---- */

/* Retries come every reconnect_ms: log a failure once, when it changes,
 * and keep the latest in the VM's status. */
static void note_failure(struct primary *p, const char *msgid, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
static void note_failure(struct primary *p, const char *msgid, const char *fmt, ...)
{
        char text[sizeof(p->last_failure)];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(text, sizeof(text), fmt, ap);
        va_end(ap);
        if (strcmp(text, p->last_failure)) {
                log_msg(LOG_LVL_WARN, msgid, p->cfg.name, -1, "%s; retrying every %u ms", text,
                        p->cfg.reconnect_ms);
                snprintf(p->last_failure, sizeof(p->last_failure), "%s", text);
        }
        pthread_mutex_lock(&p->v->lock);
        vm_set_error(p->v, "%s", text);
        pthread_mutex_unlock(&p->v->lock);
}

/* Connect to the standby and exchange HELLO / WELCOME. cancellable: the
 * TCP connect is given up when the control side wakes the thread
 * (unprotect, stop, release): a dead standby's address must not hold an
 * `unprotect` for the connect's 3 s. Not for the guest-off goodbye, which
 * must reach the standby whatever else is pending. */
static int connect_peer(struct primary *p, bool cancellable)
{
        /* given up when the control side wants us (unprotect, stop, a
         * release): a dead standby's address must not hold it for 3 s */
        int r = tcp_connect_or(p->peer_addr, now_ns() + 3000000000ull,
                               cancellable ? p->wake_fd : -1, &p->fd);
        if (r < 0)
                return r;
        pthread_mutex_lock(&p->v->lock);
        uint64_t gen = p->v->generation;
        pthread_mutex_unlock(&p->v->lock);
        struct wire_hello h = {
                .page_size = HAVMS_PAGE_SIZE,
                .ram_bytes = p->npages * HAVMS_PAGE_SIZE,
                .config_digest = vm_config_digest(&p->cfg),
                .generation = gen,
        };
        snprintf(h.vm, sizeof(h.vm), "%s", p->cfg.name);
        snprintf(h.host, sizeof(h.host), "%s", p->d->host.name);
        /* the name both hosts give the common state once this sync commits */
        do {
                if (getrandom(&p->new_lineage, sizeof(p->new_lineage), 0) != sizeof(p->new_lineage))
                        p->new_lineage = now_ns() ^ ((uint64_t)getpid() << 32);
        } while (p->new_lineage == 0);
        h.new_lineage = p->new_lineage;
        struct qemu_vm *q = p->v->qemu;
        h.n_disks = q->n_disk;
        for (unsigned i = 0; i < q->n_disk; i++) {
                h.disk_bytes[i] = blockrepl_size(q->disk[i]);
                /* a known history: the standby may resync incrementally */
                h.disk_lineage[i] = blockrepl_lineage(q->disk[i]);
                if (h.disk_lineage[i] && blockrepl_bitmap_bytes(q->disk[i]))
                        h.flags |= WIRE_HELLO_BITMAP(i);
        }
        wire_buf_reset(&p->wb);
        if ((r = wire_put_hello(&p->wb, &h)) < 0 || (r = send_buf(p)) < 0)
                goto fail;
        r = wire_recv(p->fd, now_ns() + 5000000000ull, &p->in);
        if (r < 0)
                goto fail;
        if (p->in.hdr.type == WIRE_ERROR) {
                struct wire_error e;
                r = -EREMOTEIO;
                if (wire_get_error(&p->in, &e) == 0 && e.code == WIRE_ERR_STALE) {
                        /* not retried: the thread powers the VM off */
                        snprintf(p->last_failure, sizeof(p->last_failure), "%.190s", e.text);
                        r = -ESTALE;
                } else if (wire_get_error(&p->in, &e) == 0) {
                        note_failure(p, MSG_PEER_REFUSED, "standby %s refused protection: %s",
                                     p->peer, e.text);
                }
                goto fail;
        }
        struct wire_welcome w;
        r = wire_get_welcome(&p->in, &w);
        if (r == 0 && w.generation != gen)
                r = -EPROTO; /* a standby adopts our generation or refuses us */
        for (unsigned i = 0; i < WIRE_MAX_DISKS && r == 0; i++)
                if ((w.flags & WIRE_WELCOME_DISK_INCR(i)) && !(h.flags & WIRE_HELLO_BITMAP(i)))
                        r = -EPROTO; /* incremental where we offered no history */
        if (r < 0)
                goto fail;
        p->welcome_flags = w.flags;
        p->peer_hash_ok = false;
        p->last_failure[0] = 0;
        pthread_mutex_lock(&p->v->lock);
        p->v->conn_fd = p->fd;
        p->v->link_up = true;
        p->v->last_error[0] = 0;
        pthread_mutex_unlock(&p->v->lock);
        return 0;
fail:
        drop_connection(p);
        return r;
}

/* ---- pages ---- */

/* data must not change while this runs: the bytes encoded and the bytes
 * kept in the delta cache (the base of the next XOR delta) must be the
 * same bytes, or the replica's copy and the cache drift apart for good.
 * Epoch pages come from the staging copy; pre-copy pages from sync_page().
 *
 * Why a cached page always equals the replica's page (the standby decodes
 * RUNS and XOR_LZ4 against its own copy, so any difference corrupts the
 * replica):
 *  - every page sent is stored right after it is encoded, the very bytes
 *    encoded; a page not put into the batch (an error) is not stored;
 *  - the standby applies what it receives in order: pre-copy pages at
 *    once, an epoch's pages only when the whole epoch arrived (a page sent
 *    twice in an epoch, before the stop and from the pause, is decoded
 *    against its first copy there, as it is against that copy here), and
 *    epoch N+1 is sent only after ACK(N);
 *  - anything that may leave the replica holding something else drops
 *    the cache: every (re-)sync starts with an empty cache (its first pass
 *    fills nothing, also not the pages the standby already has), and a
 *    dropped connection — an epoch cut off midway, which the standby
 *    discards although its pages were stored here — drops it too;
 *  - nothing else writes the replica's RAM while we are connected. */
static int add_page(struct primary *p, enum wire_type type, uint64_t epoch,
                    uint32_t pfn, const uint8_t *data, uint64_t *raw_bytes)
{
        /* the first pass has no replica copy to delta against */
        bool first = type == WIRE_SYNC_PAGES && p->v->sync.round == 0;
        const uint8_t *prev = p->dcache && !first ? dcache_lookup(p->dcache, pfn) : NULL;
        uint8_t enc;
        uint32_t len;
        int r = codec_page_encode(data, prev, p->enc, p->scratch, &enc, &len);
        if (r < 0)
                return r;
        if (p->wb.len == 0 && (r = wire_pages_begin(&p->wb, type, epoch)) < 0)
                return r;
        r = wire_pages_add(&p->wb, pfn, enc, p->enc, len);
        if (r < 0)
                return r;
        if (p->dcache && first)
                dcache_forget(p->dcache, pfn); /* (the cache is empty here) */
        else if (p->dcache)
                dcache_store(p->dcache, pfn, data);
        *raw_bytes += HAVMS_PAGE_SIZE;
        if (p->wb.len >= SEND_BATCH) {
                if ((r = wire_finish(&p->wb)) < 0 || (r = send_buf(p)) < 0)
                        return r;
        }
        return 0;
}

/* Pre-copy reads guest RAM while the VM runs: snapshot the page first. */
static int sync_page(struct primary *p, uint32_t pfn, uint64_t *raw_bytes)
{
        memcpy(p->snap, p->ram + (uint64_t)pfn * HAVMS_PAGE_SIZE, HAVMS_PAGE_SIZE);
        return add_page(p, WIRE_SYNC_PAGES, 0, pfn, p->snap, raw_bytes);
}

static int flush_pages(struct primary *p)
{
        int r = 0;
        if (p->wb.len && (r = wire_finish(&p->wb)) == 0)
                r = send_buf(p);
        return r;
}

/* Read the whole dirty set (the tracker re-arms what it returns). */
static int scan_all(struct primary *p, size_t *ret_n)
{
        size_t n = 0;
        int r = tracker_scan(p->tracker, p->dirty, p->npages, &n);
        if (r < 0)
                return r;
        *ret_n = n;
        return 0;
}

/* A scan while the VM runs (pre-copy rounds). A tracker that cannot read
 * and re-arm atomically (soft-dirty) would lose writes made in between, so
 * the VM is stopped around its scan; it is continued whatever happens. */
static int scan_running(struct primary *p, size_t *ret_n)
{
        struct qemu_vm *q = p->v->qemu;
        if (tracker_scan_is_atomic(p->tracker))
                return scan_all(p, ret_n);
        int r = qmp_execute(q->qmp, "stop", NULL, QMP_TIMEOUT_MS, NULL);
        if (r == 0)
                r = scan_all(p, ret_n);
        int rc = qemu_cont(q, QMP_TIMEOUT_MS);
        return r < 0 ? r : rc;
}

/* Scan again and add what is new to the n_pre pages already in p->dirty
 * (a page found by both scans is listed once: the standby refuses a page
 * twice in one epoch). */
static int scan_more(struct primary *p, size_t n_pre, size_t *ret_n)
{
        size_t n_new = 0;
        int r = tracker_scan(p->tracker, p->dirty + n_pre, p->npages, &n_new);
        if (r < 0)
                return r;
        if (n_pre == 0 || n_new == 0) {
                *ret_n = n_pre + n_new;
                return 0;
        }
        for (size_t i = 0; i < n_pre; i++)
                p->seen[p->dirty[i] / 64] |= 1ull << (p->dirty[i] % 64);
        size_t n = n_pre;
        for (size_t i = n_pre; i < n_pre + n_new; i++) {
                uint32_t pfn = p->dirty[i];
                if (!(p->seen[pfn / 64] & (1ull << (pfn % 64))))
                        p->dirty[n++] = pfn;
        }
        for (size_t i = 0; i < n_pre; i++)
                p->seen[p->dirty[i] / 64] = 0;
        *ret_n = n;
        return 0;
}

/* ---- re-seed: hashes of what the standby holds ---- */

/* Incremental disks (the standby has our lineage): our bitmap, taken
 * now that the disks are in SYNC mode (every later write marks the sync
 * map, so nothing falls between this copy and the copy pass). */
static int send_bitmaps(struct primary *p)
{
        struct qemu_vm *q = p->v->qemu;
        for (unsigned i = 0; i < q->n_disk; i++) {
                if (!(p->welcome_flags & WIRE_WELCOME_DISK_INCR(i)))
                        continue;
                size_t len = blockrepl_bitmap_bytes(q->disk[i]);
                uint8_t *bits = malloc(len ? len : 1);
                int r = bits ? blockrepl_bitmap_copy(q->disk[i], bits, len) : -ENOMEM;
                for (size_t off = 0; off < len && r == 0; off += 8u << 20) {
                        struct wire_bitmap_chunk c = { .disk = i, .offset = off, .bits = bits + off,
                                                       .len = (uint32_t)(len - off < (8u << 20)
                                                                         ? len - off : 8u << 20) };
                        wire_buf_reset(&p->wb);
                        if ((r = wire_put_disk_bitmap(&p->wb, &c)) == 0)
                                r = send_buf(p);
                }
                free(bits);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* DISK_HASHES of an incremental disk: kept for the copy pass, which
 * checks the block numbers again as it goes. */
static int take_disk_hashes(struct primary *p)
{
        struct wire_disk_hashes dh;
        if (wire_get_disk_hashes(&p->in, &dh) < 0 ||
            !(p->welcome_flags & WIRE_WELCOME_DISK_INCR(dh.disk)))
                return -EPROTO;
        /* at most one entry per block, ascending: checked here, before
         * anything grows (and again by the copy pass) */
        struct qemu_vm *q = p->v->qemu;
        uint64_t nblocks = (blockrepl_size(q->disk[dh.disk]) + BR_BLOCK_SIZE - 1) / BR_BLOCK_SIZE;
        uint64_t need = p->disk_hash_n[dh.disk] + dh.count;
        if (need > nblocks)
                return -EPROTO;
        uint64_t prev = p->disk_hash_n[dh.disk]
                ? wire_hash_entry_block(p->disk_hash[dh.disk] +
                                        (p->disk_hash_n[dh.disk] - 1) * WIRE_DISK_HASH_ENTRY) : 0;
        for (uint32_t e = 0; e < dh.count; e++) {
                uint64_t blk = wire_hash_entry_block(dh.entries + (size_t)e * WIRE_DISK_HASH_ENTRY);
                if (blk >= nblocks || ((p->disk_hash_n[dh.disk] || e) && blk <= prev))
                        return -EPROTO;
                prev = blk;
        }
        if (need > p->disk_hash_cap[dh.disk]) {
                uint64_t cap = need * 2;
                uint8_t *n = realloc(p->disk_hash[dh.disk], cap * WIRE_DISK_HASH_ENTRY);
                if (!n)
                        return -ENOMEM;
                p->disk_hash[dh.disk] = n;
                p->disk_hash_cap[dh.disk] = cap;
        }
        memcpy(p->disk_hash[dh.disk] + p->disk_hash_n[dh.disk] * WIRE_DISK_HASH_ENTRY, dh.entries,
               (size_t)dh.count * WIRE_DISK_HASH_ENTRY);
        p->disk_hash_n[dh.disk] = need;
        return 0;
}

/* After the WELCOME, a standby that still holds a RAM file of the VM (a
 * link flap, a restart of its daemons, the old primary after a
 * switchover) sends the XXH3-128 of each of its pages; the first pass
 * then skips every page whose hash matches ours (docs/failback.md). Any
 * record out of order, a page out of range or counts that do not add up
 * end the connection: the next one starts over. */
static int receive_hashes(struct primary *p)
{
        if (!p->welcome_flags)
                return 0;
        bool want_pages = p->welcome_flags & WIRE_WELCOME_PAGE_HASHES;
        if (want_pages && !p->peer_hash) {
                p->peer_hash = malloc(p->npages * WIRE_HASH_LEN);
                if (!p->peer_hash)
                        return -ENOMEM;
        }
        uint64_t next_pfn = 0, t0 = now_ms();
        /* the standby reads and hashes its whole RAM file first */
        uint64_t deadline = now_ns() + WIRE_HASH_RECORD_TIMEOUT_NS + (uint64_t)p->cfg.ack_timeout_ms * 1000000u;
        int r = send_bitmaps(p);
        if (r < 0)
                return r;
        for (unsigned i = 0; i < CFG_MAX_DISKS; i++)
                p->disk_hash_n[i] = 0;
        for (;;) {
                r = wire_recv(p->fd, deadline, &p->in);
                if (r < 0)
                        return r;
                /* a deadline per record: a large RAM or resync set takes
                 * as long as the standby's reads, as long as they flow */
                deadline = now_ns() + WIRE_HASH_RECORD_TIMEOUT_NS + (uint64_t)p->cfg.ack_timeout_ms * 1000000u;
                pthread_mutex_lock(&p->v->lock);
                p->v->sync.hash_bytes += WIRE_HDR_SIZE + p->in.hdr.length;
                pthread_mutex_unlock(&p->v->lock);
                switch (p->in.hdr.type) {
                case WIRE_PAGE_HASHES: {
                        struct wire_page_hashes h;
                        if (!want_pages || wire_get_page_hashes(&p->in, &h) < 0 ||
                            h.first_pfn != next_pfn || h.count > p->npages - next_pfn)
                                return -EPROTO;
                        memcpy(p->peer_hash + next_pfn * WIRE_HASH_LEN, h.hashes,
                               (size_t)h.count * WIRE_HASH_LEN);
                        next_pfn += h.count;
                        break;
                }
                case WIRE_DISK_HASHES:
                        if ((r = take_disk_hashes(p)) < 0)
                                return r;
                        break;
                case WIRE_HASHES_END: {
                        struct wire_hashes_end e;
                        if (wire_get_hashes_end(&p->in, &e) < 0 || e.pages != next_pfn ||
                            (want_pages && next_pfn != p->npages))
                                return -EPROTO;
                        for (unsigned i = 0; i < WIRE_MAX_DISKS; i++)
                                if (e.blocks[i] != p->disk_hash_n[i])
                                        return -EPROTO;
                        p->peer_hash_ok = want_pages;
                        log_msg(LOG_LVL_INFO, MSG_SYNC_PROGRESS, p->cfg.name, -1,
                                "standby %s holds a RAM file of the VM: %llu page hashes in "
                                "%llu ms, only pages that differ are sent", p->peer,
                                (unsigned long long)next_pfn, (unsigned long long)(now_ms() - t0));
                        return 0;
                }
                case WIRE_ERROR:
                        return -EREMOTEIO;
                default:
                        return -EPROTO;
                }
        }
}

/* First pass of a re-seed: does the standby's page equal this one? */
static bool peer_has_page(struct primary *p, uint32_t pfn, const uint8_t *data)
{
        if (!p->peer_hash_ok)
                return false;
        uint8_t h[WIRE_HASH_LEN];
        wire_hash(data, HAVMS_PAGE_SIZE, h);
        return !memcmp(h, p->peer_hash + (uint64_t)pfn * WIRE_HASH_LEN, WIRE_HASH_LEN);
}

static void progress(struct primary *p, uint64_t sent, uint32_t round, uint64_t round_pages)
{
        pthread_mutex_lock(&p->v->lock);
        p->v->sync.sent_bytes = sent;
        p->v->sync.round = round;
        p->v->sync.last_round_pages = round_pages;
        pthread_mutex_unlock(&p->v->lock);
}

static void sync_note(struct primary *p, const char *phase, uint64_t sent)
{
        pthread_mutex_lock(&p->v->lock);
        p->v->sync.phase = phase;
        p->v->sync.sent_bytes = sent;
        p->v->sync.wire_bytes = p->wire_bytes;
        pthread_mutex_unlock(&p->v->lock);
}

/* Disk copy passes: the progress line every 2 s, as the memory pass has. */
struct disk_progress {
        struct primary *p;
        uint64_t t0, last_log, total;
};

static void disk_tick(void *ctx)
{
        struct disk_progress *dp = ctx;
        uint64_t now = now_ms();
        if (now - dp->last_log < 2000)
                return;
        dp->last_log = now;
        uint64_t done = __atomic_load_n(&dp->p->v->sync.sent_bytes, __ATOMIC_RELAXED);
        double el = (double)(now - dp->t0) / 1000.0, rate = (double)done / 1048576.0 / el;
        log_msg(LOG_LVL_INFO, MSG_SYNC_PROGRESS, dp->p->cfg.name, -1,
                "disks %.0f%% looked at, %.1f MiB/s, ETA %.0f s, %.1f MiB on the wire",
                dp->total ? 100.0 * (double)done / (double)dp->total : 100.0, rate,
                rate > 0 ? (double)(dp->total - done) / 1048576.0 / rate : 0.0,
                (double)dp->p->wire_bytes / 1048576.0);
}

/* The first pass over guest RAM: every page, snapshotted once; on a
 * re-seed, a page the standby already holds is not sent. Neither goes
 * into the delta cache: a pass over all of RAM would only cycle it, and
 * the pages the guest writes next warm it within a few epochs. */
static int first_pass(struct primary *p, uint64_t disk_bytes, uint64_t *raw)
{
        struct vm *v = p->v;
        uint64_t same = 0, sent = 0, t0 = now_ms(), last_log = t0;
        for (uint64_t pfn = 0; pfn < p->npages; pfn++) {
                memcpy(p->snap, p->ram + pfn * HAVMS_PAGE_SIZE, HAVMS_PAGE_SIZE);
                if (peer_has_page(p, (uint32_t)pfn, p->snap)) {
                        same++;
                } else {
                        int r = add_page(p, WIRE_SYNC_PAGES, 0, (uint32_t)pfn, p->snap, raw);
                        if (r < 0)
                                return r;
                        sent++;
                }
                if ((pfn & 1023) != 1023)
                        continue;
                sync_note(p, "memory", disk_bytes + (pfn + 1) * HAVMS_PAGE_SIZE);
                if (stop_requested(p))
                        return -ECANCELED;
                if (now_ms() - last_log >= 2000) {
                        last_log = now_ms();
                        double el = (double)(now_ms() - t0) / 1000.0;
                        double done = (double)(pfn + 1) / (double)p->npages;
                        log_msg(LOG_LVL_INFO, MSG_SYNC_PROGRESS, v->name, -1,
                                "%s %.0f%%, %.1f MiB/s, ETA %.0f s (%llu pages the standby "
                                "already had)", p->peer_hash_ok ? "memory re-seed" : "initial sync",
                                100.0 * done, (double)(pfn + 1) * HAVMS_PAGE_SIZE / 1048576.0 / el,
                                el / done - el, (unsigned long long)same);
                }
        }
        pthread_mutex_lock(&v->lock);
        v->sync.pages_same = same;
        v->sync.pages_sent = sent;
        pthread_mutex_unlock(&v->lock);
        return flush_pages(p);
}

/* Copy guest RAM (and the disks) while the VM runs, then pre-copy rounds
 * of what it dirtied meanwhile, until a round is small enough for one
 * epoch. What the standby already holds (its hashes) is not sent. */
static int initial_sync(struct primary *p)
{
        struct vm *v = p->v;
        struct qemu_vm *q = v->qemu;
        uint64_t raw = 0, t0 = now_ms(), disk_bytes = 0;
        size_t n;
        for (unsigned i = 0; i < q->n_disk; i++)
                disk_bytes += blockrepl_size(q->disk[i]);
        pthread_mutex_lock(&v->lock);
        vm_set_state(v, VM_SYNCING);
        v->sync = (struct sync_progress){
                .total_bytes = p->npages * HAVMS_PAGE_SIZE + disk_bytes,
                .started_ms = wall_ms(),
                .phase = "hashes",
                .mem_reseed = p->welcome_flags & WIRE_WELCOME_PAGE_HASHES,
        };
        pthread_mutex_unlock(&v->lock);
        /* whatever the standby held is replaced or re-seeded now */
        if (p->dcache)
                dcache_drop_all(p->dcache);
        p->ds_base_ok = false; /* its device state too: no delta before an ACK */

        /* From here blockrepl's sync map catches what the guest writes
         * behind the copy; those blocks go again at the end. */
        if (q->n_disk)
                qemu_disk_mode(q, BR_MODE_SYNC);
        int r = receive_hashes(p);
        if (r < 0)
                return r;
        struct disk_sender ds = { .fd = p->fd, .wb = &p->wb, .wire_bytes = &p->wire_bytes,
                                  .timeout_ns = (uint64_t)p->cfg.ack_timeout_ms * 1000000u };
        uint64_t done = 0;
        /* status reads the bytes looked at as the copy goes: for an
         * incremental disk the whole disk counts once its set is done */
        ds.done_bytes = &v->sync.sent_bytes;
        struct disk_progress dp = { .p = p, .t0 = now_ms(), .last_log = now_ms(), .total = disk_bytes };
        ds.tick = disk_tick;
        ds.tick_ctx = &dp;
        for (unsigned i = 0; i < q->n_disk; i++) {
                sync_note(p, "disks", done);
                uint64_t draw = 0, same = 0, blocks, size = blockrepl_size(q->disk[i]);
                bool incr = p->welcome_flags & WIRE_WELCOME_DISK_INCR(i);
                if (incr) {
                        blocks = p->disk_hash_n[i];
                        r = disks_resync_pass(q->disk[i], i, p->disk_hash[i], blocks, &ds, &draw, &same);
                } else {
                        blocks = (size + BR_BLOCK_SIZE - 1) / BR_BLOCK_SIZE;
                        r = disks_copy_disk(q->disk[i], i, &ds, &draw);
                }
                if (r < 0)
                        return r;
                done += size;
                pthread_mutex_lock(&v->lock);
                if (incr)
                        v->sync.disks_incremental++;
                else
                        v->sync.disks_full++;
                v->sync.disk_blocks += blocks;
                v->sync.disk_sent_bytes += draw;
                pthread_mutex_unlock(&v->lock);
                log_msg(LOG_LVL_INFO, MSG_SYNC_PROGRESS, v->name, -1,
                        "disk %u %s: %llu blocks of 64 KiB looked at, %.1f MiB sent (%llu pieces "
                        "of 4 KiB the standby had) in %llu ms", i,
                        incr ? "resynced incrementally" : "copied whole (history unknown or different)",
                        (unsigned long long)blocks, (double)draw / 1048576.0,
                        (unsigned long long)same, (unsigned long long)(now_ms() - t0));
        }
        ds.done_bytes = NULL; /* the pass after the switch to LOG is not counted */
        ds.tick = NULL;

        /* Re-arm everything: from here on, every write is caught. */
        r = scan_all(p, &n);
        if (r < 0)
                return r;
        if ((r = first_pass(p, disk_bytes, &raw)) < 0)
                return r;
        progress(p, p->npages * HAVMS_PAGE_SIZE + disk_bytes, 0, p->npages);

        uint64_t again = 0;
        for (uint32_t round = 1; round <= p->cfg.precopy_max_rounds; round++) {
                if ((r = scan_running(p, &n)) < 0)
                        return r;
                progress(p, p->npages * HAVMS_PAGE_SIZE + disk_bytes, round, n);
                for (size_t i = 0; i < n; i++) {
                        r = sync_page(p, p->dirty[i], &raw);
                        if (r < 0)
                                return r;
                }
                again += n;
                if ((r = flush_pages(p)) < 0)
                        return r;
                if (n < p->cfg.precopy_done_pages)
                        break;
                if (stop_requested(p))
                        return -ECANCELED;
        }
        /* From here every disk write goes into the log of epoch 1; the
         * blocks written during the copy are sent again (read after the
         * switch, so nothing falls between the two). */
        if (q->n_disk) {
                qemu_disk_mode(q, BR_MODE_LOG);
                uint64_t draw = 0;
                if ((r = disks_sync_pass(q->disk, q->n_disk, &ds, true, &draw)) < 0)
                        return r;
                raw += draw;
                pthread_mutex_lock(&v->lock);
                v->sync.disk_sent_bytes += draw;
                pthread_mutex_unlock(&v->lock);
        }
        pthread_mutex_lock(&v->lock);
        v->sync.precopy_pages = again;
        v->sync.wire_bytes = p->wire_bytes;
        pthread_mutex_unlock(&v->lock);
        log_msg(LOG_LVL_INFO, MSG_SYNC_PROGRESS, v->name, -1,
                "pre-copy done in %llu ms: %.1f MiB of pages and blocks, %.1f MiB on the wire%s",
                (unsigned long long)(now_ms() - t0), (double)raw / 1048576.0,
                (double)p->wire_bytes / 1048576.0,
                p->peer_hash_ok ? " (memory re-seeded by hashes)" : "");
        return 0;
}

/* ---- one epoch ---- */

static int grow_staging(struct primary *p, size_t pages)
{
        if (pages <= p->staging_pages)
                return 0;
        size_t want = pages < 4096 ? 4096 : pages;
        uint8_t *s = realloc(p->staging, want * HAVMS_PAGE_SIZE);
        if (!s)
                return -ENOMEM;
        p->staging = s;
        p->staging_pages = want;
        return 0;
}

/* Every chunk the smallest of RAW, LZ4 and (with a base) XOR_LZ4 against
 * the standby's committed device state: QEMU re-sends every device and
 * firmware ROM block each epoch, nearly all of it unchanged. */
static int send_devstate(struct primary *p, uint64_t epoch, size_t len)
{
        for (size_t off = 0; off < len; off += DEVSTATE_CHUNK) {
                size_t n = len - off < DEVSTATE_CHUNK ? len - off : DEVSTATE_CHUNK;
                struct wire_devstate ds = { .offset = off, .raw_len = (uint32_t)n };
                const uint8_t *base = NULL;
                size_t base_len = 0;
                if (p->ds_base_ok) {
                        size_t at = off < p->ds_base_len ? off : p->ds_base_len;
                        base = p->ds_base + at;
                        base_len = p->ds_base_len - at;
                }
                int r = codec_chunk_encode_delta(p->devstate + off, n, base, base_len, p->chunk,
                                                 p->chunk_scratch, &ds.enc, &ds.len);
                if (r < 0)
                        return r;
                ds.data = p->chunk;
                if ((r = wire_put_devstate(&p->wb, epoch, &ds)) < 0 || (r = send_buf(p)) < 0)
                        return r;
        }
        return 0;
}

/* Nothing of the open epoch has been streamed (a new log, or protection
 * starting). */
static void stream_reset(struct primary *p)
{
        memset(p->streamed, 0, sizeof(p->streamed));
        p->stream_recs = p->stream_bytes = p->stream_wire = 0;
        p->stream_err = 0;
}

/* Between a commit and the next barrier: send the open epoch's disk
 * writes so far, as records of the epoch they will belong to. The
 * standby only stages them; it applies nothing before that epoch's
 * EPOCH_END, so this changes no promise (docs/output-commit.md) and
 * takes the sending of a disk-heavy epoch off its commit. */
static void stream_disks(struct primary *p)
{
        struct qemu_vm *q = p->v->qemu;
        if (p->stream_err || !q->n_disk)
                return;
        struct disk_sender ds = { .fd = p->fd, .wb = &p->wb, .wire_bytes = &p->stream_wire,
                                  .timeout_ns = (uint64_t)p->cfg.ack_timeout_ms * 1000000u };
        int r = disks_stream(q->disk, q->n_disk, p->streamed, &ds, p->v->epoch + 1,
                             &p->stream_recs, &p->stream_bytes);
        if (r < 0)
                p->stream_err = r;
}

/* After a poll: read every eventfd of fds[from, n) that fired (each counts
 * wake-ups; reading resets it). Returns whether one at first_stream or
 * after did (a disk's stream: stream_disks); *soft (if not NULL) is set
 * when one in [first_soft, first_stream) did (a disk log past its soft
 * limit). */
static bool drain_events(const struct pollfd *fds, nfds_t from, nfds_t n, nfds_t first_soft,
                         nfds_t first_stream, bool *soft)
{
        bool stream = false;
        for (nfds_t i = from; i < n; i++) {
                uint64_t x;
                if (!(fds[i].revents & POLLIN) || read(fds[i].fd, &x, sizeof(x)) != sizeof(x))
                        continue;
                if (i >= first_stream)
                        stream = true;
                else if (i >= first_soft && soft)
                        *soft = true;
        }
        return stream;
}

/* Until the ACK is readable (or the deadline, which wire_recv then
 * reports), do what the wait is for:
 *  - watch_nets (on_buffer_full=release): watch the NICs' buffers; a full
 *    one ends protection (-ENOBUFS) instead of holding the guest's output
 *    any longer;
 *  - stream: while the standby commits epoch N, the guest's disk writes of
 *    N+1 go out behind EPOCH_END(N); the standby reads them only after it
 *    has committed and ACKed N, and stages them for N+1. */
static int wait_ack_while(struct primary *p, uint64_t deadline, bool watch_nets, bool stream)
{
        struct qemu_vm *q = p->v->qemu;
        struct pollfd fds[1 + CFG_MAX_NICS + CFG_MAX_DISKS];
        nfds_t n = 0, first_disk;
        fds[n++] = (struct pollfd){ .fd = p->fd, .events = POLLIN };
        for (unsigned i = 0; watch_nets && i < q->n_net; i++)
                fds[n++] = (struct pollfd){ .fd = netbuf_event_fd(q->net[i]), .events = POLLIN };
        first_disk = n;
        for (unsigned i = 0; stream && i < q->n_disk; i++)
                fds[n++] = (struct pollfd){ .fd = blockrepl_stream_fd(q->disk[i]), .events = POLLIN };
        for (;;) {
                if (watch_nets && qemu_net_full(q)) {
                        log_msg(LOG_LVL_WARN, MSG_NETBUF_FULL, p->cfg.name, (int64_t)p->v->epoch,
                                "output buffer full (netbuf_max_mib=%u) while standby %s is slow: "
                                "dropping protection and releasing the output (on_buffer_full=release)",
                                p->cfg.netbuf_max_mib, p->peer);
                        return -ENOBUFS;
                }
                if (stream && p->stream_err)
                        return 0; /* the next epoch fails with it */
                uint64_t now = now_ns();
                if (now >= deadline)
                        return 0;
                int r = poll(fds, n, (int)((deadline - now) / 1000000u) + 1);
                if (r < 0 && errno != EINTR)
                        return watch_nets ? -errno : 0;
                if (r <= 0)
                        continue;
                if (fds[0].revents)
                        return 0;
                if (drain_events(fds, 1, n, first_disk, first_disk, NULL))
                        stream_disks(p);
        }
}

static int await_ack(struct primary *p, uint64_t epoch, bool hold)
{
        uint64_t deadline = now_ns() + (uint64_t)p->cfg.ack_timeout_ms * 1000000u;
        int r = 0;
        if (!strcmp(p->cfg.on_buffer_full, "release") && p->v->qemu->n_net)
                r = wait_ack_while(p, deadline, true, false);
        else if (!hold && p->v->qemu->n_disk)
                /* not for a held epoch: after it the standby must be
                 * between epochs (PING, HANDOVER) */
                r = wait_ack_while(p, deadline, false, true);
        if (r == 0)
                r = wire_recv(p->fd, deadline, &p->in);
        if (r < 0)
                return r;
        if (p->in.hdr.type == WIRE_ERROR) {
                struct wire_error e;
                if (wire_get_error(&p->in, &e) == 0)
                        log_msg(LOG_LVL_WARN, MSG_PEER_REFUSED, p->cfg.name, (int64_t)epoch,
                                "standby %s: %s", p->peer, e.text);
                return -ECONNABORTED;
        }
        struct wire_ack a;
        if (wire_get_ack(&p->in, &a) < 0 || p->in.hdr.epoch != epoch)
                return -EBADMSG;
        return 0;
}

/* QMP failed. Either QEMU is dying (wait for it, briefly), or its QMP
 * connection broke: reconnect and make sure the VM runs. A QEMU that can
 * be neither reached nor reaped is killed: a primary nobody controls must
 * not run on while the standby may take over. Returns 0 (VM running,
 * under control) or -ECHILD (VM gone). */
static int recover_vm(struct primary *p)
{
        struct qemu_vm *q = p->v->qemu;
        if (q->pidfd >= 0) {
                struct pollfd pf = { .fd = q->pidfd, .events = POLLIN };
                poll(&pf, 1, qmp_is_broken(q->qmp) ? 2000 : 0);
        }
        if (qemu_exited(q))
                return -ECHILD;
        if (qmp_is_broken(q->qmp)) {
                qemu_devstate_disarm(q);
                qmp_close(q->qmp);
                q->qmp = NULL;
                if (qmp_connect(q->qmp_path, QMP_TIMEOUT_MS, &q->qmp) < 0)
                        goto kill;
        }
        if (qemu_cont(q, QMP_TIMEOUT_MS) == 0 && qemu_migration_setup(q, QMP_TIMEOUT_MS) == 0)
                return 0;
kill:
        log_msg(LOG_LVL_ERR, MSG_VM_EXITED, p->cfg.name, -1,
                "QEMU (pid %d) no longer answers QMP: killed, so that only the standby can "
                "continue the VM", (int)q->pid);
        kill(q->pid, SIGKILL);
        qemu_exited(q);
        return -ECHILD;
}

/* The final epoch of a switchover is committed: its output is taken
 * out of the NICs unsent, to leave from the new primary. The first frame
 * the world then sees from the guest comes from its new place, so the
 * client's next request goes there, not to the copy about to be powered
 * off (where it would be lost and cost a TCP retransmission timeout). */
static void take_output(struct primary *p, uint64_t epoch)
{
        struct qemu_vm *q = p->v->qemu;
        for (unsigned i = 0; i < q->n_net; i++)
                if (netbuf_take(q->net[i], epoch, &p->out_frames[i], &p->out_len[i]) < 0)
                        netbuf_release(q->net[i], epoch); /* plug: its frames are in the kernel */
}

/* The switchover did not happen (send): the taken output is committed,
 * it leaves from here after all. It did (!send): the standby has it. */
static void release_taken_output(struct primary *p, bool send)
{
        struct qemu_vm *q = p->v->qemu;
        for (unsigned i = 0; i < CFG_MAX_NICS; i++) {
                if (send && p->out_frames[i] && q && i < q->n_net)
                        netbuf_emit(q->net[i], p->out_frames[i], p->out_len[i]);
                free(p->out_frames[i]);
                p->out_frames[i] = NULL;
                p->out_len[i] = 0;
        }
}

/* NET_FRAMES records of at most ~8 MiB, whole frames each. */
static int send_taken_output(struct primary *p)
{
        for (unsigned i = 0; i < CFG_MAX_NICS; i++) {
                const uint8_t *b = p->out_frames[i];
                size_t len = p->out_len[i], start = 0, off = 0;
                uint32_t count = 0;
                while (off <= len) {
                        uint32_t fl = off < len ? netbuf_frame_len(b + off) : 0;
                        bool flush = off == len ||
                                     (off > start && off + NETBUF_FRAME_HDR + fl - start > (8u << 20));
                        if (flush && count) {
                                struct wire_net_frames f = { .nic = i, .count = count,
                                                             .frames = b + start, .len = off - start };
                                wire_buf_reset(&p->wb);
                                int r = wire_put_net_frames(&p->wb, p->v->committed_epoch, &f);
                                if (r == 0)
                                        r = send_buf(p);
                                if (r < 0)
                                        return r;
                                start = off;
                                count = 0;
                        }
                        if (off == len)
                                break;
                        off += NETBUF_FRAME_HDR + fl;
                        count++;
                }
        }
        return 0;
}

/* Pages pfns[from, to) from guest RAM to their staging slots. */
struct copy_job {
        struct primary *p;
        const uint32_t *pfns;
        size_t from, to;
};

static void copy_range(void *arg)
{
        const struct copy_job *j = arg;
        const struct primary *p = j->p;
        for (size_t i = j->from; i < j->to; i++)
                memcpy(p->staging + i * HAVMS_PAGE_SIZE,
                       p->ram + (uint64_t)j->pfns[i] * HAVMS_PAGE_SIZE, HAVMS_PAGE_SIZE);
}

/* The copy in the pause, of the epoch's n pages: a large set in two halves
 * at once (the twin takes the upper half). */
static void copy_dirty(struct primary *p, const uint32_t *pfns, size_t n)
{
        struct copy_job lo = { p, pfns, 0, n }, hi = { p, pfns, n / 2, n };
        if (!p->twin || n < COPY_SPLIT_MIN_PAGES) {
                copy_range(&lo);
                return;
        }
        lo.to = n / 2;
        twin_go(p->twin, copy_range, &hi);
        copy_range(&lo);
        twin_wait(p->twin);
}

/* Sending before the stop: the n pages of the pre-scan (p->dirty[0, n)),
 * read and sent while the VM runs. Each was re-protected by the
 * pre-scan before it is read here, so a page the guest does not write
 * again before the stop is read with exactly its content at the stop; a
 * page it does write again (even while it is being read: a torn read) is
 * found by the scan in the pause and sent again, after, with its content
 * at the stop. The standby keeps the last copy of a page in an epoch
 * (docs/wire.md), and nothing is applied before EPOCH_END, so the replica
 * is the state at the stop either way. The pages are marked in p->seen
 * for counting the re-sent ones. */
static int send_prestop(struct primary *p, uint64_t epoch, size_t n, uint64_t *raw)
{
        int r = 0;
        for (size_t i = 0; i < n && r == 0; i++) {
                uint32_t pfn = p->dirty[i];
                p->seen[pfn / 64] |= 1ull << (pfn % 64);
                memcpy(p->snap, p->ram + (uint64_t)pfn * HAVMS_PAGE_SIZE, HAVMS_PAGE_SIZE);
                r = add_page(p, WIRE_EPOCH_PAGES, epoch, pfn, p->snap, raw);
        }
        return r == 0 ? flush_pages(p) : r;
}

/* After an epoch that sent pages before the stop (p->dirty: those n_prestop,
 * then the n of the pause): how many were sent twice; the p->seen marks
 * are cleared. When most were, sending them before the stop only doubled
 * the work (a writer that rewrites its pages faster than they are sent):
 * off for the next PRESTOP_PROBE_EPOCHS epochs. */
#define PRESTOP_PROBE_EPOCHS 16
static uint32_t count_resent(struct primary *p, size_t n_prestop, size_t n)
{
        uint32_t again = 0;
        for (size_t i = n_prestop; i < n_prestop + n; i++)
                if (p->seen[p->dirty[i] / 64] & (1ull << (p->dirty[i] % 64)))
                        again++;
        for (size_t i = 0; i < n_prestop; i++)
                p->seen[p->dirty[i] / 64] = 0;
        if (again * 2 > n_prestop) {
                p->prestop_off = true;
                p->prestop_probe = PRESTOP_PROBE_EPOCHS;
        }
        return again;
}

/* Returns 0 when committed; -ECHILD when the VM is gone; another negative
 * errno when the standby is lost (the VM is running either way). With
 * hold, a committed epoch leaves the VM paused (replica == guest RAM). */
static int run_epoch(struct primary *p, uint64_t epoch, bool hold)
{
        struct qemu_vm *q = p->v->qemu;
        struct epoch_stat st = { 0 };
        uint64_t raw = 0;
        size_t n = 0, dslen = 0;
        bool stopped = false;
        size_t n_marked = 0; /* pages sent before the stop, marked in p->seen (send_prestop) */
        /* for the latency breakdown: output waiting since, epoch start */
        uint64_t t_start = now_ns(), out_since = qemu_net_waiting_since(q);

        /* Pre-scan while the VM still runs: re-protecting the pages is the
         * expensive part of a scan (TLB shootdowns), and most of the
         * epoch's pages are found here. The scan in the pause then only
         * finds what was written in the short gap, and every page of
         * either set is copied in the pause, so the copy is consistent
         * with the device state. Only for a tracker whose scan is atomic:
         * soft-dirty scans only with the VM stopped. */
        size_t n_pre = 0;
        int r = p->stream_err; /* the standby was lost while streaming */
        if (r == 0 && tracker_scan_is_atomic(p->tracker))
                r = scan_all(p, &n_pre);
        if (r < 0)
                goto out;
        /* Sending before the stop (send_prestop): the pre-scan's pages
         * leave now, and the pause copies only what is written from here
         * to the stop. */
        p->wire_bytes = 0;
        wire_buf_reset(&p->wb);
        struct dcache_stats dc0 = { 0 }, dc1 = { 0 };
        if (p->dcache)
                dcache_get_stats(p->dcache, &dc0);
        size_t n_prestop = 0;
        if (p->prestop_off && p->prestop_probe && --p->prestop_probe == 0)
                p->prestop_off = false;
        if (n_pre && !p->prestop_off) {
                n_marked = n_pre; /* marked as they go: cleared at out if it fails */
                if ((r = send_prestop(p, epoch, n_pre, &raw)) < 0)
                        goto out;
                n_prestop = n_pre;
                n_pre = 0;
        }
        /* No QMP `stop`: the migration that captures the device state
         * stops the VM itself when it completes (its set-up and the
         * firmware ROM blocks run while the guest still runs), and leaves
         * it stopped. The pause starts at QEMU's STOP event. */
        r = qemu_devstate_arm(q, QMP_TIMEOUT_MS);
        if (r < 0)
                goto out;
        /* QEMU's stop waits for in-flight disk requests: a writer held at
         * the log's hard limit must be let through (blockrepl.h). */
        for (unsigned i = 0; i < q->n_disk; i++)
                blockrepl_lift_limit(q->disk[i]);
        stopped = true; /* from here the VM may be stopped: always cont on failure */
        r = qemu_save_devstate(q, &p->devstate, &p->devstate_cap, &dslen, DEVSTATE_TIMEOUT_MS);
        if (r == 0) /* completed: the VM is stopped and the state is whole */
                r = qemu_devstate_check(q, DEVSTATE_TIMEOUT_MS);
        if (r < 0)
                goto out;
        uint64_t t1 = now_ns(), t1_wall = wall_us();
        uint64_t stop_us = qemu_stop_time_us(q, t1_wall);
        /* after a send before the stop: what was written since the
         * pre-scan, after those pages in p->dirty (each list holds a page once) */
        r = n_prestop ? tracker_scan(p->tracker, p->dirty + n_prestop, p->npages, &n)
                    : scan_more(p, n_pre, &n);
        if (r < 0)
                goto out;
        const uint32_t *pfns = p->dirty + n_prestop; /* the pages of the pause */
        uint64_t t2 = now_ns();
        if ((r = grow_staging(p, n)) < 0)
                goto out;
        copy_dirty(p, pfns, n);
        uint64_t t3 = now_ns();
        /* The barrier: everything the guest sent or wrote up to here
         * belongs to this epoch. QEMU has drained its disk requests and
         * handed over its frames on the way to the stop. */
        r = qemu_net_barrier(q, epoch);
        for (unsigned i = 0; i < q->n_disk && r == 0; i++)
                r = blockrepl_barrier(q->disk[i], &p->logs[i]);
        if (r < 0)
                goto out;
        uint64_t t4 = now_ns();
        if (!hold) {
                r = qemu_cont(q, QMP_TIMEOUT_MS);
                if (r < 0)
                        goto out;
                stopped = false;
        }
        uint64_t t5 = now_ns();
        uint64_t stop_wall = stop_us / 1000;
        /* stop: QEMU stopping the VM is inside devstate (STOP event to
         * stream end); kept in the record for comparison with older runs */
        st.stop_ms = 0;
        st.devstate_ms = (float)(t1_wall - stop_us) / 1e3f;
        st.scan_ms = (float)(t2 - t1) / 1e6f;
        st.copy_ms = (float)(t3 - t2) / 1e6f;
        st.barrier_ms = (float)(t4 - t3) / 1e6f;
        /* The guest runs again from QEMU's RESUME event, before cont's
         * reply reaches us: the pause the guest sees ends there. Wall
         * clock, like the STOP it is measured from; t1_wall is t1. */
        uint64_t t4_wall = t1_wall + (t4 - t1) / 1000u;
        uint64_t resume_us = hold ? t4_wall : qemu_resume_time_us(q, t1_wall + (t5 - t1) / 1000u);
        if (resume_us < t4_wall)
                resume_us = t4_wall;
        st.cont_ms = (float)(resume_us - t4_wall) / 1e3f;
        st.early = p->early;
        p->last_pause_end = t5;
        st.pause_ms = (float)(resume_us - stop_us) / 1e3f;
        st.dirty_pages = (uint32_t)(n_prestop + n);
        st.prestop_pages = (uint32_t)n_prestop;
        uint64_t t0 = t1 - (uint64_t)(t1_wall - stop_us) * 1000u; /* stop, monotonic */
        st.out_wait_ms = out_since && out_since < t_start ? (float)(t_start - out_since) / 1e6f : 0;
        st.to_output_ms = out_since && p->last_release && out_since > p->last_release
                                  ? (float)(out_since - p->last_release) / 1e6f : 0;
        st.prestop_ms = t0 > t_start ? (float)(t0 - t_start) / 1e6f : 0;

        /* The VM runs again; the rest overlaps with it (p->wire_bytes
         * counts on from the pages sent before the stop). */
        if (n_prestop) {
                st.resent_pages = count_resent(p, n_prestop, n);
                n_marked = 0;
        }
        for (size_t i = 0; i < n && r == 0; i++)
                r = add_page(p, WIRE_EPOCH_PAGES, epoch, pfns[i],
                             p->staging + i * HAVMS_PAGE_SIZE, &raw);
        if (p->dcache) {
                dcache_get_stats(p->dcache, &dc1);
                st.delta_hits = (uint32_t)(dc1.hits - dc0.hits);
                st.delta_misses = (uint32_t)(dc1.misses - dc0.misses);
        }
        if (r == 0)
                r = flush_pages(p);
        if (r == 0) {
                size_t need = codec_chunk_bound(DEVSTATE_CHUNK);
                if (!p->chunk && !(p->chunk = malloc(need)))
                        r = -ENOMEM;
                if (!p->chunk_scratch && !(p->chunk_scratch = malloc(need)))
                        r = -ENOMEM;
        }
        if (r == 0)
                r = send_devstate(p, epoch, dslen);
        /* the log just cut starts with what was streamed */
        uint64_t disk_recs = p->stream_recs, disk_bytes = p->stream_bytes;
        uint64_t streamed_wire = p->stream_wire;
        if (r == 0 && q->n_disk) {
                struct disk_sender ds = { .fd = p->fd, .wb = &p->wb, .wire_bytes = &p->wire_bytes,
                                          .timeout_ns = (uint64_t)p->cfg.ack_timeout_ms * 1000000u };
                r = disks_send_logs(p->logs, q->n_disk, p->streamed, &ds, epoch, &disk_recs,
                                    &disk_bytes);
        }
        stream_reset(p); /* the open log is new since the barrier */
        if (r == 0) {
                struct wire_epoch_end e = { .pages = n_prestop + n, .devstate_bytes = dslen,
                                            .stop_wall_ms = stop_wall, .disk_recs = disk_recs,
                                            .disk_bytes = disk_bytes };
                r = wire_put_epoch_end(&p->wb, epoch, &e);
                if (r == 0)
                        r = send_buf(p);
        }
        uint64_t t_sent = now_ns();
        if (r == 0)
                r = await_ack(p, epoch, hold);
        if (r < 0)
                goto out;
        uint64_t t_ack = now_ns();
        /* The standby committed exactly this device state: it is the base
         * of the next epoch's deltas. A swap, not a copy; the next save
         * overwrites the old base's buffer. Any failure before this point
         * drops the connection (primary_thread), and the base with it. */
        uint8_t *tb = p->ds_base;
        size_t tc = p->ds_base_cap;
        p->ds_base = p->devstate;
        p->ds_base_cap = p->devstate_cap;
        p->ds_base_len = dslen;
        p->ds_base_ok = true;
        p->devstate = tb;
        p->devstate_cap = tc;
        /* Committed on the standby: what the guest said in this epoch may
         * now reach the world, and its disk writes are no longer ours. */
        if (hold && p->v->handover_requested)
                take_output(p, epoch);
        else
                qemu_net_release(q, epoch);
        for (unsigned i = 0; i < q->n_disk; i++) {
                blockrepl_committed(q->disk[i], p->logs[i].seq);
                br_log_free(&p->logs[i]); /* keeps seq, for the resync commit */
        }
        st.commit_ms = ms_since(t0);
        st.send_ms = (float)(t_sent - t5) / 1e6f;
        st.ack_ms = (float)(t_ack - t_sent) / 1e6f;
        p->last_release = now_ns();
        st.release_ms = (float)(p->last_release - t_ack) / 1e6f;
        st.disk_bytes = disk_bytes;
        st.raw_bytes = raw + dslen + disk_bytes;
        st.wire_bytes = p->wire_bytes + streamed_wire;
        pthread_mutex_lock(&p->v->lock);
        if (!hold) /* a held epoch's "pause" lasts until resume */
                vm_record_epoch(p->v, &st);
        p->v->committed_epoch = epoch;
        p->v->last_commit_wall_ms = wall_ms();
        p->v->last_stop_wall_ms = stop_wall;
        pthread_mutex_unlock(&p->v->lock);
        /* The next epoch's channel, while the guest works on its next
         * output: one QMP round trip less between that output and its
         * release. A failure here is met again, and reported, there. */
        if (!hold)
                (void)qemu_devstate_arm(q, QMP_TIMEOUT_MS);
out:
        /* a failed epoch leaves no marks behind: scan_more() needs
         * p->seen clear */
        for (size_t i = 0; i < n_marked; i++)
                p->seen[p->dirty[i] / 64] = 0;
        if (stopped && (r < 0 || !hold) && qemu_cont(q, QMP_TIMEOUT_MS) < 0) {
                int rr = recover_vm(p);
                r = rr < 0 ? rr : r < 0 ? r : -EIO;
        } else if (r < 0 && qmp_is_broken(q->qmp) && recover_vm(p) < 0) {
                r = -ECHILD;
        }
        if (r < 0 && qemu_exited(q))
                r = -ECHILD;
        return r;
}

/* ---- the thread ---- */

/* Wait for the control thread, other_fd, QEMU's death (its pidfd: seen
 * within milliseconds) or the timeout. */
static int wait_wake_or(struct primary *p, int other_fd, int timeout_ms)
{
        struct pollfd fds[3] = { { .fd = p->wake_fd, .events = POLLIN },
                                 { .fd = p->v->qemu->pidfd, .events = POLLIN },
                                 { .fd = other_fd, .events = POLLIN } };
        int r = poll(fds, other_fd >= 0 ? 3 : 2, timeout_ms);
        if (r > 0 && (fds[0].revents & POLLIN)) {
                uint64_t x;
                ssize_t k = read(p->wake_fd, &x, sizeof(x));
                (void)k;
        }
        return r;
}

/* While held, the standby hears a PING every epoch instead of an epoch. */
static int send_ping(struct primary *p)
{
        wire_buf_reset(&p->wb);
        int r = wire_put_ping(&p->wb, p->v->committed_epoch);
        return r < 0 ? r : send_buf(p);
}

/* Wait until the next epoch is due. It is due epoch_ms after the start of
 * the previous one; or early (adaptive epochs), min_epoch_ms after the last
 * pause ended, when the guest has output waiting or a disk log passed its
 * soft limit; or at once when an output buffer is full or the control
 * thread wants us. Returns true when an epoch should run now. */
static bool wait_next_epoch(struct primary *p, uint64_t due, bool *disk_soft)
{
        struct qemu_vm *q = p->v->qemu;
        struct pollfd fds[2 + CFG_MAX_NICS + 2 * CFG_MAX_DISKS];
        nfds_t n = 0;
        fds[n++] = (struct pollfd){ .fd = p->wake_fd, .events = POLLIN };
        /* QEMU's death ends the wait at once (the epoch then finds it) */
        fds[n++] = (struct pollfd){ .fd = q->pidfd, .events = POLLIN };
        for (unsigned i = 0; i < q->n_net; i++)
                fds[n++] = (struct pollfd){ .fd = netbuf_event_fd(q->net[i]), .events = POLLIN };
        nfds_t first_disk = n;
        for (unsigned i = 0; i < q->n_disk; i++)
                fds[n++] = (struct pollfd){ .fd = blockrepl_log_fd(q->disk[i]), .events = POLLIN };
        nfds_t first_stream = n;
        for (unsigned i = 0; i < q->n_disk; i++)
                fds[n++] = (struct pollfd){ .fd = blockrepl_stream_fd(q->disk[i]), .events = POLLIN };
        uint64_t min_ns = (uint64_t)p->cfg.min_epoch_ms * 1000000u;
        for (;;) {
                uint64_t now = now_ns(), wake = due;
                p->early = false;
                if (stop_requested(p) || p->v->hold_requested)
                        return !stop_requested(p);
                if (now >= due || p->stream_err)
                        return true;
                if (qemu_net_full(q) || (min_ns && (*disk_soft || qemu_net_waiting(q)))) {
                        uint64_t early = p->last_pause_end + min_ns;
                        if (qemu_net_full(q) || now >= early) {
                                p->early = true;
                                return true;
                        }
                        wake = early < due ? early : due;
                }
                uint64_t left = wake - now;
                struct timespec ts = { .tv_sec = (time_t)(left / 1000000000u),
                                       .tv_nsec = (long)(left % 1000000000u) };
                int r = ppoll(fds, n, &ts, NULL);
                if (r <= 0)
                        continue;
                if (fds[1].revents)
                        return true;
                /* the pidfd (1) did not fire: the rest are eventfds */
                if (drain_events(fds, 0, n, first_disk, first_stream, disk_soft))
                        stream_disks(p);
        }
}

/* A planned switchover (`handover`), with the VM held after a committed
 * checkpoint: its replica equals guest RAM, disks and device state, and
 * every frame of that epoch is out. Tell the standby to KEEP the replica
 * (ERROR HANDOVER) and wait for it to confirm by closing the connection.
 * Only then may the caller power our copy off; the cluster activates the
 * standby after that (docs/failback.md). */
static int hand_over(struct primary *p)
{
        char why[128];
        snprintf(why, sizeof(why), "planned switchover: keep the replica of epoch %llu",
                 (unsigned long long)p->v->committed_epoch);
        int r = send_taken_output(p);
        wire_buf_reset(&p->wb);
        if (r == 0)
                r = wire_put_error(&p->wb, WIRE_ERR_HANDOVER, why);
        if (r == 0)
                r = send_buf(p);
        /* Only the standby's explicit answer counts — an ACK of the
         * committed epoch, sent once it has kept the replica for
         * activation — never a mere close: a standby that refused the
         * output, was told to discard, or died closes too. */
        uint64_t deadline = now_ns() + (uint64_t)p->cfg.ack_timeout_ms * 1000000u;
        if (r == 0)
                r = wire_recv(p->fd, deadline, &p->in);
        if (r == 0 && (p->in.hdr.type != WIRE_ACK || p->in.hdr.epoch != p->v->committed_epoch))
                r = -EPROTO;
        if (r == 0)
                drain_until_closed(p->fd, deadline);
        if (r < 0) {
                log_msg(LOG_LVL_ERR, MSG_HANDOVER, p->cfg.name, (int64_t)p->v->committed_epoch,
                        "handover to %s failed (%s): the VM runs on here", p->peer, strerror(-r));
                release_taken_output(p, true);
                return r;
        }
        release_taken_output(p, false); /* the standby's to send now */
        return 0;
}

static int protected_loop(struct primary *p)
{
        uint64_t interval = (uint64_t)p->cfg.epoch_ms * 1000000u;
        uint64_t due = p->last_pause_end + interval;
        bool held = false, disk_soft = false;
        int r = 0;
        /* No stream_reset here: while the standby committed the first
         * epoch, the guest's next disk writes may already have been
         * streamed (await_ack); forgetting them would send them twice and
         * count them once (the standby refuses that EPOCH_END). */
        while (!stop_requested(p)) {
                /* the handover starts under the lock: from here the
                 * control side can no longer cancel it (cmd_handover) */
                bool go = false;
                if (held) {
                        pthread_mutex_lock(&p->v->lock);
                        if ((go = p->v->handover_requested))
                                p->v->handover_result = 2;
                        pthread_mutex_unlock(&p->v->lock);
                }
                if (held && !go)
                        release_taken_output(p, true); /* a handover cancelled after its checkpoint */
                if (go) {
                        r = hand_over(p);
                        if (r == 0) {
                                p->handed_over = true;
                                return 0; /* the VM stays paused: it is powered off next */
                        }
                        pthread_mutex_lock(&p->v->lock);
                        p->v->handover_requested = false;
                        p->v->handover_result = r;
                        pthread_cond_broadcast(&p->v->changed);
                        pthread_mutex_unlock(&p->v->lock);
                        break;
                }
                if (held) {
                        /* the VM is paused after a committed epoch: ping
                         * the standby every interval until resume */
                        wait_wake_or(p, -1, (int)p->cfg.epoch_ms);
                        if (stop_requested(p))
                                break;
                        if (qemu_exited(p->v->qemu)) {
                                r = -ECHILD;
                                break;
                        }
                        if (!p->v->hold_requested) {
                                r = qemu_cont(p->v->qemu, QMP_TIMEOUT_MS);
                                if (r < 0)
                                        break;
                                held = false;
                                p->last_pause_end = now_ns();
                                due = p->last_pause_end + interval;
                                set_state(p, VM_PROTECTED);
                        } else if ((r = send_ping(p)) < 0) {
                                break;
                        }
                        continue;
                }
                if (!wait_next_epoch(p, due, &disk_soft))
                        break;
                if (qemu_exited(p->v->qemu)) {
                        r = -ECHILD;
                        break;
                }
                bool want_hold = p->v->hold_requested;
                uint64_t start = now_ns();
                pthread_mutex_lock(&p->v->lock);
                uint64_t epoch = ++p->v->epoch;
                pthread_mutex_unlock(&p->v->lock);
                disk_soft = false;
                r = run_epoch(p, epoch, want_hold);
                if (r < 0)
                        break;
                /* the normal cadence counts from the start of an epoch; one
                 * that ran long is followed at once, without a burst */
                due = start + interval;
                if (want_hold) {
                        held = true;
                        set_state(p, VM_HELD);
                }
        }
        if (!p->handed_over)
                release_taken_output(p, true); /* committed output of a switchover that did not happen */
        /* Leaving protection (standby lost, unprotect) never leaves the
         * guest paused. */
        if (held && qemu_cont(p->v->qemu, QMP_TIMEOUT_MS) < 0 && qemu_exited(p->v->qemu))
                r = -ECHILD;
        return r;
}

static int setup(struct primary *p)
{
        struct qemu_vm *q = p->v->qemu;
        p->npages = q->ram_bytes / HAVMS_PAGE_SIZE;
        p->ram_fd = open(q->ram_path, O_RDONLY | O_CLOEXEC);
        if (p->ram_fd < 0)
                return -errno;
        void *m = mmap(NULL, q->ram_bytes, PROT_READ, MAP_SHARED, p->ram_fd, 0);
        if (m == MAP_FAILED)
                return -errno;
        p->ram = m;
        if (p->cfg.delta_cache_mib) {
                /* more than guest RAM would never fill: cut to it */
                uint64_t slots = (uint64_t)p->cfg.delta_cache_mib * (1048576 / HAVMS_PAGE_SIZE);
                int r = dcache_open(p->npages, (uint32_t)(slots < p->npages ? slots : p->npages),
                                    &p->dcache);
                if (r < 0)
                        return r;
        }
        for (unsigned i = 0; i < q->n_disk; i++) {
                if (blockrepl_size(q->disk[i]) % HAVMS_PAGE_SIZE) {
                        pthread_mutex_lock(&p->v->lock);
                        vm_set_error(p->v, "disk %s: size %llu is not a multiple of 4096 bytes: "
                                     "it cannot be replicated", p->cfg.disks[i],
                                     (unsigned long long)blockrepl_size(q->disk[i]));
                        pthread_mutex_unlock(&p->v->lock);
                        log_msg(LOG_LVL_ERR, MSG_PROTECT_FAILED, p->cfg.name, -1, "%s",
                                p->v->last_error);
                        return -EINVAL;
                }
        }
        p->dirty = calloc(2 * p->npages, sizeof(uint32_t));
        p->seen = calloc((p->npages + 63) / 64, sizeof(uint64_t));
        if (!p->dirty || !p->seen)
                return -ENOMEM;
        uint64_t start, len;
        int r = tracker_find_mapping(q->pid, q->ram_path, &start, &len);
        if (r < 0)
                return r;
        const char *why = NULL;
        r = tracker_open(p->cfg.tracker, q->pid, start, q->ram_bytes, &p->tracker, &why);
        if (r < 0) {
                log_msg(LOG_LVL_ERR, MSG_TRACKER_FAILED, p->cfg.name, -1,
                        "cannot track dirty pages: %s", why ? why : strerror(-r));
                pthread_mutex_lock(&p->v->lock);
                vm_set_error(p->v, "cannot track dirty pages: %s", why ? why : strerror(-r));
                pthread_mutex_unlock(&p->v->lock);
                return r;
        }
        /* Without a twin the copy is done by one thread: still right. */
        if (twin_worthwhile() && twin_start(&p->twin) < 0)
                p->twin = NULL;
        return qemu_migration_setup(q, QMP_TIMEOUT_MS);
}

static void teardown(struct primary *p)
{
        tracker_close(p->tracker);
        twin_stop(p->twin);
        p->twin = NULL;
        if (p->ram)
                munmap((void *)p->ram, p->npages * HAVMS_PAGE_SIZE);
        dcache_close(p->dcache);
        if (p->ram_fd >= 0)
                close(p->ram_fd);
        free(p->dirty);
        free(p->seen);
        free(p->staging);
        free(p->devstate);
        free(p->ds_base);
        free(p->chunk_scratch);
        free(p->chunk);
        free(p->peer_hash);
        for (unsigned i = 0; i < CFG_MAX_DISKS; i++)
                free(p->disk_hash[i]);
        wire_buf_free(&p->wb);
        wire_msg_free(&p->in);
}

/* Protection is off (standby lost, sync failed, unprotect): held output
 * flows again, and the disk writes the standby may not have — the logs of
 * epochs not ACKed, and every write from now on — go into the persistent
 * bitmap that failback resyncs from. */
static void drop_held_io(struct primary *p);

static void leave_protection_io(struct primary *p)
{
        struct qemu_vm *q = p->v->qemu;
        if (!q)
                return;
        if (p->v->kill_requested) { /* fenced: nothing held may go out */
                drop_held_io(p);
                return;
        }
        for (unsigned i = 0; i < q->n_disk; i++) {
                blockrepl_bitmap_mark_log(q->disk[i], &p->logs[i]);
                br_log_free(&p->logs[i]);
        }
        /* the guest's flushes must be durable here before any held output
         * that followed them goes out; if they cannot be, that output is
         * dropped (as for a fence), never sent */
        if (qemu_disk_mode(q, BR_MODE_ALONE) < 0)
                for (unsigned i = 0; i < q->n_net; i++)
                        netbuf_discard(q->net[i]);
        qemu_net_buffering(q, false);
}

/* Protection ends, and the standby may still take over from its last
 * committed epoch (VM gone, stale, stopped while isolated): what the
 * guest said after that epoch must never reach the world. Held frames are
 * dropped, not released; the disk writes the standby may not have still
 * go into the bitmap (they are on this host's image). */
static void drop_held_io(struct primary *p)
{
        struct qemu_vm *q = p->v->qemu;
        if (!q)
                return;
        for (unsigned i = 0; i < q->n_net; i++)
                netbuf_discard(q->net[i]);
        for (unsigned i = 0; i < q->n_disk; i++) {
                blockrepl_bitmap_mark_log(q->disk[i], &p->logs[i]);
                br_log_free(&p->logs[i]);
        }
        (void)qemu_disk_mode(q, BR_MODE_ALONE); /* held output is dropped above */
}

/* Protection ends on purpose (unprotect, stop, on_buffer_full=release,
 * the guest powered off): the standby must discard its replica BEFORE
 * held output is released, or it could take over from a state the world
 * has already seen past. It closes the connection once it has; wait for
 * that (at most ack_timeout). Returns true when it confirmed. */
static bool say_goodbye(struct primary *p, const char *why)
{
        if (p->fd < 0)
                return false;
        wire_buf_reset(&p->wb);
        bool confirmed = wire_put_error(&p->wb, WIRE_ERR_SHUTDOWN, why) == 0 && send_buf(p) == 0 &&
                         drain_until_closed(p->fd, now_ns() + (uint64_t)p->cfg.ack_timeout_ms *
                                                                   1000000u) == 0;
        if (!confirmed)
                log_msg(LOG_LVL_WARN, MSG_STANDBY_LOST, p->cfg.name, (int64_t)p->v->epoch,
                        "standby %s did not confirm the end of protection: it may still hold "
                        "an activatable replica; do not activate it", p->peer);
        return confirmed;
}

/* The guest powered itself off: that is not a failure, and the standby
 * must not resurrect it. Tell it (on the connection we have, or on a new
 * one: a HELLO alone already makes it drop its replica). */
static bool tell_guest_off(struct primary *p)
{
        int r = 0;
        if (p->fd < 0 && (r = connect_peer(p, false)) < 0) {
                log_msg(LOG_LVL_WARN, MSG_GUEST_OFF_TOLD, p->cfg.name, (int64_t)p->v->epoch,
                        "the guest powered itself off, but standby %s could not be told (%s): "
                        "its replica, if any, is still activatable — do not activate it",
                        p->peer, strerror(-r));
                return false;
        }
        bool ok = say_goodbye(p, WIRE_SHUTDOWN_GUEST_OFF);
        if (ok)
                log_msg(LOG_LVL_NOTICE, MSG_GUEST_OFF_TOLD, p->cfg.name, (int64_t)p->v->epoch,
                        "the guest powered itself off: standby %s discarded its replica", p->peer);
        return ok;
}

/* Managed mode, standby lost with output held (ISOLATED). The standby may
 * be about to take over from its last committed epoch: nothing more may
 * reach the world until it provably cannot (`release`, or it accepts a
 * HELLO and thereby drops the replica). */
static void isolate(struct primary *p, int r)
{
        struct vm *v = p->v;
        pthread_mutex_lock(&v->lock);
        v->epochs_failed++;
        vm_set_error(v, "standby %s lost: %s; isolated: output held until the standby is "
                     "back or `release`", p->peer, strerror(-r));
        /* A `release` answers one isolation: one left over from an earlier
         * one (granted meanwhile by a WELCOME) must not end this one. */
        v->release_requested = false;
        vm_set_state(v, VM_ISOLATED);
        pthread_mutex_unlock(&v->lock);
        log_msg(LOG_LVL_WARN, MSG_ISOLATED, v->name, (int64_t)v->committed_epoch,
                "standby %s lost (%s): VM ISOLATED, its output and disk logs held (managed: the "
                "standby may take over); retrying every %u ms", p->peer, strerror(-r),
                p->cfg.reconnect_ms);
}

/* Managed mode: `unprotect` while output is held, and the standby did
 * not confirm the goodbye. The VM runs on, but the standby may still take
 * over from its last committed epoch: the output stays held (ISOLATED)
 * until `release` (the cluster says it cannot take over), or the standby
 * accepts a HELLO and confirms a goodbye (it dropped that replica), or
 * `stop`/`kill`/the VM's death (the output is then dropped). Returns true
 * when the held output may flow. */
static bool park_isolated(struct primary *p, bool *vm_gone, bool *stale)
{
        struct vm *v = p->v;
        drop_connection(p);
        isolate(p, -ETIMEDOUT);
        log_msg(LOG_LVL_WARN, MSG_UNPROTECT_ISOLATED, v->name, (int64_t)v->committed_epoch,
                "unprotect: standby %s did not confirm the end of protection; the VM stays "
                "ISOLATED with its output held until `release` or `stop`", p->peer);
        for (;;) {
                if (v->kill_requested || qemu_exited(v->qemu)) {
                        *vm_gone = true;
                        return false;
                }
                if (!v->unprotecting) /* primary_stop: `stop` or shutdown */
                        return false;
                if (v->release_requested) {
                        log_msg(LOG_LVL_WARN, MSG_RELEASED, v->name, (int64_t)v->committed_epoch,
                                "released: held output flows, protection ended (the cluster "
                                "says standby %s cannot take over)", p->peer);
                        return true;
                }
                int r = connect_peer(p, true);
                if (r == -ESTALE) {
                        *stale = true;
                        return false;
                }
                if (r == 0 && say_goodbye(p, "primary ended protection")) {
                        log_msg(LOG_LVL_NOTICE, MSG_RELEASED, v->name, (int64_t)v->committed_epoch,
                                "standby %s is back and discarded its replica: held output "
                                "released, protection ended", p->peer);
                        return true;
                }
                drop_connection(p);
                wait_wake_or(p, -1, (int)p->cfg.reconnect_ms);
        }
}

static void *primary_thread(void *arg)
{
        struct primary *p = arg;
        struct vm *v = p->v;
        bool was_protected = p->resumed, vm_gone = false, stale = false;
        /* output held: the standby may have committed an epoch. After an
         * adoption with held output, the standby may hold a replica of an
         * epoch older than what the guest said since: ISOLATED until its
         * WELCOME (it dropped that replica) or `release`; without managed
         * mode only until the first failed attempt (then degraded, as for
         * any lost standby). */
        bool buffering = p->resume_held;
        bool isolated = p->resume_held, adopted_hold = p->resume_held;
        int r = setup(p);
        if (r < 0)
                goto out;
        if (p->resumed)
                log_msg(LOG_LVL_NOTICE, MSG_PROTECT_RESUMED, v->name, -1,
                        "protection to standby %s resumes after a restart of checkpointd: "
                        "re-sync%s", p->peer, p->resume_held ? "; output held until the standby "
                        "accepts us (dropping its old replica) or `release`" : "");
        struct dcache_stats dcs = { 0 };
        if (p->dcache)
                dcache_get_stats(p->dcache, &dcs);
        log_msg(LOG_LVL_INFO, MSG_PROTECT_START, v->name, -1,
                "protecting to standby %s (%s), epoch %u ms, tracker %s, delta cache %.1f MiB "
                "(%u pages + index)%s", p->peer, p->peer_addr, p->cfg.epoch_ms,
                tracker_name(p->tracker),
                p->dcache ? (double)dcache_bytes(p->npages, dcs.slots) / 1048576.0 : 0.0,
                dcs.slots, p->dcache ? "" : ": no XOR deltas");
        while (!stop_requested(p)) {
                set_state(p, isolated ? VM_ISOLATED : was_protected ? VM_DEGRADED : VM_CONNECTING);
                if (isolated && v->release_requested) {
                        leave_protection_io(p);
                        record(p, false);
                        isolated = buffering = adopted_hold = false;
                        log_msg(LOG_LVL_WARN, MSG_RELEASED, v->name, (int64_t)v->committed_epoch,
                                "released: held output flows, VM runs UNPROTECTED (the cluster "
                                "says standby %s cannot take over); retrying every %u ms",
                                p->peer, p->cfg.reconnect_ms);
                        pthread_mutex_lock(&v->lock);
                        v->release_requested = false;
                        vm_set_state(v, VM_DEGRADED);
                        pthread_mutex_unlock(&v->lock);
                        continue;
                }
                /* Never offer the standby a VM we no longer control: a
                 * HELLO makes it drop the replica it could take over from. */
                if ((qmp_is_broken(v->qemu->qmp) || qemu_exited(v->qemu)) && recover_vm(p) < 0) {
                        vm_gone = true;
                        break;
                }
                r = connect_peer(p, true);
                if (r == -ESTALE) {
                        stale = true;
                        break;
                }
                if (r < 0 && r != -EREMOTEIO && r != -ECANCELED)
                        note_failure(p, MSG_STANDBY_UNREACHABLE, "cannot reach standby %s at %s: %s",
                                     p->peer, p->peer_addr, strerror(-r));
                if (r < 0 && r != -ECANCELED && adopted_hold && !p->d->host.managed) {
                        leave_protection_io(p);
                        record(p, false);
                        isolated = buffering = adopted_hold = false;
                        log_msg(LOG_LVL_WARN, MSG_STANDBY_LOST, v->name, -1,
                                "standby %s not reachable after the restart: held output "
                                "released, VM runs UNPROTECTED; retrying every %u ms", p->peer,
                                p->cfg.reconnect_ms);
                        set_state(p, VM_DEGRADED);
                }
                if (r < 0) {
                        wait_wake_or(p, -1, (int)p->cfg.reconnect_ms);
                        if (qemu_exited(v->qemu)) {
                                vm_gone = true;
                                break;
                        }
                        continue;
                }
                if (isolated) {
                        /* its WELCOME says it dropped the replica it could
                         * have taken over from. A `release` that came
                         * meanwhile is answered by this: it must not
                         * survive into a later isolation. */
                        leave_protection_io(p);
                        record(p, false);
                        isolated = buffering = adopted_hold = false;
                        pthread_mutex_lock(&v->lock);
                        v->release_requested = false;
                        pthread_mutex_unlock(&v->lock);
                        log_msg(LOG_LVL_NOTICE, MSG_RELEASED, v->name, (int64_t)v->committed_epoch,
                                "standby %s accepted a new connection (its old replica is gone): "
                                "held output released, re-sync of what differs", p->peer);
                } else if (was_protected) {
                        log_msg(LOG_LVL_NOTICE, MSG_STANDBY_BACK, v->name, -1,
                                "standby %s is back: re-sync of what differs", p->peer);
                }
                uint64_t t0 = now_ms();
                p->wire_bytes = 0;
                r = initial_sync(p);
                if (r == 0) {
                        pthread_mutex_lock(&v->lock);
                        uint64_t epoch = ++v->epoch;
                        pthread_mutex_unlock(&v->lock);
                        /* from the first epoch on, output waits for its ACK */
                        record(p, true);
                        qemu_net_buffering(v->qemu, true);
                        /* only now may flushes rely on the standby */
                        qemu_disk_defer_flushes(v->qemu);
                        buffering = true;
                        p->early = false;
                        stream_reset(p); /* nothing of this log went yet */
                        r = run_epoch(p, epoch, false);
                }
                if (r == 0) {
                        /* the standby holds every block up to the first
                         * epoch's barrier: only later writes stay marked.
                         * The lineage offered in HELLO names the state both
                         * hosts now share (the standby records it at its
                         * first commit). */
                        for (unsigned i = 0; i < v->qemu->n_disk; i++) {
                                int rl = blockrepl_resync_committed(v->qemu->disk[i],
                                                                    p->logs[i].seq, p->new_lineage);
                                if (rl < 0) /* bits stay set, the old lineage stays: safe */
                                        log_msg(LOG_LVL_WARN, MSG_SYNC_PROGRESS, v->name,
                                                (int64_t)v->epoch, "disk %u: cannot record the "
                                                "new history (%s): the next resync copies it "
                                                "whole", i, strerror(-rl));
                        }
                        pthread_mutex_lock(&v->lock);
                        v->sync.ended_ms = wall_ms();
                        vm_set_state(v, VM_PROTECTED);
                        pthread_mutex_unlock(&v->lock);
                        was_protected = true;
                        log_msg(LOG_LVL_NOTICE, MSG_PROTECTED, v->name, (int64_t)v->epoch,
                                "protected: standby %s holds a committed replica (sync took %llu ms)",
                                p->peer, (unsigned long long)(now_ms() - t0));
                        r = protected_loop(p);
                        if (p->handed_over)
                                break;
                }
                /* An epoch that failed because QEMU is dying (its pagemap or
                 * socket gone before the exit is visible) is the VM's end,
                 * not the standby's loss: wait briefly for the exit. */
                if (r < 0 && r != -ECHILD && !stop_requested(p) &&
                    qemu_wait_exit(v->qemu, r == -ESRCH ? 1000 : 50))
                        r = -ECHILD;
                if (r == -ECHILD) {
                        vm_gone = true;
                        break;
                }
                if (stop_requested(p))
                        break; /* the goodbye comes first, below */
                bool confirmed = false;
                if (r == -ENOBUFS)
                        confirmed = say_goodbye(p, "primary dropped protection: output buffer "
                                                   "full (on_buffer_full = release)");
                /* an ERROR from the standby in an epoch: it refused the
                 * epoch and dropped its replica (backup.c, disk_failed) */
                if (r == -ECONNABORTED)
                        confirmed = true;
                drop_connection(p);
                if (p->d->host.managed && buffering && !confirmed) {
                        isolate(p, r);
                        isolated = was_protected = true;
                        continue;
                }
                leave_protection_io(p);
                record(p, false);
                buffering = false;
                pthread_mutex_lock(&v->lock);
                v->epochs_failed++;
                vm_set_error(v, "standby %s lost: %s", p->peer, strerror(-r));
                pthread_mutex_unlock(&v->lock);
                log_msg(LOG_LVL_WARN, MSG_STANDBY_LOST, v->name, (int64_t)v->epoch,
                        "standby %s lost (%s): VM keeps running UNPROTECTED; retrying every %u ms",
                        p->peer, strerror(-r), p->cfg.reconnect_ms);
                was_protected = true;
        }
out:;
        /* `kill` (a fence): not a word to the standby, whose replica stays
         * activatable; held output is dropped below. */
        bool killed = v->kill_requested;
        bool confirmed = false, guest_off = false;
        if (killed)
                vm_gone = true;
        if (p->handed_over) {
                /* our copy ends here, paused at the committed epoch; its
                 * RAM file stays as the seed of the re-sync that makes this
                 * host the standby (only hashes go then) */
                kill(v->qemu->pid, SIGKILL);
                struct pollfd pf = { .fd = v->qemu->pidfd, .events = POLLIN };
                poll(&pf, 1, 2000);
        }
        if (!stale && !vm_gone && p->fd >= 0 && v->stop_requested)
                confirmed = say_goodbye(p, "primary ended protection");
        /* `unprotect` in managed mode, unconfirmed, output held: the VM
         * runs on, so it stays ISOLATED until the cluster decides. */
        if (!stale && !vm_gone && buffering && !confirmed && v->unprotecting &&
            p->d->host.managed)
                confirmed = park_isolated(p, &vm_gone, &stale);
        killed = v->kill_requested;
        if (vm_gone && !killed)
                guest_off = vm_guest_powered_off(v->qemu);
        if (stale) {
                /* A newer generation ran elsewhere: this copy is stale and
                 * must not run (or speak) one moment longer. */
                kill(v->qemu->pid, SIGKILL);
                struct pollfd pf = { .fd = v->qemu->pidfd, .events = POLLIN };
                poll(&pf, 1, 2000);
        } else if (vm_gone && guest_off && !killed) {
                confirmed = tell_guest_off(p);
        }
        /* After a confirmed goodbye the standby no longer takes over: held
         * output may flow. Without one, whatever the reason (VM gone, stale,
         * isolated, or a `stop`/`unprotect` whose goodbye the standby did
         * not confirm in time), the standby may still take over from its
         * last committed epoch: output held past it is DROPPED, never sent
         * (released, it could contradict the resumed replica). */
        if (!p->handed_over && (stale || killed || (buffering && !confirmed))) {
                drop_held_io(p);
                /* without managed mode an unconfirmed unprotect ends like a
                 * lost standby: the VM runs on, its output flows from here */
                if (!stale && !vm_gone && v->unprotecting && v->qemu)
                        qemu_net_buffering(v->qemu, false);
        } else {
                leave_protection_io(p);
        }
        drop_connection(p);
        /* the state first: tearing down (unmapping RAM and the delta cache)
         * takes tens of ms that nobody should wait for */
        struct qemu_vm *dead = NULL;
        pthread_mutex_lock(&v->lock);
        v->release_requested = false;
        v->unprotecting = false;
        v->kill_requested = false;
        if (!p->handed_over && v->handover_result == 1) /* ended before the handover */
                v->handover_result = r < 0 ? r : -ECONNABORTED;
        if (stale || vm_gone || p->handed_over)
                adopt_forget(p->d, v);
        else
                adopt_record(p->d, v, "", false); /* after the output flowed */
        if (p->handed_over) {
                dead = v->qemu;
                v->qemu = NULL;
                vm_set_state(v, VM_DEFINED);
                vm_set_exit(v, "handed-over");
                v->handover_requested = false;
                v->handover_result = 0;
                log_msg(LOG_LVL_NOTICE, MSG_HANDOVER, v->name, (int64_t)v->committed_epoch,
                        "handed over to %s at epoch %llu: the copy here is powered off, the "
                        "standby keeps the replica for activation", p->peer,
                        (unsigned long long)v->committed_epoch);
        } else if (stale) {
                dead = v->qemu;
                v->qemu = NULL;
                vm_set_state(v, VM_DEFINED);
                vm_set_exit(v, "stale");
                vm_set_error(v, "generation %llu is stale: %s; powered off here (a newer copy "
                             "runs elsewhere)", (unsigned long long)v->generation, p->last_failure);
                log_msg(LOG_LVL_ERR, MSG_STALE, v->name, (int64_t)v->epoch,
                        "standby %s refused generation %llu as stale (%s): a newer generation of "
                        "the VM ran elsewhere; this copy was powered off", p->peer,
                        (unsigned long long)v->generation, p->last_failure);
        } else if (vm_gone) {
                dead = v->qemu;
                v->qemu = NULL;
                vm_set_state(v, VM_DEFINED);
                if (killed) {
                        vm_set_exit(v, "fenced");
                } else if (guest_off) {
                        vm_set_exit(v, "guest-shutdown");
                        log_msg(LOG_LVL_NOTICE, MSG_VM_GUEST_OFF, v->name, (int64_t)v->epoch,
                                "the guest powered itself off while protected");
                } else {
                        vm_set_exit(v, "crash");
                        vm_set_error(v, "VM exited while protected");
                        log_msg(LOG_LVL_ERR, MSG_VM_EXITED, v->name, (int64_t)v->epoch,
                                "QEMU exited on this host; the standby keeps the last committed epoch");
                }
        } else {
                /* keep a more precise reason set on the way (setup) */
                if (r < 0 && r != -ECANCELED && !v->stop_requested && !v->last_error[0])
                        vm_set_error(v, "protection failed: %s", strerror(-r));
                vm_set_state(v, VM_RUNNING);
        }
        pthread_mutex_unlock(&v->lock);
        teardown(p);
        /* A dead copy's disks go before the VM is free again: closing
         * them releases their bitmaps' locks, and the next user waits only
         * for thread_running. After a handover that is the new primary's
         * HELLO, ~100 ms later, which needs this host's bitmaps (refused
         * with "in use by another process" it retried a second later,
         * while the guest dirtied what the re-seed then had to send). */
        if (dead)
                qemu_destroy(dead);
        pthread_mutex_lock(&v->lock);
        v->thread_running = false;
        pthread_cond_broadcast(&v->changed);
        pthread_mutex_unlock(&v->lock);
        if (!dead)
                daemon_watch_qemu(p->d, v->qemu); /* no thread watches it now */
        close(p->wake_fd);
        free(p);
        return NULL;
}

static int start_thread(struct daemon *d, struct vm *v, const char *peer, bool resumed,
                        bool held, char *err, size_t errlen)
{
        const struct cfg_peer *cp = host_config_peer(&d->host, peer);
        if (!cp) {
                snprintf(err, errlen, "unknown peer '%s': add [peer %s] to %s", peer, peer,
                         d->host.source);
                return -ENOENT;
        }
        struct primary *p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->d = d;
        p->v = v;
        p->cfg = v->cfg;
        p->fd = -1;
        p->ram_fd = -1;
        p->resumed = resumed;
        p->resume_held = held;
        snprintf(p->peer, sizeof(p->peer), "%s", peer);
        snprintf(p->peer_addr, sizeof(p->peer_addr), "%s", cp->address);
        p->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (p->wake_fd < 0) {
                free(p);
                return -errno;
        }
        if (v->thread_joinable) { /* an earlier thread that ended by itself */
                pthread_join(v->thread, NULL);
                v->thread_joinable = false;
        }
        v->stop_requested = false;
        v->hold_requested = false;
        v->release_requested = false;
        v->unprotecting = false;
        v->kill_requested = false;
        v->wake_fd = p->wake_fd;
        snprintf(v->peer, sizeof(v->peer), "%s", peer);
        v->last_error[0] = 0;
        v->thread_running = true;
        vm_set_state(v, held ? VM_ISOLATED : resumed ? VM_DEGRADED : VM_CONNECTING);
        adopt_record(d, v, peer, held); /* protected to peer: a restart resumes it */
        int r = -pthread_create(&v->thread, NULL, primary_thread, p);
        v->thread_joinable = r == 0;
        if (r < 0) {
                v->thread_running = false;
                vm_set_state(v, VM_RUNNING);
                close(p->wake_fd);
                free(p);
                snprintf(err, errlen, "cannot start replication thread");
        }
        return r;
}

int primary_start(struct daemon *d, struct vm *v, const char *peer, char *err, size_t errlen)
{
        return start_thread(d, v, peer, false, false, err, errlen);
}

int primary_resume(struct daemon *d, struct vm *v, const char *peer, bool output_held,
                   char *err, size_t errlen)
{
        return start_thread(d, v, peer, true, output_held, err, errlen);
}

/* Called without v->lock. Ends protection and waits for the thread. */
/* Lock held. Ask the thread to pause after a checkpoint (hold) or to
 * resume; callers wait on v->changed for the state. */
int primary_hold(struct vm *v, bool hold)
{
        if (!v->thread_running)
                return -EINVAL;
        v->hold_requested = hold;
        uint64_t one = 1;
        return write(v->wake_fd, &one, sizeof(one)) == sizeof(one) ? 0 : -errno;
}

void primary_stop(struct vm *v)
{
        pthread_mutex_lock(&v->lock);
        if (!v->thread_joinable) {
                pthread_mutex_unlock(&v->lock);
                return;
        }
        if (v->thread_running) {
                v->unprotecting = false; /* a `stop`: a parked thread drops its output */
                v->stop_requested = true;
                uint64_t one = 1;
                ssize_t k = write(v->wake_fd, &one, sizeof(one));
                (void)k;
        }
        pthread_t t = v->thread;
        v->thread_joinable = false;
        pthread_mutex_unlock(&v->lock);
        pthread_join(t, NULL);
}

int primary_unprotect(struct vm *v)
{
        pthread_mutex_lock(&v->lock);
        if (!v->thread_joinable) {
                pthread_mutex_unlock(&v->lock);
                return 0;
        }
        if (v->thread_running) {
                v->unprotecting = true;
                v->stop_requested = true;
                uint64_t one = 1;
                ssize_t k = write(v->wake_fd, &one, sizeof(one));
                (void)k;
        }
        /* ISOLATED with stop_requested: parked (or about to park) */
        while (v->thread_running && v->state != VM_ISOLATED)
                pthread_cond_wait(&v->changed, &v->lock);
        if (v->thread_running) {
                pthread_mutex_unlock(&v->lock);
                return -EAGAIN;
        }
        pthread_t t = v->thread;
        v->thread_joinable = false;
        pthread_mutex_unlock(&v->lock);
        pthread_join(t, NULL);
        return 0;
}

/* Lock held. Managed mode: the cluster has made sure the standby cannot
 * take over (fenced, said goodbye, replica gone): an ISOLATED VM may
 * release its held output and run unprotected. */
int primary_release(struct vm *v)
{
        if (!v->thread_running || v->state != VM_ISOLATED)
                return -EINVAL;
        v->release_requested = true;
        uint64_t one = 1;
        return write(v->wake_fd, &one, sizeof(one)) == sizeof(one) ? 0 : -errno;
}
