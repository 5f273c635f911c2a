/* bitmap: the persistent dirty-block bitmap file, standalone (format in
 * format.h, design in docs/blockrepl.md "Persistent bitmap").
 *
 * One bit per BR_BLOCK_SIZE block, mmap'd MAP_SHARED, with a header that
 * is checked on open (magic, version, image size, block size, length,
 * checksum) and carries the lineage. A set bit means "this block may
 * differ between this image and the replicated state the lineage names";
 * lineage 0 means the history is unknown (the next resync must be full).
 *
 * blockrepl.c uses this for the disk it serves; the standby, which applies
 * epochs with br_stage and serves nothing, uses it directly. The resync set
 * (br_resync_set) is a pure function of two bitmaps and their lineages.
 *
 * Owns: the bitmap file and its mapping. Does not own: deciding when bits
 * may be cleared (blockrepl.c, failback) or what a lineage value is.
 *
 * "durable" below: msync'd (MS_SYNC) before the call returns. The other
 * writers (set_range) change memory only; the caller syncs when the order
 * matters (before the image write, before a FLUSH reply).
 */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct br_bitmap;

/* Opens path, creating it (lineage 0) if missing; a v1 file is upgraded in
 * place to v2 with lineage 0 (logged). An existing file that does not match
 * image_size or is damaged is refused (-EINVAL, err says why); one locked by
 * another process: -EBUSY. */
int br_bitmap_open(const char *path, uint64_t image_size, struct br_bitmap **ret,
                   char *err, size_t errlen);
void br_bitmap_close(struct br_bitmap *bm); /* NULL ok; msyncs */

void br_bitmap_set_range(struct br_bitmap *bm, uint64_t offset, uint64_t len); /* bytes */
bool br_bitmap_test(const struct br_bitmap *bm, uint64_t block);
uint64_t br_bitmap_count(const struct br_bitmap *bm);
int br_bitmap_sync(struct br_bitmap *bm); /* msync: makes every change durable */

uint64_t br_bitmap_lineage(const struct br_bitmap *bm);
int br_bitmap_set_lineage(struct br_bitmap *bm, uint64_t lineage); /* durable */

/* The bits, read-only (block i = bit i % 8 of byte i / 8); *ret_len gets
 * their length in bytes (ceil(nbits / 8) rounded up to 8; the padding
 * bits are always 0). Valid until br_bitmap_close. */
const uint8_t *br_bitmap_bits(const struct br_bitmap *bm, size_t *ret_len);

/* OR bits[len] in (len must be the length br_bitmap_bits gives: -EINVAL
 * otherwise; padding bits are ignored); durable. */
int br_bitmap_merge(struct br_bitmap *bm, const uint8_t *bits, size_t len);

/* Clears every bit whose bit in keep[len] is 0 (same layout and length as
 * the bits); NOT durable: the caller syncs. For blockrepl.c's clearing. */
int br_bitmap_clear_except(struct br_bitmap *bm, const uint8_t *keep, size_t len);

int br_bitmap_clear_all(struct br_bitmap *bm); /* every bit 0, durable */

/* The blocks an incremental resync between the current owner of a VM's
 * disk and a rejoining host must copy (owner -> rejoiner), from their
 * bitmaps (nbytes each, as br_bitmap_bits gives them).
 *
 * Same nonzero lineage: both hosts replicated one history (the resync that
 * set the lineage, then epochs), and the owner holds it committed up to
 * some last epoch C. ret_set (nbytes, the caller's) gets the union of the
 * bitmaps, ret_blocks its number of blocks; returns 0. A block outside the
 * union holds C's content on both hosts, so the union is complete:
 *  - the owner marks every block it writes after it stopped applying the
 *    rejoiner's epochs (after its takeover, while alone), before writing;
 *  - the rejoiner's bits cover every block that may differ from what its
 *    peer committed or that is not durable on its own disk: it marks and
 *    msyncs before every write in every mode, and clears a bit only once
 *    the peer committed the block's last write and its own image holds it
 *    durably. That covers its writes while alone, its last epochs the
 *    owner never committed (un-ACKed when it died), and writes its page
 *    cache lost in a power cut.
 * Different lineages, or either 0 (history unknown): the bitmaps describe
 * differences against different states, and no union of them is known to
 * be complete: -ESTALE, the caller must copy the whole disk. -EINVAL for
 * NULL pointers. ret_* are set only on success. */
int br_resync_set(uint64_t owner_lineage, const uint8_t *owner_bits,
                  uint64_t rejoiner_lineage, const uint8_t *rejoiner_bits, size_t nbytes,
                  uint8_t *ret_set, uint64_t *ret_blocks);
