/* br_stage: the standby's buffer for one epoch of disk writes. Writes of epoch N arrive while N is in flight; they are kept
 * in memory up to a limit, then appended to a journal file, and applied to
 * the standby's image only when N commits (br_stage_apply, which ends with
 * fdatasync: the ACK that follows may promise durability). A partial epoch
 * is discarded (br_stage_discard): the image never sees it.
 *
 * Owns: the staged records and the journal file. Does not own: the image
 * fd (the caller passes it), the wire.
 */
#pragma once
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

struct br_stage;

/* journal_path: file used once the memory limit is passed (created on
 * demand, truncated on discard/apply, removed by br_stage_free). */
int br_stage_new(const char *journal_path, uint64_t mem_limit, struct br_stage **ret);
void br_stage_free(struct br_stage *s); /* NULL ok */

/* Add one record (op = enum br_op; data only for BR_OP_WRITE). Checks that
 * offset+len stays within image_size; -EINVAL otherwise, -ENOSPC/-EIO when
 * the journal cannot be written (the epoch must then be refused). */
int br_stage_add(struct br_stage *s, uint8_t op, uint64_t offset, uint32_t len,
                 const void *data, uint64_t image_size);

/* Apply every staged record in order to image_fd, fdatasync, then empty the
 * stage. On error the stage is kept (the caller refuses the epoch). An
 * empty stage applies nothing and skips the fdatasync: what the image
 * holds was made durable by the apply that wrote it. */
int br_stage_apply(struct br_stage *s, int image_fd);
void br_stage_discard(struct br_stage *s);

uint64_t br_stage_bytes(const struct br_stage *s);    /* data bytes staged */
uint64_t br_stage_spilled(const struct br_stage *s);  /* of which in the journal */
uint64_t br_stage_sync_ns(const struct br_stage *s);  /* last apply's fdatasync, 0 = skipped */

/* The persistent bitmap file moved to bitmap.h (included here for the
 * callers that found it in this header). */
#include "bitmap.h"
