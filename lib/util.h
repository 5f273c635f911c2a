/* util: small helpers shared by every component: monotonic time, I/O with
 * deadlines, cleanup attributes. No logging, no global state.
 */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define HAVMS_PAGE_SIZE 4096u

/* Monotonic clock. */
uint64_t now_ns(void);
static inline uint64_t now_ms(void) { return now_ns() / 1000000u; }
/* Wall clock, for timestamps shown to operators. */
uint64_t wall_ms(void);
uint64_t wall_us(void);

/* Read exactly len bytes or fail. deadline_ns is a now_ns() value, 0 for
 * none. Returns 0, -ETIMEDOUT, -EPIPE (EOF before len) or -errno. */
int read_full(int fd, void *buf, size_t len, uint64_t deadline_ns);
/* pread/pwrite all of len at offset (files, block devices): retries short
 * transfers and EINTR; -EIO when the file ends first. */
int pread_full(int fd, void *buf, size_t len, uint64_t offset);
int pwrite_full(int fd, const void *buf, size_t len, uint64_t offset);
/* Write exactly len bytes or fail (same return convention). */
int write_full(int fd, const void *buf, size_t len, uint64_t deadline_ns);
/* A connection we end on purpose: half-close it (we send nothing more),
 * then read and drop what the peer still sends until it closes too.
 * 0 when it closed (it has read everything we sent), -ETIMEDOUT or
 * -errno otherwise. Closing with its bytes unread instead would send a
 * reset that can overtake our last message. */
int drain_until_closed(int fd, uint64_t deadline_ns);
/* Wait until fd is readable (events=POLLIN) or writable (POLLOUT). */
int wait_fd(int fd, short events, uint64_t deadline_ns);
/* The same, given up with -ECANCELED as soon as cancel_fd (e.g. an
 * eventfd; -1 = none) is readable; cancel_fd is not read. */
int wait_fd_or(int fd, short events, uint64_t deadline_ns, int cancel_fd);

int set_nonblock(int fd, bool on);
int set_cloexec(int fd);

/* Parse "host:port" (IPv4 or a name) into a connected / listening TCP fd. */
int tcp_connect(const char *hostport, uint64_t deadline_ns, int *ret_fd);
/* tcp_connect given up (-ECANCELED) once cancel_fd is readable. */
int tcp_connect_or(const char *hostport, uint64_t deadline_ns, int cancel_fd, int *ret_fd);
int tcp_listen(const char *hostport, int *ret_fd);
int tcp_accept(int listen_fd, int *ret_fd);

/* Listen on a unix socket at path, mode 0600 (root's daemons only).
 * The socket appears at path only once it listens with that mode: it is
 * made under a temporary name in the same directory and linked into place,
 * so whoever sees the file can connect, and nobody through a wider mode.
 * A stale socket that nobody answers is replaced; a live one
 * (-EADDRINUSE), one we cannot probe, or anything else (-EEXIST) is left
 * alone. A lock on the directory makes the check and the link one step
 * for servers starting at once. flags: SOCK_NONBLOCK or 0 (SOCK_CLOEXEC
 * always). On failure *why names the step that failed. */
int unix_listen(const char *path, int flags, int backlog, int *ret_fd, const char **why);

/* Make every directory of path (mkdir -p). */
int mkdir_p(const char *path, unsigned mode);


static inline void freep(void *p) { free(*(void **)p); }
static inline void closep(int *fd) { if (*fd >= 0) close(*fd); }
#define _cleanup_free_ __attribute__((cleanup(freep)))
#define _cleanup_close_ __attribute__((cleanup(closep)))
