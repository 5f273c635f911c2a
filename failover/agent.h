/* agent: havmsd, the per-host failover agent (docs/failover.md).
 *
 * Owns: the host's view of the cluster — corosync membership and quorum
 * (membership.c), what every agent announced over CPG (clmsg.c), fencing
 * state per host (fence.c), the local VMs as checkpointd reports them —
 * and carrying out what policy.c decides: fencing, activation, release
 * of held output, replica discards, stops. It supervises checkpointd
 * (starts it with --managed, restarts it when it dies) and answers
 * havmsctl's cluster-status and events on its own control socket.
 * It does not own the VMs: checkpointd does; the agent only asks.
 *
 * One thread runs one epoll loop; everything slow (fence agents, hooks,
 * checkpointd commands that start QEMU) runs as a runner job whose end
 * the loop sees on an fd, so no wait blocks a decision.
 */
#pragma once
#include <stdbool.h>
#include <stddef.h>

struct agent;

/* Load the configuration, open sockets; -errno with a reason in err. */
int agent_init(struct agent **ret, const char *config_path, char *err, size_t errlen);
/* Run until SIGTERM/SIGINT. */
int agent_run(struct agent *a);
void agent_free(struct agent *a);
