#!/bin/sh
# Installs every Debian 12 package CloudVMI needs to build, test and run its demo guest.
# Idempotent: running it again only re-checks. Needs root (or sudo).
set -eu

PACKAGES="
build-essential cmake pkg-config
clang-16 libclang-rt-16-dev
libfuse3-dev fuse3
libvirt-dev libxml2-dev
libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
libyaml-cpp-dev
nlohmann-json3-dev libcli11-dev prometheus-cpp-dev
libssl-dev
catch2
linux-libc-dev
qemu-system-x86 qemu-utils
busybox-static cpio gzip
debootstrap e2fsprogs openssh-client openssh-server
python3-docutils
socat curl bash-completion libelf1
procps
"

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo -E "$0" "$@"
    fi
    echo "install-deps: must run as root (or with sudo available)" >&2
    exit 1
fi

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    echo "install-deps: all packages present"
else
    echo "install-deps: installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    # No daemon is started by the installation (openssh-server would start an sshd on
    # port 22, libvirt its daemons): the tests start their own, by hand, on their own
    # sockets and ports.
    no_start=false
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        no_start=true
    fi
    # shellcheck disable=SC2086
    apt-get install -y --no-install-recommends $missing || { [ "$no_start" = false ] || rm -f /usr/sbin/policy-rc.d; exit 1; }
    [ "$no_start" = false ] || rm -f /usr/sbin/policy-rc.d
fi

# The user libvirt's qemu driver runs QEMU as. Debian's libvirt-daemon-system creates it,
# but that package brings systemd as init; the tests start libvirtd by hand instead.
if ! getent passwd libvirt-qemu >/dev/null; then
    echo "install-deps: creating the libvirt-qemu system user"
    getent group libvirt-qemu >/dev/null || addgroup --system libvirt-qemu
    adduser --system --ingroup libvirt-qemu --no-create-home --home /var/lib/libvirt \
        --shell /usr/sbin/nologin libvirt-qemu
fi
