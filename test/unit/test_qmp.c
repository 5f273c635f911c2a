/* test_qmp: the QMP client against scripted fake servers (framing,
 * deadlines, protocol errors, fd passing) and against a real QEMU
 * (qemu-system-x86_64 -machine q35,accel=tcg -S). The real-QEMU group is
 * skipped (exit 77) when no qemu-system-x86_64 is found; set HAVMS_QEMU to
 * pick a binary. A fake server is a thread on a unix socket in a temp dir;
 * it never calls cmocka (only the test thread may), it records failures in
 * f->failure, which the test checks after joining it.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "qmp.h"

#define SLACK_MS 100  /* allowed overshoot of a deadline */

static uint64_t t_now_us(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void sleep_ms(int ms)
{
        struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

/* ===== fake QMP server ================================================ */

struct fake;
typedef void (*fake_script)(struct fake *f);

struct fake {
        char dir[64];
        char path[128];
        int lfd, cfd;
        pthread_t thread;
        bool started;
        fake_script script;
        atomic_bool stop;
        char rbuf[1 << 16];
        size_t rlen;
        int got_fd;               /* fd received with SCM_RIGHTS, or -1 */
        char got_fd_bytes[64];    /* the bytes that came with it */
        char failure[256];
        struct qmp *q;
};

static void srv_failf(struct fake *f, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));
static void srv_failf(struct fake *f, const char *fmt, ...)
{
        va_list ap;

        if (f->failure[0])
                return;
        va_start(ap, fmt);
        vsnprintf(f->failure, sizeof(f->failure), fmt, ap);
        va_end(ap);
}

/* Wait up to ms for fd, in short slices so a stop request is noticed. */
static bool srv_wait(struct fake *f, int fd, short events, int ms)
{
        uint64_t end = t_now_us() + (uint64_t)ms * 1000u;

        while (!atomic_load(&f->stop) && t_now_us() < end) {
                struct pollfd p = { .fd = fd, .events = events };

                if (poll(&p, 1, 20) > 0)
                        return true;
        }
        return false;
}

static bool srv_send(struct fake *f, const void *buf, size_t len)
{
        const char *p = buf;

        while (len > 0) {
                ssize_t n = send(f->cfd, p, len, MSG_NOSIGNAL);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return false;
                p += n;
                len -= (size_t)n;
        }
        return true;
}

static bool srv_sendf(struct fake *f, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));
static bool srv_sendf(struct fake *f, const char *fmt, ...)
{
        char buf[4096];
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        return srv_send(f, buf, (size_t)n);
}

/* One recvmsg into rbuf, keeping any passed fd. */
static bool srv_fill(struct fake *f, int ms)
{
        union {
                char buf[CMSG_SPACE(sizeof(int))];
                struct cmsghdr align;
        } u;
        struct iovec iov = { f->rbuf + f->rlen, sizeof(f->rbuf) - f->rlen };
        struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
                              .msg_control = u.buf,
                              .msg_controllen = sizeof(u.buf) };
        struct cmsghdr *c;
        ssize_t n;

        if (iov.iov_len == 0 || !srv_wait(f, f->cfd, POLLIN, ms))
                return false;
        n = recvmsg(f->cfd, &msg, MSG_CMSG_CLOEXEC);
        if (n <= 0)
                return false;
        for (c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
                if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                        continue;
                if (f->got_fd >= 0)
                        close(f->got_fd);
                memcpy(&f->got_fd, CMSG_DATA(c), sizeof(int));
                snprintf(f->got_fd_bytes, sizeof(f->got_fd_bytes), "%.*s",
                         (int)n, f->rbuf + f->rlen);
        }
        f->rlen += (size_t)n;
        return true;
}

/* Next "\n"-terminated command, parsed; NULL on EOF, timeout or stop. */
static json_object *srv_read_cmd(struct fake *f, int ms)
{
        char *nl;

        while (!(nl = memchr(f->rbuf, '\n', f->rlen)))
                if (!srv_fill(f, ms))
                        return NULL;
        *nl = '\0';
        json_object *cmd = json_tokener_parse(f->rbuf);
        size_t used = (size_t)(nl + 1 - f->rbuf);
        memmove(f->rbuf, nl + 1, f->rlen - used);
        f->rlen -= used;
        if (!cmd)
                srv_failf(f, "client sent unparsable command");
        return cmd;
}

static int64_t cmd_id(json_object *cmd)
{
        json_object *id;

        if (!json_object_object_get_ex(cmd, "id", &id) ||
            !json_object_is_type(id, json_type_int))
                return -1;
        return json_object_get_int64(id);
}

static const char *cmd_name(json_object *cmd)
{
        json_object *n;

        return json_object_object_get_ex(cmd, "execute", &n) ?
               json_object_get_string(n) : "";
}

static bool srv_greet(struct fake *f)
{
        return srv_sendf(f, "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, "
                         "\"minor\": 2, \"major\": 7}, \"package\": \"fake\"}, "
                         "\"capabilities\": [\"oob\"]}}\r\n");
}

/* Greeting + qmp_capabilities, as QEMU does it. */
static bool srv_handshake(struct fake *f)
{
        json_object *cmd;
        bool ok;

        if (!srv_greet(f))
                return false;
        cmd = srv_read_cmd(f, 5000);
        if (!cmd) {
                srv_failf(f, "no qmp_capabilities");
                return false;
        }
        if (strcmp(cmd_name(cmd), "qmp_capabilities") != 0)
                srv_failf(f, "first command was %s", cmd_name(cmd));
        ok = srv_sendf(f, "{\"return\": {}, \"id\": %lld}\r\n",
                       (long long)cmd_id(cmd));
        json_object_put(cmd);
        return ok;
}

/* Read one command and return its id (-1 if none came). */
static int64_t srv_expect_cmd(struct fake *f, const char *name)
{
        json_object *cmd = srv_read_cmd(f, 5000);
        int64_t id;

        if (!cmd) {
                srv_failf(f, "expected command %s, got none", name);
                return -1;
        }
        if (strcmp(cmd_name(cmd), name) != 0)
                srv_failf(f, "expected command %s, got %s", name, cmd_name(cmd));
        id = cmd_id(cmd);
        json_object_put(cmd);
        return id;
}

/* Until the client hangs up (or the test stops us). */
static void srv_wait_eof(struct fake *f)
{
        while (srv_wait(f, f->cfd, POLLIN, 10000)) {
                char buf[4096];
                ssize_t n = recv(f->cfd, buf, sizeof(buf), 0);

                if (n <= 0 && !(n < 0 && errno == EINTR))
                        return;
        }
}

static void *srv_main(void *arg)
{
        struct fake *f = arg;
        sigset_t all;

        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, NULL);
        if (!srv_wait(f, f->lfd, POLLIN, 10000))
                return NULL;
        f->cfd = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (f->cfd < 0) {
                srv_failf(f, "accept: %s", strerror(errno));
                return NULL;
        }
        f->script(f);
        close(f->cfd);
        f->cfd = -1;
        return NULL;
}

static void fake_start(struct fake *f, fake_script script)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };

        strcpy(f->dir, "/tmp/havms-qmp-fake-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        snprintf(f->path, sizeof(f->path), "%s/qmp.sock", f->dir);
        assert_true(strlen(f->path) < sizeof(sa.sun_path));
        memcpy(sa.sun_path, f->path, strlen(f->path) + 1);
        f->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(f->lfd >= 0);
        assert_int_equal(bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        assert_int_equal(listen(f->lfd, 4), 0);
        f->script = script;
        assert_int_equal(pthread_create(&f->thread, NULL, srv_main, f), 0);
        f->started = true;
}

static void fake_connect(struct fake *f, int timeout_ms)
{
        int r = qmp_connect(f->path, timeout_ms, &f->q);

        if (r < 0)
                fail_msg("qmp_connect: %s (%s)", strerror(-r), f->failure);
        assert_non_null(f->q);
        assert_false(qmp_is_broken(f->q));
}

static int fake_setup(void **state)
{
        struct fake *f = calloc(1, sizeof(*f));

        if (!f)
                return -1;
        f->lfd = f->cfd = f->got_fd = -1;
        *state = f;
        return 0;
}

/* Close the client first: that unblocks every server send/recv. */
static int fake_teardown(void **state)
{
        struct fake *f = *state;

        qmp_close(f->q);
        atomic_store(&f->stop, true);
        if (f->started)
                pthread_join(f->thread, NULL);
        if (f->lfd >= 0)
                close(f->lfd);
        if (f->got_fd >= 0)
                close(f->got_fd);
        if (f->path[0])
                unlink(f->path);
        if (f->dir[0])
                rmdir(f->dir);
        free(f);
        return 0;
}

/* Join the server and fail the test if it saw something wrong. */
static void fake_check(struct fake *f)
{
        qmp_close(f->q);
        f->q = NULL;
        atomic_store(&f->stop, true);
        pthread_join(f->thread, NULL);
        f->started = false;
        if (f->failure[0])
                fail_msg("fake server: %s", f->failure);
}

/* ===== fake-server tests ============================================== */

static void script_basic(struct fake *f)
{
        int64_t id;

        if (!srv_handshake(f))
                return;
        id = srv_expect_cmd(f, "query-status");
        srv_sendf(f, "{\"return\": {\"status\": \"paused\", \"singlestep\": "
                  "false, \"running\": false}, \"id\": %lld}\r\n", (long long)id);
        id = srv_expect_cmd(f, "nope");
        srv_sendf(f, "{\"id\": %lld, \"error\": {\"class\": \"CommandNotFound\", "
                  "\"desc\": \"The command nope has not been found\"}}\r\n",
                  (long long)id);
        id = srv_expect_cmd(f, "migrate");
        srv_sendf(f, "{\"return\": {}, \"id\": %lld}\r\n", (long long)id);
        srv_wait_eof(f);
}

static void test_fake_basic(void **state)
{
        struct fake *f = *state;
        json_object *res = NULL, *v;

        fake_start(f, script_basic);
        fake_connect(f, 2000);
        assert_true(qmp_fd(f->q) >= 0);
        assert_int_equal(qmp_execute(f->q, "query-status", NULL, 1000, &res), 0);
        assert_true(json_object_object_get_ex(res, "status", &v));
        assert_string_equal(json_object_get_string(v), "paused");
        json_object_put(res);

        res = (json_object *)0x1;  /* ret_* untouched on failure */
        assert_int_equal(qmp_execute(f->q, "nope", NULL, 1000, &res), -EIO);
        assert_ptr_equal(res, (json_object *)0x1);
        assert_string_equal(qmp_last_error(f->q),
                            "The command nope has not been found");
        assert_false(qmp_is_broken(f->q));

        /* Bad arguments are refused locally and do not break anything. */
        assert_int_equal(qmp_execute_json(f->q, "migrate", "{\"uri\":", 100,
                                          NULL), -EINVAL);
        assert_int_equal(qmp_execute_json(f->q, "migrate", "[1]", 100, NULL),
                         -EINVAL);
        assert_int_equal(qmp_execute(f->q, NULL, NULL, 100, NULL), -EINVAL);
        assert_int_equal(qmp_execute(f->q, "x", NULL, -1, NULL), -EINVAL);
        assert_false(qmp_is_broken(f->q));
        assert_int_equal(qmp_execute_json(f->q, "migrate",
                                          "{\"uri\":\"fd:ds\"}", 1000, NULL), 0);
        fake_check(f);
}

static void script_silent(struct fake *f)
{
        if (!srv_handshake(f))
                return;
        srv_expect_cmd(f, "query-status");
        srv_wait_eof(f);
}

static void test_fake_timeout_breaks(void **state)
{
        struct fake *f = *state;
        json_object *res = NULL;
        uint64_t t0, ms;

        fake_start(f, script_silent);
        fake_connect(f, 2000);
        t0 = t_now_us();
        assert_int_equal(qmp_execute(f->q, "query-status", NULL, 200, &res),
                         -ETIMEDOUT);
        ms = (t_now_us() - t0) / 1000u;
        printf("timeout 200 ms returned after %llu ms\n", (unsigned long long)ms);
        assert_true(ms >= 199 && ms <= 200 + SLACK_MS);
        assert_null(res);
        assert_true(qmp_is_broken(f->q));
        assert_non_null(strstr(qmp_last_error(f->q), "query-status"));
        assert_int_equal(qmp_execute(f->q, "query-status", NULL, 200, NULL),
                         -EPIPE);
        assert_int_equal(qmp_wait_event(f->q, "STOP", 200, NULL), -EPIPE);
        assert_int_equal(qmp_send_fd(f->q, "x", 0, 200), -EPIPE);
        fake_check(f);
}

static void script_no_greeting(struct fake *f)
{
        srv_wait_eof(f);
}

static void script_no_caps_reply(struct fake *f)
{
        if (srv_greet(f))
                srv_expect_cmd(f, "qmp_capabilities");
        srv_wait_eof(f);
}

static void connect_times_out(struct fake *f, fake_script script)
{
        struct qmp *q = (struct qmp *)0x1;
        uint64_t t0, ms;

        fake_start(f, script);
        t0 = t_now_us();
        assert_int_equal(qmp_connect(f->path, 150, &q), -ETIMEDOUT);
        ms = (t_now_us() - t0) / 1000u;
        assert_true(ms >= 149 && ms <= 150 + SLACK_MS);
        assert_ptr_equal(q, (struct qmp *)0x1);
        fake_check(f);
}

static void test_fake_connect_no_greeting(void **state)
{
        connect_times_out(*state, script_no_greeting);
}

static void test_fake_connect_no_caps_reply(void **state)
{
        connect_times_out(*state, script_no_caps_reply);
}

static void script_bad_greeting(struct fake *f)
{
        srv_sendf(f, "{\"hello\": 1}\r\n");
        srv_wait_eof(f);
}

static void test_fake_bad_greeting(void **state)
{
        struct fake *f = *state;
        struct qmp *q = NULL;

        fake_start(f, script_bad_greeting);
        assert_int_equal(qmp_connect(f->path, 1000, &q), -EPROTO);
        assert_null(q);
        fake_check(f);
}

static void test_connect_errors(void **state)
{
        struct qmp *q = NULL;
        char longpath[200];

        (void)state;
        assert_int_equal(qmp_connect("/nonexistent/qmp.sock", 100, &q), -ENOENT);
        memset(longpath, 'a', sizeof(longpath) - 1);
        longpath[0] = '/';
        longpath[sizeof(longpath) - 1] = '\0';
        assert_int_equal(qmp_connect(longpath, 100, &q), -ENAMETOOLONG);
        assert_int_equal(qmp_connect(NULL, 100, &q), -EINVAL);
        assert_null(q);
        /* Destructors and getters accept NULL. */
        qmp_close(NULL);
        qmp_clear_events(NULL);
        assert_true(qmp_is_broken(NULL));
        assert_string_equal(qmp_last_error(NULL), "");
        assert_int_equal(qmp_execute(NULL, "x", NULL, 10, NULL), -EINVAL);
        assert_int_equal(qmp_wait_event(NULL, "x", 10, NULL), -EINVAL);
}

static void script_garbage(struct fake *f)
{
        if (!srv_handshake(f))
                return;
        srv_expect_cmd(f, "query-status");
        srv_sendf(f, "this is not json\r\n");
        srv_wait_eof(f);
}

static void script_close_mid_object(struct fake *f)
{
        if (!srv_handshake(f))
                return;
        srv_expect_cmd(f, "query-status");
        srv_sendf(f, "{\"return\": {\"sta");
}

static void script_wrong_id(struct fake *f)
{
        int64_t id;

        if (!srv_handshake(f))
                return;
        id = srv_expect_cmd(f, "query-status");
        srv_sendf(f, "{\"return\": {}, \"id\": %lld}\r\n", (long long)id + 1000);
        srv_wait_eof(f);
}

static void script_no_id(struct fake *f)
{
        if (!srv_handshake(f))
                return;
        srv_expect_cmd(f, "query-status");
        srv_sendf(f, "{\"error\": {\"class\": \"GenericError\", \"desc\": "
                  "\"JSON parse error\"}}\r\n");
        srv_wait_eof(f);
}

static void script_not_object(struct fake *f)
{
        if (!srv_handshake(f))
                return;
        srv_expect_cmd(f, "query-status");
        srv_sendf(f, "[1, 2, 3]\r\n");
        srv_wait_eof(f);
}

static void script_nul_byte(struct fake *f)
{
        if (!srv_handshake(f))
                return;
        srv_expect_cmd(f, "query-status");
        srv_send(f, "{\"return\": \"a\0b\"}\r\n", 19);
        srv_wait_eof(f);
}

/* The client must fail with err quickly, broken, and stay failing. */
static void expect_broken_reply(struct fake *f, fake_script script, int err)
{
        json_object *res = NULL;
        uint64_t t0, ms;

        fake_start(f, script);
        fake_connect(f, 2000);
        t0 = t_now_us();
        assert_int_equal(qmp_execute(f->q, "query-status", NULL, 3000, &res),
                         err);
        ms = (t_now_us() - t0) / 1000u;
        assert_true(ms < 1000);  /* an error, not a wait for the deadline */
        assert_null(res);
        assert_true(qmp_is_broken(f->q));
        assert_true(qmp_last_error(f->q)[0] != '\0');
        assert_int_equal(qmp_execute(f->q, "query-status", NULL, 100, NULL),
                         -EPIPE);
        fake_check(f);
}

static void test_fake_garbage(void **state)
{
        expect_broken_reply(*state, script_garbage, -EPROTO);
}

static void test_fake_close_mid_object(void **state)
{
        expect_broken_reply(*state, script_close_mid_object, -EPIPE);
}

static void test_fake_wrong_id(void **state)
{
        expect_broken_reply(*state, script_wrong_id, -EPROTO);
}

static void test_fake_missing_id(void **state)
{
        expect_broken_reply(*state, script_no_id, -EPROTO);
}

static void test_fake_not_object(void **state)
{
        expect_broken_reply(*state, script_not_object, -EPROTO);
}

static void test_fake_nul_byte(void **state)
{
        expect_broken_reply(*state, script_nul_byte, -EPROTO);
}

static void script_oversized(struct fake *f)
{
        static char chunk[1 << 16];
        size_t sent = 0;

        if (!srv_handshake(f))
                return;
        srv_expect_cmd(f, "query-status");
        memset(chunk, 'a', sizeof(chunk));
        if (!srv_sendf(f, "{\"return\": \""))
                return;
        while (sent < (17u << 20) && srv_send(f, chunk, sizeof(chunk)))
                sent += sizeof(chunk);
}

static void test_fake_oversized(void **state)
{
        expect_broken_reply(*state, script_oversized, -EMSGSIZE);
}

#define FLOOD_N 200

static void send_flood_event(struct fake *f, int i, bool bytewise)
{
        char buf[256];
        int n = snprintf(buf, sizeof(buf),
                         "{\"timestamp\": {\"seconds\": 1, \"microseconds\": %d}, "
                         "\"event\": \"%s\", \"data\": {\"n\": %d}}\r\n",
                         i, i % 10 == 9 ? "OTHER" : "FLOOD", i);

        if (!bytewise) {
                srv_send(f, buf, (size_t)n);
                return;
        }
        for (int k = 0; k < n; k++)
                srv_send(f, buf + k, 1);
}

/* Events arrive byte by byte, then many per read, then the response in
 * two pieces; a second command's response is preceded by nothing. */
static void script_flood(struct fake *f)
{
        char resp[128];
        int64_t id;
        int n;

        if (!srv_handshake(f))
                return;
        id = srv_expect_cmd(f, "query-status");
        for (int i = 0; i < FLOOD_N; i++)
                send_flood_event(f, i, i < 5);
        n = snprintf(resp, sizeof(resp), "{\"return\": {\"running\": true}, "
                     "\"id\": %lld}\r\n", (long long)id);
        srv_send(f, resp, 10);
        sleep_ms(20);
        srv_send(f, resp + 10, (size_t)n - 10);
        id = srv_expect_cmd(f, "stop");
        srv_sendf(f, "{\"return\": {}, \"id\": %lld}\r\n", (long long)id);
        srv_wait_eof(f);
}

static int event_n(json_object *ev)
{
        json_object *data, *n;

        assert_true(json_object_object_get_ex(ev, "data", &data));
        assert_true(json_object_object_get_ex(data, "n", &n));
        return json_object_get_int(n);
}

static void test_fake_event_flood(void **state)
{
        struct fake *f = *state;
        json_object *ev;

        fake_start(f, script_flood);
        fake_connect(f, 2000);
        assert_int_equal(qmp_execute(f->q, "query-status", NULL, 5000, NULL), 0);
        /* All FLOOD events, in order, skipping (and keeping) OTHER ones. */
        for (int i = 0; i < FLOOD_N; i++) {
                if (i % 10 == 9)
                        continue;
                assert_int_equal(qmp_wait_event(f->q, "FLOOD", 0, &ev), 0);
                assert_int_equal(event_n(ev), i);
                json_object_put(ev);
        }
        assert_int_equal(qmp_wait_event(f->q, "FLOOD", 20, NULL), -ETIMEDOUT);
        assert_false(qmp_is_broken(f->q));
        assert_int_equal(qmp_wait_event(f->q, NULL, 0, &ev), 0);  /* any */
        assert_int_equal(event_n(ev), 9);
        json_object_put(ev);
        assert_int_equal(qmp_wait_event(f->q, "OTHER", 0, &ev), 0);
        assert_int_equal(event_n(ev), 19);
        json_object_put(ev);
        qmp_clear_events(f->q);
        assert_int_equal(qmp_wait_event(f->q, "OTHER", 0, NULL), -ETIMEDOUT);
        /* An event wait that timed out leaves the connection usable. */
        assert_int_equal(qmp_execute(f->q, "stop", NULL, 1000, NULL), 0);
        fake_check(f);
}

#define OVERFLOW_N 300

static void script_overflow(struct fake *f)
{
        int64_t id;

        if (!srv_handshake(f))
                return;
        id = srv_expect_cmd(f, "cont");
        for (int i = 0; i < OVERFLOW_N; i++)
                srv_sendf(f, "{\"event\": \"FLOOD\", \"data\": {\"n\": %d}}\r\n", i);
        srv_sendf(f, "{\"return\": {}, \"id\": %lld}\r\n", (long long)id);
        srv_wait_eof(f);
}

static void test_fake_queue_overflow(void **state)
{
        struct fake *f = *state;
        json_object *ev;

        fake_start(f, script_overflow);
        fake_connect(f, 2000);
        assert_int_equal(qmp_execute(f->q, "cont", NULL, 5000, NULL), 0);
        /* The queue holds 256: the oldest 44 were dropped. */
        for (int i = OVERFLOW_N - 256; i < OVERFLOW_N; i++) {
                assert_int_equal(qmp_wait_event(f->q, "FLOOD", 0, &ev), 0);
                assert_int_equal(event_n(ev), i);
                json_object_put(ev);
        }
        assert_int_equal(qmp_wait_event(f->q, "FLOOD", 0, NULL), -ETIMEDOUT);
        fake_check(f);
}

static void script_late_event(struct fake *f)
{
        if (!srv_handshake(f))
                return;
        sleep_ms(100);
        srv_sendf(f, "{\"event\": \"LATER\"}\r\n");
        sleep_ms(50);
        srv_sendf(f, "{\"return\": {}, \"id\": 999}\r\n");  /* unsolicited */
        srv_wait_eof(f);
}

static void test_fake_late_event_then_unsolicited(void **state)
{
        struct fake *f = *state;
        uint64_t t0, ms;

        fake_start(f, script_late_event);
        fake_connect(f, 2000);
        t0 = t_now_us();
        assert_int_equal(qmp_wait_event(f->q, "LATER", 2000, NULL), 0);
        ms = (t_now_us() - t0) / 1000u;
        assert_true(ms >= 80 && ms < 1000);
        assert_int_equal(qmp_wait_event(f->q, "NEVER", 2000, NULL), -EPROTO);
        assert_true(qmp_is_broken(f->q));
        fake_check(f);
}

static void script_quit(struct fake *f)
{
        int64_t id;

        if (!srv_handshake(f))
                return;
        id = srv_expect_cmd(f, "quit");
        srv_sendf(f, "{\"return\": {}, \"id\": %lld}\r\n", (long long)id);
        srv_sendf(f, "{\"event\": \"SHUTDOWN\", \"data\": {\"guest\": false}}\r\n");
}

static void test_fake_event_then_eof(void **state)
{
        struct fake *f = *state;

        fake_start(f, script_quit);
        fake_connect(f, 2000);
        assert_int_equal(qmp_execute(f->q, "quit", NULL, 1000, NULL), 0);
        assert_int_equal(qmp_wait_event(f->q, "SHUTDOWN", 1000, NULL), 0);
        assert_int_equal(qmp_wait_event(f->q, "SHUTDOWN", 1000, NULL), -EPIPE);
        assert_true(qmp_is_broken(f->q));
        fake_check(f);
}

static void script_no_read(struct fake *f)
{
        if (!srv_handshake(f))
                return;
        while (!atomic_load(&f->stop))
                sleep_ms(10);
}

static void test_fake_write_timeout(void **state)
{
        struct fake *f = *state;
        size_t len = 4u << 20;
        char *big = malloc(len + 16);
        uint64_t t0, ms;

        assert_non_null(big);
        memset(big, 'x', len + 16);
        memcpy(big, "{\"s\":\"", 6);
        memcpy(big + len, "\"}", 3);
        fake_start(f, script_no_read);
        fake_connect(f, 2000);
        t0 = t_now_us();
        int r = qmp_execute_json(f->q, "x", big, 200, NULL);
        ms = (t_now_us() - t0) / 1000u;
        free(big);
        assert_int_equal(r, -ETIMEDOUT);
        assert_true(ms <= 200 + SLACK_MS + 200);  /* + serialising 4 MiB */
        assert_true(qmp_is_broken(f->q));
        fake_check(f);
}

static void script_slow_reply(struct fake *f)
{
        int64_t id;

        if (!srv_handshake(f))
                return;
        id = srv_expect_cmd(f, "query-status");
        sleep_ms(150);
        srv_sendf(f, "{\"return\": {}, \"id\": %lld}\r\n", (long long)id);
        srv_wait_eof(f);
}

static volatile sig_atomic_t alarms;

static void on_alarm(int sig)
{
        (void)sig;
        alarms++;
}

/* Signals without SA_RESTART interrupt ppoll/recv: neither a spurious
 * failure nor a deadline that restarts from scratch. */
static void test_fake_eintr(void **state)
{
        struct fake *f = *state;
        struct sigaction sa = { .sa_handler = on_alarm }, old;
        struct itimerval it = { { 0, 2000 }, { 0, 2000 } }, off = { 0 };
        uint64_t t0, ms;
        int r1, r2;

        fake_start(f, script_slow_reply);
        fake_connect(f, 2000);
        sigemptyset(&sa.sa_mask);
        sigaction(SIGALRM, &sa, &old);
        alarms = 0;
        setitimer(ITIMER_REAL, &it, NULL);
        r1 = qmp_execute(f->q, "query-status", NULL, 2000, NULL);
        t0 = t_now_us();
        r2 = qmp_wait_event(f->q, "NEVER", 100, NULL);
        ms = (t_now_us() - t0) / 1000u;
        setitimer(ITIMER_REAL, &off, NULL);
        sigaction(SIGALRM, &old, NULL);
        printf("%d SIGALRMs during the calls\n", (int)alarms);
        assert_int_equal(r1, 0);
        assert_int_equal(r2, -ETIMEDOUT);
        assert_true(ms >= 99 && ms <= 100 + SLACK_MS);
        assert_true(alarms > 10);
        fake_check(f);
}

static void script_getfd(struct fake *f)
{
        int64_t id;

        if (!srv_handshake(f))
                return;
        id = srv_expect_cmd(f, "getfd");
        if (f->got_fd < 0)
                srv_failf(f, "getfd without SCM_RIGHTS");
        else if (!strstr(f->got_fd_bytes, "\"getfd\""))
                srv_failf(f, "fd came with other bytes: %s", f->got_fd_bytes);
        else if (write(f->got_fd, "hi", 2) != 2)
                srv_failf(f, "write to passed fd: %s", strerror(errno));
        srv_sendf(f, "{\"return\": {}, \"id\": %lld}\r\n", (long long)id);
        srv_wait_eof(f);
}

static void test_fake_send_fd(void **state)
{
        struct fake *f = *state;
        int p[2];
        char buf[4] = "";

        fake_start(f, script_getfd);
        fake_connect(f, 2000);
        assert_int_equal(qmp_send_fd(f->q, "bad", -1, 100), -EINVAL);
        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        assert_int_equal(qmp_send_fd(f->q, "pipe0", p[1], 1000), 0);
        close(p[1]);
        assert_int_equal(read(p[0], buf, 2), 2);
        close(p[0]);
        assert_memory_equal(buf, "hi", 2);
        fake_check(f);
}

/* ===== real QEMU ======================================================= */

static struct {
        char bin[4096];
        char dir[64];
        char sock[128];
        char log[128];
        pid_t pid;
} qemu = { .pid = -1 };

static bool find_qemu(void)
{
        const char *env = getenv("HAVMS_QEMU"), *path = getenv("PATH");
        char *dirs, *save = NULL;

        if (env && *env) {
                snprintf(qemu.bin, sizeof(qemu.bin), "%s", env);
                return access(qemu.bin, X_OK) == 0;
        }
        dirs = strdup(path ? path : "/usr/bin:/bin");
        for (char *d = strtok_r(dirs, ":", &save); d;
             d = strtok_r(NULL, ":", &save)) {
                snprintf(qemu.bin, sizeof(qemu.bin), "%s/qemu-system-x86_64", d);
                if (access(qemu.bin, X_OK) == 0) {
                        free(dirs);
                        return true;
                }
        }
        free(dirs);
        return false;
}

static void print_qemu_log(void)
{
        char buf[4096];
        FILE *fp = fopen(qemu.log, "r");
        size_t n;

        if (!fp)
                return;
        n = fread(buf, 1, sizeof(buf) - 1, fp);
        buf[n] = '\0';
        fclose(fp);
        fprintf(stderr, "qemu log:\n%s\n", buf);
}

static int qemu_group_teardown(void **state)
{
        (void)state;
        if (qemu.pid > 0) {
                kill(qemu.pid, SIGKILL);
                while (waitpid(qemu.pid, NULL, 0) < 0 && errno == EINTR)
                        ;
                qemu.pid = -1;
        }
        if (qemu.sock[0])
                unlink(qemu.sock);
        if (qemu.log[0])
                unlink(qemu.log);
        if (qemu.dir[0])
                rmdir(qemu.dir);
        return 0;
}

static void qemu_exec(void)
{
        char qmparg[200];
        int fd;

        prctl(PR_SET_PDEATHSIG, SIGKILL);  /* even if the test crashes */
        fd = open(qemu.log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
                dup2(fd, 1);
                dup2(fd, 2);
        }
        fd = open("/dev/null", O_RDONLY);
        if (fd >= 0)
                dup2(fd, 0);
        snprintf(qmparg, sizeof(qmparg), "unix:%s,server=on,wait=off",
                 qemu.sock);
        execl(qemu.bin, qemu.bin, "-machine", "q35,accel=tcg", "-nodefaults",
              "-vga", "none", "-display", "none", "-S", "-m", "64",
              "-qmp", qmparg, (char *)NULL);
        _exit(127);
}

static int qemu_group_setup(void **state)
{
        struct stat st;
        pid_t parent = getpid();

        (void)state;
        strcpy(qemu.dir, "/tmp/havms-qmp-qemu-XXXXXX");
        if (!mkdtemp(qemu.dir)) {
                qemu.dir[0] = '\0';
                return -1;
        }
        snprintf(qemu.sock, sizeof(qemu.sock), "%s/qmp.sock", qemu.dir);
        snprintf(qemu.log, sizeof(qemu.log), "%s/qemu.log", qemu.dir);
        qemu.pid = fork();
        if (qemu.pid < 0)
                return -1;
        if (qemu.pid == 0) {
                if (getppid() != parent)
                        _exit(1);
                qemu_exec();
        }
        for (int i = 0; i < 1000; i++) {  /* 10 s */
                if (stat(qemu.sock, &st) == 0 && S_ISSOCK(st.st_mode))
                        return 0;
                if (waitpid(qemu.pid, NULL, WNOHANG) == qemu.pid) {
                        qemu.pid = -1;
                        break;
                }
                sleep_ms(10);
        }
        fprintf(stderr, "QEMU did not create %s\n", qemu.sock);
        print_qemu_log();
        qemu_group_teardown(state);
        return -1;
}

/* The socket may exist a moment before QEMU listens; the previous test's
 * connection may still be being torn down by QEMU. */
static int qemu_setup(void **state)
{
        struct qmp *q = NULL;
        int r = -1;

        for (int i = 0; i < 100; i++) {
                r = qmp_connect(qemu.sock, 5000, &q);
                if (r != -ECONNREFUSED && r != -ENOENT)
                        break;
                sleep_ms(20);
        }
        if (r < 0) {
                fprintf(stderr, "qmp_connect(%s): %s\n", qemu.sock, strerror(-r));
                print_qemu_log();
                return -1;
        }
        *state = q;
        return 0;
}

static int qemu_teardown(void **state)
{
        qmp_close(*state);
        return 0;
}

static const char *status_of(struct qmp *q, bool *ret_running)
{
        static char status[64];
        json_object *res = NULL, *v;

        assert_int_equal(qmp_execute(q, "query-status", NULL, 2000, &res), 0);
        assert_true(json_object_object_get_ex(res, "status", &v));
        snprintf(status, sizeof(status), "%s", json_object_get_string(v));
        assert_true(json_object_object_get_ex(res, "running", &v));
        *ret_running = json_object_get_boolean(v);
        json_object_put(res);
        return status;
}

static void test_qemu_status(void **state)
{
        bool running = true;
        const char *s = status_of(*state, &running);

        printf("query-status at start: status=%s running=%d\n", s, running);
        assert_true(strcmp(s, "prelaunch") == 0 || strcmp(s, "paused") == 0);
        assert_false(running);
}

static void test_qemu_errors(void **state)
{
        struct qmp *q = *state;
        bool running;

        assert_int_equal(qmp_execute(q, "no-such-command", NULL, 2000, NULL),
                         -EIO);
        printf("unknown command: %s\n", qmp_last_error(q));
        assert_non_null(strstr(qmp_last_error(q), "no-such-command"));
        assert_false(qmp_is_broken(q));
        assert_int_equal(qmp_execute_json(q, "query-status", "{\"bogus\": 1}",
                                          2000, NULL), -EIO);
        printf("bad argument: %s\n", qmp_last_error(q));
        assert_non_null(strstr(qmp_last_error(q), "bogus"));
        /* getfd without a passed fd. */
        assert_int_equal(qmp_execute_json(q, "getfd", "{\"fdname\": \"x\"}",
                                          2000, NULL), -EIO);
        printf("getfd without fd: %s\n", qmp_last_error(q));
        assert_false(qmp_is_broken(q));
        status_of(q, &running);
}

static void test_qemu_events(void **state)
{
        struct qmp *q = *state;
        json_object *ev = NULL, *ts;
        bool running;

        qmp_clear_events(q);
        assert_int_equal(qmp_execute(q, "cont", NULL, 2000, NULL), 0);
        assert_int_equal(qmp_wait_event(q, "RESUME", 2000, &ev), 0);
        assert_true(json_object_object_get_ex(ev, "timestamp", &ts));
        json_object_put(ev);
        assert_string_equal(status_of(q, &running), "running");
        assert_true(running);
        assert_int_equal(qmp_execute(q, "stop", NULL, 2000, NULL), 0);
        assert_int_equal(qmp_wait_event(q, "STOP", 2000, NULL), 0);
        assert_string_equal(status_of(q, &running), "paused");
        assert_false(running);
        assert_int_equal(qmp_wait_event(q, "STOP", 100, NULL), -ETIMEDOUT);
        assert_false(qmp_is_broken(q));
}

/* QEMU really holds the fd: our write end is closed, yet the read end
 * sees no EOF until closefd makes QEMU close its copy. */
static void test_qemu_send_fd(void **state)
{
        struct qmp *q = *state;
        struct pollfd pfd;
        int p[2];

        assert_int_equal(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
        assert_int_equal(qmp_send_fd(q, "havms-test", p[1], 2000), 0);
        close(p[1]);
        pfd = (struct pollfd){ .fd = p[0], .events = POLLIN };
        assert_int_equal(poll(&pfd, 1, 50), 0);
        assert_int_equal(qmp_execute_json(q, "closefd",
                                          "{\"fdname\": \"havms-test\"}", 2000,
                                          NULL), 0);
        assert_int_equal(poll(&pfd, 1, 2000), 1);
        assert_true(pfd.revents & POLLHUP);
        close(p[0]);
        assert_int_equal(qmp_execute_json(q, "closefd",
                                          "{\"fdname\": \"havms-test\"}", 2000,
                                          NULL), -EIO);
        printf("closefd twice: %s\n", qmp_last_error(q));
}

static int cmp_u64(const void *a, const void *b)
{
        uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

        return x < y ? -1 : x > y;
}

static void print_stats(const char *what, uint64_t *us, int n)
{
        qsort(us, (size_t)n, sizeof(us[0]), cmp_u64);
        printf("TIMING %-24s n=%d median=%llu us p90=%llu us max=%llu us\n",
               what, n, (unsigned long long)us[n / 2],
               (unsigned long long)us[n * 9 / 10],
               (unsigned long long)us[n - 1]);
}

#define RTT_N 200

static void time_query_status(struct qmp *q, const char *label)
{
        uint64_t us[RTT_N];

        for (int i = 0; i < RTT_N; i++) {
                uint64_t t0 = t_now_us();
                json_object *res = NULL;

                assert_int_equal(qmp_execute(q, "query-status", NULL, 2000,
                                             &res), 0);
                us[i] = t_now_us() - t0;
                json_object_put(res);
        }
        print_stats(label, us, RTT_N);
}

static void test_qemu_timing(void **state)
{
        struct qmp *q = *state;
        uint64_t pair[RTT_N], stop[RTT_N], cont[RTT_N];
        int early_stop = 0, early_resume = 0;

        time_query_status(q, "query-status (paused)");
        assert_int_equal(qmp_execute(q, "cont", NULL, 2000, NULL), 0);
        time_query_status(q, "query-status (running)");
        for (int i = 0; i < RTT_N; i++) {
                uint64_t t0 = t_now_us(), t1, t2;

                assert_int_equal(qmp_execute(q, "stop", NULL, 2000, NULL), 0);
                t1 = t_now_us();
                assert_int_equal(qmp_execute(q, "cont", NULL, 2000, NULL), 0);
                t2 = t_now_us();
                stop[i] = t1 - t0;
                cont[i] = t2 - t1;
                pair[i] = t2 - t0;
                /* Were the events already queued when the replies came? */
                early_stop += qmp_wait_event(q, "STOP", 0, NULL) == 0;
                early_resume += qmp_wait_event(q, "RESUME", 0, NULL) == 0;
                qmp_clear_events(q);
        }
        print_stats("stop", stop, RTT_N);
        print_stats("cont", cont, RTT_N);
        print_stats("stop+cont pair", pair, RTT_N);
        printf("STOP before its reply %d/%d, RESUME before its reply %d/%d\n",
               early_stop, RTT_N, early_resume, RTT_N);
        assert_int_equal(qmp_execute(q, "stop", NULL, 2000, NULL), 0);
        assert_false(qmp_is_broken(q));
}

/* Must run last: QEMU exits. */
static void test_qemu_quit(void **state)
{
        struct qmp *q = *state;
        json_object *ev = NULL;

        assert_int_equal(qmp_execute(q, "quit", NULL, 2000, NULL), 0);
        assert_int_equal(qmp_wait_event(q, "SHUTDOWN", 5000, &ev), 0);
        printf("quit: %s\n", json_object_to_json_string(ev));
        json_object_put(ev);
        assert_int_equal(qmp_wait_event(q, "NEVER", 5000, NULL), -EPIPE);
        assert_true(qmp_is_broken(q));
}

int main(void)
{
#define FAKE(t) cmocka_unit_test_setup_teardown(t, fake_setup, fake_teardown)
        const struct CMUnitTest fake_tests[] = {
                cmocka_unit_test(test_connect_errors),
                FAKE(test_fake_basic),
                FAKE(test_fake_timeout_breaks),
                FAKE(test_fake_connect_no_greeting),
                FAKE(test_fake_connect_no_caps_reply),
                FAKE(test_fake_bad_greeting),
                FAKE(test_fake_garbage),
                FAKE(test_fake_close_mid_object),
                FAKE(test_fake_wrong_id),
                FAKE(test_fake_missing_id),
                FAKE(test_fake_not_object),
                FAKE(test_fake_nul_byte),
                FAKE(test_fake_oversized),
                FAKE(test_fake_event_flood),
                FAKE(test_fake_queue_overflow),
                FAKE(test_fake_late_event_then_unsolicited),
                FAKE(test_fake_event_then_eof),
                FAKE(test_fake_write_timeout),
                FAKE(test_fake_eintr),
                FAKE(test_fake_send_fd),
        };
#undef FAKE
#define QEMU(t) cmocka_unit_test_setup_teardown(t, qemu_setup, qemu_teardown)
        const struct CMUnitTest qemu_tests[] = {
                QEMU(test_qemu_status),
                QEMU(test_qemu_errors),
                QEMU(test_qemu_events),
                QEMU(test_qemu_send_fd),
                QEMU(test_qemu_timing),
                QEMU(test_qemu_quit),
        };
#undef QEMU
        int failed;

        setvbuf(stdout, NULL, _IOLBF, 0);
        failed = cmocka_run_group_tests_name("qmp-fake", fake_tests, NULL, NULL);
        if (!find_qemu()) {
                fprintf(stderr, "SKIP: qemu-system-x86_64 not found (PATH or "
                        "HAVMS_QEMU): the real-QEMU tests did not run\n");
                return failed ? 1 : 77;
        }
        failed += cmocka_run_group_tests_name("qmp-qemu", qemu_tests,
                                              qemu_group_setup,
                                              qemu_group_teardown);
        return failed ? 1 : 0;
}
