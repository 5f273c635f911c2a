/* msgid: stable IDs of operator-facing messages. The table with meaning and
 * action for each is docs/messages.md; keep the two in step. */
#pragma once

#define MSG_DAEMON_STARTED   "HAVMS-D-0001"
#define MSG_DAEMON_STOPPING  "HAVMS-D-0002"
#define MSG_BAD_DEFINITION   "HAVMS-D-0003"
#define MSG_ACCEL_FALLBACK   "HAVMS-D-0004"
#define MSG_ACCEL_CHOSEN     "HAVMS-D-0005"

#define MSG_PROTECT_START    "HAVMS-CK-1001"
#define MSG_PROTECTED        "HAVMS-CK-1002"
#define MSG_STANDBY_LOST     "HAVMS-CK-1003"
#define MSG_STANDBY_BACK     "HAVMS-CK-1004"
#define MSG_TRACKER_FAILED   "HAVMS-CK-1005"
#define MSG_PROTECT_END      "HAVMS-CK-1006"
#define MSG_PEER_REFUSED     "HAVMS-CK-1008"
#define MSG_SYNC_PROGRESS    "HAVMS-CK-1009"
#define MSG_STANDBY_UNREACHABLE "HAVMS-CK-1011"
#define MSG_NETBUF_FULL      "HAVMS-CK-1012"
#define MSG_PROTECT_FAILED   "HAVMS-CK-1013"

#define MSG_BK_CONNECTED     "HAVMS-BK-2001"
#define MSG_BK_READY         "HAVMS-BK-2002"
#define MSG_BK_CORRUPT       "HAVMS-BK-2003"
#define MSG_BK_PRIMARY_LOST  "HAVMS-BK-2004"
#define MSG_BK_REFUSED       "HAVMS-BK-2005"
#define MSG_BK_DISCARDED     "HAVMS-BK-2006"
#define MSG_BK_STANDBY_FAIL  "HAVMS-BK-2007"
#define MSG_BK_DISK_FAILED   "HAVMS-BK-2008"

#define MSG_ACTIVATE_START   "HAVMS-AC-3001"
#define MSG_ACTIVATED        "HAVMS-AC-3002"
#define MSG_ACTIVATE_FAILED  "HAVMS-AC-3003"

#define MSG_VM_STARTED       "HAVMS-VM-4001"
#define MSG_VM_STOPPED       "HAVMS-VM-4002"
#define MSG_VM_EXITED        "HAVMS-VM-4003"

/* fencing (failover/fence.h): logged by havmsd from a fence_result */
#define MSG_FENCE_START      "HAVMS-FN-6001"
#define MSG_FENCE_ATTEMPT_FAILED "HAVMS-FN-6002"
#define MSG_FENCE_DONE       "HAVMS-FN-6003"
#define MSG_FENCE_ALL_FAILED "HAVMS-FN-6004"
#define MSG_FENCE_MONITOR_FAILED "HAVMS-FN-6005"
#define MSG_FENCE_MONITOR_OK "HAVMS-FN-6006"

/* hooks (failover/hooks.h): logged by havmsd from a hook_result */
#define MSG_HOOK_FAILED      "HAVMS-HK-7001"
#define MSG_HOOK_DEFERRED    "HAVMS-HK-7002"
#define MSG_HOOK_ABORTED     "HAVMS-HK-7003"
#define MSG_HOOK_TIMEOUT     "HAVMS-HK-7004"
#define MSG_HOOK_NOT_EXEC    "HAVMS-HK-7005"
