#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>

uint64_t now_ns(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t wall_ms(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t wall_us(void)
{
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

int wait_fd(int fd, short events, uint64_t deadline_ns)
{
        return wait_fd_or(fd, events, deadline_ns, -1);
}

int wait_fd_or(int fd, short events, uint64_t deadline_ns, int cancel_fd)
{
        for (;;) {
                int timeout = -1;
                if (deadline_ns) {
                        uint64_t now = now_ns();
                        if (now >= deadline_ns)
                                return -ETIMEDOUT;
                        /* round up so we never spin on a sub-ms remainder */
                        timeout = (int)((deadline_ns - now + 999999u) / 1000000u);
                }
                struct pollfd p[2] = { { .fd = fd, .events = events },
                                       { .fd = cancel_fd, .events = POLLIN } };
                int r = poll(p, cancel_fd >= 0 ? 2 : 1, timeout);
                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (r == 0)
                        continue; /* re-check the deadline */
                if (p[0].revents & POLLNVAL)
                        return -EBADF;
                if (!p[0].revents)
                        return -ECANCELED; /* cancel_fd is readable (not consumed) */
                return 0; /* readable, writable, or error/hangup: caller's I/O says which */
        }
}

int read_full(int fd, void *buf, size_t len, uint64_t deadline_ns)
{
        uint8_t *p = buf;
        while (len > 0) {
                ssize_t n = read(fd, p, len);
                if (n > 0) {
                        p += n;
                        len -= (size_t)n;
                        continue;
                }
                if (n == 0)
                        return -EPIPE;
                if (errno == EINTR)
                        continue;
                if (errno != EAGAIN)
                        return -errno;
                int r = wait_fd(fd, POLLIN, deadline_ns);
                if (r < 0)
                        return r;
        }
        return 0;
}

int write_full(int fd, const void *buf, size_t len, uint64_t deadline_ns)
{
        const uint8_t *p = buf;
        while (len > 0) {
                ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
                if (n < 0 && errno == ENOTSOCK)
                        n = write(fd, p, len);
                if (n > 0) {
                        p += n;
                        len -= (size_t)n;
                        continue;
                }
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno != EAGAIN)
                        return -errno;
                int r = wait_fd(fd, POLLOUT, deadline_ns);
                if (r < 0)
                        return r;
        }
        return 0;
}

int drain_until_closed(int fd, uint64_t deadline_ns)
{
        char sink[16384];
        shutdown(fd, SHUT_WR);
        for (;;) {
                int r = wait_fd(fd, POLLIN, deadline_ns);
                if (r < 0)
                        return r;
                ssize_t n = read(fd, sink, sizeof(sink));
                if (n == 0)
                        return 0;
                if (n < 0 && errno != EINTR && errno != EAGAIN)
                        return -errno;
        }
}

int set_nonblock(int fd, bool on)
{
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0)
                return -errno;
        fl = on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
        return fcntl(fd, F_SETFL, fl) < 0 ? -errno : 0;
}

int set_cloexec(int fd)
{
        int fl = fcntl(fd, F_GETFD);
        if (fl < 0 || fcntl(fd, F_SETFD, fl | FD_CLOEXEC) < 0)
                return -errno;
        return 0;
}

static int split_hostport(const char *hostport, char *host, size_t hostsz,
                          const char **ret_port)
{
        const char *colon = strrchr(hostport, ':');
        if (!colon || colon == hostport || !colon[1])
                return -EINVAL;
        size_t hl = (size_t)(colon - hostport);
        if (hl >= hostsz)
                return -EINVAL;
        memcpy(host, hostport, hl);
        host[hl] = 0;
        *ret_port = colon + 1;
        return 0;
}

static int resolve(const char *hostport, bool passive, struct addrinfo **ret)
{
        char host[256];
        const char *port;
        int r = split_hostport(hostport, host, sizeof(host), &port);
        if (r < 0)
                return r;
        struct addrinfo hints = {
                .ai_family = AF_INET,
                .ai_socktype = SOCK_STREAM,
                .ai_flags = passive ? AI_PASSIVE : 0,
        };
        const char *h = (passive && (!strcmp(host, "*") || !strcmp(host, "0.0.0.0"))) ? NULL : host;
        if (getaddrinfo(h, port, &hints, ret) != 0)
                return -EHOSTUNREACH;
        return 0;
}

static void tcp_tune(int fd)
{
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        /* A dead peer must be noticed even when we are only waiting. */
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
        int idle = 2, intvl = 1, cnt = 3;
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
        unsigned tmo = 3000;
        setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &tmo, sizeof(tmo));
}

int tcp_connect(const char *hostport, uint64_t deadline_ns, int *ret_fd)
{
        return tcp_connect_or(hostport, deadline_ns, -1, ret_fd);
}

int tcp_connect_or(const char *hostport, uint64_t deadline_ns, int cancel_fd, int *ret_fd)
{
        struct addrinfo *ai = NULL;
        int r = resolve(hostport, false, &ai);
        if (r < 0)
                return r;
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
                r = -errno;
                goto out;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
                if (errno != EINPROGRESS) {
                        r = -errno;
                        goto out;
                }
                r = wait_fd_or(fd, POLLOUT, deadline_ns, cancel_fd);
                if (r < 0)
                        goto out;
                int err = 0;
                socklen_t el = sizeof(err);
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err) {
                        r = -err;
                        goto out;
                }
        }
        tcp_tune(fd);
        *ret_fd = fd;
        fd = -1;
        r = 0;
out:
        if (fd >= 0)
                close(fd);
        freeaddrinfo(ai);
        return r;
}

int tcp_listen(const char *hostport, int *ret_fd)
{
        struct addrinfo *ai = NULL;
        int r = resolve(hostport, true, &ai);
        if (r < 0)
                return r;
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
                r = -errno;
                goto out;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 16) < 0) {
                r = -errno;
                goto out;
        }
        *ret_fd = fd;
        fd = -1;
        r = 0;
out:
        if (fd >= 0)
                close(fd);
        freeaddrinfo(ai);
        return r;
}

int tcp_accept(int lfd, int *ret_fd)
{
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0)
                return -errno;
        tcp_tune(fd);
        *ret_fd = fd;
        return 0;
}

/* Is a server listening at sa? 1 yes, 0 no (nobody, or no file), <0 the
 * probe itself failed (e.g. another user's socket: not ours to replace). */
static int unix_probe(const struct sockaddr_un *sa)
{
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (probe < 0)
                return -errno;
        int r = connect(probe, (const struct sockaddr *)sa, sizeof(*sa)) < 0 ? -errno : 0;
        close(probe);
        if (r == 0 || r == -EAGAIN) /* EAGAIN: it listens, its backlog is full */
                return 1;
        if (r == -ECONNREFUSED || r == -ENOENT)
                return 0;
        return r;
}

int unix_listen(const char *path, int flags, int backlog, int *ret_fd, const char **why)
{
        static unsigned counter;
        struct sockaddr_un sa = { .sun_family = AF_UNIX }, tmp = { .sun_family = AF_UNIX };
        struct stat st;
        char dir[sizeof(sa.sun_path)];
        int r, fd = -1;
        *why = "path too long";
        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        strcpy(sa.sun_path, path);
        /* the temporary name: same directory, unique per process and call */
        strcpy(dir, path);
        char *slash = strrchr(dir, '/');
        if (slash == dir)
                dir[1] = 0;
        else if (slash)
                *slash = 0;
        else
                strcpy(dir, ".");
        if (snprintf(tmp.sun_path, sizeof(tmp.sun_path), "%s/.hvl%d.%u", dir, (int)getpid(),
                     __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED)) >= (int)sizeof(tmp.sun_path))
                return -ENAMETOOLONG;
        /* Held from the probe to the link: two servers starting at once
         * (or two threads) cannot both take the path. */
        *why = "lock the socket's directory";
        int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return -errno;
        if (flock(dfd, LOCK_EX) < 0) {
                r = -errno;
                goto out;
        }
        if (lstat(path, &st) == 0) {
                if (!S_ISSOCK(st.st_mode)) {
                        *why = "exists and is not a socket";
                        r = -EEXIST;
                        goto out;
                }
                r = unix_probe(&sa);
                if (r != 0) {
                        *why = r > 0 ? "another server listens there" : "probe";
                        r = r > 0 ? -EADDRINUSE : r;
                        goto out;
                }
                if (unlink(path) < 0 && errno != ENOENT) { /* stale: a dead server's */
                        r = -errno;
                        *why = "remove the stale socket";
                        goto out;
                }
        }
        *why = "socket";
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | flags, 0);
        if (fd < 0) {
                r = -errno;
                goto out;
        }
        unlink(tmp.sun_path); /* left by a crash of an earlier same pid */
        /* Made and set up under the temporary name, then linked into place:
         * whoever sees the file can connect, never through a wider mode,
         * and link() (unlike rename) never replaces somebody else's. */
        const char *step = "bind";
        if (bind(fd, (struct sockaddr *)&tmp, sizeof(tmp)) < 0 ||
            (step = "chmod", chmod(tmp.sun_path, 0600) < 0) ||
            (step = "listen", listen(fd, backlog) < 0) ||
            (step = "link into place", link(tmp.sun_path, path) < 0)) {
                r = -errno;
                *why = step;
                if (r == -EEXIST) { /* a server that does not take the lock */
                        *why = "another server listens there";
                        r = -EADDRINUSE;
                }
                unlink(tmp.sun_path);
                goto out;
        }
        unlink(tmp.sun_path);
        *ret_fd = fd;
        fd = -1;
        r = 0;
out:
        if (fd >= 0)
                close(fd);
        close(dfd); /* releases the lock */
        return r;
}

int mkdir_p(const char *path, unsigned mode)
{
        char buf[4096];
        if (strlen(path) >= sizeof(buf))
                return -ENAMETOOLONG;
        strcpy(buf, path);
        for (char *p = buf + 1; *p; p++) {
                if (*p != '/')
                        continue;
                *p = 0;
                if (mkdir(buf, mode) < 0 && errno != EEXIST)
                        return -errno;
                *p = '/';
        }
        if (mkdir(buf, mode) < 0 && errno != EEXIST)
                return -errno;
        return 0;
}

static int pio_full(int fd, void *buf, size_t len, uint64_t offset, bool write)
{
        uint8_t *p = buf;
        while (len > 0) {
                ssize_t n = write ? pwrite(fd, p, len, (off_t)offset) : pread(fd, p, len, (off_t)offset);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return -errno;
                if (n == 0)
                        return -EIO; /* the file ended (or shrank) under us */
                p += n;
                len -= (size_t)n;
                offset += (uint64_t)n;
        }
        return 0;
}

int pread_full(int fd, void *buf, size_t len, uint64_t offset)
{
        return pio_full(fd, buf, len, offset, false);
}

int pwrite_full(int fd, const void *buf, size_t len, uint64_t offset)
{
        return pio_full(fd, (void *)buf, len, offset, true);
}
