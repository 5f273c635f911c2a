/* deltacache: a bounded cache of the last content SENT to the replica for
 * recently sent guest pages, the base of XOR deltas on the primary
 * (XBZRLE's idea: a page sent once is likely sent again soon). It replaces
 * the full shadow copy of guest RAM (docs/scale.md section 2).
 *
 * Owns, all allocated by dcache_open and nothing after it (RSS is bounded
 * by the figure dcache_bytes() returns, whatever the guest does):
 *   - the slots: slots x 4096 bytes, one anonymous mapping, touched only
 *     as slots fill (a cache that never fills never becomes resident);
 *   - the index pfn -> slot: npages x 4 bytes (1 MiB per GiB of guest RAM);
 *   - per slot: its pfn (4 bytes) and its CLOCK reference bit (1 byte).
 * Does not own: what the pages are, or whether the replica holds them;
 * the caller keeps the invariant (below).
 *
 * The invariant the caller must keep: an entry for pfn holds exactly the
 * bytes the replica holds for pfn. The primary (checkpointd/primary.c)
 * keeps it by storing the bytes it encoded right after encoding them,
 * and by dcache_drop_all() whenever the replica may hold something else:
 * at the start of every (re-)sync and when a connection is dropped (an
 * epoch cut off midway is never applied by the standby, yet its pages may
 * already be stored here).
 *
 * Eviction: CLOCK (second chance) over the slots. A lookup that hits sets
 * the slot's reference bit; a store of a new pfn takes a never-used slot
 * while there is one, else the slot under the hand after clearing the
 * bits of every referenced slot it passes. A new entry starts with its
 * bit CLEAR: a page stored once and never looked up again (a streaming
 * writer) is the first to go, a page that is re-sent (looked up, then
 * stored) survives one more sweep.
 *
 * Not thread-safe: one replication thread owns a cache.
 */
#pragma once
#include <stdbool.h>
#include <stdint.h>

struct dcache;

struct dcache_stats {
        uint64_t hits;      /* lookups that found the page */
        uint64_t misses;    /* lookups that did not */
        uint64_t evictions; /* stores that replaced another page */
        uint32_t used;      /* slots holding a page now */
        uint32_t slots;
};

/* Bytes a cache of this geometry allocates (slots, index, slot table). */
uint64_t dcache_bytes(uint64_t npages, uint32_t slots);

/* A cache of `slots` pages for a guest of `npages` pages. -EINVAL when
 * slots is 0, npages is 0 or does not fit a pfn in 32 bits; -ENOMEM. */
int dcache_open(uint64_t npages, uint32_t slots, struct dcache **ret);

/* NULL accepted. */
void dcache_close(struct dcache *c);

/* The cached content of pfn (4096 bytes) and its reference bit set, or
 * NULL. The pointer stays valid until the next store or drop_all. */
const uint8_t *dcache_lookup(struct dcache *c, uint32_t pfn);

/* pfn's content is now data (4096 bytes): update its entry or insert
 * one, evicting by CLOCK. pfn >= npages is ignored (the caller checked
 * it). data may be the pointer a lookup returned. */
void dcache_store(struct dcache *c, uint32_t pfn, const uint8_t *data);

/* Forget pfn (its content changed without a store). */
void dcache_forget(struct dcache *c, uint32_t pfn);

/* Forget everything: the replica may hold anything now. The memory stays
 * allocated (and resident where it was). The statistics stay. */
void dcache_drop_all(struct dcache *c);

void dcache_get_stats(const struct dcache *c, struct dcache_stats *ret);

/* Internal consistency, for tests: the index and the slot table agree
 * both ways and `used` counts the slots in use. 0 or -EUCLEAN. */
int dcache_check(const struct dcache *c);
