/* clmsg: encode and check the agents' CPG messages (format in clmsg.h). */
#define XXH_STATIC_LINKING_ONLY /* XXH64_state_t on the stack */
#include "clmsg.h"

#include <errno.h>
#include <string.h>
#include <xxhash.h>

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v)
{
        for (int i = 0; i < 4; i++)
                p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v)
{
        for (int i = 0; i < 8; i++)
                p[i] = (uint8_t)(v >> (8 * i));
}
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t get32(const uint8_t *p)
{
        uint32_t v = 0;
        for (int i = 3; i >= 0; i--)
                v = v << 8 | p[i];
        return v;
}
static uint64_t get64(const uint8_t *p)
{
        uint64_t v = 0;
        for (int i = 7; i >= 0; i--)
                v = v << 8 | p[i];
        return v;
}

/* The checksum covers every byte of the record but its own field: a
 * sender name altered in transit must not pass as another host's word. */
static uint64_t checksum(const uint8_t *rec, size_t len)
{
        XXH64_state_t st;
        XXH64_reset(&st, 0);
        XXH64_update(&st, rec, 12);
        XXH64_update(&st, rec + 20, len - 20);
        return XXH64_digest(&st);
}

/* A name field: fixed CLMSG_NAME bytes, NUL-padded. Only names the decoder
 * accepts are sent, so a bad name fails at its source, not at every peer. */
static int put_name(uint8_t *p, const char *s, bool may_be_empty)
{
        size_t n = strnlen(s, CFG_NAME_MAX);
        if (n > CLMSG_NAME)
                return -ENAMETOOLONG;
        if (n == 0 ? !may_be_empty : !cfg_name_valid(s))
                return -EINVAL;
        memset(p, 0, CLMSG_NAME);
        memcpy(p, s, n);
        return 0;
}

/* Decoded names must be valid host/VM names, or empty where allowed. */
static int get_name(const uint8_t *p, char out[CFG_NAME_MAX], bool may_be_empty)
{
        memcpy(out, p, CLMSG_NAME);
        out[CLMSG_NAME] = 0;
        size_t n = strlen(out);
        for (size_t i = n; i < CLMSG_NAME; i++)
                if (p[i])
                        return -EBADMSG; /* bytes after the NUL: not ours */
        if (n == 0)
                return may_be_empty ? 0 : -EBADMSG;
        return cfg_name_valid(out) ? 0 : -EBADMSG;
}

static bool has_payload_ref(enum clmsg_type t)
{
        return t >= CLMSG_RELINQUISH && t <= CLMSG_FENCED;
}

#define SW_LEN (CLMSG_NAME + 8 + CLMSG_NAME + CLMSG_NAME + 8)
#define SWS_LEN (CLMSG_NAME + 8 + CLMSG_NAME + CLMSG_NAME + 16 + CLMSG_TEXT)

static bool is_switchover(enum clmsg_type t)
{
        return t == CLMSG_SWITCHOVER || t == CLMSG_SWITCHOVER_STATUS;
}

/* SWITCHOVER and SWITCHOVER_STATUS after the common vm/generation/target */
static int put_switchover(const struct clmsg *m, uint8_t *pl)
{
        int r;
        bool st = m->type == CLMSG_SWITCHOVER_STATUS;
        if ((r = put_name(pl, m->vm, false)) < 0 ||
            (r = put_name(pl + 40, m->target, st)) < 0 ||
            (r = put_name(pl + 72, m->to, true)) < 0)
                return r;
        put64(pl + 32, m->generation);
        put32(pl + 104, m->reqid);
        if (!st)
                return 0;
        size_t tl = strnlen(m->text, sizeof(m->text));
        if ((unsigned)m->phase < CLMSG_SW_STARTED || (unsigned)m->phase > CLMSG_SW_FAILED ||
            tl >= CLMSG_TEXT)
                return -EINVAL;
        pl[108] = (uint8_t)m->phase;
        put32(pl + 112, (uint32_t)m->status);
        put32(pl + 116, m->ms);
        memcpy(pl + 120, m->text, tl);
        return 0;
}

static int get_switchover(const uint8_t *pl, size_t plen, struct clmsg *m)
{
        bool st = m->type == CLMSG_SWITCHOVER_STATUS;
        if (plen != (st ? SWS_LEN : SW_LEN))
                return -EBADMSG;
        if (get_name(pl, m->vm, false) < 0 || get_name(pl + 40, m->target, st) < 0 ||
            get_name(pl + 72, m->to, true) < 0)
                return -EBADMSG;
        m->generation = get64(pl + 32);
        m->reqid = get32(pl + 104);
        if (!st)
                return get32(pl + 108) ? -EBADMSG : 0;
        if (pl[108] < CLMSG_SW_STARTED || pl[108] > CLMSG_SW_FAILED || pl[109] || get16(pl + 110))
                return -EBADMSG;
        m->phase = pl[108];
        m->status = (int32_t)get32(pl + 112);
        m->ms = get32(pl + 116);
        const uint8_t *t = pl + 120;
        size_t tl = strnlen((const char *)t, CLMSG_TEXT);
        if (tl == CLMSG_TEXT)
                return -EBADMSG; /* no NUL */
        for (size_t i = 0; i < tl; i++)
                if (t[i] < 0x20 || t[i] > 0x7e)
                        return -EBADMSG;
        for (size_t i = tl; i < CLMSG_TEXT; i++)
                if (t[i])
                        return -EBADMSG;
        memcpy(m->text, t, tl + 1);
        return 0;
}

int clmsg_encode(const struct clmsg *m, uint8_t *buf, size_t size, size_t *ret_len)
{
        size_t len;
        if (m->type == CLMSG_STATE) {
                if (m->n_vms > CLMSG_MAX_VMS)
                        return -E2BIG;
                len = 4 + m->n_vms * CLMSG_VM_ENTRY;
        } else if (has_payload_ref(m->type)) {
                len = CLMSG_NAME + 8 + CLMSG_NAME;
        } else if (is_switchover(m->type)) {
                len = m->type == CLMSG_SWITCHOVER ? SW_LEN : SWS_LEN;
        } else {
                return -EINVAL;
        }
        if (size < CLMSG_HDR_SIZE + len)
                return -ENOBUFS;
        uint8_t *pl = buf + CLMSG_HDR_SIZE;
        memset(buf, 0, CLMSG_HDR_SIZE + len);
        int r = put_name(buf + 20, m->sender, false);
        if (r < 0)
                return r;
        if (m->type == CLMSG_STATE) {
                put32(pl, (uint32_t)m->n_vms);
                for (size_t i = 0; i < m->n_vms; i++) {
                        const struct clmsg_vm *v = &m->vms[i];
                        uint8_t *e = pl + 4 + i * CLMSG_VM_ENTRY;
                        if ((r = put_name(e, v->name, false)) < 0 ||
                            (r = put_name(e + 56, v->peer, true)) < 0)
                                return r;
                        if ((unsigned)v->state > PO_VM_ACTIVATING || (unsigned)v->last_exit > PO_EXIT_LAST)
                                return -EINVAL;
                        e[32] = (uint8_t)v->state;
                        e[33] = (uint8_t)v->last_exit;
                        put64(e + 40, v->generation);
                        put64(e + 48, v->committed_epoch);
                }
        } else if (is_switchover(m->type)) {
                if ((r = put_switchover(m, pl)) < 0)
                        return r;
        } else {
                if ((r = put_name(pl, m->vm, m->type == CLMSG_FENCED)) < 0 ||
                    (r = put_name(pl + 40, m->target, false)) < 0)
                        return r;
                put64(pl + 32, m->generation);
        }
        put32(buf, CLMSG_MAGIC);
        put16(buf + 4, CLMSG_VERSION);
        put16(buf + 6, (uint16_t)m->type);
        put32(buf + 8, (uint32_t)len);
        put64(buf + 12, checksum(buf, CLMSG_HDR_SIZE + len));
        *ret_len = CLMSG_HDR_SIZE + len;
        return 0;
}

int clmsg_decode(const uint8_t *buf, size_t len, struct clmsg *ret)
{
        if (len < CLMSG_HDR_SIZE || get32(buf) != CLMSG_MAGIC || get16(buf + 4) != CLMSG_VERSION)
                return -EBADMSG;
        enum clmsg_type type = get16(buf + 6);
        uint32_t plen = get32(buf + 8);
        if (plen != len - CLMSG_HDR_SIZE)
                return -EBADMSG;
        const uint8_t *pl = buf + CLMSG_HDR_SIZE;
        if (checksum(buf, len) != get64(buf + 12))
                return -EBADMSG;
        struct clmsg m;
        memset(&m, 0, sizeof(m));
        m.type = type;
        if (get_name(buf + 20, m.sender, false) < 0)
                return -EBADMSG;
        if (type == CLMSG_STATE) {
                if (plen < 4)
                        return -EBADMSG;
                uint32_t n = get32(pl);
                if (n > CLMSG_MAX_VMS || plen != 4 + (size_t)n * CLMSG_VM_ENTRY)
                        return -EBADMSG;
                for (uint32_t i = 0; i < n; i++) {
                        const uint8_t *e = pl + 4 + (size_t)i * CLMSG_VM_ENTRY;
                        struct clmsg_vm *v = &m.vms[i];
                        if (get_name(e, v->name, false) < 0 || get_name(e + 56, v->peer, true) < 0)
                                return -EBADMSG;
                        if (e[32] > PO_VM_ACTIVATING || e[33] > PO_EXIT_LAST || e[34] || e[35] ||
                            get32(e + 36))
                                return -EBADMSG;
                        v->state = e[32];
                        v->last_exit = e[33];
                        v->generation = get64(e + 40);
                        v->committed_epoch = get64(e + 48);
                }
                m.n_vms = n;
        } else if (has_payload_ref(type)) {
                if (plen != CLMSG_NAME + 8 + CLMSG_NAME)
                        return -EBADMSG;
                if (get_name(pl, m.vm, type == CLMSG_FENCED) < 0 ||
                    get_name(pl + 40, m.target, false) < 0)
                        return -EBADMSG;
                m.generation = get64(pl + 32);
        } else if (is_switchover(type)) {
                if (get_switchover(pl, plen, &m) < 0)
                        return -EBADMSG;
        } else {
                return -EBADMSG;
        }
        *ret = m;
        return 0;
}

const char *clmsg_type_name(enum clmsg_type t)
{
        switch (t) {
        case CLMSG_STATE: return "state";
        case CLMSG_RELINQUISH: return "relinquish";
        case CLMSG_ASK_DISCARD: return "ask-discard";
        case CLMSG_DISCARDED: return "discarded";
        case CLMSG_FENCED: return "fenced";
        case CLMSG_SWITCHOVER: return "switchover";
        case CLMSG_SWITCHOVER_STATUS: return "switchover-status";
        }
        return "?";
}
