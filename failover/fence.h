/* fence: power a host off (or on, or ask its power state, or check that its
 * fence device answers) through the levels of its [fence HOST] section.
 * Owns the fence-agents protocol and the rule that an `off` counts only
 * once a `status` confirms it. Does not decide WHEN to fence (policy.c),
 * does not log above debug (havmsd logs the HAVMS-FN-6xxx messages from
 * the result), and never blocks past its deadlines.
 *
 * The agent protocol (fence-agents' convention, as its fencing.py does):
 *   stdin    one "key=value" line per configured argument, then
 *            "action=ACTION"; stdin is then closed. Nothing on argv.
 *   env      HAVMS_FENCE_ACTION=ACTION, HAVMS_FENCE_HOST=HOST (for scripts;
 *            fence_* agents ignore them)
 *   exit     off, on, monitor: 0 = done, anything else = failed;
 *            status: 0 = power on, 2 = power off, anything else = unknown.
 *   time     every call is bounded by the section's timeout_ms; a call
 *            still running then is killed with its whole process group
 *            and counts as a failure ("a timeout is a failure").
 * A script agent ("script:/abs/path") follows exactly the same convention:
 * it reads the same lines (or the environment), exits 0 when it did the
 * action, and for action=status exits 0 (on) or 2 (off).
 *
 * What each action does over the levels (level N = levelN of the section):
 *   off      level by level in order, until one succeeds: a level succeeds
 *            when its `off` exits 0 AND its following `status` exits 2.
 *            An `off` that claims success while status says on (or
 *            unknown) is a failed level. Worst case
 *            n_levels x 2 x timeout_ms.
 *   on       level by level until one `on` exits 0 (not verified: power on
 *            is only a convenience, never a safety decision).
 *   status   level by level until one gives a definite answer (0 or 2).
 *   monitor  EVERY level (each device must be reachable; a level that only
 *            works on paper is found before it is needed); ok only if all
 *            pass.
 * only_level (1..n_levels) restricts any action to that one level; 0 = as
 * above. Agents: a bare name is looked up in PATH, then /usr/sbin, /sbin;
 * an absolute path is used as it is.
 */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "runner.h"

enum fence_action {
        FENCE_OFF,
        FENCE_ON,
        FENCE_STATUS,
        FENCE_MONITOR,
};

enum fence_power {
        FENCE_POWER_UNKNOWN,
        FENCE_POWER_ON,
        FENCE_POWER_OFF,
};

/* 4 levels x (off + status) */
#define FENCE_MAX_ATTEMPTS (2 * CFG_MAX_FENCE_LEVELS)

/* One agent call. */
struct fence_attempt {
        unsigned level;                 /* 1-based */
        char action[8];                 /* what was asked: off, on, status, monitor */
        char agent[CFG_PATH_MAX];       /* as configured */
        bool ok;                        /* this call did what was asked */
        struct runner_result run;       /* exit code / timeout, duration, output tail */
        char reason[160];               /* when !ok: why, in words (for the log) */
};

struct fence_result {
        bool ok;                        /* the action was achieved (off: verified off) */
        unsigned level;                 /* level that achieved it (0 if none) */
        enum fence_power power;         /* status: the answer; off: OFF when ok */
        uint64_t duration_ms;           /* whole operation */
        unsigned n_attempts;
        struct fence_attempt attempts[FENCE_MAX_ATTEMPTS]; /* in the order made */
};

const char *fence_action_name(enum fence_action a);

/* Synchronous: run the action to its end (bounded as above). 0 with *ret
 * filled (ret->ok says whether it worked; the attempts say why not), or
 * -EINVAL for a bad only_level / a section without levels, -errno when the
 * runner could not work at all. */
int fence_run(const struct cfg_fence *f, enum fence_action action, unsigned only_level,
              struct fence_result *ret);

/* Asynchronous: the same on a worker thread (runner_job). The section is
 * copied, so the caller may reload its configuration meanwhile.
 *   fence_start()      starts it; *ret_op owns the thread and an fd
 *   fence_op_fd()      readable (EPOLLIN) once the operation has ended
 *   fence_op_result()  0 and *ret once ended, -EAGAIN before
 *   fence_op_free()    NULL-safe; an operation still running stops after
 *                      its current agent call (which is bounded), then
 *                      the fd is closed (which also takes it out of epoll)
 */
struct fence_op;
int fence_start(const struct cfg_fence *f, enum fence_action action, unsigned only_level,
                struct fence_op **ret_op);
int fence_op_fd(const struct fence_op *op);
int fence_op_result(const struct fence_op *op, struct fence_result *ret);
void fence_op_free(struct fence_op *op);
