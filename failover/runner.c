#include "runner.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util.h"

extern char **environ;

/* The caller's environment with cmd->env laid over it; one allocation
 * holding only pointers (the strings stay where they are). Built before
 * the fork: the child of a threaded process may not allocate. */
static char **merge_env(char *const *add)
{
        size_t n = 0, na = 0;
        while (environ && environ[n])
                n++;
        while (add && add[na])
                na++;
        char **env = calloc(n + na + 1, sizeof(*env));
        if (!env)
                return NULL;
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
                size_t kl = strcspn(environ[i], "=");
                bool replaced = false;
                for (size_t j = 0; j < na && !replaced; j++)
                        replaced = !strncmp(add[j], environ[i], kl) && add[j][kl] == '=';
                if (!replaced)
                        env[k++] = environ[i];
        }
        for (size_t j = 0; j < na; j++)
                env[k++] = add[j];
        return env;
}

/* fd becomes to, inherited across exec (async-signal-safe). */
static int move_fd(int fd, int to)
{
        if (fd == to)
                return fcntl(to, F_SETFD, 0);
        return dup2(fd, to) < 0 ? -1 : 0;
}

/* In the child, between fork and exec: only async-signal-safe calls. */
static void __attribute__((noreturn))
child(const char *path, char *const *argv, char **env, int in, int out, int errpipe)
{
        /* A new session: the child leads its own process group, which a
         * timeout kills as a whole, and it has no controlling terminal. */
        setsid();
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL); /* the daemon blocks signals for signalfd */
        struct sigaction dfl = { .sa_handler = SIG_DFL };
        for (int s = 1; s < NSIG; s++)
                if (s != SIGKILL && s != SIGSTOP)
                        sigaction(s, &dfl, NULL); /* an ignored SIGPIPE would survive exec */
        if (move_fd(in, 0) < 0 || move_fd(out, 1) < 0 || move_fd(out, 2) < 0)
                goto fail;
        /* errpipe (close-on-exec: it tells the parent only if exec fails)
         * goes to 3, and every other descriptor is closed, whether the
         * caller set O_CLOEXEC on it or not. */
        if (errpipe != 3) {
                if (dup2(errpipe, 3) < 0)
                        goto fail;
                errpipe = 3;
        }
        fcntl(3, F_SETFD, FD_CLOEXEC);
        if (syscall(SYS_close_range, 4u, ~0u, 0) < 0)
                for (int fd = 4; fd < 65536; fd++)
                        close(fd);
        execve(path, argv, env);
fail:;
        int e = errno;
        ssize_t w = write(errpipe, &e, sizeof(e));
        (void)w;
        _exit(127);
}

static void tail_add(char *buf, size_t *len, size_t cap, const char *data, size_t n)
{
        if (n >= cap) {
                data += n - cap;
                n = cap;
        }
        if (*len + n > cap) {
                size_t drop = *len + n - cap;
                memmove(buf, buf + drop, *len - drop);
                *len -= drop;
        }
        memcpy(buf + *len, data, n);
        *len += n;
}

/* Raw output → one printable line, its end kept when it is too long. */
static void tail_finish(const char *raw, size_t n, char *out, size_t cap)
{
        while (n && (raw[n - 1] == '\n' || raw[n - 1] == ' ' || raw[n - 1] == '\r'))
                n--;
        char tmp[4 * RUNNER_TAIL_MAX * 3];
        size_t k = 0;
        for (size_t i = 0; i < n && k + 4 < sizeof(tmp); i++) {
                unsigned char c = (unsigned char)raw[i];
                if (c == '\n') {
                        memcpy(tmp + k, " | ", 3);
                        k += 3;
                } else {
                        tmp[k++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
                }
        }
        size_t from = k >= cap ? k - (cap - 1) : 0;
        memcpy(out, tmp + from, k - from);
        out[k - from] = 0;
}

static int pidfd_open_(pid_t pid)
{
        return (int)syscall(SYS_pidfd_open, pid, 0);
}

int runner_run(const struct runner_cmd *cmd, struct runner_result *ret)
{
        int sv[2] = { -1, -1 }, outp[2] = { -1, -1 }, errp[2] = { -1, -1 };
        int pidfd = -1, r;
        char *default_argv[2] = { (char *)cmd->path, NULL };
        char *const *argv = cmd->argv ? cmd->argv : default_argv;
        char **env = merge_env(cmd->env);
        if (!env)
                return -ENOMEM;
        /* stdin is a socket so that writing to a child that does not read
         * it gives EPIPE through MSG_NOSIGNAL, never a SIGPIPE here. */
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0 ||
            pipe2(outp, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0) {
                r = -errno;
                goto out;
        }
        struct runner_result res = { .end = RUNNER_EXITED };
        uint64_t start = now_ns();
        pid_t pid = fork();
        if (pid < 0) {
                r = -errno;
                goto out;
        }
        if (pid == 0)
                child(cmd->path, argv, env, sv[1], outp[1], errp[1]);
        res.pid = pid;
        close(sv[1]);
        close(outp[1]);
        close(errp[1]);
        sv[1] = outp[1] = errp[1] = -1;
        pidfd = pidfd_open_(pid);
        if (pidfd < 0) { /* Linux < 5.3: not supported */
                r = -errno;
                kill(-pid, SIGKILL);
                waitpid(pid, NULL, 0);
                goto out;
        }
        set_nonblock(sv[0], true);
        set_nonblock(outp[0], true);

        const char *text = cmd->stdin_text ? cmd->stdin_text : "";
        size_t tlen = strlen(text), sent = 0;
        if (!tlen)
                shutdown(sv[0], SHUT_WR);
        char raw[4 * RUNNER_TAIL_MAX];
        size_t rawlen = 0;
        bool exited = false, out_eof = false;
        uint64_t deadline = cmd->timeout_ms ? start + (uint64_t)cmd->timeout_ms * 1000000u : 0;
        /* Until the child exits and its output has ended (a background
         * grandchild may hold the pipe: then stop at the exit). */
        while (!exited || !out_eof) {
                struct pollfd p[3] = {
                        { .fd = out_eof ? -1 : outp[0], .events = POLLIN },
                        { .fd = exited ? -1 : pidfd, .events = POLLIN },
                        { .fd = sent < tlen ? sv[0] : -1, .events = POLLOUT },
                };
                int wait_ms = -1;
                if (exited) {
                        wait_ms = 0; /* drain what is there, do not wait for grandchildren */
                } else if (deadline) {
                        uint64_t now = now_ns();
                        if (now >= deadline)
                                break;
                        wait_ms = (int)((deadline - now + 999999) / 1000000);
                }
                int n = poll(p, 3, wait_ms);
                if (n < 0 && errno != EINTR) {
                        r = -errno;
                        kill(-pid, SIGKILL);
                        waitpid(pid, NULL, 0);
                        goto out;
                }
                if (n == 0 && exited)
                        break;
                if (p[0].revents) {
                        char b[1024];
                        ssize_t k = read(outp[0], b, sizeof(b));
                        if (k > 0)
                                tail_add(raw, &rawlen, sizeof(raw), b, (size_t)k);
                        else if (k == 0 || (errno != EAGAIN && errno != EINTR))
                                out_eof = true;
                }
                if (p[2].revents) {
                        ssize_t k = send(sv[0], text + sent, tlen - sent, MSG_NOSIGNAL);
                        if (k > 0)
                                sent += (size_t)k;
                        else if (k < 0 && errno != EAGAIN && errno != EINTR)
                                sent = tlen; /* it closed its stdin: no more to say */
                        if (sent == tlen)
                                shutdown(sv[0], SHUT_WR);
                }
                if (p[1].revents)
                        exited = true;
        }
        int status = 0;
        if (!exited) {
                /* The deadline passed. The child is not reaped yet, so its
                 * pid still names its group: kill the group, then reap. */
                kill(-pid, SIGKILL);
                kill(pid, SIGKILL);
                res.end = RUNNER_TIMEOUT;
        }
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
        res.duration_ms = (now_ns() - start) / 1000000u;
        if (res.end != RUNNER_TIMEOUT) {
                int e = 0;
                if (read(errp[0], &e, sizeof(e)) == (ssize_t)sizeof(e)) {
                        res.end = RUNNER_NOEXEC;
                        res.err = e;
                } else if (WIFEXITED(status)) {
                        res.end = RUNNER_EXITED;
                        res.exit_code = WEXITSTATUS(status);
                } else {
                        res.end = RUNNER_SIGNALED;
                        res.signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
                }
        }
        tail_finish(raw, rawlen, res.stderr_tail, sizeof(res.stderr_tail));
        *ret = res;
        r = 0;
out:
        free(env);
        for (int i = 0; i < 2; i++) {
                if (sv[i] >= 0)
                        close(sv[i]);
                if (outp[i] >= 0)
                        close(outp[i]);
                if (errp[i] >= 0)
                        close(errp[i]);
        }
        if (pidfd >= 0)
                close(pidfd);
        return r;
}

const char *runner_describe(const struct runner_result *r, char *buf, size_t len)
{
        switch (r->end) {
        case RUNNER_EXITED:
                snprintf(buf, len, "exit %d", r->exit_code);
                break;
        case RUNNER_SIGNALED:
                snprintf(buf, len, "killed by signal %d", r->signal);
                break;
        case RUNNER_TIMEOUT:
                snprintf(buf, len, "timeout after %llu ms (killed)",
                         (unsigned long long)r->duration_ms);
                break;
        case RUNNER_NOEXEC:
                snprintf(buf, len, "cannot run: %s", strerror(r->err));
                break;
        }
        return buf;
}

int runner_which(const char *name, char *ret_path, size_t len)
{
        if (!name[0])
                return -ENOENT;
        if (strchr(name, '/')) {
                if (access(name, X_OK) < 0)
                        return -errno;
                if (strlen(name) >= len)
                        return -ENAMETOOLONG;
                strcpy(ret_path, name);
                return 0;
        }
        const char *path = getenv("PATH");
        char dirs[4096];
        snprintf(dirs, sizeof(dirs), "%s:/usr/sbin:/sbin", path ? path : "/usr/bin:/bin");
        for (char *save = NULL, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
                char p[4096];
                if (snprintf(p, sizeof(p), "%s/%s", d, name) >= (int)sizeof(p))
                        continue;
                if (access(p, X_OK) == 0) {
                        if (strlen(p) >= len)
                                return -ENAMETOOLONG;
                        strcpy(ret_path, p);
                        return 0;
                }
        }
        return -ENOENT;
}

struct runner_job {
        pthread_t thread;
        int efd;
        runner_job_fn *fn;
        void *arg;
        volatile int cancel;
        int done; /* __atomic: set by the worker after fn returned */
};

static void *job_main(void *p)
{
        struct runner_job *j = p;
        j->fn(j->arg, &j->cancel);
        __atomic_store_n(&j->done, 1, __ATOMIC_RELEASE);
        uint64_t one = 1;
        ssize_t w = write(j->efd, &one, sizeof(one));
        (void)w; /* an eventfd counter cannot overflow from one write */
        return NULL;
}

int runner_job_start(runner_job_fn *fn, void *arg, struct runner_job **ret_job)
{
        struct runner_job *j = calloc(1, sizeof(*j));
        if (!j)
                return -ENOMEM;
        j->fn = fn;
        j->arg = arg;
        j->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (j->efd < 0) {
                int e = -errno;
                free(j);
                return e;
        }
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        int r = pthread_create(&j->thread, NULL, job_main, j);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (r) {
                close(j->efd);
                free(j);
                return -r;
        }
        *ret_job = j;
        return 0;
}

int runner_job_fd(const struct runner_job *job)
{
        return job->efd;
}

bool runner_job_done(const struct runner_job *job)
{
        return __atomic_load_n(&job->done, __ATOMIC_ACQUIRE) != 0;
}

void runner_job_free(struct runner_job *job)
{
        if (!job)
                return;
        job->cancel = 1;
        pthread_join(job->thread, NULL);
        close(job->efd);
        free(job);
}
