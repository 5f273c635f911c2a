#include "hooks.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util.h"

static const char *const event_names[] = {
        [HOOK_PRE_ACTIVATE] = "pre-activate",
        [HOOK_POST_ACTIVATE] = "post-activate",
        [HOOK_PRE_FENCE] = "pre-fence",
        [HOOK_POST_FENCE] = "post-fence",
        [HOOK_PROTECTION_LOST] = "protection-lost",
        [HOOK_PROTECTION_RESTORED] = "protection-restored",
};

const char *hook_event_name(enum hook_event ev)
{
        return (unsigned)ev < ARRAY_SIZE(event_names) ? event_names[ev] : "?";
}

int hook_event_parse(const char *name, enum hook_event *ret)
{
        for (size_t i = 0; i < ARRAY_SIZE(event_names); i++)
                if (!strcmp(name, event_names[i])) {
                        *ret = (enum hook_event)i;
                        return 0;
                }
        return -EINVAL;
}

const char *hook_verdict_name(enum hook_verdict v)
{
        return v == HOOK_GO ? "go" : v == HOOK_DEFER ? "defer" : "abort";
}

static bool is_pre(enum hook_event ev)
{
        return ev == HOOK_PRE_ACTIVATE || ev == HOOK_PRE_FENCE;
}

/* The exit-code table of hooks.h. */
static enum hook_verdict verdict_of(enum hook_event ev, const struct runner_result *r)
{
        bool zero = r->end == RUNNER_EXITED && r->exit_code == 0;
        if (!is_pre(ev) || zero)
                return HOOK_GO;
        if (ev == HOOK_PRE_FENCE || r->end == RUNNER_TIMEOUT)
                return HOOK_DEFER;
        return r->end == RUNNER_EXITED && r->exit_code == 1 ? HOOK_DEFER : HOOK_ABORT;
}

static bool ignored_name(const char *n)
{
        static const char *const suffixes[] = { "~", ".example", ".disabled", ".dpkg-old",
                                                ".dpkg-new", ".dpkg-dist", ".rpmnew", ".rpmsave" };
        size_t l = strlen(n);
        if (n[0] == '.')
                return true;
        for (size_t i = 0; i < ARRAY_SIZE(suffixes); i++) {
                size_t sl = strlen(suffixes[i]);
                if (l >= sl && !strcmp(n + l - sl, suffixes[i]))
                        return true;
        }
        return false;
}

static int cmp_names(const void *a, const void *b)
{
        return strcmp(*(char *const *)a, *(char *const *)b);
}

struct hook_list {
        char paths[HOOK_MAX][CFG_PATH_MAX + 64];
        unsigned n;
};

/* A candidate: run it if it is an executable regular file, report it if
 * it is a file that cannot run. Directories and the like are ignored. */
static void consider(const char *path, struct hook_list *l, struct hook_result *res)
{
        struct stat st;
        if (stat(path, &st) < 0 || !S_ISREG(st.st_mode))
                return;
        bool runnable = access(path, X_OK) == 0;
        if (runnable && l->n < HOOK_MAX) {
                snprintf(l->paths[l->n++], sizeof(l->paths[0]), "%s", path);
        } else if (res->n_skipped < HOOK_MAX) {
                snprintf(res->skipped[res->n_skipped++], sizeof(res->skipped[0]), "%s", path);
        }
}

static void find_hooks(const char *dir, enum hook_event ev, struct hook_list *l,
                       struct hook_result *res)
{
        char p[CFG_PATH_MAX + 64];
        snprintf(p, sizeof(p), "%s/%s", dir, hook_event_name(ev));
        consider(p, l, res);
        snprintf(p, sizeof(p), "%s/%s.d", dir, hook_event_name(ev));
        DIR *d = opendir(p);
        if (!d)
                return; /* no E.d: no hooks there */
        char *names[256];
        size_t n = 0;
        for (struct dirent *e; (e = readdir(d)) && n < ARRAY_SIZE(names);)
                if (!ignored_name(e->d_name))
                        names[n] = strdup(e->d_name), n += names[n] != NULL;
        closedir(d);
        qsort(names, n, sizeof(names[0]), cmp_names);
        for (size_t i = 0; i < n; i++) {
                char q[CFG_PATH_MAX + 64];
                if (snprintf(q, sizeof(q), "%s/%s", p, names[i]) < (int)sizeof(q))
                        consider(q, l, res);
                free(names[i]);
        }
}

#define ENV_MAX 10

static void build_env(enum hook_event ev, const struct hook_env *e, char buf[ENV_MAX][128],
                      char **env)
{
        size_t k = 0;
        snprintf(buf[k], 128, "HAVMS_EVENT=%s", hook_event_name(ev)), env[k] = buf[k], k++;
        const struct { const char *name, *val; } s[] = {
                { "HAVMS_HOST", e->host }, { "HAVMS_VM", e->vm }, { "HAVMS_PEER", e->peer },
                { "HAVMS_ROLE", e->role }, { "HAVMS_FENCED_HOST", e->fenced_host },
        };
        for (size_t i = 0; i < ARRAY_SIZE(s); i++)
                if (s[i].val)
                        snprintf(buf[k], 128, "%s=%s", s[i].name, s[i].val), env[k] = buf[k], k++;
        if (e->has_generation)
                snprintf(buf[k], 128, "HAVMS_GENERATION=%" PRIu64, e->generation), env[k] = buf[k], k++;
        if (e->has_epoch)
                snprintf(buf[k], 128, "HAVMS_EPOCH=%" PRIu64, e->epoch), env[k] = buf[k], k++;
        env[k] = NULL;
}

static int hooks_run_ctx(const char *dir, uint32_t timeout_ms, enum hook_event ev,
                         const struct hook_env *e, struct hook_result *res, const volatile int *cancel)
{
        if ((unsigned)ev >= ARRAY_SIZE(event_names))
                return -EINVAL;
        memset(res, 0, sizeof(*res));
        struct hook_list *l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;
        uint64_t start = now_ns(), deadline = start + (uint64_t)timeout_ms * 1000000u;
        find_hooks(dir, ev, l, res);
        char envbuf[ENV_MAX][128];
        char *env[ENV_MAX + 1];
        build_env(ev, e, envbuf, env);
        int r = 0;
        for (unsigned i = 0; i < l->n && !(cancel && *cancel); i++) {
                struct hook_run *h = &res->runs[res->n_runs++];
                snprintf(h->path, sizeof(h->path), "%s", l->paths[i]);
                uint64_t now = now_ns();
                /* what is left of the event's time; at least 1 ms, so a hook
                 * after the deadline is still seen to time out */
                uint32_t left = now < deadline ? (uint32_t)((deadline - now) / 1000000u) : 0;
                char *argv[] = { h->path, (char *)hook_event_name(ev), NULL };
                struct runner_cmd cmd = { .path = h->path, .argv = argv, .env = env,
                                          .timeout_ms = left ? left : 1 };
                r = runner_run(&cmd, &h->run);
                if (r < 0) {
                        res->n_runs--;
                        break;
                }
                h->verdict = verdict_of(ev, &h->run);
                if (h->verdict != HOOK_GO) {
                        res->verdict = h->verdict;
                        break; /* a pre- hook said no: the rest do not run */
                }
        }
        res->duration_ms = (now_ns() - start) / 1000000u;
        free(l);
        return r;
}

int hooks_run(const char *hooks_dir, uint32_t timeout_ms, enum hook_event ev,
              const struct hook_env *env, struct hook_result *ret)
{
        struct hook_result *res = calloc(1, sizeof(*res));
        if (!res)
                return -ENOMEM;
        int r = hooks_run_ctx(hooks_dir, timeout_ms, ev, env, res, NULL);
        if (r == 0)
                *ret = *res;
        free(res);
        return r;
}

struct hook_op {
        struct runner_job *job;
        char dir[CFG_PATH_MAX];
        uint32_t timeout_ms;
        enum hook_event ev;
        char host[CFG_NAME_MAX], vm[CFG_NAME_MAX], peer[CFG_NAME_MAX], role[32],
                fenced[CFG_NAME_MAX];
        struct hook_env env;
        int rc;
        struct hook_result res;
};

static void hook_worker(void *arg, const volatile int *cancel)
{
        struct hook_op *op = arg;
        op->rc = hooks_run_ctx(op->dir, op->timeout_ms, op->ev, &op->env, &op->res, cancel);
}

/* Copy an optional string into the op; the env then points at the copy. */
static const char *keep(char *dst, size_t len, const char *src)
{
        if (!src)
                return NULL;
        snprintf(dst, len, "%s", src);
        return dst;
}

int hooks_start(const char *hooks_dir, uint32_t timeout_ms, enum hook_event ev,
                const struct hook_env *env, struct hook_op **ret_op)
{
        if ((unsigned)ev >= ARRAY_SIZE(event_names) || strlen(hooks_dir) >= CFG_PATH_MAX)
                return -EINVAL;
        struct hook_op *op = calloc(1, sizeof(*op));
        if (!op)
                return -ENOMEM;
        strcpy(op->dir, hooks_dir);
        op->timeout_ms = timeout_ms;
        op->ev = ev;
        op->env = *env;
        op->env.host = keep(op->host, sizeof(op->host), env->host);
        op->env.vm = keep(op->vm, sizeof(op->vm), env->vm);
        op->env.peer = keep(op->peer, sizeof(op->peer), env->peer);
        op->env.role = keep(op->role, sizeof(op->role), env->role);
        op->env.fenced_host = keep(op->fenced, sizeof(op->fenced), env->fenced_host);
        int r = runner_job_start(hook_worker, op, &op->job);
        if (r < 0) {
                free(op);
                return r;
        }
        *ret_op = op;
        return 0;
}

int hook_op_fd(const struct hook_op *op)
{
        return runner_job_fd(op->job);
}

int hook_op_result(const struct hook_op *op, struct hook_result *ret)
{
        if (!runner_job_done(op->job))
                return -EAGAIN;
        if (op->rc < 0)
                return op->rc;
        *ret = op->res;
        return 0;
}

void hook_op_free(struct hook_op *op)
{
        if (!op)
                return;
        runner_job_free(op->job);
        free(op);
}
