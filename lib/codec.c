#include "codec.h"

#include <errno.h>
#include <lz4.h>
#include <string.h>

int codec_page_encode(const uint8_t *page, const uint8_t *prev, uint8_t *out,
                      uint8_t *scratch, uint8_t *ret_enc, uint32_t *ret_len)
{
        if (codec_page_is_zero(page)) {
                *ret_enc = WIRE_PAGE_ZERO;
                *ret_len = 0;
                return 0;
        }
        /* Guest writes are sparse: when the replica has a copy, the XOR is
         * mostly zero and LZ4 squeezes it to a few dozen bytes. Only fall
         * back to compressing the page itself when that fails to help. */
        int best = CODEC_PAGE_MAX;
        uint8_t best_enc = WIRE_PAGE_RAW;
        if (prev) {
                /* word-wise through memcpy: callers' buffers need not be
                 * 8-byte aligned (the compiler makes this plain loads) */
                for (unsigned i = 0; i < CODEC_PAGE_MAX; i += 8) {
                        uint64_t a, b;
                        memcpy(&a, page + i, 8);
                        memcpy(&b, prev + i, 8);
                        a ^= b;
                        memcpy(scratch + i, &a, 8);
                }
                int n = LZ4_compress_default((const char *)scratch, (char *)out,
                                             (int)CODEC_PAGE_MAX, (int)CODEC_PAGE_MAX - 1);
                if (n > 0 && n < best) {
                        best = n;
                        best_enc = WIRE_PAGE_XOR_LZ4;
                }
                /* a delta under an eighth of a page will not be beaten by
                 * compressing the page: skip the second attempt */
                if (best_enc == WIRE_PAGE_XOR_LZ4 && best < (int)CODEC_PAGE_MAX / 8)
                        goto done;
        }
        {
                uint8_t *dst = best_enc == WIRE_PAGE_XOR_LZ4 ? scratch : out;
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
