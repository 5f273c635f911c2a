/* accel: the KVM probe and what `accel = auto` resolves to.
 *
 * The probe guest is checked under TCG (it must print its marker: the probe
 * is not broken), then against fake QEMUs (one that hangs, one that fails
 * with an error, one that prints the marker) and a binary that does not
 * exist. The KVM part adapts to the machine: it runs the same payload under
 * KVM when /dev/kvm can be opened and only checks that the verdict is
 * consistent; without /dev/kvm it is skipped. Set HAVMS_QEMU to use
 * another QEMU; without one the real-QEMU tests are skipped (exit 77).
 */
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "accel.h"
#include "util.h"

static char qemu_bin[512];
static char dir[64];

static bool find_qemu(void)
{
        const char *env = getenv("HAVMS_QEMU");
        if (env && env[0]) {
                snprintf(qemu_bin, sizeof(qemu_bin), "%s", env);
                return access(qemu_bin, X_OK) == 0;
        }
        const char *path = getenv("PATH");
        char buf[4096];
        snprintf(buf, sizeof(buf), "%s", path ? path : "/usr/bin:/bin");
        for (char *s = NULL, *d = strtok_r(buf, ":", &s); d; d = strtok_r(NULL, ":", &s)) {
                snprintf(qemu_bin, sizeof(qemu_bin), "%s/qemu-system-x86_64", d);
                if (access(qemu_bin, X_OK) == 0)
                        return true;
        }
        return false;
}

static int count_fds(void)
{
        DIR *d = opendir("/proc/self/fd");
        int n = 0;
        for (struct dirent *e; d && (e = readdir(d));)
                n += e->d_name[0] != '.';
        if (d)
                closedir(d);
        return n;
}

/* The probe leaves no child (zombie or running) and no descriptor. */
static void assert_clean(int fds_before)
{
        assert_int_equal(waitpid(-1, NULL, WNOHANG), -1);
        assert_int_equal(errno, ECHILD);
        assert_int_equal(count_fds(), fds_before);
}

static void fake(const char *name, const char *body, char *path, size_t len)
{
        snprintf(path, len, "%s/%s", dir, name);
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fprintf(f, "#!/bin/sh\n%s\n", body);
        fclose(f);
        assert_int_equal(chmod(path, 0755), 0);
}

static int setup(void **state)
{
        (void)state;
        strcpy(dir, "/tmp/havms-accel-XXXXXX");
        return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
        (void)state;
        static const char *const names[] = { "hang", "fail", "marker" };
        char p[128];
        for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
                snprintf(p, sizeof(p), "%s/%s", dir, names[i]);
                unlink(p);
        }
        rmdir(dir);
        return 0;
}

static void test_tcg_runs_payload(void **state)
{
        (void)state;
        char why[256];
        int fds = count_fds();
        uint64_t t0 = now_ms();
        int r = accel_probe_with(qemu_bin, "tcg", 20000, why, sizeof(why));
        printf("tcg probe: %d (%s), %llu ms\n", r, why, (unsigned long long)(now_ms() - t0));
        assert_int_equal(r, 1);
        assert_non_null(strstr(why, "ran under tcg"));
        assert_clean(fds);
}

static void test_missing_binary(void **state)
{
        (void)state;
        char why[256];
        int fds = count_fds();
        int r = accel_probe_with("/nonexistent/qemu-system-x86_64", "tcg", 1000, why, sizeof(why));
        assert_int_equal(r, -ENOENT);
        assert_non_null(strstr(why, "cannot run /nonexistent/qemu-system-x86_64"));
        assert_clean(fds);
        /* auto on a host with KVM but a bogus QEMU: TCG, and the reason */
        if (access("/dev/kvm", R_OK | W_OK) == 0) {
                struct accel_choice c;
                accel_decide("/nonexistent/qemu-system-x86_64", NULL, "/dev/kvm", &c);
                assert_string_equal(c.accel, "tcg");
                assert_int_equal(c.basis, ACCEL_BASIS_PROBE_ERROR);
        }
}

static void test_qemu_error(void **state)
{
        (void)state;
        char q[128], why[256];
        fake("fail", "echo 'qemu: Could not access KVM kernel module: Permission denied' >&2; exit 1",
             q, sizeof(q));
        int fds = count_fds();
        int r = accel_probe_with(q, "kvm", 5000, why, sizeof(why));
        assert_int_equal(r, 0);
        assert_non_null(strstr(why, "exited (status 1)"));
        assert_non_null(strstr(why, "Could not access KVM kernel module"));
        assert_clean(fds);
}

static void test_hang_killed_at_deadline(void **state)
{
        (void)state;
        char q[128], why[256];
        fake("hang", "exec sleep 60", q, sizeof(q));
        int fds = count_fds();
        uint64_t t0 = now_ms();
        int r = accel_probe_with(q, "kvm", 300, why, sizeof(why));
        uint64_t took = now_ms() - t0;
        assert_int_equal(r, 0);
        assert_non_null(strstr(why, "no sign of life in 300 ms"));
        assert_true(took >= 300 && took < 3000);
        assert_clean(fds);
}

static void test_marker_detected(void **state)
{
        (void)state;
        char q[128], why[256];
        fake("marker", "printf 'junk " ACCEL_PROBE_MARKER "\\n'; exec sleep 60", q, sizeof(q));
        int fds = count_fds();
        assert_int_equal(accel_probe_with(q, "kvm", 5000, why, sizeof(why)), 1);
        assert_clean(fds);
}

static void test_env_override(void **state)
{
        (void)state;
        const char *bogus = "/nonexistent/qemu-system-x86_64";
        struct accel_choice c;
        /* forced: no probe runs (the bogus QEMU would fail it) */
        accel_decide(bogus, "kvm", "/dev/kvm", &c);
        assert_string_equal(c.accel, "kvm");
        assert_int_equal(c.basis, ACCEL_BASIS_ENV);
        assert_int_equal(c.probe_ms, 0);
        accel_decide(bogus, "tcg", "/dev/kvm", &c);
        assert_string_equal(c.accel, "tcg");
        assert_int_equal(c.basis, ACCEL_BASIS_ENV);
        /* nonsense is ignored, and said so */
        accel_decide(bogus, "xen", "/nonexistent/kvm", &c);
        assert_string_equal(c.accel, "tcg");
        assert_int_equal(c.basis, ACCEL_BASIS_NO_KVM);
        assert_non_null(strstr(c.why, "HAVMS_ACCEL=xen ignored"));
        /* through the environment and the cache */
        accel_forget();
        setenv("HAVMS_ACCEL", "kvm", 1);
        assert_string_equal(accel_resolve("auto", bogus), "kvm");
        setenv("HAVMS_ACCEL", "tcg", 1);
        assert_string_equal(accel_resolve("auto", bogus), "kvm");   /* cached */
        accel_forget();
        assert_string_equal(accel_resolve("auto", bogus), "tcg");
        /* an explicit setting is the operator's, whatever the environment */
        assert_string_equal(accel_resolve("kvm", bogus), "kvm");
        unsetenv("HAVMS_ACCEL");
        accel_forget();
        assert_string_equal(accel_resolve("tcg", bogus), "tcg");
}

static void test_no_kvm_device(void **state)
{
        (void)state;
        struct accel_choice c;
        accel_decide(qemu_bin, NULL, "/nonexistent/kvm", &c);
        assert_string_equal(c.accel, "tcg");
        assert_int_equal(c.basis, ACCEL_BASIS_NO_KVM);
        assert_int_equal(c.probe_ms, 0);
        assert_non_null(strstr(c.why, "No such file"));
}

/* Whatever this machine's KVM does, the verdict must hang together: a KVM
 * said to work ran the same payload TCG runs, auto follows the probe, and
 * the probe keeps its deadline. */
static void test_kvm_consistent(void **state)
{
        (void)state;
        if (access("/dev/kvm", R_OK | W_OK) < 0) {
                printf("SKIP kvm part: /dev/kvm: %s\n", strerror(errno));
                skip();
        }
        char why[256], twhy[256];
        int fds = count_fds();
        uint64_t t0 = now_ms();
        int r = accel_probe(qemu_bin, ACCEL_PROBE_TIMEOUT_MS, why, sizeof(why));
        uint64_t took = now_ms() - t0;
        printf("kvm probe on this machine: %s (%s), %llu ms\n", r == 1 ? "KVM runs guests" :
               r == 0 ? "KVM unusable" : "probe error", why, (unsigned long long)took);
        assert_true(r == 0 || r == 1);
        assert_true(took < ACCEL_PROBE_TIMEOUT_MS + 2000);
        assert_clean(fds);
        assert_int_equal(accel_probe_with(qemu_bin, "tcg", 20000, twhy, sizeof(twhy)), 1);
        struct accel_choice c;
        accel_decide(qemu_bin, NULL, "/dev/kvm", &c);
        printf("auto: %s (%s)\n", c.accel, c.why);
        assert_string_equal(c.accel, r == 1 ? "kvm" : "tcg");
        assert_int_equal(c.basis, r == 1 ? ACCEL_BASIS_PROBE_OK : ACCEL_BASIS_PROBE_FAILED);
        assert_true(c.probe_ms > 0);
}

int main(void)
{
        const struct CMUnitTest plain[] = {
                cmocka_unit_test(test_missing_binary),
                cmocka_unit_test(test_qemu_error),
                cmocka_unit_test(test_hang_killed_at_deadline),
                cmocka_unit_test(test_marker_detected),
                cmocka_unit_test(test_env_override),
        };
        const struct CMUnitTest real[] = {
                cmocka_unit_test(test_tcg_runs_payload),
                cmocka_unit_test(test_no_kvm_device),
                cmocka_unit_test(test_kvm_consistent),
        };
        setvbuf(stdout, NULL, _IOLBF, 0);
        unsetenv("HAVMS_ACCEL");
        int failed = cmocka_run_group_tests_name("accel", plain, setup, teardown);
        if (!find_qemu()) {
                fprintf(stderr, "SKIP: qemu-system-x86_64 not found (PATH or HAVMS_QEMU): "
                                "the real-QEMU tests did not run\n");
                return failed ? 1 : 77;
        }
        failed += cmocka_run_group_tests_name("accel-qemu", real, NULL, NULL);
        return failed ? 1 : 0;
}
