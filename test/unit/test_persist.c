/* persist: the generation file (missing, round trip, corrupt forms) and
 * the standby's device-state file (pending is never loaded, commit, every
 * kind of damage refused). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#define SCRATCH_NAME "havms-persist"
#include "scratch.h"

#include "persist.h"

static struct host_config host;

static int setup(void **state)
{
        assert_int_equal(scratch_setup(state), 0);
        snprintf(host.state_dir, sizeof(host.state_dir), "%s", scratch);
        snprintf(host.ram_dir, sizeof(host.ram_dir), "%s", scratch);
        return 0;
}



static void test_generation(void **state)
{
        char err[512];
        uint64_t g = 99;
        assert_int_equal(persist_generation_load(&host, "vm1", &g, err, sizeof(err)), 0);
        assert_int_equal(g, 0); /* missing = 0 */
        assert_int_equal(persist_generation_store(&host, "vm1", 7), 0);
        assert_int_equal(persist_generation_load(&host, "vm1", &g, err, sizeof(err)), 0);
        assert_int_equal(g, 7);
        assert_int_equal(persist_generation_store(&host, "vm1", 18446744073709551615ull), 0);
        assert_int_equal(persist_generation_load(&host, "vm1", &g, err, sizeof(err)), 0);
        assert_true(g == 18446744073709551615ull);
        static const char *const bad[] = {
                "", "havms-generation \n", "havms-generation 12", "havms-generation 12x\n",
                "havms-generation -1\n", "havms-generation 99999999999999999999\n",
                "generation 3\n", "havms-generation 3\n4\n",
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                scratch_put("vm2.generation", bad[i]);
                g = 5;
                err[0] = 0;
                assert_int_equal(persist_generation_load(&host, "vm2", &g, err, sizeof(err)), -EUCLEAN);
                assert_int_equal(g, 5); /* untouched on failure */
                assert_non_null(strstr(err, "corrupt"));
        }
}

static void test_devstate(void **state)
{
        char err[512];
        struct devstate_hdr h = { .epoch = 42, .generation = 3, .config_digest = 0xabc,
                                  .ram_bytes = 1 << 20 };
        strcpy(h.primary, "hostA");
        uint8_t data[5000];
        for (size_t i = 0; i < sizeof(data); i++)
                data[i] = (uint8_t)(i * 7);
        struct devstate_hdr g;
        uint8_t *got = NULL;
        size_t len = 0;
        assert_int_equal(persist_devstate_load(&host, "vm", &g, &got, &len, err, sizeof(err)), -ENOENT);

        /* pending: the replica may be half-applied, never loaded */
        assert_int_equal(persist_devstate_begin(&host, "vm", &h, data, sizeof(data)), 0);
        assert_int_equal(persist_devstate_load(&host, "vm", &g, &got, &len, err, sizeof(err)), -EUCLEAN);
        assert_non_null(strstr(err, "being applied"));

        assert_int_equal(persist_devstate_commit(&host, "vm"), 0);
        assert_int_equal(persist_devstate_load(&host, "vm", &g, &got, &len, err, sizeof(err)), 0);
        assert_int_equal(len, sizeof(data));
        assert_memory_equal(got, data, sizeof(data));
        assert_int_equal(g.epoch, 42);
        assert_int_equal(g.generation, 3);
        assert_int_equal(g.config_digest, 0xabc);
        assert_int_equal(g.ram_bytes, 1 << 20);
        assert_string_equal(g.primary, "hostA");
        free(got);

        /* every damaged byte is refused: header or data */
        char p[512];
        snprintf(p, sizeof(p), "%s/vm.devstate", scratch);
        size_t offs[] = { 0, 16, 24, 48, 60, 120, 128, 128 + 4999 };
        for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
                FILE *f = fopen(p, "r+");
                assert_non_null(f);
                fseek(f, (long)offs[i], SEEK_SET);
                int c = fgetc(f);
                fseek(f, (long)offs[i], SEEK_SET);
                fputc(c ^ 0x40, f);
                fclose(f);
                got = NULL;
                assert_int_equal(persist_devstate_load(&host, "vm", &g, &got, &len, err, sizeof(err)),
                                 -EUCLEAN);
                assert_null(got);
                f = fopen(p, "r+");
                fseek(f, (long)offs[i], SEEK_SET);
                fputc(c, f);
                fclose(f);
        }
        /* truncated */
        assert_int_equal(truncate(p, 128 + 100), 0);
        assert_int_equal(persist_devstate_load(&host, "vm", &g, &got, &len, err, sizeof(err)), -EUCLEAN);

        /* a new epoch replaces it; drop forgets it */
        h.epoch = 43;
        assert_int_equal(persist_devstate_begin(&host, "vm", &h, data, 10), 0);
        /* rewritten in place over a longer record: pending until commit,
         * and no stale tail */
        assert_int_equal(persist_devstate_load(&host, "vm", &g, &got, &len, err, sizeof(err)), -EUCLEAN);
        struct stat sb;
        assert_int_equal(stat(p, &sb), 0);
        assert_int_equal(sb.st_size, 128 + 10);
        assert_int_equal(persist_devstate_commit(&host, "vm"), 0);
        assert_int_equal(persist_devstate_load(&host, "vm", &g, &got, &len, err, sizeof(err)), 0);
        assert_int_equal(g.epoch, 43);
        assert_int_equal(len, 10);
        free(got);
        persist_devstate_drop(&host, "vm");
        assert_int_equal(persist_devstate_load(&host, "vm", &g, &got, &len, err, sizeof(err)), -ENOENT);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_generation),
                cmocka_unit_test(test_devstate),
        };
        return cmocka_run_group_tests(tests, setup, scratch_teardown);
}
