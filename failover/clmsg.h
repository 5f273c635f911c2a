/* clmsg: the messages havmsd agents exchange over CPG (group "havms").
 *
 * Owns: their wire format, declared once here. CPG delivers each message
 * whole, in the same total order to every member (agreed ordering), so
 * there is no framing beyond one record per CPG message. Every record:
 *
 *   0      4        6      8        12         20          52
 *   +------+--------+------+--------+----------+-----------+---------...
 *   | magic| version| type | length | checksum | sender    | payload
 *   | HVCL | u16 =1 | u16  | u32    | u64 xxh64| char[32]  | (length)
 *   +------+--------+------+--------+----------+-----------+---------...
 *   little-endian; checksum = XXH64 (seed 0) of the whole record without
 *   the checksum field: bytes 0-11, then 20 to the end, so the sender is
 *   covered too. Names are fixed 32-byte fields, NUL-padded (a 32-char
 *   name has no NUL), valid host/VM names (config.h) or, where allowed,
 *   empty.
 *
 * Payloads:
 *   STATE       u32 n, then n x VM entry: name[32], u8 state (po_vm_state),
 *               u8 last_exit (po_exit), u16 0, u32 0, u64 generation,
 *               u64 committed_epoch, peer[32]           (88 bytes each)
 *   RELINQUISH  vm[32], u64 generation, target[32]: "my crashed copy of
 *   ASK_DISCARD   this generation is given up" / "drop your replica" /
 *   DISCARDED     "I dropped mine" (target = the host addressed)
 *   FENCED      vm[32] = "", u64 0, target[32] = the host fenced off
 *   SWITCHOVER  vm[32], u64 generation (the owner's copy as the sender saw it;
 *               0 = any), target[32] = the owner, to[32] ("" = its standby),
 *               u32 request id, u32 0                      (112 bytes)
 *               "switch this VM over", from `havmsctl switchover` typed on
 *               another host than the owner
 *   SWITCHOVER_STATUS  vm[32], u64 generation, target[32] (the requester, or
 *               "" = everyone), to[32] (the standby taking over), u32 request
 *               id (0 = none), u8 phase (1 started, 2 done, 3 failed), u8 0,
 *               u16 0, i32 status (0 or -errno), u32 ms (done: downtime),
 *               text[96] (NUL-terminated, zero-padded)    (216 bytes)
 *               sent to everyone at each phase: one switchover at a time in
 *               the cluster, and the requester reports the outcome
 * Anything else — wrong magic, version, length or checksum, a count that
 * does not fit — is refused with -EBADMSG before a field is used.
 */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "policy.h"

#define CLMSG_MAGIC 0x4c435648u /* "HVCL" */
#define CLMSG_VERSION 1
#define CLMSG_HDR_SIZE 52
#define CLMSG_NAME 32
#define CLMSG_VM_ENTRY 88
#define CLMSG_MAX_VMS PO_MAX_VMS
#define CLMSG_MAX_SIZE (CLMSG_HDR_SIZE + 4 + CLMSG_MAX_VMS * CLMSG_VM_ENTRY)

enum clmsg_type {
        CLMSG_STATE = 1,
        CLMSG_RELINQUISH = 2,
        CLMSG_ASK_DISCARD = 3,
        CLMSG_DISCARDED = 4,
        CLMSG_FENCED = 5,
        CLMSG_SWITCHOVER = 6,
        CLMSG_SWITCHOVER_STATUS = 7,
};

enum clmsg_phase { CLMSG_SW_STARTED = 1, CLMSG_SW_DONE = 2, CLMSG_SW_FAILED = 3 };
#define CLMSG_TEXT 96

struct clmsg_vm {
        char name[CFG_NAME_MAX];
        enum po_vm_state state;
        enum po_exit last_exit;
        uint64_t generation;
        uint64_t committed_epoch;
        char peer[CFG_NAME_MAX];
};

struct clmsg {
        enum clmsg_type type;
        char sender[CFG_NAME_MAX];
        /* STATE */
        struct clmsg_vm vms[CLMSG_MAX_VMS];
        size_t n_vms;
        /* the others */
        char vm[CFG_NAME_MAX];
        uint64_t generation;
        char target[CFG_NAME_MAX];
        /* SWITCHOVER, SWITCHOVER_STATUS */
        char to[CFG_NAME_MAX];
        uint32_t reqid;
        enum clmsg_phase phase;  /* STATUS */
        int32_t status;          /* STATUS: 0 or -errno */
        uint32_t ms;             /* STATUS done: downtime */
        char text[CLMSG_TEXT];   /* STATUS: the reason, for the requester */
};

/* Encode into buf (at least CLMSG_MAX_SIZE); *ret_len = bytes used.
 * -E2BIG: more than CLMSG_MAX_VMS; -ENAMETOOLONG: a name over 32 chars;
 * -EINVAL: an unknown type, state or exit, or a name the decoder would
 * refuse; -ENOBUFS: buf too small. */
int clmsg_encode(const struct clmsg *m, uint8_t *buf, size_t size, size_t *ret_len);
/* Decode and check everything; -EBADMSG on any defect. */
int clmsg_decode(const uint8_t *buf, size_t len, struct clmsg *ret);
const char *clmsg_type_name(enum clmsg_type t);
