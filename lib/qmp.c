/* qmp: a small synchronous QMP client with deadlines (see qmp.h).
 *
 * Reading: QEMU writes JSON objects separated by "\r\n", but one read() may
 * hold half an object or several of them. Bytes go into rbuf; one
 * json_tokener is fed incrementally from it and keeps its state across
 * reads and across calls, so an object cut by a timeout in
 * qmp_wait_event() is finished by the next call.
 *
 *   socket --recv--> rbuf[rpos..rlen) --json_tokener--> object --dispatch-->
 *        greeting  ("QMP")            -> q->greeting   (only in connect)
 *        event     ("event")          -> events[] queue (bounded, drop oldest)
 *        response  ("return"/"error") -> q->response   (only with our id)
 *        anything else                -> protocol error, broken
 *
 * Every call computes one deadline and every wait is a ppoll() bounded by
 * it. A command that timed out may still be answered later, which would
 * desynchronise the stream: so a timeout inside a command, like any I/O or
 * protocol error, marks the connection broken. A timeout while only
 * waiting for an event does not.
 *
 * Not thread-safe: one caller at a time per struct qmp.
 */
#include "qmp.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define QMP_EVENT_QUEUE_MAX 256
#define QMP_MAX_MSG (16u << 20)     /* one object larger than this: broken */
#define QMP_RBUF_SIZE (64u << 10)
#define QMP_JSON_DEPTH 64

struct qmp {
        int fd;
        bool broken;
        int64_t next_id;

        json_tokener *tok;
        size_t msg_bytes;           /* fed to tok since the last object */
        size_t rpos, rlen;          /* unparsed bytes are rbuf[rpos..rlen) */

        bool want_greeting;         /* only qmp_connect() accepts one */
        json_object *greeting;
        bool want_response;         /* a command with want_id is in flight */
        int64_t want_id;
        json_object *response;

        json_object *events[QMP_EVENT_QUEUE_MAX]; /* oldest first */
        size_t nevents;
        uint64_t events_seen;       /* ever queued; tells a loop one arrived */
        uint64_t events_dropped;
        bool shutdown_seen;         /* a SHUTDOWN event arrived (kept across clears) */
        bool shutdown_guest;        /* ... with "guest": true */

        char last_error[512];
        char rbuf[QMP_RBUF_SIZE];
};

/* The deadline of one public call. After it has passed, one more
 * non-blocking read is allowed (so timeout 0 still drains what is already
 * there), then the call times out even if data keeps arriving. */
struct call {
        uint64_t deadline_ns;
        bool last_read_done;
};

static uint64_t mono_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static struct call call_start(int timeout_ms)
{
        return (struct call){
                .deadline_ns = mono_ns() + (uint64_t)timeout_ms * 1000000u,
        };
}

static void set_error(struct qmp *q, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));
static void set_error(struct qmp *q, const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(q->last_error, sizeof(q->last_error), fmt, ap);
        va_end(ap);
}

/* Mark the connection unusable; returns err for "return fail(...)". */
static int fail(struct qmp *q, int err, const char *what)
{
        if (!q->broken)
                set_error(q, "%s: %s", what, strerror(-err));
        q->broken = true;
        return err;
}

/* Wait for events on fd until the deadline; EINTR restarts the wait with
 * the remaining time. */
static int wait_fd_until(int fd, short events, uint64_t deadline_ns)
{
        for (;;) {
                struct pollfd pfd = { .fd = fd, .events = events };
                uint64_t now = mono_ns();
                struct timespec ts;
                int r;

                if (now >= deadline_ns)
                        return -ETIMEDOUT;
                ts.tv_sec = (time_t)((deadline_ns - now) / 1000000000u);
                ts.tv_nsec = (long)((deadline_ns - now) % 1000000000u);
                r = ppoll(&pfd, 1, &ts, NULL);
                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (r == 0)
                        return -ETIMEDOUT;
                if (pfd.revents & POLLNVAL)
                        return -EBADF;
                /* POLLHUP/POLLERR: the next recv/send reports the cause. */
                return 0;
        }
}

/* ---- events ---------------------------------------------------------- */

static void queue_event(struct qmp *q, json_object *ev)
{
        if (q->nevents == QMP_EVENT_QUEUE_MAX) {
                json_object_put(q->events[0]);
                memmove(&q->events[0], &q->events[1],
                        (QMP_EVENT_QUEUE_MAX - 1) * sizeof(q->events[0]));
                q->nevents--;
                q->events_dropped++;
        }
        q->events[q->nevents++] = ev;
        q->events_seen++;
}

static bool event_matches(json_object *ev, const char *name)
{
        json_object *n;

        if (!name)
                return true;
        return json_object_object_get_ex(ev, "event", &n) &&
               strcmp(json_object_get_string(n), name) == 0;
}

static json_object *take_event(struct qmp *q, size_t i)
{
        json_object *ev = q->events[i];

        memmove(&q->events[i], &q->events[i + 1],
                (q->nevents - i - 1) * sizeof(q->events[0]));
        q->nevents--;
        return ev;
}

/* Index of the oldest queued event called name, or -1. */
static ssize_t find_event(const struct qmp *q, const char *name, size_t from)
{
        for (size_t i = from; i < q->nevents; i++)
                if (event_matches(q->events[i], name))
                        return (ssize_t)i;
        return -1;
}

/* ---- reading --------------------------------------------------------- */

static bool is_our_response(const struct qmp *q, json_object *obj)
{
        json_object *id;

        return q->want_response &&
               json_object_object_get_ex(obj, "id", &id) &&
               json_object_is_type(id, json_type_int) &&
               json_object_get_int64(id) == q->want_id;
}

/* Take ownership of one parsed top-level value and route it. */
static int dispatch(struct qmp *q, json_object *obj)
{
        json_object *v;

        if (!json_object_is_type(obj, json_type_object)) {
                json_object_put(obj);
                return fail(q, -EPROTO, "QMP message is not a JSON object");
        }
        if (json_object_object_get_ex(obj, "event", &v)) {
                if (!json_object_is_type(v, json_type_string)) {
                        json_object_put(obj);
                        return fail(q, -EPROTO, "QMP event without a name");
                }
                /* QEMU says why it is about to exit only here: remember
                 * it even if the queue is cleared or overflows. */
                if (!strcmp(json_object_get_string(v), "SHUTDOWN")) {
                        json_object *data, *g;
                        q->shutdown_seen = true;
                        q->shutdown_guest =
                                json_object_object_get_ex(obj, "data", &data) &&
                                json_object_object_get_ex(data, "guest", &g) &&
                                json_object_get_boolean(g);
                }
                queue_event(q, obj);
                return 0;
        }
        if (json_object_object_get_ex(obj, "return", NULL) ||
            json_object_object_get_ex(obj, "error", NULL)) {
                if (!is_our_response(q, obj) || q->response) {
                        json_object_put(obj);
                        return fail(q, -EPROTO,
                                    "QMP response with unexpected or missing id");
                }
                q->response = obj;
                return 0;
        }
        if (json_object_object_get_ex(obj, "QMP", &v) && q->want_greeting &&
            !q->greeting && json_object_is_type(v, json_type_object)) {
                q->greeting = obj;
                return 0;
        }
        json_object_put(obj);
        return fail(q, -EPROTO, "unexpected QMP message");
}

/* Refill rbuf (only called when it is empty). */
static int fill(struct qmp *q, struct call *c)
{
        if (mono_ns() >= c->deadline_ns) {
                if (c->last_read_done)
                        return -ETIMEDOUT;
                c->last_read_done = true;
        }
        for (;;) {
                ssize_t n = recv(q->fd, q->rbuf, sizeof(q->rbuf), 0);
                int r;

                if (n > 0) {
                        q->rpos = 0;
                        q->rlen = (size_t)n;
                        return 0;
                }
                /* QEMU exiting with our bytes unread shows as a reset. */
                if (n == 0 || errno == ECONNRESET)
                        return fail(q, -EPIPE, "QMP connection closed by peer");
                if (errno == EINTR)
                        continue;
                if (errno != EAGAIN && errno != EWOULDBLOCK)
                        return fail(q, -errno, "QMP read");
                r = wait_fd_until(q->fd, POLLIN, c->deadline_ns);
                if (r < 0)
                        return r == -ETIMEDOUT ? r : fail(q, r, "QMP poll");
        }
}

/* Parse buffered bytes until one message has been dispatched or the buffer
 * is used up; reads more only if nothing is buffered. */
static int step(struct qmp *q, struct call *c)
{
        if (q->rpos == q->rlen) {
                int r = fill(q, c);

                if (r < 0)
                        return r;
        }
        while (q->rpos < q->rlen) {
                size_t avail = q->rlen - q->rpos;
                json_object *obj;
                enum json_tokener_error err;
                size_t used;

                if (avail > QMP_MAX_MSG - q->msg_bytes + 1)
                        avail = QMP_MAX_MSG - q->msg_bytes + 1;
                obj = json_tokener_parse_ex(q->tok, q->rbuf + q->rpos,
                                            (int)avail);
                err = json_tokener_get_error(q->tok);
                used = json_tokener_get_parse_end(q->tok);
                if (used > avail)
                        return fail(q, -EPROTO, "JSON tokenizer overran input");
                q->rpos += used;
                q->msg_bytes += used;
                if (obj) {
                        json_tokener_reset(q->tok);
                        q->msg_bytes = 0;
                        return dispatch(q, obj);
                }
                if (err != json_tokener_continue || used != avail) {
                        set_error(q, "malformed QMP data: %s",
                                  json_tokener_error_desc(err));
                        q->broken = true;
                        return -EPROTO;
                }
                if (q->msg_bytes > QMP_MAX_MSG)
                        return fail(q, -EMSGSIZE, "QMP message too large");
        }
        return 0;
}

/* ---- writing --------------------------------------------------------- */

static ssize_t send_with_fd(int sock, const char *buf, size_t len, int fd)
{
        union {
                char buf[CMSG_SPACE(sizeof(int))];
                struct cmsghdr align;
        } u;
        struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
        struct msghdr msg = {
                .msg_iov = &iov,
                .msg_iovlen = 1,
                .msg_control = u.buf,
                .msg_controllen = sizeof(u.buf),
        };
        struct cmsghdr *cmsg;

        memset(&u, 0, sizeof(u));
        cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
        return sendmsg(sock, &msg, MSG_NOSIGNAL);
}

/* Write all of buf; pass_fd (if >= 0) rides on the first bytes that go
 * out, so it reaches QEMU together with the command that names it. */
static int write_all(struct qmp *q, const char *buf, size_t len, int pass_fd,
                     const struct call *c)
{
        size_t off = 0;

        while (off < len) {
                ssize_t n;
                int r;

                if (pass_fd >= 0)
                        n = send_with_fd(q->fd, buf + off, len - off, pass_fd);
                else
                        n = send(q->fd, buf + off, len - off, MSG_NOSIGNAL);
                if (n > 0) {
                        off += (size_t)n;
                        pass_fd = -1;
                        continue;
                }
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
                        return fail(q, errno == ECONNRESET ? -EPIPE : -errno,
                                    "QMP write");
                r = wait_fd_until(q->fd, POLLOUT, c->deadline_ns);
                if (r < 0)
                        return fail(q, r, "QMP write");
        }
        return 0;
}

/* ---- commands -------------------------------------------------------- */

/* Serialise {"execute": command, "arguments": args, "id": id} + "\r\n". */
static int build_request(const char *command, json_object *args, int64_t id,
                         char **ret_buf, size_t *ret_len)
{
        json_object *req = json_object_new_object();
        const char *text;
        size_t len;
        char *buf;
        int r = -ENOMEM;

        if (!req)
                return -ENOMEM;
        if (json_object_object_add(req, "execute",
                                   json_object_new_string(command)) < 0)
                goto out;
        if (args) {
                if (json_object_object_add(req, "arguments",
                                           json_object_get(args)) < 0) {
                        json_object_put(args);
                        goto out;
                }
        }
        if (json_object_object_add(req, "id", json_object_new_int64(id)) < 0)
                goto out;
        text = json_object_to_json_string_length(
                req, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE,
                &len);
        if (!text)
                goto out;
        buf = malloc(len + 2);
        if (!buf)
                goto out;
        memcpy(buf, text, len);
        memcpy(buf + len, "\r\n", 2);
        *ret_buf = buf;
        *ret_len = len + 2;
        r = 0;
out:
        json_object_put(req);
        return r;
}

/* Turn the matched response into the call's result. */
static int take_response(struct qmp *q, json_object **ret_result)
{
        json_object *resp = q->response, *err, *v;
        int r = 0;

        q->response = NULL;
        if (json_object_object_get_ex(resp, "error", &err)) {
                if (json_object_object_get_ex(err, "desc", &v) &&
                    json_object_is_type(v, json_type_string))
                        set_error(q, "%s", json_object_get_string(v));
                else
                        set_error(q, "QMP error without description");
                r = -EIO;
        } else if (ret_result) {
                json_object_object_get_ex(resp, "return", &v);
                *ret_result = json_object_get(v);
        }
        json_object_put(resp);
        return r;
}

static int transact(struct qmp *q, const char *command, json_object *args,
                    int pass_fd, struct call *c, json_object **ret_result)
{
        char *buf = NULL;
        size_t len;
        int64_t id;
        int r;

        if (q->broken)
                return -EPIPE;
        if (!command || !*command ||
            (args && !json_object_is_type(args, json_type_object)))
                return -EINVAL;
        id = q->next_id++;
        r = build_request(command, args, id, &buf, &len);
        if (r < 0)
                return r;
        r = write_all(q, buf, len, pass_fd, c);
        free(buf);
        if (r < 0)
                return r;

        q->want_response = true;
        q->want_id = id;
        while (!q->response && r >= 0)
                r = step(q, c);
        q->want_response = false;
        if (r < 0) {
                if (r == -ETIMEDOUT) {
                        fail(q, r, "QMP command timed out");
                        set_error(q, "timeout waiting for reply to '%s'",
                                  command);
                }
                return r;
        }
        return take_response(q, ret_result);
}

/* ---- public API ------------------------------------------------------ */

static int open_socket(const char *path, const struct call *c, int *ret_fd)
{
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd, r;

        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        memcpy(sa.sun_path, path, strlen(path) + 1);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        for (;;) {
                if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
                        break;
                r = -errno;
                if (r == -EAGAIN) {
                        /* Listen backlog full: unix sockets cannot be
                         * polled for this, so retry in small steps. */
                        struct timespec ts = { 0, 1000000 };

                        if (mono_ns() >= c->deadline_ns) {
                                r = -ETIMEDOUT;
                                goto err;
                        }
                        nanosleep(&ts, NULL);
                        continue;
                }
                if (r != -EINPROGRESS && r != -EINTR)
                        goto err;
                r = wait_fd_until(fd, POLLOUT, c->deadline_ns);
                if (r < 0)
                        goto err;
                socklen_t sl = sizeof(r);
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &r, &sl) < 0)
                        r = errno;
                if (r) {
                        r = -r;
                        goto err;
                }
                break;
        }
        *ret_fd = fd;
        return 0;
err:
        close(fd);
        return r;
}

int qmp_connect(const char *socket_path, int timeout_ms, struct qmp **ret)
{
        struct qmp *q;
        struct call c;
        int r;

        if (!socket_path || !ret || timeout_ms < 0)
                return -EINVAL;
        c = call_start(timeout_ms);
        q = calloc(1, sizeof(*q));
        if (!q)
                return -ENOMEM;
        q->fd = -1;
        q->next_id = 1;
        q->tok = json_tokener_new_ex(QMP_JSON_DEPTH);
        if (!q->tok) {
                r = -ENOMEM;
                goto err;
        }
        json_tokener_set_flags(q->tok, JSON_TOKENER_STRICT |
                                       JSON_TOKENER_ALLOW_TRAILING_CHARS |
                                       JSON_TOKENER_VALIDATE_UTF8);
        r = open_socket(socket_path, &c, &q->fd);
        if (r < 0)
                goto err;

        q->want_greeting = true;
        while (!q->greeting && r >= 0)
                r = step(q, &c);
        q->want_greeting = false;
        if (r < 0)
                goto err;
        json_object_put(q->greeting);
        q->greeting = NULL;

        r = transact(q, "qmp_capabilities", NULL, -1, &c, NULL);
        if (r < 0)
                goto err;
        *ret = q;
        return 0;
err:
        qmp_close(q);
        return r;
}

void qmp_close(struct qmp *q)
{
        if (!q)
                return;
        if (q->fd >= 0)
                close(q->fd);
        if (q->tok)
                json_tokener_free(q->tok);
        json_object_put(q->greeting);
        json_object_put(q->response);
        qmp_clear_events(q);
        free(q);
}

int qmp_execute(struct qmp *q, const char *command, json_object *args,
                int timeout_ms, json_object **ret_result)
{
        struct call c;

        if (!q || timeout_ms < 0)
                return -EINVAL;
        c = call_start(timeout_ms);
        return transact(q, command, args, -1, &c, ret_result);
}

int qmp_execute_json(struct qmp *q, const char *command, const char *args_json,
                     int timeout_ms, json_object **ret_result)
{
        json_object *args = NULL;
        int r;

        if (!q || timeout_ms < 0)
                return -EINVAL;
        if (args_json) {
                args = json_tokener_parse(args_json);
                if (!args)
                        return -EINVAL;
        }
        r = qmp_execute(q, command, args, timeout_ms, ret_result);
        json_object_put(args);
        return r;
}

int qmp_send_fd(struct qmp *q, const char *name, int fd, int timeout_ms)
{
        json_object *args;
        struct call c;
        int r;

        if (!q || !name || !*name || fd < 0 || timeout_ms < 0)
                return -EINVAL;
        c = call_start(timeout_ms);
        args = json_object_new_object();
        if (!args)
                return -ENOMEM;
        if (json_object_object_add(args, "fdname",
                                   json_object_new_string(name)) < 0) {
                json_object_put(args);
                return -ENOMEM;
        }
        r = transact(q, "getfd", args, fd, &c, NULL);
        json_object_put(args);
        return r;
}

int qmp_wait_event(struct qmp *q, const char *name, int timeout_ms,
                   json_object **ret_event)
{
        struct call c;
        ssize_t i;
        int r = 0;

        if (!q || timeout_ms < 0)
                return -EINVAL;
        /* Events that arrived before a failure are still facts (e.g. a
         * SHUTDOWN followed by EOF), so the queue is served even when
         * broken. */
        i = find_event(q, name, 0);
        if (i < 0) {
                if (q->broken)
                        return -EPIPE;
                c = call_start(timeout_ms);
                while (i < 0) {
                        uint64_t seen = q->events_seen;

                        r = step(q, &c);
                        if (r < 0)
                                return r;
                        if (q->events_seen != seen)
                                i = find_event(q, name, q->nevents - 1);
                }
        }
        json_object *ev = take_event(q, (size_t)i);
        if (ret_event)
                *ret_event = ev;
        else
                json_object_put(ev);
        return 0;
}

void qmp_drain(struct qmp *q)
{
        if (!q)
                return;
        struct call c = call_start(0);
        while (step(q, &c) == 0)
                ;
}

bool qmp_shutdown_seen(const struct qmp *q, bool *ret_guest)
{
        if (!q || !q->shutdown_seen)
                return false;
        *ret_guest = q->shutdown_guest;
        return true;
}

void qmp_clear_events(struct qmp *q)
{
        if (!q)
                return;
        for (size_t i = 0; i < q->nevents; i++)
                json_object_put(q->events[i]);
        q->nevents = 0;
}

const char *qmp_last_error(const struct qmp *q)
{
        return q ? q->last_error : "";
}

bool qmp_is_broken(const struct qmp *q)
{
        return !q || q->broken;
}

int qmp_fd(const struct qmp *q)
{
        return q ? q->fd : -EBADF;
}
