/* Fencing: the fence-agents protocol through the real fence_dummy (its
 * file type keeps the power state in a file) and through script agents
 * written here: off counts only when status confirms it, levels in order,
 * every attempt reported, a timeout kills the agent's whole process group,
 * no descriptor leaks into agents, the asynchronous form. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#define SCRATCH_NAME "havms-fencetest"
#include "scratch.h"

#include "fence.h"



/* An executable /bin/sh script DIR/name; returns "script:DIR/name". */
static const char *script(const char *name, const char *body)
{
        static char agent[4][160];
        static int k;
        char path[128];
        snprintf(path, sizeof(path), "%s/%s", scratch, name);
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fprintf(f, "#!/bin/sh\n%s\n", body);
        fclose(f);
        assert_int_equal(chmod(path, 0755), 0);
        k = (k + 1) % 4;
        snprintf(agent[k], sizeof(agent[k]), "script:%s", path);
        return agent[k];
}

static void level(struct cfg_fence *f, const char *agent, const char *args)
{
        struct cfg_fence_level *l = &f->levels[f->n_levels++];
        snprintf(l->agent, sizeof(l->agent), "%s", agent);
        snprintf(l->args, sizeof(l->args), "%s", args);
}

static struct cfg_fence fence_cfg(uint32_t timeout_ms)
{
        struct cfg_fence f = { .host = "hostB", .timeout_ms = timeout_ms };
        return f;
}

static bool have_fence_dummy(void)
{
        return access("/usr/sbin/fence_dummy", X_OK) == 0;
}

static void test_dummy_off_verified_on_status_monitor(void **state)
{
        if (!have_fence_dummy())
                skip(); /* fence-agents not installed (scripts/setup.sh installs it) */
        struct cfg_fence f = fence_cfg(20000);
        char args[200];
        snprintf(args, sizeof(args), "status_file=%s/dummy.st", scratch);
        level(&f, "fence_dummy", args);
        struct fence_result r;
        assert_int_equal(fence_run(&f, FENCE_ON, 0, &r), 0);
        assert_true(r.ok);
        assert_int_equal(r.power, FENCE_POWER_ON);
        assert_int_equal(fence_run(&f, FENCE_STATUS, 0, &r), 0);
        assert_true(r.ok);
        assert_int_equal(r.power, FENCE_POWER_ON);
        assert_int_equal(r.attempts[0].run.exit_code, 0);

        assert_int_equal(fence_run(&f, FENCE_OFF, 0, &r), 0);
        assert_true(r.ok);
        assert_int_equal(r.level, 1);
        assert_int_equal(r.power, FENCE_POWER_OFF);
        assert_int_equal(r.n_attempts, 2); /* off, then status confirms */
        assert_string_equal(r.attempts[0].action, "off");
        assert_string_equal(r.attempts[1].action, "status");
        assert_int_equal(r.attempts[1].run.exit_code, 2);
        assert_non_null(strstr(r.attempts[1].run.stderr_tail, "Status: OFF"));
        print_message("fence_dummy off+status: %llu ms\n", (unsigned long long)r.duration_ms);

        assert_int_equal(fence_run(&f, FENCE_STATUS, 0, &r), 0);
        assert_int_equal(r.power, FENCE_POWER_OFF);
        assert_int_equal(fence_run(&f, FENCE_MONITOR, 0, &r), 0);
        assert_true(r.ok);
}

/* The agent sees its arguments as key=value lines, the action last, and
 * the two variables; nothing else is open in it. */
static void test_script_protocol_and_no_fd_leak(void **state)
{
        char body[512];
        snprintf(body, sizeof(body),
                 "cat > %s/stdin.txt\n"
                 "echo \"$HAVMS_FENCE_ACTION $HAVMS_FENCE_HOST $#\" > %s/env.txt\n"
                 "[ -e /proc/$$/fd/100 ] && { echo leaked fd 100 >&2; exit 9; }\n"
                 "exit 0", scratch, scratch);
        struct cfg_fence f = fence_cfg(5000);
        level(&f, script("proto", body), "plug=4 ip=10.88.0.101");
        int p[2];
        assert_int_equal(pipe(p), 0); /* no O_CLOEXEC on purpose */
        assert_int_equal(dup2(p[0], 100), 100);
        struct fence_result r;
        assert_int_equal(fence_run(&f, FENCE_MONITOR, 0, &r), 0);
        close(100);
        close(p[0]);
        close(p[1]);
        if (!r.ok)
                fail_msg("monitor failed: %s (%s)", r.attempts[0].reason, r.attempts[0].run.stderr_tail);
        char path[128], buf[256] = "";
        snprintf(path, sizeof(path), "%s/stdin.txt", scratch);
        FILE *fp = fopen(path, "r");
        assert_non_null(fp);
        size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
        fclose(fp);
        buf[n] = 0;
        assert_string_equal(buf, "plug=4\nip=10.88.0.101\naction=monitor\n");
        snprintf(path, sizeof(path), "%s/env.txt", scratch);
        fp = fopen(path, "r");
        assert_non_null(fp);
        assert_non_null(fgets(buf, sizeof(buf), fp));
        fclose(fp);
        assert_string_equal(buf, "monitor hostB 0\n");
}

static void test_off_claimed_but_status_on_is_failure(void **state)
{
        struct cfg_fence f = fence_cfg(5000);
        level(&f, script("liar", "read -r a; exit 0  # claims everything, power stays on"), "");
        struct fence_result r;
        assert_int_equal(fence_run(&f, FENCE_OFF, 0, &r), 0);
        assert_false(r.ok);
        assert_int_equal(r.level, 0);
        assert_int_equal(r.n_attempts, 2);
        assert_true(r.attempts[0].ok);   /* off exited 0 ... */
        assert_false(r.attempts[1].ok);  /* ... status said on */
        assert_non_null(strstr(r.attempts[1].reason, "off reported success but status says the power is still on"));
}

/* A state file makes a script a tiny power switch: off writes it, status
 * reads it. */
static const char *switch_script(const char *name)
{
        char body[512];
        snprintf(body, sizeof(body),
                 "st=%s/%s.state\n"
                 "case $HAVMS_FENCE_ACTION in\n"
                 "off) echo off > $st; exit 0;;\n"
                 "on) echo on > $st; exit 0;;\n"
                 "status) [ \"$(cat $st 2>/dev/null)\" = off ] && exit 2; exit 0;;\n"
                 "monitor) exit 0;;\n"
                 "esac\nexit 1", scratch, name);
        return script(name, body);
}

static void test_first_level_fails_second_used(void **state)
{
        struct cfg_fence f = fence_cfg(5000);
        level(&f, script("broken", "echo 'Unable to connect/login to fencing device' >&2; exit 1"), "");
        level(&f, switch_script("sw2"), "");
        struct fence_result r;
        assert_int_equal(fence_run(&f, FENCE_OFF, 0, &r), 0);
        assert_true(r.ok);
        assert_int_equal(r.level, 2);
        assert_int_equal(r.n_attempts, 3);
        assert_int_equal(r.attempts[0].level, 1);
        assert_false(r.attempts[0].ok);
        assert_int_equal(r.attempts[0].run.exit_code, 1);
        assert_string_equal(r.attempts[0].run.stderr_tail, "Unable to connect/login to fencing device");
        assert_int_equal(r.attempts[1].level, 2);
        assert_int_equal(r.attempts[2].run.exit_code, 2);
        /* only_level: level 1 alone fails, level 2 alone works */
        assert_int_equal(fence_run(&f, FENCE_OFF, 1, &r), 0);
        assert_false(r.ok);
        assert_int_equal(r.n_attempts, 1);
        assert_int_equal(fence_run(&f, FENCE_STATUS, 2, &r), 0);
        assert_int_equal(r.power, FENCE_POWER_OFF);
        assert_int_equal(fence_run(&f, FENCE_OFF, 3, &r), -EINVAL);
}

static void test_all_levels_fail_every_attempt_reported(void **state)
{
        struct cfg_fence f = fence_cfg(5000);
        level(&f, script("fail3", "echo first line >&2; echo 'Failed: Timed out waiting to power OFF' >&2; exit 1"), "");
        level(&f, "fence_havms_no_such_agent", "");
        level(&f, script("fail4", "exit 4"), "");
        struct fence_result r;
        assert_int_equal(fence_run(&f, FENCE_OFF, 0, &r), 0);
        assert_false(r.ok);
        assert_int_equal(r.n_attempts, 3);
        assert_string_equal(r.attempts[0].run.stderr_tail,
                            "first line | Failed: Timed out waiting to power OFF");
        assert_string_equal(r.attempts[0].reason, "off exit 1");
        assert_int_equal(r.attempts[1].run.end, RUNNER_NOEXEC);
        assert_non_null(strstr(r.attempts[1].reason, "not found"));
        assert_int_equal(r.attempts[2].run.exit_code, 4);
        for (unsigned i = 0; i < 3; i++)
                assert_int_equal(r.attempts[i].level, i + 1);
}

static bool gone(pid_t pid)
{
        char p[64], st[512] = "";
        snprintf(p, sizeof(p), "/proc/%d/stat", (int)pid);
        FILE *f = fopen(p, "r");
        if (!f)
                return true;
        size_t n = fread(st, 1, sizeof(st) - 1, f);
        fclose(f);
        st[n] = 0;
        const char *c = strrchr(st, ')');
        return c && (c[2] == 'Z' || c[2] == 'X'); /* a zombie awaiting init is gone too */
}

static void test_timeout_kills_the_process_group(void **state)
{
        char body[256];
        snprintf(body, sizeof(body), "sleep 60 &\necho $$ $! > %s/pids\nsleep 60\nexit 0", scratch);
        struct cfg_fence f = fence_cfg(300);
        level(&f, script("hang", body), "");
        struct fence_result r;
        assert_int_equal(fence_run(&f, FENCE_OFF, 0, &r), 0);
        assert_false(r.ok);
        assert_int_equal(r.n_attempts, 1);
        assert_int_equal(r.attempts[0].run.end, RUNNER_TIMEOUT);
        assert_true(r.attempts[0].run.duration_ms >= 300 && r.attempts[0].run.duration_ms < 2000);
        assert_non_null(strstr(r.attempts[0].reason, "timeout after"));
        char path[128];
        snprintf(path, sizeof(path), "%s/pids", scratch);
        FILE *fp = fopen(path, "r");
        assert_non_null(fp);
        int sh = 0, bg = 0;
        assert_int_equal(fscanf(fp, "%d %d", &sh, &bg), 2);
        fclose(fp);
        assert_int_equal(sh, r.attempts[0].run.pid);
        /* the agent is reaped; its background child was killed with it */
        for (int i = 0; i < 100 && !gone(bg); i++)
                usleep(10000);
        assert_true(gone(sh));
        assert_true(gone(bg));
}

static void test_monitor_checks_every_level(void **state)
{
        struct cfg_fence f = fence_cfg(5000);
        level(&f, switch_script("m1"), "");
        level(&f, script("m2", "exit 1"), "");
        struct fence_result r;
        assert_int_equal(fence_run(&f, FENCE_MONITOR, 0, &r), 0);
        assert_false(r.ok);
        assert_int_equal(r.n_attempts, 2);
        assert_true(r.attempts[0].ok);
        assert_false(r.attempts[1].ok);
        assert_int_equal(fence_run(&f, FENCE_MONITOR, 1, &r), 0);
        assert_true(r.ok);
}

static void test_unknown_exit_codes(void **state)
{
        struct cfg_fence f = fence_cfg(5000);
        level(&f, script("odd", "case $HAVMS_FENCE_ACTION in off) exit 0;; *) exit 3;; esac"), "");
        struct fence_result r;
        assert_int_equal(fence_run(&f, FENCE_STATUS, 0, &r), 0);
        assert_false(r.ok);
        assert_int_equal(r.power, FENCE_POWER_UNKNOWN);
        assert_non_null(strstr(r.attempts[0].reason, "power state unknown"));
        assert_int_equal(fence_run(&f, FENCE_OFF, 0, &r), 0);
        assert_false(r.ok);
        assert_non_null(strstr(r.attempts[1].reason, "off reported success but status exit 3"));
        /* killed by a signal */
        struct cfg_fence g = fence_cfg(5000);
        level(&g, script("selfkill", "kill -SEGV $$"), "");
        assert_int_equal(fence_run(&g, FENCE_ON, 0, &r), 0);
        assert_false(r.ok);
        assert_int_equal(r.attempts[0].run.end, RUNNER_SIGNALED);
        assert_int_equal(r.attempts[0].run.signal, SIGSEGV);
        /* a non-executable script */
        struct cfg_fence h = fence_cfg(5000);
        char path[160];
        snprintf(path, sizeof(path), "script:%s/proto.txt", scratch);
        FILE *fp = fopen(path + 7, "w");
        fclose(fp);
        level(&h, path, "");
        assert_int_equal(fence_run(&h, FENCE_ON, 0, &r), 0);
        assert_int_equal(r.attempts[0].run.end, RUNNER_NOEXEC);
}

static void test_async_completion_on_fd(void **state)
{
        struct cfg_fence f = fence_cfg(5000);
        level(&f, script("slow", "sleep 0.2; exit 1"), "");
        level(&f, switch_script("sw3"), "");
        struct fence_op *op;
        assert_int_equal(fence_start(&f, FENCE_OFF, 0, &op), 0);
        struct fence_result r;
        assert_int_equal(fence_op_result(op, &r), -EAGAIN); /* level 1 still sleeps */
        struct pollfd p = { .fd = fence_op_fd(op), .events = POLLIN };
        assert_int_equal(poll(&p, 1, 5000), 1);
        assert_int_equal(fence_op_result(op, &r), 0);
        assert_true(r.ok);
        assert_int_equal(r.level, 2);
        assert_true(r.duration_ms >= 200);
        fence_op_free(op);
        fence_op_free(NULL);
        /* freed while running: returns once the current agent call ends */
        struct cfg_fence g = fence_cfg(300);
        level(&g, script("slow2", "sleep 5"), "");
        level(&g, script("slow3", "sleep 5"), "");
        assert_int_equal(fence_start(&g, FENCE_OFF, 0, &op), 0);
        usleep(50000);
        fence_op_free(op); /* at most one 300 ms timeout, not two */
}

static int count_fds(void)
{
        DIR *d = opendir("/proc/self/fd");
        int n = 0;
        assert_non_null(d);
        while (readdir(d))
                n++;
        closedir(d);
        return n;
}

/* The caller keeps no descriptor of finished operations: not of agents
 * that exited, timed out or could not run, nor of async jobs. */
static void test_no_fd_left_in_caller(void **state)
{
        struct cfg_fence f = fence_cfg(200);
        level(&f, script("ok", "exit 0"), "");
        level(&f, "fence_havms_no_such_agent", "");
        level(&f, script("hang2", "sleep 5"), "");
        struct fence_result r;
        assert_int_equal(fence_run(&f, FENCE_MONITOR, 0, &r), 0); /* warm up libc */
        int before = count_fds();
        for (int i = 0; i < 3; i++) {
                assert_int_equal(fence_run(&f, FENCE_MONITOR, 0, &r), 0);
                struct fence_op *op;
                assert_int_equal(fence_start(&f, FENCE_MONITOR, 1, &op), 0);
                struct pollfd p = { .fd = fence_op_fd(op), .events = POLLIN };
                assert_int_equal(poll(&p, 1, 5000), 1);
                fence_op_free(op);
        }
        assert_int_equal(count_fds(), before);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_dummy_off_verified_on_status_monitor),
                cmocka_unit_test(test_script_protocol_and_no_fd_leak),
                cmocka_unit_test(test_off_claimed_but_status_on_is_failure),
                cmocka_unit_test(test_first_level_fails_second_used),
                cmocka_unit_test(test_all_levels_fail_every_attempt_reported),
                cmocka_unit_test(test_timeout_kills_the_process_group),
                cmocka_unit_test(test_monitor_checks_every_level),
                cmocka_unit_test(test_unknown_exit_codes),
                cmocka_unit_test(test_async_completion_on_fd),
                cmocka_unit_test(test_no_fd_left_in_caller),
        };
        return cmocka_run_group_tests(tests, scratch_setup, scratch_teardown);
}
