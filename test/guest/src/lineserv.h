/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * lineserv: a tiny single-threaded poll() server for line-oriented TCP
 * request/reply protocols ("get\n" -> "42\n"), shared by the test guest's
 * services.
 *
 * Every complete request line is handed to a handler, in arrival order per
 * client, and the handler's reply is queued for that client.  A handler is
 * only called when the client's output buffer has room for a full reply, so
 * a client that stops reading is throttled instead of making the server
 * drop replies (which matters for a counter: an increment must not be
 * performed unless its reply can be delivered in order).
 */
#ifndef HAVMS_GUEST_LINESERV_H
#define HAVMS_GUEST_LINESERV_H

#include <stddef.h>
#include <stdint.h>

/* Longest request line accepted (without the newline). */
#define LINESERV_MAX_LINE 255
/* Size of the reply buffer handed to a handler. */
#define LINESERV_MAX_REPLY 256

/*
 * Handle one request line (NUL-terminated, newline and trailing '\r'
 * removed).  Write the reply (including its newline) into reply[0..cap) and
 * return its length, or return -1 to close the connection without reply.
 */
typedef int (*lineserv_handler)(void *ctx, const char *line, char *reply, size_t cap);

/* Open a listening TCP socket on all IPv4 addresses.  Returns fd or -1. */
int lineserv_listen(uint16_t port);

/*
 * Serve clients on the listening socket forever.  Returns -1 only on a
 * fatal error (errno set).  SIGPIPE must be ignored or blocked by the
 * caller; replies are sent with MSG_NOSIGNAL anyway.
 */
int lineserv_run(int listen_fd, lineserv_handler handler, void *ctx);

#endif
