/* codec: how one 4 KiB guest page travels. The encoder picks the smallest
 * of: ZERO (no bytes), RUNS (LZ4 of the runs of bytes that differ from the
 * copy the replica already holds: a sparse change costs its changed bytes),
 * XOR_LZ4 (LZ4 of the page XOR that copy: for changes too dense, or
 * spread too thinly, for RUNS), LZ4 of the page, or RAW. The decoder reverses it into a page buffer.
 *
 * Owns: the page encodings (enum wire_page_enc) and device-state chunk
 * compression (RAW, LZ4, or XOR_LZ4 against the replica's committed
 * device state). Does not own: which pages are sent or where they go.
 */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "wire.h"

/* Worst-case encoded size of one page (RAW). */
#define CODEC_PAGE_MAX 4096u

/* Encode page. prev is the replica's current copy of the page (NULL when
 * the replica has none, i.e. pre-copy). out must hold CODEC_PAGE_MAX
 * bytes; scratch must hold CODEC_PAGE_MAX bytes (run list and XOR
 * workspace). */
int codec_page_encode(const uint8_t *page, const uint8_t *prev, uint8_t *out,
                      uint8_t *scratch, uint8_t *ret_enc, uint32_t *ret_len);

/* Decode into out (4096 bytes). prev is the replica's current copy (needed
 * for RUNS and XOR_LZ4: NULL is an error for them). -EBADMSG when the
 * data does not decode to exactly one page; out is then unchanged,
 * except that a bad LZ4 page may have been partly written into it. out
 * may equal prev. */
int codec_page_decode(uint8_t enc, const uint8_t *data, uint32_t len,
                      const uint8_t *prev, uint8_t *out);

static inline int codec_page_is_zero(const uint8_t *page)
{
        uint64_t acc = 0;
        for (unsigned i = 0; i < 4096; i += 8) {
                uint64_t w;
                __builtin_memcpy(&w, page + i, 8); /* any alignment */
                acc |= w;
        }
        return acc == 0;
}

/* Device state chunks: LZ4 when smaller, else raw. out must hold
 * codec_chunk_bound(len) bytes. */
size_t codec_chunk_bound(size_t len);
int codec_chunk_encode(const uint8_t *in, size_t len, uint8_t *out,
                       uint8_t *ret_enc, uint32_t *ret_len);
/* Decode a RAW or LZ4 chunk (XOR_LZ4 has no base here: -EBADMSG). */
int codec_chunk_decode(uint8_t enc, const uint8_t *in, uint32_t len,
                       uint8_t *out, uint32_t raw_len);

/* Device state chunk against a base: the bytes at the same offset of the
 * device state the replica has committed (QEMU re-sends every device and
 * firmware ROM block each epoch; from one epoch to the next the stream
 * differs in a few dozen bytes). base points at that offset, base_len is
 * how many base bytes exist from there (may be 0 or less than len: bytes
 * past the base's end count as zero). Picks the smallest of RAW, LZ4 and
 * XOR_LZ4 (LZ4 of in XOR base). out and scratch must each hold
 * codec_chunk_bound(len) bytes. base NULL: as codec_chunk_encode. */
int codec_chunk_encode_delta(const uint8_t *in, size_t len, const uint8_t *base,
                             size_t base_len, uint8_t *out, uint8_t *scratch,
                             uint8_t *ret_enc, uint32_t *ret_len);
/* Decode RAW, LZ4 or XOR_LZ4 into out (raw_len bytes); base and base_len
 * as for the encoder. XOR_LZ4 with base NULL, or any data that does not
 * decode to exactly raw_len bytes: -EBADMSG. base is only read. */
int codec_chunk_decode_delta(uint8_t enc, const uint8_t *in, uint32_t len, uint8_t *out,
                             uint32_t raw_len, const uint8_t *base, size_t base_len);
