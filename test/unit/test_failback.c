/* test_failback: the failback decision (failback/plan.c), without a
 * cluster: one table per rule of plan.h (F1-F7). Each row is a situation
 * and the exact actions it must produce ("" = none); a row that shows the
 * rule's action without the condition that forbids it sits next to it, so
 * every table fails when its rule is broken or made too strict. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "controller.h"
#include "plan.h"

/* table rows leave the optional columns out */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

#define NOW 1000000ull

/* ------------------------------------------------------------ helpers -- */

static struct fb_host *host(struct fb_input *in, const char *name, bool member, unsigned n_vms)
{
        struct fb_host *h = &in->hosts[in->n_hosts++];
        memset(h, 0, sizeof(*h));
        snprintf(h->name, sizeof(h->name), "%s", name);
        h->member = member;
        h->agent_up = member;
        h->n_vms = n_vms;
        return h;
}

static struct fb_host *spare(struct fb_input *in, const char *name, bool member)
{
        struct fb_host *h = host(in, name, member, 0);
        h->spare = true;
        h->spare_state = member ? FB_SPARE_UP : FB_SPARE_ASLEEP;
        h->boot_timeout_s = 300;
        return h;
}

/* self "a"; hosts a (self), b, c all members; VM web runs here. */
static struct fb_vm *base(struct fb_input *in, enum fb_vm_state st, const char *peer)
{
        memset(in, 0, sizeof(*in));
        in->now_ms = NOW;
        snprintf(in->self, sizeof(in->self), "a");
        in->quorate = true;
        host(in, "a", true, 1);
        host(in, "b", true, 0);
        host(in, "c", true, 0);
        struct fb_vm *v = &in->vms[in->n_vms++];
        memset(v, 0, sizeof(*v));
        snprintf(v->name, sizeof(v->name), "web");
        snprintf(v->peer, sizeof(v->peer), "%s", peer);
        v->state = st;
        v->generation = 3;
        v->reprotect_auto = true;
        v->failback = FB_FAILBACK_MANUAL;
        v->failback_delay_s = 60;
        v->spare_wait_s = 30;
        const char *hl[] = { "a", "b", "c" };
        for (unsigned i = 0; i < 3; i++)
                snprintf(v->hosts[i], CFG_NAME_MAX, "%s", hl[i]);
        v->n_hosts = 3;
        if (st == FB_VM_UNPROTECTED || st == FB_VM_RETRYING)
                v->unprotected_since_ms = NOW - 1000;
        if (st == FB_VM_PROTECTED)
                v->standby_committed = true;
        return v;
}

static struct fb_host *hostn(struct fb_input *in, const char *name)
{
        for (size_t i = 0; i < in->n_hosts; i++)
                if (!strcmp(in->hosts[i].name, name))
                        return &in->hosts[i];
        fail_msg("no host %s", name);
        return NULL;
}

/* "protect:web:b wake:s1#2" — the actions, in order. */
static const char *actions(const struct fb_output *o)
{
        static char buf[1024];
        size_t n = 0;
        buf[0] = 0;
        for (size_t i = 0; i < o->n_actions; i++) {
                const struct fb_action *x = &o->actions[i];
                n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s%s", n ? " " : "",
                                      fb_act_name(x->type));
                if (x->vm[0])
                        n += (size_t)snprintf(buf + n, sizeof(buf) - n, ":%s", x->vm);
                if (x->host[0])
                        n += (size_t)snprintf(buf + n, sizeof(buf) - n, ":%s", x->host);
                if (x->type == FB_WAKE)
                        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "#%u", x->attempt);
        }
        return buf;
}

typedef void (*setup_fn)(struct fb_input *in);

struct row {
        const char *what;
        setup_fn setup;
        const char *want;
        uint64_t wake_ms; /* 0 = not checked */
        const char *note; /* substring of VM 0's note; NULL = not checked */
};

static void run_table(const struct row *rows, size_t n)
{
        static struct fb_input in;
        static struct fb_output out;
        for (size_t i = 0; i < n; i++) {
                rows[i].setup(&in);
                fb_plan(&in, &out);
                if (strcmp(actions(&out), rows[i].want))
                        fail_msg("%s: got '%s', want '%s'", rows[i].what, actions(&out),
                                 rows[i].want);
                if (rows[i].wake_ms && out.wake_ms != rows[i].wake_ms)
                        fail_msg("%s: wake at %llu, want %llu", rows[i].what,
                                 (unsigned long long)out.wake_ms,
                                 (unsigned long long)rows[i].wake_ms);
                if (rows[i].note && !strstr(out.note[0], rows[i].note))
                        fail_msg("%s: note '%s' lacks '%s'", rows[i].what, out.note[0],
                                 rows[i].note);
        }
}

#define ROWS(t) run_table(t, sizeof(t) / sizeof(t[0]))

/* ---------------------------------------------------------------- F1 -- */

static void f1_owner(struct fb_input *in) { base(in, FB_VM_UNPROTECTED, ""); }
static void f1_newer(struct fb_input *in)
{
        base(in, FB_VM_UNPROTECTED, "")->newer_generation = 4;
}
static void f1_older_elsewhere(struct fb_input *in)
{
        base(in, FB_VM_UNPROTECTED, "")->newer_generation = 2;
}
static void f1_not_here(struct fb_input *in) { base(in, FB_VM_OTHER, ""); }

static void test_f1_source(void **state)
{
        static const struct row t[] = {
                { "the owner protects towards the returning host", f1_owner, "protect:web:b" },
                { "a newer generation elsewhere: not the owner", f1_newer, "", 0, "not the owner" },
                { "an older copy elsewhere does not stop the owner", f1_older_elsewhere,
                  "protect:web:b" },
                { "a VM not running here is never planned", f1_not_here, "" },
        };
        ROWS(t);
}

/* ---------------------------------------------------------------- F2 -- */

static void f2_busy(struct fb_input *in)
{
        base(in, FB_VM_UNPROTECTED, "");
        in->failover_busy = true;
        in->failover_why = "host c left, not fenced yet";
}
static void f2_noquorum(struct fb_input *in)
{
        base(in, FB_VM_UNPROTECTED, "");
        in->quorate = false;
}
static void f2_failback_busy(struct fb_input *in)
{
        struct fb_vm *v = base(in, FB_VM_PROTECTED, "b");
        v->failback = FB_FAILBACK_AUTO;
        snprintf(v->preferred, sizeof(v->preferred), "b");
        v->preferred_since_ms = NOW - 61000;
        in->failover_busy = true;
}
static void f2_failback_free(struct fb_input *in)
{
        f2_failback_busy(in);
        in->failover_busy = false;
}
static void f2_spare_busy(struct fb_input *in)
{
        base(in, FB_VM_UNPROTECTED, "");
        hostn(in, "b")->member = hostn(in, "c")->member = false;
        in->vms[0].unprotected_since_ms = NOW - 31000;
        spare(in, "s1", false);
        in->failover_busy = true;
}
static void f2_spare_free(struct fb_input *in)
{
        f2_spare_busy(in);
        in->failover_busy = false;
}

static void test_f2_failures_first(void **state)
{
        static const struct row t[] = {
                { "failover busy: no protect", f2_busy, "", 0, "host c left, not fenced yet" },
                { "no quorum: nothing", f2_noquorum, "", 0, "no quorum" },
                { "failover busy: no failback", f2_failback_busy, "" },
                { "... which happens once it is not", f2_failback_free, "switchover:web:b" },
                { "failover busy: no spare wake", f2_spare_busy, "" },
                { "... which happens once it is not", f2_spare_free, "wake:s1#1" },
        };
        ROWS(t);
}

/* ---------------------------------------------------------------- F3 -- */

static void f3_ordered_skip(struct fb_input *in)
{
        base(in, FB_VM_UNPROTECTED, "");
        hostn(in, "b")->member = false;
}
static void f3_agent_down(struct fb_input *in)
{
        base(in, FB_VM_UNPROTECTED, "");
        hostn(in, "b")->agent_up = false;
}
static void f3_none(struct fb_input *in)
{
        base(in, FB_VM_UNPROTECTED, "");
        hostn(in, "b")->member = hostn(in, "c")->member = false;
}
static void f3_fewest(struct fb_input *in)
{
        base(in, FB_VM_UNPROTECTED, "")->fewest_vms = true;
        hostn(in, "b")->n_vms = 3;
        hostn(in, "c")->n_vms = 1;
}
static void f3_fewest_tie(struct fb_input *in)
{
        base(in, FB_VM_UNPROTECTED, "")->fewest_vms = true;
        hostn(in, "b")->n_vms = 2;
        hostn(in, "c")->n_vms = 2;
}
static void f3_order_list(struct fb_input *in)
{
        struct fb_vm *v = base(in, FB_VM_UNPROTECTED, "");
        snprintf(v->hosts[0], CFG_NAME_MAX, "c");
        snprintf(v->hosts[2], CFG_NAME_MAX, "a");
}
static void f3_spare_last(struct fb_input *in)
{
        base(in, FB_VM_UNPROTECTED, "");
        spare(in, "s1", true)->n_vms = 0;
        hostn(in, "b")->n_vms = 9;
        hostn(in, "c")->member = false;
        in->vms[0].fewest_vms = true; /* even with fewer VMs, the spare comes last */
}
static void f3_spare_only(struct fb_input *in)
{
        f3_none(in);
        spare(in, "s1", true);
}
static void f3_manual(struct fb_input *in)
{
        base(in, FB_VM_UNPROTECTED, "")->reprotect_auto = false;
}
static void f3_operator(struct fb_input *in)
{
        struct fb_vm *v = base(in, FB_VM_UNPROTECTED, "");
        v->operator_unprotected = true;
        v->spare_wait_s = 1; /* nor is a spare woken for it */
        v->unprotected_since_ms = 1;
}
static void f3_retry_peer_up(struct fb_input *in) { base(in, FB_VM_RETRYING, "b"); }
static void f3_retry_peer_gone(struct fb_input *in)
{
        base(in, FB_VM_RETRYING, "b");
        hostn(in, "b")->member = false;
}
static void f3_retry_nobody(struct fb_input *in)
{
        f3_retry_peer_gone(in);
        hostn(in, "c")->member = false;
}
static void f3_syncing(struct fb_input *in) { base(in, FB_VM_SYNCING, "b"); }
static void f3_busy(struct fb_input *in) { base(in, FB_VM_UNPROTECTED, "")->busy = true; }

static void test_f3_reprotect(void **state)
{
        static const struct row t[] = {
                { "ordered: first member that is not self", f1_owner, "protect:web:b" },
                { "ordered: a non-member is skipped", f3_ordered_skip, "protect:web:c" },
                { "a member without havmsd is skipped", f3_agent_down, "protect:web:c" },
                { "no candidate: a note, no action", f3_none, "", 0, "no standby" },
                { "fewest-vms: fewest wins", f3_fewest, "protect:web:c" },
                { "fewest-vms: ties go by list order", f3_fewest_tie, "protect:web:b" },
                { "the list order is the VM's", f3_order_list, "protect:web:c" },
                { "spares come after regular hosts", f3_spare_last, "protect:web:b" },
                { "a spare when nothing else", f3_spare_only, "protect:web:s1" },
                { "reprotect = manual: a note only", f3_manual, "", 0,
                  "`havmsctl protect web --peer b`" },
                { "an operator's unprotect is respected", f3_operator, "", 0,
                  "unprotected by the operator" },
                { "retrying a member: checkpointd reconnects", f3_retry_peer_up, "", 0,
                  "connecting to standby b" },
                { "retrying a dead standby while c could: unprotect", f3_retry_peer_gone,
                  "unprotect:web:b" },
                { "retrying with nobody else: wait", f3_retry_nobody, "" },
                { "syncing: nothing", f3_syncing, "" },
                { "an action in flight: nothing", f3_busy, "" },
        };
        ROWS(t);
}

/* ---------------------------------------------------------------- F4 -- */

static void check_to(struct fb_input *in, const char *to, int want, const char *why_part)
{
        char why[256] = "";
        int r = fb_switchover_check(in, 0, to, why, sizeof(why));
        if (r != want)
                fail_msg("check to '%s': %d (%s), want %d", to, r, why, want);
        if (why_part && !strstr(why, why_part))
                fail_msg("check to '%s': '%s' lacks '%s'", to, why, why_part);
}

static void test_f4_switchover_check(void **state)
{
        static struct fb_input in;
        base(&in, FB_VM_PROTECTED, "b");
        check_to(&in, "", 0, NULL);
        check_to(&in, "b", 0, NULL);
        check_to(&in, "c", -EINVAL, "c is not the standby of web (standby: b)");
        in.vms[0].standby_committed = false;
        check_to(&in, "b", -EBUSY, "has not announced a committed replica");
        in.vms[0].standby_committed = true;
        in.switchover_running = true;
        check_to(&in, "", -EBUSY, "another switchover is running");
        in.switchover_running = false;
        in.failover_busy = true;
        check_to(&in, "", -EBUSY, "a failure is being handled");
        in.failover_busy = false;
        hostn(&in, "b")->agent_up = false;
        check_to(&in, "", -EBUSY, "not a member with havmsd up");
        hostn(&in, "b")->agent_up = true;
        in.vms[0].busy = true;
        check_to(&in, "", -EBUSY, "in flight");
        base(&in, FB_VM_SYNCING, "b");
        check_to(&in, "", -EINVAL, "web is not protected (it is resyncing)");
        base(&in, FB_VM_UNPROTECTED, "");
        check_to(&in, "b", -EINVAL, "is not protected");
        base(&in, FB_VM_OTHER, "");
        check_to(&in, "", -ENOENT, "does not run on a");
        base(&in, FB_VM_PROTECTED, "b")->newer_generation = 9;
        check_to(&in, "", -ESTALE, "newer generation");
}

/* ---------------------------------------------------------------- F5 -- */

static struct fb_vm *f5(struct fb_input *in, enum fb_failback fb, uint64_t since_ago_ms)
{
        struct fb_vm *v = base(in, FB_VM_PROTECTED, "b");
        v->failback = fb;
        snprintf(v->preferred, sizeof(v->preferred), "b");
        v->preferred_since_ms = NOW - since_ago_ms;
        return v;
}
static void f5_early(struct fb_input *in) { f5(in, FB_FAILBACK_AUTO, 59000); }
static void f5_due(struct fb_input *in) { f5(in, FB_FAILBACK_AUTO, 60000); }
static void f5_manual(struct fb_input *in) { f5(in, FB_FAILBACK_MANUAL, 600000); }
static void f5_off(struct fb_input *in) { f5(in, FB_FAILBACK_OFF, 600000); }
static void f5_other_running(struct fb_input *in)
{
        f5_due(in);
        in->switchover_running = true;
}
static void f5_uncommitted(struct fb_input *in)
{
        f5(in, FB_FAILBACK_AUTO, 600000)->standby_committed = false;
}
static void f5_not_preferred(struct fb_input *in)
{
        snprintf(f5(in, FB_FAILBACK_AUTO, 600000)->peer, CFG_NAME_MAX, "c");
}
static void f5_self_preferred(struct fb_input *in)
{
        snprintf(f5(in, FB_FAILBACK_AUTO, 600000)->preferred, CFG_NAME_MAX, "a");
}
static void f5_two_due(struct fb_input *in)
{
        f5_due(in);
        in->vms[1] = in->vms[0];
        snprintf(in->vms[1].name, CFG_NAME_MAX, "db");
        in->n_vms = 2;
}
static void f5_not_since(struct fb_input *in) { f5(in, FB_FAILBACK_AUTO, NOW); }

static void test_f5_failback(void **state)
{
        static const struct row t[] = {
                { "auto, before the delay: wait", f5_early, "", NOW + 1000, "failing back to b in 1 s" },
                { "auto, delay over: switch", f5_due, "switchover:web:b" },
                { "manual: pending note only", f5_manual, "", 0, "pending (failback = manual)" },
                { "off: nothing, no note", f5_off, "", 0, "" },
                { "another switchover runs: wait", f5_other_running, "", 0, "another switchover" },
                { "no committed replica: wait", f5_uncommitted, "" },
                { "the standby is not the preferred host", f5_not_preferred, "" },
                { "already on the preferred host", f5_self_preferred, "" },
                { "two VMs due: one switchover at a time", f5_two_due, "switchover:web:b" },
                { "preferred_since unknown (0): wait", f5_not_since, "" },
        };
        ROWS(t);
        static struct fb_input in;
        static struct fb_output out;
        f5_manual(&in);
        fb_plan(&in, &out);
        assert_true(out.failback_pending[0]);
        f5_off(&in);
        fb_plan(&in, &out);
        assert_false(out.failback_pending[0]);
}

/* ---------------------------------------------------------------- F6 -- */

static struct fb_vm *f6(struct fb_input *in, uint64_t without_ms)
{
        struct fb_vm *v = base(in, FB_VM_UNPROTECTED, "");
        hostn(in, "b")->member = hostn(in, "c")->member = false;
        hostn(in, "b")->agent_up = hostn(in, "c")->agent_up = false;
        v->unprotected_since_ms = NOW - without_ms;
        spare(in, "s1", false);
        spare(in, "s2", false);
        return v;
}
static void f6_early(struct fb_input *in) { f6(in, 29000); }
static void f6_due(struct fb_input *in) { f6(in, 30000); }
static void f6_never(struct fb_input *in) { f6(in, 999000)->spare_wait_s = 0; }
static void f6_regular_back(struct fb_input *in)
{
        f6_due(in);
        hostn(in, "c")->member = hostn(in, "c")->agent_up = true;
}
static void f6_waking(struct fb_input *in, uint64_t first_ago, unsigned attempts)
{
        f6_due(in);
        struct fb_host *s = hostn(in, "s1");
        s->spare_state = FB_SPARE_WAKING;
        s->wake_first_ms = NOW - first_ago;
        s->wake_attempts = attempts;
        s->wake_last_ms = NOW - first_ago;
}
static void f6_retry_early(struct fb_input *in) { f6_waking(in, 4000, 1); }
static void f6_retry_due(struct fb_input *in) { f6_waking(in, 5000, 1); }
static void f6_retry_late(struct fb_input *in) { f6_waking(in, 100000, 6); }
static void f6_timeout(struct fb_input *in) { f6_waking(in, 300000, 9); }
static void f6_failed_recent(struct fb_input *in)
{
        f6_due(in);
        struct fb_host *s = hostn(in, "s1");
        s->spare_state = FB_SPARE_FAILED;
        s->failed_ms = NOW - 1000;
        s = hostn(in, "s2");
        s->spare_state = FB_SPARE_FAILED;
        s->failed_ms = NOW - 2000;
}
static void f6_failed_old(struct fb_input *in)
{
        f6_failed_recent(in);
        hostn(in, "s1")->failed_ms = NOW - FB_SPARE_RETRY_MS;
}
static void f6_booting(struct fb_input *in)
{
        f6_due(in);
        struct fb_host *s = hostn(in, "s1");
        s->member = true; /* joined, its havmsd not up yet */
        s->spare_state = FB_SPARE_UP;
}
static void f6_retrying_vm(struct fb_input *in)
{
        f6_due(in);
        in->vms[0].state = FB_VM_RETRYING;
        snprintf(in->vms[0].peer, CFG_NAME_MAX, "b");
}

static void test_f6_spare_wake(void **state)
{
        static const struct row t[] = {
                { "before spare_wait_s: wait", f6_early, "", NOW + 1000 },
                { "after spare_wait_s: wake the first spare", f6_due, "wake:s1#1" },
                { "spare_wait_s = 0: never", f6_never, "" },
                { "a regular host is back: protect, no wake", f6_regular_back, "protect:web:c" },
                { "back-off: second wake not before 5 s", f6_retry_early, "", NOW + 1000 },
                { "back-off: second wake at 5 s", f6_retry_due, "wake:s1#2" },
                { "back-off: every 60 s later on", f6_retry_late, "",
                  NOW - 100000 + (40 + 2 * 60) * 1000ull },
                { "boot_timeout_s: failed, the next spare is woken", f6_timeout,
                  "wake-failed:s1 wake:s2#1" },
                { "all failed recently: retried later", f6_failed_recent, "",
                  NOW - 2000 + FB_SPARE_RETRY_MS },
                { "a failed spare is woken again after the retry delay", f6_failed_old,
                  "wake:s1#1" },
                { "a spare that joined: wait for its havmsd", f6_booting, "" },
                { "a VM whose standby died for good wakes a spare too", f6_retrying_vm,
                  "wake:s1#1" },
        };
        ROWS(t);
        assert_int_equal(fb_wake_due_ms(0, 1), 0);
        assert_int_equal(fb_wake_due_ms(0, 2), 5000);
        assert_int_equal(fb_wake_due_ms(0, 3), 10000);
        assert_int_equal(fb_wake_due_ms(0, 4), 20000);
        assert_int_equal(fb_wake_due_ms(0, 5), 40000);
        assert_int_equal(fb_wake_due_ms(0, 6), 100000);
        assert_int_equal(fb_wake_due_ms(0, 7), 160000);
}

/* ---------------------------------------------------------------- F7 -- */

static void f7_on_spare(struct fb_input *in, bool hand_back, bool b_back)
{
        base(in, FB_VM_PROTECTED, "s1");
        hostn(in, "b")->member = hostn(in, "b")->agent_up = b_back;
        hostn(in, "c")->member = hostn(in, "c")->agent_up = false;
        struct fb_host *s = spare(in, "s1", true);
        s->hand_back = hand_back;
        s->n_vms = 1;
}
static void f7_handback(struct fb_input *in) { f7_on_spare(in, true, true); }
static void f7_keep(struct fb_input *in) { f7_on_spare(in, false, true); }
static void f7_not_back(struct fb_input *in) { f7_on_spare(in, true, false); }
static void f7_agent_not_up(struct fb_input *in)
{
        f7_handback(in);
        hostn(in, "b")->agent_up = false;
}
static void f7_idle_spare(struct fb_input *in)
{
        base(in, FB_VM_PROTECTED, "b");
        spare(in, "s1", true)->hand_back = true;
}
/* the reviewer's case: the decider (first by name) is not the owner, and
 * another member still re-syncs its VM: the spare stays on */
static void f7_other_owner_resyncing(struct fb_input *in)
{
        f7_idle_spare(in);
        for (size_t k = 0; k < in->n_hosts; k++)
                if (!strcmp(in->hosts[k].name, "b"))
                        in->hosts[k].unsettled = true;
}
static void f7_idle_spare_keep(struct fb_input *in)
{
        base(in, FB_VM_PROTECTED, "b");
        spare(in, "s1", true);
}
static void f7_idle_not_lowest(struct fb_input *in)
{
        f7_idle_spare(in);
        snprintf(in->self, sizeof(in->self), "b"); /* a sorts first and is up */
        in->vms[0].state = FB_VM_OTHER;
}
static void f7_idle_first_unheard(struct fb_input *in)
{
        f7_idle_not_lowest(in);
        hostn(in, "a")->agent_up = false; /* b just joined: a's havmsd not heard from yet */
}
static void f7_spare_busy(struct fb_input *in)
{
        f7_idle_spare(in);
        hostn(in, "s1")->n_vms = 1;
}
static void f7_protect_pending(struct fb_input *in)
{
        f7_idle_spare(in);
        in->vms[0].state = FB_VM_UNPROTECTED;
        in->vms[0].busy = true; /* a protect in flight: maybe towards the spare */
}

static void f7_resync_pending(struct fb_input *in)
{
        f7_idle_spare(in);
        in->vms[0].state = FB_VM_SYNCING; /* the resync to the returned host runs */
}

static void test_f7_hand_back(void **state)
{
        static const struct row t[] = {
                { "hand-back: the regular host returned", f7_handback, "unprotect:web:s1" },
                { "keep: the spare keeps the role", f7_keep, "" },
                { "hand-back, nobody returned", f7_not_back, "" },
                { "hand-back needs havmsd up on the returned host", f7_agent_not_up, "" },
                { "an idle handed-back spare is powered off", f7_idle_spare, "spare-off:s1" },
                { "keep: an idle spare stays on", f7_idle_spare_keep, "" },
                { "only the first regular host by name powers it off", f7_idle_not_lowest, "" },
                { "... even before that host's havmsd was heard from", f7_idle_first_unheard, "" },
                { "a spare that still backs something up stays on", f7_spare_busy, "" },
                { "a protect in flight keeps spares on", f7_protect_pending, "" },
                { "a resync without a committed standby yet keeps spares on", f7_resync_pending, "" },
                { "... also another member's (the decider is not the owner)",
                  f7_other_owner_resyncing, "" },
        };
        ROWS(t);
}

/* ------------------------------------------------- the controller -- */

static void test_controller_timers(void **state)
{
        static struct host_config h;
        static struct fb_controller c;
        static struct fb_input in;
        memset(&h, 0, sizeof(h));
        fbc_init(&c, &h);
        struct fb_vm *v = base(&in, FB_VM_RETRYING, "b");
        v->unprotected_since_ms = 0;
        snprintf(v->preferred, sizeof(v->preferred), "b");
        fbc_observe(&c, &in);
        assert_int_equal(in.vms[0].unprotected_since_ms, NOW); /* from the first sight */
        in.now_ms = NOW + 5000;
        in.vms[0].state = FB_VM_UNPROTECTED;
        fbc_observe(&c, &in);
        assert_int_equal(in.vms[0].unprotected_since_ms, NOW); /* still the same loss */
        in.vms[0].state = FB_VM_SYNCING;                       /* a resync does not reset */
        fbc_observe(&c, &in);
        assert_int_equal(in.vms[0].unprotected_since_ms, NOW);
        assert_int_equal(in.vms[0].preferred_since_ms, 0);
        in.now_ms = NOW + 9000;
        in.vms[0].state = FB_VM_PROTECTED;
        in.vms[0].standby_committed = true;
        fbc_observe(&c, &in);
        assert_int_equal(in.vms[0].unprotected_since_ms, 0);
        assert_int_equal(in.vms[0].preferred_since_ms, NOW + 9000);
        in.now_ms = NOW + 20000;
        fbc_observe(&c, &in);
        assert_int_equal(in.vms[0].preferred_since_ms, NOW + 9000); /* kept while it lasts */
        snprintf(in.vms[0].peer, CFG_NAME_MAX, "c");                /* another standby */
        fbc_observe(&c, &in);
        assert_int_equal(in.vms[0].preferred_since_ms, 0);
        /* a switchover of ours: the VM is busy, and one runs in the cluster */
        fbc_switch_begin(&c, "web", "c", "", 0, 3, NOW);
        in.vms[0].busy = false;
        in.switchover_running = false;
        fbc_observe(&c, &in);
        assert_true(in.vms[0].busy);
        assert_true(in.switchover_running);
        fbc_switch_end(&c, "web");
        assert_false(fbc_switch_running(&c, NOW));
        /* another host's: until it ends, that host leaves, or the timeout */
        fbc_remote_begin(&c, "b", "db", NOW);
        assert_true(fbc_switch_running(&c, NOW + 1000));
        assert_false(fbc_switch_running(&c, NOW + FBC_SWITCH_TIMEOUT_MS));
        fbc_remote_end(&c, "b", "db");
        assert_false(fbc_switch_running(&c, NOW));
        fbc_remote_begin(&c, "b", "db", NOW);
        fbc_remote_begin(&c, "c", "web", NOW);
        fbc_remote_end(&c, "b", NULL);
        assert_int_equal(c.n_remote, 1);
        assert_string_equal(c.remote[0].host, "c");
}

static void test_controller_spares(void **state)
{
        static struct host_config h;
        static struct fb_controller c;
        static struct fb_input in;
        memset(&h, 0, sizeof(h));
        h.n_spares = 2;
        snprintf(h.spares[0].name, CFG_NAME_MAX, "s1");
        snprintf(h.spares[0].on_return, sizeof(h.spares[0].on_return), "hand-back");
        h.spares[0].boot_timeout_s = 120;
        snprintf(h.spares[1].name, CFG_NAME_MAX, "s2");
        snprintf(h.spares[1].on_return, sizeof(h.spares[1].on_return), "keep");
        fbc_init(&c, &h);
        base(&in, FB_VM_UNPROTECTED, "");
        host(&in, "s1", false, 0); /* a corosync node; s2 is none */
        fbc_observe(&c, &in);
        assert_int_equal(in.n_hosts, 5); /* s2 appended, never a member */
        struct fb_host *s1 = hostn(&in, "s1"), *s2 = hostn(&in, "s2");
        assert_true(s1->spare && s2->spare);
        assert_true(s1->hand_back);
        assert_false(s2->hand_back);
        assert_false(s2->member);
        assert_int_equal(s1->boot_timeout_s, 120);
        assert_int_equal(s1->spare_state, FB_SPARE_ASLEEP);
        struct fb_action x = { .type = FB_WAKE, .host = "s1", .attempt = 1 };
        fbc_action_started(&c, &x, NOW);
        fbc_action_started(&c, &x, NOW + 5000);
        assert_int_equal(c.spares[0].state, FB_SPARE_WAKING);
        assert_int_equal(c.spares[0].attempts, 2);
        assert_int_equal(c.spares[0].first_ms, NOW);
        assert_int_equal(c.spares[0].last_ms, NOW + 5000);
        base(&in, FB_VM_UNPROTECTED, "");
        host(&in, "s1", true, 0); /* it joined */
        fbc_observe(&c, &in);
        assert_int_equal(c.spares[0].state, FB_SPARE_UP);
        assert_int_equal(hostn(&in, "s1")->spare_state, FB_SPARE_UP);
        base(&in, FB_VM_UNPROTECTED, "");
        host(&in, "s1", false, 0); /* powered off (hand-back) or lost */
        fbc_observe(&c, &in);
        assert_int_equal(c.spares[0].state, FB_SPARE_ASLEEP);
        assert_int_equal(c.spares[0].attempts, 0);
        x.type = FB_WAKE_FAILED;
        x.host[1] = '2';
        fbc_action_started(&c, &x, NOW + 7);
        assert_int_equal(c.spares[1].state, FB_SPARE_FAILED);
        assert_int_equal(c.spares[1].failed_ms, NOW + 7);
}

static void test_state_parse(void **state)
{
        assert_int_equal(fb_vm_state_parse("running"), FB_VM_UNPROTECTED);
        assert_int_equal(fb_vm_state_parse("degraded"), FB_VM_RETRYING);
        assert_int_equal(fb_vm_state_parse("connecting"), FB_VM_RETRYING);
        assert_int_equal(fb_vm_state_parse("held"), FB_VM_PROTECTED);
        assert_int_equal(fb_vm_state_parse("isolated"), FB_VM_BUSY);
        assert_int_equal(fb_vm_state_parse("backup-standby"), FB_VM_OTHER);
        assert_int_equal(fb_vm_state_parse(NULL), FB_VM_OTHER);
        assert_string_equal(fb_spare_state_name(FB_SPARE_WAKING), "waking");
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_f1_source),
                cmocka_unit_test(test_f2_failures_first),
                cmocka_unit_test(test_f3_reprotect),
                cmocka_unit_test(test_f4_switchover_check),
                cmocka_unit_test(test_f5_failback),
                cmocka_unit_test(test_f6_spare_wake),
                cmocka_unit_test(test_f7_hand_back),
                cmocka_unit_test(test_controller_timers),
                cmocka_unit_test(test_controller_spares),
                cmocka_unit_test(test_state_parse),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
