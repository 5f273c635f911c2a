/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * diskw: the test guest's disk-write load, for the benchmark's disk write
 * throughput (protected vs unprotected).
 *
 * Protocol (TCP, one request per line):
 *   write <MiB>  -> writes MiB of pseudo-random data (incompressible, so
 *                   the replication stream cannot cheat) to FILE in 1 MiB
 *                   pwrites, then fdatasync; replies "ok bytes=<n>" once
 *                   the data is durable. The host times the request with
 *                   its own clock (the guest's clock hides the pauses).
 *   other        -> "error unknown-command"
 */
#include "lineserv.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK (1u << 20)
#define MAX_MIB 1024

struct diskw {
	const char *path;
	uint64_t seed;
	uint8_t buf[CHUNK];
};

/* xorshift64: cheap, and different for every chunk */
static void fill(struct diskw *w)
{
	uint64_t x = w->seed;
	for (size_t i = 0; i < CHUNK; i += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		memcpy(w->buf + i, &x, 8);
	}
	w->seed = x;
}

static int handle_line(void *ctx, const char *line, char *reply, size_t cap)
{
	struct diskw *w = ctx;
	char *end;
	long mib;
	int fd;

	if (strncmp(line, "write ", 6))
		return snprintf(reply, cap, "error unknown-command\n");
	mib = strtol(line + 6, &end, 10);
	if (*end || mib <= 0 || mib > MAX_MIB)
		return snprintf(reply, cap, "error bad-size\n");
	fd = open(w->path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return snprintf(reply, cap, "error open %s\n", strerror(errno));
	for (long i = 0; i < mib; i++) {
		fill(w);
		if (pwrite(fd, w->buf, CHUNK, (off_t)i * CHUNK) != CHUNK) {
			close(fd);
			return snprintf(reply, cap, "error write %s\n", strerror(errno));
		}
	}
	if (fdatasync(fd) < 0) {
		close(fd);
		return snprintf(reply, cap, "error fdatasync %s\n", strerror(errno));
	}
	close(fd);
	return snprintf(reply, cap, "ok bytes=%" PRIu64 "\n", (uint64_t)mib * CHUNK);
}

int main(int argc, char **argv)
{
	static struct diskw w = { .seed = 0x9e3779b97f4a7c15ull };
	long port;
	int lfd;

	if (argc != 3) {
		fprintf(stderr, "usage: diskw PORT FILE\n");
		return 2;
	}
	port = strtol(argv[1], NULL, 10);
	w.path = argv[2];
	signal(SIGPIPE, SIG_IGN);
	lfd = lineserv_listen((uint16_t)port);
	if (lfd < 0) {
		fprintf(stderr, "diskw: listen on port %ld: %s\n", port, strerror(errno));
		return 1;
	}
	lineserv_run(lfd, handle_line, &w);
	return 1;
}
