#!/bin/bash
# scale.sh - many guests read at once through one /vmi mount: 1, 2, 4 and 8 busybox guests
# swept in parallel (one reader per guest), against the same sweep of one guest alone.
set -euo pipefail

SELF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SELF_DIR/.." && pwd)
usage() {
    cat <<USAGE
Usage: bench/scale.sh [--guests "1 2 4 8"] [--iterations N] [--engine mailbox|trap] [--json FILE]
                      [--keep]

Boots as many busybox guests as the largest count (tests/guest/launch-guest.sh, 256 MiB
each), mounts them all under one /vmi and, for each count K, runs K readers at once, one per
guest: N cats of /proc/meminfo, then one recursive read of /proc/sys/kernel. Prints, per K,
the median and p90 latency of a cat, the aggregate cats per second, the sweep time, and
their ratio to K=1. Needs root (FUSE mount, /proc/<qemu>/mem).
  --guests LIST     guest counts (default "1 2 4 8")
  --iterations N    cats per reader (default 100)
  --engine E        the engine (default mailbox)
  --keep            leave the guests running and the work directory in place
USAGE
}

counts="1 2 4 8" iterations=100 engine=mailbox json='' keep=false
while [ $# -gt 0 ]; do
    case $1 in
        --guests) counts=$2; shift 2 ;;
        --iterations) iterations=$2; shift 2 ;;
        --engine) engine=$2; shift 2 ;;
        --json) json=$2; shift 2 ;;
        --keep) keep=true; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "scale.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "scale.sh: run as root (FUSE mount, QEMU's memory)" >&2; exit 2; }
cloudvmi=$ROOT/build/cloudvmi
[ -x "$cloudvmi" ] || { echo "scale.sh: build first (scripts/build.sh)" >&2; exit 2; }
max=0
for k in $counts; do [ "$k" -gt "$max" ] && max=$k; done

dir=$(mktemp -d /tmp/cloudvmi-scale-XXXXXX)
results=$dir/results.jsonl
mnt=$dir/vmi
cleanup() {
    fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
    if [ "$keep" = false ]; then
        for i in $(seq "$max"); do
            "$ROOT/tests/guest/launch-guest.sh" stop --name g$i --dir "$dir" >/dev/null 2>&1 || true
        done
        rm -rf "$dir"
    else
        echo "kept: $dir"
    fi
}
trap cleanup EXIT
# shellcheck source=bench/lib.sh
. "$SELF_DIR/lib.sh"

gcc -O2 -static -o "$dir/guest_ops" "$SELF_DIR/guest_ops.c"

note "booting $max busybox guests (in parallel; TCG: a minute or two)"
for i in $(seq "$max"); do
    "$ROOT/tests/guest/launch-guest.sh" start --name g$i --dir "$dir" --mem 256 --timeout 600 \
        >"$dir/g$i.env" 2>"$dir/g$i.err" &
done
wait
{
    echo "node: scale"
    echo "state_dir: $dir/state"
    echo "engine: $engine"
    echo "vms:"
    for i in $(seq "$max"); do
        # shellcheck disable=SC1090
        ( . <(grep -E '^(GDB|QMP)=' "$dir/g$i.env"); echo "  - name: g$i"; echo "    gdb: $GDB"; echo "    qmp: $QMP" )
    done
} >"$dir/cloudvmi.yaml"
mkdir -p "$mnt"
"$cloudvmi" --config "$dir/cloudvmi.yaml" "$mnt"
note "attaching every guest (outside the timings)"
for i in $(seq "$max"); do cat "$mnt/scale/g$i/proc/version" >/dev/null & done
wait

for k in $counts; do
    note "$k guest(s) at once"
    pids=()
    for i in $(seq "$k"); do
        ( "$dir/guest_ops" cat "$mnt/scale/g$i/proc/meminfo" "$iterations" >"$dir/cat-$k-$i.json"
          t0=$(date +%s%N)
          "$dir/guest_ops" grep "$mnt/scale/g$i/proc/sys/kernel" 1 >"$dir/grep-$k-$i.json"
          echo $(( ($(date +%s%N) - t0) / 1000 )) >"$dir/sweep-$k-$i.us" ) &
        pids+=($!)
    done
    t0=$(date +%s%N)
    wait "${pids[@]}"
    wall_us=$(( ($(date +%s%N) - t0) / 1000 ))
    python3 - "$dir" "$k" "$iterations" "$wall_us" >>"$results" <<'PY'
import json, sys
d, k, n, wall = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cats = [json.load(open(f"{d}/cat-{k}-{i}.json")) for i in range(1, k + 1)]
sweeps = [int(open(f"{d}/sweep-{k}-{i}.us").read()) for i in range(1, k + 1)]
cat_wall = max(c["n"] * c["mean_us"] for c in cats) / 1e6
print(json.dumps({"guests": k, "cat_median_us": sorted(c["median_us"] for c in cats)[k // 2],
                  "cat_p90_us": max(c["p90_us"] for c in cats),
                  "cats_per_s": k * n / cat_wall, "sweep_s": max(sweeps) / 1e6,
                  "wall_s": wall / 1e6}))
PY
done
for i in $(seq "$max"); do
    sed -n 's/^\(vm_stops\|batches\|engine\): /g'"$i"' \1: /p' "$mnt/scale/g$i/.cloudvmi/stats" 2>/dev/null | head -3
done >"$dir/stats.txt" || true

python3 - "$results" "${json:-}" "$engine" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
base = rows[0]
print(f"\n/vmi with {sys.argv[3]} engine, K busybox guests read at once (one reader each)\n")
print(f"{'K':>3} {'cat median':>11} {'cat p90':>9} {'x K=1':>6} {'cats/s':>8} {'x K=1':>6} {'sweep':>8} {'x K=1':>6}")
for r in rows:
    print(f"{r['guests']:>3} {r['cat_median_us']:>9.0f}us {r['cat_p90_us']:>7.0f}us "
          f"{r['cat_median_us'] / base['cat_median_us']:>6.2f} {r['cats_per_s']:>8.0f} "
          f"{r['cats_per_s'] / base['cats_per_s']:>6.2f} {r['sweep_s']:>7.2f}s "
          f"{r['sweep_s'] / base['sweep_s']:>6.2f}")
if sys.argv[2]:
    json.dump(rows, open(sys.argv[2], "w"), indent=1)
PY
