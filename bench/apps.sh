#!/bin/bash
# apps.sh - what the applications cost: a guest's process listing through the tree against
# ps inside the guest, the fleet overview, a security check with its pid probe, an exporter
# collection and one Nagios check, on the Debian 12 guest D and the busybox guest B under
# one mount, in one run.
set -euo pipefail

SELF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SELF_DIR/.." && pwd)
usage() {
    cat <<USAGE
Usage: bench/apps.sh [--iterations N] [--json FILE] [--keep]

Measures, medians of N runs (default 10):
  native ps          ps -e -o pid,user,rss,comm,args inside D (timed inside the guest)
  cloudvmi ps D      the same listing of D from the host, through the mount
  cloudvmi top       the fleet overview of D and B (two samples 0.1 s apart)
  secmon check       D and B: the hidden-pid probe and the baseline comparison
  exporter           one --textfile collection of both VMs
  check_cloudvmi     one threshold check of D's load
Needs root.
USAGE
}

iterations=10 json='' keep=false
while [ $# -gt 0 ]; do
    case $1 in
        --iterations) iterations=$2; shift 2 ;;
        --json) json=$2; shift 2 ;;
        --keep) keep=true; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "apps.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "apps.sh: run as root (FUSE mount, QEMU's memory)" >&2; exit 2; }
cloudvmi=$ROOT/build/cloudvmi
[ -x "$cloudvmi" ] || { echo "apps.sh: build first (scripts/build.sh)" >&2; exit 2; }

dir=$(mktemp -d /tmp/cloudvmi-apps-bench-XXXXXX)
results=$dir/results.jsonl
mnt=$dir/vmi
cleanup() {
    fusermount3 -u "$mnt" 2>/dev/null || true
    if [ "$keep" = false ]; then
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

note "booting D (Debian 12) and B (busybox)"
eval "$("$ROOT/tests/guest/launch-guest.sh" start --image debian --name d --dir "$dir")"
D_GDB=$GDB D_QMP=$VMI_QMP
d_ssh() { "$ROOT/tests/guest/launch-guest.sh" ssh --name d --dir "$dir" "$@"; }
eval "$("$ROOT/tests/guest/launch-guest.sh" start --name b --dir "$dir" --hostname b)"
cat >"$dir/cloudvmi.yaml" <<YAML
node: lab
state_dir: $dir/state
audit: {file: $dir/audit.log, syslog: false}
vms:
  - {name: d, gdb: $D_GDB, qmp: $D_QMP}
  - {name: b, gdb: $GDB, qmp: $VMI_QMP}
YAML
mkdir -p "$mnt"
"$cloudvmi" --config "$dir/cloudvmi.yaml" "$mnt"
for vm in d b; do
    for _ in $(seq 120); do cat "$mnt/lab/$vm/proc/uptime" >/dev/null 2>&1 && break; sleep 1; done
done
export CLOUDVMI_MOUNT=$mnt

note "native: ps inside D"
record native-ps "$(d_ssh "for i in \$(seq $iterations); do t0=\$(date +%s%N); ps -e -o pid,user,rss,comm,args >/dev/null; t1=\$(date +%s%N); echo \$(( (t1 - t0) / 1000 )); done" | python3 -c '
import json, sys
t = sorted(int(x) for x in sys.stdin.read().split())
n = len(t)
print(json.dumps({"op": "cmd", "n": n, "median_us": t[n // 2], "p90_us": t[min(n - 1, n * 9 // 10)],
                  "min_us": t[0], "mean_us": sum(t) / n}))')"
record d-processes "{\"count\": $(ls "$mnt/lab/d/proc" | grep -c '^[0-9]')}"

note "through the mount"
time_cmd cloudvmi-ps-d "$iterations" "$cloudvmi" ps -q d
time_cmd cloudvmi-top-both "$iterations" "$cloudvmi" top -q --once --interval 0.1
"$cloudvmi" secmon baseline -q --baseline-dir "$dir/base"
record last-pid-d "{\"last_pid\": $(cut -d' ' -f5 "$mnt/lab/d/proc/loadavg")}"
time_cmd secmon-check-both "$iterations" "$cloudvmi" secmon check -q --baseline-dir "$dir/base"
time_cmd secmon-check-both-no-probe "$iterations" "$cloudvmi" secmon check -q --no-probe \
    --baseline-dir "$dir/base"
time_cmd exporter-textfile-both "$iterations" "$cloudvmi" exporter -q --textfile "$dir/x.prom"
time_cmd check-cloudvmi-load "$iterations" "$ROOT/build/check_cloudvmi" \
    -f "$mnt/lab/d/proc/loadavg" -F 1 -c 100

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {r["label"]: r for r in rows}
native = by["native-ps"]["median_us"]
print(f"{'measurement':32} {'median':>12} {'p90':>12}  vs native ps in D")
for r in rows:
    if "median_us" not in r:
        print(f"{r['label']:32} {json.dumps({k: v for k, v in r.items() if k != 'label'})}")
        continue
    ratio = r["median_us"] / native if native else 0
    print(f"{r['label']:32} {r['median_us'] / 1000:10.1f}ms {r['p90_us'] / 1000:10.1f}ms  {ratio:6.1f}x")
PY
[ -z "$json" ] || cp "$results" "$json"
