/* cluster: how havmsctl shows havmsd's answers (the cluster view of
 * `status` and the `events` timeline), crm_mon/cmviewcl style.
 *
 * Owns: the text form of havmsd's cluster-status and events responses
 * (their JSON is havmsd's, failover/agent.c). Does not own: talking to
 * the daemons (havmsctl.c over lib/ctl.c) or checkpointd's per-VM view.
 * Missing fields print as "-" or are left out: an older or newer havmsd
 * never makes havmsctl fail.
 */
#pragma once
#include <json-c/json.h>
#include <stdio.h>

#define HAVMSD_DEFAULT_SOCKET "/run/havms/havmsd.sock"

/* "Cluster:" (host, corosync, quorum, checkpointd, members with their
 * links and fencing readiness), then "VMs:" one line each. */
void cluster_print_status(FILE *f, json_object *resp);

/* One line per event, oldest first:
 * "15:40:01.123 notice HAVMS-FO-5003 web01 b: text" (local time). */
void cluster_print_events(FILE *f, json_object *resp);
