/* twin: a second thread for the other half of a job split in two.
 *
 * Owns one thread and the hand-off with it. Made for the VM's pause,
 * where the work that must finish before the guest runs again (the dirty
 * page scan, the copy of dirty pages) is split in halves: the caller gives
 * one half to the twin, does the other itself, then waits. The VM is
 * stopped then, so the core its vCPU used is free. One job at a time; the
 * caller must wait for a job before giving the next.
 */
#pragma once
#include <stdbool.h>

struct twin;

/* Start the thread. -errno if it cannot be created; callers then do the
 * whole job themselves. */
int twin_start(struct twin **ret);
/* Stop and join the thread (NULL is allowed). No job may be running. */
void twin_stop(struct twin *t);
/* Run fn(arg) on the twin; returns at once. */
void twin_go(struct twin *t, void (*fn)(void *arg), void *arg);
/* Wait for the job given last; its effects are visible afterwards. */
void twin_wait(struct twin *t);
/* Is a second CPU there to run a twin on? (A twin on one CPU only adds
 * the hand-off to the job.) */
bool twin_worthwhile(void);
