/* tracker_uffd: dirty tracking with userfaultfd write-protect in async mode
 * and the PAGEMAP_SCAN ioctl (Linux >= 6.7).
 *
 * Every page of the range carries a uffd-wp bit (a PTE marker where no
 * page is mapped). A write clears it inside the kernel, without waking
 * anyone (async mode). PAGEMAP_SCAN walks the page tables, reports the
 * pages whose bit is clear and sets it again under the page-table lock, so
 * a write is either reported by this scan or left for the next one: no
 * write is lost even if the target runs during the scan.
 *
 * The uffd is created inside the target by checkpointd/uffd_preload.c and
 * taken with pidfd_getfd(); UFFDIO_REGISTER acts on the address space the
 * uffd was created in, whoever calls it.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "tracker.h"
#include "uffd_compat.h"
#include "util.h"

#define UFFD_WANT_FEATURES (UFFD_FEATURE_WP_ASYNC | \
                            UFFD_FEATURE_WP_UNPOPULATED | \
                            UFFD_FEATURE_WP_HUGETLBFS_SHMEM)
#define UFFD_MAX_CANDIDATES 16
/* Regions per PAGEMAP_SCAN call; the kernel bounces at most 512 at once. */
#define UFFD_VEC_LEN 512

/* The walk itself costs ~0.2-0.5 ms per GiB of guest RAM whatever was
 * written (docs/scale.md), and a scan runs in the VM's pause: from this
 * size on, a second thread walks the upper half of the range at the same
 * time (the target is stopped then, so its cores are free). Below it the
 * hand-off costs about what it saves. */
#define UFFD_SPLIT_MIN_BYTES (512ull << 20)
static uint64_t split_min = UFFD_SPLIT_MIN_BYTES;

void tracker_uffd_set_split_min(uint64_t bytes)
{
        split_min = bytes ? bytes : UFFD_SPLIT_MIN_BYTES;
}

/* The helper thread's half of a split scan: [start, end) into out. */
struct uffd_half {
        uint64_t start, end;
        uint32_t *out;
        size_t cap, n;
        int r;
        struct page_region vec[UFFD_VEC_LEN];
};

struct uffd_priv {
        int uffd;               /* ours, a duplicate of the target's */
        int pagemap;            /* /proc/PID/pagemap of the target */
        uint64_t start, end;
        struct page_region vec[UFFD_VEC_LEN];
        /* split scans (ranges >= UFFD_SPLIT_MIN_BYTES on a host with more
         * than one CPU): the helper and its hand-off */
        bool split;
        pthread_t helper;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        unsigned long long asked, done; /* scans handed to / finished by the helper */
        bool quit;
        struct uffd_half hi;
};

/* What the running kernel supports, from a throw-away uffd of our own.
 * 0 with *ret_features = 0 if we may not create one (then only the
 * target's uffd can tell). */
static int kernel_features(uint64_t *ret_features)
{
        struct uffdio_api api = { .api = UFFD_API };
        int fd;

        fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
        if (fd < 0 && errno == EINVAL)  /* before 5.11 */
                fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
        if (fd < 0) {
                if (errno == ENOSYS)
                        return -ENOSYS;
                *ret_features = 0;
                return 0;
        }
        *ret_features = ioctl(fd, UFFDIO_API, &api) == 0 ? api.features : 0;
        close(fd);
        return 0;
}

/* Features of a uffd, from the "API:\t<api>:<features>:<ioctls>" line of
 * its fdinfo. */
static int fdinfo_features(const char *fn, uint64_t *ret_features)
{
        char line[256];
        unsigned long long api, feat;
        int r = -EPROTO;
        FILE *f;

        f = fopen(fn, "re");
        if (!f)
                return -errno;
        while (fgets(line, sizeof(line), f)) {
                if (sscanf(line, "API:\t%llx:%llx:", &api, &feat) == 2) {
                        *ret_features = feat;
                        r = 0;
                        break;
                }
        }
        fclose(f);
        return r;
}

/* The target's fds that are userfaultfds set up for async write-protect,
 * in fd order. -ENOENT if it has no uffd, -EPROTO if none is usable. */
static int find_uffds(pid_t pid, int *fds, size_t cap, size_t *ret_n)
{
        char dn[64], fn[96], link[64];
        struct dirent *de;
        size_t n = 0;
        bool any = false;
        DIR *d;

        snprintf(dn, sizeof(dn), "/proc/%d/fd", (int)pid);
        d = opendir(dn);
        if (!d)
                return errno == ENOENT ? -ESRCH : -errno;
        while ((de = readdir(d)) && n < cap) {
                uint64_t feat = 0;
                ssize_t l;
                char *endp;
                long fd = strtol(de->d_name, &endp, 10);

                if (*endp || endp == de->d_name)
                        continue;
                snprintf(fn, sizeof(fn), "%s/%ld", dn, fd);
                l = readlink(fn, link, sizeof(link) - 1);
                if (l < 0)
                        continue;
                link[l] = '\0';
                if (strcmp(link, "anon_inode:[userfaultfd]") != 0)
                        continue;
                any = true;
                snprintf(fn, sizeof(fn), "/proc/%d/fdinfo/%ld", (int)pid, fd);
                if (fdinfo_features(fn, &feat) < 0 ||
                    (feat & UFFD_WANT_FEATURES) != UFFD_WANT_FEATURES)
                        continue;
                fds[n++] = (int)fd;
        }
        closedir(d);

        /* readdir order is not fd order; lowest first is reproducible. */
        for (size_t i = 1; i < n; i++)
                for (size_t j = i; j > 0 && fds[j - 1] > fds[j]; j--) {
                        int x = fds[j];

                        fds[j] = fds[j - 1];
                        fds[j - 1] = x;
                }
        if (!n)
                return any ? -EPROTO : -ENOENT;
        *ret_n = n;
        return 0;
}

/* No retry on EINTR: the kernel returns it only for a fatal signal, and
 * by then it may have re-protected pages it did not report. */
static int pm_scan(int pagemap, struct pm_scan_arg *arg)
{
        int n;

        arg->size = sizeof(*arg);
        n = ioctl(pagemap, PAGEMAP_SCAN, arg);
        return n < 0 ? -errno : n;
}

/* Register [start, end) with uffd, and prove the registration landed in
 * the target. A uffd inherited across fork() acts on the parent's address
 * space: there the register fails (EINVAL or ENOMEM: nothing, or not all,
 * mapped at those addresses; ESRCH or ENOMEM if that address space is
 * gone) or, worse, succeeds on whatever the parent has there. With
 * WP_ASYNC the kernel accepts any kind of mapping, and tracker_open()
 * has checked that the target maps the whole range, so those errors mean
 * "another address space". Success is checked too: PAGEMAP_SCAN with
 * CHECK_WPASYNC on the target's pagemap fails with EPERM unless the
 * target's own VMAs are registered. */
static int register_in_target(struct uffd_priv *p, int uffd)
{
        struct uffdio_register reg = {
                .range = { .start = p->start, .len = p->end - p->start },
                .mode = UFFDIO_REGISTER_MODE_WP,
        };
        struct uffdio_range range = reg.range;
        struct pm_scan_arg arg = {
                .flags = PM_SCAN_CHECK_WPASYNC,
                .start = p->start,
                .end = p->end,
        };
        int r;

        if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0)
                return errno == EINVAL || errno == ENOMEM || errno == ESRCH ?
                       -EXDEV : -errno;
        if (!(reg.ioctls & (1ULL << _UFFDIO_WRITEPROTECT))) {
                r = -EINVAL;
                goto fail;
        }
        r = pm_scan(p->pagemap, &arg);
        if (r == -EPERM)
                r = -EXDEV;
        else if (r == -ENOTTY || r == -EINVAL)
                r = -EOPNOTSUPP;        /* no PAGEMAP_SCAN */
        if (r < 0)
                goto fail;
        return 0;
fail:
        (void)ioctl(uffd, UFFDIO_UNREGISTER, &range);
        return r;
}

static void *helper_main(void *arg);

static int uffd_open(pid_t pid, uint64_t start, uint64_t len, void **ret_priv)
{
        struct uffd_priv *p = NULL;
        struct uffdio_writeprotect wp = {
                .range = { .start = start, .len = len },
                .mode = UFFDIO_WRITEPROTECT_MODE_WP,
        };
        int cand[UFFD_MAX_CANDIDATES];
        size_t ncand = 0;
        uint64_t feat = 0;
        char fn[64];
        int pidfd = -1, r;

        r = kernel_features(&feat);
        if (r < 0)
                return r;
        if (feat && (feat & UFFD_WANT_FEATURES) != UFFD_WANT_FEATURES)
                return -EOPNOTSUPP;

        r = find_uffds(pid, cand, ARRAY_SIZE(cand), &ncand);
        if (r < 0)
                return r;

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->uffd = -1;
        p->start = start;
        p->end = start + len;

        snprintf(fn, sizeof(fn), "/proc/%d/pagemap", (int)pid);
        p->pagemap = open(fn, O_RDONLY | O_CLOEXEC);
        if (p->pagemap < 0) {
                r = errno == ENOENT ? -ESRCH : -errno;
                goto fail;
        }
        pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
        if (pidfd < 0) {
                r = -errno;
                goto fail;
        }

        /* Usually one candidate. More if the target forked after making
         * one and made another: the inherited one fails the check. The
         * first error that is not "another address space" wins, as the
         * more specific. */
        r = -ENOENT;
        for (size_t i = 0; i < ncand && p->uffd < 0; i++) {
                int fd = (int)syscall(SYS_pidfd_getfd, pidfd, cand[i], 0), e;

                if (fd < 0) {
                        e = -errno;
                        if (e == -EBADF)        /* closed meanwhile */
                                continue;
                        r = e;
                        goto fail;
                }
                e = register_in_target(p, fd);
                if (e == 0) {
                        p->uffd = fd;
                        break;
                }
                close(fd);
                if (r == -ENOENT || (r == -EXDEV && e != -EXDEV))
                        r = e;
        }
        if (p->uffd < 0)
                goto fail;

        /* Every page clean from here on: protect all, markers included. */
        if (ioctl(p->uffd, UFFDIO_WRITEPROTECT, &wp) < 0) {
                struct uffdio_range range = wp.range;

                r = -errno;
                (void)ioctl(p->uffd, UFFDIO_UNREGISTER, &range);
                goto fail;
        }
        close(pidfd);
        pidfd = -1;
        if (len >= split_min && sysconf(_SC_NPROCESSORS_ONLN) > 1) {
                pthread_mutex_init(&p->lock, NULL);
                pthread_cond_init(&p->cond, NULL);
                /* Without the helper every scan is whole-range: still right. */
                p->split = pthread_create(&p->helper, NULL, helper_main, p) == 0;
                if (!p->split) {
                        pthread_mutex_destroy(&p->lock);
                        pthread_cond_destroy(&p->cond);
                }
        }
        *ret_priv = p;
        return 0;
fail:
        if (pidfd >= 0)
                close(pidfd);
        if (p->uffd >= 0)
                close(p->uffd);
        if (p->pagemap >= 0)
                close(p->pagemap);
        free(p);
        return r;
}

/* Is any page in [from, end) written? Does not re-protect. */
static int any_written(struct uffd_priv *p, uint64_t from)
{
        struct pm_scan_arg arg = {
                .flags = PM_SCAN_CHECK_WPASYNC,
                .start = from,
                .end = p->end,
                .vec = (uintptr_t)p->vec,
                .vec_len = 1,
                .max_pages = 1,
                .category_mask = PAGE_IS_WRITTEN,
                .return_mask = PAGE_IS_WRITTEN,
        };

        return pm_scan(p->pagemap, &arg);
}

/* One PAGEMAP_SCAN reports and re-protects at most max_pages pages; the
 * pages it does not report keep their written state, so a full out just
 * leaves them for the next scan.
 *
 * Where to go on after a call: the kernel's walk_end can lag behind what
 * it reported when its internal bounce buffer filled part way (then it
 * keeps the first stop address), so resume after the last reported page
 * if that is further. Rescanning the tail is harmless: those pages are
 * protected again and show up only if written since.
 *
 * Scans [from, to) into out (indexes relative to base); *ret_end is where
 * it stopped (to, unless out filled up). */
static int scan_range(int pagemap, struct page_region *vec, uint64_t base, uint64_t from,
                      uint64_t to, uint32_t *out, size_t cap, size_t *ret_n, uint64_t *ret_end)
{
        uint64_t addr = from;
        size_t n = 0;

        while (addr < to && n < cap) {
                struct pm_scan_arg arg = {
                        .flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
                        .start = addr,
                        .end = to,
                        .vec = (uintptr_t)vec,
                        .vec_len = UFFD_VEC_LEN,
                        .max_pages = cap - n,
                        .category_mask = PAGE_IS_WRITTEN,
                        .return_mask = PAGE_IS_WRITTEN,
                };
                uint64_t next;
                int nr = pm_scan(pagemap, &arg);

                if (nr < 0)
                        return nr;
                if (nr > UFFD_VEC_LEN)
                        return -EIO;
                next = arg.walk_end;
                for (int i = 0; i < nr; i++) {
                        const struct page_region *pr = &vec[i];

                        if (pr->start < addr || pr->end > to ||
                            pr->start >= pr->end ||
                            (pr->end - pr->start) / HAVMS_PAGE_SIZE > cap - n)
                                return -EIO;
                        for (uint64_t a = pr->start; a < pr->end; a += HAVMS_PAGE_SIZE)
                                out[n++] = (uint32_t)((a - base) / HAVMS_PAGE_SIZE);
                        if (pr->end > next)
                                next = pr->end;
                }
                if (next <= addr)
                        return -EIO;    /* no progress: would spin */
                addr = next;
        }
        *ret_n = n;
        *ret_end = addr;
        return 0;
}

static void *helper_main(void *arg)
{
        struct uffd_priv *p = arg;
        unsigned long long seen = 0;

        pthread_mutex_lock(&p->lock);
        for (;;) {
                while (!p->quit && p->asked == seen)
                        pthread_cond_wait(&p->cond, &p->lock);
                if (p->quit)
                        break;
                seen = p->asked;
                pthread_mutex_unlock(&p->lock);
                uint64_t end;
                struct uffd_half *h = &p->hi;
                h->n = 0;
                h->r = scan_range(p->pagemap, h->vec, p->start, h->start, h->end, h->out,
                                  h->cap, &h->n, &end);
                pthread_mutex_lock(&p->lock);
                p->done = seen;
                pthread_cond_broadcast(&p->cond);
        }
        pthread_mutex_unlock(&p->lock);
        return NULL;
}

/* Both halves at once; only with room for every page (cap >= pages of the
 * range), so that neither half can re-protect a page it has no room to
 * report: the upper half lands after the lower half's room, then moves
 * down. */
static int split_scan(struct uffd_priv *p, uint32_t *out, size_t *ret_n)
{
        uint64_t mid = p->start + ((p->end - p->start) / 2 / HAVMS_PAGE_SIZE) * HAVMS_PAGE_SIZE;
        size_t lo_cap = (size_t)((mid - p->start) / HAVMS_PAGE_SIZE), n_lo = 0;
        uint64_t end;

        pthread_mutex_lock(&p->lock);
        p->hi.start = mid;
        p->hi.end = p->end;
        p->hi.out = out + lo_cap;
        p->hi.cap = (size_t)((p->end - mid) / HAVMS_PAGE_SIZE);
        p->asked++;
        pthread_cond_broadcast(&p->cond);
        pthread_mutex_unlock(&p->lock);

        int r = scan_range(p->pagemap, p->vec, p->start, p->start, mid, out, lo_cap, &n_lo, &end);

        pthread_mutex_lock(&p->lock);
        while (p->done != p->asked)
                pthread_cond_wait(&p->cond, &p->lock);
        pthread_mutex_unlock(&p->lock);
        if (r == 0)
                r = p->hi.r;
        if (r < 0)
                return r;
        memmove(out + n_lo, out + lo_cap, p->hi.n * sizeof(*out));
        *ret_n = n_lo + p->hi.n;
        return 0;
}

static int uffd_scan(void *priv, uint32_t *out, size_t cap, size_t *ret_n)
{
        struct uffd_priv *p = priv;
        uint64_t end;
        size_t n = 0;
        int r;

        if (p->split && cap >= (p->end - p->start) / HAVMS_PAGE_SIZE)
                return split_scan(p, out, ret_n);
        r = scan_range(p->pagemap, p->vec, p->start, p->start, p->end, out, cap, &n, &end);
        if (r < 0)
                return r;
        if (end < p->end) {
                r = any_written(p, end);
                if (r < 0)
                        return r;
                *ret_n = n;
                return r > 0 ? -ENOSPC : 0;
        }
        *ret_n = n;
        return 0;
}

static void uffd_close(void *priv)
{
        struct uffd_priv *p = priv;
        struct uffdio_range range;

        if (!p)
                return;
        if (p->split) {
                pthread_mutex_lock(&p->lock);
                p->quit = true;
                pthread_cond_broadcast(&p->cond);
                pthread_mutex_unlock(&p->lock);
                pthread_join(p->helper, NULL);
                pthread_mutex_destroy(&p->lock);
                pthread_cond_destroy(&p->cond);
        }
        /* Unregistering also drops the write-protection, so QEMU runs at
         * full speed again; the target keeps its own copy of the uffd and
         * a later open can register again. */
        range.start = p->start;
        range.len = p->end - p->start;
        (void)ioctl(p->uffd, UFFDIO_UNREGISTER, &range);
        close(p->uffd);
        close(p->pagemap);
        free(p);
}

const struct tracker_ops tracker_uffd_ops = {
        .name = "uffd-wp",
        .scan_is_atomic = true,
        .open = uffd_open,
        .scan = uffd_scan,
        .close = uffd_close,
};
