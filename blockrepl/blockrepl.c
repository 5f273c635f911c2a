/* blockrepl: one VM disk served over NBD, every change recorded according
 * to the mode (blockrepl.h, docs/blockrepl.md).
 *
 *   accept thread ──► one thread per client ──► nbd_serve() ──► ops below
 *
 *   write path (all under b->lock, so log order = image order):
 *     wait while the open log is at log_hard_bytes (LOG)
 *     mark + msync the persistent bitmap if a bit is new (every mode)
 *     add the blocks to W (LOG)
 *     change the image
 *     append to the open log (LOG) / set the sync map bits (SYNC)
 *   then, outside the lock: fdatasync for FUA (not while flushes are
 *   deferred, below); then nbd.c replies.
 *
 * Flushes in LOG mode (FLUSH, FUA) are answered without an fdatasync once
 * the caller says the guest's output is held (blockrepl_defer_flushes):
 * the guest's flush is kept by the peer, which makes the epoch durable
 * before its ACK, and nothing the guest says after the flush leaves the
 * primary before that ACK (output commit). Not before: during the initial
 * copy the disks log already, but output flows. Ending the deferral (or
 * leaving LOG) makes the image durable before it returns, so output
 * released after that never depends on a flush that is durable nowhere.
 * Timeline in docs/output-commit.md.
 *
 * The bitmap is written ahead of the image (like md's write-intent bitmap):
 * data the page cache writes back before any FLUSH must never be on disk
 * without its bit, or failback would skip a block that differs. In LOG mode
 * it is an activity log: bits are cleared lazily behind the peer's commits.
 *
 *   clear state (b->clear), only in LOG, once a resync committed:
 *     OFF ──resync_committed──► IDLE ──barrier, interval passed──► BOUNDARY(B)
 *      ▲                         ▲     (W := {}: W is what was written after B)
 *      │                         │                                   │
 *   leave LOG (from any)       worker: fdatasync, then      committed(>= B)
 *                              clear every bit not in W ◄── REQUESTED
 *
 * Owns: the image fd, the listening socket, client threads, the clearing
 * worker, the open epoch log, the sync map, the bitmap and W. Does not own:
 * epochs, the peer, QEMU.
 */
#include "blockrepl.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "bitmap.h"
#include "image.h"
#include "log.h"
#include "msgid.h"
#include "nbd.h"
#include "stage.h"
#include "util.h"

#define BR_MAX_CLIENTS 16               /* QEMU uses one; bounds threads and buffers */
#define BR_HANDSHAKE_NS (30ull * 1000000000u)
#define BR_CLEAR_INTERVAL_MS 2000       /* default clear_interval_ms */

/* Lazy clearing of the bitmap in LOG mode (diagram on top). */
enum br_clear_state {
        BR_CLEAR_OFF = 0,   /* not LOG, or no resync committed since LOG was
                               entered: committed() says nothing about the
                               blocks it did not carry, so nothing is cleared */
        BR_CLEAR_IDLE,      /* the first barrier after next_boundary_ns becomes
                               a boundary */
        BR_CLEAR_BOUNDARY,  /* boundary at barrier `boundary`; W holds what was
                               written after it; waiting for its commit */
        BR_CLEAR_REQUESTED, /* committed: the worker fdatasyncs, then clears */
};

struct br_client {
        struct br_client *next;
        struct blockrepl *b;
        int fd;
        pthread_t thread;
        bool done; /* thread has returned: the accept thread joins it */
};

struct blockrepl {
        char *name;
        char *socket_path;
        int image_fd;
        bool is_blk;
        bool read_only;
        uint64_t size;
        uint64_t soft, hard;
        struct nbd_export exp;

        int listen_fd;
        int wake_fd; /* eventfd: stop, or a client thread ended */
        int log_fd;  /* eventfd: the open log passed log_soft_bytes */
        int stream_fd; /* eventfd: the open log grew by stream */
        pthread_t accept_thread;
        bool accept_started;

        pthread_mutex_t lock; /* image changes, log, mode, clients */
        pthread_cond_t log_cond; /* barrier or stop: writers waiting for room */
        enum blockrepl_mode mode;
        bool stopping;
        struct br_log log;     /* the open epoch */
        uint64_t log_mem;      /* its data + record overhead, against soft/hard */
        bool soft_signalled;   /* log_fd written for this epoch */
        uint64_t stream;       /* stream_bytes; 0 = no stream_fd signals */
        uint64_t stream_mark;  /* log_mem at which stream_fd is written next */
        bool limit_lifted;     /* the VM is stopping: no waiting until the barrier */
        bool defer_flushes;    /* LOG, output held: FLUSH/FUA kept by the peer (top) */
        struct br_client *clients;
        uint32_t n_clients;

        uint64_t *sync_map;    /* one bit per block; atomics, no lock */
        uint64_t n_blocks;
        struct br_bitmap *bitmap;

        /* the activity log (only with a bitmap), under lock */
        uint64_t seq;          /* the last barrier's number */
        uint8_t *w;            /* W: blocks written in LOG mode after barrier
                                  w_since (the bitmap's layout) */
        uint8_t *keep;         /* scratch of the same size */
        size_t w_len;
        uint64_t w_since;
        enum br_clear_state clear;
        uint64_t boundary;     /* BOUNDARY, REQUESTED: its barrier */
        uint64_t clear_gen;    /* bumped when a pending clear is cancelled */
        uint64_t next_boundary_ns;
        uint64_t clear_interval_ns;
        pthread_cond_t clear_cond; /* REQUESTED or stopping: the worker */
        pthread_t clear_thread;
        bool clear_started;

        struct blockrepl_stats st; /* atomics */
};

static void stat_add(uint64_t *c, uint64_t v)
{
        __atomic_fetch_add(c, v, __ATOMIC_RELAXED);
}

void br_log_free(struct br_log *log)
{
        if (!log)
                return;
        struct br_rec *r = log->head;
        while (r) {
                struct br_rec *next = r->next;
                free(r);
                r = next;
        }
        log->head = log->tail = NULL;
        log->n_recs = 0;
        log->data_bytes = 0;
}

static uint64_t rec_cost(uint8_t op, uint32_t len)
{
        return sizeof(struct br_rec) + (op == BR_OP_WRITE ? len : 0);
}

struct br_rec *br_rec_new(uint8_t op, uint64_t offset, uint32_t len, const void *data)
{
        uint32_t dlen = op == BR_OP_WRITE ? len : 0;
        struct br_rec *rec = malloc(sizeof(*rec) + dlen);
        if (!rec)
                return NULL;
        rec->next = NULL;
        rec->op = op;
        rec->offset = offset;
        rec->len = len;
        if (dlen)
                memcpy(rec->data, data, dlen);
        return rec;
}

/* ---- recording ----------------------------------------------------------- */

void br_log_append(struct br_log *log, struct br_rec *rec)
{
        if (log->tail)
                log->tail->next = rec;
        else
                log->head = rec;
        log->tail = rec;
        log->n_recs++;
        log->data_bytes += rec->op == BR_OP_WRITE ? rec->len : 0;
}

static void log_append(struct blockrepl *b, struct br_rec *rec)
{
        br_log_append(&b->log, rec);
        b->log_mem += rec_cost(rec->op, rec->len);
        if (b->soft && !b->soft_signalled && b->log_mem >= b->soft) {
                uint64_t one = 1;
                b->soft_signalled = true;
                if (write(b->log_fd, &one, sizeof(one)) < 0)
                        log_msg(LOG_LVL_DEBUG, NULL, b->name, -1, "log eventfd: %s",
                                strerror(errno));
        }
        if (b->stream && b->log_mem >= b->stream_mark) {
                uint64_t one = 1;
                b->stream_mark = b->log_mem + b->stream;
                if (write(b->stream_fd, &one, sizeof(one)) < 0)
                        log_msg(LOG_LVL_DEBUG, NULL, b->name, -1, "stream eventfd: %s",
                                strerror(errno));
        }
}

static void mark_log_locked(struct blockrepl *b, const struct br_log *log);

/* Under b->lock. Waits while adding cost would pass log_hard_bytes; a record
 * bigger than the limit on its own goes into an empty log.
 * The wait is bounded: QEMU drains block I/O not only for the barrier (where
 * blockrepl_lift_limit lets the writer through) but also on a guest reset,
 * a monitor stop or its exit; a writer held for a barrier that cannot come
 * would hang QEMU. After BR_LOG_WAIT_MS it goes on, and the log overshoots
 * the limit by that one request (counted in log_overruns). */
#define BR_LOG_WAIT_MS 1000
static int wait_log_room(struct blockrepl *b, uint64_t cost)
{
        bool counted = false;
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        uint64_t ns = (uint64_t)until.tv_nsec + (uint64_t)BR_LOG_WAIT_MS * 1000000u;
        until.tv_sec += (time_t)(ns / 1000000000u);
        until.tv_nsec = (long)(ns % 1000000000u);
        while (b->mode == BR_MODE_LOG && !b->stopping && !b->limit_lifted && b->hard &&
               b->log_mem > 0 && b->log_mem + cost > b->hard) {
                if (!counted)
                        stat_add(&b->st.log_waits, 1);
                counted = true;
                if (pthread_cond_timedwait(&b->log_cond, &b->lock, &until) == ETIMEDOUT) {
                        stat_add(&b->st.log_overruns, 1);
                        break;
                }
        }
        return b->stopping ? -ESHUTDOWN : 0;
}

/* Under b->lock: the bitmap bits of [offset, offset+len), durable before
 * the image changes if any was not set yet. */
static int bitmap_intent(struct blockrepl *b, uint64_t offset, uint64_t len)
{
        if (!b->bitmap || len == 0)
                return 0;
        bool fresh = false;
        for (uint64_t i = offset / BR_BLOCK_SIZE; i <= (offset + len - 1) / BR_BLOCK_SIZE; i++)
                if (!br_bitmap_test(b->bitmap, i)) {
                        fresh = true;
                        break;
                }
        if (!fresh)
                return 0;
        br_bitmap_set_range(b->bitmap, offset, len);
        stat_add(&b->st.bitmap_syncs, 1);
        int r = br_bitmap_sync(b->bitmap);
        return r < 0 ? -EIO : 0;
}

/* Under b->lock, LOG mode: [offset, offset+len) joins W. */
static void w_set(struct blockrepl *b, uint8_t *set, uint64_t offset, uint64_t len)
{
        if (!set || len == 0)
                return;
        uint64_t last = (offset + len - 1) / BR_BLOCK_SIZE;
        for (uint64_t i = offset / BR_BLOCK_SIZE; i <= last && i < b->n_blocks; i++)
                set[i / 8] |= (uint8_t)(1u << (i % 8));
}

static void sync_map_set(struct blockrepl *b, uint64_t offset, uint64_t len)
{
        if (len == 0)
                return;
        uint64_t last = (offset + len - 1) / BR_BLOCK_SIZE;
        for (uint64_t i = offset / BR_BLOCK_SIZE; i <= last && i < b->n_blocks; i++)
                __atomic_fetch_or(&b->sync_map[i / 64], 1ull << (i % 64), __ATOMIC_SEQ_CST);
}

static int image_change(struct blockrepl *b, uint8_t op, const void *data, uint32_t len,
                        uint64_t offset, bool may_hole)
{
        switch (op) {
        case BR_OP_WRITE: return pwrite_full(b->image_fd, data, len, offset);
        case BR_OP_ZERO: return br_image_zero(b->image_fd, b->is_blk, offset, len, may_hole);
        case BR_OP_TRIM: return br_image_trim(b->image_fd, b->is_blk, offset, len);
        }
        return -EINVAL;
}

static int durable(struct blockrepl *b)
{
        if (fdatasync(b->image_fd) < 0)
                return -errno;
        return b->bitmap ? br_bitmap_sync(b->bitmap) : 0;
}

/* Every change of the image goes through here (see the diagram on top). */
static int change(struct blockrepl *b, uint8_t op, const void *data, uint32_t len,
                  uint64_t offset, bool may_hole, bool fua)
{
        struct br_rec *rec = NULL;
        bool kept = false; /* a FUA here is the peer's to keep (top) */
        int r;
        /* The copy is made outside the lock; the mode is checked again under it. */
        if (__atomic_load_n(&b->mode, __ATOMIC_RELAXED) == BR_MODE_LOG) {
                rec = br_rec_new(op, offset, len, data);
                if (!rec)
                        return -ENOMEM;
        }
        pthread_mutex_lock(&b->lock);
        while (b->mode == BR_MODE_LOG && !rec) {
                pthread_mutex_unlock(&b->lock);
                rec = br_rec_new(op, offset, len, data);
                if (!rec)
                        return -ENOMEM;
                pthread_mutex_lock(&b->lock);
        }
        r = wait_log_room(b, rec_cost(op, len));
        if (r < 0)
                goto out;
        /* In every mode: in LOG too, the write may never be committed by the
         * peer (the primary dies with its epoch in flight), and it may reach
         * this disk anyway. */
        r = bitmap_intent(b, offset, len);
        if (r < 0)
                goto out;
        if (b->mode == BR_MODE_LOG)
                w_set(b, b->w, offset, len);
        r = image_change(b, op, data, len, offset, may_hole);
        /* Recorded even when it failed: the image may hold part of it, and
         * the peer must not keep what the guest's disk no longer has. */
        if (b->mode == BR_MODE_LOG) {
                log_append(b, rec);
                rec = NULL;
                kept = b->defer_flushes;
        } else if (b->mode == BR_MODE_SYNC) {
                sync_map_set(b, offset, len); /* after the write: see blockrepl.h */
        }
out:
        pthread_mutex_unlock(&b->lock);
        free(rec);
        if (r == 0 && fua && !kept)
                r = durable(b);
        return r;
}

/* ---- NBD backend ------------------------------------------------------- */

static int op_read(void *priv, void *buf, uint32_t len, uint64_t offset)
{
        struct blockrepl *b = priv;
        int r = pread_full(b->image_fd, buf, len, offset);
        stat_add(&b->st.reads, 1);
        if (r == 0)
                stat_add(&b->st.bytes_read, len);
        return r;
}

static int op_write(void *priv, const void *buf, uint32_t len, uint64_t offset, bool fua)
{
        struct blockrepl *b = priv;
        int r = change(b, BR_OP_WRITE, buf, len, offset, false, fua);
        stat_add(&b->st.writes, 1);
        if (r == 0)
                stat_add(&b->st.bytes_written, len);
        return r;
}

static int op_zero(void *priv, uint32_t len, uint64_t offset, bool may_hole, bool fua)
{
        struct blockrepl *b = priv;
        stat_add(&b->st.zeroes, 1);
        return change(b, BR_OP_ZERO, NULL, len, offset, may_hole, fua);
}

static int op_trim(void *priv, uint32_t len, uint64_t offset, bool fua)
{
        struct blockrepl *b = priv;
        stat_add(&b->st.trims, 1);
        return change(b, BR_OP_TRIM, NULL, len, offset, true, fua);
}

static int op_flush(void *priv)
{
        struct blockrepl *b = priv;
        stat_add(&b->st.flushes, 1);
        /* Under the lock: a flush that sees the deferral on has its writes
         * before the fdatasync that ends it (blockrepl_defer_flushes). */
        pthread_mutex_lock(&b->lock);
        bool kept = b->mode == BR_MODE_LOG && b->defer_flushes;
        pthread_mutex_unlock(&b->lock);
        if (kept) {
                stat_add(&b->st.flushes_deferred, 1); /* the peer keeps it (top) */
                return 0;
        }
        return durable(b);
}

static const struct nbd_ops br_nbd_ops = {
        .read = op_read,
        .write = op_write,
        .zero = op_zero,
        .trim = op_trim,
        .flush = op_flush,
};

/* ---- threads ---------------------------------------------------------- */

static void wake(struct blockrepl *b)
{
        uint64_t one = 1;
        if (write(b->wake_fd, &one, sizeof(one)) < 0)
                log_msg(LOG_LVL_DEBUG, NULL, b->name, -1, "wake eventfd: %s", strerror(errno));
}

static void *client_main(void *arg)
{
        struct br_client *cl = arg;
        struct blockrepl *b = cl->b;
        int r = nbd_serve(cl->fd, cl->fd, &b->exp, now_ns() + BR_HANDSHAKE_NS);
        log_msg(LOG_LVL_DEBUG, NULL, b->name, -1, "NBD client fd %d ended: %s", cl->fd,
                r == 0 ? "disconnect" : strerror(-r));
        pthread_mutex_lock(&b->lock);
        cl->done = true;
        pthread_mutex_unlock(&b->lock);
        wake(b);
        return NULL;
}

/* Joins client threads that ended (all of them, after cutting them, when
 * all is set). The fd is closed only here, after the join, so a shutdown()
 * from close never hits a reused fd number. */
static void reap_clients(struct blockrepl *b, bool all)
{
        pthread_mutex_lock(&b->lock);
        if (all)
                for (struct br_client *cl = b->clients; cl; cl = cl->next)
                        shutdown(cl->fd, SHUT_RDWR);
        struct br_client **pp = &b->clients;
        while (*pp) {
                struct br_client *cl = *pp;
                if (!cl->done && !all) {
                        pp = &cl->next;
                        continue;
                }
                *pp = cl->next;
                b->n_clients--;
                pthread_mutex_unlock(&b->lock);
                pthread_join(cl->thread, NULL);
                close(cl->fd);
                free(cl);
                pthread_mutex_lock(&b->lock);
        }
        pthread_mutex_unlock(&b->lock);
}

static void add_client(struct blockrepl *b, int fd)
{
        const char *why = NULL;
        struct br_client *cl = calloc(1, sizeof(*cl));
        pthread_mutex_lock(&b->lock);
        if (!cl)
                why = "out of memory";
        else if (b->n_clients >= BR_MAX_CLIENTS)
                why = "too many clients";
        if (!why) {
                cl->b = b;
                cl->fd = fd;
                /* Linked under the lock the new thread takes to say it is done. */
                if (pthread_create(&cl->thread, NULL, client_main, cl) != 0)
                        why = "cannot start a thread";
        }
        if (!why) {
                cl->next = b->clients;
                b->clients = cl;
                b->n_clients++;
        }
        pthread_mutex_unlock(&b->lock);
        if (why) {
                log_msg(LOG_LVL_DEBUG, NULL, b->name, -1, "NBD client refused: %s", why);
                free(cl);
                close(fd);
        }
}

static void *accept_main(void *arg)
{
        struct blockrepl *b = arg;
        int backoff = -1;
        for (;;) {
                struct pollfd p[2] = { { .fd = b->wake_fd, .events = POLLIN },
                                       { .fd = b->listen_fd, .events = POLLIN } };
                /* After EMFILE and friends the socket stays readable: wait
                 * a little instead of spinning on it. */
                int n = poll(p, backoff < 0 ? 2 : 1, backoff);
                backoff = -1;
                if (n < 0 && errno != EINTR)
                        break;
                if (n > 0 && (p[0].revents & POLLIN)) {
                        uint64_t v;
                        if (read(b->wake_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
                                break;
                        pthread_mutex_lock(&b->lock);
                        bool stop = b->stopping;
                        pthread_mutex_unlock(&b->lock);
                        if (stop)
                                break;
                        reap_clients(b, false);
                }
                if (n > 0 && (p[1].revents & POLLIN)) {
                        int fd = accept4(b->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
                        if (fd >= 0)
                                add_client(b, fd);
                        else if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
                                 errno == ENOMEM)
                                backoff = 100;
                }
        }
        reap_clients(b, true);
        return NULL;
}

/* ---- lazy clearing (LOG mode) --------------------------------------------
 *
 * Why a clear never loses a mark. The worker clears, under b->lock, only
 * while the state is still the REQUESTED it was handed (same clear_gen),
 * which implies the mode is LOG and has been since the boundary B was
 * placed (leaving LOG sets OFF and bumps clear_gen under the same lock).
 * A bit it clears is outside W, so its block was last written before
 * barrier B: the peer committed that write (committed(>= B) came first),
 * and this disk holds it durably (the fdatasync started after committed()
 * was called, so after barrier B, when every write before B had
 * completed). A block written after B is in W and keeps its bit, whatever
 * happens meanwhile: the writes of epochs not yet ACKed, those of the open
 * epoch, and every write once the mode changed (a write marks its bit
 * before the image write in every mode, and a cleared bit is marked again
 * by the next write to its block). A mode change that races with the
 * fdatasync wins: the worker sees a new clear_gen and clears nothing. */
static void *clear_main(void *arg)
{
        struct blockrepl *b = arg;
        pthread_mutex_lock(&b->lock);
        for (;;) {
                while (!b->stopping && b->clear != BR_CLEAR_REQUESTED)
                        pthread_cond_wait(&b->clear_cond, &b->lock);
                if (b->stopping)
                        break;
                uint64_t gen = b->clear_gen;
                uint64_t boundary = b->boundary;
                pthread_mutex_unlock(&b->lock);
                int r = fdatasync(b->image_fd) < 0 ? -errno : 0;
                pthread_mutex_lock(&b->lock);
                if (gen != b->clear_gen || b->clear != BR_CLEAR_REQUESTED)
                        continue; /* cancelled (mode change) meanwhile */
                if (r < 0) {
                        /* retried at the next committed(); the bits stay */
                        b->clear = BR_CLEAR_BOUNDARY;
                        log_msg(LOG_LVL_DEBUG, NULL, b->name, -1, "clear: fdatasync: %s",
                                strerror(-r));
                        continue;
                }
                uint64_t before = br_bitmap_count(b->bitmap);
                br_bitmap_clear_except(b->bitmap, b->w, b->w_len);
                uint64_t cleared = before - br_bitmap_count(b->bitmap);
                b->clear = BR_CLEAR_IDLE;
                pthread_mutex_unlock(&b->lock);
                /* Outside the lock: a clear reaching the disk late only
                 * keeps bits longer; writers msync under the lock anyway. */
                r = br_bitmap_sync(b->bitmap);
                if (r < 0)
                        log_msg(LOG_LVL_DEBUG, NULL, b->name, -1, "clear: msync: %s",
                                strerror(-r));
                stat_add(&b->st.bitmap_clears, 1);
                stat_add(&b->st.bitmap_cleared, cleared);
                log_msg(LOG_LVL_DEBUG, NULL, b->name, -1,
                        "bitmap: %llu blocks cleared behind barrier %llu",
                        (unsigned long long)cleared, (unsigned long long)boundary);
                pthread_mutex_lock(&b->lock);
        }
        pthread_mutex_unlock(&b->lock);
        return NULL;
}

/* ---- open / close ------------------------------------------------------ */

static int listen_unix(const char *path, int *ret_fd, char *err, size_t errlen)
{
        const char *why;
        int r = unix_listen(path, 0, 8, ret_fd, &why);
        if (r < 0)
                snprintf(err, errlen, "socket %s: %s: %s", path, why, strerror(-r));
        return r;
}

int blockrepl_open(const struct blockrepl_options *o, struct blockrepl **ret,
                   char *err, size_t errlen)
{
        struct blockrepl *b = NULL;
        int r;
        if (!o->image || !o->socket_path ||
            (o->log_hard_bytes && o->log_soft_bytes > o->log_hard_bytes)) {
                snprintf(err, errlen, "blockrepl: image and socket needed, soft <= hard limit");
                return -EINVAL;
        }
        b = calloc(1, sizeof(*b));
        if (!b) {
                snprintf(err, errlen, "out of memory");
                return -ENOMEM;
        }
        b->image_fd = b->listen_fd = b->wake_fd = b->log_fd = b->stream_fd = -1;
        pthread_mutex_init(&b->lock, NULL);
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* for the bounded log wait */
        pthread_cond_init(&b->log_cond, &ca);
        pthread_condattr_destroy(&ca);
        pthread_cond_init(&b->clear_cond, NULL);
        b->clear_interval_ns = (uint64_t)(o->clear_interval_ms ? o->clear_interval_ms
                                                                : BR_CLEAR_INTERVAL_MS) * 1000000u;
        b->name = strdup(o->name ? o->name : o->image);
        b->socket_path = strdup(o->socket_path);
        if (!b->name || !b->socket_path) {
                snprintf(err, errlen, "out of memory");
                r = -ENOMEM;
                goto fail;
        }
        b->read_only = o->read_only;
        b->soft = o->log_soft_bytes;
        b->hard = o->log_hard_bytes;
        b->stream = b->stream_mark = o->stream_bytes;
        r = br_image_open(o->image, o->read_only, &b->image_fd, &b->size, &b->is_blk, err, errlen);
        if (r < 0)
                goto fail;
        /* A checkpointd that died in LOG mode left flushes it answered for
         * the peer (top) in the page cache: durable before anyone (an
         * adopting checkpointd releasing held output) relies on them. */
        if (!o->read_only && fdatasync(b->image_fd) < 0 && errno != EINVAL) {
                r = -errno;
                snprintf(err, errlen, "%s: fdatasync: %s", o->image, strerror(errno));
                goto fail;
        }
        if (o->bitmap_path) {
                r = br_bitmap_open(o->bitmap_path, b->size, &b->bitmap, err, errlen);
                if (r < 0)
                        goto fail;
                br_bitmap_bits(b->bitmap, &b->w_len);
                b->w = calloc(1, b->w_len);
                b->keep = calloc(1, b->w_len);
                if (!b->w || !b->keep) {
                        snprintf(err, errlen, "out of memory");
                        r = -ENOMEM;
                        goto fail;
                }
                r = -pthread_create(&b->clear_thread, NULL, clear_main, b);
                if (r < 0) {
                        snprintf(err, errlen, "blockrepl: thread: %s", strerror(-r));
                        goto fail;
                }
                b->clear_started = true;
        }
        b->n_blocks = b->size / BR_BLOCK_SIZE + (b->size % BR_BLOCK_SIZE != 0);
        b->sync_map = calloc(b->n_blocks / 64 + 1, sizeof(uint64_t));
        b->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        b->log_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        b->stream_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (!b->sync_map || b->wake_fd < 0 || b->log_fd < 0 || b->stream_fd < 0) {
                r = b->sync_map ? -errno : -ENOMEM;
                snprintf(err, errlen, "blockrepl: %s", strerror(-r));
                goto fail;
        }
        b->exp = (struct nbd_export){ .size = b->size, .read_only = b->read_only,
                                      .ops = &br_nbd_ops, .priv = b };
        r = listen_unix(o->socket_path, &b->listen_fd, err, errlen);
        if (r < 0)
                goto fail;
        r = -pthread_create(&b->accept_thread, NULL, accept_main, b);
        if (r < 0) {
                snprintf(err, errlen, "blockrepl: thread: %s", strerror(-r));
                unlink(b->socket_path);
                goto fail;
        }
        b->accept_started = true;
        log_msg(LOG_LVL_DEBUG, NULL, b->name, -1, "serving %s (%llu bytes%s) on %s", o->image,
                (unsigned long long)b->size, b->read_only ? ", read-only" : "", o->socket_path);
        *ret = b;
        return 0;
fail:
        blockrepl_close(b);
        return r;
}

void blockrepl_close(struct blockrepl *b)
{
        if (!b)
                return;
        pthread_mutex_lock(&b->lock);
        b->stopping = true;
        pthread_cond_broadcast(&b->log_cond);
        pthread_cond_broadcast(&b->clear_cond);
        pthread_mutex_unlock(&b->lock);
        if (b->accept_started) {
                wake(b);
                pthread_join(b->accept_thread, NULL);
                unlink(b->socket_path);
        }
        if (b->clear_started)
                pthread_join(b->clear_thread, NULL);
        if (b->listen_fd >= 0)
                close(b->listen_fd);
        if (b->wake_fd >= 0)
                close(b->wake_fd);
        if (b->log_fd >= 0)
                close(b->log_fd);
        if (b->stream_fd >= 0)
                close(b->stream_fd);
        if (b->image_fd >= 0)
                close(b->image_fd);
        /* an open epoch that will never be sent: the peer misses it */
        if (b->mode == BR_MODE_LOG)
                mark_log_locked(b, &b->log);
        br_bitmap_close(b->bitmap);
        br_log_free(&b->log);
        free(b->sync_map);
        free(b->w);
        free(b->keep);
        pthread_cond_destroy(&b->log_cond);
        pthread_cond_destroy(&b->clear_cond);
        pthread_mutex_destroy(&b->lock);
        free(b->name);
        free(b->socket_path);
        free(b);
}

/* ---- control (checkpointd) -------------------------------------------- */

uint64_t blockrepl_size(const struct blockrepl *b)
{
        return b->size;
}

int blockrepl_image_fd(const struct blockrepl *b)
{
        return b->image_fd;
}

static void mark_log_locked(struct blockrepl *b, const struct br_log *log)
{
        if (!b->bitmap)
                return;
        for (const struct br_rec *r = log->head; r; r = r->next)
                br_bitmap_set_range(b->bitmap, r->offset, r->len);
        int e = br_bitmap_sync(b->bitmap);
        if (e < 0)
                log_msg(LOG_LVL_DEBUG, NULL, b->name, -1, "bitmap sync: %s", strerror(-e));
}

/* The end of a deferral: the image (and bitmap) durable, or the error. */
static int end_deferral(struct blockrepl *b)
{
        int e = durable(b);
        if (e < 0)
                log_msg(LOG_LVL_ERR, MSG_BR_DEFERRED_FLUSH, b->name, -1,
                        "the image could not be made durable (%s): writes the guest "
                        "flushed while protected are kept by the standby only; held "
                        "output that depends on them is dropped", strerror(-e));
        return e;
}

int blockrepl_defer_flushes(struct blockrepl *b, bool on)
{
        pthread_mutex_lock(&b->lock);
        bool was = b->defer_flushes;
        b->defer_flushes = on && b->mode == BR_MODE_LOG;
        pthread_mutex_unlock(&b->lock);
        return was && !on ? end_deferral(b) : 0;
}

int blockrepl_set_mode(struct blockrepl *b, enum blockrepl_mode m)
{
        pthread_mutex_lock(&b->lock);
        b->limit_lifted = false;
        if (b->mode == BR_MODE_LOG && m != BR_MODE_LOG) {
                /* The open epoch will never be sent: its writes are what the
                 * peer misses now. Their bits are set already (marked before
                 * the write); marked again in case a bitmap msync failed. */
                mark_log_locked(b, &b->log);
                br_log_free(&b->log);
                b->log_mem = 0;
                b->soft_signalled = false;
                b->stream_mark = b->stream;
                /* No clearing outside LOG: a pending clear is dropped (the
                 * worker checks clear_gen under this lock, see clear_main). */
                b->clear = BR_CLEAR_OFF;
                b->clear_gen++;
        } else if (b->mode != BR_MODE_LOG && m == BR_MODE_LOG && b->w) {
                memset(b->w, 0, b->w_len);
                b->w_since = b->seq;
        }
        bool deferred = b->defer_flushes && m != BR_MODE_LOG;
        if (m != BR_MODE_LOG)
                b->defer_flushes = false;
        __atomic_store_n(&b->mode, m, __ATOMIC_RELAXED);
        pthread_cond_broadcast(&b->log_cond);
        pthread_mutex_unlock(&b->lock);
        /* Flushes answered in LOG relied on the peer: this disk takes that
         * over now, before the caller lets any held output go (top). A
         * flush that races the switch and saw the deferral wrote before it. */
        return deferred ? end_deferral(b) : 0;
}

enum blockrepl_mode blockrepl_get_mode(const struct blockrepl *b)
{
        return __atomic_load_n(&b->mode, __ATOMIC_RELAXED);
}

int blockrepl_barrier(struct blockrepl *b, struct br_log *ret)
{
        pthread_mutex_lock(&b->lock);
        if (b->mode != BR_MODE_LOG) {
                pthread_mutex_unlock(&b->lock);
                return -EINVAL;
        }
        *ret = b->log;
        ret->seq = ++b->seq;
        memset(&b->log, 0, sizeof(b->log));
        /* Writes are drained (the VM is stopped) and every one of them is
         * before this barrier: W starts empty here exactly. */
        if (b->clear == BR_CLEAR_IDLE && now_ns() >= b->next_boundary_ns) {
                memset(b->w, 0, b->w_len);
                b->w_since = b->seq;
                b->boundary = b->seq;
                b->clear = BR_CLEAR_BOUNDARY;
                b->next_boundary_ns = now_ns() + b->clear_interval_ns;
        }
        b->log_mem = 0;
        b->soft_signalled = false;
        b->stream_mark = b->stream;
        b->limit_lifted = false;
        pthread_cond_broadcast(&b->log_cond);
        pthread_mutex_unlock(&b->lock);
        return 0;
}

void blockrepl_lift_limit(struct blockrepl *b)
{
        pthread_mutex_lock(&b->lock);
        b->limit_lifted = true;
        pthread_cond_broadcast(&b->log_cond);
        pthread_mutex_unlock(&b->lock);
}

int blockrepl_log_fd(const struct blockrepl *b)
{
        return b->log_fd;
}

int blockrepl_stream_fd(const struct blockrepl *b)
{
        return b->stream_fd;
}

int blockrepl_log_since(struct blockrepl *b, const struct br_rec *after,
                        const struct br_rec **ret_first, const struct br_rec **ret_last)
{
        pthread_mutex_lock(&b->lock);
        if (b->mode != BR_MODE_LOG) {
                pthread_mutex_unlock(&b->lock);
                return -EINVAL;
        }
        /* ->next of records up to the tail was set under this lock: the
         * chain first..last is complete for the caller from here on */
        *ret_first = after ? after->next : b->log.head;
        *ret_last = *ret_first ? b->log.tail : NULL;
        pthread_mutex_unlock(&b->lock);
        return 0;
}

void blockrepl_sync_clear(struct blockrepl *b, uint64_t block)
{
        if (block < b->n_blocks)
                __atomic_fetch_and(&b->sync_map[block / 64], ~(1ull << (block % 64)),
                                   __ATOMIC_SEQ_CST);
}

int64_t blockrepl_sync_next_dirty(struct blockrepl *b, uint64_t from_block)
{
        for (uint64_t w = from_block / 64; w * 64 < b->n_blocks; w++) {
                uint64_t v = __atomic_load_n(&b->sync_map[w], __ATOMIC_SEQ_CST);
                if (w == from_block / 64)
                        v &= ~0ull << (from_block % 64);
                if (v) {
                        uint64_t i = w * 64 + (uint64_t)__builtin_ctzll(v);
                        return i < b->n_blocks ? (int64_t)i : -1;
                }
        }
        return -1;
}

void blockrepl_sync_mark_all(struct blockrepl *b)
{
        for (uint64_t i = 0; i < b->n_blocks; i += 64) {
                uint64_t n = b->n_blocks - i;
                uint64_t v = n >= 64 ? ~0ull : (1ull << n) - 1;
                __atomic_fetch_or(&b->sync_map[i / 64], v, __ATOMIC_SEQ_CST);
        }
}

uint64_t blockrepl_bitmap_count(const struct blockrepl *b)
{
        return b->bitmap ? br_bitmap_count(b->bitmap) : 0;
}

void blockrepl_bitmap_mark_log(struct blockrepl *b, const struct br_log *log)
{
        pthread_mutex_lock(&b->lock);
        mark_log_locked(b, log);
        pthread_mutex_unlock(&b->lock);
}

int blockrepl_committed(struct blockrepl *b, uint64_t seq)
{
        int r = 0;
        pthread_mutex_lock(&b->lock);
        if (seq > b->seq) {
                r = -EINVAL;
        } else if (b->clear == BR_CLEAR_BOUNDARY && seq >= b->boundary) {
                /* the fdatasync is the worker's: the caller is the epoch loop */
                b->clear = BR_CLEAR_REQUESTED;
                pthread_cond_signal(&b->clear_cond);
        }
        pthread_mutex_unlock(&b->lock);
        return r;
}

uint64_t blockrepl_lineage(const struct blockrepl *b)
{
        struct blockrepl *m = (struct blockrepl *)b; /* the lock, not the data */
        if (!b->bitmap)
                return 0;
        pthread_mutex_lock(&m->lock);
        uint64_t l = br_bitmap_lineage(b->bitmap);
        pthread_mutex_unlock(&m->lock);
        return l;
}

int blockrepl_set_lineage(struct blockrepl *b, uint64_t lineage)
{
        if (!b->bitmap)
                return 0;
        pthread_mutex_lock(&b->lock);
        int r = br_bitmap_set_lineage(b->bitmap, lineage);
        pthread_mutex_unlock(&b->lock);
        return r;
}

/* Under b->lock: keep[] := the blocks written after barrier seq, as far as
 * they are known; -EINVAL when they are not. */
static int written_after(struct blockrepl *b, uint64_t seq)
{
        if (b->mode != BR_MODE_LOG || seq > b->seq)
                return -EINVAL;
        if (seq == b->seq) { /* exactly the open epoch */
                memset(b->keep, 0, b->w_len);
                for (const struct br_rec *r = b->log.head; r; r = r->next)
                        w_set(b, b->keep, r->offset, r->len);
                return 0;
        }
        if (seq < b->w_since)
                return -EINVAL; /* W was emptied since: no record of (seq, w_since] */
        memcpy(b->keep, b->w, b->w_len); /* W: after w_since <= seq, a superset */
        return 0;
}

int blockrepl_resync_committed(struct blockrepl *b, uint64_t seq, uint64_t lineage)
{
        if (!b->bitmap)
                return 0;
        /* Every write before barrier seq completed before this call: after
         * this, they are durable here, and their bits may go. */
        if (fdatasync(b->image_fd) < 0)
                return -errno;
        pthread_mutex_lock(&b->lock);
        int r = written_after(b, seq);
        /* The lineage first: a crash between the two leaves the new lineage
         * with more bits than needed (safe), never fewer bits under the old
         * lineage. */
        if (r == 0)
                r = br_bitmap_set_lineage(b->bitmap, lineage);
        if (r == 0)
                r = br_bitmap_clear_except(b->bitmap, b->keep, b->w_len);
        if (r == 0 && b->clear == BR_CLEAR_OFF) {
                b->clear = BR_CLEAR_IDLE;
                b->next_boundary_ns = now_ns() + b->clear_interval_ns;
        }
        pthread_mutex_unlock(&b->lock);
        if (r == 0)
                r = br_bitmap_sync(b->bitmap);
        return r;
}

size_t blockrepl_bitmap_bytes(const struct blockrepl *b)
{
        return b->bitmap ? b->w_len : 0;
}

int blockrepl_bitmap_copy(struct blockrepl *b, uint8_t *buf, size_t len)
{
        if (len != blockrepl_bitmap_bytes(b))
                return -EINVAL;
        if (!b->bitmap)
                return 0;
        size_t n;
        pthread_mutex_lock(&b->lock);
        const uint8_t *bits = br_bitmap_bits(b->bitmap, &n);
        memcpy(buf, bits, n);
        pthread_mutex_unlock(&b->lock);
        return 0;
}

int blockrepl_bitmap_merge(struct blockrepl *b, const uint8_t *bits, size_t len)
{
        if (len != blockrepl_bitmap_bytes(b))
                return -EINVAL;
        if (!b->bitmap)
                return 0;
        pthread_mutex_lock(&b->lock);
        int r = br_bitmap_merge(b->bitmap, bits, len);
        pthread_mutex_unlock(&b->lock);
        return r;
}

void blockrepl_get_stats(const struct blockrepl *b, struct blockrepl_stats *ret)
{
        struct blockrepl *m = (struct blockrepl *)b; /* the lock, not the data */
        struct blockrepl_stats s;
        s.reads = __atomic_load_n(&b->st.reads, __ATOMIC_RELAXED);
        s.writes = __atomic_load_n(&b->st.writes, __ATOMIC_RELAXED);
        s.flushes = __atomic_load_n(&b->st.flushes, __ATOMIC_RELAXED);
        s.flushes_deferred = __atomic_load_n(&b->st.flushes_deferred, __ATOMIC_RELAXED);
        s.trims = __atomic_load_n(&b->st.trims, __ATOMIC_RELAXED);
        s.zeroes = __atomic_load_n(&b->st.zeroes, __ATOMIC_RELAXED);
        s.bytes_read = __atomic_load_n(&b->st.bytes_read, __ATOMIC_RELAXED);
        s.bytes_written = __atomic_load_n(&b->st.bytes_written, __ATOMIC_RELAXED);
        s.log_waits = __atomic_load_n(&b->st.log_waits, __ATOMIC_RELAXED);
        s.log_overruns = __atomic_load_n(&b->st.log_overruns, __ATOMIC_RELAXED);
        s.bitmap_syncs = __atomic_load_n(&b->st.bitmap_syncs, __ATOMIC_RELAXED);
        s.bitmap_clears = __atomic_load_n(&b->st.bitmap_clears, __ATOMIC_RELAXED);
        s.bitmap_cleared = __atomic_load_n(&b->st.bitmap_cleared, __ATOMIC_RELAXED);
        pthread_mutex_lock(&m->lock);
        s.clients = m->n_clients;
        pthread_mutex_unlock(&m->lock);
        *ret = s;
}
