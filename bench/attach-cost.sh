#!/bin/bash
# attach-cost.sh - what attaching costs a guest: time to a ready shadow, VM stops (every
# one pauses all vCPUs and, under TCG, discards QEMU's translated code), stops at the
# kernel-wide trap, breakpoint changes and how long the VM stood still for those stops in
# all. In one run: the busybox guest and the Debian 12 systemd guest, each idle and with
# two CPU-bound loops running, and the Debian guest with a busy container (a process that
# must not be borrowed, returning from syscalls all the time).
#
#   bench/attach-cost.sh [--rounds N] [--cloudvmi PATH] [--json FILE] [--only busybox|debian]
#
# Prints a table (medians, min-max over the rounds); --json also writes every round.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=5
CLOUDVMI=build/cloudvmi
JSON=
ONLY=
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) ROUNDS=$2; shift 2 ;;
        --cloudvmi) CLOUDVMI=$2; shift 2 ;;
        --json) JSON=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "attach-cost.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -x "$CLOUDVMI" ] || { echo "attach-cost.sh: $CLOUDVMI not built (scripts/build.sh)" >&2; exit 1; }
RUN=$(mktemp -d /tmp/cloudvmi-attach-bench-XXXXXX)
LAUNCH=tests/guest/launch-guest.sh
started=()
cleanup() {
    for n in "${started[@]}"; do "$LAUNCH" stop --name "$n" --dir "$RUN" >/dev/null 2>&1 || true; done
    rm -rf "$RUN"
}
trap cleanup EXIT

rows=()
records=()

# measure LABEL GDB: ROUNDS attaches, one `cloudvmi guest info` each.
measure() {
    local label=$1 gdb=$2 i out ms stops ktrap bpc stopped
    local all_ms=() all_stops=() all_ktrap=() all_bpc=() all_stopped=()
    for i in $(seq "$ROUNDS"); do
        out=$("$CLOUDVMI" guest --gdb "$gdb" --state-dir "$RUN/state" info)
        ms=$(sed -n 's/^bootstrap: .* total \([0-9.]*\) ms.*/\1/p' <<<"$out")
        stops=$(sed -n 's/^vm stops: *\([0-9]*\) during the bootstrap.*/\1/p' <<<"$out")
        ktrap=$(sed -n 's/^vm stops: .*(\([0-9]*\) at the kernel-wide trap.*/\1/p' <<<"$out")
        bpc=$(sed -n 's/^vm stops: .*, \([0-9]*\) breakpoint changes.*/\1/p' <<<"$out")
        stopped=$(sed -n 's/^vm stops: .* during the bootstrap .*, stopped \([0-9.]*\) ms in all$/\1/p' <<<"$out")
        all_ms+=("$ms"); all_stops+=("$stops"); all_ktrap+=("$ktrap"); all_bpc+=("$bpc")
        all_stopped+=("$stopped")
        records+=("{\"guest\": \"$label\", \"round\": $i, \"attach_ms\": $ms, \"vm_stops\": $stops, \"kernel_trap_stops\": $ktrap, \"breakpoint_changes\": $bpc, \"vm_stopped_ms\": $stopped}")
    done
    rows+=("$(printf '%-28s %8s %10s %8s %8s %10s' "$label" "$(stat_of "${all_ms[@]}")" \
        "$(stat_of "${all_stops[@]}")" "$(stat_of "${all_ktrap[@]}")" "$(stat_of "${all_bpc[@]}")" \
        "$(stat_of "${all_stopped[@]}")")")
}

# "median (min-max)"
stat_of() {
    printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {
        m = (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2;
        if (v[1] == v[NR]) printf "%g", m; else printf "%g (%g-%g)", m, v[1], v[NR] }'
}

boot() {  # NAME ARGS...
    local name=$1; shift
    echo "booting $name ..." >&2
    eval "$("$LAUNCH" start --name "$name" --dir "$RUN" "$@")"
    started+=("$name")
}

if [ "$ONLY" != debian ]; then
    boot bb-idle
    measure "busybox, idle" "$GDB"
    boot bb-busy --append cloudvmi.busy=2
    measure "busybox, 2 busy loops" "$GDB"
fi
if [ "$ONLY" != busybox ]; then
    boot deb --image debian
    ssh_deb() {
        ssh -i "$SSH_KEY" -p "$SSH_PORT" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
            -o BatchMode=yes -o LogLevel=ERROR root@127.0.0.1 "$@"
    }
    ssh_deb systemctl is-system-running --wait >/dev/null || true
    measure "debian, idle" "$GDB"
    ssh_deb "systemd-run --unit=cvmi-busy /bin/sh -c '(while :; do :; done) & while :; do :; done'" >/dev/null
    measure "debian, 2 busy loops" "$GDB"
    ssh_deb systemctl stop cvmi-busy || true
    # A root process that may not be borrowed (pid 1 of its own pid namespace) and returns
    # from syscalls all the time: each of its stops at the trap costs until another comes.
    ssh_deb "systemd-run --unit=cvmi-ns /usr/bin/unshare -fpm --mount-proc /bin/sh -c 'while :; do read x </proc/uptime; done'" >/dev/null
    measure "debian, busy container" "$GDB"
    ssh_deb "systemctl kill --signal=KILL cvmi-ns; systemctl stop cvmi-ns" >/dev/null 2>&1 || true
fi

echo
echo "attach cost, $ROUNDS rounds each: median (min-max)"
printf '%-28s %8s %10s %8s %8s %10s\n' "guest" "ms" "VM stops" "kernel" "bp chg" "stopped ms"
printf '%s\n' "${rows[@]}"
if [ -n "$JSON" ]; then
    { echo "["; (IFS=$'\n'; echo "${records[*]}" | sed '$!s/$/,/'); echo "]"; } >"$JSON"
    echo "rounds written to $JSON"
fi
