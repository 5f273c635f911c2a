/* tracker: backend selection, the common entry points, and finding the
 * guest RAM mapping in /proc/PID/maps. See tracker.h and docs/tracker.md.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tracker.h"
#include "util.h"

static const struct tracker_ops *const backends[] = {
        &tracker_uffd_ops,
        &tracker_softdirty_ops,
};

/* The backends return distinct errnos for distinct causes; this turns
 * them into the sentence an operator needs. */
static const char *uffd_why(int r)
{
        switch (r) {
        case -ENOSYS:
                return "userfaultfd needs a kernel built with CONFIG_USERFAULTFD";
        case -EOPNOTSUPP:
                return "userfaultfd write-protect async mode needs Linux >= 6.7 (UFFD_FEATURE_WP_ASYNC)";
        case -ENOENT:
                return "no userfaultfd in the target process: start QEMU with LD_PRELOAD=libhavms-uffd.so";
        case -EPROTO:
                return "the target's userfaultfd is not set up for async write-protect (is libhavms-uffd.so from this havms?)";
        case -EXDEV:
                return "the target's userfaultfd belongs to another address space: it was created before a fork (do not run QEMU with -daemonize)";
        case -EPERM:
        case -EACCES:
                return "taking the target's userfaultfd needs ptrace rights over it (same user, or CAP_SYS_PTRACE)";
        case -EBUSY:
                return "the range is already registered with another userfaultfd";
        case -EINVAL:
                return "userfaultfd cannot write-protect the range (must be mapped shared memory or anonymous memory)";
        case -ESRCH:
                return "the target process is gone";
        default:
                return "userfaultfd write-protect setup failed";
        }
}

static const char *softdirty_why(int r)
{
        switch (r) {
        case -EOPNOTSUPP:
                return "soft-dirty needs CONFIG_MEM_SOFT_DIRTY";
        case -EPERM:
        case -EACCES:
                return "soft-dirty tracking needs ptrace rights over the target (/proc/PID/clear_refs, /proc/PID/pagemap)";
        case -ENOENT:
        case -ESRCH:
                return "the target process is gone (or /proc is not mounted)";
        default:
                return "soft-dirty setup failed";
        }
}

static const char *why_for(const struct tracker_ops *ops, int r)
{
        return ops == &tracker_uffd_ops ? uffd_why(r) : softdirty_why(r);
}

/* A missing kernel feature is the least useful thing to report when
 * several backends fail: prefer a cause the operator can fix. */
static bool kernel_lacks(int r)
{
        return r == -ENOSYS || r == -EOPNOTSUPP;
}

/* One line of /proc/PID/maps: "start-end perms offset dev inode   path". */
static bool maps_line(char *line, uint64_t *start, uint64_t *end,
                      uint64_t *off, const char **path)
{
        unsigned long long s, e, o, ino;
        unsigned maj, min;
        char perms[8];
        int n = -1;
        size_t l;

        if (sscanf(line, "%llx-%llx %7s %llx %x:%x %llu %n", &s, &e, perms,
                   &o, &maj, &min, &ino, &n) < 7 || n < 0)
                return false;
        l = strlen(line);
        if (l && line[l - 1] == '\n')
                line[l - 1] = '\0';
        *start = s;
        *end = e;
        *off = o;
        *path = line + n;
        return true;
}

/* 0 if [start, start+len) is entirely mapped in pid, -ENXIO if not. A
 * backend may not notice a hole: soft-dirty would just never see writes
 * there. */
static int range_mapped(pid_t pid, uint64_t start, uint64_t len)
{
        char fn[64];
        char *line = NULL;
        size_t linecap = 0;
        uint64_t covered = start, end = start + len;
        int r = -ENXIO;
        FILE *f;

        snprintf(fn, sizeof(fn), "/proc/%d/maps", (int)pid);
        f = fopen(fn, "re");
        if (!f)
                return errno == ENOENT ? -ESRCH : -errno;
        while (getline(&line, &linecap, f) > 0) {
                uint64_t s, e, o;
                const char *p;

                if (!maps_line(line, &s, &e, &o, &p))
                        continue;
                if (s <= covered && e > covered)
                        covered = e;
                if (covered >= end) {
                        r = 0;
                        break;
                }
        }
        free(line);
        fclose(f);
        return r;
}

static const struct tracker_ops *backend_named(const char *name)
{
        for (size_t i = 0; i < ARRAY_SIZE(backends); i++)
                if (strcmp(name, backends[i]->name) == 0)
                        return backends[i];
        return NULL;
}

int tracker_open(const char *want, pid_t pid, uint64_t start, uint64_t len,
                 struct tracker **ret, const char **ret_why)
{
        const struct tracker_ops *only = NULL;
        struct tracker *t = NULL;
        const char *why = NULL;
        int r, best = 0;
        void *priv;

        r = -EINVAL;
        if (!ret)
                goto out;
        if (want && strcmp(want, "auto") != 0 && !(only = backend_named(want))) {
                why = "unknown dirty tracker (known: auto, uffd-wp, soft-dirty)";
                goto out;
        }
        if (pid <= 0 || len == 0 || start % HAVMS_PAGE_SIZE ||
            len % HAVMS_PAGE_SIZE || start + len < start ||
            len / HAVMS_PAGE_SIZE > (uint64_t)UINT32_MAX + 1) {
                why = "the range must be non-empty, page-aligned, and at most 2^32 pages";
                goto out;
        }
        r = range_mapped(pid, start, len);
        if (r < 0) {
                why = r == -ENXIO ? "the range is not entirely mapped in the target" :
                      r == -ESRCH ? "the target process is gone" :
                      "cannot read the target's /proc/PID/maps";
                goto out;
        }

        t = calloc(1, sizeof(*t));
        if (!t) {
                r = -ENOMEM;
                why = "out of memory";
                goto out;
        }
        for (size_t i = 0; i < ARRAY_SIZE(backends); i++) {
                const struct tracker_ops *ops = backends[i];

                if (only && ops != only)
                        continue;
                r = ops->open(pid, start, len, &priv);
                if (r == 0) {
                        t->ops = ops;
                        t->priv = priv;
                        t->npages = len / HAVMS_PAGE_SIZE;
                        *ret = t;
                        return 0;
                }
                if (!best || (kernel_lacks(best) && !kernel_lacks(r))) {
                        why = why_for(ops, r);
                        best = r;
                }
        }
        r = best;
out:
        free(t);
        if (ret_why)
                *ret_why = why;
        return r;
}

int tracker_scan(struct tracker *t, uint32_t *out, size_t cap, size_t *ret_n)
{
        if (!t || !ret_n || (!out && cap))
                return -EINVAL;
        return t->ops->scan(t->priv, out, cap, ret_n);
}

void tracker_close(struct tracker *t)
{
        if (!t)
                return;
        t->ops->close(t->priv);
        free(t);
}

const char *tracker_name(const struct tracker *t)
{
        return t ? t->ops->name : NULL;
}

bool tracker_scan_is_atomic(const struct tracker *t)
{
        return t && t->ops->scan_is_atomic;
}

int tracker_find_mapping(pid_t pid, const char *path, uint64_t *ret_start,
                         uint64_t *ret_len)
{
        char fn[64];
        char *line = NULL;
        size_t linecap = 0;
        uint64_t run_start = 0, run_end = 0, run_off = 0;
        bool found = false;
        int r = 0;
        FILE *f;

        if (pid <= 0 || !path || !*path)
                return -EINVAL;
        snprintf(fn, sizeof(fn), "/proc/%d/maps", (int)pid);
        f = fopen(fn, "re");
        if (!f)
                return errno == ENOENT ? -ESRCH : -errno;

        /* A mapping can show as several adjacent VMAs (madvise() splits
         * them); join those that continue each other in the file. Two
         * separate mappings of the file are refused rather than guessed
         * between. */
        while (getline(&line, &linecap, f) > 0) {
                uint64_t s, e, o;
                const char *p;

                if (!maps_line(line, &s, &e, &o, &p) || strcmp(p, path) != 0)
                        continue;
                if (found && s == run_end && o == run_off + (run_end - run_start)) {
                        run_end = e;
                        continue;
                }
                if (found) {
                        r = -ENOTUNIQ;
                        goto out;
                }
                found = true;
                run_start = s;
                run_end = e;
                run_off = o;
        }
        if (ferror(f)) {
                r = -EIO;
                goto out;
        }
        if (!found) {
                r = -ENOENT;
                goto out;
        }
        if (ret_start)
                *ret_start = run_start;
        if (ret_len)
                *ret_len = run_end - run_start;
out:
        free(line);
        fclose(f);
        return r;
}
