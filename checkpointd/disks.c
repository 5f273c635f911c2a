#include "disks.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "codec.h"
#include "log.h"
#include "msgid.h"
#include "util.h"

#define SEND_BATCH (1u << 20) /* flush a record at ~1 MiB */

/* ---- primary ---- */

static int flush_record(struct disk_sender *s)
{
        if (!s->wb->len)
                return 0;
        int r = wire_finish(s->wb);
        if (r == 0)
                r = write_full(s->fd, s->wb->data, s->wb->len, now_ns() + s->timeout_ns);
        *s->wire_bytes += s->wb->len;
        wire_buf_reset(s->wb);
        return r;
}

/* One BR_BLOCK_SIZE block as 4 KiB pages of a SYNC_DISK record. */
static int sync_block(struct blockrepl *b, uint32_t disk, uint64_t block,
                      struct disk_sender *s, uint8_t *buf, uint64_t *raw)
{
        uint64_t size = blockrepl_size(b), off = block * BR_BLOCK_SIZE;
        size_t len = size - off < BR_BLOCK_SIZE ? (size_t)(size - off) : BR_BLOCK_SIZE;
        /* Clear first, read second: a write that completes after the clear
         * marks the block again and it is copied again. */
        blockrepl_sync_clear(b, block);
        int r = pread_full(blockrepl_image_fd(b), buf, len, off);
        if (r < 0)
                return r;
        uint8_t enc_buf[CODEC_PAGE_MAX], scratch[CODEC_PAGE_MAX];
        for (size_t p = 0; p < len; p += HAVMS_PAGE_SIZE) {
                uint8_t enc;
                uint32_t elen;
                r = codec_page_encode(buf + p, NULL, enc_buf, scratch, &enc, &elen);
                if (r < 0)
                        return r;
                if (!s->wb->len && (r = wire_disk_pages_begin(s->wb, disk)) < 0)
                        return r;
                r = wire_pages_add(s->wb, (off + p) / HAVMS_PAGE_SIZE, enc, enc_buf, elen);
                if (r < 0)
                        return r;
        }
        *raw += len;
        if (s->done_bytes)
                __atomic_add_fetch(s->done_bytes, len, __ATOMIC_RELAXED);
        if (s->tick)
                s->tick(s->tick_ctx);
        return s->wb->len >= SEND_BATCH ? flush_record(s) : 0;
}

int disks_copy_disk(struct blockrepl *b, uint32_t disk, struct disk_sender *s, uint64_t *raw)
{
        uint8_t *buf = malloc(BR_BLOCK_SIZE);
        if (!buf)
                return -ENOMEM;
        int r = 0;
        wire_buf_reset(s->wb);
        uint64_t blocks = (blockrepl_size(b) + BR_BLOCK_SIZE - 1) / BR_BLOCK_SIZE;
        for (uint64_t blk = 0; blk < blocks && r == 0; blk++)
                r = sync_block(b, disk, blk, s, buf, raw);
        if (r == 0) /* a record names one disk */
                r = flush_record(s);
        free(buf);
        return r;
}

int disks_sync_pass(struct blockrepl *const *disks, unsigned n, struct disk_sender *s,
                    bool dirty_only, uint64_t *raw)
{
        if (!dirty_only) {
                int r = 0;
                for (unsigned d = 0; d < n && r == 0; d++)
                        r = disks_copy_disk(disks[d], d, s, raw);
                return r;
        }
        uint8_t *buf = malloc(BR_BLOCK_SIZE);
        if (!buf)
                return -ENOMEM;
        int r = 0;
        wire_buf_reset(s->wb);
        for (unsigned d = 0; d < n && r == 0; d++) {
                int64_t blk = 0;
                while (r == 0 && (blk = blockrepl_sync_next_dirty(disks[d], (uint64_t)blk)) >= 0)
                        r = sync_block(disks[d], d, (uint64_t)blk, s, buf, raw);
                /* a record names one disk */
                if (r == 0)
                        r = flush_record(s);
        }
        free(buf);
        return r;
}

uint32_t disks_piece_diff(const uint8_t *block, size_t len, const uint8_t *entry)
{
        uint8_t h[WIRE_HASH_LEN];
        uint32_t diff = 0;
        for (size_t pc = 0; pc < len && pc / HAVMS_PAGE_SIZE < WIRE_BLOCK_PAGES; pc += HAVMS_PAGE_SIZE) {
                wire_hash(block + pc, HAVMS_PAGE_SIZE, h);
                if (memcmp(h, entry + 8 + (pc / HAVMS_PAGE_SIZE) * WIRE_HASH_LEN, WIRE_HASH_LEN))
                        diff |= 1u << (pc / HAVMS_PAGE_SIZE);
        }
        return diff;
}

int disks_resync_pass(struct blockrepl *b, uint32_t disk, const uint8_t *entries, uint64_t n,
                      struct disk_sender *s, uint64_t *raw, uint64_t *ret_same)
{
        uint64_t size = blockrepl_size(b), nblocks = (size + BR_BLOCK_SIZE - 1) / BR_BLOCK_SIZE;
        uint64_t same = 0, prev = 0;
        uint8_t *buf = malloc(BR_BLOCK_SIZE);
        if (!buf)
                return -ENOMEM;
        uint8_t enc_buf[CODEC_PAGE_MAX], scratch[CODEC_PAGE_MAX];
        int r = 0;
        wire_buf_reset(s->wb);
        for (uint64_t e = 0; e < n && r == 0; e++) {
                const uint8_t *ent = entries + e * WIRE_DISK_HASH_ENTRY;
                uint64_t block = wire_hash_entry_block(ent);
                /* checked again here: the entries came off the wire */
                if (block >= nblocks || (e && block <= prev)) {
                        r = -EPROTO;
                        break;
                }
                prev = block;
                uint64_t off = block * BR_BLOCK_SIZE;
                size_t len = size - off < BR_BLOCK_SIZE ? (size_t)(size - off) : BR_BLOCK_SIZE;
                /* clear first, read second, as the full pass does */
                blockrepl_sync_clear(b, block);
                if ((r = pread_full(blockrepl_image_fd(b), buf, len, off)) < 0)
                        break;
                uint32_t diff = disks_piece_diff(buf, len, ent);
                for (size_t pc = 0; pc < len && r == 0; pc += HAVMS_PAGE_SIZE) {
                        if (!(diff & (1u << (pc / HAVMS_PAGE_SIZE)))) {
                                same++;
                                continue;
                        }
                        uint8_t enc;
                        uint32_t elen;
                        r = codec_page_encode(buf + pc, NULL, enc_buf, scratch, &enc, &elen);
                        if (r == 0 && !s->wb->len)
                                r = wire_disk_pages_begin(s->wb, disk);
                        if (r == 0)
                                r = wire_pages_add(s->wb, (off + pc) / HAVMS_PAGE_SIZE, enc, enc_buf, elen);
                        *raw += HAVMS_PAGE_SIZE;
                }
                if (s->done_bytes)
                        __atomic_add_fetch(s->done_bytes, len, __ATOMIC_RELAXED);
                if (s->tick)
                        s->tick(s->tick_ctx);
                if (r == 0 && s->wb->len >= SEND_BATCH)
                        r = flush_record(s);
        }
        if (r == 0)
                r = flush_record(s);
        free(buf);
        *ret_same = same;
        return r;
}

/* Records first..last (a chain, both inclusive; first NULL = none) of
 * disk d as EPOCH_DISK records; adds to *recs and *bytes. */
static int send_range(const struct br_rec *first, const struct br_rec *last, unsigned d,
                      struct disk_sender *s, uint64_t epoch, uint64_t *recs, uint64_t *bytes)
{
        uint8_t *lz = NULL;
        int r = 0;
        wire_buf_reset(s->wb);
        for (const struct br_rec *rec = first; rec && r == 0; rec = rec == last ? NULL : rec->next) {
                /* an entry carries at most WIRE_DISK_REC_MAX bytes */
                for (uint32_t off = 0; off < rec->len && r == 0; off += WIRE_DISK_REC_MAX) {
                        uint32_t len = rec->len - off < WIRE_DISK_REC_MAX ? rec->len - off
                                                                          : WIRE_DISK_REC_MAX;
                        struct wire_disk_rec w = {
                                .op = rec->op,
                                .enc = WIRE_PAGE_ZERO,
                                .raw_len = len,
                                .offset = rec->offset + off,
                        };
                        if (rec->op == BR_OP_WRITE) {
                                if (!lz && !(lz = malloc(codec_chunk_bound(WIRE_DISK_REC_MAX)))) {
                                        r = -ENOMEM;
                                        break;
                                }
                                r = codec_chunk_encode(rec->data + off, len, lz, &w.enc, &w.len);
                                w.data = lz;
                                *bytes += len;
                        }
                        if (r == 0 && !s->wb->len)
                                r = wire_disk_begin(s->wb, epoch, d);
                        if (r == 0)
                                r = wire_disk_add(s->wb, &w);
                        if (r == 0 && s->wb->len >= SEND_BATCH)
                                r = flush_record(s);
                        (*recs)++;
                }
        }
        if (r == 0)
                r = flush_record(s);
        free(lz);
        return r;
}

int disks_stream(struct blockrepl *const *disks, unsigned n, const struct br_rec **sent,
                 struct disk_sender *s, uint64_t epoch, uint64_t *recs, uint64_t *bytes)
{
        for (unsigned d = 0; d < n; d++) {
                const struct br_rec *first, *last;
                int r = blockrepl_log_since(disks[d], sent[d], &first, &last);
                if (r < 0 || !first)
                        continue; /* not logging: the epoch finds out */
                if ((r = send_range(first, last, d, s, epoch, recs, bytes)) < 0)
                        return r;
                sent[d] = last;
        }
        return 0;
}

int disks_send_logs(const struct br_log *logs, unsigned n, const struct br_rec *const *sent,
                    struct disk_sender *s, uint64_t epoch, uint64_t *recs, uint64_t *bytes)
{
        for (unsigned d = 0; d < n; d++) {
                const struct br_rec *first = sent && sent[d] ? sent[d]->next : logs[d].head;
                int r = send_range(first, logs[d].tail, d, s, epoch, recs, bytes);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* ---- standby ---- */

static int image_size(int fd, uint64_t *ret)
{
        struct stat st;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (S_ISBLK(st.st_mode)) {
                uint64_t n;
                if (ioctl(fd, BLKGETSIZE64, &n) < 0)
                        return -errno;
                *ret = n;
                return 0;
        }
        if (!S_ISREG(st.st_mode))
                return -EINVAL;
        *ret = (uint64_t)st.st_size;
        return 0;
}

int disk_replica_check(const struct vm_config *c, const struct wire_hello *hello,
                       char *why, size_t whylen)
{
        if (hello->n_disks != c->n_disks) {
                snprintf(why, whylen, "the primary has %u disks, this host's definition %u",
                         hello->n_disks, c->n_disks);
                return -EINVAL;
        }
        for (unsigned i = 0; i < c->n_disks; i++) {
                int fd = open(c->disks[i], O_RDONLY | O_CLOEXEC);
                if (fd < 0 && errno == ENOENT)
                        continue; /* created at the right size when the sync starts */
                if (fd < 0) {
                        int e = errno;
                        snprintf(why, whylen, "cannot open disk %s: %s", c->disks[i], strerror(e));
                        return -e;
                }
                uint64_t size = 0;
                int rc = image_size(fd, &size);
                close(fd);
                if (rc < 0) {
                        snprintf(why, whylen, "%s is neither a regular file nor a block device",
                                 c->disks[i]);
                        return rc;
                }
                if (size != hello->disk_bytes[i]) {
                        snprintf(why, whylen, "disk %u differs in size: primary %llu bytes, %s %llu",
                                 i, (unsigned long long)hello->disk_bytes[i], c->disks[i],
                                 (unsigned long long)size);
                        return -EINVAL;
                }
        }
        return 0;
}

/* This host's bitmap of disk i, and whether its history is the
 * primary's (same lineage: incremental). A history that is not the
 * primary's is forgotten now (lineage 0, durably), before a block of the
 * full copy lands: a crash in the middle must not leave an image that
 * claims a lineage it no longer has. A damaged bitmap is replaced: the
 * full copy that follows makes it right. */
static int open_bitmap(struct disk_replica *r, const struct host_config *h,
                       const struct vm_config *c, const struct wire_hello *hello, unsigned i,
                       uint64_t size, char *why, size_t whylen)
{
        char path[CFG_PATH_MAX + 64], err[256];
        snprintf(path, sizeof(path), "%s/%s.disk%u.bitmap", h->state_dir, c->name, i);
        int rc = mkdir_p(h->state_dir, 0700);
        if (rc == 0 && (rc = br_bitmap_open(path, size, &r->bm[i], err, sizeof(err))) == -EINVAL) {
                log_msg(LOG_LVL_WARN, MSG_BK_RESYNC, c->name, -1,
                        "disk %u: %s; replaced, the disk is copied whole", i, err);
                unlink(path);
                rc = br_bitmap_open(path, size, &r->bm[i], err, sizeof(err));
        }
        if (rc < 0) {
                snprintf(why, whylen, "cannot open the disk bitmap %s: %s", path,
                         rc == -EINVAL || rc == -EBUSY ? err : strerror(-rc));
                return rc;
        }
        uint64_t mine = br_bitmap_lineage(r->bm[i]);
        r->incremental[i] = (hello->flags & WIRE_HELLO_BITMAP(i)) && hello->disk_lineage[i] &&
                            mine == hello->disk_lineage[i];
        if (!r->incremental[i] && mine && (rc = br_bitmap_set_lineage(r->bm[i], 0)) < 0) {
                snprintf(why, whylen, "cannot write the disk bitmap %s: %s", path, strerror(-rc));
                return rc;
        }
        if (r->incremental[i]) {
                br_bitmap_bits(r->bm[i], &r->set_len[i]);
                r->set_got[i] = 0;
                if (!(r->set[i] = calloc(1, r->set_len[i] ? r->set_len[i] : 1))) {
                        snprintf(why, whylen, "out of memory");
                        return -ENOMEM;
                }
        }
        log_msg(LOG_LVL_INFO, MSG_BK_RESYNC, c->name, -1, "disk %u: %s", i,
                r->incremental[i] ? "same history as the primary: incremental resync"
                : !mine ? "history unknown here: copied whole"
                : !hello->disk_lineage[i] ? "history unknown on the primary: copied whole"
                : "another history than the primary's: copied whole");
        return 0;
}

int disk_replica_bitmap(struct disk_replica *r, const struct wire_msg *m, bool *ret_done)
{
        struct wire_bitmap_chunk c;
        if (wire_get_disk_bitmap(m, &c) < 0 || c.disk >= r->n || !r->incremental[c.disk] ||
            c.offset != r->set_got[c.disk] || c.len > r->set_len[c.disk] - r->set_got[c.disk])
                return -EBADMSG;
        memcpy(r->set[c.disk] + c.offset, c.bits, c.len);
        r->set_got[c.disk] += c.len;
        if (r->set_got[c.disk] == r->set_len[c.disk]) {
                /* the union, marked here durably before any block lands */
                size_t len;
                const uint8_t *mine = br_bitmap_bits(r->bm[c.disk], &len);
                uint64_t lineage = br_bitmap_lineage(r->bm[c.disk]), blocks;
                int rc = br_resync_set(lineage, r->set[c.disk], lineage, mine, len, r->set[c.disk],
                                       &blocks);
                if (rc == 0)
                        rc = br_bitmap_merge(r->bm[c.disk], r->set[c.disk], len);
                if (rc < 0)
                        return rc;
        }
        bool done = true;
        for (unsigned i = 0; i < r->n; i++)
                if (r->incremental[i] && r->set_got[i] < r->set_len[i])
                        done = false;
        *ret_done = done;
        return 0;
}

int disk_replica_hashes(struct disk_replica *r, unsigned i, uint32_t max,
                        int (*emit)(void *ctx, const uint8_t *entries, uint32_t n), void *ctx,
                        uint64_t *ret_blocks)
{
        uint64_t size = r->bytes[i], nblocks = (size + BR_BLOCK_SIZE - 1) / BR_BLOCK_SIZE, total = 0;
        uint8_t *ents = malloc((size_t)max * WIRE_DISK_HASH_ENTRY), *buf = malloc(BR_BLOCK_SIZE);
        int rc = ents && buf ? 0 : -ENOMEM;
        uint32_t n = 0;
        for (uint64_t blk = 0; blk < nblocks && rc == 0; blk++) {
                if (!(r->set[i][blk / 8] & (1u << (blk % 8))))
                        continue;
                uint64_t off = blk * BR_BLOCK_SIZE;
                size_t len = size - off < BR_BLOCK_SIZE ? (size_t)(size - off) : BR_BLOCK_SIZE;
                if ((rc = pread_full(r->fd[i], buf, len, off)) < 0)
                        break;
                uint8_t *e = ents + (size_t)n * WIRE_DISK_HASH_ENTRY;
                memset(e, 0, WIRE_DISK_HASH_ENTRY);
                wire_hash_entry_set_block(e, blk);
                for (size_t pc = 0; pc < len; pc += HAVMS_PAGE_SIZE)
                        wire_hash(buf + pc, HAVMS_PAGE_SIZE, e + 8 + (pc / HAVMS_PAGE_SIZE) * WIRE_HASH_LEN);
                total++;
                if (++n == max) {
                        rc = emit(ctx, ents, n);
                        n = 0;
                }
        }
        if (rc == 0 && n)
                rc = emit(ctx, ents, n);
        free(ents);
        free(buf);
        *ret_blocks = total;
        return rc;
}

int disk_replica_sync_done(struct disk_replica *r)
{
        int rc = 0;
        for (unsigned i = 0; i < r->n; i++) {
                if (!r->bm[i])
                        continue;
                if (rc == 0)
                        rc = br_bitmap_set_lineage(r->bm[i], r->new_lineage);
                if (rc == 0)
                        rc = br_bitmap_clear_all(r->bm[i]);
                br_bitmap_close(r->bm[i]);
                r->bm[i] = NULL;
                free(r->set[i]);
                r->set[i] = NULL;
        }
        return rc;
}

int disk_replica_open(struct disk_replica *r, const struct host_config *h,
                      const struct vm_config *c, const struct wire_hello *hello,
                      char *why, size_t whylen)
{
        memset(r, 0, sizeof(*r));
        for (unsigned i = 0; i < CFG_MAX_DISKS; i++)
                r->fd[i] = -1;
        int rc = disk_replica_check(c, hello, why, whylen);
        if (rc < 0)
                return rc;
        r->new_lineage = hello->new_lineage;
        for (unsigned i = 0; i < c->n_disks; i++) {
                const char *path = c->disks[i];
                r->fd[i] = open(path, O_RDWR | O_CLOEXEC);
                if (r->fd[i] < 0 && errno == ENOENT) {
                        /* a new standby: a sparse file of the right size */
                        r->fd[i] = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
                        if (r->fd[i] >= 0 && ftruncate(r->fd[i], (off_t)hello->disk_bytes[i]) < 0) {
                                rc = -errno;
                                snprintf(why, whylen, "cannot size %s: %s", path, strerror(-rc));
                                close(r->fd[i]);
                                r->fd[i] = -1;
                                unlink(path);
                                goto fail;
                        }
                }
                if (r->fd[i] < 0) {
                        rc = -errno;
                        snprintf(why, whylen, "cannot open disk %s: %s", path, strerror(-rc));
                        goto fail;
                }
                r->n = i + 1; /* from here disk_replica_close owns fd[i] */
                uint64_t size = 0;
                if ((rc = image_size(r->fd[i], &size)) < 0) {
                        snprintf(why, whylen, "%s is neither a regular file nor a block device", path);
                        goto fail;
                }
                if (size != hello->disk_bytes[i]) {
                        rc = -EINVAL;
                        snprintf(why, whylen, "disk %u differs in size: primary %llu bytes, %s %llu",
                                 i, (unsigned long long)hello->disk_bytes[i], path,
                                 (unsigned long long)size);
                        goto fail;
                }
                r->bytes[i] = size;
                if ((rc = open_bitmap(r, h, c, hello, i, size, why, whylen)) < 0)
                        goto fail;
                char journal[CFG_PATH_MAX + 64];
                snprintf(journal, sizeof(journal), "%s/%s.disk%u.journal", h->state_dir, c->name, i);
                if ((rc = mkdir_p(h->state_dir, 0700)) < 0 ||
                    (rc = br_stage_new(journal, (uint64_t)c->disk_buffer_mib << 20, &r->stage[i])) < 0) {
                        snprintf(why, whylen, "cannot set up the disk journal %s: %s", journal,
                                 strerror(-rc));
                        goto fail;
                }
        }
        if (c->n_disks && !(r->scratch = malloc(WIRE_DISK_REC_MAX))) {
                rc = -ENOMEM;
                snprintf(why, whylen, "out of memory");
                goto fail;
        }
        return 0;
fail:
        disk_replica_close(r);
        return rc;
}

void disk_replica_close(struct disk_replica *r)
{
        for (unsigned i = 0; i < r->n; i++) {
                if (r->fd[i] >= 0)
                        close(r->fd[i]);
                br_stage_free(r->stage[i]);
                r->fd[i] = -1;
                r->stage[i] = NULL;
                br_bitmap_close(r->bm[i]);
                r->bm[i] = NULL;
                free(r->set[i]);
                r->set[i] = NULL;
        }
        free(r->scratch);
        r->scratch = NULL;
        r->n = 0;
}

int disk_replica_sync(struct disk_replica *r, const struct wire_msg *m)
{
        struct wire_pages_iter it;
        struct wire_page pg;
        uint8_t page[HAVMS_PAGE_SIZE];
        int rc = wire_pages_iter_init(&it, m);
        if (rc < 0 || it.disk >= r->n)
                return -EBADMSG;
        while ((rc = wire_pages_next(&it, &pg)) == 1) {
                uint64_t off = pg.pfn * HAVMS_PAGE_SIZE;
                /* no deltas for disks (the decoder refuses them without a base too) */
                if (pg.enc == WIRE_PAGE_XOR_LZ4 || pg.enc == WIRE_PAGE_RUNS ||
                    pg.pfn >= r->bytes[it.disk] / HAVMS_PAGE_SIZE)
                        return -EBADMSG;
                if ((rc = codec_page_decode(pg.enc, pg.data, pg.len, NULL, page)) < 0)
                        return rc;
                if ((rc = pwrite_full(r->fd[it.disk], page, HAVMS_PAGE_SIZE, off)) < 0)
                        return rc;
        }
        r->unsynced = true;
        return rc;
}

int disk_replica_stage(struct disk_replica *r, const struct wire_msg *m)
{
        struct wire_disk_iter it;
        struct wire_disk_rec d;
        int rc = wire_disk_iter_init(&it, m);
        if (rc < 0 || it.disk >= r->n)
                return -EBADMSG;
        while ((rc = wire_disk_next(&it, &d)) == 1) {
                const uint8_t *data = NULL;
                if (d.op == BR_OP_WRITE) {
                        rc = codec_chunk_decode(d.enc, d.data, d.len, r->scratch, d.raw_len);
                        if (rc < 0)
                                return -EBADMSG;
                        data = r->scratch;
                        r->st_bytes += d.raw_len;
                }
                rc = br_stage_add(r->stage[it.disk], d.op, d.offset, d.raw_len, data,
                                  r->bytes[it.disk]);
                if (rc == -EINVAL)
                        return -EBADMSG; /* outside the disk: not from our primary */
                if (rc < 0)
                        return rc;    /* -ENOSPC / -EIO: the journal is full or broken */
                r->st_recs++;
        }
        return rc;
}

int disk_replica_commit(struct disk_replica *r)
{
        r->sync_ns = 0;
        for (unsigned i = 0; i < r->n; i++) {
                int rc = br_stage_apply(r->stage[i], r->fd[i]);
                if (rc < 0)
                        return rc;
                r->sync_ns += br_stage_sync_ns(r->stage[i]);
                if (r->unsynced && fdatasync(r->fd[i]) < 0)
                        return -errno;
        }
        r->unsynced = false;
        r->st_recs = r->st_bytes = 0;
        return 0;
}

void disk_replica_discard(struct disk_replica *r)
{
        for (unsigned i = 0; i < r->n; i++)
                br_stage_discard(r->stage[i]);
        r->st_recs = r->st_bytes = 0;
}
