#include "codec.h"

#include <errno.h>
#include <lz4.h>
#include <stdbool.h>
#include <string.h>

/* ---- RUNS: the changed bytes of a page, against the replica's copy ----
 *
 * A run list is a sequence of runs, each: skip (LEB128, bytes left as
 * they are since the end of the previous run, or since the page's start),
 * count (LEB128, at least 1), then count bytes that replace the page's
 * bytes there. The runs must end inside the page. Values are below 2^14,
 * so a number takes one or two bytes. The record carries the run list
 * LZ4-compressed; an empty list (the page was written with what it held)
 * is valid. */

#define RUNS_LIST_MAX CODEC_PAGE_MAX /* what a decoder accepts */
#define RUNS_ENCODE_MAX 1024u       /* denser changes go as XOR_LZ4 */
#define RUNS_SMALL 256              /* a RUNS record this big races XOR_LZ4 */

static uint8_t *put_num(uint8_t *o, unsigned v)
{
        if (v < 0x80) {
                *o++ = (uint8_t)v;
        } else {
                *o++ = (uint8_t)(v | 0x80);
                *o++ = (uint8_t)(v >> 7);
        }
        return o;
}

static int get_num(const uint8_t **p, const uint8_t *end, unsigned *v)
{
        if (*p >= end)
                return -EBADMSG;
        unsigned x = **p & 0x7f;
        if (*(*p)++ & 0x80) {
                if (*p >= end || (**p & 0x80))
                        return -EBADMSG;
                x |= (unsigned)*(*p)++ << 7;
        }
        *v = x;
        return 0;
}

/* The run list of page against prev into list (RUNS_ENCODE_MAX bytes):
 * its length, or -1 when the change needs more room than that. Runs are
 * the changed 8-byte words, consecutive ones joined, trimmed to the first
 * and last changed byte. *zero: whether the page is all zero (it was read
 * whole; only set when the list is returned). */
static int runs_build(const uint8_t *page, const uint8_t *prev, uint8_t *list, bool *zero)
{
        uint8_t *o = list, *end = list + RUNS_ENCODE_MAX;
        unsigned done = 0; /* end of the last run */
        uint64_t acc = 0;  /* every word of the page OR'ed */
        for (unsigned i = 0; i < CODEC_PAGE_MAX;) {
                uint64_t a, b;
                memcpy(&a, page + i, 8);
                memcpy(&b, prev + i, 8);
                acc |= a;
                if (a == b) {
                        i += 8;
                        continue;
                }
                unsigned j = i + 8;
                while (j < CODEC_PAGE_MAX) {
                        memcpy(&a, page + j, 8);
                        memcpy(&b, prev + j, 8);
                        acc |= a;
                        if (a == b)
                                break;
                        j += 8;
                }
                /* trimmed to the changed bytes; bounded, should the
                 * page change while it is read */
                unsigned s = i, e = j;
                while (s < e && page[s] == prev[s])
                        s++;
                while (e > s && page[e - 1] == prev[e - 1])
                        e--;
                unsigned n = e - s;
                if (n == 0) {
                        i = j;
                        continue;
                }
                if ((size_t)(end - o) < n + 4)
                        return -1;
                o = put_num(o, s - done);
                o = put_num(o, n);
                memcpy(o, page + s, n);
                o += n;
                done = e;
                i = j;
        }
        *zero = acc == 0;
        return (int)(o - list);
}

/* Walk a run list: with out NULL, only check it; else apply it to out,
 * which holds the replica's copy (check first: a bad list must leave out
 * as it was). */
static int runs_walk(const uint8_t *list, size_t len, uint8_t *out)
{
        const uint8_t *p = list, *end = list + len;
        unsigned pos = 0, skip, n;
        while (p < end) {
                if (get_num(&p, end, &skip) < 0 || get_num(&p, end, &n) < 0)
                        return -EBADMSG;
                if (n == 0 || skip > CODEC_PAGE_MAX - pos || n > CODEC_PAGE_MAX - pos - skip ||
                    n > (size_t)(end - p))
                        return -EBADMSG;
                pos += skip;
                if (out)
                        memcpy(out + pos, p, n);
                p += n;
                pos += n;
        }
        return 0;
}

int codec_page_encode(const uint8_t *page, const uint8_t *prev, uint8_t *out,
                      uint8_t *scratch, uint8_t *ret_enc, uint32_t *ret_len)
{
        /* the run list reads the whole page: it tells a zero page too */
        bool zero = false;
        int nruns = prev ? runs_build(page, prev, scratch, &zero) : -1;
        if (nruns < 0)
                zero = codec_page_is_zero(page);
        if (zero) {
                *ret_enc = WIRE_PAGE_ZERO;
                *ret_len = 0;
                return 0;
        }
        /* Guest writes are sparse: when the replica has a copy, the bytes
         * that changed are a few short runs. RUNS sends just those
         * (LZ4-compressed: guests write patterns). It costs about 60 % of
         * XOR_LZ4 to encode and a fifth to decode (docs/scale.md), but it
         * repeats the unchanged bytes of every changed 8-byte word: a
         * change spread thinly over many words (counters, flags) XORs to
         * far fewer bytes, so a run list that did not come out small is
         * raced against XOR_LZ4. Only fall back to compressing the page
         * itself when neither helps. */
        int best = CODEC_PAGE_MAX;
        uint8_t best_enc = WIRE_PAGE_RAW;
        if (nruns >= 0) {
                int n = LZ4_compress_default((const char *)scratch, (char *)out, nruns,
                                             (int)CODEC_PAGE_MAX - 1);
                if (n > 0 && n < best) {
                        best = n;
                        best_enc = WIRE_PAGE_RUNS;
                }
        }
        if (prev && best >= RUNS_SMALL) {
                /* word-wise through memcpy: callers' buffers need not be
                 * 8-byte aligned (the compiler makes this plain loads) */
                for (unsigned i = 0; i < CODEC_PAGE_MAX; i += 8) {
                        uint64_t a, b;
                        memcpy(&a, page + i, 8);
                        memcpy(&b, prev + i, 8);
                        a ^= b;
                        memcpy(scratch + i, &a, 8);
                }
                uint8_t alt[CODEC_PAGE_MAX];
                uint8_t *dst = best_enc != WIRE_PAGE_RAW ? alt : out;
                int n = LZ4_compress_default((const char *)scratch, (char *)dst,
                                             (int)CODEC_PAGE_MAX, best - 1);
                if (n > 0 && n < best) {
                        if (dst != out)
                                memcpy(out, dst, (size_t)n);
                        best = n;
                        best_enc = WIRE_PAGE_XOR_LZ4;
                }
        }
        /* a delta under an eighth of a page will not be beaten by
         * compressing the page: skip that attempt */
        if (best < (int)CODEC_PAGE_MAX / 8)
                goto done;
        {
                uint8_t *dst = best_enc != WIRE_PAGE_RAW ? scratch : out;
                int n = LZ4_compress_default((const char *)page, (char *)dst,
                                             (int)CODEC_PAGE_MAX,
                                             best < (int)CODEC_PAGE_MAX ? best - 1 : (int)CODEC_PAGE_MAX - 1);
                if (n > 0 && n < best) {
                        if (dst != out)
                                memcpy(out, dst, (size_t)n);
                        best = n;
                        best_enc = WIRE_PAGE_LZ4;
                }
        }
        if (best_enc == WIRE_PAGE_RAW)
                memcpy(out, page, CODEC_PAGE_MAX);
done:
        *ret_enc = best_enc;
        *ret_len = (uint32_t)best;
        return 0;
}

int codec_page_decode(uint8_t enc, const uint8_t *data, uint32_t len,
                      const uint8_t *prev, uint8_t *out)
{
        switch (enc) {
        case WIRE_PAGE_ZERO:
                if (len != 0)
                        return -EBADMSG;
                memset(out, 0, CODEC_PAGE_MAX);
                return 0;
        case WIRE_PAGE_RAW:
                if (len != CODEC_PAGE_MAX)
                        return -EBADMSG;
                memmove(out, data, CODEC_PAGE_MAX);
                return 0;
        case WIRE_PAGE_LZ4: {
                int n = LZ4_decompress_safe((const char *)data, (char *)out, (int)len,
                                            (int)CODEC_PAGE_MAX);
                return n == (int)CODEC_PAGE_MAX ? 0 : -EBADMSG;
        }
        case WIRE_PAGE_RUNS: {
                if (!prev)
                        return -EBADMSG;
                uint8_t list[RUNS_LIST_MAX];
                int n = LZ4_decompress_safe((const char *)data, (char *)list, (int)len,
                                            (int)sizeof(list));
                if (n < 0 || runs_walk(list, (size_t)n, NULL) < 0)
                        return -EBADMSG;
                if (out != prev)
                        memcpy(out, prev, CODEC_PAGE_MAX);
                return runs_walk(list, (size_t)n, out);
        }
        case WIRE_PAGE_XOR_LZ4: {
                if (!prev)
                        return -EBADMSG;
                uint64_t delta[CODEC_PAGE_MAX / 8];
                int n = LZ4_decompress_safe((const char *)data, (char *)delta, (int)len,
                                            (int)CODEC_PAGE_MAX);
                if (n != (int)CODEC_PAGE_MAX)
                        return -EBADMSG;
                for (unsigned i = 0; i < CODEC_PAGE_MAX / 8; i++) {
                        uint64_t p;
                        memcpy(&p, prev + 8 * i, 8);
                        p ^= delta[i];
                        memcpy(out + 8 * i, &p, 8);
                }
                return 0;
        }
        default:
                return -EBADMSG;
        }
}

size_t codec_chunk_bound(size_t len)
{
        return (size_t)LZ4_compressBound((int)len);
}

int codec_chunk_encode(const uint8_t *in, size_t len, uint8_t *out,
                       uint8_t *ret_enc, uint32_t *ret_len)
{
        if (len > WIRE_MAX_PAYLOAD - 64)
                return -EMSGSIZE;
        int n = LZ4_compress_default((const char *)in, (char *)out, (int)len,
                                     (int)codec_chunk_bound(len));
        if (n > 0 && (size_t)n < len) {
                *ret_enc = WIRE_PAGE_LZ4;
                *ret_len = (uint32_t)n;
        } else {
                memcpy(out, in, len);
                *ret_enc = WIRE_PAGE_RAW;
                *ret_len = (uint32_t)len;
        }
        return 0;
}

int codec_chunk_decode(uint8_t enc, const uint8_t *in, uint32_t len,
                       uint8_t *out, uint32_t raw_len)
{
        return codec_chunk_decode_delta(enc, in, len, out, raw_len, NULL, 0);
}

/* dst[i] = a[i] ^ b[i] for i < n, word-wise (buffers of any alignment) */
static void xor_into(uint8_t *dst, const uint8_t *a, const uint8_t *b, size_t n)
{
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
                uint64_t x, y;
                memcpy(&x, a + i, 8);
                memcpy(&y, b + i, 8);
                x ^= y;
                memcpy(dst + i, &x, 8);
        }
        for (; i < n; i++)
                dst[i] = a[i] ^ b[i];
}

int codec_chunk_encode_delta(const uint8_t *in, size_t len, const uint8_t *base,
                             size_t base_len, uint8_t *out, uint8_t *scratch,
                             uint8_t *ret_enc, uint32_t *ret_len)
{
        if (!base)
                return codec_chunk_encode(in, len, out, ret_enc, ret_len);
        if (len > WIRE_MAX_PAYLOAD - 64)
                return -EMSGSIZE;
        size_t common = base_len < len ? base_len : len;
        xor_into(scratch, in, base, common);
        memcpy(scratch + common, in + common, len - common); /* XOR with zero */
        int bound = (int)codec_chunk_bound(len);
        size_t best = len;
        uint8_t best_enc = WIRE_PAGE_RAW;
        int n = LZ4_compress_default((const char *)scratch, (char *)out, (int)len, bound);
        if (n > 0 && (size_t)n < best) {
                best = (size_t)n;
                best_enc = WIRE_PAGE_XOR_LZ4;
        }
        /* an unchanged device state XORs to zeros: a delta under an eighth
         * of the chunk will not be beaten by compressing the chunk */
        if (best_enc != WIRE_PAGE_XOR_LZ4 || best >= len / 8) {
                n = LZ4_compress_default((const char *)in, (char *)scratch, (int)len, bound);
                if (n > 0 && (size_t)n < best) {
                        memcpy(out, scratch, (size_t)n);
                        best = (size_t)n;
                        best_enc = WIRE_PAGE_LZ4;
                }
        }
        if (best_enc == WIRE_PAGE_RAW)
                memcpy(out, in, len);
        *ret_enc = best_enc;
        *ret_len = (uint32_t)best;
        return 0;
}

int codec_chunk_decode_delta(uint8_t enc, const uint8_t *in, uint32_t len, uint8_t *out,
                             uint32_t raw_len, const uint8_t *base, size_t base_len)
{
        switch (enc) {
        case WIRE_PAGE_RAW:
                if (len != raw_len)
                        return -EBADMSG;
                memcpy(out, in, len);
                return 0;
        case WIRE_PAGE_LZ4:
        case WIRE_PAGE_XOR_LZ4: {
                if (enc == WIRE_PAGE_XOR_LZ4 && !base)
                        return -EBADMSG;
                if (len == 0 || raw_len > INT32_MAX || len > INT32_MAX)
                        return -EBADMSG;
                int n = LZ4_decompress_safe((const char *)in, (char *)out, (int)len, (int)raw_len);
                if (n != (int)raw_len)
                        return -EBADMSG;
                if (enc == WIRE_PAGE_XOR_LZ4)
                        xor_into(out, out, base, base_len < raw_len ? base_len : raw_len);
                return 0;
        }
        default:
                return -EBADMSG;
        }
}
