/* backup: the standby side of a protected VM, and its activation.
 *
 * Owns: the replica (guest RAM file mapped read-write, the last committed
 * device state, the disk images through disks.c), the staging area of the
 * epoch in flight (pages, device state, disk writes), the hot-standby
 * QEMU (started paused with -incoming defer on the replica once the first
 * epoch is committed), and activation.
 *
 * The replica only ever changes at an epoch commit: a whole epoch is
 * received, every record verified (wire.c) and every page decoded into the
 * staging area first; only after EPOCH_END checks out are the staged pages
 * copied into the replica. The disk writes of the epoch are applied first
 * (the one step that can fail: an I/O error there leaves the replica
 * unusable, and says so), then the pages, which cannot fail. A corrupt, truncated or
 * missing record drops the connection and the staging area, never the
 * replica. The ACK is sent after the copy: what it acknowledges is in the
 * replica. The committed device state is also written next to the
 * replica RAM (persist.h), so a checkpointd that crashed and restarted
 * still holds an activatable replica (backup_adopt); both live in tmpfs
 * and vanish with the host.
 *
 * Generations (fencing tokens): a HELLO carries the primary's; one older
 * than what this host has seen is refused (STALE), otherwise it is
 * persisted here before the WELCOME. Activation takes a newer one.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "adopt.h"
#include "codec.h"
#include "daemon.h"
#include "disks.h"
#include "log.h"
#include "msgid.h"
#include "persist.h"
#include "util.h"
#include "wire.h"

#define HELLO_TIMEOUT_MS 5000
#define DEVSTATE_MAX (256u << 20)

struct backup_replica {
        int ram_fd;
        uint8_t *ram;
        uint64_t npages;
        bool valid;              /* holds a committed epoch */
        uint8_t *devstate;       /* committed device state */
        size_t devstate_len, devstate_cap;
        /* the epoch being received */
        uint64_t st_epoch;
        uint32_t *st_pfn;
        uint8_t *st_pages;
        size_t st_n, st_cap;
        uint8_t *st_dev;
        size_t st_dev_len, st_dev_cap;
        uint8_t *seen;           /* bitmap: pfn staged in this epoch */
        uint8_t *again;          /* bitmap: pfn staged twice in this epoch */
        uint32_t *st_slot;       /* npages: a seen pfn's slot in st_pages */
        uint64_t st_records;     /* page records of this epoch, repeats included */
        struct disk_replica disks; /* images + staged writes, opened per HELLO */
        bool seeded;             /* the RAM file held content when opened (or a replica was
                                    kept from an earlier session): worth hashing */
        /* switchover: the primary's committed, unsent output of the last
         * epoch (NET_FRAMES), per NIC; sent by activate before the VM runs */
        uint8_t *out_frames[WIRE_MAX_NICS];
        size_t out_len[WIRE_MAX_NICS];
};

static void drop_out_frames(struct backup_replica *b)
{
        for (unsigned i = 0; i < WIRE_MAX_NICS; i++) {
                free(b->out_frames[i]);
                b->out_frames[i] = NULL;
                b->out_len[i] = 0;
        }
}

/* NET_FRAMES, between epochs only (a handover follows): kept, bounded by
 * the NIC's output buffer size. */
static int take_out_frames(struct backup_replica *b, const struct wire_msg *m, uint64_t limit)
{
        struct wire_net_frames f;
        if (wire_get_net_frames(m, &f) < 0)
                return -EBADMSG;
        if (b->out_len[f.nic] + f.len > limit)
                return -EPROTO;
        uint8_t *n = realloc(b->out_frames[f.nic], b->out_len[f.nic] + f.len);
        if (!n)
                return -ENOMEM;
        memcpy(n + b->out_len[f.nic], f.frames, f.len);
        b->out_frames[f.nic] = n;
        b->out_len[f.nic] += f.len;
        return 0;
}

static void replica_free(struct backup_replica *b)
{
        if (!b)
                return;
        if (b->ram)
                munmap(b->ram, b->npages * HAVMS_PAGE_SIZE);
        if (b->ram_fd >= 0)
                close(b->ram_fd);
        drop_out_frames(b);
        free(b->devstate);
        free(b->st_pfn);
        free(b->st_pages);
        free(b->st_dev);
        free(b->seen);
        free(b->st_slot);
        free(b->again);
        disk_replica_close(&b->disks);
        free(b);
}

static int replica_open(const struct host_config *h, const struct vm_config *c,
                        struct backup_replica **ret)
{
        struct backup_replica *b = calloc(1, sizeof(*b));
        if (!b)
                return -ENOMEM;
        b->ram_fd = -1;
        for (unsigned i = 0; i < CFG_MAX_DISKS; i++)
                b->disks.fd[i] = -1;
        uint64_t bytes = (uint64_t)c->memory_mib << 20;
        b->npages = bytes / HAVMS_PAGE_SIZE;
        char path[CFG_PATH_MAX + 64];
        qemu_ram_path(h, c->name, path, sizeof(path));
        int r = mkdir_p(h->ram_dir, 0700);
        if (r < 0)
                goto fail;
        b->ram_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (b->ram_fd < 0) {
                r = -errno;
                goto fail;
        }
        /* A RAM file of the right size left by an earlier replica or by
         * this host's own run of the VM (a switchover) seeds the re-sync:
         * its page hashes go to the primary, which sends only what differs.
         * Its content does not matter for correctness, only for speed. */
        struct stat st;
        b->seeded = fstat(b->ram_fd, &st) == 0 && (uint64_t)st.st_size == bytes;
        /* Reserve every page now: a tmpfs that fills up later would kill
         * us with SIGBUS in the middle of applying an epoch. */
        if (ftruncate(b->ram_fd, (off_t)bytes) < 0 || fallocate(b->ram_fd, 0, 0, (off_t)bytes) < 0) {
                r = -errno;
                goto fail;
        }
        void *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, b->ram_fd, 0);
        if (m == MAP_FAILED) {
                r = -errno;
                goto fail;
        }
        b->ram = m;
        b->seen = calloc((b->npages + 7) / 8, 1);
        b->st_slot = calloc(b->npages, sizeof(uint32_t));
        b->again = calloc((b->npages + 7) / 8, 1);
        if (!b->seen || !b->st_slot || !b->again) {
                r = -ENOMEM;
                goto fail;
        }
        *ret = b;
        return 0;
fail:
        replica_free(b);
        return r;
}

static void staging_reset(struct backup_replica *b)
{
        for (size_t i = 0; i < b->st_n; i++) {
                b->seen[b->st_pfn[i] / 8] = 0;
                b->again[b->st_pfn[i] / 8] = 0;
        }
        b->st_n = 0;
        b->st_records = 0;
        b->st_dev_len = 0;
        b->st_epoch = 0;
        disk_replica_discard(&b->disks);
}

static int stage_page(struct backup_replica *b, const struct wire_page *pg)
{
        if (pg->pfn >= b->npages)
                return -EBADMSG;
        uint32_t pfn = (uint32_t)pg->pfn;
        if (b->seen[pfn / 8] & (1u << (pfn % 8))) {
                /* Again in this epoch (sent by the primary before the stop, then from the
                 * pause's copy): the last copy wins, and an XOR delta is
                 * against the copy staged so far (docs/wire.md). Decoded in
                 * place: a bad record fails the epoch anyway. A third copy
                 * is not from our encoder. */
                if (b->again[pfn / 8] & (1u << (pfn % 8)))
                        return -EBADMSG;
                b->again[pfn / 8] |= (uint8_t)(1u << (pfn % 8));
                uint8_t *slot = b->st_pages + (size_t)b->st_slot[pfn] * HAVMS_PAGE_SIZE;
                int r = codec_page_decode(pg->enc, pg->data, pg->len, slot, slot);
                if (r == 0)
                        b->st_records++;
                return r;
        }
        if (b->st_n == b->st_cap) {
                size_t cap = b->st_cap ? b->st_cap * 2 : 4096;
                uint32_t *np = realloc(b->st_pfn, cap * sizeof(uint32_t));
                if (!np)
                        return -ENOMEM;
                b->st_pfn = np;
                uint8_t *pp = realloc(b->st_pages, cap * HAVMS_PAGE_SIZE);
                if (!pp)
                        return -ENOMEM;
                b->st_pages = pp;
                b->st_cap = cap;
        }
        uint8_t *dst = b->st_pages + b->st_n * HAVMS_PAGE_SIZE;
        int r = codec_page_decode(pg->enc, pg->data, pg->len,
                                  b->ram + (uint64_t)pfn * HAVMS_PAGE_SIZE, dst);
        if (r < 0)
                return r;
        b->seen[pfn / 8] |= (uint8_t)(1u << (pfn % 8));
        b->st_slot[pfn] = (uint32_t)b->st_n;
        b->st_pfn[b->st_n++] = pfn;
        b->st_records++;
        return 0;
}

static int stage_devstate(struct backup_replica *b, const struct wire_msg *m)
{
        struct wire_devstate d;
        int r = wire_get_devstate(m, &d);
        if (r < 0 || d.offset != b->st_dev_len)
                return -EBADMSG; /* chunks come in order, without gaps */
        size_t need = b->st_dev_len + d.raw_len;
        if (need > DEVSTATE_MAX)
                return -EBADMSG; /* no device state is this large: refuse to hoard */
        if (need > b->st_dev_cap) {
                size_t cap = b->st_dev_cap ? b->st_dev_cap : 1 << 20;
                while (cap < need)
                        cap *= 2;
                uint8_t *nb = realloc(b->st_dev, cap);
                if (!nb)
                        return -ENOMEM;
                b->st_dev = nb;
                b->st_dev_cap = cap;
        }
        /* XOR_LZ4 is a delta against the device state committed on this
         * connection: valid is cleared at every HELLO and set by the first
         * commit, and the primary sends a delta only after an ACK on the
         * same connection. Without one, the primary is broken: refuse the
         * epoch (the committed replica stays as it is; only staging is
         * written, and the committed state is only read). */
        const uint8_t *base = NULL;
        size_t base_len = 0;
        if (d.enc == WIRE_PAGE_XOR_LZ4) {
                if (!b->valid || !b->devstate)
                        return -EPROTO;
                /* bytes past the end of the committed state count as zeros */
                size_t at = d.offset < b->devstate_len ? d.offset : b->devstate_len;
                base = b->devstate + at;
                base_len = b->devstate_len - at;
        }
        r = codec_chunk_decode_delta(d.enc, d.data, d.len, b->st_dev + b->st_dev_len, d.raw_len,
                                     base, base_len);
        if (r < 0)
                return r;
        b->st_dev_len = need;
        return 0;
}

/* Pre-copy pages go straight into the replica: it is not usable yet. */
static int apply_sync_pages(struct backup_replica *b, const struct wire_msg *m)
{
        struct wire_pages_iter it;
        struct wire_page pg;
        int r = wire_pages_iter_init(&it, m);
        while (r == 0 && (r = wire_pages_next(&it, &pg)) == 1) {
                if (pg.pfn >= b->npages)
                        return -EBADMSG;
                uint8_t *dst = b->ram + pg.pfn * HAVMS_PAGE_SIZE;
                r = codec_page_decode(pg.enc, pg.data, pg.len, dst, dst);
        }
        return r;
}

static int stage_pages(struct backup_replica *b, const struct wire_msg *m)
{
        struct wire_pages_iter it;
        struct wire_page pg;
        int r = wire_pages_iter_init(&it, m);
        while (r == 0 && (r = wire_pages_next(&it, &pg)) == 1)
                r = stage_page(b, &pg);
        return r;
}

/* The commit: the only place the replica changes once it is valid. */
static void commit(struct backup_replica *b)
{
        for (size_t i = 0; i < b->st_n; i++)
                memcpy(b->ram + (uint64_t)b->st_pfn[i] * HAVMS_PAGE_SIZE,
                       b->st_pages + i * HAVMS_PAGE_SIZE, HAVMS_PAGE_SIZE);
        uint8_t *t = b->devstate;
        size_t tc = b->devstate_cap;
        b->devstate = b->st_dev;
        b->devstate_cap = b->st_dev_cap;
        b->devstate_len = b->st_dev_len;
        b->st_dev = t;
        b->st_dev_cap = tc;
        b->valid = true;
}

struct session {
        struct daemon *d;
        struct vm *v;
        int fd;
        char primary[WIRE_NAME_LEN];
        struct wire_msg in;
        struct wire_buf out;
        /* The hot-standby QEMU starts in its own thread: the receive loop
         * must keep answering epochs meanwhile (the primary waits at most
         * ack_timeout_ms for each ACK, and a QEMU start on a loaded host
         * can take seconds). end_session joins it before anyone else may
         * touch v->qemu. */
        pthread_t launcher;
        bool launching;
        bool guest_off;          /* the goodbye said the guest powered itself off */
        bool handover;           /* the goodbye was a switchover: keep the replica */
        uint64_t handover_epoch; /* ... of this committed epoch */
        /* the record the session ended on, and the epoch then staged: said
         * in the log of an unexpected or corrupt record */
        uint16_t last_type;
        uint64_t last_epoch, last_st_epoch;
};

static void refuse(int fd, uint32_t code, const char *text)
{
        struct wire_buf b = { 0 };
        if (wire_put_error(&b, code, text) == 0)
                write_full(fd, b.data, b.len, now_ns() + 1000000000ull);
        wire_buf_free(&b);
}

static void *hot_standby_thread(void *arg)
{
        struct session *s = arg;
        struct vm *v = s->v;
        char err[256] = "";
        struct qemu_vm *q = NULL;
        uint64_t t0 = now_ns();
        pthread_mutex_lock(&v->lock);
        bool have = v->qemu != NULL;
        pthread_mutex_unlock(&v->lock);
        if (have)
                return NULL;
        int r = qemu_launch(&s->d->host, &v->cfg, QEMU_START_INCOMING, &q, err, sizeof(err));
        if (r < 0) {
                log_msg(LOG_LVL_ERR, MSG_BK_STANDBY_FAIL, v->name, -1,
                        "hot-standby QEMU did not start: %s (activation will retry)", err);
                return NULL;
        }
        int pid = (int)q->pid;
        pthread_mutex_lock(&v->lock);
        v->qemu = q;
        pthread_mutex_unlock(&v->lock);
        log_msg(LOG_LVL_INFO, MSG_BK_READY, v->name, -1,
                "hot-standby QEMU ready (pid %d, started in %llu ms)", pid,
                (unsigned long long)((now_ns() - t0) / 1000000u));
        return NULL;
}

static void start_hot_standby(struct session *s)
{
        if (s->launching)
                return;
        if (pthread_create(&s->launcher, NULL, hot_standby_thread, s) == 0)
                s->launching = true;
        else
                hot_standby_thread(s); /* no thread: start it here, slower */
}

/* A local disk failure (journal full, I/O error): tell the primary why,
 * then drop the session. */
static int disk_failed(struct session *s, int r, const char *what, bool touched)
{
        char text[256];
        snprintf(text, sizeof(text), "standby %s failed %s: %s", s->d->host.name, what,
                 strerror(-r));
        /* The primary runs on unprotected (it releases its output): this
         * replica must not be activated any more. */
        pthread_mutex_lock(&s->v->lock);
        s->v->replica->valid = false;
        pthread_mutex_unlock(&s->v->lock);
        /* ... nor after a restart of checkpointd: the refusal below lets
         * the primary release output past this replica, so the persisted
         * device state goes BEFORE it is sent (a crash in the drain below
         * would otherwise leave an adoptable replica behind). */
        persist_devstate_drop(&s->d->host, s->v->name);
        log_msg(LOG_LVL_ERR, MSG_BK_DISK_FAILED, s->v->name, (int64_t)s->v->committed_epoch,
                "%s; %s, and the replica is dropped now that the primary runs on without a "
                "standby (its next sync rebuilds it)", text,
                touched ? "the disk images may hold part of the epoch"
                        : "the epoch was refused before it touched the replica");
        refuse(s->fd, r == -ENOSPC ? WIRE_ERR_NOSPACE : WIRE_ERR_INTERNAL, text);
        /* The primary is still sending the epoch: let it read our reason
         * before the connection goes (at most 2 s). */
        drain_until_closed(s->fd, now_ns() + 2000000000ull);
        return r;
}

/* Write the staged device state of `epoch` as this replica's pending one. */
static int persist_commit_begin(struct session *s, uint64_t epoch)
{
        struct vm *v = s->v;
        struct devstate_hdr hdr = {
                .epoch = epoch,
                .config_digest = vm_config_digest(&v->cfg),
                .ram_bytes = v->replica->npages * HAVMS_PAGE_SIZE,
        };
        pthread_mutex_lock(&v->lock);
        hdr.generation = v->generation;
        pthread_mutex_unlock(&v->lock);
        snprintf(hdr.primary, sizeof(hdr.primary), "%s", s->primary);
        return persist_devstate_begin(&s->d->host, v->name, &hdr, v->replica->st_dev,
                                      v->replica->st_dev_len);
}

/* Returns 0 when the primary ended protection, negative errno otherwise. */
static int receive_loop(struct session *s)
{
        struct vm *v = s->v;
        struct backup_replica *b = v->replica;
        uint64_t timeout_ns = (uint64_t)v->cfg.ack_timeout_ms * 1000000u;
        uint64_t t_first = 0; /* the epoch in flight's first record came */
        for (;;) {
                int r = wire_recv(s->fd, now_ns() + timeout_ns, &s->in);
                if (r < 0)
                        return r;
                const struct wire_hdr *h = &s->in.hdr;
                s->last_type = h->type;
                s->last_epoch = h->epoch;
                s->last_st_epoch = b->st_epoch;
                switch (h->type) {
                case WIRE_SYNC_PAGES:
                case WIRE_SYNC_DISK:
                        if (b->valid)
                                return -EPROTO;
                        r = h->type == WIRE_SYNC_PAGES ? apply_sync_pages(b, &s->in)
                                                       : disk_replica_sync(&b->disks, &s->in);
                        if (r < 0 && r != -EBADMSG)
                                return disk_failed(s, r, "writing the initial disk copy", true);
                        break;
                case WIRE_NET_FRAMES:
                        /* committed output of the last epoch, just before a
                         * HANDOVER; nothing of an epoch may come after it */
                        if (!b->valid || b->st_epoch || h->epoch != v->committed_epoch)
                                return -EPROTO;
                        /* twice our own output bound: the primary's may differ */
                        r = take_out_frames(b, &s->in, (uint64_t)v->cfg.netbuf_max_mib << 21);
                        break;
                case WIRE_EPOCH_PAGES:
                case WIRE_EPOCH_DEVSTATE:
                case WIRE_EPOCH_DISK:
                        for (unsigned i = 0; i < WIRE_MAX_NICS; i++)
                                if (b->out_len[i])
                                        return -EPROTO;
                        if (b->st_epoch == 0) {
                                if (h->epoch == 0 || (b->valid && h->epoch != v->committed_epoch + 1))
                                        return -EPROTO;
                                b->st_epoch = h->epoch;
                                t_first = now_ns();
                        } else if (h->epoch != b->st_epoch)
                                return -EPROTO;
                        if (h->type == WIRE_EPOCH_DISK) {
                                r = disk_replica_stage(&b->disks, &s->in);
                                if (r < 0 && r != -EBADMSG)
                                        return disk_failed(s, r, "staging the epoch's disk writes", false);
                                break;
                        }
                        r = h->type == WIRE_EPOCH_PAGES ? stage_pages(b, &s->in)
                                                        : stage_devstate(b, &s->in);
                        if (r == -EPROTO && h->type == WIRE_EPOCH_DEVSTATE)
                                log_msg(LOG_LVL_ERR, MSG_BK_CORRUPT, v->name, (int64_t)h->epoch,
                                        "device-state delta (XOR_LZ4) from primary %s, but no "
                                        "device state was committed on this connection: epoch "
                                        "refused", s->primary);
                        break;
                case WIRE_EPOCH_END: {
                        struct wire_epoch_end e;
                        r = wire_get_epoch_end(&s->in, &e);
                        if (r < 0)
                                break;
                        if (h->epoch == 0 || (b->st_epoch && h->epoch != b->st_epoch) ||
                            (b->valid && h->epoch != v->committed_epoch + 1))
                                return -EPROTO;
                        if (e.pages != b->st_records || e.devstate_bytes != b->st_dev_len ||
                            b->st_dev_len == 0 || e.disk_recs != b->disks.st_recs ||
                            e.disk_bytes != b->disks.st_bytes) {
                                /* which count, for whoever reads the log */
                                log_msg(LOG_LVL_ERR, MSG_BK_CORRUPT, v->name, (int64_t)h->epoch,
                                        "EPOCH_END from primary %s does not match what was staged: "
                                        "pages %llu/%llu, device state %llu/%zu bytes, disk "
                                        "records %llu/%llu, disk bytes %llu/%llu (said/staged)",
                                        s->primary, (unsigned long long)e.pages,
                                        (unsigned long long)b->st_records,
                                        (unsigned long long)e.devstate_bytes, b->st_dev_len,
                                        (unsigned long long)e.disk_recs,
                                        (unsigned long long)b->disks.st_recs,
                                        (unsigned long long)e.disk_bytes,
                                        (unsigned long long)b->disks.st_bytes);
                                return -EPROTO;
                        }
                        bool first = !b->valid;
                        size_t n = b->st_n;
                        /* the device state of this epoch, marked pending, before
                         * the replica changes: a crash from here until it is
                         * marked committed leaves a replica nobody adopts */
                        uint64_t tp = now_ns();
                        struct standby_stat st = { 0 };
                        st.recv_ms = t_first ? (float)(tp - t_first) / 1e6f : 0;
                        r = persist_commit_begin(s, h->epoch);
                        if (r < 0)
                                return disk_failed(s, r, "saving the device state", false);
                        uint64_t td = now_ns();
                        float persist_ms = (float)(td - tp) / 1e6f;
                        /* disks first: the only part of a commit that can fail */
                        r = disk_replica_commit(&b->disks);
                        if (r < 0) /* the images may hold part of the epoch */
                                return disk_failed(s, r, "applying the epoch to the disk images", true);
                        uint64_t tc = now_ns();
                        commit(b);
                        staging_reset(b);
                        t_first = 0;
                        tp = now_ns();
                        st.disk_ms = (float)(tc - td) / 1e6f;
                        st.fsync_ms = (float)b->disks.sync_ns / 1e6f;
                        st.pages_ms = (float)(tp - tc) / 1e6f;
                        r = persist_devstate_commit(&s->d->host, v->name);
                        if (r < 0)
                                return disk_failed(s, r, "saving the device state", true);
                        persist_ms += (float)(now_ns() - tp) / 1e6f;
                        st.persist_ms = persist_ms;
                        pthread_mutex_lock(&v->lock);
                        vm_record_standby(v, &st);
                        v->persist_ms_last = persist_ms;
                        if (persist_ms > v->persist_ms_max)
                                v->persist_ms_max = persist_ms;
                        v->committed_epoch = v->epoch = h->epoch;
                        v->last_commit_wall_ms = wall_ms();
                        v->last_stop_wall_ms = e.stop_wall_ms;
                        vm_set_state(v, VM_BK_STANDBY);
                        pthread_mutex_unlock(&v->lock);
                        struct wire_ack a = { .pages_applied = n };
                        wire_buf_reset(&s->out);
                        r = wire_put_ack(&s->out, h->epoch, &a);
                        if (r == 0)
                                r = write_full(s->fd, s->out.data, s->out.len, now_ns() + timeout_ns);
                        if (r < 0)
                                return r;
                        int rd = first ? disk_replica_sync_done(&b->disks) : 0;
                        if (rd < 0)
                                log_msg(LOG_LVL_WARN, MSG_BK_RESYNC, v->name, (int64_t)h->epoch,
                                        "cannot record the disks' new history (%s): the next "
                                        "resync copies them whole", strerror(-rd));
                        if (first) {
                                log_msg(LOG_LVL_NOTICE, MSG_BK_READY, v->name, (int64_t)h->epoch,
                                        "replica committed; starting the hot-standby QEMU");
                                start_hot_standby(s);
                        }
                        break;
                }
                case WIRE_PING:
                        /* the primary is alive but holds its VM paused */
                        if (h->length != 0 || !b->valid || b->st_epoch ||
                            h->epoch != v->committed_epoch)
                                return -EPROTO;
                        break;
                case WIRE_ERROR: {
                        struct wire_error e;
                        r = wire_get_error(&s->in, &e);
                        if (r == 0 && e.code == WIRE_ERR_HANDOVER) {
                                /* between epochs only, with a committed replica */
                                if (!b->valid || b->st_epoch)
                                        return -EPROTO;
                                s->handover = true;
                                s->handover_epoch = v->committed_epoch;
                                return -ECONNABORTED;
                        }
                        if (r == 0 && e.code == WIRE_ERR_SHUTDOWN) {
                                s->guest_off = !strncmp(e.text, WIRE_SHUTDOWN_GUEST_OFF,
                                                        strlen(WIRE_SHUTDOWN_GUEST_OFF));
                                return 0;
                        }
                        if (r == 0)
                                log_msg(LOG_LVL_WARN, MSG_BK_PRIMARY_LOST, v->name, -1,
                                        "primary %s reported: %s", s->primary, e.text);
                        return -ECONNABORTED;
                }
                default:
                        return -EPROTO;
                }
                if (r < 0)
                        return r == -EPROTO ? r : r == -ENOMEM ? r : -EBADMSG;
        }
}

static void end_session(struct session *s, int r)
{
        struct vm *v = s->v;
        struct backup_replica *b = v->replica;
        staging_reset(b);
        if (!s->handover) /* output for a handover that did not come */
                drop_out_frames(b);
        bool discard = r == 0 || !b->valid;
        if (discard) /* before anyone can see the state: no restart adopts it */
                persist_devstate_drop(&s->d->host, v->name);
        if (r == 0 && s->guest_off)
                log_msg(LOG_LVL_NOTICE, MSG_BK_PEER_OFF, v->name, (int64_t)v->committed_epoch,
                        "the guest powered itself off on primary %s: not a failure; replica "
                        "and hot standby discarded", s->primary);
        else if (r == 0)
                log_msg(LOG_LVL_NOTICE, MSG_BK_DISCARDED, v->name, (int64_t)v->committed_epoch,
                        "primary %s ended protection; replica discarded", s->primary);
        else if (r == -EBADMSG || r == -EPROTO)
                log_msg(LOG_LVL_ERR, MSG_BK_CORRUPT, v->name, (int64_t)v->committed_epoch,
                        "%s record (%s, epoch %llu; staging epoch %llu, committed "
                        "%llu) from primary %s: connection dropped, epoch in flight "
                        "discarded, replica %s",
                        r == -EBADMSG ? "corrupt" : "unexpected", wire_type_name(s->last_type),
                        (unsigned long long)s->last_epoch, (unsigned long long)s->last_st_epoch,
                        (unsigned long long)v->committed_epoch, s->primary,
                        b->valid ? "at its last committed epoch, untouched" : "incomplete (no commit yet)");
        if (s->handover)
                log_msg(LOG_LVL_NOTICE, MSG_BK_HANDOVER, v->name, (int64_t)v->committed_epoch,
                        "primary %s handed the VM over (switchover): replica at epoch %llu kept "
                        "for activation", s->primary, (unsigned long long)v->committed_epoch);
        else if (r != 0 && b->valid)
                log_msg(LOG_LVL_WARN, MSG_BK_PRIMARY_LOST, v->name, (int64_t)v->committed_epoch,
                        "primary %s lost (%s): replica at epoch %llu can be activated",
                        s->primary, strerror(-r), (unsigned long long)v->committed_epoch);
        else if (r != 0 && r != -EBADMSG && r != -EPROTO) /* those were said above */
                log_msg(LOG_LVL_WARN, MSG_BK_SYNC_LOST, v->name, -1,
                        "connection to primary %s ended during the initial sync (%s): "
                        "incomplete replica discarded, nothing to activate; the primary "
                        "retries", s->primary, strerror(-r));
        struct qemu_vm *q = NULL;
        pthread_mutex_lock(&v->lock);
        v->conn_fd = -1;
        v->link_up = false;
        vm_set_state(v, discard ? VM_DEFINED : VM_BK_ORPHANED);
        if (r < 0 && !s->handover)
                vm_set_error(v, "primary %s lost: %s", s->primary, strerror(-r));
        vm_set_exit(v, r == 0 ? (s->guest_off ? "peer-guest-shutdown" : "peer-ended")
                              : s->handover ? "peer-handover" : "peer-lost");
        pthread_mutex_unlock(&v->lock);
        if (s->handover) {
                /* The explicit answer the primary waits for before it
                 * powers its copy off: the replica is kept, activatable.
                 * Sent now, while the session still holds the VM (no HELLO
                 * or discard can come between), and before waiting for a
                 * hot standby that may still be starting. */
                struct wire_ack ack = { 0 };
                wire_buf_reset(&s->out);
                if (wire_put_ack(&s->out, s->handover_epoch, &ack) == 0)
                        write_full(s->fd, s->out.data, s->out.len, now_ns() + 2000000000ull);
        }
        /* The session has ended for everyone who looks (state, link); the
         * hot standby may still be starting: wait for it before it is kept
         * or destroyed (thread_running keeps anyone else off till then). */
        if (s->launching) {
                pthread_join(s->launcher, NULL);
                s->launching = false;
        }
        pthread_mutex_lock(&v->lock);
        if (discard) {
                q = v->qemu;
                v->qemu = NULL;
                v->replica = NULL;
        } else {
                b = NULL;
        }
        /* from here a new session may take the VM */
        v->thread_running = false;
        pthread_cond_broadcast(&v->changed);
        struct qemu_vm *kept = discard ? NULL : v->qemu;
        pthread_mutex_unlock(&v->lock);
        qemu_destroy(q);
        replica_free(b);
        daemon_watch_qemu(s->d, kept); /* a hot standby that dies is reaped */
}

static void *session_thread(void *arg)
{
        struct session *s = arg;
        int r = receive_loop(s);
        end_session(s, r);
        close(s->fd);
        wire_msg_free(&s->in);
        wire_buf_free(&s->out);
        free(s);
        return NULL;
}

/* Stop the session of v (if any) and wait for it to end. */
static void session_stop(struct vm *v)
{
        pthread_mutex_lock(&v->lock);
        if (v->thread_running && v->conn_fd >= 0)
                shutdown(v->conn_fd, SHUT_RDWR);
        while (v->thread_running)
                pthread_cond_wait(&v->changed, &v->lock);
        pthread_mutex_unlock(&v->lock);
}

static int check_hello(struct daemon *d, const struct wire_hello *h, struct vm **ret_v,
                       char *why, size_t whylen, uint32_t *code)
{
        struct vm *v;
        char err[256];
        *code = WIRE_ERR_UNKNOWN_VM;
        if (daemon_vm(d, h->vm, true, &v, err, sizeof(err)) < 0) {
                snprintf(why, whylen, "%s", err);
                return -ENOENT;
        }
        /* The definition on disk is the truth: an operator may have fixed
         * (or removed) it since this daemon last read it. */
        struct vm_config fresh;
        if (vm_config_find(&d->host, h->vm, &fresh, err, sizeof(err)) < 0) {
                snprintf(why, whylen, "%s", err);
                return -ENOENT;
        }
        pthread_mutex_lock(&v->lock);
        if (!vm_state_is_primary(v->state) && v->state != VM_ACTIVATING && !v->thread_running)
                v->cfg = fresh;
        pthread_mutex_unlock(&v->lock);
        *code = WIRE_ERR_MISMATCH;
        if (h->page_size != HAVMS_PAGE_SIZE || h->ram_bytes != (uint64_t)v->cfg.memory_mib << 20) {
                snprintf(why, whylen, "memory size differs: primary %llu MiB, %s defines %u MiB",
                         (unsigned long long)(h->ram_bytes >> 20), d->host.name, v->cfg.memory_mib);
                return -EINVAL;
        }
        if (h->config_digest != vm_config_digest(&v->cfg)) {
                snprintf(why, whylen, "VM definition differs between %s and %s "
                         "(memory, CPUs, machine, NICs, number of disks, qemu_args, or preferred_host "
                         "and [failback] failback / failback_delay_s)",
                         h->host, d->host.name);
                return -EINVAL;
        }
        /* before the reservation: a refused HELLO must not cost the
         * replica this host may already hold */
        if (disk_replica_check(&v->cfg, h, why, whylen) < 0)
                return -EINVAL;
        /* Stale before busy: an old primary whose standby took over (and
         * runs the VM here now, a newer generation) must learn that it is
         * stale and power its copy off, not retry forever. */
        *code = WIRE_ERR_STALE;
        pthread_mutex_lock(&v->lock);
        uint64_t gen = v->generation;
        bool gen_ok = !v->generation_bad;
        enum vm_state st = v->state;
        pthread_mutex_unlock(&v->lock);
        if (gen_ok && h->generation < gen) {
                snprintf(why, whylen, "generation %llu of %.64s is stale: %.64s has seen "
                         "generation %llu", (unsigned long long)h->generation, h->vm,
                         d->host.name, (unsigned long long)gen);
                log_msg(LOG_LVL_WARN, MSG_BK_STALE, h->vm, -1,
                        "refused primary %s: %s; it must never run the VM again", h->host, why);
                return -ESTALE;
        }
        *code = WIRE_ERR_BUSY;
        if (vm_state_is_primary(st) || st == VM_ACTIVATING) {
                snprintf(why, whylen, "%s is %s on %s: refusing to become its standby",
                         h->vm, vm_state_name(st), d->host.name);
                return -EBUSY;
        }
        *ret_v = v;
        return 0;
}

/* A HELLO that reserved v could not be served: give the VM back. */
static void release_reservation(struct vm *v)
{
        pthread_mutex_lock(&v->lock);
        v->conn_fd = -1;
        v->link_up = false;
        vm_set_state(v, VM_DEFINED);
        v->thread_running = false;
        pthread_cond_broadcast(&v->changed);
        pthread_mutex_unlock(&v->lock);
}

#define HASHES_PER_RECORD 65536u /* 1 MiB of page hashes per record */

struct hash_emit {
        struct session *s;
        uint32_t disk;
};

static int emit_disk_hashes(void *ctx, const uint8_t *entries, uint32_t n)
{
        struct hash_emit *e = ctx;
        struct wire_disk_hashes dh = { .disk = e->disk, .count = n, .entries = entries };
        wire_buf_reset(&e->s->out);
        int r = wire_put_disk_hashes(&e->s->out, &dh);
        return r < 0 ? r : write_full(e->s->fd, e->s->out.data, e->s->out.len,
                                      now_ns() + WIRE_HASH_RECORD_TIMEOUT_NS);
}

/* After the WELCOME: what this host already holds, as hashes, so the
 * primary sends only what differs (docs/failback.md). For an incremental
 * disk, the primary's bitmap comes first: the union of it and ours is
 * marked here before we say which blocks we hold. */
static int send_hashes(struct session *s, uint32_t flags)
{
        struct backup_replica *b = s->v->replica;
        struct wire_hashes_end end = { 0 };
        /* a deadline per record, renewed as records flow: a large RAM or
         * resync set takes as long as our reads, as long as they go on */
        uint64_t deadline = now_ns() + WIRE_HASH_RECORD_TIMEOUT_NS;
        uint8_t *hashes = NULL;
        int r = 0;
        if (flags >> 8) {
                bool done = false;
                while (r == 0 && !done) {
                        r = wire_recv(s->fd, deadline, &s->in);
                        deadline = now_ns() + WIRE_HASH_RECORD_TIMEOUT_NS;
                        if (r == 0)
                                r = s->in.hdr.type == WIRE_DISK_BITMAP
                                            ? disk_replica_bitmap(&b->disks, &s->in, &done) : -EPROTO;
                }
                for (unsigned i = 0; i < b->disks.n && r == 0; i++) {
                        if (!b->disks.incremental[i])
                                continue;
                        struct hash_emit e = { .s = s, .disk = i };
                        /* 1024 entries: one record per 64 MiB read */
                        r = disk_replica_hashes(&b->disks, i, 1024, emit_disk_hashes, &e,
                                                &end.blocks[i]);
                        log_msg(LOG_LVL_INFO, MSG_BK_RESYNC, s->v->name, -1,
                                "disk %u: %llu blocks may differ (the primary's bitmap and ours)",
                                i, (unsigned long long)end.blocks[i]);
                }
        }
        if (flags & WIRE_WELCOME_PAGE_HASHES) {
                hashes = malloc((size_t)HASHES_PER_RECORD * WIRE_HASH_LEN);
                if (!hashes)
                        return -ENOMEM;
                for (uint64_t pfn = 0; pfn < b->npages && r == 0; pfn += HASHES_PER_RECORD) {
                        uint32_t n = b->npages - pfn < HASHES_PER_RECORD ? (uint32_t)(b->npages - pfn)
                                                                          : HASHES_PER_RECORD;
                        for (uint32_t i = 0; i < n; i++)
                                wire_hash(b->ram + (pfn + i) * HAVMS_PAGE_SIZE, HAVMS_PAGE_SIZE,
                                          hashes + (size_t)i * WIRE_HASH_LEN);
                        struct wire_page_hashes ph = { .first_pfn = pfn, .count = n, .hashes = hashes };
                        wire_buf_reset(&s->out);
                        r = wire_put_page_hashes(&s->out, &ph);
                        if (r == 0)
                                r = write_full(s->fd, s->out.data, s->out.len,
                                               now_ns() + WIRE_HASH_RECORD_TIMEOUT_NS);
                }
                end.pages = b->npages;
        }
        free(hashes);
        if (r == 0) {
                wire_buf_reset(&s->out);
                r = wire_put_hashes_end(&s->out, &end);
        }
        if (r == 0)
                r = write_full(s->fd, s->out.data, s->out.len, now_ns() + WIRE_HASH_RECORD_TIMEOUT_NS);
        return r;
}

static void *hello_thread(void *arg)
{
        struct session *s = arg;
        struct wire_hello h = { 0 };
        char why[600];
        uint32_t code = WIRE_ERR_PROTOCOL;
        struct vm *v = NULL;
        int r = wire_recv(s->fd, now_ns() + HELLO_TIMEOUT_MS * 1000000ull, &s->in);
        if (r == 0)
                r = wire_get_hello(&s->in, &h);
        if (r < 0) {
                snprintf(why, sizeof(why), "expected HELLO (%s)", strerror(-r));
                goto refused;
        }
        r = check_hello(s->d, &h, &v, why, sizeof(why), &code);
        if (r < 0)
                goto refused;
        /* Reserve the VM for this session before anything else touches it:
         * from here on activation, `start` and other HELLOs see
         * backup-syncing and keep off. */
        pthread_mutex_lock(&v->lock);
        if (v->thread_running && (strcmp(v->peer, h.host) || vm_state_is_primary(v->state))) {
                pthread_mutex_unlock(&v->lock);
                code = WIRE_ERR_BUSY;
                r = -EBUSY;
                snprintf(why, sizeof(why), "%.32s is already replicated here from %.32s",
                         h.vm, v->peer);
                goto refused;
        }
        /* The same primary reconnecting before we noticed its old
         * connection died: end the old session first. */
        if (v->thread_running && v->conn_fd >= 0)
                shutdown(v->conn_fd, SHUT_RDWR);
        while (v->thread_running)
                pthread_cond_wait(&v->changed, &v->lock);
        if (v->state == VM_ACTIVATING || vm_state_is_primary(v->state)) {
                pthread_mutex_unlock(&v->lock);
                code = WIRE_ERR_BUSY;
                r = -EBUSY;
                snprintf(why, sizeof(why), "%.64s is %s on %.64s", h.vm,
                         vm_state_name(v->state), s->d->host.name);
                goto refused;
        }
        /* The fencing token. Checked here, where no activation can run
         * (it needs a backup state, and we hold the lock until the VM is
         * reserved), so the generation cannot move under us. */
        if (v->generation_bad)
                daemon_load_generation(s->d, v);
        if (v->generation_bad || h.generation < v->generation) {
                code = v->generation_bad ? WIRE_ERR_INTERNAL : WIRE_ERR_STALE;
                r = v->generation_bad ? -EUCLEAN : -ESTALE;
                if (v->generation_bad)
                        snprintf(why, sizeof(why), "%.64s: %.400s", s->d->host.name, v->last_error);
                else
                        snprintf(why, sizeof(why), "generation %llu of %.64s is stale: %.64s has "
                                 "seen generation %llu", (unsigned long long)h.generation, h.vm,
                                 s->d->host.name, (unsigned long long)v->generation);
                pthread_mutex_unlock(&v->lock);
                if (r == -ESTALE)
                        log_msg(LOG_LVL_WARN, MSG_BK_STALE, h.vm, -1,
                                "refused primary %s: %s; it must never run the VM again", h.host, why);
                goto refused;
        }
        uint64_t old_gen = v->generation;
        v->thread_running = true;
        vm_set_state(v, VM_BK_SYNCING);
        snprintf(v->peer, sizeof(v->peer), "%.32s", h.host);
        v->conn_fd = s->fd;
        v->link_up = true;
        v->last_error[0] = 0;
        v->committed_epoch = 0;
        struct qemu_vm *old_q = v->qemu;
        v->qemu = NULL;
        if (v->replica) {
                drop_out_frames(v->replica); /* of a handover that did not happen */
                v->replica->valid = false; /* a re-sync rewrites it... */
                v->replica->seeded = true; /* ...sending only what differs */
        }
        v->generation = h.generation;
        pthread_mutex_unlock(&v->lock);
        snprintf(s->primary, sizeof(s->primary), "%s", h.host);
        s->v = v;
        /* no restart may adopt the replica a re-sync is about to rewrite */
        persist_devstate_drop(&s->d->host, v->name);
        /* the adopted generation is durable before the WELCOME says so */
        if (h.generation != old_gen &&
            (r = persist_generation_store(&s->d->host, v->name, h.generation)) < 0) {
                code = WIRE_ERR_INTERNAL;
                snprintf(why, sizeof(why), "%s cannot store generation %llu in %s: %s",
                         s->d->host.name, (unsigned long long)h.generation, s->d->host.state_dir,
                         strerror(-r));
                pthread_mutex_lock(&v->lock);
                v->generation = old_gen;
                pthread_mutex_unlock(&v->lock);
                release_reservation(v);
                goto refused;
        }
        /* A re-sync rewrites the replica: the old hot standby cannot stay. */
        qemu_destroy(old_q);
        if (!v->replica) {
                struct backup_replica *b = NULL;
                r = replica_open(&s->d->host, &v->cfg, &b);
                if (r < 0) {
                        code = r == -ENOSPC ? WIRE_ERR_NOSPACE : WIRE_ERR_INTERNAL;
                        snprintf(why, sizeof(why), "%s cannot hold the replica in %s: %s",
                                 s->d->host.name, s->d->host.ram_dir, strerror(-r));
                        release_reservation(v);
                        goto refused;
                }
                pthread_mutex_lock(&v->lock);
                v->replica = b;
                pthread_mutex_unlock(&v->lock);
        }
        staging_reset(v->replica);
        disk_replica_close(&v->replica->disks);
        r = disk_replica_open(&v->replica->disks, &s->d->host, &v->cfg, &h, why, sizeof(why));
        if (r < 0) {
                code = r == -ENOSPC ? WIRE_ERR_NOSPACE : WIRE_ERR_MISMATCH;
                release_reservation(v);
                goto refused;
        }
        struct wire_welcome w = { .last_committed = 0, .generation = h.generation };
        if (v->replica->seeded)
                w.flags |= WIRE_WELCOME_PAGE_HASHES;
        for (unsigned i = 0; i < v->replica->disks.n; i++)
                if (v->replica->disks.incremental[i])
                        w.flags |= WIRE_WELCOME_DISK_INCR(i);
        wire_buf_reset(&s->out);
        r = wire_put_welcome(&s->out, &w);
        if (r == 0)
                r = write_full(s->fd, s->out.data, s->out.len, now_ns() + 2000000000ull);
        if (r == 0 && w.flags)
                r = send_hashes(s, w.flags);
        if (r < 0) {
                end_session(s, r);
                goto closed;
        }
        log_msg(LOG_LVL_INFO, MSG_BK_CONNECTED, v->name, -1,
                "primary %s connected: receiving the %s", h.host,
                w.flags ? "re-sync of what differs" : "initial sync");
        return session_thread(s);
refused:
        if (r != -ESTALE) /* logged above, with its own ID */
                log_msg(LOG_LVL_WARN, MSG_BK_REFUSED, r == 0 ? NULL : (h.vm[0] ? h.vm : NULL), -1,
                "refused a primary: %s", why);
        refuse(s->fd, code, why);
closed:
        close(s->fd);
        wire_msg_free(&s->in);
        wire_buf_free(&s->out);
        free(s);
        return NULL;
}

void backup_accept(struct daemon *d, int fd)
{
        struct session *s = calloc(1, sizeof(*s));
        pthread_t t;
        if (!s) {
                close(fd);
                return;
        }
        s->d = d;
        s->fd = fd;
        set_nonblock(fd, true);
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        /* detached: whoever waits for a session waits on v->changed */
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &attr, hello_thread, s) != 0) {
                close(fd);
                free(s);
        }
        pthread_attr_destroy(&attr);
}

/* Daemon shutdown: end the session (if any) and drop the hot standby and
 * the replica, so no paused QEMU outlives us holding the VM's taps. */
void backup_stop(struct daemon *d, struct vm *v)
{
        session_stop(v);
        backup_discard(d, v);
}

void backup_discard(struct daemon *d, struct vm *v)
{
        pthread_mutex_lock(&v->lock);
        struct qemu_vm *q = v->qemu;
        struct backup_replica *b = v->replica;
        bool backup_role = !vm_state_is_primary(v->state) && v->state != VM_ACTIVATING;
        if (backup_role) {
                v->qemu = NULL;
                v->replica = NULL;
        }
        pthread_mutex_unlock(&v->lock);
        if (!backup_role)
                return;
        if (b)
                persist_devstate_drop(&d->host, v->name);
        qemu_destroy(q);
        replica_free(b);
}

int backup_activate(struct daemon *d, struct vm *v, bool force, uint64_t generation,
                    char *err, size_t errlen)
{
        uint64_t t0 = now_ns();
        pthread_mutex_lock(&v->lock);
        enum vm_state st = v->state;
        if (v->generation_bad)
                daemon_load_generation(d, v);
        bool gen_bad = v->generation_bad;
        uint64_t stored = v->generation;
        pthread_mutex_unlock(&v->lock);
        if (gen_bad) {
                snprintf(err, errlen, "%s: cannot activate without a trustworthy generation: %s",
                         v->name, v->last_error);
                return -EUCLEAN;
        }
        if (generation && generation <= stored) {
                snprintf(err, errlen, "generation %llu is not newer than %llu, the one %s has "
                         "seen for %s", (unsigned long long)generation,
                         (unsigned long long)stored, d->host.name, v->name);
                return -ESTALE;
        }
        if (st == VM_BK_STANDBY && !force) {
                snprintf(err, errlen, "%s's primary %s is still connected and replicating: "
                         "activating here would run two copies. Use --force only if %s is "
                         "known to be dead (fenced)", v->name, v->peer, v->peer);
                return -EBUSY;
        }
        if (st != VM_BK_STANDBY && st != VM_BK_ORPHANED) {
                snprintf(err, errlen, "%s is %s here: only a backup holding a committed replica "
                         "can be activated", v->name, vm_state_name(st));
                return -EINVAL;
        }
        session_stop(v); /* a forced activation cuts the primary off first */
        pthread_mutex_lock(&v->lock);
        if ((v->state != VM_BK_ORPHANED && v->state != VM_BK_STANDBY) || v->thread_running ||
            !v->replica || !v->replica->valid) {
                snprintf(err, errlen, "%s is %s here: no committed replica to activate", v->name,
                         vm_state_name(v->state));
                pthread_mutex_unlock(&v->lock);
                return -EINVAL;
        }
        vm_set_state(v, VM_ACTIVATING);
        struct backup_replica *b = v->replica;
        struct qemu_vm *q = v->qemu;
        v->qemu = NULL;
        uint64_t epoch = v->committed_epoch;
        /* re-read under the lock: a HELLO may have taken a newer one */
        uint64_t new_gen = generation ? generation : v->generation + 1;
        bool gen_ok = new_gen > v->generation;
        pthread_mutex_unlock(&v->lock);
        log_msg(LOG_LVL_NOTICE, MSG_ACTIVATE_START, v->name, (int64_t)epoch,
                "activating from the last committed epoch");

        int r = 0;
        if (!gen_ok) {
                r = -ESTALE;
                snprintf(err, errlen, "generation %llu is no longer newer than the one seen here",
                         (unsigned long long)new_gen);
        }
        if (r == 0 && (!q || qemu_exited(q))) {
                qemu_destroy(q);
                q = NULL;
                r = qemu_launch(&d->host, &v->cfg, QEMU_START_INCOMING, &q, err, errlen);
        }
        if (r == 0 && (r = qemu_load_devstate(q, b->devstate, b->devstate_len, 10000)) < 0)
                snprintf(err, errlen, "loading the device state failed: %s (%s)", strerror(-r),
                         qmp_last_error(q->qmp));
        /* The new generation is durable before the VM runs: from its first
         * instruction on, no older copy may push a replica here. */
        if (r == 0 && (r = persist_generation_store(&d->host, v->name, new_gen)) < 0)
                snprintf(err, errlen, "cannot store generation %llu in %s: %s",
                         (unsigned long long)new_gen, d->host.state_dir, strerror(-r));
        if (r == 0) {
                pthread_mutex_lock(&v->lock);
                v->generation = new_gen;
                pthread_mutex_unlock(&v->lock);
        }
        /* A switchover's last committed output leaves from here, before
         * the guest runs: the world learns the guest's new place from it. */
        for (unsigned i = 0; r == 0 && i < WIRE_MAX_NICS; i++)
                if (b->out_len[i] && i < q->n_net &&
                    netbuf_emit(q->net[i], b->out_frames[i], b->out_len[i]) < 0)
                        log_msg(LOG_LVL_WARN, MSG_ACTIVATE_START, v->name, (int64_t)epoch,
                                "NIC %u: the handed-over output could not be sent (malformed or "
                                "no user-space relay); TCP will retransmit it", i);
        if (r == 0)
                drop_out_frames(b);
        bool cont_sent = false;
        if (r == 0) {
                cont_sent = true;
                if ((r = qemu_cont(q, 5000)) < 0)
                        snprintf(err, errlen, "cont failed: %s", qmp_last_error(q->qmp));
        }
        if (r < 0) {
                log_msg(LOG_LVL_ERR, MSG_ACTIVATE_FAILED, v->name, (int64_t)epoch,
                        "activation failed: %s%s", err,
                        cont_sent ? "; the guest may have run: replica discarded" : "");
                qemu_destroy(q);
                pthread_mutex_lock(&v->lock);
                /* Before cont the replica is untouched and a retry is
                 * possible; after it, RAM may no longer match the device
                 * state. */
                vm_set_state(v, cont_sent ? VM_DEFINED : VM_BK_ORPHANED);
                if (cont_sent) {
                        v->replica = NULL;
                        persist_devstate_drop(&d->host, v->name);
                } else {
                        b = NULL;
                }
                vm_set_error(v, "activation failed: %s", err);
                pthread_mutex_unlock(&v->lock);
                replica_free(b);
                return r;
        }
        uint64_t ms = (now_ns() - t0) / 1000000u;
        /* the RAM file is live guest RAM now, not a replica to adopt */
        persist_devstate_drop(&d->host, v->name);
        /* Tell the LAN's switches where the guest's MACs are now; a failure
         * here is not fatal: the guest's own traffic teaches them too. */
        qemu_announce(q, 2000);
        pthread_mutex_lock(&v->lock);
        v->qemu = q;
        v->replica = NULL;
        v->activation_ms = ms;
        v->peer[0] = 0;
        v->last_error[0] = 0;
        v->unprotected_by_operator = false;
        vm_set_state(v, VM_RUNNING);
        adopt_record(d, v, "", false); /* a primary now: a restarted checkpointd adopts it */
        pthread_mutex_unlock(&v->lock);
        replica_free(b);
        daemon_watch_qemu(d, q);
        log_msg(LOG_LVL_NOTICE, MSG_ACTIVATED, v->name, (int64_t)epoch,
                "VM running on %s from epoch %llu, generation %llu (activation took %llu ms); it "
                "is UNPROTECTED until `havmsctl protect %s` finds a standby",
                d->host.name, (unsigned long long)epoch, (unsigned long long)new_gen,
                (unsigned long long)ms, v->name);
        return 0;
}

/* A hot-standby QEMU left behind by a checkpointd that died: its disks
 * and NICs were served by that process, so it can never run. Ask it to
 * quit (found by its QMP socket); activation starts a fresh one. */
/* A hot-standby QEMU left by a crashed checkpointd has no disks or NICs
 * any more: tell it to quit, and wait until it is gone. A QEMU removes
 * its socket files (QMP, stream netdevs) as it exits: one still exiting
 * when the next hot standby has created the same paths would remove the
 * new QEMU's, and a later restart of checkpointd could not reach it. Its
 * pid comes from the QMP connection (SO_PEERCRED); one that does not exit
 * in time is killed (no cleanup then). */
static void quit_leftover_qemu(struct daemon *d, const char *vm)
{
        char path[CFG_PATH_MAX + 64];
        snprintf(path, sizeof(path), "%s/qmp-%s.sock", d->host.state_dir, vm);
        struct qmp *q = NULL;
        if (qmp_connect(path, 1000, &q) < 0)
                return;
        struct ucred cr;
        socklen_t crlen = sizeof(cr);
        int pidfd = -1;
        if (getsockopt(qmp_fd(q), SOL_SOCKET, SO_PEERCRED, &cr, &crlen) == 0 && cr.pid > 0)
                pidfd = (int)syscall(SYS_pidfd_open, cr.pid, 0);
        if (qmp_execute(q, "quit", NULL, 2000, NULL) == 0)
                log_msg(LOG_LVL_INFO, MSG_BK_ADOPTED, vm, -1,
                        "a hot-standby QEMU left by the previous checkpointd was told to quit");
        qmp_close(q);
        if (pidfd < 0)
                return;
        struct pollfd p = { .fd = pidfd, .events = POLLIN };
        if (poll(&p, 1, 5000) != 1) {
                syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
                poll(&p, 1, 5000);
        }
        close(pidfd);
}

void backup_adopt(struct daemon *d, struct vm *v)
{
        struct devstate_hdr hdr;
        uint8_t *data = NULL;
        size_t len = 0;
        char err[512] = "";
        int r = persist_devstate_load(&d->host, v->name, &hdr, &data, &len, err, sizeof(err));
        if (r == -ENOENT) {
                /* no replica, no run file (adopt.c looked first): a QEMU
                 * answering here is a hot standby left without its I/O */
                quit_leftover_qemu(d, v->name);
                return;
        }
        struct backup_replica *b = NULL;
        char ram[CFG_PATH_MAX + 64];
        qemu_ram_path(&d->host, v->name, ram, sizeof(ram));
        struct stat sb;
        if (r == 0 && (v->generation_bad || hdr.generation != v->generation)) {
                snprintf(err, sizeof(err), "its generation %llu is not the one stored here (%llu)",
                         (unsigned long long)hdr.generation, (unsigned long long)v->generation);
                r = -ESTALE;
        } else if (r == 0 && (hdr.config_digest != vm_config_digest(&v->cfg) ||
                              hdr.ram_bytes != (uint64_t)v->cfg.memory_mib << 20)) {
                snprintf(err, sizeof(err), "the VM definition changed since");
                r = -EINVAL;
        } else if (r == 0 && (stat(ram, &sb) < 0 || (uint64_t)sb.st_size != hdr.ram_bytes)) {
                snprintf(err, sizeof(err), "the replica RAM %s is missing or of the wrong size", ram);
                r = -ENOENT;
        }
        quit_leftover_qemu(d, v->name);
        if (r == 0 && (r = replica_open(&d->host, &v->cfg, &b)) < 0)
                snprintf(err, sizeof(err), "cannot map %s: %s", ram, strerror(-r));
        if (r < 0) {
                log_msg(LOG_LVL_WARN, MSG_BK_ADOPT_FAILED, v->name, -1,
                        "a replica left by the previous checkpointd is not usable (%s): dropped",
                        err);
                persist_devstate_drop(&d->host, v->name);
                free(data);
                return;
        }
        b->devstate = data;
        b->devstate_len = b->devstate_cap = len;
        b->valid = true;
        pthread_mutex_lock(&v->lock);
        v->replica = b;
        v->committed_epoch = v->epoch = hdr.epoch;
        snprintf(v->peer, sizeof(v->peer), "%.32s", hdr.primary);
        v->link_up = false;
        vm_set_error(v, "replica adopted after a restart of checkpointd; primary %s not "
                     "connected", hdr.primary);
        vm_set_state(v, VM_BK_ORPHANED);
        pthread_mutex_unlock(&v->lock);
        log_msg(LOG_LVL_NOTICE, MSG_BK_ADOPTED, v->name, (int64_t)hdr.epoch,
                "replica of epoch %llu (generation %llu, primary %s) adopted after a restart: "
                "backup-orphaned, can be activated (the hot-standby QEMU starts on demand)",
                (unsigned long long)hdr.epoch, (unsigned long long)hdr.generation, hdr.primary);
}
