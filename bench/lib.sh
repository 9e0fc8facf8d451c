# Shared by the benchmark scripts (sourced): progress notes, one JSON record per
# measurement in $results, and wall-time measurement of a command or shell function.

note() { printf '== %s\n' "$*" >&2; }

# record LABEL JSON: one measurement, tagged with its label, appended to $results
record() { printf '%s\n' "$2" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); d["label"]=sys.argv[1]; print(json.dumps(d))' "$1" >>"$results"; }

# time_cmd LABEL N COMMAND...: wall time of each of N runs (after $GAP s of quiet), in the
# form guest_ops prints; COMMAND may be a shell function (no process of its own).
time_cmd() {
    local label=$1 n=$2; shift 2
    local times=() t0 t1
    for _ in $(seq "$n"); do
        sleep "${GAP:-0}"
        t0=$(date +%s%N); "$@" >/dev/null; t1=$(date +%s%N)
        times+=($(( (t1 - t0) / 1000 )))
    done
    record "$label" "$(printf '%s\n' "${times[@]}" | python3 -c '
import json, sys
t = sorted(int(x) for x in sys.stdin.read().split())
n = len(t)
print(json.dumps({"op": "cmd", "n": n, "median_us": t[n // 2], "p90_us": t[min(n - 1, n * 9 // 10)],
                  "min_us": t[0], "mean_us": sum(t) / n}))')"
}
