/* runner: run one external program (a fence agent, a hook script) with a
 * text on its stdin, extra environment, and a deadline; report how it ended
 * and the tail of what it wrote on stderr. Fencing and hooks both use it:
 * one piece of code that knows how to start, bound and reap a child.
 *
 * Owns: the child's process group (it runs in a new session, so a
 * timeout kills it and everything it started), the pipes to it, the
 * reaping. Never blocks past the deadline, never leaks a descriptor into
 * the child (every fd of the caller is close-on-exec or closed after the
 * fork; stdin/stdout/stderr are the only ones the child gets), never
 * logs.
 *
 * Synchronous: runner_run() blocks the calling thread until the program
 * ended or was killed. Callers with an event loop run it on a worker
 * thread (fence.c, hooks.c do).
 *
 * The child is reaped here, by its pid. A process that also reaps children
 * (havmsd) must do so by pid too, never with waitpid(-1) or by ignoring
 * SIGCHLD: either would take this status away. A program that exits leaves
 * what it started in the background alone; a program that times out takes
 * its whole process group with it.
 */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define RUNNER_TAIL_MAX 512

enum runner_end {
        RUNNER_EXITED,   /* exit_code is valid */
        RUNNER_SIGNALED, /* killed by signal (not by us): signal is valid */
        RUNNER_TIMEOUT,  /* still running at the deadline: its group was SIGKILLed */
        RUNNER_NOEXEC,   /* could not be started (not found, not executable): err is valid */
};

struct runner_result {
        enum runner_end end;
        int exit_code;          /* RUNNER_EXITED */
        int signal;             /* RUNNER_SIGNALED */
        int err;                /* RUNNER_NOEXEC: positive errno of the failed exec */
        pid_t pid;              /* the child's pid (= its process group id) */
        uint64_t duration_ms;   /* start to reap */
        char stderr_tail[RUNNER_TAIL_MAX]; /* last bytes of stdout+stderr (one pipe, so
                                              in order), NUL-terminated, newlines
                                              turned into " | " */
};

struct runner_cmd {
        const char *path;          /* absolute path of the program */
        char *const *argv;         /* NULL: { path, NULL } */
        char *const *env;          /* "K=V" entries added to (or replacing in) the
                                      caller's environment; NULL-terminated; may be NULL */
        const char *stdin_text;    /* written to its stdin, then stdin is closed; NULL = empty */
        uint32_t timeout_ms;       /* 0 = no limit (not for daemons) */
};

/* Run cmd to its end or its deadline. 0 with *ret filled in whatever way it
 * ended (a failing program is a result, not an error), or -errno when the
 * runner itself could not work (pipe, fork). */
int runner_run(const struct runner_cmd *cmd, struct runner_result *ret);

/* Short text for a result: "exit 1", "signal 9", "timeout after 2000 ms",
 * "cannot run: No such file or directory". */
const char *runner_describe(const struct runner_result *r, char *buf, size_t len);

/* Find a program: a name without '/' is searched in $PATH, then in
 * /usr/sbin and /sbin (fence agents live there and a daemon's PATH may
 * lack it); a path is taken as it is. -ENOENT when no executable is found. */
int runner_which(const char *name, char *ret_path, size_t len);

/* A job: a function run on a worker thread, whose completion an event loop
 * sees on a file descriptor. Fencing and hooks both start their work this
 * way, so havmsd's one loop never waits for an agent or a script.
 *
 *   job = runner_job_start(fn, arg)   worker thread runs fn(arg, &cancel)
 *   epoll_ctl(ADD, runner_job_fd(job)) fd (an eventfd) turns readable when
 *                                      fn returned, and stays readable
 *   runner_job_done(job) == true       then read what fn left in arg
 *   runner_job_free(job)               sets cancel, joins, closes the fd
 *
 * The worker runs with every signal blocked (signals are the loop's). fn
 * must end by itself in bounded time (runner_run's deadlines do that) and
 * should look at *cancel between steps; runner_job_free waits for it. */
struct runner_job;
typedef void runner_job_fn(void *arg, const volatile int *cancel);
int runner_job_start(runner_job_fn *fn, void *arg, struct runner_job **ret_job);
int runner_job_fd(const struct runner_job *job);
bool runner_job_done(const struct runner_job *job);
void runner_job_free(struct runner_job *job);
