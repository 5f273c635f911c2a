/* uffd_preload: LD_PRELOAD library (libhavms-uffd.so) for the QEMU that
 * runs a protected VM.
 *
 * Owns: creating one userfaultfd inside the process it is loaded into and
 * leaving it open, so that checkpointd can take it with pidfd_getfd() and
 * use it for dirty tracking (lib/tracker_uffd.c). A userfaultfd is bound
 * to the address space of the process that created it, and no call lets
 * another process create one for QEMU's address space: this library is
 * how havms gets code to run inside QEMU without patching it.
 *
 * Does not touch: anything else in QEMU. It registers no memory, reads
 * nothing from the fd, installs no handlers, prints nothing. If
 * userfaultfd is missing, forbidden or too old, the constructor does
 * nothing and QEMU runs as if the library were absent; the tracker then
 * reports why it cannot work.
 *
 * The fd is close-on-exec (programs QEMU runs do not inherit it) and kept
 * above the stdio descriptors (daemonizing code dup2()s over 0-2). It is
 * inherited across fork() but stays bound to the creating address space:
 * QEMU must not be run with -daemonize (see docs/tracker.md).
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "../lib/uffd_compat.h"

/* The features the tracker needs; the kernel refuses UFFDIO_API if any is
 * unknown to it. */
#define HAVMS_UFFD_FEATURES (UFFD_FEATURE_WP_ASYNC | \
                             UFFD_FEATURE_WP_UNPOPULATED | \
                             UFFD_FEATURE_WP_HUGETLBFS_SHMEM)

/* Create a userfaultfd in the calling process, set up for async
 * write-protect, and leave it open. Returns the fd or a negative errno
 * (-EOPNOTSUPP: the kernel lacks a feature). Exported for tests. */
int havms_uffd_create(void);

static int uffd_open_raw(void)
{
        int fd, dev;

        fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
        if (fd >= 0 || errno != EPERM)
                return fd >= 0 ? fd : -errno;

        /* vm.unprivileged_userfaultfd=0 and no CAP_SYS_PTRACE. Async
         * write-protect is resolved inside the kernel without reaching the
         * fault handler, so a user-mode-only uffd tracks kernel writes (by
         * vhost, O_DIRECT reads) just as well. */
        fd = (int)syscall(SYS_userfaultfd,
                          O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
        if (fd >= 0)
                return fd;

        /* Last: /dev/userfaultfd, where file permissions decide. */
        dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
        if (dev < 0)
                return -EPERM;
        fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
        fd = fd >= 0 ? fd : -errno;
        close(dev);
        return fd;
}

int havms_uffd_create(void)
{
        struct uffdio_api api = {
                .api = UFFD_API,
                .features = HAVMS_UFFD_FEATURES,
        };
        int fd, high;

        fd = uffd_open_raw();
        if (fd < 0)
                return fd;

        if (ioctl(fd, UFFDIO_API, &api) < 0) {
                int r = errno == EINVAL ? -EOPNOTSUPP : -errno;

                close(fd);
                return r;
        }
        if ((api.features & HAVMS_UFFD_FEATURES) != HAVMS_UFFD_FEATURES) {
                close(fd);
                return -EOPNOTSUPP;
        }

        if (fd < 3) {
                high = fcntl(fd, F_DUPFD_CLOEXEC, 3);
                close(fd);
                if (high < 0)
                        return -errno;
                fd = high;
        }
        return fd;
}

__attribute__((constructor))
static void havms_uffd_preload_init(void)
{
        int saved = errno;

        (void)havms_uffd_create();
        errno = saved;
}
