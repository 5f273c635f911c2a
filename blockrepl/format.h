/* format: blockrepl's on-disk formats, declared once: the persistent dirty
 * bitmap file (bitmap.c) and the stage journal (stage.c). Both are local
 * files, never sent to the peer. All integers are little-endian; each has a
 * magic, a version and an XXH64 checksum, and a bad one is refused, never
 * repaired: a wrong bitmap would make failback skip blocks that differ.
 *
 * Bitmap file (docs/blockrepl.md "Bitmap file"):
 *
 *   offset size  field
 *   0      8     magic       "HVMSBMAP"
 *   8      4     version     BR_BM_VERSION (2)
 *   12     4     hdr_size    BR_BM_HDR_SIZE: where the bits start
 *   16     8     image_size  bytes of the image the bitmap describes
 *   24     4     block_size  BR_BLOCK_SIZE
 *   28     4     reserved    0
 *   32     8     nbits       ceil(image_size / block_size)
 *   40     8     lineage     the replicated history the bits are relative
 *                            to; 0 = unknown (bitmap.h)
 *   48     8     checksum    XXH64 of bytes 0..47
 *   56     ...   zero up to hdr_size
 *
 * Version 1 had no lineage: its checksum (XXH64 of bytes 0..39) is at
 * offset 40. It is accepted and rewritten as version 2 with lineage 0.
 *   4096   n     bits: block i is bit (i % 8) of byte (i / 8); n is
 *                ceil(nbits / 8) rounded up to 8 bytes
 *
 * Journal record (docs/blockrepl.md "Stage journal"): a 32-byte header,
 * then len data bytes for BR_OP_WRITE (none for ZERO and TRIM).
 *
 *   offset size  field
 *   0      4     magic       "HVJR" (0x524a5648)
 *   4      1     version     BR_JR_VERSION
 *   5      1     op          enum br_op
 *   6      2     reserved    0
 *   8      4     len         bytes of the image the record changes
 *   12     4     reserved    0
 *   16     8     offset      in the image
 *   24     8     checksum    XXH64 of bytes 0..23, then the data
 *
 * Owns: these layouts and their encoders. Does not own: the files.
 */
#pragma once
#include <stdint.h>
#include <string.h>

#define BR_BM_MAGIC "HVMSBMAP"
#define BR_BM_VERSION 2u
#define BR_BM_VERSION_1 1u   /* read and upgraded, never written */
#define BR_BM_HDR_SIZE 4096u /* page-aligned: the bits are mmap'd with it */
#define BR_BM_HDR_USED 56u   /* fields above, checksum included */

#define BR_JR_MAGIC 0x524a5648u
#define BR_JR_VERSION 1u
#define BR_JR_HDR_SIZE 32u

static inline void br_put_le32(uint8_t *p, uint32_t v)
{
        for (int i = 0; i < 4; i++)
                p[i] = (uint8_t)(v >> (8 * i));
}

static inline void br_put_le64(uint8_t *p, uint64_t v)
{
        for (int i = 0; i < 8; i++)
                p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint32_t br_get_le32(const uint8_t *p)
{
        uint32_t v = 0;
        for (int i = 3; i >= 0; i--)
                v = (v << 8) | p[i];
        return v;
}

static inline uint64_t br_get_le64(const uint8_t *p)
{
        uint64_t v = 0;
        for (int i = 7; i >= 0; i--)
                v = (v << 8) | p[i];
        return v;
}
