/* image: raw image I/O with fallbacks (see image.h). */
#include "image.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

#define ZERO_CHUNK (256u * 1024)
#define SECTOR 512u

static const uint8_t zeros[ZERO_CHUNK];

int br_image_is_blk(int fd, bool *ret_is_blk)
{
        struct stat st;
        if (fstat(fd, &st) < 0)
                return -errno;
        *ret_is_blk = S_ISBLK(st.st_mode);
        return 0;
}

int br_image_open(const char *path, bool read_only, int *ret_fd, uint64_t *ret_size,
                  bool *ret_is_blk, char *err, size_t errlen)
{
        int fd = open(path, (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
        int r;
        if (fd < 0) {
                r = -errno;
                snprintf(err, errlen, "image %s: %s", path, strerror(-r));
                return r;
        }
        struct stat st;
        uint64_t size;
        if (fstat(fd, &st) < 0) {
                r = -errno;
                snprintf(err, errlen, "image %s: %s", path, strerror(-r));
                goto fail;
        }
        if (S_ISBLK(st.st_mode)) {
                if (ioctl(fd, BLKGETSIZE64, &size) < 0) {
                        r = -errno;
                        snprintf(err, errlen, "image %s: BLKGETSIZE64: %s", path, strerror(-r));
                        goto fail;
                }
        } else if (S_ISREG(st.st_mode)) {
                size = (uint64_t)st.st_size;
        } else {
                r = -EINVAL;
                snprintf(err, errlen, "image %s: not a regular file or block device", path);
                goto fail;
        }
        if (flock(fd, (read_only ? LOCK_SH : LOCK_EX) | LOCK_NB) < 0) {
                r = -errno;
                if (r == -EWOULDBLOCK)
                        r = -EBUSY;
                snprintf(err, errlen, "image %s: in use by another blockrepl (%s)", path,
                         strerror(-r));
                goto fail;
        }
        *ret_fd = fd;
        *ret_size = size;
        *ret_is_blk = S_ISBLK(st.st_mode);
        return 0;
fail:
        close(fd);
        return r;
}

static int write_zeros(int fd, uint64_t offset, uint64_t len)
{
        while (len > 0) {
                size_t n = len < ZERO_CHUNK ? (size_t)len : ZERO_CHUNK;
                int r = pwrite_full(fd, zeros, n, offset);
                if (r < 0)
                        return r;
                offset += n;
                len -= n;
        }
        return 0;
}

/* Errors that mean "this file system or device cannot do that", as opposed
 * to a real I/O error that a fallback must not hide. */
static bool unsupported(int e)
{
        return e == EOPNOTSUPP || e == ENOTTY || e == EINVAL || e == ENOSYS;
}

static int falloc(int fd, int mode, uint64_t offset, uint64_t len)
{
        int r;
        do
                r = fallocate(fd, mode, (off_t)offset, (off_t)len);
        while (r < 0 && errno == EINTR);
        return r < 0 ? -errno : 0;
}

static int blk_ioctl(int fd, unsigned long req, uint64_t offset, uint64_t len)
{
        /* The kernel refuses unaligned ranges; the caller falls back. */
        if (offset % SECTOR || len % SECTOR)
                return -EINVAL;
        uint64_t range[2] = { offset, len };
        return ioctl(fd, req, range) < 0 ? -errno : 0;
}

int br_image_zero(int fd, bool is_blk, uint64_t offset, uint64_t len, bool may_hole)
{
        int r;
        if (len == 0)
                return 0;
        if (is_blk) {
                r = blk_ioctl(fd, BLKZEROOUT, offset, len);
        } else {
                r = -EOPNOTSUPP;
                if (may_hole)
                        r = falloc(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len);
                if (r < 0 && unsupported(-r))
                        r = falloc(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, len);
        }
        if (r < 0 && unsupported(-r))
                r = write_zeros(fd, offset, len);
        return r;
}

int br_image_trim(int fd, bool is_blk, uint64_t offset, uint64_t len)
{
        int r;
        if (len == 0)
                return 0;
        if (is_blk)
                r = blk_ioctl(fd, BLKDISCARD, offset, len);
        else
                r = falloc(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len);
        if (r < 0 && unsupported(-r))
                r = write_zeros(fd, offset, len);
        return r;
}
