/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * hvq: send one request line to a local line-protocol service and print
 * the one-line reply.  The guest's /init uses it to wait for its services
 * and for the heartbeat; busybox nc would wait for the server to close.
 *
 *   hvq [-a IPV4] [-t SECONDS] PORT REQUEST
 *
 * Exit status: 0 reply printed, 1 no connection or no reply, 2 usage.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static int connect_to(const char *addr, long port, long timeout_s)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	struct timeval tv = { .tv_sec = timeout_s };
	int fd;

	if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
		return -1;
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Read up to and including the first newline.  Returns length or -1. */
static int read_line(int fd, char *buf, size_t cap)
{
	size_t len = 0;

	while (len + 1 < cap) {
		ssize_t n = recv(fd, buf + len, cap - 1 - len, 0);

		if (n <= 0)
			return -1;
		len += (size_t)n;
		if (memchr(buf, '\n', len))
			break;
	}
	buf[len] = '\0';
	return memchr(buf, '\n', len) ? (int)len : -1;
}

int main(int argc, char **argv)
{
	const char *addr = "127.0.0.1";
	long timeout_s = 5, port;
	char req[300], reply[512];
	int opt, fd, n;

	while ((opt = getopt(argc, argv, "a:t:")) != -1) {
		if (opt == 'a')
			addr = optarg;
		else if (opt == 't')
			timeout_s = strtol(optarg, NULL, 10);
		else
			return 2;
	}
	if (argc - optind != 2)
		goto usage;
	port = strtol(argv[optind], NULL, 10);
	if (port <= 0 || port > 65535 || timeout_s < 1)
		goto usage;
	n = snprintf(req, sizeof(req), "%s\n", argv[optind + 1]);
	if (n < 0 || (size_t)n >= sizeof(req))
		goto usage;

	fd = connect_to(addr, port, timeout_s);
	if (fd < 0 || send(fd, req, (size_t)n, MSG_NOSIGNAL) != n ||
	    read_line(fd, reply, sizeof(reply)) < 0)
		return 1;
	fputs(reply, stdout);
	close(fd);
	return 0;
usage:
	fprintf(stderr, "usage: hvq [-a IPV4] [-t SECONDS] PORT REQUEST\n");
	return 2;
}
