/* test_policy: the failover decision (failover/policy.c), without a
 * cluster. Part 1 is a table of single situations and the actions they
 * must (and must not) produce. Part 2 simulates two hosts deciding on
 * their own views through partitions and power-offs, over every
 * combination of detection times, fence durations and VM placements, with
 * fencing and with a witness, and checks the safety rules at every 10 ms
 * step: never two running
 * copies, never output released while the other side may still take over,
 * never both hosts fenced. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "membership.h"
#include "policy.h"

/* ------------------------------------------------------------ helpers -- */

static void base(struct po_input *in, const char *self, uint32_t nodeid)
{
        memset(in, 0, sizeof(*in));
        snprintf(in->self, sizeof(in->self), "%s", self);
        in->self_nodeid = nodeid;
        in->quorum_known = true;
        in->quorate = true;
        in->witness_wait_ms = 12000;
        in->fence_delay_ms = 3000;
        in->fence_retry_ms = 5000;
        in->now_ms = 100000;
}

static struct po_host *add_host(struct po_input *in, const char *name, uint32_t nodeid)
{
        struct po_host *h = &in->hosts[in->n_hosts++];
        snprintf(h->name, sizeof(h->name), "%s", name);
        h->nodeid = nodeid;
        h->member = true;
        h->fence_configured = true;
        return h;
}

static struct po_vm *add_vm(struct po_input *in, const char *name, enum po_vm_state st,
                            const char *peer, uint64_t gen)
{
        struct po_vm *v = &in->vms[in->n_vms++];
        snprintf(v->name, sizeof(v->name), "%s", name);
        snprintf(v->peer, sizeof(v->peer), "%s", peer);
        v->state = st;
        v->generation = gen;
        v->failover_auto = true;
        return v;
}

/* "fence:b activate:web01:5" — the actions, in order, as one string. */
static const char *actions(const struct po_output *o)
{
        static char buf[1024];
        buf[0] = 0;
        for (size_t i = 0; i < o->n_actions; i++) {
                const struct po_action *a = &o->actions[i];
                size_t n = strlen(buf);
                if (a->type == PO_ACT_FENCE)
                        snprintf(buf + n, sizeof(buf) - n, "%sfence:%s", n ? " " : "", a->host);
                else if (a->type == PO_ACT_ACTIVATE)
                        snprintf(buf + n, sizeof(buf) - n, "%sactivate:%s:%llu", n ? " " : "",
                                 a->vm, (unsigned long long)a->generation);
                else
                        snprintf(buf + n, sizeof(buf) - n, "%s%s:%s", n ? " " : "",
                                 po_act_name(a->type), a->vm);
        }
        return buf;
}

static const char *decide(const struct po_input *in, struct po_output *out)
{
        po_decide(in, out);
        return actions(out);
}

/* -------------------------------------------------- part 1: the table -- */

/* Standby "b" of web01 (generation 4), primary "a". */
static void standby_of_a(struct po_input *in, struct po_host **a, struct po_vm **v)
{
        base(in, "b", 2);
        *a = add_host(in, "a", 1);
        *v = add_vm(in, "web01", PO_VM_BK_READY, "a", 4);
}

static void test_nothing_before_first_quorum_report(void **s)
{
        (void)s;
        struct po_input in;
        struct po_output out;
        struct po_host *a;
        struct po_vm *v;
        standby_of_a(&in, &a, &v);
        in.quorum_known = false;
        a->member = false;
        a->left_ms = 1000;
        a->fence = PO_FENCE_DONE;
        a->fence_ms = 2000;
        assert_string_equal(decide(&in, &out), "");
        assert_non_null(strstr(out.note[0], "quorum"));
        /* known, but not recounted since a left (po_quorum_view): the same */
        a->fence = PO_FENCE_NONE;
        a->left_ms = in.now_ms - 3;
        in.quorum_settling = true;
        assert_string_equal(decide(&in, &out), "");
        assert_non_null(strstr(out.note[0], "count the votes"));
        /* recounted: quorate goes on to fence, not quorate does nothing */
        in.quorum_known = true;
        in.quorum_settling = false;
        assert_string_equal(decide(&in, &out), "fence:a");
        in.quorate = false;
        assert_string_equal(decide(&in, &out), "");
}

/* S3 across a membership change: corosync reports that a left before
 * votequorum has recounted the votes. Until the count no longer includes
 * a, the old quorate flag must not be acted on (a 0-vote standby whose
 * last voter left fenced it, 3 ms before its own QUORUM LOST). */
static void test_nothing_until_the_votes_are_recounted(void **s)
{
        (void)s;
        const uint32_t both[] = { 1, 2 }, b_only[] = { 2 }, three[] = { 1, 2, 3 };
        /* the rule: every member of votequorum's last count is still a node */
        assert_false(membership_view_settled(b_only, 1, both, 2)); /* a left, still counted */
        assert_true(membership_view_settled(b_only, 1, b_only, 1)); /* recounted without a */
        assert_true(membership_view_settled(three, 3, both, 2));   /* 3 joined: no wait */
        assert_true(membership_view_settled(both, 2, NULL, 0));    /* no count yet */
        assert_false(membership_view_settled(NULL, 0, both, 2));
        /* the count's members: not the dead, the leaving, the quorum device */
        const votequorum_node_t rep[] = { { 1, VOTEQUORUM_NODESTATE_DEAD },
                                          { 2, VOTEQUORUM_NODESTATE_MEMBER },
                                          { 0, VOTEQUORUM_NODESTATE_MEMBER },
                                          { 3, VOTEQUORUM_NODESTATE_LEAVING },
                                          { 4, VOTEQUORUM_NODESTATE_MEMBER } };
        uint32_t view[4];
        bool cut = true;
        assert_int_equal(membership_view_of(rep, 5, view, 4, &cut), 2);
        assert_false(cut);
        assert_int_equal(view[0], 2);
        assert_int_equal(view[1], 4);
        assert_int_equal(membership_view_of(rep, 5, view, 1, &cut), 1);
        assert_true(cut); /* more members than kept: said, not guessed */
        /* what the decisions see: a quorate flag not recounted is unknown;
         * a loss, a first report missing, corosync down count at once */
        struct po_quorum q = po_quorum_view(true, true, true, false);
        assert_true(!q.known && !q.quorate && q.settling);
        q = po_quorum_view(true, true, true, true);
        assert_true(q.known && q.quorate && !q.settling);
        q = po_quorum_view(true, false, true, false);
        assert_true(q.known && !q.quorate && !q.settling);
        q = po_quorum_view(true, true, false, true);
        assert_true(q.known && !q.quorate && !q.settling);
        q = po_quorum_view(false, true, true, true);
        assert_true(!q.known && !q.quorate && !q.settling);
}

static void test_no_quorum_self_fences_primaries_only(void **s)
{
        (void)s;
        struct po_input in;
        struct po_output out;
        base(&in, "a", 1);
        struct po_host *b = add_host(&in, "b", 2);
        add_vm(&in, "web01", PO_VM_PROTECTED, "b", 3);
        add_vm(&in, "db01", PO_VM_BK_READY, "b", 7);
        add_vm(&in, "idle", PO_VM_DEFINED, "", 0);
        add_vm(&in, "iso", PO_VM_ISOLATED, "b", 2);
        in.quorate = false;
        b->member = false;
        b->left_ms = 50;
        b->fence = PO_FENCE_DONE;
        b->fence_ms = 60;
        /* stops what runs here, never activates or fences without quorum */
        assert_string_equal(decide(&in, &out), "stop:web01 stop:iso");
}

static void test_primary_member_nothing(void **s)
{
        (void)s;
        struct po_input in;
        struct po_output out;
        struct po_host *a;
        struct po_vm *v;
        standby_of_a(&in, &a, &v);
        assert_string_equal(decide(&in, &out), "");
        assert_int_equal(out.wake_ms, 0);
}

static void test_primary_left_fence_first_then_activate(void **s)
{
        (void)s;
        struct po_input in;
        struct po_output out;
        struct po_host *a;
        struct po_vm *v;
        standby_of_a(&in, &a, &v);
        a->member = false;
        a->left_ms = in.now_ms - 10;
        /* takeover side: no head start to wait for */
        assert_string_equal(decide(&in, &out), "fence:a");
        a->fence = PO_FENCE_RUNNING;
        assert_string_equal(decide(&in, &out), "");
        a->fence = PO_FENCE_DONE;
        a->fence_ms = in.now_ms;
        assert_string_equal(decide(&in, &out), "activate:web01:5");
}

static void test_fence_from_before_the_leave_does_not_count(void **s)
{
        (void)s;
        struct po_input in;
        struct po_output out;
        struct po_host *a;
        struct po_vm *v;
        standby_of_a(&in, &a, &v);
        a->member = false;
        a->fence = PO_FENCE_DONE;
        a->fence_ms = 500;  /* fenced once, then it rebooted and rejoined ... */
        a->left_ms = 9000;  /* ... and left again */
        assert_string_equal(decide(&in, &out), "fence:a");
}

static void test_no_fence_configured_no_takeover(void **s)
{
        (void)s;
        struct po_input in;
        struct po_output out;
        struct po_host *a;
        struct po_vm *v;
        standby_of_a(&in, &a, &v);
        a->member = false;
        a->left_ms = 1;
        a->fence_configured = false;
        assert_string_equal(decide(&in, &out), "");
        assert_non_null(strstr(out.note[0], "NOT taking over"));
}

static void test_failed_fence_retried_after_delay(void **s)
{
        (void)s;
        struct po_input in;
        struct po_output out;
        struct po_host *a;
        struct po_vm *v;
        standby_of_a(&in, &a, &v);
        a->member = false;
        a->left_ms = in.now_ms - 3000;
        a->fence = PO_FENCE_FAILED;
        a->fence_ms = in.now_ms - 1000;
        assert_string_equal(decide(&in, &out), "");
        assert_int_equal(out.wake_ms, in.now_ms + 4000);
        in.now_ms += 4000;
        assert_string_equal(decide(&in, &out), "fence:a");
}

static void test_witness_waits_then_activates_without_fencing(void **s)
{
        (void)s;
        struct po_input in;
        struct po_output out;
        struct po_host *a;
        struct po_vm *v;
        standby_of_a(&in, &a, &v);
        in.witness = true;
        a->member = false;
        a->left_ms = in.now_ms - 1000;
        assert_string_equal(decide(&in, &out), "");
        assert_int_equal(out.wake_ms, a->left_ms + 12000);
        in.now_ms = a->left_ms + 12000;
        assert_string_equal(decide(&in, &out), "activate:web01:5");
}

static void test_manual_failover_only_reports(void **s)
{
        (void)s;
        struct po_input in;
        struct po_output out;
        struct po_host *a;
        struct po_vm *v;
        standby_of_a(&in, &a, &v);
        v->failover_auto = false;
        a->member = false;
        a->left_ms = 1;
        a->fence = PO_FENCE_DONE;
        a->fence_ms = 2;
        assert_string_equal(decide(&in, &out), "");
        assert_non_null(strstr(out.note[0], "manual"));
}

static void test_relinquished_by_live_primary_activates(void **s)
{
        (void)s;
        struct po_input in;
        struct po_output out;
        struct po_host *a;
        struct po_vm *v;
        standby_of_a(&in, &a, &v);
        v->peer_relinquished = true;
        assert_string_equal(decide(&in, &out), "activate:web01:5");
}

/* A planned switchover: the old primary (handed-over) relinquishes, never
 * restarts; the standby (peer-handover) activates on it even with
 * failover = manual, and not before the RELINQUISH. */
static void test_switchover_handover(void **s)
{
        (void)s;
        struct po_input in;
        struct po_output out;
        base(&in, "a", 1);
        add_host(&in, "b", 2);
        struct po_vm *v = add_vm(&in, "web01", PO_VM_DEFINED, "b", 4);
        v->last_exit = PO_EXIT_HANDED_OVER;
        v->local_restarts = 3; /* would restart after a crash: never after a handover */
        assert_string_equal(decide(&in, &out), "relinquish:web01");
        v->relinquished = true;
        assert_string_equal(decide(&in, &out), "");
        v->last_exit = PO_EXIT_CRASH; /* the same with a crash restarts here */
        v->relinquished = false;
        assert_string_equal(decide(&in, &out), "ask-discard:web01");

        struct po_host *a;
        standby_of_a(&in, &a, &v);
        v->last_exit = PO_EXIT_PEER_HANDOVER;
        v->failover_auto = false;
        assert_string_equal(decide(&in, &out), "");      /* goodbye alone: wait */
        v->peer_relinquished = true;
        assert_string_equal(decide(&in, &out), "activate:web01:5");
        v->last_exit = PO_EXIT_NONE;                      /* a crash with manual: no */
        assert_string_equal(decide(&in, &out), "");
        assert_int_equal(po_exit_parse("handed-over"), PO_EXIT_HANDED_OVER);
        assert_int_equal(po_exit_parse("peer-handover"), PO_EXIT_PEER_HANDOVER);
        assert_string_equal(po_exit_name(PO_EXIT_HANDED_OVER), "handed-over");
}

static void test_discard_asked_by_member_primary(void **s)
{
        (void)s;
        struct po_input in;
        struct po_output out;
        struct po_host *a;
        struct po_vm *v;
        standby_of_a(&in, &a, &v);
        v->discard_requested = true;
        assert_string_equal(decide(&in, &out), "discard:web01");
        /* a request from a primary that has left is void: it may be a
         * message from before a partition */
        a->member = false;
        a->left_ms = in.now_ms;
        assert_string_equal(decide(&in, &out), "fence:a");
}

static void test_isolated_with_member_standby_asks_then_releases(void **s)
{
        (void)s;
        struct po_input in;
        struct po_output out;
        base(&in, "a", 1);
        add_host(&in, "b", 2);
        struct po_vm *v = add_vm(&in, "web01", PO_VM_ISOLATED, "b", 4);
        assert_string_equal(decide(&in, &out), "ask-discard:web01");
        v->discard_asked = true;
        assert_string_equal(decide(&in, &out), "");
        v->peer_discarded = true;
        assert_string_equal(decide(&in, &out), "release:web01");
}

static void test_isolated_standby_left_waits_head_start_then_fences(void **s)
{
        (void)s;
        struct po_input in;
        struct po_output out;
        base(&in, "a", 1);
        struct po_host *b = add_host(&in, "b", 2);
        add_vm(&in, "web01", PO_VM_ISOLATED, "b", 4);
        b->member = false;
        b->left_ms = in.now_ms - 100;
        assert_string_equal(decide(&in, &out), "");
        assert_int_equal(out.wake_ms, b->left_ms + 3000);
        in.now_ms = b->left_ms + 3000;
        assert_string_equal(decide(&in, &out), "fence:b");
        b->fence = PO_FENCE_DONE;
        b->fence_ms = in.now_ms + 200;
        in.now_ms += 200;
        assert_string_equal(decide(&in, &out), "release:web01");
}

static void test_protected_primary_with_lost_standby_waits_for_isolation(void **s)
{
        (void)s;
        struct po_input in;
        struct po_output out;
        base(&in, "a", 1);
        struct po_host *b = add_host(&in, "b", 2);
        add_vm(&in, "web01", PO_VM_PROTECTED, "b", 4);
        b->member = false;
        b->left_ms = in.now_ms;
        /* checkpointd holds output until its ACK timeout makes it ISOLATED */
        assert_string_equal(decide(&in, &out), "");
}

static void test_tie_lower_nodeid_first(void **s)
{
        (void)s;
        struct po_input in;
        struct po_output out;
        /* a runs web01 backed up on b; b runs db01 backed up on a */
        base(&in, "a", 1);
        struct po_host *b = add_host(&in, "b", 2);
        add_vm(&in, "web01", PO_VM_ISOLATED, "b", 1)->peer_holds_replica = true;
        add_vm(&in, "db01", PO_VM_BK_READY, "b", 1);
        b->member = false;
        b->left_ms = in.now_ms;
        assert_string_equal(decide(&in, &out), "fence:b");

        base(&in, "b", 2);
        struct po_host *a = add_host(&in, "a", 1);
        struct po_vm *db = add_vm(&in, "db01", PO_VM_PROTECTED, "a", 1);
        db->peer_holds_replica = true;
        add_vm(&in, "web01", PO_VM_BK_READY, "a", 1);
        a->member = false;
        a->left_ms = in.now_ms;
        assert_string_equal(decide(&in, &out), "");
        assert_int_equal(out.wake_ms, a->left_ms + 3000);
        /* Not a tie when a holds no replica of db01 (it was still syncing
         * or had dropped it): only b can take anything over, so b must not
         * wait — a waits its own head start to release, and b wins. */
        db->peer_holds_replica = false;
        assert_string_equal(decide(&in, &out), "fence:a");
}

static void test_newer_generation_elsewhere_stops(void **s)
{
        (void)s;
        struct po_input in;
        struct po_output out;
        base(&in, "a", 1);
        add_host(&in, "b", 2);
        struct po_vm *v = add_vm(&in, "web01", PO_VM_RUNNING, "b", 4);
        v->newer_generation = 5;
        assert_string_equal(decide(&in, &out), "stop:web01");
        v->newer_generation = 4;
        assert_string_equal(decide(&in, &out), "");
}

/* S6 (the reviewer's timeline): b kept a replica of generation 4 from a
 * protection that ended while it was cut off; a released its output and
 * re-protected to c, whose replica is newer (the agent computes
 * newer_copy_elsewhere from the members' announcements). When a dies, b
 * must never activate its stale replica, fenced primary or not,
 * relinquished or not: it drops it. */
static void test_stale_replica_never_activates(void **s)
{
        (void)s;
        struct po_input in;
        struct po_output out;
        struct po_host *a;
        struct po_vm *v;
        standby_of_a(&in, &a, &v);
        add_host(&in, "c", 3)->member = true;
        a->member = false;
        a->left_ms = in.now_ms - 10;
        a->fence = PO_FENCE_DONE;
        a->fence_ms = in.now_ms;
        v->newer_copy_elsewhere = true; /* c's replica */
        assert_string_equal(decide(&in, &out), "discard:web01");
        v->peer_relinquished = true;
        assert_string_equal(decide(&in, &out), "discard:web01");
        /* the same host without a newer copy elsewhere would take over */
        v->peer_relinquished = false;
        v->newer_copy_elsewhere = false;
        assert_string_equal(decide(&in, &out), "activate:web01:5");
}

static void test_crash_restart_then_relinquish(void **s)
{
        (void)s;
        struct po_input in;
        struct po_output out;
        base(&in, "a", 1);
        struct po_host *b = add_host(&in, "b", 2);
        struct po_vm *v = add_vm(&in, "web01", PO_VM_DEFINED, "b", 4);
        v->last_exit = PO_EXIT_CRASH;
        v->local_restarts = 1;
        /* the standby's replica goes first: a new boot's output is not in it */
        assert_string_equal(decide(&in, &out), "ask-discard:web01");
        v->discard_asked = true;
        assert_string_equal(decide(&in, &out), "");
        v->peer_discarded = true;
        assert_string_equal(decide(&in, &out), "restart:web01");
        /* a standby out of reach may take the VM over: no restart here */
        v->peer_discarded = v->discard_asked = false;
        b->member = false;
        assert_string_equal(decide(&in, &out), "");
        assert_non_null(strstr(out.note[0], "out of reach"));
        b->member = true;
        v->restarts_done = 1;
        assert_string_equal(decide(&in, &out), "relinquish:web01");
        v->relinquished = true;
        assert_string_equal(decide(&in, &out), "");
}

static void test_guest_shutdown_is_not_a_failure(void **s)
{
        (void)s;
        struct po_input in;
        struct po_output out;
        base(&in, "a", 1);
        add_host(&in, "b", 2);
        struct po_vm *v = add_vm(&in, "web01", PO_VM_DEFINED, "b", 4);
        v->last_exit = PO_EXIT_GUEST_SHUTDOWN;
        assert_string_equal(decide(&in, &out), "");
        v->last_exit = PO_EXIT_STOPPED;
        assert_string_equal(decide(&in, &out), "");
}

static void test_incomplete_replica_never_activates(void **s)
{
        (void)s;
        struct po_input in;
        struct po_output out;
        struct po_host *a;
        struct po_vm *v;
        standby_of_a(&in, &a, &v);
        v->state = PO_VM_BK_SYNCING;
        a->member = false;
        a->left_ms = 1;
        a->fence = PO_FENCE_DONE;
        a->fence_ms = 2;
        assert_string_equal(decide(&in, &out), "");
        assert_non_null(strstr(out.note[0], "incomplete"));
}

static void test_busy_vm_left_alone(void **s)
{
        (void)s;
        struct po_input in;
        struct po_output out;
        struct po_host *a;
        struct po_vm *v;
        standby_of_a(&in, &a, &v);
        v->busy = true;
        v->peer_relinquished = true;
        assert_string_equal(decide(&in, &out), "");
}

static void test_state_names_parse(void **s)
{
        (void)s;
        assert_int_equal(po_vm_state_parse("backup-orphaned"), PO_VM_BK_READY);
        assert_int_equal(po_vm_state_parse("backup-standby"), PO_VM_BK_READY);
        assert_int_equal(po_vm_state_parse("isolated"), PO_VM_ISOLATED);
        assert_int_equal(po_vm_state_parse("degraded"), PO_VM_RUNNING);
        assert_int_equal(po_vm_state_parse("held"), PO_VM_PROTECTED);
        assert_int_equal(po_vm_state_parse("no-such"), PO_VM_UNKNOWN);
        assert_int_equal(po_vm_state_parse(NULL), PO_VM_UNKNOWN);
        assert_int_equal(po_exit_parse("crash"), PO_EXIT_CRASH);
        assert_int_equal(po_exit_parse("fenced"), PO_EXIT_CRASH);
        assert_int_equal(po_exit_parse("guest-shutdown"), PO_EXIT_GUEST_SHUTDOWN);
        assert_int_equal(po_exit_parse(""), PO_EXIT_NONE);
}

static void test_self_fence_wins_over_work_in_flight(void **s)
{
        (void)s;
        struct po_input in;
        struct po_output out;
        base(&in, "a", 1);
        add_host(&in, "b", 2);
        struct po_vm *v = add_vm(&in, "web01", PO_VM_ISOLATED, "b", 3);
        v->busy = true; /* e.g. a release job in flight */
        in.quorate = false;
        assert_string_equal(decide(&in, &out), "stop:web01");
        v->stopping = true;
        assert_string_equal(decide(&in, &out), "");
}

static void test_witness_wait_restarts_with_quorum(void **s)
{
        (void)s;
        struct po_input in;
        struct po_output out;
        struct po_host *a;
        struct po_vm *v;
        standby_of_a(&in, &a, &v);
        in.witness = true;
        a->member = false;
        a->left_ms = in.now_ms - 20000;    /* long gone ... */
        in.quorate_since_ms = in.now_ms - 1000; /* ... but we were not quorate until 1 s ago */
        assert_string_equal(decide(&in, &out), "");
        assert_int_equal(out.wake_ms, in.quorate_since_ms + 12000);
        in.now_ms = in.quorate_since_ms + 12000;
        assert_string_equal(decide(&in, &out), "activate:web01:5");
}

static void test_discard_asked_without_a_replica_is_answered(void **s)
{
        (void)s;
        struct po_input in;
        struct po_output out;
        struct po_host *a;
        struct po_vm *v;
        standby_of_a(&in, &a, &v);
        v->state = PO_VM_DEFINED;
        v->discard_requested = true;
        /* nothing to drop, but the primary waits for the answer */
        assert_string_equal(decide(&in, &out), "discard:web01");
        v->state = PO_VM_BK_SYNCING;
        assert_string_equal(decide(&in, &out), "discard:web01");
}

/* ------------------------------------------- part 2: two-host simulator -- */

/* One VM's copy on one simulated host. */
struct sim_vm {
        enum po_vm_state state;
        uint64_t gen;
        bool output_flows; /* releases frames without an ACK (unprotected) */
        bool asked;        /* asked the standby to discard (lost in the partition) */
};

struct sim_host {
        const char *name;
        uint32_t nodeid;
        bool alive;
        uint64_t sees_peer_leave_ms; /* detection time of the partition/death */
        struct po_host peer;         /* its view of the other host */
        struct sim_vm vm[2];
        bool fencing;
        bool fence_hit;      /* the BMC acted on the command */
        uint64_t fence_start_ms;
};

struct sim {
        struct sim_host h[2];
        int n_vms;
        uint64_t cut_ms, ack_timeout_ms;
        uint64_t fence_ms;        /* the agent returns (off verified) after this */
        uint64_t fence_effect_ms; /* the BMC cuts the power this soon after the call */
        bool dead_host0; /* host 0 powered off at cut_ms (else: a partition) */
        bool witness;    /* quorum by a witness: no fencing; the cut-off side loses
                            quorum after qdevice_ms and self-fences */
        uint64_t qdevice_ms;
        int fenced_count;
};

static const char *const vm_names[2] = { "web01", "db01" };

/* Host k's quorum at time now: with a witness, host 0 is the side cut off
 * from it and loses quorum qdevice_ms after the cut. */
static bool sim_quorate(const struct sim *s, int k, uint64_t now)
{
        return !(s->witness && k == 0 && now >= s->cut_ms + s->qdevice_ms);
}

static void sim_input(struct sim *s, int k, uint64_t now, struct po_input *in)
{
        struct sim_host *me = &s->h[k], *other = &s->h[1 - k];
        base(in, me->name, me->nodeid);
        in->now_ms = now;
        in->witness = s->witness;
        in->quorate = sim_quorate(s, k, now);
        in->hosts[0] = me->peer;
        in->n_hosts = 1;
        for (int i = 0; i < s->n_vms; i++) {
                struct po_vm *v = add_vm(in, vm_names[i], me->vm[i].state, other->name,
                                         me->vm[i].gen);
                v->discard_asked = me->vm[i].asked;
                v->peer_holds_replica = other->vm[i].state == PO_VM_BK_READY;
        }
}

/* Both hosts decide every step; faults and fences take effect at their
 * times. Returns when nothing changes any more. */
static void sim_run(struct sim *s)
{
        for (uint64_t now = 0; now < 30000; now += 10) {
                /* a fence command reaches the BMC even if its sender dies next */
                for (int k = 0; k < 2; k++) {
                        struct sim_host *me = &s->h[k], *other = &s->h[1 - k];
                        if (me->fencing && !me->fence_hit &&
                            now >= me->fence_start_ms + s->fence_effect_ms) {
                                me->fence_hit = true;
                                if (other->alive)
                                        s->fenced_count++;
                                other->alive = false;
                        }
                }
                for (int k = 0; k < 2; k++) {
                        struct sim_host *me = &s->h[k], *other = &s->h[1 - k];
                        if (!me->alive)
                                continue;
                        if (now >= s->cut_ms && s->dead_host0 && k == 0) {
                                me->alive = false; /* power-off */
                                continue;
                        }
                        if (now >= me->sees_peer_leave_ms && me->peer.member) {
                                me->peer.member = false;
                                me->peer.left_ms = now;
                        }
                        /* checkpointd: a primary without ACKs turns ISOLATED */
                        for (int i = 0; i < s->n_vms; i++)
                                if (me->vm[i].state == PO_VM_PROTECTED &&
                                    now >= s->cut_ms + s->ack_timeout_ms)
                                        me->vm[i].state = PO_VM_ISOLATED;
                        if (me->fencing && now >= me->fence_start_ms + s->fence_ms) {
                                me->fencing = false; /* verified off */
                                me->peer.fence = PO_FENCE_DONE;
                                me->peer.fence_ms = now;
                        }
                        struct po_input in;
                        struct po_output out;
                        sim_input(s, k, now, &in);
                        po_decide(&in, &out);
                        for (size_t j = 0; j < out.n_actions; j++) {
                                struct po_action *a = &out.actions[j];
                                int i = !strcmp(a->vm, "web01") ? 0 : 1;
                                switch (a->type) {
                                case PO_ACT_FENCE:
                                        assert_false(me->fencing);
                                        me->fencing = true;
                                        me->fence_hit = false;
                                        me->peer.fence = PO_FENCE_RUNNING;
                                        me->fence_start_ms = now;
                                        (void)other;
                                        break;
                                case PO_ACT_ACTIVATE:
                                        me->vm[i].state = PO_VM_RUNNING;
                                        me->vm[i].gen = a->generation;
                                        me->vm[i].output_flows = true;
                                        break;
                                case PO_ACT_ASK_DISCARD:
                                        /* the cut came first: the message is lost */
                                        me->vm[i].asked = true;
                                        break;
                                case PO_ACT_RELEASE:
                                        me->vm[i].state = PO_VM_RUNNING;
                                        me->vm[i].output_flows = true;
                                        break;
                                case PO_ACT_STOP: /* self-fence: the copy is gone */
                                        me->vm[i].state = PO_VM_DEFINED;
                                        me->vm[i].output_flows = false;
                                        break;
                                default:
                                        fail_msg("unexpected action %s", po_act_name(a->type));
                                }
                        }
                }
                /* the safety invariants, at every step */
                for (int i = 0; i < s->n_vms; i++) {
                        struct sim_vm *x = &s->h[0].vm[i], *y = &s->h[1].vm[i];
                        bool x_runs = s->h[0].alive && x->state != PO_VM_BK_READY &&
                                      x->state != PO_VM_DEFINED;
                        bool y_runs = s->h[1].alive && y->state != PO_VM_BK_READY &&
                                      y->state != PO_VM_DEFINED;
                        if (x_runs && y_runs)
                                fail_msg("%s runs on both hosts at %llu ms", vm_names[i],
                                         (unsigned long long)now);
                        /* output released while the other copy could still
                         * activate (a host without quorum activates nothing) */
                        bool x_could = s->h[0].alive && x->state == PO_VM_BK_READY &&
                                       sim_quorate(s, 0, now);
                        bool y_could = s->h[1].alive && y->state == PO_VM_BK_READY &&
                                       sim_quorate(s, 1, now);
                        if ((s->h[0].alive && x->output_flows && y_could) ||
                            (s->h[1].alive && y->output_flows && x_could))
                                fail_msg("%s output released while the standby may activate "
                                         "at %llu ms", vm_names[i], (unsigned long long)now);
                }
        }
}

static void sim_setup(struct sim *s, int n_vms, uint64_t det0, uint64_t det1,
                      uint64_t fence_ms, bool dead_host0)
{
        memset(s, 0, sizeof(*s));
        s->n_vms = n_vms;
        s->cut_ms = 1000;
        s->ack_timeout_ms = 3000;
        s->fence_ms = fence_ms;
        s->fence_effect_ms = fence_ms < 100 ? fence_ms : 100;
        s->dead_host0 = dead_host0;
        const char *names[2] = { "a", "b" };
        for (int k = 0; k < 2; k++) {
                struct sim_host *h = &s->h[k];
                h->name = names[k];
                h->nodeid = (uint32_t)k + 1;
                h->alive = true;
                snprintf(h->peer.name, sizeof(h->peer.name), "%s", names[1 - k]);
                h->peer.nodeid = (uint32_t)(2 - k);
                h->peer.member = true;
                h->peer.fence_configured = true;
        }
        s->h[0].sees_peer_leave_ms = s->cut_ms + det0;
        s->h[1].sees_peer_leave_ms = s->cut_ms + det1;
        /* web01 runs on a, backed up on b; db01 (if any) the other way */
        s->h[0].vm[0] = (struct sim_vm){ PO_VM_PROTECTED, 3, false, false };
        s->h[1].vm[0] = (struct sim_vm){ PO_VM_BK_READY, 3, false, false };
        s->h[0].vm[1] = (struct sim_vm){ PO_VM_BK_READY, 8, false, false };
        s->h[1].vm[1] = (struct sim_vm){ PO_VM_PROTECTED, 8, false, false };
}

static void test_sim_partitions_and_power_offs(void **st)
{
        (void)st;
        static const uint64_t dets[] = { 300, 800, 1500, 4000, 9000 };
        static const uint64_t fences[] = { 100, 2100, 6000 };
        int runs = 0;
        for (int n_vms = 1; n_vms <= 2; n_vms++)
                for (size_t i = 0; i < 5; i++)
                        for (size_t j = 0; j < 5; j++)
                                for (size_t f = 0; f < 3; f++)
                                        for (int dead = 0; dead <= 1; dead++) {
                                                struct sim s;
                                                sim_setup(&s, n_vms, dets[i], dets[j], fences[f],
                                                          dead);
                                                sim_run(&s);
                                                runs++;
                                                /* No fence death where corosync puts the
                                                 * two detections: within the head start
                                                 * (less the BMC's reaction) of each
                                                 * other. Beyond that only safety holds
                                                 * (checked at every step). */
                                                uint64_t skew = dets[i] > dets[j]
                                                                        ? dets[i] - dets[j]
                                                                        : dets[j] - dets[i];
                                                if (skew + 100 >= 3000)
                                                        continue;
                                                assert_true(s.h[0].alive || s.h[1].alive);
                                                assert_true(s.fenced_count <= 1);
                                                for (int v = 0; v < n_vms; v++) {
                                                        bool runs0 = s.h[0].alive &&
                                                                     s.h[0].vm[v].output_flows;
                                                        bool runs1 = s.h[1].alive &&
                                                                     s.h[1].vm[v].output_flows;
                                                        assert_true(runs0 != runs1);
                                                }
                                        }
        assert_int_equal(runs, 2 * 5 * 5 * 3 * 2);
}

/* Witness mode: a partition where host 0 (the primary of web01, standby
 * of db01) is cut off from the witness too. It keeps believing itself
 * quorate for qdevice_ms, then self-fences; host 1 activates only after
 * witness_wait_ms (12 s) — longer than any qdevice window tried here. */
static void test_sim_witness_partition(void **st)
{
        (void)st;
        static const uint64_t windows[] = { 0, 3000, 9700, 11500 };
        static const uint64_t dets[] = { 300, 800, 2000 };
        for (int n_vms = 1; n_vms <= 2; n_vms++)
                for (size_t w = 0; w < 4; w++)
                        for (size_t i = 0; i < 3; i++)
                                for (size_t j = 0; j < 3; j++) {
                                        struct sim s;
                                        sim_setup(&s, n_vms, dets[i], dets[j], 100, false);
                                        s.witness = true;
                                        s.qdevice_ms = windows[w];
                                        sim_run(&s); /* the invariants, every step */
                                        /* host 1 ends up running every VM */
                                        for (int v = 0; v < n_vms; v++)
                                                assert_true(s.h[1].vm[v].output_flows);
                                        assert_int_equal(s.fenced_count, 0);
                                }
}

/* Power-off of the primary: the standby fences at once (no head start),
 * so the takeover is detection + fence + activation. */
static void test_sim_power_off_takeover_time(void **st)
{
        (void)st;
        struct sim s;
        sim_setup(&s, 1, 800, 800, 100, true);
        sim_run(&s);
        assert_false(s.h[0].alive);
        assert_true(s.h[1].alive);
        assert_int_equal(s.h[1].vm[0].state, PO_VM_RUNNING);
        assert_int_equal(s.h[1].vm[0].gen, 4);
        /* fenced 100 ms after detection: at cut + 800 + 100 */
        assert_int_equal(s.h[1].peer.fence_ms, s.cut_ms + 800 + 100);
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_nothing_before_first_quorum_report),
                cmocka_unit_test(test_nothing_until_the_votes_are_recounted),
                cmocka_unit_test(test_no_quorum_self_fences_primaries_only),
                cmocka_unit_test(test_primary_member_nothing),
                cmocka_unit_test(test_primary_left_fence_first_then_activate),
                cmocka_unit_test(test_fence_from_before_the_leave_does_not_count),
                cmocka_unit_test(test_no_fence_configured_no_takeover),
                cmocka_unit_test(test_failed_fence_retried_after_delay),
                cmocka_unit_test(test_witness_waits_then_activates_without_fencing),
                cmocka_unit_test(test_manual_failover_only_reports),
                cmocka_unit_test(test_relinquished_by_live_primary_activates),
                cmocka_unit_test(test_switchover_handover),
                cmocka_unit_test(test_discard_asked_by_member_primary),
                cmocka_unit_test(test_isolated_with_member_standby_asks_then_releases),
                cmocka_unit_test(test_isolated_standby_left_waits_head_start_then_fences),
                cmocka_unit_test(test_protected_primary_with_lost_standby_waits_for_isolation),
                cmocka_unit_test(test_tie_lower_nodeid_first),
                cmocka_unit_test(test_newer_generation_elsewhere_stops),
                cmocka_unit_test(test_stale_replica_never_activates),
                cmocka_unit_test(test_crash_restart_then_relinquish),
                cmocka_unit_test(test_guest_shutdown_is_not_a_failure),
                cmocka_unit_test(test_incomplete_replica_never_activates),
                cmocka_unit_test(test_busy_vm_left_alone),
                cmocka_unit_test(test_state_names_parse),
                cmocka_unit_test(test_self_fence_wins_over_work_in_flight),
                cmocka_unit_test(test_witness_wait_restarts_with_quorum),
                cmocka_unit_test(test_discard_asked_without_a_replica_is_answered),
                cmocka_unit_test(test_sim_partitions_and_power_offs),
                cmocka_unit_test(test_sim_power_off_takeover_time),
                cmocka_unit_test(test_sim_witness_partition),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
