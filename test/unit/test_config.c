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
        assert_string_equal(c.accel, "auto");
        assert_true(c.xor_delta);
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
}

int main(void)
{
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_vm_ok_with_defaults),
                cmocka_unit_test(test_vm_disks_repeat),
                cmocka_unit_test(test_vm_errors),
                cmocka_unit_test(test_missing_file),
                cmocka_unit_test(test_host_ok_and_errors),
                cmocka_unit_test(test_digest_tracks_device_model),
                cmocka_unit_test(test_vm_failover_section),
                cmocka_unit_test(test_cluster_defaults),
                cmocka_unit_test(test_fence_sections),
                cmocka_unit_test(test_fence_errors),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}
