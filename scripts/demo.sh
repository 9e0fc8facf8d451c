#!/bin/sh
# The main job on a fresh Debian 12 machine: installs what is needed, builds CloudVMI,
# boots the bundled demo guest (a stock Debian kernel + busybox, under QEMU with its
# gdbstub), mounts /vmi and shows the guest's live state with ordinary tools.
# Run as root. Options:
#   --keep   leave the demo guest running and /vmi mounted afterwards
set -eu
cd "$(dirname "$0")/.."
keep=false
[ "${1:-}" = "--keep" ] && keep=true

scripts/install-deps.sh
scripts/build.sh cloudvmi check_cloudvmi

dir=${CLOUDVMI_DEMO_DIR:-/tmp/cloudvmi-demo}
mnt=${CLOUDVMI_DEMO_MOUNT:-/vmi}
mkdir -p "$dir" "$mnt"
if mountpoint -q "$mnt"; then
    echo "demo: $mnt is already mounted; unmount it first (fusermount3 -u $mnt)" >&2
    exit 1
fi
tests/guest/launch-guest.sh stop --name demo --dir "$dir" >/dev/null 2>&1 || true
tests/guest/launch-guest.sh stop --name demo2 --dir "$dir" >/dev/null 2>&1 || true
echo "== booting the demo guests, a fleet of two (TCG; about 10 s each)"
eval "$(tests/guest/launch-guest.sh start --name demo2 --dir "$dir" --hostname db-01)"
GDB2=$GDB VMI_QMP2=$VMI_QMP
eval "$(tests/guest/launch-guest.sh start --name demo --dir "$dir" --hostname web-01)"

cat >"$dir/policy.yaml" <<EOF
version: 1
rules:
  - id: demo-hostname
    decision: allow
    paths: [/proc/sys/kernel/hostname]
    ops: [write]
    constraints: {regex: '^[a-z0-9-]{1,63}\n?$'}
EOF
cat >"$dir/cloudvmi.yaml" <<EOF
node: demo-node
state_dir: $dir/state
policy: $dir/policy.yaml
audit:
  file: $dir/audit/audit.log
  syslog: false
vms:
  - name: web-01
    gdb: $GDB
    qmp: $VMI_QMP
  - name: db-01
    gdb: $GDB2
    qmp: $VMI_QMP2
EOF

cleanup() {
    if [ "$keep" = false ]; then
        fusermount3 -u "$mnt" 2>/dev/null || true
        tests/guest/launch-guest.sh stop --name demo --dir "$dir" >/dev/null 2>&1 || true
        tests/guest/launch-guest.sh stop --name demo2 --dir "$dir" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

show() {
    printf '\n$ %s\n' "$*"
    bash -c "$*"
}

echo "== mounting $mnt"
build/cloudvmi --config "$dir/cloudvmi.yaml" "$mnt"
vm=$mnt/demo-node/web-01
show "ls $mnt/demo-node"
echo
echo "== the fleet overview (cloudvmi top; on a terminal it refreshes in place)"
show "build/cloudvmi top --mount $mnt --once --interval 1"
show "ls $vm"
show "cat $vm/proc/loadavg"
show "head -n 3 $vm/proc/meminfo"
show "ls -l $vm/proc | head -n 8"
show "grep -r . $vm/proc/sys/kernel 2>/dev/null | grep -E 'hostname|ostype|osrelease'"
show "readlink $vm/proc/1/exe"
show "tr '\\0' ' ' < $vm/proc/1/cmdline; echo"
show "ls -l $vm/root/etc | head -n 5"
show "find $vm/sys/class/net"
show "cat $vm/root/etc/does-not-exist" || true
show "cat $dir/policy.yaml"
show "echo db-01 > $vm/proc/sys/kernel/hostname"
show "cat $vm/proc/sys/kernel/hostname"
show "echo 'Not A Hostname' > $vm/proc/sys/kernel/hostname" || echo "(refused by the policy: nothing reached the guest)"
show "echo 1 > $vm/proc/sys/net/ipv4/ip_forward" || echo "(no rule allows it: refused)"
show "echo web-01 > $vm/proc/sys/kernel/hostname"
show "cut -c1-150 $dir/audit/audit.log"
show "cat $vm/.cloudvmi/status"
show "cat $vm/.cloudvmi/stats"
echo
echo "== applications on the tree (cloudvmi-apps(7)): processes, finding, monitoring"
show "build/cloudvmi ps --mount $mnt db-01 | head -n 6"
show "build/cloudvmi find --mount $mnt --name '^sleep\$' --hash"
show "build/check_cloudvmi -f $vm/proc/loadavg --field 1 --label load1 -w 2 -c 4"
show "build/cloudvmi exporter --mount $mnt --textfile $dir/cloudvmi.prom && grep -m 4 '^cloudvmi_vm_' $dir/cloudvmi.prom"
echo
if [ "$keep" = true ]; then
    echo "$mnt stays mounted and the demo guest keeps running: GDB=$GDB"
    echo "  unmount: fusermount3 -u $mnt"
    echo "  stop the guest: tests/guest/launch-guest.sh stop --name demo --dir $dir"
    exit 0
fi
echo "== unmounting $mnt (the guest is detached: its shadow process exits)"
fusermount3 -u "$mnt"
for _ in $(seq 50); do pgrep -f "cloudvmi --config $dir/cloudvmi.yaml" >/dev/null || break; sleep 0.2; done
echo
echo "The same without a mount, one command at a time:"
show "build/cloudvmi guest --gdb $GDB --qmp $VMI_QMP --state-dir $dir/state info | head -n 4"
show "build/cloudvmi guest --gdb $GDB --qmp $VMI_QMP --state-dir $dir/state ls /proc | grep -c '^[0-9]'"
echo
echo "== stopping the demo guests"
