/* qmp: a small synchronous QMP client with deadlines.
 *
 * Owns: one connection to one QEMU's QMP unix socket, the greeting and
 * capabilities negotiation, command/response matching by "id", and a queue
 * of asynchronous events received while waiting for responses.
 * Does not own: QEMU's lifetime. Never blocks past the deadline it is
 * given; after a timeout or protocol error the connection is marked broken
 * and every later call fails with -EPIPE (the caller decides what to do
 * with the VM).
 */
#pragma once
#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>

struct qmp;

/* Connect to socket_path, read the greeting and negotiate capabilities. */
int qmp_connect(const char *socket_path, int timeout_ms, struct qmp **ret);
void qmp_close(struct qmp *q);

/* Execute command with optional arguments (args is borrowed, may be NULL).
 * On success *ret_result (if non-NULL) holds the "return" value with a new
 * reference. A QMP error becomes -EIO with the error's "desc" in
 * qmp_last_error(). */
int qmp_execute(struct qmp *q, const char *command, json_object *args,
                int timeout_ms, json_object **ret_result);

/* Convenience: execute with arguments given as a JSON text, e.g.
 * qmp_execute_json(q, "migrate", "{\"uri\":\"fd:ds\"}", 1000, NULL). */
int qmp_execute_json(struct qmp *q, const char *command, const char *args_json,
                     int timeout_ms, json_object **ret_result);

/* Pass fd to QEMU under name (SCM_RIGHTS + "getfd"). */
int qmp_send_fd(struct qmp *q, const char *name, int fd, int timeout_ms);

/* Wait for an event named name (already queued, or arriving within
 * timeout). *ret_event (if non-NULL) gets the whole event object. */
int qmp_wait_event(struct qmp *q, const char *name, int timeout_ms,
                   json_object **ret_event);
/* Drop queued events. */
void qmp_clear_events(struct qmp *q);
/* Parse what QEMU already sent, without waiting, even after a failure:
 * the last words of a QEMU that exited are still in the socket. */
void qmp_drain(struct qmp *q);
/* Has a SHUTDOWN event arrived on this connection (ever, even if the
 * queue was cleared since)? *ret_guest: its "guest" field (the guest
 * powered itself off, as opposed to quit or a signal). */
bool qmp_shutdown_seen(const struct qmp *q, bool *ret_guest);

const char *qmp_last_error(const struct qmp *q);
bool qmp_is_broken(const struct qmp *q);
int qmp_fd(const struct qmp *q);
