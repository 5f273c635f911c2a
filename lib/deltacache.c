#include "deltacache.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PAGE 4096u
#define NO_PFN UINT32_MAX

/*
 *   index[pfn] ----(slot + 1; 0 = not cached)----> slot s
 *   slot_pfn[s]  the pfn slot s holds, NO_PFN when free
 *   ref[s]       CLOCK reference bit
 *   data + s*4096  the content
 *
 *   slots [0, fresh) have been used since the last drop_all (some may be
 *   free again after a forget); slots [fresh, n) never have. The hand
 *   only sweeps once every slot has been used.
 *
 * The index stores slot + 1 so that a calloc'd index means "empty" and
 * stays untouched (not resident) where the guest never sends a page.
 */
struct dcache {
        uint64_t npages;
        uint32_t n;          /* slots */
        uint32_t fresh;      /* slots used since the last drop_all */
        uint32_t used;       /* slots holding a page */
        uint32_t hand;       /* CLOCK hand */
        uint32_t *index;     /* npages entries */
        uint32_t *slot_pfn;  /* n entries */
        uint8_t *ref;        /* n entries */
        uint8_t *data;       /* n * PAGE bytes, one mapping */
        uint64_t hits, misses, evictions;
};

uint64_t dcache_bytes(uint64_t npages, uint32_t slots)
{
        return (uint64_t)slots * PAGE + npages * sizeof(uint32_t) +
               (uint64_t)slots * (sizeof(uint32_t) + 1) + sizeof(struct dcache);
}

void dcache_close(struct dcache *c)
{
        if (!c)
                return;
        if (c->data)
                munmap(c->data, (size_t)c->n * PAGE);
        free(c->index);
        free(c->slot_pfn);
        free(c->ref);
        free(c);
}

int dcache_open(uint64_t npages, uint32_t slots, struct dcache **ret)
{
        if (!slots || !npages || npages > UINT32_MAX || slots == UINT32_MAX)
                return -EINVAL;
        struct dcache *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->npages = npages;
        c->n = slots;
        c->index = calloc(npages, sizeof(uint32_t));
        c->slot_pfn = malloc((size_t)slots * sizeof(uint32_t));
        c->ref = calloc(slots, 1);
        void *m = mmap(NULL, (size_t)slots * PAGE, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        c->data = m == MAP_FAILED ? NULL : m;
        if (!c->index || !c->slot_pfn || !c->ref || !c->data) {
                dcache_close(c);
                return -ENOMEM;
        }
        memset(c->slot_pfn, 0xff, (size_t)slots * sizeof(uint32_t));
        *ret = c;
        return 0;
}

const uint8_t *dcache_lookup(struct dcache *c, uint32_t pfn)
{
        uint32_t e = pfn < c->npages ? c->index[pfn] : 0;
        if (!e) {
                c->misses++;
                return NULL;
        }
        c->hits++;
        c->ref[e - 1] = 1;
        return c->data + (uint64_t)(e - 1) * PAGE;
}

/* A slot for a new entry: a never-used one, else CLOCK. */
static uint32_t take_slot(struct dcache *c)
{
        if (c->fresh < c->n)
                return c->fresh++;
        for (;;) {
                uint32_t s = c->hand;
                c->hand = s + 1 == c->n ? 0 : s + 1;
                if (c->slot_pfn[s] == NO_PFN)
                        return s; /* freed by a forget */
                if (c->ref[s]) {
                        c->ref[s] = 0; /* second chance */
                        continue;
                }
#ifndef DCACHE_MUTANT_NO_UNINDEX /* test/unit/test_deltacache.c builds the broken one */
                c->index[c->slot_pfn[s]] = 0;
#endif
                c->slot_pfn[s] = NO_PFN;
                c->used--;
                c->evictions++;
                return s;
        }
}

void dcache_store(struct dcache *c, uint32_t pfn, const uint8_t *data)
{
        if (pfn >= c->npages)
                return;
        uint32_t e = c->index[pfn];
        if (e) {
                uint8_t *dst = c->data + (uint64_t)(e - 1) * PAGE;
                if (dst != data)
                        memcpy(dst, data, PAGE);
                return;
        }
        uint32_t s = take_slot(c);
        memcpy(c->data + (uint64_t)s * PAGE, data, PAGE);
        c->slot_pfn[s] = pfn;
        c->ref[s] = 0;
        c->index[pfn] = s + 1;
        c->used++;
}

void dcache_forget(struct dcache *c, uint32_t pfn)
{
        if (pfn >= c->npages || !c->index[pfn])
                return;
        uint32_t s = c->index[pfn] - 1;
        c->index[pfn] = 0;
        c->slot_pfn[s] = NO_PFN;
        c->ref[s] = 0;
        c->used--;
}

void dcache_drop_all(struct dcache *c)
{
        /* only the slots used since the last drop can be indexed */
        for (uint32_t s = 0; s < c->fresh; s++) {
                if (c->slot_pfn[s] != NO_PFN)
                        c->index[c->slot_pfn[s]] = 0;
                c->slot_pfn[s] = NO_PFN;
                c->ref[s] = 0;
        }
        c->fresh = c->used = c->hand = 0;
}

void dcache_get_stats(const struct dcache *c, struct dcache_stats *ret)
{
        *ret = (struct dcache_stats){ .hits = c->hits, .misses = c->misses,
                                      .evictions = c->evictions, .used = c->used, .slots = c->n };
}

int dcache_check(const struct dcache *c)
{
        uint32_t used = 0;
        for (uint32_t s = 0; s < c->n; s++) {
                uint32_t pfn = c->slot_pfn[s];
                if (pfn == NO_PFN)
                        continue;
                if (s >= c->fresh || pfn >= c->npages || c->index[pfn] != s + 1)
                        return -EUCLEAN;
                used++;
        }
        uint64_t indexed = 0;
        for (uint64_t pfn = 0; pfn < c->npages; pfn++) {
                uint32_t e = c->index[pfn];
                if (!e)
                        continue;
                if (e > c->n || c->slot_pfn[e - 1] != pfn)
                        return -EUCLEAN;
                indexed++;
        }
        return used == c->used && indexed == used ? 0 : -EUCLEAN;
}
