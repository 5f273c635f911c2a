/* bitmap: the persistent dirty-block bitmap (bitmap.h, format in format.h).
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

#include "bitmap.h"
#include "blockrepl.h"
#include "format.h"
#include "image.h"
#include "log.h"
#include "msgid.h"
#include "util.h"

struct br_bitmap {
        int fd;
        uint8_t *map;    /* the whole file, MAP_SHARED */
        size_t map_len;
        uint8_t *bits;   /* map + BR_BM_HDR_SIZE */
        size_t nbytes;   /* of bits, padding included */
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

/* The v2 header fields (the rest of the page is left as it is). */
static void header_encode(uint8_t *h, uint64_t image_size, uint64_t lineage)
{
        memcpy(h, BR_BM_MAGIC, 8);
        br_put_le32(h + 8, BR_BM_VERSION);
        br_put_le32(h + 12, BR_BM_HDR_SIZE);
        br_put_le64(h + 16, image_size);
        br_put_le32(h + 24, BR_BLOCK_SIZE);
        br_put_le32(h + 28, 0);
        br_put_le64(h + 32, nbits_for(image_size));
        br_put_le64(h + 40, lineage);
        br_put_le64(h + 48, XXH64(h, 48, 0));
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
        /* The checksum sits after the fields, so its place depends on the
         * version; a version that matches neither place is damage. */
        bool v2_sum = br_get_le64(h + 48) == XXH64(h, 48, 0);
        bool v1_sum = br_get_le64(h + 40) == XXH64(h, 40, 0);
        if (!v2_sum && !v1_sum) {
                snprintf(err, errlen, "bitmap %s: header checksum mismatch (corrupt file)", path);
                return -EINVAL;
        }
        uint32_t version = br_get_le32(h + 8);
        if (!((version == BR_BM_VERSION && v2_sum) || (version == BR_BM_VERSION_1 && v1_sum)) ||
            br_get_le32(h + 12) != BR_BM_HDR_SIZE) {
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
        memset(h, 0, sizeof(h));
        header_encode(h, image_size, 0);
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

/* v1 had no lineage: in LOG mode it did not mark blocks before writing
 * them, so its history is unknown (lineage 0, a full resync next time).
 * The fields live in the first 56 bytes, one sector: the header is
 * rewritten in place with one pwrite; a torn one fails its checksum and
 * the file is refused on the next open, never misread. */
static int upgrade_v1(int fd, uint8_t *h, uint64_t image_size, const char *path, char *err,
                      size_t errlen)
{
        header_encode(h, image_size, 0);
        int r = pwrite_full(fd, h, BR_BM_HDR_USED, 0);
        if (r == 0 && fdatasync(fd) < 0)
                r = -errno;
        if (r < 0) {
                snprintf(err, errlen, "bitmap %s: cannot upgrade to version %u: %s", path,
                         BR_BM_VERSION, strerror(-r));
                return r;
        }
        log_msg(LOG_LVL_NOTICE, MSG_BR_BITMAP_UPGRADED, NULL, -1,
                "bitmap %s upgraded from version 1 to %u: lineage unknown, the next resync "
                "of this disk is a full one", path, BR_BM_VERSION);
        return 0;
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
        if (br_get_le32(h + 8) == BR_BM_VERSION_1) {
                r = upgrade_v1(fd, h, image_size, path, err, errlen);
                if (r < 0)
                        goto out;
        }
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
        bm->nbytes = bm->map_len - BR_BM_HDR_SIZE;
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
        for (size_t i = 0; i < bm->nbytes; i += 8) {
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

uint64_t br_bitmap_lineage(const struct br_bitmap *bm)
{
        return br_get_le64(bm->map + 40);
}

int br_bitmap_set_lineage(struct br_bitmap *bm, uint64_t lineage)
{
        header_encode(bm->map, br_get_le64(bm->map + 16), lineage);
        return br_bitmap_sync(bm);
}

const uint8_t *br_bitmap_bits(const struct br_bitmap *bm, size_t *ret_len)
{
        *ret_len = bm->nbytes;
        return bm->bits;
}

/* The bits of byte i that stand for blocks (the padding after nbits is 0). */
static uint8_t valid_mask(const struct br_bitmap *bm, size_t i)
{
        if ((uint64_t)i * 8 + 8 <= bm->nbits)
                return 0xff;
        if ((uint64_t)i * 8 >= bm->nbits)
                return 0;
        return (uint8_t)((1u << (bm->nbits - (uint64_t)i * 8)) - 1);
}

int br_bitmap_merge(struct br_bitmap *bm, const uint8_t *bits, size_t len)
{
        if (!bits || len != bm->nbytes)
                return -EINVAL;
        for (size_t i = 0; i < len; i++) {
                uint8_t v = bits[i] & valid_mask(bm, i);
                if (v)
                        __atomic_fetch_or(&bm->bits[i], v, __ATOMIC_RELAXED);
        }
        return br_bitmap_sync(bm);
}

int br_bitmap_clear_except(struct br_bitmap *bm, const uint8_t *keep, size_t len)
{
        if (!keep || len != bm->nbytes)
                return -EINVAL;
        for (size_t i = 0; i < len; i++)
                if (__atomic_load_n(&bm->bits[i], __ATOMIC_RELAXED) & ~keep[i])
                        __atomic_fetch_and(&bm->bits[i], keep[i], __ATOMIC_RELAXED);
        return 0;
}

int br_bitmap_clear_all(struct br_bitmap *bm)
{
        for (size_t i = 0; i < bm->nbytes; i++)
                __atomic_store_n(&bm->bits[i], 0, __ATOMIC_RELAXED);
        return br_bitmap_sync(bm);
}

int br_resync_set(uint64_t owner_lineage, const uint8_t *owner_bits,
                  uint64_t rejoiner_lineage, const uint8_t *rejoiner_bits, size_t nbytes,
                  uint8_t *ret_set, uint64_t *ret_blocks)
{
        if (!owner_bits || !rejoiner_bits || !ret_set || !ret_blocks)
                return -EINVAL;
        /* see bitmap.h: only one common history makes the union complete */
        if (owner_lineage == 0 || rejoiner_lineage == 0 || owner_lineage != rejoiner_lineage)
                return -ESTALE;
        uint64_t n = 0;
        for (size_t i = 0; i < nbytes; i++) {
                ret_set[i] = owner_bits[i] | rejoiner_bits[i];
                n += (uint64_t)__builtin_popcount(ret_set[i]);
        }
        *ret_blocks = n;
        return 0;
}
