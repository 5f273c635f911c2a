/* tracker_softdirty: dirty tracking with the soft-dirty PTE bit
 * (CONFIG_MEM_SOFT_DIRTY, any kernel since 3.11; stock distribution
 * kernels have it).
 *
 * Writing "4" to /proc/PID/clear_refs clears the soft-dirty bit of every
 * page of the whole process and write-protects the PTEs; the next write to
 * a page faults and sets the bit again. Bit 55 of a /proc/PID/pagemap
 * entry shows it. A scan reads the entries for the range, then clears.
 *
 *   RACE: a write that lands between the pagemap read and the clear is
 *   lost (its bit is cleared without having been seen). Clearing first
 *   and reading after would be worse: it loses every write since the
 *   last scan. The kernel offers no atomic read-and-clear for soft-dirty,
 *   so a scan is correct only while nothing writes the range: havms scans
 *   with the VM stopped (vCPUs paused, I/O drained). uffd-wp has no such
 *   window.
 *
 * Because clear_refs acts on the whole process, only one soft-dirty user
 * per target can exist. Pages found dirty but not returned (out full) are
 * kept in a bitmap here, since the clear has already forgotten them.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "tracker.h"
#include "uffd_compat.h"
#include "util.h"

/* pagemap entries read per pread(): 32 KiB, 16 MiB of address space. */
#define SD_CHUNK 4096

struct sd_priv {
        int pagemap;            /* /proc/PID/pagemap */
        int clear_refs;         /* /proc/PID/clear_refs, write-only */
        uint64_t first;         /* pagemap index of the range's first page */
        uint64_t npages;
        uint64_t *pending;      /* seen dirty, not yet returned: 1 bit/page */
        uint64_t buf[SD_CHUNK];
};

static int clear_soft_dirty(int fd)
{
        ssize_t n;

        do
                n = write(fd, "4", 1);
        while (n < 0 && errno == EINTR);
        if (n < 0)
                return errno == EINVAL ? -EOPNOTSUPP : -errno;
        return n == 1 ? 0 : -EIO;
}

static int soft_dirty_bit(int pagemap, const volatile void *addr, bool *ret)
{
        uint64_t e;
        int r;

        r = pread_full(pagemap, &e, sizeof(e),
                       (uint64_t)((uintptr_t)addr / HAVMS_PAGE_SIZE * sizeof(e)));
        if (r < 0)
                return r;
        *ret = (e >> PM_SOFT_DIRTY_BIT) & 1;
        return 0;
}

/* Without CONFIG_MEM_SOFT_DIRTY, clear_refs accepts "4" and does nothing
 * and bit 55 is always 0, so the only test is to watch it work: on a page
 * of our own (which clears the bits of this process too; nothing here
 * uses them). */
static int softdirty_selfcheck(void)
{
        volatile char *page = MAP_FAILED;
        int pm = -1, cr = -1, r;
        bool before, after;

        cr = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
        pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
        if (cr < 0 || pm < 0) {
                r = -errno;
                goto out;
        }
        page = mmap(NULL, HAVMS_PAGE_SIZE, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (page == MAP_FAILED) {
                r = -errno;
                goto out;
        }
        page[0] = 1;
        r = clear_soft_dirty(cr);
        if (r < 0)
                goto out;
        r = soft_dirty_bit(pm, page, &before);
        if (r < 0)
                goto out;
        page[0] = 2;
        r = soft_dirty_bit(pm, page, &after);
        if (r < 0)
                goto out;
        r = !before && after ? 0 : -EOPNOTSUPP;
out:
        if (page != MAP_FAILED)
                munmap((void *)page, HAVMS_PAGE_SIZE);
        if (pm >= 0)
                close(pm);
        if (cr >= 0)
                close(cr);
        return r;
}

static int sd_open(pid_t pid, uint64_t start, uint64_t len, void **ret_priv)
{
        struct sd_priv *p;
        char fn[64];
        int r;

        r = softdirty_selfcheck();
        if (r < 0)
                return r;

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->pagemap = p->clear_refs = -1;
        p->first = start / HAVMS_PAGE_SIZE;
        p->npages = len / HAVMS_PAGE_SIZE;
        p->pending = calloc((p->npages + 63) / 64, sizeof(uint64_t));
        if (!p->pending) {
                r = -ENOMEM;
                goto fail;
        }

        snprintf(fn, sizeof(fn), "/proc/%d/clear_refs", (int)pid);
        p->clear_refs = open(fn, O_WRONLY | O_CLOEXEC);
        if (p->clear_refs < 0) {
                r = errno == ENOENT ? -ESRCH : -errno;
                goto fail;
        }
        snprintf(fn, sizeof(fn), "/proc/%d/pagemap", (int)pid);
        p->pagemap = open(fn, O_RDONLY | O_CLOEXEC);
        if (p->pagemap < 0) {
                r = errno == ENOENT ? -ESRCH : -errno;
                goto fail;
        }
        r = clear_soft_dirty(p->clear_refs);
        if (r < 0)
                goto fail;
        *ret_priv = p;
        return 0;
fail:
        if (p->pagemap >= 0)
                close(p->pagemap);
        if (p->clear_refs >= 0)
                close(p->clear_refs);
        free(p->pending);
        free(p);
        return r;
}

/* Hand out pending pages in ascending order, at most cap. */
static int sd_emit(struct sd_priv *p, uint32_t *out, size_t cap, size_t *ret_n)
{
        size_t words = (p->npages + 63) / 64, n = 0;

        for (size_t w = 0; w < words; w++) {
                while (p->pending[w]) {
                        unsigned b = (unsigned)__builtin_ctzll(p->pending[w]);

                        if (n == cap) {
                                *ret_n = n;
                                return -ENOSPC;
                        }
                        out[n++] = (uint32_t)(w * 64 + b);
                        p->pending[w] &= p->pending[w] - 1;
                }
        }
        *ret_n = n;
        return 0;
}

static int sd_scan(void *priv, uint32_t *out, size_t cap, size_t *ret_n)
{
        struct sd_priv *p = priv;
        int r;

        for (uint64_t i = 0; i < p->npages; i += SD_CHUNK) {
                uint64_t cnt = p->npages - i < SD_CHUNK ? p->npages - i : SD_CHUNK;

                r = pread_full(p->pagemap, p->buf, cnt * sizeof(uint64_t),
                               (p->first + i) * sizeof(uint64_t));
                if (r < 0)
                        return r;
                for (uint64_t j = 0; j < cnt; j++)
                        if ((p->buf[j] >> PM_SOFT_DIRTY_BIT) & 1)
                                p->pending[(i + j) / 64] |= 1ULL << ((i + j) % 64);
        }
        /* Read, then clear: see the RACE note at the top. */
        r = clear_soft_dirty(p->clear_refs);
        if (r < 0)
                return r;
        return sd_emit(p, out, cap, ret_n);
}

static void sd_close(void *priv)
{
        struct sd_priv *p = priv;

        if (!p)
                return;
        close(p->pagemap);
        close(p->clear_refs);
        free(p->pending);
        free(p);
}

const struct tracker_ops tracker_softdirty_ops = {
        .name = "soft-dirty",
        .scan_is_atomic = false,
        .open = sd_open,
        .scan = sd_scan,
        .close = sd_close,
};
