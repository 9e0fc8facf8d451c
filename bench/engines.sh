#!/bin/bash
# engines.sh - one Debian guest read every way an operator could, side by side in one run:
# natively inside the guest, through /vmi with the trap engine and with the mailbox engine,
# through qemu-guest-agent, and with ssh (reused and new connections); then what reading
# costs the guest (an in-guest CPU-bound loop's throughput).
set -euo pipefail

SELF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SELF_DIR/.." && pwd)
usage() {
    cat <<USAGE
Usage: bench/engines.sh [--iterations N] [--release bookworm|trixie] [--json FILE]
                        [--spin-seconds S] [--keep]

Boots the Debian systemd guest (tests/guest/build-debian-guest.sh) and measures, in one run:
  cat of /proc/meminfo, /proc/1/status and a sysfs file; ls -l /proc (readdir + lstat of
  every entry); a recursive read of /proc/sys/kernel and of /proc/sys (grep -r);
each natively in the guest (bench/guest_ops.c over ssh, timed inside the guest), through
/vmi with the trap and the mailbox engine (the same program on the host), through
qemu-guest-agent (guest-file-open/read/close) and through ssh; then the guest's CPU-bound
throughput unmonitored, idle-attached, at 1 read/s and during a sweep. Prints a table with
ratios; --json writes every figure. Needs root (FUSE mount, /proc/<qemu>/mem).
  --iterations N     repetitions of each cat (default 100; ls: N/5, grep: 3)
  --spin-seconds S   length of each CPU-throughput sample (default 10)
  --keep             leave the guest running and the work directory in place
USAGE
}

iterations=100 release=bookworm json='' spin=10 keep=false
while [ $# -gt 0 ]; do
    case $1 in
        --iterations) iterations=$2; shift 2 ;;
        --release) release=$2; shift 2 ;;
        --json) json=$2; shift 2 ;;
        --spin-seconds) spin=$2; shift 2 ;;
        --keep) keep=true; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "engines.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "engines.sh: run as root (FUSE mount, QEMU's memory)" >&2; exit 2; }
cloudvmi=$ROOT/build/cloudvmi
[ -x "$cloudvmi" ] || { echo "engines.sh: build first (scripts/build.sh)" >&2; exit 2; }

dir=$(mktemp -d /tmp/cloudvmi-engines-XXXXXX)
results=$dir/results.jsonl
mounted=''
cleanup() {
    [ -z "$mounted" ] || unmount "$mounted"
    if [ "$keep" = false ]; then
        "$ROOT/tests/guest/launch-guest.sh" stop --name bench --dir "$dir" >/dev/null 2>&1 || true
        rm -rf "$dir"
    else
        echo "kept: $dir (stop the guest: tests/guest/launch-guest.sh stop --name bench --dir $dir)"
    fi
}
trap cleanup EXIT

# shellcheck source=bench/lib.sh
. "$SELF_DIR/lib.sh"

note "building bench/guest_ops.c (static)"
gcc -O2 -static -o "$dir/guest_ops" "$SELF_DIR/guest_ops.c"

note "booting the Debian guest ($release; about a minute under TCG)"
eval "$("$ROOT/tests/guest/launch-guest.sh" start --name bench --dir "$dir" --image debian --release "$release")"
ssh_opts=(-i "$SSH_KEY" -p "$SSH_PORT" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
          -o BatchMode=yes -o LogLevel=ERROR)
gssh() { ssh "${ssh_opts[@]}" root@127.0.0.1 "$@"; }
scp -q -i "$SSH_KEY" -P "$SSH_PORT" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o BatchMode=yes -o LogLevel=ERROR "$dir/guest_ops" root@127.0.0.1:/root/guest_ops
timeout 300 ssh "${ssh_opts[@]}" root@127.0.0.1 systemctl is-system-running --wait >/dev/null || true

sysfs=/sys/kernel/mm/transparent_hugepage/enabled
n_ls=$(( iterations / 5 > 2 ? iterations / 5 : 2 ))

note "native, inside the guest"
record native-cat-meminfo "$(gssh /root/guest_ops cat /proc/meminfo "$iterations")"
record native-catgap-meminfo "$(gssh /root/guest_ops catgap /proc/meminfo 10 1000)"
record native-cat-status "$(gssh /root/guest_ops cat /proc/1/status "$iterations")"
record native-cat-sysfs "$(gssh /root/guest_ops cat $sysfs "$iterations")"
record native-ls-proc "$(gssh /root/guest_ops ls /proc "$n_ls")"
record native-grep-kernel "$(gssh /root/guest_ops grep /proc/sys/kernel 3)"
record native-grep-sys "$(gssh /root/guest_ops grep /proc/sys 3)"
note "guest CPU throughput unmonitored (${spin} s)"
record spin-unmonitored-before "$(gssh /root/guest_ops spin "$spin")"

note "ssh cat (reused connection, then new connections)"
cm=(-o ControlMaster=auto -o ControlPath="$dir/ssh-%r@%h:%p" -o ControlPersist=120)
ssh "${ssh_opts[@]}" "${cm[@]}" root@127.0.0.1 true
time_cmd ssh-reused-cat-meminfo 20 ssh "${ssh_opts[@]}" "${cm[@]}" root@127.0.0.1 cat /proc/meminfo
time_cmd ssh-new-cat-meminfo 5 ssh "${ssh_opts[@]}" root@127.0.0.1 cat /proc/meminfo
sleep 1
GAP=1 time_cmd ssh-reused-catgap-meminfo 5 ssh "${ssh_opts[@]}" "${cm[@]}" root@127.0.0.1 cat /proc/meminfo

note "qemu-guest-agent guest-file-open/read/close"
record qga-cat-meminfo "$(python3 "$SELF_DIR/qga_ops.py" "$QGA" /proc/meminfo 30)"
record qga-catgap-meminfo "$(python3 "$SELF_DIR/qga_ops.py" "$QGA" /proc/meminfo 10 1000)"

unmount() {
    local mnt=$1
    fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
    for _ in $(seq 100); do pgrep -f "cloudvmi --config $dir/" >/dev/null || break; sleep 0.1; done
    mounted=''
}
mount_engine() {  # ENGINE -> prints the VM's directory
    local engine=$1 mnt=$dir/vmi-$1
    mkdir -p "$mnt"
    cat >"$dir/$engine.yaml" <<YAML
node: bench
state_dir: $dir/state-$engine
engine: $engine
vms:
  - name: guest
    gdb: $GDB
    qmp: $QMP
YAML
    "$cloudvmi" --config "$dir/$engine.yaml" "$mnt" >&2
    mounted=$mnt
    cat "$mnt/bench/guest/proc/version" >/dev/null  # attach outside the timings
    echo "$mnt/bench/guest"
}

for engine in trap mailbox; do
    note "through /vmi, $engine engine"
    vm=$(mount_engine $engine)
    record $engine-stats-attached "$(cat "$vm/.cloudvmi/stats.json" 2>/dev/null || echo '{}')"
    n=$iterations; [ $engine = trap ] && n=$(( iterations / 5 > 5 ? iterations / 5 : 5 ))
    record $engine-cat-meminfo "$("$dir/guest_ops" cat "$vm/proc/meminfo" "$n")"
    record $engine-cat-status "$("$dir/guest_ops" cat "$vm/proc/1/status" "$n")"
    record $engine-cat-sysfs "$("$dir/guest_ops" cat "$vm$sysfs" "$n")"
    record $engine-ls-proc "$("$dir/guest_ops" ls "$vm/proc" "$([ $engine = trap ] && echo 2 || echo "$n_ls")")"
    record $engine-grep-kernel "$("$dir/guest_ops" grep "$vm/proc/sys/kernel" "$([ $engine = trap ] && echo 1 || echo 3)")"
    [ $engine = mailbox ] && record $engine-grep-sys "$("$dir/guest_ops" grep "$vm/proc/sys" 3)"
    record $engine-stats "$(cat "$vm/.cloudvmi/stats.json" 2>/dev/null || echo '{}')"
    record $engine-catgap-meminfo "$("$dir/guest_ops" catgap "$vm/proc/meminfo" 10 1000)"
    if [ $engine = mailbox ]; then
        shadow=$(sed -n 's/^shadow_pid: //p' "$vm/.cloudvmi/status")
        # CPU time the shadow used in the guest (utime + stime, in clock ticks of 1/100 s).
        shadow_ticks() { gssh "awk '{ print \$14 + \$15 }' /proc/$shadow/stat"; }
        window() {  # LABEL: the in-guest loop's throughput, and the shadow's CPU share
            local t0 t1 s0 s1 r
            s0=$(shadow_ticks); t0=$(date +%s%N)
            r=$(gssh /root/guest_ops spin "$spin")
            s1=$(shadow_ticks); t1=$(date +%s%N)
            record "$1" "$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["shadow_cpu_percent"]=(int(sys.argv[3])-int(sys.argv[2]))/100/((int(sys.argv[5])-int(sys.argv[4]))/1e9)*100; print(json.dumps(d))' "$r" "$s0" "$s1" "$t0" "$t1")"
        }
        note "guest CPU throughput (in-guest loop, ${spin} s each) and the shadow's CPU time"
        window spin-idle-attached
        "$dir/guest_ops" every "$vm/proc/meminfo" 1000 "$(( spin + 8 ))" >/dev/null &
        reader=$!
        sleep 1
        window spin-1-read-per-second
        wait $reader || true
        ( end=$(( $(date +%s) + spin + 6 )); while [ "$(date +%s)" -lt $end ]; do
              "$dir/guest_ops" grep "$vm/proc/sys" 1 >/dev/null || true; done ) &
        sweeper=$!
        sleep 1
        window spin-during-sweep
        wait $sweeper || true
        record mailbox-stats-after "$(cat "$vm/.cloudvmi/stats.json" 2>/dev/null || echo '{}')"
    fi
    unmount "$dir/vmi-$engine"
done
note "guest CPU throughput unmonitored again (${spin} s)"
record spin-unmonitored-after "$(gssh /root/guest_ops spin "$spin")"

python3 "$SELF_DIR/engines_report.py" "$results" ${json:+--json "$json"}
