/* nbd: the server side of the NBD protocol, the subset QEMU and libnbd use
 * (docs/blockrepl.md "NBD subset"): fixed newstyle handshake, simple
 * replies, one export whatever its name.
 *
 *   handshake:    S: NBDMAGIC IHAVEOPT flags16      C: flags32
 *                 C: IHAVEOPT opt32 len32 data      S: opt replies ...
 *                 (until GO or EXPORT_NAME; ABORT or any error closes)
 *   transmission: C: magic32 flags16 type16 handle64 offset64 len32 [data]
 *                 S: magic32 error32 handle64 [data for a good READ]
 *
 * Every integer is big-endian on the wire. Every request is checked (magic,
 * type, flags, range, length) before the backend sees it; what cannot be
 * answered safely (bad magic, an option or a WRITE payload too long to
 * skip) ends the connection.
 *
 * Owns: the byte protocol of one connection. Does not own: the image,
 * what a write means (the backend ops), threads, sockets' lifetime.
 */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#define NBD_MAGIC 0x4e42444d41474943ull       /* "NBDMAGIC" */
#define NBD_IHAVEOPT 0x49484156454f5054ull    /* "IHAVEOPT" */
#define NBD_OPT_REPLY_MAGIC 0x3e889045565a9ull
#define NBD_REQUEST_MAGIC 0x25609513u
#define NBD_SIMPLE_REPLY_MAGIC 0x67446698u

#define NBD_FLAG_FIXED_NEWSTYLE (1u << 0)     /* handshake flags (server) */
#define NBD_FLAG_NO_ZEROES (1u << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE (1u << 0)   /* client flags */
#define NBD_FLAG_C_NO_ZEROES (1u << 1)

enum nbd_opt {
        NBD_OPT_EXPORT_NAME = 1,
        NBD_OPT_ABORT = 2,
        NBD_OPT_LIST = 3,
        NBD_OPT_STARTTLS = 5,
        NBD_OPT_INFO = 6,
        NBD_OPT_GO = 7,
        NBD_OPT_STRUCTURED_REPLY = 8,
};

#define NBD_REP_ACK 1u
#define NBD_REP_SERVER 2u
#define NBD_REP_INFO 3u
#define NBD_REP_ERR_UNSUP ((1u << 31) | 1u)
#define NBD_REP_ERR_INVALID ((1u << 31) | 3u)

#define NBD_INFO_EXPORT 0
#define NBD_INFO_BLOCK_SIZE 3

/* transmission flags */
#define NBD_FLAG_HAS_FLAGS (1u << 0)
#define NBD_FLAG_READ_ONLY (1u << 1)
#define NBD_FLAG_SEND_FLUSH (1u << 2)
#define NBD_FLAG_SEND_FUA (1u << 3)
#define NBD_FLAG_SEND_TRIM (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1u << 6)

enum nbd_cmd {
        NBD_CMD_READ = 0,
        NBD_CMD_WRITE = 1,
        NBD_CMD_DISC = 2,
        NBD_CMD_FLUSH = 3,
        NBD_CMD_TRIM = 4,
        NBD_CMD_WRITE_ZEROES = 6,
};

#define NBD_CMD_FLAG_FUA (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE (1u << 1)

/* NBD error values (the protocol's, equal to Linux errno numbers). */
#define NBD_EPERM 1u
#define NBD_EIO 5u
#define NBD_ENOMEM 12u
#define NBD_EINVAL 22u
#define NBD_ENOSPC 28u
#define NBD_EOVERFLOW 75u
#define NBD_ENOTSUP 95u
#define NBD_ESHUTDOWN 108u

#define NBD_MAX_REQUEST (32u << 20)  /* READ/WRITE payload limit */
#define NBD_MAX_OPTION_LEN 4096u     /* option data limit in the handshake */
#define NBD_PREFERRED_BLOCK 4096u
#define NBD_REQUEST_SIZE 28u
#define NBD_REPLY_SIZE 16u

/* What a connection serves. The ops return 0 or a negative errno, which
 * the client sees as the nearest NBD error (EIO for anything unusual).
 * Ranges are checked before any op is called; len is never 0. */
struct nbd_ops {
        int (*read)(void *priv, void *buf, uint32_t len, uint64_t offset);
        int (*write)(void *priv, const void *buf, uint32_t len, uint64_t offset, bool fua);
        int (*zero)(void *priv, uint32_t len, uint64_t offset, bool may_hole, bool fua);
        int (*trim)(void *priv, uint32_t len, uint64_t offset, bool fua);
        int (*flush)(void *priv);
};

struct nbd_export {
        uint64_t size;
        bool read_only;
        const struct nbd_ops *ops;
        void *priv;
};

/* Serve one client: handshake (which must finish by handshake_deadline_ns,
 * a now_ns() value, 0 = none), then requests until NBD_CMD_DISC or the
 * client goes away. fd_in and fd_out are the same socket in the server;
 * the fuzz target reads from a file and writes to /dev/null. fd_in should
 * be non-blocking for the deadline to apply. Returns 0 after a clean end
 * (DISC, ABORT), -EPROTO after a protocol violation, or the I/O error. */
int nbd_serve(int fd_in, int fd_out, const struct nbd_export *e,
              uint64_t handshake_deadline_ns);
