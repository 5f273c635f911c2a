/* netbuf internals: the state netbuf.c shares with its backends
 * (netbuf_relay.c, netbuf_plug.c). Not for other modules.
 *
 * Owns: the epoch queues of held guest frames (user-space backends), the
 * eventfd, the counters, and the helpers both backends need to make a tap.
 * The queues and everything marked "lock" are guarded by nb->lock; a
 * backend's own thread and the VM's thread both take it.
 *
 *   guest frame --push--> open queue        (epoch not known yet)
 *   barrier(N)  --cut---> closed N -> closed N+1 -> ...   (ascending)
 *   release(N)  ---------> every closed queue <= N goes to the sink, in order
 *
 * A queue is a singly linked list of frames; closed queues form a list in
 * ascending epoch order, so release pops from the head.
 */
#pragma once
#include <net/if.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/un.h>

#include "netbuf.h"

/* Largest Ethernet frame accepted from QEMU: QEMU's own NET_BUFSIZE
 * (64 KiB of GSO payload + headroom). A length prefix above this, or
 * below an Ethernet header, means the stream is corrupt. */
#define NB_FRAME_MAX (4096u + 65536u)
#define NB_FRAME_MIN 14u

struct nb_frame {
        struct nb_frame *next;
        uint32_t len;
        uint8_t data[];
};

struct nb_queue {
        struct nb_queue *next;  /* next closed queue (higher epoch) */
        uint64_t epoch;         /* set when cut */
        struct nb_frame *head, **tail;
        uint64_t bytes, frames;
        uint64_t first_ns;      /* monotonic: when its first frame came in */
};

/* Sends one released frame toward the LAN; counts it (lock held). */
typedef void nb_sink_fn(struct netbuf *nb, const uint8_t *data, size_t len);

struct netbuf {
        const struct netbuf_ops *ops;
        void *priv;                     /* backend state */

        /* options, copied at open */
        char vm[64];
        unsigned nic;
        char tap[IFNAMSIZ];
        char bridge[IFNAMSIZ];
        char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
        uint64_t max_bytes;
        bool qemu_listens;              /* relay: QEMU is the listening side */

        int event_fd;                   /* see netbuf_event_fd() */

        pthread_mutex_t lock;
        bool buffering;                 /* lock */
        /* lock: the backend holds a frame it may not queue without going
         * over max_bytes, and stopped taking frames from QEMU. */
        bool blocked;
        struct nb_queue open;           /* lock: the un-cut epoch */
        struct nb_queue *closed;        /* lock: ascending epochs */
        struct nb_queue **closed_tail;  /* lock */
        bool cut_any;                   /* lock: last_cut is valid */
        uint64_t last_cut;              /* lock */
        struct netbuf_stats st;         /* lock */

        /* Backend hooks outside struct netbuf_ops (which is the public
         * contract): each may be NULL. */
        /* lock held: room was freed while blocked; take frames again. */
        void (*resume)(struct netbuf *nb);
        /* replaces the common discard (the plug backend's queue is in the
         * kernel). Called without the lock. */
        void (*discard)(struct netbuf *nb);
        /* connect to a listening QEMU (relay with qemu_listens). Without
         * the lock. */
        int (*attach)(struct netbuf *nb, char *err, size_t errlen);
        /* fills the counters that live in the kernel (plug). Without the
         * lock; *st holds the common counters on entry. */
        void (*stats)(const struct netbuf *nb, struct netbuf_stats *st);
        /* lock held: sends one frame toward the LAN now (the backend's
         * sink), for netbuf_emit; NULL where frames live in the kernel. */
        nb_sink_fn *emit;
};

extern const struct netbuf_ops netbuf_relay_ops;
extern const struct netbuf_ops netbuf_plug_ops;

/* ---- queues (netbuf.c); all with nb->lock held ---- */

/* Queue a guest frame in the open epoch. 0: the frame was taken (queued,
 * or dropped and counted: when it is larger than max_bytes and so could
 * never fit, or when memory is short). -ENOBUFS: it does not fit under
 * max_bytes now; nb->blocked is set and the eventfd fired; the caller
 * keeps the frame and offers it again from resume(). */
int nbq_push(struct netbuf *nb, const uint8_t *data, size_t len);
/* Close the open queue as `epoch` (must be above the last cut). */
int nbq_cut(struct netbuf *nb, uint64_t epoch);
/* Send closed queues with epoch <= `epoch` to sink, in order; with all,
 * every closed queue and then the open one. Calls nb->resume when room
 * was freed while blocked. */
void nbq_release(struct netbuf *nb, uint64_t epoch, bool all, nb_sink_fn *sink);
/* Free every held frame unsent. */
void nbq_drop_all(struct netbuf *nb);

/* Signal the eventfd (adaptive epochs, full). */
void nb_notify(struct netbuf *nb);

/* ---- helpers for backends (netbuf.c) ---- */

/* Open a tap named name (IFF_TAP|IFF_NO_PI). With persist the device
 * outlives the fd (TUNSETPERSIST) and the fd is closed: ret_fd is -1. */
int nb_tap_create(const char *name, bool persist, int *ret_fd);
/* Set the interface up. */
int nb_link_up(const char *name);
/* Make name a port of bridge (SIOCBRADDIF). */
int nb_bridge_add(const char *bridge, const char *name);
/* The common failure text: "netbuf vm=X nic=N: what: strerror(-r)".
 * Returns r. */
int nb_fail(const struct netbuf *nb, char *err, size_t errlen, int r,
            const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* The same without the errno text, for a sentence that says it all (a
 * missing kernel feature). Returns r. */
int nb_refuse(const struct netbuf *nb, char *err, size_t errlen, int r,
              const char *fmt, ...) __attribute__((format(printf, 5, 6)));
