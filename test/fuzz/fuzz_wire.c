/* libFuzzer target for the replication protocol parser (lib/wire.c) and
 * the page and chunk decoders, device-state deltas included (lib/codec.c):
 * what a standby does with bytes
 * from the network, short of applying them.
 *
 * The XXH64 checksum would stop a fuzzer at the header, so each input is
 * parsed twice: as it is (header and checksum checks), and with length and
 * checksum fixed up so the payload parsers see the fuzzer's bytes. */
#define XXH_STATIC_LINKING_ONLY
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "codec.h"
#include "util.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void parse_payload(const struct wire_hdr *h, const uint8_t *payload)
{
        static uint8_t replica[HAVMS_PAGE_SIZE], out[HAVMS_PAGE_SIZE], dev[1 << 16];
        struct wire_msg m = { .hdr = *h, .payload = (uint8_t *)payload, .cap = h->length };
        struct wire_hello hello;
        struct wire_welcome welcome;
        struct wire_epoch_end end;
        struct wire_ack ack;
        struct wire_error err;
        struct wire_devstate ds;
        struct wire_bitmap_chunk bc;
        struct wire_page_hashes ph;
        struct wire_disk_hashes dh;
        struct wire_hashes_end he;
        struct wire_net_frames nf;
        (void)wire_get_net_frames(&m, &nf);
        (void)wire_get_disk_bitmap(&m, &bc);
        (void)wire_get_page_hashes(&m, &ph);
        (void)wire_get_disk_hashes(&m, &dh);
        (void)wire_get_hashes_end(&m, &he);
        (void)wire_get_hello(&m, &hello);
        (void)wire_get_welcome(&m, &welcome);
        (void)wire_get_epoch_end(&m, &end);
        (void)wire_get_ack(&m, &ack);
        (void)wire_get_error(&m, &err);
        if (wire_get_devstate(&m, &ds) == 0 && ds.raw_len <= sizeof(dev)) {
                (void)codec_chunk_decode(ds.enc, ds.data, ds.len, dev, ds.raw_len);
                /* as the standby does: against a committed device state
                 * (the page buffer, 4 KiB: chunks past its end see zeros),
                 * at the offset the record names */
                size_t at = ds.offset < sizeof(replica) ? (size_t)ds.offset : sizeof(replica);
                (void)codec_chunk_decode_delta(ds.enc, ds.data, ds.len, dev, ds.raw_len,
                                               replica + at, sizeof(replica) - at);
                (void)codec_chunk_decode_delta(ds.enc, ds.data, ds.len, dev, ds.raw_len, NULL, 0);
        }
        struct wire_pages_iter it;
        struct wire_page pg;
        if (wire_pages_iter_init(&it, &m) == 0)
                while (wire_pages_next(&it, &pg) == 1)
                        (void)codec_page_decode(pg.enc, pg.data, pg.len, replica, out);
        struct wire_disk_iter di;
        struct wire_disk_rec dr;
        if (wire_disk_iter_init(&di, &m) == 0)
                while (wire_disk_next(&di, &dr) == 1)
                        if (dr.enc == WIRE_PAGE_LZ4 && dr.raw_len <= sizeof(dev))
                                (void)codec_chunk_decode(dr.enc, dr.data, dr.len, dev, dr.raw_len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
        struct wire_hdr h;
        const uint8_t *payload;
        size_t used;
        if (wire_parse(data, size, &h, &payload, &used) == 0)
                parse_payload(&h, payload);

        if (size < WIRE_HDR_SIZE || size - WIRE_HDR_SIZE > WIRE_MAX_PAYLOAD)
                return 0;
        uint8_t *copy = malloc(size);
        if (!copy)
                return 0;
        memcpy(copy, data, size);
        uint32_t len = (uint32_t)(size - WIRE_HDR_SIZE);
        memcpy(copy + 8, &len, 4); /* little-endian host */
        XXH64_state_t st;
        XXH64_reset(&st, 0);
        XXH64_update(&st, copy, 24);
        XXH64_update(&st, copy + WIRE_HDR_SIZE, len);
        uint64_t sum = XXH64_digest(&st);
        memcpy(copy + 24, &sum, 8);
        if (wire_parse(copy, size, &h, &payload, &used) == 0)
                parse_payload(&h, payload);
        free(copy);
        return 0;
}
