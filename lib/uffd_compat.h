/* uffd_compat: kernel interface constants newer than the build host's
 * headers. Debian 12 ships Linux 6.1 uapi headers; async userfaultfd
 * write-protect and PAGEMAP_SCAN arrived in 6.7. Each definition is
 * guarded so newer headers win. Values are ABI: they match
 * include/uapi/linux/userfaultfd.h and include/uapi/linux/fs.h.
 */
#pragma once
/* linux/fs.h first: when it has PAGEMAP_SCAN its definitions win. */
#include <linux/fs.h>
#include <linux/ioctl.h>
#include <linux/types.h>
#include <linux/userfaultfd.h>
#include <sys/syscall.h>

#ifndef __NR_userfaultfd
#define __NR_userfaultfd 323
#endif
#ifndef SYS_userfaultfd
#define SYS_userfaultfd __NR_userfaultfd
#endif
#ifndef __NR_pidfd_open
#define __NR_pidfd_open 434
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open __NR_pidfd_open
#endif
#ifndef __NR_pidfd_getfd
#define __NR_pidfd_getfd 438
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd __NR_pidfd_getfd
#endif

/* userfaultfd(2) flag (5.11): handle only faults from user mode. Allowed
 * without privilege when vm.unprivileged_userfaultfd is 0. */
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

/* /dev/userfaultfd (6.1): an ioctl that hands out a uffd; access to the
 * device node replaces the capability check. */
#ifndef USERFAULTFD_IOC
#define USERFAULTFD_IOC 0xAA
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(USERFAULTFD_IOC, 0x00)
#endif

#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)       /* 5.19 */
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)           /* 6.4 */
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)                 /* 6.7 */
#endif

/* PAGEMAP_SCAN (6.7): an ioctl on /proc/PID/pagemap that reports page
 * ranges by category and can write-protect what it reports. */
#ifndef PAGEMAP_SCAN

#define PAGE_IS_WPALLOWED       (1 << 0)
#define PAGE_IS_WRITTEN         (1 << 1)
#define PAGE_IS_FILE            (1 << 2)
#define PAGE_IS_PRESENT         (1 << 3)
#define PAGE_IS_SWAPPED         (1 << 4)
#define PAGE_IS_PFNZERO         (1 << 5)
#define PAGE_IS_HUGE            (1 << 6)
#define PAGE_IS_SOFT_DIRTY      (1 << 7)

/* [start, end) and the categories (masked by return_mask) of a run. */
struct page_region {
        __u64 start;
        __u64 end;
        __u64 categories;
};

/* Write-protect the pages reported. */
#define PM_SCAN_WP_MATCHING     (1 << 0)
/* Fail with EPERM on a range not registered for async write-protect. */
#define PM_SCAN_CHECK_WPASYNC   (1 << 1)

struct pm_scan_arg {
        __u64 size;             /* sizeof(struct pm_scan_arg) */
        __u64 flags;            /* PM_SCAN_* */
        __u64 start;
        __u64 end;
        __u64 walk_end;         /* out: where the walk stopped */
        __u64 vec;              /* struct page_region[vec_len] */
        __u64 vec_len;
        __u64 max_pages;        /* report at most this many; 0 = no limit */
        __u64 category_inverted;
        __u64 category_mask;    /* all of these must match */
        __u64 category_anyof_mask;
        __u64 return_mask;      /* categories copied into page_region */
};

#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)

#endif /* PAGEMAP_SCAN */

/* /proc/PID/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst). */
#ifndef PM_SOFT_DIRTY_BIT
#define PM_SOFT_DIRTY_BIT 55
#endif
