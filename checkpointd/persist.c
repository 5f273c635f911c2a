#include "persist.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "util.h"

#define GEN_PREFIX "havms-generation "
#define DEV_MAGIC "HVMSDEV1"
#define DEV_HDR 128
#define DEV_STATE_OFF 8
#define DEV_PENDING 1u
#define DEV_COMMITTED 2u
#define DEV_MAX (256u << 20)

static void gen_path(const struct host_config *h, const char *vm, char *buf, size_t len)
{
        snprintf(buf, len, "%s/%s.generation", h->state_dir, vm);
}

static void dev_path(const struct host_config *h, const char *vm, char *buf, size_t len)
{
        snprintf(buf, len, "%s/%s.devstate", h->ram_dir, vm);
}

int persist_generation_load(const struct host_config *h, const char *vm, uint64_t *ret,
                            char *err, size_t errlen)
{
        char path[CFG_PATH_MAX + 64], buf[64];
        gen_path(h, vm, path, sizeof(path));
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT) {
                *ret = 0;
                return 0;
        }
        if (fd < 0) {
                int r = -errno;
                snprintf(err, errlen, "cannot read %s: %s", path, strerror(-r));
                return r;
        }
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n < 0) {
                snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
                return -EIO;
        }
        buf[n] = 0;
        size_t pl = strlen(GEN_PREFIX);
        char *end = NULL;
        uint64_t g = 0;
        bool ok = (size_t)n > pl && !strncmp(buf, GEN_PREFIX, pl) && buf[pl] >= '0' && buf[pl] <= '9';
        if (ok) {
                errno = 0;
                g = strtoull(buf + pl, &end, 10);
                ok = errno == 0 && end && !strcmp(end, "\n");
        }
        if (!ok) {
                snprintf(err, errlen, "%s is corrupt (expected \"%sN\"): refusing to guess the "
                         "generation of %s; fix or remove it by hand only if you know which "
                         "host holds the newest copy", path, GEN_PREFIX, vm);
                return -EUCLEAN;
        }
        *ret = g;
        return 0;
}

/* Write data to path atomically: a temp file in the same directory, fsync
 * (if durable), rename over path, fsync of the directory (if durable). */
static int write_atomic(const char *path, const void *a, size_t alen, const void *b, size_t blen,
                        bool durable)
{
        char tmp[CFG_PATH_MAX + 80];
        snprintf(tmp, sizeof(tmp), "%s.tmp", path);
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
                return -errno;
        int r = write_full(fd, a, alen, 0);
        if (r == 0 && blen)
                r = write_full(fd, b, blen, 0);
        if (r == 0 && durable && fsync(fd) < 0)
                r = -errno;
        if (close(fd) < 0 && r == 0)
                r = -errno;
        if (r == 0 && rename(tmp, path) < 0)
                r = -errno;
        if (r < 0) {
                unlink(tmp);
                return r;
        }
        if (durable) {
                char dir[CFG_PATH_MAX + 80];
                snprintf(dir, sizeof(dir), "%s", path);
                char *slash = strrchr(dir, '/');
                if (slash)
                        *(slash == dir ? slash + 1 : slash) = 0;
                int dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                if (dfd < 0)
                        return -errno;
                r = fsync(dfd) < 0 ? -errno : 0;
                close(dfd);
        }
        return r;
}

int persist_generation_store(const struct host_config *h, const char *vm, uint64_t gen)
{
        char path[CFG_PATH_MAX + 64], buf[64];
        int r = mkdir_p(h->state_dir, 0700);
        if (r < 0)
                return r;
        gen_path(h, vm, path, sizeof(path));
        int n = snprintf(buf, sizeof(buf), GEN_PREFIX "%" PRIu64 "\n", gen);
        return write_atomic(path, buf, (size_t)n, NULL, 0, true);
}

static void put64(uint8_t *p, uint64_t v)
{
        for (int i = 0; i < 8; i++)
                p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get64(const uint8_t *p)
{
        uint64_t v = 0;
        for (int i = 7; i >= 0; i--)
                v = v << 8 | p[i];
        return v;
}

static uint64_t dev_checksum(const uint8_t *hdr, const uint8_t *data, size_t len)
{
        uint8_t h[120];
        memcpy(h, hdr, sizeof(h));
        memset(h + DEV_STATE_OFF, 0, 4); /* the state word changes after the checksum */
        XXH64_state_t st;
        XXH64_reset(&st, 0);
        XXH64_update(&st, h, sizeof(h));
        if (len)
                XXH64_update(&st, data, len);
        return XXH64_digest(&st);
}

int persist_devstate_begin(const struct host_config *h, const char *vm,
                           const struct devstate_hdr *d, const uint8_t *data, size_t len)
{
        uint8_t hdr[DEV_HDR] = { 0 };
        memcpy(hdr, DEV_MAGIC, 8);
        hdr[DEV_STATE_OFF] = DEV_PENDING;
        put64(hdr + 16, d->epoch);
        put64(hdr + 24, d->generation);
        put64(hdr + 32, d->config_digest);
        put64(hdr + 40, d->ram_bytes);
        put64(hdr + 48, len);
        memcpy(hdr + 56, d->primary, strnlen(d->primary, 63));
        put64(hdr + 120, dev_checksum(hdr, data, len));
        char path[CFG_PATH_MAX + 64];
        dev_path(h, vm, path, sizeof(path));
        /* In place, not temp + rename: the old record is lost either way
         * (a commit needs it no more), and rewriting the pages tmpfs
         * already holds costs a copy where a new file costs allocating
         * them and freeing the old ones, every epoch. The state word goes
         * PENDING first: from there a crash leaves a file nobody adopts,
         * whatever part of the rest was written. */
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0)
                return -errno;
        uint8_t st[4] = { DEV_PENDING, 0, 0, 0 };
        struct stat sb;
        int r = fstat(fd, &sb) < 0 ? -errno : 0;
        if (r == 0 && sb.st_size >= DEV_STATE_OFF + 4)
                r = pwrite_full(fd, st, sizeof(st), DEV_STATE_OFF);
        if (r == 0)
                r = pwrite_full(fd, hdr, sizeof(hdr), 0);
        if (r == 0 && len)
                r = pwrite_full(fd, data, len, sizeof(hdr));
        if (r == 0 && (uint64_t)sb.st_size > sizeof(hdr) + len &&
            ftruncate(fd, (off_t)(sizeof(hdr) + len)) < 0)
                r = -errno;
        if (close(fd) < 0 && r == 0)
                r = -errno;
        return r;
}

int persist_devstate_commit(const struct host_config *h, const char *vm)
{
        char path[CFG_PATH_MAX + 64];
        dev_path(h, vm, path, sizeof(path));
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        uint8_t st[4] = { DEV_COMMITTED, 0, 0, 0 };
        int r = pwrite_full(fd, st, sizeof(st), DEV_STATE_OFF);
        close(fd);
        return r;
}

int persist_devstate_load(const struct host_config *h, const char *vm,
                          struct devstate_hdr *ret_hdr, uint8_t **ret_data, size_t *ret_len,
                          char *err, size_t errlen)
{
        char path[CFG_PATH_MAX + 64];
        dev_path(h, vm, path, sizeof(path));
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
                if (errno != ENOENT)
                        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
                return -errno;
        }
        uint8_t hdr[DEV_HDR];
        uint8_t *data = NULL;
        int r = pread_full(fd, hdr, sizeof(hdr), 0);
        const char *why = NULL;
        uint64_t len = 0;
        if (r < 0)
                why = "too short";
        else if (memcmp(hdr, DEV_MAGIC, 8))
                why = "bad magic";
        else if (hdr[DEV_STATE_OFF] != DEV_COMMITTED)
                why = "an epoch was being applied when checkpointd stopped (the replica RAM may "
                      "be half-applied)";
        else if ((len = get64(hdr + 48)) == 0 || len > DEV_MAX)
                why = "bad length";
        if (!why) {
                data = malloc(len);
                if (!data) {
                        close(fd);
                        return -ENOMEM;
                }
                if (pread_full(fd, data, len, DEV_HDR) < 0)
                        why = "truncated";
                else if (dev_checksum(hdr, data, len) != get64(hdr + 120))
                        why = "checksum mismatch";
        }
        close(fd);
        if (why) {
                free(data);
                snprintf(err, errlen, "%s: %s", path, why);
                return -EUCLEAN;
        }
        memset(ret_hdr, 0, sizeof(*ret_hdr));
        ret_hdr->epoch = get64(hdr + 16);
        ret_hdr->generation = get64(hdr + 24);
        ret_hdr->config_digest = get64(hdr + 32);
        ret_hdr->ram_bytes = get64(hdr + 40);
        memcpy(ret_hdr->primary, hdr + 56, 63);
        *ret_data = data;
        *ret_len = len;
        return 0;
}

void persist_devstate_drop(const struct host_config *h, const char *vm)
{
        char path[CFG_PATH_MAX + 64];
        dev_path(h, vm, path, sizeof(path));
        unlink(path);
}
