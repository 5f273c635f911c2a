/* tracker: which guest pages were written since the last scan.
 *
 * Owns: the kernel mechanism that records writes to a range of another
 * process's address space (the QEMU process that maps guest RAM), and
 * re-arming it. Does not own: QEMU, guest RAM contents, or what is done
 * with the dirty set. Two backends sit behind one ops struct:
 *
 *   uffd-wp    userfaultfd write-protect in async mode + PAGEMAP_SCAN
 *              (Linux >= 6.7). The uffd must be created inside the target
 *              (see checkpointd/uffd_preload.c) and is taken with
 *              pidfd_getfd(). Scan and re-protect are one ioctl.
 *   soft-dirty /proc/PID/clear_refs ("4") + pagemap bit 55
 *              (CONFIG_MEM_SOFT_DIRTY). Clears the bits of the whole
 *              process, so only one tracker per target.
 *
 * A scan returns page indexes relative to the start of the range, sorted
 * ascending, each at most once.
 */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct tracker;

struct tracker_ops {
        const char *name;
        /* true when scan reports and re-arms in one atomic step, so it may
         * run while the target writes (uffd-wp); false when a write between
         * reading and re-arming can be lost (soft-dirty): then the target
         * must be stopped during a scan. */
        bool scan_is_atomic;
        /* Start tracking [start, start+len) in pid's address space. Every
         * page counts as clean afterwards. */
        int (*open)(pid_t pid, uint64_t start, uint64_t len, void **ret_priv);
        /* Append the indexes of pages written since the last scan (or open)
         * to out (capacity cap) and re-arm them. *ret_n is the count. If more
         * than cap pages are dirty, returns -ENOSPC after filling out (the
         * rest stay dirty and come with the next scan). */
        int (*scan)(void *priv, uint32_t *out, size_t cap, size_t *ret_n);
        void (*close)(void *priv);
};

extern const struct tracker_ops tracker_uffd_ops;
extern const struct tracker_ops tracker_softdirty_ops;

struct tracker {
        const struct tracker_ops *ops;
        void *priv;
        uint64_t npages;
};

/* Open the first backend that works, in order uffd-wp, soft-dirty, unless
 * want names one ("uffd-wp", "soft-dirty"; NULL or "auto" for any). On
 * failure, ret_why (if given) gets a static sentence naming the missing
 * kernel feature. */
int tracker_open(const char *want, pid_t pid, uint64_t start, uint64_t len,
                 struct tracker **ret, const char **ret_why);
int tracker_scan(struct tracker *t, uint32_t *out, size_t cap, size_t *ret_n);
void tracker_close(struct tracker *t);
const char *tracker_name(const struct tracker *t);
bool tracker_scan_is_atomic(const struct tracker *t);

/* uffd-wp: ranges of at least this many bytes (default 512 MiB) are
 * scanned by two threads at once, each half of the range. For tests: 1
 * splits every range, 0 restores the default; takes effect at the next
 * open. */
void tracker_uffd_set_split_min(uint64_t bytes);

/* Find the mapping of file path (as shown in /proc/PID/maps) in pid's
 * address space. */
int tracker_find_mapping(pid_t pid, const char *path, uint64_t *ret_start,
                         uint64_t *ret_len);
