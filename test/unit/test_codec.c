/* Page codec: every encoding round-trips, the encoder picks the smallest,
 * and bad input is refused. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "codec.h"

static uint8_t page[4096], prev[4096], out[4096], scratch[4096], dec[4096];

static void roundtrip(const uint8_t *pg, const uint8_t *pv, uint8_t want_enc, uint32_t max_len)
{
        uint8_t enc;
        uint32_t len;
        assert_int_equal(codec_page_encode(pg, pv, out, scratch, &enc, &len), 0);
        assert_int_equal(enc, want_enc);
        assert_true(len <= max_len);
        memset(dec, 0x5a, sizeof(dec));
        assert_int_equal(codec_page_decode(enc, out, len, pv, dec), 0);
        assert_memory_equal(dec, pg, 4096);
}

static void test_zero_page(void **state)
{
        memset(page, 0, sizeof(page));
        roundtrip(page, NULL, WIRE_PAGE_ZERO, 0);
}

static void test_random_page_is_raw(void **state)
{
        srand(1);
        for (int i = 0; i < 4096; i++)
                page[i] = (uint8_t)rand();
        roundtrip(page, NULL, WIRE_PAGE_RAW, 4096);
}

static void test_text_page_is_lz4(void **state)
{
        for (int i = 0; i < 4096; i++)
                page[i] = "havms checkpoint "[i % 17];
        roundtrip(page, NULL, WIRE_PAGE_LZ4, 200);
}

/* A random page with a few small changes: the XOR delta is tiny. */
static void test_sparse_change_is_xor_delta(void **state)
{
        srand(2);
        for (int i = 0; i < 4096; i++)
                prev[i] = (uint8_t)rand();
        memcpy(page, prev, sizeof(page));
        for (int i = 100; i < 164; i++)
                page[i] = (uint8_t)i;
        page[4000] ^= 1;
        roundtrip(page, prev, WIRE_PAGE_XOR_LZ4, 150);
}

/* Changed everywhere: the delta does not help, the page is sent as is. */
static void test_full_change_falls_back(void **state)
{
        srand(3);
        for (int i = 0; i < 4096; i++) {
                prev[i] = (uint8_t)rand();
                page[i] = (uint8_t)rand();
        }
        roundtrip(page, prev, WIRE_PAGE_RAW, 4096);
}

static void test_decode_in_place(void **state)
{
        srand(4);
        for (int i = 0; i < 4096; i++)
                prev[i] = (uint8_t)rand();
        memcpy(page, prev, sizeof(page));
        page[7] ^= 0xff;
        uint8_t enc;
        uint32_t len;
        assert_int_equal(codec_page_encode(page, prev, out, scratch, &enc, &len), 0);
        assert_int_equal(enc, WIRE_PAGE_XOR_LZ4);
        /* the backup decodes into the replica page itself */
        assert_int_equal(codec_page_decode(enc, out, len, prev, prev), 0);
        assert_memory_equal(prev, page, 4096);
}

static void test_bad_input_refused(void **state)
{
        uint8_t junk[64];
        memset(junk, 0xee, sizeof(junk));
        assert_int_equal(codec_page_decode(WIRE_PAGE_LZ4, junk, sizeof(junk), NULL, dec), -EBADMSG);
        assert_int_equal(codec_page_decode(WIRE_PAGE_XOR_LZ4, junk, sizeof(junk), NULL, dec), -EBADMSG);
        assert_int_equal(codec_page_decode(WIRE_PAGE_RAW, junk, sizeof(junk), NULL, dec), -EBADMSG);
        assert_int_equal(codec_page_decode(WIRE_PAGE_ZERO, junk, 1, NULL, dec), -EBADMSG);
        assert_int_equal(codec_page_decode(42, junk, 0, NULL, dec), -EBADMSG);
        /* a valid LZ4 block that decodes to less than a page */
        uint8_t small[100];
        memset(small, 1, sizeof(small));
        uint8_t enc;
        uint32_t len;
        uint8_t big[200];
        assert_int_equal(codec_chunk_encode(small, sizeof(small), big, &enc, &len), 0);
        assert_int_equal(enc, WIRE_PAGE_LZ4);
        assert_int_equal(codec_page_decode(WIRE_PAGE_LZ4, big, len, NULL, dec), -EBADMSG);
}

static void test_chunk_roundtrip(void **state)
{
        size_t n = 600000;
        uint8_t *in = malloc(n), *enc_buf = malloc(codec_chunk_bound(n)), *back = malloc(n);
        for (size_t i = 0; i < n; i++)
                in[i] = (uint8_t)(i % 251 < 200 ? 0 : i);
        uint8_t enc;
        uint32_t len;
        assert_int_equal(codec_chunk_encode(in, n, enc_buf, &enc, &len), 0);
        assert_int_equal(enc, WIRE_PAGE_LZ4);
        assert_true(len < n / 2);
        assert_int_equal(codec_chunk_decode(enc, enc_buf, len, back, (uint32_t)n), 0);
        assert_memory_equal(in, back, n);
        /* wrong raw length is refused */
        assert_int_equal(codec_chunk_decode(enc, enc_buf, len, back, (uint32_t)n - 1), -EBADMSG);
        free(in);
        free(enc_buf);
        free(back);
}

/* xorshift: incompressible bytes, reproducible */
static void fill_random(uint8_t *p, size_t n, uint64_t seed)
{
        uint64_t x = seed | 1;
        for (size_t i = 0; i < n; i++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                p[i] = (uint8_t)(x >> 32);
        }
}

/* A device state that changed in a few bytes travels as a delta of a few
 * dozen bytes, and decodes against the base without touching it. */
static void test_chunk_delta(void **state)
{
        size_t n = 600000, nb = 590000; /* the state grew by 10000 bytes */
        uint8_t *base = malloc(n), *keep = malloc(n), *in = malloc(n);
        uint8_t *dst = malloc(codec_chunk_bound(n)), *scr = malloc(codec_chunk_bound(n));
        uint8_t *back = malloc(n);
        fill_random(base, nb, 7);
        memcpy(keep, base, nb);
        memcpy(in, base, nb);
        for (size_t i = 0; i < 32; i++)
                in[(i * 18181) % nb] ^= 0x5a;
        memset(in + nb, 0, n - nb); /* past the base: XOR with zeros */
        in[n - 1] = 9;
        uint8_t enc;
        uint32_t len;
        assert_int_equal(codec_chunk_encode_delta(in, n, base, nb, dst, scr, &enc, &len), 0);
        assert_int_equal(enc, WIRE_PAGE_XOR_LZ4);
        assert_true(len < 4000);
        assert_int_equal(codec_chunk_decode_delta(enc, dst, len, back, (uint32_t)n, base, nb), 0);
        assert_memory_equal(back, in, n);
        assert_memory_equal(base, keep, nb); /* the committed state is only read */
        /* no base: refused, whichever decoder */
        assert_int_equal(codec_chunk_decode_delta(enc, dst, len, back, (uint32_t)n, NULL, 0), -EBADMSG);
        assert_int_equal(codec_chunk_decode(enc, dst, len, back, (uint32_t)n), -EBADMSG);
        /* wrong raw length, cut data, empty data */
        assert_int_equal(codec_chunk_decode_delta(enc, dst, len, back, (uint32_t)n - 1, base, nb),
                         -EBADMSG);
        assert_int_equal(codec_chunk_decode_delta(enc, dst, len - 1, back, (uint32_t)n, base, nb),
                         -EBADMSG);
        assert_int_equal(codec_chunk_decode_delta(enc, dst, 0, back, (uint32_t)n, base, nb), -EBADMSG);
        assert_int_equal(codec_chunk_decode_delta(77, dst, len, back, (uint32_t)n, base, nb), -EBADMSG);
        assert_memory_equal(base, keep, nb);

        /* a base longer than the chunk: only its first n bytes count */
        uint32_t short_n = 1000;
        assert_int_equal(codec_chunk_encode_delta(in, short_n, base, nb, dst, scr, &enc, &len), 0);
        assert_int_equal(enc, WIRE_PAGE_XOR_LZ4);
        assert_int_equal(codec_chunk_decode_delta(enc, dst, len, back, short_n, base, nb), 0);
        assert_memory_equal(back, in, short_n);
        /* a chunk wholly past the base's end (base_len 0): LZ4 of itself */
        memset(in, 0, 4096);
        assert_int_equal(codec_chunk_encode_delta(in, 4096, base + nb, 0, dst, scr, &enc, &len), 0);
        assert_int_equal(codec_chunk_decode_delta(enc, dst, len, back, 4096, base + nb, 0), 0);
        assert_memory_equal(back, in, 4096);

        /* unrelated content: the delta does not help, the smallest wins */
        fill_random(in, n, 99);
        assert_int_equal(codec_chunk_encode_delta(in, n, base, nb, dst, scr, &enc, &len), 0);
        assert_int_equal(enc, WIRE_PAGE_RAW);
        assert_int_equal(len, n);
        assert_int_equal(codec_chunk_decode_delta(enc, dst, len, back, (uint32_t)n, base, nb), 0);
        assert_memory_equal(back, in, n);
        for (size_t i = 0; i < n; i++)
                in[i] = (uint8_t)(i % 251 < 200 ? 0 : i);
        assert_int_equal(codec_chunk_encode_delta(in, n, base, nb, dst, scr, &enc, &len), 0);
        assert_int_equal(enc, WIRE_PAGE_LZ4);
        assert_int_equal(codec_chunk_decode_delta(enc, dst, len, back, (uint32_t)n, NULL, 0), 0);
        assert_memory_equal(back, in, n);
        /* no base: plain encodings only */
        assert_int_equal(codec_chunk_encode_delta(in, n, NULL, 0, dst, scr, &enc, &len), 0);
        assert_int_equal(enc, WIRE_PAGE_LZ4);
        free(base);
        free(keep);
        free(in);
        free(dst);
        free(scr);
        free(back);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_zero_page),
                cmocka_unit_test(test_random_page_is_raw),
                cmocka_unit_test(test_text_page_is_lz4),
                cmocka_unit_test(test_sparse_change_is_xor_delta),
                cmocka_unit_test(test_full_change_falls_back),
                cmocka_unit_test(test_decode_in_place),
                cmocka_unit_test(test_bad_input_refused),
                cmocka_unit_test(test_chunk_roundtrip),
                cmocka_unit_test(test_chunk_delta),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
