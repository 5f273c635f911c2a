/* wake: `havmsctl wake`, the operator's way to send one wake-on-LAN magic
 * packet by hand (both ways: UDP broadcast and EtherType 0x0842 frame).
 *
 * Owns: the command line of the explicit form (--mac, --interface, ...)
 * and how a send is reported. Does not own: the packet or the sending
 * (lib/wol.c), retries (havmsd's spare controller), the configured
 * spares ([spare NAME] in havms.conf).
 */
#pragma once
#include <stdbool.h>

#include "wol.h"

/* havmsctl wake --mac MAC --interface IF [--password PW] [--broadcast ADDR]
 * [--port N] [--json]: argv[0] is "wake". 0 sent (at least one way), 1
 * nothing went out, 2 usage. */
int wake_main(int argc, char **argv, bool json);

/* Send one packet for t and print what went out (text, or one JSON object
 * when json): for callers that built t from elsewhere (a configured
 * spare). Same exit codes. */
int wake_send_print(const struct wol_target *t, bool json);
