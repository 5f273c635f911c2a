#include "accel.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util.h"

extern char **environ;

/* ---- the probe guest ----
 *
 * A 64 KiB -bios image. QEMU maps it at 0xFFFF0000 (the CPU starts at
 * 0xFFFFFFF0) and aliases it at 0xF0000, below 1 MiB, where real mode
 * reaches it. It does what a Linux kernel does on its way in, because a
 * broken nested KVM can run real-mode code and still hang a kernel:
 *
 *   reset vector --> real mode --lgdt, CR0.PE--> 32-bit protected mode
 *   --page tables, CR4.PAE, EFER.LME, CR0.PG--> 64-bit long mode (identity
 *   map) --jmp--> the same code through a kernel-style high mapping at
 *   0xFFFFFFFF80000000 --> copy the marker into RAM, write it from there to
 *   COM1 (0x3f8) with a call, then isa-debug-exit and hlt.
 *
 *   image offset   linear (low alias)  what
 *   0x0000         0xF0000             16-bit entry
 *   0x0100         0xF0100             GDT: null, code32, data, code64
 *   0x0120         0xF0120             GDTR (limit, 32-bit base)
 *   0x0200         0xF0200             32-bit code: paging, long mode
 *   0x0300         0xF0300             64-bit code, identity-mapped
 *   0x0380         0xF0380             64-bit code, run at HIGH + 0xF0380
 *   0x03E0         0xF03E0             print(rsi): bytes to COM1 until NUL
 *   0x0400         0xF0400             the marker string
 *   0xFFF0         0xFFFF0 / 4G-16     reset vector: jmp far F000:0000
 *
 *   RAM: 0x1000 PML4, 0x2000 PDPT, 0x3000 PD (one 2 MiB page at 0, reached
 *   both from entry 0 and from PML4[511]/PDPT[510], i.e. the high half),
 *   0x5000 the marker's copy, stack below 0x8000.
 */
#define PROBE_IMAGE_SIZE 0x10000u
#define HIGH 0xFFFFFFFF80000000ull

static void put(uint8_t *img, size_t at, const uint8_t *b, size_t n)
{
        memcpy(img + at, b, n);
}

static void put64(uint8_t *p, uint64_t v)
{
        for (int i = 0; i < 8; i++)
                p[i] = (uint8_t)(v >> (8 * i));
}

static void build_payload(uint8_t *img)
{
        memset(img, 0, PROBE_IMAGE_SIZE);
        static const uint8_t real16[] = {
                0xFA,                                     /* cli */
                0x2E, 0x66, 0x0F, 0x01, 0x16, 0x20, 0x01, /* lgdt cs:[0x120] (32-bit base) */
                0x0F, 0x20, 0xC0,                         /* mov eax, cr0 */
                0x66, 0x83, 0xC8, 0x01,                   /* or eax, 1 (PE) */
                0x0F, 0x22, 0xC0,                         /* mov cr0, eax */
                0x66, 0xEA, 0x00, 0x02, 0x0F, 0x00, 0x08, 0x00, /* jmp dword 0x08:0xF0200 */
        };
        static const uint8_t gdt[] = {
                0, 0, 0, 0, 0, 0, 0, 0,                         /* null */
                0xFF, 0xFF, 0x00, 0x00, 0x00, 0x9A, 0xCF, 0x00, /* 0x08 code, 32-bit, flat */
                0xFF, 0xFF, 0x00, 0x00, 0x00, 0x92, 0xCF, 0x00, /* 0x10 data, flat */
                0xFF, 0xFF, 0x00, 0x00, 0x00, 0x9A, 0xAF, 0x00, /* 0x18 code, 64-bit (L) */
        };
        static const uint8_t gdtr[] = { 0x1F, 0x00, 0x00, 0x01, 0x0F, 0x00 }; /* 32 bytes at 0xF0100 */
        static const uint8_t prot32[] = {
                0x66, 0xB8, 0x10, 0x00,                   /* mov ax, 0x10 */
                0x8E, 0xD8,                               /* mov ds, ax */
                0x8E, 0xC0,                               /* mov es, ax */
                0x8E, 0xD0,                               /* mov ss, ax */
                0xBC, 0x00, 0x80, 0x00, 0x00,             /* mov esp, 0x8000 */
                0xFC,                                     /* cld */
                0xBF, 0x00, 0x10, 0x00, 0x00,             /* mov edi, 0x1000 */
                0xB9, 0x00, 0x0C, 0x00, 0x00,             /* mov ecx, 0xC00 (3 pages of dwords) */
                0x31, 0xC0,                               /* xor eax, eax */
                0xF3, 0xAB,                               /* rep stosd: clear the tables */
                0xC7, 0x05, 0x00, 0x10, 0x00, 0x00, 0x03, 0x20, 0x00, 0x00, /* PML4[0] = PDPT|P|W */
                0xC7, 0x05, 0xF8, 0x1F, 0x00, 0x00, 0x03, 0x20, 0x00, 0x00, /* PML4[511] = PDPT|P|W */
                0xC7, 0x05, 0x00, 0x20, 0x00, 0x00, 0x03, 0x30, 0x00, 0x00, /* PDPT[0] = PD|P|W */
                0xC7, 0x05, 0xF0, 0x2F, 0x00, 0x00, 0x03, 0x30, 0x00, 0x00, /* PDPT[510] = PD|P|W */
                0xC7, 0x05, 0x00, 0x30, 0x00, 0x00, 0x83, 0x00, 0x00, 0x00, /* PD[0] = 2 MiB page 0 */
                0x0F, 0x20, 0xE0,                         /* mov eax, cr4 */
                0x83, 0xC8, 0x20,                         /* or eax, 0x20 (PAE) */
                0x0F, 0x22, 0xE0,                         /* mov cr4, eax */
                0xB8, 0x00, 0x10, 0x00, 0x00,             /* mov eax, 0x1000 */
                0x0F, 0x22, 0xD8,                         /* mov cr3, eax */
                0xB9, 0x80, 0x00, 0x00, 0xC0,             /* mov ecx, 0xC0000080 (EFER) */
                0x0F, 0x32,                               /* rdmsr */
                0x0D, 0x00, 0x01, 0x00, 0x00,             /* or eax, 0x100 (LME) */
                0x0F, 0x30,                               /* wrmsr */
                0x0F, 0x20, 0xC0,                         /* mov eax, cr0 */
                0x0D, 0x00, 0x00, 0x00, 0x80,             /* or eax, 0x80000000 (PG) */
                0x0F, 0x22, 0xC0,                         /* mov cr0, eax */
                0xEA, 0x00, 0x03, 0x0F, 0x00, 0x18, 0x00, /* jmp 0x18:0xF0300 (64-bit) */
        };
        uint8_t low64[] = {
                0x48, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0,       /* mov rax, HIGH + 0xF0380 */
                0xFF, 0xE0,                               /* jmp rax */
        };
        put64(low64 + 2, HIGH + 0xF0380);
        uint8_t high64[] = {
                0x48, 0xBC, 0, 0, 0, 0, 0, 0, 0, 0,       /* mov rsp, HIGH + 0x8000 */
                0x48, 0xBE, 0, 0, 0, 0, 0, 0, 0, 0,       /* mov rsi, HIGH + 0xF0400 (marker) */
                0x48, 0xBF, 0, 0, 0, 0, 0, 0, 0, 0,       /* mov rdi, HIGH + 0x5000 */
                0xB9, 0x40, 0x00, 0x00, 0x00,             /* mov ecx, 64 */
                0xF3, 0xA4,                               /* rep movsb */
                0x48, 0xBE, 0, 0, 0, 0, 0, 0, 0, 0,       /* mov rsi, HIGH + 0x5000 */
                0xE8, 0, 0, 0, 0,                         /* call print */
                0x66, 0xBA, 0xF4, 0x00,                   /* mov dx, 0xf4 (isa-debug-exit) */
                0xB0, 0x00,                               /* mov al, 0: QEMU exits 1 */
                0xEE,                                     /* out dx, al */
                0xFA,                                     /* cli */
                0xF4,                                     /* hlt */
                0xEB, 0xFD,                               /* jmp hlt */
        };
        put64(high64 + 2, HIGH + 0x8000);
        put64(high64 + 12, HIGH + 0xF0400);
        put64(high64 + 22, HIGH + 0x5000);
        put64(high64 + 39, HIGH + 0x5000);
        int32_t rel = 0x03E0 - (0x0380 + 47 + 5);       /* print - end of the call */
        memcpy(high64 + 48, &rel, 4);                  /* x86-64 is little-endian */
        static const uint8_t print[] = {
                0x66, 0xBA, 0xF8, 0x03,                   /* mov dx, 0x3f8 */
                0xAC,                                     /* 1: lodsb */
                0x84, 0xC0,                               /* test al, al */
                0x74, 0x03,                               /* jz 2f */
                0xEE,                                     /* out dx, al */
                0xEB, 0xF8,                               /* jmp 1b */
                0xC3,                                     /* 2: ret */
        };
        static const uint8_t reset[] = { 0xEA, 0x00, 0x00, 0x00, 0xF0 }; /* jmp far 0xF000:0 */

        put(img, 0x0000, real16, sizeof(real16));
        put(img, 0x0100, gdt, sizeof(gdt));
        put(img, 0x0120, gdtr, sizeof(gdtr));
        put(img, 0x0200, prot32, sizeof(prot32));
        put(img, 0x0300, low64, sizeof(low64));
        put(img, 0x0380, high64, sizeof(high64));
        put(img, 0x03E0, print, sizeof(print));
        put(img, 0x0400, (const uint8_t *)ACCEL_PROBE_MARKER "\n", sizeof(ACCEL_PROBE_MARKER "\n"));
        put(img, 0xFFF0, reset, sizeof(reset));
}

/* ---- running it ---- */

/* Our descriptors move above 3 so that the child's dup2 onto 0..3 cannot
 * overwrite one before it is copied. */
static int fd_above_3(int fd)
{
        if (fd < 0 || fd > 3)
                return fd;
        int n = fcntl(fd, F_DUPFD_CLOEXEC, 4);
        close(fd);
        return n;
}

struct probe_run {
        pid_t pid;
        int out_fd, err_fd;       /* QEMU's serial (stdout) and its stderr */
        char out[512], err[512];
        size_t n_out, n_err;
};

static int spawn_probe(const char *qemu, const char *accel, int payload_fd,
                       struct probe_run *p, char *why, size_t whylen)
{
        int out[2] = { -1, -1 }, err[2] = { -1, -1 };
        int r = 0;
        if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
                r = -errno;
                snprintf(why, whylen, "pipe: %s", strerror(errno));
                goto out;
        }
        for (int i = 0; i < 2; i++) {
                out[i] = fd_above_3(out[i]);
                err[i] = fd_above_3(err[i]);
        }
        char machine[64];
        snprintf(machine, sizeof(machine), "q35,accel=%s", accel);
        char *const argv[] = {
                (char *)qemu, "-machine", machine, "-cpu", "max", "-m", "16",
                "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-serial", "stdio", "-bios", "/proc/self/fd/3",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", NULL,
        };
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
        posix_spawn_file_actions_adddup2(&fa, err[1], STDERR_FILENO);
        posix_spawn_file_actions_adddup2(&fa, payload_fd, 3);
        posix_spawnattr_t attr;
        posix_spawnattr_init(&attr);
        sigset_t all, none;
        sigfillset(&all);
        sigemptyset(&none);
        posix_spawnattr_setsigdefault(&attr, &all);
        posix_spawnattr_setsigmask(&attr, &none);
        posix_spawnattr_setpgroup(&attr, 0);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK |
                                                POSIX_SPAWN_SETPGROUP);
        int e = posix_spawnp(&p->pid, qemu, &fa, &attr, argv, environ);
        posix_spawnattr_destroy(&attr);
        posix_spawn_file_actions_destroy(&fa);
        if (e) {
                r = -e;
                snprintf(why, whylen, "cannot run %s: %s", qemu, strerror(e));
                goto out;
        }
        p->out_fd = out[0];
        p->err_fd = err[0];
        out[0] = err[0] = -1;
out:
        for (int i = 0; i < 2; i++) {
                if (out[i] >= 0)
                        close(out[i]);
                if (err[i] >= 0)
                        close(err[i]);
        }
        return r;
}

/* Append what fd has to buf (keeping its first bytes); -1 at EOF. */
static int drain(int fd, char *buf, size_t cap, size_t *n)
{
        char tmp[256];
        ssize_t k = read(fd, tmp, sizeof(tmp));
        if (k <= 0)
                return k == 0 || errno != EINTR ? -1 : 0;
        size_t room = cap - 1 - *n;
        size_t take = (size_t)k < room ? (size_t)k : room;
        memcpy(buf + *n, tmp, take);
        *n += take;
        buf[*n] = 0;
        return 0;
}

/* Read QEMU's serial and stderr until the marker, both EOFs (QEMU gone) or
 * the deadline. Returns 1 marker, 0 otherwise; *timed_out says which. */
static int watch_probe(struct probe_run *p, uint64_t deadline_ns, bool *timed_out)
{
        *timed_out = false;
        while (p->out_fd >= 0 || p->err_fd >= 0) {
                if (strstr(p->out, ACCEL_PROBE_MARKER))
                        return 1;
                uint64_t now = now_ns();
                if (now >= deadline_ns) {
                        *timed_out = true;
                        return 0;
                }
                struct pollfd pf[2] = { { .fd = p->out_fd, .events = POLLIN },
                                        { .fd = p->err_fd, .events = POLLIN } };
                int ms = (int)((deadline_ns - now + 999999) / 1000000);
                int n = poll(pf, 2, ms);
                if (n < 0 && errno != EINTR)
                        return 0;
                if (n <= 0)
                        continue;
                if (pf[0].revents && drain(p->out_fd, p->out, sizeof(p->out), &p->n_out) < 0) {
                        close(p->out_fd);
                        p->out_fd = -1;
                }
                if (pf[1].revents && drain(p->err_fd, p->err, sizeof(p->err), &p->n_err) < 0) {
                        close(p->err_fd);
                        p->err_fd = -1;
                }
        }
        return strstr(p->out, ACCEL_PROBE_MARKER) ? 1 : 0;
}

/* QEMU's first stderr line, for the reason. */
static const char *first_line(char *s)
{
        s[strcspn(s, "\r\n")] = 0;
        return s;
}

int accel_probe_with(const char *qemu_binary, const char *accel, int timeout_ms,
                     char *why, size_t whylen)
{
        struct probe_run p = { .pid = -1, .out_fd = -1, .err_fd = -1 };
        snprintf(why, whylen, "%s", "");
        int r;
        int mfd = fd_above_3(memfd_create("havms-accel-probe", MFD_CLOEXEC));
        if (mfd < 0) {
                r = -errno;
                snprintf(why, whylen, "memfd_create: %s", strerror(errno));
                return r;
        }
        uint8_t *img = malloc(PROBE_IMAGE_SIZE);
        if (!img) {
                close(mfd);
                snprintf(why, whylen, "out of memory");
                return -ENOMEM;
        }
        build_payload(img);
        r = write_full(mfd, img, PROBE_IMAGE_SIZE, 0);
        free(img);
        if (r < 0) {
                snprintf(why, whylen, "writing the probe image: %s", strerror(-r));
                close(mfd);
                return r;
        }
        uint64_t t0 = now_ns();
        r = spawn_probe(qemu_binary, accel, mfd, &p, why, whylen);
        close(mfd);
        if (r < 0)
                return r;
        bool timed_out;
        r = watch_probe(&p, t0 + (uint64_t)timeout_ms * 1000000u, &timed_out);
        /* Whatever happened, the probe QEMU ends here. */
        kill(p.pid, SIGKILL);
        int st = 0;
        while (waitpid(p.pid, &st, 0) < 0 && errno == EINTR)
                ;
        if (p.out_fd >= 0)
                close(p.out_fd);
        if (p.err_fd >= 0)
                close(p.err_fd);
        unsigned ms = (unsigned)((now_ns() - t0) / 1000000u);
        if (r == 1) {
                snprintf(why, whylen, "the probe guest ran under %s in %u ms", accel, ms);
                return 1;
        }
        const char *qerr = first_line(p.err);
        if (timed_out)
                snprintf(why, whylen, "the probe guest under %s gave no sign of life in %d ms%s%s",
                         accel, timeout_ms, qerr[0] ? "; QEMU said: " : "", qerr);
        else if (WIFSIGNALED(st) && WTERMSIG(st) != SIGKILL)
                snprintf(why, whylen, "the probe QEMU under %s died of signal %d%s%s", accel,
                         WTERMSIG(st), qerr[0] ? ": " : "", qerr);
        else
                snprintf(why, whylen, "the probe QEMU under %s exited (status %d) before the guest ran%s%s",
                         accel, WIFEXITED(st) ? WEXITSTATUS(st) : -1, qerr[0] ? ": " : "", qerr);
        return 0;
}

int accel_probe(const char *qemu_binary, int timeout_ms, char *why, size_t whylen)
{
        return accel_probe_with(qemu_binary, "kvm", timeout_ms, why, whylen);
}

/* ---- deciding ---- */

void accel_decide(const char *qemu_binary, const char *env, const char *kvm_dev,
                  struct accel_choice *ret)
{
        struct accel_choice c = { .accel = "tcg" };
        char note[96] = "";
        if (env && (!strcmp(env, "kvm") || !strcmp(env, "tcg"))) {
                c.accel = !strcmp(env, "kvm") ? "kvm" : "tcg";
                c.basis = ACCEL_BASIS_ENV;
                snprintf(c.why, sizeof(c.why), "HAVMS_ACCEL=%s", env);
                *ret = c;
                return;
        }
        if (env && env[0] && strcmp(env, "auto"))
                snprintf(note, sizeof(note), " (HAVMS_ACCEL=%.32s ignored: not kvm, tcg or auto)", env);
        if (access(kvm_dev, R_OK | W_OK) < 0) {
                c.basis = ACCEL_BASIS_NO_KVM;
                snprintf(c.why, sizeof(c.why), "%s: %s%s", kvm_dev, strerror(errno), note);
                *ret = c;
                return;
        }
        char why[sizeof(((struct accel_choice *)0)->why) - 96];
        uint64_t t0 = now_ns();
        int r = accel_probe(qemu_binary, ACCEL_PROBE_TIMEOUT_MS, why, sizeof(why));
        c.probe_ms = (unsigned)((now_ns() - t0) / 1000000u);
        if (c.probe_ms == 0)
                c.probe_ms = 1;
        c.basis = r > 0 ? ACCEL_BASIS_PROBE_OK : r == 0 ? ACCEL_BASIS_PROBE_FAILED
                                                        : ACCEL_BASIS_PROBE_ERROR;
        if (r > 0)
                c.accel = "kvm";
        snprintf(c.why, sizeof(c.why), "%s%s", why, note);
        *ret = c;
}

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static bool cache_valid;
static struct accel_choice cache;

void accel_auto(const char *qemu_binary, struct accel_choice *ret)
{
        /* Held through the probe: a second caller waits for the answer
         * rather than starting a second probe. */
        pthread_mutex_lock(&cache_lock);
        if (!cache_valid) {
                accel_decide(qemu_binary, getenv("HAVMS_ACCEL"), "/dev/kvm", &cache);
                cache_valid = true;
        }
        *ret = cache;
        pthread_mutex_unlock(&cache_lock);
}

const char *accel_resolve(const char *configured, const char *qemu_binary)
{
        if (!strcmp(configured, "kvm"))
                return "kvm";
        if (!strcmp(configured, "tcg"))
                return "tcg";
        struct accel_choice c;
        accel_auto(qemu_binary, &c);
        return c.accel;
}

void accel_forget(void)
{
        pthread_mutex_lock(&cache_lock);
        cache_valid = false;
        pthread_mutex_unlock(&cache_lock);
}
