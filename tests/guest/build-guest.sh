#!/bin/bash
# build-guest.sh - build (or locate in the cache) the CloudVMI test guest kit:
# a stock Debian kernel and a busybox initramfs, both made from Debian packages only.
#
#   build-guest.sh [--release bullseye|bookworm|trixie|sid] [--flavour generic|cloud|rt]
#                  [--cache DIR] [--print] [--quiet] [--refresh]
#
# Cache layout (outside git):  ${CLOUDVMI_CACHE:-$HOME/.cache/cloudvmi}/guest/
#   <flavour>/                the bookworm kernels (the default release):
#   <flavour>/vmlinuz         kernel image (boot/vmlinuz-* of the package)
#   <flavour>/config          its build configuration
#   <flavour>/version         name of the package it came from (linux-image-6.1.0-NN-...)
#   <flavour>/resolved        meta package resolution, keyed by the state of apt's lists
#   <release>/<flavour>/      the same for the other releases
#   apt/<release>/            private apt state for a release other than the host's:
#                             sources.list, lists/, cache/ (the machine's apt is not touched)
#   initrd.gz                 busybox initramfs, shared by all flavours and releases
#   initrd.sum                checksum of the initramfs inputs
set -euo pipefail

SELF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROG=${0##*/}

usage() {
    cat <<EOF
Usage: $PROG [--release R] [--flavour generic|cloud|rt] [--cache DIR] [--print] [--quiet]
             [--refresh]

Builds the CloudVMI test guest from Debian packages (nothing else is downloaded):
  kernel     linux-image-<abi>-{amd64,cloud-amd64,rt-amd64}, resolved via the meta package
             (where that is itself a metapackage, as in unstable, the image comes from
             linux-binary-<abi> and its config from linux-base-<abi>)
  initramfs  /bin/busybox (busybox-static) + tests/guest/init, newc cpio + gzip

Options:
  --release R   Debian release of the kernel: bullseye (11), bookworm (12, default),
                trixie (13) or sid (unstable). The host's own release uses the machine's
                apt lists; any other one a private sources list and lists directory in the
                cache (the mirror is the one apt is configured with), so the machine's apt
                configuration and state are never touched.
  --flavour F   generic (default), cloud or rt
  --cache DIR   cache root (default \${CLOUDVMI_CACHE:-\$HOME/.cache/cloudvmi});
                files go to DIR/guest/
  --print       print shell-sourceable KERNEL=, INITRD=, KERNEL_VERSION= lines
                (plus KERNEL_PACKAGE=, KERNEL_CONFIG=, FLAVOUR=, RELEASE=)
  --quiet       no progress messages on stderr
  --refresh     fetch the release's package lists again first (private lists only; they
                are otherwise fetched once, and again only when a download fails)
  -h, --help    this text

Environment: CLOUDVMI_DEBIAN_MIRROR and CLOUDVMI_DEBIAN_SECURITY_MIRROR override the
mirrors found in apt's sources (private lists only).
Exit status: 0 on success, 1 on failure, 2 on bad usage.
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 1; }
QUIET=0
log() { [ "$QUIET" = 1 ] || echo "$PROG: $*" >&2; }

FLAVOUR=generic
RELEASE=bookworm
CACHE_ROOT=${CLOUDVMI_CACHE:-${HOME:-/root}/.cache/cloudvmi}
PRINT=0
REFRESH=0
while [ $# -gt 0 ]; do
    case $1 in
        --release) [ $# -ge 2 ] || { usage >&2; exit 2; }; RELEASE=$2; shift 2 ;;
        --release=*) RELEASE=${1#*=}; shift ;;
        --refresh) REFRESH=1; shift ;;
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
case $RELEASE in
    bullseye|bookworm|trixie|sid) ;;
    *) echo "$PROG: unknown release '$RELEASE' (bullseye, bookworm, trixie or sid)" >&2; exit 2 ;;
esac

GUEST=$CACHE_ROOT/guest
# bookworm keeps the layout it always had
if [ "$RELEASE" = bookworm ]; then FDIR=$GUEST/$FLAVOUR; else FDIR=$GUEST/$RELEASE/$FLAVOUR; fi
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

# The host's own release is resolved with the machine's apt lists (as it always was); any
# other release with a private sources list, lists and cache under $GUEST/apt/<release>.
HOST_RELEASE=$( (. /etc/os-release 2>/dev/null && printf '%s' "${VERSION_CODENAME:-}") || true)
PRIVATE=0
[ "$RELEASE" = "$HOST_RELEASE" ] || PRIVATE=1

# The Debian mirrors apt is configured with (one-line *.list or deb822 *.sources): prints
# "main URI" (the first deb entry for a plain suite) and "security URI" (the first one for
# a *-security suite).
find_mirrors() {
    local files=() f
    [ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
    shopt -s nullglob
    for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do files+=("$f"); done
    shopt -u nullglob
    [ ${#files[@]} -gt 0 ] || return 0
    awk '
        function consider(uri, suite) {
            sub(/\/+$/, "", uri)
            if (suite ~ /-security$/) { if (security == "") security = uri }
            else if (suite !~ /-/ && uri !~ /security/ && plain == "") plain = uri
        }
        function flush(   i, j, nu, ns, u, s) {
            if (types ~ /(^|[ \t])deb([ \t]|$)/ && enabled !~ /^[ \t]*no/) {
                nu = split(uris, u, /[ \t]+/); ns = split(suites, s, /[ \t]+/)
                for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++)
                    if (u[i] != "" && s[j] != "") consider(u[i], s[j])
            }
            types = uris = suites = enabled = ""
        }
        FNR == 1 { flush(); deb822 = (FILENAME ~ /\.sources$/) }
        /^[ \t]*#/ { next }
        deb822 {
            if ($0 ~ /^[ \t]*$/) { flush(); next }
            line = $0; key = tolower(line); sub(/:.*/, "", key); sub(/^[^:]*:[ \t]*/, "", line)
            if (key == "types") types = line
            else if (key == "uris") uris = line
            else if (key == "suites") suites = line
            else if (key == "enabled") enabled = line
            next
        }
        $1 == "deb" {
            i = 2
            if ($i ~ /^\[/) { while ($i !~ /\]$/ && i < NF) i++; i++ }
            consider($i, $(i + 1))
        }
        END { flush(); if (plain != "") print "main " plain; if (security != "") print "security " security }
    ' "${files[@]}"
}

LISTS_DIR=
if [ "$PRIVATE" = 1 ]; then
    APTDIR=$GUEST/apt/$RELEASE
    LISTS_DIR=$APTDIR/lists
    mkdir -p "$LISTS_DIR/partial" "$APTDIR/cache/archives/partial" ||
        die "cannot create $APTDIR"
    [ -f "$APTDIR/status" ] || : >"$APTDIR/status"
    MIRROR=${CLOUDVMI_DEBIAN_MIRROR:-}
    SECURITY=${CLOUDVMI_DEBIAN_SECURITY_MIRROR:-}
    if [ -z "$MIRROR" ] || [ -z "$SECURITY" ]; then
        while read -r kind uri; do
            case $kind in
                main) [ -n "$MIRROR" ] || MIRROR=$uri ;;
                security) [ -n "$SECURITY" ] || SECURITY=$uri ;;
            esac
        done < <(find_mirrors)
    fi
    [ -n "$MIRROR" ] || die "no Debian mirror found in apt's sources (set CLOUDVMI_DEBIAN_MIRROR)"
    KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
    OPT=
    [ -f "$KEYRING" ] && OPT="[signed-by=$KEYRING] "
    {
        echo "# written by $PROG for --release $RELEASE (mirrors taken from apt's sources)"
        echo "deb $OPT$MIRROR $RELEASE main"
        if [ "$RELEASE" != sid ]; then
            echo "deb $OPT$MIRROR $RELEASE-updates main"
            [ -z "$SECURITY" ] || echo "deb $OPT$SECURITY $RELEASE-security main"
        fi
    } >"$APTDIR/sources.list.new"
    if cmp -s "$APTDIR/sources.list.new" "$APTDIR/sources.list"; then
        rm -f "$APTDIR/sources.list.new"
    else
        # other mirrors: the lists fetched from the old ones are not theirs
        mv -f "$APTDIR/sources.list.new" "$APTDIR/sources.list"
        find "$LISTS_DIR" -maxdepth 1 -type f ! -name lock -delete 2>/dev/null || true
    fi
    APT_OPTS+=(-o "Dir::Etc::SourceList=$APTDIR/sources.list"
               -o Dir::Etc::SourceParts=/dev/null
               -o "Dir::State::Lists=$LISTS_DIR"
               -o "Dir::State::status=$APTDIR/status"
               -o "Dir::Cache=$APTDIR/cache"
               -o Dir::Etc::Preferences=/dev/null
               -o Dir::Etc::PreferencesParts=/dev/null
               -o Acquire::Languages=none)
fi

UPDATED=0
apt_update() {
    [ "$UPDATED" = 0 ] || return 1
    UPDATED=1
    if [ "$PRIVATE" = 1 ]; then
        log "fetching the package lists of $RELEASE (private lists in $APTDIR)"
        apt-get "${APT_OPTS[@]}" -qq update >&2 || die "apt-get update ($RELEASE, private lists) failed"
        return 0
    fi
    [ "$(id -u)" = 0 ] || die "package lists need refreshing but 'apt-get update' needs root"
    log "running apt-get update"
    apt-get "${APT_OPTS[@]}" -qq update >&2 || die "apt-get update failed"
}

# State of apt's package lists: when it changes, the meta package is resolved again.
lists_stamp() {
    local f=() LISTS=${LISTS_DIR:-/var/lib/apt/lists/}
    [ -n "$LISTS_DIR" ] || eval "$(apt-config shell LISTS Dir::State::lists/d 2>/dev/null)" || true
    shopt -s nullglob
    f=("${LISTS%/}"/*_Packages*)
    shopt -u nullglob
    [ ${#f[@]} -gt 0 ] || { echo none; return; }
    stat -c '%n %Y %s' "${f[@]}" | cksum | cut -d' ' -f1
}

if [ "$PRIVATE" = 1 ] && { [ "$REFRESH" = 1 ] || [ "$(lists_stamp)" = none ]; }; then
    apt_update
fi

# meta package -> ABI package (linux-image-6.1.0-NN-amd64)
resolve() {
    local out
    out=$(apt-cache "${APT_OPTS[@]}" depends "$META" 2>/dev/null |
          sed -n 's/^ *Depends: *\(linux-image-[0-9][^ ]*\).*/\1/p' | head -n1) || true
    printf '%s' "$out"
}
# ABI package -> the package that holds the image: itself, or (unstable) linux-binary-<abi>
image_holder() {
    local kver=${1#linux-image-} deps
    deps=$(apt-cache "${APT_OPTS[@]}" depends "$1" 2>/dev/null) || true
    if grep -qxF "  Depends: linux-binary-$kver" <<<"$deps"; then
        printf 'linux-binary-%s' "$kver"
    else
        printf '%s' "$1"
    fi
}

STAMP=$(lists_stamp)
PKG=
BIN=
if [ -f "$FDIR/resolved" ]; then
    read -r rs rp rb <"$FDIR/resolved" || true
    [ "${rs:-}" = "$STAMP" ] && [ -n "${rb:-}" ] && PKG=${rp:-} && BIN=$rb
fi
if [ -z "$PKG" ]; then
    PKG=$(resolve)
    if [ -z "$PKG" ]; then
        apt_update || true
        STAMP=$(lists_stamp)
        PKG=$(resolve)
        [ -n "$PKG" ] || die "cannot resolve $META ($RELEASE) to a kernel package (apt-cache depends $META)"
    fi
    BIN=$(image_holder "$PKG")
    printf '%s %s %s\n' "$STAMP" "$PKG" "$BIN" >"$FDIR/resolved.new" && mv -f "$FDIR/resolved.new" "$FDIR/resolved"
fi
KVER=${PKG#linux-image-}

# ---------------------------------------------------------------- kernel
have_kernel() {
    [ -s "$FDIR/vmlinuz" ] && [ -f "$FDIR/version" ] && [ "$(cat "$FDIR/version")" = "$PKG" ]
}

download() {   # package -> path of its .deb in $TMP
    local p=$1 debs
    if ! (cd "$TMP" && apt-get "${APT_OPTS[@]}" -qq download "$p" >&2); then
        apt_update || die "apt-get download $p failed"
        (cd "$TMP" && apt-get "${APT_OPTS[@]}" -qq download "$p" >&2) ||
            die "apt-get download $p failed"
    fi
    shopt -s nullglob
    debs=("$TMP"/"${p}"_*.deb)
    shopt -u nullglob
    [ ${#debs[@]} -eq 1 ] || die "apt-get download $p produced no .deb"
    printf '%s' "${debs[0]}"
}

# extract DEB DIR MEMBER... : only these members, else (unusual layout) everything
extract() {
    local deb=$1 dir=$2
    shift 2
    mkdir -p "$dir"
    # the wanted members come first in the data archive: stop reading once they are out
    set +o pipefail
    dpkg-deb --fsys-tarfile "$deb" 2>/dev/null | tar -x -C "$dir" --occurrence=1 "$@" 2>/dev/null
    set -o pipefail
    if [ ! -s "$dir/${1#./}" ]; then
        rm -rf "$dir"; mkdir -p "$dir"
        dpkg-deb -x "$deb" "$dir" || die "dpkg-deb -x $deb failed"
    fi
}

if ! have_kernel; then
    tmpdir
    log "downloading $BIN ($RELEASE)"
    deb=$(download "$BIN")
    # (boot/System.map in these packages is a placeholder: the real one is in -dbg.)
    if [ "$BIN" = "$PKG" ]; then
        log "extracting boot/vmlinuz-$KVER"
        extract "$deb" "$TMP/x" "./boot/vmlinuz-$KVER" "./boot/config-$KVER"
        img=$TMP/x/boot/vmlinuz-$KVER cfg=$TMP/x/boot/config-$KVER
        [ -s "$img" ] || img=$TMP/x/usr/lib/modules/$KVER/vmlinuz
        [ -f "$cfg" ] || cfg=$TMP/x/usr/lib/modules/$KVER/config
    else
        # the image package is a metapackage: vmlinuz is in linux-binary-<abi>, the config
        # in linux-base-<abi>
        log "extracting usr/lib/modules/$KVER/vmlinuz"
        extract "$deb" "$TMP/x" "./usr/lib/modules/$KVER/vmlinuz"
        img=$TMP/x/usr/lib/modules/$KVER/vmlinuz cfg=$TMP/x/usr/lib/modules/$KVER/config
        if (cd "$TMP" && apt-get "${APT_OPTS[@]}" -qq download "linux-base-$KVER" >&2 2>/dev/null); then
            for b in "$TMP"/linux-base-"$KVER"_*.deb; do
                [ -f "$b" ] && extract "$b" "$TMP/y" "./usr/lib/modules/$KVER/config"
                cfg=$TMP/y/usr/lib/modules/$KVER/config
            done
        fi
    fi
    [ -s "$img" ] || die "$deb has no boot/vmlinuz-$KVER nor usr/lib/modules/$KVER/vmlinuz"
    mv -f "$img" "$FDIR/vmlinuz.new"
    if [ -f "$cfg" ]; then mv -f "$cfg" "$FDIR/config"; else rm -f "$FDIR/config"; fi
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
    q RELEASE "$RELEASE"
fi
exit 0
