/* SPDX-License-Identifier: GPL-2.0-or-later */
/* lineserv: poll() server for line-oriented request/reply protocols. */
#include "lineserv.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CLIENTS 64
#define INBUF_SIZE (LINESERV_MAX_LINE + 1)
/* Room for many pipelined replies before the client is throttled. */
#define OUTBUF_SIZE (16 * LINESERV_MAX_REPLY)

struct client {
	int fd;                 /* -1 when the slot is free */
	size_t inlen;           /* bytes buffered in in[] */
	size_t outoff, outlen;  /* pending reply bytes are out[outoff..outlen) */
	char in[INBUF_SIZE];
	char out[OUTBUF_SIZE];
};

struct server {
	int listen_fd;
	lineserv_handler handler;
	void *ctx;
	struct client clients[MAX_CLIENTS];
};

int lineserv_listen(uint16_t port)
{
	struct sockaddr_in sa = {
		.sin_family = AF_INET,
		.sin_port = htons(port),
		.sin_addr.s_addr = htonl(INADDR_ANY),
	};
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	/* A restarted service must be able to rebind at once. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(fd, 64) < 0) {
		int saved = errno;
		close(fd);
		errno = saved;
		return -1;
	}
	return fd;
}

static void client_close(struct client *c)
{
	close(c->fd);
	c->fd = -1;
	c->inlen = c->outoff = c->outlen = 0;
}

static void accept_clients(struct server *s)
{
	for (;;) {
		int one = 1;
		int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		struct client *slot = NULL;

		if (fd < 0)
			return; /* EAGAIN, or a client that already went away */
		for (int i = 0; i < MAX_CLIENTS && !slot; i++)
			if (s->clients[i].fd < 0)
				slot = &s->clients[i];
		if (!slot) {
			close(fd); /* full: refuse rather than block others */
			continue;
		}
		/* Replies are tiny and latency is measured: no Nagle delay. */
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		slot->fd = fd;
		slot->inlen = slot->outoff = slot->outlen = 0;
	}
}

/* Send what is pending without blocking.  Returns false if the client is gone. */
static bool client_flush(struct client *c)
{
	while (c->outoff < c->outlen) {
		ssize_t n = send(c->fd, c->out + c->outoff, c->outlen - c->outoff,
				 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN || errno == EWOULDBLOCK;
		}
		c->outoff += (size_t)n;
	}
	c->outoff = c->outlen = 0;
	return true;
}

static bool out_has_room(const struct client *c)
{
	return OUTBUF_SIZE - c->outlen >= LINESERV_MAX_REPLY;
}

/*
 * Run the handler on each complete buffered line while there is room for
 * its reply.  Returns false if the client must be closed.
 */
static bool client_process(struct server *s, struct client *c)
{
	for (;;) {
		char *nl = memchr(c->in, '\n', c->inlen);
		size_t used;
		int n;

		if (!nl) {
			/* A full buffer without a newline is not our protocol. */
			return c->inlen < INBUF_SIZE;
		}
		if (!out_has_room(c))
			return true; /* resume once the client has read replies */
		*nl = '\0';
		if (nl > c->in && nl[-1] == '\r')
			nl[-1] = '\0';
		n = s->handler(s->ctx, c->in, c->out + c->outlen, LINESERV_MAX_REPLY);
		if (n < 0)
			return false;
		/* snprintf-style handlers return the untruncated length */
		c->outlen += (size_t)n < LINESERV_MAX_REPLY ? (size_t)n : LINESERV_MAX_REPLY - 1;
		used = (size_t)(nl - c->in) + 1;
		memmove(c->in, c->in + used, c->inlen - used);
		c->inlen -= used;
	}
}

/* Read what is available.  Returns false on EOF or error. */
static bool client_read(struct client *c)
{
	ssize_t n;

	do
		n = recv(c->fd, c->in + c->inlen, INBUF_SIZE - c->inlen, MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EAGAIN || errno == EWOULDBLOCK;
	if (n == 0)
		return false; /* peer closed: pending replies have nowhere to go */
	c->inlen += (size_t)n;
	return true;
}

static void client_event(struct server *s, struct client *c, short revents)
{
	bool ok = true;

	if (revents & (POLLERR | POLLNVAL)) {
		client_close(c);
		return;
	}
	if (revents & POLLIN)
		ok = client_read(c);
	else if (revents & POLLHUP)
		ok = false;
	/* Process and flush until no more progress: a flush may make room
	 * for replies to lines that were already buffered. */
	while (ok) {
		size_t before = c->inlen;

		ok = client_process(s, c) && client_flush(c);
		if (c->inlen == before || c->outlen)
			break;
	}
	if (!ok)
		client_close(c);
}

/* Fill pfd[] for the listener and active clients; idx[] maps back. */
static nfds_t build_pollset(struct server *s, struct pollfd *pfd, int *idx)
{
	nfds_t n = 1;

	pfd[0] = (struct pollfd){ .fd = s->listen_fd, .events = POLLIN };
	for (int i = 0; i < MAX_CLIENTS; i++) {
		struct client *c = &s->clients[i];
		short ev = 0;

		if (c->fd < 0)
			continue;
		/* Throttle a client that is not reading its replies. */
		if (c->inlen < INBUF_SIZE && out_has_room(c))
			ev |= POLLIN;
		if (c->outlen)
			ev |= POLLOUT;
		pfd[n] = (struct pollfd){ .fd = c->fd, .events = ev };
		idx[n++] = i;
	}
	return n;
}

int lineserv_run(int listen_fd, lineserv_handler handler, void *ctx)
{
	static struct server s; /* large; one server per process */
	struct pollfd pfd[MAX_CLIENTS + 1];
	int idx[MAX_CLIENTS + 1];

	s.listen_fd = listen_fd;
	s.handler = handler;
	s.ctx = ctx;
	for (int i = 0; i < MAX_CLIENTS; i++)
		s.clients[i].fd = -1;

	for (;;) {
		nfds_t n = build_pollset(&s, pfd, idx);

		if (poll(pfd, n, -1) < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		for (nfds_t i = 1; i < n; i++)
			if (pfd[i].revents)
				client_event(&s, &s.clients[idx[i]], pfd[i].revents);
		if (pfd[0].revents & POLLIN)
			accept_clients(&s);
	}
}
