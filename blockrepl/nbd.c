/* nbd: NBD server protocol for one connection (nbd.h). */
#include "nbd.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define BUF_KEEP (1u << 20) /* buffer kept between requests; larger ones are freed */

struct conn {
        int in, out;
        const struct nbd_export *e;
        uint64_t deadline;  /* handshake only; 0 in transmission */
        bool no_zeroes;     /* client asked to skip the 124 zero bytes */
        uint8_t *buf;       /* NBD_REPLY_SIZE headroom + payload */
        size_t cap;
};

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)(v >> 16)); put16(p + 2, (uint16_t)v); }
static void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)(v >> 32)); put32(p + 4, (uint32_t)v); }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)get16(p) << 16 | get16(p + 2); }
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) << 32 | get32(p + 4); }

static uint16_t tx_flags(const struct nbd_export *e)
{
        uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
                     NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES;
        if (e->read_only)
                f |= NBD_FLAG_READ_ONLY;
        return f;
}

static uint32_t nbd_errno(int r)
{
        switch (-r) {
        case 0: return 0;
        case EPERM: case EROFS: case EACCES: return NBD_EPERM;
        case EINVAL: return NBD_EINVAL;
        case ENOSPC: case EDQUOT: return NBD_ENOSPC;
        case ENOMEM: return NBD_ENOMEM;
        case EOVERFLOW: return NBD_EOVERFLOW;
        case ENOTSUP: return NBD_ENOTSUP;
        case ESHUTDOWN: return NBD_ESHUTDOWN;
        default: return NBD_EIO;
        }
}

static int rd(struct conn *c, void *p, size_t n) { return read_full(c->in, p, n, c->deadline); }
static int wr(struct conn *c, const void *p, size_t n) { return write_full(c->out, p, n, c->deadline); }

/* ---- handshake ---------------------------------------------------------- */

static int opt_reply(struct conn *c, uint32_t opt, uint32_t type, const void *data, uint32_t len)
{
        uint8_t h[20];
        put64(h, NBD_OPT_REPLY_MAGIC);
        put32(h + 8, opt);
        put32(h + 12, type);
        put32(h + 16, len);
        int r = wr(c, h, sizeof(h));
        if (r == 0 && len)
                r = wr(c, data, len);
        return r;
}

/* NBD_OPT_INFO / NBD_OPT_GO: u32 name length, name, u16 n, n * u16 info
 * types. Any name is our one export. Returns 1 when GO succeeded. */
static int opt_info_go(struct conn *c, uint32_t opt, const uint8_t *d, uint32_t len)
{
        bool want_bs = false;
        if (len < 6)
                return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
        uint32_t namelen = get32(d);
        if (namelen > len - 6)
                return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
        uint16_t n = get16(d + 4 + namelen);
        if (len != 4 + namelen + 2 + 2u * n)
                return opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
        for (uint16_t i = 0; i < n; i++)
                if (get16(d + 6 + namelen + 2u * i) == NBD_INFO_BLOCK_SIZE)
                        want_bs = true;

        uint8_t info[14];
        put16(info, NBD_INFO_EXPORT);
        put64(info + 2, c->e->size);
        put16(info + 10, tx_flags(c->e));
        int r = opt_reply(c, opt, NBD_REP_INFO, info, 12);
        if (r == 0 && want_bs) {
                /* Only when asked: tells the client our payload limit. */
                put16(info, NBD_INFO_BLOCK_SIZE);
                put32(info + 2, 1);
                put32(info + 6, NBD_PREFERRED_BLOCK);
                put32(info + 10, NBD_MAX_REQUEST);
                r = opt_reply(c, opt, NBD_REP_INFO, info, 14);
        }
        if (r == 0)
                r = opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
        if (r < 0)
                return r;
        return opt == NBD_OPT_GO;
}

static int opt_export_name(struct conn *c)
{
        uint8_t rep[10 + 124] = { 0 };
        put64(rep, c->e->size);
        put16(rep + 8, tx_flags(c->e));
        int r = wr(c, rep, c->no_zeroes ? 10 : sizeof(rep));
        return r < 0 ? r : 1;
}

/* Returns 1: go to transmission, 0: client aborted, <0: close. */
static int handshake(struct conn *c)
{
        uint8_t b[18];
        put64(b, NBD_MAGIC);
        put64(b + 8, NBD_IHAVEOPT);
        put16(b + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
        int r = wr(c, b, 18);
        if (r < 0)
                return r;
        r = rd(c, b, 4);
        if (r < 0)
                return r;
        uint32_t cflags = get32(b);
        /* Unknown flags must close (the spec); so does a client that is not
         * fixed-newstyle: it could not parse our error replies. */
        if (!(cflags & NBD_FLAG_C_FIXED_NEWSTYLE) ||
            (cflags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)))
                return -EPROTO;
        c->no_zeroes = cflags & NBD_FLAG_C_NO_ZEROES;

        for (;;) {
                uint8_t h[16], data[NBD_MAX_OPTION_LEN];
                r = rd(c, h, sizeof(h));
                if (r < 0)
                        return r;
                uint32_t opt = get32(h + 8), len = get32(h + 12);
                /* Bad magic: we are out of step. Too long: skipping it
                 * would let a client keep us reading forever. */
                if (get64(h) != NBD_IHAVEOPT || len > NBD_MAX_OPTION_LEN)
                        return -EPROTO;
                r = rd(c, data, len);
                if (r < 0)
                        return r;
                switch (opt) {
                case NBD_OPT_EXPORT_NAME:
                        return opt_export_name(c);
                case NBD_OPT_ABORT:
                        (void)opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
                        return 0;
                case NBD_OPT_LIST:
                        if (len != 0) {
                                r = opt_reply(c, opt, NBD_REP_ERR_INVALID, NULL, 0);
                                break;
                        }
                        memset(data, 0, 4); /* one export, name "" */
                        r = opt_reply(c, opt, NBD_REP_SERVER, data, 4);
                        if (r == 0)
                                r = opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
                        break;
                case NBD_OPT_INFO:
                case NBD_OPT_GO:
                        r = opt_info_go(c, opt, data, len);
                        if (r == 1)
                                return 1;
                        break;
                default:
                        r = opt_reply(c, opt, NBD_REP_ERR_UNSUP, NULL, 0);
                        break;
                }
                if (r < 0)
                        return r;
        }
}

/* ---- transmission --------------------------------------------------------- */

static int reply(struct conn *c, const uint8_t *handle, uint32_t error)
{
        uint8_t h[NBD_REPLY_SIZE];
        put32(h, NBD_SIMPLE_REPLY_MAGIC);
        put32(h + 4, error);
        memcpy(h + 8, handle, 8);
        return wr(c, h, sizeof(h));
}

static int buf_reserve(struct conn *c, uint32_t len)
{
        size_t need = NBD_REPLY_SIZE + (size_t)len;
        if (c->cap >= need)
                return 0;
        uint8_t *p = malloc(need);
        if (!p)
                return -ENOMEM;
        free(c->buf);
        c->buf = p;
        c->cap = need;
        return 0;
}

static void buf_trim(struct conn *c)
{
        if (c->cap > NBD_REPLY_SIZE + BUF_KEEP) {
                free(c->buf);
                c->buf = NULL;
                c->cap = 0;
        }
}

/* 0 if the request may go to the backend, else the NBD error to reply. */
static uint32_t check(const struct conn *c, uint16_t type, uint16_t flags, uint64_t off,
                      uint32_t len)
{
        uint16_t allowed = NBD_CMD_FLAG_FUA;
        bool changes = false;
        switch (type) {
        case NBD_CMD_READ:
                break;
        case NBD_CMD_WRITE:
        case NBD_CMD_TRIM:
                changes = true;
                break;
        case NBD_CMD_WRITE_ZEROES:
                allowed |= NBD_CMD_FLAG_NO_HOLE;
                changes = true;
                break;
        case NBD_CMD_FLUSH:
                return flags & ~allowed ? NBD_EINVAL : 0; /* offset, len ignored */
        default:
                return NBD_EINVAL;
        }
        if (flags & ~allowed)
                return NBD_EINVAL;
        if ((type == NBD_CMD_READ || type == NBD_CMD_WRITE) && len > NBD_MAX_REQUEST)
                return NBD_EINVAL;
        if (off > c->e->size || len > c->e->size - off)
                return NBD_EINVAL;
        if (changes && c->e->read_only)
                return NBD_EPERM;
        return 0;
}

static int do_read(struct conn *c, const uint8_t *handle, uint32_t err, uint64_t off, uint32_t len)
{
        int r = 0;
        if (!err && len)
                r = buf_reserve(c, len);
        if (!err && len && r == 0)
                r = c->e->ops->read(c->e->priv, c->buf + NBD_REPLY_SIZE, len, off);
        if (!err)
                err = nbd_errno(r);
        if (err || !len)
                return reply(c, handle, err);
        /* header and data in one write */
        put32(c->buf, NBD_SIMPLE_REPLY_MAGIC);
        put32(c->buf + 4, 0);
        memcpy(c->buf + 8, handle, 8);
        return wr(c, c->buf, NBD_REPLY_SIZE + (size_t)len);
}

static int do_write(struct conn *c, const uint8_t *handle, uint32_t err, uint16_t flags,
                    uint64_t off, uint32_t len)
{
        /* The payload follows whatever we think of the request: read it (it
         * is at most NBD_MAX_REQUEST, checked by the caller) to stay in step. */
        int r = buf_reserve(c, len);
        if (r < 0)
                return r; /* cannot skip the payload: close */
        r = rd(c, c->buf + NBD_REPLY_SIZE, len);
        if (r < 0)
                return r;
        if (!err && len)
                err = nbd_errno(c->e->ops->write(c->e->priv, c->buf + NBD_REPLY_SIZE, len, off,
                                                 flags & NBD_CMD_FLAG_FUA));
        return reply(c, handle, err);
}

/* Returns 1 to go on, 0 after DISC, <0 to close. */
static int request(struct conn *c)
{
        uint8_t q[NBD_REQUEST_SIZE];
        int r = rd(c, q, sizeof(q));
        if (r < 0)
                return r;
        if (get32(q) != NBD_REQUEST_MAGIC)
                return -EPROTO;
        uint16_t flags = get16(q + 4), type = get16(q + 6);
        const uint8_t *handle = q + 8;
        uint64_t off = get64(q + 16);
        uint32_t len = get32(q + 24);
        bool fua = flags & NBD_CMD_FLAG_FUA;

        if (type == NBD_CMD_DISC)
                return 0;
        uint32_t err = check(c, type, flags, off, len);
        switch (type) {
        case NBD_CMD_READ:
                r = do_read(c, handle, err, off, len);
                break;
        case NBD_CMD_WRITE:
                if (len > NBD_MAX_REQUEST)
                        return -EPROTO; /* too long to read and drop */
                r = do_write(c, handle, err, flags, off, len);
                break;
        case NBD_CMD_FLUSH:
                if (!err)
                        err = nbd_errno(c->e->ops->flush(c->e->priv));
                r = reply(c, handle, err);
                break;
        case NBD_CMD_TRIM:
                if (!err && len)
                        err = nbd_errno(c->e->ops->trim(c->e->priv, len, off, fua));
                r = reply(c, handle, err);
                break;
        case NBD_CMD_WRITE_ZEROES:
                if (!err && len)
                        err = nbd_errno(c->e->ops->zero(c->e->priv, len, off,
                                                        !(flags & NBD_CMD_FLAG_NO_HOLE), fua));
                r = reply(c, handle, err);
                break;
        default:
                r = reply(c, handle, err); /* EINVAL from check() */
                break;
        }
        buf_trim(c);
        return r < 0 ? r : 1;
}

int nbd_serve(int fd_in, int fd_out, const struct nbd_export *e, uint64_t handshake_deadline_ns)
{
        struct conn c = { .in = fd_in, .out = fd_out, .e = e, .deadline = handshake_deadline_ns };
        int r = handshake(&c);
        if (r == 1) {
                c.deadline = 0; /* an idle guest disk may stay quiet for hours */
                do
                        r = request(&c);
                while (r == 1);
        }
        free(c.buf);
        return r;
}
