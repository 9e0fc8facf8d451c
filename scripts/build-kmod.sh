#!/bin/bash
# build-kmod.sh - build kmod/cloudvmi_hide.ko (a rootkit-like TEST fixture) for a Debian
# guest kernel, from Debian's header packages only. Nothing is installed on the host.
#
#   build-kmod.sh [--kernel-version V] [--out DIR] [--cache DIR] [--force] [--quiet]
#
# Cache layout (outside git):  ${CLOUDVMI_CACHE:-$HOME/.cache/cloudvmi}/kmod/<V>/
#   debs/              the downloaded .deb files (linux-headers-V, linux-headers-<abi>-common,
#                      linux-kbuild-<major.minor>) and debs/packages (their file names)
#   root/              those packages extracted with dpkg-deb -x, fixed to work from here
#   root.stamp         the deb file names root/ was extracted from
#   build/             the copy of kmod/ that Kbuild builds in (M=)
#   build.log          the last build's make output
#   cloudvmi_hide.ko   the result (unless --out)
#
# The last line printed on stdout is the path of the .ko; progress goes to stderr.
set -euo pipefail

SELF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC_DIR=$(cd "$SELF_DIR/.." && pwd)/kmod
PROG=${0##*/}
MODULE=cloudvmi_hide

usage() {
    cat <<EOF
Usage: $PROG [--kernel-version V] [--out DIR] [--cache DIR] [--force] [--quiet]

Builds kmod/$MODULE.ko, a kernel module for TEST guests that hides a pid from /proc
listings the way LKM rootkits do (see kmod/README.md), against a Debian kernel's headers.

The packages linux-headers-V, the matching linux-headers-<abi>-common and
linux-kbuild-<major.minor> are fetched with 'apt-get download' (once, kept in the cache),
extracted with 'dpkg-deb -x' into the cache (nothing is installed on the host), and the
module is built with 'make -C <headers> M=<copy of kmod/>'. A later call only rebuilds
when a file of kmod/ (or this script) is newer than the cached module.

Options:
  --kernel-version V  kernel release to build for, as 'uname -r' prints it (default: the
                      content of <cache>/debian/kernel-version, the Debian test guest's)
  --out DIR           put $MODULE.ko in DIR (default: <cache>/kmod/V/)
  --cache DIR         cache root (default \${CLOUDVMI_CACHE:-\$HOME/.cache/cloudvmi})
  --force             rebuild even if the cached module is up to date
  --quiet             no progress messages on stderr
  -h, --help          this text

Prints the path of $MODULE.ko as the last line on stdout.
Host tools needed: apt-get, apt-cache, dpkg-deb, make, gcc (the kernel's gcc-NN), ld;
the kbuild binaries need libelf1, libssl3 and zlib1g.
Exit status: 0 on success, 1 on failure, 2 on bad usage.
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 1; }
QUIET=0
log() { [ "$QUIET" = 1 ] || echo "$PROG: $*" >&2; }

CACHE_ROOT=${CLOUDVMI_CACHE:-${HOME:-/root}/.cache/cloudvmi}
KVER=
OUT_DIR=
FORCE=0
while [ $# -gt 0 ]; do
    case $1 in
        --kernel-version) [ $# -ge 2 ] || { usage >&2; exit 2; }; KVER=$2; shift 2 ;;
        --kernel-version=*) KVER=${1#*=}; shift ;;
        --out) [ $# -ge 2 ] || { usage >&2; exit 2; }; OUT_DIR=$2; shift 2 ;;
        --out=*) OUT_DIR=${1#*=}; shift ;;
        --cache) [ $# -ge 2 ] || { usage >&2; exit 2; }; CACHE_ROOT=$2; shift 2 ;;
        --cache=*) CACHE_ROOT=${1#*=}; shift ;;
        --force) FORCE=1; shift ;;
        --quiet|-q) QUIET=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "$PROG: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

need() {
    local tool=$1 pkg=$2
    command -v "$tool" >/dev/null 2>&1 ||
        die "'$tool' not found: install the Debian package '$pkg' (scripts/install-deps.sh)"
}
need apt-get apt
need apt-cache apt
need dpkg-deb dpkg
need make make
need gcc gcc
need ld binutils
need flock util-linux

if [ -z "$KVER" ]; then
    kv_file=$CACHE_ROOT/debian/kernel-version
    [ -s "$kv_file" ] ||
        die "no --kernel-version and no $kv_file (build the Debian guest first:" \
            "tests/guest/build-debian-guest.sh)"
    KVER=$(tr -d '[:space:]' <"$kv_file")
fi
# The version becomes part of package names and paths: keep it to what uname -r prints.
[[ $KVER =~ ^[0-9]+\.[0-9]+[A-Za-z0-9.+~_-]*$ ]] || die "bad kernel version: '$KVER'"
if [ ! -f "$SRC_DIR/$MODULE.c" ] || [ ! -f "$SRC_DIR/Kbuild" ]; then
    die "no module source in $SRC_DIR"
fi

WORK=$CACHE_ROOT/kmod/$KVER
DEBS=$WORK/debs
ROOT=$WORK/root
BUILD=$WORK/build
[ -n "$OUT_DIR" ] || OUT_DIR=$WORK
mkdir -p "$DEBS" "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
KO=$OUT_DIR/$MODULE.ko

# Concurrent calls for the same kernel share debs/, root/ and build/: one at a time.
exec 9>"$WORK/.lock"
flock 9

# --- 1. the .deb files ------------------------------------------------------------------

# apt drops to the _apt user to download, which cannot write to a directory under /root
# and warns; as root, download as root instead (the files are checked by apt anyway).
APT_OPTS=()
[ "$(id -u)" -ne 0 ] || APT_OPTS=(-o APT::Sandbox::User=root)

# Prints the newest version apt knows of package $1, or nothing.
pkg_versions() { apt-cache madison "$1" 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}'; }

debs_present() {
    local f
    [ -s "$DEBS/packages" ] || return 1
    while read -r f; do [ -s "$DEBS/$f" ] || return 1; done <"$DEBS/packages"
}

fetch_debs() {
    local hdr=linux-headers-$KVER ver deps common kbuild spec kver_ok f
    ver=$(pkg_versions "$hdr" | head -n1)
    if [ -z "$ver" ]; then
        # Lists never fetched or stale: refresh them once, as build-guest.sh does.
        log "package $hdr unknown to apt: running apt-get update"
        apt-get "${APT_OPTS[@]}" update >&2 || die "apt-get update failed"
        ver=$(pkg_versions "$hdr" | head -n1)
    fi
    [ -n "$ver" ] || die "apt knows no package $hdr (is $KVER a Debian kernel of this release?)"

    deps=$(apt-cache depends "$hdr=$ver" 2>/dev/null | awk '$1 == "Depends:" { print $2 }')
    common=$(grep -E '^linux-headers-.*-common(-rt)?$' <<<"$deps" | head -n1 || true)
    kbuild=$(grep -E '^linux-kbuild-' <<<"$deps" | head -n1 || true)
    [ -n "$common" ] || die "$hdr=$ver depends on no linux-headers-*-common package"
    [ -n "$kbuild" ] || die "$hdr=$ver depends on no linux-kbuild-* package"

    # All three come from the same source package: take the same version of each. A
    # security update may have moved linux-kbuild-X.Y on; the kernel's own version is
    # preferred while the archive still has it, any other only as a fallback.
    local -a specs=("$hdr=$ver")
    for spec in "$common" "$kbuild"; do
        kver_ok=$(pkg_versions "$spec" | grep -Fx -- "$ver" || true)
        if [ -n "$kver_ok" ]; then
            specs+=("$spec=$ver")
        else
            log "warning: no $spec version $ver, taking $(pkg_versions "$spec" | head -n1)"
            specs+=("$spec")
        fi
    done

    log "downloading ${specs[*]}"
    rm -f "$DEBS"/*.deb "$DEBS/packages"
    (cd "$DEBS" && apt-get "${APT_OPTS[@]}" download "${specs[@]}" >&2) ||
        die "apt-get download ${specs[*]} failed"
    for f in "$DEBS"/*.deb; do echo "${f##*/}"; done >"$DEBS/packages.tmp"
    [ "$(wc -l <"$DEBS/packages.tmp")" -eq 3 ] || die "expected 3 packages in $DEBS"
    mv "$DEBS/packages.tmp" "$DEBS/packages"
}

if debs_present; then
    log "packages already in $DEBS"
else
    fetch_debs
fi

# --- 2. the extracted headers tree ------------------------------------------------------

HDR=$ROOT/usr/src/linux-headers-$KVER

extract() {
    local f link target
    log "extracting $(tr '\n' ' ' <"$DEBS/packages")into $ROOT"
    rm -rf "$ROOT" "$WORK/root.stamp"
    while read -r f; do dpkg-deb -x "$DEBS/$f" "$ROOT"; done <"$DEBS/packages"
    [ -f "$HDR/Makefile" ] || die "no $HDR/Makefile in the packages"

    # The flavour's Makefile is one line, 'include /usr/src/linux-headers-<abi>-common/
    # Makefile': point it at the extracted copy. That Makefile takes srctree from its own
    # location and objtree from make's -C directory, so nothing else names /usr/src.
    sed -i -E "s|^include /usr/src/|include $ROOT/usr/src/|" "$HDR/Makefile"
    grep -q "^include $ROOT/" "$HDR/Makefile" || die "unexpected $HDR/Makefile"

    # scripts and tools are links to /usr/lib/linux-kbuild-X.Y. Debian ships them relative
    # (../../lib/...), which already resolves inside root/; an absolute one would point
    # at the host, so re-point it into root/.
    for link in "$ROOT"/usr/src/linux-headers-*/scripts "$ROOT"/usr/src/linux-headers-*/tools; do
        [ -L "$link" ] || continue
        target=$(readlink "$link")
        case $target in /*) ln -sfn "$ROOT$target" "$link" ;; esac
        [ -e "$link" ] || die "$link points nowhere ($(readlink "$link"))"
    done
    cp "$DEBS/packages" "$WORK/root.stamp"
}

if [ -f "$WORK/root.stamp" ] && cmp -s "$DEBS/packages" "$WORK/root.stamp" &&
    [ -f "$HDR/Makefile" ]; then
    log "headers already extracted in $HDR"
else
    extract
fi

# The kernel's Makefile runs the exact compiler it was built with (e.g. CC = gcc-12 in
# .kernelvariables): check for it, and for the libraries of the kbuild binaries.
kcc=$(sed -n -E 's/^CC = .*\)(gcc(-[0-9]+)?)$/\1/p' "$HDR/.kernelvariables" 2>/dev/null || true)
[ -z "$kcc" ] || need "$kcc" "$kcc"
for bin in "$HDR"/scripts/mod/modpost "$HDR"/scripts/basic/fixdep "$HDR"/tools/objtool/objtool; do
    [ -x "$bin" ] || continue
    missing=$(ldd "$bin" 2>/dev/null | awk '/not found/ { print $1 }' | tr '\n' ' ' || true)
    [ -z "$missing" ] ||
        die "${bin#"$ROOT"} needs ${missing}(Debian packages libelf1, libssl3, zlib1g)"
done

# --- 3. the module -----------------------------------------------------------------------

BUILT=$BUILD/$MODULE.ko
up_to_date() {
    [ "$FORCE" = 0 ] && [ -s "$BUILT" ] || return 1
    # Anything in kmod/, this script or the extracted tree newer than the module: rebuild.
    [ -z "$(find "$SRC_DIR" "$SELF_DIR/$PROG" "$WORK/root.stamp" -newer "$BUILT" \
        -print -quit)" ]
}

if up_to_date; then
    log "$MODULE.ko up to date"
else
    log "building $MODULE.ko for $KVER"
    rm -rf "$BUILD"
    mkdir -p "$BUILD"
    # Build in a copy: Kbuild writes its objects next to the sources, and kmod/ stays clean.
    cp "$SRC_DIR/$MODULE.c" "$SRC_DIR/Kbuild" "$BUILD/"
    if ! make -C "$HDR" M="$BUILD" -j2 modules >"$WORK/build.log" 2>&1; then
        tail -n 40 "$WORK/build.log" >&2
        die "build failed (full log: $WORK/build.log)"
    fi
    [ "$QUIET" = 1 ] || sed "s/^/$PROG: make: /" "$WORK/build.log" >&2
    if grep -q 'warning:' "$WORK/build.log"; then
        log "warning: the build printed compiler warnings (see above)"
    fi
    [ -s "$BUILT" ] || die "make succeeded but produced no $BUILT"
fi

if [ "$KO" != "$BUILT" ] && ! cmp -s "$BUILT" "$KO"; then
    cp "$BUILT" "$KO.tmp"
    mv "$KO.tmp" "$KO"
fi
echo "$KO"
