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
#include <lz4.h>

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

/* prev: reproducible random bytes; page: a copy of it, to change */
static void random_prev(unsigned seed)
{
        srand(seed);
        for (int i = 0; i < 4096; i++)
                prev[i] = (uint8_t)rand();
        memcpy(page, prev, sizeof(page));
}

static void test_zero_page(void **state)
{
        memset(page, 0, sizeof(page));
        roundtrip(page, NULL, WIRE_PAGE_ZERO, 0);
        /* against a copy: zeroed since, or zero already */
        for (int i = 0; i < 4096; i++)
                prev[i] = (uint8_t)i;
        roundtrip(page, prev, WIRE_PAGE_ZERO, 0);
        prev[0] = 0;
        memset(prev + 8, 0, sizeof(prev) - 8);
        roundtrip(page, prev, WIRE_PAGE_ZERO, 0);
        memset(prev, 0, sizeof(prev));
        roundtrip(page, prev, WIRE_PAGE_ZERO, 0);
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

/* A random page with a few small changes: only the changed bytes go. */
static void test_sparse_change_is_runs(void **state)
{
        random_prev(2);
        for (int i = 100; i < 164; i++)
                page[i] = (uint8_t)i;
        page[4000] ^= 1;
        roundtrip(page, prev, WIRE_PAGE_RUNS, 80);
        /* written with what it held: an empty run list */
        roundtrip(prev, prev, WIRE_PAGE_RUNS, 1);
}

/* A change in every word is too dense for runs; its XOR is sparse. A
 * change thin enough for a run list but spread over many words (one byte
 * in each of 120) XORs to far less than its runs: XOR_LZ4 wins. */
static void test_dense_change_is_xor_delta(void **state)
{
        random_prev(5);
        for (int i = 3; i < 4096; i += 8)
                page[i] ^= 1;
        roundtrip(page, prev, WIRE_PAGE_XOR_LZ4, 200);
        random_prev(5);
        for (int i = 0; i < 120; i++)
                page[8 * i + 2] ^= 0x10;
        roundtrip(page, prev, WIRE_PAGE_XOR_LZ4, 64);
}

/* Runs anywhere in the page, of any length, at the edges, adjacent or
 * one byte apart: every one round-trips, also decoded in place. */
static void test_runs_everywhere(void **state)
{
        srand(6);
        int seen_runs = 0;
        for (int t = 0; t < 3000; t++) {
                for (int i = 0; i < 4096; i++)
                        prev[i] = (uint8_t)(rand() % 4); /* compressible, with equal bytes */
                memcpy(page, prev, sizeof(page));
                int runs = rand() % 6;
                for (int r = 0; r < runs; r++) {
                        int len = 1 + rand() % (t % 3 ? 40 : 400);
                        int off = t % 7 == 0 ? 0 : t % 7 == 1 ? 4096 - len : rand() % (4096 - len + 1);
                        for (int i = off; i < off + len; i++)
                                page[i] = (uint8_t)(rand() % 4);
                }
                uint8_t enc;
                uint32_t len;
                assert_int_equal(codec_page_encode(page, prev, out, scratch, &enc, &len), 0);
                seen_runs += enc == WIRE_PAGE_RUNS;
                memcpy(dec, prev, sizeof(dec));
                assert_int_equal(codec_page_decode(enc, out, len, prev, dec), 0);
                assert_memory_equal(dec, page, 4096);
                if (enc != WIRE_PAGE_RUNS)
                        continue;
                memcpy(dec, prev, sizeof(dec));
                assert_int_equal(codec_page_decode(enc, out, len, dec, dec), 0);
                assert_memory_equal(dec, page, 4096);
        }
        assert_true(seen_runs > 2000);
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
        random_prev(4);
        page[7] ^= 0xff;
        uint8_t enc;
        uint32_t len;
        assert_int_equal(codec_page_encode(page, prev, out, scratch, &enc, &len), 0);
        assert_int_equal(enc, WIRE_PAGE_RUNS);
        /* the backup decodes into the replica page itself */
        assert_int_equal(codec_page_decode(enc, out, len, prev, prev), 0);
        assert_memory_equal(prev, page, 4096);
        /* the same for a dense change (XOR_LZ4) */
        memcpy(prev, page, sizeof(prev));
        for (int i = 3; i < 4096; i += 8)
                page[i] ^= 1;
        assert_int_equal(codec_page_encode(page, prev, out, scratch, &enc, &len), 0);
        assert_int_equal(enc, WIRE_PAGE_XOR_LZ4);
        assert_int_equal(codec_page_decode(enc, out, len, prev, prev), 0);
        assert_memory_equal(prev, page, 4096);
}

/* LZ4 of a hand-made run list */
static uint32_t runs_record(const uint8_t *list, int n, uint8_t *rec)
{
        int len = LZ4_compress_default((const char *)list, (char *)rec, n, 4095);
        assert_true(len > 0);
        return (uint32_t)len;
}

/* Bad run lists are refused and leave the page as it was (decoded in
 * place, as the standby does for a page sent twice in an epoch). */
static void test_bad_runs_refused(void **state)
{
        static const struct {
                uint8_t list[8];
                int n;
        } bad[] = {
                { { 0, 0 }, 2 },                   /* a run of no bytes */
                { { 0, 3, 1, 2 }, 4 },             /* its bytes cut short */
                { { 0x80, 0x20, 1, 9 }, 4 },       /* starts at the page end */
                { { 0xfe, 0x1f, 2, 9, 9 }, 5 },     /* 4094 + 2 ends at the page end: good */
                { { 0x80, 0x80, 0x01, 1, 9 }, 5 }, /* a number of three bytes */
                { { 0, 1, 9, 0x80 }, 4 },          /* a number cut short */
                { { 0, 1, 9, 0xff, 0x1f, 1, 9 }, 7 }, /* the second run past the end */
                { { 0, 1, 9, 0x80, 0x20, 1, 9 }, 7 }, /* the second run starts past it */
                { { 0xff, 0x7f, 1, 9 }, 4 },       /* far past it */
        };
        uint8_t rec[64], keep[4096];
        random_prev(8);
        memcpy(keep, prev, sizeof(keep));
        for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
                uint32_t len = runs_record(bad[k].list, bad[k].n, rec);
                int want = k == 3 ? 0 : -EBADMSG;
                assert_int_equal(codec_page_decode(WIRE_PAGE_RUNS, rec, len, prev, prev), want);
                if (want == 0) {
                        assert_int_equal(prev[4094], 9);
                        assert_int_equal(prev[4095], 9);
                        assert_memory_equal(prev, keep, 4094);
                        memcpy(prev, keep, sizeof(prev));
                        continue;
                }
                assert_memory_equal(prev, keep, 4096);
        }
        /* no copy to apply it to; not LZ4 at all */
        uint8_t good[] = { 5, 1, 7 };
        uint32_t len = runs_record(good, sizeof(good), rec);
        assert_int_equal(codec_page_decode(WIRE_PAGE_RUNS, rec, len, NULL, dec), -EBADMSG);
        uint8_t junk[64];
        memset(junk, 0xee, sizeof(junk));
        assert_int_equal(codec_page_decode(WIRE_PAGE_RUNS, junk, sizeof(junk), prev, prev), -EBADMSG);
        assert_memory_equal(prev, keep, 4096);
        /* lists of a page and more: one whole-page run is 4098 bytes (a
         * decoder reading more than a page of list would apply it); a
         * page of list ending in half a number */
        uint8_t *big = calloc(1, 5000), *bigrec = malloc(LZ4_compressBound(5000));
        big[0] = 0;
        big[1] = 0x80;
        big[2] = 0x20;
        memset(big + 3, 9, 4096);
        int blen = LZ4_compress_default((const char *)big, (char *)bigrec, 4099, LZ4_compressBound(5000));
        assert_true(blen > 0 && blen < 4096);
        assert_int_equal(codec_page_decode(WIRE_PAGE_RUNS, bigrec, (uint32_t)blen, prev, prev), -EBADMSG);
        assert_memory_equal(prev, keep, 4096);
        memset(big, 0, 5000);
        for (int i = 0; i + 3 <= 4095; i += 3) { /* runs of one byte, no skip */
                big[i + 1] = 1;
                big[i + 2] = 7;
        }
        big[4095] = 0x80;
        blen = LZ4_compress_default((const char *)big, (char *)bigrec, 4096, LZ4_compressBound(5000));
        assert_true(blen > 0 && blen < 4096);
        assert_int_equal(codec_page_decode(WIRE_PAGE_RUNS, bigrec, (uint32_t)blen, prev, prev), -EBADMSG);
        assert_memory_equal(prev, keep, 4096);
        blen = LZ4_compress_default((const char *)big, (char *)bigrec, 4095, LZ4_compressBound(5000));
        assert_int_equal(codec_page_decode(WIRE_PAGE_RUNS, bigrec, (uint32_t)blen, prev, dec), 0);
        assert_memory_equal(dec + 1365, keep + 1365, 4096 - 1365); /* 1365 runs of one byte */
        for (int i = 0; i < 1365; i++)
                assert_int_equal(dec[i], 7);
        free(big);
        free(bigrec);
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
                cmocka_unit_test(test_sparse_change_is_runs),
                cmocka_unit_test(test_dense_change_is_xor_delta),
                cmocka_unit_test(test_runs_everywhere),
                cmocka_unit_test(test_full_change_falls_back),
                cmocka_unit_test(test_decode_in_place),
                cmocka_unit_test(test_bad_input_refused),
                cmocka_unit_test(test_bad_runs_refused),
                cmocka_unit_test(test_chunk_roundtrip),
                cmocka_unit_test(test_chunk_delta),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
