#!/bin/sh
# The main job on a fresh Debian 12 machine: installs what is needed, builds CloudVMI,
# boots the bundled demo guest (a stock Debian kernel + busybox, under QEMU with its
# gdbstub) and shows CloudVMI reading and changing its live state from the host.
# Run as root. Options: --keep  leave the demo guest running afterwards.
set -eu
cd "$(dirname "$0")/.."
keep=false
[ "${1:-}" = "--keep" ] && keep=true

scripts/install-deps.sh
scripts/build.sh

dir=${CLOUDVMI_DEMO_DIR:-/tmp/cloudvmi-demo}
mkdir -p "$dir"
tests/guest/launch-guest.sh stop --name demo --dir "$dir" >/dev/null 2>&1 || true
echo "== booting the demo guest (TCG; about 10 s)"
eval "$(tests/guest/launch-guest.sh start --name demo --dir "$dir" --hostname web-01)"
cleanup() {
    if [ "$keep" = false ]; then
        tests/guest/launch-guest.sh stop --name demo --dir "$dir" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

cvmi() {
    echo "\$ cloudvmi guest --gdb $GDB $*"
    build/cloudvmi guest --gdb "$GDB" "$@"
}
echo
cvmi info
echo
cvmi cat /proc/loadavg
cvmi cat /proc/meminfo | head -n 3
echo "(and $(build/cloudvmi guest --gdb "$GDB" ls /proc | grep -c '^[0-9]') processes in the guest's /proc)"
cvmi cat /proc/sys/kernel/hostname
cvmi write /proc/sys/kernel/hostname db-01
cvmi cat /proc/sys/kernel/hostname
cvmi ls -l /etc
cvmi cat /etc/does-not-exist || echo "(exit status $?: the guest's ENOENT, unchanged)"
echo
if [ "$keep" = true ]; then
    echo "The demo guest keeps running: GDB=$GDB (stop it with"
    echo "  tests/guest/launch-guest.sh stop --name demo --dir $dir)"
fi
