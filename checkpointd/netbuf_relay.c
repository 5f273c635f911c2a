/* netbuf relay backend: a user-space frame relay between QEMU's
 * `-netdev stream` socket and a tap. Works on every kernel.
 *
 * Owns: the tap fd (the tap lives as long as it), the listening unix
 * socket and its file, QEMU's connection, the relay thread and its epoll
 * loop. Does not own QEMU. Two ways to meet it (netbuf_options):
 *   relay listens (qemu_listens false): QEMU connects (server=off), goes
 *     away, and a new one may connect again;
 *   QEMU listens (qemu_listens true): netbuf_attach() connects (server=on).
 *     QEMU accepts again when a relay goes away, so the relay of a
 *     restarted checkpointd reaches a QEMU that kept running; frames the
 *     guest sends meanwhile are dropped by QEMU (its link is down), like
 *     frames lost on a wire.
 *
 *   QEMU --[len BE32][frame]...--> rbuf --parse--> open queue (buffering)
 *                                              \-> tap      (not buffering)
 *   tap ---frame---> [len BE32][frame] --nonblocking--> QEMU (or dropped)
 *
 * Everything that touches rbuf, QEMU's fd or the queues runs under
 * nb->lock, so netbuf_barrier() (another thread) and the relay thread
 * cannot interleave: no frame slips past a cut.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "netbuf_int.h"
#include "util.h"

/* Room for one whole frame behind a partial one: a frame that does not
 * fit under max_bytes waits here, never more than one. */
#define RBUF_CAP (2 * (4 + NB_FRAME_MAX))
/* Reads per wake-up of the relay thread, so a busy guest cannot keep
 * the lock from a barrier for long. */
#define PULL_BUDGET 8
#define TAP_BUDGET 64

enum relay_tag {
        TAG_STOP = 1,
        TAG_LISTEN,
        TAG_QEMU,
        TAG_TAP,
};

struct relay {
        int listen_fd, qemu_fd, tap_fd, ep_fd, stop_fd;
        bool socket_made;               /* the socket file is ours to unlink */
        pthread_t thread;
        bool thread_started;
        uint32_t qemu_events;           /* lock: epoll mask of qemu_fd */
        /* QEMU -> tap, lock: bytes read from QEMU not yet parsed. */
        uint8_t *rbuf;
        size_t rlen;
        /* tap -> QEMU, lock: the tail of a frame the socket took only in
         * part (the stream must not be cut mid-frame). */
        uint8_t *wbuf;
        size_t wlen, woff;
        uint8_t *tbuf;                  /* relay thread only: a tap frame */
};

static struct relay *R(const struct netbuf *nb)
{
        return nb->priv;
}

/* ---- QEMU connection (lock held) ---- */

static void set_listen(struct netbuf *nb, bool on)
{
        struct epoll_event ev = { .events = on ? EPOLLIN : 0, .data.u32 = TAG_LISTEN };

        if (R(nb)->listen_fd < 0) /* QEMU listens: nothing to accept */
                return;
        epoll_ctl(R(nb)->ep_fd, EPOLL_CTL_MOD, R(nb)->listen_fd, &ev);
}

/* While blocked, frames stay in QEMU's socket: that is the backpressure.
 * EPOLLRDHUP stays on so a QEMU that dies meanwhile is noticed. */
static void qemu_set_events(struct netbuf *nb)
{
        struct relay *r = R(nb);
        struct epoll_event ev = { .data.u32 = TAG_QEMU };

        if (r->qemu_fd < 0)
                return;
        ev.events = EPOLLRDHUP | (nb->blocked ? 0 : EPOLLIN) | (r->wlen ? EPOLLOUT : 0);
        if (ev.events == r->qemu_events)
                return;
        if (epoll_ctl(r->ep_fd, EPOLL_CTL_MOD, r->qemu_fd, &ev) == 0)
                r->qemu_events = ev.events;
}

/* QEMU went away or spoke garbage: forget the connection and its
 * partial frames, accept the next one. Frames already queued stay. */
static void qemu_drop(struct netbuf *nb, const char *why)
{
        struct relay *r = R(nb);

        if (r->qemu_fd < 0)
                return;
        log_debug("netbuf vm=%s nic=%u: QEMU connection dropped (%s), %zu bytes unparsed",
                  nb->vm, nb->nic, why, r->rlen);
        epoll_ctl(r->ep_fd, EPOLL_CTL_DEL, r->qemu_fd, NULL);
        close(r->qemu_fd);
        r->qemu_fd = -1;
        r->qemu_events = 0;
        r->rlen = 0;
        r->wlen = r->woff = 0;
        nb->blocked = false;
        set_listen(nb, true);
}

/* The sink of released frames, and the way out when not buffering. A tap
 * that cannot take a frame now drops it (counted): a nonblocking write
 * keeps the caller (often the VM's thread) from waiting on the host
 * stack, and TCP retransmits. */
static void tap_send(struct netbuf *nb, const uint8_t *data, size_t len)
{
        ssize_t n = write(R(nb)->tap_fd, data, len);

        if (n == (ssize_t)len) {
                nb->st.frames_out++;
                nb->st.bytes_out += len;
                return;
        }
        nb->st.frames_dropped++;
        if (n < 0 && errno != EAGAIN)
                log_debug("netbuf vm=%s nic=%u: tap write: %s", nb->vm, nb->nic,
                          strerror(errno));
}

/* Take the complete frames at the head of rbuf. Stops at a partial frame
 * (it belongs to whatever epoch is open when its end arrives) or when a
 * frame does not fit (blocked). -EBADMSG on an impossible length. */
static int parse_rbuf(struct netbuf *nb)
{
        struct relay *r = R(nb);
        size_t off = 0;
        int ret = 0;

        while (r->rlen - off >= 4) {
                uint32_t len;

                memcpy(&len, r->rbuf + off, 4);
                len = ntohl(len);
                if (len < NB_FRAME_MIN || len > NB_FRAME_MAX) {
                        ret = -EBADMSG;
                        break;
                }
                if (r->rlen - off - 4 < len)
                        break;
                if (nb->buffering) {
                        if (nbq_push(nb, r->rbuf + off + 4, len) == -ENOBUFS)
                                break;
                } else {
                        tap_send(nb, r->rbuf + off + 4, len);
                }
                off += 4 + len;
        }
        memmove(r->rbuf, r->rbuf + off, r->rlen - off);
        r->rlen -= off;
        return ret;
}

/* Read what QEMU has handed over into the queues: until EAGAIN, blocked,
 * or budget reads (0 = no limit). */
static void qemu_pull(struct netbuf *nb, unsigned budget)
{
        struct relay *r = R(nb);
        unsigned reads = 0;

        while (r->qemu_fd >= 0) {
                ssize_t n;

                if (parse_rbuf(nb) < 0) {
                        qemu_drop(nb, "bad frame length");
                        return;
                }
                if (nb->blocked || (budget && reads++ == budget))
                        break;
                n = read(r->qemu_fd, r->rbuf + r->rlen, RBUF_CAP - r->rlen);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN)
                        break;
                if (n <= 0) {
                        qemu_drop(nb, n == 0 ? "EOF" : strerror(errno));
                        return;
                }
                r->rlen += (size_t)n;
        }
        qemu_set_events(nb);
}

static void relay_resume(struct netbuf *nb)
{
        nb->blocked = false;
        if (parse_rbuf(nb) < 0)
                qemu_drop(nb, "bad frame length");
        else
                qemu_set_events(nb);
}

/* One frame from the LAN to the guest. Never waits for QEMU: a guest
 * that does not read loses frames, like a NIC whose ring is full. */
static void to_qemu(struct netbuf *nb, const uint8_t *data, size_t len)
{
        struct relay *r = R(nb);
        uint32_t be = htonl((uint32_t)len);
        struct iovec iov[2] = {
                { .iov_base = &be, .iov_len = 4 },
                { .iov_base = (void *)data, .iov_len = len },
        };
        struct msghdr m = { .msg_iov = iov, .msg_iovlen = 2 };
        size_t total = 4 + len;
        ssize_t n;

        if (r->qemu_fd < 0 || r->wlen) {
                nb->st.frames_dropped++;
                return;
        }
        n = sendmsg(r->qemu_fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n <= 0) {
                /* EAGAIN: socket full. Other errors: the read side sees
                 * the hang-up and drops the connection. */
                nb->st.frames_dropped++;
                return;
        }
        if ((size_t)n < total) {
                size_t done = (size_t)n;

                if (done < 4) {
                        memcpy(r->wbuf, (uint8_t *)&be + done, 4 - done);
                        memcpy(r->wbuf + 4 - done, data, len);
                } else {
                        memcpy(r->wbuf, data + (done - 4), total - done);
                }
                r->wlen = total - done;
                r->woff = 0;
                qemu_set_events(nb);
        }
        nb->st.frames_in++;
        nb->st.bytes_in += len;
}

static void qemu_flush(struct netbuf *nb)
{
        struct relay *r = R(nb);
        ssize_t n;

        if (r->qemu_fd < 0 || !r->wlen)
                return;
        n = send(r->qemu_fd, r->wbuf + r->woff, r->wlen - r->woff,
                 MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
                r->woff += (size_t)n;
                if (r->woff == r->wlen)
                        r->wlen = r->woff = 0;
        }
        qemu_set_events(nb);
}

/* ---- relay thread ---- */

/* Make fd (nonblocking) QEMU's connection. Takes fd in every case. */
static int adopt_qemu_fd(struct netbuf *nb, int fd)
{
        struct relay *r = R(nb);
        struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.u32 = TAG_QEMU };

        pthread_mutex_lock(&nb->lock);
        if (r->qemu_fd >= 0 || epoll_ctl(r->ep_fd, EPOLL_CTL_ADD, fd, &ev) < 0) {
                int e = r->qemu_fd >= 0 ? -EISCONN : -errno;

                pthread_mutex_unlock(&nb->lock);
                close(fd);
                return e;
        }
        r->qemu_fd = fd;
        r->qemu_events = ev.events;
        r->rlen = 0;
        set_listen(nb, false);
        pthread_mutex_unlock(&nb->lock);
        log_debug("netbuf vm=%s nic=%u: QEMU connected", nb->vm, nb->nic);
        return 0;
}

static void on_accept(struct netbuf *nb)
{
        int fd = accept4(R(nb)->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd >= 0)
                (void)adopt_qemu_fd(nb, fd);
}

/* QEMU listens (server=on): connect to it. A unix connect completes at
 * once (QEMU's accept may come later: the connection waits in its
 * backlog, and so do frames written meanwhile). */
static int relay_attach(struct netbuf *nb, char *err, size_t errlen)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd, ret;

        pthread_mutex_lock(&nb->lock);
        ret = R(nb)->qemu_fd >= 0;
        pthread_mutex_unlock(&nb->lock);
        if (ret)
                return 0;
        if (strlen(nb->socket_path) >= sizeof(sa.sun_path))
                return nb_fail(nb, err, errlen, -ENAMETOOLONG, "%s", nb->socket_path);
        strcpy(sa.sun_path, nb->socket_path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return nb_fail(nb, err, errlen, -errno, "socket");
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                ret = -errno;
                close(fd);
                return nb_fail(nb, err, errlen, ret, "connect to QEMU at %s", nb->socket_path);
        }
        ret = set_nonblock(fd, true);
        if (ret < 0) {
                close(fd);
                return nb_fail(nb, err, errlen, ret, "nonblocking socket");
        }
        ret = adopt_qemu_fd(nb, fd);
        if (ret < 0 && ret != -EISCONN)
                return nb_fail(nb, err, errlen, ret, "watch QEMU's connection");
        return 0;
}

static void on_qemu(struct netbuf *nb, uint32_t events)
{
        pthread_mutex_lock(&nb->lock);
        if (events & EPOLLOUT)
                qemu_flush(nb);
        if (nb->blocked && (events & (EPOLLHUP | EPOLLRDHUP | EPOLLERR)))
                /* Nothing more will be read from it: a level-triggered
                 * hang-up would otherwise wake us for ever. */
                qemu_drop(nb, "hang-up while full");
        else if (events & (EPOLLIN | EPOLLHUP | EPOLLRDHUP | EPOLLERR))
                qemu_pull(nb, PULL_BUDGET);
        pthread_mutex_unlock(&nb->lock);
}

static void on_tap(struct netbuf *nb)
{
        struct relay *r = R(nb);

        for (unsigned i = 0; i < TAP_BUDGET; i++) {
                ssize_t n = read(r->tap_fd, r->tbuf, NB_FRAME_MAX);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break;
                pthread_mutex_lock(&nb->lock);
                to_qemu(nb, r->tbuf, (size_t)n);
                pthread_mutex_unlock(&nb->lock);
        }
}

static void *relay_main(void *arg)
{
        struct netbuf *nb = arg;
        struct relay *r = R(nb);

        for (;;) {
                struct epoll_event evs[8];
                int n = epoll_wait(r->ep_fd, evs, (int)(sizeof(evs) / sizeof(evs[0])), -1);

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        log_debug("netbuf vm=%s nic=%u: epoll_wait: %s", nb->vm, nb->nic,
                                  strerror(errno));
                        return NULL;
                }
                for (int i = 0; i < n; i++) {
                        switch (evs[i].data.u32) {
                        case TAG_STOP:
                                return NULL;
                        case TAG_LISTEN:
                                on_accept(nb);
                                break;
                        case TAG_QEMU:
                                on_qemu(nb, evs[i].events);
                                break;
                        case TAG_TAP:
                                on_tap(nb);
                                break;
                        }
                }
        }
}

/* ---- ops ---- */

static int listen_unix(struct netbuf *nb, char *err, size_t errlen)
{
        struct relay *r = R(nb);
        const char *why;

        if (!nb->socket_path[0])
                return nb_fail(nb, err, errlen, -EINVAL, "the relay needs a socket path");
        int ret = unix_listen(nb->socket_path, SOCK_NONBLOCK, 2, &r->listen_fd, &why);
        if (ret < 0)
                return nb_fail(nb, err, errlen, ret, "%s: %s", nb->socket_path, why);
        r->socket_made = true;
        return 0;
}

static int ep_add(struct relay *r, int fd, uint32_t events, enum relay_tag tag)
{
        struct epoll_event ev = { .events = events, .data.u32 = tag };

        return epoll_ctl(r->ep_fd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

static void relay_close(struct netbuf *nb)
{
        struct relay *r = R(nb);
        uint64_t one = 1;

        if (!r)
                return;
        if (r->thread_started) {
                /* cannot fail: the counter is 0 and only we write it */
                ssize_t n = write(r->stop_fd, &one, sizeof(one));

                (void)n;
                pthread_join(r->thread, NULL);
        }
        if (r->qemu_fd >= 0)
                close(r->qemu_fd);
        if (r->listen_fd >= 0)
                close(r->listen_fd);
        if (r->socket_made)
                unlink(nb->socket_path);
        /* The tap is not persistent: closing its fd removes it. */
        if (r->tap_fd >= 0)
                close(r->tap_fd);
        if (r->ep_fd >= 0)
                close(r->ep_fd);
        if (r->stop_fd >= 0)
                close(r->stop_fd);
        free(r->rbuf);
        free(r->wbuf);
        free(r->tbuf);
        free(r);
        nb->priv = NULL;
}

static int relay_setup(struct netbuf *nb, char *err, size_t errlen)
{
        struct relay *r = R(nb);
        int ret;

        ret = nb_tap_create(nb->tap, false, &r->tap_fd);
        if (ret < 0)
                return nb_fail(nb, err, errlen, ret, "create tap %s (/dev/net/tun)", nb->tap);
        ret = nb_link_up(nb->tap);
        if (ret < 0)
                return nb_fail(nb, err, errlen, ret, "set tap %s up", nb->tap);
        if (nb->bridge[0]) {
                ret = nb_bridge_add(nb->bridge, nb->tap);
                if (ret < 0)
                        return nb_fail(nb, err, errlen, ret, "add tap %s to bridge %s",
                                       nb->tap, nb->bridge);
        }
        if (!nb->qemu_listens) {
                ret = listen_unix(nb, err, errlen);
                if (ret < 0)
                        return ret;
        }
        r->ep_fd = epoll_create1(EPOLL_CLOEXEC);
        r->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (r->ep_fd < 0 || r->stop_fd < 0)
                return nb_fail(nb, err, errlen, -errno, "epoll/eventfd");
        ret = ep_add(r, r->stop_fd, EPOLLIN, TAG_STOP);
        if (ret == 0 && r->listen_fd >= 0)
                ret = ep_add(r, r->listen_fd, EPOLLIN, TAG_LISTEN);
        if (ret == 0)
                ret = ep_add(r, r->tap_fd, EPOLLIN, TAG_TAP);
        if (ret < 0)
                return nb_fail(nb, err, errlen, ret, "epoll_ctl");
        ret = -pthread_create(&r->thread, NULL, relay_main, nb);
        if (ret < 0)
                return nb_fail(nb, err, errlen, ret, "start the relay thread");
        r->thread_started = true;
        pthread_setname_np(r->thread, "netbuf-relay");
        return 0;
}

static int relay_open(struct netbuf *nb, char *err, size_t errlen)
{
        struct relay *r;
        int ret;

        r = calloc(1, sizeof(*r));
        if (!r)
                return -ENOMEM;
        r->listen_fd = r->qemu_fd = r->tap_fd = r->ep_fd = r->stop_fd = -1;
        nb->priv = r;
        r->rbuf = malloc(RBUF_CAP);
        r->wbuf = malloc(4 + NB_FRAME_MAX);
        r->tbuf = malloc(NB_FRAME_MAX);
        if (!r->rbuf || !r->wbuf || !r->tbuf) {
                ret = nb_fail(nb, err, errlen, -ENOMEM, "relay buffers");
                goto fail;
        }
        nb->resume = relay_resume;
        nb->emit = tap_send;
        if (nb->qemu_listens)
                nb->attach = relay_attach;
        ret = relay_setup(nb, err, errlen);
        if (ret < 0)
                goto fail;
        return 0;
fail:
        relay_close(nb);
        return ret;
}

static int relay_qemu_netdev(const struct netbuf *nb, char *buf, size_t len)
{
        const char *prefix = nb->qemu_listens ? "stream,server=on,addr.type=unix,addr.path="
                                              : "stream,server=off,addr.type=unix,addr.path=";
        size_t o = strlen(prefix);

        if (len <= o)
                return -ENOSPC;
        memcpy(buf, prefix, o);
        /* QEMU's option syntax: a comma in a value is written twice. */
        for (const char *p = nb->socket_path; *p; p++) {
                if (o + 2 >= len)
                        return -ENOSPC;
                if (*p == ',')
                        buf[o++] = ',';
                buf[o++] = *p;
        }
        buf[o] = '\0';
        return 0;
}

static int relay_barrier(struct netbuf *nb, uint64_t epoch)
{
        int ret;

        pthread_mutex_lock(&nb->lock);
        /* The VM is stopped: whatever QEMU wrote is in the socket now. */
        qemu_pull(nb, 0);
        ret = nbq_cut(nb, epoch);
        pthread_mutex_unlock(&nb->lock);
        return ret;
}

static int relay_release(struct netbuf *nb, uint64_t epoch)
{
        pthread_mutex_lock(&nb->lock);
        nbq_release(nb, epoch, false, tap_send);
        pthread_mutex_unlock(&nb->lock);
        return 0;
}

static void relay_set_buffering(struct netbuf *nb, bool on)
{
        pthread_mutex_lock(&nb->lock);
        nb->buffering = on;
        /* Held frames go first, then (through resume) a frame that was
         * waiting for room: the order on the wire is the guest's. */
        if (!on)
                nbq_release(nb, 0, true, tap_send);
        if (!on && nb->blocked)
                relay_resume(nb);
        pthread_mutex_unlock(&nb->lock);
}

const struct netbuf_ops netbuf_relay_ops = {
        .name = "relay",
        .open = relay_open,
        .close = relay_close,
        .qemu_netdev = relay_qemu_netdev,
        .barrier = relay_barrier,
        .release = relay_release,
        .set_buffering = relay_set_buffering,
};
