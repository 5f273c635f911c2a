/* bitmap: the persistent dirty-block bitmap (stage.h, format in format.h).
 *
 * Owns: the bitmap file and its mapping. The file is created whole (header,
 * then its full size) under a temporary name and renamed, so a crash never
 * leaves a half-made bitmap that looks valid. An existing file that does not
 * match (image size, block size, header, length) is refused: resetting it
 * silently would lose the record of what changed while the peer was away.
 */
#define XXH_STATIC_LINKING_ONLY
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "blockrepl.h"
#include "format.h"
#include "image.h"
#include "stage.h"
#include "util.h"

struct br_bitmap {
        int fd;
        uint8_t *map;    /* the whole file, MAP_SHARED */
        size_t map_len;
        uint8_t *bits;   /* map + BR_BM_HDR_SIZE */
        uint64_t nbits;
};

static uint64_t nbits_for(uint64_t image_size)
{
        return image_size / BR_BLOCK_SIZE + (image_size % BR_BLOCK_SIZE != 0);
}

static uint64_t file_len_for(uint64_t nbits)
{
        uint64_t bytes = (nbits + 7) / 8;
        return BR_BM_HDR_SIZE + (bytes + 7) / 8 * 8;
}

static void header_encode(uint8_t *h, uint64_t image_size)
{
        memset(h, 0, BR_BM_HDR_SIZE);
        memcpy(h, BR_BM_MAGIC, 8);
        br_put_le32(h + 8, BR_BM_VERSION);
        br_put_le32(h + 12, BR_BM_HDR_SIZE);
        br_put_le64(h + 16, image_size);
        br_put_le32(h + 24, BR_BLOCK_SIZE);
        br_put_le64(h + 32, nbits_for(image_size));
        br_put_le64(h + 40, XXH64(h, 40, 0));
}

/* Checks the header against the image; says what is wrong in err. */
static int header_check(const uint8_t *h, uint64_t file_size, uint64_t image_size,
                        const char *path, char *err, size_t errlen)
{
        if (file_size < BR_BM_HDR_SIZE || memcmp(h, BR_BM_MAGIC, 8) != 0) {
                snprintf(err, errlen, "bitmap %s: not a havms bitmap file (bad magic or too short)",
                         path);
                return -EINVAL;
        }
        if (br_get_le64(h + 40) != XXH64(h, 40, 0)) {
                snprintf(err, errlen, "bitmap %s: header checksum mismatch (corrupt file)", path);
                return -EINVAL;
        }
        uint32_t version = br_get_le32(h + 8);
        if (version != BR_BM_VERSION || br_get_le32(h + 12) != BR_BM_HDR_SIZE) {
                snprintf(err, errlen, "bitmap %s: unsupported version %u", path, version);
                return -EINVAL;
        }
        uint32_t bs = br_get_le32(h + 24);
        if (bs != BR_BLOCK_SIZE) {
                snprintf(err, errlen, "bitmap %s: block size %u, expected %u", path, bs,
                         BR_BLOCK_SIZE);
                return -EINVAL;
        }
        uint64_t sz = br_get_le64(h + 16);
        if (sz != image_size) {
                snprintf(err, errlen,
                         "bitmap %s: made for an image of %llu bytes, this image has %llu "
                         "(remove the file to start over with a full resync)",
                         path, (unsigned long long)sz, (unsigned long long)image_size);
                return -EINVAL;
        }
        if (br_get_le64(h + 32) != nbits_for(image_size) ||
            file_size != file_len_for(nbits_for(image_size))) {
                snprintf(err, errlen, "bitmap %s: file length %llu does not match its header "
                         "(truncated or corrupt)", path, (unsigned long long)file_size);
                return -EINVAL;
        }
        return 0;
}

static int fsync_dir_of(const char *path)
{
        char *copy = strdup(path);
        if (!copy)
                return -ENOMEM;
        int r = 0;
        int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0 || fsync(dfd) < 0)
                r = -errno;
        if (dfd >= 0)
                close(dfd);
        free(copy);
        return r;
}

/* Create path whole: header + zero bits, durable, then renamed into place. */
static int bitmap_create(const char *path, uint64_t image_size, char *err, size_t errlen)
{
        uint8_t h[BR_BM_HDR_SIZE];
        char tmp[4096];
        int r, fd = -1;
        if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
                snprintf(err, errlen, "bitmap %s: path too long", path);
                return -ENAMETOOLONG;
        }
        fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0) {
                r = -errno;
                snprintf(err, errlen, "bitmap %s: cannot create: %s", tmp, strerror(-r));
                return r;
        }
        header_encode(h, image_size);
        r = pwrite_full(fd, h, sizeof(h), 0);
        if (r == 0 && ftruncate(fd, (off_t)file_len_for(nbits_for(image_size))) < 0)
                r = -errno;
        if (r == 0 && fsync(fd) < 0)
                r = -errno;
        if (r == 0 && rename(tmp, path) < 0)
                r = -errno;
        if (r == 0)
                r = fsync_dir_of(path);
        if (r < 0) {
                snprintf(err, errlen, "bitmap %s: cannot create: %s", path, strerror(-r));
                unlink(tmp);
        }
        close(fd);
        return r;
}

int br_bitmap_open(const char *path, uint64_t image_size, struct br_bitmap **ret,
                   char *err, size_t errlen)
{
        struct br_bitmap *bm = NULL;
        uint8_t h[BR_BM_HDR_SIZE] = { 0 };
        struct stat st;
        int r;
        int fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT) {
                r = bitmap_create(path, image_size, err, errlen);
                if (r < 0)
                        return r;
                fd = open(path, O_RDWR | O_CLOEXEC);
        }
        if (fd < 0) {
                r = -errno;
                snprintf(err, errlen, "bitmap %s: %s", path, strerror(-r));
                return r;
        }
        if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
                r = errno == EWOULDBLOCK ? -EBUSY : -errno;
                snprintf(err, errlen, "bitmap %s: in use by another process", path);
                goto out;
        }
        if (fstat(fd, &st) < 0) {
                r = -errno;
                snprintf(err, errlen, "bitmap %s: %s", path, strerror(-r));
                goto out;
        }
        if (st.st_size >= (off_t)BR_BM_HDR_SIZE) {
                r = pread_full(fd, h, sizeof(h), 0);
                if (r < 0) {
                        snprintf(err, errlen, "bitmap %s: cannot read: %s", path, strerror(-r));
                        goto out;
                }
        }
        r = header_check(h, (uint64_t)st.st_size, image_size, path, err, errlen);
        if (r < 0)
                goto out;
        bm = calloc(1, sizeof(*bm));
        if (!bm) {
                r = -ENOMEM;
                snprintf(err, errlen, "bitmap %s: out of memory", path);
                goto out;
        }
        bm->map_len = (size_t)st.st_size;
        bm->map = mmap(NULL, bm->map_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (bm->map == MAP_FAILED) {
                r = -errno;
                snprintf(err, errlen, "bitmap %s: mmap: %s", path, strerror(-r));
                free(bm);
                bm = NULL;
                goto out;
        }
        bm->fd = fd;
        bm->bits = bm->map + BR_BM_HDR_SIZE;
        bm->nbits = nbits_for(image_size);
        *ret = bm;
        return 0;
out:
        close(fd);
        return r;
}

void br_bitmap_close(struct br_bitmap *bm)
{
        if (!bm)
                return;
        (void)br_bitmap_sync(bm);
        munmap(bm->map, bm->map_len);
        close(bm->fd);
        free(bm);
}

void br_bitmap_set_range(struct br_bitmap *bm, uint64_t offset, uint64_t len)
{
        if (len == 0 || bm->nbits == 0)
                return;
        uint64_t first = offset / BR_BLOCK_SIZE;
        uint64_t last = (offset + len - 1) / BR_BLOCK_SIZE;
        if (last >= bm->nbits)
                last = bm->nbits - 1;
        /* Atomic: readers (count, test) may run on other threads. */
        for (uint64_t i = first; i <= last; i++)
                __atomic_fetch_or(&bm->bits[i / 8], (uint8_t)(1u << (i % 8)), __ATOMIC_RELAXED);
}

bool br_bitmap_test(const struct br_bitmap *bm, uint64_t block)
{
        if (block >= bm->nbits)
                return false;
        uint8_t byte = __atomic_load_n(&bm->bits[block / 8], __ATOMIC_RELAXED);
        return byte & (1u << (block % 8));
}

uint64_t br_bitmap_count(const struct br_bitmap *bm)
{
        uint64_t n = 0;
        size_t bytes = bm->map_len - BR_BM_HDR_SIZE;
        for (size_t i = 0; i < bytes; i += 8) {
                uint64_t w;
                memcpy(&w, bm->bits + i, 8);
                n += (uint64_t)__builtin_popcountll(w);
        }
        return n;
}

int br_bitmap_sync(struct br_bitmap *bm)
{
        /* MS_SYNC writes the dirty pages back and waits, like fdatasync. */
        return msync(bm->map, bm->map_len, MS_SYNC) < 0 ? -errno : 0;
}

int br_bitmap_clear(struct br_bitmap *bm)
{
        memset(bm->bits, 0, bm->map_len - BR_BM_HDR_SIZE);
        return br_bitmap_sync(bm);
}
