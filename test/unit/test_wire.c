/* Wire format: round trips of every record type, and rejection of every
 * kind of corrupt or truncated record. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "wire.h"

/* Parse one record held in b into a wire_msg (as wire_recv would). */
static int parse_msg(const struct wire_buf *b, size_t off, struct wire_msg *m, size_t *used)
{
        struct wire_hdr h;
        const uint8_t *payload;
        int r = wire_parse(b->data + off, b->len - off, &h, &payload, used);
        if (r < 0)
                return r;
        free(m->payload);
        m->payload = malloc(h.length ? h.length : 1);
        memcpy(m->payload, payload, h.length);
        m->cap = h.length;
        m->hdr = h;
        return 0;
}

static void test_hello_roundtrip(void **state)
{
        struct wire_buf b = { 0 };
        struct wire_hello h = { .page_size = 4096, .ram_bytes = 256u << 20, .config_digest = 0x1234,
                                .generation = 0x0102030405060708ull, .new_lineage = 77 };
        strcpy(h.vm, "web01");
        strcpy(h.host, "hostA");
        assert_int_equal(wire_put_hello(&b, &h), 0);
        struct wire_msg m = { 0 };
        size_t used;
        assert_int_equal(parse_msg(&b, 0, &m, &used), 0);
        assert_int_equal(used, b.len);
        struct wire_hello g;
        assert_int_equal(wire_get_hello(&m, &g), 0);
        assert_int_equal(g.ram_bytes, 256u << 20);
        assert_int_equal(g.config_digest, 0x1234);
        assert_string_equal(g.vm, "web01");
        assert_string_equal(g.host, "hostA");
        assert_int_equal(g.n_disks, 0);
        assert_int_equal(g.generation, 0x0102030405060708ull);
        assert_int_equal(g.new_lineage, 77);
        /* a HELLO of version 3's length (no lineages) is refused */
        m.hdr.length -= 8 + 8 * WIRE_MAX_DISKS;
        assert_int_equal(wire_get_hello(&m, &g), -EBADMSG);
        m.hdr.length += 8 + 8 * WIRE_MAX_DISKS;
        /* a HELLO is not a WELCOME */
        struct wire_welcome w;
        assert_int_equal(wire_get_welcome(&m, &w), -EBADMSG);
        wire_msg_free(&m);
        wire_buf_free(&b);
}

static void test_hello_disks(void **state)
{
        struct wire_buf b = { 0 };
        struct wire_hello h = { .page_size = 4096, .ram_bytes = 1 << 20, .n_disks = 2,
                                .disk_bytes = { 64u << 20, 1u << 30 }, .disk_lineage = { 5, 0 },
                                .new_lineage = 9, .flags = WIRE_HELLO_BITMAP(0) };
        assert_int_equal(wire_put_hello(&b, &h), 0);
        struct wire_msg m = { 0 };
        size_t used;
        assert_int_equal(parse_msg(&b, 0, &m, &used), 0);
        struct wire_hello g;
        assert_int_equal(wire_get_hello(&m, &g), 0);
        assert_int_equal(g.n_disks, 2);
        assert_int_equal(g.disk_bytes[0], 64u << 20);
        assert_int_equal(g.disk_bytes[1], 1u << 30);
        assert_int_equal(g.disk_lineage[0], 5);
        assert_int_equal(g.flags, WIRE_HELLO_BITMAP(0));
        /* a bitmap announced for a disk it does not list, a lineage past
         * n_disks, no lineage to adopt: refused (re-sealed, so only the
         * parser's checks can catch it) */
        struct wire_hello bad = h;
        bad.flags = WIRE_HELLO_BITMAP(2);
        struct wire_buf b2 = { 0 };
        struct wire_msg m2 = { 0 };
        assert_int_equal(wire_put_hello(&b2, &bad), 0);
        assert_int_equal(parse_msg(&b2, 0, &m2, &used), 0);
        assert_int_equal(wire_get_hello(&m2, &g), -EBADMSG);
        bad = h;
        bad.new_lineage = 0;
        wire_buf_reset(&b2);
        assert_int_equal(wire_put_hello(&b2, &bad), 0);
        assert_int_equal(parse_msg(&b2, 0, &m2, &used), 0);
        assert_int_equal(wire_get_hello(&m2, &g), -EBADMSG);
        uint8_t *lin = m.payload + 24 + 2 * WIRE_NAME_LEN + 16 + 8 * WIRE_MAX_DISKS;
        lin[8 * 3] = 1; /* disk 3 is not listed */
        assert_int_equal(wire_get_hello(&m, &g), -EBADMSG);
        lin[8 * 3] = 0;
        wire_msg_free(&m2);
        wire_buf_free(&b2);
        /* a listed disk without a size, a size past n_disks, too many disks */
        uint8_t *d = m.payload + 24 + 2 * WIRE_NAME_LEN;
        d[0] = 3;
        assert_int_equal(wire_get_hello(&m, &g), -EBADMSG);
        d[0] = 1;
        assert_int_equal(wire_get_hello(&m, &g), -EBADMSG);
        d[0] = 9;
        assert_int_equal(wire_get_hello(&m, &g), -EBADMSG);
        h.n_disks = WIRE_MAX_DISKS + 1;
        assert_int_equal(wire_put_hello(&b, &h), -EINVAL);
        wire_msg_free(&m);
        wire_buf_free(&b);
}

/* The re-seed records: round trips and the parser's refusals. */
static void test_reseed_records(void **state)
{
        struct wire_buf b = { 0 };
        struct wire_msg m = { 0 };
        size_t used;
        uint8_t bits[40], hashes[3 * WIRE_HASH_LEN], entries[2 * WIRE_DISK_HASH_ENTRY];
        for (size_t i = 0; i < sizeof(bits); i++)
                bits[i] = (uint8_t)i;
        struct wire_bitmap_chunk c = { .disk = 1, .offset = 4096, .len = sizeof(bits), .bits = bits }, gc;
        assert_int_equal(wire_put_disk_bitmap(&b, &c), 0);
        assert_int_equal(parse_msg(&b, 0, &m, &used), 0);
        assert_int_equal(wire_get_disk_bitmap(&m, &gc), 0);
        assert_int_equal(gc.disk, 1);
        assert_int_equal(gc.offset, 4096);
        assert_int_equal(gc.len, sizeof(bits));
        assert_memory_equal(gc.bits, bits, sizeof(bits));
        m.payload[0] = WIRE_MAX_DISKS; /* disk out of range */
        assert_int_equal(wire_get_disk_bitmap(&m, &gc), -EBADMSG);
        c.len = 0;
        assert_int_equal(wire_put_disk_bitmap(&b, &c), -EINVAL);

        wire_hash("abc", 3, hashes);
        wire_hash("abd", 3, hashes + WIRE_HASH_LEN);
        assert_memory_not_equal(hashes, hashes + WIRE_HASH_LEN, WIRE_HASH_LEN);
        wire_hash("abc", 3, hashes + 2 * WIRE_HASH_LEN);
        assert_memory_equal(hashes, hashes + 2 * WIRE_HASH_LEN, WIRE_HASH_LEN);
        struct wire_page_hashes ph = { .first_pfn = 10, .count = 3, .hashes = hashes }, gp;
        wire_buf_reset(&b);
        assert_int_equal(wire_put_page_hashes(&b, &ph), 0);
        assert_int_equal(parse_msg(&b, 0, &m, &used), 0);
        assert_int_equal(wire_get_page_hashes(&m, &gp), 0);
        assert_int_equal(gp.first_pfn, 10);
        assert_int_equal(gp.count, 3);
        assert_memory_equal(gp.hashes, hashes, sizeof(hashes));
        m.payload[8] = 4; /* count says 4, 3 present */
        assert_int_equal(wire_get_page_hashes(&m, &gp), -EBADMSG);

        memset(entries, 0xab, sizeof(entries));
        struct wire_disk_hashes dh = { .disk = 2, .count = 2, .entries = entries }, gd;
        wire_buf_reset(&b);
        assert_int_equal(wire_put_disk_hashes(&b, &dh), 0);
        assert_int_equal(parse_msg(&b, 0, &m, &used), 0);
        assert_int_equal(wire_get_disk_hashes(&m, &gd), 0);
        assert_int_equal(gd.disk, 2);
        assert_int_equal(gd.count, 2);
        assert_memory_equal(gd.entries, entries, sizeof(entries));
        m.payload[4] = 3;
        assert_int_equal(wire_get_disk_hashes(&m, &gd), -EBADMSG);

        struct wire_hashes_end e = { .pages = 65536, .blocks = { 1, 2, 3, 4 } }, ge;
        wire_buf_reset(&b);
        assert_int_equal(wire_put_hashes_end(&b, &e), 0);
        assert_int_equal(parse_msg(&b, 0, &m, &used), 0);
        assert_int_equal(wire_get_hashes_end(&m, &ge), 0);
        assert_int_equal(ge.pages, 65536);
        assert_int_equal(ge.blocks[3], 4);
        m.hdr.length -= 8;
        assert_int_equal(wire_get_hashes_end(&m, &ge), -EBADMSG);

        /* NET_FRAMES: every frame's length is checked */
        uint8_t frames[2 * 4 + 20 + 30] = { 0 };
        frames[0] = 20;
        frames[4 + 20] = 30;
        struct wire_net_frames nf = { .nic = 1, .count = 2, .frames = frames, .len = sizeof(frames) }, gn;
        wire_buf_reset(&b);
        assert_int_equal(wire_put_net_frames(&b, 7, &nf), 0);
        assert_int_equal(parse_msg(&b, 0, &m, &used), 0);
        assert_int_equal(wire_get_net_frames(&m, &gn), 0);
        assert_int_equal(gn.nic, 1);
        assert_int_equal(gn.count, 2);
        assert_int_equal(gn.len, sizeof(frames));
        m.payload[8 + 4 + 20] = 31; /* the second frame runs past the end */
        assert_int_equal(wire_get_net_frames(&m, &gn), -EBADMSG);
        m.payload[8 + 4 + 20] = 5;  /* shorter than an Ethernet header */
        assert_int_equal(wire_get_net_frames(&m, &gn), -EBADMSG);
        m.payload[8 + 4 + 20] = 30;
        m.payload[4] = 3;           /* count says 3 */
        assert_int_equal(wire_get_net_frames(&m, &gn), -EBADMSG);

        /* WELCOME: unknown flags are refused */
        struct wire_welcome w = { .flags = WIRE_WELCOME_PAGE_HASHES | WIRE_WELCOME_DISK_INCR(3),
                                  .generation = 1 }, gw;
        wire_buf_reset(&b);
        assert_int_equal(wire_put_welcome(&b, &w), 0);
        assert_int_equal(parse_msg(&b, 0, &m, &used), 0);
        assert_int_equal(wire_get_welcome(&m, &gw), 0);
        assert_int_equal(gw.flags, w.flags);
        w.flags = 2;
        wire_buf_reset(&b);
        assert_int_equal(wire_put_welcome(&b, &w), 0);
        assert_int_equal(parse_msg(&b, 0, &m, &used), 0);
        assert_int_equal(wire_get_welcome(&m, &gw), -EBADMSG);
        wire_msg_free(&m);
        wire_buf_free(&b);
}

static void test_disk_records_roundtrip(void **state)
{
        struct wire_buf b = { 0 };
        static uint8_t data[8192], lz[50];
        memset(data, 0x5a, sizeof(data));
        assert_int_equal(wire_disk_begin(&b, 17, 1), 0);
        struct wire_disk_rec w = { .op = 1, .enc = WIRE_PAGE_RAW, .raw_len = 8192,
                                   .offset = 1 << 20, .len = 8192, .data = data };
        struct wire_disk_rec l = { .op = 1, .enc = WIRE_PAGE_LZ4, .raw_len = 4096,
                                   .offset = 0, .len = sizeof(lz), .data = lz };
        struct wire_disk_rec z = { .op = 2, .enc = WIRE_PAGE_ZERO, .raw_len = 65536, .offset = 4096 };
        struct wire_disk_rec t = { .op = 3, .enc = WIRE_PAGE_ZERO, .raw_len = 512, .offset = 512 };
        assert_int_equal(wire_disk_add(&b, &w), 0);
        assert_int_equal(wire_disk_add(&b, &l), 0);
        assert_int_equal(wire_disk_add(&b, &z), 0);
        assert_int_equal(wire_disk_add(&b, &t), 0);
        /* refused when building: zero with data, unknown op, oversized */
        struct wire_disk_rec bad = z;
        bad.len = 1;
        assert_int_equal(wire_disk_add(&b, &bad), -EINVAL);
        bad = w;
        bad.op = 9;
        assert_int_equal(wire_disk_add(&b, &bad), -EINVAL);
        bad.op = 1;
        bad.raw_len = bad.len = WIRE_DISK_REC_MAX + 1;
        assert_int_equal(wire_disk_add(&b, &bad), -EINVAL);
        assert_int_equal(wire_finish(&b), 0);

        struct wire_msg m = { 0 };
        size_t used;
        assert_int_equal(parse_msg(&b, 0, &m, &used), 0);
        assert_int_equal(m.hdr.epoch, 17);
        struct wire_disk_iter it;
        struct wire_disk_rec r;
        assert_int_equal(wire_disk_iter_init(&it, &m), 0);
        assert_int_equal(it.disk, 1);
        const struct wire_disk_rec *want[] = { &w, &l, &z, &t };
        for (int i = 0; i < 4; i++) {
                assert_int_equal(wire_disk_next(&it, &r), 1);
                assert_int_equal(r.op, want[i]->op);
                assert_int_equal(r.enc, want[i]->enc);
                assert_int_equal(r.offset, want[i]->offset);
                assert_int_equal(r.raw_len, want[i]->raw_len);
                assert_int_equal(r.len, want[i]->len);
                if (r.len)
                        assert_memory_equal(r.data, want[i]->data, r.len);
        }
        assert_int_equal(wire_disk_next(&it, &r), 0);

        /* a count that lies, a bad disk number, a corrupt entry */
        m.payload[4] = 5;
        assert_int_equal(wire_disk_iter_init(&it, &m), 0);
        int k;
        while ((k = wire_disk_next(&it, &r)) == 1)
                ;
        assert_int_equal(k, -EBADMSG);
        m.payload[4] = 4;
        m.payload[0] = WIRE_MAX_DISKS;
        assert_int_equal(wire_disk_iter_init(&it, &m), -EBADMSG);
        m.payload[0] = 1;
        m.payload[8 + 2] = 1; /* pad byte of the first entry */
        assert_int_equal(wire_disk_iter_init(&it, &m), 0);
        assert_int_equal(wire_disk_next(&it, &r), -EBADMSG);
        wire_msg_free(&m);

        /* SYNC_DISK: a PAGES record with a disk number */
        wire_buf_reset(&b);
        assert_int_equal(wire_disk_pages_begin(&b, 2), 0);
        assert_int_equal(wire_pages_add(&b, 7, WIRE_PAGE_ZERO, NULL, 0), 0);
        assert_int_equal(wire_pages_add(&b, 8, WIRE_PAGE_RAW, data, 4096), 0);
        assert_int_equal(wire_finish(&b), 0);
        assert_int_equal(parse_msg(&b, 0, &m, &used), 0);
        struct wire_pages_iter pi;
        struct wire_page pg;
        assert_int_equal(wire_pages_iter_init(&pi, &m), 0);
        assert_int_equal(pi.disk, 2);
        assert_int_equal(wire_pages_next(&pi, &pg), 1);
        assert_int_equal(pg.pfn, 7);
        assert_int_equal(wire_pages_next(&pi, &pg), 1);
        assert_int_equal(pg.pfn, 8);
        assert_int_equal(wire_pages_next(&pi, &pg), 0);
        wire_msg_free(&m);
        wire_buf_free(&b);
}

static void test_small_records_roundtrip(void **state)
{
        struct wire_buf b = { 0 };
        struct wire_welcome w = { .last_committed = 7, .flags = 0, .generation = 42 };
        struct wire_epoch_end e = { .pages = 3, .devstate_bytes = 585000, .stop_wall_ms = 99,
                                    .disk_recs = 4, .disk_bytes = 12288 };
        struct wire_ack a = { .pages_applied = 3 };
        assert_int_equal(wire_put_welcome(&b, &w), 0);
        assert_int_equal(wire_put_epoch_end(&b, 42, &e), 0);
        assert_int_equal(wire_put_ack(&b, 42, &a), 0);
        assert_int_equal(wire_put_error(&b, WIRE_ERR_MISMATCH, "sizes differ"), 0);

        struct wire_msg m = { 0 };
        size_t off = 0, used;
        assert_int_equal(parse_msg(&b, off, &m, &used), 0);
        struct wire_welcome w2;
        assert_int_equal(wire_get_welcome(&m, &w2), 0);
        assert_int_equal(w2.last_committed, 7);
        assert_int_equal(w2.generation, 42);
        /* the reserved word must be zero; a version-2 WELCOME (12 bytes) is refused */
        m.payload[12] = 1;
        assert_int_equal(wire_get_welcome(&m, &w2), -EBADMSG);
        m.payload[12] = 0;
        m.hdr.length = 12;
        assert_int_equal(wire_get_welcome(&m, &w2), -EBADMSG);
        off += used;
        assert_int_equal(parse_msg(&b, off, &m, &used), 0);
        struct wire_epoch_end e2;
        assert_int_equal(wire_get_epoch_end(&m, &e2), 0);
        assert_int_equal(m.hdr.epoch, 42);
        assert_int_equal(e2.pages, 3);
        assert_int_equal(e2.devstate_bytes, 585000);
        assert_int_equal(e2.stop_wall_ms, 99);
        assert_int_equal(e2.disk_recs, 4);
        assert_int_equal(e2.disk_bytes, 12288);
        off += used;
        assert_int_equal(parse_msg(&b, off, &m, &used), 0);
        struct wire_ack a2;
        assert_int_equal(wire_get_ack(&m, &a2), 0);
        assert_int_equal(a2.pages_applied, 3);
        off += used;
        assert_int_equal(parse_msg(&b, off, &m, &used), 0);
        struct wire_error er;
        assert_int_equal(wire_get_error(&m, &er), 0);
        assert_int_equal(er.code, WIRE_ERR_MISMATCH);
        assert_string_equal(er.text, "sizes differ");
        off += used;
        assert_int_equal(off, b.len);
        wire_msg_free(&m);
        wire_buf_free(&b);
}

static void build_pages(struct wire_buf *b, uint64_t epoch)
{
        static uint8_t raw[4096], lz[100];
        memset(raw, 0xab, sizeof(raw));
        memset(lz, 7, sizeof(lz));
        assert_int_equal(wire_pages_begin(b, WIRE_EPOCH_PAGES, epoch), 0);
        assert_int_equal(wire_pages_add(b, 5, WIRE_PAGE_ZERO, NULL, 0), 0);
        assert_int_equal(wire_pages_add(b, 9, WIRE_PAGE_RAW, raw, 4096), 0);
        assert_int_equal(wire_pages_add(b, 11, WIRE_PAGE_LZ4, lz, sizeof(lz)), 0);
        assert_int_equal(wire_finish(b), 0);
}

static void test_pages_roundtrip(void **state)
{
        struct wire_buf b = { 0 };
        build_pages(&b, 3);
        struct wire_msg m = { 0 };
        size_t used;
        assert_int_equal(parse_msg(&b, 0, &m, &used), 0);
        assert_int_equal(m.hdr.epoch, 3);
        struct wire_pages_iter it;
        struct wire_page pg;
        assert_int_equal(wire_pages_iter_init(&it, &m), 0);
        assert_int_equal(wire_pages_next(&it, &pg), 1);
        assert_int_equal(pg.pfn, 5);
        assert_int_equal(pg.enc, WIRE_PAGE_ZERO);
        assert_int_equal(wire_pages_next(&it, &pg), 1);
        assert_int_equal(pg.pfn, 9);
        assert_int_equal(pg.len, 4096);
        assert_int_equal(pg.data[100], 0xab);
        assert_int_equal(wire_pages_next(&it, &pg), 1);
        assert_int_equal(pg.pfn, 11);
        assert_int_equal(pg.len, 100);
        assert_int_equal(wire_pages_next(&it, &pg), 0);
        wire_msg_free(&m);
        wire_buf_free(&b);
}

static void test_devstate_roundtrip(void **state)
{
        struct wire_buf b = { 0 };
        uint8_t data[300];
        memset(data, 1, sizeof(data));
        struct wire_devstate d = { .offset = 1 << 20, .raw_len = 300, .enc = WIRE_PAGE_RAW,
                                   .len = 300, .data = data };
        assert_int_equal(wire_put_devstate(&b, 8, &d), 0);
        struct wire_msg m = { 0 };
        size_t used;
        assert_int_equal(parse_msg(&b, 0, &m, &used), 0);
        struct wire_devstate g;
        assert_int_equal(wire_get_devstate(&m, &g), 0);
        assert_int_equal(g.offset, 1 << 20);
        assert_int_equal(g.raw_len, 300);
        assert_memory_equal(g.data, data, 300);
        wire_msg_free(&m);
        /* v6: a delta chunk travels as it is */
        wire_buf_reset(&b);
        d = (struct wire_devstate){ .offset = 0, .raw_len = 600000, .enc = WIRE_PAGE_XOR_LZ4,
                                    .len = 300, .data = data };
        assert_int_equal(wire_put_devstate(&b, 9, &d), 0);
        assert_int_equal(parse_msg(&b, 0, &m, &used), 0);
        assert_int_equal(wire_get_devstate(&m, &g), 0);
        assert_int_equal(g.enc, WIRE_PAGE_XOR_LZ4);
        assert_int_equal(g.raw_len, 600000);
        assert_int_equal(g.len, 300);
        assert_memory_equal(g.data, data, 300);
        wire_msg_free(&m);
        wire_buf_free(&b);
}

/* Flip every single byte of a record in turn: every flip must be caught
 * (header checks or the checksum), never accepted. */
static void test_every_byte_flip_rejected(void **state)
{
        struct wire_buf b = { 0 };
        build_pages(&b, 3);
        for (size_t i = 0; i < b.len; i++) {
                struct wire_hdr h;
                const uint8_t *p;
                size_t used;
                b.data[i] ^= 0x40;
                int r = wire_parse(b.data, b.len, &h, &p, &used);
                assert_true(r == -EBADMSG || r == -EAGAIN); /* a length grown past the buffer waits */
                b.data[i] ^= 0x40;
        }
        wire_buf_free(&b);
}

static void test_truncated_rejected(void **state)
{
        struct wire_buf b = { 0 };
        build_pages(&b, 3);
        for (size_t n = 0; n < b.len; n++) {
                struct wire_hdr h;
                const uint8_t *p;
                size_t used;
                assert_int_equal(wire_parse(b.data, n, &h, &p, &used), -EAGAIN);
        }
        wire_buf_free(&b);
}

/* Corrupt records over a real socket: wire_recv says -EBADMSG or -EPIPE,
 * never crashes, never returns a record. */
static void test_recv_corrupt_and_truncated(void **state)
{
        struct wire_buf b = { 0 };
        build_pages(&b, 3);
        struct {
                size_t off;
                uint8_t xor;
                size_t cut; /* send only this many bytes (0 = all) */
                int want;
        } cases[] = {
                { 0, 0xff, 0, -EBADMSG },      /* magic */
                { 4, 0x01, 0, -EBADMSG },      /* version */
                { 6, 0x20, 0, -EBADMSG },      /* type */
                { 11, 0x10, 0, -EBADMSG },     /* length over the maximum */
                { 12, 0x01, 0, -EBADMSG },     /* flags */
                { 16, 0x01, 0, -EBADMSG },     /* epoch: checksum catches it */
                { 40, 0x01, 0, -EBADMSG },     /* payload */
                { 0, 0, 20, -EPIPE },          /* cut inside the header */
                { 0, 0, 100, -EPIPE },         /* cut inside the payload */
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                int sv[2];
                assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
                uint8_t *copy = malloc(b.len);
                memcpy(copy, b.data, b.len);
                copy[cases[i].off] ^= cases[i].xor;
                size_t n = cases[i].cut ? cases[i].cut : b.len;
                assert_int_equal(write(sv[0], copy, n), (ssize_t)n);
                close(sv[0]);
                struct wire_msg m = { 0 };
                assert_int_equal(wire_recv(sv[1], 0, &m), cases[i].want);
                wire_msg_free(&m);
                close(sv[1]);
                free(copy);
        }
        wire_buf_free(&b);
}

/* Well-formed records whose payload lies about its contents. */
static void test_payload_lies_rejected(void **state)
{
        struct wire_msg m = { 0 };
        struct wire_pages_iter it;
        struct wire_page pg;
        uint8_t pl[64] = { 0 };
        m.payload = pl;
        m.hdr.type = WIRE_EPOCH_PAGES;

        /* count says 2, one entry present */
        m.hdr.length = 8 + 16;
        pl[0] = 2;
        assert_int_equal(wire_pages_iter_init(&it, &m), 0);
        assert_int_equal(wire_pages_next(&it, &pg), 1);
        assert_int_equal(wire_pages_next(&it, &pg), -EBADMSG);

        /* entry claims more data than there is */
        memset(pl, 0, sizeof(pl));
        pl[0] = 1;
        pl[8 + 8] = WIRE_PAGE_LZ4;
        pl[8 + 12] = 200;
        m.hdr.length = 8 + 16 + 10;
        assert_int_equal(wire_pages_iter_init(&it, &m), 0);
        assert_int_equal(wire_pages_next(&it, &pg), -EBADMSG);

        /* unknown encoding; raw page of the wrong size; zero page with data */
        uint8_t bad[][2] = { { 9, 0 }, { WIRE_PAGE_RAW, 100 }, { WIRE_PAGE_ZERO, 4 } };
        for (size_t i = 0; i < 3; i++) {
                memset(pl, 0, sizeof(pl));
                pl[0] = 1;
                pl[8 + 8] = bad[i][0];
                pl[8 + 12] = bad[i][1];
                m.hdr.length = 8 + 16 + bad[i][1];
                assert_int_equal(wire_pages_iter_init(&it, &m), 0);
                assert_int_equal(wire_pages_next(&it, &pg), -EBADMSG);
        }

        /* trailing bytes after the last entry */
        memset(pl, 0, sizeof(pl));
        pl[0] = 0;
        m.hdr.length = 8 + 5;
        assert_int_equal(wire_pages_iter_init(&it, &m), 0);
        assert_int_equal(wire_pages_next(&it, &pg), -EBADMSG);

        /* devstate: raw chunk whose length disagrees; unknown encoding */
        memset(pl, 0, sizeof(pl));
        m.hdr.type = WIRE_EPOCH_DEVSTATE;
        m.hdr.length = 16 + 10;
        pl[8] = 20; /* raw_len 20 */
        pl[12] = WIRE_PAGE_RAW;
        struct wire_devstate d;
        assert_int_equal(wire_get_devstate(&m, &d), -EBADMSG);
        pl[8] = 10;
        pl[12] = 77;
        assert_int_equal(wire_get_devstate(&m, &d), -EBADMSG);
        /* v6: XOR_LZ4 is allowed, but a compressed chunk must be smaller
         * than its raw length and not empty */
        pl[8] = 20;
        pl[12] = WIRE_PAGE_XOR_LZ4;
        assert_int_equal(wire_get_devstate(&m, &d), 0);
        assert_int_equal(d.enc, WIRE_PAGE_XOR_LZ4);
        assert_int_equal(d.len, 10);
        pl[8] = 10; /* len == raw_len */
        assert_int_equal(wire_get_devstate(&m, &d), -EBADMSG);
        pl[12] = WIRE_PAGE_LZ4;
        assert_int_equal(wire_get_devstate(&m, &d), -EBADMSG);
        pl[8] = 20;
        m.hdr.length = 16; /* no data */
        assert_int_equal(wire_get_devstate(&m, &d), -EBADMSG);
        pl[12] = WIRE_PAGE_XOR_LZ4;
        assert_int_equal(wire_get_devstate(&m, &d), -EBADMSG);
        pl[12] = WIRE_PAGE_ZERO;
        assert_int_equal(wire_get_devstate(&m, &d), -EBADMSG);
        m.hdr.length = 16 + 10;

        /* fixed-size records of the wrong size */
        m.hdr.type = WIRE_ACK;
        m.hdr.length = 7;
        struct wire_ack a;
        assert_int_equal(wire_get_ack(&m, &a), -EBADMSG);
        m.hdr.type = WIRE_EPOCH_END;
        m.hdr.length = 25;
        struct wire_epoch_end e;
        assert_int_equal(wire_get_epoch_end(&m, &e), -EBADMSG);
}

static void test_oversize_refused_when_building(void **state)
{
        struct wire_buf b = { 0 };
        static uint8_t page[4096];
        assert_int_equal(wire_pages_begin(&b, WIRE_SYNC_PAGES, 0), 0);
        int r = 0;
        size_t n = 0;
        while ((r = wire_pages_add(&b, n, WIRE_PAGE_RAW, page, 4096)) == 0)
                n++;
        assert_int_equal(r, -EMSGSIZE);
        assert_true(n * (4096 + 16) <= WIRE_MAX_PAYLOAD);
        assert_int_equal(wire_finish(&b), 0);
        wire_buf_free(&b);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_hello_roundtrip),
                cmocka_unit_test(test_hello_disks),
                cmocka_unit_test(test_disk_records_roundtrip),
                cmocka_unit_test(test_small_records_roundtrip),
                cmocka_unit_test(test_pages_roundtrip),
                cmocka_unit_test(test_devstate_roundtrip),
                cmocka_unit_test(test_reseed_records),
                cmocka_unit_test(test_every_byte_flip_rejected),
                cmocka_unit_test(test_truncated_rejected),
                cmocka_unit_test(test_recv_corrupt_and_truncated),
                cmocka_unit_test(test_payload_lies_rejected),
                cmocka_unit_test(test_oversize_refused_when_building),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
