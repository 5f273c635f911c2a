/* libFuzzer target for the agents' CPG messages (failover/clmsg.c): what
 * havmsd does with a message another member sent.
 *
 * As in fuzz_wire.c, each input is decoded twice: as it is, and with the
 * length and checksum fixed up (the algorithm clmsg.h documents) so the
 * field checks behind the checksum see the fuzzer's bytes. Whatever
 * decodes must encode back to exactly the same bytes: a record has one
 * meaning, and no two records mean the same thing. */
#define XXH_STATIC_LINKING_ONLY
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "clmsg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(const uint8_t *rec, size_t size)
{
        static struct clmsg m;
        static uint8_t again[CLMSG_MAX_SIZE];
        size_t len;
        if (clmsg_decode(rec, size, &m) < 0)
                return;
        if (clmsg_encode(&m, again, sizeof(again), &len) < 0 || len != size ||
            memcmp(again, rec, size))
                abort(); /* decoded, but is not what encode makes of it */
        (void)clmsg_type_name(m.type);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        check(data, size);
        if (size < CLMSG_HDR_SIZE || size > CLMSG_MAX_SIZE)
                return 0;
        uint8_t *copy = malloc(size);
        if (!copy)
                return 0;
        memcpy(copy, data, size);
        uint32_t len = (uint32_t)(size - CLMSG_HDR_SIZE);
        memcpy(copy + 8, &len, 4); /* little-endian host */
        XXH64_state_t st;
        XXH64_reset(&st, 0);
        XXH64_update(&st, copy, 12);
        XXH64_update(&st, copy + 20, size - 20);
        uint64_t sum = XXH64_digest(&st);
        memcpy(copy + 12, &sum, 8);
        check(copy, size);
        free(copy);
        return 0;
}
