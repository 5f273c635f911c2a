/* test_tracker: the dirty-page tracker against a real second process.
 *
 * The target stands in for QEMU: it maps a 64 MiB shared RAM file
 * (a /dev/shm file, or a memfd where /dev/shm is missing, as in a bare
 * initramfs), reports ready over a pipe, and on command writes a given
 * set of pages and acknowledges. The test process is the tracker.
 *
 * The target is this same binary run again with "--tracker-child". The
 * test links checkpointd/uffd_preload.c, so its constructor creates the
 * target's userfaultfd in the fresh address space exactly as LD_PRELOAD
 * does in QEMU; no dlopen, so a -static build works too. Some cases fork
 * without exec instead, to check the fork rules (docs/tracker.md).
 *
 * Needs only /proc. Kernel features that are missing make the cases that
 * need them skip with the tracker's own reason (soft-dirty is missing on
 * the development hosts; the 6.1 test guest has it but lacks uffd-wp).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "tracker.h"

int havms_uffd_create(void);    /* checkpointd/uffd_preload.c */

#define PAGE 4096u
#define NPAGES 16384u           /* 64 MiB */
#define RAM_LEN ((uint64_t)NPAGES * PAGE)
#define CHILD_ARG "--tracker-child"
#define TIMEOUT_MS 20000

static char ram_path[128];      /* as /proc/PID/maps shows it */
static int ram_fd = -1;
static bool ram_unlink;

enum spawn_mode {
        SPAWN_EXEC,             /* new image; the constructor makes the uffd */
        SPAWN_FORK_OWN,         /* fork; drop inherited uffds, create one */
        SPAWN_FORK_INHERITED,   /* fork; keep only the parent's uffds */
        SPAWN_FORK_NONE,        /* fork; no uffd at all */
};

struct child {
        pid_t pid;
        int cmd;                /* commands to the child */
        int ack;                /* answers from the child */
        uint64_t addr;          /* where it mapped the RAM file */
};

struct fixture {
        struct child c;
        struct tracker *t;
};

/* ---- I/O helpers --------------------------------------------------- */

static int write_all(int fd, const void *buf, size_t len)
{
        const char *b = buf;

        while (len) {
                ssize_t n = write(fd, b, len);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return -1;
                b += n;
                len -= (size_t)n;
        }
        return 0;
}

static int read_all(int fd, void *buf, size_t len, int timeout_ms)
{
        char *b = buf;

        while (len) {
                struct pollfd pfd = { .fd = fd, .events = POLLIN };
                ssize_t n;

                if (timeout_ms >= 0 && poll(&pfd, 1, timeout_ms) <= 0)
                        return -1;
                n = read(fd, b, len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return -1;
                b += n;
                len -= (size_t)n;
        }
        return 0;
}

/* ---- the target ---------------------------------------------------- */

static void close_uffds(void)
{
        char fn[300], link[64];
        struct dirent *de;
        DIR *d = opendir("/proc/self/fd");

        if (!d)
                return;
        while ((de = readdir(d))) {
                ssize_t l;

                snprintf(fn, sizeof(fn), "/proc/self/fd/%s", de->d_name);
                l = readlink(fn, link, sizeof(link) - 1);
                if (l < 0)
                        continue;
                link[l] = '\0';
                if (strcmp(link, "anon_inode:[userfaultfd]") == 0)
                        close(atoi(de->d_name));
        }
        closedir(d);
}

/* Map the RAM file; touch every other page (read) so that both mapped
 * and never-mapped pages get written later; then serve write commands:
 * {'W', n} + n page indexes -> write one byte in each, answer 'k'. */
static int child_loop(int fd, int cmd, int ack)
{
        uint32_t hdr[2], *idx = NULL;
        uint64_t addr;
        char *m;

        m = mmap(NULL, RAM_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED)
                return 1;
        for (uint32_t i = 0; i < NPAGES; i += 2)
                (void)*(volatile char *)(m + (size_t)i * PAGE);
        addr = (uintptr_t)m;
        if (write_all(ack, &addr, sizeof(addr)) < 0)
                return 1;
        idx = malloc(NPAGES * sizeof(*idx));
        if (!idx)
                return 1;
        while (read_all(cmd, hdr, sizeof(hdr), -1) == 0) {
                if (hdr[0] != 'W' || hdr[1] > NPAGES ||
                    read_all(cmd, idx, hdr[1] * sizeof(*idx), -1) < 0)
                        break;
                for (uint32_t i = 0; i < hdr[1]; i++)
                        m[(size_t)idx[i] * PAGE + idx[i] % PAGE] += 1;
                if (write_all(ack, "k", 1) < 0)
                        break;
        }
        free(idx);
        munmap(m, RAM_LEN);
        return 0;
}

static int child_main(int argc, char **argv)
{
        if (argc != 5)
                return 2;
        return child_loop(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]));
}

/* ---- driving the target -------------------------------------------- */

static void spawn(struct child *c, enum spawn_mode mode)
{
        int cmd[2], ack[2];
        pid_t pid;

        assert_int_equal(pipe2(cmd, O_CLOEXEC), 0);
        assert_int_equal(pipe2(ack, O_CLOEXEC), 0);
        pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                char a1[16], a2[16], a3[16];

                close(cmd[1]);
                close(ack[0]);
                switch (mode) {
                case SPAWN_EXEC:
                        fcntl(ram_fd, F_SETFD, 0);
                        fcntl(cmd[0], F_SETFD, 0);
                        fcntl(ack[1], F_SETFD, 0);
                        snprintf(a1, sizeof(a1), "%d", ram_fd);
                        snprintf(a2, sizeof(a2), "%d", cmd[0]);
                        snprintf(a3, sizeof(a3), "%d", ack[1]);
                        execl("/proc/self/exe", "test_tracker", CHILD_ARG,
                              a1, a2, a3, (char *)NULL);
                        _exit(127);
                case SPAWN_FORK_OWN:
                        close_uffds();
                        if (havms_uffd_create() < 0)
                                _exit(3);
                        break;
                case SPAWN_FORK_INHERITED:
                        break;
                case SPAWN_FORK_NONE:
                        close_uffds();
                        break;
                }
                _exit(child_loop(ram_fd, cmd[0], ack[1]));
        }
        close(cmd[0]);
        close(ack[1]);
        c->pid = pid;
        c->cmd = cmd[1];
        c->ack = ack[0];
        assert_int_equal(read_all(c->ack, &c->addr, sizeof(c->addr), TIMEOUT_MS), 0);
}

static void child_write(struct child *c, const uint32_t *idx, size_t n)
{
        uint32_t hdr[2] = { 'W', (uint32_t)n };
        char k;

        assert_int_equal(write_all(c->cmd, hdr, sizeof(hdr)), 0);
        assert_int_equal(write_all(c->cmd, idx, n * sizeof(*idx)), 0);
        assert_int_equal(read_all(c->ack, &k, 1, TIMEOUT_MS), 0);
        assert_int_equal(k, 'k');
}

static void child_stop(struct child *c)
{
        if (c->pid <= 0)
                return;
        kill(c->pid, SIGKILL);
        waitpid(c->pid, NULL, 0);
        close(c->cmd);
        close(c->ack);
        c->pid = 0;
}

/* ---- page sets ----------------------------------------------------- */

struct pageset {
        uint32_t *v;
        size_t n;
};

static uint64_t xorshift(uint64_t *s)
{
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        return *s;
}

static int cmp_u32(const void *a, const void *b)
{
        uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

        return (x > y) - (x < y);
}

static void set_add(struct pageset *s, uint32_t i)
{
        s->v[s->n++] = i;
}

static void set_random(struct pageset *s, size_t n, uint64_t seed)
{
        for (size_t i = 0; i < n; i++)
                set_add(s, (uint32_t)(xorshift(&seed) % NPAGES));
}

static void set_finish(struct pageset *s)
{
        size_t w = 0;

        qsort(s->v, s->n, sizeof(*s->v), cmp_u32);
        for (size_t r = 0; r < s->n; r++)
                if (!w || s->v[w - 1] != s->v[r])
                        s->v[w++] = s->v[r];
        s->n = w;
}

static struct pageset set_new(void)
{
        struct pageset s = { .v = calloc(4 * NPAGES, sizeof(uint32_t)) };

        assert_non_null(s.v);
        return s;
}

/* The brief's set: edges, a run of 300, 500 random (fixed seed). */
static struct pageset set_mixed(uint64_t seed)
{
        struct pageset s = set_new();

        set_add(&s, 0);
        set_add(&s, 1);
        set_add(&s, 7);
        set_add(&s, 4095);
        set_add(&s, NPAGES - 1);
        for (uint32_t i = 0; i < 300; i++)
                set_add(&s, 9000 + i);
        set_random(&s, 500, seed);
        set_finish(&s);
        return s;
}

/* ---- scanning and comparing ---------------------------------------- */

static void scan_expect(struct tracker *t, const uint32_t *want, size_t nwant,
                        size_t cap, int want_r)
{
        uint32_t *out = calloc(cap ? cap : 1, sizeof(*out));
        size_t n = (size_t)-1;
        int r;

        assert_non_null(out);
        r = tracker_scan(t, out, cap, &n);
        if (r != want_r || n != nwant ||
            (nwant && memcmp(out, want, nwant * sizeof(*out)) != 0)) {
                size_t i = 0;

                while (i < n && i < nwant && out[i] == want[i])
                        i++;
                print_error("scan: r=%d (want %d) n=%zu (want %zu); first "
                            "difference at %zu: got %ld want %ld\n",
                            r, want_r, n, nwant, i,
                            i < n ? (long)out[i] : -1L,
                            i < nwant ? (long)want[i] : -1L);
                free(out);
                fail();
        }
        free(out);
}

static void scan_clean(struct tracker *t)
{
        scan_expect(t, NULL, 0, NPAGES, 0);
}

/* Open backend on the fixture's child, or skip the test if the kernel
 * lacks it. */
static void open_or_skip(struct fixture *f, const char *backend)
{
        const char *why = NULL;
        int r;

        r = tracker_open(backend, f->c.pid, f->c.addr, RAM_LEN, &f->t, &why);
        if (r == -EOPNOTSUPP || r == -ENOSYS) {
                print_message("[ SKIPPED  ] %s: %s\n", backend, why);
                skip();
        }
        if (r < 0)
                print_error("tracker_open(%s): %s (%s)\n", backend,
                            strerror(-r), why ? why : "?");
        assert_int_equal(r, 0);
        assert_string_equal(tracker_name(f->t), backend);
}

/* ---- fixtures ------------------------------------------------------ */

static int setup_exec(void **state)
{
        struct fixture *f = calloc(1, sizeof(*f));

        if (!f)
                return -1;
        *state = f;
        spawn(&f->c, SPAWN_EXEC);
        return 0;
}

static int teardown(void **state)
{
        struct fixture *f = *state;

        tracker_close(f->t);
        tracker_uffd_set_split_min(0); /* the default again, whatever a test set */
        child_stop(&f->c);
        free(f);
        return 0;
}

static int group_setup(void **state)
{
        int fd;

        (void)state;
        snprintf(ram_path, sizeof(ram_path), "/dev/shm/havms-tracker-XXXXXX");
        fd = mkostemp(ram_path, O_CLOEXEC);
        if (fd >= 0) {
                ram_unlink = true;
        } else {
                fd = memfd_create("havms-tracker", MFD_CLOEXEC);
                snprintf(ram_path, sizeof(ram_path), "/memfd:havms-tracker (deleted)");
        }
        if (fd < 0 || ftruncate(fd, (off_t)RAM_LEN) < 0) {
                print_error("cannot create the RAM file: %s\n", strerror(errno));
                return -1;
        }
        ram_fd = fd;
        return 0;
}

static int group_teardown(void **state)
{
        (void)state;
        if (ram_unlink)
                unlink(ram_path);
        if (ram_fd >= 0)
                close(ram_fd);
        return 0;
}

/* ---- shared sequences ---------------------------------------------- */

/* Nothing at first; exactly what was written; nothing again; new writes
 * (overlapping the old ones) seen again. */
static void run_exact(void **state, const char *backend)
{
        struct fixture *f = *state;
        struct pageset a, b;

        open_or_skip(f, backend);
        a = set_mixed(42);
        b = set_mixed(4242);
        scan_clean(f->t);

        child_write(&f->c, a.v, a.n);
        scan_expect(f->t, a.v, a.n, NPAGES, 0);
        scan_clean(f->t);

        child_write(&f->c, b.v, b.n);
        scan_expect(f->t, b.v, b.n, NPAGES, 0);
        scan_clean(f->t);

        /* Every page at once: the whole range comes back as one run. */
        {
                struct pageset all = set_new();

                for (uint32_t i = 0; i < NPAGES; i++)
                        set_add(&all, i);
                child_write(&f->c, all.v, all.n);
                scan_expect(f->t, all.v, all.n, NPAGES, 0);
                scan_clean(f->t);
                free(all.v);
        }
        free(a.v);
        free(b.v);
}

/* A full out: -ENOSPC, and the rest (still dirty) on the next scans. */
static void run_cap(void **state, const char *backend)
{
        struct fixture *f = *state;
        struct pageset a, few;
        uint32_t again;

        open_or_skip(f, backend);
        a = set_new();
        few = set_new();
        set_random(&a, 1000, 99);
        set_finish(&a);
        assert_true(a.n > 900);

        child_write(&f->c, a.v, a.n);
        scan_expect(f->t, a.v, 300, 300, -ENOSPC);
        /* A page already handed out and written again comes back. */
        again = a.v[0];
        child_write(&f->c, &again, 1);
        {
                struct pageset b = set_new();

                set_add(&b, again);
                for (size_t i = 300; i < 600; i++)
                        set_add(&b, a.v[i]);
                set_finish(&b);
                scan_expect(f->t, b.v, 300, 300, -ENOSPC);
                /* b.v[300] is a.v[599], left dirty by the cap. */
                scan_expect(f->t, a.v + 599, a.n - 599, NPAGES, 0);
                free(b.v);
        }
        scan_clean(f->t);

        /* Exactly cap dirty pages is not "more than cap". */
        set_random(&few, 64, 7);
        set_finish(&few);
        child_write(&f->c, few.v, few.n);
        scan_expect(f->t, few.v, few.n, few.n, 0);
        scan_clean(f->t);

        /* cap 0 still says whether anything is dirty, and loses nothing. */
        child_write(&f->c, few.v, 5);
        scan_expect(f->t, NULL, 0, 0, -ENOSPC);
        scan_expect(f->t, few.v, 5, NPAGES, 0);
        scan_clean(f->t);

        free(a.v);
        free(few.v);
}

/* ---- tests --------------------------------------------------------- */

static void test_find_mapping(void **state)
{
        struct fixture *f = *state;
        uint64_t start = 0, len = 0;

        assert_int_equal(tracker_find_mapping(f->c.pid, ram_path, &start, &len), 0);
        assert_int_equal(start, f->c.addr);
        assert_int_equal(len, RAM_LEN);
        assert_int_equal(tracker_find_mapping(f->c.pid, "/nonexistent/ram", &start, &len),
                         -ENOENT);
        assert_int_equal(tracker_find_mapping(0, ram_path, &start, &len), -EINVAL);
}

static void test_uffd_exact(void **state)
{
        run_exact(state, "uffd-wp");
}

static void test_uffd_cap(void **state)
{
        run_cap(state, "uffd-wp");
}

/* The same with the range split between two threads (a 64 MiB range is
 * below the default size for that): page sets across the halves' border,
 * every page at once, and a cap (which scans whole, unsplit). */
static void test_uffd_split_exact(void **state)
{
        tracker_uffd_set_split_min(1);
        run_exact(state, "uffd-wp");
}

static void test_uffd_split_cap(void **state)
{
        tracker_uffd_set_split_min(1);
        run_cap(state, "uffd-wp");
}

static void test_softdirty_exact(void **state)
{
        run_exact(state, "soft-dirty");
}

static void test_softdirty_cap(void **state)
{
        run_cap(state, "soft-dirty");
}

/* Soft-dirty missing must give the sentence that says so. */
static void test_softdirty_why(void **state)
{
        struct fixture *f = *state;
        const char *why = NULL;
        int r;

        r = tracker_open("soft-dirty", f->c.pid, f->c.addr, RAM_LEN, &f->t, &why);
        if (r == 0) {
                print_message("[ SKIPPED  ] soft-dirty is present in this kernel\n");
                skip();
        }
        assert_int_equal(r, -EOPNOTSUPP);
        assert_string_equal(why, "soft-dirty needs CONFIG_MEM_SOFT_DIRTY");
}

/* auto takes uffd-wp where it works, else soft-dirty. */
static void test_auto(void **state)
{
        struct fixture *f = *state;
        const char *why = NULL, *expect;
        struct tracker *probe = NULL;

        if (tracker_open("uffd-wp", f->c.pid, f->c.addr, RAM_LEN, &probe, NULL) == 0)
                expect = "uffd-wp";
        else if (tracker_open("soft-dirty", f->c.pid, f->c.addr, RAM_LEN, &probe, NULL) == 0)
                expect = "soft-dirty";
        else
                expect = NULL;
        tracker_close(probe);

        if (!expect) {
                assert_true(tracker_open("auto", f->c.pid, f->c.addr, RAM_LEN,
                                         &f->t, &why) < 0);
                assert_non_null(why);
                print_message("[ SKIPPED  ] no tracker works here: %s\n", why);
                skip();
        }
        assert_int_equal(tracker_open("auto", f->c.pid, f->c.addr, RAM_LEN, &f->t, &why), 0);
        assert_string_equal(tracker_name(f->t), expect);
        tracker_close(f->t);
        f->t = NULL;
        assert_int_equal(tracker_open(NULL, f->c.pid, f->c.addr, RAM_LEN, &f->t, &why), 0);
        assert_string_equal(tracker_name(f->t), expect);
}

/* Skip unless this kernel has uffd-wp, judged on a child that works. */
static void need_uffd(void)
{
        struct child c = { 0 };
        struct tracker *t = NULL;
        const char *why = NULL;
        int r;

        spawn(&c, SPAWN_EXEC);
        r = tracker_open("uffd-wp", c.pid, c.addr, RAM_LEN, &t, &why);
        tracker_close(t);
        child_stop(&c);
        if (r == -EOPNOTSUPP || r == -ENOSYS) {
                print_message("[ SKIPPED  ] uffd-wp: %s\n", why);
                skip();
        }
        assert_int_equal(r, 0);
}

/* Is pid's mapping at addr registered with a userfaultfd for write-protect
 * ("uw" in its VmFlags in /proc/PID/smaps)? */
static bool uffd_registered(pid_t pid, uint64_t addr)
{
        char fn[64], line[512];
        bool in = false, uw = false;
        FILE *f;

        snprintf(fn, sizeof(fn), "/proc/%d/smaps", (int)pid);
        f = fopen(fn, "re");
        assert_non_null(f);
        while (fgets(line, sizeof(line), f)) {
                unsigned long long s, e;

                if (sscanf(line, "%llx-%llx ", &s, &e) == 2)
                        in = s == addr;
                else if (in && strncmp(line, "VmFlags:", 8) == 0)
                        uw = strstr(line, " uw") != NULL;
        }
        fclose(f);
        return uw;
}

/* A uffd made after fork() (havms_uffd_create in the child) works. */
static void test_uffd_fork_own(void **state)
{
        struct fixture *f = *state;
        struct pageset a;

        need_uffd();
        spawn(&f->c, SPAWN_FORK_OWN);
        open_or_skip(f, "uffd-wp");
        a = set_mixed(5);
        scan_clean(f->t);
        child_write(&f->c, a.v, a.n);
        scan_expect(f->t, a.v, a.n, NPAGES, 0);
        free(a.v);

        /* Closing unregisters: QEMU runs unprotected again. */
        assert_true(uffd_registered(f->c.pid, f->c.addr));
        tracker_close(f->t);
        f->t = NULL;
        assert_false(uffd_registered(f->c.pid, f->c.addr));
}

/* A uffd made before fork() belongs to the parent's address space: the
 * tracker must refuse it with the fork sentence, not track the wrong
 * process. */
static void test_uffd_inherited(void **state)
{
        struct fixture *f = *state;
        const char *why = NULL;
        void *m;
        int fd;

        need_uffd();
        fd = havms_uffd_create();
        assert_true(fd >= 0);
        spawn(&f->c, SPAWN_FORK_INHERITED);
        close(fd);
        assert_int_equal(tracker_open("uffd-wp", f->c.pid, f->c.addr, RAM_LEN,
                                      &f->t, &why), -EXDEV);
        assert_non_null(strstr(why, "fork"));

        /* Worse: the parent has memory at the same addresses, so the
         * register succeeds, in the wrong process. The tracker must see
         * that and undo it. */
        m = mmap((void *)(uintptr_t)f->c.addr, RAM_LEN, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        if (m == MAP_FAILED)
                return;
        assert_ptr_equal(m, (void *)(uintptr_t)f->c.addr);
        assert_int_equal(tracker_open("uffd-wp", f->c.pid, f->c.addr, RAM_LEN,
                                      &f->t, &why), -EXDEV);
        assert_false(uffd_registered(getpid(), f->c.addr));
        munmap(m, RAM_LEN);
}

static void test_uffd_missing(void **state)
{
        struct fixture *f = *state;
        const char *why = NULL;

        need_uffd();
        spawn(&f->c, SPAWN_FORK_NONE);
        assert_int_equal(tracker_open("uffd-wp", f->c.pid, f->c.addr, RAM_LEN,
                                      &f->t, &why), -ENOENT);
        assert_non_null(strstr(why, "LD_PRELOAD"));
}

static void test_bad_args(void **state)
{
        struct fixture *f = *state;
        struct tracker *t = NULL;
        const char *why = NULL;
        size_t n;

        assert_int_equal(tracker_open("xen", f->c.pid, f->c.addr, RAM_LEN, &t, &why), -EINVAL);
        assert_non_null(why);
        why = NULL;
        assert_int_equal(tracker_open("auto", f->c.pid, f->c.addr + 1, RAM_LEN, &t, &why), -EINVAL);
        assert_non_null(why);
        assert_int_equal(tracker_open("auto", f->c.pid, f->c.addr, 0, &t, &why), -EINVAL);
        why = NULL;
        /* Page 0 is never mapped. */
        assert_int_equal(tracker_open("auto", f->c.pid, 0, PAGE, &t, &why), -ENXIO);
        assert_null(t);
        assert_int_equal(tracker_scan(NULL, NULL, 0, &n), -EINVAL);
        tracker_close(NULL);
        assert_null(tracker_name(NULL));
}

static int setup_bare(void **state)
{
        struct fixture *f = calloc(1, sizeof(*f));

        *state = f;
        return f ? 0 : -1;
}

int main(int argc, char **argv)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_find_mapping, setup_exec, teardown),
                cmocka_unit_test_setup_teardown(test_bad_args, setup_exec, teardown),
                cmocka_unit_test_setup_teardown(test_auto, setup_exec, teardown),
                cmocka_unit_test_setup_teardown(test_uffd_exact, setup_exec, teardown),
                cmocka_unit_test_setup_teardown(test_uffd_cap, setup_exec, teardown),
                cmocka_unit_test_setup_teardown(test_uffd_split_exact, setup_exec, teardown),
                cmocka_unit_test_setup_teardown(test_uffd_split_cap, setup_exec, teardown),
                cmocka_unit_test_setup_teardown(test_uffd_fork_own, setup_bare, teardown),
                cmocka_unit_test_setup_teardown(test_uffd_inherited, setup_bare, teardown),
                cmocka_unit_test_setup_teardown(test_uffd_missing, setup_bare, teardown),
                cmocka_unit_test_setup_teardown(test_softdirty_why, setup_exec, teardown),
                cmocka_unit_test_setup_teardown(test_softdirty_exact, setup_exec, teardown),
                cmocka_unit_test_setup_teardown(test_softdirty_cap, setup_exec, teardown),
        };

        if (argc > 1 && strcmp(argv[1], CHILD_ARG) == 0)
                return child_main(argc, argv);
        signal(SIGPIPE, SIG_IGN);
        return cmocka_run_group_tests_name("tracker", tests, group_setup, group_teardown);
}
