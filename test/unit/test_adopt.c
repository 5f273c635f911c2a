/* adopt: the run file a primary VM leaves for a restarted checkpointd
 * (round trip with and without a peer, missing, every damaged form
 * refused, no temporary file left), and the start time that tells a
 * reused pid apart. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <unistd.h>

#include <cmocka.h>

#define SCRATCH_NAME "havms-adopt"
#include "scratch.h"

#include "adopt.h"
#include "qemu.h"

static struct host_config host;

static int setup(void **state)
{
        assert_int_equal(scratch_setup(state), 0);
        snprintf(host.state_dir, sizeof(host.state_dir), "%s", scratch);
        return 0;
}



static unsigned count_files(void)
{
        unsigned n = 0;
        DIR *d = opendir(scratch);
        struct dirent *e;
        assert_non_null(d);
        while ((e = readdir(d)))
                n += e->d_name[0] != '.';
        closedir(d);
        return n;
}

static void test_round_trip(void **state)
{
        char err[256];
        struct run_record in = { .pid = 4242, .start_time = 123456789, .accel = "tcg",
                                 .config_digest = 0xfedcba9876543210ull, .peer = "b",
                                 .output_held = true }, out;
        assert_int_equal(runfile_load(&host, "web01", &out, err, sizeof(err)), -ENOENT);
        assert_int_equal(runfile_store(&host, "web01", &in), 0);
        assert_int_equal(runfile_load(&host, "web01", &out, err, sizeof(err)), 0);
        assert_int_equal(out.pid, 4242);
        assert_true(out.start_time == 123456789);
        assert_string_equal(out.accel, "tcg");
        assert_true(out.config_digest == 0xfedcba9876543210ull);
        assert_string_equal(out.peer, "b");
        assert_true(out.output_held);
        /* unprotected: no peer line, output free; replaces the file whole */
        in.peer[0] = 0;
        in.output_held = false;
        assert_int_equal(runfile_store(&host, "web01", &in), 0);
        assert_int_equal(runfile_load(&host, "web01", &out, err, sizeof(err)), 0);
        assert_string_equal(out.peer, "");
        assert_false(out.output_held);
        assert_int_equal(count_files(), 1); /* no temporary file left */
        runfile_drop(&host, "web01");
        assert_int_equal(runfile_load(&host, "web01", &out, err, sizeof(err)), -ENOENT);
        runfile_drop(&host, "web01"); /* twice is fine */
}

static void test_damaged(void **state)
{
        static const char *const good =
                "havms-run 1\npid 7\nstart_time 9\naccel kvm\nconfig_digest 00ff\noutput free\n";
        static const char *const bad[] = {
                "",
                "havms-run 2\npid 7\nstart_time 9\naccel kvm\nconfig_digest 00ff\noutput free\n",
                "havms-run 1\nstart_time 9\naccel kvm\nconfig_digest 00ff\noutput free\n",
                "havms-run 1\npid 7\naccel kvm\nconfig_digest 00ff\noutput free\n",
                "havms-run 1\npid 7\nstart_time 9\nconfig_digest 00ff\noutput free\n",
                "havms-run 1\npid 7\nstart_time 9\naccel kvm\noutput free\n",
                "havms-run 1\npid 7\nstart_time 9\naccel kvm\nconfig_digest 00ff\n",
                "havms-run 1\npid 0\nstart_time 9\naccel kvm\nconfig_digest 00ff\noutput free\n",
                "havms-run 1\npid -3\nstart_time 9\naccel kvm\nconfig_digest 00ff\noutput free\n",
                "havms-run 1\npid 7x\nstart_time 9\naccel kvm\nconfig_digest 00ff\noutput free\n",
                "havms-run 1\npid 7\nstart_time 9z\naccel kvm\nconfig_digest 00ff\noutput free\n",
                "havms-run 1\npid 7\nstart_time 9\naccel kvmkvmkvm\nconfig_digest 00ff\noutput free\n",
                "havms-run 1\npid 7\nstart_time 9\naccel kvm\nconfig_digest 0xg\noutput free\n",
                "havms-run 1\npid 7\nstart_time 9\naccel kvm\nconfig_digest 00ff\noutput maybe\n",
                "havms-run 1\npid 7\nstart_time 9\naccel kvm\nconfig_digest 00ff\noutput free\nx 1\n",
                "havms-run 1\npid 7\nstart_time 9\naccel kvm\nconfig_digest 00ff\noutput\n",
                /* a peer name longer than any host name */
                "havms-run 1\npid 7\nstart_time 9\naccel kvm\nconfig_digest 00ff\n"
                "peer hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh"
                "hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh\n"
                "output free\n",
                "havms-run 1\npid 7\nstart_time 9\naccel kvm\nconfig_digest 00ff\n"
                "peer hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh\noutput free\n",
        };
        char err[256];
        struct run_record out;
        scratch_put("vm2.run", good);
        assert_int_equal(runfile_load(&host, "vm2", &out, err, sizeof(err)), 0);
        assert_int_equal(out.pid, 7);
        assert_string_equal(out.peer, "");
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                scratch_put("vm2.run", bad[i]);
                err[0] = 0;
                int r = runfile_load(&host, "vm2", &out, err, sizeof(err));
                if (r != -EUCLEAN)
                        fail_msg("case %zu accepted (%d): %s", i, r, bad[i]);
                assert_non_null(strstr(err, "vm2.run"));
        }
        /* longer than any run file */
        char big[2048];
        memset(big, 'x', sizeof(big) - 1);
        big[sizeof(big) - 1] = 0;
        scratch_put("vm2.run", big);
        assert_int_equal(runfile_load(&host, "vm2", &out, err, sizeof(err)), -EUCLEAN);
}

static void test_start_time(void **state)
{
        uint64_t a = 0, b = 0;
        assert_int_equal(qemu_proc_start_time(getpid(), &a), 0);
        assert_int_equal(qemu_proc_start_time(getpid(), &b), 0);
        assert_true(a == b && a > 0);
        uint64_t one = 0;
        assert_int_equal(qemu_proc_start_time(1, &one), 0);
        assert_true(one <= a); /* init started first */
        /* a pid that does not exist */
        assert_int_equal(qemu_proc_start_time(0x3ffffff, &a), -ESRCH);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_round_trip),
                cmocka_unit_test(test_damaged),
                cmocka_unit_test(test_start_time),
        };
        return cmocka_run_group_tests(tests, setup, scratch_teardown);
}
