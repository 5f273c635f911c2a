/* libFuzzer target for blockrepl's NBD server (blockrepl/nbd.c): what it
 * does with the bytes a client sends, handshake and requests, against an
 * in-memory 1 MiB export.
 *
 * The first input byte picks read-only (bit 0); the rest is the client's
 * stream, served from a memfd (EOF ends the connection like a client that
 * goes away) with the replies written to /dev/null. The export checks that
 * nbd.c never hands it a range outside the export or an empty one. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "nbd.h"

#define SIZE (1u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t disk[SIZE];

static void in_range(uint64_t off, uint32_t len)
{
        if (len == 0 || off > SIZE || len > SIZE - off)
                abort();
}

static int m_read(void *priv, void *buf, uint32_t len, uint64_t off)
{
        in_range(off, len);
        memcpy(buf, disk + off, len);
        return 0;
}

static int m_write(void *priv, const void *buf, uint32_t len, uint64_t off, bool fua)
{
        in_range(off, len);
        if (*(bool *)priv)
                abort(); /* read-only: must have been refused */
        memcpy(disk + off, buf, len);
        return off == 4096 ? -EIO : 0; /* an error path too */
}

static int m_zero(void *priv, uint32_t len, uint64_t off, bool may_hole, bool fua)
{
        in_range(off, len);
        memset(disk + off, 0, len);
        return 0;
}

static int m_trim(void *priv, uint32_t len, uint64_t off, bool fua)
{
        in_range(off, len);
        return 0;
}

static int m_flush(void *priv)
{
        return 0;
}

static const struct nbd_ops ops = {
        .read = m_read, .write = m_write, .zero = m_zero, .trim = m_trim, .flush = m_flush,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        static int in = -1, out = -1;
        if (in < 0) {
                in = memfd_create("fuzz-nbd", MFD_CLOEXEC);
                out = open("/dev/null", O_WRONLY | O_CLOEXEC);
                if (in < 0 || out < 0)
                        abort();
        }
        if (size < 1)
                return 0;
        bool ro = data[0] & 1;
        if (ftruncate(in, 0) < 0 || pwrite(in, data + 1, size - 1, 0) != (ssize_t)(size - 1) ||
            lseek(in, 0, SEEK_SET) != 0)
                abort();
        struct nbd_export e = { .size = SIZE, .read_only = ro, .ops = &ops, .priv = &ro };
        (void)nbd_serve(in, out, &e, 0);
        return 0;
}
