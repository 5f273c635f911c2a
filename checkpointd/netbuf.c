/* netbuf: the public entry points, the epoch queues the user-space backend
 * holds frames in, and the tap helpers both backends use. Dispatches to
 * the backend's ops (netbuf_relay.c, netbuf_plug.c). See netbuf.h,
 * netbuf_int.h and docs/netbuf.md.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "netbuf_int.h"
#include "util.h"

/* The lock guards state that const accessors only read. */
static void lock_c(const struct netbuf *nb)
{
        pthread_mutex_lock((pthread_mutex_t *)&nb->lock);
}

static void unlock_c(const struct netbuf *nb)
{
        pthread_mutex_unlock((pthread_mutex_t *)&nb->lock);
}

static void queue_init(struct nb_queue *q)
{
        memset(q, 0, sizeof(*q));
        q->tail = &q->head;
}

/* ---- queues ---- */

void nb_notify(struct netbuf *nb)
{
        uint64_t one = 1;
        ssize_t n;

        /* Fails only when the counter would overflow: it is readable then
         * anyway. */
        n = write(nb->event_fd, &one, sizeof(one));
        (void)n;
}

int nbq_push(struct netbuf *nb, const uint8_t *data, size_t len)
{
        struct nb_frame *f;

        /* Could never fit: holding it back would stall the NIC for good. */
        if (len > nb->max_bytes) {
                nb->st.frames_dropped++;
                return 0;
        }
        if (nb->st.held_bytes + len > nb->max_bytes) {
                if (!nb->blocked) {
                        nb->blocked = true;
                        nb_notify(nb);
                }
                return -ENOBUFS;
        }
        f = malloc(sizeof(*f) + len);
        if (!f) {
                /* Losing a frame is what a congested link does; releasing
                 * it unprotected would not be. */
                nb->st.frames_dropped++;
                return 0;
        }
        f->next = NULL;
        f->len = (uint32_t)len;
        memcpy(f->data, data, len);
        *nb->open.tail = f;
        nb->open.tail = &f->next;
        nb->open.bytes += len;
        if (nb->open.frames++ == 0)
                nb->open.first_ns = now_ns();
        nb->st.held_bytes += len;
        nb->st.held_frames++;
        if (nb->st.held_bytes > nb->st.held_bytes_max)
                nb->st.held_bytes_max = nb->st.held_bytes;
        /* Adaptive epochs: output is waiting for the next checkpoint. */
        if (nb->open.frames == 1 || nb->st.held_bytes >= nb->max_bytes)
                nb_notify(nb);
        return 0;
}

int nbq_cut(struct netbuf *nb, uint64_t epoch)
{
        struct nb_queue *q;

        if (nb->cut_any && epoch <= nb->last_cut)
                return -EINVAL;
        if (nb->open.frames) {
                q = malloc(sizeof(*q));
                if (!q)
                        return -ENOMEM;
                /* open.tail points into the last frame (the queue is not
                 * empty), so the copy's tail stays valid. */
                *q = nb->open;
                q->epoch = epoch;
                q->next = NULL;
                *nb->closed_tail = q;
                nb->closed_tail = &q->next;
                queue_init(&nb->open);
        }
        nb->cut_any = true;
        nb->last_cut = epoch;
        return 0;
}

/* Send (sink) or drop (NULL) every frame of q; q's frames are freed. */
static void queue_flush(struct netbuf *nb, struct nb_queue *q, nb_sink_fn *sink)
{
        struct nb_frame *f, *next;

        for (f = q->head; f; f = next) {
                next = f->next;
                if (sink)
                        sink(nb, f->data, f->len);
                nb->st.held_bytes -= f->len;
                nb->st.held_frames--;
                free(f);
        }
        queue_init(q);
}

void nbq_release(struct netbuf *nb, uint64_t epoch, bool all, nb_sink_fn *sink)
{
        uint64_t before = nb->st.held_bytes;
        struct nb_queue *q;

        while ((q = nb->closed) && (all || q->epoch <= epoch)) {
                nb->closed = q->next;
                if (!nb->closed)
                        nb->closed_tail = &nb->closed;
                queue_flush(nb, q, sink);
                free(q);
        }
        if (all)
                queue_flush(nb, &nb->open, sink);
        if (nb->blocked && nb->st.held_bytes < before && nb->resume)
                nb->resume(nb);
}

void nbq_drop_all(struct netbuf *nb)
{
        uint64_t frames = nb->st.held_frames;

        while (nb->closed) {
                struct nb_queue *q = nb->closed;

                nb->closed = q->next;
                queue_flush(nb, q, NULL);
                free(q);
        }
        nb->closed_tail = &nb->closed;
        queue_flush(nb, &nb->open, NULL);
        nb->st.frames_dropped += frames;
}

/* ---- helpers for backends ---- */

static void vfail(const struct netbuf *nb, char *err, size_t errlen, int r,
                  const char *fmt, va_list ap)
{
        char what[256];

        if (!err || !errlen)
                return;
        vsnprintf(what, sizeof(what), fmt, ap);
        if (r)
                snprintf(err, errlen, "netbuf vm=%s nic=%u: %s: %s", nb->vm, nb->nic, what,
                         strerror(-r));
        else
                snprintf(err, errlen, "netbuf vm=%s nic=%u: %s", nb->vm, nb->nic, what);
}

int nb_fail(const struct netbuf *nb, char *err, size_t errlen, int r,
            const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        vfail(nb, err, errlen, r, fmt, ap);
        va_end(ap);
        return r;
}

int nb_refuse(const struct netbuf *nb, char *err, size_t errlen, int r,
              const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        vfail(nb, err, errlen, 0, fmt, ap);
        va_end(ap);
        return r;
}

int nb_tap_create(const char *name, bool persist, int *ret_fd)
{
        struct ifreq ifr = { 0 };
        int fd, r;

        fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
        if (fd < 0)
                return -errno;
        ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
        snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
        if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
                r = -errno;
                goto out;
        }
        if (persist) {
                if (ioctl(fd, TUNSETPERSIST, 1) < 0) {
                        r = -errno;
                        goto out;
                }
                /* QEMU attaches itself: a single-queue tap takes one fd. */
                close(fd);
                fd = -1;
        }
        *ret_fd = fd;
        return 0;
out:
        close(fd);
        return r;
}

int nb_link_up(const char *name)
{
        struct ifreq ifr = { 0 };
        int s, r = 0;

        s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (s < 0)
                return -errno;
        snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
        if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) {
                r = -errno;
                goto out;
        }
        ifr.ifr_flags |= IFF_UP;
        if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
                r = -errno;
out:
        close(s);
        return r;
}

int nb_bridge_add(const char *bridge, const char *name)
{
        struct ifreq ifr = { 0 };
        int s, r = 0;

        ifr.ifr_ifindex = (int)if_nametoindex(name);
        if (!ifr.ifr_ifindex)
                return -errno;
        s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (s < 0)
                return -errno;
        snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", bridge);
        if (ioctl(s, SIOCBRADDIF, &ifr) < 0)
                r = -errno;
        close(s);
        return r;
}

/* ---- public entry points ---- */

static const struct netbuf_ops *ops_for(enum netbuf_backend b)
{
        switch (b) {
        case NETBUF_RELAY:
                return &netbuf_relay_ops;
        case NETBUF_PLUG:
                return &netbuf_plug_ops;
        }
        return NULL;
}

/* Copy src into dst of size n; -ENAMETOOLONG if it does not fit. */
static int copy_name(char *dst, size_t n, const char *src)
{
        if (!src)
                src = "";
        if (strlen(src) >= n)
                return -ENAMETOOLONG;
        memcpy(dst, src, strlen(src) + 1);
        return 0;
}

static int copy_options(struct netbuf *nb, const struct netbuf_options *o,
                        char *err, size_t errlen)
{
        snprintf(nb->vm, sizeof(nb->vm), "%s", o->vm ? o->vm : "?");
        nb->nic = o->nic;
        nb->max_bytes = o->max_bytes;
        nb->qemu_listens = o->qemu_listens;
        if (!o->tap || !o->tap[0] || copy_name(nb->tap, sizeof(nb->tap), o->tap) < 0)
                return nb_fail(nb, err, errlen, -EINVAL,
                               "tap name \"%s\" must have 1 to %zu characters",
                               o->tap ? o->tap : "", sizeof(nb->tap) - 1);
        if (copy_name(nb->bridge, sizeof(nb->bridge), o->bridge) < 0)
                return nb_fail(nb, err, errlen, -EINVAL, "bridge name \"%s\" is too long",
                               o->bridge);
        if (copy_name(nb->socket_path, sizeof(nb->socket_path), o->socket_path) < 0)
                return nb_fail(nb, err, errlen, -ENAMETOOLONG,
                               "socket path \"%s\" is longer than %zu bytes",
                               o->socket_path, sizeof(nb->socket_path) - 1);
        if (!o->max_bytes)
                return nb_fail(nb, err, errlen, -EINVAL, "max_bytes must not be 0");
        return 0;
}

int netbuf_open(const struct netbuf_options *o, struct netbuf **ret,
                char *err, size_t errlen)
{
        struct netbuf *nb;
        int r;

        if (err && errlen)
                err[0] = '\0';
        nb = calloc(1, sizeof(*nb));
        if (!nb)
                return -ENOMEM;
        nb->event_fd = -1;
        pthread_mutex_init(&nb->lock, NULL);
        queue_init(&nb->open);
        nb->closed_tail = &nb->closed;
        r = copy_options(nb, o, err, errlen);
        if (r < 0)
                goto fail;
        nb->ops = ops_for(o->backend);
        if (!nb->ops) {
                r = nb_fail(nb, err, errlen, -EINVAL, "unknown backend %d", (int)o->backend);
                goto fail;
        }
        nb->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (nb->event_fd < 0) {
                r = nb_fail(nb, err, errlen, -errno, "eventfd");
                goto fail;
        }
        r = nb->ops->open(nb, err, errlen);
        if (r < 0)
                goto fail;
        *ret = nb;
        return 0;
fail:
        if (nb->event_fd >= 0)
                close(nb->event_fd);
        pthread_mutex_destroy(&nb->lock);
        free(nb);
        return r;
}

void netbuf_close(struct netbuf *nb)
{
        if (!nb)
                return;
        nb->ops->close(nb);
        nbq_drop_all(nb);
        close(nb->event_fd);
        pthread_mutex_destroy(&nb->lock);
        free(nb);
}

int netbuf_qemu_netdev(const struct netbuf *nb, char *buf, size_t len)
{
        return nb->ops->qemu_netdev(nb, buf, len);
}

int netbuf_attach(struct netbuf *nb, char *err, size_t errlen)
{
        return nb->attach ? nb->attach(nb, err, errlen) : 0;
}

void netbuf_set_buffering(struct netbuf *nb, bool on)
{
        nb->ops->set_buffering(nb, on);
}

int netbuf_barrier(struct netbuf *nb, uint64_t epoch)
{
        return nb->ops->barrier(nb, epoch);
}

int netbuf_release(struct netbuf *nb, uint64_t epoch)
{
        return nb->ops->release(nb, epoch);
}

int netbuf_take(struct netbuf *nb, uint64_t epoch, uint8_t **ret_buf, size_t *ret_len)
{
        *ret_buf = NULL;
        *ret_len = 0;
        pthread_mutex_lock(&nb->lock);
        if (!nb->emit) {
                pthread_mutex_unlock(&nb->lock);
                return -EOPNOTSUPP;
        }
        size_t need = 0;
        for (struct nb_queue *q = nb->closed; q && q->epoch <= epoch; q = q->next)
                need += q->bytes + NETBUF_FRAME_HDR * q->frames;
        uint8_t *buf = need ? malloc(need) : NULL;
        if (need && !buf) {
                pthread_mutex_unlock(&nb->lock);
                return -ENOMEM;
        }
        size_t off = 0;
        uint64_t before = nb->st.held_bytes;
        struct nb_queue *q;
        while ((q = nb->closed) && q->epoch <= epoch) {
                for (struct nb_frame *f = q->head; f; f = f->next) {
                        for (unsigned b = 0; b < NETBUF_FRAME_HDR; b++)
                                buf[off + b] = (uint8_t)(f->len >> (8 * b));
                        memcpy(buf + off + NETBUF_FRAME_HDR, f->data, f->len);
                        off += NETBUF_FRAME_HDR + f->len;
                }
                nb->closed = q->next;
                if (!nb->closed)
                        nb->closed_tail = &nb->closed;
                queue_flush(nb, q, NULL); /* frees and uncounts: they leave elsewhere */
                free(q);
        }
        if (nb->blocked && nb->st.held_bytes < before && nb->resume)
                nb->resume(nb);
        pthread_mutex_unlock(&nb->lock);
        *ret_buf = buf;
        *ret_len = off;
        return 0;
}

uint32_t netbuf_frame_len(const uint8_t *rec)
{
        return (uint32_t)rec[0] | (uint32_t)rec[1] << 8 | (uint32_t)rec[2] << 16 |
               (uint32_t)rec[3] << 24;
}

int netbuf_emit(struct netbuf *nb, const uint8_t *buf, size_t len)
{
        /* check the whole buffer first: all or nothing */
        for (size_t off = 0; off < len;) {
                if (len - off < NETBUF_FRAME_HDR)
                        return -EBADMSG;
                uint32_t fl = netbuf_frame_len(buf + off);
                if (fl < NB_FRAME_MIN || fl > NB_FRAME_MAX || fl > len - off - NETBUF_FRAME_HDR)
                        return -EBADMSG;
                off += NETBUF_FRAME_HDR + fl;
        }
        pthread_mutex_lock(&nb->lock);
        if (!nb->emit) {
                pthread_mutex_unlock(&nb->lock);
                return -EOPNOTSUPP;
        }
        for (size_t off = 0; off < len;) {
                uint32_t fl = netbuf_frame_len(buf + off);
                nb->emit(nb, buf + off + NETBUF_FRAME_HDR, fl);
                off += NETBUF_FRAME_HDR + fl;
        }
        pthread_mutex_unlock(&nb->lock);
        return 0;
}

void netbuf_discard(struct netbuf *nb)
{
        if (nb->discard) {
                nb->discard(nb);
                return;
        }
        pthread_mutex_lock(&nb->lock);
        nbq_drop_all(nb);
        if (nb->blocked && nb->resume)
                nb->resume(nb);
        pthread_mutex_unlock(&nb->lock);
}

int netbuf_event_fd(const struct netbuf *nb)
{
        return nb->event_fd;
}

bool netbuf_output_waiting(const struct netbuf *nb)
{
        bool r;

        lock_c(nb);
        r = nb->open.frames > 0;
        unlock_c(nb);
        return r;
}

uint64_t netbuf_waiting_since(const struct netbuf *nb)
{
        uint64_t r;

        lock_c(nb);
        r = nb->open.frames > 0 ? nb->open.first_ns : 0;
        unlock_c(nb);
        return r;
}

bool netbuf_full(const struct netbuf *nb)
{
        bool r;

        lock_c(nb);
        r = nb->blocked || nb->st.held_bytes >= nb->max_bytes;
        unlock_c(nb);
        return r;
}

void netbuf_get_stats(const struct netbuf *nb, struct netbuf_stats *ret)
{
        struct netbuf_stats st;

        lock_c(nb);
        st = nb->st;
        unlock_c(nb);
        if (nb->stats)
                nb->stats(nb, &st);
        *ret = st;
}
