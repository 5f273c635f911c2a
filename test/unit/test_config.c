/* Configuration: valid files load with defaults; every kind of bad file is
 * refused with file, line and reason. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"

static char dir[64];

static int setup(void **state)
{
        strcpy(dir, "/tmp/havms-cfgtest-XXXXXX");
        return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        return system(cmd);
}

static const char *write_file(const char *name, const char *text)
{
        static char path[128];
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        FILE *f = fopen(path, "w");
        assert_non_null(f);
        fputs(text, f);
        fclose(f);
        return path;
}

static const char *good_vm =
        "[vm]\n"
        "name = web01\n"
        "memory_mib = 256\n"
        "kernel = /boot/vmlinuz\n"
        "nic = mac=52:54:00:12:34:56,bridge=br0\n"
        "[protection]\n"
        "peer = hostB\n";

static void test_vm_ok_with_defaults(void **state)
{
        struct vm_config c;
        char err[256] = "";
        assert_int_equal(vm_config_load(write_file("web01.conf", good_vm), &c, err, sizeof(err)), 0);
        assert_string_equal(c.name, "web01");
        assert_int_equal(c.memory_mib, 256);
        assert_int_equal(c.vcpus, 1);
        assert_int_equal(c.epoch_ms, 40);
        assert_string_equal(c.machine, "q35");
        assert_string_equal(c.builtin_devices, "all");
        assert_string_equal(c.accel, "auto");
        assert_true(c.xor_delta);
        assert_int_equal(c.delta_cache_mib, 51); /* a fifth of memory_mib */
        assert_int_equal(c.n_nics, 1);
        assert_string_equal(c.nics[0].bridge, "br0");
        assert_string_equal(c.nics[0].model, "virtio-net-pci");
        assert_string_equal(c.peer, "hostB");
        assert_int_equal(c.n_disks, 0);
        assert_string_equal(c.netbuf, "relay");
        assert_string_equal(c.on_buffer_full, "pause");
        assert_int_equal(c.netbuf_max_mib, 16);
        assert_int_equal(c.min_epoch_ms, 5);
        assert_string_equal(c.failover, "auto");
        assert_int_equal(c.local_restarts, 0);
}

static void test_vm_disks_repeat(void **state)
{
        struct vm_config c;
        char err[256] = "";
        const char *text = "[vm]\nname = web01\nmemory_mib = 64\ndisk = /srv/a.raw\n"
                           "disk = /dev/vdb\n[protection]\nmin_epoch_ms = 0\n";
        assert_int_equal(vm_config_load(write_file("web01.conf", text), &c, err, sizeof(err)), 0);
        assert_int_equal(c.n_disks, 2);
        assert_string_equal(c.disks[0], "/srv/a.raw");
        assert_string_equal(c.disks[1], "/dev/vdb");
        assert_int_equal(c.min_epoch_ms, 0);
}

static void expect_vm_error(const char *file, const char *text, const char *want)
{
        struct vm_config c;
        char err[512] = "";
        assert_int_equal(vm_config_load(write_file(file, text), &c, err, sizeof(err)), -EINVAL);
        if (!strstr(err, want))
                fail_msg("error '%s' does not contain '%s'", err, want);
}

static uint32_t delta_cache_of(const char *prot)
{
        char text[512], err[256] = "";
        snprintf(text, sizeof(text), "[vm]\nname = web01\nmemory_mib = 1000\nkernel = /k\n"
                 "[protection]\n%s\n", prot);
        struct vm_config c;
        int r = vm_config_load(write_file("web01.conf", text), &c, err, sizeof(err));
        if (r < 0)
                fail_msg("'%s' refused: %s", prot, err);
        return c.delta_cache_mib;
}

/* delta_cache_mib: auto = a fifth of RAM; 0 = none; xor_delta = no is 0 */
static void test_vm_delta_cache(void **state)
{
        assert_int_equal(delta_cache_of(""), 200);
        assert_int_equal(delta_cache_of("delta_cache_mib = auto"), 200);
        assert_int_equal(delta_cache_of("delta_cache_mib = 0"), 0);
        assert_int_equal(delta_cache_of("delta_cache_mib = 16"), 16);
        assert_int_equal(delta_cache_of("delta_cache_mib = 4096"), 4096); /* the user cuts it */
        assert_int_equal(delta_cache_of("xor_delta = no"), 0);
        assert_int_equal(delta_cache_of("xor_delta = no\ndelta_cache_mib = 0"), 0);
        assert_int_equal(delta_cache_of("xor_delta = yes\ndelta_cache_mib = 8"), 8);
        const char *base = "[vm]\nname = web01\nmemory_mib = 64\nkernel = /k\n[protection]\n";
        char text[512];
        snprintf(text, sizeof(text), "%sdelta_cache_mib = 2000000\n", base);
        expect_vm_error("web01.conf", text, "delta_cache_mib: 2000000 is out of range [0, 1048576]");
        snprintf(text, sizeof(text), "%sdelta_cache_mib = -1\n", base);
        expect_vm_error("web01.conf", text, "out of range");
        snprintf(text, sizeof(text), "%sdelta_cache_mib = lots\n", base);
        expect_vm_error("web01.conf", text, "'lots' is not a whole number");
        snprintf(text, sizeof(text), "%sxor_delta = no\ndelta_cache_mib = 8\n", base);
        expect_vm_error("web01.conf", text, "xor_delta = no contradicts delta_cache_mib = 8");
        /* "auto" is for options whose default is computed, not for any number */
        snprintf(text, sizeof(text), "%sepoch_ms = auto\n", base);
        expect_vm_error("web01.conf", text, "'auto' is not a whole number");
}

static void test_vm_failover_section(void **state)
{
        struct vm_config c;
        char err[256] = "";
        const char *text = "[vm]\nname = web01\nmemory_mib = 64\nkernel=/k\n"
                           "[failover]\nfailover = manual\nlocal_restarts = 3\n";
        assert_int_equal(vm_config_load(write_file("web01.conf", text), &c, err, sizeof(err)), 0);
        assert_string_equal(c.failover, "manual");
        assert_int_equal(c.local_restarts, 3);
        expect_vm_error("web01.conf", "[vm]\nname = web01\nmemory_mib = 64\nkernel=/k\n"
                        "[failover]\nfailover = sometimes\n",
                        ":6: failover: 'sometimes' is not one of auto|manual");
        expect_vm_error("web01.conf", "[vm]\nname = web01\nmemory_mib = 64\nkernel=/k\n"
                        "[failover]\nlocal_restarts = 11\n",
                        ":6: local_restarts: 11 is out of range [0, 10]");
}

static void test_vm_errors(void **state)
{
        expect_vm_error("web01.conf", "[vm]\nname = web01\nmemory_mib = 8\nkernel=/k\n",
                        "web01.conf:3: memory_mib: 8 is out of range [16, 1048576]");
        expect_vm_error("web01.conf", "[vm]\nname = web01\nmemory_mib = lots\nkernel=/k\n",
                        ":3: memory_mib: 'lots' is not a whole number");
        expect_vm_error("web01.conf", "[vm]\nname = web01\nmemory_mib = 64\nkernel=/k\ncolour = red\n",
                        ":5: unknown option 'colour' in [vm]");
        expect_vm_error("web01.conf", "[vm]\nname = web01\nkernel=/k\n",
                        "missing required option 'memory_mib' in [vm]");
        expect_vm_error("web01.conf", "[vm]\nname = other\nmemory_mib = 64\nkernel=/k\n",
                        "does not match the file name");
        expect_vm_error("web01.conf", "[vm]\nname = web01\nmemory_mib = 64\n",
                        "needs 'kernel' or a 'disk'");
        expect_vm_error("web01.conf", "[vm]\nname = web01\nmemory_mib = 64\ndisk = relative.raw\n",
                        ":4: disk: expected an absolute path");
        expect_vm_error("web01.conf", "[vm]\nname = web01\nmemory_mib = 64\ndisk=/a\ndisk=/b\ndisk=/c\ndisk=/d\ndisk=/e\n",
                        ":8: disk: at most 4 disks");
        expect_vm_error("web01.conf", "[vm]\nname = web01\nmemory_mib = 64\nkernel=/k\n[protection]\non_buffer_full = drop\n",
                        ":6: on_buffer_full: 'drop' is not one of pause|release");
        expect_vm_error("web01.conf", "[vm]\nname = web01\nmemory_mib = 64\nkernel=/k\nnic = mac=01:00:00:00:00:01\n",
                        ":5: nic: expected mac=");
        expect_vm_error("web01.conf", "[vm]\nname = web01\nmemory_mib = 64\nmemory_mib = 65\nkernel=/k\n",
                        ":4: memory_mib: set twice in [vm]");
        expect_vm_error("web01.conf", "[vm]\nname = web01\nmemory_mib = 64\nkernel=/k\n[protection]\nepoch_ms = 1\n",
                        ":6: epoch_ms: 1 is out of range");
        expect_vm_error("web01.conf", "[vm]\nname = web01\nmemory_mib = 64\nkernel=/k\n[protection]\ntracker = magic\n",
                        ":6: tracker: 'magic' is not one of auto|uffd-wp|soft-dirty");
        expect_vm_error("web01.conf", "[vm]\nname = web01\nthis line is not ini\n",
                        ":3: syntax error");
        expect_vm_error("bad name.conf", "[vm]\nname = bad name\nmemory_mib = 64\nkernel=/k\n",
                        ":2: name: 'bad name' is not a valid name");
}

static void test_missing_file(void **state)
{
        struct vm_config c;
        char err[256];
        assert_int_equal(vm_config_load("/nonexistent/x.conf", &c, err, sizeof(err)), -ENOENT);
        assert_non_null(strstr(err, "cannot open"));
}

static void test_host_ok_and_errors(void **state)
{
        struct host_config h;
        char err[512] = "";
        const char *p = write_file("havms.conf",
                                   "[host]\nname = hostA\nlisten = 10.99.0.1:7780\n"
                                   "[peer hostB]\naddress = 10.99.0.2:7780\n");
        assert_int_equal(host_config_load(p, &h, err, sizeof(err)), 0);
        assert_string_equal(h.name, "hostA");
        assert_int_equal(h.n_peers, 1);
        assert_string_equal(host_config_peer(&h, "hostB")->address, "10.99.0.2:7780");
        assert_null(host_config_peer(&h, "hostC"));
        assert_string_equal(h.ram_dir, "/dev/shm/havms");

        p = write_file("havms.conf", "[host]\nname = hostA\nlisten = nowhere\n");
        assert_int_equal(host_config_load(p, &h, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "havms.conf:3: listen: 'nowhere' is not address:port"));

        p = write_file("havms.conf", "[host]\nname = hostA\n[peer hostA]\naddress = 1.2.3.4:1\n");
        assert_int_equal(host_config_load(p, &h, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "names this host itself"));

        p = write_file("havms.conf", "[host]\nname = hostA\n[peer hostB]\nport = 7\n");
        assert_int_equal(host_config_load(p, &h, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, ":4: [peer hostB]: unknown option 'port'"));

        p = write_file("havms.conf", "[host]\nname = hostA\nstate_dir = /var/lib/a,b\n");
        assert_int_equal(host_config_load(p, &h, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "contains a comma"));
}

static void expect_host_error(const char *text, const char *want)
{
        struct host_config h;
        char err[512] = "";
        assert_int_equal(host_config_load(write_file("havms.conf", text), &h, err, sizeof(err)), -EINVAL);
        if (!strstr(err, want))
                fail_msg("error '%s' does not contain '%s'", err, want);
}

static void test_cluster_defaults(void **state)
{
        struct host_config h;
        char err[512] = "";
        const char *p = write_file("havms.conf", "[host]\nname = hostA\n");
        assert_int_equal(host_config_load(p, &h, err, sizeof(err)), 0);
        assert_string_equal(h.cluster.control_socket, "/run/havms/havmsd.sock");
        assert_non_null(strstr(h.cluster.checkpointd, "/checkpointd"));
        assert_string_equal(h.cluster.quorum, "fence");
        assert_int_equal(h.cluster.witness_wait_ms, 12000);
        assert_int_equal(h.cluster.fence_delay_ms, 3000);
        assert_int_equal(h.cluster.fence_retry_ms, 5000);
        assert_int_equal(h.cluster.fence_monitor_s, 600);
        assert_int_equal(h.cluster.self_fence_ms, 2000);
        assert_string_equal(h.cluster.hooks_dir, "/etc/havms/hooks");
        assert_int_equal(h.cluster.hook_timeout_ms, 10000);
        assert_int_equal(h.n_fences, 0);
        assert_null(host_config_fence(&h, "hostB"));

        p = write_file("havms.conf", "[host]\nname = hostA\n[cluster]\nquorum = witness\n"
                                     "fence_monitor_s = 0\nhooks_dir = /srv/hooks\n");
        assert_int_equal(host_config_load(p, &h, err, sizeof(err)), 0);
        assert_string_equal(h.cluster.quorum, "witness");
        assert_int_equal(h.cluster.fence_monitor_s, 0);
        assert_string_equal(h.cluster.hooks_dir, "/srv/hooks");
        expect_host_error("[host]\nname = hostA\n[cluster]\nquorum = vote\n",
                          "havms.conf:4: quorum: 'vote' is not one of fence|witness");
        expect_host_error("[host]\nname = hostA\n[cluster]\nhook_timeout_ms = 10\n",
                          "havms.conf:4: hook_timeout_ms: 10 is out of range");
        expect_host_error("[host]\nname = hostA\n[cluster]\nfencing = yes\n",
                          "havms.conf:4: unknown option 'fencing' in [cluster]");
}

static void test_fence_sections(void **state)
{
        struct host_config h;
        char err[512] = "";
        const char *p = write_file("havms.conf",
                "[host]\nname = hostA\n"
                "[peer hostB]\naddress = 10.99.0.2:7780\n"
                "[fence hostB]\n"
                "level1 = fence_ipmilan ip=10.88.0.102 username=admin password=s3cr=t  lanplus=1\n"
                "level2 = script:/usr/local/sbin/pdu-off plug=4\n"
                "timeout_ms = 5000\n"
                "[fence spare1]\nlevel1 = /opt/fence/fence_x\n");
        assert_int_equal(host_config_load(p, &h, err, sizeof(err)), 0);
        assert_int_equal(h.n_fences, 2);
        const struct cfg_fence *f = host_config_fence(&h, "hostB");
        assert_non_null(f);
        assert_int_equal(f->n_levels, 2);
        assert_int_equal(f->timeout_ms, 5000);
        assert_string_equal(f->levels[0].agent, "fence_ipmilan");
        assert_string_equal(f->levels[0].args,
                            "ip=10.88.0.102 username=admin password=s3cr=t lanplus=1");
        assert_string_equal(f->levels[1].agent, "script:/usr/local/sbin/pdu-off");
        assert_string_equal(f->levels[1].args, "plug=4");
        f = host_config_fence(&h, "spare1"); /* not a peer: fine */
        assert_non_null(f);
        assert_int_equal(f->timeout_ms, 20000);
        assert_string_equal(f->levels[0].agent, "/opt/fence/fence_x");
        assert_string_equal(f->levels[0].args, "");
        assert_null(host_config_fence(&h, "hostC"));
}

static void test_fence_errors(void **state)
{
        const char *head = "[host]\nname = hostA\n[fence hostB]\n";
        char text[512];
#define FENCE_ERR(body, want) \
        (snprintf(text, sizeof(text), "%s%s", head, body), expect_host_error(text, want))
        FENCE_ERR("level1 = fence_ipmilan ip=1.2.3.4\nport = 623\n",
                  "havms.conf:5: [fence hostB]: unknown option 'port'");
        FENCE_ERR("level1 = fence_ipmilan\nlevel3 = fence_dummy\n",
                  "havms.conf:5: [fence hostB]: level3 without level2");
        FENCE_ERR("level2 = fence_ipmilan\n",
                  "havms.conf:4: [fence hostB]: level2 without level1");
        FENCE_ERR("level1 = fence_ipmilan\nlevel1 = fence_dummy\n",
                  "havms.conf:5: [fence hostB]: level1 set twice");
        FENCE_ERR("level1 =\n", "havms.conf:4: [fence hostB] level1: no agent given");
        FENCE_ERR("level1 = fence_ipmilan ip=1.2.3.4 lanplus\n",
                  "havms.conf:4: [fence hostB] level1: argument 'lanplus' is not key=value");
        FENCE_ERR("level1 = fence_ipmilan =x\n",
                  "havms.conf:4: [fence hostB] level1: argument '=x' is not key=value");
        FENCE_ERR("level1 = fence_ipmilan action=reboot\n",
                  "havms.conf:4: [fence hostB] level1: 'action' is set by havms");
        FENCE_ERR("level1 = script:relative/x\n",
                  "havms.conf:4: [fence hostB] level1: 'script:relative/x' is not an agent");
        FENCE_ERR("level1 = ip=1.2.3.4\n",
                  "havms.conf:4: [fence hostB] level1: 'ip=1.2.3.4' is not an agent");
        FENCE_ERR("level1 = fence_dummy\nlevel5 = fence_dummy\n",
                  "havms.conf:5: [fence hostB]: unknown option 'level5'");
        FENCE_ERR("level1 = fence_dummy\ntimeout_ms = 0\n",
                  "havms.conf:5: timeout_ms: 0 is out of range [100, 600000]");
        FENCE_ERR("timeout_ms = 1000\n", "havms.conf: [fence hostB] has no level1");
#undef FENCE_ERR
        expect_host_error("[host]\nname = hostA\n[fence bad name]\nlevel1 = fence_dummy\n",
                          "havms.conf:4: [fence bad name]: 'bad name' is not a valid host name");
}

static void test_vm_failback_section(void **state)
{
        struct vm_config c;
        char err[256] = "";
        char list[CFG_MAX_HOSTS][CFG_NAME_MAX];
        const char *head = "[vm]\nname = web01\nmemory_mib = 64\nkernel=/k\n";
        char text[512];

        /* defaults, and the default host list: preferred, peer, self */
        snprintf(text, sizeof(text), "%spreferred_host = hostA\n[protection]\npeer = hostB\n", head);
        assert_int_equal(vm_config_load(write_file("web01.conf", text), &c, err, sizeof(err)), 0);
        assert_string_equal(c.reprotect, "auto");
        assert_string_equal(c.failback, "manual");
        assert_int_equal(c.failback_delay_s, 60);
        assert_string_equal(c.standby_policy, "ordered");
        assert_int_equal(c.spare_wait_s, 30);
        assert_int_equal(c.n_hosts, 0);
        assert_int_equal(vm_config_hosts(&c, "hostC", list, CFG_MAX_HOSTS), 3);
        assert_string_equal(list[0], "hostA");
        assert_string_equal(list[1], "hostB");
        assert_string_equal(list[2], "hostC");
        /* self already listed: once only; max respected */
        assert_int_equal(vm_config_hosts(&c, "hostB", list, CFG_MAX_HOSTS), 2);
        assert_int_equal(vm_config_hosts(&c, "hostC", list, 1), 1);

        snprintf(text, sizeof(text), "%spreferred_host = hostB\n[failback]\nreprotect = manual\n"
                 "failback = auto\nfailback_delay_s = 0\nhosts = hostB hostA,hostC\n"
                 "standby_policy = fewest-vms\nspare_wait_s = 0\n", head);
        assert_int_equal(vm_config_load(write_file("web01.conf", text), &c, err, sizeof(err)), 0);
        assert_string_equal(c.reprotect, "manual");
        assert_string_equal(c.failback, "auto");
        assert_int_equal(c.failback_delay_s, 0);
        assert_string_equal(c.standby_policy, "fewest-vms");
        assert_int_equal(c.spare_wait_s, 0);
        assert_int_equal(c.n_hosts, 3);
        assert_int_equal(vm_config_hosts(&c, "hostZ", list, CFG_MAX_HOSTS), 3);
        assert_string_equal(list[0], "hostB");
        assert_string_equal(list[2], "hostC");

#define FB_ERR(body, want) \
        (snprintf(text, sizeof(text), "%s[failback]\n%s", head, body), \
         expect_vm_error("web01.conf", text, want))
        FB_ERR("reprotect = yes\n", ":6: reprotect: 'yes' is not one of auto|manual");
        FB_ERR("failback = always\n", ":6: failback: 'always' is not one of auto|manual|off");
        FB_ERR("failback_delay_s = 86401\n", ":6: failback_delay_s: 86401 is out of range [0, 86400]");
        FB_ERR("standby_policy = random\n", ":6: standby_policy: 'random' is not one of");
        FB_ERR("spare_wait_s = -1\n", ":6: spare_wait_s: -1 is out of range");
        FB_ERR("hosts = a b a\n", ":6: hosts: 'a' listed twice");
        FB_ERR("hosts = a b/c\n", ":6: hosts: 'b/c' is not a valid host name");
        FB_ERR("hosts = h1 h2 h3 h4 h5 h6 h7 h8 h9\n", ":6: hosts: at most 8 hosts");
        FB_ERR("hosts = a\nhosts = b\n", ":7: hosts: set twice");
        FB_ERR("failback = auto\n", "failback = auto needs preferred_host");
        FB_ERR("fallback = auto\n", ":6: unknown option 'fallback' in [failback]");
#undef FB_ERR
        snprintf(text, sizeof(text), "%spreferred_host = hostA\n[failback]\nhosts = hostB hostC\n", head);
        expect_vm_error("web01.conf", text, "preferred_host 'hostA' is not in [failback] hosts");
}

static void test_spare_sections(void **state)
{
        struct host_config h;
        char err[512] = "";
        const char *p = write_file("havms.conf",
                "[host]\nname = hostA\n"
                "[peer spare1]\naddress = 10.99.0.3:7780\n"
                "[peer spare2]\naddress = 10.99.0.4:7780\n"
                "[spare spare1]\nmac = 52:54:00:aa:bb:01\ninterface = eth1\n"
                "[spare spare2]\nmac = 52:54:00:aa:bb:02\ninterface = br-lan\n"
                "password = 192.168.1.7\nbroadcast = 10.99.0.255\nport = 7\nwake = ipmi\n"
                "on_return = hand-back\nboot_timeout_s = 120\n"
                "[fence spare2]\nlevel1 = fence_ipmilan ip=10.88.0.4\n");
        assert_int_equal(host_config_load(p, &h, err, sizeof(err)), 0);
        assert_int_equal(h.n_spares, 2);
        const struct cfg_spare *s = host_config_spare(&h, "spare1");
        assert_non_null(s);
        assert_string_equal(s->mac, "52:54:00:aa:bb:01");
        assert_string_equal(s->interface, "eth1");
        assert_string_equal(s->password, "");
        assert_string_equal(s->broadcast, "255.255.255.255");
        assert_int_equal(s->port, 9);
        assert_string_equal(s->wake, "auto");
        assert_string_equal(s->on_return, "keep");
        assert_string_equal(s->off_command, "");
        assert_int_equal(s->boot_timeout_s, 300);
        s = host_config_spare(&h, "spare2");
        assert_non_null(s);
        assert_string_equal(s->password, "192.168.1.7");
        assert_string_equal(s->broadcast, "10.99.0.255");
        assert_int_equal(s->port, 7);
        assert_string_equal(s->wake, "ipmi");
        assert_string_equal(s->on_return, "hand-back");
        assert_int_equal(s->boot_timeout_s, 120);
        assert_null(host_config_spare(&h, "hostB"));
}

static void test_spare_errors(void **state)
{
        const char *head = "[host]\nname = hostA\n[peer sp]\naddress = 10.0.0.9:7780\n[spare sp]\n";
        const char *ok = "mac = 52:54:00:aa:bb:01\ninterface = eth1\n";
        char text[1024];
#define SP_ERR(body, want) \
        (snprintf(text, sizeof(text), "%s%s", head, body), expect_host_error(text, want))
        /* line 6 is the first option line */
        SP_ERR("mac = 01:00:5e:00:00:01\ninterface = eth1\n",
               "havms.conf:6: [spare sp] mac: '01:00:5e:00:00:01' is not a unicast MAC");
        SP_ERR("mac = 52:54:00:aa:bb\ninterface = eth1\n", "havms.conf:6: [spare sp] mac:");
        SP_ERR("interface = eth1\n", "havms.conf: [spare sp] needs 'mac'");
        SP_ERR("mac = 52:54:00:aa:bb:01\n", "havms.conf: [spare sp] needs 'interface'");
        SP_ERR("mac = 52:54:00:aa:bb:01\ninterface = a-very-long-interface\n",
               "havms.conf:7: interface: value longer than 15");
        SP_ERR("mac = 52:54:00:aa:bb:01\ninterface = eth/1\n",
               "havms.conf:7: [spare sp] interface: 'eth/1' is not an interface name");
        snprintf(text, sizeof(text), "%s%spassword = 1.2.3\n", head, ok);
        expect_host_error(text, "havms.conf:8: [spare sp] password: '1.2.3' is not a SecureOn");
        snprintf(text, sizeof(text), "%s%spassword = 1.2.3.256\n", head, ok);
        expect_host_error(text, "havms.conf:8: [spare sp] password:");
        snprintf(text, sizeof(text), "%s%spassword = 00:11:22:33:44:zz\n", head, ok);
        expect_host_error(text, "havms.conf:8: [spare sp] password:");
        snprintf(text, sizeof(text), "%s%sport = 0\n", head, ok);
        expect_host_error(text, "havms.conf:8: port: 0 is out of range [1, 65535]");
        snprintf(text, sizeof(text), "%s%swake = magic\n", head, ok);
        expect_host_error(text, "havms.conf:8: wake: 'magic' is not one of auto|wol|ipmi");
        snprintf(text, sizeof(text), "%s%son_return = give-back\n", head, ok);
        expect_host_error(text, "havms.conf:8: on_return: 'give-back' is not one of keep|hand-back");
        snprintf(text, sizeof(text), "%s%sboot_timeout_s = 5\n", head, ok);
        expect_host_error(text, "havms.conf:8: boot_timeout_s: 5 is out of range [10, 3600]");
        snprintf(text, sizeof(text), "%s%soff_command = poweroff\n", head, ok);
        expect_host_error(text, "havms.conf:8: [spare sp] off_command: 'poweroff' must start");
        snprintf(text, sizeof(text), "%s%scolour = red\n", head, ok);
        expect_host_error(text, "havms.conf:8: [spare sp]: unknown option 'colour'");
        snprintf(text, sizeof(text), "%s%smac = 52:54:00:aa:bb:02\n", head, ok);
        expect_host_error(text, "havms.conf:8: [spare sp]: mac set twice");
        /* cross-section checks */
        snprintf(text, sizeof(text), "%s%swake = ipmi\n", head, ok);
        expect_host_error(text, "havms.conf: [spare sp] wake = ipmi needs a [fence sp]");
        snprintf(text, sizeof(text), "%s%son_return = hand-back\n", head, ok);
        expect_host_error(text, "havms.conf: [spare sp] on_return = hand-back needs a [fence sp] or "
                                "off_command");
        snprintf(text, sizeof(text), "%s%son_return = hand-back\noff_command = /sbin/spare-off sp\n",
                 head, ok);
        struct host_config h;
        char err[512] = "";
        assert_int_equal(host_config_load(write_file("havms.conf", text), &h, err, sizeof(err)), 0);
        assert_string_equal(h.spares[0].off_command, "/sbin/spare-off sp");
        snprintf(text, sizeof(text), "[host]\nname = hostA\n[spare sp]\n%s", ok);
        expect_host_error(text, "havms.conf: [spare sp] has no [peer sp]");
        snprintf(text, sizeof(text), "[host]\nname = hostA\n[spare hostA]\n%s", ok);
        expect_host_error(text, "havms.conf: [spare hostA] names this host itself");
        expect_host_error("[host]\nname = hostA\n[spare bad name]\nmac = 52:54:00:aa:bb:01\n",
                          "havms.conf:4: [spare bad name]: 'bad name' is not a valid host name");
        snprintf(text, sizeof(text), "[host]\nname = hostA\n[spare s1]\n%s[spare s2]\n%s"
                 "[spare s3]\n%s[spare s4]\n%s[spare s5]\n%s", ok, ok, ok, ok, ok);
        expect_host_error(text, "at most 4 [spare] sections");
#undef SP_ERR
}

static void test_digest_tracks_device_model(void **state)
{
        struct vm_config a, b;
        char err[256];
        assert_int_equal(vm_config_load(write_file("web01.conf", good_vm), &a, err, sizeof(err)), 0);
        b = a;
        assert_int_equal(vm_config_digest(&a), vm_config_digest(&b));
        strcpy(b.kernel, "/elsewhere/vmlinuz"); /* paths may differ per host */
        assert_int_equal(vm_config_digest(&a), vm_config_digest(&b));
        b.memory_mib = 512;
        assert_int_not_equal(vm_config_digest(&a), vm_config_digest(&b));
        b = a;
        strcpy(b.nics[0].mac, "52:54:00:12:34:57");
        assert_int_not_equal(vm_config_digest(&a), vm_config_digest(&b));
        /* the device set is part of the migration stream: both hosts alike */
        b = a;
        strcpy(b.builtin_devices, "minimal");
        assert_int_not_equal(vm_config_digest(&a), vm_config_digest(&b));
}

/* builtin_devices: minimal (default) or all; anything else is refused */
static void test_vm_builtin_devices(void **state)
{
        const char *base = "[vm]\nname = web01\nmemory_mib = 64\nkernel = /k\n";
        char text[512], err[256];
        struct vm_config c;
        snprintf(text, sizeof(text), "%sbuiltin_devices = minimal\n", base);
        assert_int_equal(vm_config_load(write_file("web01.conf", text), &c, err, sizeof(err)), 0);
        assert_string_equal(c.builtin_devices, "minimal");
        snprintf(text, sizeof(text), "%sbuiltin_devices = none\n", base);
        expect_vm_error("web01.conf", text, "builtin_devices");
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_vm_ok_with_defaults),
                cmocka_unit_test(test_vm_disks_repeat),
                cmocka_unit_test(test_vm_errors),
                cmocka_unit_test(test_vm_delta_cache),
                cmocka_unit_test(test_vm_builtin_devices),
                cmocka_unit_test(test_missing_file),
                cmocka_unit_test(test_host_ok_and_errors),
                cmocka_unit_test(test_digest_tracks_device_model),
                cmocka_unit_test(test_vm_failover_section),
                cmocka_unit_test(test_cluster_defaults),
                cmocka_unit_test(test_fence_sections),
                cmocka_unit_test(test_fence_errors),
                cmocka_unit_test(test_vm_failback_section),
                cmocka_unit_test(test_spare_sections),
                cmocka_unit_test(test_spare_errors),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
