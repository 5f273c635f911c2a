#include "wire.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#define XXH_STATIC_LINKING_ONLY /* XXH64_state_t on the stack */
#include <xxhash.h>

#include "util.h"

#define PAGE_ENTRY_HDR 16 /* pfn u64, enc u8, pad[3], len u32 */
#define DISK_ENTRY_HDR 24 /* op u8, enc u8, pad[2], raw_len u32, offset u64, len u32, pad u32 */
#define HELLO_LEN (24 + 2 * WIRE_NAME_LEN + 8 + 8 * WIRE_MAX_DISKS + 8 + 8 * WIRE_MAX_DISKS + 8)
#define WELCOME_LEN 24 /* last_committed u64, flags u32, 0 u32, generation u64 */

/* Where the entry counts of a PAGES-like record start: SYNC_DISK has a
 * disk number and a reserved word first. */
static size_t pages_prefix(uint16_t type) { return type == WIRE_SYNC_DISK ? 8 : 0; }

static void put_le16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put_le32(uint8_t *p, uint32_t v)
{
        for (int i = 0; i < 4; i++)
                p[i] = (uint8_t)(v >> (8 * i));
}
static void put_le64(uint8_t *p, uint64_t v)
{
        for (int i = 0; i < 8; i++)
                p[i] = (uint8_t)(v >> (8 * i));
}
static uint16_t get_le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t get_le32(const uint8_t *p)
{
        return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get_le64(const uint8_t *p)
{
        return (uint64_t)get_le32(p) | (uint64_t)get_le32(p + 4) << 32;
}

static uint64_t record_checksum(const uint8_t *hdr, const void *payload, size_t len)
{
        XXH64_state_t st;
        XXH64_reset(&st, 0);
        XXH64_update(&st, hdr, 24);
        if (len)
                XXH64_update(&st, payload, len);
        return XXH64_digest(&st);
}

/* ---- building ---- */

void wire_buf_free(struct wire_buf *b)
{
        if (!b)
                return;
        free(b->data);
        *b = (struct wire_buf){ 0 };
}

void wire_buf_reset(struct wire_buf *b)
{
        b->len = 0;
        b->rec_start = 0;
}

int wire_buf_reserve(struct wire_buf *b, size_t extra)
{
        if (b->len + extra <= b->cap)
                return 0;
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + extra)
                cap *= 2;
        uint8_t *p = realloc(b->data, cap);
        if (!p)
                return -ENOMEM;
        b->data = p;
        b->cap = cap;
        return 0;
}

int wire_begin(struct wire_buf *b, enum wire_type type, uint64_t epoch)
{
        int r = wire_buf_reserve(b, WIRE_HDR_SIZE);
        if (r < 0)
                return r;
        b->rec_start = b->len;
        uint8_t *h = b->data + b->len;
        memset(h, 0, WIRE_HDR_SIZE);
        put_le32(h, WIRE_MAGIC);
        put_le16(h + 4, WIRE_VERSION);
        put_le16(h + 6, (uint16_t)type);
        put_le64(h + 16, epoch);
        b->len += WIRE_HDR_SIZE;
        return 0;
}

int wire_put_space(struct wire_buf *b, size_t n, uint8_t **ret_p)
{
        if (wire_cur_payload(b) + n > WIRE_MAX_PAYLOAD)
                return -EMSGSIZE;
        int r = wire_buf_reserve(b, n);
        if (r < 0)
                return r;
        *ret_p = b->data + b->len;
        b->len += n;
        return 0;
}

int wire_put_bytes(struct wire_buf *b, const void *p, size_t n)
{
        uint8_t *dst;
        int r = wire_put_space(b, n, &dst);
        if (r < 0)
                return r;
        if (n)
                memcpy(dst, p, n);
        return 0;
}

int wire_put_u32(struct wire_buf *b, uint32_t v)
{
        uint8_t t[4];
        put_le32(t, v);
        return wire_put_bytes(b, t, 4);
}

int wire_put_u64(struct wire_buf *b, uint64_t v)
{
        uint8_t t[8];
        put_le64(t, v);
        return wire_put_bytes(b, t, 8);
}

size_t wire_cur_payload(const struct wire_buf *b)
{
        return b->len - b->rec_start - WIRE_HDR_SIZE;
}

int wire_finish(struct wire_buf *b)
{
        uint8_t *h = b->data + b->rec_start;
        size_t plen = wire_cur_payload(b);
        if (plen > WIRE_MAX_PAYLOAD)
                return -EMSGSIZE;
        put_le32(h + 8, (uint32_t)plen);
        uint16_t type = get_le16(h + 6);
        if (type == WIRE_SYNC_PAGES || type == WIRE_EPOCH_PAGES || type == WIRE_SYNC_DISK) {
                /* patch the entry count counted by wire_pages_add */
                uint8_t *cnt = h + WIRE_HDR_SIZE + pages_prefix(type);
                put_le32(cnt, get_le32(cnt + 4));
                put_le32(cnt + 4, 0);
        }
        put_le64(h + 24, record_checksum(h, h + WIRE_HDR_SIZE, plen));
        b->rec_start = b->len;
        return 0;
}

static void put_name(uint8_t *dst, const char *s)
{
        memset(dst, 0, WIRE_NAME_LEN);
        memcpy(dst, s, strnlen(s, WIRE_NAME_LEN - 1));
}

int wire_put_hello(struct wire_buf *b, const struct wire_hello *h)
{
        uint8_t *p;
        if (h->n_disks > WIRE_MAX_DISKS)
                return -EINVAL;
        int r = wire_begin(b, WIRE_HELLO, 0);
        if (r == 0)
                r = wire_put_space(b, HELLO_LEN, &p);
        if (r < 0)
                return r;
        put_le32(p, h->page_size);
        put_le32(p + 4, h->flags);
        put_le64(p + 8, h->ram_bytes);
        put_le64(p + 16, h->config_digest);
        put_name(p + 24, h->vm);
        put_name(p + 24 + WIRE_NAME_LEN, h->host);
        p += 24 + 2 * WIRE_NAME_LEN;
        put_le32(p, h->n_disks);
        put_le32(p + 4, 0);
        for (unsigned i = 0; i < WIRE_MAX_DISKS; i++)
                put_le64(p + 8 + 8 * i, i < h->n_disks ? h->disk_bytes[i] : 0);
        put_le64(p + 8 + 8 * WIRE_MAX_DISKS, h->generation);
        p += 16 + 8 * WIRE_MAX_DISKS;
        for (unsigned i = 0; i < WIRE_MAX_DISKS; i++)
                put_le64(p + 8 * i, i < h->n_disks ? h->disk_lineage[i] : 0);
        put_le64(p + 8 * WIRE_MAX_DISKS, h->new_lineage);
        return wire_finish(b);
}

int wire_put_welcome(struct wire_buf *b, const struct wire_welcome *w)
{
        int r = wire_begin(b, WIRE_WELCOME, 0);
        if (r == 0)
                r = wire_put_u64(b, w->last_committed);
        if (r == 0)
                r = wire_put_u32(b, w->flags);
        if (r == 0)
                r = wire_put_u32(b, 0);
        if (r == 0)
                r = wire_put_u64(b, w->generation);
        return r < 0 ? r : wire_finish(b);
}

int wire_put_epoch_end(struct wire_buf *b, uint64_t epoch, const struct wire_epoch_end *e)
{
        int r = wire_begin(b, WIRE_EPOCH_END, epoch);
        if (r == 0)
                r = wire_put_u64(b, e->pages);
        if (r == 0)
                r = wire_put_u64(b, e->devstate_bytes);
        if (r == 0)
                r = wire_put_u64(b, e->stop_wall_ms);
        if (r == 0)
                r = wire_put_u64(b, e->disk_recs);
        if (r == 0)
                r = wire_put_u64(b, e->disk_bytes);
        return r < 0 ? r : wire_finish(b);
}

int wire_put_ack(struct wire_buf *b, uint64_t epoch, const struct wire_ack *a)
{
        int r = wire_begin(b, WIRE_ACK, epoch);
        if (r == 0)
                r = wire_put_u64(b, a->pages_applied);
        return r < 0 ? r : wire_finish(b);
}

int wire_put_error(struct wire_buf *b, uint32_t code, const char *text)
{
        size_t n = strnlen(text, WIRE_ERROR_TEXT_MAX - 1);
        int r = wire_begin(b, WIRE_ERROR, 0);
        if (r == 0)
                r = wire_put_u32(b, code);
        if (r == 0)
                r = wire_put_bytes(b, text, n);
        return r < 0 ? r : wire_finish(b);
}

int wire_put_ping(struct wire_buf *b, uint64_t committed_epoch)
{
        int r = wire_begin(b, WIRE_PING, committed_epoch);
        return r < 0 ? r : wire_finish(b);
}

int wire_pages_begin(struct wire_buf *b, enum wire_type type, uint64_t epoch)
{
        if (type != WIRE_SYNC_PAGES && type != WIRE_EPOCH_PAGES)
                return -EINVAL;
        int r = wire_begin(b, type, epoch);
        if (r == 0)
                r = wire_put_u32(b, 0); /* count, patched by wire_finish */
        if (r == 0)
                r = wire_put_u32(b, 0); /* running count while building */
        return r;
}

int wire_pages_add(struct wire_buf *b, uint64_t pfn, uint8_t enc, const void *data, uint32_t len)
{
        uint8_t *p;
        int r = wire_put_space(b, PAGE_ENTRY_HDR + len, &p);
        if (r < 0)
                return r;
        put_le64(p, pfn);
        p[8] = enc;
        p[9] = p[10] = p[11] = 0;
        put_le32(p + 12, len);
        if (len)
                memcpy(p + PAGE_ENTRY_HDR, data, len);
        uint8_t *h = b->data + b->rec_start;
        uint8_t *running = h + WIRE_HDR_SIZE + pages_prefix(get_le16(h + 6)) + 4;
        put_le32(running, get_le32(running) + 1);
        return 0;
}

int wire_disk_pages_begin(struct wire_buf *b, uint32_t disk)
{
        if (disk >= WIRE_MAX_DISKS)
                return -EINVAL;
        int r = wire_begin(b, WIRE_SYNC_DISK, 0);
        if (r == 0)
                r = wire_put_u32(b, disk);
        if (r == 0)
                r = wire_put_u32(b, 0);
        if (r == 0)
                r = wire_put_u32(b, 0); /* count, patched by wire_finish */
        if (r == 0)
                r = wire_put_u32(b, 0); /* running count while building */
        return r;
}

int wire_disk_begin(struct wire_buf *b, uint64_t epoch, uint32_t disk)
{
        if (disk >= WIRE_MAX_DISKS)
                return -EINVAL;
        int r = wire_begin(b, WIRE_EPOCH_DISK, epoch);
        if (r == 0)
                r = wire_put_u32(b, disk);
        if (r == 0)
                r = wire_put_u32(b, 0); /* entry count, counted by wire_disk_add */
        return r;
}

static bool disk_rec_ok(const struct wire_disk_rec *d)
{
        if (d->raw_len == 0 || d->raw_len > WIRE_DISK_REC_MAX)
                return false;
        switch (d->op) {
        case 1: /* write */
                if (d->enc == WIRE_PAGE_RAW)
                        return d->len == d->raw_len;
                return d->enc == WIRE_PAGE_LZ4 && d->len > 0 && d->len < d->raw_len;
        case 2: /* zero */
        case 3: /* trim */
                return d->enc == WIRE_PAGE_ZERO && d->len == 0;
        default:
                return false;
        }
}

int wire_disk_add(struct wire_buf *b, const struct wire_disk_rec *d)
{
        if (!disk_rec_ok(d))
                return -EINVAL;
        uint8_t *p;
        int r = wire_put_space(b, DISK_ENTRY_HDR + d->len, &p);
        if (r < 0)
                return r;
        p[0] = d->op;
        p[1] = d->enc;
        p[2] = p[3] = 0;
        put_le32(p + 4, d->raw_len);
        put_le64(p + 8, d->offset);
        put_le32(p + 16, d->len);
        put_le32(p + 20, 0);
        if (d->len)
                memcpy(p + DISK_ENTRY_HDR, d->data, d->len);
        uint8_t *cnt = b->data + b->rec_start + WIRE_HDR_SIZE + 4;
        put_le32(cnt, get_le32(cnt) + 1);
        return 0;
}

int wire_put_devstate(struct wire_buf *b, uint64_t epoch, const struct wire_devstate *d)
{
        uint8_t *p;
        int r = wire_begin(b, WIRE_EPOCH_DEVSTATE, epoch);
        if (r == 0)
                r = wire_put_space(b, 16, &p);
        if (r < 0)
                return r;
        put_le64(p, d->offset);
        put_le32(p + 8, d->raw_len);
        p[12] = d->enc;
        p[13] = p[14] = p[15] = 0;
        r = wire_put_bytes(b, d->data, d->len);
        return r < 0 ? r : wire_finish(b);
}

/* ---- reading ---- */

int wire_hdr_decode(const uint8_t raw[WIRE_HDR_SIZE], struct wire_hdr *ret)
{
        struct wire_hdr h = {
                .version = get_le16(raw + 4),
                .type = get_le16(raw + 6),
                .length = get_le32(raw + 8),
                .flags = get_le32(raw + 12),
                .epoch = get_le64(raw + 16),
                .checksum = get_le64(raw + 24),
        };
        if (get_le32(raw) != WIRE_MAGIC || h.version != WIRE_VERSION)
                return -EBADMSG;
        if (h.type < 1 || h.type > WIRE_TYPE_MAX || h.flags != 0)
                return -EBADMSG;
        if (h.length > WIRE_MAX_PAYLOAD)
                return -EBADMSG;
        *ret = h;
        return 0;
}

int wire_verify(const uint8_t raw[WIRE_HDR_SIZE], const void *payload, size_t len)
{
        return record_checksum(raw, payload, len) == get_le64(raw + 24) ? 0 : -EBADMSG;
}

void wire_msg_free(struct wire_msg *m)
{
        if (!m)
                return;
        free(m->payload);
        *m = (struct wire_msg){ 0 };
}

int wire_recv(int fd, uint64_t deadline_ns, struct wire_msg *m)
{
        uint8_t raw[WIRE_HDR_SIZE];
        struct wire_hdr h;
        int r = read_full(fd, raw, sizeof(raw), deadline_ns);
        if (r < 0)
                return r;
        r = wire_hdr_decode(raw, &h);
        if (r < 0)
                return r;
        if (h.length > m->cap) {
                uint8_t *p = realloc(m->payload, h.length);
                if (!p)
                        return -ENOMEM;
                m->payload = p;
                m->cap = h.length;
        }
        r = read_full(fd, m->payload, h.length, deadline_ns);
        if (r < 0)
                return r;
        r = wire_verify(raw, m->payload, h.length);
        if (r < 0)
                return r;
        m->hdr = h;
        return 0;
}

int wire_parse(const uint8_t *data, size_t len, struct wire_hdr *ret_hdr,
               const uint8_t **ret_payload, size_t *ret_used)
{
        struct wire_hdr h;
        if (len < WIRE_HDR_SIZE)
                return -EAGAIN;
        int r = wire_hdr_decode(data, &h);
        if (r < 0)
                return r;
        if (len - WIRE_HDR_SIZE < h.length)
                return -EAGAIN;
        r = wire_verify(data, data + WIRE_HDR_SIZE, h.length);
        if (r < 0)
                return r;
        *ret_hdr = h;
        *ret_payload = data + WIRE_HDR_SIZE;
        *ret_used = WIRE_HDR_SIZE + h.length;
        return 0;
}

static int expect(const struct wire_msg *m, uint16_t type, size_t min_len)
{
        if (m->hdr.type != type || m->hdr.length < min_len)
                return -EBADMSG;
        return 0;
}

static void get_name(char *dst, const uint8_t *src)
{
        memcpy(dst, src, WIRE_NAME_LEN);
        dst[WIRE_NAME_LEN - 1] = 0;
}

int wire_get_hello(const struct wire_msg *m, struct wire_hello *ret)
{
        int r = expect(m, WIRE_HELLO, HELLO_LEN);
        if (r < 0 || m->hdr.length != HELLO_LEN)
                return -EBADMSG;
        const uint8_t *p = m->payload;
        ret->page_size = get_le32(p);
        ret->flags = get_le32(p + 4);
        ret->ram_bytes = get_le64(p + 8);
        ret->config_digest = get_le64(p + 16);
        get_name(ret->vm, p + 24);
        get_name(ret->host, p + 24 + WIRE_NAME_LEN);
        p += 24 + 2 * WIRE_NAME_LEN;
        ret->n_disks = get_le32(p);
        if (ret->n_disks > WIRE_MAX_DISKS || get_le32(p + 4))
                return -EBADMSG;
        for (unsigned i = 0; i < WIRE_MAX_DISKS; i++) {
                ret->disk_bytes[i] = get_le64(p + 8 + 8 * i);
                if ((i >= ret->n_disks) != (ret->disk_bytes[i] == 0))
                        return -EBADMSG; /* a listed disk has a size, others none */
        }
        ret->generation = get_le64(p + 8 + 8 * WIRE_MAX_DISKS);
        p += 16 + 8 * WIRE_MAX_DISKS;
        for (unsigned i = 0; i < WIRE_MAX_DISKS; i++) {
                ret->disk_lineage[i] = get_le64(p + 8 * i);
                if (i >= ret->n_disks && ret->disk_lineage[i])
                        return -EBADMSG;
        }
        ret->new_lineage = get_le64(p + 8 * WIRE_MAX_DISKS);
        /* a bitmap only for a listed disk, and the lineage to adopt is set */
        if ((ret->flags & ~WIRE_HELLO_FLAGS_ALL) || (ret->flags >> ret->n_disks) ||
            ret->new_lineage == 0)
                return -EBADMSG;
        return 0;
}

int wire_get_welcome(const struct wire_msg *m, struct wire_welcome *ret)
{
        if (expect(m, WIRE_WELCOME, WELCOME_LEN) < 0 || m->hdr.length != WELCOME_LEN ||
            get_le32(m->payload + 12))
                return -EBADMSG;
        ret->last_committed = get_le64(m->payload);
        ret->flags = get_le32(m->payload + 8);
        ret->generation = get_le64(m->payload + 16);
        if (ret->flags & ~WIRE_WELCOME_FLAGS_ALL)
                return -EBADMSG;
        return 0;
}

int wire_get_epoch_end(const struct wire_msg *m, struct wire_epoch_end *ret)
{
        if (expect(m, WIRE_EPOCH_END, 40) < 0 || m->hdr.length != 40)
                return -EBADMSG;
        ret->pages = get_le64(m->payload);
        ret->devstate_bytes = get_le64(m->payload + 8);
        ret->stop_wall_ms = get_le64(m->payload + 16);
        ret->disk_recs = get_le64(m->payload + 24);
        ret->disk_bytes = get_le64(m->payload + 32);
        return 0;
}

int wire_get_ack(const struct wire_msg *m, struct wire_ack *ret)
{
        if (expect(m, WIRE_ACK, 8) < 0 || m->hdr.length != 8)
                return -EBADMSG;
        ret->pages_applied = get_le64(m->payload);
        return 0;
}

int wire_get_error(const struct wire_msg *m, struct wire_error *ret)
{
        if (expect(m, WIRE_ERROR, 4) < 0 || m->hdr.length > 4 + WIRE_ERROR_TEXT_MAX - 1)
                return -EBADMSG;
        ret->code = get_le32(m->payload);
        size_t n = m->hdr.length - 4;
        memcpy(ret->text, m->payload + 4, n);
        ret->text[n] = 0;
        return 0;
}

int wire_get_devstate(const struct wire_msg *m, struct wire_devstate *ret)
{
        if (expect(m, WIRE_EPOCH_DEVSTATE, 16) < 0)
                return -EBADMSG;
        const uint8_t *p = m->payload;
        struct wire_devstate d = {
                .offset = get_le64(p),
                .raw_len = get_le32(p + 8),
                .enc = p[12],
                .len = m->hdr.length - 16,
                .data = p + 16,
        };
        if (p[13] || p[14] || p[15])
                return -EBADMSG;
        /* v6: XOR_LZ4, against the standby's committed device state */
        if (d.enc != WIRE_PAGE_RAW && d.enc != WIRE_PAGE_LZ4 && d.enc != WIRE_PAGE_XOR_LZ4)
                return -EBADMSG;
        if (d.enc == WIRE_PAGE_RAW && d.len != d.raw_len)
                return -EBADMSG;
        /* the encoder sends a compressed form only when it is smaller */
        if (d.enc != WIRE_PAGE_RAW && (d.len == 0 || d.len >= d.raw_len))
                return -EBADMSG;
        if (d.raw_len > WIRE_MAX_PAYLOAD || d.offset > (1ull << 40))
                return -EBADMSG;
        *ret = d;
        return 0;
}

int wire_pages_iter_init(struct wire_pages_iter *it, const struct wire_msg *m)
{
        uint16_t t = m->hdr.type;
        if (t != WIRE_SYNC_PAGES && t != WIRE_EPOCH_PAGES && t != WIRE_SYNC_DISK)
                return -EBADMSG;
        size_t pre = pages_prefix(t);
        if (m->hdr.length < pre + 8)
                return -EBADMSG;
        it->disk = 0;
        if (pre) {
                it->disk = get_le32(m->payload);
                if (it->disk >= WIRE_MAX_DISKS || get_le32(m->payload + 4))
                        return -EBADMSG;
        }
        it->left = get_le32(m->payload + pre);
        if (get_le32(m->payload + pre + 4) != 0)
                return -EBADMSG;
        it->p = m->payload + pre + 8;
        it->end = m->payload + m->hdr.length;
        return 0;
}

static bool page_len_ok(uint8_t enc, uint32_t len)
{
        switch (enc) {
        case WIRE_PAGE_ZERO: return len == 0;
        case WIRE_PAGE_RAW: return len == HAVMS_PAGE_SIZE;
        case WIRE_PAGE_LZ4:
        case WIRE_PAGE_XOR_LZ4:
        case WIRE_PAGE_RUNS: return len > 0 && len < HAVMS_PAGE_SIZE;
        default: return false;
        }
}

int wire_pages_next(struct wire_pages_iter *it, struct wire_page *ret)
{
        size_t avail = (size_t)(it->end - it->p);
        if (it->left == 0)
                return avail == 0 ? 0 : -EBADMSG; /* trailing bytes */
        if (avail < PAGE_ENTRY_HDR)
                return -EBADMSG;
        struct wire_page pg = {
                .pfn = get_le64(it->p),
                .enc = it->p[8],
                .len = get_le32(it->p + 12),
                .data = it->p + PAGE_ENTRY_HDR,
        };
        if (it->p[9] || it->p[10] || it->p[11] || !page_len_ok(pg.enc, pg.len))
                return -EBADMSG;
        if (avail - PAGE_ENTRY_HDR < pg.len)
                return -EBADMSG;
        it->p += PAGE_ENTRY_HDR + pg.len;
        it->left--;
        *ret = pg;
        return 1;
}

int wire_disk_iter_init(struct wire_disk_iter *it, const struct wire_msg *m)
{
        if (expect(m, WIRE_EPOCH_DISK, 8) < 0)
                return -EBADMSG;
        it->disk = get_le32(m->payload);
        if (it->disk >= WIRE_MAX_DISKS)
                return -EBADMSG;
        it->left = get_le32(m->payload + 4);
        it->p = m->payload + 8;
        it->end = m->payload + m->hdr.length;
        return 0;
}

int wire_disk_next(struct wire_disk_iter *it, struct wire_disk_rec *ret)
{
        size_t avail = (size_t)(it->end - it->p);
        if (it->left == 0)
                return avail == 0 ? 0 : -EBADMSG;
        if (avail < DISK_ENTRY_HDR)
                return -EBADMSG;
        const uint8_t *p = it->p;
        struct wire_disk_rec d = {
                .op = p[0],
                .enc = p[1],
                .raw_len = get_le32(p + 4),
                .offset = get_le64(p + 8),
                .len = get_le32(p + 16),
                .data = p + DISK_ENTRY_HDR,
        };
        if (p[2] || p[3] || get_le32(p + 20) || !disk_rec_ok(&d))
                return -EBADMSG;
        if (avail - DISK_ENTRY_HDR < d.len)
                return -EBADMSG;
        it->p += DISK_ENTRY_HDR + d.len;
        it->left--;
        *ret = d;
        return 1;
}

/* ---- re-seed and resync ---- */

int wire_put_disk_bitmap(struct wire_buf *b, const struct wire_bitmap_chunk *c)
{
        if (c->disk >= WIRE_MAX_DISKS || c->len == 0 || c->len > WIRE_MAX_PAYLOAD - 16)
                return -EINVAL;
        int r = wire_begin(b, WIRE_DISK_BITMAP, 0);
        if (r == 0)
                r = wire_put_u32(b, c->disk);
        if (r == 0)
                r = wire_put_u32(b, 0);
        if (r == 0)
                r = wire_put_u64(b, c->offset);
        if (r == 0)
                r = wire_put_bytes(b, c->bits, c->len);
        return r < 0 ? r : wire_finish(b);
}

int wire_get_disk_bitmap(const struct wire_msg *m, struct wire_bitmap_chunk *ret)
{
        if (expect(m, WIRE_DISK_BITMAP, 17) < 0)
                return -EBADMSG;
        const uint8_t *p = m->payload;
        ret->disk = get_le32(p);
        ret->offset = get_le64(p + 8);
        ret->len = m->hdr.length - 16;
        ret->bits = p + 16;
        if (ret->disk >= WIRE_MAX_DISKS || get_le32(p + 4) || ret->offset > (1ull << 40))
                return -EBADMSG;
        return 0;
}

int wire_put_page_hashes(struct wire_buf *b, const struct wire_page_hashes *h)
{
        if (h->count == 0 || (uint64_t)h->count * WIRE_HASH_LEN > WIRE_MAX_PAYLOAD - 16)
                return -EINVAL;
        int r = wire_begin(b, WIRE_PAGE_HASHES, 0);
        if (r == 0)
                r = wire_put_u64(b, h->first_pfn);
        if (r == 0)
                r = wire_put_u32(b, h->count);
        if (r == 0)
                r = wire_put_u32(b, 0);
        if (r == 0)
                r = wire_put_bytes(b, h->hashes, (size_t)h->count * WIRE_HASH_LEN);
        return r < 0 ? r : wire_finish(b);
}

int wire_get_page_hashes(const struct wire_msg *m, struct wire_page_hashes *ret)
{
        if (expect(m, WIRE_PAGE_HASHES, 16) < 0)
                return -EBADMSG;
        const uint8_t *p = m->payload;
        ret->first_pfn = get_le64(p);
        ret->count = get_le32(p + 8);
        ret->hashes = p + 16;
        if (get_le32(p + 12) || ret->count == 0 ||
            m->hdr.length - 16 != (uint64_t)ret->count * WIRE_HASH_LEN ||
            ret->first_pfn > (1ull << 40))
                return -EBADMSG;
        return 0;
}

int wire_put_disk_hashes(struct wire_buf *b, const struct wire_disk_hashes *h)
{
        if (h->disk >= WIRE_MAX_DISKS || h->count == 0 ||
            (uint64_t)h->count * WIRE_DISK_HASH_ENTRY > WIRE_MAX_PAYLOAD - 8)
                return -EINVAL;
        int r = wire_begin(b, WIRE_DISK_HASHES, 0);
        if (r == 0)
                r = wire_put_u32(b, h->disk);
        if (r == 0)
                r = wire_put_u32(b, h->count);
        if (r == 0)
                r = wire_put_bytes(b, h->entries, (size_t)h->count * WIRE_DISK_HASH_ENTRY);
        return r < 0 ? r : wire_finish(b);
}

int wire_get_disk_hashes(const struct wire_msg *m, struct wire_disk_hashes *ret)
{
        if (expect(m, WIRE_DISK_HASHES, 8) < 0)
                return -EBADMSG;
        ret->disk = get_le32(m->payload);
        ret->count = get_le32(m->payload + 4);
        ret->entries = m->payload + 8;
        if (ret->disk >= WIRE_MAX_DISKS || ret->count == 0 ||
            m->hdr.length - 8 != (uint64_t)ret->count * WIRE_DISK_HASH_ENTRY)
                return -EBADMSG;
        return 0;
}

int wire_put_hashes_end(struct wire_buf *b, const struct wire_hashes_end *e)
{
        int r = wire_begin(b, WIRE_HASHES_END, 0);
        if (r == 0)
                r = wire_put_u64(b, e->pages);
        for (unsigned i = 0; i < WIRE_MAX_DISKS && r == 0; i++)
                r = wire_put_u64(b, e->blocks[i]);
        return r < 0 ? r : wire_finish(b);
}

int wire_get_hashes_end(const struct wire_msg *m, struct wire_hashes_end *ret)
{
        if (expect(m, WIRE_HASHES_END, 8 + 8 * WIRE_MAX_DISKS) < 0 ||
            m->hdr.length != 8 + 8 * WIRE_MAX_DISKS)
                return -EBADMSG;
        ret->pages = get_le64(m->payload);
        for (unsigned i = 0; i < WIRE_MAX_DISKS; i++)
                ret->blocks[i] = get_le64(m->payload + 8 + 8 * i);
        return 0;
}

int wire_put_net_frames(struct wire_buf *b, uint64_t epoch, const struct wire_net_frames *f)
{
        if (f->nic >= WIRE_MAX_NICS || f->count == 0 || f->len > WIRE_MAX_PAYLOAD - 8)
                return -EINVAL;
        int r = wire_begin(b, WIRE_NET_FRAMES, epoch);
        if (r == 0)
                r = wire_put_u32(b, f->nic);
        if (r == 0)
                r = wire_put_u32(b, f->count);
        if (r == 0)
                r = wire_put_bytes(b, f->frames, f->len);
        return r < 0 ? r : wire_finish(b);
}

int wire_get_net_frames(const struct wire_msg *m, struct wire_net_frames *ret)
{
        if (expect(m, WIRE_NET_FRAMES, 8) < 0)
                return -EBADMSG;
        const uint8_t *p = m->payload + 8;
        size_t len = m->hdr.length - 8, off = 0;
        uint32_t count = get_le32(m->payload + 4), n = 0;
        while (off < len) {
                if (len - off < 4)
                        return -EBADMSG;
                uint32_t fl = get_le32(p + off);
                if (fl < WIRE_FRAME_MIN || fl > WIRE_FRAME_MAX || fl > len - off - 4)
                        return -EBADMSG;
                off += 4 + fl;
                n++;
        }
        ret->nic = get_le32(m->payload);
        if (ret->nic >= WIRE_MAX_NICS || count == 0 || n != count)
                return -EBADMSG;
        ret->count = count;
        ret->frames = p;
        ret->len = len;
        return 0;
}

uint64_t wire_hash_entry_block(const uint8_t *entry) { return get_le64(entry); }
void wire_hash_entry_set_block(uint8_t *entry, uint64_t block) { put_le64(entry, block); }

void wire_hash(const void *data, size_t len, uint8_t out[WIRE_HASH_LEN])
{
        XXH128_hash_t h = XXH3_128bits(data, len);
        put_le64(out, h.low64);
        put_le64(out + 8, h.high64);
}

const char *wire_type_name(uint16_t type)
{
        static const char *const names[] = {
                [WIRE_HELLO] = "HELLO",
                [WIRE_WELCOME] = "WELCOME",
                [WIRE_SYNC_PAGES] = "SYNC_PAGES",
                [WIRE_EPOCH_PAGES] = "EPOCH_PAGES",
                [WIRE_EPOCH_DEVSTATE] = "EPOCH_DEVSTATE",
                [WIRE_EPOCH_END] = "EPOCH_END",
                [WIRE_ACK] = "ACK",
                [WIRE_ERROR] = "ERROR",
                [WIRE_PING] = "PING",
                [WIRE_SYNC_DISK] = "SYNC_DISK",
                [WIRE_EPOCH_DISK] = "EPOCH_DISK",
                [WIRE_DISK_BITMAP] = "DISK_BITMAP",
                [WIRE_PAGE_HASHES] = "PAGE_HASHES",
                [WIRE_DISK_HASHES] = "DISK_HASHES",
                [WIRE_HASHES_END] = "HASHES_END",
                [WIRE_NET_FRAMES] = "NET_FRAMES",
        };
        if (type < ARRAY_SIZE(names) && names[type])
                return names[type];
        return "UNKNOWN";
}
