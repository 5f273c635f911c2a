/* resync: the standby's half of an incremental disk resync and the
 * primary's hash comparison (checkpointd/disks.c), on real image and
 * bitmap files: which disks go incrementally (lineages), the union of the
 * two bitmaps marked durably before any block can land, the hashes of
 * exactly that union, the pieces the primary must send, the new lineage
 * recorded at the first commit, and refusals of records out of place. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#define SCRATCH_NAME "havms-resync"
#include "scratch.h"

#include "bitmap.h"
#include "disks.h"
#include "wire.h"

#define BLOCKS 16
#define DISK_BYTES ((uint64_t)BLOCKS * WIRE_BLOCK_SIZE)
#define LINEAGE 0x1234abcdull

static struct host_config host;
static struct vm_config vm;
static char image[200], bmpath[200];

static int setup(void **state)
{
        assert_int_equal(scratch_setup(state), 0);
        snprintf(host.state_dir, sizeof(host.state_dir), "%s", scratch);
        snprintf(vm.name, sizeof(vm.name), "vm1");
        snprintf(image, sizeof(image), "%s/vm1.raw", scratch);
        snprintf(vm.disks[0], sizeof(vm.disks[0]), "%s", image);
        vm.n_disks = 1;
        vm.disk_buffer_mib = 1;
        snprintf(bmpath, sizeof(bmpath), "%s/vm1.disk0.bitmap", scratch);
        return 0;
}

/* The standby's image: block b, piece p filled with the byte b * 16 + p. */
static void make_image(void)
{
        int fd = open(image, O_RDWR | O_CREAT | O_TRUNC, 0600);
        assert_true(fd >= 0);
        static uint8_t piece[4096];
        for (unsigned b = 0; b < BLOCKS; b++)
                for (unsigned p = 0; p < WIRE_BLOCK_PAGES; p++) {
                        memset(piece, (int)(b * 16 + p), sizeof(piece));
                        assert_int_equal(pwrite(fd, piece, sizeof(piece),
                                                (off_t)b * WIRE_BLOCK_SIZE + (off_t)p * 4096),
                                         (ssize_t)sizeof(piece));
                }
        close(fd);
}

/* The standby's own bitmap before the HELLO: lineage and marked blocks. */
static void make_bitmap(uint64_t lineage, const unsigned *blocks, size_t n)
{
        struct br_bitmap *bm;
        char err[256];
        unlink(bmpath);
        assert_int_equal(br_bitmap_open(bmpath, DISK_BYTES, &bm, err, sizeof(err)), 0);
        assert_int_equal(br_bitmap_set_lineage(bm, lineage), 0);
        for (size_t i = 0; i < n; i++)
                br_bitmap_set_range(bm, (uint64_t)blocks[i] * WIRE_BLOCK_SIZE, 1);
        assert_int_equal(br_bitmap_sync(bm), 0);
        br_bitmap_close(bm);
}

static struct wire_hello hello(uint64_t lineage)
{
        struct wire_hello h = { .page_size = 4096, .n_disks = 1, .disk_bytes = { DISK_BYTES },
                                .disk_lineage = { lineage }, .new_lineage = 0x77 };
        if (lineage)
                h.flags = WIRE_HELLO_BITMAP(0);
        return h;
}

/* One record built and parsed back, as wire_recv would hand it over. */
static void to_msg(const struct wire_buf *b, struct wire_msg *m)
{
        struct wire_hdr h;
        const uint8_t *payload;
        size_t used;
        assert_int_equal(wire_parse(b->data, b->len, &h, &payload, &used), 0);
        free(m->payload);
        m->payload = malloc(h.length ? h.length : 1);
        memcpy(m->payload, payload, h.length);
        m->cap = h.length;
        m->hdr = h;
}

struct collected {
        uint8_t entries[BLOCKS * WIRE_DISK_HASH_ENTRY];
        uint32_t n, calls;
};

static int collect(void *ctx, const uint8_t *entries, uint32_t n)
{
        struct collected *c = ctx;
        memcpy(c->entries + (size_t)c->n * WIRE_DISK_HASH_ENTRY, entries, (size_t)n * WIRE_DISK_HASH_ENTRY);
        c->n += n;
        c->calls++;
        return 0;
}

static void test_incremental(void **state)
{
        make_image();
        const unsigned mine[] = { 3 };
        make_bitmap(LINEAGE, mine, 1);
        struct wire_hello h = hello(LINEAGE);
        struct disk_replica r;
        char why[300];
        assert_int_equal(disk_replica_open(&r, &host, &vm, &h, why, sizeof(why)), 0);
        assert_true(r.incremental[0]);

        /* the primary's bitmap (blocks 5 and 7), in two pieces */
        uint8_t bits[8] = { 0 };
        bits[0] = 1u << 5 | 1u << 7;
        struct wire_buf b = { 0 };
        struct wire_msg m = { 0 };
        bool done = true;
        struct wire_bitmap_chunk c = { .disk = 0, .offset = 4, .len = 4, .bits = bits + 4 };
        assert_int_equal(wire_put_disk_bitmap(&b, &c), 0);
        to_msg(&b, &m);
        assert_int_equal(disk_replica_bitmap(&r, &m, &done), -EBADMSG); /* a gap: refused */
        c.offset = 0;
        c.bits = bits;
        wire_buf_reset(&b);
        assert_int_equal(wire_put_disk_bitmap(&b, &c), 0);
        to_msg(&b, &m);
        assert_int_equal(disk_replica_bitmap(&r, &m, &done), 0);
        assert_false(done);
        c.offset = 4;
        c.bits = bits + 4;
        wire_buf_reset(&b);
        assert_int_equal(wire_put_disk_bitmap(&b, &c), 0);
        to_msg(&b, &m);
        assert_int_equal(disk_replica_bitmap(&r, &m, &done), 0);
        assert_true(done);
        /* more than the bitmap: refused */
        assert_int_equal(disk_replica_bitmap(&r, &m, &done), -EBADMSG);

        /* the union is in our bitmap already, before any block lands */
        size_t len;
        const uint8_t *own = br_bitmap_bits(r.bm[0], &len);
        assert_int_equal(own[0], 1u << 3 | 1u << 5 | 1u << 7);
        assert_int_equal(own[1], 0);

        /* the hashes: exactly the union's blocks, ascending, in batches */
        struct collected col = { 0 };
        uint64_t blocks = 0;
        assert_int_equal(disk_replica_hashes(&r, 0, 2, collect, &col, &blocks), 0);
        assert_int_equal(blocks, 3);
        assert_int_equal(col.n, 3);
        assert_int_equal(col.calls, 2);
        assert_int_equal(wire_hash_entry_block(col.entries), 3);
        assert_int_equal(wire_hash_entry_block(col.entries + WIRE_DISK_HASH_ENTRY), 5);
        assert_int_equal(wire_hash_entry_block(col.entries + 2 * WIRE_DISK_HASH_ENTRY), 7);

        /* the primary's blocks: 3 the same, 5 differs in piece 2, 7 in
         * pieces 0 and 15: only those pieces are to be sent */
        static uint8_t blk[WIRE_BLOCK_SIZE];
        const unsigned which[] = { 3, 5, 7 };
        const uint32_t want[] = { 0, 1u << 2, 1u << 0 | 1u << 15 };
        for (unsigned i = 0; i < 3; i++) {
                for (unsigned p = 0; p < WIRE_BLOCK_PAGES; p++)
                        memset(blk + p * 4096, (int)(which[i] * 16 + p), 4096);
                if (which[i] == 5)
                        blk[2 * 4096 + 100] ^= 1;
                if (which[i] == 7) {
                        blk[0] ^= 0x80;
                        blk[15 * 4096 + 4095] ^= 1;
                }
                assert_int_equal(disks_piece_diff(blk, sizeof(blk),
                                                  col.entries + i * WIRE_DISK_HASH_ENTRY), want[i]);
        }
        /* a short last block: pieces past its end are never sent */
        assert_int_equal(disks_piece_diff(blk, 4096, col.entries + 2 * WIRE_DISK_HASH_ENTRY), 1u << 0);

        /* the first commit: the new lineage, then no bit left */
        assert_int_equal(disk_replica_sync_done(&r), 0);
        assert_null(r.bm[0]);
        disk_replica_close(&r);
        struct br_bitmap *bm;
        assert_int_equal(br_bitmap_open(bmpath, DISK_BYTES, &bm, why, sizeof(why)), 0);
        assert_int_equal(br_bitmap_lineage(bm), 0x77);
        assert_int_equal(br_bitmap_count(bm), 0);
        br_bitmap_close(bm);
        wire_msg_free(&m);
        wire_buf_free(&b);
}

/* Another history, or none: copied whole, and the standby forgets its
 * lineage durably before the copy can start. */
static void test_full_when_history_differs(void **state)
{
        make_image();
        const unsigned mine[] = { 1 };
        char why[300];
        struct disk_replica r;
        struct br_bitmap *bm;
        const uint64_t offered[] = { LINEAGE + 1, 0 };
        for (unsigned k = 0; k < 2; k++) {
                make_bitmap(LINEAGE, mine, 1);
                struct wire_hello h = hello(offered[k]);
                assert_int_equal(disk_replica_open(&r, &host, &vm, &h, why, sizeof(why)), 0);
                assert_false(r.incremental[0]);
                disk_replica_close(&r);
                assert_int_equal(br_bitmap_open(bmpath, DISK_BYTES, &bm, why, sizeof(why)), 0);
                assert_int_equal(br_bitmap_lineage(bm), 0);
                br_bitmap_close(bm);
        }
        /* a bitmap record for a disk that goes whole: refused */
        make_bitmap(LINEAGE, mine, 1);
        struct wire_hello h = hello(LINEAGE + 1);
        assert_int_equal(disk_replica_open(&r, &host, &vm, &h, why, sizeof(why)), 0);
        uint8_t bits[8] = { 0 };
        struct wire_bitmap_chunk c = { .disk = 0, .offset = 0, .len = 8, .bits = bits };
        struct wire_buf b = { 0 };
        struct wire_msg m = { 0 };
        bool done;
        assert_int_equal(wire_put_disk_bitmap(&b, &c), 0);
        to_msg(&b, &m);
        assert_int_equal(disk_replica_bitmap(&r, &m, &done), -EBADMSG);
        disk_replica_close(&r);
        wire_msg_free(&m);
        wire_buf_free(&b);
}

/* A damaged bitmap file is replaced (the full copy that follows makes it
 * right), never trusted. */
static void test_damaged_bitmap_replaced(void **state)
{
        make_image();
        make_bitmap(LINEAGE, NULL, 0);
        int fd = open(bmpath, O_RDWR);
        assert_true(fd >= 0);
        assert_int_equal(pwrite(fd, "X", 1, 3), 1); /* the magic */
        close(fd);
        struct wire_hello h = hello(LINEAGE);
        struct disk_replica r;
        char why[300];
        assert_int_equal(disk_replica_open(&r, &host, &vm, &h, why, sizeof(why)), 0);
        assert_false(r.incremental[0]);
        disk_replica_close(&r);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_incremental),
                cmocka_unit_test(test_full_when_history_differs),
                cmocka_unit_test(test_damaged_bitmap_replaced),
        };
        return cmocka_run_group_tests(tests, setup, scratch_teardown);
}
