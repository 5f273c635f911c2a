/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * counterd: the test guest's counter service.
 *
 * A client that got "<v>\n" for "next" has seen output that depends on the
 * guest's state; after a failover the resumed guest must remember at least
 * v.  Tests use that to check the output-commit rule, and boot_id in "stat"
 * to check that the guest was resumed, not rebooted.
 *
 * Protocol (TCP, one request per line, replies end in "\n"):
 *   next  -> increments the counter, replies "<new value>"
 *   get   -> replies "<current value>"
 *   stat  -> replies "counter=<v> uptime_ms=<ms> boot_id=<uuid>"
 *   poweroff -> replies "ok poweroff", then the guest powers itself off
 *            (ACPI, as `poweroff -f` would) half a second later, so the
 *            reply can leave first; the host sees a guest shutdown
 *   other -> replies "error unknown-command"
 *
 * With -s PATH every increment is first written to PATH and made durable
 * (fdatasync) before the reply is queued, so an acknowledged value survives
 * a crash of the guest's disk as well as of its memory.
 */
#include "lineserv.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/reboot.h>
#include <time.h>
#include <unistd.h>

#define BOOT_ID_PATH "/proc/sys/kernel/random/boot_id"
/* On-disk record: the value in decimal, fixed width, one line.  32 bytes
 * fit in one sector, so a single pwrite never tears on real disks. */
#define STORE_RECORD_LEN 32

/* Durable copy of the counter; fd < 0 means "memory only". */
struct store {
	int fd;
};

struct counterd {
	uint64_t value;
	struct store store;
	char boot_id[40];
};

/* ---- store: the only part that touches the disk ---- */

static int store_open(struct store *st, const char *path)
{
	st->fd = -1;
	if (!path)
		return 0;
	st->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	return st->fd < 0 ? -1 : 0;
}

/* Read the last committed value; a missing or empty record means 0. */
static int store_load(const struct store *st, uint64_t *value)
{
	char rec[STORE_RECORD_LEN + 1] = "";
	ssize_t n;
	char *end;

	*value = 0;
	if (st->fd < 0)
		return 0;
	n = pread(st->fd, rec, STORE_RECORD_LEN, 0);
	if (n < 0)
		return -1;
	if (n == 0)
		return 0;
	rec[n] = '\0';
	errno = 0;
	*value = strtoull(rec, &end, 10);
	if (errno || end == rec || *end != '\n') {
		errno = EINVAL;
		return -1;
	}
	return 0;
}

/* Make value durable before anyone is told about it. */
static int store_commit(const struct store *st, uint64_t value)
{
	char rec[STORE_RECORD_LEN + 1];

	if (st->fd < 0)
		return 0;
	snprintf(rec, sizeof(rec), "%0*" PRIu64 "\n", STORE_RECORD_LEN - 1, value);
	if (pwrite(st->fd, rec, STORE_RECORD_LEN, 0) != STORE_RECORD_LEN)
		return -1;
	return fdatasync(st->fd);
}

/* ---- requests ---- */

static uint64_t uptime_ms(void)
{
	struct timespec ts;

	/* BOOTTIME: the guest's own notion of time since boot. */
	clock_gettime(CLOCK_BOOTTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void read_boot_id(char *buf, size_t cap)
{
	FILE *f = fopen(BOOT_ID_PATH, "re");

	snprintf(buf, cap, "unknown");
	if (!f)
		return;
	if (fgets(buf, (int)cap, f))
		buf[strcspn(buf, "\n")] = '\0';
	fclose(f);
}

static int reply_next(struct counterd *d, char *reply, size_t cap)
{
	uint64_t v = d->value + 1;

	/* Commit first: the memory value only moves once the disk has it. */
	if (store_commit(&d->store, v) < 0)
		return snprintf(reply, cap, "error store %s\n", strerror(errno));
	d->value = v;
	return snprintf(reply, cap, "%" PRIu64 "\n", v);
}

/* A child powers the machine off once the reply had time to leave (with
 * output commit it waits for the next checkpoint's ACK). */
static int reply_poweroff(char *reply, size_t cap)
{
	pid_t pid = fork();

	if (pid < 0)
		return snprintf(reply, cap, "error fork %s\n", strerror(errno));
	if (pid == 0) {
		usleep(500000);
		sync();
		reboot(RB_POWER_OFF);
		_exit(1);
	}
	return snprintf(reply, cap, "ok poweroff\n");
}

static int handle_line(void *ctx, const char *line, char *reply, size_t cap)
{
	struct counterd *d = ctx;

	if (strcmp(line, "next") == 0)
		return reply_next(d, reply, cap);
	if (strcmp(line, "get") == 0)
		return snprintf(reply, cap, "%" PRIu64 "\n", d->value);
	if (strcmp(line, "stat") == 0)
		return snprintf(reply, cap, "counter=%" PRIu64 " uptime_ms=%" PRIu64
				" boot_id=%s\n", d->value, uptime_ms(), d->boot_id);
	if (strcmp(line, "poweroff") == 0)
		return reply_poweroff(reply, cap);
	return snprintf(reply, cap, "error unknown-command\n");
}

/* ---- main ---- */

static void usage(void)
{
	fprintf(stderr, "usage: counterd [-p PORT] [-s STATEFILE]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static struct counterd d;
	const char *state_path = NULL;
	long port = 7000;
	int opt, lfd;

	while ((opt = getopt(argc, argv, "p:s:")) != -1) {
		switch (opt) {
		case 'p':
			port = strtol(optarg, NULL, 10);
			break;
		case 's':
			state_path = optarg;
			break;
		default:
			usage();
		}
	}
	if (optind != argc || port <= 0 || port > 65535)
		usage();

	signal(SIGPIPE, SIG_IGN);
	read_boot_id(d.boot_id, sizeof(d.boot_id));
	if (store_open(&d.store, state_path) < 0 || store_load(&d.store, &d.value) < 0) {
		fprintf(stderr, "counterd: state file %s: %s\n", state_path, strerror(errno));
		return 1;
	}
	lfd = lineserv_listen((uint16_t)port);
	if (lfd < 0) {
		fprintf(stderr, "counterd: listen on port %ld: %s\n", port, strerror(errno));
		return 1;
	}
	lineserv_run(lfd, handle_line, &d);
	fprintf(stderr, "counterd: poll: %s\n", strerror(errno));
	return 1;
}
