/* ctl: the control protocol between havmsctl and checkpointd.
 *
 * One request and one response per connection on a unix stream socket,
 * each a single JSON object on one line:
 *   request:  {"cmd":"status","vm":"web01","args":{...}}
 *   response: {"ok":true, ...} or {"ok":false,"error":"reason"}
 * Owns: framing and the client call. Does not own: the commands (the
 * daemon's command table) or their output format (havmsctl).
 */
#pragma once
#include <json-c/json.h>

#define CTL_MAX_MSG (4u << 20)

/* Client: connect, send, wait for the response (bounded by timeout_ms). */
int ctl_call(const char *socket_path, json_object *req, int timeout_ms, json_object **ret_resp);

/* Server side: read one line-framed JSON object / write one. */
int ctl_read(int fd, int timeout_ms, json_object **ret);
int ctl_write(int fd, json_object *o, int timeout_ms);
/* The server's listening socket is made with unix_listen (util.h). */
