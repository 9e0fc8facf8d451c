#!/bin/bash
# remote.sh - what the ssh hop to another node costs, and a fleet sweep across two nodes.
set -euo pipefail

SELF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SELF_DIR/.." && pwd)
usage() {
    cat <<USAGE
Usage: bench/remote.sh [--iterations N] [--json FILE] [--keep]

Boots the Debian 12 systemd guest D and the busybox guest B, starts an sshd of its own on
127.0.0.1 (the "other host"), and measures in one run:
  native     cat /proc/loadavg and /proc/meminfo inside D (bench/guest_ops.c over ssh)
  mount 1    node "here": D local; node "far": B through ssh + cloudvmi serve --stdio
  mount 2    node "here": B local; node "far": D through ssh
  in each:   cat of both files on the local VM and on the remote one (guest_ops on the
             host), ls of the remote VM's /proc, and the fleet sweep
             cat /vmi/*/*/proc/loadavg (every VM of both nodes)
so that each guest is read both locally and across the hop. Needs root.
  --iterations N     repetitions of each cat (default 100)
  --keep             leave the guests, sshd and the work directory in place
USAGE
}

iterations=100 json='' keep=false
while [ $# -gt 0 ]; do
    case $1 in
        --iterations) iterations=$2; shift 2 ;;
        --json) json=$2; shift 2 ;;
        --keep) keep=true; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "remote.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "remote.sh: run as root (FUSE mount, QEMU's memory, sshd)" >&2; exit 2; }
cloudvmi=$ROOT/build/cloudvmi
[ -x "$cloudvmi" ] || { echo "remote.sh: build first (scripts/build.sh)" >&2; exit 2; }

dir=$(mktemp -d /tmp/cloudvmi-remote-bench-XXXXXX)
results=$dir/results.jsonl
sshd_pid='' mounted=''
unmount() {
    fusermount3 -u "$1" 2>/dev/null || umount -l "$1" 2>/dev/null || true
    for _ in $(seq 100); do pgrep -f "cloudvmi --config $dir/" >/dev/null || break; sleep 0.1; done
    for _ in $(seq 100); do pgrep -f "serve --stdio --config $dir/" >/dev/null || break; sleep 0.1; done
    mounted=''
}
cleanup() {
    [ -z "$mounted" ] || unmount "$mounted"
    if [ "$keep" = false ]; then
        [ -z "$sshd_pid" ] || kill "$sshd_pid" 2>/dev/null || true
        for g in d b; do
            "$ROOT/tests/guest/launch-guest.sh" stop --name $g --dir "$dir" >/dev/null 2>&1 || true
        done
        rm -rf "$dir"
    else
        echo "kept: $dir"
    fi
}
trap cleanup EXIT
# shellcheck source=bench/lib.sh
. "$SELF_DIR/lib.sh"

note "building bench/guest_ops.c (static)"
gcc -O2 -static -o "$dir/guest_ops" "$SELF_DIR/guest_ops.c"

note "booting the Debian guest D and the busybox guest B"
eval "$("$ROOT/tests/guest/launch-guest.sh" start --name d --dir "$dir" --image debian | sed 's/^/D_/')"
eval "$("$ROOT/tests/guest/launch-guest.sh" start --name b --dir "$dir" | sed 's/^/B_/')"
gopts=(-i "$D_SSH_KEY" -p "$D_SSH_PORT" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
       -o BatchMode=yes -o LogLevel=ERROR)
scp -q -i "$D_SSH_KEY" -P "$D_SSH_PORT" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o BatchMode=yes -o LogLevel=ERROR "$dir/guest_ops" root@127.0.0.1:/root/guest_ops
timeout 300 ssh "${gopts[@]}" root@127.0.0.1 systemctl is-system-running --wait >/dev/null || true

note "native, inside D"
record native-cat-loadavg "$(ssh "${gopts[@]}" root@127.0.0.1 /root/guest_ops cat /proc/loadavg "$iterations")"
record native-cat-meminfo "$(ssh "${gopts[@]}" root@127.0.0.1 /root/guest_ops cat /proc/meminfo "$iterations")"

note "an sshd of our own on 127.0.0.1 (the other host)"
mkdir -p /run/sshd "$dir/ssh"
ssh-keygen -q -t ed25519 -N '' -f "$dir/ssh/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$dir/ssh/client_key"
cp "$dir/ssh/client_key.pub" "$dir/ssh/authorized_keys"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$dir/ssh/sshd_config" <<CONF
ListenAddress 127.0.0.1
Port $port
HostKey $dir/ssh/host_key
AuthorizedKeysFile $dir/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile $dir/ssh/sshd.pid
CONF
/usr/sbin/sshd -D -e -f "$dir/ssh/sshd_config" 2>"$dir/ssh/sshd.log" &
sshd_pid=$!
sleep 1

mount_pair() {  # LOCAL_NAME LOCAL_GDB REMOTE_NAME REMOTE_GDB TAG -> mount point
    local mnt=$dir/vmi-$5
    mkdir -p "$mnt"
    cat >"$dir/remote-$5.yaml" <<YAML
node: far-host
state_dir: $dir/state-remote-$5
audit: {file: "", syslog: false}
vms:
  - name: $3
    gdb: $4
YAML
    cat >"$dir/local-$5.yaml" <<YAML
node: here
state_dir: $dir/state-local-$5
audit: {file: "", syslog: false}
vms:
  - name: $1
    gdb: $2
nodes:
  - name: far
    ssh: root@127.0.0.1
    ssh_options: [-p, "$port", -i, "$dir/ssh/client_key", -o, StrictHostKeyChecking=no,
                  -o, UserKnownHostsFile=/dev/null, -o, LogLevel=ERROR]
    remote_command: $cloudvmi serve --stdio --config $dir/remote-$5.yaml
YAML
    "$cloudvmi" --config "$dir/local-$5.yaml" "$mnt" >&2
    mounted=$mnt
    cat "$mnt/here/$1/proc/version" "$mnt/far/$3/proc/version" >/dev/null  # attach first
    echo "$mnt"
}
sweep_once() { cat "$1"/*/*/proc/loadavg; }  # MNT: the fleet sweep, globbed by this shell
measure() {  # TAG MNT LOCAL REMOTE
    local mnt=$2
    for f in loadavg meminfo; do
        record "$1-local-$f" "$("$dir/guest_ops" cat "$mnt/here/$3/proc/$f" "$iterations")"
        record "$1-remote-$f" "$("$dir/guest_ops" cat "$mnt/far/$4/proc/$f" "$iterations")"
    done
    record "$1-local-ls-proc" "$("$dir/guest_ops" ls "$mnt/here/$3/proc" 5)"
    record "$1-remote-ls-proc" "$("$dir/guest_ops" ls "$mnt/far/$4/proc" 5)"
    time_cmd "$1-sweep" 20 sweep_once "$mnt"
    record "$1-far-status" "$(python3 -c 'import json,sys; print(json.dumps(dict(l.split(": ",1) for l in open(sys.argv[1]).read().splitlines() if ": " in l)))' "$mnt/far/.cloudvmi/status")"
}

note "mount 1: D local, B across ssh"
mnt=$(mount_pair d "$D_GDB" b "$B_GDB" 1)
measure m1 "$mnt" d b
unmount "$mnt"
note "mount 2: B local, D across ssh"
mnt=$(mount_pair b "$B_GDB" d "$D_GDB" 2)
measure m2 "$mnt" b d
unmount "$mnt"

python3 - "$results" ${json:+"$json"} <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    d = json.loads(line); rows[d["label"]] = d
def med(label): return rows[label]["median_us"] if label in rows else float("nan")
print(f"{'operation':44} {'median µs':>10} {'p90 µs':>10}  ratio")
def show(label, base=None, note=""):
    r = rows.get(label)
    if not r: return
    ratio = f"{r['median_us'] / med(base):6.1f}x {note}" if base else ""
    print(f"{label:44} {r['median_us']:10.0f} {r['p90_us']:10.0f}  {ratio}")
for f in ("loadavg", "meminfo"):
    show(f"native-cat-{f}")
    show(f"m1-local-{f}", f"native-cat-{f}", "of native (D local)")
    show(f"m2-remote-{f}", f"m1-local-{f}", "of D local (the hop)")
    show(f"m2-local-{f}")
    show(f"m1-remote-{f}", f"m2-local-{f}", "of B local (the hop)")
show("m1-local-ls-proc"); show("m1-remote-ls-proc", "m2-local-ls-proc", "of B local")
show("m2-local-ls-proc"); show("m2-remote-ls-proc", "m1-local-ls-proc", "of D local")
show("m1-sweep"); show("m2-sweep")
for m in ("m1", "m2"):
    st = rows.get(f"{m}-far-status", {})
    print(f"{m}: far rtt_ms {st.get('rtt_ms')}, requests {st.get('requests')}, failed {st.get('failed')}")
if len(sys.argv) > 2:
    json.dump(rows, open(sys.argv[2], "w"), indent=1)
PY
