/* clmsg, the agents' CPG messages: every type round-trips; every changed
 * byte, truncation, lying count, bad name, unknown type or version is
 * refused; encode refuses what it cannot send.
 *
 * The structural checks are tested apart from the checksum: reseal()
 * recomputes it the way clmsg.h documents, so a lie reaches the field
 * checks behind it (and the documented checksum itself is pinned). */
#define XXH_STATIC_LINKING_ONLY
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include <cmocka.h>

#include "clmsg.h"

static uint8_t buf[CLMSG_MAX_SIZE];

/* 32 characters: a name that fills its field, without a NUL */
#define NAME32 "abcdefghijklmnopqrstuvwxyz-012_."

static void put32le(uint8_t *p, uint32_t v)
{
        for (int i = 0; i < 4; i++)
                p[i] = (uint8_t)(v >> (8 * i));
}

/* The checksum as clmsg.h documents it: bytes 0-11 and 20 to the end. */
static void reseal(uint8_t *rec, size_t len)
{
        XXH64_state_t st;
        XXH64_reset(&st, 0);
        XXH64_update(&st, rec, 12);
        XXH64_update(&st, rec + 20, len - 20);
        uint64_t sum = XXH64_digest(&st);
        for (int i = 0; i < 8; i++)
                rec[12 + i] = (uint8_t)(sum >> (8 * i));
}

static struct clmsg *state_msg(size_t n, const char *sender)
{
        struct clmsg *m = calloc(1, sizeof(*m));
        m->type = CLMSG_STATE;
        strcpy(m->sender, sender);
        m->n_vms = n;
        for (size_t i = 0; i < n; i++) {
                struct clmsg_vm *v = &m->vms[i];
                if (i == 1)
                        strcpy(v->name, NAME32);
                else if (i == 2)
                        strcpy(v->name, "v");
                else
                        snprintf(v->name, sizeof(v->name), "vm-%zu", i);
                v->state = (enum po_vm_state)(i % (PO_VM_ACTIVATING + 1));
                v->last_exit = (enum po_exit)(i % (PO_EXIT_LAST + 1));
                v->generation = 0x0102030405060708ull + i;
                v->committed_epoch = i == 3 ? UINT64_MAX : 1000 * i;
                if (i % 3) /* a peer, or none */
                        strcpy(v->peer, i % 3 == 1 ? "b" : NAME32);
        }
        return m;
}

static struct clmsg *ref_msg(enum clmsg_type t, const char *vm, const char *target)
{
        struct clmsg *m = calloc(1, sizeof(*m));
        m->type = t;
        strcpy(m->sender, "host-a");
        strcpy(m->vm, vm);
        strcpy(m->target, target);
        m->generation = t == CLMSG_FENCED ? 0 : 0xfedcba9876543210ull;
        return m;
}

static void assert_same(const struct clmsg *a, const struct clmsg *b)
{
        assert_int_equal(a->type, b->type);
        assert_string_equal(a->sender, b->sender);
        if (a->type == CLMSG_STATE) {
                assert_int_equal(a->n_vms, b->n_vms);
                for (size_t i = 0; i < a->n_vms; i++) {
                        const struct clmsg_vm *x = &a->vms[i], *y = &b->vms[i];
                        assert_string_equal(x->name, y->name);
                        assert_int_equal(x->state, y->state);
                        assert_int_equal(x->last_exit, y->last_exit);
                        assert_true(x->generation == y->generation);
                        assert_true(x->committed_epoch == y->committed_epoch);
                        assert_string_equal(x->peer, y->peer);
                }
        } else {
                assert_string_equal(a->vm, b->vm);
                assert_true(a->generation == b->generation);
                assert_string_equal(a->target, b->target);
        }
        if (a->type == CLMSG_SWITCHOVER || a->type == CLMSG_SWITCHOVER_STATUS) {
                assert_string_equal(a->to, b->to);
                assert_int_equal(a->reqid, b->reqid);
        }
        if (a->type == CLMSG_SWITCHOVER_STATUS) {
                assert_int_equal(a->phase, b->phase);
                assert_int_equal(a->status, b->status);
                assert_int_equal(a->ms, b->ms);
                assert_string_equal(a->text, b->text);
        }
}

static struct clmsg *sw_msg(enum clmsg_type t, const char *target, const char *to,
                            const char *text)
{
        struct clmsg *m = ref_msg(t, "web01", "b");
        strcpy(m->target, target);
        strcpy(m->to, to);
        m->generation = 7;
        m->reqid = 0xdeadbeef;
        if (t == CLMSG_SWITCHOVER_STATUS) {
                m->phase = CLMSG_SW_FAILED;
                m->status = -16;
                m->ms = 123;
                strcpy(m->text, text);
        }
        return m;
}

/* Encode, decode, compare; the re-encoding is byte for byte the same. */
static size_t roundtrip(const struct clmsg *m)
{
        size_t len = 0, len2 = 0;
        assert_int_equal(clmsg_encode(m, buf, sizeof(buf), &len), 0);
        assert_true(len >= CLMSG_HDR_SIZE && len <= CLMSG_MAX_SIZE);
        struct clmsg *d = calloc(1, sizeof(*d));
        assert_int_equal(clmsg_decode(buf, len, d), 0);
        assert_same(m, d);
        static uint8_t again[CLMSG_MAX_SIZE];
        assert_int_equal(clmsg_encode(d, again, sizeof(again), &len2), 0);
        assert_int_equal(len, len2);
        assert_memory_equal(buf, again, len);
        free(d);
        return len;
}

static void test_state_roundtrip(void **state)
{
        (void)state;
        size_t sizes[] = { 0, 1, 4, CLMSG_MAX_VMS };
        for (size_t i = 0; i < 4; i++) {
                struct clmsg *m = state_msg(sizes[i], i == 2 ? NAME32 : "a");
                assert_int_equal(roundtrip(m), CLMSG_HDR_SIZE + 4 + sizes[i] * CLMSG_VM_ENTRY);
                free(m);
        }
        /* the layout clmsg.h draws, at fixed offsets */
        struct clmsg *m = state_msg(1, "a");
        size_t len;
        assert_int_equal(clmsg_encode(m, buf, sizeof(buf), &len), 0);
        assert_memory_equal(buf, "HVCL\x01\x00\x01\x00", 8);
        assert_int_equal(buf[8], 4 + CLMSG_VM_ENTRY);
        assert_memory_equal(buf + 20, "a\0", 2);
        assert_int_equal(buf[CLMSG_HDR_SIZE], 1);
        assert_memory_equal(buf + CLMSG_HDR_SIZE + 4, "vm-0", 5);
        free(m);
}

static void test_ref_roundtrip(void **state)
{
        (void)state;
        enum clmsg_type types[] = { CLMSG_RELINQUISH, CLMSG_ASK_DISCARD, CLMSG_DISCARDED };
        for (size_t i = 0; i < 3; i++) {
                struct clmsg *m = ref_msg(types[i], "web01", "b");
                assert_int_equal(roundtrip(m), CLMSG_HDR_SIZE + 72);
                strcpy(m->vm, NAME32);
                strcpy(m->target, "x");
                roundtrip(m);
                strcpy(m->vm, "w");
                strcpy(m->target, NAME32);
                roundtrip(m);
                free(m);
        }
        struct clmsg *m = ref_msg(CLMSG_FENCED, "", "b");
        roundtrip(m);
        free(m);
        assert_string_equal(clmsg_type_name(CLMSG_STATE), "state");
        assert_string_equal(clmsg_type_name(CLMSG_FENCED), "fenced");
        assert_string_equal(clmsg_type_name((enum clmsg_type)99), "?");
}

/* A set of encoded records covering every type, names of 1 and 32 chars. */
static size_t sample(int i, uint8_t *out)
{
        struct clmsg *m;
        switch (i) {
        case 0: m = state_msg(0, "a"); break;
        case 1: m = state_msg(1, NAME32); break;
        case 2: m = state_msg(3, "b"); break;
        case 3: m = ref_msg(CLMSG_RELINQUISH, "web01", "b"); break;
        case 4: m = ref_msg(CLMSG_ASK_DISCARD, NAME32, NAME32); break;
        case 5: m = ref_msg(CLMSG_DISCARDED, "w", "a"); break;
        case 6: m = ref_msg(CLMSG_FENCED, "", "b"); break;
        case 7: m = state_msg(CLMSG_MAX_VMS, "a"); break;
        case 8: m = sw_msg(CLMSG_SWITCHOVER, "a", "", ""); break;
        case 9: m = sw_msg(CLMSG_SWITCHOVER_STATUS, "", "b", "another switchover is running"); break;
        default: return 0;
        }
        size_t len;
        assert_int_equal(clmsg_encode(m, out, CLMSG_MAX_SIZE, &len), 0);
        free(m);
        return len;
}

#define N_SAMPLES 10

/* decode must refuse and leave *ret untouched (set only on success) */
static void assert_refused(const uint8_t *rec, size_t len)
{
        static struct clmsg out;
        memset(&out, 0x5a, sizeof(out));
        assert_int_equal(clmsg_decode(rec, len, &out), -EBADMSG);
        const uint8_t *p = (const uint8_t *)&out;
        for (size_t i = 0; i < sizeof(out); i++)
                if (p[i] != 0x5a)
                        fail_msg("decode wrote its output on failure (byte %zu)", i);
}

/* Every byte changed to every other value (the 64-VM record: to 4 values,
 * for time): refused. Header bytes included: the sender is checksummed. */
static void test_every_byte_flip_refused(void **state)
{
        (void)state;
        static uint8_t rec[CLMSG_MAX_SIZE];
        static const uint8_t few[] = { 0x01, 0x20, 0x80, 0xff };
        struct clmsg out;
        for (int s = 0; s < N_SAMPLES; s++) {
                size_t len = sample(s, rec);
                assert_int_equal(clmsg_decode(rec, len, &out), 0);
                bool all = len < 1000;
                for (size_t pos = 0; pos < len; pos++) {
                        for (unsigned k = 0; k < (all ? 255u : sizeof(few)); k++) {
                                uint8_t x = all ? (uint8_t)(k + 1) : few[k];
                                rec[pos] ^= x;
                                if (clmsg_decode(rec, len, &out) != -EBADMSG)
                                        fail_msg("sample %d: byte %zu ^ 0x%02x accepted", s, pos, x);
                                rec[pos] ^= x;
                        }
                }
                assert_int_equal(clmsg_decode(rec, len, &out), 0);
        }
}

static void test_truncated_or_extended_refused(void **state)
{
        (void)state;
        static uint8_t rec[CLMSG_MAX_SIZE + 1];
        for (int s = 0; s < N_SAMPLES; s++) {
                size_t len = sample(s, rec);
                for (size_t l = 0; l < len; l++)
                        assert_refused(rec, l);
                /* cut at an entry boundary with length and checksum made to fit */
                if (s == 2) {
                        size_t l = len - CLMSG_VM_ENTRY;
                        put32le(rec + 8, (uint32_t)(l - CLMSG_HDR_SIZE));
                        reseal(rec, l);
                        assert_refused(rec, l); /* count says 3, 2 entries follow */
                        len = sample(s, rec);
                }
                rec[len] = 0;
                assert_refused(rec, len + 1);
                assert_refused(NULL, 0);
        }
}

/* Sealed lies: the checksum fits, a field does not. */
static void test_header_lies_refused(void **state)
{
        (void)state;
        static uint8_t rec[CLMSG_MAX_SIZE];
        size_t len = sample(3, rec);
        struct clmsg out;
        reseal(rec, len);
        assert_int_equal(clmsg_decode(rec, len, &out), 0); /* reseal matches the format */

        static const struct { size_t off; uint8_t v; } lies[] = {
                { 0, 'X' },     /* magic */
                { 4, 0 },       /* version 0 */
                { 4, 2 },       /* version 2 */
                { 5, 1 },       /* version 257 */
                { 6, 0 },       /* type 0 */
                { 6, 6 },       /* type 6 */
                { 7, 1 },       /* type 259 */
                { 8, 71 },      /* length one short */
                { 8, 73 },      /* length one long */
                { 11, 0x80 },   /* length huge */
                { 20, 0 },      /* empty sender */
                { 20, '-' },    /* sender starting with '-' */
                { 20, '.' },    /* or '.' */
                { 21, '/' },    /* invalid char */
                { 22, ' ' },    /* invalid char */
                { 23, 0xc3 },   /* non-ASCII */
                { 27, 'x' },    /* a byte after the sender's NUL ("host-a") */
                { 51, 1 },      /* the last padding byte */
        };
        for (size_t i = 0; i < sizeof(lies) / sizeof(lies[0]); i++) {
                len = sample(3, rec);
                rec[lies[i].off] = lies[i].v;
                reseal(rec, len);
                if (clmsg_decode(rec, len, &out) != -EBADMSG)
                        fail_msg("lie %zu (byte %zu = 0x%02x) accepted", i, lies[i].off, lies[i].v);
        }
        /* a type that exists but does not fit the payload */
        len = sample(3, rec);
        rec[6] = CLMSG_STATE;
        reseal(rec, len);
        assert_refused(rec, len);
        len = sample(0, rec);
        rec[6] = CLMSG_RELINQUISH;
        reseal(rec, len);
        assert_refused(rec, len);
}

/* Make the length field and the checksum fit a record of len bytes. */
static void seal_len(uint8_t *rec, size_t len)
{
        put32le(rec + 8, (uint32_t)(len - CLMSG_HDR_SIZE));
        reseal(rec, len);
}

static void test_state_lies_refused(void **state)
{
        (void)state;
        static uint8_t rec[CLMSG_MAX_SIZE + CLMSG_VM_ENTRY];
        uint8_t *pl = rec + CLMSG_HDR_SIZE;
        size_t len;
        /* counts that lie about the entries that follow */
        static const uint32_t counts[] = { 0, 2, 4, CLMSG_MAX_VMS, CLMSG_MAX_VMS + 1, UINT32_MAX };
        for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
                len = sample(2, rec); /* 3 entries */
                put32le(pl, counts[i]);
                seal_len(rec, len);
                assert_refused(rec, len);
        }
        /* 65 entries, count and length agreeing: too many */
        len = sample(7, rec);
        memcpy(rec + len, pl + 4, CLMSG_VM_ENTRY);
        len += CLMSG_VM_ENTRY;
        put32le(pl, CLMSG_MAX_VMS + 1);
        seal_len(rec, len);
        assert_refused(rec, len);
        /* a payload too short for its count */
        len = sample(0, rec);
        seal_len(rec, len - 1);
        assert_refused(rec, len - 1);

        /* entry fields: the second entry (NAME32, peer "b") of sample 2 */
        uint8_t *e = pl + 4 + CLMSG_VM_ENTRY;
        static const struct { size_t off; uint8_t v; } lies[] = {
                { 0, 0 },                      /* empty VM name */
                { 0, '.' },                    /* VM name starting with '.' */
                { 5, '!' },                    /* invalid char */
                { 31, 0x7f },                  /* DEL */
                { 32, PO_VM_ACTIVATING + 1 },  /* state out of range */
                { 32, 0xff },
                { 33, PO_EXIT_LAST + 1 },     /* exit out of range */
                { 34, 1 },                     /* reserved u16 */
                { 35, 0x80 },
                { 36, 1 },                     /* reserved u32 */
                { 39, 0x80 },
                { 56, '-' },                   /* peer starting with '-' */
                { 57, ':' },                   /* peer "b:" */
                { 58, 'c' },                   /* a byte after the peer's NUL */
                { 87, 1 },                     /* the entry's last byte */
        };
        for (size_t i = 0; i < sizeof(lies) / sizeof(lies[0]); i++) {
                len = sample(2, rec);
                e[lies[i].off] = lies[i].v;
                reseal(rec, len);
                if (clmsg_decode(rec, len, &(struct clmsg){ 0 }) != -EBADMSG)
                        fail_msg("entry lie %zu (byte %zu = 0x%02x) accepted", i, lies[i].off,
                                 lies[i].v);
        }
        /* the same byte changes where they are legal are accepted: the
         * lies above fail for their value, not for being a change */
        len = sample(2, rec);
        e[33] = PO_EXIT_STALE;
        e[5] = 'Z';
        e[57] = 'c';
        reseal(rec, len);
        struct clmsg out;
        assert_int_equal(clmsg_decode(rec, len, &out), 0);
        assert_int_equal(out.vms[1].last_exit, PO_EXIT_STALE);
        assert_string_equal(out.vms[1].peer, "bc");
}

static void test_ref_lies_refused(void **state)
{
        (void)state;
        static uint8_t rec[CLMSG_MAX_SIZE];
        uint8_t *pl = rec + CLMSG_HDR_SIZE;
        size_t len;
        struct clmsg out;
        /* the VM may be empty only in FENCED; the target never */
        len = sample(3, rec);
        memset(pl, 0, CLMSG_NAME);
        reseal(rec, len);
        assert_refused(rec, len);
        len = sample(6, rec);
        memset(pl + 40, 0, CLMSG_NAME);
        reseal(rec, len);
        assert_refused(rec, len);
        len = sample(3, rec);
        pl[40 + 1] = 'x'; /* "bx": still valid */
        reseal(rec, len);
        assert_int_equal(clmsg_decode(rec, len, &out), 0);
        assert_string_equal(out.target, "bx");
        len = sample(3, rec);
        pl[40 + 5] = 'x'; /* after the NUL */
        reseal(rec, len);
        assert_refused(rec, len);
        len = sample(3, rec);
        pl[2] = '*'; /* "we*01" */
        reseal(rec, len);
        assert_refused(rec, len);
        /* a payload one byte longer or shorter, length made to fit */
        len = sample(3, rec);
        rec[len] = 0;
        seal_len(rec, len + 1);
        assert_refused(rec, len + 1);
        seal_len(rec, len - 1);
        assert_refused(rec, len - 1);
}

static void test_switchover_roundtrip_and_lies(void **state)
{
        (void)state;
        struct clmsg *m = sw_msg(CLMSG_SWITCHOVER, "a", "c", "");
        assert_int_equal(roundtrip(m), CLMSG_HDR_SIZE + 112);
        strcpy(m->to, NAME32);
        roundtrip(m);
        free(m);
        m = sw_msg(CLMSG_SWITCHOVER_STATUS, "", "b", "");
        assert_int_equal(roundtrip(m), CLMSG_HDR_SIZE + 216);
        m->phase = CLMSG_SW_DONE;
        m->status = 0;
        memset(m->text, 'x', CLMSG_TEXT - 1);
        m->text[CLMSG_TEXT - 1] = 0;
        roundtrip(m);
        /* encode refuses what decode would */
        size_t len;
        m->phase = (enum clmsg_phase)4;
        assert_int_equal(clmsg_encode(m, buf, sizeof(buf), &len), -EINVAL);
        m->phase = CLMSG_SW_STARTED;
        strcpy(m->vm, "");
        assert_int_equal(clmsg_encode(m, buf, sizeof(buf), &len), -EINVAL);
        free(m);
        m = sw_msg(CLMSG_SWITCHOVER, "", "", ""); /* a request names its owner */
        assert_int_equal(clmsg_encode(m, buf, sizeof(buf), &len), -EINVAL);
        free(m);
        assert_string_equal(clmsg_type_name(CLMSG_SWITCHOVER_STATUS), "switchover-status");

        /* sealed lies */
        static uint8_t rec[CLMSG_MAX_SIZE];
        uint8_t *pl = rec + CLMSG_HDR_SIZE;
        len = sample(9, rec);
        pl[108] = 0; /* phase */
        reseal(rec, len);
        assert_refused(rec, len);
        len = sample(9, rec);
        pl[109] = 1; /* reserved */
        reseal(rec, len);
        assert_refused(rec, len);
        len = sample(9, rec);
        memset(pl + 120, 'y', CLMSG_TEXT); /* no NUL */
        reseal(rec, len);
        assert_refused(rec, len);
        len = sample(9, rec);
        pl[120 + CLMSG_TEXT - 1] = 'z'; /* after the NUL */
        reseal(rec, len);
        assert_refused(rec, len);
        len = sample(9, rec);
        pl[120] = '\n'; /* not printable */
        reseal(rec, len);
        assert_refused(rec, len);
        len = sample(8, rec);
        pl[108] = 1; /* the request's reserved u32 */
        reseal(rec, len);
        assert_refused(rec, len);
        len = sample(8, rec);
        memset(pl + 72, 0, CLMSG_NAME);
        pl[72] = '/'; /* a bad "to" name */
        reseal(rec, len);
        assert_refused(rec, len);
        len = sample(8, rec);
        rec[len] = 0;
        seal_len(rec, len + 1);
        assert_refused(rec, len + 1);
}

static void test_encode_refuses(void **state)
{
        (void)state;
        size_t len = 12345;
        struct clmsg *m = state_msg(CLMSG_MAX_VMS, "a");
        m->n_vms = CLMSG_MAX_VMS + 1;
        assert_int_equal(clmsg_encode(m, buf, sizeof(buf), &len), -E2BIG);
        m->n_vms = CLMSG_MAX_VMS;
        assert_int_equal(clmsg_encode(m, buf, CLMSG_MAX_SIZE - 1, &len), -ENOBUFS);
        assert_int_equal(len, 12345); /* ret_len set only on success */
        free(m);

        /* 33-char names (the field holds 32: no NUL in a CFG_NAME_MAX array) */
        m = state_msg(2, "a");
        memset(m->sender, 'x', CFG_NAME_MAX);
        assert_int_equal(clmsg_encode(m, buf, sizeof(buf), &len), -ENAMETOOLONG);
        strcpy(m->sender, "a");
        memset(m->vms[1].name, 'x', CFG_NAME_MAX);
        assert_int_equal(clmsg_encode(m, buf, sizeof(buf), &len), -ENAMETOOLONG);
        strcpy(m->vms[1].name, "v1");
        memset(m->vms[1].peer, 'x', CFG_NAME_MAX);
        assert_int_equal(clmsg_encode(m, buf, sizeof(buf), &len), -ENAMETOOLONG);
        strcpy(m->vms[1].peer, "b");
        assert_int_equal(clmsg_encode(m, buf, sizeof(buf), &len), 0);
        /* names the decoder would refuse, states it does not know */
        strcpy(m->vms[1].peer, "b c");
        assert_int_equal(clmsg_encode(m, buf, sizeof(buf), &len), -EINVAL);
        strcpy(m->vms[1].peer, "");
        strcpy(m->vms[1].name, "");
        assert_int_equal(clmsg_encode(m, buf, sizeof(buf), &len), -EINVAL);
        strcpy(m->vms[1].name, "v1");
        strcpy(m->sender, "");
        assert_int_equal(clmsg_encode(m, buf, sizeof(buf), &len), -EINVAL);
        strcpy(m->sender, "-a");
        assert_int_equal(clmsg_encode(m, buf, sizeof(buf), &len), -EINVAL);
        strcpy(m->sender, "a");
        m->vms[0].state = (enum po_vm_state)(PO_VM_ACTIVATING + 1);
        assert_int_equal(clmsg_encode(m, buf, sizeof(buf), &len), -EINVAL);
        m->vms[0].state = PO_VM_DEFINED;
        m->vms[0].last_exit = (enum po_exit)(PO_EXIT_LAST + 1);
        assert_int_equal(clmsg_encode(m, buf, sizeof(buf), &len), -EINVAL);
        m->vms[0].last_exit = PO_EXIT_NONE;
        m->type = (enum clmsg_type)0;
        assert_int_equal(clmsg_encode(m, buf, sizeof(buf), &len), -EINVAL);
        m->type = (enum clmsg_type)(CLMSG_FENCED + 1);
        assert_int_equal(clmsg_encode(m, buf, sizeof(buf), &len), -EINVAL);
        free(m);

        m = ref_msg(CLMSG_RELINQUISH, "", "b");
        assert_int_equal(clmsg_encode(m, buf, sizeof(buf), &len), -EINVAL);
        strcpy(m->vm, "web01");
        memset(m->target, 'y', CFG_NAME_MAX);
        assert_int_equal(clmsg_encode(m, buf, sizeof(buf), &len), -ENAMETOOLONG);
        strcpy(m->target, "");
        assert_int_equal(clmsg_encode(m, buf, sizeof(buf), &len), -EINVAL);
        strcpy(m->target, "b");
        assert_int_equal(clmsg_encode(m, buf, CLMSG_HDR_SIZE + 71, &len), -ENOBUFS);
        assert_int_equal(clmsg_encode(m, buf, CLMSG_HDR_SIZE + 72, &len), 0);
        assert_int_equal(len, CLMSG_HDR_SIZE + 72);
        free(m);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_state_roundtrip),
                cmocka_unit_test(test_ref_roundtrip),
                cmocka_unit_test(test_every_byte_flip_refused),
                cmocka_unit_test(test_truncated_or_extended_refused),
                cmocka_unit_test(test_header_lies_refused),
                cmocka_unit_test(test_state_lies_refused),
                cmocka_unit_test(test_ref_lies_refused),
                cmocka_unit_test(test_encode_refuses),
                cmocka_unit_test(test_switchover_roundtrip_and_lies),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
