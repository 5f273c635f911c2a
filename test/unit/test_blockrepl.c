/* blockrepl: the standby's stage (memory and journal, order, refusals,
 * errors), the persistent bitmap (persistence, refusals, lineage, merge, the
 * v1 upgrade, the resync set), and the server driven through its NBD socket
 * by a small client here: epoch barrier and log order, the hard limit, the
 * sync map, modes, protocol errors, and the activity log (LOG-mode marks,
 * lazy clearing, its cancel, resync_committed) with fdatasync wrapped. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>
#include <xxhash.h>

#include "bitmap.h"
#include "blockrepl.h"
#include "format.h"
#include "nbd.h"
#include "stage.h"
#include "util.h"

#define BS BR_BLOCK_SIZE
#define IMG_SIZE (4u << 20)

struct fx {
        char dir[64];
        char img[128], jr[128], bm[128], sock[128];
        int img_fd;
};

static int setup(void **state)
{
        struct fx *f = calloc(1, sizeof(*f));
        strcpy(f->dir, "/tmp/havms-br-XXXXXX");
        if (!mkdtemp(f->dir))
                return -1;
        snprintf(f->img, sizeof(f->img), "%s/img", f->dir);
        snprintf(f->jr, sizeof(f->jr), "%s/journal", f->dir);
        snprintf(f->bm, sizeof(f->bm), "%s/bitmap", f->dir);
        snprintf(f->sock, sizeof(f->sock), "%s/nbd.sock", f->dir);
        f->img_fd = open(f->img, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (f->img_fd < 0 || ftruncate(f->img_fd, IMG_SIZE) < 0)
                return -1;
        *state = f;
        return 0;
}

static int teardown(void **state)
{
        struct fx *f = *state;
        char cmd[128];
        close(f->img_fd);
        snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
        if (system(cmd) != 0)
                return -1;
        free(f);
        return 0;
}

static void fill(int fd, uint8_t v, uint64_t off, size_t len)
{
        uint8_t *b = malloc(len);
        memset(b, v, len);
        assert_int_equal(pwrite(fd, b, len, (off_t)off), (ssize_t)len);
        free(b);
}

/* all bytes of [off, off+len) in the image are v */
static bool image_is(int fd, uint8_t v, uint64_t off, size_t len)
{
        uint8_t *b = malloc(len);
        bool ok = pread(fd, b, len, (off_t)off) == (ssize_t)len;
        for (size_t i = 0; ok && i < len; i++)
                ok = b[i] == v;
        free(b);
        return ok;
}

static off_t file_size(const char *path)
{
        struct stat st;
        return stat(path, &st) == 0 ? st.st_size : -1;
}

/* ---- stage ------------------------------------------------------------- */

static void add_pattern(struct br_stage *s, uint8_t v, uint64_t off, uint32_t len)
{
        uint8_t *b = malloc(len);
        memset(b, v, len);
        assert_int_equal(br_stage_add(s, BR_OP_WRITE, off, len, b, IMG_SIZE), 0);
        free(b);
}

/* Same range written twice, then zero and trim: the last one wins. */
static void stage_scenario(struct fx *f, struct br_stage *s)
{
        add_pattern(s, 'A', 0, 8192);
        add_pattern(s, 'B', 4096, 8192);
        add_pattern(s, 'C', 4096, 4096);
        assert_int_equal(br_stage_add(s, BR_OP_ZERO, 65536, 4096, NULL, IMG_SIZE), 0);
        assert_int_equal(br_stage_add(s, BR_OP_TRIM, 131072, 8192, NULL, IMG_SIZE), 0);
        add_pattern(s, 'D', 135168, 512);
}

static void stage_check(struct fx *f)
{
        assert_true(image_is(f->img_fd, 'A', 0, 4096));
        assert_true(image_is(f->img_fd, 'C', 4096, 4096));
        assert_true(image_is(f->img_fd, 'B', 8192, 4096));
        assert_true(image_is(f->img_fd, 0xff, 12288, 4096));
        assert_true(image_is(f->img_fd, 0, 65536, 4096));
        assert_true(image_is(f->img_fd, 0xff, 65536 + 4096, 4096));
        assert_true(image_is(f->img_fd, 0, 131072, 4096));
        assert_true(image_is(f->img_fd, 'D', 135168, 512));
        assert_true(image_is(f->img_fd, 0, 135168 + 512, 4096 - 512));
}

static void test_stage_memory(void **state)
{
        struct fx *f = *state;
        struct br_stage *s;
        fill(f->img_fd, 0xff, 0, 256 * 1024);
        assert_int_equal(br_stage_new(f->jr, 1u << 20, &s), 0);
        stage_scenario(f, s);
        assert_int_equal(br_stage_bytes(s), 8192 + 8192 + 4096 + 512);
        assert_int_equal(br_stage_spilled(s), 0);
        assert_int_equal(file_size(f->jr), -1); /* never needed */
        assert_true(image_is(f->img_fd, 0xff, 0, 256 * 1024)); /* nothing before apply */
        assert_int_equal(br_stage_apply(s, f->img_fd), 0);
        stage_check(f);
        assert_int_equal(br_stage_bytes(s), 0);
        /* empty: applying again changes nothing, and needs no fdatasync */
        assert_int_equal(br_stage_apply(s, f->img_fd), 0);
        assert_int_equal(br_stage_sync_ns(s), 0);
        br_stage_free(s);
}

static void test_stage_journal(void **state)
{
        struct fx *f = *state;
        struct br_stage *s;
        fill(f->img_fd, 0xff, 0, 256 * 1024);
        /* room for the first record only: the rest goes to the journal */
        assert_int_equal(br_stage_new(f->jr, 9000, &s), 0);
        stage_scenario(f, s);
        assert_int_equal(br_stage_spilled(s), 8192 + 4096 + 512);
        assert_true(file_size(f->jr) > 8192 + 4096 + 512);
        assert_int_equal(br_stage_apply(s, f->img_fd), 0);
        stage_check(f);
        assert_int_equal(file_size(f->jr), 0);
        assert_int_equal(br_stage_spilled(s), 0);
        /* a stage used again after apply keeps working, memory first */
        add_pattern(s, 'E', 0, 4096);
        assert_int_equal(br_stage_spilled(s), 0);
        assert_int_equal(br_stage_apply(s, f->img_fd), 0);
        assert_true(image_is(f->img_fd, 'E', 0, 4096));
        br_stage_free(s);
        assert_int_equal(file_size(f->jr), -1); /* unlinked */
}

static void test_stage_all_spilled(void **state)
{
        struct fx *f = *state;
        struct br_stage *s;
        assert_int_equal(br_stage_new(f->jr, 0, &s), 0);
        for (int i = 0; i < 50; i++)
                add_pattern(s, (uint8_t)i, 4096, 4096); /* same range 50 times */
        assert_int_equal(br_stage_spilled(s), 50 * 4096);
        assert_int_equal(br_stage_apply(s, f->img_fd), 0);
        assert_true(image_is(f->img_fd, 49, 4096, 4096));
        br_stage_free(s);
}

static void test_stage_discard(void **state)
{
        struct fx *f = *state;
        struct br_stage *s;
        fill(f->img_fd, 0xff, 0, 256 * 1024);
        assert_int_equal(br_stage_new(f->jr, 9000, &s), 0);
        stage_scenario(f, s);
        assert_true(br_stage_spilled(s) > 0);
        br_stage_discard(s);
        assert_int_equal(br_stage_bytes(s), 0);
        assert_int_equal(br_stage_spilled(s), 0);
        assert_int_equal(file_size(f->jr), 0);
        assert_int_equal(br_stage_apply(s, f->img_fd), 0);
        assert_true(image_is(f->img_fd, 0xff, 0, 256 * 1024)); /* the image never saw it */
        br_stage_free(s);
        br_stage_free(NULL);
}

static void test_stage_refused(void **state)
{
        struct fx *f = *state;
        struct br_stage *s;
        uint8_t b[4096] = { 0 };
        assert_int_equal(br_stage_new(f->jr, 1u << 20, &s), 0);
        assert_int_equal(br_stage_add(s, BR_OP_WRITE, IMG_SIZE - 100, 4096, b, IMG_SIZE), -EINVAL);
        assert_int_equal(br_stage_add(s, BR_OP_ZERO, IMG_SIZE + 1, 0, NULL, IMG_SIZE), -EINVAL);
        assert_int_equal(br_stage_add(s, BR_OP_TRIM, UINT64_MAX - 10, 100, NULL, IMG_SIZE), -EINVAL);
        assert_int_equal(br_stage_add(s, 9, 0, 100, NULL, IMG_SIZE), -EINVAL);
        assert_int_equal(br_stage_add(s, BR_OP_WRITE, 0, 100, NULL, IMG_SIZE), -EINVAL);
        assert_int_equal(br_stage_add(s, BR_OP_WRITE, IMG_SIZE - 4096, 4096, b, IMG_SIZE), 0);
        assert_int_equal(br_stage_bytes(s), 4096);
        br_stage_free(s);
}

static void test_stage_apply_error_keeps(void **state)
{
        struct fx *f = *state;
        struct br_stage *s;
        fill(f->img_fd, 0xff, 0, 256 * 1024);
        assert_int_equal(br_stage_new(f->jr, 9000, &s), 0);
        stage_scenario(f, s);
        uint64_t bytes = br_stage_bytes(s), spilled = br_stage_spilled(s);
        int ro = open(f->img, O_RDONLY | O_CLOEXEC);
        assert_true(ro >= 0);
        assert_int_equal(br_stage_apply(s, ro), -EBADF);
        close(ro);
        assert_int_equal(br_stage_bytes(s), bytes);
        assert_int_equal(br_stage_spilled(s), spilled);
        assert_int_equal(br_stage_apply(s, f->img_fd), 0); /* retried: all of it */
        stage_check(f);
        br_stage_free(s);
}

static void test_stage_journal_corrupt(void **state)
{
        struct fx *f = *state;
        struct br_stage *s;
        fill(f->img_fd, 0xff, 0, 256 * 1024);
        assert_int_equal(br_stage_new(f->jr, 9000, &s), 0);
        stage_scenario(f, s);
        int jfd = open(f->jr, O_RDWR | O_CLOEXEC);
        off_t len = file_size(f->jr);
        for (off_t at = 0; at < len; at += 997) {
                uint8_t c;
                assert_int_equal(pread(jfd, &c, 1, at), 1);
                c ^= 0x40;
                assert_int_equal(pwrite(jfd, &c, 1, at), 1);
                assert_int_equal(br_stage_apply(s, f->img_fd), -EBADMSG);
                /* found before anything was applied, memory records included */
                assert_true(image_is(f->img_fd, 0xff, 0, 256 * 1024));
                c ^= 0x40;
                assert_int_equal(pwrite(jfd, &c, 1, at), 1);
        }
        close(jfd);
        assert_int_equal(br_stage_apply(s, f->img_fd), 0);
        stage_check(f);
        br_stage_free(s);
}

/* ---- bitmap ------------------------------------------------------------ */

static void test_bitmap_persist(void **state)
{
        struct fx *f = *state;
        struct br_bitmap *bm;
        char err[256];
        uint64_t size = 10 * BS + 512; /* 11 blocks, the last one partial */
        assert_int_equal(br_bitmap_open(f->bm, size, &bm, err, sizeof(err)), 0);
        assert_int_equal(br_bitmap_count(bm), 0);
        br_bitmap_set_range(bm, 100, 1);
        br_bitmap_set_range(bm, 3 * BS - 1, 2);  /* touches blocks 2 and 3 */
        br_bitmap_set_range(bm, 10 * BS, 512);   /* the partial block */
        br_bitmap_set_range(bm, 5 * BS, 0);      /* nothing */
        assert_int_equal(br_bitmap_count(bm), 4);
        br_bitmap_close(bm);

        assert_int_equal(br_bitmap_open(f->bm, size, &bm, err, sizeof(err)), 0);
        assert_int_equal(br_bitmap_count(bm), 4);
        assert_true(br_bitmap_test(bm, 0));
        assert_false(br_bitmap_test(bm, 1));
        assert_true(br_bitmap_test(bm, 2));
        assert_true(br_bitmap_test(bm, 3));
        assert_false(br_bitmap_test(bm, 4));
        assert_true(br_bitmap_test(bm, 10));
        assert_false(br_bitmap_test(bm, 11)); /* past the end */
        /* busy: a second opener is refused while this one holds it */
        struct br_bitmap *other;
        assert_int_equal(br_bitmap_open(f->bm, size, &other, err, sizeof(err)), -EBUSY);
        assert_int_equal(br_bitmap_clear_all(bm), 0);
        assert_int_equal(br_bitmap_count(bm), 0);
        br_bitmap_close(bm);
        assert_int_equal(br_bitmap_open(f->bm, size, &bm, err, sizeof(err)), 0);
        assert_int_equal(br_bitmap_count(bm), 0);
        br_bitmap_close(bm);
        br_bitmap_close(NULL);
}

static void test_bitmap_refused(void **state)
{
        struct fx *f = *state;
        struct br_bitmap *bm;
        char err[512];
        assert_int_equal(br_bitmap_open(f->bm, IMG_SIZE, &bm, err, sizeof(err)), 0);
        br_bitmap_set_range(bm, 0, 1);
        br_bitmap_close(bm);

        /* another image size: refused, file left as it was */
        assert_int_equal(br_bitmap_open(f->bm, IMG_SIZE * 2, &bm, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "made for an image of 4194304 bytes"));

        int fd = open(f->bm, O_RDWR | O_CLOEXEC);
        uint8_t c;
        /* each header field flipped in turn: checksum catches it */
        for (off_t at = 8; at < 56; at += 4) {
                assert_int_equal(pread(fd, &c, 1, at), 1);
                c ^= 1;
                assert_int_equal(pwrite(fd, &c, 1, at), 1);
                assert_int_equal(br_bitmap_open(f->bm, IMG_SIZE, &bm, err, sizeof(err)), -EINVAL);
                assert_non_null(strstr(err, "checksum"));
                c ^= 1;
                assert_int_equal(pwrite(fd, &c, 1, at), 1);
        }
        /* bad magic */
        assert_int_equal(pwrite(fd, "X", 1, 0), 1);
        assert_int_equal(br_bitmap_open(f->bm, IMG_SIZE, &bm, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "not a havms bitmap"));
        assert_int_equal(pwrite(fd, "H", 1, 0), 1);
        /* truncated */
        off_t len = file_size(f->bm);
        assert_int_equal(ftruncate(fd, len - 1), 0);
        assert_int_equal(br_bitmap_open(f->bm, IMG_SIZE, &bm, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "truncated"));
        assert_int_equal(ftruncate(fd, len), 0);
        /* restored: opens, the bit is still there */
        assert_int_equal(br_bitmap_open(f->bm, IMG_SIZE, &bm, err, sizeof(err)), 0);
        assert_true(br_bitmap_test(bm, 0));
        br_bitmap_close(bm);
        /* empty file */
        assert_int_equal(ftruncate(fd, 0), 0);
        assert_int_equal(br_bitmap_open(f->bm, IMG_SIZE, &bm, err, sizeof(err)), -EINVAL);
        close(fd);
}

static void test_bitmap_lineage_merge(void **state)
{
        struct fx *f = *state;
        struct br_bitmap *bm;
        char err[512];
        uint64_t size = 10 * BS + 512; /* 11 blocks: 2 bytes of bits, padded to 8 */
        assert_int_equal(br_bitmap_open(f->bm, size, &bm, err, sizeof(err)), 0);
        assert_int_equal(br_bitmap_lineage(bm), 0); /* new: history unknown */
        assert_int_equal(br_bitmap_set_lineage(bm, 0x1122334455667788ull), 0);
        size_t len;
        const uint8_t *bits = br_bitmap_bits(bm, &len);
        assert_int_equal(len, 8);
        /* merge: ORed in, padding bits past block 10 ignored */
        uint8_t other[8] = { 0x05, 0xff, 0xff };
        assert_int_equal(br_bitmap_merge(bm, other, 7), -EINVAL);
        br_bitmap_set_range(bm, BS, 1);
        assert_int_equal(br_bitmap_merge(bm, other, 8), 0);
        assert_int_equal(bits[0], 0x07);
        assert_int_equal(bits[1], 0x07);
        assert_int_equal(bits[2], 0);
        assert_int_equal(br_bitmap_count(bm), 3 + 3);
        br_bitmap_close(bm);
        /* both durable: another open sees them, and the file says so */
        int fd = open(f->bm, O_RDONLY | O_CLOEXEC);
        uint8_t h[56];
        assert_int_equal(pread(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
        assert_int_equal(br_get_le32(h + 8), 2);
        assert_true(br_get_le64(h + 40) == 0x1122334455667788ull);
        close(fd);
        assert_int_equal(br_bitmap_open(f->bm, size, &bm, err, sizeof(err)), 0);
        assert_true(br_bitmap_lineage(bm) == 0x1122334455667788ull);
        assert_int_equal(br_bitmap_count(bm), 6);
        assert_int_equal(br_bitmap_clear_all(bm), 0);
        assert_true(br_bitmap_lineage(bm) == 0x1122334455667788ull); /* bits only */
        br_bitmap_close(bm);
}

/* A version-1 file (no lineage, checksum at 40) made by hand. */
static void write_v1(const char *path, uint64_t image_size, const uint8_t *bits, size_t n)
{
        uint8_t h[BR_BM_HDR_SIZE] = { 0 };
        uint64_t nbits = (image_size + BS - 1) / BS;
        memcpy(h, BR_BM_MAGIC, 8);
        br_put_le32(h + 8, 1);
        br_put_le32(h + 12, BR_BM_HDR_SIZE);
        br_put_le64(h + 16, image_size);
        br_put_le32(h + 24, BS);
        br_put_le64(h + 32, nbits);
        br_put_le64(h + 40, XXH64(h, 40, 0));
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        assert_int_equal(pwrite(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
        assert_int_equal(ftruncate(fd, BR_BM_HDR_SIZE + ((nbits + 7) / 8 + 7) / 8 * 8), 0);
        assert_int_equal(pwrite(fd, bits, n, BR_BM_HDR_SIZE), (ssize_t)n);
        close(fd);
}

static void test_bitmap_v1_upgrade(void **state)
{
        struct fx *f = *state;
        struct br_bitmap *bm;
        char err[512];
        uint8_t bits[2] = { 0x81, 0x02 }; /* blocks 0, 7, 9 */
        write_v1(f->bm, IMG_SIZE, bits, sizeof(bits));
        off_t len = file_size(f->bm);
        assert_int_equal(br_bitmap_open(f->bm, IMG_SIZE, &bm, err, sizeof(err)), 0);
        assert_int_equal(br_bitmap_lineage(bm), 0);
        assert_int_equal(br_bitmap_count(bm), 3);
        assert_true(br_bitmap_test(bm, 9));
        br_bitmap_close(bm);
        /* upgraded in place: version 2, same length, bits kept, opens again */
        assert_int_equal(file_size(f->bm), len);
        int fd = open(f->bm, O_RDWR | O_CLOEXEC);
        uint8_t h[56];
        assert_int_equal(pread(fd, h, sizeof(h), 0), (ssize_t)sizeof(h));
        assert_int_equal(br_get_le32(h + 8), 2);
        assert_true(br_get_le64(h + 48) == XXH64(h, 48, 0));
        close(fd);
        assert_int_equal(br_bitmap_open(f->bm, IMG_SIZE, &bm, err, sizeof(err)), 0);
        assert_int_equal(br_bitmap_count(bm), 3);
        br_bitmap_close(bm);
        /* a v1 file for another image size is refused like any other */
        write_v1(f->bm, IMG_SIZE, bits, sizeof(bits));
        assert_int_equal(br_bitmap_open(f->bm, IMG_SIZE * 2, &bm, err, sizeof(err)), -EINVAL);
        /* a damaged v1 header too (its checksum) */
        fd = open(f->bm, O_RDWR | O_CLOEXEC);
        assert_int_equal(pwrite(fd, "\x09", 1, 32), 1);
        close(fd);
        assert_int_equal(br_bitmap_open(f->bm, IMG_SIZE, &bm, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "checksum"));
}

static void test_resync_set(void **state)
{
        (void)state;
        uint8_t owner[8] = { 0x01, 0x00, 0x80 }, rejoiner[8] = { 0x03, 0x10 }, set[8];
        uint64_t n = 99;
        memset(set, 0xee, sizeof(set));
        /* one history: the union */
        assert_int_equal(br_resync_set(7, owner, 7, rejoiner, 8, set, &n), 0);
        assert_int_equal(set[0], 0x03);
        assert_int_equal(set[1], 0x10);
        assert_int_equal(set[2], 0x80);
        assert_int_equal(set[3], 0);
        assert_int_equal(n, 4);
        /* unknown or different histories: full resync, outputs untouched */
        memset(set, 0xee, sizeof(set));
        n = 99;
        assert_int_equal(br_resync_set(0, owner, 0, rejoiner, 8, set, &n), -ESTALE);
        assert_int_equal(br_resync_set(7, owner, 0, rejoiner, 8, set, &n), -ESTALE);
        assert_int_equal(br_resync_set(0, owner, 7, rejoiner, 8, set, &n), -ESTALE);
        assert_int_equal(br_resync_set(7, owner, 8, rejoiner, 8, set, &n), -ESTALE);
        assert_int_equal(set[0], 0xee);
        assert_int_equal(n, 99);
        assert_int_equal(br_resync_set(7, NULL, 7, rejoiner, 8, set, &n), -EINVAL);
}

/* ---- a small NBD client ------------------------------------------------ */

static void be32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (24 - 8 * i)); }
static void be64(uint8_t *p, uint64_t v) { be32(p, (uint32_t)(v >> 32)); be32(p + 4, (uint32_t)v); }
static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) << 32 | rd32(p + 4); }

static uint64_t deadline(void) { return now_ns() + 10ull * 1000000000u; }

static int nbd_connect(const char *path)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        strcpy(sa.sun_path, path);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        uint8_t g[18];
        assert_int_equal(read_full(fd, g, 18, deadline()), 0);
        assert_true(rd64(g) == NBD_MAGIC);
        uint8_t o[4 + 16 + 6] = { 0 };
        be32(o, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
        be64(o + 4, NBD_IHAVEOPT);
        be32(o + 12, NBD_OPT_GO);
        be32(o + 16, 6); /* name "" and no info requests */
        assert_int_equal(write_full(fd, o, sizeof(o), deadline()), 0);
        for (;;) {
                uint8_t h[20], d[64];
                assert_int_equal(read_full(fd, h, 20, deadline()), 0);
                uint32_t type = rd32(h + 12), len = rd32(h + 16);
                assert_true(len <= sizeof(d));
                assert_int_equal(read_full(fd, d, len, deadline()), 0);
                if (type == NBD_REP_ACK)
                        break;
                assert_int_equal(type, NBD_REP_INFO);
        }
        return fd;
}

static void nbd_send(int fd, uint16_t type, uint16_t flags, uint64_t off, uint32_t len,
                     const void *data, uint64_t handle)
{
        uint8_t q[NBD_REQUEST_SIZE];
        be32(q, NBD_REQUEST_MAGIC);
        q[4] = (uint8_t)(flags >> 8);
        q[5] = (uint8_t)flags;
        q[6] = (uint8_t)(type >> 8);
        q[7] = (uint8_t)type;
        be64(q + 8, handle);
        be64(q + 16, off);
        be32(q + 24, len);
        assert_int_equal(write_full(fd, q, sizeof(q), deadline()), 0);
        if (data)
                assert_int_equal(write_full(fd, data, len, deadline()), 0);
}

/* Reads a simple reply (and rlen data bytes if it says OK); returns its error. */
static uint32_t nbd_recv(int fd, void *rdata, uint32_t rlen, uint64_t handle)
{
        uint8_t r[NBD_REPLY_SIZE];
        assert_int_equal(read_full(fd, r, sizeof(r), deadline()), 0);
        assert_true(rd32(r) == NBD_SIMPLE_REPLY_MAGIC);
        assert_true(rd64(r + 8) == handle);
        uint32_t err = rd32(r + 4);
        if (err == 0 && rlen)
                assert_int_equal(read_full(fd, rdata, rlen, deadline()), 0);
        return err;
}

static uint32_t nbd_cmd(int fd, uint16_t type, uint16_t flags, uint64_t off, uint32_t len,
                        const void *wdata, void *rdata)
{
        nbd_send(fd, type, flags, off, len, wdata, 7);
        return nbd_recv(fd, rdata, type == NBD_CMD_READ ? len : 0, 7);
}

static uint32_t nbd_write_pattern(int fd, uint8_t v, uint64_t off, uint32_t len)
{
        uint8_t *b = malloc(len);
        memset(b, v, len);
        uint32_t e = nbd_cmd(fd, NBD_CMD_WRITE, 0, off, len, b, NULL);
        free(b);
        return e;
}

static struct blockrepl *br_start(struct fx *f, uint64_t soft, uint64_t hard, bool ro,
                                  const char *bitmap)
{
        struct blockrepl_options o = { .name = "test/disk0", .image = f->img,
                                       .socket_path = f->sock, .bitmap_path = bitmap,
                                       .log_soft_bytes = soft, .log_hard_bytes = hard,
                                       .read_only = ro };
        struct blockrepl *b;
        char err[256];
        int r = blockrepl_open(&o, &b, err, sizeof(err));
        if (r < 0)
                fail_msg("blockrepl_open: %s", err);
        return b;
}

static const struct br_rec *nth(const struct br_log *log, uint64_t n)
{
        const struct br_rec *r = log->head;
        while (r && n--)
                r = r->next;
        assert_non_null(r);
        return r;
}

/* ---- server ----------------------------------------------------------- */

static void test_br_barrier(void **state)
{
        struct fx *f = *state;
        struct blockrepl *b = br_start(f, 0, 0, false, NULL);
        struct br_log log;
        assert_int_equal(blockrepl_size(b), IMG_SIZE);
        assert_int_equal(blockrepl_barrier(b, &log), -EINVAL); /* not in LOG mode */
        blockrepl_set_mode(b, BR_MODE_LOG);
        assert_int_equal(blockrepl_get_mode(b), BR_MODE_LOG);
        int c = nbd_connect(f->sock);

        assert_int_equal(nbd_write_pattern(c, 'A', 0, 4096), 0);
        assert_int_equal(nbd_write_pattern(c, 'B', BS, 512), 0);
        assert_int_equal(nbd_cmd(c, NBD_CMD_WRITE_ZEROES, 0, 2 * BS, 8192, NULL, NULL), 0);
        assert_int_equal(nbd_cmd(c, NBD_CMD_TRIM, NBD_CMD_FLAG_FUA, 3 * BS, 4096, NULL, NULL), 0);
        assert_int_equal(nbd_cmd(c, NBD_CMD_FLUSH, 0, 0, 0, NULL, NULL), 0);
        assert_int_equal(blockrepl_barrier(b, &log), 0);
        assert_int_equal(log.n_recs, 4);
        assert_int_equal(log.data_bytes, 4096 + 512);
        assert_int_equal(nth(&log, 0)->op, BR_OP_WRITE);
        assert_int_equal(nth(&log, 0)->offset, 0);
        assert_int_equal(nth(&log, 0)->len, 4096);
        assert_int_equal(nth(&log, 0)->data[4095], 'A');
        assert_int_equal(nth(&log, 1)->offset, BS);
        assert_int_equal(nth(&log, 1)->data[0], 'B');
        assert_int_equal(nth(&log, 2)->op, BR_OP_ZERO);
        assert_int_equal(nth(&log, 2)->len, 8192);
        assert_int_equal(nth(&log, 3)->op, BR_OP_TRIM);
        assert_ptr_equal(log.tail, nth(&log, 3));
        br_log_free(&log);

        assert_int_equal(nbd_write_pattern(c, 'C', 100, 10), 0);
        assert_int_equal(blockrepl_barrier(b, &log), 0);
        assert_int_equal(log.n_recs, 1);
        assert_int_equal(nth(&log, 0)->data[0], 'C');
        br_log_free(&log);
        assert_int_equal(blockrepl_barrier(b, &log), 0);
        assert_int_equal(log.n_recs, 0);
        assert_null(log.head);
        br_log_free(&log);
        br_log_free(NULL);

        assert_true(image_is(f->img_fd, 'A', 0, 100));
        assert_true(image_is(f->img_fd, 'C', 100, 10));
        struct blockrepl_stats st;
        blockrepl_get_stats(b, &st);
        assert_int_equal(st.writes, 3);
        assert_int_equal(st.zeroes, 1);
        assert_int_equal(st.trims, 1);
        assert_int_equal(st.flushes, 1);
        assert_int_equal(st.bytes_written, 4096 + 512 + 10);
        assert_int_equal(st.clients, 1);
        close(c);
        blockrepl_close(b);
        assert_int_equal(file_size(f->sock), -1); /* socket removed */
}

static bool fd_readable(int fd)
{
        uint64_t x;
        return read(fd, &x, sizeof(x)) == sizeof(x);
}

/* Streaming (docs/output-commit.md): log_since hands out exactly the
 * records not yet handed out, the barrier still hands out the whole log,
 * and stream_fd fires per stream_bytes of log. */
static void test_br_log_since(void **state)
{
        struct fx *f = *state;
        struct blockrepl_options o = { .name = "test/disk0", .image = f->img,
                                       .socket_path = f->sock, .stream_bytes = 8192 };
        struct blockrepl *b;
        char err[256];
        if (blockrepl_open(&o, &b, err, sizeof(err)) < 0)
                fail_msg("blockrepl_open: %s", err);
        const struct br_rec *first, *last;
        assert_int_equal(blockrepl_log_since(b, NULL, &first, &last), -EINVAL); /* not LOG */
        blockrepl_set_mode(b, BR_MODE_LOG);
        int c = nbd_connect(f->sock);
        assert_int_equal(blockrepl_log_since(b, NULL, &first, &last), 0);
        assert_null(first);
        assert_false(fd_readable(blockrepl_stream_fd(b)));

        assert_int_equal(nbd_write_pattern(c, 'A', 0, 4096), 0);
        assert_false(fd_readable(blockrepl_stream_fd(b))); /* < 8 KiB of log */
        assert_int_equal(nbd_write_pattern(c, 'B', BS, 8192), 0);
        assert_true(fd_readable(blockrepl_stream_fd(b)));
        assert_int_equal(blockrepl_log_since(b, NULL, &first, &last), 0);
        assert_non_null(first);
        assert_int_equal(first->data[0], 'A');
        assert_int_equal(last->data[0], 'B');
        assert_ptr_equal(first->next, last);
        const struct br_rec *sent = last;

        assert_int_equal(blockrepl_log_since(b, sent, &first, &last), 0);
        assert_null(first); /* nothing new */
        assert_int_equal(nbd_write_pattern(c, 'C', 2 * BS, 512), 0);
        assert_int_equal(blockrepl_log_since(b, sent, &first, &last), 0);
        assert_non_null(first);
        assert_ptr_equal(first, last);
        assert_int_equal(first->data[0], 'C');

        struct br_log log;
        assert_int_equal(blockrepl_barrier(b, &log), 0);
        assert_int_equal(log.n_recs, 3); /* streamed or not, all of the epoch */
        assert_ptr_equal(log.tail, last);
        /* a new log: the stream mark starts again */
        assert_int_equal(blockrepl_log_since(b, NULL, &first, &last), 0);
        assert_null(first);
        assert_int_equal(nbd_write_pattern(c, 'D', 0, 4096), 0);
        assert_false(fd_readable(blockrepl_stream_fd(b)));
        br_log_free(&log);
        close(c);
        blockrepl_close(b);
}

struct writer {
        const char *sock;
        uint8_t id;
        int n;
};

/* Writes 4 KiB at offset 0, n times: byte 0 = writer id, byte 1..2 = seq. */
static void *writer_main(void *arg)
{
        struct writer *w = arg;
        int c = nbd_connect(w->sock);
        uint8_t b[4096] = { 0 };
        for (int i = 0; i < w->n; i++) {
                b[0] = w->id;
                b[1] = (uint8_t)(i >> 8);
                b[2] = (uint8_t)i;
                if (nbd_cmd(c, NBD_CMD_WRITE, 0, 0, sizeof(b), b, NULL) != 0)
                        break;
        }
        close(c);
        return NULL;
}

/* Two clients racing on one block: the log's last record for it is what
 * the image holds, and each client's writes are in its own order. */
static void test_br_log_order(void **state)
{
        struct fx *f = *state;
        struct blockrepl *b = br_start(f, 0, 0, false, NULL);
        blockrepl_set_mode(b, BR_MODE_LOG);
        struct writer w[2] = { { f->sock, 1, 300 }, { f->sock, 2, 300 } };
        pthread_t t[2];
        for (int i = 0; i < 2; i++)
                assert_int_equal(pthread_create(&t[i], NULL, writer_main, &w[i]), 0);
        for (int i = 0; i < 2; i++)
                pthread_join(t[i], NULL);
        struct br_log log;
        assert_int_equal(blockrepl_barrier(b, &log), 0);
        assert_int_equal(log.n_recs, 600);
        int next[3] = { 0, 0, 0 };
        for (const struct br_rec *r = log.head; r; r = r->next) {
                int id = r->data[0], seq = r->data[1] << 8 | r->data[2];
                assert_true(id == 1 || id == 2);
                assert_int_equal(seq, next[id]);
                next[id]++;
        }
        uint8_t img[4096];
        assert_int_equal(pread(f->img_fd, img, sizeof(img), 0), 4096);
        assert_memory_equal(img, log.tail->data, 4096);
        br_log_free(&log);
        blockrepl_close(b);
}

struct pending {
        int fd;
        uint32_t err;
};

static void *pending_write(void *arg)
{
        struct pending *p = arg;
        p->err = nbd_write_pattern(p->fd, 'Z', 5 * BS, BS);
        return NULL;
}

static void test_br_hard_limit(void **state)
{
        struct fx *f = *state;
        uint64_t rec = sizeof(struct br_rec) + BS;
        struct blockrepl *b = br_start(f, rec + 1, 2 * rec, false, NULL);
        blockrepl_set_mode(b, BR_MODE_LOG);
        int c = nbd_connect(f->sock);
        int efd = blockrepl_log_fd(b);
        struct pollfd p = { .fd = efd, .events = POLLIN };

        assert_int_equal(nbd_write_pattern(c, 'X', 0, BS), 0);
        assert_int_equal(poll(&p, 1, 0), 0); /* at rec, soft is rec + 1 */
        assert_int_equal(nbd_write_pattern(c, 'Y', BS, BS), 0);
        assert_int_equal(poll(&p, 1, 0), 1); /* passed soft */
        uint64_t v;
        assert_int_equal(read(efd, &v, sizeof(v)), 8);
        assert_int_equal(v, 1);

        /* the log is at hard: the next writer waits for the barrier */
        struct pending pw = { .fd = c, .err = 99 };
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, pending_write, &pw), 0);
        struct pollfd rp = { .fd = c, .events = POLLIN };
        assert_int_equal(poll(&rp, 1, 300), 0); /* no reply */
        struct blockrepl_stats st;
        blockrepl_get_stats(b, &st);
        assert_int_equal(st.log_waits, 1);
        assert_true(image_is(f->img_fd, 0, 5 * BS, BS)); /* not written either */

        struct br_log log;
        assert_int_equal(blockrepl_barrier(b, &log), 0);
        pthread_join(t, NULL);
        assert_int_equal(pw.err, 0);
        assert_int_equal(log.n_recs, 2); /* the waiting write is not in this epoch */
        br_log_free(&log);
        assert_int_equal(blockrepl_barrier(b, &log), 0);
        assert_int_equal(log.n_recs, 1);
        assert_int_equal(nth(&log, 0)->data[0], 'Z');
        br_log_free(&log);
        assert_true(image_is(f->img_fd, 'Z', 5 * BS, BS));
        /* soft signalled once per epoch: nothing since the read */
        assert_int_equal(poll(&p, 1, 0), 0);

        /* a write bigger than hard on its own still goes into an empty log */
        assert_int_equal(nbd_write_pattern(c, 'W', 0, 3 * BS), 0);
        assert_int_equal(blockrepl_barrier(b, &log), 0);
        assert_int_equal(log.n_recs, 1);
        br_log_free(&log);

        /* leaving LOG releases a waiter too (and the bitmap would take the log) */
        assert_int_equal(nbd_write_pattern(c, 'X', 0, BS), 0);
        assert_int_equal(nbd_write_pattern(c, 'X', 0, BS), 0);
        assert_int_equal(pthread_create(&t, NULL, pending_write, &pw), 0);
        assert_int_equal(poll(&rp, 1, 200), 0);
        blockrepl_set_mode(b, BR_MODE_ALONE);
        pthread_join(t, NULL);
        assert_int_equal(pw.err, 0);

        /* the VM stops for the barrier: a held writer goes on at once */
        blockrepl_set_mode(b, BR_MODE_LOG);
        assert_int_equal(nbd_write_pattern(c, 'X', 0, BS), 0);
        assert_int_equal(nbd_write_pattern(c, 'X', 0, BS), 0);
        assert_int_equal(pthread_create(&t, NULL, pending_write, &pw), 0);
        assert_int_equal(poll(&rp, 1, 200), 0);
        blockrepl_lift_limit(b);
        pthread_join(t, NULL);
        assert_int_equal(pw.err, 0);
        assert_int_equal(blockrepl_barrier(b, &log), 0);
        assert_int_equal(log.n_recs, 3); /* it belongs to the epoch being cut */
        br_log_free(&log);

        /* no barrier comes (QEMU drains for a reset): after 1 s it goes on */
        assert_int_equal(nbd_write_pattern(c, 'X', 0, BS), 0);
        assert_int_equal(nbd_write_pattern(c, 'X', 0, BS), 0);
        blockrepl_get_stats(b, &st);
        uint64_t overruns = st.log_overruns;
        assert_int_equal(pthread_create(&t, NULL, pending_write, &pw), 0);
        assert_int_equal(poll(&rp, 1, 200), 0);
        pthread_join(t, NULL);
        assert_int_equal(pw.err, 0);
        blockrepl_get_stats(b, &st);
        assert_int_equal(st.log_overruns, overruns + 1);
        assert_int_equal(blockrepl_barrier(b, &log), 0);
        br_log_free(&log);

        /* close cuts a waiting writer: it is never acknowledged */
        assert_int_equal(nbd_write_pattern(c, 'X', 0, BS), 0);
        assert_int_equal(nbd_write_pattern(c, 'X', 0, BS), 0);
        nbd_send(c, NBD_CMD_WRITE, 0, 0, 16, "0123456789abcdef", 9);
        assert_int_equal(poll(&rp, 1, 200), 0);
        blockrepl_close(b);
        uint8_t reply[16];
        ssize_t n = read(c, reply, sizeof(reply));
        assert_true(n <= 0 || (n == 16 && (reply[4] | reply[5] | reply[6] | reply[7]) != 0));
        close(c);
}

static void test_br_sync_map(void **state)
{
        struct fx *f = *state;
        /* an image that ends inside a block and is not a multiple of 64 blocks */
        uint64_t size = 70 * BS + 4096;
        assert_int_equal(ftruncate(f->img_fd, (off_t)size), 0);
        struct blockrepl *b = br_start(f, 0, 0, false, f->bm);
        blockrepl_set_mode(b, BR_MODE_SYNC);
        assert_int_equal(blockrepl_sync_next_dirty(b, 0), -1);
        blockrepl_sync_mark_all(b);
        int64_t n = 0;
        for (int64_t i = blockrepl_sync_next_dirty(b, 0); i >= 0;
             i = blockrepl_sync_next_dirty(b, (uint64_t)i + 1)) {
                assert_int_equal(i, n);
                n++;
                blockrepl_sync_clear(b, (uint64_t)i); /* as the copier does before reading */
        }
        assert_int_equal(n, 71);
        assert_int_equal(blockrepl_sync_next_dirty(b, 0), -1);
        blockrepl_sync_clear(b, 1000); /* out of range: ignored */

        int c = nbd_connect(f->sock);
        assert_int_equal(nbd_write_pattern(c, 1, 3 * BS + 10, 100), 0);
        assert_int_equal(blockrepl_sync_next_dirty(b, 0), 3);
        assert_int_equal(blockrepl_sync_next_dirty(b, 4), -1);
        assert_int_equal(nbd_cmd(c, NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_NO_HOLE, 66 * BS - 1, 2,
                                 NULL, NULL), 0);
        assert_int_equal(blockrepl_sync_next_dirty(b, 4), 65);
        assert_int_equal(blockrepl_sync_next_dirty(b, 66), 66);
        assert_int_equal(nbd_cmd(c, NBD_CMD_TRIM, 0, 70 * BS, 4096, NULL, NULL), 0);
        assert_int_equal(blockrepl_sync_next_dirty(b, 67), 70);
        /* SYNC also marks the persistent bitmap */
        assert_int_equal(blockrepl_bitmap_count(b), 4);
        blockrepl_sync_clear(b, 3);
        assert_int_equal(blockrepl_sync_next_dirty(b, 0), 65);
        /* LOG: writes go to the log, not the sync map */
        blockrepl_set_mode(b, BR_MODE_LOG);
        assert_int_equal(nbd_write_pattern(c, 1, 10 * BS, 100), 0);
        assert_int_equal(blockrepl_sync_next_dirty(b, 67), 70);
        assert_int_equal(blockrepl_sync_next_dirty(b, 7), 65);
        close(c);
        blockrepl_close(b);
}

static void test_br_bitmap_modes(void **state)
{
        struct fx *f = *state;
        struct blockrepl *b = br_start(f, 0, 0, false, f->bm);
        int c = nbd_connect(f->sock);
        /* ALONE: marked, durable before the reply */
        assert_int_equal(nbd_write_pattern(c, 1, 0, 100), 0);
        assert_int_equal(nbd_write_pattern(c, 1, BS - 1, 2), 0);
        assert_int_equal(nbd_cmd(c, NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, 5 * BS, 3, "abc", NULL), 0);
        assert_int_equal(blockrepl_bitmap_count(b), 3);
        /* LOG: marked too (the activity log), before the write */
        blockrepl_set_mode(b, BR_MODE_LOG);
        assert_int_equal(nbd_write_pattern(c, 1, 10 * BS, 100), 0);
        assert_int_equal(blockrepl_bitmap_count(b), 4);
        struct br_log log;
        assert_int_equal(blockrepl_barrier(b, &log), 0);
        assert_int_equal(log.seq, 1);
        assert_int_equal(nbd_write_pattern(c, 1, 20 * BS, 100), 0);
        assert_int_equal(blockrepl_bitmap_count(b), 5);
        /* losing the peer adds nothing: every write is marked already */
        blockrepl_bitmap_mark_log(b, &log);
        br_log_free(&log);
        assert_int_equal(log.seq, 1); /* kept for committed() */
        blockrepl_set_mode(b, BR_MODE_ALONE);
        assert_int_equal(blockrepl_bitmap_count(b), 5);
        close(c);
        blockrepl_close(b);

        /* persisted; a second server on the same image is refused */
        b = br_start(f, 0, 0, false, f->bm);
        assert_int_equal(blockrepl_bitmap_count(b), 5);
        struct blockrepl_options o = { .image = f->img, .socket_path = f->sock };
        struct blockrepl *b2;
        char err[256];
        assert_int_equal(blockrepl_open(&o, &b2, err, sizeof(err)), -EBUSY);
        blockrepl_close(b);
        blockrepl_close(NULL);
}

/* ---- the activity log (LOG-mode marks, lazy clearing, lineage) ---------
 *
 * fdatasync is wrapped (test/meson.build): on blockrepl's image fd it first
 * checks that every block written since the last image fdatasync still has
 * its bit in the bitmap FILE (a clear ahead of the fdatasync is caught
 * here), and it can hold the clearing worker, to race a mode change with
 * it. The tests read the bitmap file through a second mapping of their own,
 * never through blockrepl: what a power cut would leave. */
static struct {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        int fd;                /* blockrepl's image fd; -1: pass through */
        const uint8_t *fbits;  /* the test's mapping of the bitmap's bits */
        uint64_t nd;           /* blocks 0..63 written since the last fdatasync began */
        uint64_t nd_gen[64];   /* writes counted per block: one that lands during an
                                  fdatasync stays not durable */
        bool hold, held, release;
        int violations;
        int image_syncs;       /* fdatasyncs of the image fd */
} hk = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER, .fd = -1 };

int __real_fdatasync(int fd);
int __wrap_fdatasync(int fd);
int __wrap_fdatasync(int fd)
{
        pthread_mutex_lock(&hk.lock);
        if (fd != hk.fd) {
                pthread_mutex_unlock(&hk.lock);
                return __real_fdatasync(fd);
        }
        uint64_t nd = hk.nd, gen[64];
        hk.image_syncs++;
        memcpy(gen, hk.nd_gen, sizeof(gen));
        if (hk.fbits && (br_get_le64(hk.fbits) & nd) != nd)
                hk.violations++;
        if (hk.hold) {
                hk.hold = false;
                hk.held = true;
                pthread_cond_broadcast(&hk.cond);
                while (!hk.release)
                        pthread_cond_wait(&hk.cond, &hk.lock);
                hk.release = hk.held = false;
        }
        pthread_mutex_unlock(&hk.lock);
        int r = __real_fdatasync(fd);
        pthread_mutex_lock(&hk.lock);
        for (int i = 0; i < 64; i++)
                if ((nd & (1ull << i)) && gen[i] == hk.nd_gen[i])
                        hk.nd &= ~(1ull << i);
        pthread_mutex_unlock(&hk.lock);
        return r;
}

static const uint8_t *map_bits(struct fx *f, size_t *ret_len)
{
        int fd = open(f->bm, O_RDONLY | O_CLOEXEC);
        assert_true(fd >= 0);
        *ret_len = (size_t)file_size(f->bm);
        uint8_t *m = mmap(NULL, *ret_len, PROT_READ, MAP_SHARED, fd, 0);
        assert_true(m != MAP_FAILED);
        close(fd);
        pthread_mutex_lock(&hk.lock);
        hk.fbits = m + BR_BM_HDR_SIZE;
        pthread_mutex_unlock(&hk.lock);
        return m + BR_BM_HDR_SIZE;
}

static void unmap_bits(const uint8_t *bits, size_t len)
{
        pthread_mutex_lock(&hk.lock);
        hk.fbits = NULL;
        pthread_mutex_unlock(&hk.lock);
        munmap((void *)(bits - BR_BM_HDR_SIZE), len);
}

static bool file_bit(const uint8_t *fbits, uint64_t blk)
{
        return __atomic_load_n(&fbits[blk / 8], __ATOMIC_RELAXED) & (1u << (blk % 8));
}

static struct blockrepl *br_start_al(struct fx *f, uint32_t clear_interval_ms)
{
        struct blockrepl_options o = { .name = "test/disk0", .image = f->img,
                                       .socket_path = f->sock, .bitmap_path = f->bm,
                                       .clear_interval_ms = clear_interval_ms };
        struct blockrepl *b;
        char err[256];
        if (blockrepl_open(&o, &b, err, sizeof(err)) < 0)
                fail_msg("blockrepl_open: %s", err);
        pthread_mutex_lock(&hk.lock);
        hk.fd = blockrepl_image_fd(b);
        hk.nd = 0;
        hk.violations = 0;
        hk.image_syncs = 0;
        pthread_mutex_unlock(&hk.lock);
        return b;
}

static void br_stop_al(struct blockrepl *b)
{
        pthread_mutex_lock(&hk.lock);
        hk.fd = -1;
        pthread_mutex_unlock(&hk.lock);
        blockrepl_close(b);
}

/* One 4 KiB write at the start of block blk (pattern v), then noted as
 * not durable yet. */
static void al_write(int c, uint64_t blk, uint8_t v, bool fua)
{
        uint8_t buf[4096];
        memset(buf, v, sizeof(buf));
        assert_int_equal(nbd_cmd(c, NBD_CMD_WRITE, fua ? NBD_CMD_FLAG_FUA : 0, blk * BS,
                                 sizeof(buf), buf, NULL), 0);
        pthread_mutex_lock(&hk.lock);
        hk.nd |= 1ull << blk;
        hk.nd_gen[blk]++;
        pthread_mutex_unlock(&hk.lock);
}

/* The standby: applies an epoch to its copy (only writes here). */
static void peer_apply(uint8_t *peer, const struct br_log *log)
{
        for (const struct br_rec *r = log->head; r; r = r->next)
                if (r->op == BR_OP_WRITE)
                        memcpy(peer + r->offset, r->data, r->len);
}

/* The invariant, read as a power cut would leave it: every block that
 * differs from what the peer committed, or is not durable here yet, has its
 * bit set in the file. */
static void check_invariant(struct fx *f, const uint8_t *peer, const uint8_t *fbits)
{
        static uint8_t blk[BS];
        int bad = -1;
        bool differs = false;
        /* hk.lock held throughout: the worker cannot get out of its
         * fdatasync (and clear) while the snapshot of nd is being compared */
        pthread_mutex_lock(&hk.lock);
        uint64_t nd = hk.nd;
        for (uint64_t i = 0; i < IMG_SIZE / BS && bad < 0; i++) {
                if (pread(f->img_fd, blk, BS, (off_t)(i * BS)) != BS)
                        break;
                differs = memcmp(blk, peer + i * BS, BS) != 0;
                if ((differs || (nd & (1ull << i))) && !file_bit(fbits, i))
                        bad = (int)i;
        }
        pthread_mutex_unlock(&hk.lock);
        if (bad >= 0)
                fail_msg("block %d %s but its bit is clear on disk", bad,
                         differs ? "differs from the peer" : "is not durable");
}

static void wait_clears(struct blockrepl *b, uint64_t n)
{
        struct blockrepl_stats st;
        for (int i = 0; i < 2000; i++) {
                blockrepl_get_stats(b, &st);
                if (st.bitmap_clears >= n)
                        return;
                usleep(1000);
        }
        fail_msg("lazy clear %llu did not happen", (unsigned long long)n);
}

struct mark_writer_arg {
        int c;
        int n;
};

static void *mark_writer_main(void *arg)
{
        struct mark_writer_arg *w = arg;
        for (int i = 0; i < w->n; i++)
                if (nbd_write_pattern(w->c, (uint8_t)(1 + i % 250), (uint64_t)(rand() % 64) * BS,
                                      4096) != 0)
                        return (void *)1;
        return NULL;
}

/* LOG mode: each block's bit is in the file before its data is in the
 * image, seen from outside while a client writes. */
static int image_syncs(void)
{
        pthread_mutex_lock(&hk.lock);
        int n = hk.image_syncs;
        pthread_mutex_unlock(&hk.lock);
        return n;
}

/* Flushes kept by the peer (blockrepl.c, top): only in LOG mode with the
 * deferral on (the caller holds the guest's output); then FLUSH and FUA
 * are answered with no fdatasync of the image; ending the deferral or
 * leaving LOG makes the image durable before returning (the caller
 * releases held output after it); otherwise every flush is an fdatasync. */
static void test_br_deferred_flush(void **state)
{
        struct fx *f = *state;
        struct blockrepl *b = br_start_al(f, 0);
        int c = nbd_connect(f->sock);
        assert_int_equal(nbd_cmd(c, NBD_CMD_FLUSH, 0, 0, 0, NULL, NULL), 0);
        assert_int_equal(image_syncs(), 1); /* ALONE: a real flush */
        assert_int_equal(blockrepl_defer_flushes(b, true), 0); /* not LOG: nothing */
        assert_int_equal(nbd_cmd(c, NBD_CMD_FLUSH, 0, 0, 0, NULL, NULL), 0);
        assert_int_equal(image_syncs(), 2);
        assert_int_equal(blockrepl_set_mode(b, BR_MODE_LOG), 0);
        /* LOG, output not held yet (the initial copy): real flushes */
        assert_int_equal(nbd_write_pattern(c, 'A', 0, 4096), 0);
        assert_int_equal(nbd_cmd(c, NBD_CMD_FLUSH, 0, 0, 0, NULL, NULL), 0);
        assert_int_equal(nbd_cmd(c, NBD_CMD_TRIM, NBD_CMD_FLAG_FUA, BS, 4096, NULL, NULL), 0);
        assert_int_equal(image_syncs(), 4);
        /* output held: kept by the peer */
        assert_int_equal(blockrepl_defer_flushes(b, true), 0);
        assert_int_equal(nbd_write_pattern(c, 'B', 0, 4096), 0);
        assert_int_equal(nbd_cmd(c, NBD_CMD_FLUSH, 0, 0, 0, NULL, NULL), 0);
        assert_int_equal(nbd_cmd(c, NBD_CMD_TRIM, NBD_CMD_FLAG_FUA, BS, 4096, NULL, NULL), 0);
        assert_int_equal(image_syncs(), 4);
        struct blockrepl_stats st;
        blockrepl_get_stats(b, &st);
        assert_int_equal(st.flushes, 4);
        assert_int_equal(st.flushes_deferred, 1);
        assert_int_equal(blockrepl_defer_flushes(b, false), 0);
        assert_int_equal(image_syncs(), 5); /* durable before it returned */
        assert_int_equal(blockrepl_defer_flushes(b, true), 0);
        assert_int_equal(nbd_cmd(c, NBD_CMD_FLUSH, 0, 0, 0, NULL, NULL), 0);
        assert_int_equal(image_syncs(), 5);
        assert_int_equal(blockrepl_set_mode(b, BR_MODE_ALONE), 0);
        assert_int_equal(image_syncs(), 6); /* durable before set_mode returned */
        assert_int_equal(nbd_cmd(c, NBD_CMD_TRIM, NBD_CMD_FLAG_FUA, BS, 4096, NULL, NULL), 0);
        assert_int_equal(image_syncs(), 7); /* FUA outside LOG */
        /* back in LOG the deferral starts off again */
        assert_int_equal(blockrepl_set_mode(b, BR_MODE_LOG), 0);
        assert_int_equal(nbd_cmd(c, NBD_CMD_FLUSH, 0, 0, 0, NULL, NULL), 0);
        assert_int_equal(image_syncs(), 8);
        close(c);
        br_stop_al(b);
}

static void test_br_log_marking(void **state)
{
        struct fx *f = *state;
        struct blockrepl *b = br_start_al(f, 0);
        size_t mlen;
        const uint8_t *fbits = map_bits(f, &mlen);
        blockrepl_set_mode(b, BR_MODE_LOG);
        int c = nbd_connect(f->sock);
        struct mark_writer_arg wa = { .c = c, .n = 400 };
        pthread_t t;
        srand(1);
        assert_int_equal(pthread_create(&t, NULL, mark_writer_main, &wa), 0);
        uint64_t seen = 0;
        for (int round = 0; round < 2000 && __builtin_popcountll(seen) < 64; round++) {
                for (uint64_t i = 0; i < 64; i++) {
                        uint8_t v;
                        assert_int_equal(pread(f->img_fd, &v, 1, (off_t)(i * BS)), 1);
                        /* the image first, then the file: the bit was set before */
                        if (v) {
                                seen |= 1ull << i;
                                if (!file_bit(fbits, i))
                                        fail_msg("block %llu written, bit clear on disk",
                                                 (unsigned long long)i);
                        }
                }
        }
        void *ret;
        pthread_join(t, &ret);
        assert_null(ret);
        /* one msync per block that was clean, none for the rest */
        struct blockrepl_stats st;
        blockrepl_get_stats(b, &st);
        assert_int_equal(st.bitmap_syncs, blockrepl_bitmap_count(b));
        assert_true(st.writes == 400 && st.bitmap_syncs <= 64);
        struct br_log log;
        assert_int_equal(blockrepl_barrier(b, &log), 0);
        assert_int_equal(log.n_recs, 400); /* and logged as before */
        br_log_free(&log);
        close(c);
        unmap_bits(fbits, mlen);
        br_stop_al(b);
}

/* Lazy clearing: only after a resync committed, a boundary and its commit;
 * never the blocks written after the boundary; and the invariant at every
 * step of a random run of epochs, some of them un-ACKed. */
static void test_br_lazy_clear(void **state)
{
        struct fx *f = *state;
        struct blockrepl *b = br_start_al(f, 1);
        size_t mlen;
        const uint8_t *fbits = map_bits(f, &mlen);
        uint8_t *peer = calloc(1, IMG_SIZE);
        struct br_log log[4];
        int c = nbd_connect(f->sock);

        /* alone: marked */
        for (uint64_t i = 0; i < 4; i++)
                al_write(c, i, 0xa0, false);
        blockrepl_set_mode(b, BR_MODE_LOG);
        assert_int_equal(blockrepl_resync_committed(b, 0, 9), 0); /* not a real one */
        blockrepl_set_mode(b, BR_MODE_ALONE); /* ...and lazy clearing off again */
        assert_int_equal(blockrepl_resync_committed(b, 0, 9), -EINVAL); /* not in LOG */
        assert_int_equal(blockrepl_bitmap_count(b), 0);
        for (uint64_t i = 0; i < 4; i++)
                al_write(c, i, 0xa1, false);
        /* a full resync: the copy reads the image (peer := image), epoch 1 */
        blockrepl_set_mode(b, BR_MODE_LOG);
        assert_int_equal(pread(f->img_fd, peer, IMG_SIZE, 0), IMG_SIZE);
        al_write(c, 5, 0xa5, false);
        uint64_t seq0;
        assert_int_equal(blockrepl_barrier(b, &log[0]), 0);
        seq0 = log[0].seq;
        al_write(c, 6, 0xa6, false); /* after the first epoch's barrier */
        check_invariant(f, peer, fbits);
        peer_apply(peer, &log[0]);
        assert_int_equal(blockrepl_committed(b, seq0 + 1), -EINVAL); /* not cut */
        assert_int_equal(blockrepl_committed(b, seq0), 0);
        usleep(20000);
        struct blockrepl_stats st;
        blockrepl_get_stats(b, &st);
        assert_int_equal(st.bitmap_clears, 0); /* no resync committed yet: no clearing */
        assert_int_equal(blockrepl_bitmap_count(b), 6);
        assert_int_equal(blockrepl_resync_committed(b, seq0 + 1, 42), -EINVAL);
        assert_int_equal(blockrepl_resync_committed(b, seq0, 42), 0);
        /* only the write after the barrier stays */
        assert_int_equal(blockrepl_bitmap_count(b), 1);
        assert_true(file_bit(fbits, 6));
        assert_int_equal(blockrepl_lineage(b), 42);
        check_invariant(f, peer, fbits);
        br_log_free(&log[0]);

        /* a boundary at the next barrier (1 ms passed), and its commit */
        usleep(2000);
        al_write(c, 7, 0xb7, false);
        assert_int_equal(blockrepl_barrier(b, &log[0]), 0); /* boundary B */
        al_write(c, 9, 0xb9, false);                         /* after B */
        assert_int_equal(blockrepl_barrier(b, &log[1]), 0); /* un-ACKed */
        al_write(c, 10, 0xba, false);                        /* open epoch */
        peer_apply(peer, &log[0]);
        assert_int_equal(blockrepl_committed(b, log[0].seq - 1), 0); /* before B: nothing */
        usleep(20000);
        blockrepl_get_stats(b, &st);
        assert_int_equal(st.bitmap_clears, 0);
        assert_int_equal(blockrepl_committed(b, log[0].seq), 0);
        wait_clears(b, 1);
        /* 6 and 7 committed and cleared; 9 (un-ACKed) and 10 (open) kept */
        assert_false(file_bit(fbits, 6));
        assert_false(file_bit(fbits, 7));
        assert_true(file_bit(fbits, 9));
        assert_true(file_bit(fbits, 10));
        assert_int_equal(blockrepl_bitmap_count(b), 2);
        check_invariant(f, peer, fbits);
        br_log_free(&log[0]);
        peer_apply(peer, &log[1]);
        assert_int_equal(blockrepl_committed(b, log[1].seq), 0);
        br_log_free(&log[1]);

        /* random epochs, up to 3 in flight, FUA and FLUSH now and then */
        srand(7);
        int inflight = 0;
        for (int round = 0; round < 300; round++) {
                int k = rand() % 4;
                for (int i = 0; i < k; i++)
                        al_write(c, (uint64_t)(rand() % 16), (uint8_t)(1 + rand() % 255),
                                 rand() % 8 == 0);
                if (rand() % 16 == 0)
                        assert_int_equal(nbd_cmd(c, NBD_CMD_FLUSH, 0, 0, 0, NULL, NULL), 0);
                check_invariant(f, peer, fbits);
                assert_int_equal(blockrepl_barrier(b, &log[inflight++]), 0);
                if (inflight == 3 || (inflight && rand() % 2)) {
                        peer_apply(peer, &log[0]);
                        assert_int_equal(blockrepl_committed(b, log[0].seq), 0);
                        br_log_free(&log[0]);
                        memmove(&log[0], &log[1], sizeof(log[0]) * (size_t)(--inflight));
                }
                check_invariant(f, peer, fbits);
                if (rand() % 4 == 0)
                        usleep(1500);
        }
        blockrepl_get_stats(b, &st);
        assert_true(st.bitmap_clears >= 3);
        pthread_mutex_lock(&hk.lock);
        int violations = hk.violations;
        pthread_mutex_unlock(&hk.lock);
        assert_int_equal(violations, 0);
        for (int i = 0; i < inflight; i++)
                br_log_free(&log[i]);
        close(c);
        unmap_bits(fbits, mlen);
        br_stop_al(b);
        free(peer);
        printf("lazy clear: %llu clears, %llu blocks cleared, %llu marks (msyncs)\n",
               (unsigned long long)st.bitmap_clears, (unsigned long long)st.bitmap_cleared,
               (unsigned long long)st.bitmap_syncs);
}

/* Leaving LOG cancels a pending clear, also one whose fdatasync runs. */
static void test_br_clear_cancel(void **state)
{
        struct fx *f = *state;
        struct blockrepl *b = br_start_al(f, 1);
        size_t mlen;
        const uint8_t *fbits = map_bits(f, &mlen);
        struct br_log log;
        int c = nbd_connect(f->sock);
        blockrepl_set_mode(b, BR_MODE_LOG);
        assert_int_equal(blockrepl_barrier(b, &log), 0);
        assert_int_equal(blockrepl_resync_committed(b, log.seq, 5), 0);
        usleep(2000);
        al_write(c, 1, 0xc1, false);
        assert_int_equal(blockrepl_barrier(b, &log), 0); /* boundary */
        br_log_free(&log);
        /* the peer is lost before the commit arrives */
        blockrepl_set_mode(b, BR_MODE_ALONE);
        assert_int_equal(blockrepl_committed(b, log.seq), 0);
        blockrepl_set_mode(b, BR_MODE_LOG);
        assert_int_equal(blockrepl_committed(b, log.seq), 0); /* not armed again */
        usleep(20000);
        struct blockrepl_stats st;
        blockrepl_get_stats(b, &st);
        assert_int_equal(st.bitmap_clears, 0);
        assert_true(file_bit(fbits, 1));

        /* armed again; the mode changes while the worker is in fdatasync */
        assert_int_equal(blockrepl_barrier(b, &log), 0);
        assert_int_equal(blockrepl_resync_committed(b, log.seq, 5), 0);
        assert_false(file_bit(fbits, 1));
        usleep(2000);
        al_write(c, 1, 0xc2, false);
        assert_int_equal(blockrepl_barrier(b, &log), 0); /* boundary */
        br_log_free(&log);
        pthread_mutex_lock(&hk.lock);
        hk.hold = true;
        pthread_mutex_unlock(&hk.lock);
        assert_int_equal(blockrepl_committed(b, log.seq), 0);
        pthread_mutex_lock(&hk.lock);
        while (!hk.held)
                pthread_cond_wait(&hk.cond, &hk.lock);
        pthread_mutex_unlock(&hk.lock);
        blockrepl_set_mode(b, BR_MODE_ALONE); /* e.g. the standby's ACK timed out */
        pthread_mutex_lock(&hk.lock);
        hk.release = true;
        pthread_cond_broadcast(&hk.cond);
        pthread_mutex_unlock(&hk.lock);
        close(c);
        br_stop_al(b); /* joins the worker: whatever it was to do is done */
        assert_true(file_bit(fbits, 1));
        unmap_bits(fbits, mlen);
}

/* Copy and merge through blockrepl (the resync exchange). */
static void test_br_copy_merge(void **state)
{
        struct fx *f = *state;
        struct blockrepl *b = br_start_al(f, 0);
        int c = nbd_connect(f->sock);
        size_t n = blockrepl_bitmap_bytes(b);
        assert_int_equal(n, IMG_SIZE / BS / 8);
        uint8_t mine[8], theirs[8] = { 0 };
        al_write(c, 3, 1, false);
        assert_int_equal(blockrepl_bitmap_copy(b, mine, n - 1), -EINVAL);
        assert_int_equal(blockrepl_bitmap_copy(b, mine, n), 0);
        assert_int_equal(mine[0], 0x08);
        theirs[0] = 0x01;
        theirs[7] = 0x80;
        assert_int_equal(blockrepl_bitmap_merge(b, theirs, n + 1), -EINVAL);
        assert_int_equal(blockrepl_bitmap_merge(b, theirs, n), 0);
        assert_int_equal(blockrepl_bitmap_count(b), 3);
        assert_int_equal(blockrepl_set_lineage(b, 77), 0);
        close(c);
        br_stop_al(b);
        struct br_bitmap *bm;
        char err[256];
        assert_int_equal(br_bitmap_open(f->bm, IMG_SIZE, &bm, err, sizeof(err)), 0);
        assert_int_equal(br_bitmap_count(bm), 3);
        assert_true(br_bitmap_test(bm, 63));
        assert_int_equal(br_bitmap_lineage(bm), 77);
        br_bitmap_close(bm);
        /* without a bitmap: nothing to copy or merge */
        b = br_start(f, 0, 0, false, NULL);
        assert_int_equal(blockrepl_bitmap_bytes(b), 0);
        assert_int_equal(blockrepl_bitmap_copy(b, mine, 0), 0);
        assert_int_equal(blockrepl_lineage(b), 0);
        blockrepl_close(b);
}

/* Not a test of speed (nothing asserted): what the marks cost, printed.
 * N random 4 KiB writes through the socket in LOG mode, on this file
 * system, HAVMS_BR_MEASURE_N of them (default 300). */
static double measure(struct fx *f, const char *img, const char *bm, uint64_t blocks, int n,
                      bool epochs, uint64_t *ret_syncs, uint64_t *ret_clears)
{
        struct blockrepl_options o = { .name = "measure", .image = img, .socket_path = f->sock,
                                       .bitmap_path = bm, .clear_interval_ms = 1 };
        struct blockrepl *b;
        char err[256];
        assert_int_equal(blockrepl_open(&o, &b, err, sizeof(err)), 0);
        blockrepl_set_mode(b, BR_MODE_LOG);
        struct br_log log;
        if (bm) {
                assert_int_equal(blockrepl_barrier(b, &log), 0);
                assert_int_equal(blockrepl_resync_committed(b, log.seq, 1), 0);
        }
        int c = nbd_connect(f->sock);
        uint8_t buf[4096];
        memset(buf, 0x5a, sizeof(buf));
        uint64_t t0 = now_ns();
        for (int i = 0; i < n; i++) {
                uint64_t off = (uint64_t)rand() % (blocks * BS / 4096) * 4096;
                assert_int_equal(nbd_cmd(c, NBD_CMD_WRITE, 0, off, 4096, buf, NULL), 0);
                if (epochs && i % 10 == 9) { /* an epoch per 10 writes, ACKed at once */
                        assert_int_equal(blockrepl_barrier(b, &log), 0);
                        assert_int_equal(blockrepl_committed(b, log.seq), 0);
                        br_log_free(&log);
                }
        }
        double us = (double)(now_ns() - t0) / 1e3 / n;
        struct blockrepl_stats st;
        blockrepl_get_stats(b, &st);
        *ret_syncs = st.bitmap_syncs;
        *ret_clears = st.bitmap_clears;
        close(c);
        blockrepl_close(b);
        return us;
}

static void test_br_measure_marks(void **state)
{
        struct fx *f = *state;
        const char *e = getenv("HAVMS_BR_MEASURE_N");
        int n = e ? atoi(e) : 300;
        char img[160], bm[160];
        snprintf(img, sizeof(img), "%s/big.img", f->dir);
        snprintf(bm, sizeof(bm), "%s/big.bitmap", f->dir);
        int fd = open(img, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        assert_int_equal(ftruncate(fd, 1ll << 30), 0);
        close(fd);
        uint64_t s0, s1, s2, s3, c0, c1, c2, c3;
        srand(3);
        double none = measure(f, img, NULL, 64, n, true, &s0, &c0);
        unlink(bm);
        double fresh = measure(f, img, bm, 16384, n, false, &s1, &c1);
        unlink(bm);
        double hot = measure(f, img, bm, 64, n, false, &s2, &c2);
        unlink(bm);
        double hot_clear = measure(f, img, bm, 64, n, true, &s3, &c3);
        printf("LOG-mode marks, %d random 4 KiB writes, us/write: no bitmap (4 MiB, an "
               "epoch per 10 writes) %.0f; bitmap, 1 GiB spread (%llu marks) %.0f; bitmap, "
               "4 MiB hot set (%llu marks) %.0f; bitmap, 4 MiB, an epoch per 10 writes, "
               "ACKed at once, a boundary at each (%llu marks, %llu clears) %.0f\n",
               n, none, (unsigned long long)s1, fresh, (unsigned long long)s2, hot,
               (unsigned long long)s3, (unsigned long long)c3, hot_clear);
}

static void test_br_protocol_errors(void **state)
{
        struct fx *f = *state;
        struct blockrepl *b = br_start(f, 0, 0, false, NULL);
        int c = nbd_connect(f->sock);
        uint8_t buf[8192];
        fill(f->img_fd, 'R', IMG_SIZE - 4096, 4096);

        assert_int_equal(nbd_cmd(c, NBD_CMD_READ, 0, IMG_SIZE - 4096, 4096, NULL, buf), 0);
        assert_int_equal(buf[0], 'R');
        assert_int_equal(nbd_cmd(c, NBD_CMD_READ, 0, IMG_SIZE - 4096, 4097, NULL, buf), NBD_EINVAL);
        assert_int_equal(nbd_cmd(c, NBD_CMD_READ, 0, UINT64_MAX - 10, 100, NULL, buf), NBD_EINVAL);
        assert_int_equal(nbd_cmd(c, NBD_CMD_READ, 0, 0, NBD_MAX_REQUEST + 1, NULL, buf), NBD_EINVAL);
        assert_int_equal(nbd_cmd(c, 42, 0, 0, 0, NULL, NULL), NBD_EINVAL);
        assert_int_equal(nbd_cmd(c, NBD_CMD_READ, 1u << 4, 0, 16, NULL, buf), NBD_EINVAL);
        assert_int_equal(nbd_cmd(c, NBD_CMD_WRITE, NBD_CMD_FLAG_NO_HOLE, 0, 16, buf, NULL), NBD_EINVAL);
        assert_int_equal(nbd_cmd(c, NBD_CMD_TRIM, 0, IMG_SIZE, 1, NULL, NULL), NBD_EINVAL);
        /* a write out of range: its payload is read and dropped, the
         * connection stays in step */
        memset(buf, 'Q', sizeof(buf));
        assert_int_equal(nbd_cmd(c, NBD_CMD_WRITE, 0, IMG_SIZE - 4096, 8192, buf, NULL), NBD_EINVAL);
        assert_int_equal(nbd_cmd(c, NBD_CMD_READ, 0, IMG_SIZE - 4096, 4096, NULL, buf), 0);
        assert_int_equal(buf[0], 'R');
        assert_int_equal(nbd_cmd(c, NBD_CMD_READ, 0, 0, 0, NULL, buf), 0);
        assert_int_equal(nbd_cmd(c, NBD_CMD_WRITE, 0, IMG_SIZE, 0, NULL, NULL), 0);
        /* a WRITE too long to skip: disconnected */
        nbd_send(c, NBD_CMD_WRITE, 0, 0, NBD_MAX_REQUEST + 1, NULL, 1);
        assert_int_equal(read(c, buf, 1), 0);
        close(c);

        /* bad magic: disconnected, and the server still serves */
        c = nbd_connect(f->sock);
        uint8_t junk[NBD_REQUEST_SIZE] = { 0x25, 0x60, 0x95, 0x14 };
        assert_int_equal(write_full(c, junk, sizeof(junk), deadline()), 0);
        assert_int_equal(read(c, buf, 1), 0);
        close(c);
        c = nbd_connect(f->sock);
        assert_int_equal(nbd_cmd(c, NBD_CMD_READ, 0, 0, 16, NULL, buf), 0);
        nbd_send(c, NBD_CMD_DISC, 0, 0, 0, NULL, 2); /* no reply, then closed */
        assert_int_equal(read(c, buf, 1), 0);
        close(c);
        blockrepl_close(b);

        /* read-only */
        b = br_start(f, 0, 0, true, NULL);
        c = nbd_connect(f->sock);
        assert_int_equal(nbd_cmd(c, NBD_CMD_WRITE, 0, 0, 16, buf, NULL), NBD_EPERM);
        assert_int_equal(nbd_cmd(c, NBD_CMD_WRITE_ZEROES, 0, 0, 16, NULL, NULL), NBD_EPERM);
        assert_int_equal(nbd_cmd(c, NBD_CMD_TRIM, 0, 0, 16, NULL, NULL), NBD_EPERM);
        assert_int_equal(nbd_cmd(c, NBD_CMD_FLUSH, 0, 0, 0, NULL, NULL), 0);
        assert_int_equal(nbd_cmd(c, NBD_CMD_READ, 0, IMG_SIZE - 4096, 4096, NULL, buf), 0);
        assert_int_equal(buf[0], 'R');
        close(c);
        blockrepl_close(b);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_stage_memory, setup, teardown),
                cmocka_unit_test_setup_teardown(test_stage_journal, setup, teardown),
                cmocka_unit_test_setup_teardown(test_stage_all_spilled, setup, teardown),
                cmocka_unit_test_setup_teardown(test_stage_discard, setup, teardown),
                cmocka_unit_test_setup_teardown(test_stage_refused, setup, teardown),
                cmocka_unit_test_setup_teardown(test_stage_apply_error_keeps, setup, teardown),
                cmocka_unit_test_setup_teardown(test_stage_journal_corrupt, setup, teardown),
                cmocka_unit_test_setup_teardown(test_bitmap_persist, setup, teardown),
                cmocka_unit_test_setup_teardown(test_bitmap_refused, setup, teardown),
                cmocka_unit_test_setup_teardown(test_bitmap_lineage_merge, setup, teardown),
                cmocka_unit_test_setup_teardown(test_bitmap_v1_upgrade, setup, teardown),
                cmocka_unit_test(test_resync_set),
                cmocka_unit_test_setup_teardown(test_br_barrier, setup, teardown),
                cmocka_unit_test_setup_teardown(test_br_log_order, setup, teardown),
                cmocka_unit_test_setup_teardown(test_br_log_since, setup, teardown),
                cmocka_unit_test_setup_teardown(test_br_hard_limit, setup, teardown),
                cmocka_unit_test_setup_teardown(test_br_sync_map, setup, teardown),
                cmocka_unit_test_setup_teardown(test_br_bitmap_modes, setup, teardown),
                cmocka_unit_test_setup_teardown(test_br_protocol_errors, setup, teardown),
                cmocka_unit_test_setup_teardown(test_br_deferred_flush, setup, teardown),
                cmocka_unit_test_setup_teardown(test_br_log_marking, setup, teardown),
                cmocka_unit_test_setup_teardown(test_br_lazy_clear, setup, teardown),
                cmocka_unit_test_setup_teardown(test_br_clear_cancel, setup, teardown),
                cmocka_unit_test_setup_teardown(test_br_copy_merge, setup, teardown),
                cmocka_unit_test_setup_teardown(test_br_measure_marks, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
