/* Delta cache: CLOCK's eviction order, bounded memory, drop_all, forget,
 * and a model check against a naive reference over random sequences.
 *
 * Built twice (test/meson.build): once against lib/deltacache.c as it is,
 * once against a mutant whose eviction forgets to unindex the evicted page
 * (-DDCACHE_MUTANT_NO_UNINDEX). The mutant build runs only the model
 * check and passes when the check FINDS the bug: a model check that could
 * not see this one would not be worth running. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "deltacache.h"

#define PAGE 4096u

/* deterministic page content for (pfn, version) */
static void fill(uint8_t *p, uint32_t pfn, uint32_t ver)
{
        uint64_t x = ((uint64_t)pfn << 32 | ver) * 0x9e3779b97f4a7c15ull + 1;
        for (unsigned i = 0; i < PAGE; i += 8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                memcpy(p + i, &x, 8);
        }
}

static __attribute__((unused)) bool has(struct dcache *c, uint32_t pfn, uint32_t ver)
{
        uint8_t want[PAGE];
        const uint8_t *got = dcache_lookup(c, pfn);
        if (!got)
                return false;
        fill(want, pfn, ver);
        assert_memory_equal(got, want, PAGE);
        return true;
}

static void put(struct dcache *c, uint32_t pfn, uint32_t ver)
{
        uint8_t buf[PAGE];
        fill(buf, pfn, ver);
        dcache_store(c, pfn, buf);
}

/* ---- the naive reference: linear search, same CLOCK rules ---- */

#define REF_MAX 64

struct ref {
        uint32_t n, fresh, hand;
        int64_t pfn[REF_MAX];   /* -1 = free */
        uint8_t bit[REF_MAX];
        uint32_t ver[REF_MAX];  /* content = fill(pfn, ver) */
};

static int ref_find(const struct ref *r, uint32_t pfn)
{
        for (uint32_t s = 0; s < r->fresh; s++)
                if (r->pfn[s] == (int64_t)pfn)
                        return (int)s;
        return -1;
}

static void ref_init(struct ref *r, uint32_t n)
{
        memset(r, 0, sizeof(*r));
        r->n = n;
        for (uint32_t s = 0; s < REF_MAX; s++)
                r->pfn[s] = -1;
}

static void ref_store(struct ref *r, uint32_t pfn, uint32_t ver)
{
        int s = ref_find(r, pfn);
        if (s >= 0) {
                r->ver[s] = ver;
                return;
        }
        if (r->fresh < r->n) {
                s = (int)r->fresh++;
        } else {
                for (;;) {
                        uint32_t h = r->hand;
                        r->hand = (h + 1) % r->n;
                        if (r->pfn[h] < 0 || !r->bit[h]) {
                                s = (int)h;
                                break;
                        }
                        r->bit[h] = 0;
                }
        }
        r->pfn[s] = pfn;
        r->bit[s] = 0;
        r->ver[s] = ver;
}

/* Random operations on a cache and on the reference; returns the number
 * of disagreements (content or presence of a lookup, or dcache_check). */
static unsigned model_check(unsigned seed, uint32_t slots, uint32_t npages, unsigned ops)
{
        struct dcache *c;
        struct ref r;
        uint32_t *ver = calloc(npages, sizeof(uint32_t)); /* "the replica" */
        assert_non_null(ver);
        assert_int_equal(dcache_open(npages, slots, &c), 0);
        ref_init(&r, slots);
        srand(seed);
        unsigned bad = 0;
        uint8_t buf[PAGE], want[PAGE];
        for (unsigned i = 0; i < ops; i++) {
                /* a hot set of a quarter of the pages gets most operations */
                uint32_t pfn = (uint32_t)rand() % (rand() % 4 ? npages / 4 + 1 : npages);
                int op = rand() % 100;
                if (op < 45) { /* what add_page does: look up, then store */
                        const uint8_t *got = dcache_lookup(c, pfn);
                        int s = ref_find(&r, pfn);
                        if ((got != NULL) != (s >= 0)) {
                                bad++;
                        } else if (got) {
                                r.bit[s] = 1;
                                fill(want, pfn, r.ver[s]);
                                bad += memcmp(got, want, PAGE) != 0;
                                /* and what it holds is what "the replica" holds */
                                bad += r.ver[s] != ver[pfn];
                        }
                        ver[pfn]++;
                        fill(buf, pfn, ver[pfn]);
                        dcache_store(c, pfn, buf);
                        ref_store(&r, pfn, ver[pfn]);
                } else if (op < 90) { /* a store without a lookup (first pass) */
                        ver[pfn]++;
                        put(c, pfn, ver[pfn]);
                        ref_store(&r, pfn, ver[pfn]);
                } else if (op < 97) {
                        dcache_forget(c, pfn);
                        int s = ref_find(&r, pfn);
                        if (s >= 0) {
                                r.pfn[s] = -1;
                                r.bit[s] = 0;
                        }
                } else if (op < 98) {
                        dcache_drop_all(c);
                        ref_init(&r, slots);
                } else {
                        bad += dcache_check(c) != 0;
                }
        }
        bad += dcache_check(c) != 0;
        dcache_close(c);
        free(ver);
        return bad;
}

#ifndef DCACHE_MUTANT_NO_UNINDEX

static void test_open_refuses(void **state)
{
        struct dcache *c = (struct dcache *)0x1;
        assert_int_equal(dcache_open(0, 4, &c), -EINVAL);
        assert_int_equal(dcache_open(16, 0, &c), -EINVAL);
        assert_int_equal(dcache_open((uint64_t)UINT32_MAX + 2, 4, &c), -EINVAL);
        assert_ptr_equal(c, (struct dcache *)0x1); /* ret_* untouched on failure */
        dcache_close(NULL);
}

static void test_store_lookup_update(void **state)
{
        struct dcache *c;
        assert_int_equal(dcache_open(100, 4, &c), 0);
        assert_false(has(c, 7, 0));
        put(c, 7, 1);
        assert_true(has(c, 7, 1));
        put(c, 7, 2); /* update in place */
        assert_true(has(c, 7, 2));
        /* storing the pointer a lookup returned is allowed */
        dcache_store(c, 7, dcache_lookup(c, 7));
        assert_true(has(c, 7, 2));
        put(c, 1000, 1); /* out of range: ignored */
        assert_null(dcache_lookup(c, 1000));
        struct dcache_stats st;
        dcache_get_stats(c, &st);
        assert_int_equal(st.used, 1);
        assert_int_equal(st.slots, 4);
        assert_int_equal(st.hits, 4);
        assert_int_equal(st.misses, 2);
        assert_int_equal(dcache_check(c), 0);
        dcache_close(c);
}

/* The order CLOCK evicts in, step by step, with three slots. */
static void test_clock_order(void **state)
{
        struct dcache *c;
        assert_int_equal(dcache_open(100, 3, &c), 0);
        put(c, 10, 1); /* slot 0 */
        put(c, 11, 1); /* slot 1 */
        put(c, 12, 1); /* slot 2 */
        assert_true(has(c, 10, 1)); /* 10 referenced */
        put(c, 13, 1); /* hand 0: 10 gets a second chance; 11 goes */
        assert_true(has(c, 10, 1) && has(c, 12, 1) && has(c, 13, 1));
        assert_false(has(c, 11, 1));
        /* now 10, 12 and 13 are all referenced (the lookups above) */
        put(c, 14, 1); /* hand 2: clears 12, 10 (slot 0), 13 (slot 1), back to 12: evicted */
        assert_false(dcache_lookup(c, 12));
        /* 14 is in slot 2 unreferenced; 10 and 13 lost their bits */
        put(c, 15, 1); /* hand 0: 10 has no bit: evicted */
        assert_null(dcache_lookup(c, 10));
        assert_non_null(dcache_lookup(c, 13));
        assert_non_null(dcache_lookup(c, 14));
        assert_non_null(dcache_lookup(c, 15));
        struct dcache_stats st;
        dcache_get_stats(c, &st);
        assert_int_equal(st.evictions, 3);
        assert_int_equal(st.used, 3);
        assert_int_equal(dcache_check(c), 0);
        dcache_close(c);
}

/* A page that is stored again and again is never evicted by a stream of
 * pages written once. */
static void test_hot_page_survives_stream(void **state)
{
        struct dcache *c;
        assert_int_equal(dcache_open(100000, 8, &c), 0);
        put(c, 0, 1);
        for (uint32_t i = 1; i < 5000; i++) {
                assert_true(has(c, 0, i));
                put(c, 0, i + 1);
                put(c, i, 1); /* a streaming writer */
        }
        dcache_close(c);
}

static long rss_kib(void)
{
        FILE *f = fopen("/proc/self/status", "r");
        char line[256];
        long kib = -1;
        while (f && fgets(line, sizeof(line), f))
                if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
                        break;
        if (f)
                fclose(f);
        return kib;
}

/* Storing every page of a 256 MiB guest into a 1 MiB cache keeps the
 * cache's memory at dcache_bytes(), not at 256 MiB. */
static void test_bounded_memory(void **state)
{
        const uint32_t npages = 65536, slots = 256;
        uint64_t owned = slots * 4096ull + npages * 4ull + slots * 5ull;
        assert_true(dcache_bytes(npages, slots) >= owned);
        assert_true(dcache_bytes(npages, slots) <= owned + 4096);
        struct dcache *c;
        assert_int_equal(dcache_open(npages, slots, &c), 0);
        long before = rss_kib();
        uint8_t buf[PAGE];
        for (uint32_t pfn = 0; pfn < npages; pfn++) {
                fill(buf, pfn, 1);
                dcache_store(c, pfn, buf);
        }
        long grew = rss_kib() - before;
        struct dcache_stats st;
        dcache_get_stats(c, &st);
        assert_int_equal(st.used, slots);
        assert_int_equal(st.evictions, npages - slots);
        /* 1 MiB of slots + 256 KiB of index; the slack is for malloc and
         * the sanitizers' shadow memory. Unbounded, it would be 256 MiB. */
        assert_true(before > 0);
        assert_true(grew < (long)(dcache_bytes(npages, slots) / 1024) + 4096);
        /* the last `slots` pages stored are the ones cached */
        for (uint32_t pfn = npages - slots; pfn < npages; pfn++)
                assert_true(has(c, pfn, 1));
        assert_false(has(c, npages - slots - 1, 1));
        dcache_close(c);
}

static void test_drop_all_and_forget(void **state)
{
        struct dcache *c;
        assert_int_equal(dcache_open(64, 4, &c), 0);
        for (uint32_t i = 0; i < 10; i++)
                put(c, i, 1);
        dcache_drop_all(c);
        for (uint32_t i = 0; i < 64; i++)
                assert_null(dcache_lookup(c, i));
        assert_int_equal(dcache_check(c), 0);
        struct dcache_stats st;
        dcache_get_stats(c, &st);
        assert_int_equal(st.used, 0);
        assert_int_equal(st.misses, 64); /* statistics survive a drop */
        /* it fills again, up to its size */
        for (uint32_t i = 20; i < 24; i++)
                put(c, i, 2);
        for (uint32_t i = 20; i < 24; i++)
                assert_true(has(c, i, 2));
        dcache_forget(c, 21);
        dcache_forget(c, 21);
        dcache_forget(c, 63); /* not cached: nothing */
        assert_false(has(c, 21, 2));
        dcache_get_stats(c, &st);
        assert_int_equal(st.used, 3);
        /* the freed slot is reused before anything is evicted */
        put(c, 30, 1);
        for (uint32_t i = 20; i < 24; i++)
                assert_int_equal(has(c, i, 2), i != 21);
        assert_true(has(c, 30, 1));
        dcache_get_stats(c, &st);
        assert_int_equal(st.evictions, 6); /* all before the drop */
        assert_int_equal(dcache_check(c), 0);
        dcache_close(c);
}

static void test_model_check(void **state)
{
        static const uint32_t geom[][2] = { { 1, 8 }, { 3, 16 }, { 8, 64 }, { 16, 1000 },
                                            { 64, 100 }, { 64, 64 } };
        for (unsigned g = 0; g < sizeof(geom) / sizeof(geom[0]); g++)
                for (unsigned seed = 1; seed <= 20; seed++) {
                        unsigned bad = model_check(seed, geom[g][0], geom[g][1], 3000);
                        if (bad)
                                fail_msg("slots %u, npages %u, seed %u: %u disagreements",
                                         geom[g][0], geom[g][1], seed, bad);
                }
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_open_refuses),
                cmocka_unit_test(test_store_lookup_update),
                cmocka_unit_test(test_clock_order),
                cmocka_unit_test(test_hot_page_survives_stream),
                cmocka_unit_test(test_bounded_memory),
                cmocka_unit_test(test_drop_all_and_forget),
                cmocka_unit_test(test_model_check),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

#else /* the mutant: its eviction leaves the evicted page indexed */

static void test_mutant_is_caught(void **state)
{
        unsigned bad = 0;
        for (unsigned seed = 1; seed <= 5; seed++)
                bad += model_check(seed, 8, 64, 3000);
        if (!bad)
                fail_msg("the model check did not notice an eviction that forgets to unindex");
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_mutant_is_caught),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

#endif
