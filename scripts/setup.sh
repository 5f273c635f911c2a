#!/bin/bash
# Install everything havms needs on Debian 12, build it, and build the test
# guest. Idempotent: a second run only checks. Run as root.
#   scripts/setup.sh [BUILDDIR]      (default: build)
#   HAVMS_SANITIZE=1 scripts/setup.sh build-asan   (ASan+UBSan build)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
builddir=${1:-build}
cd "$top"

if [ "$(id -u)" != 0 ]; then
        echo "setup: run as root (it installs packages and the tests create namespaces)" >&2
        exit 1
fi

# Build, runtime and test dependencies. Test tools: real QEMU, ext4 tools,
# iproute2 for the namespaces, clang's libFuzzer for the fuzz targets, NBD
# clients (qemu-io/qemu-img, nbdinfo) for blockrepl, libnl for the plug qdisc,
# socat for the test bed's self-test; corosync (membership and quorum, its
# client libraries for havmsd, qdevice/qnetd for the witness), the real
# fence agents and OpenIPMI's BMC simulator for fencing in the test bed.
pkgs=(
        build-essential meson ninja-build pkg-config
        liblz4-dev libjson-c-dev libinih-dev libcmocka-dev libxxhash-dev
        libnl-3-dev libnl-route-3-dev
        qemu-system-x86 qemu-utils libnbd-bin
        busybox-static cpio kmod
        # the test guest's builders unpack kernel modules shipped as .ko.xz or
        # .ko.zst (Debian 12's cloud kernel ships plain .ko, later ones not)
        xz-utils zstd
        iproute2 e2fsprogs util-linux procps psmisc python3
        clang libclang-rt-14-dev
        socat
        corosync libcpg-dev libvotequorum-dev libquorum-dev libcmap-dev
        libcorosync-common-dev corosync-qdevice corosync-qnetd
        fence-agents openipmi ipmitool
)
missing=()
for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
        echo "setup: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -f "$builddir/build.ninja" ]; then
        opts=()
        if [ "${HAVMS_SANITIZE:-0}" = 1 ]; then
                opts+=(-Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug)
        fi
        meson setup "$builddir" "${opts[@]}" >/dev/null
fi
ninja -C "$builddir" >/dev/null

# The test guest: Debian's cloud kernel + a busybox initramfs with our
# static test programs (test/guest/README.md).
test/guest/build.sh >/dev/null
echo "setup: ready (build in $builddir, guest in test/guest/out)"
