/* util: the unix listener every daemon socket is made with (the control
 * socket, NBD, the NIC relay), and the positional I/O loops. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
        assert_string_equal(why, "bind");
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
                cmocka_unit_test_setup_teardown(test_positional_io, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
