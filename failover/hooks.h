/* hooks: the operator's scripts run at havmsd's events, and what their exit
 * codes mean. Owns the hook directory layout, the hook environment and the
 * verdict; does not decide what havmsd does with a verdict (policy.c and
 * agent.c do), does not log above debug (havmsd logs HAVMS-HK-7xxx from the
 * result). hooks/README.md is the operator's documentation of all this.
 *
 * Layout, for an event E (pre-activate, post-activate, pre-fence,
 * post-fence, protection-lost, protection-restored):
 *   <hooks_dir>/E        one executable, run first, if present
 *   <hooks_dir>/E.d/NAME then each executable file in it, in byte order of
 *                        the names (LC_ALL=C sort)
 * Names starting with '.', ending in '~', or ending in .example, .disabled,
 * .dpkg-old/-new/-dist, .rpmnew/.rpmsave are ignored silently; any other
 * file that is not executable is NOT run and is reported (skipped[]).
 * A missing hooks_dir or E.d is no hooks.
 *
 * Each hook: argv = { path, E }, stdin empty, environment = havmsd's plus
 *   HAVMS_EVENT E, HAVMS_HOST this host, and where they apply: HAVMS_VM,
 *   HAVMS_PEER (the other host of the pair), HAVMS_ROLE (this host's role
 *   for the VM: primary, backup, activating, degraded, ...),
 *   HAVMS_GENERATION, HAVMS_EPOCH, HAVMS_FENCED_HOST (pre-/post-fence).
 *   Variables that do not apply are unset.
 *
 * Exit codes → verdict:
 *   pre-activate   0 go on; 1 DEFER (do not activate now, run the hook
 *                  again later); any other exit, a signal, or a hook that
 *                  cannot run: ABORT (do not activate, an operator must act);
 *                  a timeout: DEFER.
 *   pre-fence      0 go on; anything else (incl. timeout): DEFER (skip this
 *                  fence attempt, try again at the next fence_retry_ms).
 *   post-activate, post-fence, protection-lost, protection-restored:
 *                  the exit status is reported only; the verdict is GO.
 * For pre- events the first hook whose verdict is not GO ends the event:
 * later hooks are not run. For the others every hook runs.
 *
 * Time: the hooks of one event together get timeout_ms (hook_timeout_ms);
 * each runs with what is left, and one still running then is killed with
 * its process group.
 */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "runner.h"

enum hook_event {
        HOOK_PRE_ACTIVATE,
        HOOK_POST_ACTIVATE,
        HOOK_PRE_FENCE,
        HOOK_POST_FENCE,
        HOOK_PROTECTION_LOST,
        HOOK_PROTECTION_RESTORED,
};

enum hook_verdict {
        HOOK_GO,    /* carry on */
        HOOK_DEFER, /* not now: ask again later */
        HOOK_ABORT, /* do not do it; the operator must act */
};

/* What the hooks are told. NULL strings and has_* false = not set. */
struct hook_env {
        const char *host;         /* this host (required) */
        const char *vm;
        const char *peer;
        const char *role;
        const char *fenced_host;  /* pre-fence, post-fence */
        bool has_generation, has_epoch;
        uint64_t generation, epoch;
};

#define HOOK_MAX 16

struct hook_run {
        char path[CFG_PATH_MAX + 64];
        enum hook_verdict verdict;
        struct runner_result run;
};

struct hook_result {
        enum hook_verdict verdict;       /* of the event */
        unsigned n_runs;
        struct hook_run runs[HOOK_MAX];  /* in the order run */
        unsigned n_skipped;              /* not executable (or beyond HOOK_MAX) */
        char skipped[HOOK_MAX][CFG_PATH_MAX + 64];
        uint64_t duration_ms;
};

const char *hook_event_name(enum hook_event ev);
/* "pre-activate" → event; -EINVAL for an unknown name. */
int hook_event_parse(const char *name, enum hook_event *ret);
const char *hook_verdict_name(enum hook_verdict v);

/* Synchronous: run the event's hooks (bounded by timeout_ms in all). 0 and
 * *ret, or -errno when the runner could not work (then no verdict: treat
 * as the timeout would be treated). */
int hooks_run(const char *hooks_dir, uint32_t timeout_ms, enum hook_event ev,
              const struct hook_env *env, struct hook_result *ret);

/* Asynchronous: the same on a worker thread, completion on an fd; the
 * arguments are copied. Same shape as fence_start (see fence.h). */
struct hook_op;
int hooks_start(const char *hooks_dir, uint32_t timeout_ms, enum hook_event ev,
                const struct hook_env *env, struct hook_op **ret_op);
int hook_op_fd(const struct hook_op *op);
int hook_op_result(const struct hook_op *op, struct hook_result *ret);
void hook_op_free(struct hook_op *op);
