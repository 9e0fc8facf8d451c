#!/bin/bash
# build-guest.sh - build (or locate in the cache) the CloudVMI test guest kit:
# a stock Debian kernel and a busybox initramfs, both made from Debian packages only.
#
#   build-guest.sh [--flavour generic|cloud|rt] [--cache DIR] [--print] [--quiet]
#
# Cache layout (outside git):  ${CLOUDVMI_CACHE:-$HOME/.cache/cloudvmi}/guest/
#   <flavour>/vmlinuz         kernel image (boot/vmlinuz-* of the package)
#   <flavour>/config          its build configuration
#   <flavour>/version         name of the package it came from (linux-image-6.1.0-NN-...)
#   <flavour>/resolved        meta package resolution, keyed by the state of apt's lists
#   initrd.gz                 busybox initramfs, shared by all flavours
#   initrd.sum                checksum of the initramfs inputs
set -euo pipefail

SELF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=${0##*/}

usage() {
    cat <<EOF
Usage: $PROG [--flavour generic|cloud|rt] [--cache DIR] [--print] [--quiet]

Builds the CloudVMI test guest from Debian packages (nothing else is downloaded):
  kernel     linux-image-<abi>-{amd64,cloud-amd64,rt-amd64}, resolved via the meta package
  initramfs  /bin/busybox (busybox-static) + tests/guest/init, newc cpio + gzip

Options:
  --flavour F   generic (default), cloud or rt
  --cache DIR   cache root (default \${CLOUDVMI_CACHE:-\$HOME/.cache/cloudvmi});
                files go to DIR/guest/
  --print       print shell-sourceable KERNEL=, INITRD=, KERNEL_VERSION= lines
                (plus KERNEL_PACKAGE=, KERNEL_CONFIG=, FLAVOUR=)
  --quiet       no progress messages on stderr
  -h, --help    this text

Exit status: 0 on success, 1 on failure, 2 on bad usage.
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 1; }
QUIET=0
log() { [ "$QUIET" = 1 ] || echo "$PROG: $*" >&2; }

FLAVOUR=generic
CACHE_ROOT=${CLOUDVMI_CACHE:-${HOME:-/root}/.cache/cloudvmi}
PRINT=0
while [ $# -gt 0 ]; do
    case $1 in
        --flavour|--flavor) [ $# -ge 2 ] || { usage >&2; exit 2; }; FLAVOUR=$2; shift 2 ;;
        --flavour=*|--flavor=*) FLAVOUR=${1#*=}; shift ;;
        --cache) [ $# -ge 2 ] || { usage >&2; exit 2; }; CACHE_ROOT=$2; shift 2 ;;
        --cache=*) CACHE_ROOT=${1#*=}; shift ;;
        --print) PRINT=1; shift ;;
        --quiet|-q) QUIET=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "$PROG: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

case $FLAVOUR in
    generic) META=linux-image-amd64 ;;
    cloud)   META=linux-image-cloud-amd64 ;;
    rt)      META=linux-image-rt-amd64 ;;
    *) echo "$PROG: unknown flavour '$FLAVOUR' (generic, cloud or rt)" >&2; exit 2 ;;
esac

GUEST=$CACHE_ROOT/guest
FDIR=$GUEST/$FLAVOUR
mkdir -p "$FDIR" || die "cannot create cache directory $FDIR"

# One builder at a time per cache (guests are often started in parallel).
exec 9>"$GUEST/.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9 || die "cannot lock $GUEST/.lock"
fi

TMP=
cleanup() { [ -z "$TMP" ] || rm -rf "$TMP"; }
trap cleanup EXIT

tmpdir() {
    if [ -z "$TMP" ]; then
        TMP=$(mktemp -d "$GUEST/.tmp.XXXXXX") || die "mktemp failed in $GUEST"
        chmod 755 "$TMP"
    fi
}

APT_OPTS=()
[ "$(id -u)" = 0 ] && APT_OPTS=(-o APT::Sandbox::User=root)
UPDATED=0
apt_update() {
    [ "$UPDATED" = 0 ] || return 1
    UPDATED=1
    [ "$(id -u)" = 0 ] || die "package lists need refreshing but 'apt-get update' needs root"
    log "running apt-get update"
    apt-get "${APT_OPTS[@]}" -qq update >&2 || die "apt-get update failed"
}

# State of apt's package lists: when it changes, the meta package is resolved again.
lists_stamp() {
    local f=() LISTS=/var/lib/apt/lists/
    eval "$(apt-config shell LISTS Dir::State::lists/d 2>/dev/null)" || true
    shopt -s nullglob
    f=("${LISTS%/}"/*_Packages*)
    shopt -u nullglob
    [ ${#f[@]} -gt 0 ] || { echo none; return; }
    stat -c '%n %Y %s' "${f[@]}" | cksum | cut -d' ' -f1
}

# meta package -> ABI package (linux-image-6.1.0-NN-amd64)
resolve() {
    local out
    out=$(apt-cache depends "$META" 2>/dev/null |
          sed -n 's/^ *Depends: *\(linux-image-[0-9][^ ]*\).*/\1/p' | head -n1) || true
    printf '%s' "$out"
}

STAMP=$(lists_stamp)
PKG=
if [ -f "$FDIR/resolved" ]; then
    read -r rs rp <"$FDIR/resolved" || true
    [ "${rs:-}" = "$STAMP" ] && PKG=${rp:-}
fi
if [ -z "$PKG" ]; then
    PKG=$(resolve)
    if [ -z "$PKG" ]; then
        apt_update || true
        STAMP=$(lists_stamp)
        PKG=$(resolve)
        [ -n "$PKG" ] || die "cannot resolve $META to a kernel package (apt-cache depends $META)"
    fi
    printf '%s %s\n' "$STAMP" "$PKG" >"$FDIR/resolved.new" && mv -f "$FDIR/resolved.new" "$FDIR/resolved"
fi
KVER=${PKG#linux-image-}

# ---------------------------------------------------------------- kernel
have_kernel() {
    [ -s "$FDIR/vmlinuz" ] && [ -f "$FDIR/version" ] && [ "$(cat "$FDIR/version")" = "$PKG" ]
}

if ! have_kernel; then
    tmpdir
    log "downloading $PKG"
    if ! (cd "$TMP" && apt-get "${APT_OPTS[@]}" -qq download "$PKG" >&2); then
        apt_update || die "apt-get download $PKG failed"
        (cd "$TMP" && apt-get "${APT_OPTS[@]}" -qq download "$PKG" >&2) ||
            die "apt-get download $PKG failed"
    fi
    shopt -s nullglob
    debs=("$TMP"/"${PKG}"_*.deb)
    shopt -u nullglob
    [ ${#debs[@]} -eq 1 ] || die "apt-get download $PKG produced no .deb"
    log "extracting boot/vmlinuz-$KVER"
    mkdir -p "$TMP/x"
    # boot/ comes first in the data archive: stop reading once both members are out.
    # (boot/System.map in these packages is a placeholder: the real one is in -dbg.)
    set +o pipefail
    dpkg-deb --fsys-tarfile "${debs[0]}" 2>/dev/null |
        tar -x -C "$TMP/x" --occurrence=1 \
            "./boot/vmlinuz-$KVER" "./boot/config-$KVER" 2>/dev/null
    set -o pipefail
    if [ ! -s "$TMP/x/boot/vmlinuz-$KVER" ]; then
        # unusual layout: fall back to a full extraction
        rm -rf "$TMP/x"; mkdir -p "$TMP/x"
        dpkg-deb -x "${debs[0]}" "$TMP/x" || die "dpkg-deb -x ${debs[0]} failed"
    fi
    [ -s "$TMP/x/boot/vmlinuz-$KVER" ] || die "${debs[0]} has no boot/vmlinuz-$KVER"
    mv -f "$TMP/x/boot/vmlinuz-$KVER" "$FDIR/vmlinuz.new"
    [ -f "$TMP/x/boot/config-$KVER" ] && mv -f "$TMP/x/boot/config-$KVER" "$FDIR/config"
    mv -f "$FDIR/vmlinuz.new" "$FDIR/vmlinuz"
    printf '%s\n' "$PKG" >"$FDIR/version.new" && mv -f "$FDIR/version.new" "$FDIR/version"
    # verdicts of detect-accel for older kernels are stale now
    rm -f "$FDIR"/accel.* 2>/dev/null || true
    log "kernel $KVER ready: $FDIR/vmlinuz"
fi

# ---------------------------------------------------------------- initramfs
BUSYBOX=/bin/busybox
INIT=$SELF_DIR/init
[ -f "$INIT" ] || die "missing $INIT"
if [ ! -x "$BUSYBOX" ]; then
    die "$BUSYBOX not found: install the busybox-static package (apt-get install busybox-static)"
fi
if ! LC_ALL=C file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked'; then
    # 'file' may be missing: fall back to looking for an ELF interpreter
    if command -v file >/dev/null 2>&1 || grep -q 'ld-linux' "$BUSYBOX"; then
        die "$BUSYBOX is not statically linked: install busybox-static"
    fi
fi

# Inputs of the initramfs: busybox, init, and this script (it defines the layout).
SUM=$(sha256sum "$BUSYBOX" "$INIT" "$SELF_DIR/build-guest.sh" | sed 's/ .*//' | sha256sum | cut -c1-64)
if [ ! -s "$GUEST/initrd.gz" ] || [ ! -f "$GUEST/initrd.sum" ] || [ "$(cat "$GUEST/initrd.sum")" != "$SUM" ]; then
    tmpdir
    log "building initramfs"
    R=$TMP/root
    mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc,root,var/log,home}
    chmod 1777 "$R/tmp"; chmod 700 "$R/root"
    cp "$BUSYBOX" "$R/bin/busybox"
    chmod 755 "$R/bin/busybox"
    # applet links, as busybox itself would install them
    "$BUSYBOX" --list-full | while read -r a; do
        [ "$a" = bin/busybox ] && continue
        case $a in */*) ;; *) a=bin/$a ;; esac
        [ -e "$R/$a" ] || ln -s /bin/busybox "$R/$a"
    done
    [ -e "$R/bin/sh" ] || ln -s /bin/busybox "$R/bin/sh"
    cp "$INIT" "$R/init"
    chmod 755 "$R/init"
    # /dev/console for the kernel to open before devtmpfs is mounted (root only;
    # the kernel's built-in initramfs provides it otherwise)
    [ "$(id -u)" = 0 ] && mknod -m 600 "$R/dev/console" c 5 1 2>/dev/null || true
    (cd "$R" && find . -mindepth 1 | LC_ALL=C sort |
        cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -n -9 >"$GUEST/initrd.gz.new" ||
        die "cpio/gzip of the initramfs failed"
    mv -f "$GUEST/initrd.gz.new" "$GUEST/initrd.gz"
    printf '%s\n' "$SUM" >"$GUEST/initrd.sum"
    log "initramfs ready: $GUEST/initrd.gz"
fi

if [ "$PRINT" = 1 ]; then
    q() { printf "%s=%q\n" "$1" "$2"; }
    q KERNEL "$FDIR/vmlinuz"
    q INITRD "$GUEST/initrd.gz"
    q KERNEL_VERSION "$KVER"
    q KERNEL_PACKAGE "$PKG"
    q KERNEL_CONFIG "$FDIR/config"
    q FLAVOUR "$FLAVOUR"
fi
exit 0
