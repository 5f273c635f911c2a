/* accel: which QEMU accelerator `accel = auto` means on this host.
 *
 * Owns: the KVM probe (a tiny guest booted under `accel=kvm` with a short
 * deadline: it must reach 64-bit long mode with paging and write a marker
 * to its serial port), the HAVMS_ACCEL override, and the process-wide
 * cache of the answer (probed once per daemon start). Does not own:
 * logging the choice (checkpointd does, with HAVMS-D-0004/0005), or
 * starting real VMs (checkpointd/qemu.c asks accel_resolve()).
 *
 * Why a probe: a /dev/kvm that opens is not proof that KVM runs guests. A
 * nested, paravirtualised KVM ("kvm-pvm") accepts KVM_CREATE_VM, then
 * hangs a Linux guest at its switch to long mode. See docs/accel.md.
 */
#pragma once
#include <stdbool.h>
#include <stddef.h>

#define ACCEL_PROBE_TIMEOUT_MS 5000
/* What the probe guest writes to its serial port once it runs 64-bit code
 * through its own page tables. */
#define ACCEL_PROBE_MARKER "HAVMS-ACCEL-PROBE-OK"

enum accel_basis {
        ACCEL_BASIS_ENV,          /* HAVMS_ACCEL=kvm|tcg chose it; no probe */
        ACCEL_BASIS_NO_KVM,       /* no /dev/kvm we may open: TCG */
        ACCEL_BASIS_PROBE_OK,     /* the probe guest ran under KVM: KVM */
        ACCEL_BASIS_PROBE_FAILED, /* /dev/kvm opens, the probe guest did not run: TCG */
        ACCEL_BASIS_PROBE_ERROR,  /* the probe itself could not be run: TCG */
};

struct accel_choice {
        const char *accel;        /* "kvm" or "tcg" (static strings) */
        enum accel_basis basis;
        unsigned probe_ms;        /* how long the probe took; 0 when none ran */
        char why[256];            /* one line for the log and `havmsctl status` */
};

/* Boot the probe guest under KVM. 1: it ran; 0: it did not (reason in
 * why: QEMU's error, its exit status, or the deadline); -errno: the probe
 * could not be run (e.g. no such QEMU binary), reason in why. The probe
 * QEMU is always killed and reaped; the payload lives in a memfd, so no
 * file is left behind. */
int accel_probe(const char *qemu_binary, int timeout_ms, char *why, size_t whylen);
/* The same under any accelerator ("kvm", "tcg"): under TCG it proves the
 * probe itself works. */
int accel_probe_with(const char *qemu_binary, const char *accel, int timeout_ms,
                     char *why, size_t whylen);

/* Decide what `auto` means, uncached: env is HAVMS_ACCEL's value (or
 * NULL), kvm_dev the device to check (normally "/dev/kvm"). */
void accel_decide(const char *qemu_binary, const char *env, const char *kvm_dev,
                  struct accel_choice *ret);
/* accel_decide(qemu, getenv("HAVMS_ACCEL"), "/dev/kvm"), done once per
 * process and then answered from the cache. Thread-safe. */
void accel_auto(const char *qemu_binary, struct accel_choice *ret);
/* The accelerator to start a VM with: configured "kvm" or "tcg" is the
 * operator's choice and is returned as is; "auto" is accel_auto()'s. */
const char *accel_resolve(const char *configured, const char *qemu_binary);
/* Drop the cache: the next accel_auto() probes again. */
void accel_forget(void);
