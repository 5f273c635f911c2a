/* stage: the standby's buffer for one epoch of disk writes (stage.h).
 *
 *   br_stage_add ──► memory list (while mem_used <= mem_limit)
 *                └─► journal file (from the first record that does not fit;
 *                    every later record follows it there, so order is
 *                    memory list, then journal, = arrival order)
 *
 * br_stage_apply first reads the whole journal back and checks every record
 * (format.h), then applies memory records and journal records in order: a
 * damaged journal is found before the image is touched.
 *
 * Owns: the records and the journal file. Does not own: the image fd.
 */
#define XXH_STATIC_LINKING_ONLY
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "blockrepl.h"
#include "format.h"
#include "image.h"
#include "stage.h"
#include "util.h"

#define JR_CHUNK (1u << 20) /* read-back buffer: bounds memory for any record size */

struct br_stage {
        char *journal_path;
        uint64_t mem_limit;
        struct br_log mem;     /* records kept in memory, in order */
        uint64_t mem_used;     /* data + record overhead of mem */
        int jfd;               /* -1 until the first spill */
        uint64_t jlen;         /* bytes of complete records in the journal */
        uint64_t bytes;        /* data bytes staged (memory + journal) */
        uint64_t spilled;      /* data bytes in the journal */
        uint64_t sync_ns;      /* the last apply's fdatasync; 0 = none needed */
};

int br_stage_new(const char *journal_path, uint64_t mem_limit, struct br_stage **ret)
{
        struct br_stage *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->journal_path = strdup(journal_path);
        if (!s->journal_path) {
                free(s);
                return -ENOMEM;
        }
        s->mem_limit = mem_limit;
        s->jfd = -1;
        *ret = s;
        return 0;
}

static void mem_free(struct br_stage *s)
{
        br_log_free(&s->mem);
        memset(&s->mem, 0, sizeof(s->mem));
        s->mem_used = 0;
}

static void empty(struct br_stage *s)
{
        mem_free(s);
        /* Truncation failing leaves stale bytes past jlen, which nothing
         * reads: jlen alone says where the records end. */
        if (s->jfd >= 0 && s->jlen > 0)
                (void)ftruncate(s->jfd, 0);
        s->jlen = 0;
        s->bytes = 0;
        s->spilled = 0;
}

void br_stage_free(struct br_stage *s)
{
        if (!s)
                return;
        empty(s);
        if (s->jfd >= 0) {
                close(s->jfd);
                unlink(s->journal_path);
        }
        free(s->journal_path);
        free(s);
}

void br_stage_discard(struct br_stage *s)
{
        empty(s);
}

uint64_t br_stage_bytes(const struct br_stage *s)
{
        return s->bytes;
}

uint64_t br_stage_spilled(const struct br_stage *s)
{
        return s->spilled;
}

uint64_t br_stage_sync_ns(const struct br_stage *s)
{
        return s->sync_ns;
}

static void jr_header(uint8_t *h, uint8_t op, uint64_t offset, uint32_t len)
{
        memset(h, 0, BR_JR_HDR_SIZE);
        br_put_le32(h, BR_JR_MAGIC);
        h[4] = BR_JR_VERSION;
        h[5] = op;
        br_put_le32(h + 8, len);
        br_put_le64(h + 16, offset);
}

static int journal_append(struct br_stage *s, uint8_t op, uint64_t offset, uint32_t len,
                          const void *data, uint32_t data_len)
{
        uint8_t h[BR_JR_HDR_SIZE];
        int r;
        if (s->jfd < 0) {
                /* O_TRUNC: a journal left by a crashed process is stale. */
                s->jfd = open(s->journal_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
                if (s->jfd < 0)
                        return -errno;
        }
        jr_header(h, op, offset, len);
        XXH64_state_t st;
        XXH64_reset(&st, 0);
        XXH64_update(&st, h, 24);
        if (data_len)
                XXH64_update(&st, data, data_len);
        br_put_le64(h + 24, XXH64_digest(&st));
        r = pwrite_full(s->jfd, h, sizeof(h), s->jlen);
        if (r == 0 && data_len)
                r = pwrite_full(s->jfd, data, data_len, s->jlen + sizeof(h));
        if (r < 0) {
                /* Drop the partial record so the journal stays parseable. */
                (void)ftruncate(s->jfd, (off_t)s->jlen);
                return r;
        }
        s->jlen += sizeof(h) + data_len;
        s->spilled += data_len;
        return 0;
}

int br_stage_add(struct br_stage *s, uint8_t op, uint64_t offset, uint32_t len,
                 const void *data, uint64_t image_size)
{
        if (op != BR_OP_WRITE && op != BR_OP_ZERO && op != BR_OP_TRIM)
                return -EINVAL;
        if (offset > image_size || len > image_size - offset)
                return -EINVAL;
        if (op == BR_OP_WRITE && len > 0 && !data)
                return -EINVAL;
        if (len == 0)
                return 0; /* changes nothing: not worth a record */
        uint32_t data_len = op == BR_OP_WRITE ? len : 0;
        uint64_t cost = sizeof(struct br_rec) + data_len;
        int r;

        if (s->jfd < 0 || s->jlen == 0) {
                if (s->mem_used + cost <= s->mem_limit) {
                        struct br_rec *rec = br_rec_new(op, offset, len, data);
                        if (!rec)
                                return -ENOMEM;
                        br_log_append(&s->mem, rec);
                        s->mem_used += cost;
                        s->bytes += data_len;
                        return 0;
                }
        }
        r = journal_append(s, op, offset, len, data, data_len);
        if (r < 0)
                return r;
        s->bytes += data_len;
        return 0;
}

/* One record read back from the journal: header checked, data left in the
 * file at data_off. */
struct jr_rec {
        uint8_t op;
        uint32_t len;
        uint64_t offset;
        uint64_t data_off;
        uint32_t data_len;
        uint64_t checksum;
};

static int jr_read_header(int fd, uint64_t pos, uint64_t end, struct jr_rec *ret,
                          uint8_t *h)
{
        if (end - pos < BR_JR_HDR_SIZE)
                return -EBADMSG;
        int r = pread_full(fd, h, BR_JR_HDR_SIZE, pos);
        if (r < 0)
                return r;
        struct jr_rec j = {
                .op = h[5],
                .len = br_get_le32(h + 8),
                .offset = br_get_le64(h + 16),
                .data_off = pos + BR_JR_HDR_SIZE,
                .checksum = br_get_le64(h + 24),
        };
        if (br_get_le32(h) != BR_JR_MAGIC || h[4] != BR_JR_VERSION ||
            (j.op != BR_OP_WRITE && j.op != BR_OP_ZERO && j.op != BR_OP_TRIM))
                return -EBADMSG;
        j.data_len = j.op == BR_OP_WRITE ? j.len : 0;
        if (end - j.data_off < j.data_len)
                return -EBADMSG;
        *ret = j;
        return 0;
}

/* Pass 1: every record of the journal is whole and its checksum matches. */
static int journal_verify(struct br_stage *s, uint8_t *buf)
{
        uint64_t pos = 0;
        while (pos < s->jlen) {
                uint8_t h[BR_JR_HDR_SIZE];
                struct jr_rec j;
                int r = jr_read_header(s->jfd, pos, s->jlen, &j, h);
                if (r < 0)
                        return r;
                XXH64_state_t st;
                XXH64_reset(&st, 0);
                XXH64_update(&st, h, 24);
                for (uint32_t done = 0; done < j.data_len;) {
                        uint32_t n = j.data_len - done < JR_CHUNK ? j.data_len - done : JR_CHUNK;
                        r = pread_full(s->jfd, buf, n, j.data_off + done);
                        if (r < 0)
                                return r;
                        XXH64_update(&st, buf, n);
                        done += n;
                }
                if (XXH64_digest(&st) != j.checksum)
                        return -EBADMSG;
                pos = j.data_off + j.data_len;
        }
        return 0;
}

static int apply_one(int fd, bool is_blk, uint8_t op, uint64_t offset, uint32_t len,
                     const void *data)
{
        switch (op) {
        case BR_OP_WRITE:
                return pwrite_full(fd, data, len, offset);
        case BR_OP_ZERO:
                /* The record does not say whether the primary kept the
                 * range allocated; sparseness is not content. */
                return br_image_zero(fd, is_blk, offset, len, true);
        case BR_OP_TRIM:
                return br_image_trim(fd, is_blk, offset, len);
        }
        return -EINVAL;
}

/* Pass 2: the journal's records, in order, onto the image. */
static int journal_apply(struct br_stage *s, int fd, bool is_blk, uint8_t *buf)
{
        uint64_t pos = 0;
        while (pos < s->jlen) {
                uint8_t h[BR_JR_HDR_SIZE];
                struct jr_rec j;
                int r = jr_read_header(s->jfd, pos, s->jlen, &j, h);
                if (r < 0)
                        return r;
                if (j.op != BR_OP_WRITE) {
                        r = apply_one(fd, is_blk, j.op, j.offset, j.len, NULL);
                        if (r < 0)
                                return r;
                }
                for (uint32_t done = 0; done < j.data_len;) {
                        uint32_t n = j.data_len - done < JR_CHUNK ? j.data_len - done : JR_CHUNK;
                        r = pread_full(s->jfd, buf, n, j.data_off + done);
                        if (r == 0)
                                r = pwrite_full(fd, buf, n, j.offset + done);
                        if (r < 0)
                                return r;
                        done += n;
                }
                pos = j.data_off + j.data_len;
        }
        return 0;
}

int br_stage_apply(struct br_stage *s, int image_fd)
{
        uint8_t *buf = NULL;
        bool is_blk;
        s->sync_ns = 0;
        /* An epoch without disk writes changes nothing: the image is as
         * durable as the last apply's fdatasync left it. */
        if (!s->mem.head && s->jlen == 0)
                return 0;
        int r = br_image_is_blk(image_fd, &is_blk);
        if (r < 0)
                return r;
        if (s->jlen > 0) {
                buf = malloc(JR_CHUNK);
                if (!buf)
                        return -ENOMEM;
                r = journal_verify(s, buf);
                if (r < 0)
                        goto out;
        }
        for (struct br_rec *rec = s->mem.head; rec; rec = rec->next) {
                r = apply_one(image_fd, is_blk, rec->op, rec->offset, rec->len, rec->data);
                if (r < 0)
                        goto out;
        }
        if (s->jlen > 0) {
                r = journal_apply(s, image_fd, is_blk, buf);
                if (r < 0)
                        goto out;
        }
        /* The ACK that follows promises the epoch is durable. */
        uint64_t t = now_ns();
        if (fdatasync(image_fd) < 0) {
                r = -errno;
                goto out;
        }
        s->sync_ns = now_ns() - t;
        empty(s);
out:
        free(buf);
        return r;
}
