/* cluster: the text form of havmsd's cluster-status and events answers. */
#include "cluster.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

static const char *js(json_object *o, const char *k)
{
        json_object *x;
        return json_object_object_get_ex(o, k, &x) && json_object_is_type(x, json_type_string)
                       ? json_object_get_string(x) : "";
}

static const char *js_or(json_object *o, const char *k, const char *def)
{
        return js(o, k)[0] ? js(o, k) : def;
}

static bool jb(json_object *o, const char *k, bool def)
{
        json_object *x;
        return json_object_object_get_ex(o, k, &x) ? json_object_get_boolean(x) : def;
}

static long long ji(json_object *o, const char *k, long long def)
{
        json_object *x;
        return json_object_object_get_ex(o, k, &x) ? (long long)json_object_get_int64(x) : def;
}

static json_object *jarr(json_object *o, const char *k)
{
        json_object *x;
        return json_object_object_get_ex(o, k, &x) && json_object_is_type(x, json_type_array) ? x
                                                                                              : NULL;
}

static size_t alen(json_object *a) { return a ? json_object_array_length(a) : 0; }

/* "link0 up, link1 DOWN": capitals for what needs a look */
static void print_links(FILE *f, json_object *m)
{
        json_object *links = jarr(m, "links");
        for (size_t i = 0; i < alen(links); i++) {
                json_object *l = json_object_array_get_idx(links, i);
                fprintf(f, "%slink%lld %s", i ? ", " : "; ", ji(l, "id", (long long)i),
                        jb(l, "connected", false) ? "up" : "DOWN");
        }
}

/* "fence: 2 levels, monitor ok" and, once it has run, how the last went */
static void print_fence(FILE *f, json_object *m)
{
        json_object *fe;
        if (!json_object_object_get_ex(m, "fence", &fe))
                return;
        if (!jb(fe, "configured", false)) {
                fprintf(f, "; fence: NOT CONFIGURED");
                return;
        }
        long long n = ji(fe, "levels", 0);
        fprintf(f, "; fence: %lld level%s, monitor %s", n, n == 1 ? "" : "s",
                js_or(fe, "monitor", "unchecked"));
        const char *st = js(fe, "state");
        if (st[0] && strcmp(st, "none")) {
                bool bad = !strcmp(st, "failed");
                fprintf(f, ", last fence %s", bad ? "FAILED" : st);
                if (js(fe, "last")[0])
                        fprintf(f, " (%s)", js(fe, "last"));
        }
}

static void print_member(FILE *f, json_object *m)
{
        const char *spare = js(m, "spare");
        if (spare[0]) { /* asleep is a spare's normal state: no capitals */
                fprintf(f, "  spare %s (node %lld): %s%s", js_or(m, "name", "?"), ji(m, "nodeid", 0),
                        !strcmp(spare, "failed") ? "FAILED to wake" : spare,
                        jb(m, "member", false) ? ", member" : "");
                if (ji(m, "wake_attempts", 0))
                        fprintf(f, ", %lld wake(s), last %s", ji(m, "wake_attempts", 0),
                                js_or(m, "wake_way", "not sent"));
                fprintf(f, ", on return: %s", js_or(m, "on_return", "keep"));
                print_links(f, m);
                print_fence(f, m);
                fprintf(f, "\n");
                return;
        }
        fprintf(f, "  member %s (node %lld): %s", js_or(m, "name", "?"), ji(m, "nodeid", 0),
                jb(m, "member", false) ? "online" : "OFFLINE");
        if (jb(m, "self", false))
                fprintf(f, ", this host");
        print_links(f, m);
        print_fence(f, m);
        fprintf(f, "\n");
}

/* "a:protected b:backup-ready": what each host reports for the VM */
static void print_vm(FILE *f, json_object *v)
{
        fprintf(f, "  %-12s %-12s %5lld %-12s", js_or(v, "name", "?"), js_or(v, "owner", "-"),
                ji(v, "generation", 0), js_or(v, "protection", "unknown"));
        json_object *hosts = jarr(v, "hosts");
        for (size_t i = 0; i < alen(hosts); i++) {
                json_object *h = json_object_array_get_idx(hosts, i);
                fprintf(f, " %s:%s", js_or(h, "host", "?"), js_or(h, "state", "?"));
        }
        if (js(v, "note")[0])
                fprintf(f, "  -- %s", js(v, "note"));
        fprintf(f, "\n");
        json_object *s;
        const char *st = js(v, "status");
        if (st[0] && (strcmp(st, "stopped") || js(v, "failback")[0])) {
                fprintf(f, "  %-12s status: %s", "", st);
                if (!strcmp(st, "switching") && js(v, "switching_to")[0])
                        fprintf(f, " to %s", js(v, "switching_to"));
                if (json_object_object_get_ex(v, "sync", &s))
                        fprintf(f, ", %.1f%% at %.1f MiB/s, eta %.0f s",
                                json_object_get_double(json_object_object_get(s, "percent")),
                                json_object_get_double(json_object_object_get(s, "mib_s")),
                                json_object_get_double(json_object_object_get(s, "eta_s")));
                if (js(v, "failback")[0])
                        fprintf(f, "; failback: %s", js(v, "failback"));
                fprintf(f, "\n");
        }
}

/* Without quorum the word "quorate" does not appear at all, so a script's
 * grep for it means what it says. */
void cluster_print_status(FILE *f, json_object *resp)
{
        bool up = jb(resp, "corosync", false);
        fprintf(f, "Cluster: host %s, corosync %s, %s (quorum: %s)\n", js_or(resp, "host", "?"),
                up ? "up" : "DOWN", jb(resp, "quorate", false) ? "quorate" : "NO QUORUM",
                js_or(resp, "quorum", "?"));
        json_object *ck;
        if (json_object_object_get_ex(resp, "checkpointd", &ck)) {
                if (jb(ck, "running", false))
                        fprintf(f, "  checkpointd: running, pid %lld", ji(ck, "pid", 0));
                else
                        fprintf(f, "  checkpointd: NOT RUNNING");
                fprintf(f, ", %lld restart%s\n", ji(ck, "restarts", 0),
                        ji(ck, "restarts", 0) == 1 ? "" : "s");
        }
        json_object *members = jarr(resp, "members");
        for (size_t i = 0; i < alen(members); i++)
                print_member(f, json_object_array_get_idx(members, i));
        json_object *patrol = jarr(resp, "patrol");
        for (size_t i = 0; i < alen(patrol); i++)
                fprintf(f, "  PATROL: %s\n", json_object_get_string(json_object_array_get_idx(patrol, i)));
        json_object *vms = jarr(resp, "vms");
        if (!alen(vms)) {
                fprintf(f, "VMs: none known to havmsd\n");
                return;
        }
        fprintf(f, "VMs:\n  %-12s %-12s %5s %-12s %s\n", "VM", "OWNER", "GEN", "PROTECTION",
                "ON HOSTS");
        for (size_t i = 0; i < alen(vms); i++)
                print_vm(f, json_object_array_get_idx(vms, i));
}

/* HH:MM:SS.mmm in local time from ts_ms; else the time of day in "time" */
static void event_time(json_object *e, char out[16])
{
        long long ms = ji(e, "ts_ms", -1);
        struct tm tm;
        time_t s = (time_t)(ms / 1000);
        if (ms >= 0 && localtime_r(&s, &tm)) {
                snprintf(out, 16, "%02d:%02d:%02d.%03lld", tm.tm_hour, tm.tm_min, tm.tm_sec,
                         ms % 1000);
                return;
        }
        const char *t = js(e, "time"), *tt = strchr(t, 'T');
        snprintf(out, 16, "%.12s", tt ? tt + 1 : "--:--:--.---");
}

void cluster_print_events(FILE *f, json_object *resp)
{
        json_object *evs = jarr(resp, "events");
        if (!alen(evs)) {
                fprintf(f, "no events\n");
                return;
        }
        for (size_t i = 0; i < alen(evs); i++) {
                json_object *e = json_object_array_get_idx(evs, i);
                char t[16];
                event_time(e, t);
                fprintf(f, "%s %s %s %s %s: %s\n", t, js_or(e, "level", "-"), js_or(e, "id", "-"),
                        js_or(e, "vm", "-"), js_or(e, "host", "-"), js(e, "text"));
        }
}
