/* netbuf: output commit for one VM NIC. Frames the guest sends are held per
 * epoch and released only when the standby has committed that epoch; frames
 * to the guest pass at once (docs/output-commit.md).
 *
 *   guest NIC --QEMU--> [backend] --epoch queues--> release on ACK --> LAN
 *
 * Backends (struct netbuf_ops):
 *   relay  user-space frame relay: QEMU's NIC is a `-netdev stream` client of
 *          a unix socket this module listens on; a thread relays between it
 *          and a tap on the host bridge. Works on every kernel. Default.
 *   plug   kernel sch_plug qdisc (libnl-route-3) on an ifb that receives the
 *          tap's ingress; QEMU uses the tap directly. Detected at open; a
 *          clear error names what is missing.
 *
 * Owns: the tap (created, joined to the bridge, removed on close), the
 * QEMU socket, the queues. Does not own: epoch numbering, ACKs, QEMU.
 *
 * Thread safety: all functions may be called from the VM's thread while the
 * backend's own thread runs; netbuf_barrier() must be called with the VM
 * stopped.
 */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct netbuf;

enum netbuf_backend {
        NETBUF_RELAY = 0,
        NETBUF_PLUG = 1,
};

struct netbuf_options {
        const char *vm;           /* for messages */
        unsigned nic;             /* index, for messages */
        const char *tap;          /* tap name to create, e.g. "hv-web01-0" */
        const char *bridge;       /* bridge to join; "" = leave the tap alone */
        const char *socket_path;  /* relay: the unix socket between QEMU and the relay */
        /* relay: who listens on socket_path. false: the relay listens and
         * QEMU connects (-netdev stream,server=off). true: QEMU listens
         * (server=on) and the relay connects with netbuf_attach(): QEMU
         * accepts again after a relay went away, so a relay opened by a
         * restarted checkpointd reaches a QEMU that kept running
         * (docs/checkpoint.md, "Restart of checkpointd"). */
        bool qemu_listens;
        uint64_t max_bytes;       /* bound on held output (all epochs) */
        enum netbuf_backend backend;
};

int netbuf_open(const struct netbuf_options *o, struct netbuf **ret,
                char *err, size_t errlen);
void netbuf_close(struct netbuf *nb); /* NULL ok; removes the tap */

/* The -netdev argument QEMU needs, without "id=" (e.g.
 * "stream,server=off,addr.type=unix,addr.path=/run/..." or
 * "tap,ifname=hv-web01-0,script=no,downscript=no"). */
int netbuf_qemu_netdev(const struct netbuf *nb, char *buf, size_t len);

/* Relay with qemu_listens: connect to QEMU's socket (QEMU must be up:
 * it creates the socket before its monitor answers). 0 at once for a
 * backend that needs no connection (plug) or one that is connected;
 * -ECONNREFUSED/-ENOENT while QEMU does not listen. A connection that
 * breaks later is not retried: the QEMU behind it is gone. */
int netbuf_attach(struct netbuf *nb, char *err, size_t errlen);

/* Buffering on: guest frames are queued in the open epoch. Off (the
 * default, and whenever the VM is unprotected): they pass at once, and
 * whatever is queued is released first, in order. */
void netbuf_set_buffering(struct netbuf *nb, bool on);

/* With the VM stopped: take in every frame QEMU has already handed over,
 * then close the open queue as `epoch` and open a new one. A frame that is
 * still inside QEMU lands in the next epoch: held too long, never released
 * too early. */
int netbuf_barrier(struct netbuf *nb, uint64_t epoch);

/* The standby committed `epoch`: send the queues of every epoch <= epoch. */
int netbuf_release(struct netbuf *nb, uint64_t epoch);

/* Switchover (docs/failback.md): the frames of every closed epoch <=
 * epoch, taken out unsent, as (u32 little-endian length, frame) records in
 * a malloc'd buffer (*ret_buf NULL and *ret_len 0 when there are none).
 * The new primary sends them with netbuf_emit, so the world learns the
 * guest's new place from its own output. -EOPNOTSUPP where the frames
 * are held in the kernel (plug): release them here instead. */
int netbuf_take(struct netbuf *nb, uint64_t epoch, uint8_t **ret_buf, size_t *ret_len);
#define NETBUF_FRAME_HDR 4 /* the length before each frame of such a buffer */
uint32_t netbuf_frame_len(const uint8_t *rec); /* that length (little-endian) */
/* Send such records toward the LAN now, in order (also while buffering:
 * they belong to a committed epoch). -EBADMSG for a malformed buffer
 * (nothing sent), -EOPNOTSUPP without a user-space sink. */
int netbuf_emit(struct netbuf *nb, const uint8_t *buf, size_t len);

/* Drop every held frame without sending it (never needed for safety; used
 * when protection is dropped with on_buffer_full=release? no: release
 * sends. Used when the VM is destroyed). */
void netbuf_discard(struct netbuf *nb);

/* eventfd, readable when (a) a guest frame entered the open (un-cut) epoch
 * while it was empty — the primary may checkpoint early (adaptive epochs) —
 * or (b) the held bytes reached max_bytes. Read it to re-arm. */
int netbuf_event_fd(const struct netbuf *nb);
bool netbuf_output_waiting(const struct netbuf *nb); /* open epoch non-empty */
/* When the open epoch's first frame came in (monotonic ns, now_ns());
 * 0 when it is empty. For the latency breakdown (docs/output-commit.md). */
uint64_t netbuf_waiting_since(const struct netbuf *nb);
bool netbuf_full(const struct netbuf *nb);           /* held >= max_bytes */

struct netbuf_stats {
        uint64_t frames_out, bytes_out;     /* guest -> LAN, released */
        uint64_t frames_in, bytes_in;       /* LAN -> guest */
        uint64_t frames_dropped;            /* to a guest that is not reading, or full */
        uint64_t held_bytes, held_frames;   /* now */
        uint64_t held_bytes_max;            /* high-water mark */
};
void netbuf_get_stats(const struct netbuf *nb, struct netbuf_stats *ret);

/* Backend interface (netbuf.c dispatches; one file per backend). */
struct netbuf_ops {
        const char *name;
        int (*open)(struct netbuf *nb, char *err, size_t errlen);
        void (*close)(struct netbuf *nb);
        int (*qemu_netdev)(const struct netbuf *nb, char *buf, size_t len);
        int (*barrier)(struct netbuf *nb, uint64_t epoch);
        int (*release)(struct netbuf *nb, uint64_t epoch);
        void (*set_buffering)(struct netbuf *nb, bool on);
};
