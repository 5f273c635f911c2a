#!/bin/bash
# SPDX-License-Identifier: GPL-2.0-or-later
#
# Build the havms test guest: a Debian cloud kernel plus a busybox
# initramfs holding the guest's test programs.
#
#   test/guest/build.sh [OUTDIR]        (default: test/guest/out)
#
# Produces OUTDIR/vmlinuz, OUTDIR/initrd.img, OUTDIR/kernel.release,
# OUTDIR/kernel.config and OUTDIR/bin/ (the test programs, also runnable on
# the host).  Idempotent; a second run with nothing changed takes well under
# a second.  Environment:
#   HAVMS_GUEST_KPKG   kernel package to use instead of the one
#                      linux-image-cloud-amd64 depends on
#   HAVMS_GUEST_FORCE=1  rebuild the initramfs even if it looks up to date
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-$HERE/out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
CACHE=$OUT/cache

# Modules /init loads at boot (with their dependencies, in modules.dep order).
LOAD_MODULES="virtio_pci virtio_net virtio_blk ext4"
# Modules shipped for tests to load themselves (modprobe works in the guest).
# sch_plug/sch_netem/ifb: output buffering and fault injection;
# sch_ingress/cls_u32/act_mirred: redirecting ingress traffic to an ifb;
# nbd: network block device; drbd: the DRBD backend.
COPY_MODULES="sch_plug sch_netem ifb sch_ingress cls_u32 act_mirred nbd drbd"

CFLAGS="-static -O2 -std=gnu11 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes
        -Wmissing-prototypes -D_GNU_SOURCE -pthread"
PROGRAMS="counterd dirtier diskw hvq"

log() { echo "build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# Serialize concurrent builds into the same OUTDIR (parallel test runs).
exec 9>"$OUT/.lock"
flock 9

# ---- (a) host tools ----
ensure_packages() {
	local missing=() p
	for p in busybox-static cpio gcc libc6-dev kmod; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
			missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	log "installing ${missing[*]}"
	apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
		{ apt-get update >&2 && apt-get install -y --no-install-recommends "${missing[@]}" >&2; }
}

# ---- (b) kernel ----
# The metapackage only depends on the real, versioned image package.
resolve_kernel_package() {
	if [ -n "${HAVMS_GUEST_KPKG:-}" ]; then
		echo "$HAVMS_GUEST_KPKG"
		return
	fi
	# apt-cache takes most of a second: reuse the answer until the apt
	# lists change.
	local memo=$OUT/kernel.pkg pkg
	if [ -s "$memo" ] &&
	   [ -z "$(find /var/lib/apt/lists -maxdepth 1 -newer "$memo" -print -quit 2>/dev/null)" ]; then
		cat "$memo"
		return
	fi
	pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
	[ -n "$pkg" ] && echo "$pkg" >"$memo"
	echo "$pkg"
}

# Prints the directory the package is extracted to.
fetch_kernel() {
	local pkg=$1 kroot=$CACHE/$1 deb
	if [ ! -e "$kroot/.extracted" ]; then
		mkdir -p "$CACHE"
		deb=$(ls "$CACHE/${pkg}"_*.deb 2>/dev/null | tail -n1 || true)
		if [ -z "$deb" ]; then
			log "downloading $pkg"
			# Root's download dir is not readable by _apt: skip the sandbox.
			(cd "$CACHE" && apt-get download -o APT::Sandbox::User=root "$pkg" >&2)
			deb=$(ls "$CACHE/${pkg}"_*.deb | tail -n1)
		fi
		log "extracting $(basename "$deb")"
		rm -rf "$kroot"
		dpkg-deb -x "$deb" "$kroot"
		# The .deb ships no modules.dep (the postinst runs depmod).
		depmod -b "$kroot" "${pkg#linux-image-}"
		touch "$kroot/.extracted"
	fi
	echo "$kroot"
}

# ---- (c) test programs ----
build_programs() {
	local p src
	mkdir -p "$OUT/bin"
	for p in $PROGRAMS; do
		src="$HERE/src/$p.c"
		[ "$p" = hvq ] || src="$src $HERE/src/lineserv.c"
		# Rebuild when any source, header or this script is newer.
		if [ -x "$OUT/bin/$p" ] &&
		   [ -z "$(find "$HERE/src" "$HERE/build.sh" -newer "$OUT/bin/$p" -print -quit)" ]; then
			continue
		fi
		log "compiling $p"
		# shellcheck disable=SC2086
		gcc $CFLAGS -o "$OUT/bin/$p.tmp" $src
		mv "$OUT/bin/$p.tmp" "$OUT/bin/$p"
	done
}

# ---- (d) initramfs ----
# modprobe --show-depends prints "insmod PATH" in load order, deps first,
# or "builtin NAME".  -C /dev/null: ignore the host's modprobe.d options.
show_depends() {
	local kroot=$1 kver=$2 m
	shift 2
	for m; do
		modprobe -C /dev/null -d "$kroot" -S "$kver" --show-depends "$m" ||
			die "module $m not found in $kver"
	done
}

module_paths() {
	local deps
	deps=$(show_depends "$@") || exit 1
	awk '$1 == "insmod" && !seen[$2]++ { print $2 }' <<<"$deps"
}

builtin_modules() {
	local deps
	deps=$(show_depends "$@") || exit 1
	awk '$1 == "builtin" { print $2 }' <<<"$deps"
}

# Copy one module into the staging tree, decompressed: busybox insmod
# cannot read compressed modules.  Prints the path relative to the
# module directory.
stage_module() {
	local src=$1 moddir=$2 stagedir=$3 rel dst
	rel=${src#"$moddir"/}
	rel=${rel%.ko*}.ko
	dst=$stagedir/$rel
	mkdir -p "$(dirname "$dst")"
	case $src in
	*.ko) cp "$src" "$dst" ;;
	*.ko.xz) xz -dc "$src" >"$dst" ;;
	*.ko.zst) zstd -qdc "$src" >"$dst" ;;
	*.ko.gz) gzip -dc "$src" >"$dst" ;;
	*) die "unknown module format: $src" ;;
	esac
	echo "${dst#"$stagedir"/}"
}

install_busybox() {
	local root=$1 applet
	cp /bin/busybox "$root/bin/busybox"
	# --list-full gives each applet's usual place (bin/ls, sbin/ip, ...).
	for applet in $(/bin/busybox --list-full); do
		[ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
	done
}

build_initramfs() {
	local kroot=$1 kver=$2 root=$OUT/initrd-root
	local moddir=$kroot/lib/modules/$kver smod p
	rm -rf "$root"
	mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,mnt,root}
	smod=$root/lib/modules/$kver
	mkdir -p "$smod"

	install_busybox "$root"
	for p in $PROGRAMS; do
		cp "$OUT/bin/$p" "$root/bin/$p"
		strip "$root/bin/$p"
	done
	install -m 0755 "$HERE/init.sh" "$root/init"
	# The kernel opens /dev/console before /init runs.
	mknod -m 0600 "$root/dev/console" c 5 1 2>/dev/null || true

	local load copy
	# shellcheck disable=SC2086
	load=$(module_paths "$kroot" "$kver" $LOAD_MODULES)
	# shellcheck disable=SC2086
	copy=$(module_paths "$kroot" "$kver" $COPY_MODULES)
	: >"$smod/havms-load.list"
	for p in $load; do
		stage_module "$p" "$moddir" "$smod" >>"$smod/havms-load.list"
	done
	for p in $copy; do
		stage_module "$p" "$moddir" "$smod" >/dev/null
	done
	cp "$moddir"/modules.{builtin,builtin.modinfo,order} "$smod/"
	depmod -b "$root" "$kver"

	(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
		gzip -6n >"$OUT/initrd.img.tmp"
	mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"
	# shellcheck disable=SC2086
	log "initrd.img: $(du -h "$OUT/initrd.img" | cut -f1)," \
	    "loads: $(sed 's,.*/,,; s,\.ko$,,' "$smod/havms-load.list" | tr '\n' ' ')" \
	    "ships: $(for p in $copy; do basename "$p" .ko; done | tr '\n' ' ')" \
	    "builtin: $(builtin_modules "$kroot" "$kver" $LOAD_MODULES | tr '\n' ' ')"
}

initramfs_up_to_date() {
	local kroot=$1
	[ -z "${HAVMS_GUEST_FORCE:-}" ] && [ -e "$OUT/initrd.img" ] &&
		[ -z "$(find "$HERE/init.sh" "$HERE/build.sh" "$OUT/bin" "$kroot/.extracted" \
			/bin/busybox -newer "$OUT/initrd.img" -print -quit)" ]
}

main() {
	local kpkg kroot kver
	ensure_packages

	kpkg=$(resolve_kernel_package || true)
	if [ -z "$kpkg" ]; then
		# No apt metadata: fall back to whatever was fetched before.
		kpkg=$(ls -d "$CACHE"/linux-image-*/.extracted 2>/dev/null | tail -n1 || true)
		[ -n "$kpkg" ] || die "cannot resolve linux-image-cloud-amd64 (apt-get update?)"
		kpkg=$(basename "$(dirname "$kpkg")")
	fi
	kroot=$(fetch_kernel "$kpkg")
	kver=${kpkg#linux-image-}

	cmp -s "$kroot/boot/vmlinuz-$kver" "$OUT/vmlinuz" ||
		cp "$kroot/boot/vmlinuz-$kver" "$OUT/vmlinuz"
	cmp -s "$kroot/boot/config-$kver" "$OUT/kernel.config" ||
		cp "$kroot/boot/config-$kver" "$OUT/kernel.config"
	[ "$(cat "$OUT/kernel.release" 2>/dev/null)" = "$kver" ] ||
		echo "$kver" >"$OUT/kernel.release"

	build_programs
	if initramfs_up_to_date "$kroot"; then
		log "up to date ($kver)"
	else
		build_initramfs "$kroot" "$kver"
		log "built $OUT/initrd.img ($kver)"
	fi
}

main
