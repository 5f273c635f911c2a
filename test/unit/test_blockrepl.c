/* blockrepl: the standby's stage (memory and journal, order, refusals,
 * errors), the persistent bitmap (persistence, refusals), and the server
 * driven through its NBD socket by a small client here: epoch barrier and
 * log order, the hard limit, the sync map, modes and protocol errors. */
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
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "blockrepl.h"
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
        /* empty: applying again changes nothing */
        assert_int_equal(br_stage_apply(s, f->img_fd), 0);
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
                cmocka_unit_test_setup_teardown(test_br_barrier, setup, teardown),
                cmocka_unit_test_setup_teardown(test_br_log_order, setup, teardown),
                cmocka_unit_test_setup_teardown(test_br_hard_limit, setup, teardown),
                cmocka_unit_test_setup_teardown(test_br_sync_map, setup, teardown),
                cmocka_unit_test_setup_teardown(test_br_bitmap_modes, setup, teardown),
                cmocka_unit_test_setup_teardown(test_br_protocol_errors, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
