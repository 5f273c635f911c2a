/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * dirtier: the test guest's memory workload.
 *
 * It keeps modifying a working set the way real programs do, so that a
 * checkpointing engine sees realistic dirty pages: most writes hit a hot
 * region, each write changes only a few short runs of a page, and the data
 * written is compressible.  That exercises dirty tracking, delta encoding
 * and compression the same way a real guest would.
 *
 *   dirtier -r MIB_S -w WSS_MIB -p PORT [-s SEED]
 *
 * -r is the rate of modified bytes per second by the guest's clock, paced
 * in 10 ms slices; -r 0 runs flat out.  Flat out, every step costs the same
 * on average (fixed random distributions, no I/O), so the cumulative
 * counters advance steadily and the host can measure guest throughput by
 * its own wall clock, which -- unlike the guest's -- keeps running while
 * the VM is paused for a checkpoint.
 *
 * Port PORT answers "stat\n" with
 *   "bytes=<modified bytes> pages=<page touches> rate_mib_s=<-r>
 *    wss_mib=<-w> uptime_ms=<guest CLOCK_BOOTTIME>\n"   (one line)
 * The counters are cumulative since start.
 */
#include "lineserv.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024.0 * 1024.0)
#define SLICE_NS 10000000L          /* pacing granularity: 10 ms */
/* After the guest was not running (paused VM, starved vCPU), catch up at
 * most this much, so a pause does not turn into a burst. */
#define MAX_CATCHUP_NS 100000000L
#define HOT_PAGES_PCT 20            /* the hot region: 20% of the pages... */
#define HOT_WRITES_PCT 80           /* ...gets 80% of the page touches */
#define MIN_RUNS 1
#define MAX_RUNS 4
#define MIN_RUN_LEN 16
#define MAX_RUN_LEN 256

struct config {
	double rate_mib_s;   /* 0: as fast as possible */
	unsigned wss_mib;
	uint16_t port;
	uint64_t seed;
};

struct workset {
	unsigned char *base;
	size_t page_size;
	size_t npages;
	size_t nhot;         /* pages [0, nhot) are the hot region */
};

/* Published for the stat thread; written only by the dirtying thread. */
struct stats {
	_Atomic uint64_t bytes;
	_Atomic uint64_t pages;
};

struct dirtier {
	struct config cfg;
	struct workset ws;
	struct stats pub;
	uint64_t rng;        /* xorshift64* state, never 0 */
	uint64_t step;       /* also the data written: changes every step */
	uint64_t bytes, pages;
};

/* ---- small helpers ---- */

static uint64_t rng_next(uint64_t *s)
{
	/* xorshift64*: fast and good enough to spread writes. */
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545F4914F6CDD1DULL;
}

static uint64_t now_ns(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/*
 * Overwrite len bytes at p with one of three compressible patterns, all
 * derived from v so that consecutive steps write different data.
 */
static void fill_run(unsigned char *p, size_t len, unsigned kind, uint64_t v)
{
	switch (kind) {
	case 0: /* a repeated 64-bit counter, as in arrays of counters */
		for (size_t i = 0; i < len; i++)
			p[i] = (unsigned char)(v >> (8 * (i & 7)));
		break;
	case 1: /* a repeated byte, as in memset() */
		memset(p, (int)(v & 0xff), len);
		break;
	default: /* ascending 32-bit little-endian integers, as in tables */
		for (size_t i = 0; i < len; i++)
			p[i] = (unsigned char)(((uint32_t)v + (uint32_t)(i / 4)) >> (8 * (i & 3)));
		break;
	}
}

/* ---- the workload ---- */

static int workset_init(struct workset *ws, unsigned wss_mib)
{
	size_t len = (size_t)wss_mib << 20;

	ws->page_size = (size_t)sysconf(_SC_PAGESIZE);
	ws->npages = len / ws->page_size;
	ws->nhot = ws->npages * HOT_PAGES_PCT / 100;
	if (ws->nhot == 0)
		ws->nhot = 1;
	ws->base = mmap(NULL, len, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (ws->base == MAP_FAILED)
		return -1;
	/* Keep "page" meaning a 4 KiB page, also for in-guest trackers. */
	madvise(ws->base, len, MADV_NOHUGEPAGE);
	/* Populate every page with distinct, non-zero data up front, so the
	 * run starts from a resident working set, not from zero pages. */
	for (size_t i = 0; i < ws->npages; i++)
		fill_run(ws->base + i * ws->page_size, ws->page_size, 0, i + 1);
	return 0;
}

static size_t pick_page(const struct workset *ws, uint64_t *rng)
{
	uint64_t x = rng_next(rng);

	if (x % 100 < HOT_WRITES_PCT)
		return (size_t)((x >> 8) % ws->nhot);
	return (size_t)((x >> 8) % ws->npages);
}

/*
 * Rewrite 1-4 short runs of one page.  Each run lives in its own segment
 * of the page, so runs never overlap and the bytes counted are the bytes
 * changed.  Returns the number of bytes written.
 */
static size_t dirty_one_page(struct dirtier *d)
{
	const struct workset *ws = &d->ws;
	unsigned char *page = ws->base + pick_page(ws, &d->rng) * ws->page_size;
	unsigned nruns = MIN_RUNS + (unsigned)(rng_next(&d->rng) % (MAX_RUNS - MIN_RUNS + 1));
	size_t seg = ws->page_size / nruns;
	size_t written = 0;

	for (unsigned i = 0; i < nruns; i++) {
		uint64_t y = rng_next(&d->rng);
		size_t len = MIN_RUN_LEN + (size_t)(y % (MAX_RUN_LEN - MIN_RUN_LEN + 1));
		size_t off = i * seg + (size_t)((y >> 16) % (seg - len + 1));

		fill_run(page + off, len, (unsigned)((y >> 40) % 3), d->step);
		written += len;
	}
	d->step++;
	d->bytes += written;
	d->pages++;
	/* Relaxed stores are plain moves on x86: cheap enough for every step. */
	atomic_store_explicit(&d->pub.bytes, d->bytes, memory_order_relaxed);
	atomic_store_explicit(&d->pub.pages, d->pages, memory_order_relaxed);
	return written;
}

static void run_flat_out(struct dirtier *d)
{
	for (;;)
		dirty_one_page(d);
}

/* Do the bytes owed for the time that passed, then sleep one slice. */
static void run_paced(struct dirtier *d)
{
	const double bytes_per_ns = d->cfg.rate_mib_s * MIB / 1e9;
	const struct timespec slice = { .tv_sec = 0, .tv_nsec = SLICE_NS };
	uint64_t last = now_ns(CLOCK_MONOTONIC);
	double credit = 0; /* bytes owed; negative after an overshoot */

	for (;;) {
		uint64_t t = now_ns(CLOCK_MONOTONIC);
		uint64_t elapsed = t - last;

		last = t;
		if (elapsed > (uint64_t)MAX_CATCHUP_NS)
			elapsed = MAX_CATCHUP_NS;
		credit += (double)elapsed * bytes_per_ns;
		while (credit > 0)
			credit -= (double)dirty_one_page(d);
		nanosleep(&slice, NULL);
	}
}

/* ---- the stat service ---- */

static int handle_line(void *ctx, const char *line, char *reply, size_t cap)
{
	struct dirtier *d = ctx;

	if (strcmp(line, "stat") != 0)
		return snprintf(reply, cap, "error unknown-command\n");
	return snprintf(reply, cap,
			"bytes=%" PRIu64 " pages=%" PRIu64 " rate_mib_s=%g wss_mib=%u uptime_ms=%" PRIu64 "\n",
			atomic_load_explicit(&d->pub.bytes, memory_order_relaxed),
			atomic_load_explicit(&d->pub.pages, memory_order_relaxed),
			d->cfg.rate_mib_s, d->cfg.wss_mib,
			now_ns(CLOCK_BOOTTIME) / 1000000);
}

struct server_arg {
	int fd;
	struct dirtier *d;
};

static void *serve(void *p)
{
	struct server_arg *a = p;

	lineserv_run(a->fd, handle_line, a->d);
	fprintf(stderr, "dirtier: stat server: %s\n", strerror(errno));
	exit(1);
}

/* ---- main ---- */

static void usage(void)
{
	fprintf(stderr, "usage: dirtier [-r MIB_S] [-w WSS_MIB] [-p PORT] [-s SEED]\n"
			"  -r 0 means as fast as possible\n");
	exit(2);
}

static void parse_args(int argc, char **argv, struct config *cfg)
{
	long port = 7001, wss = 64;
	int opt;

	cfg->rate_mib_s = 4;
	cfg->seed = 1; /* fixed by default: same workload in every run */
	while ((opt = getopt(argc, argv, "r:w:p:s:")) != -1) {
		switch (opt) {
		case 'r':
			cfg->rate_mib_s = strtod(optarg, NULL);
			break;
		case 'w':
			wss = strtol(optarg, NULL, 10);
			break;
		case 'p':
			port = strtol(optarg, NULL, 10);
			break;
		case 's':
			cfg->seed = strtoull(optarg, NULL, 0);
			break;
		default:
			usage();
		}
	}
	if (optind != argc || !(cfg->rate_mib_s >= 0) || wss < 1 || wss > 1 << 20 ||
	    port <= 0 || port > 65535)
		usage();
	cfg->wss_mib = (unsigned)wss;
	cfg->port = (uint16_t)port;
}

int main(int argc, char **argv)
{
	static struct dirtier d;
	struct server_arg sa;
	pthread_t thr;
	int err;

	parse_args(argc, argv, &d.cfg);
	d.rng = d.cfg.seed ? d.cfg.seed : 1;
	signal(SIGPIPE, SIG_IGN);

	if (workset_init(&d.ws, d.cfg.wss_mib) < 0) {
		fprintf(stderr, "dirtier: mmap %u MiB: %s\n", d.cfg.wss_mib, strerror(errno));
		return 1;
	}
	/* Listen only once the working set is resident: "listening" means
	 * "running", which is what the guest's READY line promises. */
	sa.d = &d;
	sa.fd = lineserv_listen(d.cfg.port);
	if (sa.fd < 0) {
		fprintf(stderr, "dirtier: listen on port %u: %s\n", d.cfg.port, strerror(errno));
		return 1;
	}
	err = pthread_create(&thr, NULL, serve, &sa);
	if (err) {
		fprintf(stderr, "dirtier: pthread_create: %s\n", strerror(err));
		return 1;
	}

	if (d.cfg.rate_mib_s > 0)
		run_paced(&d);
	else
		run_flat_out(&d);
	return 0;
}
