/* image: I/O on a raw image, a regular file or a block device, shared by
 * the server (blockrepl.c) and the standby's apply (stage.c) so that both
 * sides turn a ZERO or a TRIM into the same thing.
 *
 * Owns: full-length pread/pwrite, zeroing and discarding with their
 * fallbacks. Does not own: the fd (callers open and close it), locking.
 */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Open path O_RDWR (O_RDONLY if read_only), take a flock (exclusive, or
 * shared when read-only: two servers writing one image would corrupt it)
 * and find its size. */
int br_image_open(const char *path, bool read_only, int *ret_fd, uint64_t *ret_size,
                  bool *ret_is_blk, char *err, size_t errlen);
int br_image_is_blk(int fd, bool *ret_is_blk);

/* Whole-buffer positional I/O on images and journals: pread_full and
 * pwrite_full (util.h). */
/* Reads back zero afterwards. may_hole: deallocating is allowed (a client's
 * WRITE_ZEROES without NO_HOLE); otherwise the range stays allocated. */
int br_image_zero(int fd, bool is_blk, uint64_t offset, uint64_t len, bool may_hole);
/* Discard; on files (and on the zero-writing fallback) it reads back zero. */
int br_image_trim(int fd, bool is_blk, uint64_t offset, uint64_t len);
