/* Hooks: the layout (<scratch>/E, then the files of <scratch>/E.d in byte order), the
 * environment, the exit-code table, the event's time limit, reports of
 * files that cannot run, no hooks scratch = no hooks, the asynchronous form. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
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

#define SCRATCH_NAME "havms-hooktest"
#include "scratch.h"

#include "hooks.h"



/* Fresh hooks scratch for one test: DIR/name. */
static const char *hooks_dir(const char *name)
{
        static char d[128];
        snprintf(d, sizeof(d), "%s/%s", scratch, name);
        assert_int_equal(mkdir(d, 0755), 0);
        return d;
}

static void put(const char *hdir, const char *rel, const char *body, mode_t mode)
{
        char path[256];
        snprintf(path, sizeof(path), "%s/%s", hdir, rel);
        char *slash = strrchr(path, '/');
        *slash = 0;
        mkdir(path, 0755); /* E.d */
        *slash = '/';
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fprintf(f, "#!/bin/sh\n%s\n", body);
        fclose(f);
        assert_int_equal(chmod(path, mode), 0);
}

static char *slurp(const char *hdir, const char *rel)
{
        static char buf[2048];
        char path[256];
        snprintf(path, sizeof(path), "%s/%s", hdir, rel);
        FILE *f = fopen(path, "r");
        if (!f)
                return NULL;
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = 0;
        return buf;
}

static const struct hook_env env_a = { .host = "hostA", .vm = "web01", .peer = "hostB",
                                       .role = "backup", .has_generation = true,
                                       .generation = 7, .has_epoch = true, .epoch = 1234 };

static void test_no_hooks_dir_is_no_hooks(void **state)
{
        struct hook_result r;
        assert_int_equal(hooks_run("/nonexistent/havms/hooks", 1000, HOOK_PRE_ACTIVATE, &env_a, &r), 0);
        assert_int_equal(r.verdict, HOOK_GO);
        assert_int_equal(r.n_runs, 0);
        assert_int_equal(r.n_skipped, 0);
}

static void test_environment_and_argv(void **state)
{
        const char *d = hooks_dir("env");
        char body[256];
        snprintf(body, sizeof(body), "env | grep ^HAVMS_ | sort > %s/env-$1.txt", d);
        put(d, "pre-activate", body, 0755);
        put(d, "pre-fence", body, 0755);
        struct hook_result r;
        assert_int_equal(hooks_run(d, 5000, HOOK_PRE_ACTIVATE, &env_a, &r), 0);
        assert_int_equal(r.verdict, HOOK_GO);
        assert_int_equal(r.n_runs, 1);
        assert_string_equal(slurp(d, "env-pre-activate.txt"),
                            "HAVMS_EPOCH=1234\nHAVMS_EVENT=pre-activate\nHAVMS_GENERATION=7\n"
                            "HAVMS_HOST=hostA\nHAVMS_PEER=hostB\nHAVMS_ROLE=backup\nHAVMS_VM=web01\n");
        struct hook_env fe = { .host = "hostA", .peer = "hostB", .fenced_host = "hostB" };
        assert_int_equal(hooks_run(d, 5000, HOOK_PRE_FENCE, &fe, &r), 0);
        assert_string_equal(slurp(d, "env-pre-fence.txt"),
                            "HAVMS_EVENT=pre-fence\nHAVMS_FENCED_HOST=hostB\nHAVMS_HOST=hostA\n"
                            "HAVMS_PEER=hostB\n");
}

static void test_exit_codes(void **state)
{
        const struct { enum hook_event ev; const char *body; enum hook_verdict want; } t[] = {
                { HOOK_PRE_ACTIVATE, "exit 0", HOOK_GO },
                { HOOK_PRE_ACTIVATE, "exit 1", HOOK_DEFER },
                { HOOK_PRE_ACTIVATE, "exit 2", HOOK_ABORT },
                { HOOK_PRE_ACTIVATE, "exit 42", HOOK_ABORT },
                { HOOK_PRE_ACTIVATE, "kill -TERM $$", HOOK_ABORT },
                { HOOK_PRE_FENCE, "exit 1", HOOK_DEFER },
                { HOOK_PRE_FENCE, "exit 2", HOOK_DEFER },
                { HOOK_POST_ACTIVATE, "exit 2", HOOK_GO },
                { HOOK_POST_FENCE, "exit 1", HOOK_GO },
                { HOOK_PROTECTION_LOST, "exit 9", HOOK_GO },
                { HOOK_PROTECTION_RESTORED, "exit 0", HOOK_GO },
        };
        for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
                char name[32];
                snprintf(name, sizeof(name), "codes%zu", i);
                const char *d = hooks_dir(name);
                put(d, hook_event_name(t[i].ev), t[i].body, 0755);
                struct hook_result r;
                assert_int_equal(hooks_run(d, 5000, t[i].ev, &env_a, &r), 0);
                if (r.verdict != t[i].want || r.n_runs != 1)
                        fail_msg("%s '%s': verdict %s, want %s", hook_event_name(t[i].ev), t[i].body,
                                 hook_verdict_name(r.verdict), hook_verdict_name(t[i].want));
        }
}

static void test_order_and_stop_at_first_no(void **state)
{
        const char *d = hooks_dir("order");
        char b[256];
        /* post- event: everything runs, in order, failures included */
        snprintf(b, sizeof(b), "echo main >> %s/log", d);
        put(d, "post-activate", b, 0755);
        snprintf(b, sizeof(b), "echo 20-b >> %s/log; exit 3", d);
        put(d, "post-activate.d/20-b", b, 0755);
        snprintf(b, sizeof(b), "echo 10-a >> %s/log", d);
        put(d, "post-activate.d/10-a", b, 0755);
        snprintf(b, sizeof(b), "echo Z >> %s/log", d);
        put(d, "post-activate.d/Z", b, 0755); /* 'Z' < 'a' in byte order, after digits */
        put(d, "post-activate.d/30-old~", "exit 1", 0755);
        put(d, "post-activate.d/40-mail.example", "exit 1", 0644);
        put(d, "post-activate.d/.hidden", "exit 1", 0755);
        put(d, "post-activate.d/50-notexec", "exit 0", 0644);
        struct hook_result r;
        assert_int_equal(hooks_run(d, 5000, HOOK_POST_ACTIVATE, &env_a, &r), 0);
        assert_int_equal(r.verdict, HOOK_GO);
        assert_int_equal(r.n_runs, 4);
        assert_string_equal(slurp(d, "log"), "main\n10-a\n20-b\nZ\n");
        assert_int_equal(r.runs[2].run.exit_code, 3);
        assert_int_equal(r.n_skipped, 1); /* reported; the ignored names are not */
        assert_non_null(strstr(r.skipped[0], "post-activate.d/50-notexec"));

        /* pre- event: the first hook that says no ends it */
        snprintf(b, sizeof(b), "echo 1 >> %s/prelog", d);
        put(d, "pre-activate.d/1", b, 0755);
        snprintf(b, sizeof(b), "echo 2 >> %s/prelog; exit 1", d);
        put(d, "pre-activate.d/2", b, 0755);
        snprintf(b, sizeof(b), "echo 3 >> %s/prelog", d);
        put(d, "pre-activate.d/3", b, 0755);
        assert_int_equal(hooks_run(d, 5000, HOOK_PRE_ACTIVATE, &env_a, &r), 0);
        assert_int_equal(r.verdict, HOOK_DEFER);
        assert_int_equal(r.n_runs, 2);
        assert_string_equal(slurp(d, "prelog"), "1\n2\n");
}

static void test_timeout_defers_and_kills(void **state)
{
        const char *d = hooks_dir("timeout");
        char b[256];
        snprintf(b, sizeof(b), "sleep 30 & echo $! > %s/bg; sleep 30", d);
        put(d, "pre-activate", b, 0755);
        put(d, "post-fence", "sleep 30", 0755);
        struct hook_result r;
        assert_int_equal(hooks_run(d, 300, HOOK_PRE_ACTIVATE, &env_a, &r), 0);
        assert_int_equal(r.verdict, HOOK_DEFER);
        assert_int_equal(r.runs[0].run.end, RUNNER_TIMEOUT);
        assert_true(r.duration_ms >= 250 && r.duration_ms < 2000);
        int bg = atoi(slurp(d, "bg"));
        assert_true(bg > 0);
        bool gone = false;
        for (int i = 0; i < 100 && !gone; i++) {
                char p[64], st[256] = "";
                snprintf(p, sizeof(p), "/proc/%d/stat", bg);
                FILE *f = fopen(p, "r");
                gone = !f; /* reaped */
                if (f) {
                        size_t n = fread(st, 1, sizeof(st) - 1, f);
                        fclose(f);
                        st[n] = 0;
                        gone = strstr(st, ") Z") != NULL; /* killed, awaiting init */
                }
                if (!gone)
                        usleep(10000);
        }
        assert_true(gone); /* the hook's background child died with it */
        /* a post- hook that times out: reported, verdict GO */
        assert_int_equal(hooks_run(d, 200, HOOK_POST_FENCE, &env_a, &r), 0);
        assert_int_equal(r.verdict, HOOK_GO);
        assert_int_equal(r.runs[0].run.end, RUNNER_TIMEOUT);
}

/* The event's hooks share one time limit. */
static void test_time_limit_is_per_event(void **state)
{
        const char *d = hooks_dir("shared");
        put(d, "protection-lost.d/1", "sleep 0.3", 0755);
        put(d, "protection-lost.d/2", "sleep 0.3", 0755);
        put(d, "protection-lost.d/3", "sleep 0.3", 0755);
        struct hook_result r;
        assert_int_equal(hooks_run(d, 500, HOOK_PROTECTION_LOST, &env_a, &r), 0);
        assert_true(r.duration_ms < 900);
        assert_int_equal(r.runs[0].run.end, RUNNER_EXITED);
        assert_int_equal(r.runs[1].run.end, RUNNER_TIMEOUT);
}

static void test_async_and_names(void **state)
{
        const char *d = hooks_dir("async");
        put(d, "pre-fence", "sleep 0.1; exit 1", 0755);
        struct hook_env e = env_a;
        e.fenced_host = "hostB";
        struct hook_op *op;
        assert_int_equal(hooks_start(d, 5000, HOOK_PRE_FENCE, &e, &op), 0);
        struct hook_result r;
        assert_int_equal(hook_op_result(op, &r), -EAGAIN);
        struct pollfd p = { .fd = hook_op_fd(op), .events = POLLIN };
        assert_int_equal(poll(&p, 1, 5000), 1);
        assert_int_equal(hook_op_result(op, &r), 0);
        assert_int_equal(r.verdict, HOOK_DEFER);
        hook_op_free(op);
        hook_op_free(NULL);

        enum hook_event ev;
        assert_int_equal(hook_event_parse("protection-restored", &ev), 0);
        assert_int_equal(ev, HOOK_PROTECTION_RESTORED);
        assert_int_equal(hook_event_parse("post-reboot", &ev), -EINVAL);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_no_hooks_dir_is_no_hooks),
                cmocka_unit_test(test_environment_and_argv),
                cmocka_unit_test(test_exit_codes),
                cmocka_unit_test(test_order_and_stop_at_first_no),
                cmocka_unit_test(test_timeout_defers_and_kills),
                cmocka_unit_test(test_time_limit_is_per_event),
                cmocka_unit_test(test_async_and_names),
        };
        return cmocka_run_group_tests(tests, scratch_setup, scratch_teardown);
}
