/* util: the unix listener every daemon socket is made with (the control
 * socket, NBD, the NIC relay), and the positional I/O loops. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "util.h"

static char dir[64];
static char path[128];

static int setup(void **state)
{
        (void)state;
        strcpy(dir, "/tmp/havms-util-XXXXXX");
        if (!mkdtemp(dir))
                return -1;
        snprintf(path, sizeof(path), "%s/s.sock", dir);
        return 0;
}

static int teardown(void **state)
{
        (void)state;
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        return system(cmd) == 0 ? 0 : -1;
}

/* link() as util.c calls it. With squat set, another server that takes
 * no lock binds the path just before the link. */
int __real_link(const char *from, const char *to);
int __wrap_link(const char *from, const char *to);
static int squat_fd = -1;
static bool squat;

int __wrap_link(const char *from, const char *to)
{
        if (squat) {
                struct sockaddr_un sa = { .sun_family = AF_UNIX };
                strcpy(sa.sun_path, to);
                squat_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
                if (squat_fd < 0 || bind(squat_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
                    listen(squat_fd, 4) < 0)
                        return -1;
                squat = false;
        }
        return __real_link(from, to);
}

static int connect_to(const char *p)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        strcpy(sa.sun_path, p);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        int r = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 ? 0 : -errno;
        close(fd);
        return r;
}

/* Only the final name is left, mode 0600, and it answers at once. */
static void test_listen_fresh(void **state)
{
        (void)state;
        const char *why = NULL;
        int fd = -1;
        assert_int_equal(unix_listen(path, SOCK_NONBLOCK, 4, &fd, &why), 0);
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        assert_true(S_ISSOCK(st.st_mode));
        assert_int_equal(st.st_mode & 07777, 0600);
        assert_int_equal(fcntl(fd, F_GETFL) & O_NONBLOCK, O_NONBLOCK);
        assert_int_equal(connect_to(path), 0);
        char cmd[160];
        snprintf(cmd, sizeof(cmd), "test $(ls -A %s | wc -l) = 1", dir);
        assert_int_equal(system(cmd), 0);
        close(fd);
}

/* A live server keeps its socket; a dead one's file is replaced. */
static void test_listen_live_and_stale(void **state)
{
        (void)state;
        const char *why = NULL;
        int fd = -1, fd2 = -1;
        assert_int_equal(unix_listen(path, 0, 4, &fd, &why), 0);
        assert_int_equal(unix_listen(path, 0, 4, &fd2, &why), -EADDRINUSE);
        assert_string_equal(why, "another server listens there");
        assert_int_equal(fd2, -1);
        assert_int_equal(connect_to(path), 0); /* still the first one's */
        close(fd);                             /* dies, leaving its file */
        assert_int_equal(connect_to(path), -ECONNREFUSED);
        assert_int_equal(unix_listen(path, 0, 4, &fd2, &why), 0);
        assert_int_equal(connect_to(path), 0);
        close(fd2);
}

/* Anything that is not a socket is never touched. */
static void test_listen_refuses_other_files(void **state)
{
        (void)state;
        const char *why = NULL;
        int fd = -1;
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs("precious\n", f);
        fclose(f);
        assert_int_equal(unix_listen(path, 0, 4, &fd, &why), -EEXIST);
        assert_string_equal(why, "exists and is not a socket");
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        assert_true(S_ISREG(st.st_mode));
        assert_int_equal(st.st_size, 9);
        unlink(path);

        char longp[200];
        memset(longp, 'x', sizeof(longp) - 1);
        longp[0] = '/';
        longp[sizeof(longp) - 1] = 0;
        assert_int_equal(unix_listen(longp, 0, 4, &fd, &why), -ENAMETOOLONG);
        char nodir[160];
        snprintf(nodir, sizeof(nodir), "%s/none/s.sock", dir);
        assert_int_equal(unix_listen(nodir, 0, 4, &fd, &why), -ENOENT);
        assert_string_equal(why, "lock the socket's directory");
}

/* A server whose backlog is full (the NIC relay stops accepting once QEMU
 * is connected) answers the probe with EAGAIN: it is alive. */
static void test_listen_full_backlog_is_alive(void **state)
{
        (void)state;
        const char *why = NULL;
        int fd = -1, fd2 = -1, c[64], n = 0;
        assert_int_equal(unix_listen(path, 0, 0, &fd, &why), 0);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        strcpy(sa.sun_path, path);
        for (; n < 64; n++) {
                c[n] = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
                if (connect(c[n], (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                        assert_int_equal(errno, EAGAIN);
                        close(c[n]);
                        break;
                }
        }
        assert_true(n < 64); /* the backlog did fill */
        assert_int_equal(unix_listen(path, 0, 4, &fd2, &why), -EADDRINUSE);
        assert_int_equal(fd2, -1);
        for (int i = 0; i < n; i++)
                close(c[i]);
        close(fd);
}

/* Somebody else's socket appears between the check and the link: it is
 * left alone (a rename would have replaced it) and we say it is taken. */
static void test_listen_never_replaces(void **state)
{
        (void)state;
        const char *why = NULL;
        int fd = -1;
        squat = true;
        assert_int_equal(unix_listen(path, 0, 4, &fd, &why), -EADDRINUSE);
        assert_false(squat); /* the wrap ran */
        assert_int_equal(fd, -1);
        assert_int_equal(connect_to(path), 0); /* the other server's, still */
        close(squat_fd);
        assert_int_equal(connect_to(path), -ECONNREFUSED);
        unlink(path);
        char cmd[160];
        snprintf(cmd, sizeof(cmd), "test -z \"$(ls -A %s)\"", dir); /* no temporary left */
        assert_int_equal(system(cmd), 0);
}

/* The check-and-link runs under a lock on the directory: while another
 * server holds it, nothing appears at the path. */
struct listener {
        int fd, r;
        bool done;
};

static void *listen_thread(void *arg)
{
        struct listener *l = arg;
        const char *why;
        l->r = unix_listen(path, 0, 4, &l->fd, &why);
        __atomic_store_n(&l->done, true, __ATOMIC_RELEASE);
        return NULL;
}

static void test_listen_waits_for_the_lock(void **state)
{
        (void)state;
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        assert_true(dfd >= 0);
        assert_int_equal(flock(dfd, LOCK_EX), 0);
        struct listener l = { .fd = -1 };
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, listen_thread, &l), 0);
        usleep(200000);
        assert_false(__atomic_load_n(&l.done, __ATOMIC_ACQUIRE));
        struct stat st;
        assert_int_equal(lstat(path, &st), -1);
        close(dfd); /* unlock */
        pthread_join(t, NULL);
        assert_int_equal(l.r, 0);
        assert_int_equal(connect_to(path), 0);
        close(l.fd);
}

/* Servers starting at the same moment, over a dead server's socket file
 * (each must probe and replace it): exactly one gets the path, and the
 * path is the winner's. */
struct racer {
        pthread_barrier_t *go;
        int fd, r;
};

static void *race(void *arg)
{
        struct racer *x = arg;
        const char *why;
        pthread_barrier_wait(x->go);
        x->fd = -1;
        x->r = unix_listen(path, 0, 4, &x->fd, &why);
        return NULL;
}

static void test_listen_race(void **state)
{
        (void)state;
        for (int round = 0; round < 20; round++) {
                pthread_barrier_t go;
                struct racer x[4];
                pthread_t t[4];
                int dead = -1;
                const char *why;
                assert_int_equal(unix_listen(path, 0, 4, &dead, &why), 0);
                close(dead); /* its file stays: stale */
                pthread_barrier_init(&go, NULL, 4);
                for (int i = 0; i < 4; i++) {
                        x[i].go = &go;
                        assert_int_equal(pthread_create(&t[i], NULL, race, &x[i]), 0);
                }
                int won = -1;
                for (int i = 0; i < 4; i++) {
                        pthread_join(t[i], NULL);
                        if (x[i].r == 0) {
                                assert_int_equal(won, -1);
                                won = i;
                        } else {
                                assert_int_equal(x[i].r, -EADDRINUSE);
                        }
                }
                assert_true(won >= 0);
                /* the file is the winner's: closing it leaves nobody there */
                assert_int_equal(connect_to(path), 0);
                close(x[won].fd);
                assert_int_equal(connect_to(path), -ECONNREFUSED);
                unlink(path);
                pthread_barrier_destroy(&go);
        }
        char cmd[160];
        snprintf(cmd, sizeof(cmd), "test -z \"$(ls -A %s)\"", dir); /* no temporary left */
        assert_int_equal(system(cmd), 0);
}

/* pread_full/pwrite_full: whole transfers; a read past the end is -EIO. */
static void test_positional_io(void **state)
{
        (void)state;
        char buf[8192], back[8192];
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        for (size_t i = 0; i < sizeof(buf); i++)
                buf[i] = (char)(i * 7);
        assert_int_equal(pwrite_full(fd, buf, sizeof(buf), 4096), 0);
        assert_int_equal(pread_full(fd, back, sizeof(back), 4096), 0);
        assert_memory_equal(buf, back, sizeof(buf));
        assert_int_equal(pread_full(fd, back, 4096, 8192), 0);
        assert_int_equal(pread_full(fd, back, 4096, 8193), -EIO);
        close(fd);
        unlink(path);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_listen_fresh, setup, teardown),
                cmocka_unit_test_setup_teardown(test_listen_live_and_stale, setup, teardown),
                cmocka_unit_test_setup_teardown(test_listen_refuses_other_files, setup, teardown),
                cmocka_unit_test_setup_teardown(test_listen_full_backlog_is_alive, setup, teardown),
                cmocka_unit_test_setup_teardown(test_listen_never_replaces, setup, teardown),
                cmocka_unit_test_setup_teardown(test_listen_waits_for_the_lock, setup, teardown),
                cmocka_unit_test_setup_teardown(test_listen_race, setup, teardown),
                cmocka_unit_test_setup_teardown(test_positional_io, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
