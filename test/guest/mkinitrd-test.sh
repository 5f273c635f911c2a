#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Build a throw-away initramfs that runs one test program in the test
# guest's kernel and reports its exit status on the console.
#
#   test/guest/mkinitrd-test.sh [-e NAME=VALUE]... [-f SRC[:DST]]... \
#           [-k MODDIR -m MODULE...] OUTPUT.img PROGRAM [ARG...]
#
# The image holds busybox (from busybox-static), PROGRAM at its own host
# path (so $ORIGIN run paths still resolve) with every shared library ldd
# names, the dynamic loader included, at the same paths as on the host,
# the files given with -f (DST defaults to SRC), the kernel modules given
# with -m and everything they depend on (taken, decompressed, from MODDIR:
# a kernel's ROOT/lib/modules/RELEASE with its modules.dep), and an /init
# that:
#   - mounts proc, sysfs, devtmpfs, devpts and a tmpfs on /dev/shm (not
#     on /tmp: PROGRAM may live there; the root is writable anyway);
#   - loads the -m modules, dependencies first, and prints
#     HAVMS-TEST-MODULE-FAILED <path>  for one that does not load;
#   - prints  HAVMS-TEST-START kernel=<release> prog=<PROGRAM>;
#   - runs PROGRAM ARG... with the -e variables, in /tmp, output on the
#     console;
#   - prints  HAVMS-TEST-RESULT rc=<exit status>  at the start of a line;
#   - powers off (poweroff -f; boot with -no-reboot so QEMU exits).
# Kernel messages are turned down to emergencies first, so they cannot
# split the program's lines.  The image is an uncompressed newc cpio.
set -euo pipefail

die() { echo "mkinitrd-test.sh: $*" >&2; exit 1; }
usage() { die "usage: mkinitrd-test.sh [-e NAME=VALUE]... [-f SRC[:DST]]... [-k MODDIR -m MODULE...] OUTPUT PROGRAM [ARG...]"; }

envs=() files=() mods=() moddir=
while getopts 'e:f:k:m:' opt; do
	case $opt in
	e) [[ $OPTARG == [A-Za-z_]*=* ]] || die "-e wants NAME=VALUE: $OPTARG"; envs+=("$OPTARG") ;;
	f) files+=("$OPTARG") ;;
	k) moddir=${OPTARG%/} ;;
	m) mods+=("$OPTARG") ;;
	*) usage ;;
	esac
done
shift $((OPTIND - 1))
# ldd below resolves with the caller's LD_LIBRARY_PATH (meson test sets
# one): the program must find the same libraries in the guest
[ -n "${LD_LIBRARY_PATH:-}" ] && envs+=("LD_LIBRARY_PATH=$LD_LIBRARY_PATH")
[ $# -ge 2 ] || usage
out=$1 prog=$2
shift 2

[ -x /bin/busybox ] || die "/bin/busybox missing (apt-get install busybox-static)"
/bin/busybox --list-full >/dev/null 2>&1 || die "/bin/busybox is not a static busybox"
command -v cpio >/dev/null || die "cpio missing (apt-get install cpio)"
[ -x "$prog" ] || die "$prog: not an executable"
prog=$(readlink -f "$prog")

root=$(mktemp -d "${TMPDIR:-/tmp}/havms-initrd.XXXXXX")
trap 'rm -rf "$root"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# put SRC DST: copy SRC (dereferenced) to DST inside the image
put() {
	mkdir -p "$root$(dirname "$2")"
	cp -L "$1" "$root$2"
}

# busybox; /init links its applets at boot (one ln per applet here
# would cost seconds)
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc}
cp /bin/busybox "$root/bin/busybox"
ln -s busybox "$root/bin/sh"

# the program and its shared libraries ("lib => /path (addr)", or
# "/path (addr)" for the loader; the vDSO has no path)
put "$prog" "$prog"
lddout=$(ldd "$prog" 2>&1) || true
if grep -q 'not found' <<<"$lddout"; then
	echo "$lddout" >&2
	die "$prog: some shared libraries are not found"
fi
libs=$(awk '$2 == "=>" && $3 ~ /^\// { print $3; next } $1 ~ /^\// { print $1 }' <<<"$lddout")
if [ -z "$libs" ] && ! grep -Eq 'not a dynamic executable|statically linked' <<<"$lddout"; then
	echo "$lddout" >&2
	die "$prog: ldd names no libraries and the program is not static"
fi
for lib in $libs; do
	[ -e "$lib" ] || die "$prog needs $lib, which is missing"
	put "$lib" "$lib"
done

for f in "${files[@]}"; do
	src=${f%%:*} dst=${f#*:}
	[ "$f" = "$src" ] && dst=$src
	[ -e "$src" ] || die "-f $src: no such file"
	put "$src" "$dst"
done

# the -m modules with their dependencies, in load order (modprobe
# --show-depends prints "insmod PATH" deps first, or "builtin NAME"; -C
# /dev/null ignores the host's modprobe.d), decompressed: busybox insmod
# reads plain .ko files only
loads=()
if [ ${#mods[@]} -gt 0 ]; then
	[ -n "$moddir" ] || die "-m needs -k MODDIR"
	[ -f "$moddir/modules.dep" ] || die "-k $moddir: no modules.dep there"
	[[ $moddir == */lib/modules/* ]] || die "-k $moddir: not a ROOT/lib/modules/RELEASE directory"
	command -v modprobe >/dev/null || die "modprobe missing (apt-get install kmod)"
	# modprobe prints canonical paths
	moddir=$(readlink -f "$moddir")
	kver=${moddir##*/} kroot=${moddir%/lib/modules/*}
	deps=
	for m in "${mods[@]}"; do
		d=$(modprobe -C /dev/null -d "$kroot" -S "$kver" --show-depends "$m") ||
			die "module $m not found in $moddir"
		deps+=$d$'\n'
	done
	for src in $(awk '$1 == "insmod" && !seen[$2]++ { print $2 }' <<<"$deps"); do
		[[ $src == "$moddir"/* ]] || die "modprobe named $src, outside $moddir"
		rel=${src#"$moddir"/}
		dst=/lib/modules/$kver/${rel%.ko*}.ko
		mkdir -p "$root$(dirname "$dst")"
		case $src in
		*.ko) cp "$src" "$root$dst" ;;
		*.ko.xz) xz -dc "$src" >"$root$dst" ;;
		*.ko.zst) zstd -qdc "$src" >"$root$dst" ;;
		*.ko.gz) gzip -dc "$src" >"$root$dst" ;;
		*) die "unknown module format: $src" ;;
		esac
		loads+=("$dst")
	done
fi

# sq WORD: WORD quoted for sh
sq() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

{
	cat <<'EOF'
#!/bin/sh
# /init of a havms test initramfs (made by test/guest/mkinitrd-test.sh)
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/shm /dev/pts
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
dmesg -n 1
exec </dev/console >/dev/console 2>&1
EOF
	for m in "${loads[@]}"; do
		printf 'insmod %s || echo "HAVMS-TEST-MODULE-FAILED %s"\n' "$(sq "$m")" "$m"
	done
	for e in "${envs[@]}"; do
		echo "export ${e%%=*}=$(sq "${e#*=}")"
	done
	printf 'set -- %s' "$(sq "$prog")"
	for a in "$@"; do printf ' %s' "$(sq "$a")"; done
	echo
	cat <<'EOF'
echo "HAVMS-TEST-START kernel=$(uname -r) prog=$1"
cd /tmp
"$@"
rc=$?
printf '\nHAVMS-TEST-RESULT rc=%d\n' "$rc"
sync
poweroff -f
# poweroff -f does not return; PID 1 must never exit
while :; do sleep 1000; done
EOF
} >"$root/init"
chmod 755 "$root/init"

(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$out.tmp"
mv "$out.tmp" "$out"
