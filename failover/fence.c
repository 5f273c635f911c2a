#include "fence.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

const char *fence_action_name(enum fence_action a)
{
        switch (a) {
        case FENCE_OFF: return "off";
        case FENCE_ON: return "on";
        case FENCE_STATUS: return "status";
        case FENCE_MONITOR: return "monitor";
        }
        return "?";
}

/* stdin for the agent: the configured pairs one per line, then the action. */
static int agent_input(const struct cfg_fence_level *lv, const char *action, char *buf, size_t len)
{
        size_t k = 0;
        const char *a = lv->args;
        while (*a) {
                size_t n = strcspn(a, " ");
                if (k + n + 2 > len)
                        return -ENAMETOOLONG;
                memcpy(buf + k, a, n);
                k += n;
                buf[k++] = '\n';
                a += n;
                a += strspn(a, " ");
        }
        int w = snprintf(buf + k, len - k, "action=%s\n", action);
        return w < 0 || (size_t)w >= len - k ? -ENAMETOOLONG : 0;
}

/* One call of one level's agent. Fills *at (always); returns 0, or -errno
 * when the runner could not work. */
static int call_agent(const struct cfg_fence *f, unsigned level, const char *action,
                      struct fence_attempt *at)
{
        const struct cfg_fence_level *lv = &f->levels[level - 1];
        memset(at, 0, sizeof(*at));
        at->level = level;
        snprintf(at->action, sizeof(at->action), "%s", action);
        snprintf(at->agent, sizeof(at->agent), "%s", lv->agent);

        char path[CFG_PATH_MAX];
        bool script = !strncmp(lv->agent, "script:", 7);
        int r = runner_which(script ? lv->agent + 7 : lv->agent, path, sizeof(path));
        if (r < 0) {
                at->run.end = RUNNER_NOEXEC;
                at->run.err = -r;
                snprintf(at->reason, sizeof(at->reason), "agent not found or not executable: %s",
                         strerror(-r));
                return 0;
        }
        char input[CFG_TEXT_MAX + 64];
        if (agent_input(lv, action, input, sizeof(input)) < 0) {
                snprintf(at->reason, sizeof(at->reason), "arguments too long");
                at->run.end = RUNNER_NOEXEC;
                at->run.err = ENAMETOOLONG;
                return 0;
        }
        char e_action[64], e_host[64];
        snprintf(e_action, sizeof(e_action), "HAVMS_FENCE_ACTION=%s", action);
        snprintf(e_host, sizeof(e_host), "HAVMS_FENCE_HOST=%s", f->host);
        char *env[] = { e_action, e_host, NULL };
        struct runner_cmd cmd = {
                .path = path, .env = env, .stdin_text = input, .timeout_ms = f->timeout_ms,
        };
        return runner_run(&cmd, &at->run);
}

/* Did this call do what was asked? Sets at->ok and at->reason. For status,
 * *power gets the answer. */
static void judge(struct fence_attempt *at, enum fence_action a, enum fence_power *power)
{
        char d[128];
        const struct runner_result *r = &at->run;
        if (at->reason[0]) /* not run at all */
                return;
        if (r->end != RUNNER_EXITED) {
                snprintf(at->reason, sizeof(at->reason), "%s %s", at->action,
                         runner_describe(r, d, sizeof(d)));
                return;
        }
        if (a == FENCE_STATUS) {
                *power = r->exit_code == 0 ? FENCE_POWER_ON
                       : r->exit_code == 2 ? FENCE_POWER_OFF : FENCE_POWER_UNKNOWN;
                at->ok = *power != FENCE_POWER_UNKNOWN;
                if (!at->ok)
                        snprintf(at->reason, sizeof(at->reason),
                                 "status exit %d: power state unknown (0 = on, 2 = off)", r->exit_code);
                return;
        }
        at->ok = r->exit_code == 0;
        if (!at->ok)
                snprintf(at->reason, sizeof(at->reason), "%s exit %d", at->action, r->exit_code);
}

struct fence_ctx {
        const struct cfg_fence *f;
        struct fence_result *res;
        const volatile int *cancel;
};

/* Next attempt slot, or NULL when full (cannot happen with the bounds). */
static struct fence_attempt *next_attempt(struct fence_ctx *c)
{
        if (c->res->n_attempts >= FENCE_MAX_ATTEMPTS)
                return NULL;
        return &c->res->attempts[c->res->n_attempts++];
}

/* One level for one action. Returns 0 with res updated, or -errno. */
static int run_level(struct fence_ctx *c, unsigned level, enum fence_action a)
{
        struct fence_attempt *at = next_attempt(c);
        enum fence_power power = FENCE_POWER_UNKNOWN;
        if (!at)
                return -ENOSPC;
        int r = call_agent(c->f, level, fence_action_name(a), at);
        if (r < 0)
                return r;
        judge(at, a, &power);
        if (!at->ok)
                return 0;
        if (a == FENCE_STATUS) {
                c->res->power = power;
        } else if (a == FENCE_OFF) {
                /* Only a status that says off makes the fence true. */
                struct fence_attempt *st = next_attempt(c);
                if (!st)
                        return -ENOSPC;
                r = call_agent(c->f, level, "status", st);
                if (r < 0)
                        return r;
                judge(st, FENCE_STATUS, &power);
                if (power != FENCE_POWER_OFF) {
                        char why[sizeof(st->reason) - 32];
                        snprintf(why, sizeof(why), "%.120s",
                                 power == FENCE_POWER_ON ? "status says the power is still on (exit 0)"
                                                         : st->reason[0] ? st->reason : "status failed");
                        st->ok = false;
                        snprintf(st->reason, sizeof(st->reason), "off reported success but %s", why);
                        return 0;
                }
                c->res->power = FENCE_POWER_OFF;
        } else if (a == FENCE_ON) {
                c->res->power = FENCE_POWER_ON;
        }
        c->res->ok = true;
        c->res->level = level;
        return 0;
}

static int fence_run_ctx(const struct cfg_fence *f, enum fence_action action, unsigned only_level,
                         struct fence_result *ret, const volatile int *cancel)
{
        if (f->n_levels == 0 || f->n_levels > CFG_MAX_FENCE_LEVELS || only_level > f->n_levels)
                return -EINVAL;
        memset(ret, 0, sizeof(*ret));
        struct fence_ctx c = { .f = f, .res = ret, .cancel = cancel };
        uint64_t start = now_ns();
        unsigned first = only_level ? only_level : 1, last = only_level ? only_level : f->n_levels;
        bool all_pass = true;
        int r = 0;
        for (unsigned l = first; l <= last && r == 0; l++) {
                if (cancel && *cancel)
                        break;
                ret->ok = false;
                r = run_level(&c, l, action);
                if (action == FENCE_MONITOR) {
                        all_pass = all_pass && ret->ok;
                        continue; /* every level is checked */
                }
                if (ret->ok)
                        break;
        }
        if (action == FENCE_MONITOR) {
                ret->ok = all_pass && r == 0 && !(cancel && *cancel);
                ret->level = 0;
        }
        ret->duration_ms = (now_ns() - start) / 1000000u;
        return r;
}

int fence_run(const struct cfg_fence *f, enum fence_action action, unsigned only_level,
              struct fence_result *ret)
{
        struct fence_result *res = calloc(1, sizeof(*res));
        if (!res)
                return -ENOMEM;
        int r = fence_run_ctx(f, action, only_level, res, NULL);
        if (r == 0)
                *ret = *res;
        free(res);
        return r;
}

struct fence_op {
        struct runner_job *job;
        struct cfg_fence cfg;
        enum fence_action action;
        unsigned only_level;
        int rc;
        struct fence_result res;
};

static void fence_worker(void *arg, const volatile int *cancel)
{
        struct fence_op *op = arg;
        op->rc = fence_run_ctx(&op->cfg, op->action, op->only_level, &op->res, cancel);
}

int fence_start(const struct cfg_fence *f, enum fence_action action, unsigned only_level,
                struct fence_op **ret_op)
{
        if (f->n_levels == 0 || f->n_levels > CFG_MAX_FENCE_LEVELS || only_level > f->n_levels)
                return -EINVAL;
        struct fence_op *op = calloc(1, sizeof(*op));
        if (!op)
                return -ENOMEM;
        op->cfg = *f;
        op->action = action;
        op->only_level = only_level;
        int r = runner_job_start(fence_worker, op, &op->job);
        if (r < 0) {
                free(op);
                return r;
        }
        *ret_op = op;
        return 0;
}

int fence_op_fd(const struct fence_op *op)
{
        return runner_job_fd(op->job);
}

int fence_op_result(const struct fence_op *op, struct fence_result *ret)
{
        if (!runner_job_done(op->job))
                return -EAGAIN;
        if (op->rc < 0)
                return op->rc;
        *ret = op->res;
        return 0;
}

void fence_op_free(struct fence_op *op)
{
        if (!op)
                return;
        runner_job_free(op->job);
        free(op);
}
