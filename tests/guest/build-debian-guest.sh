#!/bin/bash
# build-debian-guest.sh - build (or locate in the cache) a Debian 12 (bookworm) or 13 (trixie)
# guest with systemd, sshd and qemu-guest-agent for the CloudVMI test kit, from Debian
# packages only.
#
#   build-debian-guest.sh [--release bookworm|trixie] [--cache DIR] [--print] [--quiet] [--rebuild]
#
# Cache layout (outside git):  ${CLOUDVMI_CACHE:-$HOME/.cache/cloudvmi}/debian/ (bookworm),
# .../debian-trixie/ (trixie), each with:
#   rootfs.ext4        the root file system (raw ext4, label "root"); boot it through a
#                      fresh qcow2 overlay, never directly
#   vmlinuz            the kernel of the image (from its /boot)
#   initrd.img         its initramfs (initramfs-tools, MODULES=list + virtio/ext4)
#   kernel-version     the guest's uname -r
#   id_ed25519(.pub)   ssh key pair for root@guest (made once, kept across rebuilds)
#   build.sum          checksum of this script: the image is rebuilt when it changes
#   build.log          output of the last build (debootstrap, dpkg, mkfs)
#   debs/              debootstrap's package cache (makes rebuilds faster)
set -euo pipefail

PROG=${0##*/}
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/${BASH_SOURCE[0]##*/}

SUITE=bookworm
IMAGE_SIZE=2G
GUEST_HOSTNAME=debian-guest
MACHINE_ID=c10d5e0000000000000000000000cafe
FS_UUID=c10d5e00-0000-4000-8000-00000000cafe
# Packages on top of --variant=minbase (which has only the Essential/required set).
INCLUDE=systemd-sysv,udev,dbus,libpam-systemd,openssh-server,qemu-guest-agent,procps,psmisc
INCLUDE=$INCLUDE,iproute2,iputils-ping,kmod,e2fsprogs,linux-image-amd64,initramfs-tools,busybox
# Modules the initramfs needs to find and mount / (MODULES=list: only these are included).
INITRD_MODULES="virtio_pci virtio_blk virtio_net crc32c_generic ext4"

usage() {
    cat <<EOF
Usage: $PROG [--release bookworm|trixie] [--cache DIR] [--print] [--quiet] [--rebuild]

Builds, once, a Debian 12 (bookworm) or 13 (trixie) guest image with systemd from Debian packages:
debootstrap --variant=minbase (mirror taken from apt's configuration), kernel and initramfs
installed in the chroot, then mkfs.ext4 -d (no loop devices). Needs root to build; finding a
built image in the cache does not.

Options:
  --release R   bookworm (default, Debian 12) or trixie (Debian 13)
  --cache DIR   cache root (default \${CLOUDVMI_CACHE:-\$HOME/.cache/cloudvmi});
                files go to DIR/debian/ (bookworm) or DIR/debian-trixie/ (trixie)
  --print       print shell-sourceable DEBIAN_IMAGE=, DEBIAN_KERNEL=, DEBIAN_INITRD=,
                DEBIAN_KERNEL_VERSION=, DEBIAN_SSH_KEY= lines
  --quiet       no progress messages on stderr
  --rebuild     build again even if the cached image is up to date
  -h, --help    this text

Environment: CLOUDVMI_DEBIAN_MIRROR overrides the mirror found in apt's sources.
Exit status: 0 on success, 1 on failure, 2 on bad usage.
EOF
}

# Messages go to the caller's stderr (fd 7) even from a trap that runs while a command's
# output is redirected to the build log.
exec 7>&2
QUIET=0
T_START=$(date +%s)
log() { [ "$QUIET" = 1 ] || echo "$PROG: [$(( $(date +%s) - T_START ))s] $*" >&7; }
die() { echo "$PROG: error: $*" >&7; exit 1; }

CACHE_ROOT=${CLOUDVMI_CACHE:-${HOME:-/root}/.cache/cloudvmi}
PRINT=0
REBUILD=0
while [ $# -gt 0 ]; do
    case $1 in
        --release) [ $# -ge 2 ] || { usage >&2; exit 2; }; SUITE=$2; shift 2 ;;
        --release=*) SUITE=${1#*=}; shift ;;
        --cache) [ $# -ge 2 ] || { usage >&2; exit 2; }; CACHE_ROOT=$2; shift 2 ;;
        --cache=*) CACHE_ROOT=${1#*=}; shift ;;
        --print) PRINT=1; shift ;;
        --quiet|-q) QUIET=1; shift ;;
        --rebuild) REBUILD=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "$PROG: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

case $SUITE in
    bookworm) SUBDIR=debian ;;            # the original layout, unchanged
    trixie) SUBDIR=debian-$SUITE ;;
    *) echo "$PROG: unknown release '$SUITE' (bookworm or trixie)" >&2; usage >&2; exit 2 ;;
esac
mkdir -p "$CACHE_ROOT/$SUBDIR" || die "cannot create cache directory $CACHE_ROOT/$SUBDIR"
D=$(cd "$CACHE_ROOT/$SUBDIR" && pwd)

# One builder at a time per cache (guests are often started in parallel).
exec 9>"$D/.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9 || die "cannot lock $D/.lock"
fi

SUM=$(sha256sum "$SELF" | cut -c1-64)

up_to_date() {
    [ -s "$D/rootfs.ext4" ] && [ -s "$D/vmlinuz" ] && [ -s "$D/initrd.img" ] &&
    [ -s "$D/kernel-version" ] && [ -s "$D/id_ed25519" ] && [ -f "$D/build.sum" ] &&
    [ "$(cat "$D/build.sum")" = "$SUM" ]
}

print_vars() {
    [ "$PRINT" = 1 ] || return 0
    q() { printf '%s=%q\n' "$1" "$2"; }
    q DEBIAN_IMAGE "$D/rootfs.ext4"
    q DEBIAN_KERNEL "$D/vmlinuz"
    q DEBIAN_INITRD "$D/initrd.img"
    q DEBIAN_KERNEL_VERSION "$(cat "$D/kernel-version")"
    q DEBIAN_SSH_KEY "$D/id_ed25519"
}

if [ "$REBUILD" = 0 ] && up_to_date; then
    print_vars
    exit 0
fi

# ================================================================ build
[ "$(id -u)" = 0 ] || die "building the Debian guest needs root (debootstrap, chroot)"
export LC_ALL=C
LOG=$D/build.log
: >"$LOG"

APT_OPTS=(-o APT::Sandbox::User=root)
apt_install() {   # packages...
    log "installing $* (apt-get)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" -qq -y install "$@" >>"$LOG" 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" -qq update >>"$LOG" 2>&1 ||
            die "apt-get update failed (see $LOG)"
        DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" -qq -y install "$@" >>"$LOG" 2>&1 ||
            die "apt-get install $* failed (see $LOG)"
    fi
}
command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
# mkfs.ext4 -d needs e2fsprogs >= 1.43 (Debian 12 has 1.47)
if ! command -v mkfs.ext4 >/dev/null 2>&1 || ! { mkfs.ext4 2>&1 || true; } | grep -q -- '-d '; then
    apt_install e2fsprogs
fi

# ---------------------------------------------------------------- the mirror
# The Debian mirror apt is configured with (one-line *.list or deb822 *.sources): the first
# "deb" entry for $SUITE, else the first one for a plain suite (no -security/-updates).
find_mirror() {
    local files=() f
    [ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
    shopt -s nullglob
    for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do files+=("$f"); done
    shopt -u nullglob
    [ ${#files[@]} -gt 0 ] || return 0
    awk -v want="$SUITE" '
        function consider(uri, suite) {
            sub(/\/+$/, "", uri)
            if (suite == want && exact == "") exact = uri
            if (suite !~ /-/ && uri !~ /security/ && plain == "") plain = uri
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
        END { flush(); if (exact != "") print exact; else if (plain != "") print plain }
    ' "${files[@]}"
}
MIRROR=${CLOUDVMI_DEBIAN_MIRROR:-$(find_mirror)}
[ -n "$MIRROR" ] || die "no Debian mirror found in apt's sources (set CLOUDVMI_DEBIAN_MIRROR)"
# A proxy configured for apt is one debootstrap (wget) needs too.
if [ -z "${http_proxy:-}" ]; then
    P=
    eval "$(apt-config shell P Acquire::http::Proxy 2>/dev/null)" || true
    case ${P:-} in http*) export http_proxy=$P ;; esac
fi
if [ -z "${https_proxy:-}" ]; then
    P=
    eval "$(apt-config shell P Acquire::https::Proxy 2>/dev/null)" || true
    case ${P:-} in http*) export https_proxy=$P ;; esac
fi

# ---------------------------------------------------------------- work dir + cleanup
TMP=$(mktemp -d "$D/.build.XXXXXX") || die "mktemp failed in $D"
chmod 755 "$TMP"
R=$TMP/root

mounts_under() {   # mount points at or below $1, deepest first
    awk -v p="$1" '$2 == p || index($2, p "/") == 1 { print $2 }' /proc/mounts | sort -r
}
unmount_all() {
    local m
    for m in $(mounts_under "$R"); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
}
stop_chroot_procs() {   # processes left running inside the chroot (e.g. a daemon a postinst started)
    local p root
    for p in /proc/[0-9]*; do
        root=$(readlink "$p/root" 2>/dev/null) || continue
        case $root in "$R"|"$R"/*) kill -KILL "${p#/proc/}" 2>/dev/null || true ;; esac
    done
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [ -d "$R" ]; then
        stop_chroot_procs
        unmount_all
    fi
    if [ -n "$(mounts_under "$TMP")" ]; then
        echo "$PROG: warning: mounts remain under $TMP; not deleting it" >&7
    else
        rm -rf --one-file-system "$TMP"
    fi
    if [ $rc -ne 0 ] && [ -s "$LOG" ]; then
        { echo "$PROG: build failed; last lines of $LOG:"; tail -n 25 "$LOG"; } >&7
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

in_chroot() {   # run a command in the chroot with a clean environment
    chroot "$R" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LC_ALL=C DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true "$@"
}

# ---------------------------------------------------------------- debootstrap, stage 1
mkdir -p "$D/debs"
log "debootstrap $SUITE (minbase + $(tr ',' '\n' <<<"$INCLUDE" | wc -l) packages) from $MIRROR; log: $LOG"
debootstrap --foreign --variant=minbase --arch=amd64 --include="$INCLUDE" \
    --cache-dir="$D/debs" "$SUITE" "$R" "$MIRROR" >>"$LOG" 2>&1 ||
    die "debootstrap (first stage) failed"

# Before the packages are configured: no daemon may start in the chroot, dpkg need not
# fsync, and the initramfs the kernel's postinst builds is a small MODULES=list one.
cat >"$R/usr/sbin/policy-rc.d" <<'EOF'
#!/bin/sh
exit 101
EOF
chmod 755 "$R/usr/sbin/policy-rc.d"
mkdir -p "$R/etc/dpkg/dpkg.cfg.d" "$R/etc/initramfs-tools/conf.d"
echo force-unsafe-io >"$R/etc/dpkg/dpkg.cfg.d/cloudvmi-unsafe-io"
cat >"$R/etc/initramfs-tools/conf.d/cloudvmi.conf" <<'EOF'
# CloudVMI test guest: only the modules listed in /etc/initramfs-tools/modules
MODULES=list
COMPRESS=gzip
EOF
printf '%s\n' "$MACHINE_ID" >"$R/etc/machine-id"

# ---------------------------------------------------------------- debootstrap, stage 2
log "debootstrap second stage (unpacking and configuring in the chroot)"
in_chroot /debootstrap/debootstrap --second-stage >>"$LOG" 2>&1 ||
    die "debootstrap (second stage) failed"
unmount_all   # in case the second stage left /proc or /sys mounted

# ---------------------------------------------------------------- configuration
log "configuring the guest"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"

printf '%s\n' "$MACHINE_ID" >"$R/etc/machine-id"
mkdir -p "$R/var/lib/dbus"
ln -sf /etc/machine-id "$R/var/lib/dbus/machine-id"
echo "$GUEST_HOSTNAME" >"$R/etc/hostname"
cat >"$R/etc/hosts" <<EOF
127.0.0.1	localhost
127.0.1.1	$GUEST_HOSTNAME
::1		localhost ip6-localhost ip6-loopback
EOF
cat >"$R/etc/fstab" <<'EOF'
# <file system> <mount point> <type> <options> <dump> <pass>
/dev/vda	/	ext4	rw,relatime,errors=remount-ro	0	0
EOF
# QEMU user networking: DHCP on the virtio NIC, its DNS forwarder.
mkdir -p "$R/etc/systemd/network"
cat >"$R/etc/systemd/network/20-cloudvmi.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
EOF
rm -f "$R/etc/resolv.conf"
echo 'nameserver 10.0.2.3' >"$R/etc/resolv.conf"
echo 'LANG=C.UTF-8' >"$R/etc/default/locale"   # (pam_env complains when it is missing)
# Modules udev would load for devices of QEMU's pc machine that a headless test VM does not
# use; each costs seconds under TCG and logs warnings (no KVM in the guest, no regulatory.db).
cat >"$R/etc/modprobe.d/cloudvmi.conf" <<'EOF'
blacklist kvm_amd
blacklist kvm_intel
blacklist cfg80211
blacklist floppy
blacklist pcspkr
EOF

# initramfs: the brief list of modules that find and mount /dev/vda.
{
    echo "# CloudVMI test guest (MODULES=list, see conf.d/cloudvmi.conf)"
    printf '%s\n' $INITRD_MODULES
} >"$R/etc/initramfs-tools/modules"

# users: root (ssh key only), cvmiuser (unprivileged, uid 1000)
in_chroot useradd -u 1000 -U -m -s /bin/bash cvmiuser >>"$LOG" 2>&1 ||
    die "useradd cvmiuser failed"

# ssh: a key pair for root, kept in the cache across rebuilds; host keys made now
if [ ! -s "$D/id_ed25519" ] || [ ! -s "$D/id_ed25519.pub" ]; then
    log "generating the ssh key pair $D/id_ed25519"
    rm -f "$D/id_ed25519" "$D/id_ed25519.pub" "$R/tmp/cvmi_key" "$R/tmp/cvmi_key.pub"
    if command -v ssh-keygen >/dev/null 2>&1; then
        ssh-keygen -q -t ed25519 -N '' -C cloudvmi-test -f "$D/id_ed25519" >>"$LOG" 2>&1
    else   # the chroot has one (openssh-client comes with openssh-server)
        in_chroot ssh-keygen -q -t ed25519 -N '' -C cloudvmi-test -f /tmp/cvmi_key >>"$LOG" 2>&1
        mv "$R/tmp/cvmi_key" "$D/id_ed25519"; mv "$R/tmp/cvmi_key.pub" "$D/id_ed25519.pub"
    fi || die "ssh-keygen failed"
    chmod 600 "$D/id_ed25519"
fi
install -d -m 700 "$R/root/.ssh"
install -m 600 "$D/id_ed25519.pub" "$R/root/.ssh/authorized_keys"
in_chroot ssh-keygen -A >>"$LOG" 2>&1 || die "ssh-keygen -A (host keys) failed"
mkdir -p "$R/etc/ssh/sshd_config.d"
cat >"$R/etc/ssh/sshd_config.d/cloudvmi.conf" <<'EOF'
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
EOF

# known files (as in the busybox guest)
printf 'cloudvmi known file\n' >"$R/etc/cloudvmi-known"
chmod 644 "$R/etc/cloudvmi-known"
printf 'secret\n' >"$R/etc/cloudvmi-secret"
chmod 600 "$R/etc/cloudvmi-secret"
mkdir -p "$R/var/log/cloudvmi"
printf 'cloudvmi test log line %d\n' 1 2 3 >"$R/var/log/cloudvmi/test.log"

# workload scripts
B=$R/usr/local/bin
mkdir -p "$B"
cat >"$B/cvmi-heartbeat" <<'EOF'
#!/bin/bash
# cloudvmi-heartbeat.service: every 2 s one line "HEARTBEAT <unix-seconds> <counter>" on the
# serial console (reopened each time: a getty's vhangup must not silence us) and in
# /run/heartbeat (the latest line only). Line n+1 is due at start + 2n s: no drift (after a
# late beat the schedule starts over), no fork per beat (read -t on an idle fifo sleeps).
fifo=/run/cvmi-heartbeat.fifo
rm -f "$fifo"; mkfifo -m 600 "$fifo"; exec 3<>"$fifo"
t0=${EPOCHREALTIME/[.,]/}
n=0
while :; do
    n=$((n + 1))
    printf -v line 'HEARTBEAT %(%s)T %d' -1 "$n"
    echo "$line" >/dev/ttyS0 2>/dev/null
    echo "$line" >/run/heartbeat
    now=${EPOCHREALTIME/[.,]/}
    d=$((t0 + n * 2000000 - now))
    if [ $d -le 0 ]; then   # late (guest paused?): no burst of catch-up lines, start over
        t0=$((now - n * 2000000 + 2000000)); d=2000000
    fi
    printf -v d '%d.%06d' $((d / 1000000)) $((d % 1000000))
    read -r -t "$d" -u 3 _ || true
done
EOF
cat >"$B/cvmi-private" <<'EOF'
#!/bin/sh
# cloudvmi-private.service (PrivateTmp=yes): a marker in its own /tmp, then sleep.
echo 'cloudvmi private marker' >/tmp/private-marker
while :; do sleep 5; done
EOF
cat >"$B/cvmi-user" <<'EOF'
#!/bin/sh
# cloudvmi-user.service (User=cvmiuser): sleep loop.
while :; do sleep 5; done
EOF
cat >"$B/cvmi-ready" <<'EOF'
#!/bin/sh
# cloudvmi-ready.service: runs once multi-user.target is reached. Waits (up to 30 s) for
# qemu-guest-agent when its virtio port exists, then tells the host the guest is up.
if [ -e /dev/virtio-ports/org.qemu.guest_agent.0 ]; then
    i=0
    while [ $i -lt 150 ] && ! systemctl -q is-active qemu-guest-agent.service; do
        sleep 0.2; i=$((i + 1))
    done
fi
echo CLOUDVMI-GUEST-READY >/run/cloudvmi-ready
echo CLOUDVMI-GUEST-READY >/dev/ttyS0
EOF
cat >"$B/cvmi-busy-loop" <<'EOF'
#!/bin/sh
while :; do :; done
EOF
cat >"$B/cvmi-busy" <<'EOF'
#!/bin/sh
# cvmi-busy [N]   start N (default 1) CPU-bound shell loops in the background (comm
#                 cvmi-busy-loop, detached from the caller), print their pids, one a line
# cvmi-busy stop  kill them all
case ${1:-1} in
    stop) pkill -x cvmi-busy-loop; exit 0 ;;
    *[!0-9]*|'') echo "usage: cvmi-busy [N|stop]" >&2; exit 2 ;;
esac
i=0
while [ "$i" -lt "${1:-1}" ]; do
    setsid /usr/local/bin/cvmi-busy-loop </dev/null >/dev/null 2>&1 &
    echo $!
    i=$((i + 1))
done
EOF
chmod 755 "$B"/cvmi-*

# systemd units
U=$R/etc/systemd/system
cat >"$U/cloudvmi-heartbeat.service" <<'EOF'
[Unit]
Description=CloudVMI heartbeat on the serial console and in /run/heartbeat

[Service]
ExecStart=/usr/local/bin/cvmi-heartbeat
Restart=always

[Install]
WantedBy=multi-user.target
EOF
cat >"$U/cloudvmi-private.service" <<'EOF'
[Unit]
Description=CloudVMI service with a private /tmp

[Service]
PrivateTmp=yes
ExecStart=/usr/local/bin/cvmi-private
Restart=always

[Install]
WantedBy=multi-user.target
EOF
cat >"$U/cloudvmi-user.service" <<'EOF'
[Unit]
Description=CloudVMI service of an unprivileged user

[Service]
User=cvmiuser
Group=cvmiuser
ExecStart=/usr/local/bin/cvmi-user
Restart=always

[Install]
WantedBy=multi-user.target
EOF
# DefaultDependencies=no: a target orders itself after the units it wants, so a unit with
# default dependencies could not be both wanted by and ordered after multi-user.target.
cat >"$U/cloudvmi-ready.service" <<'EOF'
[Unit]
Description=CloudVMI: tell the host that the guest is up
DefaultDependencies=no
Requires=sysinit.target
After=sysinit.target basic.target multi-user.target qemu-guest-agent.service
Conflicts=shutdown.target
Before=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/bin/cvmi-ready

[Install]
WantedBy=multi-user.target
EOF

in_chroot systemctl set-default multi-user.target >>"$LOG" 2>&1
in_chroot systemctl enable systemd-networkd.service ssh.service \
    cloudvmi-heartbeat.service cloudvmi-private.service cloudvmi-user.service \
    cloudvmi-ready.service >>"$LOG" 2>&1 || die "systemctl enable failed"
# Nothing that waits for or competes with the test workload: no network-online wait, no
# gettys (the console is a log file), no periodic jobs (apt, fstrim, e2scrub, dpkg backup).
in_chroot systemctl disable systemd-networkd-wait-online.service >>"$LOG" 2>&1 || true
in_chroot systemctl mask serial-getty@ttyS0.service getty@tty1.service \
    apt-daily.timer apt-daily-upgrade.timer fstrim.timer e2scrub_all.timer e2scrub_reap.service \
    dpkg-db-backup.timer >>"$LOG" 2>&1 || true
# systemd >= 256 (trixie): systemd-ssh-generator asks for the local AF_VSOCK CID at every
# boot and, QEMU giving the guest no vsock device, fails with a message on the console.
# sshd is enabled above; mask the generator (bookworm has none).
if [ -e "$R/usr/lib/systemd/system-generators/systemd-ssh-generator" ]; then
    mkdir -p "$R/etc/systemd/system-generators"
    ln -sf /dev/null "$R/etc/systemd/system-generators/systemd-ssh-generator"
fi
# qemu-guest-agent is started by udev when the org.qemu.guest_agent.0 port appears.
[ -f "$R/lib/systemd/system/qemu-guest-agent.service" ] ||
    die "qemu-guest-agent.service missing from the image"

# ---------------------------------------------------------------- kernel + initramfs
shopt -s nullglob
k=("$R"/boot/vmlinuz-*)
shopt -u nullglob
[ ${#k[@]} -eq 1 ] || die "expected one kernel in the chroot's /boot, found ${#k[@]}"
KVER=${k[0]##*/vmlinuz-}
log "building the initramfs for $KVER (MODULES=list: $INITRD_MODULES)"
in_chroot update-initramfs -u -k "$KVER" >>"$LOG" 2>&1 || die "update-initramfs failed"
[ -s "$R/boot/initrd.img-$KVER" ] || die "no /boot/initrd.img-$KVER in the chroot"
cp "$R/boot/vmlinuz-$KVER" "$TMP/vmlinuz"
cp "$R/boot/initrd.img-$KVER" "$TMP/initrd.img"
echo "$KVER" >"$TMP/kernel-version"

# ---------------------------------------------------------------- tidy + image
unmount_all
stop_chroot_procs
rm -f "$R/usr/sbin/policy-rc.d" "$R/etc/dpkg/dpkg.cfg.d/cloudvmi-unsafe-io"
rm -rf "$R/debootstrap" "$R"/var/cache/apt/archives/*.deb "$R"/var/cache/apt/*.bin \
    "$R"/var/lib/apt/lists/*_* "$R"/tmp/* "$R"/var/tmp/* "$R"/var/log/*.log
[ -z "$(mounts_under "$R")" ] || die "mounts remain under $R"
log "making the image (mkfs.ext4 -d, $IMAGE_SIZE; tree: $(du -sh --one-file-system "$R" | cut -f1))"
mkfs.ext4 -q -F -L root -U "$FS_UUID" -E lazy_itable_init=0,lazy_journal_init=0 \
    -d "$R" "$TMP/rootfs.ext4" "$IMAGE_SIZE" >>"$LOG" 2>&1 || die "mkfs.ext4 -d failed"

rm -f "$D/build.sum"
mv -f "$TMP/rootfs.ext4" "$D/rootfs.ext4"
mv -f "$TMP/vmlinuz" "$D/vmlinuz"
mv -f "$TMP/initrd.img" "$D/initrd.img"
mv -f "$TMP/kernel-version" "$D/kernel-version"
rm -f "$D"/accel.*   # detect-accel verdicts were for the previous kernel
echo "$SUM" >"$D/build.sum"
log "done: $D/rootfs.ext4 (kernel $KVER)"
print_vars
exit 0
